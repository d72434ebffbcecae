"""trustchain.consensus.proofs.stake: PoStake (owner signature, certificate chain, stake registry).

A real PKI is built once per module: a key store, a transparency log, a root CA, the entity CA
``bank`` and node certificates for the owners (a node's certificate certifies the signing key
its peer id is the hash of; the owner of an asset is such a peer). A second, foreign CA
hierarchy that no trust store anchors stands in for untrusted chains.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from hypermesh_interfaces.v1 import common_pb2
from trustchain.ca import hybrid
from trustchain.ca.authority import CertificateAuthority, Issued
from trustchain.ca.trust import TrustAnchor, TrustLevel, TrustStore
from trustchain.consensus.proofs.challenges import asset_id
from trustchain.consensus.proofs.presets import DEFAULT, LOCALHOST_TESTING
from trustchain.consensus.proofs.rejections import ProofKind, ProofReason, ProofRejected
from trustchain.consensus.proofs.stake import (
    MAX_CHAIN_CERTIFICATES,
    STAKE_ENTRY_LABEL,
    STAKE_SIGNING_LABEL,
    RegistryCorrupted,
    StakeEntry,
    StakeNotFound,
    StakeRegistry,
    StakeRegistryError,
    StakeVerdict,
    sign_stake,
    stake_signing_bytes,
    verify_stake,
)
from trustchain.crypto.algorithms import SignatureAlgorithm
from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KeyStore
from trustchain.crypto.signatures import Signature, SigningKey, VerifyKey
from trustchain.ct.log import TransparencyLog
from trustchain.errors import InvalidSignature, MalformedData, TrustChainError

NAMESPACE = "bank.hypermesh"
VERSION = 3
AMOUNT = 1_500
BALANCE = 10_000
DIGEST = hashlib.sha256(b"asset state, version 3").digest()
REGISTRY_KEY_NAME = "stake-registry"
K = ProofKind
R = ProofReason
Signer = Callable[[bytes], bytes]


@dataclass(frozen=True)
class Owner:
    """A node certificate, its chain (leaf first, up to the root) and a signer for its key."""

    issued: Issued
    sign: Signer

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        return (self.issued.certificate, *self.issued.chain)

    @property
    def key_id(self) -> bytes:
        return hybrid.certificate_public_key(self.issued.certificate).key_id


@dataclass(frozen=True)
class Pki:
    keys: KeyStore
    owner: Owner
    other: Owner
    revoked: Owner
    foreign: Owner
    foreign_root: x509.Certificate
    store: TrustStore
    store_without_crls: TrustStore
    registry_key: VerifyKey
    registry_sign: Signer
    wrong_registry_sign: Signer


def _signer(keys: KeyStore, name: str) -> Signer:
    def sign(message: bytes) -> bytes:
        return keys.sign(name, message).signature.to_bytes()

    return sign


def _owner(keys: KeyStore, ca: CertificateAuthority, issuer: str, name: str) -> Owner:
    issued = ca.issue(issuer, "node", name, dns_names=[name])
    assert issued.key_name is not None
    return Owner(issued, _signer(keys, issued.key_name))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    home: Path = tmp_path_factory.mktemp("stake-pki")
    keys = KeyStore.open(
        home / "keys", passphrase=b"pw", kdf_params=INSECURE_TEST_KDF_PARAMS, allow_weak_kdf=True
    )
    with (
        keys,
        TransparencyLog.open(home / "ct" / "log.db", SigningKey.generate()) as log,
        CertificateAuthority(home / "ca", keys, log) as ca,
        CertificateAuthority(home / "foreign-ca", keys) as foreign_ca,
    ):
        root = ca.init_root("hypermesh-root")
        bank = ca.issue_intermediate("bank", NAMESPACE)
        owner = _owner(keys, ca, "bank", f"owner.{NAMESPACE}")
        other = _owner(keys, ca, "bank", f"other.{NAMESPACE}")
        revoked = _owner(keys, ca, "bank", f"revoked.{NAMESPACE}")
        ca.revoke(revoked.issued.serial, x509.ReasonFlags.superseded)

        foreign_root = foreign_ca.init_root("foreign-root")
        foreign_ca.issue_intermediate("foreign", "foreign.hypermesh")
        foreign = _owner(keys, foreign_ca, "foreign", "owner.foreign.hypermesh")

        anchor = TrustAnchor(root.certificate, "hypermesh")
        store = TrustStore([anchor], certificates=[bank.certificate], log_keys=[log.public_key])
        store.add_crl(ca.crl())
        store.add_crl(ca.crl("bank"))
        store_without_crls = TrustStore([anchor], log_keys=[log.public_key])

        keys.generate(REGISTRY_KEY_NAME)
        keys.generate("not-the-registry")
        registry_key = keys.public_key(REGISTRY_KEY_NAME)
        assert isinstance(registry_key, VerifyKey)
        yield Pki(
            keys=keys,
            owner=owner,
            other=other,
            revoked=revoked,
            foreign=foreign,
            foreign_root=foreign_root.certificate,
            store=store,
            store_without_crls=store_without_crls,
            registry_key=registry_key,
            registry_sign=_signer(keys, REGISTRY_KEY_NAME),
            wrong_registry_sign=_signer(keys, "not-the-registry"),
        )


@pytest.fixture(scope="module")
def funded(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StakeRegistry]:
    """A registry in which every test owner has BALANCE (read-only: shared by the module)."""
    path = tmp_path_factory.mktemp("funded") / "stake.db"
    with StakeRegistry.open(path, registry_key=pki.registry_key) as registry:
        for owner in (pki.owner, pki.other, pki.revoked, pki.foreign):
            registry.credit(owner.key_id, BALANCE, pki.registry_sign)
        yield registry


@pytest.fixture
def registry(pki: Pki, tmp_path: Path) -> Iterator[StakeRegistry]:
    """An empty registry of the test's own."""
    with StakeRegistry.open(tmp_path / "stake.db", registry_key=pki.registry_key) as opened:
        yield opened


