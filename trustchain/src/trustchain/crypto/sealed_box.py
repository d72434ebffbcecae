"""Sealed boxes: anonymous public-key encryption of one message to one KEM public key.

``seal`` encapsulates a fresh shared secret to the recipient's KEM public key, derives a one-time
AEAD key and nonce from it, and encrypts the plaintext. Only the recipient's private key opens the
box. The sender is anonymous (nothing authenticates who sealed it); sign the plaintext or the box
if the origin matters.

Format: a ``Kind.SEALED_BOX`` envelope (:mod:`trustchain.crypto.encoding`) whose algorithm field
is the recipient's :class:`~trustchain.crypto.algorithms.KemAlgorithm`, with body::

    offset    size  field
    0         32    recipient key id = KemPublicKey.key_id (SHA-256 of the public key envelope),
                    so a key store can pick the right key (version) before decrypting
    32        N     KEM ciphertext, a Kind.KEM_CIPHERTEXT envelope of the same KEM algorithm
    32+N      2     AEAD algorithm identifier, big-endian (AES-256-GCM or ChaCha20-Poly1305)
    34+N      M     AEAD ciphertext = encrypted plaintext || 16-byte tag  (M >= 16)

Key schedule (HKDF-SHA256, RFC 5869; ``ss`` is the 32-byte KEM shared secret)::

    context = SHA-256(KEM ciphertext envelope) || recipient key id || AEAD id (u16, big-endian)
    prk     = HKDF-Extract(salt = "", ss)
    key     = HKDF-Expand(prk, "trustchain/sealed-box/v1/key"   || context, 32)
    nonce   = HKDF-Expand(prk, "trustchain/sealed-box/v1/nonce" || context, 12)

Every box has its own KEM encapsulation, hence its own ``ss`` and its own key, which encrypts
exactly one message. A fixed nonce would therefore be safe; deriving it with HKDF as well (as HPKE
derives ``base_nonce``, RFC 9180 §5.1) costs nothing, keeps it off the wire and ties it to the
same context as the key. The context binds the key to the exact KEM ciphertext, the intended
recipient key and the AEAD algorithm, so none of them can be swapped without the tag failing.

Associated data of the AEAD: the 8-byte envelope header || body bytes ``0 .. 34+N`` (everything
before the AEAD ciphertext) || the caller's ``associated_data``. The authenticated prefix
delimits itself (fixed-size fields and a length-prefixed KEM envelope), so the caller's part
cannot be confused with it. The caller's associated data is not stored in the box: the opener
must supply the same bytes.

Failures when opening: anything that does not parse (wrong version, kind, length, unknown
algorithm identifiers, a KEM ciphertext of another algorithm or size, truncation, trailing bytes)
raises :class:`~trustchain.errors.MalformedData`; a box addressed to another key, a tampered
ciphertext, tag or header, or different associated data raises
:class:`~trustchain.errors.DecryptionFailed`.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Final

from trustchain.crypto import encoding
from trustchain.crypto.aead import AeadKey, hkdf_expand, hkdf_extract
from trustchain.crypto.algorithms import AeadAlgorithm, KemAlgorithm, from_id
from trustchain.crypto.encoding import Kind
from trustchain.crypto.kem import KemCiphertext, KemPrivateKey, KemPublicKey
from trustchain.errors import DecryptionFailed, MalformedData, UnknownAlgorithm

__all__ = [
    "SEALED_BOX_KEY_LABEL",
    "SEALED_BOX_NONCE_LABEL",
    "open_sealed",
    "recipient_key_id",
    "seal",
]

SEALED_BOX_KEY_LABEL: Final = b"trustchain/sealed-box/v1/key"
SEALED_BOX_NONCE_LABEL: Final = b"trustchain/sealed-box/v1/nonce"

KEY_ID_SIZE: Final = 32
_AEAD_ID: Final = struct.Struct(">H")


@dataclass(frozen=True)
class _ParsedBox:
    algorithm: KemAlgorithm
    key_id: bytes
    kem_ciphertext_envelope: bytes
    kem_ciphertext: KemCiphertext
    aead: AeadAlgorithm
    authenticated_prefix: bytes  # envelope header || body up to the AEAD ciphertext
    aead_ciphertext: bytes


def _derive(
    shared_secret: bytes, kem_ciphertext_envelope: bytes, key_id: bytes, aead: AeadAlgorithm
) -> tuple[AeadKey, bytes]:
    """The one-time AEAD key and nonce of a box (see the module docstring)."""
    context = hashlib.sha256(kem_ciphertext_envelope).digest() + key_id + _AEAD_ID.pack(int(aead))
    prk = hkdf_extract(b"", shared_secret)
    key = hkdf_expand(prk, SEALED_BOX_KEY_LABEL + context, AeadKey.KEY_SIZE)
    nonce = hkdf_expand(prk, SEALED_BOX_NONCE_LABEL + context, AeadKey.NONCE_SIZE)
    return AeadKey(aead, key), nonce


def _known_kem(alg_id: int) -> KemAlgorithm:
    try:
        return from_id(KemAlgorithm, alg_id)
    except UnknownAlgorithm as exc:
        raise MalformedData(f"sealed box names an unknown KEM algorithm: {exc}") from exc


def _known_aead(alg_id: int) -> AeadAlgorithm:
    try:
        return from_id(AeadAlgorithm, alg_id)
    except UnknownAlgorithm as exc:
        raise MalformedData(f"sealed box names an unknown AEAD algorithm: {exc}") from exc


def _parse(sealed: bytes) -> _ParsedBox:
    alg_id, body = encoding.decode(sealed, Kind.SEALED_BOX)
    algorithm = _known_kem(alg_id)
    if len(body) < KEY_ID_SIZE:
        raise MalformedData(f"truncated sealed box: {len(body)} bytes, key id needs {KEY_ID_SIZE}")
    key_id = body[:KEY_ID_SIZE]
    ct_alg_id, _, ct_end = encoding.decode_prefix(body, Kind.KEM_CIPHERTEXT, KEY_ID_SIZE)
    if ct_alg_id != algorithm:
        raise MalformedData(
            f"sealed box for {algorithm.label} carries a KEM ciphertext of algorithm "
            f"0x{ct_alg_id:04x}"
        )
    kem_envelope = body[KEY_ID_SIZE:ct_end]
    kem_ciphertext = KemCiphertext.from_bytes(kem_envelope)
    aead_end = ct_end + _AEAD_ID.size
    if len(body) < aead_end:
        raise MalformedData("truncated sealed box: no AEAD algorithm identifier")
    (aead_id,) = _AEAD_ID.unpack_from(body, ct_end)
    aead = _known_aead(aead_id)
    aead_ciphertext = body[aead_end:]
    if len(aead_ciphertext) < AeadKey.TAG_SIZE:
        raise MalformedData(
            f"truncated sealed box: {len(aead_ciphertext)} ciphertext bytes, "
            f"the tag alone needs {AeadKey.TAG_SIZE}"
        )
    return _ParsedBox(
        algorithm=algorithm,
        key_id=key_id,
        kem_ciphertext_envelope=kem_envelope,
        kem_ciphertext=kem_ciphertext,
        aead=aead,
        authenticated_prefix=bytes(sealed[: encoding.HEADER.size + aead_end]),
        aead_ciphertext=aead_ciphertext,
    )


def seal(
    recipient: KemPublicKey,
    plaintext: bytes,
    *,
    associated_data: bytes = b"",
    aead: AeadAlgorithm = AeadAlgorithm.AES_256_GCM,
) -> bytes:
    """Encrypt ``plaintext`` to ``recipient``; returns the ``Kind.SEALED_BOX`` envelope.

    ``associated_data`` is authenticated but not stored: :func:`open_sealed` needs it again.
    """
    aead = from_id(AeadAlgorithm, int(aead))
    shared_secret, kem_ciphertext = recipient.encapsulate()
    kem_envelope = kem_ciphertext.to_bytes()
    key_id = recipient.key_id
    prefix = key_id + kem_envelope + _AEAD_ID.pack(int(aead))
    body_size = len(prefix) + len(plaintext) + AeadKey.TAG_SIZE
    if body_size > encoding.MAX_BODY:
        raise MalformedData(
            f"sealed box of {body_size} bytes exceeds the {encoding.MAX_BODY}-byte limit"
        )
    header = encoding.HEADER.pack(
        encoding.FORMAT_VERSION, Kind.SEALED_BOX, recipient.algorithm, body_size
    )
    key, nonce = _derive(shared_secret, kem_envelope, key_id, aead)
    ciphertext = key.encrypt(nonce, plaintext, header + prefix + associated_data)
    return encoding.encode(Kind.SEALED_BOX, recipient.algorithm, prefix + ciphertext)


def open_sealed(recipient: KemPrivateKey, sealed: bytes, *, associated_data: bytes = b"") -> bytes:
    """The plaintext of a box sealed to ``recipient``'s public key.

    :raises MalformedData: the box does not parse.
    :raises DecryptionFailed: the box is for another key, or fails authentication.
    """
    box = _parse(sealed)
    own_id = recipient.public_key().key_id
    if not hmac.compare_digest(box.key_id, own_id):
        raise DecryptionFailed(
            f"sealed box is addressed to key id {box.key_id.hex()}, "
            f"not to this key ({own_id.hex()})"
        )
    if box.algorithm is not recipient.algorithm:  # implied by the key id; checked anyway
        raise DecryptionFailed(
            f"sealed box is for a {box.algorithm.label} key, this key is "
            f"{recipient.algorithm.label}"
        )
    shared_secret = recipient.decapsulate(box.kem_ciphertext)
    key, nonce = _derive(shared_secret, box.kem_ciphertext_envelope, box.key_id, box.aead)
    return key.decrypt(nonce, box.aead_ciphertext, box.authenticated_prefix + associated_data)


def recipient_key_id(sealed: bytes) -> bytes:
    """The 32-byte key id a box is addressed to, from its header alone (no decryption).

    Checks the envelope (version, kind, length, KEM algorithm) but not the rest of the body.
    """
    alg_id, body = encoding.decode(sealed, Kind.SEALED_BOX)
    _known_kem(alg_id)
    if len(body) < KEY_ID_SIZE:
        raise MalformedData(f"truncated sealed box: {len(body)} bytes, key id needs {KEY_ID_SIZE}")
    return body[:KEY_ID_SIZE]
