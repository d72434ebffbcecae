"""The rendezvous (signalling) service: the codec, the sans-IO core, and the server and client
over real STOQ connections on 127.0.0.1 with the session's TrustChain PKI (conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from stoq.config import StoqConfig
from stoq.connection import StoqConnection, Stream
from stoq.endpoint import Endpoint, connect
from stoq.errors import ConnectionLost, StreamClosed
from stoq.identity import NodeIdentity, PeerPolicy
from stoq.nat.rendezvous import (
    HELLO,
    MAX_PAYLOAD,
    MAX_REASON,
    RESET_REPLACED,
    Accepted,
    Ack,
    Error,
    ErrorCode,
    Forward,
    PayloadTooLarge,
    PeerNotRegistered,
    RateLimited,
    Refused,
    Registered,
    RendezvousClient,
    RendezvousCore,
    RendezvousDecodeError,
    RendezvousError,
    RendezvousRefused,
    RendezvousServer,
    Reply,
    Send,
    Signal,
    decode_client_message,
    decode_server_message,
    encode_ack,
    encode_error,
    encode_registered,
    encode_send,
    encode_signal,
)
from trustchain.ca.authority import CertificateAuthority, Issued
from trustchain.ca.trust import TrustAnchor, TrustStore
from trustchain.crypto.keystore import KdfParams, KeyStore

Pki = Any  # conftest.Pki: the session PKI fixture
SERVER_NAME = "node1.bank.hypermesh"  # conftest.py's server identity

A = bytes(range(32))
B = bytes(range(100, 132))


# --- the codec ----------------------------------------------------------------------------------


def test_exact_bytes_of_every_message() -> None:
    assert encode_send(Send(7, B, b"hi")) == b"\x01\x00\x00\x00\x07" + B + b"hi"
    assert encode_registered(Registered(A)) == b"\x04" + A
    assert encode_ack(Ack(0x01020304)) == b"\x05\x01\x02\x03\x04"
    assert encode_error(Error(9, ErrorCode.SELF, "nö")) == b"\x03\x00\x00\x00\x09\x05n\xc3\xb6"
    assert encode_signal(Signal(A, b"")) == b"\x02" + A
    assert decode_client_message(b"\x01\xff\xff\xff\xff" + B) == Send(0xFFFFFFFF, B, b"")
    assert decode_server_message(b"\x03\x00\x00\x00\x00\xc8") == Error(0, 200, "")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "an empty message"),
        (b"\x02" + A, "message type SIGNAL is not sent by clients"),
        (b"\x7f", "message type 0x7f is not sent by clients"),
        (b"\x01\x00\x00\x00\x01" + A[:31], "a SEND needs at least 37 bytes, not 36"),
    ],
)
def test_client_message_decode_errors(data: bytes, reason: str) -> None:
    with pytest.raises(RendezvousDecodeError) as caught:
        decode_client_message(data)
    assert str(caught.value) == reason


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "an empty message"),
        (b"\x01\x00\x00\x00\x01" + A, "message type SEND is not sent by servers"),
        (b"\x00", "message type 0x00 is not sent by servers"),
        (b"\x04" + A + b"x", "a REGISTERED is 33 bytes, not 34"),
        (b"\x05\x00\x00\x00", "an ACK is 5 bytes, not 4"),
        (b"\x03\x00\x00\x00\x01", "an ERROR needs at least 6 bytes, not 5"),
        (b"\x03\x00\x00\x00\x01\x01" + b"x" * 257, "an ERROR reason of 257 bytes exceeds 256"),
        (b"\x02" + A[:31], "a SIGNAL needs at least 33 bytes, not 32"),
    ],
)
def test_server_message_decode_errors(data: bytes, reason: str) -> None:
    with pytest.raises(RendezvousDecodeError) as caught:
        decode_server_message(data)
    assert str(caught.value) == reason


def test_error_reason_must_be_utf8() -> None:
    with pytest.raises(RendezvousDecodeError, match="an ERROR reason is not UTF-8"):
        decode_server_message(b"\x03\x00\x00\x00\x01\x01\xff")


def test_values_are_checked() -> None:
    with pytest.raises(RendezvousError, match="to_peer_id must be 32 bytes, not 31"):
        Send(1, A[:31], b"")
    with pytest.raises(RendezvousError, match="seq 4294967296 is not a u32"):
        Ack(1 << 32)
    with pytest.raises(RendezvousError, match="error code 256 is not a u8"):
        Error(1, 256, "")
    with pytest.raises(RendezvousError, match="a 257-byte reason exceeds 256 bytes"):
        Error(1, 1, "é" * 128 + "x")
    with pytest.raises(RendezvousError, match="from_peer_id must be 32 bytes, not 33"):
        Signal(A + b"x", b"")


@given(st.binary(max_size=300))
def test_decoders_raise_only_decode_errors(data: bytes) -> None:
    for decode in (decode_client_message, decode_server_message):
        try:
            message = decode(data)
        except RendezvousDecodeError:
            continue
        assert type(message) in (Send, Registered, Ack, Error, Signal)


_ids = st.binary(min_size=32, max_size=32)
_seqs = st.integers(0, 0xFFFFFFFF)
_payloads = st.binary(max_size=MAX_PAYLOAD)
_reasons = st.text(max_size=64)


@given(_seqs, _ids, _payloads)
def test_send_round_trip(seq: int, peer_id: bytes, payload: bytes) -> None:
    message = Send(seq, peer_id, payload)
    assert decode_client_message(encode_send(message)) == message


@given(
    st.one_of(
        st.builds(Registered, _ids),
        st.builds(Ack, _seqs),
        st.builds(Error, _seqs, st.integers(0, 255), _reasons),
        st.builds(Signal, _ids, _payloads),
    )
)
def test_server_message_round_trip(message: Registered | Ack | Error | Signal) -> None:
    encoders: dict[type, Callable[[Any], bytes]] = {
        Registered: encode_registered,
        Ack: encode_ack,
        Error: encode_error,
        Signal: encode_signal,
    }
    assert decode_server_message(encoders[type(message)](message)) == message


# --- the sans-IO core ---------------------------------------------------------------------------


def _decoded_error(reply: object) -> Error:
    assert isinstance(reply, Reply)
    error = decode_server_message(reply.message)
    assert isinstance(error, Error)
    return error


def test_core_registers_forwards_and_checks_in_order() -> None:
    core: RendezvousCore[str] = RendezvousCore(max_payload=10)
    assert core.hello(A, "a", HELLO) == Accepted(encode_registered(Registered(A)), None)
    assert core.hello(B, "b", HELLO) == Accepted(encode_registered(Registered(B)), None)
    assert core.registered == {A, B}

    forward = core.on_message(A, "conn-a", encode_send(Send(3, B, b"cand")), 0.0)
    assert forward == Forward("b", 3, encode_signal(Signal(A, b"cand")), encode_ack(Ack(3)))

    too_large = _decoded_error(core.on_message(A, "conn-a", encode_send(Send(4, B, b"x" * 11)), 0))
    assert (too_large.seq, too_large.code) == (4, ErrorCode.TOO_LARGE)
    assert too_large.reason == "a 11-byte payload exceeds 10 bytes"
    itself = _decoded_error(core.on_message(A, "conn-a", encode_send(Send(5, A, b"")), 0.0))
    assert (itself.seq, itself.code, itself.reason) == (
        5,
        ErrorCode.SELF,
        "a peer cannot signal itself",
    )
    unknown = bytes(32)
    missing = _decoded_error(core.on_message(A, "conn-a", encode_send(Send(6, unknown, b"")), 0))
    assert (missing.seq, missing.code) == (6, ErrorCode.UNKNOWN_PEER)
    assert missing.reason == "peer 0000000000000000... is not registered"
    short = _decoded_error(core.on_message(A, "conn-a", b"\x01\x00\x00\x00\x08abc", 0.0))
    assert (short.seq, short.code) == (8, ErrorCode.MALFORMED)
    assert short.reason == "a SEND needs at least 37 bytes, not 8"
    junk = _decoded_error(core.on_message(A, "conn-a", b"\x09", 0.0))
    assert (junk.seq, junk.code) == (0, ErrorCode.MALFORMED)


def test_core_rate_limit_is_per_connection_and_refills() -> None:
    core: RendezvousCore[str] = RendezvousCore(rate=2.0, burst=3)
    core.hello(A, "a", HELLO)
    core.hello(B, "b", HELLO)
    send = encode_send(Send(1, B, b""))
    for _ in range(3):
        assert isinstance(core.on_message(A, "conn-a", send, 100.0), Forward)
    limited = _decoded_error(core.on_message(A, "conn-a", send, 100.0))
    assert (limited.seq, limited.code) == (1, ErrorCode.RATE_LIMITED)
    assert limited.reason == "over the limit of 2 messages per second (bursts of 3)"
    # Another connection has its own bucket; half a second later one token is back.
    assert isinstance(core.on_message(A, "conn-a2", send, 100.0), Forward)
    assert isinstance(core.on_message(A, "conn-a", send, 100.5), Forward)
    assert isinstance(core.on_message(A, "conn-a", send, 100.5), Reply)
    core.forget("conn-a")
    assert isinstance(core.on_message(A, "conn-a", send, 100.5), Forward)


def test_core_hello_replacement_capacity_and_stale_unregister() -> None:
    core: RendezvousCore[str] = RendezvousCore(max_peers=1)
    refused = core.hello(A, "a1", b"stoq/1 rendezvouz")
    assert isinstance(refused, Refused)
    assert refused.reason == "expected the hello 'stoq/1 rendezvous', got 17 other bytes"
    assert decode_server_message(refused.reply) == Error(0, ErrorCode.MALFORMED, refused.reason)
    assert isinstance(core.hello(A, "a1", HELLO), Accepted)
    full = core.hello(B, "b", HELLO)
    assert isinstance(full, Refused)
    assert _decoded_error(Reply(full.reply)).code == ErrorCode.RATE_LIMITED
    again = core.hello(A, "a2", HELLO)
    assert isinstance(again, Accepted)
    assert again.replaced == "a1"
    assert core.unregister(A, "a1") is False  # the replaced handle no longer owns the id
    assert core.registered == {A}
    assert core.unregister(A, "a2") is True
    assert core.registered == frozenset()


def test_core_limits_are_checked() -> None:
    with pytest.raises(RendezvousError, match=r"max_payload must be 0\.\.16384"):
        RendezvousCore(max_payload=MAX_PAYLOAD + 1)
    with pytest.raises(RendezvousError, match="rate > 0 and burst >= 1"):
        RendezvousCore(rate=0)


def test_long_reasons_are_cut_on_a_character_boundary() -> None:
    core: RendezvousCore[str] = RendezvousCore()
    core.hello(A, "a", HELLO)
    long_id_message = b"\x01\x00\x00\x00\x02" + "é".encode() * 400
    error = _decoded_error(core.on_message(A, "c", long_id_message, 0.0))
    assert error.code == ErrorCode.UNKNOWN_PEER  # 800 bytes: the first 32 are the "id"
    assert len(error.reason.encode()) <= MAX_REASON


# --- over STOQ ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peers(pki: Pki) -> dict[str, NodeIdentity]:
    return {name: pki.node(f"{name}.bank.hypermesh") for name in ("alice", "bob", "carol")}


def run(coroutine: Awaitable[None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coroutine, timeout=60)

    asyncio.run(bounded())


@contextlib.asynccontextmanager
async def rendezvous(
    pki: Pki, identity: NodeIdentity, **limits: Any
) -> AsyncIterator[tuple[RendezvousServer, int]]:
    endpoint = await Endpoint.listen(pki.config(identity), "127.0.0.1", 0)
    server = await RendezvousServer.serve(endpoint, **limits)
    try:
        yield server, endpoint.port
    finally:
        await server.close()
        await endpoint.close()


async def registered_raw(
    pki: Pki, identity: NodeIdentity, port: int
) -> tuple[StoqConnection, Stream]:
    """A connection and a raw rendezvous stream on it, past the hello and REGISTERED."""
    connection = await dial(pki, identity, port)
    raw = await connection.open_stream()
    await raw.send(HELLO)
    assert decode_server_message(await raw.receive()) == Registered(identity.peer_id)
    return connection, raw


async def dial(pki: Pki, identity: NodeIdentity, port: int) -> StoqConnection:
    return await connect(pki.config(identity), "127.0.0.1", port, server_name=SERVER_NAME)


async def join(pki: Pki, identity: NodeIdentity, port: int) -> RendezvousClient:
    return await RendezvousClient.open(await dial(pki, identity, port))


async def eventually(predicate: Callable[[], bool]) -> None:
    """Wait (at most about 10 s) until ``predicate`` holds: state another process changes."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def test_two_peers_signal_each_other_with_authenticated_ids(
    pki: Pki, server_identity: NodeIdentity, peers: dict[str, NodeIdentity]
) -> None:
    alice_id, bob_id = peers["alice"].peer_id, peers["bob"].peer_id

    async def main() -> None:
        async with rendezvous(pki, server_identity) as (server, port):
            alice = await join(pki, peers["alice"], port)
            bob = await join(pki, peers["bob"], port)
            assert (alice.peer_id, bob.peer_id) == (alice_id, bob_id)
            assert server.registered == {alice_id, bob_id}

            await alice.send(bob_id, b"candidates of alice")
            assert await bob.receive() == Signal(alice_id, b"candidates of alice")
            await bob.send(alice_id, b"")
            await bob.send(alice_id, os.urandom(MAX_PAYLOAD))
            first, second = await alice.receive(), await alice.receive()
            assert (first.from_peer_id, first.payload) == (bob_id, b"")
            assert (second.from_peer_id, len(second.payload)) == (bob_id, MAX_PAYLOAD)

            # Concurrent sends are matched to their ACKs by seq.
            payloads = {f"m{i}".encode() for i in range(30)}
            await asyncio.gather(*(alice.send(bob_id, p) for p in payloads))
            received = [await bob.receive() for _ in payloads]
            assert {s.payload for s in received} == payloads
            assert {s.from_peer_id for s in received} == {alice_id}

            await alice.close()
            assert [s async for s in alice] == []  # iteration ends after close
            await bob.close()

    run(main())


