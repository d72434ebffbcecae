"""TrustChain's federated naming: names trusted because a TrustChain certificate signed them.

* :mod:`trustchain.naming.records`: name records, revocations, their canonical encodings,
  signing and verification (the signer's certificate must be authorised for the name by the
  name constraints of its CAs).
* :mod:`trustchain.naming.zone`: record sets (the ``names export`` file, what a DNS front-end
  serves, what nodes replicate) and the names a set establishes.
* :mod:`trustchain.naming.registry`: a node's records in SQLite, with updates, expiry,
  revocation and replication (merge).
* :mod:`trustchain.naming.commands`: ``trustchain names ...``.
"""

from __future__ import annotations

from trustchain.naming.records import (
    InvalidNameRecord,
    NameRecord,
    NameRecordRejected,
    NameRejection,
    NamingError,
    Revocation,
    ServiceEndpoint,
    SignedRecord,
    SignedRevocation,
    SignerMismatch,
    normalize_name,
    sign_record,
    sign_revocation,
    verify_record,
    verify_revocation,
)
from trustchain.naming.registry import (
    MergeReport,
    NameNotFound,
    NameRegistry,
    RegistryCorrupted,
    RegistryError,
)
from trustchain.naming.zone import (
    MalformedRecordSet,
    RecordSet,
    decode_record_set,
    encode_record_set,
    verified_names,
)

__all__ = [
    "InvalidNameRecord",
    "MalformedRecordSet",
    "MergeReport",
    "NameNotFound",
    "NameRecord",
    "NameRecordRejected",
    "NameRegistry",
    "NameRejection",
    "NamingError",
    "RecordSet",
    "RegistryCorrupted",
    "RegistryError",
    "Revocation",
    "ServiceEndpoint",
    "SignedRecord",
    "SignedRevocation",
    "SignerMismatch",
    "decode_record_set",
    "encode_record_set",
    "normalize_name",
    "sign_record",
    "sign_revocation",
    "verified_names",
    "verify_record",
    "verify_revocation",
]
