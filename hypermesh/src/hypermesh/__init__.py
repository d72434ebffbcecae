"""hypermesh — nothing real is implemented here yet; see README.md."""

from importlib.metadata import version as _version

__version__ = _version("hypermesh")
__all__ = ["__version__"]
