"""Every threshold the four proofs are checked against, in three named presets.

``localhost_testing`` is for tests and the demo (proofs in well under a second, plots of
k=18); ``default`` for a small real network; ``production`` for the public network. A
verifier rejects a proof made under weaker parameters than its preset: plot size, difficulty
and iterations are minimums, never matched loosely.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from trustchain.ca.trust import TrustLevel

__all__ = ["DEFAULT", "LOCALHOST_TESTING", "PRESETS", "PRODUCTION", "Preset", "preset"]


@dataclass(frozen=True)
class Preset:
    """The thresholds of one deployment.

    * ``plot_k``: the Chia plot size every proof of space must use (exactly).
    * ``space_quality_bits``: leading zero bits the proof-of-space quality string must have.
    * ``space_attempts``: how many derived challenges (0..n-1) a prover may try before one of
      its plots has a proof meeting the quality (a plot has about one proof per challenge).
    * ``custody_challenges``: chunks a custody proof opens, drawn with replacement.
    * ``work_bits``: minimum leading zero bits of the work hash.
    * ``vdf_iterations``: minimum squarings of the VDF; ``vdf_discriminant_bits`` its exact
      discriminant size.
    * ``poh_min_hashes``: minimum SHA-256 iterations in the proof-of-history segment.
    * ``min_stake``: minimum amount staked; ``min_trust_level``: minimum trust level of the
      owner's and storage node's certificate chains; ``clock_skew``: tolerance on validity
      periods.
    """

    name: str
    plot_k: int
    space_quality_bits: int
    space_attempts: int
    custody_challenges: int
    work_bits: int
    vdf_iterations: int
    vdf_discriminant_bits: int
    poh_min_hashes: int
    min_stake: int
    min_trust_level: TrustLevel
    clock_skew: timedelta

    def __post_init__(self) -> None:
        if not 18 <= self.plot_k <= 50:
            raise ValueError("plot_k must be 18..50 (chiapos' range)")
        if not 0 <= self.space_quality_bits <= 64 or not 1 <= self.space_attempts <= 1024:
            raise ValueError("space_quality_bits must be 0..64 and space_attempts 1..1024")
        if not 1 <= self.custody_challenges <= 1024:
            raise ValueError("custody_challenges must be 1..1024")
        if not 0 <= self.work_bits <= 64:
            raise ValueError("work_bits must be 0..64")
        if self.vdf_iterations < 1 or self.vdf_discriminant_bits not in (512, 1024):
            raise ValueError("vdf_iterations must be >= 1, vdf_discriminant_bits 512 or 1024")
        if self.poh_min_hashes < 1 or self.min_stake < 0:
            raise ValueError("poh_min_hashes must be >= 1 and min_stake >= 0")


LOCALHOST_TESTING = Preset(
    name="localhost_testing",
    plot_k=18,
    space_quality_bits=0,
    space_attempts=64,
    custody_challenges=8,
    work_bits=8,
    vdf_iterations=1_000,
    vdf_discriminant_bits=1024,
    poh_min_hashes=256,
    min_stake=1,
    min_trust_level=TrustLevel.PARTIAL,
    clock_skew=timedelta(minutes=5),
)

DEFAULT = Preset(
    name="default",
    plot_k=21,
    space_quality_bits=1,
    space_attempts=64,
    custody_challenges=32,
    work_bits=16,
    vdf_iterations=100_000,
    vdf_discriminant_bits=1024,
    poh_min_hashes=4_096,
    min_stake=1_000,
    min_trust_level=TrustLevel.FULL,
    clock_skew=timedelta(minutes=1),
)

PRODUCTION = Preset(
    name="production",
    plot_k=32,
    space_quality_bits=2,
    space_attempts=128,
    custody_challenges=64,
    work_bits=22,
    vdf_iterations=2_000_000,
    vdf_discriminant_bits=1024,
    poh_min_hashes=65_536,
    min_stake=100_000,
    min_trust_level=TrustLevel.FULL,
    clock_skew=timedelta(seconds=30),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (LOCALHOST_TESTING, DEFAULT, PRODUCTION)}


def preset(name: str) -> Preset:
    """The preset called ``name``; :class:`ValueError` naming the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None
