"""hypermesh.node: four validator processes of a local federation and an owner's ledger client.

One :class:`LocalFederation` per module (four validators of stake 1, one owner node) in a temp
directory; each validator runs as ``python -m hypermesh.node.validator`` (validator-0 also with
gRPC) and is stopped with SIGTERM at the end. The owner proves real bundles with the
``localhost_testing`` preset, signs its changes and records them over STOQ with a
:class:`LedgerClient`; every validator is then asked for the asset's state over STOQ.
"""

from __future__ import annotations

import asyncio
import hashlib
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hypermesh.node.ledger_client import (
    ExchangeFailed,
    LedgerClient,
    NotCertified,
    RecordOutcome,
    ValidatorUnreachable,
    exchange,
)
from hypermesh.node.validator import (
    MAX_REQUEST_BYTES,
    TRANSPORT_MARGIN,
    ValidatorNode,
    member_config,
)
from hypermesh_interfaces.v1 import common_pb2, consensus_pb2, consensus_pb2_grpc, ledger_pb2
from stoq.config import StoqConfig
from stoq.pool import ConnectionPool
from trustchain.consensus.committee import Member
from trustchain.consensus.federation import LocalFederation, ValidatorSetup
from trustchain.consensus.ledger import Ledger, state_record_bytes
from trustchain.consensus.proofs.bundle import PreviousState, state_hash
from trustchain.consensus.proofs.presets import LOCALHOST_TESTING
from trustchain.consensus.votes import Ballot, VoteVerifier, change_digest, sign_change
from trustchain.errors import LedgerRefusal

OWNER = "node"
STARTUP_SECONDS = 60.0


# -- the running federation ------------------------------------------------------------------


@dataclass
class Running:
    """A validator process and where its stderr goes."""

    setup: ValidatorSetup
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    grpc_port: int | None = None

    def log(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")


def read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The next stdout line of ``process``, waiting at most ``timeout`` seconds for it to
    start (the stream is unbuffered, so select() sees what is not read yet)."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"no output within {timeout} s")
    return process.stdout.readline().decode().strip()


class Network:
    """The federation, its committee and its running validators."""

    def __init__(self, federation: LocalFederation, logs: Path) -> None:
        self.federation = federation
        self.committee = federation.committee()
        self.logs = logs
        self.running: dict[str, Running] = {}

    def start(self, setup: ValidatorSetup, *extra: str) -> None:
        earlier = self.running.get(setup.name)
        if earlier is not None:
            assert earlier.process.poll() is not None
            earlier.log_file.close()
        log_path = self.logs / f"{setup.name}-{len(list(self.logs.iterdir()))}.log"
        log_file = log_path.open("wb")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hypermesh.node.validator",
                "--home",
                str(setup.home),
                "--federation",
                str(self.federation.directory),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=log_file,
            bufsize=0,  # unbuffered: select() then sees every line that is not read yet
        )
        self.running[setup.name] = Running(setup, process, log_path, log_file)

    def wait_ready(self, name: str, *, grpc: bool = False) -> None:
        running = self.running[name]
        line = read_line(running.process, STARTUP_SECONDS)
        assert line == f"ready {running.setup.port}", running.log()
        if grpc:
            word, port = read_line(running.process, STARTUP_SECONDS).split()
            assert word == "grpc"
            running.grpc_port = int(port)

    def stop_all(self) -> dict[str, int]:
        """SIGTERM every validator still running; their exit codes."""
        codes = {}
        for running in self.running.values():
            if running.process.poll() is None:
                running.process.send_signal(signal.SIGTERM)
        for name, running in self.running.items():
            codes[name] = running.process.wait(timeout=30)
            running.log_file.close()
            if running.process.stdout is not None:
                running.process.stdout.close()
        return codes

    def member(self, name: str) -> Member:
        return self.committee.member(self.federation.validator(name).validator_id)

    def owner_config(self, **options: object) -> StoqConfig:
        return member_config(self.federation, self.federation.owner(OWNER), **options)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    directory = tmp_path_factory.mktemp("validators")
    federation = LocalFederation.create(directory / "federation", validators=4, owners=(OWNER,))
    logs = directory / "logs"
    logs.mkdir()
    opened = Network(federation, logs)
    try:
        first, *others = federation.validators
        opened.start(first, "--grpc-port", "0")
        for setup in others:
            opened.start(setup)
        opened.wait_ready(first.name, grpc=True)
        for setup in others:
            opened.wait_ready(setup.name)
        yield opened
    finally:
        for running in opened.running.values():
            if running.process.poll() is None:
                running.process.kill()
        opened.stop_all()
        federation.close()


