"""trustchain.consensus.ledger: one validator's SQLite ledger, against real files and real votes.

A module-wide committee of four validators with real hybrid keys (members built without
certificate chains: the ledger never looks at them) signs real votes and certificates with
``sign_ballots``; every certificate is checked with ``VoteVerifier.verify_certificate`` before
it is applied. The changes carry synthetic FourProof messages (the ledger validates no proof),
each with its own asset id, version and PoH end hash, signed by a real owner key.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import trustchain
from hypermesh_interfaces.v1 import common_pb2, ledger_pb2
from trustchain.consensus.committee import Committee, Member
from trustchain.consensus.ledger import (
    STATE_RECORD_LABEL,
    Ledger,
    RecordedState,
    committee_digest,
    evidence_hash,
    state_record_bytes,
)
from trustchain.consensus.proofs.bundle import PreviousState
from trustchain.consensus.votes import (
    Ballot,
    VoteVerifier,
    change_digest,
    equivocation,
    sign_ballots,
    sign_change,
)
from trustchain.crypto.signatures import SigningKey
from trustchain.ct import merkle
from trustchain.errors import (
    ChangeRefused,
    InvalidCommittee,
    LedgerCorrupted,
    LedgerError,
    LedgerRefusal,
)

ASSETS = 3
VERSIONS = 4
VARIANTS = 2
EPOCHS = 3  # the changes of the grid are also submitted, and voted on, in epochs 1 and 2
NO_VALIDATOR = bytes(32)

Slot = tuple[int, int, int]  # (asset number, version, variant)


def asset_id(number: int) -> bytes:
    return hashlib.sha256(b"ledger test asset" + number.to_bytes(4, "big")).digest()


def signer(key: SigningKey) -> Callable[[bytes], bytes]:
    return lambda message: key.sign(message).to_bytes()


@dataclass(frozen=True)
class World:
    """The committee, its keys (sorted by id; ``keys[0]`` is the ledger's validator and
    ``keys[:3]`` vote), an owner key, and every change of the asset/version/variant grid with
    its certificate, certified ballot and the validator's own vote (epoch 0); the same changes
    submitted again in each later epoch with the validator's vote of that epoch (``later``);
    and ``advances[e - 1]``, the certificate that makes the same members the committee of
    epoch ``e``."""

    keys: tuple[SigningKey, ...]
    committee: Committee
    owner: SigningKey
    changes: dict[Slot, ledger_pb2.AssetStateChange]
    certificates: dict[Slot, ledger_pb2.StateCertificate]
    ballots: dict[Slot, Ballot]
    own_votes: dict[Slot, ledger_pb2.Vote]
    later: dict[tuple[int, Slot], tuple[ledger_pb2.AssetStateChange, ledger_pb2.Vote]]
    advances: tuple[ledger_pb2.CommitteeCertificate, ...]

    @property
    def own(self) -> bytes:
        return self.keys[0].public_key().key_id

    @property
    def genesis(self) -> ledger_pb2.Committee:
        return self.committee.to_message()

    @property
    def signers(self) -> tuple[SigningKey, ...]:
        return self.keys[:3]

    def lock_entry(
        self, slot: Slot, epoch: int = 0
    ) -> tuple[Ballot, ledger_pb2.AssetStateChange, ledger_pb2.Vote]:
        """What the validator locks when it votes for ``slot``'s change in ``epoch``."""
        if epoch == 0:
            change, vote = self.changes[slot], self.own_votes[slot]
        else:
            change, vote = self.later[(epoch, slot)]
        return Ballot.for_change(change, self.own), change, vote

    def vote(self, slot: Slot, epoch: int = 0) -> ledger_pb2.Vote:
        """The validator's vote for ``slot``'s change in ``epoch``."""
        return self.lock_entry(slot, epoch)[2]


def make_change(
    owner: SigningKey, number: int, version: int, variant: int, *, epoch: int = 0
) -> ledger_pb2.AssetStateChange:
    """A change with synthetic proofs for ``asset_id(number)`` at ``version``; ``variant``
    makes another change (another digest) of the same slot."""
    asset = asset_id(number)
    tag = asset + version.to_bytes(8, "big") + bytes([variant, epoch])
    proofs = common_pb2.FourProof(
        space=common_pb2.SpaceProof(plot_id=hashlib.sha256(b"plot" + tag).digest(), k=18),
        stake=common_pb2.StakeProof(
            asset_id=common_pb2.AssetId(id=asset),
            version=version,
            state_digest=hashlib.sha256(b"state" + tag).digest(),
            stake_amount=1000,
        ),
        work=common_pb2.WorkProof(challenge=hashlib.sha256(b"work" + tag).digest(), nonce=variant),
        time=common_pb2.TimeProof(
            poh=common_pb2.PohSegment(
                start_hash=hashlib.sha256(b"poh start" + tag).digest(),
                num_hashes=64,
                end_hash=hashlib.sha256(b"poh end" + tag).digest(),
            )
        ),
    )
    return sign_change(proofs, epoch, signer(owner))


def certify(
    changes: Sequence[ledger_pb2.AssetStateChange], signers: Sequence[SigningKey]
) -> list[ledger_pb2.StateCertificate]:
    """Certificates for ``changes``: each signer signs all its ballots in one batch."""
    votes = [
        sign_ballots(
            [Ballot.for_change(c, key.public_key().key_id) for c in changes],
            signer(key),
            batch=True,
        )
        for key in signers
    ]
    return [
        ledger_pb2.StateCertificate(change=c, votes=[v[i] for v in votes])
        for i, c in enumerate(changes)
    ]


