"""Signed name records: names trusted because a TrustChain certificate signed them.

A :class:`NameRecord` maps a name to a node id, IP addresses, service endpoints (DNS SRV) and
texts (DNS TXT), with a TTL, a serial and a validity window. A :class:`SignedRecord` is a
record, the signer's certificate chain (leaf first) and the leaf key's hybrid (Ed25519 +
Falcon-1024) signature. :func:`verify_record` decides whether to believe it: no resolver is
trusted, only the TrustChain hierarchy and the name constraints its CAs carry. A
:class:`Revocation` (signed the same way, :class:`SignedRevocation`) withdraws every record of
a name up to a serial.

Values
======

* **name**: ASCII, lowercase, no trailing dot, 1 to 253 characters, dot-separated LDH labels
  of 1 to 63 letters, digits and inner hyphens (RFC 1123). Constructors normalise: they lower
  the case and drop one trailing dot; anything else (non-ASCII, ``_``, ``*``, empty labels)
  raises :class:`InvalidNameRecord`.
* **node_id**: exactly 32 bytes (a TrustChain key id, SHA-256 of a hybrid public key).
* **addresses**: 1 to 16 distinct IP literals (IPv4 or IPv6, no zone index), kept in the
  order given, normalised to Python's ``ipaddress`` text form (``2001:db8::1``).
* **services** (:class:`ServiceEndpoint`): at most 16 distinct; a service and a protocol are
  RFC 6335 service names (1 to 15 lowercase letters, digits and inner single hyphens, at least
  one letter; e.g. ``stoq``, ``udp``); port 1 to 65535; SRV priority and weight 0 to 65535.
  The SRV owner name is ``_<service>._<protocol>.<name>``.
* **texts**: at most 16 distinct strings, each at most 255 bytes of UTF-8 (one DNS
  character-string).
* **ttl**: seconds, 0 to 2**31 - 1 (RFC 2181 §8). **serial**: 1 to 2**63 - 1; a higher serial
  replaces a lower one (see :mod:`trustchain.naming.registry`).
* **not_before**, **not_after**: timezone-aware; stored in UTC, truncated to whole seconds, not
  before 1970; ``not_before < not_after``.

Canonical encoding of a record (version 1)
==========================================

Integers are unsigned big-endian; ``str8(x)`` is a 1-byte length then the bytes::

    u8    version = 1
    str8  name (ASCII)
    32    node id
    u8    address count a (1..16), then a times: u8 length (4 | 16) || packed address
    u8    service count s (0..16), then s times:
              str8 service || str8 protocol || u16 port || u16 priority || u16 weight
    u8    text count t (0..16), then t times: str8 text (UTF-8)
    u32   ttl
    u64   serial
    u64   not_before (seconds since 1970-01-01T00:00:00Z)
    u64   not_after

A revocation (version 1)::

    u8 version = 1 || str8 name || u64 serial || u64 revoked_at (seconds since the epoch)

Decoding is strict: a value outside the rules above, a truncated field or a trailing byte is
``MALFORMED``, and so is any encoding that is not the one :meth:`NameRecord.encode` produces
for the decoded value (so each value has exactly one encoding, and the signature covers it).

Signatures
==========

The signer's hybrid key signs ``RECORD_DOMAIN || encoding`` (``b"trustchain/1
name-record\\0"``) for a record, ``REVOCATION_DOMAIN || encoding`` (``b"trustchain/1
name-revocation\\0"``) for a revocation, with
:meth:`~trustchain.crypto.signatures.SigningKey.sign` (which itself prefixes its
``HYBRID_DOMAIN``). The signature is the ``SIGNATURE`` envelope of
:mod:`trustchain.crypto.signatures`, and must be hybrid Ed25519 + Falcon-1024.

Signed container (``SignedRecord.encode`` / ``SignedRevocation.encode``)
=========================================================================

::

    u8    format = 1
    u8    kind: 1 = name record, 2 = revocation
    u16   body length (1..8192), then the record's or revocation's canonical encoding
    u8    certificate count c (1..8), then c times: u16 length (1..32768) || DER certificate
          (the signer's leaf first, then the certificates that lead to an anchor)
    u16   signature length (1..4096), then the signature envelope

At most :data:`MAX_SIGNED_SIZE` bytes; nothing may follow. Every length is checked before it
is used; a wrong kind, a certificate that does not parse as DER, a signature envelope that does
not parse, or a trailing byte is ``MALFORMED`` (:class:`NameRecordRejected`).

Verification (:func:`verify_record`, :func:`verify_revocation`)
==================================================================

In this order; the first failure raises :class:`NameRecordRejected` with its
:class:`NameRejection`:

1. ``MALFORMED``: bytes given that do not decode (above).
2. ``BAD_SIGNATURE``: the signature is not hybrid, the leaf carries no readable hybrid key, or
   the signature does not verify under the leaf's key over the domain-separated encoding.
3. ``CHAIN_REJECTED``: a presented certificate whose names or extensions do not decode, or
   :func:`trustchain.ca.validation.validate` rejects the chain at the verification time (the
   :class:`~trustchain.errors.CertificateRejected` -- ``MALFORMED`` for the former -- is the
   exception's ``__cause__`` and its ``certificate_rejection``: an expired, revoked or
   untrusted signer...); or a presented certificate is not on the validated path (no
   ``certificate_rejection`` then). Every presented certificate must be on it, except one
   that certifies the anchor's own name and key (a rollover cross-certificate, or the root
   itself): otherwise a copy of an intermediate from the trust store could stand in for a
   presented one that was tampered with.
4. ``OUTSIDE_NAMESPACE``: the name must be permitted by the name constraints of the CA
   certificates on the validated path (every certificate above the leaf, the anchor
   included; :func:`trustchain.ca.validation.permitted_by_name_constraints`), and at least one
   of them must carry a permitted dNSName subtree: a path with no DNS name constraint at all
   (a leaf straight under a root) authorises nothing. For a record, every address must also be
   permitted by the iPAddress constraints on the path (none: addresses are unconstrained, as
   RFC 5280 has it for a name form without subtrees). TrustChain's entity CAs permit exactly
   their namespace (:mod:`trustchain.ca.profiles`), so any leaf of ``bank`` (namespace
   ``bank.hypermesh``) may sign ``bank.hypermesh`` and names below it, and nothing else.
5. Records: ``EXPIRED`` when ``at - clock_skew > not_after``, ``NOT_YET_VALID`` when
   ``at + clock_skew < not_before`` (the skew is the one certificate validation allows).
   Revocations: ``NOT_YET_VALID`` when ``revoked_at`` is after ``at + clock_skew``; a
   revocation never expires.

The chain is validated at the verification time, so a record stops verifying when its
signer's certificate expires (TrustChain leaves live 24 hours by default): re-sign it with a
renewed certificate. ``REVOKED`` and ``STALE_SERIAL`` are decided where several records meet
(:mod:`trustchain.naming.zone`, :mod:`trustchain.naming.registry`).
"""

