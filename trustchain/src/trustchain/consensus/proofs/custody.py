"""Proof of custody of an asset's data: Merkle proofs of retrievability over its chunks.

The "custody" half of the proof of space: the storage node shows it holds *this asset's* bytes
(the plot only shows it holds *some* space). The asset is cut into content-defined chunks
(:func:`chunk`), the chunks' SHA-256 digests are the leaves of an RFC 9162 section 2.1 Merkle
tree (:mod:`trustchain.ct.merkle`, reused as is), and the space challenge selects ``count``
chunks (:func:`~.challenges.custody_indices`, with replacement) that the node must open *with
their content*: a node that kept only the digests cannot answer for the chunks it dropped.

Chunking
========

FastCDC-style content-defined chunking (Xia et al., USENIX ATC 2016), so a cut depends only on
the bytes just before it, and inserting or deleting bytes changes only the chunks around the
edit. For each chunk, starting at offset ``start`` of the data:

* the rolling gear hash ``fp`` (64 bits) starts at 0 at ``start + MIN_CHUNK`` (the first
  :data:`MIN_CHUNK` bytes are skipped: no cut can fall there) and takes each byte ``b`` as
  ``fp = ((fp << 1) + GEAR[b]) mod 2**64``;
* normalized chunking: while the chunk is shorter than :data:`AVG_CHUNK` bytes a cut needs the
  top 15 bits of ``fp`` all zero (probability 2**-15 per byte), after that the top 11 bits
  (2**-11), so chunk sizes cluster around the average. Bit ``j`` of ``fp`` depends only on the
  last ``j + 1`` bytes hashed, so both conditions read a rolling window of the last 64 bytes;
* the chunk ends *after* the byte whose hash matched, or at :data:`MAX_CHUNK` bytes, or at the
  end of the data; a remainder of at most :data:`MIN_CHUNK` bytes is the last chunk as is.

So every chunk has ``MIN_CHUNK < len <= MAX_CHUNK`` bytes, except the last, which has
``1 <= len <= MAX_CHUNK``.

``GEAR[i]`` (``0 <= i < 256``) is the first 8 bytes, big-endian, of
``SHA-256(b"hypermesh/custody-gear/v1\\x00" || bytes([i]))``: fixed, reproducible anywhere,
with no table to copy.

Tree and proofs
===============

Leaf ``i`` of the tree is the chunk digest ``SHA-256(chunk_i)``; its leaf hash is
``merkle.leaf_hash(digest) = SHA-256(0x00 || digest)``, interior nodes are
``SHA-256(0x01 || left || right)``, the tree has ``chunk_count`` leaves and its root is the
asset's custody root. A ``ChunkInclusionProof`` carries ``chunk_index`` (the leaf index),
``chunk_digest`` (32 bytes), ``sibling_hashes`` (the RFC 9162 audit path, 32 bytes each, leaf
level first, at most ``ceil(log2(chunk_count))`` of them) and ``chunk`` (the content).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from hypermesh_interfaces.v1 import common_pb2
from trustchain.consensus.proofs.challenges import HASH_SIZE, custody_indices
from trustchain.consensus.proofs.rejections import ProofKind, ProofReason, ProofRejected
from trustchain.ct import merkle
from trustchain.errors import InclusionProofError

__all__ = [
    "AVG_CHUNK",
    "MAX_CHUNK",
    "MAX_CHUNKS",
    "MIN_CHUNK",
    "CustodyTree",
    "chunk",
    "missing_detection_probability",
    "verify_custody",
]

#: No cut falls in a chunk's first ``MIN_CHUNK`` bytes.
MIN_CHUNK: Final = 2048
#: Where normalized chunking switches from the strict to the loose cut condition.
AVG_CHUNK: Final = 8192
#: The longest chunk; a longer ``chunk`` field in a proof is malformed.
MAX_CHUNK: Final = 65536
#: The most chunks an asset (a custody tree) may have: 2**32, a tree height of at most 32.
MAX_CHUNKS: Final = 1 << 32

_GEAR_LABEL: Final = b"hypermesh/custody-gear/v1\x00"
_GEAR: Final = tuple(
    int.from_bytes(hashlib.sha256(_GEAR_LABEL + bytes([i])).digest()[:8], "big") for i in range(256)
)
_MASK_64: Final = (1 << 64) - 1
#: Top 15 bits: the cut condition before AVG_CHUNK bytes (AVG_CHUNK is 2**13; two bits more).
_MASK_STRICT: Final = ((1 << 15) - 1) << 49
#: Top 11 bits: the cut condition from AVG_CHUNK bytes on (two bits fewer).
_MASK_LOOSE: Final = ((1 << 11) - 1) << 53


def _cut(data: bytes, start: int) -> int:
    """The length of the chunk that starts at ``start`` (see the module docstring)."""
    remaining = len(data) - start
    if remaining <= MIN_CHUNK:
        return remaining
    end = start + min(remaining, MAX_CHUNK)
    normal = min(start + AVG_CHUNK, end)
    gear = _GEAR
    fp = 0
    for i in range(start + MIN_CHUNK, normal):
        fp = ((fp << 1) + gear[data[i]]) & _MASK_64
        if not fp & _MASK_STRICT:
            return i + 1 - start
    for i in range(normal, end):
        fp = ((fp << 1) + gear[data[i]]) & _MASK_64
        if not fp & _MASK_LOOSE:
            return i + 1 - start
    return end - start


def chunk(data: bytes) -> list[bytes]:
    """Cut ``data`` into content-defined chunks (FastCDC-style, see the module docstring).

    The chunks concatenate back to ``data``. :class:`ValueError` for empty data: an asset has
    content.
    """
    raw = bytes(data)
    if not raw:
        raise ValueError("cannot chunk empty data: an asset has content")
    chunks: list[bytes] = []
    start = 0
    while start < len(raw):
        length = _cut(raw, start)
        chunks.append(raw[start : start + length])
        start += length
    return chunks


def _height(chunk_count: int) -> int:
    """The most sibling hashes an audit path has in a tree of ``chunk_count`` leaves."""
    return (chunk_count - 1).bit_length()


@dataclass(frozen=True)
class CustodyTree:
    """The Merkle tree over an asset's chunk digests (use :meth:`build`).

    ``root`` is the RFC 9162 root (32 bytes), ``size`` the number of chunks, ``digests`` the
    SHA-256 of each chunk. The hash of every perfect subtree is kept (``levels[l][j]`` covers
    leaves ``[j * 2**l, (j + 1) * 2**l)``, about ``2 * size`` hashes), computed once, so a proof
    costs ``O(log size)`` lookups and no rehashing of the tree.
    """

    root: bytes
    size: int
    digests: tuple[bytes, ...]
    _levels: tuple[tuple[bytes, ...], ...] = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.size <= MAX_CHUNKS or len(self.digests) != self.size:
            raise ValueError(f"a custody tree has 1..{MAX_CHUNKS} chunks, one digest each")
        if len(self.root) != HASH_SIZE or not self._levels or len(self._levels[0]) != self.size:
            raise ValueError("use CustodyTree.build: the root or subtree hashes are inconsistent")

    @classmethod
    def build(cls, chunks: Sequence[bytes]) -> CustodyTree:
        """The tree over ``chunks`` (the asset's chunks in order, as :func:`chunk` cuts them).

        :class:`ValueError` for no chunks, more than :data:`MAX_CHUNKS`, or a chunk that is
        empty or longer than :data:`MAX_CHUNK` bytes (its proofs would be rejected).
        """
        if not 1 <= len(chunks) <= MAX_CHUNKS:
            raise ValueError(f"a custody tree has 1..{MAX_CHUNKS} chunks, got {len(chunks)}")
        digests: list[bytes] = []
        for index, content in enumerate(chunks):
            if not 1 <= len(content) <= MAX_CHUNK:
                raise ValueError(
                    f"chunk {index} has {len(content)} bytes, a chunk has 1..{MAX_CHUNK}"
                )
            digests.append(hashlib.sha256(content).digest())
        level = tuple(merkle.leaf_hash(d) for d in digests)
        levels = [level]
        while len(level) > 1:
            level = tuple(
                merkle.node_hash(level[j], level[j + 1]) for j in range(0, len(level) - 1, 2)
            )
            levels.append(level)
        levels_t = tuple(levels)
        root = merkle.root(len(digests), lambda lvl, idx: levels_t[lvl][idx])
        return cls(root=root, size=len(digests), digests=tuple(digests), _levels=levels_t)

    def _subtree_hash(self, level: int, index: int) -> bytes:
        return self._levels[level][index]

    def prove(self, index: int, chunk: bytes) -> common_pb2.ChunkInclusionProof:
        """The proof that ``chunk`` is chunk ``index`` of this tree.

        :class:`ValueError` if ``index`` is not in the tree or ``chunk`` is not the chunk whose
        digest is at ``index``.
        """
        if not 0 <= index < self.size:
            raise ValueError(f"chunk index {index} is not in a tree of {self.size} chunks")
        content = bytes(chunk)
        digest = self.digests[index]
        if hashlib.sha256(content).digest() != digest:
            raise ValueError(f"the chunk given is not chunk {index} (its SHA-256 differs)")
        return common_pb2.ChunkInclusionProof(
            chunk_index=index,
            chunk_digest=digest,
            sibling_hashes=merkle.inclusion_proof(index, self.size, self._subtree_hash),
            chunk=content,
        )

    def prove_challenge(
        self, challenge: bytes, count: int, chunks: Sequence[bytes]
    ) -> list[common_pb2.ChunkInclusionProof]:
        """The ``count`` proofs answering ``challenge``: one per index of
        ``custody_indices(challenge, self.size, count)``, in that order, opened with
        ``chunks`` (all of the asset's chunks). :class:`ValueError` if ``chunks`` is not this
        tree's chunk list (wrong length or a challenged chunk that does not match)."""
        if len(chunks) != self.size:
            raise ValueError(f"the tree has {self.size} chunks, {len(chunks)} were given")
        return [self.prove(i, chunks[i]) for i in custody_indices(challenge, self.size, count)]


def _reject(reason: ProofReason, detail: str) -> ProofRejected:
    return ProofRejected(ProofKind.SPACE, reason, detail)


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _check_shape(index: int, proof: object, height: int) -> common_pb2.ChunkInclusionProof:
    """Size checks of proof ``index`` (cheap, before any hashing); MALFORMED on failure."""
    if not isinstance(proof, common_pb2.ChunkInclusionProof):
        raise _reject(ProofReason.MALFORMED, f"custody proof {index} is not a ChunkInclusionProof")
    if len(proof.chunk_digest) != HASH_SIZE:
        raise _reject(
            ProofReason.MALFORMED,
            f"custody proof {index}: chunk digest is {len(proof.chunk_digest)} bytes, "
            f"not {HASH_SIZE}",
        )
    if not 1 <= len(proof.chunk) <= MAX_CHUNK:
        raise _reject(
            ProofReason.MALFORMED,
            f"custody proof {index}: chunk is {len(proof.chunk)} bytes, a chunk has 1..{MAX_CHUNK}",
        )
    siblings = proof.sibling_hashes
    if len(siblings) > height:
        raise _reject(
            ProofReason.MALFORMED,
            f"custody proof {index}: {len(siblings)} sibling hashes, a tree of this size is "
            f"{height} high",
        )
    for position, sibling in enumerate(siblings):
        if len(sibling) != HASH_SIZE:
            raise _reject(
                ProofReason.MALFORMED,
                f"custody proof {index}: sibling hash {position} is {len(sibling)} bytes, "
                f"not {HASH_SIZE}",
            )
    return proof


def verify_custody(
    root: bytes,
    chunk_count: int,
    challenge: bytes,
    count: int,
    proofs: Sequence[common_pb2.ChunkInclusionProof],
) -> None:
    """Check that ``proofs`` open the ``count`` chunks that ``challenge`` selects in the tree
    of ``chunk_count`` chunks whose root is ``root``; returns ``None`` or raises
    :class:`ProofRejected` (kind SPACE) at the first failure, in this order:

    1. MALFORMED: ``root`` not 32 bytes; ``chunk_count`` not in ``1..MAX_CHUNKS``;
    2. MISSING: fewer proofs than ``count``; INCONSISTENT: more;
    3. MALFORMED (every proof, before any hashing): a proof that is not a
       ``ChunkInclusionProof``, a chunk digest or sibling hash not 32 bytes, a chunk empty or
       longer than :data:`MAX_CHUNK`, more sibling hashes than the tree's height;
    4. CHALLENGE_MISMATCH: proof ``i``'s ``chunk_index`` is not the ``i``-th index of
       ``custody_indices(challenge, chunk_count, count)`` (every proof);
    5. VERIFICATION_FAILED, proof by proof: SHA-256 of the chunk is not the chunk digest, or the
       audit path does not lead from ``leaf_hash(chunk_digest)`` to ``root``
       (:func:`trustchain.ct.merkle.verify_inclusion`).

    ``challenge`` and ``count`` are the verifier's own expected values (the space challenge and
    the preset's ``custody_challenges``), not proof content: :class:`ValueError` if the
    challenge is not 32 bytes or ``count < 1``.
    """
    if not _is_hash(challenge):
        raise ValueError(f"the custody challenge must be {HASH_SIZE} bytes")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"the number of custody challenges must be >= 1, got {count!r}")
    if not _is_hash(root):
        raise _reject(ProofReason.MALFORMED, f"the custody root must be {HASH_SIZE} bytes")
    if (
        not isinstance(chunk_count, int)
        or isinstance(chunk_count, bool)
        or not 1 <= chunk_count <= MAX_CHUNKS
    ):
        raise _reject(
            ProofReason.MALFORMED,
            f"the chunk count must be 1..{MAX_CHUNKS}, got {chunk_count!r}",
        )
    if len(proofs) < count:
        raise _reject(
            ProofReason.MISSING, f"{len(proofs)} custody proofs, the challenge opens {count}"
        )
    if len(proofs) > count:
        raise _reject(
            ProofReason.INCONSISTENT, f"{len(proofs)} custody proofs, the challenge opens {count}"
        )
    height = _height(chunk_count)
    checked = [_check_shape(i, proof, height) for i, proof in enumerate(proofs)]
    for i, (expected, proof) in enumerate(
        zip(custody_indices(challenge, chunk_count, count), checked, strict=True)
    ):
        if proof.chunk_index != expected:
            raise _reject(
                ProofReason.CHALLENGE_MISMATCH,
                f"custody proof {i} opens chunk {proof.chunk_index}, the challenge selects "
                f"chunk {expected}",
            )
    for i, proof in enumerate(checked):
        if hashlib.sha256(proof.chunk).digest() != proof.chunk_digest:
            raise _reject(
                ProofReason.VERIFICATION_FAILED,
                f"custody proof {i}: the chunk's SHA-256 is not the chunk digest",
            )
        try:
            merkle.verify_inclusion(
                merkle.leaf_hash(proof.chunk_digest),
                proof.chunk_index,
                chunk_count,
                list(proof.sibling_hashes),
                root,
            )
        except InclusionProofError as exc:
            raise _reject(
                ProofReason.VERIFICATION_FAILED,
                f"custody proof {i} (chunk {proof.chunk_index}): {exc}",
            ) from exc


def missing_detection_probability(missing_fraction: float, count: int) -> float:
    """The probability that ``count`` challenged chunks (drawn uniformly, with replacement)
    hit at least one of a holder's missing chunks, ``missing_fraction`` of them:
    ``1 - (1 - missing_fraction) ** count``. :class:`ValueError` unless
    ``0 <= missing_fraction <= 1`` and ``count >= 0``."""
    if not 0.0 <= missing_fraction <= 1.0:
        raise ValueError(f"missing_fraction must be in [0, 1], got {missing_fraction!r}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return 1.0 - (1.0 - missing_fraction) ** count
