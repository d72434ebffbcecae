"""PoWork (WHAT/HOW): hashcash-style SHA-256 work bound to an asset, its resources and the beacon.

The work hash of version ``version`` of asset ``asset``, offering ``spec``, answering the beacon
``challenge`` with nonce ``nonce`` is::

    SHA-256( b"hypermesh/work/v1\\x00"           18 bytes, domain label
           || asset                              32 bytes, the asset id
           || version                             8 bytes, unsigned big-endian
           || resource_bytes(spec)               36 bytes, see :func:`resource_bytes`
           || challenge                          32 bytes, the beacon of the state's VDF output
           || nonce )                             8 bytes, unsigned big-endian

and the work is valid when that hash has at least ``difficulty_bits`` leading zero bits (the
first bit is the most significant bit of the first byte). Everything but the nonce is the
:func:`work_prefix` (126 bytes), so work done for one asset, version, resource claim or
beacon is worthless for any other: the beacon cannot be known before the previous state's VDF
finished, so the work cannot be done in advance either.

A prover tries about ``2**difficulty_bits`` nonces (:func:`prove_work`); a verifier computes one
hash (:func:`verify_work`).
"""

from __future__ import annotations

import hashlib
import struct

from hypermesh_interfaces.v1 import common_pb2
from trustchain.consensus.proofs.challenges import ASSET_ID_SIZE, HASH_SIZE
from trustchain.consensus.proofs.presets import Preset
from trustchain.consensus.proofs.rejections import ProofKind, ProofReason, ProofRejected
from trustchain.errors import TrustChainError

__all__ = [
    "MAX_DIFFICULTY_BITS",
    "RESOURCE_BYTES_SIZE",
    "WORK_DOMAIN",
    "WORK_PREFIX_SIZE",
    "WorkNotFound",
    "leading_zero_bits",
    "prove_work",
    "resource_bytes",
    "verify_work",
    "work_hash",
    "work_prefix",
]

#: The domain label every work hash starts with.
WORK_DOMAIN = b"hypermesh/work/v1\x00"
#: The largest meaningful difficulty: a SHA-256 digest has 256 bits.
MAX_DIFFICULTY_BITS = 256

# cpu_millicores u64, gpu_count u32, gpu_memory_bytes u64, memory_bytes u64, storage_bytes u64.
_RESOURCES = struct.Struct(">QIQQQ")
_U64 = struct.Struct(">Q")
_NONCE_LIMIT = 1 << 64

#: Size of :func:`resource_bytes` (8 + 4 + 8 + 8 + 8).
RESOURCE_BYTES_SIZE = _RESOURCES.size
#: Size of :func:`work_prefix`: label, asset id, version, resources, challenge.
WORK_PREFIX_SIZE = len(WORK_DOMAIN) + ASSET_ID_SIZE + 8 + RESOURCE_BYTES_SIZE + HASH_SIZE


class WorkNotFound(TrustChainError):
    """:func:`prove_work` tried every nonce it was allowed to (``max_attempts``, or the whole
    64-bit nonce space from ``start_nonce``) without meeting ``bits``."""

    def __init__(self, bits: int, start_nonce: int, attempts: int) -> None:
        super().__init__(
            f"no nonce in [{start_nonce}, {start_nonce + attempts}) gives {bits} leading zero bits"
        )
        self.bits = bits
        self.start_nonce = start_nonce
        self.attempts = attempts


def resource_bytes(spec: common_pb2.ResourceSpec) -> bytes:
    """The canonical 36-byte encoding of a resource claim, the part of the work prefix that
    binds the work to what the asset offers.

    Fixed width, big-endian, in this order: ``cpu_millicores`` (u64), ``gpu_count`` (u32),
    ``gpu_memory_bytes`` (u64), ``memory_bytes`` (u64), ``storage_bytes`` (u64). Deliberately
    not the protobuf serialization: unknown fields, field order or non-minimal varints a
    sender adds cannot change the hash, so the same claim always has the same work.
    """
    return _RESOURCES.pack(
        spec.cpu_millicores,
        spec.gpu_count,
        spec.gpu_memory_bytes,
        spec.memory_bytes,
        spec.storage_bytes,
    )


def work_prefix(
    asset: bytes, version: int, spec: common_pb2.ResourceSpec, challenge: bytes
) -> bytes:
    """The 126 bytes every work hash of this asset, version, claim and beacon starts with:
    ``WORK_DOMAIN || asset (32) || version (u64 BE) || resource_bytes(spec) (36) ||
    challenge (32)``.

    :class:`ValueError` if ``asset`` or ``challenge`` is not 32 bytes or ``version`` does not
    fit 64 unsigned bits.
    """
    if not isinstance(asset, bytes) or len(asset) != ASSET_ID_SIZE:
        raise ValueError(f"asset id must be {ASSET_ID_SIZE} bytes")
    if not isinstance(challenge, bytes) or len(challenge) != HASH_SIZE:
        raise ValueError(f"work challenge must be {HASH_SIZE} bytes")
    if not 0 <= version < _NONCE_LIMIT:
        raise ValueError("version must fit 64 unsigned bits")
    return b"".join((WORK_DOMAIN, asset, _U64.pack(version), resource_bytes(spec), challenge))


def work_hash(prefix: bytes, nonce: int) -> bytes:
    """``SHA-256(prefix || nonce)``, the nonce as a u64 big-endian; ``prefix`` is a
    :func:`work_prefix`. :class:`ValueError` if the nonce does not fit 64 unsigned bits."""
    if not 0 <= nonce < _NONCE_LIMIT:
        raise ValueError("nonce must fit 64 unsigned bits")
    return hashlib.sha256(prefix + _U64.pack(nonce)).digest()


