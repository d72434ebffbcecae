"""AeadKey (AES-256-GCM, ChaCha20-Poly1305) and HKDF-SHA256 (RFC 5869)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from trustchain.crypto.aead import AeadKey, hkdf, hkdf_expand, hkdf_extract
from trustchain.crypto.algorithms import AeadAlgorithm
from trustchain.errors import DecryptionFailed, InvalidKey, MalformedData, UnknownAlgorithm

ALGORITHMS = list(AeadAlgorithm)
NONCE = bytes(range(12))


@pytest.fixture(scope="module", params=ALGORITHMS, ids=lambda a: a.label)
def key(request: pytest.FixtureRequest) -> AeadKey:
    algorithm: AeadAlgorithm = request.param
    return AeadKey.generate(algorithm)


# --- RFC 5869 Appendix A, test cases 1-3 (SHA-256) --------------------------------------------

RFC5869 = [
    pytest.param(
        "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
        "000102030405060708090a0b0c",
        "f0f1f2f3f4f5f6f7f8f9",
        42,
        "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
        id="A.1",
    ),
    pytest.param(
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
        "404142434445464748494a4b4c4d4e4f",
        "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
        "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",
        "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf"
        "d0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeef"
        "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
        82,
        "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
        id="A.2",
    ),
    pytest.param(
        "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
        "",
        "",
        42,
        "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
        id="A.3",
    ),
]


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "prk", "okm"), RFC5869)
def test_hkdf_rfc5869(ikm: str, salt: str, info: str, length: int, prk: str, okm: str) -> None:
    ikm_b, salt_b, info_b = bytes.fromhex(ikm), bytes.fromhex(salt), bytes.fromhex(info)
    assert hkdf_extract(salt_b, ikm_b) == bytes.fromhex(prk)
    assert hkdf_expand(bytes.fromhex(prk), info_b, length) == bytes.fromhex(okm)
    assert hkdf(ikm_b, salt=salt_b, info=info_b, length=length) == bytes.fromhex(okm)


@settings(max_examples=60, deadline=None)
@given(
    ikm=st.binary(max_size=80),
    salt=st.binary(max_size=80),
    info=st.binary(max_size=80),
    length=st.integers(min_value=1, max_value=600),
)
def test_hkdf_matches_cryptography(ikm: bytes, salt: bytes, info: bytes, length: int) -> None:
    reference = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info)
    assert hkdf(ikm, salt=salt, info=info, length=length) == reference.derive(ikm)


def test_hkdf_length_limits() -> None:
    prk = hkdf_extract(b"", b"ikm")
    assert len(hkdf_expand(prk, b"", 255 * 32)) == 255 * 32
    with pytest.raises(MalformedData):
        hkdf_expand(prk, b"", 255 * 32 + 1)
    with pytest.raises(MalformedData):
        hkdf_expand(prk, b"", 0)
    with pytest.raises(InvalidKey):
        hkdf_expand(b"\x01" * 31, b"", 32)


# --- AeadKey ----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(plaintext=st.binary(max_size=512), associated_data=st.binary(max_size=64))
def test_round_trip(key: AeadKey, plaintext: bytes, associated_data: bytes) -> None:
    ciphertext = key.encrypt(NONCE, plaintext, associated_data)
    assert len(ciphertext) == len(plaintext) + AeadKey.TAG_SIZE
    assert key.decrypt(NONCE, ciphertext, associated_data) == plaintext


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_tampering_any_byte_fails(key: AeadKey, data: st.DataObject) -> None:
    plaintext = data.draw(st.binary(max_size=64))
    ciphertext = key.encrypt(NONCE, plaintext, b"header")
    position = data.draw(st.integers(min_value=0, max_value=len(ciphertext) - 1))
    flip = data.draw(st.integers(min_value=1, max_value=255))
    tampered = bytearray(ciphertext)
    tampered[position] ^= flip
    with pytest.raises(DecryptionFailed):
        key.decrypt(NONCE, bytes(tampered), b"header")


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_tampering_associated_data_fails(key: AeadKey, data: st.DataObject) -> None:
    associated_data = data.draw(st.binary(min_size=1, max_size=32))
    ciphertext = key.encrypt(NONCE, b"secret", associated_data)
    position = data.draw(st.integers(min_value=0, max_value=len(associated_data) - 1))
    changed = bytearray(associated_data)
    changed[position] ^= data.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises(DecryptionFailed):
        key.decrypt(NONCE, ciphertext, bytes(changed))
    with pytest.raises(DecryptionFailed):
        key.decrypt(NONCE, ciphertext, associated_data + b"\x00")
    with pytest.raises(DecryptionFailed):
        key.decrypt(NONCE, ciphertext, associated_data[:-1])


def test_wrong_nonce_or_key_fails(key: AeadKey) -> None:
    ciphertext = key.encrypt(NONCE, b"message")
    with pytest.raises(DecryptionFailed):
        key.decrypt(bytes(12), ciphertext)
    with pytest.raises(DecryptionFailed):
        AeadKey.generate(key.algorithm).decrypt(NONCE, ciphertext)


def test_other_algorithm_same_key_fails(key: AeadKey) -> None:
    other = next(a for a in AeadAlgorithm if a is not key.algorithm)
    ciphertext = key.encrypt(NONCE, b"message")
    with pytest.raises(DecryptionFailed):
        AeadKey(other, key.key).decrypt(NONCE, ciphertext)


@pytest.mark.parametrize("size", [0, 8, 11, 13, 16, 24])
def test_wrong_nonce_size(key: AeadKey, size: int) -> None:
    with pytest.raises(MalformedData):
        key.encrypt(bytes(size), b"message")
    ciphertext = key.encrypt(NONCE, b"message")
    with pytest.raises(MalformedData):
        key.decrypt(bytes(size), ciphertext)


@pytest.mark.parametrize("size", [0, 1, 15])
def test_shorter_than_tag_is_malformed(key: AeadKey, size: int) -> None:
    with pytest.raises(MalformedData):
        key.decrypt(NONCE, bytes(size))


def test_truncated_or_extended_ciphertext_fails(key: AeadKey) -> None:
    ciphertext = key.encrypt(NONCE, b"a message of some length")
    with pytest.raises(DecryptionFailed):
        key.decrypt(NONCE, ciphertext[:-1])
    with pytest.raises(DecryptionFailed):
        key.decrypt(NONCE, ciphertext + b"\x00")


@pytest.mark.parametrize("size", [0, 16, 24, 31, 33, 64])
@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.label)
def test_wrong_key_size(algorithm: AeadAlgorithm, size: int) -> None:
    with pytest.raises(InvalidKey):
        AeadKey(algorithm, bytes(size))


def test_unknown_algorithm() -> None:
    with pytest.raises(UnknownAlgorithm):
        AeadKey(0x0201, bytes(32))  # type: ignore[arg-type]  # a KEM id, not an AEAD id


def test_repr_hides_key() -> None:
    key = AeadKey(AeadAlgorithm.CHACHA20_POLY1305, bytes.fromhex("ab" * 32))
    text = repr(key)
    assert "ab" * 4 not in text
    assert "AB" * 4 not in text
    assert "chacha20-poly1305" in text
    assert str(key) == text


def test_equality_and_immutability() -> None:
    material = bytes(range(32))
    a = AeadKey(AeadAlgorithm.AES_256_GCM, material)
    assert a == AeadKey(AeadAlgorithm.AES_256_GCM, material)
    assert hash(a) == hash(AeadKey(AeadAlgorithm.AES_256_GCM, material))
    assert a != AeadKey(AeadAlgorithm.CHACHA20_POLY1305, material)
    assert a != AeadKey(AeadAlgorithm.AES_256_GCM, bytes(32))
    with pytest.raises(AttributeError):
        a.key = bytes(32)  # type: ignore[misc]


def test_generate_is_random() -> None:
    assert AeadKey.generate().key != AeadKey.generate().key
    assert AeadKey.generate().algorithm is AeadAlgorithm.AES_256_GCM
