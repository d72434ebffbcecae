"""RFC 9162 section 2.1 Merkle tree math over SHA-256: hashing, proofs, verification (sans-IO).

Hashes
======

For a list of entries ``D[0:n]`` (RFC 9162 section 2.1.1)::

    MTH({})        = SHA-256()                                     the empty tree
    MTH({d0})      = SHA-256(0x00 || d0)                           a leaf (leaf_hash)
    MTH(D[0:n])    = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))   n > 1, k = the largest power
                                                                   of two smaller than n
                                                                   (node_hash)

Subtrees
========

A *perfect subtree* ``(level, index)`` covers the leaves ``[index * 2**level, (index + 1) *
2**level)``; level 0 is a single leaf. Every range the RFC's recursions visit, starting from
``[0, n)``, is *aligned*: ``[start, end)`` with ``start`` a multiple of the smallest power of two
``>= end - start``. An aligned range splits into perfect subtrees from the binary digits of its
length, largest first (``[0, 13)`` is ``(3, 0)``, ``(2, 2)``, ``(0, 12)``), and its hash folds
them from the right: ``node_hash(h(3, 0), node_hash(h(2, 2), h(0, 12)))``.

So a store that keeps the hash of every perfect subtree (one row per completed subtree, about
``2n`` in all, written as leaves are appended, see :class:`Frontier`) answers the root at any
size, and every proof component, with ``O(log n)`` lookups and no rehashing:

* the root at size ``n`` reads the ``popcount(n)`` subtrees of ``[0, n)``;
* an inclusion proof (PATH, section 2.1.3.1) and a consistency proof (PROOF/SUBPROOF, section
  2.1.4.1) are lists of aligned ranges (:func:`inclusion_path`, :func:`consistency_path`), all
  perfect subtrees (one lookup each) except at most one, which ends at the right edge of the
  tree and costs ``O(log n)`` lookups.

The functions here never touch storage: they take a :data:`SubtreeHash` callable returning the
hash of a perfect subtree ``(level, index)``.

Verification
============

:func:`verify_inclusion` and :func:`verify_consistency` are the algorithms of RFC 9162 sections
2.1.3.2 and 2.1.4.2, with the policy of the transparency-dev/merkle Go library on the edge
cases: every hash that enters a computation (leaf, roots, proof components) must be 32 bytes; a
consistency proof from size 0 is always an error, even to size 0 with equal roots;
``size1 == size2 > 0`` requires an empty proof and byte-equal roots (nothing is hashed then, so,
as upstream, their length is not checked: the vector
``consistency/additional/sizes-are-equal-one-and-proof-is-empty.json`` expects 12-byte
stand-in roots to be accepted). They return ``None`` on success and raise
:class:`~trustchain.errors.InclusionProofError` / :class:`~trustchain.errors.ConsistencyProofError`
with the reason otherwise; they never return ``False``.

Note on what a proof can prove: the verifier uses the tree size only for the *shape* of the path
(which side each component goes on, and how many there are). Two sizes whose paths have the same
shape (leaf 0 of a 6-leaf and of a 7-leaf tree, say) accept the same proof for the same root;
what binds a root to a size is the signed tree head that carries both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from trustchain.errors import ConsistencyProofError, InclusionProofError, ProofRequestError

HASH_SIZE: Final = 32
LEAF_PREFIX: Final = b"\x00"
NODE_PREFIX: Final = b"\x01"
#: MTH({}) = SHA-256 of the empty string.
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()

#: ``(level, index) -> hash`` of the perfect subtree over leaves ``[index << level, (index + 1)
#: << level)``. Level 0 is a leaf hash.
SubtreeHash = Callable[[int, int], bytes]


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the hash of a leaf (RFC 9162 section 2.1.1)."""
    return hashlib.sha256(LEAF_PREFIX + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n >= 2``): where MTH splits ``D[0:n]``."""
    return 1 << ((n - 1).bit_length() - 1)


@dataclass(frozen=True)
class Subtree:
    """The perfect subtree at ``level`` (``2**level`` leaves) and position ``index``."""

    level: int
    index: int

    @property
    def start(self) -> int:
        return self.index << self.level

    @property
    def end(self) -> int:
        return (self.index + 1) << self.level

    @property
    def size(self) -> int:
        return 1 << self.level


def perfect_subtrees(start: int, end: int) -> list[Subtree]:
    """The perfect subtrees that make up the aligned range ``[start, end)``, largest first.

    :class:`ProofRequestError` for an empty, negative or unaligned range.
    """
    length = end - start
    if start < 0 or length < 1:
        raise ProofRequestError(f"range [{start}, {end}) is empty or negative")
    if start & ((1 << (length - 1).bit_length()) - 1):
        raise ProofRequestError(f"range [{start}, {end}) is not aligned to its size")
    result = []
    position = start
    for level in range(length.bit_length() - 1, -1, -1):
        if length >> level & 1:
            result.append(Subtree(level, position >> level))
            position += 1 << level
    return result


def range_hash(start: int, end: int, subtree_hash: SubtreeHash) -> bytes:
    """MTH(D[start:end]) for an aligned range, from its perfect subtrees (folded right to left)."""
    parts = perfect_subtrees(start, end)
    result = subtree_hash(parts[-1].level, parts[-1].index)
    for part in reversed(parts[:-1]):
        result = node_hash(subtree_hash(part.level, part.index), result)
    return result


def root(size: int, subtree_hash: SubtreeHash) -> bytes:
    """MTH(D[0:size]); the empty tree's hash for ``size == 0``."""
    if size < 0:
        raise ProofRequestError(f"tree size must be >= 0, got {size}")
    if size == 0:
        return EMPTY_ROOT
    return range_hash(0, size, subtree_hash)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH of the tree whose leaf hashes are ``hashes`` (in memory; O(n) hashing)."""
    frontier = Frontier()
    for value in hashes:
        frontier.append(value)
    return frontier.root()


def inclusion_path(index: int, size: int) -> list[tuple[int, int]]:
    """The ranges ``[start, end)`` whose hashes form PATH(index, D[0:size]), leaf first.

    RFC 9162 section 2.1.3.1: ``PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])`` if ``m < k``,
    else ``PATH(m - k, D[k:n]) : MTH(D[0:k])``; the recursion here runs top-down and the result is
    reversed. :class:`ProofRequestError` unless ``0 <= index < size``.
    """
    if not 0 <= index < size:
        raise ProofRequestError(f"leaf index {index} is not in a tree of size {size}")
    ranges: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        k = split_point(end - start)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()
    return ranges


def consistency_path(size1: int, size2: int) -> list[tuple[int, int]]:
    """The ranges whose hashes form PROOF(size1, D[0:size2]), in proof order.

    RFC 9162 section 2.1.4.1 (``SUBPROOF(m, D[n], b)``), run top-down and reversed. Empty when
    ``size1 == size2``. :class:`ProofRequestError` unless ``0 < size1 <= size2``.
    """
    if not 0 < size1 <= size2:
        raise ProofRequestError(
            f"no consistency proof from size {size1} to size {size2} (need 0 < size1 <= size2)"
        )
    ranges: list[tuple[int, int]] = []
    start, end = 0, size2
    complete = True  # SUBPROOF's b: the old tree is a complete subtree seen from the root side
    while True:
        m = size1 - start
        if m == end - start:
            if not complete:
                ranges.append((start, end))
            break
        k = split_point(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
            complete = False
    ranges.reverse()
    return ranges


def inclusion_proof(index: int, size: int, subtree_hash: SubtreeHash) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``size`` leaves (RFC 9162 2.1.3.1)."""
    return [range_hash(start, end, subtree_hash) for start, end in inclusion_path(index, size)]


