"""trustchain.consensus.quorum: validator cores and vote collectors over real bundles and ledgers.

One LocalNetwork (its own CA, CT log, stake registry, one k=18 plot) is the owner: it makes
real four-proof bundles -- versions 0 and 1 of asset ``photos``, a second, different version 0
of ``photos`` (the owner equivocating) and version 0 of ``videos``. A second CA issues the
node certificates of five validators (hybrid keys in memory); the genesis committee is the
first four. Each test opens fresh SQLite ledgers in its own directory; the cores validate the
bundles under the LocalNetwork's trust store and registry, and the committee's chains under the
validators' CA. Nothing is mocked: chiapos, chiavdf, Falcon, SQLite all run.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from hypermesh_interfaces.v1 import common_pb2, ledger_pb2
from trustchain.ca.authority import CertificateAuthority
from trustchain.ca.trust import TrustAnchor, TrustStore
from trustchain.consensus.committee import Committee
from trustchain.consensus.ledger import Ledger, state_record_bytes
from trustchain.consensus.proofs.bundle import (
    MAX_BUNDLE_BYTES,
    PreviousState,
    ValidationContext,
)
from trustchain.consensus.proofs.local_network import LocalNetwork
from trustchain.consensus.proofs.presets import LOCALHOST_TESTING
from trustchain.consensus.quorum import (
    MAX_CERTIFICATES,
    ValidatorCore,
    VoteCollector,
    committee_ballot,
    committee_message_digest,
    verify_committee_certificate,
)
from trustchain.consensus.votes import (
    Ballot,
    VoteVerifier,
    change_digest,
    sign_ballots,
    sign_change,
)
from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KeyStore
from trustchain.crypto.signatures import SigningKey, VerifyKey
from trustchain.errors import InvalidCertificate, LedgerError, LedgerRefusal

PRESET = LOCALHOST_TESTING
NAMESPACE = "validators.hypermesh"
DATA = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(2048))
R = LedgerRefusal


@dataclass(frozen=True)
class Validator:
    name: str
    signing: SigningKey
    chain: tuple[x509.Certificate, ...]

    @property
    def key(self) -> VerifyKey:
        return self.signing.public_key()

    @property
    def id(self) -> bytes:
        return self.key.key_id

    def sign(self, message: bytes) -> bytes:
        return self.signing.sign(message).to_bytes()

    def member(self, stake: int) -> ledger_pb2.CommitteeMember:
        return ledger_pb2.CommitteeMember(
            validator=common_pb2.PeerId(id=self.id),
            certificate_chain=common_pb2.CertificateChain(
                certificates=[c.public_bytes(Encoding.DER) for c in self.chain]
            ),
            stake=stake,
            address=common_pb2.NetworkAddress(
                ip=bytes([127, 0, 0, 1]), port=4433, transport=common_pb2.TRANSPORT_QUIC
            ),
            name=self.name,
        )


class CountingSigner:
    """A validator's signer that counts its signatures."""

    def __init__(self, validator: Validator) -> None:
        self.validator = validator
        self.calls = 0

    def __call__(self, message: bytes) -> bytes:
        self.calls += 1
        return self.validator.sign(message)


def committee_message(
    validators: Sequence[Validator], stakes: Sequence[int], epoch: int = 0
) -> ledger_pb2.Committee:
    members = sorted(
        (v.member(s) for v, s in zip(validators, stakes, strict=True)),
        key=lambda m: bytes(m.validator.id),
    )
    return ledger_pb2.Committee(epoch=epoch, members=members)


@dataclass(frozen=True)
class World:
    network: LocalNetwork
    context: ValidationContext  # the owner's chains, stake registry and preset
    store: TrustStore  # the validators' chains
    validators: tuple[Validator, ...]  # sorted by id; the first four are the genesis committee
    foreign: Validator  # a validator whose chain nobody trusts
    genesis: ledger_pb2.Committee
    committee: Committee
    a0: common_pb2.FourProof  # photos, version 0
    a1: common_pb2.FourProof  # photos, version 1 on a0
    b0: common_pb2.FourProof  # photos, version 0 again with other data: the owner equivocates
    c0: common_pb2.FourProof  # videos, version 0

    def change(self, proofs: common_pb2.FourProof, epoch: int = 0) -> ledger_pb2.AssetStateChange:
        return sign_change(proofs, epoch, self.network.sign)

    @property
    def photos(self) -> bytes:
        return self.network.asset_id("photos")


def _validator(ca: CertificateAuthority, name: str) -> Validator:
    signing = SigningKey.generate()
    issued = ca.issue("val", "node", name, subject_key=signing.public_key(), dns_names=[name])
    return Validator(name, signing, (issued.certificate, *issued.chain))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home: Path = tmp_path_factory.mktemp("quorum")
    keys = KeyStore.open(
        home / "keys", passphrase=b"pw", kdf_params=INSECURE_TEST_KDF_PARAMS, allow_weak_kdf=True
    )
    with (
        keys,
        LocalNetwork.open(home / "network", keys) as network,
        CertificateAuthority(home / "validators-ca", keys) as ca,
        CertificateAuthority(home / "foreign-ca", keys) as foreign_ca,
    ):
        a0 = network.prove("photos", DATA, preset=PRESET)
        a1 = network.prove("photos", DATA[::-1], preset=PRESET, previous=PreviousState.of(a0))
        b0 = network.prove("photos", DATA[1:], preset=PRESET)
        c0 = network.prove("videos", DATA, preset=PRESET)
        root = ca.init_root("validators-root")
        entity = ca.issue_intermediate("val", NAMESPACE)
        validators = sorted(
            (_validator(ca, f"v{i}.{NAMESPACE}") for i in range(5)), key=lambda v: v.id
        )
        foreign_ca.init_root("foreign-root")
        foreign_ca.issue_intermediate("val", NAMESPACE)
        foreign = _validator(foreign_ca, f"v9.{NAMESPACE}")
        store = TrustStore([TrustAnchor(root.certificate, "validators")])
        store.add_certificate(entity.certificate)
        store.add_crl(ca.crl())
        store.add_crl(ca.crl("val"))
        genesis = committee_message(validators[:4], (1, 1, 1, 1))
        yield World(
            network=network,
            context=network.context(PRESET),
            store=store,
            validators=tuple(validators),
            foreign=foreign,
            genesis=genesis,
            committee=Committee.from_message(genesis, store),
            a0=a0,
            a1=a1,
            b0=b0,
            c0=c0,
        )


class Net:
    """Validator cores over fresh ledgers in ``directory``; close() closes the ledgers."""

    def __init__(
        self,
        world: World,
        directory: Path,
        validators: Sequence[Validator],
        genesis: ledger_pb2.Committee | None = None,
        *,
        batch_votes: bool = True,
    ) -> None:
        self.world = world
        self.ledgers: list[Ledger] = []
        self.cores: list[ValidatorCore] = []
        self.signers: list[CountingSigner] = []
        self.verifier = VoteVerifier()
        context = world.context
        for validator in validators:
            ledger = Ledger.open(
                directory / f"{validator.name}.db",
                validator_id=validator.id,
                genesis=genesis or world.genesis,
            )
            self.ledgers.append(ledger)
            signer = CountingSigner(validator)
            self.signers.append(signer)
            self.cores.append(
                ValidatorCore(
                    ledger=ledger,
                    trust_store=world.store,
                    validator_id=validator.id,
                    sign=signer,
                    context=lambda: context,
                    batch_votes=batch_votes,
                    verifier=self.verifier,
                )
            )

    def close(self) -> None:
        for ledger in self.ledgers:
            ledger.close()

    def certify(
        self, change: ledger_pb2.AssetStateChange, cores: Sequence[int] | None = None
    ) -> ledger_pb2.StateCertificate:
        collector = VoteCollector(change, self.cores[0].committee)
        for index in range(len(self.cores)) if cores is None else cores:
            core = self.cores[index]
            collector.add(core.validator_id, one(core, change=change))
        assert collector.certificate is not None, (collector.refusals, collector.invalid)
        return collector.certificate

    def apply(
        self, certificate: ledger_pb2.StateCertificate, cores: Sequence[int] | None = None
    ) -> list[common_pb2.StateHash]:
        applied = []
        for index in range(len(self.cores)) if cores is None else cores:
            response = one(self.cores[index], certificate=certificate)
            assert response.WhichOneof("body") == "applied", response
            applied.append(response.applied)
        return applied


