"""Why a proof was rejected: the typed error every verifier in :mod:`..proofs` raises."""

from __future__ import annotations

import enum

from trustchain.errors import TrustChainError

__all__ = ["ProofKind", "ProofReason", "ProofRejected"]


class ProofKind(enum.IntEnum):
    """Which part a rejection is about; the values of ``hypermesh.v1.ProofKind``."""

    SPACE = 1
    STAKE = 2
    WORK = 3
    TIME = 4
    COMBINED = 5
    CERTIFICATE_CHAIN = 6


class ProofReason(enum.IntEnum):
    """Why a check failed; the values of ``hypermesh.v1.RejectionReason``."""

    #: A required part is absent.
    MISSING = 1
    #: A part cannot be decoded or has the wrong size.
    MALFORMED = 2
    #: An algorithm or parameter (plot size, discriminant size...) is not allowed.
    UNSUPPORTED_ALGORITHM = 3
    #: A signature does not verify.
    INVALID_SIGNATURE = 4
    #: The mathematics do not check (proof of space, Merkle path, work hash, VDF, hash chain).
    VERIFICATION_FAILED = 5
    #: The proof checks but misses a threshold (quality, difficulty, stake, iterations).
    INSUFFICIENT = 6
    #: The proof answers another challenge or previous state than the expected one.
    CHALLENGE_MISMATCH = 7
    #: The parts refer to different assets, versions or identities.
    INCONSISTENT = 8
    #: A certificate is outside its validity period.
    EXPIRED = 9
    #: A certificate or key is revoked.
    REVOKED = 10
    #: A chain does not end at an accepted trust anchor (or its trust level is too low).
    UNTRUSTED_ROOT = 11
    #: The identity proven is not the one expected.
    IDENTITY_MISMATCH = 12


class ProofRejected(TrustChainError):
    """A proof failed a check: ``kind`` (which proof), ``reason`` (machine-readable) and
    ``detail`` (for humans and logs, not for programs)."""

    def __init__(self, kind: ProofKind, reason: ProofReason, detail: str) -> None:
        super().__init__(f"{kind.name.lower()} proof rejected ({reason.name}): {detail}")
        self.kind = kind
        self.reason = reason
        self.detail = detail
