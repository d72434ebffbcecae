"""trustchain.ca.hybrid: Ed25519 + Falcon-1024 X.509 certificates and CRLs.

A three-link chain (root CA -> name-constrained intermediate CA -> node leaf) is built once per
module. Tampering is done on the DER with trustchain.ca.der; where only the alternative
signature should notice a change, the tampered TBS is re-signed with the issuer's Ed25519 key
(an attacker who has broken, or owns, the classical key), so the classical signature is valid
and the exact exception type shows which check caught it.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import shutil
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from trustchain.ca import der, hybrid, oids
from trustchain.crypto.algorithms import SignatureAlgorithm
from trustchain.crypto.signatures import Signature, SigningKey, VerifyKey
from trustchain.errors import (
    AlgorithmMismatch,
    AltSignatureInvalid,
    ClassicalSignatureInvalid,
    InvalidKey,
    MalformedData,
    TrustChainError,
)

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
NAMESPACE = "dmv.hypermesh"
NODE_ID = bytes(range(32))
LEAF_DNS = f"node1.{NAMESPACE}"
LEAF_IP = ipaddress.ip_address("10.20.30.40")

SUBJECT_ALT_KEY = oids.SUBJECT_ALT_PUBLIC_KEY_INFO.dotted_string
ALT_ALGORITHM = oids.ALT_SIGNATURE_ALGORITHM.dotted_string
ALT_VALUE = oids.ALT_SIGNATURE_VALUE.dotted_string
CERT_EXTENSIONS_TAG = 0xA3
CRL_EXTENSIONS_TAG = 0xA0

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
requires_openssl = pytest.mark.skipif(
    not Path(OPENSSL).exists(), reason="openssl is not installed (apt-get install openssl)"
)


def _name(common_name: str, organization: str = "HyperMesh") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ski(key: VerifyKey) -> x509.SubjectKeyIdentifier:
    ed25519, _ = key.components()
    return x509.SubjectKeyIdentifier.from_public_key(
        Ed25519PublicKey.from_public_bytes(ed25519.raw)
    )


def _builder(subject: x509.Name, issuer: x509.Name, hours: int = 24) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(minutes=5))
        .not_valid_after(NOW + datetime.timedelta(hours=hours))
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class Chain:
    root_key: SigningKey
    intermediate_key: SigningKey
    leaf_key: SigningKey
    root: x509.Certificate
    intermediate: x509.Certificate
    leaf: x509.Certificate

    def links(self) -> list[tuple[str, x509.Certificate, SigningKey, SigningKey]]:
        """(label, certificate, subject key, issuer key) for every link."""
        return [
            ("root", self.root, self.root_key, self.root_key),
            ("intermediate", self.intermediate, self.intermediate_key, self.root_key),
            ("leaf", self.leaf, self.leaf_key, self.intermediate_key),
        ]


def _build_chain() -> Chain:
    root_key, intermediate_key, leaf_key = (SigningKey.generate() for _ in range(3))
    root_name, intermediate_name = _name("TrustChain Root CA"), _name("DMV CA", "DMV")
    root_builder = (
        _builder(root_name, root_name, hours=24 * 365)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(_ski(root_key.public_key()), critical=False)
    )
    root = hybrid.build_certificate(
        root_builder, subject_key=root_key.public_key(), issuer_key=root_key
    )
    intermediate_builder = (
        _builder(intermediate_name, root_name, hours=24 * 90)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.DNSName(NAMESPACE)], excluded_subtrees=None
            ),
            critical=True,
        )
        .add_extension(_ski(intermediate_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                _ski(root_key.public_key())
            ),
            critical=False,
        )
    )
    intermediate = hybrid.build_certificate(
        intermediate_builder, subject_key=intermediate_key.public_key(), issuer_key=root_key
    )
    leaf_builder = (
        _builder(_name(LEAF_DNS, "DMV"), intermediate_name)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(LEAF_DNS),
                    x509.IPAddress(LEAF_IP),
                    x509.UniformResourceIdentifier(oids.hypermesh_uri("node", NODE_ID)),
                ]
            ),
            critical=False,
        )
        .add_extension(_ski(leaf_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                _ski(intermediate_key.public_key())
            ),
            critical=False,
        )
    )
    leaf = hybrid.build_certificate(
        leaf_builder, subject_key=leaf_key.public_key(), issuer_key=intermediate_key
    )
    return Chain(root_key, intermediate_key, leaf_key, root, intermediate, leaf)


@pytest.fixture(scope="module")
def chain() -> Chain:
    return _build_chain()


def _crl_builder(
    issuer: x509.Name, revoked: list[tuple[int, x509.ReasonFlags]]
) -> x509.CertificateRevocationListBuilder:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer)
        .last_update(NOW - datetime.timedelta(minutes=1))
        .next_update(NOW + datetime.timedelta(hours=6))
        .add_extension(x509.CRLNumber(7), critical=False)
    )
    for serial, reason in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(NOW - datetime.timedelta(minutes=2))
            .add_extension(x509.CRLReason(reason), critical=False)
            .build()
        )
    return builder


@pytest.fixture(scope="module")
def crl(chain: Chain) -> x509.CertificateRevocationList:
    builder = _crl_builder(
        chain.intermediate.subject,
        [
            (chain.leaf.serial_number, x509.ReasonFlags.key_compromise),
            (42, x509.ReasonFlags.superseded),
        ],
    )
    return hybrid.build_crl(builder, issuer_key=chain.intermediate_key)


# --- DER surgery helpers ----------------------------------------------------------------------


def _extension(oid: str, value: bytes, *, critical: bool = False) -> bytes:
    flag = [der.encode_tlv(der.BOOLEAN, b"\xff")] if critical else []
    return der.encode_sequence([der.encode_oid(oid), *flag, der.encode_octet_string(value)])


def _extension_oid(item: der.Element) -> str:
    return der.decode_oid(item.children()[0])


def _extension_value(item: der.Element) -> bytes:
    return der.decode_octet_string(item.children()[-1])


def _edit_extensions(
    tbs: bytes, tag: int, edit: Callable[[list[der.Element]], list[bytes]]
) -> bytes:
    """``tbs`` with its (last, explicitly tagged) Extensions list replaced by ``edit``'s."""
    fields = der.parse(tbs).children()
    wrapper = fields[-1]
    assert wrapper.is_(tag)
    items = wrapper.children()[0].children()
    new_wrapper = der.encode_tlv(wrapper.tag, der.encode_sequence(edit(items)))
    return der.encode_sequence([field.encoded for field in fields[:-1]] + [new_wrapper])


