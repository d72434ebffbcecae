"""trustchain.ca.trust: trust levels, anchors, federations, cross-certification, CRL management.

Federations are built with a small test-local factory over trustchain.ca.hybrid (the CA's
profiles, simplified): each federation is a root, an entity CA and a node leaf with an SCT.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from hypermesh_interfaces.v1 import common_pb2
from trustchain.ca import der, embedded_sct, hybrid, oids
from trustchain.ca.trust import (
    CertificateFacts,
    TrustAnchor,
    TrustLevel,
    TrustPolicy,
    TrustStore,
    key_identifier,
)
from trustchain.ca.validation import validate
from trustchain.crypto.signatures import SigningKey, VerifyKey
from trustchain.ct.merkle import leaf_hash
from trustchain.ct.sct import SignedCertificateTimestamp
from trustchain.errors import (
    AltSignatureInvalid,
    AnchorExists,
    AnchorNotFound,
    CertificateRejected,
    ClassicalSignatureInvalid,
    CrlRejected,
    InvalidSignature,
    MalformedData,
    RejectionReason,
    StaleCrl,
)

NOW = datetime(2031, 5, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
CA_USAGE = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
LEAF_USAGE = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
R = RejectionReason


# --- test-local factory ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Cert:
    cert: x509.Certificate
    key: SigningKey

    @property
    def public(self) -> VerifyKey:
        return self.key.public_key()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TrustChain"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def issue(
    subject: x509.Name,
    issuer: Cert | None,
    *,
    ca: bool,
    key: SigningKey | None = None,
    path_length: int | None = None,
    namespace: str | None = None,
    names: Sequence[x509.GeneralName] = (),
    usage: x509.KeyUsage | None = None,
    log: SigningKey | None = None,
    distribution_point: str | None = None,
) -> Cert:
    """A hybrid certificate: a CA (``namespace``: DNS name constraint) or a TLS leaf."""
    key = key or SigningKey.generate()
    public = key.public_key()
    signer = key if issuer is None else issuer.key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.cert.subject)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(usage or (CA_USAGE if ca else LEAF_USAGE), critical=True)
        .add_extension(x509.SubjectKeyIdentifier(key_identifier(public)), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier(key_identifier(signer.public_key()), None, None),
            critical=False,
        )
    if namespace is not None:
        builder = builder.add_extension(
            x509.NameConstraints([x509.DNSName(namespace)], None), critical=True
        )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    if distribution_point is not None:
        point = x509.DistributionPoint(
            [x509.UniformResourceIdentifier(distribution_point)], None, None, None
        )
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    if log is not None:
        entry = embedded_sct.precertificate_entry(builder, subject_key=public)
        sct = SignedCertificateTimestamp.issue(
            log,
            timestamp=int(NOW.timestamp() * 1000) - 60_000,
            leaf_index=0,
            leaf_hash=leaf_hash(entry),
        )
        builder = embedded_sct.with_scts(builder, [sct])
    return Cert(hybrid.build_certificate(builder, subject_key=public, issuer_key=signer), key)


@dataclass(frozen=True)
class Federation:
    """A root, an entity CA confined to ``<name>.hypermesh`` and a node in it."""

    name: str
    root: Cert
    ca: Cert
    node: Cert

    @property
    def chain(self) -> list[x509.Certificate]:
        return [self.node.cert, self.ca.cert]

    def anchor(self, level: TrustLevel = TrustLevel.FULL, **policy: object) -> TrustAnchor:
        return TrustAnchor(self.root.cert, self.name, level, TrustPolicy(**policy))  # type: ignore[arg-type]


def federation(name: str, log: SigningKey, *, node_name: str | None = None) -> Federation:
    root = issue(_name(f"{name}-root"), None, ca=True)
    ca = issue(_name(name), root, ca=True, path_length=0, namespace=f"{name}.hypermesh")
    dns = node_name or f"node.{name}.hypermesh"
    node = issue(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)]),
        ca,
        ca=False,
        names=[x509.DNSName(dns)],
        log=log,
        distribution_point=f"hypermesh://crl/{name}/shard-0.crl",
    )
    return Federation(name, root, ca, node)


def cross(subject: Cert, issuer: Cert, *, namespace: str | None = None) -> x509.Certificate:
    """``subject``'s name and key certified by ``issuer`` (a cross-certificate)."""
    return issue(subject.cert.subject, issuer, ca=True, key=subject.key, namespace=namespace).cert


