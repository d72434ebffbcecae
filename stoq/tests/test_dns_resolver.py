"""The resolver chain (stoq.dns.resolver) and its cache (stoq.dns.cache).

DNS is a real dnsmasq (Debian package ``dnsmasq``) on loopback serving a test zone under
``bank.hypermesh``; TrustChain names are real records signed with the test PKI (``conftest.pki``:
intermediate ``bank`` owns the namespace ``bank.hypermesh``). Names:

* ``both.bank.hypermesh``: in DNS (127.0.0.10, ::10) and in TrustChain (127.0.0.20, ::20).
* ``dnsonly.bank.hypermesh``: DNS only (127.0.0.11, ::11, an SRV and an HTTPS record).
* ``tconly.bank.hypermesh``: TrustChain only (127.0.0.21, a ``_stoq._udp`` service).
* ``nowhere.bank.hypermesh``: neither.

Servers that misbehave are real sockets too: one that reads and drops every query (dead), a
closed port (ICMP port unreachable) and a second dnsmasq that REFUSES the zone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdata
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stoq.cli import main as stoq_main
from stoq.dns.cache import DEFAULT_NEGATIVE_TTL, CacheEntry, TtlCache
from stoq.dns.resolver import (
    DEFAULT_BOOTSTRAP,
    Answer,
    DnsServersFailed,
    DnsSource,
    DnsTimeout,
    InvalidName,
    NameLookup,
    NameNotFound,
    NegativeAnswer,
    Policy,
    RecordSetNames,
    RegistryNames,
    Resolver,
    ServerSchedule,
    Service,
    TrustChainLookupFailed,
    TrustChainSource,
    negative_ttl,
    normalize_name,
    system_servers,
)
from stoq.errors import ResolutionError
from trustchain.ca.authority import Issued
from trustchain.cli import main as trustchain_main
from trustchain.errors import TrustChainError
from trustchain.naming.records import (
    NameRecord,
    Revocation,
    ServiceEndpoint,
    SignedRecord,
    sign_record,
    sign_revocation,
)
from trustchain.naming.registry import NameRegistry
from trustchain.naming.zone import RecordSet, encode_record_set

from .conftest import Pki

T = TypeVar("T")

ZONE = "bank.hypermesh"
BOTH = f"both.{ZONE}"
DNS_ONLY = f"dnsonly.{ZONE}"
TC_ONLY = f"tconly.{ZONE}"
NOWHERE = f"nowhere.{ZONE}"
ALIAS = f"alias.{ZONE}"
TEXT_ONLY = f"textonly.{ZONE}"
MANY = f"many.{ZONE}"
MANY_COUNT = 120
LOCAL_TTL = 300


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


# --- dnsmasq -----------------------------------------------------------------------------------


def _dnsmasq_binary() -> str:
    found = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if found is None:
        pytest.skip("dnsmasq (Debian package dnsmasq) is not installed")
    return found


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq serves both on one port)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port for both UDP and TCP")


def _https_hex(text: str, rdtype: str = "HTTPS") -> str:
    wire = dns.rdata.from_text("IN", rdtype, text).to_wire()
    assert wire is not None
    return wire.hex()


@dataclass
class Dnsmasq:
    address: tuple[str, int]
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def dnsmasq(tmp: Path, *options: str) -> Iterator[Dnsmasq]:
    """Run dnsmasq on a free loopback port with ``options``; killed afterwards."""
    binary = _dnsmasq_binary()
    for _attempt in range(5):
        port = _free_port()
        log = tmp / f"dnsmasq-{port}.log"
        with log.open("wb") as stream:
            process = subprocess.Popen(
                [
                    binary,
                    "--no-daemon",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--pid-file=",
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    f"--port={port}",
                    *options,
                ],
                stdout=stream,
                stderr=subprocess.STDOUT,
            )
        try:
            if _wait_ready(process, port):
                yield Dnsmasq(("127.0.0.1", port), process)
                return
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    raise RuntimeError(f"dnsmasq did not start: {log.read_text(errors='replace')}")


def _wait_ready(process: subprocess.Popen[bytes], port: int) -> bool:
    """True once dnsmasq answers a query on ``port``; False if it exited (port taken)."""
    query = dns.message.make_query("ready.invalid", "A")
    for _ in range(200):
        if process.poll() is not None:
            return False
        try:
            dns.query.udp(query, "127.0.0.1", port=port, timeout=0.1)
            return True
        except (dns.exception.Timeout, OSError):
            time.sleep(0.05)
    return False


def _zone_options(tmp: Path) -> list[str]:
    hosts = tmp / "many.hosts"
    hosts.write_text("".join(f"127.0.1.{i} {MANY}\n" for i in range(1, MANY_COUNT + 1)))
    return [
        f"--local=/{ZONE}/",
        f"--local-ttl={LOCAL_TTL}",
        f"--addn-hosts={hosts}",
        f"--host-record={BOTH},127.0.0.10,::10",
        f"--host-record={DNS_ONLY},127.0.0.11,::11",
        f"--host-record=short.{ZONE},127.0.0.13,30",
        f"--txt-record={TEXT_ONLY},just text",
        f"--srv-host=_stoq._udp.{DNS_ONLY},{DNS_ONLY},4433,1,2",
        f"--dns-rr={DNS_ONLY},65,{_https_hex('1 . alpn=h3 port=4433')}",
        f"--dns-rr={DNS_ONLY},64,{_https_hex(f'2 svc.{ZONE}. alpn=stoq port=7443', 'SVCB')}",
        f"--cname={ALIAS},{DNS_ONLY}",
    ]


@pytest.fixture(scope="module")
def zone_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    tmp = tmp_path_factory.mktemp("dnsmasq-zone")
    with dnsmasq(tmp, *_zone_options(tmp)) as server:
        yield server.address


@pytest.fixture(scope="module")
def refusing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A dnsmasq with no upstream and no data for the zone: it answers REFUSED."""
    with dnsmasq(tmp_path_factory.mktemp("dnsmasq-refusing"), "--local=/elsewhere.test/") as s:
        yield s.address


