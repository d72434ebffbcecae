"""Tests of revocation and CRLs: full and sharded CRLs, both signatures, reasons, numbering,
update times, retention, key-compromise handling, and OpenSSL's reading of them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from trustchain.ca import der, hybrid, oids
from trustchain.ca.authority import EXPIRED_ENTRY_RETENTION, CertificateAuthority, Issued
from trustchain.ca.store import CertificateStatus
from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KeyStatus, KeyStore
from trustchain.crypto.signatures import SigningKey, VerifyKey
from trustchain.errors import (
    AlreadyRevoked,
    AltSignatureInvalid,
    CertificateNotFound,
    ClassicalSignatureInvalid,
    InvalidCertificateRequest,
    InvalidSignature,
    KeyRevoked,
)

OPENSSL = "/usr/bin/openssl"
REASONS = [
    x509.ReasonFlags.key_compromise,
    x509.ReasonFlags.ca_compromise,
    x509.ReasonFlags.affiliation_changed,
    x509.ReasonFlags.superseded,
    x509.ReasonFlags.cessation_of_operation,
    x509.ReasonFlags.privilege_withdrawn,
    x509.ReasonFlags.aa_compromise,
]


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keystore(tmp_path: Path) -> Iterator[KeyStore]:
    with KeyStore.open(
        tmp_path / "home",
        passphrase=b"crl tests",
        kdf_params=INSECURE_TEST_KDF_PARAMS,
        allow_weak_kdf=True,
    ) as store:
        yield store


@pytest.fixture
def ca(tmp_path: Path, keystore: KeyStore, clock: Clock) -> Iterator[CertificateAuthority]:
    # No transparency log here: CRLs do not depend on it, and the tests run faster.
    with CertificateAuthority(tmp_path / "home", keystore, None, clock=clock) as authority:
        authority.init_root("root")
        authority.issue_intermediate("dmv", "dmv.hypermesh")
        yield authority


@pytest.fixture(scope="module")
def subject_keys() -> list[VerifyKey]:
    """Distinct subject keys (a keyCompromise revokes every certificate of its key)."""
    return [SigningKey.generate().public_key() for _ in range(12)]


@pytest.fixture
def leaves(ca: CertificateAuthority, subject_keys: list[VerifyKey]) -> list[Issued]:
    """Twelve node certificates with external keys (made once per module: fast)."""
    return [
        ca.issue("dmv", "node", f"n{i}.dmv.hypermesh", subject_key=key)
        for i, key in enumerate(subject_keys)
    ]


def dmv_key(ca: CertificateAuthority) -> VerifyKey:
    return hybrid.certificate_public_key(ca.certificate(ca.ca("dmv").serial))


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def reason_of(crl: x509.CertificateRevocationList, serial: int) -> x509.ReasonFlags | None:
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return None


def test_full_crl(ca: CertificateAuthority, leaves: list[Issued], clock: Clock) -> None:
    revoked = {}
    for issued, reason in zip(leaves, REASONS, strict=False):
        ca.revoke(issued.serial, reason)
        revoked[issued.serial] = reason
    ca.revoke(leaves[-1].serial)  # unspecified: listed without a reasonCode
    crl = ca.crl("dmv")
    hybrid.verify_crl_signatures(crl, dmv_key(ca))
    assert crl.issuer == ca.certificate(ca.ca("dmv").serial).subject
    assert {entry.serial_number for entry in crl} == {*revoked, leaves[-1].serial}
    for serial, reason in revoked.items():
        assert reason_of(crl, serial) is reason
        entry = crl.get_revoked_certificate_by_serial_number(serial)
        assert entry is not None
        assert entry.revocation_date_utc == clock.now
    assert reason_of(crl, leaves[-1].serial) is None
    for issued in leaves[len(REASONS) : -1]:
        assert crl.get_revoked_certificate_by_serial_number(issued.serial) is None
    assert crl.last_update_utc == clock.now
    assert crl.next_update_utc == clock.now + timedelta(hours=1)
    with pytest.raises(x509.ExtensionNotFound):
        crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == dmv_key(ca).key_id[:20]
    assert ca.record(leaves[0].serial).status is CertificateStatus.REVOKED
    assert ca.record(leaves[0].serial).reason is REASONS[0]


def test_crl_numbers_increase_per_scope(ca: CertificateAuthority) -> None:
    assert [crl_number(ca.crl("dmv")) for _ in range(3)] == [1, 2, 3]
    assert [crl_number(ca.crl("dmv", 1)) for _ in range(2)] == [1, 2]
    assert crl_number(ca.crl("dmv", 2)) == 1
    assert crl_number(ca.crl("dmv")) == 4
    assert crl_number(ca.crl()) == 1  # the root's own full CRL


def test_sharded_crls(ca: CertificateAuthority, leaves: list[Issued]) -> None:
    for issued in leaves[::2]:
        ca.revoke(issued.serial, x509.ReasonFlags.cessation_of_operation)
    revoked = {issued.serial for issued in leaves[::2]}
    seen: set[int] = set()
    for shard in range(4):
        crl = ca.crl("dmv", shard)
        hybrid.verify_crl_signatures(crl, dmv_key(ca))
        listed = {entry.serial_number for entry in crl}
        assert listed == {serial for serial in revoked if serial % 4 == shard}
        seen |= listed
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
        assert idp.critical
        uri = f"hypermesh://trustchain/crl/dmv/shard-{shard}.crl"
        assert idp.value.full_name == [x509.UniformResourceIdentifier(uri)]
        assert idp.value.only_contains_user_certs
        assert not idp.value.only_contains_ca_certs
        assert idp.value.only_some_reasons is None
        assert not idp.value.indirect_crl
        # Every leaf of this shard names exactly this CRL.
        for issued in leaves:
            if issued.serial % 4 == shard:
                points = issued.certificate.extensions.get_extension_for_class(
                    x509.CRLDistributionPoints
                ).value
                assert points[0].full_name == idp.value.full_name
    assert seen == revoked
    with pytest.raises(InvalidCertificateRequest, match="4 CRL shards"):
        ca.crl("dmv", 4)


def test_configurable_shards_and_update_interval(
    tmp_path: Path, keystore: KeyStore, clock: Clock
) -> None:
    with CertificateAuthority(
        tmp_path / "other", keystore, None, clock=clock, crl_validity=timedelta(minutes=10)
    ) as ca:
        ca.init_root("r2")
        ca.issue_intermediate("one", "one.hypermesh", crl_shards=1)
        leaf = ca.issue("one", "node", "n.one.hypermesh")
        ca.revoke(leaf.serial, "superseded")
        crl = ca.crl("one", 0)
        assert crl.next_update_utc == clock.now + timedelta(minutes=10)
        assert [entry.serial_number for entry in crl] == [leaf.serial]
        with pytest.raises(InvalidCertificateRequest):
            ca.crl("one", 1)
    with pytest.raises(InvalidCertificateRequest):
        CertificateAuthority(tmp_path / "x", keystore, None, crl_validity=timedelta(0))


def test_ca_certificates_are_on_the_parent_full_crl_only(ca: CertificateAuthority) -> None:
    bank = ca.issue_intermediate("bank", "bank.hypermesh")
    ca.revoke(bank.serial, "cACompromise")
    root_crl = ca.crl()
    root_key = hybrid.certificate_public_key(ca.export_root()[0])
    hybrid.verify_crl_signatures(root_crl, root_key)
    assert reason_of(root_crl, bank.serial) is x509.ReasonFlags.ca_compromise
    assert ca.record(bank.serial).crl_shard is None
    for shard in range(4):
        assert len(ca.crl(None, shard)) == 0
    with pytest.raises(Exception, match="revoked"):
        ca.issue("bank", "node", "n.bank.hypermesh")


def test_revocation_refusals(ca: CertificateAuthority, leaves: list[Issued]) -> None:
    ca.revoke(leaves[0].serial, "privilegeWithdrawn")
    with pytest.raises(AlreadyRevoked):
        ca.revoke(leaves[0].serial, "keyCompromise")
    with pytest.raises(CertificateNotFound):
        ca.revoke(424242, "keyCompromise")
    for refused in (
        "certificateHold",
        "removeFromCRL",
        "stolen",
        x509.ReasonFlags.certificate_hold,
    ):
        with pytest.raises(InvalidCertificateRequest):
            ca.revoke(leaves[1].serial, refused)
    with pytest.raises(InvalidCertificateRequest, match="self-signed"):
        ca.revoke(ca.ca().serial, "keyCompromise")
    assert ca.record(leaves[1].serial).status is CertificateStatus.VALID


def test_key_compromise_revokes_every_certificate_of_the_key(
    ca: CertificateAuthority, keystore: KeyStore
) -> None:
    first = ca.issue("dmv", "node", "n.dmv.hypermesh")
    second = ca.renew(first.serial, rekey=False)  # same key
    rekeyed = ca.renew(first.serial)  # new key version
    ca.revoke(first.serial, "keyCompromise")
    assert ca.record(second.serial).status is CertificateStatus.REVOKED
    assert ca.record(second.serial).reason is x509.ReasonFlags.key_compromise
    assert ca.record(rekeyed.serial).status is CertificateStatus.VALID
    assert keystore.info("leaf/n.dmv.hypermesh", 1).status is KeyStatus.REVOKED
    assert keystore.info("leaf/n.dmv.hypermesh", 2).status is KeyStatus.ACTIVE
    with pytest.raises(KeyRevoked):
        keystore.signing_key("leaf/n.dmv.hypermesh", 1)
    crl = ca.crl("dmv")
    assert {e.serial_number for e in crl} == {first.serial, second.serial}


def test_compromised_intermediate_recovers_by_rollover(
    ca: CertificateAuthority, keystore: KeyStore, subject_keys: list[VerifyKey]
) -> None:
    dmv_serial = ca.ca("dmv").serial
    ca.revoke(dmv_serial, "keyCompromise")
    assert keystore.info("ca/dmv", 1).status is KeyStatus.REVOKED
    with pytest.raises(KeyRevoked):
        ca.issue("dmv", "node", "n.dmv.hypermesh", subject_key=subject_keys[0])
    assert reason_of(ca.crl(), dmv_serial) is x509.ReasonFlags.key_compromise
    rolled = ca.rollover("dmv")  # the root certifies a fresh key
    leaf = ca.issue("dmv", "node", "n.dmv.hypermesh", subject_key=subject_keys[0])
    assert leaf.chain == (rolled.certificate,)
    hybrid.verify_certificate_signatures(
        leaf.certificate, hybrid.certificate_public_key(rolled.certificate)
    )
    hybrid.verify_crl_signatures(ca.crl("dmv"), hybrid.certificate_public_key(rolled.certificate))
    ca.retire("dmv", 1)  # nothing left to revoke; the key store key stays revoked
    assert keystore.info("ca/dmv", 1).status is KeyStatus.REVOKED


def test_expired_entries_leave_the_crl_after_retention(
    ca: CertificateAuthority, clock: Clock
) -> None:
    key = SigningKey.generate().public_key()
    short = ca.issue("dmv", "node", "s.dmv.hypermesh", subject_key=key, validity=timedelta(hours=1))
    ca.revoke(short.serial, "superseded")
    clock.advance(timedelta(hours=1) + EXPIRED_ENTRY_RETENTION)
    assert short.serial in {e.serial_number for e in ca.crl("dmv")}  # expired, still retained
    clock.advance(timedelta(seconds=1))
    assert len(ca.crl("dmv")) == 0


def test_crl_signed_by_a_previous_key_during_rollover(ca: CertificateAuthority) -> None:
    old_key = dmv_key(ca)
    leaf = ca.issue(
        "dmv", "node", "n.dmv.hypermesh", subject_key=SigningKey.generate().public_key()
    )
    ca.revoke(leaf.serial, "keyCompromise")
    ca.rollover("dmv")
    new_key = dmv_key(ca)
    old_crl = ca.crl("dmv", key_version=1)
    new_crl = ca.crl("dmv")
    hybrid.verify_crl_signatures(old_crl, old_key)
    hybrid.verify_crl_signatures(new_crl, new_key)
    with pytest.raises(InvalidSignature):
        hybrid.verify_crl_signatures(new_crl, old_key)
    for crl in (old_crl, new_crl):
        assert crl.get_revoked_certificate_by_serial_number(leaf.serial) is not None
    assert crl_number(new_crl) == crl_number(old_crl) + 1


@pytest.fixture(scope="module")
def signed_crl(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, SigningKey]:
    """A DER CRL listing one revoked leaf, and the issuing CA's key."""
    home = tmp_path_factory.mktemp("crl-module")
    with (
        KeyStore.open(
            home, passphrase=b"x", kdf_params=INSECURE_TEST_KDF_PARAMS, allow_weak_kdf=True
        ) as store,
        CertificateAuthority(home, store, None) as authority,
    ):
        authority.init_root("root")
        authority.issue_intermediate("dmv", "dmv.hypermesh")
        leaf = authority.issue(
            "dmv", "node", "n.dmv.hypermesh", subject_key=SigningKey.generate().public_key()
        )
        authority.revoke(leaf.serial, "keyCompromise")
        crl = authority.crl("dmv")
        return crl.public_bytes(Encoding.DER), store.signing_key("ca/dmv")


