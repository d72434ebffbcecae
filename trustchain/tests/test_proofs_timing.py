"""PoTime: the chiavdf Wesolowski VDF over the previous state and the SHA-256 PoH segment.

VDFs here run a few hundred iterations (milliseconds) under test presets derived from
``LOCALHOST_TESTING``. The VDF must fail for one iteration more or less and for another
challenge, for every altered byte of its output or proof, for non-canonical encodings that
chiavdf alone accepts, and for any hostile bytes (a ProofRejected, never a crash). PoH segments
must chain: each starts at the previous one's end, so replay, reordering and back-dating fail.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import chiavdf
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypermesh_interfaces.v1 import common_pb2
from trustchain.consensus.proofs import challenges
from trustchain.consensus.proofs.presets import LOCALHOST_TESTING, Preset
from trustchain.consensus.proofs.rejections import ProofKind, ProofReason, ProofRejected
from trustchain.consensus.proofs.timing import (
    MAX_POH_HASHES,
    MAX_POH_MIXIN_SIZE,
    MAX_VDF_ITERATIONS,
    VDF_FORM_SIZE,
    VDF_GENERATOR,
    VDF_MAX_DISCRIMINANT_BITS,
    poh_extend,
    prove_poh,
    prove_time,
    prove_vdf,
    verify_poh,
    verify_time,
    verify_vdf,
)

T = 1_000
BITS = 1024
#: Requires exactly what the fixture proof has.
PRESET = replace(LOCALHOST_TESTING, vdf_iterations=T, poh_min_hashes=64)
#: A minimum low enough that T-1 and T+1 reach the mathematics.
LOW = replace(PRESET, vdf_iterations=1)
#: For this challenge and T, the last byte of the proof form has padding bits that chiavdf's
#: verifier ignores (found by trying labels: many challenges have no such bits).
CHALLENGE = hashlib.sha256(b"hypermesh/test/timing/5").digest()
OTHER = hashlib.sha256(b"hypermesh/test/timing/1").digest()
#: Below 264 iterations the Wesolowski proof is the identity form (2^T is below the prime B).
T_SHORT = 100
VDF_EXAMPLES = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FAST_EXAMPLES = settings(max_examples=200, deadline=None)


@pytest.fixture(scope="module")
def vdf() -> common_pb2.VdfProof:
    return prove_vdf(CHALLENGE, T, BITS)


def copy(proof: common_pb2.VdfProof) -> common_pb2.VdfProof:
    clone = common_pb2.VdfProof()
    clone.CopyFrom(proof)
    return clone


def rejected(
    reason: ProofReason,
    proof: common_pb2.VdfProof,
    expected: bytes = CHALLENGE,
    preset: Preset = PRESET,
) -> ProofRejected:
    with pytest.raises(ProofRejected) as info:
        verify_vdf(proof, expected_challenge=expected, preset=preset)
    assert info.value.kind is ProofKind.TIME
    assert info.value.reason is reason, info.value.detail
    return info.value


def flipped(data: bytes, index: int, mask: int) -> bytes:
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


def with_blob(proof: common_pb2.VdfProof, blob: bytes) -> common_pb2.VdfProof:
    clone = copy(proof)
    clone.output, clone.proof = blob[:VDF_FORM_SIZE], blob[VDF_FORM_SIZE:]
    return clone


def signed(coefficient: bytes) -> int:
    """chiavdf's bqfc_deserialize coefficient bytes: a sign byte, then the big-endian value."""
    value = int.from_bytes(coefficient[1:], "big")
    return -value if coefficient[0] else value


# --- chiavdf conventions, checked experimentally ----------------------------------------------


def test_form_size_is_chiavdfs_bqfc_size_for_every_discriminant_size() -> None:
    assert VDF_FORM_SIZE == 100
    for bits in (256, 512, 1024):
        proof = prove_vdf(CHALLENGE, 10, bits)
        assert len(proof.output) == len(proof.proof) == VDF_FORM_SIZE


@pytest.mark.parametrize("challenge", [CHALLENGE, OTHER])
def test_generator_is_the_form_2_1_of_the_derived_discriminant(challenge: bytes) -> None:
    discriminant = int(chiavdf.create_discriminant(challenge, BITS), 16)
    assert discriminant < 0
    assert (-discriminant).bit_length() == BITS
    assert discriminant % 8 == 1  # so (2, 1, c) with c = (1 - D) / 8 is a form of discriminant D
    a, b = chiavdf.bqfc_deserialize(hex(discriminant), VDF_GENERATOR, True)
    assert (signed(a), signed(b)) == (2, 1)


