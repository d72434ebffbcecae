"""Acceptance of the quorum-certified asset ledger: four validator processes, f = 1.

One :class:`~trustchain.consensus.federation.LocalFederation` per module -- four validators of
stake 1 (a quorum is 3, so one faulty validator is tolerated) and one owner node -- in a temp
directory, its k=18 plot made once. Every validator is a process on loopback: ``python -m
hypermesh.node.validator`` when honest, ``byzantine.py`` (next to this file) when
:data:`BYZANTINE` misbehaves. The owner proves real bundles (``localhost_testing``; each
bundle once), signs its changes and talks to the validators over STOQ: through
:class:`~hypermesh.node.ledger_client.LedgerClient`, or one request to one validator at a time
(:func:`~hypermesh.node.ledger_client.exchange`) where a test steers who sees what.

What is checked:

* the happy path: three assets, versions 0..2, recorded one after the other, applied by all
  four validators at the same log position under the same root;
* a validator killed with SIGKILL: the other three keep certifying a burst of changes;
* a validator killed again while it catches up on that burst (while it applies certificates):
  its database passes ``PRAGMA integrity_check`` and :meth:`Ledger.audit`, holds a prefix of
  its peers' log, and once restarted it catches up to their log and root;
* one Byzantine validator at a time -- forged vote signatures, equivocating votes, garbage
  answers: certificates still form without it and none counts it wrongly, the client names
  it, an equivocation becomes evidence (the owner's VoteCollector gets both its votes) that
  the honest validators store, and the honest validators' logs stay equal;
* an equivocating owner: two changes of one (asset, version) sent concurrently to different
  validators in different orders never yield two certificates;
* at the end, after SIGTERM: every ledger file is intact and audited, all four hold one log
  (same entries, size and root), no slot has two certified changes anywhere, and the evidence
  each validator holds is exactly what it was given.

State is compared over STOQ (a validator's log read whole with ``CertificatesSince``, its head
-- size and root -- from an ``AssetState``) and in the ledger files once the processes are
gone. Every wait is bounded and fails naming what it waited for; where no event can be
awaited from outside a process (a validator catching up, its ledger file growing) the wait
polls.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from hypermesh.node.ledger_client import (
    InvalidAnswer,
    LedgerClient,
    NotCertified,
    RecordOutcome,
    exchange,
)
from hypermesh.node.validator import member_config
from hypermesh_interfaces.v1 import common_pb2, ledger_pb2
from stoq.config import StoqConfig
from stoq.pool import ConnectionPool
from trustchain.consensus.committee import Member
from trustchain.consensus.federation import LocalFederation, ValidatorSetup
from trustchain.consensus.ledger import Ledger, state_record_bytes
from trustchain.consensus.proofs.bundle import PreviousState
from trustchain.consensus.proofs.presets import LOCALHOST_TESTING
from trustchain.consensus.quorum import VoteCollector
from trustchain.consensus.votes import (
    Ballot,
    VoteVerifier,
    change_digest,
    equivocation,
    sign_change,
)
from trustchain.errors import InvalidVote, LedgerRefusal

from .byzantine import GARBAGE_PREFIX, garbage_for

OWNER = "node"
#: The validator whose place a Byzantine process takes.
BYZANTINE = "validator-3"
#: The validator killed with SIGKILL.
KILLED = "validator-1"
HONEST = "honest"
BYZANTINE_SCRIPT = Path(__file__).with_name("byzantine.py")
STARTUP_SECONDS = 60.0
STOP_SECONDS = 30.0
CATCH_UP_SECONDS = 60.0
#: Changes certified while :data:`KILLED` is down; catching up, it applies them in one call.
BURST = 16
#: CertificatesSince page size when reading a whole log.
PAGE = 64
#: A log index beyond any log: CertificatesSince from it answers only the log size.
BEYOND = (1 << 64) - 1

Slot = tuple[bytes, int]  # (asset id, version)
Entry = tuple[bytes, int, bytes]  # (asset id, version, change digest)


# -- the processes -------------------------------------------------------------------------------


@dataclass
class Process:
    """One validator process: honest, or a Byzantine behaviour of ``byzantine.py``."""

    name: str
    behaviour: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def running(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        self.log_file.flush()
        return f"{self.name} ({self.behaviour}) stderr:\n" + self.log_path.read_text(
            errors="replace"
        )

    def close_files(self) -> None:
        self.log_file.close()
        if self.popen.stdout is not None:
            self.popen.stdout.close()


class Network:
    """The federation, the owner's view of it, and the validator processes."""

    def __init__(self, federation: LocalFederation, logs: Path) -> None:
        self.federation = federation
        self.committee = federation.committee()
        self.names = tuple(setup.name for setup in federation.validators)
        self.logs = logs
        self.processes: dict[str, Process] = {}
        #: Every certificate the owner obtained: slot -> certified change digest.
        self.certified: dict[Slot, bytes] = {}
        #: Evidence each validator accepted from the owner (deterministic encodings).
        self.evidence: dict[str, set[bytes]] = {name: set() for name in self.names}
        self._starts = itertools.count()
        self._assets = itertools.count()
        self._owner_config: StoqConfig | None = None

    # -- who is who

    def setup(self, name: str) -> ValidatorSetup:
        return self.federation.validator(name)

    def vid(self, name: str) -> bytes:
        return self.setup(name).validator_id

    def member(self, name: str) -> Member:
        return self.committee.member(self.vid(name))

    def ids(self, names: Iterable[str]) -> set[bytes]:
        return {self.vid(name) for name in names}

    def ledger_path(self, name: str) -> Path:
        return self.setup(name).home / "ledger.db"

    def owner_config(self) -> StoqConfig:
        """The owner node's STOQ config (its identity; the federation's trust)."""
        if self._owner_config is None:
            self._owner_config = member_config(self.federation, self.federation.owner(OWNER))
        return self._owner_config

    def client(self, *, straggler_grace: float = 2.0) -> LedgerClient:
        return LedgerClient(self.owner_config(), self.committee, straggler_grace=straggler_grace)

    def fresh_asset(self, prefix: str) -> str:
        return f"{prefix}-{next(self._assets)}"

    def note(self, certificate: ledger_pb2.StateCertificate) -> None:
        """Remember a certificate the owner obtained; fail if its slot has another one."""
        stake = certificate.change.proofs.stake
        slot = (bytes(stake.asset_id.id), stake.version)
        digest = change_digest(certificate.change)
        earlier = self.certified.setdefault(slot, digest)
        assert earlier == digest, f"two certificates for asset {slot[0].hex()} v{slot[1]}"

    # -- processes

    def spawn(self, name: str, behaviour: str = HONEST) -> Process:
        """Start ``name``'s process (honest or Byzantine) without waiting for it."""
        earlier = self.processes.get(name)
        assert earlier is None or not earlier.running(), f"{name} is already running"
        if earlier is not None:
            earlier.close_files()
        setup = self.setup(name)
        place = ["--home", str(setup.home), "--federation", str(self.federation.directory)]
        if behaviour == HONEST:
            argv = [sys.executable, "-m", "hypermesh.node.validator", *place]
        else:
            argv = [sys.executable, str(BYZANTINE_SCRIPT), *place, "--behaviour", behaviour]
        log_path = self.logs / f"{next(self._starts):02d}-{name}-{behaviour}.log"
        log_file = log_path.open("wb")
        popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log_file, bufsize=0)
        process = Process(name, behaviour, popen, log_path, log_file)
        self.processes[name] = process
        return process

    def start(self, name: str, behaviour: str = HONEST) -> None:
        """Start ``name``'s process and wait until it prints ``ready <its port>``."""
        self.wait_ready(self.spawn(name, behaviour))

    def wait_ready(self, process: Process) -> None:
        stdout = process.popen.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], STARTUP_SECONDS)
        assert ready, f"{process.name} printed nothing within {STARTUP_SECONDS} s\n{process.log()}"
        line = stdout.readline().decode().strip()
        assert line == f"ready {self.setup(process.name).port}", f"{line!r}\n{process.log()}"

    def stop(self, name: str) -> None:
        """SIGTERM ``name``'s process; it must exit 0."""
        process = self.processes[name]
        process.popen.send_signal(signal.SIGTERM)
        code = process.popen.wait(timeout=STOP_SECONDS)
        assert code == 0, f"{name} exited {code} on SIGTERM\n{process.log()}"

    def kill(self, name: str) -> None:
        """SIGKILL ``name``'s process and reap it: it is gone."""
        process = self.processes[name]
        process.popen.send_signal(signal.SIGKILL)
        code = process.popen.wait(timeout=STOP_SECONDS)
        assert code == -signal.SIGKILL, f"{name} exited {code}, not by SIGKILL\n{process.log()}"

    def honest_running(self) -> list[str]:
        return [
            name
            for name in self.names
            if name in self.processes
            and self.processes[name].running()
            and self.processes[name].behaviour == HONEST
        ]

    def close(self) -> None:
        for process in self.processes.values():
            if process.running():
                process.popen.kill()
                process.popen.wait(timeout=STOP_SECONDS)
            process.close_files()


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    directory = tmp_path_factory.mktemp("ledger-validators")
    federation = LocalFederation.create(directory / "federation", validators=4, owners=(OWNER,))
    logs = directory / "logs"
    logs.mkdir()
    opened = Network(federation, logs)
    try:
        assert opened.committee.quorum_stake == 3
        assert opened.committee.total_stake == 4
        for name in opened.names:
            opened.spawn(name)
        for name in opened.names:
            opened.wait_ready(opened.processes[name])
        yield opened
    finally:
        opened.close()
        federation.close()


