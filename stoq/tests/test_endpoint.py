"""STOQ end to end on loopback: real QUIC endpoints (aioquic and qh3), real TrustChain PKI.

Every test runs a listening :class:`Endpoint` on the dual-stack wildcard and connects to it over
``::1`` or ``127.0.0.1``. Nothing is mocked: certificates come from a real CA, the post-quantum
session runs the hybrid handshake, every byte of application data is sealed.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stoq.config import StoqConfig
from stoq.connection import StoqConnection, Stream
from stoq.endpoint import Endpoint, connect
from stoq.engine import available_engines
from stoq.errors import ConnectError, ConnectionLost, MessageTooLarge, PeerRejected, StreamClosed
from stoq.framing import LENGTH
from stoq.identity import NodeIdentity
from stoq.session import ERROR_MESSAGE_TOO_LARGE, ERROR_PEER_REJECTED

ENGINES = available_engines()
#: Handler tasks stay referenced until they finish (asyncio keeps only weak references).
_TASKS: set[asyncio.Future[None]] = set()


def _spawn(coroutine: Awaitable[None]) -> None:
    task = asyncio.ensure_future(coroutine)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


SERVER_NAME = "node1.bank.hypermesh"  # as issued by conftest.py
CLIENT_NAME = "client1.bank.hypermesh"
Pki = Any  # conftest.Pki: the session PKI fixture


async def _echo(connection: StoqConnection) -> None:
    try:
        while True:
            stream = await connection.accept_stream()
            _spawn(_echo_stream(stream))
    except ConnectionLost:
        return


async def _echo_stream(stream: object) -> None:
    from stoq.connection import Stream

    assert isinstance(stream, Stream)
    try:
        async for message in stream:
            await stream.send(message)
        await stream.finish()
    except (StreamClosed, ConnectionLost):
        return


async def _serving(
    config: StoqConfig,
    body: Callable[[Endpoint], Awaitable[None]],
    *,
    on_accept: Callable[[StoqConnection], Awaitable[None]] = _echo,
) -> list[StoqConnection]:
    endpoint = await Endpoint.listen(config, "::", 0)
    accepted: list[StoqConnection] = []

    async def accept_loop() -> None:
        while True:
            connection = await endpoint.accept()
            accepted.append(connection)
            _spawn(on_accept(connection))

    server = asyncio.ensure_future(accept_loop())
    try:
        await asyncio.wait_for(body(endpoint), timeout=60)
    finally:
        server.cancel()
        await endpoint.close()
    return accepted


def run(coroutine: Awaitable[object]) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("host", ["::1", "127.0.0.1"])
def test_echo_over_both_families_with_mutual_identity(
    pki: Pki,
    server_identity: NodeIdentity,
    client_identity: NodeIdentity,
    engine: str,
    host: str,
) -> None:
    seen: dict[str, object] = {}

    async def body(endpoint: Endpoint) -> None:
        connection = await connect(
            pki.config(client_identity, engine=engine), host, endpoint.port, server_name=SERVER_NAME
        )
        stream = await connection.open_stream()
        messages = [os.urandom(n) for n in (0, 1, 1000, 70_000, 300_000)]
        for message in messages:
            await stream.send(message)
        echoed = [await stream.receive() for _ in messages]
        await stream.finish()
        with pytest.raises(StreamClosed):
            await stream.receive()
        seen.update(
            echoed=echoed == messages,
            peer=connection.peer.name,
            family=connection.family,
            channel=connection.channel.channel_id,
        )
        await connection.close()

    accepted = run(_serving(pki.config(server_identity, engine=engine), body))
    assert seen["echoed"] is True
    assert seen["peer"] == SERVER_NAME
    assert seen["family"] == (6 if ":" in host else 4)
    assert isinstance(accepted, list)
    assert [c.peer.name for c in accepted] == [CLIENT_NAME]
    # Both ends hold the same post-quantum channel.
    assert accepted[0].channel.channel_id == seen["channel"]


@pytest.mark.parametrize("engine", ENGINES)
def test_many_concurrent_streams_unidirectional_and_datagrams(
    pki: Pki, server_identity: NodeIdentity, client_identity: NodeIdentity, engine: str
) -> None:
    results: dict[str, object] = {}

    async def serve(connection: StoqConnection) -> None:
        try:
            while True:
                stream = await connection.accept_stream()
                if stream.unidirectional:
                    total = sum([len(m) async for m in stream])
                    reply = await connection.open_stream(unidirectional=True)
                    await reply.send(total.to_bytes(8, "big"), end_stream=True)
                else:
                    _spawn(_echo_stream(stream))
        except ConnectionLost:
            return

    async def datagram_echo(connection: StoqConnection) -> None:
        await asyncio.gather(serve(connection), _datagrams(connection))

    async def _datagrams(connection: StoqConnection) -> None:
        try:
            while True:
                connection.send_datagram(await connection.receive_datagram())
        except ConnectionLost:
            return

    async def body(endpoint: Endpoint) -> None:
        connection = await connect(
            pki.config(client_identity, engine=engine),
            "::1",
            endpoint.port,
            server_name=SERVER_NAME,
        )

        async def one(index: int) -> bool:
            stream = await connection.open_stream()
            payload = index.to_bytes(4, "big") * (index + 1)
            await stream.send(payload)
            ok = await stream.receive() == payload
            await stream.finish()
            return ok

        results["streams"] = await asyncio.gather(*(one(i) for i in range(100)))
        uni = await connection.open_stream(unidirectional=True)
        for _ in range(10):
            await uni.send(b"x" * 10_000)
        await uni.finish()
        reply = await connection.accept_stream()
        results["uni_total"] = int.from_bytes(await reply.receive(), "big")
        with pytest.raises(StreamClosed):
            await uni.receive()
        # Datagrams are unreliable: send until one comes back (loopback rarely loses any).
        for _ in range(50):
            connection.send_datagram(b"ping-datagram")
            try:
                results["datagram"] = await asyncio.wait_for(connection.receive_datagram(), 0.2)
                break
            except TimeoutError:
                continue
        with pytest.raises(MessageTooLarge):
            connection.send_datagram(b"x" * (connection.max_datagram_payload + 1))
        await connection.close()

    run(_serving(pki.config(server_identity, engine=engine), body, on_accept=datagram_echo))
    assert results["streams"] == [True] * 100
    assert results["uni_total"] == 100_000
    assert results["datagram"] == b"ping-datagram"


@pytest.mark.parametrize("engine", ENGINES)
def test_streams_beyond_the_peers_limit_wait_for_credit(
    pki: Pki, server_identity: NodeIdentity, client_identity: NodeIdentity, engine: str
) -> None:
    """100 streams held open at once (plus the control stream), then 300 more in waves: opens
    past the peer's MAX_STREAMS wait for credit instead of failing in the engine."""
    results: dict[str, object] = {}

    async def answer_once(stream: Stream) -> None:
        await stream.send(await stream.receive(), end_stream=True)

    async def serve(connection: StoqConnection) -> None:
        try:
            while True:
                _spawn(answer_once(await connection.accept_stream()))
        except ConnectionLost:
            return

    async def body(endpoint: Endpoint) -> None:
        connection = await connect(
            pki.config(client_identity, engine=engine),
            "::1",
            endpoint.port,
            server_name=SERVER_NAME,
        )
        release = asyncio.Event()

        async def held(index: int) -> bool:
            # The server has ended its side first, so this side's finish() frees the slot at
            # once, before the server has even seen the FIN (let alone raised MAX_STREAMS).
            stream = await connection.open_stream()
            await stream.send(index.to_bytes(4, "big"))
            ok = await stream.receive() == index.to_bytes(4, "big")
            with pytest.raises(StreamClosed):
                await stream.receive()
            await release.wait()
            await stream.finish()
            return ok

        quick = held

        holders = [asyncio.ensure_future(held(i)) for i in range(100)]
        late = [asyncio.ensure_future(quick(100 + i)) for i in range(300)]
        await asyncio.sleep(0.2)
        results["late_done_while_held"] = sum(task.done() for task in late)
        release.set()
        results["held"] = await asyncio.gather(*holders)
        results["late"] = await asyncio.gather(*late)
        await connection.close()

    run(_serving(pki.config(server_identity, engine=engine), body, on_accept=serve))
    assert results["late_done_while_held"] == 0  # no slot while 100 streams are held open
    assert results["held"] == [True] * 100
    assert results["late"] == [True] * 300