def test_chiavdf_prover_stops_when_its_shutdown_file_is_absent(tmp_path: Path) -> None:
    # Why prove_vdf passes "" (no shutdown file): a path that does not exist stops the prover.
    assert chiavdf.prove(CHALLENGE, VDF_GENERATOR, BITS, T, str(tmp_path / "absent")) == b""
    present = tmp_path / "present"
    present.touch()
    blob = chiavdf.prove(CHALLENGE, VDF_GENERATOR, BITS, T, str(present))
    assert len(blob) == 2 * VDF_FORM_SIZE
    assert blob == chiavdf.prove(CHALLENGE, VDF_GENERATOR, BITS, T, "")


def test_prove_vdf_rejects_bad_arguments() -> None:
    for challenge in (b"", bytes(31), bytes(33)):
        with pytest.raises(ValueError, match="challenge"):
            prove_vdf(challenge, T, BITS)
    for iterations in (0, -1, MAX_VDF_ITERATIONS + 1):
        with pytest.raises(ValueError, match="iterations"):
            prove_vdf(CHALLENGE, iterations, BITS)
    for bits in (0, 100, VDF_MAX_DISCRIMINANT_BITS + 8, 2048):
        with pytest.raises(ValueError, match="discriminant_bits"):
            prove_vdf(CHALLENGE, T, bits)


# --- the VDF verifies, and only for its own challenge and iteration count ---------------------


def test_vdf_verifies(vdf: common_pb2.VdfProof) -> None:
    assert (vdf.challenge, vdf.iterations, vdf.discriminant_size_bits) == (CHALLENGE, T, BITS)
    verify_vdf(vdf, expected_challenge=CHALLENGE, preset=PRESET)
    verify_vdf(vdf, expected_challenge=CHALLENGE, preset=LOW)


def test_vdf_is_deterministic(vdf: common_pb2.VdfProof) -> None:
    again = prove_vdf(CHALLENGE, T, BITS)
    assert (again.output, again.proof) == (vdf.output, vdf.proof)


def test_smaller_discriminant_verifies_under_its_preset() -> None:
    proof = prove_vdf(CHALLENGE, T, 512)
    verify_vdf(
        proof, expected_challenge=CHALLENGE, preset=replace(PRESET, vdf_discriminant_bits=512)
    )
    rejected(ProofReason.UNSUPPORTED_ALGORITHM, proof)


@pytest.mark.parametrize("iterations", [T - 1, T + 1])
def test_vdf_fails_for_another_iteration_count(vdf: common_pb2.VdfProof, iterations: int) -> None:
    proof = copy(vdf)
    proof.iterations = iterations
    rejected(ProofReason.VERIFICATION_FAILED, proof, preset=LOW)


def test_vdf_fails_for_another_challenge(vdf: common_pb2.VdfProof) -> None:
    rejected(ProofReason.CHALLENGE_MISMATCH, vdf, expected=OTHER)
    proof = copy(vdf)
    proof.challenge = OTHER
    rejected(ProofReason.VERIFICATION_FAILED, proof, expected=OTHER)
    rejected(ProofReason.CHALLENGE_MISMATCH, proof, expected=CHALLENGE)


def test_vdf_below_the_preset_is_insufficient(vdf: common_pb2.VdfProof) -> None:
    rejected(ProofReason.INSUFFICIENT, vdf, preset=replace(PRESET, vdf_iterations=T + 1))


def test_vdf_discriminant_size_must_be_the_presets(vdf: common_pb2.VdfProof) -> None:
    for bits in (0, 512, 1016, 2048):
        proof = copy(vdf)
        proof.discriminant_size_bits = bits
        rejected(ProofReason.UNSUPPORTED_ALGORITHM, proof)
    # chiavdf stops at 1024 bits, so no preset may ask for more.
    with pytest.raises(ValueError, match="vdf_discriminant_bits"):
        replace(PRESET, vdf_discriminant_bits=2048)


# --- every altered byte fails -----------------------------------------------------------------