# -- proving -------------------------------------------------------------------------------------


def new_change(
    network: Network, asset: str, content: bytes, previous: PreviousState | None = None
) -> ledger_pb2.AssetStateChange:
    """The owner-signed change of ``asset``'s next version (version 0 without ``previous``),
    its four proofs made now."""
    proofs = network.federation.prove(
        OWNER,
        asset,
        content,
        common_pb2.ResourceSpec(storage_bytes=len(content)),
        LOCALHOST_TESTING,
        previous,
    )
    return sign_change(proofs, network.committee.epoch, network.federation.signer(OWNER))


def slot_of(change: ledger_pb2.AssetStateChange) -> Slot:
    stake = change.proofs.stake
    return bytes(stake.asset_id.id), stake.version


def certificate_digest(change: ledger_pb2.AssetStateChange) -> bytes:
    """``StateHash.certificate_digest`` of ``change`` once certified."""
    asset, version = slot_of(change)
    ballot = Ballot(change.epoch, bytes(32), asset, version, change_digest(change))
    return hashlib.sha256(state_record_bytes(ballot)).digest()


def voters(certificate: ledger_pb2.StateCertificate) -> set[bytes]:
    return {bytes(vote.validator.id) for vote in certificate.votes}


# -- asking over STOQ -----------------------------------------------------------------------------