@pytest.mark.parametrize("engine", ENGINES)
def test_writer_waits_at_the_high_water_mark(
    pki: Pki, server_identity: NodeIdentity, client_identity: NodeIdentity, engine: str
) -> None:
    high_water = 64 * 1024
    observed: list[int] = []

    async def body(endpoint: Endpoint) -> None:
        config = pki.config(client_identity, engine=engine, stream_high_water=high_water)
        connection = await connect(config, "::1", endpoint.port, server_name=SERVER_NAME)
        stream = await connection.open_stream(unidirectional=True)
        chunk = b"b" * 16_384
        for _ in range(200):
            await stream.send(chunk)
            observed.append(connection._engine.send_buffered(connection._quic, stream.stream_id))
        await stream.drain()
        observed.append(connection._engine.send_buffered(connection._quic, stream.stream_id))
        await connection.close()

    async def sink(connection: StoqConnection) -> None:
        try:
            stream = await connection.accept_stream()
            async for _ in stream:
                pass
        except ConnectionLost:
            return

    run(_serving(pki.config(server_identity, engine=engine), body, on_accept=sink))
    frame_size = 16_384 + 100
    # After every send the buffered amount was at most the mark plus the frame just written:
    # the writer waited whenever the peer had not acknowledged enough.
    assert max(observed[:-1]) <= high_water + frame_size
    assert observed[-1] == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_oversized_messages_are_refused_both_ways(
    pki: Pki, server_identity: NodeIdentity, client_identity: NodeIdentity, engine: str
) -> None:
    outcome: dict[str, object] = {}

    async def body(endpoint: Endpoint) -> None:
        config = pki.config(client_identity, engine=engine, max_message_size=1024)
        connection = await connect(config, "::1", endpoint.port, server_name=SERVER_NAME)
        stream = await connection.open_stream()
        with pytest.raises(MessageTooLarge):
            await stream.send(b"x" * 1025)
        # A hostile peer announces a record far above the server's limit (4 KiB): the server
        # refuses it from the length prefix alone and closes the connection.
        connection._send_stream_data(stream.stream_id, LENGTH.pack(1 << 30) + b"x" * 64, False)
        with pytest.raises(ConnectionLost) as info:
            await stream.receive()
        outcome["code"] = info.value.error_code
        # The endpoint keeps serving others.
        second = await connect(config, "::1", endpoint.port, server_name=SERVER_NAME)
        echo = await second.open_stream()
        await echo.send(b"still serving")
        outcome["second"] = await echo.receive()
        await second.close()

    run(_serving(pki.config(server_identity, engine=engine, max_message_size=4096), body))
    assert outcome["code"] == ERROR_MESSAGE_TOO_LARGE
    assert outcome["second"] == b"still serving"


