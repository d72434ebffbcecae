"""Signed certificate timestamps and signed tree heads of the TrustChain transparency log.

Both are shaped after RFC 6962 (section 3.2, the SCT, and section 3.5, the STH): a TLS-style
fixed-layout structure -- a version, a ``signature_type`` selecting which of the two it is, a
64-bit millisecond timestamp, the data it commits to -- signed by the log. They are **not**
byte-compatible with RFC 6962 or RFC 9162: the signature is the log's TrustChain hybrid
(Ed25519 + Falcon-1024) signature envelope, not a TLS ``DigitallySigned`` with an ECDSA or RSA
``SignatureAndHashAlgorithm``, so no RFC 6962 client could check it anyway; and the signed fields
differ as listed below.

Binary encoding (format version 1, all integers big-endian)
===========================================================

SCT and STH share one layout; ``signature_type`` tells them apart::

    offset  size  SCT (signature_type 0)            STH (signature_type 1)
    0       1     version = 1                       version = 1
    1       1     signature_type = 0                signature_type = 1
                  (certificate_timestamp)           (tree_hash)
    2       32    log_id                            log_id
    34      8     timestamp (ms since the epoch)    timestamp (ms since the epoch)
    42      8     leaf_index                        tree_size
    50      32    leaf_hash                         root_hash
    82      2     signature length L                signature length L
    84      L     signature: a trustchain ``SIGNATURE`` envelope (see
                  :mod:`trustchain.crypto.signatures`), at most 1,550 bytes for the hybrid

``log_id`` is SHA-256 of the log's public key envelope (:attr:`VerifyKey.key_id`), as RFC 6962's
LogID is the SHA-256 of the log's key. Integers above ``2**63 - 1`` are refused (SQLite stores
signed 64-bit integers). Parsing is strict: a wrong version or type, a length field that does not
match, a malformed signature envelope or any trailing byte raise
:class:`~trustchain.errors.MalformedData`.

What is signed
==============

The log signs ``SIGNING_DOMAIN || bytes 0..81 of the encoding`` (everything before the
signature length), where::

    SIGNING_DOMAIN = b"TrustChain transparency log v1\\x00"

With the hybrid's own domain prefix (``HYBRID_DOMAIN``), each component signs
``HYBRID_DOMAIN || SIGNING_DOMAIN || version || signature_type || ...``. The domain string keeps
these signatures from being confused with any other use of the log's key; ``signature_type``
keeps an SCT from being read as an STH and back, as in RFC 6962.

Differences from RFC 6962's signed structures:

* SCT: RFC 6962 signs the certificate itself (``ASN.1Cert``, with ``entry_type`` and
  ``extensions``). We sign ``leaf_hash = SHA-256(0x00 || entry)``, the Merkle leaf hash of the
  logged bytes (the certificate DER for a CA), plus ``log_id`` and the ``leaf_index``: our log
  incorporates an entry before it answers, so the SCT can name the entry's index, as RFC 9162's
  ``leaf_index`` SCT extension does, and a client can ask for its inclusion proof directly.
* The Merkle leaf is ``SHA-256(0x00 || entry)`` over the logged bytes themselves, not over RFC
  6962's ``MerkleTreeLeaf`` (which embeds the timestamp).
* STH: RFC 6962 signs ``version, signature_type, timestamp, tree_size, sha256_root_hash``; we
  add ``log_id``.
"""

from __future__ import annotations

import abc
import enum
import struct
from dataclasses import dataclass
from typing import ClassVar, Final, Self

from trustchain.crypto.signatures import Signature, SigningKey, VerifyKey
from trustchain.ct.merkle import HASH_SIZE, leaf_hash
from trustchain.errors import InvalidSignature, MalformedData, UnknownAlgorithm

FORMAT_VERSION: Final = 1
SIGNING_DOMAIN: Final = b"TrustChain transparency log v1\x00"
LOG_ID_SIZE: Final = 32
MAX_UINT63: Final = (1 << 63) - 1
_HEAD = struct.Struct(">BB32sQQ32s")
_SIGNATURE_LENGTH = struct.Struct(">H")
#: Size of the signed fields (offset of the signature length).
SIGNED_SIZE: Final = _HEAD.size


