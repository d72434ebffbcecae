"""SecurityLayer over a real gRPC server on loopback: every implemented RPC, and bad requests.

The server is TrustChain's servicer with a real key store (SQLite on disk) and a real hybrid
identity; the client runs the initiator side of the channel handshake itself, so every record
that crosses the wire is sealed by one implementation side and opened by the other.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypermesh_interfaces.v1 import common_pb2, security_pb2, security_pb2_grpc
from trustchain.crypto.algorithms import KemAlgorithm
from trustchain.crypto.channel import SecureChannel
from trustchain.crypto.handshake import Initiator, Responder
from trustchain.crypto.kem import KemPublicKey
from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KeyStore
from trustchain.crypto.sealed_box import seal
from trustchain.crypto.signatures import SigningKey, VerifyKey
from trustchain.errors import AlgorithmMismatch, ChannelClosed, UntrustedPeer
from trustchain.security_layer import (
    ChannelExists,
    ChannelLimitReached,
    SecurityLayerServicer,
    asset_key_names,
    serve,
)

SERVING_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.NOT_FOUND,
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def server_identity() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def client_identity() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyStore]:
    home = tmp_path_factory.mktemp("keystore")
    store = KeyStore.open(
        home,
        passphrase=b"integration passphrase",
        kdf_params=INSECURE_TEST_KDF_PARAMS,
        allow_weak_kdf=True,
    )
    with store:
        yield store


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def servicer(
    server_identity: SigningKey, keystore: KeyStore, clock: Clock
) -> SecurityLayerServicer:
    return SecurityLayerServicer(
        server_identity, keystore, handshake_ttl=30.0, max_pending=8, clock=clock
    )


@pytest.fixture(scope="module")
def stub(servicer: SecurityLayerServicer) -> Iterator[security_pb2_grpc.SecurityLayerStub]:
    server, port = serve(servicer, "127.0.0.1:0")
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[("grpc.max_send_message_length", 8 << 20)],
    )
    try:
        yield security_pb2_grpc.SecurityLayerStub(channel)
    finally:
        channel.close()
        server.stop(grace=None)


def open_channel(
    stub: security_pb2_grpc.SecurityLayerStub, identity: SigningKey, server: VerifyKey
) -> tuple[SecureChannel, common_pb2.SecureChannel]:
    initiator = Initiator(identity, expected_peer=server)
    opened = stub.OpenChannel(security_pb2.OpenChannelRequest(handshake=initiator.start()))
    final = initiator.receive(opened.handshake)
    described = stub.CompleteChannel(
        security_pb2.CompleteChannelRequest(channel_id=opened.channel_id, handshake=final)
    )
    return initiator.channel, described


def status_of(call: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    error = call.value
    assert isinstance(error, grpc.Call)
    code = error.code()
    assert isinstance(code, grpc.StatusCode)
    return code


@pytest.fixture(scope="module")
def established(
    stub: security_pb2_grpc.SecurityLayerStub,
    client_identity: SigningKey,
    server_identity: SigningKey,
) -> tuple[SecureChannel, common_pb2.SecureChannel]:
    return open_channel(stub, client_identity, server_identity.public_key())


def assert_still_serving(
    stub: security_pb2_grpc.SecurityLayerStub,
    established: tuple[SecureChannel, common_pb2.SecureChannel],
) -> None:
    local, described = established
    reply = stub.EncryptTransport(
        security_pb2.EncryptTransportRequest(
            channel_id=described.channel_id, plaintext=b"still serving"
        )
    )
    assert local.open(reply.record) == b"still serving"


# -- channels ----------------------------------------------------------------------------------


def test_channel_describes_both_ends(
    established: tuple[SecureChannel, common_pb2.SecureChannel], client_identity: SigningKey
) -> None:
    local, described = established
    assert described.channel_id == local.channel_id
    assert described.peer_id.id == client_identity.public_key().key_id
    assert VerifyKey.from_bytes(described.peer_signing_public_key) == client_identity.public_key()
    assert described.aead_algorithm == local.aead_algorithm.label
    assert described.kem_algorithm == "hybrid-x25519-ml-kem-1024"
    assert described.established_at.seconds > 0


def test_records_round_trip_both_ways(
    stub: security_pb2_grpc.SecurityLayerStub,
    established: tuple[SecureChannel, common_pb2.SecureChannel],
) -> None:
    local, described = established
    previous = -1
    for index in range(5):
        payload = f"server to client {index}".encode()
        reply = stub.EncryptTransport(
            security_pb2.EncryptTransportRequest(
                channel_id=described.channel_id, plaintext=payload, associated_data=b"hdr"
            )
        )
        assert reply.sequence > previous
        previous = reply.sequence
        assert payload not in reply.record
        assert local.open(reply.record, b"hdr") == payload

        record = local.seal(f"client to server {index}".encode(), b"hdr")
        opened = stub.DecryptTransport(
            security_pb2.DecryptTransportRequest(
                channel_id=described.channel_id, record=record, associated_data=b"hdr"
            )
        )
        assert opened.plaintext == f"client to server {index}".encode()


def test_tampered_record_is_invalid_argument_and_server_keeps_serving(
    stub: security_pb2_grpc.SecurityLayerStub,
    established: tuple[SecureChannel, common_pb2.SecureChannel],
) -> None:
    local, described = established
    record = bytearray(local.seal(b"pay 10"))
    record[-3] ^= 0x40
    with pytest.raises(grpc.RpcError) as call:
        stub.DecryptTransport(
            security_pb2.DecryptTransportRequest(
                channel_id=described.channel_id, record=bytes(record)
            )
        )
    assert status_of(call) == grpc.StatusCode.INVALID_ARGUMENT
    assert_still_serving(stub, established)


def test_wrong_associated_data_is_rejected(
    stub: security_pb2_grpc.SecurityLayerStub,
    established: tuple[SecureChannel, common_pb2.SecureChannel],
) -> None:
    local, described = established
    record = local.seal(b"bound to a header", b"header A")
    with pytest.raises(grpc.RpcError) as call:
        stub.DecryptTransport(
            security_pb2.DecryptTransportRequest(
                channel_id=described.channel_id, record=record, associated_data=b"header B"
            )
        )
    assert status_of(call) == grpc.StatusCode.INVALID_ARGUMENT


def test_replayed_record_is_already_exists(
    stub: security_pb2_grpc.SecurityLayerStub,
    established: tuple[SecureChannel, common_pb2.SecureChannel],
) -> None:
    local, described = established
    request = security_pb2.DecryptTransportRequest(
        channel_id=described.channel_id, record=local.seal(b"once")
    )
    assert stub.DecryptTransport(request).plaintext == b"once"
    with pytest.raises(grpc.RpcError) as call:
        stub.DecryptTransport(request)
    assert status_of(call) == grpc.StatusCode.ALREADY_EXISTS
    assert_still_serving(stub, established)


def test_unknown_and_malformed_channel_ids(
    stub: security_pb2_grpc.SecurityLayerStub,
    established: tuple[SecureChannel, common_pb2.SecureChannel],
) -> None:
    with pytest.raises(grpc.RpcError) as call:
        stub.EncryptTransport(
            security_pb2.EncryptTransportRequest(channel_id=secrets.token_bytes(32), plaintext=b"x")
        )
    assert status_of(call) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as call:
        stub.DecryptTransport(
            security_pb2.DecryptTransportRequest(channel_id=b"short", record=b"x" * 40)
        )
    assert status_of(call) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as call:
        stub.CompleteChannel(
            security_pb2.CompleteChannelRequest(channel_id=secrets.token_bytes(16), handshake=b"x")
        )
    assert status_of(call) == grpc.StatusCode.NOT_FOUND
    assert_still_serving(stub, established)


def test_oversized_plaintext_is_refused(
    stub: security_pb2_grpc.SecurityLayerStub,
    established: tuple[SecureChannel, common_pb2.SecureChannel],
) -> None:
    _, described = established
    with pytest.raises(grpc.RpcError) as call:
        stub.EncryptTransport(
            security_pb2.EncryptTransportRequest(
                channel_id=described.channel_id, plaintext=b"\0" * ((1 << 20) + 1)
            )
        )
    assert status_of(call) == grpc.StatusCode.INVALID_ARGUMENT
    assert_still_serving(stub, established)


def test_tampered_final_message_fails_and_consumes_the_handshake(
    stub: security_pb2_grpc.SecurityLayerStub,
    client_identity: SigningKey,
    server_identity: SigningKey,
    established: tuple[SecureChannel, common_pb2.SecureChannel],
) -> None:
    initiator = Initiator(client_identity, expected_peer=server_identity.public_key())
    opened = stub.OpenChannel(security_pb2.OpenChannelRequest(handshake=initiator.start()))
    final = bytearray(initiator.receive(opened.handshake))
    final[len(final) // 2] ^= 0x01
    with pytest.raises(grpc.RpcError) as call:
        stub.CompleteChannel(
            security_pb2.CompleteChannelRequest(
                channel_id=opened.channel_id, handshake=bytes(final)
            )
        )
    assert status_of(call) in {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT}
    with pytest.raises(grpc.RpcError) as call:
        stub.CompleteChannel(
            security_pb2.CompleteChannelRequest(
                channel_id=opened.channel_id, handshake=bytes(final)
            )
        )
    assert status_of(call) == grpc.StatusCode.NOT_FOUND
    assert_still_serving(stub, established)


def test_client_refuses_an_impostor_server(
    stub: security_pb2_grpc.SecurityLayerStub, client_identity: SigningKey
) -> None:
    someone_else = SigningKey.generate().public_key()
    initiator = Initiator(client_identity, expected_peer=someone_else)
    opened = stub.OpenChannel(security_pb2.OpenChannelRequest(handshake=initiator.start()))
    with pytest.raises(UntrustedPeer):
        initiator.receive(opened.handshake)


def test_pending_handshakes_expire_and_are_capped(
    stub: security_pb2_grpc.SecurityLayerStub,
    client_identity: SigningKey,
    server_identity: SigningKey,
    clock: Clock,
    established: tuple[SecureChannel, common_pb2.SecureChannel],
) -> None:
    clock.now += 60  # everything pending so far has expired
    initiator = Initiator(client_identity, expected_peer=server_identity.public_key())
    opened = stub.OpenChannel(security_pb2.OpenChannelRequest(handshake=initiator.start()))
    final = initiator.receive(opened.handshake)
    clock.now += 31
    with pytest.raises(grpc.RpcError) as call:
        stub.CompleteChannel(
            security_pb2.CompleteChannelRequest(channel_id=opened.channel_id, handshake=final)
        )
    assert status_of(call) == grpc.StatusCode.NOT_FOUND

    for _ in range(8):  # max_pending of the fixture
        stub.OpenChannel(
            security_pb2.OpenChannelRequest(
                handshake=Initiator(client_identity).start(),
            )
        )
    with pytest.raises(grpc.RpcError) as call:
        stub.OpenChannel(
            security_pb2.OpenChannelRequest(handshake=Initiator(client_identity).start())
        )
    assert status_of(call) == grpc.StatusCode.RESOURCE_EXHAUSTED
    clock.now += 31
    open_channel(stub, client_identity, server_identity.public_key())  # room again
    assert_still_serving(stub, established)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(garbage=st.binary(max_size=4096))
def test_garbage_handshakes_get_a_clear_status(
    stub: security_pb2_grpc.SecurityLayerStub,
    established: tuple[SecureChannel, common_pb2.SecureChannel],
    garbage: bytes,
) -> None:
    with pytest.raises(grpc.RpcError) as call:
        stub.OpenChannel(security_pb2.OpenChannelRequest(handshake=garbage))
    assert status_of(call) in SERVING_CODES
    assert_still_serving(stub, established)


def test_concurrent_channels(
    stub: security_pb2_grpc.SecurityLayerStub,
    server_identity: SigningKey,
    clock: Clock,
) -> None:
    clock.now += 31  # clear what earlier tests left pending
    identities = [SigningKey.generate() for _ in range(4)]
    barrier = threading.Barrier(len(identities))

    def converse(identity: SigningKey) -> bytes:
        barrier.wait()
        local, described = open_channel(stub, identity, server_identity.public_key())
        payload = identity.public_key().key_id
        record = local.seal(payload)
        opened = stub.DecryptTransport(
            security_pb2.DecryptTransportRequest(channel_id=described.channel_id, record=record)
        )
        return bytes(opened.plaintext)

    with futures.ThreadPoolExecutor(len(identities)) as pool:
        results = list(pool.map(converse, identities))
    assert results == [i.public_key().key_id for i in identities]


# -- adopted channels ----------------------------------------------------------------------------


def handshake_elsewhere(
    initiator_identity: SigningKey, responder_identity: SigningKey
) -> tuple[SecureChannel, SecureChannel]:
    """Run a whole handshake in process (as STOQ's channel export does over a QUIC stream)."""
    initiator = Initiator(initiator_identity, expected_peer=responder_identity.public_key())
    responder = Responder(
        responder_identity, kem_algorithms=(KemAlgorithm.HYBRID_X25519_ML_KEM_1024,)
    )
    hello = responder.receive(initiator.start())
    assert hello is not None
    assert responder.receive(initiator.receive(hello)) is None
    return initiator.channel, responder.channel


def test_adopted_channel_is_served_by_the_transport_rpcs(
    stub: security_pb2_grpc.SecurityLayerStub,
    servicer: SecurityLayerServicer,
    client_identity: SigningKey,
    server_identity: SigningKey,
) -> None:
    remote, adopted = handshake_elsewhere(client_identity, server_identity)
    described = servicer.adopt_channel(
        adopted, kem_algorithm=KemAlgorithm.HYBRID_X25519_ML_KEM_1024
    )
    assert described.channel_id == remote.channel_id == adopted.channel_id
    assert described.peer_id.id == client_identity.public_key().key_id
    assert VerifyKey.from_bytes(described.peer_signing_public_key) == client_identity.public_key()
    assert described.kem_algorithm == "hybrid-x25519-ml-kem-1024"
    assert described.aead_algorithm == adopted.aead_algorithm.label

    sealed = stub.EncryptTransport(
        security_pb2.EncryptTransportRequest(
            channel_id=described.channel_id, plaintext=b"from the service", associated_data=b"h"
        )
    )
    assert remote.open(sealed.record, b"h") == b"from the service"
    opened = stub.DecryptTransport(
        security_pb2.DecryptTransportRequest(
            channel_id=described.channel_id,
            record=remote.seal(b"to the service", b"h"),
            associated_data=b"h",
        )
    )
    assert opened.plaintext == b"to the service"


def test_adopt_refuses_duplicates_closed_channels_and_other_kems(
    servicer: SecurityLayerServicer, client_identity: SigningKey, server_identity: SigningKey
) -> None:
    kem = KemAlgorithm.HYBRID_X25519_ML_KEM_1024
    _, adopted = handshake_elsewhere(client_identity, server_identity)
    servicer.adopt_channel(adopted, kem_algorithm=kem)
    with pytest.raises(ChannelExists):
        servicer.adopt_channel(adopted, kem_algorithm=kem)

    _, other = handshake_elsewhere(client_identity, server_identity)
    with pytest.raises(AlgorithmMismatch):
        servicer.adopt_channel(other, kem_algorithm=KemAlgorithm.ML_KEM_1024)
    other.close()
    with pytest.raises(ChannelClosed):
        servicer.adopt_channel(other, kem_algorithm=kem)


def test_adopted_and_completed_channels_share_one_limit(
    keystore: KeyStore, client_identity: SigningKey, server_identity: SigningKey
) -> None:
    small = SecurityLayerServicer(server_identity, keystore, max_channels=1)
    server, port = serve(small)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = security_pb2_grpc.SecurityLayerStub(channel)
            _, adopted = handshake_elsewhere(client_identity, server_identity)
            small.adopt_channel(adopted, kem_algorithm=KemAlgorithm.HYBRID_X25519_ML_KEM_1024)
            with pytest.raises(grpc.RpcError) as call:
                open_channel(stub, client_identity, server_identity.public_key())
            assert status_of(call) == grpc.StatusCode.RESOURCE_EXHAUSTED
            _, another = handshake_elsewhere(client_identity, server_identity)
            with pytest.raises(ChannelLimitReached):
                small.adopt_channel(another, kem_algorithm=KemAlgorithm.HYBRID_X25519_ML_KEM_1024)
    finally:
        server.stop(grace=None)


# -- certificates --------------------------------------------------------------------------------


def test_validate_certificates_needs_trust_anchors(
    stub: security_pb2_grpc.SecurityLayerStub,
) -> None:
    request = security_pb2.ValidateCertificatesRequest(
        chain=common_pb2.CertificateChain(certificates=[b"\x30\x00"])
    )
    with pytest.raises(grpc.RpcError) as call:
        stub.ValidateCertificates(request)
    assert status_of(call) == grpc.StatusCode.FAILED_PRECONDITION


# -- asset keys ----------------------------------------------------------------------------------


def test_generate_asset_keys_lifecycle(
    stub: security_pb2_grpc.SecurityLayerStub, keystore: KeyStore
) -> None:
    asset = secrets.token_bytes(32)
    request = security_pb2.GenerateAssetKeysRequest(asset_id=common_pb2.AssetId(id=asset))
    first = stub.GenerateAssetKeys(request)
    assert first.asset_id.id == asset
    assert first.version == 1
    signing = VerifyKey.from_bytes(first.signing_public_key)
    kem = KemPublicKey.from_bytes(first.kem_public_key)
    assert signing.key_id == first.signing_key_id
    assert kem.key_id == first.kem_key_id
    assert first.signature_algorithm == "hybrid-ed25519-falcon-1024"
    assert first.kem_algorithm == "hybrid-x25519-ml-kem-1024"

    # The private halves are in the key store: it signs for the signing key and opens boxes
    # sealed to the KEM key.
    signing_name, kem_name = asset_key_names(asset)
    detached = keystore.sign(signing_name, b"asset state")
    signing.verify(detached.signature, b"asset state")
    assert keystore.open_sealed(kem_name, seal(kem, b"asset data key")) == b"asset data key"

    with pytest.raises(grpc.RpcError) as call:
        stub.GenerateAssetKeys(request)
    assert status_of(call) == grpc.StatusCode.ALREADY_EXISTS

    again = stub.GenerateAssetKeys(
        security_pb2.GenerateAssetKeysRequest(
            asset_id=common_pb2.AssetId(id=asset),
            if_exists=security_pb2.EXISTING_KEYS_POLICY_RETURN,
        )
    )
    assert again == first

    rotated = stub.GenerateAssetKeys(
        security_pb2.GenerateAssetKeysRequest(
            asset_id=common_pb2.AssetId(id=asset),
            if_exists=security_pb2.EXISTING_KEYS_POLICY_ROTATE,
        )
    )
    assert rotated.version == 2
    assert rotated.signing_key_id != first.signing_key_id
    assert rotated.kem_key_id != first.kem_key_id
    # Old versions stay usable for verifying and decrypting.
    assert keystore.verify(signing_name, b"asset state", detached).version == 1
    assert keystore.open_sealed(kem_name, seal(kem, b"old box")) == b"old box"


@pytest.mark.parametrize("asset", [b"", b"\x01" * 31, b"\x01" * 33])
def test_generate_asset_keys_rejects_bad_asset_ids(
    stub: security_pb2_grpc.SecurityLayerStub,
    established: tuple[SecureChannel, common_pb2.SecureChannel],
    asset: bytes,
) -> None:
    with pytest.raises(grpc.RpcError) as call:
        stub.GenerateAssetKeys(
            security_pb2.GenerateAssetKeysRequest(asset_id=common_pb2.AssetId(id=asset))
        )
    assert status_of(call) == grpc.StatusCode.INVALID_ARGUMENT
    assert_still_serving(stub, established)


def test_generate_asset_keys_rejects_unknown_policy(
    stub: security_pb2_grpc.SecurityLayerStub,
) -> None:
    request = security_pb2.GenerateAssetKeysRequest(asset_id=common_pb2.AssetId(id=b"\x02" * 32))
    request.if_exists = 7  # type: ignore[assignment]  # an enum value from a newer client
    with pytest.raises(grpc.RpcError) as call:
        stub.GenerateAssetKeys(request)
    assert status_of(call) == grpc.StatusCode.INVALID_ARGUMENT


def test_asset_keys_survive_a_server_restart(tmp_path: Path, server_identity: SigningKey) -> None:
    asset = secrets.token_bytes(32)
    request = security_pb2.GenerateAssetKeysRequest(asset_id=common_pb2.AssetId(id=asset))
    for attempt in range(2):
        store = KeyStore.open(
            tmp_path, passphrase=b"pw", kdf_params=INSECURE_TEST_KDF_PARAMS, allow_weak_kdf=True
        )
        with store:
            server, port = serve(SecurityLayerServicer(server_identity, store))
            try:
                with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                    stub = security_pb2_grpc.SecurityLayerStub(channel)
                    if attempt == 0:
                        created = stub.GenerateAssetKeys(request)
                    else:
                        request.if_exists = security_pb2.EXISTING_KEYS_POLICY_RETURN
                        assert stub.GenerateAssetKeys(request) == created
            finally:
                server.stop(grace=None)
