"""trustchain.consensus_layer: the ConsensusLayer service over a real gRPC server on loopback.

One :class:`LocalNetwork` per module (a key store, its own CA, transparency log, stake registry
and a k=18 plot) proves real bundles with the ``localhost_testing`` preset: version 0 of an
asset and version 1 built on it. Every call goes through a real server bound to 127.0.0.1:0
and a real channel; bad requests are real bytes on the wire (raw calls with no serializer).
``RecordAssetState`` records through a real recorder: a one-validator committee (the network's
node) whose validator core votes and applies certificates over a ledger in a temp directory.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import grpc
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from hypermesh_interfaces.v1 import common_pb2, consensus_pb2, consensus_pb2_grpc, ledger_pb2
from trustchain.consensus.committee import Committee, Member
from trustchain.consensus.ledger import Ledger, state_record_bytes
from trustchain.consensus.proofs import work
from trustchain.consensus.proofs.bundle import (
    MAX_BUNDLE_BYTES,
    PreviousState,
    ValidationContext,
)
from trustchain.consensus.proofs.local_network import NODE_NAME, LocalNetwork
from trustchain.consensus.proofs.presets import LOCALHOST_TESTING
from trustchain.consensus.proofs.stake import StakeRegistry
from trustchain.consensus.quorum import ValidatorCore, VoteCollector
from trustchain.consensus.votes import Ballot, sign_change
from trustchain.consensus_layer import (
    LEDGER_ISSUE,
    MAX_REQUEST_BYTES,
    SERVICE_NAME,
    ConsensusLayerServicer,
    no_recorded_states,
    serve,
)
from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KeyStore
from trustchain.errors import ChangeRefused, LedgerRefusal

ASSET = "ledger-entry"
CONTENT_V0 = bytes(range(256)) * 40
CONTENT_V1 = bytes(reversed(range(256))) * 48
#: Field number no hypermesh.v1 message uses: its bytes are an unknown field to every parser.
UNKNOWN_FIELD = 1000


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of ``value``."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def unknown_field(payload_size: int) -> bytes:
    """A length-delimited field ``UNKNOWN_FIELD`` carrying ``payload_size`` bytes."""
    return varint(UNKNOWN_FIELD << 3 | 2) + varint(payload_size) + b"\xa5" * payload_size


def padded(bundle: common_pb2.FourProof, size: int) -> common_pb2.FourProof:
    """``bundle`` with an unknown field appended so that its encoding is ``size`` bytes."""
    base = len(bundle.SerializeToString())
    tag = len(varint(UNKNOWN_FIELD << 3 | 2))
    for length_size in range(1, 6):
        payload = size - base - tag - length_size
        if payload >= 0 and len(varint(payload)) == length_size:
            out = common_pb2.FourProof.FromString(
                bundle.SerializeToString() + unknown_field(payload)
            )
            assert out.ByteSize() == size
            return out
    raise AssertionError(f"no padding makes {base} bytes into {size}")


def request_of_size(
    bundle: common_pb2.FourProof, size: int
) -> consensus_pb2.ValidateFourProofsRequest:
    """A request of exactly ``size`` bytes carrying ``bundle`` padded with an unknown field
    (``proofs`` is field 1: a tag byte, then a 4-byte length for bundles of 2 to 256 MiB)."""
    request = consensus_pb2.ValidateFourProofsRequest(proofs=padded(bundle, size - 5))
    assert request.ByteSize() == size
    return request


class CountingFactory:
    """A context factory returning one context and counting the calls (thread-safe)."""

    def __init__(self, context: ValidationContext) -> None:
        self._context = context
        self._lock = threading.Lock()
        self.calls = 0

    def __call__(self) -> ValidationContext:
        with self._lock:
            self.calls += 1
        return self._context


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    home = tmp_path_factory.mktemp("consensus-layer")
    keys = KeyStore.open(
        home / "keys", passphrase=b"pw", kdf_params=INSECURE_TEST_KDF_PARAMS, allow_weak_kdf=True
    )
    with keys, LocalNetwork.open(home / "network", keys) as opened:
        yield opened


@pytest.fixture(scope="module")
def v0(network: LocalNetwork) -> common_pb2.FourProof:
    return network.prove(ASSET, CONTENT_V0, preset=LOCALHOST_TESTING)


@pytest.fixture(scope="module")
def v1(network: LocalNetwork, v0: common_pb2.FourProof) -> common_pb2.FourProof:
    return network.prove(ASSET, CONTENT_V1, preset=LOCALHOST_TESTING, previous=PreviousState.of(v0))


@pytest.fixture(scope="module")
def factory(network: LocalNetwork) -> CountingFactory:
    return CountingFactory(network.context(LOCALHOST_TESTING))


@contextmanager
def running(servicer: ConsensusLayerServicer) -> Iterator[grpc.Channel]:
    """A real server for ``servicer`` on loopback and a channel to it."""
    server, port = serve(servicer, "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        channel.close()
        server.stop(grace=None)


@pytest.fixture(scope="module")
def channel(factory: CountingFactory) -> Iterator[grpc.Channel]:
    with running(ConsensusLayerServicer(factory, no_recorded_states)) as opened:
        yield opened


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> consensus_pb2_grpc.ConsensusLayerStub:
    return consensus_pb2_grpc.ConsensusLayerStub(channel)


def raw(channel: grpc.Channel, method: str) -> Callable[[bytes], bytes]:
    """``method`` of the service, called with request bytes as they are; the reply's bytes."""
    call: Callable[[bytes], bytes] = channel.unary_unary(
        f"/{SERVICE_NAME}/{method}", request_serializer=None, response_deserializer=None
    )
    return call