from __future__ import annotations

import enum
import ipaddress
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Self

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from trustchain.ca import hybrid
from trustchain.ca.trust import PARSE_ERRORS, TrustStore
from trustchain.ca.validation import (
    DEFAULT_CLOCK_SKEW,
    ValidationReport,
    permitted_by_name_constraints,
    validate,
)
from trustchain.crypto.algorithms import SignatureAlgorithm
from trustchain.crypto.signatures import Signature, SigningKey, VerifyKey
from trustchain.errors import (
    AlgorithmMismatch,
    CertificateRejected,
    InvalidSignature,
    MalformedData,
    RejectionReason,
    TrustChainError,
    UnknownAlgorithm,
)

__all__ = [
    "DECODE_ERRORS",
    "ENCODING_VERSION",
    "MAX_ADDRESSES",
    "MAX_CERTIFICATE_SIZE",
    "MAX_CHAIN_CERTIFICATES",
    "MAX_RECORD_SIZE",
    "MAX_SERIAL",
    "MAX_SERVICES",
    "MAX_SIGNATURE_SIZE",
    "MAX_SIGNED_SIZE",
    "MAX_TEXTS",
    "MAX_TTL",
    "NODE_ID_SIZE",
    "RECORD_DOMAIN",
    "REVOCATION_DOMAIN",
    "InvalidNameRecord",
    "NameRecord",
    "NameRecordRejected",
    "NameRejection",
    "NamingError",
    "Revocation",
    "ServiceEndpoint",
    "SignedRecord",
    "SignedRevocation",
    "SignerMismatch",
    "check_certificate",
    "normalize_name",
    "parse_certificate",
    "sign_record",
    "sign_revocation",
    "verify_record",
    "verify_revocation",
]

#: Version byte of the record and revocation encodings, and of the signed container.
ENCODING_VERSION: Final = 1
#: What the signer signs, before the record's encoding.
RECORD_DOMAIN: Final = b"trustchain/1 name-record\x00"
#: What the signer signs, before the revocation's encoding.
REVOCATION_DOMAIN: Final = b"trustchain/1 name-revocation\x00"

NODE_ID_SIZE: Final = 32
MAX_NAME_LENGTH: Final = 253
MAX_ADDRESSES: Final = 16
MAX_SERVICES: Final = 16
MAX_TEXTS: Final = 16
MAX_TEXT_BYTES: Final = 255
MAX_TTL: Final = 2**31 - 1
MAX_SERIAL: Final = 2**63 - 1
#: Largest record or revocation encoding in a signed container (a valid record is < 6 KiB).
MAX_RECORD_SIZE: Final = 8192
MAX_CHAIN_CERTIFICATES: Final = 8
#: Largest DER certificate accepted (a hybrid TrustChain certificate is about 4.5 to 6 KiB).
MAX_CERTIFICATE_SIZE: Final = 32768
#: Largest signature envelope accepted (a hybrid signature is at most about 1.6 KiB).
MAX_SIGNATURE_SIZE: Final = 4096
#: Largest signed container.
MAX_SIGNED_SIZE: Final = (
    4 + MAX_RECORD_SIZE + 1 + MAX_CHAIN_CERTIFICATES * (2 + MAX_CERTIFICATE_SIZE) + 2
) + MAX_SIGNATURE_SIZE

