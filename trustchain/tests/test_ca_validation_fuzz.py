"""Fuzzing trustchain.ca.validation and trustchain.ca.trust with hypothesis-mutated DER.

A real chain (root anchor -> entity CA -> node leaf with an SCT) and CRLs are built once. Each
example mutates the DER of one chain member (or of a CRL): flip bits, overwrite, insert,
delete, truncate, or splice in bytes from another certificate. Then either ``cryptography``
refuses to load it (``ValueError`` or ``InvalidVersion``), or validation raises a
trustchain.errors exception -- never any other exception type, and the mutated chain is never
trusted. Only the trust anchor is in the store, so every presented certificate matters. A last
property re-signs certificates (both signatures, the real keys) with one extension's DER
mutated, so the checks behind the signatures see malformed and odd values too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hypermesh_interfaces.v1 import common_pb2, security_pb2
from trustchain.ca import embedded_sct, hybrid, oids
from trustchain.ca.trust import TrustAnchor, TrustLevel, TrustPolicy, TrustStore, key_identifier
from trustchain.ca.validation import Purpose, validate, validate_certificates_response
from trustchain.crypto.signatures import SigningKey
from trustchain.ct.merkle import leaf_hash
from trustchain.ct.sct import SignedCertificateTimestamp
from trustchain.errors import CertificateRejected, TrustChainError

NOW = datetime(2031, 5, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
NAMESPACE = "dmv.hypermesh"

#: What ``cryptography`` raises when it refuses to load DER (InvalidVersion is no ValueError).
LOAD_ERRORS = (ValueError, x509.InvalidVersion)

FUZZ = settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@dataclass(frozen=True)
class Material:
    root: x509.Certificate
    ca: x509.Certificate
    leaf: x509.Certificate
    crl: x509.CertificateRevocationList
    log_key: SigningKey
    root_key: SigningKey
    ca_key: SigningKey
    leaf_key: SigningKey

    def store(self) -> TrustStore:
        return TrustStore(
            [TrustAnchor(self.root, "root", policy=TrustPolicy(require_sct=True))],
            log_keys=[self.log_key.public_key()],
        )


def _name(common_name: str, organization: str | None = "TrustChain") -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization is not None:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


@cache
def material() -> Material:
    """root -> dmv (name-constrained) -> node leaf (with an SCT), and the root's CRL."""
    log_key = SigningKey.generate()
    root_key, ca_key, leaf_key = (SigningKey.generate() for _ in range(3))

    def builder(
        subject: x509.Name, issuer: x509.Name, subject_key: SigningKey, issuer_key: SigningKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - DAY)
            .not_valid_after(NOW + DAY)
            .add_extension(
                x509.SubjectKeyIdentifier(key_identifier(subject_key.public_key())), False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier(key_identifier(issuer_key.public_key()), None, None),
                False,
            )
        )

    ca_usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    root_name, ca_name = _name("root"), _name("dmv")
    root = hybrid.build_certificate(
        builder(root_name, root_name, root_key, root_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(ca_usage, True),
        subject_key=root_key.public_key(),
        issuer_key=root_key,
    )
    constraints = x509.NameConstraints(
        [x509.DNSName(NAMESPACE), x509.UniformResourceIdentifier("node")], None
    )
    ca = hybrid.build_certificate(
        builder(ca_name, root_name, ca_key, root_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .add_extension(ca_usage, True)
        .add_extension(constraints, True),
        subject_key=ca_key.public_key(),
        issuer_key=root_key,
    )
    dns = f"node1.{NAMESPACE}"
    node_uri = oids.hypermesh_uri("node", leaf_key.public_key().key_id)
    leaf_builder = (
        builder(_name(dns, None), ca_name, leaf_key, ca_key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(dns), x509.UniformResourceIdentifier(node_uri)]
            ),
            False,
        )
    )
    entry = embedded_sct.precertificate_entry(leaf_builder, subject_key=leaf_key.public_key())
    sct = SignedCertificateTimestamp.issue(
        log_key,
        timestamp=int((NOW - DAY / 2).timestamp() * 1000),
        leaf_index=0,
        leaf_hash=leaf_hash(entry),
    )
    leaf = hybrid.build_certificate(
        embedded_sct.with_scts(leaf_builder, [sct]),
        subject_key=leaf_key.public_key(),
        issuer_key=ca_key,
    )
    crl = hybrid.build_crl(
        x509.CertificateRevocationListBuilder()
        .issuer_name(root_name)
        .last_update(NOW - DAY)
        .next_update(NOW + DAY)
        .add_extension(x509.CRLNumber(7), False)
        .add_extension(
            x509.AuthorityKeyIdentifier(key_identifier(root_key.public_key()), None, None), False
        )
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(12345)
            .revocation_date(NOW - DAY)
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), False)
            .build()
        ),
        issuer_key=root_key,
    )
    return Material(root, ca, leaf, crl, log_key, root_key, ca_key, leaf_key)