# -- proving and asking ----------------------------------------------------------------------


def prove(
    network: Network, asset: str, content: bytes, previous: PreviousState | None = None
) -> common_pb2.FourProof:
    return network.federation.prove(
        OWNER,
        asset,
        content,
        common_pb2.ResourceSpec(storage_bytes=len(content)),
        LOCALHOST_TESTING,
        previous,
    )


def change_of(network: Network, proofs: common_pb2.FourProof) -> ledger_pb2.AssetStateChange:
    return sign_change(proofs, 0, network.federation.signer(OWNER))


async def record(network: Network, change: ledger_pb2.AssetStateChange) -> RecordOutcome:
    async with LedgerClient(network.owner_config(), network.committee) as client:
        return await client.record(change)


async def ask_everyone(
    network: Network, request: ledger_pb2.LedgerRequest
) -> dict[bytes, ledger_pb2.LedgerResponse]:
    async with ConnectionPool(network.owner_config()) as pool:
        members = network.committee.members
        answers = await asyncio.gather(*(exchange(pool, m, request) for m in members))
    return {m.validator_id: a for m, a in zip(members, answers, strict=True)}


def asset_states(network: Network, asset: bytes) -> dict[bytes, ledger_pb2.AssetState]:
    request = ledger_pb2.LedgerRequest(asset_state=common_pb2.AssetId(id=asset))
    answers = asyncio.run(ask_everyone(network, request))
    assert {a.WhichOneof("body") for a in answers.values()} == {"asset_state"}
    return {vid: a.asset_state for vid, a in answers.items()}


def certified_digest(change: ledger_pb2.AssetStateChange) -> bytes:
    """StateHash.certificate_digest of ``change`` once certified."""
    stake = change.proofs.stake
    digest = change_digest(change)
    ballot = Ballot(change.epoch, bytes(32), stake.asset_id.id, stake.version, digest)
    return hashlib.sha256(state_record_bytes(ballot)).digest()


def assert_recorded_everywhere(
    network: Network, change: ledger_pb2.AssetStateChange, outcome: RecordOutcome, size: int
) -> None:
    """Every validator applied ``change`` as entry ``size - 1`` of a log of ``size`` entries,
    all with one log root, and reports that state when asked."""
    stake = change.proofs.stake
    everyone = {m.validator_id for m in network.committee.members}
    assert set(outcome.states) == everyone
    assert dict(outcome.refusals) == {}
    assert dict(outcome.not_applied) == {}
    assert outcome.evidence == ()
    assert outcome.certificate.change == change
    VoteVerifier().verify_certificate(outcome.certificate, network.committee)
    roots = {state.log_root for state in outcome.states.values()}
    assert len(roots) == 1
    for state in outcome.states.values():
        assert (state.log_index, state.log_size) == (size - 1, size)
        assert state.certificate_digest == certified_digest(change)
    states = asset_states(network, stake.asset_id.id)
    assert set(states) == everyone
    for vid, asset_state in states.items():
        assert asset_state.asset_id.id == stake.asset_id.id
        assert asset_state.version == stake.version
        assert asset_state.state_hash == state_hash(change.proofs) == change_digest(change)
        assert asset_state.recorded == outcome.states[vid]


# -- recording ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    proofs: common_pb2.FourProof
    change: ledger_pb2.AssetStateChange
    outcome: RecordOutcome


@pytest.fixture(scope="module")
def first_asset(network: Network) -> Recorded:
    proofs = prove(network, "first", bytes(range(256)) * 16)
    change = change_of(network, proofs)
    return Recorded(proofs, change, asyncio.run(record(network, change)))


