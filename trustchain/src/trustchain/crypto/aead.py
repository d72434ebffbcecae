"""Authenticated encryption (AES-256-GCM, ChaCha20-Poly1305) and HKDF-SHA256.

:class:`AeadKey` wraps a 32-byte key of one AEAD algorithm:

* ``AES_256_GCM``: AES-256 in Galois/Counter Mode (NIST SP 800-38D), 96-bit nonce, 128-bit tag.
* ``CHACHA20_POLY1305``: the IETF construction of RFC 8439, 96-bit nonce, 128-bit tag.

Both come from ``cryptography`` (``AESGCM`` / ``ChaCha20Poly1305``). The ciphertext format is the
RFC 5116 one: ``encrypted plaintext || 16-byte tag``, so a ciphertext is always exactly 16 bytes
longer than its plaintext. Nonces are supplied by the caller and must be exactly 12 bytes; a
(key, nonce) pair must never be used twice. :mod:`trustchain.crypto.sealed_box` uses each key
exactly once; long-lived keys (channels) must use a counter.

Failures: a nonce of the wrong size and a ciphertext too short to hold a tag raise
:class:`~trustchain.errors.MalformedData`; a tag that does not verify (wrong key, nonce,
ciphertext, tag or associated data) raises :class:`~trustchain.errors.DecryptionFailed`.

HKDF (RFC 5869) is implemented with HMAC-SHA256 from the standard library:
``hkdf_extract`` is §2.2 (an empty salt means HashLen zero bytes), ``hkdf_expand`` is §2.3
(``T(i) = HMAC(PRK, T(i-1) || info || i)``), ``hkdf`` is both in a row. Tested against the
RFC 5869 Appendix A.1-A.3 vectors.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from typing import ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from trustchain.crypto.algorithms import AeadAlgorithm, from_id
from trustchain.errors import DecryptionFailed, InvalidKey, MalformedData

__all__ = [
    "HKDF_HASH_SIZE",
    "HKDF_MAX_LENGTH",
    "AeadKey",
    "hkdf",
    "hkdf_expand",
    "hkdf_extract",
]

#: Output size of SHA-256, HKDF's ``HashLen``.
HKDF_HASH_SIZE = 32
#: RFC 5869 §2.3: ``L <= 255 * HashLen``.
HKDF_MAX_LENGTH = 255 * HKDF_HASH_SIZE


@dataclass(frozen=True, repr=False)
class AeadKey:
    """A 32-byte AEAD key of one algorithm. ``repr`` never shows the key.

    Equality compares the key in constant time.
    """

    algorithm: AeadAlgorithm
    key: bytes
    _cipher: AESGCM | ChaCha20Poly1305 = field(init=False, compare=False, hash=False)

    KEY_SIZE: ClassVar[int] = 32
    NONCE_SIZE: ClassVar[int] = 12
    TAG_SIZE: ClassVar[int] = 16

    def __post_init__(self) -> None:
        algorithm = from_id(AeadAlgorithm, int(self.algorithm))
        key = bytes(self.key)
        if len(key) != self.KEY_SIZE:
            raise InvalidKey(f"{algorithm.label} key must be {self.KEY_SIZE} bytes, got {len(key)}")
        cipher: AESGCM | ChaCha20Poly1305 = (
            AESGCM(key) if algorithm is AeadAlgorithm.AES_256_GCM else ChaCha20Poly1305(key)
        )
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "_cipher", cipher)

    @classmethod
    def generate(cls, algorithm: AeadAlgorithm = AeadAlgorithm.AES_256_GCM) -> AeadKey:
        """A fresh random key from the operating system's CSPRNG."""
        return cls(algorithm, os.urandom(cls.KEY_SIZE))

    def encrypt(self, nonce: bytes, plaintext: bytes, associated_data: bytes = b"") -> bytes:
        """``ciphertext || tag`` of ``plaintext``, authenticating ``associated_data`` too."""
        self._check_nonce(nonce)
        return self._cipher.encrypt(nonce, plaintext, associated_data)

    def decrypt(self, nonce: bytes, ciphertext: bytes, associated_data: bytes = b"") -> bytes:
        """The plaintext of ``ciphertext || tag``.

        :raises MalformedData: wrong nonce size, or fewer than ``TAG_SIZE`` bytes.
        :raises DecryptionFailed: the tag does not verify.
        """
        self._check_nonce(nonce)
        if len(ciphertext) < self.TAG_SIZE:
            raise MalformedData(
                f"{self.algorithm.label} ciphertext of {len(ciphertext)} bytes is shorter than "
                f"its {self.TAG_SIZE}-byte tag"
            )
        try:
            return self._cipher.decrypt(nonce, ciphertext, associated_data)
        except InvalidTag:
            raise DecryptionFailed(
                f"{self.algorithm.label}: authentication failed (wrong key, nonce, ciphertext, "
                "tag or associated data)"
            ) from None

    def _check_nonce(self, nonce: bytes) -> None:
        if len(nonce) != self.NONCE_SIZE:
            raise MalformedData(
                f"{self.algorithm.label} nonce must be {self.NONCE_SIZE} bytes, got {len(nonce)}"
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AeadKey):
            return NotImplemented
        return self.algorithm == other.algorithm and hmac.compare_digest(self.key, other.key)

    def __hash__(self) -> int:
        return hash((AeadKey, self.algorithm, hashlib.sha256(self.key).digest()))

    def __repr__(self) -> str:
        return f"AeadKey(algorithm={self.algorithm.label}, key=<{len(self.key)} bytes hidden>)"


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256 (RFC 5869 §2.2): ``PRK = HMAC-SHA256(salt, IKM)``.

    An empty ``salt`` stands for ``HashLen`` zero bytes, as the RFC prescribes.
    """
    key = salt if salt else bytes(HKDF_HASH_SIZE)
    return hmac.new(key, ikm, hashlib.sha256).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-Expand with SHA-256 (RFC 5869 §2.3): the first ``length`` bytes of T(1) || T(2) ...

    :raises InvalidKey: ``prk`` shorter than ``HashLen`` (32) bytes.
    :raises MalformedData: ``length`` outside ``1 .. 255 * 32``.
    """
    if len(prk) < HKDF_HASH_SIZE:
        raise InvalidKey(f"HKDF PRK must be at least {HKDF_HASH_SIZE} bytes, got {len(prk)}")
    if not 1 <= length <= HKDF_MAX_LENGTH:
        raise MalformedData(f"HKDF-SHA256 output length must be 1..{HKDF_MAX_LENGTH}, got {length}")
    okm = bytearray()
    block = b""
    counter = 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return bytes(okm[:length])


def hkdf(ikm: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869 §2): Expand(Extract(salt, ikm), info, length)."""
    return hkdf_expand(hkdf_extract(salt, ikm), info, length)
