"""NetworkLayer over gRPC and STOQ's channel export, end to end on loopback.

Two nodes, each with its own STOQ identity (certificates from the real test CA), its own
TrustChain ``SecurityLayer`` served over gRPC (a real key store each) and its own event loop
thread. Node B listens and answers channel exports; node A serves ``NetworkLayer`` over gRPC.
The acceptance check: the channel ``EstablishSecureChannel`` returns is one that A's
``EncryptTransport`` accepts, and B's ``DecryptTransport`` opens A's record under the same
channel id. Nothing is mocked; nothing asserts on durations.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypermesh_interfaces.v1 import (
    common_pb2,
    network_pb2,
    network_pb2_grpc,
    security_pb2,
    security_pb2_grpc,
)
from stoq.config import StoqConfig
from stoq.connection import StoqConnection
from stoq.endpoint import Endpoint, connect
from stoq.errors import PeerRejected, ProtocolViolation, StreamClosed
from stoq.identity import NodeIdentity
from stoq.network_layer import (
    ADOPTED,
    EXPORT_REQUEST_PREFIX,
    MAX_EXPORT_MESSAGE,
    ChannelExportRefused,
    EventLoopThread,
    ExportInitiator,
    ExportResponder,
    NetworkLayerServicer,
    export_channel,
    refusal,
    serve,
    serve_endpoint_channel_exports,
)
from trustchain.crypto.handshake import Initiator
from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KeyStore
from trustchain.crypto.signatures import SigningKey, VerifyKey
from trustchain.naming.records import NameRecord, ServiceEndpoint, sign_record
from trustchain.naming.registry import NameRegistry
from trustchain.security_layer import CHANNEL_KEM, SecurityLayerServicer
from trustchain.security_layer import serve as serve_security

Pki = Any  # conftest.Pki: the session PKI fixture
SERVER_NAME = "node1.bank.hypermesh"  # node B, as issued by conftest.py
QUIC = common_pb2.TRANSPORT_QUIC


def quic_address(host: str, port: int) -> common_pb2.NetworkAddress:
    return common_pb2.NetworkAddress(
        ip=ipaddress.ip_address(host).packed, port=port, transport=QUIC
    )


def status(info: pytest.ExceptionInfo[grpc.RpcError]) -> tuple[grpc.StatusCode, str]:
    call = cast(grpc.Call, info.value)
    return call.code(), call.details() or ""


def open_security_store(path: Path) -> KeyStore:
    return KeyStore.open(
        path, passphrase=b"pw", kdf_params=INSECURE_TEST_KDF_PARAMS, allow_weak_kdf=True
    )


@dataclass
class Node:
    identity: NodeIdentity
    config: StoqConfig
    loop: EventLoopThread
    security: SecurityLayerServicer
    security_stub: security_pb2_grpc.SecurityLayerStub


@pytest.fixture(scope="module")
def node_b(
    pki: Pki, server_identity: NodeIdentity, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Node, Endpoint]]:
    """The responder: a listening endpoint answering channel exports into its SecurityLayer."""
    with open_security_store(tmp_path_factory.mktemp("node-b")) as store:
        security = SecurityLayerServicer(server_identity.signing_key, store)
        server, port = serve_security(security)
        loop = EventLoopThread("node-b")
        config = pki.config(server_identity)
        endpoint = loop.run(Endpoint.listen(config, "::", 0))
        exports: Future[None] = asyncio.run_coroutine_threadsafe(
            serve_endpoint_channel_exports(endpoint, security), loop.loop
        )
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = security_pb2_grpc.SecurityLayerStub(channel)
                yield Node(server_identity, config, loop, security, stub), endpoint
        finally:
            loop.run(endpoint.close())
            exports.result()  # the service ends with its endpoint, without an error
            loop.close()
            server.stop(grace=None)


@pytest.fixture(scope="module")
def node_a(
    pki: Pki, client_identity: NodeIdentity, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Node]:
    """The initiator's STOQ side and SecurityLayer."""
    with open_security_store(tmp_path_factory.mktemp("node-a")) as store:
        security = SecurityLayerServicer(client_identity.signing_key, store)
        server, port = serve_security(security)
        loop = EventLoopThread("node-a")
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = security_pb2_grpc.SecurityLayerStub(channel)
                yield Node(client_identity, pki.config(client_identity), loop, security, stub)
        finally:
            loop.close()
            server.stop(grace=None)