def change_request(change: ledger_pb2.AssetStateChange) -> ledger_pb2.LedgerRequest:
    return ledger_pb2.LedgerRequest(change=change)


async def ask(
    pool: ConnectionPool, network: Network, name: str, request: ledger_pb2.LedgerRequest
) -> ledger_pb2.LedgerResponse:
    return await exchange(pool, network.member(name), request)


async def ask_each(
    pool: ConnectionPool,
    network: Network,
    names: Sequence[str],
    request: ledger_pb2.LedgerRequest,
) -> dict[str, ledger_pb2.LedgerResponse]:
    """``request`` to each of ``names`` at once; their answers by name."""
    answers = await asyncio.gather(*(ask(pool, network, name, request) for name in names))
    return dict(zip(names, answers, strict=True))


async def certificates(
    pool: ConnectionPool, network: Network, name: str, index: int, limit: int
) -> ledger_pb2.CertificateBatch:
    since = ledger_pb2.CertificatesSince(log_index=index, limit=limit)
    answer = await ask(pool, network, name, ledger_pb2.LedgerRequest(certificates_since=since))
    assert answer.WhichOneof("body") == "certificates", f"{name} answered {answer}"
    return answer.certificates


async def asset_state(
    pool: ConnectionPool, network: Network, name: str, asset: bytes
) -> ledger_pb2.AssetState:
    request = ledger_pb2.LedgerRequest(asset_state=common_pb2.AssetId(id=asset))
    answer = await ask(pool, network, name, request)
    assert answer.WhichOneof("body") == "asset_state", f"{name} answered {answer}"
    return answer.asset_state


@dataclass(frozen=True)
class Head:
    """A validator's log size and root (the empty log's root is given as b"")."""

    size: int
    root: bytes


async def head(pool: ConnectionPool, network: Network, name: str) -> Head:
    """``name``'s log head: the size from a CertificatesSince beyond the log, the root from the
    AssetState of its last entry's asset (its ``recorded`` StateHash is at the current size)."""
    size = (await certificates(pool, network, name, BEYOND, 1)).log_size
    if size == 0:
        return Head(0, b"")
    (last,) = (await certificates(pool, network, name, size - 1, 1)).certificates
    state = await asset_state(pool, network, name, slot_of(last.change)[0])
    return Head(state.recorded.log_size, state.recorded.log_root)


async def heads(pool: ConnectionPool, network: Network, names: Sequence[str]) -> dict[str, Head]:
    found = await asyncio.gather(*(head(pool, network, name) for name in names))
    return dict(zip(names, found, strict=True))


async def read_log(pool: ConnectionPool, network: Network, name: str) -> list[Entry]:
    """``name``'s whole log, in its order."""
    entries: list[Entry] = []
    while True:
        page = await certificates(pool, network, name, len(entries), PAGE)
        for certificate in page.certificates:
            asset, version = slot_of(certificate.change)
            entries.append((asset, version, change_digest(certificate.change)))
        if not page.certificates or len(entries) >= page.log_size:
            return entries


async def read_logs(
    pool: ConnectionPool, network: Network, names: Sequence[str]
) -> dict[str, list[Entry]]:
    logs = await asyncio.gather(*(read_log(pool, network, name) for name in names))
    return dict(zip(names, logs, strict=True))


def assert_one_log(network: Network, names: Sequence[str]) -> list[Entry]:
    """``names`` hold the same log entries under the same head; that log."""

    async def read() -> tuple[dict[str, list[Entry]], dict[str, Head]]:
        async with ConnectionPool(network.owner_config()) as pool:
            return await read_logs(pool, network, names), await heads(pool, network, names)

    logs, found = asyncio.run(read())
    first = names[0]
    for name in names[1:]:
        assert logs[name] == logs[first], f"{name}'s log differs from {first}'s"
    assert len(set(found.values())) == 1, found
    assert found[first].size == len(logs[first])
    for asset, version, digest in logs[first]:
        assert network.certified.get((asset, version), digest) == digest
    return logs[first]


def wait_caught_up(network: Network, names: Sequence[str]) -> None:
    """Wait until each of ``names`` has the head of an honest validator not among them."""
    reference = next(name for name in network.honest_running() if name not in names)

    async def poll() -> None:
        async with ConnectionPool(network.owner_config()) as pool:
            wanted = await head(pool, network, reference)
            found: dict[str, Head] = {}
            try:
                async with asyncio.timeout(CATCH_UP_SECONDS):
                    while True:
                        found = await heads(pool, network, names)
                        if all(h == wanted for h in found.values()):
                            return
                        await asyncio.sleep(0.1)
            except TimeoutError:
                logs = "\n".join(network.processes[name].log() for name in names)
                raise AssertionError(
                    f"{names} did not reach {reference}'s log of size {wanted.size} within "
                    f"{CATCH_UP_SECONDS} s: {found}\n{logs}"
                ) from None

    asyncio.run(poll())


