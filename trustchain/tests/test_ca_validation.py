"""trustchain.ca.validation: certificate path validation, one rejection reason per failure.

Hierarchies are built here with a small test-local factory on top of
trustchain.ca.hybrid.build_certificate and the CA's own profiles (trustchain.ca.profiles), so
the test can also craft what the CA would refuse to issue: a CA without the CA flag, names
outside the namespace, a leaf that lies about its node id. Where only the alternative signature
should notice a change, the tampered TBS is re-signed with the issuer's Ed25519 key (an
attacker who owns or has broken the classical key). A final section runs the real
CertificateAuthority (rollover, retirement, CRLs) through the validator.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from google.protobuf.timestamp_pb2 import Timestamp

from hypermesh_interfaces.v1 import common_pb2, security_pb2
from trustchain.ca import der, embedded_sct, hybrid, oids
from trustchain.ca.profiles import CertificateKind, ExtensionSpec
from trustchain.ca.trust import TrustAnchor, TrustLevel, TrustPolicy, TrustStore, key_identifier
from trustchain.ca.validation import (
    MAX_CLOCK_SKEW,
    Purpose,
    ValidationReport,
    validate,
    validate_certificates_response,
    validation_result_message,
)
from trustchain.crypto.signatures import SigningKey, VerifyKey
from trustchain.ct.merkle import leaf_hash
from trustchain.ct.sct import SignedCertificateTimestamp
from trustchain.errors import CertificateRejected, RejectionReason, UnknownTrustPolicy

NOW = datetime(2031, 5, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
NAMESPACE = "dmv.hypermesh"
LEAF_NAME = f"node1.{NAMESPACE}"
LEAF_IP = ipaddress.ip_address("10.1.2.3")
NETWORK = ipaddress.ip_network("10.0.0.0/8")
CRL_BASE = "hypermesh://trustchain/crl"
R = RejectionReason


# --- test-local PKI factory -----------------------------------------------------------------------
#
# Self-contained on purpose (only trustchain.ca.hybrid signs): the extensions mirror the CA's
# profiles (trustchain.ca.profiles) but are written out here, so the tests can bend them.

ASSET_EKU = x509.ObjectIdentifier(oids.TRUSTCHAIN_ARC + ".2.1")
CA_USAGE = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
LEAF_USAGE = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
Extensions = Callable[[VerifyKey, VerifyKey], Sequence[ExtensionSpec]]


@dataclass(frozen=True)
class Cert:
    """A certificate and its subject's private key."""

    cert: x509.Certificate
    key: SigningKey

    @property
    def public(self) -> VerifyKey:
        return self.key.public_key()

    @property
    def name(self) -> str:
        return str(self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def ca_subject(name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TrustChain"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )


def leaf_subject(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def ski(key: VerifyKey) -> ExtensionSpec:
    return ExtensionSpec(x509.SubjectKeyIdentifier(key_identifier(key)), critical=False)


def aki(key: VerifyKey) -> ExtensionSpec:
    return ExtensionSpec(x509.AuthorityKeyIdentifier(key_identifier(key), None, None), False)


def crl_uri(issuer: str, shard: int | None) -> str:
    return f"{CRL_BASE}/{issuer}/{'full' if shard is None else f'shard-{shard}'}.crl"


def crl_dp(uri: str) -> ExtensionSpec:
    point = x509.DistributionPoint([x509.UniformResourceIdentifier(uri)], None, None, None)
    return ExtensionSpec(x509.CRLDistributionPoints([point]), critical=False)


def _builder(
    subject: x509.Name, issuer: x509.Name, not_before: datetime, not_after: datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def make(
    subject: x509.Name,
    issuer: Cert | None,
    extensions: Extensions,
    *,
    key: SigningKey | None = None,
    not_before: datetime = NOW - DAY,
    not_after: datetime = NOW + 30 * DAY,
    log: SigningKey | None = None,
) -> Cert:
    """Issue a certificate for ``subject`` (self-signed when ``issuer`` is None); with ``log``,
    embed an SCT from that log key over the certificate's log entry."""
    key = key or SigningKey.generate()
    public = key.public_key()
    signer = key if issuer is None else issuer.key
    issuer_name = subject if issuer is None else issuer.cert.subject
    builder = _builder(subject, issuer_name, not_before, not_after)
    for spec in extensions(public, signer.public_key()):
        builder = builder.add_extension(spec.value, critical=spec.critical)
    if log is not None:
        entry = embedded_sct.precertificate_entry(builder, subject_key=public)
        sct = SignedCertificateTimestamp.issue(
            log,
            timestamp=int((NOW - 2 * HOUR).timestamp() * 1000),
            leaf_index=0,
            leaf_hash=leaf_hash(entry),
        )
        builder = embedded_sct.with_scts(builder, [sct])
    return Cert(hybrid.build_certificate(builder, subject_key=public, issuer_key=signer), key)


def root(
    name: str = "root", *, path_length: int | None = None, key: SigningKey | None = None
) -> Cert:
    return make(
        ca_subject(name),
        None,
        lambda subject, _: [
            ExtensionSpec(x509.BasicConstraints(ca=True, path_length=path_length), True),
            ExtensionSpec(CA_USAGE, True),
            ski(subject),
        ],
        key=key,
    )


def intermediate(
    issuer: Cert,
    name: str = "dmv",
    *,
    namespace: str = NAMESPACE,
    ip_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (NETWORK,),
    path_length: int | None = 0,
    not_before: datetime = NOW - DAY,
    not_after: datetime = NOW + 30 * DAY,
) -> Cert:
    """An entity CA confined to ``namespace`` (as the CA's intermediate profile)."""
    permitted: list[x509.GeneralName] = [x509.DNSName(namespace)]
    permitted += [x509.UniformResourceIdentifier(host) for host in oids.HYPERMESH_URI_KINDS]
    permitted += [x509.IPAddress(network) for network in ip_networks]
    constraints = x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)
    return make(
        ca_subject(name),
        issuer,
        lambda subject, by: [
            ExtensionSpec(x509.BasicConstraints(ca=True, path_length=path_length), True),
            ExtensionSpec(CA_USAGE, True),
            ExtensionSpec(constraints, True),
            ski(subject),
            aki(by),
            crl_dp(crl_uri(issuer.name, None)),
        ],
        not_before=not_before,
        not_after=not_after,
    )


def cross(new: Cert, old: Cert) -> x509.Certificate:
    """``new``'s key certified by ``old`` (a rollover cross-certificate)."""
    return make(
        new.cert.subject,
        old,
        lambda subject, by: [
            ExtensionSpec(x509.BasicConstraints(ca=True, path_length=None), True),
            ExtensionSpec(CA_USAGE, True),
            ski(subject),
            aki(by),
            crl_dp(crl_uri(old.name, None)),
        ],
        key=new.key,
    ).cert


def leaf(
    issuer: Cert,
    *,
    kind: CertificateKind = CertificateKind.NODE,
    name: str = LEAF_NAME,
    dns_names: Sequence[str] = (),
    ips: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address] = (LEAF_IP,),
    uri: str | None = None,
    shard: int = 0,
    log: SigningKey | None = None,
    key: SigningKey | None = None,
    not_before: datetime = NOW - DAY,
    not_after: datetime = NOW + DAY,
) -> Cert:
    """A leaf of ``kind`` (as the CA's leaf profiles); names are NOT checked against the
    issuer's namespace, and ``uri`` may replace the ``hypermesh://`` URI."""
    key = key or SigningKey.generate()
    names: list[x509.GeneralName] = []
    if kind is not CertificateKind.ASSET:
        names += [x509.DNSName(n) for n in (name, *dns_names)]
    if kind is CertificateKind.NODE:
        names += [x509.IPAddress(address) for address in ips]
    names.append(
        x509.UniformResourceIdentifier(
            uri or oids.hypermesh_uri(kind.value, key.public_key().key_id)
        )
    )
    eku = (
        [ASSET_EKU]
        if kind is CertificateKind.ASSET
        else [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    return make(
        leaf_subject(name),
        issuer,
        lambda subject, by: [
            ExtensionSpec(x509.BasicConstraints(ca=False, path_length=None), True),
            ExtensionSpec(LEAF_USAGE, True),
            ExtensionSpec(x509.ExtendedKeyUsage(eku), False),
            ExtensionSpec(x509.SubjectAlternativeName(names), False),
            ski(subject),
            aki(by),
            crl_dp(crl_uri(issuer.name, shard)),
        ],
        key=key,
        log=log,
        not_before=not_before,
        not_after=not_after,
    )


def custom(issuer: Cert, extensions: Sequence[ExtensionSpec], **kw: object) -> Cert:
    """A certificate with exactly ``extensions`` (plus the hybrid ones)."""
    return make(leaf_subject(LEAF_NAME), issuer, lambda _s, _i: extensions, **kw)  # type: ignore[arg-type]


def crl(
    issuer: Cert,
    revoked: Sequence[tuple[int, x509.ReasonFlags | None]] = (),
    *,
    number: int = 1,
    shard: int | None = None,
    this_update: datetime = NOW - HOUR,
    next_update: datetime = NOW + HOUR,
) -> x509.CertificateRevocationList:
    """A CRL of ``issuer``; ``shard`` adds the shard's issuingDistributionPoint."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier(key_identifier(issuer.public), None, None),
            critical=False,
        )
    )
    for serial, reason in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW - HOUR)
        if reason is not None:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    if shard is not None:
        builder = builder.add_extension(
            x509.IssuingDistributionPoint(
                full_name=[x509.UniformResourceIdentifier(crl_uri(issuer.name, shard))],
                relative_name=None,
                only_contains_user_certs=True,
                only_contains_ca_certs=False,
                only_some_reasons=None,
                indirect_crl=False,
                only_contains_attribute_certs=False,
            ),
            critical=True,
        )
    return hybrid.build_crl(builder, issuer_key=issuer.key)


def resign(cert: x509.Certificate, issuer: Cert, tbs: bytes) -> x509.Certificate:
    """A certificate with TBS ``tbs`` and a valid Ed25519 signature by ``issuer``."""
    signature = hybrid.classical_private_key(issuer.key).sign(tbs)
    encoded = der.encode_sequence(
        [tbs, hybrid.ED25519_ALGORITHM_IDENTIFIER, der.encode_bit_string(signature)]
    )
    return x509.load_der_x509_certificate(encoded)


def replace_bytes(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new)
    assert data.count(old) == 1
    return data.replace(old, new)


def der_of(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def alt_signature(cert: x509.Certificate) -> bytes:
    value = cert.extensions.get_extension_for_oid(oids.ALT_SIGNATURE_VALUE).value
    assert isinstance(value, x509.UnrecognizedExtension)
    return der.decode_bit_string(der.parse(value.value))


def falcon_raw(key: VerifyKey) -> bytes:
    return key.components()[1].raw


# --- fixtures -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    log: SigningKey
    root: Cert
    ca: Cert
    node: Cert

    @property
    def chain(self) -> list[x509.Certificate]:
        return [self.node.cert, self.ca.cert]

    def store(
        self,
        *,
        level: TrustLevel = TrustLevel.FULL,
        policy: TrustPolicy | None = None,
        crls: bool = True,
        logs: bool = True,
    ) -> TrustStore:
        """A store anchored at the root; with ``crls``, current empty CRLs of both CAs."""
        store = TrustStore(
            [TrustAnchor(self.root.cert, "root", level, policy or TrustPolicy())],
            log_keys=[self.log.public_key()] if logs else [],
        )
        store.add_certificate(self.ca.cert)
        if crls:
            store.add_crl(crl(self.root))
            store.add_crl(crl(self.ca))
        return store


@pytest.fixture(scope="module")
def pki() -> Pki:
    log = SigningKey.generate()
    root_ca = root()
    ca = intermediate(root_ca)
    return Pki(log, root_ca, ca, leaf(ca, log=log))


def rejected(
    chain: Sequence[x509.Certificate], store: TrustStore, **kw: object
) -> CertificateRejected:
    kw.setdefault("at", NOW)
    with pytest.raises(CertificateRejected) as info:
        validate(chain, store, **kw)  # type: ignore[arg-type]
    return info.value


# --- good chains ----------------------------------------------------------------------------------


def test_full_trust_with_crls_and_sct(pki: Pki) -> None:
    report = validate(pki.chain, pki.store(), at=NOW, purpose=Purpose.SERVER)
    assert isinstance(report, ValidationReport)
    assert report.trust_level is TrustLevel.FULL
    assert report.anchor == "root"
    assert report.path == (pki.node.cert, pki.ca.cert, pki.root.cert)
    assert report.notes == ()
    assert report.peer_id == pki.node.public.key_id


@pytest.mark.parametrize("purpose", list(Purpose))
def test_node_certificate_serves_every_purpose(pki: Pki, purpose: Purpose) -> None:
    report = validate(pki.chain, pki.store(), at=NOW, purpose=purpose)
    assert report.trust_level is TrustLevel.FULL


@pytest.mark.parametrize("kind", [CertificateKind.SERVICE, CertificateKind.ASSET])
def test_service_and_asset_certificates_validate_for_any(pki: Pki, kind: CertificateKind) -> None:
    other = leaf(pki.ca, kind=kind, name=f"thing.{NAMESPACE}", log=pki.log)
    report = validate([other.cert, pki.ca.cert], pki.store(), at=NOW)
    assert report.trust_level is TrustLevel.FULL


def test_service_certificate_is_a_tls_server_and_client(pki: Pki) -> None:
    service = leaf(pki.ca, kind=CertificateKind.SERVICE, name=f"api.{NAMESPACE}", log=pki.log)
    for purpose in (Purpose.SERVER, Purpose.CLIENT):
        report = validate([service.cert, pki.ca.cert], pki.store(), at=NOW, purpose=purpose)
        assert report.trust_level is TrustLevel.FULL


@pytest.mark.parametrize("purpose", [Purpose.SERVER, Purpose.CLIENT])
def test_asset_certificate_is_not_a_tls_peer(pki: Pki, purpose: Purpose) -> None:
    asset = leaf(pki.ca, kind=CertificateKind.ASSET, name=f"car.{NAMESPACE}", log=pki.log)
    error = rejected([asset.cert, pki.ca.cert], pki.store(), purpose=purpose)
    assert error.reason is R.PURPOSE_MISMATCH
    assert error.index == 0


def test_root_may_be_presented_and_chain_order_does_not_matter(pki: Pki) -> None:
    chain = [pki.node.cert, pki.root.cert, pki.ca.cert]
    report = validate(chain, pki.store(), at=NOW)
    assert report.path == (pki.node.cert, pki.ca.cert, pki.root.cert)


def test_intermediate_from_the_store_completes_the_path(pki: Pki) -> None:
    report = validate([pki.node.cert], pki.store(), at=NOW)
    assert report.trust_level is TrustLevel.FULL
    assert len(report.path) == 3


def test_anchor_itself_validates(pki: Pki) -> None:
    report = validate([pki.root.cert], pki.store(), at=NOW)
    assert report.path == (pki.root.cert,)
    assert report.anchor == "root"


def test_missing_crls_degrade_to_partial(pki: Pki) -> None:
    store = pki.store(crls=False)
    report = validate(pki.chain, store, at=NOW)
    assert report.trust_level is TrustLevel.PARTIAL
    assert len(report.notes) == 2
    assert all("revocation status" in note for note in report.notes)


def test_missing_sct_degrades_to_partial(pki: Pki) -> None:
    plain = leaf(pki.ca)
    report = validate([plain.cert, pki.ca.cert], pki.store(), at=NOW)
    assert report.trust_level is TrustLevel.PARTIAL
    assert any("no signed certificate timestamp" in note for note in report.notes)


def test_anchor_level_caps_the_result(pki: Pki) -> None:
    report = validate(pki.chain, pki.store(level=TrustLevel.PARTIAL), at=NOW)
    assert report.trust_level is TrustLevel.PARTIAL


def test_empty_chain_is_missing(pki: Pki) -> None:
    assert rejected([], pki.store()).reason is R.MISSING


# --- signatures and keys --------------------------------------------------------------------------


def test_changed_byte_in_classical_signature(pki: Pki) -> None:
    data = bytearray(der_of(pki.node.cert))
    data[-5] ^= 0x01  # inside the outer Ed25519 signature BIT STRING
    tampered = x509.load_der_x509_certificate(bytes(data))
    error = rejected([tampered, pki.ca.cert], pki.store())
    assert error.reason is R.CLASSICAL_SIGNATURE_INVALID
    assert error.index == 0


def test_changed_byte_in_alternative_signature(pki: Pki) -> None:
    tbs = pki.node.cert.tbs_certificate_bytes
    alt = alt_signature(pki.node.cert)
    changed = bytearray(alt)
    changed[len(changed) // 2] ^= 0x01
    tampered = resign(pki.node.cert, pki.ca, replace_bytes(tbs, alt, bytes(changed)))
    error = rejected([tampered, pki.ca.cert], pki.store())
    assert error.reason is R.ALT_SIGNATURE_INVALID
    assert error.index == 0


def test_changed_byte_in_intermediate_signatures(pki: Pki) -> None:
    data = bytearray(der_of(pki.ca.cert))
    data[-3] ^= 0x80
    tampered = x509.load_der_x509_certificate(bytes(data))
    store = TrustStore([TrustAnchor(pki.root.cert, "root")], log_keys=[pki.log.public_key()])
    error = rejected([pki.node.cert, tampered], store)
    assert error.reason is R.CLASSICAL_SIGNATURE_INVALID
    assert error.index == 1


def test_swapped_alt_key_in_der(pki: Pki) -> None:
    other = SigningKey.generate().public_key()
    data = replace_bytes(der_of(pki.node.cert), falcon_raw(pki.node.public), falcon_raw(other))
    tampered = x509.load_der_x509_certificate(data)
    error = rejected([tampered, pki.ca.cert], pki.store())
    assert error.reason is R.ALT_KEY_MISMATCH
    assert error.index == 0


def test_swapped_alt_key_of_intermediate_resigned_classically(pki: Pki) -> None:
    """The attacker owns the root's classical key: only the key binding and the alt
    signature can notice."""
    other = SigningKey.generate().public_key()
    tbs = replace_bytes(
        pki.ca.cert.tbs_certificate_bytes, falcon_raw(pki.ca.public), falcon_raw(other)
    )
    tampered = resign(pki.ca.cert, pki.root, tbs)
    error = rejected([pki.node.cert, tampered], pki.store(crls=False))
    assert error.reason is R.ALT_KEY_MISMATCH
    assert error.index == 1


def test_swapped_alt_key_without_key_identifier_fails_the_alt_signature(pki: Pki) -> None:
    """Without a subjectKeyIdentifier to bind it, a swapped alternative key is caught by the
    alternative signature, which covers it."""
    bare = custom(
        pki.ca,
        [ExtensionSpec(x509.BasicConstraints(ca=False, path_length=None), critical=True)],
    )
    other = SigningKey.generate().public_key()
    tbs = replace_bytes(bare.cert.tbs_certificate_bytes, falcon_raw(bare.public), falcon_raw(other))
    tampered = resign(bare.cert, pki.ca, tbs)
    error = rejected([tampered, pki.ca.cert], pki.store())
    assert error.reason is R.ALT_SIGNATURE_INVALID
    assert error.index == 0


def test_leaf_signed_by_another_key_of_the_same_name(pki: Pki) -> None:
    impostor = intermediate(pki.root)  # same name "dmv", different key
    forged = leaf(impostor)
    # The forged leaf names its real issuer key in its AKI: no presented CA matches it.
    error = rejected([forged.cert, pki.ca.cert], pki.store())
    assert error.reason is R.UNTRUSTED_ROOT


# --- validity -------------------------------------------------------------------------------------


def test_expired(pki: Pki) -> None:
    old = leaf(pki.ca, log=pki.log, not_before=NOW - 3 * DAY, not_after=NOW - HOUR)
    error = rejected([old.cert, pki.ca.cert], pki.store())
    assert error.reason is R.EXPIRED
    assert error.index == 0


def test_not_yet_valid(pki: Pki) -> None:
    early = leaf(pki.ca, log=pki.log, not_before=NOW + HOUR)
    error = rejected([early.cert, pki.ca.cert], pki.store())
    assert error.reason is R.NOT_YET_VALID
    assert error.index == 0


def test_expired_within_skew_is_accepted(pki: Pki) -> None:
    old = leaf(pki.ca, log=pki.log, not_before=NOW - DAY, not_after=NOW - timedelta(minutes=2))
    report = validate([old.cert, pki.ca.cert], pki.store(), at=NOW)
    assert report.trust_level is TrustLevel.FULL
    error = rejected([old.cert, pki.ca.cert], pki.store(), clock_skew=timedelta(0))
    assert error.reason is R.EXPIRED


def test_not_yet_valid_within_skew_is_accepted(pki: Pki) -> None:
    early = leaf(pki.ca, log=pki.log, not_before=NOW + timedelta(minutes=2))
    report = validate([early.cert, pki.ca.cert], pki.store(), at=NOW)
    assert report.trust_level is TrustLevel.FULL
    error = rejected([early.cert, pki.ca.cert], pki.store(), clock_skew=timedelta(minutes=1))
    assert error.reason is R.NOT_YET_VALID


def test_expired_intermediate(pki: Pki) -> None:
    old_ca = intermediate(pki.root, not_before=NOW - 10 * DAY, not_after=NOW - DAY)
    node = leaf(old_ca, log=pki.log)
    store = TrustStore([TrustAnchor(pki.root.cert, "root")])
    error = rejected([node.cert, old_ca.cert], store)
    assert error.reason is R.EXPIRED
    assert error.index == 1


def test_clock_skew_is_bounded(pki: Pki) -> None:
    with pytest.raises(ValueError, match="clock skew"):
        validate(pki.chain, pki.store(), at=NOW, clock_skew=MAX_CLOCK_SKEW + HOUR)
    with pytest.raises(ValueError, match="clock skew"):
        validate(pki.chain, pki.store(), at=NOW, clock_skew=-HOUR)
    with pytest.raises(ValueError, match="timezone"):
        validate(pki.chain, pki.store(), at=NOW.replace(tzinfo=None))


# --- basic constraints, key usage, EKU ------------------------------------------------------------


def _ca_like(issuer: Cert, *, ca: bool | None, key_usage: x509.KeyUsage | None = None) -> Cert:
    specs: list[ExtensionSpec] = []
    if ca is not None:
        specs.append(ExtensionSpec(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if key_usage is not None:
        specs.append(ExtensionSpec(key_usage, critical=True))
    return make(
        ca_subject("fake-ca"),
        issuer,
        lambda subject, by: [
            *specs,
            ExtensionSpec(x509.SubjectKeyIdentifier(key_identifier(subject)), False),
            ExtensionSpec(x509.AuthorityKeyIdentifier(key_identifier(by), None, None), False),
        ],
    )


@pytest.mark.parametrize("ca_flag", [False, None])
def test_ca_flag_missing(pki: Pki, ca_flag: bool | None) -> None:
    fake = _ca_like(pki.root, ca=ca_flag)
    node = leaf(fake, log=pki.log)
    error = rejected([node.cert, fake.cert], pki.store())
    assert error.reason is R.NOT_A_CA
    assert error.index == 1


def test_issuer_without_key_cert_sign(pki: Pki) -> None:
    usage = x509.KeyUsage(True, False, False, False, False, False, True, False, False)
    fake = _ca_like(pki.root, ca=True, key_usage=usage)
    node = leaf(fake, log=pki.log)
    error = rejected([node.cert, fake.cert], pki.store())
    assert error.reason is R.KEY_USAGE_MISMATCH
    assert error.index == 1


def test_path_length_of_intermediate_exceeded(pki: Pki) -> None:
    sub = intermediate(pki.ca, "sub", namespace=f"sub.{NAMESPACE}")  # ca has pathLen 0
    node = leaf(sub, name=f"n.sub.{NAMESPACE}", log=pki.log)
    error = rejected([node.cert, sub.cert, pki.ca.cert], pki.store())
    assert error.reason is R.PATH_LENGTH_EXCEEDED
    assert error.index == 2


def test_path_length_of_root_exceeded(pki: Pki) -> None:
    short = root("short", path_length=0)
    ca = intermediate(short)
    node = leaf(ca, log=pki.log)
    store = TrustStore([TrustAnchor(short.cert, "short")])
    error = rejected([node.cert, ca.cert], store)
    assert error.reason is R.PATH_LENGTH_EXCEEDED
    assert error.index is None  # the anchor's certificate was not presented


def test_path_length_within_limit(pki: Pki) -> None:
    ca = intermediate(pki.root, "deep", path_length=1)
    sub = intermediate(ca, "sub", namespace=f"sub.{NAMESPACE}")
    node = leaf(sub, name=f"n.sub.{NAMESPACE}", log=pki.log)
    report = validate([node.cert, sub.cert, ca.cert], pki.store(crls=False), at=NOW)
    assert len(report.path) == 4


def test_anchor_max_chain_length(pki: Pki) -> None:
    store = pki.store(policy=TrustPolicy(max_chain_length=2))
    assert rejected(pki.chain, store).reason is R.PATH_LENGTH_EXCEEDED
    store = pki.store(policy=TrustPolicy(max_chain_length=3))
    assert validate(pki.chain, store, at=NOW).trust_level is TrustLevel.FULL


def test_leaf_key_usage_without_digital_signature(pki: Pki) -> None:
    usage = x509.KeyUsage(False, True, False, False, False, False, False, False, False)
    odd = custom(pki.ca, [ExtensionSpec(usage, critical=True)])
    error = rejected([odd.cert, pki.ca.cert], pki.store(), purpose=Purpose.SERVER)
    assert error.reason is R.KEY_USAGE_MISMATCH
    assert validate([odd.cert, pki.ca.cert], pki.store(crls=False), at=NOW)


def test_eku_mismatch(pki: Pki) -> None:
    client_only = custom(
        pki.ca, [ExtensionSpec(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)]
    )
    chain = [client_only.cert, pki.ca.cert]
    assert rejected(chain, pki.store(), purpose=Purpose.SERVER).reason is R.PURPOSE_MISMATCH
    assert validate(chain, pki.store(crls=False), at=NOW, purpose=Purpose.CLIENT)


def test_anchor_allowed_ekus(pki: Pki) -> None:
    policy = TrustPolicy(allowed_ekus=frozenset({ASSET_EKU}))
    store = pki.store(policy=policy)
    error = rejected(pki.chain, store)
    assert error.reason is R.PURPOSE_MISMATCH  # the node has serverAuth + clientAuth only
    asset = leaf(pki.ca, kind=CertificateKind.ASSET, name=f"car.{NAMESPACE}", log=pki.log)
    assert validate([asset.cert, pki.ca.cert], store, at=NOW).trust_level is TrustLevel.FULL
    error = rejected([asset.cert, pki.ca.cert], store, purpose=Purpose.SERVER)
    assert error.reason is R.PURPOSE_MISMATCH


def test_unsupported_critical_extension(pki: Pki) -> None:
    private = x509.ObjectIdentifier(oids.TRUSTCHAIN_ARC + ".99.1")
    odd = custom(pki.ca, [ExtensionSpec(x509.UnrecognizedExtension(private, b"\x05\x00"), True)])
    error = rejected([odd.cert, pki.ca.cert], pki.store())
    assert error.reason is R.UNSUPPORTED_CRITICAL_EXTENSION
    assert error.index == 0
    # the same extension, non-critical, is ignored
    fine = custom(pki.ca, [ExtensionSpec(x509.UnrecognizedExtension(private, b"\x05\x00"), False)])
    assert validate([fine.cert, pki.ca.cert], pki.store(), at=NOW)


def test_malformed_extension(pki: Pki) -> None:
    odd = custom(
        pki.ca, [ExtensionSpec(x509.UnrecognizedExtension(ExtensionOID.KEY_USAGE, b"\x01"), True)]
    )
    error = rejected([odd.cert, pki.ca.cert], pki.store())
    assert error.reason is R.MALFORMED
    assert error.index == 0


def test_certificate_without_alternative_key_is_malformed(pki: Pki) -> None:
    bare = (
        _builder(leaf_subject("x"), pki.ca.cert.subject, NOW - DAY, NOW + DAY)
        .public_key(hybrid.classical_private_key(pki.ca.key).public_key())
        .sign(hybrid.classical_private_key(pki.ca.key), None)
    )
    error = rejected([bare, pki.ca.cert], pki.store())
    assert error.reason is R.MALFORMED


# --- name constraints -----------------------------------------------------------------------------


def test_dns_name_outside_namespace(pki: Pki) -> None:
    node = leaf(pki.ca, name="node1.bank.hypermesh", log=pki.log)
    error = rejected([node.cert, pki.ca.cert], pki.store())
    assert error.reason is R.NAME_CONSTRAINTS_VIOLATED
    assert error.index == 0
    assert "bank.hypermesh" in error.detail


def test_dns_name_that_only_ends_like_the_namespace(pki: Pki) -> None:
    node = leaf(pki.ca, name="evildmv.hypermesh", log=pki.log)
    assert rejected([node.cert, pki.ca.cert], pki.store()).reason is R.NAME_CONSTRAINTS_VIOLATED


def test_ip_outside_permitted_ranges(pki: Pki) -> None:
    node = leaf(pki.ca, ips=[ipaddress.ip_address("192.168.1.1")], log=pki.log)
    error = rejected([node.cert, pki.ca.cert], pki.store())
    assert error.reason is R.NAME_CONSTRAINTS_VIOLATED
    assert "192.168.1.1" in error.detail


def test_ipv6_address_is_outside_ipv4_only_ranges(pki: Pki) -> None:
    """IPv4 and IPv6 are one name form (iPAddress): IPv4 ranges alone permit no IPv6."""
    node = leaf(pki.ca, ips=[ipaddress.ip_address("2001:db8::1")], log=pki.log)
    error = rejected([node.cert, pki.ca.cert], pki.store())
    assert error.reason is R.NAME_CONSTRAINTS_VIOLATED
    unconstrained = intermediate(pki.root, ip_networks=())
    node = leaf(unconstrained, ips=[ipaddress.ip_address("2001:db8::1")], log=pki.log)
    assert validate([node.cert, unconstrained.cert], pki.store(), at=NOW)


def test_uri_outside_permitted_hosts(pki: Pki) -> None:
    node = leaf(pki.ca, uri="https://bank.example/account", log=pki.log)
    error = rejected([node.cert, pki.ca.cert], pki.store())
    assert error.reason is R.NAME_CONSTRAINTS_VIOLATED
    assert "bank.example" in error.detail


def test_uri_without_host_is_outside_every_subtree(pki: Pki) -> None:
    node = leaf(pki.ca, uri="urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66", log=pki.log)
    assert rejected([node.cert, pki.ca.cert], pki.store()).reason is R.NAME_CONSTRAINTS_VIOLATED


def _constrained_ca(
    issuer: Cert,
    permitted: Sequence[x509.GeneralName] | None,
    excluded: Sequence[x509.GeneralName] | None,
    path_length: int | None = 0,
) -> Cert:
    constraints = x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded)
    return make(
        ca_subject("constrained"),
        issuer,
        lambda subject, by: [
            ExtensionSpec(x509.BasicConstraints(ca=True, path_length=path_length), True),
            ExtensionSpec(constraints, True),
            ExtensionSpec(x509.SubjectKeyIdentifier(key_identifier(subject)), False),
            ExtensionSpec(x509.AuthorityKeyIdentifier(key_identifier(by), None, None), False),
        ],
    )


def _san_leaf(issuer: Cert, names: Sequence[x509.GeneralName]) -> Cert:
    return custom(issuer, [ExtensionSpec(x509.SubjectAlternativeName(names), False)])


@pytest.mark.parametrize(
    ("permitted", "excluded", "name", "ok"),
    [
        # dNSName: the constraint and below; a leading dot: strictly below
        ([x509.DNSName("example.com")], None, x509.DNSName("example.com"), True),
        ([x509.DNSName("example.com")], None, x509.DNSName("a.b.EXAMPLE.com"), True),
        ([x509.DNSName("example.com")], None, x509.DNSName("badexample.com"), False),
        ([x509.DNSName(".example.com")], None, x509.DNSName("example.com"), False),
        ([x509.DNSName(".example.com")], None, x509.DNSName("a.example.com"), True),
        ([x509.DNSName("example.com")], None, x509.DNSName("*.example.com"), True),
        ([x509.DNSName("a.example.com")], None, x509.DNSName("*.example.com"), False),
        (None, [x509.DNSName("secret.example.com")], x509.DNSName("*.example.com"), False),
        (None, [x509.DNSName("secret.example.com")], x509.DNSName("open.example.com"), True),
        (None, [x509.DNSName("example.com")], x509.DNSName("x.example.com"), False),
        ([x509.DNSName("")], None, x509.DNSName("anything.org"), True),
        # iPAddress
        ([x509.IPAddress(NETWORK)], None, x509.IPAddress(LEAF_IP), True),
        (
            [x509.IPAddress(ipaddress.ip_network("10.1.0.0/16"))],
            [x509.IPAddress(ipaddress.ip_network("10.1.2.0/24"))],
            x509.IPAddress(LEAF_IP),
            False,
        ),
        # URI: host only; no automatic subdomains without a leading dot
        (
            [x509.UniformResourceIdentifier("service")],
            None,
            x509.UniformResourceIdentifier("hypermesh://service/ab"),
            True,
        ),
        (
            [x509.UniformResourceIdentifier("host.example")],
            None,
            x509.UniformResourceIdentifier("https://sub.host.example/"),
            False,
        ),
        (
            [x509.UniformResourceIdentifier(".host.example")],
            None,
            x509.UniformResourceIdentifier("https://sub.host.example/"),
            True,
        ),
        (
            None,
            [x509.UniformResourceIdentifier("evil.example")],
            x509.UniformResourceIdentifier("https://EVIL.example:443/x"),
            False,
        ),
        # rfc822Name
        ([x509.RFC822Name("example.com")], None, x509.RFC822Name("me@example.com"), True),
        ([x509.RFC822Name("example.com")], None, x509.RFC822Name("me@sub.example.com"), False),
        ([x509.RFC822Name(".example.com")], None, x509.RFC822Name("me@sub.example.com"), True),
        ([x509.RFC822Name("you@example.com")], None, x509.RFC822Name("me@example.com"), False),
        # a form with no constraint of its own is unconstrained
        ([x509.DNSName("example.com")], None, x509.IPAddress(LEAF_IP), True),
        # a constrained form TrustChain cannot check is refused
        (
            [x509.RegisteredID(x509.ObjectIdentifier("1.2.3"))],
            None,
            x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4")),
            False,
        ),
    ],
)
def test_name_constraint_matching(
    pki: Pki,
    permitted: list[x509.GeneralName] | None,
    excluded: list[x509.GeneralName] | None,
    name: x509.GeneralName,
    ok: bool,
) -> None:
    ca = _constrained_ca(pki.root, permitted, excluded)
    subject = _san_leaf(ca, [name])
    chain = [subject.cert, ca.cert]
    store = TrustStore([TrustAnchor(pki.root.cert, "root")])
    if ok:
        assert validate(chain, store, at=NOW).anchor == "root"
    else:
        error = rejected(chain, store)
        assert error.reason is R.NAME_CONSTRAINTS_VIOLATED
        assert error.index == 0


def test_directory_name_constraint_applies_to_the_subject(pki: Pki) -> None:
    allowed = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "DMV")])
    ca = _constrained_ca(pki.root, [x509.DirectoryName(allowed)], None)
    store = TrustStore([TrustAnchor(pki.root.cert, "root")])
    inside = make(
        x509.Name([*allowed, x509.NameAttribute(NameOID.COMMON_NAME, "clerk")]),
        ca,
        lambda _s, _i: [],
    )
    assert validate([inside.cert, ca.cert], store, at=NOW)
    outside = make(leaf_subject("clerk"), ca, lambda _s, _i: [])
    assert rejected([outside.cert, ca.cert], store).reason is R.NAME_CONSTRAINTS_VIOLATED


def test_anchor_name_constraints_apply(pki: Pki) -> None:
    """An anchor's own name constraints bind the whole federation below it."""
    constrained = _constrained_ca(pki.root, [x509.DNSName("other.hypermesh")], None, None)
    sub = intermediate(constrained, ip_networks=())
    node = leaf(sub, ips=(), log=pki.log)
    store = TrustStore([TrustAnchor(constrained.cert, "constrained")])
    error = rejected([node.cert, sub.cert], store)
    assert error.reason is R.NAME_CONSTRAINTS_VIOLATED
    assert error.index == 0


# --- identity -------------------------------------------------------------------------------------


def test_identity_matching(pki: Pki) -> None:
    store = pki.store()
    node_uri = oids.hypermesh_uri("node", pki.node.public.key_id)
    for kw in (
        {"dns_name": LEAF_NAME},
        {"dns_name": LEAF_NAME.upper() + "."},
        {"ip": "10.1.2.3"},
        {"ip": LEAF_IP},
        {"uri": node_uri},
        {"peer_id": pki.node.public.key_id},
    ):
        assert validate(pki.chain, store, at=NOW, **kw).trust_level is TrustLevel.FULL
    for kw in (
        {"dns_name": f"node2.{NAMESPACE}"},
        {"ip": "10.1.2.4"},
        {"uri": oids.hypermesh_uri("node", bytes(32))},
        {"peer_id": bytes(32)},
    ):
        assert rejected(pki.chain, store, **kw).reason is R.IDENTITY_MISMATCH


def test_wildcard_dns_identity(pki: Pki) -> None:
    wild = leaf(pki.ca, dns_names=[f"*.web.{NAMESPACE}"], log=pki.log)
    chain = [wild.cert, pki.ca.cert]
    assert validate(chain, pki.store(), at=NOW, dns_name=f"a.web.{NAMESPACE}")
    for name in (f"web.{NAMESPACE}", f"a.b.web.{NAMESPACE}"):
        assert rejected(chain, pki.store(), dns_name=name).reason is R.IDENTITY_MISMATCH


def test_node_uri_must_name_the_certified_key(pki: Pki) -> None:
    liar = leaf(pki.ca, uri=oids.hypermesh_uri("node", pki.node.public.key_id), log=pki.log)
    error = rejected([liar.cert, pki.ca.cert], pki.store())
    assert error.reason is R.IDENTITY_MISMATCH
    assert error.index == 0


# --- revocation -----------------------------------------------------------------------------------


def test_revoked_after_crl_added(pki: Pki) -> None:
    store = pki.store()
    node = leaf(pki.ca, log=pki.log)
    chain = [node.cert, pki.ca.cert]
    assert validate(chain, store, at=NOW).trust_level is TrustLevel.FULL
    store.add_crl(
        crl(pki.ca, [(node.cert.serial_number, x509.ReasonFlags.key_compromise)], number=2)
    )
    error = rejected(chain, store)
    assert error.reason is R.REVOKED
    assert error.index == 0
    assert error.revocation_reason == "keyCompromise"
    assert validate(pki.chain, store, at=NOW).trust_level is TrustLevel.FULL  # others unaffected


def test_revoked_without_reason_code(pki: Pki) -> None:
    store = pki.store()
    store.add_crl(crl(pki.ca, [(pki.node.cert.serial_number, None)], number=2))
    error = rejected(pki.chain, store)
    assert error.reason is R.REVOKED
    assert error.revocation_reason is None


def test_revoked_intermediate(pki: Pki) -> None:
    store = pki.store()
    store.add_crl(
        crl(pki.root, [(pki.ca.cert.serial_number, x509.ReasonFlags.ca_compromise)], number=2)
    )
    error = rejected(pki.chain, store)
    assert error.reason is R.REVOKED
    assert error.index == 1
    assert error.revocation_reason == "cACompromise"


def test_shard_crl_covers_only_its_shard(pki: Pki) -> None:
    store = pki.store(crls=False)
    store.add_crl(crl(pki.root))
    store.add_crl(crl(pki.ca, shard=1))
    report = validate(pki.chain, store, at=NOW)  # the node is in shard 0
    assert report.trust_level is TrustLevel.PARTIAL
    store.add_crl(crl(pki.ca, shard=0))
    assert validate(pki.chain, store, at=NOW).trust_level is TrustLevel.FULL


def test_revoked_on_shard_crl(pki: Pki) -> None:
    store = pki.store(crls=False)
    store.add_crl(crl(pki.root))
    store.add_crl(crl(pki.ca, [(pki.node.cert.serial_number, None)], shard=0))
    assert rejected(pki.chain, store).reason is R.REVOKED


def test_revocation_unknown_when_required(pki: Pki) -> None:
    policy = TrustPolicy(require_revocation_info=True)
    assert rejected(pki.chain, pki.store(policy=policy, crls=False)).reason is (
        R.REVOCATION_UNKNOWN
    )
    assert validate(pki.chain, pki.store(policy=policy), at=NOW).trust_level is TrustLevel.FULL


def test_outdated_crl_leaves_the_status_unknown(pki: Pki) -> None:
    policy = TrustPolicy(require_revocation_info=True)
    store = pki.store(policy=policy, crls=False)
    store.add_crl(crl(pki.root))
    store.add_crl(crl(pki.ca, this_update=NOW - 3 * HOUR, next_update=NOW - 2 * HOUR))
    assert rejected(pki.chain, store).reason is R.REVOCATION_UNKNOWN
    store.add_crl(crl(pki.ca, number=2))
    assert validate(pki.chain, store, at=NOW).trust_level is TrustLevel.FULL


def test_revocation_listed_on_an_outdated_crl_still_counts(pki: Pki) -> None:
    store = pki.store(crls=False)
    store.add_crl(
        crl(
            pki.ca,
            [(pki.node.cert.serial_number, x509.ReasonFlags.superseded)],
            this_update=NOW - 3 * HOUR,
            next_update=NOW - 2 * HOUR,
        )
    )
    assert rejected(pki.chain, store).reason is R.REVOKED


# --- transparency ---------------------------------------------------------------------------------


def test_sct_required_and_missing(pki: Pki) -> None:
    plain = leaf(pki.ca)
    store = pki.store(policy=TrustPolicy(require_sct=True))
    error = rejected([plain.cert, pki.ca.cert], store)
    assert error.reason is R.SCT_MISSING
    assert error.index == 0


def test_sct_required_and_present(pki: Pki) -> None:
    store = pki.store(policy=TrustPolicy(require_sct=True))
    assert validate(pki.chain, store, at=NOW).trust_level is TrustLevel.FULL


def test_sct_from_untrusted_log(pki: Pki) -> None:
    store = pki.store(policy=TrustPolicy(require_sct=True), logs=False)
    assert rejected(pki.chain, store).reason is R.SCT_UNTRUSTED_LOG
    relaxed = pki.store(logs=False)
    report = validate(pki.chain, relaxed, at=NOW)
    assert report.trust_level is TrustLevel.PARTIAL
    assert any("untrusted logs" in note for note in report.notes)


def test_sct_over_another_certificate(pki: Pki) -> None:
    """An SCT copied from another certificate does not commit to this one's log entry."""
    stolen = embedded_sct.embedded_scts(pki.node.cert)
    plain = leaf(pki.ca)
    builder = _builder(leaf_subject(LEAF_NAME), pki.ca.cert.subject, NOW - DAY, NOW + DAY)
    for extension in plain.cert.extensions:
        if extension.oid.dotted_string.startswith("2.5.29.7"):
            continue  # the alternative-key extensions; build_certificate adds them
        builder = builder.add_extension(extension.value, critical=extension.critical)
    builder = embedded_sct.with_scts(builder, stolen)
    thief = hybrid.build_certificate(builder, subject_key=plain.public, issuer_key=pki.ca.key)
    store = pki.store(policy=TrustPolicy(require_sct=True))
    error = rejected([thief, pki.ca.cert], store)
    assert error.reason is R.SCT_INVALID
    assert "another entry" in error.detail


def test_sct_with_bad_signature(pki: Pki) -> None:
    impostor_log = SigningKey.generate()
    node = leaf(pki.ca, log=impostor_log)
    (sct,) = embedded_sct.embedded_scts(node.cert)
    # Trust a log with the impostor's id but another key: the signature cannot verify.
    store = pki.store(policy=TrustPolicy(require_sct=True))
    assert rejected([node.cert, pki.ca.cert], store).reason is R.SCT_UNTRUSTED_LOG
    store.add_log_key(impostor_log.public_key())
    assert validate([node.cert, pki.ca.cert], store, at=NOW).trust_level is TrustLevel.FULL
    assert sct.log_id == impostor_log.public_key().key_id


def test_sct_dated_in_the_future(pki: Pki) -> None:
    store = pki.store(policy=TrustPolicy(require_sct=True))
    error = rejected(pki.chain, store, at=NOW - 3 * HOUR, clock_skew=timedelta(0))
    assert error.reason is R.SCT_INVALID
    assert "future" in error.detail


# --- paths, anchors, levels -----------------------------------------------------------------------


def test_no_path_to_an_anchor(pki: Pki) -> None:
    other = root("other")
    ca = intermediate(other)
    node = leaf(ca, log=pki.log)
    error = rejected([node.cert, ca.cert, other.cert], pki.store())
    assert error.reason is R.UNTRUSTED_ROOT


def test_missing_intermediate(pki: Pki) -> None:
    store = TrustStore([TrustAnchor(pki.root.cert, "root")])
    error = rejected([pki.node.cert], store)
    assert error.reason is R.UNTRUSTED_ROOT
    assert error.index == 0


def test_self_signed_leaf(pki: Pki) -> None:
    selfie = make(
        leaf_subject("me.example"),
        None,
        lambda subject, _: [
            ExtensionSpec(x509.BasicConstraints(ca=False, path_length=None), True),
            ExtensionSpec(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(oids.hypermesh_uri("node", subject.key_id))]
                ),
                False,
            ),
            ski(subject),
        ],
    )
    error = rejected([selfie.cert], pki.store())
    assert error.reason is R.UNTRUSTED_ROOT
    assert "self-signed" in error.detail
    report = validate([selfie.cert], pki.store(), at=NOW, allow_self_asserted=True)
    assert report.trust_level is TrustLevel.SELF_ASSERTED
    assert report.anchor is None
    assert report.path == (selfie.cert,)


def test_registered_certificate_caps_the_level(pki: Pki) -> None:
    store = pki.store()
    store.add_certificate(pki.ca.cert, max_trust_level=TrustLevel.PARTIAL)
    report = validate(pki.chain, store, at=NOW)
    assert report.trust_level is TrustLevel.PARTIAL
    assert any("caps trust" in note for note in report.notes)


def test_highest_anchor_wins(pki: Pki) -> None:
    """The same hierarchy reachable through two anchors: the more trusted one is reported."""
    store = TrustStore(
        [
            TrustAnchor(pki.root.cert, "root", TrustLevel.PARTIAL),
            TrustAnchor(pki.ca.cert, "dmv-pinned", TrustLevel.FULL),
        ],
        log_keys=[pki.log.public_key()],
    )
    store.add_crl(crl(pki.ca))
    report = validate(pki.chain, store, at=NOW)
    assert report.anchor == "dmv-pinned"
    assert report.trust_level is TrustLevel.FULL
    assert report.path == (pki.node.cert, pki.ca.cert)


# --- CA key rollover ------------------------------------------------------------------------------


def test_rollover_with_cross_certificate_then_retirement() -> None:
    log = SigningKey.generate()
    old_root = root("hm")
    new_root = root("hm")  # same name, new key
    bridge = cross(new_root, old_root)
    old_ca = intermediate(old_root)
    new_ca = intermediate(new_root)
    before = leaf(old_ca, log=log)
    after = leaf(new_ca, log=log)
    old_chain = [before.cert, old_ca.cert]
    new_chain = [after.cert, new_ca.cert, bridge]

    relying = TrustStore([TrustAnchor(old_root.cert, "hm-1")])
    assert validate(old_chain, relying, at=NOW).anchor == "hm-1"
    report = validate(new_chain, relying, at=NOW)
    assert report.anchor == "hm-1"
    assert report.path == (after.cert, new_ca.cert, bridge, old_root.cert)

    relying.add_anchor(TrustAnchor(new_root.cert, "hm-2"))
    assert validate(new_chain, relying, at=NOW).trust_level is TrustLevel.PARTIAL
    relying.remove_anchor("hm-1")  # the old root retires
    assert validate(new_chain, relying, at=NOW).anchor == "hm-2"
    assert validate(new_chain[:2], relying, at=NOW).anchor == "hm-2"
    error = rejected(old_chain, relying)
    assert error.reason is R.UNTRUSTED_ROOT


def test_cross_certificate_from_the_store(pki: Pki) -> None:
    new_root = root("root")
    new_ca = intermediate(new_root)
    node = leaf(new_ca, log=pki.log)
    store = pki.store()
    store.add_certificate(cross(new_root, pki.root))
    report = validate([node.cert, new_ca.cert], store, at=NOW)
    assert report.anchor == "root"
    assert len(report.path) == 4


# --- the real certificate authority ---------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = NOW - 30 * DAY

    def __call__(self) -> datetime:
        return self.now


def _authority(tmp_path: Path, clock: _Clock):  # type: ignore[no-untyped-def]
    from trustchain.ca.authority import CertificateAuthority
    from trustchain.crypto.keystore import KeyStore
    from trustchain.ct.log import TransparencyLog

    keystore = KeyStore.open(tmp_path / "keys", passphrase=b"test passphrase", create=True)
    log = TransparencyLog.open(
        tmp_path / "ct.db",
        SigningKey.generate(),
        clock=lambda: int(clock.now.timestamp() * 1000),
        sign_workers=1,
    )
    return CertificateAuthority(tmp_path, keystore, log, clock=clock), keystore, log


def _store_from(authority, log) -> TrustStore:  # type: ignore[no-untyped-def]
    anchors = [
        TrustAnchor(cert, f"root-{index}", policy=TrustPolicy(require_sct=True))
        for index, cert in enumerate(authority.export_root())
    ]
    return TrustStore(anchors, log_keys=[log.public_key])


def test_authority_chains_validate_and_revocation_applies(tmp_path: Path) -> None:
    clock = _Clock()
    authority, keystore, log = _authority(tmp_path, clock)
    with authority, keystore, log:
        authority.init_root("hm")
        authority.issue_intermediate("dmv", NAMESPACE, ip_networks=["10.0.0.0/8"])
        node = authority.issue("dmv", "node", LEAF_NAME, ip_addresses=["10.9.9.9"])
        store = _store_from(authority, log)
        chain = [node.certificate, *node.chain]
        for certificate in node.chain:
            store.add_certificate(certificate)
        at = clock.now
        report = validate(chain, store, at=at, purpose=Purpose.SERVER, dns_name=LEAF_NAME)
        assert report.trust_level is TrustLevel.PARTIAL  # no CRLs yet
        store.add_crl(authority.crl())
        store.add_crl(authority.crl("dmv", node.serial % 4))
        assert validate(chain, store, at=at).trust_level is TrustLevel.FULL
        authority.revoke(node.serial, "keyCompromise")
        store.add_crl(authority.crl("dmv", node.serial % 4))
        error = rejected(chain, store, at=at)
        assert error.reason is R.REVOKED
        assert error.revocation_reason == "keyCompromise"


def test_authority_root_rollover_and_retirement(tmp_path: Path) -> None:
    clock = _Clock()
    authority, keystore, log = _authority(tmp_path, clock)
    with authority, keystore, log:
        first = authority.init_root("hm")
        authority.issue_intermediate("dmv", NAMESPACE)
        before = authority.issue("dmv", "node", LEAF_NAME)
        old_anchor = TrustStore([TrustAnchor(first.certificate, "hm-old")])
        clock.now += DAY
        rolled = authority.rollover("hm")
        assert rolled.cross_certificate is not None
        authority.rollover("dmv")
        after = authority.issue("dmv", "node", f"node2.{NAMESPACE}")
        at = clock.now
        before_chain = [before.certificate, *before.chain]
        after_chain = [after.certificate, *after.chain]
        # a relying party that only knows the old root validates both
        assert validate(before_chain, old_anchor, at=at).anchor == "hm-old"
        assert validate(after_chain, old_anchor, at=at).anchor == "hm-old"
        # after retirement of the old keys, only the new chain validates
        new_only = TrustStore([TrustAnchor(rolled.certificate, "hm-new")])
        authority.retire("dmv", 1)
        authority.retire("hm", 1)
        new_only.add_crl(authority.crl())
        assert validate([after.certificate, *authority.chain_for(after.serial)], new_only, at=at)
        # as handed out before the rollover: the old dmv certificate chains to the old root only
        assert rejected(before_chain, new_only, at=at).reason is R.UNTRUSTED_ROOT
        # with the CA's current chain: the old dmv key's re-certification is revoked
        current = [before.certificate, *authority.chain_for(before.serial)]
        error = rejected(current, new_only, at=at)
        assert error.reason is R.REVOKED
        assert error.index == 1
        assert error.revocation_reason == "superseded"


# --- gRPC messages --------------------------------------------------------------------------------


def test_rejection_reasons_line_up_with_the_proto() -> None:
    for reason in RejectionReason:
        proto_name = f"REJECTION_REASON_{reason.name}"
        if reason < 100:
            assert common_pb2.RejectionReason.Value(proto_name) == int(reason)
        assert reason.proto_code in common_pb2.RejectionReason.values()
    assert R.ALT_SIGNATURE_INVALID.proto_code == common_pb2.REJECTION_REASON_INVALID_SIGNATURE
    assert R.NOT_YET_VALID.proto_code == common_pb2.REJECTION_REASON_EXPIRED
    assert R.SCT_MISSING.proto_code == common_pb2.REJECTION_REASON_MISSING


def test_trust_levels_line_up_with_the_proto() -> None:
    for level in TrustLevel:
        assert common_pb2.TrustLevel.Value(f"TRUST_LEVEL_{level.name}") == int(level)


def test_validation_result_message(pki: Pki) -> None:
    report = validate(pki.chain, pki.store(), at=NOW)
    result, level = validation_result_message(report)
    assert result.verdict == common_pb2.VERDICT_VALID
    assert not result.rejections
    assert level == common_pb2.TRUST_LEVEL_FULL
    error = CertificateRejected(R.ALT_SIGNATURE_INVALID, "bad falcon", 1)
    result, level = validation_result_message(error)
    assert result.verdict == common_pb2.VERDICT_REJECTED
    assert level == common_pb2.TRUST_LEVEL_UNTRUSTED
    (rejection,) = result.rejections
    assert rejection.proof_kind == common_pb2.PROOF_KIND_CERTIFICATE_CHAIN
    assert rejection.reason == common_pb2.REJECTION_REASON_INVALID_SIGNATURE
    assert rejection.detail == "ALT_SIGNATURE_INVALID (certificate 1): bad falcon"


def _request(chain: Sequence[bytes], **kw: object) -> security_pb2.ValidateCertificatesRequest:
    return security_pb2.ValidateCertificatesRequest(
        chain=common_pb2.CertificateChain(certificates=list(chain)),
        **kw,  # type: ignore[arg-type]
    )


def test_validate_certificates_response(pki: Pki) -> None:
    stores = {"": pki.store(), "strict": pki.store(policy=TrustPolicy(require_sct=True))}
    when = Timestamp()
    when.FromDatetime(NOW)
    encoded = [der_of(cert) for cert in pki.chain]
    response = validate_certificates_response(
        _request(encoded, validation_time=when, expected_peer_id=pki.node.public.key_id), stores
    )
    assert response.trust_level == common_pb2.TRUST_LEVEL_FULL
    assert response.result.verdict == common_pb2.VERDICT_VALID
    assert response.peer_id == pki.node.public.key_id

    response = validate_certificates_response(
        _request(encoded, validation_time=when, expected_peer_id=bytes(32)), stores
    )
    assert response.trust_level == common_pb2.TRUST_LEVEL_UNTRUSTED
    assert response.result.rejections[0].reason == common_pb2.REJECTION_REASON_IDENTITY_MISMATCH
    assert response.peer_id == pki.node.public.key_id

    response = validate_certificates_response(_request([b"\x30\x03junk"]), stores)
    assert response.result.rejections[0].reason == common_pb2.REJECTION_REASON_MALFORMED
    assert response.peer_id == b""

    response = validate_certificates_response(_request([]), stores)
    assert response.result.rejections[0].reason == common_pb2.REJECTION_REASON_MISSING

    with pytest.raises(UnknownTrustPolicy):
        validate_certificates_response(_request(encoded, policy="nope"), stores)


def test_report_is_frozen(pki: Pki) -> None:
    report = validate(pki.chain, pki.store(), at=NOW)
    with pytest.raises(AttributeError):
        report.trust_level = TrustLevel.UNTRUSTED  # type: ignore[misc]
    assert replace(report, notes=("x",)).notes == ("x",)


# --- the command line ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Home:
    path: Path
    node: Path
    asset: Path
    root: Path
    crl: Path


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """A TrustChain home with a CA (key-file key store), its CT log and two issued leaves."""
    from trustchain.ca.authority import CertificateAuthority
    from trustchain.crypto.keystore import KeyStore
    from trustchain.ct import commands as ct_commands
    from trustchain.ct.log import TransparencyLog

    path = tmp_path_factory.mktemp("home")
    with KeyStore.open(path, create=True) as keystore:
        signer = ct_commands.log_signer(keystore, path)
        with (
            TransparencyLog.open(ct_commands.log_path(path), signer, sign_workers=1) as log,
            CertificateAuthority(path, keystore, log) as authority,
        ):
            authority.init_root("hm")
            authority.issue_intermediate("dmv", NAMESPACE, ip_networks=["10.0.0.0/8"])
            node = authority.issue("dmv", "node", LEAF_NAME, ip_addresses=["10.1.1.1"])
            asset = authority.issue("dmv", "asset", f"car.{NAMESPACE}")
            roots = authority.export_root()
            crl_file = path / "root.crl"
            crl_file.write_bytes(authority.crl().public_bytes(Encoding.PEM))
    files = Home(path, path / "node.pem", path / "asset.pem", path / "root.pem", crl_file)
    files.node.write_bytes(node.pem())
    files.asset.write_bytes(asset.pem())
    files.root.write_bytes(b"".join(cert.public_bytes(Encoding.PEM) for cert in roots))
    return files


def run_verify(
    home_dir: Path, *argv: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """``trustchain --home HOME ca verify ARGV`` through the real CLI entry point."""
    from trustchain import cli

    status = cli.main(["--home", str(home_dir), "ca", "verify", *argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def no_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRUSTCHAIN_PASSPHRASE", raising=False)


@pytest.mark.usefixtures("no_passphrase")
def test_cli_verify_trusted(home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_verify(home.path, str(home.node), "--purpose", "server", capsys=capsys)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == "trust level: FULL"
    assert lines[1].startswith("anchor: hm")
    assert f"CN={LEAF_NAME}" in out
    assert "CN=dmv,O=TrustChain" in out


@pytest.mark.usefixtures("no_passphrase")
def test_cli_verify_options(home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_verify(
        home.path,
        str(home.node),
        "--require-sct",
        "--require-revocation",
        "--dns",
        LEAF_NAME,
        "--ip",
        "10.1.1.1",
        "--at",
        (datetime.now(UTC) + HOUR).strftime("%Y-%m-%dT%H:%M:%S"),
        capsys=capsys,
    )
    assert status == 0
    assert out.startswith("trust level: FULL")
    status, out, err = run_verify(home.path, str(home.node), "--no-home-crls", capsys=capsys)
    assert status == 0
    assert out.startswith("trust level: PARTIAL")
    assert "note: revocation status" in out
    status, out, err = run_verify(
        home.path, str(home.node), "--no-home-crls", "--require-revocation", capsys=capsys
    )
    assert status == 1
    assert out == "trust level: UNTRUSTED\n"
    assert "rejected: REVOCATION_UNKNOWN" in err


@pytest.mark.usefixtures("no_passphrase")
@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (("--purpose", "server"), "PURPOSE_MISMATCH"),
        (("--dns", f"other.{NAMESPACE}"), "IDENTITY_MISMATCH"),
        (("--at", "2999-01-01T00:00:00Z"), "EXPIRED"),
    ],
)
def test_cli_verify_rejections(
    home: Home, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], reason: str
) -> None:
    status, out, err = run_verify(home.path, str(home.asset), *argv, capsys=capsys)
    assert status == 1
    assert f"trustchain: rejected: {reason} (certificate 0): " in err
    assert out == "trust level: UNTRUSTED\n"


@pytest.mark.usefixtures("no_passphrase")
def test_cli_verify_revoked(home: Home, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trustchain.ca.authority import CertificateAuthority
    from trustchain.crypto.keystore import KeyStore

    with KeyStore.open(home.path) as keystore, CertificateAuthority(home.path, keystore) as ca:
        victim = ca.issue("dmv", "service", f"api.{NAMESPACE}")
        chain = tmp_path / "victim.pem"
        chain.write_bytes(victim.pem())
        assert run_verify(home.path, str(chain), capsys=capsys)[0] == 0
        ca.revoke(victim.serial, "keyCompromise")
    status, _, err = run_verify(home.path, str(chain), capsys=capsys)
    assert status == 1
    assert "rejected: REVOKED (certificate 0)" in err
    assert "keyCompromise" in err


@pytest.mark.usefixtures("no_passphrase")
def test_cli_verify_with_explicit_roots_and_crls(
    home: Home, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another machine: no CA in its home, the roots and a CRL given as files."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    argv = (str(home.node), "--root", str(home.root), "--crl", str(home.crl))
    status, out, err = run_verify(elsewhere, *argv, capsys=capsys)
    assert status == 0, err
    assert out.startswith("trust level: PARTIAL")  # no CRL of dmv, no known CT log
    status, _, err = run_verify(elsewhere, str(home.node), capsys=capsys)
    assert status == 1
    assert "no trust anchors" in err
    foreign = tmp_path / "foreign.pem"
    foreign.write_bytes(root("hm").cert.public_bytes(Encoding.PEM))
    status, _, err = run_verify(elsewhere, str(home.node), "--root", str(foreign), capsys=capsys)
    assert status == 1
    assert "rejected: UNTRUSTED_ROOT" in err


@pytest.mark.usefixtures("no_passphrase")
def test_cli_verify_malformed_input(
    home: Home, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    status, out, err = run_verify(home.path, str(junk), capsys=capsys)
    assert status == 1
    assert out == ""
    assert "malformed data" in err


@pytest.mark.usefixtures("no_passphrase")
def test_cli_main_runs_ca_verify_once_wired(home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    from trustchain import cli

    assert cli.main(["--home", str(home.path), "ca", "verify", str(home.node)]) == 0
    assert capsys.readouterr().out.startswith("trust level: FULL")