@pytest.fixture
def network(
    node_a: Node,
) -> Iterator[tuple[NetworkLayerServicer, network_pb2_grpc.NetworkLayerStub]]:
    """Node A's NetworkLayer (with a fresh connection pool) on a real gRPC server, and a stub
    talking to it."""
    servicer = NetworkLayerServicer(node_a.config, node_a.security, node_a.loop.loop)
    server, port = serve(servicer)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield servicer, network_pb2_grpc.NetworkLayerStub(channel)
    finally:
        server.stop(grace=None)
        servicer.close()


def pooled(servicer: NetworkLayerServicer, node: Node) -> tuple[StoqConnection, ...]:
    """The servicer's pooled connections, read on its loop."""

    async def read() -> tuple[StoqConnection, ...]:
        return servicer.pool.connections

    return node.loop.run(read(), timeout=10)


def session_ids(servicer: NetworkLayerServicer, node: Node) -> set[bytes]:
    """The ids of the STOQ session channels protecting the servicer's connections."""
    return {c.channel.channel_id for c in pooled(servicer, node)}


def establish_request(peer: NodeIdentity, host: str, port: int) -> Any:
    return network_pb2.EstablishSecureChannelRequest(
        peer_id=common_pb2.PeerId(id=peer.peer_id), address=quic_address(host, port)
    )


# --- the acceptance check ---------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_established_channel_is_served_by_both_security_layers(
    network: tuple[NetworkLayerServicer, network_pb2_grpc.NetworkLayerStub],
    node_a: Node,
    node_b: tuple[Node, Endpoint],
    host: str,
) -> None:
    servicer, stub = network
    b, endpoint = node_b
    response = stub.EstablishSecureChannel(establish_request(b.identity, host, endpoint.port))

    channel = response.channel
    assert channel.peer_id.id == b.identity.peer_id
    assert VerifyKey.from_bytes(channel.peer_signing_public_key).key_id == b.identity.peer_id
    assert channel.kem_algorithm == "hybrid-x25519-ml-kem-1024"
    assert response.remote_address == quic_address(host, endpoint.port)
    # A fresh channel: not the one protecting the STOQ connection it was made over.
    assert channel.channel_id not in session_ids(servicer, node_a)

    sealed = node_a.security_stub.EncryptTransport(
        security_pb2.EncryptTransportRequest(
            channel_id=channel.channel_id, plaintext=b"A to B over STOQ", associated_data=b"ad"
        )
    )
    opened = b.security_stub.DecryptTransport(
        security_pb2.DecryptTransportRequest(
            channel_id=channel.channel_id, record=sealed.record, associated_data=b"ad"
        )
    )
    assert opened.plaintext == b"A to B over STOQ"
    assert opened.sequence == sealed.sequence

    back = b.security_stub.EncryptTransport(
        security_pb2.EncryptTransportRequest(channel_id=channel.channel_id, plaintext=b"B to A")
    )
    assert (
        node_a.security_stub.DecryptTransport(
            security_pb2.DecryptTransportRequest(channel_id=channel.channel_id, record=back.record)
        ).plaintext
        == b"B to A"
    )


