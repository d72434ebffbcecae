"""TURN relay benchmarks: relayed UDP throughput as a fraction of direct throughput, and TURN
allocations per second, for our relay (``stoq turn-server``) beside coturn, in the same run.

    python benchmarks/nat.py [--quick] [--seconds S] [--repeats N] [--allocations N]
                             [--in-flight N] [--payload BYTES] [--update BENCHMARKS.md]

Everything is on 127.0.0.1. Three processes besides the benchmark itself:

* the **receiver** (this script with ``--role receiver``): one blocking UDP socket (default
  buffer sizes) that counts every datagram and byte it gets, and the process CPU time it spent,
  between a ``reset`` and a ``report`` command on its stdin;
* **our relay**: ``python -m stoq turn-server`` (:mod:`stoq.nat.turn_server`, one asyncio
  process) with one long-term-credential user and ``--allow-loopback-peers``;
* **coturn** (the Debian ``turnserver``, C; its default relay threads) with the same user and
  realm, ``--allow-loopback-peers``, relay ports from a fixed range.

**Throughput** (``--seconds`` per trial, ``--repeats`` trials per path, the paths interleaved;
the median trial by received throughput is reported): the benchmark process sends datagrams of
``--payload`` bytes as fast as it can for the trial's window — 64 sends, then one turn of the
asyncio loop, until the window ends — either straight to the receiver (an asyncio datagram
transport: *direct*), or as ChannelData through :class:`~stoq.nat.turn_client.TurnClient`
(allocated, then ``channel_bind`` to the receiver) to a relay, which sends the data to the
receiver from the relayed address. After the window it waits ``DRAIN`` seconds, then asks the
receiver for its counts. Throughput = received payload bytes * 8 / window; loss = 1 - received
/ sent (nothing is retransmitted: UDP overflowing a socket buffer is dropped by the kernel).
CPU per datagram: the benchmark process's own process time per datagram sent, the relay
process's (``/proc/<pid>/stat``, all its threads) per datagram received, and the receiver's.

**Allocations** (``--allocations`` per server after ``--in-flight`` warm-up ones): ``--in-flight``
concurrent tasks in the benchmark process, each looping ``TurnClient.allocate`` (a fresh UDP
socket; the unauthenticated Allocate, its 401 with REALM and NONCE, then the authenticated
Allocate: two round trips) then ``close`` (Refresh with LIFETIME 0: the allocation is deleted).
Allocations/s = allocations / wall time; allocation latency = ``time.perf_counter`` around
``allocate`` (p99 nearest rank); CPU per allocation of the server process and of the client.
Each allocation comes from its own loopback address (127.S.x.y, one per allocation): with
kernel-chosen ports on one address some client 5-tuples come back within seconds, and coturn
answers 437 to an Allocate on a 5-tuple it deleted moments before.

``--update FILE`` replaces the text between ``<!-- nat:begin -->`` and ``<!-- nat:end -->`` in
FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from benchlib import (
    MS,
    Stats,
    machine,
    machine_times,
    median_by,
    ms,
    process_cpu,
    stop_process,
    update_section,
)

# This directory holds stoq.py (the STOQ benchmark): first on sys.path, it would shadow the
# stoq package. Drop it (benchlib is already imported).
_HERE = os.path.realpath(os.path.dirname(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.realpath(entry or ".") != _HERE]

from stoq.nat.stun import StunError  # noqa: E402
from stoq.nat.stun_client import StunTimeout, binding  # noqa: E402
from stoq.nat.turn_client import State, TurnClient  # noqa: E402

PACKAGES = ("cryptography",)
LOOPBACK = "127.0.0.1"
USER = "bench"
PASSWORD = "bench-pass-1"  # noqa: S105 (a throwaway user on loopback)
REALM = "bench.test"
#: Seconds the relays keep delivering after a sending window ends before the receiver reports.
DRAIN = 0.3
#: Sends between two turns of the event loop.
BATCH = 64
#: Seconds a server gets to start answering.
READY_TIMEOUT = 20.0
#: coturn relays from this port range (below the kernel's ephemeral range, 32768-60999).
COTURN_PORTS = (20000, 23999)
MBIT = 1e6
US = 1e6


@dataclass(frozen=True)
class Counts:
    """How much each phase does."""

    seconds: float
    repeats: int
    allocations: int
    in_flight: int


FULL = Counts(seconds=3.0, repeats=3, allocations=5000, in_flight=16)
QUICK = Counts(seconds=0.5, repeats=1, allocations=60, in_flight=4)


# --- processes ----------------------------------------------------------------------------------


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped on the IPv4 UDP socket bound to 127.0.0.1:``port`` (its
    receive buffer full), from the last column of /proc/net/udp."""
    local = f"0100007F:{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            return int(fields[-1])
    raise SystemExit(f"no UDP socket on {LOOPBACK}:{port} in /proc/net/udp")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def read_line(stream: IO[str], what: str) -> str:
    line = stream.readline()
    if not line:
        raise SystemExit(f"{what} ended without answering")
    return line.strip()


