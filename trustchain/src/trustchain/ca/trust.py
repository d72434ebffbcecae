"""What a relying party trusts: trust levels, trust anchors with their policies, trust stores.

A :class:`TrustStore` is the input of :func:`trustchain.ca.validation.validate`. It holds

* **trust anchors** (:class:`TrustAnchor`): one per federation (a TrustChain root, a bank's or a
  DMV's own hierarchy...), each with the highest :class:`TrustLevel` it may confer and its
  :class:`TrustPolicy` (which checks are mandatory, how long a path may be, which extended key
  usages it vouches for). An anchor is trusted by configuration, as RFC 5280 §6.1.1 (d) trust
  anchor information: its subject name and hybrid key; its certificate's own signature is not
  checked, but its validity period, basic constraints and name constraints apply.
* **extra certificates** (:meth:`TrustStore.add_certificate`): intermediates and
  cross-certificates (a CA rollover's "new key certified by the old one", or one federation
  certifying another) that path building may use even when the peer does not present them.
  They are not trusted by themselves: a path through them must still end at an anchor. One
  registered with ``max_trust_level`` caps every path through it (how much a cross-certified
  federation is trusted at most, whatever its certifier's level).
* **CT log keys** (:meth:`TrustStore.add_log_key`): the transparency logs whose signed
  certificate timestamps count, by log id (:attr:`VerifyKey.key_id` of the log key, the
  ``log_id`` of :class:`~trustchain.ct.sct.SignedCertificateTimestamp`).
* **CRLs** (:meth:`TrustStore.add_crl`): accepted only when both signatures (Ed25519 and
  Falcon-1024, :func:`trustchain.ca.hybrid.verify_crl_signatures`) verify under the key of a CA
  the store knows (an anchor or an extra certificate, matched by name and key identifier), and
  kept per *(issuer key, scope)*, newest CRL number only. The scope is the CRL's
  issuingDistributionPoint (a shard, see :mod:`trustchain.ca.profiles`), or ``None`` for a full
  CRL. A CRL whose number is not above the one held raises :class:`~trustchain.errors.StaleCrl`.
  An entity CA's CRL is therefore accepted once its certificate is an extra certificate (or an
  anchor). A CRL only ever speaks for certificates its own signing key issued (see
  :mod:`trustchain.ca.validation`), so registering a certificate never lets its key revoke
  anyone else's certificates.

Key binding: a subjectKeyIdentifier, when present, must be :func:`key_identifier` of the
certificate's hybrid key (what the CA writes, :func:`trustchain.ca.profiles.key_identifier`):
it names both key halves, so a swapped alternative key is detected before any signature check.

A store is mutable and thread-safe (one lock around every change); validation works on an
immutable :class:`StoreSnapshot`, so a CRL or anchor change never affects a validation already
running.

Certificates are described by :class:`CertificateFacts`, parsed once: a certificate whose
extensions ``cryptography`` cannot decode, or whose hybrid key cannot be read, raises
:class:`~trustchain.errors.MalformedData`.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID

from trustchain.ca import embedded_sct, hybrid, oids
from trustchain.crypto.signatures import VerifyKey
from trustchain.errors import (
    AlgorithmMismatch,
    AnchorExists,
    AnchorNotFound,
    CrlRejected,
    InvalidSignature,
    MalformedData,
    StaleCrl,
    UnknownAlgorithm,
)

__all__ = [
    "PARSE_ERRORS",
    "PROCESSED_CERTIFICATE_EXTENSIONS",
    "CertificateFacts",
    "CrlRecord",
    "RegisteredCertificate",
    "StoreSnapshot",
    "TrustAnchor",
    "TrustLevel",
    "TrustPolicy",
    "TrustStore",
    "key_identifier",
]


class TrustLevel(enum.IntEnum):
    """How far a chain is trusted; the values of ``hypermesh.v1.TrustLevel`` (common.proto).

    Ordered: a higher value is more trust, so ``min`` combines limits.
    """

    #: Not trusted (validation failed or was not done). Never in a successful report.
    UNTRUSTED = 0
    #: Signatures and validity check, but the chain ends in a self-signed certificate that is
    #: not a trust anchor (only with ``validate(..., allow_self_asserted=True)``).
    SELF_ASSERTED = 1
    #: Chains to an anchor, but a check the policy does not require could not be confirmed.
    PARTIAL = 2
    #: Chains to an anchor and every check passed.
    FULL = 3


#: What ``cryptography`` raises for certificate contents it cannot decode (the x509 exception
#: classes are not ``ValueError`` subclasses). Converted to :class:`MalformedData`.
PARSE_ERRORS: Final = (
    ValueError,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    x509.InvalidVersion,
    # cryptography raises TypeError for a nameConstraints iPAddress subtree that holds an
    # address (4 or 16 bytes) instead of an address and mask.
    TypeError,
)

#: Extensions whose semantics validation implements (a critical extension outside this set
#: rejects the certificate). The three ITU-T X.509 alternative-key extensions are processed
#: by :mod:`trustchain.ca.hybrid`, the embedded SCT list (:mod:`trustchain.ca.embedded_sct`)
#: by :mod:`trustchain.ca.validation`.
PROCESSED_CERTIFICATE_EXTENSIONS: Final = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.NAME_CONSTRAINTS,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.CRL_DISTRIBUTION_POINTS,
        embedded_sct.EMBEDDED_SCT_LIST,
        oids.SUBJECT_ALT_PUBLIC_KEY_INFO,
        oids.ALT_SIGNATURE_ALGORITHM,
        oids.ALT_SIGNATURE_VALUE,
    }
)

#: CRL extensions :meth:`TrustStore.add_crl` understands (others must be non-critical).
_PROCESSED_CRL_EXTENSIONS: Final = frozenset(
    {
        ExtensionOID.CRL_NUMBER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.ISSUING_DISTRIBUTION_POINT,
        oids.ALT_SIGNATURE_ALGORITHM,
        oids.ALT_SIGNATURE_VALUE,
    }
)
#: CRL entry extensions understood (others must be non-critical).
_PROCESSED_ENTRY_EXTENSIONS: Final = frozenset(
    {x509.oid.CRLEntryExtensionOID.CRL_REASON, x509.oid.CRLEntryExtensionOID.INVALIDITY_DATE}
)

#: Length of a key identifier (RFC 7093 §2 method 1: SHA-256 truncated to 160 bits).
KEY_IDENTIFIER_SIZE: Final = 20


def key_identifier(key: VerifyKey) -> bytes:
    """The key identifier of a hybrid key: the first 160 bits of its key id.

    This is what TrustChain writes as subjectKeyIdentifier (see :mod:`trustchain.ca.profiles`):
    it names both key halves, so a certificate whose alternative key was swapped no longer
    matches its own identifier.
    """
    return key.key_id[:KEY_IDENTIFIER_SIZE]


# --- certificate facts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateFacts:
    """Everything path validation reads from one certificate, decoded once.

    Optional extensions are ``None`` when absent. ``der`` is the certificate's encoding
    (certificates are compared by it), ``key`` its subject's hybrid key.
    """

    certificate: x509.Certificate
    der: bytes
    subject: x509.Name
    issuer: x509.Name
    serial_number: int
    not_before: datetime
    not_after: datetime
    key: VerifyKey
    subject_key_identifier: bytes | None
    authority_key_identifier: bytes | None
    basic_constraints: x509.BasicConstraints | None
    key_usage: x509.KeyUsage | None
    extended_key_usage: frozenset[x509.ObjectIdentifier] | None
    subject_alt_names: tuple[x509.GeneralName, ...] | None
    name_constraints: x509.NameConstraints | None
    crl_distribution_points: tuple[x509.DistributionPoint, ...] | None
    unprocessed_critical: tuple[x509.ObjectIdentifier, ...]

    @classmethod
    def of(cls, certificate: x509.Certificate) -> CertificateFacts:
        """Decode ``certificate``; :class:`MalformedData` for anything that does not decode.

        Also :class:`MalformedData` for a version other than 3, a hybrid key that cannot be
        read (no or bad subjectAltPublicKeyInfo, a non-Ed25519 subjectPublicKeyInfo).
        """
        try:
            return cls._decode(certificate)
        except PARSE_ERRORS as exc:
            raise MalformedData(f"certificate does not decode: {exc}") from exc
        except (AlgorithmMismatch, UnknownAlgorithm) as exc:
            raise MalformedData(f"certificate key is not a hybrid key: {exc}") from exc

    @classmethod
    def _decode(cls, certificate: x509.Certificate) -> CertificateFacts:
        if certificate.version is not x509.Version.v3:
            raise MalformedData(f"certificate version {certificate.version.name}, expected v3")
        key = hybrid.certificate_public_key(certificate)
        extensions = certificate.extensions
        values: dict[x509.ObjectIdentifier, x509.ExtensionType] = {}
        critical: list[x509.ObjectIdentifier] = []
        for extension in extensions:
            values[extension.oid] = extension.value
            if extension.critical and extension.oid not in PROCESSED_CERTIFICATE_EXTENSIONS:
                critical.append(extension.oid)
        ski = values.get(ExtensionOID.SUBJECT_KEY_IDENTIFIER)
        aki = values.get(ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
        eku = values.get(ExtensionOID.EXTENDED_KEY_USAGE)
        san = values.get(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        crl_dp = values.get(ExtensionOID.CRL_DISTRIBUTION_POINTS)
        basic = values.get(ExtensionOID.BASIC_CONSTRAINTS)
        usage = values.get(ExtensionOID.KEY_USAGE)
        constraints = values.get(ExtensionOID.NAME_CONSTRAINTS)
        return cls(
            certificate=certificate,
            der=certificate.public_bytes(Encoding.DER),
            subject=certificate.subject,
            issuer=certificate.issuer,
            serial_number=certificate.serial_number,
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            key=key,
            subject_key_identifier=(
                ski.digest if isinstance(ski, x509.SubjectKeyIdentifier) else None
            ),
            authority_key_identifier=(
                aki.key_identifier if isinstance(aki, x509.AuthorityKeyIdentifier) else None
            ),
            basic_constraints=basic if isinstance(basic, x509.BasicConstraints) else None,
            key_usage=usage if isinstance(usage, x509.KeyUsage) else None,
            extended_key_usage=(frozenset(eku) if isinstance(eku, x509.ExtendedKeyUsage) else None),
            subject_alt_names=(
                tuple(san) if isinstance(san, x509.SubjectAlternativeName) else None
            ),
            name_constraints=(
                constraints if isinstance(constraints, x509.NameConstraints) else None
            ),
            crl_distribution_points=(
                tuple(crl_dp) if isinstance(crl_dp, x509.CRLDistributionPoints) else None
            ),
            unprocessed_critical=tuple(critical),
        )

    @property
    def key_id(self) -> bytes:
        """The subject key's id (SHA-256 of its envelope; a node's id)."""
        return self.key.key_id

    @property
    def is_ca(self) -> bool:
        """basicConstraints with cA true."""
        return self.basic_constraints is not None and self.basic_constraints.ca

    @property
    def self_issued(self) -> bool:
        """Subject and issuer names are equal (RFC 5280 §6.1: a root, or a rollover
        cross-certificate)."""
        return self.subject == self.issuer

    @property
    def key_identifier_matches(self) -> bool:
        """No subjectKeyIdentifier, or one naming this certificate's hybrid key."""
        ski = self.subject_key_identifier
        return ski is None or ski == key_identifier(self.key)

    def names_identity(self, subject: x509.Name, key_id: bytes) -> bool:
        """Whether this certificate certifies ``key_id`` under the name ``subject``."""
        return self.subject == subject and self.key_id == key_id