@pytest.fixture(scope="module")
def world() -> World:
    keys = tuple(
        sorted((SigningKey.generate() for _ in range(4)), key=lambda k: k.public_key().key_id)
    )
    members = tuple(
        Member(
            validator_id=k.public_key().key_id,
            key=k.public_key(),
            chain=(),
            stake=1,
            host="127.0.0.1",
            port=7000 + n,
            name=f"validator-{n}.test",
        )
        for n, k in enumerate(keys)
    )
    committee = Committee(0, members)
    owner = SigningKey.generate()
    slots = [(a, v, x) for a in range(ASSETS) for v in range(VERSIONS) for x in range(VARIANTS)]
    changes = {s: make_change(owner, *s) for s in slots}
    certificates = dict(zip(slots, certify([changes[s] for s in slots], keys[:3]), strict=True))
    verifier = VoteVerifier()
    ballots = {s: verifier.verify_certificate(certificates[s], committee) for s in slots}
    own = keys[0].public_key().key_id
    own_votes = dict(
        zip(
            slots,
            sign_ballots(
                [Ballot.for_change(changes[s], own) for s in slots], signer(keys[0]), batch=True
            ),
            strict=True,
        )
    )
    later = {}
    for epoch in range(1, EPOCHS):
        again = [sign_change(changes[s].proofs, epoch, signer(owner)) for s in slots]
        votes = sign_ballots(
            [Ballot.for_change(c, own) for c in again], signer(keys[0]), batch=True
        )
        later.update({(epoch, s): (c, v) for s, c, v in zip(slots, again, votes, strict=True)})
    advances = []
    for epoch in range(1, EPOCHS):
        current = Committee(epoch - 1, members)
        advances.append(committee_certificate(current, Committee(epoch, members), keys[:3]))
    return World(
        keys, committee, owner, changes, certificates, ballots, own_votes, later, tuple(advances)
    )


@pytest.fixture
def ledger(tmp_path: Path, world: World) -> Iterator[Ledger]:
    with Ledger.open(tmp_path / "ledger.db", validator_id=world.own, genesis=world.genesis) as led:
        yield led


def apply(ledger: Ledger, world: World, slot: Slot) -> common_pb2.StateHash:
    return ledger.apply(world.certificates[slot], world.ballots[slot])


def leaf(world: World, slot: Slot) -> bytes:
    return merkle.leaf_hash(state_record_bytes(world.ballots[slot]))


def refused(excinfo: pytest.ExceptionInfo[ChangeRefused], reason: LedgerRefusal) -> str:
    assert excinfo.value.reason is reason
    return excinfo.value.detail


# --- opening ----------------------------------------------------------------------------------


def test_open_creates_then_reopens_the_same_data(tmp_path: Path, world: World) -> None:
    path = tmp_path / "deep" / "ledger.db"
    with Ledger.open(path, validator_id=world.own, genesis=world.genesis) as ledger:
        assert ledger.epoch == 0
        assert ledger.committee_message() == world.genesis
        assert ledger.committee_message(0) == world.genesis
        assert ledger.log_size == 0
        assert ledger.log_root() == merkle.EMPTY_ROOT
        assert ledger.state(asset_id(0)) is None
        apply(ledger, world, (0, 0, 0))
        apply(ledger, world, (1, 0, 1))
        ledger.record_locks([world.lock_entry((2, 0, 0))])
        evidence = ledger_pb2.Evidence(
            equivocation=ledger_pb2.Equivocation(
                first=world.own_votes[(2, 1, 0)], second=world.own_votes[(2, 1, 1)]
            )
        )
        assert ledger.add_evidence(evidence)
        before = (
            ledger.state(asset_id(0)),
            ledger.state(asset_id(1)),
            ledger.log_root(),
            ledger.certificates_since(0, 10),
        )
    with Ledger.open(path, validator_id=world.own, genesis=world.genesis) as ledger:
        assert ledger.validator_id == world.own
        assert ledger.epoch == 0
        assert ledger.committee_message() == world.genesis
        assert ledger.log_size == 2
        after = (
            ledger.state(asset_id(0)),
            ledger.state(asset_id(1)),
            ledger.log_root(),
            ledger.certificates_since(0, 10),
        )
        assert after == before
        assert ledger.locked_vote(asset_id(2), 0) == world.own_votes[(2, 0, 0)]
        assert ledger.evidence() == [evidence]
        ledger.audit()
        # Appending after a reopen continues the same tree.
        apply(ledger, world, (0, 1, 0))
        expected = [leaf(world, s) for s in ((0, 0, 0), (1, 0, 1), (0, 1, 0))]
        assert ledger.log_root() == merkle.root_from_leaf_hashes(expected)


def test_reopen_for_another_validator_is_refused(tmp_path: Path, world: World) -> None:
    path = tmp_path / "ledger.db"
    Ledger.open(path, validator_id=world.own, genesis=world.genesis).close()
    other = world.keys[1].public_key().key_id
    with pytest.raises(LedgerError) as excinfo:
        Ledger.open(path, validator_id=other, genesis=world.genesis)
    assert type(excinfo.value) is LedgerError
    assert f"is validator {world.own.hex()}'s, not {other.hex()}'s" in str(excinfo.value)


def test_reopen_with_another_genesis_is_refused(tmp_path: Path, world: World) -> None:
    path = tmp_path / "ledger.db"
    Ledger.open(path, validator_id=world.own, genesis=world.genesis).close()
    other = world.genesis
    other.members[0].stake = 5
    with pytest.raises(LedgerError) as excinfo:
        Ledger.open(path, validator_id=world.own, genesis=other)
    assert type(excinfo.value) is LedgerError
    assert (
        f"created with the genesis committee {committee_digest(world.genesis).hex()}, "
        f"not {committee_digest(other).hex()}" in str(excinfo.value)
    )