@dataclass(frozen=True)
class Received:
    """What the receiver counted between a reset and a report."""

    datagrams: int
    good: int  # datagrams of exactly the payload size
    payload_bytes: int
    cpu: float


class Receiver:
    """The receiver process (``--role receiver``), commanded over its stdin."""

    def __init__(self, payload: int) -> None:
        self.process = subprocess.Popen(
            [
                *(sys.executable, os.path.abspath(__file__)),
                *("--role", "receiver", "--payload", str(payload)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdin is not None
        self._in = self.process.stdin
        self._out = self.process.stdout
        word, port = read_line(self._out, "the receiver").split()
        if word != "receiving":
            raise SystemExit(f"the receiver said {word!r}")
        self.address = (LOOPBACK, int(port))

    def _command(self, command: str) -> str:
        self._in.write(command + "\n")
        self._in.flush()
        return read_line(self._out, "the receiver")

    def reset(self) -> None:
        if self._command("reset") != "ok":
            raise SystemExit("the receiver did not acknowledge the reset")

    def report(self) -> Received:
        body = json.loads(self._command("report"))
        return Received(body["datagrams"], body["good"], body["bytes"], body["cpu"])

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self._in.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            stop_process(self.process, "the receiver")
        if self.process.returncode != 0:
            raise SystemExit(f"the receiver exited with status {self.process.returncode}")


def receiver_main(payload: int) -> int:
    """The receiver role: count datagrams on a UDP socket; ``reset``/``report``/EOF on stdin."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(0.02)
    commands: list[str] = []

    def read_commands() -> None:
        for line in sys.stdin:
            commands.append(line.strip())
        commands.append("quit")

    threading.Thread(target=read_commands, daemon=True).start()
    print(f"receiving {sock.getsockname()[1]}", flush=True)
    buffer = bytearray(65535)
    datagrams = good = received = 0
    cpu = time.process_time()
    while True:
        try:
            size = sock.recv_into(buffer)
        except TimeoutError:
            size = -1
        if size >= 0:
            datagrams += 1
            if size == payload:
                good += 1
                received += size
        if commands:
            command = commands.pop(0)
            if command == "quit":
                return 0
            if command == "reset":
                datagrams = good = received = 0
                cpu = time.process_time()
                print("ok", flush=True)
            elif command == "report":
                body = {
                    "datagrams": datagrams,
                    "good": good,
                    "bytes": received,
                    "cpu": time.process_time() - cpu,
                }
                print(json.dumps(body), flush=True)
            else:
                print(f"unknown command {command!r}", file=sys.stderr, flush=True)
                return 2


@dataclass(frozen=True)
class Server:
    """A running TURN server: what it is, where it listens, its process."""

    name: str
    address: tuple[str, int]
    process: subprocess.Popen[Any]


@contextlib.contextmanager
def our_server() -> Iterator[Server]:
    """``python -m stoq turn-server`` on 127.0.0.1 (a kernel-chosen port)."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "stoq", "turn-server", "--listen", f"{LOOPBACK}:0"),
            *("--realm", REALM, "--user", f"{USER}:{PASSWORD}", "--allow-loopback-peers"),
            *("--quota", "1000000"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        word, address = read_line(process.stdout, "stoq turn-server").split()
        if word != "listening":
            raise SystemExit(f"stoq turn-server said {word!r}")
        host, port = address.rsplit(":", 1)
        yield Server("ours (`stoq turn-server`)", (host, int(port)), process)
    finally:
        stop_process(process, "stoq turn-server")
        if process.returncode != 0:
            raise SystemExit(f"stoq turn-server exited with status {process.returncode}")


def coturn_version(turnserver: str) -> str:
    done = subprocess.run([turnserver, "--version"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0]


@contextlib.contextmanager
def coturn(turnserver: str, work: Path) -> Iterator[Server]:
    """coturn on 127.0.0.1 with long-term credentials and loopback peers allowed."""
    port = free_udp_port()
    command = [
        turnserver,
        "-n",  # no configuration file
        "--lt-cred-mech",
        "--user", f"{USER}:{PASSWORD}",
        "--realm", REALM,
        "--listening-ip", LOOPBACK,
        "--listening-port", str(port),
        "--relay-ip", LOOPBACK,
        "--min-port", str(COTURN_PORTS[0]),
        "--max-port", str(COTURN_PORTS[1]),
        "--allow-loopback-peers",
        "--no-cli", "--no-tls", "--no-dtls",
        "--userdb", str(work / "turndb"),
        "--pidfile", str(work / "turnserver.pid"),
        "--log-file", "stdout",
        "--simple-log",
    ]  # fmt: skip
    with (work / "turnserver.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield Server(f"coturn {coturn_version(turnserver)}", (LOOPBACK, port), process)
    finally:
        stop_process(process, "coturn")


async def wait_ready(server: Server) -> None:
    """Until ``server`` answers a STUN Binding request."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SystemExit(f"{server.name} exited with status {server.process.returncode}")
        try:
            await binding(server.address, local=(LOOPBACK, 0), rto=0.1, timeout=0.3)
        except StunTimeout:
            continue
        return
    raise SystemExit(f"{server.name} did not answer STUN within {READY_TIMEOUT:.0f} s")


# --- throughput ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One sending window on one path."""

    path: str
    sent: int
    window: float
    received: Received
    sender_cpu: float
    relay_cpu: float | None
    relay_window_cpu: float | None
    machine_busy: float
    receiver_drops: int
    payload: int

    @property
    def mbit(self) -> float:
        return self.received.payload_bytes * 8 / self.window / MBIT

    @property
    def loss(self) -> float:
        return 1 - self.received.good / self.sent

    @property
    def relay_loss(self) -> float:
        """The share of datagrams sent that never reached the receiver's socket."""
        return (self.sent - self.received.datagrams - self.receiver_drops) / self.sent

    @property
    def relay_us(self) -> float | None:
        """Relay CPU microseconds per datagram the receiver got."""
        if self.relay_cpu is None or not self.received.good:
            return None
        return self.relay_cpu / self.received.good * US

    @property
    def relay_busy(self) -> float | None:
        """The relay's CPU time over the sending window, as a share of one core."""
        return None if self.relay_window_cpu is None else self.relay_window_cpu / self.window


async def blast(send: Callable[[bytes], Awaitable[None]], payload: bytes, seconds: float) -> int:
    """Send ``payload`` with ``send`` for ``seconds``; returns how many were sent."""
    sent = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(BATCH):
            await send(payload)
        sent += BATCH
        await asyncio.sleep(0)
    return sent


async def trial(
    path: str,
    send: Callable[[bytes], Awaitable[None]],
    receiver: Receiver,
    seconds: float,
    payload: int,
    relay_pid: int | None,
) -> Trial:
    data = bytes(range(256)) * (payload // 256) + bytes(payload % 256)
    receiver.reset()
    drops_start = udp_drops(receiver.address[1])
    relay_start = None if relay_pid is None else process_cpu(relay_pid)
    busy_start, total_start = machine_times()
    cpu_start = time.process_time()
    start = time.perf_counter()
    sent = await blast(send, data, seconds)
    window = time.perf_counter() - start
    sender_cpu = time.process_time() - cpu_start
    busy_end, total_end = machine_times()
    relay_window = None if relay_pid is None else process_cpu(relay_pid)
    await asyncio.sleep(DRAIN)
    relay_cpu = relay_window_cpu = None
    if relay_pid is not None:
        assert relay_start is not None
        assert relay_window is not None
        relay_cpu = process_cpu(relay_pid) - relay_start
        relay_window_cpu = relay_window - relay_start
    received = receiver.report()
    drops = udp_drops(receiver.address[1]) - drops_start
    busy = (busy_end - busy_start) / max(total_end - total_start, 1e-9)
    trial = Trial(
        path,
        sent,
        window,
        received,
        sender_cpu,
        relay_cpu,
        relay_window_cpu,
        busy,
        drops,
        payload,
    )
    print(
        f"  {path}: {trial.mbit:,.1f} Mbit/s, {sent:,} sent, {received.good:,} received",
        flush=True,
    )
    return trial


@contextlib.asynccontextmanager
async def relayed_sender(
    server: Server, receiver: Receiver
) -> AsyncIterator[Callable[[bytes], Awaitable[None]]]:
    """A send function relaying to the receiver through ``server`` on a bound channel."""
    client = await TurnClient.allocate(
        server.address, USER, PASSWORD, local=(LOOPBACK, 0), timeout=10
    )
    async with client:
        await client.channel_bind(receiver.address)
        peer = receiver.address

        async def send(data: bytes) -> None:
            await client.send(peer, data)

        yield send


@contextlib.asynccontextmanager
async def direct_sender(receiver: Receiver) -> AsyncIterator[Callable[[bytes], Awaitable[None]]]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=(LOOPBACK, 0)
    )
    peer = receiver.address

    async def send(data: bytes) -> None:
        transport.sendto(data, peer)

    try:
        yield send
    finally:
        transport.close()


async def bench_throughput(
    servers: Sequence[Server], counts: Counts, payload: int
) -> list[list[Trial]]:
    """Per path (direct, then each server), its trials, the paths interleaved."""
    receiver = Receiver(payload)
    try:
        trials: list[list[Trial]] = [[] for _ in range(1 + len(servers))]
        async with contextlib.AsyncExitStack() as stack:
            senders = [await stack.enter_async_context(direct_sender(receiver))]
            for server in servers:
                senders.append(await stack.enter_async_context(relayed_sender(server, receiver)))
            names = ["direct"] + [server.name for server in servers]
            pids: list[int | None] = [None] + [server.process.pid for server in servers]
            for repeat in range(counts.repeats):
                print(f"throughput, trial {repeat + 1} of {counts.repeats}", flush=True)
                for index, send in enumerate(senders):
                    trials[index].append(
                        await trial(
                            names[index], send, receiver, counts.seconds, payload, pids[index]
                        )
                    )
        return trials
    finally:
        receiver.close()


def median_trial(trials: Sequence[Trial]) -> Trial:
    return median_by(trials, lambda t: t.mbit)


# --- allocations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Allocations:
    """Allocate + delete cycles against one server."""

    server: str
    done: int
    in_flight: int
    wall: float
    allocate: Stats
    delete: Stats
    failures: tuple[str, ...]
    server_cpu: float
    client_cpu: float

    @property
    def per_second(self) -> float:
        return self.done / self.wall


def client_ip(octet: int, index: int) -> str:
    """The loopback address of allocation ``index``: 127.``octet``.x.y, one per allocation, so
    that no client 5-tuple is used twice (a server may remember a deleted one for a while)."""
    return f"127.{octet}.{index // 254}.{index % 254 + 1}"


async def allocate_and_delete(
    server: Server, count: int, in_flight: int, octet: int, first: int = 0
) -> tuple[list[float], list[float], list[str]]:
    allocate: list[float] = []
    delete: list[float] = []
    failures: list[str] = []
    remaining = count
    taken = first

    async def worker() -> None:
        nonlocal remaining, taken
        while remaining > 0:
            remaining -= 1
            local = (client_ip(octet, taken), 0)
            taken += 1
            start = time.perf_counter()
            try:
                client = await TurnClient.allocate(
                    server.address, USER, PASSWORD, local=local, timeout=10
                )
            except StunError as exc:
                failures.append(f"allocate: {exc}")
                continue
            allocated = time.perf_counter()
            await client.close()
            deleted = time.perf_counter()
            if client.core.state != State.CLOSED:
                failures.append(f"delete ended in state {client.core.state.value}")
                continue
            allocate.append(allocated - start)
            delete.append(deleted - allocated)

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return allocate, delete, failures


async def bench_allocations(server: Server, index: int, counts: Counts) -> Allocations:
    print(f"allocations: {server.name}", flush=True)
    octet = 1 + index
    await allocate_and_delete(server, counts.in_flight, counts.in_flight, octet)  # warm-up
    server_start = process_cpu(server.process.pid)
    cpu_start = time.process_time()
    start = time.perf_counter()
    allocate, delete, failures = await allocate_and_delete(
        server, counts.allocations, counts.in_flight, octet, first=counts.in_flight
    )
    wall = time.perf_counter() - start
    client_cpu = time.process_time() - cpu_start
    server_cpu = process_cpu(server.process.pid) - server_start
    if not allocate:
        raise SystemExit(f"no allocation succeeded on {server.name}: {failures[:3]}")
    result = Allocations(
        server.name,
        len(allocate),
        counts.in_flight,
        wall,
        Stats.of(allocate),
        Stats.of(delete),
        tuple(failures),
        server_cpu,
        client_cpu,
    )
    print(f"  {result.per_second:,.0f} allocations/s, {len(failures)} failed", flush=True)
    return result


# --- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    throughput: list[list[Trial]]
    allocations: list[Allocations]
    coturn: str


async def run(counts: Counts, payload: int, turnserver: str, work: Path) -> Run:
    with our_server() as ours, coturn(turnserver, work) as theirs:
        servers = (ours, theirs)
        for server in servers:
            await wait_ready(server)
        throughput = await bench_throughput(servers, counts, payload)
        allocations = [
            await bench_allocations(server, index, counts) for index, server in enumerate(servers)
        ]
    return Run(throughput, allocations, theirs.name)


# --- the section --------------------------------------------------------------------------------


def us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def throughput_rows(result: Run) -> list[str]:
    rows = [
        "| path (1 sender, 1 receiver, loopback) | sent | received | loss (before the "
        "receiver's socket / in it) | received (Mbit/s) | of direct | sender CPU (µs/datagram "
        "sent) | relay CPU (µs/datagram relayed) | relay busy (of one core) | receiver CPU "
        "(µs/datagram) | cores busy (all processes) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    direct = median_trial(result.throughput[0])
    for index, trials in enumerate(result.throughput):
        t = median_trial(trials)
        label = (
            "direct: sender → receiver"
            if index == 0
            else f"relayed: `TurnClient` ChannelData → {t.path} → receiver"
        )
        busy = t.relay_busy
        rows.append(
            f"| {label} | {t.sent:,} | {t.received.good:,} | {t.loss:.1%} ({t.relay_loss:.1%} / "
            f"{t.receiver_drops / t.sent:.1%}) | **{t.mbit:,.1f}** | "
            f"{t.mbit / direct.mbit:.1%} | {t.sender_cpu / t.sent * US:.1f} | "
            f"{us(t.relay_us)} | {'-' if busy is None else f'{busy:.0%}'} | "
            f"{t.received.cpu / max(1, t.received.datagrams) * US:.1f} | {t.machine_busy:.0%} |"
        )
    return rows


def allocation_rows(result: Run) -> list[str]:
    rows = [
        "| server | allocations (in flight) | **allocations/s** | allocate p50 (ms) | "
        "allocate p99 (ms) | delete p50 (ms) | failed | server CPU (ms/allocation) | "
        "client CPU (ms/allocation) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in result.allocations:
        rows.append(
            f"| {a.server} | {a.done:,} ({a.in_flight}) | **{a.per_second:,.0f}** | "
            f"{ms(a.allocate.p50)} | {ms(a.allocate.p99)} | {ms(a.delete.p50)} | "
            f"{len(a.failures)} | {ms(a.server_cpu / a.done * MS)} | "
            f"{ms(a.client_cpu / a.done * MS)} |"
        )
    return rows


def bound_sentence(result: Run) -> str:
    """What bounds the relayed throughput, from the run's own figures."""
    direct = median_trial(result.throughput[0])
    ours = median_trial(result.throughput[1])
    theirs = median_trial(result.throughput[2])
    assert ours.relay_us is not None
    assert theirs.relay_us is not None
    assert ours.relay_busy is not None
    assert theirs.relay_busy is not None
    cores = os.cpu_count() or 1

    def ceiling(micros: float) -> str:
        return f"{US / micros * ours.payload * 8 / MBIT:,.0f} Mbit/s"

    sender_us = ours.sender_cpu / ours.sent * US
    sender_direct_us = direct.sender_cpu / direct.sent * US
    if ours.relay_loss >= 0.05 and ours.relay_busy >= 0.85:
        bound = "our relay's Python per-datagram cost (its one asyncio thread saturated a core)"
    elif ours.relay_loss >= 0.05:
        bound = (
            "our relay's Python per-datagram cost, on CPU it shares with the sender and "
            "the receiver"
        )
    else:
        bound = "the sender's Python cost per datagram (our relay kept up)"
    text = (
        f"**What bounds the relayed throughput: {bound}.** Per datagram relayed, our relay "
        f"(Python: `recvfrom`, ChannelData decode, channel and permission lookups, `sendto`, "
        f"the asyncio shell) spent {ours.relay_us:.1f} µs of CPU and coturn's C "
        f"{theirs.relay_us:.1f} µs (ours costs {ours.relay_us / theirs.relay_us:.1f}x as "
        "much; both figures include the kernel's UDP work), so one core relays at most about "
        f"{ceiling(ours.relay_us)} of {ours.payload}-byte payloads through ours and "
        f"{ceiling(theirs.relay_us)} through coturn. In the run the {cores} cores were "
        f"{ours.machine_busy:.0%} busy while sending through ours: the sender, at "
        f"{sender_us:.1f} µs per `TurnClient.send` ({sender_direct_us:.1f} µs per direct "
        f"send), offered {ours.sent / ours.window:,.0f} datagrams/s; our relay got "
        f"{ours.relay_busy:.0%} of a core, relayed {ours.received.good / ours.window:,.0f} "
        f"datagrams/s ({ours.mbit:,.0f} Mbit/s, {ours.mbit / direct.mbit:.0%} of direct) and "
        f"{ours.relay_loss:.0%} of what was sent never reached the receiver's socket (the "
        "kernel dropped it at the relay, which did not keep up). Through coturn "
        f"({theirs.relay_busy:.0%} of a core) "
        f"{theirs.relay_loss:.0%} was lost before the receiver and it delivered "
        f"{theirs.mbit:,.0f} Mbit/s ({theirs.mbit / direct.mbit:.0%} of direct)"
    )
    if theirs.relay_loss < 0.05:
        text += (
            ": there the bound is the Python sender (one core at most "
            f"{ceiling(theirs.sender_cpu / theirs.sent * US)} of offer) and receiver, not the "
            "relay."
        )
    else:
        text += "."
    return text


def markdown(
    result: Run,
    *,
    command: str,
    load: tuple[float, float],
    elapsed: float,
    counts: Counts,
    payload: int,
) -> str:
    failures = [f for a in result.allocations for f in a.failures]
    header = (
        "### TURN relay (`benchmarks/nat.py`)\n\n"
        f"Command: `nox -s bench -- nat` (runs `{command} --update BENCHMARKS.md`). Measured "
        f"{datetime.date.today().isoformat()} on: {machine(PACKAGES)}. 1-minute load average "
        f"{load[0]:.2f} at the start and {load[1]:.2f} at the end of the {elapsed:.0f} s run "
        f"({os.cpu_count()} CPUs). Peer: {result.coturn} (C; `turnserver -n --lt-cred-mech "
        "--allow-loopback-peers`, default relay threads), beside our `python -m stoq "
        "turn-server` (one asyncio process), in the same run, both with one long-term-credential "
        "user on 127.0.0.1.\n\n"
        f"Throughput: one sender (the benchmark process) sends {payload}-byte datagrams as fast "
        f"as it can for {counts.seconds:g} s (64 sends per turn of its asyncio loop) to one "
        "receiver process (a blocking UDP socket, default buffers) — directly, or as "
        "ChannelData on a bound channel of our `TurnClient` through each relay, which sends the "
        "data on from its relayed address. Nothing is paced or retransmitted: what a socket "
        "buffer cannot hold the kernel drops, and loss = 1 - received / sent. Received Mbit/s "
        f"counts payload bytes over the sending window (the receiver reports {DRAIN:g} s after "
        f"it ends); median of {counts.repeats} interleaved trials per path (by throughput; the "
        "whole row is that trial's). CPU from `/proc/<pid>/stat` (the relay process, all "
        "threads) and each process's own process time."
    )
    alloc_text = (
        f"Allocations: {counts.in_flight} concurrent tasks in the benchmark process, each "
        "looping `TurnClient.allocate` (a fresh UDP socket on an address of its own, "
        "127.S.x.y, so that no client 5-tuple is used twice; Allocate, its 401 with REALM and "
        "NONCE, the authenticated Allocate: the latency below) then `close` (Refresh with "
        f"LIFETIME 0: the delete), after {counts.in_flight} warm-up cycles; allocations/s = "
        "completed cycles / wall time; p99 nearest rank."
        + (
            f" Failures: {'; '.join(sorted(set(failures))[:3])}."
            if failures
            else " No allocation or delete failed."
        )
    )
    ours, theirs = result.allocations
    client_bound = MS / (ours.client_cpu / ours.done * MS)
    alloc_sentence = (
        f"**The allocation rate measures the client more than the servers:** one core running "
        f"our Python `TurnClient` completes at most about {client_bound:,.0f} cycles/s, so both "
        "servers land near that figure; compare them by CPU per cycle instead. "
        f"Our server spent {ms(ours.server_cpu / ours.done * MS)} ms of CPU per allocate + "
        f"delete cycle and coturn {ms(theirs.server_cpu / theirs.done * MS)} ms; the client "
        f"(our `TurnClient`, Python, {ms(ours.client_cpu / ours.done * MS)} and "
        f"{ms(theirs.client_cpu / theirs.done * MS)} ms per cycle) shares the {os.cpu_count()} "
        "cores with the server."
    )
    return "\n\n".join(
        [
            header,
            "\n".join(throughput_rows(result)),
            bound_sentence(result),
            alloc_text,
            "\n".join(allocation_rows(result)),
            alloc_sentence,
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows, few allocations")
    parser.add_argument("--seconds", type=float, help="sending window per throughput trial")
    parser.add_argument("--repeats", type=int, help="throughput trials per path")
    parser.add_argument("--allocations", type=int, help="allocate + delete cycles per server")
    parser.add_argument("--in-flight", type=int, help="concurrent allocating tasks")
    parser.add_argument("--payload", type=int, default=1200, help="datagram payload bytes")
    parser.add_argument("--update", type=Path, help="markdown file whose nat section to replace")
    parser.add_argument("--role", choices=("receiver",), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "receiver":
        return receiver_main(args.payload)
    base = QUICK if args.quick else FULL
    counts = Counts(
        seconds=args.seconds if args.seconds is not None else base.seconds,
        repeats=args.repeats if args.repeats is not None else base.repeats,
        allocations=args.allocations if args.allocations is not None else base.allocations,
        in_flight=args.in_flight if args.in_flight is not None else base.in_flight,
    )
    if counts.seconds <= 0 or min(counts.repeats, counts.allocations, counts.in_flight) < 1:
        parser.error("--seconds must be positive; --repeats, --allocations, --in-flight >= 1")
    if not 1 <= args.payload <= 65535 - 4:
        parser.error("--payload must be 1 to 65531 bytes")
    turnserver = shutil.which("turnserver")
    if turnserver is None:
        raise SystemExit("turnserver (Debian package coturn) is not installed: no peer to compare")

    load_start = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nat-bench-") as work:
        result = asyncio.run(run(counts, args.payload, turnserver, Path(work)))
    elapsed = time.perf_counter() - started
    load_end = os.getloadavg()

    command = "python benchmarks/nat.py" + (" --quick" if args.quick else "")
    for flag, value, default in (
        ("--seconds", counts.seconds, base.seconds),
        ("--repeats", counts.repeats, base.repeats),
        ("--allocations", counts.allocations, base.allocations),
        ("--in-flight", counts.in_flight, base.in_flight),
        ("--payload", args.payload, 1200),
    ):
        if value != default:
            command += f" {flag} {value:g}"
    text = markdown(
        result,
        command=command,
        load=(load_start[0], load_end[0]),
        elapsed=elapsed,
        counts=counts,
        payload=args.payload,
    )
    if args.update:
        update_section(args.update, "nat", text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
