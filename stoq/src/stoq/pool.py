"""A pool of STOQ connections: one authenticated connection per peer, shared by every caller.

Keys. A connection is pooled under the peer the caller expects (a :class:`PoolKey`):

* ``PoolKey("peer", peer_id)`` when :meth:`ConnectionPool.get` is given ``peer_id`` (the
  leaf key id, :attr:`stoq.identity.PeerIdentity.peer_id`); the authenticated peer must have
  that key, else :class:`~stoq.errors.PeerRejected` and nothing is pooled;
* ``PoolKey("name", server_name)`` (lower case, without a trailing dot) when a server name is
  given, or when the host is a DNS name (which :func:`stoq.endpoint.connect` then checks the
  certificate against);
* ``PoolKey("address", "addr1,addr2,...:port")`` when only IP addresses are given: the peer
  is then whatever node the trust policy accepts at those addresses.

Once connected, the connection is also indexed under ``PoolKey("peer", conn.peer.peer_id)``
of the *authenticated* peer, so a later request by key id finds it. If a dial under one key
authenticates a peer that already has a live pooled connection under another, the new
connection is closed and the key becomes an alias of the existing one: one connection per
peer identity. The port is not part of a name or peer key: a peer is a node, not a socket.

Concurrency. Concurrent requests for one key share one dial (single flight): the first caller
starts it, the others wait on the same future; if it fails every waiter gets that error and
nothing is remembered, so the next request dials again. A waiter that is cancelled does not
cancel the dial. Everything that reads and changes the pool's tables runs without an ``await``
in between, so the tables never see a half-done change. Streams: any number of callers
share the one connection; :meth:`StoqConnection.open_stream
<stoq.connection.StoqConnection.open_stream>` waits while the connection's own limit of open
streams (:data:`stoq.connection.MAX_OPEN_STREAMS`) is reached, and the pool does not open a
second connection to a peer for more streams.

Eviction. A pooled connection is removed (and closed) when it is found closed on access (the
request then redials), when the health check finds it closed or its PING fails, when nothing
was handed out on it (:meth:`~ConnectionPool.get` / :meth:`~ConnectionPool.open_stream`) for
``idle_after`` seconds, or to make room: with ``max_connections`` connections pooled or being
dialled, a new peer takes the place of the least recently used *idle* connection (idle as
above: :func:`is_idle`), and :class:`PoolExhausted` is raised when none is idle. The pool
cannot see streams a caller opens on a connection it got from :meth:`~ConnectionPool.get`;
handing the connection out is what counts as use. The idle decisions are the pure functions
:func:`is_idle` and :func:`least_recently_used_idle` of ``(last_used, now)``; the health task
(every ``health_interval`` seconds, started on first use or by ``async with``) only applies
them with its clock.

0-RTT and session tickets: not done, and why. The issue asks for 0-RTT resumption for
idempotent requests. Both engines can do TLS resumption: aioquic and qh3 take a
``session_ticket_handler`` (receives tickets) and, on a server, a ``session_ticket_fetcher``
(looks them up) as ``QuicConnection`` arguments, and a client resumes with
``QuicConfiguration.session_ticket``; their servers issue tickets allowing early data
(``max_early_data_size`` 0xFFFFFFFF) and a client offers early data whenever the ticket does.
In STOQ nothing the application sends can ride in 0-RTT without defeating the design:

* Application data is sealed with the post-quantum channel of :mod:`stoq.session`, which exists
  only after the TLS handshake *and* the two round trips of the PQ handshake. 0-RTT data
  would be protected only by keys derived from the previous classical TLS session (X25519
  with aioquic), sent before this connection's peer is authenticated post-quantum, and
  replayable by anyone who recorded it: exactly what STOQ's session exists to avoid.
* The PQ handshake itself cannot start in 0-RTT either: its channel binding
  (:func:`stoq.session.tls_binding`) is computed from the 1-RTT application traffic secrets,
  which the client knows only after the server's Finished.

So the pool sends no early data, ever; its latency saving for repeated requests comes from
reusing the established connection, which skips every handshake. Ticket resumption *without*
early data would still save the server's certificate and CertificateVerify in TLS (bytes and
one signature per reconnect, not a round trip); it needs the engine and endpoint to pass the
ticket callbacks and to strip ``max_early_data_size`` from a ticket before offering it, which
lies outside this module.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from stoq.config import StoqConfig
from stoq.connection import StoqConnection, Stream
from stoq.endpoint import connect as stoq_connect
from stoq.errors import PeerRejected, StoqError
from stoq.session import ERROR_NONE, ERROR_PEER_REJECTED

__all__ = [
    "ConnectionPool",
    "Connector",
    "PoolClosed",
    "PoolExhausted",
    "PoolKey",
    "PoolStats",
    "is_idle",
    "least_recently_used_idle",
    "pool_key",
]

log = logging.getLogger(__name__)

K = TypeVar("K")


@dataclass(frozen=True)
class PoolKey:
    """What a connection is pooled under: ``kind`` ``"peer"`` with the peer's key id as
    ``value``, ``"name"`` with a normalized DNS name, or ``"address"`` with
    ``"addr1,addr2,...:port"`` (addresses sorted)."""

    kind: Literal["peer", "name", "address"]
    value: bytes | str


class PoolExhausted(StoqError):
    """``max_connections`` connections are pooled or being dialled and none of them is idle."""


class PoolClosed(StoqError):
    """The pool was closed; it hands out nothing more."""


class Connector(Protocol):
    """How the pool dials: :func:`stoq.endpoint.connect`'s signature."""

    def __call__(
        self,
        config: StoqConfig,
        host: str | Sequence[str],
        port: int,
        *,
        server_name: str | None = None,
    ) -> Coroutine[Any, Any, StoqConnection]: ...