def _check_key_binding(facts: CertificateFacts) -> None:
    if not facts.key_identifier_matches:
        raise MalformedData(
            "subjectKeyIdentifier does not name the certificate's hybrid key "
            "(an alternative key swapped?)"
        )


# --- anchors and policy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustPolicy:
    """What an anchor demands of the paths that end at it.

    * ``require_sct``: the leaf must carry a valid SCT from a log the store trusts; without
      one it is rejected (otherwise a missing or unverifiable SCT caps the level at PARTIAL).
    * ``require_revocation_info``: every certificate below the anchor must be covered by a
      current CRL of its issuer; otherwise it is rejected (otherwise: capped at PARTIAL).
    * ``max_chain_length``: at most this many certificates from the leaf up to and including
      the anchor (``None``: only the certificates' own pathLenConstraints limit it).
    * ``allowed_ekus``: the extended key usages this anchor vouches for (``None``: any). The
      requested purpose's EKU must be one of them, and the leaf's EKUs must include one.
    """

    require_sct: bool = False
    require_revocation_info: bool = False
    max_chain_length: int | None = None
    allowed_ekus: frozenset[x509.ObjectIdentifier] | None = None

    def __post_init__(self) -> None:
        if self.max_chain_length is not None and self.max_chain_length < 1:
            raise ValueError(f"max_chain_length must be at least 1, got {self.max_chain_length}")


