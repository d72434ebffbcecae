"""trustchain.consensus.proofs.local_network: a node's own CA, log, registry and plots.

Opening a network twice must give the same node (same key, certificate, plot and stake) and
a trust store under which the node's chain is FULL: a root anchor, the entity CA, CRLs and the
log key. Real key store, CA, transparency log, SQLite and chiapos throughout.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from trustchain.ca import hybrid
from trustchain.ca.trust import TrustLevel
from trustchain.ca.validation import validate
from trustchain.consensus.proofs.local_network import (
    DEFAULT_INITIAL_STAKE,
    NODE_NAME,
    LocalNetwork,
)
from trustchain.consensus.proofs.presets import LOCALHOST_TESTING
from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KeyStore


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("local-network")


@pytest.fixture(scope="module")
def keys(home: Path) -> Iterator[KeyStore]:
    with KeyStore.open(
        home / "keys", passphrase=b"pw", kdf_params=INSECURE_TEST_KDF_PARAMS, allow_weak_kdf=True
    ) as store:
        yield store


def test_a_new_network_is_complete(home: Path, keys: KeyStore) -> None:
    with LocalNetwork.open(home / "net", keys) as network:
        chain = network.node_chain()
        leaf = chain[0]
        assert hybrid.certificate_public_key(leaf) == network.node_key
        report = validate(chain, network.trust_store())
        assert report.trust_level is TrustLevel.FULL
        assert report.peer_id == network.node_key.key_id
        assert NODE_NAME in str(leaf.subject)
        entry = network.registry.entry(network.node_key.key_id)
        assert entry.balance == DEFAULT_INITIAL_STAKE
        for name in ("proofs/node", "proofs/ct-log", "proofs/stake-registry"):
            assert keys.info(name).version == 1
        assert {p.name for p in (home / "net").iterdir()} >= {"ca", "ct", "stake.db"}


def test_reopening_gives_the_same_node(home: Path, keys: KeyStore) -> None:
    with LocalNetwork.open(home / "net", keys) as network:
        key, chain = network.node_key, network.node_chain()
        plot = network.plot(LOCALHOST_TESTING.plot_k)
        network.credit(42)
    with LocalNetwork.open(home / "net", keys, initial_stake=7) as again:
        assert again.node_key == key
        assert again.node_chain() == chain  # not reissued
        assert again.plot(LOCALHOST_TESTING.plot_k) == plot  # not plotted again
        # An existing registry entry is kept: initial_stake applies to new networks only.
        assert again.registry.entry(key.key_id).balance == 42
    assert len(list((home / "net" / "plots").iterdir())) == 1


def test_the_node_certificate_is_renewed_before_it_expires(home: Path, keys: KeyStore) -> None:
    with LocalNetwork.open(home / "net", keys) as network:
        current = network.node_chain()[0]
        nearly_expired = current.not_valid_after_utc - timedelta(hours=4)
        renewed = network.node_chain(at=nearly_expired)[0]
        assert renewed.serial_number != current.serial_number
        assert hybrid.certificate_public_key(renewed) == network.node_key
        # Afterwards the newest valid certificate is the one in use.
        assert network.node_chain()[0] == renewed
        assert network.node_chain(at=datetime.now(UTC))[0] == renewed


def test_another_network_does_not_trust_this_one(home: Path, keys: KeyStore) -> None:
    with (
        LocalNetwork.open(home / "net", keys) as first,
        KeyStore.open(
            home / "other-keys",
            passphrase=b"pw",
            kdf_params=INSECURE_TEST_KDF_PARAMS,
            allow_weak_kdf=True,
        ) as other_keys,
        LocalNetwork.open(home / "other", other_keys) as second,
    ):
        bundle = first.prove("notes", b"some content", preset=LOCALHOST_TESTING)
        assert first.validate(bundle, preset=LOCALHOST_TESTING).valid
        result = second.validate(bundle, preset=LOCALHOST_TESTING)
        assert not result.valid
        assert {r.reason.name for r in result.rejections} == {"UNTRUSTED_ROOT"}
