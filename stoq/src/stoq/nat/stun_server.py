"""A STUN server for the Binding method (RFC 8489), with RFC 5780 NAT behaviour discovery.

:class:`StunServerCore` decides, with no I/O, what to do with one datagram given where it came
from and which local socket it arrived on: a :class:`Reply` (bytes, destination, and the local
socket to send it from) or :class:`Dropped` (with the reason). :class:`StunServer` is the thin
asyncio shell: it binds the UDP sockets, hands every datagram to the core and sends the reply.

Decisions, in this order (RFC 8489 §6.3, §9.1.3; RFC 5780 §6, §7):

1. With a rate limit configured, a source IP over its budget is dropped.
2. Not STUN by RFC 7983 demultiplexing (first byte 0-3, magic cookie ``21 12 A4 42`` at
   offset 4) → dropped: a STUN server ignores what is not STUN.
3. The codec refuses the message → if the 20-byte header alone is a well-framed *request*
   (top two bits zero, magic cookie, length a multiple of 4 equal to the bytes that follow),
   it is answered with 400 (the reason names the codec's complaint); otherwise dropped.
4. Indications and responses → dropped (this server sends no requests of its own).
5. A FINGERPRINT that does not match → dropped (RFC 8489 §7.3).
6. A method other than Binding → 400.
7. With short-term credentials configured (RFC 8489 §9.1.3): no USERNAME or no
   MESSAGE-INTEGRITY(-SHA256) → 400; an unknown USERNAME or a wrong MESSAGE-INTEGRITY-SHA256
   (checked when present, else MESSAGE-INTEGRITY) → 401. These answers are not signed.
8. Comprehension-required attributes (type < 0x8000) the server does not understand → 420 with
   UNKNOWN-ATTRIBUTES listing them. Understood: USERNAME, MESSAGE-INTEGRITY(-SHA256),
   RESPONSE-PORT, PRIORITY and USE-CANDIDATE (ICE checks are Binding requests; they are
   ignored), and CHANGE-REQUEST only when the server has an alternate address (RFC 5780 §7.2:
   a server that cannot change its address treats it as unknown).
9. A CHANGE-REQUEST whose value is not 4 bytes, or a RESPONSE-PORT whose value is not 4 bytes
   or names port 0 → 400.
10. Otherwise a success response: XOR-MAPPED-ADDRESS (the source address, IPv4-mapped IPv6
    shown as IPv4), RESPONSE-ORIGIN (the address it is sent from, unless that is a wildcard
    address), OTHER-ADDRESS (with an alternate: the address with the other IP *and* the other
    port than the one the request arrived on), SOFTWARE. It is sent from the local address
    changed as CHANGE-REQUEST asks (flag 0x04 the IP, 0x02 the port) to the source address, or
    to the source IP and RESPONSE-PORT's port if given (RFC 5780 §7.5).

Every answer, error or success, carries SOFTWARE (if set) and FINGERPRINT, and, when the
request was authenticated, MESSAGE-INTEGRITY-SHA256 if the request had it else
MESSAGE-INTEGRITY, computed with the same key. Error answers are ERROR-CODE (RFC 8489 §14.8),
UNKNOWN-ATTRIBUTES (for 420: the 16-bit types, in request order), SOFTWARE.

RFC 5780 mode: given a primary address (A1, P1) and an alternate (A2, P2) with A1 != A2 and
P1 != P2, the server listens on the four sockets (A1,P1), (A1,P2), (A2,P1), (A2,P2).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stoq.nat import stun
from stoq.nat.stun import AttributeType, MessageClass, StunError
from stoq.nat.stun_client import Address, format_address, normalize_address
from stoq.udp import open_socket

__all__ = [
    "DEFAULT_SOFTWARE",
    "Dropped",
    "RateLimit",
    "Reply",
    "Rfc5780Addresses",
    "StunServer",
    "StunServerCore",
    "StunServerError",
]

log = logging.getLogger(__name__)

DEFAULT_SOFTWARE = "stoq STUN server"
_BIND_ATTEMPTS = 20
_MAX_REASON = 127  # characters in an ERROR-CODE reason phrase (RFC 8489 §14.8)


class StunServerError(StunError):
    """The server cannot be set up as asked (bad configuration, or a socket that won't bind)."""


@dataclass(frozen=True)
class Reply:
    """Send ``data`` to ``destination`` from the local socket bound to ``via``."""

    data: bytes
    destination: Address
    via: Address


@dataclass(frozen=True)
class Dropped:
    """The datagram gets no answer; ``reason`` says why."""

    reason: str


@dataclass(frozen=True)
class RateLimit:
    """A token bucket per source IP: ``per_second`` requests on average, bursts of ``burst``.

    At most ``max_sources`` buckets are kept (the least recently seen source is forgotten).
    """

    per_second: float
    burst: float
    max_sources: int = 65536

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1 or self.max_sources < 1:
            raise StunServerError(
                "a rate limit needs per_second > 0, burst >= 1 and max_sources >= 1"
            )


@dataclass(frozen=True)
class Rfc5780Addresses:
    """The primary (A1, P1) and alternate (A2, P2) addresses of an RFC 5780 server."""

    primary: Address
    alternate: Address

    def __post_init__(self) -> None:
        (a1, p1), (a2, p2) = self.primary, self.alternate
        if a1 == a2 or p1 == p2:
            raise StunServerError(
                "RFC 5780 needs an alternate address with another IP and another port than "
                f"the primary ({format_address(self.primary)} vs {format_address(self.alternate)})"
            )
        ips = [ipaddress.ip_address(a1), ipaddress.ip_address(a2)]
        if ips[0].version != ips[1].version:
            raise StunServerError("the primary and alternate addresses must be the same family")
        if any(ip.is_unspecified for ip in ips):
            raise StunServerError(
                "RFC 5780 needs specific addresses: a wildcard address cannot be an OTHER-ADDRESS"
            )

    @property
    def addresses(self) -> tuple[Address, Address, Address, Address]:
        """(A1,P1), (A1,P2), (A2,P1), (A2,P2)."""
        (a1, p1), (a2, p2) = self.primary, self.alternate
        return ((a1, p1), (a1, p2), (a2, p1), (a2, p2))

    def changed(self, local: Address, *, change_ip: bool, change_port: bool) -> Address | None:
        """``local`` with its IP and/or port swapped for the other one; None if ``local`` is
        not one of the four addresses."""
        if local not in self.addresses:
            return None
        (a1, p1), (a2, p2) = self.primary, self.alternate
        ip, port = local
        if change_ip:
            ip = a2 if ip == a1 else a1
        if change_port:
            port = p2 if port == p1 else p1
        return (ip, port)


class _TokenBuckets:
    def __init__(self, limit: RateLimit) -> None:
        self._limit = limit
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        limit = self._limit
        tokens, last = self._buckets.pop(key, (limit.burst, now))
        tokens = min(limit.burst, tokens + max(0.0, now - last) * limit.per_second)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > limit.max_sources:
            self._buckets.popitem(last=False)
        return allowed


def _framed_request(data: bytes) -> stun.Message | None:
    """The method and transaction id of a well-framed STUN request header, else None.

    Header (RFC 8489 §5): type (2 bytes: ``00 M11..M7 C1 M6..M4 C0 M3..M0``), length (2 bytes,
    of what follows, a multiple of 4), magic cookie (4 bytes), transaction id (12 bytes).
    """
    if len(data) < stun.HEADER_SIZE:
        return None
    message_type, length, cookie = struct.unpack_from("!HHI", data)
    if message_type & 0xC000 or cookie != stun.MAGIC_COOKIE:
        return None
    if length % 4 or length != len(data) - stun.HEADER_SIZE:
        return None
    method, message_class = stun.split_message_type(message_type)
    if message_class != MessageClass.REQUEST:
        return None
    return stun.Message(method, MessageClass.REQUEST, data[8 : stun.HEADER_SIZE], ())


def _is_wildcard(address: Address) -> bool:
    return ipaddress.ip_address(address[0]).is_unspecified


class StunServerCore:
    """The server's decisions, with no I/O (see the module docstring for the rules).

    ``rfc5780``: the primary and alternate addresses (enables CHANGE-REQUEST and OTHER-ADDRESS).
    ``software``: the SOFTWARE text of every answer (None: no SOFTWARE). ``credentials``:
    username → password for short-term authentication (None: no authentication).
    ``rate_limit``: per source IP (None: unlimited).
    """

    _UNDERSTOOD = frozenset(
        {
            AttributeType.USERNAME,
            AttributeType.MESSAGE_INTEGRITY,
            AttributeType.MESSAGE_INTEGRITY_SHA256,
            AttributeType.RESPONSE_PORT,
            AttributeType.PRIORITY,
            AttributeType.USE_CANDIDATE,
        }
    )

    def __init__(
        self,
        *,
        rfc5780: Rfc5780Addresses | None = None,
        software: str | None = DEFAULT_SOFTWARE,
        credentials: Mapping[str, str] | None = None,
        rate_limit: RateLimit | None = None,
    ) -> None:
        self.rfc5780 = rfc5780
        self._software = None if software is None else software.encode()
        if self._software is not None and len(software or "") >= 128:
            raise StunServerError("SOFTWARE must be fewer than 128 characters (RFC 8489 §14.14)")
        self._keys: dict[str, bytes] | None = (
            None
            if credentials is None
            else {user: stun.short_term_key(password) for user, password in credentials.items()}
        )
        self._buckets = None if rate_limit is None else _TokenBuckets(rate_limit)
        understood = set(self._UNDERSTOOD)
        if rfc5780 is not None:
            understood.add(AttributeType.CHANGE_REQUEST)
        self._understood: frozenset[int] = frozenset(int(t) for t in understood)
        #: How many datagrams ended how: "success", "error 400", "error 401", "error 420",
        #: "dropped".
        self.counts: collections.Counter[str] = collections.Counter()

    # --- the decision ------------------------------------------------------------------------

    def handle(
        self, data: bytes, source: Address, local: Address, now: float | None = None
    ) -> Reply | Dropped:
        """What to do with ``data`` from ``source`` that arrived on the socket bound to
        ``local``. ``now`` (monotonic seconds) only feeds the rate limit. Never raises for any
        ``data``: every outcome is a :class:`Reply` or a :class:`Dropped`."""
        decision = self._decide(data, source, local, now)
        if isinstance(decision, Dropped):
            self.counts["dropped"] += 1
        return decision

    def _decide(
        self, data: bytes, source: Address, local: Address, now: float | None
    ) -> Reply | Dropped:
        if self._buckets is not None:
            clock = time.monotonic() if now is None else now
            if not self._buckets.allow(source[0], clock):
                return Dropped(f"rate limit exceeded by {source[0]}")
        if not stun.is_stun(data):
            return Dropped("not a STUN message")
        try:
            request = stun.decode(data)
        except stun.StunDecodeError as exc:
            header = _framed_request(data)
            if header is None:
                return Dropped(f"malformed STUN message: {exc.reason}")
            reason = f"Bad Request: {exc.reason}"
            if len(reason) > _MAX_REASON:
                reason = reason[: _MAX_REASON - 3] + "..."
            return self._error(header, source, local, 400, reason)
        if request.message_class == MessageClass.INDICATION:
            return Dropped("an indication (this server takes none)")
        if request.message_class != MessageClass.REQUEST:
            return Dropped("a response (this server sends no requests)")
        if request.get(AttributeType.FINGERPRINT) is not None:
            try:
                stun.verify_fingerprint(data)
            except stun.IntegrityError:
                return Dropped("wrong FINGERPRINT")
        if request.method != stun.Method.BINDING:
            return self._error(
                request,
                source,
                local,
                400,
                f"Bad Request: method {request.method:#05x} is not supported (only Binding)",
            )
        key: bytes | None = None
        sha256 = False
        if self._keys is not None:
            outcome = self._authenticate(request, data)
            if isinstance(outcome, tuple):
                code, reason = outcome
                return self._error(request, source, local, code, reason)
            key, sha256 = outcome.key, outcome.sha256
        unknown = request.unknown_comprehension_required(self._understood)
        if unknown:
            return self._error(
                request, source, local, 420, "Unknown Attribute", key, sha256, tuple(unknown)
            )
        return self._binding(request, source, local, key, sha256)

    def _authenticate(self, request: stun.Message, data: bytes) -> _Key | tuple[int, str]:
        assert self._keys is not None
        username = request.get(AttributeType.USERNAME)
        sha256 = request.get(AttributeType.MESSAGE_INTEGRITY_SHA256) is not None
        if username is None or (
            not sha256 and request.get(AttributeType.MESSAGE_INTEGRITY) is None
        ):
            return (400, "Bad Request: USERNAME and MESSAGE-INTEGRITY are required")
        try:
            key = self._keys.get(username.decode("utf-8"))
        except UnicodeDecodeError:
            key = None
        if key is None:
            return (401, "Unauthenticated: unknown USERNAME")
        try:
            if sha256:
                stun.verify_integrity_sha256(data, key)
            else:
                stun.verify_integrity(data, key)
        except stun.IntegrityError:
            kind = "MESSAGE-INTEGRITY-SHA256" if sha256 else "MESSAGE-INTEGRITY"
            return (401, f"Unauthenticated: wrong {kind}")
        return _Key(key, sha256)

    def _binding(
        self,
        request: stun.Message,
        source: Address,
        local: Address,
        key: bytes | None,
        sha256: bool,
    ) -> Reply:
        via = local
        change = request.get(AttributeType.CHANGE_REQUEST)
        if change is not None:
            if len(change) != 4:
                return self._error(
                    request,
                    source,
                    local,
                    400,
                    "Bad Request: CHANGE-REQUEST must be 4 bytes",
                    key,
                    sha256,
                )
            assert self.rfc5780 is not None  # else CHANGE-REQUEST was unknown
            change_ip, change_port = stun.decode_change_request(change)
            changed = self.rfc5780.changed(local, change_ip=change_ip, change_port=change_port)
            if changed is None:
                return self._error(
                    request,
                    source,
                    local,
                    400,
                    f"Bad Request: {format_address(local)} has no alternate address to change to",
                    key,
                    sha256,
                )
            via = changed
        destination = source
        response_port = request.get(AttributeType.RESPONSE_PORT)
        if response_port is not None:
            port = int.from_bytes(response_port[:2], "big")
            if len(response_port) != 4 or port == 0:
                return self._error(
                    request,
                    source,
                    local,
                    400,
                    "Bad Request: RESPONSE-PORT must be 4 bytes naming a port other than 0",
                    key,
                    sha256,
                )
            destination = (source[0], port)
        attributes = [
            stun.Attribute(
                AttributeType.XOR_MAPPED_ADDRESS,
                stun.encode_xor_address(source[0], source[1], request.transaction_id),
            )
        ]
        if not _is_wildcard(via):
            attributes.append(
                stun.Attribute(AttributeType.RESPONSE_ORIGIN, stun.encode_address(*via))
            )
        if self.rfc5780 is not None:
            other = self.rfc5780.changed(local, change_ip=True, change_port=True)
            if other is not None:
                attributes.append(
                    stun.Attribute(AttributeType.OTHER_ADDRESS, stun.encode_address(*other))
                )
        response = self._message(request, MessageClass.SUCCESS, attributes)
        self.counts["success"] += 1
        return Reply(self._encode(response, key, sha256), destination, via)

    # --- building answers --------------------------------------------------------------------

    def _message(
        self, request: stun.Message, message_class: MessageClass, attributes: list[stun.Attribute]
    ) -> stun.Message:
        if self._software is not None:
            attributes.append(stun.Attribute(AttributeType.SOFTWARE, self._software))
        return stun.Message(
            request.method, message_class, request.transaction_id, tuple(attributes)
        )

    @staticmethod
    def _encode(message: stun.Message, key: bytes | None, sha256: bool) -> bytes:
        return stun.encode(
            message,
            integrity_key=key if key is not None and not sha256 else None,
            integrity_sha256_key=key if sha256 else None,
            fingerprint=True,
        )

    def _error(
        self,
        request: stun.Message,
        source: Address,
        local: Address,
        code: int,
        reason: str,
        key: bytes | None = None,
        sha256: bool = False,
        unknown: Iterable[int] = (),
    ) -> Reply:
        attributes = [
            stun.Attribute(AttributeType.ERROR_CODE, stun.encode_error_code(code, reason))
        ]
        listed = tuple(unknown)
        if listed:
            attributes.append(
                stun.Attribute(
                    AttributeType.UNKNOWN_ATTRIBUTES, stun.encode_unknown_attributes(listed)
                )
            )
        response = self._message(request, MessageClass.ERROR, attributes)
        self.counts[f"error {code}"] += 1
        return Reply(self._encode(response, key, sha256), source, local)


@dataclass(frozen=True)
class _Key:
    key: bytes
    sha256: bool


# --- the asyncio shell --------------------------------------------------------------------------


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: StunServer, local: Address) -> None:
        self._server = server
        self._local = local

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._server._received(data, addr, self._local)

    def error_received(self, exc: Exception) -> None:
        log.debug("STUN socket %s: %s", format_address(self._local), exc)