@pytest.fixture(scope="module")
def asset(pki: Pki) -> bytes:
    return asset_id(pki.owner.key_id, "disk-1")


@pytest.fixture(scope="module")
def proof(pki: Pki, asset: bytes) -> common_pb2.StakeProof:
    """The owner's proof of staking AMOUNT on (asset, VERSION, DIGEST). Copy before changing."""
    return sign_stake(
        asset=asset,
        version=VERSION,
        state_digest=DIGEST,
        amount=AMOUNT,
        chain=pki.owner.chain,
        sign=pki.owner.sign,
    )


def _copy(proof: common_pb2.StakeProof) -> common_pb2.StakeProof:
    copied = common_pb2.StakeProof()
    copied.CopyFrom(proof)
    return copied


def _verify(
    proof: common_pb2.StakeProof,
    pki: Pki,
    registry: StakeRegistry,
    asset: bytes,
    **overrides: object,
) -> StakeVerdict:
    arguments: dict[str, object] = {
        "expected_asset": asset,
        "expected_version": VERSION,
        "expected_state_digest": DIGEST,
        "trust_store": pki.store,
        "registry": registry,
        "preset": LOCALHOST_TESTING,
    }
    arguments.update(overrides)
    return verify_stake(proof, **arguments)  # type: ignore[arg-type]


def _rejected(
    proof: common_pb2.StakeProof,
    pki: Pki,
    registry: StakeRegistry,
    asset: bytes,
    **overrides: object,
) -> ProofRejected:
    with pytest.raises(ProofRejected) as caught:
        _verify(proof, pki, registry, asset, **overrides)
    return caught.value


def _resigned(proof: common_pb2.StakeProof, sign: Signer) -> common_pb2.StakeProof:
    """``proof`` signed again (after a change) with ``sign``."""
    signed = _copy(proof)
    signed.owner_signature = sign(stake_signing_bytes(signed))
    return signed


# --- round trip -----------------------------------------------------------------------------------


def test_round_trip(
    pki: Pki, funded: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof
) -> None:
    verdict = _verify(proof, pki, funded, asset)
    assert verdict == StakeVerdict(
        owner_peer_id=pki.owner.key_id,
        trust_level=TrustLevel.FULL,
        amount=AMOUNT,
        balance=BALANCE,
    )


