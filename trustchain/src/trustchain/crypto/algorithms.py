"""Algorithm identifiers.

Every key, signature and ciphertext TrustChain serializes carries one of these 16-bit identifiers
(see :mod:`trustchain.crypto.encoding`). Identifiers are unique across families, so a KEM key can
never be mistaken for a signing key. Names are the stable, human-facing spelling used by the CLI
and in configuration.
"""

from __future__ import annotations

import enum
from typing import TypeVar

from trustchain.errors import UnknownAlgorithm


class _NamedAlgorithm(enum.IntEnum):
    @property
    def label(self) -> str:
        """The stable, human-facing name (``falcon-1024``, ``hybrid-x25519-ml-kem-1024``...)."""
        return _NAMES[int(self)]


class SignatureAlgorithm(_NamedAlgorithm):
    ED25519 = 0x0001
    #: NIST PQC round-3 Falcon-1024; PQClean / liboqs key and signature encodings.
    FALCON_1024 = 0x0002
    #: FN-DSA-1024 (FIPS 206 draft, logn = 10) as implemented by py-fn-dsa.
    FN_DSA_1024 = 0x0003
    #: Ed25519 and Falcon-1024 together; valid only if both verify.
    HYBRID_ED25519_FALCON_1024 = 0x0101


class KemAlgorithm(_NamedAlgorithm):
    X25519 = 0x0201
    #: FIPS 203 ML-KEM-1024.
    ML_KEM_1024 = 0x0202
    #: X25519 + ML-KEM-1024 with a combiner binding both secrets, ciphertexts and public keys.
    HYBRID_X25519_ML_KEM_1024 = 0x0301


class AeadAlgorithm(_NamedAlgorithm):
    AES_256_GCM = 0x0401
    CHACHA20_POLY1305 = 0x0402


_NAMES: dict[int, str] = {
    SignatureAlgorithm.ED25519: "ed25519",
    SignatureAlgorithm.FALCON_1024: "falcon-1024",
    SignatureAlgorithm.FN_DSA_1024: "fn-dsa-1024",
    SignatureAlgorithm.HYBRID_ED25519_FALCON_1024: "hybrid-ed25519-falcon-1024",
    KemAlgorithm.X25519: "x25519",
    KemAlgorithm.ML_KEM_1024: "ml-kem-1024",
    KemAlgorithm.HYBRID_X25519_ML_KEM_1024: "hybrid-x25519-ml-kem-1024",
    AeadAlgorithm.AES_256_GCM: "aes-256-gcm",
    AeadAlgorithm.CHACHA20_POLY1305: "chacha20-poly1305",
}

_A = TypeVar("_A", bound=_NamedAlgorithm)


def from_name(family: type[_A], name: str) -> _A:
    """The algorithm of ``family`` spelled ``name``; :class:`UnknownAlgorithm` if none."""
    for member in family:
        if member.label == name:
            return member
    known = ", ".join(m.label for m in family)
    raise UnknownAlgorithm(f"unknown {family.__name__} {name!r}; known: {known}")


def from_id(family: type[_A], value: int) -> _A:
    """The algorithm of ``family`` with identifier ``value``; :class:`UnknownAlgorithm` if none."""
    try:
        return family(value)
    except ValueError:
        raise UnknownAlgorithm(f"unknown {family.__name__} identifier 0x{value:04x}") from None