def validate(
    stub: consensus_pb2_grpc.ConsensusLayerStub, bundle: common_pb2.FourProof
) -> common_pb2.ValidationResult:
    reply = stub.ValidateFourProofs(consensus_pb2.ValidateFourProofsRequest(proofs=bundle))
    return reply.result


def failed(call: pytest.ExceptionInfo[grpc.RpcError]) -> tuple[grpc.StatusCode, str]:
    # grpc raises objects that are both RpcError and Call; the stubs know them as RpcError.
    error: object = call.value
    assert isinstance(error, grpc.Call)
    code = error.code()
    details = error.details()
    assert isinstance(code, grpc.StatusCode)
    assert isinstance(details, str)
    return code, details


def reasons(result: common_pb2.ValidationResult) -> list[tuple[int, int]]:
    return [(r.proof_kind, r.reason) for r in result.rejections]


def assert_serving(
    stub: consensus_pb2_grpc.ConsensusLayerStub, bundle: common_pb2.FourProof
) -> None:
    result = validate(stub, bundle)
    assert result.verdict == common_pb2.VERDICT_VALID
    assert list(result.rejections) == []


# -- answers -------------------------------------------------------------------------------


def test_valid_version_0_is_valid(
    stub: consensus_pb2_grpc.ConsensusLayerStub, v0: common_pb2.FourProof
) -> None:
    assert_serving(stub, v0)


def test_context_factory_is_called_per_request(
    stub: consensus_pb2_grpc.ConsensusLayerStub,
    v0: common_pb2.FourProof,
    factory: CountingFactory,
) -> None:
    before = factory.calls
    for _ in range(3):
        assert_serving(stub, v0)
    assert factory.calls == before + 3


def test_version_1_does_not_follow_what_is_recorded(
    stub: consensus_pb2_grpc.ConsensusLayerStub,
    network: LocalNetwork,
    v1: common_pb2.FourProof,
) -> None:
    # Nothing is recorded (no ledger yet): version 1 is checked as if it were version 0.
    result = validate(stub, v1)
    assert result.verdict == common_pb2.VERDICT_REJECTED
    first = result.rejections[0]
    assert (first.proof_kind, first.reason) == (
        common_pb2.PROOF_KIND_COMBINED,
        common_pb2.REJECTION_REASON_CHALLENGE_MISMATCH,
    )
    assert first.detail == "version 1 does not follow the recorded state (expected version 0)"
    # The answer over gRPC is exactly the in-process validation against no previous state.
    assert result == network.validate(v1, preset=LOCALHOST_TESTING, previous=None).to_message()