@pytest.fixture
def net(world: World, tmp_path: Path) -> Iterator[Net]:
    network = Net(world, tmp_path, world.validators[:4])
    yield network
    network.close()


def one(core: ValidatorCore, **body: object) -> ledger_pb2.LedgerResponse:
    (response,) = core.handle([ledger_pb2.LedgerRequest(**body)])  # type: ignore[arg-type]
    return response


def refusal(response: ledger_pb2.LedgerResponse, reason: LedgerRefusal) -> ledger_pb2.Refusal:
    assert response.WhichOneof("body") == "refusal", response
    assert LedgerRefusal(response.refusal.reason) is reason, response.refusal
    return response.refusal


def voted(response: ledger_pb2.LedgerResponse) -> ledger_pb2.Vote:
    assert response.WhichOneof("body") == "vote", response
    return response.vote


def syncing(core: ValidatorCore) -> bool:
    return core.needs_sync


def hopeless(collector: VoteCollector) -> bool:
    return collector.hopeless


def copy_proofs(proofs: common_pb2.FourProof) -> common_pb2.FourProof:
    copied = common_pb2.FourProof()
    copied.CopyFrom(proofs)
    return copied


# --- the happy path -------------------------------------------------------------------------------


def test_four_validators_certify_and_apply_two_versions(world: World, net: Net) -> None:
    for version, proofs in enumerate((world.a0, world.a1)):
        change = world.change(proofs)
        collector = VoteCollector(change, world.committee)
        results = []
        for core in net.cores:
            vote = voted(one(core, change=change))
            assert Ballot.of(vote) == Ballot.for_change(change, core.validator_id)
            results.append(collector.add(core.validator_id, ledger_pb2.LedgerResponse(vote=vote)))
        # The quorum (3 of 4 equal stakes) is reached by the third vote; the fourth keeps it.
        assert results[:2] == [None, None]
        certificate = results[2]
        assert certificate is not None
        assert results[3] is certificate
        assert len(certificate.votes) == 3
        assert collector.votes.keys() == {core.validator_id for core in net.cores}
        ballot = VoteVerifier().verify_certificate(certificate, world.committee)
        assert (ballot.asset_id, ballot.version) == (world.photos, version)
        applied = net.apply(certificate)
        assert all(a == applied[0] for a in applied)
        assert applied[0].log_index == version
        assert applied[0].log_size == version + 1
        assert applied[0].certificate_digest == hashlib.sha256(state_record_bytes(ballot)).digest()
        for ledger in net.ledgers:
            state = ledger.state(world.photos)
            assert state is not None
            assert (state.version, state.state_hash) == (version, change_digest(change))
            assert state.poh_end == proofs.time.poh.end_hash
            assert ledger.log_root() == applied[0].log_root
            assert ledger.locked_vote(world.photos, version) is None  # released
            ledger.audit()


def test_a_batch_of_changes_is_signed_once(world: World, net: Net) -> None:
    changes = [world.change(world.a0), world.change(world.c0)]
    requests = [ledger_pb2.LedgerRequest(change=c) for c in changes]
    collectors = [VoteCollector(c, world.committee) for c in changes]
    for core, signer in zip(net.cores, net.signers, strict=True):
        responses = core.handle(requests)
        assert signer.calls == 1
        votes = [voted(r) for r in responses]
        assert votes[0].signature == votes[1].signature
        assert [(v.batch.leaf_index, v.batch.batch_size) for v in votes] == [(0, 2), (1, 2)]
        for collector, response in zip(collectors, responses, strict=True):
            collector.add(core.validator_id, response)
    for collector in collectors:
        assert collector.certificate is not None
        net.apply(collector.certificate)
    assert len({ledger.log_root() for ledger in net.ledgers}) == 1


def test_unbatched_votes_are_signed_one_by_one(world: World, tmp_path: Path) -> None:
    net = Net(world, tmp_path, world.validators[:4], batch_votes=False)
    try:
        responses = net.cores[0].handle(
            [
                ledger_pb2.LedgerRequest(change=world.change(world.a0)),
                ledger_pb2.LedgerRequest(change=world.change(world.c0)),
            ]
        )
        votes = [voted(r) for r in responses]
        assert net.signers[0].calls == 2
        assert votes[0].signature != votes[1].signature
        assert not votes[0].HasField("batch")
        for vote in votes:
            VoteVerifier().verify(vote, world.committee)
    finally:
        net.close()


# --- refusals -------------------------------------------------------------------------------------


def test_malformed_and_oversized_requests_are_refused(world: World, net: Net) -> None:
    core = net.cores[0]
    assert (
        "empty request" in refusal(core.handle([ledger_pb2.LedgerRequest()])[0], R.MALFORMED).detail
    )
    no_proofs = ledger_pb2.AssetStateChange(epoch=0, owner_signature=b"x")
    assert "no proofs" in refusal(one(core, change=no_proofs), R.MALFORMED).detail
    for asset, detail in ((world.photos[:31], "31 bytes"), (bytes(32), "reserved")):
        proofs = copy_proofs(world.a0)
        proofs.stake.asset_id.id = asset
        assert detail in refusal(one(core, change=world.change(proofs)), R.MALFORMED).detail
    proofs = copy_proofs(world.a0)
    proofs.stake.version = 1 << 63
    assert "beyond" in refusal(one(core, change=world.change(proofs)), R.MALFORMED).detail
    proofs = copy_proofs(world.a0)
    proofs.stake.owner_signature = bytes(MAX_BUNDLE_BYTES)
    change = ledger_pb2.AssetStateChange(proofs=proofs)
    assert f"at most {MAX_BUNDLE_BYTES}" in refusal(one(core, change=change), R.TOO_LARGE).detail
    assert (
        "5 bytes"
        in refusal(one(core, asset_state=common_pb2.AssetId(id=b"short")), R.MALFORMED).detail
    )
    assert (
        "no equivocation" in refusal(one(core, evidence=ledger_pb2.Evidence()), R.MALFORMED).detail
    )
    assert net.signers[0].calls == 0
    assert net.ledgers[0].locked_vote(world.photos, 0) is None


def test_a_change_of_another_epoch_is_refused(world: World, net: Net) -> None:
    detail = refusal(one(net.cores[1], change=world.change(world.a0, epoch=1)), R.WRONG_EPOCH)
    assert "epoch 1, the committee is of 0" in detail.detail


