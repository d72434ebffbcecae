"""The ``ConsensusLayer`` gRPC service: validating the four proofs of an asset state.

The service checks bundles with :func:`trustchain.consensus.proofs.bundle.validate_four_proofs`
against what the node trusts and the states it has recorded. It listens on loopback by default.
Messages are the ``hypermesh.v1`` protobuf messages of ``consensus.proto`` and
``common.proto``; a request is at most :data:`MAX_REQUEST_BYTES` (gRPC's receive limit) and
its ``proofs`` at most :data:`~trustchain.consensus.proofs.bundle.MAX_BUNDLE_BYTES` encoded.

RPCs:

* ``ValidateFourProofs`` checks ``request.proofs`` (a ``hypermesh.v1.FourProof``) and answers
  with its ``ValidationResult``. A bundle whose proofs are wrong is an *answer*
  (``VERDICT_REJECTED`` with every failed check, status ``OK``), not an error. Before validating,
  the service takes a fresh :class:`~trustchain.consensus.proofs.bundle.ValidationContext` from
  its ``context_factory`` (so trust anchors, CRLs and stake balances can change between
  requests) and asks its ``previous_state`` lookup for the recorded state the asset's next
  version must build on (the asset id is ``proofs.stake.asset_id.id``; a bundle naming no
  32-byte asset is validated with no previous state and rejected for that by the validator).
  The validation time is the context's ``at`` (``None``: now). Unknown fields, anywhere in the
  bundle, are dropped (from a copy) before validation, so they cannot change a verdict.
* ``RecordAssetState`` records ``request.change`` (an owner-signed
  ``hypermesh.v1.AssetStateChange``) through the servicer's :class:`StateRecorder`; without
  one (``recorder=None``) it is ``UNIMPLEMENTED``. The change (unknown fields dropped from a
  copy, as above) is first validated exactly like ``ValidateFourProofs`` validates its
  ``proofs``: a bundle that does not validate is answered ``VERDICT_REJECTED`` with every
  failed check, ``state`` unset, and the recorder is not called. A valid one goes to the
  recorder (on a node: the ledger client running the quorum protocol against the committee),
  whose ``ValidationResult`` and ``StateHash`` (where this node's log recorded the state) are
  the answer.
* ``CrossChainSync`` is ``UNIMPLEMENTED``: cross-chain (LayerZero V2 style) messaging is not
  scheduled in phase 1; a later phase's issue brings it.

Recorded states: a validator node looks them up in its ledger. A node without a ledger has
none, and its lookup is :func:`no_recorded_states`. With it only version 0 of an asset
validates over gRPC: a version ``n > 0`` is answered ``VERDICT_REJECTED`` with a ``COMBINED`` /
``CHALLENGE_MISMATCH`` rejection ("does not follow the recorded state").

Status codes (the server keeps serving after every one of them):

* ``INVALID_ARGUMENT``: request bytes that are not a request message (the service decodes
  requests itself, see :func:`add_to_server`, so they never become gRPC's ``INTERNAL``
  "Exception deserializing request!"); no ``proofs`` (``RecordAssetState``: no ``change``, or
  a change without proofs); proofs whose encoding (unknown fields included: what was sent)
  exceeds :data:`~trustchain.consensus.proofs.bundle.MAX_BUNDLE_BYTES`; a ``ValueError`` the
  validator raises over the request's content; a change the committee refused as the caller's
  fault (:class:`~trustchain.errors.ChangeRefused` with ``MALFORMED``, ``TOO_LARGE`` or
  ``INVALID_OWNER_SIGNATURE``).
* ``FAILED_PRECONDITION``: a change the committee refused for the ledger's state
  (:class:`~trustchain.errors.ChangeRefused` with ``CONFLICT``, ``WRONG_VERSION``,
  ``WRONG_EPOCH``, ``INVALID_CERTIFICATE``); the detail is ``"<REASON>: <detail>"``.
* ``RESOURCE_EXHAUSTED``: a request larger than :data:`MAX_REQUEST_BYTES`, refused by gRPC
  itself before the service sees it (grpcio 1.85: ``"SERVER: Received message larger than max
  (N vs. M)"``).
* ``UNAVAILABLE``: the stake registry cannot be read (closed, locked, I/O failure); the
  recorder could not get the change recorded (another :class:`~trustchain.errors.LedgerError`:
  no quorum reachable, for instance).
* ``INTERNAL``: the server's own ``context_factory``, ``previous_state`` or ``recorder``
  returned something unusable (:class:`ConsensusLayerMisconfigured`), a ledger that fails its
  checks (:class:`~trustchain.errors.LedgerCorrupted`), or another TrustChain error (see
  :data:`STATUS_OF`).
* ``UNIMPLEMENTED``: ``RecordAssetState`` without a recorder, and ``CrossChainSync``.

Threads: the servicer keeps no mutable state; gRPC worker threads validate in parallel. The
stake registry shares one SQLite connection opened with ``check_same_thread=False`` behind its
own lock (:class:`trustchain.sqlite_db.ConnectionOwner`), and a
:class:`~trustchain.ca.trust.TrustStore` guards itself with a lock, so one context may be
shared by every thread. ``context_factory``, ``previous_state`` and the recorder are called
from worker threads and must be thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Final, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from hypermesh_interfaces.v1 import common_pb2, consensus_pb2, consensus_pb2_grpc, ledger_pb2
from trustchain import errors
from trustchain.consensus.proofs.bundle import (
    MAX_BUNDLE_BYTES,
    PreviousState,
    ValidationContext,
    ValidationResult,
    validate_four_proofs,
)
from trustchain.consensus.proofs.challenges import ASSET_ID_SIZE, HASH_SIZE
from trustchain.consensus.proofs.stake import StakeRegistryError
from trustchain.grpc_status import Abort, abort_on_errors

__all__ = [
    "LEDGER_ISSUE",
    "MAX_REQUEST_BYTES",
    "SERVICE_NAME",
    "STATUS_OF",
    "ConsensusLayerMisconfigured",
    "ConsensusLayerServicer",
    "StateRecorder",
    "add_to_server",
    "no_recorded_states",
    "serve",
]

#: The issue that brings the ledger, which records asset states (``RecordAssetState``).
LEDGER_ISSUE: Final = 6
#: The largest request gRPC lets through (its receive limit): a bundle of
#: ``MAX_BUNDLE_BYTES`` plus room for the request's own framing and for oversized bundles to
#: reach the service, which answers them ``INVALID_ARGUMENT`` instead of a transport error.
MAX_REQUEST_BYTES: Final = MAX_BUNDLE_BYTES + (64 << 10)
#: The gRPC service name, ``hypermesh.v1.ConsensusLayer``.
SERVICE_NAME: Final = consensus_pb2.DESCRIPTOR.services_by_name["ConsensusLayer"].full_name
_VERSION_LIMIT: Final = 1 << 64


class ConsensusLayerMisconfigured(errors.TrustChainError):
    """The servicer's ``context_factory`` or ``previous_state`` returned something unusable (a
    server-side fault, not the caller's)."""


