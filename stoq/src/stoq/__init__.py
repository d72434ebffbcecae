"""STOQ: HyperMesh's QUIC transport.

Authenticated with TrustChain node certificates, protected by a post-quantum channel bound to
each QUIC connection, reachable over IPv4 and IPv6 with Happy Eyeballs. Start with
:func:`stoq.endpoint.connect`, :class:`stoq.endpoint.Endpoint` and :class:`stoq.config.StoqConfig`.
"""

from importlib.metadata import version as _version

__version__ = _version("stoq")
__all__ = ["__version__"]
