"""Tests of the certificate authority: hierarchy, profiles, namespaces, serials, persistence,
renewal, CA key rollover, embedded SCTs, and what OpenSSL makes of our certificates."""

from __future__ import annotations

import ipaddress
import itertools
import re
import subprocess
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID
from hypothesis import given, settings
from hypothesis import strategies as st

from trustchain.ca import der, embedded_sct, hybrid, oids, profiles
from trustchain.ca.authority import CertificateAuthority, Issued
from trustchain.ca.profiles import CertificateKind
from trustchain.ca.store import CaKeyStatus, CaStore, CertificateStatus
from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KeyStatus, KeyStore
from trustchain.crypto.signatures import SigningKey, VerifyKey
from trustchain.ct.log import TransparencyLog
from trustchain.errors import (
    AlgorithmMismatch,
    CaExists,
    CaNotFound,
    CertificateNotFound,
    InvalidCertificateRequest,
    KeyRetired,
    MalformedData,
    NameOutsideNamespace,
)

PASSPHRASE = b"ca test passphrase"
OPENSSL = "/usr/bin/openssl"


class Clock:
    """A settable clock, starting at the real current time (so OpenSSL accepts validity)."""

    def __init__(self) -> None:
        # An hour back, so tests may move it forward and OpenSSL still sees valid certificates.
        self.now = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture(scope="module")
def log_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keystore(home: Path) -> Iterator[KeyStore]:
    with KeyStore.open(
        home, passphrase=PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS, allow_weak_kdf=True
    ) as store:
        yield store


@pytest.fixture
def log(home: Path, log_key: SigningKey) -> Iterator[TransparencyLog]:
    with TransparencyLog.open(home / "ct" / "log.db", log_key) as opened:
        yield opened


@pytest.fixture
def authority(
    home: Path, keystore: KeyStore, log: TransparencyLog, clock: Clock
) -> Iterator[CertificateAuthority]:
    with CertificateAuthority(home, keystore, log, clock=clock) as ca:
        yield ca


class Hierarchy:
    """A root and two entity CAs with different namespaces."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        self.root = ca.init_root("trustchain-root")
        self.dmv = ca.issue_intermediate("dmv", "dmv.hypermesh")
        self.bank = ca.issue_intermediate("bank", "bank.hypermesh", ip_networks=["10.8.0.0/16"])


@pytest.fixture
def hierarchy(authority: CertificateAuthority) -> Hierarchy:
    return Hierarchy(authority)


def key_of(certificate: x509.Certificate) -> VerifyKey:
    return hybrid.certificate_public_key(certificate)


def verify_link(certificate: x509.Certificate, issuer: x509.Certificate) -> None:
    """Both signatures of ``certificate`` under ``issuer``'s key, names and key ids chaining."""
    hybrid.verify_certificate_signatures(certificate, key_of(issuer))
    assert certificate.issuer == issuer.subject
    aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


def verify_path(
    certificate: x509.Certificate, chain: Sequence[x509.Certificate], anchor: x509.Certificate
) -> None:
    """Every link of certificate -> chain... -> anchor, and the anchor's self-signature."""
    path = [certificate, *chain, anchor]
    for child, parent in itertools.pairwise(path):
        verify_link(child, parent)
    hybrid.verify_certificate_signatures(anchor, key_of(anchor))


def extension(certificate: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.Extension:
    return certificate.extensions.get_extension_for_class(cls)  # type: ignore[type-var]


def pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certificates)


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPENSSL, *(str(a) for a in args)], capture_output=True, text=True, check=False
    )


# --- hierarchy --------------------------------------------------------------------------------


def test_hierarchy_both_signatures_verify_link_by_link(hierarchy: Hierarchy) -> None:
    ca = hierarchy.ca
    root = hierarchy.root.certificate
    assert hierarchy.root.chain == ()
    assert hierarchy.dmv.chain == ()  # directly under the root
    verify_path(hierarchy.dmv.certificate, (), root)
    verify_path(hierarchy.bank.certificate, (), root)
    leaves = [
        ca.issue("dmv", "node", "host1.dmv.hypermesh", ip_addresses=["192.0.2.7"]),
        ca.issue("dmv", "service", "registry.dmv.hypermesh"),
        ca.issue("bank", "asset", "vault-7.bank.hypermesh", asset_id=bytes.fromhex("a55e70")),
        ca.issue("bank", CertificateKind.NODE, "teller.bank.hypermesh", ip_addresses=["10.8.1.2"]),
    ]
    for issued, entity in zip(leaves, ["dmv", "dmv", "bank", "bank"], strict=True):
        expected = getattr(hierarchy, entity).certificate
        assert issued.chain == (expected,)
        verify_path(issued.certificate, issued.chain, root)
        assert ca.chain_for(issued.serial) == issued.chain
        assert ca.certificate(issued.serial) == issued.certificate
    # A link checked against the wrong issuer fails.
    with pytest.raises(Exception, match="signature"):
        verify_link(leaves[0].certificate, hierarchy.bank.certificate)


