"""PoSpace (WHERE): a proof of space, a proof of custody and the storage location, signed.

A ``hypermesh.v1.SpaceProof`` for version ``version`` of asset ``asset`` under the beacon
``beacon`` says: "the node whose certificate chain this is holds a plot of the preset's size
bound to its key (:mod:`.plots`), which answers one of the asset's space challenges, holds the
challenged chunks of the asset (:mod:`.custody`), and serves them at this address and zone".

* Capacity: the Chia proof of space (``pos_proof``, ``quality``) of plot ``plot_id`` of size
  ``k`` for ``challenge = space_challenge(beacon, asset, version, attempt)`` with
  ``attempt < preset.space_attempts``; the quality meets ``preset.space_quality_bits``.
  ``plot_id`` must be :func:`.plots.plot_id` of the storage node's key and ``plot_seed``.
* Custody: the Merkle root and size of the asset's chunk tree and ``preset.custody_challenges``
  chunk openings at ``custody_indices(challenge, custody_chunk_count, count)`` — the same
  challenge, so the custody answer cannot be prepared before the beacon exists either.
* Location: ``storage_node_id`` (the leaf key id of ``storage_node_certificate_chain``),
  ``storage_address``, ``storage_zone``.
* ``node_signature``: the storage node's TrustChain signature (a ``SIGNATURE`` envelope,
  hybrid Ed25519 + Falcon-1024) over :func:`space_signing_bytes`::

      SPACE_SIGNING_LABEL                       b"hypermesh/space-proof/v1\\x00", 25 bytes
      || SpaceProof with node_signature cleared, deterministic protobuf serialization

  It covers every other field, so no part can be swapped without the node's key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from hypermesh_interfaces.v1 import common_pb2
from trustchain.ca import hybrid
from trustchain.ca.trust import TrustLevel, TrustStore
from trustchain.consensus.proofs import challenges, custody, plots, signers
from trustchain.consensus.proofs.plots import Plot, PlotMismatch
from trustchain.consensus.proofs.presets import Preset
from trustchain.consensus.proofs.rejections import ProofKind, ProofReason, ProofRejected
from trustchain.consensus.proofs.signers import (
    MAX_CERTIFICATE_SIZE,
    MAX_CHAIN_CERTIFICATES,
    MAX_SIGNATURE_SIZE,
)
from trustchain.errors import (
    AlgorithmMismatch,
    InvalidSignature,
    TrustChainError,
)

__all__ = [
    "MAX_CERTIFICATE_SIZE",
    "MAX_CHAIN_CERTIFICATES",
    "MAX_SIGNATURE_SIZE",
    "SPACE_SIGNING_LABEL",
    "NoSpaceProof",
    "SpaceVerdict",
    "prove_space",
    "space_signing_bytes",
    "verify_space",
]

#: Domain label of the storage node's signature (:func:`space_signing_bytes`).
SPACE_SIGNING_LABEL: Final = b"hypermesh/space-proof/v1\x00"
_IP_SIZES: Final = (4, 16)
_MAX_PORT: Final = 65535


class NoSpaceProof(TrustChainError):
    """:func:`prove_space` found no proof meeting the preset's quality in any of the
    ``attempts`` space challenges (the plot is too small for the preset, or unlucky: a plot
    has no proof for about 45% of challenges)."""

    def __init__(self, attempts: int, quality_bits: int) -> None:
        super().__init__(
            f"no proof of space with {quality_bits} leading zero bits in {attempts} challenges"
        )
        self.attempts = attempts
        self.quality_bits = quality_bits


@dataclass(frozen=True)
class SpaceVerdict:
    """An accepted SpaceProof: the storage node's id (leaf key id), the attempt whose
    challenge it answers, its quality string and the trust level of the node's chain."""

    storage_node_id: bytes
    attempt: int
    quality: bytes
    trust_level: TrustLevel


def space_signing_bytes(proof: common_pb2.SpaceProof) -> bytes:
    """What the storage node signs: ``SPACE_SIGNING_LABEL`` followed by the deterministic
    serialization of ``proof`` with ``node_signature`` cleared (``proof`` is not changed)."""
    unsigned = common_pb2.SpaceProof()
    unsigned.CopyFrom(proof)
    unsigned.ClearField("node_signature")
    return SPACE_SIGNING_LABEL + unsigned.SerializeToString(deterministic=True)