def test_version_0_is_recorded_by_all_four(network: Network, first_asset: Recorded) -> None:
    votes = first_asset.outcome.certificate.votes
    assert len(votes) >= network.committee.quorum_stake == 3
    assert_recorded_everywhere(network, first_asset.change, first_asset.outcome, size=1)


def test_version_1_follows_on_all_four(network: Network, first_asset: Recorded) -> None:
    previous = PreviousState.of(first_asset.proofs)
    v1 = prove(network, "first", bytes(reversed(range(256))) * 20, previous)
    change = change_of(network, v1)
    outcome = asyncio.run(record(network, change))
    assert_recorded_everywhere(network, change, outcome, size=2)
    # Applying the certificate again is idempotent: the same state, nothing appended.
    again = asyncio.run(
        ask_everyone(network, ledger_pb2.LedgerRequest(certificate=outcome.certificate))
    )
    assert {vid: answer.applied for vid, answer in again.items()} == dict(outcome.states)


def test_a_conflicting_change_is_refused_by_everyone(network: Network) -> None:
    # Version 0 of "contested" is locked to one change (votes only, never certified)...
    locked = change_of(network, prove(network, "contested", b"first content" * 100))
    answers = asyncio.run(ask_everyone(network, ledger_pb2.LedgerRequest(change=locked)))
    assert {a.WhichOneof("body") for a in answers.values()} == {"vote"}
    # ...so another change for the same slot gets no vote anywhere.
    other = change_of(network, prove(network, "contested", b"other content" * 100))
    assert change_digest(other) != change_digest(locked)
    with pytest.raises(NotCertified) as failed:
        asyncio.run(record(network, other))
    error = failed.value
    # Two refusals (of stake 1 each, out of 4) already leave no quorum: the client stops there.
    assert len(error.refusals) >= 2
    for vid, refused in error.refusals.items():
        assert refused.reason is LedgerRefusal.CONFLICT
        assert refused.locked_vote == answers[vid].vote
    assert dict(error.unreachable) == {}
    assert dict(error.invalid) == {}
    assert str(error).startswith(
        f"no quorum of votes for asset {other.proofs.stake.asset_id.id.hex()} version 0; "
    )
    # Over gRPC (validator-0 runs the client) the refusal is FAILED_PRECONDITION.
    running = network.running["validator-0"]
    with grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
        stub = consensus_pb2_grpc.ConsensusLayerStub(channel)
        with pytest.raises(grpc.RpcError) as call:
            stub.RecordAssetState(consensus_pb2.RecordAssetStateRequest(change=other))
    rpc_error: object = call.value
    assert isinstance(rpc_error, grpc.Call)
    assert rpc_error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rpc_error.details() == (
        f"CONFLICT: asset {other.proofs.stake.asset_id.id.hex()} version 0 is locked to change "
        f"{change_digest(locked).hex()}"
    )


# -- gRPC --------------------------------------------------------------------------------------


def test_grpc_records_and_validates_against_the_ledger(network: Network) -> None:
    running = network.running["validator-0"]
    assert running.grpc_port is not None
    v0 = prove(network, "over-grpc", b"grpc content" * 300)
    change = change_of(network, v0)
    with grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
        stub = consensus_pb2_grpc.ConsensusLayerStub(channel)
        reply = stub.RecordAssetState(consensus_pb2.RecordAssetStateRequest(change=change))
        assert reply.result.verdict == common_pb2.VERDICT_VALID
        assert reply.state.certificate_digest == certified_digest(change)
        # Version 1 validates against the state validator-0 recorded; version 0 no longer does.
        v1 = prove(network, "over-grpc", b"next" * 500, PreviousState.of(v0))
        checked = stub.ValidateFourProofs(consensus_pb2.ValidateFourProofsRequest(proofs=v1))
        assert checked.result.verdict == common_pb2.VERDICT_VALID
        stale = stub.ValidateFourProofs(consensus_pb2.ValidateFourProofsRequest(proofs=v0))
        assert stale.result.verdict == common_pb2.VERDICT_REJECTED
        assert stale.result.rejections[0].detail == (
            "version 0 does not follow the recorded state (expected version 1)"
        )
    states = asset_states(network, v0.stake.asset_id.id)
    own = network.federation.validator("validator-0").validator_id
    assert states[own].recorded == reply.state
    assert {s.version for s in states.values()} == {0}