def test_proof_layout(pki: Pki, asset: bytes, proof: common_pb2.StakeProof) -> None:
    assert proof.asset_id.id == asset
    assert (proof.version, proof.state_digest, proof.stake_amount) == (VERSION, DIGEST, AMOUNT)
    assert [
        x509.load_der_x509_certificate(der) for der in proof.owner_certificate_chain.certificates
    ] == list(pki.owner.chain)
    unsigned = _copy(proof)
    unsigned.owner_signature = b""
    message = stake_signing_bytes(proof)
    assert message == STAKE_SIGNING_LABEL + unsigned.SerializeToString(deterministic=True)
    assert STAKE_SIGNING_LABEL == b"hypermesh/stake-proof/v1\x00"
    leaf_key = hybrid.certificate_public_key(pki.owner.issued.certificate)
    signature = Signature.from_bytes(proof.owner_signature)
    assert signature.algorithm is SignatureAlgorithm.HYBRID_ED25519_FALCON_1024
    leaf_key.verify(signature, message)
    # The signature does not depend on itself: the signed bytes ignore owner_signature.
    assert stake_signing_bytes(unsigned) == message


def test_full_trust_meets_the_default_preset(
    pki: Pki, funded: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof
) -> None:
    assert DEFAULT.min_trust_level is TrustLevel.FULL
    assert DEFAULT.min_stake <= AMOUNT
    assert _verify(proof, pki, funded, asset, preset=DEFAULT).trust_level is TrustLevel.FULL


def test_trust_level_below_the_preset_minimum(
    pki: Pki, funded: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof
) -> None:
    # Without CRLs the revocation status is unknown: the chain is trusted PARTIAL only.
    verdict = _verify(proof, pki, funded, asset, trust_store=pki.store_without_crls)
    assert verdict.trust_level is TrustLevel.PARTIAL
    error = _rejected(proof, pki, funded, asset, trust_store=pki.store_without_crls, preset=DEFAULT)
    assert (error.kind, error.reason) == (K.CERTIFICATE_CHAIN, R.UNTRUSTED_ROOT)
    assert "PARTIAL" in error.detail


# --- consistency with the expected asset state ---------------------------------------------------


def test_proof_for_one_asset_fails_for_another(
    pki: Pki, funded: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof
) -> None:
    other_asset = asset_id(pki.owner.key_id, "disk-2")
    error = _rejected(proof, pki, funded, asset, expected_asset=other_asset)
    assert (error.kind, error.reason) == (K.STAKE, R.INCONSISTENT)


def test_proof_for_version_n_fails_for_n_plus_one(
    pki: Pki, funded: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof
) -> None:
    error = _rejected(proof, pki, funded, asset, expected_version=VERSION + 1)
    assert (error.kind, error.reason) == (K.STAKE, R.INCONSISTENT)
    assert "version" in error.detail


def test_proof_for_another_state_fails(
    pki: Pki, funded: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof
) -> None:
    other = hashlib.sha256(b"another state").digest()
    error = _rejected(proof, pki, funded, asset, expected_state_digest=other)
    assert (error.kind, error.reason) == (K.STAKE, R.INCONSISTENT)


# --- each field changed ---------------------------------------------------------------------------

FIELD_SETTINGS = settings(max_examples=25, deadline=None)


@FIELD_SETTINGS
@given(new=st.binary(max_size=40))
def test_changed_asset_id(
    pki: Pki, funded: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof, new: bytes
) -> None:
    changed = _copy(proof)
    changed.asset_id.id = new
    if new == asset:
        assert _verify(changed, pki, funded, asset).amount == AMOUNT
        return
    error = _rejected(changed, pki, funded, asset)
    expected = R.MISSING if not new else R.MALFORMED if len(new) != 32 else R.INCONSISTENT
    assert (error.kind, error.reason) == (K.STAKE, expected)


@FIELD_SETTINGS
@given(new=st.integers(min_value=0, max_value=2**64 - 1).filter(lambda v: v != VERSION))
def test_changed_version(
    pki: Pki, funded: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof, new: int
) -> None:
    changed = _copy(proof)
    changed.version = new
    error = _rejected(changed, pki, funded, asset)
    assert (error.kind, error.reason) == (K.STAKE, R.INCONSISTENT)


