"""SigningKey / VerifyKey / Signature: Ed25519, Falcon-1024, FN-DSA-1024 and the hybrid.

Expected exceptions follow the rules in the :mod:`trustchain.crypto.signatures` docstring:
structure (envelope header, sizes, header bytes, hybrid component headers) -> MalformedData,
unknown algorithm id -> UnknownAlgorithm, another algorithm's signature -> AlgorithmMismatch,
anything else that changes a signed value -> InvalidSignature.
"""

from __future__ import annotations

import ctypes.util
import hashlib
import importlib
import importlib.util
import shutil
import sys
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustchain.crypto import encoding, falcon, fndsa
from trustchain.crypto.algorithms import KemAlgorithm, SignatureAlgorithm
from trustchain.crypto.encoding import Kind
from trustchain.crypto.signatures import (
    HYBRID_DOMAIN,
    Signature,
    SigningKey,
    VerifyKey,
)
from trustchain.errors import (
    AlgorithmMismatch,
    BackendUnavailable,
    InvalidKey,
    InvalidSignature,
    MalformedData,
    UnknownAlgorithm,
)

ED25519 = SignatureAlgorithm.ED25519
FALCON = SignatureAlgorithm.FALCON_1024
FN_DSA = SignatureAlgorithm.FN_DSA_1024
HYBRID = SignatureAlgorithm.HYBRID_ED25519_FALCON_1024

try:
    importlib.import_module("py_fn_dsa")
except ImportError as exc:  # the nox/CI environment installs it; a bare checkout may not
    FN_DSA_MISSING: str | None = f"py-fn-dsa is not importable: {exc}"
else:
    FN_DSA_MISSING = None

requires_fn_dsa = pytest.mark.skipif(FN_DSA_MISSING is not None, reason=str(FN_DSA_MISSING))

ALGORITHMS = [
    pytest.param(ED25519, id="ed25519"),
    pytest.param(FALCON, id="falcon-1024"),
    pytest.param(FN_DSA, id="fn-dsa-1024", marks=requires_fn_dsa),
    pytest.param(HYBRID, id="hybrid"),
]
KINDS = (Kind.SIGNING_PUBLIC_KEY, Kind.SIGNING_PRIVATE_KEY, Kind.SIGNATURE)
MESSAGE = b"TrustChain test message"

# Sizes of the bodies (see the module docstring of trustchain.crypto.signatures).
PUBLIC_SIZES = {ED25519: 32, FALCON: 1793, FN_DSA: 1793, HYBRID: 8 + 32 + 8 + 1793}
PRIVATE_SIZES = {
    ED25519: 32,
    FALCON: 2305 + 1793,
    FN_DSA: 2369 + 1793,
    HYBRID: 8 + 32 + 8 + 2305 + 1793,
}

# Hypothesis budgets: Falcon signing costs ~10 ms and loading a Falcon / FN-DSA private key
# ~10 ms (the key-pair checks), so keep the expensive properties small.
CHEAP = settings(max_examples=100, deadline=None)
SIGNING = settings(max_examples=25, deadline=None)
LOADING = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@cache
def signing_keys(algorithm: SignatureAlgorithm) -> tuple[SigningKey, SigningKey]:
    """Two independent keys per algorithm, generated once per test session."""
    return SigningKey.generate(algorithm), SigningKey.generate(algorithm)


@cache
def sample(algorithm: SignatureAlgorithm) -> tuple[VerifyKey, Signature]:
    """The first key's public key and its signature of MESSAGE."""
    key = signing_keys(algorithm)[0]
    return key.public_key(), key.sign(MESSAGE)


def _xor_byte(data: bytes, position: int, mask: int) -> bytes:
    changed = bytearray(data)
    changed[position] ^= mask
    return bytes(changed)


def _shape_ok(algorithm: SignatureAlgorithm, raw: bytes) -> bool:
    """Whether ``raw`` has the size and header byte of an ``algorithm`` signature (docs)."""
    if algorithm is ED25519:
        return len(raw) == 64
    if algorithm is FALCON:
        return 42 <= len(raw) <= 1462 and raw[0] == 0x3A
    if algorithm is FN_DSA:
        return len(raw) == 1280 and raw[0] == 0x3A
    return False  # no single signature body is a well-formed hybrid body