@dataclass(frozen=True)
class PoolStats:
    """Counters of a pool.

    * ``connections``: distinct connections pooled now;
    * ``dials``: connection attempts started (one per single-flight dial, whatever its outcome);
    * ``reuses``: requests answered without starting a dial (a pooled connection, or joining a
      dial in flight);
    * ``evictions``: pooled connections removed because they were closed, failed a health
      check, were idle too long, or made room for another peer (not counting :meth:`close`).
    """

    connections: int
    dials: int
    reuses: int
    evictions: int


# --- the sans-IO decisions ------------------------------------------------------------------


def is_idle(last_used: float, now: float, idle_after: float) -> bool:
    """Whether a connection last handed out at ``last_used`` is idle at ``now``: nothing was
    handed out on it for at least ``idle_after`` seconds (same clock for both times)."""
    return now - last_used >= idle_after


def least_recently_used_idle(
    last_used: Mapping[K, float], now: float, idle_after: float
) -> K | None:
    """Of the connections ``last_used`` maps to their last-use times, the idle one used
    longest ago (the one to evict to make room), or ``None`` if none is idle."""
    idle = [(used, item) for item, used in last_used.items() if is_idle(used, now, idle_after)]
    if not idle:
        return None
    return min(idle, key=lambda pair: pair[0])[1]


def _normalize_name(name: str) -> str:
    return name.lower().rstrip(".")


def _is_address(host: str) -> bool:
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in literal else socket.AF_INET, literal)
    except OSError:
        return False
    return True


def pool_key(
    host: str | Sequence[str],
    port: int,
    *,
    server_name: str | None = None,
    peer_id: bytes | None = None,
) -> PoolKey:
    """The key a request is pooled under (see the module docstring)."""
    if peer_id is not None:
        return PoolKey("peer", bytes(peer_id))
    if server_name is not None:
        return PoolKey("name", _normalize_name(server_name))
    if isinstance(host, str):
        if not _is_address(host):
            return PoolKey("name", _normalize_name(host))
        hosts: Sequence[str] = (host,)
    else:
        hosts = host
    return PoolKey("address", ",".join(sorted(hosts)) + f":{port}")


def _peer_key(peer_id: bytes) -> PoolKey:
    return PoolKey("peer", peer_id)


# --- the pool -------------------------------------------------------------------------------


class _Entry:
    """One pooled connection, the keys it is pooled under and when it was last handed out."""

    __slots__ = ("connection", "keys", "last_used")

    def __init__(self, connection: StoqConnection, last_used: float) -> None:
        self.connection = connection
        self.keys: set[PoolKey] = set()
        self.last_used = last_used