def _der(obj: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return obj.public_bytes(Encoding.DER)


# --- mutations ------------------------------------------------------------------------------------


Mutation = Callable[[bytes], bytes]


@st.composite
def mutations(draw: st.DrawFn) -> Mutation:
    """A change to a DER encoding (positions drawn as fractions, so one strategy fits all)."""
    kind = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate", "splice"]))
    where = draw(st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
    xor = draw(st.integers(min_value=1, max_value=255))
    chunk = draw(st.binary(min_size=1, max_size=8))
    count = draw(st.integers(min_value=1, max_value=64))

    def mutate(data: bytes) -> bytes:
        at = int(where * len(data))
        if kind == "flip":
            return data[:at] + bytes([data[at] ^ xor]) + data[at + 1 :]
        if kind == "overwrite":
            return data[:at] + chunk + data[at + len(chunk) :]
        if kind == "insert":
            return data[:at] + chunk + data[at:]
        if kind == "delete":
            return data[:at] + data[at + count :]
        if kind == "truncate":
            return data[:at]
        donor = _der(material().root)
        start = int(where * len(donor))
        return data[:at] + donor[start : start + count] + data[at + count :]

    mutate.__name__ = kind
    return mutate


def _check_rejected(chain: list[x509.Certificate], store: TrustStore) -> None:
    with pytest.raises(TrustChainError) as info:
        validate(chain, store, at=NOW, purpose=Purpose.SERVER)
    assert isinstance(info.value, CertificateRejected)
    event(f"rejected: {info.value.reason.name}")


def test_the_unmutated_chain_is_fully_trusted() -> None:
    m = material()
    store = m.store()
    store.add_crl(m.crl)
    report = validate([m.leaf, m.ca], store, at=NOW, purpose=Purpose.SERVER)
    assert report.path == (m.leaf, m.ca, m.root)
    assert report.trust_level is TrustLevel.PARTIAL  # the CA has no CRL: notes say so
    assert len(report.notes) == 1


@FUZZ
@given(target=st.sampled_from(["leaf", "ca"]), mutate=mutations())
def test_mutated_chain_member_is_never_trusted(target: str, mutate: Mutation) -> None:
    m = material()
    original = _der(m.leaf if target == "leaf" else m.ca)
    data = mutate(original)
    if data == original:
        event("no change")
        return
    try:
        mutated = x509.load_der_x509_certificate(data)
    except LOAD_ERRORS:
        event("cryptography refused to load")
        return
    chain = [mutated, m.ca] if target == "leaf" else [m.leaf, mutated]
    _check_rejected(chain, m.store())


@FUZZ
@given(mutate=mutations())
def test_mutated_leaf_with_the_anchor_presented_is_never_trusted(mutate: Mutation) -> None:
    m = material()
    data = mutate(_der(m.leaf))
    if data == _der(m.leaf):
        return
    try:
        mutated = x509.load_der_x509_certificate(data)
    except LOAD_ERRORS:
        event("cryptography refused to load")
        return
    _check_rejected([mutated, m.ca, m.root], m.store())


@FUZZ
@given(mutate=mutations())
def test_mutated_crl_is_never_accepted(mutate: Mutation) -> None:
    m = material()
    original = _der(m.crl)
    data = mutate(original)
    if data == original:
        return
    try:
        crl = x509.load_der_x509_crl(data)
    except LOAD_ERRORS:
        event("cryptography refused to load")
        return
    store = m.store()
    with pytest.raises(TrustChainError) as info:
        store.add_crl(crl)
    event(f"refused: {type(info.value).__name__}")
    assert store.crls == ()


@settings(max_examples=100, deadline=None)
@given(chain=st.lists(st.binary(max_size=64), max_size=3), policy=st.sampled_from(["", "x"]))
def test_grpc_answer_for_arbitrary_bytes(chain: list[bytes], policy: str) -> None:
    request = security_pb2.ValidateCertificatesRequest(
        chain=common_pb2.CertificateChain(certificates=chain), policy=policy
    )
    response = validate_certificates_response(request, {"": material().store(), "x": TrustStore()})
    assert response.result.verdict == common_pb2.VERDICT_REJECTED
    assert response.trust_level == common_pb2.TRUST_LEVEL_UNTRUSTED
    assert len(response.result.rejections) == 1


_ALT_EXTENSIONS = frozenset(
    {oids.SUBJECT_ALT_PUBLIC_KEY_INFO, oids.ALT_SIGNATURE_ALGORITHM, oids.ALT_SIGNATURE_VALUE}
)


def _extension_der(extension: x509.Extension[x509.ExtensionType]) -> bytes:
    value = extension.value
    if isinstance(value, x509.UnrecognizedExtension):
        return value.value
    return value.public_bytes()


def _reissue(
    original: x509.Certificate,
    issuer_key: SigningKey,
    subject_key: SigningKey,
    pick: st.DataObject,
    mutate: Mutation,
    flip_critical: bool,
) -> x509.Certificate:
    """``original`` with extension ``target`` replaced by its mutated DER (criticality
    optionally flipped), signed again -- both signatures -- by the real issuer key."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(original.subject)
        .issuer_name(original.issuer)
        .serial_number(original.serial_number)
        .not_valid_before(original.not_valid_before_utc)
        .not_valid_after(original.not_valid_after_utc)
    )
    extensions = [e for e in original.extensions if e.oid not in _ALT_EXTENSIONS]
    chosen = pick.draw(st.sampled_from(extensions), label="extension")
    event(f"extension {chosen.oid._name}")
    for extension in extensions:
        critical = extension.critical
        if extension is chosen:
            value: x509.ExtensionType = x509.UnrecognizedExtension(
                extension.oid, mutate(_extension_der(extension))
            )
            critical = critical ^ flip_critical
        else:
            value = extension.value
        builder = builder.add_extension(value, critical=critical)
    return hybrid.build_certificate(
        builder, subject_key=subject_key.public_key(), issuer_key=issuer_key
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=st.sampled_from(["leaf", "ca"]),
    pick=st.data(),
    mutate=mutations(),
    flip_critical=st.booleans(),
)
def test_mutated_extension_signed_by_the_real_ca_never_crashes(
    target: str, pick: st.DataObject, mutate: Mutation, flip_critical: bool
) -> None:
    """Validly signed certificates with one extension's DER mutated: the semantic checks (name
    constraints, key usage, SCT parsing, ...) see the mutation. Whatever the outcome, it is a
    report or a :class:`CertificateRejected`; a certificate the real CA signed may still be
    trusted."""
    m = material()
    if target == "leaf":
        leaf = _reissue(m.leaf, m.ca_key, m.leaf_key, pick, mutate, flip_critical)
        chain = [leaf, m.ca]
    else:
        ca = _reissue(m.ca, m.root_key, m.ca_key, pick, mutate, flip_critical)
        chain = [m.leaf, ca]
    try:
        report = validate(chain, m.store(), at=NOW, purpose=Purpose.SERVER)
    except CertificateRejected as exc:
        event(f"rejected: {exc.reason.name}")
        return
    event(f"trusted: {report.trust_level.name}")


def _address_only_ip_subtree(constraints_der: bytes) -> bytes:
    """A NameConstraints DER whose permitted subtrees are one DNS name and one iPAddress of 4
    bytes (an address, where RFC 5280 wants address and mask: 8 bytes)."""
    dns = b"\x82" + bytes([len(NAMESPACE)]) + NAMESPACE.encode()
    subtrees = [b"\x30" + bytes([len(dns)]) + dns, b"\x30\x06\x87\x04\x0a\x00\x00\x01"]
    body = b"".join(subtrees)
    permitted = b"\xa0" + bytes([len(body)]) + body
    assert constraints_der.startswith(b"\x30")  # a real NameConstraints was there
    return b"\x30" + bytes([len(permitted)]) + permitted


def test_an_address_instead_of_a_network_in_name_constraints_is_malformed() -> None:
    """cryptography raises TypeError (not ValueError) for such a subtree; validation must
    still answer with a rejection, never let the TypeError escape."""
    m = material()
    builder = (
        x509.CertificateBuilder()
        .subject_name(m.ca.subject)
        .issuer_name(m.ca.issuer)
        .serial_number(m.ca.serial_number)
        .not_valid_before(m.ca.not_valid_before_utc)
        .not_valid_after(m.ca.not_valid_after_utc)
    )
    for extension in m.ca.extensions:
        if extension.oid in _ALT_EXTENSIONS:
            continue
        value: x509.ExtensionType = extension.value
        if isinstance(value, x509.NameConstraints):
            value = x509.UnrecognizedExtension(
                extension.oid, _address_only_ip_subtree(_extension_der(extension))
            )
        builder = builder.add_extension(value, critical=extension.critical)
    ca = hybrid.build_certificate(builder, subject_key=m.ca_key.public_key(), issuer_key=m.root_key)
    with pytest.raises(TypeError):
        _ = ca.extensions  # what cryptography does with it
    with pytest.raises(CertificateRejected) as info:
        validate([m.leaf, ca], m.store(), at=NOW, purpose=Purpose.SERVER)
    assert info.value.reason.name == "MALFORMED"
