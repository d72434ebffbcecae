"""A real TrustChain PKI for the STOQ tests: root, entity CA, node certificates."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stoq.config import StoqConfig
from stoq.identity import NodeIdentity, PeerPolicy
from trustchain.ca.authority import CertificateAuthority, Issued
from trustchain.ca.trust import TrustAnchor, TrustStore
from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KeyStore

NAMESPACE = "bank.hypermesh"
SERVER_NAME = "node1.bank.hypermesh"
CLIENT_NAME = "client1.bank.hypermesh"


@dataclass
class Pki:
    ca: CertificateAuthority
    store: KeyStore
    root: Issued
    intermediates: tuple[Issued, ...]

    def identity(self, issued: Issued) -> NodeIdentity:
        assert issued.key_name is not None
        return NodeIdentity.from_keystore(
            self.store, issued.key_name, (issued.certificate, *issued.chain)
        )

    def node(self, name: str, issuer: str = "bank", **kwargs: object) -> NodeIdentity:
        return self.identity(self.ca.issue(issuer, "node", name, dns_names=[name], **kwargs))  # type: ignore[arg-type]

    def trust_store(self, *, with_crl: bool = True) -> TrustStore:
        store = TrustStore(
            [TrustAnchor(self.root.certificate, "hypermesh")],
            certificates=[i.certificate for i in self.intermediates],
        )
        if with_crl:
            store.add_crl(self.ca.crl())
            for name in ("bank", "other"):
                store.add_crl(self.ca.crl(name))
        return store

    def policy(self, **kwargs: object) -> PeerPolicy:
        return PeerPolicy(self.trust_store(), namespaces=(NAMESPACE,), **kwargs)  # type: ignore[arg-type]

    def config(self, identity: NodeIdentity, **kwargs: object) -> StoqConfig:
        policy = kwargs.pop("policy", None) or self.policy()
        return StoqConfig(identity=identity, policy=policy, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    home: Path = tmp_path_factory.mktemp("stoq-pki")
    store = KeyStore.open(
        home / "keys", passphrase=b"pw", kdf_params=INSECURE_TEST_KDF_PARAMS, allow_weak_kdf=True
    )
    with store:
        ca = CertificateAuthority(home / "ca", store)
        root = ca.init_root("hypermesh-root")
        intermediates = (
            ca.issue_intermediate("bank", NAMESPACE),
            ca.issue_intermediate("other", "other.hypermesh"),
        )
        try:
            yield Pki(ca, store, root, intermediates)
        finally:
            ca.close()


@pytest.fixture(scope="session")
def server_identity(pki: Pki) -> NodeIdentity:
    return pki.node(SERVER_NAME, ip_addresses=["127.0.0.1", "::1"])


@pytest.fixture(scope="session")
def client_identity(pki: Pki) -> NodeIdentity:
    return pki.node(CLIENT_NAME)
