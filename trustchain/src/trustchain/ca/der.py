"""A minimal, strict DER (ITU-T X.690) reader and writer, sans-IO.

It handles exactly what the hybrid-certificate code needs: splitting an encoding into its
tag-length-value elements, walking the children of a constructed element, re-encoding a
SEQUENCE after removing some children, and a handful of universal types (OBJECT IDENTIFIER,
BIT STRING, OCTET STRING, BOOLEAN). It is not a general ASN.1 library.

Wire format of one element (X.690 §8.1)::

    identifier   1 byte   class (2 bits) | constructed (1 bit) | tag number (5 bits)
                          tag number 31 (0x1F) means "high tag number": base-128 bytes follow,
                          most significant first, bit 8 set on all but the last
    length       1 byte   0..127: the length itself (short form)
                 1+n      0x80 | n, then n big-endian length bytes (long form)
    contents     length bytes

Strictness (DER, X.690 §10): only definite lengths (``0x80``, the indefinite-length marker,
is rejected, and so is the reserved ``0xFF``); the length in the fewest bytes possible (no
long form below 128, no leading zero length byte); a high tag number only for numbers >= 31
and without leading ``0x80`` bytes; nothing after the last element. Every violation, and any
truncation, raises :class:`~trustchain.errors.MalformedData`. Type-specific rules (BIT STRING
unused bits, OID subidentifiers, BOOLEAN values) are checked by the typed helpers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from trustchain.errors import MalformedData

CLASS_UNIVERSAL: Final = 0
CLASS_APPLICATION: Final = 1
CLASS_CONTEXT: Final = 2
CLASS_PRIVATE: Final = 3

# Identifier octets of the universal types used here (constructed bit included where DER
# requires it).
BOOLEAN: Final = 0x01
INTEGER: Final = 0x02
BIT_STRING: Final = 0x03
OCTET_STRING: Final = 0x04
NULL: Final = 0x05
OBJECT_IDENTIFIER: Final = 0x06
SEQUENCE: Final = 0x30
SET: Final = 0x31

#: At most this many length bytes (lengths up to 2**64 - 1; far beyond any real input).
MAX_LENGTH_BYTES: Final = 8
#: Nesting limit of :func:`parse_tree` (X.509 structures nest about ten deep).
MAX_DEPTH: Final = 64


@dataclass(frozen=True)
class Tag:
    """An identifier: class (0..3), primitive/constructed, and tag number (>= 0)."""

    tag_class: int
    constructed: bool
    number: int

    def __post_init__(self) -> None:
        if not 0 <= self.tag_class <= 3:
            raise ValueError(f"tag class must be 0..3, got {self.tag_class}")
        if self.number < 0:
            raise ValueError(f"tag number must be >= 0, got {self.number}")

    @classmethod
    def context(cls, number: int, *, constructed: bool = True) -> Tag:
        """A context-specific tag ``[number]`` (constructed, as EXPLICIT tagging needs)."""
        return cls(CLASS_CONTEXT, constructed, number)

    @classmethod
    def from_octet(cls, octet: int) -> Tag:
        """The tag of a one-byte identifier (low tag numbers 0..30)."""
        if octet & 0x1F == 0x1F:
            raise ValueError("identifier octet 0x1F-form needs the high-tag-number encoding")
        return cls(octet >> 6, bool(octet & 0x20), octet & 0x1F)

    def encode(self) -> bytes:
        """The identifier octets (DER: the low form for numbers below 31)."""
        first = (self.tag_class << 6) | (0x20 if self.constructed else 0)
        if self.number < 0x1F:
            return bytes([first | self.number])
        groups = [self.number & 0x7F]
        rest = self.number >> 7
        while rest:
            groups.append(0x80 | (rest & 0x7F))
            rest >>= 7
        return bytes([first | 0x1F, *reversed(groups)])


@dataclass(frozen=True)
class Element:
    """One parsed TLV: its tag, its contents, and its complete encoding (``encoded``)."""

    tag: Tag
    content: bytes
    encoded: bytes

    def is_(self, identifier: int) -> bool:
        """Whether this element's identifier is the single octet ``identifier``."""
        return self.encoded[0] == identifier and identifier & 0x1F != 0x1F

    def children(self) -> list[Element]:
        """The elements of a constructed element's contents, in order.

        :class:`MalformedData` if this element is primitive or its contents are not exactly
        a run of well-formed elements.
        """
        if not self.tag.constructed:
            raise MalformedData("a primitive element has no children")
        return parse_all(self.content)