# -- bad requests --------------------------------------------------------------------------------


async def raw_exchange(
    network: Network, member: Member, payloads: list[bytes], config: StoqConfig | None = None
) -> list[ledger_pb2.LedgerResponse]:
    """Send each payload as it is on its own stream of one connection; the answers."""
    async with ConnectionPool(config or network.owner_config()) as pool:
        answers = []
        for payload in payloads:
            stream = await pool.open_stream(
                member.host, member.port, server_name=member.name, peer_id=member.validator_id
            )
            await stream.send(payload, end_stream=True)
            answers.append(ledger_pb2.LedgerResponse.FromString(await stream.receive()))
        return answers


def serving_request(asset: bytes) -> bytes:
    return ledger_pb2.LedgerRequest(asset_state=common_pb2.AssetId(id=asset)).SerializeToString()


def test_garbage_gets_a_refusal_and_the_validator_keeps_serving(
    network: Network, first_asset: Recorded
) -> None:
    proofs = first_asset.proofs
    member = network.member("validator-1")
    garbage, empty, state = asyncio.run(
        raw_exchange(
            network,
            member,
            [b"\xff\xff\xff\xff not protobuf", b"", serving_request(proofs.stake.asset_id.id)],
        )
    )
    assert garbage.refusal.reason == ledger_pb2.LEDGER_REFUSAL_MALFORMED
    assert garbage.refusal.detail.startswith("not a LedgerRequest: ")
    assert empty.refusal.reason == ledger_pb2.LEDGER_REFUSAL_MALFORMED
    assert empty.refusal.detail == "the request asks for nothing"
    assert state.asset_state.version >= 0
    assert state.asset_state.asset_id.id == proofs.stake.asset_id.id


def test_size_limit_both_sides(network: Network, first_asset: Recorded) -> None:
    proofs = first_asset.proofs
    member = network.member("validator-2")
    big = network.owner_config(max_message_size=MAX_REQUEST_BYTES + TRANSPORT_MARGIN)
    at_limit, over, state = asyncio.run(
        raw_exchange(
            network,
            member,
            [
                b"\xff" * MAX_REQUEST_BYTES,
                b"\xff" * (MAX_REQUEST_BYTES + 1),
                serving_request(proofs.stake.asset_id.id),
            ],
            big,
        )
    )
    # At the limit the request is read (and does not decode); one byte more is refused unread.
    assert at_limit.refusal.reason == ledger_pb2.LEDGER_REFUSAL_MALFORMED
    assert over.refusal.reason == ledger_pb2.LEDGER_REFUSAL_TOO_LARGE
    assert over.refusal.detail == (
        f"a request of {MAX_REQUEST_BYTES + 1} bytes exceeds the limit of {MAX_REQUEST_BYTES}"
    )
    assert state.asset_state.asset_id.id == proofs.stake.asset_id.id


@given(payload=st.binary(max_size=512))
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_hostile_bytes_are_answered(network: Network, payload: bytes) -> None:
    member = network.member("validator-3")
    answer, state = asyncio.run(
        raw_exchange(network, member, [payload, serving_request(bytes(32))])
    )
    kind = answer.WhichOneof("body")
    event(kind or "none")
    assert kind is not None
    if kind == "refusal":
        assert answer.refusal.reason in {int(reason) for reason in LedgerRefusal}
    assert state.WhichOneof("body") == "asset_state"


# -- catching up -------------------------------------------------------------------------------