@FIELD_SETTINGS
@given(index=st.integers(min_value=0, max_value=31), flip=st.integers(min_value=1, max_value=255))
def test_changed_state_digest_byte(
    pki: Pki,
    funded: StakeRegistry,
    asset: bytes,
    proof: common_pb2.StakeProof,
    index: int,
    flip: int,
) -> None:
    changed = _copy(proof)
    digest = bytearray(DIGEST)
    digest[index] ^= flip
    changed.state_digest = bytes(digest)
    error = _rejected(changed, pki, funded, asset)
    assert (error.kind, error.reason) == (K.STAKE, R.INCONSISTENT)
    # Even when the verifier expects the changed digest, the owner never signed it.
    error = _rejected(changed, pki, funded, asset, expected_state_digest=bytes(digest))
    assert (error.kind, error.reason) == (K.STAKE, R.INVALID_SIGNATURE)


@FIELD_SETTINGS
@given(new=st.integers(min_value=0, max_value=2**64 - 1).filter(lambda v: v != AMOUNT))
def test_changed_amount(
    pki: Pki, funded: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof, new: int
) -> None:
    changed = _copy(proof)
    changed.stake_amount = new
    error = _rejected(changed, pki, funded, asset)
    assert (error.kind, error.reason) == (K.STAKE, R.INVALID_SIGNATURE)


#: Offsets inside a hybrid signature envelope: outer header (8 bytes), then the Ed25519
#: component envelope (8-byte header + 64-byte signature), then the Falcon-1024 component
#: envelope (8-byte header, the 0x3A header byte, nonce and compressed signature).
ED25519_BODY = range(16, 16 + 64)
FALCON_HEADER_BYTE = 16 + 64 + 8


@FIELD_SETTINGS
@given(data=st.data(), flip=st.integers(min_value=1, max_value=255))
def test_changed_signature_byte(
    pki: Pki,
    funded: StakeRegistry,
    asset: bytes,
    proof: common_pb2.StakeProof,
    data: st.DataObject,
    flip: int,
) -> None:
    signature = bytearray(proof.owner_signature)
    index = data.draw(st.integers(min_value=0, max_value=len(signature) - 1), label="index")
    signature[index] ^= flip
    changed = _copy(proof)
    changed.owner_signature = bytes(signature)
    error = _rejected(changed, pki, funded, asset)
    assert error.kind is K.STAKE
    if index in ED25519_BODY or index > FALCON_HEADER_BYTE:
        assert error.reason is R.INVALID_SIGNATURE
    else:  # a header: envelope version, kind, algorithm, lengths, the Falcon header byte
        assert error.reason in (R.MALFORMED, R.UNSUPPORTED_ALGORITHM)


#: What a changed certificate byte can be reported as: the certificate no longer decodes
#: (STAKE MALFORMED), path validation fails (CERTIFICATE_CHAIN, one of these), or the chain
#: still validates and the owner's signature, which covers the chain, does not verify.
CHAIN_REASONS = frozenset(
    {
        R.MALFORMED,
        R.INVALID_SIGNATURE,
        R.UNSUPPORTED_ALGORITHM,
        R.VERIFICATION_FAILED,
        R.EXPIRED,
        R.UNTRUSTED_ROOT,
        R.IDENTITY_MISMATCH,
    }
)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), flip=st.integers(min_value=1, max_value=255))
def test_changed_certificate_byte(
    pki: Pki,
    funded: StakeRegistry,
    asset: bytes,
    proof: common_pb2.StakeProof,
    data: st.DataObject,
    flip: int,
) -> None:
    ders = list(proof.owner_certificate_chain.certificates)
    which = data.draw(st.integers(min_value=0, max_value=len(ders) - 1), label="certificate")
    der = bytearray(ders[which])
    index = data.draw(st.integers(min_value=0, max_value=len(der) - 1), label="index")
    der[index] ^= flip
    changed = _copy(proof)
    changed.owner_certificate_chain.certificates[which] = bytes(der)
    error = _rejected(changed, pki, funded, asset)
    if error.kind is K.STAKE:
        assert error.reason in (R.MALFORMED, R.INVALID_SIGNATURE)
    else:
        assert error.kind is K.CERTIFICATE_CHAIN
        assert error.reason in CHAIN_REASONS


