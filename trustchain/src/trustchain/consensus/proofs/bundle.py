"""The four proofs together: the state digest, the combined hash, and validation of all four.

An asset state is valid only if all four proofs verify *and* fit together. For version ``n``
of asset ``A`` (both taken from the StakeProof), with ``previous`` the recorded version n-1
(:class:`PreviousState`, ``None`` for version 0):

* PoTime's VDF answers ``previous.state_hash`` (or :func:`~.challenges.genesis_hash`), its PoH
  segment continues ``previous.poh_end`` (or :func:`~.challenges.poh_genesis`) and mixes in the
  state digest;
* the beacon (hash of the VDF output) is PoWork's challenge and seeds PoSpace's challenges;
* the StakeProof's ``state_digest`` must equal :func:`state_digest` over the asset, version,
  previous state hash and the canonical encodings of the SpaceProof and the WorkProof — so the
  owner's signature covers what is stored (custody root, chunk count, location), what is
  offered (resources) and the work itself, and where in the chain it sits. Nobody but the
  owner can therefore swap the work's nonce or claimed difficulty for another that also
  verifies: every valid bundle for a state is the owner's, and its combined hash is fixed.

The combined hash (:func:`state_hash`) over the four proofs' canonical encodings is what
version ``n+1`` builds on. Encodings are the ``hypermesh.v1`` protobuf messages, serialized
deterministically after :func:`decode_bundle` has dropped unknown fields.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from google.protobuf.message import DecodeError

from hypermesh_interfaces.v1 import common_pb2
from trustchain.ca.trust import TrustStore
from trustchain.consensus.proofs import challenges, space, stake, timing, work
from trustchain.consensus.proofs.plots import Plot
from trustchain.consensus.proofs.presets import Preset
from trustchain.consensus.proofs.rejections import ProofKind, ProofReason, ProofRejected
from trustchain.consensus.proofs.stake import StakeRegistry

__all__ = [
    "MAX_BUNDLE_BYTES",
    "PreviousState",
    "ProofVerdict",
    "ValidationContext",
    "ValidationResult",
    "decode_bundle",
    "prove_four_proofs",
    "state_digest",
    "state_hash",
    "validate_four_proofs",
]

#: The largest encoded bundle accepted: custody proofs carry chunk contents (at most
#: ``custody_challenges`` chunks of up to 64 KiB) plus two certificate chains.
MAX_BUNDLE_BYTES = 8 << 20
_STATE_DIGEST_LABEL = b"hypermesh/state-digest/v1\x00"
_STATE_HASH_LABEL = b"hypermesh/state-hash/v1\x00"
_KINDS = (ProofKind.SPACE, ProofKind.STAKE, ProofKind.WORK, ProofKind.TIME)


def state_digest(
    *,
    asset: bytes,
    version: int,
    previous: bytes,
    space: common_pb2.SpaceProof,
    work: common_pb2.WorkProof,
) -> bytes:
    """SHA-256 over the label, ``asset`` (32), ``version`` (u64), ``previous`` (32), and the
    SHA-256 of the deterministic encodings of ``space`` and ``work``: what the owner signs.
    :class:`ValueError` if ``asset`` or ``previous`` is not 32 bytes or ``version`` does not
    fit 64 unsigned bits."""
    if len(asset) != challenges.ASSET_ID_SIZE or len(previous) != challenges.HASH_SIZE:
        raise ValueError("asset and previous must be 32 bytes")
    if not 0 <= version < 1 << 64:
        raise ValueError("version must fit 64 unsigned bits")
    return hashlib.sha256(
        _STATE_DIGEST_LABEL
        + asset
        + version.to_bytes(8, "big")
        + previous
        + hashlib.sha256(_encoding(space)).digest()
        + hashlib.sha256(_encoding(work)).digest()
    ).digest()


def _encoding(message: object) -> bytes:
    assert hasattr(message, "SerializeToString")
    data: bytes = message.SerializeToString(deterministic=True)
    return data


def state_hash(bundle: common_pb2.FourProof) -> bytes:
    """The combined hash: SHA-256 over the label and the SHA-256 of each proof's encoding, in
    the order space, stake, work, time. Version ``n+1`` builds on it."""
    digest = hashlib.sha256(_STATE_HASH_LABEL)
    for part in (bundle.space, bundle.stake, bundle.work, bundle.time):
        digest.update(hashlib.sha256(_encoding(part)).digest())
    return digest.digest()


def decode_bundle(data: bytes) -> common_pb2.FourProof:
    """Parse an encoded FourProof; unknown fields are dropped so they cannot vary the hash.
    :class:`ProofRejected` (COMBINED, MALFORMED) for oversized or undecodable bytes."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise ProofRejected(
            ProofKind.COMBINED,
            ProofReason.MALFORMED,
            f"bundle of {len(data)} bytes exceeds {MAX_BUNDLE_BYTES}",
        )
    bundle = common_pb2.FourProof()
    try:
        bundle.ParseFromString(data)
    except DecodeError as exc:
        raise ProofRejected(
            ProofKind.COMBINED, ProofReason.MALFORMED, f"not a FourProof: {exc}"
        ) from exc
    bundle.DiscardUnknownFields()
    return bundle