def test_issued_keys_live_in_the_key_store(hierarchy: Hierarchy, keystore: KeyStore) -> None:
    issued = hierarchy.ca.issue("dmv", "node", "host1.dmv.hypermesh")
    assert (issued.key_name, issued.key_version) == ("leaf/host1.dmv.hypermesh", 1)
    assert keystore.public_key("leaf/host1.dmv.hypermesh") == key_of(issued.certificate)
    assert keystore.public_key("ca/dmv") == key_of(hierarchy.dmv.certificate)
    assert keystore.public_key("ca/trustchain-root") == key_of(hierarchy.root.certificate)
    # Issuing the same name again makes a new key version, never reusing a key.
    again = hierarchy.ca.issue("dmv", "node", "host1.dmv.hypermesh")
    assert again.key_version == 2
    assert key_of(again.certificate) != key_of(issued.certificate)


def test_external_subject_key(hierarchy: Hierarchy) -> None:
    key = SigningKey.generate().public_key()
    issued = hierarchy.ca.issue("dmv", "node", "ext.dmv.hypermesh", subject_key=key)
    assert issued.key_name is None
    assert key_of(issued.certificate) == key
    with pytest.raises(AlgorithmMismatch):
        hierarchy.ca.issue(
            "dmv",
            "node",
            "ed.dmv.hypermesh",
            subject_key=SigningKey.generate(key.algorithm.ED25519).public_key(),
        )


# --- profiles ---------------------------------------------------------------------------------


def _key_usage(certificate: x509.Certificate) -> set[str]:
    usage = extension(certificate, x509.KeyUsage)
    assert usage.critical
    value: x509.KeyUsage = usage.value
    names = ("digital_signature", "key_cert_sign", "crl_sign", "key_encipherment")
    return {name for name in names if getattr(value, name)}


def _policies(certificate: x509.Certificate) -> set[x509.ObjectIdentifier]:
    value: x509.CertificatePolicies = extension(certificate, x509.CertificatePolicies).value
    return {info.policy_identifier for info in value}


