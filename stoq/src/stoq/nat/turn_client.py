"""A TURN client (RFC 8656) over UDP or TCP: a sans-IO core and an asyncio shell.

Over TCP (``transport="tcp"``; RFC 8656 §12.5, RFC 8489 §6.2.2) the messages to and from the
server are cut from the stream by :class:`stoq.nat.framing.StreamFramer`; every request is sent
once (no retransmissions) and fails after :data:`DEFAULT_TCP_TIMEOUT` (39.5 s, configurable);
ChannelData is padded to 4 bytes; and the allocation lives only as long as the connection.

:class:`TurnClientCore` is the whole protocol logic of one allocation with no I/O: the caller
feeds it the datagrams that come from the TURN server (:meth:`TurnClientCore.handle_datagram`)
and the passing of time (:meth:`TurnClientCore.handle_timeout`, due at
:meth:`TurnClientCore.get_timer`), sends what :meth:`TurnClientCore.datagrams_to_send` returns
to the server, and reads the outcome from :meth:`TurnClientCore.next_event`. Every clock value
(``now``) comes from one monotonic clock of the caller's choice. :class:`TurnClient` drives a
core over a UDP socket with asyncio.

Requests (RFC 8656 §7-§11), each with a fresh 96-bit transaction id, FINGERPRINT last:

* Allocate: REQUESTED-TRANSPORT (``11 00 00 00``: UDP, protocol 17, then 3 RFFU bytes), LIFETIME
  (32-bit seconds), REQUESTED-ADDRESS-FAMILY (``02 00 00 00``) only when asking for IPv6;
* Refresh: LIFETIME (0 deletes the allocation);
* CreatePermission: one XOR-PEER-ADDRESS per peer IP (the port is ignored by the server; 0 here);
* ChannelBind: CHANNEL-NUMBER (``nn nn 00 00``: 16-bit number 0x4000-0x4FFF, 2 RFFU bytes) and
  XOR-PEER-ADDRESS.

Long-term credentials (RFC 8489 §9.2): the first Allocate goes without credentials; the
server's 401 brings REALM and NONCE, and from then on every request carries USERNAME, REALM,
NONCE and MESSAGE-INTEGRITY keyed with ``MD5(username ":" realm ":" SASLprep(password))``. If
the 401's NONCE starts with the RFC 8489 security-feature cookie ``obMatJos2`` and the 401 has
PASSWORD-ALGORITHMS, the client picks MD5 if listed, else SHA-256 (the key then is the SHA-256
of the same string), and echoes PASSWORD-ALGORITHMS and its PASSWORD-ALGORITHM (bid-down
protection, RFC 8489 §9.2.4). A 438 (Stale Nonce) answer makes the client resend the request
with the NONCE of that answer (a new transaction), at most :data:`MAX_STALE_NONCE_RETRIES` times
in a row; a 401 to a request that carried credentials is final (wrong username or password).

Answers are matched by transaction id and must come from the server's address; a success
response to an authenticated request must carry a valid MESSAGE-INTEGRITY, and an error
response that carries one must carry a valid one. Anything else is ignored (the reason is kept
in :attr:`TurnClientCore.ignored`): a stray or forged datagram never ends a transaction.
Requests are retransmitted on the RFC 8489 §6.2.1 schedule of :mod:`stoq.nat.stun_client`
(:class:`~stoq.nat.stun_client.BindingTransaction` supplies it) and end in
:class:`~stoq.nat.stun_client.StunTimeout` when it runs out.

Lifetimes: the allocation is refreshed automatically :func:`refresh_margin` seconds before it
expires (60 s, or half the lifetime when that is shorter); permissions (300 s at the server)
are renewed after 240 s and channel bindings (600 s) after 540 s, for as long as the allocation
lives. An allocation that reaches its expiry without a successful refresh ends with
:class:`AllocationExpired`.

Data (RFC 8656 §11, §12): to a peer the client sends a Send indication (XOR-PEER-ADDRESS and
DATA; no integrity, indications cannot be authenticated) or, once a channel to that peer is
bound, a ChannelData message::

    0        2        4
    +--------+--------+----------------------+--------------------+
    | channel| length |  data (length bytes) | padding (UDP: none) |
    +--------+--------+----------------------+--------------------+

with the 16-bit channel number (0x4000-0x4FFF) and the 16-bit data length. Over UDP padding to
4 bytes is optional (RFC 8656 §12.5): this client does not pad, and accepts ChannelData with or
without it. From the server come Data indications (XOR-PEER-ADDRESS, DATA) and ChannelData,
both reported as :class:`DataReceived`. The first byte tells them apart (RFC 7983): 0-3 is
STUN, 64-79 (0x40-0x4F) is ChannelData.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any

from stoq.nat import stun
from stoq.nat.channel_data import (
    CHANNEL_MAX,
    CHANNEL_MIN,
    decode_channel_data,
    encode_channel_data,
    is_channel_data,
)
from stoq.nat.framing import FramingError, StreamFramer
from stoq.nat.stun import AttributeType, MessageClass, Method, StunError
from stoq.nat.stun_client import (
    DEFAULT_RETRANSMISSIONS,
    DEFAULT_RM,
    DEFAULT_RTO,
    Address,
    BindingTransaction,
    StunResponseError,
    StunTimeout,
    format_address,
    normalize_address,
    open_client_socket,
    resolve_server,
    socket_address,
)

__all__ = [
    "CHANNEL_MAX",
    "CHANNEL_MIN",
    "CHANNEL_REFRESH_AFTER",
    "DEFAULT_LIFETIME",
    "DEFAULT_TCP_TIMEOUT",
    "MAX_STALE_NONCE_RETRIES",
    "PERMISSION_REFRESH_AFTER",
    "SECURITY_FEATURE_COOKIE",
    "AddressFamily",
    "Allocated",
    "AllocationExpired",
    "ChannelBound",
    "DataReceived",
    "Deallocated",
    "Event",
    "PermissionCreated",
    "Refreshed",
    "State",
    "StunResponseError",
    "StunTimeout",
    "TransactionFailed",
    "Transport",
    "TurnClient",
    "TurnClientCore",
    "TurnError",
    "TurnStateError",
    "allocate",
    "decode_channel_data",
    "encode_channel_data",
    "is_channel_data",
    "refresh_margin",
]

log = logging.getLogger(__name__)

DEFAULT_LIFETIME = 600
"""Seconds asked for in Allocate (the RFC 8656 default allocation lifetime)."""
PERMISSION_REFRESH_AFTER = 240.0
"""Seconds after which a permission (300 s at the server, RFC 8656 §9) is renewed."""
CHANNEL_REFRESH_AFTER = 540.0
"""Seconds after which a channel binding (600 s at the server, RFC 8656 §12) is renewed."""
MAX_STALE_NONCE_RETRIES = 3
SECURITY_FEATURE_COOKIE = "obMatJos2"
"""The NONCE prefix by which an RFC 8489 server announces its security features (§9.2)."""

DEFAULT_TCP_TIMEOUT = 39.5
"""Seconds a request over TCP waits for its answer (RFC 8489 §6.2.2: no retransmissions, and
the transaction fails after Ti = 39.5 s)."""

_UDP = 17
_RECEIVE_SIZE = 65535
_IGNORED_KEPT = 100


class TurnError(StunError):
    """The TURN server answered a request with an error response: ``code`` and ``reason`` from
    its ERROR-CODE (e.g. 401 Unauthorized for a wrong password, 403 Forbidden for a peer the
    server refuses, 437 Allocation Mismatch, 486 Allocation Quota Reached)."""

    def __init__(self, code: int, reason: str, method: int = Method.ALLOCATE) -> None:
        self.code = code
        self.reason = reason
        self.method = method
        super().__init__(f"TURN {_method_name(method)} error {code}: {reason}")


class TurnStateError(StunError):
    """A call that the allocation's state does not allow (for instance sending before the
    allocation exists or after it is gone, or to a peer without a permission)."""


def _method_name(method: int) -> str:
    try:
        return Method(method).name.replace("_", "-")
    except ValueError:
        return f"method {method:#05x}"


class AddressFamily(IntEnum):
    """REQUESTED-ADDRESS-FAMILY values (RFC 8656 §18.10)."""

    IPV4 = 0x01
    IPV6 = 0x02


class Transport(Enum):
    """How the client reaches the TURN server (peers are always reached over UDP)."""

    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"


class State(Enum):
    """Where an allocation is in its life."""

    NEW = "new"
    ALLOCATING = "allocating"
    ALLOCATED = "allocated"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"


def refresh_margin(lifetime: float) -> float:
    """How long before expiry an allocation of ``lifetime`` seconds is refreshed: 60 s, or half
    the lifetime when that is shorter."""
    return min(60.0, lifetime / 2)


# --- ChannelData ---------------------------------------------------------------------------------


# --- events --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """Base class of what :meth:`TurnClientCore.next_event` reports."""


@dataclass(frozen=True)
class Allocated(Event):
    """The Allocate request succeeded: the relayed address (XOR-RELAYED-ADDRESS), the client's
    address as the server saw it (XOR-MAPPED-ADDRESS) and the granted lifetime in seconds."""

    transaction_id: bytes
    relayed: Address
    mapped: Address | None
    lifetime: int


@dataclass(frozen=True)
class Refreshed(Event):
    """A Refresh request (explicit or automatic) succeeded with this granted lifetime."""

    transaction_id: bytes
    lifetime: int


@dataclass(frozen=True)
class Deallocated(Event):
    """The allocation was deleted (Refresh with LIFETIME 0 answered, or 437: already gone)."""

    transaction_id: bytes


@dataclass(frozen=True)
class PermissionCreated(Event):
    """A CreatePermission request succeeded for these peer IPs."""

    transaction_id: bytes
    peer_ips: tuple[str, ...]


@dataclass(frozen=True)
class ChannelBound(Event):
    """A ChannelBind request succeeded: ``channel`` now stands for ``peer``."""

    transaction_id: bytes
    peer: Address
    channel: int


@dataclass(frozen=True)
class TransactionFailed(Event):
    """A request ended without success: ``error`` is a :class:`TurnError`,
    :class:`~stoq.nat.stun_client.StunTimeout` or
    :class:`~stoq.nat.stun_client.StunResponseError`."""

    transaction_id: bytes
    method: int
    error: StunError


@dataclass(frozen=True)
class AllocationExpired(Event):
    """The allocation reached its expiry without a successful refresh."""


@dataclass(frozen=True)
class DataReceived(Event):
    """Data from ``peer`` relayed by the server, by Data indication (``channel`` None) or by
    ChannelData on ``channel``."""

    peer: Address
    data: bytes
    channel: int | None = None


# --- the core ------------------------------------------------------------------------------------


class _Schedule(BindingTransaction):
    """The RFC 8489 §6.2.1 retransmission schedule of :class:`BindingTransaction`, carrying a
    TURN request instead of a Binding request (only :meth:`start` and :meth:`handle_timeout`
    are used)."""

    def __init__(
        self,
        server: Address,
        request: bytes,
        transaction_id: bytes,
        *,
        rto: float,
        retransmissions: int,
        rm: int,
        timeout: float | None,
    ) -> None:
        super().__init__(
            server,
            rto=rto,
            retransmissions=retransmissions,
            rm=rm,
            timeout=timeout,
            transaction_id=transaction_id,
        )
        self.request = request


@dataclass
class _Pending:
    """A request in flight. ``origin`` is the transaction id the caller was given (a 401 or 438
    retry goes out under a new id)."""

    origin: bytes
    method: int
    attributes: tuple[stun.Attribute, ...]
    schedule: _Schedule
    authenticated: bool
    stale_retries: int = 0
    automatic: bool = False
    peer_ips: tuple[str, ...] = ()
    peer: Address | None = None
    channel: int | None = None
    lifetime: int = 0


@dataclass(frozen=True)
class _Auth:
    realm: str
    nonce: str
    key: bytes
    algorithm: stun.PasswordAlgorithm | None  # None: no PASSWORD-ALGORITHM(S) echoed
    algorithms: bytes | None


def _ip_text(ip: str) -> str:
    try:
        return ipaddress.ip_address(ip.split("%", 1)[0]).compressed
    except ValueError:
        raise TurnStateError(f"not an IP address: {ip!r}") from None


class TurnClientCore:
    """One TURN allocation over UDP, as a sans-IO state machine (see the module docstring).

    ``server`` is the server's ``(ip, port)``; ``username`` and ``password`` the long-term
    credentials; ``family`` the relayed address family asked for; ``lifetime`` the seconds
    asked for in Allocate and in automatic refreshes. ``rto``, ``retransmissions``, ``rm`` and
    ``timeout`` set the retransmission schedule of every request, as in
    :class:`~stoq.nat.stun_client.BindingTransaction`. With ``transport`` TCP the messages
    handed in and out are whole stream frames: every request is sent once, never retransmitted
    (RFC 8489 §6.2.2), and fails after ``timeout`` seconds (default
    :data:`DEFAULT_TCP_TIMEOUT`); ``rto``, ``retransmissions`` and ``rm`` are not used, and
    ChannelData is padded to a multiple of 4 bytes (RFC 8656 §12.5).
    """

    def __init__(
        self,
        server: Address,
        username: str,
        password: str,
        *,
        family: AddressFamily = AddressFamily.IPV4,
        lifetime: int = DEFAULT_LIFETIME,
        software: str | None = None,
        rto: float = DEFAULT_RTO,
        retransmissions: int = DEFAULT_RETRANSMISSIONS,
        rm: int = DEFAULT_RM,
        timeout: float | None = None,
        transport: Transport | str = Transport.UDP,
    ) -> None:
        if not 0 < lifetime <= 0xFFFFFFFF:
            raise ValueError(f"lifetime must be 1 to 2**32-1 seconds, not {lifetime}")
        self.server = normalize_address(server)
        self.username = username
        self._password = password
        self.family = AddressFamily(family)
        self.requested_lifetime = lifetime
        self.software = software
        self.transport = Transport(transport)
        self._timing: dict[str, Any] = {
            "rto": rto,
            "retransmissions": retransmissions,
            "rm": rm,
            "timeout": timeout,
        }
        if self.transport != Transport.UDP:
            wait = DEFAULT_TCP_TIMEOUT if timeout is None else timeout
            # One send and one wait of ``wait`` seconds: the schedule's last wait is rm * rto.
            self._timing = {"rto": wait, "retransmissions": 1, "rm": 1, "timeout": wait}
        # Fail now, not at the first request, on a bad schedule.
        BindingTransaction(self.server, **self._timing)
        self.state = State.NEW
        #: The relayed transport address, once allocated.
        self.relayed: Address | None = None
        #: Our address as the server saw it (XOR-MAPPED-ADDRESS of the Allocate answer).
        self.mapped: Address | None = None
        #: The lifetime last granted, seconds.
        self.lifetime = 0
        #: When the allocation expires (the ``now`` clock), once allocated.
        self.expires_at: float | None = None
        self._refresh_at: float | None = None
        self._auth: _Auth | None = None
        self._pending: dict[bytes, _Pending] = {}
        self._outgoing: list[bytes] = []
        self._events: collections.deque[Event] = collections.deque()
        #: Installed permissions: peer IP -> when to renew.
        self.permissions: dict[str, float] = {}
        #: Bound channels: peer -> channel number.
        self.channels: dict[Address, int] = {}
        self._channel_refresh: dict[Address, float] = {}
        self._channel_peers: dict[int, Address] = {}  # bound or being bound
        self._next_channel = CHANNEL_MIN
        #: Why recent datagrams were ignored (the last 100).
        self.ignored: collections.deque[str] = collections.deque(maxlen=_IGNORED_KEPT)

    # --- what the driver calls ---

    def datagrams_to_send(self) -> list[bytes]:
        """Every datagram due to the server since the last call, in order."""
        out, self._outgoing = self._outgoing, []
        return out

    def next_event(self) -> Event | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When :meth:`handle_timeout` is next due, or None if nothing is scheduled."""
        times = [p.schedule.deadline for p in self._pending.values()]
        if self.state == State.ALLOCATED:
            assert self.expires_at is not None
            times.append(self.expires_at)
            if self._refresh_at is not None:
                times.append(self._refresh_at)
            times.extend(self.permissions.values())
            times.extend(self._channel_refresh.values())
        return min(times) if times else None

    def handle_timeout(self, now: float) -> None:
        """Retransmit, time out, refresh and expire whatever is due at ``now``."""
        for tid, pending in list(self._pending.items()):
            try:
                again = pending.schedule.handle_timeout(now)
            except StunTimeout as exc:
                del self._pending[tid]
                self._fail(pending, exc)
                continue
            if again is not None:
                self._outgoing.append(again)
        if self.state != State.ALLOCATED:
            return
        assert self.expires_at is not None
        if now >= self.expires_at:
            self._lose(AllocationExpired())
            return
        if self._refresh_at is not None and now >= self._refresh_at:
            self._refresh_at = None  # until the answer sets the next one
            self._request(
                Method.REFRESH,
                self._lifetime_attribute(self.requested_lifetime),
                now,
                automatic=True,
                lifetime=self.requested_lifetime,
            )
        due = [ip for ip, at in self.permissions.items() if now >= at]
        if due:
            for ip in due:
                del self.permissions[ip]  # back when the answer comes
            self._create_permission(due, now, automatic=True)
        for peer, at in list(self._channel_refresh.items()):
            if now >= at:
                del self._channel_refresh[peer]
                self._channel_bind(peer, self.channels[peer], now, automatic=True)

    def handle_datagram(self, data: bytes, source: Address, now: float) -> None:
        """Take one datagram that arrived from ``source``."""
        if normalize_address(source) != self.server:
            self.ignored.append(f"a datagram from {format_address(source)}, not the server")
            return
        if is_channel_data(data):
            self._channel_data(data)
            return
        if not stun.is_stun(data):
            self.ignored.append("neither STUN nor ChannelData")
            return
        try:
            message = stun.decode(data)
        except stun.StunDecodeError as exc:
            self.ignored.append(f"malformed STUN message: {exc.reason}")
            return
        if message.get(AttributeType.FINGERPRINT) is not None:
            try:
                stun.verify_fingerprint(data)
            except stun.IntegrityError:
                self.ignored.append("wrong FINGERPRINT")
                return
        if message.message_class == MessageClass.INDICATION:
            self._indication(message)
        elif message.message_class == MessageClass.REQUEST:
            self.ignored.append(f"a {_method_name(message.method)} request from the server")
        else:
            self._response(message, data, now)

    # --- what the application calls ---

    def allocate(self, now: float) -> bytes:
        """Start the Allocate request; returns its transaction id (as in the events)."""
        if self.state != State.NEW:
            raise TurnStateError(f"allocate() is for a new client, this one is {self.state.value}")
        self.state = State.ALLOCATING
        attributes = [
            stun.Attribute(AttributeType.REQUESTED_TRANSPORT, bytes((_UDP, 0, 0, 0))),
            *self._lifetime_attribute(self.requested_lifetime),
        ]
        if self.family == AddressFamily.IPV6:
            attributes.append(
                stun.Attribute(
                    AttributeType.REQUESTED_ADDRESS_FAMILY, bytes((self.family, 0, 0, 0))
                )
            )
        return self._request(Method.ALLOCATE, tuple(attributes), now)

    def refresh(self, now: float, lifetime: int | None = None) -> bytes:
        """Start a Refresh request asking for ``lifetime`` seconds (default: the lifetime asked
        for at allocation); returns its transaction id."""
        self._require_allocated("refresh()")
        seconds = self.requested_lifetime if lifetime is None else lifetime
        if not 0 < seconds <= 0xFFFFFFFF:
            raise ValueError(f"lifetime must be 1 to 2**32-1 seconds, not {seconds}")
        return self._request(
            Method.REFRESH, self._lifetime_attribute(seconds), now, lifetime=seconds
        )

    def close(self, now: float) -> bytes:
        """Start deleting the allocation (Refresh with LIFETIME 0); returns the transaction id.
        Automatic refreshes stop at once."""
        self._require_allocated("close()")
        self.state = State.CLOSING
        return self._request(Method.REFRESH, self._lifetime_attribute(0), now, lifetime=0)

    def create_permission(self, peer_ips: Iterable[str], now: float) -> bytes:
        """Start a CreatePermission request for ``peer_ips``; returns its transaction id."""
        self._require_allocated("create_permission()")
        ips = [self._peer_ip(ip) for ip in peer_ips]
        if not ips:
            raise TurnStateError("create_permission() needs at least one peer IP")
        return self._create_permission(ips, now)

    def channel_bind(self, peer: Address, now: float) -> tuple[bytes, int]:
        """Start binding a channel to ``peer`` (``(ip, port)``); returns the transaction id and
        the channel number (the one already bound to ``peer``, if any: that renews it)."""
        self._require_allocated("channel_bind()")
        peer = (self._peer_ip(peer[0]), peer[1])
        channel = self.channels.get(peer)
        if channel is None:
            channel = next((c for c, p in self._channel_peers.items() if p == peer), None)
        if channel is None:
            if self._next_channel > CHANNEL_MAX:
                raise TurnStateError("all 4096 channel numbers are in use")
            channel = self._next_channel
            self._next_channel += 1
        return self._channel_bind(peer, channel, now), channel

    def send(self, peer: Address, data: bytes) -> bytes:
        """The datagram that relays ``data`` to ``peer``: ChannelData if a channel to ``peer``
        is bound, else a Send indication. :class:`TurnStateError` without an allocation or
        without a permission for the peer's IP."""
        self._require_allocated("send()")
        peer = (self._peer_ip(peer[0]), peer[1])
        channel = self.channels.get(peer)
        if channel is not None:
            return encode_channel_data(channel, data, pad=self.transport != Transport.UDP)
        if peer[0] not in self.permissions:
            raise TurnStateError(
                f"no permission for {peer[0]}: call create_permission() (or channel_bind()) first"
            )
        tid = stun.new_transaction_id()
        message = stun.Message(
            Method.SEND,
            MessageClass.INDICATION,
            tid,
            (
                stun.Attribute(
                    AttributeType.XOR_PEER_ADDRESS, stun.encode_xor_address(peer[0], peer[1], tid)
                ),
                stun.Attribute(AttributeType.DATA, bytes(data)),
            ),
        )
        return stun.encode(message)

    # --- requests ---

    @staticmethod
    def _lifetime_attribute(seconds: int) -> tuple[stun.Attribute, ...]:
        return (stun.Attribute(AttributeType.LIFETIME, seconds.to_bytes(4, "big")),)

    def _require_allocated(self, what: str) -> None:
        if self.state != State.ALLOCATED:
            raise TurnStateError(f"{what} needs an allocation; this client is {self.state.value}")

    def _peer_ip(self, ip: str) -> str:
        text = _ip_text(ip)
        is_v6 = ":" in text
        if is_v6 != (self.family == AddressFamily.IPV6):
            raise TurnStateError(
                f"peer {text} is not of the relayed address's family ({self.family.name})"
            )
        return text

    def _create_permission(self, ips: list[str], now: float, *, automatic: bool = False) -> bytes:
        tid = stun.new_transaction_id()
        attributes = tuple(
            stun.Attribute(AttributeType.XOR_PEER_ADDRESS, stun.encode_xor_address(ip, 0, tid))
            for ip in ips
        )
        return self._request(
            Method.CREATE_PERMISSION,
            attributes,
            now,
            transaction_id=tid,
            automatic=automatic,
            peer_ips=tuple(ips),
        )

    def _channel_bind(
        self, peer: Address, channel: int, now: float, *, automatic: bool = False
    ) -> bytes:
        self._channel_peers[channel] = peer
        tid = stun.new_transaction_id()
        attributes = (
            stun.Attribute(AttributeType.CHANNEL_NUMBER, channel.to_bytes(2, "big") + b"\0\0"),
            stun.Attribute(
                AttributeType.XOR_PEER_ADDRESS, stun.encode_xor_address(peer[0], peer[1], tid)
            ),
        )
        return self._request(
            Method.CHANNEL_BIND,
            attributes,
            now,
            transaction_id=tid,
            automatic=automatic,
            peer=peer,
            channel=channel,
        )

    def _request(
        self,
        method: int,
        attributes: tuple[stun.Attribute, ...],
        now: float,
        *,
        transaction_id: bytes | None = None,
        automatic: bool = False,
        peer_ips: tuple[str, ...] = (),
        peer: Address | None = None,
        channel: int | None = None,
        lifetime: int = 0,
    ) -> bytes:
        tid = transaction_id or stun.new_transaction_id()
        pending = _Pending(
            origin=tid,
            method=method,
            attributes=attributes,
            schedule=self._schedule(method, attributes, tid),
            authenticated=self._auth is not None,
            automatic=automatic,
            peer_ips=peer_ips,
            peer=peer,
            channel=channel,
            lifetime=lifetime,
        )
        self._start(tid, pending, now)
        return tid

    def _start(self, tid: bytes, pending: _Pending, now: float) -> None:
        self._pending[tid] = pending
        self._outgoing.append(pending.schedule.start(now))

    def _schedule(
        self, method: int, attributes: tuple[stun.Attribute, ...], tid: bytes
    ) -> _Schedule:
        """The encoded request, with the credentials known now, in its schedule."""
        extra: list[stun.Attribute] = []
        if self.software is not None:
            extra.append(stun.Attribute(AttributeType.SOFTWARE, self.software.encode()))
        key: bytes | None = None
        auth = self._auth
        if auth is not None:
            extra += [
                stun.Attribute(AttributeType.USERNAME, self.username.encode()),
                stun.Attribute(AttributeType.REALM, auth.realm.encode()),
                stun.Attribute(AttributeType.NONCE, auth.nonce.encode()),
            ]
            if auth.algorithm is not None and auth.algorithms is not None:
                extra += [
                    stun.Attribute(AttributeType.PASSWORD_ALGORITHMS, auth.algorithms),
                    stun.Attribute(
                        AttributeType.PASSWORD_ALGORITHM,
                        stun.encode_password_algorithm(auth.algorithm),
                    ),
                ]
            key = auth.key
        message = stun.Message(method, MessageClass.REQUEST, tid, (*attributes, *extra))
        request = stun.encode(message, integrity_key=key, fingerprint=True)
        return _Schedule(self.server, request, tid, **self._timing)

    def _retry(self, old_tid: bytes, pending: _Pending, now: float) -> None:
        """Send ``pending`` again as a new transaction with the current credentials. The
        XOR-PEER-ADDRESS values depend on the transaction id, so they are re-encoded."""
        tid = stun.new_transaction_id()
        attributes = []
        for attribute in pending.attributes:
            if attribute.type == AttributeType.XOR_PEER_ADDRESS:
                ip, port = stun.decode_xor_address(attribute.value, old_tid)
                attribute = stun.Attribute(
                    AttributeType.XOR_PEER_ADDRESS, stun.encode_xor_address(ip, port, tid)
                )
            attributes.append(attribute)
        pending.attributes = tuple(attributes)
        pending.schedule = self._schedule(pending.method, pending.attributes, tid)
        pending.authenticated = True
        self._start(tid, pending, now)

    # --- answers ---

    def _response(self, message: stun.Message, data: bytes, now: float) -> None:
        pending = self._pending.get(message.transaction_id)
        if pending is None:
            self.ignored.append("an answer to no pending request")
            return
        if message.method != pending.method:
            self.ignored.append(
                f"a {_method_name(message.method)} answer to a {_method_name(pending.method)}"
            )
            return
        has_integrity = message.get(AttributeType.MESSAGE_INTEGRITY) is not None
        if pending.authenticated and (
            message.message_class == MessageClass.SUCCESS or has_integrity
        ):
            assert self._auth is not None
            try:
                stun.verify_integrity(data, self._auth.key)
            except stun.IntegrityError as exc:
                self.ignored.append(f"an answer with a bad MESSAGE-INTEGRITY: {exc.reason}")
                return
        tid = message.transaction_id
        del self._pending[tid]
        try:
            if message.message_class == MessageClass.ERROR:
                self._error(tid, pending, message, now)
            else:
                self._success(pending, message, now)
        except StunError as exc:
            self._fail(pending, exc)

    def _error(self, tid: bytes, pending: _Pending, message: stun.Message, now: float) -> None:
        error = message.error()
        if error is None:
            raise StunResponseError(
                f"the server's {_method_name(pending.method)} error response has no ERROR-CODE"
            )
        code, reason = error
        if code == 401 and not pending.authenticated:
            self._auth = self._challenge(message)
            self._retry(tid, pending, now)
            return
        if code == 438 and pending.stale_retries < MAX_STALE_NONCE_RETRIES:
            nonce = message.nonce()
            if nonce is None or self._auth is None:
                raise StunResponseError("a 438 (Stale Nonce) answer without a NONCE")
            realm = message.realm() or self._auth.realm
            if realm != self._auth.realm:
                self._auth = self._challenge(message)
            else:
                self._auth = self._with_nonce(self._auth, nonce, message)
            pending.stale_retries += 1
            self._retry(tid, pending, now)
            return
        if code == 437 and pending.method == Method.REFRESH and pending.lifetime == 0:
            self._deleted(pending.origin)  # the allocation was already gone
            return
        raise TurnError(code, reason, pending.method)

    def _challenge(self, message: stun.Message) -> _Auth:
        """Credentials from a 401 (or a 438 with a new realm): REALM, NONCE and the password
        algorithm."""
        realm = message.realm()
        nonce = message.nonce()
        if realm is None or nonce is None:
            raise StunResponseError("a 401 answer without REALM and NONCE")
        return self._with_nonce(
            _Auth(realm, nonce, b"", None, None), nonce, message, new_realm=True
        )

    def _with_nonce(
        self, auth: _Auth, nonce: str, message: stun.Message, *, new_realm: bool = False
    ) -> _Auth:
        algorithm = auth.algorithm
        algorithms = auth.algorithms
        offered = message.get(AttributeType.PASSWORD_ALGORITHMS)
        if nonce.startswith(SECURITY_FEATURE_COOKIE) and offered is not None:
            listed = [a for a, _ in stun.decode_password_algorithms(offered)]
            if stun.PasswordAlgorithm.MD5 in listed:
                algorithm = stun.PasswordAlgorithm.MD5
            elif stun.PasswordAlgorithm.SHA256 in listed:
                algorithm = stun.PasswordAlgorithm.SHA256
            else:
                raise StunResponseError(
                    f"the server offers no password algorithm this client knows: {listed}"
                )
            algorithms = offered
        elif new_realm:
            algorithm, algorithms = None, None
        key = auth.key
        if new_realm or algorithm != auth.algorithm:
            key = stun.long_term_key(
                self.username,
                auth.realm,
                self._password,
                algorithm or stun.PasswordAlgorithm.MD5,
            )
        return _Auth(auth.realm, nonce, key, algorithm, algorithms)

    def _lifetime(self, message: stun.Message, pending: _Pending) -> int:
        value = message.get(AttributeType.LIFETIME)
        if value is None:
            if pending.method == Method.REFRESH:
                return pending.lifetime  # RFC 8656 §7.3 allows it to be absent on a delete
            raise StunResponseError("the Allocate success response has no LIFETIME")
        if len(value) != 4:
            raise StunResponseError(f"a LIFETIME value of {len(value)} bytes, not 4")
        return int.from_bytes(value, "big")

    def _address(self, message: stun.Message, kind: int, what: str) -> Address | None:
        try:
            address = message.address(kind)
        except StunError as exc:
            raise StunResponseError(f"the server's {what} does not decode: {exc}") from exc
        return None if address is None else normalize_address(address)

    def _granted(self, lifetime: int, now: float) -> None:
        self.lifetime = lifetime
        self.expires_at = now + lifetime
        self._refresh_at = now + lifetime - refresh_margin(lifetime)

    def _success(self, pending: _Pending, message: stun.Message, now: float) -> None:
        tid = pending.origin
        if pending.method == Method.ALLOCATE:
            relayed = self._address(message, AttributeType.XOR_RELAYED_ADDRESS, "relayed address")
            if relayed is None:
                raise StunResponseError("the Allocate success response has no XOR-RELAYED-ADDRESS")
            lifetime = self._lifetime(message, pending)
            self.relayed = relayed
            self.mapped = self._address(message, AttributeType.XOR_MAPPED_ADDRESS, "mapped address")
            self.state = State.ALLOCATED
            self._granted(lifetime, now)
            self._events.append(Allocated(tid, relayed, self.mapped, lifetime))
        elif pending.method == Method.REFRESH:
            lifetime = self._lifetime(message, pending)
            if pending.lifetime == 0 or lifetime == 0:
                self._deleted(tid)
                return
            if self.state == State.ALLOCATED:
                self._granted(lifetime, now)
            self._events.append(Refreshed(tid, lifetime))
        elif pending.method == Method.CREATE_PERMISSION:
            if self.state == State.ALLOCATED:
                for ip in pending.peer_ips:
                    self.permissions[ip] = now + PERMISSION_REFRESH_AFTER
            self._events.append(PermissionCreated(tid, pending.peer_ips))
        elif pending.method == Method.CHANNEL_BIND:
            assert pending.peer is not None
            assert pending.channel is not None
            if self.state == State.ALLOCATED:
                self.channels[pending.peer] = pending.channel
                self._channel_refresh[pending.peer] = now + CHANNEL_REFRESH_AFTER
                # A channel binding installs or refreshes the permission of its IP (§12).
                self.permissions[pending.peer[0]] = now + PERMISSION_REFRESH_AFTER
            self._events.append(ChannelBound(tid, pending.peer, pending.channel))

    def _deleted(self, tid: bytes) -> None:
        self._lose(Deallocated(tid))
        self.state = State.CLOSED

    def _lose(self, event: Event) -> None:
        """The allocation is gone: forget everything that belonged to it."""
        self.state = State.CLOSED if isinstance(event, Deallocated) else State.FAILED
        self.expires_at = None
        self._refresh_at = None
        self.permissions.clear()
        self.channels.clear()
        self._channel_refresh.clear()
        self._channel_peers.clear()
        for tid, pending in list(self._pending.items()):
            if pending.automatic:
                del self._pending[tid]
        self._events.append(event)

    def _fail(self, pending: _Pending, error: StunError) -> None:
        if pending.method == Method.ALLOCATE:
            self.state = State.FAILED
        elif pending.method == Method.CHANNEL_BIND and pending.channel is not None:
            if pending.peer not in self.channels:
                self._channel_peers.pop(pending.channel, None)
        elif pending.method == Method.REFRESH and pending.lifetime == 0:
            self.state = State.FAILED  # could not delete: treat the allocation as lost
        self._events.append(TransactionFailed(pending.origin, pending.method, error))

    # --- data from the server ---

    def _indication(self, message: stun.Message) -> None:
        if message.method != Method.DATA:
            self.ignored.append(f"a {_method_name(message.method)} indication")
            return
        data = message.get(AttributeType.DATA)
        try:
            peer = message.address(AttributeType.XOR_PEER_ADDRESS)
        except StunError as exc:
            self.ignored.append(f"a Data indication whose XOR-PEER-ADDRESS does not decode: {exc}")
            return
        if peer is None or data is None:
            self.ignored.append("a Data indication without XOR-PEER-ADDRESS and DATA")
            return
        self._events.append(DataReceived(normalize_address(peer), data))

    def _channel_data(self, datagram: bytes) -> None:
        try:
            channel, data = decode_channel_data(datagram)
        except stun.StunDecodeError as exc:
            self.ignored.append(f"malformed ChannelData: {exc.reason}")
            return
        peer = self._channel_peers.get(channel)
        if peer is None:
            self.ignored.append(f"ChannelData on unbound channel {channel:#06x}")
            return
        self._events.append(DataReceived(peer, data, channel))


