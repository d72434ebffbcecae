"""Owner-signed changes, validators' votes (alone or in Merkle batches) and quorum certificates.

Byte layouts (labels end in a zero byte, integers are big-endian; see ``ledger.proto``):

* change digest: the combined state hash of the change's proofs
  (:func:`trustchain.consensus.proofs.bundle.state_hash`);
* the owner signs ``CHANGE_LABEL || change digest || epoch (u64)`` with the key of the stake
  proof's certificate chain leaf;
* a :class:`Ballot` (what a vote is for) is signed as ``VOTE_LABEL || epoch (u64) ||
  validator id (32) || asset id (32) || version (u64) || change digest (32)``;
* a batch of ballots is an RFC 6962 Merkle tree (:mod:`trustchain.ct.merkle`) over
  ``leaf_hash(ballot signing bytes)``; the validator signs ``BATCH_LABEL || epoch (u64) ||
  validator id (32) || batch size (u64) || root (32)`` once, and each vote carries its leaf
  index, the batch size and its inclusion proof.

A committee change is voted on with a ballot whose asset id is empty (32 zero bytes in the
signed bytes), whose version is the new epoch and whose change digest is the new committee's
:meth:`~trustchain.consensus.committee.Committee.digest`.

Verification (:class:`VoteVerifier`) checks sizes, membership, the inclusion proof and the
signature; a batch root's signature is checked once and remembered (a bounded cache), which is
what makes batches cheap to verify as well as to sign.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from hypermesh_interfaces.v1 import common_pb2, ledger_pb2
from trustchain.consensus.committee import Committee
from trustchain.consensus.proofs.bundle import state_hash
from trustchain.crypto.algorithms import SignatureAlgorithm
from trustchain.crypto.signatures import Signature, VerifyKey
from trustchain.ct import merkle
from trustchain.errors import (
    AlgorithmMismatch,
    InclusionProofError,
    InvalidCertificate,
    InvalidSignature,
    InvalidVote,
    MalformedData,
    UnknownAlgorithm,
    UnknownValidator,
)

__all__ = [
    "BATCH_LABEL",
    "CHANGE_LABEL",
    "MAX_BATCH",
    "VOTE_LABEL",
    "Ballot",
    "VoteVerifier",
    "change_digest",
    "equivocation",
    "owner_signing_bytes",
    "sign_ballots",
    "sign_change",
    "verify_owner_signature",
]

CHANGE_LABEL: Final = b"hypermesh/ledger-change/v1\x00"
VOTE_LABEL: Final = b"hypermesh/ledger-vote/v1\x00"
BATCH_LABEL: Final = b"hypermesh/ledger-vote-batch/v1\x00"
#: The most votes one batch signature may cover.
MAX_BATCH: Final = 4096
_HASH: Final = 32
_U64: Final = 1 << 64
_MAX_SIGNATURE: Final = 4096
_HYBRID: Final = SignatureAlgorithm.HYBRID_ED25519_FALCON_1024
_NO_ASSET: Final = bytes(_HASH)


def change_digest(change: ledger_pb2.AssetStateChange) -> bytes:
    """The change's digest: the combined state hash of its proofs."""
    return state_hash(change.proofs)


def owner_signing_bytes(digest: bytes, epoch: int) -> bytes:
    """What the owner signs for a change with ``digest`` submitted in ``epoch``."""
    if len(digest) != _HASH or not 0 <= epoch < _U64:
        raise ValueError("digest must be 32 bytes and epoch fit 64 unsigned bits")
    return CHANGE_LABEL + digest + epoch.to_bytes(8, "big")


def sign_change(
    proofs: common_pb2.FourProof, epoch: int, sign: Callable[[bytes], bytes]
) -> ledger_pb2.AssetStateChange:
    """The owner's change for ``proofs`` in ``epoch``; ``sign`` makes the owner's signature
    envelope (the key of ``proofs.stake``'s certificate chain leaf)."""
    change = ledger_pb2.AssetStateChange(proofs=proofs, epoch=epoch)
    change.owner_signature = sign(owner_signing_bytes(change_digest(change), epoch))
    return change


def verify_owner_signature(change: ledger_pb2.AssetStateChange, owner_key: VerifyKey) -> None:
    """Check the owner's signature under ``owner_key`` (the leaf key of the stake proof's
    chain, as validation of the proofs established); :class:`InvalidSignature` if it does not
    verify, :class:`MalformedData` if it does not decode."""
    signature = _signature(change.owner_signature, MalformedData, "owner signature")
    try:
        owner_key.verify(signature, owner_signing_bytes(change_digest(change), change.epoch))
    except AlgorithmMismatch as exc:
        raise InvalidSignature(f"owner signature: {exc}") from exc