def expected_signature_tamper_error(
    algorithm: SignatureAlgorithm, raw: bytes, tampered_envelope: bytes, position: int
) -> type[Exception]:
    """The documented exception for a change of byte ``position`` of a signature envelope."""
    if position in (0, 1) or 4 <= position < 8:  # version, kind, body length
        return MalformedData
    if position in (2, 3):  # algorithm id
        new_id = int.from_bytes(tampered_envelope[2:4], "big")
        if new_id not in {a.value for a in SignatureAlgorithm}:
            return UnknownAlgorithm
        return AlgorithmMismatch if _shape_ok(SignatureAlgorithm(new_id), raw) else MalformedData
    offset = position - 8
    if algorithm is ED25519:
        return InvalidSignature
    if algorithm in (FALCON, FN_DSA):
        return MalformedData if offset == 0 else InvalidSignature
    # Hybrid body: env(ed25519) = 8 + 64 bytes, then the Falcon envelope header (8) and the
    # Falcon signature, whose first byte is its header.
    if offset < 8 or 72 <= offset <= 80:
        return MalformedData
    return InvalidSignature


def _verify_envelope(key: VerifyKey, envelope: bytes, message: bytes) -> None:
    key.verify(Signature.from_bytes(envelope), message)


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@SIGNING
@given(message=st.binary(max_size=2048))
def test_sign_verify_round_trip(algorithm: SignatureAlgorithm, message: bytes) -> None:
    key = signing_keys(algorithm)[0]
    signature = key.sign(message)
    assert signature.algorithm is algorithm
    key.public_key().verify(signature, message)
    key.public_key().verify(Signature.from_bytes(signature.to_bytes()), message)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_serialized_sizes_and_envelopes(algorithm: SignatureAlgorithm) -> None:
    key = signing_keys(algorithm)[0]
    public, signature = sample(algorithm)
    assert len(public.raw) == PUBLIC_SIZES[algorithm]
    assert encoding.decode(public.to_bytes(), Kind.SIGNING_PUBLIC_KEY) == (algorithm, public.raw)
    algorithm_id, body = encoding.decode(key.to_bytes(), Kind.SIGNING_PRIVATE_KEY)
    assert algorithm_id == algorithm
    assert len(body) == PRIVATE_SIZES[algorithm]
    assert encoding.decode(signature.to_bytes(), Kind.SIGNATURE) == (algorithm, signature.raw)
    assert public.key_id == hashlib.sha256(public.to_bytes()).digest()
    assert len(public.key_id) == 32


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_key_and_signature_bytes_round_trip(algorithm: SignatureAlgorithm) -> None:
    key = signing_keys(algorithm)[0]
    public, signature = sample(algorithm)
    assert VerifyKey.from_bytes(public.to_bytes()) == public
    assert VerifyKey.from_raw(algorithm, public.raw) == public
    assert Signature.from_bytes(signature.to_bytes()) == signature
    reloaded = SigningKey.from_bytes(key.to_bytes())
    assert reloaded.algorithm is algorithm
    assert reloaded.public_key() == public
    assert reloaded.to_bytes() == key.to_bytes()
    public.verify(reloaded.sign(b"after reload"), b"after reload")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@CHEAP
@given(data=st.binary(min_size=0, max_size=64))
def test_bytes_like_inputs_are_copied_to_bytes(algorithm: SignatureAlgorithm, data: bytes) -> None:
    public, _ = sample(algorithm)
    key = VerifyKey(algorithm, bytearray(public.raw))
    assert isinstance(key.raw, bytes)
    assert key == public
    assert hash(key) == hash(public)
    # Messages may be any bytes-like object too (verification of a wrong message still fails).
    with pytest.raises(InvalidSignature):
        public.verify(sample(algorithm)[1], memoryview(data + b"\xff" + MESSAGE))


# --- tampering --------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@CHEAP
@given(data=st.data(), mask=st.integers(min_value=1, max_value=255))
def test_any_changed_message_byte_is_invalid(
    algorithm: SignatureAlgorithm, data: st.DataObject, mask: int
) -> None:
    public, signature = sample(algorithm)
    position = data.draw(st.integers(min_value=0, max_value=len(MESSAGE) - 1))
    with pytest.raises(InvalidSignature):
        public.verify(signature, _xor_byte(MESSAGE, position, mask))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=300, deadline=None)
@given(data=st.data(), mask=st.integers(min_value=1, max_value=255))
def test_any_changed_signature_byte_fails_as_documented(
    algorithm: SignatureAlgorithm, data: st.DataObject, mask: int
) -> None:
    public, signature = sample(algorithm)
    envelope = signature.to_bytes()
    position = data.draw(st.integers(min_value=0, max_value=len(envelope) - 1))
    tampered = _xor_byte(envelope, position, mask)
    expected = expected_signature_tamper_error(algorithm, signature.raw, tampered, position)
    with pytest.raises(expected) as caught:
        _verify_envelope(public, tampered, MESSAGE)
    # MalformedData is the parent of InvalidKey; parsing a signature never raises InvalidKey.
    assert not isinstance(caught.value, InvalidKey)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_signature_byte_is_covered(algorithm: SignatureAlgorithm) -> None:
    """Deterministic sweep: every value of each envelope header byte, then the lowest and the
    highest bit of each body byte."""
    public, signature = sample(algorithm)
    envelope = signature.to_bytes()
    changes = [(position, mask) for position in range(8) for mask in range(1, 256)]
    changes += [(position, mask) for position in range(8, len(envelope)) for mask in (1, 0x80)]
    for position, mask in changes:
        tampered = _xor_byte(envelope, position, mask)
        expected = expected_signature_tamper_error(algorithm, signature.raw, tampered, position)
        with pytest.raises(expected):
            _verify_envelope(public, tampered, MESSAGE)