def test_versions_must_follow_the_recorded_one(world: World, net: Net) -> None:
    core = net.cores[2]
    early = refusal(one(core, change=world.change(world.a1)), R.WRONG_VERSION)
    assert early.detail.startswith("missing predecessor")
    net.apply(net.certify(world.change(world.a0)))
    late = refusal(one(core, change=world.change(world.b0)), R.WRONG_VERSION)
    assert "already recorded" in late.detail
    voted(one(core, change=world.change(world.a1)))


def test_invalid_proofs_are_refused_with_every_failed_check(world: World, net: Net) -> None:
    proofs = copy_proofs(world.a0)
    proofs.work.nonce += 1
    # The owner signs the broken bundle: only the proofs are wrong.
    found = refusal(one(net.cores[0], change=world.change(proofs)), R.INVALID_PROOFS)
    assert found.validation.verdict == common_pb2.VERDICT_REJECTED
    assert len(found.validation.rejections) >= 1
    assert {r.proof_kind for r in found.validation.rejections} >= {common_pb2.PROOF_KIND_STAKE}
    assert net.ledgers[0].locked_vote(world.photos, 0) is None


def test_owner_signatures_are_checked(world: World, net: Net) -> None:
    core = net.cores[0]
    impostor = sign_change(world.a0, 0, world.validators[4].sign)
    assert "component" in refusal(one(core, change=impostor), R.INVALID_OWNER_SIGNATURE).detail
    garbage = world.change(world.a0)
    garbage.owner_signature = b"\x01garbage"
    refusal(one(core, change=garbage), R.INVALID_OWNER_SIGNATURE)
    # Signed for epoch 0 but submitted as epoch 0 with the proofs of another version.
    moved = world.change(world.a0)
    moved.proofs.CopyFrom(world.b0)
    refusal(one(core, change=moved), R.INVALID_OWNER_SIGNATURE)
    assert net.signers[0].calls == 0


def test_a_locked_slot_refuses_another_change(world: World, net: Net) -> None:
    core = net.cores[3]
    first = voted(one(core, change=world.change(world.a0)))
    conflict = refusal(one(core, change=world.change(world.b0)), R.CONFLICT)
    assert conflict.locked_vote == first
    assert net.ledgers[3].locked_vote(world.photos, 0) == first


def test_invalid_certificates_are_refused(world: World, net: Net) -> None:
    change = world.change(world.a0)
    certificate = net.certify(change)
    short = ledger_pb2.StateCertificate(change=change, votes=certificate.votes[:2])
    assert (
        "a quorum is 3"
        in refusal(one(net.cores[0], certificate=short), R.INVALID_CERTIFICATE).detail
    )
    tampered = ledger_pb2.StateCertificate()
    tampered.CopyFrom(certificate)
    tampered.votes[1].change_digest = change_digest(world.change(world.b0))
    refusal(one(net.cores[0], certificate=tampered), R.INVALID_CERTIFICATE)
    later = ledger_pb2.StateCertificate()
    later.CopyFrom(certificate)
    later.change.epoch = 3
    assert "epoch 3" in refusal(one(net.cores[0], certificate=later), R.WRONG_EPOCH).detail
    assert net.ledgers[0].log_size == 0


def test_repeated_fields_are_bounded(world: World, net: Net) -> None:
    change = world.change(world.a0)
    certificate = net.certify(change)
    flood = ledger_pb2.StateCertificate(change=change, votes=[certificate.votes[0]] * 5000)
    assert (
        "vote 1: validator counted twice"
        in refusal(one(net.cores[0], certificate=flood), R.INVALID_CERTIFICATE).detail
    )
    endorsements = ledger_pb2.CommitteeCertificate(
        next=committee_message(world.validators[1:5], (1, 1, 1, 1), 1),
        votes=[certificate.votes[0]] * 5000,
    )
    assert (
        "5000 votes, the committee has 4"
        in refusal(one(net.cores[0], committee=endorsements), R.INVALID_CERTIFICATE).detail
    )


def test_a_slot_locked_during_the_call_is_refused_and_the_batch_signed_again(
    world: World, tmp_path: Path
) -> None:
    # Two cores of one validator over one ledger file (two processes, say): the second locks
    # photos v0 to B while the first is checking A and C. The first's batch for A and C is
    # refused by the ledger as a whole; it drops those votes unsent, refuses A and signs C again.
    validator = world.validators[0]
    first_ledger = Ledger.open(
        tmp_path / "shared.db", validator_id=validator.id, genesis=world.genesis
    )
    second_ledger = Ledger.open(
        tmp_path / "shared.db", validator_id=validator.id, genesis=world.genesis
    )
    try:
        second = ValidatorCore(
            ledger=second_ledger,
            trust_store=world.store,
            validator_id=validator.id,
            sign=validator.sign,
            context=lambda: world.context,
        )
        b = world.change(world.b0)
        raced: list[ledger_pb2.Vote] = []

        def context() -> ValidationContext:
            raced.append(voted(one(second, change=b)))
            return world.context

        signer = CountingSigner(validator)
        first = ValidatorCore(
            ledger=first_ledger,
            trust_store=world.store,
            validator_id=validator.id,
            sign=signer,
            context=context,
        )
        a, c = world.change(world.a0), world.change(world.c0)
        responses = first.handle([ledger_pb2.LedgerRequest(change=x) for x in (a, c)])
        assert refusal(responses[0], R.CONFLICT).locked_vote == raced[0]
        vote = voted(responses[1])
        assert signer.calls == 2  # the batch of A and C, dropped; C alone
        assert not vote.HasField("batch")
        assert VoteVerifier().verify(vote, world.committee) == Ballot.for_change(c, validator.id)
        assert first_ledger.locked_vote(world.photos, 0) == raced[0]
        assert first_ledger.locked_vote(world.network.asset_id("videos"), 0) == vote
    finally:
        first_ledger.close()
        second_ledger.close()


def test_a_certificate_with_this_validators_vote_against_its_lock_is_evidence(
    world: World, net: Net
) -> None:
    # The validator's key signed B although its ledger locked A (a stolen key, a second
    # process): the certificate for B still applies, and the two votes are kept as evidence.
    core, ledger = net.cores[0], net.ledgers[0]
    a, b = world.change(world.a0), world.change(world.b0)
    locked = voted(one(core, change=a))
    stolen = byzantine_vote(world.validators[0], b)
    certificate = net.certify(b, cores=(1, 2, 3))
    certificate.votes.append(stolen.vote)
    assert one(core, certificate=certificate).WhichOneof("body") == "applied"
    (evidence,) = ledger.evidence()
    assert evidence.equivocation.first == locked
    assert evidence.equivocation.second == stolen.vote


# --- idempotence ----------------------------------------------------------------------------------


def test_the_same_change_gets_the_same_vote(world: World, net: Net) -> None:
    core, signer = net.cores[0], net.signers[0]
    change = world.change(world.a0)
    first = voted(one(core, change=change))
    assert signer.calls == 1
    assert voted(one(core, change=change)) == first
    # A copy with another (even invalid) owner signature has the same digest: same vote.
    resubmitted = world.change(world.a0)
    resubmitted.owner_signature = b""
    assert voted(one(core, change=resubmitted)) == first
    assert signer.calls == 1


