"""A TURN relay server (RFC 8656) for clients over UDP and TCP, with long-term credentials
(RFC 8489 §9.2). Relayed transport to peers is always UDP.

:class:`TurnServerCore` decides, with no I/O, what one datagram causes: it takes the bytes, the
address they came from and the local address they arrived on (a listening socket, or a relayed
transport address), plus the time ``now``, and returns the :class:`Transmit` list to send — to
clients from the listening socket, or to peers from a relay socket. It opens and closes relayed
addresses through a :class:`RelayAllocator` the caller gives it. :class:`TurnServer` is the thin
asyncio shell: it owns the listening sockets and the relay sockets and runs the expiry timer.

What is on the wire (RFC 8656; big-endian):

* STUN messages (RFC 8489 §5; first byte 0-3) from clients: Allocate, Refresh,
  CreatePermission, ChannelBind requests, Send indications, and Binding requests (answered
  without credentials, as a plain STUN server would).
* ChannelData (RFC 8656 §12.4; first byte 0x40-0x4F)::

      0        2        4
      +--------+--------+---------------------+------------------------+
      |channel | length | application data    | padding to 4 bytes     |
      +--------+--------+---------------------+------------------------+

  ``channel`` is 0x4000-0x4FFF, ``length`` counts the data only. Over UDP the padding may be
  absent; this server accepts it either way and always sends it (zero bytes), which is also
  what TCP requires.
* Attribute values this module reads or writes: REQUESTED-TRANSPORT (4 bytes: protocol number,
  17 = UDP, then 3 zero bytes), REQUESTED-ADDRESS-FAMILY (4 bytes: 0x01 IPv4 or 0x02 IPv6, then 3
  zero bytes), LIFETIME (4 bytes, seconds), CHANNEL-NUMBER (4 bytes: the 16-bit number then 2
  zero bytes), XOR-PEER-ADDRESS / XOR-RELAYED-ADDRESS / XOR-MAPPED-ADDRESS (as
  :func:`stoq.nat.stun.encode_xor_address`), DATA (the bytes), REALM, NONCE (UTF-8 text).

Authentication (RFC 8489 §9.2.4), for every request but Binding:

1. no MESSAGE-INTEGRITY(-SHA256) → 401 with REALM and a fresh NONCE (unsigned);
2. MESSAGE-INTEGRITY without USERNAME, REALM or NONCE → 400;
3. a NONCE this server did not issue, issued to another IP, or expired → 438 Stale Nonce with
   REALM and a fresh NONCE;
4. an unknown USERNAME, another REALM, or a wrong MESSAGE-INTEGRITY(-SHA256) → 401 with REALM
   and NONCE. The key is ``MD5(username ":" realm ":" SASLprep(password))``; MESSAGE-INTEGRITY-
   SHA256 is checked (when present, instead of MESSAGE-INTEGRITY) with the same key.

Every answer after that is signed with the key (MESSAGE-INTEGRITY, or MESSAGE-INTEGRITY-SHA256
when the request had it) and every answer carries SOFTWARE (if set) and FINGERPRINT. A nonce is
``expiry (12 hex digits, milliseconds of the server clock) + HMAC-SHA256(secret, expiry ":" ip)
(first 16 bytes, hex)``: the server keeps no nonce state.

Requests, once authenticated (RFC 8656 §7-§11; the 5-tuple is client address, listening address
and UDP):

* unknown comprehension-required attributes (DONT-FRAGMENT, EVEN-PORT and RESERVATION-TOKEN
  included: not supported) → 420 with UNKNOWN-ATTRIBUTES;
* Allocate: an allocation on the 5-tuple → its success answer again if the transaction ID is the
  one that made it (a retransmission), else 437; no REQUESTED-TRANSPORT → 400; a transport other
  than UDP → 442; a REQUESTED-ADDRESS-FAMILY other than IPv4/IPv6 or one with no relay address
  → 440; the user's quota reached → 486; no relay socket → 508. Success: XOR-RELAYED-ADDRESS,
  LIFETIME, XOR-MAPPED-ADDRESS. The lifetime is the asked one clamped to
  [``default_lifetime``, ``max_lifetime``] (600 s default when absent).
* any other request with no allocation on the 5-tuple → 437; with another USERNAME than the
  allocation's → 441;
* Refresh: LIFETIME 0 deletes the allocation (answer LIFETIME 0); else it is extended as above;
  a REQUESTED-ADDRESS-FAMILY other than the allocation's → 443.
* CreatePermission: one or more XOR-PEER-ADDRESS (else 400); a peer of the other family than
  the relayed address → 443; a forbidden peer (:func:`peer_allowed`) → 403; otherwise every
  peer IP gets a permission for 300 s (all or nothing).
* ChannelBind: CHANNEL-NUMBER 0x4000-0x4FFF and XOR-PEER-ADDRESS (else 400); a channel bound to
  another peer or a peer bound to another channel → 400; 443 / 403 as above. Binds (or
  refreshes) the channel for 600 s and the peer IP's permission for 300 s.
* Send indication: relayed to XOR-PEER-ADDRESS from the relayed address when the peer IP has a
  permission; dropped otherwise (indications get no answer).
* ChannelData from the client on a bound channel → its data to the channel's peer.
* A datagram on a relayed address from a peer IP with a permission → ChannelData if a channel is
  bound to that peer (IP and port), else a Data indication (XOR-PEER-ADDRESS, DATA,
  FINGERPRINT). Anything else is dropped.

Over TCP (RFC 8656 §12.5, RFC 8489 §6.2.2) each accepted connection is a 5-tuple of its own:
the shell cuts the stream into messages with :class:`stoq.nat.framing.StreamFramer` (STUN by
its length field, ChannelData by its length padded to 4), hands each to the core under the key
``(client, stream_local("tcp", listening address))``, and writes the core's answers back to
that connection. Bytes that are neither STUN nor ChannelData close the connection; the closing
of a connection deletes the allocation made on it (:meth:`TurnServerCore.drop`).

Allocations, permissions, channels and nonces all expire on the injected clock: every call
with ``now`` first removes what has expired (and :meth:`TurnServerCore.expire` does only that).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import ipaddress
import logging
import secrets
import socket
import ssl
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from stoq.nat import stun
from stoq.nat.channel_data import (
    CHANNEL_MAX,
    CHANNEL_MIN,
    decode_channel_data,
    encode_channel_data,
)
from stoq.nat.framing import FramingError, StreamFramer
from stoq.nat.stun import Attribute, AttributeType, MessageClass, Method, StunError
from stoq.nat.stun_client import Address, format_address, normalize_address
from stoq.udp import open_socket

__all__ = [
    "CHANNEL_LIFETIME",
    "DEFAULT_LIFETIME",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_SOFTWARE",
    "MAX_LIFETIME",
    "PERMISSION_LIFETIME",
    "RelayAllocator",
    "Transmit",
    "TurnServer",
    "TurnServerCore",
    "TurnServerError",
    "decode_channel_data",
    "encode_channel_data",
    "peer_allowed",
    "peer_refusal",
    "stream_local",
]

log = logging.getLogger(__name__)

DEFAULT_SOFTWARE = "stoq TURN server"
DEFAULT_LIFETIME = 600
"""Seconds an allocation lives when the client asks for less or nothing (RFC 8656 §7.2)."""
MAX_LIFETIME = 3600
"""The longest allocation lifetime granted (seconds)."""
PERMISSION_LIFETIME = 300
"""Seconds a permission lives (RFC 8656 §9: exactly 300, not configurable)."""
CHANNEL_LIFETIME = 600
"""Seconds a channel binding lives (RFC 8656 §12: 10 minutes)."""
DEFAULT_NONCE_LIFETIME = 600
DEFAULT_QUOTA = 10

UDP_PROTOCOL = 17
_FAMILY_CODE = {4: 0x01, 6: 0x02}
_CODE_FAMILY = {0x01: 4, 0x02: 6}
_NONCE_MAC_BYTES = 16
_MAX_REASON = 127

FiveTuple = tuple[Address, Address]
"""(client address, server listening address). Over UDP the listening address is the socket's
``(ip, port)``; over a stream it is :func:`stream_local` of it, so that a UDP and a TCP 5-tuple
never share a key even with equal addresses."""


def stream_local(transport: str, local: Address) -> Address:
    """The core's local key for a stream (``transport`` "tcp" or "tls") accepted on ``local``:
    ``(transport + ":" + ip, port)``. It cannot equal a UDP listening or relayed address."""
    return (f"{transport}:{local[0]}", local[1])


class TurnServerError(StunError):
    """The TURN server cannot be set up as asked, or a relay socket cannot be opened."""


# --- the peer address policy ---------------------------------------------------------------------

_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _networks(allowed: Iterable[str | _IPNetwork]) -> tuple[_IPNetwork, ...]:
    try:
        return tuple(ipaddress.ip_network(n, strict=False) for n in allowed)
    except ValueError as exc:
        raise TurnServerError(f"not an IP network in the peer allow-list: {exc}") from exc


def peer_refusal(
    ip: str | _IPAddress,
    *,
    allow_loopback: bool = False,
    allowed: Iterable[str | _IPNetwork] = (),
) -> str | None:
    """Why a relay must not send to ``ip``, or None if it may.

    An IP inside one of the ``allowed`` networks is always allowed. An IPv4-mapped IPv6 address
    is judged as the IPv4 address it maps. Then, by :mod:`ipaddress` properties, in this order:
    ``is_loopback`` (allowed only with ``allow_loopback``), ``is_unspecified``,
    ``is_multicast``, ``is_link_local``, 255.255.255.255 (broadcast), ``is_private`` (RFC 1918,
    ULA fc00::/7, and the other IANA not-forwardable/not-global ranges Python lists there,
    among them 192.0.0.0/24, the documentation ranges 192.0.2.0/24, 198.51.100.0/24,
    203.0.113.0/24, 2001:db8::/32, benchmarking 198.18.0.0/15, 0.0.0.0/8, 240.0.0.0/4),
    ``is_site_local`` (fec0::/10), ``is_reserved`` (IETF-reserved; e.g. 240.0.0.0/4, ::/8 —
    so also NAT64 64:ff9b::/96), and finally anything not ``is_global`` (e.g. the shared
    address space 100.64.0.0/10). :class:`TurnServerError` if ``ip`` is not an IP address.
    """
    try:
        address: _IPAddress = ipaddress.ip_address(ip)
    except ValueError as exc:
        raise TurnServerError(f"not an IP address: {ip!r}") from exc
    networks = _networks(allowed)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        if any(address in n for n in networks):
            return None
        address = address.ipv4_mapped
    if any(address in n for n in networks):
        return None
    if address.is_loopback:
        return None if allow_loopback else "a loopback address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_link_local:
        return "a link-local address"
    if isinstance(address, ipaddress.IPv4Address) and address == ipaddress.IPv4Address(
        "255.255.255.255"
    ):
        return "the broadcast address"
    if address.is_private:
        return "a private or special-purpose address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "a special-purpose address (not global)"
    return None


def peer_allowed(
    ip: str | _IPAddress,
    *,
    allow_loopback: bool = False,
    allowed: Iterable[str | _IPNetwork] = (),
) -> bool:
    """Whether a relay may send to ``ip``: :func:`peer_refusal` returns no reason."""
    return peer_refusal(ip, allow_loopback=allow_loopback, allowed=allowed) is None


# --- ChannelData ---------------------------------------------------------------------------------


# --- the core ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transmit:
    """Send ``data`` to ``destination`` from the local socket bound to ``via`` (a listening
    address, or a relayed transport address)."""

    data: bytes
    destination: Address
    via: Address


class RelayAllocator(Protocol):
    """What opens and closes relayed transport addresses for the core (the shell's sockets)."""

    @property
    def families(self) -> frozenset[int]:
        """The IP versions (4, 6) a relayed address can be opened for."""
        ...

    def open(self, family: int) -> Address:
        """A new relayed address of ``family``; :class:`TurnServerError` if none is free."""
        ...

    def close(self, relay: Address) -> None:
        """Release ``relay`` (its allocation ended)."""
        ...


@dataclass
class _Channel:
    peer: Address
    expires: float


@dataclass
class _Allocation:
    five_tuple: FiveTuple
    username: str
    relay: Address
    family: int
    expires: float
    transaction_id: bytes
    response: bytes
    permissions: dict[str, float] = field(default_factory=dict)
    channels: dict[int, _Channel] = field(default_factory=dict)
    peer_channels: dict[Address, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Auth:
    username: str
    key: bytes
    sha256: bool


class _Refused(Exception):
    """An error answer, raised inside a request handler (never out of the core)."""

    def __init__(self, code: int, reason: str, *attributes: Attribute) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 3] + "..."
        self.attributes = attributes


def _ip_version(ip: str) -> int:
    return ipaddress.ip_address(ip).version


class TurnServerCore:
    """The TURN server's decisions, with no I/O (see the module docstring for the rules).

    ``relays`` opens and closes relayed addresses. ``users`` maps usernames to passwords
    (long-term credentials in ``realm``). ``allow_loopback_peers`` and ``allowed_peers`` (IP
    networks) open the peer policy of :func:`peer_refusal`. ``quota``: allocations per user.
    ``nonce_secret``: the HMAC key of the nonces (random if None).
    """

    _UNDERSTOOD = frozenset(
        int(t)
        for t in (
            AttributeType.USERNAME,
            AttributeType.REALM,
            AttributeType.NONCE,
            AttributeType.MESSAGE_INTEGRITY,
            AttributeType.MESSAGE_INTEGRITY_SHA256,
            AttributeType.LIFETIME,
            AttributeType.REQUESTED_TRANSPORT,
            AttributeType.REQUESTED_ADDRESS_FAMILY,
            AttributeType.XOR_PEER_ADDRESS,
            AttributeType.CHANNEL_NUMBER,
            AttributeType.DATA,
        )
    )

    def __init__(
        self,
        relays: RelayAllocator,
        *,
        realm: str,
        users: Mapping[str, str],
        allow_loopback_peers: bool = False,
        allowed_peers: Iterable[str | _IPNetwork] = (),
        quota: int = DEFAULT_QUOTA,
        default_lifetime: int = DEFAULT_LIFETIME,
        max_lifetime: int = MAX_LIFETIME,
        nonce_lifetime: float = DEFAULT_NONCE_LIFETIME,
        software: str | None = DEFAULT_SOFTWARE,
        nonce_secret: bytes | None = None,
    ) -> None:
        if not realm or len(realm) >= 128:
            raise TurnServerError("the realm must have 1-127 characters (RFC 8489 §14.9)")
        if software is not None and len(software) >= 128:
            raise TurnServerError("SOFTWARE must be fewer than 128 characters (RFC 8489 §14.14)")
        if quota < 1 or not 0 < default_lifetime <= max_lifetime or nonce_lifetime <= 0:
            raise TurnServerError(
                "need quota >= 1, 0 < default_lifetime <= max_lifetime and nonce_lifetime > 0"
            )
        self.relays = relays
        self.realm = realm
        self._realm_bytes = realm.encode()
        try:
            self._keys = {
                user: stun.long_term_key(user, realm, password) for user, password in users.items()
            }
        except StunError as exc:
            raise TurnServerError(f"unusable credentials: {exc}") from exc
        self.allow_loopback_peers = allow_loopback_peers
        self.allowed_peers = _networks(allowed_peers)
        self.quota = quota
        self.default_lifetime = default_lifetime
        self.max_lifetime = max_lifetime
        self.nonce_lifetime = nonce_lifetime
        self._software = None if software is None else software.encode()
        self._secret = secrets.token_bytes(32) if nonce_secret is None else nonce_secret
        self._allocations: dict[FiveTuple, _Allocation] = {}
        self._by_relay: dict[Address, _Allocation] = {}
        #: What datagrams led to: "allocate", "refresh", "permission", "channel", "binding",
        #: "error NNN", "relayed to peer", "relayed to client", "dropped".
        self.counts: collections.Counter[str] = collections.Counter()

    # --- state, for the shell and for tests ---------------------------------------------------

    @property
    def allocations(self) -> int:
        """How many allocations are live."""
        return len(self._allocations)

    def relay_of(self, client: Address, local: Address) -> Address | None:
        """The relayed address of the allocation on the 5-tuple, or None."""
        allocation = self._allocations.get((client, local))
        return None if allocation is None else allocation.relay

    def allocations_of(self, username: str) -> int:
        """How many allocations ``username`` holds."""
        return sum(1 for a in self._allocations.values() if a.username == username)

    def next_expiry(self) -> float | None:
        """The earliest time something (allocation, permission, channel) expires, or None."""
        times: list[float] = []
        for allocation in self._allocations.values():
            times.append(allocation.expires)
            times.extend(allocation.permissions.values())
            times.extend(c.expires for c in allocation.channels.values())
        return min(times, default=None)

    def expire(self, now: float) -> None:
        """Remove allocations (closing their relays), permissions and channels due by ``now``."""
        for five_tuple, allocation in list(self._allocations.items()):
            if allocation.expires <= now:
                self._delete(five_tuple)
                continue
            for ip, expires in list(allocation.permissions.items()):
                if expires <= now:
                    del allocation.permissions[ip]
            for number, channel in list(allocation.channels.items()):
                if channel.expires <= now:
                    del allocation.channels[number]
                    allocation.peer_channels.pop(channel.peer, None)

    def drop(self, client: Address, local: Address) -> bool:
        """Delete the allocation on the 5-tuple ``(client, local)``, closing its relay — what
        happens when a client's TCP or TLS connection closes (RFC 8656 §7). Whether there was
        one."""
        if (client, local) not in self._allocations:
            return False
        self._delete((client, local))
        return True

    def close(self) -> None:
        """Delete every allocation, closing the relays."""
        for five_tuple in list(self._allocations):
            self._delete(five_tuple)

    def _delete(self, five_tuple: FiveTuple) -> None:
        allocation = self._allocations.pop(five_tuple)
        self._by_relay.pop(allocation.relay, None)
        try:
            self.relays.close(allocation.relay)
        except (OSError, StunError) as exc:
            log.warning("closing relay %s: %s", format_address(allocation.relay), exc)

    # --- the entry point ----------------------------------------------------------------------

    def receive(self, data: bytes, source: Address, local: Address, now: float) -> list[Transmit]:
        """What to send because ``data`` came from ``source`` to the local address ``local`` at
        ``now`` (seconds, any monotonic clock). A ``local`` that is a relayed address means a
        peer sent it; any other, a client. Never raises for any ``data``."""
        from_peer = local in self._by_relay
        self.expire(now)
        try:
            if from_peer:
                allocation = self._by_relay.get(local)  # None: it expired just now
                out = [] if allocation is None else self._from_peer(data, source, allocation)
            else:
                out = self._from_client(data, source, local, now)
        except (StunError, ValueError) as exc:
            # A value this module failed to check; drop rather than stop serving.
            log.debug("dropped a datagram from %s: %s", format_address(source), exc)
            out = []
        if not out:
            self.counts["dropped"] += 1
        return out

    # --- from peers ---------------------------------------------------------------------------

    def _from_peer(self, data: bytes, peer: Address, allocation: _Allocation) -> list[Transmit]:
        if peer[0] not in allocation.permissions:
            return []
        client, local = allocation.five_tuple
        number = allocation.peer_channels.get(peer)
        if number is not None:
            if len(data) > 0xFFFF:
                return []
            self.counts["relayed to client"] += 1
            return [Transmit(encode_channel_data(number, data, pad=True), client, local)]
        transaction_id = stun.new_transaction_id()
        indication = stun.Message(
            Method.DATA,
            MessageClass.INDICATION,
            transaction_id,
            (
                Attribute(
                    AttributeType.XOR_PEER_ADDRESS,
                    stun.encode_xor_address(peer[0], peer[1], transaction_id),
                ),
                Attribute(AttributeType.DATA, data),
            ),
        )
        try:
            wire = stun.encode(indication, fingerprint=True)
        except StunError:
            return []  # too big for a Data indication
        self.counts["relayed to client"] += 1
        return [Transmit(wire, client, local)]

    # --- from clients -------------------------------------------------------------------------

    def _from_client(
        self, data: bytes, source: Address, local: Address, now: float
    ) -> list[Transmit]:
        if data and CHANNEL_MIN >> 8 <= data[0] <= CHANNEL_MAX >> 8:
            return self._channel_data(data, (source, local))
        if not stun.is_stun(data):
            return []
        try:
            message = stun.decode(data)
        except stun.StunDecodeError as exc:
            return self._malformed(data, source, local, exc.reason)
        if message.get(AttributeType.FINGERPRINT) is not None:
            try:
                stun.verify_fingerprint(data)
            except stun.IntegrityError:
                return []
        if message.message_class == MessageClass.INDICATION:
            if message.method == Method.SEND:
                return self._send(message, (source, local))
            return []
        if message.message_class != MessageClass.REQUEST:
            return []
        if message.method == Method.BINDING:
            return self._binding(message, source, local)
        try:
            auth = self._authenticate(message, data, source, now)
        except _Refused as refused:
            return [self._error(message, source, local, refused, None)]
        try:
            return self._request(message, source, local, now, auth)
        except _Refused as refused:
            return [self._error(message, source, local, refused, auth)]

    def _malformed(
        self, data: bytes, source: Address, local: Address, reason: str
    ) -> list[Transmit]:
        """A 400 for a well-framed request header whose body the codec refused; else nothing."""
        if len(data) < stun.HEADER_SIZE:
            return []
        message_type, length = struct.unpack_from(">HH", data)
        if message_type & 0xC000 or length % 4 or length != len(data) - stun.HEADER_SIZE:
            return []
        method, message_class = stun.split_message_type(message_type)
        if message_class != MessageClass.REQUEST:
            return []
        header = stun.Message(method, MessageClass.REQUEST, data[8 : stun.HEADER_SIZE])
        return [self._error(header, source, local, _Refused(400, f"Bad Request: {reason}"), None)]

    def _binding(self, request: stun.Message, source: Address, local: Address) -> list[Transmit]:
        mapped = Attribute(
            AttributeType.XOR_MAPPED_ADDRESS,
            stun.encode_xor_address(source[0], source[1], request.transaction_id),
        )
        self.counts["binding"] += 1
        return [Transmit(self._encode(self._answer(request, [mapped]), None), source, local)]

    def _channel_data(self, data: bytes, five_tuple: FiveTuple) -> list[Transmit]:
        allocation = self._allocations.get(five_tuple)
        if allocation is None:
            return []
        try:
            number, payload = decode_channel_data(data)
        except stun.StunDecodeError:
            return []
        channel = allocation.channels.get(number)
        if channel is None or channel.peer[0] not in allocation.permissions:
            return []
        self.counts["relayed to peer"] += 1
        return [Transmit(payload, channel.peer, allocation.relay)]

    def _send(self, indication: stun.Message, five_tuple: FiveTuple) -> list[Transmit]:
        allocation = self._allocations.get(five_tuple)
        if allocation is None:
            return []
        if indication.unknown_comprehension_required(self._UNDERSTOOD):
            return []
        try:
            peer = indication.address(AttributeType.XOR_PEER_ADDRESS)
        except stun.StunDecodeError:
            return []
        payload = indication.get(AttributeType.DATA)
        if peer is None or payload is None or peer[0] not in allocation.permissions:
            return []
        self.counts["relayed to peer"] += 1
        return [Transmit(payload, peer, allocation.relay)]

    # --- authentication -----------------------------------------------------------------------

    def _nonce(self, source: Address, now: float) -> str:
        expiry = f"{int((now + self.nonce_lifetime) * 1000) & 0xFFFFFFFFFFFF:012x}"
        return expiry + self._nonce_mac(expiry, source[0])

    def _nonce_mac(self, expiry: str, ip: str) -> str:
        mac = hmac.digest(self._secret, f"{expiry}:{ip}".encode(), hashlib.sha256)
        return mac[:_NONCE_MAC_BYTES].hex()

    def _nonce_fresh(self, nonce: str, source: Address, now: float) -> bool:
        expiry, mac = nonce[:12], nonce[12:]
        if len(expiry) != 12 or not hmac.compare_digest(mac, self._nonce_mac(expiry, source[0])):
            return False
        return now * 1000 < int(expiry, 16)

    def _challenge(self, source: Address, now: float) -> tuple[Attribute, Attribute]:
        return (
            Attribute(AttributeType.REALM, self._realm_bytes),
            Attribute(AttributeType.NONCE, self._nonce(source, now).encode()),
        )

    def _authenticate(
        self, request: stun.Message, data: bytes, source: Address, now: float
    ) -> _Auth:
        sha256 = request.get(AttributeType.MESSAGE_INTEGRITY_SHA256) is not None
        if not sha256 and request.get(AttributeType.MESSAGE_INTEGRITY) is None:
            raise _Refused(401, "Unauthenticated", *self._challenge(source, now))
        try:
            username = request.username()
            realm = request.realm()
            nonce = request.nonce()
        except stun.StunDecodeError as exc:
            raise _Refused(400, f"Bad Request: {exc.reason}") from None
        if username is None or realm is None or nonce is None:
            raise _Refused(400, "Bad Request: USERNAME, REALM and NONCE are required")
        if not self._nonce_fresh(nonce, source, now):
            raise _Refused(438, "Stale Nonce", *self._challenge(source, now))
        key = self._keys.get(username)
        if key is None:
            raise _Refused(401, "Unauthenticated: unknown USERNAME", *self._challenge(source, now))
        if realm != self.realm:
            raise _Refused(401, "Unauthenticated: wrong REALM", *self._challenge(source, now))
        try:
            if sha256:
                stun.verify_integrity_sha256(data, key)
            else:
                stun.verify_integrity(data, key)
        except stun.IntegrityError:
            kind = "MESSAGE-INTEGRITY-SHA256" if sha256 else "MESSAGE-INTEGRITY"
            raise _Refused(
                401, f"Unauthenticated: wrong {kind}", *self._challenge(source, now)
            ) from None
        return _Auth(username, key, sha256)

    # --- requests -----------------------------------------------------------------------------

    def _request(
        self, request: stun.Message, source: Address, local: Address, now: float, auth: _Auth
    ) -> list[Transmit]:
        unknown = request.unknown_comprehension_required(self._UNDERSTOOD)
        if unknown:
            raise _Refused(
                420,
                "Unknown Attribute",
                Attribute(
                    AttributeType.UNKNOWN_ATTRIBUTES, stun.encode_unknown_attributes(unknown)
                ),
            )
        five_tuple = (source, local)
        if request.method == Method.ALLOCATE:
            return self._allocate(request, five_tuple, now, auth)
        if request.method not in (Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND):
            raise _Refused(400, f"Bad Request: method {request.method:#05x} is not a TURN request")
        allocation = self._allocations.get(five_tuple)
        if allocation is None:
            raise _Refused(437, "Allocation Mismatch: no allocation on this 5-tuple")
        if allocation.username != auth.username:
            raise _Refused(441, "Wrong Credentials: the allocation belongs to another user")
        if request.method == Method.REFRESH:
            attributes = self._refresh(request, allocation, now)
            self.counts["refresh"] += 1
        elif request.method == Method.CREATE_PERMISSION:
            attributes = self._create_permission(request, allocation, now)
            self.counts["permission"] += 1
        else:
            attributes = self._channel_bind(request, allocation, now)
            self.counts["channel"] += 1
        return [Transmit(self._encode(self._answer(request, attributes), auth), source, local)]

    def _lifetime(self, request: stun.Message) -> int | None:
        value = request.get(AttributeType.LIFETIME)
        if value is None:
            return None
        if len(value) != 4:
            raise _Refused(400, "Bad Request: LIFETIME must be 4 bytes")
        return int.from_bytes(value, "big")

    def _granted(self, asked: int | None) -> int:
        if asked is None:
            return self.default_lifetime
        return max(self.default_lifetime, min(asked, self.max_lifetime))

    @staticmethod
    def _family(request: stun.Message) -> int | None:
        value = request.get(AttributeType.REQUESTED_ADDRESS_FAMILY)
        if value is None:
            return None
        family = _CODE_FAMILY.get(value[0]) if len(value) == 4 else None
        if family is None:
            raise _Refused(440, "Address Family not Supported")
        return family

    def _allocate(
        self, request: stun.Message, five_tuple: FiveTuple, now: float, auth: _Auth
    ) -> list[Transmit]:
        source, local = five_tuple
        existing = self._allocations.get(five_tuple)
        if existing is not None:
            if existing.transaction_id == request.transaction_id:
                return [Transmit(existing.response, source, local)]
            raise _Refused(437, "Allocation Mismatch: the 5-tuple already has an allocation")
        transport = request.get(AttributeType.REQUESTED_TRANSPORT)
        if transport is None:
            raise _Refused(400, "Bad Request: REQUESTED-TRANSPORT is required")
        if len(transport) != 4:
            raise _Refused(400, "Bad Request: REQUESTED-TRANSPORT must be 4 bytes")
        if transport[0] != UDP_PROTOCOL:
            raise _Refused(
                442, f"Unsupported Transport Protocol {transport[0]} (only UDP is relayed)"
            )
        family = self._family(request) or 4
        if family not in self.relays.families:
            raise _Refused(440, f"Address Family not Supported: no IPv{family} relay address")
        lifetime = self._granted(self._lifetime(request))
        if self.allocations_of(auth.username) >= self.quota:
            raise _Refused(486, "Allocation Quota Reached")
        try:
            relay = self.relays.open(family)
        except (OSError, StunError) as exc:
            log.warning("no relay address for IPv%d: %s", family, exc)
            raise _Refused(508, "Insufficient Capacity") from None
        attributes = [
            Attribute(
                AttributeType.XOR_RELAYED_ADDRESS,
                stun.encode_xor_address(relay[0], relay[1], request.transaction_id),
            ),
            Attribute(AttributeType.LIFETIME, lifetime.to_bytes(4, "big")),
            Attribute(
                AttributeType.XOR_MAPPED_ADDRESS,
                stun.encode_xor_address(source[0], source[1], request.transaction_id),
            ),
        ]
        response = self._encode(self._answer(request, attributes), auth)
        allocation = _Allocation(
            five_tuple=five_tuple,
            username=auth.username,
            relay=relay,
            family=family,
            expires=now + lifetime,
            transaction_id=request.transaction_id,
            response=response,
        )
        self._allocations[five_tuple] = allocation
        self._by_relay[relay] = allocation
        self.counts["allocate"] += 1
        return [Transmit(response, source, local)]

    def _refresh(
        self, request: stun.Message, allocation: _Allocation, now: float
    ) -> list[Attribute]:
        family = self._family(request)
        if family is not None and family != allocation.family:
            raise _Refused(443, "Peer Address Family Mismatch")
        asked = self._lifetime(request)
        if asked == 0:
            self._delete(allocation.five_tuple)
            lifetime = 0
        else:
            lifetime = self._granted(asked)
            allocation.expires = now + lifetime
        return [Attribute(AttributeType.LIFETIME, lifetime.to_bytes(4, "big"))]

    def _peer(self, request: stun.Message, value: bytes, allocation: _Allocation) -> Address:
        try:
            ip, port = stun.decode_xor_address(value, request.transaction_id)
        except stun.StunDecodeError as exc:
            raise _Refused(400, f"Bad Request: XOR-PEER-ADDRESS: {exc.reason}") from None
        if _ip_version(ip) != allocation.family:
            raise _Refused(443, "Peer Address Family Mismatch")
        refusal = peer_refusal(
            ip, allow_loopback=self.allow_loopback_peers, allowed=self.allowed_peers
        )
        if refusal is not None:
            raise _Refused(403, f"Forbidden: peer {ip} is {refusal}")
        return (ipaddress.ip_address(ip).compressed, port)

    def _create_permission(
        self, request: stun.Message, allocation: _Allocation, now: float
    ) -> list[Attribute]:
        values = request.get_all(AttributeType.XOR_PEER_ADDRESS)
        if not values:
            raise _Refused(400, "Bad Request: XOR-PEER-ADDRESS is required")
        peers = [self._peer(request, value, allocation) for value in values]
        for ip, _ in peers:
            allocation.permissions[ip] = now + PERMISSION_LIFETIME
        return []

    def _channel_bind(
        self, request: stun.Message, allocation: _Allocation, now: float
    ) -> list[Attribute]:
        value = request.get(AttributeType.CHANNEL_NUMBER)
        if value is None or len(value) != 4:
            raise _Refused(400, "Bad Request: a 4-byte CHANNEL-NUMBER is required")
        number = int.from_bytes(value[:2], "big")
        if not CHANNEL_MIN <= number <= CHANNEL_MAX:
            raise _Refused(400, f"Bad Request: channel {number:#06x} is not 0x4000-0x4FFF")
        peer_value = request.get(AttributeType.XOR_PEER_ADDRESS)
        if peer_value is None:
            raise _Refused(400, "Bad Request: XOR-PEER-ADDRESS is required")
        peer = self._peer(request, peer_value, allocation)
        bound = allocation.channels.get(number)
        if bound is not None and bound.peer != peer:
            raise _Refused(400, f"Bad Request: channel {number:#06x} is bound to another peer")
        other = allocation.peer_channels.get(peer)
        if other is not None and other != number:
            raise _Refused(400, f"Bad Request: the peer is bound to channel {other:#06x}")
        allocation.channels[number] = _Channel(peer, now + CHANNEL_LIFETIME)
        allocation.peer_channels[peer] = number
        allocation.permissions[peer[0]] = now + PERMISSION_LIFETIME
        return []

    # --- answers ------------------------------------------------------------------------------

    def _answer(self, request: stun.Message, attributes: list[Attribute]) -> stun.Message:
        if self._software is not None:
            attributes.append(Attribute(AttributeType.SOFTWARE, self._software))
        return stun.Message(
            request.method, MessageClass.SUCCESS, request.transaction_id, tuple(attributes)
        )

    def _error(
        self,
        request: stun.Message,
        source: Address,
        local: Address,
        refused: _Refused,
        auth: _Auth | None,
    ) -> Transmit:
        attributes = [
            Attribute(
                AttributeType.ERROR_CODE, stun.encode_error_code(refused.code, refused.reason)
            ),
            *refused.attributes,
        ]
        if self._software is not None:
            attributes.append(Attribute(AttributeType.SOFTWARE, self._software))
        message = stun.Message(
            request.method, MessageClass.ERROR, request.transaction_id, tuple(attributes)
        )
        self.counts[f"error {refused.code}"] += 1
        return Transmit(self._encode(message, auth), source, local)

    @staticmethod
    def _encode(message: stun.Message, auth: _Auth | None) -> bytes:
        return stun.encode(
            message,
            integrity_key=auth.key if auth is not None and not auth.sha256 else None,
            integrity_sha256_key=auth.key if auth is not None and auth.sha256 else None,
            fingerprint=True,
        )


# --- the asyncio shell ---------------------------------------------------------------------------

_READS_PER_WAKEUP = 64
_MAX_DATAGRAM = 65535
_EXPIRY_TICK = 1.0
_MAX_STREAM_BUFFER = 1 << 20
DEFAULT_MAX_CONNECTIONS = 1000


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, server: TurnServer, local: Address) -> None:
        self._server = server
        self._local = local

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._server._received(data, addr, self._local)

    def error_received(self, exc: Exception) -> None:
        log.debug("TURN socket %s: %s", format_address(self._local), exc)


