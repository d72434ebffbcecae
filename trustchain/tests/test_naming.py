"""Tests of signed name records and record sets (:mod:`trustchain.naming.records`,
:mod:`trustchain.naming.zone`): encodings byte for byte, strict decoding of arbitrary bytes,
and every reason a record or revocation is refused, against a real TrustChain CA."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from trustchain.ca import hybrid, profiles
from trustchain.ca.authority import CertificateAuthority, Issued
from trustchain.ca.profiles import CertificateKind
from trustchain.ca.trust import TrustAnchor, TrustStore
from trustchain.crypto.algorithms import SignatureAlgorithm
from trustchain.crypto.keystore import KeyStore
from trustchain.crypto.signatures import Signature, SigningKey
from trustchain.errors import CertificateRejected, InvalidSignature, RejectionReason
from trustchain.naming import (
    InvalidNameRecord,
    MalformedRecordSet,
    NameRecord,
    NameRecordRejected,
    NameRejection,
    NamingError,
    RecordSet,
    Revocation,
    ServiceEndpoint,
    SignedRecord,
    SignedRevocation,
    SignerMismatch,
    decode_record_set,
    encode_record_set,
    normalize_name,
    sign_record,
    sign_revocation,
    verified_names,
    verify_record,
    verify_revocation,
)
from trustchain.naming.records import RECORD_DOMAIN, REVOCATION_DOMAIN

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NOW = datetime.now(UTC).replace(microsecond=0)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@dataclass(frozen=True)
class Signer:
    key: SigningKey
    chain: tuple[x509.Certificate, ...]
    issued: Issued | None = None


class Pki:
    """One TrustChain home: a root, entity CAs ``bank``, ``other`` and ``ranged`` (IP range
    10.8.0.0/16), and leaves (valid, expired, revoked, and one straight under the root)."""

    def __init__(self, home: Path) -> None:
        self.clock = Clock()
        self.keystore = KeyStore.open(home)
        self.ca = CertificateAuthority(home, self.keystore, clock=self.clock)
        self.clock.now = NOW - timedelta(days=3)
        self.root = self.ca.init_root("root")
        self.bank_ca = self.ca.issue_intermediate("bank", "bank.hypermesh")
        self.other_ca = self.ca.issue_intermediate("other", "other.hypermesh")
        self.ranged_ca = self.ca.issue_intermediate(
            "ranged", "ranged.hypermesh", ip_networks=["10.8.0.0/16"]
        )
        self.clock.now = NOW - timedelta(days=2)
        self.expired = self.leaf("bank", "old.bank.hypermesh", timedelta(hours=1))
        self.clock.now = NOW - timedelta(minutes=10)
        self.bank = self.leaf("bank", "n1.bank.hypermesh")
        self.bank2 = self.leaf("bank", "n2.bank.hypermesh")
        self.revoked = self.leaf("bank", "bad.bank.hypermesh")
        self.other = self.leaf("other", "n1.other.hypermesh")
        self.ranged = self.leaf("ranged", "n1.ranged.hypermesh")
        assert self.revoked.issued is not None
        self.ca.revoke(self.revoked.issued.serial, "keyCompromise")
        self.bank_crl = self.ca.crl("bank")
        self.direct = self._direct_leaf()

    def leaf(self, issuer: str, name: str, validity: timedelta = timedelta(hours=24)) -> Signer:
        issued = self.ca.issue(issuer, "node", name, validity=validity)
        assert issued.key_name is not None
        key = self.keystore.signing_key(issued.key_name, issued.key_version)
        return Signer(key, (issued.certificate, *issued.chain), issued)

    def _direct_leaf(self) -> Signer:
        """A node certificate the root signs itself: no name constraint on its path."""
        root_key = self.keystore.signing_key("ca/root", 1)
        key = SigningKey.generate()
        names = profiles.LeafNames("direct.bank.hypermesh", ("direct.bank.hypermesh",), ())
        builder = (
            x509.CertificateBuilder()
            .subject_name(profiles.leaf_subject(names.common_name))
            .issuer_name(self.root.certificate.subject)
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(minutes=10))
            .not_valid_after(NOW + timedelta(days=1))
        )
        builder = profiles.apply(
            builder,
            profiles.leaf_profile(
                CertificateKind.NODE,
                names,
                identity=key.public_key().key_id,
                subject_key=key.public_key(),
                issuer_key=root_key.public_key(),
                crl="hypermesh://trustchain/crl/root/full.crl",
            ),
        )
        certificate = hybrid.build_certificate(
            builder, subject_key=key.public_key(), issuer_key=root_key
        )
        return Signer(key, (certificate,))

    def store(self, *, intermediates: bool = False, crls: bool = False) -> TrustStore:
        store = TrustStore([TrustAnchor(self.root.certificate, "root")])
        if intermediates or crls:
            for issued in (self.bank_ca, self.other_ca, self.ranged_ca):
                store.add_certificate(issued.certificate)
        if crls:
            store.add_crl(self.bank_crl)
        return store


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    made = Pki(tmp_path_factory.mktemp("naming") / "home")
    yield made
    made.ca.close()
    made.keystore.close()


def record(name: str = "www.bank.hypermesh", serial: int = 1, **changes: object) -> NameRecord:
    base = NameRecord(
        name,
        bytes(range(32)),
        ("127.0.0.1", "::1"),
        (ServiceEndpoint("stoq", "udp", 4433),),
        ("hello",),
        ttl=60,
        serial=serial,
        not_before=NOW - timedelta(minutes=5),
        not_after=NOW + timedelta(hours=1),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def signed(signer: Signer, value: NameRecord | None = None) -> SignedRecord:
    return sign_record(record() if value is None else value, signer.key, signer.chain)


def rejected(
    reason: NameRejection, candidate: SignedRecord | bytes, store: TrustStore, **kw: object
) -> NameRecordRejected:
    with pytest.raises(NameRecordRejected) as info:
        verify_record(candidate, store, **kw)  # type: ignore[arg-type]
    assert info.value.reason is reason, str(info.value)
    assert str(info.value) == f"{reason.name}: {info.value.detail}"
    return info.value


# --- values and encodings -------------------------------------------------------------------------


def test_record_encoding_byte_for_byte() -> None:
    value = NameRecord(
        "A.Bank.Hypermesh.",
        bytes(range(32)),
        ("10.0.0.1", "0:0::1"),
        (ServiceEndpoint("STOQ", "udp", 443, 1, 2),),
        ("hi",),
        ttl=60,
        serial=7,
        not_before=EPOCH + timedelta(seconds=1000, microseconds=999),
        not_after=EPOCH + timedelta(seconds=2000),
    )
    assert value.name == "a.bank.hypermesh"
    assert value.addresses == ("10.0.0.1", "::1")
    assert value.services[0].service == "stoq"
    assert value.not_before == EPOCH + timedelta(seconds=1000)
    expected = (
        b"\x01"
        + b"\x10a.bank.hypermesh"
        + bytes(range(32))
        + b"\x02"
        + b"\x04\x0a\x00\x00\x01"
        + b"\x10"
        + bytes(15)
        + b"\x01"
        + b"\x01"
        + b"\x04stoq\x03udp\x01\xbb\x00\x01\x00\x02"
        + b"\x01\x02hi"
        + struct.pack(">IQQQ", 60, 7, 1000, 2000)
    )
    assert value.encode() == expected
    assert NameRecord.decode(expected) == value
    assert value.ipv4_addresses == ("10.0.0.1",)
    assert value.ipv6_addresses == ("::1",)
    assert value.services[0].owner(value.name) == "_stoq._udp.a.bank.hypermesh"


def test_revocation_encoding_byte_for_byte() -> None:
    value = Revocation("x.bank.hypermesh", 3, EPOCH + timedelta(seconds=5))
    expected = b"\x01\x10x.bank.hypermesh" + struct.pack(">QQ", 3, 5)
    assert value.encode() == expected
    assert Revocation.decode(expected) == value


def test_signed_container_layout_and_domain_separation(pki: Pki) -> None:
    item = signed(pki.bank)
    data = item.encode()
    body = item.record.encode()
    assert data[:4] == struct.pack(">BBH", 1, 1, len(body))
    assert data[4 : 4 + len(body)] == body
    offset = 4 + len(body)
    assert data[offset] == len(item.chain) == 2
    offset += 1
    for certificate in item.chain:
        der = certificate.public_bytes(Encoding.DER)
        assert data[offset : offset + 2 + len(der)] == struct.pack(">H", len(der)) + der
        offset += 2 + len(der)
    assert data[offset:] == struct.pack(">H", len(item.signature)) + item.signature
    assert SignedRecord.decode(data) == item
    key = pki.bank.key.public_key()
    key.verify(Signature.from_bytes(item.signature), RECORD_DOMAIN + body)
    with pytest.raises(InvalidSignature):
        key.verify(Signature.from_bytes(item.signature), REVOCATION_DOMAIN + body)
    with pytest.raises(InvalidSignature):
        key.verify(Signature.from_bytes(item.signature), body)
    revocation = sign_revocation(
        Revocation("www.bank.hypermesh", 1, NOW), pki.bank.key, pki.bank.chain
    )
    assert revocation.encode()[:2] == b"\x01\x02"
    assert SignedRevocation.decode(revocation.encode()) == revocation
    with pytest.raises(NameRecordRejected, match="holds a revocation, expected a name record"):
        SignedRecord.decode(revocation.encode())
    with pytest.raises(NameRecordRejected, match="holds a name record, expected a revocation"):
        SignedRevocation.decode(data)


labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
names = st.lists(labels, min_size=1, max_size=5).map(".".join)
addresses = st.lists(
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str),
    min_size=1,
    max_size=16,
    unique=True,
)
services = st.lists(
    st.builds(
        ServiceEndpoint,
        st.from_regex(r"[a-z][a-z0-9]{0,14}", fullmatch=True),
        st.sampled_from(["udp", "tcp", "quic"]),
        st.integers(1, 65535),
        st.integers(0, 65535),
        st.integers(0, 65535),
    ),
    max_size=16,
    unique=True,
)
texts = st.lists(st.text(max_size=60), max_size=16, unique=True)
seconds = st.integers(0, 2**37)


@st.composite
def records(draw: st.DrawFn) -> NameRecord:
    start = draw(seconds)
    return NameRecord(
        draw(names),
        draw(st.binary(min_size=32, max_size=32)),
        tuple(draw(addresses)),
        tuple(draw(services)),
        tuple(draw(texts)),
        draw(st.integers(0, 2**31 - 1)),
        draw(st.integers(1, 2**63 - 1)),
        not_before=EPOCH + timedelta(seconds=start),
        not_after=EPOCH + timedelta(seconds=start + draw(st.integers(1, 2**32))),
    )


@given(records())
@settings(max_examples=200)
def test_record_round_trip(value: NameRecord) -> None:
    data = value.encode()
    assert NameRecord.decode(data) == value
    assert len(data) <= 8192


@given(names, st.integers(1, 2**63 - 1), seconds)
def test_revocation_round_trip(name: str, serial: int, at: int) -> None:
    value = Revocation(name, serial, EPOCH + timedelta(seconds=at))
    assert Revocation.decode(value.encode()) == value


def attempt(decoder: Callable[[bytes], object], data: bytes) -> object:
    """What ``decoder`` returns for ``data``, or the NamingError it raises (any other
    exception propagates and fails the test)."""
    try:
        return decoder(data)
    except NamingError as exc:
        return exc


@given(st.binary(max_size=600))
@settings(max_examples=400)
def test_decoders_refuse_arbitrary_bytes_as_malformed(data: bytes) -> None:
    decoders: tuple[Callable[[bytes], object], ...] = (
        NameRecord.decode,
        Revocation.decode,
        SignedRecord.decode,
        SignedRevocation.decode,
    )
    for decoder in decoders:
        outcome = attempt(decoder, data)
        if isinstance(outcome, NameRecordRejected):
            assert outcome.reason is NameRejection.MALFORMED
        else:
            assert outcome.encode() == data  # type: ignore[attr-defined]
    outcome = attempt(decode_record_set, data)
    if isinstance(outcome, NamingError):
        assert isinstance(outcome, MalformedRecordSet)
    else:
        assert isinstance(outcome, RecordSet)
        assert encode_record_set(outcome) == data


@given(records(), st.data())
@settings(max_examples=200)
def test_damaged_record_encodings_are_malformed_or_another_value(
    value: NameRecord, data: st.DataObject
) -> None:
    encoded = value.encode()
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(NameRecordRejected) as info:
        NameRecord.decode(encoded[:cut])
    assert info.value.reason is NameRejection.MALFORMED
    with pytest.raises(NameRecordRejected, match="trailing"):
        NameRecord.decode(encoded + data.draw(st.binary(min_size=1, max_size=4)))
    position = data.draw(st.integers(0, len(encoded) - 1))
    changed = bytearray(encoded)
    changed[position] ^= data.draw(st.integers(1, 255))
    other = attempt(NameRecord.decode, bytes(changed))
    if isinstance(other, NameRecordRejected):
        assert other.reason is NameRejection.MALFORMED
    else:
        assert isinstance(other, NameRecord)
        assert other != value
        assert other.encode() == bytes(changed)


def test_non_canonical_encoding_is_malformed() -> None:
    value = record()
    data = bytearray(value.encode())
    data[2] = ord("W")  # "www" -> "Www": decodes, but is not how the value encodes
    with pytest.raises(NameRecordRejected, match="canonical"):
        NameRecord.decode(bytes(data))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "bad_name.hypermesh"}, "label"),
        ({"name": "*.bank.hypermesh"}, "label"),
        ({"name": "a..b"}, "label"),
        ({"name": "\u212a.bank.hypermesh"}, "ASCII"),
        ({"name": "x" * 64}, "label"),
        ({"name": ".".join(["a" * 63] * 4)}, "253"),
        ({"node_id": b"short"}, "32 bytes"),
        ({"addresses": ()}, "1 to 16"),
        ({"addresses": ("127.0.0.1", "127.0.0.1")}, "duplicate"),
        ({"addresses": ("fe80::1%eth0",)}, "zone"),
        ({"addresses": ("not-an-ip",)}, "not an IP"),
        ({"addresses": "127.0.0.1"}, "not one string"),
        ({"addresses": tuple(f"10.0.0.{i}" for i in range(17))}, "1 to 16"),
        ({"texts": ("x" * 256,)}, "255 bytes"),
        ({"ttl": -1}, "TTL"),
        ({"ttl": 2**31}, "TTL"),
        ({"serial": 0}, "serial"),
        ({"serial": True}, "serial"),
        ({"not_after": NOW - timedelta(hours=1)}, "after not_before"),
        ({"not_before": datetime(2024, 1, 1)}, "timezone-aware"),
    ],
)
def test_invalid_values_are_refused(changes: dict[str, object], message: str) -> None:
    valid = record()
    with pytest.raises(InvalidNameRecord, match=message):
        replace(valid, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("service", "protocol", "port"),
    [("", "udp", 1), ("a--b", "udp", 1), ("123", "udp", 1), ("x" * 16, "udp", 1), ("s", "udp", 0)],
)
def test_invalid_service_endpoints(service: str, protocol: str, port: int) -> None:
    with pytest.raises(InvalidNameRecord):
        ServiceEndpoint(service, protocol, port)


def test_normalize_name() -> None:
    assert normalize_name("WWW.Bank.Hypermesh.") == "www.bank.hypermesh"
    with pytest.raises(InvalidNameRecord):
        normalize_name("")
    with pytest.raises(InvalidNameRecord):
        normalize_name("-a.bank")


# --- signing and verification ---------------------------------------------------------------------


def test_valid_record_verifies_from_object_and_bytes(pki: Pki) -> None:
    item = signed(pki.bank)
    assert verify_record(item, pki.store()) == item.record
    assert verify_record(item.encode(), pki.store(intermediates=True, crls=True)) == item.record
    # the entity CA's own namespace name is inside it too
    apex = signed(pki.bank, record("bank.hypermesh"))
    assert verify_record(apex, pki.store()).name == "bank.hypermesh"


def test_signer_must_hold_the_leaf_key(pki: Pki) -> None:
    with pytest.raises(SignerMismatch, match="not the key of the chain's leaf"):
        sign_record(record(), pki.bank2.key, pki.bank.chain)
    with pytest.raises(SignerMismatch, match="chain"):
        sign_record(record(), pki.bank.key, ())
    with pytest.raises(SignerMismatch, match="hybrid"):
        sign_record(record(), SigningKey.generate(SignatureAlgorithm.ED25519), pki.bank.chain)


def test_outside_namespace(pki: Pki) -> None:
    # a leaf of "other" signing a name in bank's namespace
    error = rejected(NameRejection.OUTSIDE_NAMESPACE, signed(pki.other), pki.store())
    assert "www.bank.hypermesh is outside the signer's namespace (other.hypermesh)" in error.detail
    assert (error.name, error.serial) == ("www.bank.hypermesh", 1)
    # a look-alike suffix is not below the namespace
    rejected(
        NameRejection.OUTSIDE_NAMESPACE,
        signed(pki.bank, record("evilbank.hypermesh")),
        pki.store(),
    )


def test_path_without_dns_constraint_authorises_nothing(pki: Pki) -> None:
    item = signed(pki.direct, record("direct.bank.hypermesh"))
    error = rejected(NameRejection.OUTSIDE_NAMESPACE, item, pki.store())
    assert "no CA on the signer's path grants a DNS namespace" in error.detail


def test_addresses_must_lie_in_the_ip_ranges_of_the_path(pki: Pki) -> None:
    inside = record("web.ranged.hypermesh", addresses=("10.8.3.4",))
    assert verify_record(signed(pki.ranged, inside), pki.store()) == inside
    outside = record("web.ranged.hypermesh", addresses=("10.8.3.4", "192.0.2.1"))
    error = rejected(NameRejection.OUTSIDE_NAMESPACE, signed(pki.ranged, outside), pki.store())
    assert "address 192.0.2.1" in error.detail


def test_expired_and_not_yet_valid_records(pki: Pki) -> None:
    old = record(not_before=NOW - timedelta(hours=3), not_after=NOW - timedelta(hours=1))
    error = rejected(NameRejection.EXPIRED, signed(pki.bank, old), pki.store())
    assert old.not_after.isoformat() in error.detail
    future = record(not_before=NOW + timedelta(hours=1), not_after=NOW + timedelta(hours=2))
    rejected(NameRejection.NOT_YET_VALID, signed(pki.bank, future), pki.store())
    # the clock skew applies both ways, as for certificates
    item = signed(pki.bank)
    at = item.record.not_after + timedelta(minutes=4)
    assert verify_record(item, pki.store(), at=at) == item.record
    rejected(NameRejection.EXPIRED, item, pki.store(), at=at, clock_skew=timedelta(0))


def test_signer_chain_expired(pki: Pki) -> None:
    error = rejected(NameRejection.CHAIN_REJECTED, signed(pki.expired), pki.store())
    cause = error.certificate_rejection
    assert isinstance(cause, CertificateRejected)
    assert error.__cause__ is cause
    assert cause.reason is RejectionReason.EXPIRED
    assert "EXPIRED (certificate 0)" in error.detail


def test_signer_certificate_revoked(pki: Pki) -> None:
    item = signed(pki.revoked)
    # without the CRL the chain is only PARTIAL but accepted
    assert verify_record(item, pki.store()) == item.record
    error = rejected(NameRejection.CHAIN_REJECTED, item, pki.store(crls=True))
    assert error.certificate_rejection is not None
    assert error.certificate_rejection.reason is RejectionReason.REVOKED
    assert "keyCompromise" in error.detail


def test_untrusted_root(pki: Pki, tmp_path: Path) -> None:
    with KeyStore.open(tmp_path) as keystore, CertificateAuthority(tmp_path, keystore) as ca:
        foreign = ca.init_root("root")
    store = TrustStore([TrustAnchor(foreign.certificate, "foreign")])
    error = rejected(NameRejection.CHAIN_REJECTED, signed(pki.bank), store)
    assert error.certificate_rejection is not None
    assert error.certificate_rejection.reason in (
        RejectionReason.UNTRUSTED_ROOT,
        RejectionReason.CLASSICAL_SIGNATURE_INVALID,
    )


def test_bad_signatures(pki: Pki) -> None:
    item = signed(pki.bank)
    other = signed(pki.bank, record(serial=2))
    swapped = SignedRecord(item.record, item.chain, other.signature)
    error = rejected(NameRejection.BAD_SIGNATURE, swapped, pki.store())
    assert "does not verify" in error.detail
    # a signature of the right key over a revocation does not sign a record
    revocation = sign_revocation(Revocation(item.record.name, 1, NOW), pki.bank.key, pki.bank.chain)
    rejected(
        NameRejection.BAD_SIGNATURE,
        SignedRecord(item.record, item.chain, revocation.signature),
        pki.store(),
    )
    # another leaf's chain under the same signature
    rejected(
        NameRejection.BAD_SIGNATURE,
        SignedRecord(item.record, pki.bank2.chain, item.signature),
        pki.store(),
    )
    # a non-hybrid signature
    ed = SigningKey.generate(SignatureAlgorithm.ED25519)
    plain = ed.sign(RECORD_DOMAIN + item.record.encode()).to_bytes()
    error = rejected(
        NameRejection.BAD_SIGNATURE, SignedRecord(item.record, item.chain, plain), pki.store()
    )
    assert "expected hybrid" in error.detail


def test_tampered_intermediate_is_not_replaced_by_the_stores_copy(pki: Pki) -> None:
    item = signed(pki.bank)
    data = bytearray(item.encode())
    leaf_der = item.chain[0].public_bytes(Encoding.DER)
    intermediate_der = item.chain[1].public_bytes(Encoding.DER)
    start = bytes(data).index(intermediate_der)
    data[start + len(intermediate_der) - 10] ^= 0x01  # inside its signature value
    assert bytes(data).index(leaf_der) > 0
    # The store holds the genuine intermediate: path building could use it instead.
    error = rejected(NameRejection.CHAIN_REJECTED, bytes(data), pki.store(intermediates=True))
    assert "not on the validated path" in error.detail


def test_chain_with_extra_unrelated_certificate_is_refused(pki: Pki) -> None:
    item = SignedRecord(
        record(), (*pki.bank.chain, pki.other_ca.certificate), signed(pki.bank).signature
    )
    error = rejected(NameRejection.CHAIN_REJECTED, item, pki.store())
    assert "certificate 2" in error.detail


def test_root_rollover_chains_verify_against_old_and_new_roots(tmp_path: Path) -> None:
    with KeyStore.open(tmp_path) as keystore, CertificateAuthority(tmp_path, keystore) as ca:
        old_root = ca.init_root("root")
        ca.issue_intermediate("bank", "bank.hypermesh")
        new_root = ca.rollover("root")
        issued = ca.issue("bank", "node", "n.bank.hypermesh")
        assert issued.key_name is not None
        key = keystore.signing_key(issued.key_name, issued.key_version)
    chain = (issued.certificate, *issued.chain)
    assert len(chain) == 3  # leaf, intermediate under the new key, cross-certificate
    item = sign_record(record(), key, chain)
    for anchors in (
        [new_root.certificate],
        [old_root.certificate],
        [old_root.certificate, new_root.certificate],
    ):
        store = TrustStore([TrustAnchor(c, f"root {i}") for i, c in enumerate(anchors)])
        assert verify_record(item, store) == item.record


# --- revocations ----------------------------------------------------------------------------------


def test_revocations_verify_like_records(pki: Pki) -> None:
    revocation = Revocation("www.bank.hypermesh", 4, NOW)
    good = sign_revocation(revocation, pki.bank.key, pki.bank.chain)
    assert verify_revocation(good, pki.store()) == revocation
    assert verify_revocation(good.encode(), pki.store()) == revocation
    assert revocation.revokes(record(serial=4))
    assert not revocation.revokes(record(serial=5))
    assert not revocation.revokes(record("x.bank.hypermesh", serial=1))
    outside = sign_revocation(revocation, pki.other.key, pki.other.chain)
    with pytest.raises(NameRecordRejected) as info:
        verify_revocation(outside, pki.store())
    assert info.value.reason is NameRejection.OUTSIDE_NAMESPACE
    future = sign_revocation(
        Revocation("www.bank.hypermesh", 4, NOW + timedelta(hours=1)), pki.bank.key, pki.bank.chain
    )
    with pytest.raises(NameRecordRejected) as info:
        verify_revocation(future, pki.store())
    assert info.value.reason is NameRejection.NOT_YET_VALID
    forged = SignedRevocation(Revocation("www.bank.hypermesh", 5, NOW), good.chain, good.signature)
    with pytest.raises(NameRecordRejected) as info:
        verify_revocation(forged, pki.store())
    assert info.value.reason is NameRejection.BAD_SIGNATURE


# --- record sets ----------------------------------------------------------------------------------


def test_record_set_round_trip_and_strict_decoding(pki: Pki) -> None:
    rs = RecordSet(
        (signed(pki.bank), signed(pki.other, record("a.other.hypermesh"))),
        (sign_revocation(Revocation("gone.bank.hypermesh", 2, NOW), pki.bank.key, pki.bank.chain),),
        (pki.root.certificate,),
        (pki.bank_crl,),
    )
    data = encode_record_set(rs)
    assert data[:5] == b"TCNS\x01"
    assert decode_record_set(data) == rs
    with pytest.raises(MalformedRecordSet, match="trailing"):
        decode_record_set(data + b"\x00")
    with pytest.raises(MalformedRecordSet, match="magic"):
        decode_record_set(b"XXXX" + data[4:])
    with pytest.raises(MalformedRecordSet, match="truncated"):
        decode_record_set(data[:-1])
    with pytest.raises(MalformedRecordSet, match="version"):
        decode_record_set(data[:4] + b"\x02" + data[5:])
    empty = RecordSet((), (), ())
    assert decode_record_set(encode_record_set(empty)) == empty


def test_verified_names_trusts_the_sets_anchors_unless_pinned(pki: Pki, tmp_path: Path) -> None:
    rs = RecordSet((signed(pki.bank),), (), (pki.root.certificate,))
    names, refused = verified_names(rs)
    assert names == {"www.bank.hypermesh": rs.records[0].record}
    assert refused == []
    with KeyStore.open(tmp_path) as keystore, CertificateAuthority(tmp_path, keystore) as ca:
        foreign = ca.init_root("foreign")
    pinned = TrustStore([TrustAnchor(foreign.certificate, "foreign")])
    names, refused = verified_names(rs, pinned)
    assert names == {}
    assert [r.reason for r in refused] == [NameRejection.CHAIN_REJECTED]
    no_anchor, refused = verified_names(RecordSet(rs.records, (), ()))
    assert no_anchor == {}
    assert refused[0].certificate_rejection is not None
    assert refused[0].certificate_rejection.reason is RejectionReason.UNTRUSTED_ROOT


def test_verified_names_serials_revocations_and_reasons(pki: Pki) -> None:
    v1 = signed(pki.bank, record("a.bank.hypermesh", 1))
    v3 = signed(pki.bank, record("a.bank.hypermesh", 3))
    v3_other = signed(pki.bank, record("a.bank.hypermesh", 3, ttl=5))
    b2 = signed(pki.bank, record("b.bank.hypermesh", 2))
    b5 = signed(pki.bank, record("b.bank.hypermesh", 5))
    outside = signed(pki.other, record("c.bank.hypermesh"))
    expired = signed(
        pki.bank,
        record(
            "d.bank.hypermesh",
            not_before=NOW - timedelta(hours=3),
            not_after=NOW - timedelta(hours=1),
        ),
    )
    by_revoked_signer = signed(pki.revoked, record("e.bank.hypermesh"))
    revoke_b = sign_revocation(Revocation("b.bank.hypermesh", 2, NOW), pki.bank.key, pki.bank.chain)
    revoke_outside = sign_revocation(
        Revocation("a.bank.hypermesh", 9, NOW), pki.other.key, pki.other.chain
    )
    rs = RecordSet(
        (v1, v3, v3, v3_other, b2, b5, outside, expired, by_revoked_signer),
        (revoke_b, revoke_outside),
        (pki.root.certificate,),
        (pki.bank_crl,),  # the set's CRL revokes the signer of e.bank.hypermesh
    )
    names, refused = verified_names(rs)
    assert names == {"a.bank.hypermesh": v3.record, "b.bank.hypermesh": b5.record}
    reasons = {(r.name, r.serial, r.reason) for r in refused}
    assert reasons == {
        ("a.bank.hypermesh", 9, NameRejection.OUTSIDE_NAMESPACE),
        ("a.bank.hypermesh", 1, NameRejection.STALE_SERIAL),
        ("a.bank.hypermesh", 3, NameRejection.STALE_SERIAL),  # same serial, other contents
        ("b.bank.hypermesh", 2, NameRejection.REVOKED),
        ("c.bank.hypermesh", 1, NameRejection.OUTSIDE_NAMESPACE),
        ("d.bank.hypermesh", 1, NameRejection.EXPIRED),
        ("e.bank.hypermesh", 1, NameRejection.CHAIN_REJECTED),
    }
    assert len(refused) == 7


def test_record_set_with_a_forged_anchor_is_malformed(pki: Pki) -> None:
    with pytest.raises(MalformedRecordSet):
        verified_names(RecordSet((), (), (_broken_certificate(pki),)))


def _broken_certificate(pki: Pki) -> x509.Certificate:
    """A v3 certificate that parses but carries no hybrid key (an Ed25519-only self-signed)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "plain")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, None)
    )


@given(st.binary(max_size=64), st.integers(0, 5))
@settings(max_examples=100)
def test_record_set_decoder_raises_only_naming_errors(junk: bytes, prefix: int) -> None:
    header = [
        b"",
        b"TCNS",
        b"TCNS\x01",
        b"TCNS\x01\x00",
        b"TCNS\x01\x00\x00",
        b"TCNS\x01\x00\x00\x00\x00\x00\x01",
    ][prefix]
    data = header + junk
    try:
        decoded = decode_record_set(data)
    except MalformedRecordSet:
        return
    assert encode_record_set(decoded) == data
