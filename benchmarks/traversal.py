"""NAT traversal latency on loopback: how long a STOQ connection to a peer known only by its peer
id takes to carry its first byte (relay first, without a relay, relay only) beside a STOQ
connection by address, and how long ICE connectivity checks take with our punching beside
aioice, all in one process on 127.0.0.1.

    python benchmarks/traversal.py [--runs N] [--quick] [--update BENCHMARKS.md]

The world, built once in this process (as ``stoq/tests/test_traversal.py`` does): a throwaway
TrustChain PKI (a key store under ``INSECURE_TEST_KDF_PARAMS`` in a temporary directory,
deleted at the end; a root, one intermediate for ``bench.hypermesh``, node certificates with
``ip_addresses=["127.0.0.1"]``), our RFC 5780 STUN server (:class:`~stoq.nat.stun_server.
StunServer` on 127.0.0.1 with alternate 127.0.0.2), our TURN server
(:class:`~stoq.nat.turn_server.TurnServer` on 127.0.0.1, one long-term-credential user,
``allow_loopback_peers``), and a STOQ :class:`~stoq.endpoint.Endpoint` running the
:class:`~stoq.nat.rendezvous.RendezvousServer`. Loopback has no NAT: the checks succeed on host
candidates, so these are floors set by our code and the protocols' round trips, not by a
network.

Each row is ``--runs`` sequential runs (default 30; ``--quick``: 5; ``--runs`` wins over
``--quick``) after 3 untimed warm-ups; p50 and p90 are nearest rank over the runs that
succeeded. Every time is ``loop.time()`` (the monotonic clock) from the start of the run. CPU
per run is ``time.process_time()`` of the whole process (both sides, the STUN, TURN and
rendezvous servers: everything is in it) from the start of the run to the row's last timed
event (the first byte, or the link going direct when that came later; rows 5 and 6: the
datagram); *busy* is that CPU time over the same wall time (1.0: the one asyncio thread never
waited).

1. **By address** (the baseline): :func:`stoq.endpoint.connect` to a listening
   ``Endpoint`` (a second one, not the rendezvous node), ``open_stream``, ``send`` of one
   11-byte message with ``end_stream``; *first byte* = until the server's ``receive()`` of it
   returned. Closed after.
2. **By peer id, relay first**: two nodes, each with its own STOQ connection to the rendezvous
   node and a :class:`~stoq.nat.traversal.TraversalAgent` with default
   :class:`~stoq.nat.traversal.TraversalSettings` (STUN and TURN servers above). The dialler
   calls ``TraversalAgent.connect(peer_id)`` while the other side waits in ``accept()``; then
   the message as in 1. *First byte*: from the ``connect()`` call until the accepting side's
   ``receive()`` returned the message. *Path ready*: the dialler's first route change
   (``link.changes[0]``: here the relay, after gathering, the offer and answer through the
   rendezvous node, and the TURN permission and channel) after the connect started. *Time to
   direct*: ``PeerConnection.time_to_direct()`` of the dialler, read after
   ``wait_punched()``. *First byte went*: the route(s) whose counter in the dialler's
   ``link.sent`` grew between its ``send()`` and the receiver getting the message, and how
   many QUIC datagrams the dialler had sent over the relay by then.
3. **By peer id without TURN** (``turn_server=None`` on both sides): the connection waits for
   the checks; path ready is the direct path.
4. **By peer id, relay only** (``policy="relay"`` on both sides): nothing is punched.
5. **aioice** (``aioice.Connection``, ``ice_controlling`` True and False, ``stun_server`` our
   STUN server, ``use_ipv6=False``): ``gather_candidates`` on both at once, each side's local
   candidates, end-of-candidates, ufrag and password handed to the other in memory,
   ``connect()`` on both at once, then ``send`` of one datagram and the other's ``recv``.
   *Connected*: from the start of gathering until both ``connect()`` returned; *first
   datagram*: until ``recv`` returned it. aioice gathers host candidates on every interface
   except 127.0.0.1; to keep it on loopback like everything else, ``aioice.ice.
   get_host_addresses`` is replaced for the row by a function answering ``["127.0.0.1"]``
   (checked: every candidate it gathers must be on 127.0.0.1).
6. **Ours, same scope as 5**: two UDP sockets on 127.0.0.1; each gathers its host candidate
   and a server-reflexive one from :func:`stoq.nat.stun_client.binding` (both at once; a mapped
   address equal to the host one is redundant and dropped, RFC 8445 §5.1.3, as
   :mod:`stoq.nat.traversal` does), a :class:`~stoq.nat.punch.PunchSession` per side (default
   pacing) with the other's candidates and credentials, :func:`stoq.nat.punch.punch` on both
   at once (the side that selects first keeps answering checks, through
   :func:`stoq.nat.punch.receive`, until the other has selected too), then one datagram from
   the controlling side's socket to its selected pair, received by ``punch.receive`` on the
   other. Same two times.

A run that raises a STOQ error or an ``OSError`` (aioice's ``ConnectionError`` too) or takes
more than 20 s counts as failed, and its row's setup (the two nodes, or the endpoint) is made
anew so nothing of it lingers into the next run; after 3 failures a row stops. Failures are
listed in the section and the script exits 1. Everything is closed before the script exits.

``--update FILE`` replaces the text between ``<!-- traversal:begin -->`` and
``<!-- traversal:end -->`` in FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import math
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from benchlib import MS, machine, ms, update_section

# This directory holds stoq.py and dns.py (benchmarks): first on sys.path, they would shadow the
# stoq package and dnspython's dns (which aioice imports). Drop it (benchlib is imported).
_HERE = os.path.realpath(os.path.dirname(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.realpath(entry or ".") != _HERE]

import aioice  # noqa: E402
import aioice.ice  # noqa: E402

from stoq.benchmark import BenchmarkFailed  # noqa: E402
from stoq.config import StoqConfig  # noqa: E402
from stoq.endpoint import Endpoint, connect  # noqa: E402
from stoq.errors import StoqError  # noqa: E402
from stoq.identity import NodeIdentity, PeerPolicy  # noqa: E402
from stoq.nat.peer_link import Route  # noqa: E402
from stoq.nat.punch import (  # noqa: E402
    Candidate,
    CandidateKind,
    PunchSession,
    Selected,
    punch,
    receive,
)
from stoq.nat.rendezvous import RendezvousClient, RendezvousServer  # noqa: E402
from stoq.nat.signalling import new_credentials  # noqa: E402
from stoq.nat.stun_client import Address, binding, normalize_address  # noqa: E402
from stoq.nat.stun_server import StunServer  # noqa: E402
from stoq.nat.traversal import PeerConnection, TraversalAgent, TraversalSettings  # noqa: E402
from stoq.nat.turn_server import TurnServer  # noqa: E402
from trustchain.ca.authority import CertificateAuthority  # noqa: E402
from trustchain.ca.trust import TrustAnchor, TrustStore  # noqa: E402
from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KeyStore  # noqa: E402

PACKAGES = ("aioice", "aioquic", "cryptography")
LOOPBACK = "127.0.0.1"
ALTERNATE = "127.0.0.2"
NAMESPACE = "bench.hypermesh"
REALM = "bench.test"
USER = "bench"
PASSWORD = "bench-pass-1"  # noqa: S105 (a throwaway user on loopback)
MESSAGE = b"first bytes"
WARMUPS = 3
RUNS = 30
QUICK_RUNS = 5
#: Seconds one run may take before it counts as failed.
RUN_TIMEOUT = 20.0
#: Failed runs after which a row stops.
MAX_FAILURES = 3

S = TypeVar("S")


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Percentiles:
    """p50 and p90 (nearest rank) of ``n`` samples, in milliseconds."""

    p50: float
    p90: float
    n: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Percentiles | None:
        if not seconds:
            return None
        ordered = sorted(seconds)

        def rank(q: float) -> float:
            return ordered[max(1, math.ceil(q * len(ordered))) - 1] * MS

        return cls(rank(0.5), rank(0.9), len(ordered))


@dataclass(frozen=True)
class StoqSample:
    """One STOQ connection (rows 1-4); seconds from the start of the run."""

    first_byte: float
    path_ready: float | None  # the dialler's first route change (by peer id only)
    to_direct: float | None  # PeerConnection.time_to_direct() (rows 2 and 3)
    route: str  # what carried the first byte
    cpu: float
    busy: float
    #: The dialler's QUIC datagrams over the relay until the message arrived (by peer id).
    relayed: int | None = None


@dataclass(frozen=True)
class IceSample:
    """One ICE exchange without QUIC or signalling (rows 5 and 6)."""

    connected: float
    datagram: float
    cpu: float
    busy: float
    candidates: int  # local candidates the controlling side gathered


@dataclass(frozen=True)
class Row(Generic[S]):
    label: str
    samples: tuple[S, ...]
    failures: tuple[str, ...]
    attempted: int


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(0.5 * len(ordered))) - 1]


# --- the world ----------------------------------------------------------------------------------


class Pki:
    """A throwaway TrustChain PKI: root, one intermediate, node certificates on demand."""

    def __init__(self, store: KeyStore, ca: CertificateAuthority) -> None:
        self.store = store
        self.ca = ca
        root = ca.init_root("traversal-bench-root")
        intermediate = ca.issue_intermediate("bench", NAMESPACE)
        trust = TrustStore(
            [TrustAnchor(root.certificate, "hypermesh")],
            certificates=[intermediate.certificate],
        )
        trust.add_crl(ca.crl())
        trust.add_crl(ca.crl("bench"))
        self.policy = PeerPolicy(trust, namespaces=(NAMESPACE,))

    def config(self, name: str) -> StoqConfig:
        """A node certificate for ``name`` (and 127.0.0.1) with a fresh key, as a config."""
        fqdn = f"{name}.{NAMESPACE}"
        issued = self.ca.issue("bench", "node", fqdn, dns_names=[fqdn], ip_addresses=[LOOPBACK])
        if issued.key_name is None:
            raise BenchmarkFailed(f"the CA issued {fqdn} without a key-store key")
        identity = NodeIdentity.from_keystore(
            self.store, issued.key_name, (issued.certificate, *issued.chain)
        )
        return StoqConfig(identity=identity, policy=self.policy)


@contextlib.contextmanager
def pki() -> Iterator[Pki]:
    with tempfile.TemporaryDirectory(prefix="traversal-bench-") as directory:
        home = Path(directory)
        store = KeyStore.open(
            home / "keys",
            passphrase=b"bench",
            kdf_params=INSECURE_TEST_KDF_PARAMS,
            allow_weak_kdf=True,
        )
        with store:
            ca = CertificateAuthority(home / "ca", store)
            try:
                yield Pki(store, ca)
            finally:
                ca.close()


@dataclass(frozen=True)
class World:
    pki: Pki
    rendezvous: Endpoint
    stun: StunServer
    turn: TurnServer

    def settings(self, **overrides: object) -> TraversalSettings:
        values: dict[str, object] = {
            "stun_server": self.stun.addresses[0],
            "turn_server": self.turn.addresses[0],
            "turn_username": USER,
            "turn_password": PASSWORD,
        }
        values.update(overrides)
        return TraversalSettings(**values)  # type: ignore[arg-type]

    @contextlib.asynccontextmanager
    async def node(self, name: str, **overrides: object) -> AsyncIterator[TraversalAgent]:
        """A node registered with the rendezvous node, and its agent."""
        config = self.pki.config(name)
        connection = await connect(config, LOOPBACK, self.rendezvous.port)
        try:
            client = await RendezvousClient.open(connection)
            try:
                agent = TraversalAgent(config, client, self.settings(**overrides))
                try:
                    yield agent
                finally:
                    await agent.close()
            finally:
                await client.close()
        finally:
            await connection.close()


@contextlib.asynccontextmanager
async def world(keys: Pki) -> AsyncIterator[World]:
    rendezvous = await Endpoint.listen(keys.config("rendezvous"), LOOPBACK, 0)
    try:
        stun = await StunServer.start([(LOOPBACK, 0)], alternate=(ALTERNATE, 0))
        try:
            turn = await TurnServer.start(
                [(LOOPBACK, 0)], realm=REALM, users={USER: PASSWORD}, allow_loopback_peers=True
            )
            try:
                server = RendezvousServer(rendezvous)
                server.start()
                try:
                    yield World(keys, rendezvous, stun, turn)
                finally:
                    await server.close()
            finally:
                await turn.close()
        finally:
            await stun.close()
    finally:
        await rendezvous.close()


# --- running rows -------------------------------------------------------------------------------


Runner = Callable[[], Awaitable[S]]


async def collect(
    label: str,
    runs: int,
    setup: Callable[[int], contextlib.AbstractAsyncContextManager[Runner[S]]],
) -> Row[S]:
    """``WARMUPS + runs`` runs of what ``setup(generation)`` yields; a failed run counts as
    attempted and the setup is made again (a new generation) for the next one."""
    print(f"{label}: {runs} runs after {WARMUPS} warm-ups", flush=True)
    total = WARMUPS + runs
    samples: list[S] = []
    failures: list[str] = []
    attempted = 0
    generation = 0
    while attempted < total and len(failures) < MAX_FAILURES:
        generation += 1
        async with setup(generation) as runner:
            while attempted < total:
                attempted += 1
                try:
                    async with asyncio.timeout(RUN_TIMEOUT):
                        sample = await runner()
                except TimeoutError:
                    failures.append(f"the run did not finish within {RUN_TIMEOUT:g} s")
                except (StoqError, OSError) as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                else:
                    if attempted > WARMUPS:
                        samples.append(sample)
                    continue
                print(f"  run {attempted} failed: {failures[-1]}", flush=True)
                break
    return Row(label, tuple(samples), tuple(failures), max(0, attempted - WARMUPS))


async def stop(task: asyncio.Task[object]) -> None:
    """Cancel ``task`` and wait until it ended (its own failure, if any, is the run's second
    error: the first one is what the run reports)."""
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True)
class Arrival:
    data: bytes
    at: float
    cpu: float
    sent: dict[Route, int]  # the dialler's link.sent when the message arrived


def _carried(before: dict[Route, int], after: dict[Route, int]) -> str:
    grew = [route.value for route in (Route.RELAY, Route.DIRECT) if after[route] > before[route]]
    return " + ".join(grew) if grew else "none"


def _check(data: bytes) -> None:
    if data != MESSAGE:
        raise BenchmarkFailed(f"the receiver got {data!r}, not {MESSAGE!r}")


# --- rows 1-4: STOQ -----------------------------------------------------------------------------


def by_address(
    keys: Pki,
) -> Callable[[int], contextlib.AbstractAsyncContextManager[Runner[StoqSample]]]:
    @contextlib.asynccontextmanager
    async def setup(generation: int) -> AsyncIterator[Runner[StoqSample]]:
        server = await Endpoint.listen(keys.config(f"server-{generation}"), LOOPBACK, 0)
        client = keys.config(f"client-{generation}")
        try:
            yield lambda: _by_address_once(server, client)
        finally:
            await server.close()

    return setup


async def _by_address_once(server: Endpoint, client: StoqConfig) -> StoqSample:
    loop = asyncio.get_running_loop()
    closing = []

    async def serve() -> Arrival:
        connection = await server.accept()
        closing.append(connection)
        stream = await connection.accept_stream()
        data = await stream.receive()
        return Arrival(data, loop.time(), time.process_time(), {})

    task = asyncio.ensure_future(serve())
    try:
        cpu = time.process_time()
        start = loop.time()
        connection = await connect(client, LOOPBACK, server.port)
        closing.append(connection)
        stream = await connection.open_stream()
        await stream.send(MESSAGE, end_stream=True)
        arrival = await task
        _check(arrival.data)
        wall = arrival.at - start
        used = arrival.cpu - cpu
        return StoqSample(wall, None, None, "", used, used / wall)
    finally:
        await stop(task)
        for each in closing:
            await each.close()


def by_peer_id(
    place: World, key: str, *, wait_direct: bool, **overrides: object
) -> Callable[[int], contextlib.AbstractAsyncContextManager[Runner[StoqSample]]]:
    @contextlib.asynccontextmanager
    async def setup(generation: int) -> AsyncIterator[Runner[StoqSample]]:
        async with (
            place.node(f"alice-{key}-{generation}", **overrides) as alice,
            place.node(f"bob-{key}-{generation}", **overrides) as bob,
        ):
            yield lambda: _by_peer_id_once(alice, bob, wait_direct=wait_direct)

    return setup


async def _by_peer_id_once(
    alice: TraversalAgent, bob: TraversalAgent, *, wait_direct: bool
) -> StoqSample:
    loop = asyncio.get_running_loop()
    dialled: list[PeerConnection] = []
    accepted: list[PeerConnection] = []

    async def accepting() -> Arrival:
        peer = await bob.accept()
        accepted.append(peer)
        stream = await peer.connection.accept_stream()
        data = await stream.receive()
        at, cpu = loop.time(), time.process_time()
        if not dialled:
            raise BenchmarkFailed("a message arrived before connect() returned")
        return Arrival(data, at, cpu, dict(dialled[0].link.sent))

    task = asyncio.ensure_future(accepting())
    try:
        cpu = time.process_time()
        start = loop.time()
        a = await alice.connect(bob.rendezvous.peer_id)
        dialled.append(a)
        before = dict(a.link.sent)
        stream = await a.connection.open_stream()
        await stream.send(MESSAGE, end_stream=True)
        arrival = await task
        _check(arrival.data)
        if accepted[0].link_id != a.link_id:
            raise BenchmarkFailed("the accepting side got another link than the one dialled")
        used = arrival.cpu - cpu
        last = arrival.at
        to_direct = None
        if wait_direct:
            await a.wait_punched()
            to_direct = a.time_to_direct()
            if to_direct is not None and a.started + to_direct > last:
                last = a.started + to_direct
                used = time.process_time() - cpu
        path_ready = a.link.changes[0].at - a.started if a.link.changes else None
        return StoqSample(
            arrival.at - start,
            path_ready,
            to_direct,
            _carried(before, arrival.sent),
            used,
            used / (last - start),
            arrival.sent[Route.RELAY],
        )
    finally:
        await stop(task)
        for peer in (*dialled, *accepted):
            await peer.close()


# --- rows 5 and 6: ICE without QUIC or signalling -----------------------------------------------


def _loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return [LOOPBACK] if use_ipv4 else []


@contextlib.contextmanager
def aioice_on_loopback() -> Iterator[None]:
    """aioice's host candidates on 127.0.0.1 only (module docstring, row 5)."""
    original = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = _loopback_only
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original