#: gRPC status for each TrustChain error; the first matching class wins, others are INTERNAL.
#: (:class:`~trustchain.errors.ChangeRefused` is mapped by its reason first: see
#: :data:`REFUSAL_STATUS`.)
STATUS_OF: tuple[tuple[type[errors.TrustChainError], grpc.StatusCode], ...] = (
    (ConsensusLayerMisconfigured, grpc.StatusCode.INTERNAL),
    (StakeRegistryError, grpc.StatusCode.UNAVAILABLE),
    (errors.LedgerCorrupted, grpc.StatusCode.INTERNAL),
    (errors.LedgerError, grpc.StatusCode.UNAVAILABLE),
)
#: gRPC status of a change the committee refused, by refusal reason: the caller's fault
#: (``INVALID_ARGUMENT``) or the ledger's state (``FAILED_PRECONDITION``).
REFUSAL_STATUS: dict[errors.LedgerRefusal, grpc.StatusCode] = {
    errors.LedgerRefusal.MALFORMED: grpc.StatusCode.INVALID_ARGUMENT,
    errors.LedgerRefusal.TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    errors.LedgerRefusal.INVALID_OWNER_SIGNATURE: grpc.StatusCode.INVALID_ARGUMENT,
    errors.LedgerRefusal.INVALID_PROOFS: grpc.StatusCode.FAILED_PRECONDITION,
    errors.LedgerRefusal.CONFLICT: grpc.StatusCode.FAILED_PRECONDITION,
    errors.LedgerRefusal.WRONG_VERSION: grpc.StatusCode.FAILED_PRECONDITION,
    errors.LedgerRefusal.WRONG_EPOCH: grpc.StatusCode.FAILED_PRECONDITION,
    errors.LedgerRefusal.INVALID_CERTIFICATE: grpc.StatusCode.FAILED_PRECONDITION,
}


