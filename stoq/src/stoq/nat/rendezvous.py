"""The rendezvous (signalling) service: authenticated peers pass opaque messages to each other
through a bootstrap node they are all connected to over STOQ.

What travels here (candidates, ICE credentials) is the caller's business: to this module a
payload is opaque bytes. What this module guarantees is *who* sent it: the server stamps every
signal with the peer id STOQ authenticated for the sender's connection (the SHA-256 key id of
the sender's certificate key, :attr:`stoq.identity.PeerIdentity.peer_id`), never anything the
sender wrote, so a recipient knows which peer signalled it and nobody can pose as another.

Protocol
--------

Each node keeps one STOQ connection to the rendezvous node and opens ONE bidirectional stream
on it. Every message below is one STOQ stream message (STOQ frames, seals and authenticates
it; :mod:`stoq.connection`). Integers are big-endian; peer ids are exactly 32 bytes.

1. The client's first message is the hello, the 17 ASCII bytes ``stoq/1 rendezvous``.
2. The server answers ``REGISTERED`` and the node is registered under its authenticated id.
3. From then on the client sends ``SEND`` messages and the server sends ``ACK``, ``ERROR`` and
   ``SIGNAL`` messages, in any interleaving::

     client -> server  SEND        01 | seq u32 | to_peer_id[32] | payload (0..16384 bytes)
     server -> client  SIGNAL      02 | from_peer_id[32] | payload
     server -> client  ERROR       03 | seq u32 | code u8 | reason (UTF-8, at most 256 bytes)
     server -> client  REGISTERED  04 | your_peer_id[32]       (once, answering the hello)
     server -> client  ACK         05 | seq u32                (the SEND with this seq was
                                                                handed to the target's stream)

   ``seq`` is chosen by the client (this client counts from 1 and skips 0); the server echoes
   it in the ``ACK`` or ``ERROR`` answering that ``SEND`` and never interprets it. ``seq`` 0 in
   an ``ERROR`` means "not about a SEND I could read" (a malformed message, a bad hello).

Error codes: 1 UNKNOWN_PEER (the target is not registered, or went away before delivery),
2 TOO_LARGE (payload above the server's limit), 3 MALFORMED, 4 RATE_LIMITED (the sender's
budget is spent, the recipient's queue is full, or the server holds its maximum of peers),
5 SELF (a SEND to one's own id). Decoders accept any code byte (newer servers may add codes).

Decoding is strict: an empty message, an unknown type, a wrong length (``REGISTERED`` exactly
33 bytes, ``ACK`` exactly 5, ``SEND`` at least 37, ``SIGNAL`` at least 33, ``ERROR`` at least
6), a reason over 256 bytes or not UTF-8, or a server-only type sent by a client (and the
reverse) is :class:`RendezvousDecodeError`. A ``SEND`` payload longer than 16384 bytes still
decodes: whether it is too large is the server's decision (``TOO_LARGE``, with the seq).

Server behaviour (:class:`RendezvousCore` decides, :class:`RendezvousServer` does the I/O):

* A hello other than the exact bytes is answered ``ERROR`` (seq 0, MALFORMED, with a reason)
  and the server ends its side of that stream (FIN) and stops reading it (STOP_SENDING with
  error code :data:`RESET_REFUSED`). A stream that sends no hello within ``hello_timeout``
  seconds, and any unidirectional stream, is reset with :data:`RESET_REFUSED`. Either way the
  server keeps serving everyone else, the same connection included.
* The same peer id registering again (a new connection, or a new stream on the same one)
  replaces the old registration: the old stream is reset with error code
  :data:`RESET_REPLACED`. A registration ends when its stream or connection does; when the
  client ends its side (FIN), the server writes the answers still queued and then ends its own.
* At most ``max_peers`` peers are registered at once; a hello from a further peer is answered
  ``ERROR`` (seq 0, RATE_LIMITED) and the stream is ended as for a bad hello.
* Each ``SEND`` is checked in this order: the connection's token bucket (``rate`` messages per
  second on average, bursts of ``burst``; every message counts) → RATE_LIMITED; the codec →
  MALFORMED (seq from bytes 1-4 of a message starting with 01 and at least 5 bytes long, else
  0); payload above ``max_payload`` → TOO_LARGE; target = sender → SELF; target not
  registered → UNKNOWN_PEER. Otherwise the server queues ``SIGNAL`` (from = the sender's
  authenticated id) on the target's stream and sends ``ACK`` once it was handed to that
  stream; if the target's queue already holds ``max_queued`` messages, RATE_LIMITED; if the
  target goes away first, UNKNOWN_PEER. An error never ends the sender's registration.
* Every stream is written by one task in order; the server stops reading a stream while
  ``max_queued`` answers to it are waiting to be written, so its own queue stays bounded.
  (Messages the client keeps sending then wait unread in the STOQ stream: STOQ hands QUIC
  data to its streams as it arrives, so not reading does not hold a peer back.)
* :meth:`RendezvousServer.close` resets every registered stream with :data:`RESET_SHUTDOWN`
  and closes the connections the server accepted.

Client behaviour (:class:`RendezvousClient`): :meth:`~RendezvousClient.open` sends the hello
and waits for ``REGISTERED`` (checking it names this node's own id); a reader task then matches
``ACK``/``ERROR`` to pending :meth:`~RendezvousClient.send` calls by seq and queues ``SIGNAL``
messages for :meth:`~RendezvousClient.receive`, holding at most ``max_queued``; beyond that
the reader waits until :meth:`~RendezvousClient.receive` takes one, and ACKs behind the waiting
signal wait too (a node that sends but never receives can stall itself). When the stream or
connection ends, pending and later calls raise :class:`~stoq.errors.ConnectionLost` (after the
queued signals were read); :meth:`~RendezvousClient.close` resets the stream and leaves the
connection open.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import struct
from collections.abc import Coroutine, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from stoq.connection import StoqConnection, Stream
from stoq.endpoint import Endpoint
from stoq.errors import ConnectionLost, StoqError, StreamClosed

__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_MAX_QUEUED",
    "DEFAULT_RATE",
    "HELLO",
    "MAX_PAYLOAD",
    "MAX_PEERS",
    "MAX_REASON",
    "PEER_ID_SIZE",
    "RESET_REFUSED",
    "RESET_REPLACED",
    "RESET_SHUTDOWN",
    "Accepted",
    "Ack",
    "Error",
    "ErrorCode",
    "Forward",
    "MessageType",
    "PayloadTooLarge",
    "PeerNotRegistered",
    "RateLimited",
    "Refused",
    "Registered",
    "RendezvousClient",
    "RendezvousCore",
    "RendezvousDecodeError",
    "RendezvousError",
    "RendezvousRefused",
    "RendezvousServer",
    "RendezvousTimeout",
    "Reply",
    "Send",
    "Signal",
    "decode_client_message",
    "decode_server_message",
    "encode_ack",
    "encode_error",
    "encode_registered",
    "encode_send",
    "encode_signal",
]

log = logging.getLogger(__name__)

HELLO = b"stoq/1 rendezvous"
PEER_ID_SIZE = 32
#: The largest payload the protocol carries (a server may set a lower limit).
MAX_PAYLOAD = 16384
#: The longest ERROR reason, in UTF-8 bytes.
MAX_REASON = 256
MAX_PEERS = 10000
DEFAULT_RATE = 100.0
DEFAULT_BURST = 200
#: Messages waiting to be written to one stream (server) or signals waiting to be read (client).
DEFAULT_MAX_QUEUED = 1024
DEFAULT_HELLO_TIMEOUT = 10.0

#: Stream error codes the server resets a stream with.
RESET_REPLACED = 1
RESET_REFUSED = 2
RESET_SHUTDOWN = 3

_U32 = struct.Struct(">I")
_MAX_SEQ = 0xFFFFFFFF


class MessageType(enum.IntEnum):
    SEND = 0x01
    SIGNAL = 0x02
    ERROR = 0x03
    REGISTERED = 0x04
    ACK = 0x05


class ErrorCode(enum.IntEnum):
    UNKNOWN_PEER = 1
    TOO_LARGE = 2
    MALFORMED = 3
    RATE_LIMITED = 4
    SELF = 5


# --- errors ---------------------------------------------------------------------------------


class RendezvousError(StoqError):
    """Base class of the rendezvous service's errors (also raised for invalid values)."""


