"""The connection pool against real STOQ endpoints on loopback, and its sans-IO idle decisions.

Every server here is a real :class:`~stoq.endpoint.Endpoint` that echoes each message on each
stream it accepts; every client connection is a real dial through :func:`stoq.endpoint.connect`.
Idle eviction is driven by a clock the test moves, never by sleeping, and no test asserts how
long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stoq.config import StoqConfig
from stoq.connection import StoqConnection, Stream
from stoq.endpoint import Endpoint
from stoq.engine import available_engines
from stoq.errors import ConnectError, ConnectionLost, PeerRejected, StoqError, StreamClosed
from stoq.identity import NodeIdentity
from stoq.pool import (
    ConnectionPool,
    PoolClosed,
    PoolExhausted,
    PoolKey,
    PoolStats,
    is_idle,
    least_recently_used_idle,
    pool_key,
)

Pki = Any  # conftest.Pki: the session PKI fixture
SERVER_NAME = "node1.bank.hypermesh"  # as issued by conftest.py
ENGINES = available_engines()
SECOND_NAME = "node2.bank.hypermesh"


@dataclass
class EchoServer:
    """A listening endpoint that echoes every message on every stream, then finishes it."""

    endpoint: Endpoint
    connections: list[StoqConnection] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.endpoint.port

    def spawn(self, coroutine: Awaitable[None]) -> None:
        self.tasks.append(asyncio.ensure_future(coroutine))

    async def stop(self) -> None:
        """Close the endpoint and end the tasks; fail if any of them failed."""
        await self.endpoint.close()
        for task in self.tasks:
            task.cancel()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        failures = [
            result
            for result in results
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError)
        ]
        assert failures == []

    async def run(self) -> None:
        while True:
            try:
                connection = await self.endpoint.accept()
            except ConnectionLost:  # the endpoint closed
                return
            self.connections.append(connection)
            self.spawn(self.serve(connection))

    async def serve(self, connection: StoqConnection) -> None:
        while True:
            try:
                stream = await connection.accept_stream()
            except ConnectionLost:
                return
            self.spawn(self.echo(stream))

    async def echo(self, stream: Stream) -> None:
        try:
            async for message in stream:
                await stream.send(message)
            await stream.finish()
        except ConnectionLost:  # the client went away mid-stream; nothing left to echo to
            return


@contextlib.asynccontextmanager
async def echo_server(
    config: StoqConfig, host: str = "::", port: int = 0
) -> AsyncIterator[EchoServer]:
    endpoint = await Endpoint.listen(config, host=host, port=port)
    server = EchoServer(endpoint)
    server.spawn(server.run())
    try:
        yield server
    finally:
        await server.stop()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def second_identity(pki: Pki) -> NodeIdentity:
    identity: NodeIdentity = pki.node(SECOND_NAME, ip_addresses=["127.0.0.1", "::1"])
    return identity


def configs(
    pki: Pki, server: NodeIdentity, client: NodeIdentity, engine: str = "aioquic"
) -> tuple[StoqConfig, StoqConfig]:
    return pki.config(server, engine=engine), pki.config(client, engine=engine)


async def echo_once(stream: Stream, message: bytes) -> bytes:
    await stream.send(message)
    reply = await stream.receive()
    await stream.finish()
    with pytest.raises(StreamClosed):
        await stream.receive()
    return reply


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


# --- sharing and multiplexing ---------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_concurrent_requests_share_one_dial_and_many_streams(
    pki: Pki, server_identity: NodeIdentity, client_identity: NodeIdentity, engine: str
) -> None:
    server_config, client_config = configs(pki, server_identity, client_identity, engine)

    async def scenario() -> None:
        async with echo_server(server_config) as server, ConnectionPool(client_config) as pool:
            connections = await asyncio.gather(
                *(pool.get("127.0.0.1", server.port, server_name=SERVER_NAME) for _ in range(50))
            )
            first = connections[0]
            assert all(connection is first for connection in connections)
            assert pool.stats == PoolStats(connections=1, dials=1, reuses=49, evictions=0)
            assert first.peer.peer_id == server_identity.peer_id
            assert first.engine == engine

            async def one_stream(index: int) -> bytes:
                stream = await pool.open_stream("127.0.0.1", server.port, server_name=SERVER_NAME)
                return await echo_once(stream, f"message {index} ".encode() * (index + 1))

            replies = await asyncio.gather(*(one_stream(i) for i in range(100)))
            assert replies == [f"message {i} ".encode() * (i + 1) for i in range(100)]
            assert pool.stats == PoolStats(connections=1, dials=1, reuses=149, evictions=0)
            assert len(server.connections) == 1

    run(scenario)


def test_one_connection_per_peer_identity_across_keys(
    pki: Pki, server_identity: NodeIdentity, client_identity: NodeIdentity
) -> None:
    server_config, client_config = configs(pki, server_identity, client_identity)

    async def scenario() -> None:
        async with echo_server(server_config) as server, ConnectionPool(client_config) as pool:
            by_name = await pool.get("127.0.0.1", server.port, server_name=SERVER_NAME.upper())
            # The authenticated key id finds the connection made under the name: no dial.
            by_id = await pool.get("::1", server.port, peer_id=server_identity.peer_id)
            assert by_id is by_name
            assert pool.stats.dials == 1
            # Addresses alone are another key: the dial happens, authenticates the same peer,
            # and the pool keeps the connection it already had.
            by_address = await pool.get(["::1", "127.0.0.1"], server.port)
            assert by_address is by_name
            assert pool.stats == PoolStats(connections=1, dials=2, reuses=1, evictions=0)
            assert await pool.get(["127.0.0.1", "::1"], server.port) is by_name
            assert pool.stats.dials == 2
            assert not by_name.closed

    run(scenario)


# --- eviction of closed connections ---------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_connection_closed_by_the_server_is_evicted_and_redialled(
    pki: Pki, server_identity: NodeIdentity, client_identity: NodeIdentity, engine: str
) -> None:
    server_config, client_config = configs(pki, server_identity, client_identity, engine)

    async def scenario() -> None:
        async with echo_server(server_config) as server, ConnectionPool(client_config) as pool:
            first = await pool.get("127.0.0.1", server.port, server_name=SERVER_NAME)
            assert len(server.connections) == 1
            await server.connections[0].close(0, "server going away")
            await first.wait_closed()
            assert first.closed

            second = await pool.get("127.0.0.1", server.port, server_name=SERVER_NAME)
            assert second is not first
            assert not second.closed
            assert pool.stats == PoolStats(connections=1, dials=2, reuses=0, evictions=1)
            stream = await pool.open_stream("127.0.0.1", server.port, server_name=SERVER_NAME)
            assert await echo_once(stream, b"after redial") == b"after redial"
            assert len(server.connections) == 2

    run(scenario)


def test_health_check_evicts_closed_and_pings_live_connections(
    pki: Pki, server_identity: NodeIdentity, client_identity: NodeIdentity
) -> None:
    server_config, client_config = configs(pki, server_identity, client_identity)

    async def scenario() -> None:
        async with echo_server(server_config) as server, ConnectionPool(client_config) as pool:
            live = await pool.get("127.0.0.1", server.port, server_name=SERVER_NAME)
            assert await pool.check_health() == 0
            assert pool.connections == (live,)

            await server.connections[0].close(0, "bye")
            await live.wait_closed()
            assert await pool.check_health() == 1
            assert pool.stats.connections == 0
            assert pool.stats.evictions == 1

    run(scenario)


def test_open_stream_on_a_connection_closed_locally_redials(
    pki: Pki, server_identity: NodeIdentity, client_identity: NodeIdentity
) -> None:
    server_config, client_config = configs(pki, server_identity, client_identity)

    async def scenario() -> None:
        async with echo_server(server_config) as server, ConnectionPool(client_config) as pool:
            first = await pool.get("127.0.0.1", server.port, server_name=SERVER_NAME)
            await first.close(0, "caller closed it")
            stream = await pool.open_stream("127.0.0.1", server.port, server_name=SERVER_NAME)
            assert await echo_once(stream, b"again") == b"again"
            assert pool.stats == PoolStats(connections=1, dials=2, reuses=0, evictions=1)

    run(scenario)


# --- idle eviction --------------------------------------------------------------------------


def test_is_idle_boundary() -> None:
    assert not is_idle(100.0, 159.999, 60.0)
    assert is_idle(100.0, 160.0, 60.0)
    assert is_idle(100.0, 1e9, 60.0)
    assert not is_idle(100.0, 100.0, 60.0)


def test_least_recently_used_idle_picks_the_oldest_idle() -> None:
    last_used = {"a": 10.0, "b": 5.0, "c": 50.0}
    assert least_recently_used_idle(last_used, 60.0, 20.0) == "b"
    assert least_recently_used_idle(last_used, 24.9, 20.0) is None
    assert least_recently_used_idle({}, 0.0, 1.0) is None


@given(
    st.dictionaries(st.integers(), st.floats(0, 1e6), max_size=20),
    st.floats(0, 2e6),
    st.floats(0.001, 1e6),
)
def test_least_recently_used_idle_properties(
    last_used: dict[int, float], now: float, idle_after: float
) -> None:
    victim = least_recently_used_idle(last_used, now, idle_after)
    idle = {k for k, used in last_used.items() if is_idle(used, now, idle_after)}
    if not idle:
        assert victim is None
    else:
        assert victim in idle
        assert last_used[victim] == min(last_used[k] for k in idle)


def test_idle_connection_is_closed_and_evicted_by_the_health_check(
    pki: Pki, server_identity: NodeIdentity, client_identity: NodeIdentity
) -> None:
    server_config, client_config = configs(pki, server_identity, client_identity)
    clock = Clock()

    async def scenario() -> None:
        async with echo_server(server_config) as server:
            pool = ConnectionPool(client_config, idle_after=60.0, clock=clock)
            async with pool:
                connection = await pool.get("127.0.0.1", server.port, server_name=SERVER_NAME)
                clock.now += 59.0
                assert await pool.check_health() == 0
                # Opening a stream through the pool is use: the idle period starts again.
                stream = await pool.open_stream("127.0.0.1", server.port, server_name=SERVER_NAME)
                assert await echo_once(stream, b"still here") == b"still here"
                clock.now += 59.0
                assert await pool.check_health() == 0
                assert pool.connections == (connection,)

                clock.now += 1.0
                assert await pool.check_health() == 1
                assert pool.stats.connections == 0
                await connection.wait_closed()
                await server.connections[0].wait_closed()  # the server saw the close too

                again = await pool.get("127.0.0.1", server.port, server_name=SERVER_NAME)
                assert again is not connection
                assert pool.stats == PoolStats(connections=1, dials=2, reuses=1, evictions=1)

    run(scenario)


# --- identity -------------------------------------------------------------------------------


def test_peer_id_mismatch_is_rejected_and_not_pooled(
    pki: Pki, server_identity: NodeIdentity, client_identity: NodeIdentity
) -> None:
    server_config, client_config = configs(pki, server_identity, client_identity)
    wrong = client_identity.peer_id

    async def scenario() -> None:
        async with echo_server(server_config) as server, ConnectionPool(client_config) as pool:
            with pytest.raises(PeerRejected) as caught:
                await pool.get("127.0.0.1", server.port, server_name=SERVER_NAME, peer_id=wrong)
            assert wrong.hex() in caught.value.reason
            assert server_identity.peer_id.hex() in caught.value.reason
            assert pool.stats == PoolStats(connections=0, dials=1, reuses=0, evictions=0)
            assert pool.stats.connections == 0
            await server.connections[0].wait_closed()  # the rejected connection was closed

            right = await pool.get("127.0.0.1", server.port, peer_id=server_identity.peer_id)
            assert right.peer.peer_id == server_identity.peer_id
            assert pool.stats == PoolStats(connections=1, dials=2, reuses=0, evictions=0)

    run(scenario)


# --- dial failures --------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_dial_failure_reaches_every_waiter_and_is_not_cached(
    pki: Pki, server_identity: NodeIdentity, client_identity: NodeIdentity, engine: str
) -> None:
    server_config, client_config = configs(pki, server_identity, client_identity, engine)

    async def scenario() -> None:
        # A port nobody listens on: the kernel answers ICMP port unreachable.
        vacated = await Endpoint.listen(server_config, host="127.0.0.1")
        port = vacated.port
        await vacated.close()

        async with ConnectionPool(client_config) as pool:
            results = await asyncio.gather(
                *(pool.get("127.0.0.1", port, server_name=SERVER_NAME) for _ in range(10)),
                return_exceptions=True,
            )
            assert all(type(result) is ConnectError for result in results)
            error = results[0]
            assert isinstance(error, ConnectError)
            assert [address for address, _ in error.attempts] == ["127.0.0.1"]
            assert all(result is error for result in results)  # one dial, one error for all
            assert pool.stats == PoolStats(connections=0, dials=1, reuses=9, evictions=0)

            with pytest.raises(ConnectError):
                await pool.get("127.0.0.1", port, server_name=SERVER_NAME)
            assert pool.stats.dials == 2

            async with echo_server(server_config, host="127.0.0.1", port=port):
                connection = await pool.get("127.0.0.1", port, server_name=SERVER_NAME)
                assert connection.remote_address == ("127.0.0.1", port)
                assert pool.stats == PoolStats(connections=1, dials=3, reuses=9, evictions=0)

    run(scenario)


# --- capacity -------------------------------------------------------------------------------


def test_pool_exhausted_without_an_idle_connection_then_lru_idle_makes_room(
    pki: Pki,
    server_identity: NodeIdentity,
    second_identity: NodeIdentity,
    client_identity: NodeIdentity,
) -> None:
    server_config, client_config = configs(pki, server_identity, client_identity)
    second_config = pki.config(second_identity)
    clock = Clock()

    async def scenario() -> None:
        async with (
            echo_server(server_config) as first_server,
            echo_server(second_config) as second_server,
            ConnectionPool(client_config, max_connections=1, idle_after=30.0, clock=clock) as pool,
        ):
            first = await pool.get("127.0.0.1", first_server.port, server_name=SERVER_NAME)
            with pytest.raises(PoolExhausted):
                await pool.get("127.0.0.1", second_server.port, server_name=SECOND_NAME)
            assert pool.stats == PoolStats(connections=1, dials=1, reuses=0, evictions=0)
            assert not first.closed
            assert second_server.connections == []

            clock.now += 30.0
            second = await pool.get("127.0.0.1", second_server.port, server_name=SECOND_NAME)
            assert second.peer.peer_id == second_identity.peer_id
            await first.wait_closed()
            assert pool.connections == (second,)
            assert pool.stats == PoolStats(connections=1, dials=2, reuses=0, evictions=1)

    run(scenario)


def test_a_dial_in_flight_counts_against_max_connections(
    pki: Pki,
    server_identity: NodeIdentity,
    second_identity: NodeIdentity,
    client_identity: NodeIdentity,
) -> None:
    server_config, client_config = configs(pki, server_identity, client_identity)
    second_config = pki.config(second_identity)

    async def scenario() -> None:
        async with (
            echo_server(server_config) as first_server,
            echo_server(second_config) as second_server,
            ConnectionPool(client_config, max_connections=1) as pool,
        ):
            first = asyncio.ensure_future(
                pool.get("127.0.0.1", first_server.port, server_name=SERVER_NAME)
            )
            await asyncio.sleep(0)  # let the first request start its dial
            with pytest.raises(PoolExhausted):
                await pool.get("127.0.0.1", second_server.port, server_name=SECOND_NAME)
            connection = await first
            assert connection.peer.peer_id == server_identity.peer_id
            assert pool.stats.dials == 1

    run(scenario)


# --- closing --------------------------------------------------------------------------------


def test_close_fails_dials_in_flight_and_closes_connections(
    pki: Pki, server_identity: NodeIdentity, client_identity: NodeIdentity
) -> None:
    server_config, client_config = configs(pki, server_identity, client_identity)

    async def scenario() -> None:
        # A UDP socket that receives and never answers: a dial to it stays in flight.
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        try:
            async with echo_server(server_config) as server:
                pool = ConnectionPool(client_config)
                live = await pool.get("127.0.0.1", server.port, server_name=SERVER_NAME)
                waiters = [
                    # Addresses alone: the name key would find the live connection.
                    asyncio.ensure_future(pool.get("127.0.0.1", silent.getsockname()[1]))
                    for _ in range(3)
                ]
                await asyncio.sleep(0)
                assert pool.stats.dials == 2
                await pool.close()
                results = await asyncio.gather(*waiters, return_exceptions=True)
                assert all(type(result) is PoolClosed for result in results)
                assert live.closed
                await server.connections[0].wait_closed()
                with pytest.raises(PoolClosed):
                    await pool.get("127.0.0.1", server.port, server_name=SERVER_NAME)
        finally:
            silent.close()

    run(scenario)


def test_cancelled_waiter_does_not_cancel_the_shared_dial(
    pki: Pki, server_identity: NodeIdentity, client_identity: NodeIdentity
) -> None:
    server_config, client_config = configs(pki, server_identity, client_identity)

    async def scenario() -> None:
        async with echo_server(server_config) as server, ConnectionPool(client_config) as pool:
            first = asyncio.ensure_future(
                pool.get("127.0.0.1", server.port, server_name=SERVER_NAME)
            )
            second = asyncio.ensure_future(
                pool.get("127.0.0.1", server.port, server_name=SERVER_NAME)
            )
            await asyncio.sleep(0)
            first.cancel()
            connection = await second
            assert first.cancelled()
            assert not connection.closed
            assert pool.stats == PoolStats(connections=1, dials=1, reuses=1, evictions=0)

    run(scenario)


# --- keys and settings ----------------------------------------------------------------------


def test_pool_keys() -> None:
    peer = b"\x01" * 32
    name = PoolKey("name", "node1.bank.hypermesh")
    assert pool_key("Node1.Bank.Hypermesh.", 1) == name
    assert pool_key("127.0.0.1", 1, server_name="NODE1.bank.hypermesh") == name
    assert pool_key("node1.bank.hypermesh", 1, server_name="x", peer_id=peer) == PoolKey(
        "peer", peer
    )
    assert pool_key("127.0.0.1", 5) == PoolKey("address", "127.0.0.1:5")
    assert pool_key(["::1", "127.0.0.1"], 5) == PoolKey("address", "127.0.0.1,::1:5")
    assert pool_key(["::1", "127.0.0.1"], 5) == pool_key(["127.0.0.1", "::1"], 5)
    assert pool_key("127.0.0.1", 5) != pool_key("127.0.0.1", 6)
    # A peer is a node, not a socket: its name or key id is the key whatever the port.
    assert pool_key("node1.bank.hypermesh", 5) == pool_key("node1.bank.hypermesh", 6)


@pytest.mark.parametrize(
    "kwargs",
    [{"idle_after": 0.0}, {"health_interval": -1.0}, {"max_connections": 0}],
)
def test_settings_are_checked(
    pki: Pki, client_identity: NodeIdentity, kwargs: dict[str, float]
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        ConnectionPool(pki.config(client_identity), **kwargs)  # type: ignore[arg-type]


def test_pool_errors_are_stoq_errors() -> None:
    assert issubclass(PoolExhausted, StoqError)
    assert issubclass(PoolClosed, StoqError)
