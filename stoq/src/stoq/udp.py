"""A UDP socket that moves datagrams in batches: the I/O under every STOQ endpoint.

asyncio's datagram transport hands over one datagram per event-loop turn and sends each with
its own system call. This socket instead, on every wakeup, drains the kernel queue (up to
:data:`MAX_BATCH` reads) and passes the whole batch on at once, and sends a batch of datagrams to
one address with as few system calls as the kernel allows:

* **GSO** (``UDP_SEGMENT``, Linux >= 4.18): consecutive datagrams of equal size (the last may be
  shorter) go out in one ``sendmsg``, which the kernel splits into datagrams;
* **GRO** (``UDP_GRO``, Linux >= 5.0): the kernel coalesces received datagrams of a flow into one
  buffer plus a segment size, which is split here.

Both are probed when the socket opens and turned off for good on the first error, so the socket
works the same (only slower) where the kernel lacks them. Sends that find the socket buffer full
wait in a queue for the socket to become writable, in order; nothing is dropped locally.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any, Protocol

__all__ = ["Address", "BatchSocket", "DatagramSender", "open_socket"]

log = logging.getLogger(__name__)

SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
UDP_GRO = getattr(socket, "UDP_GRO", 104)
#: Datagrams read per wakeup at most (then the loop runs other work).
MAX_BATCH = 256
#: The kernel accepts at most 64 segments per GSO send.
MAX_SEGMENTS = 64
MAX_GSO_BYTES = 65000
RECEIVE_BUFFER = 65535
SOCKET_BUFFER = 8 << 20

Address = tuple[Any, ...]
Batch = list[tuple[bytes, Address]]


class DatagramSender(Protocol):
    """What a STOQ connection sends its QUIC datagrams through: a :class:`BatchSocket`, or a
    virtual path such as :class:`stoq.nat.peer_link.PeerLink` (direct or relayed)."""

    def send(self, datagrams: Sequence[tuple[bytes, Address]]) -> None: ...


def open_socket(
    host: str, port: int, *, family: socket.AddressFamily | None = None, dual_stack: bool = True
) -> socket.socket:
    """A bound, non-blocking UDP socket.

    ``host`` ``"::"`` with ``dual_stack`` makes one IPv6 socket that also takes IPv4
    (``IPV6_V6ONLY`` = 0); :class:`OSError` if the host cannot (then bind per family).
    """
    if family is None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            except OSError as exc:  # a smaller buffer still works
                log.debug("cannot size socket buffer: %s", exc)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _normalize(address: Address) -> Address:
    """IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) as plain IPv4 tuples, ports as given."""
    host = address[0]
    if isinstance(host, str) and host.startswith("::ffff:") and "." in host:
        return (host[7:], address[1])
    return address[:2]


class BatchSocket:
    """Wraps a bound UDP socket; calls ``on_batch`` with every batch received."""

    def __init__(
        self,
        sock: socket.socket,
        on_batch: Callable[[Batch], None],
        *,
        on_error: Callable[[OSError], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """``on_error`` hears ICMP errors (refused, unreachable) of a *connected* socket."""
        self._sock = sock
        self._on_batch = on_batch
        self._on_error = on_error
        try:
            self._peer: Address | None = _normalize(sock.getpeername())
        except OSError:
            self._peer = None
        self._loop = loop or asyncio.get_running_loop()
        self._family = sock.family
        self._pending: collections.deque[tuple[bytes, Address, int]] = collections.deque()
        self._writer_armed = False
        self._closed = False
        self.gso = self._probe(UDP_SEGMENT, None)
        self.gro = self._probe(UDP_GRO, 1)
        self.datagrams_received = 0
        self.datagrams_sent = 0
        self.send_errors = 0
        self._loop.add_reader(sock.fileno(), self._readable)

    def _probe(self, option: int, value: int | None) -> bool:
        if not hasattr(socket, "SOL_UDP") and SOL_UDP != 17:
            return False
        try:
            if value is None:
                self._sock.getsockopt(SOL_UDP, option)
            else:
                self._sock.setsockopt(SOL_UDP, option, value)
        except OSError:
            return False
        return True

    @property
    def local_address(self) -> Address:
        return self._sock.getsockname()  # type: ignore[no-any-return]

    @property
    def family(self) -> socket.AddressFamily:
        return self._family

    def path_mtu(self, address: Address) -> int | None:
        """The kernel's route MTU towards ``address``, or ``None`` if it cannot tell."""
        probe = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            probe.connect(self._sendable(address))
            if self._family == socket.AF_INET6:
                return int(probe.getsockopt(socket.IPPROTO_IPV6, getattr(socket, "IPV6_MTU", 24)))
            return int(probe.getsockopt(socket.IPPROTO_IP, getattr(socket, "IP_MTU", 14)))
        except OSError:
            return None
        finally:
            probe.close()

    # -- receiving ---------------------------------------------------------------------------

    def _readable(self) -> None:
        batch: Batch = []
        sock = self._sock
        gro = self.gro
        space = socket.CMSG_SPACE(4) if gro else 0
        for _ in range(MAX_BATCH):
            try:
                if gro:
                    data, ancillary, _flags, address = sock.recvmsg(RECEIVE_BUFFER, space)
                else:
                    data, address = sock.recvfrom(RECEIVE_BUFFER)
                    ancillary = []
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # On a connected socket, ICMP errors (port unreachable, administratively
                # prohibited...) surface here: the path is refused.
                log.debug("receive error: %s", exc)
                if self._on_error is not None:
                    self._on_error(exc)
                break
            address = _normalize(address)
            segment = 0
            for level, kind, value in ancillary:
                if level == SOL_UDP and kind == UDP_GRO and len(value) >= 2:
                    segment = (
                        struct.unpack("=H", value[:2])[0]
                        if len(value) < 4
                        else struct.unpack("=i", value[:4])[0]
                    )
            if segment and len(data) > segment:
                for offset in range(0, len(data), segment):
                    batch.append((data[offset : offset + segment], address))
            else:
                batch.append((data, address))
        if batch:
            self.datagrams_received += len(batch)
            self._on_batch(batch)

    # -- sending -----------------------------------------------------------------------------

    def _sendable(self, address: Address) -> Address:
        if (
            self._family == socket.AF_INET6
            and "." in str(address[0])
            and ":" not in str(address[0])
        ):
            return ("::ffff:" + address[0], address[1])
        return address

    def send(self, datagrams: Sequence[tuple[bytes, Address]]) -> None:
        """Send ``datagrams`` in order, batching runs to the same address with GSO."""
        if self._closed or not datagrams:
            return
        count = len(datagrams)
        index = 0
        while index < count:
            data, address = datagrams[index]
            size = len(data)
            end = index + 1
            if self.gso:
                total = size
                while (
                    end < count
                    and end - index < MAX_SEGMENTS
                    and datagrams[end][1] == address
                    and len(datagrams[end - 1][0]) == size
                    and len(datagrams[end][0]) <= size
                    and total + len(datagrams[end][0]) <= MAX_GSO_BYTES
                ):
                    total += len(datagrams[end][0])
                    end += 1
            if end - index > 1:
                self._queue(b"".join(d for d, _ in datagrams[index:end]), address, size)
            else:
                self._queue(data, address, 0)
            index = end
        self._flush()

    def _queue(self, data: bytes, address: Address, segment: int) -> None:
        self._pending.append((data, self._sendable(address), segment))

    def _flush(self) -> None:
        pending = self._pending
        sock = self._sock
        while pending:
            data, address, segment = pending[0]
            try:
                if segment:
                    control = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", segment))]
                    if self._peer is None:
                        sock.sendmsg([data], control, 0, address)
                    else:
                        sock.sendmsg([data], control)
                    self.datagrams_sent += -(-len(data) // segment)
                else:
                    if self._peer is None:
                        sock.sendto(data, address)
                    else:
                        sock.send(data)
                    self.datagrams_sent += 1
            except (BlockingIOError, InterruptedError):
                if not self._writer_armed:
                    self._loop.add_writer(sock.fileno(), self._writable)
                    self._writer_armed = True
                return
            except OSError as exc:
                pending.popleft()
                self.send_errors += 1
                if segment and exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT):
                    # The device cannot segment: resend one by one and stop using GSO.
                    self.gso = False
                    for offset in reversed(range(0, len(data), segment)):
                        pending.appendleft((data[offset : offset + segment], address, 0))
                    continue
                # Unreachable network or host, refused port: the datagram is lost, as it would
                # be on the wire; QUIC's loss recovery and timers report it. A connected
                # socket's owner hears of it at once.
                log.debug("send to %s failed: %s", address, exc)
                if exc.errno == errno.EMSGSIZE:
                    continue  # a path-MTU probe too large for the route: lost, not refused
                if self._on_error is not None and self._peer is not None:
                    self._on_error(exc)
                continue
            pending.popleft()
        if self._writer_armed:
            self._loop.remove_writer(sock.fileno())
            self._writer_armed = False

    def _writable(self) -> None:
        self._flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        if self._writer_armed:
            self._loop.remove_writer(self._sock.fileno())
        self._pending.clear()
        self._sock.close()