def prove_space(
    *,
    plot: Plot,
    chunks: Sequence[bytes],
    beacon: bytes,
    asset: bytes,
    version: int,
    preset: Preset,
    chain: Sequence[x509.Certificate],
    sign: Callable[[bytes], bytes],
    address: common_pb2.NetworkAddress,
    zone: str,
) -> common_pb2.SpaceProof:
    """The signed SpaceProof of the storage node with certificate ``chain`` (leaf first) for
    version ``version`` of ``asset`` under ``beacon``.

    Tries the space challenges ``0, 1, ...`` below ``preset.space_attempts`` and takes the
    first for which ``plot`` has a proof meeting ``preset.space_quality_bits``
    (:class:`NoSpaceProof` if none has); opens ``preset.custody_challenges`` of ``chunks``
    (the asset's chunks, in order) for that same challenge; fills every field and signs
    :func:`space_signing_bytes` with ``sign`` (which returns a TrustChain ``SIGNATURE``
    envelope made with the leaf certificate's key).

    :class:`ValueError` for a chain that is empty or too long, a plot of another ``k`` than the
    preset's, an address that cannot be dialled (IP not 4 or 16 bytes, port above 65535), bad
    chunks or expected values; :class:`PlotMismatch` if ``plot`` is not bound to the leaf key.
    """
    if not chain or len(chain) > MAX_CHAIN_CERTIFICATES:
        raise ValueError(f"the storage node's chain must have 1..{MAX_CHAIN_CERTIFICATES} certs")
    if plot.k != preset.plot_k:
        raise ValueError(f"the plot has k={plot.k}, the {preset.name} preset uses {preset.plot_k}")
    if len(address.ip) not in _IP_SIZES or address.port > _MAX_PORT:
        raise ValueError("the storage address needs a 4- or 16-byte IP and a port <= 65535")
    leaf_key = hybrid.certificate_public_key(chain[0])
    if plot.node_key_id != leaf_key.key_id or plot.plot_id != plots.plot_id(leaf_key, plot.seed):
        raise PlotMismatch(f"plot {plot.plot_id.hex()} is not bound to the leaf certificate's key")
    tree = custody.CustodyTree.build(chunks)
    for attempt in range(preset.space_attempts):
        challenge = challenges.space_challenge(beacon, asset, version, attempt)
        found = plots.prove_capacity(plot, challenge, preset.space_quality_bits)
        if found is not None:
            break
    else:
        raise NoSpaceProof(preset.space_attempts, preset.space_quality_bits)
    pos_proof, quality = found
    proof = common_pb2.SpaceProof(
        pos_proof=pos_proof,
        plot_id=plot.plot_id,
        k=plot.k,
        challenge=challenge,
        quality=quality,
        custody_merkle_root=tree.root,
        custody_proofs=tree.prove_challenge(challenge, preset.custody_challenges, chunks),
        storage_node_id=common_pb2.PeerId(id=leaf_key.key_id),
        storage_address=address,
        storage_zone=zone,
        storage_node_certificate_chain=common_pb2.CertificateChain(
            certificates=[certificate.public_bytes(Encoding.DER) for certificate in chain]
        ),
        plot_seed=plot.seed,
        custody_chunk_count=tree.size,
    )
    proof.node_signature = sign(space_signing_bytes(proof))
    return proof


def _reject(reason: ProofReason, detail: str) -> ProofRejected:
    return ProofRejected(ProofKind.SPACE, reason, detail)


def _check_present(proof: common_pb2.SpaceProof) -> None:
    """MISSING: the parts without which nothing can be checked."""
    for present, what in (
        (bool(proof.storage_node_certificate_chain.certificates), "storage node certificate chain"),
        (bool(proof.node_signature), "node signature"),
        (bool(proof.pos_proof), "proof of space"),
        (bool(proof.custody_proofs), "custody proofs"),
        (bool(proof.storage_node_id.id), "storage node id"),
        (proof.HasField("storage_address"), "storage address"),
    ):
        if not present:
            raise _reject(ProofReason.MISSING, f"no {what}")


def _check_sizes(proof: common_pb2.SpaceProof) -> None:
    """MALFORMED: every fixed size, before anything is decoded or hashed."""
    for value, what in (
        (proof.storage_node_id.id, "storage node id"),
        (proof.plot_id, "plot id"),
        (proof.plot_seed, "plot seed"),
        (proof.challenge, "challenge"),
        (proof.quality, "quality"),
        (proof.custody_merkle_root, "custody Merkle root"),
    ):
        if len(value) != challenges.HASH_SIZE:
            raise _reject(
                ProofReason.MALFORMED, f"{what} is {len(value)} bytes, not {challenges.HASH_SIZE}"
            )
    if len(proof.pos_proof) != plots.proof_size(proof.k):
        raise _reject(
            ProofReason.MALFORMED,
            f"proof of space is {len(proof.pos_proof)} bytes, k={proof.k} needs "
            f"{plots.proof_size(proof.k)}",
        )
    address = proof.storage_address
    if len(address.ip) not in _IP_SIZES or address.port > _MAX_PORT:
        raise _reject(
            ProofReason.MALFORMED,
            f"storage address has a {len(address.ip)}-byte IP and port {address.port}",
        )


def _answered_attempt(
    challenge: bytes, beacon: bytes, asset: bytes, version: int, attempts: int
) -> int | None:
    for attempt in range(attempts):
        if challenges.space_challenge(beacon, asset, version, attempt) == challenge:
            return attempt
    return None