def make_crl(
    issuer: Cert,
    revoked: Sequence[int] = (),
    *,
    number: int | None = 1,
    signer: SigningKey | None = None,
    shard: str | None = None,
    reason: x509.ReasonFlags | None = x509.ReasonFlags.key_compromise,
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(NOW - HOUR)
        .next_update(NOW + HOUR)
        .add_extension(
            x509.AuthorityKeyIdentifier(key_identifier(issuer.public), None, None), False
        )
    )
    if number is not None:
        builder = builder.add_extension(x509.CRLNumber(number), critical=False)
    for serial in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW - HOUR)
        if reason is not None:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    if shard is not None:
        builder = builder.add_extension(
            x509.IssuingDistributionPoint(
                [x509.UniformResourceIdentifier(shard)], None, True, False, None, False, False
            ),
            critical=True,
        )
    for value, critical in extra:
        builder = builder.add_extension(value, critical=critical)
    return hybrid.build_crl(builder, issuer_key=signer or issuer.key)


@pytest.fixture(scope="module")
def log() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def dmv(log: SigningKey) -> Federation:
    return federation("dmv", log)


@pytest.fixture(scope="module")
def bank(log: SigningKey) -> Federation:
    return federation("bank", log)


def store_for(
    *entries: tuple[Federation, TrustLevel], log: SigningKey, crls: bool = True
) -> TrustStore:
    """Each federation's root anchored at its level, its CA registered, and (``crls``) current
    empty CRLs of both, plus the log: everything a FULL verdict needs."""
    store = TrustStore([fed.anchor(level) for fed, level in entries], log_keys=[log.public_key()])
    for fed, _ in entries:
        store.add_certificate(fed.ca.cert)
        if crls:
            store.add_crl(make_crl(fed.root))
            store.add_crl(make_crl(fed.ca))
    return store


def rejection(chain: Sequence[x509.Certificate], store: TrustStore) -> CertificateRejected:
    with pytest.raises(CertificateRejected) as info:
        validate(chain, store, at=NOW)
    return info.value


# --- levels and anchors ---------------------------------------------------------------------------


def test_trust_levels_mirror_the_proto() -> None:
    assert [level.name for level in TrustLevel] == [
        name.removeprefix("TRUST_LEVEL_")
        for name in common_pb2.TrustLevel.keys()  # noqa: SIM118
    ]
    for level in TrustLevel:
        assert common_pb2.TrustLevel.Value(f"TRUST_LEVEL_{level.name}") == int(level)
    assert min(TrustLevel.FULL, TrustLevel.PARTIAL) is TrustLevel.PARTIAL


def test_key_identifier_is_the_one_the_ca_writes() -> None:
    from trustchain.ca import profiles

    key = SigningKey.generate().public_key()
    assert key_identifier(key) == profiles.key_identifier(key) == key.key_id[:20]


def test_anchor_checks_its_arguments(dmv: Federation) -> None:
    with pytest.raises(ValueError, match="name"):
        TrustAnchor(dmv.root.cert, "")
    with pytest.raises(ValueError, match="at least PARTIAL"):
        TrustAnchor(dmv.root.cert, "x", TrustLevel.SELF_ASSERTED)
    with pytest.raises(ValueError, match="max_chain_length"):
        TrustPolicy(max_chain_length=0)
    anchor = TrustAnchor(dmv.root.cert, "dmv")
    assert anchor.max_trust_level is TrustLevel.FULL
    assert anchor.policy == TrustPolicy()
    assert anchor.facts.key_id == dmv.root.public.key_id
    with pytest.raises(AttributeError):
        anchor.name = "other"  # type: ignore[misc]


