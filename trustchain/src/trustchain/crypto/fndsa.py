"""FN-DSA-1024 (FIPS 206 draft, logn = 10) through the optional ``py-fn-dsa`` package.

FN-DSA is TrustChain algorithm ``fn-dsa-1024``, distinct from round-3 Falcon-1024: the
message is hashed differently (with the public key's hash and a context string), signatures are
padded to a fixed length, and py-fn-dsa's key encodings differ from the round-3 ones even
where their sizes agree. TrustChain signs in "pure" mode with an empty context
(``hash_id = HASH_ID_RAW``, ``context = b""``).

Encodings (what py-fn-dsa 0.2 / c-fn-dsa produce)::

    verifying key   1793 bytes   0x0A || 1024 values mod q, 14 bits each
    signing key     2369 bytes   0x5A || f || g || F || SHAKE256(verifying key)[:64]
                                 f, g: 5 bits each, F: 8 bits each, least-significant bit first
    signature       1280 bytes   0x3A || nonce (40) || compressed s2 || zero padding

Unlike round-3 Falcon, c-fn-dsa packs the small polynomials least-significant bit first, and
py-fn-dsa 0.2's verifying key holds h in its NTT (evaluation) representation rather than as
coefficients. :func:`check_key_pair` therefore checks the NTRU basis (f, g, F) on its own, the
embedded hash of the verifying key, and then signs and verifies a fixed test message.

``py_fn_dsa`` is imported on first use; if it is missing every entry point raises
:class:`~trustchain.errors.BackendUnavailable`.
"""

from __future__ import annotations

import hashlib
import importlib
from functools import cache
from typing import Any, Final

from trustchain.crypto import falcon
from trustchain.crypto.encoding import check_sized
from trustchain.errors import BackendUnavailable, InvalidKey

LOGN: Final = 10
VERIFY_KEY_SIZE: Final = 1793
VERIFY_KEY_HEADER: Final = 0x00 + LOGN
SIGN_KEY_SIZE: Final = 2369
SIGN_KEY_HEADER: Final = 0x50 + LOGN
SIGNATURE_SIZE: Final = 1280
SIGNATURE_HEADER: Final = 0x30 + LOGN
#: Bytes of SHAKE256(verifying key) at the end of the signing key.
VERIFY_KEY_HASH_SIZE: Final = 64

_FG_SIZE: Final = falcon.FG_BITS * falcon.N // 8
_PAIRWISE_TEST_MESSAGE: Final = b"TrustChain FN-DSA-1024 pairwise consistency test"


@cache
def _module() -> Any:
    try:
        return importlib.import_module("py_fn_dsa")
    except ImportError as exc:
        raise BackendUnavailable(
            f"FN-DSA-1024 needs the optional py-fn-dsa package (trustchain[fn-dsa]): {exc}"
        ) from exc


def available() -> bool:
    """Whether py-fn-dsa is importable here."""
    try:
        _module()
    except BackendUnavailable:
        return False
    return True


def check_verify_key(verify_key: bytes) -> None:
    """Raise :class:`InvalidKey` unless ``verify_key`` is sized and headed as a verifying key."""
    check_sized(
        verify_key,
        what="FN-DSA-1024 verifying key",
        sizes=range(VERIFY_KEY_SIZE, VERIFY_KEY_SIZE + 1),
        header=VERIFY_KEY_HEADER,
        error=InvalidKey,
    )


def check_sign_key(sign_key: bytes) -> None:
    """Raise :class:`InvalidKey` unless ``sign_key`` has the size and header of a signing key."""
    check_sized(
        sign_key,
        what="FN-DSA-1024 signing key",
        sizes=range(SIGN_KEY_SIZE, SIGN_KEY_SIZE + 1),
        header=SIGN_KEY_HEADER,
        error=InvalidKey,
    )


def check_signature(signature: bytes) -> None:
    """Raise :class:`MalformedData` unless ``signature`` has the size and header of a signature."""
    check_sized(
        signature,
        what="FN-DSA-1024 signature",
        sizes=range(SIGNATURE_SIZE, SIGNATURE_SIZE + 1),
        header=SIGNATURE_HEADER,
    )


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh ``(verifying key, signing key)``."""
    lib = _module()
    verify_key, sign_key = lib.keygen(LOGN)
    vk, sk = bytes(verify_key.key_data), bytes(sign_key.key_data)
    check_verify_key(vk)
    check_sign_key(sk)
    return vk, sk


def sign(sign_key: bytes, message: bytes) -> bytes:
    """A 1280-byte signature of ``message`` (pure mode, empty context)."""
    lib = _module()
    check_sign_key(sign_key)
    try:
        signature = lib.sign(
            lib.SigningKey(LOGN, bytes(sign_key)), bytes(message), b"", lib.HASH_ID_RAW
        )
    except RuntimeError as exc:  # c-fn-dsa returned 0: the key does not decode
        raise InvalidKey(f"FN-DSA-1024 signing key cannot sign: {exc}") from exc
    signature = bytes(signature)
    check_signature(signature)
    return signature


def verify(verify_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is valid for ``message`` under ``verify_key``."""
    lib = _module()
    check_verify_key(verify_key)
    check_signature(signature)
    return bool(
        lib.verify(
            lib.VerifyKey(LOGN, bytes(verify_key)),
            bytes(signature),
            bytes(message),
            b"",
            lib.HASH_ID_RAW,
        )
    )


def check_key_pair(sign_key: bytes, verify_key: bytes) -> None:
    """Raise :class:`InvalidKey` unless ``sign_key`` is a genuine signing key for ``verify_key``.

    Sizes and headers; the hash of ``verify_key`` embedded in ``sign_key``; the NTRU basis
    (:func:`trustchain.crypto.falcon.check_ntru_basis`, so that signing terminates); and last a
    pairwise sign-then-verify test, which ties the verifying key to the basis.
    """
    check_sign_key(sign_key)
    check_verify_key(verify_key)
    embedded = sign_key[SIGN_KEY_SIZE - VERIFY_KEY_HASH_SIZE :]
    if hashlib.shake_256(verify_key).digest(VERIFY_KEY_HASH_SIZE) != embedded:
        raise InvalidKey("FN-DSA-1024 signing key does not embed this verifying key's hash")
    f = falcon.decode_small_poly(sign_key[1 : 1 + _FG_SIZE], falcon.FG_BITS, lsb_first=True)
    g = falcon.decode_small_poly(
        sign_key[1 + _FG_SIZE : 1 + 2 * _FG_SIZE], falcon.FG_BITS, lsb_first=True
    )
    big_f = falcon.decode_small_poly(
        sign_key[1 + 2 * _FG_SIZE : SIGN_KEY_SIZE - VERIFY_KEY_HASH_SIZE],
        falcon.BIG_F_BITS,
        lsb_first=True,
    )
    falcon.check_ntru_basis(f, g, big_f)
    test_signature = sign(sign_key, _PAIRWISE_TEST_MESSAGE)
    if not verify(verify_key, _PAIRWISE_TEST_MESSAGE, test_signature):
        raise InvalidKey("FN-DSA-1024 verifying key does not belong to the signing key")
