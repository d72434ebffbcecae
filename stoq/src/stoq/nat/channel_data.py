"""TURN ChannelData messages (RFC 8656 section 12.4), shared by the relay and its client.

Layout: channel number (16 bits, 0x4000-0x4FFF), length of the application data (16 bits), the
data, then zero padding to a multiple of 4 bytes — required over TCP, optional over UDP, where
a receiver accepts it either way. RFC 7983 tells ChannelData from STUN and other traffic on a
shared socket by the first byte: 64-79.
"""

from __future__ import annotations

import struct
from typing import Final

from stoq.nat.stun import StunDecodeError, StunError

__all__ = [
    "CHANNEL_MAX",
    "CHANNEL_MIN",
    "decode_channel_data",
    "encode_channel_data",
    "is_channel_data",
]

CHANNEL_MIN: Final = 0x4000
CHANNEL_MAX: Final = 0x4FFF
_HEADER: Final = struct.Struct(">HH")


def is_channel_data(datagram: bytes) -> bool:
    """Whether ``datagram`` starts like ChannelData (RFC 7983: first byte 64-79)."""
    return len(datagram) >= 1 and 64 <= datagram[0] <= 79


def encode_channel_data(channel: int, data: bytes, *, pad: bool = False) -> bytes:
    """ChannelData for ``data`` on ``channel``, padded to a multiple of 4 when ``pad``.
    :class:`StunError` for a channel outside 0x4000-0x4FFF or more than 65535 bytes."""
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise StunError(f"channel number {channel:#06x} is outside 0x4000-0x4FFF")
    if len(data) > 0xFFFF:
        raise StunError(f"ChannelData of {len(data)} bytes exceeds 65535")
    padding = bytes(-len(data) % 4) if pad else b""
    return _HEADER.pack(channel, len(data)) + bytes(data) + padding


def decode_channel_data(datagram: bytes) -> tuple[int, bytes]:
    """``(channel, data)`` of a ChannelData message, padded or not. :class:`StunDecodeError`
    for a channel outside 0x4000-0x4FFF, fewer bytes than its length says, or anything after
    the padding."""
    if len(datagram) < _HEADER.size:
        raise StunDecodeError(f"ChannelData of {len(datagram)} bytes has no 4-byte header")
    channel, length = _HEADER.unpack_from(datagram)
    if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
        raise StunDecodeError(f"channel number {channel:#06x} is outside 0x4000-0x4FFF")
    end = _HEADER.size + length
    if len(datagram) < end:
        raise StunDecodeError(
            f"ChannelData announces {length} bytes but carries {len(datagram) - _HEADER.size}"
        )
    if len(datagram) not in (end, end + (-length % 4)):
        raise StunDecodeError(
            f"ChannelData has {len(datagram) - end} bytes after its {length} data bytes, "
            "more than the padding"
        )
    return channel, bytes(datagram[_HEADER.size : end])
