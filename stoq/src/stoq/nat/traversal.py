"""NAT traversal end to end: a STOQ connection to a peer known only by its peer id.

:class:`TraversalAgent` is a node's side of it. The node keeps a STOQ connection to a
rendezvous (bootstrap) node (:class:`stoq.nat.rendezvous.RendezvousClient`); the agent sends
and receives session descriptions (:mod:`stoq.nat.signalling`) through it. To reach a peer
(:meth:`TraversalAgent.connect`), or when a peer reaches it (:meth:`TraversalAgent.accept`):

1. **Gather** on one new UDP socket (the link's primary base): the host candidate (the local
   address routed towards the STUN server), the server-reflexive one (a Binding request on that
   same socket), the NAT's mapping behaviour (a second Binding request to the server's
   OTHER-ADDRESS, RFC 5780 §4.3: the same mapped address from a different server IP and port
   means endpoint-independent mapping), and a relayed candidate: a TURN allocation over UDP,
   or over TCP (``turn_tcp_server``) when the STUN server did not answer over UDP (a firewall
   that blocks UDP).
2. **Exchange** descriptions through the rendezvous node: the connecting side sends an offer
   and is the controlling agent and the QUIC client; the other answers. Each side installs a
   TURN permission and channel for the other's relayed address before it sends (the answerer)
   or uses (the offerer) the relay, so the first relayed datagram is not dropped.
3. **Connect at once over the relay, punch meanwhile** (relay first, then upgrade, as iroh and
   Tailscale do): the QUIC connection starts on the relay path while the ICE-style checks run on
   the UDP socket; when a pair is selected the link switches to it (:mod:`stoq.nat.peer_link`).
   With one endpoint-dependent NAT facing an endpoint-independent one, the hard side opens
   ``birthday_ports`` extra sockets and the easy side sprays the hard side's public IP
   (:class:`stoq.nat.punch.Birthday`). Without a relay the connection waits for the checks.
4. **Keep it**: keepalives hold the mappings; if the direct path dies (NAT rebinding, a new
   address) the link falls back to the relay and the controlling side restarts the checks with
   fresh candidates and credentials (an ICE restart, ``generation`` + 1); the controlled side
   asks for one with a ``restart`` description. A failed upgrade is retried after
   ``retry_direct`` seconds, doubling up to ``max_retry_direct``. The application's
   connection never changes.

The peer must prove the peer id it was asked for: the STOQ session authenticates it and the
connection is refused otherwise (:class:`~stoq.errors.PeerRejected`). The rendezvous node
stamps every signal with the sender's authenticated id, so an offer cannot claim another node.

``policy="relay"`` never punches (nothing but the relay learns the addresses of the two
sides; WebRTC's ``iceTransportPolicy: "relay"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from stoq.config import StoqConfig
from stoq.connection import StoqConnection
from stoq.endpoint import PeerServer, client_connection
from stoq.errors import ConnectError, ConnectionLost, PeerRejected, StoqError
from stoq.nat.discovery import NatBehaviour, discover
from stoq.nat.peer_link import VIRTUAL_PEER, PeerLink, RelayPath, Route
from stoq.nat.punch import (
    BIRTHDAY_PORTS,
    Birthday,
    BirthdayRole,
    Candidate,
    CandidateKind,
    Failed,
    PunchSession,
    birthday_roles,
)
from stoq.nat.rendezvous import RendezvousClient, RendezvousError
from stoq.nat.signalling import (
    Description,
    DescriptionKind,
    MappingBehaviour,
    SignallingError,
    decode_description,
    encode_description,
    new_credentials,
)
from stoq.nat.stun import StunError
from stoq.nat.stun_client import Address, normalize_address
from stoq.nat.turn_client import TurnClient, TurnError

__all__ = [
    "PeerConnection",
    "SocketFactory",
    "TraversalAgent",
    "TraversalFailed",
    "TraversalSettings",
    "connect_relayed",
]

log = logging.getLogger(__name__)

SocketFactory = Callable[[int, int], socket.socket]
#: Receive buffer of a link's primary socket.
RECEIVE_BUFFER = 1 << 20


class TraversalFailed(ConnectError):
    """No path to the peer: the message says what was tried."""


def _default_socket(family: int, kind: int) -> socket.socket:
    return socket.socket(family, kind)


@dataclass(frozen=True)
class TraversalSettings:
    """Where the servers are and how hard to try (module docstring).

    ``socket_factory(family, type)`` makes every socket the agent uses (e.g. inside a network
    namespace); ``host_ip`` overrides the host candidate's address.
    """

    stun_server: tuple[str, int]
    turn_server: tuple[str, int] | None = None
    turn_tcp_server: tuple[str, int] | None = None
    turn_username: str = ""
    turn_password: str = ""
    policy: str = "all"
    socket_factory: SocketFactory = _default_socket
    host_ip: str | None = None
    stun_timeout: float = 1.5
    punch_timeout: float = 5.0
    exchange_timeout: float = 10.0
    keepalive: float = 2.5
    path_timeout: float = 8.0
    retry_direct: float = 15.0
    max_retry_direct: float = 300.0
    birthday_ports: int = BIRTHDAY_PORTS
    max_links: int = 256
    max_links_per_peer: int = 4

    def __post_init__(self) -> None:
        if self.policy not in ("all", "relay"):
            raise ValueError('policy is "all" or "relay"')
        if self.policy == "relay" and self.turn_server is None and self.turn_tcp_server is None:
            raise ValueError('policy "relay" needs a TURN server')


@dataclass
class _Gathered:
    candidates: list[Candidate]
    mapping: MappingBehaviour
    udp: bool


@dataclass
class PeerConnection:
    """A connection to ``peer_id`` and the link it runs over."""

    peer_id: bytes
    connection: StoqConnection
    link: PeerLink
    controlling: bool
    started: float
    _agent: TraversalAgent = field(repr=False)
    _state: _LinkState = field(repr=False)

    @property
    def route(self) -> Route:
        return self.link.route

    @property
    def local_candidates(self) -> tuple[Candidate, ...]:
        return tuple(self._state.local.candidates) if self._state.local else ()

    @property
    def remote_candidates(self) -> tuple[Candidate, ...]:
        return tuple(self._state.remote.candidates) if self._state.remote else ()

    @property
    def link_id(self) -> bytes:
        return self._state.link_id

    @property
    def remote_mapping(self) -> MappingBehaviour:
        return self._state.remote.mapping if self._state.remote else MappingBehaviour.UNKNOWN

    async def wait_punched(self) -> None:
        """Until the first connectivity checks ended (selected or failed) or the link is
        direct; at once with the relay policy."""
        if self.link.route == Route.DIRECT or self._state.punched is None:
            return
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._state.punched)

    @property
    def mapping(self) -> MappingBehaviour:
        return self._state.local.mapping if self._state.local else MappingBehaviour.UNKNOWN

    def time_to_direct(self) -> float | None:
        """Seconds from the start until the link first went direct (None: not yet)."""
        for change in self.link.changes:
            if change.route == Route.DIRECT:
                return change.at - self.started
        return None

    async def close(self) -> None:
        await self._agent._close_link(self._state)
        await self.connection.close(0, "closed")
        await self.link.close()


@dataclass
class _LinkState:
    peer_id: bytes
    link_id: bytes
    controlling: bool
    link: PeerLink
    generation: int = 0
    local: Description | None = None
    remote: Description | None = None
    udp: bool = True
    inbox: asyncio.Queue[Description] = field(default_factory=asyncio.Queue)
    maintainer: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lost: str = ""
    restart_requested: bool = False
    punched: asyncio.Future[object] | None = None
    connection: StoqConnection | None = None


class TraversalAgent:
    """A node's NAT traversal over its rendezvous connection (module docstring)."""

    def __init__(
        self, config: StoqConfig, rendezvous: RendezvousClient, settings: TraversalSettings
    ) -> None:
        self.config = config
        self.rendezvous = rendezvous
        self.settings = settings
        self._loop = asyncio.get_running_loop()
        self._links: dict[tuple[bytes, bytes], _LinkState] = {}
        self._accepted: asyncio.Queue[PeerConnection | BaseException] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader = asyncio.ensure_future(self._read_signals())
        self._host_ip: str | None = settings.host_ip
        self._behaviour: NatBehaviour | None = None

    async def nat_behaviour(self, *, timeout: float = 1.0) -> NatBehaviour:
        """This node's NAT (RFC 5780 discovery against the STUN server, on a socket of its
        own; the first answer is kept). :class:`~stoq.nat.stun.StunError` if the server does
        not answer or does not do RFC 5780."""
        if self._behaviour is None:
            sock = self._socket(socket.AF_INET, socket.SOCK_DGRAM)
            with sock:
                sock.bind(("0.0.0.0", 0))  # noqa: S104 - as the links' sockets
                self._behaviour = await discover(
                    self.settings.stun_server, sock=sock, timeout=timeout, rto=0.1
                )
        return self._behaviour

    async def __aenter__(self) -> TraversalAgent:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._reader.cancel()
        for task in list(self._tasks):
            task.cancel()
        for state in list(self._links.values()):
            await self._close_link(state)
            if state.connection is not None:
                await state.connection.close(0, "node closing")
            await state.link.close()

    async def _close_link(self, state: _LinkState) -> None:
        self._links.pop((state.peer_id, state.link_id), None)
        if state.maintainer is not None:
            state.maintainer.cancel()

    # --- signals ---

    async def _read_signals(self) -> None:
        while True:
            try:
                signal = await self.rendezvous.receive()
            except (ConnectionLost, RendezvousError) as exc:
                log.warning("rendezvous connection ended: %s", exc)
                return
            try:
                description = decode_description(signal.payload)
            except SignallingError as exc:
                log.info("ignored a signal from %s: %s", signal.from_peer_id.hex()[:16], exc)
                continue
            key = (signal.from_peer_id, description.link)
            state = self._links.get(key)
            if state is not None:
                state.inbox.put_nowait(description)
                state.wake.set()
            elif description.kind == DescriptionKind.OFFER and description.generation == 0:
                refusal = self._refuse_offer(signal.from_peer_id)
                if refusal:
                    log.warning("ignored an offer from %s: %s", signal.from_peer_id.hex()[:16],
                                refusal)  # fmt: skip
                else:
                    # The link (its slot) exists before the next signal is read.
                    try:
                        state = self._new_link(
                            signal.from_peer_id, description.link, controlling=False
                        )
                    except OSError as exc:
                        log.warning("cannot open a socket for an offer: %s", exc)
                        continue
                    self._spawn(self._answer(state, description))
            else:
                log.info("ignored a %s for an unknown link", description.kind)

    def _refuse_offer(self, peer_id: bytes) -> str:
        """Why an offer must be ignored ("" if not): every offer costs sockets and a TURN
        allocation, so a peer (or all of them) may only hold so many links at once."""
        if len(self._links) >= self.settings.max_links:
            return f"{len(self._links)} links open, the most allowed"
        mine = sum(1 for peer, _ in self._links if peer == peer_id)
        if mine >= self.settings.max_links_per_peer:
            return f"that peer has {mine} links open, the most allowed"
        return ""

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, state: _LinkState, description: Description) -> None:
        await self.rendezvous.send(state.peer_id, encode_description(description))

    async def _expect(
        self, state: _LinkState, kind: DescriptionKind, generation: int
    ) -> Description:
        """The peer's ``kind`` description of ``generation``; others wait their turn."""
        deferred: list[Description] = []
        try:
            async with asyncio.timeout(self.settings.exchange_timeout):
                while True:
                    description = await state.inbox.get()
                    if description.kind == kind and description.generation == generation:
                        return description
                    deferred.append(description)
        finally:
            for description in deferred:
                state.inbox.put_nowait(description)

    # --- gathering ---

    def _socket(self, family: int, kind: int) -> socket.socket:
        sock = self.settings.socket_factory(family, kind)
        sock.setblocking(False)
        return sock

    def _local_ip(self) -> str:
        if self._host_ip is None:
            probe = self._socket(socket.AF_INET, socket.SOCK_DGRAM)
            with probe:
                probe.connect(self.settings.stun_server)  # no datagram is sent
                self._host_ip = str(probe.getsockname()[0])
        return self._host_ip

    def _new_link(self, peer_id: bytes, link_id: bytes, controlling: bool) -> _LinkState:
        sock = self._socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Room for a birthday burst or spray arriving at once (the kernel default drops them).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind(("0.0.0.0", 0))  # noqa: S104 - a peer-to-peer socket takes any interface
        base = (self._local_ip(), sock.getsockname()[1])
        holder: list[_LinkState] = []
        link = PeerLink(
            sock,
            base,
            virtual=VIRTUAL_PEER,
            keepalive=self.settings.keepalive,
            path_timeout=self.settings.path_timeout,
            on_path_lost=lambda reason: self._path_lost(holder[0], reason),
        )
        state = _LinkState(peer_id, link_id, controlling, link)
        holder.append(state)
        self._links[(peer_id, link_id)] = state
        return state

    async def _gather(self, link: PeerLink) -> _Gathered:
        base = link.primary
        candidates = [Candidate.make(CandidateKind.HOST, base)]
        mapping = MappingBehaviour.UNKNOWN
        udp = True
        if self.settings.policy == "relay":
            return _Gathered([], mapping, udp)
        try:
            first = await link.binding(
                self.settings.stun_server, timeout=self.settings.stun_timeout
            )
        except StunError as exc:
            log.info("no server-reflexive candidate: %s", exc)
            return _Gathered(candidates, mapping, udp=False)
        mapped = normalize_address(first.mapped)
        if mapped != base:
            candidates.append(
                Candidate.make(CandidateKind.SERVER_REFLEXIVE, mapped, base=base, server="stun")
            )
        if first.other_address is not None:
            try:
                second = await link.binding(first.other_address, timeout=self.settings.stun_timeout)
            except StunError as exc:
                log.info("mapping test II got no answer: %s", exc)
            else:
                same = normalize_address(second.mapped) == mapped
                mapping = MappingBehaviour.INDEPENDENT if same else MappingBehaviour.DEPENDENT
        return _Gathered(candidates, mapping, udp)

    async def _allocate(self, udp: bool) -> TurnClient | None:
        s = self.settings
        server, transport = (s.turn_server, "udp") if udp else (s.turn_tcp_server, "tcp")
        if server is None:
            return None
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        try:
            return await TurnClient.allocate(
                server,
                s.turn_username,
                s.turn_password,
                transport=transport,
                sock=self._socket(family, kind),
                rto=0.2,
                timeout=None if udp else 5.0,
            )
        except (StunError, TurnError) as exc:
            log.warning("no relayed candidate from %s: %s", server, exc)
            return None

    async def _describe(self, state: _LinkState, kind: DescriptionKind) -> Description:
        """Gather on the link's primary socket; a description with fresh credentials, keeping
        the relayed candidate of the last one."""
        gathered = await self._gather(state.link)
        state.udp = gathered.udp
        relayed: tuple[Candidate, ...] = ()
        if state.local is not None:
            relayed = tuple(c for c in state.local.candidates if c.kind == CandidateKind.RELAYED)
        ufrag, pwd = new_credentials()
        return Description(
            kind,
            state.link_id,
            state.generation,
            ufrag,
            pwd,
            gathered.mapping,
            (*gathered.candidates, *relayed),
        )

    async def _describe_with_relay(
        self, state: _LinkState, kind: DescriptionKind
    ) -> tuple[Description, TurnClient | None]:
        """The first description: gathering and a TURN allocation at once (over TCP instead
        when UDP got no answer from the STUN server)."""
        turn_task = asyncio.ensure_future(self._allocate(True))
        try:
            description = await self._describe(state, kind)
            if not state.udp:
                turn_task.cancel()
                turn_task = asyncio.ensure_future(self._allocate(False))
            turn = await turn_task
        except BaseException:
            turn_task.cancel()
            raise
        if turn is not None:
            description = _with_relay(description, turn)
        return description, turn

    # --- relay and punching ---

    @staticmethod
    def _relayed(description: Description) -> Address | None:
        for candidate in description.candidates:
            if candidate.kind == CandidateKind.RELAYED:
                return normalize_address(candidate.address)
        return None

    async def _prepare_relay(self, state: _LinkState, turn: TurnClient | None) -> None:
        assert state.remote is not None
        remote = self._relayed(state.remote)
        if turn is None or remote is None:
            if turn is not None:
                await turn.close()
            return
        await turn.create_permission(remote[0])
        await turn.channel_bind(remote)
        state.link.set_relay(turn, remote)

    def _start_punch(self, state: _LinkState) -> asyncio.Future[object] | None:
        local, remote = state.local, state.remote
        assert local is not None
        assert remote is not None
        if self.settings.policy == "relay":
            return None
        remotes = [c for c in remote.candidates if c.kind != CandidateKind.RELAYED]
        bases = [c for c in local.candidates if c.kind != CandidateKind.RELAYED]
        if not remotes or not bases:
            return None
        role = birthday_roles(
            local.mapping == MappingBehaviour.INDEPENDENT,
            remote.mapping == MappingBehaviour.INDEPENDENT,
        )
        if MappingBehaviour.UNKNOWN in (local.mapping, remote.mapping):
            role = None
        birthday: Birthday | None = None
        extra: list[Candidate] = []
        if role == BirthdayRole.OPEN_PORTS:
            sockets = {}
            for _ in range(self.settings.birthday_ports):
                sock = self._socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind(("0.0.0.0", 0))  # noqa: S104 - any interface, as the primary
                address = (self._local_ip(), sock.getsockname()[1])
                sockets[address] = sock
                extra.append(Candidate.make(CandidateKind.HOST, address))
            state.link.add_sockets(sockets)
            birthday = Birthday(BirthdayRole.OPEN_PORTS)
        elif role == BirthdayRole.SPRAY:
            srflx = [c for c in remote.candidates if c.kind == CandidateKind.SERVER_REFLEXIVE]
            if srflx:
                birthday = Birthday(BirthdayRole.SPRAY, remote_ip=srflx[0].address[0])
        session = PunchSession(
            bases + extra,
            remotes,
            controlling=state.controlling,
            local_ufrag=local.ufrag,
            local_pwd=local.pwd,
            remote_ufrag=remote.ufrag,
            remote_pwd=remote.pwd,
            now=self._loop.time(),
            timeout=self.settings.punch_timeout,
            birthday=birthday,
        )
        return state.link.punch(session)  # type: ignore[return-value]

    # --- connecting ---

    async def connect(self, peer_id: bytes, *, timeout: float = 30.0) -> PeerConnection:
        """A connection to ``peer_id`` through its rendezvous registration (module docstring).

        Raises :class:`TraversalFailed` (no path), :class:`PeerRejected` (the peer did not
        prove ``peer_id``), :class:`~stoq.nat.rendezvous.RendezvousError` (the rendezvous node
        refused, e.g. the peer is not registered) or :class:`TimeoutError`.
        """
        started = self._loop.time()
        state = self._new_link(peer_id, secrets.token_bytes(16), controlling=True)
        try:
            async with asyncio.timeout(timeout):
                return await self._connect(state, started)
        except BaseException:
            await self._close_link(state)
            await state.link.close()
            raise

    async def _connect(self, state: _LinkState, started: float) -> PeerConnection:
        state.local, turn = await self._describe_with_relay(state, DescriptionKind.OFFER)
        try:
            await self._send(state, state.local)
            state.remote = await self._expect(state, DescriptionKind.ANSWER, 0)
        except BaseException:
            if turn is not None:
                await turn.close()
            raise
        await self._prepare_relay(state, turn)
        punched = self._start_punch(state)
        if state.link.route == Route.NONE:
            if punched is None:
                raise TraversalFailed("no relay on either side and nothing to punch")
            result = await punched
            if isinstance(result, Failed):
                raise TraversalFailed(f"no relay on either side, and punching failed: {result}")
        connection = client_connection(self.config, state.link, state.link.virtual)
        state.link.receiver = connection.datagrams_received
        connection.start()
        try:
            await connection.wait_established()
        except BaseException:
            await connection.close(0, "connection attempt abandoned")
            raise
        return self._established(state, connection, started, punched)

    async def _answer(self, state: _LinkState, offer: Description) -> None:
        started = self._loop.time()
        peer_id = state.peer_id
        state.remote = offer
        try:
            async with asyncio.timeout(self.settings.exchange_timeout * 3):
                state.local, turn = await self._describe_with_relay(state, DescriptionKind.ANSWER)
                await self._prepare_relay(state, turn)
                server = PeerServer(self.config, state.link)
                state.link.receiver = server.datagrams_received
                await self._send(state, state.local)
                punched = self._start_punch(state)
                connection = await server.accept()
                self._accepted.put_nowait(self._established(state, connection, started, punched))
        except (StoqError, TimeoutError, OSError) as exc:  # one peer's failure must not stop us
            log.warning("answering %s failed: %s", peer_id.hex()[:16], exc)
            await self._close_link(state)
            await state.link.close()

    def _established(
        self,
        state: _LinkState,
        connection: StoqConnection,
        started: float,
        punched: asyncio.Future[object] | None,
    ) -> PeerConnection:
        if connection.peer.peer_id != state.peer_id:
            self._spawn(connection.close(0x0A, "not the peer asked for"))
            raise PeerRejected("the peer proved another identity than the one signalled")
        state.punched = punched
        state.connection = connection
        state.maintainer = asyncio.ensure_future(self._maintain(state, punched))
        return PeerConnection(
            state.peer_id, connection, state.link, state.controlling, started, self, state
        )

    async def accept(self) -> PeerConnection:
        """The next peer that connected to this node through the rendezvous node."""
        item = await self._accepted.get()
        if isinstance(item, BaseException):
            raise item
        return item

    # --- keeping the link ---

    def _path_lost(self, state: _LinkState, reason: str) -> None:
        state.lost = reason
        state.wake.set()

    async def _maintain(self, state: _LinkState, punched: asyncio.Future[object] | None) -> None:
        """ICE restarts for as long as the link lives: the controlling side restarts when the
        direct path is lost, when the peer asks, and (backing off) while it has none; the
        controlled side answers restarts and asks for one when it loses the path."""
        if self.settings.policy == "relay":
            return
        backoff = self.settings.retry_direct
        if punched is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await punched
        while True:
            wait = None if state.link.route == Route.DIRECT else backoff
            if not (state.lost or state.restart_requested or not state.inbox.empty()):
                state.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await state.wake.wait()
            try:
                await self._handle_inbox(state)
                if not state.controlling:
                    if state.lost:
                        state.lost = ""
                        await self._send(state, self._restart_request(state))
                    continue
                if state.link.route == Route.DIRECT and not state.restart_requested:
                    continue
                state.lost = ""
                state.restart_requested = False
                result = await self._restart(state)
            except (StoqError, TimeoutError) as exc:
                log.info("restart of the link to %s failed: %s", state.peer_id.hex()[:16], exc)
                result = Failed(str(exc))
            if isinstance(result, Failed):
                backoff = min(backoff * 2, self.settings.max_retry_direct)
            else:
                backoff = self.settings.retry_direct

    def _restart_request(self, state: _LinkState) -> Description:
        assert state.local is not None
        return Description(
            DescriptionKind.RESTART,
            state.link_id,
            state.generation,
            state.local.ufrag,
            state.local.pwd,
            state.local.mapping,
            (),
        )

    async def _handle_inbox(self, state: _LinkState) -> None:
        """Answer a newer offer (controlled side); note a restart request (controlling)."""
        while not state.inbox.empty():
            description = state.inbox.get_nowait()
            if description.kind == DescriptionKind.RESTART and state.controlling:
                # A request about an older generation was overtaken by a restart already.
                if description.generation >= state.generation:
                    state.restart_requested = True
            elif (
                description.kind == DescriptionKind.OFFER
                and not state.controlling
                and description.generation > state.generation
            ):
                state.generation = description.generation
                state.remote = description
                state.local, turn = await self._redescribe(state, DescriptionKind.ANSWER)
                await self._refresh_relay(state, turn)
                await self._send(state, state.local)
                self._start_punch(state)

    async def _redescribe(
        self, state: _LinkState, kind: DescriptionKind
    ) -> tuple[Description, TurnClient | None]:
        """A restart's description. If the link's relay does not answer a Refresh (a NAT
        rebinding ends a UDP TURN allocation with its 5-tuple: 437 or silence), a new allocation
        replaces it (returned, not yet used)."""
        turn = state.link.turn
        if turn is not None and state.link.relay_alive:
            try:
                async with asyncio.timeout(self.settings.stun_timeout):
                    await turn.refresh()  # one round trip proves the allocation is still ours
            except (StunError, TimeoutError) as exc:
                log.info("the relay is gone (%s); allocating anew", exc)
            else:
                return await self._describe(state, kind), None
        description = await self._describe(state, kind)
        turn = await self._allocate(state.udp)
        if turn is None:
            return description, None
        kept = tuple(c for c in description.candidates if c.kind != CandidateKind.RELAYED)
        description = Description(
            description.kind,
            description.link,
            description.generation,
            description.ufrag,
            description.pwd,
            description.mapping,
            kept,
        )
        return _with_relay(description, turn), turn

    async def _refresh_relay(self, state: _LinkState, turn: TurnClient | None) -> None:
        """Point the relay at the peer's (possibly new) relayed address, on ``turn`` if a new
        allocation was made, else on the link's own."""
        assert state.remote is not None
        remote = self._relayed(state.remote)
        current = turn or state.link.turn
        if current is None or remote is None:
            if turn is not None:
                await turn.close()
            return
        if turn is None and remote == state.link.remote_relayed and state.link.relay_alive:
            return
        try:
            await current.create_permission(remote[0])
            await current.channel_bind(remote)
        except StunError as exc:
            log.info("cannot relay to the peer's new relayed address: %s", exc)
            if turn is not None:
                await turn.close()
            return
        state.link.set_relay(current, remote)

    async def _restart(self, state: _LinkState) -> object:
        """An ICE restart from the controlling side; the punching result."""
        state.generation += 1
        state.local, turn = await self._redescribe(state, DescriptionKind.OFFER)
        await self._send(state, state.local)
        try:
            state.remote = await self._expect(state, DescriptionKind.ANSWER, state.generation)
        except BaseException:
            if turn is not None:
                await turn.close()
            raise
        await self._refresh_relay(state, turn)
        punched = self._start_punch(state)
        if punched is None:
            return Failed("nothing to punch")
        return await punched