def _replace(oid: str, new: bytes) -> Callable[[list[der.Element]], list[bytes]]:
    def edit(items: list[der.Element]) -> list[bytes]:
        return [new if _extension_oid(item) == oid else item.encoded for item in items]

    return edit


def _remove(oid: str) -> Callable[[list[der.Element]], list[bytes]]:
    def edit(items: list[der.Element]) -> list[bytes]:
        kept = [item.encoded for item in items if _extension_oid(item) != oid]
        assert len(kept) == len(items) - 1
        return kept

    return edit


def _signed(tbs: bytes, issuer: SigningKey) -> bytes:
    """The DER certificate/CRL of ``tbs`` signed with ``issuer``'s Ed25519 component."""
    signature = hybrid.classical_private_key(issuer).sign(tbs)
    return der.encode_sequence(
        [tbs, hybrid.ED25519_ALGORITHM_IDENTIFIER, der.encode_bit_string(signature)]
    )


def _resigned_certificate(tbs: bytes, issuer: SigningKey) -> x509.Certificate:
    return x509.load_der_x509_certificate(_signed(tbs, issuer))


def _resigned_crl(tbs: bytes, issuer: SigningKey) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(_signed(tbs, issuer))


def _alt_signature(obj: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    tbs = obj.tbs_certificate_bytes if isinstance(obj, x509.Certificate) else obj.tbs_certlist_bytes
    items = der.parse(tbs).children()[-1].children()[0].children()
    (value,) = [_extension_value(item) for item in items if _extension_oid(item) == ALT_VALUE]
    return der.decode_bit_string(der.parse(value))


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def _pem(path: Path, obj: x509.Certificate | x509.CertificateRevocationList) -> Path:
    path.write_bytes(obj.public_bytes(Encoding.PEM))
    return path


def _openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPENSSL, *map(str, args)], capture_output=True, text=True, check=False, timeout=60
    )


# --- the chain --------------------------------------------------------------------------------


def test_both_signatures_verify_on_every_link(chain: Chain) -> None:
    for label, certificate, subject_key, issuer_key in chain.links():
        hybrid.verify_certificate_signatures(certificate, issuer_key.public_key())
        assert hybrid.certificate_public_key(certificate) == subject_key.public_key(), label
        # The classical half alone is an ordinary Ed25519 certificate to cryptography.
        assert isinstance(certificate.public_key(), Ed25519PublicKey)
        assert certificate.signature_algorithm_oid.dotted_string == "1.3.101.112"
    chain.intermediate.verify_directly_issued_by(chain.root)
    chain.leaf.verify_directly_issued_by(chain.intermediate)