class _StreamConnection(asyncio.Protocol):
    """One client's TCP (or TLS) connection: a 5-tuple of its own. Frames the stream with a
    :class:`StreamFramer`, hands each message to the core under the key
    ``(client, stream_local(kind, local))``, and closes the connection on garbage. Its closing
    deletes the allocation on it."""

    def __init__(self, server: TurnServer, kind: str) -> None:
        self._server = server
        self._kind = kind
        self._framer = StreamFramer()
        self._transport: asyncio.Transport | None = None
        self.key: FiveTuple | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        try:
            client = normalize_address(transport.get_extra_info("peername"))
            local = normalize_address(transport.get_extra_info("sockname"))
        except (TypeError, ValueError, IndexError) as exc:
            log.debug("TURN %s connection without addresses: %s", self._kind, exc)
            transport.abort()
            return
        if len(self._server._streams) >= self._server.max_connections:
            log.warning("TURN %s: refused %s, too many connections", self._kind, client)
            self._server.refused_connections += 1
            transport.abort()
            return
        self.key = (client, stream_local(self._kind, local))
        self._server._streams[self.key] = transport

    def data_received(self, data: bytes) -> None:
        if self.key is None or self._transport is None:
            return
        try:
            frames = self._framer.feed(data)
        except FramingError as exc:
            log.debug("TURN %s from %s: %s", self._kind, format_address(self.key[0]), exc)
            self._server.framing_errors += 1
            self._transport.abort()
            return
        for frame in frames:
            self._server._received(frame, self.key[0], self.key[1])

    def connection_lost(self, exc: Exception | None) -> None:
        if self.key is None:
            return
        self._server._streams.pop(self.key, None)
        try:
            self._server.core.drop(*self.key)
        except Exception:  # a bug: logged and counted, the server goes on
            self._server.internal_errors += 1
            log.exception("TURN server: dropping the allocation of a closed connection failed")
        self.key = None


