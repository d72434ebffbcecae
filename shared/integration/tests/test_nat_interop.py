"""STUN/TURN interop with peers we did not write (issue 7), on loopback only.

1. coturn (the Debian ``turnserver``) as the server: our STUN client learns its mapped address
   from it, and our TURN client allocates through it, relays to a local UDP peer by Send
   indication and by channel, and gets the peer's replies back.
2. aioice (PyPI) against our servers: it gathers a server-reflexive candidate from our STUN
   server and a relayed candidate from our TURN server, then two aioice connections, one
   restricted to relayed candidates (``TransportPolicy.RELAY``), connect and exchange data
   through our TURN server.

aioice never offers 127.0.0.1 as a host candidate (it skips loopback), so the aioice tests
point its host-address discovery at 127.0.0.1: everything stays on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from stoq.nat.stun_client import StunTimeout, binding
from stoq.nat.stun_server import StunServer
from stoq.nat.turn_client import CHANNEL_MIN, TurnClient
from stoq.nat.turn_server import TurnServer

USER = "interop"
PASSWORD = "s3cret-pass"
REALM = "interop.test"
LOOPBACK = "127.0.0.1"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


# --- coturn ---------------------------------------------------------------------------------------


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A coturn process on 127.0.0.1 with long-term credentials and loopback peers allowed."""
    turnserver = shutil.which("turnserver")
    if turnserver is None:
        pytest.skip("turnserver (Debian package coturn) is not installed")
    port = free_udp_port()
    relay_base = 50000 + secrets.randbelow(7000) * 2
    log = tmp_path / "turnserver.log"
    command = [
        turnserver,
        "-n",  # no configuration file
        "--lt-cred-mech",
        "--user", f"{USER}:{PASSWORD}",
        "--realm", REALM,
        "--listening-ip", LOOPBACK,
        "--listening-port", str(port),
        "--relay-ip", LOOPBACK,
        "--min-port", str(relay_base),
        "--max-port", str(relay_base + 20),
        "--allow-loopback-peers",
        "--no-cli", "--no-tls", "--no-dtls",
        "--userdb", str(tmp_path / "turndb"),
        "--pidfile", str(tmp_path / "turnserver.pid"),
        "--log-file", "stdout",
        "--simple-log",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield (LOOPBACK, port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_for_stun(server: tuple[str, int]) -> tuple[str, int]:
    """Our STUN client's mapped address from ``server``, once the server answers."""
    for _ in range(50):
        try:
            result = await binding(server, local=(LOOPBACK, 0), rto=0.1, timeout=0.3)
        except StunTimeout:
            continue
        return result.mapped
    raise AssertionError(f"no STUN answer from {server}")


async def relay_round_trip(
    client: TurnClient, peer: socket.socket, payload: bytes, reply: bytes
) -> None:
    """``payload`` to the peer through the relay, ``reply`` back; checks both sides."""
    loop = asyncio.get_running_loop()
    where = peer.getsockname()
    await client.send(where, payload)
    data, source = await asyncio.wait_for(loop.sock_recvfrom(peer, 2048), 5)
    assert data == payload
    assert source == client.relayed_address  # the peer sees only the relayed address
    await loop.sock_sendto(peer, reply, source)
    assert await asyncio.wait_for(client.receive(), 5) == (where, reply)


def test_our_stun_and_turn_clients_against_coturn(coturn: tuple[str, int]) -> None:
    async def main() -> None:
        mapped = await wait_for_stun(coturn)
        assert mapped[0] == LOOPBACK
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind((LOOPBACK, 0))
        peer.setblocking(False)
        try:
            client = await TurnClient.allocate(
                coturn, USER, PASSWORD, local=(LOOPBACK, 0), rto=0.1, timeout=5
            )
            async with client:
                assert client.relayed_address[0] == LOOPBACK
                assert client.relayed_address != coturn
                assert client.mapped_address == client.local_address
                assert client.lifetime > 0
                await client.create_permission(LOOPBACK)
                await relay_round_trip(client, peer, b"by Send indication", b"by Data indication")
                assert await client.channel_bind(peer.getsockname()) == CHANNEL_MIN
                await relay_round_trip(client, peer, b"by ChannelData", b"ChannelData back")
                assert await client.refresh() > 0
            assert client.core.state.value == "closed"
        finally:
            peer.close()

    asyncio.run(main())


def test_coturn_refuses_a_wrong_password(coturn: tuple[str, int]) -> None:
    from stoq.nat.turn_client import TurnError

    async def main() -> None:
        await wait_for_stun(coturn)
        with pytest.raises(TurnError) as caught:
            await TurnClient.allocate(coturn, USER, "not the password", rto=0.1, timeout=5)
        assert caught.value.code == 401

    asyncio.run(main())


# --- aioice against our servers -------------------------------------------------------------------

aioice = pytest.importorskip("aioice", reason="aioice (PyPI) is not installed")


@contextlib.asynccontextmanager
async def our_servers() -> AsyncIterator[tuple[StunServer, TurnServer]]:
    stun_server = await StunServer.start([(LOOPBACK, 0)])
    try:
        turn_server = await TurnServer.start(
            [(LOOPBACK, 0)], realm=REALM, users={USER: PASSWORD}, allow_loopback_peers=True
        )
        try:
            yield stun_server, turn_server
        finally:
            await turn_server.close()
    finally:
        await stun_server.close()


@pytest.fixture
def loopback_host_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice skips 127.0.0.1 when it lists host addresses; make it the only one."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [LOOPBACK])


@pytest.mark.usefixtures("loopback_host_candidates")
def test_aioice_gathers_from_our_stun_and_turn_servers() -> None:
    async def main() -> None:
        async with our_servers() as (stun_server, turn_server):
            connection = aioice.Connection(
                ice_controlling=True,
                stun_server=stun_server.addresses[0],
                turn_server=turn_server.addresses[0],
                turn_username=USER,
                turn_password=PASSWORD,
                use_ipv6=False,
            )
            try:
                await connection.gather_candidates()
                by_type = {c.type: c for c in connection.local_candidates}
                assert set(by_type) == {"host", "srflx", "relay"}
                host, srflx, relay = by_type["host"], by_type["srflx"], by_type["relay"]
                assert host.host == LOOPBACK
                # on loopback there is no NAT: our STUN server mapped the host candidate itself
                assert (srflx.host, srflx.port) == (host.host, host.port)
                assert (srflx.related_address, srflx.related_port) == (host.host, host.port)
                # the relayed candidate is the address our TURN server allocated to aioice
                assert relay.host == LOOPBACK
                client = (relay.related_address, relay.related_port)
                assert turn_server.core.relay_of(client, turn_server.addresses[0]) == (
                    relay.host,
                    relay.port,
                )
                assert turn_server.core.allocations_of(USER) == 1
            finally:
                await connection.close()

    asyncio.run(main())


@pytest.mark.usefixtures("loopback_host_candidates")
def test_aioice_connects_through_our_turn_server_only() -> None:
    async def main() -> None:
        async with our_servers() as (_, turn_server):
            relayed = aioice.Connection(
                ice_controlling=True,
                turn_server=turn_server.addresses[0],
                turn_username=USER,
                turn_password=PASSWORD,
                use_ipv6=False,
                transport_policy=aioice.TransportPolicy.RELAY,
            )
            direct = aioice.Connection(ice_controlling=False, use_ipv6=False)
            try:
                await asyncio.gather(relayed.gather_candidates(), direct.gather_candidates())
                assert [c.type for c in relayed.local_candidates] == ["relay"]
                for near, far in ((relayed, direct), (direct, relayed)):
                    for candidate in far.local_candidates:
                        await near.add_remote_candidate(candidate)
                    await near.add_remote_candidate(None)
                    near.remote_username = far.local_username
                    near.remote_password = far.local_password
                await asyncio.wait_for(asyncio.gather(relayed.connect(), direct.connect()), 20)

                await relayed.sendto(b"through our relay", 1)
                assert await asyncio.wait_for(direct.recvfrom(), 5) == (b"through our relay", 1)
                await direct.send(b"and back")
                assert await asyncio.wait_for(relayed.recv(), 5) == b"and back"
                assert turn_server.core.allocations_of(USER) == 1
            finally:
                await asyncio.gather(relayed.close(), direct.close())

    asyncio.run(main())