def test_one_call_with_the_same_slot_twice(world: World, net: Net) -> None:
    core, signer = net.cores[1], net.signers[1]
    a, b = world.change(world.a0), world.change(world.b0)
    responses = core.handle([ledger_pb2.LedgerRequest(change=c) for c in (a, a, b)])
    assert signer.calls == 1
    first = voted(responses[0])
    assert voted(responses[1]) == first
    assert not first.HasField("batch")  # one ballot: signed alone
    assert refusal(responses[2], R.CONFLICT).locked_vote == first
    # The first change of the slot that passes its checks wins, even if an invalid one came
    # before it.
    other = Net(net.world, net.ledgers[0].path.parent / "other", net.world.validators[:4])
    try:
        broken = copy_proofs(world.b0)
        broken.work.nonce += 1
        responses = other.cores[0].handle(
            [ledger_pb2.LedgerRequest(change=c) for c in (world.change(broken), b, a)]
        )
        refusal(responses[0], R.INVALID_PROOFS)
        assert Ballot.of(voted(responses[1])).change_digest == change_digest(b)
        refusal(responses[2], R.CONFLICT)
    finally:
        other.close()


def test_certificates_apply_once(world: World, net: Net) -> None:
    certificate = net.certify(world.change(world.a0))
    core = net.cores[0]
    responses = core.handle([ledger_pb2.LedgerRequest(certificate=certificate)] * 2)
    assert responses[0].applied == responses[1].applied
    assert one(core, certificate=certificate).applied == responses[0].applied
    assert net.ledgers[0].log_size == 1


def test_a_change_overtaken_in_its_own_call_is_refused(world: World, net: Net) -> None:
    certificate = net.certify(world.change(world.a0), cores=(0, 1, 2))
    core = net.cores[3]
    responses = core.handle(
        [
            ledger_pb2.LedgerRequest(change=world.change(world.a0)),
            ledger_pb2.LedgerRequest(certificate=certificate),
        ]
    )
    assert "advanced in this call" in refusal(responses[0], R.WRONG_VERSION).detail
    assert responses[1].WhichOneof("body") == "applied"
    assert net.signers[3].calls == 0
    assert net.ledgers[3].locked_vote(world.photos, 0) is None


# --- Byzantine validators -------------------------------------------------------------------------


def byzantine_vote(
    validator: Validator, change: ledger_pb2.AssetStateChange
) -> ledger_pb2.LedgerResponse:
    (vote,) = sign_ballots([Ballot.for_change(change, validator.id)], validator.sign, batch=False)
    return ledger_pb2.LedgerResponse(vote=vote)


def test_a_byzantine_validator_cannot_certify_two_changes(world: World, tmp_path: Path) -> None:
    net = Net(world, tmp_path, world.validators[:3])
    byzantine = world.validators[3]
    try:
        a, b = world.change(world.a0), world.change(world.b0)
        to_a, to_b = VoteCollector(a, world.committee), VoteCollector(b, world.committee)
        for index in (0, 1):
            to_a.add(net.cores[index].validator_id, one(net.cores[index], change=a))
        to_b.add(net.cores[2].validator_id, one(net.cores[2], change=b))
        # The Byzantine validator votes for both; A reaches a quorum, B cannot.
        assert to_b.add(byzantine.id, byzantine_vote(byzantine, b)) is None
        certificate = to_a.add(byzantine.id, byzantine_vote(byzantine, a))
        assert certificate is not None
        for index in (0, 1):
            to_b.add(net.cores[index].validator_id, one(net.cores[index], change=b))
        assert to_b.certificate is None
        assert to_b.hopeless
        assert set(to_b.refusals) == {net.cores[0].validator_id, net.cores[1].validator_id}
        assert all(r.reason is R.CONFLICT for r in to_b.refusals.values())
        # A certificate mixing votes for A and B is no certificate.
        mixed = ledger_pb2.StateCertificate(change=b, votes=[*to_b.votes.values()])
        mixed.votes.append(to_a.votes[net.cores[0].validator_id])
        with pytest.raises(InvalidCertificate, match="another change"):
            VoteVerifier().verify_certificate(mixed, world.committee)
        assert (
            "another change"
            in refusal(one(net.cores[2], certificate=mixed), R.INVALID_CERTIFICATE).detail
        )
        # Every core applies A, including the one that had voted B.
        applied = net.apply(certificate)
        assert len({a.log_root for a in applied}) == 1
        assert net.ledgers[2].locked_vote(world.photos, 0) is None
        for ledger in net.ledgers:
            state = ledger.state(world.photos)
            assert state is not None
            assert state.state_hash == change_digest(a)
    finally:
        net.close()


def test_byzantine_answers_are_recorded_as_invalid(world: World, net: Net) -> None:
    change = world.change(world.a0)
    collector = VoteCollector(change, world.committee)
    byzantine, honest = world.validators[3], world.validators[0]
    garbage = ledger_pb2.LedgerResponse(
        vote=ledger_pb2.Vote(validator=common_pb2.PeerId(id=byzantine.id), signature=b"junk")
    )
    collector.add(byzantine.id, garbage)
    assert "malformed vote" in collector.invalid[byzantine.id]
    # A vote for the honest validator's ballot signed with the Byzantine key.
    forged = Ballot.for_change(change, honest.id).to_vote()
    forged.signature = byzantine.sign(Ballot.for_change(change, honest.id).signing_bytes())
    collector.add(honest.id, ledger_pb2.LedgerResponse(vote=forged))
    assert "does not verify" in collector.invalid[honest.id]
    # The Byzantine validator's real vote, handed in as another validator's answer.
    third = world.validators[2]
    collector.add(third.id, byzantine_vote(byzantine, change))
    assert "a vote of" in collector.invalid[third.id]
    # A vote for another version of the asset.
    other_slot = Ballot(0, world.validators[1].id, world.photos, 5, change_digest(change))
    (stray,) = sign_ballots([other_slot], world.validators[1].sign, batch=False)
    collector.add(world.validators[1].id, ledger_pb2.LedgerResponse(vote=stray))
    assert "another asset, version or epoch" in collector.invalid[world.validators[1].id]
    collector.add(world.validators[4].id, byzantine_vote(world.validators[4], change))
    assert "not in the committee" in collector.invalid[world.validators[4].id]
    assert collector.certificate is None
    assert collector.hopeless
    # A later valid vote replaces an invalid answer.
    collector.add(honest.id, one(net.cores[0], change=change))
    assert honest.id not in collector.invalid
    assert honest.id in collector.votes


def test_equivocation_evidence_is_collected_and_stored(world: World, net: Net) -> None:
    a, b = world.change(world.a0), world.change(world.b0)
    byzantine = world.validators[3]
    collector = VoteCollector(a, world.committee)
    collector.add(byzantine.id, byzantine_vote(byzantine, a))
    assert collector.evidence == []
    # Asked again, it claims to be locked to B: its locked vote proves the equivocation.
    claim = ledger_pb2.LedgerResponse(
        refusal=ledger_pb2.Refusal(
            reason=ledger_pb2.LEDGER_REFUSAL_CONFLICT,
            detail="locked",
            locked_vote=byzantine_vote(byzantine, b).vote,
        )
    )
    collector.add(byzantine.id, claim)
    (evidence,) = collector.evidence
    assert Ballot.of(evidence.equivocation.first).change_digest == change_digest(a)
    assert Ballot.of(evidence.equivocation.second).change_digest == change_digest(b)
    core, ledger = net.cores[0], net.ledgers[0]
    assert one(core, evidence=evidence).accepted
    assert one(core, evidence=evidence).accepted  # again: stored once
    assert ledger.evidence() == [evidence]
    # Votes that do not conflict, do not verify, or are of an unknown epoch are no evidence.
    same = ledger_pb2.Evidence()
    same.CopyFrom(evidence)
    same.equivocation.second.CopyFrom(evidence.equivocation.first)
    assert "do not conflict" in refusal(one(core, evidence=same), R.MALFORMED).detail
    forged = ledger_pb2.Evidence()
    forged.CopyFrom(evidence)
    forged.equivocation.second.signature = forged.equivocation.first.signature
    refusal(one(core, evidence=forged), R.INVALID_CERTIFICATE)
    future = ledger_pb2.Evidence()
    future.CopyFrom(evidence)
    future.equivocation.first.epoch = 9
    refusal(one(core, evidence=future), R.WRONG_EPOCH)
    assert len(ledger.evidence()) == 1