def test_refusals_are_typed_and_the_registration_survives_them(
    pki: Pki, server_identity: NodeIdentity, peers: dict[str, NodeIdentity]
) -> None:
    alice_id, bob_id = peers["alice"].peer_id, peers["bob"].peer_id
    nobody = bytes(32)

    async def main() -> None:
        async with rendezvous(pki, server_identity) as (_, port):
            alice = await join(pki, peers["alice"], port)
            bob = await join(pki, peers["bob"], port)

            with pytest.raises(PeerNotRegistered) as unknown:
                await alice.send(nobody, b"x")
            assert unknown.value.code == ErrorCode.UNKNOWN_PEER
            assert unknown.value.seq == 1
            assert unknown.value.reason == "peer 0000000000000000... is not registered"

            with pytest.raises(RendezvousRefused) as itself:
                await alice.send(alice_id, b"x")
            assert type(itself.value) is RendezvousRefused
            assert (itself.value.code, itself.value.reason) == (
                ErrorCode.SELF,
                "a peer cannot signal itself",
            )
            assert str(itself.value) == (
                "the rendezvous server refused (SELF): a peer cannot signal itself"
            )

            with pytest.raises(PayloadTooLarge) as large:
                await alice.send(bob_id, bytes(MAX_PAYLOAD + 1))
            assert large.value.code == ErrorCode.TOO_LARGE
            assert large.value.reason == "a 16385-byte payload exceeds 16384 bytes"

            with pytest.raises(RendezvousError, match="to_peer_id must be 32 bytes"):
                await alice.send(bob_id[:16], b"x")

            await alice.send(bob_id, b"still registered")
            assert await bob.receive() == Signal(alice_id, b"still registered")

    run(main())


