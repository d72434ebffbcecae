"""DNS benchmarks: our DNS front-end's queries/s beside dnsmasq, and our resolver's cache-miss and
cache-hit latency beside dnspython's resolver, both against dnsmasq, in the same run.

    python benchmarks/dns.py [--quick] [--names N] [--seconds S] [--repeats N] [--in-flight N]
                             [--rounds N] [--update BENCHMARKS.md]

Everything is on 127.0.0.1. The zone: ``--names`` names ``n0000.bench.hypermesh``, ... each with
one IPv4 address (127.0.x.y) and one IPv6 address (fd00:db::x), TTL 300 s. For our front-end
they are TrustChain name records signed by a throwaway PKI (a key store under
``INSECURE_TEST_KDF_PARAMS`` in a temporary directory, deleted at the end; a root, the
intermediate CA ``bench`` for the namespace ``bench.hypermesh``, one signer certificate under it)
and written as one record-set file (:func:`trustchain.naming.zone.encode_record_set`, what
``trustchain names export`` writes). Two server processes:

* **ours**: ``python -m stoq dns-server --listen 127.0.0.1:0 --zone-file FILE``
  (:mod:`stoq.dns.server`, one asyncio process; it verifies every record at start-up);
* **dnsmasq** (the Debian ``dnsmasq``, C, one process): ``--no-daemon --conf-file=/dev/null
  --no-resolv --no-hosts --local=/bench.hypermesh/ --local-ttl=300`` and one
  ``--host-record=NAME,IPv4,IPv6`` per name, so it answers the zone itself, with the same TTL.

Before anything is timed, each server is asked A and AAAA for every name (dnspython,
``dns.query.udp``) and every answer must hold exactly that name's address.

**1. Front-end queries/s** (``--seconds`` per trial, ``--repeats`` trials per server, the
servers interleaved, after a 0.3 s untimed warm-up each; the median trial by answered queries/s
is reported, its whole row): the load generator (this process, one thread, one non-blocking UDP
socket connected to the server, a 2 MiB receive buffer) keeps ``--in-flight`` queries
outstanding. The queries are A queries built once per name by dnspython
(``dns.message.make_query(name, "A", use_edns=0, payload=1232)``), the names in turn; sending
one patches the 2-byte id of the pre-built wire query (the next id not outstanding) and sends
it with ``socket.send``. Each datagram received is matched by id and its question bytes to an
outstanding query (one that matches none, e.g. the late answer of a lost query, is *stale* and
ignored); it counts as *answered* if it is a response (QR), rcode NOERROR, with at least one
answer record, else as an *error*; either way a new query takes its place at once while the
window lasts. A query without a response ``QUERY_TIMEOUT`` (1 s) after it was sent is *lost*
(its slot is given to a new query); after the window the generator sends nothing more and
waits up to 1 s for the outstanding ones. Queries/s = answers received in the window /
window; loss = lost / sent; latency = ``time.perf_counter`` from the send to the receipt (p50,
p99 nearest rank, every answered query). CPU per query: the server process's user + system time
(``/proc/<pid>/stat``, all threads) over the window / answers; *busy* = CPU time / window, for
the server process and for the generator (``time.process_time``); *cores busy*: the whole
machine (``/proc/stat``). To split our server's CPU, its sans-IO core is also timed in this
process, without sockets: :meth:`stoq.dns.server.Authority.answer` (loaded by
:func:`~stoq.dns.server.load_record_set` from the same file) on the same queries in turn, and
dnspython's ``dns.message.from_wire`` of them alone (``benchlib.rate``: the median of 3 runs of
``min(0.5, --seconds)`` s each).

**2. Resolver latency** (``--rounds`` timed rounds after one untimed round; in each round every
row runs, the order rotating between rounds, with its cache emptied first; for each name in
turn one *miss* (the first lookup: a network exchange) then one *hit* (the same lookup again);
time = ``time.perf_counter`` around the awaited call, in this process's asyncio loop;
p50, p90 nearest rank over every name and round; *CPU per miss*: this process's
``time.process_time`` over every timed miss / misses). Every answer is checked: the addresses, the
source, and that a hit came from the cache (ours: ``Answer.from_cache``; dnspython:
``Cache.hits()`` grew by the number of queries). The rows:

* ours, ``Resolver(Policy.DNS_ONLY, servers=[dnsmasq])`` (:mod:`stoq.dns.resolver`, defaults):
  one exchange = A and AAAA (EDNS0, payload 1232) plus HTTPS, SVCB and SRV
  ``_stoq._udp.NAME``, five UDP queries at once, each from its own connected socket; the answer
  is ready when A and AAAA are in and the other three are answered (or 50 ms later: dnsmasq
  answers them at once, NODATA / NXDOMAIN). A hit is a lookup in its ``TtlCache``.
* ours, addresses only: the same with ``services=()`` and ``service_grace=0``: A, AAAA, HTTPS
  and SVCB are sent, the answer is ready as soon as A and AAAA are in (the other two are
  then abandoned, answered or not).
* dnspython ``dns.asyncresolver.Resolver`` (``configure=False``, ``nameservers=["127.0.0.1"]``,
  ``port`` = dnsmasq's, ``use_edns(0, 0, 1232)``, a ``dns.resolver.Cache``), three ways:
  ``resolve(name, "A")`` (one query); ``resolve(name, "A")`` and ``resolve(name, "AAAA")``
  concurrently (``asyncio.gather``: the same address queries as ours, at once); and its own
  ``resolve_name(name)`` (AAAA, then A, one after the other).
* ours, ``Resolver(Policy.TRUSTCHAIN_FIRST, names=RecordSetNames(record set))``: answered from
  the verified TrustChain records in memory (no network; these lookups are not cached, so miss
  and hit are the same path, measured twice). Building the ``RecordSetNames`` (verifying every
  record: hybrid signature, signer chain, name constraints) is timed once.

Every process is stopped at the end (SIGTERM, then SIGKILL after 10 s); the script exits 0
unless something failed, which it reports and exits non-zero (nothing is written then).

``--update FILE`` replaces the text between ``<!-- dns:begin -->`` and ``<!-- dns:end -->`` in
FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
import itertools
import math
import os
import random
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import (
    MS,
    machine,
    machine_times,
    median_by,
    ms,
    process_cpu,
    rate,
    stop_process,
    update_section,
)

# This directory holds this script, dns.py, and stoq.py (the STOQ benchmark): first on sys.path,
# they would shadow the dns (dnspython) and stoq packages. Drop it (benchlib is already imported).
_HERE = os.path.realpath(os.path.dirname(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.realpath(entry or ".") != _HERE]

import dns.asyncresolver  # noqa: E402
import dns.exception  # noqa: E402
import dns.message  # noqa: E402
import dns.name  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402
import dns.rdatatype  # noqa: E402
import dns.resolver  # noqa: E402
import dns.version  # noqa: E402

from stoq.dns.resolver import Answer, Policy, RecordSetNames, Resolver  # noqa: E402
from stoq.dns.server import load_record_set  # noqa: E402
from stoq.errors import ResolutionError  # noqa: E402
from trustchain.ca.authority import CertificateAuthority  # noqa: E402
from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KeyStore  # noqa: E402
from trustchain.naming.records import NameRecord, sign_record  # noqa: E402
from trustchain.naming.zone import RecordSet, encode_record_set, verified_names  # noqa: E402

PACKAGES = ("dnspython", "cryptography")
LOOPBACK = "127.0.0.1"
ZONE = "bench.hypermesh"
#: The TTL of every record, ours and dnsmasq's (--local-ttl).
TTL = 300
#: The EDNS0 UDP payload both our resolver and the load generator advertise.
EDNS_PAYLOAD = 1232
#: Seconds a server gets to start answering.
READY_TIMEOUT = 20.0
#: Seconds after which a query of the load generator counts as lost.
QUERY_TIMEOUT = 1.0
#: Seconds of untimed load before a server's first trial.
WARMUP = 0.3
#: The most names the address plan (127.0.x.y, x < 250) holds.
MAX_NAMES = 10_000
US = 1e6


@dataclass(frozen=True)
class Counts:
    """How much each part does."""

    names: int
    seconds: float
    repeats: int
    in_flight: int
    rounds: int


FULL = Counts(names=100, seconds=3.0, repeats=3, in_flight=32, rounds=5)
QUICK = Counts(names=20, seconds=0.5, repeats=1, in_flight=8, rounds=1)


class BenchmarkError(Exception):
    """Something the benchmark needs did not work: reported, and the script exits 1."""


# --- the zone -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Zone:
    """The names, their signed record set (also written to ``path``) and how long signing took."""

    records: tuple[NameRecord, ...]
    record_set: RecordSet
    path: Path
    sign_seconds: float

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(record.name for record in self.records)


def name_of(index: int) -> str:
    return f"n{index:04d}.{ZONE}"


def ipv4_of(index: int) -> str:
    return f"127.0.{1 + index // 250}.{1 + index % 250}"


def ipv6_of(index: int) -> str:
    return str(ipaddress.ip_address(f"fd00:db::{index + 1:x}"))


def build_zone(count: int, work: Path) -> Zone:
    """A throwaway PKI in ``work``, ``count`` records signed by a certificate of the ``bench``
    intermediate (namespace ``bench.hypermesh``), written as one record-set file."""
    store = KeyStore.open(
        work / "keys", passphrase=b"bench", kdf_params=INSECURE_TEST_KDF_PARAMS, allow_weak_kdf=True
    )
    with store:
        ca = CertificateAuthority(work / "ca", store)
        try:
            root = ca.init_root("dns-bench-root")
            ca.issue_intermediate("bench", ZONE)
            signer = ca.issue("bench", "node", f"names.{ZONE}", dns_names=[f"names.{ZONE}"])
            if signer.key_name is None:
                raise BenchmarkError("the CA issued the signer without a key-store key")
            key = store.signing_key(signer.key_name)
            chain = (signer.certificate, *signer.chain)
            now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
            records = tuple(
                NameRecord(
                    name_of(i),
                    node_id=hashlib.sha256(name_of(i).encode()).digest(),
                    addresses=(ipv4_of(i), ipv6_of(i)),
                    ttl=TTL,
                    not_before=now - datetime.timedelta(hours=1),
                    not_after=now + datetime.timedelta(days=1),
                )
                for i in range(count)
            )
            started = time.perf_counter()
            signed = tuple(sign_record(record, key, chain) for record in records)
            sign_seconds = time.perf_counter() - started
        finally:
            ca.close()
    record_set = RecordSet(records=signed, revocations=(), anchors=(root.certificate,))
    names, rejected = verified_names(record_set)
    if rejected or len(names) != count:
        raise BenchmarkError(f"the signed zone does not verify: {[str(r) for r in rejected][:3]}")
    path = work / "zone.tcns"
    path.write_bytes(encode_record_set(record_set))
    return Zone(records, record_set, path, sign_seconds)


# --- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq serves both on one port)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((LOOPBACK, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((LOOPBACK, port))
                except OSError:
                    continue
                return port
    raise BenchmarkError("no port free for both UDP and TCP on 127.0.0.1")


@dataclass(frozen=True)
class Server:
    """A running DNS server: what it is, where it listens, its process, how long it took to
    answer after it was spawned."""

    name: str
    address: tuple[str, int]
    process: subprocess.Popen[Any]
    ready: float


@contextlib.contextmanager
def our_server(zone: Zone, work: Path) -> Iterator[Server]:
    """``python -m stoq dns-server`` serving the zone's record-set file on 127.0.0.1."""
    log_path = work / "stoq-dns-server.log"
    started = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "stoq", "dns-server"),
                *("--listen", f"{LOOPBACK}:0", "--zone-file", str(zone.path)),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().split()
        ready = time.perf_counter() - started
        if len(line) != 2 or line[0] != "listening":
            message = log_path.read_text(errors="replace").strip()
            raise BenchmarkError(f"stoq dns-server said {line!r}: {message}")
        host, port = line[1].rsplit(":", 1)
        yield Server("ours (`stoq dns-server`)", (host, int(port)), process, ready)
    finally:
        stop_process(process, "stoq dns-server")
        errors = log_path.read_text(errors="replace").strip()
        if process.returncode != 0:
            raise BenchmarkError(f"stoq dns-server exited with {process.returncode}: {errors}")
        if "refused" in errors:
            raise BenchmarkError(f"stoq dns-server refused records: {errors}")