def consistency_proof(size1: int, size2: int, subtree_hash: SubtreeHash) -> list[bytes]:
    """The consistency proof between the trees of ``size1`` and ``size2`` leaves (2.1.4.1)."""
    return [range_hash(start, end, subtree_hash) for start, end in consistency_path(size1, size2)]


class Frontier:
    """The perfect subtrees covering ``[0, size)``: what an append-only log keeps in memory.

    Appending a leaf merges equal-sized subtrees like a binary counter increment and reports
    every perfect subtree it completes, so a store can persist each one exactly once. Not a
    value: a small mutable accumulator (use :meth:`copy` to try an append without committing).
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0 or len(hashes) != size.bit_count():
            raise ProofRequestError(
                f"a frontier of size {size} has {size.bit_count()} subtrees, got {len(hashes)}"
            )
        self._size = size
        self._hashes = [bytes(h) for h in hashes]

    @staticmethod
    def subtrees(size: int) -> list[Subtree]:
        """The perfect subtrees a frontier of ``size`` leaves holds, largest first."""
        return [] if size == 0 else perfect_subtrees(0, size)

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(self._hashes)

    def copy(self) -> Frontier:
        return Frontier(self._size, self._hashes)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add the leaf hash ``leaf``; returns the completed subtrees ``(level, index, hash)``
        of level >= 1, lowest first."""
        completed = []
        index = self._size
        value = leaf
        level = 0
        while index & 1:
            value = node_hash(self._hashes.pop(), value)
            index >>= 1
            level += 1
            completed.append((level, index, value))
        self._hashes.append(value)
        self._size += 1
        return completed

    def root(self) -> bytes:
        """MTH(D[0:size])."""
        if not self._hashes:
            return EMPTY_ROOT
        result = self._hashes[-1]
        for value in reversed(self._hashes[:-1]):
            result = node_hash(value, result)
        return result