def test_malformed_messages_on_a_raw_stream(
    pki: Pki, server_identity: NodeIdentity, peers: dict[str, NodeIdentity]
) -> None:
    alice_id, bob_id = peers["alice"].peer_id, peers["bob"].peer_id

    async def main() -> None:
        async with rendezvous(pki, server_identity) as (_, port):
            bob = await join(pki, peers["bob"], port)
            connection, raw = await registered_raw(pki, peers["alice"], port)

            cases = [
                (b"", 0, "an empty message"),
                (b"\x02" + bob_id, 0, "message type SIGNAL is not sent by clients"),
                (
                    b"\x01\x00\x00\x00\x2a" + bob_id[:5],
                    42,
                    "a SEND needs at least 37 bytes, not 10",
                ),
            ]
            for data, seq, reason in cases:
                await raw.send(data)
                answer = decode_server_message(await raw.receive())
                assert answer == Error(seq, ErrorCode.MALFORMED, reason)

            # The same stream still works, and so does everyone else.
            await raw.send(encode_send(Send(7, bob_id, b"after junk")))
            assert decode_server_message(await raw.receive()) == Ack(7)
            assert await bob.receive() == Signal(alice_id, b"after junk")
            await bob.send(alice_id, b"back")
            assert decode_server_message(await raw.receive()) == Signal(bob_id, b"back")
            await connection.close()

    run(main())