def _check_rfc5780(primary: Address, alternate: Address) -> None:
    """Refuse before binding what :class:`Rfc5780Addresses` would refuse after (ports 0 are
    still to be picked, so only equal non-zero ports are known to clash)."""
    if primary[1] != 0 and primary[1] == alternate[1]:
        Rfc5780Addresses(primary, alternate)  # raises: the ports must differ
    Rfc5780Addresses((primary[0], 1), (alternate[0], 2))  # raises on the IPs


def _bind(host: str, port: int) -> socket.socket:
    try:
        return open_socket(host, port)
    except OSError as exc:
        raise StunServerError(f"cannot listen on {format_address((host, port))}: {exc}") from exc


def _bind_rfc5780(primary: Address, alternate: Address) -> list[socket.socket]:
    """The four sockets (A1,P1), (A1,P2), (A2,P1), (A2,P2); ports 0 are picked by the kernel
    on A1 and then taken on A2 too (retried if A2 has that port in use)."""
    (a1, p1), (a2, p2) = primary, alternate
    for _ in range(_BIND_ATTEMPTS):
        sockets: list[socket.socket] = []
        try:
            sockets.append(_bind(a1, p1))
            port1 = sockets[0].getsockname()[1]
            sockets.append(_bind(a1, p2))
            port2 = sockets[1].getsockname()[1]
            sockets.append(_bind(a2, port1))
            sockets.append(_bind(a2, port2))
        except StunServerError as exc:
            for sock in sockets:
                sock.close()
            cause = exc.__cause__
            in_use = isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE
            if in_use and 0 in (p1, p2):
                continue  # a kernel-picked port was taken on the other IP: pick again
            raise
        return sockets
    raise StunServerError(
        f"could not find ports free on both {a1} and {a2} in {_BIND_ATTEMPTS} attempts"
    )