def test_algorithm_id_change_to_a_same_shaped_algorithm_is_a_mismatch() -> None:
    """A valid-shaped body under another known id parses, then is refused by the key."""
    public, signature = sample(ED25519)
    disguised = Signature(FALCON, b"\x3a" + signature.raw[1:])  # 64 bytes fit Falcon's shape
    with pytest.raises(AlgorithmMismatch):
        public.verify(disguised, MESSAGE)


# --- truncation and trailing bytes ------------------------------------------------------------


def _serialized(algorithm: SignatureAlgorithm) -> dict[Kind, bytes]:
    public, signature = sample(algorithm)
    return {
        Kind.SIGNING_PUBLIC_KEY: public.to_bytes(),
        Kind.SIGNING_PRIVATE_KEY: signing_keys(algorithm)[0].to_bytes(),
        Kind.SIGNATURE: signature.to_bytes(),
    }


_PARSERS = {
    Kind.SIGNING_PUBLIC_KEY: VerifyKey.from_bytes,
    Kind.SIGNING_PRIVATE_KEY: SigningKey.from_bytes,
    Kind.SIGNATURE: Signature.from_bytes,
}


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name.lower())
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@CHEAP
@given(data=st.data())
def test_truncated_envelope_is_malformed(
    algorithm: SignatureAlgorithm, kind: Kind, data: st.DataObject
) -> None:
    serialized = _serialized(algorithm)[kind]
    cut = data.draw(st.integers(min_value=0, max_value=len(serialized) - 1))
    with pytest.raises(MalformedData, match="truncated"):
        _PARSERS[kind](serialized[:cut])


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name.lower())
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@CHEAP
@given(extra=st.binary(min_size=1, max_size=64))
def test_trailing_bytes_after_envelope_are_malformed(
    algorithm: SignatureAlgorithm, kind: Kind, extra: bytes
) -> None:
    serialized = _serialized(algorithm)[kind]
    with pytest.raises(MalformedData, match="trailing"):
        _PARSERS[kind](serialized + extra)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@CHEAP
@given(data=st.data())
def test_truncated_raw_signature(algorithm: SignatureAlgorithm, data: st.DataObject) -> None:
    """Fixed-size signatures and hybrids are malformed when cut; Falcon-1024 signatures have a
    variable length, so a cut one that is still long enough parses and fails to verify."""
    public, signature = sample(algorithm)
    cut = data.draw(st.integers(min_value=0, max_value=len(signature.raw) - 1))
    raw = signature.raw[:cut]
    if algorithm is FALCON and cut >= 42:
        with pytest.raises(InvalidSignature):
            public.verify(Signature(algorithm, raw), MESSAGE)
    else:
        with pytest.raises(MalformedData):
            Signature(algorithm, raw)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@CHEAP
@given(extra=st.binary(min_size=1, max_size=300))
def test_raw_signature_with_trailing_bytes(algorithm: SignatureAlgorithm, extra: bytes) -> None:
    public, signature = sample(algorithm)
    raw = signature.raw + extra
    if algorithm is FALCON and len(raw) <= 1462:
        with pytest.raises(InvalidSignature):
            public.verify(Signature(algorithm, raw), MESSAGE)
    else:
        with pytest.raises(MalformedData):
            Signature(algorithm, raw)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_raw_public_key_of_wrong_size_is_invalid_key(algorithm: SignatureAlgorithm) -> None:
    public, _ = sample(algorithm)
    for raw in (public.raw[:-1], public.raw + b"\x00", b""):
        with pytest.raises(InvalidKey):
            VerifyKey.from_raw(algorithm, raw)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_private_key_body_of_wrong_size_is_invalid_key(algorithm: SignatureAlgorithm) -> None:
    _, body = encoding.decode(signing_keys(algorithm)[0].to_bytes(), Kind.SIGNING_PRIVATE_KEY)
    for changed in (body[:-1], body + b"\x00"):
        with pytest.raises(InvalidKey):
            SigningKey.from_bytes(encoding.encode(Kind.SIGNING_PRIVATE_KEY, algorithm, changed))