def test_every_single_bit_flip_fails(vdf: common_pb2.VdfProof) -> None:
    blob = vdf.output + vdf.proof
    for index in range(len(blob)):
        for bit in range(8):
            rejected(
                ProofReason.VERIFICATION_FAILED, with_blob(vdf, flipped(blob, index, 1 << bit))
            )


@VDF_EXAMPLES
@given(index=st.integers(0, 2 * VDF_FORM_SIZE - 1), mask=st.integers(1, 255))
def test_any_altered_byte_fails(vdf: common_pb2.VdfProof, index: int, mask: int) -> None:
    blob = vdf.output + vdf.proof
    rejected(ProofReason.VERIFICATION_FAILED, with_blob(vdf, flipped(blob, index, mask)))


def chiavdf_accepts(proof: common_pb2.VdfProof) -> bool:
    discriminant = chiavdf.create_discriminant(proof.challenge, proof.discriminant_size_bits)
    try:
        return chiavdf.verify_n_wesolowski(
            discriminant,
            VDF_GENERATOR,
            proof.output + proof.proof,
            proof.iterations,
            proof.discriminant_size_bits,
            0,
        )
    except RuntimeError:
        return False


def test_padding_bits_that_chiavdf_ignores_are_rejected(vdf: common_pb2.VdfProof) -> None:
    blob = vdf.output + vdf.proof
    ignored = [
        altered
        for index in (VDF_FORM_SIZE - 1, 2 * VDF_FORM_SIZE - 1)  # padding sits in last bytes
        for bit in range(8)
        if chiavdf_accepts(with_blob(vdf, altered := flipped(blob, index, 1 << bit)))
    ]
    assert ignored  # this fixture has some
    for altered in ignored:
        error = rejected(ProofReason.VERIFICATION_FAILED, with_blob(vdf, altered))
        assert "canonical" in error.detail


def test_special_form_encodings_must_be_canonical() -> None:
    short = prove_vdf(CHALLENGE, T_SHORT, BITS)
    identity = b"\x04" + bytes(VDF_FORM_SIZE - 1)
    assert short.proof == identity
    verify_vdf(short, expected_challenge=CHALLENGE, preset=LOW)
    for altered in (b"\x05" + identity[1:], b"\x06" + identity[1:], identity[:-1] + b"\x01"):
        proof = copy(short)
        proof.proof = altered
        assert chiavdf_accepts(proof)  # chiavdf reads only the flag bits of special forms
        error = rejected(ProofReason.VERIFICATION_FAILED, proof, preset=LOW)
        assert "canonical" in error.detail


# --- sizes and hostile input ------------------------------------------------------------------


@FAST_EXAMPLES
@given(size=st.integers(0, 80).filter(lambda n: n != challenges.HASH_SIZE))
def test_vdf_challenge_of_wrong_size_is_malformed(vdf: common_pb2.VdfProof, size: int) -> None:
    proof = copy(vdf)
    proof.challenge = bytes(size)
    rejected(ProofReason.MALFORMED, proof, expected=bytes(size))


@FAST_EXAMPLES
@given(
    field=st.sampled_from(["output", "proof"]),
    size=st.integers(0, 300).filter(lambda n: n != VDF_FORM_SIZE),
)
def test_vdf_forms_of_wrong_size_are_malformed(
    vdf: common_pb2.VdfProof, field: str, size: int
) -> None:
    proof = copy(vdf)
    setattr(proof, field, (getattr(vdf, field) * 3)[:size])
    rejected(ProofReason.MALFORMED, proof)


@pytest.mark.parametrize("iterations", [0, MAX_VDF_ITERATIONS + 1, 2**64 - 1])
def test_vdf_iterations_out_of_bounds_are_malformed(
    vdf: common_pb2.VdfProof, iterations: int
) -> None:
    proof = copy(vdf)
    proof.iterations = iterations
    rejected(ProofReason.MALFORMED, proof, preset=LOW)


@VDF_EXAMPLES
@given(
    output=st.binary(min_size=VDF_FORM_SIZE, max_size=VDF_FORM_SIZE),
    proof=st.binary(min_size=VDF_FORM_SIZE, max_size=VDF_FORM_SIZE),
    iterations=st.integers(1, MAX_VDF_ITERATIONS),
)
def test_hostile_forms_are_rejected(output: bytes, proof: bytes, iterations: int) -> None:
    hostile = common_pb2.VdfProof(
        discriminant_size_bits=BITS,
        iterations=iterations,
        challenge=CHALLENGE,
        output=output,
        proof=proof,
    )
    rejected(ProofReason.VERIFICATION_FAILED, hostile, preset=LOW)


