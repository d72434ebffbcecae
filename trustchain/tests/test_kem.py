"""KemPrivateKey / KemPublicKey / KemCiphertext: X25519 (DHKEM), ML-KEM-1024 and the hybrid."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from trustchain.crypto import encoding
from trustchain.crypto.algorithms import KemAlgorithm, SignatureAlgorithm
from trustchain.crypto.encoding import Kind
from trustchain.crypto.kem import (
    HYBRID_COMBINER_LABEL,
    KemCiphertext,
    KemPrivateKey,
    KemPublicKey,
    _dhkem_encapsulate,
    _labeled_expand,
    _labeled_extract,
)
from trustchain.errors import (
    AlgorithmMismatch,
    DecryptionFailed,
    InvalidKey,
    MalformedData,
    UnknownAlgorithm,
)

X25519 = KemAlgorithm.X25519
ML_KEM = KemAlgorithm.ML_KEM_1024
HYBRID = KemAlgorithm.HYBRID_X25519_ML_KEM_1024
ALGORITHMS = list(KemAlgorithm)
SEED_SIZES = {X25519: 32, ML_KEM: 64, HYBRID: 96}
# Raw sizes: public key, ciphertext, private key body.
PUBLIC_SIZES = {X25519: 32, ML_KEM: 1568, HYBRID: 8 + 32 + 8 + 1568}
CIPHERTEXT_SIZES = {X25519: 32, ML_KEM: 1568, HYBRID: 8 + 32 + 8 + 1568}
PRIVATE_SIZES = {X25519: 32, ML_KEM: 64, HYBRID: 8 + 32 + 8 + 64}

P25519 = 2**255 - 19
# u-coordinates that are low-order points (or non-canonical encodings of them): 0, 1, -1, p,
# p + 1, and 0 with the (ignored) top bit set.
LOW_ORDER_U = [
    (0).to_bytes(32, "little"),
    (1).to_bytes(32, "little"),
    (P25519 - 1).to_bytes(32, "little"),
    P25519.to_bytes(32, "little"),
    (P25519 + 1).to_bytes(32, "little"),
    (2**255).to_bytes(32, "little"),
]


@pytest.fixture(scope="module", params=ALGORITHMS, ids=lambda a: a.label)
def private_key(request: pytest.FixtureRequest) -> KemPrivateKey:
    algorithm: KemAlgorithm = request.param
    return KemPrivateKey.generate(algorithm)


@pytest.fixture(scope="module")
def hybrid_keys() -> tuple[KemPrivateKey, KemPrivateKey]:
    return KemPrivateKey.generate(HYBRID), KemPrivateKey.generate(HYBRID)


def _envelope_body(data: bytes) -> bytes:
    return data[encoding.HEADER.size :]


# --- round trips -------------------------------------------------------------------------------


def test_encapsulate_decapsulate(private_key: KemPrivateKey) -> None:
    public = private_key.public_key()
    secrets = set()
    for _ in range(3):
        secret, ciphertext = public.encapsulate()
        assert len(secret) == 32
        assert ciphertext.algorithm is private_key.algorithm
        assert len(ciphertext.raw) == CIPHERTEXT_SIZES[private_key.algorithm]
        assert private_key.decapsulate(ciphertext) == secret
        secrets.add(secret)
    assert len(secrets) == 3  # every encapsulation is fresh


@settings(max_examples=15, deadline=None)
@given(data=st.data())
@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.label)
def test_seeded_keys_round_trip(algorithm: KemAlgorithm, data: st.DataObject) -> None:
    seed = data.draw(st.binary(min_size=SEED_SIZES[algorithm], max_size=SEED_SIZES[algorithm]))
    key = KemPrivateKey.from_seed(algorithm, seed)
    assert KemPrivateKey.from_seed(algorithm, seed) == key  # deterministic
    assert len(_envelope_body(key.to_bytes())) == PRIVATE_SIZES[algorithm]
    restored = KemPrivateKey.from_bytes(key.to_bytes())
    assert restored == key
    assert restored.public_key() == key.public_key()
    public = KemPublicKey.from_bytes(key.public_key().to_bytes())
    assert public == key.public_key()
    assert len(public.raw) == PUBLIC_SIZES[algorithm]
    secret, ciphertext = public.encapsulate()
    again = KemCiphertext.from_bytes(ciphertext.to_bytes())
    assert again == ciphertext
    assert restored.decapsulate(again) == secret


def test_from_raw_equals_from_bytes(private_key: KemPrivateKey) -> None:
    public = private_key.public_key()
    assert KemPublicKey.from_raw(public.algorithm, public.raw) == public
    assert hash(KemPublicKey.from_raw(public.algorithm, public.raw)) == hash(public)


def test_private_key_body_is_the_seed() -> None:
    seed = bytes(range(96))
    hybrid = KemPrivateKey.from_seed(HYBRID, seed)
    x_only = KemPrivateKey.from_seed(X25519, seed[:32])
    m_only = KemPrivateKey.from_seed(ML_KEM, seed[32:])
    assert _envelope_body(x_only.to_bytes()) == seed[:32]
    assert _envelope_body(m_only.to_bytes()) == seed[32:]
    # Hybrid bodies are the component envelopes, X25519 first.
    assert _envelope_body(hybrid.to_bytes()) == x_only.to_bytes() + m_only.to_bytes()
    assert hybrid.public_key().raw == (
        x_only.public_key().to_bytes() + m_only.public_key().to_bytes()
    )


def test_key_id(private_key: KemPrivateKey) -> None:
    public = private_key.public_key()
    assert public.key_id == hashlib.sha256(public.to_bytes()).digest()
    assert len(public.key_id) == 32
    assert KemPrivateKey.generate(private_key.algorithm).public_key().key_id != public.key_id


def test_default_algorithm_is_hybrid() -> None:
    assert KemPrivateKey.generate().algorithm is HYBRID


# --- RFC 9180 DHKEM(X25519, HKDF-SHA256) --------------------------------------------------------
# RFC 9180 Appendix A.1.1 (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, mode_base).

A11_IKM_E = bytes.fromhex("7268600d403fce431561aef583ee1613527cff655c1343f29812e66706df3234")
A11_PK_EM = bytes.fromhex("37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431")
A11_SK_EM = bytes.fromhex("52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736")
A11_IKM_R = bytes.fromhex("6db9df30aa07dd42ee5e8181afdb977e538f5e1fec8a06223f33f7013e525037")
A11_PK_RM = bytes.fromhex("3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d")
A11_SK_RM = bytes.fromhex("4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8")
A11_ENC = bytes.fromhex("37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431")
A11_SHARED_SECRET = bytes.fromhex(
    "fe0e18c9f024ce43799ae393c7e8fe8fce9d218875e8227b0187c04e7d2ea1fc"
)


def test_rfc9180_a11_decapsulation() -> None:
    recipient = KemPrivateKey.from_seed(X25519, A11_SK_RM)
    assert recipient.public_key().raw == A11_PK_RM
    assert recipient.decapsulate(KemCiphertext(X25519, A11_ENC)) == A11_SHARED_SECRET


def test_rfc9180_a11_encapsulation() -> None:
    ephemeral = x25519.X25519PrivateKey.from_private_bytes(A11_SK_EM)
    secret, enc = _dhkem_encapsulate(A11_PK_RM, ephemeral)
    assert enc == A11_PK_EM == A11_ENC
    assert secret == A11_SHARED_SECRET


@pytest.mark.parametrize(
    ("ikm", "sk", "pk"),
    [(A11_IKM_E, A11_SK_EM, A11_PK_EM), (A11_IKM_R, A11_SK_RM, A11_PK_RM)],
    ids=["ephemeral", "recipient"],
)
def test_rfc9180_a11_derive_key_pair(ikm: bytes, sk: bytes, pk: bytes) -> None:
    """RFC 9180 §7.1.3 DeriveKeyPair exercises the labeled extract/expand a second way."""
    dkp_prk = _labeled_extract(b"", b"dkp_prk", ikm)
    derived = _labeled_expand(dkp_prk, b"sk", b"", 32)
    assert derived == sk
    assert KemPrivateKey.from_seed(X25519, derived).public_key().raw == pk


def test_dhkem_against_independent_hkdf() -> None:
    """ExtractAndExpand recomputed with cryptography's HKDF and a raw X25519 exchange."""
    recipient = KemPrivateKey.generate(X25519)
    secret, ciphertext = recipient.public_key().encapsulate()
    raw_recipient = x25519.X25519PrivateKey.from_private_bytes(_envelope_body(recipient.to_bytes()))
    dh = raw_recipient.exchange(x25519.X25519PublicKey.from_public_bytes(ciphertext.raw))
    suite_id = b"KEM\x00\x20"
    kem_context = ciphertext.raw + recipient.public_key().raw
    reference = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=(32).to_bytes(2, "big") + b"HPKE-v1" + suite_id + b"shared_secret" + kem_context,
    ).derive(b"HPKE-v1" + suite_id + b"eae_prk" + dh)
    assert reference == secret


