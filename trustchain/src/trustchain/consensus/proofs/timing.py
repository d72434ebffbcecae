"""WHEN: proof that time passed since the previous state (a VDF) and of the event's order (PoH).

**Verifiable delay function.** Chia's class-group VDF with a Wesolowski proof, computed and
checked by chiavdf. Its challenge is ``previous``, the state hash of the asset's previous
version (:mod:`.challenges`), so the output cannot exist before that state did; its output is
hashed into the beacon every other proof answers.

* The discriminant is ``chiavdf.create_discriminant(challenge, bits)``: a negative prime
  ``D ≡ 1 (mod 8)`` of exactly ``bits`` bits, derived from the 32-byte challenge.
* The input element is the class group's generator ``(a=2, b=1)`` in chiavdf's compressed
  encoding :data:`VDF_GENERATOR`: flag byte ``0x08`` (chiavdf's "is generator" flag) followed
  by zero bytes, :data:`VDF_FORM_SIZE` bytes in all, as Chia uses it.
* ``VdfProof.output`` is ``y = x^(2^iterations)`` and ``VdfProof.proof`` the Wesolowski
  witness ``π``, each a compressed form ("BQFC") of exactly :data:`VDF_FORM_SIZE` bytes:
  chiavdf pads every form to the size of its largest supported discriminant (1024 bits), so the
  size is 100 bytes whatever the discriminant size. chiavdf's prover returns ``y || π``.
* chiavdf's verifier also accepts *non-canonical* encodings: unused padding bits set in the
  last byte of a form, any bytes after the flag byte of the identity or generator form. They
  would let a prover vary the output bytes, hence the beacon, for free. The verifier here
  accepts only the encoding chiavdf's serializer produces (:func:`_check_canonical`), then
  checks the proof. (Below 264 iterations, the size of Wesolowski's prime ``B``, ``2^T < B``
  so the proof ``π = x^⌊2^T/B⌋`` is the identity form and verifying redoes the squarings.)

**Proof of history.** A SHA-256 hash chain segment (:func:`poh_extend`): starting from the
previous version's end hash (or :func:`.challenges.poh_genesis`), ``num_hashes`` sequential
SHA-256 iterations, then the mixin (the StakeProof's state digest) hashed in. The next segment
starts at this one's end, which orders the versions: a segment cannot be reused, reordered or
started from an older point of the chain.

Every verifier raises :class:`.ProofRejected` with kind ``TIME``; size and count checks come
first and bound the work a hostile proof can cause.
"""

from __future__ import annotations

import functools
import hashlib
import itertools

import chiavdf

from hypermesh_interfaces.v1 import common_pb2
from trustchain.consensus.proofs.challenges import HASH_SIZE
from trustchain.consensus.proofs.presets import Preset
from trustchain.consensus.proofs.rejections import ProofKind, ProofReason, ProofRejected
from trustchain.errors import TrustChainError

__all__ = [
    "MAX_POH_HASHES",
    "MAX_POH_MIXIN_SIZE",
    "MAX_VDF_ITERATIONS",
    "VDF_FORM_SIZE",
    "VDF_GENERATOR",
    "VDF_MAX_DISCRIMINANT_BITS",
    "VdfProverError",
    "poh_extend",
    "prove_poh",
    "prove_time",
    "prove_vdf",
    "verify_poh",
    "verify_time",
    "verify_vdf",
]

#: The largest discriminant chiavdf handles (its ``BQFC_MAX_D_BITS``).
VDF_MAX_DISCRIMINANT_BITS = 1024
#: Size of one compressed class-group element, chiavdf's ``BQFC_FORM_SIZE``: a flag byte, a
#: size byte and the compressed coefficients, padded for the largest discriminant (100 bytes).
VDF_FORM_SIZE = (VDF_MAX_DISCRIMINANT_BITS + 31) // 32 * 3 + 4

# chiavdf's BQFC flag bits (first byte) marking the identity (1, 1) and generator (2, 1) forms,
# which are encoded as that flag byte followed by zero bytes.
_BQFC_IS_1 = 0x04
_BQFC_IS_GEN = 0x08
_SPECIAL_FORM_FLAGS = _BQFC_IS_1 | _BQFC_IS_GEN