# --- missing and malformed parts ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "detail"),
    [
        ("owner_certificate_chain", "chain"),
        ("owner_signature", "signature"),
        ("asset_id", "asset id"),
        ("state_digest", "state digest"),
    ],
)
def test_missing_part(
    pki: Pki,
    funded: StakeRegistry,
    asset: bytes,
    proof: common_pb2.StakeProof,
    field: str,
    detail: str,
) -> None:
    changed = _copy(proof)
    changed.ClearField(field)  # type: ignore[arg-type]
    error = _rejected(changed, pki, funded, asset)
    assert (error.kind, error.reason) == (K.STAKE, R.MISSING)
    assert detail in error.detail


def test_empty_proof_is_missing(pki: Pki, funded: StakeRegistry, asset: bytes) -> None:
    error = _rejected(common_pb2.StakeProof(), pki, funded, asset)
    assert (error.kind, error.reason) == (K.STAKE, R.MISSING)


@pytest.mark.parametrize("size", [1, 31, 33, 1000])
def test_wrong_size_state_digest(
    pki: Pki, funded: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof, size: int
) -> None:
    changed = _copy(proof)
    changed.state_digest = bytes(size)
    error = _rejected(changed, pki, funded, asset)
    assert (error.kind, error.reason) == (K.STAKE, R.MALFORMED)


@pytest.mark.parametrize("garbage", [b"\x00", b"\x30\x03\x02\x01\x01", bytes(range(256)) * 4])
def test_undecodable_certificate(
    pki: Pki, funded: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof, garbage: bytes
) -> None:
    changed = _copy(proof)
    changed.owner_certificate_chain.certificates[0] = garbage
    error = _rejected(changed, pki, funded, asset)
    assert (error.kind, error.reason) == (K.STAKE, R.MALFORMED)


def test_too_many_certificates(
    pki: Pki, funded: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof
) -> None:
    changed = _copy(proof)
    leaf = changed.owner_certificate_chain.certificates[0]
    changed.owner_certificate_chain.certificates.extend([leaf] * MAX_CHAIN_CERTIFICATES)
    error = _rejected(changed, pki, funded, asset)
    assert (error.kind, error.reason) == (K.STAKE, R.MALFORMED)


@pytest.mark.parametrize("garbage", [b"\x01", b"not a signature", bytes(5000)])
def test_undecodable_signature(
    pki: Pki, funded: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof, garbage: bytes
) -> None:
    changed = _copy(proof)
    changed.owner_signature = garbage
    error = _rejected(changed, pki, funded, asset)
    assert (error.kind, error.reason) == (K.STAKE, R.MALFORMED)


def test_non_hybrid_signature(
    pki: Pki, funded: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof
) -> None:
    ed25519 = SigningKey.generate(SignatureAlgorithm.ED25519)
    changed = _resigned(proof, lambda message: ed25519.sign(message).to_bytes())
    error = _rejected(changed, pki, funded, asset)
    assert (error.kind, error.reason) == (K.STAKE, R.UNSUPPORTED_ALGORITHM)


# --- the certificate chain ------------------------------------------------------------------------


def test_revoked_owner(pki: Pki, funded: StakeRegistry, asset: bytes) -> None:
    proof = sign_stake(
        asset=asset,
        version=VERSION,
        state_digest=DIGEST,
        amount=AMOUNT,
        chain=pki.revoked.chain,
        sign=pki.revoked.sign,
    )
    error = _rejected(proof, pki, funded, asset)
    assert (error.kind, error.reason) == (K.CERTIFICATE_CHAIN, R.REVOKED)
    # The same chain is accepted by a store that does not hold the CRL (revocation unknown).
    verdict = _verify(proof, pki, funded, asset, trust_store=pki.store_without_crls)
    assert verdict.trust_level is TrustLevel.PARTIAL


