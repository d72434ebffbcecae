"""NAT traversal end to end on loopback: rendezvous over STOQ, relay first, upgrade to direct.

Everything is real and in this process: a STOQ endpoint running the rendezvous service, our
RFC 5780 STUN server (127.0.0.1 with alternate 127.0.0.2), our TURN server (loopback peers
allowed deliberately), and two nodes with their own identities, each with a
:class:`~stoq.nat.traversal.TraversalAgent`. Loopback has no NAT, so the checks succeed on host
candidates; the NAT behaviours are exercised in shared/integration (the NAT lab).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stoq.config import StoqConfig
from stoq.endpoint import Endpoint, connect
from stoq.nat.peer_link import Route
from stoq.nat.punch import Candidate, CandidateKind
from stoq.nat.rendezvous import PeerNotRegistered, RendezvousClient, RendezvousServer
from stoq.nat.signalling import (
    MAX_CANDIDATES,
    Description,
    DescriptionKind,
    MappingBehaviour,
    SignallingError,
    decode_description,
    encode_description,
)
from stoq.nat.stun_server import StunServer
from stoq.nat.traversal import PeerConnection, TraversalAgent, TraversalSettings
from stoq.nat.turn_server import TurnServer

from .conftest import Pki

REALM = "loopback.test"
USER, PASSWORD = "node", "secret-password"


@dataclass
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
            "host_ip": "127.0.0.1",
            "punch_timeout": 3.0,
            "keepalive": 0.5,
            "path_timeout": 2.0,
            "retry_direct": 1.0,
        }
        values.update(overrides)
        return TraversalSettings(**values)  # type: ignore[arg-type]

    @contextlib.asynccontextmanager
    async def node(self, name: str, **overrides: object) -> AsyncIterator[TraversalAgent]:
        config = self.pki.config(self.pki.node(name, ip_addresses=["127.0.0.1"]))
        connection = await connect(config, "127.0.0.1", self.rendezvous.port)
        client = await RendezvousClient.open(connection)
        agent = TraversalAgent(config, client, self.settings(**overrides))
        try:
            yield agent
        finally:
            await agent.close()
            await client.close()
            await connection.close()


async def _world(pki: Pki) -> World:
    server_config: StoqConfig = pki.config(
        pki.node("rendezvous.bank.hypermesh", ip_addresses=["127.0.0.1"])
    )
    endpoint = await Endpoint.listen(server_config, "127.0.0.1", 0)
    stun = await StunServer.start([("127.0.0.1", 0)], alternate=("127.0.0.2", 0))
    turn = await TurnServer.start(
        [("127.0.0.1", 0)], realm=REALM, users={USER: PASSWORD}, allow_loopback_peers=True
    )
    return World(pki, endpoint, stun, turn)


def run(pki: Pki, body: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        world = await _world(pki)
        server = RendezvousServer(world.rendezvous)
        server.start()
        try:
            async with asyncio.timeout(60):
                await body(world)
        finally:
            await server.close()
            await world.rendezvous.close()
            await world.stun.close()
            await world.turn.close()

    asyncio.run(main())


async def _wait_for(predicate: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    async with asyncio.timeout(limit):
        while not predicate():
            await asyncio.sleep(0.02)
    assert predicate(), what


async def _echo_once(a: PeerConnection, b: PeerConnection, payload: bytes) -> bytes:
    stream = await a.connection.open_stream()
    await stream.send(payload, end_stream=True)
    incoming = await b.connection.accept_stream()
    received = await incoming.receive()
    await incoming.send(received[::-1], end_stream=True)
    return await stream.receive()


async def _pair(a: TraversalAgent, b: TraversalAgent) -> tuple[PeerConnection, PeerConnection]:
    accepted = asyncio.ensure_future(b.accept())
    dialled = await a.connect(b.rendezvous.peer_id)
    return dialled, await accepted


def test_relay_first_then_direct(pki: Pki) -> None:
    async def body(world: World) -> None:
        async with (
            world.node("alice.bank.hypermesh") as alice,
            world.node("bob.bank.hypermesh") as bob,
        ):
            a, b = await _pair(alice, bob)
            assert a.peer_id == bob.rendezvous.peer_id
            assert b.peer_id == alice.rendezvous.peer_id
            assert a.controlling
            assert not b.controlling
            # The connection came up over the relay: both links started there.
            assert a.link.changes[0].route == Route.RELAY
            assert b.link.changes[0].route == Route.RELAY
            assert await _echo_once(a, b, b"first bytes") == b"setyb tsrif"
            await _wait_for(
                lambda: a.route == Route.DIRECT and b.route == Route.DIRECT, "upgrade to direct"
            )
            assert a.time_to_direct() is not None
            relayed_before = a.link.sent[Route.RELAY]
            assert await _echo_once(a, b, b"now direct") == b"tcerid won"
            assert a.link.sent[Route.RELAY] == relayed_before  # nothing more went by relay
            assert a.link.sent[Route.DIRECT] > 0
            assert b.link.received[Route.DIRECT] > 0
            assert a.mapping == MappingBehaviour.INDEPENDENT  # loopback: no NAT
            kinds = {c.kind for c in a.remote_candidates}
            assert kinds == {CandidateKind.HOST, CandidateKind.RELAYED}
            await a.close()
            await b.close()

    run(pki, body)


def test_relay_policy_never_goes_direct(pki: Pki) -> None:
    async def body(world: World) -> None:
        async with (
            world.node("alice.bank.hypermesh", policy="relay") as alice,
            world.node("bob.bank.hypermesh", policy="relay") as bob,
        ):
            a, b = await _pair(alice, bob)
            for n in range(5):
                assert await _echo_once(a, b, b"%d" % n) == (b"%d" % n)[::-1]
            assert (a.route, b.route) == (Route.RELAY, Route.RELAY)
            assert (a.link.sent[Route.DIRECT], b.link.sent[Route.DIRECT]) == (0, 0)
            assert {c.kind for c in a.local_candidates} == {CandidateKind.RELAYED}
            await a.close()
            await b.close()

    run(pki, body)


def test_without_a_relay_the_connection_waits_for_the_checks(pki: Pki) -> None:
    async def body(world: World) -> None:
        async with (
            world.node("alice.bank.hypermesh", turn_server=None) as alice,
            world.node("bob.bank.hypermesh", turn_server=None) as bob,
        ):
            a, b = await _pair(alice, bob)
            assert [c.route for c in a.link.changes] == [Route.DIRECT]
            assert await _echo_once(b, a, b"direct only") == b"ylno tcerid"
            await a.close()
            await b.close()

    run(pki, body)


def test_unknown_peer_is_refused_by_the_rendezvous(pki: Pki) -> None:
    async def body(world: World) -> None:
        async with world.node("alice.bank.hypermesh") as alice:
            with pytest.raises(PeerNotRegistered):
                await alice.connect(b"\x01" * 32, timeout=10)
            assert alice._links == {}

    run(pki, body)


def test_garbage_signals_are_ignored_and_the_agent_keeps_working(pki: Pki) -> None:
    async def body(world: World) -> None:
        async with (
            world.node("alice.bank.hypermesh") as alice,
            world.node("bob.bank.hypermesh") as bob,
        ):
            for junk in (b"", b"{", b"[]", b'{"v":1}', b"\xff" * 100):
                await alice.rendezvous.send(bob.rendezvous.peer_id, junk)
            a, b = await _pair(alice, bob)
            assert await _echo_once(a, b, b"still fine") == b"enif llits"
            await a.close()
            await b.close()

    run(pki, body)


# --- the description codec ---------------------------------------------------------------------

_ice = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/", min_size=1
)
_candidates = st.lists(
    st.builds(
        lambda kind, ip, port, priority, foundation: Candidate(
            kind, (ip, port), priority, foundation, None
        ),
        st.sampled_from(list(CandidateKind)),
        st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)),
        st.integers(1, 65535),
        st.integers(1, 2**31 - 1),
        st.text(
            alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64
        ),
    ),
    max_size=MAX_CANDIDATES,
    unique_by=lambda c: (c.kind, c.address),
)


@given(
    kind=st.sampled_from(list(DescriptionKind)),
    link=st.binary(min_size=16, max_size=16),
    generation=st.integers(0, 2**31 - 1),
    ufrag=_ice.filter(lambda s: 4 <= len(s) <= 32),
    pwd=_ice.filter(lambda s: 22 <= len(s) <= 64),
    mapping=st.sampled_from(list(MappingBehaviour)),
    candidates=_candidates,
)
def test_descriptions_round_trip(
    kind: DescriptionKind,
    link: bytes,
    generation: int,
    ufrag: str,
    pwd: str,
    mapping: MappingBehaviour,
    candidates: list[Candidate],
) -> None:
    description = Description(kind, link, generation, ufrag, pwd, mapping, tuple(candidates))
    assert decode_description(encode_description(description)) == description


@given(st.binary(max_size=300))
def test_decoding_arbitrary_bytes_only_raises_signalling_error(data: bytes) -> None:
    with pytest.raises(SignallingError) as caught:
        decode_description(data)  # a random valid description is astronomically unlikely
    assert caught.value.reason


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: {**d, "v": 2}, "version 2 is not 1"),
        (lambda d: {**d, "extra": 1}, "keys must be exactly"),
        (lambda d: {**d, "link": "00"}, "link must be 32 lowercase hex digits"),
        (lambda d: {**d, "generation": -1}, "generation -1 out of range"),
        (lambda d: {**d, "generation": True}, "generation must be an integer"),
        (lambda d: {**d, "ufrag": "a b c d"}, "ufrag must be 4..32 ICE characters"),
        (lambda d: {**d, "pwd": "short"}, "pwd must be 22..64 ICE characters"),
        (lambda d: {**d, "kind": "bye"}, "'bye' is not a valid DescriptionKind"),
        (lambda d: {**d, "candidates": [["host", "example.com", 1, 1, "f"]]}, "not an IP"),
        (lambda d: {**d, "candidates": [["host", "10.0.0.1", 0, 1, "f"]]}, "port 0 out of"),
        (lambda d: {**d, "candidates": [["host", "10.0.0.1", 1, 1, "f"]] * 2}, "duplicate"),
        (lambda d: {**d, "candidates": [["x", "10.0.0.1", 1, 1, "f"]]}, "unknown candidate"),
        (lambda d: {**d, "candidates": [["host", "10.0.0.1", 1]]}, "list of 5 items"),
        (
            lambda d: {**d, "candidates": [["host", "10.0.0.1", p, 1, "f"] for p in range(1, 40)]},
            "more than 32 candidates",
        ),
    ],
)
def test_bad_descriptions_are_refused_with_a_reason(
    mutate: Callable[[dict[str, object]], dict[str, object]], reason: str
) -> None:
    import json

    good = Description(
        DescriptionKind.OFFER,
        b"\x00" * 16,
        0,
        "abcd",
        "a" * 22,
        MappingBehaviour.UNKNOWN,
        (Candidate.make(CandidateKind.HOST, ("10.0.0.1", 5000)),),
    )
    document = json.loads(encode_description(good))
    with pytest.raises(SignallingError) as caught:
        decode_description(json.dumps(mutate(document)).encode())
    assert reason in caught.value.reason


def test_oversize_description_is_refused() -> None:
    with pytest.raises(SignallingError, match="exceeds 8192"):
        decode_description(b" " * 9000)


def test_a_peer_cannot_make_a_node_open_links_without_bound(pki: Pki) -> None:
    async def body(world: World) -> None:
        async with (
            world.node("alice.bank.hypermesh", max_links_per_peer=2) as alice,
            world.node("bob.bank.hypermesh") as bob,
        ):
            bob_id = bob.rendezvous.peer_id
            for n in range(6):
                offer = Description(
                    DescriptionKind.OFFER,
                    bytes([n]) * 16,
                    0,
                    "abcd",
                    "a" * 22,
                    MappingBehaviour.UNKNOWN,
                    (Candidate.make(CandidateKind.HOST, ("127.0.0.1", 9)),),
                )
                await bob.rendezvous.send(alice.rendezvous.peer_id, encode_description(offer))
            await _wait_for(lambda: len(alice._links) == 2, "two links for bob")
            assert {peer for peer, _ in alice._links} == {bob_id}
            assert "that peer has 2 links open" in alice._refuse_offer(bob_id)
            # Another peer is not affected by bob's share.
            assert alice._refuse_offer(b"\x07" * 32) == ""

    run(pki, body)