# --- envelope header: version, kind, algorithm id ---------------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name.lower())
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@CHEAP
@given(version=st.integers(min_value=0, max_value=255).filter(lambda v: v != 1))
def test_wrong_format_version_is_malformed(
    algorithm: SignatureAlgorithm, kind: Kind, version: int
) -> None:
    serialized = bytearray(_serialized(algorithm)[kind])
    serialized[0] = version
    with pytest.raises(MalformedData, match="version"):
        _PARSERS[kind](bytes(serialized))


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name.lower())
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@CHEAP
@given(other_kind=st.integers(min_value=0, max_value=255))
def test_wrong_kind_is_malformed(
    algorithm: SignatureAlgorithm, kind: Kind, other_kind: int
) -> None:
    if other_kind == kind:
        other_kind = (other_kind + 1) % 256
    serialized = bytearray(_serialized(algorithm)[kind])
    serialized[1] = other_kind
    with pytest.raises(MalformedData, match="expected"):
        _PARSERS[kind](bytes(serialized))


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name.lower())
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@CHEAP
@given(
    algorithm_id=st.one_of(
        st.integers(min_value=0, max_value=0xFFFF),
        st.sampled_from([int(a) for a in KemAlgorithm]),
    ).filter(lambda i: i not in {int(a) for a in SignatureAlgorithm})
)
def test_unknown_algorithm_id_is_unknown_algorithm(
    algorithm: SignatureAlgorithm, kind: Kind, algorithm_id: int
) -> None:
    serialized = bytearray(_serialized(algorithm)[kind])
    serialized[2:4] = algorithm_id.to_bytes(2, "big")
    with pytest.raises(UnknownAlgorithm):
        _PARSERS[kind](bytes(serialized))


def test_kem_algorithm_is_not_a_signature_algorithm() -> None:
    with pytest.raises(UnknownAlgorithm):
        VerifyKey.from_raw(KemAlgorithm.X25519, bytes(32))  # type: ignore[arg-type]
    with pytest.raises(UnknownAlgorithm):
        SigningKey.generate(KemAlgorithm.X25519)  # type: ignore[arg-type]


# --- wrong keys and algorithm mismatches ------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@SIGNING
@given(message=st.binary(max_size=256))
def test_signature_from_another_key_is_invalid(
    algorithm: SignatureAlgorithm, message: bytes
) -> None:
    signer, other = signing_keys(algorithm)
    with pytest.raises(InvalidSignature):
        other.public_key().verify(signer.sign(message), message)


@pytest.mark.parametrize(
    ("key_algorithm", "signature_algorithm"),
    [
        (HYBRID, ED25519),
        (HYBRID, FALCON),
        (ED25519, HYBRID),
        (FALCON, HYBRID),
        (ED25519, FALCON),
        (FALCON, ED25519),
        pytest.param(FALCON, FN_DSA, marks=requires_fn_dsa),
        pytest.param(FN_DSA, FALCON, marks=requires_fn_dsa),
        pytest.param(HYBRID, FN_DSA, marks=requires_fn_dsa),
    ],
)
def test_signature_of_another_algorithm_is_a_mismatch(
    key_algorithm: SignatureAlgorithm, signature_algorithm: SignatureAlgorithm
) -> None:
    public, _ = sample(key_algorithm)
    _, signature = sample(signature_algorithm)
    with pytest.raises(AlgorithmMismatch):
        public.verify(signature, MESSAGE)


def test_fn_dsa_and_falcon_public_keys_have_the_same_shape_but_distinct_algorithms() -> None:
    falcon_public, _ = sample(FALCON)
    as_fn_dsa = VerifyKey.from_raw(FN_DSA, falcon_public.raw)  # shape only; no backend needed
    assert as_fn_dsa != falcon_public
    assert as_fn_dsa.key_id != falcon_public.key_id


# --- hybrid -----------------------------------------------------------------------------------


def _components(signature: Signature) -> tuple[bytes, bytes]:
    """The Ed25519 and Falcon-1024 component envelopes of a hybrid signature."""
    _, _, end = encoding.decode_prefix(signature.raw, Kind.SIGNATURE)
    return signature.raw[:end], signature.raw[end:]


def _component_bodies(raw: bytes, kind: Kind) -> tuple[bytes, bytes]:
    first_id, first, end = encoding.decode_prefix(raw, kind)
    second_id, second, _ = encoding.decode_prefix(raw, kind, end)
    assert (first_id, second_id) == (ED25519, FALCON)
    return first, second