def test_anchor_refuses_a_certificate_whose_alt_key_was_swapped(dmv: Federation) -> None:
    other = SigningKey.generate().public_key().components()[1].raw
    data = dmv.root.cert.public_bytes(Encoding.DER)
    swapped = data.replace(dmv.root.public.components()[1].raw, other)
    with pytest.raises(MalformedData, match="subjectKeyIdentifier"):
        TrustAnchor(x509.load_der_x509_certificate(swapped), "dmv")


def test_anchor_refuses_a_certificate_without_hybrid_key() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    plain = (
        x509.CertificateBuilder()
        .subject_name(_name("plain"))
        .issuer_name(_name("plain"))
        .serial_number(1)
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .public_key(key.public_key())
        .sign(key, None)
    )
    with pytest.raises(MalformedData):
        TrustAnchor(plain, "plain")
    with pytest.raises(MalformedData):
        CertificateFacts.of(plain)


def test_anchor_management(dmv: Federation, bank: Federation) -> None:
    store = TrustStore([dmv.anchor()])
    store.add_anchor(bank.anchor(TrustLevel.PARTIAL))
    assert [anchor.name for anchor in store.anchors] == ["dmv", "bank"]
    assert store.anchor("bank").max_trust_level is TrustLevel.PARTIAL
    with pytest.raises(AnchorExists):
        store.add_anchor(bank.anchor())
    removed = store.remove_anchor("dmv")
    assert removed.name == "dmv"
    assert [anchor.name for anchor in store.anchors] == ["bank"]
    with pytest.raises(AnchorNotFound):
        store.remove_anchor("dmv")
    with pytest.raises(AnchorNotFound):
        store.anchor("dmv")


def test_snapshot_is_isolated_from_later_changes(dmv: Federation, bank: Federation) -> None:
    store = TrustStore([dmv.anchor()])
    snapshot = store.snapshot()
    store.add_anchor(bank.anchor())
    store.add_certificate(bank.ca.cert)
    assert [anchor.name for anchor in snapshot.anchors] == ["dmv"]
    assert snapshot.certificates == ()
    assert len(store.snapshot().anchors) == 2


def test_extra_certificates(dmv: Federation) -> None:
    store = TrustStore([dmv.anchor()])
    store.add_certificate(dmv.ca.cert)
    store.add_certificate(dmv.ca.cert, max_trust_level=TrustLevel.PARTIAL)  # replaces
    assert store.certificates == (dmv.ca.cert,)
    assert store.snapshot().certificates[0].max_trust_level is TrustLevel.PARTIAL
    store.remove_certificate(dmv.ca.cert)
    store.remove_certificate(dmv.ca.cert)  # absent: nothing happens
    assert len(store.certificates) == 0


def test_log_keys(log: SigningKey) -> None:
    store = TrustStore()
    log_id = store.add_log_key(log.public_key())
    assert log_id == log.public_key().key_id
    assert store.log_keys == {log_id: log.public_key()}
    with pytest.raises(TypeError):
        store.log_keys[b"x"] = log.public_key()  # type: ignore[index]
    store.remove_log_key(log_id)
    assert dict(store.log_keys) == {}


# --- federations ----------------------------------------------------------------------------------


def test_federations_with_different_levels(
    dmv: Federation, bank: Federation, log: SigningKey
) -> None:
    store = store_for((dmv, TrustLevel.FULL), (bank, TrustLevel.PARTIAL), log=log)
    report = validate(dmv.chain, store, at=NOW)
    assert (report.anchor, report.trust_level) == ("dmv", TrustLevel.FULL)
    report = validate(bank.chain, store, at=NOW)
    assert (report.anchor, report.trust_level) == ("bank", TrustLevel.PARTIAL)
    insurer = federation("insurer", log)
    assert rejection(insurer.chain, store).reason is R.UNTRUSTED_ROOT


def test_federation_removed_from_the_store(
    dmv: Federation, bank: Federation, log: SigningKey
) -> None:
    store = store_for((dmv, TrustLevel.FULL), (bank, TrustLevel.FULL), log=log)
    store.remove_anchor("bank")
    assert rejection(bank.chain, store).reason is R.UNTRUSTED_ROOT
    assert validate(dmv.chain, store, at=NOW).trust_level is TrustLevel.FULL


