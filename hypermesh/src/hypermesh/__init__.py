"""hypermesh — resource adapters, the ledger validator and its client over STOQ, and the demo.

See README.md for what is real and what is not yet.
"""

from importlib.metadata import version as _version

__version__ = _version("hypermesh")
__all__ = ["__version__"]
