"""UDP hole punching with ICE-style connectivity checks (RFC 8445), sans-IO plus an asyncio shell,
with multi-port ("birthday") probing for endpoint-dependent NATs.

Scope: one data stream, one component (component ID 1), one or more local UDP sockets. Each
socket is a *base* (RFC 8445 §5.1.1.1), named by its host candidate's address. The host and
server-reflexive candidates of a socket share it, so a pair is formed on the local base (§6.1.2.4:
a server-reflexive local candidate is replaced by its base and redundant pairs are pruned); a
pair is keyed ``(base address, remote address)``. Local relayed candidates are not paired (a
socket cannot send through a TURN allocation); remote relayed candidates are paired like any
other remote address. The *primary* base is the base of the first local candidate (skipping
relayed ones).

Candidates (RFC 8445 §5.1.2.1): ``priority = 2**24 * type_preference + 2**8 *
local_preference + (256 - component)``, with type preferences host 126, peer-reflexive 110,
server-reflexive 100, relayed 0, and the local preference 65535 unless given.

Pairs (RFC 8445 §6.1.2.3): with ``G`` the controlling agent's candidate priority and ``D`` the
controlled one's, ``pair priority = 2**32 * min(G, D) + 2 * max(G, D) + (1 if G > D else 0)``.
Pairs are checked highest priority first. There is no freezing by foundation (a single
component makes it moot); every pair starts Waiting. Without birthday probing every base is
paired with every remote candidate of its address family.

A connectivity check is a Binding request (RFC 8445 §7.2.2) carrying, in this order:

* USERNAME ``"<remote ufrag>:<local ufrag>"`` (UTF-8),
* PRIORITY: 4 bytes, big-endian, the priority the sender's base would have as a peer-reflexive
  candidate (type preference 110),
* ICE-CONTROLLING or ICE-CONTROLLED: 8 bytes, the sender's random 64-bit tie-breaker,
* USE-CANDIDATE (empty) on the controlling agent's nomination check,
* MESSAGE-INTEGRITY with the short-term key ``OpaqueString(remote password)``, then
* FINGERPRINT.

It is sent from the pair's base: :meth:`PunchSession.datagrams_to_send` yields ``(datagram,
destination, base)`` and the caller sends the datagram from the socket of ``base``. Every
datagram received is handed to :meth:`PunchSession.handle_datagram` with the base of the socket
it arrived on.

An incoming check is answered only if its USERNAME is ``"<local ufrag>:<remote ufrag>"``, its
MESSAGE-INTEGRITY verifies with ``OpaqueString(local password)`` and its FINGERPRINT is right;
anything else is ignored (the reason is appended to :attr:`PunchSession.ignored`). The answer is
a Binding success response with XOR-MAPPED-ADDRESS (the request's source), MESSAGE-INTEGRITY
with the local password's key and FINGERPRINT, sent from the base the check arrived on. A role
conflict (both controlling or both controlled) is resolved by the tie-breakers as RFC 8445
§7.3.1.1 says, with error 487 "Role Conflict". A check from an unknown address adds a
peer-reflexive remote candidate (priority from its PRIORITY attribute); the pair of the
receiving base and the check's source is created if needed, and every answered check triggers
a check of that pair back (§7.3.1.4), sent ahead of the ordinary ones.

A pair succeeds when a success response to *our* check on it arrives from the very address the
check went to and (when the caller says which) on the base it was sent from (§7.2.5.2.1,
symmetric paths), with a valid MESSAGE-INTEGRITY (remote password's key) and FINGERPRINT. A
mapped address that is none of our candidates is recorded as a local peer-reflexive candidate
(:attr:`PunchSession.learned`).

Nomination (regular, §8.1.1): the controlling agent nominates the first pair that succeeds by
checking it again with USE-CANDIDATE; when that check succeeds the session's :attr:`result` is
:class:`Selected` (``local`` is the winning base's host candidate, so the caller knows which
socket won). The controlled agent selects a pair once it has received USE-CANDIDATE on it and
its own check on it has succeeded. If no pair is selected before the deadline the result is
:class:`Failed`.

Pacing: one new check (triggered first, then ordinary) every ``ta`` seconds (Ta, default
20 ms). A check is retransmitted after ``rto``, then the interval doubles up to ``max_rto``,
until ``transmissions`` requests have gone out; then its pair is Failed (a later check from the
peer on that pair triggers it again).

Birthday probing (the approach Tailscale describes for endpoint-dependent NATs)
---------------------------------------------------------------------------------

A NAT with endpoint-dependent mapping (RFC 4787 "address-and-port-dependent", the classic
"symmetric" NAT) gives each new destination a new public port, so the port its peer learned
from STUN is useless to that peer, and a peer behind a filter that only admits the exact
``(IP, port)`` it sent to cannot be reached by the first checks either. When exactly one side is
endpoint-dependent (:func:`birthday_roles`):

* The *hard* side (:attr:`BirthdayRole.OPEN_PORTS`) opens ``K`` extra sockets (default
  :data:`BIRTHDAY_PORTS` = 256) and passes each as one more HOST candidate (its own base) after
  its primary candidates. Each extra base is paired only with the remote's server-reflexive and
  peer-reflexive candidates given to the session (a peer-reflexive candidate learned later from
  a check is paired with the base the check arrived on only). The first check of every extra
  pair goes out in an opening burst paced at :attr:`Birthday.rate` datagrams per second (not at
  Ta), then retransmits as usual; each such check opens one more mapping (a fresh random public
  port) towards the easy side. The primary base behaves as without birthday probing.
* The *easy* side (:attr:`BirthdayRole.SPRAY`) sends, from its primary base, one check to each
  of ``P`` (:attr:`Birthday.probes`, default 4096) distinct ports of the hard side's public IP
  (:attr:`Birthday.remote_ip`), drawn without replacement from ``first_port..last_port``
  (default 1024-65535), paced at :attr:`Birthday.rate`: every probe whose time has come is
  emitted at each :meth:`PunchSession.handle_timeout` step. Probe ``k`` (from 0) is due at
  ``start + k / rate``. The probes are one ordinary, authenticated check (the byte format
  above, without USE-CANDIDATE) signed once and sent to every port: they share one transaction
  ID, so a probe costs one ``sendto`` and no bookkeeping beyond the set of sprayed addresses.
  Each probe is sent ONCE, never retransmitted; an unanswered one leaves no pair and nothing in
  :attr:`PunchSession.ignored`. A port whose address already is a remote candidate is skipped
  (that pair is checked the ordinary way). Each probe opens an outbound flow through the easy
  side's own filter; one that reaches one of the hard side's open mappings is answered from
  that socket. A success response to the spray's transaction from a sprayed address (on the
  primary base) creates the pair of the primary base and that address (remote candidate:
  peer-reflexive, foundation ``"birthday:<remote_ip>"``, :attr:`Candidate.from_birthday_spray`)
  and makes it Succeeded like any other; a response from an address that was not sprayed is
  ignored. If the answer is lost, the hard side's triggered check back completes the hit: it
  arrives from a sprayed address, so it creates that same pair and triggers an ordinary check
  of it.
* Both sides stop at the first pair that succeeds (any pair: a path works, and more probing
  would only load both ends): the burst still queued is dropped, the spray sends no more
  probes, and the birthday pairs still in progress stop retransmitting (they stay In-Progress:
  a late answer still makes one Succeeded, and a check from the peer on one resends at once and
  resumes its retransmissions). Otherwise the spray ends when all ``P`` probes are out, and
  everything stops at the selection or the deadline.

Why it works: the hard side has ``K`` mappings open, at ports its NAT chose at random among the
``N`` = 64 512 ports 1024-65535 (Linux ``MASQUERADE --random-fully``). ``P`` distinct probes
drawn without replacement miss all ``K`` with probability about ``(1 - P/N)**K``: with ``K`` =
256 and ``P`` = 4096 that is ``(1 - 4096/64512)**256`` ≈ 5e-8 (``P`` = 2048: 3e-4; ``P`` = 1024:
0.017). The budget is bounded and fixed in advance: the easy side sends at most ``P`` probes
(4096 datagrams of about 100 bytes, 2.05 s at 2000 per second), fewer when a pair succeeds
first; the hard side sends at most ``K * transmissions`` extra checks (256 * 12) per remote
candidate it pairs its extra bases with, the first ``K`` within ``K / rate`` seconds (0.13 s),
also cut short by the first success. The estimate assumes ports allocated uniformly at random;
the spray does not aim at ports near a known mapping, so a NAT that allocates sequentially is
not its target. Both sides hard cannot be punched within this budget (each side would need
the other's ports guessed at once); a relay serves that case.

Not built here: aggressive nomination and several components or streams. Candidates come from
the caller: :mod:`stoq.nat.traversal` gathers them and exchanges them through the rendezvous
node, and :mod:`stoq.nat.peer_link` keeps the selected path alive (keepalives, restarts).

The asyncio shell (:func:`punch`, :func:`receive`) takes one socket (it serves every base) or a
mapping ``{base address: socket}``, reads every socket with ``loop.add_reader``, feeds each
datagram with the base it arrived on, and sends each datagram from its base's socket.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import heapq
import ipaddress
import math
import random
import secrets
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

from stoq.nat import stun
from stoq.nat.stun import Attribute, AttributeType, MessageClass, StunError
from stoq.nat.stun_client import Address, format_address, normalize_address, socket_address

__all__ = [
    "BIRTHDAY_PORTS",
    "DEFAULT_TA",
    "Birthday",
    "BirthdayRole",
    "Candidate",
    "CandidateKind",
    "CandidatePair",
    "Failed",
    "PairState",
    "PunchError",
    "PunchFailed",
    "PunchSession",
    "Selected",
    "birthday_roles",
    "candidate_priority",
    "pair_priority",
    "punch",
    "receive",
]

DEFAULT_TA = 0.02
DEFAULT_RTO = 0.1
DEFAULT_MAX_RTO = 0.4
DEFAULT_TRANSMISSIONS = 12
#: The number of extra sockets the hard side of a birthday punch opens (``K``).
BIRTHDAY_PORTS = 256
COMPONENT = 1
ROLE_CONFLICT = 487
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_RECEIVE_SIZE = 65535
#: Datagrams read from one socket per event-loop callback (the others get their turn).
_READ_BATCH = 64
_BIRTHDAY_FOUNDATION = "birthday"
#: A burst or spray datagram due within this many seconds of ``now`` counts as due (float
#: rounding of ``start + k / rate`` against a caller's clock).
_DUE_SLACK = 1e-9


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


class BirthdayRole(enum.StrEnum):
    """A side's part in birthday probing (module docstring)."""

    OPEN_PORTS = "open-ports"  # we are the endpoint-dependent ("hard") side
    SPRAY = "spray"  # we are the endpoint-independent ("easy") side