_HYBRID: Final = SignatureAlgorithm.HYBRID_ED25519_FALCON_1024
_KIND_RECORD: Final = 1
_KIND_REVOCATION: Final = 2
_KIND_NAMES: Final = {_KIND_RECORD: "name record", _KIND_REVOCATION: "revocation"}
_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_SERVICE_NAME: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,13}[a-z0-9])?")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


# --- errors ---------------------------------------------------------------------------------------


class NamingError(TrustChainError):
    """Base of every failure of TrustChain's federated naming."""


class InvalidNameRecord(NamingError, ValueError):
    """A name, record, service endpoint or revocation built from values the rules refuse."""


class SignerMismatch(NamingError, ValueError):
    """Signing with a key that is not the hybrid key of the chain's leaf (or no chain)."""


class NameRejection(enum.Enum):
    """Why a signed record or revocation is not believed."""

    #: The bytes do not decode (truncated, oversized, trailing bytes, not canonical...).
    MALFORMED = "malformed"
    #: The signature does not verify under the signer leaf's hybrid key.
    BAD_SIGNATURE = "bad-signature"
    #: The signer's certificate chain does not validate against the trust store.
    CHAIN_REJECTED = "chain-rejected"
    #: The signer's CAs do not permit the name (or an address) by their name constraints.
    OUTSIDE_NAMESPACE = "outside-namespace"
    #: The record's not_after has passed.
    EXPIRED = "expired"
    #: The record's not_before (a revocation's revoked_at) is still ahead.
    NOT_YET_VALID = "not-yet-valid"
    #: A valid revocation covers the record's serial.
    REVOKED = "revoked"
    #: A record with a higher (or the same, with other contents) serial is already known.
    STALE_SERIAL = "stale-serial"


class NameRecordRejected(NamingError):
    """A signed record or revocation that is refused; ``reason`` says why.

    ``str()`` is ``f"{reason.name}: {detail}"``. ``name`` and ``serial`` identify what was
    refused when known (not for bytes that do not decode). ``certificate_rejection`` is the
    validator's verdict for a ``CHAIN_REJECTED`` caused by it (also the ``__cause__``).
    """

    def __init__(
        self,
        reason: NameRejection,
        detail: str,
        *,
        name: str | None = None,
        serial: int | None = None,
        certificate_rejection: CertificateRejected | None = None,
    ) -> None:
        super().__init__(f"{reason.name}: {detail}")
        self.reason = reason
        self.detail = detail
        self.name = name
        self.serial = serial
        self.certificate_rejection = certificate_rejection


def _malformed(detail: str) -> NameRecordRejected:
    return NameRecordRejected(NameRejection.MALFORMED, detail)


# --- value rules ----------------------------------------------------------------------------------


def normalize_name(name: str) -> str:
    """``name`` in canonical form (see "Values"); :class:`InvalidNameRecord` if it is not a
    valid name."""
    if not isinstance(name, str):
        raise InvalidNameRecord(f"a name must be text, got {type(name).__name__}")
    if not name.isascii():
        raise InvalidNameRecord(f"invalid name {name!r}: only ASCII letters, digits, - and .")
    normal = name.lower().removesuffix(".")
    if not normal or len(normal) > MAX_NAME_LENGTH:
        raise InvalidNameRecord(f"invalid name {name!r}: 1 to {MAX_NAME_LENGTH} characters")
    for label in normal.split("."):
        if not _LABEL.fullmatch(label):
            raise InvalidNameRecord(
                f"invalid name {name!r}: label {label!r} is not 1-63 letters, digits and inner "
                "hyphens"
            )
    return normal


def _service_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.isascii():
        raise InvalidNameRecord(f"the {what} must be ASCII text, got {value!r}")
    normal = value.lower()
    if (
        not _SERVICE_NAME.fullmatch(normal)
        or "--" in normal
        or not any(c.isalpha() for c in normal)
    ):
        raise InvalidNameRecord(
            f"invalid {what} {value!r}: 1-15 letters, digits and single inner hyphens, with at "
            "least one letter (RFC 6335)"
        )
    return normal