def test_a_finished_stream_gets_its_answers_then_unregisters(
    pki: Pki, server_identity: NodeIdentity, peers: dict[str, NodeIdentity]
) -> None:
    alice_id, bob_id = peers["alice"].peer_id, peers["bob"].peer_id

    async def main() -> None:
        async with rendezvous(pki, server_identity) as (server, port):
            bob = await join(pki, peers["bob"], port)
            _, raw = await registered_raw(pki, peers["alice"], port)
            await raw.send(encode_send(Send(9, bob_id, b"last words")), end_stream=True)
            assert decode_server_message(await raw.receive()) == Ack(9)
            with pytest.raises(StreamClosed):
                await raw.receive()
            assert await bob.receive() == Signal(alice_id, b"last words")
            await eventually(lambda: alice_id not in server.registered)
            with pytest.raises(PeerNotRegistered):
                await bob.send(alice_id, b"gone")

    run(main())


def test_a_bad_hello_ends_that_stream_only(
    pki: Pki, server_identity: NodeIdentity, peers: dict[str, NodeIdentity]
) -> None:
    alice_id, bob_id = peers["alice"].peer_id, peers["bob"].peer_id

    async def main() -> None:
        async with rendezvous(pki, server_identity) as (server, port):
            bob = await join(pki, peers["bob"], port)
            connection = await dial(pki, peers["alice"], port)
            raw = await connection.open_stream()
            await raw.send(b"stoq/1 hello")
            reason = "expected the hello 'stoq/1 rendezvous', got 12 other bytes"
            assert decode_server_message(await raw.receive()) == Error(
                0, ErrorCode.MALFORMED, reason
            )
            with pytest.raises(StreamClosed):
                await raw.receive()
            raw.reset()
            assert server.registered == {bob_id}

            # The connection is fine: a proper hello on a new stream registers.
            alice = await RendezvousClient.open(connection)
            await bob.send(alice_id, b"welcome")
            assert await alice.receive() == Signal(bob_id, b"welcome")

    run(main())