def _resigned(tampered: bytes, key: SigningKey) -> x509.CertificateRevocationList:
    """``tampered`` with a fresh, valid Ed25519 signature over its (tampered) TBS."""
    tbs, algorithm, _ = der.parse(tampered).children()
    signature = hybrid.classical_private_key(key).sign(tbs.encoded)
    return x509.load_der_x509_crl(
        der.encode_sequence([tbs.encoded, algorithm.encoded, der.encode_bit_string(signature)])
    )


@settings(max_examples=25, deadline=None)
@given(position=st.integers(min_value=0, max_value=10_000), flip=st.integers(1, 255))
def test_a_changed_byte_in_either_crl_signature_is_rejected(
    signed_crl: tuple[bytes, SigningKey], position: int, flip: int
) -> None:
    data, key = signed_crl
    public = key.public_key()
    crl = x509.load_der_x509_crl(data)
    hybrid.verify_crl_signatures(crl, public)
    classical = crl.signature
    tampered = bytearray(data)
    tampered[data.rindex(classical) + position % len(classical)] ^= flip
    with pytest.raises(ClassicalSignatureInvalid):
        hybrid.verify_crl_signatures(x509.load_der_x509_crl(bytes(tampered)), public)
    # In the Falcon-1024 signature (past its 0x3A header byte), with the Ed25519 signature
    # re-made over the tampered TBS: only the alternative signature fails.
    alt_value = crl.extensions.get_extension_for_oid(oids.ALT_SIGNATURE_VALUE).value
    falcon_signature = der.decode_bit_string(der.parse(alt_value.value))
    offset = data.index(falcon_signature) + 1 + position % (len(falcon_signature) - 1)
    tampered = bytearray(data)
    tampered[offset] ^= flip
    with pytest.raises(AltSignatureInvalid):
        hybrid.verify_crl_signatures(_resigned(bytes(tampered), key), public)


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPENSSL, *(str(a) for a in args)], capture_output=True, text=True, check=False
    )