def test_open_checks_its_arguments(tmp_path: Path, world: World) -> None:
    with pytest.raises(LedgerError, match="a validator id is 32 bytes, got 31"):
        Ledger.open(tmp_path / "a.db", validator_id=world.own[:31], genesis=world.genesis)
    later = world.genesis
    later.epoch = 3
    with pytest.raises(InvalidCommittee, match="genesis committee is of epoch 0, not 3"):
        Ledger.open(tmp_path / "b.db", validator_id=world.own, genesis=later)
    with pytest.raises(InvalidCommittee, match="the genesis committee has no members"):
        Ledger.open(tmp_path / "c.db", validator_id=world.own, genesis=ledger_pb2.Committee())
    assert not (tmp_path / "a.db").exists()


def test_open_refuses_what_is_not_a_ledger(tmp_path: Path, world: World) -> None:
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE things (x)")
        db.commit()
    with pytest.raises(LedgerCorrupted, match=r"is not a ledger: tables \['things'\]"):
        Ledger.open(other, validator_id=world.own, genesis=world.genesis)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(LedgerCorrupted, match="file is not a database"):
        Ledger.open(garbage, validator_id=world.own, genesis=world.genesis)


def test_closed_ledger_refuses_use(ledger: Ledger) -> None:
    ledger.close()
    ledger.close()
    with pytest.raises(LedgerError, match="is closed"):
        _ = ledger.log_size


# --- locks ------------------------------------------------------------------------------------


def test_record_locks_conflict_returns_the_locked_vote(ledger: Ledger, world: World) -> None:
    ledger.record_locks([world.lock_entry((0, 0, 0))])
    ledger.record_locks([world.lock_entry((0, 0, 0))])  # the same change again: a no-op
    assert ledger.locked_vote(asset_id(0), 0) == world.own_votes[(0, 0, 0)]
    with pytest.raises(ChangeRefused) as excinfo:
        ledger.record_locks([world.lock_entry((0, 0, 1))])
    detail = refused(excinfo, LedgerRefusal.CONFLICT)
    digest = world.ballots[(0, 0, 0)].change_digest
    assert detail == f"asset {asset_id(0).hex()} version 0 is locked to change {digest.hex()}"
    assert excinfo.value.locked_vote == world.own_votes[(0, 0, 0)]
    assert ledger.locked_vote(asset_id(0), 0) == world.own_votes[(0, 0, 0)]


def test_record_locks_is_all_or_nothing(ledger: Ledger, world: World) -> None:
    ledger.record_locks([world.lock_entry((0, 0, 0))])
    with pytest.raises(ChangeRefused) as excinfo:
        ledger.record_locks(
            [world.lock_entry((1, 0, 0)), world.lock_entry((2, 0, 0)), world.lock_entry((0, 0, 1))]
        )
    refused(excinfo, LedgerRefusal.CONFLICT)
    assert ledger.locked_vote(asset_id(1), 0) is None
    assert ledger.locked_vote(asset_id(2), 0) is None
    # Two changes of one slot in one call: the first is the locked one, nothing is written.
    with pytest.raises(ChangeRefused) as excinfo:
        ledger.record_locks([world.lock_entry((1, 0, 1)), world.lock_entry((1, 0, 0))])
    refused(excinfo, LedgerRefusal.CONFLICT)
    assert excinfo.value.locked_vote == world.own_votes[(1, 0, 1)]
    assert ledger.locked_vote(asset_id(1), 0) is None
    ledger.record_locks([world.lock_entry((1, 0, 1)), world.lock_entry((2, 1, 0))])
    assert ledger.locked_vote(asset_id(1), 0) == world.own_votes[(1, 0, 1)]
    assert ledger.locked_vote(asset_id(2), 1) == world.own_votes[(2, 1, 0)]
    ledger.record_locks([])


def test_record_locks_checks_entries_fit_together(ledger: Ledger, world: World) -> None:
    ballot, change, vote = world.lock_entry((0, 0, 0))
    foreign = Ballot.for_change(change, world.keys[1].public_key().key_id)
    with pytest.raises(LedgerError, match="a lock holds this validator's vote"):
        ledger.record_locks([(foreign, change, vote)])
    with pytest.raises(LedgerError, match="the vote is not for the ballot"):
        ledger.record_locks([(ballot, change, world.own_votes[(0, 0, 1)])])
    with pytest.raises(LedgerError, match="the ballot is not for the change"):
        ledger.record_locks([(ballot, world.changes[(0, 0, 1)], vote)])
    unsigned = ballot.to_vote()
    with pytest.raises(LedgerError, match="the vote is not signed"):
        ledger.record_locks([(ballot, change, unsigned)])
    assert ledger.locked_vote(asset_id(0), 0) is None


# --- applying ---------------------------------------------------------------------------------