@dataclass(frozen=True)
class TrustAnchor:
    """A federation's root of trust: a certificate, a name, the most trust it may confer and
    its policy. ``name`` identifies the anchor in the store and in validation reports.

    Constructing one decodes the certificate (:class:`MalformedData` if it does not, or if its
    subjectKeyIdentifier does not name its hybrid key).
    """

    certificate: x509.Certificate
    name: str
    max_trust_level: TrustLevel = TrustLevel.FULL
    policy: TrustPolicy = field(default_factory=TrustPolicy)
    facts: CertificateFacts = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a trust anchor needs a name")
        if self.max_trust_level < TrustLevel.PARTIAL:
            raise ValueError(
                f"an anchor must confer at least PARTIAL trust, got {self.max_trust_level.name}"
            )
        facts = CertificateFacts.of(self.certificate)
        _check_key_binding(facts)
        object.__setattr__(self, "facts", facts)


# --- CRLs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrlRecord:
    """A CRL the store accepted, with what validation needs from it.

    ``issuer_key_id`` is the key id of the CA key both signatures verified under; ``scope`` the
    CRL's issuingDistributionPoint (``None``: a full CRL); ``revoked`` maps serial numbers to
    the RFC 5280 reason name of the entry (``None`` if the entry gives none).
    """

    crl: x509.CertificateRevocationList
    der: bytes
    issuer: x509.Name
    issuer_key_id: bytes
    number: int
    scope: x509.IssuingDistributionPoint | None
    this_update: datetime
    next_update: datetime | None
    revoked: Mapping[int, str | None]

    def covers(self, facts: CertificateFacts) -> bool:
        """Whether this CRL's scope includes ``facts`` (RFC 5280 §6.3.3 (b), for the
        issuingDistributionPoint forms TrustChain uses: full names and the only-user /
        only-CA flags; a CRL limited to some reasons never establishes a status)."""
        scope = self.scope
        if scope is None:
            return True
        if scope.only_some_reasons is not None:
            return False
        if scope.only_contains_user_certs and facts.is_ca:
            return False
        if scope.only_contains_ca_certs and not facts.is_ca:
            return False
        if scope.full_name is None and scope.relative_name is None:
            return True
        for point in facts.crl_distribution_points or ():
            if scope.full_name is not None and point.full_name is not None:
                if set(scope.full_name) & set(point.full_name):
                    return True
            elif scope.relative_name is not None and point.relative_name == scope.relative_name:
                return True
        return False

    def current_at(self, at: datetime, skew: timedelta = timedelta(0)) -> bool:
        """Whether ``at`` lies in [thisUpdate - skew, nextUpdate + skew] (no nextUpdate: from
        thisUpdate on)."""
        if at + skew < self.this_update:
            return False
        return self.next_update is None or at - skew <= self.next_update


