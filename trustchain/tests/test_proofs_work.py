"""PoWork (``consensus.proofs.work``) and classic hashcash v1 stamps (``.hashcash``).

Work: every proof made verifies; the work hash is checked against an independent transcription
of the documented byte format (``oracle_hash``); every change to a field of the proof, or to
the asset or version it is checked for, gets exactly the outcome that transcription predicts
(the specific ``ProofReason``, or acceptance in the rare case the changed hash still meets the
difficulty); hostile proofs raise ``ProofRejected``, nothing else.

Hashcash: Adam Back's example stamp, copied from the shared vectors into ``tests/data/hashcash``
(see its PROVENANCE.md), parses to its published fields and value, and each check rejects with its
reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypermesh_interfaces.v1 import common_pb2
from trustchain.consensus.proofs.hashcash import (
    FUTURE_GRACE,
    HashcashStamp,
    MalformedStamp,
    StampRejected,
    parse_stamp,
    verify_stamp,
)
from trustchain.consensus.proofs.presets import DEFAULT, LOCALHOST_TESTING
from trustchain.consensus.proofs.rejections import ProofKind, ProofReason, ProofRejected
from trustchain.consensus.proofs.work import (
    RESOURCE_BYTES_SIZE,
    WORK_PREFIX_SIZE,
    WorkNotFound,
    leading_zero_bits,
    prove_work,
    resource_bytes,
    verify_work,
    work_hash,
    work_prefix,
)
from trustchain.errors import TrustChainError

VECTORS = Path(__file__).parent / "data"
HASHCASH_VECTOR = VECTORS / "hashcash" / "hashcash_v1_example.json"

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROVING = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
SPEC_FIELDS = ("cpu_millicores", "gpu_count", "gpu_memory_bytes", "memory_bytes", "storage_bytes")
SPEC_MAX = {name: U32 if name == "gpu_count" else U64 for name in SPEC_FIELDS}


# --- an independent transcription of the work hash's byte format ------------------------------


def oracle_hash(
    asset: bytes, version: int, spec: common_pb2.ResourceSpec, challenge: bytes, nonce: int
) -> bytes:
    data = b"hypermesh/work/v1\x00" + asset + version.to_bytes(8, "big")
    data += spec.cpu_millicores.to_bytes(8, "big") + spec.gpu_count.to_bytes(4, "big")
    data += spec.gpu_memory_bytes.to_bytes(8, "big") + spec.memory_bytes.to_bytes(8, "big")
    data += spec.storage_bytes.to_bytes(8, "big")
    data += challenge + nonce.to_bytes(8, "big")
    return hashlib.sha256(data).digest()


def oracle_zeros(digest: bytes) -> int:
    bits = "".join(f"{byte:08b}" for byte in digest)
    return len(bits) - len(bits.lstrip("0"))


def expected_outcome(
    proof: common_pb2.WorkProof, asset: bytes, version: int, expected_challenge: bytes
) -> bytes | ProofReason:
    """What verify_work must do under LOCALHOST_TESTING: the hash it returns or the reason."""
    if not proof.HasField("resource_spec"):
        return ProofReason.MISSING
    if len(proof.challenge) != 32 or proof.difficulty_bits > 256:
        return ProofReason.MALFORMED
    if proof.challenge != expected_challenge:
        return ProofReason.CHALLENGE_MISMATCH
    if proof.difficulty_bits < LOCALHOST_TESTING.work_bits:
        return ProofReason.INSUFFICIENT
    digest = oracle_hash(asset, version, proof.resource_spec, proof.challenge, proof.nonce)
    if oracle_zeros(digest) < proof.difficulty_bits:
        return ProofReason.VERIFICATION_FAILED
    return digest


def check_outcome(
    proof: common_pb2.WorkProof, asset: bytes, version: int, expected_challenge: bytes
) -> bytes | ProofReason:
    expected = expected_outcome(proof, asset, version, expected_challenge)
    if isinstance(expected, bytes):
        got = verify_work(
            proof,
            asset=asset,
            version=version,
            expected_challenge=expected_challenge,
            preset=LOCALHOST_TESTING,
        )
        assert got == expected
    else:
        with pytest.raises(ProofRejected) as caught:
            verify_work(
                proof,
                asset=asset,
                version=version,
                expected_challenge=expected_challenge,
                preset=LOCALHOST_TESTING,
            )
        assert caught.value.kind is ProofKind.WORK
        assert caught.value.reason is expected
    return expected


# --- fixtures -------------------------------------------------------------------------------

ASSET_A = hashlib.sha256(b"asset A").digest()
ASSET_B = hashlib.sha256(b"asset B").digest()
BEACON = hashlib.sha256(b"a beacon").digest()
VERSION = 7
BITS = 12
SPEC = common_pb2.ResourceSpec(
    cpu_millicores=4_000,
    gpu_count=2,
    gpu_memory_bytes=16 << 30,
    memory_bytes=32 << 30,
    storage_bytes=1 << 40,
)
PROOF = prove_work(ASSET_A, VERSION, SPEC, BEACON, BITS)


def copy_of(proof: common_pb2.WorkProof) -> common_pb2.WorkProof:
    clone = common_pb2.WorkProof()
    clone.CopyFrom(proof)
    return clone


def verify(
    proof: common_pb2.WorkProof,
    asset: bytes = ASSET_A,
    version: int = VERSION,
    challenge: bytes = BEACON,
    preset: Any = LOCALHOST_TESTING,
) -> bytes:
    return verify_work(
        proof, asset=asset, version=version, expected_challenge=challenge, preset=preset
    )


def rejection(proof: common_pb2.WorkProof, **kwargs: Any) -> ProofReason:
    with pytest.raises(ProofRejected) as caught:
        verify(proof, **kwargs)
    assert caught.value.kind is ProofKind.WORK
    return caught.value.reason


specs = st.builds(
    common_pb2.ResourceSpec,
    cpu_millicores=st.integers(0, U64),
    gpu_count=st.integers(0, U32),
    gpu_memory_bytes=st.integers(0, U64),
    memory_bytes=st.integers(0, U64),
    storage_bytes=st.integers(0, U64),
)
hashes = st.binary(min_size=32, max_size=32)


# --- the byte format ------------------------------------------------------------------------


def test_resource_bytes_is_fixed_width_big_endian() -> None:
    spec = common_pb2.ResourceSpec(
        cpu_millicores=0x0102030405060708,
        gpu_count=0x090A0B0C,
        gpu_memory_bytes=0x1112131415161718,
        memory_bytes=0x2122232425262728,
        storage_bytes=0x3132333435363738,
    )
    assert RESOURCE_BYTES_SIZE == 36
    assert resource_bytes(spec) == bytes.fromhex(
        "0102030405060708090a0b0c111213141516171821222324252627283132333435363738"
    )
    assert resource_bytes(common_pb2.ResourceSpec()) == bytes(36)
    largest = common_pb2.ResourceSpec(**SPEC_MAX)
    assert resource_bytes(largest) == b"\xff" * 36


def test_resource_bytes_ignore_unknown_fields_and_encoding() -> None:
    # Field 99, wire type 0 (tag varint 98 06), value 5: unknown to ResourceSpec, but protobuf
    # keeps it and serializes it again.
    wire = SPEC.SerializeToString() + bytes.fromhex("980605")
    padded = common_pb2.ResourceSpec.FromString(wire)
    assert padded.SerializeToString() != SPEC.SerializeToString()
    assert resource_bytes(padded) == resource_bytes(SPEC)
    assert verify(prove_work(ASSET_A, VERSION, padded, BEACON, 8)) == verify(
        prove_work(ASSET_A, VERSION, SPEC, BEACON, 8)
    )


@PROPERTY
@given(
    asset=hashes,
    version=st.integers(0, U64),
    spec=specs,
    challenge=hashes,
    nonce=st.integers(0, U64),
)
def test_work_hash_matches_the_documented_layout(
    asset: bytes, version: int, spec: common_pb2.ResourceSpec, challenge: bytes, nonce: int
) -> None:
    prefix = work_prefix(asset, version, spec, challenge)
    assert len(prefix) == WORK_PREFIX_SIZE == 126
    assert prefix[:18] == b"hypermesh/work/v1\x00"
    assert prefix[18:50] == asset
    assert prefix[50:58] == version.to_bytes(8, "big")
    assert prefix[58:94] == resource_bytes(spec)
    assert prefix[94:] == challenge
    assert work_hash(prefix, nonce) == oracle_hash(asset, version, spec, challenge, nonce)


@pytest.mark.parametrize(
    ("asset", "version", "challenge"),
    [
        (ASSET_A[:31], 0, BEACON),
        (ASSET_A + b"\x00", 0, BEACON),
        (ASSET_A, -1, BEACON),
        (ASSET_A, 1 << 64, BEACON),
        (ASSET_A, 0, BEACON[:31]),
        (ASSET_A, 0, b""),
    ],
)
def test_work_prefix_rejects_out_of_range_arguments(
    asset: bytes, version: int, challenge: bytes
) -> None:
    with pytest.raises(ValueError, match="must"):
        work_prefix(asset, version, SPEC, challenge)


def test_work_hash_nonce_must_fit_64_bits() -> None:
    prefix = work_prefix(ASSET_A, 0, SPEC, BEACON)
    for nonce in (-1, 1 << 64):
        with pytest.raises(ValueError, match="nonce"):
            work_hash(prefix, nonce)


@pytest.mark.parametrize(
    ("digest", "zeros"),
    [
        (b"", 0),
        (b"\x80", 0),
        (b"\x7f", 1),
        (b"\x01", 7),
        (b"\x00", 8),
        (b"\x00\x00\x00\x01", 31),
        (bytes(32), 256),
        (bytes(31) + b"\x01", 255),
        (b"\x00\x10" + b"\xff" * 30, 11),
    ],
)
def test_leading_zero_bits_known_values(digest: bytes, zeros: int) -> None:
    assert leading_zero_bits(digest) == zeros


@PROPERTY
@given(st.binary(max_size=40))
def test_leading_zero_bits_counts_bits(digest: bytes) -> None:
    assert leading_zero_bits(digest) == oracle_zeros(digest)


# --- proving and verifying ------------------------------------------------------------------


def test_fixture_proof_round_trip() -> None:
    assert PROOF.difficulty_bits == BITS
    assert PROOF.challenge == BEACON
    assert PROOF.resource_spec == SPEC
    digest = verify(PROOF)
    assert digest == oracle_hash(ASSET_A, VERSION, SPEC, BEACON, PROOF.nonce)
    assert oracle_zeros(digest) >= BITS


@PROVING
@given(
    asset=hashes,
    version=st.integers(0, U64),
    spec=specs,
    challenge=hashes,
    bits=st.integers(8, 12),
)
def test_prove_verify_round_trip(
    asset: bytes, version: int, spec: common_pb2.ResourceSpec, challenge: bytes, bits: int
) -> None:
    proof = prove_work(asset, version, spec, challenge, bits)
    assert proof.resource_spec == spec
    assert (proof.challenge, proof.difficulty_bits) == (challenge, bits)
    digest = verify_work(
        proof, asset=asset, version=version, expected_challenge=challenge, preset=LOCALHOST_TESTING
    )
    assert digest == oracle_hash(asset, version, spec, challenge, proof.nonce)
    assert oracle_zeros(digest) >= bits


@PROVING
@given(start=st.integers(0, U64 - 10_000), bits=st.integers(0, 8))
def test_prove_returns_the_first_good_nonce_from_start(start: int, bits: int) -> None:
    proof = prove_work(ASSET_B, 3, SPEC, BEACON, bits, start_nonce=start)
    assert proof.nonce >= start
    for nonce in range(start, proof.nonce):
        assert oracle_zeros(oracle_hash(ASSET_B, 3, SPEC, BEACON, nonce)) < bits
    assert oracle_zeros(oracle_hash(ASSET_B, 3, SPEC, BEACON, proof.nonce)) >= bits


def test_prove_with_zero_bits_takes_the_start_nonce() -> None:
    assert prove_work(ASSET_A, 0, SPEC, BEACON, 0, start_nonce=U64).nonce == U64


def test_prove_copies_the_resource_spec() -> None:
    spec = common_pb2.ResourceSpec()
    spec.CopyFrom(SPEC)
    proof = prove_work(ASSET_A, VERSION, spec, BEACON, 8)
    spec.cpu_millicores += 1
    assert proof.resource_spec == SPEC


def test_prove_gives_up_after_max_attempts() -> None:
    with pytest.raises(WorkNotFound) as caught:
        prove_work(ASSET_A, VERSION, SPEC, BEACON, 64, start_nonce=5, max_attempts=1_000)
    assert (caught.value.bits, caught.value.start_nonce, caught.value.attempts) == (64, 5, 1_000)
    assert isinstance(caught.value, TrustChainError)


def test_prove_beyond_64_bits_searches_whole_digests() -> None:
    with pytest.raises(WorkNotFound) as caught:
        prove_work(ASSET_A, VERSION, SPEC, BEACON, 200, max_attempts=500)
    assert caught.value.attempts == 500


def test_prove_stops_at_the_end_of_the_nonce_space() -> None:
    with pytest.raises(WorkNotFound) as caught:
        prove_work(ASSET_A, VERSION, SPEC, BEACON, 64, start_nonce=U64 - 2)
    assert (caught.value.start_nonce, caught.value.attempts) == (U64 - 2, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bits": -1},
        {"bits": 257},
        {"start_nonce": -1},
        {"start_nonce": 1 << 64},
        {"max_attempts": 0},
        {"max_attempts": -5},
    ],
)
def test_prove_rejects_out_of_range_arguments(kwargs: dict[str, int]) -> None:
    bits = kwargs.pop("bits", 8)
    with pytest.raises(ValueError, match="must"):
        prove_work(ASSET_A, VERSION, SPEC, BEACON, bits, **kwargs)


# --- every change is rejected with the right reason -----------------------------------------


@pytest.mark.parametrize("name", SPEC_FIELDS)
def test_changed_resource_figure_fails(name: str) -> None:
    proof = copy_of(PROOF)
    setattr(proof.resource_spec, name, getattr(SPEC, name) + 1)
    assert rejection(proof) is ProofReason.VERIFICATION_FAILED


def test_changed_nonce_fails() -> None:
    proof = copy_of(PROOF)
    proof.nonce += 1
    assert rejection(proof) is ProofReason.VERIFICATION_FAILED


def test_changed_challenge_is_another_beacon() -> None:
    proof = copy_of(PROOF)
    proof.challenge = ASSET_B
    assert rejection(proof) is ProofReason.CHALLENGE_MISMATCH
    # Checked against that other beacon, the work itself does not hold.
    assert rejection(proof, challenge=ASSET_B) is ProofReason.VERIFICATION_FAILED


def test_proof_for_asset_a_fails_for_asset_b() -> None:
    assert rejection(PROOF, asset=ASSET_B) is ProofReason.VERIFICATION_FAILED


def test_proof_for_version_n_fails_for_n_plus_1() -> None:
    assert rejection(PROOF, version=VERSION + 1) is ProofReason.VERIFICATION_FAILED
    assert rejection(PROOF, version=VERSION - 1) is ProofReason.VERIFICATION_FAILED


def test_difficulty_claims() -> None:
    zeros = oracle_zeros(verify(PROOF))
    raised = copy_of(PROOF)
    raised.difficulty_bits = zeros + 1
    assert rejection(raised) is ProofReason.VERIFICATION_FAILED
    # A lower claim the hash still meets is still valid work, as long as the preset allows it.
    lowered = copy_of(PROOF)
    lowered.difficulty_bits = LOCALHOST_TESTING.work_bits
    assert verify(lowered) == verify(PROOF)
    lowered.difficulty_bits = LOCALHOST_TESTING.work_bits - 1
    assert rejection(lowered) is ProofReason.INSUFFICIENT


def test_insufficient_bits_under_the_preset() -> None:
    assert DEFAULT.work_bits > BITS
    assert rejection(PROOF, preset=DEFAULT) is ProofReason.INSUFFICIENT
    stricter = dataclasses.replace(LOCALHOST_TESTING, work_bits=BITS + 1)
    assert rejection(PROOF, preset=stricter) is ProofReason.INSUFFICIENT
    exact = dataclasses.replace(LOCALHOST_TESTING, work_bits=BITS)
    assert verify(PROOF, preset=exact) == verify(PROOF)


FIELDS = [*SPEC_FIELDS, "challenge", "challenge+expected", "nonce", "difficulty_bits"]


@PROPERTY
@given(field=st.sampled_from([*FIELDS, "asset", "version"]), data=st.data())
def test_any_change_gets_the_predicted_outcome(field: str, data: st.DataObject) -> None:
    proof = copy_of(PROOF)
    asset, version, expected_challenge = ASSET_A, VERSION, BEACON
    if field in SPEC_FIELDS:
        old = getattr(SPEC, field)
        new = data.draw(st.integers(0, SPEC_MAX[field]).filter(lambda v: v != old))
        setattr(proof.resource_spec, field, new)
    elif field == "challenge":
        proof.challenge = data.draw(st.binary(max_size=64).filter(lambda v: v != BEACON))
    elif field == "challenge+expected":
        proof.challenge = expected_challenge = data.draw(hashes.filter(lambda v: v != BEACON))
    elif field == "nonce":
        proof.nonce = data.draw(st.integers(0, U64).filter(lambda v: v != PROOF.nonce))
    elif field == "difficulty_bits":
        proof.difficulty_bits = data.draw(
            st.integers(0, U32).filter(lambda v: v != BITS) | st.integers(0, 300)
        )
    elif field == "asset":
        asset = data.draw(hashes.filter(lambda v: v != ASSET_A))
    else:
        version = data.draw(st.integers(0, U64).filter(lambda v: v != VERSION))
    outcome = check_outcome(proof, asset, version, expected_challenge)
    if field == "challenge":
        assert outcome is (
            ProofReason.MALFORMED if len(proof.challenge) != 32 else ProofReason.CHALLENGE_MISMATCH
        )
    elif field != "difficulty_bits":
        # Any other change yields another hash: rejected, or (probability 2**-12) accepted
        # because that other hash happens to meet the difficulty too.
        assert outcome is ProofReason.VERIFICATION_FAILED or outcome != verify(PROOF)


# --- hostile input ----------------------------------------------------------------------------


def test_missing_resource_spec() -> None:
    proof = copy_of(PROOF)
    proof.ClearField("resource_spec")
    assert rejection(proof) is ProofReason.MISSING
    assert rejection(common_pb2.WorkProof()) is ProofReason.MISSING


@pytest.mark.parametrize("bits", [257, 1_000, U32])
def test_huge_difficulty_is_malformed(bits: int) -> None:
    proof = copy_of(PROOF)
    proof.difficulty_bits = bits
    assert rejection(proof) is ProofReason.MALFORMED


def test_256_bits_is_a_claim_not_a_malformation() -> None:
    proof = copy_of(PROOF)
    proof.difficulty_bits = 256
    assert rejection(proof) is ProofReason.VERIFICATION_FAILED


@pytest.mark.parametrize("size", [0, 1, 31, 33, 64, 4096])
def test_challenge_of_wrong_size_is_malformed(size: int) -> None:
    proof = copy_of(PROOF)
    proof.challenge = (BEACON * 200)[:size]
    assert rejection(proof) is ProofReason.MALFORMED


@PROPERTY
@given(
    spec=st.none() | specs,
    challenge=st.binary(max_size=48) | hashes | st.just(BEACON),
    bits=st.integers(0, U32) | st.integers(0, 24),
    nonce=st.integers(0, U64),
)
def test_hostile_proofs_get_the_predicted_outcome(
    spec: common_pb2.ResourceSpec | None, challenge: bytes, bits: int, nonce: int
) -> None:
    proof = common_pb2.WorkProof(
        resource_spec=spec, challenge=challenge, difficulty_bits=bits, nonce=nonce
    )
    check_outcome(proof, ASSET_A, VERSION, BEACON)


@PROPERTY
@given(st.binary(max_size=200))
def test_arbitrary_wire_bytes_never_crash(wire: bytes) -> None:
    proof = common_pb2.WorkProof()
    try:
        proof.ParseFromString(wire)
    except DecodeError:
        return
    check_outcome(proof, ASSET_A, VERSION, BEACON)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"asset": ASSET_A[:31]},
        {"version": -1},
        {"version": 1 << 64},
        {"challenge": BEACON[:16]},
    ],
)
def test_verify_rejects_out_of_range_expected_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        verify(PROOF, **kwargs)


# --- classic hashcash v1 ----------------------------------------------------------------------


def load_vector() -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(HASHCASH_VECTOR.read_text(encoding="utf-8"))
    return obj


VECTOR = load_vector()
STAMP: str = VECTOR["stamp"]


def test_vector_fields() -> None:
    fields = VECTOR["fields"]
    assert parse_stamp(STAMP) == HashcashStamp(
        version=fields["ver"],
        bits=fields["bits"],
        date=fields["date"],
        resource=fields["resource"],
        ext=fields["ext"],
        rand=fields["rand"],
        counter=fields["counter"],
    )
    assert parse_stamp(STAMP).timestamp == datetime(2004, 4, 28, tzinfo=UTC)


def test_vector_value() -> None:
    digest = hashlib.sha1(STAMP.encode("ascii"), usedforsecurity=False).digest()
    assert digest.hex() == VECTOR["sha1_hex"]
    assert leading_zero_bits(digest) == VECTOR["leading_zero_bits"] == 22
    assert VECTOR["valid_for_claimed_bits"] is True
    assert verify_stamp(STAMP, resource="foo", bits=20) == 22
    assert verify_stamp(STAMP, resource="foo", bits=0) == 22


def stamp_reason(text: str, **kwargs: Any) -> str:
    with pytest.raises(StampRejected) as caught:
        verify_stamp(text, **kwargs)
    assert isinstance(caught.value, TrustChainError)
    return caught.value.reason


def test_vector_rejections() -> None:
    assert stamp_reason(STAMP, resource="bar", bits=20) == "resource"
    assert stamp_reason(STAMP, resource="foo", bits=23) == "claimed-bits"
    # 22 bits of value, but the stamp only claims 20: a 21-bit requirement is not met.
    assert stamp_reason(STAMP, resource="foo", bits=21) == "claimed-bits"
    changed = STAMP[:-1] + "1"
    assert changed.endswith(":beca1")
    assert stamp_reason(changed, resource="foo", bits=20) == "value"


@PROPERTY
@given(counter=st.text(alphabet="ABCDEFabcdef0123456789+/=", min_size=1, max_size=12))
def test_any_other_counter_gets_the_predicted_outcome(counter: str) -> None:
    text = STAMP.rsplit(":", 1)[0] + ":" + counter
    zeros = oracle_zeros(hashlib.sha1(text.encode("ascii"), usedforsecurity=False).digest())
    if zeros >= 20:
        assert verify_stamp(text, resource="foo", bits=20) == zeros
    else:
        assert counter != "beca0"
        assert stamp_reason(text, resource="foo", bits=20) == "value"


def test_stamp_dates() -> None:
    stamped = datetime(2004, 4, 28, tzinfo=UTC)
    day = timedelta(days=1)
    assert verify_stamp(STAMP, resource="foo", bits=20, now=stamped, max_age=day) == 22
    assert verify_stamp(STAMP, resource="foo", bits=20, now=stamped + day, max_age=day) == 22
    late = stamped + day + timedelta(seconds=1)
    assert stamp_reason(STAMP, resource="foo", bits=20, now=late, max_age=day) == "expired"
    # Without max_age only the future is checked.
    assert verify_stamp(STAMP, resource="foo", bits=20, now=late + 1000 * day) == 22
    early = stamped - FUTURE_GRACE
    assert 2 * day == FUTURE_GRACE
    assert verify_stamp(STAMP, resource="foo", bits=20, now=early) == 22
    too_early = early - timedelta(seconds=1)
    assert stamp_reason(STAMP, resource="foo", bits=20, now=too_early) == "future"
    assert stamp_reason(STAMP, resource="foo", bits=20, now=too_early, max_age=day) == "future"
    # Another time zone, same instant.
    plus_two = timezone(timedelta(hours=2))
    same_instant = stamped.astimezone(plus_two)
    assert (
        verify_stamp(STAMP, resource="foo", bits=20, now=same_instant, max_age=timedelta(0)) == 22
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bits": -1},
        {"bits": 161},
        {"max_age": timedelta(days=1)},
        {"now": datetime(2004, 4, 28)},
    ],
)
def test_verify_stamp_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    kwargs.setdefault("bits", 20)
    with pytest.raises(ValueError, match=r"must|needs"):
        verify_stamp(STAMP, resource="foo", **kwargs)


def mint(resource: str, bits: int, date: str) -> str:
    counter = 0
    while True:
        text = f"1:{bits}:{date}:{resource}::c2FsdA==:{counter:x}"
        digest = hashlib.sha1(text.encode("ascii"), usedforsecurity=False).digest()
        if oracle_zeros(digest) >= bits:
            return text
        counter += 1


@pytest.mark.parametrize(
    ("stamp_date", "time"),
    [("251124", (0, 0, 0)), ("2511241530", (15, 30, 0)), ("251124153059", (15, 30, 59))],
)
def test_minted_stamps_verify(stamp_date: str, time: tuple[int, int, int]) -> None:
    text = mint("alice@example.org", 10, stamp_date)
    zeros = oracle_zeros(hashlib.sha1(text.encode("ascii"), usedforsecurity=False).digest())
    assert zeros >= 10
    assert verify_stamp(text, resource="alice@example.org", bits=10) == zeros
    assert parse_stamp(text).timestamp == datetime(2025, 11, 24, *time, tzinfo=UTC)


@pytest.mark.parametrize(
    ("stamp_date", "year"),
    [("000101", 2000), ("691231", 2069), ("700101", 1970), ("991231", 1999)],
)
def test_two_digit_years(stamp_date: str, year: int) -> None:
    stamp = parse_stamp(f"1:0:{stamp_date}:r::a:b")
    assert stamp.timestamp.year == year


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1:20:040428:foo::0298b26853c8ebb3",
        "1:20:040428:foo::0298b26853c8ebb3:beca0:extra",
        "0:20:040428:foo::0298b26853c8ebb3:beca0",
        "2:20:040428:foo::0298b26853c8ebb3:beca0",
        "01:20:040428:foo::0298b26853c8ebb3:beca0",
        "1:161:040428:foo::0298b26853c8ebb3:beca0",
        "1:-1:040428:foo::0298b26853c8ebb3:beca0",
        "1:+20:040428:foo::0298b26853c8ebb3:beca0",
        "1:2_0:040428:foo::0298b26853c8ebb3:beca0",
        "1: 20:040428:foo::0298b26853c8ebb3:beca0",
        "1::040428:foo::0298b26853c8ebb3:beca0",
        "1:0020:040428:foo::0298b26853c8ebb3:beca0",
        "1:20:0404:foo::0298b26853c8ebb3:beca0",
        "1:20:0404281:foo::0298b26853c8ebb3:beca0",
        "1:20:040428123:foo::0298b26853c8ebb3:beca0",
        "1:20:04042812345:foo::0298b26853c8ebb3:beca0",
        "1:20:0404281234567:foo::0298b26853c8ebb3:beca0",
        "1:20:04o428:foo::0298b26853c8ebb3:beca0",
        "1:20:041328:foo::0298b26853c8ebb3:beca0",
        "1:20:040230:foo::0298b26853c8ebb3:beca0",
        "1:20:0404282500:foo::0298b26853c8ebb3:beca0",
        "1:20:040428:f\u00f6o::0298b26853c8ebb3:beca0",
        "1:20:040428:foo:::beca0",
        "1:20:040428:foo::0298b26853c8ebb3:",
        "1:20:040428:foo::0298b26853c8ebb3:bec!a0",
        "1:20:040428:foo::0298b26853c8ebb3:beca0\n",
    ],
)
def test_malformed_stamps(text: str) -> None:
    with pytest.raises(MalformedStamp):
        parse_stamp(text)
    with pytest.raises(MalformedStamp):
        verify_stamp(text, resource="foo", bits=0)


def test_malformed_stamp_is_a_value_error() -> None:
    assert issubclass(MalformedStamp, ValueError)
    assert issubclass(MalformedStamp, TrustChainError)


@PROPERTY
@given(st.text(max_size=80) | st.lists(st.text(max_size=12), max_size=9).map(":".join))
def test_arbitrary_text_parses_or_is_malformed(text: str) -> None:
    try:
        stamp = parse_stamp(text)
    except MalformedStamp:
        return
    fields = text.split(":")
    assert fields == [
        "1",
        fields[1],
        stamp.date,
        stamp.resource,
        stamp.ext,
        stamp.rand,
        stamp.counter,
    ]
    assert stamp.version == 1
    assert int(fields[1]) == stamp.bits


base64_text = st.text(alphabet="ABCXYZabcxyz0189+/=", min_size=1, max_size=16)


@PROPERTY
@given(
    bits=st.integers(0, 160),
    day=st.dates(min_value=date(1970, 1, 1), max_value=date(2069, 12, 31)),
    resource=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
    ext=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
    rand=base64_text,
    counter=base64_text,
)
def test_well_formed_stamps_parse_back(
    bits: int, day: date, resource: str, ext: str, rand: str, counter: str
) -> None:
    resource, ext = resource.replace(":", ""), ext.replace(":", "")
    text = f"1:{bits}:{day:%y%m%d}:{resource}:{ext}:{rand}:{counter}"
    stamp = parse_stamp(text)
    assert stamp == HashcashStamp(1, bits, f"{day:%y%m%d}", resource, ext, rand, counter)
    assert stamp.timestamp == datetime(day.year, day.month, day.day, tzinfo=UTC)