def _integer(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise InvalidNameRecord(f"{what} must be an integer from {low} to {high}, got {value!r}")
    return value


def _address(value: str) -> str:
    if not isinstance(value, str):
        raise InvalidNameRecord(f"an address must be text, got {type(value).__name__}")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidNameRecord(f"not an IP address: {value!r}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise InvalidNameRecord(f"an address must not carry a zone index: {value!r}")
    return str(address)


def _time(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidNameRecord(f"{what} must be a timezone-aware datetime, got {value!r}")
    try:
        normal = value.astimezone(UTC).replace(microsecond=0)
    except OverflowError:
        raise InvalidNameRecord(f"{what} is out of range: {value!r}") from None
    if normal < _EPOCH:
        raise InvalidNameRecord(f"{what} must not be before 1970, got {value.isoformat()}")
    return normal


def _seconds(value: datetime) -> int:
    return int((value - _EPOCH).total_seconds())


def _from_seconds(value: int, what: str) -> datetime:
    try:
        return _EPOCH + timedelta(seconds=value)
    except OverflowError:
        raise _malformed(f"{what} {value} is out of range") from None


def _distinct(values: Sequence[object], what: str) -> None:
    if len(set(values)) != len(values):
        raise InvalidNameRecord(f"duplicate {what}")


# --- encoding helpers -----------------------------------------------------------------------------


def _str8(data: bytes, what: str) -> bytes:
    if len(data) > 255:
        raise InvalidNameRecord(f"{what} is {len(data)} bytes, at most 255")
    return bytes([len(data)]) + data


class _Reader:
    """Strict reading of big-endian fields; every failure is ``fail(detail)``."""

    def __init__(self, data: bytes, what: str, fail: Callable[[str], NamingError]) -> None:
        self._data = data
        self._pos = 0
        self._what = what
        self._fail = fail

    def error(self, detail: str) -> NamingError:
        return self._fail(f"{self._what}: {detail}")

    def take(self, size: int, field_name: str) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise self.error(
                f"truncated in {field_name} (needs {size} bytes at offset {self._pos}, "
                f"{len(self._data) - self._pos} left)"
            )
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def uint(self, size: int, field_name: str) -> int:
        return int.from_bytes(self.take(size, field_name), "big")

    def str8(self, field_name: str) -> bytes:
        return self.take(self.uint(1, f"{field_name} length"), field_name)

    def sized(self, width: int, limit: int, field_name: str, *, minimum: int = 1) -> bytes:
        size = self.uint(width, f"{field_name} length")
        if not minimum <= size <= limit:
            raise self.error(f"{field_name} length {size} is not {minimum} to {limit}")
        return self.take(size, field_name)

    def ascii(self, field_name: str) -> str:
        raw = self.str8(field_name)
        if not raw.isascii():
            raise self.error(f"{field_name} is not ASCII")
        return raw.decode("ascii")

    def end(self) -> None:
        if self._pos != len(self._data):
            raise self.error(f"{len(self._data) - self._pos} trailing byte(s)")


# --- values ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceEndpoint:
    """A service a name offers: DNS SRV ``_<service>._<protocol>.<name>`` (see "Values")."""

    service: str
    protocol: str
    port: int
    priority: int = 0
    weight: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "service", _service_name(self.service, "service"))
        object.__setattr__(self, "protocol", _service_name(self.protocol, "protocol"))
        _integer(self.port, "a service port", 1, 65535)
        _integer(self.priority, "an SRV priority", 0, 65535)
        _integer(self.weight, "an SRV weight", 0, 65535)

    def owner(self, name: str) -> str:
        """The SRV owner name of this service of ``name``."""
        return f"_{self.service}._{self.protocol}.{normalize_name(name)}"

    def _encode(self) -> bytes:
        return (
            _str8(self.service.encode("ascii"), "service")
            + _str8(self.protocol.encode("ascii"), "protocol")
            + struct.pack(">HHH", self.port, self.priority, self.weight)
        )


@dataclass(frozen=True)
class NameRecord:
    """What a name resolves to (see the module docs for every rule). Constructing one checks
    and normalises every field (:class:`InvalidNameRecord`)."""

    name: str
    node_id: bytes
    addresses: tuple[str, ...]
    services: tuple[ServiceEndpoint, ...] = ()
    texts: tuple[str, ...] = ()
    ttl: int = 300
    serial: int = 1
    not_before: datetime = field(kw_only=True)
    not_after: datetime = field(kw_only=True)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "name", normalize_name(self.name))
        if not isinstance(self.node_id, bytes | bytearray) or len(self.node_id) != NODE_ID_SIZE:
            raise InvalidNameRecord(f"a node id must be {NODE_ID_SIZE} bytes")
        set_(self, "node_id", bytes(self.node_id))
        given: object = self.addresses
        if isinstance(given, str):
            raise InvalidNameRecord("addresses must be a sequence of IP literals, not one string")
        addresses = tuple(_address(a) for a in self.addresses)
        if not 1 <= len(addresses) <= MAX_ADDRESSES:
            raise InvalidNameRecord(f"a record needs 1 to {MAX_ADDRESSES} addresses")
        _distinct(addresses, "address")
        set_(self, "addresses", addresses)
        services = tuple(self.services)
        if len(services) > MAX_SERVICES or not all(
            isinstance(s, ServiceEndpoint) for s in services
        ):
            raise InvalidNameRecord(f"a record has at most {MAX_SERVICES} ServiceEndpoints")
        _distinct(services, "service endpoint")
        set_(self, "services", services)
        given_texts: object = self.texts
        if isinstance(given_texts, str):
            raise InvalidNameRecord("texts must be a sequence of strings, not one string")
        texts = tuple(self.texts)
        if len(texts) > MAX_TEXTS:
            raise InvalidNameRecord(f"a record has at most {MAX_TEXTS} texts")
        for text in texts:
            if not isinstance(text, str) or len(text.encode("utf-8")) > MAX_TEXT_BYTES:
                raise InvalidNameRecord(f"a text is a string of at most {MAX_TEXT_BYTES} bytes")
        _distinct(texts, "text")
        set_(self, "texts", texts)
        _integer(self.ttl, "the TTL", 0, MAX_TTL)
        _integer(self.serial, "the serial", 1, MAX_SERIAL)
        set_(self, "not_before", _time(self.not_before, "not_before"))
        set_(self, "not_after", _time(self.not_after, "not_after"))
        if self.not_after <= self.not_before:
            raise InvalidNameRecord("not_after must be after not_before")

    @property
    def ipv4_addresses(self) -> tuple[str, ...]:
        """The IPv4 addresses (DNS A), in order."""
        return tuple(a for a in self.addresses if ipaddress.ip_address(a).version == 4)

    @property
    def ipv6_addresses(self) -> tuple[str, ...]:
        """The IPv6 addresses (DNS AAAA), in order."""
        return tuple(a for a in self.addresses if ipaddress.ip_address(a).version == 6)

    def encode(self) -> bytes:
        """The canonical encoding (see the module docs)."""
        parts = [
            bytes([ENCODING_VERSION]),
            _str8(self.name.encode("ascii"), "name"),
            self.node_id,
            bytes([len(self.addresses)]),
        ]
        for address in self.addresses:
            parts.append(_str8(ipaddress.ip_address(address).packed, "address"))
        parts.append(bytes([len(self.services)]))
        parts.extend(service._encode() for service in self.services)
        parts.append(bytes([len(self.texts)]))
        parts.extend(_str8(text.encode("utf-8"), "text") for text in self.texts)
        parts.append(
            struct.pack(
                ">IQQQ",
                self.ttl,
                self.serial,
                _seconds(self.not_before),
                _seconds(self.not_after),
            )
        )
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> NameRecord:
        """The record ``data`` encodes; ``MALFORMED`` :class:`NameRecordRejected` otherwise."""
        data = bytes(data)
        reader = _Reader(data, "name record", _malformed)
        if len(data) > MAX_RECORD_SIZE:
            raise reader.error(f"{len(data)} bytes, at most {MAX_RECORD_SIZE}")
        version = reader.uint(1, "version")
        if version != ENCODING_VERSION:
            raise reader.error(f"version {version}, expected {ENCODING_VERSION}")
        try:
            name = reader.ascii("name")
            node_id = reader.take(NODE_ID_SIZE, "node id")
            addresses = []
            for _ in range(reader.uint(1, "address count")):
                packed = reader.str8("address")
                if len(packed) not in (4, 16):
                    raise reader.error(f"an address is {len(packed)} bytes, not 4 or 16")
                addresses.append(str(ipaddress.ip_address(packed)))
            services = []
            for _ in range(reader.uint(1, "service count")):
                service = reader.ascii("service")
                protocol = reader.ascii("protocol")
                port, priority, weight = struct.unpack(">HHH", reader.take(6, "service port"))
                services.append(ServiceEndpoint(service, protocol, port, priority, weight))
            texts = []
            for _ in range(reader.uint(1, "text count")):
                try:
                    texts.append(reader.str8("text").decode("utf-8"))
                except UnicodeDecodeError:
                    raise reader.error("a text is not UTF-8") from None
            ttl = reader.uint(4, "ttl")
            serial = reader.uint(8, "serial")
            not_before = _from_seconds(reader.uint(8, "not_before"), "not_before")
            not_after = _from_seconds(reader.uint(8, "not_after"), "not_after")
            reader.end()
            record = cls(
                name,
                node_id,
                tuple(addresses),
                tuple(services),
                tuple(texts),
                ttl,
                serial,
                not_before=not_before,
                not_after=not_after,
            )
        except InvalidNameRecord as exc:
            raise reader.error(str(exc)) from exc
        if record.encode() != data:
            raise reader.error("not the canonical encoding of its value")
        return record


@dataclass(frozen=True)
class Revocation:
    """Withdraws every record of ``name`` whose serial is at most ``serial``; ``revoked_at``
    says when (timezone-aware, whole seconds, UTC)."""

    name: str
    serial: int
    revoked_at: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalize_name(self.name))
        _integer(self.serial, "the serial", 1, MAX_SERIAL)
        object.__setattr__(self, "revoked_at", _time(self.revoked_at, "revoked_at"))

    def revokes(self, record: NameRecord) -> bool:
        """Whether this revocation withdraws ``record``."""
        return record.name == self.name and record.serial <= self.serial

    def encode(self) -> bytes:
        """The canonical encoding (see the module docs)."""
        return (
            bytes([ENCODING_VERSION])
            + _str8(self.name.encode("ascii"), "name")
            + struct.pack(">QQ", self.serial, _seconds(self.revoked_at))
        )

    @classmethod
    def decode(cls, data: bytes) -> Revocation:
        """The revocation ``data`` encodes; ``MALFORMED`` :class:`NameRecordRejected` else."""
        data = bytes(data)
        reader = _Reader(data, "revocation", _malformed)
        if len(data) > MAX_RECORD_SIZE:
            raise reader.error(f"{len(data)} bytes, at most {MAX_RECORD_SIZE}")
        version = reader.uint(1, "version")
        if version != ENCODING_VERSION:
            raise reader.error(f"version {version}, expected {ENCODING_VERSION}")
        try:
            name = reader.ascii("name")
            serial = reader.uint(8, "serial")
            revoked_at = _from_seconds(reader.uint(8, "revoked_at"), "revoked_at")
            reader.end()
            revocation = cls(name, serial, revoked_at)
        except InvalidNameRecord as exc:
            raise reader.error(str(exc)) from exc
        if revocation.encode() != data:
            raise reader.error("not the canonical encoding of its value")
        return revocation


