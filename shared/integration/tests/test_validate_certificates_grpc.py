"""``SecurityLayer.ValidateCertificates`` over a real gRPC server, with a real CA's chains.

The CA (root -> entity intermediate -> node) issues into a real key store and logs into a real
transparency log; the server validates against a trust store anchored at that root. Good chains
come back VALID with a trust level and the leaf's peer id; forged, revoked, malformed and
foreign chains come back REJECTED with their reason; policy and size errors are gRPC statuses;
the server keeps serving throughout.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from hypermesh_interfaces.v1 import common_pb2, security_pb2, security_pb2_grpc
from trustchain.ca.authority import CertificateAuthority, Issued
from trustchain.ca.hybrid import certificate_public_key
from trustchain.ca.trust import TrustAnchor, TrustPolicy, TrustStore
from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KeyStore
from trustchain.crypto.signatures import SigningKey
from trustchain.ct.log import TransparencyLog
from trustchain.security_layer import SecurityLayerServicer, serve

VALID = common_pb2.VERDICT_VALID
REJECTED = common_pb2.VERDICT_REJECTED


class World:
    def __init__(self, home: Path, store: KeyStore) -> None:
        self.log_key = SigningKey.generate()
        self.log = TransparencyLog.open(home / "log.db", self.log_key)
        self.ca = CertificateAuthority(home / "ca", store, self.log)
        self.root = self.ca.init_root("root").certificate
        self.ca.issue_intermediate("bank", "bank.hypermesh")
        self.node: Issued = self.ca.issue("bank", "node", "n1.bank.hypermesh")
        self.victim: Issued = self.ca.issue("bank", "node", "n2.bank.hypermesh")
        self.ca.revoke(self.victim.serial, x509.ReasonFlags.key_compromise)
        self.trust = TrustStore(
            [TrustAnchor(self.root, "hypermesh")], log_keys=[self.log_key.public_key()]
        )
        self.trust.add_certificate(self.node.chain[0])
        self.trust.add_crl(self.ca.crl("root"))
        self.trust.add_crl(self.ca.crl("bank"))
        self.strict = TrustStore(
            [TrustAnchor(self.root, "strict", policy=TrustPolicy(require_sct=True))]
        )
        self.strict.add_log_key(self.log_key.public_key())

    def close(self) -> None:
        self.ca.close()
        self.log.close()


def der_chain(issued: Issued) -> list[bytes]:
    return [c.public_bytes(Encoding.DER) for c in (issued.certificate, *issued.chain)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("world")
    store = KeyStore.open(
        home / "keys", passphrase=b"pw", kdf_params=INSECURE_TEST_KDF_PARAMS, allow_weak_kdf=True
    )
    with store:
        world = World(home, store)
        try:
            yield world
        finally:
            world.close()


@pytest.fixture(scope="module")
def stub(
    world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[security_pb2_grpc.SecurityLayerStub]:
    store = KeyStore.open(
        tmp_path_factory.mktemp("server-keys"),
        passphrase=b"pw",
        kdf_params=INSECURE_TEST_KDF_PARAMS,
        allow_weak_kdf=True,
    )
    servicer = SecurityLayerServicer(
        SigningKey.generate(), store, trust_stores={"": world.trust, "strict": world.strict}
    )
    server, port = serve(servicer)
    try:
        with store, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield security_pb2_grpc.SecurityLayerStub(channel)
    finally:
        server.stop(grace=None)


def ask(
    stub: security_pb2_grpc.SecurityLayerStub,
    certificates: list[bytes],
    *,
    policy: str = "",
    expected_peer_id: bytes = b"",
) -> security_pb2.ValidateCertificatesResponse:
    return stub.ValidateCertificates(
        security_pb2.ValidateCertificatesRequest(
            chain=common_pb2.CertificateChain(certificates=certificates),
            policy=policy,
            expected_peer_id=expected_peer_id,
        )
    )


def test_good_chain_is_valid_with_trust_level_and_peer_id(
    stub: security_pb2_grpc.SecurityLayerStub, world: World
) -> None:
    reply = ask(stub, der_chain(world.node))
    assert reply.result.verdict == VALID
    assert list(reply.result.rejections) == []
    assert reply.trust_level == common_pb2.TRUST_LEVEL_FULL
    assert reply.peer_id == certificate_public_key(world.node.certificate).key_id


def test_sct_policy_accepts_logged_certificates(
    stub: security_pb2_grpc.SecurityLayerStub, world: World
) -> None:
    reply = ask(stub, der_chain(world.node), policy="strict")
    assert reply.result.verdict == VALID


def test_expected_peer_id_mismatch_is_rejected(
    stub: security_pb2_grpc.SecurityLayerStub, world: World
) -> None:
    reply = ask(stub, der_chain(world.node), expected_peer_id=b"\x01" * 32)
    assert reply.result.verdict == REJECTED
    assert reply.result.rejections[0].reason == common_pb2.REJECTION_REASON_IDENTITY_MISMATCH


def test_forged_alt_signature_is_rejected(
    stub: security_pb2_grpc.SecurityLayerStub, world: World
) -> None:
    chain = der_chain(world.node)
    forged = bytearray(chain[0])
    # The Falcon altSignatureValue sits inside the TBS, before the outer Ed25519 signature:
    # flip a byte 200 bytes before the end of the TBS-covered region.
    forged[-200] ^= 0x01
    reply = ask(stub, [bytes(forged), *chain[1:]])
    assert reply.result.verdict == REJECTED
    assert reply.result.rejections[0].reason in {
        common_pb2.REJECTION_REASON_INVALID_SIGNATURE,
        common_pb2.REJECTION_REASON_MALFORMED,
    }
    assert reply.trust_level == common_pb2.TRUST_LEVEL_UNTRUSTED


def test_revoked_certificate_is_rejected(
    stub: security_pb2_grpc.SecurityLayerStub, world: World
) -> None:
    reply = ask(stub, der_chain(world.victim))
    assert reply.result.verdict == REJECTED
    assert reply.result.rejections[0].reason == common_pb2.REJECTION_REASON_REVOKED


def test_malformed_der_is_a_rejection_not_an_error(
    stub: security_pb2_grpc.SecurityLayerStub,
) -> None:
    reply = ask(stub, [b"\x30\x03\x02\x01"])
    assert reply.result.verdict == REJECTED
    assert reply.result.rejections[0].reason == common_pb2.REJECTION_REASON_MALFORMED


def test_foreign_root_is_rejected(
    stub: security_pb2_grpc.SecurityLayerStub, tmp_path: Path
) -> None:
    store = KeyStore.open(
        tmp_path / "k", passphrase=b"pw", kdf_params=INSECURE_TEST_KDF_PARAMS, allow_weak_kdf=True
    )
    with store:
        other = CertificateAuthority(tmp_path / "ca", store)
        try:
            other.init_root("root")
            other.issue_intermediate("bank", "bank.hypermesh")
            stranger = other.issue("bank", "node", "n1.bank.hypermesh")
        finally:
            other.close()
    reply = ask(stub, der_chain(stranger))
    assert reply.result.verdict == REJECTED
    assert reply.result.rejections[0].reason == common_pb2.REJECTION_REASON_UNTRUSTED_ROOT


def test_unknown_policy_and_bad_sizes_are_statuses_and_server_keeps_serving(
    stub: security_pb2_grpc.SecurityLayerStub, world: World
) -> None:
    chain = der_chain(world.node)
    cases: list[tuple[list[bytes], str, grpc.StatusCode]] = [
        (chain, "nope", grpc.StatusCode.NOT_FOUND),
        ([], "", grpc.StatusCode.INVALID_ARGUMENT),
        (chain * 9, "", grpc.StatusCode.INVALID_ARGUMENT),  # 18 > 16 certificates
        ([b"\x30" * (65 << 10)], "", grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for certificates, policy, code in cases:
        with pytest.raises(grpc.RpcError, match=code.name) as call:
            ask(stub, certificates, policy=policy)
        error = call.value
        assert isinstance(error, grpc.Call)
        assert error.code() == code
    assert ask(stub, chain).result.verdict == VALID