def _with_relay(description: Description, turn: TurnClient) -> Description:
    relayed = Candidate.make(CandidateKind.RELAYED, turn.relayed_address, server="turn")
    return Description(
        description.kind,
        description.link,
        description.generation,
        description.ufrag,
        description.pwd,
        description.mapping,
        (*description.candidates, relayed),
    )


async def connect_relayed(
    config: StoqConfig,
    turn: TurnClient,
    remote: tuple[str, int],
    *,
    server_name: str | None = None,
) -> StoqConnection:
    """A STOQ connection to ``remote`` through the TURN allocation ``turn`` (e.g. over TCP
    from behind a firewall that blocks UDP): the way such a node reaches its rendezvous node.
    The allocation is closed with the connection."""
    address = normalize_address(remote)
    await turn.create_permission(address[0])
    await turn.channel_bind(address)
    path = RelayPath(turn, address)
    closing: set[asyncio.Task[None]] = set()

    def closed(_: StoqConnection) -> None:
        task = asyncio.ensure_future(path.close())
        closing.add(task)
        task.add_done_callback(closing.discard)

    connection = client_connection(config, path, address, server_name=server_name, on_closed=closed)
    path.receiver = connection.datagrams_received
    path.start()
    connection.start()
    try:
        async with asyncio.timeout(config.connect_timeout):
            await connection.wait_established()
    except BaseException:
        await connection.close(0, "connection attempt abandoned")
        await path.close()
        raise
    return connection