@pytest.mark.parametrize(
    "output",
    [
        bytes(VDF_FORM_SIZE),
        b"\xff" * VDF_FORM_SIZE,
        VDF_GENERATOR,
        b"\x04" + bytes(VDF_FORM_SIZE - 1),
    ],
)
def test_special_forms_are_rejected(output: bytes) -> None:
    for proof in (bytes(VDF_FORM_SIZE), VDF_GENERATOR, b"\x04" + bytes(VDF_FORM_SIZE - 1)):
        hostile = common_pb2.VdfProof(
            discriminant_size_bits=BITS,
            iterations=T,
            challenge=CHALLENGE,
            output=output,
            proof=proof,
        )
        rejected(ProofReason.VERIFICATION_FAILED, hostile)


@VDF_EXAMPLES
@given(
    bits=st.sampled_from([0, 8, 512, 1024, 2048, 2**32 - 1]),
    iterations=st.integers(0, 2**64 - 1),
    challenge=st.binary(max_size=40),
    output=st.binary(max_size=2 * VDF_FORM_SIZE),
    proof=st.binary(max_size=2 * VDF_FORM_SIZE),
)
def test_arbitrary_vdf_proofs_only_raise_proof_rejected(
    bits: int, iterations: int, challenge: bytes, output: bytes, proof: bytes
) -> None:
    hostile = common_pb2.VdfProof(
        discriminant_size_bits=bits,
        iterations=iterations,
        challenge=challenge,
        output=output,
        proof=proof,
    )
    with pytest.raises(ProofRejected) as info:
        verify_vdf(hostile, expected_challenge=challenge, preset=LOW)
    assert info.value.kind is ProofKind.TIME


# --- proof of history -------------------------------------------------------------------------

START = challenges.poh_genesis(hashlib.sha256(b"hypermesh/test/asset").digest())
MIXIN = hashlib.sha256(b"state digest").digest()


def naive_chain(start: bytes, num_hashes: int, mixin: bytes) -> bytes:
    h = start
    for _ in range(num_hashes):
        h = hashlib.sha256(h).digest()
    return hashlib.sha256(h + mixin).digest() if mixin else h


def poh_rejected(
    reason: ProofReason,
    segment: common_pb2.PohSegment,
    start: bytes = START,
    mixin: bytes = MIXIN,
    preset: Preset = PRESET,
) -> None:
    with pytest.raises(ProofRejected) as info:
        verify_poh(segment, expected_start=start, expected_mixin=mixin, preset=preset)
    assert info.value.kind is ProofKind.TIME
    assert info.value.reason is reason, info.value.detail


def segment_copy(segment: common_pb2.PohSegment, **changes: object) -> common_pb2.PohSegment:
    clone = common_pb2.PohSegment()
    clone.CopyFrom(segment)
    for name, value in changes.items():
        setattr(clone, name, value)
    return clone


def test_poh_extend_small_cases() -> None:
    assert poh_extend(START, 0, b"") == START
    assert poh_extend(START, 1, b"") == hashlib.sha256(START).digest()
    assert poh_extend(START, 0, MIXIN) == hashlib.sha256(START + MIXIN).digest()
    assert (
        poh_extend(START, 2, b"x")
        == hashlib.sha256(hashlib.sha256(hashlib.sha256(START).digest()).digest() + b"x").digest()
    )


@FAST_EXAMPLES
@given(
    start=st.binary(min_size=32, max_size=32),
    first=st.integers(0, 300),
    second=st.integers(0, 300),
    mixin=st.binary(max_size=MAX_POH_MIXIN_SIZE),
)
def test_poh_extend_is_the_hash_chain(start: bytes, first: int, second: int, mixin: bytes) -> None:
    end = poh_extend(start, first + second, mixin)
    assert end == naive_chain(start, first + second, mixin)
    assert end == poh_extend(poh_extend(start, first, b""), second, mixin)


def test_poh_extend_rejects_bad_arguments() -> None:
    for start in (b"", bytes(31), bytes(33)):
        with pytest.raises(ValueError, match="start"):
            poh_extend(start, 1, b"")
    for count in (-1, MAX_POH_HASHES + 1):
        with pytest.raises(ValueError, match="num_hashes"):
            poh_extend(START, count, b"")
    with pytest.raises(ValueError, match="mixin"):
        poh_extend(START, 1, bytes(MAX_POH_MIXIN_SIZE + 1))


