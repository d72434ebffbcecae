"""STUN messages (RFC 8489, compatible with RFC 5389 and RFC 5769), sans-IO.

Nothing here touches a socket: :func:`decode` turns a datagram into a :class:`Message`,
:func:`encode` turns a :class:`Message` back into bytes, and the ``encode_*`` / ``decode_*``
functions convert single attribute values. Every integer on the wire is big-endian.

Message (RFC 8489 §5)::

    0      2      4             8                     20
    +------+------+-------------+---------------------+----------------------------
    | type |length| 0x2112A442  | transaction ID (12) | attributes (length bytes)
    +------+------+-------------+---------------------+----------------------------

* ``type`` (16 bits): the two most significant bits are zero; the other 14 interleave the 12-bit
  method ``M11..M0`` and the 2-bit class ``C1 C0`` as
  ``M11 M10 M9 M8 M7 C1 M6 M5 M4 C0 M3 M2 M1 M0`` (so a Binding request is 0x0001, a Binding
  success response 0x0101, a Binding error response 0x0111, a Binding indication 0x0011).
* ``length`` (16 bits): the number of attribute bytes after the 20-byte header, always a
  multiple of 4.
* the magic cookie, 0x2112A442, then a 96-bit transaction ID.

Attribute (RFC 8489 §14)::

    +------+--------+-------------------+---------------------------+
    | type | length | value (length B)  | padding to a multiple of 4 |
    +------+--------+-------------------+---------------------------+

``length`` counts the value only, not the padding. Types 0x0000-0x7FFF are
comprehension-required, 0x8000-0xFFFF comprehension-optional. RFC 8489 makes the padding
content arbitrary (RFC 5769 pads with spaces in places); :func:`decode` keeps it in
:attr:`Attribute.padding` so that re-encoding a received message reproduces it byte for byte.

The trailer attributes come last, in this order, each at most once (RFC 8489 §14.5-14.7):

* MESSAGE-INTEGRITY (0x0008, 20 bytes): HMAC-SHA1 over the message up to the attribute, with the
  header length field set as if the message ended right after MESSAGE-INTEGRITY;
* MESSAGE-INTEGRITY-SHA256 (0x001C, 32 bytes; 16-32 bytes, a multiple of 4, are accepted when
  verifying): HMAC-SHA256, computed the same way (so it covers a MESSAGE-INTEGRITY before it);
* FINGERPRINT (0x8028, 4 bytes): CRC-32 (ISO-HDLC, as :func:`zlib.crc32`) of the message up to the
  attribute, header length including FINGERPRINT, XOR 0x5354554E.

:func:`decode` is strict: a malformed message is a :class:`StunDecodeError` whose ``reason`` says
what is wrong; a misplaced trailer attribute is refused rather than ignored.

Credentials (RFC 8489 §9): the short-term key is the password prepared with the RFC 8265
OpaqueString profile (:func:`short_term_key`); the long-term key is
``MD5(username ":" realm ":" SASLprep(password))`` or the SHA-256 of the same
(:func:`long_term_key`), with SASLprep from RFC 4013 (which the RFC 5769 §2.4 vector needs).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import stringprep
import struct
import unicodedata
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum

from stoq.errors import StoqError

__all__ = [
    "FINGERPRINT_XOR",
    "HEADER_SIZE",
    "MAGIC_COOKIE",
    "MAX_ATTRIBUTES_LENGTH",
    "TRANSACTION_ID_SIZE",
    "Attribute",
    "AttributeType",
    "IntegrityError",
    "Message",
    "MessageClass",
    "Method",
    "PasswordAlgorithm",
    "StunDecodeError",
    "StunError",
    "binding_request",
    "decode",
    "decode_address",
    "decode_change_request",
    "decode_error_code",
    "decode_password_algorithm",
    "decode_password_algorithms",
    "decode_unknown_attributes",
    "decode_xor_address",
    "encode",
    "encode_address",
    "encode_change_request",
    "encode_error_code",
    "encode_password_algorithm",
    "encode_password_algorithms",
    "encode_unknown_attributes",
    "encode_xor_address",
    "error_response",
    "is_stun",
    "long_term_key",
    "message_type",
    "new_transaction_id",
    "opaque_string",
    "saslprep",
    "short_term_key",
    "split_message_type",
    "success_response",
    "user_hash",
    "verify_fingerprint",
    "verify_integrity",
    "verify_integrity_sha256",
]

MAGIC_COOKIE = 0x2112A442
HEADER_SIZE = 20
TRANSACTION_ID_SIZE = 12
FINGERPRINT_XOR = 0x5354554E
"""FINGERPRINT is the CRC-32 of the message XOR this constant ("STUN" in ASCII)."""

MAX_ATTRIBUTES_LENGTH = 0xFFFC
"""The largest header length a message can have: 16 bits, and a multiple of 4."""

_HEADER = struct.Struct(">HHI12s")
_TLV = struct.Struct(">HH")
_REASON_MAX_BYTES = 763
_REASON_MAX_CHARS = 127


class StunError(StoqError):
    """Base class of the STUN codec's errors; also raised for values that cannot be encoded."""


class StunDecodeError(StunError):
    """Bytes that are not a well-formed STUN message or attribute value; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"malformed STUN message: {reason}")


class IntegrityError(StunError):
    """MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 or FINGERPRINT is missing or does not match;
    ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Method(IntEnum):
    """STUN methods (RFC 8489 and the TURN methods of RFC 8656)."""

    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