@dataclass(frozen=True)
class Ballot:
    """What a vote is for: ``validator_id`` votes, in ``epoch``, for the change with
    ``change_digest`` of ``asset_id`` at ``version`` (see the module docs for committee
    changes)."""

    epoch: int
    validator_id: bytes
    asset_id: bytes
    version: int
    change_digest: bytes

    def __post_init__(self) -> None:
        if not (0 <= self.epoch < _U64 and 0 <= self.version < _U64):
            raise ValueError("epoch and version must fit 64 unsigned bits")
        for value, what in (
            (self.validator_id, "validator id"),
            (self.asset_id, "asset id"),
            (self.change_digest, "change digest"),
        ):
            if len(value) != _HASH:
                raise ValueError(f"{what} must be {_HASH} bytes")

    @property
    def slot(self) -> tuple[int, bytes, int]:
        """(epoch, asset id, version): one honest vote per slot."""
        return (self.epoch, self.asset_id, self.version)

    def signing_bytes(self) -> bytes:
        return (
            VOTE_LABEL
            + self.epoch.to_bytes(8, "big")
            + self.validator_id
            + self.asset_id
            + self.version.to_bytes(8, "big")
            + self.change_digest
        )

    def to_vote(self) -> ledger_pb2.Vote:
        """The vote message, unsigned."""
        return ledger_pb2.Vote(
            epoch=self.epoch,
            validator=common_pb2.PeerId(id=self.validator_id),
            asset_id=common_pb2.AssetId(id=b"" if self.asset_id == _NO_ASSET else self.asset_id),
            version=self.version,
            change_digest=self.change_digest,
        )

    @classmethod
    def of(cls, vote: ledger_pb2.Vote) -> Ballot:
        """The ballot ``vote`` is for; :class:`InvalidVote` for wrong sizes."""
        asset = bytes(vote.asset_id.id) or _NO_ASSET
        try:
            return cls(
                vote.epoch, bytes(vote.validator.id), asset, vote.version, vote.change_digest
            )
        except ValueError as exc:
            raise InvalidVote(f"malformed vote: {exc}") from exc

    @classmethod
    def for_change(cls, change: ledger_pb2.AssetStateChange, validator_id: bytes) -> Ballot:
        """``validator_id``'s ballot for ``change`` (asset and version from its stake proof)."""
        stake = change.proofs.stake
        return cls(
            change.epoch,
            validator_id,
            bytes(stake.asset_id.id),
            stake.version,
            change_digest(change),
        )


def _batch_signing_bytes(epoch: int, validator_id: bytes, size: int, root: bytes) -> bytes:
    return BATCH_LABEL + epoch.to_bytes(8, "big") + validator_id + size.to_bytes(8, "big") + root


