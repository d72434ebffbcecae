"""Sealed boxes: seal / open_sealed / recipient_key_id."""

from __future__ import annotations

import hashlib
import itertools
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from trustchain.crypto import encoding
from trustchain.crypto.algorithms import AeadAlgorithm, KemAlgorithm
from trustchain.crypto.encoding import Kind
from trustchain.crypto.kem import KemCiphertext, KemPrivateKey
from trustchain.crypto.sealed_box import open_sealed, recipient_key_id, seal
from trustchain.errors import DecryptionFailed, MalformedData, UnknownAlgorithm

KEMS = list(KemAlgorithm)
AEADS = list(AeadAlgorithm)
HEADER = encoding.HEADER.size
KEM_CT_ENVELOPE = {
    KemAlgorithm.X25519: 8 + 32,
    KemAlgorithm.ML_KEM_1024: 8 + 1568,
    KemAlgorithm.HYBRID_X25519_ML_KEM_1024: 8 + 8 + 32 + 8 + 1568,
}


@pytest.fixture(scope="module")
def keys() -> dict[KemAlgorithm, tuple[KemPrivateKey, KemPrivateKey]]:
    """Two recipients per KEM algorithm."""
    return {alg: (KemPrivateKey.generate(alg), KemPrivateKey.generate(alg)) for alg in KEMS}


@pytest.fixture(scope="module", params=KEMS, ids=lambda a: a.label)
def recipient(
    request: pytest.FixtureRequest, keys: dict[KemAlgorithm, tuple[KemPrivateKey, KemPrivateKey]]
) -> KemPrivateKey:
    algorithm: KemAlgorithm = request.param
    return keys[algorithm][0]


@pytest.fixture(scope="module")
def boxes(recipient: KemPrivateKey) -> dict[AeadAlgorithm, bytes]:
    return {
        aead: seal(recipient.public_key(), b"attack at dawn", associated_data=b"ctx", aead=aead)
        for aead in AEADS
    }


def _layout(recipient: KemPrivateKey) -> tuple[int, int, int]:
    """Offsets (in the whole box) of the KEM envelope, the AEAD id and the AEAD ciphertext."""
    kem_start = HEADER + 32
    aead_id = kem_start + KEM_CT_ENVELOPE[recipient.algorithm]
    return kem_start, aead_id, aead_id + 2


def _reencode(box: bytes, body: bytes) -> bytes:
    alg_id, _ = encoding.decode(box, Kind.SEALED_BOX)
    return encoding.encode(Kind.SEALED_BOX, alg_id, body)


# --- round trips -------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    plaintext=st.binary(max_size=300),
    associated_data=st.binary(max_size=40),
    aead=st.sampled_from(AEADS),
)
def test_round_trip(
    recipient: KemPrivateKey, plaintext: bytes, associated_data: bytes, aead: AeadAlgorithm
) -> None:
    box = seal(recipient.public_key(), plaintext, associated_data=associated_data, aead=aead)
    assert open_sealed(recipient, box, associated_data=associated_data) == plaintext
    assert recipient_key_id(box) == recipient.public_key().key_id


def test_format(recipient: KemPrivateKey, boxes: dict[AeadAlgorithm, bytes]) -> None:
    for aead, box in boxes.items():
        alg_id, body = encoding.decode(box, Kind.SEALED_BOX)
        assert alg_id == recipient.algorithm
        assert body[:32] == recipient.public_key().key_id
        ct_alg, _, end = encoding.decode_prefix(body, Kind.KEM_CIPHERTEXT, 32)
        assert ct_alg == recipient.algorithm
        assert end == 32 + KEM_CT_ENVELOPE[recipient.algorithm]
        assert struct.unpack_from(">H", body, end) == (aead,)
        assert len(body) - end - 2 == len(b"attack at dawn") + 16


def _reference_hkdf(secret: bytes, info: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, salt=None, info=info).derive(secret)


def test_documented_key_schedule(recipient: KemPrivateKey) -> None:
    """Recompute key, nonce and AAD from the module docstring with independent primitives."""
    for aead in AEADS:
        box = seal(recipient.public_key(), b"documented", associated_data=b"ad", aead=aead)
        _, body = encoding.decode(box, Kind.SEALED_BOX)
        key_id = body[:32]
        _, _, end = encoding.decode_prefix(body, Kind.KEM_CIPHERTEXT, 32)
        kem_envelope = body[32:end]
        secret = recipient.decapsulate(KemCiphertext.from_bytes(kem_envelope))
        context = hashlib.sha256(kem_envelope).digest() + key_id + struct.pack(">H", aead)
        key = _reference_hkdf(secret, b"trustchain/sealed-box/v1/key" + context, 32)
        nonce = _reference_hkdf(secret, b"trustchain/sealed-box/v1/nonce" + context, 12)
        cipher = AESGCM(key) if aead is AeadAlgorithm.AES_256_GCM else ChaCha20Poly1305(key)
        aad = box[: HEADER + end + 2] + b"ad"
        assert cipher.decrypt(nonce, body[end + 2 :], aad) == b"documented"