class MessageClass(IntEnum):
    """The two class bits ``C1 C0`` of the message type."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class AttributeType(IntEnum):
    """Attribute types of RFC 8489, RFC 5780, RFC 8656 (TURN) and RFC 8445 (ICE)."""

    MAPPED_ADDRESS = 0x0001
    CHANGE_REQUEST = 0x0003
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    RESERVATION_TOKEN = 0x0022
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    PADDING = 0x0026
    RESPONSE_PORT = 0x0027
    ADDITIONAL_ADDRESS_FAMILY = 0x8000
    ADDRESS_ERROR_CODE = 0x8001
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    ICMP = 0x8004
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A
    RESPONSE_ORIGIN = 0x802B
    OTHER_ADDRESS = 0x802C


class PasswordAlgorithm(IntEnum):
    """PASSWORD-ALGORITHM values (RFC 8489 §18.5)."""

    MD5 = 0x0001
    SHA256 = 0x0002


_XOR_ADDRESS_TYPES = frozenset(
    {
        AttributeType.XOR_MAPPED_ADDRESS,
        AttributeType.XOR_PEER_ADDRESS,
        AttributeType.XOR_RELAYED_ADDRESS,
    }
)
# The trailer attributes in the order they must come, each at most once, and their sizes.
_TRAILER_TYPES: tuple[int, ...] = (
    AttributeType.MESSAGE_INTEGRITY,
    AttributeType.MESSAGE_INTEGRITY_SHA256,
    AttributeType.FINGERPRINT,
)
_TRAILER_RANK: dict[int, int] = {t: rank for rank, t in enumerate(_TRAILER_TYPES)}
_TRAILER_NAME = ("MESSAGE-INTEGRITY", "MESSAGE-INTEGRITY-SHA256", "FINGERPRINT")
_MI_SIZE = 20
_MI_SHA256_SIZE = 32
_FINGERPRINT_SIZE = 4
_TRAILER_SIZE = (_MI_SIZE, _MI_SHA256_SIZE, _FINGERPRINT_SIZE)


def _type_name(attribute_type: int) -> str:
    try:
        name = AttributeType(attribute_type).name.replace("_", "-")
    except ValueError:
        return f"attribute {attribute_type:#06x}"
    return f"{name} ({attribute_type:#06x})"


def _padding_size(length: int) -> int:
    return -length % 4


@dataclass(frozen=True)
class Attribute:
    """One attribute: its 16-bit ``type`` and its ``value`` (without padding).

    ``padding`` holds the padding bytes :func:`decode` found after the value when they were not
    all zero; :func:`encode` writes them back when they are exactly as long as the value needs
    (``-len(value) % 4`` bytes) and zeros otherwise. It takes no part in equality.
    """

    type: int
    value: bytes
    padding: bytes = field(default=b"", compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.type <= 0xFFFF:
            raise StunError(f"attribute type {self.type} does not fit in 16 bits")
        if len(self.value) > 0xFFFF:
            raise StunError(f"an attribute value of {len(self.value)} bytes exceeds 65535")
        # A bytearray or memoryview would make the attribute mutable and unhashable.
        object.__setattr__(self, "value", bytes(self.value))
        object.__setattr__(self, "padding", bytes(self.padding))

    @property
    def comprehension_required(self) -> bool:
        """True for types 0x0000-0x7FFF, which an agent must understand to process the message."""
        return self.type < 0x8000


def message_type(method: int, message_class: int) -> int:
    """The 16-bit message type field for ``method`` (12 bits) and ``message_class`` (2 bits)."""
    if not 0 <= method <= 0xFFF:
        raise StunError(f"method {method:#x} does not fit in 12 bits")
    if not 0 <= message_class <= 0b11:
        raise StunError(f"message class {message_class} does not fit in 2 bits")
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((message_class & 0b01) << 4)
        | ((message_class & 0b10) << 7)
    )


def split_message_type(value: int) -> tuple[int, MessageClass]:
    """``(method, class)`` of a 14-bit message type field (the inverse of :func:`message_type`)."""
    method = (value & 0x000F) | ((value >> 1) & 0x0070) | ((value >> 2) & 0x0F80)
    message_class = ((value >> 4) & 0b01) | ((value >> 7) & 0b10)
    return method, MessageClass(message_class)


def _method(value: int) -> int:
    try:
        return Method(value)
    except ValueError:
        return value


def _attribute_type(value: int) -> int:
    try:
        return AttributeType(value)
    except ValueError:
        return value


@dataclass(frozen=True)
class Message:
    """A STUN message: method, class, 12-byte transaction ID and attributes in wire order.

    A decoded message keeps its MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT attributes; see
    :func:`encode` for how they are treated when it is encoded again.
    """

    method: int
    message_class: MessageClass
    transaction_id: bytes
    attributes: tuple[Attribute, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.method <= 0xFFF:
            raise StunError(f"method {self.method:#x} does not fit in 12 bits")
        try:
            object.__setattr__(self, "message_class", MessageClass(self.message_class))
        except ValueError:
            raise StunError(f"message class {self.message_class!r} is not 0-3") from None
        if len(self.transaction_id) != TRANSACTION_ID_SIZE:
            raise StunError(
                f"a transaction ID has {TRANSACTION_ID_SIZE} bytes, not {len(self.transaction_id)}"
            )
        object.__setattr__(self, "transaction_id", bytes(self.transaction_id))
        attributes = tuple(self.attributes)
        for attribute in attributes:
            if not isinstance(attribute, Attribute):
                raise StunError(f"not an Attribute: {attribute!r}")
        object.__setattr__(self, "attributes", attributes)

    def get(self, attribute_type: int) -> bytes | None:
        """The value of the first attribute of ``attribute_type``, or None."""
        for attribute in self.attributes:
            if attribute.type == attribute_type:
                return attribute.value
        return None

    def get_all(self, attribute_type: int) -> list[bytes]:
        """The values of every attribute of ``attribute_type``, in order."""
        return [a.value for a in self.attributes if a.type == attribute_type]

    def unknown_comprehension_required(self, known: Iterable[int]) -> list[int]:
        """The comprehension-required types (below 0x8000) present but not in ``known``, each
        once, in order of appearance: what an UNKNOWN-ATTRIBUTES error answer lists."""
        known_set = set(known)
        unknown: list[int] = []
        for attribute in self.attributes:
            if (
                attribute.comprehension_required
                and attribute.type not in known_set
                and attribute.type not in unknown
            ):
                unknown.append(attribute.type)
        return unknown

    def text(self, attribute_type: int) -> str | None:
        """The first ``attribute_type`` value as UTF-8 text (USERNAME, REALM, NONCE, SOFTWARE,
        ALTERNATE-DOMAIN), or None; :class:`StunDecodeError` if it is not UTF-8."""
        value = self.get(attribute_type)
        if value is None:
            return None
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise StunDecodeError(f"{_type_name(attribute_type)} is not UTF-8") from None

    def address(self, attribute_type: int) -> tuple[str, int] | None:
        """``(ip, port)`` of the first ``attribute_type`` address attribute, or None. The XOR
        types (XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS) are un-XORed with this
        message's transaction ID; the others (MAPPED-ADDRESS, OTHER-ADDRESS, RESPONSE-ORIGIN,
        ALTERNATE-SERVER) are read as they are."""
        value = self.get(attribute_type)
        if value is None:
            return None
        if attribute_type in _XOR_ADDRESS_TYPES:
            return decode_xor_address(value, self.transaction_id)
        return decode_address(value)

    def xor_mapped_address(self) -> tuple[str, int] | None:
        """XOR-MAPPED-ADDRESS as ``(ip, port)``, or None."""
        return self.address(AttributeType.XOR_MAPPED_ADDRESS)

    def mapped_address(self) -> tuple[str, int] | None:
        """MAPPED-ADDRESS as ``(ip, port)``, or None."""
        return self.address(AttributeType.MAPPED_ADDRESS)

    def other_address(self) -> tuple[str, int] | None:
        """OTHER-ADDRESS (RFC 5780) as ``(ip, port)``, or None."""
        return self.address(AttributeType.OTHER_ADDRESS)

    def response_origin(self) -> tuple[str, int] | None:
        """RESPONSE-ORIGIN (RFC 5780) as ``(ip, port)``, or None."""
        return self.address(AttributeType.RESPONSE_ORIGIN)

    def error(self) -> tuple[int, str] | None:
        """ERROR-CODE as ``(code, reason)``, or None."""
        value = self.get(AttributeType.ERROR_CODE)
        return None if value is None else decode_error_code(value)

    def unknown_attributes(self) -> tuple[int, ...] | None:
        """The types UNKNOWN-ATTRIBUTES lists, or None."""
        value = self.get(AttributeType.UNKNOWN_ATTRIBUTES)
        return None if value is None else decode_unknown_attributes(value)

    def change_request(self) -> tuple[bool, bool] | None:
        """CHANGE-REQUEST (RFC 5780) as ``(change_ip, change_port)``, or None."""
        value = self.get(AttributeType.CHANGE_REQUEST)
        return None if value is None else decode_change_request(value)

    def username(self) -> str | None:
        """USERNAME as text, or None."""
        return self.text(AttributeType.USERNAME)

    def realm(self) -> str | None:
        """REALM as text, or None."""
        return self.text(AttributeType.REALM)

    def nonce(self) -> str | None:
        """NONCE as text, or None."""
        return self.text(AttributeType.NONCE)

    def software(self) -> str | None:
        """SOFTWARE as text, or None."""
        return self.text(AttributeType.SOFTWARE)


def new_transaction_id() -> bytes:
    """A fresh random 96-bit transaction ID (from :mod:`secrets`)."""
    return secrets.token_bytes(TRANSACTION_ID_SIZE)


# --- decoding ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Raw:
    type: int
    value: bytes
    padding: bytes
    offset: int  # of the attribute header, from the start of the message


def _placement_problem(seen: int, attribute_type: int) -> str | None:
    """Why ``attribute_type`` may not follow the trailer attributes seen so far (``seen`` is the
    highest trailer rank met, -1 for none), or None if it may."""
    if seen < 0:
        return None
    rank = _TRAILER_RANK.get(attribute_type)
    if rank is None or rank <= seen:
        return f"{_type_name(attribute_type)} after {_TRAILER_NAME[seen]}"
    return None


def _trailer_size_problem(attribute_type: int, length: int) -> str | None:
    if attribute_type == AttributeType.MESSAGE_INTEGRITY and length != _MI_SIZE:
        return f"MESSAGE-INTEGRITY has {length} bytes, not {_MI_SIZE}"
    if attribute_type == AttributeType.MESSAGE_INTEGRITY_SHA256 and (
        length % 4 or not 16 <= length <= _MI_SHA256_SIZE
    ):
        return f"MESSAGE-INTEGRITY-SHA256 has {length} bytes, not a multiple of 4 from 16 to 32"
    if attribute_type == AttributeType.FINGERPRINT and length != _FINGERPRINT_SIZE:
        return f"FINGERPRINT has {length} bytes, not {_FINGERPRINT_SIZE}"
    return None


def _parse(data: bytes) -> tuple[int, bytes, list[_Raw]]:
    """Check ``data`` and split it into ``(message type, transaction ID, attributes)``."""
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise StunDecodeError(f"truncated header: {len(data)} bytes, a STUN header has 20")
    type_field, length, cookie, transaction_id = _HEADER.unpack_from(data)
    if type_field & 0xC000:
        raise StunDecodeError("the two most significant bits of the message type are not zero")
    if cookie != MAGIC_COOKIE:
        raise StunDecodeError(f"bad magic cookie {cookie:#010x}, expected {MAGIC_COOKIE:#010x}")
    if length % 4:
        raise StunDecodeError(f"message length {length} is not a multiple of 4")
    if length != len(data) - HEADER_SIZE:
        raise StunDecodeError(
            f"message length {length} does not match the {len(data) - HEADER_SIZE} bytes "
            "after the header"
        )
    attributes: list[_Raw] = []
    seen = -1
    offset = HEADER_SIZE
    end = len(data)
    # Both offset and end are multiples of 4 here, so an attribute header always fits.
    while offset < end:
        attribute_type, value_length = _TLV.unpack_from(data, offset)
        start = offset + _TLV.size
        if value_length > end - start:
            raise StunDecodeError(
                f"{_type_name(attribute_type)} at offset {offset} overruns the message: "
                f"{value_length} value bytes, {end - start} left"
            )
        problem = _placement_problem(seen, attribute_type) or _trailer_size_problem(
            attribute_type, value_length
        )
        if problem is not None:
            raise StunDecodeError(problem)
        seen = max(seen, _TRAILER_RANK.get(attribute_type, -1))
        stop = start + value_length
        padded = stop + _padding_size(value_length)
        attributes.append(_Raw(attribute_type, data[start:stop], data[stop:padded], offset))
        offset = padded
    return type_field, transaction_id, attributes


def decode(data: bytes) -> Message:
    """The :class:`Message` in ``data`` (one whole datagram).

    Strict: the header must have its two top bits zero, the magic cookie and a length that is a
    multiple of 4 and equals the number of bytes after the header; the attributes must exactly
    fill that length, each padded to 4 bytes; MESSAGE-INTEGRITY may be followed only by
    MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, MESSAGE-INTEGRITY-SHA256 only by FINGERPRINT, and
    FINGERPRINT by nothing; the three have their RFC sizes. Otherwise :class:`StunDecodeError`.
    Attribute values are not interpreted here (use the ``decode_*`` functions or the
    :class:`Message` helpers). Known methods and attribute types come back as :class:`Method` and
    :class:`AttributeType` members, unknown ones as plain ints.
    """
    type_field, transaction_id, raw = _parse(data)
    method, message_class = split_message_type(type_field)
    attributes = tuple(
        Attribute(_attribute_type(r.type), r.value, r.padding if r.padding.strip(b"\x00") else b"")
        for r in raw
    )
    return Message(_method(method), message_class, transaction_id, attributes)


def is_stun(datagram: bytes) -> bool:
    """Whether ``datagram`` looks like STUN when STUN shares a port with other protocols:
    at least 20 bytes, a first byte of 0-3 (RFC 7983 §7; so methods from 0x100 up, none of them
    defined, do not count) and the magic cookie. The rest is not checked: :func:`decode` does."""
    return (
        len(datagram) >= HEADER_SIZE
        and datagram[0] <= 3
        and int.from_bytes(datagram[4:8], "big") == MAGIC_COOKIE
    )


# --- encoding ------------------------------------------------------------------------------------


def _tlv(attribute_type: int, value: bytes, padding: bytes = b"") -> bytes:
    need = _padding_size(len(value))
    if len(padding) != need:
        padding = bytes(need)
    return _TLV.pack(attribute_type, len(value)) + value + padding


def _with_length(header: bytes, length: int) -> bytes:
    """``header`` with its length field replaced."""
    return header[:2] + length.to_bytes(2, "big") + header[4:]


def encode(
    message: Message,
    *,
    integrity_key: bytes | None = None,
    integrity_sha256_key: bytes | None = None,
    fingerprint: bool = False,
) -> bytes:
    """The wire bytes of ``message``.

    The attributes are written in order, each with its :attr:`Attribute.padding` if that is of
    the right size and zero padding otherwise. Then, as asked, MESSAGE-INTEGRITY (HMAC-SHA1 with
    ``integrity_key``), MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256, 32 bytes, with
    ``integrity_sha256_key``) and FINGERPRINT are computed and appended in that order.

    Before appending, trailer attributes already at the end of ``message`` (as :func:`decode`
    keeps them) that the new ones would follow or invalidate are dropped: with ``integrity_key``
    every trailing MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT, with ``integrity_sha256_key`` a
    trailing MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, with ``fingerprint`` a trailing
    FINGERPRINT. So ``encode(decode(data), <the keys data was made with>)`` and
    ``encode(decode(data))`` both give ``data`` back. Trailer attributes that stay are copied as
    they are: their place and size are checked, their values are not verified.

    :class:`StunError` if the result would not decode: a trailer attribute out of place or of the
    wrong size, or more than :data:`MAX_ATTRIBUTES_LENGTH` bytes of attributes.
    """
    attributes = list(message.attributes)
    wanted = [
        rank
        for rank, asked in enumerate(
            (integrity_key is not None, integrity_sha256_key is not None, fingerprint)
        )
        if asked
    ]
    if wanted:
        first = min(wanted)
        while attributes and _TRAILER_RANK.get(attributes[-1].type, -1) >= first:
            attributes.pop()
    seen = -1
    layout = [(a.type, len(a.value)) for a in attributes]
    layout += [(_TRAILER_TYPES[rank], _TRAILER_SIZE[rank]) for rank in wanted]
    for attribute_type, length in layout:
        problem = _placement_problem(seen, attribute_type) or _trailer_size_problem(
            attribute_type, length
        )
        if problem is not None:
            raise StunError(f"cannot encode: {problem}")
        seen = max(seen, _TRAILER_RANK.get(attribute_type, -1))

    body = b"".join(_tlv(a.type, a.value, a.padding) for a in attributes)
    trailer_size = sum(_TLV.size + _TRAILER_SIZE[rank] for rank in wanted)
    if len(body) + trailer_size > MAX_ATTRIBUTES_LENGTH:
        raise StunError(
            f"cannot encode: {len(body) + trailer_size} bytes of attributes exceed "
            f"{MAX_ATTRIBUTES_LENGTH}"
        )
    header = _HEADER.pack(
        message_type(message.method, message.message_class),
        0,
        MAGIC_COOKIE,
        message.transaction_id,
    )
    if integrity_key is not None:
        covered = _with_length(header, len(body) + _TLV.size + _MI_SIZE) + body
        body += _tlv(AttributeType.MESSAGE_INTEGRITY, hmac.digest(integrity_key, covered, "sha1"))
    if integrity_sha256_key is not None:
        covered = _with_length(header, len(body) + _TLV.size + _MI_SHA256_SIZE) + body
        body += _tlv(
            AttributeType.MESSAGE_INTEGRITY_SHA256,
            hmac.digest(integrity_sha256_key, covered, "sha256"),
        )
    if fingerprint:
        covered = _with_length(header, len(body) + _TLV.size + _FINGERPRINT_SIZE) + body
        crc = zlib.crc32(covered) ^ FINGERPRINT_XOR
        body += _tlv(AttributeType.FINGERPRINT, crc.to_bytes(4, "big"))
    return _with_length(header, len(body)) + body


# --- integrity -----------------------------------------------------------------------------------


def _covered(data: bytes, raw: _Raw) -> bytes:
    """The bytes an integrity attribute covers: the message before ``raw``, with the header
    length set to end just after ``raw``."""
    end = raw.offset + _TLV.size + len(raw.value)
    return _with_length(data[:HEADER_SIZE], end - HEADER_SIZE) + data[HEADER_SIZE : raw.offset]


def _find(data: bytes, attribute_type: int) -> tuple[bytes, _Raw]:
    data = bytes(data)
    _, _, attributes = _parse(data)
    for raw in attributes:
        if raw.type == attribute_type:
            return data, raw
    raise IntegrityError(f"the message has no {_TRAILER_NAME[_TRAILER_RANK[attribute_type]]}")


def verify_integrity(data: bytes, key: bytes) -> None:
    """Check the MESSAGE-INTEGRITY (HMAC-SHA1) of the message ``data`` with ``key``.

    :class:`IntegrityError` if it is missing or does not match, :class:`StunDecodeError` if
    ``data`` is not a well-formed message.
    """
    data, raw = _find(data, AttributeType.MESSAGE_INTEGRITY)
    expected = hmac.digest(key, _covered(data, raw), "sha1")
    if not hmac.compare_digest(expected, raw.value):
        raise IntegrityError("MESSAGE-INTEGRITY does not match")


def verify_integrity_sha256(data: bytes, key: bytes) -> None:
    """Check the MESSAGE-INTEGRITY-SHA256 of the message ``data`` with ``key``; a value shorter
    than 32 bytes is compared with that many leading bytes of the HMAC (RFC 8489 §14.6).

    :class:`IntegrityError` if it is missing or does not match, :class:`StunDecodeError` if
    ``data`` is not a well-formed message.
    """
    data, raw = _find(data, AttributeType.MESSAGE_INTEGRITY_SHA256)
    expected = hmac.digest(key, _covered(data, raw), "sha256")[: len(raw.value)]
    if not hmac.compare_digest(expected, raw.value):
        raise IntegrityError("MESSAGE-INTEGRITY-SHA256 does not match")


def verify_fingerprint(data: bytes) -> None:
    """Check the FINGERPRINT of the message ``data``.

    :class:`IntegrityError` if it is missing or does not match, :class:`StunDecodeError` if
    ``data`` is not a well-formed message.
    """
    data, raw = _find(data, AttributeType.FINGERPRINT)
    expected = (zlib.crc32(_covered(data, raw)) ^ FINGERPRINT_XOR).to_bytes(4, "big")
    if not hmac.compare_digest(expected, raw.value):
        raise IntegrityError("FINGERPRINT does not match")


# --- attribute values ----------------------------------------------------------------------------

_FAMILY_IPV4 = 0x01
_FAMILY_IPV6 = 0x02
_ADDRESS = struct.Struct(">xBH")


def _ip(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        raise StunError(f"not an IP address: {ip!r}") from None


def _check_port(port: int) -> None:
    if not 0 <= port <= 0xFFFF:
        raise StunError(f"port {port} is not 0-65535")


def encode_address(ip: str, port: int) -> bytes:
    """MAPPED-ADDRESS value (also OTHER-ADDRESS, RESPONSE-ORIGIN, ALTERNATE-SERVER)::

        0x00 | family (0x01 IPv4, 0x02 IPv6) | port (16 bits) | address (4 or 16 bytes)

    :class:`StunError` for something that is not an IP address or a port outside 0-65535.
    """
    address = _ip(ip)
    _check_port(port)
    family = _FAMILY_IPV4 if address.version == 4 else _FAMILY_IPV6
    return _ADDRESS.pack(family, port) + address.packed


def _split_address(value: bytes) -> tuple[int, bytes]:
    """``(port, address bytes)`` of a MAPPED-ADDRESS-style value, its family and length checked;
    the first byte is ignored, as RFC 8489 §14.1 asks."""
    if len(value) < _ADDRESS.size:
        raise StunDecodeError(f"an address value of {len(value)} bytes is too short")
    family, port = _ADDRESS.unpack_from(value)
    size = {_FAMILY_IPV4: 4, _FAMILY_IPV6: 16}.get(family)
    if size is None:
        raise StunDecodeError(f"unknown address family {family:#04x}")
    if len(value) != _ADDRESS.size + size:
        raise StunDecodeError(
            f"an {'IPv4' if size == 4 else 'IPv6'} address value has {_ADDRESS.size + size} "
            f"bytes, not {len(value)}"
        )
    return port, bytes(value[_ADDRESS.size :])


def decode_address(value: bytes) -> tuple[str, int]:
    """``(ip, port)`` of a MAPPED-ADDRESS-style value. :class:`StunDecodeError` for an unknown
    family or a length that does not fit it."""
    port, packed = _split_address(value)
    return str(ipaddress.ip_address(packed)), port


def _xor_pad(transaction_id: bytes) -> bytes:
    """What an XOR address is XORed with: the magic cookie, then the transaction ID."""
    if len(transaction_id) != TRANSACTION_ID_SIZE:
        raise StunError(
            f"a transaction ID has {TRANSACTION_ID_SIZE} bytes, not {len(transaction_id)}"
        )
    return MAGIC_COOKIE.to_bytes(4, "big") + bytes(transaction_id)


def _xor(data: bytes, pad: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, pad[: len(data)], strict=True))


def encode_xor_address(ip: str, port: int, transaction_id: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS value (also XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS): the
    :func:`encode_address` layout with the port XORed with 0x2112 (the top half of the cookie)
    and the address with the magic cookie (IPv4) or with the cookie followed by the 12-byte
    ``transaction_id`` (IPv6)."""
    pad = _xor_pad(transaction_id)
    address = _ip(ip)
    _check_port(port)
    family = _FAMILY_IPV4 if address.version == 4 else _FAMILY_IPV6
    return _ADDRESS.pack(family, port ^ (MAGIC_COOKIE >> 16)) + _xor(address.packed, pad)


