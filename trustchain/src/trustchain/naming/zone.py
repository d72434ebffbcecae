"""Record sets: the file ``trustchain names export`` writes and ``stoq dns-server --zone-file``
reads, and what TrustChain nodes send each other to replicate names.

A :class:`RecordSet` holds signed records, signed revocations, the exporting home's trust
anchors (its root certificate(s), and any further roots it trusts for names) and, optionally,
CRLs of its CAs, so a reader can also refuse records whose signer certificate was revoked.

File format (version 1)
=======================

Integers are unsigned big-endian::

    4     magic b"TCNS"
    u8    version = 1
    u8    anchor count (0..8), then each: u32 length (1..32768) || DER certificate
    u8    CRL count (0..64), then each: u32 length (1..4 MiB) || DER CRL
    u32   record count (0..100000), then each: u32 length || SignedRecord.encode()
    u32   revocation count (0..100000), then each: u32 length || SignedRevocation.encode()

The whole file is at most :data:`MAX_RECORD_SET_SIZE` bytes and nothing may follow the last
entry. :func:`decode_record_set` checks every length and count before using it and decodes
every entry strictly (:mod:`trustchain.naming.records`); any failure raises
:class:`MalformedRecordSet` naming the entry. Decoding verifies nothing.

Which names a set establishes (:func:`verified_names`)
======================================================

* Trust: ``store=None`` trusts the set's own anchors: the file is the authority you
  configured, like a zone file a DNS server is given; whoever can replace the file can replace
  the anchors. Pass a :class:`~trustchain.ca.trust.TrustStore` to pin the anchors instead (the
  set's anchors are then ignored). Either way the set's CRLs are offered to the store
  (:func:`add_crls`, with the CA certificates of the signers' chains as possible issuers: a
  CRL is accepted only when the key of a CA certificate signed it, and speaks only for what
  that key issued, so it can only withdraw trust, never add it; CRLs the store refuses are
  skipped, as they say nothing about certificates the store trusts).
* Revocations are verified first (:func:`~trustchain.naming.records.verify_revocation`);
  for each name the highest revoked serial counts.
* Each record is verified (:func:`~trustchain.naming.records.verify_record`) at ``at``; a
  record that verifies but whose serial a valid revocation covers is ``REVOKED``.
* The highest valid serial per name wins; a valid record with a lower serial, or with the same
  serial and other contents, is ``STALE_SERIAL``. Repeats of the same record are not reported.

The result is the winning record per name and every refusal (:class:`NameRecordRejected`
with its reason and, where known, the name and serial), in the order met.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from trustchain.ca.trust import TrustAnchor, TrustStore
from trustchain.ca.validation import DEFAULT_CLOCK_SKEW
from trustchain.errors import MalformedData, TrustChainError
from trustchain.naming.records import (
    DECODE_ERRORS,
    NameRecord,
    NameRecordRejected,
    NameRejection,
    NamingError,
    Revocation,
    SignedRecord,
    SignedRevocation,
    check_certificate,
    parse_certificate,
    verify_record,
    verify_revocation,
)

__all__ = [
    "MAGIC",
    "MAX_RECORD_SET_SIZE",
    "MalformedRecordSet",
    "RecordSet",
    "add_crls",
    "anchor_store",
    "chain_certificates",
    "decode_record_set",
    "encode_record_set",
    "revoked_rejection",
    "stale_rejection",
    "verified_names",
]

MAGIC: Final = b"TCNS"
VERSION: Final = 1
MAX_ANCHORS: Final = 8
MAX_ANCHOR_SIZE: Final = 32768
MAX_CRLS: Final = 64
MAX_CRL_SIZE: Final = 4 * 1024 * 1024
MAX_ENTRIES: Final = 100_000
#: The largest record set file accepted.
MAX_RECORD_SET_SIZE: Final = 256 * 1024 * 1024


class MalformedRecordSet(NamingError):
    """Bytes that are not a record set (see the file format in the module docs)."""


@dataclass(frozen=True)
class RecordSet:
    """Signed records and revocations, with the anchors (and CRLs) to check them by."""

    records: tuple[SignedRecord, ...]
    revocations: tuple[SignedRevocation, ...]
    anchors: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...] = ()

    def __post_init__(self) -> None:
        for name in ("records", "revocations", "anchors", "crls"):
            object.__setattr__(self, name, tuple(getattr(self, name)))


def _u32(value: int) -> bytes:
    return struct.pack(">I", value)


def encode_record_set(record_set: RecordSet) -> bytes:
    """The file bytes of ``record_set``; :class:`MalformedRecordSet` if it exceeds a limit."""
    rs = record_set
    if len(rs.anchors) > MAX_ANCHORS or len(rs.crls) > MAX_CRLS:
        raise MalformedRecordSet(f"at most {MAX_ANCHORS} anchors and {MAX_CRLS} CRLs")
    if len(rs.records) > MAX_ENTRIES or len(rs.revocations) > MAX_ENTRIES:
        raise MalformedRecordSet(f"at most {MAX_ENTRIES} records and {MAX_ENTRIES} revocations")
    parts = [MAGIC, bytes([VERSION, len(rs.anchors)])]
    for anchor in rs.anchors:
        der = anchor.public_bytes(Encoding.DER)
        parts += [_u32(len(der)), der]
    parts.append(bytes([len(rs.crls)]))
    for crl in rs.crls:
        der = crl.public_bytes(Encoding.DER)
        parts += [_u32(len(der)), der]
    parts.append(_u32(len(rs.records)))
    for record in rs.records:
        data = record.encode()
        parts += [_u32(len(data)), data]
    parts.append(_u32(len(rs.revocations)))
    for revocation in rs.revocations:
        data = revocation.encode()
        parts += [_u32(len(data)), data]
    encoded = b"".join(parts)
    if len(encoded) > MAX_RECORD_SET_SIZE:
        raise MalformedRecordSet(f"{len(encoded)} bytes, at most {MAX_RECORD_SET_SIZE}")
    return encoded


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int, what: str) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise MalformedRecordSet(f"record set truncated in {what} (offset {self.pos})")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def entry(self, limit: int, what: str) -> bytes:
        size = self.uint(4, f"{what} length")
        if not 1 <= size <= limit:
            raise MalformedRecordSet(f"{what} length {size} is not 1 to {limit}")
        return self.take(size, what)

    def count(self, size: int, limit: int, what: str) -> int:
        value = self.uint(size, f"{what} count")
        if value > limit:
            raise MalformedRecordSet(f"{value} {what}s, at most {limit}")
        return value


def decode_record_set(data: bytes) -> RecordSet:
    """The record set in ``data``; :class:`MalformedRecordSet` for anything else."""
    data = bytes(data)
    if len(data) > MAX_RECORD_SET_SIZE:
        raise MalformedRecordSet(f"{len(data)} bytes, at most {MAX_RECORD_SET_SIZE}")
    cursor = _Cursor(data)
    if cursor.take(len(MAGIC), "magic") != MAGIC:
        raise MalformedRecordSet("not a TrustChain record set (bad magic)")
    version = cursor.uint(1, "version")
    if version != VERSION:
        raise MalformedRecordSet(f"record set version {version}, expected {VERSION}")
    anchors: list[x509.Certificate] = []
    for index in range(cursor.count(1, MAX_ANCHORS, "anchor")):
        der = cursor.entry(MAX_ANCHOR_SIZE, f"anchor {index}")
        try:
            anchors.append(parse_certificate(der))
        except MalformedData as exc:
            raise MalformedRecordSet(f"anchor {index}: {exc}") from exc
    crls: list[x509.CertificateRevocationList] = []
    for index in range(cursor.count(1, MAX_CRLS, "CRL")):
        der = cursor.entry(MAX_CRL_SIZE, f"CRL {index}")
        try:
            crl = x509.load_der_x509_crl(der)
            _ = (crl.issuer, crl.extensions)
            crls.append(crl)
        except DECODE_ERRORS as exc:
            raise MalformedRecordSet(f"CRL {index} is not a DER CRL: {exc}") from exc
    records: list[SignedRecord] = []
    for index in range(cursor.count(4, MAX_ENTRIES, "record")):
        entry = cursor.entry(MAX_RECORD_SET_SIZE, f"record {index}")
        try:
            records.append(SignedRecord.decode(entry))
        except NameRecordRejected as exc:
            raise MalformedRecordSet(f"record {index}: {exc}") from exc
    revocations: list[SignedRevocation] = []
    for index in range(cursor.count(4, MAX_ENTRIES, "revocation")):
        entry = cursor.entry(MAX_RECORD_SET_SIZE, f"revocation {index}")
        try:
            revocations.append(SignedRevocation.decode(entry))
        except NameRecordRejected as exc:
            raise MalformedRecordSet(f"revocation {index}: {exc}") from exc
    if cursor.pos != len(data):
        raise MalformedRecordSet(f"{len(data) - cursor.pos} trailing byte(s)")
    return RecordSet(tuple(records), tuple(revocations), tuple(anchors), tuple(crls))


def add_crls(
    store: TrustStore,
    crls: Iterable[x509.CertificateRevocationList],
    issuers: Iterable[x509.Certificate] = (),
) -> list[TrustChainError]:
    """Offer ``crls`` to ``store`` (:meth:`TrustStore.add_crl`); returns why the store refused
    the ones it refused (unknown issuer, stale, bad signature...), in order.

    ``issuers``: CA certificates that may have signed some of them (those of the signers'
    chains). One whose subject is a CRL's issuer becomes an extra certificate of the store
    first, so an entity CA's CRL can be checked. That confers no trust (a path through it must
    still end at an anchor) and lets its key revoke only what that key itself issued.
    """
    candidates = list(issuers)
    refused: list[TrustChainError] = []
    for crl in crls:
        try:
            issuer = crl.issuer
            for certificate in candidates:
                if certificate.subject == issuer:
                    store.add_certificate(certificate)
            store.add_crl(crl)
        except TrustChainError as exc:
            refused.append(exc)
        except DECODE_ERRORS as exc:
            refused.append(MalformedData(f"a CRL does not decode: {exc}"))
    return refused


def chain_certificates(record_set: RecordSet) -> list[x509.Certificate]:
    """The distinct certificates above the leaf in the set's signer chains."""
    seen: dict[bytes, x509.Certificate] = {}
    chains = [item.chain for item in record_set.records]
    chains += [item.chain for item in record_set.revocations]
    for chain in chains:
        for certificate in chain[1:]:
            seen.setdefault(certificate.public_bytes(Encoding.DER), certificate)
    return list(seen.values())