async def catch_up(
    network: Network, setup: ValidatorSetup, change: ledger_pb2.AssetStateChange
) -> tuple[int, common_pb2.StateHash]:
    """Run ``setup``'s validator in this process until its ledger holds ``change``; how many
    catch-up rounds it ran and the StateHash it holds for the change."""
    node = ValidatorNode.open(setup.home, network.federation, preset=LOCALHOST_TESTING)
    assert await node.start() == setup.port
    try:
        asset = change.proofs.stake.asset_id.id
        async with asyncio.timeout(STARTUP_SECONDS):
            while (state := node.ledger.state(asset)) is None:
                await asyncio.sleep(0.05)
        assert state.version == 0
        assert state.state_hash == change_digest(change)
        node.ledger.audit()
        return node.sync_rounds, node.ledger.state_hash_at(state.log_index)
    finally:
        await node.stop()


def test_a_validator_that_was_down_catches_up_in_log_order(network: Network) -> None:
    setup = network.federation.validator("validator-3")
    running = network.running[setup.name]
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(timeout=30) == 0, running.log()
    # Three of four validators are a quorum: the change is recorded without validator-3, and
    # the client does not wait for it.
    change = change_of(network, prove(network, "while-down", b"three of four" * 80))
    outcome = asyncio.run(record(network, change))
    down = setup.validator_id
    assert set(outcome.states) == {m.validator_id for m in network.committee.members} - {down}
    assert set(outcome.not_applied) == {down}
    assert len({state.SerializeToString() for state in outcome.states.values()}) == 1
    # Started again (in this process), it reads a peer's log and applies what it missed, in
    # that peer's order: the same entry at the same index, under the same root.
    rounds, state = asyncio.run(catch_up(network, setup, change))
    assert rounds >= 1
    assert state == next(iter(outcome.states.values()))
    # Back as a process (votes signed one by one) for the tests that follow.
    network.start(setup, "--no-batch")
    network.wait_ready(setup.name)
    states = asset_states(network, change.proofs.stake.asset_id.id)
    assert {s.recorded.SerializeToString() for s in states.values()} == {state.SerializeToString()}


def test_a_connection_to_a_restarted_validator_is_dropped_and_redialled(network: Network) -> None:
    # A validator restarted after a crash silently drops packets of connections it no longer
    # knows; the
    # client gives up on such a connection after its answer timeout (not QUIC's 30 s idle
    # timeout) and the next request dials afresh.
    setup = network.federation.validator("validator-2")
    member = network.committee.member(setup.validator_id)
    request = ledger_pb2.LedgerRequest(asset_state=common_pb2.AssetId(id=bytes(31) + b"\x01"))

    async def scenario() -> tuple[ExchangeFailed, ledger_pb2.LedgerResponse]:
        async with ConnectionPool(network.owner_config()) as pool:
            assert (await exchange(pool, member, request)).WhichOneof("body") == "asset_state"
            # Killed: it cannot tell its peers their connections are gone.
            running = network.running[setup.name]
            running.process.send_signal(signal.SIGKILL)
            assert await asyncio.to_thread(running.process.wait, 30) == -signal.SIGKILL
            await asyncio.to_thread(network.start, setup)
            await asyncio.to_thread(network.wait_ready, setup.name)
            # Bounded well below the 30 s idle timeout the stale connection would otherwise
            # wait for (a liveness bound, not a performance figure).
            async with asyncio.timeout(15):
                with pytest.raises(ExchangeFailed) as info:
                    await exchange(pool, member, request, answer_timeout=1.0)
            return info.value, await exchange(pool, member, request)

    failure, answer = asyncio.run(scenario())
    assert isinstance(failure, ValidatorUnreachable)
    assert "no answer within 1 s; connection dropped" in str(failure)
    assert answer.WhichOneof("body") == "asset_state"


# -- stopping ----------------------------------------------------------------------------------


def test_sigterm_stops_every_validator_cleanly_with_one_log(network: Network) -> None:
    codes = network.stop_all()
    assert codes == dict.fromkeys(network.running, 0), {
        name: running.log() for name, running in network.running.items()
    }
    roots = set()
    for setup in network.federation.validators:
        with Ledger.open(
            setup.home / "ledger.db",
            validator_id=setup.validator_id,
            genesis=network.federation.genesis(),
        ) as ledger:
            ledger.audit()
            roots.add((ledger.log_size, ledger.log_root()))
    assert len(roots) == 1