def test_alt_extensions_layout(chain: Chain) -> None:
    for _, certificate, subject_key, _ in chain.links():
        extensions = list(certificate.extensions)
        assert extensions[-1].oid == oids.ALT_SIGNATURE_VALUE
        alt = {ext.oid: ext for ext in extensions if ext.oid.dotted_string.startswith("2.5.29.7")}
        assert set(alt) == {
            oids.SUBJECT_ALT_PUBLIC_KEY_INFO,
            oids.ALT_SIGNATURE_ALGORITHM,
            oids.ALT_SIGNATURE_VALUE,
        }
        assert not any(ext.critical for ext in alt.values())
        algorithm = alt[oids.ALT_SIGNATURE_ALGORITHM].value
        assert isinstance(algorithm, x509.UnrecognizedExtension)
        # SEQUENCE { OID 1.3.9999.3.14 }, parameters absent.
        assert algorithm.value == bytes.fromhex("300706052bce0f030e")
        alt_key = alt[oids.SUBJECT_ALT_PUBLIC_KEY_INFO].value
        assert isinstance(alt_key, x509.UnrecognizedExtension)
        _, falcon_key = subject_key.public_key().components()
        assert alt_key.value == hybrid.falcon_public_key_info(falcon_key)
        assert der.decode_bit_string(der.parse(alt_key.value).children()[1]) == falcon_key.raw


def test_pre_tbs_certificate_is_tbs_without_signature_field_and_alt_value(chain: Chain) -> None:
    for _, certificate, _, issuer_key in chain.links():
        # An independent derivation, through parse_tree instead of rebuild_without.
        tree = der.parse_tree(certificate.tbs_certificate_bytes)
        assert isinstance(tree.value, tuple)
        fields = list(tree.value)
        signature_field = fields.pop(2)
        assert signature_field.encode() == hybrid.ED25519_ALGORITHM_IDENTIFIER
        wrapper = fields.pop()
        assert isinstance(wrapper.value, tuple)
        (extensions,) = wrapper.value
        assert isinstance(extensions.value, tuple)
        kept = tuple(
            item
            for item in extensions.value
            if isinstance(item.value, tuple) and item.value[0].encode() != der.encode_oid(ALT_VALUE)
        )
        assert len(kept) == len(extensions.value) - 1
        fields.append(der.Node(wrapper.tag, (der.Node(extensions.tag, kept),)))
        expected = der.Node(tree.tag, tuple(fields)).encode()
        pre_tbs = hybrid.pre_tbs_certificate(certificate)
        assert pre_tbs == expected
        # The Falcon-1024 component of the issuer signed exactly these bytes, as is.
        _, issuer_falcon = issuer_key.public_key().components()
        issuer_falcon.verify(
            Signature(SignatureAlgorithm.FALCON_1024, _alt_signature(certificate)), pre_tbs
        )


@requires_openssl
def test_openssl_parses_every_certificate(chain: Chain, tmp_path: Path) -> None:
    for label, certificate, _, _ in chain.links():
        result = _openssl(
            "x509", "-noout", "-text", "-in", _pem(tmp_path / f"{label}.pem", certificate)
        )
        assert result.returncode == 0, result.stderr
        text = result.stdout
        assert "ED25519" in text
        for oid, name in [
            (SUBJECT_ALT_KEY, "Alternative Public Key"),
            (ALT_ALGORITHM, "Alternative Signature Algorithm"),
            (ALT_VALUE, "Alternative Signature Value"),
        ]:
            assert oid in text or name in text, (label, oid)
    leaf_text = _openssl("x509", "-noout", "-text", "-in", tmp_path / "leaf.pem").stdout
    assert f"DNS:{LEAF_DNS}" in leaf_text
    assert f"IP Address:{LEAF_IP}" in leaf_text
    assert f"URI:hypermesh://node/{NODE_ID.hex()}" in leaf_text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in leaf_text
    intermediate_text = _openssl("x509", "-noout", "-text", "-in", tmp_path / "intermediate.pem")
    assert f"DNS:{NAMESPACE}" in intermediate_text.stdout
    assert "pathlen:0" in intermediate_text.stdout


@requires_openssl
def test_openssl_verifies_the_classical_chain(chain: Chain, tmp_path: Path) -> None:
    root = _pem(tmp_path / "root.pem", chain.root)
    intermediate = _pem(tmp_path / "intermediate.pem", chain.intermediate)
    leaf = _pem(tmp_path / "leaf.pem", chain.leaf)
    result = _openssl("verify", "-CAfile", root, "-untrusted", intermediate, leaf)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"{leaf}: OK"
    # And with the purpose the node certificate is for.
    for purpose in ("sslserver", "sslclient"):
        result = _openssl(
            "verify", "-purpose", purpose, "-CAfile", root, "-untrusted", intermediate, leaf
        )
        assert result.stdout.strip() == f"{leaf}: OK", result.stderr


# --- tampering --------------------------------------------------------------------------------


def test_changed_classical_signature_byte(chain: Chain) -> None:
    encoded = chain.leaf.public_bytes(Encoding.DER)
    for index in (len(encoded) - 1, len(encoded) - 33, len(encoded) - 64):
        tampered = x509.load_der_x509_certificate(_flip(encoded, index))
        with pytest.raises(ClassicalSignatureInvalid):
            hybrid.verify_certificate_signatures(tampered, chain.intermediate_key.public_key())


