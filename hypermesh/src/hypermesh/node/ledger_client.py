"""The owner's side of the quorum-certified ledger: getting a change certified and applied.

An owner records the next version of an asset in two rounds over STOQ (FastPay / Sui Lutris
owned objects, see ``hypermesh/v1/ledger.proto``):

1. **votes**: the owner-signed ``AssetStateChange`` goes to every member of the committee at
   once; each answer (a ``Vote`` or a ``Refusal``) is fed to a
   :class:`~trustchain.consensus.quorum.VoteCollector`, which verifies the votes and, once they
   carry more than two thirds of the stake, makes the ``StateCertificate``. The round ends as
   soon as the certificate exists, or when no quorum can come any more
   (:class:`NotCertified`, naming every refusal, unreachable validator and invalid answer).
2. **apply**: the certificate goes to every member at once; each applies it and answers
   ``applied`` with the ``StateHash`` where its log recorded the state. The round ends when
   every member has answered or failed, or ``straggler_grace`` seconds after the members that
   applied reach a quorum of stake (a validator that is down is not waited for);
   :class:`NotApplied` if they never reach a quorum. A ``StateHash`` is accepted only if its
   ``certificate_digest`` is SHA-256 over the certified state record
   (:func:`trustchain.consensus.ledger.state_record_bytes`) and its log root 32 bytes.

Wire format (:func:`exchange`): each request is one ``hypermesh.v1.LedgerRequest``, encoded,
sent as the only message of a new bidirectional STOQ stream (the client ends its side with
it); the validator answers with one encoded ``hypermesh.v1.LedgerResponse`` and ends the
stream. Connections come from one :class:`~stoq.pool.ConnectionPool` per client: one per
validator, dialled at the member's address with the member's name as the TLS server name, and
accepted only if the authenticated peer's key id is the member's validator id.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType, TracebackType
from typing import Final

from google.protobuf.message import DecodeError

from hypermesh_interfaces.v1 import common_pb2, ledger_pb2
from stoq.config import StoqConfig
from stoq.errors import StoqError
from stoq.pool import ConnectionPool
from trustchain.consensus.committee import Committee, Member
from trustchain.consensus.ledger import state_record_bytes
from trustchain.consensus.quorum import VoteCollector
from trustchain.consensus.votes import Ballot, VoteVerifier, change_digest
from trustchain.errors import ChangeRefused, LedgerError, LedgerRefusal

__all__ = [
    "ANSWER_TIMEOUT",
    "DEFAULT_STRAGGLER_GRACE",
    "DEFAULT_TIMEOUT",
    "NO_ANSWER_CODE",
    "ExchangeFailed",
    "InvalidAnswer",
    "LedgerClient",
    "NotApplied",
    "NotCertified",
    "RecordFailed",
    "RecordOutcome",
    "ValidatorUnreachable",
    "change_refused",
    "exchange",
]

log = logging.getLogger(__name__)

#: Seconds :meth:`LedgerClient.record` takes at most, both rounds together.
DEFAULT_TIMEOUT: Final = 30.0
#: Seconds the apply round still waits for the other members once a quorum applied.
DEFAULT_STRAGGLER_GRACE: Final = 2.0
#: Seconds :func:`exchange` waits for one answer before it drops the connection.
ANSWER_TIMEOUT: Final = 10.0
#: The application error code a connection is closed with when its peer stopped answering.
NO_ANSWER_CODE: Final = 0x4C01
_ZERO_ID: Final = bytes(32)
_HASH: Final = 32


class ExchangeFailed(LedgerError):
    """One request to one validator got no usable answer. ``validator_id`` names it."""

    def __init__(self, validator_id: bytes, detail: str) -> None:
        super().__init__(detail)
        self.validator_id = validator_id
        self.detail = detail


class ValidatorUnreachable(ExchangeFailed):
    """The validator could not be reached, or the connection or stream failed before its
    answer arrived (the STOQ error is chained)."""


class InvalidAnswer(ExchangeFailed):
    """The validator's answer does not decode as a ``LedgerResponse``, or is not an answer to
    what was asked (a vote for another change, an ``applied`` for another state...)."""


class RecordFailed(LedgerError):
    """A change could not be recorded. Every validator that did not help is named:
    ``refusals`` (validator id -> :class:`~trustchain.errors.ChangeRefused`, what it answered),
    ``unreachable`` (validator id -> why there was no answer), ``invalid`` (validator id -> why
    its answer was not usable); ``evidence`` holds any equivocation seen."""

    def __init__(
        self,
        summary: str,
        *,
        refusals: Mapping[bytes, ChangeRefused],
        unreachable: Mapping[bytes, str],
        invalid: Mapping[bytes, str],
        evidence: tuple[ledger_pb2.Evidence, ...] = (),
    ) -> None:
        parts = [summary]
        parts += [
            f"{v.hex()[:16]} refused ({r.reason.name}): {r.detail}" for v, r in refusals.items()
        ]
        parts += [f"{v.hex()[:16]} unreachable: {why}" for v, why in unreachable.items()]
        parts += [f"{v.hex()[:16]} answered unusably: {why}" for v, why in invalid.items()]
        super().__init__("; ".join(parts))
        self.summary = summary
        self.refusals: Mapping[bytes, ChangeRefused] = MappingProxyType(dict(refusals))
        self.unreachable: Mapping[bytes, str] = MappingProxyType(dict(unreachable))
        self.invalid: Mapping[bytes, str] = MappingProxyType(dict(invalid))
        self.evidence = evidence


class NotCertified(RecordFailed):
    """The votes round ended without a quorum of votes for the change."""


class NotApplied(RecordFailed):
    """A certificate was made, but fewer than a quorum of the committee's stake applied it
    before the timeout. ``certificate`` is it: sending it again later is safe (applying is
    idempotent)."""

    def __init__(
        self,
        summary: str,
        *,
        certificate: ledger_pb2.StateCertificate,
        refusals: Mapping[bytes, ChangeRefused],
        unreachable: Mapping[bytes, str],
        invalid: Mapping[bytes, str],
        evidence: tuple[ledger_pb2.Evidence, ...] = (),
    ) -> None:
        super().__init__(
            summary, refusals=refusals, unreachable=unreachable, invalid=invalid, evidence=evidence
        )
        self.certificate = certificate


@dataclass(frozen=True)
class RecordOutcome:
    """A recorded change.

    * ``certificate``: the quorum certificate of the change;
    * ``states``: validator id -> the ``StateHash`` where that validator's log recorded it (at
      least a quorum of stake);
    * ``evidence``: equivocations seen among the votes;
    * ``refusals``: validator id -> why it refused to vote (e.g. a ``CONFLICT``);
    * ``not_applied``: validator id -> why it did not report the certificate applied (its
      refusal, no answer in time, an unusable answer);
    * ``unreachable`` / ``invalid``: validator id -> why it gave no answer to the change, or an
      unusable one (an undecodable answer, a vote that does not verify: a validator to watch),
      among the answers that came before the certificate formed (later ones are not awaited).
    """

    certificate: ledger_pb2.StateCertificate
    states: Mapping[bytes, common_pb2.StateHash]
    evidence: tuple[ledger_pb2.Evidence, ...]
    refusals: Mapping[bytes, ChangeRefused] = field(default_factory=lambda: MappingProxyType({}))
    not_applied: Mapping[bytes, str] = field(default_factory=lambda: MappingProxyType({}))
    unreachable: Mapping[bytes, str] = field(default_factory=lambda: MappingProxyType({}))
    invalid: Mapping[bytes, str] = field(default_factory=lambda: MappingProxyType({}))


def change_refused(refusal: ledger_pb2.Refusal) -> ChangeRefused:
    """The :class:`~trustchain.errors.ChangeRefused` a ``Refusal`` message states;
    :class:`ValueError` for a reason outside ``LedgerRefusal``."""
    try:
        reason = LedgerRefusal(refusal.reason)
    except ValueError:
        raise ValueError(f"unknown refusal reason {refusal.reason}") from None
    return ChangeRefused(
        reason,
        refusal.detail,
        locked_vote=refusal.locked_vote if refusal.HasField("locked_vote") else None,
        validation=refusal.validation if refusal.HasField("validation") else None,
    )


async def exchange(
    pool: ConnectionPool,
    member: Member,
    request: ledger_pb2.LedgerRequest,
    *,
    answer_timeout: float = ANSWER_TIMEOUT,
) -> ledger_pb2.LedgerResponse:
    """Ask ``member`` ``request`` on a new stream of ``pool``'s connection to it (see the
    module docs for the wire format). :class:`ValidatorUnreachable` for transport failures,
    :class:`InvalidAnswer` for an answer that is not a ``LedgerResponse``.

    No answer within ``answer_timeout`` seconds: the connection is closed (so the pool dials
    afresh next time) and :class:`ValidatorUnreachable` raised. A peer that restarted drops
    packets of connections it no longer knows (STOQ sends no stateless reset yet), so without
    this a pooled connection to it would stay silent until QUIC's idle timeout."""
    vid = member.validator_id
    try:
        stream = await pool.open_stream(
            member.host, member.port, server_name=member.name, peer_id=vid
        )
    except (StoqError, OSError) as exc:
        raise ValidatorUnreachable(vid, f"{member.name}: {exc}") from exc
    try:
        await stream.send(request.SerializeToString(), end_stream=True)
        async with asyncio.timeout(answer_timeout):
            data = await stream.receive()
    except TimeoutError as exc:  # before OSError, of which it is a subclass
        stream.reset()
        await stream.connection.close(NO_ANSWER_CODE, "no answer in time")
        raise ValidatorUnreachable(
            vid, f"{member.name}: no answer within {answer_timeout:g} s; connection dropped"
        ) from exc
    except (StoqError, OSError) as exc:
        raise ValidatorUnreachable(vid, f"{member.name}: {exc}") from exc
    except BaseException:
        stream.reset()  # cancelled: abandon the stream so its slot is freed
        raise
    try:
        return ledger_pb2.LedgerResponse.FromString(data)
    except DecodeError as exc:
        raise InvalidAnswer(vid, f"{member.name}: not a LedgerResponse: {exc}") from exc