def dnsmasq_version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    words = done.stdout.split()
    # "Dnsmasq version 2.90  Copyright ..."
    return f"dnsmasq {words[2]}" if len(words) > 2 and words[1] == "version" else "dnsmasq"


def dnsmasq_options(zone: Zone) -> list[str]:
    return [
        "--no-daemon",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--pid-file=",
        f"--listen-address={LOOPBACK}",
        "--bind-interfaces",
        f"--local=/{ZONE}/",
        f"--local-ttl={TTL}",
        *(f"--host-record={r.name},{','.join(r.addresses)}" for r in zone.records),
    ]


@contextlib.contextmanager
def dnsmasq(binary: str, zone: Zone, work: Path) -> Iterator[Server]:
    """dnsmasq on a free loopback port, answering the zone's names itself."""
    version = dnsmasq_version(binary)
    for attempt in range(5):
        port = free_port()
        log_path = work / f"dnsmasq-{attempt}.log"
        started = time.perf_counter()
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [binary, f"--port={port}", *dnsmasq_options(zone)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            if wait_answering(process, (LOOPBACK, port), zone.names[0]):
                ready = time.perf_counter() - started
                yield Server(version, (LOOPBACK, port), process, ready)
                return
        finally:
            stop_process(process, "dnsmasq")
    raise BenchmarkError(f"dnsmasq did not start: {log_path.read_text(errors='replace')}")


def wait_answering(process: subprocess.Popen[Any], address: tuple[str, int], name: str) -> bool:
    """True once the server answers an A query for ``name``; False if it exited (the port was
    taken between our probe and its bind)."""
    query = dns.message.make_query(name, "A")
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            dns.query.udp(query, address[0], port=address[1], timeout=0.1)
        except (dns.exception.Timeout, OSError):
            time.sleep(0.02)
            continue
        return True
    raise BenchmarkError(f"nothing answered on {address[0]}:{address[1]} in {READY_TIMEOUT:g} s")


def check_answers(server: Server, zone: Zone) -> None:
    """Ask ``server`` A and AAAA for every name: each answer must be exactly its address."""
    host, port = server.address
    for index, name in enumerate(zone.names):
        for rdtype, expected in (("A", ipv4_of(index)), ("AAAA", ipv6_of(index))):
            query = dns.message.make_query(name, rdtype)
            response = dns.query.udp(query, host, port=port, timeout=2.0)
            got = {
                str(ipaddress.ip_address(rdata.to_text()))
                for rrset in response.answer
                if rrset.rdtype == dns.rdatatype.from_text(rdtype)
                for rdata in rrset
            }
            if response.rcode() != dns.rcode.NOERROR or got != {expected}:
                raise BenchmarkError(
                    f"{server.name} answered {name} {rdtype} with "
                    f"{dns.rcode.to_text(response.rcode())} {sorted(got)}, not {expected}"
                )


# --- 1. front-end queries/s ---------------------------------------------------------------------


@dataclass(frozen=True)
class Percentiles:
    """Nearest-rank percentiles of ``n`` samples, in seconds."""

    p50: float
    p90: float
    p99: float
    n: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Percentiles:
        if not seconds:
            raise BenchmarkError("no samples")
        ordered = sorted(seconds)

        def rank(q: float) -> float:
            return ordered[max(1, math.ceil(q * len(ordered))) - 1]

        return cls(rank(0.5), rank(0.9), rank(0.99), len(ordered))


@dataclass(frozen=True)
class Trial:
    """One load trial against one server."""

    server: str
    window: float
    in_flight: int
    sent: int  # queries sent in the window
    in_window: int  # good answers received in the window
    answered: int  # good answers to queries sent in the window (the drain included)
    lost: int  # no response within QUERY_TIMEOUT
    errors: int  # responses that were not NOERROR with an answer
    stale: int  # responses to queries already counted lost
    latency: Percentiles
    server_cpu: float
    client_cpu: float
    machine_busy: float  # cores busy, all processes

    @property
    def qps(self) -> float:
        return self.in_window / self.window

    @property
    def loss(self) -> float:
        return self.lost / max(1, self.sent)

    @property
    def server_us(self) -> float:
        return self.server_cpu / max(1, self.in_window) * US

    @property
    def client_us(self) -> float:
        return self.client_cpu / max(1, self.in_window) * US

    @property
    def server_busy(self) -> float:
        return self.server_cpu / self.window

    @property
    def client_busy(self) -> float:
        return self.client_cpu / self.window


@dataclass(frozen=True)
class Query:
    """A pre-built wire query: everything after the id, and its question section."""

    tail: bytes
    question: bytes


def wire_queries(names: Sequence[str]) -> list[Query]:
    queries = []
    for name in names:
        wire = dns.message.make_query(name, "A", use_edns=0, payload=EDNS_PAYLOAD).to_wire()
        qname = dns.name.from_text(name).to_wire()
        assert qname is not None
        queries.append(Query(wire[2:], wire[12 : 12 + len(qname) + 4]))
    return queries


_IDS = [index.to_bytes(2, "big") for index in range(65536)]


def offer_load(server: Server, queries: Sequence[Query], seconds: float, in_flight: int) -> Trial:
    """Keep ``in_flight`` queries outstanding at ``server`` for ``seconds``; see the module doc."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        sock.bind((LOOPBACK, 0))
        sock.connect(server.address)
        sock.setblocking(False)
        return _offer_load(sock, server, queries, seconds, in_flight)
    finally:
        sock.close()


def _offer_load(
    sock: socket.socket,
    server: Server,
    queries: Sequence[Query],
    seconds: float,
    in_flight: int,
) -> Trial:
    clock = time.perf_counter
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    pending: dict[int, tuple[float, int]] = {}  # id -> (sent at, query index)
    order: deque[tuple[float, int]] = deque()  # (sent at, id), in sending order
    latencies: list[float] = []
    count = len(queries)
    tails = [q.tail for q in queries]
    questions = [(q.question, 12 + len(q.question)) for q in queries]
    state = {"id": random.randrange(65536), "query": 0, "sent": 0}
    sent = in_window = answered = lost = errors = stale = 0
    sending = True

    def send(now: float) -> bool:
        qid = state["id"]
        while qid in pending:
            qid = (qid + 1) & 0xFFFF
        index = state["query"]
        try:
            sock.send(_IDS[qid] + tails[index])
        except BlockingIOError:
            return False
        pending[qid] = (now, index)
        order.append((now, qid))
        state["id"] = (qid + 1) & 0xFFFF
        state["query"] = (index + 1) % count
        state["sent"] += 1
        return True

    server_start = process_cpu(server.process.pid)
    client_start = time.process_time()
    busy_start, total_start = machine_times()
    start = clock()
    end = start + seconds
    drain_end = end + QUERY_TIMEOUT
    server_cpu = client_cpu = machine_busy = 0.0
    now = start
    while True:
        if sending and now >= end:
            sending = False
            server_cpu = process_cpu(server.process.pid) - server_start
            client_cpu = time.process_time() - client_start
            busy_end, total_end = machine_times()
            machine_busy = (busy_end - busy_start) / max(1e-9, total_end - total_start)
            machine_busy *= os.cpu_count() or 1
            sent = state["sent"]
        if not sending and (not pending or now >= drain_end):
            break
        limit = now - QUERY_TIMEOUT
        while order and order[0][0] <= limit:
            at, qid = order.popleft()
            entry = pending.get(qid)
            if entry is not None and entry[0] == at:
                del pending[qid]
                lost += 1
        if sending:
            while len(pending) < in_flight and send(now):
                pass
        wait = (end if sending else drain_end) - now
        if order:
            wait = min(wait, order[0][0] + QUERY_TIMEOUT - now)
        poller.poll(max(0, math.ceil(wait * MS)))
        while True:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                break
            except ConnectionRefusedError as exc:
                raise BenchmarkError(f"{server.name} stopped listening: {exc}") from exc
            now = clock()
            if len(data) < 12:
                errors += 1
                continue
            qid = (data[0] << 8) | data[1]
            entry = pending.get(qid)
            if entry is None:
                stale += 1
                continue
            question, question_end = questions[entry[1]]
            if data[12:question_end] != question:
                stale += 1  # an answer to an earlier query that had this id and was lost
                continue
            del pending[qid]
            if data[2] & 0x80 and data[3] & 0x0F == 0 and (data[6] or data[7]):
                answered += 1
                latencies.append(now - entry[0])
                if now < end:
                    in_window += 1
            else:
                errors += 1
            if sending and now < end:
                send(now)
        now = clock()
    lost += len(pending)
    return Trial(
        server=server.name,
        window=seconds,
        in_flight=in_flight,
        sent=sent,
        in_window=in_window,
        answered=answered,
        lost=lost,
        errors=errors,
        stale=stale,
        latency=Percentiles.of(latencies),
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        machine_busy=machine_busy,
    )


def bench_front_end(servers: Sequence[Server], zone: Zone, counts: Counts) -> list[list[Trial]]:
    queries = wire_queries(zone.names)
    for server in servers:
        offer_load(server, queries, WARMUP, counts.in_flight)
    trials: list[list[Trial]] = [[] for _ in servers]
    for repeat in range(counts.repeats):
        for index, server in enumerate(servers):
            trial = offer_load(server, queries, counts.seconds, counts.in_flight)
            trials[index].append(trial)
            print(
                f"queries/s: {server.name} trial {repeat + 1}: {trial.qps:,.0f}/s, "
                f"{trial.lost} lost, {trial.errors} errors",
                flush=True,
            )
    return trials


@dataclass(frozen=True)
class CoreCost:
    """Seconds per query of our server's sans-IO core, in this process, without sockets."""

    answer: float  # Authority.answer as the server calls it: a repeat is served from its cache
    built: float  # Authority.answer with `now` given: no cache, parse, decide, build, encode
    parse: float  # dns.message.from_wire of the query alone


def core_cost(zone: Zone, counts: Counts) -> CoreCost:
    """Time :meth:`stoq.dns.server.Authority.answer` on the load generator's queries (loaded
    from the same record-set file as the server), and dnspython's parse of them alone."""
    loaded = load_record_set(zone.path)
    if loaded.refused:
        raise BenchmarkError(f"load_record_set refused records: {loaded.refused[:3]}")
    authority = loaded.authority
    wires = [
        dns.message.make_query(name, "A", use_edns=0, payload=EDNS_PAYLOAD).to_wire()
        for name in zone.names
    ]
    reply = authority.answer(wires[0], transport="udp")
    if reply is None or dns.message.from_wire(reply).rcode() != dns.rcode.NOERROR:
        raise BenchmarkError("Authority.answer did not answer the first name NOERROR")
    queries = itertools.cycle(wires)
    seconds = min(0.5, counts.seconds)
    answers = rate(lambda: authority.answer(next(queries), transport="udp"), seconds, 3)
    now = datetime.datetime.now(datetime.UTC)
    built = rate(lambda: authority.answer(next(queries), transport="udp", now=now), seconds, 3)
    parses = rate(lambda: dns.message.from_wire(next(queries)), seconds, 3)
    return CoreCost(1 / answers, 1 / built, 1 / parses)


def median_trial(trials: Sequence[Trial]) -> Trial:
    return median_by(trials, lambda t: t.qps)


# --- 2. resolver latency ------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyRow:
    label: str
    queries: str  # what one miss asks
    miss: Percentiles
    hit: Percentiles
    miss_cpu: float  # this process's CPU seconds over every timed miss
    miss_wall: float  # the wall seconds of every timed miss

    @property
    def miss_cpu_mean(self) -> float:
        return self.miss_cpu / self.miss.n

    @property
    def miss_busy(self) -> float:
        return self.miss_cpu / self.miss_wall


Lookup = Callable[[int, bool], Awaitable[None]]


@dataclass(frozen=True)
class Contender:
    """One resolver row: ``lookup(index, hit)`` resolves name ``index`` and checks the answer
    (``hit``: it must come from the cache); ``forget()`` empties the cache."""

    label: str
    queries: str
    lookup: Lookup
    forget: Callable[[], None]


def expected_addresses(index: int) -> tuple[str, ...]:
    return (ipv6_of(index), ipv4_of(index))  # IPv6 first: the resolver's order


def ours_dns(label: str, queries: str, server: Server, zone: Zone, **options: Any) -> Contender:
    resolver = Resolver(Policy.DNS_ONLY, servers=[server.address], **options)

    async def lookup(index: int, hit: bool) -> None:
        answer = await resolver.resolve(zone.names[index])
        check_ours(label, answer, index, "dns", hit)

    return Contender(label, queries, lookup, resolver.cache.clear)


def check_ours(label: str, answer: Answer, index: int, kind: str, hit: bool) -> None:
    if answer.addresses != expected_addresses(index) or answer.source.kind != kind:
        raise BenchmarkError(
            f"{label}: {answer.name} resolved to {answer.addresses} from {answer.source}"
        )
    if answer.from_cache != hit:
        raise BenchmarkError(f"{label}: {answer.name}: from_cache is {answer.from_cache}")


def ours_trustchain(server: Server, names: RecordSetNames, zone: Zone) -> Contender:
    label = "ours, `trustchain-first`, from a `RecordSetNames`"
    resolver = Resolver(Policy.TRUSTCHAIN_FIRST, names=names, servers=[server.address])

    async def lookup(index: int, hit: bool) -> None:
        answer = await resolver.resolve(zone.names[index])
        check_ours(label, answer, index, "trustchain", False)

    return Contender(
        label,
        "none: the verified records in memory (not cached; the repeat is the same path)",
        lookup,
        resolver.cache.clear,
    )


def dnspython_resolver(server: Server) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [server.address[0]]
    resolver.port = server.address[1]
    resolver.use_edns(0, 0, EDNS_PAYLOAD)
    resolver.cache = dns.resolver.Cache()
    return resolver


def dnspython_rows(server: Server, zone: Zone) -> list[Contender]:
    version = dns.version.version
    rows = []

    def contender(
        label: str,
        queries: str,
        ask: Callable[[dns.asyncresolver.Resolver, dns.name.Name], Awaitable[set[str]]],
        types: int,
    ) -> None:
        """A row whose lookup asks ``types`` record types (1: A only; 2: A and AAAA)."""
        resolver = dnspython_resolver(server)
        cache = resolver.cache
        assert isinstance(cache, dns.resolver.Cache)

        async def lookup(index: int, hit: bool) -> None:
            qname = dns.name.from_text(zone.names[index])
            expected = {ipv4_of(index)} if types == 1 else {ipv4_of(index), ipv6_of(index)}
            hits = cache.hits()
            got = await ask(resolver, qname)
            grew = cache.hits() - hits
            if got != expected:
                raise BenchmarkError(f"{label}: {qname} resolved to {sorted(got)}")
            if grew != (types if hit else 0):
                raise BenchmarkError(f"{label}: {qname}: {grew} cache hits (a hit: {hit})")

        rows.append(Contender(label, queries, lookup, cache.flush))

    async def a_only(resolver: dns.asyncresolver.Resolver, qname: dns.name.Name) -> set[str]:
        answer = await resolver.resolve(qname, "A")
        return {rdata.to_text() for rdata in answer}

    async def a_and_aaaa(resolver: dns.asyncresolver.Resolver, qname: dns.name.Name) -> set[str]:
        answers = await asyncio.gather(
            resolver.resolve(qname, "A"), resolver.resolve(qname, "AAAA")
        )
        return {str(ipaddress.ip_address(rdata.to_text())) for a in answers for rdata in a}

    async def resolve_name(resolver: dns.asyncresolver.Resolver, qname: dns.name.Name) -> set[str]:
        answers = await resolver.resolve_name(qname)
        return {str(ipaddress.ip_address(address)) for address in answers.addresses()}

    contender(f'dnspython {version} `resolve(name, "A")`', "A", a_only, 1)
    contender(
        f"dnspython {version} `resolve` A and AAAA, concurrently",
        "A, AAAA (at once, each its own socket)",
        a_and_aaaa,
        2,
    )
    contender(
        f"dnspython {version} `resolve_name(name)`",
        "AAAA, then A (one after the other)",
        resolve_name,
        2,
    )
    return rows


async def bench_resolvers(
    server: Server, zone: Zone, counts: Counts
) -> tuple[list[LatencyRow], float]:
    """The resolver rows against ``server`` (dnsmasq), and the seconds RecordSetNames took to
    verify the record set."""
    started = time.perf_counter()
    names = RecordSetNames(zone.record_set, origin="record set")
    verify_seconds = time.perf_counter() - started
    if names.rejected or len(names.records) != len(zone.records):
        raise BenchmarkError(f"RecordSetNames refused records: {names.rejected[:3]}")
    contenders = [
        ours_dns(
            "ours, `dns-only` (defaults)",
            "A, AAAA, HTTPS, SVCB, SRV `_stoq._udp` (at once, each its own socket)",
            server,
            zone,
        ),
        ours_dns(
            "ours, `dns-only`, addresses only (`services=()`, `service_grace=0`)",
            "A, AAAA, HTTPS, SVCB (at once; ready when A and AAAA are in)",
            server,
            zone,
            services=(),
            service_grace=0,
        ),
        *dnspython_rows(server, zone),
        ours_trustchain(server, names, zone),
    ]
    misses: list[list[float]] = [[] for _ in contenders]
    hits: list[list[float]] = [[] for _ in contenders]
    miss_cpu = [0.0 for _ in contenders]
    clock = time.perf_counter
    cpu = time.process_time
    for round_ in range(1 + counts.rounds):  # round 0 is the untimed warm-up
        shift = round_ % len(contenders)
        for position in range(len(contenders)):
            row = (position + shift) % len(contenders)
            contender = contenders[row]
            contender.forget()
            for index in range(len(zone.names)):
                try:
                    cpu_start = cpu()
                    start = clock()
                    await contender.lookup(index, False)
                    middle = clock()
                    cpu_middle = cpu()
                    await contender.lookup(index, True)
                    end = clock()
                except (ResolutionError, dns.exception.DNSException) as exc:
                    raise BenchmarkError(
                        f"{contender.label}: {zone.names[index]}: {type(exc).__name__}: {exc}"
                    ) from exc
                if round_ > 0:
                    misses[row].append(middle - start)
                    miss_cpu[row] += cpu_middle - cpu_start
                    hits[row].append(end - middle)
        if round_ > 0:
            print(f"resolvers: round {round_} of {counts.rounds} done", flush=True)
    rows = [
        LatencyRow(
            c.label,
            c.queries,
            Percentiles.of(misses[i]),
            Percentiles.of(hits[i]),
            miss_cpu[i],
            sum(misses[i]),
        )
        for i, c in enumerate(contenders)
    ]
    return rows, verify_seconds


# --- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    zone_names: int
    sign_seconds: float
    verify_seconds: float
    servers: tuple[Server, ...]
    trials: list[list[Trial]]
    core: CoreCost
    resolvers: list[LatencyRow]


def run(counts: Counts, binary: str, work: Path) -> Run:
    print(f"signing {counts.names} name records", flush=True)
    zone = build_zone(counts.names, work)
    with our_server(zone, work) as ours, dnsmasq(binary, zone, work) as theirs:
        servers = (ours, theirs)
        for server in servers:
            check_answers(server, zone)
        trials = bench_front_end(servers, zone, counts)
        core = core_cost(zone, counts)
        resolvers, verify_seconds = asyncio.run(bench_resolvers(theirs, zone, counts))
    return Run(counts.names, zone.sign_seconds, verify_seconds, servers, trials, core, resolvers)


# --- the section --------------------------------------------------------------------------------


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def us(seconds: float) -> str:
    micros = seconds * US
    return f"{micros:,.0f}" if micros >= 100 else f"{micros:.1f}"


def front_end_rows(result: Run) -> list[str]:
    rows = [
        "| server (own process, 127.0.0.1) | in flight | **answered queries/s** | sent | lost "
        "(timeouts) | errors | latency p50 (ms) | latency p99 (ms) | server CPU (µs/query) | "
        "server busy (of one core) | generator busy (of one core) | cores busy (all "
        "processes) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for trials in result.trials:
        t = median_trial(trials)
        rows.append(
            f"| {t.server} | {t.in_flight} | **{t.qps:,.0f}** | {t.sent:,} | {t.lost:,} "
            f"({t.loss:.2%}) | {t.errors} | {ms(t.latency.p50 * MS)} | {ms(t.latency.p99 * MS)} "
            f"| {t.server_us:.1f} | {t.server_busy:.0%} | {t.client_busy:.0%} | "
            f"{t.machine_busy:.2f} |"
        )
    return rows


def resolver_rows(result: Run) -> list[str]:
    rows = [
        "| resolver (this process, asyncio) | a miss asks dnsmasq | lookups | **miss p50 (µs)** "
        "| miss p90 (µs) | CPU per miss, mean (µs) | **hit p50 (µs)** | hit p90 (µs) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result.resolvers:
        rows.append(
            f"| {row.label} | {row.queries} | {row.miss.n:,} | **{us(row.miss.p50)}** | "
            f"{us(row.miss.p90)} | {us(row.miss_cpu_mean)} | **{us(row.hit.p50)}** | "
            f"{us(row.hit.p90)} |"
        )
    return rows


def _others(t: Trial) -> float:
    """Cores other processes kept busy during the trial."""
    return max(0.0, t.machine_busy - t.server_busy - t.client_busy)


def _bound(t: Trial) -> str:
    cores = os.cpu_count() or 1
    free = cores - _others(t)
    if free < cores - 0.2 and t.server_busy + t.client_busy >= 0.85 * free:
        return (
            f"the CPU left to it: other processes kept {_others(t):.2f} of the {cores} cores "
            f"busy, and the server ({t.server_busy:.0%} of a core) and the generator "
            f"({t.client_busy:.0%}) shared the rest"
        )
    if t.server_busy >= 0.85 and t.client_busy >= 0.85:
        return (
            f"both processes: the server had {t.server_busy:.0%} of a core and the load "
            f"generator {t.client_busy:.0%}: each had a core of its own and filled it"
        )
    if t.server_busy >= 0.85:
        return f"the server (its one thread had {t.server_busy:.0%} of a core)"
    if t.client_busy >= 0.85:
        return (
            f"the load generator ({t.client_busy:.0%} of a core; the server was "
            f"{t.server_busy:.0%} busy)"
        )
    return (
        f"neither process alone (server {t.server_busy:.0%}, generator {t.client_busy:.0%} of "
        f"a core): the round trips through the kernel and the scheduler with {t.in_flight} "
        "queries in flight"
    )


def front_end_bound(result: Run) -> str:
    ours = median_trial(result.trials[0])
    theirs = median_trial(result.trials[1])
    core = result.core
    cores = os.cpu_count() or 1
    text = (
        f"**What bounds the queries/s: for ours, {_bound(ours)}; for dnsmasq, "
        f"{_bound(theirs)}.** Per answered query our server spent {ours.server_us:.1f} µs of "
        f"CPU and dnsmasq's C {theirs.server_us:.1f} µs (ours costs "
        f"{ours.server_us / theirs.server_us:.1f}x as much; both include the kernel's UDP "
        f"work), so one core answers at most about {US / ours.server_us:,.0f} queries/s "
        f"through ours and {US / theirs.server_us:,.0f} through dnsmasq. The 100 names repeat, "
        "so after the first second nearly every query of ours is a repeat of one answered "
        "within the last second, which the server's sans-IO core serves again from its "
        "answer cache (`stoq.dns.server.ANSWER_CACHE_SECONDS`) with the query's own id: "
        f"`Authority.answer` on the same queries in this process, no sockets, takes "
        f"{core.answer * US:.1f} µs ({core.answer * US / ours.server_us:.0%} of the server's "
        f"CPU per query); building an answer afresh (`now` given, which bypasses the cache) "
        f"takes {core.built * US:.1f} µs, of which {core.parse * US:.1f} µs is dnspython's "
        "`from_wire` of the query and the rest dnspython building and encoding the response. "
        "So a server whose queries rarely repeat within a second answers about "
        f"{US / (ours.server_us - core.answer * US + core.built * US):,.0f} queries/s on one "
        "core (the cache saving taken back out); the rest of the server's CPU is the asyncio "
        "shell and the kernel's `recvfrom` / `sendto`. The load generator spent "
        f"{ours.client_us:.1f} µs per query against ours and {theirs.client_us:.1f} µs "
        f"against dnsmasq, a ceiling of about {US / theirs.client_us:,.0f} queries/s from its "
        "one Python thread"
    )
    if theirs.client_busy >= 0.85:
        text += (
            "; against dnsmasq the generator filled its core too, so dnsmasq's figure is a "
            f"floor on what it can do, not its ceiling (with {cores} cores there is none "
            "left for a second generator)."
        )
    elif theirs.machine_busy >= 0.85 * cores:
        text += (
            f"; the {cores} cores were full during dnsmasq's trial, so its figure is a floor "
            "on what it can do, not its ceiling."
        )
    else:
        text += "."
    others = max(_others(ours), _others(theirs))
    if others >= 0.2:
        text += (
            f" Other processes on the machine kept up to {others:.2f} cores busy during these "
            "trials (the *cores busy* column less the server and the generator): on an idle "
            "machine the figures would be somewhat higher."
        )
    text += (
        f" Latency follows from the load: with {ours.in_flight} queries always outstanding, "
        f"the mean latency is {ours.in_flight} / (queries/s) (Little's law: "
        f"{ms(ours.in_flight / ours.qps * MS)} ms for ours, "
        f"{ms(theirs.in_flight / theirs.qps * MS)} ms for dnsmasq): it measures queueing, not "
        "one query's cost."
    )
    return text


def resolver_bound(result: Run) -> str:
    ours, lean, dnspython_a, dnspython_both, dnspython_name, trustchain = result.resolvers
    per_record = result.verify_seconds / result.zone_names * MS
    ours_per_query = ours.miss_cpu_mean / 5  # A, AAAA, HTTPS, SVCB, SRV
    theirs_per_query = dnspython_both.miss_cpu_mean / 2  # A, AAAA
    if ours_per_query <= 1.25 * theirs_per_query:
        per_query = "the gap is the number of queries, not what each costs"
    else:
        per_query = (
            f"ours also costs {ours_per_query / theirs_per_query:.1f}x as much per query, "
            "besides asking more"
        )
    if min(ours.miss_busy, dnspython_both.miss_busy) >= 0.8:
        bound = "On loopback a miss is bound by the resolver's own CPU, not by waiting."
    else:
        bound = "A miss is partly waiting for dnsmasq and the kernel, partly the resolver's CPU."
    return (
        f"**A miss costs ours {us(ours.miss.p50)} µs (p50), against "
        f"{us(dnspython_both.miss.p50)} µs for dnspython asking A and AAAA at once "
        f"({ours.miss.p50 / dnspython_both.miss.p50:.1f}x), {us(dnspython_a.miss.p50)} µs for "
        f"its single A query and {us(dnspython_name.miss.p50)} µs for its sequential "
        f"`resolve_name`.** {bound} This process was on the CPU for "
        f"{ours.miss_busy:.0%} of ours' miss time and "
        f"{dnspython_both.miss_busy:.0%} of dnspython's (A and AAAA): {us(ours.miss_cpu_mean)} "
        f"against {us(dnspython_both.miss_cpu_mean)} µs of CPU per miss, for five queries "
        "against two (each a message built, a fresh socket, a send, an answer parsed, the "
        f"asyncio task around it): {us(ours_per_query)} µs of CPU per query for ours and "
        f"{us(theirs_per_query)} µs for dnspython, so {per_query}. Sending no SRV query and "
        "waiting for neither HTTPS nor SVCB (`services=()`, `service_grace=0`; HTTPS and SVCB "
        f"are still sent) brings ours to {us(lean.miss.p50)} µs: waiting for the service "
        f"records costs {us(ours.miss.p50 - lean.miss.p50)} µs of a miss. "
        f"**A hit costs ours {us(ours.hit.p50)} µs and dnspython "
        f"{us(dnspython_a.hit.p50)} µs (A), {us(dnspython_both.hit.p50)} µs (A and AAAA, "
        f"two tasks) and {us(dnspython_name.hit.p50)} µs (`resolve_name`):** no network, "
        "only the cache lookup and the answer objects. **The TrustChain path answers in "
        f"{us(trustchain.miss.p50)} µs (p50)** with no network, from records verified once: "
        f"building the `RecordSetNames` verified the {result.zone_names} signed records in "
        f"{result.verify_seconds * MS:,.0f} ms ({per_record:.2f} ms per record: the hybrid "
        "signature, the signer's chain and its name constraints), a cost paid at load, not "
        "per lookup."
    )


def markdown(
    result: Run,
    *,
    command: str,
    load: tuple[float, float],
    elapsed: float,
    counts: Counts,
) -> str:
    ours, theirs = result.servers
    header = (
        "### DNS front-end and resolver (`benchmarks/dns.py`)\n\n"
        f"Command: `nox -s bench -- dns` (runs `{command} --update BENCHMARKS.md`). Measured "
        f"{datetime.date.today().isoformat()} on: {machine(PACKAGES)}. 1-minute load average "
        f"{load[0]:.2f} at the start and {load[1]:.2f} at the end of the {elapsed:.0f} s run "
        f"({os.cpu_count()} CPUs). Peer: {theirs.name} (C, one process; `--no-resolv "
        f"--no-hosts --local=/{ZONE}/ --local-ttl={TTL}`, one `--host-record` per name), beside "
        "our `python -m stoq dns-server --zone-file FILE` (one asyncio process), in the same "
        "run, each in its own process on 127.0.0.1."
    )
    zone_text = (
        f"The zone: {result.zone_names} names `nNNNN.{ZONE}`, each with one IPv4 and one IPv6 "
        f"address, TTL {TTL} s. For ours they are TrustChain name records signed by a throwaway "
        f"PKI (root → intermediate `bench` for `{ZONE}` → signer; signing took "
        f"{result.sign_seconds / result.zone_names * MS:.2f} ms per record) and exported as one "
        f"record-set file; our server verified them at start-up and answered "
        f"{ours.ready:.2f} s after it was spawned (interpreter, imports, verification). Before "
        "anything is timed, every name's A and AAAA answer is checked on both servers."
    )
    load_text = (
        f"Queries/s: one load generator (this process, one Python thread, one connected UDP "
        f"socket) keeps {counts.in_flight} A queries outstanding (dnspython-built, EDNS0, one "
        "pre-built wire query per name with only its id patched, the names in turn) for "
        f"{counts.seconds:g} s; every response is matched by id and question and must be NOERROR "
        f"with an answer. A query unanswered after {QUERY_TIMEOUT:g} s is lost. Median of "
        f"{plural(counts.repeats, 'interleaved trial')} per server by answered queries/s "
        "(the whole row is that trial's); latency p50 / p99 nearest rank over every answered "
        "query; CPU from `/proc/<pid>/stat` (server) and `time.process_time` (generator) "
        "over the window."
    )
    resolver_text = (
        f"Resolver latency, against dnsmasq: for each of the {result.zone_names} names a *miss* "
        "(the first lookup, an empty cache) then a *hit* (the same lookup again), timed with "
        f"`time.perf_counter` around the awaited call in this process's asyncio loop; "
        f"{plural(counts.rounds, 'round')} after an untimed one, each row's cache emptied per "
        "round, the rows' order rotating; p50 / p90 nearest rank. Every answer is checked "
        "(addresses, source; a hit must come from the cache: ours `Answer.from_cache`, dnspython "
        "`Cache.hits()`). Ours asks A and AAAA with EDNS0 (payload 1232); dnspython is set to "
        "the same (`use_edns(0, 0, 1232)`), with `configure=False`, dnsmasq as its one "
        "nameserver and a `dns.resolver.Cache`."
    )
    return "\n\n".join(
        [
            header,
            zone_text,
            load_text,
            "\n".join(front_end_rows(result)),
            front_end_bound(result),
            resolver_text,
            "\n".join(resolver_rows(result)),
            resolver_bound(result),
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows, few names")
    parser.add_argument("--names", type=int, help="names in the zone")
    parser.add_argument("--seconds", type=float, help="load window per trial")
    parser.add_argument("--repeats", type=int, help="load trials per server")
    parser.add_argument("--in-flight", type=int, help="queries the load generator keeps out")
    parser.add_argument("--rounds", type=int, help="timed resolver rounds")
    parser.add_argument("--update", type=Path, help="markdown file whose dns section to replace")
    args = parser.parse_args()
    base = QUICK if args.quick else FULL
    counts = Counts(
        names=args.names if args.names is not None else base.names,
        seconds=args.seconds if args.seconds is not None else base.seconds,
        repeats=args.repeats if args.repeats is not None else base.repeats,
        in_flight=args.in_flight if args.in_flight is not None else base.in_flight,
        rounds=args.rounds if args.rounds is not None else base.rounds,
    )
    if counts.seconds <= 0 or min(counts.repeats, counts.rounds) < 1:
        parser.error("--seconds must be positive; --repeats and --rounds at least 1")
    if not 1 <= counts.names <= MAX_NAMES:
        parser.error(f"--names must be 1 to {MAX_NAMES}")
    if not 1 <= counts.in_flight <= 4096:
        parser.error("--in-flight must be 1 to 4096")
    binary = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if binary is None:
        raise SystemExit("dnsmasq (Debian package dnsmasq) is not installed: no peer to compare")

    load_start = os.getloadavg()
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="dns-bench-") as work:
            result = run(counts, binary, Path(work))
    except BenchmarkError as exc:
        print(f"dns benchmark failed: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    load_end = os.getloadavg()

    command = "python benchmarks/dns.py" + (" --quick" if args.quick else "")
    for flag, value, default in (
        ("--names", counts.names, base.names),
        ("--seconds", counts.seconds, base.seconds),
        ("--repeats", counts.repeats, base.repeats),
        ("--in-flight", counts.in_flight, base.in_flight),
        ("--rounds", counts.rounds, base.rounds),
    ):
        if value != default:
            command += f" {flag} {value:g}"
    text = markdown(
        result, command=command, load=(load_start[0], load_end[0]), elapsed=elapsed, counts=counts
    )
    if args.update:
        update_section(args.update, "dns", text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