def test_root_profile(hierarchy: Hierarchy) -> None:
    root = hierarchy.root.certificate
    constraints = extension(root, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value == x509.BasicConstraints(ca=True, path_length=None)
    assert _key_usage(root) == {"key_cert_sign", "crl_sign"}
    ski = extension(root, x509.SubjectKeyIdentifier).value
    assert ski.digest == key_of(root).key_id[:20]
    assert root.subject == root.issuer == profiles.ca_subject("trustchain-root")
    assert _policies(root) == {kind.policy for kind in CertificateKind}
    with pytest.raises(x509.ExtensionNotFound):
        root.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert profiles.kind_of(root) is CertificateKind.ROOT


def test_intermediate_profile(hierarchy: Hierarchy) -> None:
    dmv = hierarchy.dmv.certificate
    assert extension(dmv, x509.BasicConstraints).value == x509.BasicConstraints(True, 0)
    assert _key_usage(dmv) == {"key_cert_sign", "crl_sign"}
    constraints = extension(dmv, x509.NameConstraints)
    assert constraints.critical
    assert constraints.value.permitted_subtrees == [
        x509.DNSName("dmv.hypermesh"),
        x509.UniformResourceIdentifier("node"),
        x509.UniformResourceIdentifier("service"),
        x509.UniformResourceIdentifier("asset"),
    ]
    assert constraints.value.excluded_subtrees is None
    bank = extension(hierarchy.bank.certificate, x509.NameConstraints).value
    assert x509.IPAddress(ipaddress.ip_network("10.8.0.0/16")) in bank.permitted_subtrees
    ski = extension(dmv, x509.SubjectKeyIdentifier).value.digest
    assert ski == key_of(dmv).key_id[:20]
    dp = extension(dmv, x509.CRLDistributionPoints).value
    assert [p.full_name for p in dp] == [
        [x509.UniformResourceIdentifier("hypermesh://trustchain/crl/trustchain-root/full.crl")]
    ]
    assert CertificateKind.ROOT.policy not in _policies(dmv)
    assert profiles.kind_of(dmv) is CertificateKind.INTERMEDIATE


@pytest.mark.parametrize("kind", ["node", "service", "asset"])
def test_leaf_profiles(hierarchy: Hierarchy, clock: Clock, kind: str) -> None:
    ca = hierarchy.ca
    if kind == "node":
        issued = ca.issue(
            "dmv",
            kind,
            "Host1.DMV.hypermesh.",
            dns_names=["alias.dmv.hypermesh", "host1.dmv.hypermesh"],
            ip_addresses=["192.0.2.7", "2001:db8::7"],
        )
    elif kind == "service":
        issued = ca.issue("dmv", kind, "registry.dmv.hypermesh", service_id=b"\x0b\x0c")
    else:
        issued = ca.issue("dmv", kind, "car-42.dmv.hypermesh", asset_id=b"\xca\xfe")
    leaf = issued.certificate
    key = key_of(leaf)
    assert extension(leaf, x509.BasicConstraints).value == x509.BasicConstraints(False, None)
    assert extension(leaf, x509.BasicConstraints).critical
    assert _key_usage(leaf) == {"digital_signature"}
    eku = list(extension(leaf, x509.ExtendedKeyUsage).value)
    if kind == "asset":
        assert eku == [profiles.EKU_HYPERMESH_ASSET]
    else:
        assert eku == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    san: x509.SubjectAlternativeName = extension(leaf, x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if kind == "node":
        assert leaf.subject == profiles.leaf_subject("host1.dmv.hypermesh")
        assert san.get_values_for_type(x509.DNSName) == [
            "host1.dmv.hypermesh",
            "alias.dmv.hypermesh",
        ]
        assert san.get_values_for_type(x509.IPAddress) == [
            ipaddress.ip_address("192.0.2.7"),
            ipaddress.ip_address("2001:db8::7"),
        ]
        assert uris == [f"hypermesh://node/{key.key_id.hex()}"]
    elif kind == "service":
        assert san.get_values_for_type(x509.DNSName) == ["registry.dmv.hypermesh"]
        assert uris == ["hypermesh://service/0b0c"]
    else:
        assert san.get_values_for_type(x509.DNSName) == []
        assert uris == ["hypermesh://asset/cafe"]
    assert _policies(leaf) == {CertificateKind(kind).policy}
    assert profiles.kind_of(leaf) is CertificateKind(kind)
    aki = extension(leaf, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == key_of(hierarchy.dmv.certificate).key_id[:20]
    assert aki.authority_cert_issuer is None
    assert aki.authority_cert_serial_number is None
    shard = issued.serial % 4
    dp = extension(leaf, x509.CRLDistributionPoints).value
    assert [p.full_name for p in dp] == [
        [x509.UniformResourceIdentifier(f"hypermesh://trustchain/crl/dmv/shard-{shard}.crl")]
    ]
    assert hierarchy.ca.record(issued.serial).crl_shard == shard
    assert leaf.not_valid_before_utc == clock.now
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(hours=24)


def test_validity_is_capped_and_bounded(hierarchy: Hierarchy, clock: Clock) -> None:
    ca = hierarchy.ca
    short = ca.issue_intermediate("short", "short.hypermesh", validity=timedelta(days=2))
    leaf = ca.issue("short", "node", "a.short.hypermesh", validity=timedelta(days=30))
    assert leaf.certificate.not_valid_after_utc == short.certificate.not_valid_after_utc
    for bad in (timedelta(0), timedelta(days=91), timedelta(seconds=-1)):
        with pytest.raises(InvalidCertificateRequest):
            ca.issue("dmv", "node", "b.dmv.hypermesh", validity=bad)
    clock.advance(timedelta(days=3))
    with pytest.raises(Exception, match="expired"):
        ca.issue("short", "node", "a.short.hypermesh")


# --- namespaces and issuing rules ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "name", "extra"),
    [
        ("node", "host.bank.hypermesh", {}),
        ("node", "evildmv.hypermesh", {}),  # a suffix, not a subdomain
        ("node", "dmv.hypermesh.evil", {}),
        ("node", "hypermesh", {}),
        ("node", "host.dmv.hypermesh", {"dns_names": ["www.bank.hypermesh"]}),
        ("service", "api.dmv.hypermesh", {"dns_names": ["api.example.com"]}),
        ("asset", "car.bank.hypermesh", {}),
    ],
)
def test_names_outside_the_namespace_are_refused(
    hierarchy: Hierarchy, keystore: KeyStore, kind: str, name: str, extra: dict[str, list[str]]
) -> None:
    before = len(hierarchy.ca.store.certificates())
    with pytest.raises(NameOutsideNamespace):
        hierarchy.ca.issue("dmv", kind, name, **extra)  # type: ignore[arg-type]
    assert len(hierarchy.ca.store.certificates()) == before
    assert not [k for k in keystore.list() if k.name.startswith("leaf/")]


def test_ip_ranges(hierarchy: Hierarchy) -> None:
    ca = hierarchy.ca
    ca.issue("bank", "node", "n.bank.hypermesh", ip_addresses=["10.8.200.1"])
    with pytest.raises(NameOutsideNamespace, match=re.escape("10.9.0.1")):
        ca.issue("bank", "node", "n.bank.hypermesh", ip_addresses=["10.9.0.1"])
    # dmv has no IP ranges: IP addresses are unconstrained there.
    ca.issue("dmv", "node", "n.dmv.hypermesh", ip_addresses=["203.0.113.9"])


@pytest.mark.parametrize(
    ("kind", "name", "extra"),
    [
        ("node", "*.dmv.hypermesh", {}),
        ("node", "bad_label.dmv.hypermesh", {}),
        ("node", "-x.dmv.hypermesh", {}),
        ("node", "a..dmv.hypermesh", {}),
        ("node", "x" * 64 + ".dmv.hypermesh", {}),
        ("node", "h.dmv.hypermesh", {"ip_addresses": ["300.1.1.1"]}),
        ("service", "s.dmv.hypermesh", {"ip_addresses": ["192.0.2.1"]}),
        ("asset", "a.dmv.hypermesh", {"dns_names": ["b.dmv.hypermesh"]}),
        ("node", "h.dmv.hypermesh", {"asset_id": b"\x01"}),
        ("asset", "a.dmv.hypermesh", {"asset_id": b""}),
        ("intermediate", "x.dmv.hypermesh", {}),
        ("printer", "p.dmv.hypermesh", {}),
    ],
)
def test_malformed_requests_are_refused(
    hierarchy: Hierarchy, kind: str, name: str, extra: dict[str, object]
) -> None:
    with pytest.raises(InvalidCertificateRequest) as caught:
        hierarchy.ca.issue("dmv", kind, name, **extra)  # type: ignore[arg-type]
    assert not isinstance(caught.value, NameOutsideNamespace)


def test_ca_rules(hierarchy: Hierarchy) -> None:
    ca = hierarchy.ca
    with pytest.raises(InvalidCertificateRequest, match="root"):
        ca.issue("trustchain-root", "node", "x.hypermesh")
    with pytest.raises(CaExists):
        ca.init_root("another-root")
    with pytest.raises(CaExists):
        ca.issue_intermediate("dmv", "other.hypermesh")
    with pytest.raises(CaNotFound):
        ca.issue("insurer", "node", "x.insurer.hypermesh")
    with pytest.raises(InvalidCertificateRequest, match="pathLenConstraint 0"):
        ca.issue_intermediate("dmv-east", "east.dmv.hypermesh", issuer="dmv")
    with pytest.raises(InvalidCertificateRequest):
        ca.issue_intermediate("Bad Name", "bad.hypermesh")
    # A CA with path length 1 certifies sub-CAs inside its own namespace and IP ranges, with
    # path length 0.
    ca.issue_intermediate(
        "insurer", "insurer.hypermesh", path_length=1, ip_networks=["10.20.0.0/16"]
    )
    with pytest.raises(NameOutsideNamespace):
        ca.issue_intermediate("acme", "acme.hypermesh", issuer="insurer")
    with pytest.raises(InvalidCertificateRequest):
        ca.issue_intermediate("acme", "acme.insurer.hypermesh", issuer="insurer", path_length=1)
    with pytest.raises(NameOutsideNamespace, match=re.escape("10.9.0.0/24")):
        ca.issue_intermediate(
            "acme", "acme.insurer.hypermesh", issuer="insurer", ip_networks=["10.9.0.0/24"]
        )
    acme = ca.issue_intermediate(
        "acme", "acme.insurer.hypermesh", issuer="insurer", ip_networks=["10.20.1.0/24"]
    )
    leaf = ca.issue("acme", "node", "n.acme.insurer.hypermesh")
    insurer_cert = ca.certificate(ca.ca("insurer").serial)
    assert leaf.chain == (acme.certificate, insurer_cert)
    verify_path(leaf.certificate, leaf.chain, hierarchy.root.certificate)


@settings(max_examples=200, deadline=None)
@given(
    labels=st.lists(
        st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True), max_size=4
    ),
    namespace=st.sampled_from(["dmv.hypermesh", "bank.hypermesh", "a.b.c"]),
    other=st.sampled_from(["dmv.hypermesh", "bank.hypermesh", "xdmv.hypermesh", "hypermesh"]),
)
def test_namespace_rule_is_the_rfc5280_dns_rule(
    labels: list[str], namespace: str, other: str
) -> None:
    """A name is in a namespace exactly when it is the namespace plus labels on the left."""
    inside = ".".join([*labels, namespace])
    names = profiles.check_leaf_names(
        CertificateKind.NODE, inside, namespace=namespace, ip_networks=()
    )
    assert names.common_name == inside
    assert profiles.in_namespace(inside, namespace)
    candidate = ".".join([*labels, other])
    expected = candidate == namespace or candidate.endswith("." + namespace)
    if expected:
        profiles.check_leaf_names(
            CertificateKind.NODE, candidate, namespace=namespace, ip_networks=()
        )
    else:
        with pytest.raises(NameOutsideNamespace):
            profiles.check_leaf_names(
                CertificateKind.NODE, candidate, namespace=namespace, ip_networks=()
            )


# --- serials and persistence ----------------------------------------------------------------------


def test_serials_are_unique_random_159_bit(hierarchy: Hierarchy) -> None:
    ca = hierarchy.ca
    issued = [ca.issue("dmv", "node", f"n{i}.dmv.hypermesh") for i in range(6)]
    serials = [hierarchy.root.serial, hierarchy.dmv.serial, hierarchy.bank.serial]
    serials += [i.serial for i in issued]
    assert len(set(serials)) == len(serials)
    for serial in serials:
        assert 0 < serial < 1 << 159
        assert ca.certificate(serial).serial_number == serial
    assert sorted(r.serial for r in ca.store.certificates()) == sorted(serials)


def test_serial_collisions_are_redrawn(
    home: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    draws = iter([0, 12345, 12345, 12345, 67890])
    monkeypatch.setattr("trustchain.ca.store.secrets.randbits", lambda bits: next(draws))
    with CaStore.open(home) as store:
        assert store.reserve_serial(clock.now) == 12345  # 0 is not a valid serial
        assert store.reserve_serial(clock.now) == 67890  # 12345 twice taken: redrawn


def test_persistence_across_reopen(
    home: Path, log_key: SigningKey, clock: Clock, hierarchy: Hierarchy, keystore: KeyStore
) -> None:
    leaf = hierarchy.ca.issue("dmv", "node", "host1.dmv.hypermesh")
    hierarchy.ca.revoke(leaf.serial, x509.ReasonFlags.superseded)
    cas = hierarchy.ca.cas()
    records = hierarchy.ca.store.certificates()
    hierarchy.ca.close()
    keystore.close()
    with (
        KeyStore.open(home, passphrase=PASSPHRASE, allow_weak_kdf=True) as reopened_store,
        TransparencyLog.open(home / "ct" / "log.db", log_key) as reopened_log,
        CertificateAuthority(home, reopened_store, reopened_log, clock=clock) as reopened,
    ):
        assert reopened.cas() == cas
        assert reopened.store.certificates() == records
        assert reopened.certificate(leaf.serial) == leaf.certificate
        assert reopened.chain_for(leaf.serial) == leaf.chain
        assert reopened.record(leaf.serial).status is CertificateStatus.REVOKED
        assert reopened.export_root() == [hierarchy.root.certificate]
        more = reopened.issue("dmv", "node", "host2.dmv.hypermesh")
        verify_path(more.certificate, more.chain, hierarchy.root.certificate)
    with pytest.raises(CertificateNotFound):
        CaStore.open(home).certificate(1)
    assert (home / "ca" / "ca.db").stat().st_mode & 0o777 == 0o600
    assert (home / "ca").stat().st_mode & 0o777 == 0o700


# --- renewal ------------------------------------------------------------------------------------


def test_renew_with_and_without_rekey(hierarchy: Hierarchy, clock: Clock) -> None:
    ca = hierarchy.ca
    old = ca.issue(
        "dmv",
        "node",
        "host1.dmv.hypermesh",
        dns_names=["alias.dmv.hypermesh"],
        ip_addresses=["192.0.2.1"],
        validity=timedelta(hours=6),
    )
    clock.advance(timedelta(hours=5))
    new = ca.renew(old.serial)
    assert new.serial != old.serial
    assert (new.key_name, new.key_version) == ("leaf/host1.dmv.hypermesh", 2)
    assert key_of(new.certificate) != key_of(old.certificate)
    assert new.certificate.subject == old.certificate.subject
    old_san = extension(old.certificate, x509.SubjectAlternativeName).value
    new_san = extension(new.certificate, x509.SubjectAlternativeName).value
    assert new_san.get_values_for_type(x509.DNSName) == old_san.get_values_for_type(x509.DNSName)
    assert new_san.get_values_for_type(x509.IPAddress) == old_san.get_values_for_type(
        x509.IPAddress
    )
    # The node id is the key id: re-keying changes the node URI.
    assert new_san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"hypermesh://node/{key_of(new.certificate).key_id.hex()}"
    ]
    assert new.certificate.not_valid_before_utc == clock.now
    assert new.certificate.not_valid_after_utc == clock.now + timedelta(hours=6)
    assert ca.record(new.serial).renewal_of == old.serial
    assert ca.record(old.serial).status is CertificateStatus.VALID  # valid until it expires
    verify_path(new.certificate, new.chain, hierarchy.root.certificate)

    same_key = ca.renew(new.serial, rekey=False, validity=timedelta(hours=1))
    assert key_of(same_key.certificate) == key_of(new.certificate)
    assert same_key.key_version == 2
    assert same_key.certificate.not_valid_after_utc == clock.now + timedelta(hours=1)


def test_renew_keeps_service_and_asset_ids(hierarchy: Hierarchy) -> None:
    ca = hierarchy.ca
    service = ca.issue("dmv", "service", "api.dmv.hypermesh")
    asset = ca.issue("bank", "asset", "vault.bank.hypermesh", asset_id=b"\x42")
    for issued in (service, asset):
        renewed = ca.renew(issued.serial)
        uris = [
            extension(c, x509.SubjectAlternativeName).value.get_values_for_type(
                x509.UniformResourceIdentifier
            )
            for c in (issued.certificate, renewed.certificate)
        ]
        assert uris[0] == uris[1]
        assert key_of(renewed.certificate) != key_of(issued.certificate)


def test_renew_refusals(hierarchy: Hierarchy) -> None:
    ca = hierarchy.ca
    external = ca.issue(
        "dmv", "node", "ext.dmv.hypermesh", subject_key=SigningKey.generate().public_key()
    )
    with pytest.raises(InvalidCertificateRequest, match="subject_key"):
        ca.renew(external.serial)
    replacement = SigningKey.generate().public_key()
    renewed = ca.renew(external.serial, subject_key=replacement)
    assert key_of(renewed.certificate) == replacement
    assert renewed.key_name is None
    with pytest.raises(InvalidCertificateRequest, match="roll over"):
        ca.renew(hierarchy.dmv.serial)
    ca.revoke(renewed.serial, "keyCompromise")
    with pytest.raises(InvalidCertificateRequest, match="revoked"):
        ca.renew(renewed.serial)
    with pytest.raises(CertificateNotFound):
        ca.renew(12345)


# --- CA key rollover ------------------------------------------------------------------------------


def test_intermediate_rollover_and_retirement(
    hierarchy: Hierarchy, keystore: KeyStore, clock: Clock
) -> None:
    ca = hierarchy.ca
    root = hierarchy.root.certificate
    before = ca.issue("dmv", "node", "before.dmv.hypermesh")
    clock.advance(timedelta(minutes=10))
    rolled = ca.rollover("dmv")
    assert rolled.cross_certificate is None
    assert rolled.key_version == 2
    new_cert = rolled.certificate
    assert new_cert.subject == hierarchy.dmv.certificate.subject
    assert key_of(new_cert) != key_of(hierarchy.dmv.certificate)
    assert new_cert.not_valid_before_utc < hierarchy.dmv.certificate.not_valid_after_utc  # overlap
    verify_path(new_cert, (), root)
    after = ca.issue("dmv", "node", "after.dmv.hypermesh")
    assert after.chain == (new_cert,)
    verify_path(after.certificate, after.chain, root)  # new issuance: the new key
    verify_path(before.certificate, before.chain, root)  # old certificates still chain
    assert ca.chain_for(before.serial) == (hierarchy.dmv.certificate,)
    assert [k.status for k in ca.store.ca_keys("dmv")] == [
        CaKeyStatus.PREVIOUS,
        CaKeyStatus.CURRENT,
    ]
    assert (
        ca.crl("dmv", key_version=1)
        .extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
        .value.key_identifier
        == key_of(hierarchy.dmv.certificate).key_id[:20]
    )

    with pytest.raises(InvalidCertificateRequest, match="current"):
        ca.retire("dmv", 2)
    ca.retire("dmv", 1)
    with pytest.raises(KeyRetired):
        keystore.signing_key("ca/dmv", 1)
    with pytest.raises(KeyRetired):
        ca.crl("dmv", key_version=1)
    # The old CA certificate is revoked (superseded) on the root's CRL.
    assert ca.record(hierarchy.dmv.serial).status is CertificateStatus.REVOKED
    root_crl = ca.crl()
    entry = root_crl.get_revoked_certificate_by_serial_number(hierarchy.dmv.serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
        x509.ReasonFlags.superseded
    )
    assert root_crl.get_revoked_certificate_by_serial_number(rolled.serial) is None
    latest = ca.issue("dmv", "node", "latest.dmv.hypermesh")
    verify_path(latest.certificate, latest.chain, root)


def test_root_rollover_cross_certificate_and_retirement(
    hierarchy: Hierarchy, keystore: KeyStore, clock: Clock, tmp_path: Path
) -> None:
    ca = hierarchy.ca
    old_root = hierarchy.root.certificate
    before = ca.issue("dmv", "node", "before.dmv.hypermesh")
    clock.advance(timedelta(minutes=1))
    rolled = ca.rollover("trustchain-root")
    new_root = rolled.certificate
    cross = rolled.cross_certificate
    assert cross is not None
    assert new_root.subject == new_root.issuer == old_root.subject
    assert key_of(new_root) != key_of(old_root)
    hybrid.verify_certificate_signatures(new_root, key_of(new_root))
    # The cross-certificate: the new key, signed by the old one, validity inside the old root's.
    assert key_of(cross) == key_of(new_root)
    verify_link(cross, old_root)
    assert cross.not_valid_after_utc <= old_root.not_valid_after_utc
    assert extension(cross, x509.BasicConstraints).value.ca
    assert ca.export_root() == [new_root, old_root]

    # Certificates issued before the rollover: the old path, and via the re-certified
    # intermediate to the new root, or through the cross-certificate to the old root.
    verify_path(before.certificate, before.chain, old_root)
    chain = ca.chain_for(before.serial)
    assert len(chain) == 2
    recertified, offered_cross = chain
    assert offered_cross == cross
    assert key_of(recertified) == key_of(hierarchy.dmv.certificate)
    verify_path(before.certificate, (recertified,), new_root)
    verify_path(before.certificate, chain, old_root)
    # Issued after: new intermediates are signed by the new root key.
    insurer = ca.issue_intermediate("insurer", "insurer.hypermesh")
    assert insurer.chain == (cross,)
    verify_path(insurer.certificate, (), new_root)
    verify_path(insurer.certificate, insurer.chain, old_root)
    after = ca.issue("insurer", "node", "n.insurer.hypermesh")
    verify_path(after.certificate, after.chain, old_root)
    verify_path(after.certificate, after.chain[:1], new_root)

    # OpenSSL agrees: the new chain validates against either anchor alone.
    (tmp_path / "old.pem").write_bytes(pem(old_root))
    (tmp_path / "new.pem").write_bytes(pem(new_root))
    (tmp_path / "chain.pem").write_bytes(pem(before.certificate, *chain))
    for anchor in ("old.pem", "new.pem"):
        result = openssl(
            "verify",
            "-CAfile",
            tmp_path / anchor,
            "-untrusted",
            tmp_path / "chain.pem",
            tmp_path / "chain.pem",
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith(": OK")

    ca.retire("trustchain-root", 1)
    with pytest.raises(KeyRetired):
        keystore.signing_key("ca/trustchain-root", 1)
    assert ca.export_root() == [new_root]
    assert ca.chain_for(before.serial) == (recertified,)  # the cross-certificate is gone
    verify_path(before.certificate, ca.chain_for(before.serial), new_root)
    assert ca.chain_for(after.serial) == (insurer.certificate,)
    # The old root is no longer an anchor: the old path no longer ends at one.
    assert old_root not in ca.export_root()
    (tmp_path / "anchors.pem").write_bytes(pem(*ca.export_root()))
    (tmp_path / "old-chain.pem").write_bytes(pem(before.certificate, *before.chain))
    result = openssl(
        "verify",
        "-CAfile",
        tmp_path / "anchors.pem",
        "-untrusted",
        tmp_path / "old-chain.pem",
        tmp_path / "old-chain.pem",
    )
    assert result.returncode != 0
    with pytest.raises(InvalidCertificateRequest):
        ca.retire("trustchain-root", 2)
    with pytest.raises(Exception, match="already retired"):
        ca.retire("trustchain-root", 1)


# --- embedded SCTs --------------------------------------------------------------------------------


def test_every_certificate_carries_a_verifying_sct(
    hierarchy: Hierarchy, log: TransparencyLog
) -> None:
    ca = hierarchy.ca
    ca.issue("dmv", "node", "n.dmv.hypermesh")
    ca.issue("dmv", "service", "s.dmv.hypermesh")
    ca.issue("bank", "asset", "a.bank.hypermesh")
    ca.rollover("trustchain-root")  # new root, cross-certificate, re-certified intermediates
    ca.rollover("dmv")
    records = ca.store.certificates()
    assert len(records) == 11
    assert log.size == len(records)
    seen_indices = set()
    for record in records:
        certificate = record.certificate()
        scts = embedded_sct.embedded_scts(certificate)
        assert len(scts) == 1
        (sct,) = scts
        entry = embedded_sct.log_entry(certificate)
        sct.verify(log.public_key, entry=entry)
        assert log.entry(sct.leaf_index).data == entry
        seen_indices.add(sct.leaf_index)
        # The entry is the preTBS without the SCT extension: a DER SEQUENCE that no longer
        # contains the SCTs, the Ed25519 or the Falcon signature.
        assert der.parse(entry).is_(der.SEQUENCE)
        assert sct.to_bytes() not in entry
        assert hybrid.pre_tbs_certificate(certificate) != entry
        assert certificate.signature not in entry
        extension_value = certificate.extensions.get_extension_for_oid(
            embedded_sct.EMBEDDED_SCT_LIST
        )
        assert not extension_value.critical
    assert seen_indices == set(range(len(records)))


def test_log_entry_is_bound_to_the_certificate(hierarchy: Hierarchy, log: TransparencyLog) -> None:
    one = hierarchy.ca.issue("dmv", "node", "one.dmv.hypermesh").certificate
    two = hierarchy.ca.issue("dmv", "node", "two.dmv.hypermesh").certificate
    (sct_one,) = embedded_sct.embedded_scts(one)
    with pytest.raises(Exception, match="another entry"):
        sct_one.verify(log.public_key, entry=embedded_sct.log_entry(two))


def test_no_log_no_sct(home: Path, keystore: KeyStore, clock: Clock) -> None:
    with CertificateAuthority(home, keystore, None, clock=clock) as ca:
        root = ca.init_root("r").certificate
        ca.issue_intermediate("e", "e.hypermesh")
        leaf = ca.issue("e", "node", "n.e.hypermesh").certificate
    for certificate in (root, leaf):
        assert embedded_sct.embedded_scts(certificate) == []
        assert embedded_sct.log_entry(certificate) == hybrid.pre_tbs_certificate(certificate)


def _with_extension(value: bytes, *, twice: bool = False) -> x509.Certificate:
    """A throw-away hybrid certificate carrying ``value`` as the embedded-SCT extension."""
    key = SigningKey.generate()
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(profiles.leaf_subject("t.hypermesh"))
        .issuer_name(profiles.leaf_subject("t.hypermesh"))
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.UnrecognizedExtension(embedded_sct.EMBEDDED_SCT_LIST, value), False)
    )
    certificate = hybrid.build_certificate(builder, subject_key=key.public_key(), issuer_key=key)
    if not twice:
        return certificate
    # Duplicate the extension by hand in the DER (cryptography refuses to build it).
    return _duplicate_sct_extension(certificate)