def test_conflicting_certificates_beyond_the_fault_bound(world: World, tmp_path: Path) -> None:
    # Two of four validators Byzantine (half the stake): they can certify both A and B. The
    # core applies the first, refuses the second with CONFLICT and keeps the evidence.
    net = Net(world, tmp_path, world.validators[:2])
    byz0, byz1 = world.validators[2], world.validators[3]
    try:
        a, b = world.change(world.a0), world.change(world.b0)
        to_a, to_b = VoteCollector(a, world.committee), VoteCollector(b, world.committee)
        to_a.add(net.cores[0].validator_id, one(net.cores[0], change=a))
        to_b.add(net.cores[1].validator_id, one(net.cores[1], change=b))
        for byzantine in (byz0, byz1):
            to_a.add(byzantine.id, byzantine_vote(byzantine, a))
            to_b.add(byzantine.id, byzantine_vote(byzantine, b))
        assert to_a.certificate is not None
        assert to_b.certificate is not None
        core, ledger = net.cores[0], net.ledgers[0]
        assert one(core, certificate=to_a.certificate).WhichOneof("body") == "applied"
        detail = refusal(one(core, certificate=to_b.certificate), R.CONFLICT).detail
        assert "conflicting certificates" in detail
        culprits = {Ballot.of(e.equivocation.first).validator_id for e in ledger.evidence()}
        assert culprits == {byz0.id, byz1.id}
        state = ledger.state(world.photos)
        assert state is not None
        assert state.state_hash == change_digest(a)
        ledger.audit()
        # The other core had voted B; it sees A's certificate after B's: its own vote for B
        # is no evidence against itself, the Byzantine votes are.
        second = net.cores[1]
        assert one(second, certificate=to_b.certificate).WhichOneof("body") == "applied"
        refusal(one(second, certificate=to_a.certificate), R.CONFLICT)
        culprits = {Ballot.of(e.equivocation.first).validator_id for e in net.ledgers[1].evidence()}
        assert culprits == {byz0.id, byz1.id}
    finally:
        net.close()


# --- catching up ----------------------------------------------------------------------------------


def test_a_lagging_validator_syncs_from_a_peer(world: World, net: Net) -> None:
    lagging = net.cores[3]
    first = net.certify(world.change(world.a0), cores=(0, 1, 2))
    net.apply(first, cores=(0, 1, 2))
    second_change = world.change(world.a1)
    assert refusal(one(lagging, change=second_change), R.WRONG_VERSION).detail.startswith(
        "missing predecessor"
    )
    second = net.certify(second_change, cores=(0, 1, 2))
    net.apply(second, cores=(0, 1, 2))
    videos = net.certify(world.change(world.c0))  # the lagging core votes for another asset
    net.apply(videos)
    assert not syncing(lagging)
    assert refusal(one(lagging, certificate=second), R.WRONG_VERSION).detail.startswith(
        "missing predecessor"
    )
    assert syncing(lagging)
    # It reads the peer's log in the peer's order and applies it.
    batch = one(net.cores[0], certificates_since=ledger_pb2.CertificatesSince(log_index=0))
    assert batch.certificates.log_size == 3
    assert len(batch.certificates.certificates) == 3
    responses = lagging.handle(
        [ledger_pb2.LedgerRequest(certificate=c) for c in batch.certificates.certificates]
    )
    assert [r.WhichOneof("body") for r in responses] == ["applied"] * 3
    lagging.sync_done()
    assert not syncing(lagging)
    # The lagging core had applied the videos certificate first: its log order differs, so
    # its root does too, but its states are the peer's.
    for asset in (world.photos, world.network.asset_id("videos")):
        mine, theirs = net.ledgers[3].state(asset), net.ledgers[0].state(asset)
        assert mine is not None
        assert theirs is not None
        assert (mine.version, mine.state_hash) == (theirs.version, theirs.state_hash)
    # A validator with an empty ledger that replays a peer's log, page by page, has its root.
    fresh = Net(world, net.ledgers[0].path.parent / "fresh", world.validators[3:4])
    try:
        since = 0
        while True:
            request = ledger_pb2.CertificatesSince(log_index=since, limit=1)
            page = one(net.cores[1], certificates_since=request).certificates
            assert page.log_size == 3
            if not page.certificates:
                break
            assert len(page.certificates) == 1
            fresh.apply(page.certificates[0])
            since += 1
        assert since == 3
        assert fresh.ledgers[0].log_root() == net.ledgers[1].log_root()
        fresh.ledgers[0].audit()
    finally:
        fresh.close()


def test_certificates_since_is_capped(world: World, net: Net) -> None:
    net.apply(net.certify(world.change(world.a0)))
    core = net.cores[0]
    for limit in (0, MAX_CERTIFICATES + 1, 1 << 31):
        page = one(core, certificates_since=ledger_pb2.CertificatesSince(limit=limit))
        assert len(page.certificates.certificates) == 1
    page = one(core, certificates_since=ledger_pb2.CertificatesSince(log_index=1, limit=5))
    assert list(page.certificates.certificates) == []
    assert page.certificates.log_size == 1


def test_asset_state(world: World, net: Net) -> None:
    core = net.cores[0]
    unknown = one(core, asset_state=common_pb2.AssetId(id=world.photos))
    assert unknown.WhichOneof("body") == "asset_state"
    assert unknown.asset_state == ledger_pb2.AssetState()
    (applied, *_) = net.apply(net.certify(world.change(world.a0)))
    known = one(core, asset_state=common_pb2.AssetId(id=world.photos)).asset_state
    assert known.asset_id.id == world.photos
    assert known.version == 0
    assert known.state_hash == change_digest(world.change(world.a0))
    assert known.recorded == applied


# --- committee changes ----------------------------------------------------------------------------


def committee_certificate(
    world: World,
    next_message: ledger_pb2.Committee,
    voters: Sequence[Validator],
    current: Committee | None = None,
) -> ledger_pb2.CommitteeCertificate:
    current = current or world.committee
    parsed = Committee.from_message(next_message, world.store)
    votes = [
        sign_ballots([committee_ballot(current, parsed, v.id)], v.sign, batch=False)[0]
        for v in voters
    ]
    return ledger_pb2.CommitteeCertificate(next=next_message, votes=votes)


