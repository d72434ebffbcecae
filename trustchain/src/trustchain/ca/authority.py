"""The TrustChain certificate authority: issuing, renewing, revoking, rolling CA keys over.

One :class:`CertificateAuthority` manages one hierarchy in a TrustChain home: a root CA,
intermediate (entity) CAs each confined to a DNS namespace, and the node, service and asset
leaves they issue (profiles: :mod:`trustchain.ca.profiles`). Every certificate is a hybrid
Ed25519 + Falcon-1024 certificate (:mod:`trustchain.ca.hybrid`), recorded in ``HOME/ca/ca.db``
(:mod:`trustchain.ca.store`), with its CA's private key in the key store under ``ca/<name>``.
When a transparency log is configured, every certificate -- CA, cross and leaf certificates
alike -- is logged before it is signed and carries its SCT (:mod:`trustchain.ca.embedded_sct`).

Rules the CA enforces (it never issues what it knows a validator would reject)
==============================================================================

* The root issues CA certificates only; leaves come from intermediates.
* A leaf's names (its CN, which is a DNS name, and every DNS SAN) lie in its issuer's namespace,
  IP addresses in its issuer's ranges when it has any (:class:`NameOutsideNamespace`
  otherwise). An intermediate's namespace lies in its parent's, its IP ranges in the parent's.
* Path lengths: a CA with ``pathLenConstraint`` n issues CA certificates with a smaller one (a
  CA with 0 issues leaves only).
* Nothing outlives its issuer: ``notAfter`` is truncated to the issuing certificate's. A CA whose
  current certificate is revoked or expired issues nothing.
* Leaves live at most :data:`~trustchain.ca.profiles.MAX_LEAF_VALIDITY` (default 24 h).

Serials, shards, CRLs
=====================

Serials are random 159-bit positive integers, reserved in the database before signing
(:meth:`CaStore.reserve_serial`). A leaf belongs to CRL shard ``serial mod N`` (N per CA,
default 4) and its cRLDistributionPoints names that shard; CA certificates appear on the
issuer's full CRL only. :meth:`CertificateAuthority.crl` produces the full CRL (no
issuingDistributionPoint: it covers everything the CA issued) or one shard's CRL (a critical
issuingDistributionPoint with the shard's URI and onlyContainsUserCerts), both signed with
both halves of the CA key, with a CRL number that increases per (CA, scope), thisUpdate = now
and nextUpdate = now + ``crl_validity`` (default 1 h). Each entry carries its reasonCode unless
the reason is ``unspecified`` (RFC 5280 §5.3.1: then the extension SHOULD be absent). Entries
stay listed until :data:`EXPIRED_ENTRY_RETENTION` after the certificate expired, so each appears
on at least one CRL issued after its expiry (RFC 5280 §3.3). The reasons ``certificateHold``
and ``removeFromCRL`` are refused: TrustChain revocations are final.

Revoking with ``keyCompromise`` revokes every valid certificate of the same subject key (not a
root's self-signed one) and, when the CA holds the key, revokes it in the key store too.

Renewal
=======

:meth:`CertificateAuthority.renew` issues a new leaf for the same subject (kind, name, DNS
names, IP addresses; a service's or asset's id is kept) from the issuer's *current* key, with a
fresh validity of the same length. With ``rekey`` (the default) the subject gets a new key: the
key-store key ``leaf/<name>`` is rotated, or the caller supplies ``subject_key``. A node's id is
its key id, so re-keying a node changes its ``hypermesh://node/`` URI. The old certificate stays
valid until it expires unless revoked.

CA key rollover
===============

:meth:`CertificateAuthority.rollover` rotates ``ca/<name>`` in the key store and

* root: issues a new self-signed root certificate (same subject, new key) and a
  **cross-certificate** of the new key signed by the old one (RFC 4210 §4.4's "new with old"),
  so relying parties that still hold only the old root validate new chains; and re-certifies
  every subordinate CA's non-retired keys under the new root key (same subject, key and
  extensions, validity up to the old certificate's end), so chains issued before the rollover
  also validate against the new root alone;
* intermediate: has its parent certify the new key (the new CA certificate, with validity
  overlapping the old one's) and re-certifies its own subordinate CAs under the new key.

From then on the CA issues with its new key; certificates issued under the old key stay valid
and :meth:`export_root` returns both roots. :meth:`retire` ends the overlap: the old key is
retired in the key store (no longer usable), a root's old certificate stops being exported as an
anchor and its cross-certificate stops being offered in chains, and an intermediate's old
certificates are revoked (``superseded``) on the parent's CRL -- so certificates issued under
the retired key stop validating, while those issued or re-certified under the new key validate.

Chains
======

:meth:`CertificateAuthority.chain_for` (and :attr:`Issued.chain`) lists the issuer
certificates from the certificate's issuer upwards, excluding the self-signed root. For each
issuer key it picks the valid certificate issued by its parent's current key (else any valid
one, newest first). When the chain reaches a root key that has a non-retired predecessor, the
cross-certificate(s) from the predecessor are appended: the chain then validates against the
old root as well as the new one.

Crash safety
============

Each database change is one transaction. Key-store changes happen first (a fresh key version is
created before anything is signed with it; the CA signs with explicit key versions recorded in
the database), so a crash in between leaves at most an unused key version, never a CA that
points at a key it does not have. Log entries are appended before the database write: a crash
in between leaves a logged certificate that was never handed out, as an RFC 6962 precertificate
may be.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from trustchain.ca import embedded_sct, hybrid, oids, profiles
from trustchain.ca.profiles import (
    DEFAULT_CRL_BASE_URI,
    DEFAULT_CRL_SHARDS,
    DEFAULT_CRL_VALIDITY,
    DEFAULT_INTERMEDIATE_PATH_LENGTH,
    DEFAULT_INTERMEDIATE_VALIDITY,
    DEFAULT_LEAF_VALIDITY,
    DEFAULT_ROOT_VALIDITY,
    LEAF_KINDS,
    MAX_LEAF_VALIDITY,
    CertificateKind,
    ExtensionSpec,
    IpNetwork,
    LeafNames,
)
from trustchain.ca.store import (
    CaKeyRecord,
    CaKeyStatus,
    CaRecord,
    CaStore,
    CertificateRecord,
    CertificateStatus,
)
from trustchain.crypto.algorithms import SignatureAlgorithm
from trustchain.crypto.keystore import KeyInfo, KeyStatus, KeyStore
from trustchain.crypto.signatures import SigningKey, VerifyKey
from trustchain.ct.log import TransparencyLog
from trustchain.errors import (
    AlgorithmMismatch,
    CaError,
    CaExists,
    CaNotFound,
    CaStoreCorrupted,
    InvalidCertificateRequest,
    KeyExists,
    NameOutsideNamespace,
)

__all__ = [
    "EXPIRED_ENTRY_RETENTION",
    "ROOT",
    "CertificateAuthority",
    "Issued",
    "ca_key_name",
    "leaf_key_name",
]

#: ``issuer=ROOT`` (the default) means "the root CA" wherever an issuer is named.
ROOT: Final = None
#: Revoked certificates stay on CRLs for this long after they expire.
EXPIRED_ENTRY_RETENTION: Final = timedelta(days=7)
#: Reasons a TrustChain revocation may not have (they make a revocation reversible).
_REFUSED_REASONS: Final = frozenset(
    {x509.ReasonFlags.certificate_hold, x509.ReasonFlags.remove_from_crl}
)
_HYBRID: Final = SignatureAlgorithm.HYBRID_ED25519_FALCON_1024
_MAX_KEY_NAME: Final = 128


def ca_key_name(name: str) -> str:
    """The key-store name of CA ``name``'s key."""
    return f"ca/{name}"