class StateRecorder(Protocol):
    """What ``RecordAssetState`` records with (the node wires in the ledger client; trustchain
    does not run the network itself).

    :meth:`record` gets a change whose proofs this node has validated and returns the
    ``hypermesh.v1.ValidationResult`` the committee's outcome amounts to, with the
    ``hypermesh.v1.StateHash`` where this node recorded the state: ``(VALID result, state)``
    once recorded, or ``(REJECTED result, None)`` when the committee found the proofs invalid.
    It raises :class:`~trustchain.errors.ChangeRefused` when the committee refused the change
    for another reason, and another :class:`~trustchain.errors.LedgerError` when it could not
    get the change recorded. Called from gRPC worker threads: it must be thread-safe.
    """

    def record(
        self, change: ledger_pb2.AssetStateChange
    ) -> tuple[common_pb2.ValidationResult, common_pb2.StateHash | None]: ...


def _refusal_status(error: errors.TrustChainError) -> tuple[grpc.StatusCode, str] | None:
    if not isinstance(error, errors.ChangeRefused):
        return None
    code = REFUSAL_STATUS.get(error.reason, grpc.StatusCode.FAILED_PRECONDITION)
    return code, f"{error.reason.name}: {error.detail}"


@contextmanager
def _handle(context: grpc.ServicerContext) -> Iterator[None]:
    """Turn :class:`Abort`, refusals and TrustChain errors into a gRPC status on ``context``."""
    with abort_on_errors(context, STATUS_OF, special=_refusal_status):
        yield


def no_recorded_states(asset_id: bytes) -> PreviousState | None:
    """The state lookup of a node without a ledger: no asset has a recorded state, so every
    bundle is checked as version 0 (see the module docs)."""
    return None


def _checked_context(context: object) -> ValidationContext:
    if not isinstance(context, ValidationContext):
        raise ConsensusLayerMisconfigured(
            f"the context factory returned {type(context).__name__}, not a ValidationContext"
        )
    if context.at is not None and context.at.utcoffset() is None:
        raise ConsensusLayerMisconfigured("the validation context's time is not timezone-aware")
    return context


def _checked_previous(previous: object, asset: bytes) -> PreviousState | None:
    if previous is None:
        return None
    if not isinstance(previous, PreviousState):
        raise ConsensusLayerMisconfigured(
            f"the state lookup returned {type(previous).__name__} for asset {asset.hex()}, "
            "not a PreviousState"
        )
    if (
        type(previous.version) is not int
        or not 0 <= previous.version < _VERSION_LIMIT
        or not isinstance(previous.state_hash, bytes)
        or len(previous.state_hash) != HASH_SIZE
        or not isinstance(previous.poh_end, bytes)
        or len(previous.poh_end) != HASH_SIZE
    ):
        raise ConsensusLayerMisconfigured(
            f"the recorded state of asset {asset.hex()} is unusable: it needs a version below "
            f"2**64 and a {HASH_SIZE}-byte state hash and PoH end"
        )
    return previous