def _certified_ballot(change: ledger_pb2.AssetStateChange) -> Ballot:
    stake = change.proofs.stake
    return Ballot(
        change.epoch, _ZERO_ID, bytes(stake.asset_id.id), stake.version, change_digest(change)
    )


class LedgerClient:
    """Records changes with the validators of ``committee`` over STOQ, as the node ``config``
    describes (its identity is what the validators authenticate). See the module docs.

    Use it inside one event loop; :meth:`close` (or ``async with``) closes its connections.
    ``straggler_grace``: seconds the apply round waits for the remaining members after a
    quorum applied.
    """

    def __init__(
        self,
        config: StoqConfig,
        committee: Committee,
        *,
        straggler_grace: float = DEFAULT_STRAGGLER_GRACE,
        verifier: VoteVerifier | None = None,
    ) -> None:
        if straggler_grace < 0:
            raise ValueError("straggler_grace must not be negative")
        self.config = config
        self.committee = committee
        self.straggler_grace = straggler_grace
        self._verifier = verifier or VoteVerifier()
        self._pool = ConnectionPool(config)

    async def close(self) -> None:
        """Close the client's connections."""
        await self._pool.close()

    async def __aenter__(self) -> LedgerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def ask(
        self, member: Member, request: ledger_pb2.LedgerRequest
    ) -> ledger_pb2.LedgerResponse:
        """One request to one member (:func:`exchange` on this client's pool)."""
        return await exchange(self._pool, member, request)

    async def record(
        self, change: ledger_pb2.AssetStateChange, *, timeout: float = DEFAULT_TIMEOUT
    ) -> RecordOutcome:
        """Get ``change`` certified by the committee and applied by at least a quorum, within
        ``timeout`` seconds. :class:`NotCertified` or :class:`NotApplied` otherwise (both
        :class:`RecordFailed`); :class:`~trustchain.errors.LedgerError` at once for a change
        no vote can be for (fields of the wrong size, another epoch than the committee's)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        collector = VoteCollector(change, self.committee, self._verifier)
        certificate, unreachable, invalid = await self._collect_votes(change, collector, deadline)
        evidence = tuple(collector.evidence)
        refusals = dict(collector.refusals)
        if certificate is None:
            asset = change.proofs.stake.asset_id.id.hex()
            raise NotCertified(
                f"no quorum of votes for asset {asset} version {change.proofs.stake.version}",
                refusals=refusals,
                unreachable=unreachable,
                invalid={**dict(collector.invalid), **invalid},
                evidence=evidence,
            )
        outcome = await self._apply(certificate, deadline, refusals, evidence)
        return replace(
            outcome,
            unreachable=MappingProxyType(unreachable),
            invalid=MappingProxyType({**dict(collector.invalid), **invalid}),
        )

    async def _collect_votes(
        self,
        change: ledger_pb2.AssetStateChange,
        collector: VoteCollector,
        deadline: float,
    ) -> tuple[ledger_pb2.StateCertificate | None, dict[bytes, str], dict[bytes, str]]:
        """The votes round: the certificate (or None), and who was unreachable or answered
        something unusable."""
        request = ledger_pb2.LedgerRequest(change=change)
        pending = {
            asyncio.ensure_future(self.ask(member, request)): member.validator_id
            for member in self.committee.members
        }
        unreachable: dict[bytes, str] = {}
        invalid: dict[bytes, str] = {}
        loop = asyncio.get_running_loop()
        try:
            while pending and collector.certificate is None and not collector.hopeless:
                done, _ = await asyncio.wait(
                    pending,
                    timeout=max(0.0, deadline - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    for vid in pending.values():
                        unreachable[vid] = "no answer before the timeout"
                    break
                for task in done:
                    vid = pending.pop(task)
                    try:
                        response = task.result()
                    except ValidatorUnreachable as exc:
                        unreachable[vid] = exc.detail
                        continue
                    except InvalidAnswer as exc:
                        invalid[vid] = exc.detail
                        continue
                    collector.add(vid, response)
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        return collector.certificate, unreachable, invalid

    async def _apply(
        self,
        certificate: ledger_pb2.StateCertificate,
        deadline: float,
        refusals: dict[bytes, ChangeRefused],
        evidence: tuple[ledger_pb2.Evidence, ...],
    ) -> RecordOutcome:
        """The apply round (see the module docs)."""
        expected = hashlib.sha256(state_record_bytes(_certified_ballot(certificate.change)))
        request = ledger_pb2.LedgerRequest(certificate=certificate)
        pending = {
            asyncio.ensure_future(self.ask(member, request)): member.validator_id
            for member in self.committee.members
        }
        states: dict[bytes, common_pb2.StateHash] = {}
        not_applied: dict[bytes, str] = {}
        apply_refusals: dict[bytes, ChangeRefused] = {}
        invalid: dict[bytes, str] = {}
        loop = asyncio.get_running_loop()
        until = deadline
        try:
            while pending:
                done, _ = await asyncio.wait(
                    pending,
                    timeout=max(0.0, until - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    break
                for task in done:
                    vid = pending.pop(task)
                    try:
                        response = task.result()
                    except ValidatorUnreachable as exc:
                        not_applied[vid] = exc.detail
                        continue
                    except InvalidAnswer as exc:
                        invalid[vid] = not_applied[vid] = exc.detail
                        continue
                    kind = response.WhichOneof("body")
                    if kind == "applied":
                        state = response.applied
                        if (
                            state.certificate_digest != expected.digest()
                            or len(state.log_root) != _HASH
                            or state.log_index >= state.log_size
                        ):
                            invalid[vid] = not_applied[vid] = (
                                "its StateHash is not of the certified state"
                            )
                        else:
                            states[vid] = state
                    elif kind == "refusal":
                        try:
                            refused = change_refused(response.refusal)
                        except ValueError as exc:
                            invalid[vid] = not_applied[vid] = str(exc)
                            continue
                        apply_refusals[vid] = refused
                        not_applied[vid] = f"refused ({refused.reason.name}): {refused.detail}"
                    else:
                        invalid[vid] = not_applied[vid] = f"answered {kind} to a certificate"
                if self.committee.is_quorum(states):
                    until = min(deadline, loop.time() + self.straggler_grace)
        finally:
            for task in pending:
                not_applied[pending[task]] = "no answer before the timeout"
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if not self.committee.is_quorum(states):
            stake = certificate.change.proofs.stake
            raise NotApplied(
                f"the certificate for asset {stake.asset_id.id.hex()} version {stake.version} "
                f"was applied by validators of stake {self.committee.stake_of(states)}, a "
                f"quorum is {self.committee.quorum_stake}",
                certificate=certificate,
                refusals=apply_refusals,
                unreachable={
                    vid: why
                    for vid, why in not_applied.items()
                    if vid not in apply_refusals and vid not in invalid
                },
                invalid=invalid,
                evidence=evidence,
            )
        return RecordOutcome(
            certificate=certificate,
            states=MappingProxyType(states),
            evidence=evidence,
            refusals=MappingProxyType(refusals),
            not_applied=MappingProxyType(not_applied),
        )