@pytest.mark.parametrize("point", LOW_ORDER_U, ids=lambda p: p.hex()[:8] + "…" + p.hex()[-4:])
def test_low_order_x25519_public_key_rejected(point: bytes) -> None:
    with pytest.raises(InvalidKey):
        KemPublicKey.from_raw(X25519, point)
    good = KemPrivateKey.generate(ML_KEM).public_key()
    hybrid_raw = encoding.encode(Kind.KEM_PUBLIC_KEY, X25519, point) + good.to_bytes()
    with pytest.raises(InvalidKey):
        KemPublicKey.from_raw(HYBRID, hybrid_raw)


@pytest.mark.parametrize("point", LOW_ORDER_U, ids=lambda p: p.hex()[:8] + "…" + p.hex()[-4:])
def test_low_order_ciphertext_rejected(
    point: bytes, hybrid_keys: tuple[KemPrivateKey, ...]
) -> None:
    with pytest.raises(DecryptionFailed):
        KemPrivateKey.generate(X25519).decapsulate(KemCiphertext(X25519, point))
    hybrid = hybrid_keys[0]
    _, honest = hybrid.public_key().encapsulate()
    ct_m = honest.raw[8 + 32 :]
    forged = encoding.encode(Kind.KEM_CIPHERTEXT, X25519, point) + ct_m
    with pytest.raises(DecryptionFailed):
        hybrid.decapsulate(KemCiphertext(HYBRID, forged))


