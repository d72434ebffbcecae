"""``hypermesh demo``: a local network records this machine's resources as certified assets.

What it does, every step for real (nothing is simulated; progress lines with timings go to
stderr, the tables to stdout):

1. picks a data directory: ``--data-dir`` (created if needed; it must not already hold a
   federation), else a new temporary directory removed at the end;
2. creates a :class:`~trustchain.consensus.federation.LocalFederation` in ``<data>/federation``:
   a TrustChain root CA with entity intermediates for the validators and the nodes, a CT log,
   node certificates, stake registries and the genesis committee;
3. starts the validators, one process each (``python -m hypermesh.node.validator --home H
   --federation F``), and waits until every one prints ``ready <port>`` (its STOQ endpoint
   listens on loopback);
4. detects this machine's CPU, memory and the storage of the data directory
   (:mod:`hypermesh.adapters`); for each, the owner node proves version 0 of an asset whose
   content is the resource's descriptor and which offers its ``ResourceSpec`` -- all four
   proofs at the ``localhost_testing`` preset (the owner's k=18 plot is made once) -- checks
   them itself, signs the change and has the committee certify and apply it over STOQ
   (:class:`~hypermesh.node.ledger_client.LedgerClient`);
5. asks every validator for every asset's recorded state and prints the tables: the assets
   (figures, id, version, state hash, certificate votes and stake, log position), the proofs
   (prove and verify time of each) and the validators (log size and root, which agree when
   they applied the same certificates in the same order);
6. stops the validators (SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT` seconds) and exits
   0 -- or 1 with the reason if any step failed.

Per-proof prove times come from
:func:`~trustchain.consensus.proofs.bundle.prove_four_proofs`'s ``on_step`` hook, verify times
from each verdict of :func:`~trustchain.consensus.proofs.bundle.validate_four_proofs`. PoTime is
the VDF plus the proof-of-history segment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

from hypermesh.adapters import detect_all
from hypermesh.adapters.resources import Resource
from hypermesh.node.ledger_client import LedgerClient, RecordOutcome
from hypermesh.node.validator import member_config
from hypermesh_interfaces.v1 import common_pb2, ledger_pb2
from stoq.errors import StoqError
from trustchain.consensus.committee import Committee
from trustchain.consensus.federation import LocalFederation, ValidatorSetup
from trustchain.consensus.proofs.bundle import (
    ValidationContext,
    ValidationResult,
    state_hash,
    validate_four_proofs,
)
from trustchain.consensus.proofs.presets import LOCALHOST_TESTING, Preset
from trustchain.consensus.proofs.rejections import ProofKind
from trustchain.consensus.votes import sign_change
from trustchain.errors import TrustChainError

__all__ = [
    "OWNER",
    "PROOF_KINDS",
    "READY_TIMEOUT",
    "STOP_TIMEOUT",
    "DemoError",
    "Progress",
    "ProvedAsset",
    "RecordedAsset",
    "ValidatorProcess",
    "ValidatorState",
    "main",
    "prove_asset",
    "render_report",
    "run",
    "start_validators",
    "stop_validators",
]

#: The owner node of the demo's federation.
OWNER: Final = "node"
#: Seconds the validators get to print ``ready``.
READY_TIMEOUT: Final = 60.0
#: Seconds a validator gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT: Final = 10.0
#: Seconds one change gets to be certified and applied.
RECORD_TIMEOUT: Final = 30.0
#: The proofs in table order.
PROOF_KINDS: Final = (ProofKind.SPACE, ProofKind.STAKE, ProofKind.WORK, ProofKind.TIME)


class DemoError(TrustChainError):
    """The demo could not complete a step; the message says which and why."""


# --- progress ------------------------------------------------------------------------------------


class Progress:
    """Progress lines on ``stream``: ``[  12.3 s] <text>``, seconds since the demo started."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._start = time.perf_counter()

    def line(self, text: str) -> None:
        elapsed = time.perf_counter() - self._start
        print(f"[{elapsed:7.1f} s] {text}", file=self._stream, flush=True)

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[list[str]]:
        """Announce ``what``, run the block, then report it done with its duration and any
        notes the block appended to the yielded list."""
        self.line(f"{what} ...")
        notes: list[str] = []
        started = time.perf_counter()
        yield notes
        took = time.perf_counter() - started
        detail = f": {'; '.join(notes)}" if notes else ""
        self.line(f"  done in {took:.2f} s{detail}")