#: The VDF input: the generator ``(a=2, b=1)``, encoded as chiavdf's "is generator" flag.
VDF_GENERATOR = bytes([_BQFC_IS_GEN]) + bytes(VDF_FORM_SIZE - 1)
_IDENTITY = bytes([_BQFC_IS_1]) + bytes(VDF_FORM_SIZE - 1)
_CANONICAL_SPECIAL_FORMS = frozenset({VDF_GENERATOR, _IDENTITY})
#: Most iterations a proof may claim (bounds the integers handed to chiavdf).
MAX_VDF_ITERATIONS = 1 << 40
#: Most SHA-256 iterations a PoH segment may claim: the verifier recomputes them all.
MAX_POH_HASHES = 1 << 20
#: Largest mixin a PoH segment may carry.
MAX_POH_MIXIN_SIZE = 64

# chiavdf's prover stops early, returning no proof, when the file at this path does not exist;
# the empty path turns that check off.
_NO_SHUTDOWN_FILE = ""
# chiavdf's verifier with recursion 0 checks a single Wesolowski proof: blob = y || proof.
_WESOLOWSKI_RECURSION = 0


class VdfProverError(TrustChainError, RuntimeError):
    """chiavdf's prover did not return a proof of the expected size."""


def _reject(reason: ProofReason, detail: str) -> ProofRejected:
    return ProofRejected(ProofKind.TIME, reason, detail)


def _chiavdf_supports(bits: int) -> bool:
    return 8 <= bits <= VDF_MAX_DISCRIMINANT_BITS and bits % 8 == 0


@functools.lru_cache(maxsize=64)
def _discriminant(challenge: bytes, bits: int) -> str:
    # A prime search of a few to tens of milliseconds, often more than the verification
    # itself; cached for states verified more than once. Only reached for a challenge equal to
    # the caller's expected one, so hostile proofs cannot churn the cache.
    return chiavdf.create_discriminant(challenge, bits)


def _check_canonical(discriminant: str, form: bytes, what: str) -> None:
    """Reject every encoding of a form but the one chiavdf's serializer produces.

    chiavdf's verifier decodes leniently. Its strict decoder re-encodes a general form and
    compares, but decodes the two special forms, identity ``(1, 1)`` and generator ``(2, 1)``,
    from the flag bits of the first byte alone; their only canonical encodings are the flag
    byte followed by zero bytes.
    """
    if form[0] & _SPECIAL_FORM_FLAGS:
        if form not in _CANONICAL_SPECIAL_FORMS:
            raise _reject(
                ProofReason.VERIFICATION_FAILED, f"VDF {what} is not a canonical form encoding"
            )
        return
    try:
        chiavdf.bqfc_deserialize(discriminant, form, True)
    except (RuntimeError, ValueError) as exc:
        raise _reject(
            ProofReason.VERIFICATION_FAILED,
            f"VDF {what} is not a canonical form encoding: {exc}",
        ) from exc


# --- verifiable delay function ----------------------------------------------------------------


def prove_vdf(challenge: bytes, iterations: int, discriminant_bits: int) -> common_pb2.VdfProof:
    """Evaluate the VDF: ``iterations`` squarings of :data:`VDF_GENERATOR` in the class group
    whose discriminant is derived from ``challenge`` (32 bytes), with a Wesolowski proof.

    :class:`ValueError` on a challenge of another size, ``iterations`` outside
    ``1..MAX_VDF_ITERATIONS`` or a discriminant size chiavdf does not support (a multiple of 8
    up to :data:`VDF_MAX_DISCRIMINANT_BITS`); :class:`VdfProverError` if chiavdf returns no
    proof.
    """
    if not isinstance(challenge, bytes) or len(challenge) != HASH_SIZE:
        raise ValueError(f"challenge must be {HASH_SIZE} bytes")
    if not 1 <= iterations <= MAX_VDF_ITERATIONS:
        raise ValueError(f"iterations must be 1..{MAX_VDF_ITERATIONS}")
    if not _chiavdf_supports(discriminant_bits):
        raise ValueError(
            f"discriminant_bits must be a multiple of 8 up to {VDF_MAX_DISCRIMINANT_BITS}"
        )
    blob = chiavdf.prove(challenge, VDF_GENERATOR, discriminant_bits, iterations, _NO_SHUTDOWN_FILE)
    if len(blob) != 2 * VDF_FORM_SIZE:
        raise VdfProverError(f"chiavdf returned {len(blob)} bytes, not {2 * VDF_FORM_SIZE}")
    return common_pb2.VdfProof(
        discriminant_size_bits=discriminant_bits,
        iterations=iterations,
        challenge=challenge,
        output=blob[:VDF_FORM_SIZE],
        proof=blob[VDF_FORM_SIZE:],
    )