def ensure_honest(network: Network) -> None:
    """Every validator runs honestly and holds the log the others hold (restarting any that
    is down or Byzantine and waiting until it has caught up)."""
    restarted = []
    for name in network.names:
        process = network.processes.get(name)
        if process is not None and process.running() and process.behaviour == HONEST:
            continue
        if process is not None and process.running():
            network.stop(name)
        network.start(name)
        restarted.append(name)
    if restarted:
        wait_caught_up(network, restarted)


async def apply_everywhere(
    network: Network, certificate: ledger_pb2.StateCertificate
) -> dict[str, ledger_pb2.LedgerResponse]:
    """Send ``certificate`` to every validator at once; their answers."""
    request = ledger_pb2.LedgerRequest(certificate=certificate)
    async with ConnectionPool(network.owner_config()) as pool:
        return await ask_each(pool, network, network.names, request)


def assert_applied_at_one_place(answers: dict[str, ledger_pb2.LedgerResponse]) -> None:
    """Every answer is ``applied``, all with one StateHash (index, root, size)."""
    assert {a.WhichOneof("body") for a in answers.values()} == {"applied"}, answers
    assert len({a.applied.SerializeToString() for a in answers.values()}) == 1, answers


# -- the ledger files -----------------------------------------------------------------------------


def log_leaves(path: Path) -> int:
    """How many log entries the ledger file at ``path`` holds (its ``log_leaves`` rows)."""
    with sqlite3.connect(path) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM log_leaves").fetchone()
    conn.close()
    assert isinstance(count, int)
    return count


def integrity(path: Path) -> list[str]:
    """SQLite's ``PRAGMA integrity_check`` of the file: ``["ok"]`` when sound."""
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def open_ledger(network: Network, name: str) -> Ledger:
    return Ledger.open(
        network.ledger_path(name),
        validator_id=network.vid(name),
        genesis=network.federation.genesis(),
    )


def ledger_entries(ledger: Ledger) -> list[Entry]:
    entries: list[Entry] = []
    while len(entries) < ledger.log_size:
        for certificate in ledger.certificates_since(len(entries), PAGE):
            asset, version = slot_of(certificate.change)
            entries.append((asset, version, change_digest(certificate.change)))
    return entries


# -- the happy path ------------------------------------------------------------------------------

HISTORY_ASSETS = ("alpha", "beta", "gamma")
HISTORY_VERSIONS = 3


@dataclass(frozen=True)
class Recorded:
    change: ledger_pb2.AssetStateChange
    outcome: RecordOutcome


@pytest.fixture(scope="module")
def history(network: Network) -> list[Recorded]:
    """Versions 0..2 of three assets, recorded one change after the other (version by version,
    the assets interleaved) by one LedgerClient with all four validators up."""
    ensure_honest(network)
    previous: dict[str, PreviousState | None] = dict.fromkeys(HISTORY_ASSETS)
    changes = []
    for version in range(HISTORY_VERSIONS):
        for asset in HISTORY_ASSETS:
            change = new_change(
                network, asset, f"{asset} {version};".encode() * 90, previous[asset]
            )
            previous[asset] = PreviousState.of(change.proofs)
            changes.append(change)

    async def record() -> list[Recorded]:
        async with network.client() as client:
            return [Recorded(change, await client.record(change)) for change in changes]

    recorded = asyncio.run(record())
    for entry in recorded:
        network.note(entry.outcome.certificate)
    return recorded


def test_happy_path_every_validator_applies_every_change_at_one_place(
    network: Network, history: list[Recorded]
) -> None:
    everyone = network.ids(network.names)
    verifier = VoteVerifier()
    start = next(iter(history[0].outcome.states.values())).log_index
    for offset, entry in enumerate(history):
        outcome = entry.outcome
        assert outcome.certificate.change == entry.change
        assert verifier.verify_certificate(outcome.certificate, network.committee).slot == (
            0,
            *slot_of(entry.change),
        )
        assert len(voters(outcome.certificate)) >= network.committee.quorum_stake
        assert set(outcome.states) == everyone, dict(outcome.not_applied)
        assert dict(outcome.refusals) == {}
        assert dict(outcome.not_applied) == {}
        assert outcome.evidence == ()
        # All four applied it at the same index of a log of the same size and root.
        states = {state.SerializeToString() for state in outcome.states.values()}
        assert len(states) == 1
        state = next(iter(outcome.states.values()))
        assert (state.log_index, state.log_size) == (start + offset, start + offset + 1)
        assert state.certificate_digest == certificate_digest(entry.change)
    # Asked now, every validator reports version 2 of each asset, recorded at the same place
    # under the same (current) root.
    latest = {slot_of(e.change)[0]: e.change for e in history[-len(HISTORY_ASSETS) :]}

    async def ask_states() -> dict[bytes, dict[str, ledger_pb2.AssetState]]:
        async with ConnectionPool(network.owner_config()) as pool:
            found = {}
            for asset in latest:
                answers = await asyncio.gather(
                    *(asset_state(pool, network, name, asset) for name in network.names)
                )
                found[asset] = dict(zip(network.names, answers, strict=True))
            return found

    for asset, states_by_name in asyncio.run(ask_states()).items():
        change = latest[asset]
        recorded = {s.recorded.SerializeToString() for s in states_by_name.values()}
        assert len(recorded) == 1
        for reported in states_by_name.values():
            assert (reported.asset_id.id, reported.version) == (asset, HISTORY_VERSIONS - 1)
            assert reported.state_hash == change_digest(change)
            assert reported.recorded.certificate_digest == certificate_digest(change)
    log = assert_one_log(network, network.names)
    assert log[start : start + len(history)] == [
        (*slot_of(e.change), change_digest(e.change)) for e in history
    ]


