"""Every failure TrustChain reports, as a typed exception.

A check that fails raises one of these; nothing in TrustChain signals failure by returning
``False``. All derive from :class:`TrustChainError`, so callers can catch the family or one member.
"""

from __future__ import annotations

import enum

from hypermesh_interfaces.v1 import common_pb2, ledger_pb2


class TrustChainError(Exception):
    """Base class of every TrustChain error."""


# --- cryptography -----------------------------------------------------------------------------


class CryptoError(TrustChainError):
    """A cryptographic operation failed."""


class MalformedData(CryptoError, ValueError):
    """Bytes that do not parse: wrong length, truncated, trailing bytes, bad header or version."""


class InvalidKey(MalformedData):
    """A key encoding that is not a valid key of its algorithm (wrong size, bad header)."""


class UnknownAlgorithm(CryptoError, ValueError):
    """An algorithm identifier or name that TrustChain does not know."""


class AlgorithmMismatch(CryptoError, ValueError):
    """A key, signature or ciphertext used with an object of a different algorithm."""


class BackendUnavailable(CryptoError):
    """The requested implementation (e.g. liboqs, py-fn-dsa) is not installed on this host."""


class InvalidSignature(CryptoError):
    """A signature does not verify (for a hybrid, at least one component failed)."""


class DecryptionFailed(CryptoError):
    """Authenticated decryption failed: wrong key, tampered ciphertext, tag or associated data."""


class ReplayDetected(CryptoError):
    """A record whose sequence number was already accepted, or is too old to be checked."""


class HandshakeError(CryptoError):
    """The channel handshake failed: unexpected message, bad transcript signature or MAC."""


class UntrustedPeer(HandshakeError):
    """The peer authenticated correctly, but with an identity the caller does not accept."""


class ChannelClosed(CryptoError):
    """A secure channel was used after it was closed or after its keys were exhausted."""


# --- key store --------------------------------------------------------------------------------


class KeyStoreError(TrustChainError):
    """A key store operation failed."""


class KeyNotFound(KeyStoreError, LookupError):
    """No key (or key version) of that name or id exists in the store."""


class KeyExists(KeyStoreError):
    """A key of that name already exists; the caller must rotate it, not recreate it."""


class KeyRetired(KeyStoreError):
    """The key version is retired: it may no longer sign, verify or decrypt."""


class KeyRevoked(KeyRetired):
    """The key version was revoked (compromised): nothing made with it is trusted."""


class WrongPassphrase(KeyStoreError):
    """The passphrase (or key file) does not open this key store."""


class KeyStoreCorrupted(KeyStoreError):
    """The store's contents fail their integrity checks."""


# --- certificates -----------------------------------------------------------------------------


class ClassicalSignatureInvalid(InvalidSignature):
    """A hybrid certificate's or CRL's classical (Ed25519) X.509 signature does not verify."""


class AltSignatureInvalid(InvalidSignature):
    """A hybrid certificate's or CRL's alternative (Falcon-1024) signature does not verify."""


# --- transparency log -------------------------------------------------------------------------


class ProofError(TrustChainError):
    """A Merkle tree proof (RFC 9162 section 2.1) is invalid or cannot exist."""


class InclusionProofError(ProofError):
    """An inclusion proof does not prove the leaf at that index in a tree of that size and root."""


class ConsistencyProofError(ProofError):
    """A consistency proof does not prove that the second tree head extends the first."""


class ProofRequestError(ProofError, ValueError):
    """A proof was asked for that cannot exist: a leaf index at or beyond the tree size, a first
    size above the second, or a tree size beyond what the log holds."""


class LogError(TrustChainError):
    """A transparency log operation failed (wrong key, no log, log opened without its key)."""


class LogEntryNotFound(LogError, LookupError):
    """No log entry has that index or leaf hash."""


class LogCorrupted(LogError):
    """The log database fails its consistency checks (missing or wrong stored hashes)."""


# --- certificate authority --------------------------------------------------------------------


class CaError(TrustChainError):
    """The certificate authority refused or failed an operation."""


class InvalidCertificateRequest(CaError, ValueError):
    """A request the CA refuses: a malformed name, a kind its issuer may not issue, a bad
    validity, an exhausted path length, an unsupported revocation reason."""


class NameOutsideNamespace(InvalidCertificateRequest):
    """A requested name (DNS name, IP address) lies outside the issuing CA's namespace."""


class CaNotFound(CaError, LookupError):
    """No certificate authority of that name exists."""


class CaExists(CaError):
    """A certificate authority of that name already exists."""


class CertificateNotFound(CaError, LookupError):
    """No certificate with that serial number was issued by this CA."""


class AlreadyRevoked(CaError):
    """The certificate is already revoked."""