class RendezvousDecodeError(RendezvousError):
    """Bytes that are not a valid rendezvous message (the reason says why)."""


class RendezvousTimeout(RendezvousError):
    """The server did not answer in time."""


class RendezvousRefused(RendezvousError):
    """The server answered ERROR: ``code`` (an :class:`ErrorCode` value, or a newer code),
    ``reason`` (the server's text) and ``seq`` (of the SEND it answers, 0 if none)."""

    def __init__(self, code: int, reason: str, seq: int = 0) -> None:
        self.code = code
        self.reason = reason
        self.seq = seq
        try:
            name = ErrorCode(code).name
        except ValueError:
            name = f"code {code}"
        super().__init__(f"the rendezvous server refused ({name}): {reason}")


class PeerNotRegistered(RendezvousRefused):
    """UNKNOWN_PEER: the target is not registered (or went away before delivery)."""


class PayloadTooLarge(RendezvousRefused):
    """TOO_LARGE: the payload is above the server's limit."""


class RateLimited(RendezvousRefused):
    """RATE_LIMITED: over the connection's budget, the recipient's queue full, or the server
    full."""


_REFUSALS: dict[int, type[RendezvousRefused]] = {
    ErrorCode.UNKNOWN_PEER: PeerNotRegistered,
    ErrorCode.TOO_LARGE: PayloadTooLarge,
    ErrorCode.RATE_LIMITED: RateLimited,
}