def _read_tag(data: bytes, offset: int) -> tuple[Tag, int]:
    if offset >= len(data):
        raise MalformedData("truncated DER: identifier missing")
    first = data[offset]
    offset += 1
    tag_class, constructed, number = first >> 6, bool(first & 0x20), first & 0x1F
    if number != 0x1F:
        return Tag(tag_class, constructed, number), offset
    number = 0
    start = offset
    while True:
        if offset >= len(data):
            raise MalformedData("truncated DER: high tag number")
        octet = data[offset]
        offset += 1
        if offset - 1 == start and octet == 0x80:
            raise MalformedData("non-minimal DER: high tag number with a leading 0x80 byte")
        number = (number << 7) | (octet & 0x7F)
        if offset - start > MAX_LENGTH_BYTES:
            raise MalformedData("DER tag number too large")
        if not octet & 0x80:
            break
    if number < 0x1F:
        raise MalformedData(f"non-minimal DER: tag number {number} in the high-tag form")
    return Tag(tag_class, constructed, number), offset


def _read_length(data: bytes, offset: int) -> tuple[int, int]:
    if offset >= len(data):
        raise MalformedData("truncated DER: length missing")
    first = data[offset]
    offset += 1
    if first < 0x80:
        return first, offset
    if first == 0x80:
        raise MalformedData("indefinite length is not DER")
    count = first & 0x7F
    if count == 0x7F:
        raise MalformedData("reserved length octet 0xFF")
    if count > MAX_LENGTH_BYTES:
        raise MalformedData(f"DER length of {count} bytes is too large")
    if offset + count > len(data):
        raise MalformedData("truncated DER: length bytes")
    length_bytes = data[offset : offset + count]
    if length_bytes[0] == 0:
        raise MalformedData("non-minimal DER length: leading zero byte")
    length = int.from_bytes(length_bytes, "big")
    if length < 0x80:
        raise MalformedData(f"non-minimal DER length: {length} in the long form")
    return length, offset + count


def read_element(data: bytes, offset: int = 0) -> tuple[Element, int]:
    """Parse the element starting at ``offset``; return it and the offset just past it.

    Bytes after the element are the caller's business (see :func:`parse` for the strict form).
    """
    data = bytes(data)
    tag, after_tag = _read_tag(data, offset)
    length, content_start = _read_length(data, after_tag)
    end = content_start + length
    if end > len(data):
        raise MalformedData(
            f"truncated DER: contents declare {length} bytes, {len(data) - content_start} present"
        )
    return Element(tag, data[content_start:end], data[offset:end]), end


def parse(data: bytes) -> Element:
    """Parse exactly one element; any trailing byte is :class:`MalformedData`."""
    element, end = read_element(data)
    if end != len(data):
        raise MalformedData(f"{len(data) - end} trailing bytes after the DER element")
    return element


def parse_all(data: bytes) -> list[Element]:
    """Parse a concatenation of elements (the contents of a constructed element)."""
    data = bytes(data)
    elements: list[Element] = []
    offset = 0
    while offset < len(data):
        element, offset = read_element(data, offset)
        elements.append(element)
    return elements


@dataclass(frozen=True)
class Node:
    """A fully parsed element: primitive ``value`` bytes, or constructed ``children``."""

    tag: Tag
    value: bytes | tuple[Node, ...]

    def encode(self) -> bytes:
        """The DER encoding of this node."""
        if isinstance(self.value, bytes):
            return encode_tlv(self.tag, self.value)
        return encode_tlv(self.tag, b"".join(child.encode() for child in self.value))


def parse_tree(data: bytes) -> Node:
    """Parse one element and, recursively, every constructed element inside it.

    :class:`MalformedData` for bad DER anywhere, trailing bytes, or nesting deeper than
    :data:`MAX_DEPTH`.
    """
    return _to_node(parse(data), 0)


def _to_node(element: Element, depth: int) -> Node:
    if depth > MAX_DEPTH:
        raise MalformedData(f"DER nesting deeper than {MAX_DEPTH}")
    if not element.tag.constructed:
        return Node(element.tag, element.content)
    return Node(element.tag, tuple(_to_node(child, depth + 1) for child in element.children()))


# --- writing ----------------------------------------------------------------------------------


def encode_length(length: int) -> bytes:
    """The minimal definite-length octets for ``length``."""
    if length < 0:
        raise ValueError("length must be >= 0")
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    if len(body) > MAX_LENGTH_BYTES:
        raise ValueError(f"length {length} needs more than {MAX_LENGTH_BYTES} bytes")
    return bytes([0x80 | len(body)]) + body