def birthday_roles(
    local_mapping_independent: bool, remote_mapping_independent: bool
) -> BirthdayRole | None:
    """Our birthday role from both sides' mapping behaviour: the hard (endpoint-dependent) side
    opens ports, the easy side sprays. None when both are alike: both easy need no birthday
    probing, and both hard cannot be punched within the probe budget (use a relay)."""
    if local_mapping_independent == remote_mapping_independent:
        return None
    return BirthdayRole.SPRAY if local_mapping_independent else BirthdayRole.OPEN_PORTS


@dataclass(frozen=True)
class Birthday:
    """Birthday probing parameters (module docstring); validated on construction.

    ``remote_ip``, ``probes``, ``first_port``, ``last_port`` and ``seed`` concern the SPRAY role;
    ``rate`` (datagrams per second) paces the spray and the OPEN_PORTS opening burst. ``seed``
    makes the port draw reproducible (``random.Random(seed)``, for tests); None draws with a
    generator seeded from :mod:`secrets` (``random.Random(secrets.randbits(128))``).
    """

    role: BirthdayRole
    remote_ip: str = ""
    probes: int = 4096
    first_port: int = 1024
    last_port: int = 65535
    rate: float = 2000.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise PunchError(f"birthday rate {self.rate} is not a positive number")
        if self.role != BirthdayRole.SPRAY:
            return
        try:
            ipaddress.ip_address(self.remote_ip)
        except ValueError as exc:
            raise PunchError(
                f"a birthday spray needs the hard side's public IP, not {self.remote_ip!r}"
            ) from exc
        if not 1 <= self.first_port <= self.last_port <= 65535:
            raise PunchError(
                f"birthday port range {self.first_port}-{self.last_port} is not within 1-65535"
            )
        span = self.last_port - self.first_port + 1
        if not 1 <= self.probes <= span:
            raise PunchError(
                f"birthday probes {self.probes} is not in 1..{span} (the ports in "
                f"{self.first_port}-{self.last_port})"
            )

    def draw_ports(self) -> list[int]:
        """The ``probes`` distinct destination ports, in sending order."""
        ports = range(self.first_port, self.last_port + 1)
        seed = secrets.randbits(128) if self.seed is None else self.seed
        # Not a secret: an unpredictable order is enough, and this is 4x cheaper than
        # secrets.SystemRandom (one os.urandom call per port drawn).
        return random.Random(seed).sample(ports, self.probes)  # noqa: S311


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

    @property
    def from_birthday_spray(self) -> bool:
        """True for a remote candidate a birthday spray probe was sent to."""
        return self.foundation.startswith(f"{_BIRTHDAY_FOUNDATION}:")