# --- proving -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProvedAsset:
    """Version 0 of one resource's asset: its proofs, how long each took to make and to check
    (seconds, per proof; a proof missing from a mapping was not seen being made or checked),
    and the owner's own validation of them."""

    resource: Resource
    asset_name: str
    bundle: common_pb2.FourProof
    prove_seconds: Mapping[ProofKind, float]
    prove_total: float
    verify_seconds: Mapping[ProofKind, float]
    validation: ValidationResult

    @property
    def asset_id(self) -> bytes:
        return bytes(self.bundle.stake.asset_id.id)

    @property
    def version(self) -> int:
        return self.bundle.stake.version

    @property
    def state_hash(self) -> bytes:
        """The combined hash of the four proofs (the change digest validators vote for)."""
        return state_hash(self.bundle)


def prove_asset(
    federation: LocalFederation,
    resource: Resource,
    context: ValidationContext,
    *,
    owner: str = OWNER,
) -> ProvedAsset:
    """Prove version 0 of ``owner``'s asset for ``resource`` (named after its kind; content:
    its descriptor; offer: its ResourceSpec) at ``context.preset``, timing each proof, then
    validate the bundle under ``context`` (timing each check). :class:`DemoError` if the
    owner's own check rejects it."""
    proving: dict[ProofKind, float] = {}

    def lap(kind: ProofKind, seconds: float) -> None:
        proving[kind] = proving.get(kind, 0.0) + seconds

    started = time.perf_counter()
    bundle = federation.prove(
        owner,
        resource.kind,
        resource.descriptor(),
        resource.resource_spec(),
        context.preset,
        on_step=lap,
    )
    total = time.perf_counter() - started
    result = validate_four_proofs(bundle, previous=None, context=context)
    if not result.valid:
        reasons = "; ".join(f"{r.kind.name} {r.reason.name}: {r.detail}" for r in result.rejections)
        raise DemoError(f"the {resource.kind} asset's proofs do not validate: {reasons}")
    return ProvedAsset(
        resource=resource,
        asset_name=resource.kind,
        bundle=bundle,
        prove_seconds=proving,
        prove_total=total,
        verify_seconds={v.kind: v.seconds for v in result.verdicts},
        validation=result,
    )


# --- validator processes -------------------------------------------------------------------------