def test_recorded_state_lookup_is_honoured(
    network: LocalNetwork, v0: common_pb2.FourProof, v1: common_pb2.FourProof
) -> None:
    recorded = {network.asset_id(ASSET): PreviousState.of(v0)}
    asked: list[bytes] = []

    def lookup(asset: bytes) -> PreviousState | None:
        asked.append(asset)
        return recorded.get(asset)

    # A context made per request, the way a validator refreshes CRLs.
    servicer = ConsensusLayerServicer(lambda: network.context(LOCALHOST_TESTING), lookup)
    with running(servicer) as opened:
        stub = consensus_pb2_grpc.ConsensusLayerStub(opened)
        assert_serving(stub, v1)
        # Version 0 no longer follows the recorded state (version 0 itself).
        result = validate(stub, v0)
    assert asked == [network.asset_id(ASSET)] * 2
    assert result.verdict == common_pb2.VERDICT_REJECTED
    assert result.rejections[0].detail == (
        "version 0 does not follow the recorded state (expected version 1)"
    )


def first_failing_nonce(bundle: common_pb2.FourProof) -> int:
    """The first nonce after the bundle's whose work hash misses the claimed difficulty."""
    proof = bundle.work
    prefix = work.work_prefix(
        bundle.stake.asset_id.id, bundle.stake.version, proof.resource_spec, proof.challenge
    )
    nonce = proof.nonce
    while True:
        nonce = (nonce + 1) % (1 << 64)
        if work.leading_zero_bits(work.work_hash(prefix, nonce)) < proof.difficulty_bits:
            return nonce


def test_tampered_work_is_rejected_as_work(
    stub: consensus_pb2_grpc.ConsensusLayerStub,
    network: LocalNetwork,
    v0: common_pb2.FourProof,
) -> None:
    tampered = common_pb2.FourProof()
    tampered.CopyFrom(v0)
    tampered.work.nonce = first_failing_nonce(v0)
    result = validate(stub, tampered)
    assert result.verdict == common_pb2.VERDICT_REJECTED
    # The state digest the owner signed covers the work's encoding, so the stake proof no
    # longer matches either; the work itself fails its hash.
    assert reasons(result) == [
        (common_pb2.PROOF_KIND_STAKE, common_pb2.REJECTION_REASON_INCONSISTENT),
        (common_pb2.PROOF_KIND_WORK, common_pb2.REJECTION_REASON_VERIFICATION_FAILED),
    ]
    assert result == network.validate(tampered, preset=LOCALHOST_TESTING).to_message()


def test_empty_bundle_is_an_answer(stub: consensus_pb2_grpc.ConsensusLayerStub) -> None:
    result = validate(stub, common_pb2.FourProof())
    assert result.verdict == common_pb2.VERDICT_REJECTED
    assert reasons(result)[0] == (
        common_pb2.PROOF_KIND_COMBINED,
        common_pb2.REJECTION_REASON_MALFORMED,
    )
    assert {kind for kind, reason in reasons(result)[1:]} == {
        common_pb2.PROOF_KIND_SPACE,
        common_pb2.PROOF_KIND_STAKE,
        common_pb2.PROOF_KIND_WORK,
        common_pb2.PROOF_KIND_TIME,
    }
    assert {reason for kind, reason in reasons(result)[1:]} == {common_pb2.REJECTION_REASON_MISSING}


def test_unknown_fields_inside_a_signed_proof_change_nothing(
    stub: consensus_pb2_grpc.ConsensusLayerStub, v0: common_pb2.FourProof
) -> None:
    # Kept, the unknown field would be part of the bytes the owner signed over, and the stake
    # signature would fail; dropped before validation, it changes nothing.
    stake = common_pb2.StakeProof.FromString(v0.stake.SerializeToString() + unknown_field(40))
    bundle = common_pb2.FourProof()
    bundle.CopyFrom(v0)
    bundle.stake.CopyFrom(stake)
    assert len(bundle.SerializeToString()) == len(v0.SerializeToString()) + 43
    assert_serving(stub, bundle)


# -- bad requests --------------------------------------------------------------------------