class StunServer:
    """The asyncio UDP shell around a :class:`StunServerCore`. Open with :meth:`start`."""

    def __init__(self, core: StunServerCore) -> None:
        self.core = core
        #: Datagrams whose handling raised (a bug: logged, counted, and the server goes on).
        self.internal_errors = 0
        self._transports: dict[Address, asyncio.DatagramTransport] = {}
        self._families: dict[Address, int] = {}
        self._loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()

    @classmethod
    async def start(
        cls,
        listen: Sequence[tuple[str, int]],
        *,
        alternate: tuple[str, int] | None = None,
        software: str | None = DEFAULT_SOFTWARE,
        credentials: Mapping[str, str] | None = None,
        rate_limit: RateLimit | None = None,
    ) -> StunServer:
        """Listen on every ``(ip, port)`` of ``listen`` (port 0: any), or, with ``alternate``,
        on the four RFC 5780 sockets made of ``listen[0]`` (the only one allowed then) and
        ``alternate``. IP addresses only; ``"::"`` listens dual-stack."""
        try:
            wanted = [normalize_address(address) for address in listen]
            other = None if alternate is None else normalize_address(alternate)
        except (ValueError, TypeError) as exc:
            raise StunServerError(f"listen addresses must be IP addresses: {exc}") from exc
        if not wanted:
            raise StunServerError("nothing to listen on")
        if other is not None and len(wanted) != 1:
            raise StunServerError("an alternate address goes with exactly one listen address")
        rfc5780: Rfc5780Addresses | None = None
        if other is not None:
            _check_rfc5780(wanted[0], other)
            sockets = _bind_rfc5780(wanted[0], other)
            bound = [normalize_address(sock.getsockname()) for sock in sockets]
            rfc5780 = Rfc5780Addresses(bound[0], bound[3])
        else:
            sockets = []
            try:
                for host, port in wanted:
                    sockets.append(_bind(host, port))
            except StunServerError:
                for sock in sockets:
                    sock.close()
                raise
        core = StunServerCore(
            rfc5780=rfc5780, software=software, credentials=credentials, rate_limit=rate_limit
        )
        server = cls(core)
        try:
            for sock in sockets:
                await server._add(sock)
        except BaseException:
            for sock in sockets:
                sock.close()
            server._close_transports()
            raise
        return server

    async def _add(self, sock: socket.socket) -> None:
        local = normalize_address(sock.getsockname())
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _Protocol(self, local), sock=sock
        )
        self._transports[local] = transport
        self._families[local] = sock.family

    @property
    def addresses(self) -> tuple[Address, ...]:
        """The bound local addresses, in order (RFC 5780: (A1,P1), (A1,P2), (A2,P1), (A2,P2))."""
        return tuple(self._transports)

    def _received(self, data: bytes, addr: tuple[Any, ...], local: Address) -> None:
        try:
            source = normalize_address(addr)
            decision = self.core.handle(data, source, local, self._loop.time())
            if isinstance(decision, Dropped):
                log.debug("dropped a datagram from %s: %s", format_address(source), decision.reason)
                return
            transport = self._transports.get(decision.via)
            if transport is None:
                raise StunServerError(f"no socket bound to {format_address(decision.via)}")
            host, port = decision.destination
            if self._families[decision.via] == socket.AF_INET6 and ":" not in host:
                host = f"::ffff:{host}"
            transport.sendto(decision.data, (host, port))
        except Exception:
            # The server must keep serving whatever one datagram does; this is a bug if it runs.
            self.internal_errors += 1
            log.exception("STUN server: a datagram from %r could not be handled", addr)

    def _close_transports(self) -> None:
        for transport in self._transports.values():
            transport.close()
        self._transports.clear()

    async def close(self) -> None:
        """Stop listening (idempotent)."""
        self._close_transports()
        self._closed.set()
        await asyncio.sleep(0)  # let the transports finish closing their sockets

    async def wait_closed(self) -> None:
        """Return once :meth:`close` has been called."""
        await self._closed.wait()

    async def __aenter__(self) -> StunServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