def _connect_outcome(
    pki: Pki, server: StoqConfig, client: StoqConfig, server_name: str = SERVER_NAME
) -> BaseException | None:
    async def body(endpoint: Endpoint) -> None:
        connection = await connect(client, "::1", endpoint.port, server_name=server_name)
        await connection.close()

    try:
        run(_serving(server, body))
    except (PeerRejected, ConnectError) as exc:
        return exc
    return None


def test_server_with_revoked_certificate_is_refused(
    pki: Pki, client_identity: NodeIdentity
) -> None:
    name = "revoked-server.bank.hypermesh"
    issued = pki.ca.issue("bank", "node", name, dns_names=[name])
    revoked = pki.identity(issued)  # loaded before the CA revokes (and retires) the key
    pki.ca.revoke(issued.certificate.serial_number, "keyCompromise")
    error = _connect_outcome(pki, pki.config(revoked), pki.config(client_identity), name)
    assert isinstance(error, PeerRejected)
    assert "revoked" in str(error).lower()


def test_client_with_revoked_certificate_is_refused(
    pki: Pki, server_identity: NodeIdentity
) -> None:
    name = "revoked-client.bank.hypermesh"
    issued = pki.ca.issue("bank", "node", name, dns_names=[name])
    revoked = pki.identity(issued)
    pki.ca.revoke(issued.certificate.serial_number, "keyCompromise")
    error = _connect_outcome(pki, pki.config(server_identity), pki.config(revoked))
    assert isinstance(error, PeerRejected)
    assert "refused this node" in str(error)
    assert isinstance(error.__cause__, ConnectionLost)
    assert error.__cause__.error_code == ERROR_PEER_REJECTED