class _SocketRelays:
    """The shell's :class:`RelayAllocator`: one non-blocking UDP socket per relayed address,
    bound to a relay IP with a kernel-chosen port and read with ``loop.add_reader``."""

    def __init__(self, server: TurnServer, relay_ips: Mapping[int, str]) -> None:
        self._server = server
        self._ips = dict(relay_ips)
        self.sockets: dict[Address, socket.socket] = {}

    @property
    def families(self) -> frozenset[int]:
        return frozenset(self._ips)

    def open(self, family: int) -> Address:
        ip = self._ips.get(family)
        if ip is None:
            raise TurnServerError(f"no IPv{family} relay address")
        try:
            sock = open_socket(ip, 0, dual_stack=False)
        except OSError as exc:
            raise TurnServerError(f"cannot open a relay socket on {ip}: {exc}") from exc
        relay = normalize_address(sock.getsockname())
        self.sockets[relay] = sock
        self._server._loop.add_reader(sock.fileno(), self._server._relay_readable, relay)
        return relay

    def close(self, relay: Address) -> None:
        sock = self.sockets.pop(relay, None)
        if sock is None:
            return
        self._server._loop.remove_reader(sock.fileno())
        sock.close()


class TurnServer:
    """The asyncio UDP and TCP shell around a :class:`TurnServerCore`. Open with
    :meth:`start`."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        #: Datagrams whose handling raised (a bug: logged, counted, and the server goes on).
        self.internal_errors = 0
        #: Stream connections closed for bytes that are neither STUN nor ChannelData.
        self.framing_errors = 0
        #: Stream connections refused because ``max_connections`` were open.
        self.refused_connections = 0
        self.max_connections = DEFAULT_MAX_CONNECTIONS
        self._transports: dict[Address, asyncio.DatagramTransport] = {}
        self._stream_servers: list[tuple[str, asyncio.Server]] = []
        self._streams: dict[FiveTuple, asyncio.Transport] = {}
        self._families: dict[Address, int] = {}
        self._relays: _SocketRelays
        self.core: TurnServerCore
        self._timer: asyncio.TimerHandle | None = None
        self._closed = asyncio.Event()

    @classmethod
    async def start(
        cls,
        listen: Sequence[tuple[str, int]] = (),
        *,
        listen_tcp: Sequence[tuple[str, int]] = (),
        listen_tls: Sequence[tuple[str, int]] = (),
        tls_context: ssl.SSLContext | None = None,
        realm: str,
        users: Mapping[str, str],
        relay_ips: Sequence[str] = (),
        allow_loopback_peers: bool = False,
        allowed_peers: Iterable[str | _IPNetwork] = (),
        quota: int = DEFAULT_QUOTA,
        max_lifetime: int = MAX_LIFETIME,
        nonce_lifetime: float = DEFAULT_NONCE_LIFETIME,
        software: str | None = DEFAULT_SOFTWARE,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> TurnServer:
        """Listen for UDP on every ``(ip, port)`` of ``listen``, for TCP on every one of
        ``listen_tcp``, and for TLS over TCP (with the server-side ``tls_context``, required
        then) on every one of ``listen_tls`` (port 0: any); relay (always over UDP) from
        ``relay_ips`` (at most one per IP version; by default the specific, non-wildcard listen
        IPs). At most ``max_connections`` TCP and TLS connections are open at once (more are
        closed at once).
        :class:`TurnServerError` if there is no relay IP or a socket will not bind."""
        try:
            wanted = [normalize_address(address) for address in listen]
            wanted_tcp = [normalize_address(address) for address in listen_tcp]
            wanted_tls = [normalize_address(address) for address in listen_tls]
            relays = [ipaddress.ip_address(ip) for ip in relay_ips]
        except (ValueError, TypeError) as exc:
            raise TurnServerError(f"addresses must be IP addresses: {exc}") from exc
        if not wanted and not wanted_tcp and not wanted_tls:
            raise TurnServerError("nothing to listen on")
        if wanted_tls and tls_context is None:
            raise TurnServerError("listening for TLS needs a tls_context (certificate and key)")
        if max_connections < 1:
            raise TurnServerError("max_connections must be at least 1")
        if not relays:
            relays = [
                ipaddress.ip_address(host)
                for host, _ in (*wanted, *wanted_tcp, *wanted_tls)
                if not ipaddress.ip_address(host).is_unspecified
            ]
        by_family: dict[int, str] = {}
        for ip in relays:
            if ip.is_unspecified:
                raise TurnServerError("a relay IP must be a specific address, not a wildcard")
            by_family.setdefault(ip.version, ip.compressed)
        if not by_family:
            raise TurnServerError("no relay IP: give one (the listen addresses are wildcards)")
        server = cls()
        server.max_connections = max_connections
        server._relays = _SocketRelays(server, by_family)
        server.core = TurnServerCore(
            server._relays,
            realm=realm,
            users=users,
            allow_loopback_peers=allow_loopback_peers,
            allowed_peers=allowed_peers,
            quota=quota,
            max_lifetime=max_lifetime,
            nonce_lifetime=nonce_lifetime,
            software=software,
        )
        try:
            for host, port in wanted:
                try:
                    sock = open_socket(host, port)
                except OSError as exc:
                    raise TurnServerError(
                        f"cannot listen on {format_address((host, port))}: {exc}"
                    ) from exc
                local = normalize_address(sock.getsockname())
                transport, _ = await server._loop.create_datagram_endpoint(
                    lambda local=local: _Listener(server, local),  # type: ignore[misc]
                    sock=sock,
                )
                server._transports[local] = transport
                server._families[local] = sock.family
            for host, port in wanted_tcp:
                await server._listen_stream("tcp", host, port)
            for host, port in wanted_tls:
                await server._listen_stream("tls", host, port, tls_context)
        except BaseException:
            await server.close()
            raise
        server._timer = server._loop.call_later(_EXPIRY_TICK, server._tick)
        return server

    async def _listen_stream(
        self, kind: str, host: str, port: int, context: ssl.SSLContext | None = None
    ) -> None:
        try:
            listener = await self._loop.create_server(
                lambda: _StreamConnection(self, kind),
                host,
                port,
                reuse_address=True,
                ssl=context,
            )
        except OSError as exc:
            raise TurnServerError(
                f"cannot listen ({kind}) on {format_address((host, port))}: {exc}"
            ) from exc
        self._stream_servers.append((kind, listener))

    @property
    def addresses(self) -> tuple[Address, ...]:
        """The bound UDP listening addresses, in order."""
        return tuple(self._transports)

    @property
    def tcp_addresses(self) -> tuple[Address, ...]:
        """The bound TCP listening addresses, in order."""
        return self._stream_addresses("tcp")

    @property
    def tls_addresses(self) -> tuple[Address, ...]:
        """The bound TLS listening addresses, in order."""
        return self._stream_addresses("tls")

    def _stream_addresses(self, kind: str) -> tuple[Address, ...]:
        return tuple(
            normalize_address(sock.getsockname())
            for k, listener in self._stream_servers
            if k == kind
            for sock in listener.sockets
        )

    @property
    def connections(self) -> int:
        """How many stream (TCP and TLS) connections are open."""
        return len(self._streams)

    def _tick(self) -> None:
        try:
            self.core.expire(self._loop.time())
        except Exception:
            self.internal_errors += 1
            log.exception("TURN server: expiry failed")
        self._timer = self._loop.call_later(_EXPIRY_TICK, self._tick)

    def _received(self, data: bytes, addr: tuple[Any, ...], local: Address) -> None:
        try:
            source = normalize_address(addr)
            for transmit in self.core.receive(data, source, local, self._loop.time()):
                self._send(transmit)
        except Exception:
            # The server must keep serving whatever one datagram does; this is a bug if it runs.
            self.internal_errors += 1
            log.exception("TURN server: a datagram from %r could not be handled", addr)

    def _relay_readable(self, relay: Address) -> None:
        sock = self._relays.sockets.get(relay)
        for _ in range(_READS_PER_WAKEUP):
            if sock is None or sock.fileno() < 0:
                return
            try:
                data, addr = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. an ICMP error reported on the socket
                log.debug("relay %s: %s", format_address(relay), exc)
                continue
            self._received(data, addr, relay)
            sock = self._relays.sockets.get(relay)

    def _send(self, transmit: Transmit) -> None:
        stream = self._streams.get((transmit.destination, transmit.via))
        if stream is not None:
            # Over a stream nothing is lost silently by the network: a client that does not
            # read gets what it has not read dropped here instead, as UDP would.
            if stream.get_write_buffer_size() > _MAX_STREAM_BUFFER:
                self.core.counts["dropped (stream buffer full)"] += 1
                return
            stream.write(transmit.data)
            return
        host, port = transmit.destination
        transport = self._transports.get(transmit.via)
        if transport is not None:
            if self._families[transmit.via] == socket.AF_INET6 and ":" not in host:
                host = f"::ffff:{host}"
            transport.sendto(transmit.data, (host, port))
            return
        sock = self._relays.sockets.get(transmit.via)
        if sock is None:
            raise TurnServerError(f"no socket bound to {format_address(transmit.via)}")
        try:
            sock.sendto(transmit.data, (host, port))
        except OSError as exc:  # a full buffer or an unreachable peer: UDP may lose it
            log.debug("relay %s to %s: %s", format_address(transmit.via), host, exc)

    async def close(self) -> None:
        """Stop listening and close every relay (idempotent)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if hasattr(self, "core"):
            self.core.close()
        for transport in self._transports.values():
            transport.close()
        self._transports.clear()
        for _, listener in self._stream_servers:
            listener.close()
        self._stream_servers.clear()
        for stream in list(self._streams.values()):
            stream.abort()
        self._streams.clear()
        self._closed.set()
        await asyncio.sleep(0)

    async def wait_closed(self) -> None:
        """Return once :meth:`close` has been called."""
        await self._closed.wait()

    async def __aenter__(self) -> TurnServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
