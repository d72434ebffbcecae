"""Who signed a proof: the certificate chain and signature envelope PoSpace and PoStake carry.

Both the storage node's SpaceProof and the owner's StakeProof carry a DER certificate chain
(leaf first) and a TrustChain signature envelope made with the leaf's hybrid key. This module
decodes both with every size bounded before any parsing, and validates the chain against a
trust store with the preset's clock skew and minimum trust level. Failures are
:class:`.ProofRejected`: decoding ones with the proof's kind, chain validation ones with kind
``CERTIFICATE_CHAIN`` and the validator's reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from cryptography import x509

from trustchain.ca.trust import PARSE_ERRORS, TrustStore
from trustchain.ca.validation import ValidationReport, validate
from trustchain.consensus.proofs.presets import Preset
from trustchain.consensus.proofs.rejections import ProofKind, ProofReason, ProofRejected
from trustchain.crypto.algorithms import SignatureAlgorithm
from trustchain.crypto.signatures import Signature
from trustchain.errors import CertificateRejected, MalformedData, UnknownAlgorithm

__all__ = [
    "HYBRID",
    "MAX_CERTIFICATE_SIZE",
    "MAX_CHAIN_CERTIFICATES",
    "MAX_SIGNATURE_SIZE",
    "decode_chain",
    "decode_signature",
    "validate_signer",
]

#: At most this many certificates in a signer's chain (validation itself stops at 8 per path).
MAX_CHAIN_CERTIFICATES: Final = 16
#: The largest DER certificate accepted (a hybrid certificate is about 4.5 to 6 KiB).
MAX_CERTIFICATE_SIZE: Final = 64 * 1024
#: The largest signature envelope accepted (a hybrid signature is at most 1550 bytes).
MAX_SIGNATURE_SIZE: Final = 4096
#: The only algorithm a proof may be signed with.
HYBRID: Final = SignatureAlgorithm.HYBRID_ED25519_FALCON_1024


def decode_chain(ders: Sequence[bytes], kind: ProofKind) -> list[x509.Certificate]:
    """Parse the DER certificates ``ders``; ``kind`` MALFORMED for more than
    :data:`MAX_CHAIN_CERTIFICATES`, one above :data:`MAX_CERTIFICATE_SIZE` or one that does
    not parse."""
    if len(ders) > MAX_CHAIN_CERTIFICATES:
        raise ProofRejected(
            kind,
            ProofReason.MALFORMED,
            f"{len(ders)} certificates in the chain, at most {MAX_CHAIN_CERTIFICATES}",
        )
    for index, der in enumerate(ders):
        if len(der) > MAX_CERTIFICATE_SIZE:
            raise ProofRejected(
                kind,
                ProofReason.MALFORMED,
                f"certificate {index} is {len(der)} bytes, at most {MAX_CERTIFICATE_SIZE}",
            )
    certificates: list[x509.Certificate] = []
    for index, der in enumerate(ders):
        try:
            certificates.append(x509.load_der_x509_certificate(der))
        except PARSE_ERRORS as exc:
            raise ProofRejected(
                kind, ProofReason.MALFORMED, f"certificate {index} does not decode: {exc}"
            ) from exc
    return certificates


def decode_signature(data: bytes, kind: ProofKind, what: str) -> Signature:
    """Parse the signature envelope ``data`` (``what`` names it in details): MALFORMED if it
    is above :data:`MAX_SIGNATURE_SIZE` or does not decode, UNSUPPORTED_ALGORITHM if it is not
    :data:`HYBRID`."""
    if len(data) > MAX_SIGNATURE_SIZE:
        raise ProofRejected(
            kind,
            ProofReason.MALFORMED,
            f"{what} is {len(data)} bytes, at most {MAX_SIGNATURE_SIZE}",
        )
    try:
        signature = Signature.from_bytes(data)
    except UnknownAlgorithm as exc:
        raise ProofRejected(kind, ProofReason.UNSUPPORTED_ALGORITHM, f"{what}: {exc}") from exc
    except MalformedData as exc:
        raise ProofRejected(kind, ProofReason.MALFORMED, f"{what} does not decode: {exc}") from exc
    if signature.algorithm is not HYBRID:
        raise ProofRejected(
            kind,
            ProofReason.UNSUPPORTED_ALGORITHM,
            f"{what} is {signature.algorithm.label}, expected {HYBRID.label}",
        )
    return signature


def validate_signer(
    certificates: Sequence[x509.Certificate],
    *,
    trust_store: TrustStore,
    preset: Preset,
    at: datetime | None,
    whose: str,
) -> ValidationReport:
    """Validate the chain (leaf first) against ``trust_store`` at ``at`` (None: now) with
    ``preset.clock_skew``. ``CERTIFICATE_CHAIN`` rejections: the validator's reason (its
    ``proto_code``: EXPIRED, REVOKED, UNTRUSTED_ROOT, INVALID_SIGNATURE, MALFORMED...) when it
    rejects the chain, UNTRUSTED_ROOT when the chain's trust level is below
    ``preset.min_trust_level``. ``whose`` (e.g. "owner") names the chain in details."""
    try:
        report = validate(certificates, trust_store, at=at, clock_skew=preset.clock_skew)
    except CertificateRejected as exc:
        raise ProofRejected(
            ProofKind.CERTIFICATE_CHAIN,
            ProofReason(exc.reason.proto_code),
            f"{whose} certificate chain: {exc}",
        ) from exc
    if report.trust_level < preset.min_trust_level:
        raise ProofRejected(
            ProofKind.CERTIFICATE_CHAIN,
            ProofReason.UNTRUSTED_ROOT,
            f"{whose} certificate chain is trusted {report.trust_level.name}, the "
            f"{preset.name} preset requires {preset.min_trust_level.name}",
        )
    return report
