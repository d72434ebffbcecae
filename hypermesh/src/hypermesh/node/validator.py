"""One validator of the quorum-certified asset ledger: the asyncio shell around its sans-IO core.

``python -m hypermesh.node.validator --home H --federation F`` runs the validator whose home
is ``H`` in the local federation ``F`` (:class:`~trustchain.consensus.federation.LocalFederation`):
it opens its ledger ``H/ledger.db`` with the federation's genesis committee, its key store and
node certificate, listens for STOQ connections on its committee address and prints
``ready <port>`` (one line, flushed) once listening. SIGTERM or SIGINT closes the endpoint and
the ledger and exits 0; a ledger failure exits 1.

What :class:`ValidatorNode` does:

* **Serving.** Every stream of every accepted connection carries one request and its answer:
  one encoded ``hypermesh.v1.LedgerRequest`` from the peer, one encoded ``LedgerResponse``
  back, then the stream ends (:func:`hypermesh.node.ledger_client.exchange` is the other
  side). A request larger than ``max_request_bytes`` (:data:`MAX_REQUEST_BYTES`) is answered
  with a ``Refusal`` ``TOO_LARGE``, one that does not decode or names no request with
  ``MALFORMED``; the node keeps serving. Its STOQ messages may be up to
  ``max_request_bytes + TRANSPORT_MARGIN`` bytes, so an oversized request still reaches it
  (beyond that STOQ itself closes the connection). A ``CertificateBatch`` answer is cut to
  fit that size (the protocol lets a validator send fewer certificates than asked).
* **Batching.** Requests wait in one queue; one worker takes everything queued (at most
  :data:`MAX_BATCH_REQUESTS`) into one ``core.handle`` call, so the votes of concurrent
  changes share one batch signature. The call runs in a one-thread executor (validating proofs
  and signing are CPU-bound) so the event loop keeps accepting while it runs, and only one
  call runs at a time. With ``batch=False`` (``--no-batch``) every request is its own call.
* **Catch-up.** At start and whenever the core reports ``needs_sync`` (it refused a
  certificate for a missing predecessor), the node reads the other members' logs:
  ``CertificatesSince`` from the index it reached with that peer (kept in memory, from 0), in
  pages of :data:`SYNC_PAGE`, each certificate fed back through ``core.handle`` (which
  verifies it), until the peer's log size is reached. Peers are read one after the other in
  committee order, so a validator that falls behind follows one peer's log order (and ends up
  with that peer's log root when it held a prefix of it). A round that leaves ``needs_sync``
  set again is retried after a pause that doubles up to :data:`MAX_SYNC_PAUSE`.
* **gRPC** (``grpc_port``): the ``ConsensusLayer`` service on 127.0.0.1 —
  ``ValidateFourProofs`` with this validator's validation context and its ledger's recorded
  states, ``RecordAssetState`` through a :class:`LedgerStateRecorder` (the ledger client run
  against the committee, answering with this validator's own ``StateHash``).

A test can run the node in-process (:meth:`ValidatorNode.open` or the constructor, then
:meth:`~ValidatorNode.start` / :meth:`~ValidatorNode.stop`) and give it another core (any
:class:`LedgerCore`), which is how Byzantine variants are made.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import logging
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import grpc
from google.protobuf.message import DecodeError

from hypermesh.node.ledger_client import (
    DEFAULT_TIMEOUT,
    ExchangeFailed,
    LedgerClient,
    NotCertified,
    RecordOutcome,
    exchange,
)
from hypermesh_interfaces.v1 import common_pb2, ledger_pb2
from stoq.config import StoqConfig
from stoq.connection import StoqConnection, Stream
from stoq.endpoint import Endpoint
from stoq.errors import StoqError
from stoq.identity import NodeIdentity, PeerPolicy
from stoq.pool import ConnectionPool
from trustchain.consensus.committee import Committee, Member
from trustchain.consensus.federation import LocalFederation, MemberSetup
from trustchain.consensus.ledger import Ledger
from trustchain.consensus.proofs.bundle import PreviousState, ValidationContext
from trustchain.consensus.proofs.presets import PRESETS, Preset
from trustchain.consensus.quorum import ValidatorCore
from trustchain.consensus_layer import ConsensusLayerServicer, serve
from trustchain.errors import LedgerError, LedgerRefusal, TrustChainError

__all__ = [
    "MAX_BATCH_REQUESTS",
    "MAX_REQUEST_BYTES",
    "MAX_SYNC_PAUSE",
    "SYNC_PAGE",
    "TRANSPORT_MARGIN",
    "LedgerCore",
    "LedgerStateRecorder",
    "ValidatorNode",
    "main",
    "member_config",
]

log = logging.getLogger(__name__)

#: The largest request a validator takes (encoded ``LedgerRequest``); larger: ``TOO_LARGE``.
MAX_REQUEST_BYTES: Final = 16 << 20
#: What STOQ lets through beyond ``max_request_bytes`` so that oversized requests reach the
#: node (and a certificate batch of one maximal certificate fits an answer).
TRANSPORT_MARGIN: Final = 64 << 10
#: The most requests one ``core.handle`` call takes.
MAX_BATCH_REQUESTS: Final = 64
#: Certificates asked per ``CertificatesSince`` page while catching up.
SYNC_PAGE: Final = 64
#: The longest pause between catch-up rounds that leave ``needs_sync`` set.
MAX_SYNC_PAUSE: Final = 30.0
#: Seconds one catch-up round gives each peer before moving on to the next.
SYNC_PEER_TIMEOUT: Final = 60.0
_FIRST_SYNC_PAUSE: Final = 0.5


class LedgerCore(Protocol):
    """What the shell needs of the protocol logic (:class:`ValidatorCore` is the real one)."""

    @property
    def committee(self) -> Committee: ...

    @property
    def needs_sync(self) -> bool: ...

    def handle(
        self, requests: Sequence[ledger_pb2.LedgerRequest]
    ) -> list[ledger_pb2.LedgerResponse]: ...

    def sync_done(self) -> None: ...


def _refusal(reason: LedgerRefusal, detail: str) -> ledger_pb2.LedgerResponse:
    return ledger_pb2.LedgerResponse(
        refusal=ledger_pb2.Refusal(reason=int(reason), detail=detail)  # type: ignore[arg-type]
    )


def member_config(
    federation: LocalFederation, member: MemberSetup, **options: object
) -> StoqConfig:
    """The STOQ config of a federation member (a validator or an owner node): its identity
    (its key :data:`~trustchain.consensus.federation.NODE_KEY` and chain from its home) and a
    peer policy trusting the federation's trust store and namespaces. ``options`` are further
    :class:`~stoq.config.StoqConfig` fields."""
    with member.open_keys() as keys:
        identity = NodeIdentity.from_keystore(keys, member.key_name, member.chain())
    policy = PeerPolicy(federation.trust_store(), namespaces=federation.namespaces)
    return StoqConfig(identity=identity, policy=policy, **options)  # type: ignore[arg-type]


class LedgerStateRecorder:
    """The ``StateRecorder`` of a validator's gRPC service (see
    :class:`trustchain.consensus_layer.StateRecorder`): records a change with the ledger
    client on the node's event loop ``loop`` and answers with validator ``validator_id``'s own
    ``StateHash``. Called from gRPC worker threads.

    A committee that refuses the change only for invalid proofs gives a ``REJECTED`` result
    (the first refusal's validation); refusals that agree on another reason raise that
    :class:`~trustchain.errors.ChangeRefused`; anything else that keeps the change from being
    recorded raises the client's :class:`~hypermesh.node.ledger_client.RecordFailed`, and a
    record this validator did not apply raises :class:`~trustchain.errors.LedgerError`.
    """

    def __init__(
        self,
        client: LedgerClient,
        loop: asyncio.AbstractEventLoop,
        validator_id: bytes,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._client = client
        self._loop = loop
        self._validator_id = validator_id
        self._timeout = timeout
        self._lock = threading.Lock()
        self._running: set[concurrent.futures.Future[RecordOutcome]] = set()
        self._closed = False

    def close(self) -> None:
        """Cancel the records in progress (their callers get ``LedgerError``) and refuse new
        ones: the node is stopping."""
        with self._lock:
            self._closed = True
            running = list(self._running)
        for future in running:
            future.cancel()

    def record(
        self, change: ledger_pb2.AssetStateChange
    ) -> tuple[common_pb2.ValidationResult, common_pb2.StateHash | None]:
        with self._lock:
            if self._closed:
                raise LedgerError("the validator is stopping")
            future = asyncio.run_coroutine_threadsafe(
                self._client.record(change, timeout=self._timeout), self._loop
            )
            self._running.add(future)
        try:
            outcome = future.result()
        except concurrent.futures.CancelledError:
            raise LedgerError("the validator stopped before the change was recorded") from None
        except NotCertified as failed:
            refusals = list(failed.refusals.values())
            reasons = {refused.reason for refused in refusals}
            if refusals and reasons == {LedgerRefusal.INVALID_PROOFS}:
                validation = refusals[0].validation
                if validation is not None and validation.verdict == common_pb2.VERDICT_REJECTED:
                    return validation, None
            if len(reasons) == 1 and not failed.unreachable and not failed.invalid:
                raise refusals[0] from failed
            raise
        finally:
            with self._lock:
                self._running.discard(future)
        state = outcome.states.get(self._validator_id)
        if state is None:
            raise LedgerError(
                "the change was recorded by a quorum but not by this validator: "
                + outcome.not_applied.get(self._validator_id, "no answer")
            )
        return common_pb2.ValidationResult(verdict=common_pb2.VERDICT_VALID), state


class ValidatorNode:
    """One validator: serves ``core`` over STOQ at ``host``:``port`` (see the module docs).

    ``config`` is the node's STOQ config (its ``max_message_size`` is raised to
    ``max_request_bytes + TRANSPORT_MARGIN``); ``validator_id`` its id in the committee (its
    peers are the other members). ``ledger`` is the core's ledger: the node closes it on
    :meth:`stop`, with every ``closers`` callable, and reads its recorded states for gRPC.
    ``context`` gives the gRPC service its validation context; ``grpc_port`` (None: no gRPC;
    0: any free port) where it listens on 127.0.0.1.
    """

    def __init__(
        self,
        *,
        core: LedgerCore,
        ledger: Ledger,
        config: StoqConfig,
        validator_id: bytes,
        host: str,
        port: int,
        batch: bool = True,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        context: Callable[[], ValidationContext] | None = None,
        grpc_port: int | None = None,
        closers: Sequence[Callable[[], None]] = (),
    ) -> None:
        if not 0 < max_request_bytes <= (1 << 30) - TRANSPORT_MARGIN:
            raise ValueError("max_request_bytes must be between 1 byte and 1 GiB - margin")
        if grpc_port is not None and context is None:
            raise ValueError("gRPC needs a validation context")
        self.core = core
        self.ledger = ledger
        self.config = dataclasses.replace(
            config, max_message_size=max_request_bytes + TRANSPORT_MARGIN
        )
        self.validator_id = validator_id
        self.host = host
        self.batch = batch
        self.max_request_bytes = max_request_bytes
        self._port = port
        self._context = context
        self._grpc_port = grpc_port
        self._closers = tuple(closers)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ledger")
        self._queue: asyncio.Queue[
            tuple[ledger_pb2.LedgerRequest, asyncio.Future[ledger_pb2.LedgerResponse]]
        ] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._endpoint: Endpoint | None = None
        self._pool: ConnectionPool | None = None
        self._client: LedgerClient | None = None
        self._recorder: LedgerStateRecorder | None = None
        self._grpc: grpc.Server | None = None
        self._stopping = False
        self._sync_wanted = asyncio.Event()
        self._progress: dict[bytes, int] = {}
        self._stopped = asyncio.Event()
        self._failure: BaseException | None = None
        self.grpc_port: int | None = None
        self.sync_rounds = 0

    # -- assembling from a local federation --------------------------------------------------

    @classmethod
    def open(
        cls,
        home: Path | str,
        federation: LocalFederation,
        *,
        preset: Preset,
        batch: bool = True,
        grpc_port: int | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> ValidatorNode:
        """The validator of ``federation`` whose home is ``home``: its ledger ``home/ledger.db``
        (created with the genesis committee if new), its key and certificate, its stake
        registry and the federation's trust store, checking proofs under ``preset``."""
        setup = federation.validator_at(home)
        config = member_config(federation, setup)
        trust_store = config.policy.trust_store
        context = federation.context(setup.name, preset, trust_store=trust_store)
        try:
            ledger = Ledger.open(
                setup.home / "ledger.db",
                validator_id=setup.validator_id,
                genesis=federation.genesis(),
            )
        except BaseException:
            context.registry.close()
            raise
        signing_key = config.identity.signing_key

        def sign(message: bytes) -> bytes:
            return signing_key.sign(message).to_bytes()

        try:
            core = ValidatorCore(
                ledger=ledger,
                trust_store=trust_store,
                validator_id=setup.validator_id,
                sign=sign,
                context=lambda: context,
                batch_votes=batch,
            )
        except BaseException:
            ledger.close()
            context.registry.close()
            raise
        member = core.committee.member(setup.validator_id)
        return cls(
            core=core,
            ledger=ledger,
            config=config,
            validator_id=setup.validator_id,
            host=member.host,
            port=member.port,
            batch=batch,
            max_request_bytes=max_request_bytes,
            context=lambda: context,
            grpc_port=grpc_port,
            closers=(context.registry.close,),
        )

    # -- running -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The UDP port the node listens on (once started)."""
        if self._endpoint is None:
            raise RuntimeError("the validator is not started")
        return self._endpoint.port

    @property
    def failure(self) -> BaseException | None:
        """Why the node stopped on its own (a ledger failure), if it did."""
        return self._failure

    @property
    def peers(self) -> tuple[Member, ...]:
        return tuple(m for m in self.core.committee.members if m.validator_id != self.validator_id)

    async def start(self) -> int:
        """Listen, start the worker and the first catch-up round (and gRPC); the port."""
        self._endpoint = await Endpoint.listen(self.config, self.host, self._port)
        self._pool = ConnectionPool(self.config)
        self._spawn(self._accept_loop(self._endpoint), "accept", critical=True)
        self._spawn(self._work(), "ledger worker", critical=True)
        self._spawn(self._sync_loop(), "catch-up", critical=True)
        self._sync_wanted.set()
        if self._grpc_port is not None:
            assert self._context is not None
            self._client = LedgerClient(self.config, self.core.committee)
            self._recorder = LedgerStateRecorder(
                self._client, asyncio.get_running_loop(), self.validator_id
            )
            servicer = ConsensusLayerServicer(self._context, self._recorded_state, self._recorder)
            self._grpc, self.grpc_port = serve(servicer, f"127.0.0.1:{self._grpc_port}")
        return self._endpoint.port

    def request_stop(self) -> None:
        """Make :meth:`wait_stopped` return (what SIGTERM does); :meth:`stop` still has to run."""
        self._stopped.set()

    async def wait_stopped(self) -> None:
        """Wait until the node stops on its own (a failure) or :meth:`stop` is called."""
        await self._stopped.wait()

    async def stop(self) -> None:
        """Stop serving; wait for a ``core.handle`` in progress to finish; close the endpoint,
        the connections, the gRPC server, the ledger and the ``closers``. Stopping again does
        nothing."""
        if self._stopping:
            return
        self._stopping = True
        self._stopped.set()
        if self._recorder is not None:
            self._recorder.close()
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            self._grpc = None
        if self._endpoint is not None:
            await self._endpoint.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            future.cancel()
        await asyncio.to_thread(self._executor.shutdown, True)
        for closable in (self._client, self._pool):
            if closable is not None:
                await closable.close()
        try:
            self.ledger.close()
        finally:
            for close in self._closers:
                close()

    def _spawn(
        self, coroutine: Coroutine[Any, Any, None], name: str, *, critical: bool = False
    ) -> None:
        """Run ``coroutine`` as a task of the node. A ``critical`` task that fails stops the
        node (:attr:`failure`); another (one connection or stream) only logs its failure."""
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._task_done(done, critical))

    def _task_done(self, task: asyncio.Task[None], critical: bool) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        failure = task.exception()
        if failure is None or self._stopping:
            return
        log.error("the validator's %s task failed", task.get_name(), exc_info=failure)
        if critical:
            self._fail(failure)

    def _fail(self, failure: BaseException) -> None:
        if self._failure is None:
            self._failure = failure
        self._stopped.set()

    def _recorded_state(self, asset_id: bytes) -> PreviousState | None:
        state = self.ledger.state(asset_id)
        return None if state is None else state.previous()

    # -- serving -----------------------------------------------------------------------------

    async def _accept_loop(self, endpoint: Endpoint) -> None:
        while True:
            try:
                connection = await endpoint.accept()
            except StoqError:
                return  # the endpoint is closed
            self._spawn(self._serve_connection(connection), "connection")

    async def _serve_connection(self, connection: StoqConnection) -> None:
        while True:
            try:
                stream = await connection.accept_stream()
            except StoqError:
                return  # the connection ended
            self._spawn(self._serve_stream(stream), "stream")

    async def _serve_stream(self, stream: Stream) -> None:
        try:
            data = await stream.receive()
        except StoqError as exc:
            log.debug("a stream ended before its request: %s", exc)
            return
        try:
            response = await self.answer(data)
        except LedgerError as exc:
            log.error("no answer to a request: %s", exc)
            stream.reset()
            return
        try:
            await stream.send(response.SerializeToString(), end_stream=True)
        except StoqError as exc:
            log.debug("the answer could not be sent: %s", exc)

    async def answer(self, data: bytes) -> ledger_pb2.LedgerResponse:
        """The answer to one request's bytes (through the worker unless refused outright)."""
        if len(data) > self.max_request_bytes:
            return _refusal(
                LedgerRefusal.TOO_LARGE,
                f"a request of {len(data)} bytes exceeds the limit of {self.max_request_bytes}",
            )
        try:
            request = ledger_pb2.LedgerRequest.FromString(data)
        except DecodeError as exc:
            return _refusal(LedgerRefusal.MALFORMED, f"not a LedgerRequest: {exc}")
        if request.WhichOneof("body") is None:
            return _refusal(LedgerRefusal.MALFORMED, "the request asks for nothing")
        (response,) = await self.submit([request])
        if response.WhichOneof("body") == "certificates":
            self._fit(response.certificates)
        return response

    async def submit(
        self, requests: Sequence[ledger_pb2.LedgerRequest]
    ) -> list[ledger_pb2.LedgerResponse]:
        """Queue ``requests`` for the worker; their answers, in order."""
        loop = asyncio.get_running_loop()
        futures = []
        for request in requests:
            future: asyncio.Future[ledger_pb2.LedgerResponse] = loop.create_future()
            self._queue.put_nowait((request, future))
            futures.append(future)
        return list(await asyncio.gather(*futures))

    def _fit(self, batch: ledger_pb2.CertificateBatch) -> None:
        """Drop certificates from the end of ``batch`` until its answer fits a message."""
        limit = self.config.max_message_size - 16  # the response's own field header
        while len(batch.certificates) > 1 and batch.ByteSize() > limit:
            del batch.certificates[-1]

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            entries = [await self._queue.get()]
            if self.batch:
                while len(entries) < MAX_BATCH_REQUESTS and not self._queue.empty():
                    entries.append(self._queue.get_nowait())
            entries = [(request, future) for request, future in entries if not future.done()]
            if not entries:
                continue
            requests = [request for request, _ in entries]
            try:
                responses = await loop.run_in_executor(self._executor, self.core.handle, requests)
            except (TrustChainError, sqlite3.Error) as exc:
                for _, future in entries:
                    if not future.done():
                        future.set_exception(LedgerError(f"the ledger failed: {exc}"))
                raise
            if len(responses) != len(requests):
                raise LedgerError(f"the core answered {len(responses)} of {len(requests)} requests")
            for (_, future), response in zip(entries, responses, strict=True):
                if not future.done():
                    future.set_result(response)
            if self.core.needs_sync:
                self._sync_wanted.set()

    # -- catch-up ----------------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        loop = asyncio.get_running_loop()
        pause = _FIRST_SYNC_PAUSE
        while True:
            await self._sync_wanted.wait()
            self._sync_wanted.clear()
            await loop.run_in_executor(self._executor, self.core.sync_done)
            await self.sync_round()
            if self._sync_wanted.is_set():
                await asyncio.sleep(pause)  # the round itself left gaps: do not spin
                pause = min(pause * 2, MAX_SYNC_PAUSE)
            else:
                pause = _FIRST_SYNC_PAUSE

    async def sync_round(self) -> int:
        """Read every peer's log from where this node left it, one peer after the other;
        how many certificates were read."""
        self.sync_rounds += 1
        read = 0
        for peer in self.peers:
            try:
                async with asyncio.timeout(SYNC_PEER_TIMEOUT):
                    read += await self._sync_from(peer)
            except (ExchangeFailed, TimeoutError) as exc:
                log.info("catch-up from %s stopped: %s", peer.name, exc)
        return read

    async def _sync_from(self, peer: Member) -> int:
        assert self._pool is not None
        read = 0
        while True:
            index = self._progress.get(peer.validator_id, 0)
            request = ledger_pb2.LedgerRequest(
                certificates_since=ledger_pb2.CertificatesSince(log_index=index, limit=SYNC_PAGE)
            )
            response = await exchange(self._pool, peer, request)
            if response.WhichOneof("body") != "certificates":
                raise ExchangeFailed(
                    peer.validator_id,
                    f"{peer.name} answered {response.WhichOneof('body')} to CertificatesSince",
                )
            page = response.certificates
            if not page.certificates:
                return read
            answers = await self.submit(
                [ledger_pb2.LedgerRequest(certificate=c) for c in page.certificates]
            )
            for offset, answer in enumerate(answers):
                if answer.WhichOneof("body") != "applied":
                    log.info(
                        "certificate %d of %s's log refused: %s",
                        index + offset,
                        peer.name,
                        answer.refusal.detail,
                    )
            read += len(page.certificates)
            self._progress[peer.validator_id] = index + len(page.certificates)
            if index + len(page.certificates) >= page.log_size:
                return read