def test_apply_records_state_and_log(ledger: Ledger, world: World) -> None:
    order: list[Slot] = [(0, 0, 0), (1, 0, 1), (0, 1, 0), (2, 0, 0), (0, 2, 1), (1, 1, 0)]
    leaves: list[bytes] = []
    for index, slot in enumerate(order):
        result = apply(ledger, world, slot)
        ballot = world.ballots[slot]
        record = state_record_bytes(ballot)
        leaves.append(merkle.leaf_hash(record))
        assert result.certificate_digest == hashlib.sha256(record).digest()
        assert result.log_index == index
        assert result.log_size == index + 1
        assert result.log_root == merkle.root_from_leaf_hashes(leaves)
        assert ledger.state_hash_at(index) == result
    assert state_record_bytes(world.ballots[(0, 0, 0)]) == (
        STATE_RECORD_LABEL
        + bytes(8)
        + asset_id(0)
        + bytes(8)
        + change_digest(world.changes[(0, 0, 0)])
    )
    assert len(state_record_bytes(world.ballots[(0, 0, 0)])) == 106

    state = ledger.state(asset_id(0))
    change = world.changes[(0, 2, 1)]
    assert state == RecordedState(
        asset_id=asset_id(0),
        version=2,
        state_hash=change_digest(change),
        poh_end=change.proofs.time.poh.end_hash,
        log_index=4,
    )
    assert state.previous() == PreviousState.of(change.proofs)
    size = len(order)
    assert ledger.log_size == size
    assert ledger.log_root() == merkle.root_from_leaf_hashes(leaves)
    for tree_size in range(1, size + 1):
        root = ledger.log_root(tree_size)
        assert root == merkle.root_from_leaf_hashes(leaves[:tree_size])
        for index in range(tree_size):
            proof = ledger.inclusion_proof(index, tree_size)
            merkle.verify_inclusion(leaves[index], index, tree_size, proof, root)
    later = ledger.state_hash_at(0)
    assert (later.log_index, later.log_size, later.log_root) == (0, size, ledger.log_root())
    ledger.audit()


def test_log_queries_refuse_out_of_range(ledger: Ledger, world: World) -> None:
    apply(ledger, world, (0, 0, 0))
    with pytest.raises(LedgerError, match=r"tree size 2 is not within the log's 0..1"):
        ledger.log_root(2)
    with pytest.raises(LedgerError, match="log index 1 is not in a tree of size 1"):
        ledger.inclusion_proof(1)
    with pytest.raises(LedgerError, match="log index 0 is not in a tree of size 0"):
        ledger.inclusion_proof(0, 0)
    with pytest.raises(LedgerError, match="no certificate at log index 1"):
        ledger.state_hash_at(1)
    with pytest.raises(LedgerError, match="no committee for epoch 1"):
        ledger.committee_message(1)
    assert ledger.log_root(0) == merkle.EMPTY_ROOT


def test_apply_is_idempotent(ledger: Ledger, world: World) -> None:
    first = apply(ledger, world, (0, 0, 0))
    assert apply(ledger, world, (0, 0, 0)) == first
    # Another quorum of votes for the same change: the same entry, nothing appended.
    other_votes = ledger_pb2.StateCertificate()
    other_votes.CopyFrom(world.certificates[(0, 0, 0)])
    del other_votes.votes[0]
    other_votes.votes.append(world.own_votes[(0, 0, 0)])
    assert ledger.apply(other_votes, world.ballots[(0, 0, 0)]) == first
    second = apply(ledger, world, (1, 0, 0))
    again = apply(ledger, world, (0, 0, 0))
    assert (again.log_index, again.log_size, again.log_root) == (0, 2, second.log_root)
    assert again.certificate_digest == first.certificate_digest
    assert ledger.log_size == 2
    assert ledger.certificates_since(0, 5) == [
        world.certificates[(0, 0, 0)],
        world.certificates[(1, 0, 0)],
    ]


def test_apply_needs_the_predecessor(ledger: Ledger, world: World) -> None:
    with pytest.raises(ChangeRefused) as excinfo:
        apply(ledger, world, (0, 1, 0))
    assert refused(excinfo, LedgerRefusal.WRONG_VERSION) == (
        f"missing predecessor: asset {asset_id(0).hex()} is unknown here, the certificate is"
        " for version 1"
    )
    apply(ledger, world, (0, 0, 0))
    with pytest.raises(ChangeRefused) as excinfo:
        apply(ledger, world, (0, 2, 0))
    assert refused(excinfo, LedgerRefusal.WRONG_VERSION) == (
        f"missing predecessor: asset {asset_id(0).hex()} is at version 0 here, the certificate"
        " is for version 2"
    )
    assert ledger.log_size == 1
    state = ledger.state(asset_id(0))
    assert state is not None
    assert state.version == 0


def test_conflicting_certificate_is_corruption_and_evidence(ledger: Ledger, world: World) -> None:
    applied = apply(ledger, world, (0, 0, 0))
    state = ledger.state(asset_id(0))
    with pytest.raises(LedgerCorrupted) as excinfo:
        apply(ledger, world, (0, 0, 1))
    first = world.ballots[(0, 0, 0)].change_digest
    second = world.ballots[(0, 0, 1)].change_digest
    assert str(excinfo.value) == (
        f"conflicting certificates for asset {asset_id(0).hex()} version 0: change "
        f"{first.hex()} is applied (log index 0), {second.hex()} is certified too; 3 "
        "equivocations stored as evidence"
    )
    assert ledger.state(asset_id(0)) == state
    assert ledger.log_size == 1
    assert ledger.log_root() == applied.log_root
    stored = world.certificates[(0, 0, 0)]
    other = world.certificates[(0, 0, 1)]
    evidence = ledger.evidence()
    assert evidence == [
        ledger_pb2.Evidence(equivocation=ledger_pb2.Equivocation(first=a, second=b))
        for a, b in zip(stored.votes, other.votes, strict=True)
    ]
    verifier = VoteVerifier()
    for item in evidence:
        pair = item.equivocation
        assert equivocation(pair.first, pair.second, world.committee, verifier) == item
    # The same conflict again stores nothing new.
    with pytest.raises(LedgerCorrupted, match=r"^conflicting certificates"):
        apply(ledger, world, (0, 0, 1))
    assert len(ledger.evidence()) == 3
    ledger.audit()