# --- the asyncio shell ---------------------------------------------------------------------------


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, client: TurnClient) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.client._received(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("TURN client socket error: %s", exc)


class _StreamProtocol(asyncio.Protocol):
    """The TCP connection to the server: frames the stream and hands each message to the
    client; garbage from the server or the connection's end loses the allocation."""

    def __init__(self, client: TurnClient) -> None:
        self.client = client
        self._framer = StreamFramer()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._framer.feed(data)
        except FramingError as exc:
            self.client._connection_lost(
                StunResponseError(f"the TURN server sent a malformed stream: {exc.reason}")
            )
            if self._transport is not None:
                self._transport.abort()
            return
        for frame in frames:
            self.client._received(frame, self.client.core.server)

    def connection_lost(self, exc: Exception | None) -> None:
        detail = f": {exc}" if exc is not None else ""
        self.client._connection_lost(
            TurnStateError(
                f"the {self.client.core.transport.name} connection to the TURN server "
                f"closed{detail}"
            )
        )


class TurnClient:
    """A TURN allocation over UDP driven by asyncio. Get one with :meth:`allocate`; use it as
    an async context manager or call :meth:`close`."""

    def __init__(self, core: TurnClientCore) -> None:
        self.core = core
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._stream: asyncio.Transport | None = None
        self._sock: socket.socket | None = None
        self._waiters: dict[bytes, asyncio.Future[Event]] = {}
        self._inbox: asyncio.Queue[tuple[Address, bytes] | None] = asyncio.Queue()
        self._timer: asyncio.TimerHandle | None = None
        self._lost: StunError | None = None

    @classmethod
    async def allocate(
        cls,
        server: tuple[str, int],
        username: str,
        password: str,
        *,
        family: AddressFamily = AddressFamily.IPV4,
        lifetime: int = DEFAULT_LIFETIME,
        local: tuple[str, int] | None = None,
        software: str | None = None,
        rto: float = DEFAULT_RTO,
        retransmissions: int = DEFAULT_RETRANSMISSIONS,
        rm: int = DEFAULT_RM,
        timeout: float | None = None,
        transport: Transport | str = Transport.UDP,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        sock: socket.socket | None = None,
    ) -> TurnClient:
        """Allocate a relayed address on ``server`` (``(host, port)``; a name is resolved) with
        the long-term credentials, from a UDP socket bound to ``local`` (default: any) — or,
        with ``transport="tcp"``, over a TCP connection from ``local``: then each request is
        sent once and waits ``timeout`` seconds (default :data:`DEFAULT_TCP_TIMEOUT`), and the
        allocation lives as long as the connection (the server deletes it when it closes).
        ``transport="tls"`` is the same over TLS: ``ssl_context`` (default: the system's
        verifying context) checks the server's certificate for ``server_hostname`` (default:
        the host of ``server``).

        ``sock`` is a socket to use instead of opening one (UDP, or an unconnected TCP socket
        for ``tcp``/``tls``; bound or not, not together with ``local``); it is closed with the
        client. For callers that must make their sockets themselves (another network
        namespace, a chosen port).

        Raises :class:`TurnError` (e.g. 401 for wrong credentials, 486 quota),
        :class:`~stoq.nat.stun_client.StunTimeout`,
        :class:`~stoq.nat.stun_client.StunResponseError`, or :class:`StunError` when the name
        does not resolve or the socket cannot be opened.
        """
        address = await resolve_server(server)
        core = TurnClientCore(
            address,
            username,
            password,
            family=family,
            lifetime=lifetime,
            software=software,
            rto=rto,
            retransmissions=retransmissions,
            rm=rm,
            timeout=timeout,
            transport=transport,
        )
        if sock is not None and local is not None:
            raise ValueError("give either sock or local, not both")
        client = cls(core)
        if core.transport != Transport.UDP:
            context: ssl.SSLContext | None = None
            if core.transport == Transport.TLS:
                context = ssl_context or ssl.create_default_context()
                server_hostname = server_hostname or server[0]
            await client._connect(local, context, server_hostname, sock)
            return client
        if sock is None:
            try:
                sock = open_client_socket(address, local)
            except OSError as exc:
                raise StunError(f"cannot open a UDP socket for TURN: {exc}") from exc
        else:
            sock.setblocking(False)
        client._sock = sock
        try:
            datagrams, _ = await client._loop.create_datagram_endpoint(
                lambda: _Protocol(client), sock=sock
            )
            client._transport = datagrams
            await client._transaction(core.allocate(client._loop.time()))
        except BaseException:
            client._shutdown()
            raise
        return client

    async def _connect(
        self,
        local: tuple[str, int] | None,
        context: ssl.SSLContext | None,
        server_hostname: str | None,
        sock: socket.socket | None = None,
    ) -> None:
        host, port = self.core.server
        kind = self.core.transport.name
        hostname = server_hostname if context is not None else None
        try:
            if sock is None:
                stream, _ = await self._loop.create_connection(
                    lambda: _StreamProtocol(self),
                    host,
                    port,
                    local_addr=local,
                    ssl=context,
                    server_hostname=hostname,
                )
            else:
                sock.setblocking(False)
                try:
                    await self._loop.sock_connect(sock, (host, port))
                except BaseException:
                    sock.close()
                    raise
                stream, _ = await self._loop.create_connection(
                    lambda: _StreamProtocol(self), sock=sock, ssl=context, server_hostname=hostname
                )
        except (OSError, ssl.SSLError, ssl.CertificateError) as exc:
            raise StunError(
                f"cannot connect over {kind} to TURN server {self._server}: {exc}"
            ) from exc
        assert isinstance(stream, asyncio.Transport)
        self._stream = stream
        try:
            await self._transaction(self.core.allocate(self._loop.time()))
        except BaseException:
            self._shutdown()
            raise

    # --- properties ---

    @property
    def relayed_address(self) -> Address:
        """The relayed transport address peers send to."""
        assert self.core.relayed is not None
        return self.core.relayed

    @property
    def mapped_address(self) -> Address | None:
        """Our address as the server saw it (XOR-MAPPED-ADDRESS)."""
        return self.core.mapped

    @property
    def local_address(self) -> Address:
        """The local socket's address (UDP, or the TCP connection's)."""
        if self._stream is not None:
            return normalize_address(self._stream.get_extra_info("sockname"))
        assert self._sock is not None
        return normalize_address(self._sock.getsockname())

    @property
    def lifetime(self) -> int:
        """The lifetime last granted, in seconds."""
        return self.core.lifetime

    # --- operations ---

    async def refresh(self, lifetime: int | None = None) -> int:
        """Refresh the allocation now; returns the granted lifetime."""
        event = await self._transaction(self.core.refresh(self._loop.time(), lifetime))
        assert isinstance(event, Refreshed)
        return event.lifetime

    async def create_permission(self, *peer_ips: str) -> None:
        """Install permissions for ``peer_ips`` (renewed automatically while the client lives)."""
        await self._transaction(self.core.create_permission(peer_ips, self._loop.time()))

    async def channel_bind(self, peer: tuple[str, int]) -> int:
        """Bind a channel to ``peer``; returns its number. Data to ``peer`` then goes as
        ChannelData, and the binding is renewed automatically."""
        tid, channel = self.core.channel_bind(normalize_address(peer), self._loop.time())
        await self._transaction(tid)
        return channel

    async def send(self, peer: tuple[str, int], data: bytes) -> None:
        """Relay ``data`` to ``peer`` (ChannelData if a channel is bound, else a Send
        indication). :class:`TurnStateError` without a permission for the peer's IP."""
        self.send_nowait(peer, data)

    def send_nowait(self, peer: tuple[str, int], data: bytes) -> None:
        """:meth:`send` for synchronous callers (it never waits: UDP datagrams and TCP
        writes are queued by the transport)."""
        self._check_alive()
        datagram = self.core.send(normalize_address(peer), data)
        self._send_datagrams([datagram])

    async def receive(self) -> tuple[Address, bytes]:
        """The next ``(peer, data)`` relayed to us; :class:`TurnStateError` once the allocation
        is closed or lost."""
        item = await self._inbox.get()
        if item is None:
            self._inbox.put_nowait(None)  # wake every other reader too
            raise self._lost or TurnStateError("the TURN allocation is closed")
        return item

    async def close(self) -> None:
        """Delete the allocation (Refresh with LIFETIME 0) and close the socket. Errors while
        deleting are logged, not raised: the socket is closed either way."""
        try:
            if self.core.state == State.ALLOCATED:
                await self._transaction(self.core.close(self._loop.time()))
        except StunError as exc:
            log.warning("could not delete the TURN allocation on %s: %s", self._server, exc)
        finally:
            self._shutdown()

    async def __aenter__(self) -> TurnClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- machinery ---

    @property
    def _server(self) -> str:
        return format_address(self.core.server)

    def _check_alive(self) -> None:
        if self._lost is not None:
            raise self._lost
        if self._transport is None and self._stream is None:
            raise TurnStateError("the TURN client is closed")

    async def _transaction(self, tid: bytes) -> Event:
        self._check_alive()
        future: asyncio.Future[Event] = self._loop.create_future()
        self._waiters[tid] = future
        self._pump()
        try:
            event = await future
        finally:
            self._waiters.pop(tid, None)
        if isinstance(event, TransactionFailed):
            raise event.error
        return event

    def _received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.core.handle_datagram(data, normalize_address(addr), self._loop.time())
        self._pump()

    def _on_timer(self) -> None:
        self._timer = None
        self.core.handle_timeout(self._loop.time())
        self._pump()

    def _send_datagrams(self, datagrams: list[bytes]) -> None:
        if self._stream is not None:
            for message in datagrams:
                self._stream.write(message)
            return
        if self._transport is None or self._sock is None:
            return
        destination = socket_address(self._sock, self.core.server)
        for datagram in datagrams:
            self._transport.sendto(datagram, destination)

    def _pump(self) -> None:
        """Send what the core has queued, hand out its events, and re-arm the timer."""
        self._send_datagrams(self.core.datagrams_to_send())
        while (event := self.core.next_event()) is not None:
            self._dispatch(event)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.core.get_timer()
        if when is not None and (self._transport is not None or self._stream is not None):
            self._timer = self._loop.call_at(when, self._on_timer)

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, DataReceived):
            self._inbox.put_nowait((event.peer, event.data))
            return
        if isinstance(event, AllocationExpired):
            self._lost = TurnStateError(f"the TURN allocation on {self._server} expired")
            self._inbox.put_nowait(None)
            return
        tid = getattr(event, "transaction_id", None)
        future = None if tid is None else self._waiters.get(tid)
        if future is not None and not future.done():
            future.set_result(event)
        elif isinstance(event, TransactionFailed):
            log.warning(
                "automatic TURN %s on %s failed: %s",
                _method_name(event.method),
                self._server,
                event.error,
            )
        if isinstance(event, Deallocated):
            self._inbox.put_nowait(None)

    def _connection_lost(self, error: StunError) -> None:
        """The TCP connection ended (or carried garbage): the allocation is gone with it."""
        if self._stream is None:
            return  # closed by us
        if self._lost is None:
            self._lost = error
        self._stream = None
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(error)
        self._shutdown()

    def _shutdown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.close()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        elif self._sock is not None:
            self._sock.close()
        self._inbox.put_nowait(None)
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(TurnStateError("the TURN client is closed"))


async def allocate(
    server: tuple[str, int],
    username: str,
    password: str,
    *,
    family: AddressFamily = AddressFamily.IPV4,
    lifetime: int = DEFAULT_LIFETIME,
    **options: Any,
) -> TurnClient:
    """:meth:`TurnClient.allocate` (the same arguments)."""
    return await TurnClient.allocate(
        server, username, password, family=family, lifetime=lifetime, **options
    )
