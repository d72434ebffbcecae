"""The ``NetworkLayer`` gRPC service over STOQ, and STOQ's *channel export*.

Channel export. ``NetworkLayer.EstablishSecureChannel`` must hand back a channel that the local
``SecurityLayer`` (:class:`trustchain.security_layer.SecurityLayerServicer`) serves, i.e. whose
id ``EncryptTransport`` and ``DecryptTransport`` accept on this node, and whose records the
peer's ``SecurityLayer`` opens under the same id. A STOQ connection's own channel
(:attr:`~stoq.connection.StoqConnection.channel`) protects that connection's streams and is never
shared: records sealed with it by anyone else would collide with the connection's own sequence
numbers. So each export runs a *fresh* TrustChain channel handshake
(:mod:`trustchain.crypto.handshake`: hybrid X25519 + ML-KEM-1024, hybrid Ed25519 + Falcon-1024
signatures) on a new stream of an authenticated STOQ connection, and each side gives its end of
the new channel to its own security layer (:class:`ChannelRegistry`). Both ends derive the same
``channel_id``.

* Identities: the initiator requires the responder to prove the key the STOQ connection
  authenticated (``connection.peer.key``), and the responder requires the same of the initiator,
  so an export can only ever connect the two nodes of the connection.
* Binding: the handshake's external binding is the connection's channel id
  (``connection.channel.channel_id``, derived identically by both ends of that connection's
  post-quantum session and never sent). Messages relayed into another connection fail: the
  handshake keys differ and M2 does not open.
* Each message below is one STOQ stream message, so it also travels inside the connection's
  channel. The initiator's messages::

      request   "stoq/1 export-channel" || M1
      finish    M3                                      (then FIN)

  The responder's messages start with a status byte::

      0x00 || M2                                        (answer to the request)
      0x00                                              (after M3: adopted; then FIN)
      0x01 || UTF-8 reason (at most 1024 bytes)         (refused, at either step; then FIN)

  A responder refuses a request that does not parse as the first handshake message, a handshake
  that fails (including an initiator identity other than the connection's peer) and a channel
  its security layer will not adopt (:class:`ChannelExportRefused` on the initiator). The
  initiator hands its end to its own security layer only after the responder confirmed; if its
  own security layer then refuses it (full), the responder's end stays registered, unused, since
  the ``SecurityLayer`` contract has no way to drop a channel yet.
  No handshake message is larger than :data:`MAX_EXPORT_MESSAGE`.

The responder side is :func:`serve_channel_exports` (every stream of a connection) or
:func:`answer_channel_export` (one stream, for a node that dispatches streams itself, using
:func:`is_export_request`); :func:`serve_endpoint_channel_exports` runs the former on every
connection an endpoint accepts. The initiator side is :func:`export_channel`.

gRPC. :class:`NetworkLayerServicer` is a synchronous servicer for grpc's thread-pool server
(:func:`serve`), while STOQ runs on asyncio: it is given an event loop running in another thread
(:class:`EventLoopThread` makes one) and runs its STOQ work there with
:func:`asyncio.run_coroutine_threadsafe`. ``EstablishSecureChannel`` takes the connection to
the requested ``peer_id`` from a :class:`~stoq.pool.ConnectionPool` (dialling the request's
address if the pool has none; the peer STOQ authenticates there must be ``peer_id``), exports a
channel, and answers with the local security layer's description of it and the address the
connection runs over. Errors map to one status each (see :data:`STATUS_OF` and
:meth:`NetworkLayerServicer.EstablishSecureChannel`).
``HandleNatTraversal`` runs the servicer's :class:`~stoq.nat.traversal.TraversalAgent` (given
as ``traversal``; without one it answers ``FAILED_PRECONDITION``) and reports the path found.
``ResolveAssetAddress`` answers from TrustChain name records (``names``) for nodes, whose asset id
is their node id (other assets arrive in phase 2); ``EstablishSecureChannel`` without an
address dials the peer where those records say. Reaching a peer behind NAT by id is
``HandleNatTraversal``'s; exporting a channel over such a connection is not wired yet.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import grpc

from hypermesh_interfaces.v1 import common_pb2, network_pb2, network_pb2_grpc
from stoq.config import StoqConfig
from stoq.connection import StoqConnection, Stream
from stoq.endpoint import Endpoint
from stoq.errors import (
    ConnectError,
    ConnectionLost,
    PeerRejected,
    ProtocolViolation,
    StoqError,
    StreamClosed,
)
from stoq.nat.peer_link import Route
from stoq.nat.punch import Candidate, CandidateKind
from stoq.nat.rendezvous import PeerNotRegistered, RendezvousError
from stoq.nat.signalling import MappingBehaviour
from stoq.nat.stun import StunError
from stoq.nat.traversal import PeerConnection, TraversalAgent, TraversalFailed
from stoq.pool import ConnectionPool, PoolClosed, PoolExhausted
from trustchain.crypto.algorithms import KemAlgorithm
from trustchain.crypto.channel import SecureChannel
from trustchain.crypto.handshake import Initiator, Responder
from trustchain.crypto.signatures import SigningKey, VerifyKey
from trustchain.errors import HandshakeError, MalformedData, TrustChainError
from trustchain.naming.records import NameRecord
from trustchain.security_layer import CHANNEL_KEM
from trustchain.security_layer import STATUS_OF as SECURITY_STATUS_OF

__all__ = [
    "ADOPTED",
    "ERROR_EXPORT_ABANDONED",
    "ERROR_EXPORT_TIMEOUT",
    "ERROR_NOT_AN_EXPORT",
    "EXPORT_REQUEST_PREFIX",
    "MAX_EXPORT_MESSAGE",
    "STATUS_OF",
    "ChannelExportRefused",
    "ChannelRegistry",
    "EventLoopThread",
    "ExportInitiator",
    "ExportResponder",
    "NetworkLayerServicer",
    "answer_channel_export",
    "export_channel",
    "is_export_request",
    "refusal",
    "serve",
    "serve_channel_exports",
    "serve_endpoint_channel_exports",
    "status_of",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The first bytes of an export request (then M1).
EXPORT_REQUEST_PREFIX = b"stoq/1 export-channel"
#: The largest handshake message either side accepts (M1 and M3 are a few KiB).
MAX_EXPORT_MESSAGE = 16 << 10
#: The longest refusal reason sent (longer ones are cut).
MAX_REFUSAL_REASON = 1024
STATUS_OK = 0x00
STATUS_REFUSED = 0x01
#: Stream error codes (RESET_STREAM / STOP_SENDING) of the export protocol.
ERROR_NOT_AN_EXPORT = 0x5310  # responder: the stream's first message is not an export request
ERROR_EXPORT_TIMEOUT = 0x5311  # responder: the initiator did not finish in time
ERROR_EXPORT_ABANDONED = 0x5312  # initiator: gave up (error, timeout or cancellation)
#: Default seconds for one export, either side.
DEFAULT_EXPORT_TIMEOUT = 30.0
PEER_ID_SIZE = 32


class ChannelExportRefused(StoqError):
    """The peer refused a channel export; ``reason`` is what it said."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the peer refused the channel export: {reason}")


