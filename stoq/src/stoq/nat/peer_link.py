"""One peer's datagram paths, direct or relayed, under one STOQ connection.

A :class:`PeerLink` is the socket a STOQ (QUIC) connection to a peer behind NAT sends through
(:class:`stoq.udp.DatagramSender`). The connection always names the peer by one *virtual*
address; underneath, the link routes every datagram over the best path it has:

* ``DIRECT``: a UDP socket whose NAT hole ICE-style checks opened (:mod:`stoq.nat.punch`),
  to the peer's address of the selected pair;
* ``RELAY``: our TURN allocation (:class:`stoq.nat.turn_client.TurnClient`) to the peer's
  relayed address (relay to relay: each side only ever talks to its own TURN server, so it
  works behind every NAT and, over TURN-over-TCP, behind UDP-blocking firewalls);
* ``NONE``: nothing yet (datagrams are dropped; QUIC retransmits).

Because QUIC never sees the path change, switching from relay to direct (the upgrade) and back
(a lost path) costs the application nothing but the datagrams lost in between, which QUIC
recovers. Every switch is recorded in :attr:`PeerLink.changes` with its time.

Demultiplexing (RFC 7983 / RFC 9443): each datagram on the link's UDP sockets is, by its first
byte and the STUN magic cookie, either STUN — a response to one of the link's own Binding
transactions (:meth:`PeerLink.binding`, matched by transaction id: server-reflexive discovery
runs on the very socket QUIC uses), a Binding indication (a keepalive), or a connectivity check
for the current :class:`~stoq.nat.punch.PunchSession` — or else QUIC, handed to the
connection only if it comes from a validated path: the remote address of a pair whose
connectivity check succeeded, on that pair's socket (ICE's rule that media flows only on
validated pairs). Anything else is dropped and counted in ``ignored``, so
no one who merely learns the socket's address can feed the connection (a forged Initial could
otherwise claim the one connection a :class:`~stoq.endpoint.PeerServer` makes). Datagrams
relayed by TURN from anyone but the peer's relayed address are dropped too.

Keepalives and liveness (RFC 8445 §11 keepalives, in the spirit of RFC 7675 consent): on a
direct path the link sends a STUN Binding indication (20-byte header + FINGERPRINT) whenever
nothing has been sent for ``keepalive`` seconds, which holds the NAT mappings open. If nothing
at all arrives from the peer's address for ``path_timeout`` seconds the direct path is declared
lost (e.g. a NAT rebinding gave one side a new public address): the link falls back to the
relay at once and calls ``on_path_lost`` so the owner restarts the checks
(:mod:`stoq.nat.traversal`). A QUIC datagram from an unvalidated address on the direct socket
(the peer's mapping changed) calls ``on_path_suspect``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from stoq.nat import stun
from stoq.nat.punch import Failed, PairState, PunchError, PunchSession, Selected
from stoq.nat.stun import MessageClass, StunError
from stoq.nat.stun_client import (
    Address,
    BindingResult,
    BindingTransaction,
    normalize_address,
    socket_address,
)
from stoq.nat.turn_client import TurnClient

__all__ = ["VIRTUAL_PEER", "PeerLink", "RelayPath", "Route", "RouteChange"]

log = logging.getLogger(__name__)

#: The address a connection over a link knows its peer by: unspecified, so it names no host.
VIRTUAL_PEER: Address = ("0.0.0.0", 1)  # noqa: S104 - never bound or dialled
_RECEIVE_SIZE = 65535
_READS_PER_WAKEUP = 256


class Route(enum.StrEnum):
    NONE = "none"
    RELAY = "relay"
    DIRECT = "direct"


@dataclass(frozen=True)
class RouteChange:
    """The link started using ``route`` at loop time ``at``: from ``local`` (direct: the
    socket's base; relay: our relayed address) to ``remote``, because of ``reason``."""

    at: float
    route: Route
    local: Address | None
    remote: Address | None
    reason: str


@dataclass
class _Pending:
    transaction: BindingTransaction
    future: asyncio.Future[BindingResult]
    base: Address
    timer: asyncio.TimerHandle | None = None


class PeerLink:
    """The paths to one peer (module docstring). ``sock`` is the link's first UDP socket (made
    non-blocking; closed with the link) and ``base`` its host candidate address."""

    def __init__(
        self,
        sock: socket.socket,
        base: Address,
        *,
        virtual: Address,
        keepalive: float = 2.5,
        path_timeout: float = 8.0,
        on_path_lost: Callable[[str], None] | None = None,
        on_path_suspect: Callable[[Address], None] | None = None,
    ) -> None:
        if not 0 < keepalive < path_timeout:
            raise ValueError("keepalive must be positive and shorter than path_timeout")
        self._loop = asyncio.get_running_loop()
        self.virtual = virtual
        self.keepalive = keepalive
        self.path_timeout = path_timeout
        self.on_path_lost = on_path_lost
        self.on_path_suspect = on_path_suspect
        #: Where received QUIC datagrams go (a connection's ``datagrams_received``).
        self.receiver: Callable[[list[bytes], Address], None] | None = None
        self.primary = normalize_address(base)
        self._sockets: dict[Address, socket.socket] = {}
        self._pending: dict[bytes, _Pending] = {}
        self.session: PunchSession | None = None
        self._punched: asyncio.Future[Selected | Failed] | None = None
        self._session_timer: asyncio.TimerHandle | None = None
        self.turn: TurnClient | None = None
        self.remote_relayed: Address | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Future[None]] = set()
        self.route = Route.NONE
        self._direct: tuple[socket.socket, Address, Address] | None = None  # sock, base, remote
        self.changes: list[RouteChange] = []
        self._last_rx = 0.0
        self._last_tx = 0.0
        self._closed = False
        self.sent = {Route.DIRECT: 0, Route.RELAY: 0}
        self.received = {Route.DIRECT: 0, Route.RELAY: 0}
        self.dropped = 0
        self.ignored = 0
        #: ``(base, remote)`` of every pair a connectivity check validated (kept across restarts).
        self.validated: set[tuple[Address, Address]] = set()
        self.add_sockets({self.primary: sock})
        self._tick = self._loop.call_later(self.keepalive / 2, self._on_tick)

    # --- sockets ---

    def add_sockets(self, sockets: Mapping[Address, socket.socket]) -> None:
        """Read from more UDP sockets (e.g. the extra bases of birthday probing)."""
        for base, sock in sockets.items():
            base = normalize_address(base)
            sock.setblocking(False)
            self._sockets[base] = sock
            self._loop.add_reader(sock.fileno(), self._readable, base, sock)

    def _drop_socket(self, base: Address) -> None:
        sock = self._sockets.pop(base, None)
        if sock is not None:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    @property
    def bases(self) -> tuple[Address, ...]:
        return tuple(self._sockets)

    def local_port(self) -> int:
        return int(self._sockets[self.primary].getsockname()[1])

    # --- STUN transactions on the link's sockets ---

    async def binding(
        self,
        server: Address,
        *,
        base: Address | None = None,
        rto: float = 0.1,
        retransmissions: int = 7,
        timeout: float | None = 2.0,
    ) -> BindingResult:
        """A Binding request to ``server`` from the socket of ``base`` (default: the primary);
        raises what :func:`stoq.nat.stun_client.binding` raises."""
        base = self.primary if base is None else normalize_address(base)
        transaction = BindingTransaction(
            normalize_address(server), rto=rto, retransmissions=retransmissions, timeout=timeout
        )
        pending = _Pending(transaction, self._loop.create_future(), base)
        self._pending[transaction.transaction_id] = pending
        try:
            self._send_stun(base, transaction.start(self._loop.time()), transaction.server)
            self._arm(pending)
            return await pending.future
        finally:
            if pending.timer is not None:
                pending.timer.cancel()
            self._pending.pop(transaction.transaction_id, None)

    def _arm(self, pending: _Pending) -> None:
        pending.timer = self._loop.call_at(pending.transaction.deadline, self._retransmit, pending)

    def _retransmit(self, pending: _Pending) -> None:
        if pending.future.done():
            return
        try:
            again = pending.transaction.handle_timeout(self._loop.time())
        except StunError as exc:
            pending.future.set_exception(exc)
            return
        if again is not None:
            self._send_stun(pending.base, again, pending.transaction.server)
        self._arm(pending)

    def _send_stun(self, base: Address, data: bytes, destination: Address) -> None:
        sock = self._sockets.get(base)
        if sock is None:
            return
        try:
            sock.sendto(data, socket_address(sock, destination))
        except OSError as exc:  # full buffer or no route: like a lost datagram
            log.debug("cannot send STUN to %s: %s", destination, exc)

    # --- relay ---

    def set_relay(self, turn: TurnClient, remote_relayed: Address) -> None:
        """Relay through ``turn`` (permission and channel for ``remote_relayed`` already made)
        and read what it relays from the peer; the route becomes RELAY unless it is DIRECT."""
        old = self.turn
        self.turn = turn
        self.remote_relayed = normalize_address(remote_relayed)
        if old is not turn or not self.relay_alive:
            if self._relay_task is not None:
                self._relay_task.cancel()
            if old is not None and old is not turn:
                closing = asyncio.ensure_future(old.close())
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
            self._relay_task = asyncio.ensure_future(self._relay_reader(turn))
        if self.route == Route.RELAY:
            self._switch(Route.RELAY, turn.relayed_address, self.remote_relayed, "relay changed")
        elif self.route == Route.NONE:
            self._switch(Route.RELAY, turn.relayed_address, self.remote_relayed, "relay ready")

    @property
    def relay_alive(self) -> bool:
        """True while the relay's allocation lives (its reader has not ended)."""
        return self._relay_task is not None and not self._relay_task.done()

    async def _relay_reader(self, turn: TurnClient) -> None:
        while True:
            try:
                peer, data = await turn.receive()
            except StunError as exc:
                log.info("relay lost: %s", exc)
                if self.turn is turn and self.route == Route.RELAY:
                    self._switch(Route.NONE, None, None, f"relay lost: {exc}")
                return
            if peer != self.remote_relayed or stun.is_stun(data):
                self.ignored += 1
                continue
            self.received[Route.RELAY] += 1
            self._deliver(data)

    # --- punching ---

    def punch(self, session: PunchSession) -> asyncio.Future[Selected | Failed]:
        """Run ``session`` on the link's sockets (replacing any earlier one); the future ends
        with its result. A :class:`Selected` pair becomes the DIRECT route."""
        if self._punched is not None and not self._punched.done():
            self._punched.cancel()
        wanted = {normalize_address(base.address) for base in session.bases}
        for base in [b for b in self._sockets if b not in wanted and b != self.primary]:
            self._drop_socket(base)  # extra sockets of an earlier session
        self.session = session
        self._punched = self._loop.create_future()
        self._pump_session()
        return self._punched

    def _pump_session(self) -> None:
        session = self.session
        if session is None:
            return
        for data, destination, base in session.datagrams_to_send():
            self._send_stun(base, data, destination)
        for pair in session.pairs:
            if pair.state == PairState.SUCCEEDED:
                self.validated.add(pair.key)
        result = session.result
        if result is not None and self._punched is not None and not self._punched.done():
            if isinstance(result, Selected):
                self._select(result)
            else:  # the birthday sockets did not win: close them, keep the primary
                for base in [b for b in self._sockets if b != self.primary]:
                    self._drop_socket(base)
            self._punched.set_result(result)
        if self._session_timer is not None:
            self._session_timer.cancel()
            self._session_timer = None
        when = session.get_timer()
        if when is not None:
            self._session_timer = self._loop.call_at(when, self._on_session_timer)

    def _on_session_timer(self) -> None:
        self._session_timer = None
        if self.session is not None:
            self.session.handle_timeout(self._loop.time())
            self._pump_session()

    def _select(self, selected: Selected) -> None:
        base = normalize_address(selected.local.address)
        sock = self._sockets.get(base)
        if sock is None:
            log.warning("selected pair's socket %s is gone", base)
            return
        remote = normalize_address(selected.remote.address)
        for other in [b for b in self._sockets if b != base]:
            self._drop_socket(other)  # the birthday bases that lost
        self.primary = base
        self.validated.add((base, remote))
        self._direct = (sock, base, remote)
        self._last_rx = self._loop.time()
        self._switch(Route.DIRECT, base, remote, "connectivity checks selected this pair")

    # --- DatagramSender ---

    def send(self, datagrams: Sequence[tuple[bytes, Address]]) -> None:
        """Send QUIC datagrams over the current route (their addresses are the virtual one)."""
        if self.route == Route.DIRECT and self._direct is not None:
            sock, _, remote = self._direct
            destination = socket_address(sock, remote)
            for data, _ in datagrams:
                try:
                    sock.sendto(data, destination)
                except OSError:  # a full buffer or a transient route error: lost, QUIC resends
                    self.dropped += 1
                    continue
                self.sent[Route.DIRECT] += 1
            self._last_tx = self._loop.time()
        elif self.route == Route.RELAY and self.turn is not None and self.remote_relayed:
            for data, _ in datagrams:
                try:
                    self.turn.send_nowait(self.remote_relayed, data)
                except StunError as exc:
                    self.dropped += 1
                    log.debug("relay send failed: %s", exc)
                    continue
                self.sent[Route.RELAY] += 1
        else:
            self.dropped += len(datagrams)

    # --- receiving ---

    def _readable(self, base: Address, sock: socket.socket) -> None:
        for _ in range(_READS_PER_WAKEUP):
            try:
                data, source = sock.recvfrom(_RECEIVE_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error queued on the socket
                log.debug("socket %s: %s", base, exc)
                continue
            self._datagram(data, normalize_address(source), base)

    def _datagram(self, data: bytes, source: Address, base: Address) -> None:
        direct = self._direct
        on_path = direct is not None and direct[1] == base and direct[2] == source
        if on_path:
            self._last_rx = self._loop.time()
        if stun.is_stun(data):
            self._stun(data, source, base)
            return
        if not on_path and (base, source) not in self.validated:
            self.ignored += 1
            if direct is not None and direct[1] == base and self.on_path_suspect is not None:
                self.on_path_suspect(source)  # e.g. the peer's mapping changed
            return
        self.received[Route.DIRECT] += 1
        self._deliver(data)

    def _stun(self, data: bytes, source: Address, base: Address) -> None:
        pending = self._pending.get(data[8:20])
        if pending is not None and not pending.future.done():
            try:
                result = pending.transaction.handle_datagram(data, source)
            except StunError as exc:
                pending.future.set_exception(exc)
                return
            if result is not None:
                pending.future.set_result(result)
            return
        if len(data) >= 2 and (data[0] & 0x01, data[1] & 0x10) == (0, 0x10):
            return  # an indication (class bits 01): a keepalive, already counted above
        if self.session is None:
            self.ignored += 1
            return
        try:
            self.session.handle_datagram(data, source, self._loop.time(), base=base)
        except PunchError as exc:  # a socket the session does not know (a restart raced it)
            log.debug("check on %s not for this session: %s", base, exc)
            self.ignored += 1
            return
        self._pump_session()

    def _deliver(self, data: bytes) -> None:
        if self.receiver is not None:
            self.receiver([data], self.virtual)

    # --- keepalives and liveness ---

    def _on_tick(self) -> None:
        if self._closed:
            return
        now = self._loop.time()
        if self.route == Route.DIRECT and self._direct is not None:
            _, base, remote = self._direct
            if now - self._last_rx > self.path_timeout:
                self._path_lost(f"nothing from {remote[0]}:{remote[1]} for {self.path_timeout} s")
            elif now - self._last_tx >= self.keepalive:
                indication = stun.Message(
                    stun.Method.BINDING, MessageClass.INDICATION, stun.new_transaction_id(), ()
                )
                self._send_stun(base, stun.encode(indication, fingerprint=True), remote)
                self._last_tx = now
        self._tick = self._loop.call_later(self.keepalive / 2, self._on_tick)

    def _path_lost(self, reason: str) -> None:
        self._direct = None
        if self.turn is not None and self.remote_relayed is not None and self.relay_alive:
            self._switch(Route.RELAY, self.turn.relayed_address, self.remote_relayed, reason)
        else:
            self._switch(Route.NONE, None, None, reason)
        if self.on_path_lost is not None:
            self.on_path_lost(reason)

    def _switch(
        self, route: Route, local: Address | None, remote: Address | None, reason: str
    ) -> None:
        self.route = route
        self.changes.append(RouteChange(self._loop.time(), route, local, remote, reason))
        log.info("link %s -> %s: %s", route, remote, reason)

    @property
    def direct_path(self) -> tuple[Address, Address] | None:
        """``(local base, remote)`` of the direct route, if there is one."""
        return None if self._direct is None else (self._direct[1], self._direct[2])

    # --- closing ---

    async def close(self) -> None:
        """Stop everything and close the sockets and the TURN allocation."""
        if self._closed:
            return
        self._closed = True
        self._tick.cancel()
        if self._session_timer is not None:
            self._session_timer.cancel()
        if self._punched is not None and not self._punched.done():
            self._punched.cancel()
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(StunError("the link is closed"))
        for base in list(self._sockets):
            self._drop_socket(base)
        self._direct = None
        if self._relay_task is not None:
            self._relay_task.cancel()
        if self.turn is not None:
            await self.turn.close()
        for closing in list(self._closing):
            await closing
        self.route = Route.NONE


class RelayPath:
    """A :class:`~stoq.udp.DatagramSender` through a TURN allocation to one UDP ``peer``: a
    STOQ connection from behind a firewall that blocks UDP (TURN over TCP or TLS) to any QUIC
    endpoint the relay may reach, e.g. a node's rendezvous node. The permission and channel
    for ``peer`` must exist; :meth:`start` begins delivering what the relay brings from
    ``peer`` to ``receiver``."""

    def __init__(self, turn: TurnClient, peer: Address) -> None:
        self.turn = turn
        self.peer = normalize_address(peer)
        self.receiver: Callable[[list[bytes], Address], None] | None = None
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._read())

    def send(self, datagrams: Sequence[tuple[bytes, Address]]) -> None:
        for data, _ in datagrams:
            try:
                self.turn.send_nowait(self.peer, data)
            except StunError as exc:
                self.dropped += 1
                log.debug("relay send failed: %s", exc)

    async def _read(self) -> None:
        while True:
            try:
                peer, data = await self.turn.receive()
            except StunError as exc:
                log.info("relay to %s lost: %s", self.peer, exc)
                return
            if peer == self.peer and self.receiver is not None:
                self.receiver([data], self.peer)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.turn.close()
