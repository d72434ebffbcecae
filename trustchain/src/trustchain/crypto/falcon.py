"""Falcon-1024 (NIST PQC round 3) behind interchangeable backends.

Encodings (the NIST round-3 / PQClean / liboqs ones, byte-compatible with the official KAT)::

    public key   1793 bytes   0x0A || h                  h: 1024 coefficients mod q, 14 bits each
    secret key   2305 bytes   0x5A || f || g || F        f, g: 5 bits each; F: 8 bits each
                                                         (signed, big-endian bit packing)
    signature    42..1462     0x3A || nonce (40) || compressed s2

All three headers are ``0x?0 + logn`` with ``logn = 10``. The signature is the *detached*
PQClean form; the NIST API's signed-message form (``sig_len || nonce || msg || 0x2A || s2``)
is not accepted: its header byte ``0x2A`` fails :func:`check_signature`.

Backends (:func:`get_backend`):

``pqclean``
    PQClean's portable C code through ``pqcrypto.sign.falcon_1024`` (``pqcrypto==0.4.*``).
    The default, and always installed with TrustChain.
``liboqs``
    liboqs through liboqs-python (``oqs.Signature("Falcon-1024")``). Offered only when a liboqs
    shared library is already installed (see :func:`find_liboqs`): importing ``oqs`` without one
    makes liboqs-python download and build liboqs, which TrustChain never lets happen.

Every backend entry point validates sizes and header bytes before any C call, so malformed input
raises :class:`~trustchain.errors.InvalidKey` / :class:`~trustchain.errors.MalformedData`
instead of reaching C (pqcrypto itself raises a bare ``ValueError`` for a public key of the
wrong size or a signature longer than 1462 bytes, and returns ``False`` for everything else).

PQClean (and c-fn-dsa) *loop forever* when asked to sign with a secret key that is well formed
but not a real Falcon key (for example ``0x5A`` followed by all ``0xFF``): the signing loop
never finds a short enough vector. :func:`check_key_pair` therefore checks, in pure Python, the
algebra every genuine key pair satisfies; TrustChain runs it whenever it loads a secret key.
"""

from __future__ import annotations

import array
import ctypes
import ctypes.util
import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any, Final, Protocol

from trustchain.crypto.encoding import check_sized
from trustchain.errors import (
    BackendUnavailable,
    InvalidKey,
    UnknownAlgorithm,
)

LOGN: Final = 10
N: Final = 1 << LOGN
Q: Final = 12289

PUBLIC_KEY_SIZE: Final = 1793
PUBLIC_KEY_HEADER: Final = 0x00 + LOGN
SECRET_KEY_SIZE: Final = 2305
SECRET_KEY_HEADER: Final = 0x50 + LOGN
SIGNATURE_HEADER: Final = 0x30 + LOGN
#: Header byte of the NIST API's signed-message form; never valid in a detached signature.
NIST_SIGNED_MESSAGE_HEADER: Final = 0x20 + LOGN
NONCE_SIZE: Final = 40
#: Header, nonce and at least one byte of compressed ``s2``.
MIN_SIGNATURE_SIZE: Final = 1 + NONCE_SIZE + 1
MAX_SIGNATURE_SIZE: Final = 1462

#: Bits per coefficient of f and g, and of F, in the secret key (logn = 10; FN-DSA too).
FG_BITS: Final = 5
BIG_F_BITS: Final = 8
_FG_SIZE: Final = FG_BITS * N // 8
#: Falcon key generation keeps (f, g) only if ||(f, g)||^2 < 1.17^2 * q, i.e. at most 16822.
_MAX_FG_SQNORM: Final = 16822
#: |G| must fit the 8-bit field F uses (PQClean rejects anything else).
_MAX_BIG_G: Final = 127

DEFAULT_BACKEND: Final = "pqclean"
#: Environment variable naming the backend :func:`get_backend` picks when given ``None``.
BACKEND_ENV: Final = "TRUSTCHAIN_FALCON_BACKEND"
BACKENDS: Final = ("pqclean", "liboqs")


# --- size and header checks -------------------------------------------------------------------


def check_public_key(public_key: bytes) -> None:
    """Raise :class:`InvalidKey` unless ``public_key`` has the size and header of a public key.

    The 14-bit coefficients are not range-checked here; a key with a coefficient >= q is
    rejected by the backend at verification (it verifies nothing).
    """
    check_sized(
        public_key,
        what="Falcon-1024 public key",
        sizes=range(PUBLIC_KEY_SIZE, PUBLIC_KEY_SIZE + 1),
        header=PUBLIC_KEY_HEADER,
        error=InvalidKey,
    )