@dataclass
class ValidatorProcess:
    """A running validator process: its setup, the process, where its stderr goes, the port
    it reported ready on, what it printed afterwards and the task reading that."""

    setup: ValidatorSetup
    process: asyncio.subprocess.Process
    log_path: Path
    port: int | None = None
    output: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    def log_tail(self, lines: int = 5) -> str:
        """The last ``lines`` lines of its stderr log (empty if none)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


def validator_command(federation: LocalFederation, setup: ValidatorSetup) -> list[str]:
    """The command line of ``setup``'s validator process. ``-P``: the working directory is
    not put on ``sys.path``, so a file there named like a package (``stoq.py``) cannot shadow
    it."""
    return [
        sys.executable,
        "-P",
        "-m",
        "hypermesh.node.validator",
        "--home",
        str(setup.home),
        "--federation",
        str(federation.directory),
    ]


async def start_validators(
    federation: LocalFederation,
    *,
    timeout: float = READY_TIMEOUT,
    extra_args: Sequence[str] = (),
    log_name: str = "validator.log",
) -> list[ValidatorProcess]:
    """Start one process per validator of ``federation`` (its command line plus
    ``extra_args``, stderr to ``log_name`` in its home) and wait (at most ``timeout`` seconds
    in all) until each prints ``ready <port>`` with its committee port.
    :class:`DemoError` naming the validator (with the end of its log) if one exits, prints
    something else or is not ready in time; every started process is stopped then."""
    processes: list[ValidatorProcess] = []
    try:
        for setup in federation.validators:
            log_path = setup.home / log_name
            with log_path.open("wb") as log:
                process = await asyncio.create_subprocess_exec(
                    *validator_command(federation, setup),
                    *extra_args,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log,
                )
            processes.append(ValidatorProcess(setup, process, log_path))
        waits = [asyncio.ensure_future(_await_ready(p)) for p in processes]
        done, pending = await asyncio.wait(
            waits, timeout=timeout, return_when=asyncio.FIRST_EXCEPTION
        )
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        for task in done:
            task.result()  # raises the failure of a validator that could not start
        if pending:
            late = [p.setup.name for p in processes if p.port is None]
            raise DemoError(f"not ready within {timeout:.0f} s: {', '.join(late)}")
    except BaseException:
        await stop_validators(processes)
        raise
    for started in processes:
        started.reader = asyncio.ensure_future(_drain(started))
    return processes


async def _await_ready(validator: ValidatorProcess) -> None:
    stdout = validator.process.stdout
    assert stdout is not None
    line = (await stdout.readline()).decode(errors="replace").strip()
    name = validator.setup.name
    if not line:
        code = await validator.process.wait()
        raise DemoError(
            f"validator {name} exited with status {code} before it was ready; its log "
            f"{validator.log_path} ends:\n{validator.log_tail()}"
        )
    word, _, port = line.partition(" ")
    if word != "ready" or not port.isdigit():
        raise DemoError(f"validator {name} printed {line!r} instead of 'ready <port>'")
    if int(port) != validator.setup.port:
        raise DemoError(
            f"validator {name} listens on port {port}, not its committee port "
            f"{validator.setup.port}"
        )
    validator.port = int(port)


async def _drain(validator: ValidatorProcess) -> None:
    """Keep reading what the validator prints after ``ready`` (so its pipe never fills)."""
    stdout = validator.process.stdout
    assert stdout is not None
    while line := await stdout.readline():
        validator.output.append(line.decode(errors="replace").rstrip("\n"))


async def stop_validators(
    processes: Sequence[ValidatorProcess], *, timeout: float = STOP_TIMEOUT
) -> dict[str, int]:
    """SIGTERM every running process, wait up to ``timeout`` seconds, SIGKILL those still
    running; returns each validator's exit status (negative: the signal that ended it)."""
    for validator in processes:
        if validator.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                validator.process.send_signal(signal.SIGTERM)
    waits = {asyncio.ensure_future(v.process.wait()): v for v in processes}
    if waits:
        _, pending = await asyncio.wait(waits, timeout=timeout)
        for task in pending:
            with contextlib.suppress(ProcessLookupError):
                waits[task].process.kill()
        if pending:
            await asyncio.wait(pending)
    for validator in processes:
        if validator.reader is not None:
            await validator.reader
    codes: dict[str, int] = {}
    for validator in processes:
        code = validator.process.returncode
        assert code is not None
        codes[validator.setup.name] = code
    return codes


# --- recording -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedAsset:
    """A proved asset the committee certified and applied: the outcome of recording it and
    how long that took (seconds)."""

    proved: ProvedAsset
    outcome: RecordOutcome
    record_seconds: float

    @property
    def voters(self) -> tuple[bytes, ...]:
        return tuple(bytes(v.validator.id) for v in self.outcome.certificate.votes)


@dataclass(frozen=True)
class ValidatorState:
    """What one validator answered about every asset at the end: asset id -> its
    ``AssetState`` (None: the validator does not know the asset)."""

    setup: ValidatorSetup
    assets: Mapping[bytes, ledger_pb2.AssetState | None]

    def log(self) -> tuple[int, bytes] | None:
        """The log size and root its newest answer states, None if it knows no asset."""
        recorded = [a.recorded for a in self.assets.values() if a is not None]
        if not recorded:
            return None
        newest = max(recorded, key=lambda state: state.log_size)
        return newest.log_size, bytes(newest.log_root)


async def record_assets(
    client: LedgerClient,
    proved: Sequence[ProvedAsset],
    sign: Callable[[bytes], bytes],
    progress: Progress,
) -> list[RecordedAsset]:
    """Sign each asset's change (epoch of the client's committee) and record it, one after
    the other (so every validator applies them in the same order)."""
    recorded = []
    for asset in proved:
        with progress.step(f"recording the {asset.asset_name} asset") as notes:
            change = sign_change(asset.bundle, client.committee.epoch, sign)
            started = time.perf_counter()
            outcome = await client.record(change, timeout=RECORD_TIMEOUT)
            took = time.perf_counter() - started
            entry = RecordedAsset(asset, outcome, took)
            notes.append(f"{len(entry.voters)} votes, applied by {len(outcome.states)} validators")
        recorded.append(entry)
    return recorded


