"""STOQ connections between the NAT lab's sites by peer id: the issue 7 matrix (slow).

One :class:`~.natlab.NatLab` with every site kind, plus a rendezvous node (a STOQ endpoint
running :class:`~stoq.nat.rendezvous.RendezvousServer`) on the lab's internet at
``203.0.113.1:4433``. Every site runs one node: a TrustChain identity, one STOQ connection
to the rendezvous node (made from a socket in the site's namespace), and a
:class:`~stoq.nat.traversal.TraversalAgent` whose every socket is made in that namespace. So
each node is what a user runs: it knows the STUN server, the TURN server (UDP, and TCP for when
UDP is blocked) and the rendezvous node, and reaches other nodes by peer id alone.

The lab has two sites of every kind (``twins``), so every pairing of kinds is there, a kind
with itself included: 28 pairings. :data:`ATTEMPTS` times per pairing one side connects to the
other by peer id (``agent.connect(peer_id)``), A on even attempts and B on odd ones, so both
sides play controlling agent and QUIC client; all pairings of a round run at once. Each
attempt records:

* *connected*: the STOQ connection came up and a first message went A -> B and back (relay
  first, so this is the relayed path unless the checks were quicker);
* *ttfb*: from ``connect()`` to B receiving A's first message (gathering, the exchange through
  the rendezvous node, TURN allocations, the post-quantum handshake and one stream message);
* *first via relay*: the first message travelled while a link was still relayed (the
  relayed fallback carrying the start of the connection);
* *direct*: both links were direct within :data:`GRACE` seconds after both sides' first
  connectivity checks ended (:data:`DIRECT_WINDOW` for pairings expected to go direct, room for
  one retry should the first checks fail on a loaded machine), and a message then went both
  ways without the relay carrying it;
  *to direct*: from ``connect()`` until the connecting side's link went direct.

Asserted: every attempt of every pairing connected (direct or relayed); every attempt went
direct wherever at least one side has endpoint-independent mapping and neither side blocks
UDP (symmetric <-> symmetric and the UDP-blocked site are relayed; both are reported). The
table is printed and, when ``$NAT_TRAVERSAL_OUT`` is set, written there as JSON
(BENCHMARKS.md keeps it). Timings are reported, never asserted.

:func:`test_nat_rebinding_keeps_the_connection` changes a NAT's public address under a live
connection (its router's address is replaced, which drops every conntrack mapping of
MASQUERADE) and checks that a steady stream of messages continues in order, without the
connection ending, and on a new direct path.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import statistics
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from stoq.config import StoqConfig
from stoq.connection import StoqConnection
from stoq.endpoint import Endpoint, connect_socket
from stoq.errors import StoqError
from stoq.identity import NodeIdentity, PeerPolicy
from stoq.nat.peer_link import Route
from stoq.nat.rendezvous import RendezvousClient, RendezvousServer
from stoq.nat.traversal import (
    PeerConnection,
    TraversalAgent,
    TraversalSettings,
    connect_relayed,
)
from stoq.nat.turn_client import TurnClient
from trustchain.ca.authority import CertificateAuthority
from trustchain.ca.trust import TrustAnchor, TrustStore
from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KeyStore

from .natlab import (
    STUN_PRIMARY,
    TURN_IP,
    TURN_PASSWORD,
    TURN_PORT,
    TURN_USER,
    NatLab,
    Site,
    SiteKind,
    inside,
    require_natlab,
)
from .netns import _run, netns_argv

pytestmark = pytest.mark.slow

ATTEMPTS = 20
GRACE = 2.0
DIRECT_WINDOW = 12.0
NAMESPACE = "lab.hypermesh"
RENDEZVOUS = ("203.0.113.1", 4433)
KINDS = tuple(SiteKind)


def direct_expected(a: SiteKind, b: SiteKind) -> bool:
    if SiteKind.UDP_BLOCKED in (a, b):
        return False
    return not (a == SiteKind.SYMMETRIC and b == SiteKind.SYMMETRIC)


@dataclass
class Row:
    a: SiteKind
    b: SiteKind
    expected: bool
    attempts: int = 0
    connected: int = 0
    first_via_relay: int = 0
    direct: int = 0
    ttfb_ms: list[float] = field(default_factory=list)
    to_direct_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass
class Node:
    site: Site
    config: StoqConfig
    agent: TraversalAgent
    peer_id: bytes
    waiting: dict[bytes, asyncio.Future[PeerConnection]] = field(default_factory=dict)
    pending: dict[bytes, PeerConnection] = field(default_factory=dict)

    async def dispatch(self) -> None:
        """Hand every accepted connection to whoever waits for that peer."""
        while True:
            connection = await self.agent.accept()
            future = self.waiting.pop(connection.peer_id, None)
            if future is not None and not future.done():
                future.set_result(connection)
            else:
                await connection.close()


class Identities:
    """A TrustChain root, a ``lab.hypermesh`` CA, and node identities issued on demand."""

    def __init__(self, home: Path) -> None:
        self.store = KeyStore.open(
            home / "keys",
            passphrase=b"pw",
            kdf_params=INSECURE_TEST_KDF_PARAMS,
            allow_weak_kdf=True,
        )
        self.ca = CertificateAuthority(home / "ca", self.store)
        self.root = self.ca.init_root("lab-root")
        self.intermediate = self.ca.issue_intermediate("lab", NAMESPACE)

    def config(self, name: str, ips: list[str] | None = None) -> StoqConfig:
        issued = self.ca.issue("lab", "node", name, dns_names=[name], ip_addresses=ips or [])
        assert issued.key_name is not None
        identity = NodeIdentity.from_keystore(
            self.store, issued.key_name, (issued.certificate, *issued.chain)
        )
        trust = TrustStore(
            [TrustAnchor(self.root.certificate, "lab")],
            certificates=[self.intermediate.certificate],
        )
        return StoqConfig(identity=identity, policy=PeerPolicy(trust, namespaces=(NAMESPACE,)))

    def close(self) -> None:
        self.ca.close()
        self.store.close()


@pytest.fixture(scope="module")
def lab() -> Iterator[NatLab]:
    require_natlab()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Birthday probing opens 256 sockets per hard-side attempt, many attempts at once.
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 20000)), hard))
    try:
        with NatLab(KINDS, twins=KINDS) as built:
            yield built
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Identities]:
    made = Identities(tmp_path_factory.mktemp("traversal-pki"))
    try:
        yield made
    finally:
        made.close()


def _factory(site: Site) -> object:
    def make(family: int, kind: int) -> socket.socket:
        with inside(site.host):
            return socket.socket(family, kind)

    return make


def _settings(site: Site, **overrides: object) -> TraversalSettings:
    values: dict[str, object] = {
        "stun_server": STUN_PRIMARY,
        "turn_server": (TURN_IP, TURN_PORT),
        "turn_tcp_server": (TURN_IP, TURN_PORT),
        "turn_username": TURN_USER,
        "turn_password": TURN_PASSWORD,
        "socket_factory": _factory(site),
        "punch_timeout": 5.0,
        "retry_direct": 2.0,
        "keepalive": 0.5,
        "path_timeout": 2.0,
    }
    values.update(overrides)
    return TraversalSettings(**values)  # type: ignore[arg-type]


async def _reach_rendezvous(site: Site, config: StoqConfig) -> StoqConnection:
    """The node's STOQ connection to the rendezvous node: over UDP, or from the UDP-blocked
    site through a TURN allocation over TCP (STOQ over TURN, the firewall fallback)."""
    if site.kind != SiteKind.UDP_BLOCKED:
        with inside(site.host):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        return await connect_socket(config, sock, RENDEZVOUS)
    with inside(site.host):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    turn = await TurnClient.allocate(
        (TURN_IP, TURN_PORT), TURN_USER, TURN_PASSWORD, transport="tcp", sock=tcp, timeout=5.0
    )
    return await connect_relayed(config, turn, RENDEZVOUS)


@asynccontextmanager
async def _world(
    lab: NatLab, identities: Identities, sites: list[Site], **overrides: object
) -> AsyncIterator[dict[Site, Node]]:
    server_config = identities.config("rendezvous.lab.hypermesh", [RENDEZVOUS[0]])
    with inside(lab.inet):
        endpoint = await Endpoint.listen(server_config, RENDEZVOUS[0], RENDEZVOUS[1])
    server = RendezvousServer(endpoint)
    server.start()
    nodes: dict[Site, Node] = {}
    tasks: list[asyncio.Task[None]] = []
    try:
        for site in sites:
            config = identities.config(f"{site.kind.value}-{site.number}.lab.hypermesh")
            connection = await _reach_rendezvous(site, config)
            client = await RendezvousClient.open(connection)
            agent = TraversalAgent(config, client, _settings(site, **overrides))
            node = Node(site, config, agent, client.peer_id)
            nodes[site] = node
            tasks.append(asyncio.ensure_future(node.dispatch()))
        yield nodes
    finally:
        for task in tasks:
            task.cancel()
        for node in nodes.values():
            await node.agent.close()
            await node.agent.rendezvous.close()
        await server.close()
        await endpoint.close()


async def _message(a: PeerConnection, b: PeerConnection, payload: bytes) -> bytes:
    stream = await a.connection.open_stream()
    await stream.send(payload, end_stream=True)
    incoming = await b.connection.accept_stream()
    got = await incoming.receive()
    await incoming.send(got[::-1], end_stream=True)
    return await stream.receive()


async def _attempt(lab: NatLab, nodes: dict[Site, Node], row: Row) -> None:
    loop = asyncio.get_running_loop()
    a_node, b_node = nodes[lab.sites[row.a]], nodes[_other(lab, row)]
    if row.attempts % 2:
        a_node, b_node = b_node, a_node
    row.attempts += 1
    accepted: asyncio.Future[PeerConnection] = loop.create_future()
    b_node.waiting[a_node.peer_id] = accepted
    start = loop.time()
    a: PeerConnection | None = None
    b: PeerConnection | None = None
    try:
        async with asyncio.timeout(40):
            a = await a_node.agent.connect(b_node.peer_id)
            b = await accepted
            stream = await a.connection.open_stream()
            payload = f"first {row.a}->{row.b}".encode()
            await stream.send(payload, end_stream=True)
            incoming = await b.connection.accept_stream()
            assert await incoming.receive() == payload
            arrived = loop.time()
            await incoming.send(payload[::-1], end_stream=True)
            assert await stream.receive() == payload[::-1]
            row.connected += 1
            row.first_via_relay += a.time_to_direct() is None or b.time_to_direct() is None
            row.ttfb_ms.append((arrived - start) * 1000)
            await asyncio.gather(a.wait_punched(), b.wait_punched())
            try:
                async with asyncio.timeout(DIRECT_WINDOW if row.expected else GRACE):
                    while not (a.route == Route.DIRECT and b.route == Route.DIRECT):
                        await asyncio.sleep(0.05)
            except TimeoutError:
                row.failures.append(f"not direct: A {a.route}, B {b.route}")
                return
            relayed = (a.link.sent[Route.RELAY], b.link.sent[Route.RELAY])
            assert await _message(a, b, b"direct now") == b"won tcerid"
            if (a.link.sent[Route.RELAY], b.link.sent[Route.RELAY]) != relayed:
                row.failures.append("the relay still carried data after the upgrade")
                return
            to_direct = a.time_to_direct()
            assert to_direct is not None
            row.direct += 1
            row.to_direct_ms.append(to_direct * 1000)
    except (StoqError, TimeoutError, OSError) as exc:  # recorded per attempt, asserted per row
        row.failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        b_node.waiting.pop(a_node.peer_id, None)
        for end in (a, b):
            if end is not None:
                await end.close()
        if b is None and accepted.done() and not accepted.cancelled():
            await accepted.result().close()


def _median_max(values: list[float]) -> str:
    return f"{statistics.median(values):.0f}/{max(values):.0f}" if values else "-"


def _other(lab: NatLab, row: Row) -> Site:
    return lab.twins[row.b] if row.a == row.b else lab.sites[row.b]


def _table(rows: list[Row]) -> str:
    head = (
        f"{'site A':<20} {'site B':<20} {'connected':>9} {'1st via relay':>13} {'direct':>7} "
        f"{'ttfb ms med/max':>16} {'to direct ms med/max':>21}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.a:<20} {r.b:<20} {f'{r.connected}/{r.attempts}':>9} "
            f"{f'{r.first_via_relay}/{r.attempts}':>13} "
            f"{f'{r.direct}/{r.attempts}':>7} {_median_max(r.ttfb_ms):>16} "
            f"{_median_max(r.to_direct_ms):>21}" + ("" if r.expected else "  (relay expected)")
        )
    return "\n".join(lines)


def test_nat_traversal_matrix(
    lab: NatLab, identities: Identities, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [Row(a, b, direct_expected(a, b)) for i, a in enumerate(KINDS) for b in KINDS[i:]]
    sites = [*lab.sites.values(), *lab.twins.values()]

    async def main() -> None:
        async with _world(lab, identities, sites) as nodes:
            for _ in range(ATTEMPTS):
                await asyncio.gather(*(_attempt(lab, nodes, row) for row in rows))

    asyncio.run(main())
    with capsys.disabled():
        print(
            f"\nSTOQ connections by peer id through the NAT lab ({ATTEMPTS} attempts per "
            "pairing, A connecting on even attempts, B on odd; all pairings at once):"
        )
        print(_table(rows))
    out = os.environ.get("NAT_TRAVERSAL_OUT")
    if out:
        Path(out).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    assert len(rows) == len(KINDS) * (len(KINDS) + 1) // 2
    assert [(r.a, r.b, r.connected, r.failures[:2]) for r in rows if r.connected < ATTEMPTS] == []
    must = [r for r in rows if r.expected]
    assert len(must) == 20  # 28 pairings less the 7 with the UDP-blocked site and sym<->sym
    assert [(r.a, r.b, r.direct, r.failures[:2]) for r in must if r.direct < ATTEMPTS] == []


def test_nat_rebinding_keeps_the_connection(lab: NatLab, identities: Identities) -> None:
    moving, fixed = SiteKind.PORT_RESTRICTED_CONE, SiteKind.PUBLIC
    site = lab.sites[moving]
    router = site.routers[0]
    new_ip = "203.0.113.99"

    async def main() -> tuple[list[int], str]:
        pair = [lab.sites[moving], lab.sites[fixed]]
        async with _world(lab, identities, pair) as nodes:
            here, there = nodes[pair[0]], nodes[pair[1]]
            loop = asyncio.get_running_loop()
            accepted: asyncio.Future[PeerConnection] = loop.create_future()
            there.waiting[here.peer_id] = accepted
            a = await here.agent.connect(there.peer_id)
            b = await accepted
            async with asyncio.timeout(DIRECT_WINDOW):
                while not (a.route == Route.DIRECT and b.route == Route.DIRECT):
                    await asyncio.sleep(0.05)
            relayed_before = a.link.turn.relayed_address if a.link.turn else None
            before = b.link.direct_path
            assert before is not None
            assert before[1][0] == site.public_ip
            stream = await a.connection.open_stream()
            incoming_task = asyncio.ensure_future(b.connection.accept_stream())
            received: list[int] = []

            async def reader() -> None:
                incoming = await incoming_task
                async for message in incoming:
                    received.append(int(message))

            reading = asyncio.ensure_future(reader())
            for n in range(60):
                await stream.send(b"%d" % n)
                await asyncio.sleep(0.05)
                if n == 10:
                    # The NAT gets a new public address: MASQUERADE forgets every mapping.
                    _run(netns_argv(router, ["ip", "addr", "del", f"{site.public_ip}/24",
                                             "dev", "pub0"]))  # fmt: skip
                    _run(netns_argv(router, ["ip", "addr", "add", f"{new_ip}/24",
                                             "dev", "pub0"]))  # fmt: skip
            async with asyncio.timeout(30):
                while not (
                    a.route == Route.DIRECT
                    and b.route == Route.DIRECT
                    and b.link.direct_path is not None
                    and b.link.direct_path[1][0] == new_ip
                ):
                    await asyncio.sleep(0.05)
            # The UDP TURN allocation died with the old mapping; the restart made a new one.
            assert a.link.turn is not None
            assert a.link.relay_alive
            assert a.link.turn.relayed_address != relayed_before
            await stream.send(b"60", end_stream=True)
            async with asyncio.timeout(30):
                await reading
            assert not a.connection.closed
            assert not b.connection.closed
            routes = " ".join(f"{c.route}({c.reason})" for c in a.link.changes)
            await a.close()
            await b.close()
            return received, routes

    try:
        received, routes = asyncio.run(main())
    finally:
        _run(netns_argv(router, ["ip", "addr", "flush", "dev", "pub0"]))
        _run(netns_argv(router, ["ip", "addr", "add", f"{site.public_ip}/24", "dev", "pub0"]))
    assert received == list(range(61)), routes
    assert "nothing from" in routes


def test_a_relayed_connection_upgrades_when_udp_opens(lab: NatLab, identities: Identities) -> None:
    """ "Keep trying to upgrade a relayed connection to direct": a node behind the UDP-blocking
    firewall is relayed (over TURN-TCP); when the firewall starts letting UDP out, the link's
    next retry (every ``retry_direct`` s, doubling) finds a direct path, under the same
    connection."""
    blocked, other = lab.sites[SiteKind.UDP_BLOCKED], lab.sites[SiteKind.PUBLIC]
    router = blocked.routers[0]
    rule = ["-D", "FORWARD", "-i", "priv0", "-o", "pub0", "-p", "udp", "-j", "DROP"]

    async def main() -> None:
        async with _world(lab, identities, [blocked, other]) as nodes:
            loop = asyncio.get_running_loop()
            accepted: asyncio.Future[PeerConnection] = loop.create_future()
            nodes[other].waiting[nodes[blocked].peer_id] = accepted
            a = await nodes[blocked].agent.connect(nodes[other].peer_id)
            b = await accepted
            await asyncio.gather(a.wait_punched(), b.wait_punched())
            assert (a.route, b.route) == (Route.RELAY, Route.RELAY)
            assert await _message(a, b, b"relayed") == b"deyaler"
            _run(netns_argv(router, ["iptables", "-w", *rule]))
            async with asyncio.timeout(30):
                while not (a.route == Route.DIRECT and b.route == Route.DIRECT):
                    await asyncio.sleep(0.05)
            assert await _message(a, b, b"direct") == b"tcerid"
            assert not a.connection.closed
            assert [c.route for c in a.link.changes][:1] == [Route.RELAY]
            await a.close()
            await b.close()

    try:
        asyncio.run(main())
    finally:
        rules = _run(netns_argv(router, ["iptables", "-S", "FORWARD"]))
        if "-p udp -j DROP" not in rules:  # put the firewall back where it was
            restore = ["-I", "FORWARD", "2", *rule[2:]]
            _run(netns_argv(router, ["iptables", "-w", *restore]))
