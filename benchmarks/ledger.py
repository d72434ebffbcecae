"""Quorum-certified ledger benchmarks: certified changes per second and record latency with four
validator processes on one machine, with and without vote batching, beside the signature and
validation costs beneath them, measured in the same run.

    python benchmarks/ledger.py [--quick] [--latency N] [--changes N] [--in-flight N]
                                [--data-kib N] [--dir DIR] [--update BENCHMARKS.md]

Everything runs on one :class:`~trustchain.consensus.federation.LocalFederation` made for the
run in a temporary directory (deleted at the end): four validators of stake 1 (quorum 3) and
one owner node. In order:

1. **proving** (not what is measured; its duration is reported): the owner's k=18 plot, then
   ``2 * (1 + latency + changes)`` distinct assets of ``--data-kib`` KiB of random bytes, each
   version 0 proved at the ``localhost_testing`` preset (``LocalFederation.prove``) and signed
   (:func:`~trustchain.consensus.votes.sign_change`);
2. **beneath**, while no validator runs: ``validate_four_proofs`` of distinct bundles (the
   discriminant cache emptied before each, as for a bundle never seen before: each validator
   validates every change once), raw Falcon-1024 signing (pqcrypto), Falcon-1024 and hybrid
   Ed25519 + Falcon-1024 signing and hybrid verification (:mod:`trustchain.crypto.signatures`),
   and :func:`~trustchain.consensus.votes.sign_ballots` of ``in-flight`` ballots with and
   without a batch signature;
3. **per mode** (batched votes, the default, then ``--no-batch``): the four validator
   processes (``python -m hypermesh.node.validator``, real STOQ on 127.0.0.1, their ledgers
   kept from one mode to the next) are started, one warm-up change is recorded (it dials the
   connections), then
   * latency: ``latency`` changes recorded one at a time with
     :meth:`~hypermesh.node.ledger_client.LedgerClient.record` (the votes round to all four,
     the certificate at a quorum of votes, the apply round to all four);
   * throughput: ``changes`` changes recorded by ``in-flight`` concurrent tasks of one client
     (each takes the next change as soon as its previous one is recorded); certified
     changes/s = ``changes`` / wall time from the first send to the last outcome, with the
     per-change latency under that load, the CPU time the validator processes
     (``/proc/<pid>/stat``) and the benchmark process (the client) spent meanwhile, and the
     share of the machine's CPU time any process used (``/proc/stat``: on a shared machine it
     tells contention from idle cores);
   then the validators are stopped (SIGTERM; each must exit 0);
4. :meth:`VoteVerifier.verify_certificate` (a fresh verifier each time, so nothing is cached)
   of certificates made in each mode, and each validator's ledger opened and audited.

``--update FILE`` replaces the text between ``<!-- ledger:begin -->`` and ``<!-- ledger:end -->``
in FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchlib import MS, Stats, machine, measure, ms, rate, update_section
from pqcrypto.sign import falcon_1024 as pqclean_falcon
from proofs import forget_discriminants, validate_checked

# This directory holds stoq.py (the STOQ benchmark): first on sys.path, it would shadow the
# stoq package the ledger client and validators use. Drop it (benchlib and proofs are imported).
_HERE = os.path.realpath(os.path.dirname(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.realpath(entry or ".") != _HERE]

from hypermesh import demo  # noqa: E402
from hypermesh.demo import ValidatorProcess, stop_validators  # noqa: E402
from hypermesh.node.ledger_client import (  # noqa: E402
    DEFAULT_STRAGGLER_GRACE,
    LedgerClient,
    RecordFailed,
    RecordOutcome,
)
from hypermesh.node.validator import member_config  # noqa: E402
from hypermesh_interfaces.v1 import common_pb2, ledger_pb2  # noqa: E402
from trustchain.consensus.committee import Committee  # noqa: E402
from trustchain.consensus.federation import LocalFederation  # noqa: E402
from trustchain.consensus.ledger import Ledger  # noqa: E402
from trustchain.consensus.proofs.bundle import ValidationContext  # noqa: E402
from trustchain.consensus.proofs.presets import LOCALHOST_TESTING  # noqa: E402
from trustchain.consensus.votes import (  # noqa: E402
    Ballot,
    VoteVerifier,
    change_digest,
    owner_signing_bytes,
    sign_ballots,
    sign_change,
)
from trustchain.crypto.algorithms import SignatureAlgorithm  # noqa: E402
from trustchain.crypto.signatures import Signature, SigningKey  # noqa: E402

PACKAGES = ("aioquic", "chiapos", "chiavdf", "cryptography", "pqcrypto", "protobuf")
OWNER = "owner"
VALIDATORS = 4
SEED = 20261125
PRESET = LOCALHOST_TESTING
#: Seconds one record may take (generous: under load a change waits behind the others).
RECORD_TIMEOUT = 300.0
#: Seconds the validator processes get to print ``ready <port>``.
READY_TIMEOUT = 120.0


@dataclass(frozen=True)
class Counts:
    """How much each phase does."""

    latency: int
    changes: int
    in_flight: int
    validate: int
    rate_seconds: float
    rate_repeats: int
    ballot_runs: int
    certificate_checks: int


FULL = Counts(
    latency=100,
    changes=160,
    in_flight=32,
    validate=80,
    rate_seconds=0.5,
    rate_repeats=3,
    ballot_runs=3,
    certificate_checks=20,
)
QUICK = Counts(
    latency=3,
    changes=8,
    in_flight=4,
    validate=3,
    rate_seconds=0.1,
    rate_repeats=1,
    ballot_runs=1,
    certificate_checks=3,
)


# --- proving ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proved:
    """The signed changes, and what making them took (seconds)."""

    changes: tuple[ledger_pb2.AssetStateChange, ...]
    plot_seconds: float
    prove: Stats
    prove_total: float
    sign: Stats
    bundle_bytes: int
    change_bytes: int


def prove_changes(
    federation: LocalFederation, committee: Committee, count: int, data_kib: int
) -> Proved:
    """``count`` owner-signed changes, each version 0 of a new asset of ``data_kib`` KiB."""
    print(f"plotting k={PRESET.plot_k}", flush=True)
    start = time.perf_counter()
    federation.plot(OWNER, PRESET.plot_k)
    plot_seconds = time.perf_counter() - start
    print(f"proving {count} assets ({data_kib} KiB each, {PRESET.name})", flush=True)
    rng = random.Random(SEED)
    sign = federation.signer(OWNER)
    bundles: list[common_pb2.FourProof] = []
    prove_times: list[float] = []
    for index in range(count):
        data = rng.randbytes(data_kib * 1024)
        spec = common_pb2.ResourceSpec(storage_bytes=len(data))
        start = time.perf_counter()
        bundles.append(federation.prove(OWNER, f"bench-{index}", data, spec, PRESET))
        prove_times.append(time.perf_counter() - start)
    changes: list[ledger_pb2.AssetStateChange] = []
    sign_times: list[float] = []
    for bundle in bundles:
        start = time.perf_counter()
        changes.append(sign_change(bundle, committee.epoch, sign))
        sign_times.append(time.perf_counter() - start)
    if len({change_digest(c) for c in changes}) != count:
        raise SystemExit("two proved changes have the same digest")
    return Proved(
        tuple(changes),
        plot_seconds,
        Stats.of(prove_times),
        sum(prove_times),
        Stats.of(sign_times),
        int(statistics.median(b.ByteSize() for b in bundles)),
        int(statistics.median(c.ByteSize() for c in changes)),
    )


# --- beneath ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Beneath:
    """Costs beneath a record, measured in the benchmark process with no validator running."""

    validate: Stats
    falcon_raw_sign: float
    falcon_sign: float
    hybrid_sign: float
    hybrid_verify: float
    batch_sign: Stats
    single_sign: Stats
    ballots: int


def bench_beneath(
    federation: LocalFederation,
    changes: Sequence[ledger_pb2.AssetStateChange],
    counts: Counts,
) -> Beneath:
    print("beneath: validation, signatures", flush=True)
    validator = federation.validators[0]
    context: ValidationContext = federation.context(validator.name, PRESET)
    with context.registry:
        bundles = [change.proofs for change in changes[: counts.validate]]
        validate = measure(
            lambda i: validate_checked(bundles[i], context),
            len(bundles),
            before=forget_discriminants,
        )
    message = owner_signing_bytes(change_digest(changes[0]), 0)
    public, secret = pqclean_falcon.generate_keypair()
    pqclean_falcon.verify(public, message, pqclean_falcon.sign(secret, message))
    falcon_raw = rate(lambda: pqclean_falcon.sign(secret, message), *rate_args(counts))
    falcon = SigningKey.generate(SignatureAlgorithm.FALCON_1024)
    falcon_rate = rate(lambda: falcon.sign(message), *rate_args(counts))
    hybrid = SigningKey.generate()
    hybrid_rate = rate(lambda: hybrid.sign(message), *rate_args(counts))
    hybrid_public = hybrid.public_key()
    signature: Signature = hybrid.sign(message)
    verify_rate = rate(lambda: hybrid_public.verify(signature, message), *rate_args(counts))

    def sign(data: bytes) -> bytes:
        return hybrid.sign(data).to_bytes()

    ballots = [
        Ballot.for_change(change, validator.validator_id) for change in changes[: counts.in_flight]
    ]
    batch = measure(lambda i: sign_ballots(ballots, sign, batch=True), counts.ballot_runs)
    single = measure(lambda i: sign_ballots(ballots, sign, batch=False), counts.ballot_runs)
    return Beneath(
        validate,
        falcon_raw,
        falcon_rate,
        hybrid_rate,
        verify_rate,
        batch,
        single,
        len(ballots),
    )


def rate_args(counts: Counts) -> tuple[float, int]:
    return counts.rate_seconds, counts.rate_repeats


# --- validator processes ------------------------------------------------------------------------


async def start_validators(federation: LocalFederation, *, batch: bool) -> list[ValidatorProcess]:
    """One validator process per validator (``--no-batch`` unless ``batch``), each ready."""
    return await demo.start_validators(
        federation,
        timeout=READY_TIMEOUT,
        extra_args=() if batch else ("--no-batch",),
        log_name=f"validator-{'batch' if batch else 'no-batch'}.log",
    )


async def stop_checked(processes: Sequence[ValidatorProcess]) -> None:
    codes = await stop_validators(processes)
    failed = {name: code for name, code in codes.items() if code != 0}
    if failed:
        tails = "\n".join(
            f"{p.setup.name}: {p.log_tail()}" for p in processes if p.setup.name in failed
        )
        raise SystemExit(f"validators did not exit cleanly: {failed}\n{tails}")


def cpu_seconds(pids: Sequence[int]) -> float | None:
    """User + system CPU seconds the processes ``pids`` have used so far, all their threads
    (from ``/proc/<pid>/stat``); None where there is no ``/proc``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return None
        # Fields after "pid (comm) ": state is field 3, utime field 14, stime field 15.
        fields = text[text.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick


def machine_cpu() -> tuple[float, float] | None:
    """CPU seconds the whole machine has spent busy (any process) and in all, summed over its
    cores (from the first line of ``/proc/stat``); None where there is no ``/proc``."""
    try:
        line = Path("/proc/stat").read_text().splitlines()[0]
    except FileNotFoundError:
        return None
    # "cpu user nice system idle iowait irq softirq steal guest guest_nice" (guest time is
    # already counted in user time).
    ticks = [int(field) for field in line.split()[1:9]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / tick, sum(ticks) / tick


# --- recording ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModeResult:
    """One mode's figures: ``batch`` (votes batched), seconds until the validators were ready,
    latency one change at a time, the throughput run (its changes, wall seconds, per-change
    latency under load, CPU seconds of the validators and of the client meanwhile, the share
    of the machine's CPU time any process used meanwhile), how many
    of its changes all four validators reported applied, and certificates it made."""

    batch: bool
    startup: float
    latency: Stats
    changes: int
    in_flight: int
    seconds: float
    loaded: Stats
    validator_cpu: float | None
    client_cpu: float
    machine_busy: float | None
    applied_by_all: int
    certificates: tuple[ledger_pb2.StateCertificate, ...]

    @property
    def per_second(self) -> float:
        return self.changes / self.seconds

    @property
    def ours_busy(self) -> float | None:
        """The share of the machine's CPU time the validators and the client used."""
        if self.validator_cpu is None:
            return None
        return (self.validator_cpu + self.client_cpu) / (self.seconds * (os.cpu_count() or 1))


async def record_one(
    client: LedgerClient, change: ledger_pb2.AssetStateChange
) -> tuple[float, RecordOutcome]:
    start = time.perf_counter()
    outcome = await client.record(change, timeout=RECORD_TIMEOUT)
    return time.perf_counter() - start, outcome


async def bench_mode(
    federation: LocalFederation,
    committee: Committee,
    changes: Sequence[ledger_pb2.AssetStateChange],
    counts: Counts,
    *,
    batch: bool,
) -> ModeResult:
    """Start the validators (batching votes or not), record ``changes`` (one warm-up, then
    ``counts.latency`` one by one, then the rest with ``counts.in_flight`` in flight), stop
    them."""
    name = "batched votes" if batch else "--no-batch"
    print(f"{name}: starting {VALIDATORS} validators", flush=True)
    start = time.perf_counter()
    processes = await start_validators(federation, batch=batch)
    startup = time.perf_counter() - start
    try:
        config = member_config(federation, federation.owner(OWNER))
        async with LedgerClient(config, committee) as client:
            await record_one(client, changes[0])
            print(f"{name}: latency, {counts.latency} changes one at a time", flush=True)
            one_by_one = changes[1 : 1 + counts.latency]
            latencies = []
            certificates = []
            for change in one_by_one:
                seconds, outcome = await record_one(client, change)
                latencies.append(seconds)
                certificates.append(outcome.certificate)
            loaded_changes = changes[1 + counts.latency :]
            print(
                f"{name}: throughput, {len(loaded_changes)} changes, {counts.in_flight} in flight",
                flush=True,
            )
            pids = [p.process.pid for p in processes]
            machine_before = machine_cpu()
            cpu_before = cpu_seconds(pids)
            client_before = time.process_time()
            seconds, loaded, outcomes = await record_concurrently(
                client, loaded_changes, counts.in_flight
            )
            client_cpu = time.process_time() - client_before
            cpu_after = cpu_seconds(pids)
            machine_after = machine_cpu()
    finally:
        await stop_checked(processes)
    validator_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    machine_busy = None
    if machine_before is not None and machine_after is not None:
        busy = machine_after[0] - machine_before[0]
        machine_busy = busy / max(machine_after[1] - machine_before[1], 1e-9)
    result = ModeResult(
        batch=batch,
        startup=startup,
        latency=Stats.of(latencies),
        changes=len(loaded_changes),
        in_flight=counts.in_flight,
        seconds=seconds,
        loaded=Stats.of(loaded),
        validator_cpu=validator_cpu,
        client_cpu=client_cpu,
        machine_busy=machine_busy,
        applied_by_all=sum(len(o.states) == VALIDATORS for o in outcomes),
        certificates=tuple(certificates),
    )
    print(
        f"{name}: latency p50 {ms(result.latency.p50)} ms, {result.per_second:.2f} certified "
        f"changes/s",
        flush=True,
    )
    return result


async def record_concurrently(
    client: LedgerClient, changes: Sequence[ledger_pb2.AssetStateChange], in_flight: int
) -> tuple[float, list[float], list[RecordOutcome]]:
    """Record ``changes`` with ``in_flight`` tasks, each taking the next change when its last
    one is recorded: the wall seconds of the whole run, each change's latency, the outcomes."""
    pending: Iterator[ledger_pb2.AssetStateChange] = iter(changes)
    latencies: list[float] = []
    outcomes: list[RecordOutcome] = []

    async def worker() -> None:
        for change in pending:
            seconds, outcome = await record_one(client, change)
            latencies.append(seconds)
            outcomes.append(outcome)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - start, latencies, outcomes


# --- after the runs -----------------------------------------------------------------------------


def bench_certificates(
    committee: Committee, certificates: Sequence[ledger_pb2.StateCertificate]
) -> Stats:
    """``verify_certificate`` of each certificate with a fresh verifier (no cached vote)."""
    return measure(
        lambda i: VoteVerifier().verify_certificate(certificates[i], committee), len(certificates)
    )


def audit_ledgers(federation: LocalFederation) -> list[int]:
    """Open and audit every validator's ledger; their log sizes."""
    sizes = []
    for setup in federation.validators:
        with Ledger.open(
            setup.home / "ledger.db",
            validator_id=setup.validator_id,
            genesis=federation.genesis(),
        ) as ledger:
            ledger.audit()
            sizes.append(ledger.log_size)
    return sizes


@dataclass(frozen=True)
class Run:
    proved: Proved
    beneath: Beneath
    modes: tuple[ModeResult, ...]
    certificate_checks: tuple[Stats, ...]
    log_sizes: tuple[int, ...]
    committee: Committee


async def run(work_dir: Path, counts: Counts, data_kib: int) -> Run:
    federation = LocalFederation.create(
        work_dir / "federation", validators=VALIDATORS, owners=(OWNER,)
    )
    with federation:
        committee = federation.committee()
        per_mode = 1 + counts.latency + counts.changes
        proved = prove_changes(federation, committee, 2 * per_mode, data_kib)
        beneath = bench_beneath(federation, proved.changes, counts)
        modes = []
        for index, batch in enumerate((True, False)):
            changes = proved.changes[index * per_mode : (index + 1) * per_mode]
            modes.append(await bench_mode(federation, committee, changes, counts, batch=batch))
        checks = tuple(
            bench_certificates(committee, mode.certificates[: counts.certificate_checks])
            for mode in modes
        )
        sizes = audit_ledgers(federation)
    return Run(proved, beneath, tuple(modes), checks, tuple(sizes), committee)


# --- the section --------------------------------------------------------------------------------


def per_change_ms(seconds: float | None, changes: int) -> str:
    return "n/a" if seconds is None else ms(seconds / changes * MS)


def percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.0%}"


def mode_rows(result: Run) -> list[str]:
    lines = [
        "| validators | record latency p50 (ms) | p99 (ms) | N | certified changes/s "
        "| N, in flight | latency under load p50 (ms) | p99 (ms) "
        "| validators' CPU per change (ms) | client's CPU per change (ms) "
        "| cores busy: ours / any process |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in result.modes:
        name = "votes batched (default)" if mode.batch else "`--no-batch` (one vote, one signature)"
        lines.append(
            f"| {name} | {ms(mode.latency.p50)} | {ms(mode.latency.p99)} | {mode.latency.n} "
            f"| **{mode.per_second:.2f}** | {mode.changes}, {mode.in_flight} "
            f"| {ms(mode.loaded.p50)} | {ms(mode.loaded.p99)} "
            f"| {per_change_ms(mode.validator_cpu, mode.changes)} "
            f"| {per_change_ms(mode.client_cpu, mode.changes)} "
            f"| {percent(mode.ours_busy)} / {percent(mode.machine_busy)} |"
        )
    return lines


def beneath_rows(result: Run) -> list[str]:
    b = result.beneath
    batched, single = result.certificate_checks
    lines = [
        "| beneath (benchmark process, no validator running) | rate (ops/s) | per op (ms) |",
        "|---|---:|---:|",
    ]
    for name, value in (
        ("Falcon-1024 sign, raw (pqcrypto `falcon_1024.sign`)", b.falcon_raw_sign),
        ("Falcon-1024 sign (`trustchain.crypto.signatures.SigningKey`)", b.falcon_sign),
        ("hybrid Ed25519 + Falcon-1024 sign (what a vote costs unbatched)", b.hybrid_sign),
        ("hybrid Ed25519 + Falcon-1024 verify", b.hybrid_verify),
    ):
        lines.append(f"| {name} | {value:,.1f} | {ms(MS / value)} |")
    lines += [
        "",
        "| beneath (benchmark process, no validator running) | p50 (ms) | p99 (ms) | N |",
        "|---|---:|---:|---:|",
        f"| `validate_four_proofs` of one new bundle ({PRESET.name}; every validator does "
        f"this for every change) | {ms(b.validate.p50)} | {ms(b.validate.p99)} "
        f"| {b.validate.n} |",
        f"| `sign_ballots` of {b.ballots} ballots, `batch=True` (one hybrid signature over "
        f"their Merkle root) | {ms(b.batch_sign.p50)} | {ms(b.batch_sign.p99)} "
        f"| {b.batch_sign.n} |",
        f"| `sign_ballots` of {b.ballots} ballots, `batch=False` (one hybrid signature each) "
        f"| {ms(b.single_sign.p50)} | {ms(b.single_sign.p99)} | {b.single_sign.n} |",
        "| `VoteVerifier.verify_certificate` (fresh verifier) of a certificate from the "
        f"batched run | {ms(batched.p50)} | {ms(batched.p99)} | {batched.n} |",
        "| `VoteVerifier.verify_certificate` (fresh verifier) of a certificate from the "
        f"`--no-batch` run | {ms(single.p50)} | {ms(single.p99)} | {single.n} |",
    ]
    return lines


def bound_sentence(result: Run) -> str:
    """What bounds the throughput on this machine's cores, from the figures of the run."""
    b = result.beneath
    cores = os.cpu_count() or 1
    validation = VALIDATORS * b.validate.p50
    signatures = VALIDATORS * MS / b.hybrid_sign
    certificates = VALIDATORS * result.certificate_checks[0].p50
    batched = next(m for m in result.modes if m.batch)
    single = next(m for m in result.modes if not m.batch)
    if batched.validator_cpu is None or single.validator_cpu is None:
        return (
            f"Every change is validated by all {VALIDATORS} validators ({ms(validation)} ms of "
            f"CPU at the p50 above) and, unbatched, costs {VALIDATORS} vote signatures "
            f"({ms(signatures)} ms); this machine has no /proc to measure the processes' CPU."
        )
    figures = []
    for mode in (batched, single):
        assert mode.validator_cpu is not None
        validators = mode.validator_cpu / mode.changes * MS
        client = mode.client_cpu / mode.changes * MS
        figures.append(
            f"{ms(validators)} ms of validator CPU + {ms(client)} ms of client CPU "
            f"{'with' if mode.batch else 'without'} batching (so at most "
            f"{cores * MS / (validators + client):.1f} changes/s on {cores} cores; "
            f"{mode.per_second:.2f} measured)"
        )
    saved = (single.validator_cpu / single.changes - batched.validator_cpu / batched.changes) * MS
    rest = batched.validator_cpu / batched.changes * MS - validation - certificates
    compared = (
        "about"
        if abs(saved - signatures) <= 0.15 * signatures
        else "more than"
        if saved > signatures
        else "less than"
    )
    ours = [m.ours_busy or 0.0 for m in (batched, single)]
    machine = [m.machine_busy for m in (batched, single)]
    anyone = [o if b is None else b for o, b in zip(ours, machine, strict=True)]
    if min(ours) >= 0.85:
        bound = "CPU"
    elif min(anyone) >= 0.85:
        bound = "CPU, shared with other processes of this machine during the run"
    else:
        bound = f"not CPU alone (the cores were busy only {min(anyone):.0%} of a run)"
    busy = (
        f"the benchmark's processes kept them {ours[0]:.0%} and {ours[1]:.0%} busy over the "
        f"two throughput runs, all processes {percent(machine[0])} and {percent(machine[1])}"
    )
    return (
        f"**What bounds it: {bound}.** The {VALIDATORS} validators, the client and STOQ share "
        f"{cores} cores ({busy}), "
        f"and every change costs every validator a `validate_four_proofs` ({VALIDATORS} x "
        f"{ms(b.validate.p50)} = {ms(validation)} ms of CPU), a vote signature ({VALIDATORS} x "
        f"{ms(MS / b.hybrid_sign)} = {ms(signatures)} ms when each is signed alone) and a "
        f"certificate check ({VALIDATORS} x {ms(result.certificate_checks[0].p50)} ms): over "
        f"the throughput runs a certified change cost {' and '.join(figures)}. Batching saved "
        f"{ms(saved)} ms of validator CPU per change, {compared} the {ms(signatures)} ms of "
        "signatures it removes (a batch also shares one `core.handle` call and one "
        "`record_locks` transaction); with it the four validations are "
        f"{validation / (batched.validator_cpu / batched.changes * MS):.0%} of the validators' "
        f"CPU, and the other {ms(rest)} ms per change is the rest of the path: STOQ (QUIC and "
        "TLS in Python), protobuf, the asyncio shell and SQLite commits."
    )


def markdown(
    result: Run,
    *,
    command: str,
    load: tuple[float, float],
    elapsed: float,
    data_kib: int,
) -> str:
    p = result.proved
    committee = result.committee
    header = (
        "## Quorum-certified ledger (`benchmarks/ledger.py`)\n\n"
        f"Command: `nox -s bench -- ledger` (runs `{command} --update BENCHMARKS.md`). "
        f"Measured {datetime.date.today().isoformat()} on: {machine(PACKAGES)}. "
        f"1-minute load average {load[0]:.2f} at the start and {load[1]:.2f} at the end of the "
        f"{elapsed:.0f} s run ({os.cpu_count()} CPUs; the end figure counts the benchmark's own "
        f"{VALIDATORS} validator processes and client: the last column of the first table "
        "separates their CPU time from other processes').\n\n"
        f"One `LocalFederation` in a temporary directory (deleted afterwards): {VALIDATORS} "
        f"validators of stake 1 (quorum {committee.quorum_stake} of {committee.total_stake}), "
        f"each its own process (`python -m hypermesh.node.validator`, {PRESET.name} preset, "
        "its SQLite ledger in WAL mode with synchronous=FULL) listening for STOQ on "
        "127.0.0.1, and one owner whose `LedgerClient` runs in the benchmark process. A "
        "record is `LedgerClient.record`: the owner-signed change to all four validators (each "
        "checks the version and lock, runs `validate_four_proofs`, checks the owner "
        "signature, makes the lock durable and signs a vote), the certificate at "
        f"{committee.quorum_stake} verified votes, then the certificate to all four (each "
        "verifies its votes, applies it in one SQLite transaction and appends it to its "
        "Merkle log); it returns once all four answered `applied` (or "
        f"{DEFAULT_STRAGGLER_GRACE:.0f} s after a quorum did). Every change is version 0 of "
        f"a new asset of {data_kib} KiB of random bytes, proved and signed before the "
        f"validators start: proving {len(p.changes)} bundles took {p.prove_total:.1f} s "
        f"({ms(p.prove.p50)} ms p50 each, after a {p.plot_seconds:.1f} s k={PRESET.plot_k} "
        f"plot), the owner's `sign_change` {ms(p.sign.p50)} ms p50; neither is in the "
        f"figures. Bundle {p.bundle_bytes:,} bytes encoded, change {p.change_bytes:,} bytes "
        "(medians). Each mode starts the validators afresh (the ledgers are kept), records "
        "one warm-up change, then N changes one at a time (latency: `time.perf_counter` "
        "around `record`; p99 nearest rank, the largest sample for N < 100), then N changes "
        "from one client with a fixed number in flight (throughput: N / wall time; CPU from "
        "`/proc/<pid>/stat` of the validators and the benchmark process's own process time "
        "over that run)."
    )
    modes = result.modes
    applied = ", ".join(
        f"{m.applied_by_all} of {m.changes} ({'batched' if m.batch else '--no-batch'})"
        for m in modes
    )
    startups = ", ".join(f"{m.startup:.1f} s" for m in modes)
    recorded = sum(m.changes + m.latency.n + 1 for m in modes)
    checks = (
        f"All four validators reported `applied` within the grace for {applied} of the "
        f"throughput changes; the validators were ready {startups} after their start; at the "
        f"end every ledger passed `Ledger.audit()` with log sizes "
        f"{', '.join(str(s) for s in result.log_sizes)} (of {recorded} changes recorded)."
    )
    sections = [
        header,
        "\n".join(mode_rows(result)),
        checks,
        bound_sentence(result),
        "\n".join(beneath_rows(result)),
    ]
    return "\n\n".join(sections)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny N: a smoke run")
    parser.add_argument("--latency", type=int, help="changes recorded one at a time, per mode")
    parser.add_argument("--changes", type=int, help="changes recorded concurrently, per mode")
    parser.add_argument("--in-flight", type=int, help="concurrent records in the throughput run")
    parser.add_argument("--data-kib", type=int, default=4, help="asset size in KiB")
    parser.add_argument("--dir", type=Path, help="where to put the temporary federation")
    parser.add_argument("--update", type=Path, help="markdown file whose ledger section to replace")
    args = parser.parse_args()
    base = QUICK if args.quick else FULL
    counts = Counts(
        latency=args.latency if args.latency is not None else base.latency,
        changes=args.changes if args.changes is not None else base.changes,
        in_flight=args.in_flight if args.in_flight is not None else base.in_flight,
        validate=base.validate,
        rate_seconds=base.rate_seconds,
        rate_repeats=base.rate_repeats,
        ballot_runs=base.ballot_runs,
        certificate_checks=base.certificate_checks,
    )
    if counts.latency < 1 or counts.changes < 1 or counts.in_flight < 1:
        parser.error("--latency, --changes and --in-flight must be at least 1")
    if args.data_kib < 1:
        parser.error("--data-kib must be at least 1")

    load_start = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ledger-bench-") as tmp:
        try:
            result = asyncio.run(run(Path(tmp), counts, args.data_kib))
        except RecordFailed as exc:
            raise SystemExit(f"a change was not recorded: {exc}") from exc
    elapsed = time.perf_counter() - started
    load_end = os.getloadavg()

    command = "python benchmarks/ledger.py" + (" --quick" if args.quick else "")
    for flag, value, default in (
        ("--latency", counts.latency, base.latency),
        ("--changes", counts.changes, base.changes),
        ("--in-flight", counts.in_flight, base.in_flight),
        ("--data-kib", args.data_kib, 4),
    ):
        if value != default:
            command += f" {flag} {value}"
    text = markdown(
        result,
        command=command,
        load=(load_start[0], load_end[0]),
        elapsed=elapsed,
        data_kib=args.data_kib,
    )
    if args.update:
        update_section(args.update, "ledger", text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
