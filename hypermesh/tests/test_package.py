"""The hypermesh package installs as a typed distribution of its own.

These tests pin what any installed hypermesh promises: that it installs, reports its version,
ships its type information and declares the layers below it.
"""

from importlib.metadata import distribution
from importlib.resources import files

import hypermesh


def test_version_matches_distribution_metadata() -> None:
    assert hypermesh.__version__ == distribution("hypermesh").version


def test_ships_py_typed_marker() -> None:
    assert files("hypermesh").joinpath("py.typed").is_file()


def test_declares_its_lower_layers_as_dependencies() -> None:
    requires = distribution("hypermesh").requires or []
    names = {r.split(">")[0].split("<")[0].split("=")[0].strip() for r in requires}
    assert {"hypermesh-interfaces", "trustchain"} <= names