@SIGNING
@given(message=st.binary(max_size=256), other_message=st.binary(max_size=256))
def test_hybrid_with_one_swapped_component_is_invalid(message: bytes, other_message: bytes) -> None:
    if other_message == message:
        other_message += b"\x00"
    key = signing_keys(HYBRID)[0]
    ed_good, falcon_good = _components(key.sign(message))
    ed_other, falcon_other = _components(key.sign(other_message))
    key.public_key().verify(Signature(HYBRID, ed_good + falcon_good), message)
    with pytest.raises(InvalidSignature, match="falcon-1024 component"):
        key.public_key().verify(Signature(HYBRID, ed_good + falcon_other), message)
    with pytest.raises(InvalidSignature, match="ed25519 component"):
        key.public_key().verify(Signature(HYBRID, ed_other + falcon_good), message)


def test_hybrid_with_components_from_different_keys_is_invalid() -> None:
    key, other = signing_keys(HYBRID)
    ed_key, falcon_key = _components(key.sign(MESSAGE))
    ed_other, falcon_other = _components(other.sign(MESSAGE))
    for mixed in (ed_key + falcon_other, ed_other + falcon_key):
        with pytest.raises(InvalidSignature):
            key.public_key().verify(Signature(HYBRID, mixed), MESSAGE)
    with pytest.raises(InvalidSignature, match="neither the ed25519 nor the falcon-1024"):
        key.public_key().verify(Signature(HYBRID, ed_other + falcon_other), MESSAGE)


def test_hybrid_components_in_the_wrong_order_are_malformed() -> None:
    _, signature = sample(HYBRID)
    ed_component, falcon_component = _components(signature)
    with pytest.raises(MalformedData, match="component 1 must be ed25519"):
        Signature(HYBRID, falcon_component + ed_component)
    with pytest.raises(MalformedData, match="component 2 must be falcon-1024"):
        Signature(HYBRID, ed_component + ed_component)
    with pytest.raises(MalformedData, match="trailing"):
        Signature(HYBRID, ed_component + falcon_component + ed_component)


@SIGNING
@given(message=st.binary(max_size=512))
def test_stripped_hybrid_component_is_not_a_standalone_signature(message: bytes) -> None:
    key = signing_keys(HYBRID)[0]
    signature = key.sign(message)
    ed_public, falcon_public = _component_bodies(key.public_key().raw, Kind.SIGNING_PUBLIC_KEY)
    ed_signature, falcon_signature = _component_bodies(signature.raw, Kind.SIGNATURE)
    falcon_alone = VerifyKey.from_raw(FALCON, falcon_public)
    ed_alone = VerifyKey.from_raw(ED25519, ed_public)
    with pytest.raises(InvalidSignature):
        falcon_alone.verify(Signature(FALCON, falcon_signature), message)
    with pytest.raises(InvalidSignature):
        ed_alone.verify(Signature(ED25519, ed_signature), message)
    # Control: the components are genuine signatures of the domain-separated representative.
    falcon_alone.verify(Signature(FALCON, falcon_signature), HYBRID_DOMAIN + message)
    ed_alone.verify(Signature(ED25519, ed_signature), HYBRID_DOMAIN + message)


def test_hybrid_domain_names_the_algorithm_and_version() -> None:
    assert HYBRID_DOMAIN == b"TrustChain hybrid signature v1\x00hybrid-ed25519-falcon-1024\x00"


def test_hybrid_private_key_holds_component_private_envelopes() -> None:
    key = signing_keys(HYBRID)[0]
    _, body = encoding.decode(key.to_bytes(), Kind.SIGNING_PRIVATE_KEY)
    ed_body, falcon_body = _component_bodies(body, Kind.SIGNING_PRIVATE_KEY)
    ed_key = SigningKey.from_bytes(encoding.encode(Kind.SIGNING_PRIVATE_KEY, ED25519, ed_body))
    falcon_key = SigningKey.from_bytes(
        encoding.encode(Kind.SIGNING_PRIVATE_KEY, FALCON, falcon_body)
    )
    ed_public, falcon_public = _component_bodies(key.public_key().raw, Kind.SIGNING_PUBLIC_KEY)
    assert ed_key.public_key().raw == ed_public
    assert falcon_key.public_key().raw == falcon_public
    assert falcon_body[2305:] == falcon_public


# --- private keys -----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_signing_key_repr_does_not_leak_the_secret(algorithm: SignatureAlgorithm) -> None:
    key = signing_keys(algorithm)[0]
    secret_hex = key.to_bytes().hex()
    text = repr(key) + str(key)
    assert algorithm.label in text
    assert key.public_key().key_id.hex()[:16] in text
    assert not any(secret_hex[i : i + 16] in text for i in range(0, len(secret_hex) - 16, 2))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_signing_key_is_immutable(algorithm: SignatureAlgorithm) -> None:
    key = signing_keys(algorithm)[0]
    with pytest.raises(AttributeError):
        key.algorithm = ED25519  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del key.algorithm
    assert key.algorithm is algorithm