class CaStoreCorrupted(CaError):
    """The CA database's contents are inconsistent (unreadable rows, a certificate that does not
    match its row)."""


# --- certificate path validation and trust stores ---------------------------------------------


class RejectionReason(enum.IntEnum):
    """Why :func:`trustchain.ca.validation.validate` rejected a certificate chain.

    Members named like a ``hypermesh.v1.RejectionReason`` code have that code's number. The
    finer TrustChain reasons (numbered from 101) each report as one of those codes on the wire:
    :attr:`proto_code` gives it.
    """

    #: A required part is absent: an empty chain.
    MISSING = 1
    #: A certificate (or one of its extensions) does not decode.
    MALFORMED = 2
    #: A signature algorithm other than Ed25519 (classical) / Falcon-1024 (alternative).
    UNSUPPORTED_ALGORITHM = 3
    #: A signature does not verify (no finer reason applies).
    INVALID_SIGNATURE = 4
    #: A certificate's notAfter (plus the allowed clock skew) is in the past.
    EXPIRED = 9
    #: A certificate is listed on its issuer's CRL.
    REVOKED = 10
    #: No path from the leaf to a configured trust anchor.
    UNTRUSTED_ROOT = 11
    #: The leaf does not name the expected identity (DNS name, IP, URI, peer id), or its
    #: self-certifying ``hypermesh://node/<key id>`` URI names another key.
    IDENTITY_MISMATCH = 12

    #: The issuer's classical (Ed25519) signature does not verify.
    CLASSICAL_SIGNATURE_INVALID = 101
    #: The issuer's alternative (Falcon-1024) signature does not verify.
    ALT_SIGNATURE_INVALID = 102
    #: The subjectKeyIdentifier does not name the certificate's hybrid key: one of the two
    #: key halves (in practice the alternative key) was swapped.
    ALT_KEY_MISMATCH = 103
    #: A certificate's notBefore (minus the allowed clock skew) is in the future.
    NOT_YET_VALID = 104
    #: A certificate that issued another is not a CA (basicConstraints cA absent or false).
    NOT_A_CA = 105
    #: More CA certificates below a CA than its pathLenConstraint (or the anchor's
    #: max_chain_length) allows.
    PATH_LENGTH_EXCEEDED = 106
    #: keyUsage forbids the use: an issuer without keyCertSign, a TLS leaf without
    #: digitalSignature.
    KEY_USAGE_MISMATCH = 107
    #: extKeyUsage (of the leaf or of a CA above it, or the anchor's allowed EKUs) does not
    #: allow the requested purpose.
    PURPOSE_MISMATCH = 108
    #: A name of a certificate lies outside a CA's permitted subtrees or inside its excluded ones.
    NAME_CONSTRAINTS_VIOLATED = 109
    #: A critical extension TrustChain does not process.
    UNSUPPORTED_CRITICAL_EXTENSION = 110
    #: The policy requires revocation information and no current CRL covers a certificate.
    REVOCATION_UNKNOWN = 111
    #: The policy requires a signed certificate timestamp and the leaf carries none.
    SCT_MISSING = 112
    #: An SCT from a trusted log does not verify, or commits to another certificate.
    SCT_INVALID = 113
    #: The policy requires an SCT and the leaf's SCTs are all from logs the store does not trust.
    SCT_UNTRUSTED_LOG = 114

    @property
    def proto_code(self) -> int:
        """The ``hypermesh.v1.RejectionReason`` number this reason reports as."""
        return _REJECTION_PROTO_CODE.get(self, int(self))


# hypermesh.v1.RejectionReason numbers (shared/interfaces/proto/hypermesh/v1/common.proto).
_MISSING, _MALFORMED, _UNSUPPORTED_ALGORITHM, _INVALID_SIGNATURE = 1, 2, 3, 4
_VERIFICATION_FAILED, _EXPIRED, _UNTRUSTED_ROOT, _IDENTITY_MISMATCH = 5, 9, 11, 12

_REJECTION_PROTO_CODE: dict[RejectionReason, int] = {
    RejectionReason.CLASSICAL_SIGNATURE_INVALID: _INVALID_SIGNATURE,
    RejectionReason.ALT_SIGNATURE_INVALID: _INVALID_SIGNATURE,
    RejectionReason.ALT_KEY_MISMATCH: _INVALID_SIGNATURE,
    RejectionReason.NOT_YET_VALID: _EXPIRED,
    RejectionReason.NOT_A_CA: _VERIFICATION_FAILED,
    RejectionReason.PATH_LENGTH_EXCEEDED: _VERIFICATION_FAILED,
    RejectionReason.KEY_USAGE_MISMATCH: _VERIFICATION_FAILED,
    RejectionReason.PURPOSE_MISMATCH: _VERIFICATION_FAILED,
    RejectionReason.NAME_CONSTRAINTS_VIOLATED: _VERIFICATION_FAILED,
    RejectionReason.UNSUPPORTED_CRITICAL_EXTENSION: _VERIFICATION_FAILED,
    RejectionReason.REVOCATION_UNKNOWN: _MISSING,
    RejectionReason.SCT_MISSING: _MISSING,
    RejectionReason.SCT_INVALID: _INVALID_SIGNATURE,
    RejectionReason.SCT_UNTRUSTED_LOG: _UNTRUSTED_ROOT,
}