def test_cross_certified_federation_is_trusted_through_its_certifier(
    dmv: Federation, bank: Federation, log: SigningKey
) -> None:
    """The bank is not an anchor; the DMV's root cross-certifies the bank's root."""
    bridge = cross(bank.root, dmv.root)
    store = store_for((dmv, TrustLevel.FULL), log=log)
    store.add_certificate(bank.ca.cert)
    store.add_certificate(bridge)
    store.add_crl(make_crl(bank.root))
    store.add_crl(make_crl(bank.ca))
    report = validate(bank.chain, store, at=NOW)
    assert report.anchor == "dmv"
    assert report.trust_level is TrustLevel.FULL
    assert report.path == (bank.node.cert, bank.ca.cert, bridge, dmv.root.cert)
    # registered with a cap, the cross-certificate limits the whole federation
    store.add_certificate(bridge, max_trust_level=TrustLevel.PARTIAL)
    assert validate(bank.chain, store, at=NOW).trust_level is TrustLevel.PARTIAL
    # presented by the peer instead, the same certificate keeps the store's cap
    assert validate([*bank.chain, bridge], store, at=NOW).trust_level is TrustLevel.PARTIAL


def test_cross_certified_federation_gets_the_minimum_level(
    dmv: Federation, bank: Federation, log: SigningKey
) -> None:
    bridge = cross(bank.root, dmv.root)
    # the certifier is trusted less than FULL: so is everything it cross-certifies
    store = store_for((dmv, TrustLevel.PARTIAL), log=log)
    assert validate([*bank.chain, bridge], store, at=NOW).trust_level is TrustLevel.PARTIAL
    # the bank itself is anchored lower than its certifier: never laundered upwards
    store = store_for((dmv, TrustLevel.FULL), (bank, TrustLevel.PARTIAL), log=log)
    report = validate([*bank.chain, bridge], store, at=NOW)
    assert (report.anchor, report.trust_level) == ("bank", TrustLevel.PARTIAL)
    # the bank anchored higher: its own anchor wins
    store = store_for((dmv, TrustLevel.PARTIAL), (bank, TrustLevel.FULL), log=log)
    report = validate([*bank.chain, bridge], store, at=NOW)
    assert (report.anchor, report.trust_level) == ("bank", TrustLevel.FULL)


def test_cross_certificate_name_constraints_bind_the_other_federation(
    dmv: Federation, log: SigningKey
) -> None:
    rogue = federation("bank", log, node_name="node.dmv.hypermesh.bank.hypermesh")
    honest = federation("bank", log)
    for fed in (rogue, honest):
        bridge = cross(fed.root, dmv.root, namespace="bank.hypermesh")
        store = store_for((dmv, TrustLevel.FULL), log=log, crls=False)
        assert validate([*fed.chain, bridge], store, at=NOW).anchor == "dmv"
    wrong = federation("bank", log)
    bridge = cross(wrong.root, dmv.root, namespace="insurer.hypermesh")
    store = store_for((dmv, TrustLevel.FULL), log=log, crls=False)
    assert rejection([*wrong.chain, bridge], store).reason is R.NAME_CONSTRAINTS_VIOLATED


def test_anchor_policy_is_per_federation(
    dmv: Federation, bank: Federation, log: SigningKey
) -> None:
    store = TrustStore(
        [dmv.anchor(require_revocation_info=True), bank.anchor()], log_keys=[log.public_key()]
    )
    assert rejection(dmv.chain, store).reason is R.REVOCATION_UNKNOWN
    assert validate(bank.chain, store, at=NOW).trust_level is TrustLevel.PARTIAL


# --- CRLs -----------------------------------------------------------------------------------------


def test_newest_crl_wins(dmv: Federation, log: SigningKey) -> None:
    store = store_for((dmv, TrustLevel.FULL), log=log)
    assert validate(dmv.chain, store, at=NOW).trust_level is TrustLevel.FULL
    record = store.add_crl(make_crl(dmv.ca, [dmv.node.cert.serial_number], number=2))
    assert record.number == 2
    assert record.revoked == {dmv.node.cert.serial_number: "keyCompromise"}
    assert record.issuer_key_id == dmv.ca.public.key_id
    held = [r.number for r in store.crls if r.issuer_key_id == dmv.ca.public.key_id]
    assert held == [2]
    error = rejection(dmv.chain, store)
    assert error.reason is R.REVOKED
    assert error.revocation_reason == "keyCompromise"