def _private_body(algorithm: SignatureAlgorithm) -> bytes:
    return encoding.decode(signing_keys(algorithm)[0].to_bytes(), Kind.SIGNING_PRIVATE_KEY)[1]


@pytest.mark.parametrize(
    "algorithm",
    [
        pytest.param(FALCON, id="falcon-1024"),
        pytest.param(FN_DSA, id="fn-dsa-1024", marks=requires_fn_dsa),
    ],
)
@LOADING
@given(data=st.data(), mask=st.integers(min_value=1, max_value=255))
def test_changed_lattice_private_key_byte_is_invalid_key(
    algorithm: SignatureAlgorithm, data: st.DataObject, mask: int
) -> None:
    """Any changed byte of sk || pk is caught when the key is loaded (never a hang)."""
    body = _private_body(algorithm)
    position = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    changed = encoding.encode(Kind.SIGNING_PRIVATE_KEY, algorithm, _xor_byte(body, position, mask))
    with pytest.raises(InvalidKey):
        SigningKey.from_bytes(changed)


@pytest.mark.parametrize(
    ("algorithm", "secret_size"),
    [
        pytest.param(FALCON, 2305, id="falcon-1024"),
        pytest.param(FN_DSA, 2369, id="fn-dsa-1024", marks=requires_fn_dsa),
    ],
)
@pytest.mark.parametrize("filler", [b"\xff", b"\x00", b"\x11"], ids=["ff", "00", "11"])
def test_well_formed_but_bogus_secret_key_is_refused_before_signing(
    algorithm: SignatureAlgorithm, secret_size: int, filler: bytes
) -> None:
    """PQClean and c-fn-dsa never return when signing with 0x5A || 0xFF...; we refuse to load."""
    public, _ = sample(algorithm)
    secret = b"\x5a" + filler * (secret_size - 1)
    if algorithm is FN_DSA:  # keep the embedded public-key hash right, to reach the lattice check
        secret = secret[:-64] + hashlib.shake_256(public.raw).digest(64)
    bogus = encoding.encode(Kind.SIGNING_PRIVATE_KEY, algorithm, secret + public.raw)
    with pytest.raises(InvalidKey):
        SigningKey.from_bytes(bogus)


def test_falcon_private_key_with_another_public_key_is_invalid() -> None:
    first = _private_body(FALCON)
    second = encoding.decode(signing_keys(FALCON)[1].to_bytes(), Kind.SIGNING_PRIVATE_KEY)[1]
    mixed = first[:2305] + second[2305:]
    with pytest.raises(InvalidKey, match="does not belong"):
        SigningKey.from_bytes(encoding.encode(Kind.SIGNING_PRIVATE_KEY, FALCON, mixed))


@requires_fn_dsa
def test_fn_dsa_private_key_with_another_public_key_is_invalid() -> None:
    first = _private_body(FN_DSA)
    second = encoding.decode(signing_keys(FN_DSA)[1].to_bytes(), Kind.SIGNING_PRIVATE_KEY)[1]
    with pytest.raises(InvalidKey, match="hash"):
        SigningKey.from_bytes(
            encoding.encode(Kind.SIGNING_PRIVATE_KEY, FN_DSA, first[:2369] + second[2369:])
        )


def test_hybrid_private_key_with_malformed_components_is_invalid_key() -> None:
    body = _private_body(HYBRID)
    ed_envelope = body[:40]
    falcon_envelope = body[40:]
    for changed in (falcon_envelope + ed_envelope, ed_envelope, ed_envelope + ed_envelope):
        with pytest.raises(InvalidKey, match="hybrid"):
            SigningKey.from_bytes(encoding.encode(Kind.SIGNING_PRIVATE_KEY, HYBRID, changed))


# --- FN-DSA without py-fn-dsa -----------------------------------------------------------------


def test_fn_dsa_without_py_fn_dsa_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    fndsa._module.cache_clear()
    monkeypatch.setitem(sys.modules, "py_fn_dsa", None)  # makes the import fail
    try:
        assert not fndsa.available()
        with pytest.raises(BackendUnavailable, match="py-fn-dsa"):
            SigningKey.generate(FN_DSA)
        # Shapes are checked without the package; verification needs it.
        key = VerifyKey.from_raw(FN_DSA, b"\x0a" + bytes(1792))
        signature = Signature(FN_DSA, b"\x3a" + bytes(1279))
        with pytest.raises(BackendUnavailable):
            key.verify(signature, MESSAGE)
    finally:
        fndsa._module.cache_clear()