def test_a_committee_change_is_certified_and_applied(world: World, net: Net) -> None:
    old = world.validators[:4]
    # Before: core 0 has voted for A in epoch 0, and A is certified in epoch 0.
    a = world.change(world.a0)
    certificate = net.certify(a, cores=(0, 1, 2))
    locks = [ledger.locked_vote(world.photos, 0) for ledger in net.ledgers]
    next_message = committee_message(world.validators[1:5], (2, 1, 1, 1), epoch=1)
    change = committee_certificate(world, next_message, old[:3])
    for core, ledger in zip(net.cores, net.ledgers, strict=True):
        assert one(core, committee=change).accepted
        assert core.committee.epoch == 1
        assert core.committee.to_message() == next_message
        assert ledger.epoch == 1
        assert one(core, committee=change).accepted  # again: nothing changes
        ledger.audit()
    # The locks of epoch 0 are kept (the safety of committee changes rests on them).
    assert [ledger.locked_vote(world.photos, 0) for ledger in net.ledgers] == locks
    assert [lock is not None and lock.epoch == 0 for lock in locks] == [True, True, True, False]
    # Changes of epoch 0 are refused now; validators outside the new committee vote no more.
    removed = net.cores[0]  # validators[0] is not in the next committee
    assert (
        "not a member"
        in refusal(one(removed, change=world.change(world.a0, 1)), R.WRONG_EPOCH).detail
    )
    assert "epoch 0" in refusal(one(net.cores[1], change=a), R.WRONG_EPOCH).detail
    # The change core 1 voted for in epoch 0, submitted again in epoch 1: a vote of epoch 1.
    vote = voted(one(net.cores[1], change=world.change(world.a0, 1)))
    assert (vote.epoch, vote.change_digest) == (1, change_digest(a))
    assert net.ledgers[1].locked_vote(world.photos, 0) == vote
    # A certificate of epoch 0 is checked against the committee of epoch 0: a vote of
    # validators[4], a member of epoch 1 only, does not count in it.
    outsider = ledger_pb2.StateCertificate(
        change=a, votes=[*certificate.votes[1:], byzantine_vote(world.validators[4], a).vote]
    )
    assert (
        "not in the committee"
        in refusal(one(net.cores[2], certificate=outsider), R.INVALID_CERTIFICATE).detail
    )
    # The certificate of epoch 0, formed before the change, is applied after it.
    assert one(net.cores[2], certificate=certificate).WhichOneof("body") == "applied"
    assert net.ledgers[2].locked_vote(world.photos, 0) is None
    # Evidence of epoch 0 is still evidence (checked under the committee of epoch 0).
    byzantine = world.validators[3]
    evidence = ledger_pb2.Evidence(
        equivocation=ledger_pb2.Equivocation(
            first=byzantine_vote(byzantine, a).vote,
            second=byzantine_vote(byzantine, world.change(world.b0)).vote,
        )
    )
    assert one(net.cores[2], evidence=evidence).accepted
    # A core that missed the change refuses epoch-1 certificates until it gets it.
    behind = Net(world, net.ledgers[0].path.parent / "behind", world.validators[1:2])
    try:
        epoch1 = world.change(world.c0, 1)
        collector = VoteCollector(epoch1, net.cores[1].committee)
        for core in net.cores[1:]:
            collector.add(core.validator_id, one(core, change=epoch1))
        assert collector.certificate is not None
        assert (
            refusal(one(behind.cores[0], certificate=collector.certificate), R.WRONG_EPOCH).detail
            == "a certificate of epoch 1, the committee is of 0"
        )
        assert one(behind.cores[0], committee=change).accepted
        assert one(behind.cores[0], certificate=collector.certificate).WhichOneof("body") == (
            "applied"
        )
    finally:
        behind.close()


def test_invalid_committee_changes_are_refused(world: World, net: Net) -> None:
    core = net.cores[0]
    old = world.validators[:4]
    next_message = committee_message(world.validators[1:5], (1, 1, 1, 1), epoch=1)

    def refused(change: ledger_pb2.CommitteeCertificate, reason: LedgerRefusal) -> str:
        return refusal(one(core, committee=change), reason).detail

    assert "a quorum is 3" in refused(
        committee_certificate(world, next_message, old[:2]), R.INVALID_CERTIFICATE
    )
    other = committee_message(world.validators[:4], (1, 1, 1, 2), epoch=1)
    mixed = committee_certificate(world, next_message, old[:2])
    mixed.votes.append(committee_certificate(world, other, old[2:3]).votes[0])
    assert "not for this committee" in refused(mixed, R.INVALID_CERTIFICATE)
    twice = committee_certificate(world, next_message, old[:3])
    twice.votes.append(twice.votes[0])
    twice.votes.append(twice.votes[1])
    assert "5 votes, the committee has 4" in refused(twice, R.INVALID_CERTIFICATE)
    twice = committee_certificate(world, next_message, old[:2])
    twice.votes.append(twice.votes[0])
    assert "counted twice" in refused(twice, R.INVALID_CERTIFICATE)
    skipping = committee_message(world.validators[1:5], (1, 1, 1, 1), epoch=2)
    skip = committee_certificate(world, next_message, old[:3])
    skip.next.CopyFrom(skipping)
    assert "the next is 1" in refused(skip, R.WRONG_EPOCH)
    assert "already has another committee" in refused(
        ledger_pb2.CommitteeCertificate(next=committee_message(old, (1, 1, 1, 2))), R.WRONG_EPOCH
    )
    assert one(core, committee=ledger_pb2.CommitteeCertificate(next=world.genesis)).accepted
    # Votes for a committee whose chains do not validate, or that is not in canonical form.
    untrusted = committee_message((*world.validators[1:4], world.foreign), (1, 1, 1, 1), 1)
    digest = committee_message_digest(untrusted)
    votes = [
        sign_ballots([Ballot(0, v.id, bytes(32), 1, digest)], v.sign, batch=False)[0]
        for v in old[:3]
    ]
    forged = ledger_pb2.CommitteeCertificate(next=untrusted, votes=votes)
    assert "the next committee" in refused(forged, R.INVALID_CERTIFICATE)
    loose = ledger_pb2.Committee()
    loose.CopyFrom(next_message)
    loose.members[0].address.transport = common_pb2.TRANSPORT_UNSPECIFIED
    digest = committee_message_digest(loose)
    votes = [
        sign_ballots([Ballot(0, v.id, bytes(32), 1, digest)], v.sign, batch=False)[0]
        for v in old[:3]
    ]
    noncanonical = ledger_pb2.CommitteeCertificate(next=loose, votes=votes)
    assert "canonical" in refused(noncanonical, R.INVALID_CERTIFICATE)
    with pytest.raises(InvalidCertificate, match="canonical"):
        verify_committee_certificate(noncanonical, world.committee, world.store, VoteVerifier())
    assert core.committee.epoch == 0
    assert net.ledgers[0].epoch == 0


def same_members(world: World, epoch: int) -> ledger_pb2.CommitteeCertificate:
    """The genesis members, with their stakes, as the committee of ``epoch`` (certified by
    three of them as the committee of ``epoch - 1``)."""
    current = Committee.from_message(
        committee_message(world.validators[:4], (1, 1, 1, 1), epoch - 1), world.store
    )
    nxt = committee_message(world.validators[:4], (1, 1, 1, 1), epoch)
    return committee_certificate(world, nxt, world.validators[:3], current)