def decode_xor_address(value: bytes, transaction_id: bytes) -> tuple[str, int]:
    """``(ip, port)`` of an XOR-MAPPED-ADDRESS-style value in a message with
    ``transaction_id``. :class:`StunDecodeError` for an unknown family or a length that does not
    fit it."""
    pad = _xor_pad(transaction_id)
    port, packed = _split_address(value)
    return str(ipaddress.ip_address(_xor(packed, pad))), port ^ (MAGIC_COOKIE >> 16)


def encode_error_code(code: int, reason: str) -> bytes:
    """ERROR-CODE value (RFC 8489 §14.8)::

        0x0000 | 5 reserved zero bits, class (3 bits) = code // 100 | number = code % 100
        | reason phrase (UTF-8, fewer than 128 characters)

    :class:`StunError` for a code outside 300-699 or a reason that is too long.
    """
    if not 300 <= code <= 699:
        raise StunError(f"error code {code} is not 300-699")
    if len(reason) > _REASON_MAX_CHARS:
        raise StunError(f"a reason phrase of {len(reason)} characters exceeds 127")
    return bytes((0, 0, code // 100, code % 100)) + _utf8(reason, "the reason phrase")


def decode_error_code(value: bytes) -> tuple[int, str]:
    """``(code, reason)`` of an ERROR-CODE value; the reserved bits are ignored.
    :class:`StunDecodeError` for a class outside 3-6, a number above 99, a reason over 763 bytes
    or one that is not UTF-8."""
    if len(value) < 4:
        raise StunDecodeError(f"an ERROR-CODE value of {len(value)} bytes is too short")
    error_class = value[2] & 0x07
    number = value[3]
    if not 3 <= error_class <= 6:
        raise StunDecodeError(f"error class {error_class} is not 3-6")
    if number > 99:
        raise StunDecodeError(f"error number {number} is above 99")
    if len(value) - 4 > _REASON_MAX_BYTES:
        raise StunDecodeError(f"a reason phrase of {len(value) - 4} bytes exceeds 763")
    try:
        reason = bytes(value[4:]).decode("utf-8")
    except UnicodeDecodeError:
        raise StunDecodeError("the reason phrase is not UTF-8") from None
    return error_class * 100 + number, reason


def encode_unknown_attributes(types: Iterable[int]) -> bytes:
    """UNKNOWN-ATTRIBUTES value: each 16-bit type in turn."""
    types = list(types)
    for attribute_type in types:
        if not 0 <= attribute_type <= 0xFFFF:
            raise StunError(f"attribute type {attribute_type} does not fit in 16 bits")
    return struct.pack(f">{len(types)}H", *types)


def decode_unknown_attributes(value: bytes) -> tuple[int, ...]:
    """The types an UNKNOWN-ATTRIBUTES value lists; :class:`StunDecodeError` for an odd length."""
    if len(value) % 2:
        raise StunDecodeError(f"an UNKNOWN-ATTRIBUTES value of {len(value)} bytes is not even")
    return struct.unpack(f">{len(value) // 2}H", value)


_CHANGE_IP = 0x04
_CHANGE_PORT = 0x02


def encode_change_request(change_ip: bool, change_port: bool) -> bytes:
    """CHANGE-REQUEST value (RFC 5780 §7.2): 32 bits, 0x4 = change IP, 0x2 = change port."""
    return ((_CHANGE_IP if change_ip else 0) | (_CHANGE_PORT if change_port else 0)).to_bytes(
        4, "big"
    )


def decode_change_request(value: bytes) -> tuple[bool, bool]:
    """``(change_ip, change_port)`` of a CHANGE-REQUEST value; other bits are ignored.
    :class:`StunDecodeError` unless it has 4 bytes."""
    if len(value) != 4:
        raise StunDecodeError(f"a CHANGE-REQUEST value has 4 bytes, not {len(value)}")
    flags = int.from_bytes(value, "big")
    return bool(flags & _CHANGE_IP), bool(flags & _CHANGE_PORT)


_ALGORITHM = struct.Struct(">HH")


def encode_password_algorithm(algorithm: int, parameters: bytes = b"") -> bytes:
    """PASSWORD-ALGORITHM value (RFC 8489 §14.12): algorithm (16 bits), parameters length
    (16 bits), parameters (the attribute's own padding follows)."""
    if not 0 <= algorithm <= 0xFFFF:
        raise StunError(f"password algorithm {algorithm} does not fit in 16 bits")
    if len(parameters) > 0xFFFF - _ALGORITHM.size:
        raise StunError(f"{len(parameters)} bytes of algorithm parameters are too many")
    return _ALGORITHM.pack(algorithm, len(parameters)) + parameters


def decode_password_algorithm(value: bytes) -> tuple[int, bytes]:
    """``(algorithm, parameters)`` of a PASSWORD-ALGORITHM value; known algorithms come back as
    :class:`PasswordAlgorithm`. :class:`StunDecodeError` if the lengths disagree."""
    if len(value) < _ALGORITHM.size:
        raise StunDecodeError(f"a PASSWORD-ALGORITHM value of {len(value)} bytes is too short")
    algorithm, length = _ALGORITHM.unpack_from(value)
    if length != len(value) - _ALGORITHM.size:
        raise StunDecodeError(
            f"PASSWORD-ALGORITHM announces {length} parameter bytes but has "
            f"{len(value) - _ALGORITHM.size}"
        )
    return _password_algorithm(algorithm), bytes(value[_ALGORITHM.size :])


def _password_algorithm(value: int) -> int:
    try:
        return PasswordAlgorithm(value)
    except ValueError:
        return value


def encode_password_algorithms(algorithms: Iterable[tuple[int, bytes]]) -> bytes:
    """PASSWORD-ALGORITHMS value (RFC 8489 §14.11): each ``(algorithm, parameters)`` as in
    :func:`encode_password_algorithm`, its parameters zero-padded to a multiple of 4."""
    parts = []
    for algorithm, parameters in algorithms:
        one = encode_password_algorithm(algorithm, parameters)
        parts.append(one + bytes(_padding_size(len(one))))
    return b"".join(parts)


def decode_password_algorithms(value: bytes) -> list[tuple[int, bytes]]:
    """The ``(algorithm, parameters)`` pairs of a PASSWORD-ALGORITHMS value.
    :class:`StunDecodeError` if an entry overruns the value."""
    entries: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(value):
        if len(value) - offset < _ALGORITHM.size:
            raise StunDecodeError(f"PASSWORD-ALGORITHMS has a truncated entry at {offset}")
        algorithm, length = _ALGORITHM.unpack_from(value, offset)
        start = offset + _ALGORITHM.size
        if start + length > len(value):
            raise StunDecodeError(f"PASSWORD-ALGORITHMS entry at {offset} overruns the value")
        entries.append((_password_algorithm(algorithm), bytes(value[start : start + length])))
        offset = start + length + _padding_size(length)
    return entries


# --- credentials ---------------------------------------------------------------------------------


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise StunError(f"{what} is not valid Unicode (it has a lone surrogate)") from None


_SASLPREP_PROHIBITED: tuple[tuple[Callable[[str], bool], str], ...] = (
    (stringprep.in_table_c12, "a non-ASCII space"),
    (stringprep.in_table_c21_c22, "a control character"),
    (stringprep.in_table_c3, "a private use character"),
    (stringprep.in_table_c4, "a non-character code point"),
    (stringprep.in_table_c5, "a surrogate code point"),
    (stringprep.in_table_c6, "a character inappropriate for plain text"),
    (stringprep.in_table_c7, "a character inappropriate for canonical representation"),
    (stringprep.in_table_c8, "a character that changes display properties or is deprecated"),
    (stringprep.in_table_c9, "a tagging character"),
    (stringprep.in_table_a1, "a code point unassigned in Unicode 3.2"),
)


def saslprep(text: str) -> str:
    """``text`` prepared with SASLprep (RFC 4013), treated as a stored string.

    Maps non-ASCII spaces to U+0020 and removes the characters "commonly mapped to nothing"
    (RFC 3454 B.1, e.g. SOFT HYPHEN), normalises with NFKC (Unicode 3.2), then refuses
    prohibited characters (RFC 3454 C.1.2-C.9), code points unassigned in Unicode 3.2 and
    strings that break the bidirectional rule (RFC 3454 §6) with :class:`StunError`.
    The empty string is allowed.
    """
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    for position, ch in enumerate(prepared):
        for in_table, description in _SASLPREP_PROHIBITED:
            if in_table(ch):
                raise StunError(f"SASLprep: {description} at position {position} is prohibited")
    if any(stringprep.in_table_d1(ch) for ch in prepared):
        if any(stringprep.in_table_d2(ch) for ch in prepared):
            raise StunError("SASLprep: right-to-left and left-to-right characters are mixed")
        if not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1])):
            raise StunError(
                "SASLprep: a string with right-to-left characters must start and end with one"
            )
    return prepared