def sign_ballots(
    ballots: Sequence[Ballot], sign: Callable[[bytes], bytes], *, batch: bool
) -> list[ledger_pb2.Vote]:
    """Sign ``ballots`` (all of one validator and epoch): each alone, or (``batch``, more than
    one ballot) all at once with one signature over their Merkle root."""
    if not ballots:
        return []
    first = ballots[0]
    if any((b.validator_id, b.epoch) != (first.validator_id, first.epoch) for b in ballots):
        raise ValueError("a batch holds the ballots of one validator and epoch")
    if not batch or len(ballots) == 1:
        votes = []
        for ballot in ballots:
            vote = ballot.to_vote()
            vote.signature = sign(ballot.signing_bytes())
            votes.append(vote)
        return votes
    if len(ballots) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} ballots per batch")
    leaves = [merkle.leaf_hash(b.signing_bytes()) for b in ballots]
    size = len(leaves)
    root = merkle.root_from_leaf_hashes(leaves)
    signature = sign(_batch_signing_bytes(first.epoch, first.validator_id, size, root))

    # Every perfect subtree's hash, level by level: levels[l][i] covers leaves
    # [i << l, (i + 1) << l) (the (level, index) the proof code asks for).
    levels = [leaves]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append(
            [merkle.node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        )

    def subtree(level: int, index: int) -> bytes:
        return levels[level][index]

    votes = []
    for index, ballot in enumerate(ballots):
        vote = ballot.to_vote()
        vote.signature = signature
        vote.batch.leaf_index = index
        vote.batch.batch_size = size
        vote.batch.audit_path.extend(merkle.inclusion_proof(index, size, subtree))
        votes.append(vote)
    return votes


def _signature(data: bytes, error: type[Exception], what: str) -> Signature:
    if len(data) > _MAX_SIGNATURE:
        raise error(f"{what} is {len(data)} bytes, at most {_MAX_SIGNATURE}")
    try:
        signature = Signature.from_bytes(data)
    except (MalformedData, UnknownAlgorithm) as exc:
        raise error(f"{what} does not decode: {exc}") from exc
    if signature.algorithm is not _HYBRID:
        raise error(f"{what} is {signature.algorithm.label}, expected {_HYBRID.label}")
    return signature


class VoteVerifier:
    """Verifies votes against committees, remembering batch roots already verified (at most
    ``cache_size``, least recently used dropped). Thread-safe."""

    def __init__(self, cache_size: int = 4096) -> None:
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def verify(self, vote: ledger_pb2.Vote, committee: Committee) -> Ballot:
        """The ballot ``vote`` validly signs, for a member of ``committee`` in its epoch;
        :class:`InvalidVote` otherwise."""
        ballot = Ballot.of(vote)
        if ballot.epoch != committee.epoch:
            raise InvalidVote(f"vote of epoch {ballot.epoch}, the committee is {committee.epoch}")
        try:
            key = committee.member(ballot.validator_id).key
        except UnknownValidator as exc:
            raise InvalidVote(str(exc)) from exc
        signature = _signature(vote.signature, InvalidVote, "vote signature")
        if not vote.HasField("batch"):
            self._check(key, signature, ballot.signing_bytes())
            return ballot
        batch = vote.batch
        if not 1 <= batch.batch_size <= MAX_BATCH or batch.leaf_index >= batch.batch_size:
            raise InvalidVote(f"batch of {batch.batch_size}, leaf {batch.leaf_index}")
        if len(batch.audit_path) > 64 or any(len(h) != _HASH for h in batch.audit_path):
            raise InvalidVote("malformed batch inclusion proof")
        try:
            root = merkle.root_from_inclusion(
                merkle.leaf_hash(ballot.signing_bytes()),
                batch.leaf_index,
                batch.batch_size,
                list(batch.audit_path),
            )
        except InclusionProofError as exc:
            raise InvalidVote(f"batch inclusion proof: {exc}") from exc
        signed = _batch_signing_bytes(ballot.epoch, ballot.validator_id, batch.batch_size, root)
        memo = hashlib.sha256(signed + bytes(vote.signature)).digest()
        with self._lock:
            if memo in self._verified:
                self._verified.move_to_end(memo)
                return ballot
        self._check(key, signature, signed)
        with self._lock:
            self._verified[memo] = None
            while len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)
        return ballot

    @staticmethod
    def _check(key: VerifyKey, signature: Signature, message: bytes) -> None:
        try:
            key.verify(signature, message)
        except (InvalidSignature, AlgorithmMismatch) as exc:
            raise InvalidVote(f"vote signature does not verify: {exc}") from exc

    def verify_certificate(
        self, certificate: ledger_pb2.StateCertificate, committee: Committee
    ) -> Ballot:
        """Check that ``certificate``'s votes are valid votes of distinct members of
        ``committee`` for its change (epoch, asset, version, digest) with a quorum of stake;
        return the certified ballot (validator id: zeros). :class:`InvalidCertificate`
        otherwise."""
        change = certificate.change
        stake = change.proofs.stake
        try:
            expected = Ballot(
                change.epoch,
                _NO_ASSET,
                bytes(stake.asset_id.id),
                stake.version,
                change_digest(change),
            )
        except ValueError as exc:
            raise InvalidCertificate(f"malformed change: {exc}") from exc
        if expected.epoch != committee.epoch:
            raise InvalidCertificate(
                f"certificate of epoch {expected.epoch}, the committee is {committee.epoch}"
            )
        seen: set[bytes] = set()
        for index, vote in enumerate(certificate.votes):
            try:
                ballot = self.verify(vote, committee)
            except InvalidVote as exc:
                raise InvalidCertificate(f"vote {index}: {exc}") from exc
            if (ballot.asset_id, ballot.version, ballot.change_digest) != (
                expected.asset_id,
                expected.version,
                expected.change_digest,
            ):
                raise InvalidCertificate(f"vote {index} is for another change")
            if ballot.validator_id in seen:
                raise InvalidCertificate(f"vote {index}: validator counted twice")
            seen.add(ballot.validator_id)
        if not committee.is_quorum(seen):
            raise InvalidCertificate(
                f"votes of stake {committee.stake_of(seen)}, a quorum is {committee.quorum_stake}"
            )
        return expected


def equivocation(
    first: ledger_pb2.Vote,
    second: ledger_pb2.Vote,
    committee: Committee,
    verifier: VoteVerifier,
) -> ledger_pb2.Evidence | None:
    """Evidence if ``first`` and ``second`` are valid votes of one validator for different
    changes of the same (epoch, asset, version); None if they do not conflict.
    :class:`InvalidVote` if either does not verify (an unsigned claim is no evidence)."""
    a = verifier.verify(first, committee)
    b = verifier.verify(second, committee)
    if a.validator_id != b.validator_id or a.slot != b.slot or a.change_digest == b.change_digest:
        return None
    return ledger_pb2.Evidence(equivocation=ledger_pb2.Equivocation(first=first, second=second))
