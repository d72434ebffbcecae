"""STOQ's settings: one frozen value shared by endpoints, connections and the pool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from stoq.engine import MIN_DATAGRAM
from stoq.identity import NodeIdentity, PeerPolicy

__all__ = ["PATH_MTU", "StoqConfig"]

#: ``max_datagram_size="pmtu"``: use the largest datagram the path carries (see
#: :attr:`StoqConfig.max_datagram_size`).
PATH_MTU: Literal["pmtu"] = "pmtu"


@dataclass(frozen=True)
class StoqConfig:
    """How a node talks STOQ.

    * ``identity`` / ``policy``: who this node is, and which peers it accepts.
    * ``engine``: the QUIC implementation, ``"aioquic"`` or ``"qh3"`` (see :mod:`stoq.engine`).
    * ``max_datagram_size``: bytes per UDP datagram, at least 1200. ``"pmtu"`` uses the path's
      MTU: qh3 discovers it with DPLPMTUD (RFC 8899) probes starting from 1200; with aioquic the
      kernel's route MTU of the connected socket is used (loopback 65536), capped at 16383
      because of an aioquic frame-encoding limit (see :data:`stoq.engine.AIOQUIC_MAX_DATAGRAM`).
    * ``idle_timeout``: seconds without packets before the connection closes; ``keepalive``:
      seconds between PINGs when nothing else is sent (``None``: no keepalive).
    * ``attempt_delay`` / ``resolution_delay``: Happy Eyeballs (RFC 8305) delays.
    * ``connect_timeout``: seconds for a whole connect (all attempts).
    * ``max_message_size``: the largest message a stream carries, either way.
    * ``max_data`` / ``max_stream_data``: QUIC flow-control windows; the defaults cover a
      bandwidth-delay product of 10 Gbit/s x 12 ms per connection.
    * ``stream_high_water``: a writer waits while more than this many bytes of its stream are
      buffered and not yet acknowledged (flow control or congestion window full).
    * ``max_connections`` / ``max_pending_handshakes``: server-side limits; new connections past
      them are dropped. ``handshake_timeout``: a server closes a connection whose TLS handshake
      and post-quantum session are not done within this many seconds.
    """

    identity: NodeIdentity
    policy: PeerPolicy
    engine: str = "aioquic"
    max_datagram_size: int | Literal["pmtu"] = MIN_DATAGRAM
    idle_timeout: float = 30.0
    keepalive: float | None = 10.0
    attempt_delay: float = 0.25
    resolution_delay: float = 0.05
    connect_timeout: float = 10.0
    max_message_size: int = 16 << 20
    max_data: int = 16 << 20
    max_stream_data: int = 8 << 20
    stream_high_water: int = 1 << 20
    max_datagram_frame_size: int = 65536
    handshake_timeout: float = 5.0
    max_connections: int = 4096
    max_pending_handshakes: int = 128

    def __post_init__(self) -> None:
        size = self.max_datagram_size
        if size != PATH_MTU and (not isinstance(size, int) or not MIN_DATAGRAM <= size <= 65527):
            raise ValueError('max_datagram_size must be 1200..65527 or "pmtu"')
        if self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        if self.keepalive is not None and not 0 < self.keepalive < self.idle_timeout:
            raise ValueError("keepalive must be positive and shorter than idle_timeout")
        if not 0.1 <= self.attempt_delay <= 2.0:
            raise ValueError("attempt_delay must be between 0.1 and 2 seconds (RFC 8305)")
        if self.connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        if not 0 < self.max_message_size <= 1 << 30:
            raise ValueError("max_message_size must be between 1 byte and 1 GiB")
        if self.stream_high_water <= 0:
            raise ValueError("stream_high_water must be positive")
        if self.max_connections <= 0 or self.max_pending_handshakes <= 0:
            raise ValueError("connection limits must be positive")