class ChannelRegistry(Protocol):
    """Where an exported channel goes: the node's security layer.

    :class:`trustchain.security_layer.SecurityLayerServicer` implements it. ``adopt_channel``
    takes ownership of ``channel`` and returns its description (``channel_id`` as its RPCs
    accept it); it raises a :class:`~trustchain.errors.TrustChainError` if it cannot hold it.
    It is called on the event loop's thread and must not block for long.
    """

    def adopt_channel(
        self, channel: SecureChannel, *, kem_algorithm: KemAlgorithm
    ) -> common_pb2.SecureChannel: ...


# --- the export protocol, sans-IO -------------------------------------------------------------


def is_export_request(message: bytes) -> bool:
    """Whether a stream's first message is a channel export request."""
    return message.startswith(EXPORT_REQUEST_PREFIX)


def _ok(body: bytes = b"") -> bytes:
    return bytes([STATUS_OK]) + body


def refusal(reason: str) -> bytes:
    """The responder's refusal message for ``reason`` (cut to :data:`MAX_REFUSAL_REASON` bytes)."""
    encoded = reason.encode("utf-8")[:MAX_REFUSAL_REASON]
    return bytes([STATUS_REFUSED]) + encoded.decode("utf-8", "ignore").encode("utf-8")


def _reply_body(message: bytes) -> bytes:
    """The body of a responder message; :class:`ChannelExportRefused` for a refusal."""
    if not message:
        raise ProtocolViolation("an empty channel export reply")
    status, body = message[0], message[1:]
    if status == STATUS_REFUSED:
        if len(body) > MAX_REFUSAL_REASON:
            raise ProtocolViolation(f"a {len(body)}-byte refusal reason")
        raise ChannelExportRefused(body.decode("utf-8", "replace"))
    if status != STATUS_OK:
        raise ProtocolViolation(f"unknown channel export status 0x{status:02x}")
    if len(body) > MAX_EXPORT_MESSAGE:
        raise ProtocolViolation(f"a {len(body)}-byte export handshake message")
    return body


def _handshake_step(step: str, run: Callable[[bytes], T], message: bytes) -> T:
    """``run(message)``, one handshake call; its errors as STOQ's (PeerRejected /
    ProtocolViolation)."""
    try:
        return run(message)
    except MalformedData as exc:
        raise ProtocolViolation(f"export {step}: {exc}") from exc
    except HandshakeError as exc:  # includes UntrustedPeer: the identity proof failed
        raise PeerRejected(f"export {step}: {exc}") from exc


