"""TrustChain: the HyperMesh security foundation."""

from importlib.metadata import version as _version

__version__ = _version("trustchain")
__all__ = ["__version__"]