def test_changed_alt_signature_byte(chain: Chain) -> None:
    encoded = chain.leaf.public_bytes(Encoding.DER)
    alt = _alt_signature(chain.leaf)
    start = encoded.index(alt)
    for offset in (1, 20, len(alt) // 2, len(alt) - 1):
        tampered = x509.load_der_x509_certificate(_flip(encoded, start + offset))
        with pytest.raises(AltSignatureInvalid):
            hybrid.verify_certificate_signatures(tampered, chain.intermediate_key.public_key())


def test_changed_alt_signature_byte_with_valid_classical_signature(chain: Chain) -> None:
    alt = bytearray(_alt_signature(chain.leaf))
    alt[len(alt) // 2] ^= 0x40
    tbs = _edit_extensions(
        chain.leaf.tbs_certificate_bytes,
        CERT_EXTENSIONS_TAG,
        _replace(ALT_VALUE, _extension(ALT_VALUE, der.encode_bit_string(bytes(alt)))),
    )
    forged = _resigned_certificate(tbs, chain.intermediate_key)
    forged.verify_directly_issued_by(chain.intermediate)  # classical check passes
    with pytest.raises(AltSignatureInvalid, match="altSignatureValue"):
        hybrid.verify_certificate_signatures(forged, chain.intermediate_key.public_key())


def test_swapped_alt_public_key(chain: Chain) -> None:
    """A different subjectAltPublicKeyInfo, re-signed classically by the issuer: only the
    alternative signature (whose preTBS contains the alt key) catches it."""
    _, other_falcon = SigningKey.generate().public_key().components()
    tbs = _edit_extensions(
        chain.leaf.tbs_certificate_bytes,
        CERT_EXTENSIONS_TAG,
        _replace(
            SUBJECT_ALT_KEY,
            _extension(SUBJECT_ALT_KEY, hybrid.falcon_public_key_info(other_falcon)),
        ),
    )
    forged = _resigned_certificate(tbs, chain.intermediate_key)
    forged.verify_directly_issued_by(chain.intermediate)
    _, forged_falcon = hybrid.certificate_public_key(forged).components()
    assert forged_falcon == other_falcon
    with pytest.raises(AltSignatureInvalid):
        hybrid.verify_certificate_signatures(forged, chain.intermediate_key.public_key())


def test_changed_tbs_byte_reports_the_alt_signature(chain: Chain) -> None:
    encoded = chain.leaf.public_bytes(Encoding.DER)
    index = encoded.index(LEAF_DNS.encode())
    tampered = x509.load_der_x509_certificate(encoded[:index] + b"X" + encoded[index + 1 :])
    with pytest.raises(AltSignatureInvalid, match="nor does its Ed25519 signature"):
        hybrid.verify_certificate_signatures(tampered, chain.intermediate_key.public_key())


def test_wrong_issuer_key(chain: Chain) -> None:
    with pytest.raises(AltSignatureInvalid):
        hybrid.verify_certificate_signatures(chain.leaf, chain.root_key.public_key())
    # The right Ed25519 key with the wrong Falcon key: only the alternative check fails.
    right_ed25519, _ = chain.intermediate_key.public_key().components()
    _, wrong_falcon = chain.root_key.public_key().components()
    mixed = VerifyKey.from_components(right_ed25519, wrong_falcon)
    with pytest.raises(AltSignatureInvalid):
        hybrid.verify_certificate_signatures(chain.leaf, mixed)
    # And the other way round.
    wrong_ed25519, _ = chain.root_key.public_key().components()
    _, right_falcon = chain.intermediate_key.public_key().components()
    mixed = VerifyKey.from_components(wrong_ed25519, right_falcon)
    with pytest.raises(ClassicalSignatureInvalid):
        hybrid.verify_certificate_signatures(chain.leaf, mixed)


@pytest.mark.parametrize("oid", [SUBJECT_ALT_KEY, ALT_ALGORITHM, ALT_VALUE])
def test_missing_alt_extension(chain: Chain, oid: str) -> None:
    tbs = _edit_extensions(chain.leaf.tbs_certificate_bytes, CERT_EXTENSIONS_TAG, _remove(oid))
    stripped = _resigned_certificate(tbs, chain.intermediate_key)
    with pytest.raises(MalformedData, match=oid):
        hybrid.verify_certificate_signatures(stripped, chain.intermediate_key.public_key())
    if oid == SUBJECT_ALT_KEY:
        with pytest.raises(MalformedData, match=oid):
            hybrid.certificate_public_key(stripped)


def test_classical_only_certificate_is_malformed(chain: Chain) -> None:
    key = hybrid.classical_private_key(chain.leaf_key)
    plain = (
        _builder(_name("plain"), chain.intermediate.subject)
        .public_key(key.public_key())
        .sign(hybrid.classical_private_key(chain.intermediate_key), None)
    )
    with pytest.raises(MalformedData):
        hybrid.verify_certificate_signatures(plain, chain.intermediate_key.public_key())
    with pytest.raises(MalformedData):
        hybrid.certificate_public_key(plain)


def test_duplicated_alt_extension(chain: Chain) -> None:
    def duplicate(items: list[der.Element]) -> list[bytes]:
        encoded = [item.encoded for item in items]
        return [*encoded[:1], items[-1].encoded, *encoded[1:]]

    tbs = _edit_extensions(chain.leaf.tbs_certificate_bytes, CERT_EXTENSIONS_TAG, duplicate)
    # cryptography loads it (it checks extensions lazily); we refuse it as malformed.
    doubled = _resigned_certificate(tbs, chain.intermediate_key)
    with pytest.raises(MalformedData, match=r"duplicated extension 2\.5\.29\.74"):
        hybrid.verify_certificate_signatures(doubled, chain.intermediate_key.public_key())
    with pytest.raises(MalformedData, match="duplicated"):
        hybrid.pre_tbs_certificate(doubled)


def test_alt_value_at_another_position_still_verifies(chain: Chain) -> None:
    """The preTBS removes altSignatureValue wherever it is; its position is covered by the
    classical signature only."""

    def move_first(items: list[der.Element]) -> list[bytes]:
        return [items[-1].encoded] + [item.encoded for item in items[:-1]]

    tbs = _edit_extensions(chain.leaf.tbs_certificate_bytes, CERT_EXTENSIONS_TAG, move_first)
    moved = _resigned_certificate(tbs, chain.intermediate_key)
    assert next(iter(moved.extensions)).oid == oids.ALT_SIGNATURE_VALUE
    assert hybrid.pre_tbs_certificate(moved) == hybrid.pre_tbs_certificate(chain.leaf)
    hybrid.verify_certificate_signatures(moved, chain.intermediate_key.public_key())


@pytest.mark.parametrize(
    "oid",
    [
        pytest.param("1.3.9999.3.9", id="retired-oqs-oid"),
        pytest.param("1.3.9999.3.19", id="falcon-padded-1024"),
        pytest.param("1.3.101.112", id="ed25519"),
    ],
)
def test_other_alt_signature_algorithm(chain: Chain, oid: str) -> None:
    algorithm = der.encode_sequence([der.encode_oid(oid)])
    tbs = _edit_extensions(
        chain.leaf.tbs_certificate_bytes,
        CERT_EXTENSIONS_TAG,
        _replace(ALT_ALGORITHM, _extension(ALT_ALGORITHM, algorithm)),
    )
    with pytest.raises(AlgorithmMismatch, match=oid.replace(".", r"\.")):
        hybrid.verify_certificate_signatures(
            _resigned_certificate(tbs, chain.intermediate_key), chain.intermediate_key.public_key()
        )


def test_garbled_alt_extensions(chain: Chain) -> None:
    cases = [
        (ALT_VALUE, der.encode_octet_string(b"not a bit string"), MalformedData),
        (ALT_VALUE, b"\x03\x03\x01\x3a\x00", MalformedData),  # unused bits
        (ALT_VALUE, der.encode_bit_string(b"\x2a" + bytes(100)), MalformedData),  # bad header
        (ALT_ALGORITHM, b"\x30\x80\x00\x00", MalformedData),
        (SUBJECT_ALT_KEY, der.encode_sequence([]), MalformedData),
        (
            SUBJECT_ALT_KEY,
            der.encode_sequence(
                [hybrid.FALCON_1024_ALGORITHM_IDENTIFIER, der.encode_bit_string(bytes(1793))]
            ),
            InvalidKey,
        ),
    ]
    for oid, value, error in cases:
        tbs = _edit_extensions(
            chain.leaf.tbs_certificate_bytes,
            CERT_EXTENSIONS_TAG,
            _replace(oid, _extension(oid, value)),
        )
        with pytest.raises(error):
            hybrid.verify_certificate_signatures(
                _resigned_certificate(tbs, chain.intermediate_key),
                chain.intermediate_key.public_key(),
            )


def test_criticality_of_alt_extensions(chain: Chain) -> None:
    """altSignatureValue may be marked critical (it is outside the preTBS); flipping the
    criticality of the other two changes the preTBS, which the alternative signature catches."""
    items = der.parse(chain.leaf.tbs_certificate_bytes).children()[-1].children()[0].children()
    values = {_extension_oid(item): _extension_value(item) for item in items}
    issuer = chain.intermediate_key.public_key()
    for oid in (SUBJECT_ALT_KEY, ALT_ALGORITHM, ALT_VALUE):
        tbs = _edit_extensions(
            chain.leaf.tbs_certificate_bytes,
            CERT_EXTENSIONS_TAG,
            _replace(oid, _extension(oid, values[oid], critical=True)),
        )
        critical = _resigned_certificate(tbs, chain.intermediate_key)
        if oid == ALT_VALUE:
            hybrid.verify_certificate_signatures(critical, issuer)
        else:
            with pytest.raises(AltSignatureInvalid):
                hybrid.verify_certificate_signatures(critical, issuer)


def test_outer_signature_algorithm_must_match_tbs(chain: Chain) -> None:
    encoded = chain.leaf.public_bytes(Encoding.DER)
    tbs, _, signature = der.parse(encoded).children()
    other = der.encode_sequence([der.encode_oid("1.3.101.113")])  # Ed448
    swapped = der.encode_sequence([tbs.encoded, other, signature.encoded])
    try:
        certificate = x509.load_der_x509_certificate(swapped)
    except ValueError:
        return
    with pytest.raises(MalformedData, match="signatureAlgorithm"):
        hybrid.verify_certificate_signatures(certificate, chain.intermediate_key.public_key())


# --- building ---------------------------------------------------------------------------------


def test_build_requires_hybrid_keys(chain: Chain) -> None:
    ed25519_key = SigningKey.generate(SignatureAlgorithm.ED25519)
    builder = _builder(_name("x"), _name("x"))
    with pytest.raises(AlgorithmMismatch, match="subject key"):
        hybrid.build_certificate(
            builder, subject_key=ed25519_key.public_key(), issuer_key=chain.root_key
        )
    with pytest.raises(AlgorithmMismatch, match="issuer key"):
        hybrid.build_certificate(
            builder, subject_key=chain.leaf_key.public_key(), issuer_key=ed25519_key
        )
    with pytest.raises(AlgorithmMismatch):
        hybrid.build_crl(x509.CertificateRevocationListBuilder(), issuer_key=ed25519_key)
    with pytest.raises(AlgorithmMismatch):
        hybrid.verify_certificate_signatures(chain.leaf, ed25519_key.public_key())
    with pytest.raises(AlgorithmMismatch):
        hybrid.falcon_public_key_info(ed25519_key.public_key())
    with pytest.raises(AlgorithmMismatch):
        hybrid.classical_private_key(ed25519_key)


def test_build_rejects_a_builder_with_key_or_alt_extension(chain: Chain) -> None:
    with_key = _builder(_name("x"), _name("x")).public_key(
        hybrid.classical_private_key(chain.leaf_key).public_key()
    )
    with pytest.raises(MalformedData, match="builder"):
        hybrid.build_certificate(
            with_key, subject_key=chain.leaf_key.public_key(), issuer_key=chain.root_key
        )
    for oid in (
        oids.SUBJECT_ALT_PUBLIC_KEY_INFO,
        oids.ALT_SIGNATURE_ALGORITHM,
        oids.ALT_SIGNATURE_VALUE,
    ):
        with_alt = _builder(_name("x"), _name("x")).add_extension(
            x509.UnrecognizedExtension(oid, b"\x30\x00"), critical=False
        )
        with pytest.raises(MalformedData, match="builder"):
            hybrid.build_certificate(
                with_alt, subject_key=chain.leaf_key.public_key(), issuer_key=chain.root_key
            )
    for oid in (oids.ALT_SIGNATURE_ALGORITHM, oids.ALT_SIGNATURE_VALUE):
        crl_builder = _crl_builder(chain.root.subject, []).add_extension(
            x509.UnrecognizedExtension(oid, b"\x30\x00"), critical=False
        )
        with pytest.raises(MalformedData, match="builder"):
            hybrid.build_crl(crl_builder, issuer_key=chain.root_key)


def test_classical_private_key_is_the_certificate_key(chain: Chain) -> None:
    for _, certificate, subject_key, _ in chain.links():
        assert hybrid.classical_private_key(subject_key).public_key() == certificate.public_key()


# --- CRLs -------------------------------------------------------------------------------------


def test_crl_round_trip(chain: Chain, crl: x509.CertificateRevocationList) -> None:
    hybrid.verify_crl_signatures(crl, chain.intermediate_key.public_key())
    assert crl.is_signature_valid(hybrid.classical_private_key(chain.intermediate_key).public_key())
    reloaded = x509.load_pem_x509_crl(crl.public_bytes(Encoding.PEM))
    hybrid.verify_crl_signatures(reloaded, chain.intermediate_key.public_key())
    revoked = reloaded.get_revoked_certificate_by_serial_number(chain.leaf.serial_number)
    assert revoked is not None
    reason = revoked.extensions.get_extension_for_class(x509.CRLReason).value
    assert reason.reason is x509.ReasonFlags.key_compromise
    oids_in_order = [ext.oid for ext in reloaded.extensions]
    assert oids_in_order[-2:] == [oids.ALT_SIGNATURE_ALGORITHM, oids.ALT_SIGNATURE_VALUE]
    assert oids.SUBJECT_ALT_PUBLIC_KEY_INFO not in oids_in_order


def test_empty_crl_round_trip(chain: Chain) -> None:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(chain.root.subject)
        .last_update(NOW)
        .next_update(NOW + datetime.timedelta(days=1))
    )
    empty = hybrid.build_crl(builder, issuer_key=chain.root_key)
    hybrid.verify_crl_signatures(empty, chain.root_key.public_key())


def test_pre_tbs_cert_list(chain: Chain, crl: x509.CertificateRevocationList) -> None:
    fields = der.parse(crl.tbs_certlist_bytes).children()
    assert fields[1].encoded == hybrid.ED25519_ALGORITHM_IDENTIFIER
    pre_tbs = hybrid.pre_tbs_cert_list(crl)
    pre_fields = der.parse(pre_tbs).children()
    assert [f.encoded for f in pre_fields[:-1]] == [fields[0].encoded] + [
        f.encoded for f in fields[2:-1]
    ]
    pre_items = pre_fields[-1].children()[0].children()
    assert [_extension_oid(item) for item in pre_items] == ["2.5.29.20", ALT_ALGORITHM]
    _, issuer_falcon = chain.intermediate_key.public_key().components()
    issuer_falcon.verify(Signature(SignatureAlgorithm.FALCON_1024, _alt_signature(crl)), pre_tbs)


def test_crl_tampering(chain: Chain, crl: x509.CertificateRevocationList) -> None:
    issuer = chain.intermediate_key.public_key()
    encoded = crl.public_bytes(Encoding.DER)
    with pytest.raises(ClassicalSignatureInvalid):
        hybrid.verify_crl_signatures(
            x509.load_der_x509_crl(_flip(encoded, len(encoded) - 5)), issuer
        )
    start = encoded.index(_alt_signature(crl))
    with pytest.raises(AltSignatureInvalid):
        hybrid.verify_crl_signatures(x509.load_der_x509_crl(_flip(encoded, start + 77)), issuer)
    # Un-revoking the leaf: drop the revoked entry and re-sign classically.
    fields = der.parse(crl.tbs_certlist_bytes).children()
    revoked_list = fields[5]
    entries = revoked_list.children()
    fewer = der.rebuild_without(revoked_list, [0])
    assert len(der.parse(fewer).children()) == len(entries) - 1
    tbs = der.encode_sequence([f.encoded for f in fields[:5]] + [fewer, fields[6].encoded])
    forged = _resigned_crl(tbs, chain.intermediate_key)
    assert forged.is_signature_valid(
        hybrid.classical_private_key(chain.intermediate_key).public_key()
    )
    with pytest.raises(AltSignatureInvalid):
        hybrid.verify_crl_signatures(forged, issuer)
    with pytest.raises(AltSignatureInvalid):
        hybrid.verify_crl_signatures(crl, chain.root_key.public_key())


@pytest.mark.parametrize("oid", [ALT_ALGORITHM, ALT_VALUE])
def test_crl_missing_alt_extension(
    chain: Chain, crl: x509.CertificateRevocationList, oid: str
) -> None:
    tbs = _edit_extensions(crl.tbs_certlist_bytes, CRL_EXTENSIONS_TAG, _remove(oid))
    with pytest.raises(MalformedData, match=oid):
        hybrid.verify_crl_signatures(
            _resigned_crl(tbs, chain.intermediate_key), chain.intermediate_key.public_key()
        )


@requires_openssl
def test_openssl_reads_and_applies_the_crl(
    chain: Chain, crl: x509.CertificateRevocationList, tmp_path: Path
) -> None:
    crl_path = _pem(tmp_path / "crl.pem", crl)
    text = _openssl("crl", "-noout", "-text", "-in", crl_path)
    assert text.returncode == 0, text.stderr
    assert ALT_VALUE in text.stdout or "Alternative Signature Value" in text.stdout
    assert "Key Compromise" in text.stdout
    root = _pem(tmp_path / "root.pem", chain.root)
    intermediate = _pem(tmp_path / "intermediate.pem", chain.intermediate)
    leaf = _pem(tmp_path / "leaf.pem", chain.leaf)
    revoked = _openssl(
        "verify",
        "-crl_check",
        "-CRLfile",
        crl_path,
        "-CAfile",
        root,
        "-untrusted",
        intermediate,
        leaf,
    )
    assert revoked.returncode != 0
    assert "certificate revoked" in revoked.stdout + revoked.stderr
    clean = hybrid.build_crl(
        _crl_builder(chain.intermediate.subject, []), issuer_key=chain.intermediate_key
    )
    clean_path = _pem(tmp_path / "clean.pem", clean)
    result = _openssl(
        "verify",
        "-crl_check",
        "-CRLfile",
        clean_path,
        "-CAfile",
        root,
        "-untrusted",
        intermediate,
        leaf,
    )
    assert result.stdout.strip() == f"{leaf}: OK", result.stderr


# --- fuzzing ----------------------------------------------------------------------------------


def _mutations(size: int) -> st.SearchStrategy[list[tuple[int, int]]]:
    return st.lists(
        st.tuples(st.integers(0, size - 1), st.integers(0, 255)), min_size=1, max_size=3
    )


#: What cryptography raises for bytes it cannot load as a certificate (InvalidVersion is not a
#: ValueError).
LOAD_ERRORS = (ValueError, x509.InvalidVersion)


def _load(data: bytes) -> x509.Certificate:
    with warnings.catch_warnings():
        # e.g. a mutated serial number that is no longer positive: loads, with a warning.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_der_x509_certificate(data)


def _mutate(data: bytes, mutations: list[tuple[int, int]]) -> bytes:
    mutable = bytearray(data)
    for index, value in mutations:
        mutable[index] = value
    return bytes(mutable)


_LEAF_CHAIN = _build_chain()
_LEAF_DER = _LEAF_CHAIN.leaf.public_bytes(Encoding.DER)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations(len(_LEAF_DER)))
def test_mutated_certificate_never_verifies(mutations: list[tuple[int, int]]) -> None:
    mutated = _mutate(_LEAF_DER, mutations)
    issuer = _LEAF_CHAIN.intermediate_key.public_key()
    try:
        certificate = _load(mutated)
    except LOAD_ERRORS:
        return
    event("loaded by cryptography")
    if mutated == _LEAF_DER:
        hybrid.verify_certificate_signatures(certificate, issuer)
        return
    with pytest.raises(TrustChainError):
        hybrid.verify_certificate_signatures(certificate, issuer)
    with contextlib.suppress(TrustChainError):
        hybrid.certificate_public_key(certificate)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(_LEAF_DER) - 1), st.binary(max_size=3))