def test_an_owner_cannot_certify_another_change_of_a_slot_after_a_committee_change(
    world: World, net: Net
) -> None:
    # Epoch 0: cores 0, 1 and 2 vote for X; X is certified but only core 0 applies it before
    # the committee changes; core 3 never saw X.
    x = world.change(world.a0)
    certificate = net.certify(x, cores=(0, 1, 2))
    net.apply(certificate, cores=(0,))
    change = same_members(world, 1)
    for core in net.cores:
        assert one(core, committee=change).accepted
    # Epoch 1: the owner equivocates with Y, another change of (photos, version 0). Had the
    # committee change dropped the locks, cores 1, 2 and 3 would be a quorum for Y, and the
    # validators would diverge (core 0 at X, the others at Y).
    y = world.change(world.b0, 1)
    collector = VoteCollector(y, net.cores[0].committee)
    answers = [one(core, change=y) for core in net.cores]
    for core, answer in zip(net.cores, answers, strict=True):
        collector.add(core.validator_id, answer)
    assert refusal(answers[0], R.WRONG_VERSION).detail == (
        f"asset {world.photos.hex()} version 0 is already recorded (recorded version 0)"
    )
    for index in (1, 2):
        conflict = refusal(answers[index], R.CONFLICT)
        assert conflict.detail == (
            f"asset {world.photos.hex()} version 0 is locked to change {change_digest(x).hex()}"
        )
        assert conflict.locked_vote == net.ledgers[index].locked_vote(world.photos, 0)
        assert Ballot.of(conflict.locked_vote) == Ballot.for_change(
            x, net.cores[index].validator_id
        )
    assert voted(answers[3]).epoch == 1  # core 3 holds no lock: it votes for Y
    assert collector.certificate is None
    assert collector.hopeless
    assert collector.invalid == {}  # a lock of epoch 0 is a refusal, not a bad vote
    assert {v: r.reason for v, r in collector.refusals.items()} == {
        net.cores[0].validator_id: R.WRONG_VERSION,
        net.cores[1].validator_id: R.CONFLICT,
        net.cores[2].validator_id: R.CONFLICT,
    }
    # The certificate of epoch 0 applies after the change, also on core 3 that voted for Y:
    # every validator ends at X, with the same log.
    applied = net.apply(certificate, cores=(1, 2, 3))
    assert {a.log_root for a in applied} == {net.ledgers[0].log_root()}
    for ledger in net.ledgers:
        state = ledger.state(world.photos)
        assert state is not None
        assert state.state_hash == change_digest(x)
        assert ledger.locked_vote(world.photos, 0) is None
        ledger.audit()


def test_a_validator_behind_a_committee_change_applies_the_old_epochs_certificates(
    world: World, net: Net
) -> None:
    lagging = net.cores[3]
    first = net.certify(world.change(world.a0), cores=(0, 1, 2))
    net.apply(first, cores=(0, 1, 2))
    # The committee changes (validators[0]'s stake doubles) without the lagging core.
    next_message = committee_message(world.validators[:4], (2, 1, 1, 1), epoch=1)
    change = committee_certificate(world, next_message, world.validators[:3])
    for core in net.cores[:3]:
        assert one(core, committee=change).accepted
    second = net.certify(world.change(world.a1, 1), cores=(0, 1, 2))
    net.apply(second, cores=(0, 1, 2))
    # A certificate of a later epoch than the lagging core's is refused until it follows.
    assert (
        refusal(one(lagging, certificate=second), R.WRONG_EPOCH).detail
        == "a certificate of epoch 1, the committee is of 0"
    )
    assert one(lagging, committee=change).accepted
    assert refusal(one(lagging, certificate=second), R.WRONG_VERSION).detail.startswith(
        "missing predecessor"
    )
    assert syncing(lagging)
    # It catches up from a peer's log: the certificate of epoch 0 (checked against the
    # committee of epoch 0) and the one of epoch 1, in the peer's order.
    batch = one(net.cores[0], certificates_since=ledger_pb2.CertificatesSince(log_index=0))
    assert [c.change.epoch for c in batch.certificates.certificates] == [0, 1]
    responses = lagging.handle(
        [ledger_pb2.LedgerRequest(certificate=c) for c in batch.certificates.certificates]
    )
    assert [r.WhichOneof("body") for r in responses] == ["applied"] * 2
    lagging.sync_done()
    assert net.ledgers[3].log_root() == net.ledgers[0].log_root()
    assert responses[1].applied == net.ledgers[0].state_hash_at(1)
    mine, theirs = net.ledgers[3].state(world.photos), net.ledgers[0].state(world.photos)
    assert mine == theirs
    assert mine is not None
    assert (mine.version, mine.state_hash) == (1, change_digest(world.change(world.a1)))
    net.ledgers[3].audit()


def test_a_change_cut_off_by_a_committee_change_is_finished_in_the_next_epoch(
    world: World, net: Net
) -> None:
    old = world.change(world.a0)
    votes = [voted(one(net.cores[index], change=old)) for index in (0, 1)]  # no quorum yet
    change = same_members(world, 1)
    for core in net.cores:
        assert one(core, committee=change).accepted
    assert "epoch 0" in refusal(one(net.cores[2], change=old), R.WRONG_EPOCH).detail
    # The owner submits the same change (same proofs, same digest) again in epoch 1.
    again = world.change(world.a0, 1)
    assert change_digest(again) == change_digest(old)
    calls = [signer.calls for signer in net.signers]
    collector = VoteCollector(again, net.cores[0].committee)
    for index, core in enumerate(net.cores):
        vote = voted(one(core, change=again))
        assert (vote.epoch, vote.change_digest) == (1, change_digest(old))
        assert net.ledgers[index].locked_vote(world.photos, 0) == vote  # the lock moved
        if index < 2:
            assert vote != votes[index]
        collector.add(core.validator_id, ledger_pb2.LedgerResponse(vote=vote))
    assert [signer.calls for signer in net.signers] == [c + 1 for c in calls]
    # Asked again in epoch 1: the same vote, nothing signed.
    assert voted(one(net.cores[0], change=again)) == net.ledgers[0].locked_vote(world.photos, 0)
    assert net.signers[0].calls == calls[0] + 1
    certificate = collector.certificate
    assert certificate is not None
    assert certificate.change.epoch == 1
    # Another change of the slot is refused by every core (locked in epoch 1 now).
    other = world.change(world.b0, 1)
    for core in net.cores:
        refusal(one(core, change=other), R.CONFLICT)
    applied = net.apply(certificate)
    assert len({a.log_root for a in applied}) == 1
    for ledger in net.ledgers:
        state = ledger.state(world.photos)
        assert state is not None
        assert state.state_hash == change_digest(old)
        assert ledger.locked_vote(world.photos, 0) is None


# --- the collector --------------------------------------------------------------------------------


def test_collectors_need_a_well_formed_change_of_their_epoch(world: World) -> None:
    proofs = copy_proofs(world.a0)
    proofs.stake.asset_id.id = b"short"
    with pytest.raises(LedgerError, match="malformed change"):
        VoteCollector(world.change(proofs), world.committee)
    with pytest.raises(LedgerError, match="epoch 2, the committee is of 0"):
        VoteCollector(world.change(world.a0, 2), world.committee)


def test_a_collector_knows_when_it_is_hopeless(world: World, net: Net) -> None:
    change = world.change(world.a0)
    collector = VoteCollector(change, world.committee)
    ids = [core.validator_id for core in net.cores]
    refused = ledger_pb2.LedgerResponse(
        refusal=ledger_pb2.Refusal(reason=ledger_pb2.LEDGER_REFUSAL_WRONG_VERSION, detail="x")
    )
    assert not hopeless(collector)
    collector.add(ids[0], refused)
    assert not hopeless(collector)  # three left can still make three
    assert collector.refusals[ids[0]].reason is R.WRONG_VERSION
    collector.add(ids[1], ledger_pb2.LedgerResponse(accepted=True))
    assert "answered a change with accepted" in collector.invalid[ids[1]]
    assert hopeless(collector)
    unknown = ledger_pb2.LedgerResponse(refusal=ledger_pb2.Refusal(reason=42))  # type: ignore[arg-type]
    collector.add(ids[2], unknown)
    assert "unknown reason 42" in collector.invalid[ids[2]]
    # Validators may answer again (after a retry): votes count.
    for index in (0, 1, 2):
        collector.add(ids[index], one(net.cores[index], change=change))
    assert collector.certificate is not None
    assert not hopeless(collector)
    assert collector.refusals == {}
    assert collector.invalid == {}