def test_missing_proofs_is_invalid_argument(
    stub: consensus_pb2_grpc.ConsensusLayerStub, v0: common_pb2.FourProof
) -> None:
    with pytest.raises(grpc.RpcError) as call:
        stub.ValidateFourProofs(consensus_pb2.ValidateFourProofsRequest())
    assert failed(call) == (grpc.StatusCode.INVALID_ARGUMENT, "ValidateFourProofs needs proofs")
    assert_serving(stub, v0)


def test_undecodable_request_is_invalid_argument(
    channel: grpc.Channel, stub: consensus_pb2_grpc.ConsensusLayerStub, v0: common_pb2.FourProof
) -> None:
    with pytest.raises(grpc.RpcError) as call:
        raw(channel, "ValidateFourProofs")(b"\x0a\x05abc")  # field 1, 5 bytes, only 3 sent
    code, details = failed(call)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("not a hypermesh.v1.ValidateFourProofsRequest: ")
    assert_serving(stub, v0)


def test_bundle_size_limit_both_sides(
    stub: consensus_pb2_grpc.ConsensusLayerStub, v0: common_pb2.FourProof
) -> None:
    # Exactly at the limit: accepted, and the padding (an unknown field) is dropped.
    assert_serving(stub, padded(v0, MAX_BUNDLE_BYTES))
    with pytest.raises(grpc.RpcError) as call:
        validate(stub, padded(v0, MAX_BUNDLE_BYTES + 1))
    assert failed(call) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"proofs of {MAX_BUNDLE_BYTES + 1} bytes exceed the {MAX_BUNDLE_BYTES}-byte limit",
    )
    assert_serving(stub, v0)


def test_transport_limit_both_sides(
    stub: consensus_pb2_grpc.ConsensusLayerStub, v0: common_pb2.FourProof
) -> None:
    # The largest request gRPC lets through reaches the service, which refuses its proofs.
    with pytest.raises(grpc.RpcError) as call:
        stub.ValidateFourProofs(request_of_size(v0, MAX_REQUEST_BYTES))
    assert failed(call) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"proofs of {MAX_REQUEST_BYTES - 5} bytes exceed the {MAX_BUNDLE_BYTES}-byte limit",
    )
    # One byte more and gRPC itself refuses the message before the service sees it.
    with pytest.raises(grpc.RpcError) as call:
        stub.ValidateFourProofs(request_of_size(v0, MAX_REQUEST_BYTES + 1))
    assert failed(call) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"SERVER: Received message larger than max ({MAX_REQUEST_BYTES + 1} vs. "
        f"{MAX_REQUEST_BYTES})",
    )
    assert_serving(stub, v0)


@pytest.fixture(scope="module")
def v0_request(v0: common_pb2.FourProof) -> bytes:
    return consensus_pb2.ValidateFourProofsRequest(proofs=v0).SerializeToString()


@st.composite
def hostile_requests(draw: st.DrawFn, valid: bytes) -> bytes:
    """Random bytes, the valid request with a few bytes overwritten, or the valid request cut
    short."""
    how = draw(st.sampled_from(["random", "overwritten", "cut"]))
    if how == "random":
        return draw(st.binary(max_size=2048))
    if how == "cut":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_hostile_bytes_get_an_answer_or_invalid_argument(
    channel: grpc.Channel,
    stub: consensus_pb2_grpc.ConsensusLayerStub,
    v0: common_pb2.FourProof,
    v0_request: bytes,
    data: st.DataObject,
) -> None:
    sent = data.draw(hostile_requests(v0_request))
    refused: object = None
    answer = b""
    try:
        answer = raw(channel, "ValidateFourProofs")(sent)
    except grpc.RpcError as error:
        refused = error
    if refused is not None:
        assert isinstance(refused, grpc.Call)
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.details()
        event("INVALID_ARGUMENT")
    else:
        result = consensus_pb2.ValidateFourProofsResponse.FromString(answer).result
        event(common_pb2.Verdict.Name(result.verdict))
        if result.verdict == common_pb2.VERDICT_VALID:
            # Only the bundle itself may be valid (e.g. a byte overwritten with its own value).
            received = consensus_pb2.ValidateFourProofsRequest.FromString(sent).proofs
            received.DiscardUnknownFields()
            assert received == v0
        else:
            assert result.verdict == common_pb2.VERDICT_REJECTED
            assert len(result.rejections) >= 1
    assert_serving(stub, v0)


