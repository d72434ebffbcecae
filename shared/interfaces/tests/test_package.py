"""The top-level package: version and re-exports."""

from __future__ import annotations

import importlib.metadata

import hypermesh_interfaces
from hypermesh_interfaces import v1


def test_version_matches_the_distribution_metadata() -> None:
    assert hypermesh_interfaces.__version__ == importlib.metadata.version("hypermesh-interfaces")


def test_reexports_are_the_v1_modules() -> None:
    for name in hypermesh_interfaces.__all__:
        if name == "__version__":
            continue
        exported = getattr(hypermesh_interfaces, name)
        assert exported is getattr(v1, name)
        assert exported.__name__ == f"hypermesh_interfaces.v1.{name}"