# --- signed containers ----------------------------------------------------------------------------


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.DER)


#: What ``cryptography`` raises for certificate or CRL contents it cannot decode.
DECODE_ERRORS: Final = PARSE_ERRORS


def check_certificate(certificate: x509.Certificate) -> None:
    """:class:`~trustchain.errors.MalformedData` unless the subject, the issuer and every
    extension of ``certificate`` decode (``cryptography`` decodes them only when asked)."""
    try:
        _ = (certificate.subject, certificate.issuer, certificate.extensions)
    except DECODE_ERRORS as exc:
        raise MalformedData(f"the certificate's names or extensions do not decode: {exc}") from exc


def parse_certificate(der: bytes) -> x509.Certificate:
    """The DER certificate ``der``, with everything :func:`check_certificate` checks decoded;
    :class:`~trustchain.errors.MalformedData` otherwise."""
    try:
        certificate = x509.load_der_x509_certificate(der)
    except DECODE_ERRORS as exc:
        raise MalformedData(f"not a DER certificate: {exc}") from exc
    check_certificate(certificate)
    return certificate


def _check_container(chain: Sequence[x509.Certificate], signature: bytes) -> None:
    if not 1 <= len(chain) <= MAX_CHAIN_CERTIFICATES:
        raise InvalidNameRecord(f"a signer chain has 1 to {MAX_CHAIN_CERTIFICATES} certificates")
    if not all(isinstance(c, x509.Certificate) for c in chain):
        raise InvalidNameRecord("a signer chain holds x509.Certificate objects")
    if not isinstance(signature, bytes) or not 1 <= len(signature) <= MAX_SIGNATURE_SIZE:
        raise InvalidNameRecord(f"a signature is 1 to {MAX_SIGNATURE_SIZE} bytes")