def _reason_name(flag: x509.ReasonFlags) -> str:
    """RFC 5280 spelling of a CRL reason (``keyCompromise``...)."""
    return str(flag.value)


def _crl_record(crl: x509.CertificateRevocationList, issuer_key_id: bytes) -> CrlRecord:
    try:
        extensions = crl.extensions
        number: int | None = None
        scope: x509.IssuingDistributionPoint | None = None
        for extension in extensions:
            value = extension.value
            if isinstance(value, x509.DeltaCRLIndicator):
                raise CrlRejected("delta CRLs are not supported")
            if isinstance(value, x509.CRLNumber):
                number = value.crl_number
            elif isinstance(value, x509.IssuingDistributionPoint):
                if value.indirect_crl:
                    raise CrlRejected("indirect CRLs are not supported")
                scope = value
            elif extension.critical and extension.oid not in _PROCESSED_CRL_EXTENSIONS:
                raise CrlRejected(
                    f"unsupported critical CRL extension {extension.oid.dotted_string}"
                )
        if number is None:
            raise CrlRejected("the CRL has no CRL number")
        revoked: dict[int, str | None] = {}
        for entry in crl:
            reason: str | None = None
            for entry_extension in entry.extensions:
                entry_value = entry_extension.value
                if isinstance(entry_value, x509.CRLReason):
                    reason = _reason_name(entry_value.reason)
                elif (
                    entry_extension.critical
                    and entry_extension.oid not in _PROCESSED_ENTRY_EXTENSIONS
                ):
                    raise CrlRejected(
                        "unsupported critical CRL entry extension "
                        f"{entry_extension.oid.dotted_string}"
                    )
            if reason == x509.ReasonFlags.remove_from_crl.value:
                continue
            revoked[entry.serial_number] = reason
        this_update = crl.last_update_utc
        next_update = crl.next_update_utc
        issuer = crl.issuer
        der = crl.public_bytes(Encoding.DER)
    except PARSE_ERRORS as exc:
        raise MalformedData(f"CRL does not decode: {exc}") from exc
    if next_update is not None and next_update < this_update:
        raise CrlRejected("the CRL's nextUpdate is before its thisUpdate")
    return CrlRecord(
        crl=crl,
        der=der,
        issuer=issuer,
        issuer_key_id=issuer_key_id,
        number=number,
        scope=scope,
        this_update=this_update,
        next_update=next_update,
        revoked=MappingProxyType(revoked),
    )