def check_secret_key(secret_key: bytes) -> None:
    """Raise :class:`InvalidKey` unless ``secret_key`` has the size and header of a secret key."""
    check_sized(
        secret_key,
        what="Falcon-1024 secret key",
        sizes=range(SECRET_KEY_SIZE, SECRET_KEY_SIZE + 1),
        header=SECRET_KEY_HEADER,
        error=InvalidKey,
    )


def check_signature(signature: bytes) -> None:
    """Raise :class:`MalformedData` unless ``signature`` is shaped like a detached signature."""
    nist = bool(signature) and signature[0] == NIST_SIGNED_MESSAGE_HEADER
    check_sized(
        signature,
        what="Falcon-1024 signature",
        sizes=range(MIN_SIGNATURE_SIZE, MAX_SIGNATURE_SIZE + 1),
        header=SIGNATURE_HEADER,
        hint=" (0x2a is the NIST signed-message header, not a detached signature)" if nist else "",
    )


# --- key pair consistency (pure Python) -------------------------------------------------------


def decode_small_poly(data: bytes, bits: int, *, lsb_first: bool = False) -> list[int]:
    """Decode ``8 * len(data) // bits`` two's-complement ``bits``-bit coefficients.

    Falcon round 3 (``trim_i8``) packs bits most-significant first; c-fn-dsa (FN-DSA) packs them
    least-significant first (``lsb_first=True``). The value -2^(bits-1) is not a valid encoding
    in either and raises :class:`InvalidKey`.
    """
    width = len(data) * 8
    if lsb_first:
        text = format(int.from_bytes(data, "little"), f"0{width}b")[::-1]
        values = [int(text[i : i + bits][::-1], 2) for i in range(0, width, bits)]
    else:
        text = format(int.from_bytes(data, "big"), f"0{width}b")
        values = [int(text[i : i + bits], 2) for i in range(0, width, bits)]
    forbidden = 1 << (bits - 1)
    if forbidden in values:
        raise InvalidKey("secret key holds a forbidden coefficient encoding")
    wrap = 1 << bits
    return [v - wrap if v > forbidden else v for v in values]


def _decode_modq(data: bytes) -> list[int]:
    """Decode N 14-bit values mod q, most-significant bit first (round-3 ``modq_decode``)."""
    text = format(int.from_bytes(data, "big"), f"0{len(data) * 8}b")
    values = [int(text[i : i + 14], 2) for i in range(0, len(text), 14)]
    if max(values) >= Q:
        raise InvalidKey("Falcon-1024 public key holds a coefficient >= q")
    return values


_SLOT_BITS: Final = 64
_SLOT_BIAS: Final = 1 << (_SLOT_BITS - 1)
_ONES_N: Final = int.from_bytes(array.array("Q", [1] * N).tobytes(), "little")
_ONES_2N: Final = int.from_bytes(array.array("Q", [1] * (2 * N)).tobytes(), "little")


def _pack(poly: list[int]) -> int:
    """Kronecker substitution: sum(poly[i] * 2^(64 i)) for small signed coefficients."""
    slots = array.array("Q", [c + _SLOT_BIAS for c in poly])
    if sys.byteorder == "big":
        slots.byteswap()
    return int.from_bytes(slots.tobytes(), "little") - _SLOT_BIAS * _ONES_N


def _negacyclic_product(a: list[int], b: list[int]) -> list[int]:
    """Exact product of ``a`` and ``b`` in Z[x]/(x^N + 1).

    One big-integer multiplication (Kronecker substitution, 64-bit slots). Correct while every
    coefficient of the plain product stays below 2^63 in magnitude, far above what Falcon's
    polynomials (|coefficient| < 2^14) can reach with N = 1024.
    """
    product = _pack(a) * _pack(b) + _SLOT_BIAS * _ONES_2N
    slots = array.array("Q")
    slots.frombytes(product.to_bytes(2 * N * 8, "little"))
    if sys.byteorder == "big":
        slots.byteswap()
    plain = [s - _SLOT_BIAS for s in slots]
    return [plain[i] - plain[i + N] for i in range(N)]