def _encode_container(
    kind: int, body: bytes, chain: Sequence[x509.Certificate], signature: bytes
) -> bytes:
    parts = [struct.pack(">BBH", ENCODING_VERSION, kind, len(body)), body, bytes([len(chain)])]
    for certificate in chain:
        der = _der(certificate)
        if len(der) > MAX_CERTIFICATE_SIZE:
            raise InvalidNameRecord(
                f"a certificate of {len(der)} bytes exceeds {MAX_CERTIFICATE_SIZE}"
            )
        parts += [struct.pack(">H", len(der)), der]
    parts += [struct.pack(">H", len(signature)), signature]
    return b"".join(parts)


def _decode_container(data: bytes, kind: int) -> tuple[bytes, tuple[x509.Certificate, ...], bytes]:
    what = f"signed {_KIND_NAMES[kind]}"
    reader = _Reader(data, what, _malformed)
    if len(data) > MAX_SIGNED_SIZE:
        raise reader.error(f"{len(data)} bytes, at most {MAX_SIGNED_SIZE}")
    version = reader.uint(1, "format")
    if version != ENCODING_VERSION:
        raise reader.error(f"format {version}, expected {ENCODING_VERSION}")
    found = reader.uint(1, "kind")
    if found != kind:
        described = _KIND_NAMES.get(found, f"unknown kind {found}")
        raise reader.error(f"holds a {described}, expected a {_KIND_NAMES[kind]}")
    body = reader.sized(2, MAX_RECORD_SIZE, "body")
    count = reader.uint(1, "certificate count")
    if not 1 <= count <= MAX_CHAIN_CERTIFICATES:
        raise reader.error(f"{count} certificates, expected 1 to {MAX_CHAIN_CERTIFICATES}")
    chain: list[x509.Certificate] = []
    for index in range(count):
        der = reader.sized(2, MAX_CERTIFICATE_SIZE, f"certificate {index}")
        try:
            chain.append(parse_certificate(der))
        except MalformedData as exc:
            raise reader.error(f"certificate {index}: {exc}") from exc
    signature = reader.sized(2, MAX_SIGNATURE_SIZE, "signature")
    reader.end()
    try:
        Signature.from_bytes(signature)
    except (MalformedData, UnknownAlgorithm) as exc:
        raise reader.error(f"the signature envelope does not decode: {exc}") from exc
    return body, tuple(chain), signature