def _refusal(error: Error) -> RendezvousRefused:
    return _REFUSALS.get(error.code, RendezvousRefused)(error.code, error.reason, error.seq)


# --- messages -------------------------------------------------------------------------------


def _check_seq(seq: int) -> None:
    if not 0 <= seq <= _MAX_SEQ:
        raise RendezvousError(f"seq {seq} is not a u32")


def _check_peer_id(peer_id: bytes, what: str) -> None:
    if len(peer_id) != PEER_ID_SIZE:
        raise RendezvousError(f"{what} must be {PEER_ID_SIZE} bytes, not {len(peer_id)}")


@dataclass(frozen=True)
class Send:
    """Client → server: deliver ``payload`` to ``to_peer_id``."""

    seq: int
    to_peer_id: bytes
    payload: bytes

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        _check_peer_id(self.to_peer_id, "to_peer_id")


@dataclass(frozen=True)
class Registered:
    """Server → client: the hello is accepted; ``peer_id`` is the id STOQ authenticated."""

    peer_id: bytes

    def __post_init__(self) -> None:
        _check_peer_id(self.peer_id, "peer_id")


@dataclass(frozen=True)
class Ack:
    """Server → client: the SEND ``seq`` was handed to the target's stream."""

    seq: int

    def __post_init__(self) -> None:
        _check_seq(self.seq)


@dataclass(frozen=True)
class Error:
    """Server → client: the SEND ``seq`` (0: no SEND in particular) failed with ``code``."""

    seq: int
    code: int
    reason: str

    def __post_init__(self) -> None:
        _check_seq(self.seq)
        if not 0 <= self.code <= 0xFF:
            raise RendezvousError(f"error code {self.code} is not a u8")
        size = len(self.reason.encode("utf-8", errors="surrogatepass"))
        if size > MAX_REASON:
            raise RendezvousError(f"a {size}-byte reason exceeds {MAX_REASON} bytes")


@dataclass(frozen=True)
class Signal:
    """Server → client: ``payload`` from the authenticated peer ``from_peer_id``."""

    from_peer_id: bytes
    payload: bytes

    def __post_init__(self) -> None:
        _check_peer_id(self.from_peer_id, "from_peer_id")


ServerMessage = Registered | Ack | Error | Signal


def encode_send(message: Send) -> bytes:
    return bytes([MessageType.SEND]) + _U32.pack(message.seq) + message.to_peer_id + message.payload


def encode_registered(message: Registered) -> bytes:
    return bytes([MessageType.REGISTERED]) + message.peer_id


def encode_ack(message: Ack) -> bytes:
    return bytes([MessageType.ACK]) + _U32.pack(message.seq)


def encode_error(message: Error) -> bytes:
    try:
        reason = message.reason.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RendezvousError(f"the reason is not encodable as UTF-8: {exc}") from exc
    return bytes([MessageType.ERROR]) + _U32.pack(message.seq) + bytes([message.code]) + reason


def encode_signal(message: Signal) -> bytes:
    return bytes([MessageType.SIGNAL]) + message.from_peer_id + message.payload


def _type_name(value: int) -> str:
    try:
        return MessageType(value).name
    except ValueError:
        return f"0x{value:02x}"


def decode_client_message(data: bytes) -> Send:
    """The SEND in ``data``; :class:`RendezvousDecodeError` for anything else."""
    if not data:
        raise RendezvousDecodeError("an empty message")
    kind = data[0]
    if kind != MessageType.SEND:
        raise RendezvousDecodeError(f"message type {_type_name(kind)} is not sent by clients")
    if len(data) < 1 + 4 + PEER_ID_SIZE:
        raise RendezvousDecodeError(f"a SEND needs at least 37 bytes, not {len(data)}")
    return Send(_U32.unpack_from(data, 1)[0], bytes(data[5:37]), bytes(data[37:]))


