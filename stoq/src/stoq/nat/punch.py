"""UDP hole punching with ICE-style connectivity checks (RFC 8445), sans-IO plus an asyncio shell.

Scope: one data stream, one component (component ID 1), one local UDP socket. The host and
server-reflexive candidates of that socket share it, so a pair is formed on the local *base*
(RFC 8445 §6.1.2.4: a server-reflexive local candidate is replaced by its base and redundant
pairs are pruned). Local relayed candidates are not paired (the socket cannot send through a
TURN allocation); remote relayed candidates are paired like any other remote address.

Candidates (RFC 8445 §5.1.2.1): ``priority = 2**24 * type_preference + 2**8 *
local_preference + (256 - component)``, with type preferences host 126, peer-reflexive 110,
server-reflexive 100, relayed 0, and the local preference 65535 unless given.

Pairs (RFC 8445 §6.1.2.3): with ``G`` the controlling agent's candidate priority and ``D`` the
controlled one's, ``pair priority = 2**32 * min(G, D) + 2 * max(G, D) + (1 if G > D else 0)``.
Pairs are checked highest priority first. There is no freezing by foundation (a single
component makes it moot); every pair starts Waiting.

A connectivity check is a Binding request (RFC 8445 §7.2.2) carrying, in this order:

* USERNAME ``"<remote ufrag>:<local ufrag>"`` (UTF-8),
* PRIORITY: 4 bytes, big-endian, the priority the sender's base would have as a peer-reflexive
  candidate (type preference 110),
* ICE-CONTROLLING or ICE-CONTROLLED: 8 bytes, the sender's random 64-bit tie-breaker,
* USE-CANDIDATE (empty) on the controlling agent's nomination check,
* MESSAGE-INTEGRITY with the short-term key ``OpaqueString(remote password)``, then
* FINGERPRINT.

An incoming check is answered only if its USERNAME is ``"<local ufrag>:<remote ufrag>"``, its
MESSAGE-INTEGRITY verifies with ``OpaqueString(local password)`` and its FINGERPRINT is right;
anything else is ignored (the reason is appended to :attr:`PunchSession.ignored`). The answer is
a Binding success response with XOR-MAPPED-ADDRESS (the request's source), MESSAGE-INTEGRITY
with the local password's key and FINGERPRINT. A role conflict (both controlling or both
controlled) is resolved by the tie-breakers as RFC 8445 §7.3.1.1 says, with error 487 "Role
Conflict". A check from an unknown address adds a peer-reflexive remote candidate (priority
from its PRIORITY attribute) and a pair; every answered check triggers a check of its pair back
(§7.3.1.4), sent ahead of the ordinary ones.

A pair succeeds when a success response to *our* check on it arrives from the very address the
check went to (§7.2.5.2.1, symmetric paths), with a valid MESSAGE-INTEGRITY (remote password's
key) and FINGERPRINT. A mapped address that is none of our candidates is recorded as a local
peer-reflexive candidate (:attr:`PunchSession.learned`).

Nomination (regular, §8.1.1): the controlling agent nominates the first pair that succeeds by
checking it again with USE-CANDIDATE; when that check succeeds the session's :attr:`result` is
:class:`Selected`. The controlled agent selects a pair once it has received USE-CANDIDATE on it
and its own check on it has succeeded. If no pair is selected before the deadline the result is
:class:`Failed`.

Pacing: one new check (triggered first, then ordinary) every ``ta`` seconds (Ta, default
20 ms). A check is retransmitted after ``rto``, then the interval doubles up to ``max_rto``,
until ``transmissions`` requests have gone out; then its pair is Failed (a later check from the
peer on that pair triggers it again).

Not built here: multi-port ("birthday") probing of endpoint-dependent NATs, aggressive
nomination, several components or streams, consent freshness (RFC 7675), and the exchange of
candidates over an existing STOQ connection (callers pass them in).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import secrets
import socket
import struct
from dataclasses import dataclass, field

from stoq.nat import stun
from stoq.nat.stun import Attribute, AttributeType, MessageClass, StunError
from stoq.nat.stun_client import Address, format_address, normalize_address, socket_address

__all__ = [
    "DEFAULT_TA",
    "Candidate",
    "CandidateKind",
    "CandidatePair",
    "Failed",
    "PairState",
    "PunchError",
    "PunchFailed",
    "PunchSession",
    "Selected",
    "candidate_priority",
    "pair_priority",
    "punch",
    "receive",
]

DEFAULT_TA = 0.02
DEFAULT_RTO = 0.1
DEFAULT_MAX_RTO = 0.4
DEFAULT_TRANSMISSIONS = 12
COMPONENT = 1
ROLE_CONFLICT = 487
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_RECEIVE_SIZE = 65535


class PunchError(StunError):
    """Hole punching was misused (bad candidates or parameters)."""


class PunchFailed(PunchError):
    """No candidate pair was selected; ``reason`` says what happened."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"hole punching failed: {reason}")