@dataclass(frozen=True)
class SignedRecord:
    """A record, its signer's chain (leaf first) and the signature envelope (module docs)."""

    record: NameRecord
    chain: tuple[x509.Certificate, ...]
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.record, NameRecord):
            raise InvalidNameRecord("a SignedRecord holds a NameRecord")
        object.__setattr__(self, "chain", tuple(self.chain))
        _check_container(self.chain, self.signature)

    @property
    def signer(self) -> x509.Certificate:
        """The leaf certificate whose key signed."""
        return self.chain[0]

    def encode(self) -> bytes:
        """The signed container (see the module docs)."""
        return _encode_container(_KIND_RECORD, self.record.encode(), self.chain, self.signature)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse a signed container; ``MALFORMED`` :class:`NameRecordRejected` otherwise.
        Decoding verifies nothing: see :func:`verify_record`."""
        body, chain, signature = _decode_container(bytes(data), _KIND_RECORD)
        return cls(NameRecord.decode(body), chain, signature)


@dataclass(frozen=True)
class SignedRevocation:
    """A revocation, its signer's chain (leaf first) and the signature envelope."""

    revocation: Revocation
    chain: tuple[x509.Certificate, ...]
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.revocation, Revocation):
            raise InvalidNameRecord("a SignedRevocation holds a Revocation")
        object.__setattr__(self, "chain", tuple(self.chain))
        _check_container(self.chain, self.signature)

    @property
    def signer(self) -> x509.Certificate:
        return self.chain[0]

    def encode(self) -> bytes:
        return _encode_container(
            _KIND_REVOCATION, self.revocation.encode(), self.chain, self.signature
        )

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Parse a signed container; ``MALFORMED`` :class:`NameRecordRejected` otherwise."""
        body, chain, signature = _decode_container(bytes(data), _KIND_REVOCATION)
        return cls(Revocation.decode(body), chain, signature)


# --- signing --------------------------------------------------------------------------------------


def _signer_chain(
    key: SigningKey, chain: Sequence[x509.Certificate]
) -> tuple[x509.Certificate, ...]:
    chain = tuple(chain)
    if not chain:
        raise SignerMismatch("a signer needs its certificate chain (leaf first)")
    if key.algorithm is not _HYBRID:
        raise SignerMismatch(f"name records are signed with {_HYBRID.label} keys")
    try:
        leaf_key = hybrid.certificate_public_key(chain[0])
    except (MalformedData, AlgorithmMismatch, UnknownAlgorithm) as exc:
        raise SignerMismatch(f"the chain's leaf carries no hybrid key: {exc}") from exc
    if leaf_key != key.public_key():
        raise SignerMismatch("the signing key is not the key of the chain's leaf certificate")
    return chain


def sign_record(
    record: NameRecord, key: SigningKey, chain: Sequence[x509.Certificate]
) -> SignedRecord:
    """Sign ``record`` with ``key``, the hybrid key of ``chain``'s leaf
    (:class:`SignerMismatch` otherwise). Nothing is validated here: see :func:`verify_record`."""
    chain = _signer_chain(key, chain)
    signature = key.sign(RECORD_DOMAIN + record.encode()).to_bytes()
    return SignedRecord(record, chain, signature)


def sign_revocation(
    revocation: Revocation, key: SigningKey, chain: Sequence[x509.Certificate]
) -> SignedRevocation:
    """Sign ``revocation`` with ``key``, the hybrid key of ``chain``'s leaf."""
    chain = _signer_chain(key, chain)
    signature = key.sign(REVOCATION_DOMAIN + revocation.encode()).to_bytes()
    return SignedRevocation(revocation, chain, signature)


# --- verification ---------------------------------------------------------------------------------


class _Rejector:
    """Builds the rejections of one verification (what is refused, and which serial)."""

    def __init__(self, name: str, serial: int) -> None:
        self.name = name
        self.serial = serial

    def __call__(
        self,
        reason: NameRejection,
        detail: str,
        certificate_rejection: CertificateRejected | None = None,
    ) -> NameRecordRejected:
        return NameRecordRejected(
            reason,
            detail,
            name=self.name,
            serial=self.serial,
            certificate_rejection=certificate_rejection,
        )


def _when(at: datetime | None) -> datetime:
    when = datetime.now(UTC) if at is None else at
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("the verification time must be timezone-aware")
    return when.astimezone(UTC)


def _check_signature(
    message: bytes, chain: Sequence[x509.Certificate], signature: bytes, reject: _Rejector
) -> None:
    try:
        parsed = Signature.from_bytes(signature)
    except (MalformedData, UnknownAlgorithm) as exc:
        raise reject(NameRejection.MALFORMED, f"the signature does not decode: {exc}") from exc
    if parsed.algorithm is not _HYBRID:
        raise reject(
            NameRejection.BAD_SIGNATURE,
            f"signed with {parsed.algorithm.label}, expected {_HYBRID.label}",
        )
    try:
        leaf_key: VerifyKey = hybrid.certificate_public_key(chain[0])
    except (MalformedData, AlgorithmMismatch, UnknownAlgorithm) as exc:
        raise reject(
            NameRejection.BAD_SIGNATURE, f"the signer certificate has no hybrid key: {exc}"
        ) from exc
    try:
        leaf_key.verify(parsed, message)
    except (InvalidSignature, AlgorithmMismatch) as exc:
        raise reject(
            NameRejection.BAD_SIGNATURE,
            f"the signature does not verify under the signer's key: {exc}",
        ) from exc


def _identity(certificate: x509.Certificate) -> tuple[x509.Name, bytes] | None:
    try:
        return certificate.subject, hybrid.certificate_public_key(certificate).key_id
    except (*DECODE_ERRORS, MalformedData, AlgorithmMismatch, UnknownAlgorithm):
        return None


