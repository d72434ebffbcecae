"""The quorum protocol, sans-IO: what a validator answers, and how an owner gathers votes.

Byzantine consistent broadcast over owned objects (FastPay; Sui Lutris): an owner sends its
``AssetStateChange`` to every validator of the current committee; each checks it, locks the
(asset, version) slot to it and answers with a signed ``Vote``; votes of more than two thirds
of the stake form a ``StateCertificate`` that every validator applies (see ``ledger.proto``).

:class:`ValidatorCore` is one validator's side: :meth:`ValidatorCore.handle` takes a batch of
``LedgerRequest`` messages and returns one ``LedgerResponse`` each. It holds no sockets, clocks
or threads; its durable state is its :class:`~trustchain.consensus.ledger.Ledger`. Per request:

* ``change``: checked in this order, each failure a ``Refusal``: shape (``MALFORMED``: no
  proofs, an asset id that is not 32 bytes or is all zeros -- reserved for committee ballots --,
  a version beyond ``2**63 - 1``; ``TOO_LARGE``: proofs over
  :data:`~trustchain.consensus.proofs.bundle.MAX_BUNDLE_BYTES`), epoch (``WRONG_EPOCH``: not
  the current committee's, or this validator is not a member of it), version (``WRONG_VERSION``:
  not the asset's next here), lock (a slot locked to the same change digest in this epoch
  answers with the vote already cast, signing nothing new; locked to it in an earlier epoch,
  the change goes on through the checks below and gets a new vote of this epoch, the lock
  moving to it; locked to another digest, in ANY epoch: ``CONFLICT`` with the vote cast), the
  four proofs (``INVALID_PROOFS``, with the ``ValidationResult``) and the owner signature under
  the stake proof chain's leaf key (``INVALID_OWNER_SIGNATURE``). Changes that pass are locked
  at the end of the call in ONE :meth:`~trustchain.consensus.ledger.Ledger.record_locks`, their
  ballots signed together (one batch signature when ``batch_votes`` and more than one); a vote
  is never returned before its lock is durable. A change overtaken by a certificate or a
  committee change of the same call (its asset's state or the epoch moved after it was checked)
  is refused at that point (``WRONG_VERSION`` / ``WRONG_EPOCH``). Of two changes of one call
  for the same slot, the first that passes wins; the second gets ``CONFLICT`` (or, for the same
  digest, the same vote).
* ``certificate``: its votes verified against the committee of its epoch -- the current one
  or an earlier one, from the ledger (a certificate formed before a committee change still
  applies after it) --; a certificate of a later epoch than the current one is
  ``WRONG_EPOCH``, failed verification (or an earlier committee whose chains no longer
  validate) ``INVALID_CERTIFICATE``. Every vote of a valid certificate is compared
  with the votes this core has seen from that validator for that slot (a bounded memory) and,
  for its own votes, with its ledger's lock: a conflict is stored as evidence. Then the ledger
  applies it: ``applied`` with the StateHash; a missing predecessor is ``WRONG_VERSION`` and
  sets :attr:`ValidatorCore.needs_sync`; a certificate for a slot already applied with another
  digest (only possible beyond the fault bound: more than a third of the stake Byzantine, or a
  committee change past what "Committee changes" below covers) is ``CONFLICT`` (the ledger
  stores the evidence there is: votes of one validator for both, in one epoch).
* ``certificates_since``: up to :data:`MAX_CERTIFICATES` applied certificates in log order
  (``limit`` 0 or above the cap: the cap).
* ``evidence``: an equivocation whose two votes verify under the committee of their epoch (the
  current one or an earlier one the ledger holds) and conflict is stored; ``accepted``.
  Anything else is refused.
* ``committee``: a ``CommitteeCertificate`` for the current epoch + 1 (``WRONG_EPOCH``
  otherwise; the same committee again is ``accepted``): the current committee's votes for the
  committee ballot (:func:`committee_ballot`) must reach a quorum and the next committee must
  parse (its chains validated against the trust store) and be in canonical form (what
  :meth:`~trustchain.consensus.committee.Committee.to_message` makes: what was voted on is
  what is stored); then the ledger advances and the core switches committee.
* ``asset_state``: the asset's recorded state here (an empty ``AssetState`` if unknown).

Every repeated field :meth:`~ValidatorCore.handle` iterates is bounded: a certificate's votes
by the committee size (a vote of a non-member or a second vote of a member fails it), a
committee certificate's votes likewise, the next committee's members by
:data:`~trustchain.consensus.committee.MAX_MEMBERS`. Bad input never raises; ledger failures
(:class:`~trustchain.errors.LedgerError`, e.g. a database that cannot be written) and signer
failures do.

:class:`VoteCollector` is the owner's side for one change: it takes each validator's answer,
keeps the valid votes for the change, records refusals, invalid answers and equivocations,
and returns the certificate once the votes reach a quorum.

Committee ballots (see :mod:`.votes`): a member of the committee of epoch ``e`` endorses the
committee of epoch ``e + 1`` by signing the ballot ``(e, its id, 32 zero bytes, e + 1,
SHA-256(COMMITTEE_LABEL || deterministic encoding of the next Committee message))``.

Committee changes: what is safe, and what is not
================================================

Changes are voted on in the current epoch only (a vote binds its epoch), but locks outlive
committee changes and certificates of earlier epochs are still applied, each checked against
the committee of its own epoch (the ledger keeps them all). So a validator that fell behind
before a change can still apply the old epoch's certificates (from a peer's log, in the
peer's order), and an owner whose change was cut off by the committee change finishes it by
submitting the same change digest again in the new epoch: its old voters vote again in the
new epoch, nobody else is locked, and a certificate of the new epoch forms.

Why a slot cannot be certified twice across epochs. Suppose certificates for two different
changes X and Y of one (asset, version) exist, X of epoch ``e`` and Y of epoch ``e' >= e``. An
honest validator whose vote is in X's quorum locked the slot to X when it voted, before any
vote of a later epoch (its epoch only grows); from then on it either still holds that lock
(kept across committee changes, released only by applying a certificate of the asset at that
version or a later one) or has applied a certificate of that version (a later version needs it
applied first), after which it answers any change of that version ``WRONG_VERSION``. Either way
it never votes for Y, in any epoch. So Y's quorum of committee ``e'`` and X's quorum of
committee ``e`` share no honest validator. Within one committee that is the usual bound: two
quorums overlap in more than a third of the stake, so it takes more than a third of Byzantine
stake. Across a change that keeps its members' stakes, a quorum of either committee leaves out
less than a third of that committee's stake, so the two quorums share an honest validator
whenever the honest members kept by the change hold at least two thirds of the stake of each
committee (with equal totals: the stake replaced plus the Byzantine stake kept is at most a
third). An unchanged committee (new epoch, same members) is the first case.

NOT handled: a committee change that replaces more than a third of the stake. A quorum of the
old committee can then be disjoint from a quorum of the new one even if every validator is
honest -- the new members hold no locks and have applied nothing -- so an owner that
equivocates across the change can have X certified in the old epoch and Y in the new one,
and validators that apply different ones diverge (the second is refused with ``CONFLICT``
where the first is applied, nothing more). The same holds, in proportion, when a smaller
replacement meets Byzantine stake. Closing that needs the old committee to hand over its locks
and applied certificates before it retires, so the new committee starts from the state the
old one agreed on (Sui's end-of-epoch checkpoint); that is not built. Nor are two votes of
one validator for one slot in different epochs evidence (an ``Equivocation`` is of one
epoch). Liveness is as before: an owner that split the votes of a slot between two changes
so that neither can reach a quorum has blocked that slot for good, whatever the epoch.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from cryptography import x509

from hypermesh_interfaces.v1 import common_pb2, ledger_pb2
from trustchain.ca import hybrid
from trustchain.ca.trust import PARSE_ERRORS, TrustStore
from trustchain.consensus.committee import COMMITTEE_LABEL, Committee
from trustchain.consensus.ledger import Ledger, RecordedState
from trustchain.consensus.proofs.bundle import (
    MAX_BUNDLE_BYTES,
    ValidationContext,
    validate_four_proofs,
)
from trustchain.consensus.votes import (
    Ballot,
    VoteVerifier,
    equivocation,
    sign_ballots,
    verify_owner_signature,
)
from trustchain.errors import (
    ChangeRefused,
    InvalidCertificate,
    InvalidCommittee,
    InvalidSignature,
    InvalidVote,
    LedgerCorrupted,
    LedgerError,
    LedgerRefusal,
    MalformedData,
    UnknownValidator,
)

__all__ = [
    "MAX_CERTIFICATES",
    "SEEN_VOTES",
    "ValidatorCore",
    "VoteCollector",
    "committee_ballot",
    "committee_message_digest",
    "verify_committee_certificate",
]

#: The most certificates one ``certificates_since`` answer holds.
MAX_CERTIFICATES: Final = 64
#: How many (validator, slot) votes a core remembers to detect equivocation.
SEEN_VOTES: Final = 8192
#: How many earlier committees a core keeps parsed.
_OLD_COMMITTEES: Final = 8
_HASH: Final = 32
_NO_ASSET: Final = bytes(_HASH)
_NO_VALIDATOR: Final = bytes(_HASH)
#: The largest epoch or version the ledger stores (SQLite's signed 64 bits).
_MAX_INTEGER: Final = (1 << 63) - 1

_Slot = tuple[bytes, int, bytes, int]  # (validator id, epoch, asset id, version)


# --- committee changes ----------------------------------------------------------------------------


def committee_message_digest(message: ledger_pb2.Committee) -> bytes:
    """SHA-256 over ``COMMITTEE_LABEL`` and the deterministic encoding of ``message`` (for a
    canonical message, :meth:`Committee.digest` of what it parses to)."""
    return hashlib.sha256(COMMITTEE_LABEL + message.SerializeToString(deterministic=True)).digest()


def committee_ballot(current: Committee, next_committee: Committee, validator_id: bytes) -> Ballot:
    """The ballot by which ``validator_id``, a member of ``current``, endorses
    ``next_committee`` (of epoch ``current.epoch + 1``) as its successor."""
    return Ballot(
        current.epoch, bytes(validator_id), _NO_ASSET, next_committee.epoch, next_committee.digest()
    )


def verify_committee_certificate(
    certificate: ledger_pb2.CommitteeCertificate,
    current: Committee,
    trust_store: TrustStore,
    verifier: VoteVerifier,
) -> Committee:
    """The next committee ``certificate`` proves: its epoch is ``current.epoch + 1``, votes of
    distinct members of ``current`` with a quorum of stake are for its committee ballot, and it
    parses (chains validated against ``trust_store`` now) to a committee whose canonical message
    is the one voted on. :class:`InvalidCertificate` otherwise.

    The votes are checked before the next committee's chains are read, and at most as many
    votes as ``current`` has members are looked at."""
    nxt = certificate.next
    if nxt.epoch != current.epoch + 1:
        raise InvalidCertificate(
            f"a committee of epoch {nxt.epoch} does not follow epoch {current.epoch}"
        )
    if len(certificate.votes) > len(current.members):
        raise InvalidCertificate(
            f"{len(certificate.votes)} votes, the committee has {len(current.members)} members"
        )
    digest = committee_message_digest(nxt)
    voters: set[bytes] = set()
    for index, vote in enumerate(certificate.votes):
        try:
            ballot = verifier.verify(vote, current)
        except InvalidVote as exc:
            raise InvalidCertificate(f"vote {index}: {exc}") from exc
        if (ballot.asset_id, ballot.version, ballot.change_digest) != (
            _NO_ASSET,
            nxt.epoch,
            digest,
        ):
            raise InvalidCertificate(f"vote {index} is not for this committee")
        if ballot.validator_id in voters:
            raise InvalidCertificate(f"vote {index}: validator counted twice")
        voters.add(ballot.validator_id)
    if not current.is_quorum(voters):
        raise InvalidCertificate(
            f"votes of stake {current.stake_of(voters)}, a quorum is {current.quorum_stake}"
        )
    try:
        parsed = Committee.from_message(nxt, trust_store)
    except InvalidCommittee as exc:
        raise InvalidCertificate(f"the next committee: {exc}") from exc
    if parsed.digest() != digest:
        raise InvalidCertificate("the next committee is not in canonical form")
    return parsed


# --- the validator --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pending:
    """A change of the current call that passed its checks, waiting to be locked and voted."""

    position: int
    change: ledger_pb2.AssetStateChange
    ballot: Ballot
    state: RecordedState | None  # the asset's state it was checked against


def _refusal(
    reason: LedgerRefusal,
    detail: str,
    *,
    locked_vote: ledger_pb2.Vote | None = None,
    validation: common_pb2.ValidationResult | None = None,
) -> ledger_pb2.LedgerResponse:
    refusal = ledger_pb2.Refusal(reason=int(reason), detail=detail)  # type: ignore[arg-type]
    if locked_vote is not None:
        refusal.locked_vote.CopyFrom(locked_vote)
    if validation is not None:
        refusal.validation.CopyFrom(validation)
    return ledger_pb2.LedgerResponse(refusal=refusal)


def _refused(exc: ChangeRefused) -> ledger_pb2.LedgerResponse:
    return _refusal(exc.reason, exc.detail, locked_vote=exc.locked_vote, validation=exc.validation)


def _vote_response(vote: ledger_pb2.Vote) -> ledger_pb2.LedgerResponse:
    response = ledger_pb2.LedgerResponse()
    response.vote.CopyFrom(vote)
    return response


class ValidatorCore:
    """One validator's protocol logic over its ledger (see the module docs).

    ``sign`` makes the validator's signature envelope (the key whose id is ``validator_id``);
    ``context`` gives what the four proofs are checked against (called at most once per
    :meth:`handle` call, when a change needs it); ``trust_store`` is what committee members'
    chains are validated against. Not thread-safe: one caller at a time.
    """

    def __init__(
        self,
        *,
        ledger: Ledger,
        trust_store: TrustStore,
        validator_id: bytes,
        sign: Callable[[bytes], bytes],
        context: Callable[[], ValidationContext],
        batch_votes: bool = True,
        verifier: VoteVerifier | None = None,
    ) -> None:
        validator_id = bytes(validator_id)
        if len(validator_id) != _HASH:
            raise LedgerError(f"a validator id is {_HASH} bytes, got {len(validator_id)}")
        self._ledger = ledger
        self._trust_store = trust_store
        self._validator_id = validator_id
        self._sign = sign
        self._context = context
        self._batch_votes = batch_votes
        self._verifier = verifier if verifier is not None else VoteVerifier()
        self._committee = Committee.from_message(ledger.committee_message(), trust_store)
        self._old_committees: OrderedDict[int, Committee] = OrderedDict()
        self._seen: OrderedDict[_Slot, ledger_pb2.Vote] = OrderedDict()
        self._needs_sync = False

    @property
    def committee(self) -> Committee:
        """The current committee."""
        return self._committee

    @property
    def validator_id(self) -> bytes:
        return self._validator_id

    @property
    def needs_sync(self) -> bool:
        """Set when a certificate was refused for a missing predecessor: the shell should read
        ``certificates_since`` from peers and feed the certificates back through
        :meth:`handle`, then call :meth:`sync_done`."""
        return self._needs_sync

    def sync_done(self) -> None:
        self._needs_sync = False

    # -- requests --------------------------------------------------------------------------------

    def handle(
        self, requests: Sequence[ledger_pb2.LedgerRequest]
    ) -> list[ledger_pb2.LedgerResponse]:
        """One response per request, in order (see the module docs)."""
        call = _Call(self._context)
        responses: list[ledger_pb2.LedgerResponse | None] = []
        for position, request in enumerate(requests):
            kind = request.WhichOneof("body")
            if kind == "change":
                responses.append(self._change(position, request.change, call))
            elif kind == "certificate":
                responses.append(self._certificate(request.certificate))
            elif kind == "certificates_since":
                responses.append(self._certificates_since(request.certificates_since))
            elif kind == "evidence":
                responses.append(self._evidence(request.evidence))
            elif kind == "committee":
                responses.append(self._committee_change(request.committee))
            elif kind == "asset_state":
                responses.append(self._asset_state(bytes(request.asset_state.id)))
            else:
                responses.append(_refusal(LedgerRefusal.MALFORMED, "an empty request"))
        self._lock_and_vote(call, responses)
        assert all(r is not None for r in responses)
        return [r for r in responses if r is not None]

    # -- changes ---------------------------------------------------------------------------------

    def _change(
        self, position: int, change: ledger_pb2.AssetStateChange, call: _Call
    ) -> ledger_pb2.LedgerResponse | None:
        """The refusal or vote for ``change`` now, or None: it passed and waits in ``call``."""
        if not change.HasField("proofs"):
            return _refusal(LedgerRefusal.MALFORMED, "the change holds no proofs")
        size = change.proofs.ByteSize()
        if size > MAX_BUNDLE_BYTES:
            return _refusal(
                LedgerRefusal.TOO_LARGE, f"proofs of {size} bytes, at most {MAX_BUNDLE_BYTES}"
            )
        stake = change.proofs.stake
        asset, version = bytes(stake.asset_id.id), stake.version
        if len(asset) != _HASH:
            return _refusal(LedgerRefusal.MALFORMED, f"an asset id of {len(asset)} bytes")
        if asset == _NO_ASSET:
            return _refusal(
                LedgerRefusal.MALFORMED, "the all-zero asset id is reserved for committee ballots"
            )
        if version > _MAX_INTEGER:
            return _refusal(LedgerRefusal.MALFORMED, f"version {version} is beyond 2**63 - 1")
        committee = self._committee
        if change.epoch != committee.epoch:
            return _refusal(
                LedgerRefusal.WRONG_EPOCH,
                f"the change is for epoch {change.epoch}, the committee is of {committee.epoch}",
            )
        if committee.stake_of([self._validator_id]) == 0:
            return _refusal(
                LedgerRefusal.WRONG_EPOCH,
                f"this validator is not a member of the committee of epoch {committee.epoch}",
            )
        state = self._ledger.state(asset)
        refused = _version_refusal(asset, version, state)
        if refused is not None:
            return refused
        ballot = Ballot.for_change(change, self._validator_id)
        first = call.slots.get((asset, version))
        if first is not None:
            call.followers.append((position, first, ballot.change_digest))
            return None
        locked = self._ledger.locked_vote(asset, version)
        if locked is not None:
            if bytes(locked.change_digest) != ballot.change_digest:
                # Locked to another change, in this epoch or an earlier one: never vote for a
                # second change of a slot (see "Committee changes" in the module docs).
                return _refusal(
                    LedgerRefusal.CONFLICT,
                    f"asset {asset.hex()} version {version} is locked to change "
                    f"{bytes(locked.change_digest).hex()}",
                    locked_vote=locked,
                )
            if locked.epoch == ballot.epoch:
                return _vote_response(locked)
            # The same change, voted in an earlier epoch: checked and voted again in this one
            # (record_locks moves the lock to the new vote).
        previous = state.previous() if state is not None else None
        result = validate_four_proofs(change.proofs, previous=previous, context=call.context())
        if not result.valid:
            return _refusal(
                LedgerRefusal.INVALID_PROOFS,
                "; ".join(f"{r.kind.name}: {r.detail}" for r in result.rejections),
                validation=result.to_message(),
            )
        refused = _owner_signature_refusal(change)
        if refused is not None:
            return refused
        call.slots[(asset, version)] = len(call.pending)
        call.pending.append(_Pending(position, change, ballot, state))
        return None

    def _lock_and_vote(
        self, call: _Call, responses: list[ledger_pb2.LedgerResponse | None]
    ) -> None:
        """Lock the call's passing changes in one transaction and answer with their votes."""
        outcome: dict[int, ledger_pb2.LedgerResponse] = {}
        live: list[tuple[int, _Pending]] = []
        for index, pending in enumerate(call.pending):
            refused = self._overtaken(pending)
            if refused is None:
                live.append((index, pending))
            else:
                outcome[index] = refused
        votes: dict[int, ledger_pb2.Vote] = {}
        while live:
            signed = sign_ballots([p.ballot for _, p in live], self._sign, batch=self._batch_votes)
            try:
                self._ledger.record_locks(
                    [(p.ballot, p.change, v) for (_, p), v in zip(live, signed, strict=True)]
                )
            except ChangeRefused as exc:
                if exc.reason is not LedgerRefusal.CONFLICT:
                    raise
                # A slot was locked since it was checked. The signed votes are dropped unsent
                # (a batch signature covers every ballot of the batch); the conflicting changes
                # are refused and the others signed again.
                still = []
                for index, pending in live:
                    b = pending.ballot
                    locked = self._ledger.locked_vote(b.asset_id, b.version)
                    if locked is not None and bytes(locked.change_digest) != b.change_digest:
                        outcome[index] = _refusal(
                            LedgerRefusal.CONFLICT,
                            f"asset {b.asset_id.hex()} version {b.version} is locked to change "
                            f"{bytes(locked.change_digest).hex()}",
                            locked_vote=locked,
                        )
                    else:
                        still.append((index, pending))
                if len(still) == len(live):
                    raise
                live = still
                continue
            votes = {index: vote for (index, _), vote in zip(live, signed, strict=True)}
            break
        for index, vote in votes.items():
            outcome[index] = _vote_response(vote)
        for index, pending in enumerate(call.pending):
            responses[pending.position] = outcome[index]
        for position, index, digest in call.followers:
            pending = call.pending[index]
            if digest == pending.ballot.change_digest or index not in votes:
                copied = ledger_pb2.LedgerResponse()
                copied.CopyFrom(outcome[index])
                responses[position] = copied
            else:
                b = pending.ballot
                responses[position] = _refusal(
                    LedgerRefusal.CONFLICT,
                    f"asset {b.asset_id.hex()} version {b.version} is locked to change "
                    f"{b.change_digest.hex()} (earlier in this call)",
                    locked_vote=votes[index],
                )

    def _overtaken(self, pending: _Pending) -> ledger_pb2.LedgerResponse | None:
        """A refusal if the epoch or the asset's state moved since ``pending`` was checked."""
        ballot = pending.ballot
        if ballot.epoch != self._committee.epoch:
            return _refusal(
                LedgerRefusal.WRONG_EPOCH,
                f"the committee changed to epoch {self._committee.epoch} in this call",
            )
        if self._ledger.state(ballot.asset_id) != pending.state:
            return _refusal(
                LedgerRefusal.WRONG_VERSION,
                f"asset {ballot.asset_id.hex()} advanced in this call",
            )
        return None

    # -- certificates ----------------------------------------------------------------------------

    def _committee_of(self, epoch: int) -> Committee | None:
        """The committee of ``epoch`` if the ledger holds it; :class:`InvalidCommittee` if an
        earlier one no longer parses (its chains expired or were revoked)."""
        current = self._committee
        if epoch == current.epoch:
            return current
        if epoch > current.epoch:
            return None
        found = self._old_committees.get(epoch)
        if found is None:
            found = Committee.from_message(self._ledger.committee_message(epoch), self._trust_store)
            self._old_committees[epoch] = found
            while len(self._old_committees) > _OLD_COMMITTEES:
                self._old_committees.popitem(last=False)
        else:
            self._old_committees.move_to_end(epoch)
        return found

    def _certificate(self, certificate: ledger_pb2.StateCertificate) -> ledger_pb2.LedgerResponse:
        epoch = certificate.change.epoch
        try:
            committee = self._committee_of(epoch)
        except InvalidCommittee as exc:
            return _refusal(
                LedgerRefusal.INVALID_CERTIFICATE, f"the committee of epoch {epoch}: {exc}"
            )
        if committee is None:
            return _refusal(
                LedgerRefusal.WRONG_EPOCH,
                f"a certificate of epoch {epoch}, the committee is of {self._committee.epoch}",
            )
        try:
            ballot = self._verifier.verify_certificate(certificate, committee)
        except InvalidCertificate as exc:
            return _refusal(LedgerRefusal.INVALID_CERTIFICATE, str(exc))
        if ballot.version > _MAX_INTEGER:
            return _refusal(
                LedgerRefusal.MALFORMED, f"version {ballot.version} is beyond 2**63 - 1"
            )
        self._watch(certificate.votes)
        before = self._ledger.state(ballot.asset_id)
        try:
            applied = self._ledger.apply(certificate, ballot)
        except ChangeRefused as exc:
            if exc.reason is LedgerRefusal.WRONG_VERSION:
                self._needs_sync = True
            return _refused(exc)
        except LedgerCorrupted as exc:
            if before is None or before.version < ballot.version:
                raise
            # The slot is applied here with another digest: two valid certificates conflict
            # (beyond the fault bound, see the module docs); the ledger stored the evidence.
            return _refusal(LedgerRefusal.CONFLICT, str(exc))
        return ledger_pb2.LedgerResponse(applied=applied)

    def _watch(self, votes: Sequence[ledger_pb2.Vote]) -> None:
        """Compare the (verified) ``votes`` with those seen before from the same validator for
        the same slot, and with this validator's own locks; store any equivocation."""
        for vote in votes:
            ballot = Ballot.of(vote)
            key = (ballot.validator_id, *ballot.slot)
            earlier = self._seen.get(key)
            if earlier is None and ballot.validator_id == self._validator_id:
                earlier = self._ledger.locked_vote(ballot.asset_id, ballot.version)
                if earlier is not None and earlier.epoch != ballot.epoch:
                    earlier = None
            if earlier is not None and bytes(earlier.change_digest) != ballot.change_digest:
                self._ledger.add_evidence(
                    ledger_pb2.Evidence(
                        equivocation=ledger_pb2.Equivocation(first=earlier, second=vote)
                    )
                )
            self._remember(key, earlier if earlier is not None else vote)

    def _remember(self, key: _Slot, vote: ledger_pb2.Vote) -> None:
        if key in self._seen:
            self._seen.move_to_end(key)
            return
        self._seen[key] = vote
        while len(self._seen) > SEEN_VOTES:
            self._seen.popitem(last=False)

    def _certificates_since(
        self, request: ledger_pb2.CertificatesSince
    ) -> ledger_pb2.LedgerResponse:
        limit = request.limit if 0 < request.limit <= MAX_CERTIFICATES else MAX_CERTIFICATES
        batch = ledger_pb2.CertificateBatch(
            certificates=self._ledger.certificates_since(request.log_index, limit),
            log_size=self._ledger.log_size,
        )
        return ledger_pb2.LedgerResponse(certificates=batch)

    # -- evidence and committees -----------------------------------------------------------------

    def _evidence(self, evidence: ledger_pb2.Evidence) -> ledger_pb2.LedgerResponse:
        if evidence.WhichOneof("kind") != "equivocation":
            return _refusal(LedgerRefusal.MALFORMED, "the evidence holds no equivocation")
        first, second = evidence.equivocation.first, evidence.equivocation.second
        try:
            committee = self._committee_of(first.epoch)
        except InvalidCommittee as exc:
            return _refusal(
                LedgerRefusal.INVALID_CERTIFICATE, f"the committee of epoch {first.epoch}: {exc}"
            )
        if committee is None:
            return _refusal(
                LedgerRefusal.WRONG_EPOCH,
                f"evidence of epoch {first.epoch}, the committee is of {self._committee.epoch}",
            )
        try:
            found = equivocation(first, second, committee, self._verifier)
        except InvalidVote as exc:
            return _refusal(LedgerRefusal.INVALID_CERTIFICATE, f"a vote of the evidence: {exc}")
        if found is None:
            return _refusal(LedgerRefusal.MALFORMED, "the two votes do not conflict")
        self._ledger.add_evidence(found)
        ballot = Ballot.of(first)
        self._remember((ballot.validator_id, *ballot.slot), first)
        return ledger_pb2.LedgerResponse(accepted=True)

    def _committee_change(
        self, certificate: ledger_pb2.CommitteeCertificate
    ) -> ledger_pb2.LedgerResponse:
        nxt = certificate.next
        current = self._committee
        if nxt.epoch <= current.epoch:
            stored = self._ledger.committee_message(nxt.epoch)
            if stored.SerializeToString(deterministic=True) == nxt.SerializeToString(
                deterministic=True
            ):
                return ledger_pb2.LedgerResponse(accepted=True)
            return _refusal(
                LedgerRefusal.WRONG_EPOCH, f"epoch {nxt.epoch} already has another committee"
            )
        if nxt.epoch != current.epoch + 1:
            return _refusal(
                LedgerRefusal.WRONG_EPOCH,
                f"a committee of epoch {nxt.epoch}, the next is {current.epoch + 1}",
            )
        try:
            parsed = verify_committee_certificate(
                certificate, current, self._trust_store, self._verifier
            )
        except InvalidCertificate as exc:
            return _refusal(LedgerRefusal.INVALID_CERTIFICATE, str(exc))
        self._ledger.advance_committee(certificate)
        self._old_committees[current.epoch] = current
        while len(self._old_committees) > _OLD_COMMITTEES:
            self._old_committees.popitem(last=False)
        self._committee = parsed
        return ledger_pb2.LedgerResponse(accepted=True)

    def _asset_state(self, asset: bytes) -> ledger_pb2.LedgerResponse:
        if len(asset) != _HASH:
            return _refusal(LedgerRefusal.MALFORMED, f"an asset id of {len(asset)} bytes")
        state = self._ledger.state(asset)
        reply = ledger_pb2.AssetState()
        if state is not None:
            reply.asset_id.id = asset
            reply.version = state.version
            reply.state_hash = state.state_hash
            reply.recorded.CopyFrom(self._ledger.state_hash_at(state.log_index))
        return ledger_pb2.LedgerResponse(asset_state=reply)