# -- server-side faults --------------------------------------------------------------------


def test_unusable_recorded_state_is_internal(
    factory: CountingFactory, v0: common_pb2.FourProof
) -> None:
    def lookup(asset: bytes) -> PreviousState | None:
        return PreviousState(version=0, state_hash=b"short", poh_end=bytes(32))

    with running(ConsensusLayerServicer(factory, lookup)) as opened:
        stub = consensus_pb2_grpc.ConsensusLayerStub(opened)
        with pytest.raises(grpc.RpcError) as call:
            validate(stub, v0)
    code, details = failed(call)
    assert code == grpc.StatusCode.INTERNAL
    assert details == (
        f"ConsensusLayerMisconfigured: the recorded state of asset "
        f"{v0.stake.asset_id.id.hex()} is unusable: it needs a version below 2**64 and a "
        "32-byte state hash and PoH end"
    )


def test_naive_validation_time_is_internal(network: LocalNetwork, v0: common_pb2.FourProof) -> None:
    naive = network.context(LOCALHOST_TESTING, at=datetime(2030, 1, 1))
    with running(ConsensusLayerServicer(lambda: naive, no_recorded_states)) as opened:
        stub = consensus_pb2_grpc.ConsensusLayerStub(opened)
        with pytest.raises(grpc.RpcError) as call:
            validate(stub, v0)
    assert failed(call) == (
        grpc.StatusCode.INTERNAL,
        "ConsensusLayerMisconfigured: the validation context's time is not timezone-aware",
    )


def test_closed_stake_registry_is_unavailable(
    network: LocalNetwork, v0: common_pb2.FourProof, tmp_path: Path
) -> None:
    registry = StakeRegistry.open(tmp_path / "stake.db", registry_key=network.registry.registry_key)
    registry.close()
    context = ValidationContext(LOCALHOST_TESTING, network.trust_store(), registry)
    with running(ConsensusLayerServicer(lambda: context, no_recorded_states)) as opened:
        stub = consensus_pb2_grpc.ConsensusLayerStub(opened)
        with pytest.raises(grpc.RpcError) as call:
            validate(stub, v0)
        code, details = failed(call)
        assert code == grpc.StatusCode.UNAVAILABLE
        assert details == (
            f"StakeRegistryError: the stake registry {tmp_path / 'stake.db'} is closed"
        )


# -- recording asset states ----------------------------------------------------------------


def test_record_asset_state_without_a_recorder_is_unimplemented(
    stub: consensus_pb2_grpc.ConsensusLayerStub, network: LocalNetwork, v0: common_pb2.FourProof
) -> None:
    with pytest.raises(grpc.RpcError) as call:
        stub.RecordAssetState(
            consensus_pb2.RecordAssetStateRequest(change=sign_change(v0, 0, network.sign))
        )
    assert LEDGER_ISSUE == 6
    assert failed(call) == (
        grpc.StatusCode.UNIMPLEMENTED,
        "RecordAssetState is not implemented by this server: it has no ledger to record asset "
        "states with (issue 6)",
    )
    assert_serving(stub, v0)


