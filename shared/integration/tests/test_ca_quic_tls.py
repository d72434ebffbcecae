"""Node certificates from the TrustChain CA carry a real QUIC (aioquic) TLS 1.3 handshake.

A root, an entity intermediate and a node leaf are issued by ``CertificateAuthority`` into a
real key store; an aioquic server on 127.0.0.1 presents the leaf and the intermediate with the
leaf's Ed25519 key, and an aioquic client that trusts only the exported root completes the
handshake and exchanges a stream. The same chain then passes TrustChain's own validator, which
also checks the Falcon-1024 alternative signatures aioquic cannot see. A client trusting another
root, or asking for another name, is refused by aioquic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioquic.asyncio import connect, serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamDataReceived
from cryptography.hazmat.primitives import serialization

from trustchain.ca.authority import CertificateAuthority, Issued
from trustchain.ca.hybrid import classical_private_key
from trustchain.ca.trust import TrustAnchor, TrustLevel, TrustStore
from trustchain.ca.validation import Purpose, validate
from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KeyStore

ALPN = ["hypermesh-test"]
NODE_NAME = "node1.bank.hypermesh"


class Echo(QuicConnectionProtocol):
    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self._quic.send_stream_data(event.stream_id, b"echo:" + event.data, event.end_stream)
            self.transmit()


class Pki:
    def __init__(self, home: Path, store: KeyStore) -> None:
        self.ca = CertificateAuthority(home / "ca-home", store)
        self.root = self.ca.init_root("hypermesh-root")
        self.entity = self.ca.issue_intermediate("bank", "bank.hypermesh")
        self.node: Issued = self.ca.issue(
            "bank", "node", NODE_NAME, dns_names=[NODE_NAME], ip_addresses=["127.0.0.1"]
        )
        assert self.node.key_name is not None
        key = classical_private_key(store.signing_key(self.node.key_name))
        self.key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.root_pem = home / "root.pem"
        self.root_pem.write_bytes(self.root.certificate.public_bytes(serialization.Encoding.PEM))
        self.chain_pem = home / "node.pem"
        self.chain_pem.write_bytes(
            b"".join(
                c.public_bytes(serialization.Encoding.PEM)
                for c in (self.node.certificate, *self.node.chain)
            )
        )
        self.key_file = home / "node.key"
        self.key_file.write_bytes(self.key_pem)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    home = tmp_path_factory.mktemp("pki")
    store = KeyStore.open(
        home / "keys", passphrase=b"pw", kdf_params=INSECURE_TEST_KDF_PARAMS, allow_weak_kdf=True
    )
    with store:
        pki = Pki(home, store)
        try:
            yield pki
        finally:
            pki.ca.close()


async def exchange(pki: Pki, *, cafile: Path, server_name: str) -> bytes:
    server_config = QuicConfiguration(is_client=False, alpn_protocols=ALPN)
    server_config.load_cert_chain(pki.chain_pem, pki.key_file)
    server = await serve("127.0.0.1", 0, configuration=server_config, create_protocol=Echo)
    port = server._transport.get_extra_info("sockname")[1]
    try:
        client_config = QuicConfiguration(
            is_client=True, alpn_protocols=ALPN, server_name=server_name
        )
        client_config.load_verify_locations(cafile=str(cafile))
        async with connect("127.0.0.1", port, configuration=client_config) as client:
            reader, writer = await client.create_stream()
            writer.write(b"hello over hybrid PKI")
            writer.write_eof()
            return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        server.close()


def test_quic_handshake_with_node_certificate(pki: Pki) -> None:
    reply = asyncio.run(exchange(pki, cafile=pki.root_pem, server_name=NODE_NAME))
    assert reply == b"echo:hello over hybrid PKI"


def test_quic_client_refuses_an_unknown_root(pki: Pki, tmp_path: Path) -> None:
    stranger = KeyStore.open(
        tmp_path / "keys",
        passphrase=b"pw",
        kdf_params=INSECURE_TEST_KDF_PARAMS,
        allow_weak_kdf=True,
    )
    with stranger:
        other = CertificateAuthority(tmp_path / "other-ca", stranger)
        try:
            other_root = other.init_root("other-root").certificate
        finally:
            other.close()
    other_pem = tmp_path / "other-root.pem"
    other_pem.write_bytes(other_root.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ConnectionError):
        asyncio.run(exchange(pki, cafile=other_pem, server_name=NODE_NAME))


def test_quic_client_refuses_a_name_the_certificate_lacks(pki: Pki) -> None:
    with pytest.raises(ConnectionError):
        asyncio.run(exchange(pki, cafile=pki.root_pem, server_name="node2.bank.hypermesh"))


def test_the_tls_chain_also_passes_the_hybrid_validator(pki: Pki) -> None:
    store = TrustStore([TrustAnchor(pki.root.certificate, "hypermesh")])
    report = validate(
        [pki.node.certificate, *pki.node.chain],
        store,
        purpose=Purpose.SERVER,
        dns_name=NODE_NAME,
    )
    assert report.anchor == "hypermesh"
    assert report.trust_level >= TrustLevel.PARTIAL
    assert report.path[0] == pki.node.certificate