def leading_zero_bits(digest: bytes) -> int:
    """How many leading bits of ``digest`` are zero, most significant bit of the first byte
    first (``8 * len(digest)`` for an all-zero digest, 0 for an empty one)."""
    return len(digest) * 8 - int.from_bytes(digest, "big").bit_length()


def _check_bits(bits: int) -> None:
    if not 0 <= bits <= MAX_DIFFICULTY_BITS:
        raise ValueError(f"difficulty bits must be 0..{MAX_DIFFICULTY_BITS}")


def prove_work(
    asset: bytes,
    version: int,
    spec: common_pb2.ResourceSpec,
    challenge: bytes,
    bits: int,
    *,
    start_nonce: int = 0,
    max_attempts: int | None = None,
) -> common_pb2.WorkProof:
    """Search nonces ``start_nonce, start_nonce + 1, ...`` for the first whose work hash has
    at least ``bits`` leading zero bits, and return the proof (a copy of ``spec``, the
    challenge, ``bits`` and that nonce).

    Tries at most ``max_attempts`` nonces (default: until the 64-bit nonce space ends) and
    raises :class:`WorkNotFound` when they are exhausted; :class:`ValueError` for arguments
    out of range (see :func:`work_prefix`; ``bits`` 0..256; ``max_attempts`` >= 1).
    """
    _check_bits(bits)
    if not 0 <= start_nonce < _NONCE_LIMIT:
        raise ValueError("start_nonce must fit 64 unsigned bits")
    if max_attempts is not None and max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")
    prefix = work_prefix(asset, version, spec, challenge)
    end = _NONCE_LIMIT if max_attempts is None else min(start_nonce + max_attempts, _NONCE_LIMIT)

    # The prefix is hashed once; each try copies that state and adds 8 bytes. The threshold
    # is one integer comparison on the leading 8 bytes of the digest (all 32 beyond 64 bits):
    # "at least `bits` leading zero bits" is "value < 2**(width - bits)".
    base = hashlib.sha256(prefix)
    width = 8 if bits <= 64 else HASH_SIZE
    limit = 1 << (8 * width - bits)
    pack = _U64.pack
    from_bytes = int.from_bytes
    for nonce in range(start_nonce, end):
        attempt = base.copy()
        attempt.update(pack(nonce))
        if from_bytes(attempt.digest()[:width], "big") < limit:
            return common_pb2.WorkProof(
                resource_spec=spec, challenge=challenge, difficulty_bits=bits, nonce=nonce
            )
    raise WorkNotFound(bits, start_nonce, end - start_nonce)


def _reject(reason: ProofReason, detail: str) -> ProofRejected:
    return ProofRejected(ProofKind.WORK, reason, detail)


def verify_work(
    proof: common_pb2.WorkProof,
    *,
    asset: bytes,
    version: int,
    expected_challenge: bytes,
    preset: Preset,
) -> bytes:
    """Check ``proof`` is work for version ``version`` of ``asset`` answering
    ``expected_challenge`` (the beacon) at the preset's difficulty; return the work hash.

    One SHA-256 over 134 bytes, after the shape checks. Raises :class:`ProofRejected` (kind
    ``WORK``) at the first failure, in this order:

    * ``MISSING``: no ``resource_spec``;
    * ``MALFORMED``: ``challenge`` not 32 bytes, or ``difficulty_bits`` above 256;
    * ``CHALLENGE_MISMATCH``: ``challenge`` is not ``expected_challenge``;
    * ``INSUFFICIENT``: ``difficulty_bits`` below ``preset.work_bits``;
    * ``VERIFICATION_FAILED``: the work hash has fewer than ``difficulty_bits`` leading zero
      bits (so work for another asset, version, resource claim or nonce fails here).

    The expected values come from the caller, not the proof: :class:`ValueError` if ``asset``
    or ``expected_challenge`` is not 32 bytes or ``version`` does not fit 64 unsigned bits.
    """
    if not isinstance(asset, bytes) or len(asset) != ASSET_ID_SIZE:
        raise ValueError(f"asset id must be {ASSET_ID_SIZE} bytes")
    if not isinstance(expected_challenge, bytes) or len(expected_challenge) != HASH_SIZE:
        raise ValueError(f"expected challenge must be {HASH_SIZE} bytes")
    if not 0 <= version < _NONCE_LIMIT:
        raise ValueError("version must fit 64 unsigned bits")

    if not proof.HasField("resource_spec"):
        raise _reject(ProofReason.MISSING, "no resource specification")
    if len(proof.challenge) != HASH_SIZE:
        raise _reject(
            ProofReason.MALFORMED,
            f"challenge is {len(proof.challenge)} bytes, not {HASH_SIZE}",
        )
    if proof.difficulty_bits > MAX_DIFFICULTY_BITS:
        raise _reject(
            ProofReason.MALFORMED,
            f"difficulty of {proof.difficulty_bits} bits exceeds {MAX_DIFFICULTY_BITS}",
        )
    if proof.challenge != expected_challenge:
        raise _reject(ProofReason.CHALLENGE_MISMATCH, "work answers another beacon")
    if proof.difficulty_bits < preset.work_bits:
        raise _reject(
            ProofReason.INSUFFICIENT,
            f"difficulty of {proof.difficulty_bits} bits is below the {preset.name} "
            f"preset's {preset.work_bits}",
        )
    digest = work_hash(
        work_prefix(asset, version, proof.resource_spec, proof.challenge), proof.nonce
    )
    zeros = leading_zero_bits(digest)
    if zeros < proof.difficulty_bits:
        raise _reject(
            ProofReason.VERIFICATION_FAILED,
            f"work hash has {zeros} leading zero bits, the proof claims {proof.difficulty_bits}",
        )
    return digest