class CertificateRejected(TrustChainError):
    """Certificate path validation failed.

    ``reason`` says why (machine-readable), ``detail`` says it for humans, ``index`` is the
    position in the presented chain (0 = leaf) of the certificate at fault, or ``None`` when
    no single presented certificate is (e.g. no path to an anchor, or a certificate found in
    the trust store). For :attr:`RejectionReason.REVOKED`, ``revocation_reason`` is the CRL
    entry's RFC 5280 reason name (``"keyCompromise"``...) or ``None`` if the entry has none.
    """

    def __init__(
        self,
        reason: RejectionReason,
        detail: str,
        index: int | None = None,
        *,
        revocation_reason: str | None = None,
    ) -> None:
        where = "" if index is None else f" (certificate {index})"
        super().__init__(f"{reason.name.lower()}{where}: {detail}")
        self.reason = reason
        self.detail = detail
        self.index = index
        self.revocation_reason = revocation_reason


class TrustStoreError(TrustChainError):
    """A trust store refused an operation."""


class AnchorExists(TrustStoreError):
    """A trust anchor of that name is already in the store."""


class AnchorNotFound(TrustStoreError, LookupError):
    """No trust anchor of that name is in the store."""


class CrlRejected(TrustStoreError):
    """A CRL the trust store will not hold: no known CA issued it, its issuer may not sign
    CRLs, it has no CRL number, or it uses a feature TrustChain does not process (delta CRLs,
    indirect CRLs, unknown critical extensions). A forged CRL raises
    :class:`ClassicalSignatureInvalid` / :class:`AltSignatureInvalid` instead."""


class StaleCrl(CrlRejected):
    """A CRL whose number is not above the one the store already holds for that issuer and
    shard (an older or replayed CRL, or a different CRL reusing a number)."""


class UnknownTrustPolicy(TrustStoreError, LookupError):
    """No trust policy (trust store) of that name is configured."""


# --- the asset ledger -------------------------------------------------------------------------


class LedgerError(TrustChainError):
    """The quorum-certified asset ledger refused or failed an operation."""


class InvalidCommittee(LedgerError, ValueError):
    """A committee description that is not usable: no members, a zero stake, duplicate or
    unsorted validator ids, a member chain that does not validate or whose leaf key is not the
    member's id."""


class UnknownValidator(LedgerError, LookupError):
    """A validator id that is not a member of the committee of that epoch."""


class InvalidVote(LedgerError):
    """A vote that does not verify: wrong sizes, a signer outside the committee, a bad batch
    inclusion proof or a signature that does not verify."""


class InvalidCertificate(LedgerError):
    """A certificate that does not prove a quorum: an invalid vote, a vote for something else,
    a validator counted twice, or less than a quorum of stake."""


class LedgerRefusal(enum.IntEnum):
    """Why a validator refused a change or certificate (``hypermesh.v1.LedgerRefusal``)."""

    MALFORMED = 1
    INVALID_PROOFS = 2
    INVALID_OWNER_SIGNATURE = 3
    CONFLICT = 4
    WRONG_VERSION = 5
    WRONG_EPOCH = 6
    INVALID_CERTIFICATE = 7
    TOO_LARGE = 8


class ChangeRefused(LedgerError):
    """A validator refused a change or certificate; ``reason`` says why.

    ``detail`` is for people; ``locked_vote`` (a ``hypermesh.v1.Vote``, with ``CONFLICT``) is
    the vote already cast for that (asset, version); ``validation`` (a
    ``hypermesh.v1.ValidationResult``, with ``INVALID_PROOFS``) lists every failed check.
    """

    def __init__(
        self,
        reason: LedgerRefusal,
        detail: str,
        *,
        locked_vote: ledger_pb2.Vote | None = None,
        validation: common_pb2.ValidationResult | None = None,
    ) -> None:
        super().__init__(f"refused ({reason.name}): {detail}")
        self.reason = reason
        self.detail = detail
        self.locked_vote = locked_vote
        self.validation = validation


class LedgerCorrupted(LedgerError):
    """The ledger database fails its checks (unreadable rows, a log that does not match its
    certificates, a state without its certificate)."""