def verify_vdf(proof: common_pb2.VdfProof, *, expected_challenge: bytes, preset: Preset) -> None:
    """Check a VDF proof completely; :class:`.ProofRejected` (kind ``TIME``) at the first failure:

    * ``MALFORMED``: challenge not 32 bytes, output or proof not :data:`VDF_FORM_SIZE` bytes,
      iterations 0 or above :data:`MAX_VDF_ITERATIONS`;
    * ``UNSUPPORTED_ALGORITHM``: a discriminant size other than the preset's (or one chiavdf
      cannot handle);
    * ``CHALLENGE_MISMATCH``: the proof is over another challenge than ``expected_challenge``;
    * ``INSUFFICIENT``: fewer iterations than ``preset.vdf_iterations``;
    * ``VERIFICATION_FAILED``: output or proof is not a canonical encoding of a form of the
      challenge's class group, or the Wesolowski proof does not check.
    """
    if len(proof.challenge) != HASH_SIZE:
        raise _reject(ProofReason.MALFORMED, f"VDF challenge is not {HASH_SIZE} bytes")
    if len(proof.output) != VDF_FORM_SIZE or len(proof.proof) != VDF_FORM_SIZE:
        raise _reject(ProofReason.MALFORMED, f"VDF output and proof must be {VDF_FORM_SIZE} bytes")
    if not 1 <= proof.iterations <= MAX_VDF_ITERATIONS:
        raise _reject(ProofReason.MALFORMED, f"VDF iterations must be 1..{MAX_VDF_ITERATIONS}")
    bits = proof.discriminant_size_bits
    if bits != preset.vdf_discriminant_bits:
        raise _reject(
            ProofReason.UNSUPPORTED_ALGORITHM,
            f"VDF discriminant of {bits} bits, {preset.vdf_discriminant_bits} required",
        )
    if not _chiavdf_supports(bits):
        raise _reject(ProofReason.UNSUPPORTED_ALGORITHM, f"chiavdf cannot verify {bits}-bit VDFs")
    if proof.challenge != expected_challenge:
        raise _reject(ProofReason.CHALLENGE_MISMATCH, "VDF is over another challenge")
    if proof.iterations < preset.vdf_iterations:
        raise _reject(
            ProofReason.INSUFFICIENT,
            f"VDF of {proof.iterations} iterations, {preset.vdf_iterations} required",
        )
    discriminant = _discriminant(proof.challenge, bits)
    _check_canonical(discriminant, proof.output, "output")
    _check_canonical(discriminant, proof.proof, "proof")
    try:
        valid = chiavdf.verify_n_wesolowski(
            discriminant,
            VDF_GENERATOR,
            proof.output + proof.proof,
            proof.iterations,
            bits,
            _WESOLOWSKI_RECURSION,
        )
    except (RuntimeError, ValueError) as exc:
        raise _reject(
            ProofReason.VERIFICATION_FAILED, f"VDF proof rejected by chiavdf: {exc}"
        ) from exc
    if not valid:
        raise _reject(ProofReason.VERIFICATION_FAILED, "VDF proof does not verify")


# --- proof of history -------------------------------------------------------------------------


def poh_extend(start: bytes, num_hashes: int, mixin: bytes) -> bytes:
    """The end of a hash-chain segment: ``h = start``; ``num_hashes`` times
    ``h = SHA-256(h)``; then, if ``mixin`` is not empty, ``h = SHA-256(h || mixin)``.

    ``start`` is 32 bytes, ``num_hashes`` ``0..MAX_POH_HASHES`` and ``mixin`` at most
    :data:`MAX_POH_MIXIN_SIZE` bytes (:class:`ValueError` otherwise).
    """
    if not isinstance(start, bytes) or len(start) != HASH_SIZE:
        raise ValueError(f"start must be {HASH_SIZE} bytes")
    if not 0 <= num_hashes <= MAX_POH_HASHES:
        raise ValueError(f"num_hashes must be 0..{MAX_POH_HASHES}")
    if not isinstance(mixin, bytes) or len(mixin) > MAX_POH_MIXIN_SIZE:
        raise ValueError(f"mixin must be at most {MAX_POH_MIXIN_SIZE} bytes")
    sha256 = hashlib.sha256
    h = start
    for _ in itertools.repeat(None, num_hashes):
        h = sha256(h).digest()
    if mixin:
        h = sha256(h + mixin).digest()
    return h