@dataclass(frozen=True)
class PreviousState:
    """What version ``n+1`` must build on: version ``n``'s number, combined hash and PoH end."""

    version: int
    state_hash: bytes
    poh_end: bytes

    @classmethod
    def of(cls, bundle: common_pb2.FourProof) -> PreviousState:
        """The previous state a valid ``bundle`` leaves for the next version."""
        return cls(bundle.stake.version, state_hash(bundle), bundle.time.poh.end_hash)


@dataclass(frozen=True)
class ProofVerdict:
    """One proof's outcome: ``rejection`` is ``None`` when it verified; ``seconds`` is how long
    checking it took (0 when it could not be checked)."""

    kind: ProofKind
    rejection: ProofRejected | None
    seconds: float = 0.0

    @property
    def valid(self) -> bool:
        return self.rejection is None


@dataclass(frozen=True)
class ValidationResult:
    """Every proof's verdict (space, stake, work, time) and the checks across them."""

    verdicts: tuple[ProofVerdict, ...]
    combined: tuple[ProofRejected, ...]

    @property
    def valid(self) -> bool:
        return not self.combined and all(v.valid for v in self.verdicts)

    @property
    def rejections(self) -> tuple[ProofRejected, ...]:
        """Every failed check: the cross-proof ones first, then each proof's."""
        return self.combined + tuple(v.rejection for v in self.verdicts if v.rejection)

    def to_message(self) -> common_pb2.ValidationResult:
        """As ``hypermesh.v1.ValidationResult``."""
        return common_pb2.ValidationResult(
            verdict=common_pb2.VERDICT_VALID if self.valid else common_pb2.VERDICT_REJECTED,
            rejections=[
                common_pb2.Rejection(
                    proof_kind=int(r.kind),  # type: ignore[arg-type]
                    reason=int(r.reason),  # type: ignore[arg-type]
                    detail=r.detail,
                )
                for r in self.rejections
            ],
        )


@dataclass(frozen=True)
class ValidationContext:
    """What a validator checks against: thresholds, trusted anchors, the stake registry and
    the validation time (``None``: now)."""

    preset: Preset
    trust_store: TrustStore
    registry: StakeRegistry
    at: datetime | None = None