def chain_of_versions(count: int) -> tuple[list[common_pb2.PohSegment], list[bytes]]:
    segments, mixins, start = [], [], START
    for version in range(count):
        mixin = hashlib.sha256(b"state %d" % version).digest()
        segment = prove_poh(start, PRESET.poh_min_hashes + version, mixin)
        segments.append(segment)
        mixins.append(mixin)
        start = segment.end_hash
    return segments, mixins


def expected_start(segments: list[common_pb2.PohSegment], version: int) -> bytes:
    return START if version == 0 else segments[version - 1].end_hash


def test_chain_of_versions_verifies() -> None:
    segments, mixins = chain_of_versions(5)
    for version, segment in enumerate(segments):
        verify_poh(
            segment,
            expected_start=expected_start(segments, version),
            expected_mixin=mixins[version],
            preset=PRESET,
        )


def test_reordering_replay_and_back_dating_are_rejected() -> None:
    segments, mixins = chain_of_versions(4)
    # Reordering: version 2's segment presented for version 1.
    poh_rejected(
        ProofReason.CHALLENGE_MISMATCH, segments[2], expected_start(segments, 1), mixins[2]
    )
    # Replay: version 1's segment presented again for version 2.
    poh_rejected(
        ProofReason.CHALLENGE_MISMATCH, segments[1], expected_start(segments, 2), mixins[1]
    )
    # Back-dating: version 3 computed from an older end (version 0's) than version 2's.
    back_dated = prove_poh(segments[0].end_hash, PRESET.poh_min_hashes, mixins[3])
    poh_rejected(ProofReason.CHALLENGE_MISMATCH, back_dated, expected_start(segments, 3), mixins[3])
    back_dated = prove_poh(START, PRESET.poh_min_hashes, mixins[3])
    poh_rejected(ProofReason.CHALLENGE_MISMATCH, back_dated, expected_start(segments, 3), mixins[3])


def test_every_field_change_is_rejected() -> None:
    segment = prove_poh(START, PRESET.poh_min_hashes + 1, MIXIN)
    verify_poh(segment, expected_start=START, expected_mixin=MIXIN, preset=PRESET)
    other = hashlib.sha256(b"other").digest()
    # start_hash
    poh_rejected(ProofReason.CHALLENGE_MISMATCH, segment_copy(segment, start_hash=other))
    poh_rejected(
        ProofReason.VERIFICATION_FAILED, segment_copy(segment, start_hash=other), start=other
    )
    # num_hashes
    for count in (segment.num_hashes - 1, segment.num_hashes + 1):
        poh_rejected(ProofReason.VERIFICATION_FAILED, segment_copy(segment, num_hashes=count))
    poh_rejected(
        ProofReason.INSUFFICIENT, segment_copy(segment, num_hashes=PRESET.poh_min_hashes - 1)
    )
    poh_rejected(ProofReason.INSUFFICIENT, segment, preset=replace(PRESET, poh_min_hashes=10**6))
    # mixin
    for mixin in (b"", other, MIXIN[:-1]):
        poh_rejected(ProofReason.INCONSISTENT, segment_copy(segment, mixin=mixin))
        poh_rejected(
            ProofReason.VERIFICATION_FAILED, segment_copy(segment, mixin=mixin), mixin=mixin
        )
    # end_hash
    for index in range(challenges.HASH_SIZE):
        end = flipped(segment.end_hash, index, 0x01)
        poh_rejected(ProofReason.VERIFICATION_FAILED, segment_copy(segment, end_hash=end))


@FAST_EXAMPLES
@given(
    field=st.sampled_from(["start_hash", "end_hash"]),
    size=st.integers(0, 80).filter(lambda n: n != challenges.HASH_SIZE),
)
def test_poh_hashes_of_wrong_size_are_malformed(field: str, size: int) -> None:
    segment = prove_poh(START, 1, MIXIN)
    poh_rejected(ProofReason.MALFORMED, segment_copy(segment, **{field: bytes(size)}))