class ExportInitiator:
    """The initiator of one channel export, sans-IO: :meth:`start`, :meth:`receive_answer`,
    :meth:`receive_result`; errors as in :func:`export_channel`.

    ``identity`` is this node's key, ``peer`` the key the connection authenticated, ``binding``
    the connection's channel id.
    """

    def __init__(self, identity: SigningKey, peer: VerifyKey, binding: bytes) -> None:
        self._handshake = Initiator(
            identity, expected_peer=peer, binding=binding, kem_algorithm=CHANNEL_KEM
        )

    def start(self) -> bytes:
        """The request."""
        return EXPORT_REQUEST_PREFIX + self._handshake.start()

    def receive_answer(self, message: bytes) -> bytes:
        """The responder's answer (M2) -> the finish message (M3)."""
        body = _reply_body(message)
        return _handshake_step("answer", self._handshake.receive, body)

    def receive_result(self, message: bytes) -> SecureChannel:
        """The responder's confirmation -> this side's end of the channel."""
        if _reply_body(message):
            raise ProtocolViolation("the export confirmation carries data")
        return self._handshake.channel


class ExportResponder:
    """The responder of one channel export, sans-IO: :meth:`receive_request`,
    :meth:`receive_finish`; then send :data:`ADOPTED` or :func:`refusal`.

    Raises :class:`~stoq.errors.ProtocolViolation` (not a request, malformed or oversized
    message) or :class:`~stoq.errors.PeerRejected` (the handshake failed, or the initiator
    proved a key other than ``peer``).
    """

    def __init__(self, identity: SigningKey, peer: VerifyKey, binding: bytes) -> None:
        peer_id = peer.key_id
        self._handshake = Responder(
            identity,
            accept_peer=lambda key: key.key_id == peer_id,
            binding=binding,
            kem_algorithms=(CHANNEL_KEM,),
        )

    def receive_request(self, message: bytes) -> bytes:
        """The request -> the answer (status and M2)."""
        if not is_export_request(message):
            raise ProtocolViolation("not a channel export request")
        body = message[len(EXPORT_REQUEST_PREFIX) :]
        if len(body) > MAX_EXPORT_MESSAGE:
            raise ProtocolViolation(f"a {len(body)}-byte export request")
        answer = _handshake_step("request", self._handshake.receive, body)
        if answer is None:  # pragma: no cover - a fresh responder answers M1 or fails
            raise ProtocolViolation("the export request completed no handshake step")
        return _ok(answer)

    def receive_finish(self, message: bytes) -> SecureChannel:
        """The finish message (M3) -> this side's end of the channel."""
        if len(message) > MAX_EXPORT_MESSAGE:
            raise ProtocolViolation(f"a {len(message)}-byte export finish message")
        if _handshake_step("finish", self._handshake.receive, message) is not None:
            raise ProtocolViolation("the export finish message is not M3")
        return self._handshake.channel


#: The responder's confirmation that its security layer adopted the channel.
ADOPTED = _ok()


# --- the export protocol over a STOQ connection --------------------------------------------


def _parties(connection: StoqConnection) -> tuple[SigningKey, VerifyKey, bytes]:
    return (
        connection.config.identity.signing_key,
        connection.peer.key,
        connection.channel.channel_id,
    )


async def export_channel(connection: StoqConnection) -> SecureChannel:
    """Run a channel export on a new stream of ``connection``; this side's end of the channel.

    Returns once the peer's security layer adopted its end (same ``channel_id``). Raises
    :class:`ChannelExportRefused` (the peer said no), :class:`~stoq.errors.PeerRejected` (the
    handshake failed or the peer proved another key), :class:`~stoq.errors.ProtocolViolation`
    (the peer's messages do not parse), :class:`~stoq.errors.StreamClosed` or
    :class:`~stoq.errors.ConnectionLost`. On any failure or cancellation the stream is reset.
    Waits as long as the peer takes: bound it with a timeout.
    """
    core = ExportInitiator(*_parties(connection))
    stream = await connection.open_stream()
    try:
        await stream.send(core.start())
        await stream.send(core.receive_answer(await stream.receive()), end_stream=True)
        return core.receive_result(await stream.receive())
    except BaseException:
        stream.reset(ERROR_EXPORT_ABANDONED)
        raise


async def _send_refusal(stream: Stream, reason: str) -> None:
    try:
        await stream.send(refusal(reason), end_stream=True)
    except (StreamClosed, ConnectionLost) as exc:
        # The initiator is gone; the failure being reported is the reason, not this.
        log.debug("could not deliver an export refusal on stream %d: %s", stream.stream_id, exc)


async def answer_channel_export(
    connection: StoqConnection, stream: Stream, request: bytes, registry: ChannelRegistry
) -> common_pb2.SecureChannel:
    """Answer the export ``request`` (the stream's first message, already read) and give this
    side's end of the channel to ``registry``; its description.

    On failure the initiator is sent a refusal and the error is raised:
    :class:`~stoq.errors.ProtocolViolation`, :class:`~stoq.errors.PeerRejected`, or the
    registry's :class:`~trustchain.errors.TrustChainError`; also
    :class:`~stoq.errors.StreamClosed` / :class:`~stoq.errors.ConnectionLost` if the initiator
    goes away. Waits as long as the initiator takes: bound it with a timeout.
    """
    core = ExportResponder(*_parties(connection))
    try:
        await stream.send(core.receive_request(request))
        channel = core.receive_finish(await stream.receive())
    except (ProtocolViolation, PeerRejected) as exc:
        await _send_refusal(stream, str(exc))
        raise
    try:
        described = registry.adopt_channel(channel, kem_algorithm=CHANNEL_KEM)
    except TrustChainError as exc:
        channel.close()
        await _send_refusal(stream, f"the security layer did not adopt the channel: {exc}")
        raise
    await stream.send(ADOPTED, end_stream=True)
    return described