class _Call:
    """The state of one :meth:`ValidatorCore.handle` call."""

    def __init__(self, context: Callable[[], ValidationContext]) -> None:
        self._factory = context
        self._context: ValidationContext | None = None
        self.pending: list[_Pending] = []
        #: (asset, version) -> index in ``pending`` of the change that holds it in this call.
        self.slots: dict[tuple[bytes, int], int] = {}
        #: Later changes of a slot held in this call: (response position, pending index, digest).
        self.followers: list[tuple[int, int, bytes]] = []

    def context(self) -> ValidationContext:
        if self._context is None:
            self._context = self._factory()
        return self._context


def _version_refusal(
    asset: bytes, version: int, state: RecordedState | None
) -> ledger_pb2.LedgerResponse | None:
    expected = 0 if state is None else state.version + 1
    if version == expected:
        return None
    if version < expected:
        return _refusal(
            LedgerRefusal.WRONG_VERSION,
            f"asset {asset.hex()} version {version} is already recorded "
            f"(recorded version {expected - 1})",
        )
    known = "unknown here" if state is None else f"at version {expected - 1} here"
    return _refusal(
        LedgerRefusal.WRONG_VERSION,
        f"missing predecessor: asset {asset.hex()} is {known}, the change is for version {version}",
    )


def _owner_signature_refusal(
    change: ledger_pb2.AssetStateChange,
) -> ledger_pb2.LedgerResponse | None:
    """Check the owner signature under the leaf key of the stake proof's chain (validated with
    the proofs)."""
    chain = change.proofs.stake.owner_certificate_chain.certificates
    if not chain:
        return _refusal(LedgerRefusal.INVALID_OWNER_SIGNATURE, "the stake proof has no chain")
    try:
        key = hybrid.certificate_public_key(x509.load_der_x509_certificate(chain[0]))
        verify_owner_signature(change, key)
    except (InvalidSignature, MalformedData, *PARSE_ERRORS) as exc:
        return _refusal(LedgerRefusal.INVALID_OWNER_SIGNATURE, f"owner signature: {exc}")
    return None