class CandidateKind(enum.StrEnum):
    """Candidate types (RFC 8445 §5.1.1)."""

    HOST = "host"
    PEER_REFLEXIVE = "prflx"
    SERVER_REFLEXIVE = "srflx"
    RELAYED = "relay"


#: RFC 8445 §5.1.2.2 recommended type preferences.
TYPE_PREFERENCE: dict[CandidateKind, int] = {
    CandidateKind.HOST: 126,
    CandidateKind.PEER_REFLEXIVE: 110,
    CandidateKind.SERVER_REFLEXIVE: 100,
    CandidateKind.RELAYED: 0,
}


def candidate_priority(
    kind: CandidateKind, local_preference: int = 65535, component: int = COMPONENT
) -> int:
    """RFC 8445 §5.1.2.1: ``2**24 * type_pref + 2**8 * local_pref + (256 - component)``."""
    if not 0 <= local_preference <= 0xFFFF:
        raise PunchError(f"local preference {local_preference} is not in 0..65535")
    if not 1 <= component <= 256:
        raise PunchError(f"component {component} is not in 1..256")
    return (TYPE_PREFERENCE[kind] << 24) + (local_preference << 8) + (256 - component)


def pair_priority(controlling: int, controlled: int) -> int:
    """RFC 8445 §6.1.2.3: ``2**32 * min(G, D) + 2 * max(G, D) + (1 if G > D else 0)``."""
    low, high = min(controlling, controlled), max(controlling, controlled)
    return (low << 32) + 2 * high + (1 if controlling > controlled else 0)


@dataclass(frozen=True)
class Candidate:
    """A transport address one side may be reached at.

    ``base`` is the address of the local socket the candidate belongs to (the candidate's own
    address for host candidates; for a server-reflexive one, the host address it was learned
    through). ``foundation`` groups candidates of the same type, base IP and server (§5.1.1.3).
    """

    kind: CandidateKind
    address: Address
    priority: int
    foundation: str
    base: Address | None = None

    @classmethod
    def make(
        cls,
        kind: CandidateKind,
        address: Address,
        *,
        base: Address | None = None,
        local_preference: int = 65535,
        server: str = "",
    ) -> Candidate:
        """A candidate with the RFC priority and a foundation from type, base IP and server."""
        address = normalize_address(address)
        own_base = normalize_address(base) if base is not None else address
        foundation = f"{kind.value}:{own_base[0]}:{server}"
        return cls(kind, address, candidate_priority(kind, local_preference), foundation, own_base)

    @property
    def local_base(self) -> Address:
        return self.base if self.base is not None else self.address


class PairState(enum.Enum):
    WAITING = "waiting"
    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass
class CandidatePair:
    """A local base and a remote candidate, with its check state (mutable bookkeeping)."""

    local: Candidate
    remote: Candidate
    priority: int
    state: PairState = PairState.WAITING
    nominated: bool = False  # controlled: USE-CANDIDATE received; controlling: sent and acked
    transaction_id: bytes | None = None
    request: bytes = b""
    use_candidate: bool = False
    sent: int = 0
    next_retransmit: float = 0.0
    interval: float = 0.0

    @property
    def key(self) -> tuple[Address, Address]:
        return (self.local.local_base, self.remote.address)


@dataclass(frozen=True)
class Selected:
    """The pair both sides use: send from the local base to ``remote.address``."""

    local: Candidate
    remote: Candidate


@dataclass(frozen=True)
class Failed:
    """No pair was selected before the deadline."""

    reason: str


def _family(address: Address) -> int:
    return socket.AF_INET6 if ":" in address[0] else socket.AF_INET


@dataclass
class _Stats:
    checks_sent: int = 0
    responses_sent: int = 0
    pairs_tried: set[tuple[Address, Address]] = field(default_factory=set)