class OneValidatorLedger:
    """A real :class:`StateRecorder`: a committee of one validator (the network's node, stake
    1) whose :class:`ValidatorCore` votes on the change and applies the certificate that
    :class:`VoteCollector` makes of its vote, in this process, over a ledger in ``directory``.
    One call at a time; ``calls`` counts them."""

    def __init__(self, network: LocalNetwork, directory: Path) -> None:
        key = network.node_key
        member = Member(
            validator_id=key.key_id,
            key=key,
            chain=network.node_chain(),
            stake=1,
            host="127.0.0.1",
            port=4433,
            name=NODE_NAME,
        )
        self.committee = Committee(0, (member,))
        self.ledger = Ledger.open(
            directory / "ledger.db", validator_id=key.key_id, genesis=self.committee.to_message()
        )
        self.core = ValidatorCore(
            ledger=self.ledger,
            trust_store=network.trust_store(),
            validator_id=key.key_id,
            sign=network.sign,
            context=lambda: network.context(LOCALHOST_TESTING),
        )
        self.calls = 0
        self._lock = threading.Lock()

    def record(
        self, change: ledger_pb2.AssetStateChange
    ) -> tuple[common_pb2.ValidationResult, common_pb2.StateHash | None]:
        with self._lock:
            self.calls += 1
            (answer,) = self.core.handle([ledger_pb2.LedgerRequest(change=change)])
            if answer.WhichOneof("body") == "refusal":
                refused = refusal_of(answer.refusal)
                if refused.reason is LedgerRefusal.INVALID_PROOFS and refused.validation:
                    return refused.validation, None
                raise refused
            collector = VoteCollector(change, self.committee)
            certificate = collector.add(self.committee.members[0].validator_id, answer)
            assert certificate is not None, collector.invalid
            (applied,) = self.core.handle([ledger_pb2.LedgerRequest(certificate=certificate)])
            if applied.WhichOneof("body") == "refusal":
                raise refusal_of(applied.refusal)
            return common_pb2.ValidationResult(verdict=common_pb2.VERDICT_VALID), applied.applied

    def previous(self, asset: bytes) -> PreviousState | None:
        state = self.ledger.state(asset)
        return None if state is None else state.previous()


def refusal_of(refusal: ledger_pb2.Refusal) -> ChangeRefused:
    return ChangeRefused(
        LedgerRefusal(refusal.reason),
        refusal.detail,
        validation=refusal.validation if refusal.HasField("validation") else None,
    )


@pytest.fixture
def recorder(network: LocalNetwork, tmp_path: Path) -> Iterator[OneValidatorLedger]:
    made = OneValidatorLedger(network, tmp_path)
    try:
        yield made
    finally:
        made.ledger.close()


@pytest.fixture
def recording(
    network: LocalNetwork, recorder: OneValidatorLedger
) -> Iterator[consensus_pb2_grpc.ConsensusLayerStub]:
    servicer = ConsensusLayerServicer(
        lambda: network.context(LOCALHOST_TESTING), recorder.previous, recorder
    )
    with running(servicer) as opened:
        yield consensus_pb2_grpc.ConsensusLayerStub(opened)


def record(
    stub: consensus_pb2_grpc.ConsensusLayerStub, change: ledger_pb2.AssetStateChange
) -> consensus_pb2.RecordAssetStateResponse:
    reply: consensus_pb2.RecordAssetStateResponse = stub.RecordAssetState(
        consensus_pb2.RecordAssetStateRequest(change=change)
    )
    return reply


def certificate_digest(change: ledger_pb2.AssetStateChange) -> bytes:
    ballot = Ballot.for_change(change, bytes(32))
    return hashlib.sha256(state_record_bytes(ballot)).digest()


def test_record_asset_state_records_version_0_then_1(
    recording: consensus_pb2_grpc.ConsensusLayerStub,
    recorder: OneValidatorLedger,
    network: LocalNetwork,
    v0: common_pb2.FourProof,
    v1: common_pb2.FourProof,
) -> None:
    first = sign_change(v0, 0, network.sign)
    reply = record(recording, first)
    assert reply.result == common_pb2.ValidationResult(verdict=common_pb2.VERDICT_VALID)
    assert reply.state == common_pb2.StateHash(
        certificate_digest=certificate_digest(first),
        log_index=0,
        log_root=recorder.ledger.log_root(),
        log_size=1,
    )
    # The service's recorded-state lookup is the ledger: version 1 now validates...
    assert validate(recording, v1) == common_pb2.ValidationResult(verdict=common_pb2.VERDICT_VALID)
    second = sign_change(v1, 0, network.sign)
    reply = record(recording, second)
    assert reply.result.verdict == common_pb2.VERDICT_VALID
    assert (reply.state.log_index, reply.state.log_size) == (1, 2)
    assert reply.state.certificate_digest == certificate_digest(second)
    assert recorder.ledger.state(network.asset_id(ASSET)) is not None
    # ...and version 0 no longer does: answered from the validation, the recorder not called.
    stale = record(recording, first)
    assert stale.result.verdict == common_pb2.VERDICT_REJECTED
    assert stale.result.rejections[0].detail == (
        "version 0 does not follow the recorded state (expected version 2)"
    )
    assert not stale.HasField("state")
    assert recorder.calls == 2
    assert recorder.ledger.log_size == 2