def aioice_rows(
    stun: Address,
) -> Callable[[int], contextlib.AbstractAsyncContextManager[Runner[IceSample]]]:
    @contextlib.asynccontextmanager
    async def setup(generation: int) -> AsyncIterator[Runner[IceSample]]:
        with aioice_on_loopback():
            yield lambda: _aioice_once(stun)

    return setup


async def _aioice_once(stun: Address) -> IceSample:
    loop = asyncio.get_running_loop()
    a = aioice.Connection(ice_controlling=True, stun_server=stun, use_ipv6=False)
    b = aioice.Connection(ice_controlling=False, stun_server=stun, use_ipv6=False)
    try:
        cpu = time.process_time()
        start = loop.time()
        await asyncio.gather(a.gather_candidates(), b.gather_candidates())
        for local, remote in ((a, b), (b, a)):
            hosts = {c.host for c in local.local_candidates}
            if hosts != {LOOPBACK}:
                raise BenchmarkFailed(f"aioice gathered on {sorted(hosts)}, not only {LOOPBACK}")
            if not any(c.type == "srflx" for c in local.local_candidates):
                raise BenchmarkFailed("aioice got no server-reflexive candidate from our STUN")
            for candidate in local.local_candidates:
                await remote.add_remote_candidate(candidate)
            await remote.add_remote_candidate(None)
            remote.remote_username = local.local_username
            remote.remote_password = local.local_password
        await asyncio.gather(a.connect(), b.connect())
        connected = loop.time()
        await a.send(MESSAGE)
        data = await b.recv()
        at, used = loop.time(), time.process_time() - cpu
        _check(data)
        return IceSample(
            connected - start, at - start, used, used / (at - start), len(a.local_candidates)
        )
    finally:
        await a.close()
        await b.close()