# --- Falcon backends --------------------------------------------------------------------------


def test_pqclean_is_the_default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(falcon.BACKEND_ENV, raising=False)
    assert falcon.available_backends()[0] == "pqclean"
    assert falcon.get_backend().name == "pqclean"
    assert falcon.get_backend(None).name == "pqclean"
    monkeypatch.setenv(falcon.BACKEND_ENV, "pqclean")
    assert falcon.get_backend().name == "pqclean"


def test_unknown_backend_name_is_unknown_algorithm(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UnknownAlgorithm, match="nope"):
        falcon.get_backend("nope")
    with pytest.raises(UnknownAlgorithm):
        SigningKey.generate(FALCON, falcon_backend="nope")
    monkeypatch.setenv(falcon.BACKEND_ENV, "also-nope")
    with pytest.raises(UnknownAlgorithm, match="also-nope"):
        falcon.get_backend()


def test_backend_rejects_bad_sizes_before_calling_c() -> None:
    backend = falcon.get_backend("pqclean")
    public, signature = sample(FALCON)
    with pytest.raises(InvalidKey):
        backend.verify(public.raw[:-1], MESSAGE, signature.raw)
    with pytest.raises(MalformedData):
        backend.verify(public.raw, MESSAGE, signature.raw + bytes(1462))  # pqcrypto: ValueError
    with pytest.raises(MalformedData):
        backend.verify(public.raw, MESSAGE, b"")
    with pytest.raises(InvalidKey):
        backend.sign(b"\x5a" + bytes(2303), MESSAGE)
    with pytest.raises(InvalidKey):
        backend.sign(b"\x5b" + bytes(2304), MESSAGE)
    assert backend.verify(public.raw, MESSAGE, signature.raw) is True
    assert backend.verify(public.raw, MESSAGE + b"!", signature.raw) is False


def test_pqclean_sign_error_is_invalid_key() -> None:
    # Header right, all-zero f: PQClean's signer reports an error (it cannot complete the key).
    with pytest.raises(InvalidKey, match="cannot sign"):
        falcon.get_backend("pqclean").sign(b"\x5a" + bytes(2304), MESSAGE)


def _oqs_library_absent_reason() -> str | None:
    reason = falcon.liboqs_unavailable_reason()
    return None if reason is None else f"liboqs backend unavailable: {reason}"


def test_liboqs_probe_with_empty_install_path_finds_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OQS_INSTALL_PATH", str(tmp_path))
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.delitem(sys.modules, "oqs", raising=False)
    assert falcon.find_liboqs() is None
    assert "liboqs" not in falcon.available_backends()
    with pytest.raises(BackendUnavailable):
        falcon.get_backend("liboqs")
    monkeypatch.setenv(falcon.BACKEND_ENV, "liboqs")
    with pytest.raises(BackendUnavailable):
        SigningKey.generate(FALCON)
    assert "oqs" not in sys.modules


def test_liboqs_probe_looks_where_liboqs_python_looks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.setenv("OQS_INSTALL_PATH", str(tmp_path))
    assert falcon.liboqs_search_paths()[0].parent == tmp_path / "lib"
    # A file of the right name that is not a loadable library does not count.
    target = falcon.liboqs_search_paths()[1]  # <install>/lib64/liboqs.so
    target.parent.mkdir()
    target.write_bytes(b"not a shared library")
    assert falcon.find_liboqs() is None
    # A loadable shared object there does (any one will do for the probe).
    extension = importlib.util.find_spec("pqcrypto._sign.falcon_1024")
    assert extension is not None
    assert extension.origin is not None
    shutil.copyfile(extension.origin, target)
    assert falcon.find_liboqs() == str(target)
    monkeypatch.delenv("OQS_INSTALL_PATH")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert falcon.liboqs_search_paths()[0] == tmp_path / "home" / "_oqs" / "lib" / "liboqs.so"


def test_liboqs_probe_never_imports_oqs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OQS_INSTALL_PATH", str(tmp_path))
    monkeypatch.delitem(sys.modules, "oqs", raising=False)
    falcon.available_backends()
    falcon.find_liboqs()
    if _oqs_library_absent_reason() is not None:
        with pytest.raises(BackendUnavailable):
            falcon.get_backend("liboqs")
    assert "oqs" not in sys.modules


