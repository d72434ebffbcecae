"""The DNS front-end: TrustChain name records answered in standard DNS, over UDP and TCP.

Unmodified clients (``dig``, stub resolvers, any DNS library) resolve TrustChain names by asking
this server. It is *authoritative only*: it answers for its zones and refuses everything else (it
is not a recursive resolver; RA is always 0). Wire parsing and building use dnspython; what to
answer is decided here.

:class:`Authority` is the sans-IO core: built from verified records (``name ->``
:class:`~trustchain.naming.records.NameRecord`, e.g. from
:func:`~trustchain.naming.zone.verified_names`), it turns one query message into one response
message (:meth:`Authority.answer`). :class:`DnsServer` is the thin asyncio shell: UDP and TCP on
the same port(s), with an authority that can be swapped atomically (reload).
:func:`load_record_set` reads a record-set file (what ``trustchain names export`` writes) into an
:class:`Authority`.

Zones (which names the server is authoritative for):
    ``zones`` given explicitly, or by default the record names' parent domains
    (``node1.bank.hypermesh`` → ``bank.hypermesh``; a single-label name is its own zone), keeping
    only the outermost ones: a parent that lies inside another one is not a zone of its own
    (with ``node1.bank.hypermesh`` and ``db.deep.bank.hypermesh``, the one zone is
    ``bank.hypermesh``). The root zone is never accepted. A name belongs to the *closest*
    enclosing zone (the one with the most labels). Every record must lie inside some zone.

Records per name (RRset TTL = the record's ``ttl``, capped to the whole seconds left until its
``not_after``; a record outside its validity window at query time is treated as absent):
    * A / AAAA at ``NAME``: ``record.addresses`` by IP version (an RRset has no order).
    * TXT at ``NAME``: one TXT rdata per ``record.texts`` entry (UTF-8, cut into 255-byte
      character-strings), then one more, ``node-id=<64 lowercase hex digits>`` (the node id).
    * SRV at ``_SERVICE._PROTOCOL.NAME`` (from ``record.services``): priority, weight, port, target
      ``NAME.``; the target's A/AAAA go in the additional section when they fit.
    * SOA at each zone apex, synthesized: MNAME = the apex, RNAME ``hostmaster.<apex>``,
      SERIAL = the highest record serial among the zone's records modulo 2**32 (0 for a zone
      without records), REFRESH 3600, RETRY 600, EXPIRE 86400, MINIMUM and the SOA's own TTL = the
      lowest record TTL in the zone (:data:`DEFAULT_TTL` for a zone without records). No NS
      records are synthesized: the server does not know the names it is reachable under.

A name *exists* if it is a zone apex, the name of a live record, an SRV owner of a live record,
or an ancestor of one of those inside the zone (an empty non-terminal, RFC 8020).

Decisions for one message, in this order (the response copies ID, opcode, RD and CD; QR=1):

1. Fewer than 12 bytes (no readable header), or QR=1 (a response: answering it could loop) →
   ``None``: drop.
2. Opcode other than QUERY → NOTIMP (header only).
3. dnspython cannot parse the message → FORMERR (header only).
4. QDCOUNT != 1 → FORMERR.
5. EDNS version other than 0 → BADVERS (with an OPT of version 0, RFC 6891 §6.1.3).
6. TSIG-signed → NOTAUTH (the server holds no TSIG keys; RFC 8945 §5.2).
7. Class other than IN (CH/CHAOS, HS, ANY, ...) → REFUSED.
8. Name in none of the zones → REFUSED.
9. From here AA=1. QTYPE AXFR/IXFR → REFUSED (no zone transfers); MAILA/MAILB → NOTIMP; other
   meta types (OPT, TSIG, TKEY, ...) → FORMERR.
10. The name does not exist → NXDOMAIN, the zone's SOA in the authority section (its TTL the
    smaller of the SOA TTL and MINIMUM, RFC 2308).
11. QTYPE ANY → one HINFO ``"RFC8482" ""`` (RFC 8482 §4.2), TTL = the SOA TTL.
12. Data of that type → NOERROR with the RRset; none → NODATA: NOERROR, empty answer, the SOA in
    the authority section as in 10.

EDNS: a query with an OPT gets an OPT back (version 0, payload ``max_udp``, the DO bit copied, no
options). Size limits: over TCP 65535 bytes; over UDP 512 without EDNS, else the client's payload
clamped to ``[512, max_udp]``. A response that does not fit is first sent without its additional
data (other than the OPT); if it still does not fit, it is truncated: TC=1, the question kept,
answer, authority and additional emptied (but the OPT), so that a UDP client retries over TCP.

Shell (:class:`DnsServer`): each ``(ip, port)`` listen address gets a UDP socket and a TCP
listener on the same port (port 0: the kernel picks the UDP port and TCP takes it too, retried if
TCP has it in use); ``"::"`` is dual-stack. UDP: one datagram in, at most one datagram out; a
``None`` answer sends nothing. TCP (RFC 7766): each message is preceded by its 2-byte big-endian
length; any number of queries per connection, answered in order; a connection is closed after
:data:`TCP_IDLE_TIMEOUT` seconds without a complete query (or a stalled write), when the peer
closes, or when a message gets no answer (``None``: unreadable); beyond
:data:`MAX_TCP_CONNECTIONS` open connections a new one is closed at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.HINFO
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV
import dns.rrset
from cryptography import x509

from stoq.errors import StoqError
from stoq.nat.stun_client import format_address, normalize_address
from stoq.udp import open_socket
from trustchain.ca.trust import TrustAnchor, TrustStore
from trustchain.errors import TrustChainError
from trustchain.naming.records import NameRecord, NameRecordRejected
from trustchain.naming.zone import decode_record_set, verified_names

__all__ = [
    "ANSWER_CACHE_SECONDS",
    "ANSWER_CACHE_SIZE",
    "DEFAULT_TTL",
    "EDNS_PAYLOAD",
    "MAX_TCP_CONNECTIONS",
    "MAX_TCP_MESSAGE",
    "NODE_ID_PREFIX",
    "TCP_IDLE_TIMEOUT",
    "Authority",
    "DnsServer",
    "DnsServerError",
    "LoadedZone",
    "load_record_set",
]

log = logging.getLogger(__name__)

#: TTL of the SOA of a zone that holds no records.
DEFAULT_TTL = 300
#: Seconds an answer is reused for a repeat of its query, and how many are kept.
ANSWER_CACHE_SECONDS = 1.0
ANSWER_CACHE_SIZE = 4096
#: The EDNS UDP payload advertised and, by default, the largest UDP answer (RFC 9715's advice).
EDNS_PAYLOAD = 1232
#: The largest UDP answer to a query without EDNS (RFC 1035 §4.2.1).
MIN_UDP = 512
#: The largest DNS message over TCP (the 2-byte length prefix).
MAX_TCP_MESSAGE = 65535
#: Seconds a TCP connection may wait for its next complete query (or for a write to drain).
TCP_IDLE_TIMEOUT = 10.0
#: TCP connections open at once, at most; more are closed on arrival.
MAX_TCP_CONNECTIONS = 256
#: The prefix of the TXT string that carries a record's node id in hex.
NODE_ID_PREFIX = "node-id="

SOA_REFRESH = 3600
SOA_RETRY = 600
SOA_EXPIRE = 86400
_MAX_TTL = 2**31 - 1  # RFC 2181 §8
_BIND_ATTEMPTS = 20
_HEADER = struct.Struct("!HHHHHH")
_QR = 0x8000
_OPCODE_SHIFT = 11
_IN = dns.rdataclass.IN
_ZONE_TRANSFERS = frozenset({dns.rdatatype.AXFR, dns.rdatatype.IXFR})
_MAIL_TYPES = frozenset({dns.rdatatype.MAILA, dns.rdatatype.MAILB})

Transport = Literal["udp", "tcp"]


class DnsServerError(StoqError):
    """The DNS front-end cannot be set up: bad records or zones, a listen address that cannot be
    bound, or a record-set file that cannot be read."""


def _dns_name(text: str, what: str) -> dns.name.Name:
    try:
        name = dns.name.from_text(text, origin=dns.name.root)
    except dns.exception.DNSException as exc:
        raise DnsServerError(f"{what} {text!r} is not a DNS name: {exc}") from exc
    if name == dns.name.root:
        raise DnsServerError(f"{what} {text!r} is the root zone, which is not ours to serve")
    return name


def _txt_strings(text: str) -> list[bytes]:
    data = text.encode()
    return [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]


@dataclass(frozen=True)
class _Entry:
    """One record, with its rdatas built once."""

    record: NameRecord
    a: tuple[dns.rdata.Rdata, ...]
    aaaa: tuple[dns.rdata.Rdata, ...]
    txt: tuple[dns.rdata.Rdata, ...]

    def live(self, now: datetime) -> bool:
        return self.record.not_before <= now <= self.record.not_after

    def ttl(self, now: datetime) -> int:
        left = int((self.record.not_after - now).total_seconds())
        return max(0, min(self.record.ttl, left, _MAX_TTL))


@dataclass(frozen=True)
class _Zone:
    apex: dns.name.Name
    soa: dns.rdata.Rdata
    soa_ttl: int
    minimum: int

    @property
    def negative_ttl(self) -> int:
        return min(self.soa_ttl, self.minimum)  # RFC 2308 §5


def _address_rdata(
    kind: type[dns.rdata.Rdata], rdtype: dns.rdatatype.RdataType, address: str
) -> dns.rdata.Rdata:
    return kind(_IN, rdtype, address)  # type: ignore[call-arg]


def _entry(record: NameRecord) -> _Entry:
    a: list[dns.rdata.Rdata] = []
    aaaa: list[dns.rdata.Rdata] = []
    try:
        for address in record.addresses:
            ip = ipaddress.ip_address(address)
            if ip.version == 4:
                a.append(_address_rdata(dns.rdtypes.IN.A.A, dns.rdatatype.A, ip.compressed))
            else:
                aaaa.append(
                    _address_rdata(dns.rdtypes.IN.AAAA.AAAA, dns.rdatatype.AAAA, ip.compressed)
                )
        texts = [*record.texts, NODE_ID_PREFIX + record.node_id.hex()]
        txt = tuple(
            dns.rdtypes.ANY.TXT.TXT(_IN, dns.rdatatype.TXT, _txt_strings(text)) for text in texts
        )
    except (ValueError, dns.exception.DNSException) as exc:
        raise DnsServerError(f"record {record.name!r} cannot be served: {exc}") from exc
    return _Entry(record, tuple(a), tuple(aaaa), txt)


class Authority:
    """Answers DNS queries from TrustChain name records; see the module docstring for the rules.

    ``records`` maps each name to its (already verified) record; the key must be the record's
    name. ``zones``: the apexes to be authoritative for (default: the outermost of the record
    names' parent domains). :class:`DnsServerError` if a record is outside every zone, a zone is
    the root or not a DNS name, or a record cannot be put into DNS form. Immutable once built.
    """

    def __init__(
        self, records: Mapping[str, NameRecord], zones: Iterable[str] | None = None
    ) -> None:
        entries: dict[dns.name.Name, _Entry] = {}
        for key, record in records.items():
            if key != record.name:
                raise DnsServerError(f"record {record.name!r} is filed under {key!r}")
            name = _dns_name(record.name, "record name")
            entries[name] = _entry(record)
        if zones is None:
            # len() counts the root label: a single-label name ("a.") has 2 labels.
            parents = {name if len(name) <= 2 else name.parent() for name in entries}
            apexes = {
                apex
                for apex in parents
                if not any(apex != other and apex.is_subdomain(other) for other in parents)
            }
        else:
            apexes = {_dns_name(zone, "zone") for zone in zones}
        self._apexes = sorted(apexes, key=len, reverse=True)  # closest (longest) first
        self._entries = entries
        #: Recent answers by (transport, UDP limit, query without its id): see :meth:`answer`.
        self._answers: collections.OrderedDict[tuple[str, int, bytes], tuple[float, bytes]] = (
            collections.OrderedDict()
        )
        #: SRV owner name -> (the record's entry, its SRV rdatas)
        self._srv: dict[dns.name.Name, tuple[_Entry, tuple[dns.rdata.Rdata, ...]]] = {}
        #: every existing non-apex name -> the entries that make it exist
        self._exists: dict[dns.name.Name, list[_Entry]] = {}
        by_zone: dict[dns.name.Name, list[NameRecord]] = {apex: [] for apex in self._apexes}
        for name, entry in entries.items():
            apex = self._zone_of(name)
            if apex is None:
                raise DnsServerError(
                    f"record {entry.record.name!r} is outside every zone "
                    f"({', '.join(self.zones) or 'none'})"
                )
            by_zone[apex].append(entry.record)
            self._add_existing(name, apex, entry)
            owners: dict[dns.name.Name, list[dns.rdata.Rdata]] = {}
            for service in entry.record.services:
                try:
                    owner = dns.name.Name(
                        (f"_{service.service}".encode(), f"_{service.protocol}".encode())
                    ).concatenate(name)
                    rdata = dns.rdtypes.IN.SRV.SRV(  # type: ignore[no-untyped-call]
                        _IN,
                        dns.rdatatype.SRV,
                        service.priority,
                        service.weight,
                        service.port,
                        name,
                    )
                except (ValueError, dns.exception.DNSException) as exc:
                    what = f"record {entry.record.name!r}, service {service!r}"
                    raise DnsServerError(f"{what} cannot be served: {exc}") from exc
                owners.setdefault(owner, []).append(rdata)
            for owner, rdatas in owners.items():
                self._srv[owner] = (entry, tuple(rdatas))
                self._add_existing(owner, apex, entry)
        self._zones = {apex: self._make_zone(apex, by_zone[apex]) for apex in self._apexes}

    @property
    def zones(self) -> tuple[str, ...]:
        """The zone apexes, without the trailing dot, closest-first (most labels first)."""
        return tuple(apex.to_text(omit_final_dot=True) for apex in self._apexes)

    @property
    def records(self) -> dict[str, NameRecord]:
        """The records served, by name."""
        return {entry.record.name: entry.record for entry in self._entries.values()}

    def _zone_of(self, name: dns.name.Name) -> dns.name.Name | None:
        for apex in self._apexes:
            if name.is_subdomain(apex):
                return apex
        return None

    def _add_existing(self, name: dns.name.Name, apex: dns.name.Name, entry: _Entry) -> None:
        while name != apex:
            self._exists.setdefault(name, []).append(entry)
            name = name.parent()

    @staticmethod
    def _make_zone(apex: dns.name.Name, records: Sequence[NameRecord]) -> _Zone:
        serial = max((record.serial for record in records), default=0) % 2**32
        ttl = min((record.ttl for record in records), default=DEFAULT_TTL)
        ttl = max(0, min(ttl, _MAX_TTL))
        soa = dns.rdtypes.ANY.SOA.SOA(  # type: ignore[no-untyped-call]
            _IN,
            dns.rdatatype.SOA,
            apex,
            dns.name.Name((b"hostmaster",)).concatenate(apex),
            serial,
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            ttl,
        )
        return _Zone(apex, soa, ttl, ttl)

    # --- answering ------------------------------------------------------------------------

    def answer(
        self,
        query_wire: bytes,
        *,
        transport: Transport,
        max_udp: int = EDNS_PAYLOAD,
        now: datetime | None = None,
    ) -> bytes | None:
        """The response to the DNS message ``query_wire`` received over ``transport``, or
        ``None`` to send nothing. Whatever the bytes, it returns; ``now`` (default: the current
        time, timezone-aware) decides which records are live and their TTLs.

        Without ``now``, an answer is kept for :data:`ANSWER_CACHE_SECONDS` under everything
        the answer depends on but the time (the transport, the UDP limit and the query's bytes
        but its ID), and a repeat of the same query gets it with its own ID: most of the cost
        of an answer is building it with dnspython. So an answer may be up to that long behind
        the clock (a record that just expired, a TTL one second high). At most
        :data:`ANSWER_CACHE_SIZE` answers are kept (least recently used go first)."""
        if transport not in ("udp", "tcp"):
            raise DnsServerError(f"unknown transport {transport!r}: expected 'udp' or 'tcp'")
        if now is not None or len(query_wire) < _HEADER.size:
            return self._answer(query_wire, transport, max_udp, now)
        key = (transport, max_udp, query_wire[2:])
        clock = time.monotonic()
        cached = self._answers.get(key)
        if cached is not None and cached[0] > clock:
            self._answers.move_to_end(key)
            return query_wire[:2] + cached[1]
        answer = self._answer(query_wire, transport, max_udp, None)
        if answer is not None:
            self._answers[key] = (clock + ANSWER_CACHE_SECONDS, answer[2:])
            self._answers.move_to_end(key)
            while len(self._answers) > ANSWER_CACHE_SIZE:
                self._answers.popitem(last=False)
        return answer

    def _answer(
        self, query_wire: bytes, transport: Transport, max_udp: int, now: datetime | None
    ) -> bytes | None:
        if len(query_wire) < _HEADER.size:
            return None
        query_id, flags, qdcount, _, _, _ = _HEADER.unpack_from(query_wire)
        if flags & _QR:
            return None
        if (flags >> _OPCODE_SHIFT) & 0xF != dns.opcode.QUERY:
            return _header_only(query_id, flags, dns.rcode.NOTIMP)
        try:
            query = dns.message.from_wire(query_wire, keyring=False)
        except (dns.exception.DNSException, ValueError) as exc:  # dnspython: rdata value errors
            log.debug("FORMERR for query %d: %s", query_id, exc)
            return _header_only(query_id, flags, dns.rcode.FORMERR)
        response = dns.message.make_response(query, our_payload=max_udp, pad=0)
        response.flags |= query.flags & dns.flags.CD
        if query.edns >= 0:
            response.use_edns(0, query.ednsflags & dns.flags.DO, max_udp)
        if qdcount != 1:
            response.question = []
            response.set_rcode(dns.rcode.FORMERR)
        else:
            self._fill(query, response, datetime.now(UTC) if now is None else now)
        if transport == "tcp":
            limit = MAX_TCP_MESSAGE
        elif query.edns >= 0:
            limit = max(MIN_UDP, min(query.payload, max_udp))
        else:
            limit = MIN_UDP
        return _encode(response, limit)

    def _fill(
        self, query: dns.message.Message, response: dns.message.Message, now: datetime
    ) -> None:
        if query.edns > 0:
            response.set_rcode(dns.rcode.BADVERS)
            return
        if query.had_tsig:
            response.set_rcode(dns.rcode.NOTAUTH)
            return
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        if question.rdclass != _IN:
            response.set_rcode(dns.rcode.REFUSED)
            return
        apex = self._zone_of(qname)
        if apex is None:
            response.set_rcode(dns.rcode.REFUSED)
            return
        response.flags |= dns.flags.AA
        zone = self._zones[apex]
        if qtype in _ZONE_TRANSFERS:
            response.set_rcode(dns.rcode.REFUSED)
            return
        if qtype in _MAIL_TYPES:
            response.set_rcode(dns.rcode.NOTIMP)
            return
        if dns.rdatatype.is_metatype(qtype) and qtype != dns.rdatatype.ANY:
            response.set_rcode(dns.rcode.FORMERR)
            return
        if qname != apex and not any(e.live(now) for e in self._exists.get(qname, ())):
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(_soa_rrset(zone, zone.negative_ttl))
            return
        answer = self._data(qname, qtype, zone, now)
        if answer is None:
            response.authority.append(_soa_rrset(zone, zone.negative_ttl))
            return
        response.answer.append(answer)
        if qtype == dns.rdatatype.SRV:
            entry, _ = self._srv[qname]
            for rdatas in (entry.a, entry.aaaa):
                if rdatas:
                    target = dns.name.from_text(entry.record.name, origin=dns.name.root)
                    response.additional.append(
                        dns.rrset.from_rdata_list(target, entry.ttl(now), rdatas)
                    )

    def _data(
        self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType, zone: _Zone, now: datetime
    ) -> dns.rrset.RRset | None:
        if qtype == dns.rdatatype.ANY:
            hinfo = dns.rdtypes.ANY.HINFO.HINFO(  # type: ignore[no-untyped-call]
                _IN, dns.rdatatype.HINFO, b"RFC8482", b""
            )
            return dns.rrset.from_rdata_list(qname, zone.soa_ttl, [hinfo])
        if qtype == dns.rdatatype.SOA:
            return _soa_rrset(zone, zone.soa_ttl, qname) if qname == zone.apex else None
        if qtype == dns.rdatatype.SRV:
            found = self._srv.get(qname)
            if found is None or not found[0].live(now):
                return None
            return dns.rrset.from_rdata_list(qname, found[0].ttl(now), found[1])
        entry = self._entries.get(qname)
        if entry is None or not entry.live(now):
            return None
        rdatas = {
            dns.rdatatype.A: entry.a,
            dns.rdatatype.AAAA: entry.aaaa,
            dns.rdatatype.TXT: entry.txt,
        }.get(qtype, ())
        return dns.rrset.from_rdata_list(qname, entry.ttl(now), rdatas) if rdatas else None


def _soa_rrset(zone: _Zone, ttl: int, owner: dns.name.Name | None = None) -> dns.rrset.RRset:
    return dns.rrset.from_rdata_list(zone.apex if owner is None else owner, ttl, [zone.soa])


def _header_only(query_id: int, query_flags: int, rcode: int) -> bytes:
    """A response made of the header alone: the query's id, opcode, RD and CD, and ``rcode``."""
    keep = (0xF << _OPCODE_SHIFT) | dns.flags.RD | dns.flags.CD
    return _HEADER.pack(query_id, _QR | (query_flags & keep) | rcode, 0, 0, 0, 0)


def _encode(response: dns.message.Message, limit: int) -> bytes:
    """``response`` in at most ``limit`` bytes: whole, else without additional data, else
    truncated (TC=1, only the question and the OPT)."""
    with contextlib.suppress(dns.exception.TooBig):
        return response.to_wire(max_size=limit)
    if response.additional:
        response.additional = []
        with contextlib.suppress(dns.exception.TooBig):
            return response.to_wire(max_size=limit)
    response.answer = []
    response.authority = []
    response.flags |= dns.flags.TC
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        # A question (<= 259 bytes) and an OPT fit in 512 bytes; this is for the impossible.
        response.question = []
        return response.to_wire(max_size=limit)


# --- loading a record-set file ---------------------------------------------------------------


@dataclass(frozen=True)
class LoadedZone:
    """What :func:`load_record_set` made of a record-set file: the authority to serve and the
    records refused (each with its reason)."""

    authority: Authority
    refused: tuple[NameRecordRejected, ...]


def load_record_set(
    path: Path,
    *,
    trust: Sequence[x509.Certificate] | None = None,
    zones: Iterable[str] | None = None,
    at: datetime | None = None,
) -> LoadedZone:
    """Read the record-set file ``path`` (:func:`trustchain.naming.zone.encode_record_set`
    format) and build an :class:`Authority` from its verified records.

    Records are verified against the set's own anchors (the file is the authority configured,
    like a zone file), or, with ``trust``, against those root certificates only. Records refused
    by verification (bad signature, outside the signer's namespace, expired, revoked, ...) are
    left out and listed in :attr:`LoadedZone.refused`. :class:`DnsServerError` if the file cannot
    be read or is not a record set."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DnsServerError(f"cannot read zone file {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        record_set = decode_record_set(data)
    except TrustChainError as exc:
        raise DnsServerError(f"zone file {str(path)!r} is not a record set: {exc}") from exc
    store = None
    if trust is not None:
        store = TrustStore()
        for index, certificate in enumerate(trust):
            try:
                store.add_anchor(TrustAnchor(certificate, f"pinned root {index}"))
            except TrustChainError as exc:
                raise DnsServerError(f"pinned root {index} is not a usable anchor: {exc}") from exc
    try:
        names, refused = verified_names(record_set, store, at=at)
    except TrustChainError as exc:
        raise DnsServerError(f"zone file {str(path)!r}: {exc}") from exc
    return LoadedZone(Authority(names, zones), tuple(refused))


# --- the asyncio shell -------------------------------------------------------------------------


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's datagram transports have sendto() without subclassing DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.transport is not None:
            self._server._datagram(data, addr, self.transport)

    def error_received(self, exc: Exception) -> None:
        log.debug("DNS UDP socket: %s", exc)


def _tcp_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_pair(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP socket and a TCP listening socket on ``host`` and the same port."""
    for _ in range(_BIND_ATTEMPTS):
        try:
            udp = open_socket(host, port)
        except OSError as exc:
            raise DnsServerError(
                f"cannot listen on {format_address((host, port))} (udp): {exc}"
            ) from exc
        bound = udp.getsockname()[1]
        try:
            return udp, _tcp_socket(host, bound)
        except OSError as exc:
            udp.close()
            if port == 0 and exc.errno == errno.EADDRINUSE:
                continue  # the kernel's UDP pick is taken on TCP: pick again
            raise DnsServerError(
                f"cannot listen on {format_address((host, bound))} (tcp): {exc}"
            ) from exc
    raise DnsServerError(
        f"no port free for both UDP and TCP on {host} in {_BIND_ATTEMPTS} attempts"
    )


class DnsServer:
    """The asyncio UDP + TCP shell around an :class:`Authority`. Open with :meth:`start`."""

    def __init__(
        self,
        authority: Authority,
        *,
        max_udp: int = EDNS_PAYLOAD,
        idle_timeout: float = TCP_IDLE_TIMEOUT,
        max_connections: int = MAX_TCP_CONNECTIONS,
    ) -> None:
        self._authority = authority
        self._max_udp = max_udp
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        #: Queries whose handling raised (a bug: logged, counted, and the server goes on).
        self.internal_errors = 0
        #: TCP connections closed on arrival because :data:`MAX_TCP_CONNECTIONS` were open.
        self.refused_connections = 0
        self._addresses: list[tuple[str, int]] = []
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[Any]] = set()

    @classmethod
    async def start(
        cls,
        listen: Sequence[tuple[str, int]],
        authority: Authority,
        *,
        max_udp: int = EDNS_PAYLOAD,
        idle_timeout: float = TCP_IDLE_TIMEOUT,
        max_connections: int = MAX_TCP_CONNECTIONS,
    ) -> DnsServer:
        """Listen with UDP and TCP on every ``(ip, port)`` of ``listen`` (port 0: any, the same
        for both). IP addresses only; ``"::"`` is dual-stack. :class:`DnsServerError` if an
        address is not an IP address or cannot be bound (nothing stays open then)."""
        if not listen:
            raise DnsServerError("nothing to listen on")
        if max_udp < MIN_UDP or max_udp > MAX_TCP_MESSAGE:
            raise DnsServerError(f"max_udp {max_udp} is outside {MIN_UDP}..{MAX_TCP_MESSAGE}")
        try:
            wanted = [normalize_address(address) for address in listen]
        except (ValueError, TypeError) as exc:
            raise DnsServerError(f"listen addresses must be IP addresses: {exc}") from exc
        server = cls(
            authority,
            max_udp=max_udp,
            idle_timeout=idle_timeout,
            max_connections=max_connections,
        )
        try:
            for host, port in wanted:
                await server._listen(host, port)
        except BaseException:
            await server.close()
            raise
        return server

    async def _listen(self, host: str, port: int) -> None:
        udp_sock, tcp_sock = _bind_pair(host, port)
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), sock=udp_sock
            )
        except BaseException:
            udp_sock.close()
            tcp_sock.close()
            raise
        self._udp.append(transport)
        try:
            tcp = await asyncio.start_server(self._connection, sock=tcp_sock)
        except BaseException:
            tcp_sock.close()
            raise
        self._tcp.append(tcp)
        self._addresses.append(normalize_address(udp_sock.getsockname()))

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """The bound ``(ip, port)`` addresses, in ``listen`` order; each serves UDP and TCP."""
        return tuple(self._addresses)

    @property
    def authority(self) -> Authority:
        """The authority answering queries. Assigning a new one (a reload) is atomic: every
        query is answered wholly by the old or wholly by the new one."""
        return self._authority

    @authority.setter
    def authority(self, authority: Authority) -> None:
        self._authority = authority

    def _answer(self, data: bytes, transport: Transport) -> bytes | None:
        authority = self._authority  # one read: a reload never splits a query
        try:
            return authority.answer(data, transport=transport, max_udp=self._max_udp)
        except Exception:
            # The server must keep serving whatever one query does; this is a bug if it runs.
            self.internal_errors += 1
            log.exception("DNS server: a %s query could not be handled", transport)
            return None

    def _datagram(
        self, data: bytes, addr: tuple[Any, ...], transport: asyncio.DatagramTransport
    ) -> None:
        reply = self._answer(data, "udp")
        if reply is not None:
            transport.sendto(reply, addr)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._connections) >= self._max_connections or task is None:
            self.refused_connections += 1
            writer.close()
            return
        self._connections.add(task)
        try:
            await self._serve_stream(reader, writer)
        except TimeoutError:
            log.debug("DNS TCP connection idle for %ss: closed", self._idle_timeout)
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
            log.debug("DNS TCP connection ended: %s", exc)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _serve_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                prefix = await asyncio.wait_for(reader.readexactly(2), self._idle_timeout)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise
                return  # the client closed between messages: the normal end
            (length,) = struct.unpack("!H", prefix)
            message = await asyncio.wait_for(reader.readexactly(length), self._idle_timeout)
            reply = self._answer(message, "tcp")
            if reply is None:
                return  # unreadable: there is nothing to answer on this connection
            writer.write(struct.pack("!H", len(reply)) + reply)
            await asyncio.wait_for(writer.drain(), self._idle_timeout)

    async def close(self) -> None:
        """Stop listening and close every TCP connection (idempotent)."""
        for transport in self._udp:
            transport.close()
        self._udp.clear()
        for tcp in self._tcp:
            tcp.close()
        for task in list(self._connections):
            task.cancel()
        for tcp in self._tcp:
            await tcp.wait_closed()
        self._tcp.clear()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        await asyncio.sleep(0)  # let the transports finish closing their sockets

    async def __aenter__(self) -> DnsServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