def test_without_an_address_the_peer_is_found_by_its_signed_name_record(
    pki: Pki,
    node_a: Node,
    node_b: tuple[Node, Endpoint],
    tmp_path: Path,
) -> None:
    """B's TrustChain record (signed by a certificate of its namespace) says where B is; A's
    servicer, given the registry, dials there, and the channel works both ways."""
    b, endpoint = node_b
    signer = pki.node(SERVER_NAME)
    now = datetime.now(UTC)
    record = NameRecord(
        SERVER_NAME,
        b.identity.peer_id,
        ("127.0.0.1",),
        (ServiceEndpoint("stoq", "udp", endpoint.port),),
        not_before=now - timedelta(minutes=1),
        not_after=now + timedelta(hours=1),
    )
    with NameRegistry.open(tmp_path / "names.db", pki.trust_store()) as registry:
        registry.add(sign_record(record, signer.signing_key, signer.chain))
        servicer = NetworkLayerServicer(node_a.config, node_a.security, node_a.loop.loop,
                                        names=registry)  # fmt: skip
        server, port = serve(servicer)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = network_pb2_grpc.NetworkLayerStub(channel)
                response = stub.EstablishSecureChannel(
                    network_pb2.EstablishSecureChannelRequest(
                        peer_id=common_pb2.PeerId(id=b.identity.peer_id)
                    ),
                    timeout=30,
                )
                assert response.channel.peer_id.id == b.identity.peer_id
                assert response.remote_address == quic_address("127.0.0.1", endpoint.port)
                sealed = node_a.security_stub.EncryptTransport(
                    security_pb2.EncryptTransportRequest(
                        channel_id=response.channel.channel_id, plaintext=b"found by name"
                    )
                )
                opened = b.security_stub.DecryptTransport(
                    security_pb2.DecryptTransportRequest(
                        channel_id=response.channel.channel_id, record=sealed.record
                    )
                )
                assert opened.plaintext == b"found by name"
                # A peer no record names: NOT_FOUND, with the node id.
                with pytest.raises(grpc.RpcError) as info:
                    stub.EstablishSecureChannel(
                        network_pb2.EstablishSecureChannelRequest(
                            peer_id=common_pb2.PeerId(id=b"\x09" * 32)
                        ),
                        timeout=30,
                    )
                code, details = status(info)
                assert code == grpc.StatusCode.NOT_FOUND
                assert ("09" * 32) in details
        finally:
            server.stop(grace=None)
            servicer.close()


def test_each_call_exports_a_new_channel_over_the_pooled_connection(
    network: tuple[NetworkLayerServicer, network_pb2_grpc.NetworkLayerStub],
    node_a: Node,
    node_b: tuple[Node, Endpoint],
) -> None:
    servicer, stub = network
    b, endpoint = node_b
    first = stub.EstablishSecureChannel(establish_request(b.identity, "127.0.0.1", endpoint.port))
    connections = pooled(servicer, node_a)
    assert len(connections) == 1
    # The pool holds one connection per peer: asking for the same peer at another of its
    # addresses reuses it, and the answer says where the channel actually runs.
    second = stub.EstablishSecureChannel(establish_request(b.identity, "::1", endpoint.port))
    assert first.channel.channel_id != second.channel.channel_id
    assert pooled(servicer, node_a) == connections
    assert second.remote_address == quic_address("127.0.0.1", endpoint.port)


def test_the_peer_can_export_back_over_the_connection_the_servicer_dialled(
    network: tuple[NetworkLayerServicer, network_pb2_grpc.NetworkLayerStub],
    node_a: Node,
    node_b: tuple[Node, Endpoint],
) -> None:
    servicer, stub = network
    b, endpoint = node_b
    stub.EstablishSecureChannel(establish_request(b.identity, "127.0.0.1", endpoint.port))
    # Both ends of a STOQ connection hold the same session channel id: B's end of a
    # connection the servicer dialled.
    dialled = session_ids(servicer, node_a)

    async def export_from_b() -> bytes:
        connection = next(c for c in endpoint.connections if c.channel.channel_id in dialled)
        channel = await export_channel(connection)
        described = b.security.adopt_channel(channel, kem_algorithm=CHANNEL_KEM)
        return described.channel_id

    channel_id = b.loop.run(export_from_b(), timeout=60)
    sealed = b.security_stub.EncryptTransport(
        security_pb2.EncryptTransportRequest(channel_id=channel_id, plaintext=b"B first")
    )
    opened = node_a.security_stub.DecryptTransport(
        security_pb2.DecryptTransportRequest(channel_id=channel_id, record=sealed.record)
    )
    assert opened.plaintext == b"B first"


# --- refusals ---------------------------------------------------------------------------------


def test_wrong_peer_id_is_permission_denied(
    network: tuple[NetworkLayerServicer, network_pb2_grpc.NetworkLayerStub],
    node_a: Node,
    node_b: tuple[Node, Endpoint],
) -> None:
    _, stub = network
    _, endpoint = node_b
    # Node A's own id: a real identity, but not the node listening at that address.
    request = establish_request(node_a.identity, "127.0.0.1", endpoint.port)
    with pytest.raises(grpc.RpcError) as info:
        stub.EstablishSecureChannel(request)
    code, details = status(info)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert node_a.identity.peer_id.hex() in details
    assert SERVER_NAME in details