# --- verification (RFC 9162 sections 2.1.3.2 and 2.1.4.2) -------------------------------------


def _check_hash(value: object, what: str, error: type[Exception]) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise error(f"{what} is not bytes")
    raw = bytes(value)
    if len(raw) != HASH_SIZE:
        raise error(f"{what} is {len(raw)} bytes, a SHA-256 hash is {HASH_SIZE}")
    return raw


def _check_size(value: object, what: str, error: type[Exception]) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise error(f"{what} must be a non-negative integer, got {value!r}")
    return value


def root_from_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes]
) -> bytes:
    """The root of the tree of ``tree_size`` leaves that ``proof`` leads to from leaf hash
    ``leaf_hash`` at ``index`` (RFC 9162 section 2.1.3.2 steps 1-5);
    :class:`InclusionProofError` if the proof has the wrong shape for that leaf and size."""
    err = InclusionProofError
    leaf = _check_hash(leaf_hash, "leaf hash", err)
    index = _check_size(index, "leaf index", err)
    tree_size = _check_size(tree_size, "tree size", err)
    path = [_check_hash(p, f"proof component {i}", err) for i, p in enumerate(proof)]
    # 1. leaf_index must be inside the tree.
    if index >= tree_size:
        raise err(f"leaf index {index} is not in a tree of size {tree_size}")
    # 2.-3.
    fn, sn = index, tree_size - 1
    r = leaf
    # 4.
    for p in path:
        if sn == 0:
            raise err(
                f"proof has {len(path)} components, more than a tree of size {tree_size} "
                f"needs for leaf {index}"
            )
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    # 5.
    if sn != 0:
        raise err(
            f"proof has {len(path)} components, fewer than a tree of size {tree_size} "
            f"needs for leaf {index}"
        )
    return r


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``proof`` proves leaf hash ``leaf_hash`` at ``index`` in the tree of
    ``tree_size`` leaves whose root is ``root``; :class:`InclusionProofError` if not."""
    expected = _check_hash(root, "root hash", InclusionProofError)
    r = root_from_inclusion(leaf_hash, index, tree_size, proof)
    if r != expected:
        raise InclusionProofError(
            f"calculated root {r.hex()} does not match the expected root {expected.hex()} "
            f"(leaf {index}, tree size {tree_size})"
        )


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that ``proof`` proves the tree (``size2``, ``root2``) extends (``size1``,
    ``root1``); :class:`ConsistencyProofError` if not (always for ``size1 == 0``)."""
    err = ConsistencyProofError
    size1 = _check_size(size1, "first tree size", err)
    size2 = _check_size(size2, "second tree size", err)
    if size2 < size1:
        raise err(f"the second tree (size {size2}) is smaller than the first (size {size1})")
    if size1 == 0:
        raise err("a consistency proof from the empty tree proves nothing and is not accepted")
    if size1 == size2:
        # Nothing is hashed: the two heads describe the same tree iff the roots are the same
        # bytes (transparency-dev/merkle compares them without checking their length).
        if len(proof):
            raise err(f"equal tree sizes need an empty proof, got {len(proof)} components")
        if not isinstance(root1, bytes | bytearray | memoryview) or not isinstance(
            root2, bytes | bytearray | memoryview
        ):
            raise err("root hashes must be bytes")
        if bytes(root1) != bytes(root2):
            raise err(f"equal tree sizes ({size1}) but different roots")
        return
    first = _check_hash(root1, "first root hash", err)
    second = _check_hash(root2, "second root hash", err)
    path = [_check_hash(p, f"proof component {i}", err) for i, p in enumerate(proof)]
    # 1.
    if not path:
        raise err(f"empty proof from size {size1} to size {size2}")
    # 2.
    if size1 & (size1 - 1) == 0:
        path.insert(0, first)
    # 3.
    fn, sn = size1 - 1, size2 - 1
    # 4.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5.
    fr = sr = path[0]
    # 6.
    for c in path[1:]:
        if sn == 0:
            raise err(f"proof is longer than a proof from size {size1} to size {size2}")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # 7.
    if sn != 0:
        raise err(f"proof is shorter than a proof from size {size1} to size {size2}")
    if fr != first:
        raise err(f"calculated first root {fr.hex()} does not match {first.hex()}")
    if sr != second:
        raise err(f"calculated second root {sr.hex()} does not match {second.hex()}")