def test_apply_releases_the_assets_locks(ledger: Ledger, world: World) -> None:
    ledger.record_locks([world.lock_entry(s) for s in ((0, 0, 1), (0, 1, 0), (0, 2, 0), (1, 0, 0))])
    apply(ledger, world, (0, 0, 0))  # certified without this validator's lock: released anyway
    assert ledger.locked_vote(asset_id(0), 0) is None
    assert ledger.locked_vote(asset_id(0), 1) == world.own_votes[(0, 1, 0)]
    apply(ledger, world, (0, 1, 0))
    assert ledger.locked_vote(asset_id(0), 1) is None
    assert ledger.locked_vote(asset_id(0), 2) == world.own_votes[(0, 2, 0)]
    assert ledger.locked_vote(asset_id(1), 0) == world.own_votes[(1, 0, 0)]
    # The slot is free again for the next vote of this asset.
    ledger.record_locks([world.lock_entry((0, 3, 1))])
    assert ledger.locked_vote(asset_id(0), 3) == world.own_votes[(0, 3, 1)]


def test_apply_checks_its_arguments(ledger: Ledger, world: World) -> None:
    with pytest.raises(LedgerError, match="the ballot is not for the certificate's change"):
        ledger.apply(world.certificates[(0, 0, 0)], world.ballots[(0, 0, 1)])
    change = make_change(world.owner, 2, 0, 0)
    change.proofs.time.poh.end_hash = b"\x01" * 31
    (certificate,) = certify([change], world.signers)
    ballot = VoteVerifier().verify_certificate(certificate, world.committee)
    with pytest.raises(ChangeRefused) as excinfo:
        ledger.apply(certificate, ballot)
    assert (
        refused(excinfo, LedgerRefusal.MALFORMED) == "the change's PoH end hash is 31 bytes, not 32"
    )
    assert ledger.log_size == 0


# --- reading back -----------------------------------------------------------------------------


def test_certificates_since_pages_in_log_order(ledger: Ledger, world: World) -> None:
    order: list[Slot] = [(a, v, (a + v) % 2) for v in range(3) for a in range(ASSETS)]
    for slot in order:
        apply(ledger, world, slot)
    pages = []
    start = 0
    while page := ledger.certificates_since(start, 4):
        assert len(page) == min(4, len(order) - start)
        pages.extend(page)
        start += len(page)
    assert pages == [world.certificates[s] for s in order]
    assert ledger.certificates_since(3, 2) == [world.certificates[s] for s in order[3:5]]
    assert ledger.certificates_since(len(order), 10) == []
    assert ledger.certificates_since(0, 0) == []
    with pytest.raises(LedgerError, match="no certificates from index -1, limit 3"):
        ledger.certificates_since(-1, 3)
    # A peer applying them in this order has the same root.
    verifier = VoteVerifier()
    with Ledger.open(
        ledger.path.with_name("peer.db"),
        validator_id=world.keys[1].public_key().key_id,
        genesis=world.genesis,
    ) as peer:
        for certificate in pages:
            peer.apply(certificate, verifier.verify_certificate(certificate, world.committee))
        assert peer.log_root() == ledger.log_root()


def test_evidence_is_deduplicated(ledger: Ledger, world: World) -> None:
    first = ledger_pb2.Evidence(
        equivocation=ledger_pb2.Equivocation(
            first=world.own_votes[(0, 0, 0)], second=world.own_votes[(0, 0, 1)]
        )
    )
    second = ledger_pb2.Evidence(
        equivocation=ledger_pb2.Equivocation(
            first=world.own_votes[(1, 0, 0)], second=world.own_votes[(1, 0, 1)]
        )
    )
    assert ledger.add_evidence(first) is True
    assert ledger.add_evidence(second) is True
    assert ledger.add_evidence(first) is False
    copy = ledger_pb2.Evidence()
    copy.CopyFrom(second)
    assert ledger.add_evidence(copy) is False
    assert ledger.evidence() == [first, second]
    assert (
        evidence_hash(first) == hashlib.sha256(first.SerializeToString(deterministic=True)).digest()
    )
    with pytest.raises(LedgerError, match="the evidence holds no proof"):
        ledger.add_evidence(ledger_pb2.Evidence())


# --- committees -------------------------------------------------------------------------------


def committee_certificate(
    current: Committee, nxt: Committee, keys: Sequence[SigningKey]
) -> ledger_pb2.CommitteeCertificate:
    """The votes of ``keys`` (members of ``current``) for ``nxt``."""
    votes = [
        sign_ballots(
            [Ballot(current.epoch, k.public_key().key_id, NO_VALIDATOR, nxt.epoch, nxt.digest())],
            signer(k),
            batch=False,
        )[0]
        for k in keys
    ]
    return ledger_pb2.CommitteeCertificate(next=nxt.to_message(), votes=votes)