def test_unreachable_address_is_unavailable_and_named(
    network: tuple[NetworkLayerServicer, network_pb2_grpc.NetworkLayerStub],
    node_b: tuple[Node, Endpoint],
) -> None:
    _, stub = network
    b, _ = node_b
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    # Nothing listens there now: the kernel answers with ICMP port unreachable.
    with pytest.raises(grpc.RpcError) as info:
        stub.EstablishSecureChannel(establish_request(b.identity, "127.0.0.1", closed_port))
    code, details = status(info)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert f"127.0.0.1:{closed_port}" in details


def test_without_name_records_or_an_agent_the_lookups_fail_precondition(
    network: tuple[NetworkLayerServicer, network_pb2_grpc.NetworkLayerStub],
    node_b: tuple[Node, Endpoint],
) -> None:
    _, stub = network
    b, _ = node_b
    with pytest.raises(grpc.RpcError) as info:
        stub.EstablishSecureChannel(
            network_pb2.EstablishSecureChannelRequest(
                peer_id=common_pb2.PeerId(id=b.identity.peer_id)
            )
        )
    code, details = status(info)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "no TrustChain name records" in details

    with pytest.raises(grpc.RpcError) as info:
        stub.ResolveAssetAddress(
            network_pb2.ResolveAssetAddressRequest(asset_id=common_pb2.AssetId(id=b"\x01" * 32))
        )
    code, details = status(info)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "no TrustChain name records" in details

    # Without a traversal agent (no rendezvous node) there is nothing to traverse with; the
    # working RPC is tested in test_network_layer_traversal.py.
    with pytest.raises(grpc.RpcError) as info:
        stub.HandleNatTraversal(
            network_pb2.HandleNatTraversalRequest(peer_id=common_pb2.PeerId(id=b.identity.peer_id))
        )
    code, details = status(info)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "no NAT traversal agent" in details


@pytest.mark.parametrize(
    ("peer_id", "address", "complaint"),
    [
        (b"\x01" * 31, quic_address("127.0.0.1", 4433), "peer_id.id must be 32 bytes"),
        (
            b"\x01" * 32,
            common_pb2.NetworkAddress(ip=b"\x7f\x00\x00", port=4433, transport=QUIC),
            "4 (IPv4) or 16 (IPv6)",
        ),
        (b"\x01" * 32, quic_address("127.0.0.1", 0), "port must be 1..65535"),
        (
            b"\x01" * 32,
            common_pb2.NetworkAddress(ip=b"\x7f\x00\x00\x01", port=1 << 16, transport=QUIC),
            "port must be 1..65535",
        ),
        (
            b"\x01" * 32,
            common_pb2.NetworkAddress(
                ip=b"\x7f\x00\x00\x01", port=4433, transport=common_pb2.TRANSPORT_UDP
            ),
            "TRANSPORT_QUIC addresses only, not TRANSPORT_UDP",
        ),
        (
            b"\x01" * 32,
            common_pb2.NetworkAddress(ip=b"\x7f\x00\x00\x01", port=4433),
            "not TRANSPORT_UNSPECIFIED",
        ),
        (b"\x01" * 32, quic_address("0.0.0.0", 4433), "cannot be dialled"),  # noqa: S104
        (b"\x01" * 32, quic_address("ff02::1", 4433), "cannot be dialled"),
    ],
)
def test_malformed_requests_are_invalid_argument(
    network: tuple[NetworkLayerServicer, network_pb2_grpc.NetworkLayerStub],
    peer_id: bytes,
    address: common_pb2.NetworkAddress,
    complaint: str,
) -> None:
    _, stub = network
    with pytest.raises(grpc.RpcError) as info:
        stub.EstablishSecureChannel(
            network_pb2.EstablishSecureChannelRequest(
                peer_id=common_pb2.PeerId(id=peer_id), address=address
            )
        )
    code, details = status(info)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert complaint in details


def test_a_transport_from_a_newer_client_is_invalid_argument(
    network: tuple[NetworkLayerServicer, network_pb2_grpc.NetworkLayerStub],
) -> None:
    _, stub = network
    address = quic_address("127.0.0.1", 4433)
    address.transport = 9  # type: ignore[assignment]  # not in this version's enum
    with pytest.raises(grpc.RpcError) as info:
        stub.EstablishSecureChannel(
            network_pb2.EstablishSecureChannelRequest(
                peer_id=common_pb2.PeerId(id=b"\x01" * 32), address=address
            )
        )
    code, details = status(info)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not 9" in details


