"""A STUN client for the Binding method (RFC 8489): a sans-IO transaction and an asyncio driver.

:class:`BindingTransaction` is the whole protocol logic of one Binding request, with no I/O:
it builds the request, says when to retransmit, and judges every datagram it is handed. The
asyncio function :func:`binding` drives it over a UDP socket, either one it opens or one the
caller owns (``sock=``, which it never closes: the point of STUN is to learn the mapping of the
socket the application goes on to use).

The request (RFC 8489 §5, §6.1) is a Binding request with a fresh 96-bit transaction id and, in
this order: CHANGE-REQUEST if asked (RFC 5780 §7.2; value ``00 00 00 0b`` with ``b`` = 0x04 for
"change IP" | 0x02 for "change port"), SOFTWARE if given, USERNAME and MESSAGE-INTEGRITY (or
MESSAGE-INTEGRITY-SHA256) if short-term credentials are given, and always FINGERPRINT.

Retransmission (RFC 8489 §6.2.1): the request is sent at 0, then again after RTO, 2·RTO,
4·RTO, ... (the interval doubles) until ``retransmissions`` requests in all (Rc, default 7) have
gone out; after the last one the client waits Rm·RTO (Rm default 16) more before it gives up
with :class:`StunTimeout`. With the default RTO of 0.5 s that is sends at 0, 0.5, 1.5, 3.5,
7.5, 15.5 and 31.5 s and the timeout at 39.5 s. ``timeout`` caps the whole transaction (the
schedule is cut short there). Every figure is a parameter so tests and impatient tools can
run the same schedule faster.

Which datagrams answer the request: a STUN message (RFC 7983 demultiplexing), that decodes,
carries our transaction id, is a Binding success or error response, has a correct FINGERPRINT
if it has one, and (when credentials were used) a success response with a valid
MESSAGE-INTEGRITY(-SHA256) of the same kind the request used. Anything else is ignored (its
reason recorded in :attr:`BindingTransaction.ignored`) and the transaction keeps waiting: a
stray or forged datagram must not end it (RFC 8489 §6.3.3 and §9.1.4). The source address of
the answer is not checked, because an answer to CHANGE-REQUEST comes from another address on
purpose; the 96-bit transaction id is what matches it. Error responses are accepted without
integrity (a 400 or 401 cannot carry it) and raise :class:`StunErrorResponse`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field

from stoq.nat import stun
from stoq.nat.stun import StunError

__all__ = [
    "DEFAULT_RETRANSMISSIONS",
    "DEFAULT_RM",
    "DEFAULT_RTO",
    "Address",
    "BindingResult",
    "BindingTransaction",
    "Credentials",
    "StunErrorResponse",
    "StunResponseError",
    "StunTimeout",
    "binding",
    "format_address",
    "normalize_address",
    "open_client_socket",
    "parse_address",
    "resolve",
    "resolve_server",
    "run_transaction",
    "socket_address",
]

#: An (ip, port) pair. IPs are in their canonical text form (IPv6 compressed, no zone index).
Address = tuple[str, int]

DEFAULT_RTO = 0.5
DEFAULT_RETRANSMISSIONS = 7
DEFAULT_RM = 16
_RECEIVE_SIZE = 65535


class StunTimeout(StunError):
    """No answer to a STUN request. ``requests_sent`` says how many copies went out."""

    def __init__(self, server: Address, requests_sent: int) -> None:
        self.server = server
        self.requests_sent = requests_sent
        super().__init__(
            f"STUN server {format_address(server)} did not answer "
            f"({requests_sent} request{'s' if requests_sent != 1 else ''} sent)"
        )


class StunErrorResponse(StunError):
    """The server answered with an error response (RFC 8489 §14.8 ERROR-CODE).

    ``unknown_attributes`` holds the UNKNOWN-ATTRIBUTES list of a 420 answer (else empty).
    """

    def __init__(self, code: int, reason: str, unknown_attributes: tuple[int, ...] = ()) -> None:
        self.code = code
        self.reason = reason
        self.unknown_attributes = unknown_attributes
        text = f"STUN error {code}: {reason}"
        if unknown_attributes:
            text += " (unknown attributes " + ", ".join(f"{a:#06x}" for a in unknown_attributes)
            text += ")"
        super().__init__(text)


class StunResponseError(StunError):
    """The server's answer matched our transaction but cannot be used (for example a success
    response without any mapped address, or an address attribute that does not decode)."""


@dataclass(frozen=True)
class Credentials:
    """Short-term credentials (RFC 8489 §9.1): the key is OpaqueString(password).

    ``sha256`` signs with MESSAGE-INTEGRITY-SHA256 instead of MESSAGE-INTEGRITY (HMAC-SHA1).
    """

    username: str
    password: str = field(repr=False)
    sha256: bool = False

    @property
    def key(self) -> bytes:
        return stun.short_term_key(self.password)


@dataclass(frozen=True)
class BindingResult:
    """What a Binding success response says, and where it came from.

    * ``mapped``: XOR-MAPPED-ADDRESS (MAPPED-ADDRESS from servers that only send that): the
      address the server saw the request come from.
    * ``response_origin``: RESPONSE-ORIGIN (RFC 5780 §7.3), the address the server says it
      answered from, or None.
    * ``other_address``: OTHER-ADDRESS (RFC 5780 §7.4), the server's address with the other IP
      and the other port, or None when the server does not do RFC 5780.
    * ``source``: the address the response datagram actually came from.
    * ``server``: the address the request was sent to.
    * ``local``: the local socket's address (as bound: may be a wildcard address).
    * ``software``: the server's SOFTWARE text, or None.
    """

    mapped: Address
    response_origin: Address | None
    other_address: Address | None
    source: Address
    server: Address
    local: Address
    software: str | None = None


def normalize_address(address: tuple[object, ...]) -> Address:
    """``(ip, port)`` from a socket address: canonical IP text, IPv4-mapped IPv6 as IPv4, the
    IPv6 flow info, scope id and any ``%zone`` dropped."""
    host = str(address[0]).split("%", 1)[0]
    port = address[1]
    if not isinstance(port, int):
        raise TypeError(f"not a socket address: {address!r}")
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.compressed, port)


def format_address(address: Address) -> str:
    """``ip:port``, or ``[ip]:port`` for IPv6."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` into ``(host, port)``; :class:`ValueError` if malformed."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"bad address {text!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"bad address {text!r}: expected HOST:PORT or [IPv6]:PORT")
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"bad address {text!r}: expected HOST:PORT with a port 0-65535")
    return (host, int(port_text))