def _duplicate_sct_extension(certificate: x509.Certificate) -> x509.Certificate:
    outer = der.parse(certificate.public_bytes(Encoding.DER))
    tbs, algorithm, signature = outer.children()
    fields = tbs.children()
    wrapper = fields[-1]
    (inner,) = wrapper.children()
    items = inner.children()
    target = next(
        i
        for i in items
        if i.children()[0].encoded == der.encode_oid(embedded_sct.EMBEDDED_SCT_LIST.dotted_string)
    )
    new_inner = der.encode_sequence([i.encoded for i in items] + [target.encoded])
    new_tbs = der.encode_sequence(
        [f.encoded for f in fields[:-1]] + [der.encode_tlv(wrapper.tag, new_inner)]
    )
    return x509.load_der_x509_certificate(
        der.encode_sequence([new_tbs, algorithm.encoded, signature.encoded])
    )


def test_embedded_sct_encoding_round_trip_and_garbage(
    hierarchy: Hierarchy, log: TransparencyLog
) -> None:
    leaf = hierarchy.ca.issue("dmv", "node", "n.dmv.hypermesh").certificate
    (sct,) = embedded_sct.embedded_scts(leaf)
    encoded = embedded_sct.encode_scts([sct, sct])
    assert embedded_sct.decode_scts(encoded) == [sct, sct]
    with pytest.raises(ValueError, match="1 to 16"):
        embedded_sct.encode_scts([])
    for garbage in (
        b"",
        b"\x30\x00",  # an empty list
        b"\x04\x03abc",  # not a SEQUENCE
        der.encode_sequence([der.encode_octet_string(b"not an SCT")]),
        der.encode_sequence([der.encode_tlv(0x02, b"\x01")]),  # not an OCTET STRING
        encoded[:-1],
        encoded + b"\x00",
        der.encode_sequence([der.encode_octet_string(sct.to_bytes())] * 17),
    ):
        with pytest.raises(MalformedData):
            embedded_sct.decode_scts(garbage)
    garbled = _with_extension(b"\x30\x03\x04\x01\x00")
    with pytest.raises(MalformedData):
        embedded_sct.embedded_scts(garbled)
    doubled = _with_extension(embedded_sct.encode_scts([sct]), twice=True)
    with pytest.raises(MalformedData):
        embedded_sct.log_entry(doubled)
    with pytest.raises(MalformedData):
        embedded_sct.embedded_scts(doubled)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decode_scts_never_fails_untyped(data: bytes) -> None:
    try:
        scts = embedded_sct.decode_scts(data)
    except MalformedData:
        return
    assert 1 <= len(scts) <= embedded_sct.MAX_EMBEDDED_SCTS