def test_openssl_reads_full_and_sharded_crls(
    ca: CertificateAuthority, tmp_path: Path, clock: Clock
) -> None:
    leaf = ca.issue("dmv", "node", "n.dmv.hypermesh")
    other = ca.issue("dmv", "node", "m.dmv.hypermesh")
    ca.revoke(leaf.serial, "keyCompromise")
    shard = leaf.serial % 4
    files = {
        "full": ca.crl("dmv"),
        "shard": ca.crl("dmv", shard),
        "root": ca.crl(),
    }
    for name, crl in files.items():
        (tmp_path / f"{name}.pem").write_bytes(crl.public_bytes(Encoding.PEM))
        result = openssl("crl", "-noout", "-text", "-in", tmp_path / f"{name}.pem")
        assert result.returncode == 0, result.stderr
        assert "Signature Algorithm: ED25519" in result.stdout
        assert "X509v3 CRL Number" in result.stdout
        assert "2.5.29.74" in result.stdout  # the Falcon-1024 alternative signature
    full_text = openssl("crl", "-noout", "-text", "-in", tmp_path / "full.pem").stdout
    assert f"{leaf.serial:X}" in full_text.replace(":", "")
    assert "Key Compromise" in full_text
    shard_text = openssl("crl", "-noout", "-text", "-in", tmp_path / "shard.pem").stdout
    assert "Issuing Distribution Point: critical" in shard_text
    assert f"URI:hypermesh://trustchain/crl/dmv/shard-{shard}.crl" in shard_text
    assert "Only User Certificates" in shard_text
    # OpenSSL's own revocation check, with the full CRL and with the leaf's shard.
    (tmp_path / "root-cert.pem").write_bytes(ca.export_root()[0].public_bytes(Encoding.PEM))
    for name in ("full", "shard"):
        crls = tmp_path / f"crls-{name}.pem"
        crls.write_bytes(
            (tmp_path / "root.pem").read_bytes() + (tmp_path / f"{name}.pem").read_bytes()
        )
        for issued, expected in ((leaf, "certificate revoked"), (other, None)):
            chain = tmp_path / "chain.pem"
            chain.write_bytes(issued.pem())
            result = openssl(
                "verify",
                "-crl_check",
                "-extended_crl",
                "-CAfile",
                tmp_path / "root-cert.pem",
                "-CRLfile",
                crls,
                "-untrusted",
                chain,
                chain,
            )
            if expected is None and (name == "full" or other.serial % 4 == shard):
                assert result.returncode == 0, result.stdout + result.stderr
            elif expected is not None:
                assert result.returncode != 0
                assert expected in result.stdout + result.stderr