def validate_four_proofs(
    bundle: common_pb2.FourProof,
    *,
    previous: PreviousState | None,
    context: ValidationContext,
) -> ValidationResult:
    """Check all four proofs of ``bundle`` and how they fit together (see the module docs).

    Never raises for bad proofs: every failure is in the result, each with its kind and
    machine-readable reason. A proof whose expected challenge cannot be derived (its input
    proof is missing) is reported as not verified with reason MISSING.
    """
    combined: list[ProofRejected] = []
    outcome: dict[ProofKind, ProofRejected | None] = {}
    took: dict[ProofKind, float] = {}
    present = {
        ProofKind.SPACE: bundle.HasField("space"),
        ProofKind.STAKE: bundle.HasField("stake"),
        ProofKind.WORK: bundle.HasField("work"),
        ProofKind.TIME: bundle.HasField("time"),
    }
    for kind, there in present.items():
        if not there:
            outcome[kind] = ProofRejected(kind, ProofReason.MISSING, "the proof is absent")
    preset = context.preset
    asset = bundle.stake.asset_id.id
    version = bundle.stake.version
    if len(asset) != challenges.ASSET_ID_SIZE:
        combined.append(
            ProofRejected(
                ProofKind.COMBINED,
                ProofReason.MALFORMED,
                "the stake proof names no 32-byte asset id; nothing can be bound to it",
            )
        )
        return _result(outcome, took, combined, "no asset id")
    expected_version = 0 if previous is None else previous.version + 1
    if version != expected_version:
        combined.append(
            ProofRejected(
                ProofKind.COMBINED,
                ProofReason.CHALLENGE_MISMATCH,
                f"version {version} does not follow the recorded state "
                f"(expected version {expected_version})",
            )
        )
    prev_hash = challenges.genesis_hash(asset) if previous is None else previous.state_hash
    poh_start = challenges.poh_genesis(asset) if previous is None else previous.poh_end

    if ProofKind.TIME not in outcome:
        outcome[ProofKind.TIME], took[ProofKind.TIME] = _attempt(
            lambda: timing.verify_time(
                bundle.time,
                expected_previous=prev_hash,
                expected_poh_start=poh_start,
                expected_mixin=bundle.stake.state_digest,
                preset=preset,
            )
        )
    vdf_output = bundle.time.vdf.output
    beacon = challenges.beacon(vdf_output) if vdf_output else None

    if ProofKind.WORK not in outcome:
        if beacon is None:
            outcome[ProofKind.WORK] = _unbound(ProofKind.WORK)
        else:
            outcome[ProofKind.WORK], took[ProofKind.WORK] = _attempt(
                lambda: work.verify_work(
                    bundle.work,
                    asset=asset,
                    version=version,
                    expected_challenge=beacon,
                    preset=preset,
                )
            )
    if ProofKind.SPACE not in outcome:
        if beacon is None:
            outcome[ProofKind.SPACE] = _unbound(ProofKind.SPACE)
        else:
            outcome[ProofKind.SPACE], took[ProofKind.SPACE] = _attempt(
                lambda: space.verify_space(
                    bundle.space,
                    beacon=beacon,
                    asset=asset,
                    version=version,
                    preset=preset,
                    trust_store=context.trust_store,
                    at=context.at,
                )
            )
    if ProofKind.STAKE not in outcome:
        expected_digest = state_digest(
            asset=asset,
            version=version,
            previous=prev_hash,
            space=bundle.space,
            work=bundle.work,
        )
        outcome[ProofKind.STAKE], took[ProofKind.STAKE] = _attempt(
            lambda: stake.verify_stake(
                bundle.stake,
                expected_asset=asset,
                expected_version=version,
                expected_state_digest=expected_digest,
                trust_store=context.trust_store,
                registry=context.registry,
                preset=preset,
                at=context.at,
            )
        )
    return _result(outcome, took, combined, None)


def _attempt(check: Callable[[], object]) -> tuple[ProofRejected | None, float]:
    """Run ``check``: its rejection (None if it passed) and how long it took."""
    started = time.perf_counter()
    try:
        check()
    except ProofRejected as exc:
        return exc, time.perf_counter() - started
    return None, time.perf_counter() - started