# --- OpenSSL ------------------------------------------------------------------------------------


def test_openssl_parses_every_kind_and_verifies_the_chain(
    hierarchy: Hierarchy, tmp_path: Path
) -> None:
    ca = hierarchy.ca
    leaves = {
        "node": ca.issue(
            "dmv",
            "node",
            "host.dmv.hypermesh",
            dns_names=["alt.dmv.hypermesh"],
            ip_addresses=["192.0.2.10"],
        ),
        "service": ca.issue("dmv", "service", "registry.dmv.hypermesh"),
        "asset": ca.issue("dmv", "asset", "car.dmv.hypermesh", asset_id=b"\x07"),
    }
    root_pem = tmp_path / "root.pem"
    root_pem.write_bytes(pem(hierarchy.root.certificate))
    intermediate_pem = tmp_path / "intermediate.pem"
    intermediate_pem.write_bytes(pem(hierarchy.dmv.certificate))
    expectations = {
        root_pem: ["CA:TRUE", "Certificate Sign, CRL Sign", "ED25519", "2.5.29.72", "2.5.29.74"],
        intermediate_pem: ["CA:TRUE, pathlen:0", "Permitted:", "DNS:dmv.hypermesh", "URI:node"],
    }
    for kind, issued in leaves.items():
        path = tmp_path / f"{kind}.pem"
        path.write_bytes(pem(issued.certificate))
        expectations[path] = ["CA:FALSE", "Digital Signature", f"URI:hypermesh://{kind}/"]
    for path, needles in expectations.items():
        result = openssl("x509", "-noout", "-text", "-in", path)
        assert result.returncode == 0, result.stderr
        for needle in needles:
            assert needle in result.stdout, (path.name, needle)
    node_text = openssl("x509", "-noout", "-text", "-in", tmp_path / "node.pem").stdout
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in node_text
    assert "IP Address:192.0.2.10" in node_text
    for kind in leaves:
        leaf_pem = tmp_path / f"{kind}.pem"
        result = openssl("verify", "-CAfile", root_pem, "-untrusted", intermediate_pem, leaf_pem)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{leaf_pem}: OK"
    # Policies and EKU mean what they say to OpenSSL as well.
    node_policy = CertificateKind.NODE.policy.dotted_string
    strict = ("-policy_check", "-explicit_policy", "-policy", node_policy)
    common = ("-CAfile", root_pem, "-untrusted", intermediate_pem)
    assert openssl("verify", *strict, *common, tmp_path / "node.pem").returncode == 0
    assert openssl("verify", *strict, *common, tmp_path / "asset.pem").returncode != 0
    server = ("-purpose", "sslserver", *common)
    assert openssl("verify", *server, tmp_path / "node.pem").returncode == 0
    assert openssl("verify", *server, tmp_path / "asset.pem").returncode != 0
    # A leaf presented with the wrong intermediate does not verify.
    bank_pem = tmp_path / "bank.pem"
    bank_pem.write_bytes(pem(hierarchy.bank.certificate))
    result = openssl("verify", "-CAfile", root_pem, "-untrusted", bank_pem, tmp_path / "node.pem")
    assert result.returncode != 0


def test_issued_pem_is_leaf_then_chain(hierarchy: Hierarchy) -> None:
    issued: Issued = hierarchy.ca.issue("dmv", "node", "n.dmv.hypermesh")
    loaded = x509.load_pem_x509_certificates(issued.pem())
    assert loaded == [issued.certificate, hierarchy.dmv.certificate]
    assert oids.parse_hypermesh_uri(
        extension(issued.certificate, x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        )[0]
    ) == ("node", key_of(issued.certificate).key_id)
    assert (
        issued.certificate.extensions.get_extension_for_oid(
            ExtensionOID.SUBJECT_ALTERNATIVE_NAME
        ).critical
        is False
    )
    assert hierarchy.ca.keystore.info("leaf/n.dmv.hypermesh").status is KeyStatus.ACTIVE