def test_registering_again_replaces_the_old_registration(
    pki: Pki, server_identity: NodeIdentity, peers: dict[str, NodeIdentity]
) -> None:
    alice_id, bob_id = peers["alice"].peer_id, peers["bob"].peer_id

    async def main() -> None:
        async with rendezvous(pki, server_identity) as (server, port):
            bob = await join(pki, peers["bob"], port)
            old = await join(pki, peers["alice"], port)
            new = await join(pki, peers["alice"], port)  # a second connection, same peer id
            assert server.registered == {alice_id, bob_id}

            ended = (
                rf"^the rendezvous stream ended: stream \d+ reset by the peer \({RESET_REPLACED}\)$"
            )
            with pytest.raises(ConnectionLost) as lost:
                await old.receive()
            assert re.match(ended, lost.value.reason), lost.value.reason
            assert old.closed
            with pytest.raises(ConnectionLost):
                await old.send(bob_id, b"x")

            await bob.send(alice_id, b"to the newer one")
            assert await new.receive() == Signal(bob_id, b"to the newer one")
            await new.send(bob_id, b"from the newer one")
            assert await bob.receive() == Signal(alice_id, b"from the newer one")

    run(main())


def test_leaving_unregisters(
    pki: Pki, server_identity: NodeIdentity, peers: dict[str, NodeIdentity]
) -> None:
    alice_id, bob_id, carol_id = (peers[n].peer_id for n in ("alice", "bob", "carol"))

    async def main() -> None:
        async with rendezvous(pki, server_identity) as (server, port):
            alice = await join(pki, peers["alice"], port)
            bob = await join(pki, peers["bob"], port)
            carol = await join(pki, peers["carol"], port)

            # A disconnect (the whole connection) unregisters...
            bob_connection = bob.connection
            await bob_connection.close(0, "bye")
            await eventually(lambda: bob_id not in server.registered)
            with pytest.raises(PeerNotRegistered):
                await alice.send(bob_id, b"anyone there?")
            with pytest.raises(ConnectionLost):
                await bob.receive()

            # ... and so does closing the client (the connection stays up).
            await carol.close()
            await eventually(lambda: carol_id not in server.registered)
            with pytest.raises(PeerNotRegistered):
                await alice.send(carol_id, b"anyone there?")
            with pytest.raises(ConnectionLost, match="the rendezvous client was closed"):
                await carol.send(alice_id, b"x")
            assert server.registered == {alice_id}

    run(main())