def decode_server_message(data: bytes) -> ServerMessage:
    """The REGISTERED, ACK, ERROR or SIGNAL in ``data``; :class:`RendezvousDecodeError` for
    anything else."""
    if not data:
        raise RendezvousDecodeError("an empty message")
    kind = data[0]
    if kind == MessageType.REGISTERED:
        if len(data) != 1 + PEER_ID_SIZE:
            raise RendezvousDecodeError(f"a REGISTERED is 33 bytes, not {len(data)}")
        return Registered(bytes(data[1:]))
    if kind == MessageType.ACK:
        if len(data) != 5:
            raise RendezvousDecodeError(f"an ACK is 5 bytes, not {len(data)}")
        return Ack(_U32.unpack_from(data, 1)[0])
    if kind == MessageType.ERROR:
        if len(data) < 6:
            raise RendezvousDecodeError(f"an ERROR needs at least 6 bytes, not {len(data)}")
        raw_reason = bytes(data[6:])
        if len(raw_reason) > MAX_REASON:
            raise RendezvousDecodeError(
                f"an ERROR reason of {len(raw_reason)} bytes exceeds {MAX_REASON}"
            )
        try:
            reason = raw_reason.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RendezvousDecodeError(f"an ERROR reason is not UTF-8: {exc}") from exc
        return Error(_U32.unpack_from(data, 1)[0], data[5], reason)
    if kind == MessageType.SIGNAL:
        if len(data) < 1 + PEER_ID_SIZE:
            raise RendezvousDecodeError(f"a SIGNAL needs at least 33 bytes, not {len(data)}")
        return Signal(bytes(data[1:33]), bytes(data[33:]))
    raise RendezvousDecodeError(f"message type {_type_name(kind)} is not sent by servers")


def _error(seq: int, code: ErrorCode, reason: str) -> bytes:
    """An encoded ERROR, the reason cut to :data:`MAX_REASON` bytes on a character boundary."""
    raw = reason.encode("utf-8", errors="replace")[:MAX_REASON]
    return encode_error(Error(seq, code, raw.decode("utf-8", errors="ignore")))


# --- the sans-IO server core ----------------------------------------------------------------

H = TypeVar("H")


@dataclass(frozen=True)
class Accepted(Generic[H]):
    """The hello is accepted: send ``reply`` (REGISTERED); end ``replaced`` if not None."""

    reply: bytes
    replaced: H | None


@dataclass(frozen=True)
class Refused:
    """The hello is refused: send ``reply`` (ERROR) and end the stream."""

    reply: bytes
    reason: str


@dataclass(frozen=True)
class Reply:
    """Send ``message`` (ERROR) back to the sender."""

    message: bytes


@dataclass(frozen=True)
class Forward(Generic[H]):
    """Queue ``signal`` on ``target``'s stream; once it is handed over, answer ``ack``."""

    target: H
    seq: int
    signal: bytes
    ack: bytes


class _Bucket:
    __slots__ = ("last", "tokens")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last