def test_a_peer_that_never_answers_exports_is_deadline_exceeded(
    pki: Pki, server_identity: NodeIdentity, node_a: Node
) -> None:
    """A STOQ node that accepts connections but serves no channel exports."""
    silent = node_a.loop.run(Endpoint.listen(pki.config(server_identity), "127.0.0.1", 0))
    servicer = NetworkLayerServicer(node_a.config, node_a.security, node_a.loop.loop, timeout=3.0)
    server, port = serve(servicer)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = network_pb2_grpc.NetworkLayerStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.EstablishSecureChannel(
                    establish_request(server_identity, "127.0.0.1", silent.port)
                )
        code, details = status(info)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert f"127.0.0.1:{silent.port}" in details
    finally:
        server.stop(grace=None)
        servicer.close()
        node_a.loop.run(silent.close())


# --- hostile initiators -------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_connection(node_a: Node, node_b: tuple[Node, Endpoint]) -> Iterator[StoqConnection]:
    """A plain STOQ connection from A to B, for speaking the export protocol by hand."""
    _, endpoint = node_b
    connection = node_a.loop.run(connect(node_a.config, "127.0.0.1", endpoint.port))
    try:
        yield connection
    finally:
        node_a.loop.run(connection.close())


async def exchange(connection: StoqConnection, *messages: bytes) -> bytes:
    """Send ``messages`` on a new stream, then the peer's next message."""
    stream = await connection.open_stream()
    for message in messages:
        await stream.send(message)
    return await stream.receive()


def assert_exports_still_work(node_a: Node, b: Node, connection: StoqConnection) -> None:
    async def export() -> tuple[bytes, bytes]:
        channel = await export_channel(connection)
        return channel.channel_id, channel.seal(b"still serving")

    channel_id, record = node_a.loop.run(export(), timeout=60)
    opened = b.security_stub.DecryptTransport(
        security_pb2.DecryptTransportRequest(channel_id=channel_id, record=record)
    )
    assert opened.plaintext == b"still serving"


def test_forged_and_foreign_streams_do_not_stop_the_responder(
    node_a: Node, node_b: tuple[Node, Endpoint], raw_connection: StoqConnection
) -> None:
    b, _ = node_b
    connection = raw_connection

    async def hostile() -> dict[str, object]:
        seen: dict[str, object] = {}
        seen["garbage"] = await exchange(connection, EXPORT_REQUEST_PREFIX + b"\x01\x01garbage")
        seen["oversized"] = await exchange(
            connection, EXPORT_REQUEST_PREFIX + b"\0" * (MAX_EXPORT_MESSAGE + 1)
        )
        try:
            await exchange(connection, b"GET / HTTP/1.1")
        except StreamClosed as exc:
            seen["foreign"] = str(exc)
        # A well-formed export, but proving a key other than the one this connection
        # authenticated: the responder answers M1, then refuses M3.
        impostor = Initiator(
            SigningKey.generate(),
            expected_peer=connection.peer.key,
            binding=connection.channel.channel_id,
        )
        stream = await connection.open_stream()
        await stream.send(EXPORT_REQUEST_PREFIX + impostor.start())
        answer = await stream.receive()
        await stream.send(impostor.receive(answer[1:]), end_stream=True)
        seen["impostor"] = await stream.receive()
        return seen

    seen = node_a.loop.run(hostile(), timeout=60)
    for case in ("garbage", "oversized", "impostor"):
        reply = seen[case]
        assert isinstance(reply, bytes)
        assert reply[0] == 0x01, case  # refused, with a reason
    assert b"refused by accept_peer" in cast(bytes, seen["impostor"])
    assert b"%d-byte export request" % (MAX_EXPORT_MESSAGE + 1) in cast(bytes, seen["oversized"])
    assert "reset by the peer" in cast(str, seen["foreign"])
    assert not connection.closed
    assert_exports_still_work(node_a, b, connection)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(garbage=st.binary(max_size=3000))