def test_every_box_is_fresh(recipient: KemPrivateKey) -> None:
    public = recipient.public_key()
    assert seal(public, b"same") != seal(public, b"same")


def test_empty_plaintext(recipient: KemPrivateKey) -> None:
    box = seal(recipient.public_key(), b"")
    assert open_sealed(recipient, box) == b""


def test_unknown_aead_for_seal(recipient: KemPrivateKey) -> None:
    with pytest.raises(UnknownAlgorithm):
        seal(recipient.public_key(), b"x", aead=0x0999)  # type: ignore[arg-type]


# --- wrong recipient, wrong associated data ---------------------------------------------------


def test_wrong_recipient_same_algorithm(
    recipient: KemPrivateKey,
    keys: dict[KemAlgorithm, tuple[KemPrivateKey, KemPrivateKey]],
    boxes: dict[AeadAlgorithm, bytes],
) -> None:
    other = keys[recipient.algorithm][1]
    for box in boxes.values():
        with pytest.raises(DecryptionFailed, match="addressed to key id"):
            open_sealed(other, box, associated_data=b"ctx")


def test_wrong_recipient_other_algorithm(
    recipient: KemPrivateKey,
    keys: dict[KemAlgorithm, tuple[KemPrivateKey, KemPrivateKey]],
    boxes: dict[AeadAlgorithm, bytes],
) -> None:
    for algorithm in KEMS:
        if algorithm is recipient.algorithm:
            continue
        with pytest.raises(DecryptionFailed):
            open_sealed(
                keys[algorithm][0], boxes[AeadAlgorithm.AES_256_GCM], associated_data=b"ctx"
            )


def test_key_id_rewritten_to_other_recipient(
    recipient: KemPrivateKey,
    keys: dict[KemAlgorithm, tuple[KemPrivateKey, KemPrivateKey]],
    boxes: dict[AeadAlgorithm, bytes],
) -> None:
    """Pointing the box at another key passes the id check but not the AEAD."""
    other = keys[recipient.algorithm][1]
    box = boxes[AeadAlgorithm.AES_256_GCM]
    _, body = encoding.decode(box, Kind.SEALED_BOX)
    readdressed = _reencode(box, other.public_key().key_id + body[32:])
    assert recipient_key_id(readdressed) == other.public_key().key_id
    with pytest.raises(DecryptionFailed):
        open_sealed(other, readdressed, associated_data=b"ctx")
    with pytest.raises(DecryptionFailed):
        open_sealed(recipient, readdressed, associated_data=b"ctx")


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_tampered_associated_data(
    recipient: KemPrivateKey, boxes: dict[AeadAlgorithm, bytes], data: st.DataObject
) -> None:
    box = data.draw(st.sampled_from(list(boxes.values())))
    wrong = data.draw(st.binary(max_size=8).filter(lambda ad: ad != b"ctx"))
    with pytest.raises(DecryptionFailed):
        open_sealed(recipient, box, associated_data=wrong)


def test_swapped_kem_ciphertext(recipient: KemPrivateKey) -> None:
    public = recipient.public_key()
    first, second = seal(public, b"one"), seal(public, b"two")
    kem_start, aead_id, _ = _layout(recipient)
    spliced = first[:kem_start] + second[kem_start:aead_id] + first[aead_id:]
    with pytest.raises(DecryptionFailed):
        open_sealed(recipient, spliced)


def test_other_valid_aead_id(recipient: KemPrivateKey, boxes: dict[AeadAlgorithm, bytes]) -> None:
    _, aead_id, _ = _layout(recipient)
    for aead, box in boxes.items():
        other = next(a for a in AEADS if a is not aead)
        relabelled = box[:aead_id] + struct.pack(">H", other) + box[aead_id + 2 :]
        with pytest.raises(DecryptionFailed):
            open_sealed(recipient, relabelled, associated_data=b"ctx")


# --- tampering, truncation, trailing bytes -----------------------------------------------------