# --- ML-KEM ------------------------------------------------------------------------------------


def test_mlkem_implicit_rejection() -> None:
    """FIPS 203: a well-formed wrong ciphertext decapsulates to a pseudo-random secret."""
    key = KemPrivateKey.generate(ML_KEM)
    secret, ciphertext = key.public_key().encapsulate()
    tampered = bytearray(ciphertext.raw)
    tampered[0] ^= 0x01
    rejected = key.decapsulate(KemCiphertext(ML_KEM, bytes(tampered)))
    assert len(rejected) == 32
    assert rejected != secret
    # Deterministic (J(z || c)), so both parties cannot be told apart by timing or retries.
    assert key.decapsulate(KemCiphertext(ML_KEM, bytes(tampered))) == rejected
    # A ciphertext for another key also yields an unrelated secret, without an exception.
    other_secret, other_ct = KemPrivateKey.generate(ML_KEM).public_key().encapsulate()
    assert key.decapsulate(other_ct) != other_secret


def test_mlkem_encapsulation_key_check() -> None:
    """FIPS 203 §7.2: a coefficient >= q = 3329 in ek is rejected."""
    raw = bytearray(KemPrivateKey.generate(ML_KEM).public_key().raw)
    raw[0] = 0xFF
    raw[1] |= 0x0F  # first 12-bit coefficient = 0xFFF = 4095
    with pytest.raises(InvalidKey):
        KemPublicKey.from_raw(ML_KEM, bytes(raw))


# --- the hybrid combiner ------------------------------------------------------------------------


def test_hybrid_combiner_matches_documented_construction() -> None:
    seed = hashlib.sha512(b"hybrid combiner test").digest() + bytes(range(32))
    key = KemPrivateKey.from_seed(HYBRID, seed)
    secret, ciphertext = key.public_key().encapsulate()
    ct_x, ct_m = ciphertext.raw[8:40], ciphertext.raw[48:]
    pk_x, pk_m = key.public_key().raw[8:40], key.public_key().raw[48:]
    assert len(ct_m) == len(pk_m) == 1568
    ss_m = KemPrivateKey.from_seed(ML_KEM, seed[32:]).decapsulate(KemCiphertext(ML_KEM, ct_m))
    ss_x = x25519.X25519PrivateKey.from_private_bytes(seed[:32]).exchange(
        x25519.X25519PublicKey.from_public_bytes(ct_x)
    )
    assert HYBRID_COMBINER_LABEL == b"trustchain/kem/hybrid-x25519-ml-kem-1024/v1"
    expected = hashlib.sha3_256(
        ss_m + ss_x + ct_x + pk_x + ct_m + pk_m + b"trustchain/kem/hybrid-x25519-ml-kem-1024/v1"
    ).digest()
    assert secret == expected


