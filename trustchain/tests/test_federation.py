"""trustchain.consensus.federation: a local multi-process federation in one directory.

One federation is created per module (real key stores, CA, transparency log, stake registries
and chiapos plot) and re-opened the way each validator process would: every member's chain must
validate at FULL trust, the genesis committee must parse under the federation's trust store,
and a bundle the owner proves must validate under every validator's own context.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypermesh_interfaces.v1 import common_pb2
from trustchain.ca import hybrid
from trustchain.ca.trust import TrustLevel
from trustchain.ca.validation import validate
from trustchain.consensus.committee import Committee
from trustchain.consensus.federation import (
    DEFAULT_BALANCE,
    MANIFEST,
    NODE_KEY,
    NODE_NAMESPACE,
    VALIDATOR_NAMESPACE,
    FederationError,
    LocalFederation,
)
from trustchain.consensus.proofs import challenges
from trustchain.consensus.proofs.bundle import PreviousState, validate_four_proofs
from trustchain.consensus.proofs.presets import LOCALHOST_TESTING
from trustchain.consensus.proofs.stake import StakeNotFound
from trustchain.crypto.signatures import Signature


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("federation") / "fed"
    LocalFederation.create(path).close()
    return path


@pytest.fixture
def federation(directory: Path) -> Iterator[LocalFederation]:
    with LocalFederation.open(directory) as opened:
        yield opened


def test_create_then_open_gives_the_same_federation(tmp_path: Path) -> None:
    created = LocalFederation.create(
        tmp_path / "f", validators=3, owners=("alice", "bob"), stakes=(1, 2, 3), balance=77
    )
    with created, LocalFederation.open(tmp_path / "f") as opened:
        assert opened.validators == created.validators
        assert opened.owners == created.owners
        assert opened.host == created.host == "127.0.0.1"
        assert opened.log_key == created.log_key
        assert opened.registry_key == created.registry_key
        assert [v.name for v in opened.validators] == ["validator-0", "validator-1", "validator-2"]
        assert [v.stake for v in opened.validators] == [1, 2, 3]
        assert [o.name for o in opened.owners] == ["alice", "bob"]
        committee = opened.committee()
        assert committee.total_stake == 6
        assert committee.quorum_stake == 5
        # Every owner is credited in every validator's registry.
        for validator in opened.validators:
            with opened.open_registry(validator.name) as registry:
                for owner in opened.owners:
                    assert registry.entry(owner.key_id).balance == 77


def test_every_member_has_its_own_key_store_and_a_full_chain(
    federation: LocalFederation,
) -> None:
    store = federation.trust_store()
    members = (*federation.validators, *federation.owners)
    assert len({m.key_id for m in members}) == len(members)
    for member in members:
        with member.open_keys() as keys:
            assert keys.public_key(NODE_KEY).key_id == member.key_id
        chain = member.chain()
        assert len(chain) == 2  # the node certificate, then its entity CA
        report = validate(chain, store, dns_name=member.dns_name, ip=member.host)
        assert report.trust_level is TrustLevel.FULL
        assert report.notes == ()
        assert report.peer_id == member.key_id
        assert hybrid.certificate_public_key(chain[0]).key_id == member.key_id
    for validator in federation.validators:
        assert validator.dns_name == f"{validator.name}.{VALIDATOR_NAMESPACE}"
        assert validator.home == federation.directory / "validators" / validator.name
    (owner,) = federation.owners
    assert owner.name == "node"
    assert owner.dns_name == f"node.{NODE_NAMESPACE}"
    assert federation.namespaces == (VALIDATOR_NAMESPACE, NODE_NAMESPACE)


def test_ports_are_distinct_and_on_the_host(federation: LocalFederation) -> None:
    members = (*federation.validators, *federation.owners)
    ports = [m.port for m in members]
    assert len(set(ports)) == len(ports) == 5
    assert all(0 < port < 1 << 16 for port in ports)
    for member in members:
        address = member.address()
        assert address.ip == bytes([127, 0, 0, 1])
        assert address.port == member.port
        assert address.transport == common_pb2.TRANSPORT_QUIC


def test_the_genesis_committee_parses_under_the_trust_store(
    federation: LocalFederation,
) -> None:
    genesis = federation.genesis()
    assert genesis.epoch == 0
    ids = [bytes(m.validator.id) for m in genesis.members]
    assert ids == sorted(ids)
    committee = Committee.from_message(genesis, federation.trust_store())
    assert committee.to_message() == genesis
    by_id = {v.validator_id: v for v in federation.validators}
    assert set(by_id) == set(ids)
    for member in committee.members:
        setup = by_id[member.validator_id]
        assert (member.host, member.port, member.name, member.stake) == (
            "127.0.0.1",
            setup.port,
            setup.dns_name,
            1,
        )
        assert member.chain == setup.chain()
    assert committee.total_stake == 4
    assert committee.quorum_stake == 3


def test_registries_hold_the_owners_balance(federation: LocalFederation) -> None:
    (owner,) = federation.owners
    paths = {federation.registry_path(v.name) for v in federation.validators}
    assert len(paths) == 4
    for validator in federation.validators:
        with federation.open_registry(validator.name) as registry:
            assert registry.registry_key == federation.registry_key
            entry = registry.entry(owner.key_id)
            assert entry.balance == DEFAULT_BALANCE
            entry.verify(federation.registry_key)
            with pytest.raises(StakeNotFound, match="no stake registry entry for owner"):
                registry.entry(validator.key_id)


def test_a_bundle_the_owner_proves_validates_under_every_validator(
    federation: LocalFederation,
) -> None:
    data = b"resource descriptor " * 40
    resources = common_pb2.ResourceSpec(storage_bytes=len(data))
    bundle = federation.prove("node", "disk", data, resources, LOCALHOST_TESTING)
    owner = federation.owner("node")
    assert bundle.stake.asset_id.id == challenges.asset_id(owner.key_id, "disk")
    assert bundle.stake.asset_id.id == owner.asset_id("disk")
    assert bundle.stake.version == 0
    assert bundle.work.resource_spec == resources
    assert bundle.space.storage_address == owner.address()
    assert bundle.space.storage_zone == federation.zone
    store = federation.trust_store()
    for validator in federation.validators:
        context = federation.context(validator.name, LOCALHOST_TESTING, trust_store=store)
        with context.registry:
            result = validate_four_proofs(bundle, previous=None, context=context)
            assert result.valid, result.rejections
    # The next version builds on it, with the same plot (made once).
    following = federation.prove(
        "node", "disk", data, resources, LOCALHOST_TESTING, PreviousState.of(bundle)
    )
    assert following.stake.version == 1
    assert len(list(owner.plots_path.iterdir())) == 1
    context = federation.context("validator-3", LOCALHOST_TESTING)
    with context.registry:
        result = validate_four_proofs(following, previous=PreviousState.of(bundle), context=context)
        assert result.valid, result.rejections


def test_signers_sign_with_the_certified_key(federation: LocalFederation) -> None:
    for member in (*federation.validators, *federation.owners):
        signature = federation.signer(member.name)(b"hello federation")
        key = hybrid.certificate_public_key(member.chain()[0])
        key.verify(Signature.from_bytes(signature), b"hello federation")
    assert federation.keys("node") is federation.keys("node")  # opened once


def test_lookups(federation: LocalFederation) -> None:
    validator = federation.validator("validator-2")
    assert federation.validator_at(validator.home) == validator
    assert federation.validator_at(str(validator.home) + "/") == validator
    with pytest.raises(FederationError, match="no validator named 'validator-9'"):
        federation.validator("validator-9")
    with pytest.raises(FederationError, match="no owner named 'validator-0'"):
        federation.owner("validator-0")
    with pytest.raises(FederationError, match="is not the home of a validator"):
        federation.validator_at(federation.owner("node").home)
    with pytest.raises(FederationError, match="no member named 'nobody'"):
        federation.signer("nobody")


def test_published_crls_replace_the_old_ones(federation: LocalFederation) -> None:
    trust = federation.directory / "trust"

    def numbers() -> list[int]:
        return [
            x509.load_pem_x509_crl((trust / f"{name}.crl.pem").read_bytes())
            .extensions.get_extension_for_class(x509.CRLNumber)
            .value.crl_number
            for name in ("root", "validators", "nodes")
        ]

    before = numbers()
    federation.publish_crls()
    after = numbers()
    assert all(new > old for new, old in zip(after, before, strict=True))
    report = validate(federation.owner("node").chain(), federation.trust_store())
    assert report.trust_level is TrustLevel.FULL


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ({"validators": 0}, "a federation has 1..64 validators"),
        ({"owners": ()}, "a federation has 1..64 owners"),
        ({"owners": "node"}, "owners is a sequence of names, not the string 'node'"),
        ({"owners": ("Node_1",)}, "owner name 'Node_1' is not a DNS label"),
        ({"owners": ("a", "a")}, "member names must be distinct"),
        ({"owners": ("validator-0",)}, "member names must be distinct"),
        ({"stakes": (1, 1)}, "stakes: one positive integer per validator"),
        ({"stakes": (1, 1, 0, 1)}, "stakes: one positive integer per validator"),
        ({"balance": 0}, "balance must be a positive integer"),
        ({"host": "localhost"}, "host 'localhost' is not an IP address"),
        ({"leaf_validity": timedelta(0)}, "leaf_validity must be positive and at most 90 days"),
        ({"leaf_validity": timedelta(days=91)}, "leaf_validity must be positive"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(
    tmp_path: Path, arguments: dict[str, object], reason: str
) -> None:
    with pytest.raises(FederationError, match=reason):
        LocalFederation.create(tmp_path / "f", **arguments)  # type: ignore[arg-type]
    assert not (tmp_path / "f").exists()


def test_create_refuses_a_non_empty_directory(directory: Path) -> None:
    with pytest.raises(FederationError, match="exists and is not an empty directory"):
        LocalFederation.create(directory)


def test_open_refuses_what_is_not_a_federation(tmp_path: Path) -> None:
    with pytest.raises(FederationError, match="no local federation in"):
        LocalFederation.open(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(FederationError, match="is not readable JSON"):
        LocalFederation.open(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "something/else"}))
    with pytest.raises(FederationError, match="is not a hypermesh/local-federation/v1 manifest"):
        LocalFederation.open(tmp_path)


def test_missing_trust_files_are_named(directory: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    (copy / "trust" / "nodes.crl.pem").unlink()
    with (
        LocalFederation.open(copy) as federation,
        pytest.raises(FederationError, match=r"cannot read .*nodes\.crl\.pem"),
    ):
        federation.trust_store()
    (copy / "genesis.pb").write_bytes(b"\xff\xff")
    with pytest.raises(FederationError, match="is not a Committee"):
        LocalFederation.open(copy).genesis()
    (copy / "trust" / "ct-log.key").write_bytes(b"not a key")
    with pytest.raises(FederationError, match="is not a public key envelope"):
        LocalFederation.open(copy)


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    section=st.sampled_from(["validators", "owners", None]),
    field=st.sampled_from(["name", "dns_name", "key_id", "port", "stake", "balance", "host"]),
    value=_VALUES,
)
def test_a_damaged_manifest_is_refused_with_federation_error(
    directory: Path, section: str | None, field: str, value: object
) -> None:
    """Whatever one field of the manifest is replaced by, opening either succeeds with a
    well-formed federation or raises FederationError, never anything else."""
    manifest = json.loads((directory / MANIFEST).read_bytes())
    target = manifest if section is None else manifest[section][0]
    target[field] = value
    outcome: LocalFederation | FederationError
    try:
        outcome = LocalFederation._from_manifest(directory, manifest)
    except FederationError as error:
        outcome = error
    if isinstance(outcome, FederationError):
        assert str(directory / MANIFEST) in str(outcome)
        return
    for member in (*outcome.validators, *outcome.owners):
        assert 0 < member.port < 1 << 16
        assert len(member.key_id) == 32