class PairState(enum.Enum):
    WAITING = "waiting"
    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(eq=False)
class CandidatePair:
    """A local base and a remote candidate, with its check state (mutable bookkeeping).

    ``birthday`` marks the pairs birthday probing made (an extra base's pairs, and pairs with an
    address the spray went to): they are not in the ordinary Ta-paced check list.
    """

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
    birthday: bool = False

    @property
    def key(self) -> tuple[Address, Address]:
        return (self.local.local_base, self.remote.address)


@dataclass(frozen=True)
class Selected:
    """The pair both sides use: send from the local base (``local.address``, the socket that
    won) to ``remote.address``."""

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
    spray_sent: int = 0
    spray_skipped: int = 0
    pairs_tried: set[tuple[Address, Address]] = field(default_factory=set)


class PunchSession:
    """The connectivity checks of one side, as a sans-IO state machine (module docstring).

    Feed every datagram each socket receives to :meth:`handle_datagram` with that socket's base
    (it returns non-STUN datagrams as application data, None otherwise), send everything
    :meth:`datagrams_to_send` returns from the socket of its base, and call
    :meth:`handle_timeout` when :meth:`get_timer` passes. :attr:`result` becomes
    :class:`Selected` or :class:`Failed`; after that the session still answers the peer's checks
    (keep feeding STUN datagrams to it) but starts no new ones.

    ``birthday``: birthday probing (module docstring). With OPEN_PORTS, every base after the
    primary one is an extra (birthday) base, and there must be at least one; with SPRAY,
    ``birthday.remote_ip`` must be of the primary base's address family.
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
        birthday: Birthday | None = None,
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
        self.birthday = birthday
        self.result: Selected | Failed | None = None
        #: Why datagrams were ignored (one line each).
        self.ignored: list[str] = []
        #: Local peer-reflexive addresses learned from XOR-MAPPED-ADDRESS.
        self.learned: list[Candidate] = []
        #: Application datagrams the asyncio driver received while punching (for
        #: :func:`receive`): ``(data, source, base)``, ``base`` None when one socket serves all.
        self.backlog: collections.deque[tuple[bytes, Address, Address | None]] = collections.deque()
        self._now = now
        self._bases: dict[Address, Candidate] = {}
        self._known_local: set[Address] = set()
        for candidate in local_candidates:
            self._known_local.add(candidate.address)
            if candidate.kind == CandidateKind.RELAYED:
                continue  # a socket cannot send through a relay
            base = candidate.local_base
            if base not in self._bases:
                self._bases[base] = (
                    candidate
                    if candidate.kind == CandidateKind.HOST and candidate.address == base
                    else Candidate.make(CandidateKind.HOST, base)
                )
        if not self._bases:
            raise PunchError("no local host or server-reflexive candidate to check from")
        self._primary = next(iter(self._bases.values()))
        self._extra: set[Address] = set()
        self._spray_ports: list[int] = []
        self._sprayed: set[Address] = set()
        #: One transaction for every spray probe (the same signed request to each port).
        self._spray_transaction = stun.new_transaction_id()
        self._spray_request = b""
        self._birthday_over = False
        self._spray_ip = ""
        self._spray_index = 0
        self._spray_start = now
        self._burst_interval = 0.0
        if birthday is not None:
            self._burst_interval = 1.0 / birthday.rate
            if birthday.role == BirthdayRole.OPEN_PORTS:
                self._extra = set(self._bases) - {self._primary.address}
                if not self._extra:
                    raise PunchError(
                        "birthday OPEN_PORTS needs extra sockets: pass each as one more HOST "
                        "candidate after the primary base's candidates"
                    )
            else:
                self._spray_ip = normalize_address((birthday.remote_ip, 0))[0]
                if _family((self._spray_ip, 0)) != _family(self._primary.address):
                    raise PunchError(
                        f"birthday spray IP {self._spray_ip} is not of the primary base's "
                        f"({format_address(self._primary.address)}) address family"
                    )
                self._spray_ports = birthday.draw_ports()
        self._remotes: dict[Address, Candidate] = {}
        self._pairs: dict[tuple[Address, Address], CandidatePair] = {}
        self._waiting: list[tuple[int, int, CandidatePair]] = []  # (-priority, order, pair)
        self._order = 0
        self._retransmits: list[tuple[float, int, CandidatePair]] = []  # (time, order, pair)
        self._triggered: collections.deque[CandidatePair] = collections.deque()
        self._burst: collections.deque[tuple[float, CandidatePair]] = collections.deque()
        self._burst_tail = now
        self._outgoing: list[tuple[bytes, Address, Address]] = []
        self._by_transaction: dict[bytes, CandidatePair] = {}
        self._next_check = now
        self._nominating: CandidatePair | None = None
        self._stats = _Stats()
        for remote in remote_candidates:
            self.add_remote_candidate(remote)

    # --- candidates and pairs ---

    @property
    def bases(self) -> list[Candidate]:
        """The local bases' host candidates, the primary one first."""
        return list(self._bases.values())

    def add_remote_candidate(self, remote: Candidate) -> None:
        """Add a remote candidate (and its pairs); one already known is kept as it is."""
        address = normalize_address(remote.address)
        if address in self._remotes:
            return
        self._remotes[address] = remote
        for base in self._bases.values():
            if _family(base.address) != _family(address):
                continue
            if base.address not in self._extra:
                self._pair(base, remote)
            elif remote.kind in (CandidateKind.SERVER_REFLEXIVE, CandidateKind.PEER_REFLEXIVE):
                self._schedule_burst(self._pair(base, remote))

    def _pair(self, base: Candidate, remote: Candidate) -> CandidatePair:
        key = (base.address, remote.address)
        pair = self._pairs.get(key)
        if pair is None:
            local_priority = self._check_priority(base)
            if self.controlling:
                priority = pair_priority(local_priority, remote.priority)
            else:
                priority = pair_priority(remote.priority, local_priority)
            birthday = base.address in self._extra or remote.address in self._sprayed
            pair = CandidatePair(base, remote, priority, birthday=birthday)
            self._pairs[key] = pair
            if not birthday:
                self._order += 1
                heapq.heappush(self._waiting, (-priority, self._order, pair))
        return pair

    @staticmethod
    def _check_priority(base: Candidate) -> int:
        return base.priority

    @property
    def pairs(self) -> list[CandidatePair]:
        """Every pair, highest priority first."""
        return sorted(self._pairs.values(), key=lambda p: p.priority, reverse=True)

    def _receiving_base(self, base: Address | None, source: Address) -> Candidate | None:
        if base is not None:
            found = self._bases.get(base) or self._bases.get(normalize_address(base))
            if found is None:
                raise PunchError(f"{format_address(base)} is not one of this session's bases")
            return found
        for candidate in self._bases.values():
            if _family(candidate.address) == _family(source):
                return candidate
        return None

    @staticmethod
    def _same_base(received_on: Address, base: Address) -> bool:
        return received_on == base or normalize_address(received_on) == base

    # --- outputs ---

    def datagrams_to_send(self) -> list[tuple[bytes, Address, Address]]:
        """Every ``(datagram, destination, base)`` due, oldest first; the list is emptied.
        ``base`` is the host-candidate address of the local socket that must send it."""
        out, self._outgoing = self._outgoing, []
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timeout` is next due (None: nothing to time)."""
        if self.result is not None:
            return None
        times = [self.deadline]
        if self._triggered or self._peek_waiting() is not None:
            times.append(self._next_check)
        while self._retransmits and not self._retransmit_valid(*self._retransmits[0]):
            heapq.heappop(self._retransmits)
        if self._retransmits:
            times.append(self._retransmits[0][0])
        if self._burst:
            times.append(self._burst[0][0])
        if self._spray_index < len(self._spray_ports):
            times.append(self._spray_due(self._spray_index))
        return min(times)

    def handle_timeout(self, now: float) -> None:
        """Retransmit due checks, start the next paced check, send the birthday burst and spray
        probes that are due, or fail at the deadline."""
        if self.result is not None:
            return
        self._now = max(self._now, now)
        if now >= self.deadline:
            self._fail(f"no candidate pair selected within {self.timeout:g} s ({self._summary()})")
            return
        while self._retransmits and self._retransmits[0][0] <= now:
            when, order, pair = heapq.heappop(self._retransmits)
            if not self._retransmit_valid(when, order, pair):
                continue
            if pair.sent >= self.transmissions:
                self._pair_failed(pair)
            else:
                self._transmit(pair, now)
        if now >= self._next_check:
            waiting = self._next_pair()
            if waiting is not None:
                self._start_check(waiting, now, use_candidate=waiting.use_candidate)
            self._next_check = now + self.ta
        while self._burst and self._burst[0][0] <= now + _DUE_SLACK:
            _, pair = self._burst.popleft()
            if pair.state == PairState.WAITING:
                self._start_check(pair, now, use_candidate=pair.use_candidate)
        while (
            self._spray_index < len(self._spray_ports)
            and self._spray_due(self._spray_index) <= now + _DUE_SLACK
        ):
            port = self._spray_ports[self._spray_index]
            self._spray_index += 1
            self._spray_probe((self._spray_ip, port))

    def _summary(self) -> str:
        stats = self._stats
        text = (
            f"{stats.checks_sent} checks sent on {len(stats.pairs_tried)} of "
            f"{len(self._pairs)} pairs, {stats.responses_sent} checks answered"
        )
        if self.birthday is None:
            return text
        if self.birthday.role == BirthdayRole.OPEN_PORTS:
            return f"{text}; birthday: {len(self._extra)} extra ports open"
        return (
            f"{text}; birthday spray: {stats.spray_sent} of {len(self._spray_ports)} probes "
            f"sent ({stats.spray_skipped} skipped as known candidates)"
        )

    def _fail(self, reason: str) -> None:
        self.result = Failed(reason)

    def _peek_waiting(self) -> CandidatePair | None:
        while self._waiting and self._waiting[0][2].state != PairState.WAITING:
            heapq.heappop(self._waiting)
        return self._waiting[0][2] if self._waiting else None

    def _next_pair(self) -> CandidatePair | None:
        while self._triggered:
            pair = self._triggered.popleft()
            if pair.state == PairState.WAITING:
                return pair
        waiting = self._peek_waiting()
        if waiting is not None:
            heapq.heappop(self._waiting)
        return waiting

    @staticmethod
    def _retransmit_valid(when: float, order: int, pair: CandidatePair) -> bool:
        return pair.state == PairState.IN_PROGRESS and pair.next_retransmit == when

    def _schedule_burst(self, pair: CandidatePair) -> None:
        due = max(self._burst_tail, self._now)
        self._burst.append((due, pair))
        self._burst_tail = due + self._burst_interval

    def _spray_due(self, index: int) -> float:
        assert self.birthday is not None
        return self._spray_start + index / self.birthday.rate

    def _spray_probe(self, address: Address) -> None:
        if address in self._remotes:
            self._stats.spray_skipped += 1
            return
        if not self._spray_request:
            self._spray_request = self._check_request(self._spray_transaction, use_candidate=False)
        self._sprayed.add(address)
        self._outgoing.append((self._spray_request, address, self._primary.address))
        self._stats.spray_sent += 1
        self._stats.checks_sent += 1

    def _spray_candidate(self, address: Address, priority: int) -> Candidate:
        """The remote candidate of a sprayed address that answered or checked us."""
        return Candidate(
            CandidateKind.PEER_REFLEXIVE,
            address,
            priority,
            f"{_BIRTHDAY_FOUNDATION}:{address[0]}",
            None,
        )

    def _check_request(self, transaction_id: bytes, *, use_candidate: bool) -> bytes:
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
        return stun.encode(message, integrity_key=self._remote_key, fingerprint=True)

    def _end_birthday(self, winner: CandidatePair) -> None:
        """A path works: stop the burst, the spray and the other birthday pairs' checks."""
        self._birthday_over = True
        self._burst.clear()
        self._spray_index = len(self._spray_ports)
        for pair in self._pairs.values():
            if pair.birthday and pair is not winner and pair.state == PairState.IN_PROGRESS:
                pair.next_retransmit = math.inf  # no more retransmissions; an answer still counts

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
        pair.request = self._check_request(transaction_id, use_candidate=use_candidate)
        pair.transaction_id = transaction_id
        pair.use_candidate = use_candidate
        pair.state = PairState.IN_PROGRESS
        pair.sent = 0
        pair.interval = self.rto
        self._by_transaction[transaction_id] = pair
        self._stats.pairs_tried.add(pair.key)
        self._transmit(pair, now)

    def _transmit(self, pair: CandidatePair, now: float) -> None:
        self._outgoing.append((pair.request, pair.remote.address, pair.local.address))
        self._stats.checks_sent += 1
        if pair.sent > 0:
            pair.interval = min(pair.interval * 2, self.max_rto)
        pair.sent += 1
        self._retransmit_at(pair, now + pair.interval)

    def _retransmit_at(self, pair: CandidatePair, when: float) -> None:
        pair.next_retransmit = when
        self._order += 1
        heapq.heappush(self._retransmits, (when, self._order, pair))

    def _trigger(self, pair: CandidatePair) -> None:
        if pair.state in (PairState.WAITING, PairState.FAILED):
            pair.state = PairState.WAITING
            if pair not in self._triggered:
                self._triggered.append(pair)

    # --- inputs ---

    def handle_datagram(
        self, data: bytes, source: Address, now: float, *, base: Address | None = None
    ) -> bytes | None:
        """Process one datagram received on ``base`` (the receiving socket's base address;
        None: the first base of the source's address family, and a response is then not checked
        against the base its check went from). Non-STUN data is returned (application data).
        Raises :class:`PunchError` if ``base`` is not one of the session's bases."""
        self._now = max(self._now, now)
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
            self._handle_request(message, data, source, now, base)
        elif message.message_class in (MessageClass.SUCCESS, MessageClass.ERROR):
            self._handle_response(message, data, source, now, base)
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
        self,
        message: stun.Message,
        data: bytes,
        source: Address,
        now: float,
        received_on: Address | None,
    ) -> None:
        base = self._receiving_base(received_on, source)
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
        if base is None:
            self.ignored.append(f"check from {format_address(source)}: no local base of its family")
            return
        if self._role_conflict(message, source, base.address):
            return
        answer = stun.success_response(
            message,
            Attribute(
                AttributeType.XOR_MAPPED_ADDRESS,
                stun.encode_xor_address(source[0], source[1], message.transaction_id),
            ),
        )
        self._outgoing.append(
            (
                stun.encode(answer, integrity_key=self._local_key, fingerprint=True),
                source,
                base.address,
            )
        )
        self._stats.responses_sent += 1
        remote = self._remotes.get(source)
        if remote is None:
            (priority,) = _U32.unpack(priority_value)
            remote = (
                self._spray_candidate(source, priority)
                if source in self._sprayed
                else Candidate(
                    CandidateKind.PEER_REFLEXIVE, source, priority, f"prflx:{source[0]}", None
                )
            )
            self._remotes[source] = remote
        pair = self._pair(base, remote)
        if message.get(AttributeType.USE_CANDIDATE) is not None and not self.controlling:
            pair.nominated = True
        if self.result is not None:
            return
        if pair.state == PairState.SUCCEEDED:
            self._maybe_select(pair)
        elif pair.state == PairState.IN_PROGRESS:
            # The hole is open now: resend at once instead of waiting for the retransmission.
            self._retransmit_at(pair, now)
        else:
            self._trigger(pair)

    def _role_conflict(self, message: stun.Message, source: Address, base: Address) -> bool:
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
                (stun.encode(answer, integrity_key=self._local_key, fingerprint=True), source, base)
            )
            return True
        self._switch_role()
        return False

    def _switch_role(self) -> None:
        self.controlling = not self.controlling
        self._spray_request = b""  # re-signed with the new role attribute at the next probe
        for pair in self._pairs.values():
            g, d = (
                (pair.local.priority, pair.remote.priority)
                if self.controlling
                else (pair.remote.priority, pair.local.priority)
            )
            pair.priority = pair_priority(g, d)
            pair.nominated = False
        self._waiting = [
            (-pair.priority, order, pair)
            for order, pair in enumerate(self._pairs.values())
            if pair.state == PairState.WAITING and not pair.birthday
        ]
        heapq.heapify(self._waiting)

    def _handle_response(
        self,
        message: stun.Message,
        data: bytes,
        source: Address,
        now: float,
        received_on: Address | None,
    ) -> None:
        if self._sprayed and message.transaction_id == self._spray_transaction:
            self._handle_spray_response(message, data, source, now, received_on)
            return
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
        if received_on is not None and not self._same_base(received_on, pair.local.address):
            self.ignored.append(
                f"response from {format_address(source)}: arrived on base "
                f"{format_address(received_on)}, the check went from "
                f"{format_address(pair.local.address)} (asymmetric path)"
            )
            self._pair_failed(pair)
            return
        if message.message_class == MessageClass.ERROR:
            self._error_response(pair, message, source)
            return
        self._succeeded(pair, message, source, now)

    def _error_response(self, pair: CandidatePair, message: stun.Message, source: Address) -> None:
        """An error answer to a check of ``pair``: a role conflict (487) switches roles and
        checks the pair again first (RFC 8445 §7.2.5.1); any other error fails the pair."""
        error = message.error()
        if error is not None and error[0] == ROLE_CONFLICT:
            self._switch_role()
            pair.state = PairState.WAITING
            self._triggered.appendleft(pair)
            return
        self.ignored.append(f"response from {format_address(source)}: error {error}")
        self._pair_failed(pair)

    def _handle_spray_response(
        self,
        message: stun.Message,
        data: bytes,
        source: Address,
        now: float,
        received_on: Address | None,
    ) -> None:
        """An answer to the spray's shared transaction: the pair of the primary base and the
        sprayed address that answered is created (if need be) and Succeeded."""
        if not self._authentic(data, self._remote_key, source, "response"):
            return
        if source not in self._sprayed:
            self.ignored.append(
                f"response from {format_address(source)}: to the birthday spray, from an "
                "address it did not go to (asymmetric path)"
            )
            return
        if received_on is not None and not self._same_base(received_on, self._primary.address):
            self.ignored.append(
                f"response from {format_address(source)}: to the birthday spray, arrived on base "
                f"{format_address(received_on)}, not {format_address(self._primary.address)} "
                "(asymmetric path)"
            )
            return
        remote = self._remotes.get(source)
        if remote is None:
            remote = self._spray_candidate(source, candidate_priority(CandidateKind.PEER_REFLEXIVE))
            self._remotes[source] = remote
        pair = self._pair(self._primary, remote)
        if pair.state in (PairState.IN_PROGRESS, PairState.SUCCEEDED):
            return  # the pair's own check decides (it may be a nomination)
        if message.message_class == MessageClass.ERROR:
            self._error_response(pair, message, source)
            return
        pair.sent = 1
        self._stats.pairs_tried.add(pair.key)
        self._succeeded(pair, message, source, now)

    def _succeeded(
        self, pair: CandidatePair, message: stun.Message, source: Address, now: float
    ) -> None:
        if self.birthday is not None and not self._birthday_over:
            self._end_birthday(pair)
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

#: One socket serving every base, or each base's socket by its base address.
Sockets = socket.socket | Mapping[Address, socket.socket]


class _Driver:
    """Reads every socket with ``loop.add_reader`` (while entered), hands each datagram to the
    session with its base, and sends what the session emits from its base's socket."""

    def __init__(self, sockets: Sockets, session: PunchSession, *, every_base: bool) -> None:
        self.loop = asyncio.get_running_loop()
        self.session = session
        self._single: socket.socket | None = None
        self._by_base: dict[Address, socket.socket] = {}
        self._readers: list[tuple[int, socket.socket, Address | None]] = []
        if isinstance(sockets, socket.socket):
            self._single = sockets
            self._readers.append((sockets.fileno(), sockets, None))
        else:
            self._by_base = {normalize_address(base): sock for base, sock in sockets.items()}
            if not self._by_base:
                raise PunchError("no socket given")
            bases = {candidate.address for candidate in session.bases}
            unknown = sorted(set(self._by_base) - bases)
            if unknown:
                listed = ", ".join(format_address(base) for base in unknown)
                raise PunchError(f"sockets given for addresses that are not bases: {listed}")
            missing = [base for base in bases if base not in self._by_base]
            if every_base and missing:
                listed = ", ".join(format_address(base) for base in sorted(missing))
                raise PunchError(f"no socket given for the bases {listed}")
            seen: set[int] = set()
            for base, sock in self._by_base.items():
                if sock.fileno() not in seen:
                    seen.add(sock.fileno())
                    self._readers.append((sock.fileno(), sock, base))
        for fd, reader, reader_base in self._readers:
            if fd < 0:
                where = "" if reader_base is None else f" of base {format_address(reader_base)}"
                raise PunchError(f"the socket{where} is closed")
            reader.setblocking(False)
        # An IPv4 socket's recvfrom gives canonical (ip, port) already: no normalizing needed.
        self._ipv4 = {fd: sock.family == socket.AF_INET for fd, sock, _ in self._readers}
        self._ipv6 = {fd for fd, sock, _ in self._readers if sock.family == socket.AF_INET6}
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def __enter__(self) -> _Driver:
        for fd, sock, base in self._readers:
            self.loop.add_reader(fd, self._readable, fd, sock, base)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for fd, _, _ in self._readers:
            self.loop.remove_reader(fd)

    def _readable(self, fd: int, sock: socket.socket, base: Address | None) -> None:
        try:
            for _ in range(_READ_BATCH):
                try:
                    data, source = sock.recvfrom(_RECEIVE_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    where = "" if base is None else f" on {format_address(base)}"
                    self.session.ignored.append(f"socket error{where}: {exc}")
                    break
                address = (source[0], source[1]) if self._ipv4[fd] else normalize_address(source)
                application = self.session.handle_datagram(
                    data, address, self.loop.time(), base=base
                )
                if application is not None:
                    self.session.backlog.append((application, address, base))
            self.flush()
        except Exception as exc:  # noqa: BLE001 - raised again by the awaiting coroutine
            self._error = exc
        self._wake()

    def flush(self) -> None:
        for data, destination, base in self.session.datagrams_to_send():
            sock = self._single if self._single is not None else self._by_base.get(base)
            if sock is None:
                self.session.ignored.append(
                    f"no socket for base {format_address(base)}: datagram to "
                    f"{format_address(destination)} not sent"
                )
                continue
            try:
                sock.sendto(
                    data,
                    socket_address(sock, destination)
                    if sock.fileno() in self._ipv6
                    else destination,
                )
            except OSError as exc:
                self.session.ignored.append(f"cannot send to {format_address(destination)}: {exc}")

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def check(self) -> None:
        """Raise what a reader callback raised, if anything."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    async def wait(self, until: float | None) -> None:
        """Until a datagram was handled or the loop time ``until`` (None: no limit)."""
        self.check()
        self._waiter = self.loop.create_future()
        handle = None if until is None else self.loop.call_at(until, self._wake)
        try:
            await self._waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()
        self.check()


async def punch(
    sockets: Sockets, session: PunchSession, *, timeout: float | None = None
) -> Selected:
    """Run ``session`` until a pair is selected; :attr:`Selected.local` names the winning base.

    ``sockets``: one socket serving every base (received datagrams are fed with ``base=None``),
    or a mapping from each base address (:attr:`PunchSession.bases`) to its socket, all read
    concurrently. Sockets are made non-blocking and never closed. Application datagrams that
    arrive meanwhile are kept in ``session.backlog`` for :func:`receive`. ``timeout`` caps the
    whole run (the session's own deadline applies too). Raises :class:`PunchFailed`, or
    :class:`PunchError` if the mapping does not give exactly the session's bases.
    """
    loop = asyncio.get_running_loop()
    stop = None if timeout is None else loop.time() + timeout
    with _Driver(sockets, session, every_base=True) as driver:
        while session.result is None:
            driver.flush()
            now = loop.time()
            if stop is not None and now >= stop:
                raise PunchFailed(f"no pair selected within the driver's {timeout:g} s")
            timer = session.get_timer()
            if timer is not None and now >= timer:
                session.handle_timeout(now)
                continue
            ends = [t for t in (timer, stop) if t is not None]
            await driver.wait(min(ends) if ends else None)
        driver.flush()
    if isinstance(session.result, Failed):
        raise PunchFailed(session.result.reason)
    return session.result


async def receive(
    sockets: Sockets, session: PunchSession, *, timeout: float
) -> tuple[bytes, Address]:
    """The next application datagram ``(data, source)``, answering the peer's checks meanwhile.

    ``sockets`` as for :func:`punch`, except that a mapping may leave bases out (for example
    only the winning socket, the others closed); a datagram for a base without a socket is not
    sent (noted in ``session.ignored``). Raises :class:`TimeoutError` after ``timeout`` seconds
    without one.
    """
    if not session.backlog:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with _Driver(sockets, session, every_base=False) as driver:
            while not session.backlog:
                if loop.time() >= deadline:
                    raise TimeoutError(f"no application datagram within {timeout:g} s")
                await driver.wait(deadline)
    data, source, _ = session.backlog.popleft()
    return data, source