def test_hybrid_component_swap_changes_secret(
    hybrid_keys: tuple[KemPrivateKey, KemPrivateKey],
) -> None:
    key = hybrid_keys[0]
    secret_a, ct_a = key.public_key().encapsulate()
    secret_b, ct_b = key.public_key().encapsulate()
    x_a, m_a = ct_a.raw[:40], ct_a.raw[40:]
    x_b, m_b = ct_b.raw[:40], ct_b.raw[40:]
    for mixed in (x_a + m_b, x_b + m_a):
        mixed_secret = key.decapsulate(KemCiphertext(HYBRID, mixed))
        assert mixed_secret not in (secret_a, secret_b)


def test_hybrid_binds_the_public_key(hybrid_keys: tuple[KemPrivateKey, KemPrivateKey]) -> None:
    """Same X25519 half, other ML-KEM key: the secret changes because pk_M is hashed in."""
    a, b = hybrid_keys
    x_seed = _envelope_body(a.to_bytes())[8:40]
    m_seed_b = _envelope_body(b.to_bytes())[48:]
    mixed = KemPrivateKey.from_seed(HYBRID, x_seed + m_seed_b)
    secret, ciphertext = a.public_key().encapsulate()
    assert mixed.decapsulate(ciphertext) != secret


# --- malformed input ----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.label)
def test_wrong_seed_size(algorithm: KemAlgorithm) -> None:
    size = SEED_SIZES[algorithm]
    for bad in (0, size - 1, size + 1, 2 * size):
        with pytest.raises(InvalidKey):
            KemPrivateKey.from_seed(algorithm, bytes(bad))


def test_wrong_public_key_size(private_key: KemPrivateKey) -> None:
    raw = private_key.public_key().raw
    for bad in (b"", raw[:-1], raw + b"\x00"):
        with pytest.raises(MalformedData):  # InvalidKey for sizes, MalformedData for structure
            KemPublicKey.from_raw(private_key.algorithm, bad)
    if private_key.algorithm is not HYBRID:
        with pytest.raises(InvalidKey):
            KemPublicKey.from_raw(private_key.algorithm, raw[:-1])


def test_wrong_ciphertext_size(private_key: KemPrivateKey) -> None:
    _, ciphertext = private_key.public_key().encapsulate()
    for bad in (b"", ciphertext.raw[:-1], ciphertext.raw + b"\x00"):
        with pytest.raises(MalformedData):
            KemCiphertext(private_key.algorithm, bad)