def test_locks_outlive_committee_changes(ledger: Ledger, world: World) -> None:
    ledger.record_locks([world.lock_entry((0, 0, 0)), world.lock_entry((1, 0, 0))])
    one = Committee(1, world.committee.members)
    ledger.advance_committee(world.advances[0])
    assert ledger.epoch == 1
    assert ledger.committee_message() == one.to_message()
    assert ledger.committee_message(0) == world.genesis
    assert committee_digest(one.to_message()) == one.digest()
    # The locks of epoch 0 are kept.
    assert ledger.locked_vote(asset_id(0), 0) == world.vote((0, 0, 0))
    assert ledger.locked_vote(asset_id(1), 0) == world.vote((1, 0, 0))
    # Epoch 1: another change of a slot locked in epoch 0 is a conflict with the epoch-0
    # vote, and nothing of the call is written.
    with pytest.raises(ChangeRefused) as excinfo:
        ledger.record_locks([world.lock_entry((2, 0, 0), 1), world.lock_entry((0, 0, 1), 1)])
    detail = refused(excinfo, LedgerRefusal.CONFLICT)
    digest = world.ballots[(0, 0, 0)].change_digest
    assert detail == f"asset {asset_id(0).hex()} version 0 is locked to change {digest.hex()}"
    assert excinfo.value.locked_vote == world.vote((0, 0, 0))
    assert ledger.locked_vote(asset_id(2), 0) is None
    # The same change submitted in epoch 1: the lock moves to the epoch-1 vote.
    ledger.record_locks([world.lock_entry((0, 0, 0), 1)])
    moved = ledger.locked_vote(asset_id(0), 0)
    assert moved == world.vote((0, 0, 0), 1)
    assert moved is not None
    assert (moved.epoch, moved.change_digest) == (1, digest)
    # The epoch-0 vote again: the lock keeps its newest vote.
    ledger.record_locks([world.lock_entry((0, 0, 0))])
    assert ledger.locked_vote(asset_id(0), 0) == world.vote((0, 0, 0), 1)
    # The same committee again: nothing happens.
    ledger.advance_committee(world.advances[0])
    assert ledger.epoch == 1
    assert ledger.locked_vote(asset_id(0), 0) == world.vote((0, 0, 0), 1)
    with pytest.raises(LedgerError, match="the next committee is of epoch 2, not 3"):
        ledger.advance_committee(committee_certificate(one, Committee(3, one.members), []))
    with pytest.raises(LedgerError, match="epoch 1 already has another committee"):
        ledger.advance_committee(committee_certificate(one, Committee(1, one.members[:3]), []))
    with pytest.raises(InvalidCommittee, match="the next committee has no members"):
        ledger.advance_committee(ledger_pb2.CommitteeCertificate(next=ledger_pb2.Committee()))
    two = Committee(2, one.members[1:])
    ledger.advance_committee(committee_certificate(one, two, world.keys[1:]))
    assert ledger.epoch == 2
    assert ledger.locked_vote(asset_id(0), 0) == world.vote((0, 0, 0), 1)
    assert ledger.locked_vote(asset_id(1), 0) == world.vote((1, 0, 0))
    ledger.audit()
    # A certificate of the slot, of any epoch and even for another change, releases its lock.
    apply(ledger, world, (1, 0, 1))
    assert ledger.locked_vote(asset_id(1), 0) is None
    apply(ledger, world, (0, 0, 0))
    assert ledger.locked_vote(asset_id(0), 0) is None
    ledger.audit()


# --- audit ------------------------------------------------------------------------------------

AUDITED: list[Slot] = [(0, 0, 0), (1, 0, 0), (0, 1, 1), (2, 0, 1), (0, 2, 0)]


def tamper_cases(world: World) -> list[tuple[str, tuple[object, ...], str]]:
    """(SQL, parameters, the reason audit gives) for a ledger holding AUDITED, one evidence, the
    committee of epoch 1 and a lock of epoch 1 on version 1 of asset 1."""
    v1 = world.changes[(0, 1, 1)]
    return [
        ("UPDATE assets SET state_hash = ?", (b"\x01" * 32,), "state is not its certificate's"),
        ("UPDATE assets SET poh_end = ?", (b"\x02" * 32,), "PoH end is not its certificate's"),
        (
            "UPDATE assets SET version = 1, state_hash = ?, poh_end = ?, log_index = 2"
            " WHERE asset_id = ?",
            (change_digest(v1), v1.proofs.time.poh.end_hash, asset_id(0)),
            f"asset {asset_id(0).hex()} is at version 1, its certificates (count, lowest,"
            " highest) are (3, 0, 2)",
        ),
        ("DELETE FROM assets WHERE asset_id = ?", (asset_id(1),), "1 certified assets have no"),
        (
            "UPDATE log_leaves SET leaf_hash = ? WHERE idx = 2",
            (b"\x03" * 32,),
            "log node (1, 1) is missing or not the hash of its leaves",
        ),
        (
            "UPDATE log_leaves SET leaf_hash = ? WHERE idx = 4",
            (b"\x03" * 32,),
            "log leaf 4 is not certificate 4's state record",
        ),
        (
            "DELETE FROM log_nodes WHERE level = 1 AND idx = 0",
            (),
            "log node (1, 0) is missing or not the hash of its leaves",
        ),
        (
            "INSERT INTO log_nodes (level, idx, hash) VALUES (5, 0, ?)",
            (b"\x04" * 32,),
            "the log holds 4 nodes, a tree of size 5 has 3",
        ),
        (
            "UPDATE certificates SET certificate = certificate || x'00' WHERE log_index = 1",
            (),
            "certificate 1 does not decode",
        ),
        (
            "UPDATE certificates SET certificate = ? WHERE log_index = 1",
            (world.certificates[(1, 0, 1)].SerializeToString(deterministic=True),),
            "certificate 1 is not for the change it is stored as",
        ),
        ("DELETE FROM certificates WHERE log_index = 3", (), "certificate 3 is missing"),
        (
            "UPDATE locks SET vote = ?",
            (world.own_votes[(1, 1, 1)].SerializeToString(deterministic=True),),
            f"the lock of asset {asset_id(1).hex()} v1 holds a vote for something else",
        ),
        ("UPDATE evidence SET hash = ?", (b"\x05" * 32,), "evidence 1 is not stored under its"),
        (
            "UPDATE committees SET committee = ?, digest = ? WHERE epoch = 1",
            (
                world.genesis.SerializeToString(deterministic=True),
                committee_digest(world.genesis),
            ),
            "the committee of epoch 1 names epoch 0",
        ),
    ]


