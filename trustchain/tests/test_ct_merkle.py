"""Property tests of the Merkle tree math and of the proofs our SQLite log generates.

One log of 100,000 entries is built per module (``TransparencyLog.extend``: one transaction, no
SCTs -- signing 10^5 hybrid SCTs would take minutes). Hypothesis then draws leaf indices and
tree sizes anywhere in it: every proof the log generates verifies against the root at that size,
and every mutation (a flipped bit in any proof component, a wrong index, size or root, a
truncated or extended proof) raises the typed proof error. Roots, audit paths and consistency
proofs are also compared with a naive, recursive transcription of RFC 9162 section 2.1 for small
trees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from trustchain.crypto.algorithms import SignatureAlgorithm
from trustchain.crypto.signatures import SigningKey
from trustchain.ct import merkle
from trustchain.ct.log import TransparencyLog
from trustchain.ct.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_path,
    inclusion_path,
    leaf_hash,
    perfect_subtrees,
    verify_consistency,
    verify_inclusion,
)
from trustchain.errors import ConsistencyProofError, InclusionProofError, ProofRequestError

N = 100_000
EDGES = sorted(
    {s for k in range(17) for s in (2**k - 1, 2**k, 2**k + 1) if 1 <= s <= N} | {N - 1, N}
)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def entry_data(i: int) -> bytes:
    return b"entry %d" % i


# --- a naive RFC 9162 section 2.1 (recursive, hashes everything it touches) ------------------


def naive_mth(entries: list[bytes]) -> bytes:
    n = len(entries)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + entries[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + naive_mth(entries[:k]) + naive_mth(entries[k:])).digest()


def naive_path(m: int, entries: list[bytes]) -> list[bytes]:
    n = len(entries)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*naive_path(m, entries[:k]), naive_mth(entries[k:])]
    return [*naive_path(m - k, entries[k:]), naive_mth(entries[:k])]


def naive_subproof(m: int, entries: list[bytes], complete: bool) -> list[bytes]:
    n = len(entries)
    if m == n:
        return [] if complete else [naive_mth(entries)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*naive_subproof(m, entries[:k], complete), naive_mth(entries[k:])]
    return [*naive_subproof(m - k, entries[k:], False), naive_mth(entries[:k])]


# --- the shared 10^5-entry log -------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransparencyLog]:
    path = Path(tmp_path_factory.mktemp("ct-merkle")) / "log.db"
    signer = SigningKey.generate(SignatureAlgorithm.HYBRID_ED25519_FALCON_1024)
    log = TransparencyLog.open(path, signer)
    indices = log.extend(entry_data(i) for i in range(N))
    assert indices == range(N)
    yield log
    log.close()


def sizes() -> st.SearchStrategy[int]:
    return st.one_of(st.integers(1, N), st.sampled_from(EDGES))


@st.composite
def index_and_size(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(sizes())
    index = draw(st.one_of(st.integers(0, size - 1), st.sampled_from([0, size - 1])))
    return index, size


@st.composite
def size_pairs(draw: st.DrawFn) -> tuple[int, int]:
    a, b = draw(sizes()), draw(sizes())
    return min(a, b), max(a, b)


def flip(value: bytes, bit: int) -> bytes:
    data = bytearray(value)
    data[bit // 8 % len(data)] ^= 1 << (bit % 8)
    return bytes(data)


def inclusion_shape(index: int, size: int) -> tuple[bool, ...] | None:
    """What the verifier does with a proof for (index, size): the side of each component."""
    if not 0 <= index < size:
        return None
    return tuple(end <= index for _, end in inclusion_path(index, size))


def consistency_shape(size1: int, size2: int) -> tuple[object, ...] | None:
    if not 0 < size1 <= size2:
        return None
    if size1 == size2:
        return ("equal",)
    path = consistency_path(size1, size2)
    return (size1 & (size1 - 1) == 0, tuple(end <= size1 for _, end in path))


# --- roots and paths against the naive implementation -----------------------------------------


def test_roots_match_naive_mth_for_every_size_up_to_300(big_log: TransparencyLog) -> None:
    entries = [entry_data(i) for i in range(300)]
    hashes = [leaf_hash(e) for e in entries]
    assert big_log.root(0) == EMPTY_ROOT == naive_mth([])
    for size in range(1, 301):
        expected = naive_mth(entries[:size])
        assert big_log.root(size) == expected
        assert merkle.root_from_leaf_hashes(hashes[:size]) == expected


def test_proofs_match_naive_rfc_9162_for_small_trees(big_log: TransparencyLog) -> None:
    entries = [entry_data(i) for i in range(40)]
    for size in range(1, 41):
        for index in range(size):
            assert big_log.inclusion_proof(index, size) == naive_path(index, entries[:size])
        for size1 in range(1, size + 1):
            expected = naive_subproof(size1, entries[:size], True)
            assert big_log.consistency_proof(size1, size) == expected


def test_current_size_root_and_entries(big_log: TransparencyLog) -> None:
    assert big_log.size == N
    assert big_log.root() == big_log.root(N)
    assert big_log.entry(12345).data == entry_data(12345)
    assert big_log.entry(12345).leaf_hash == leaf_hash(entry_data(12345))
    assert big_log.find(leaf_hash(entry_data(99_999))) == 99_999


def test_full_audit_recomputes_the_stored_root(big_log: TransparencyLog) -> None:
    assert big_log.audit() == big_log.root()


# --- inclusion ----------------------------------------------------------------------------------


@PROPERTY
@given(case=index_and_size(), data=st.data())
def test_inclusion_proofs_verify_and_mutations_fail(
    big_log: TransparencyLog, case: tuple[int, int], data: st.DataObject
) -> None:
    index, size = case
    proof = big_log.inclusion_proof(index, size)
    root = big_log.root(size)
    leaf = leaf_hash(entry_data(index))
    assert len(proof) == len(inclusion_path(index, size))
    verify_inclusion(leaf, index, size, proof, root)

    # any single bit of any component
    if proof:
        component = data.draw(st.integers(0, len(proof) - 1), label="component")
        bit = data.draw(st.integers(0, 255), label="bit")
        tampered = list(proof)
        tampered[component] = flip(proof[component], bit)
        with pytest.raises(InclusionProofError):
            verify_inclusion(leaf, index, size, tampered, root)
        with pytest.raises(InclusionProofError):
            verify_inclusion(leaf, index, size, proof[:-1], root)
    with pytest.raises(InclusionProofError):
        verify_inclusion(leaf, index, size, [*proof, root], root)

    # wrong root, wrong leaf
    with pytest.raises(InclusionProofError):
        verify_inclusion(leaf, index, size, proof, flip(root, data.draw(st.integers(0, 255))))
    with pytest.raises(InclusionProofError):
        verify_inclusion(leaf_hash(entry_data(index + 1)), index, size, proof, root)

    # wrong index or size: rejected unless the verifier cannot tell (same path shape)
    wrong_index = data.draw(st.integers(0, size + 2).filter(lambda i: i != index), label="index")
    wrong_size = data.draw(st.integers(1, 2 * size + 2).filter(lambda s: s != size), label="size")
    for claim in ((wrong_index, size), (index, wrong_size)):
        if inclusion_shape(*claim) == inclusion_shape(index, size):
            verify_inclusion(leaf, *claim, proof, root)  # e.g. leaf 0 of 6 and of 7 leaves
        else:
            with pytest.raises(InclusionProofError):
                verify_inclusion(leaf, *claim, proof, root)


def test_a_wrong_size_with_the_same_path_shape_is_undetectable_as_documented() -> None:
    entries = [entry_data(i) for i in range(6)]
    proof = naive_path(0, entries)
    root = naive_mth(entries)
    verify_inclusion(leaf_hash(entries[0]), 0, 7, proof, root)
    with pytest.raises(InclusionProofError):
        verify_inclusion(leaf_hash(entries[0]), 0, 9, proof, root)


# --- consistency --------------------------------------------------------------------------------


@PROPERTY
@given(pair=size_pairs(), data=st.data())
def test_consistency_proofs_verify_and_mutations_fail(
    big_log: TransparencyLog, pair: tuple[int, int], data: st.DataObject
) -> None:
    size1, size2 = pair
    proof = big_log.consistency_proof(size1, size2)
    root1, root2 = big_log.root(size1), big_log.root(size2)
    assert len(proof) == len(consistency_path(size1, size2))
    verify_consistency(size1, size2, proof, root1, root2)

    if proof:
        component = data.draw(st.integers(0, len(proof) - 1), label="component")
        bit = data.draw(st.integers(0, 255), label="bit")
        tampered = list(proof)
        tampered[component] = flip(proof[component], bit)
        with pytest.raises(ConsistencyProofError):
            verify_consistency(size1, size2, tampered, root1, root2)
        with pytest.raises(ConsistencyProofError):
            verify_consistency(size1, size2, proof[:-1], root1, root2)
    with pytest.raises(ConsistencyProofError):
        verify_consistency(size1, size2, [*proof, root2], root1, root2)

    bit = data.draw(st.integers(0, 255), label="root bit")
    with pytest.raises(ConsistencyProofError):
        verify_consistency(size1, size2, proof, flip(root1, bit), root2)
    with pytest.raises(ConsistencyProofError):
        verify_consistency(size1, size2, proof, root1, flip(root2, bit))
    if root1 != root2:
        with pytest.raises(ConsistencyProofError):
            verify_consistency(size1, size2, proof, root2, root1)

    wrong1 = data.draw(st.integers(0, size2 + 2).filter(lambda s: s != size1), label="size1")
    wrong2 = data.draw(st.integers(0, 2 * size2 + 2).filter(lambda s: s != size2), label="size2")
    for claim in ((wrong1, size2), (size1, wrong2)):
        if consistency_shape(*claim) == consistency_shape(size1, size2):
            verify_consistency(*claim, proof, root1, root2)
        else:
            with pytest.raises(ConsistencyProofError):
                verify_consistency(*claim, proof, root1, root2)


@PROPERTY
@given(case=index_and_size(), later=sizes())
def test_an_old_inclusion_proof_and_a_consistency_proof_chain(
    big_log: TransparencyLog, case: tuple[int, int], later: int
) -> None:
    """A client holding an old head checks inclusion there, then that the new head extends it."""
    index, size = case
    assume(later >= size)
    verify_inclusion(
        leaf_hash(entry_data(index)),
        index,
        size,
        big_log.inclusion_proof(index, size),
        big_log.root(size),
    )
    verify_consistency(
        size, later, big_log.consistency_proof(size, later), big_log.root(size), big_log.root(later)
    )


# --- edges of the sans-IO functions -------------------------------------------------------------


def test_generation_refuses_impossible_proofs(big_log: TransparencyLog) -> None:
    with pytest.raises(ProofRequestError):
        big_log.inclusion_proof(5, 5)
    with pytest.raises(ProofRequestError):
        big_log.inclusion_proof(0, N + 1)
    with pytest.raises(ProofRequestError):
        big_log.consistency_proof(0, 5)
    with pytest.raises(ProofRequestError):
        big_log.consistency_proof(6, 5)
    with pytest.raises(ProofRequestError):
        big_log.root(N + 1)
    with pytest.raises(ProofRequestError):
        perfect_subtrees(2, 6)  # not aligned
    with pytest.raises(ProofRequestError):
        perfect_subtrees(4, 4)  # empty
    assert [(s.level, s.index) for s in perfect_subtrees(0, 13)] == [(3, 0), (2, 2), (0, 12)]
    assert [(s.level, s.index) for s in perfect_subtrees(8, 13)] == [(2, 2), (0, 12)]


@given(sizes_=st.lists(st.integers(0, 300), min_size=1, max_size=5))
def test_frontier_reports_each_perfect_subtree_once(sizes_: list[int]) -> None:
    target = max(sizes_)
    frontier = Frontier()
    completed = set()
    for i in range(target):
        for level, index, value in frontier.append(leaf_hash(entry_data(i))):
            assert (level, index) not in completed
            completed.add((level, index))
            start, end = index << level, (index + 1) << level
            assert value == naive_mth([entry_data(j) for j in range(start, end)])
    assert len(completed) == target - target.bit_count()
    assert frontier.size == target
    assert frontier.root() == naive_mth([entry_data(j) for j in range(target)])
    assert frontier.copy().hashes == frontier.hashes
    with pytest.raises(ProofRequestError):
        Frontier(3, frontier.hashes[:1])


@pytest.mark.parametrize(
    ("leaf", "index", "size", "proof", "root"),
    [
        (b"\x00" * 31, 0, 1, [], b"\x00" * 32),  # short leaf hash
        (b"\x00" * 32, 0, 1, [], b"\x00" * 33),  # long root
        (b"\x00" * 32, 0, 2, [b"\x00" * 16], b"\x00" * 32),  # short component
        (b"\x00" * 32, -1, 2, [b"\x00" * 32], b"\x00" * 32),  # negative index
        (b"\x00" * 32, 0, 0, [], b"\x00" * 32),  # empty tree
        (b"\x00" * 32, 1, 1, [], b"\x00" * 32),  # index == size
    ],
)
def test_verify_inclusion_rejects_malformed_input(
    leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> None:
    with pytest.raises(InclusionProofError):
        verify_inclusion(leaf, index, size, proof, root)


def test_verify_inclusion_of_a_single_entry_tree() -> None:
    digest = leaf_hash(b"only")
    verify_inclusion(digest, 0, 1, [], digest)
    with pytest.raises(InclusionProofError):
        verify_inclusion(digest, 0, 1, [digest], digest)


def test_verify_consistency_policy_edges() -> None:
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    verify_consistency(3, 3, [], a, a)
    with pytest.raises(ConsistencyProofError):
        verify_consistency(3, 3, [], a, b)
    with pytest.raises(ConsistencyProofError):
        verify_consistency(3, 3, [a], a, a)
    with pytest.raises(ConsistencyProofError):
        verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    with pytest.raises(ConsistencyProofError):
        verify_consistency(0, 3, [], EMPTY_ROOT, a)
    with pytest.raises(ConsistencyProofError):
        verify_consistency(4, 3, [a], a, b)
    with pytest.raises(ConsistencyProofError):
        verify_consistency(1, 2, [], a, b)
    with pytest.raises(ConsistencyProofError):
        verify_consistency(1, 2, [b[:31]], a, merkle.node_hash(a, b))
    verify_consistency(1, 2, [b], a, merkle.node_hash(a, b))