def test_garbage_requests_are_refused(
    node_a: Node, node_b: tuple[Node, Endpoint], raw_connection: StoqConnection, garbage: bytes
) -> None:
    reply = node_a.loop.run(exchange(raw_connection, EXPORT_REQUEST_PREFIX + garbage), timeout=60)
    assert reply[0] == 0x01
    assert not raw_connection.closed


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_requests_are_answered_or_refused(
    node_a: Node, raw_connection: StoqConnection, data: st.DataObject
) -> None:
    """A real M1 with one byte changed or cut short: refused, or (when the change only touches
    the initiator's random) answered; either way the connection stays up."""
    connection = raw_connection
    request = ExportInitiator(
        node_a.identity.signing_key, connection.peer.key, connection.channel.channel_id
    ).start()
    position = data.draw(st.integers(len(EXPORT_REQUEST_PREFIX), len(request) - 1))
    if data.draw(st.booleans()):
        mutated = request[:position]
    else:
        flip = data.draw(st.integers(1, 255))
        mutated = request[:position] + bytes([request[position] ^ flip]) + request[position + 1 :]

    async def send() -> bytes:
        stream = await connection.open_stream()
        await stream.send(mutated)
        reply = await stream.receive()
        stream.reset()
        return reply

    reply = node_a.loop.run(send(), timeout=60)
    assert reply[0] in (0x00, 0x01)
    assert not connection.closed


def test_exports_survive_the_garbage(
    node_a: Node, node_b: tuple[Node, Endpoint], raw_connection: StoqConnection
) -> None:
    b, _ = node_b
    assert_exports_still_work(node_a, b, raw_connection)


# --- the export core, sans-IO -------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> tuple[SigningKey, SigningKey]:
    return SigningKey.generate(), SigningKey.generate()


def test_core_pair_agrees_on_one_channel(keys: tuple[SigningKey, SigningKey]) -> None:
    a, b = keys
    initiator = ExportInitiator(a, b.public_key(), b"binding")
    responder = ExportResponder(b, a.public_key(), b"binding")
    finish = initiator.receive_answer(responder.receive_request(initiator.start()))
    b_end = responder.receive_finish(finish)
    a_end = initiator.receive_result(ADOPTED)
    assert a_end.channel_id == b_end.channel_id
    assert b_end.open(a_end.seal(b"x")) == b"x"
    assert a_end.peer == b.public_key()
    assert b_end.peer == a.public_key()


def test_core_different_bindings_fail_as_peer_rejected(
    keys: tuple[SigningKey, SigningKey],
) -> None:
    a, b = keys
    initiator = ExportInitiator(a, b.public_key(), b"connection one")
    responder = ExportResponder(b, a.public_key(), b"connection two")
    answer = responder.receive_request(initiator.start())
    with pytest.raises(PeerRejected):
        initiator.receive_answer(answer)


def test_core_initiator_refuses_a_responder_with_another_key(
    keys: tuple[SigningKey, SigningKey],
) -> None:
    a, b = keys
    initiator = ExportInitiator(a, SigningKey.generate().public_key(), b"binding")
    responder = ExportResponder(b, a.public_key(), b"binding")
    with pytest.raises(PeerRejected, match="not the expected"):
        initiator.receive_answer(responder.receive_request(initiator.start()))


def test_core_reply_parsing(keys: tuple[SigningKey, SigningKey]) -> None:
    a, b = keys
    initiator = ExportInitiator(a, b.public_key(), b"binding")
    initiator.start()
    with pytest.raises(ChannelExportRefused) as refused:
        initiator.receive_answer(refusal("no room"))
    assert refused.value.reason == "no room"
    for reply in (b"", b"\x07\x00", b"\x00" + b"\0" * (MAX_EXPORT_MESSAGE + 1)):
        with pytest.raises(ProtocolViolation):
            ExportInitiator(a, b.public_key(), b"binding").receive_answer(reply)
    with pytest.raises(ProtocolViolation, match="not a channel export request"):
        ExportResponder(b, a.public_key(), b"binding").receive_request(b"hello")


def test_refusal_reasons_are_bounded_and_valid_utf8() -> None:
    message = refusal("é" * 2000)
    assert message[0] == 0x01
    assert len(message) <= 1 + 1024
    assert message[1:].decode("utf-8") == "é" * 512
