"""The one serialized form of TrustChain keys, signatures and ciphertexts (format version 1).

Every object is an *envelope*::

    offset  size  field
    0       1     format version (= 1)
    1       1     kind (see :class:`Kind`)
    2       2     algorithm identifier, big-endian (see :mod:`trustchain.crypto.algorithms`)
    4       4     body length N, big-endian
    8       N     body

The body of a single algorithm is that algorithm's standard raw encoding (RFC 8032 / RFC 7748
raw keys, FIPS 203 ``ek`` and 64-byte seed ``d || z``, the NIST round-3 Falcon encodings). The body
of a hybrid is its component envelopes, concatenated in a fixed order. Parsing is strict: a wrong
version, kind or length, and any trailing byte, raise :class:`~trustchain.errors.MalformedData`.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from typing import Protocol

from trustchain.errors import MalformedData


class _Labelled(Protocol):
    """An algorithm identifier with a human-facing label (the enums of ``algorithms``)."""

    @property
    def label(self) -> str: ...

    def __int__(self) -> int: ...


FORMAT_VERSION = 1
HEADER = struct.Struct(">BBHI")
#: Upper bound on a body; the largest real object (a McEliece key we do not use) is far below it.
MAX_BODY = 1 << 20


class Kind(enum.IntEnum):
    SIGNING_PUBLIC_KEY = 1
    SIGNING_PRIVATE_KEY = 2
    SIGNATURE = 3
    KEM_PUBLIC_KEY = 4
    KEM_PRIVATE_KEY = 5
    KEM_CIPHERTEXT = 6
    SEALED_BOX = 7
    DETACHED_SIGNATURE = 8


def encode(kind: Kind, algorithm: int, body: bytes) -> bytes:
    """Wrap ``body`` in a version-1 envelope."""
    if len(body) > MAX_BODY:
        raise MalformedData(f"body of {len(body)} bytes exceeds the {MAX_BODY}-byte limit")
    return HEADER.pack(FORMAT_VERSION, kind, algorithm, len(body)) + body


def decode_prefix(data: bytes, kind: Kind, offset: int = 0) -> tuple[int, bytes, int]:
    """Parse one envelope of ``kind`` starting at ``offset``.

    Returns ``(algorithm identifier, body, offset just past the envelope)``. Trailing data after
    the envelope is the caller's business (hybrids parse several envelopes in a row).
    """
    if len(data) - offset < HEADER.size:
        raise MalformedData(
            f"truncated {kind.name.lower()}: {len(data) - offset} bytes, header needs {HEADER.size}"
        )
    version, got_kind, algorithm, length = HEADER.unpack_from(data, offset)
    if version != FORMAT_VERSION:
        raise MalformedData(f"unsupported format version {version} (expected {FORMAT_VERSION})")
    if got_kind != kind:
        try:
            got = Kind(got_kind).name.lower()
        except ValueError:
            got = f"unknown kind {got_kind}"
        raise MalformedData(f"expected {kind.name.lower()}, got {got}")
    if length > MAX_BODY:
        raise MalformedData(f"declared body length {length} exceeds the {MAX_BODY}-byte limit")
    start = offset + HEADER.size
    end = start + length
    if end > len(data):
        present = len(data) - start
        raise MalformedData(
            f"truncated {kind.name.lower()}: body declares {length} bytes, {present} present"
        )
    return algorithm, bytes(data[start:end]), end


def decode(data: bytes, kind: Kind) -> tuple[int, bytes]:
    """Parse exactly one envelope of ``kind``; trailing bytes are an error."""
    algorithm, body, end = decode_prefix(data, kind)
    if end != len(data):
        raise MalformedData(f"{len(data) - end} trailing bytes after {kind.name.lower()}")
    return algorithm, body


def split_components(
    body: bytes, kind: Kind, expected: Sequence[_Labelled], what: str
) -> list[bytes]:
    """The component bodies of a hybrid ``body``: exactly one envelope of ``kind`` per
    ``expected`` algorithm, in that order, and nothing after them (else :class:`MalformedData`).
    """
    parts: list[bytes] = []
    offset = 0
    for position, component in enumerate(expected, start=1):
        algorithm, part, offset = decode_prefix(body, kind, offset)
        if algorithm != int(component):
            raise MalformedData(
                f"hybrid {what}: component {position} must be {component.label}, "
                f"got algorithm 0x{algorithm:04x}"
            )
        parts.append(part)
    if offset != len(body):
        raise MalformedData(
            f"hybrid {what}: {len(body) - offset} trailing bytes after the components"
        )
    return parts


def join_components(kind: Kind, parts: Sequence[tuple[int, bytes]]) -> bytes:
    """A hybrid body: one envelope of ``kind`` per ``(algorithm, component body)``, in order."""
    return b"".join(encode(kind, algorithm, body) for algorithm, body in parts)


def check_sized(
    data: bytes,
    *,
    what: str,
    sizes: range,
    header: int,
    error: type[MalformedData] = MalformedData,
    hint: str = "",
) -> None:
    """Raise ``error`` unless ``data`` is ``sizes`` long and starts with byte ``header``.

    The shape check every raw key and signature encoding gets before it reaches a C library.
    ``hint`` is appended to a wrong-header message (e.g. to name a commonly confused format).
    """
    if len(data) not in sizes:
        expected = str(sizes.start) if len(sizes) == 1 else f"{sizes.start}..{sizes.stop - 1}"
        raise error(f"{what} must be {expected} bytes, got {len(data)}")
    if data[0] != header:
        raise error(f"{what} header must be 0x{header:02x}, got 0x{data[0]:02x}{hint}")