def test_truncated_or_spliced_certificate_never_verifies(cut: int, junk: bytes) -> None:
    mutated = _LEAF_DER[:cut] + junk + _LEAF_DER[cut + len(junk) + 1 :]
    try:
        certificate = _load(mutated)
    except LOAD_ERRORS:
        return
    with pytest.raises(TrustChainError):
        hybrid.verify_certificate_signatures(certificate, _LEAF_CHAIN.intermediate_key.public_key())


_CRL = hybrid.build_crl(
    _crl_builder(_LEAF_CHAIN.intermediate.subject, [(5, x509.ReasonFlags.key_compromise)]),
    issuer_key=_LEAF_CHAIN.intermediate_key,
)
_CRL_DER = _CRL.public_bytes(Encoding.DER)


@settings(max_examples=200, deadline=None)
@given(_mutations(len(_CRL_DER)))
def test_mutated_crl_never_verifies(mutations: list[tuple[int, int]]) -> None:
    mutated = _mutate(_CRL_DER, mutations)
    issuer = _LEAF_CHAIN.intermediate_key.public_key()
    try:
        crl = x509.load_der_x509_crl(mutated)
    except LOAD_ERRORS:
        return
    event("loaded by cryptography")
    if mutated == _CRL_DER:
        hybrid.verify_crl_signatures(crl, issuer)
        return
    with pytest.raises(TrustChainError):
        hybrid.verify_crl_signatures(crl, issuer)