def test_truncated_and_trailing_encodings(private_key: KemPrivateKey) -> None:
    public = private_key.public_key()
    _, ciphertext = public.encapsulate()
    cases = [
        (KemPrivateKey.from_bytes, private_key.to_bytes()),
        (KemPublicKey.from_bytes, public.to_bytes()),
        (KemCiphertext.from_bytes, ciphertext.to_bytes()),
    ]
    for parse, data in cases:
        for cut in (0, 1, 7, 8, len(data) // 2, len(data) - 1):
            with pytest.raises(MalformedData):
                parse(data[:cut])
        with pytest.raises(MalformedData):
            parse(data + b"\x00")


def test_hybrid_components_in_wrong_order(
    hybrid_keys: tuple[KemPrivateKey, KemPrivateKey],
) -> None:
    private_key = hybrid_keys[0]
    public = private_key.public_key()
    _, ciphertext = public.encapsulate()
    for cls, raw in ((KemPublicKey, public.raw), (KemCiphertext, ciphertext.raw)):
        swapped = raw[40:] + raw[:40]
        with pytest.raises(MalformedData):
            cls(HYBRID, swapped)
    body = _envelope_body(private_key.to_bytes())
    swapped_key = encoding.encode(Kind.KEM_PRIVATE_KEY, HYBRID, body[40:] + body[:40])
    with pytest.raises(MalformedData):
        KemPrivateKey.from_bytes(swapped_key)


def test_hybrid_component_of_wrong_kind() -> None:
    key = KemPrivateKey.generate(HYBRID)
    public = key.public_key()
    # Component envelopes re-labelled as ciphertexts inside a public key.
    relabelled = encoding.encode(Kind.KEM_CIPHERTEXT, X25519, public.raw[8:40]) + public.raw[40:]
    with pytest.raises(MalformedData):
        KemPublicKey.from_raw(HYBRID, relabelled)


def test_unknown_or_foreign_algorithm() -> None:
    foreign = encoding.encode(Kind.KEM_PUBLIC_KEY, SignatureAlgorithm.ED25519, bytes(32))
    with pytest.raises(UnknownAlgorithm):
        KemPublicKey.from_bytes(foreign)
    with pytest.raises(UnknownAlgorithm):
        KemCiphertext.from_bytes(encoding.encode(Kind.KEM_CIPHERTEXT, 0x7777, bytes(32)))


def test_wrong_kind_is_malformed(private_key: KemPrivateKey) -> None:
    public_bytes = private_key.public_key().to_bytes()
    with pytest.raises(MalformedData):
        KemPrivateKey.from_bytes(public_bytes)
    with pytest.raises(MalformedData):
        KemCiphertext.from_bytes(public_bytes)


def test_algorithm_mismatch() -> None:
    x_key = KemPrivateKey.generate(X25519)
    _, ml_ciphertext = KemPrivateKey.generate(ML_KEM).public_key().encapsulate()
    with pytest.raises(AlgorithmMismatch):
        x_key.decapsulate(ml_ciphertext)


def _outcome(key: KemPrivateKey, data: bytes) -> bytes | str:
    """What a tampered ciphertext encoding leads to; other exceptions fail the test."""
    try:
        ciphertext = KemCiphertext.from_bytes(data)
    except UnknownAlgorithm:
        return "unknown algorithm"
    except MalformedData:
        return "malformed"
    try:
        return key.decapsulate(ciphertext)
    except DecryptionFailed:
        return "rejected"


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_tampered_ciphertext_never_yields_the_secret(
    private_key: KemPrivateKey, data: st.DataObject
) -> None:
    secret, ciphertext = private_key.public_key().encapsulate()
    encoded = ciphertext.to_bytes()
    position = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    tampered = bytearray(encoded)
    tampered[position] ^= data.draw(st.integers(min_value=1, max_value=255))
    outcome = _outcome(private_key, bytes(tampered))
    assert outcome != secret
    if position < encoding.HEADER.size:  # the outer envelope header
        if position in (2, 3):
            assert outcome in ("unknown algorithm", "malformed")
        else:
            assert outcome == "malformed"
    elif private_key.algorithm is HYBRID and (position - 8 < 8 or 40 <= position - 8 < 48):
        assert outcome == "malformed"  # a component envelope header
    else:
        assert isinstance(outcome, bytes) or outcome == "rejected"


def test_every_ciphertext_byte_matters(private_key: KemPrivateKey) -> None:
    """Exhaustive single-bit flips of the raw ciphertext: never the original secret."""
    secret, ciphertext = private_key.public_key().encapsulate()
    raw = ciphertext.raw
    for position in range(len(raw)):
        tampered = bytearray(raw)
        tampered[position] ^= 0x80 if position % 2 else 0x01
        try:
            candidate = KemCiphertext(private_key.algorithm, bytes(tampered))
        except MalformedData:
            assert private_key.algorithm is HYBRID
            continue
        try:
            assert private_key.decapsulate(candidate) != secret
        except DecryptionFailed:
            continue


# --- secrecy and immutability -------------------------------------------------------------------


def test_private_key_repr_hides_secret(private_key: KemPrivateKey) -> None:
    text = repr(private_key)
    secret_body = _envelope_body(private_key.to_bytes())
    assert secret_body.hex()[:16] not in text
    assert private_key.algorithm.label in text
    assert private_key.public_key().key_id.hex()[:16] in text


def test_private_key_is_immutable(private_key: KemPrivateKey) -> None:
    with pytest.raises(AttributeError):
        private_key.algorithm = X25519
    with pytest.raises(AttributeError):
        del private_key.algorithm
    with pytest.raises(TypeError):
        hash(private_key)


def test_public_objects_are_frozen(private_key: KemPrivateKey) -> None:
    public = private_key.public_key()
    with pytest.raises(AttributeError):
        public.raw = b""  # type: ignore[misc]
    _, ciphertext = public.encapsulate()
    with pytest.raises(AttributeError):
        ciphertext.raw = b""  # type: ignore[misc]