def test_expired_owner(
    pki: Pki, funded: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof
) -> None:
    after = pki.owner.issued.certificate.not_valid_after_utc + timedelta(days=1)
    error = _rejected(proof, pki, funded, asset, at=after)
    assert (error.kind, error.reason) == (K.CERTIFICATE_CHAIN, R.EXPIRED)


def test_owner_not_yet_valid(
    pki: Pki, funded: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof
) -> None:
    before = pki.owner.issued.certificate.not_valid_before_utc - timedelta(hours=1)
    error = _rejected(proof, pki, funded, asset, at=before)
    assert (error.kind, error.reason) == (K.CERTIFICATE_CHAIN, R.EXPIRED)


@pytest.mark.parametrize("with_root", [False, True], ids=["issuer-unknown", "self-signed-root"])
def test_untrusted_owner(pki: Pki, funded: StakeRegistry, asset: bytes, with_root: bool) -> None:
    chain = pki.foreign.chain + ((pki.foreign_root,) if with_root else ())
    proof = sign_stake(
        asset=asset,
        version=VERSION,
        state_digest=DIGEST,
        amount=AMOUNT,
        chain=chain,
        sign=pki.foreign.sign,
    )
    error = _rejected(proof, pki, funded, asset)
    assert (error.kind, error.reason) == (K.CERTIFICATE_CHAIN, R.UNTRUSTED_ROOT)


def test_another_owners_signature(
    pki: Pki, funded: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof
) -> None:
    forged = _resigned(proof, pki.other.sign)
    error = _rejected(forged, pki, funded, asset)
    assert (error.kind, error.reason) == (K.STAKE, R.INVALID_SIGNATURE)


def test_swapped_chain_breaks_the_signature(
    pki: Pki, funded: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof
) -> None:
    # Another owner's valid chain with this owner's signature: the signature covers the chain.
    swapped = _copy(proof)
    del swapped.owner_certificate_chain.certificates[:]
    swapped.owner_certificate_chain.certificates.extend(
        _copy(
            sign_stake(
                asset=asset,
                version=VERSION,
                state_digest=DIGEST,
                amount=AMOUNT,
                chain=pki.other.chain,
                sign=pki.other.sign,
            )
        ).owner_certificate_chain.certificates
    )
    error = _rejected(swapped, pki, funded, asset)
    assert (error.kind, error.reason) == (K.STAKE, R.INVALID_SIGNATURE)


def test_sign_stake_refuses_another_key(pki: Pki, asset: bytes) -> None:
    with pytest.raises(InvalidSignature):
        sign_stake(
            asset=asset,
            version=VERSION,
            state_digest=DIGEST,
            amount=AMOUNT,
            chain=pki.owner.chain,
            sign=pki.other.sign,
        )
    with pytest.raises(MalformedData):
        sign_stake(
            asset=asset,
            version=VERSION,
            state_digest=DIGEST,
            amount=AMOUNT,
            chain=pki.owner.chain,
            sign=lambda message: b"not a signature",
        )


@pytest.mark.parametrize(
    "change",
    [
        {"asset": bytes(31)},
        {"state_digest": b""},
        {"version": -1},
        {"amount": 2**64},
        {"chain": ()},
    ],
)
def test_sign_stake_checks_its_arguments(pki: Pki, asset: bytes, change: dict[str, object]) -> None:
    arguments: dict[str, object] = {
        "asset": asset,
        "version": VERSION,
        "state_digest": DIGEST,
        "amount": AMOUNT,
        "chain": pki.owner.chain,
        "sign": pki.owner.sign,
    }
    arguments.update(change)
    with pytest.raises(ValueError, match=next(iter(change)).replace("_", ".")):
        sign_stake(**arguments)  # type: ignore[arg-type]


# --- the stake ------------------------------------------------------------------------------------


def test_stake_below_the_preset_minimum(
    pki: Pki, funded: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof
) -> None:
    strict = replace(LOCALHOST_TESTING, min_stake=AMOUNT + 1)
    error = _rejected(proof, pki, funded, asset, preset=strict)
    assert (error.kind, error.reason) == (K.STAKE, R.INSUFFICIENT)
    assert "minimum" in error.detail
    exact = replace(LOCALHOST_TESTING, min_stake=AMOUNT)
    assert _verify(proof, pki, funded, asset, preset=exact).amount == AMOUNT


