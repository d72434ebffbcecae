"""NetworkLayer.EstablishSecureChannel across two processes, each with its own SecurityLayer.

Node B runs in a child process: its own key store, its TrustChain ``SecurityLayer`` on a gRPC
port, and a STOQ endpoint answering channel exports. Node A is this process: its own key store
and ``SecurityLayer``, and STOQ's ``NetworkLayer`` on gRPC. The two share nothing but the CA
that certified them and the network, so when B's ``DecryptTransport`` opens the record A's
``EncryptTransport`` sealed under the channel id ``EstablishSecureChannel`` returned, the
channel was really agreed over STOQ between two separate security layers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hypermesh_interfaces.v1 import (
    common_pb2,
    network_pb2,
    network_pb2_grpc,
    security_pb2,
    security_pb2_grpc,
)
from stoq.config import StoqConfig
from stoq.identity import NodeIdentity, PeerPolicy
from stoq.network_layer import EventLoopThread, NetworkLayerServicer
from stoq.network_layer import serve as serve_network
from trustchain.ca.authority import CertificateAuthority, Issued
from trustchain.ca.trust import TrustAnchor, TrustStore
from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KeyStore
from trustchain.security_layer import SecurityLayerServicer
from trustchain.security_layer import serve as serve_security

NAMESPACE = "bank.hypermesh"
PASSPHRASE = b"integration"

#: Node B. argv: key store home, key name, chain PEM, root PEM. Prints its ports as one JSON
#: line, serves until its stdin closes, then shuts down in order.
NODE_B = """
import asyncio, json, sys
from pathlib import Path
from trustchain.ca.trust import TrustAnchor, TrustStore
from trustchain.crypto.keystore import KeyStore
from trustchain.security_layer import SecurityLayerServicer, serve
from stoq.config import StoqConfig
from stoq.endpoint import Endpoint
from stoq.identity import NodeIdentity, PeerPolicy, load_pem_chain
from stoq.network_layer import serve_endpoint_channel_exports

home, key_name, chain_pem, root_pem = sys.argv[1:5]

