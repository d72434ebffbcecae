"""TrustChain's certificate authority: hybrid (Ed25519 + Falcon-1024) X.509 certificates.

Modules: :mod:`~trustchain.ca.der` (strict DER reader/writer), :mod:`~trustchain.ca.oids`
(object identifiers and the ``hypermesh://`` URI form), :mod:`~trustchain.ca.hybrid`
(building and verifying the dual-signature certificates and CRLs).
"""
