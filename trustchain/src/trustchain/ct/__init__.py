"""TrustChain's certificate transparency log (RFC 6962 / RFC 9162 Merkle tree, SQLite-backed).

* :mod:`trustchain.ct.merkle` -- the tree math: hashes, proof generation, proof verification.
* :mod:`trustchain.ct.sct` -- signed certificate timestamps and signed tree heads.
* :mod:`trustchain.ct.log` -- the append-only log itself.
* :mod:`trustchain.ct.commands` -- the ``trustchain ct ...`` command-line subcommands.
"""

from __future__ import annotations

from trustchain.ct.log import LogEntry, TransparencyLog
from trustchain.ct.merkle import leaf_hash, verify_consistency, verify_inclusion
from trustchain.ct.sct import SignedCertificateTimestamp, SignedTreeHead

__all__ = [
    "LogEntry",
    "SignedCertificateTimestamp",
    "SignedTreeHead",
    "TransparencyLog",
    "leaf_hash",
    "verify_consistency",
    "verify_inclusion",
]