# --- the command ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hypermesh.node.validator",
        description="Run one validator of a local federation's asset ledger.",
    )
    parser.add_argument("--home", required=True, type=Path, help="the validator's home")
    parser.add_argument("--federation", required=True, type=Path, help="the federation")
    parser.add_argument(
        "--preset",
        default="localhost_testing",
        choices=sorted(PRESETS),
        help="the four-proof thresholds (default localhost_testing)",
    )
    parser.add_argument("--grpc-port", type=int, help="serve ConsensusLayer gRPC on this port")
    parser.add_argument(
        "--no-batch", action="store_true", help="one request per ledger call, votes signed alone"
    )
    return parser


async def _run(args: argparse.Namespace) -> int:
    federation = LocalFederation.open(args.federation)
    node = ValidatorNode.open(
        args.home,
        federation,
        preset=PRESETS[args.preset],
        batch=not args.no_batch,
        grpc_port=args.grpc_port,
    )
    try:
        port = await node.start()
    except BaseException:
        await node.stop()
        raise
    print(f"ready {port}", flush=True)
    if node.grpc_port is not None:
        print(f"grpc {node.grpc_port}", flush=True)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, node.request_stop)
    await node.wait_stopped()
    await node.stop()
    if node.failure is not None:
        print(f"validator: {node.failure}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except (TrustChainError, StoqError, OSError, ValueError) as exc:
        print(f"validator: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