def test_record_asset_state_of_invalid_proofs_records_nothing(
    recording: consensus_pb2_grpc.ConsensusLayerStub,
    recorder: OneValidatorLedger,
    network: LocalNetwork,
    v0: common_pb2.FourProof,
) -> None:
    tampered = common_pb2.FourProof()
    tampered.CopyFrom(v0)
    tampered.work.nonce = first_failing_nonce(v0)
    reply = record(recording, sign_change(tampered, 0, network.sign))
    assert reply.result == network.validate(tampered, preset=LOCALHOST_TESTING).to_message()
    assert reply.result.verdict == common_pb2.VERDICT_REJECTED
    assert not reply.HasField("state")
    assert recorder.calls == 0
    assert recorder.ledger.log_size == 0


def test_record_asset_state_drops_unknown_fields(
    recording: consensus_pb2_grpc.ConsensusLayerStub,
    recorder: OneValidatorLedger,
    network: LocalNetwork,
    v0: common_pb2.FourProof,
) -> None:
    # The owner signed the digest of the proofs as made; an unknown field added on the way
    # would change that digest if it were kept.
    change = sign_change(v0, 0, network.sign)
    change.proofs.stake.CopyFrom(
        common_pb2.StakeProof.FromString(v0.stake.SerializeToString() + unknown_field(40))
    )
    reply = record(recording, change)
    assert reply.result.verdict == common_pb2.VERDICT_VALID
    assert reply.state.certificate_digest == certificate_digest(sign_change(v0, 0, network.sign))
    assert recorder.calls == 1


def test_record_asset_state_refusals_map_to_status_codes(
    recording: consensus_pb2_grpc.ConsensusLayerStub,
    recorder: OneValidatorLedger,
    network: LocalNetwork,
    v0: common_pb2.FourProof,
) -> None:
    forged = sign_change(v0, 0, network.sign)
    forged.owner_signature = sign_change(v0, 1, network.sign).owner_signature
    with pytest.raises(grpc.RpcError) as call:
        record(recording, forged)
    code, details = failed(call)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("INVALID_OWNER_SIGNATURE: ")
    with pytest.raises(grpc.RpcError) as call:
        record(recording, sign_change(v0, 1, network.sign))
    assert failed(call) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "WRONG_EPOCH: the change is for epoch 1, the committee is of 0",
    )
    assert recorder.calls == 2
    assert recorder.ledger.log_size == 0
    assert record(recording, sign_change(v0, 0, network.sign)).result.verdict == (
        common_pb2.VERDICT_VALID
    )


def test_record_asset_state_bad_requests_are_invalid_argument(
    recording: consensus_pb2_grpc.ConsensusLayerStub,
    recorder: OneValidatorLedger,
    network: LocalNetwork,
    v0: common_pb2.FourProof,
) -> None:
    cases = [
        (consensus_pb2.RecordAssetStateRequest(), "RecordAssetState needs a change"),
        (
            consensus_pb2.RecordAssetStateRequest(change=ledger_pb2.AssetStateChange(epoch=0)),
            "RecordAssetState needs proofs",
        ),
        (
            consensus_pb2.RecordAssetStateRequest(
                change=ledger_pb2.AssetStateChange(proofs=padded(v0, MAX_BUNDLE_BYTES + 1))
            ),
            f"proofs of {MAX_BUNDLE_BYTES + 1} bytes exceed the {MAX_BUNDLE_BYTES}-byte limit",
        ),
    ]
    for request, detail in cases:
        with pytest.raises(grpc.RpcError) as call:
            recording.RecordAssetState(request)
        assert failed(call) == (grpc.StatusCode.INVALID_ARGUMENT, detail)
    assert recorder.calls == 0
    assert_serving(recording, v0)