# -- a validator killed ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Burst:
    """Changes certified while :data:`KILLED` was down (killed when its log had
    ``killed_at`` entries)."""

    changes: tuple[ledger_pb2.AssetStateChange, ...]
    outcomes: tuple[RecordOutcome, ...]
    killed_at: int


@pytest.fixture(scope="module")
def burst(network: Network) -> Burst:
    """SIGKILL :data:`KILLED`, then record :data:`BURST` new assets one after the other."""
    ensure_honest(network)
    changes = tuple(
        new_change(network, network.fresh_asset("burst"), f"burst {i};".encode() * 60)
        for i in range(BURST)
    )

    async def killed_head() -> Head:
        async with ConnectionPool(network.owner_config()) as pool:
            return await head(pool, network, KILLED)

    killed_at = asyncio.run(killed_head()).size
    network.kill(KILLED)

    async def record() -> list[RecordOutcome]:
        # The three validators that are up are the quorum: nobody to wait for after them.
        async with network.client(straggler_grace=0.0) as client:
            return [await client.record(change) for change in changes]

    outcomes = tuple(asyncio.run(record()))
    for outcome in outcomes:
        network.note(outcome.certificate)
    return Burst(changes, outcomes, killed_at)


def test_certification_continues_with_a_validator_killed(network: Network, burst: Burst) -> None:
    killed = network.vid(KILLED)
    up = network.ids(network.names) - {killed}
    assert network.processes[KILLED].popen.returncode == -signal.SIGKILL
    indices = []
    for change, outcome in zip(burst.changes, burst.outcomes, strict=True):
        assert outcome.certificate.change == change
        VoteVerifier().verify_certificate(outcome.certificate, network.committee)
        assert voters(outcome.certificate) == up
        assert set(outcome.states) == up
        assert set(outcome.not_applied) == {killed}
        assert len({state.SerializeToString() for state in outcome.states.values()}) == 1
        state = next(iter(outcome.states.values()))
        assert state.certificate_digest == certificate_digest(change)
        indices.append(state.log_index)
    assert indices == list(range(indices[0], indices[0] + BURST))
    assert_one_log(network, [name for name in network.names if name != KILLED])


def kill_once_growing(network: Network, name: str, size: int) -> None:
    """SIGKILL ``name`` as soon as its ledger file holds more than ``size`` log entries (it is
    applying certificates). Polls the file: nothing outside the process can await that."""
    process = network.processes[name]
    path = network.ledger_path(name)
    deadline = time.monotonic() + CATCH_UP_SECONDS
    with sqlite3.connect(path) as conn:
        while True:
            (count,) = conn.execute("SELECT COUNT(*) FROM log_leaves").fetchone()
            if count > size:
                network.kill(name)
                break
            assert process.running(), f"{name} exited on its own\n{process.log()}"
            assert time.monotonic() < deadline, (
                f"{name}'s log stayed at {count} entries for {CATCH_UP_SECONDS} s\n{process.log()}"
            )
            time.sleep(0.001)
    conn.close()


def test_a_validator_killed_while_catching_up_is_intact_and_catches_up(
    network: Network, burst: Burst
) -> None:
    process = network.processes[KILLED]
    assert not process.running(), "run right after the burst, while validator-1 is still down"
    path = network.ledger_path(KILLED)
    assert log_leaves(path) == burst.killed_at
    others = [name for name in network.names if name != KILLED]
    log = assert_one_log(network, others)
    assert len(log) == burst.killed_at + BURST
    # Started again, it reads a peer's log and applies the burst it missed: kill it then.
    network.spawn(KILLED)
    kill_once_growing(network, KILLED, burst.killed_at)
    assert integrity(path) == ["ok"]
    with open_ledger(network, KILLED) as ledger:
        ledger.audit()
        size = ledger.log_size
        held = ledger_entries(ledger)
    assert burst.killed_at < size < len(log), (
        f"killed at {size} entries: not while it applied the {BURST} it missed"
    )
    assert held == log[:size]
    # Started once more, it catches up to the others' log and root.
    network.start(KILLED)
    wait_caught_up(network, [KILLED])
    assert assert_one_log(network, network.names) == log


# -- Byzantine validators --------------------------------------------------------------------------


@contextmanager
def byzantine(network: Network, behaviour: str) -> Iterator[None]:
    """:data:`BYZANTINE` misbehaves as ``behaviour`` says for the block, then runs honestly
    again and catches up on what it missed."""
    ensure_honest(network)
    network.stop(BYZANTINE)
    network.start(BYZANTINE, behaviour)
    yield
    network.stop(BYZANTINE)
    network.start(BYZANTINE)
    wait_caught_up(network, [BYZANTINE])


@dataclass(frozen=True)
class Stuck:
    """A change ``wanted`` recorded after validator-0 was locked (``locked``) to another
    change of its slot: with the Byzantine validator's answer unusable, no quorum."""

    locked: ledger_pb2.LedgerResponse
    failed: NotCertified