class DeadServer(asyncio.DatagramProtocol):
    """A bound UDP socket that reads every query and never answers."""

    def __init__(self) -> None:
        self.queries: list[dns.message.Message] = []

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.queries.append(dns.message.from_wire(data))


@contextlib.asynccontextmanager
async def dead_server() -> Any:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        DeadServer, local_addr=("127.0.0.1", 0)
    )
    try:
        host, port = transport.get_extra_info("sockname")[:2]
        yield (str(host), int(port)), protocol
    finally:
        transport.close()


def closed_port() -> tuple[str, int]:
    """A loopback UDP port nothing listens on (queries get ICMP port unreachable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return ("127.0.0.1", int(probe.getsockname()[1]))


# --- TrustChain names ----------------------------------------------------------------------------


NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def signer(pki: Pki) -> Issued:
    return pki.ca.issue("bank", "node", f"names.{ZONE}", dns_names=[f"names.{ZONE}"])


def _sign(pki: Pki, issued: Issued, record: NameRecord) -> SignedRecord:
    assert issued.key_name is not None
    key = pki.store.signing_key(issued.key_name)
    return sign_record(record, key, (issued.certificate, *issued.chain))


def _record(name: str, addresses: tuple[str, ...], **kwargs: Any) -> NameRecord:
    kwargs.setdefault("not_before", NOW - timedelta(hours=1))
    kwargs.setdefault("not_after", NOW + timedelta(hours=1))
    return NameRecord(name, node_id=bytes(range(32)), addresses=addresses, **kwargs)


@pytest.fixture(scope="module")
def record_set(pki: Pki, signer: Issued) -> RecordSet:
    records = (
        _record(BOTH, ("127.0.0.20", "::20"), ttl=120, serial=3),
        _record(
            TC_ONLY,
            ("127.0.0.21",),
            services=(ServiceEndpoint("stoq", "udp", 4433, priority=5, weight=7),),
            serial=9,
        ),
    )
    return RecordSet(
        records=tuple(_sign(pki, signer, r) for r in records),
        revocations=(),
        anchors=(pki.root.certificate,),
    )


@pytest.fixture(scope="module")
def names(record_set: RecordSet) -> RecordSetNames:
    found = RecordSetNames(record_set, origin="record set test")
    assert found.rejected == []
    return found


# --- the policy table ----------------------------------------------------------------------------

TC_BOTH = ("::20", "127.0.0.20")
DNS_BOTH = ("::10", "127.0.0.10")
DNS_DNS_ONLY = ("::11", "127.0.0.11")
TC_TC_ONLY = ("127.0.0.21",)


@dataclass(frozen=True)
class Found:
    kind: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class NotFound:
    asked: tuple[str, ...]


# policy, name -> the answer's source kind and addresses, or the sources asked before NameNotFound.
TABLE: list[tuple[Policy, str, Found | NotFound]] = [
    (Policy.TRUSTCHAIN_FIRST, BOTH, Found("trustchain", TC_BOTH)),
    (Policy.TRUSTCHAIN_FIRST, DNS_ONLY, Found("dns", DNS_DNS_ONLY)),
    (Policy.TRUSTCHAIN_FIRST, TC_ONLY, Found("trustchain", TC_TC_ONLY)),
    (Policy.TRUSTCHAIN_FIRST, NOWHERE, NotFound(("trustchain", "dns"))),
    (Policy.DNS_FIRST, BOTH, Found("dns", DNS_BOTH)),
    (Policy.DNS_FIRST, DNS_ONLY, Found("dns", DNS_DNS_ONLY)),
    (Policy.DNS_FIRST, TC_ONLY, Found("trustchain", TC_TC_ONLY)),
    (Policy.DNS_FIRST, NOWHERE, NotFound(("dns", "trustchain"))),
    (Policy.TRUSTCHAIN_ONLY, BOTH, Found("trustchain", TC_BOTH)),
    (Policy.TRUSTCHAIN_ONLY, DNS_ONLY, NotFound(("trustchain",))),
    (Policy.TRUSTCHAIN_ONLY, TC_ONLY, Found("trustchain", TC_TC_ONLY)),
    (Policy.TRUSTCHAIN_ONLY, NOWHERE, NotFound(("trustchain",))),
    (Policy.DNS_ONLY, BOTH, Found("dns", DNS_BOTH)),
    (Policy.DNS_ONLY, DNS_ONLY, Found("dns", DNS_DNS_ONLY)),
    (Policy.DNS_ONLY, TC_ONLY, NotFound(("dns",))),
    (Policy.DNS_ONLY, NOWHERE, NotFound(("dns",))),
]


@pytest.mark.parametrize(("policy", "name", "expected"), TABLE)
def test_policy_table(
    policy: Policy,
    name: str,
    expected: Found | NotFound,
    names: RecordSetNames,
    zone_server: tuple[str, int],
) -> None:
    resolver = Resolver(policy, names=names, servers=[zone_server], stagger=1.0)
    if isinstance(expected, Found):
        answer = run(resolver.resolve(name))
        assert answer.source.kind == expected.kind
        assert answer.addresses == expected.addresses
        assert answer.name == name
        assert not answer.from_cache
        if expected.kind == "trustchain":
            assert isinstance(answer.source, TrustChainSource)
            assert answer.source.origin == "record set test"
            assert answer.source.signer is not None
            assert f"names.{ZONE}" in answer.source.signer
            assert answer.source.node_id == bytes(range(32))
        else:
            assert answer.source == DnsSource(zone_server, "udp")
        # What was asked before the answer: exactly the sources ahead of the winning one.
        asked = [what.split()[0] for what, _outcome in answer.tried]
        assert asked == list(policy.order[: policy.order.index(expected.kind)])
    else:
        with pytest.raises(NameNotFound) as caught:
            run(resolver.resolve(name))
        assert caught.value.name == name
        assert tuple(what.split()[0] for what, _ in caught.value.attempts) == expected.asked
        for what, outcome in caught.value.attempts:
            assert outcome in ("no such name", "NXDOMAIN"), (what, outcome)


def test_trustchain_answer_details(names: RecordSetNames, zone_server: tuple[str, int]) -> None:
    answer = run(Resolver(Policy.TRUSTCHAIN_ONLY, names=names).resolve(TC_ONLY.upper() + "."))
    assert answer.name == TC_ONLY
    assert answer.source == TrustChainSource(
        "record set test", 9, bytes(range(32)), names.signer_of(TC_ONLY, 9)
    )
    assert answer.ttl == 300
    assert answer.services == (
        Service("srv", f"_stoq._udp.{TC_ONLY}", TC_ONLY, 4433, priority=5, weight=7),
    )
    assert "serial 9" in str(answer.source)


def test_dns_answer_services_cname_and_nodata(zone_server: tuple[str, int]) -> None:
    resolver = Resolver(Policy.DNS_ONLY, servers=[zone_server], service_grace=5.0)
    answer = run(resolver.resolve(DNS_ONLY))
    assert answer.addresses == DNS_DNS_ONLY
    assert answer.ttl == LOCAL_TTL
    assert set(answer.services) == {
        Service("srv", f"_stoq._udp.{DNS_ONLY}", DNS_ONLY, 4433, priority=1, weight=2),
        Service("https", DNS_ONLY, DNS_ONLY, 4433, priority=1, alpn=("h3",)),
        Service("svcb", DNS_ONLY, f"svc.{ZONE}", 7443, priority=2, alpn=("stoq",)),
    }
    alias = run(resolver.resolve(ALIAS))
    assert alias.addresses == DNS_DNS_ONLY
    assert alias.name == ALIAS
    short = run(resolver.resolve(f"short.{ZONE}"))
    assert short.addresses == ("127.0.0.13",)
    assert short.ttl == 30
    with pytest.raises(NameNotFound) as caught:
        run(resolver.resolve(TEXT_ONLY))
    assert caught.value.attempts == ((f"dns 127.0.0.1:{zone_server[1]}", "NODATA"),)


def test_truncated_udp_answer_is_asked_again_over_tcp(zone_server: tuple[str, int]) -> None:
    answer = run(Resolver(Policy.DNS_ONLY, servers=[zone_server]).resolve(MANY))
    assert answer.source == DnsSource(zone_server, "tcp")
    assert len(answer.addresses) == MANY_COUNT
    assert set(answer.addresses) == {f"127.0.1.{i}" for i in range(1, MANY_COUNT + 1)}


def test_no_trustchain_names_configured_skips_that_source(zone_server: tuple[str, int]) -> None:
    answer = run(Resolver(servers=[zone_server]).resolve(BOTH))
    assert answer.source.kind == "dns"
    assert answer.tried == (("trustchain", "no TrustChain names configured"),)
    with pytest.raises(ValueError, match="trustchain-only needs"):
        Resolver(Policy.TRUSTCHAIN_ONLY)


def test_name_outside_trustchain_rules_is_no_such_name(
    names: RecordSetNames, zone_server: tuple[str, int]
) -> None:
    resolver = Resolver(Policy.TRUSTCHAIN_FIRST, names=names, servers=[zone_server])
    with pytest.raises(NameNotFound) as caught:
        run(resolver.resolve(f"_stoq._udp.{TC_ONLY}"))
    what, outcome = caught.value.attempts[0]
    assert what == "trustchain record set test"
    assert outcome.startswith("no such name (not a TrustChain name")


# --- TrustChain records that stop counting ------------------------------------------------------


def test_expired_trustchain_record_falls_back_to_dns(
    record_set: RecordSet, zone_server: tuple[str, int]
) -> None:
    later = NOW + timedelta(hours=2)
    expired = RecordSetNames(record_set, origin="record set test", clock=lambda: later)
    # Verified now (clock at construction is "later": everything is expired and refused).
    assert {str(r.reason.name) for r in expired.rejected} <= {"EXPIRED", "CHAIN_REJECTED"}
    assert expired.lookup(BOTH) is None
    current = RecordSetNames(record_set, origin="record set test")
    clock = [NOW]
    current_later = RecordSetNames(record_set, origin="record set test", clock=lambda: clock[0])
    assert current_later.lookup(BOTH) == current.lookup(BOTH)
    clock[0] = later
    assert current_later.lookup(BOTH) is None  # expired after loading
    resolver = Resolver(Policy.TRUSTCHAIN_FIRST, names=current_later, servers=[zone_server])
    answer = run(resolver.resolve(BOTH))
    assert answer.source.kind == "dns"
    assert answer.addresses == DNS_BOTH
    assert answer.tried == (("trustchain record set test", "no such name"),)


def test_record_signed_outside_its_namespace_is_refused_and_dns_answers(
    pki: Pki, zone_server: tuple[str, int]
) -> None:
    outsider = pki.ca.issue("other", "node", "names.other.hypermesh")
    forged = _sign(pki, outsider, _record(BOTH, ("127.0.0.66",)))
    found = RecordSetNames(RecordSet((forged,), (), (pki.root.certificate,)), origin="forged")
    assert [r.reason.name for r in found.rejected] == ["OUTSIDE_NAMESPACE"]
    assert found.lookup(BOTH) is None
    answer = run(Resolver(names=found, servers=[zone_server]).resolve(BOTH))
    assert answer.addresses == DNS_BOTH


def test_registry_names_then_revocation_falls_back_to_dns(
    pki: Pki, signer: Issued, tmp_path: Path, zone_server: tuple[str, int]
) -> None:
    record = _record(BOTH, ("127.0.0.40",), serial=4)
    with NameRegistry.open(tmp_path / "names.db", pki.trust_store()) as registry:
        registry.add(_sign(pki, signer, record))
        names = RegistryNames(registry, origin="registry test")
        resolver = Resolver(Policy.TRUSTCHAIN_FIRST, names=names, servers=[zone_server])
        answer = run(resolver.resolve(BOTH))
        assert answer.addresses == ("127.0.0.40",)
        assert answer.source == TrustChainSource(
            "registry test", 4, record.node_id, signer.certificate.subject.rfc4514_string()
        )
        assert signer.key_name is not None
        revocation = Revocation(BOTH, 4, NOW)
        key = pki.store.signing_key(signer.key_name)
        registry.revoke(sign_revocation(revocation, key, (signer.certificate, *signer.chain)))
        answer = run(resolver.resolve(BOTH))
        assert answer.source == DnsSource(zone_server, "udp")
        assert answer.tried == (("trustchain registry test", "no such name"),)
        with pytest.raises(NameNotFound):
            run(Resolver(Policy.TRUSTCHAIN_ONLY, names=names).resolve(BOTH))


class FailingLookup:
    """A NameLookup whose storage fails, as a broken registry database would."""

    origin = "failing registry"

    def lookup(self, name: str) -> NameRecord | None:
        raise TrustChainError(f"database is locked while looking up {name}")


def test_trustchain_failure_falls_back_then_is_reported(zone_server: tuple[str, int]) -> None:
    failing: NameLookup = FailingLookup()
    answer = run(Resolver(names=failing, servers=[zone_server]).resolve(BOTH))
    assert answer.source.kind == "dns"
    assert answer.tried[0][0] == "trustchain failing registry"
    assert answer.tried[0][1].startswith("failed: database is locked")
    with pytest.raises(TrustChainLookupFailed) as caught:
        run(Resolver(Policy.TRUSTCHAIN_ONLY, names=failing).resolve(BOTH))
    assert isinstance(caught.value.__cause__, TrustChainError)


# --- server selection against real sockets -------------------------------------------------------


def test_dead_first_server_falls_over_to_the_second(zone_server: tuple[str, int]) -> None:
    async def scenario() -> tuple[Answer, list[dns.message.Message], tuple[str, int]]:
        async with dead_server() as (dead, protocol):
            resolver = Resolver(
                Policy.DNS_ONLY, servers=[dead, zone_server], stagger=0.2, timeout=10.0
            )
            answer = await resolver.resolve(BOTH)
            return answer, list(protocol.queries), dead

    answer, queries, dead = run(scenario())
    assert answer.source == DnsSource(zone_server, "udp")
    assert answer.addresses == DNS_BOTH
    # The dead server was asked first (and asked A and AAAA for the name), then left behind.
    assert answer.tried == (
        (f"dns 127.0.0.1:{dead[1]}", "no answer yet when another server answered"),
    )
    asked = {(str(q.question[0].name), q.question[0].rdtype) for q in queries}
    assert (f"{BOTH}.", dns.rdatatype.A) in asked
    assert (f"{BOTH}.", dns.rdatatype.AAAA) in asked


def test_refused_moves_on_at_once(
    zone_server: tuple[str, int], refusing_server: tuple[str, int]
) -> None:
    # The stagger is longer than the whole timeout: only "move on at once" reaches server two.
    resolver = Resolver(
        Policy.DNS_ONLY, servers=[refusing_server, zone_server], stagger=60.0, timeout=10.0
    )
    answer = run(resolver.resolve(BOTH))
    assert answer.source == DnsSource(zone_server, "udp")
    assert answer.tried == ((f"dns 127.0.0.1:{refusing_server[1]}", "A: REFUSED; AAAA: REFUSED"),)


def test_closed_port_moves_on_at_once(zone_server: tuple[str, int]) -> None:
    closed = closed_port()
    resolver = Resolver(Policy.DNS_ONLY, servers=[closed, zone_server], stagger=60.0, timeout=10.0)
    answer = run(resolver.resolve(BOTH))
    assert answer.source == DnsSource(zone_server, "udp")
    ((what, outcome),) = answer.tried
    assert what == f"dns 127.0.0.1:{closed[1]}"
    assert "refused" in outcome.lower()


def test_every_server_failing_is_dns_servers_failed(refusing_server: tuple[str, int]) -> None:
    closed = closed_port()
    resolver = Resolver(Policy.DNS_ONLY, servers=[refusing_server, closed], stagger=60.0)
    with pytest.raises(DnsServersFailed) as caught:
        run(resolver.resolve(BOTH))
    assert type(caught.value) is DnsServersFailed
    assert [what for what, _ in caught.value.attempts] == [
        f"dns 127.0.0.1:{refusing_server[1]}",
        f"dns 127.0.0.1:{closed[1]}",
    ]
    assert isinstance(caught.value, ResolutionError)


def test_all_servers_silent_is_dns_timeout_then_trustchain_answers(names: RecordSetNames) -> None:
    async def scenario() -> tuple[DnsTimeout, Answer, int]:
        async with dead_server() as (one, first), dead_server() as (two, _second):
            servers = [one, two]
            silent = Resolver(Policy.DNS_ONLY, servers=servers, stagger=0.1, timeout=0.5)
            with pytest.raises(DnsTimeout) as caught:
                await silent.resolve(BOTH)
            dns_first = Resolver(
                Policy.DNS_FIRST, names=names, servers=servers, stagger=0.1, timeout=0.5
            )
            answer = await dns_first.resolve(TC_ONLY)
            return caught.value, answer, len(first.queries)

    timeout, answer, first_queries = run(scenario())
    assert [outcome for _, outcome in timeout.attempts] == ["no answer within 0.5 s"] * 2
    assert first_queries >= 2  # A and AAAA at least
    assert answer.source.kind == "trustchain"
    assert [what.split()[0] for what, _ in answer.tried] == ["dns", "dns"]


# --- the cache in the resolver -------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_resolver_caches_answers_and_negatives(zone_server: tuple[str, int]) -> None:
    clock = FakeClock()
    cache: TtlCache[Answer | NegativeAnswer] = TtlCache(clock=clock)
    resolver = Resolver(Policy.DNS_ONLY, servers=[zone_server], cache=cache)

    async def scenario() -> None:
        first = await resolver.resolve(BOTH)
        assert not first.from_cache
        assert first.ttl == LOCAL_TTL
        clock.now += 100
        second = await resolver.resolve(BOTH)
        assert second.from_cache
        assert second.ttl == LOCAL_TTL - 100
        assert second.source == first.source
        assert second.addresses == first.addresses
        clock.now += LOCAL_TTL
        third = await resolver.resolve(BOTH)
        assert not third.from_cache

        with pytest.raises(NameNotFound):
            await resolver.resolve(NOWHERE)
        entry = cache.get(NOWHERE)
        assert entry is not None
        assert entry.negative
        assert entry.remaining == DEFAULT_NEGATIVE_TTL  # dnsmasq sends no SOA for --local
        with pytest.raises(NameNotFound) as caught:
            await resolver.resolve(NOWHERE)
        assert caught.value.attempts == ((f"dns 127.0.0.1:{zone_server[1]} (cached)", "NXDOMAIN"),)
        clock.now += DEFAULT_NEGATIVE_TTL
        assert cache.get(NOWHERE) is None

    run(scenario())


def test_trustchain_answers_are_not_cached(names: RecordSetNames) -> None:
    resolver = Resolver(Policy.TRUSTCHAIN_ONLY, names=names)
    run(resolver.resolve(BOTH))
    assert len(resolver.cache) == 0


# --- TtlCache (sans-IO) --------------------------------------------------------------------------


def test_cache_hit_expiry_caps_and_zero_ttl() -> None:
    clock = FakeClock()
    cache: TtlCache[str] = TtlCache(max_ttl=1000, max_negative_ttl=50, clock=clock)
    cache.put("a", "A", 10)
    assert cache.get("a") == CacheEntry("A", False, 10)
    clock.now += 9.5
    assert cache.get("a") == CacheEntry("A", False, 1)
    clock.now += 0.5
    assert cache.get("a") is None
    assert len(cache) == 0
    cache.put("big", "B", 10**9)
    clock.now += 999
    assert cache.get("big") == CacheEntry("B", False, 1)
    clock.now += 1
    assert cache.get("big") is None
    cache.put_negative("n", "N", 3600)
    assert cache.get("n") == CacheEntry("N", True, 50)
    cache.put("n", "P", 0)  # zero TTL: not cached, and the old entry goes
    assert cache.get("n") is None


def test_cache_lru_bound() -> None:
    clock = FakeClock()
    cache: TtlCache[int] = TtlCache(max_entries=2, clock=clock)
    cache.put("a", 1, 100)
    cache.put("b", 2, 100)
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", 3, 100)
    assert cache.get("b") is None
    assert cache.get("a") == CacheEntry(1, False, 100)
    assert cache.get("c") == CacheEntry(3, False, 100)
    assert cache.evictions == 1
    # Expired entries make room before live ones are evicted.
    cache.put("short", 4, 1)
    clock.now += 2
    cache.put("d", 5, 100)
    assert cache.get("short") is None
    assert {k for k in ("a", "c", "d") if cache.get(k) is not None} == {"c", "d"}
    with pytest.raises(ValueError, match="max_entries must be at least 1"):
        TtlCache(max_entries=0)


_keys = st.sampled_from(["a", "b", "c", "d", "e"])
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), _keys, st.integers(-5, 200)),
        st.tuples(st.just("neg"), _keys, st.integers(-5, 200)),
        st.tuples(st.just("get"), _keys, st.just(0)),
        st.tuples(st.just("tick"), st.just(""), st.integers(0, 120)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_ops)
def test_cache_matches_a_model(ops: list[tuple[str, str, int]]) -> None:
    """Against a plain model: a dict of key -> (value, negative, expires) and a use order."""
    clock = FakeClock()
    cache: TtlCache[int] = TtlCache(max_entries=3, max_ttl=100, max_negative_ttl=30, clock=clock)
    model: dict[str, tuple[int, bool, float]] = {}
    order: list[str] = []
    for step, (op, key, number) in enumerate(ops):
        if op == "tick":
            clock.now += number
            continue
        if op == "get":
            got = cache.get(key)
            live = key in model and model[key][2] > clock.now
            if not live:
                assert got is None
                model.pop(key, None)
                if key in order:
                    order.remove(key)
            else:
                value, negative, expires = model[key]
                assert got is not None
                assert (got.value, got.negative) == (value, negative)
                assert 0 < got.remaining <= (100 if not negative else 30)
                assert got.remaining - 1 < expires - clock.now <= got.remaining
                order.remove(key)
                order.append(key)
            continue
        negative = op == "neg"
        ttl = min(number, 30 if negative else 100)
        if key in order:
            order.remove(key)
        model.pop(key, None)
        if ttl <= 0:
            (cache.put_negative if negative else cache.put)(key, step, number)
            continue
        (cache.put_negative if negative else cache.put)(key, step, number)
        model[key] = (step, negative, clock.now + ttl)
        order.append(key)
        if len(order) > 3:
            for expired in [k for k in order if model[k][2] <= clock.now]:
                order.remove(expired)
                del model[expired]
            while len(order) > 3:
                del model[order.pop(0)]
    for key in ("a", "b", "c", "d", "e"):
        got = cache.get(key)
        if key in model and model[key][2] > clock.now:
            assert got is not None
            assert got.value == model[key][0]
        else:
            assert got is None
    assert len(cache) <= 3


# --- negative TTL (RFC 2308) ---------------------------------------------------------------------


def _negative_response(name: str, soas: list[tuple[int, int]]) -> dns.message.Message:
    query = dns.message.make_query(name, "A")
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.NXDOMAIN)
    for ttl, minimum in soas:
        response.authority.append(
            dns.rrset.from_text(
                ZONE, ttl, "IN", "SOA", f"ns.{ZONE}. admin.{ZONE}. 1 3600 600 86400 {minimum}"
            )
        )
    return response


@given(st.lists(st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)), max_size=3))
def test_negative_ttl_is_min_of_soa_ttl_and_minimum(soas: list[tuple[int, int]]) -> None:
    response = _negative_response(f"x.{ZONE}", soas)
    expected = min((min(t, m) for t, m in soas), default=DEFAULT_NEGATIVE_TTL)
    assert negative_ttl(response) == expected


def test_negative_ttl_examples() -> None:
    assert negative_ttl(_negative_response(f"x.{ZONE}", [(300, 60)])) == 60
    assert negative_ttl(_negative_response(f"x.{ZONE}", [(30, 600)])) == 30
    assert negative_ttl(_negative_response(f"x.{ZONE}", [])) == DEFAULT_NEGATIVE_TTL


# --- names ---------------------------------------------------------------------------------------

_label = st.from_regex(r"\A[a-z0-9_](?:[a-z0-9_-]{0,20}[a-z0-9_])?\Z")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@given(st.lists(_label, min_size=1, max_size=6), st.booleans(), st.booleans())
def test_normalize_name_is_canonical(labels: list[str], upper: bool, dot: bool) -> None:
    name = ".".join(labels)
    if _is_ip(name):  # e.g. "1.2.3.4" from digit labels
        with pytest.raises(InvalidName, match="IP address"):
            normalize_name(name)
        return
    canonical = normalize_name(name)
    assert canonical == name
    given_text = (name.upper() if upper else name) + ("." if dot else "")
    assert normalize_name(given_text) == canonical
    assert normalize_name(canonical) == canonical


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        (".", "empty"),
        ("a..b", "bad label"),
        ("-a.b", "bad label"),
        ("a-.b", "bad label"),
        ("a b.c", "bad label"),
        ("a" * 64 + ".b", "bad label"),
        (".".join(["a" * 60] * 5), "longer than 253"),
        ("bücher.de", "not ASCII"),
        ("127.0.0.1", "IP address"),
        ("::1", "IP address"),
        ("[2001:db8::1]", "IP address"),
    ],
)
def test_normalize_name_refuses(text: str, reason: str) -> None:
    with pytest.raises(InvalidName, match=reason):
        normalize_name(text)


def test_system_servers_from_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# test\nnameserver 127.0.0.53\nnameserver ::1\noptions edns0\n")
    assert system_servers(conf) == (("127.0.0.53", 53), ("::1", 53))
    empty = tmp_path / "empty.conf"
    empty.write_text("options edns0\n")
    with pytest.raises(DnsServersFailed, match="no system DNS configuration"):
        system_servers(empty)
    with pytest.raises(DnsServersFailed, match="no system DNS configuration"):
        system_servers(tmp_path / "missing.conf")


def test_invalid_name_is_refused_before_any_lookup(zone_server: tuple[str, int]) -> None:
    with pytest.raises(InvalidName):
        run(Resolver(Policy.DNS_ONLY, servers=[zone_server]).resolve("no spaces.test"))


# --- ServerSchedule (sans-IO) --------------------------------------------------------------------


def test_schedule_staggers_then_retries_with_backoff() -> None:
    schedule = ServerSchedule(3, stagger=0.3, now=0.0, max_interval=2.0)
    assert schedule.due(0.0) == 0
    assert schedule.due(0.0) is None
    assert schedule.wake_at() == pytest.approx(0.3)
    assert schedule.due(0.29) is None
    assert schedule.due(0.3) == 1
    schedule.failed(1, 0.4)  # a failure: the next server at once
    assert schedule.due(0.4) == 2
    # Round two: only the servers that have not failed, gap 2 * stagger, then doubling, capped.
    assert schedule.wake_at() == pytest.approx(1.0)
    assert schedule.due(1.0) == 0
    assert schedule.wake_at() == pytest.approx(1.6)
    assert schedule.due(1.6) == 2
    assert schedule.due(1.6 + 1.2) == 0  # round three: 4 * stagger
    assert schedule.due(2.8 + 2.0) == 2  # round four: capped at 2 s
    assert schedule.started == (0, 1, 2, 0, 2, 0, 2)
    schedule.failed(0, 5.0)
    schedule.failed(2, 5.0)
    assert schedule.exhausted
    assert schedule.due(100.0) is None
    assert schedule.wake_at() is None


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 5),
    st.lists(st.tuples(st.floats(0, 1.0), st.integers(0, 4), st.booleans()), max_size=40),
)
def test_schedule_invariants(count: int, events: list[tuple[float, int, bool]]) -> None:
    stagger = 0.25
    schedule = ServerSchedule(count, stagger=stagger, now=0.0)
    now = 0.0
    failed: set[int] = set()
    last_start: float | None = None
    last_failure = -1.0
    started: list[int] = []
    for advance, victim, fail in events:
        now += advance
        if fail and started and victim % count in started:
            schedule.failed(victim % count, now)
            failed.add(victim % count)
            last_failure = now
        while (index := schedule.due(now)) is not None:
            assert index not in failed
            if len(started) < count:
                assert index == len(started)  # round one goes in order
            # Without a failure in between, starts are at least a stagger apart.
            if last_start is not None and last_failure < last_start:
                assert now - last_start >= stagger - 1e-9
            started.append(index)
            last_start = now
    assert schedule.exhausted == (len(failed) == count)


# --- the CLI -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zone_file(record_set: RecordSet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("zone") / "names.tcns"
    path.write_bytes(encode_record_set(record_set))
    return path


def _server_arg(server: tuple[str, int]) -> str:
    return f"{server[0]}:{server[1]}"


def test_cli_text_output(
    zone_file: Path, zone_server: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["resolve", BOTH, "--server", _server_arg(zone_server), "--zone-file", str(zone_file)]
    assert stoq_main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == list(TC_BOTH)
    assert lines[2].startswith(f"source: trustchain record set {zone_file} (serial 3, signer ")
    assert len(lines) == 3
    assert stoq_main([*args, "--policy", "dns-first"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        *DNS_BOTH,
        f"source: dns {_server_arg(zone_server)} (udp)",
    ]


def test_cli_json_and_not_found(
    zone_file: Path, zone_server: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    server = _server_arg(zone_server)
    base = ["resolve", "--server", server, "--zone-file", str(zone_file), "--json"]
    assert stoq_main([*base[:1], DNS_ONLY, *base[1:]]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["addresses"] == list(DNS_DNS_ONLY)
    assert payload["source"] == {"kind": "dns", "server": server, "transport": "udp"}
    assert payload["from_cache"] is False
    assert payload["tried"] == [[f"trustchain record set {zone_file}", "no such name"]]

    assert stoq_main([*base[:1], NOWHERE, *base[1:]]) == 1
    captured = capsys.readouterr()
    failure = json.loads(captured.out)
    assert failure["error"].startswith(f"{NOWHERE}: not found")
    assert failure["attempts"] == [
        [f"trustchain record set {zone_file}", "no such name"],
        [f"dns {server}", "NXDOMAIN"],
    ]
    assert captured.err.startswith(f"stoq: {NOWHERE}: not found (tried ")


def test_cli_subprocess_default_name_and_policy_only(
    zone_file: Path, zone_server: tuple[str, int]
) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "stoq", "resolve", "--server", _server_arg(zone_server)]
    done = subprocess.run(
        [*command, TC_ONLY, "--zone-file", str(zone_file), "--policy", "trustchain-only"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "127.0.0.21"
    # The default name is the bootstrap name, which the test zone does not have.
    done = subprocess.run(
        [*command, "--policy", "dns-only"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    # dnsmasq has no upstream for names outside its zone: it refuses them.
    assert done.returncode == 1
    assert done.stderr.startswith(f"stoq: {DEFAULT_BOOTSTRAP}: no DNS server gave a usable answer")
    assert f"dns {_server_arg(zone_server)}: A: REFUSED; AAAA: REFUSED" in done.stderr


def test_cli_home_registry_and_its_export(
    tmp_path: Path,
    zone_server: tuple[str, int],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real TrustChain home made with the ``trustchain`` command line."""
    for variable in ("TRUSTCHAIN_HOME", "TRUSTCHAIN_PASSPHRASE"):
        monkeypatch.delenv(variable, raising=False)
    home = tmp_path / "home"
    prefix = tmp_path / "signer"
    name = f"home.{ZONE}"

    def trustchain(*argv: str) -> str:
        capsys.readouterr()
        status = trustchain_main(["--home", str(home), *argv])
        out, err = capsys.readouterr()
        assert status == 0, err
        return out

    trustchain("ca", "init", "--name", "root")
    trustchain("ca", "issue-intermediate", "--name", "bank", "--namespace", ZONE)
    signer_name = f"signer.{ZONE}"
    trustchain(
        "ca", "issue", "--issuer", "bank", "--kind", "node", "--name", signer_name,
        "--out", str(prefix),
    )  # fmt: skip
    trustchain("names", "add", name, "--address", "127.0.0.50", "--signer", str(prefix))
    zone = tmp_path / "exported.tcns"
    trustchain("names", "export", "--out", str(zone))

    server = _server_arg(zone_server)
    base = ["resolve", name, "--server", server, "--policy", "trustchain-only"]
    assert stoq_main([*base, "--home", str(home)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "127.0.0.50"
    registry = home / "names" / "names.db"
    assert lines[1].startswith(f"source: trustchain registry {registry} (serial 1, signer ")
    assert signer_name in lines[1]
    assert stoq_main([*base, "--zone-file", str(zone)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "127.0.0.50"

    trustchain("names", "revoke", name, "--signer", str(prefix))
    assert stoq_main([*base, "--home", str(home)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"stoq: {name}: not found (tried trustchain registry {registry}: ")
    # Under trustchain-first the revoked name falls back to DNS, which does not have it.
    assert stoq_main(["resolve", name, "--server", server, "--home", str(home)]) == 1
    assert f"dns {server}: NXDOMAIN" in capsys.readouterr().err


def test_cli_bad_server_argument(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        stoq_main(["resolve", BOTH, "--server", "not-an-ip:53"])
    assert exited.value.code == 2
    assert "bad DNS server 'not-an-ip:53'" in capsys.readouterr().err


def test_answer_to_json_round_trips_through_json(names: RecordSetNames) -> None:
    answer = run(Resolver(Policy.TRUSTCHAIN_ONLY, names=names).resolve(TC_ONLY))
    payload = json.loads(json.dumps(answer.to_json()))
    assert payload["source"]["kind"] == "trustchain"
    assert payload["source"]["serial"] == 9
    assert payload["source"]["node_id"] == bytes(range(32)).hex()
    assert payload["services"][0]["port"] == 4433
    assert replace(answer, from_cache=True).to_json()["from_cache"] is True