def test_record_asset_state_undecodable_request_is_invalid_argument(
    network: LocalNetwork, recorder: OneValidatorLedger, v0: common_pb2.FourProof
) -> None:
    servicer = ConsensusLayerServicer(
        lambda: network.context(LOCALHOST_TESTING), recorder.previous, recorder
    )
    with running(servicer) as opened:
        with pytest.raises(grpc.RpcError) as call:
            raw(opened, "RecordAssetState")(b"\x12\x05abc")  # field 2, 5 bytes, only 3 sent
        code, details = failed(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("not a hypermesh.v1.RecordAssetStateRequest: ")
        assert_serving(consensus_pb2_grpc.ConsensusLayerStub(opened), v0)
    assert recorder.calls == 0


class ClaimsWithoutState:
    """A recorder that breaks the StateRecorder contract: VALID but no StateHash."""

    def record(
        self, change: ledger_pb2.AssetStateChange
    ) -> tuple[common_pb2.ValidationResult, common_pb2.StateHash | None]:
        return common_pb2.ValidationResult(verdict=common_pb2.VERDICT_VALID), None


def test_a_recorder_breaking_its_contract_is_internal(
    factory: CountingFactory, network: LocalNetwork, v0: common_pb2.FourProof
) -> None:
    servicer = ConsensusLayerServicer(factory, no_recorded_states, ClaimsWithoutState())
    with running(servicer) as opened:
        stub = consensus_pb2_grpc.ConsensusLayerStub(opened)
        with pytest.raises(grpc.RpcError) as call:
            record(stub, sign_change(v0, 0, network.sign))
    assert failed(call) == (
        grpc.StatusCode.INTERNAL,
        "ConsensusLayerMisconfigured: the state recorder reported a valid change without the "
        "StateHash it recorded",
    )


# -- not implemented -----------------------------------------------------------------------


def test_cross_chain_sync_is_not_in_phase_1(
    stub: consensus_pb2_grpc.ConsensusLayerStub, v0: common_pb2.FourProof
) -> None:
    with pytest.raises(grpc.RpcError) as call:
        stub.CrossChainSync(consensus_pb2.CrossChainSyncRequest(dst_eid=30101, receiver=bytes(32)))
    assert failed(call) == (
        grpc.StatusCode.UNIMPLEMENTED,
        "CrossChainSync is not implemented yet: cross-chain (LayerZero V2) messaging is not "
        "scheduled in phase 1; an issue of a later phase brings it",
    )
    assert_serving(stub, v0)


# -- threads -------------------------------------------------------------------------------


def ask_in_parallel(
    stub: consensus_pb2_grpc.ConsensusLayerStub, bundles: list[common_pb2.FourProof]
) -> list[int]:
    """Send every bundle at once from its own thread; the verdicts, in order."""
    barrier = threading.Barrier(len(bundles))

    def ask(bundle: common_pb2.FourProof) -> int:
        barrier.wait()
        return validate(stub, bundle).verdict

    with futures.ThreadPoolExecutor(len(bundles)) as pool:
        return list(pool.map(ask, bundles))


def test_concurrent_requests_are_all_valid(
    stub: consensus_pb2_grpc.ConsensusLayerStub,
    v0: common_pb2.FourProof,
    factory: CountingFactory,
) -> None:
    # Eight callers on a server of four workers: the worker threads share the stake
    # registry's one SQLite connection (check_same_thread=False, behind its lock).
    before = factory.calls
    assert ask_in_parallel(stub, [v0] * 8) == [common_pb2.VERDICT_VALID] * 8
    assert factory.calls == before + 8


def test_concurrent_answers_are_not_crossed(
    stub: consensus_pb2_grpc.ConsensusLayerStub, v0: common_pb2.FourProof
) -> None:
    tampered = common_pb2.FourProof()
    tampered.CopyFrom(v0)
    tampered.work.nonce = first_failing_nonce(v0)
    verdicts = ask_in_parallel(stub, [v0, tampered] * 4)
    assert verdicts == [common_pb2.VERDICT_VALID, common_pb2.VERDICT_REJECTED] * 4