async def query_states(
    client: LedgerClient, federation: LocalFederation, asset_ids: Sequence[bytes]
) -> list[ValidatorState]:
    """Ask every validator for the state of every asset."""
    committee = client.committee
    states = []
    for setup in federation.validators:
        member = committee.member(setup.validator_id)
        answers: dict[bytes, ledger_pb2.AssetState | None] = {}
        for asset_id in asset_ids:
            response = await client.ask(
                member, ledger_pb2.LedgerRequest(asset_state=common_pb2.AssetId(id=asset_id))
            )
            kind = response.WhichOneof("body")
            if kind != "asset_state":
                raise DemoError(f"validator {setup.name} answered {kind} to an asset_state query")
            state = response.asset_state
            answers[asset_id] = state if state.asset_id.id else None
        states.append(ValidatorState(setup, answers))
    return states


# --- the report ----------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers))]
    rule = "  ".join("-" * width for width in widths)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))

    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def _ms(seconds: float | None) -> str:
    """Milliseconds with one decimal, microseconds below a millisecond; ``n/a`` for None."""
    if seconds is None:
        return "n/a"
    if seconds < 0.001:
        return f"{seconds * 1_000_000:.0f} us"
    return f"{seconds * 1000:.1f} ms"


def _short(value: bytes) -> str:
    return value[:8].hex()


def render_report(
    recorded: Sequence[RecordedAsset],
    committee: Committee,
    validators: Sequence[ValidatorState],
) -> str:
    """The three tables (assets, proofs, validators) as text."""
    asset_rows = []
    for entry in recorded:
        proved = entry.proved
        voter_stake = committee.stake_of(entry.voters)
        positions = sorted(
            {(s.log_index, bytes(s.log_root)) for s in entry.outcome.states.values()}
        )
        log = ", ".join(f"#{index} {_short(root)}" for index, root in positions)
        asset_rows.append(
            [
                proved.resource.kind,
                proved.resource.summary(),
                _short(proved.asset_id),
                str(proved.version),
                _short(proved.state_hash),
                f"{len(entry.voters)} votes, stake {voter_stake}/{committee.total_stake} "
                f"(quorum {committee.quorum_stake})",
                f"{len(entry.outcome.states)}/{len(committee.members)}",
                log,
            ]
        )
    proof_rows = []
    for entry in recorded:
        proved = entry.proved
        verdicts = {v.kind: v for v in proved.validation.verdicts}
        row = [proved.resource.kind]
        for kind in PROOF_KINDS:
            verdict = "valid" if verdicts[kind].valid else "REJECTED"
            row.append(
                f"{_ms(proved.prove_seconds.get(kind))} / "
                f"{_ms(proved.verify_seconds.get(kind))} {verdict}"
            )
        row += [_ms(proved.prove_total), _ms(entry.record_seconds)]
        proof_rows.append(row)
    validator_rows = []
    for state in validators:
        position = state.log()
        assets = []
        for entry in recorded:
            answer = state.assets.get(entry.proved.asset_id)
            if answer is None:
                assets.append(f"{entry.proved.resource.kind} unknown")
            else:
                agrees = bytes(answer.state_hash) == entry.proved.state_hash
                assets.append(
                    f"{entry.proved.resource.kind} v{answer.version} #{answer.recorded.log_index}"
                    + ("" if agrees else " DIFFERENT STATE")
                )
        validator_rows.append(
            [
                state.setup.name,
                _short(state.setup.validator_id),
                f"{state.setup.host}:{state.setup.port}",
                str(state.setup.stake),
                ", ".join(assets),
                "-" if position is None else str(position[0]),
                "-" if position is None else _short(position[1]),
            ]
        )
    roots = {state.log() for state in validators}
    agreement = (
        "every validator holds the same log root"
        if len(roots) == 1 and None not in roots
        else "the validators' logs differ (log order is per validator)"
    )
    sections = [
        f"Assets (version 0, certified by the committee of epoch {committee.epoch})",
        _table(
            [
                "kind",
                "figures",
                "asset id",
                "ver",
                "state hash",
                "certificate",
                "applied",
                "log index root",
            ],
            asset_rows,
        ),
        "",
        "Proofs (prove / verify time, owner's check; record = votes + apply over STOQ)",
        _table(
            ["asset", "PoSpace", "PoStake", "PoWork", "PoTime", "prove all", "record"],
            proof_rows,
        ),
        "",
        f"Validators ({agreement})",
        _table(
            ["validator", "id", "address", "stake", "assets", "log size", "log root"],
            validator_rows,
        ),
    ]
    return "\n".join(sections)


