"""An authenticated STOQ connection and its streams: the asyncio shell around the QUIC engine.

A :class:`StoqConnection` owns one engine connection (:mod:`stoq.engine`). Its endpoint feeds it
received datagrams in batches; after each batch (and after application writes, coalesced to
once per event-loop turn) it handles the engine's events and transmits everything due in one
go. Once TLS is done it runs the post-quantum session (:mod:`stoq.session`) on the control
stream; only then is it handed to the application.

Application data. Every message on a stream is one length-prefixed frame (:mod:`stoq.framing`)
holding a record of the session's :class:`~trustchain.crypto.channel.SecureChannel`, sealed with
the stream id (8 bytes, big-endian) as associated data, so a record moved to another stream
does not open. QUIC datagrams (RFC 9221) carry one record each, with associated data
``"stoq/1 datagram"``. A record that does not open closes the connection
(:data:`~stoq.session.ERROR_PROTOCOL`): QUIC already authenticated the packet, so only a broken
or hostile peer sends one.

Backpressure. :meth:`Stream.send` returns once its record is handed to QUIC, but waits first
while more than ``stream_high_water`` bytes of the stream are unacknowledged: the state in which
flow control or the congestion window holds data back.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stoq import engine as eng
from stoq.config import StoqConfig
from stoq.errors import (
    ConnectionLost,
    MessageTooLarge,
    PeerRejected,
    ProtocolViolation,
    StoqError,
    StreamClosed,
)
from stoq.framing import MessageDecoder, frame
from stoq.identity import PeerIdentity
from stoq.session import (
    ERROR_INTERNAL,
    ERROR_MESSAGE_TOO_LARGE,
    ERROR_PEER_REJECTED,
    ERROR_PROTOCOL,
    MAX_CONTROL_MESSAGE,
    ClientSession,
    ServerSession,
    tls_binding,
)
from trustchain.crypto.channel import RECORD_OVERHEAD, SecureChannel
from trustchain.errors import CryptoError

if TYPE_CHECKING:
    from stoq.udp import Address, DatagramSender

__all__ = ["CONTROL_STREAM", "DATAGRAM_AD", "StoqConnection", "Stream"]

log = logging.getLogger(__name__)

CONTROL_STREAM = 0
DATAGRAM_AD = b"stoq/1 datagram"
#: QUIC overhead on a datagram frame in a 1-RTT packet: short header (1 + 20-byte CID at most +
#: 4-byte packet number), frame type and length, AEAD tag.
DATAGRAM_FRAME_OVERHEAD = 1 + 20 + 4 + 1 + 4 + 16
RECEIVED_DATAGRAMS_KEPT = 1024
#: Streams of one kind this side keeps open at once (the least any engine grants a peer).
MAX_OPEN_STREAMS = 100
_STREAM_AD = struct.Struct(">Q")


def _established(session: ClientSession | ServerSession) -> bool:
    """Whether ``session`` is established (read afresh: ``receive`` changes it)."""
    return session.established


class Stream:
    """One QUIC stream carrying sealed, length-prefixed messages."""

    def __init__(self, connection: StoqConnection, stream_id: int) -> None:
        self._connection = connection
        self.stream_id = stream_id
        self._ad = _STREAM_AD.pack(stream_id)
        self._decoder = MessageDecoder(connection.max_record_size)
        self._messages: collections.deque[bytes] = collections.deque()
        self._readable = asyncio.Event()
        self._receive_error: StoqError | None = None
        self._finished_receiving = False
        self._finished_sending = False
        self._send_error: StoqError | None = None
        self._over = False

    def _maybe_release(self) -> None:
        """Tell the connection once both directions are over (see open_stream)."""
        if self._over:
            return
        sending_over = not self.can_send or self._finished_sending or self._send_error is not None
        receiving_over = not self.can_receive or self._receive_error is not None
        if sending_over and receiving_over:
            self._over = True
            self._connection._stream_over(self)

    @property
    def connection(self) -> StoqConnection:
        """The connection this stream belongs to."""
        return self._connection

    @property
    def unidirectional(self) -> bool:
        return bool(self.stream_id & 2)

    @property
    def locally_initiated(self) -> bool:
        return bool(self.stream_id & 1) != self._connection.is_client

    @property
    def can_send(self) -> bool:
        return not (self.unidirectional and not self.locally_initiated)

    @property
    def can_receive(self) -> bool:
        return not (self.unidirectional and self.locally_initiated)

    # -- sending -----------------------------------------------------------------------------

    async def send(self, message: bytes, *, end_stream: bool = False) -> None:
        """Send one message; with ``end_stream`` it is the last. Waits while the stream's
        unacknowledged data is above the high-water mark.

        :class:`MessageTooLarge` above ``max_message_size``; :class:`StreamClosed` after
        :meth:`finish` or a peer's STOP_SENDING; :class:`ConnectionLost` once closed.
        """
        if not self.can_send:
            raise StreamClosed(f"stream {self.stream_id} is receive-only")
        connection = self._connection
        if len(message) > connection.config.max_message_size:
            raise MessageTooLarge(
                f"a {len(message)}-byte message exceeds the limit of "
                f"{connection.config.max_message_size}"
            )
        await connection._wait_writable(self)
        self._check_sendable()
        record = connection._channel_for_data().seal(message, self._ad)
        self._finished_sending = end_stream
        connection._send_stream_data(self.stream_id, frame(record), end_stream)
        if end_stream:
            self._maybe_release()

    async def finish(self) -> None:
        """End the stream (FIN); the peer's :meth:`receive` then raises :class:`StreamClosed`."""
        if not self.can_send:
            raise StreamClosed(f"stream {self.stream_id} is receive-only")
        self._check_sendable()
        self._finished_sending = True
        self._connection._send_stream_data(self.stream_id, b"", True)
        self._maybe_release()

    async def drain(self) -> None:
        """Wait until everything written so far has been acknowledged by the peer."""
        await self._connection._wait_drained(self)

    def reset(self, error_code: int = 0) -> None:
        """Abandon the stream both ways (RESET_STREAM and STOP_SENDING)."""
        self._connection._reset_stream(self, error_code)

    def _check_sendable(self) -> None:
        if self._send_error is not None:
            raise self._send_error
        if self._finished_sending:
            raise StreamClosed(f"stream {self.stream_id} is finished")
        self._connection._check_open()

    # -- receiving ---------------------------------------------------------------------------

    async def receive(self) -> bytes:
        """The next message. :class:`StreamClosed` when the peer finished (or reset) the stream
        and every message was read; :class:`ConnectionLost` if the connection closed first."""
        if not self.can_receive:
            raise StreamClosed(f"stream {self.stream_id} is send-only")
        while not self._messages:
            if self._receive_error is not None:
                raise self._receive_error
            self._readable.clear()
            await self._readable.wait()
        return self._messages.popleft()

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.receive()
        except StreamClosed:
            raise StopAsyncIteration from None

    def _on_data(self, data: bytes, end_stream: bool, channel: SecureChannel) -> None:
        if self._receive_error is not None:
            return
        try:
            for record in self._decoder.feed(data):
                self._messages.append(channel.open(record, self._ad))
            if end_stream:
                self._decoder.end()
        except CryptoError as exc:
            raise ProtocolViolation(
                f"a record on stream {self.stream_id} does not open: {exc}"
            ) from exc
        if end_stream:
            self._receive_error = StreamClosed(f"stream {self.stream_id} ended")
            self._maybe_release()
        self._readable.set()

    def _fail(self, error: StoqError, *, receiving: bool = True, sending: bool = True) -> None:
        if receiving and self._receive_error is None:
            self._receive_error = error
            self._readable.set()
        if sending and self._send_error is None:
            self._send_error = error
        self._maybe_release()