# PRECIS (RFC 8264 §9) property tables the stdlib does not provide.
_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
_OLD_HANGUL_JAMO = (
    (0x1100, 0x11FF),
    (0xA960, 0xA97C),
    (0xD7B0, 0xD7C6),
    (0xD7CB, 0xD7FB),
)
# RFC 5892 §2.6 exceptions, as the PRECIS framework uses them.
_EXCEPTIONS_PVALID = frozenset({0x00DF, 0x03C2, 0x06FD, 0x06FE, 0x0F0B, 0x3007})
_EXCEPTIONS_DISALLOWED = frozenset(
    {0x0640, 0x07FA, 0x302E, 0x302F, 0x3031, 0x3032, 0x3033, 0x3034, 0x3035, 0x303B}
)
_ARABIC_INDIC = range(0x0660, 0x066A)
_EXTENDED_ARABIC_INDIC = range(0x06F0, 0x06FA)
_CONTEXTO = frozenset({0x00B7, 0x0375, 0x05F3, 0x05F4, 0x30FB, *_ARABIC_INDIC})
_CONTEXTO_ALL = _CONTEXTO | frozenset(_EXTENDED_ARABIC_INDIC)
_VIRAMA = 9
_FREEFORM_CATEGORIES = frozenset(
    {
        # LetterDigits, OtherLetterDigits, Spaces, Symbols, Punctuation (RFC 8264 §9.1, 9.14-9.18)
        *("Ll", "Lu", "Lo", "Nd", "Lm", "Mn", "Mc"),
        *("Lt", "Nl", "No", "Me"),
        "Zs",
        *("Sm", "Sc", "Sk", "So"),
        *("Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po"),
    }
)