# --- the store ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisteredCertificate:
    """An extra certificate of the store (intermediate or cross-certificate) and the most trust
    a path through it may have."""

    facts: CertificateFacts
    max_trust_level: TrustLevel


@dataclass(frozen=True)
class StoreSnapshot:
    """An immutable view of a :class:`TrustStore` at one moment (what validation reads)."""

    anchors: tuple[TrustAnchor, ...]
    certificates: tuple[RegisteredCertificate, ...]
    log_keys: Mapping[bytes, VerifyKey]
    crls: Mapping[bytes, tuple[CrlRecord, ...]]

    def crls_of(self, issuer_key_id: bytes) -> tuple[CrlRecord, ...]:
        """Every CRL held from the CA key ``issuer_key_id``."""
        return self.crls.get(issuer_key_id, ())


class TrustStore:
    """Trust anchors, extra certificates, CT log keys and CRLs (see the module docs)."""

    def __init__(
        self,
        anchors: Iterable[TrustAnchor] = (),
        *,
        certificates: Iterable[x509.Certificate] = (),
        log_keys: Iterable[VerifyKey] = (),
    ) -> None:
        self._lock = threading.RLock()
        self._anchors: dict[str, TrustAnchor] = {}
        self._certificates: dict[bytes, RegisteredCertificate] = {}
        self._log_keys: dict[bytes, VerifyKey] = {}
        self._crls: dict[tuple[bytes, x509.IssuingDistributionPoint | None], CrlRecord] = {}
        for anchor in anchors:
            self.add_anchor(anchor)
        for certificate in certificates:
            self.add_certificate(certificate)
        for key in log_keys:
            self.add_log_key(key)

    # anchors

    @property
    def anchors(self) -> tuple[TrustAnchor, ...]:
        """The anchors, in the order they were added."""
        with self._lock:
            return tuple(self._anchors.values())

    def add_anchor(self, anchor: TrustAnchor) -> None:
        """Trust ``anchor``; :class:`AnchorExists` if one of that name is present."""
        with self._lock:
            if anchor.name in self._anchors:
                raise AnchorExists(f"a trust anchor named {anchor.name!r} is already present")
            self._anchors[anchor.name] = anchor

    def anchor(self, name: str) -> TrustAnchor:
        """The anchor called ``name``; :class:`AnchorNotFound` if none."""
        with self._lock:
            try:
                return self._anchors[name]
            except KeyError:
                raise AnchorNotFound(f"no trust anchor named {name!r}") from None

    def remove_anchor(self, name: str) -> TrustAnchor:
        """Stop trusting the anchor ``name`` (e.g. a retired root); returns it.

        :class:`AnchorNotFound` if there is none. CRLs it issued stay (they only ever matter
        for paths that reach a trusted key).
        """
        with self._lock:
            try:
                return self._anchors.pop(name)
            except KeyError:
                raise AnchorNotFound(f"no trust anchor named {name!r}") from None

    # extra certificates

    @property
    def certificates(self) -> tuple[x509.Certificate, ...]:
        """The extra (non-anchor) certificates."""
        with self._lock:
            return tuple(entry.facts.certificate for entry in self._certificates.values())

    def add_certificate(
        self, certificate: x509.Certificate, *, max_trust_level: TrustLevel = TrustLevel.FULL
    ) -> None:
        """Make ``certificate`` (an intermediate or cross-certificate) available to path
        building; every path through it is trusted at most ``max_trust_level``.

        Adding a certificate again replaces its ``max_trust_level``. :class:`MalformedData` if
        it does not decode or its subjectKeyIdentifier does not name its hybrid key.
        """
        facts = CertificateFacts.of(certificate)
        _check_key_binding(facts)
        with self._lock:
            self._certificates[facts.der] = RegisteredCertificate(facts, max_trust_level)

    def remove_certificate(self, certificate: x509.Certificate) -> None:
        """Forget an extra certificate (nothing happens if it is not present)."""
        with self._lock:
            self._certificates.pop(certificate.public_bytes(Encoding.DER), None)

    # CT logs

    @property
    def log_keys(self) -> Mapping[bytes, VerifyKey]:
        """Trusted CT log keys by log id."""
        with self._lock:
            return MappingProxyType(dict(self._log_keys))

    def add_log_key(self, key: VerifyKey) -> bytes:
        """Trust the transparency log with public key ``key``; returns its log id."""
        with self._lock:
            self._log_keys[key.key_id] = key
        return key.key_id

    def remove_log_key(self, log_id: bytes) -> None:
        """Stop trusting a log (nothing happens if it is not trusted)."""
        with self._lock:
            self._log_keys.pop(bytes(log_id), None)

    # CRLs

    @property
    def crls(self) -> tuple[CrlRecord, ...]:
        """The CRLs held (the newest per issuer key and scope)."""
        with self._lock:
            return tuple(self._crls.values())

    def add_crl(self, crl: x509.CertificateRevocationList) -> CrlRecord:
        """Accept ``crl`` if a known CA signed it and it is newer than what is held.

        The issuer is looked up among the anchors and extra certificates by name (and by key
        identifier when the CRL has an authorityKeyIdentifier); both CRL signatures must verify
        under its hybrid key, and its keyUsage (if any) must allow cRLSign. Raises
        :class:`CrlRejected` (no known issuer, not allowed to sign CRLs, no CRL number,
        unsupported features), :class:`MalformedData`, the signature errors of
        :func:`trustchain.ca.hybrid.verify_crl_signatures` for a forged CRL, and
        :class:`StaleCrl` for a CRL whose number is not above the one held for the same
        issuer key and scope (adding the very same CRL again is a no-op).
        """
        try:
            issuer_name = crl.issuer
            aki_extension = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
            aki: bytes | None = aki_extension.value.key_identifier
        except x509.ExtensionNotFound:
            aki = None
        except PARSE_ERRORS as exc:
            raise MalformedData(f"CRL does not decode: {exc}") from exc
        issuer = self._crl_issuer(crl, issuer_name, aki)
        record = _crl_record(crl, issuer.key_id)
        slot = (issuer.key_id, record.scope)
        with self._lock:
            held = self._crls.get(slot)
            if held is not None:
                if held.der == record.der:
                    return held
                if record.number <= held.number:
                    raise StaleCrl(
                        f"CRL number {record.number} is not above the held CRL number "
                        f"{held.number} for this issuer and scope"
                    )
            self._crls[slot] = record
        return record

    def _crl_issuer(
        self,
        crl: x509.CertificateRevocationList,
        issuer_name: x509.Name,
        aki: bytes | None,
    ) -> CertificateFacts:
        with self._lock:
            known = [anchor.facts for anchor in self._anchors.values()]
            known += [entry.facts for entry in self._certificates.values()]
        candidates: dict[bytes, CertificateFacts] = {}
        for facts in known:
            if facts.subject != issuer_name:
                continue
            if aki is not None and facts.subject_key_identifier not in (None, aki):
                continue
            candidates.setdefault(facts.key_id, facts)
        if not candidates:
            raise CrlRejected(
                f"no known CA named {issuer_name.rfc4514_string()!r} to check the CRL"
            )
        failure: Exception | None = None
        for facts in candidates.values():
            try:
                hybrid.verify_crl_signatures(crl, facts.key)
            except (InvalidSignature, MalformedData, AlgorithmMismatch) as exc:
                failure = failure or exc
                continue
            if facts.key_usage is not None and not facts.key_usage.crl_sign:
                raise CrlRejected("the CRL's issuer certificate does not allow cRLSign")
            return facts
        assert failure is not None
        raise failure

    # snapshot

    def snapshot(self) -> StoreSnapshot:
        """An immutable view of the current contents."""
        with self._lock:
            crls: dict[bytes, list[CrlRecord]] = {}
            for (key_id, _), record in self._crls.items():
                crls.setdefault(key_id, []).append(record)
            return StoreSnapshot(
                anchors=tuple(self._anchors.values()),
                certificates=tuple(self._certificates.values()),
                log_keys=MappingProxyType(dict(self._log_keys)),
                crls=MappingProxyType({key: tuple(value) for key, value in crls.items()}),
            )