async def _serve_stream(
    connection: StoqConnection, stream: Stream, registry: ChannelRegistry, timeout: float
) -> None:
    """One stream of :func:`serve_channel_exports`; logs its outcome, raises nothing expected."""
    peer = connection.peer.name
    try:
        async with asyncio.timeout(timeout):
            request = await stream.receive()
            if not is_export_request(request):
                log.info("stream %d from %s is not a channel export", stream.stream_id, peer)
                stream.reset(ERROR_NOT_AN_EXPORT)
                return
            described = await answer_channel_export(connection, stream, request, registry)
    except TimeoutError:
        log.info("channel export from %s timed out after %s s", peer, timeout)
        stream.reset(ERROR_EXPORT_TIMEOUT)
    except (StoqError, TrustChainError) as exc:
        log.info("channel export from %s failed: %s: %s", peer, type(exc).__name__, exc)
        stream.reset(ERROR_EXPORT_ABANDONED)
    else:
        log.info("exported channel %s with %s", described.channel_id.hex()[:16], peer)


async def serve_channel_exports(
    connection: StoqConnection,
    registry: ChannelRegistry,
    *,
    timeout: float = DEFAULT_EXPORT_TIMEOUT,
) -> None:
    """Answer the peer's channel exports on ``connection`` until the connection ends.

    Takes every stream the peer opens: each is answered on its own task; a stream whose first
    message is not an export request is reset with :data:`ERROR_NOT_AN_EXPORT`, one that fails
    is refused or reset, one that takes longer than ``timeout`` is reset with
    :data:`ERROR_EXPORT_TIMEOUT`. None of that ends the service or the connection. A node whose
    connections carry other streams too must dispatch them itself and call
    :func:`answer_channel_export` for export requests. Returns when the connection closes.
    """
    async with asyncio.TaskGroup() as group:
        while True:
            try:
                stream = await connection.accept_stream()
            except StoqError as exc:  # the connection ended; its owner sees why
                log.debug("channel exports on a closed connection end: %s", exc)
                return
            group.create_task(_serve_stream(connection, stream, registry, timeout))


async def serve_endpoint_channel_exports(
    endpoint: Endpoint,
    registry: ChannelRegistry,
    *,
    timeout: float = DEFAULT_EXPORT_TIMEOUT,
) -> None:
    """Run :func:`serve_channel_exports` on every connection ``endpoint`` accepts, until the
    endpoint closes."""
    async with asyncio.TaskGroup() as group:
        while True:
            try:
                connection = await endpoint.accept()
            except ConnectionLost:
                return
            group.create_task(serve_channel_exports(connection, registry, timeout=timeout))


# --- asyncio for a thread-pool gRPC server ------------------------------------------------


class EventLoopThread:
    """An asyncio event loop running in its own (daemon) thread, for synchronous callers.

    :meth:`run` submits a coroutine from any other thread and waits for its result. :meth:`close`
    cancels every task still on the loop, waits for them, and stops the thread. Usable as a
    context manager.
    """

    def __init__(self, name: str = "stoq-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        started = threading.Event()
        self.loop.call_soon(started.set)
        self._thread.start()
        started.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the loop and return its result; on :class:`TimeoutError` after
        ``timeout`` seconds the coroutine is cancelled. Not from the loop's own thread."""
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("EventLoopThread.run called on its own loop: it would deadlock")
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        """Cancel what still runs on the loop, then stop and close it. Idempotent."""
        if self.loop.is_closed():
            return
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(_cancel_all(), self.loop).result()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        self.loop.close()

    def __enter__(self) -> EventLoopThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _cancel_all() -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    for task, result in zip(
        tasks, await asyncio.gather(*tasks, return_exceptions=True), strict=True
    ):
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            log.warning("task %s ended with %s: %s", task.get_name(), type(result).__name__, result)
    await asyncio.get_running_loop().shutdown_asyncgens()


# --- the gRPC service ---------------------------------------------------------------------


#: gRPC status for each STOQ error of ``EstablishSecureChannel``; the first matching class wins.
#: Errors of the local security layer map as in :data:`trustchain.security_layer.STATUS_OF`.
STATUS_OF: tuple[tuple[type[StoqError], grpc.StatusCode], ...] = (
    # The peer's security layer would not take the channel, or the handshake on its side failed:
    # this attempt is over, a new one may succeed.
    (ChannelExportRefused, grpc.StatusCode.ABORTED),
    # The node at the address is not the requested peer, its certificate or its proof of
    # identity is refused, or it refused this node.
    (PeerRejected, grpc.StatusCode.PERMISSION_DENIED),
    # Every pooled connection is busy: try again later.
    (PoolExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    # Nothing answered at the address, the connection or stream broke, the peer spoke
    # something else, or this servicer is shutting down: the peer is unavailable for this.
    (ConnectError, grpc.StatusCode.UNAVAILABLE),
    (ConnectionLost, grpc.StatusCode.UNAVAILABLE),
    (StreamClosed, grpc.StatusCode.UNAVAILABLE),
    (PoolClosed, grpc.StatusCode.UNAVAILABLE),
    (ProtocolViolation, grpc.StatusCode.UNAVAILABLE),
)


class _Abort(Exception):
    """Raised inside a handler to end the call with a status (see :func:`_handle`)."""

    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def status_of(error: StoqError | TrustChainError) -> grpc.StatusCode:
    """The gRPC status :class:`NetworkLayerServicer` answers ``error`` with."""
    table: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (*STATUS_OF, *SECURITY_STATUS_OF)
    for kind, code in table:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


@contextmanager
def _handle(context: grpc.ServicerContext, where: str) -> Iterator[None]:
    """Turn :class:`_Abort`, STOQ and TrustChain errors into a status on ``context``."""
    try:
        yield
    except _Abort as abort:
        context.abort(abort.code, abort.detail)
    except (StoqError, TrustChainError) as error:
        context.abort(status_of(error), f"{where}: {type(error).__name__}: {error}")


def _dial_target(address: common_pb2.NetworkAddress) -> tuple[str, int]:
    """Host and port to dial for ``address``; :class:`_Abort` (INVALID_ARGUMENT) if it cannot
    be dialled by STOQ."""
    if address.transport != common_pb2.TRANSPORT_QUIC:
        known = address.transport in common_pb2.Transport.values()
        name = common_pb2.Transport.Name(address.transport) if known else str(address.transport)
        raise _Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"STOQ dials TRANSPORT_QUIC addresses only, not {name}",
        )
    if len(address.ip) not in (4, 16):
        raise _Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"address.ip must be 4 (IPv4) or 16 (IPv6) bytes, got {len(address.ip)}",
        )
    ip = _unmapped(ipaddress.ip_address(address.ip))
    if ip.is_unspecified or ip.is_multicast:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"{ip} cannot be dialled")
    if not 0 < address.port < 65536:
        raise _Abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"address.port must be 1..65535, got {address.port}"
        )
    return str(ip), address.port