def test_balance_too_low(
    pki: Pki, registry: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof
) -> None:
    registry.credit(pki.owner.key_id, AMOUNT - 1, pki.registry_sign)
    error = _rejected(proof, pki, registry, asset)
    assert (error.kind, error.reason) == (K.STAKE, R.INSUFFICIENT)
    assert "balance" in error.detail
    # The newest entry counts: raising the balance to the amount makes the proof good.
    registry.credit(pki.owner.key_id, AMOUNT, pki.registry_sign)
    assert _verify(proof, pki, registry, asset).balance == AMOUNT


def test_no_registry_entry(
    pki: Pki, registry: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof
) -> None:
    registry.credit(pki.other.key_id, BALANCE, pki.registry_sign)  # someone else's stake
    error = _rejected(proof, pki, registry, asset)
    assert (error.kind, error.reason) == (K.STAKE, R.INSUFFICIENT)
    assert "no registry entry" in error.detail


def test_tampered_registry_row(
    pki: Pki, registry: StakeRegistry, asset: bytes, proof: common_pb2.StakeProof
) -> None:
    registry.credit(pki.owner.key_id, AMOUNT - 1, pki.registry_sign)
    with sqlite3.connect(registry.path) as conn:
        conn.execute("UPDATE entries SET balance = ?", (BALANCE,))
    conn.close()
    with pytest.raises(RegistryCorrupted):
        registry.entry(pki.owner.key_id)
    error = _rejected(proof, pki, registry, asset)
    assert (error.kind, error.reason) == (K.STAKE, R.VERIFICATION_FAILED)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("sequence", 7),
        ("issued_at_us", 0),
        ("signature", b"\x01garbage"),
        ("balance", "a lot"),
        ("registry_key_id", bytes(32)),
    ],
)
def test_every_column_is_covered(
    pki: Pki, registry: StakeRegistry, column: str, value: object
) -> None:
    registry.credit(pki.owner.key_id, BALANCE, pki.registry_sign)
    with sqlite3.connect(registry.path) as conn:
        conn.execute(f"UPDATE entries SET {column} = ?", (value,))  # noqa: S608
    conn.close()
    with pytest.raises(RegistryCorrupted):
        registry.entry(pki.owner.key_id)
    with pytest.raises(RegistryCorrupted):
        registry.history(pki.owner.key_id)


# --- the stake registry ---------------------------------------------------------------------------


