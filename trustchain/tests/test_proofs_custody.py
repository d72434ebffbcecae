"""Tests of the proof of custody: content-defined chunking, the chunk Merkle tree, its proofs.

* Chunking: chunks concatenate back to the data, sizes stay in bounds, cuts follow the byte
  format of the module docstring (checked against a literal transcription of it), and an
  insertion near the start leaves the later chunks unchanged.
* Tree: roots and audit paths are RFC 9162's (:mod:`trustchain.ct.merkle`), for every index of
  small trees and for a tree of 100,003 chunks.
* Verification: honest proofs pass; every mutation (a flipped byte in any field, a wrong index,
  a dropped, added or reordered proof, a wrong root, chunk count or challenge) is rejected with
  its exact reason; hostile input (any bytes in any field, huge lists and counts) only ever
  raises ``ProofRejected``.
* Statistics: a holder missing 5% of the chunks is caught at the rate
  :func:`missing_detection_probability` predicts (see
  :func:`test_detection_rate_of_a_holder_missing_5_percent`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hypermesh_interfaces.v1 import common_pb2
from trustchain.consensus.proofs.challenges import custody_indices
from trustchain.consensus.proofs.custody import (
    AVG_CHUNK,
    MAX_CHUNK,
    MAX_CHUNKS,
    MIN_CHUNK,
    CustodyTree,
    chunk,
    missing_detection_probability,
    verify_custody,
)
from trustchain.consensus.proofs.rejections import ProofKind, ProofReason, ProofRejected
from trustchain.ct import merkle

Proof = common_pb2.ChunkInclusionProof

SLOW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def copy(proof: Proof) -> Proof:
    result = Proof()
    result.CopyFrom(proof)
    return result


def flip(value: bytes, position: int, mask: int) -> bytes:
    """``value`` with byte ``position % len(value)`` xored with ``mask`` (1..255)."""
    position %= len(value)
    return value[:position] + bytes([value[position] ^ mask]) + value[position + 1 :]


def rejection(
    root: bytes, chunk_count: int, challenge: bytes, count: int, proofs: list[Proof]
) -> ProofReason:
    with pytest.raises(ProofRejected) as info:
        verify_custody(root, chunk_count, challenge, count, proofs)
    assert info.value.kind is ProofKind.SPACE
    return info.value.reason


# --- chunking -----------------------------------------------------------------------------------


def literal_chunk(data: bytes) -> list[bytes]:
    """The chunking of the custody module's docstring, transcribed literally and slowly: the
    gear value of each byte is hashed when needed, the cut conditions read the top bits."""
    chunks = []
    start = 0
    while start < len(data):
        if len(data) - start <= MIN_CHUNK:
            chunks.append(data[start:])
            break
        length = min(len(data) - start, MAX_CHUNK)
        fp = 0
        for offset in range(MIN_CHUNK, min(len(data) - start, MAX_CHUNK)):
            gear = hashlib.sha256(b"hypermesh/custody-gear/v1\x00" + bytes([data[start + offset]]))
            fp = (fp * 2 + int.from_bytes(gear.digest()[:8], "big")) % 2**64
            top_bits = 15 if offset < AVG_CHUNK else 11
            if fp >> (64 - top_bits) == 0:
                length = offset + 1
                break
        chunks.append(data[start : start + length])
        start += length
    return chunks


def check_bounds(chunks: list[bytes]) -> None:
    assert chunks
    for piece in chunks[:-1]:
        assert MIN_CHUNK < len(piece) <= MAX_CHUNK
    assert 1 <= len(chunks[-1]) <= MAX_CHUNK


@settings(SLOW, max_examples=10)
@given(seed=st.integers(0, 2**32), size=st.integers(1, 60_000) | st.integers(20_000, 60_000))
def test_chunking_follows_the_documented_byte_format(seed: int, size: int) -> None:
    data = random_bytes(seed, size)
    assert chunk(data) == literal_chunk(data)


def test_chunking_of_low_entropy_data_follows_the_documented_byte_format() -> None:
    data = bytes(150_000) + b"\x01" * 70_000 + bytes(range(256)) * 100
    chunks = chunk(data)
    assert chunks == literal_chunk(data)
    check_bounds(chunks)
    assert b"".join(chunks) == data


def test_constant_data_is_cut_at_the_maximum_size() -> None:
    # The gear hash of a constant byte settles on one value; for 0x00 its top 11 bits are not
    # all zero, so no content cut is found and every chunk but the last is MAX_CHUNK bytes.
    data = bytes(5 * MAX_CHUNK + 123)
    assert [len(piece) for piece in chunk(data)] == [MAX_CHUNK] * 5 + [123]


def test_chunking_empty_data_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        chunk(b"")


@pytest.mark.parametrize("size", [1, MIN_CHUNK - 1, MIN_CHUNK, MIN_CHUNK + 1])
def test_short_data_is_one_chunk(size: int) -> None:
    data = random_bytes(size, size)
    assert chunk(data) == [data]


@settings(SLOW, max_examples=20)
@given(
    seed=st.integers(0, 2**32),
    position=st.integers(0, 1000),
    inserted=st.binary(min_size=1, max_size=16),
)
def test_an_insertion_near_the_start_changes_only_nearby_chunks(
    seed: int, position: int, inserted: bytes
) -> None:
    data = random_bytes(seed, 200_000)
    edited = data[:position] + inserted + data[position:]
    before, after = chunk(data), chunk(edited)
    assert len(before) >= 10
    # Cuts resynchronize at the first content cut after the edit: at most the first few chunks
    # differ, all the later ones are the same bytes (and so the same Merkle leaves).
    changed = [piece for piece in before if piece not in set(after)]
    assert len(changed) <= 3
    unchanged = len(before) - 3
    assert before[-unchanged:] == after[-unchanged:]


# --- the tree ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [*range(1, 34), 63, 64, 65, 100])
def test_tree_is_the_rfc9162_tree_of_the_chunk_digests(size: int) -> None:
    chunks = [b"chunk %d" % i for i in range(size)]
    tree = CustodyTree.build(chunks)
    digests = [hashlib.sha256(piece).digest() for piece in chunks]
    assert tree.size == size
    assert tree.digests == tuple(digests)
    assert tree.root == merkle.root_from_leaf_hashes([merkle.leaf_hash(d) for d in digests])
    height = (size - 1).bit_length()
    for index, piece in enumerate(chunks):
        proof = tree.prove(index, piece)
        assert proof.chunk_index == index
        assert proof.chunk_digest == digests[index]
        assert proof.chunk == piece
        assert len(proof.sibling_hashes) <= height
        merkle.verify_inclusion(
            merkle.leaf_hash(digests[index]), index, size, list(proof.sibling_hashes), tree.root
        )


def test_a_single_chunk_tree_has_empty_paths() -> None:
    tree = CustodyTree.build([b"all of it"])
    challenge = hashlib.sha256(b"single").digest()
    proofs = tree.prove_challenge(challenge, 4, [b"all of it"])
    assert [p.chunk_index for p in proofs] == [0, 0, 0, 0]
    assert all(not p.sibling_hashes for p in proofs)
    verify_custody(tree.root, 1, challenge, 4, proofs)
    proofs[2].sibling_hashes.append(bytes(32))
    assert rejection(tree.root, 1, challenge, 4, proofs) is ProofReason.MALFORMED


def test_prove_refuses_a_wrong_chunk_or_index() -> None:
    chunks = [b"a", b"b", b"c"]
    tree = CustodyTree.build(chunks)
    with pytest.raises(ValueError, match="SHA-256 differs"):
        tree.prove(1, b"a")
    for index in (-1, 3):
        with pytest.raises(ValueError, match="not in a tree"):
            tree.prove(index, b"a")
    with pytest.raises(ValueError, match="3 chunks, 2 were given"):
        tree.prove_challenge(bytes(32), 2, chunks[:2])


def test_build_refuses_chunks_no_proof_could_carry() -> None:
    with pytest.raises(ValueError, match="got 0"):
        CustodyTree.build([])
    with pytest.raises(ValueError, match="chunk 1 has 0 bytes"):
        CustodyTree.build([b"a", b""])
    with pytest.raises(ValueError, match=f"chunk 0 has {MAX_CHUNK + 1} bytes"):
        CustodyTree.build([bytes(MAX_CHUNK + 1)])


def test_a_tree_of_100003_chunks() -> None:
    chunks = [i.to_bytes(4, "big") for i in range(100_003)]
    tree = CustodyTree.build(chunks)
    assert tree.root == merkle.root_from_leaf_hashes(
        [merkle.leaf_hash(hashlib.sha256(piece).digest()) for piece in chunks]
    )
    challenge = hashlib.sha256(b"large").digest()
    proofs = tree.prove_challenge(challenge, 32, chunks)
    assert [p.chunk_index for p in proofs] == custody_indices(challenge, 100_003, 32)
    verify_custody(tree.root, tree.size, challenge, 32, proofs)
    # The last chunk sits on the right edge: its path has the shortest shape.
    last = tree.prove(100_002, chunks[-1])
    assert len(last.sibling_hashes) == len(merkle.inclusion_path(100_002, 100_003))


# --- round trip ----------------------------------------------------------------------------------


@settings(SLOW, max_examples=30)
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(1, 300_000) | st.integers(100_000, 300_000),
    challenge=st.binary(min_size=32, max_size=32),
    count=st.integers(1, 32),
)
def test_round_trip(seed: int, size: int, challenge: bytes, count: int) -> None:
    data = random_bytes(seed, size)
    chunks = chunk(data)
    assert b"".join(chunks) == data
    check_bounds(chunks)
    tree = CustodyTree.build(chunks)
    assert tree.size == len(chunks)
    proofs = tree.prove_challenge(challenge, count, chunks)
    assert [p.chunk_index for p in proofs] == custody_indices(challenge, len(chunks), count)
    assert [p.chunk for p in proofs] == [chunks[p.chunk_index] for p in proofs]
    verify_custody(tree.root, tree.size, challenge, count, proofs)


# --- mutations -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Honest:
    chunks: tuple[bytes, ...]
    tree: CustodyTree
    challenge: bytes
    count: int
    proofs: tuple[Proof, ...]

    def fresh(self) -> list[Proof]:
        return [copy(p) for p in self.proofs]


@functools.cache
def honest() -> Honest:
    """An asset of 17 chunks (not a power of two), 8 proofs answering a challenge."""
    chunks = tuple(chunk(random_bytes(10, 150_000)))
    tree = CustodyTree.build(chunks)
    challenge = hashlib.sha256(b"mutation challenge").digest()
    proofs = tuple(tree.prove_challenge(challenge, 8, chunks))
    assert len({p.chunk_index for p in proofs}) > 1
    assert tree.size & (tree.size - 1)
    return Honest(chunks, tree, challenge, 8, proofs)


def test_honest_proofs_pass() -> None:
    h = honest()
    verify_custody(h.tree.root, h.tree.size, h.challenge, h.count, h.fresh())


MUTATIONS = [
    "chunk byte",
    "digest byte",
    "sibling byte",
    "other chunk with its own digest",
    "chunk index",
    "drop proof",
    "add proof",
    "reorder proofs",
    "root byte",
    "chunk count",
    "challenge",
]


@settings(SLOW, max_examples=400)
@given(
    mutation=st.sampled_from(MUTATIONS),
    which=st.integers(0, 7),
    position=st.integers(0, MAX_CHUNK),
    mask=st.integers(1, 255),
    data=st.data(),
)
def test_every_mutation_is_rejected_with_its_reason(
    mutation: str, which: int, position: int, mask: int, data: st.DataObject
) -> None:
    h = honest()
    root, size, challenge, count = h.tree.root, h.tree.size, h.challenge, h.count
    proofs = h.fresh()
    target = proofs[which]
    expected: ProofReason
    if mutation == "chunk byte":
        target.chunk = flip(target.chunk, position, mask)
        expected = ProofReason.VERIFICATION_FAILED
    elif mutation == "digest byte":
        target.chunk_digest = flip(target.chunk_digest, position, mask)
        expected = ProofReason.VERIFICATION_FAILED
    elif mutation == "sibling byte":
        k = data.draw(st.integers(0, len(target.sibling_hashes) - 1))
        target.sibling_hashes[k] = flip(target.sibling_hashes[k], position, mask)
        expected = ProofReason.VERIFICATION_FAILED
    elif mutation == "other chunk with its own digest":
        other = data.draw(st.binary(min_size=1, max_size=100))
        assume(other != target.chunk)
        target.chunk = other
        target.chunk_digest = hashlib.sha256(other).digest()
        expected = ProofReason.VERIFICATION_FAILED
    elif mutation == "chunk index":
        index = data.draw(st.integers(0, 2**64 - 1) | st.integers(0, size - 1))
        assume(index != target.chunk_index)
        target.chunk_index = index
        expected = ProofReason.CHALLENGE_MISMATCH
    elif mutation == "drop proof":
        del proofs[which]
        expected = ProofReason.MISSING
    elif mutation == "add proof":
        proofs.insert(data.draw(st.integers(0, len(proofs))), copy(target))
        expected = ProofReason.INCONSISTENT
    elif mutation == "reorder proofs":
        order = data.draw(st.permutations(range(count)))
        reordered = [proofs[i] for i in order]
        assume([p.chunk_index for p in reordered] != [p.chunk_index for p in proofs])
        proofs = reordered
        expected = ProofReason.CHALLENGE_MISMATCH
    elif mutation == "root byte":
        root = flip(root, position, mask)
        expected = ProofReason.VERIFICATION_FAILED
    elif mutation == "chunk count":
        size = data.draw(st.integers(1, 4 * size) | st.integers(1, MAX_CHUNKS))
        assume(size != h.tree.size)
        if any(len(p.sibling_hashes) > (size - 1).bit_length() for p in proofs):
            expected = ProofReason.MALFORMED  # shape checks come first
        else:
            assume(custody_indices(challenge, size, count) != [p.chunk_index for p in proofs])
            expected = ProofReason.CHALLENGE_MISMATCH
    else:
        assert mutation == "challenge"
        challenge = data.draw(st.binary(min_size=32, max_size=32))
        assume(custody_indices(challenge, size, count) != [p.chunk_index for p in proofs])
        expected = ProofReason.CHALLENGE_MISMATCH
    assert rejection(root, size, challenge, count, proofs) is expected


def test_a_proof_of_another_asset_is_rejected() -> None:
    h = honest()
    other_chunks = chunk(random_bytes(8, 150_000))
    other = CustodyTree.build(other_chunks)
    proofs = h.fresh()
    index = proofs[0].chunk_index
    assert index < other.size
    # Same index, a genuine proof in the other asset's tree: the path does not reach our root.
    proofs[0] = other.prove(index, other_chunks[index])
    assert rejection(h.tree.root, h.tree.size, h.challenge, h.count, proofs) is (
        ProofReason.VERIFICATION_FAILED
    )


def test_a_short_audit_path_fails_verification() -> None:
    h = honest()
    proofs = h.fresh()
    del proofs[3].sibling_hashes[-1]
    assert rejection(h.tree.root, h.tree.size, h.challenge, h.count, proofs) is (
        ProofReason.VERIFICATION_FAILED
    )


# --- hostile input -------------------------------------------------------------------------------


def huge_siblings(p: Proof) -> None:
    p.sibling_hashes.extend([bytes(32)] * 1_000_000)


def long_chunk(p: Proof) -> None:
    p.chunk = bytes(MAX_CHUNK + 1)


def empty_chunk(p: Proof) -> None:
    p.chunk = b""


def short_digest(p: Proof) -> None:
    p.chunk_digest = p.chunk_digest[:-1]


def empty_digest(p: Proof) -> None:
    p.chunk_digest = b""


def long_sibling(p: Proof) -> None:
    p.sibling_hashes[0] = p.sibling_hashes[0] + b"\x00"


def one_sibling_too_many(p: Proof) -> None:
    while len(p.sibling_hashes) <= (honest().tree.size - 1).bit_length():
        p.sibling_hashes.append(bytes(32))


@pytest.mark.parametrize(
    "change",
    [
        huge_siblings,
        long_chunk,
        empty_chunk,
        short_digest,
        empty_digest,
        long_sibling,
        one_sibling_too_many,
    ],
)
@pytest.mark.parametrize("which", [0, 7])
def test_a_malformed_proof_is_rejected_as_malformed(
    change: Callable[[Proof], None], which: int
) -> None:
    h = honest()
    proofs = h.fresh()
    change(proofs[which])
    if which:
        # Every proof's shape is checked before any index: a malformed last proof is reported
        # as MALFORMED even though proof 0 now answers the wrong index.
        proofs[0].chunk_index ^= 1
    assert rejection(h.tree.root, h.tree.size, h.challenge, h.count, proofs) is (
        ProofReason.MALFORMED
    )


def test_a_message_of_another_type_is_malformed() -> None:
    h = honest()
    proofs: list[object] = list(h.fresh())
    proofs[4] = common_pb2.SpaceProof(custody_merkle_root=h.tree.root)
    with pytest.raises(ProofRejected) as info:
        verify_custody(h.tree.root, h.tree.size, h.challenge, h.count, proofs)  # type: ignore[arg-type]
    assert info.value.reason is ProofReason.MALFORMED
    assert "not a ChunkInclusionProof" in info.value.detail


@pytest.mark.parametrize("root_change", [lambda r: r[:31], lambda r: r + b"\x00", lambda r: b""])
def test_a_root_of_the_wrong_size_is_malformed(root_change: Callable[[bytes], bytes]) -> None:
    h = honest()
    root = root_change(h.tree.root)
    assert rejection(root, h.tree.size, h.challenge, h.count, h.fresh()) is ProofReason.MALFORMED


@pytest.mark.parametrize("chunk_count", [0, -1, MAX_CHUNKS + 1, 2**64 - 1, 2**200])
def test_a_chunk_count_out_of_range_is_malformed(chunk_count: int) -> None:
    h = honest()
    assert rejection(h.tree.root, chunk_count, h.challenge, h.count, h.fresh()) is (
        ProofReason.MALFORMED
    )


def test_a_maximal_chunk_and_count_are_accepted_shapes() -> None:
    # The bounds themselves are allowed: a MAX_CHUNK chunk proves, MAX_CHUNKS is a valid count
    # (the proof then fails on its content, not its shape).
    piece = random_bytes(1, MAX_CHUNK)
    tree = CustodyTree.build([piece, b"x"])
    challenge = hashlib.sha256(b"bounds").digest()
    proofs = tree.prove_challenge(challenge, 3, [piece, b"x"])
    verify_custody(tree.root, 2, challenge, 3, proofs)
    assert rejection(tree.root, MAX_CHUNKS, challenge, 3, proofs) is (
        ProofReason.CHALLENGE_MISMATCH
    )


def test_caller_errors_are_value_errors() -> None:
    h = honest()
    with pytest.raises(ValueError, match="challenge must be 32 bytes"):
        verify_custody(h.tree.root, h.tree.size, h.challenge[:16], h.count, h.fresh())
    with pytest.raises(ValueError, match=">= 1"):
        verify_custody(h.tree.root, h.tree.size, h.challenge, 0, [])


def hostile_proofs() -> st.SearchStrategy[Proof]:
    h = honest()
    some_bytes = st.binary(max_size=80)
    hashes = st.binary(min_size=32, max_size=32) | some_bytes
    return st.builds(
        lambda index, digest, siblings, content: Proof(
            chunk_index=index, chunk_digest=digest, sibling_hashes=siblings, chunk=content
        ),
        st.integers(0, 2**64 - 1) | st.integers(0, h.tree.size),
        hashes | st.sampled_from(h.tree.digests),
        st.lists(hashes, max_size=40) | st.sampled_from([list(p.sibling_hashes) for p in h.proofs]),
        some_bytes | st.sampled_from(h.chunks),
    )


@settings(SLOW, max_examples=300)
@given(
    root=st.binary(max_size=64) | st.just(honest().tree.root),
    chunk_count=st.integers(-(2**70), 2**70) | st.integers(0, 20) | st.just(2**64 - 1),
    challenge=st.binary(min_size=32, max_size=32) | st.just(honest().challenge),
    count=st.integers(1, 8),
    proofs=st.lists(hostile_proofs(), max_size=10),
)
def test_hostile_input_only_raises_proof_rejected(
    root: bytes, chunk_count: int, challenge: bytes, count: int, proofs: list[Proof]
) -> None:
    with pytest.raises(ProofRejected) as info:
        verify_custody(root, chunk_count, challenge, count, proofs)
    assert info.value.kind is ProofKind.SPACE
    assert info.value.reason in {
        ProofReason.MALFORMED,
        ProofReason.MISSING,
        ProofReason.INCONSISTENT,
        ProofReason.CHALLENGE_MISMATCH,
        ProofReason.VERIFICATION_FAILED,
    }
    if not (len(root) == 32 and 1 <= chunk_count <= MAX_CHUNKS):
        assert info.value.reason is ProofReason.MALFORMED
    elif len(proofs) != count:
        expected = ProofReason.MISSING if len(proofs) < count else ProofReason.INCONSISTENT
        assert info.value.reason is expected


# --- statistics ----------------------------------------------------------------------------------


def missing_probability_cases() -> list[tuple[float, int, float]]:
    return [(0.0, 8, 0.0), (1.0, 1, 1.0), (0.5, 1, 0.5), (0.5, 3, 0.875), (0.25, 0, 0.0)]


@pytest.mark.parametrize(("fraction", "count", "probability"), missing_probability_cases())
def test_missing_detection_probability(fraction: float, count: int, probability: float) -> None:
    assert missing_detection_probability(fraction, count) == pytest.approx(probability)


def test_missing_detection_probability_refuses_nonsense() -> None:
    for fraction in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="missing_fraction"):
            missing_detection_probability(fraction, 8)
    with pytest.raises(ValueError, match="count"):
        missing_detection_probability(0.1, -1)


STAT_CHUNKS = 2000
STAT_MISSING = 100  # 5%
STAT_TRIALS = 2000


@pytest.mark.parametrize("count", [8, 32])
def test_detection_rate_of_a_holder_missing_5_percent(count: int) -> None:
    """A holder that dropped a random 5% of an asset's 2000 chunks (keeping the tree: every
    digest and sibling hash) answers ``N = 2000`` fresh challenges of ``count`` chunks. For a
    missing chunk it can only send a guess (here the digest itself) with the genuine digest and
    path, which ``verify_custody`` rejects (VERIFICATION_FAILED); everything it holds verifies.

    Each trial is caught exactly when a challenged index is missing, and the rate of caught
    trials is a binomial proportion of mean ``p = missing_detection_probability(0.05, count)``
    (indices are uniform, drawn with replacement). Accepted: ``|observed - p| <= 4.5 *
    sqrt(p (1 - p) / N)``, a 4.5 standard deviation band (false alarm about 7e-6 under the
    normal approximation). The seeds are fixed, so the outcome is the same on every run.
    """
    rng = random.Random(20_240_505 + count)
    chunks = [hashlib.sha256(b"synthetic chunk %d" % i).digest() * 2 for i in range(STAT_CHUNKS)]
    tree = CustodyTree.build(chunks)
    missing = set(rng.sample(range(STAT_CHUNKS), STAT_MISSING))
    answers: list[Proof] = []
    for index in range(STAT_CHUNKS):
        proof = tree.prove(index, chunks[index])
        if index in missing:
            # What the holder has for a dropped chunk: digest and path, not the content.
            proof.chunk = proof.chunk_digest
        answers.append(proof)

    caught = 0
    for _ in range(STAT_TRIALS):
        challenge = rng.randbytes(32)
        indices = custody_indices(challenge, STAT_CHUNKS, count)
        proofs = [answers[i] for i in indices]
        if missing.isdisjoint(indices):
            verify_custody(tree.root, STAT_CHUNKS, challenge, count, proofs)
        else:
            assert rejection(tree.root, STAT_CHUNKS, challenge, count, proofs) is (
                ProofReason.VERIFICATION_FAILED
            )
            caught += 1

    p = missing_detection_probability(STAT_MISSING / STAT_CHUNKS, count)
    tolerance = 4.5 * math.sqrt(p * (1 - p) / STAT_TRIALS)
    observed = caught / STAT_TRIALS
    assert abs(observed - p) <= tolerance, (observed, p, tolerance)