def _unmapped(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IPv4-mapped IPv6 address as the IPv4 address; any other unchanged."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _network_address(host: str, port: int) -> common_pb2.NetworkAddress:
    """``host`` (an IP literal, IPv6 possibly with a zone) and ``port`` as a NetworkAddress."""
    ip = _unmapped(ipaddress.ip_address(host))
    return common_pb2.NetworkAddress(ip=ip.packed, port=port, transport=common_pb2.TRANSPORT_QUIC)


def _describe_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class NameDirectory(Protocol):
    """Verified TrustChain name records, e.g. a
    :class:`~trustchain.naming.registry.NameRegistry`: every name, and each one's current
    valid record (None when absent, expired or revoked)."""

    def names(self) -> Sequence[str]: ...

    def lookup(self, name: str) -> NameRecord | None: ...


class NetworkLayerServicer(network_pb2_grpc.NetworkLayerServicer):
    """``NetworkLayer`` over STOQ, exporting channels into ``registry`` (the node's security
    layer).

    ``config`` is this node's STOQ configuration (identity and peer policy); its identity key
    should be the one the security layer holds. ``loop`` is an event loop running in another
    thread (:class:`EventLoopThread`); every STOQ object lives there and is touched only by
    coroutines submitted to it. ``timeout`` bounds each call, together with the client's own
    deadline (the smaller wins).

    Connections come from ``pool`` (:class:`~stoq.pool.ConnectionPool`, keyed by the requested
    peer id, so one connection per peer is shared with every other user of the pool). Without
    one, the servicer makes its own pool, closes it in :meth:`aclose`, and, since nothing else
    uses those connections, also answers the peer's channel exports on them
    (:func:`serve_channel_exports`). With a shared pool, answering the peer's streams is the
    node's business (see :func:`answer_channel_export`).

    Thread-safety: the handlers may run concurrently on gRPC's worker threads; they share only
    the loop, and the registry, which must be thread-safe. They must not run on the loop's own
    thread (they wait for it).
    """

    def __init__(
        self,
        config: StoqConfig,
        registry: ChannelRegistry,
        loop: asyncio.AbstractEventLoop,
        *,
        pool: ConnectionPool | None = None,
        timeout: float = DEFAULT_EXPORT_TIMEOUT,
        traversal: TraversalAgent | None = None,
        names: NameDirectory | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._config = config
        self._registry = registry
        self._loop = loop
        self._timeout = timeout
        self._owns_pool = pool is None
        self._pool = pool if pool is not None else ConnectionPool(config)
        # Touched on the loop's thread only: the export service on each connection of an own
        # pool.
        self._serving: dict[StoqConnection, asyncio.Task[None]] = {}
        # HandleNatTraversal: the agent, and the connections it made (by peer id; loop only).
        self._traversal = traversal
        self._names = names
        self._traversed: dict[bytes, PeerConnection] = {}

    @property
    def pool(self) -> ConnectionPool:
        """The connection pool (use it on the loop's thread only)."""
        return self._pool

    # -- RPCs --------------------------------------------------------------------------------

    def EstablishSecureChannel(
        self,
        request: network_pb2.EstablishSecureChannelRequest,
        context: grpc.ServicerContext,
    ) -> network_pb2.EstablishSecureChannelResponse:
        """Connect to ``request.peer_id`` at ``request.address`` and export a channel.

        A pooled connection to that peer is reused wherever it runs (``remote_address`` says
        where); otherwise the address is dialled and the peer STOQ authenticates there must be
        ``peer_id``. Without an address, the peer's TrustChain name records (``names``) say
        where: the first record (by name) naming the peer with a ``stoq``/``udp`` service, all
        its addresses raced (Happy Eyeballs) on that port, the record's name the one the peer's
        certificate must carry.

        Status codes: ``INVALID_ARGUMENT`` for a peer id that is not 32 bytes or an address
        STOQ cannot dial (not QUIC, bad IP length, port 0, unspecified or multicast IP);
        without an address, ``FAILED_PRECONDITION`` when the servicer has no name records and
        ``NOT_FOUND`` when none names the peer with a stoq/udp service; ``UNAVAILABLE`` when
        nothing answers at the
        address (the details name every address tried) or the connection breaks;
        ``PERMISSION_DENIED`` when the node there authenticates as another peer, or either side
        refuses the other's certificate or identity proof (a wrong peer id is the caller asking
        for a channel it may not have over this address, and STATUS_OF maps TrustChain's
        ``UntrustedPeer`` the same way); ``ABORTED`` when the peer refused the export;
        ``DEADLINE_EXCEEDED`` past the timeout; ``RESOURCE_EXHAUSTED`` when the pool is full of
        busy connections; the local security layer's own errors as in
        :data:`trustchain.security_layer.STATUS_OF` (e.g. ``RESOURCE_EXHAUSTED``).
        """
        with _handle(context, "EstablishSecureChannel"):
            peer_id = request.peer_id.id
            if len(peer_id) != PEER_ID_SIZE:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"peer_id.id must be {PEER_ID_SIZE} bytes, got {len(peer_id)}",
                )
            server_name: str | None = None
            hosts: str | list[str]
            if request.HasField("address"):
                hosts, port = _dial_target(request.address)
                where = _describe_address(hosts, port)
            else:
                record, port = self._dialable_record(peer_id)
                hosts, server_name = list(record.addresses), record.name
                where = f"{record.name} ({', '.join(hosts)}) port {port}"
            remaining = context.time_remaining()
            timeout = self._timeout if remaining is None else min(self._timeout, remaining)
            try:
                channel, remote = self._run(
                    self._establish(peer_id, hosts, port, server_name), timeout
                )
            except TimeoutError:
                raise _Abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no channel with the peer at {where} within {timeout:.3g} s",
                ) from None
            except ConnectError as exc:
                raise _Abort(
                    grpc.StatusCode.UNAVAILABLE, f"could not reach the peer at {where}: {exc}"
                ) from exc
            return network_pb2.EstablishSecureChannelResponse(
                channel=channel, remote_address=_network_address(*remote)
            )
        raise AssertionError("unreachable: _handle aborts")  # pragma: no cover

    def ResolveAssetAddress(
        self,
        request: network_pb2.ResolveAssetAddressRequest,
        context: grpc.ServicerContext,
    ) -> network_pb2.ResolveAssetAddressResponse:
        """Where the node ``request.asset_id`` is served: from the TrustChain name records
        (``names``, e.g. a :class:`~trustchain.naming.registry.NameRegistry`) whose node id is
        the asset id. Nodes are the only assets before phase 2, and a node's asset id is its
        node id (the key id of its identity key).

        ``addresses``: every address of every valid record for that node, as a QUIC endpoint on
        each ``stoq``/``udp`` service port the record names (a record without one gives no
        dialable address); origin UNSPECIFIED (the node announced them in a signed record).
        ``valid_until``: now plus the smallest record TTL, never past a record's ``not_after``.

        Status codes: ``INVALID_ARGUMENT`` for an id that is not 32 bytes;
        ``FAILED_PRECONDITION`` without a name source; ``NOT_FOUND`` when no valid record names
        the node, or none gives a dialable address.
        """
        with _handle(context, "ResolveAssetAddress"):
            asset_id = request.asset_id.id
            if len(asset_id) != PEER_ID_SIZE:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"asset_id.id must be {PEER_ID_SIZE} bytes, got {len(asset_id)}",
                )
            now = datetime.now(UTC)
            records = self._node_records(asset_id)
            if not records:
                raise _Abort(
                    grpc.StatusCode.NOT_FOUND, f"no valid name record for node {asset_id.hex()}"
                )
            addresses = [
                common_pb2.PublicAddress(address=_network_address(ip, service.port))
                for record in records
                for service in record.services
                if (service.service, service.protocol) == ("stoq", "udp")
                for ip in record.addresses
            ]  # fmt: skip
            if not addresses:
                names = ", ".join(sorted(r.name for r in records))
                raise _Abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"the records of node {asset_id.hex()} ({names}) name no stoq/udp service",
                )
            until = min(min(now + timedelta(seconds=r.ttl), r.not_after) for r in records)
            response = network_pb2.ResolveAssetAddressResponse(
                asset_id=request.asset_id,
                node_id=common_pb2.PeerId(id=asset_id),
                addresses=addresses,
            )
            response.valid_until.FromDatetime(until)
            return response
        raise AssertionError("unreachable: _handle aborts")  # pragma: no cover

    def HandleNatTraversal(
        self,
        request: network_pb2.HandleNatTraversalRequest,
        context: grpc.ServicerContext,
    ) -> network_pb2.HandleNatTraversalResponse:
        """Find a working path to ``request.peer_id`` through this node's
        :class:`~stoq.nat.traversal.TraversalAgent` (rendezvous, candidates, checks, relay).

        An existing traversal connection to the peer is reused; otherwise one is made, and the
        answer waits for its first connectivity checks to end, so it names the direct path when
        there is one and the two relayed addresses otherwise. ``local`` carries this node's NAT
        type (RFC 5780 discovery, once per servicer); ``remote`` carries SYMMETRIC when the
        peer reported endpoint-dependent mapping and UNSPECIFIED otherwise (peers report their
        mapping, not their filtering).

        Status codes: ``INVALID_ARGUMENT`` for a peer id that is not 32 bytes;
        ``UNIMPLEMENTED`` for caller-supplied ``local_candidates`` (the network layer gathers
        its own); ``FAILED_PRECONDITION`` when the servicer has no traversal agent (no
        rendezvous node configured); ``NOT_FOUND`` when the peer is not registered at the
        rendezvous node; ``UNAVAILABLE`` when no path works or the rendezvous refuses;
        ``PERMISSION_DENIED`` when the node reached proves another identity;
        ``DEADLINE_EXCEEDED`` past the timeout.
        """
        with _handle(context, "HandleNatTraversal"):
            peer_id = request.peer_id.id
            if len(peer_id) != PEER_ID_SIZE:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"peer_id.id must be {PEER_ID_SIZE} bytes, got {len(peer_id)}",
                )
            if request.local_candidates:
                raise _Abort(
                    grpc.StatusCode.UNIMPLEMENTED,
                    "caller-supplied local_candidates are not supported: the network layer "
                    "gathers its own candidates; leave the field empty",
                )
            if self._traversal is None:
                raise _Abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "this node has no NAT traversal agent (no rendezvous node configured)",
                )
            remaining = context.time_remaining()
            timeout = self._timeout if remaining is None else min(self._timeout, remaining)
            try:
                return self._run(self._traverse(self._traversal, peer_id), timeout)
            except TimeoutError:
                raise _Abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no path to the peer within {timeout:.3g} s",
                ) from None
            except PeerNotRegistered as exc:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"unknown peer: {exc}") from exc
            except RendezvousError as exc:
                raise _Abort(grpc.StatusCode.UNAVAILABLE, f"rendezvous: {exc}") from exc
        raise AssertionError("unreachable: _handle aborts")  # pragma: no cover

    # -- lifecycle -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the servicer's own pool and its connections (on the loop's thread); a shared
        pool is left alone."""
        if self._owns_pool:
            await self._pool.close()
        for traversed in list(self._traversed.values()):
            await traversed.close()
        self._traversed.clear()
        for task in list(self._serving.values()):
            await task

    def close(self, timeout: float | None = None) -> None:
        """:meth:`aclose` from another thread."""
        self._run(self.aclose(), timeout)

    # -- on the loop ---------------------------------------------------------------------------

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    async def _traverse(
        self, agent: TraversalAgent, peer_id: bytes
    ) -> network_pb2.HandleNatTraversalResponse:
        connection = self._traversed.get(peer_id)
        if connection is None or connection.connection.closed:
            connection = await agent.connect(peer_id)
            self._traversed[peer_id] = connection
        await connection.wait_punched()
        try:
            behaviour = await agent.nat_behaviour()
        except StunError as exc:
            log.info("NAT discovery failed: %s", exc)
            local_type = common_pb2.NAT_TYPE_UNSPECIFIED
        else:
            local_type = _NAT_TYPES.get(behaviour.nat_type, common_pb2.NAT_TYPE_UNSPECIFIED)
        remote_type = (
            common_pb2.NAT_TYPE_SYMMETRIC
            if connection.remote_mapping == MappingBehaviour.DEPENDENT
            else common_pb2.NAT_TYPE_UNSPECIFIED
        )
        link = connection.link
        direct = link.direct_path
        if link.route == Route.DIRECT and direct is not None:
            base, remote = direct
            local = _public(connection.local_candidates, base, local_type, local=True)
            far = _public(connection.remote_candidates, remote, remote_type, local=False)
        elif link.route == Route.RELAY and link.turn is not None and link.remote_relayed:
            local = _address(link.turn.relayed_address, common_pb2.ADDRESS_ORIGIN_RELAYED, 0)
            far = _address(link.remote_relayed, common_pb2.ADDRESS_ORIGIN_RELAYED, 0)
        else:
            raise TraversalFailed(f"the link to the peer has no path ({link.route})")
        return network_pb2.HandleNatTraversalResponse(local=local, remote=far)

    def _node_records(self, node_id: bytes) -> list[NameRecord]:
        """The valid TrustChain name records naming ``node_id``, by name."""
        if self._names is None:
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this node has no TrustChain name records to resolve from",
            )
        return sorted(
            (
                record
                for name in self._names.names()
                if (record := self._names.lookup(name)) is not None and record.node_id == node_id
            ),
            key=lambda record: record.name,
        )

    def _dialable_record(self, node_id: bytes) -> tuple[NameRecord, int]:
        """The first record (by name) of ``node_id`` with a stoq/udp service, and its port."""
        records = self._node_records(node_id)
        for record in records:
            for service in record.services:
                if (service.service, service.protocol) == ("stoq", "udp"):
                    return record, service.port
        if not records:
            raise _Abort(
                grpc.StatusCode.NOT_FOUND, f"no valid name record for node {node_id.hex()}"
            )
        names = ", ".join(record.name for record in records)
        raise _Abort(
            grpc.StatusCode.NOT_FOUND,
            f"the records of node {node_id.hex()} ({names}) name no stoq/udp service",
        )

    async def _establish(
        self,
        peer_id: bytes,
        hosts: str | Sequence[str],
        port: int,
        server_name: str | None = None,
    ) -> tuple[common_pb2.SecureChannel, tuple[str, int]]:
        try:
            connection = await self._pool.get(hosts, port, peer_id=peer_id, server_name=server_name)
        except PeerRejected as exc:
            where = _describe_address(hosts, port) if isinstance(hosts, str) else f"port {port}"
            raise PeerRejected(f"the node at {where} is refused: {exc.reason}") from exc
        if self._owns_pool and connection not in self._serving:
            task = asyncio.create_task(serve_channel_exports(connection, self._registry))
            self._serving[connection] = task
            task.add_done_callback(lambda _: self._serving.pop(connection, None))
        channel = await export_channel(connection)
        try:
            described = self._registry.adopt_channel(channel, kem_algorithm=CHANNEL_KEM)
        except TrustChainError:
            channel.close()
            raise
        return described, connection.remote_address


_NAT_TYPES: dict[str, common_pb2.NatType.ValueType] = {
    "open": common_pb2.NAT_TYPE_NONE,
    "full-cone": common_pb2.NAT_TYPE_FULL_CONE,
    "restricted-cone": common_pb2.NAT_TYPE_RESTRICTED_CONE,
    "port-restricted-cone": common_pb2.NAT_TYPE_PORT_RESTRICTED_CONE,
    "symmetric": common_pb2.NAT_TYPE_SYMMETRIC,
}

_ORIGINS: dict[CandidateKind, common_pb2.AddressOrigin.ValueType] = {
    CandidateKind.HOST: common_pb2.ADDRESS_ORIGIN_HOST,
    CandidateKind.SERVER_REFLEXIVE: common_pb2.ADDRESS_ORIGIN_SERVER_REFLEXIVE,
    # A peer-reflexive address is one a peer reflected back: the proto's reflexive origin.
    CandidateKind.PEER_REFLEXIVE: common_pb2.ADDRESS_ORIGIN_SERVER_REFLEXIVE,
    CandidateKind.RELAYED: common_pb2.ADDRESS_ORIGIN_RELAYED,
}


def _address(
    address: tuple[Any, ...], origin: common_pb2.AddressOrigin.ValueType, nat_type: int
) -> common_pb2.PublicAddress:
    return common_pb2.PublicAddress(
        address=_network_address(str(address[0]), int(address[1])),
        origin=origin,
        nat_type=nat_type,  # type: ignore[arg-type]
    )


def _public(
    candidates: tuple[Candidate, ...],
    address: tuple[Any, ...],
    nat_type: int,
    *,
    local: bool,
) -> common_pb2.PublicAddress:
    """The public side of one end of a direct path. Locally ``address`` is the socket's base:
    the peer sees its server-reflexive mapping if there is one. Remotely ``address`` is what
    the checks reached: a candidate the peer sent, or else a peer-reflexive address."""
    if local:
        reflexive = [
            c for c in candidates
            if c.kind == CandidateKind.SERVER_REFLEXIVE and c.base == tuple(address)
        ]  # fmt: skip
        if reflexive:
            return _address(reflexive[0].address, common_pb2.ADDRESS_ORIGIN_SERVER_REFLEXIVE,
                            nat_type)  # fmt: skip
        return _address(address, common_pb2.ADDRESS_ORIGIN_HOST, nat_type)
    for candidate in candidates:
        if tuple(candidate.address) == tuple(address):
            return _address(address, _ORIGINS[candidate.kind], nat_type)
    return _address(address, common_pb2.ADDRESS_ORIGIN_SERVER_REFLEXIVE, nat_type)


def serve(
    servicer: NetworkLayerServicer, address: str = "127.0.0.1:0", *, workers: int = 4
) -> tuple[grpc.Server, int]:
    """Start a gRPC server for ``servicer`` on ``address``; returns it and the bound port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    network_pb2_grpc.add_NetworkLayerServicer_to_server(servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind the NetworkLayer server to {address}")
    server.start()
    return server, port