async def record_against_a_lock(
    network: Network,
    client: LedgerClient,
    pool: ConnectionPool,
    locked: ledger_pb2.AssetStateChange,
    wanted: ledger_pb2.AssetStateChange,
) -> Stuck:
    answer = await ask(pool, network, "validator-0", change_request(locked))
    with pytest.raises(NotCertified) as failed:
        await client.record(wanted)
    return Stuck(answer, failed.value)


def assert_stuck(
    network: Network, stuck: Stuck, wanted: ledger_pb2.AssetStateChange, invalid: str
) -> None:
    """Validator-0 refused ``wanted`` for its lock, the Byzantine validator's answer was
    unusable (starting ``invalid``), so no certificate; the failure names both."""
    failed = stuck.failed
    assert stuck.locked.WhichOneof("body") == "vote"
    locked_by = network.vid("validator-0")
    assert set(failed.refusals) == {locked_by}
    refused = failed.refusals[locked_by]
    assert refused.reason is LedgerRefusal.CONFLICT
    assert refused.locked_vote == stuck.locked.vote
    byz = network.vid(BYZANTINE)
    assert set(failed.invalid) == {byz}
    assert failed.invalid[byz].startswith(invalid), failed.invalid[byz]
    assert dict(failed.unreachable) == {}
    assert failed.evidence == ()
    asset, version = slot_of(wanted)
    assert str(failed).startswith(f"no quorum of votes for asset {asset.hex()} version {version}; ")


def test_byzantine_forged_vote_signatures(network: Network) -> None:
    byz = network.vid(BYZANTINE)
    honest = [name for name in network.names if name != BYZANTINE]
    fine = new_change(network, network.fresh_asset("forged"), b"certified anyway;" * 70)
    direct = new_change(network, network.fresh_asset("forged"), b"asked directly;" * 70)
    contested = network.fresh_asset("forged")
    locked = new_change(network, contested, b"locked first;" * 70)
    wanted = new_change(network, contested, b"wanted after;" * 70)
    # Votes for ``direct`` of the forger and two honest validators: no quorum of valid ones.
    direct_voters = [BYZANTINE, "validator-1", "validator-2"]

    @dataclass(frozen=True)
    class Seen:
        outcome: RecordOutcome
        direct_votes: dict[str, ledger_pb2.LedgerResponse]
        forged_certificate: ledger_pb2.StateCertificate
        certificate_answers: dict[str, ledger_pb2.LedgerResponse]
        stuck: Stuck

    async def scenario() -> Seen:
        async with network.client() as client, ConnectionPool(network.owner_config()) as pool:
            outcome = await client.record(fine)
            votes = await ask_each(pool, network, direct_voters, change_request(direct))
            forged = ledger_pb2.StateCertificate(
                change=direct,
                votes=sorted(
                    (answer.vote for answer in votes.values()), key=lambda v: bytes(v.validator.id)
                ),
            )
            refused = await ask_each(
                pool, network, honest, ledger_pb2.LedgerRequest(certificate=forged)
            )
            stuck = await record_against_a_lock(network, client, pool, locked, wanted)
            return Seen(outcome, votes, forged, refused, stuck)

    with byzantine(network, "forged-signatures"):
        seen = asyncio.run(scenario())
        assert_one_log(network, honest)
    outcome = seen.outcome
    network.note(outcome.certificate)
    # The certificate is made of the three honest votes; the forger's vote is not in it.
    assert voters(outcome.certificate) == network.ids(honest)
    VoteVerifier().verify_certificate(outcome.certificate, network.committee)
    assert network.ids(honest) <= set(outcome.states)
    assert len({outcome.states[v].SerializeToString() for v in network.ids(honest)}) == 1
    # Its vote is for the right ballot, and its signature does not verify.
    assert {a.WhichOneof("body") for a in seen.direct_votes.values()} == {"vote"}
    forged_vote = seen.direct_votes[BYZANTINE].vote
    assert Ballot.of(forged_vote) == Ballot.for_change(direct, byz)
    with pytest.raises(InvalidVote) as rejected:
        VoteVerifier().verify(forged_vote, network.committee)
    assert str(rejected.value).startswith("vote signature does not verify: ")
    # A certificate counting it is refused by every honest validator.
    index = [bytes(v.validator.id) for v in seen.forged_certificate.votes].index(byz)
    for name, answer in seen.certificate_answers.items():
        assert answer.refusal.reason == ledger_pb2.LEDGER_REFUSAL_INVALID_CERTIFICATE, name
        assert answer.refusal.detail.startswith(
            f"vote {index}: vote signature does not verify: "
        ), answer.refusal.detail
    # Where its vote is needed, there is no certificate, and the client says why.
    assert_stuck(network, seen.stuck, wanted, "vote signature does not verify: ")