def our_rows(
    stun: Address,
) -> Callable[[int], contextlib.AbstractAsyncContextManager[Runner[IceSample]]]:
    @contextlib.asynccontextmanager
    async def setup(generation: int) -> AsyncIterator[Runner[IceSample]]:
        yield lambda: _ours_once(stun)

    return setup


async def _gather(sock: socket.socket, stun: Address) -> list[Candidate]:
    host = normalize_address(sock.getsockname())
    candidates = [Candidate.make(CandidateKind.HOST, host)]
    mapped = normalize_address((await binding(stun, sock=sock, timeout=2.0)).mapped)
    if mapped != host:
        candidates.append(
            Candidate.make(CandidateKind.SERVER_REFLEXIVE, mapped, base=host, server="stun")
        )
    return candidates


async def _punch_both(
    sockets: Sequence[socket.socket], sessions: Sequence[PunchSession]
) -> list[Selected]:
    """``punch`` on both sides at once; a side that selected keeps answering checks until the
    other one has selected too."""
    punching = [asyncio.ensure_future(punch(s, p)) for s, p in zip(sockets, sessions, strict=True)]
    answering: list[asyncio.Task[object]] = []
    try:
        pending: set[asyncio.Future[Selected]] = set(punching)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                finished.result()  # raises PunchFailed
                side = punching.index(finished)  # type: ignore[arg-type]
                if pending:
                    answering.append(
                        asyncio.ensure_future(
                            receive(sockets[side], sessions[side], timeout=RUN_TIMEOUT)
                        )
                    )
        return [task.result() for task in punching]
    finally:
        for task in [*punching, *answering]:
            await stop(task)