# --- oids -------------------------------------------------------------------------------------


@given(st.sampled_from(oids.HYPERMESH_URI_KINDS), st.binary(min_size=1, max_size=64))
def test_hypermesh_uri_round_trip(kind: str, identity: bytes) -> None:
    uri = oids.hypermesh_uri(kind, identity)
    assert uri == f"hypermesh://{kind}/{identity.hex()}"
    assert oids.parse_hypermesh_uri(uri) == (kind, identity)


@pytest.mark.parametrize(
    "uri",
    [
        "hypermesh://node/",
        "hypermesh://node/abc",  # odd number of hex digits
        "hypermesh://node/ABCD",  # uppercase is not the canonical form
        "hypermesh://user/abcd",
        "https://node/abcd",
        "hypermesh://node/abcd/extra",
    ],
)
def test_hypermesh_uri_rejections(uri: str) -> None:
    with pytest.raises(MalformedData, match="hypermesh"):
        oids.parse_hypermesh_uri(uri)


def test_hypermesh_uri_arguments() -> None:
    with pytest.raises(ValueError, match="kind"):
        oids.hypermesh_uri("user", b"\x01")
    with pytest.raises(ValueError, match="empty"):
        oids.hypermesh_uri("node", b"")


def test_oid_values() -> None:
    assert oids.SUBJECT_ALT_PUBLIC_KEY_INFO.dotted_string == "2.5.29.72"
    assert oids.ALT_SIGNATURE_ALGORITHM.dotted_string == "2.5.29.73"
    assert oids.ALT_SIGNATURE_VALUE.dotted_string == "2.5.29.74"
    assert oids.FALCON_1024.dotted_string == "1.3.9999.3.14"
    assert oids.FALCON_1024 not in oids.FALCON_1024_LEGACY_OIDS
    private = [oids.POLICY_ROOT_CA, oids.POLICY_ENTITY_CA, oids.POLICY_NODE]
    private += [oids.POLICY_SERVICE, oids.POLICY_ASSET]
    assert len(set(private)) == len(private)
    assert all(oid.dotted_string.startswith(oids.TRUSTCHAIN_ARC + ".") for oid in private)
    # A UUID OID: 2.25.<128-bit integer>.
    assert int(oids.TRUSTCHAIN_ARC.split(".")[2]) < 1 << 128
