"""A Byzantine validator of a local federation: a :class:`ValidatorNode` that misbehaves.

``python byzantine.py --home H --federation F --behaviour B`` runs, in its own process, the
validator whose home is ``H`` in the local federation ``F`` -- its committee address, its key,
its node certificate and its ledger ``H/ledger.db`` -- like ``python -m
hypermesh.node.validator`` does: it prints ``ready <port>`` (one line, flushed) once listening,
and SIGTERM or SIGINT stops it (exit 0). But it lies, as behaviour ``B`` says:

* ``forged-signatures`` (:class:`ForgingCore`): a real
  :class:`~trustchain.consensus.quorum.ValidatorCore` checks, locks and applies like an honest
  validator, but every vote it answers with (a ``vote``, or the ``locked_vote`` of a
  ``CONFLICT`` refusal) is re-signed alone -- right ballot, no batch -- with a hybrid key
  generated at start that is not the validator's: a well-formed signature envelope that does
  not verify under the validator's key.
* ``equivocation`` (:class:`EquivocatingCore`): every change it is asked about gets its
  validly signed vote at once, unchecked and unlocked, so two different changes of one
  (asset, version) both get one; every other request (certificates, catch-up reads, asset
  states, evidence) goes to a real core over its ledger.
* ``garbage`` (:class:`GarbageNode`): every request, whatever it is, is answered with bytes
  that are no ``LedgerResponse``: :data:`GARBAGE_PREFIX` (eleven 0xff bytes, a varint longer
  than protobuf allows) followed by SHA-256 of the request's bytes (43 bytes in all).

``test_ledger_validators.py`` runs it by path and imports :func:`garbage_for` and
:data:`GARBAGE_PREFIX` (``from .byzantine import ...``, as the netns tests import ``netns``);
the cores wrap any :class:`~hypermesh.node.validator.LedgerCore` and work in-process too.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from hypermesh.node.validator import LedgerCore, ValidatorNode
from hypermesh_interfaces.v1 import ledger_pb2
from stoq.connection import Stream
from stoq.errors import StoqError
from trustchain.consensus.committee import Committee
from trustchain.consensus.federation import LocalFederation
from trustchain.consensus.proofs.presets import LOCALHOST_TESTING
from trustchain.consensus.votes import Ballot, sign_ballots
from trustchain.crypto.signatures import SigningKey
from trustchain.errors import TrustChainError

__all__ = [
    "BEHAVIOURS",
    "GARBAGE_PREFIX",
    "EquivocatingCore",
    "ForgingCore",
    "GarbageNode",
    "garbage_for",
    "main",
]

#: The behaviours ``--behaviour`` takes.
BEHAVIOURS: Final = ("forged-signatures", "equivocation", "garbage")
#: How every garbage answer starts: a varint of eleven bytes, which no protobuf parser takes.
GARBAGE_PREFIX: Final = b"\xff" * 11


def garbage_for(request: bytes) -> bytes:
    """The garbage answer to ``request``: :data:`GARBAGE_PREFIX` || SHA-256(request)."""
    return GARBAGE_PREFIX + hashlib.sha256(request).digest()


class ForgingCore:
    """A real core whose votes carry signatures by ``forger`` instead of the validator's key
    (see the module docs)."""

    def __init__(self, inner: LedgerCore, forger: SigningKey) -> None:
        self._inner = inner
        self._forger = forger

    @property
    def committee(self) -> Committee:
        return self._inner.committee

    @property
    def needs_sync(self) -> bool:
        return self._inner.needs_sync

    def sync_done(self) -> None:
        self._inner.sync_done()

    def handle(
        self, requests: Sequence[ledger_pb2.LedgerRequest]
    ) -> list[ledger_pb2.LedgerResponse]:
        responses = self._inner.handle(requests)
        for response in responses:
            kind = response.WhichOneof("body")
            if kind == "vote":
                self._forge(response.vote)
            elif kind == "refusal" and response.refusal.HasField("locked_vote"):
                self._forge(response.refusal.locked_vote)
        return responses

    def _forge(self, vote: ledger_pb2.Vote) -> None:
        vote.ClearField("batch")
        vote.signature = self._forger.sign(Ballot.of(vote).signing_bytes()).to_bytes()


class EquivocatingCore:
    """Votes for every well-formed change of the current epoch without checking or locking
    it (one batch signature per call); everything else goes to ``inner`` (see the module
    docs). ``sign`` makes the validator's own signature envelope."""

    def __init__(
        self, inner: LedgerCore, validator_id: bytes, sign: Callable[[bytes], bytes]
    ) -> None:
        self._inner = inner
        self._validator_id = validator_id
        self._sign = sign

    @property
    def committee(self) -> Committee:
        return self._inner.committee

    @property
    def needs_sync(self) -> bool:
        return self._inner.needs_sync

    def sync_done(self) -> None:
        self._inner.sync_done()

    def handle(
        self, requests: Sequence[ledger_pb2.LedgerRequest]
    ) -> list[ledger_pb2.LedgerResponse]:
        ballots: list[tuple[int, Ballot]] = []
        passed_on: list[tuple[int, ledger_pb2.LedgerRequest]] = []
        for position, request in enumerate(requests):
            ballot = self._ballot(request)
            if ballot is None:
                passed_on.append((position, request))
            else:
                ballots.append((position, ballot))
        answers: dict[int, ledger_pb2.LedgerResponse] = {}
        votes = sign_ballots([ballot for _, ballot in ballots], self._sign, batch=True)
        for (position, _), vote in zip(ballots, votes, strict=True):
            answers[position] = ledger_pb2.LedgerResponse(vote=vote)
        if passed_on:
            inner = self._inner.handle([request for _, request in passed_on])
            for (position, _), answer in zip(passed_on, inner, strict=True):
                answers[position] = answer
        return [answers[position] for position in range(len(requests))]

    def _ballot(self, request: ledger_pb2.LedgerRequest) -> Ballot | None:
        """This validator's ballot for a change it will vote for, None for anything else."""
        if request.WhichOneof("body") != "change" or not request.change.HasField("proofs"):
            return None
        try:
            ballot = Ballot.for_change(request.change, self._validator_id)
        except ValueError:
            return None  # malformed: the real core refuses it
        if ballot.epoch != self.committee.epoch or ballot.asset_id == bytes(32):
            return None
        return ballot