async def _ours_once(stun: Address) -> IceSample:
    loop = asyncio.get_running_loop()
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
            sock.setblocking(False)
        cpu = time.process_time()
        start = loop.time()
        a, b = await asyncio.gather(*(_gather(sock, stun) for sock in sockets))
        (a_ufrag, a_pwd), (b_ufrag, b_pwd) = new_credentials(), new_credentials()
        now = loop.time()
        sessions = [
            PunchSession(
                a,
                b,
                controlling=True,
                local_ufrag=a_ufrag,
                local_pwd=a_pwd,
                remote_ufrag=b_ufrag,
                remote_pwd=b_pwd,
                now=now,
            ),
            PunchSession(
                b,
                a,
                controlling=False,
                local_ufrag=b_ufrag,
                local_pwd=b_pwd,
                remote_ufrag=a_ufrag,
                remote_pwd=a_pwd,
                now=now,
            ),
        ]
        selected = await _punch_both(sockets, sessions)
        connected = loop.time()
        sockets[0].sendto(MESSAGE, selected[0].remote.address)
        data, _ = await receive(sockets[1], sessions[1], timeout=RUN_TIMEOUT)
        at, used = loop.time(), time.process_time() - cpu
        _check(data)
        return IceSample(connected - start, at - start, used, used / (at - start), len(a))
    finally:
        for sock in sockets:
            sock.close()


