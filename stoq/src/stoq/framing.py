"""Length-prefixed messages on a byte stream, sans-IO.

Wire format: each message is a 4-byte big-endian length ``n`` followed by ``n`` bytes. A length
above the decoder's limit is refused as soon as the 4 bytes arrive, before any body is buffered,
so a peer cannot make a receiver hold more than ``max_size`` bytes per stream.
"""

from __future__ import annotations

import struct

from stoq.errors import MessageTooLarge, ProtocolViolation

__all__ = ["LENGTH", "MessageDecoder", "frame"]

LENGTH = struct.Struct(">I")
MAX_LENGTH = 0xFFFF_FFFF


def frame(message: bytes) -> bytes:
    """``message`` with its length prefix."""
    if len(message) > MAX_LENGTH:
        raise MessageTooLarge(f"a message of {len(message)} bytes cannot be framed")
    return LENGTH.pack(len(message)) + message


class MessageDecoder:
    """Turns received bytes back into messages; at most ``max_size`` bytes each."""

    def __init__(self, max_size: int) -> None:
        if not 0 <= max_size <= MAX_LENGTH:
            raise ValueError("max_size must be between 0 and 2^32 - 1")
        self._max_size = max_size
        self._buffer = bytearray()
        self._need: int | None = None
        self._ended = False

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a whole message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return every message now complete, in order.

        :class:`MessageTooLarge` for a length above the limit. The decoder is unusable after an
        error (the stream is out of sync).
        """
        if self._ended:
            raise ProtocolViolation("data after the end of the stream")
        buffer = self._buffer
        buffer += data
        messages: list[bytes] = []
        offset = 0
        end = len(buffer)
        while True:
            if self._need is None:
                if end - offset < LENGTH.size:
                    break
                (length,) = LENGTH.unpack_from(buffer, offset)
                if length > self._max_size:
                    self._ended = True
                    raise MessageTooLarge(
                        f"the peer announced a {length}-byte message; the limit is {self._max_size}"
                    )
                offset += LENGTH.size
                self._need = length
            if end - offset < self._need:
                break
            messages.append(bytes(buffer[offset : offset + self._need]))
            offset += self._need
            self._need = None
        if offset:
            del buffer[:offset]
        return messages

    def end(self) -> None:
        """The stream ended; :class:`ProtocolViolation` if it stopped inside a message."""
        self._ended = True
        if self._buffer or self._need is not None:
            raise ProtocolViolation(
                f"the stream ended inside a message ({len(self._buffer)} bytes pending)"
            )