def leaf_key_name(name: str) -> str:
    """The key-store name of a leaf key the CA generated for leaf ``name``."""
    return f"leaf/{name}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Issued:
    """A freshly issued certificate.

    ``chain``: the issuer certificates, the issuer first, up to but excluding the self-signed
    root (see "Chains" in the module docs). ``key_name`` / ``key_version``: where the key store
    holds the subject's private key, or None when the subject key came from outside.
    ``cross_certificate``: after a root rollover, the new root key certified by the old one.
    """

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    serial: int
    key_name: str | None
    key_version: int | None = None
    cross_certificate: x509.Certificate | None = None

    def pem(self) -> bytes:
        """The certificate then its chain, PEM-encoded (what a TLS server presents)."""
        return b"".join(c.public_bytes(Encoding.PEM) for c in (self.certificate, *self.chain))


@dataclass(frozen=True)
class _Issuer:
    """A CA ready to sign: its record, current key and certificate."""

    ca: CaRecord
    key: CaKeyRecord
    signing_key: SigningKey
    record: CertificateRecord
    certificate: x509.Certificate

    @property
    def public_key(self) -> VerifyKey:
        return self.signing_key.public_key()


class CertificateAuthority:
    """The CA of one TrustChain home (see the module docs).

    ``keystore`` holds the CA keys (it must be unlocked for anything that signs); ``log``, if
    given, logs every certificate and provides its embedded SCT. ``clock`` returns the current
    time (timezone-aware); times are truncated to whole seconds, as X.509 encodes them. The CA
    owns its database connection (close the CA), not the key store or the log.
    """

    def __init__(
        self,
        home: Path | str,
        keystore: KeyStore,
        log: TransparencyLog | None = None,
        *,
        clock: Callable[[], datetime] = _utc_now,
        crl_validity: timedelta = DEFAULT_CRL_VALIDITY,
        crl_base_uri: str = DEFAULT_CRL_BASE_URI,
    ) -> None:
        if crl_validity <= timedelta(0):
            raise InvalidCertificateRequest(f"CRL validity must be positive, got {crl_validity}")
        self._home = Path(home).expanduser()
        self._keystore = keystore
        self._log = log
        self._clock = clock
        self._crl_validity = crl_validity
        self._crl_base_uri = crl_base_uri
        self._store = CaStore.open(self._home)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> CertificateAuthority:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def store(self) -> CaStore:
        """The CA database (read it; change it only through the CA)."""
        return self._store

    @property
    def keystore(self) -> KeyStore:
        return self._keystore

    @property
    def log(self) -> TransparencyLog | None:
        return self._log

    # -- CAs ----------------------------------------------------------------------------------

    def init_root(
        self,
        name: str,
        validity: timedelta = DEFAULT_ROOT_VALIDITY,
        *,
        path_length: int | None = None,
        crl_shards: int = DEFAULT_CRL_SHARDS,
    ) -> Issued:
        """Create the root CA ``name``: a fresh key ``ca/<name>`` and its self-signed
        certificate. :class:`CaExists` if this home already has a root or a CA of that name."""
        name = profiles.ca_name(name)
        _check_ca_settings(validity, path_length, crl_shards)
        if self._store.root() is not None:
            raise CaExists("this home already has a root CA")
        self._require_new_ca(name)
        key_name = ca_key_name(name)
        info = self._fresh_key(key_name)
        signing = self._keystore.signing_key(key_name, info.version)
        public = signing.public_key()
        now = self._now()
        serial = self._store.reserve_serial(now)
        subject = profiles.ca_subject(name)
        not_after = now + validity
        builder = _builder(subject, subject, serial, now, not_after)
        builder = profiles.apply(
            builder, profiles.root_profile(subject_key=public, path_length=path_length)
        )
        certificate = self._sign(builder, public, signing)
        key = CaKeyRecord(name, info.version, public.key_id, CaKeyStatus.CURRENT, now)
        record = self._record(
            certificate,
            issuer=name,
            issuer_key=key,
            kind=CertificateKind.ROOT,
            name=name,
            subject_key=public,
            key_name=key_name,
            key_version=info.version,
            crl_shard=None,
            now=now,
        )
        ca = CaRecord(
            name=name,
            kind=CertificateKind.ROOT,
            namespace=None,
            parent=None,
            path_length=path_length,
            ip_networks=(),
            crl_shards=crl_shards,
            validity=validity,
            key_name=key_name,
            key_version=info.version,
            serial=serial,
            created_at=now,
        )
        self._store.create_ca(ca, key, [record])
        return Issued(certificate, (), serial, key_name, info.version)

    def issue_intermediate(
        self,
        name: str,
        namespace: str,
        issuer: str | None = ROOT,
        path_length: int | None = DEFAULT_INTERMEDIATE_PATH_LENGTH,
        validity: timedelta = DEFAULT_INTERMEDIATE_VALIDITY,
        *,
        ip_networks: Iterable[str | IpNetwork] = (),
        crl_shards: int = DEFAULT_CRL_SHARDS,
    ) -> Issued:
        """Create the intermediate (entity) CA ``name`` for DNS ``namespace``, certified by
        ``issuer`` (default: the root), with a fresh key ``ca/<name>``.

        ``path_length``: its pathLenConstraint (0: it issues leaves only; None: unlimited, only
        under an unlimited issuer). ``ip_networks``: IP ranges its leaves may name (none: IP
        addresses unconstrained).
        """
        name = profiles.ca_name(name)
        namespace = profiles.dns_name(namespace)
        networks = tuple(_network(value) for value in ip_networks)
        _check_ca_settings(validity, path_length, crl_shards)
        parent = self._ca_or_root(issuer)
        if parent.path_length is not None and (
            path_length is None or path_length >= parent.path_length
        ):
            raise InvalidCertificateRequest(
                f"CA {parent.name} has pathLenConstraint {parent.path_length}: it may issue CA "
                f"certificates only with a smaller one (asked: {path_length})"
            )
        if parent.namespace is not None and not profiles.in_namespace(namespace, parent.namespace):
            raise NameOutsideNamespace(
                f"namespace {namespace} is outside {parent.name}'s namespace {parent.namespace}"
            )
        if parent.ip_networks:
            for network in networks:
                if not any(_subnet(network, outer) for outer in parent.ip_networks):
                    raise NameOutsideNamespace(
                        f"IP range {network} is outside {parent.name}'s ranges"
                    )
        self._require_new_ca(name)
        context = self._issuer(parent)
        key_name = ca_key_name(name)
        info = self._fresh_key(key_name)
        public = self._public_key(key_name, info.version)
        now = self._now()
        serial = self._store.reserve_serial(now)
        not_after = self._cap(now + validity, context, now)
        builder = _builder(
            profiles.ca_subject(name), context.certificate.subject, serial, now, not_after
        )
        builder = profiles.apply(
            builder,
            profiles.intermediate_profile(
                subject_key=public,
                issuer_key=context.public_key,
                path_length=path_length,
                namespace=namespace,
                ip_networks=networks,
                crl=self._crl_uri(parent.name, None),
            ),
        )
        certificate = self._sign(builder, public, context.signing_key)
        key = CaKeyRecord(name, info.version, public.key_id, CaKeyStatus.CURRENT, now)
        record = self._record(
            certificate,
            issuer=parent.name,
            issuer_key=context.key,
            kind=CertificateKind.INTERMEDIATE,
            name=name,
            subject_key=public,
            key_name=key_name,
            key_version=info.version,
            crl_shard=None,
            now=now,
        )
        ca = CaRecord(
            name=name,
            kind=CertificateKind.INTERMEDIATE,
            namespace=namespace,
            parent=parent.name,
            path_length=path_length,
            ip_networks=networks,
            crl_shards=crl_shards,
            validity=validity,
            key_name=key_name,
            key_version=info.version,
            serial=serial,
            created_at=now,
        )
        self._store.create_ca(ca, key, [record])
        return Issued(certificate, self._chain(record), serial, key_name, info.version)

    def rollover(self, ca_name: str) -> Issued:
        """Rotate CA ``ca_name``'s key (see "CA key rollover" in the module docs).

        Returns the new CA certificate; for a root, ``cross_certificate`` is the new key
        certified by the old one.
        """
        ca = self._store.ca(ca_name)
        # Who certifies the new key: a root's old key (cross-certificate), else the parent.
        # An intermediate whose own key was compromised can still roll over.
        is_root = ca.kind is CertificateKind.ROOT
        certifier = self._issuer(ca if is_root else self._store.ca(_parent_of(ca)))
        info = self._keystore.rotate(ca.key_name)
        signing = self._keystore.signing_key(ca.key_name, info.version)
        public = signing.public_key()
        now = self._now()
        key = CaKeyRecord(ca.name, info.version, public.key_id, CaKeyStatus.CURRENT, now)
        subject = profiles.ca_subject(ca.name)
        serial = self._store.reserve_serial(now)
        records: list[CertificateRecord] = []
        cross: x509.Certificate | None = None
        if is_root:
            old = certifier
            not_after = now + ca.validity
            builder = _builder(subject, subject, serial, now, not_after)
            builder = profiles.apply(
                builder, profiles.root_profile(subject_key=public, path_length=ca.path_length)
            )
            certificate = self._sign(builder, public, signing)
            new_key_issuer = key
            cross_serial = self._store.reserve_serial(now)
            cross_builder = _builder(
                subject, subject, cross_serial, now, min(not_after, old.record.not_after)
            )
            cross_builder = profiles.apply(
                cross_builder,
                profiles.cross_profile(
                    subject_key=public,
                    issuer_key=old.public_key,
                    path_length=ca.path_length,
                    crl=self._crl_uri(ca.name, None),
                ),
            )
            cross = self._sign(cross_builder, public, old.signing_key)
            records.append(
                self._record(
                    cross,
                    issuer=ca.name,
                    issuer_key=old.key,
                    kind=CertificateKind.ROOT,
                    name=ca.name,
                    subject_key=public,
                    key_name=ca.key_name,
                    key_version=info.version,
                    crl_shard=None,
                    now=now,
                )
            )
        else:
            parent = certifier
            not_after = self._cap(now + ca.validity, parent, now)
            builder = _builder(subject, parent.certificate.subject, serial, now, not_after)
            builder = profiles.apply(
                builder, self._ca_profile(ca, subject_key=public, issuer=parent.ca, by=parent)
            )
            certificate = self._sign(builder, public, parent.signing_key)
            new_key_issuer = parent.key
        records.insert(
            0,
            self._record(
                certificate,
                issuer=ca.name if ca.kind is CertificateKind.ROOT else _parent_of(ca),
                issuer_key=new_key_issuer,
                kind=ca.kind,
                name=ca.name,
                subject_key=public,
                key_name=ca.key_name,
                key_version=info.version,
                crl_shard=None,
                now=now,
            ),
        )
        new_issuer = _Issuer(ca, key, signing, records[0], certificate)
        records.extend(self._recertify_children(ca, new_issuer, now))
        self._store.rotate_ca_key(ca.name, key, serial, records)
        return Issued(
            certificate,
            self._chain(self._store.certificate(serial)),
            serial,
            ca.key_name,
            info.version,
            cross_certificate=cross,
        )

    def retire(self, ca_name: str, key_version: int) -> None:
        """End a rollover: retire CA ``ca_name``'s (non-current) key ``key_version``.

        The key store retires the key (it can no longer sign); a root's certificates for it
        stop being anchors (:meth:`export_root`) and its cross-certificates stop appearing in
        chains; an intermediate's certificates for it are revoked (``superseded``) on the
        parent's CRL.
        """
        ca = self._store.ca(ca_name)
        if key_version == ca.key_version:
            raise InvalidCertificateRequest(
                f"key version {key_version} is {ca.name}'s current key; roll over first"
            )
        key = self._store.ca_key(ca.name, key_version)
        if key.status is CaKeyStatus.RETIRED:
            raise CaError(f"key version {key_version} of {ca.name} is already retired")
        revoke: list[int] = []
        if ca.kind is not CertificateKind.ROOT:
            revoke = [
                record.serial
                for record in self._store.certificates_for_key(key.key_id)
                if record.status is CertificateStatus.VALID
            ]
        status = self._keystore.info(ca.key_name, key_version).status
        if status not in (KeyStatus.RETIRED, KeyStatus.REVOKED):  # else: an interrupted retire
            self._keystore.retire(ca.key_name, key_version)
        self._store.retire_ca_key(ca.name, key_version, self._now(), revoke=revoke)

    def export_root(self) -> list[x509.Certificate]:
        """The trust anchors to distribute: the current root certificate, then (during a
        rollover) the self-signed certificates of the root's non-retired previous keys."""
        root = self._store.root()
        if root is None:
            raise CaNotFound("this home has no root CA yet")
        anchors = [self._store.certificate(root.serial)]
        for key in reversed(self._store.ca_keys(root.name)):
            if key.status is not CaKeyStatus.PREVIOUS:
                continue
            anchors.extend(
                record
                for record in reversed(self._store.certificates_for_key(key.key_id))
                if record.self_signed and record.status is CertificateStatus.VALID
            )
        return [record.certificate() for record in anchors]

    # -- leaves -------------------------------------------------------------------------------

    def issue(
        self,
        issuer: str,
        kind: CertificateKind | str,
        name: str,
        *,
        subject_key: VerifyKey | None = None,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
        asset_id: bytes | None = None,
        service_id: bytes | None = None,
        validity: timedelta = DEFAULT_LEAF_VALIDITY,
    ) -> Issued:
        """Issue a ``kind`` (node, service, asset) certificate for ``name`` from CA ``issuer``.

        ``subject_key``: the subject's hybrid public key; None generates a fresh key in the key
        store as ``leaf/<name>`` (a new version if that key exists). ``dns_names`` (nodes,
        services) and ``ip_addresses`` (nodes) are added to the subjectAltName. ``asset_id`` /
        ``service_id``: the id in the ``hypermesh://asset|service/`` URI (default: the subject
        key id). Raises :class:`NameOutsideNamespace` or :class:`InvalidCertificateRequest`.
        """
        kind = _leaf_kind(kind)
        ca = self._store.ca(issuer)
        if ca.kind is CertificateKind.ROOT or ca.namespace is None:
            raise InvalidCertificateRequest(
                f"{ca.name} is the root CA: it issues CA certificates only; issue leaves from an "
                "intermediate"
            )
        names = profiles.check_leaf_names(
            kind,
            name,
            namespace=ca.namespace,
            ip_networks=ca.ip_networks,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
        )
        _check_leaf_validity(validity)
        if asset_id is not None and kind is not CertificateKind.ASSET:
            raise InvalidCertificateRequest("asset_id applies to asset certificates only")
        if service_id is not None and kind is not CertificateKind.SERVICE:
            raise InvalidCertificateRequest("service_id applies to service certificates only")
        context = self._issuer(ca)
        key_name: str | None = None
        key_version: int | None = None
        if subject_key is None:
            key_name = leaf_key_name(names.common_name)
            if len(key_name) > _MAX_KEY_NAME:
                raise InvalidCertificateRequest(
                    f"{names.common_name} is too long for a key-store key name; pass subject_key"
                )
            info = self._fresh_key(key_name)
            key_version = info.version
            subject_key = self._public_key(key_name, key_version)
        elif subject_key.algorithm is not _HYBRID:
            raise AlgorithmMismatch(
                f"subject keys must be {_HYBRID.label}, got {subject_key.algorithm.label}"
            )
        given = asset_id if kind is CertificateKind.ASSET else service_id
        identity = _identity(kind, subject_key, given)
        return self._issue_leaf(
            context,
            kind,
            names,
            identity=identity,
            subject_key=subject_key,
            key_name=key_name,
            key_version=key_version,
            validity=validity,
            renewal_of=None,
        )

    def renew(
        self,
        serial: int,
        *,
        rekey: bool = True,
        subject_key: VerifyKey | None = None,
        validity: timedelta | None = None,
    ) -> Issued:
        """Issue a successor of leaf ``serial`` (see "Renewal" in the module docs).

        ``rekey``: give the subject a new key (rotating ``leaf/<name>`` in the key store, or
        ``subject_key`` when given). ``validity``: default, the old certificate's lifetime.
        """
        old = self._store.certificate(serial)
        if old.kind not in LEAF_KINDS:
            raise InvalidCertificateRequest(
                f"certificate {serial:x} is a {old.kind} certificate; CA keys roll over instead"
            )
        if old.status is CertificateStatus.REVOKED:
            raise InvalidCertificateRequest(f"certificate {serial:x} is revoked; issue anew")
        certificate = old.certificate()
        ca = self._store.ca(old.issuer)
        if ca.namespace is None:  # pragma: no cover - roots issue no leaves
            raise CaStoreCorrupted(f"leaf {serial:x} was issued by a root")
        dns_names, addresses, identity = _leaf_names_of(certificate)
        names = profiles.check_leaf_names(
            old.kind,
            old.name,
            namespace=ca.namespace,
            ip_networks=ca.ip_networks,
            dns_names=dns_names,
            ip_addresses=addresses,
        )
        lifetime = old.not_after - old.not_before if validity is None else validity
        _check_leaf_validity(lifetime)
        context = self._issuer(ca)
        key_name, key_version = old.key_name, old.key_version
        if subject_key is not None:
            if subject_key.algorithm is not _HYBRID:
                raise AlgorithmMismatch(
                    f"subject keys must be {_HYBRID.label}, got {subject_key.algorithm.label}"
                )
            key_name = key_version = None
        elif rekey:
            if old.key_name is None:
                raise InvalidCertificateRequest(
                    f"the CA does not hold the key of {serial:x}; pass subject_key, or rekey=False"
                )
            info = self._keystore.rotate(old.key_name)
            key_name, key_version = old.key_name, info.version
            subject_key = self._public_key(old.key_name, info.version)
        else:
            subject_key = hybrid.certificate_public_key(certificate)
        if old.kind is CertificateKind.NODE:
            identity = subject_key.key_id
        return self._issue_leaf(
            context,
            old.kind,
            names,
            identity=identity,
            subject_key=subject_key,
            key_name=key_name,
            key_version=key_version,
            validity=lifetime,
            renewal_of=serial,
        )

    # -- revocation ---------------------------------------------------------------------------

    def revoke(
        self, serial: int, reason: x509.ReasonFlags | str = x509.ReasonFlags.unspecified
    ) -> None:
        """Revoke certificate ``serial`` with an RFC 5280 ``reason`` (see the module docs).

        :class:`CertificateNotFound`, :class:`AlreadyRevoked`, or
        :class:`InvalidCertificateRequest` for a root's self-signed certificate (retire the key
        instead) or a refused reason.
        """
        flag = _reason(reason)
        record = self._store.certificate(serial)
        if record.self_signed:
            raise InvalidCertificateRequest(
                "a root's self-signed certificate cannot be revoked: roll the root over and "
                "retire the old key"
            )
        serials = [serial]
        if flag is x509.ReasonFlags.key_compromise:
            serials += [
                other.serial
                for other in self._store.certificates_for_key(record.subject_key_id)
                if other.serial != serial
                and other.status is CertificateStatus.VALID
                and not other.self_signed
            ]
        self._store.revoke(serials, self._now(), flag)
        if flag is x509.ReasonFlags.key_compromise and record.key_name is not None:
            version = record.key_version
            info = None if version is None else self._keystore.info(record.key_name, version)
            if version is not None and info is not None and info.status is not KeyStatus.REVOKED:
                self._keystore.revoke(
                    record.key_name, version, f"certificate {serial:x} revoked: keyCompromise"
                )

    def crl(
        self, issuer: str | None = ROOT, shard: int | None = None, *, key_version: int | None = None
    ) -> x509.CertificateRevocationList:
        """A fresh CRL of ``issuer`` (default: the root): the full CRL (``shard`` None) or one
        shard's. ``key_version``: which of the CA's non-retired keys signs (default: current).
        """
        ca = self._ca_or_root(issuer)
        if shard is not None and not 0 <= shard < ca.crl_shards:
            raise InvalidCertificateRequest(
                f"{ca.name} has {ca.crl_shards} CRL shards (0 to {ca.crl_shards - 1}), not {shard}"
            )
        version = ca.key_version if key_version is None else key_version
        key = self._store.ca_key(ca.name, version)
        signing = self._keystore.signing_key(ca.key_name, version)
        if signing.public_key().key_id != key.key_id:
            raise CaStoreCorrupted(f"key-store key {ca.key_name} v{version} is not {ca.name}'s")
        now = self._now()
        number = self._store.next_crl_number(ca.name, shard)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(profiles.ca_subject(ca.name))
            .last_update(now)
            .next_update(now + self._crl_validity)
        )
        for record in self._store.revoked(
            ca.name, shard, expired_after=now - EXPIRED_ENTRY_RETENTION
        ):
            if record.revoked_at is None:  # pragma: no cover - the schema forbids it
                raise CaStoreCorrupted(f"revoked certificate {record.serial:x} has no time")
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(record.serial)
                .revocation_date(record.revoked_at)
            )
            if record.reason not in (None, x509.ReasonFlags.unspecified):
                entry = entry.add_extension(x509.CRLReason(record.reason), critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        builder = builder.add_extension(x509.CRLNumber(number), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier(profiles.key_identifier(signing.public_key()), None, None),
            critical=False,
        )
        if shard is not None:
            builder = builder.add_extension(
                x509.IssuingDistributionPoint(
                    full_name=[x509.UniformResourceIdentifier(self._crl_uri(ca.name, shard))],
                    relative_name=None,
                    only_contains_user_certs=True,
                    only_contains_ca_certs=False,
                    only_some_reasons=None,
                    indirect_crl=False,
                    only_contains_attribute_certs=False,
                ),
                critical=True,
            )
        return hybrid.build_crl(builder, issuer_key=signing)

    # -- lookups ------------------------------------------------------------------------------

    def certificate(self, serial: int) -> x509.Certificate:
        """The certificate ``serial`` (:class:`CertificateNotFound`)."""
        return self._store.certificate(serial).certificate()

    def record(self, serial: int) -> CertificateRecord:
        """The database record of certificate ``serial`` (status, revocation, key...)."""
        return self._store.certificate(serial)

    def chain_for(self, serial: int) -> tuple[x509.Certificate, ...]:
        """The issuer chain of certificate ``serial``, excluding it and the root (see "Chains"
        in the module docs)."""
        return self._chain(self._store.certificate(serial))

    def ca(self, name: str | None = ROOT) -> CaRecord:
        """The record of CA ``name`` (default: the root)."""
        return self._ca_or_root(name)

    def cas(self) -> list[CaRecord]:
        return self._store.cas()

    # -- internals: keys and issuers --------------------------------------------------------

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise CaError("the CA clock must return timezone-aware datetimes")
        return now.astimezone(UTC).replace(microsecond=0)

    def _ca_or_root(self, name: str | None) -> CaRecord:
        if name is not None:
            return self._store.ca(name)
        root = self._store.root()
        if root is None:
            raise CaNotFound("this home has no root CA yet")
        return root

    def _require_new_ca(self, name: str) -> None:
        try:
            self._store.ca(name)
        except CaNotFound:
            return
        raise CaExists(f"a certificate authority named {name!r} already exists")

    def _fresh_key(self, key_name: str) -> KeyInfo:
        """A never-used hybrid key version under ``key_name``: version 1, or a rotation."""
        try:
            return self._keystore.generate(key_name, _HYBRID)
        except KeyExists:
            return self._keystore.rotate(key_name)

    def _public_key(self, key_name: str, version: int) -> VerifyKey:
        public = self._keystore.public_key(key_name, version)
        if not isinstance(public, VerifyKey) or public.algorithm is not _HYBRID:
            raise CaError(f"key-store key {key_name} v{version} is not a hybrid signing key")
        return public

    def _issuer(self, ca: CaRecord) -> _Issuer:
        """CA ``ca`` with its current key and certificate, checked usable for issuing."""
        key = self._store.ca_key(ca.name, ca.key_version)
        signing = self._keystore.signing_key(ca.key_name, ca.key_version)
        if signing.public_key().key_id != key.key_id:
            raise CaStoreCorrupted(
                f"key-store key {ca.key_name} v{ca.key_version} is not {ca.name}'s current key"
            )
        record = self._store.certificate(ca.serial)
        if record.subject_key_id != key.key_id:
            raise CaStoreCorrupted(f"{ca.name}'s current certificate is not for its current key")
        if record.status is CertificateStatus.REVOKED:
            raise CaError(f"{ca.name}'s certificate {ca.serial:x} is revoked; it may not issue")
        if record.not_after <= self._now():
            raise CaError(f"{ca.name}'s certificate {ca.serial:x} has expired; it may not issue")
        return _Issuer(ca, key, signing, record, record.certificate())

    def _cap(self, not_after: datetime, issuer: _Issuer, now: datetime) -> datetime:
        """``not_after`` truncated to the issuer certificate's end."""
        capped = min(not_after, issuer.record.not_after)
        if capped <= now:  # pragma: no cover - _issuer refuses expired CAs
            raise CaError(f"{issuer.ca.name}'s certificate expires now")
        return capped

    def _crl_uri(self, issuer: str, shard: int | None) -> str:
        return profiles.crl_uri(self._crl_base_uri, issuer, shard)

    def _ca_profile(
        self, ca: CaRecord, *, subject_key: VerifyKey, issuer: CaRecord, by: _Issuer
    ) -> tuple[ExtensionSpec, ...]:
        """The profile of CA ``ca``'s certificate for ``subject_key``, issued by ``by``."""
        if ca.namespace is None:  # pragma: no cover - only intermediates are certified by others
            raise CaStoreCorrupted(f"intermediate {ca.name} has no namespace")
        return profiles.intermediate_profile(
            subject_key=subject_key,
            issuer_key=by.public_key,
            path_length=ca.path_length,
            namespace=ca.namespace,
            ip_networks=ca.ip_networks,
            crl=self._crl_uri(issuer.name, None),
        )

    def _recertify_children(
        self, ca: CaRecord, new_issuer: _Issuer, now: datetime
    ) -> list[CertificateRecord]:
        """Certificates of every non-retired key of ``ca``'s child CAs under its new key."""
        records: list[CertificateRecord] = []
        for child in self._store.cas():
            if child.parent != ca.name:
                continue
            for key in self._store.ca_keys(child.name):
                if key.status is CaKeyStatus.RETIRED:
                    continue
                current = [
                    record
                    for record in self._store.certificates_for_key(key.key_id)
                    if record.status is CertificateStatus.VALID and record.not_after > now
                ]
                if not current:
                    continue
                latest = current[-1]
                subject_key = hybrid.certificate_public_key(latest.certificate())
                serial = self._store.reserve_serial(now)
                not_after = min(latest.not_after, new_issuer.record.not_after)
                builder = _builder(
                    profiles.ca_subject(child.name),
                    new_issuer.certificate.subject,
                    serial,
                    now,
                    not_after,
                )
                builder = profiles.apply(
                    builder,
                    self._ca_profile(child, subject_key=subject_key, issuer=ca, by=new_issuer),
                )
                certificate = self._sign(builder, subject_key, new_issuer.signing_key)
                records.append(
                    self._record(
                        certificate,
                        issuer=ca.name,
                        issuer_key=new_issuer.key,
                        kind=CertificateKind.INTERMEDIATE,
                        name=child.name,
                        subject_key=subject_key,
                        key_name=child.key_name,
                        key_version=key.version,
                        crl_shard=None,
                        now=now,
                    )
                )
        return records

    # -- internals: signing and recording ---------------------------------------------------

    def _sign(
        self, builder: x509.CertificateBuilder, subject_key: VerifyKey, issuer_key: SigningKey
    ) -> x509.Certificate:
        """Sign ``builder`` as a hybrid certificate, logging it first when a log is configured
        (the procedure of :mod:`trustchain.ca.embedded_sct`)."""
        if self._log is None:
            return hybrid.build_certificate(builder, subject_key=subject_key, issuer_key=issuer_key)
        entry = embedded_sct.precertificate_entry(builder, subject_key=subject_key)
        sct = self._log.append(entry)
        sct.verify(self._log.public_key, entry=entry)
        certificate = hybrid.build_certificate(
            embedded_sct.with_scts(builder, [sct]), subject_key=subject_key, issuer_key=issuer_key
        )
        if embedded_sct.log_entry(certificate) != entry:
            raise CaError("the signed certificate does not reproduce its logged entry")
        return certificate

    def _issue_leaf(
        self,
        context: _Issuer,
        kind: CertificateKind,
        names: LeafNames,
        *,
        identity: bytes,
        subject_key: VerifyKey,
        key_name: str | None,
        key_version: int | None,
        validity: timedelta,
        renewal_of: int | None,
    ) -> Issued:
        ca = context.ca
        now = self._now()
        serial = self._store.reserve_serial(now)
        shard = serial % ca.crl_shards
        not_after = self._cap(now + validity, context, now)
        builder = _builder(
            profiles.leaf_subject(names.common_name),
            context.certificate.subject,
            serial,
            now,
            not_after,
        )
        builder = profiles.apply(
            builder,
            profiles.leaf_profile(
                kind,
                names,
                identity=identity,
                subject_key=subject_key,
                issuer_key=context.public_key,
                crl=self._crl_uri(ca.name, shard),
            ),
        )
        certificate = self._sign(builder, subject_key, context.signing_key)
        record = self._record(
            certificate,
            issuer=ca.name,
            issuer_key=context.key,
            kind=kind,
            name=names.common_name,
            subject_key=subject_key,
            key_name=key_name,
            key_version=key_version,
            crl_shard=shard,
            now=now,
            renewal_of=renewal_of,
        )
        self._store.add_certificates([record])
        return Issued(certificate, self._chain(record), serial, key_name, key_version)

    @staticmethod
    def _record(
        certificate: x509.Certificate,
        *,
        issuer: str,
        issuer_key: CaKeyRecord,
        kind: CertificateKind,
        name: str,
        subject_key: VerifyKey,
        key_name: str | None,
        key_version: int | None,
        crl_shard: int | None,
        now: datetime,
        renewal_of: int | None = None,
    ) -> CertificateRecord:
        return CertificateRecord(
            serial=certificate.serial_number,
            issuer=issuer,
            issuer_key_version=issuer_key.version,
            issuer_key_id=issuer_key.key_id,
            subject=certificate.subject.rfc4514_string(),
            name=name,
            kind=kind,
            subject_key_id=subject_key.key_id,
            key_name=key_name,
            key_version=key_version,
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            crl_shard=crl_shard,
            der=certificate.public_bytes(Encoding.DER),
            issued_at=now,
            renewal_of=renewal_of,
        )

    # -- internals: chains ------------------------------------------------------------------

    def _key_of(self, ca_name: str, key_id: bytes) -> CaKeyRecord:
        for key in self._store.ca_keys(ca_name):
            if key.key_id == key_id:
                return key
        raise CaStoreCorrupted(f"CA {ca_name} has no key with id {key_id.hex()[:16]}...")

    def _certificate_of_key(self, ca: CaRecord, key: CaKeyRecord) -> CertificateRecord:
        """The certificate that best certifies ``ca``'s ``key`` (see "Chains")."""
        records = self._store.certificates_for_key(key.key_id)
        if ca.kind is CertificateKind.ROOT:
            for record in reversed(records):
                if record.self_signed:
                    return record
            raise CaStoreCorrupted(f"root {ca.name} key v{key.version} has no self-signed cert")
        parent = self._store.ca(_parent_of(ca))
        parent_keys = {k.key_id: k for k in self._store.ca_keys(parent.name)}

        def rank(record: CertificateRecord) -> tuple[bool, bool, bool, datetime]:
            issuer_key = parent_keys.get(record.issuer_key_id)
            return (
                record.status is CertificateStatus.VALID,
                issuer_key is not None and issuer_key.status is not CaKeyStatus.RETIRED,
                issuer_key is not None and issuer_key.status is CaKeyStatus.CURRENT,
                record.issued_at,
            )

        candidates = [r for r in records if r.kind is ca.kind and r.issuer == parent.name]
        if not candidates:
            raise CaStoreCorrupted(f"CA {ca.name} key v{key.version} has no certificate")
        return max(candidates, key=rank)

    def _chain(self, record: CertificateRecord) -> tuple[x509.Certificate, ...]:
        chain: list[CertificateRecord] = []
        seen = {record.serial}
        current = record
        while not current.self_signed:
            issuer_ca = self._store.ca(current.issuer)
            issuer_key = self._key_of(issuer_ca.name, current.issuer_key_id)
            issuer_record = self._certificate_of_key(issuer_ca, issuer_key)
            if issuer_record.self_signed:
                if current.kind is not CertificateKind.ROOT:
                    chain.extend(self._cross_certificates(issuer_ca, issuer_key))
                break
            if issuer_record.serial in seen:
                raise CaStoreCorrupted(f"certificate chain loops at {issuer_record.serial:x}")
            seen.add(issuer_record.serial)
            chain.append(issuer_record)
            current = issuer_record
        return tuple(item.certificate() for item in chain)

    def _cross_certificates(self, root: CaRecord, key: CaKeyRecord) -> list[CertificateRecord]:
        """Cross-certificates from ``key`` back through the root's non-retired older keys."""
        keys = {k.key_id: k for k in self._store.ca_keys(root.name)}
        result: list[CertificateRecord] = []
        current = key
        while True:
            crosses = [
                record
                for record in self._store.certificates_for_key(current.key_id)
                if not record.self_signed
                and record.kind is CertificateKind.ROOT
                and record.status is CertificateStatus.VALID
                and record.issuer_key_id in keys
                and keys[record.issuer_key_id].status is not CaKeyStatus.RETIRED
                and keys[record.issuer_key_id].version < current.version
            ]
            if not crosses:
                return result
            newest = crosses[-1]
            result.append(newest)
            current = keys[newest.issuer_key_id]


# --- helpers ----------------------------------------------------------------------------------


def _builder(
    subject: x509.Name, issuer: x509.Name, serial: int, not_before: datetime, not_after: datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def _parent_of(ca: CaRecord) -> str:
    if ca.parent is None:
        raise CaStoreCorrupted(f"intermediate CA {ca.name} has no parent")
    return ca.parent


def _check_ca_settings(validity: timedelta, path_length: int | None, crl_shards: int) -> None:
    if validity <= timedelta(0):
        raise InvalidCertificateRequest(f"validity must be positive, got {validity}")
    if path_length is not None and (type(path_length) is not int or path_length < 0):
        raise InvalidCertificateRequest(f"path length must be None or >= 0, got {path_length!r}")
    if type(crl_shards) is not int or not 1 <= crl_shards <= 1024:
        raise InvalidCertificateRequest(f"CRL shard count must be 1..1024, got {crl_shards!r}")


def _check_leaf_validity(validity: timedelta) -> None:
    if not timedelta(0) < validity <= MAX_LEAF_VALIDITY:
        raise InvalidCertificateRequest(
            f"leaf validity must be positive and at most {MAX_LEAF_VALIDITY}, got {validity}"
        )


def _leaf_kind(kind: CertificateKind | str) -> CertificateKind:
    try:
        value = CertificateKind(kind)
    except ValueError:
        raise InvalidCertificateRequest(f"unknown certificate kind {kind!r}") from None
    if value not in LEAF_KINDS:
        raise InvalidCertificateRequest(
            f"issue() makes {', '.join(LEAF_KINDS)} certificates, not {value} "
            "(use init_root / issue_intermediate)"
        )
    return value


def _identity(kind: CertificateKind, subject_key: VerifyKey, given: bytes | None) -> bytes:
    if kind is CertificateKind.NODE or given is None:
        return subject_key.key_id
    identity = bytes(given)
    if not 1 <= len(identity) <= 64:
        raise InvalidCertificateRequest(f"a {kind} id must be 1 to 64 bytes, got {len(identity)}")
    return identity


def _network(value: str | IpNetwork) -> IpNetwork:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    try:
        return ipaddress.ip_network(value)
    except ValueError as exc:
        raise InvalidCertificateRequest(f"invalid IP network {value!r}: {exc}") from exc


def _subnet(inner: IpNetwork, outer: IpNetwork) -> bool:
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


def _reason(reason: x509.ReasonFlags | str) -> x509.ReasonFlags:
    try:
        flag = x509.ReasonFlags(reason)
    except ValueError:
        names = ", ".join(f.value for f in x509.ReasonFlags if f not in _REFUSED_REASONS)
        raise InvalidCertificateRequest(
            f"unknown revocation reason {reason!r}; RFC 5280 names: {names}"
        ) from None
    if flag in _REFUSED_REASONS:
        raise InvalidCertificateRequest(
            f"{flag.value} is not supported: TrustChain revocations are final"
        )
    return flag


def _leaf_names_of(
    certificate: x509.Certificate,
) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address], bytes]:
    """DNS names, IP addresses and hypermesh id from a leaf's subjectAltName."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError) as exc:
        raise CaStoreCorrupted(f"leaf {certificate.serial_number:x} has no usable SAN") from exc
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise CaStoreCorrupted(f"leaf {certificate.serial_number:x} must name one hypermesh URI")
    _, identity = oids.parse_hypermesh_uri(uris[0])
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for value in san.get_values_for_type(x509.IPAddress):
        if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
            addresses.append(value)
    return list(san.get_values_for_type(x509.DNSName)), addresses, identity