def test_byzantine_equivocating_votes_become_evidence(network: Network) -> None:
    byz = network.vid(BYZANTINE)
    honest = [name for name in network.names if name != BYZANTINE]
    contested = network.fresh_asset("equivocated")
    first = new_change(network, contested, b"first change;" * 70)
    second = new_change(network, contested, b"second change;" * 70)
    after = new_change(network, network.fresh_asset("equivocated"), b"afterwards;" * 70)
    collectors = {
        "first": VoteCollector(first, network.committee),
        "second": VoteCollector(second, network.committee),
    }

    @dataclass(frozen=True)
    class Seen:
        answers: dict[str, dict[str, ledger_pb2.LedgerResponse]]  # by change, by validator
        evidence_answers: dict[str, ledger_pb2.LedgerResponse]
        applied: dict[str, ledger_pb2.LedgerResponse]
        failed: NotCertified
        outcome: RecordOutcome

    async def scenario() -> Seen:
        async with network.client() as client, ConnectionPool(network.owner_config()) as pool:
            # The owner asks everyone about the first change, then everyone about the second,
            # and gives each collector every answer it got for the slot.
            answers = {
                label: await ask_each(pool, network, network.names, change_request(change))
                for label, change in (("first", first), ("second", second))
            }
            for collector in collectors.values():
                for by_name in answers.values():
                    for name, answer in by_name.items():
                        collector.add(network.vid(name), answer)
            (evidence,) = collectors["first"].evidence
            evidence_answers = await ask_each(
                pool, network, honest, ledger_pb2.LedgerRequest(evidence=evidence)
            )
            certificate = collectors["first"].certificate
            assert certificate is not None
            applied = await apply_everywhere(network, certificate)
            with pytest.raises(NotCertified) as failed:
                await client.record(second)
            outcome = await client.record(after)
            return Seen(answers, evidence_answers, applied, failed.value, outcome)

    with byzantine(network, "equivocation"):
        seen = asyncio.run(scenario())
        assert_one_log(network, honest)
    failed, outcome = seen.failed, seen.outcome
    verifier = VoteVerifier()
    # The honest validators voted for the first change and refused the second for it.
    for name in honest:
        vote = seen.answers["first"][name].vote
        assert Ballot.of(vote) == Ballot.for_change(first, network.vid(name))
        refusal = seen.answers["second"][name].refusal
        assert refusal.reason == ledger_pb2.LEDGER_REFUSAL_CONFLICT
        assert refusal.locked_vote == vote
    # The Byzantine validator validly voted for both.
    byz_first = seen.answers["first"][BYZANTINE].vote
    byz_second = seen.answers["second"][BYZANTINE].vote
    assert verifier.verify(byz_first, network.committee) == Ballot.for_change(first, byz)
    assert verifier.verify(byz_second, network.committee) == Ballot.for_change(second, byz)
    # Only the first change is certified; the owner holds the evidence naming the equivocator.
    certificate = collectors["first"].certificate
    assert certificate is not None
    assert collectors["second"].certificate is None
    assert collectors["second"].hopeless
    network.note(certificate)
    expected = ledger_pb2.Evidence(
        equivocation=ledger_pb2.Equivocation(first=byz_first, second=byz_second)
    )
    assert collectors["first"].evidence == [expected]
    assert collectors["second"].evidence == [
        ledger_pb2.Evidence(
            equivocation=ledger_pb2.Equivocation(first=byz_second, second=byz_first)
        )
    ]
    assert equivocation(byz_first, byz_second, network.committee, verifier) == expected
    assert collectors["first"].invalid == {}
    assert collectors["second"].invalid == {}
    # The honest validators accepted it (the final test finds it in their ledgers).
    assert set(seen.evidence_answers) == set(honest)
    for answer in seen.evidence_answers.values():
        assert answer.WhichOneof("body") == "accepted"
        assert answer.accepted is True
    for name in honest:
        network.evidence[name].add(expected.SerializeToString(deterministic=True))
    # Everyone applied the certificate at the same place; the second change never certifies.
    assert_applied_at_one_place(seen.applied)
    assert len(failed.refusals) >= 2
    for refused in failed.refusals.values():
        assert refused.reason is LedgerRefusal.WRONG_VERSION
        assert refused.detail.endswith("version 0 is already recorded (recorded version 0)")
    assert set(failed.refusals) <= network.ids(honest)
    # Changes keep being recorded by everyone.
    network.note(outcome.certificate)
    assert set(outcome.states) == network.ids(network.names)
    assert len({state.SerializeToString() for state in outcome.states.values()}) == 1


def test_byzantine_garbage_answers(network: Network) -> None:
    byz = network.vid(BYZANTINE)
    honest = [name for name in network.names if name != BYZANTINE]
    fine = new_change(network, network.fresh_asset("garbage"), b"certified anyway;" * 70)
    contested = network.fresh_asset("garbage")
    locked = new_change(network, contested, b"locked first;" * 70)
    wanted = new_change(network, contested, b"wanted after;" * 70)
    request = ledger_pb2.LedgerRequest(asset_state=common_pb2.AssetId(id=bytes(32)))

    async def scenario() -> tuple[RecordOutcome, bytes, InvalidAnswer, Stuck]:
        async with network.client() as client, ConnectionPool(network.owner_config()) as pool:
            outcome = await client.record(fine)
            member = network.member(BYZANTINE)
            stream = await pool.open_stream(
                member.host, member.port, server_name=member.name, peer_id=member.validator_id
            )
            await stream.send(request.SerializeToString(), end_stream=True)
            raw = await stream.receive()
            with pytest.raises(InvalidAnswer) as unusable:
                await ask(pool, network, BYZANTINE, request)
            stuck = await record_against_a_lock(network, client, pool, locked, wanted)
            return outcome, raw, unusable.value, stuck

    with byzantine(network, "garbage"):
        outcome, raw, unusable, stuck = asyncio.run(scenario())
        assert_one_log(network, honest)
    name = network.member(BYZANTINE).name
    assert raw == garbage_for(request.SerializeToString())
    assert raw.startswith(GARBAGE_PREFIX)
    assert unusable.validator_id == byz
    assert unusable.detail.startswith(f"{name}: not a LedgerResponse: ")
    network.note(outcome.certificate)
    assert voters(outcome.certificate) == network.ids(honest)
    assert set(outcome.states) == network.ids(honest)
    assert set(outcome.not_applied) == {byz}
    assert outcome.not_applied[byz].startswith(f"{name}: not a LedgerResponse: ")
    assert len({state.SerializeToString() for state in outcome.states.values()}) == 1
    assert_stuck(network, stuck, wanted, f"{name}: not a LedgerResponse: ")