class SignatureType(enum.IntEnum):
    """What a signed structure is (RFC 6962 ``SignatureType``)."""

    CERTIFICATE_TIMESTAMP = 0
    TREE_HASH = 1


def _check_bytes(value: bytes, size: int, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise MalformedData(f"{what} must be bytes, got {type(value).__name__}")
    raw = bytes(value)
    if len(raw) != size:
        raise MalformedData(f"{what} must be {size} bytes, got {len(raw)}")
    return raw


def _check_uint(value: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_UINT63:
        raise MalformedData(f"{what} must be an integer in [0, 2**63), got {value!r}")


@dataclass(frozen=True)
class _Signed(abc.ABC):
    """Shared layout of :class:`SignedCertificateTimestamp` and :class:`SignedTreeHead`."""

    TYPE: ClassVar[SignatureType]
    NAME: ClassVar[str]

    @abc.abstractmethod
    def _fields(self) -> tuple[int, bytes, int, int, bytes, Signature]:
        """``(version, log id, timestamp, leaf index or tree size, hash, signature)``."""

    def _check(self) -> None:
        version, log_id, timestamp, number, digest, signature = self._fields()
        if version != FORMAT_VERSION:
            raise MalformedData(f"unsupported {self.NAME} version {version!r}")
        _check_bytes(log_id, LOG_ID_SIZE, "log id")
        _check_uint(timestamp, "timestamp")
        _check_uint(
            number,
            "leaf index" if self.TYPE is SignatureType.CERTIFICATE_TIMESTAMP else "tree size",
        )
        _check_bytes(digest, HASH_SIZE, "hash")
        if not isinstance(signature, Signature):
            raise MalformedData(f"signature must be a Signature, got {type(signature).__name__}")

    @classmethod
    def _message(cls, log_id: bytes, timestamp: int, number: int, digest: bytes) -> bytes:
        return SIGNING_DOMAIN + _HEAD.pack(
            FORMAT_VERSION, cls.TYPE, log_id, timestamp, number, digest
        )

    def signed_data(self) -> bytes:
        """The bytes the log signs: ``SIGNING_DOMAIN`` and the fields before the signature."""
        _, log_id, timestamp, number, digest, _ = self._fields()
        return self._message(log_id, timestamp, number, digest)

    def to_bytes(self) -> bytes:
        """The binary encoding (see the module docs)."""
        signature = self._fields()[5].to_bytes()
        if len(signature) > 0xFFFF:
            raise MalformedData(f"signature of {len(signature)} bytes does not fit a u16 length")
        return (
            self.signed_data()[len(SIGNING_DOMAIN) :]
            + _SIGNATURE_LENGTH.pack(len(signature))
            + signature
        )

    @classmethod
    def _parse(cls, data: bytes) -> tuple[int, bytes, int, int, bytes, Signature]:
        data = bytes(data)
        minimum = _HEAD.size + _SIGNATURE_LENGTH.size
        if len(data) < minimum:
            raise MalformedData(f"truncated {cls.NAME}: {len(data)} bytes, at least {minimum}")
        version, kind, log_id, timestamp, number, digest = _HEAD.unpack_from(data)
        if version != FORMAT_VERSION:
            raise MalformedData(f"unsupported {cls.NAME} version {version}")
        if kind != cls.TYPE:
            raise MalformedData(f"signature_type {kind} is not a {cls.NAME} ({int(cls.TYPE)})")
        (length,) = _SIGNATURE_LENGTH.unpack_from(data, _HEAD.size)
        if len(data) - minimum != length:
            raise MalformedData(
                f"{cls.NAME} declares a {length}-byte signature, {len(data) - minimum} bytes follow"
            )
        try:
            signature = Signature.from_bytes(data[minimum:])
        except UnknownAlgorithm as exc:
            raise MalformedData(f"{cls.NAME} signature: {exc}") from exc
        return version, log_id, timestamp, number, digest, signature

    def _verify(self, log_public_key: VerifyKey) -> None:
        _, log_id, _, _, _, signature = self._fields()
        if log_public_key.key_id != log_id:
            raise InvalidSignature(
                f"{self.NAME} is from log {log_id.hex()[:16]}..., the key given is log "
                f"{log_public_key.key_id.hex()[:16]}..."
            )
        try:
            log_public_key.verify(signature, self.signed_data())
        except InvalidSignature as exc:
            raise InvalidSignature(f"{self.NAME} signature does not verify: {exc}") from exc


@dataclass(frozen=True)
class SignedCertificateTimestamp(_Signed):
    """The log's promise that entry ``leaf_index`` (leaf hash ``leaf_hash``) is in the log.

    ``timestamp`` is in milliseconds since the Unix epoch. Constructing one checks field sizes
    and ranges (:class:`MalformedData`); :meth:`verify` checks the signature.
    """

    log_id: bytes
    timestamp: int
    leaf_index: int
    leaf_hash: bytes
    signature: Signature
    version: int = FORMAT_VERSION

    TYPE: ClassVar[SignatureType] = SignatureType.CERTIFICATE_TIMESTAMP
    NAME: ClassVar[str] = "SCT"

    def __post_init__(self) -> None:
        self._check()

    def _fields(self) -> tuple[int, bytes, int, int, bytes, Signature]:
        return (
            self.version,
            self.log_id,
            self.timestamp,
            self.leaf_index,
            self.leaf_hash,
            self.signature,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Parse the binary encoding strictly (:class:`MalformedData`)."""
        version, log_id, timestamp, index, digest, signature = cls._parse(data)
        return cls(log_id, timestamp, index, digest, signature, version)

    @classmethod
    def issue(
        cls, signer: SigningKey, *, timestamp: int, leaf_index: int, leaf_hash: bytes
    ) -> Self:
        """Sign an SCT with the log key ``signer`` (the log id is its public key's id)."""
        log_id = signer.public_key().key_id
        _check_uint(timestamp, "timestamp")
        _check_uint(leaf_index, "leaf index")
        digest = _check_bytes(leaf_hash, HASH_SIZE, "leaf hash")
        signature = signer.sign(cls._message(log_id, timestamp, leaf_index, digest))
        return cls(log_id, timestamp, leaf_index, digest, signature)

    def verify(self, log_public_key: VerifyKey, *, entry: bytes | None = None) -> None:
        """Check the log's signature; with ``entry``, also that the SCT is for those bytes.

        :class:`InvalidSignature` if the key is not this log's, the signature does not verify,
        or ``leaf_hash`` is not the leaf hash of ``entry``; :class:`AlgorithmMismatch` for a
        signature of another algorithm than the key.
        """
        if entry is not None and leaf_hash(entry) != self.leaf_hash:
            raise InvalidSignature("the SCT is for another entry (leaf hash differs)")
        self._verify(log_public_key)


@dataclass(frozen=True)
class SignedTreeHead(_Signed):
    """The log's signed statement that its first ``tree_size`` entries have root ``root_hash``.

    ``timestamp`` (milliseconds since the Unix epoch) is at least that of every entry covered.
    """

    log_id: bytes
    timestamp: int
    tree_size: int
    root_hash: bytes
    signature: Signature
    version: int = FORMAT_VERSION

    TYPE: ClassVar[SignatureType] = SignatureType.TREE_HASH
    NAME: ClassVar[str] = "STH"

    def __post_init__(self) -> None:
        self._check()

    def _fields(self) -> tuple[int, bytes, int, int, bytes, Signature]:
        return (
            self.version,
            self.log_id,
            self.timestamp,
            self.tree_size,
            self.root_hash,
            self.signature,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Parse the binary encoding strictly (:class:`MalformedData`)."""
        version, log_id, timestamp, size, digest, signature = cls._parse(data)
        return cls(log_id, timestamp, size, digest, signature, version)

    @classmethod
    def issue(cls, signer: SigningKey, *, timestamp: int, tree_size: int, root_hash: bytes) -> Self:
        """Sign a tree head with the log key ``signer``."""
        log_id = signer.public_key().key_id
        _check_uint(timestamp, "timestamp")
        _check_uint(tree_size, "tree size")
        digest = _check_bytes(root_hash, HASH_SIZE, "root hash")
        signature = signer.sign(cls._message(log_id, timestamp, tree_size, digest))
        return cls(log_id, timestamp, tree_size, digest, signature)

    def verify(self, log_public_key: VerifyKey) -> None:
        """Check the log's signature (:class:`InvalidSignature` / :class:`AlgorithmMismatch`)."""
        self._verify(log_public_key)