def verify_space(
    proof: common_pb2.SpaceProof,
    *,
    beacon: bytes,
    asset: bytes,
    version: int,
    preset: Preset,
    trust_store: TrustStore,
    at: datetime | None = None,
) -> SpaceVerdict:
    """Check ``proof`` completely for version ``version`` of ``asset`` under ``beacon``;
    return a :class:`SpaceVerdict` or raise :class:`ProofRejected` at the first failure, in
    this order (kind SPACE unless said otherwise):

    1. MISSING: no certificate chain, node signature, proof of space, custody proofs, storage
       node id or storage address;
    2. MALFORMED: storage node id, plot id, plot seed, challenge, quality or custody root not
       32 bytes; ``pos_proof`` not ``8 * k`` bytes; an address IP not 4 or 16 bytes or a port
       above 65535; more than :data:`MAX_CHAIN_CERTIFICATES` certificates, one above
       :data:`MAX_CERTIFICATE_SIZE` or not DER; a signature above :data:`MAX_SIGNATURE_SIZE`
       or that does not decode (UNSUPPORTED_ALGORITHM: not hybrid Ed25519 + Falcon-1024);
    3. CERTIFICATE_CHAIN: :func:`~trustchain.ca.validation.validate` at ``at`` (default now)
       with the preset's clock skew rejects the chain (reason: the rejection's ``proto_code``),
       or UNTRUSTED_ROOT when its trust level is below ``preset.min_trust_level``;
    4. IDENTITY_MISMATCH: ``storage_node_id`` is not the leaf key's id;
    5. INVALID_SIGNATURE: ``node_signature`` does not verify under the leaf key over
       :func:`space_signing_bytes`;
    6. UNSUPPORTED_ALGORITHM: ``k`` is not ``preset.plot_k``;
    7. IDENTITY_MISMATCH: ``plot_id`` is not ``plot_id(leaf key, plot_seed)``;
    8. CHALLENGE_MISMATCH: ``challenge`` is none of ``space_challenge(beacon, asset, version,
       i)`` for ``i < preset.space_attempts``;
    9. :func:`.plots.verify_capacity` (VERIFICATION_FAILED, INSUFFICIENT);
    10. :func:`.custody.verify_custody` with ``preset.custody_challenges`` (MISSING,
        INCONSISTENT, MALFORMED, CHALLENGE_MISMATCH, VERIFICATION_FAILED).

    :class:`ValueError` for a ``beacon`` or ``asset`` not 32 bytes, a ``version`` outside 64
    bits or a naive ``at`` (caller errors).
    """
    if len(beacon) != challenges.HASH_SIZE or len(asset) != challenges.ASSET_ID_SIZE:
        raise ValueError("beacon and asset must be 32 bytes")
    if not 0 <= version < 1 << 64:
        raise ValueError("version must fit 64 unsigned bits")
    _check_present(proof)
    _check_sizes(proof)
    certificates = signers.decode_chain(
        proof.storage_node_certificate_chain.certificates, ProofKind.SPACE
    )
    signature = signers.decode_signature(proof.node_signature, ProofKind.SPACE, "node signature")
    report = signers.validate_signer(
        certificates, trust_store=trust_store, preset=preset, at=at, whose="storage node"
    )
    leaf_key = report.leaf_key
    if proof.storage_node_id.id != leaf_key.key_id:
        raise _reject(
            ProofReason.IDENTITY_MISMATCH,
            f"storage node id {proof.storage_node_id.id.hex()} is not the certificate's key "
            f"{leaf_key.key_id.hex()}",
        )
    try:
        leaf_key.verify(signature, space_signing_bytes(proof))
    except (InvalidSignature, AlgorithmMismatch) as exc:
        raise _reject(ProofReason.INVALID_SIGNATURE, f"node signature: {exc}") from exc
    if proof.k != preset.plot_k:
        raise _reject(
            ProofReason.UNSUPPORTED_ALGORITHM,
            f"plot size k={proof.k}, the {preset.name} preset requires k={preset.plot_k}",
        )
    if proof.plot_id != plots.plot_id(leaf_key, proof.plot_seed):
        raise _reject(
            ProofReason.IDENTITY_MISMATCH,
            "the plot id is not derived from the storage node's key and the plot seed",
        )
    attempt = _answered_attempt(proof.challenge, beacon, asset, version, preset.space_attempts)
    if attempt is None:
        raise _reject(
            ProofReason.CHALLENGE_MISMATCH,
            f"the challenge is none of the first {preset.space_attempts} space challenges of "
            f"asset {asset.hex()} version {version}",
        )
    plots.verify_capacity(
        proof.plot_id,
        proof.k,
        proof.challenge,
        proof.pos_proof,
        proof.quality,
        quality_bits=preset.space_quality_bits,
    )
    custody.verify_custody(
        proof.custody_merkle_root,
        proof.custody_chunk_count,
        proof.challenge,
        preset.custody_challenges,
        proof.custody_proofs,
    )
    return SpaceVerdict(
        storage_node_id=leaf_key.key_id,
        attempt=attempt,
        quality=proof.quality,
        trust_level=report.trust_level,
    )