# --- the command ---------------------------------------------------------------------------------


@contextlib.contextmanager
def data_directory(given: Path | None) -> Iterator[Path]:
    """``given`` (created if absent), else a new temporary directory removed afterwards."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    temporary = Path(tempfile.mkdtemp(prefix="hypermesh-demo-"))
    try:
        yield temporary
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


async def run(
    data_dir: Path | None,
    *,
    validators: int = 4,
    preset: Preset = LOCALHOST_TESTING,
    out: TextIO,
    progress: Progress,
) -> int:
    """The whole demo (see the module docs); returns the exit status. :class:`DemoError` (or
    another TrustChain error) when a step fails, after the validators are stopped."""
    with data_directory(data_dir) as data:
        progress.line(f"data directory {data}{'' if data_dir else ' (temporary)'}")
        with progress.step(f"creating the local federation ({validators} validators)") as notes:
            federation = LocalFederation.create(
                data / "federation", validators=validators, owners=(OWNER,)
            )
            committee = federation.committee()
            notes.append(
                f"root CA, 2 entity CAs, CT log, {validators + 1} node certificates, "
                f"quorum {committee.quorum_stake} of {committee.total_stake}"
            )
        with federation:
            return await _run_network(federation, committee, data, preset, out, progress)


async def _run_network(
    federation: LocalFederation,
    committee: Committee,
    data: Path,
    preset: Preset,
    out: TextIO,
    progress: Progress,
) -> int:
    with progress.step(f"starting {len(federation.validators)} validator processes") as notes:
        processes = await start_validators(federation)
        notes.append("all ready on " + ", ".join(str(p.port) for p in processes))
    try:
        with progress.step("detecting this machine's resources") as notes:
            resources = detect_all(data)
            notes.extend(f"{r.kind}: {r.summary()}" for r in resources)
        with progress.step(f"making the owner's k={preset.plot_k} plot") as notes:
            plot = federation.plot(OWNER, preset.plot_k)
            notes.append(plot.path.name)
        context = federation.context(federation.validators[0].name, preset)
        proved = []
        with context.registry:
            for resource in resources:
                with progress.step(f"proving the {resource.kind} asset") as notes:
                    asset = prove_asset(federation, resource, context)
                    notes.append(f"four proofs valid, state {_short(asset.state_hash)}")
                proved.append(asset)
        config = member_config(federation, federation.owner(OWNER))
        async with LedgerClient(config, committee) as client:
            recorded = await record_assets(client, proved, federation.signer(OWNER), progress)
            with progress.step("asking every validator for the recorded states"):
                states = await query_states(client, federation, [a.asset_id for a in proved])
    finally:
        with progress.step("stopping the validators") as notes:
            codes = await stop_validators(processes)
            notes.append(", ".join(f"{name} exit {code}" for name, code in codes.items()))
    print(render_report(recorded, committee, states), file=out, flush=True)
    failed = {name: code for name, code in codes.items() if code != 0}
    if failed:
        raise DemoError(f"validators did not exit cleanly: {failed}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hypermesh demo",
        description="Bring up a local validator network and record this machine's CPU, memory "
        "and storage as certified assets.",
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options (shared with ``hypermesh demo``)."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="keep the network's state here (default: a temporary directory, removed at the end)",
    )
    parser.add_argument(
        "--validators",
        type=int,
        default=4,
        choices=range(1, 17),
        metavar="N",
        help="how many validator processes (1..16, default 4)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo with ``argv``'s options; 0 on success, 1 with the reason on failure."""
    args = _parser().parse_args(argv)
    return run_main(args)


def run_main(args: argparse.Namespace) -> int:
    """Run the demo for parsed ``args`` (``data_dir``, ``validators``)."""
    progress = Progress(sys.stderr)
    try:
        return asyncio.run(
            run(args.data_dir, validators=args.validators, out=sys.stdout, progress=progress)
        )
    except (TrustChainError, StoqError, OSError) as exc:
        progress.line(f"demo failed: {exc}")
        return 1
    except KeyboardInterrupt:
        progress.line("demo interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