def _in_ranges(code: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(low <= code <= high for low, high in ranges)


def _noncharacter(code: int) -> bool:
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def _script_is(ch: str, *prefixes: str) -> bool:
    """A script test from the character name (the stdlib has no Script property)."""
    return unicodedata.name(ch, "").startswith(prefixes)


def _context_allows(text: str, position: int) -> bool:
    """RFC 5892 Appendix A rules for the CONTEXTJ / CONTEXTO code point at ``position``.

    ZERO WIDTH (NON-)JOINER is allowed only after a virama: the ZWNJ joining-type rule needs the
    Unicode Joining_Type property, which the stdlib lacks, so ZWNJ is refused elsewhere.
    """
    code = ord(text[position])
    before = text[position - 1] if position > 0 else ""
    after = text[position + 1] if position + 1 < len(text) else ""
    if code in (0x200C, 0x200D):
        return bool(before) and unicodedata.combining(before) == _VIRAMA
    if code == 0x00B7:  # MIDDLE DOT, between two "l"
        return before == "l" and after == "l"
    if code == 0x0375:  # GREEK LOWER NUMERAL SIGN, before a Greek character
        return bool(after) and _script_is(after, "GREEK ")
    if code in (0x05F3, 0x05F4):  # HEBREW GERESH / GERSHAYIM, after a Hebrew character
        return bool(before) and _script_is(before, "HEBREW ")
    if code == 0x30FB:  # KATAKANA MIDDLE DOT, with some Hiragana, Katakana or Han
        return any(
            ch != "\u30fb"
            and _script_is(
                ch, "HIRAGANA ", "KATAKANA ", "HALFWIDTH KATAKANA ", "CJK UNIFIED IDEOGRAPH"
            )
            for ch in text
        )
    if code in _ARABIC_INDIC:
        return not any(ord(ch) in _EXTENDED_ARABIC_INDIC for ch in text)
    return not any(ord(ch) in _ARABIC_INDIC for ch in text)  # extended Arabic-Indic digits


def _freeform_problem(text: str, position: int) -> str | None:
    """Why the code point at ``position`` is not allowed by the PRECIS FreeformClass
    (RFC 8264 §8, §9), or None."""
    ch = text[position]
    code = ord(ch)
    category = unicodedata.category(ch)
    if code in _EXCEPTIONS_PVALID:
        return None
    if code in _EXCEPTIONS_DISALLOWED:
        return "a character the PRECIS exceptions disallow"
    if code in _CONTEXTO_ALL:
        return None if _context_allows(text, position) else "a character out of its context"
    if category == "Cn" and not _noncharacter(code):
        return f"a code point unassigned in Unicode {unicodedata.unidata_version}"
    if 0x21 <= code <= 0x7E:
        return None
    if code in (0x200C, 0x200D):
        return None if _context_allows(text, position) else "a joiner out of its context"
    if _in_ranges(code, _OLD_HANGUL_JAMO):
        return "an old Hangul jamo"
    if _in_ranges(code, _DEFAULT_IGNORABLE) or _noncharacter(code):
        return "a default-ignorable or non-character code point"
    if category == "Cc":
        return "a control character"
    if unicodedata.normalize("NFKC", ch) != ch:
        return None  # HasCompat: allowed in the FreeformClass
    if category in _FREEFORM_CATEGORIES:
        return None
    return "a character the FreeformClass disallows"


def opaque_string(text: str) -> str:
    """``text`` enforced with the PRECIS OpaqueString profile (RFC 8265 §4.2).

    Maps non-ASCII spaces (category Zs) to U+0020, normalises with NFC, then requires every code
    point to be allowed by the FreeformClass (RFC 8264) and the result to be non-empty;
    :class:`StunError` otherwise. Case and width are kept. The Script property the contextual
    rules need is read from character names, and ZERO WIDTH NON-JOINER is allowed only after a
    virama (see :func:`_context_allows`).
    """
    mapped = "".join(" " if unicodedata.category(ch) == "Zs" else ch for ch in text)
    prepared = unicodedata.normalize("NFC", mapped)
    if not prepared:
        raise StunError("OpaqueString: the string is empty")
    for position in range(len(prepared)):
        problem = _freeform_problem(prepared, position)
        if problem is not None:
            raise StunError(f"OpaqueString: {problem} at position {position} is disallowed")
    return prepared


def short_term_key(password: str) -> bytes:
    """The short-term credential key (RFC 8489 §9.1.1): the UTF-8 of OpaqueString(password)."""
    return _utf8(opaque_string(password), "the password")


def long_term_key(
    username: str,
    realm: str,
    password: str,
    algorithm: PasswordAlgorithm = PasswordAlgorithm.MD5,
) -> bytes:
    """The long-term credential key (RFC 8489 §9.2.2, RFC 5389 §15.4)::

        MD5(username ":" realm ":" SASLprep(password))       (16 bytes)
        SHA-256(username ":" realm ":" SASLprep(password))   (32 bytes)

    all in UTF-8. ``username`` and ``realm`` are taken exactly as they appear in the USERNAME and
    REALM attributes (whoever put them there prepared them); only the password, which never
    travels, is prepared here. :class:`StunError` for a prohibited password character or an
    unknown algorithm.
    """
    if algorithm not in (PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256):
        raise StunError(f"unknown password algorithm {algorithm!r}")
    material = b":".join(
        (
            _utf8(username, "the username"),
            _utf8(realm, "the realm"),
            _utf8(saslprep(password), "the password"),
        )
    )
    if algorithm == PasswordAlgorithm.MD5:
        return hashlib.md5(material, usedforsecurity=False).digest()
    return hashlib.sha256(material).digest()


def user_hash(username: str, realm: str) -> bytes:
    """USERHASH value (RFC 8489 §14.4): SHA-256(username ":" realm) in UTF-8, 32 bytes, with
    ``username`` and ``realm`` as they would appear in USERNAME and REALM."""
    return hashlib.sha256(
        _utf8(username, "the username") + b":" + _utf8(realm, "the realm")
    ).digest()


# --- builders ------------------------------------------------------------------------------------


def binding_request(transaction_id: bytes | None = None, *attributes: Attribute) -> Message:
    """A Binding request with ``attributes`` and ``transaction_id`` (a fresh one if None)."""
    if transaction_id is None:
        transaction_id = new_transaction_id()
    return Message(Method.BINDING, MessageClass.REQUEST, transaction_id, attributes)


def _answer_to(request: Message) -> None:
    if request.message_class != MessageClass.REQUEST:
        raise StunError(f"only a request is answered, not a {request.message_class.name} message")


def success_response(request: Message, *attributes: Attribute) -> Message:
    """The success response to ``request``: same method and transaction ID, ``attributes``."""
    _answer_to(request)
    return Message(request.method, MessageClass.SUCCESS, request.transaction_id, attributes)


def error_response(request: Message, code: int, reason: str, *attributes: Attribute) -> Message:
    """The error response to ``request``: same method and transaction ID, ERROR-CODE with
    ``code`` and ``reason`` first, then ``attributes`` (e.g. UNKNOWN-ATTRIBUTES for a 420)."""
    _answer_to(request)
    error = Attribute(AttributeType.ERROR_CODE, encode_error_code(code, reason))
    return Message(request.method, MessageClass.ERROR, request.transaction_id, (error, *attributes))