@pytest.mark.skipif(
    _oqs_library_absent_reason() is not None, reason=str(_oqs_library_absent_reason())
)
def test_liboqs_backend_interoperates_with_pqclean() -> None:
    liboqs, pqclean = falcon.get_backend("liboqs"), falcon.get_backend("pqclean")
    key = SigningKey.generate(FALCON, falcon_backend="liboqs")
    signature = key.sign(MESSAGE)
    assert pqclean.verify(key.public_key().raw, MESSAGE, signature.raw)
    other = SigningKey.generate(FALCON, falcon_backend="pqclean")
    assert liboqs.verify(other.public_key().raw, MESSAGE, other.sign(MESSAGE).raw)
    reloaded = SigningKey.from_bytes(other.to_bytes(), falcon_backend="liboqs")
    other.public_key().verify(reloaded.sign(b"via liboqs"), b"via liboqs")


# --- hybrid component keys (SigningKey.components / VerifyKey.components) --------------------


def test_hybrid_components_are_the_stand_alone_keys() -> None:
    key = signing_keys(HYBRID)[0]
    ed25519_key, falcon_key = key.components()
    assert (ed25519_key.algorithm, falcon_key.algorithm) == (ED25519, FALCON)
    ed25519_public, falcon_public = key.public_key().components()
    assert ed25519_key.public_key() == ed25519_public
    assert falcon_key.public_key() == falcon_public
    # The hybrid body is exactly the two component envelopes.
    assert key.public_key().raw == ed25519_public.to_bytes() + falcon_public.to_bytes()
    _, private_body = encoding.decode(key.to_bytes(), Kind.SIGNING_PRIVATE_KEY)
    assert private_body == ed25519_key.to_bytes() + falcon_key.to_bytes()


@SIGNING
@given(message=st.binary(max_size=256))
def test_hybrid_components_sign_the_message_as_is(message: bytes) -> None:
    key = signing_keys(HYBRID)[0]
    ed25519_public, falcon_public = key.public_key().components()
    for component, public in zip(key.components(), (ed25519_public, falcon_public), strict=True):
        signature = component.sign(message)
        public.verify(signature, message)
        # No HYBRID_DOMAIN: the component signature is not one over the hybrid representative.
        with pytest.raises(InvalidSignature):
            public.verify(signature, HYBRID_DOMAIN + message)
    # Component signatures put together are not a hybrid signature of the message.
    ed25519_key, falcon_key = key.components()
    glued = Signature(
        HYBRID, ed25519_key.sign(message).to_bytes() + falcon_key.sign(message).to_bytes()
    )
    with pytest.raises(InvalidSignature, match="neither"):
        key.public_key().verify(glued, message)


def test_hybrid_from_components_round_trips() -> None:
    key = signing_keys(HYBRID)[0]
    rebuilt = SigningKey.from_components(*key.components())
    assert rebuilt.algorithm is HYBRID
    assert rebuilt.to_bytes() == key.to_bytes()
    assert rebuilt.public_key() == key.public_key()
    key.public_key().verify(rebuilt.sign(MESSAGE), MESSAGE)
    assert VerifyKey.from_components(*key.public_key().components()) == key.public_key()


def test_hybrid_from_components_of_different_keys() -> None:
    first, second = signing_keys(HYBRID)
    mixed = SigningKey.from_components(first.components()[0], second.components()[1])
    public = VerifyKey.from_components(
        first.public_key().components()[0], second.public_key().components()[1]
    )
    assert mixed.public_key() == public
    public.verify(mixed.sign(MESSAGE), MESSAGE)
    with pytest.raises(InvalidSignature, match="falcon-1024 component"):
        public.verify(first.sign(MESSAGE), MESSAGE)


@pytest.mark.parametrize("algorithm", [ED25519, FALCON])
def test_components_of_a_single_algorithm_key(algorithm: SignatureAlgorithm) -> None:
    key = signing_keys(algorithm)[0]
    with pytest.raises(AlgorithmMismatch, match="no components"):
        key.components()
    with pytest.raises(AlgorithmMismatch, match="no components"):
        key.public_key().components()


def test_from_components_checks_algorithms_and_order() -> None:
    ed25519_key, falcon_key = signing_keys(HYBRID)[0].components()
    ed25519_public, falcon_public = ed25519_key.public_key(), falcon_key.public_key()
    hybrid_key = signing_keys(HYBRID)[1]
    for first, second in [
        (falcon_key, ed25519_key),
        (ed25519_key, ed25519_key),
        (hybrid_key, falcon_key),
    ]:
        with pytest.raises(AlgorithmMismatch, match="hybrid component"):
            SigningKey.from_components(first, second)
    for first_public, second_public in [
        (falcon_public, ed25519_public),
        (ed25519_public, hybrid_key.public_key()),
    ]:
        with pytest.raises(AlgorithmMismatch, match="hybrid component"):
            VerifyKey.from_components(first_public, second_public)
