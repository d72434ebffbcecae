"""Key encapsulation: X25519 (as DHKEM), ML-KEM-1024, and the X25519 + ML-KEM-1024 hybrid.

Every KEM here turns a recipient public key into ``(shared secret, ciphertext)``; only the holder
of the private key recovers the same 32-byte shared secret from the ciphertext.

Encodings (the *body* of the :mod:`trustchain.crypto.encoding` envelope; ``env(x)`` below is a
component envelope of the same kind carrying the component's own algorithm identifier)::

    algorithm                  private key (SECRET)        public key         ciphertext
    x25519                     32-byte scalar (RFC 7748)   32-byte u-coord.   32-byte enc (pkE)
    ml-kem-1024                64-byte seed d || z         1568-byte ek       1568-byte c
    hybrid-x25519-ml-kem-1024  env(x25519) || env(ml-kem)  env || env         env || env

    Sizes of the hybrid bodies: private key 8+32+8+64 = 112, public key and ciphertext
    8+32+8+1568 = 1616 bytes.

The ML-KEM-1024 private key is the FIPS 203 §7.1 key-generation seed ``d || z`` (two 32-byte
strings, ``ML-KEM.KeyGen_internal(d, z)``), never the 3168-byte expanded ``dk``: the seed is
smaller and cannot be inconsistent with its public key. The public key and ciphertext are the
FIPS 203 ``ek`` and ``c`` byte strings. ``from_seed`` takes the seed of each algorithm: 32 bytes
(X25519), 64 bytes (ML-KEM-1024) or ``X25519 private key (32) || ML-KEM seed (64)`` (hybrid).

X25519 (``KemAlgorithm.X25519``)
    DHKEM(X25519, HKDF-SHA256) of RFC 9180 §4.1, kem_id 0x0020: ``enc`` is the ephemeral public
    key and ``shared_secret = ExtractAndExpand(DH(skE, pkR), enc || pkRm)`` with::

        LabeledExtract(salt, label, ikm) = HKDF-Extract(salt, "HPKE-v1" || suite_id || label
                                                              || ikm)
        LabeledExpand(prk, label, info, L) = HKDF-Expand(prk, I2OSP(L, 2) || "HPKE-v1"
                                                              || suite_id || label || info, L)
        suite_id      = "KEM" || I2OSP(0x0020, 2)
        eae_prk       = LabeledExtract("", "eae_prk", dh)
        shared_secret = LabeledExpand(eae_prk, "shared_secret", enc || pkRm, 32)

    Checked against the RFC 9180 Appendix A.1.1 test vector. An all-zero X25519 output (a
    low-order peer point, RFC 7748 §6.1, RFC 9180 §7.1.4) is refused: a public key that is a
    low-order point raises :class:`~trustchain.errors.InvalidKey` when constructed (it is tested
    by one DH with a fixed clamped scalar, which is all-zero exactly for low-order points), and
    decapsulating a low-order ``enc`` raises :class:`~trustchain.errors.DecryptionFailed`.

ML-KEM-1024 (``KemAlgorithm.ML_KEM_1024``)
    FIPS 203 through ``cryptography`` (OpenSSL). Public keys pass the FIPS 203 §7.2 encapsulation
    key (modulus) check when constructed, else :class:`~trustchain.errors.InvalidKey`.
    Decapsulating a well-formed ciphertext that was not produced for this key does **not** raise:
    FIPS 203 implicit rejection (Algorithm 18, ``K_bar = J(z || c)``) returns a pseudo-random
    secret unrelated to the sender's, and the failure shows up when the secret is used (the AEAD
    of a sealed box, the key confirmation of a handshake). Only a ciphertext of the wrong size is
    an error (:class:`~trustchain.errors.MalformedData`).

Hybrid (``KemAlgorithm.HYBRID_X25519_ML_KEM_1024``)
    Both KEMs run on their own keys; the 32-byte shared secret is::

        SHA3-256(ss_M || ss_X || ct_X || pk_X || ct_M || pk_M || HYBRID_COMBINER_LABEL)

    in exactly that byte order, where ``ss_M`` (32) is the ML-KEM-1024 shared secret, ``ss_X``
    (32) the *raw* X25519 output ``X25519(ek_X, pk_X)``, ``ct_X`` (32) the ephemeral X25519
    public key, ``pk_X`` (32) the recipient X25519 public key, ``ct_M`` (1568) the ML-KEM
    ciphertext and ``pk_M`` (1568) the ML-KEM encapsulation key; all raw bytes, not envelopes.
    Every input has a fixed length, so the concatenation is unambiguous without length prefixes.
    ``HYBRID_COMBINER_LABEL`` is the ASCII string ``trustchain/kem/hybrid-x25519-ml-kem-1024/v1``.

    This is the X-Wing combiner (draft-connolly-cfrg-xwing-kem-10 §5.3: SHA3-256 of
    ``ss_M || ss_X || ct_X || pk_X || XWingLabel``, label last) with ML-KEM-1024 in place of
    ML-KEM-768, ``ct_M || pk_M`` inserted before the label, and our own label, so it is *not*
    X-Wing and its outputs never collide with X-Wing's. Why bind everything:

    * ``ct_X`` and ``pk_X`` make the X25519 half a proper KEM (as in X-Wing and DHKEM's
      ``kem_context``): the raw DH value alone does not depend on which ephemeral key or which
      recipient produced it.
    * X-Wing may leave out ``ct_M`` and ``pk_M`` only because of the specifics of ML-KEM's
      Fujisaki-Okamoto transform (X-Wing §6). The generic combiners of
      draft-ietf-tls-hybrid-design and draft-ounsworth-cfrg-kem-combiners hash every
      component's ciphertext (and the latter its public key) so that the result stays IND-CCA if
      *either* component is, without relying on such specifics. Hashing them also makes the
      hybrid secret bind the whole ciphertext and the whole public key (MAL-BIND-K-CT and
      MAL-BIND-K-PK), which ML-KEM alone does not offer (Schmieg, ePrint 2024/523). The cost is
      one SHA3-256 over about 3.3 KB.

    Ciphertext and public key bodies put the X25519 component first, then ML-KEM-1024. An
    all-zero ``ss_X`` is refused as for X25519 (:class:`~trustchain.errors.DecryptionFailed`);
    ML-KEM implicit rejection applies to the ML-KEM half, so a forged hybrid ciphertext yields a
    secret nobody else knows rather than an exception.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Final, NoReturn

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from trustchain.crypto import encoding
from trustchain.crypto.aead import hkdf_expand, hkdf_extract
from trustchain.crypto.algorithms import KemAlgorithm, from_id
from trustchain.crypto.encoding import Kind
from trustchain.errors import (
    AlgorithmMismatch,
    BackendUnavailable,
    CryptoError,
    DecryptionFailed,
    InvalidKey,
    MalformedData,
)

__all__ = [
    "HYBRID_COMBINER_LABEL",
    "SHARED_SECRET_SIZE",
    "KemCiphertext",
    "KemPrivateKey",
    "KemPublicKey",
]

#: Every KEM here produces a 32-byte shared secret.
SHARED_SECRET_SIZE: Final = 32
X25519_SIZE: Final = 32
ML_KEM_1024_SEED_SIZE: Final = 64
ML_KEM_1024_PUBLIC_KEY_SIZE: Final = 1568
ML_KEM_1024_CIPHERTEXT_SIZE: Final = 1568
#: Hybrid ``from_seed`` input: X25519 private key (32) || ML-KEM-1024 seed d || z (64).
HYBRID_SEED_SIZE: Final = X25519_SIZE + ML_KEM_1024_SEED_SIZE

#: Domain-separation label of the hybrid combiner (last input of its SHA3-256).
HYBRID_COMBINER_LABEL: Final = b"trustchain/kem/hybrid-x25519-ml-kem-1024/v1"

# RFC 9180 §4 / §4.1 / §7.1: DHKEM(X25519, HKDF-SHA256) has kem_id 0x0020.
_HPKE_VERSION_LABEL: Final = b"HPKE-v1"
_DHKEM_X25519_KEM_ID: Final = 0x0020
_DHKEM_X25519_SUITE_ID: Final = b"KEM" + _DHKEM_X25519_KEM_ID.to_bytes(2, "big")

_ALL_ZERO_DH: Final = bytes(X25519_SIZE)
# Any fixed scalar works: once clamped (RFC 7748 §5) it is a multiple of the cofactor 8 below
# the prime subgroup order, so X25519(k, u) is all-zero exactly when u is a low-order point.
_LOW_ORDER_PROBE: Final = x25519.X25519PrivateKey.from_private_bytes(
    hashlib.sha256(b"trustchain/kem/x25519-low-order-probe").digest()
)


# --- RFC 9180 DHKEM(X25519, HKDF-SHA256) ------------------------------------------------------


def _labeled_extract(salt: bytes, label: bytes, ikm: bytes) -> bytes:
    """RFC 9180 §4 LabeledExtract with suite_id = "KEM" || I2OSP(0x0020, 2)."""
    return hkdf_extract(salt, _HPKE_VERSION_LABEL + _DHKEM_X25519_SUITE_ID + label + ikm)


def _labeled_expand(prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    """RFC 9180 §4 LabeledExpand with suite_id = "KEM" || I2OSP(0x0020, 2)."""
    labeled_info = (
        length.to_bytes(2, "big") + _HPKE_VERSION_LABEL + _DHKEM_X25519_SUITE_ID + label + info
    )
    return hkdf_expand(prk, labeled_info, length)


def _dhkem_extract_and_expand(dh: bytes, kem_context: bytes) -> bytes:
    """RFC 9180 §4.1 ExtractAndExpand, Nsecret = 32."""
    eae_prk = _labeled_extract(b"", b"eae_prk", dh)
    return _labeled_expand(eae_prk, b"shared_secret", kem_context, SHARED_SECRET_SIZE)


def _x25519_shared(
    private: x25519.X25519PrivateKey, peer: bytes, error: type[CryptoError], what: str
) -> bytes:
    """Raw X25519(private, peer); an all-zero result (low-order peer) raises ``error``."""
    problem = f"{what} is a low-order X25519 point: the shared secret is all-zero (RFC 7748 §6.1)"
    try:
        shared = private.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
    except ValueError:
        # OpenSSL refuses to return the all-zero value; the only failure for 32-byte input.
        raise error(problem) from None
    if hmac.compare_digest(shared, _ALL_ZERO_DH):
        raise error(problem)
    return shared


def _dhkem_encapsulate(recipient: bytes, ephemeral: x25519.X25519PrivateKey) -> tuple[bytes, bytes]:
    """RFC 9180 §4.1 Encap(pkR) with a given ephemeral key: ``(shared_secret, enc)``."""
    enc = ephemeral.public_key().public_bytes_raw()
    dh = _x25519_shared(ephemeral, recipient, InvalidKey, "the recipient X25519 public key")
    return _dhkem_extract_and_expand(dh, enc + recipient), enc


# --- the hybrid combiner ----------------------------------------------------------------------


def _combine(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes, ct_m: bytes, pk_m: bytes) -> bytes:
    """SHA3-256(ss_M || ss_X || ct_X || pk_X || ct_M || pk_M || label); see the module doc."""
    return hashlib.sha3_256(
        ss_m + ss_x + ct_x + pk_x + ct_m + pk_m + HYBRID_COMBINER_LABEL
    ).digest()


# --- parsing helpers --------------------------------------------------------------------------


def _kem_algorithm(value: int) -> KemAlgorithm:
    """``value`` as a :class:`KemAlgorithm`; :class:`UnknownAlgorithm` if it is not one."""
    return from_id(KemAlgorithm, int(value))


def _split_hybrid(body: bytes, kind: Kind, what: str) -> tuple[bytes, bytes]:
    """The X25519 and ML-KEM-1024 component bodies of a hybrid body ``env(X) || env(M)``."""
    x25519_body, mlkem_body = encoding.split_components(
        body, kind, (KemAlgorithm.X25519, KemAlgorithm.ML_KEM_1024), what
    )
    return x25519_body, mlkem_body


def _join_hybrid(kind: Kind, x25519_body: bytes, mlkem_body: bytes) -> bytes:
    return encoding.join_components(
        kind, [(KemAlgorithm.X25519, x25519_body), (KemAlgorithm.ML_KEM_1024, mlkem_body)]
    )


def _require_size(data: bytes, size: int, what: str, error: type[MalformedData]) -> None:
    if len(data) != size:
        raise error(f"{what} must be {size} bytes, got {len(data)}")


def _backend_unavailable(exc: UnsupportedAlgorithm) -> NoReturn:
    raise BackendUnavailable(
        f"the installed cryptography/OpenSSL has no ML-KEM-1024 support: {exc}"
    ) from exc


def _load_x25519_public(raw: bytes, what: str) -> x25519.X25519PublicKey:
    _require_size(raw, X25519_SIZE, what, InvalidKey)
    _x25519_shared(_LOW_ORDER_PROBE, raw, InvalidKey, what)
    return x25519.X25519PublicKey.from_public_bytes(raw)


def _load_mlkem_public(raw: bytes, what: str) -> mlkem.MLKEM1024PublicKey:
    _require_size(raw, ML_KEM_1024_PUBLIC_KEY_SIZE, what, InvalidKey)
    try:
        return mlkem.MLKEM1024PublicKey.from_public_bytes(raw)
    except UnsupportedAlgorithm as exc:
        _backend_unavailable(exc)
    except ValueError:
        raise InvalidKey(
            f"{what} fails the FIPS 203 §7.2 encapsulation key check "
            "(a coefficient is not reduced modulo q = 3329)"
        ) from None


def _load_x25519_private(raw: bytes) -> x25519.X25519PrivateKey:
    _require_size(raw, X25519_SIZE, "X25519 private key", InvalidKey)
    return x25519.X25519PrivateKey.from_private_bytes(raw)


def _load_mlkem_private(seed: bytes) -> mlkem.MLKEM1024PrivateKey:
    _require_size(seed, ML_KEM_1024_SEED_SIZE, "ML-KEM-1024 seed d || z", InvalidKey)
    try:
        return mlkem.MLKEM1024PrivateKey.from_seed_bytes(seed)
    except UnsupportedAlgorithm as exc:
        _backend_unavailable(exc)


# --- public API -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KemCiphertext:
    """An encapsulated key. ``raw`` is the algorithm's ciphertext (hybrid: component envelopes).

    Construction checks the size (and, for the hybrid, the component structure); a wrong size
    raises :class:`~trustchain.errors.MalformedData`.
    """

    algorithm: KemAlgorithm
    raw: bytes

    def __post_init__(self) -> None:
        algorithm = _kem_algorithm(self.algorithm)
        raw = bytes(self.raw)
        if algorithm is KemAlgorithm.X25519:
            _require_size(raw, X25519_SIZE, "X25519 ciphertext (enc)", MalformedData)
        elif algorithm is KemAlgorithm.ML_KEM_1024:
            _require_size(raw, ML_KEM_1024_CIPHERTEXT_SIZE, "ML-KEM-1024 ciphertext", MalformedData)
        else:
            ct_x, ct_m = _split_hybrid(raw, Kind.KEM_CIPHERTEXT, "ciphertext")
            _require_size(ct_x, X25519_SIZE, "hybrid X25519 ciphertext", MalformedData)
            _require_size(
                ct_m, ML_KEM_1024_CIPHERTEXT_SIZE, "hybrid ML-KEM-1024 ciphertext", MalformedData
            )
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "raw", raw)

    def to_bytes(self) -> bytes:
        """The ``Kind.KEM_CIPHERTEXT`` envelope."""
        return encoding.encode(Kind.KEM_CIPHERTEXT, self.algorithm, self.raw)

    @classmethod
    def from_bytes(cls, data: bytes) -> KemCiphertext:
        """Parse a ``Kind.KEM_CIPHERTEXT`` envelope (MalformedData / UnknownAlgorithm)."""
        alg_id, body = encoding.decode(data, Kind.KEM_CIPHERTEXT)
        return cls(_kem_algorithm(alg_id), body)

    def __repr__(self) -> str:
        return f"KemCiphertext({self.algorithm.label}, {len(self.raw)} bytes)"


@dataclass(frozen=True)
class KemPublicKey:
    """A KEM public key. ``raw`` is the algorithm's public key (hybrid: component envelopes).

    Construction validates the key: size, hybrid structure, X25519 low-order points and the
    FIPS 203 §7.2 ML-KEM check all raise :class:`~trustchain.errors.InvalidKey` (or
    :class:`~trustchain.errors.MalformedData` for a broken hybrid structure).
    """

    algorithm: KemAlgorithm
    raw: bytes
    _x25519: x25519.X25519PublicKey | None = field(
        init=False, default=None, repr=False, compare=False, hash=False
    )
    _mlkem: mlkem.MLKEM1024PublicKey | None = field(
        init=False, default=None, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        algorithm = _kem_algorithm(self.algorithm)
        raw = bytes(self.raw)
        x_key: x25519.X25519PublicKey | None = None
        m_key: mlkem.MLKEM1024PublicKey | None = None
        if algorithm is KemAlgorithm.X25519:
            x_key = _load_x25519_public(raw, "X25519 public key")
        elif algorithm is KemAlgorithm.ML_KEM_1024:
            m_key = _load_mlkem_public(raw, "ML-KEM-1024 public key")
        else:
            pk_x, pk_m = _split_hybrid(raw, Kind.KEM_PUBLIC_KEY, "public key")
            x_key = _load_x25519_public(pk_x, "hybrid X25519 public key")
            m_key = _load_mlkem_public(pk_m, "hybrid ML-KEM-1024 public key")
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "raw", raw)
        object.__setattr__(self, "_x25519", x_key)
        object.__setattr__(self, "_mlkem", m_key)

    def encapsulate(self) -> tuple[bytes, KemCiphertext]:
        """A fresh ``(32-byte shared secret, ciphertext)`` for the holder of this key."""
        if self.algorithm is KemAlgorithm.X25519:
            secret, enc = _dhkem_encapsulate(self.raw, x25519.X25519PrivateKey.generate())
            return secret, KemCiphertext(self.algorithm, enc)
        if self.algorithm is KemAlgorithm.ML_KEM_1024:
            secret, ct = self._mlkem_key().encapsulate()
            return secret, KemCiphertext(self.algorithm, ct)
        pk_x, pk_m = _split_hybrid(self.raw, Kind.KEM_PUBLIC_KEY, "public key")
        ephemeral = x25519.X25519PrivateKey.generate()
        ct_x = ephemeral.public_key().public_bytes_raw()
        ss_x = _x25519_shared(ephemeral, pk_x, InvalidKey, "the hybrid X25519 public key")
        ss_m, ct_m = self._mlkem_key().encapsulate()
        secret = _combine(ss_m, ss_x, ct_x, pk_x, ct_m, pk_m)
        return secret, KemCiphertext(self.algorithm, _join_hybrid(Kind.KEM_CIPHERTEXT, ct_x, ct_m))

    def _mlkem_key(self) -> mlkem.MLKEM1024PublicKey:
        if self._mlkem is None:  # pragma: no cover - __post_init__ sets it for these algorithms
            raise AlgorithmMismatch(f"{self.algorithm.label} has no ML-KEM component")
        return self._mlkem

    def to_bytes(self) -> bytes:
        """The ``Kind.KEM_PUBLIC_KEY`` envelope."""
        return encoding.encode(Kind.KEM_PUBLIC_KEY, self.algorithm, self.raw)

    @classmethod
    def from_bytes(cls, data: bytes) -> KemPublicKey:
        """Parse a ``Kind.KEM_PUBLIC_KEY`` envelope (MalformedData/InvalidKey/UnknownAlgorithm)."""
        alg_id, body = encoding.decode(data, Kind.KEM_PUBLIC_KEY)
        return cls(_kem_algorithm(alg_id), body)

    @classmethod
    def from_raw(cls, algorithm: KemAlgorithm, raw: bytes) -> KemPublicKey:
        """The public key of ``algorithm`` whose raw encoding is ``raw`` (validated)."""
        return cls(algorithm, raw)

    @property
    def key_id(self) -> bytes:
        """SHA-256 of :meth:`to_bytes`: 32 bytes naming this key (and its algorithm)."""
        return hashlib.sha256(self.to_bytes()).digest()

    def __repr__(self) -> str:
        return f"KemPublicKey({self.algorithm.label}, key_id={self.key_id.hex()[:16]})"


class KemPrivateKey:
    """A KEM private key. Immutable; ``repr`` shows only the public key id.

    Build one with :meth:`generate`, :meth:`from_seed` or :meth:`from_bytes`. :meth:`to_bytes`
    returns the secret key material: protect it (the key store encrypts it). Equality compares
    the encodings in constant time.
    """

    __slots__ = ("_mlkem", "_public", "_x25519", "algorithm")

    algorithm: KemAlgorithm
    _x25519: x25519.X25519PrivateKey | None
    _mlkem: mlkem.MLKEM1024PrivateKey | None
    _public: KemPublicKey

    def __init__(
        self,
        algorithm: KemAlgorithm,
        *,
        x25519_key: x25519.X25519PrivateKey | None = None,
        mlkem_key: mlkem.MLKEM1024PrivateKey | None = None,
    ) -> None:
        algorithm = _kem_algorithm(algorithm)
        needs_x = algorithm in (KemAlgorithm.X25519, KemAlgorithm.HYBRID_X25519_ML_KEM_1024)
        needs_m = algorithm in (KemAlgorithm.ML_KEM_1024, KemAlgorithm.HYBRID_X25519_ML_KEM_1024)
        if needs_x != (x25519_key is not None) or needs_m != (mlkem_key is not None):
            raise InvalidKey(f"{algorithm.label} private key built from the wrong components")
        pk_x = x25519_key.public_key().public_bytes_raw() if x25519_key is not None else b""
        pk_m = mlkem_key.public_key().public_bytes_raw() if mlkem_key is not None else b""
        if algorithm is KemAlgorithm.X25519:
            public_raw = pk_x
        elif algorithm is KemAlgorithm.ML_KEM_1024:
            public_raw = pk_m
        else:
            public_raw = _join_hybrid(Kind.KEM_PUBLIC_KEY, pk_x, pk_m)
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "_x25519", x25519_key)
        object.__setattr__(self, "_mlkem", mlkem_key)
        object.__setattr__(self, "_public", KemPublicKey(algorithm, public_raw))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"KemPrivateKey is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"KemPrivateKey is immutable (cannot delete {name!r})")

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def generate(
        cls, algorithm: KemAlgorithm = KemAlgorithm.HYBRID_X25519_ML_KEM_1024
    ) -> KemPrivateKey:
        """A fresh random key pair."""
        algorithm = _kem_algorithm(algorithm)
        x_key = None
        m_key = None
        if algorithm is not KemAlgorithm.ML_KEM_1024:
            x_key = x25519.X25519PrivateKey.generate()
        if algorithm is not KemAlgorithm.X25519:
            try:
                m_key = mlkem.MLKEM1024PrivateKey.generate()
            except UnsupportedAlgorithm as exc:
                _backend_unavailable(exc)
        return cls(algorithm, x25519_key=x_key, mlkem_key=m_key)

    @classmethod
    def from_seed(cls, algorithm: KemAlgorithm, seed: bytes) -> KemPrivateKey:
        """The key pair determined by ``seed``; :class:`InvalidKey` if it has the wrong size.

        X25519: the 32-byte private key. ML-KEM-1024: the 64-byte FIPS 203 seed ``d || z``.
        Hybrid: X25519 private key (32) || ML-KEM-1024 seed (64).
        """
        algorithm = _kem_algorithm(algorithm)
        seed = bytes(seed)
        if algorithm is KemAlgorithm.X25519:
            return cls(algorithm, x25519_key=_load_x25519_private(seed))
        if algorithm is KemAlgorithm.ML_KEM_1024:
            return cls(algorithm, mlkem_key=_load_mlkem_private(seed))
        _require_size(seed, HYBRID_SEED_SIZE, "hybrid seed (X25519 key || d || z)", InvalidKey)
        return cls(
            algorithm,
            x25519_key=_load_x25519_private(seed[:X25519_SIZE]),
            mlkem_key=_load_mlkem_private(seed[X25519_SIZE:]),
        )

    # -- use ------------------------------------------------------------------------------

    def public_key(self) -> KemPublicKey:
        return self._public

    def decapsulate(self, ciphertext: KemCiphertext) -> bytes:
        """The 32-byte shared secret encapsulated in ``ciphertext``.

        :raises AlgorithmMismatch: the ciphertext is for another KEM algorithm.
        :raises DecryptionFailed: the X25519 part is a low-order point (all-zero secret).

        A well-formed ML-KEM ciphertext that was not made for this key returns an unrelated
        pseudo-random secret (FIPS 203 implicit rejection) instead of raising.
        """
        if ciphertext.algorithm is not self.algorithm:
            raise AlgorithmMismatch(
                f"{ciphertext.algorithm.label} ciphertext given to a {self.algorithm.label} key"
            )
        if self.algorithm is KemAlgorithm.X25519:
            enc = ciphertext.raw
            dh = _x25519_shared(self._x25519_key(), enc, DecryptionFailed, "the ciphertext")
            return _dhkem_extract_and_expand(dh, enc + self._public.raw)
        if self.algorithm is KemAlgorithm.ML_KEM_1024:
            return self._mlkem_decapsulate(ciphertext.raw)
        ct_x, ct_m = _split_hybrid(ciphertext.raw, Kind.KEM_CIPHERTEXT, "ciphertext")
        pk_x, pk_m = _split_hybrid(self._public.raw, Kind.KEM_PUBLIC_KEY, "public key")
        ss_x = _x25519_shared(self._x25519_key(), ct_x, DecryptionFailed, "the X25519 ciphertext")
        ss_m = self._mlkem_decapsulate(ct_m)
        return _combine(ss_m, ss_x, ct_x, pk_x, ct_m, pk_m)

    def _x25519_key(self) -> x25519.X25519PrivateKey:
        if self._x25519 is None:  # pragma: no cover - __init__ guarantees it
            raise AlgorithmMismatch(f"{self.algorithm.label} has no X25519 component")
        return self._x25519

    def _mlkem_decapsulate(self, ct: bytes) -> bytes:
        if self._mlkem is None:  # pragma: no cover - __init__ guarantees it
            raise AlgorithmMismatch(f"{self.algorithm.label} has no ML-KEM component")
        try:
            return self._mlkem.decapsulate(ct)
        except ValueError:  # only for a wrong size, which KemCiphertext already excludes
            raise MalformedData("not a valid ML-KEM-1024 ciphertext") from None

    # -- serialization --------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The ``Kind.KEM_PRIVATE_KEY`` envelope. SECRET."""
        x_raw = self._x25519.private_bytes_raw() if self._x25519 is not None else b""
        m_raw = self._mlkem.private_bytes_raw() if self._mlkem is not None else b""
        if self.algorithm is KemAlgorithm.X25519:
            body = x_raw
        elif self.algorithm is KemAlgorithm.ML_KEM_1024:
            body = m_raw
        else:
            body = _join_hybrid(Kind.KEM_PRIVATE_KEY, x_raw, m_raw)
        return encoding.encode(Kind.KEM_PRIVATE_KEY, self.algorithm, body)

    @classmethod
    def from_bytes(cls, data: bytes) -> KemPrivateKey:
        """Parse a ``Kind.KEM_PRIVATE_KEY`` envelope (MalformedData/InvalidKey/UnknownAlgorithm)."""
        alg_id, body = encoding.decode(data, Kind.KEM_PRIVATE_KEY)
        algorithm = _kem_algorithm(alg_id)
        if algorithm is KemAlgorithm.HYBRID_X25519_ML_KEM_1024:
            x_raw, m_raw = _split_hybrid(body, Kind.KEM_PRIVATE_KEY, "private key")
            return cls(
                algorithm,
                x25519_key=_load_x25519_private(x_raw),
                mlkem_key=_load_mlkem_private(m_raw),
            )
        return cls.from_seed(algorithm, body)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KemPrivateKey):
            return NotImplemented
        return hmac.compare_digest(self.to_bytes(), other.to_bytes())

    __hash__ = None  # type: ignore[assignment]  # secret material is not a dict key

    def __repr__(self) -> str:
        return (
            f"KemPrivateKey({self.algorithm.label}, "
            f"public key_id={self._public.key_id.hex()[:16]}, secret hidden)"
        )