def test_expired_server_certificate_is_refused(
    pki: Pki, server_identity: NodeIdentity, client_identity: NodeIdentity
) -> None:
    later = datetime.now(UTC) + timedelta(days=3650)
    client = pki.config(client_identity, policy=pki.policy(clock=lambda: later))
    error = _connect_outcome(pki, pki.config(server_identity), client)
    assert isinstance(error, PeerRejected)
    assert "expired" in str(error).lower() or "valid" in str(error).lower()


def test_server_from_another_namespace_is_refused(pki: Pki, client_identity: NodeIdentity) -> None:
    outsider = pki.node("node1.other.hypermesh", issuer="other")
    error = _connect_outcome(
        pki, pki.config(outsider), pki.config(client_identity), "node1.other.hypermesh"
    )
    assert isinstance(error, PeerRejected)


def test_self_signed_server_is_refused(
    pki: Pki, client_identity: NodeIdentity, tmp_path: object
) -> None:
    from pathlib import Path

    from trustchain.ca.authority import CertificateAuthority

    assert isinstance(tmp_path, Path)
    stranger = CertificateAuthority(tmp_path / "stranger", pki.store)
    try:
        root = stranger.init_root("node1.bank.hypermesh")
        assert root.key_name is not None
        self_signed = NodeIdentity.from_keystore(pki.store, root.key_name, (root.certificate,))
    finally:
        stranger.close()
    error = _connect_outcome(pki, pki.config(self_signed), pki.config(client_identity))
    assert isinstance(error, PeerRejected)


@pytest.mark.parametrize("engine", ENGINES)
def test_garbage_datagrams_never_hurt_the_endpoint(
    pki: Pki, server_identity: NodeIdentity, client_identity: NodeIdentity, engine: str
) -> None:
    stats: dict[str, int] = {}

    async def body(endpoint: Endpoint) -> None:
        config = pki.config(client_identity, engine=engine)
        connection = await connect(config, "::1", endpoint.port, server_name=SERVER_NAME)
        victim = endpoint.connections[0]
        cids = list(endpoint._cids[victim])
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            rng = __import__("random").Random(1234)
            for index in range(3000):
                size = rng.choice([1, 5, 20, 100, 1200, 1500, rng.randrange(1, 2000)])
                data = bytearray(rng.randbytes(size))
                if index % 3 == 0 and size > 9:  # aimed at a live connection id
                    data[0] = 0x40 | (data[0] & 0x3F)
                    cid = cids[index % len(cids)]
                    data[1 : 1 + len(cid)] = cid
                elif index % 3 == 1 and size >= 1200:  # a fake Initial
                    data[0:5] = b"\xc0\x00\x00\x00\x01"
                    data[5] = 8
                sock.sendto(bytes(data), ("::1", endpoint.port))
                if index % 100 == 0:
                    await asyncio.sleep(0)
        finally:
            sock.close()
        await asyncio.sleep(0.2)
        stream = await connection.open_stream()
        await stream.send(b"after the storm")
        assert await stream.receive() == b"after the storm"
        stats["dropped"] = endpoint.dropped_datagrams
        stats["alive"] = int(not connection.closed)
        await connection.close()

    run(_serving(pki.config(server_identity, engine=engine), body))
    assert stats["alive"] == 1
    assert stats["dropped"] > 0


def test_close_reports_code_and_reason_to_the_peer(
    pki: Pki, server_identity: NodeIdentity, client_identity: NodeIdentity
) -> None:
    seen: dict[str, object] = {}

    async def closer(connection: StoqConnection) -> None:
        stream = await connection.accept_stream()
        await stream.receive()
        await connection.close(0x42, "maintenance")

    async def body(endpoint: Endpoint) -> None:
        connection = await connect(
            pki.config(client_identity), "::1", endpoint.port, server_name=SERVER_NAME
        )
        stream = await connection.open_stream()
        await stream.send(b"bye")
        with pytest.raises(ConnectionLost) as info:
            await stream.receive()
        seen["code"] = info.value.error_code
        seen["reason"] = info.value.reason
        with pytest.raises(ConnectionLost):
            await connection.open_stream()

    run(_serving(pki.config(server_identity), body, on_accept=closer))
    assert seen == {"code": 0x42, "reason": "maintenance"}