class PunchSession:
    """The connectivity checks of one side, as a sans-IO state machine (module docstring).

    Feed every datagram the socket receives to :meth:`handle_datagram` (it returns
    non-STUN datagrams as application data, None otherwise), send everything
    :meth:`datagrams_to_send` returns, and call :meth:`handle_timeout` when :meth:`get_timer`
    passes. :attr:`result` becomes :class:`Selected` or :class:`Failed`; after that the session
    still answers the peer's checks (keep feeding STUN datagrams to it) but starts no new ones.
    """

    def __init__(
        self,
        local_candidates: list[Candidate],
        remote_candidates: list[Candidate],
        *,
        controlling: bool,
        local_ufrag: str,
        local_pwd: str,
        remote_ufrag: str,
        remote_pwd: str,
        now: float,
        timeout: float = 5.0,
        ta: float = DEFAULT_TA,
        rto: float = DEFAULT_RTO,
        max_rto: float = DEFAULT_MAX_RTO,
        transmissions: int = DEFAULT_TRANSMISSIONS,
        tie_breaker: int | None = None,
    ) -> None:
        if not local_ufrag or not remote_ufrag:
            raise PunchError("both ufrags must be non-empty")
        if ta <= 0 or rto <= 0 or max_rto < rto or transmissions < 1 or timeout <= 0:
            raise PunchError(
                "ta, rto and timeout must be positive, max_rto >= rto, transmissions >= 1"
            )
        self.controlling = controlling
        self.local_ufrag = local_ufrag
        self.remote_ufrag = remote_ufrag
        self._local_key = stun.short_term_key(local_pwd)
        self._remote_key = stun.short_term_key(remote_pwd)
        self.tie_breaker = secrets.randbits(64) if tie_breaker is None else tie_breaker
        self.deadline = now + timeout
        self.timeout = timeout
        self.ta = ta
        self.rto = rto
        self.max_rto = max_rto
        self.transmissions = transmissions
        self.result: Selected | Failed | None = None
        #: Why datagrams were ignored (one line each).
        self.ignored: list[str] = []
        #: Local peer-reflexive addresses learned from XOR-MAPPED-ADDRESS.
        self.learned: list[Candidate] = []
        #: Application datagrams the asyncio driver received while punching (for :func:`receive`).
        self.backlog: collections.deque[tuple[bytes, Address]] = collections.deque()
        self._bases: list[Candidate] = []
        self._known_local: set[Address] = set()
        for candidate in local_candidates:
            self._known_local.add(candidate.address)
            if candidate.kind == CandidateKind.RELAYED:
                continue  # this socket cannot send through a relay
            base = candidate.local_base
            if all(b.address != base for b in self._bases):
                self._bases.append(
                    candidate
                    if candidate.kind == CandidateKind.HOST and candidate.address == base
                    else Candidate.make(CandidateKind.HOST, base)
                )
        if not self._bases:
            raise PunchError("no local host or server-reflexive candidate to check from")
        self._remotes: dict[Address, Candidate] = {}
        self._pairs: dict[tuple[Address, Address], CandidatePair] = {}
        self._triggered: collections.deque[CandidatePair] = collections.deque()
        self._outgoing: list[tuple[bytes, Address]] = []
        self._by_transaction: dict[bytes, CandidatePair] = {}
        self._next_check = now
        self._nominating: CandidatePair | None = None
        self._stats = _Stats()
        for remote in remote_candidates:
            self.add_remote_candidate(remote)

    # --- candidates and pairs ---

    def add_remote_candidate(self, remote: Candidate) -> None:
        """Add a remote candidate (and its pairs); one already known is kept as it is."""
        address = normalize_address(remote.address)
        if address in self._remotes:
            return
        self._remotes[address] = remote
        for base in self._bases:
            if _family(base.address) == _family(address):
                self._pair(base, remote)

    def _pair(self, base: Candidate, remote: Candidate) -> CandidatePair:
        key = (base.address, remote.address)
        pair = self._pairs.get(key)
        if pair is None:
            local_priority = self._check_priority(base)
            if self.controlling:
                priority = pair_priority(local_priority, remote.priority)
            else:
                priority = pair_priority(remote.priority, local_priority)
            pair = CandidatePair(base, remote, priority)
            self._pairs[key] = pair
        return pair

    @staticmethod
    def _check_priority(base: Candidate) -> int:
        return base.priority

    @property
    def pairs(self) -> list[CandidatePair]:
        """Every pair, highest priority first."""
        return sorted(self._pairs.values(), key=lambda p: p.priority, reverse=True)

    def _base_for(self, remote: Address) -> Candidate | None:
        for pair in self._pairs.values():
            if pair.remote.address == remote:
                return pair.local
        for base in self._bases:
            if _family(base.address) == _family(remote):
                return base
        return None

    # --- outputs ---

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """Every ``(datagram, destination)`` due, oldest first; the list is emptied."""
        out, self._outgoing = self._outgoing, []
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timeout` is next due (None: nothing to time)."""
        if self.result is not None:
            return None
        times = [self.deadline]
        if self._triggered or any(p.state == PairState.WAITING for p in self._pairs.values()):
            times.append(self._next_check)
        times.extend(
            p.next_retransmit for p in self._pairs.values() if p.state == PairState.IN_PROGRESS
        )
        return min(times)

    def handle_timeout(self, now: float) -> None:
        """Retransmit due checks, start the next paced check, or fail at the deadline."""
        if self.result is not None:
            return
        if now >= self.deadline:
            self._fail(
                f"no candidate pair selected within {self.timeout:g} s "
                f"({self._stats.checks_sent} checks sent on {len(self._stats.pairs_tried)} of "
                f"{len(self._pairs)} pairs, {self._stats.responses_sent} checks answered)"
            )
            return
        for pair in list(self._pairs.values()):
            if pair.state == PairState.IN_PROGRESS and now >= pair.next_retransmit:
                if pair.sent >= self.transmissions:
                    self._pair_failed(pair)
                else:
                    self._transmit(pair, now)
        if now >= self._next_check:
            waiting = self._next_pair()
            if waiting is not None:
                self._start_check(waiting, now, use_candidate=waiting.use_candidate)
            self._next_check = now + self.ta

    def _fail(self, reason: str) -> None:
        self.result = Failed(reason)

    def _next_pair(self) -> CandidatePair | None:
        while self._triggered:
            pair = self._triggered.popleft()
            if pair.state == PairState.WAITING:
                return pair
        for pair in self.pairs:
            if pair.state == PairState.WAITING:
                return pair
        return None

    def _pair_failed(self, pair: CandidatePair) -> None:
        pair.state = PairState.FAILED
        if pair.transaction_id is not None:
            self._by_transaction.pop(pair.transaction_id, None)
        if self._nominating is pair:
            self._nominating = None
            pair.use_candidate = False
            self._nominate_next()

    def _start_check(self, pair: CandidatePair, now: float, *, use_candidate: bool) -> None:
        if pair.transaction_id is not None:
            self._by_transaction.pop(pair.transaction_id, None)
        transaction_id = stun.new_transaction_id()
        role = AttributeType.ICE_CONTROLLING if self.controlling else AttributeType.ICE_CONTROLLED
        attributes = [
            Attribute(AttributeType.USERNAME, f"{self.remote_ufrag}:{self.local_ufrag}".encode()),
            Attribute(
                AttributeType.PRIORITY,
                _U32.pack(candidate_priority(CandidateKind.PEER_REFLEXIVE)),
            ),
            Attribute(role, _U64.pack(self.tie_breaker)),
        ]
        if use_candidate:
            attributes.append(Attribute(AttributeType.USE_CANDIDATE, b""))
        message = stun.binding_request(transaction_id, *attributes)
        pair.request = stun.encode(message, integrity_key=self._remote_key, fingerprint=True)
        pair.transaction_id = transaction_id
        pair.use_candidate = use_candidate
        pair.state = PairState.IN_PROGRESS
        pair.sent = 0
        pair.interval = self.rto
        self._by_transaction[transaction_id] = pair
        self._stats.pairs_tried.add(pair.key)
        self._transmit(pair, now)

    def _transmit(self, pair: CandidatePair, now: float) -> None:
        self._outgoing.append((pair.request, pair.remote.address))
        self._stats.checks_sent += 1
        if pair.sent > 0:
            pair.interval = min(pair.interval * 2, self.max_rto)
        pair.sent += 1
        pair.next_retransmit = now + pair.interval

    def _trigger(self, pair: CandidatePair) -> None:
        if pair.state in (PairState.WAITING, PairState.FAILED):
            pair.state = PairState.WAITING
            if pair not in self._triggered:
                self._triggered.append(pair)

    # --- inputs ---

    def handle_datagram(self, data: bytes, source: Address, now: float) -> bytes | None:
        """Process one received datagram; non-STUN data is returned (application data)."""
        if not stun.is_stun(data):
            return data
        try:
            message = stun.decode(data)
        except StunError as exc:
            self.ignored.append(f"from {format_address(source)}: {exc}")
            return None
        if message.method != stun.Method.BINDING:
            self.ignored.append(f"from {format_address(source)}: method {message.method:#x}")
            return None
        if message.message_class == MessageClass.REQUEST:
            self._handle_request(message, data, source, now)
        elif message.message_class in (MessageClass.SUCCESS, MessageClass.ERROR):
            self._handle_response(message, data, source, now)
        else:
            self.ignored.append(f"from {format_address(source)}: a Binding indication")
        return None

    def _authentic(self, data: bytes, key: bytes, source: Address, what: str) -> bool:
        try:
            stun.verify_integrity(data, key)
            stun.verify_fingerprint(data)
        except StunError as exc:
            self.ignored.append(f"{what} from {format_address(source)}: {exc}")
            return False
        return True

    def _handle_request(
        self, message: stun.Message, data: bytes, source: Address, now: float
    ) -> None:
        expected = f"{self.local_ufrag}:{self.remote_ufrag}"
        try:
            username = message.username()
        except StunError as exc:
            self.ignored.append(f"check from {format_address(source)}: {exc}")
            return
        if username != expected:
            self.ignored.append(
                f"check from {format_address(source)}: USERNAME {username!r}, not {expected!r}"
            )
            return
        if not self._authentic(data, self._local_key, source, "check"):
            return
        priority_value = message.get(AttributeType.PRIORITY)
        if priority_value is None or len(priority_value) != 4:
            self.ignored.append(f"check from {format_address(source)}: no valid PRIORITY")
            return
        if self._role_conflict(message, source):
            return
        answer = stun.success_response(
            message,
            Attribute(
                AttributeType.XOR_MAPPED_ADDRESS,
                stun.encode_xor_address(source[0], source[1], message.transaction_id),
            ),
        )
        self._outgoing.append(
            (stun.encode(answer, integrity_key=self._local_key, fingerprint=True), source)
        )
        self._stats.responses_sent += 1
        remote = self._remotes.get(source)
        if remote is None:
            (priority,) = _U32.unpack(priority_value)
            remote = Candidate(
                CandidateKind.PEER_REFLEXIVE, source, priority, f"prflx:{source[0]}", None
            )
            self._remotes[source] = remote
        base = self._base_for(source)
        if base is None:
            self.ignored.append(f"check from {format_address(source)}: no local base of its family")
            return
        pair = self._pair(base, remote)
        if message.get(AttributeType.USE_CANDIDATE) is not None and not self.controlling:
            pair.nominated = True
        if self.result is not None:
            return
        if pair.state == PairState.SUCCEEDED:
            self._maybe_select(pair)
        elif pair.state == PairState.IN_PROGRESS:
            # The hole is open now: resend at once instead of waiting for the retransmission.
            pair.next_retransmit = now
        else:
            self._trigger(pair)

    def _role_conflict(self, message: stun.Message, source: Address) -> bool:
        """RFC 8445 §7.3.1.1; True if the request was answered with 487 (or dropped)."""
        theirs = message.get(
            AttributeType.ICE_CONTROLLING if self.controlling else AttributeType.ICE_CONTROLLED
        )
        if theirs is None:
            return False
        if len(theirs) != 8:
            self.ignored.append(f"check from {format_address(source)}: bad tie-breaker length")
            return True
        (their_tie_breaker,) = _U64.unpack(theirs)
        we_win = self.tie_breaker >= their_tie_breaker
        if we_win == self.controlling:
            answer = stun.error_response(message, ROLE_CONFLICT, "Role Conflict")
            self._outgoing.append(
                (stun.encode(answer, integrity_key=self._local_key, fingerprint=True), source)
            )
            return True
        self._switch_role()
        return False

    def _switch_role(self) -> None:
        self.controlling = not self.controlling
        for pair in self._pairs.values():
            g, d = (
                (pair.local.priority, pair.remote.priority)
                if self.controlling
                else (pair.remote.priority, pair.local.priority)
            )
            pair.priority = pair_priority(g, d)
            pair.nominated = False

    def _handle_response(
        self, message: stun.Message, data: bytes, source: Address, now: float
    ) -> None:
        pair = self._by_transaction.get(message.transaction_id)
        if pair is None:
            self.ignored.append(f"response from {format_address(source)}: unknown transaction")
            return
        if not self._authentic(data, self._remote_key, source, "response"):
            return
        del self._by_transaction[message.transaction_id]
        pair.transaction_id = None
        if source != pair.remote.address:
            self.ignored.append(
                f"response from {format_address(source)}: the check went to "
                f"{format_address(pair.remote.address)} (asymmetric path)"
            )
            self._pair_failed(pair)
            return
        if message.message_class == MessageClass.ERROR:
            error = message.error()
            if error is not None and error[0] == ROLE_CONFLICT:
                self._switch_role()
                pair.state = PairState.WAITING
                self._triggered.appendleft(pair)
                return
            self.ignored.append(f"response from {format_address(source)}: error {error}")
            self._pair_failed(pair)
            return
        try:
            mapped = message.xor_mapped_address()
        except StunError as exc:
            self.ignored.append(f"response from {format_address(source)}: {exc}")
            mapped = None
        if mapped is not None:
            mapped = normalize_address(mapped)
            if mapped not in self._known_local:
                self._known_local.add(mapped)
                self.learned.append(
                    Candidate.make(CandidateKind.PEER_REFLEXIVE, mapped, base=pair.local.address)
                )
        pair.state = PairState.SUCCEEDED
        if self.result is not None:
            return
        if self.controlling:
            if pair.use_candidate:
                pair.nominated = True
                self.result = Selected(pair.local, pair.remote)
            elif self._nominating is None:
                self._nominate(pair, now)
        else:
            self._maybe_select(pair)

    def _maybe_select(self, pair: CandidatePair) -> None:
        if not self.controlling and pair.nominated and pair.state == PairState.SUCCEEDED:
            self.result = Selected(pair.local, pair.remote)

    def _nominate(self, pair: CandidatePair, now: float) -> None:
        self._nominating = pair
        self._start_check(pair, now, use_candidate=True)

    def _nominate_next(self) -> None:
        for pair in self.pairs:
            if pair.state == PairState.SUCCEEDED and not pair.use_candidate:
                pair.state = PairState.WAITING
                pair.use_candidate = True
                self._nominating = pair
                self._triggered.appendleft(pair)
                return


# --- asyncio shell -------------------------------------------------------------------------------


async def _flush(sock: socket.socket, session: PunchSession) -> None:
    loop = asyncio.get_running_loop()
    for data, destination in session.datagrams_to_send():
        try:
            await loop.sock_sendto(sock, data, socket_address(sock, destination))
        except OSError as exc:
            session.ignored.append(f"cannot send to {format_address(destination)}: {exc}")


async def punch(
    sock: socket.socket, session: PunchSession, *, timeout: float | None = None
) -> Selected:
    """Run ``session`` on ``sock`` (made non-blocking, never closed) until a pair is selected.

    Application datagrams that arrive meanwhile are kept in ``session.backlog`` for
    :func:`receive`. ``timeout`` caps the whole run (the session's own deadline applies too).
    Raises :class:`PunchFailed`.
    """
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    stop = None if timeout is None else loop.time() + timeout
    while session.result is None:
        await _flush(sock, session)
        timer = session.get_timer()
        if stop is not None and loop.time() >= stop:
            raise PunchFailed(f"no pair selected within the driver's {timeout:g} s")
        ends = [t for t in (timer, stop) if t is not None]
        wait = max(min(ends) - loop.time(), 0.0) if ends else None
        try:
            data, source = await asyncio.wait_for(loop.sock_recvfrom(sock, _RECEIVE_SIZE), wait)
        except TimeoutError:
            session.handle_timeout(loop.time())
            continue
        except OSError as exc:
            session.ignored.append(f"socket error: {exc}")
            continue
        address = normalize_address(source)
        application = session.handle_datagram(data, address, loop.time())
        if application is not None:
            session.backlog.append((application, address))
        now = loop.time()
        timer = session.get_timer()
        if timer is not None and now >= timer:
            session.handle_timeout(now)
    await _flush(sock, session)
    if isinstance(session.result, Failed):
        raise PunchFailed(session.result.reason)
    return session.result


async def receive(
    sock: socket.socket, session: PunchSession, *, timeout: float
) -> tuple[bytes, Address]:
    """The next application datagram on ``sock``, answering the peer's checks meanwhile.

    Raises :class:`TimeoutError` after ``timeout`` seconds without one.
    """
    if session.backlog:
        return session.backlog.popleft()
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        while True:
            data, source = await loop.sock_recvfrom(sock, _RECEIVE_SIZE)
            address = normalize_address(source)
            application = session.handle_datagram(data, address, loop.time())
            await _flush(sock, session)
            if application is not None:
                return application, address
