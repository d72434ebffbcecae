"""Splitting a TURN byte stream (TCP or TLS) into messages, sans-IO (RFC 8656 §12.5, RFC 8489
§6.2.2).

Over a stream, STUN messages and ChannelData follow each other with nothing in between; each
is self-delimiting, and its first byte (RFC 7983) tells which it is:

* first byte 0-3: a STUN message — a 20-byte header whose bytes 2-3 hold the length of the
  attributes (a multiple of 4) and bytes 4-7 the magic cookie ``21 12 A4 42``; the message is
  ``20 + length`` bytes;
* first byte 64-79 (0x40-0x4F): ChannelData — channel number (2 bytes), data length (2 bytes),
  the data, then zero padding to a multiple of 4, which is mandatory over a stream; the message
  is ``4 + length`` rounded up to a multiple of 4 bytes.

Anything else (another first byte, a STUN header without the magic cookie or with a length
that is not a multiple of 4, or a length above the framer's bound) cannot be resynchronised:
:class:`FramingError` is raised and the stream must be closed.
"""

from __future__ import annotations

from typing import Final

from stoq.nat.stun import HEADER_SIZE, MAGIC_COOKIE, StunDecodeError

__all__ = ["MAX_FRAME", "FramingError", "StreamFramer"]

_CHANNEL_HEADER: Final = 4
MAX_FRAME: Final = HEADER_SIZE + 0xFFFC
"""The longest frame either form can announce (a STUN message with 65532 attribute bytes; a
ChannelData message is at most ``4 + 65535`` rounded up to 4 = 65540 bytes)."""


class FramingError(StunDecodeError):
    """The stream holds something that is neither a STUN message nor ChannelData, or a frame
    longer than allowed; ``reason`` says what. The stream cannot be resynchronised."""


class StreamFramer:
    """Cuts a byte stream into whole STUN and ChannelData messages.

    :meth:`feed` takes any chunk of the stream and returns the messages completed by it, in
    order; the tail of an incomplete message is kept (never more than ``max_frame`` bytes).
    ``max_frame`` bounds the size a frame may announce (default and upper limit
    :data:`MAX_FRAME`). After a :class:`FramingError` the framer stays broken: every later
    :meth:`feed` raises the same error.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        if not HEADER_SIZE <= max_frame <= MAX_FRAME:
            raise ValueError(f"max_frame must be {HEADER_SIZE} to {MAX_FRAME}, not {max_frame}")
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._error: FramingError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held of a message not yet complete."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """The messages that ``data`` completes; :class:`FramingError` on garbage."""
        if self._error is not None:
            raise self._error
        self._buffer += data
        frames: list[bytes] = []
        while True:
            try:
                size = self._frame_size()
            except FramingError as exc:
                self._error = exc
                self._buffer.clear()
                raise
            if size is None or len(self._buffer) < size:
                return frames
            frames.append(bytes(self._buffer[:size]))
            del self._buffer[:size]

    def _frame_size(self) -> int | None:
        """The size of the frame at the start of the buffer, or None if not known yet."""
        buffer = self._buffer
        if not buffer:
            return None
        first = buffer[0]
        if first <= 3:
            if len(buffer) >= 8:
                cookie = int.from_bytes(buffer[4:8], "big")
                if cookie != MAGIC_COOKIE:
                    raise FramingError(f"a STUN header without the magic cookie ({cookie:#010x})")
            if len(buffer) < 4:
                return None
            length = int.from_bytes(buffer[2:4], "big")
            if length % 4:
                raise FramingError(f"a STUN message length of {length}, not a multiple of 4")
            size = HEADER_SIZE + length
        elif 64 <= first <= 79:
            if len(buffer) < _CHANNEL_HEADER:
                return None
            length = int.from_bytes(buffer[2:4], "big")
            size = _CHANNEL_HEADER + length + (-length % 4)
        else:
            raise FramingError(f"first byte {first:#04x} is neither STUN (0-3) nor ChannelData")
        if size > self.max_frame:
            raise FramingError(f"a frame of {size} bytes exceeds the limit of {self.max_frame}")
        return size