# --- the stateful test ----------------------------------------------------------------------------


#: The last epoch the stateful test's committee changes reach.
LAST_EPOCH = 2
#: How many epochs before the newest one the owner submits in (mostly the newest).
_BACK = st.sampled_from([0, 0, 0, 1, 2])


class OwnerEquivocation(RuleBasedStateMachine):
    """Three honest cores and a Byzantine validator that signs anything; an owner with two
    different changes A and B of the same (asset, version 0), submitted in any epoch the
    committees have reached and delivered in any order; committee changes (the same members,
    epochs 1 to ``LAST_EPOCH``) are certified at any point and reach each core at any later
    point, so cores are at different epochs."""

    def __init__(self, world: World, advances: Sequence[ledger_pb2.CommitteeCertificate]) -> None:
        super().__init__()
        self.world = world
        self.directory = Path(tempfile.mkdtemp(prefix="quorum-machine-"))
        self.net = Net(world, self.directory, world.validators[:3])
        self.byzantine = world.validators[3]
        self.proofs = {"A": world.a0, "B": world.b0}
        self.names = {change_digest(world.change(p)): name for name, p in self.proofs.items()}
        self.advances = advances  # advances[e - 1] makes the committee of epoch e
        self.committees = [world.committee]  # of each epoch certified so far
        self.changes: dict[tuple[str, int], ledger_pb2.AssetStateChange] = {}
        self.collectors: dict[tuple[str, int], VoteCollector] = {}
        #: Every valid vote anyone has seen, by (epoch, digest), by validator.
        self.votes: dict[tuple[int, bytes], dict[bytes, ledger_pb2.Vote]] = {}

    def teardown(self) -> None:
        self.net.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _epoch(self, back: int) -> int:
        """The epoch ``back`` before the newest one certified (the oldest at most)."""
        return max(0, len(self.committees) - 1 - back)

    def _change(self, name: str, epoch: int) -> ledger_pb2.AssetStateChange:
        if (name, epoch) not in self.changes:
            self.changes[(name, epoch)] = self.world.change(self.proofs[name], epoch)
        return self.changes[(name, epoch)]

    def _collector(self, name: str, epoch: int) -> VoteCollector:
        if (name, epoch) not in self.collectors:
            self.collectors[(name, epoch)] = VoteCollector(
                self._change(name, epoch), self.committees[epoch]
            )
        return self.collectors[(name, epoch)]

    def _note(self, validator: bytes, response: ledger_pb2.LedgerResponse) -> None:
        vote = None
        if response.WhichOneof("body") == "vote":
            vote = response.vote
        elif response.WhichOneof("body") == "refusal" and response.refusal.HasField("locked_vote"):
            vote = response.refusal.locked_vote
        if vote is not None:
            ballot = VoteVerifier().verify(vote, self.committees[vote.epoch])
            assert ballot.validator_id == validator
            self.votes.setdefault((ballot.epoch, ballot.change_digest), {}).setdefault(
                validator, vote
            )

    @rule(name=st.sampled_from(["A", "B"]), index=st.integers(0, 2), back=_BACK)
    def deliver_change(self, name: str, index: int, back: int) -> None:
        epoch = self._epoch(back)
        core = self.net.cores[index]
        response = one(core, change=self._change(name, epoch))
        assert response.WhichOneof("body") in ("vote", "refusal")
        if response.WhichOneof("body") == "refusal":
            reason = LedgerRefusal(response.refusal.reason)
            assert reason in (R.CONFLICT, R.WRONG_VERSION, R.WRONG_EPOCH), response.refusal
            assert (reason is R.WRONG_EPOCH) == (epoch != core.committee.epoch)
            locked = response.refusal.locked_vote
            if reason is R.CONFLICT and locked.epoch < epoch:
                event("change: refused for a lock of an earlier epoch")
        else:
            assert response.vote.epoch == epoch == core.committee.epoch
            if epoch > 0:
                event("change: a vote after a committee change")
        self._note(core.validator_id, response)
        self._collector(name, epoch).add(core.validator_id, response)

    @rule(name=st.sampled_from(["A", "B"]), back=_BACK)
    def byzantine_votes(self, name: str, back: int) -> None:
        epoch = self._epoch(back)
        response = byzantine_vote(self.byzantine, self._change(name, epoch))
        self._note(self.byzantine.id, response)
        self._collector(name, epoch).add(self.byzantine.id, response)

    @precondition(lambda self: any(c.certificate for c in self.collectors.values()))
    @rule(index=st.integers(0, 2), pick=st.integers(0, 5))
    def deliver_certificate(self, index: int, pick: int) -> None:
        formed = [c.certificate for _, c in sorted(self.collectors.items()) if c.certificate]
        certificate = formed[pick % len(formed)]
        core = self.net.cores[index]
        response = one(core, certificate=certificate)
        if certificate.change.epoch > core.committee.epoch:
            refusal(response, R.WRONG_EPOCH)
        else:  # of the core's epoch or an earlier one
            assert response.WhichOneof("body") == "applied", response
            if certificate.change.epoch < core.committee.epoch:
                event("certificate: of an earlier epoch, applied")

    @precondition(lambda self: len(self.committees) <= LAST_EPOCH)
    @rule(reach=st.sets(st.integers(0, 2)))
    def certify_committee(self, reach: set[int]) -> None:
        """The next committee is certified; the cores in ``reach`` that were at the newest
        epoch follow at once."""
        certificate = self.advances[len(self.committees) - 1]
        newest = len(self.committees) - 1
        self.committees.append(Committee.from_message(certificate.next, self.world.store))
        for index in sorted(reach):
            core = self.net.cores[index]
            if core.committee.epoch == newest:
                assert one(core, committee=certificate).accepted

    @precondition(
        lambda self: any(c.committee.epoch < len(self.committees) - 1 for c in self.net.cores)
    )
    @rule(pick=st.integers(0, 2))
    def deliver_committee(self, pick: int) -> None:
        behind = [c for c in self.net.cores if c.committee.epoch < len(self.committees) - 1]
        core = behind[pick % len(behind)]
        epoch = core.committee.epoch
        assert one(core, committee=self.advances[epoch]).accepted
        assert core.committee.epoch == epoch + 1

    @invariant()
    def never_two_certificates(self) -> None:
        valid = set()
        for (epoch, digest), votes in self.votes.items():
            name = self.names[digest]
            certificate = ledger_pb2.StateCertificate(
                change=self._change(name, epoch), votes=votes.values()
            )
            try:
                VoteVerifier().verify_certificate(certificate, self.committees[epoch])
            except InvalidCertificate:
                continue
            valid.add(name)
        assert len(valid) <= 1, valid
        formed = {name for (name, _), c in self.collectors.items() if c.certificate is not None}
        assert formed <= valid

    @invariant()
    def honest_validators_agree(self) -> None:
        applied = set()
        for ledger in self.net.ledgers:
            state = ledger.state(self.world.photos)
            if state is not None:
                applied.add(state.state_hash)
        assert len(applied) <= 1
        assert applied <= set(self.names)


def test_an_equivocating_owner_never_gets_two_certificates(world: World) -> None:
    advances = [same_members(world, epoch) for epoch in range(1, LAST_EPOCH + 1)]

    class Machine(OwnerEquivocation):
        def __init__(self) -> None:
            super().__init__(world, advances)

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=30,
            stateful_step_count=12,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
