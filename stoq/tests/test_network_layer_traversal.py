"""``NetworkLayer.HandleNatTraversal`` over a real gRPC server, end to end on loopback.

Node A serves ``NetworkLayer`` with a :class:`~stoq.nat.traversal.TraversalAgent` on its event
loop thread; node B has its own agent. Both are registered at a rendezvous node; STUN (RFC 5780)
and TURN servers run on loopback (the traversal world of test_traversal.py). Loopback has no
NAT: the path found is direct between host candidates and the NAT type is "none".
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator
from typing import cast

import grpc
import pytest

from hypermesh_interfaces.v1 import common_pb2, network_pb2, network_pb2_grpc
from stoq.config import StoqConfig
from stoq.endpoint import connect
from stoq.nat.rendezvous import RendezvousClient, RendezvousServer
from stoq.nat.traversal import PeerConnection, TraversalAgent
from stoq.network_layer import ChannelRegistry, EventLoopThread, NetworkLayerServicer, serve

from .conftest import Pki
from .test_traversal import World, _world


class _NoChannels:
    """HandleNatTraversal exports no channel; the registry is never asked."""

    def adopt_channel(self, *args: object, **kwargs: object) -> object:
        raise AssertionError("HandleNatTraversal must not adopt channels")


def _ip(address: common_pb2.NetworkAddress) -> str:
    return str(ipaddress.ip_address(address.ip))


@pytest.fixture(scope="module")
def traversal(pki: Pki) -> Iterator[tuple[network_pb2_grpc.NetworkLayerStub, bytes]]:
    loop = EventLoopThread("traversal")

    async def start() -> tuple[World, RendezvousServer, list[TraversalAgent], list[StoqConfig]]:
        world = await _world(pki)
        server = RendezvousServer(world.rendezvous)
        server.start()
        agents: list[TraversalAgent] = []
        extra: list[StoqConfig] = []
        for name in ("grpc-a.bank.hypermesh", "grpc-b.bank.hypermesh"):
            config = pki.config(pki.node(name, ip_addresses=["127.0.0.1"]))
            connection = await connect(config, "127.0.0.1", world.rendezvous.port)
            client = await RendezvousClient.open(connection)
            agents.append(TraversalAgent(config, client, world.settings()))
            extra.append(config)
        return world, server, agents, extra

    world, rendezvous, agents, configs = loop.run(start())
    accepted: list[PeerConnection] = []

    async def accept_all() -> None:
        while True:
            accepted.append(await agents[1].accept())

    accepting = asyncio.run_coroutine_threadsafe(accept_all(), loop.loop)
    servicer = NetworkLayerServicer(
        configs[0],
        cast(ChannelRegistry, _NoChannels()),
        loop.loop,
        traversal=agents[0],
    )
    server, port = serve(servicer)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield network_pb2_grpc.NetworkLayerStub(channel), agents[1].rendezvous.peer_id
    finally:
        server.stop(grace=None)
        servicer.close()
        accepting.cancel()

        async def stop() -> None:
            for connection in accepted:
                await connection.close()
            for agent in agents:
                await agent.close()
                await agent.rendezvous.close()
            await rendezvous.close()
            await world.rendezvous.close()
            await world.stun.close()
            await world.turn.close()

        loop.run(stop())
        loop.close()


def _request(peer_id: bytes) -> network_pb2.HandleNatTraversalRequest:
    return network_pb2.HandleNatTraversalRequest(peer_id=common_pb2.PeerId(id=peer_id))


def test_handle_nat_traversal_reports_the_direct_path(
    traversal: tuple[network_pb2_grpc.NetworkLayerStub, bytes],
) -> None:
    stub, b_id = traversal
    answer = stub.HandleNatTraversal(_request(b_id), timeout=30)
    assert answer.local.origin == common_pb2.ADDRESS_ORIGIN_HOST
    assert answer.remote.origin == common_pb2.ADDRESS_ORIGIN_HOST
    assert _ip(answer.local.address) == _ip(answer.remote.address) == "127.0.0.1"
    assert answer.local.address.port != answer.remote.address.port
    assert answer.local.address.transport == common_pb2.TRANSPORT_QUIC
    assert answer.local.nat_type == common_pb2.NAT_TYPE_NONE
    assert answer.remote.nat_type == common_pb2.NAT_TYPE_UNSPECIFIED
    # A second call reuses the connection: the very same path.
    again = stub.HandleNatTraversal(_request(b_id), timeout=30)
    assert again == answer


@pytest.mark.parametrize(
    ("request_", "code", "detail"),
    [
        (_request(b"\x01" * 31), grpc.StatusCode.INVALID_ARGUMENT, "must be 32 bytes"),
        (_request(b"\x02" * 32), grpc.StatusCode.NOT_FOUND, "unknown peer"),
        (
            network_pb2.HandleNatTraversalRequest(
                peer_id=common_pb2.PeerId(id=b"\x03" * 32),
                local_candidates=[common_pb2.PublicAddress()],
            ),
            grpc.StatusCode.UNIMPLEMENTED,
            "caller-supplied local_candidates are not supported",
        ),
    ],
)
def test_handle_nat_traversal_refusals(
    traversal: tuple[network_pb2_grpc.NetworkLayerStub, bytes],
    request_: network_pb2.HandleNatTraversalRequest,
    code: grpc.StatusCode,
    detail: str,
) -> None:
    stub, _ = traversal
    with pytest.raises(grpc.RpcError) as info:
        stub.HandleNatTraversal(request_, timeout=30)
    call = cast(grpc.Call, info.value)
    assert call.code() == code
    assert detail in (call.details() or "")