def _checked_record(
    outcome: object,
) -> tuple[common_pb2.ValidationResult, common_pb2.StateHash | None]:
    """The recorder's outcome if it is a (VALID result, StateHash) or (REJECTED result, None)
    pair; :class:`ConsensusLayerMisconfigured` otherwise."""
    if not isinstance(outcome, tuple) or len(outcome) != 2:
        raise ConsensusLayerMisconfigured("the state recorder did not return (result, state)")
    result, state = outcome
    if not isinstance(result, common_pb2.ValidationResult):
        raise ConsensusLayerMisconfigured(
            f"the state recorder returned {type(result).__name__}, not a ValidationResult"
        )
    if result.verdict == common_pb2.VERDICT_VALID:
        if not isinstance(state, common_pb2.StateHash) or len(state.log_root) != HASH_SIZE:
            raise ConsensusLayerMisconfigured(
                "the state recorder reported a valid change without the StateHash it recorded"
            )
        return result, state
    if result.verdict != common_pb2.VERDICT_REJECTED or state is not None:
        raise ConsensusLayerMisconfigured(
            "the state recorder returned a state for a change that is not valid"
        )
    return result, None


class ConsensusLayerServicer(consensus_pb2_grpc.ConsensusLayerServicer):
    """``ConsensusLayer`` over a validation context and a recorded-state lookup (see the module
    docs). Thread-safe if ``context_factory`` and ``previous_state`` are.

    ``context_factory`` is called once per request; ``previous_state`` maps an asset id (32
    bytes) to the recorded state its next version builds on, ``None`` if none is recorded
    (:func:`no_recorded_states` for a node without a ledger); ``recorder`` records valid
    changes for ``RecordAssetState`` (``None``: ``UNIMPLEMENTED``).
    """

    def __init__(
        self,
        context_factory: Callable[[], ValidationContext],
        previous_state: Callable[[bytes], PreviousState | None],
        recorder: StateRecorder | None = None,
    ) -> None:
        self._context_factory = context_factory
        self._previous_state = previous_state
        self._recorder = recorder

    def _validate(
        self,
        holder: consensus_pb2.ValidateFourProofsRequest | ledger_pb2.AssetStateChange,
        method: str,
    ) -> ValidationResult:
        """The validation of ``holder.proofs`` (a ``ValidateFourProofs`` request, or a change
        to record) for ``method``. Raises :class:`Abort` for missing or oversized proofs or
        ones the validator refuses with a ``ValueError``; TrustChain errors of the context
        factory, the state lookup or the stake registry pass through (mapped by
        :data:`STATUS_OF`)."""
        if not holder.HasField("proofs"):
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method} needs proofs")
        proofs = holder.proofs
        size = proofs.ByteSize()
        if size > MAX_BUNDLE_BYTES:
            raise Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"proofs of {size} bytes exceed the {MAX_BUNDLE_BYTES}-byte limit",
            )
        bundle = common_pb2.FourProof()
        bundle.CopyFrom(proofs)
        bundle.DiscardUnknownFields()
        context = _checked_context(self._context_factory())
        asset = bundle.stake.asset_id.id
        previous = (
            _checked_previous(self._previous_state(asset), asset)
            if len(asset) == ASSET_ID_SIZE
            else None
        )
        try:
            return validate_four_proofs(bundle, previous=previous, context=context)
        except ValueError as exc:
            raise Abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"the proofs cannot be validated: {exc}"
            ) from exc

    def ValidateFourProofs(
        self, request: consensus_pb2.ValidateFourProofsRequest, context: grpc.ServicerContext
    ) -> consensus_pb2.ValidateFourProofsResponse:
        """The bundle's ``ValidationResult`` (status codes in the module docs)."""
        with _handle(context):
            result = self._validate(request, "ValidateFourProofs")
            return consensus_pb2.ValidateFourProofsResponse(result=result.to_message())
        raise AssertionError("unreachable: _handle aborts")  # pragma: no cover

    def RecordAssetState(
        self, request: consensus_pb2.RecordAssetStateRequest, context: grpc.ServicerContext
    ) -> consensus_pb2.RecordAssetStateResponse:
        """Validate ``request.change`` and record it with the recorder (see the module docs);
        ``UNIMPLEMENTED`` without a recorder."""
        recorder = self._recorder
        if recorder is None:
            context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                "RecordAssetState is not implemented by this server: it has no ledger to "
                f"record asset states with (issue {LEDGER_ISSUE})",
            )
        with _handle(context):
            if not request.HasField("change"):
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "RecordAssetState needs a change")
            change = ledger_pb2.AssetStateChange()
            change.CopyFrom(request.change)
            result = self._validate(change, "RecordAssetState")
            if not result.valid:
                return consensus_pb2.RecordAssetStateResponse(result=result.to_message())
            change.DiscardUnknownFields()
            recorded, state = _checked_record(recorder.record(change))
            response = consensus_pb2.RecordAssetStateResponse(result=recorded)
            if state is not None:
                response.state.CopyFrom(state)
            return response
        raise AssertionError("unreachable: _handle aborts")  # pragma: no cover

    def CrossChainSync(
        self, request: consensus_pb2.CrossChainSyncRequest, context: grpc.ServicerContext
    ) -> consensus_pb2.CrossChainSyncResponse:
        """``UNIMPLEMENTED``: cross-chain messaging is not scheduled in phase 1."""
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "CrossChainSync is not implemented yet: cross-chain (LayerZero V2) messaging is "
            "not scheduled in phase 1; an issue of a later phase brings it",
        )