def test_rate_limit_with_a_small_bucket(
    pki: Pki, server_identity: NodeIdentity, peers: dict[str, NodeIdentity]
) -> None:
    alice_id, bob_id = peers["alice"].peer_id, peers["bob"].peer_id

    async def main() -> None:
        # One token per 1000 s: nothing refills during the test.
        async with rendezvous(pki, server_identity, rate=0.001, burst=3) as (_, port):
            alice = await join(pki, peers["alice"], port)
            bob = await join(pki, peers["bob"], port)
            for index in range(3):
                await alice.send(bob_id, bytes([index]))
            with pytest.raises(RateLimited) as limited:
                await alice.send(bob_id, b"one too many")
            assert limited.value.reason == (
                "over the limit of 0.001 messages per second (bursts of 3)"
            )
            assert [(await bob.receive()).payload for _ in range(3)] == [b"\0", b"\1", b"\2"]
            await bob.send(alice_id, b"bob has his own bucket")
            assert await alice.receive() == Signal(bob_id, b"bob has his own bucket")

    run(main())


def test_a_full_server_refuses_new_peers(
    pki: Pki, server_identity: NodeIdentity, peers: dict[str, NodeIdentity]
) -> None:
    async def main() -> None:
        async with rendezvous(pki, server_identity, max_peers=1) as (server, port):
            await join(pki, peers["alice"], port)
            with pytest.raises(RateLimited) as full:
                await join(pki, peers["bob"], port)
            assert full.value.reason == "the rendezvous server is full (1 peers registered)"
            assert server.registered == {peers["alice"].peer_id}

    run(main())


def test_server_close_ends_every_registration(
    pki: Pki, server_identity: NodeIdentity, peers: dict[str, NodeIdentity]
) -> None:
    async def main() -> None:
        async with rendezvous(pki, server_identity) as (server, port):
            alice = await join(pki, peers["alice"], port)
            waiting = asyncio.ensure_future(alice.receive())
            await server.close()
            with pytest.raises(ConnectionLost):
                await waiting
            assert server.registered == frozenset()

    run(main())


# --- the command --------------------------------------------------------------------------------

