"""The stoq package installs as a typed distribution of its own.

Nothing functional lives in stoq yet (see its README); these tests pin what it does promise:
that it installs, reports its version, and ships its type information.
"""

from importlib.metadata import distribution
from importlib.resources import files

import stoq


def test_version_matches_distribution_metadata() -> None:
    assert stoq.__version__ == distribution("stoq").version


def test_ships_py_typed_marker() -> None:
    assert files("stoq").joinpath("py.typed").is_file()


def test_declares_its_lower_layers_as_dependencies() -> None:
    requires = distribution("stoq").requires or []
    names = {r.split(">")[0].split("<")[0].split("=")[0].strip() for r in requires}
    assert {"hypermesh-interfaces", "trustchain"} <= names