_Request = TypeVar("_Request", bound=Message)
_Response = TypeVar("_Response", bound=Message)


def _raw_handler(
    method: Callable[[_Request, grpc.ServicerContext], _Response],
    request_type: type[_Request],
) -> grpc.RpcMethodHandler[bytes, bytes]:
    """A unary handler that receives the raw request bytes and decodes them itself:
    ``INVALID_ARGUMENT`` for bytes that are not a ``request_type`` message."""
    name = request_type.DESCRIPTOR.full_name

    def behaviour(data: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            request = request_type.FromString(data)
        except DecodeError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a {name}: {exc}")
        reply: bytes = method(request, context).SerializeToString()
        return reply

    return grpc.unary_unary_rpc_method_handler(behaviour)


def add_to_server(servicer: ConsensusLayerServicer, server: grpc.Server) -> None:
    """Serve ``servicer``'s RPCs on ``server`` (use this, not the generated
    ``add_ConsensusLayerServicer_to_server``: requests are decoded by the service, so bytes
    that do not decode are ``INVALID_ARGUMENT`` rather than gRPC's ``INTERNAL``). The server's
    receive limit should be :data:`MAX_REQUEST_BYTES` (:func:`serve` sets it)."""
    handlers = {
        "ValidateFourProofs": _raw_handler(
            servicer.ValidateFourProofs, consensus_pb2.ValidateFourProofsRequest
        ),
        "RecordAssetState": _raw_handler(
            servicer.RecordAssetState, consensus_pb2.RecordAssetStateRequest
        ),
        "CrossChainSync": _raw_handler(
            servicer.CrossChainSync, consensus_pb2.CrossChainSyncRequest
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


def serve(
    servicer: ConsensusLayerServicer, address: str = "127.0.0.1:0", *, workers: int = 4
) -> tuple[grpc.Server, int]:
    """Start a gRPC server for ``servicer`` on ``address`` (receive and send limits
    :data:`MAX_REQUEST_BYTES`); returns it and the bound port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        options=[
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.max_send_message_length", MAX_REQUEST_BYTES),
        ],
    )
    add_to_server(servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind the ConsensusLayer server to {address}")
    server.start()
    return server, port