def _address_attribute(message: stun.Message, kind: int, what: str) -> Address | None:
    try:
        address = message.address(kind)
        return None if address is None else normalize_address(address)
    except (StunError, ValueError) as exc:
        raise StunResponseError(f"the server's {what} does not decode: {exc}") from exc


class BindingTransaction:
    """One Binding request and its retransmissions, as a sans-IO state machine.

    Use: send :meth:`start` (``now`` from any monotonic clock); whenever :attr:`deadline` passes
    call :meth:`handle_timeout`, which returns the request to send again, or raises
    :class:`StunTimeout` when the schedule is over; hand every datagram that arrives to
    :meth:`handle_datagram`, which returns the :class:`BindingResult`, raises
    :class:`StunErrorResponse` / :class:`StunResponseError`, or returns None for a datagram that
    is not the answer (the reason is appended to :attr:`ignored`).
    """

    def __init__(
        self,
        server: Address,
        *,
        local: Address = ("0.0.0.0", 0),  # noqa: S104 - only reported back, never bound
        change_ip: bool = False,
        change_port: bool = False,
        rto: float = DEFAULT_RTO,
        retransmissions: int = DEFAULT_RETRANSMISSIONS,
        rm: int = DEFAULT_RM,
        timeout: float | None = None,
        credentials: Credentials | None = None,
        software: str | None = None,
        transaction_id: bytes | None = None,
    ) -> None:
        if rto <= 0:
            raise ValueError(f"rto must be positive, not {rto}")
        if retransmissions < 1:
            raise ValueError(f"retransmissions (Rc) must be at least 1, not {retransmissions}")
        if rm < 0:
            raise ValueError(f"rm must not be negative, not {rm}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self.server = server
        self.local = local
        self.rto = rto
        self.retransmissions = retransmissions
        self.rm = rm
        self.timeout = timeout
        self.credentials = credentials
        self.transaction_id = transaction_id or stun.new_transaction_id()
        if len(self.transaction_id) != stun.TRANSACTION_ID_SIZE:
            raise ValueError("a transaction id is 12 bytes")
        attributes: list[stun.Attribute] = []
        if change_ip or change_port:
            attributes.append(
                stun.Attribute(
                    stun.AttributeType.CHANGE_REQUEST,
                    stun.encode_change_request(change_ip, change_port),
                )
            )
        if software is not None:
            attributes.append(stun.Attribute(stun.AttributeType.SOFTWARE, software.encode()))
        key: bytes | None = None
        if credentials is not None:
            attributes.append(
                stun.Attribute(stun.AttributeType.USERNAME, credentials.username.encode())
            )
            key = credentials.key
        self._key = key
        message = stun.Message(
            stun.Method.BINDING,
            stun.MessageClass.REQUEST,
            self.transaction_id,
            tuple(attributes),
        )
        sha256 = credentials is not None and credentials.sha256
        self.request = stun.encode(
            message,
            integrity_key=None if sha256 else key,
            integrity_sha256_key=key if sha256 else None,
            fingerprint=True,
        )
        #: Why each datagram handed in so far was not taken as the answer.
        self.ignored: list[str] = []
        self.requests_sent = 0
        self._started: float | None = None
        self._interval = rto
        self._deadline = 0.0

    @property
    def deadline(self) -> float:
        """When :meth:`handle_timeout` is next due (same clock as ``now``)."""
        if self._started is None:
            raise RuntimeError("the transaction has not started")
        return self._deadline

    def _cap(self, deadline: float) -> float:
        assert self._started is not None
        if self.timeout is None:
            return deadline
        return min(deadline, self._started + self.timeout)

    def start(self, now: float) -> bytes:
        """The first request to send, at ``now``."""
        if self._started is not None:
            raise RuntimeError("the transaction has already started")
        self._started = now
        self.requests_sent = 1
        self._deadline = self._cap(now + self._interval_after_send())
        return self.request

    def _interval_after_send(self) -> float:
        if self.requests_sent >= self.retransmissions:
            return self.rm * self.rto
        return self._interval

    def handle_timeout(self, now: float) -> bytes | None:
        """The request again if it is time for a retransmission; None if ``now`` is before the
        deadline; :class:`StunTimeout` once the last wait (or ``timeout``) is over."""
        if now < self.deadline:
            return None
        assert self._started is not None
        out_of_time = self.timeout is not None and now >= self._started + self.timeout
        if out_of_time or self.requests_sent >= self.retransmissions:
            raise StunTimeout(self.server, self.requests_sent)
        self.requests_sent += 1
        self._interval *= 2
        self._deadline = self._cap(now + self._interval_after_send())
        return self.request

    def _ignore(self, reason: str) -> None:
        self.ignored.append(reason)

    def handle_datagram(self, data: bytes, source: Address) -> BindingResult | None:
        """Judge one received datagram (see the module docstring for the rules)."""
        if not stun.is_stun(data):
            self._ignore("not a STUN message")
            return None
        try:
            message = stun.decode(data)
        except stun.StunDecodeError as exc:
            self._ignore(f"malformed STUN message: {exc.reason}")
            return None
        if message.transaction_id != self.transaction_id:
            self._ignore("another transaction")
            return None
        if message.message_class not in (stun.MessageClass.SUCCESS, stun.MessageClass.ERROR):
            self._ignore("not a response")
            return None
        if message.method != stun.Method.BINDING:
            self._ignore(f"a response to method {message.method:#05x}, not Binding")
            return None
        if message.get(stun.AttributeType.FINGERPRINT) is not None:
            try:
                stun.verify_fingerprint(data)
            except stun.IntegrityError:
                self._ignore("wrong FINGERPRINT")
                return None
        if message.message_class == stun.MessageClass.ERROR:
            raise self._error(message)
        if self._key is not None:
            assert self.credentials is not None
            try:
                if self.credentials.sha256:
                    stun.verify_integrity_sha256(data, self._key)
                else:
                    stun.verify_integrity(data, self._key)
            except stun.IntegrityError:
                kind = (
                    "MESSAGE-INTEGRITY-SHA256" if self.credentials.sha256 else "MESSAGE-INTEGRITY"
                )
                self._ignore(f"missing or wrong {kind}")
                return None
        return self._result(message, source)

    def _error(self, message: stun.Message) -> StunError:
        value = message.get(stun.AttributeType.ERROR_CODE)
        if value is None:
            return StunResponseError("the server's error response has no ERROR-CODE")
        try:
            code, reason = stun.decode_error_code(value)
        except StunError as exc:
            return StunResponseError(f"the server's ERROR-CODE does not decode: {exc}")
        try:
            unknown = message.unknown_attributes() or ()
        except StunError as exc:
            return StunResponseError(f"the server's UNKNOWN-ATTRIBUTES does not decode: {exc}")
        return StunErrorResponse(code, reason, unknown)

    def _result(self, message: stun.Message, source: Address) -> BindingResult:
        mapped = _address_attribute(
            message, stun.AttributeType.XOR_MAPPED_ADDRESS, "XOR-MAPPED-ADDRESS"
        ) or _address_attribute(message, stun.AttributeType.MAPPED_ADDRESS, "MAPPED-ADDRESS")
        if mapped is None:
            raise StunResponseError(
                "the server's success response has no XOR-MAPPED-ADDRESS nor MAPPED-ADDRESS"
            )
        software_value = message.get(stun.AttributeType.SOFTWARE)
        return BindingResult(
            mapped=mapped,
            response_origin=_address_attribute(
                message, stun.AttributeType.RESPONSE_ORIGIN, "RESPONSE-ORIGIN"
            ),
            other_address=_address_attribute(
                message, stun.AttributeType.OTHER_ADDRESS, "OTHER-ADDRESS"
            ),
            source=source,
            server=self.server,
            local=self.local,
            software=None if software_value is None else software_value.decode(errors="replace"),
        )


async def resolve(host: str, port: int, family: int = socket.AF_UNSPEC) -> Address:
    """The first address ``host`` resolves to for UDP (of ``family`` if given);
    :class:`StunError` if it resolves to none."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise StunError(f"cannot resolve {host!r}: {exc}") from exc
    for info_family, _, _, _, sockaddr in infos:
        if info_family in (socket.AF_INET, socket.AF_INET6):
            return normalize_address(sockaddr)
    raise StunError(f"{host!r} has no IPv4 or IPv6 address")


def socket_address(sock: socket.socket, address: Address) -> tuple[str, int]:
    """``address`` as ``sock.sendto`` wants it: IPv4 on an IPv6 socket becomes ``::ffff:a.b.c.d``
    (which reaches it if the socket is dual-stack)."""
    if sock.family == socket.AF_INET6 and ":" not in address[0]:
        return (f"::ffff:{address[0]}", address[1])
    return address


async def resolve_server(server: tuple[str, int], sock: socket.socket | None = None) -> Address:
    """``server`` as an address: an IP is taken as it is, a name is resolved (to the family of
    ``sock`` if that is IPv4)."""
    host, port = server
    try:
        return normalize_address((host, port))
    except ValueError:
        family = socket.AF_UNSPEC if sock is None or sock.family == socket.AF_INET6 else sock.family
        return await resolve(host, port, family)


def open_client_socket(server: Address, local: tuple[str, int] | None = None) -> socket.socket:
    """A non-blocking UDP socket of the server's family, bound to ``local`` (default: any)."""
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"  # noqa: S104 - any source
        sock.bind(local or (wildcard, 0))
    except BaseException:
        sock.close()
        raise
    return sock


async def run_transaction(sock: socket.socket, transaction: BindingTransaction) -> BindingResult:
    """Drive ``transaction`` over ``sock`` (non-blocking; not closed here) until it ends.

    Only one transaction may use a socket at a time: this reads every datagram the socket gets.
    """
    loop = asyncio.get_running_loop()
    destination = socket_address(sock, transaction.server)

    async def send(data: bytes) -> None:
        try:
            await loop.sock_sendto(sock, data, destination)
        except OSError as exc:
            raise StunError(
                f"cannot send to STUN server {format_address(transaction.server)}: {exc}"
            ) from exc

    await send(transaction.start(loop.time()))
    while True:
        remaining = transaction.deadline - loop.time()
        try:
            data, source = await asyncio.wait_for(
                loop.sock_recvfrom(sock, _RECEIVE_SIZE), max(remaining, 0.0)
            )
        except TimeoutError:
            again = transaction.handle_timeout(loop.time())
            if again is not None:
                await send(again)
            continue
        except OSError as exc:
            # e.g. ICMP port unreachable reported on a connected socket: keep listening.
            transaction.ignored.append(f"socket error: {exc}")
            continue
        result = transaction.handle_datagram(data, normalize_address(source))
        if result is not None:
            return result


async def binding(
    server: tuple[str, int],
    *,
    sock: socket.socket | None = None,
    local: tuple[str, int] | None = None,
    change_ip: bool = False,
    change_port: bool = False,
    timeout: float | None = None,
    rto: float = DEFAULT_RTO,
    retransmissions: int = DEFAULT_RETRANSMISSIONS,
    rm: int = DEFAULT_RM,
    credentials: Credentials | None = None,
    software: str | None = None,
) -> BindingResult:
    """Send a Binding request to ``server`` (``(host, port)``; a name is resolved) and return
    the answer.

    ``sock``: a UDP socket to use (made non-blocking; never closed here); otherwise one is
    opened, bound to ``local`` (default: the wildcard address, any port), and closed after.
    ``change_ip`` / ``change_port`` add CHANGE-REQUEST (RFC 5780). ``rto``, ``retransmissions``
    (Rc, total requests), ``rm`` and ``timeout`` (a cap on the whole exchange, seconds) set the
    schedule described in the module docstring.

    Raises :class:`StunTimeout`, :class:`StunErrorResponse`, :class:`StunResponseError`, or
    :class:`StunError` if the server's name does not resolve or the socket cannot be opened.
    """
    if sock is not None and local is not None:
        raise ValueError("give either sock or local, not both")
    address = await resolve_server(server, sock)
    own = sock is None
    if sock is None:
        try:
            sock = open_client_socket(address, local)
        except OSError as exc:
            raise StunError(f"cannot open a UDP socket for STUN: {exc}") from exc
    else:
        sock.setblocking(False)
    try:
        transaction = BindingTransaction(
            address,
            local=normalize_address(sock.getsockname()),
            change_ip=change_ip,
            change_port=change_port,
            rto=rto,
            retransmissions=retransmissions,
            rm=rm,
            timeout=timeout,
            credentials=credentials,
            software=software,
        )
        return await run_transaction(sock, transaction)
    finally:
        if own:
            sock.close()