class StoqConnection:
    """An authenticated connection to one peer. Made by :class:`~stoq.endpoint.Endpoint`."""

    def __init__(
        self,
        *,
        config: StoqConfig,
        engine: eng.Engine,
        quic: eng.QuicConnectionLike,
        secrets_log: Any,
        socket: DatagramSender,
        remote: Address,
        is_client: bool,
        server_name: str | None = None,
        on_established: Callable[[StoqConnection], None] | None = None,
        on_closed: Callable[[StoqConnection], None] | None = None,
        on_connection_id: Callable[[StoqConnection, bytes, bool], None] | None = None,
    ) -> None:
        self.config = config
        self.is_client = is_client
        self._engine = engine
        self._quic = quic
        self._secrets_log = secrets_log
        self._socket = socket
        self._remote = remote
        self._server_name = server_name
        self._on_established = on_established
        self._on_closed = on_closed
        self._on_connection_id = on_connection_id
        self._loop = asyncio.get_running_loop()
        self._session: ClientSession | ServerSession | None = None
        self._control = MessageDecoder(MAX_CONTROL_MESSAGE)
        self._channel: SecureChannel | None = None
        self._peer: PeerIdentity | None = None
        self._streams: dict[int, Stream] = {}
        self._highest_remote: dict[int, int] = {}
        # Both engines grant a peer 100 or more concurrent streams of each kind (aioquic 128,
        # qh3 100) and raise the limit as streams end; the control stream takes one.
        self._slots = {
            False: asyncio.Semaphore(MAX_OPEN_STREAMS - 1),
            True: asyncio.Semaphore(MAX_OPEN_STREAMS),
        }
        self._incoming: asyncio.Queue[Stream] = asyncio.Queue()
        self._datagrams: collections.deque[bytes] = collections.deque(
            maxlen=RECEIVED_DATAGRAMS_KEPT
        )
        self._datagram_ready = asyncio.Event()
        self._established: asyncio.Future[None] = self._loop.create_future()
        self._terminated: asyncio.Future[None] = self._loop.create_future()
        self._error: StoqError | None = None
        self._writers = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_scheduled = False
        self._quic_failed = False
        self._keepalive: asyncio.TimerHandle | None = None
        self._last_sent = self._loop.time()
        self.tls_group: str | None = None
        self.max_record_size = config.max_message_size + RECORD_OVERHEAD
        self.datagrams_dropped = 0

    # -- public ------------------------------------------------------------------------------

    @property
    def peer(self) -> PeerIdentity:
        """The authenticated peer."""
        if self._peer is None:
            raise StoqError("the connection is not established")
        return self._peer

    @property
    def established(self) -> bool:
        """Whether the peer is authenticated and the post-quantum session is up."""
        return self._peer is not None

    @property
    def channel(self) -> SecureChannel:
        """The post-quantum channel protecting this connection's data."""
        return self._channel_for_data()

    @property
    def remote_address(self) -> tuple[str, int]:
        return (str(self._remote[0]), int(self._remote[1]))

    @property
    def family(self) -> int:
        return 6 if ":" in self.remote_address[0] else 4

    @property
    def engine(self) -> str:
        return self._engine.name

    @property
    def closed(self) -> bool:
        return self._terminated.done()

    async def wait_established(self) -> None:
        """Wait until TLS and the post-quantum session are done; raise why if they failed."""
        await asyncio.shield(self._established)

    async def open_stream(self, *, unidirectional: bool = False) -> Stream:
        """A new stream; the peer sees it when the first message arrives.

        Waits while :data:`MAX_OPEN_STREAMS` streams of the kind opened here are still open
        (the peer's stream limit); a stream stops counting once both directions ended.
        """
        self._check_open()
        acquire = asyncio.ensure_future(self._slots[unidirectional].acquire())
        waiters: set[asyncio.Future[Any]] = {acquire, self._terminated}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not acquire.done():
            acquire.cancel()
        elif self._terminated.done():
            self._slots[unidirectional].release()
        try:
            self._check_open()
            stream_id = await self._stream_credit(unidirectional)
        except BaseException:
            self._slots[unidirectional].release()
            raise
        # The stream is opened in the engine at once (an empty write): engines record a stream
        # only once data is sent on it, so two opens without a write would get the same id.
        self._quic.send_stream_data(stream_id, b"", False)
        stream = Stream(self, stream_id)
        self._streams[stream_id] = stream
        return stream

    async def _stream_credit(self, unidirectional: bool) -> int:
        """The id of the next stream, once the peer's stream limit (MAX_STREAMS) allows it.

        The slot semaphore frees a slot as soon as this side sees a stream end; the peer
        raises its limit a little later, when it has retired the stream too.
        """
        while True:
            stream_id = self._quic.get_next_available_stream_id(is_unidirectional=unidirectional)
            if not self._engine.stream_blocked(self._quic, stream_id):
                return stream_id
            self._writers.clear()
            waiter = asyncio.ensure_future(self._writers.wait())
            waiters: set[asyncio.Future[Any]] = {waiter, self._terminated}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            self._check_open()

    async def accept_stream(self) -> Stream:
        """The next stream the peer opened. :class:`ConnectionLost` once the connection ends."""
        while True:
            if not self._incoming.empty():
                return self._incoming.get_nowait()
            self._check_open()
            getter = asyncio.ensure_future(self._incoming.get())
            waiters: set[asyncio.Future[Any]] = {getter, self._terminated}
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                return getter.result()
            getter.cancel()

    @property
    def max_datagram_payload(self) -> int:
        """The largest payload :meth:`send_datagram` takes on this connection."""
        size = self.config.max_datagram_size
        base = eng.MIN_DATAGRAM if not isinstance(size, int) else size
        return base - DATAGRAM_FRAME_OVERHEAD - RECORD_OVERHEAD - 28

    def send_datagram(self, data: bytes) -> None:
        """Send ``data`` in one QUIC datagram frame (unreliable, unordered)."""
        self._check_open()
        if len(data) > self.max_datagram_payload:
            raise MessageTooLarge(
                f"a {len(data)}-byte datagram exceeds {self.max_datagram_payload} bytes"
            )
        self._quic.send_datagram_frame(self._channel_for_data().seal(data, DATAGRAM_AD))
        self._schedule_transmit()

    async def receive_datagram(self) -> bytes:
        """The next datagram received (the oldest are dropped past 1024 unread)."""
        while not self._datagrams:
            self._check_open()
            self._datagram_ready.clear()
            waiter = asyncio.ensure_future(self._datagram_ready.wait())
            waiters: set[asyncio.Future[Any]] = {waiter, self._terminated}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        return self._datagrams.popleft()

    async def ping(self) -> None:
        """Check liveness: a QUIC PING; returns when the connection is still open after it."""
        self._check_open()
        self._quic.send_ping(0)
        self._transmit()

    async def close(self, error_code: int = 0, reason: str = "") -> None:
        """Close gracefully with an application error code; waits for the close to be sent."""
        if not self._terminated.done():
            self._quic.close(error_code=error_code, reason_phrase=reason)
            self._transmit()
            self._finish(ConnectionLost(error_code, reason or "closed locally"))

    async def wait_closed(self) -> None:
        await asyncio.shield(self._terminated)

    # -- driving (called by the endpoint) ----------------------------------------------------

    def start(self) -> None:
        """Client: send the first flight."""
        self._quic.connect(self._remote, now=self._loop.time())
        self._transmit()

    def datagrams_received(self, datagrams: list[bytes], address: Address) -> None:
        if self._terminated.done():
            return
        try:
            self._engine.receive_datagrams(self._quic, datagrams, address, self._loop.time())
        except Exception as exc:  # a bug in the engine must cost this connection, not the node
            log.exception("QUIC engine failed on received data")
            self._abort(ERROR_INTERNAL, f"internal error: {exc!r}")
            return
        self._process()

    def abandon_handshake(self) -> None:
        """Close the connection if its session is not established by now."""
        if not self._established.done() and not self._terminated.done():
            self._abort(ERROR_PROTOCOL, "handshake timed out")

    def path_error(self, error: OSError) -> None:
        """The path is refused or unreachable (an ICMP error on the connected socket)."""
        if not self._terminated.done() and not self._established.done():
            self._finish(ConnectionLost(0, f"path refused: {error.strerror or error}"))

    # -- internals ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if self._terminated.done():
            raise ConnectionLost(0, "connection closed")

    def _channel_for_data(self) -> SecureChannel:
        if self._channel is None:
            self._check_open()
            raise StoqError("the connection is not established yet")
        return self._channel

    def _stream_over(self, stream: Stream) -> None:
        """Both directions of ``stream`` ended: forget it, and free its slot if it was ours."""
        self._streams.pop(stream.stream_id, None)
        if stream.locally_initiated:
            self._slots[stream.unidirectional].release()

    def _send_stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self._quic.send_stream_data(stream_id, data, end_stream)
        self._schedule_transmit()

    def _reset_stream(self, stream: Stream, error_code: int) -> None:
        if self._terminated.done():
            return
        try:
            if stream.can_send and not stream._finished_sending:
                self._quic.reset_stream(stream.stream_id, error_code)
            if stream.can_receive:
                self._quic.stop_stream(stream.stream_id, error_code)
        except ValueError:
            # The engine already discarded the stream: both directions ended (the peer's FIN
            # arrived, ours was acknowledged) before this side read the last message. There
            # is nothing left to abandon on the wire.
            log.debug("stream %d reset after the engine discarded it", stream.stream_id)
        stream._fail(StreamClosed(f"stream {stream.stream_id} was reset locally"))
        self._schedule_transmit()

    async def _wait_writable(self, stream: Stream) -> None:
        high_water = self.config.stream_high_water
        while self._engine.send_buffered(self._quic, stream.stream_id) > high_water:
            stream._check_sendable()
            self._writers.clear()
            await self._writers.wait()

    async def _wait_drained(self, stream: Stream) -> None:
        while self._engine.send_buffered(self._quic, stream.stream_id) > 0:
            stream._check_sendable()
            self._writers.clear()
            await self._writers.wait()

    def _schedule_transmit(self) -> None:
        if not self._transmit_scheduled:
            self._transmit_scheduled = True
            self._loop.call_soon(self._transmit)

    def _transmit(self) -> None:
        self._transmit_scheduled = False
        if self._quic_failed:
            return
        now = self._loop.time()
        try:
            datagrams = self._engine.datagrams_to_send(self._quic, now)
        except Exception as exc:  # an engine bug costs this connection, not the node
            log.exception("QUIC engine failed while sending")
            self._quic_failed = True
            self._finish(ConnectionLost(ERROR_INTERNAL, f"internal error: {exc!r}"))
            return
        if datagrams:
            self._socket.send(datagrams)
            self._last_sent = now
        timer_at = self._quic.get_timer()
        if timer_at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None if timer_at is None else self._loop.call_at(timer_at, self._on_timer)
            self._timer_at = timer_at

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self._quic.handle_timer(now=self._loop.time())
        except Exception as exc:  # an engine bug costs this connection, not the node
            log.exception("QUIC engine failed on its timer")
            self._quic_failed = True
            self._finish(ConnectionLost(ERROR_INTERNAL, f"internal error: {exc!r}"))
            return
        self._process()

    def _on_keepalive(self) -> None:
        self._keepalive = None
        if self._terminated.done() or self.config.keepalive is None:
            return
        if self._loop.time() - self._last_sent >= self.config.keepalive:
            self._quic.send_ping(0)
            self._transmit()
        self._keepalive = self._loop.call_later(self.config.keepalive, self._on_keepalive)

    def _process(self) -> None:
        try:
            for event in self._engine.events(self._quic):
                self._handle(event)
        except PeerRejected as exc:
            self._abort(ERROR_PEER_REJECTED, exc.reason, exc)
        except MessageTooLarge as exc:
            self._abort(ERROR_MESSAGE_TOO_LARGE, str(exc), exc)
        except ProtocolViolation as exc:
            self._abort(ERROR_PROTOCOL, str(exc), exc)
        if not self._terminated.done():
            self._transmit()
        self._writers.set()

    def _handle(self, event: eng.EngineEvent) -> None:
        if isinstance(event, eng.StreamData):
            if event.stream_id == CONTROL_STREAM:
                self._on_control(event.data, event.end_stream)
                return
            stream = self._streams.get(event.stream_id)
            if stream is None:
                if self._channel is None:
                    raise ProtocolViolation("application data before the session was established")
                kind = event.stream_id & 3
                if event.stream_id <= self._highest_remote.get(kind, -1) or (
                    bool(event.stream_id & 1) != self.is_client
                ):
                    return  # data for a stream already over (a late retransmission): ignore
                self._highest_remote[kind] = event.stream_id
                stream = Stream(self, event.stream_id)
                self._streams[event.stream_id] = stream
                self._incoming.put_nowait(stream)
            stream._on_data(event.data, event.end_stream, self._channel_for_data())
        elif isinstance(event, eng.DatagramReceived):
            if self._channel is None:
                raise ProtocolViolation("a datagram before the session was established")
            try:
                data = self._channel.open(event.data, DATAGRAM_AD)
            except CryptoError as exc:
                raise ProtocolViolation(f"a datagram record does not open: {exc}") from exc
            if len(self._datagrams) == self._datagrams.maxlen:
                self.datagrams_dropped += 1
            self._datagrams.append(data)
            self._datagram_ready.set()
        elif isinstance(event, eng.HandshakeDone):
            self._on_handshake(event)
        elif isinstance(event, eng.StreamReset):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._fail(
                    StreamClosed(
                        f"stream {event.stream_id} reset by the peer ({event.error_code})"
                    ),
                    sending=False,
                )
        elif isinstance(event, eng.StopSending):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._fail(
                    StreamClosed(f"the peer stopped reading stream {event.stream_id}"),
                    receiving=False,
                )
        elif isinstance(event, eng.ConnectionIdIssued | eng.ConnectionIdRetired):
            if self._on_connection_id is not None:
                issued = isinstance(event, eng.ConnectionIdIssued)
                self._on_connection_id(self, event.connection_id, issued)
        elif isinstance(event, eng.Terminated):
            self._finish(ConnectionLost(event.error_code, event.reason or "closed by the peer"))

    def _on_handshake(self, event: eng.HandshakeDone) -> None:
        if event.alpn != eng.ALPN:
            raise ProtocolViolation(f"the peer speaks {event.alpn!r}, not {eng.ALPN}")
        self.tls_group = event.group
        secrets = self._secrets_log.secrets
        binding = tls_binding(
            secrets.get("CLIENT_TRAFFIC_SECRET_0", b""), secrets.get("SERVER_TRAFFIC_SECRET_0", b"")
        )
        if self.is_client:
            session = ClientSession(
                self.config.identity,
                self.config.policy,
                binding,
                tls_peer_certificate=self._engine.peer_certificate_der(self._quic),
                server_name=self._server_name,
            )
            self._session = session
            self._quic.send_stream_data(CONTROL_STREAM, frame(session.start()))
        else:
            self._session = ServerSession(self.config.identity, self.config.policy, binding)

    def _on_control(self, data: bytes, end_stream: bool) -> None:
        session = self._session
        if session is None:
            raise ProtocolViolation("control data before the TLS handshake completed")
        if not self.is_client and end_stream:
            raise ProtocolViolation("the client ended the control stream")
        for message in self._control.feed(data):
            if session.established:
                raise ProtocolViolation("control message after the session was established")
            reply = session.receive(message)
            if reply is not None:
                self._quic.send_stream_data(CONTROL_STREAM, frame(reply))
            if _established(session):
                self._channel = session.channel
                self._peer = session.peer
                if not self._established.done():
                    self._established.set_result(None)
                if self.config.keepalive is not None:
                    self._keepalive = self._loop.call_later(
                        self.config.keepalive, self._on_keepalive
                    )
                if self._on_established is not None:
                    self._on_established(self)

    def _abort(self, error_code: int, reason: str, error: StoqError | None = None) -> None:
        if self._terminated.done():
            return
        self._quic.close(error_code=error_code, reason_phrase=reason[:200])
        self._transmit()
        self._finish(error if error is not None else ConnectionLost(error_code, reason))

    def _finish(self, error: StoqError) -> None:
        if self._terminated.done():
            return
        if self._error is None:
            self._error = error
        for handle in (self._timer, self._keepalive):
            if handle is not None:
                handle.cancel()
        self._timer = self._keepalive = None
        if not self._established.done():
            self._established.set_exception(self._error)
            self._established.exception()  # retrieved: a failed attempt need not be awaited
        for stream in list(self._streams.values()):
            stream._fail(self._error)
        self._terminated.set_result(None)
        self._datagram_ready.set()
        self._writers.set()
        if self._on_closed is not None:
            self._on_closed(self)