# --- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    stoq: tuple[Row[StoqSample], ...]
    ice: tuple[Row[IceSample], ...]

    def failures(self) -> list[str]:
        """Every failed run, named by its row."""
        rows: list[Row[StoqSample] | Row[IceSample]] = [*self.stoq, *self.ice]
        return [f"{row.label}: {failure}" for row in rows for failure in row.failures]


async def run(runs: int) -> Run:
    with pki() as keys:
        async with world(keys) as place:
            stun = place.stun.addresses[0]
            stoq_rows = (
                await collect("STOQ by address", runs, by_address(keys)),
                await collect(
                    "STOQ by peer id, relay first",
                    runs,
                    by_peer_id(place, "relay-first", wait_direct=True),
                ),
                await collect(
                    "STOQ by peer id, no TURN",
                    runs,
                    by_peer_id(place, "no-turn", wait_direct=True, turn_server=None),
                ),
                await collect(
                    "STOQ by peer id, relay only",
                    runs,
                    by_peer_id(place, "relay-only", wait_direct=False, policy="relay"),
                ),
            )
            ice_rows = (
                await collect("aioice", runs, aioice_rows(stun)),
                await collect("ours", runs, our_rows(stun)),
            )
    return Run(stoq_rows, ice_rows)


# --- the section --------------------------------------------------------------------------------