def encode_tlv(tag: Tag | int, content: bytes) -> bytes:
    """One element: ``tag`` (a :class:`Tag` or a single identifier octet) and ``content``."""
    identifier = tag.encode() if isinstance(tag, Tag) else bytes([tag])
    return identifier + encode_length(len(content)) + bytes(content)


def encode_sequence(encoded_children: Iterable[bytes]) -> bytes:
    """A SEQUENCE whose contents are the given already-encoded elements, in order."""
    return encode_tlv(SEQUENCE, b"".join(encoded_children))


def rebuild_without(element: Element, drop: Sequence[int]) -> bytes:
    """``element`` re-encoded with the children at the indices ``drop`` removed.

    The remaining children keep their exact encodings and order; the identifier is kept.
    """
    children = element.children()
    bad = [index for index in drop if not 0 <= index < len(children)]
    if bad:
        raise ValueError(f"child indices {bad} out of range (element has {len(children)})")
    dropped = set(drop)
    kept = [child.encoded for index, child in enumerate(children) if index not in dropped]
    return element.encoded[: _identifier_length(element)] + _with_length(b"".join(kept))


def _identifier_length(element: Element) -> int:
    return len(element.tag.encode())


def _with_length(content: bytes) -> bytes:
    return encode_length(len(content)) + content


# --- universal types ----------------------------------------------------------------------------


def encode_oid(dotted: str) -> bytes:
    """The DER OBJECT IDENTIFIER for a dotted string such as ``"2.5.29.72"``."""
    try:
        arcs = [int(part) for part in dotted.split(".")]
    except ValueError as exc:
        raise ValueError(f"not a dotted OID: {dotted!r}") from exc
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40) or min(arcs) < 0:
        raise ValueError(f"not a valid OID: {dotted!r}")
    content = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        groups = [arc & 0x7F]
        arc >>= 7
        while arc:
            groups.append(0x80 | (arc & 0x7F))
            arc >>= 7
        content.extend(reversed(groups))
    return encode_tlv(OBJECT_IDENTIFIER, bytes(content))


def decode_oid(element: Element) -> str:
    """The dotted string of an OBJECT IDENTIFIER element (strict: minimal subidentifiers)."""
    if not element.is_(OBJECT_IDENTIFIER):
        raise MalformedData("expected an OBJECT IDENTIFIER")
    content = element.content
    if not content:
        raise MalformedData("empty OBJECT IDENTIFIER")
    if content[-1] & 0x80:
        raise MalformedData("truncated OBJECT IDENTIFIER subidentifier")
    values: list[int] = []
    value = 0
    fresh = True
    for octet in content:
        if fresh and octet == 0x80:
            raise MalformedData("non-minimal OBJECT IDENTIFIER subidentifier")
        value = (value << 7) | (octet & 0x7F)
        fresh = not octet & 0x80
        if fresh:
            values.append(value)
            value = 0
    first = values[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(arc) for arc in [*head, *values[1:]])


def encode_bit_string(data: bytes) -> bytes:
    """A BIT STRING holding ``data`` as whole bytes (no unused bits)."""
    return encode_tlv(BIT_STRING, b"\x00" + bytes(data))


def decode_bit_string(element: Element) -> bytes:
    """The bytes of a BIT STRING with no unused bits (anything else: :class:`MalformedData`)."""
    if not element.is_(BIT_STRING):
        raise MalformedData("expected a primitive BIT STRING")
    if not element.content:
        raise MalformedData("BIT STRING without its unused-bits octet")
    if element.content[0] != 0:
        raise MalformedData(
            f"BIT STRING with {element.content[0]} unused bits, expected whole bytes"
        )
    return element.content[1:]


def encode_octet_string(data: bytes) -> bytes:
    """An OCTET STRING holding ``data``."""
    return encode_tlv(OCTET_STRING, data)


def decode_octet_string(element: Element) -> bytes:
    """The contents of a primitive OCTET STRING."""
    if not element.is_(OCTET_STRING):
        raise MalformedData("expected a primitive OCTET STRING")
    return element.content


def decode_boolean(element: Element) -> bool:
    """A DER BOOLEAN (one octet, 0x00 or 0xFF)."""
    if not element.is_(BOOLEAN) or len(element.content) != 1:
        raise MalformedData("expected a one-octet BOOLEAN")
    if element.content not in (b"\x00", b"\xff"):
        raise MalformedData(f"DER BOOLEAN must be 0x00 or 0xFF, got 0x{element.content.hex()}")
    return element.content == b"\xff"