class GarbageNode(ValidatorNode):
    """A validator node that answers every stream with :func:`garbage_for` its request."""

    async def _serve_stream(self, stream: Stream) -> None:
        try:
            request = await stream.receive()
            await stream.send(garbage_for(request), end_stream=True)
        except StoqError:
            return  # the peer went away; nothing to answer


def byzantine_node(home: Path, federation: LocalFederation, behaviour: str) -> ValidatorNode:
    """The validator of ``federation`` at ``home``, misbehaving as ``behaviour`` says (its
    proofs checked under ``localhost_testing`` where a real core checks them)."""
    if behaviour == "garbage":
        return GarbageNode.open(home, federation, preset=LOCALHOST_TESTING)
    node = ValidatorNode.open(home, federation, preset=LOCALHOST_TESTING)
    if behaviour == "forged-signatures":
        node.core = ForgingCore(node.core, SigningKey.generate())
    elif behaviour == "equivocation":
        signing_key = node.config.identity.signing_key

        def sign(message: bytes) -> bytes:
            return signing_key.sign(message).to_bytes()

        node.core = EquivocatingCore(node.core, node.validator_id, sign)
    else:
        raise ValueError(f"unknown behaviour {behaviour!r}; one of {', '.join(BEHAVIOURS)}")
    return node


async def _run(args: argparse.Namespace) -> int:
    with LocalFederation.open(args.federation) as federation:
        node = byzantine_node(args.home, federation, args.behaviour)
        try:
            port = await node.start()
            print(f"ready {port}", flush=True)
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, node.request_stop)
            await node.wait_stopped()
        finally:
            await node.stop()
    if node.failure is not None:
        print(f"byzantine validator: {node.failure}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command (see the module docs); its exit code."""
    parser = argparse.ArgumentParser(description="Run a Byzantine validator of a federation.")
    parser.add_argument("--home", required=True, type=Path, help="the validator's home")
    parser.add_argument("--federation", required=True, type=Path, help="the federation")
    parser.add_argument("--behaviour", required=True, choices=BEHAVIOURS, help="how it lies")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except (TrustChainError, StoqError, OSError) as exc:
        print(f"byzantine validator: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