# -- an equivocating owner -------------------------------------------------------------------------


@given(
    order=st.permutations(("validator-0", "validator-1", "validator-2", "validator-3")),
    split=st.integers(min_value=1, max_value=3),
    together=st.booleans(),
)
@settings(max_examples=6, deadline=None)
def test_an_equivocating_owner_never_gets_two_certificates(
    network: Network, order: list[str], split: int, together: bool
) -> None:
    """Changes A and B of one slot: the first ``split`` validators of ``order`` get A first,
    the others B first, then each gets the other change -- after answering the first, or
    (``together``) at the same time, so its own batching decides which comes first."""
    ensure_honest(network)
    asset = network.fresh_asset("contested")
    changes = {
        "A": new_change(network, asset, b"change A;" * 70),
        "B": new_change(network, asset, b"change B;" * 70),
    }
    firsts = {name: ("A" if index < split else "B") for index, name in enumerate(order)}

    async def to(
        pool: ConnectionPool, name: str
    ) -> tuple[str, dict[str, ledger_pb2.LedgerResponse]]:
        one = firsts[name]
        other = "B" if one == "A" else "A"
        requests = (change_request(changes[one]), change_request(changes[other]))
        if together:
            answers = await asyncio.gather(*(ask(pool, network, name, r) for r in requests))
        else:
            answers = [await ask(pool, network, name, r) for r in requests]
        return name, {one: answers[0], other: answers[1]}

    async def send() -> dict[str, dict[str, ledger_pb2.LedgerResponse]]:
        async with ConnectionPool(network.owner_config()) as pool:
            return dict(await asyncio.gather(*(to(pool, name) for name in order)))

    answers = asyncio.run(send())
    collectors = {
        label: VoteCollector(change, network.committee) for label, change in changes.items()
    }
    voted = {}
    for name, by_label in answers.items():
        kinds = {label: str(answer.WhichOneof("body")) for label, answer in by_label.items()}
        # Every validator voted for exactly one of the two and refused the other for it.
        assert sorted(kinds.values()) == ["refusal", "vote"], (name, by_label)
        (label,) = (label for label, kind in kinds.items() if kind == "vote")
        (other,) = set(changes) - {label}
        assert by_label[other].refusal.reason == ledger_pb2.LEDGER_REFUSAL_CONFLICT
        assert by_label[other].refusal.locked_vote == by_label[label].vote
        voted[name] = label
        for collector in collectors.values():
            for answer in by_label.values():
                collector.add(network.vid(name), answer)
    if not together:
        assert voted == firsts
    made = {label: c.certificate for label, c in collectors.items() if c.certificate is not None}
    counts = {label: list(voted.values()).count(label) for label in changes}
    assert set(made) == {label for label, count in counts.items() if count >= 3}
    assert len(made) <= 1
    for collector in collectors.values():
        assert collector.evidence == []
        assert collector.invalid == {}
    event(f"certified: {', '.join(made) or 'none'}")
    for certificate in made.values():
        network.note(certificate)
        assert_applied_at_one_place(asyncio.run(apply_everywhere(network, certificate)))


# -- the end ---------------------------------------------------------------------------------------


def test_sigterm_leaves_four_intact_ledgers_with_one_log(network: Network) -> None:
    ensure_honest(network)
    for name in network.names:
        network.stop(name)
    found = {}
    for name in network.names:
        path = network.ledger_path(name)
        assert integrity(path) == ["ok"]
        with open_ledger(network, name) as ledger:
            ledger.audit()
            entries = ledger_entries(ledger)
            found[name] = (ledger.log_size, ledger.log_root(), entries)
            evidence = {e.SerializeToString(deterministic=True) for e in ledger.evidence()}
        assert evidence == network.evidence[name], name
    sizes_and_roots = {(size, root) for size, root, _ in found.values()}
    assert len(sizes_and_roots) == 1, sizes_and_roots
    logs = [entries for _, _, entries in found.values()]
    assert all(entries == logs[0] for entries in logs)
    slots = {(asset, version): digest for asset, version, digest in logs[0]}
    assert len(slots) == len(logs[0])  # one certificate per slot
    # Every certificate the owner obtained was applied, and is the only one of its slot.
    for (asset, version), digest in network.certified.items():
        assert slots[(asset, version)] == digest, f"asset {asset.hex()} v{version}"