def test_stale_crl_is_refused(dmv: Federation, log: SigningKey) -> None:
    store = store_for((dmv, TrustLevel.FULL), log=log, crls=False)
    newer = make_crl(dmv.ca, [dmv.node.cert.serial_number], number=5)
    store.add_crl(newer)
    with pytest.raises(StaleCrl):
        store.add_crl(make_crl(dmv.ca, number=4))  # an older CRL (a replayed "all clear")
    with pytest.raises(StaleCrl):
        store.add_crl(make_crl(dmv.ca, number=5))  # another CRL reusing the number
    assert store.add_crl(newer).number == 5  # the very same CRL again: a no-op
    assert rejection(dmv.chain, store).reason is R.REVOKED
    assert issubclass(StaleCrl, CrlRejected)


def test_forged_crl_is_refused(dmv: Federation, log: SigningKey) -> None:
    store = store_for((dmv, TrustLevel.FULL), log=log, crls=False)
    forged = make_crl(dmv.ca, number=9, signer=SigningKey.generate())
    with pytest.raises(AltSignatureInvalid, match="nor does its Ed25519"):
        store.add_crl(forged)  # both signatures fail; the post-quantum one is reported
    data = bytearray(make_crl(dmv.ca, number=9).public_bytes(Encoding.DER))
    data[-7] ^= 0x01  # inside the Ed25519 signatureValue
    with pytest.raises(ClassicalSignatureInvalid):
        store.add_crl(x509.load_der_x509_crl(bytes(data)))
    assert store.crls == ()


def test_crl_with_forged_alternative_signature_is_refused(dmv: Federation, log: SigningKey) -> None:
    """Someone holding only the CA's Ed25519 key cannot issue a CRL either."""
    genuine = make_crl(dmv.ca, number=3)
    value = genuine.extensions.get_extension_for_oid(oids.ALT_SIGNATURE_VALUE).value
    assert isinstance(value, x509.UnrecognizedExtension)
    alt = der.decode_bit_string(der.parse(value.value))
    changed = bytearray(alt)
    changed[len(changed) // 2] ^= 0x01
    tbs = genuine.tbs_certlist_bytes.replace(alt, bytes(changed))
    signature = hybrid.classical_private_key(dmv.ca.key).sign(tbs)
    forged = x509.load_der_x509_crl(
        der.encode_sequence(
            [tbs, hybrid.ED25519_ALGORITHM_IDENTIFIER, der.encode_bit_string(signature)]
        )
    )
    store = store_for((dmv, TrustLevel.FULL), log=log, crls=False)
    with pytest.raises(AltSignatureInvalid):
        store.add_crl(forged)
    assert issubclass(AltSignatureInvalid, InvalidSignature)


def test_crl_from_an_unknown_issuer_is_refused(dmv: Federation, bank: Federation) -> None:
    store = TrustStore([dmv.anchor()])
    with pytest.raises(CrlRejected, match="no known CA"):
        store.add_crl(make_crl(bank.ca))
    with pytest.raises(CrlRejected, match="no known CA"):
        store.add_crl(make_crl(dmv.ca))  # the DMV's CA is neither anchor nor registered
    store.add_certificate(dmv.ca.cert)
    assert store.add_crl(make_crl(dmv.ca)).number == 1


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("no-number", "CRL number"),
        ("delta", "delta"),
        ("critical", "critical CRL extension"),
    ],
)
def test_unsupported_crls_are_refused(dmv: Federation, kind: str, message: str) -> None:
    store = TrustStore([dmv.anchor()])
    if kind == "no-number":
        crl = make_crl(dmv.root, number=None)
    elif kind == "delta":
        crl = make_crl(dmv.root, extra=[(x509.DeltaCRLIndicator(1), True)])
    else:
        private = x509.ObjectIdentifier(oids.TRUSTCHAIN_ARC + ".99.2")
        crl = make_crl(dmv.root, extra=[(x509.UnrecognizedExtension(private, b"\x05\x00"), True)])
    with pytest.raises(CrlRejected, match=message):
        store.add_crl(crl)