def test_idle_timeout_closes_and_keepalive_prevents_it(
    pki: Pki, server_identity: NodeIdentity, client_identity: NodeIdentity
) -> None:
    seen: dict[str, bool] = {}

    async def idle(connection: StoqConnection) -> None:
        await connection.wait_closed()

    async def body(endpoint: Endpoint) -> None:
        quiet = await connect(
            pki.config(client_identity, idle_timeout=1.0, keepalive=None),
            "::1",
            endpoint.port,
            server_name=SERVER_NAME,
        )
        alive = await connect(
            pki.config(client_identity, idle_timeout=1.0, keepalive=0.25),
            "::1",
            endpoint.port,
            server_name=SERVER_NAME,
        )
        await asyncio.wait_for(quiet.wait_closed(), timeout=10)
        seen["quiet_closed"] = quiet.closed
        seen["alive_open"] = not alive.closed
        await alive.close()

    # The server never pings: only the client's keepalive can keep a connection open.
    run(_serving(pki.config(server_identity, keepalive=None), body, on_accept=idle))
    assert seen == {"quiet_closed": True, "alive_open": True}


def test_nothing_listening_names_every_address(pki: Pki, client_identity: NodeIdentity) -> None:
    async def attempt() -> None:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
        probe.close()
        config = pki.config(client_identity, connect_timeout=2.0, attempt_delay=0.1)
        await connect(config, ["::1", "127.0.0.1"], port, server_name=SERVER_NAME)

    with pytest.raises(ConnectError) as info:
        run(attempt())
    tried = [address for address, _ in info.value.attempts]
    assert "::1" in tried
    assert "127.0.0.1" in tried
    assert "::1" in str(info.value)
    assert "127.0.0.1" in str(info.value)


@pytest.mark.parametrize("engine", ENGINES)
def test_streams_opened_back_to_back_are_distinct(
    pki: Pki, server_identity: NodeIdentity, client_identity: NodeIdentity, engine: str
) -> None:
    results: dict[str, object] = {}

    async def body(endpoint: Endpoint) -> None:
        connection = await connect(
            pki.config(client_identity, engine=engine),
            "::1",
            endpoint.port,
            server_name=SERVER_NAME,
        )
        first, second = await connection.open_stream(), await connection.open_stream()
        results["distinct"] = first.stream_id != second.stream_id
        await first.send(b"first")
        await second.send(b"second")
        results["pair"] = await asyncio.wait_for(
            asyncio.gather(first.receive(), second.receive()), timeout=5
        )
        await connection.close()

    run(_serving(pki.config(server_identity, engine=engine), body))
    assert results["distinct"] is True
    assert results["pair"] == [b"first", b"second"]


@pytest.mark.parametrize("engine", ENGINES)
def test_resetting_a_stream_the_engine_already_discarded(
    pki: Pki, server_identity: NodeIdentity, client_identity: NodeIdentity, engine: str
) -> None:
    # A request/response stream whose both directions ended before this side gave up on it
    # (e.g. a caller cancelled after the answer had arrived): the QUIC engine has already
    # forgotten it, and abandoning it must neither raise nor disturb the connection.
    results: dict[str, object] = {}

    async def body(endpoint: Endpoint) -> None:
        connection = await connect(
            pki.config(client_identity, engine=engine),
            "::1",
            endpoint.port,
            server_name=SERVER_NAME,
        )
        stream = await connection.open_stream()
        await stream.send(b"request", end_stream=True)
        results["answer"] = await stream.receive()
        with pytest.raises(StreamClosed):
            await stream.receive()  # the peer's FIN: both directions are over
        await connection.ping()  # our FIN acknowledged by now
        stream.reset()
        with pytest.raises(StreamClosed):
            await stream.receive()
        again = await connection.open_stream()
        await again.send(b"after", end_stream=True)
        results["after"] = await again.receive()
        await connection.close()

    run(_serving(pki.config(server_identity, engine=engine), body))
    assert results == {"answer": b"request", "after": b"after"}
