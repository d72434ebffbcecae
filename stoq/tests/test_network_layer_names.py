"""``NetworkLayer.ResolveAssetAddress`` from a real TrustChain name registry, over real gRPC.

Records are signed by node certificates of the test CA (conftest's PKI) and kept in a SQLite
:class:`~trustchain.naming.registry.NameRegistry`; the servicer answers for nodes, whose asset
id is their node id.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import grpc
import pytest

from hypermesh_interfaces.v1 import common_pb2, network_pb2, network_pb2_grpc
from stoq.network_layer import ChannelRegistry, EventLoopThread, NetworkLayerServicer, serve
from trustchain.naming.records import (
    NameRecord,
    Revocation,
    ServiceEndpoint,
    sign_record,
    sign_revocation,
)
from trustchain.naming.registry import NameRegistry

from .conftest import Pki

NODE = b"\x5a" * 32


class _NoChannels:
    def adopt_channel(self, *args: object, **kwargs: object) -> object:
        raise AssertionError("ResolveAssetAddress must not adopt channels")


@pytest.fixture
def resolving(
    pki: Pki, tmp_path: Path
) -> Iterator[tuple[network_pb2_grpc.NetworkLayerStub, NameRegistry, Pki]]:
    registry = NameRegistry.open(tmp_path / "names.db", pki.trust_store())
    loop = EventLoopThread("names")
    config = pki.config(pki.node("resolver.bank.hypermesh"))
    servicer = NetworkLayerServicer(
        config, cast(ChannelRegistry, _NoChannels()), loop.loop, names=registry
    )
    server, port = serve(servicer)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield network_pb2_grpc.NetworkLayerStub(channel), registry, pki
    finally:
        server.stop(grace=None)
        servicer.close()
        loop.close()
        registry.close()


def _publish(pki: Pki, registry: NameRegistry, name: str, **fields: object) -> NameRecord:
    identity = pki.node(name)
    now = datetime.now(UTC)
    values: dict[str, object] = {
        "node_id": NODE,
        "addresses": ("192.0.2.10", "2001:db8::10"),
        "services": (ServiceEndpoint("stoq", "udp", 4433),),
        "ttl": 120,
        "not_before": now - timedelta(minutes=1),
        "not_after": now + timedelta(days=1),
    }
    values.update(fields)
    record = NameRecord(name, **values)  # type: ignore[arg-type]
    registry.add(sign_record(record, identity.signing_key, identity.chain))
    return record


def _request(asset_id: bytes) -> network_pb2.ResolveAssetAddressRequest:
    return network_pb2.ResolveAssetAddressRequest(asset_id=common_pb2.AssetId(id=asset_id))


def _status(info: pytest.ExceptionInfo[grpc.RpcError]) -> tuple[grpc.StatusCode, str]:
    call = cast(grpc.Call, info.value)
    return call.code(), call.details() or ""


def test_a_node_resolves_to_its_signed_addresses(
    resolving: tuple[network_pb2_grpc.NetworkLayerStub, NameRegistry, Pki],
) -> None:
    stub, registry, pki = resolving
    _publish(pki, registry, "db.bank.hypermesh")
    _publish(pki, registry, "other.bank.hypermesh", node_id=b"\x01" * 32)
    before = datetime.now(UTC)
    answer = stub.ResolveAssetAddress(_request(NODE), timeout=10)
    assert answer.asset_id.id == NODE
    assert answer.node_id.id == NODE
    got = {
        (str(ipaddress.ip_address(a.address.ip)), a.address.port, a.address.transport)
        for a in answer.addresses
    }
    assert got == {
        ("192.0.2.10", 4433, common_pb2.TRANSPORT_QUIC),
        ("2001:db8::10", 4433, common_pb2.TRANSPORT_QUIC),
    }
    until = answer.valid_until.ToDatetime(tzinfo=UTC)
    assert before + timedelta(seconds=119) <= until <= datetime.now(UTC) + timedelta(seconds=121)


def test_revoked_unknown_serviceless_and_malformed(
    resolving: tuple[network_pb2_grpc.NetworkLayerStub, NameRegistry, Pki],
) -> None:
    stub, registry, pki = resolving
    with pytest.raises(grpc.RpcError) as info:
        stub.ResolveAssetAddress(_request(NODE), timeout=10)
    assert _status(info)[0] == grpc.StatusCode.NOT_FOUND

    _publish(pki, registry, "bare.bank.hypermesh", services=())
    with pytest.raises(grpc.RpcError) as info:
        stub.ResolveAssetAddress(_request(NODE), timeout=10)
    code, details = _status(info)
    assert code == grpc.StatusCode.NOT_FOUND
    assert "name no stoq/udp service" in details

    record = _publish(pki, registry, "db.bank.hypermesh")
    assert stub.ResolveAssetAddress(_request(NODE), timeout=10).addresses
    identity = pki.node("db.bank.hypermesh")
    revocation = Revocation(record.name, record.serial, datetime.now(UTC))
    registry.revoke(sign_revocation(revocation, identity.signing_key, identity.chain))
    with pytest.raises(grpc.RpcError) as info:
        stub.ResolveAssetAddress(_request(NODE), timeout=10)
    assert _status(info)[0] == grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.RpcError) as info:
        stub.ResolveAssetAddress(_request(b"\x01" * 31), timeout=10)
    code, details = _status(info)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "must be 32 bytes" in details