def _validate_signer(
    chain: Sequence[x509.Certificate],
    store: TrustStore,
    when: datetime,
    skew: timedelta,
    reject: _Rejector,
) -> ValidationReport:
    try:
        for index, certificate in enumerate(chain):
            try:
                check_certificate(certificate)
            except MalformedData as exc:
                raise CertificateRejected(RejectionReason.MALFORMED, str(exc), index) from exc
        report = validate(chain, store, at=when, clock_skew=skew)
    except CertificateRejected as exc:
        where = "" if exc.index is None else f" (certificate {exc.index})"
        raise reject(
            NameRejection.CHAIN_REJECTED,
            f"the signer's chain is rejected: {exc.reason.name}{where}: {exc.detail}",
            exc,
        ) from exc
    on_path = {_der(certificate) for certificate in report.path}
    anchor = _identity(report.path[-1])
    for index, certificate in enumerate(chain):
        if _der(certificate) in on_path:
            continue
        if anchor is not None and _identity(certificate) == anchor:
            continue  # stands for the anchor itself (the root, or a rollover cross-certificate)
        raise reject(
            NameRejection.CHAIN_REJECTED,
            f"certificate {index} of the signer's chain is not on the validated path (altered, "
            "or not part of the leaf's path to the anchor)",
        )
    return report


def _dns_subtrees(certificates: Sequence[x509.Certificate]) -> list[str]:
    trees: list[str] = []
    for certificate in certificates:
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.NameConstraints)
        except x509.ExtensionNotFound:
            continue
        trees += [
            tree.value
            for tree in constraints.value.permitted_subtrees or ()
            if isinstance(tree, x509.DNSName)
        ]
    return trees


def _check_authorised(
    report: ValidationReport, name: str, addresses: Sequence[str], reject: _Rejector
) -> None:
    authorities = report.path[1:]
    try:
        trees = _dns_subtrees(authorities)
        if not trees:
            raise reject(
                NameRejection.OUTSIDE_NAMESPACE,
                "no CA on the signer's path grants a DNS namespace (no permitted dNSName "
                "subtree): it authorises no name",
            )
        if not permitted_by_name_constraints(authorities, x509.DNSName(name)):
            raise reject(
                NameRejection.OUTSIDE_NAMESPACE,
                f"{name} is outside the signer's namespace ({', '.join(trees)})",
            )
        for address in addresses:
            general = x509.IPAddress(ipaddress.ip_address(address))
            if not permitted_by_name_constraints(authorities, general):
                raise reject(
                    NameRejection.OUTSIDE_NAMESPACE,
                    f"address {address} is outside the IP ranges the signer's CAs permit",
                )
    except (*DECODE_ERRORS, MalformedData) as exc:
        raise reject(
            NameRejection.CHAIN_REJECTED, f"the name constraints on the path do not decode: {exc}"
        ) from exc


def verify_record(
    signed: SignedRecord | bytes,
    store: TrustStore,
    *,
    at: datetime | None = None,
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
) -> NameRecord:
    """The record of ``signed`` (a :class:`SignedRecord` or its encoding) if it is to be
    believed at ``at`` (timezone-aware; default now) with the trust of ``store``.

    Raises :class:`NameRecordRejected` (see "Verification" in the module docs for every check
    and its order), ``ValueError`` for a naive ``at``.
    """
    if not isinstance(signed, SignedRecord):
        signed = SignedRecord.decode(signed)
    when = _when(at)
    record = signed.record
    reject = _Rejector(record.name, record.serial)
    _check_signature(RECORD_DOMAIN + record.encode(), signed.chain, signed.signature, reject)
    report = _validate_signer(signed.chain, store, when, clock_skew, reject)
    _check_authorised(report, record.name, record.addresses, reject)
    if when - clock_skew > record.not_after:
        raise reject(
            NameRejection.EXPIRED,
            f"the record expired at {record.not_after.isoformat()} (checked at "
            f"{when.isoformat()}, skew {clock_skew})",
        )
    if when + clock_skew < record.not_before:
        raise reject(
            NameRejection.NOT_YET_VALID,
            f"the record is not valid before {record.not_before.isoformat()} (checked at "
            f"{when.isoformat()}, skew {clock_skew})",
        )
    return record


def verify_revocation(
    signed: SignedRevocation | bytes,
    store: TrustStore,
    *,
    at: datetime | None = None,
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
) -> Revocation:
    """The revocation of ``signed`` if a signer authorised for its name made it (checks as
    for records, module docs); :class:`NameRecordRejected` otherwise."""
    if not isinstance(signed, SignedRevocation):
        signed = SignedRevocation.decode(signed)
    when = _when(at)
    revocation = signed.revocation
    reject = _Rejector(revocation.name, revocation.serial)
    _check_signature(
        REVOCATION_DOMAIN + revocation.encode(), signed.chain, signed.signature, reject
    )
    report = _validate_signer(signed.chain, store, when, clock_skew, reject)
    _check_authorised(report, revocation.name, (), reject)
    if when + clock_skew < revocation.revoked_at:
        raise reject(
            NameRejection.NOT_YET_VALID,
            f"the revocation is dated {revocation.revoked_at.isoformat()}, after "
            f"{when.isoformat()} (skew {clock_skew})",
        )
    return revocation