PASSPHRASE = "rendezvous test"
#: The weakest Argon2id the key store opens without allow_weak_kdf (the command does not pass it).
KDF = KdfParams(
    time_cost=KdfParams.MIN_TIME_COST, memory_cost_kib=KdfParams.MIN_MEMORY_KIB, parallelism=1
)


@dataclass(frozen=True)
class CliPki:
    home: Path
    root_pem: Path
    server_key: str
    server_chain: Path
    policy: PeerPolicy
    clients: tuple[NodeIdentity, NodeIdentity]


def _pem(path: Path, issued: Issued) -> Path:
    certificates = (issued.certificate, *issued.chain)
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates))
    return path


@pytest.fixture(scope="module")
def cli_pki(tmp_path_factory: pytest.TempPathFactory) -> CliPki:
    base = tmp_path_factory.mktemp("rendezvous-cli")
    home = base / "keys"
    with KeyStore.open(home, passphrase=PASSPHRASE.encode(), kdf_params=KDF) as store:
        ca = CertificateAuthority(base / "ca", store)
        try:
            root = ca.init_root("hypermesh-root")
            bank = ca.issue_intermediate("bank", "bank.hypermesh")
            server = ca.issue("bank", "node", SERVER_NAME, dns_names=[SERVER_NAME])
            clients = [
                ca.issue("bank", "node", name, dns_names=[name])
                for name in ("alice.bank.hypermesh", "bob.bank.hypermesh")
            ]
        finally:
            ca.close()
        identities = tuple(
            NodeIdentity.from_keystore(store, c.key_name or "", (c.certificate, *c.chain))
            for c in clients
        )
    assert server.key_name is not None
    root_pem = base / "root.pem"
    root_pem.write_bytes(root.certificate.public_bytes(serialization.Encoding.PEM))
    trust = TrustStore([TrustAnchor(root.certificate, "root")], certificates=[bank.certificate])
    return CliPki(
        home=home,
        root_pem=root_pem,
        server_key=server.key_name,
        server_chain=_pem(base / "server.pem", server),
        policy=PeerPolicy(trust),
        clients=(identities[0], identities[1]),
    )


def _command(cli_pki: CliPki, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "stoq", "rendezvous", "--listen", "127.0.0.1:0",
        "--home", str(cli_pki.home), "--key", cli_pki.server_key,
        "--chain", str(cli_pki.server_chain), "--trust", str(cli_pki.root_pem),
        *extra,
    ]  # fmt: skip


_ENV = {**os.environ, "TRUSTCHAIN_PASSPHRASE": PASSPHRASE}


@pytest.fixture
def rendezvous_process(cli_pki: CliPki) -> Iterator[tuple[subprocess.Popen[str], str]]:
    argv = _command(cli_pki, "--namespace", "bank.hypermesh")
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_ENV,
    )
    assert process.stdout is not None
    try:
        yield process, process.stdout.readline().rstrip("\n")
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_rendezvous_command(
    cli_pki: CliPki, rendezvous_process: tuple[subprocess.Popen[str], str]
) -> None:
    process, line = rendezvous_process
    assert line.startswith("listening 127.0.0.1:"), line
    port = int(line.rsplit(":", 1)[1])
    assert port > 0
    alice, bob = cli_pki.clients

    async def main() -> None:
        clients = []
        for identity in (alice, bob):
            config = StoqConfig(identity=identity, policy=cli_pki.policy)
            connection = await connect(config, "127.0.0.1", port, server_name=SERVER_NAME)
            clients.append(await RendezvousClient.open(connection))
        await clients[0].send(bob.peer_id, b"over the command")
        assert await clients[1].receive() == Signal(alice.peer_id, b"over the command")
        for client in clients:
            await client.close()
            await client.connection.close()

    run(main())
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr


def test_rendezvous_command_reports_bad_arguments(cli_pki: CliPki) -> None:
    result = subprocess.run(
        _command(cli_pki, "--rate-limit", "0"),
        capture_output=True,
        text=True,
        timeout=30,
        env=_ENV,
    )
    assert result.returncode == 1
    assert result.stderr == "stoq: a rate limit needs rate > 0 and burst >= 1\n"
    assert result.stdout == ""