def prove_poh(start: bytes, num_hashes: int, mixin: bytes) -> common_pb2.PohSegment:
    """The segment of ``num_hashes`` iterations from ``start`` with ``mixin`` hashed in at its
    end (see :func:`poh_extend` for the arguments' bounds)."""
    end = poh_extend(start, num_hashes, mixin)
    return common_pb2.PohSegment(start_hash=start, num_hashes=num_hashes, mixin=mixin, end_hash=end)


def verify_poh(
    segment: common_pb2.PohSegment,
    *,
    expected_start: bytes,
    expected_mixin: bytes,
    preset: Preset,
) -> None:
    """Check a PoH segment; :class:`.ProofRejected` (kind ``TIME``) at the first failure:

    * ``MALFORMED``: start or end hash not 32 bytes, mixin above :data:`MAX_POH_MIXIN_SIZE`
      bytes, more than :data:`MAX_POH_HASHES` iterations;
    * ``CHALLENGE_MISMATCH``: the segment does not start at ``expected_start`` (the previous
      segment's end): a replayed, reordered or back-dated segment;
    * ``INCONSISTENT``: its mixin is not ``expected_mixin`` (the state it orders);
    * ``INSUFFICIENT``: fewer iterations than ``preset.poh_min_hashes``;
    * ``VERIFICATION_FAILED``: recomputing the chain does not give its end hash.
    """
    if len(segment.start_hash) != HASH_SIZE or len(segment.end_hash) != HASH_SIZE:
        raise _reject(ProofReason.MALFORMED, f"PoH start and end hashes must be {HASH_SIZE} bytes")
    if len(segment.mixin) > MAX_POH_MIXIN_SIZE:
        raise _reject(ProofReason.MALFORMED, f"PoH mixin above {MAX_POH_MIXIN_SIZE} bytes")
    if segment.num_hashes > MAX_POH_HASHES:
        raise _reject(ProofReason.MALFORMED, f"PoH segment above {MAX_POH_HASHES} hashes")
    if segment.start_hash != expected_start:
        raise _reject(ProofReason.CHALLENGE_MISMATCH, "PoH segment does not start where expected")
    if segment.mixin != expected_mixin:
        raise _reject(ProofReason.INCONSISTENT, "PoH segment mixes in another state")
    if segment.num_hashes < preset.poh_min_hashes:
        raise _reject(
            ProofReason.INSUFFICIENT,
            f"PoH segment of {segment.num_hashes} hashes, {preset.poh_min_hashes} required",
        )
    if poh_extend(segment.start_hash, segment.num_hashes, segment.mixin) != segment.end_hash:
        raise _reject(ProofReason.VERIFICATION_FAILED, "PoH end hash does not match the chain")


# --- both -------------------------------------------------------------------------------------


def prove_time(
    previous: bytes, poh_start: bytes, mixin: bytes, preset: Preset
) -> common_pb2.TimeProof:
    """The time proof of a new version: the VDF over ``previous`` with the preset's iterations
    and discriminant size, and the PoH segment of the preset's minimum length from
    ``poh_start`` with ``mixin``."""
    return common_pb2.TimeProof(
        vdf=prove_vdf(previous, preset.vdf_iterations, preset.vdf_discriminant_bits),
        poh=prove_poh(poh_start, preset.poh_min_hashes, mixin),
    )


def verify_time(
    proof: common_pb2.TimeProof,
    *,
    expected_previous: bytes,
    expected_poh_start: bytes,
    expected_mixin: bytes,
    preset: Preset,
) -> None:
    """Check a time proof: ``MISSING`` if the VDF or the PoH segment is absent, then
    :func:`verify_vdf` against ``expected_previous`` and :func:`verify_poh` against
    ``expected_poh_start`` and ``expected_mixin``."""
    if not proof.HasField("vdf"):
        raise _reject(ProofReason.MISSING, "time proof has no VDF")
    if not proof.HasField("poh"):
        raise _reject(ProofReason.MISSING, "time proof has no PoH segment")
    verify_vdf(proof.vdf, expected_challenge=expected_previous, preset=preset)
    verify_poh(
        proof.poh, expected_start=expected_poh_start, expected_mixin=expected_mixin, preset=preset
    )