def test_credit_and_read(pki: Pki, registry: StakeRegistry) -> None:
    owner = pki.owner.key_id
    at = datetime(2031, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    first = registry.credit(owner, 100, pki.registry_sign, at=at)
    second = registry.credit(owner, 40, pki.registry_sign, at=at + timedelta(seconds=1))
    assert (first.sequence, first.balance, first.issued_at) == (1, 100, at)
    assert (second.sequence, second.balance) == (2, 40)
    assert first.registry_key_id == second.registry_key_id == pki.registry_key.key_id
    assert registry.entry(owner) == second
    assert registry.history(owner) == [first, second]
    assert registry.history(pki.other.key_id) == []
    second.verify(pki.registry_key)


def test_entry_signing_bytes_layout(pki: Pki, registry: StakeRegistry) -> None:
    at = datetime(2031, 5, 1, 14, 0, 0, 250, tzinfo=UTC)
    entry = registry.credit(pki.owner.key_id, 2**63 - 1, pki.registry_sign, at=at)
    micros = int((at - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 10**6 + 250
    expected = (
        b"hypermesh/stake-registry-entry/v1\x00"
        + pki.owner.key_id
        + struct.pack(">Q", 2**63 - 1)
        + struct.pack(">Q", 1)
        + struct.pack(">q", micros)
        + pki.registry_key.key_id
    )
    assert STAKE_ENTRY_LABEL == b"hypermesh/stake-registry-entry/v1\x00"
    assert entry.signing_bytes() == expected
    assert len(expected) == 122
    pki.registry_key.verify(Signature.from_bytes(entry.signature), expected)


def test_no_entry_is_stake_not_found(pki: Pki, registry: StakeRegistry) -> None:
    with pytest.raises(StakeNotFound) as caught:
        registry.entry(pki.owner.key_id)
    assert isinstance(caught.value, LookupError)
    assert isinstance(caught.value, TrustChainError)


def test_credit_with_a_wrong_key_is_refused(pki: Pki, registry: StakeRegistry) -> None:
    owner = pki.owner.key_id
    kept = registry.credit(owner, 5, pki.registry_sign)
    with pytest.raises(InvalidSignature):
        registry.credit(owner, BALANCE, pki.wrong_registry_sign)
    with pytest.raises(InvalidSignature):
        registry.credit(pki.other.key_id, BALANCE, pki.wrong_registry_sign)
    assert registry.entry(owner) == kept
    with pytest.raises(StakeNotFound):
        registry.entry(pki.other.key_id)
    with sqlite3.connect(registry.path) as conn:
        (rows,) = conn.execute("SELECT COUNT(*) FROM entries").fetchone()
    conn.close()
    assert rows == 1

    # A signer that fails midway leaves nothing either.
    def failing(message: bytes) -> bytes:
        raise RuntimeError("signer unavailable")

    with pytest.raises(RuntimeError, match="signer unavailable"):
        registry.credit(owner, BALANCE, failing)
    assert registry.history(owner) == [kept]
    # The next good credit takes the next sequence number.
    assert registry.credit(owner, 6, pki.registry_sign).sequence == 2


@pytest.mark.parametrize(
    ("owner", "balance", "at"),
    [
        (bytes(31), 1, None),
        (bytes(32), -1, None),
        (bytes(32), 2**63, None),
        (bytes(32), True, None),
        (bytes(32), 1, datetime(2031, 1, 1)),  # naive on purpose
    ],
)
def test_credit_checks_its_arguments(
    pki: Pki, registry: StakeRegistry, owner: bytes, balance: int, at: datetime | None
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        registry.credit(owner, balance, pki.registry_sign, at=at)
    assert registry.history(owner) == []


def test_entries_survive_reopening(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "registry" / "stake.db"
    with StakeRegistry.open(path, registry_key=pki.registry_key) as registry:
        first = registry.credit(pki.owner.key_id, 100, pki.registry_sign)
        second = registry.credit(pki.owner.key_id, 200, pki.registry_sign)
    with pytest.raises(StakeRegistryError, match="closed"):
        registry.entry(pki.owner.key_id)
    with StakeRegistry.open(path, registry_key=pki.registry_key) as reopened:
        assert reopened.entry(pki.owner.key_id) == second
        assert reopened.history(pki.owner.key_id) == [first, second]
        third = reopened.credit(pki.owner.key_id, 300, pki.registry_sign)
        assert third.sequence == 3


def test_reopening_with_another_key_is_refused(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "stake.db"
    StakeRegistry.open(path, registry_key=pki.registry_key).close()
    other_key = pki.keys.public_key("not-the-registry")
    assert isinstance(other_key, VerifyKey)
    with pytest.raises(StakeRegistryError, match="not the key"):
        StakeRegistry.open(path, registry_key=other_key)


def test_a_foreign_database_is_refused(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE something (x)")
    conn.close()
    with pytest.raises(RegistryCorrupted, match="not a stake registry"):
        StakeRegistry.open(path, registry_key=pki.registry_key)


def test_entry_values_are_checked(pki: Pki) -> None:
    good = {
        "owner_key_id": bytes(32),
        "balance": 1,
        "sequence": 1,
        "issued_at": datetime(2031, 1, 1, tzinfo=UTC),
        "registry_key_id": bytes(32),
        "signature": b"",
    }
    StakeEntry(**good)  # type: ignore[arg-type]
    for change in (
        {"owner_key_id": bytes(33)},
        {"balance": 2**63},
        {"sequence": 0},
        {"issued_at": datetime(2031, 1, 1)},  # naive on purpose
        {"registry_key_id": b""},
    ):
        with pytest.raises(ValueError, match=next(iter(change))):
            StakeEntry(**{**good, **change})  # type: ignore[arg-type]