def test_poh_oversized_mixin_and_counts_are_malformed() -> None:
    segment = prove_poh(START, PRESET.poh_min_hashes, MIXIN)
    big = bytes(MAX_POH_MIXIN_SIZE + 1)
    poh_rejected(ProofReason.MALFORMED, segment_copy(segment, mixin=big), mixin=big)
    for count in (MAX_POH_HASHES + 1, 2**64 - 1):
        poh_rejected(ProofReason.MALFORMED, segment_copy(segment, num_hashes=count))


@FAST_EXAMPLES
@given(
    start=st.binary(max_size=40),
    num_hashes=st.one_of(st.integers(0, 512), st.integers(0, 2**64 - 1)),
    mixin=st.binary(max_size=80),
    end=st.binary(max_size=40),
)
def test_arbitrary_segments_only_raise_proof_rejected(
    start: bytes, num_hashes: int, mixin: bytes, end: bytes
) -> None:
    segment = common_pb2.PohSegment(
        start_hash=start, num_hashes=num_hashes, mixin=mixin, end_hash=end
    )
    with pytest.raises(ProofRejected) as info:
        verify_poh(segment, expected_start=start, expected_mixin=mixin, preset=PRESET)
    assert info.value.kind is ProofKind.TIME


# --- the time proof ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def time_proof() -> common_pb2.TimeProof:
    return prove_time(CHALLENGE, START, MIXIN, PRESET)


def time_rejected(reason: ProofReason, proof: common_pb2.TimeProof, **expected: bytes) -> None:
    values = {"previous": CHALLENGE, "poh_start": START, "mixin": MIXIN} | expected
    with pytest.raises(ProofRejected) as info:
        verify_time(
            proof,
            expected_previous=values["previous"],
            expected_poh_start=values["poh_start"],
            expected_mixin=values["mixin"],
            preset=PRESET,
        )
    assert info.value.kind is ProofKind.TIME
    assert info.value.reason is reason, info.value.detail


def test_time_proof_verifies(time_proof: common_pb2.TimeProof) -> None:
    assert time_proof.vdf.iterations == PRESET.vdf_iterations
    assert time_proof.vdf.discriminant_size_bits == PRESET.vdf_discriminant_bits
    assert time_proof.poh.num_hashes == PRESET.poh_min_hashes
    verify_time(
        time_proof,
        expected_previous=CHALLENGE,
        expected_poh_start=START,
        expected_mixin=MIXIN,
        preset=PRESET,
    )


def test_time_proof_parts_are_required(time_proof: common_pb2.TimeProof) -> None:
    for part in ("vdf", "poh"):
        proof = common_pb2.TimeProof()
        proof.CopyFrom(time_proof)
        proof.ClearField(part)
        time_rejected(ProofReason.MISSING, proof)
    time_rejected(ProofReason.MISSING, common_pb2.TimeProof())


def test_time_proof_checks_both_parts(time_proof: common_pb2.TimeProof) -> None:
    time_rejected(ProofReason.CHALLENGE_MISMATCH, time_proof, previous=OTHER)
    time_rejected(ProofReason.CHALLENGE_MISMATCH, time_proof, poh_start=OTHER)
    time_rejected(ProofReason.INCONSISTENT, time_proof, mixin=OTHER)
    proof = common_pb2.TimeProof()
    proof.CopyFrom(time_proof)
    proof.vdf.output = flipped(proof.vdf.output, 10, 0x40)
    time_rejected(ProofReason.VERIFICATION_FAILED, proof)
    proof.CopyFrom(time_proof)
    proof.poh.end_hash = flipped(proof.poh.end_hash, 0, 0x01)
    time_rejected(ProofReason.VERIFICATION_FAILED, proof)


def test_time_proofs_chain_across_versions() -> None:
    asset = hashlib.sha256(b"hypermesh/test/chained-asset").digest()
    previous, poh_start = challenges.genesis_hash(asset), challenges.poh_genesis(asset)
    for version in range(3):
        mixin = hashlib.sha256(b"state digest %d" % version).digest()
        proof = prove_time(previous, poh_start, mixin, PRESET)
        verify_time(
            proof,
            expected_previous=previous,
            expected_poh_start=poh_start,
            expected_mixin=mixin,
            preset=PRESET,
        )
        # Stand-in for bundle.state_hash: any hash of the new state works for the chain.
        previous = hashlib.sha256(proof.SerializeToString(deterministic=True)).digest()
        poh_start = proof.poh.end_hash