def _unbound(kind: ProofKind) -> ProofRejected:
    return ProofRejected(
        kind,
        ProofReason.MISSING,
        "its challenge cannot be derived: the proof it depends on is missing or malformed",
    )


def _result(
    outcome: dict[ProofKind, ProofRejected | None],
    took: dict[ProofKind, float],
    combined: list[ProofRejected],
    unchecked: str | None,
) -> ValidationResult:
    verdicts = []
    for kind in _KINDS:
        if kind in outcome:
            verdicts.append(ProofVerdict(kind, outcome[kind], took.get(kind, 0.0)))
        else:
            detail = f"not checked: {unchecked}" if unchecked else "not checked"
            verdicts.append(ProofVerdict(kind, ProofRejected(kind, ProofReason.MISSING, detail)))
    return ValidationResult(tuple(verdicts), tuple(combined))


def prove_four_proofs(
    *,
    asset: bytes,
    previous: PreviousState | None,
    chunks: Sequence[bytes],
    resources: common_pb2.ResourceSpec,
    amount: int,
    preset: Preset,
    plot: Plot,
    storage_chain: Sequence[x509.Certificate],
    storage_sign: Callable[[bytes], bytes],
    address: common_pb2.NetworkAddress,
    zone: str,
    owner_chain: Sequence[x509.Certificate],
    owner_sign: Callable[[bytes], bytes],
    on_step: Callable[[ProofKind, float], None] | None = None,
) -> common_pb2.FourProof:
    """Make the four proofs of the next version of ``asset`` the way a node does: the VDF
    over the previous state, then work and space for its beacon, then the owner's stake
    signature over the resulting state digest (and the PoH segment that mixes it in).

    ``on_step``, if given, is told how long each step took, as it finishes: ``TIME`` twice
    (the VDF, then the PoH segment), ``WORK``, ``SPACE`` and ``STAKE`` once each.
    """
    clock = _StepClock(on_step)
    version = 0 if previous is None else previous.version + 1
    prev_hash = challenges.genesis_hash(asset) if previous is None else previous.state_hash
    poh_start = challenges.poh_genesis(asset) if previous is None else previous.poh_end
    vdf = timing.prove_vdf(prev_hash, preset.vdf_iterations, preset.vdf_discriminant_bits)
    clock.lap(ProofKind.TIME)
    beacon = challenges.beacon(vdf.output)
    work_proof = work.prove_work(asset, version, resources, beacon, preset.work_bits)
    clock.lap(ProofKind.WORK)
    space_proof = space.prove_space(
        plot=plot,
        chunks=chunks,
        beacon=beacon,
        asset=asset,
        version=version,
        preset=preset,
        chain=storage_chain,
        sign=storage_sign,
        address=address,
        zone=zone,
    )
    clock.lap(ProofKind.SPACE)
    digest = state_digest(
        asset=asset, version=version, previous=prev_hash, space=space_proof, work=work_proof
    )
    stake_proof = stake.sign_stake(
        asset=asset,
        version=version,
        state_digest=digest,
        amount=amount,
        chain=owner_chain,
        sign=owner_sign,
    )
    clock.lap(ProofKind.STAKE)
    poh = timing.prove_poh(poh_start, preset.poh_min_hashes, digest)
    clock.lap(ProofKind.TIME)
    return common_pb2.FourProof(
        space=space_proof,
        stake=stake_proof,
        work=work_proof,
        time=common_pb2.TimeProof(vdf=vdf, poh=poh),
    )


class _StepClock:
    """Tells ``on_step`` the time since the previous lap (or since it was made)."""

    def __init__(self, on_step: Callable[[ProofKind, float], None] | None) -> None:
        self._on_step = on_step
        self._last = time.perf_counter()

    def lap(self, kind: ProofKind) -> None:
        now = time.perf_counter()
        if self._on_step is not None:
            self._on_step(kind, now - self._last)
        self._last = now