@pytest.mark.parametrize("case", range(14))
def test_audit_detects_a_tampered_row(tmp_path: Path, world: World, case: int) -> None:
    sql, params, reason = tamper_cases(world)[case]
    path = tmp_path / "ledger.db"
    with Ledger.open(path, validator_id=world.own, genesis=world.genesis) as ledger:
        for slot in AUDITED:
            apply(ledger, world, slot)
        ledger.add_evidence(
            ledger_pb2.Evidence(
                equivocation=ledger_pb2.Equivocation(
                    first=world.own_votes[(2, 2, 0)], second=world.own_votes[(2, 2, 1)]
                )
            )
        )
        ledger.advance_committee(world.advances[0])
        change = make_change(world.owner, 1, 1, 0, epoch=1)
        ballot = Ballot.for_change(change, world.own)
        (vote,) = sign_ballots([ballot], signer(world.keys[0]), batch=False)
        ledger.record_locks([(ballot, change, vote)])
        ledger.audit()
    with closing(sqlite3.connect(path)) as db:
        db.execute(sql, params)
        db.commit()
    with (
        Ledger.open(path, validator_id=world.own, genesis=world.genesis) as ledger,
        pytest.raises(LedgerCorrupted) as excinfo,
    ):
        ledger.audit()
    assert reason in str(excinfo.value)


def test_open_detects_a_tampered_genesis(tmp_path: Path, world: World) -> None:
    path = tmp_path / "ledger.db"
    Ledger.open(path, validator_id=world.own, genesis=world.genesis).close()
    with closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE committees SET digest = ? WHERE epoch = 0", (b"\x06" * 32,))
        db.commit()
    with pytest.raises(LedgerCorrupted, match="the stored genesis committee is not the ledger's"):
        Ledger.open(path, validator_id=world.own, genesis=world.genesis)


# --- the ledger against a model ---------------------------------------------------------------

_slot = st.tuples(
    st.integers(0, ASSETS - 1),
    st.sampled_from([0, 0, 0, 1, 1, 2, 3]),
    st.integers(0, VARIANTS - 1),
)
_operation: st.SearchStrategy[tuple[str, list[Slot]]] = st.one_of(
    st.tuples(st.just("apply"), st.lists(_slot, min_size=1, max_size=1)),
    st.tuples(st.just("lock"), st.lists(_slot, min_size=1, max_size=3)),
    st.tuples(st.just("advance"), st.lists(_slot, max_size=0)),
)