class RendezvousCore(Generic[H]):
    """The server's decisions, without I/O. ``H`` is whatever the shell identifies a
    registration by; rate limits are kept per ``limiter_key`` (the shell uses the connection).
    """

    def __init__(
        self,
        *,
        max_payload: int = MAX_PAYLOAD,
        max_peers: int = MAX_PEERS,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
    ) -> None:
        if not 0 <= max_payload <= MAX_PAYLOAD:
            raise RendezvousError(f"max_payload must be 0..{MAX_PAYLOAD}, not {max_payload}")
        if max_peers < 1:
            raise RendezvousError("max_peers must be at least 1")
        if rate <= 0 or burst < 1:
            raise RendezvousError("a rate limit needs rate > 0 and burst >= 1")
        self.max_payload = max_payload
        self.max_peers = max_peers
        self.rate = rate
        self.burst = burst
        self._peers: dict[bytes, H] = {}
        self._buckets: dict[Hashable, _Bucket] = {}

    @property
    def registered(self) -> frozenset[bytes]:
        return frozenset(self._peers)

    def lookup(self, peer_id: bytes) -> H | None:
        return self._peers.get(peer_id)

    def hello(self, peer_id: bytes, handle: H, message: bytes) -> Accepted[H] | Refused:
        """Register ``peer_id`` as ``handle`` if ``message`` is the hello and there is room."""
        if message != HELLO:
            reason = f"expected the hello {HELLO.decode()!r}, got {len(message)} other bytes"
            return Refused(_error(0, ErrorCode.MALFORMED, reason), reason)
        replaced = self._peers.get(peer_id)
        if replaced is None and len(self._peers) >= self.max_peers:
            reason = f"the rendezvous server is full ({self.max_peers} peers registered)"
            return Refused(_error(0, ErrorCode.RATE_LIMITED, reason), reason)
        self._peers[peer_id] = handle
        return Accepted(encode_registered(Registered(peer_id)), replaced)

    def unregister(self, peer_id: bytes, handle: H) -> bool:
        """Forget ``peer_id`` if it is still registered as ``handle`` (not replaced since)."""
        if self._peers.get(peer_id) is handle:
            del self._peers[peer_id]
            return True
        return False

    def forget(self, limiter_key: Hashable) -> None:
        """Drop the token bucket of ``limiter_key`` (its connection ended)."""
        self._buckets.pop(limiter_key, None)

    def _allow(self, limiter_key: Hashable, now: float) -> bool:
        bucket = self._buckets.get(limiter_key)
        if bucket is None:
            bucket = self._buckets[limiter_key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(
            float(self.burst), bucket.tokens + max(0.0, now - bucket.last) * self.rate
        )
        bucket.last = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def on_message(
        self, sender_id: bytes, limiter_key: Hashable, data: bytes, now: float
    ) -> Forward[H] | Reply:
        """What to do with one message ``sender_id`` sent after registering."""
        seq = _U32.unpack_from(data, 1)[0] if len(data) >= 5 and data[0] == MessageType.SEND else 0
        if not self._allow(limiter_key, now):
            return Reply(
                _error(
                    seq,
                    ErrorCode.RATE_LIMITED,
                    f"over the limit of {self.rate:g} messages per second (bursts of {self.burst})",
                )
            )
        try:
            send = decode_client_message(data)
        except RendezvousDecodeError as exc:
            return Reply(_error(seq, ErrorCode.MALFORMED, str(exc)))
        if len(send.payload) > self.max_payload:
            return Reply(
                _error(
                    seq,
                    ErrorCode.TOO_LARGE,
                    f"a {len(send.payload)}-byte payload exceeds {self.max_payload} bytes",
                )
            )
        if send.to_peer_id == sender_id:
            return Reply(_error(seq, ErrorCode.SELF, "a peer cannot signal itself"))
        target = self._peers.get(send.to_peer_id)
        if target is None:
            return Reply(
                _error(
                    seq,
                    ErrorCode.UNKNOWN_PEER,
                    f"peer {send.to_peer_id.hex()[:16]}... is not registered",
                )
            )
        return Forward(
            target, seq, encode_signal(Signal(sender_id, send.payload)), encode_ack(Ack(seq))
        )


# --- the asyncio server ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Delivery:
    """A SIGNAL waiting on the target's stream, and whom to answer once it is handed over."""

    signal: bytes
    sender: _Registration
    seq: int
    ack: bytes


class _Registration:
    """One registered stream: its outgoing queue and the task writing it in order.

    ``closed``: unregistered, takes no more signals; the writer still writes the answers queued
    or still due (``in_flight``: this peer's signals queued on other streams, each owed an ACK
    or ERROR), then ends the stream. After a reset nothing more is written.
    """

    def __init__(
        self, core: RendezvousCore[_Registration], stream: Stream, peer_id: bytes, max_queued: int
    ) -> None:
        self.core = core
        self.stream = stream
        self.peer_id = peer_id
        self.max_queued = max_queued
        self.closed = False
        self.in_flight = 0
        self._reset = False
        self._outbox: collections.deque[bytes | _Delivery] = collections.deque()
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self.writer: asyncio.Task[None] | None = None

    def active(self) -> bool:
        """Whether the registration still holds (read afresh after every await)."""
        return not self.closed

    def post(self, message: bytes) -> None:
        """Queue a message to this peer (dropped once the stream was reset)."""
        if not self._reset:
            self._outbox.append(message)
            self._ready.set()

    def answer(self, message: bytes) -> None:
        """Queue the ACK or ERROR owed for one of this peer's signals."""
        self.in_flight -= 1
        self.post(message)
        self._ready.set()

    def deliver(self, delivery: _Delivery) -> bool:
        """Queue a signal for this peer; False if its queue is full."""
        if self.closed or len(self._outbox) >= self.max_queued:
            return False
        self._outbox.append(delivery)
        delivery.sender.in_flight += 1
        self._ready.set()
        return True

    async def wait_for_space(self) -> None:
        while len(self._outbox) >= self.max_queued and not self.closed:
            self._space.clear()
            await self._space.wait()

    def close(self, reset_code: int | None) -> None:
        """End the registration: unregister, fail the signals queued for this peer, and reset
        the stream (``reset_code``) or let the writer finish it once the answers are out."""
        if not self.closed:
            self.closed = True
            self.core.unregister(self.peer_id, self)
        if reset_code is not None and not self._reset:
            self._reset = True
            self.stream.reset(reset_code)
        kept: collections.deque[bytes | _Delivery] = collections.deque()
        for item in self._outbox:
            if isinstance(item, _Delivery):
                self._undeliverable(item)
            elif not self._reset:
                kept.append(item)
        self._outbox = kept
        self._ready.set()
        self._space.set()

    @staticmethod
    def _undeliverable(item: _Delivery) -> None:
        item.sender.answer(
            _error(
                item.seq,
                ErrorCode.UNKNOWN_PEER,
                "the peer went away before the signal was delivered",
            )
        )

    async def write(self) -> None:
        """Write the queue in order until the registration is over and nothing more is due."""
        try:
            while not self._reset:
                if not self._outbox:
                    if self.closed and self.in_flight <= 0:
                        await self.stream.finish()
                        return
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                item = self._outbox.popleft()
                self._space.set()
                if isinstance(item, bytes):
                    await self.stream.send(item)
                    continue
                try:
                    await self.stream.send(item.signal)
                except StoqError:
                    self._undeliverable(item)
                    raise
                item.sender.answer(item.ack)
        except StoqError as exc:
            log.debug("rendezvous stream of %s ended: %s", self.peer_id.hex()[:16], exc)
            self.close(RESET_REFUSED)
        except Exception:  # a bug must cost this registration, not the server
            log.exception("rendezvous stream writer failed")
            self.close(RESET_REFUSED)


class RendezvousServer:
    """The rendezvous service on an :class:`~stoq.endpoint.Endpoint`: it accepts every
    connection of the endpoint and serves every stream on them (see the module docstring)."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        max_payload: int = MAX_PAYLOAD,
        max_peers: int = MAX_PEERS,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        max_queued: int = DEFAULT_MAX_QUEUED,
        hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
    ) -> None:
        if max_queued < 1:
            raise RendezvousError("max_queued must be at least 1")
        if hello_timeout <= 0:
            raise RendezvousError("hello_timeout must be positive")
        self.endpoint = endpoint
        self.max_queued = max_queued
        self.hello_timeout = hello_timeout
        self._core: RendezvousCore[_Registration] = RendezvousCore(
            max_payload=max_payload, max_peers=max_peers, rate=rate, burst=burst
        )
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: set[StoqConnection] = set()
        self._registrations: set[_Registration] = set()
        self._closed = False

    @classmethod
    async def serve(
        cls,
        endpoint: Endpoint,
        *,
        max_payload: int = MAX_PAYLOAD,
        max_peers: int = MAX_PEERS,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        max_queued: int = DEFAULT_MAX_QUEUED,
        hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
    ) -> RendezvousServer:
        """A server already accepting on ``endpoint``."""
        server = cls(
            endpoint,
            max_payload=max_payload,
            max_peers=max_peers,
            rate=rate,
            burst=burst,
            max_queued=max_queued,
            hello_timeout=hello_timeout,
        )
        server.start()
        return server

    def start(self) -> asyncio.Task[None]:
        """Start the accept loop (once); the task ends when the endpoint or server closes."""
        if self._closed:
            raise RendezvousError("the rendezvous server is closed")
        if self._accepting is None:
            self._accepting = asyncio.ensure_future(self._accept_loop())
        return self._accepting

    @property
    def registered(self) -> frozenset[bytes]:
        """The peer ids registered now."""
        return self._core.registered

    async def close(self) -> None:
        """Stop: reset every registered stream, close the accepted connections."""
        if self._closed:
            return
        self._closed = True
        connections = list(self._connections)  # the handlers forget them when cancelled
        for registration in list(self._registrations):
            registration.close(RESET_SHUTDOWN)
        tasks = set(self._tasks)
        if self._accepting is not None:
            tasks.add(self._accepting)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for connection in connections:
            await connection.close(0, "rendezvous server closing")

    async def __aenter__(self) -> RendezvousServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_loop(self) -> None:
        while True:
            try:
                connection = await self.endpoint.accept()
            except ConnectionLost:
                log.info("the endpoint closed; the rendezvous server stops accepting")
                return
            self._spawn(self._serve_connection(connection))

    async def _serve_connection(self, connection: StoqConnection) -> None:
        self._connections.add(connection)
        try:
            peer = connection.peer
            log.info("rendezvous connection from %s (%s)", peer.name, peer.peer_id.hex()[:16])
            while True:
                stream = await connection.accept_stream()
                self._spawn(self._serve_stream(connection, stream))
        except StoqError as exc:
            log.info("rendezvous connection ended: %s", exc)
        except Exception:  # a bug must cost this connection, not the server
            log.exception("rendezvous connection handler failed")
            await connection.close(0, "internal error")
        finally:
            self._connections.discard(connection)
            self._core.forget(connection)

    async def _serve_stream(self, connection: StoqConnection, stream: Stream) -> None:
        if stream.unidirectional:
            log.info("refusing a unidirectional stream from %s", connection.peer.name)
            stream.reset(RESET_REFUSED)
            return
        try:
            async with asyncio.timeout(self.hello_timeout):
                hello = await stream.receive()
        except TimeoutError:
            log.info("no hello from %s within %g s", connection.peer.name, self.hello_timeout)
            stream.reset(RESET_REFUSED)
            return
        except StoqError as exc:
            log.info("stream from %s ended before its hello: %s", connection.peer.name, exc)
            return
        peer_id = connection.peer.peer_id
        registration = _Registration(self._core, stream, peer_id, self.max_queued)
        outcome = self._core.hello(peer_id, registration, hello)
        if isinstance(outcome, Refused):
            log.info("refusing %s: %s", connection.peer.name, outcome.reason)
            try:
                await stream.send(outcome.reply, end_stream=True)
            except StoqError as exc:
                log.info("could not tell %s: %s", connection.peer.name, exc)
            stream.reset(RESET_REFUSED)  # only STOP_SENDING: the answer and FIN still go out
            return
        if outcome.replaced is not None:
            log.info("%s registered again; the older registration ends", connection.peer.name)
            outcome.replaced.close(RESET_REPLACED)
        log.info("registered %s (%s)", connection.peer.name, peer_id.hex()[:16])
        self._registrations.add(registration)
        registration.post(outcome.reply)
        registration.writer = asyncio.ensure_future(registration.write())
        try:
            await self._read(connection, registration)
        except StoqError as exc:
            log.info("rendezvous stream of %s ended: %s", connection.peer.name, exc)
        except Exception:  # a bug must cost this registration, not the server
            log.exception("rendezvous stream handler failed")
            registration.close(RESET_REFUSED)
        finally:
            registration.close(None)
            self._registrations.discard(registration)
            try:
                await registration.writer
            finally:
                if not registration.writer.done():
                    registration.writer.cancel()

    async def _read(self, connection: StoqConnection, registration: _Registration) -> None:
        loop = asyncio.get_running_loop()
        stream = registration.stream
        while registration.active():
            await registration.wait_for_space()
            if not registration.active():
                return
            data = await stream.receive()
            if not registration.active():
                return
            decision = self._core.on_message(registration.peer_id, connection, data, loop.time())
            if isinstance(decision, Reply):
                registration.post(decision.message)
                continue
            delivery = _Delivery(decision.signal, registration, decision.seq, decision.ack)
            if not decision.target.deliver(delivery):
                registration.post(
                    _error(
                        decision.seq,
                        ErrorCode.RATE_LIMITED,
                        "the recipient's queue is full (it is not reading its signals)",
                    )
                )


# --- the client -----------------------------------------------------------------------------


def _lost(exc: StoqError) -> StoqError:
    """What the client raises once its stream is gone: the connection's own ConnectionLost,
    a ConnectionLost explaining a stream that ended, or the error itself."""
    if isinstance(exc, StreamClosed):
        return ConnectionLost(0, f"the rendezvous stream ended: {exc}")
    return exc


class RendezvousClient:
    """A node's registration at a rendezvous server. Make one with :meth:`open`."""

    def __init__(self, stream: Stream, peer_id: bytes, *, max_queued: int) -> None:
        self._stream = stream
        self._peer_id = peer_id
        self._max_queued = max_queued
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._next_seq = 1
        self._signals: collections.deque[Signal] = collections.deque()
        self._readable = asyncio.Event()
        self._space = asyncio.Event()
        self._error: StoqError | None = None
        self._closed_locally = False
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(
        cls,
        connection: StoqConnection,
        *,
        timeout: float = 10.0,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> RendezvousClient:
        """Register over ``connection`` (to the rendezvous node): open the stream, send the
        hello, wait up to ``timeout`` seconds for REGISTERED.

        :class:`RendezvousTimeout` without an answer; the server's ERROR as
        :class:`RendezvousRefused` (or a subclass); :class:`~stoq.errors.ConnectionLost` if the
        stream or connection ends first.
        """
        if max_queued < 1:
            raise RendezvousError("max_queued must be at least 1")
        stream = await connection.open_stream()
        try:
            try:
                async with asyncio.timeout(timeout):
                    await stream.send(HELLO)
                    first = await stream.receive()
            except TimeoutError:
                raise RendezvousTimeout(
                    f"the rendezvous server did not answer the hello within {timeout:g} s"
                ) from None
            except StoqError as exc:
                raise _lost(exc) from exc
            answer = decode_server_message(first)
            if isinstance(answer, Error):
                raise _refusal(answer)
            if not isinstance(answer, Registered):
                raise RendezvousDecodeError(
                    f"expected REGISTERED, the server sent {type(answer).__name__.upper()}"
                )
            own = connection.config.identity.peer_id
            if answer.peer_id != own:
                raise RendezvousError(
                    f"the server registered this node as {answer.peer_id.hex()}, "
                    f"but its id is {own.hex()}"
                )
        except BaseException:
            stream.reset(RESET_REFUSED)
            raise
        return cls(stream, answer.peer_id, max_queued=max_queued)

    @property
    def peer_id(self) -> bytes:
        """This node's id, as the server registered it."""
        return self._peer_id

    @property
    def connection(self) -> StoqConnection:
        """The connection to the rendezvous node (the caller's: :meth:`close` keeps it open)."""
        return self._stream.connection

    @property
    def closed(self) -> bool:
        """Whether the registration is over (closed locally, or the stream ended)."""
        return self._error is not None

    async def send(self, to_peer_id: bytes, payload: bytes, *, timeout: float = 10.0) -> None:
        """Signal ``payload`` to ``to_peer_id``; returns once the server acknowledged handing it
        to that peer's stream. Concurrent calls are fine.

        :class:`PeerNotRegistered`, :class:`PayloadTooLarge`, :class:`RateLimited` or
        :class:`RendezvousRefused` (SELF, MALFORMED, newer codes) when the server refuses;
        :class:`RendezvousTimeout` without an answer in ``timeout`` seconds;
        :class:`~stoq.errors.ConnectionLost` once the stream or connection is gone.
        """
        if self._error is not None:
            raise self._error
        seq = self._allocate_seq()
        message = encode_send(Send(seq, to_peer_id, payload))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[seq] = future
        try:
            try:
                await self._stream.send(message)
            except StoqError as exc:
                error = self._error or _lost(exc)
                if error is exc:
                    raise
                raise error from exc
            try:
                async with asyncio.timeout(timeout):
                    await future
            except TimeoutError:
                raise RendezvousTimeout(
                    f"the rendezvous server did not answer SEND {seq} within {timeout:g} s"
                ) from None
        finally:
            del self._pending[seq]
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: the error was raised another way

    def _allocate_seq(self) -> int:
        for _ in range(len(self._pending) + 1):
            seq = self._next_seq
            self._next_seq = 1 if seq >= _MAX_SEQ else seq + 1
            if seq not in self._pending:
                return seq
        raise RendezvousError("no free seq")  # unreachable: fewer than 2**32 - 1 pending

    async def receive(self) -> Signal:
        """The next signal (oldest first); :class:`~stoq.errors.ConnectionLost` once the
        registration is over and every queued signal was read."""
        while not self._signals:
            if self._error is not None:
                raise self._error
            self._readable.clear()
            await self._readable.wait()
        signal = self._signals.popleft()
        self._space.set()
        return signal

    def __aiter__(self) -> RendezvousClient:
        return self

    async def __anext__(self) -> Signal:
        """The next signal; iteration ends after :meth:`close`, errors propagate."""
        try:
            return await self.receive()
        except ConnectionLost:
            if self._closed_locally:
                raise StopAsyncIteration from None
            raise

    async def close(self) -> None:
        """End the registration (reset the stream; the connection stays open). Pending
        :meth:`send` calls raise :class:`~stoq.errors.ConnectionLost`."""
        if self._closed_locally:
            return
        self._closed_locally = True
        self._fail(ConnectionLost(0, "the rendezvous client was closed"))
        self._stream.reset(0)
        self._reader.cancel()
        await asyncio.wait({self._reader})

    async def __aenter__(self) -> RendezvousClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _fail(self, error: StoqError) -> None:
        if self._error is not None:
            return
        self._error = error
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._readable.set()

    async def _read(self) -> None:
        try:
            while True:
                message = decode_server_message(await self._stream.receive())
                if isinstance(message, Signal):
                    while len(self._signals) >= self._max_queued:
                        self._space.clear()
                        await self._space.wait()
                    self._signals.append(message)
                    self._readable.set()
                elif isinstance(message, Ack | Error):
                    self._answer(message)
                else:
                    raise RendezvousDecodeError("a second REGISTERED from the server")
        except RendezvousDecodeError as exc:
            log.warning("the rendezvous server sent a bad message: %s", exc)
            self._fail(exc)
        except StoqError as exc:
            self._fail(_lost(exc))
        self._stream.reset(RESET_REFUSED)  # abandon what is left of the stream either way

    def _answer(self, message: Ack | Error) -> None:
        future = self._pending.get(message.seq)
        if future is None or future.done():
            if isinstance(message, Error):
                log.warning("the rendezvous server reported: %s", _refusal(message))
            else:
                log.debug("an ACK for SEND %d, which is no longer waiting", message.seq)
            return
        if isinstance(message, Error):
            future.set_exception(_refusal(message))
        else:
            future.set_result(None)