async def main() -> None:
    chain = load_pem_chain(Path(chain_pem).read_bytes())
    (root,) = load_pem_chain(Path(root_pem).read_bytes())
    trust = TrustStore([TrustAnchor(root, "hypermesh")], certificates=chain[1:])
    with KeyStore.open(Path(home), passphrase=b"integration", create=False,
                       allow_weak_kdf=True) as store:
        identity = NodeIdentity.from_keystore(store, key_name, chain)
        security = SecurityLayerServicer(identity.signing_key, store)
        server, security_port = serve(security)
        config = StoqConfig(identity, PeerPolicy(trust, namespaces=("bank.hypermesh",)))
        endpoint = await Endpoint.listen(config, "127.0.0.1", 0)
        exports = asyncio.ensure_future(serve_endpoint_channel_exports(endpoint, security))
        print(json.dumps({"stoq": endpoint.port, "security": security_port}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await endpoint.close()
        await exports
        server.stop(grace=None)

asyncio.run(main())
"""


@dataclass(frozen=True)
class Pki:
    trust: TrustStore
    root_pem: Path
    a: Issued
    b_home: Path
    b_key: str
    b_chain_pem: Path
    b_peer_id: bytes


def pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


@pytest.fixture(scope="module")
def ca_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyStore]:
    store = KeyStore.open(
        tmp_path_factory.mktemp("ca-keys"),
        passphrase=PASSPHRASE,
        kdf_params=INSECURE_TEST_KDF_PARAMS,
        allow_weak_kdf=True,
    )
    with store:
        yield store


@pytest.fixture(scope="module")
def pki(ca_store: KeyStore, tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("network-layer-pki")
    b_home = base / "node-b-keys"
    with KeyStore.open(
        b_home, passphrase=PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS, allow_weak_kdf=True
    ) as b_store:
        b_store.generate("node")
        b_public = b_store.signing_key("node").public_key()
    with CertificateAuthority(base / "ca", ca_store) as ca:
        root = ca.init_root("hypermesh-root")
        ca.issue_intermediate("bank", NAMESPACE)
        a = ca.issue("bank", "node", "node-a.bank.hypermesh", dns_names=["node-a.bank.hypermesh"])
        b = ca.issue(
            "bank",
            "node",
            "node-b.bank.hypermesh",
            subject_key=b_public,
            dns_names=["node-b.bank.hypermesh"],
        )
    root_pem = base / "root.pem"
    root_pem.write_bytes(pem(root.certificate))
    b_chain_pem = base / "node-b.pem"
    b_chain_pem.write_bytes(pem(b.certificate, *b.chain))
    return Pki(
        trust=TrustStore([TrustAnchor(root.certificate, "hypermesh")], certificates=a.chain),
        root_pem=root_pem,
        a=a,
        b_home=b_home,
        b_key="node",
        b_chain_pem=b_chain_pem,
        b_peer_id=b_public.key_id,
    )


@dataclass(frozen=True)
class NodeB:
    stoq_port: int
    security: security_pb2_grpc.SecurityLayerStub


@pytest.fixture(scope="module")
def node_b(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeB]:
    argv = [sys.executable, "-c", NODE_B, str(pki.b_home), pki.b_key, str(pki.b_chain_pem)]
    errors = tmp_path_factory.mktemp("node-b") / "stderr"
    with errors.open("wb") as stderr:
        child = subprocess.Popen(
            [*argv, str(pki.root_pem)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
        )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        line = child.stdout.readline()
        if not line:
            child.wait(timeout=60)
            pytest.fail(f"node B did not start: {errors.read_text()}")
        ports = json.loads(line)
        with grpc.insecure_channel(f"127.0.0.1:{ports['security']}") as channel:
            yield NodeB(ports["stoq"], security_pb2_grpc.SecurityLayerStub(channel))
        child.stdin.close()
        assert child.wait(timeout=60) == 0, errors.read_text()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()


def test_channel_from_network_layer_is_shared_by_two_processes(
    pki: Pki, ca_store: KeyStore, node_b: NodeB, tmp_path: Path
) -> None:
    assert pki.a.key_name is not None
    identity = NodeIdentity.from_keystore(
        ca_store, pki.a.key_name, (pki.a.certificate, *pki.a.chain)
    )
    config = StoqConfig(identity, PeerPolicy(pki.trust, namespaces=(NAMESPACE,)))
    with (
        KeyStore.open(
            tmp_path,
            passphrase=PASSPHRASE,
            kdf_params=INSECURE_TEST_KDF_PARAMS,
            allow_weak_kdf=True,
        ) as a_store,
        EventLoopThread("node-a") as loop,
    ):
        security = SecurityLayerServicer(identity.signing_key, a_store)
        security_server, security_port = serve_security(security)
        network = NetworkLayerServicer(config, security, loop.loop)
        network_server, network_port = serve_network(network)
        try:
            with (
                grpc.insecure_channel(f"127.0.0.1:{network_port}") as network_channel,
                grpc.insecure_channel(f"127.0.0.1:{security_port}") as security_channel,
            ):
                response = network_pb2_grpc.NetworkLayerStub(
                    network_channel
                ).EstablishSecureChannel(
                    network_pb2.EstablishSecureChannelRequest(
                        peer_id=common_pb2.PeerId(id=pki.b_peer_id),
                        address=common_pb2.NetworkAddress(
                            ip=bytes([127, 0, 0, 1]),
                            port=node_b.stoq_port,
                            transport=common_pb2.TRANSPORT_QUIC,
                        ),
                    )
                )
                assert response.channel.peer_id.id == pki.b_peer_id
                a_security = security_pb2_grpc.SecurityLayerStub(security_channel)
                sealed = a_security.EncryptTransport(
                    security_pb2.EncryptTransportRequest(
                        channel_id=response.channel.channel_id,
                        plaintext=b"from process A",
                        associated_data=b"hdr",
                    )
                )
                opened = node_b.security.DecryptTransport(
                    security_pb2.DecryptTransportRequest(
                        channel_id=response.channel.channel_id,
                        record=sealed.record,
                        associated_data=b"hdr",
                    )
                )
                assert opened.plaintext == b"from process A"
        finally:
            network_server.stop(grace=None)
            network.close()
            security_server.stop(grace=None)