class ConnectionPool:
    """Shares one STOQ connection per peer among all callers. See the module docstring.

    ``clock`` gives the seconds the idle logic compares (monotonic by default; tests pass their
    own). ``connect`` dials (:func:`stoq.endpoint.connect` by default).
    """

    def __init__(
        self,
        config: StoqConfig,
        *,
        idle_after: float = 60.0,
        health_interval: float = 15.0,
        max_connections: int = 256,
        connect: Connector = stoq_connect,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if idle_after <= 0:
            raise ValueError("idle_after must be positive")
        if health_interval <= 0:
            raise ValueError("health_interval must be positive")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.config = config
        self.idle_after = idle_after
        self.health_interval = health_interval
        self.max_connections = max_connections
        self._connect = connect
        self._clock = clock
        self._entries: dict[PoolKey, _Entry] = {}
        self._inflight: dict[PoolKey, asyncio.Task[_Entry]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._health: asyncio.Task[None] | None = None
        self._closed = False
        self._dials = 0
        self._reuses = 0
        self._evictions = 0

    # -- public ------------------------------------------------------------------------------

    @property
    def stats(self) -> PoolStats:
        return PoolStats(
            connections=len(self._live_entries()),
            dials=self._dials,
            reuses=self._reuses,
            evictions=self._evictions,
        )

    @property
    def connections(self) -> tuple[StoqConnection, ...]:
        """The pooled connections (each once)."""
        return tuple(entry.connection for entry in self._live_entries())

    async def get(
        self,
        host_or_addresses: str | Sequence[str],
        port: int,
        *,
        server_name: str | None = None,
        peer_id: bytes | None = None,
    ) -> StoqConnection:
        """The pooled connection to the expected peer, dialling it if there is none.

        ``host_or_addresses``, ``port`` and ``server_name`` are what
        :func:`stoq.endpoint.connect` takes, used when a dial is needed. Raises what the dial
        raised (:class:`~stoq.errors.ConnectError`, :class:`~stoq.errors.PeerRejected`...),
        :class:`~stoq.errors.PeerRejected` if ``peer_id`` is given and the authenticated peer
        has another key, :class:`PoolExhausted` when the pool is full of busy connections,
        :class:`PoolClosed` after :meth:`close`.
        """
        entry = await self._acquire(host_or_addresses, port, server_name, peer_id)
        return entry.connection

    async def open_stream(
        self,
        host_or_addresses: str | Sequence[str],
        port: int,
        *,
        server_name: str | None = None,
        peer_id: bytes | None = None,
        unidirectional: bool = False,
    ) -> Stream:
        """A new stream on the pooled connection to the peer (see :meth:`get`). If the
        connection turns out closed when the stream is opened, it is evicted and the peer is
        dialled once more."""
        entry = await self._acquire(host_or_addresses, port, server_name, peer_id)
        try:
            return await entry.connection.open_stream(unidirectional=unidirectional)
        except StoqError:
            if not entry.connection.closed:
                raise
            self._evict(entry)
        entry = await self._acquire(host_or_addresses, port, server_name, peer_id)
        return await entry.connection.open_stream(unidirectional=unidirectional)

    async def check_health(self) -> int:
        """One health pass at the pool's clock: evict connections that are closed, idle (see
        :func:`is_idle`) or whose PING fails; PING the rest. Returns how many were evicted."""
        now = self._clock()
        evicted = 0
        for entry in self._live_entries():
            connection = entry.connection
            if connection.closed:
                self._evict(entry)
            elif is_idle(entry.last_used, now, self.idle_after):
                self._evict(entry, "idle")
            else:
                try:
                    await connection.ping()
                except (StoqError, OSError) as exc:
                    log.info("evicting the connection to %s: ping failed: %s", _name(entry), exc)
                    self._evict(entry, "ping failed")
                else:
                    continue
            evicted += 1
        return evicted

    def start(self) -> None:
        """Start the background health task (done by the first request and ``async with``)."""
        if self._closed:
            raise PoolClosed("the connection pool is closed")
        if self._health is None:
            self._health = asyncio.get_running_loop().create_task(
                self._health_loop(), name="stoq-pool-health"
            )
            self._health.add_done_callback(_report_health_end)

    async def close(self) -> None:
        """Stop the health task, abandon the dials in flight (their waiters get
        :class:`PoolClosed`), and close every pooled connection."""
        self._closed = True
        cancelled: list[asyncio.Task[Any]] = [*self._inflight.values()]
        if self._health is not None:
            cancelled.append(self._health)
        for task in cancelled:
            task.cancel()
        pending = [*cancelled, *self._closing]
        if pending:  # each dial's outcome went to its waiters; here they only need to end
            await asyncio.wait(pending)
        entries = self._live_entries()
        self._entries.clear()
        for entry in entries:
            await entry.connection.close(ERROR_NONE, "connection pool closing")

    async def __aenter__(self) -> ConnectionPool:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- internals ---------------------------------------------------------------------------

    def _live_entries(self) -> list[_Entry]:
        return list(dict.fromkeys(self._entries.values()))  # each entry once, in order

    def _lookup(self, key: PoolKey) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.connection.closed:
            self._evict(entry)
            return None
        return entry

    async def _acquire(
        self,
        host: str | Sequence[str],
        port: int,
        server_name: str | None,
        peer_id: bytes | None,
    ) -> _Entry:
        if self._closed:
            raise PoolClosed("the connection pool is closed")
        self.start()
        key = pool_key(host, port, server_name=server_name, peer_id=peer_id)
        entry = self._lookup(key)
        if entry is None:
            dial = self._inflight.get(key)
            if dial is not None:
                self._reuses += 1
            else:
                dial = self._start_dial(key, host, port, server_name, peer_id)
            try:
                entry = await asyncio.shield(dial)
            except asyncio.CancelledError:
                # Only close() cancels a dial (the waiters are shielded from each other).
                current = asyncio.current_task()
                if dial.cancelled() and not (current and current.cancelling()):
                    raise PoolClosed("the connection pool was closed while dialling") from None
                raise
        else:
            self._reuses += 1
        entry.last_used = self._clock()
        return entry

    def _start_dial(
        self,
        key: PoolKey,
        host: str | Sequence[str],
        port: int,
        server_name: str | None,
        peer_id: bytes | None,
    ) -> asyncio.Task[_Entry]:
        victim = self._make_room()
        task = asyncio.get_running_loop().create_task(
            self._dial(key, victim, host, port, server_name, peer_id), name="stoq-pool-dial"
        )
        # Every waiter re-raises a failed dial's error; retrieving it here as well keeps asyncio
        # from logging it as never retrieved when all the waiters were cancelled.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._inflight[key] = task
        self._dials += 1
        return task

    def _make_room(self) -> _Entry | None:
        """If the pool is full, take the least recently used idle connection out of it and
        return it (the caller closes it). :class:`PoolExhausted` if none is idle."""
        for entry in self._live_entries():
            if entry.connection.closed:
                self._evict(entry)
        entries = self._live_entries()
        if len(entries) + len(self._inflight) < self.max_connections:
            return None
        victim = least_recently_used_idle(
            {entry: entry.last_used for entry in entries}, self._clock(), self.idle_after
        )
        if victim is None:
            raise PoolExhausted(
                f"{len(entries)} pooled connections and {len(self._inflight)} dials in flight "
                f"reach max_connections={self.max_connections}, and none is idle"
            )
        self._forget(victim)
        self._evictions += 1
        return victim

    async def _dial(
        self,
        key: PoolKey,
        victim: _Entry | None,
        host: str | Sequence[str],
        port: int,
        server_name: str | None,
        peer_id: bytes | None,
    ) -> _Entry:
        try:
            if victim is not None:
                await victim.connection.close(ERROR_NONE, "evicted from the connection pool")
            connection = await self._connect(self.config, host, port, server_name=server_name)
            authenticated = connection.peer.peer_id
            if peer_id is not None and authenticated != peer_id:
                await connection.close(ERROR_PEER_REJECTED, "not the expected peer")
                raise PeerRejected(
                    f"expected the peer {peer_id.hex()}, but {connection.peer.name} "
                    f"authenticated as {authenticated.hex()}"
                )
            # From here to the return there is no await: the tables change in one step.
            existing = self._lookup(_peer_key(authenticated))
            if existing is not None:
                # The peer is already pooled under another key: keep its one connection.
                self._close_later(connection, "duplicate connection to a pooled peer")
                entry = existing
            else:
                entry = _Entry(connection, self._clock())
                entry.keys.add(_peer_key(authenticated))
                self._entries[_peer_key(authenticated)] = entry
            entry.keys.add(key)
            self._entries[key] = entry
            return entry
        finally:
            if self._inflight.get(key) is asyncio.current_task():
                del self._inflight[key]

    def _forget(self, entry: _Entry) -> None:
        for key in entry.keys:
            if self._entries.get(key) is entry:
                del self._entries[key]
        entry.keys.clear()

    def _evict(self, entry: _Entry, reason: str = "closed") -> None:
        """Take ``entry`` out of the pool and close its connection if it is still open."""
        if not entry.keys:
            return
        self._forget(entry)
        self._evictions += 1
        if not entry.connection.closed:
            self._close_later(entry.connection, f"evicted from the connection pool ({reason})")

    def _close_later(self, connection: StoqConnection, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(
            connection.close(ERROR_NONE, reason), name="stoq-pool-close"
        )
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            evicted = await self.check_health()
            if evicted:
                log.debug("the health check evicted %d connections", evicted)


def _name(entry: _Entry) -> str:
    try:
        return entry.connection.peer.name
    except StoqError:
        return str(entry.connection.remote_address)


def _report_health_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the connection pool's health task failed", exc_info=task.exception())