def anchor_store(anchors: Sequence[x509.Certificate]) -> TrustStore:
    """A trust store whose anchors are ``anchors`` (named ``record-set anchor <i>``);
    :class:`MalformedRecordSet` if one is not a usable TrustChain certificate."""
    store = TrustStore()
    for index, certificate in enumerate(anchors):
        try:
            check_certificate(certificate)
            store.add_anchor(TrustAnchor(certificate, f"record-set anchor {index}"))
        except MalformedData as exc:
            raise MalformedRecordSet(f"anchor {index} is not a usable anchor: {exc}") from exc
    return store


def verified_names(
    record_set: RecordSet,
    store: TrustStore | None = None,
    *,
    at: datetime | None = None,
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
) -> tuple[dict[str, NameRecord], list[NameRecordRejected]]:
    """The names ``record_set`` establishes at ``at`` (default now) and every refusal (see
    the module docs). ``store`` None: trust the set's own anchors."""
    if store is None:
        store = anchor_store(record_set.anchors)
    add_crls(store, record_set.crls, chain_certificates(record_set))
    refused: list[NameRecordRejected] = []
    revoked: dict[str, Revocation] = {}
    for signed_revocation in record_set.revocations:
        try:
            revocation = verify_revocation(signed_revocation, store, at=at, clock_skew=clock_skew)
        except NameRecordRejected as exc:
            refused.append(exc)
            continue
        held = revoked.get(revocation.name)
        if held is None or revocation.serial > held.serial:
            revoked[revocation.name] = revocation
    names: dict[str, NameRecord] = {}
    for signed in record_set.records:
        try:
            record = verify_record(signed, store, at=at, clock_skew=clock_skew)
        except NameRecordRejected as exc:
            refused.append(exc)
            continue
        covering = revoked.get(record.name)
        if covering is not None and covering.revokes(record):
            refused.append(revoked_rejection(record, covering))
            continue
        current = names.get(record.name)
        if current is None:
            names[record.name] = record
        elif record == current:
            continue
        elif record.serial > current.serial:
            refused.append(stale_rejection(current, record))
            names[record.name] = record
        else:
            refused.append(stale_rejection(record, current))
    return names, refused


def revoked_rejection(record: NameRecord, revocation: Revocation) -> NameRecordRejected:
    """The ``REVOKED`` refusal of ``record``, which ``revocation`` withdraws."""
    return NameRecordRejected(
        NameRejection.REVOKED,
        f"{record.name} serial {record.serial} is revoked (every serial up to "
        f"{revocation.serial}, at {revocation.revoked_at.isoformat()})",
        name=record.name,
        serial=record.serial,
    )


def stale_rejection(record: NameRecord, newer: NameRecord) -> NameRecordRejected:
    """The ``STALE_SERIAL`` refusal of ``record``, superseded by ``newer``."""
    if record.serial == newer.serial:
        detail = (
            f"{record.name} serial {record.serial} differs from another record with the same "
            "serial (a serial must not be reused for other contents)"
        )
    else:
        detail = f"{record.name} serial {record.serial} is superseded by serial {newer.serial}"
    return NameRecordRejected(
        NameRejection.STALE_SERIAL, detail, name=record.name, serial=record.serial
    )