def _expected_for_position(recipient: KemPrivateKey, position: int) -> type[Exception]:
    """The exact exception a single-byte change at ``position`` must raise."""
    kem_start, aead_id, aead_ct = _layout(recipient)
    if position < HEADER:
        return MalformedData  # version, kind, KEM id (unknown or inconsistent), length
    if position < kem_start:
        return DecryptionFailed  # recipient key id
    if position < kem_start + HEADER:
        return MalformedData  # KEM ciphertext envelope header
    if recipient.algorithm is KemAlgorithm.HYBRID_X25519_ML_KEM_1024:
        inner = position - kem_start - HEADER
        if inner < 8 or 40 <= inner < 48:
            return MalformedData  # a hybrid component envelope header
    if position < aead_id:
        return DecryptionFailed  # KEM ciphertext bytes: another shared secret
    if position < aead_ct:
        return MalformedData  # AEAD id: flipping the low bit of 0x0401 / 0x0402 gives no AEAD
    return DecryptionFailed  # AEAD ciphertext and tag


def test_every_byte_flip_is_caught_with_the_exact_error(
    recipient: KemPrivateKey, boxes: dict[AeadAlgorithm, bytes]
) -> None:
    for box in boxes.values():
        for position in range(len(box)):
            tampered = bytearray(box)
            tampered[position] ^= 0x01
            expected = _expected_for_position(recipient, position)
            with pytest.raises((MalformedData, DecryptionFailed)) as caught:
                open_sealed(recipient, bytes(tampered), associated_data=b"ctx")
            assert type(caught.value) is expected, (position, caught.value)


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_random_tampering_is_caught(
    recipient: KemPrivateKey, boxes: dict[AeadAlgorithm, bytes], data: st.DataObject
) -> None:
    box = data.draw(st.sampled_from(list(boxes.values())))
    tampered = bytearray(box)
    for position in data.draw(
        st.lists(st.integers(0, len(box) - 1), min_size=1, max_size=4, unique=True)
    ):
        tampered[position] ^= data.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises((MalformedData, DecryptionFailed)) as caught:
        open_sealed(recipient, bytes(tampered), associated_data=b"ctx")
    assert type(caught.value) in (MalformedData, DecryptionFailed)


def test_truncation_and_trailing_bytes(
    recipient: KemPrivateKey, boxes: dict[AeadAlgorithm, bytes]
) -> None:
    box = boxes[AeadAlgorithm.CHACHA20_POLY1305]
    for cut in itertools.chain(range(80), range(len(box) - 40, len(box))):
        with pytest.raises(MalformedData) as caught:
            open_sealed(recipient, box[:cut], associated_data=b"ctx")
        assert type(caught.value) is MalformedData
    for extra in (b"\x00", b"\xff" * 16):
        with pytest.raises(MalformedData) as caught:
            open_sealed(recipient, box + extra, associated_data=b"ctx")
        assert type(caught.value) is MalformedData


def test_truncated_body_with_consistent_length(
    recipient: KemPrivateKey, boxes: dict[AeadAlgorithm, bytes]
) -> None:
    """Shortened bodies re-wrapped in a valid envelope: structure errors, then the tag."""
    box = boxes[AeadAlgorithm.AES_256_GCM]
    _, body = encoding.decode(box, Kind.SEALED_BOX)
    kem_start, aead_id, aead_ct = (offset - HEADER for offset in _layout(recipient))
    for cut in (0, 31, 32, kem_start + 7, aead_id - 1, aead_id, aead_id + 1, aead_ct + 15):
        with pytest.raises(MalformedData) as caught:
            open_sealed(recipient, _reencode(box, body[:cut]), associated_data=b"ctx")
        assert type(caught.value) is MalformedData
    for cut in (aead_ct + 16, len(body) - 1):
        with pytest.raises(DecryptionFailed):
            open_sealed(recipient, _reencode(box, body[:cut]), associated_data=b"ctx")


def test_not_a_sealed_box(recipient: KemPrivateKey) -> None:
    _, ciphertext = recipient.public_key().encapsulate()
    for data in (ciphertext.to_bytes(), recipient.public_key().to_bytes(), b""):
        with pytest.raises(MalformedData):
            open_sealed(recipient, data)
        with pytest.raises(MalformedData):
            recipient_key_id(data)


def test_recipient_key_id_parses_only_the_header(boxes: dict[AeadAlgorithm, bytes]) -> None:
    box = boxes[AeadAlgorithm.AES_256_GCM]
    _, body = encoding.decode(box, Kind.SEALED_BOX)
    assert recipient_key_id(_reencode(box, body[:32])) == body[:32]
    with pytest.raises(MalformedData):
        recipient_key_id(_reencode(box, body[:31]))
    unknown_kem = encoding.encode(Kind.SEALED_BOX, 0x0999, body)
    with pytest.raises(MalformedData):
        recipient_key_id(unknown_kem)