def test_crl_from_a_ca_without_crl_sign(log: SigningKey) -> None:
    usage = x509.KeyUsage(False, False, False, False, False, True, False, False, False)
    root = issue(_name("no-crl-root"), None, ca=True, usage=usage)
    store = TrustStore([TrustAnchor(root.cert, "r")])
    with pytest.raises(CrlRejected, match="cRLSign"):
        store.add_crl(make_crl(root))


def test_malformed_crl(dmv: Federation) -> None:
    bad = make_crl(
        dmv.root, extra=[(x509.UnrecognizedExtension(ExtensionOID.FRESHEST_CRL, b"\x01"), False)]
    )
    store = TrustStore([dmv.anchor()])
    with pytest.raises(MalformedData):
        store.add_crl(bad)


def test_shards_are_numbered_independently(dmv: Federation, log: SigningKey) -> None:
    store = store_for((dmv, TrustLevel.FULL), log=log, crls=False)
    store.add_crl(make_crl(dmv.root))
    shard0 = "hypermesh://crl/dmv/shard-0.crl"
    shard1 = "hypermesh://crl/dmv/shard-1.crl"
    store.add_crl(make_crl(dmv.ca, number=5, shard=shard1))
    assert validate(dmv.chain, store, at=NOW).trust_level is TrustLevel.PARTIAL  # shard 0 unknown
    store.add_crl(make_crl(dmv.ca, number=1, shard=shard0))  # a lower number, another scope
    assert validate(dmv.chain, store, at=NOW).trust_level is TrustLevel.FULL
    store.add_crl(make_crl(dmv.ca, [dmv.node.cert.serial_number], number=2, shard=shard0))
    assert rejection(dmv.chain, store).reason is R.REVOKED
    with pytest.raises(StaleCrl):
        store.add_crl(make_crl(dmv.ca, number=4, shard=shard1))
    numbers = sorted(r.number for r in store.crls if r.issuer_key_id == dmv.ca.public.key_id)
    assert numbers == [2, 5]


def test_crls_of_two_keys_of_one_ca_are_kept_apart(log: SigningKey) -> None:
    """After a rollover both keys of a CA sign CRLs; each applies to what its key issued."""
    old = issue(_name("hm"), None, ca=True)
    new = issue(_name("hm"), None, ca=True)
    old_leaf = issue(_name("a"), old, ca=False, log=log)
    new_leaf = issue(_name("b"), new, ca=False, log=log)
    store = TrustStore(
        [TrustAnchor(old.cert, "old"), TrustAnchor(new.cert, "new")], log_keys=[log.public_key()]
    )
    store.add_crl(make_crl(old, [old_leaf.cert.serial_number], number=7))
    store.add_crl(make_crl(new, number=1))
    assert rejection([old_leaf.cert], store).reason is R.REVOKED
    assert validate([new_leaf.cert], store, at=NOW).trust_level is TrustLevel.FULL


def test_concurrent_crl_updates_keep_the_newest(dmv: Federation) -> None:
    store = TrustStore([dmv.anchor()])
    crls = [make_crl(dmv.root, number=n) for n in range(1, 9)]
    errors: list[Exception] = []

    def add(crl: x509.CertificateRevocationList) -> None:
        try:
            store.add_crl(crl)
        except StaleCrl as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(crl,)) for crl in reversed(crls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [record.number for record in store.crls] == [8]
    assert all(isinstance(error, StaleCrl) for error in errors)


def test_ip_constraint_helper_types() -> None:
    """IPv4 networks in name constraints are kept as networks (a sanity check of the input
    the validator relies on)."""
    constraints = x509.NameConstraints([x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))], None)
    (tree,) = constraints.permitted_subtrees or []
    assert isinstance(tree.value, ipaddress.IPv4Network)