def _primitive_root() -> int:
    """The smallest generator of the multiplicative group mod q (q - 1 = 2^12 * 3)."""
    return next(
        c for c in range(2, Q) if pow(c, (Q - 1) // 2, Q) != 1 and pow(c, (Q - 1) // 3, Q) != 1
    )


#: A primitive 2N-th root of unity mod q: x^N + 1 splits over its odd powers.
_PSI: Final = pow(_primitive_root(), (Q - 1) // (2 * N), Q)


def _cyclic_ntt(values: list[int], root: int) -> list[int]:
    """Length-N number-theoretic transform mod q (iterative radix 2); ``root`` has order N."""
    a = list(values)
    j = 0
    for i in range(1, N):  # bit-reversal permutation
        bit = N >> 1
        while j & bit:
            j ^= bit
            bit >>= 1
        j |= bit
        if i < j:
            a[i], a[j] = a[j], a[i]
    length = 2
    while length <= N:
        half = length // 2
        step = pow(root, N // length, Q)
        twiddles = [pow(step, k, Q) for k in range(half)]
        for start in range(0, N, length):
            for k in range(half):
                u = a[start + k]
                v = a[start + k + half] * twiddles[k] % Q
                a[start + k] = (u + v) % Q
                a[start + k + half] = (u - v) % Q
        length *= 2
    return a


def _inverse_mod_q(poly: list[int]) -> list[int]:
    """poly^-1 in Z_q[x]/(x^N + 1); :class:`InvalidKey` if ``poly`` is not invertible."""
    psi_inv = pow(_PSI, Q - 2, Q)
    twist = [pow(_PSI, i, Q) for i in range(N)]
    untwist = [pow(psi_inv, i, Q) for i in range(N)]
    # Evaluating at the odd powers of psi = cyclic transform of the twisted coefficients.
    evaluations = _cyclic_ntt([c * t % Q for c, t in zip(poly, twist, strict=True)], _PSI**2 % Q)
    if 0 in evaluations:
        raise InvalidKey("secret key f is not invertible mod q")
    inverted = [pow(e, Q - 2, Q) for e in evaluations]
    coefficients = _cyclic_ntt(inverted, pow(_PSI**2 % Q, Q - 2, Q))
    n_inv = pow(N, Q - 2, Q)
    return [c * n_inv % Q * u % Q for c, u in zip(coefficients, untwist, strict=True)]


def _centred(values: list[int]) -> list[int]:
    reduced = [v % Q for v in values]
    return [v - Q if v > Q // 2 else v for v in reduced]


def check_ntru_basis(
    f: list[int], g: list[int], big_f: list[int], *, h: list[int] | None = None
) -> None:
    """Raise :class:`InvalidKey` unless (f, g, F) is a genuine Falcon / FN-DSA secret basis.

    1. ||(f, g)||^2 <= 16822, the bound key generation enforces;
    2. if the public polynomial ``h`` is given (coefficient form): h * f = g (mod q), i.e. the
       public key belongs to the secret key;
    3. G = g * F / f (mod q) — computed as F * h when ``h`` is given, else with a
       number-theoretic transform — centred, fits in [-127, 127], and f*G - g*F = q exactly
       over Z[x]/(x^N + 1): (f, g, F, G) is an NTRU basis, so signing terminates.

    The second Gram-Schmidt bound of key generation is not re-checked (it needs a complex FFT):
    a maliciously crafted key that passes might still sign slowly. Secret keys come from
    TrustChain's own authenticated storage; these checks catch corruption.
    """
    if sum(c * c for c in f) + sum(c * c for c in g) > _MAX_FG_SQNORM:
        raise InvalidKey("secret key (f, g) is longer than key generation allows")
    if h is not None:
        hf = _negacyclic_product(h, f)
        if any((x - y) % Q for x, y in zip(hf, g, strict=True)):
            raise InvalidKey("Falcon-1024 public key does not belong to the secret key")
        big_g = _centred(_negacyclic_product(big_f, h))
    else:
        g_big_f = [c % Q for c in _negacyclic_product(g, big_f)]
        big_g = _centred(_negacyclic_product(g_big_f, _inverse_mod_q(f)))
    if max(abs(c) for c in big_g) > _MAX_BIG_G:
        raise InvalidKey("secret key F does not complete an NTRU basis")
    f_big_g = _negacyclic_product(f, big_g)
    g_big_f = _negacyclic_product(g, big_f)
    ntru = [x - y for x, y in zip(f_big_g, g_big_f, strict=True)]
    if ntru[0] != Q or any(ntru[1:]):
        raise InvalidKey("secret key fails the NTRU equation f*G - g*F = q")


def check_key_pair(secret_key: bytes, public_key: bytes) -> None:
    """Raise :class:`InvalidKey` unless ``secret_key`` is a genuine key for ``public_key``.

    Sizes and headers first, then :func:`check_ntru_basis` with h from the public key.
    """
    check_secret_key(secret_key)
    check_public_key(public_key)
    f = decode_small_poly(secret_key[1 : 1 + _FG_SIZE], FG_BITS)
    g = decode_small_poly(secret_key[1 + _FG_SIZE : 1 + 2 * _FG_SIZE], FG_BITS)
    big_f = decode_small_poly(secret_key[1 + 2 * _FG_SIZE :], BIG_F_BITS)
    check_ntru_basis(f, g, big_f, h=_decode_modq(public_key[1:]))


# --- backends ---------------------------------------------------------------------------------


class FalconBackend(Protocol):
    """One implementation of Falcon-1024 (the encodings above).

    ``verify`` returns ``False`` for a signature that does not verify; the public
    :meth:`trustchain.crypto.signatures.VerifyKey.verify` turns that into
    :class:`~trustchain.errors.InvalidSignature`. Malformed sizes or headers raise.
    """

    @property
    def name(self) -> str: ...

    def generate_keypair(self) -> tuple[bytes, bytes]:
        """A fresh ``(public key, secret key)``."""
        ...

    def sign(self, secret_key: bytes, message: bytes) -> bytes:
        """A detached signature of ``message``."""
        ...

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is a valid signature of ``message`` under ``public_key``."""
        ...


class PqcleanBackend:
    """Falcon-1024 from PQClean, through ``pqcrypto.sign.falcon_1024``."""

    def __init__(self) -> None:
        try:
            self._impl: Any = importlib.import_module("pqcrypto.sign.falcon_1024")
        except ImportError as exc:
            raise BackendUnavailable(f"Falcon backend 'pqclean' needs pqcrypto: {exc}") from exc

    @property
    def name(self) -> str:
        return "pqclean"

    def generate_keypair(self) -> tuple[bytes, bytes]:
        public_key, secret_key = self._impl.generate_keypair()
        return _checked_keypair(bytes(public_key), bytes(secret_key))

    def sign(self, secret_key: bytes, message: bytes) -> bytes:
        check_secret_key(secret_key)
        try:
            signature = bytes(self._impl.sign(bytes(secret_key), bytes(message)))
        except RuntimeError as exc:  # PQClean's crypto_sign_signature returned an error
            raise InvalidKey(f"Falcon-1024 secret key cannot sign: {exc}") from exc
        check_signature(signature)
        return signature

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        check_public_key(public_key)
        check_signature(signature)
        return bool(self._impl.verify(bytes(public_key), bytes(message), bytes(signature)))


#: liboqs's name of the algorithm (same encodings as PQClean: liboqs imports PQClean's code).
OQS_ALGORITHM: Final = "Falcon-1024"


def liboqs_search_paths() -> list[Path]:
    """The files liboqs-python tries besides the system library path, in its own order.

    ``$OQS_INSTALL_PATH`` (default ``~/_oqs``) ``/lib`` and ``/lib64`` on Unix, ``/bin`` on
    Windows, with the platform's file name for the library.
    """
    root = Path(os.environ.get("OQS_INSTALL_PATH") or Path.home() / "_oqs")
    if sys.platform == "win32":
        return [root / "bin" / "oqs.dll", root / "bin" / "liboqs.dll"]
    filename = "liboqs.dylib" if sys.platform == "darwin" else "liboqs.so"
    return [root / "lib" / filename, root / "lib64" / filename]


def find_liboqs() -> str | None:
    """The liboqs shared library liboqs-python would load, or ``None`` if there is none.

    Looks where liboqs-python looks (``ctypes.util.find_library`` for ``oqs`` / ``liboqs``, then
    :func:`liboqs_search_paths`) and loads the candidate with :mod:`ctypes` to be sure it is
    usable, all *without* importing ``oqs`` (whose import, lacking a library, downloads and
    builds one).
    """
    candidates: list[str] = []
    for name in ("oqs", "liboqs"):
        found = ctypes.util.find_library(name)
        if found:
            candidates.append(found)
    candidates.extend(str(p) for p in liboqs_search_paths() if p.is_file())
    for candidate in candidates:
        try:
            ctypes.CDLL(candidate)
        except OSError:
            continue
        return candidate
    return None


def liboqs_unavailable_reason() -> str | None:
    """Why the liboqs backend cannot be used here (one line), or ``None`` if it can.

    Probes for the shared library first (:func:`find_liboqs`), then for liboqs-python; never
    imports ``oqs``.
    """
    if find_liboqs() is None:
        searched = ", ".join(str(p) for p in liboqs_search_paths())
        return f"no liboqs shared library found (system library path, {searched})"
    if importlib.util.find_spec("oqs") is None:
        return "liboqs-python (module 'oqs') is not installed"
    return None


class LiboqsBackend:
    """Falcon-1024 from liboqs, through liboqs-python; only where liboqs is installed."""

    def __init__(self) -> None:
        reason = liboqs_unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"Falcon backend 'liboqs' unavailable: {reason}")
        try:
            oqs: types.ModuleType = importlib.import_module("oqs")
        except (ImportError, OSError, RuntimeError, SystemExit) as exc:
            # liboqs-python calls sys.exit() when it cannot load the library after all.
            raise BackendUnavailable(f"Falcon backend 'liboqs' failed to load: {exc!r}") from exc
        if OQS_ALGORITHM not in oqs.get_enabled_sig_mechanisms():
            raise BackendUnavailable(f"this liboqs build does not enable {OQS_ALGORITHM}")
        self._oqs: Any = oqs

    @property
    def name(self) -> str:
        return "liboqs"

    def generate_keypair(self) -> tuple[bytes, bytes]:
        with self._oqs.Signature(OQS_ALGORITHM) as signer:
            public_key = signer.generate_keypair()
            secret_key = signer.export_secret_key()
        if not isinstance(public_key, bytes) or not isinstance(secret_key, bytes):
            raise BackendUnavailable("liboqs Falcon-1024 key generation failed")
        return _checked_keypair(public_key, secret_key)

    def sign(self, secret_key: bytes, message: bytes) -> bytes:
        check_secret_key(secret_key)
        try:
            with self._oqs.Signature(OQS_ALGORITHM, bytes(secret_key)) as signer:
                signature = signer.sign(bytes(message))
        except RuntimeError as exc:  # newer liboqs-python raise on OQS_ERROR
            raise InvalidKey(f"Falcon-1024 secret key cannot sign: {exc}") from exc
        if not isinstance(signature, bytes):  # older liboqs-python return 0 on OQS_ERROR
            raise InvalidKey("Falcon-1024 secret key cannot sign (liboqs returned an error)")
        check_signature(signature)
        return signature

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        check_public_key(public_key)
        check_signature(signature)
        with self._oqs.Signature(OQS_ALGORITHM) as verifier:
            return bool(verifier.verify(bytes(message), bytes(signature), bytes(public_key)))


def _checked_keypair(public_key: bytes, secret_key: bytes) -> tuple[bytes, bytes]:
    check_public_key(public_key)
    check_secret_key(secret_key)
    return public_key, secret_key


_instances: dict[str, FalconBackend] = {}


def available_backends() -> tuple[str, ...]:
    """Names of the backends usable on this host, default first. Never imports ``oqs``."""
    names: list[str] = []
    if importlib.util.find_spec("pqcrypto") is not None:
        names.append("pqclean")
    if liboqs_unavailable_reason() is None:
        names.append("liboqs")
    return tuple(names)


def get_backend(name: str | None = None) -> FalconBackend:
    """The backend called ``name``; ``None`` means ``$TRUSTCHAIN_FALCON_BACKEND`` or ``pqclean``.

    Raises :class:`UnknownAlgorithm` for a name that is not in :data:`BACKENDS` and
    :class:`BackendUnavailable` for a known backend that is not installed here.
    """
    if name is None:
        name = os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND
    if name not in BACKENDS:
        raise UnknownAlgorithm(f"unknown Falcon backend {name!r}; known: {', '.join(BACKENDS)}")
    backend = _instances.get(name)
    if backend is None:
        backend = PqcleanBackend() if name == "pqclean" else LiboqsBackend()
        _instances[name] = backend
    return backend