class Model:
    """What the ledger should hold: the epoch, each asset's (version, variant), the log, the
    locks (variant and epoch of the newest vote) and the evidence, in order."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.epoch = 0
        self.state: dict[int, tuple[int, int]] = {}
        self.log: list[Slot] = []
        self.locks: dict[tuple[int, int], tuple[int, int]] = {}
        self.evidence: list[ledger_pb2.Evidence] = []

    def applied(self, asset: int, version: int) -> int | None:
        for a, v, x in self.log:
            if (a, v) == (asset, version):
                return x
        return None

    def apply(self, ledger: Ledger, slot: Slot) -> None:
        asset, version, variant = slot
        done = self.applied(asset, version)
        if done == variant:
            event("apply: already applied")
            result = apply(ledger, self.world, slot)
            assert result.log_index == self.log.index(slot)
            assert result.log_size == len(self.log)
        elif done is not None:
            event("apply: conflicting certificate")
            with pytest.raises(LedgerCorrupted, match=r"^conflicting certificates"):
                apply(ledger, self.world, slot)
            stored = self.world.certificates[(asset, version, done)].votes
            for a, b in zip(stored, self.world.certificates[slot].votes, strict=True):
                item = ledger_pb2.Evidence(equivocation=ledger_pb2.Equivocation(first=a, second=b))
                if item not in self.evidence:
                    self.evidence.append(item)
        else:
            expected = self.state[asset][0] + 1 if asset in self.state else 0
            if version != expected:
                event("apply: missing predecessor")
                with pytest.raises(ChangeRefused) as excinfo:
                    apply(ledger, self.world, slot)
                assert refused(excinfo, LedgerRefusal.WRONG_VERSION).startswith(
                    "missing predecessor"
                )
                return
            event("apply: appended")
            result = apply(ledger, self.world, slot)
            assert result.log_index == len(self.log)
            self.log.append(slot)
            self.state[asset] = (version, variant)
            self.locks = {
                (a, v): x for (a, v), x in self.locks.items() if a != asset or v > version
            }

    def lock(self, ledger: Ledger, slots: list[Slot]) -> None:
        """Lock ``slots`` with the votes of the current epoch: a slot locked to another
        variant, in any epoch, refuses the call; one locked to the same variant in an
        earlier epoch moves to this one."""
        entries = [self.world.lock_entry(s, self.epoch) for s in slots]
        tentative = dict(self.locks)
        for asset, version, variant in slots:
            held, epoch = tentative.setdefault((asset, version), (variant, self.epoch))
            if held != variant:
                event("lock: conflict" if epoch == self.epoch else "lock: conflict, older epoch")
                with pytest.raises(ChangeRefused) as excinfo:
                    ledger.record_locks(entries)
                refused(excinfo, LedgerRefusal.CONFLICT)
                assert excinfo.value.locked_vote == self.world.vote((asset, version, held), epoch)
                return
            if epoch < self.epoch:
                event("lock: moved to a later epoch")
                tentative[(asset, version)] = (variant, self.epoch)
        event("lock: recorded")
        ledger.record_locks(entries)
        self.locks = tentative

    def advance(self, ledger: Ledger) -> None:
        """The next committee (same members), or the current one again once at the last."""
        if self.epoch + 1 < EPOCHS:
            event("advance: next epoch")
            ledger.advance_committee(self.world.advances[self.epoch])
            self.epoch += 1
        else:
            event("advance: the same committee again")
            ledger.advance_committee(self.world.advances[self.epoch - 1])

    def check(self, ledger: Ledger) -> None:
        assert ledger.epoch == self.epoch
        for asset in range(ASSETS):
            state = ledger.state(asset_id(asset))
            if asset not in self.state:
                assert state is None
            else:
                version, variant = self.state[asset]
                assert state is not None
                assert (state.version, state.state_hash, state.log_index) == (
                    version,
                    self.world.ballots[(asset, version, variant)].change_digest,
                    self.log.index((asset, version, variant)),
                )
            for slot_version in range(VERSIONS):
                held = self.locks.get((asset, slot_version))
                expected = (
                    None
                    if held is None
                    else self.world.vote((asset, slot_version, held[0]), held[1])
                )
                assert ledger.locked_vote(asset_id(asset), slot_version) == expected


@settings(max_examples=120, deadline=None)
@given(operations=st.lists(_operation, max_size=30))
def test_ledger_matches_a_model(world: World, operations: list[tuple[str, list[Slot]]]) -> None:
    model = Model(world)
    with (
        tempfile.TemporaryDirectory() as folder,
        Ledger.open(
            Path(folder) / "ledger.db", validator_id=world.own, genesis=world.genesis
        ) as ledger,
    ):
        for kind, slots in operations:
            if kind == "apply":
                model.apply(ledger, slots[0])
            elif kind == "lock":
                model.lock(ledger, slots)
            else:
                model.advance(ledger)
            model.check(ledger)
        certificates = ledger.certificates_since(0, 100)
        assert certificates == [world.certificates[s] for s in model.log]
        leaves = [leaf(world, s) for s in model.log]
        root = ledger.log_root()
        assert root == merkle.root_from_leaf_hashes(leaves)
        for index, value in enumerate(leaves):
            proof = ledger.inclusion_proof(index)
            merkle.verify_inclusion(value, index, len(leaves), proof, root)
        assert ledger.evidence() == model.evidence
        ledger.audit()


# --- crash safety -----------------------------------------------------------------------------

ROUNDS = 10
SEED = 20250906
WRITER = Path(__file__).with_name("ledger_crash_writer.py")


def _load_writer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ledger_crash_writer", WRITER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The child imports the very trustchain this test imported.
    src = str(Path(trustchain.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def _run_and_kill(path: Path, setup: Path, delay: float) -> tuple[int, list[int]]:
    """Start a writer, wait until it is writing, SIGKILL it after ``delay``; the log size it
    started from and the indices it reported applied."""
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(path), str(setup)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_child_env(),
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        first = proc.stdout.readline() if ready else b""
        if not first.startswith(b"ready "):
            proc.kill()
            proc.wait()
            pytest.fail(f"writer did not start: {first!r} {proc.stderr.read().decode()}")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = proc.stdout.read().decode()
    err = proc.stderr.read().decode()
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"writer ended on its own: {err}"
    applied = []
    for line in out.splitlines():
        word, number = line.split()
        assert word == "applied", line
        applied.append(int(number))
    return int(first.split()[1]), applied


def test_sigkilled_writer_leaves_an_intact_ledger(tmp_path: Path, world: World) -> None:
    writer = _load_writer()
    setup = tmp_path / "setup"
    setup.mkdir()
    (setup / "genesis.bin").write_bytes(world.genesis.SerializeToString(deterministic=True))
    for number, key in enumerate(world.signers):  # signer 0 is the ledger's validator
        (setup / f"signer-{number}.key").write_bytes(key.to_bytes())
    path = tmp_path / "ledger.db"
    Ledger.open(path, validator_id=world.own, genesis=world.genesis).close()

    rng = random.Random(SEED)
    end = 0  # every index below is known to be applied
    for _ in range(ROUNDS):
        start, applied = _run_and_kill(path, setup, rng.uniform(0.0, 0.15))
        # It resumes where the last writer's reports end, or one further (killed between the
        # commit and the print), and reports every entry in order.
        assert end <= start <= end + 1
        assert applied == list(range(start, start + len(applied)))
        end = start + len(applied)
    assert end > ROUNDS, "the writers applied almost nothing"

    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        locks = db.execute("SELECT asset_id, version FROM locks").fetchall()

    with Ledger.open(path, validator_id=world.own, genesis=world.genesis) as ledger:
        ledger.audit()
        size = ledger.log_size
        assert end <= size <= end + 1
        # Exactly the schedule's prefix, each certificate whole and verifying.
        changes = [writer.change_at(i) for i in range(size + 1)]
        certificates = ledger.certificates_since(0, size + 10)
        assert [c.change for c in certificates] == changes[:size]
        verifier = VoteVerifier()
        ballots = [verifier.verify_certificate(c, world.committee) for c in certificates]
        assert ballots == [Ballot.for_change(c, NO_VALIDATOR) for c in changes[:size]]
        leaves = [merkle.leaf_hash(state_record_bytes(b)) for b in ballots]
        assert ledger.log_root() == merkle.root_from_leaf_hashes(leaves)
        for slot in range(writer.ASSETS):
            mine = [i for i in range(size) if i % writer.ASSETS == slot]
            state = ledger.state(writer.asset_id(slot))
            assert state is not None
            assert (state.version, state.state_hash, state.log_index) == (
                len(mine) - 1,
                ballots[mine[-1]].change_digest,
                mine[-1],
            )
        # At most the next entry's lock survives (killed between its lock and its apply).
        following = changes[size].proofs.stake
        assert set(locks) <= {(following.asset_id.id, following.version)}