# --- the owner ------------------------------------------------------------------------------------


class VoteCollector:
    """Gathers the validators' answers to one change into a certificate (see the module docs).

    :class:`LedgerError` if ``change`` has fields of the wrong size or is not for
    ``committee``'s epoch (no vote could ever be for it).
    """

    def __init__(
        self,
        change: ledger_pb2.AssetStateChange,
        committee: Committee,
        verifier: VoteVerifier | None = None,
    ) -> None:
        try:
            expected = Ballot.for_change(change, _NO_VALIDATOR)
        except ValueError as exc:
            raise LedgerError(f"malformed change: {exc}") from exc
        if expected.epoch != committee.epoch:
            raise LedgerError(
                f"the change is for epoch {expected.epoch}, the committee is of {committee.epoch}"
            )
        self._change = ledger_pb2.AssetStateChange()
        self._change.CopyFrom(change)
        self._expected = expected
        self._committee = committee
        self._verifier = verifier if verifier is not None else VoteVerifier()
        self._votes: dict[bytes, ledger_pb2.Vote] = {}
        self._others: dict[bytes, ledger_pb2.Vote] = {}
        self._evidence: dict[bytes, ledger_pb2.Evidence] = {}
        self._invalid: dict[bytes, str] = {}
        self._refusals: dict[bytes, ChangeRefused] = {}
        self._certificate: ledger_pb2.StateCertificate | None = None

    @property
    def certificate(self) -> ledger_pb2.StateCertificate | None:
        return self._certificate

    @property
    def votes(self) -> dict[bytes, ledger_pb2.Vote]:
        """The valid votes for the change, by validator id."""
        return dict(self._votes)

    @property
    def evidence(self) -> list[ledger_pb2.Evidence]:
        """Equivocations: a validator's vote for the change and its vote for another change of
        the same slot (one per validator)."""
        return list(self._evidence.values())

    @property
    def invalid(self) -> dict[bytes, str]:
        """Validators whose answer was not usable (a vote that does not verify, is another
        validator's or for another slot, an unexpected answer), with why."""
        return dict(self._invalid)

    @property
    def refusals(self) -> dict[bytes, ChangeRefused]:
        return dict(self._refusals)

    @property
    def hopeless(self) -> bool:
        """True if no certificate was formed and the members not yet heard from cannot bring
        the votes to a quorum any more."""
        if self._certificate is not None:
            return False
        heard = set(self._votes) | set(self._others) | set(self._invalid) | set(self._refusals)
        waiting = [m.validator_id for m in self._committee.members if m.validator_id not in heard]
        possible = self._committee.stake_of([*self._votes, *waiting])
        return possible < self._committee.quorum_stake

    def add(
        self, validator_id: bytes, response: ledger_pb2.LedgerResponse
    ) -> ledger_pb2.StateCertificate | None:
        """Take ``validator_id``'s answer to the change; the certificate once there is one."""
        validator = bytes(validator_id)
        try:
            self._committee.member(validator)
        except UnknownValidator as exc:
            self._invalid[validator] = str(exc)
            return self._certificate
        kind = response.WhichOneof("body")
        if kind == "vote":
            self._take_vote(validator, response.vote)
        elif kind == "refusal":
            self._take_refusal(validator, response.refusal)
        else:
            self._invalid[validator] = f"answered a change with {kind or 'nothing'}"
        return self._certificate

    def _take_vote(self, validator: bytes, vote: ledger_pb2.Vote) -> None:
        try:
            ballot = self._verifier.verify(vote, self._committee)
        except InvalidVote as exc:
            if validator not in self._votes:
                self._invalid[validator] = str(exc)
            return
        if ballot.validator_id != validator:
            if validator not in self._votes:
                self._invalid[validator] = f"a vote of {ballot.validator_id.hex()}"
            return
        if ballot.slot != self._expected.slot:
            if validator not in self._votes:
                self._invalid[validator] = "a vote for another asset, version or epoch"
            return
        if ballot.change_digest != self._expected.change_digest:
            self._others.setdefault(validator, vote)
            if validator in self._votes:
                self._record_equivocation(validator, self._votes[validator], vote)
            return
        if validator in self._votes:
            return
        self._votes[validator] = vote
        self._invalid.pop(validator, None)
        self._refusals.pop(validator, None)
        other = self._others.get(validator)
        if other is not None:
            self._record_equivocation(validator, vote, other)
        if self._certificate is None and self._committee.is_quorum(self._votes):
            self._certificate = ledger_pb2.StateCertificate(
                change=self._change, votes=[self._votes[v] for v in sorted(self._votes)]
            )

    def _record_equivocation(
        self, validator: bytes, ours: ledger_pb2.Vote, other: ledger_pb2.Vote
    ) -> None:
        if validator not in self._evidence:
            self._evidence[validator] = ledger_pb2.Evidence(
                equivocation=ledger_pb2.Equivocation(first=ours, second=other)
            )

    def _take_refusal(self, validator: bytes, refusal: ledger_pb2.Refusal) -> None:
        try:
            reason = LedgerRefusal(refusal.reason)
        except ValueError:
            if validator not in self._votes:
                self._invalid[validator] = f"a refusal with the unknown reason {refusal.reason}"
            return
        if validator not in self._votes:
            self._refusals[validator] = ChangeRefused(
                reason,
                refusal.detail,
                locked_vote=refusal.locked_vote if refusal.HasField("locked_vote") else None,
                validation=refusal.validation if refusal.HasField("validation") else None,
            )
        if (
            reason is LedgerRefusal.CONFLICT
            and refusal.HasField("locked_vote")
            and refusal.locked_vote.epoch == self._expected.epoch
        ):
            # A lock of this epoch: the vote counts (for the change) or proves an
            # equivocation. A lock of an earlier epoch is the refusal's reason only: a vote of
            # another committee, which no certificate of this epoch can use.
            self._take_vote(validator, refusal.locked_vote)