def _cell(value: Percentiles | None, which: str) -> str:
    if value is None:
        return "-"
    return ms(value.p50 if which == "p50" else value.p90)


def _routes(samples: Sequence[StoqSample]) -> str:
    counts = Counter(sample.route for sample in samples)
    return ", ".join(f"{route} {count}" for route, count in counts.most_common()) or "-"


STOQ_LABELS = (
    "by address: `stoq.endpoint.connect` (the baseline)",
    "by peer id, relay first (`TraversalAgent.connect`, default settings)",
    "by peer id without TURN (`turn_server=None`)",
    'by peer id, relay only (`policy="relay"`)',
)


def stoq_table(rows: Sequence[Row[StoqSample]]) -> str:
    lines = [
        "| how (one process, 127.0.0.1) | ok runs | **first byte p50 (ms)** | first byte p90 (ms) "
        "| path ready p50 (ms) | went direct | time to direct p50 (ms) | time to direct p90 "
        "(ms) | first byte went | CPU per run p50 (ms) | busy p50 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for index, row in enumerate(rows):
        s = row.samples
        first = Percentiles.of([x.first_byte for x in s])
        ready = Percentiles.of([x.path_ready for x in s if x.path_ready is not None])
        direct = [x.to_direct for x in s if x.to_direct is not None]
        direct_cell = f"{len(direct)}/{len(s)}" if index in (1, 2) else "-"
        to_direct = Percentiles.of(direct)
        cpu = Percentiles.of([x.cpu for x in s])
        busy = f"{_median([x.busy for x in s]):.0%}" if s else "-"
        lines.append(
            f"| {STOQ_LABELS[index]} | {len(s)}/{row.attempted} | **{_cell(first, 'p50')}** | "
            f"{_cell(first, 'p90')} | {_cell(ready, 'p50')} | {direct_cell} | "
            f"{_cell(to_direct, 'p50')} | {_cell(to_direct, 'p90')} | "
            f"{_routes(s) if index else '-'} | "
            f"{_cell(cpu, 'p50')} | {busy} |"
        )
    return "\n".join(lines)


def ice_table(rows: Sequence[Row[IceSample]], aioice_version: str) -> str:
    labels = (
        f"aioice {aioice_version} (`Connection.gather_candidates` + `connect`)",
        "ours (`stun_client.binding` + `PunchSession` / `punch`)",
    )
    lines = [
        "| implementation (two sides, one process) | ok runs | local candidates per side | "
        "**connected p50 (ms)** | connected p90 (ms) | first datagram p50 (ms) | first datagram "
        "p90 (ms) | CPU per run p50 (ms) | busy p50 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, row in zip(labels, rows, strict=True):
        s = row.samples
        connected = Percentiles.of([x.connected for x in s])
        datagram = Percentiles.of([x.datagram for x in s])
        cpu = Percentiles.of([x.cpu for x in s])
        candidates = "/".join(str(n) for n in sorted({x.candidates for x in s})) or "-"
        busy = f"{_median([x.busy for x in s]):.0%}" if s else "-"
        lines.append(
            f"| {label} | {len(s)}/{row.attempted} | {candidates} | "
            f"**{_cell(connected, 'p50')}** | {_cell(connected, 'p90')} | "
            f"{_cell(datagram, 'p50')} | {_cell(datagram, 'p90')} | {_cell(cpu, 'p50')} | "
            f"{busy} |"
        )
    return "\n".join(lines)


def _p50(values: Sequence[float]) -> float:
    """The nearest-rank median, in milliseconds."""
    return _median(values) * MS


def stoq_bound(rows: Sequence[Row[StoqSample]], ice: Sequence[Row[IceSample]]) -> str:
    """What bounds the STOQ rows, from the run's own figures."""
    if any(not row.samples for row in rows):
        return "**Not compared:** a STOQ row has no successful run (see the failures above)."
    samples = [row.samples for row in rows]
    relay_first, no_turn = samples[1], samples[2]
    first = [_p50([x.first_byte for x in s]) for s in samples]
    cpu = [_p50([x.cpu for x in s]) for s in samples]
    busy = min(_median([x.busy for x in s]) for s in samples)
    ready = _p50([x.path_ready for x in relay_first if x.path_ready is not None])
    ready_no_turn = _p50([x.path_ready for x in no_turn if x.path_ready is not None])
    if busy >= 0.8:
        text = (
            "**What bounds a STOQ connection here: CPU in this one process, not waiting.** "
            f"Every STOQ row kept the process at least {busy:.0%} busy (p50) from the call to "
            "its last timed event: both sides' QUIC TLS 1.3 and hybrid post-quantum channel "
            "handshakes and chain validations, and by peer id the servers and the traversal "
            "too, all on one asyncio thread, so a row's extra time is extra CPU."
        )
    else:
        text = (
            f"**A STOQ row waited for part of its time:** the least busy kept the process "
            f"{busy:.0%} busy (p50) from the call to its last timed event."
        )
    text += (
        f" By address the first byte took {ms(first[0])} ms (p50). By peer id with the relay "
        f"first it took {ms(first[1])} ms, {first[1] - first[0]:+.2f} ms (CPU per run "
        f"{cpu[1] - cpu[0]:+.2f} ms). The relay path was ready after {ms(ready)} ms "
        "(gathering, the offer and answer through the rendezvous node, the TURN permission "
        f"and channel); the handshake and the message took the other {ms(first[1] - ready)} "
        f"ms, against {ms(first[0])} ms by address."
    )
    direct = [x for x in relay_first if x.to_direct is not None]
    if direct:
        to_direct = _p50([x.to_direct for x in direct if x.to_direct is not None])
        before = sum(1 for x in direct if x.to_direct is not None and x.to_direct < x.first_byte)
        went = sum(1 for x in relay_first if x.route == Route.DIRECT.value)
        relayed = _median([x.relayed for x in relay_first if x.relayed is not None])
        text += (
            f" The dialler starts its checks when its relay is ready; the link went direct "
            f"{ms(to_direct)} ms after the connect started (p50), before the first byte "
            f"arrived in {before} of {len(relay_first)} runs, and the first byte went direct "
            f"in {went} of {len(relay_first)}; before the message arrived the dialler had sent "
            f"{relayed:g} QUIC datagram{'' if relayed == 1 else 's'} over the relay (p50)."
        )
        ours = ice[1].samples
        if ours:
            alone = _p50([x.connected for x in ours])
            text += (
                f" From relay ready to direct took {ms(to_direct - ready)} ms, against "
                f"{ms(alone)} ms for a whole ICE exchange, gathering included, with nothing "
                "else on the thread (below): the checks share the thread with the handshake, "
                "which starts at the same moment."
            )
    text += (
        f" Without TURN the connection waits for the checks (direct after "
        f"{ms(ready_no_turn)} ms) and its first byte came at {ms(first[2])} ms: "
        f"{first[2] - first[1]:+.2f} ms against relay first (CPU per run "
        f"{cpu[2] - cpu[1]:+.2f} ms). Relay only: {ms(first[3])} ms, "
        f"{first[3] - first[0]:+.2f} ms against by address (CPU per run "
        f"{cpu[3] - cpu[0]:+.2f} ms)."
    )
    return text


def ice_bound(rows: Sequence[Row[IceSample]]) -> str:
    """What bounds the ICE rows, from the run's own figures."""
    theirs, ours = (row.samples for row in rows)
    if not theirs or not ours:
        return "**Not compared:** an ICE row has no successful run (see the failures above)."
    their_wall = _p50([x.connected for x in theirs])
    their_cpu = _p50([x.cpu for x in theirs])
    our_wall = _p50([x.connected for x in ours])
    our_busy = _median([x.busy for x in ours])
    text = (
        f"**ICE alone: ours had a pair selected on both sides {ms(our_wall)} ms after "
        f"gathering began, aioice {ms(their_wall)} ms ({their_wall / our_wall:.1f}x).** Ours "
        f"kept the process {our_busy:.0%} busy (p50; one STUN Binding per side, then regular "
        "nomination on the one pair: a check, then a second one with USE-CANDIDATE)"
        + (", so CPU bounds it" if our_busy >= 0.8 else "")
        + f"; aioice spent {ms(their_cpu)} ms of CPU (p50) and waited for the rest, about "
        f"{ms(their_wall - their_cpu)} ms."
    )
    if their_wall - their_cpu >= 15.0:
        text += (
            f" Reading aioice {aioice.__version__}'s source: `Connection.connect()` starts a "
            "check, then sleeps 20 ms (`asyncio.sleep(0.02)`, its Ta pacing) before it looks "
            "at the check list again, and it nominates aggressively (USE-CANDIDATE on every "
            "check from the controlling side): the sleep is most of its time here."
        )
    return text


def markdown(
    result: Run, *, command: str, runs: int, load: tuple[float, float], elapsed: float
) -> str:
    aioice_version = aioice.__version__
    header = (
        "### NAT traversal latency: STOQ by peer id, and ICE beside aioice "
        "(`benchmarks/traversal.py`)\n\n"
        f"Command: `nox -s bench -- traversal` (runs `{command} --update BENCHMARKS.md`). "
        f"Measured {datetime.date.today().isoformat()} on: {machine(PACKAGES)}. 1-minute load "
        f"average {load[0]:.2f} at the start and {load[1]:.2f} at the end of the {elapsed:.0f} s "
        f"run ({os.cpu_count()} CPUs)."
    )
    scope = (
        "Everything in one process on 127.0.0.1: our STUN server (RFC 5780, alternate "
        "127.0.0.2), our TURN server (loopback peers allowed), a STOQ endpoint running the "
        "rendezvous service, and both sides of every connection, with a throwaway TrustChain "
        "PKI (both node chains validated on every STOQ handshake). Loopback has no NAT, so the "
        "checks succeed on host candidates: these are floors set by the code and the protocols' "
        f"round trips. Each row: {runs} sequential runs after {WARMUPS} warm-ups; p50 and p90 "
        "nearest rank; times from the start of the run. CPU per run: the process's CPU time "
        "(both sides and all three servers) from the start to the row's last timed event; busy "
        "= that CPU time over the same wall time (100%: the one asyncio thread never waited)."
    )
    stoq_text = (
        "STOQ: a connection then one 11-byte message on a new stream. *First byte*: from the "
        "`connect()` call until the other side's `receive()` returned the message. By peer id "
        "the dialler calls `TraversalAgent.connect(peer_id)` while the other node waits in "
        "`accept()`; each node has its own STOQ connection to the rendezvous node. *Path "
        "ready*: the dialler's first route change (`link.changes[0]`: the relay, or without "
        "TURN the direct path) after the connect started: gathering (a STUN Binding then the "
        "RFC 5780 mapping test, a TURN allocation alongside), the offer and answer through the "
        "rendezvous node, the TURN permission and channel. *Time to direct*: "
        "`PeerConnection.time_to_direct()` of the dialler. *First byte went*: which route's "
        "counter in the dialler's `link.sent` grew between its `send()` and the message "
        "arriving."
    )
    ice_text = (
        "ICE alone, without QUIC or signalling (candidates and credentials handed over in "
        "memory): two sides gather (a host candidate on 127.0.0.1 and a STUN Binding to our "
        "server) at once, check at once, then one datagram from the controlling side. "
        "*Connected*: from the start of gathering until both sides have selected a pair; "
        "*first datagram*: until the other side received it. aioice enumerates the host's "
        "interfaces and skips 127.0.0.1; for this row `aioice.ice.get_host_addresses` is "
        "replaced by one answering 127.0.0.1 (every gathered candidate checked). aioice keeps "
        "a server-reflexive candidate equal to its host candidate; ours drops it as redundant "
        "(RFC 8445 §5.1.3), hence the candidate counts."
    )
    failures = result.failures()
    failed = "Failed runs: " + "; ".join(failures) + "." if failures else "No run failed."
    return "\n\n".join(
        [
            header,
            scope,
            stoq_text,
            stoq_table(result.stoq),
            ice_text,
            ice_table(result.ice, aioice_version),
            failed,
            stoq_bound(result.stoq, result.ice),
            ice_bound(result.ice),
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, help=f"timed runs per row (default {RUNS})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs per row")
    parser.add_argument("--update", type=Path, help="markdown file whose section to replace")
    args = parser.parse_args()
    runs = args.runs if args.runs is not None else QUICK_RUNS if args.quick else RUNS
    if runs < 1:
        parser.error("--runs must be at least 1")

    load_start = os.getloadavg()
    started = time.perf_counter()
    result = asyncio.run(run(runs))
    elapsed = time.perf_counter() - started
    load_end = os.getloadavg()

    command = "python benchmarks/traversal.py" + (" --quick" if args.quick else "")
    if args.runs is not None:
        command += f" --runs {args.runs}"
    text = markdown(
        result, command=command, runs=runs, load=(load_start[0], load_end[0]), elapsed=elapsed
    )
    if args.update:
        update_section(args.update, "traversal", text)
    else:
        print(text)
    return 1 if result.failures() else 0


if __name__ == "__main__":
    raise SystemExit(main())
