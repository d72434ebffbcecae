"""The resolver chain: TrustChain's federated names and traditional DNS, in the order a policy says.

A name is looked up in (at most) two sources:

* **trustchain** — a :class:`NameLookup`: anything with ``lookup(name) -> NameRecord | None``, such
  as a :class:`trustchain.naming.registry.NameRegistry` (wrapped in :class:`RegistryNames` to
  also name each record's signer) or a :class:`RecordSetNames` built from a record-set file. Such
  a record is trusted because a TrustChain certificate authorised for the name's namespace signed
  it (verified by the registry or record set), not because a server said so. A name TrustChain
  cannot hold (e.g. with ``_``) is "no such name" there without a lookup. These lookups are local
  and are not cached here; a record's answer TTL is its ``ttl``, cut to what is left of its
  validity.
* **dns** — ordinary DNS through dnspython's async query functions (``dns.asyncquery.udp`` /
  ``tcp``), against the configured servers or the system's (``/etc/resolv.conf``, read by
  dnspython). Answers, positive and negative, are cached in a :class:`~stoq.dns.cache.TtlCache`.

:class:`Policy` is the migration dial: ``trustchain-first`` and ``dns-first`` ask the second source
when the first has no such name (NXDOMAIN, or no address: NODATA) or fails; ``trustchain-only`` and
``dns-only`` never ask the other. Every :class:`Answer` says where it came from (its
:data:`Source`), whether it came from the cache, and what was tried before it (``tried``).

**Names.** :func:`normalize_name` lowercases ASCII, drops one trailing dot and insists on 1 to 63
octets per label, at most 253 in all, labels of letters, digits, ``-`` and ``_`` that neither
start nor end with ``-``. IP literals and non-ASCII names (give the ``xn--`` A-label) are refused
with :class:`InvalidName`.

**One DNS exchange with one server** asks A and AAAA in parallel (each a UDP query with EDNS0,
payload 1232, RD set, from its own connected socket on an ephemeral port, so the kernel drops
datagrams from anyone else and an ICMP port unreachable fails the query at once; a truncated (TC)
UDP answer is asked again over TCP to the same server), and
alongside them, for the service list, HTTPS (type 65) and SVCB (type 64) at the name and SRV at
``_SERVICE._PROTO.NAME`` for each configured service (default ``_stoq._udp``). Those extras never
hold the address answer up: once A and AAAA are in, the extras still missing get at most
``service_grace`` seconds (default 50 ms) and are then abandoned; a failed or absent extra is
simply no service. The outcome of the exchange:

* an address in A or AAAA (after CNAMEs, dnspython's ``resolve_chaining``): a positive answer, both
  families, IPv6 first, each in the server's order; the TTL is the smallest TTL of the address and
  service RRsets (and CNAMEs) used. A broken family (e.g. SERVFAIL for AAAA alone) does not spoil
  the other's addresses.
* no address, and NXDOMAIN for either or NOERROR without an address for both (NODATA): the name
  has no address (a :class:`NegativeAnswer`; the next source, if the policy has one, is asked).
  Cached negatively for ``min(SOA TTL, SOA MINIMUM)`` of an SOA in the authority section, the
  smallest over both responses (RFC 2308 section 5), or :data:`~stoq.dns.cache.DEFAULT_NEGATIVE_TTL`
  (60 s) when there is none.
* anything else — SERVFAIL, REFUSED, NOTIMP, FORMERR, an unparsable or mismatched response, a
  socket error such as ICMP port unreachable — is a failure of that server.

**Server selection** (:class:`ServerSchedule`, sans-IO, in the spirit of RFC 8305): the first
server is asked at once; when it has not answered after ``stagger`` seconds (default
:data:`DEFAULT_STAGGER`, 0.3 s: above a typical recursive resolver's round trip, so a healthy first
server is normally the only one asked) the next is asked too *without* abandoning the first, and
so on; a server that fails (above) makes the next one start at once. The first usable answer
(positive or negative) wins and every other exchange is cancelled. After every server has been
asked once, the servers that have not failed are asked again round robin (a retransmission: a
fresh exchange with a fresh socket and query id), the gap doubling each round from ``2 *
stagger`` up to 2 s, until ``timeout`` (default :data:`DEFAULT_TIMEOUT`, 5 s) after the start —
the single deadline for the whole DNS step. Then :class:`DnsTimeout` (some server stayed silent)
or, as soon as every server has failed, :class:`DnsServersFailed`.

**Errors** (all :class:`stoq.errors.ResolutionError`, whose ``attempts`` list ``(what, outcome)``
for every source and server tried): :class:`NameNotFound` when every source asked said the name
has no address; otherwise the failure of the last source that failed (:class:`DnsTimeout`,
:class:`DnsServersFailed`, or :class:`TrustChainLookupFailed` when the lookup object raised).
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar, Literal, Protocol, runtime_checkable

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.flags
import dns.inet
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.rdtypes.IN.SRV
import dns.rdtypes.svcbbase
import dns.resolver
import dns.rrset

from stoq.dns.cache import DEFAULT_NEGATIVE_TTL, TtlCache
from stoq.errors import ResolutionError
from trustchain.ca.trust import TrustStore
from trustchain.errors import TrustChainError
from trustchain.naming.records import InvalidNameRecord, NameRecord, NameRecordRejected
from trustchain.naming.records import normalize_name as trustchain_name
from trustchain.naming.registry import NameRegistry
from trustchain.naming.zone import RecordSet, decode_record_set, verified_names

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_SERVICE_GRACE",
    "DEFAULT_SRV_SERVICES",
    "DEFAULT_STAGGER",
    "DEFAULT_TIMEOUT",
    "Answer",
    "DnsServersFailed",
    "DnsSource",
    "DnsTimeout",
    "HappyEyeballsResolver",
    "InvalidName",
    "NameLookup",
    "NameNotFound",
    "NegativeAnswer",
    "Policy",
    "RecordSetNames",
    "RegistryNames",
    "Resolver",
    "ServerSchedule",
    "Service",
    "Source",
    "TrustChainLookupFailed",
    "TrustChainSource",
    "negative_ttl",
    "normalize_name",
    "system_servers",
]

logger = logging.getLogger(__name__)

#: The name a node looks up first to find the TrustChain service (the CLI's default NAME).
DEFAULT_BOOTSTRAP = "trust.hypermesh.online"
#: Seconds to wait for a server before also asking the next one.
DEFAULT_STAGGER = 0.3
#: Seconds the whole DNS step may take, over every server.
DEFAULT_TIMEOUT = 5.0
#: Seconds the service queries may lag behind the address answer before they are abandoned.
DEFAULT_SERVICE_GRACE = 0.05
#: The SRV services asked for alongside the addresses: ``_stoq._udp.NAME``.
DEFAULT_SRV_SERVICES: tuple[tuple[str, str], ...] = (("stoq", "udp"),)
#: The longest gap between two retransmission rounds, in seconds.
MAX_RETRY_INTERVAL = 2.0
#: The EDNS0 UDP payload size we advertise (the DNS flag day 2020 value).
EDNS_PAYLOAD = 1232

Address = tuple[str, int]

_BACKEND = dns.asyncbackend.get_backend("asyncio")


# --- errors ----------------------------------------------------------------------------------


class InvalidName(ResolutionError):
    """The text is not a host name this resolver looks up (see :func:`normalize_name`)."""


class NameNotFound(ResolutionError):
    """Every source asked says ``name`` has no address; ``attempts`` says what each answered."""

    def __init__(self, name: str, attempts: Sequence[tuple[str, str]]) -> None:
        self.name = name
        super().__init__(f"{name}: not found", attempts)


class DnsServersFailed(ResolutionError):
    """No DNS server gave a usable answer: each failed (SERVFAIL, REFUSED, a bad response...)."""


class DnsTimeout(DnsServersFailed):
    """The DNS step ran out of time with at least one server still silent."""


class TrustChainLookupFailed(ResolutionError):
    """The TrustChain lookup raised (e.g. its database failed); the error is the ``__cause__``."""


# --- values ----------------------------------------------------------------------------------


class Policy(enum.Enum):
    """Which sources to ask, in which order (the migration dial from DNS to TrustChain names)."""

    TRUSTCHAIN_FIRST = "trustchain-first"
    DNS_FIRST = "dns-first"
    TRUSTCHAIN_ONLY = "trustchain-only"
    DNS_ONLY = "dns-only"

    @property
    def order(self) -> tuple[Literal["trustchain", "dns"], ...]:
        """The sources, in the order they are asked."""
        return _ORDERS[self]

    def __str__(self) -> str:
        return self.value


_ORDERS: dict[Policy, tuple[Literal["trustchain", "dns"], ...]] = {
    Policy.TRUSTCHAIN_FIRST: ("trustchain", "dns"),
    Policy.DNS_FIRST: ("dns", "trustchain"),
    Policy.TRUSTCHAIN_ONLY: ("trustchain",),
    Policy.DNS_ONLY: ("dns",),
}


@dataclass(frozen=True)
class TrustChainSource:
    """An answer from a signed TrustChain name record.

    ``origin`` names the lookup (e.g. ``"registry /home/names/names.db"``, ``"record set
    zone.bin"``); ``serial`` and ``node_id`` are the record's; ``signer`` is the RFC 4514 subject
    of the certificate that signed it, when the lookup knows it (None otherwise).
    """

    kind: ClassVar[Literal["trustchain"]] = "trustchain"
    origin: str
    serial: int
    node_id: bytes
    signer: str | None = None

    def __str__(self) -> str:
        signer = f", signer {self.signer}" if self.signer else ""
        return f"trustchain {self.origin} (serial {self.serial}{signer})"

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "origin": self.origin,
            "serial": self.serial,
            "node_id": self.node_id.hex(),
            "signer": self.signer,
        }


@dataclass(frozen=True)
class DnsSource:
    """An answer from a DNS server: its ``(ip, port)`` and the transport of the address answer
    (``"tcp"`` when a truncated UDP answer was asked again over TCP)."""

    kind: ClassVar[Literal["dns"]] = "dns"
    server: Address
    transport: Literal["udp", "tcp"] = "udp"

    @property
    def server_text(self) -> str:
        return _format_server(self.server)

    def __str__(self) -> str:
        return f"dns {self.server_text} ({self.transport})"

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "server": self.server_text, "transport": self.transport}


#: Where an answer came from.
Source = TrustChainSource | DnsSource


@dataclass(frozen=True)
class Service:
    """A service the name offers.

    ``kind`` ``"srv"``: an SRV record (from DNS, or a TrustChain record's service) at ``owner`` =
    ``_SERVICE._PROTO.NAME``, with ``target``, ``port``, ``priority`` and ``weight``.
    ``"https"`` / ``"svcb"``: an HTTPS / SVCB record (RFC 9460) at the name; ``target`` is the
    owner itself when the record's target is ``.``; ``port`` is the ``port`` parameter (None if
    absent) and ``alpn`` the ``alpn`` protocol ids; ``priority`` 0 is AliasMode (``target`` is an
    alias to look up), anything else ServiceMode. ``weight`` is 0 for these.
    """

    kind: Literal["srv", "https", "svcb"]
    owner: str
    target: str
    port: int | None
    priority: int
    weight: int = 0
    alpn: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "owner": self.owner,
            "target": self.target,
            "port": self.port,
            "priority": self.priority,
            "weight": self.weight,
            "alpn": list(self.alpn),
        }


@dataclass(frozen=True)
class Answer:
    """A resolved name.

    ``addresses``: IP literals, IPv6 first then IPv4, each family in its source's order, no
    duplicates. ``ttl``: seconds the answer may be used (counting down when ``from_cache``).
    ``tried``: ``(what, outcome)`` for every source or server asked before this answer won, in
    order (e.g. ``("trustchain record set z.bin", "no such name")``, ``("dns 127.0.0.1:53",
    "NXDOMAIN")``, ``("dns 127.0.0.1:53", "A: REFUSED; AAAA: REFUSED")``, ``("dns
    192.0.2.1:53", "no answer yet when another server answered")``).
    """

    name: str
    addresses: tuple[str, ...]
    services: tuple[Service, ...]
    ttl: int
    source: Source
    from_cache: bool = False
    tried: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "addresses": list(self.addresses),
            "services": [service.to_json() for service in self.services],
            "ttl": self.ttl,
            "source": self.source.to_json(),
            "from_cache": self.from_cache,
            "tried": [list(step) for step in self.tried],
        }


@dataclass(frozen=True)
class NegativeAnswer:
    """A DNS server's word that ``name`` has no address: ``rcode`` ``"NXDOMAIN"`` (no such name)
    or ``"NODATA"`` (the name exists without A or AAAA records). Cached like answers."""

    name: str
    rcode: Literal["NXDOMAIN", "NODATA"]
    source: DnsSource


# --- names -----------------------------------------------------------------------------------

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def normalize_name(name: str) -> str:
    """``name`` lowercased, without its trailing dot; :class:`InvalidName` if it is not a host
    name (see the module doc for the exact rule)."""
    if not isinstance(name, str):
        raise InvalidName(f"a name must be text, not {type(name).__name__}")
    text = name[:-1] if name.endswith(".") else name
    if not text:
        raise InvalidName(f"{name!r} is empty")
    if not text.isascii():
        raise InvalidName(f"{name!r} is not ASCII: give the A-label (xn--...) form")
    text = text.lower()
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        pass
    else:
        raise InvalidName(f"{name!r} is an IP address, not a name")
    if len(text) > 253:
        raise InvalidName(f"{name!r} is longer than 253 characters")
    for label in text.split("."):
        if not _LABEL.fullmatch(label):
            raise InvalidName(
                f"{name!r} has a bad label {label!r}: 1-63 letters, digits, '-' or '_', "
                "not starting or ending with '-'"
            )
    return text


# --- the TrustChain side ---------------------------------------------------------------------


class NameLookup(Protocol):
    """Verified TrustChain name records: e.g. a ``NameRegistry`` or a :class:`RecordSetNames`.

    ``lookup`` returns the current record for ``name`` (normalised), or None when there is none
    that is valid now (absent, expired or revoked). It may raise a TrustChainError.
    """

    def lookup(self, name: str) -> NameRecord | None: ...


@runtime_checkable
class SignerLookup(Protocol):
    """Optionally implemented by a :class:`NameLookup`: the RFC 4514 subject of the certificate
    that signed ``name``'s record with ``serial`` (None if unknown)."""

    def signer_of(self, name: str, serial: int) -> str | None: ...


class RecordSetNames:
    """The verified records of a record set (what ``trustchain names export`` writes), as a
    :class:`NameLookup`.

    The set is verified once, here, with :func:`trustchain.naming.zone.verified_names` — against
    ``store`` if given, else against the set's own anchors (the file is the authority you chose,
    like a zone file). ``rejected`` keeps what was refused, with the reasons. :meth:`lookup` also
    drops a record once its validity window has passed (``clock`` gives the time, default now).
    """

    def __init__(
        self,
        record_set: RecordSet,
        store: TrustStore | None = None,
        *,
        origin: str = "record set",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.origin = origin
        self._clock = clock
        records, rejected = verified_names(record_set, store, at=clock())
        self._records: dict[str, NameRecord] = dict(records)
        self.rejected: list[NameRecordRejected] = list(rejected)
        self._signers: dict[tuple[str, int], str] = {}
        for signed in record_set.records:
            record = signed.record
            if self._records.get(record.name) == record and signed.chain:
                subject = signed.chain[0].subject.rfc4514_string()
                self._signers[(record.name, record.serial)] = subject

    @classmethod
    def from_file(cls, path: str | Path, store: TrustStore | None = None) -> RecordSetNames:
        """Read and verify a record-set file (NamingError if it does not decode)."""
        data = Path(path).read_bytes()
        return cls(decode_record_set(data), store, origin=f"record set {path}")

    @property
    def records(self) -> Mapping[str, NameRecord]:
        """Every record that verified, by name (validity windows as of loading)."""
        return dict(self._records)

    def lookup(self, name: str) -> NameRecord | None:
        record = self._records.get(name)
        if record is None:
            return None
        now = self._clock()
        if not record.not_before <= now < record.not_after:
            return None
        return record

    def signer_of(self, name: str, serial: int) -> str | None:
        return self._signers.get((name, serial))


class RegistryNames:
    """A TrustChain :class:`~trustchain.naming.registry.NameRegistry` as a :class:`NameLookup`
    that also knows each record's signer (from the stored signed record). Lookups verify the
    stored record again, so expiry, revocation and a revoked signer take effect at once."""

    def __init__(self, registry: NameRegistry, *, origin: str = "registry") -> None:
        self.origin = origin
        self._registry = registry

    def lookup(self, name: str) -> NameRecord | None:
        return self._registry.lookup(name)

    def signer_of(self, name: str, serial: int) -> str | None:
        signed = self._registry.signed(name)
        if signed is None or signed.record.serial != serial or not signed.chain:
            return None
        return signed.chain[0].subject.rfc4514_string()


# --- DNS helpers -----------------------------------------------------------------------------


def _format_server(server: Address) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def system_servers(filename: str | Path = "/etc/resolv.conf") -> tuple[Address, ...]:
    """The system's DNS servers, as dnspython reads them from ``filename`` (``nameserver``
    lines, in order; port 53 unless dnspython's configuration says otherwise).

    Raises :class:`DnsServersFailed` when there is no configuration or it names no plain-DNS
    server.
    """
    try:
        resolver = dns.resolver.Resolver(filename=str(filename), configure=True)
    except dns.exception.DNSException as exc:
        raise DnsServersFailed(f"no system DNS configuration: {exc}") from exc
    servers: list[Address] = []
    for entry in resolver.nameservers:
        if isinstance(entry, str):
            try:
                ipaddress.ip_address(entry)
            except ValueError:
                continue  # a DNS-over-HTTPS URL
            servers.append((entry, resolver.nameserver_ports.get(entry, resolver.port)))
        elif isinstance(entry, dns.nameserver.Do53Nameserver):
            servers.append((str(entry.address), int(entry.port)))
    if not servers:
        raise DnsServersFailed("the system DNS configuration names no DNS server")
    return tuple(servers)


def negative_ttl(response: dns.message.Message) -> int:
    """The negative-caching TTL a NXDOMAIN / NODATA ``response`` allows (RFC 2308 section 5):
    ``min(SOA TTL, SOA MINIMUM)`` over the SOA records of its authority section, or
    :data:`~stoq.dns.cache.DEFAULT_NEGATIVE_TTL` when it has none."""
    ttls = [
        min(rrset.ttl, rdata.minimum)
        for rrset in response.authority
        if rrset.rdtype == dns.rdatatype.SOA
        for rdata in rrset
        if isinstance(rdata, dns.rdtypes.ANY.SOA.SOA)
    ]
    return min(ttls) if ttls else DEFAULT_NEGATIVE_TTL


def _family_order(addresses: Iterable[str]) -> tuple[str, ...]:
    """Dedupe and normalise IP literals, IPv6 first, each family in the given order."""
    v6: list[str] = []
    v4: list[str] = []
    for text in addresses:
        address = ipaddress.ip_address(text)
        bucket = v6 if address.version == 6 else v4
        if str(address) not in bucket:
            bucket.append(str(address))
    return (*v6, *v4)


def _target_text(target: dns.name.Name, owner: str) -> str:
    if target == dns.name.root:
        return owner
    return target.to_text(omit_final_dot=True).lower()


@dataclass(frozen=True)
class _Positive:
    rrset: dns.rrset.RRset
    ttl: int
    transport: Literal["udp", "tcp"]


@dataclass(frozen=True)
class _Negative:
    rcode: Literal["NXDOMAIN", "NODATA"]
    ttl: int


@dataclass(frozen=True)
class _Failure:
    reason: str


_QueryResult = _Positive | _Negative | _Failure


@dataclass(frozen=True)
class _ServerResult:
    """What one exchange with one server came to: a positive ``answer``, a ``negative`` one with
    its TTL, or a ``failure`` reason."""

    answer: Answer | None = None
    negative: NegativeAnswer | None = None
    negative_ttl: int = 0
    failure: str | None = None


# --- server selection (sans-IO) --------------------------------------------------------------


class ServerSchedule:
    """Which DNS server to ask next, and when (sans-IO; the caller owns the clock).

    Servers are indices ``0..count-1``. :meth:`due` returns the server to start an exchange with
    now, or None; call it until it returns None, then again at :meth:`wake_at` or after reporting
    a failure with :meth:`failed`. Round one asks every server once, ``stagger`` seconds apart
    (at once after a failure); later rounds ask the servers that have not failed again, round
    robin, the gap doubling each round from ``2 * stagger`` up to ``max_interval``. A server that
    has failed is never asked again. :attr:`exhausted` is true once every server has failed.
    """

    def __init__(
        self,
        count: int,
        *,
        stagger: float,
        now: float,
        max_interval: float = MAX_RETRY_INTERVAL,
    ) -> None:
        if count < 1:
            raise ValueError("a schedule needs at least one server")
        if stagger <= 0:
            raise ValueError(f"stagger must be positive, not {stagger}")
        self._count = count
        self._stagger = stagger
        self._max_interval = max(max_interval, stagger)
        self._failed: set[int] = set()
        self._started: list[int] = []
        self._next_due = now

    @property
    def started(self) -> tuple[int, ...]:
        """Every server started so far, in order (a server asked again appears again)."""
        return tuple(self._started)

    @property
    def exhausted(self) -> bool:
        return len(self._failed) == self._count

    def _candidate(self) -> int | None:
        if len(self._started) < self._count:
            return len(self._started)
        if self.exhausted:
            return None
        last = self._started[-1]
        for step in range(1, self._count + 1):
            index = (last + step) % self._count
            if index not in self._failed:
                return index
        return None  # pragma: no cover - exhausted was checked above

    def _gap_after(self, starts: int) -> float:
        if starts < self._count:
            return self._stagger
        rounds = starts // self._count
        return float(min(self._stagger * 2**rounds, self._max_interval))

    def due(self, now: float) -> int | None:
        if now < self._next_due:
            return None
        candidate = self._candidate()
        if candidate is None:
            return None
        self._started.append(candidate)
        self._next_due = now + self._gap_after(len(self._started))
        return candidate

    def wake_at(self) -> float | None:
        """When the next server is due, or None if no server is left to ask."""
        return None if self._candidate() is None else self._next_due

    def failed(self, index: int, now: float) -> None:
        """Server ``index`` failed: never ask it again, and start the next one at once."""
        self._failed.add(index)
        self._next_due = min(self._next_due, now)


# --- the resolver ----------------------------------------------------------------------------


class Resolver:
    """Resolves names through TrustChain names and DNS, as ``policy`` says (see the module doc).

    ``names``: the TrustChain lookup (required by the policies that use it — ``trustchain-first``
    without one simply skips that source); ``names_origin`` how answers name it (default: its
    ``origin`` attribute, else its class name). ``servers``: DNS servers as ``(ip, port)``, None
    for the system's (read now, unless the policy never asks DNS). ``cache``: the DNS answer cache
    (a new one by default). ``services``: the ``(service, protocol)`` pairs asked for with SRV.
    """

    def __init__(
        self,
        policy: Policy = Policy.TRUSTCHAIN_FIRST,
        *,
        names: NameLookup | None = None,
        names_origin: str | None = None,
        servers: Sequence[Address] | None = None,
        stagger: float = DEFAULT_STAGGER,
        timeout: float = DEFAULT_TIMEOUT,
        cache: TtlCache[Answer | NegativeAnswer] | None = None,
        services: Sequence[tuple[str, str]] = DEFAULT_SRV_SERVICES,
        service_grace: float = DEFAULT_SERVICE_GRACE,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if names is None and policy is Policy.TRUSTCHAIN_ONLY:
            raise ValueError("policy trustchain-only needs a TrustChain name lookup (names=...)")
        if stagger <= 0 or timeout <= 0 or service_grace < 0:
            raise ValueError("stagger and timeout must be positive, service_grace not negative")
        self._policy = policy
        self._names = names
        if names_origin is None and names is not None:
            origin = getattr(names, "origin", None)
            names_origin = origin if isinstance(origin, str) else type(names).__name__
        self._names_origin = names_origin or "trustchain"
        self._servers: tuple[Address, ...] = ()
        if "dns" in policy.order:
            self._servers = system_servers() if servers is None else tuple(servers)
            if not self._servers:
                raise ValueError(f"policy {policy} needs at least one DNS server")
            for host, port in self._servers:
                ipaddress.ip_address(host)
                if not 0 < port < 65536:
                    raise ValueError(f"bad DNS server port {port}")
        self._stagger = stagger
        self._timeout = timeout
        self._cache: TtlCache[Answer | NegativeAnswer] = cache if cache is not None else TtlCache()
        self._services = tuple((normalize_name(s), normalize_name(p)) for s, p in services)
        self._service_grace = service_grace
        self._clock = clock

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def servers(self) -> tuple[Address, ...]:
        return self._servers

    @property
    def cache(self) -> TtlCache[Answer | NegativeAnswer]:
        return self._cache

    async def resolve(self, name: str) -> Answer:
        """Resolve ``name`` (see the module doc); raises a :class:`ResolutionError` subclass."""
        name = normalize_name(name)
        tried: list[tuple[str, str]] = []
        failure: ResolutionError | None = None
        for source in self._policy.order:
            if source == "trustchain":
                if self._names is None:
                    tried.append(("trustchain", "no TrustChain names configured"))
                    continue
                answer, failure_ = self._from_trustchain(name, tried)
            else:
                answer, failure_ = await self._from_dns(name, tried)
            if answer is not None:
                return replace(answer, tried=(*tried, *answer.tried))
            failure = failure_ or failure
        if failure is not None:
            raise failure
        raise NameNotFound(name, tried)

    # -- TrustChain

    def _from_trustchain(
        self, name: str, tried: list[tuple[str, str]]
    ) -> tuple[Answer | None, ResolutionError | None]:
        what = f"trustchain {self._names_origin}"
        assert self._names is not None
        try:
            trustchain_name(name)
        except InvalidNameRecord as exc:
            tried.append((what, f"no such name (not a TrustChain name: {exc})"))
            return None, None
        try:
            record = self._names.lookup(name)
        except TrustChainError as exc:
            tried.append((what, f"failed: {exc}"))
            error = TrustChainLookupFailed(f"{name}: the TrustChain lookup failed", tried)
            error.__cause__ = exc
            return None, error
        if record is None:
            tried.append((what, "no such name"))
            return None, None
        signer = None
        if isinstance(self._names, SignerLookup):
            signer = self._names.signer_of(name, record.serial)
        remaining = int((record.not_after - self._clock()).total_seconds())
        services = tuple(
            Service(
                kind="srv",
                owner=f"_{endpoint.service}._{endpoint.protocol}.{record.name}",
                target=record.name,
                port=endpoint.port,
                priority=endpoint.priority,
                weight=endpoint.weight,
            )
            for endpoint in record.services
        )
        answer = Answer(
            name=name,
            addresses=_family_order(record.addresses),
            services=services,
            ttl=max(0, min(record.ttl, remaining)),
            source=TrustChainSource(self._names_origin, record.serial, record.node_id, signer),
        )
        return answer, None

    # -- DNS

    async def _from_dns(
        self, name: str, tried: list[tuple[str, str]]
    ) -> tuple[Answer | None, ResolutionError | None]:
        hit = self._cache.get(name)
        if hit is not None:
            value = hit.value
            if isinstance(value, Answer):
                return replace(value, ttl=hit.remaining, from_cache=True), None
            tried.append((f"dns {value.source.server_text} (cached)", value.rcode))
            return None, None
        result, steps, error = await self._exchange(name)
        if result is not None and result.answer is not None:
            answer = result.answer
            self._cache.put(name, answer, answer.ttl)
            return replace(answer, tried=tuple(steps)), None
        tried.extend(steps)
        if result is not None and result.negative is not None:
            negative = result.negative
            tried.append((f"dns {negative.source.server_text}", negative.rcode))
            self._cache.put_negative(name, negative, result.negative_ttl)
            return None, None
        return None, error

    async def _exchange(
        self, name: str
    ) -> tuple[_ServerResult | None, list[tuple[str, str]], ResolutionError | None]:
        """Run the staggered exchange over the servers: the winning result (or None), the
        ``(what, outcome)`` steps of the servers that did not win, and the error if none won."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self._timeout
        schedule = ServerSchedule(len(self._servers), stagger=self._stagger, now=start)
        running: dict[asyncio.Future[_ServerResult], int] = {}
        outcomes: dict[int, str] = {}
        order: list[int] = []
        try:
            while True:
                now = loop.time()
                while now < deadline and (index := schedule.due(now)) is not None:
                    task = asyncio.ensure_future(self._ask(self._servers[index], name, deadline))
                    running[task] = index
                    if index not in order:
                        order.append(index)
                if schedule.exhausted and not running:
                    steps = self._steps(order, outcomes, "")
                    message = f"{name}: no DNS server gave a usable answer"
                    return None, steps, DnsServersFailed(message, steps)
                if now >= deadline:
                    silent = f"no answer within {self._timeout:g} s"
                    steps = self._steps(order, outcomes, silent)
                    return None, steps, DnsTimeout(f"{name}: DNS timed out", steps)
                wake = schedule.wake_at()
                until = deadline if wake is None else min(wake, deadline)
                if not running:  # pragma: no cover - a failure makes the next server due at once
                    await asyncio.sleep(max(0.0, until - now))
                    continue
                done, _ = await asyncio.wait(
                    running, timeout=max(0.0, until - now), return_when=asyncio.FIRST_COMPLETED
                )
                for finished in done:
                    index = running.pop(finished)
                    result = finished.result()
                    if result.failure is None:
                        winner = index
                        silent = "no answer yet when another server answered"
                        steps = self._steps(order, outcomes, silent, skip=winner)
                        return result, steps, None
                    outcomes[index] = result.failure
                    logger.debug("%s: DNS server %s failed: %s", name, index, result.failure)
                    schedule.failed(index, loop.time())
        finally:
            for pending in running:
                pending.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    def _steps(
        self, order: list[int], outcomes: dict[int, str], silent: str, *, skip: int | None = None
    ) -> list[tuple[str, str]]:
        steps: list[tuple[str, str]] = []
        for index in order:
            if index == skip:
                continue
            what = f"dns {_format_server(self._servers[index])}"
            steps.append((what, outcomes.get(index, silent)))
        return steps

    async def _ask(self, server: Address, name: str, deadline: float) -> _ServerResult:
        """One exchange with one server: A and AAAA in parallel, the service queries alongside."""
        qname = dns.name.from_text(name)
        a = asyncio.ensure_future(self._query(server, qname, dns.rdatatype.A, deadline))
        aaaa = asyncio.ensure_future(self._query(server, qname, dns.rdatatype.AAAA, deadline))
        extras: list[asyncio.Future[_QueryResult]] = [
            asyncio.ensure_future(self._query(server, qname, rdtype, deadline))
            for rdtype in (dns.rdatatype.HTTPS, dns.rdatatype.SVCB)
        ]
        extras.extend(
            asyncio.ensure_future(
                self._query(
                    server, dns.name.from_text(f"_{s}._{p}.{name}"), dns.rdatatype.SRV, deadline
                )
            )
            for s, p in self._services
        )
        try:
            results = await asyncio.gather(a, aaaa)
            positives = [r for r in results if isinstance(r, _Positive)]
            if not positives:
                return self._no_address(name, server, results)
            if self._service_grace > 0:
                await asyncio.wait(extras, timeout=self._service_grace)
            found = [e.result() for e in extras if e.done() and not e.cancelled()]
            service_results = [r for r in found if isinstance(r, _Positive)]
            addresses = _family_order(rdata.to_text() for p in positives for rdata in p.rrset)
            transport: Literal["udp", "tcp"] = (
                "tcp" if any(p.transport == "tcp" for p in positives) else "udp"
            )
            answer = Answer(
                name=name,
                addresses=addresses,
                services=tuple(s for r in service_results for s in _services_of(r.rrset, name)),
                ttl=min(r.ttl for r in (*positives, *service_results)),
                source=DnsSource(server, transport),
            )
            return _ServerResult(answer=answer)
        finally:
            for task in (a, aaaa, *extras):
                task.cancel()
            await asyncio.gather(a, aaaa, *extras, return_exceptions=True)

    def _no_address(
        self, name: str, server: Address, results: Sequence[_QueryResult]
    ) -> _ServerResult:
        negatives = [r for r in results if isinstance(r, _Negative)]
        failures = [r for r in results if isinstance(r, _Failure)]
        if any(r.rcode == "NXDOMAIN" for r in negatives) or not failures:
            rcode: Literal["NXDOMAIN", "NODATA"] = (
                "NXDOMAIN" if any(r.rcode == "NXDOMAIN" for r in negatives) else "NODATA"
            )
            negative = NegativeAnswer(name, rcode, DnsSource(server))
            return _ServerResult(negative=negative, negative_ttl=min(r.ttl for r in negatives))
        return _ServerResult(failure="; ".join(dict.fromkeys(f.reason for f in failures)))

    async def _query(
        self,
        server: Address,
        qname: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        deadline: float,
    ) -> _QueryResult:
        """One question to one server; never raises (but may be cancelled)."""
        loop = asyncio.get_running_loop()
        host, port = server
        query = dns.message.make_query(qname, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
        transport: Literal["udp", "tcp"] = "udp"
        what = dns.rdatatype.to_text(rdtype)
        try:
            # A connected socket per query: the kernel drops datagrams from anyone but the
            # server, and an ICMP port unreachable fails the query at once.
            family = dns.inet.af_for_address(host)
            peer = dns.inet.low_level_address_tuple((host, port), family)
            sock = await _BACKEND.make_socket(  # type: ignore[no-untyped-call]  # dnspython
                family, socket.SOCK_DGRAM, 0, None, peer
            )
            async with sock:
                response = await dns.asyncquery.udp(
                    query, host, timeout=max(0.0, deadline - loop.time()), port=port, sock=sock
                )
            if response.flags & dns.flags.TC:
                transport = "tcp"
                response = await dns.asyncquery.tcp(
                    query, host, timeout=max(0.0, deadline - loop.time()), port=port
                )
        except dns.exception.Timeout:
            return _Failure(f"{what}: timed out")
        except (dns.exception.DNSException, ValueError) as exc:
            return _Failure(f"{what}: bad response ({type(exc).__name__}: {exc})")
        except TimeoutError:
            return _Failure(f"{what}: timed out")
        except OSError as exc:
            return _Failure(f"{what} over {transport}: {exc.strerror or exc}")
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return _Negative("NXDOMAIN", negative_ttl(response))
        if rcode != dns.rcode.NOERROR:
            return _Failure(f"{what}: {dns.rcode.to_text(rcode)}")
        if not isinstance(response, dns.message.QueryMessage):  # pragma: no cover - dnspython
            return _Failure(f"{what}: the response is not a query response")
        try:
            chain = response.resolve_chaining()
        except dns.exception.DNSException as exc:
            return _Failure(f"{what}: bad answer ({type(exc).__name__}: {exc})")
        if chain.answer is None or len(chain.answer) == 0:
            return _Negative("NODATA", negative_ttl(response))
        return _Positive(chain.answer, chain.minimum_ttl, transport)


def _services_of(rrset: dns.rrset.RRset, name: str) -> list[Service]:
    owner = rrset.name.to_text(omit_final_dot=True).lower()
    services: list[Service] = []
    for rdata in rrset:
        if isinstance(rdata, dns.rdtypes.IN.SRV.SRV):
            services.append(
                Service(
                    kind="srv",
                    owner=owner,
                    target=_target_text(rdata.target, owner),
                    port=rdata.port,
                    priority=rdata.priority,
                    weight=rdata.weight,
                )
            )
        elif isinstance(rdata, dns.rdtypes.svcbbase.SVCBBase):
            port_param = rdata.params.get(dns.rdtypes.svcbbase.ParamKey.PORT)
            alpn_param = rdata.params.get(dns.rdtypes.svcbbase.ParamKey.ALPN)
            port = None
            if isinstance(port_param, dns.rdtypes.svcbbase.PortParam):
                port = port_param.port
            alpn: tuple[str, ...] = ()
            if isinstance(alpn_param, dns.rdtypes.svcbbase.ALPNParam):
                alpn = tuple(i.decode("ascii", "backslashreplace") for i in alpn_param.ids)
            services.append(
                Service(
                    kind="https" if rrset.rdtype == dns.rdatatype.HTTPS else "svcb",
                    owner=name,
                    target=_target_text(rdata.target, name),
                    port=port,
                    priority=rdata.priority,
                    alpn=alpn,
                )
            )
    return services


class HappyEyeballsResolver:
    """A :class:`Resolver` in the shape :func:`stoq.endpoint.connect` (Happy Eyeballs) asks
    for: ``resolve(host, port, family)`` -> the addresses of one family.

    Happy Eyeballs asks for AAAA and A at once; both questions share one
    :meth:`Resolver.resolve` of the name (which asks A and AAAA together, or answers from
    TrustChain), so the name is resolved once per connect.
    """

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self._pending: dict[str, asyncio.Future[Answer]] = {}

    async def resolve(self, host: str, port: int, family: socket.AddressFamily) -> list[str]:
        name = normalize_name(host)
        pending = self._pending.get(name)
        if pending is None:
            pending = asyncio.ensure_future(self.resolver.resolve(name))
            self._pending[name] = pending
            pending.add_done_callback(lambda _: self._pending.pop(name, None))
        answer = await asyncio.shield(pending)
        version = 6 if family == socket.AF_INET6 else 4
        return [a for a in answer.addresses if ipaddress.ip_address(a).version == version]
