"""Signatures: Ed25519, Falcon-1024, FN-DSA-1024, and the Ed25519 + Falcon-1024 hybrid.

Serialized forms (format version 1)
===================================

Every key and signature is a :mod:`trustchain.crypto.encoding` envelope::

    version (1 byte, = 1) || kind (1) || algorithm id (2, big-endian) || body length N (4) || body

with kind ``SIGNING_PUBLIC_KEY`` (1), ``SIGNING_PRIVATE_KEY`` (2) or ``SIGNATURE`` (3). The body
of each algorithm (``env(kind, alg, x)`` is a component envelope with the component's own
algorithm id, so 8 header bytes + x)::

    algorithm (id)                    public key body        private key body (SECRET)
    ed25519 (0x0001)                  32-byte RFC 8032 key   32-byte RFC 8032 private key (seed)
    falcon-1024 (0x0002)              1793-byte pk           sk (2305) || pk (1793) = 4098 bytes
    fn-dsa-1024 (0x0003)              1793-byte vk           sk (2369) || vk (1793) = 4162 bytes
    hybrid-ed25519-falcon-1024        env(pub, ed25519)      env(priv, ed25519)
      (0x0101)                        || env(pub, falcon)    || env(priv, falcon)
                                      = 40 + 1801 = 1841     = 40 + 4106 = 4146 bytes

    algorithm                         signature body
    ed25519                           64 bytes R || S (RFC 8032)
    falcon-1024                       42..1462 bytes: 0x3A || nonce (40) || compressed s2
    fn-dsa-1024                       1280 bytes: 0x3A || nonce (40) || compressed s2 || padding
    hybrid-ed25519-falcon-1024        env(sig, ed25519) || env(sig, falcon-1024)  (72 + 8 + n)

Falcon-1024 keys and signatures are the NIST round-3 / PQClean encodings described in
:mod:`trustchain.crypto.falcon`; FN-DSA-1024's are py-fn-dsa's (:mod:`trustchain.crypto.fndsa`).
A Falcon private key stores the public key next to the secret key because PQClean offers no way
to derive one from the other; FN-DSA does the same for the same reason. Loading either checks
that the two belong together and form a genuine NTRU basis
(:func:`trustchain.crypto.falcon.check_key_pair`, :func:`trustchain.crypto.fndsa.check_key_pair`):
the C signers loop forever on a well-formed but bogus secret key. A hybrid's component
envelopes must be exactly Ed25519 then Falcon-1024, with nothing after them.

Hybrid signatures
=================

Both components sign the same message representative ``HYBRID_DOMAIN || message``, where::

    HYBRID_DOMAIN = b"TrustChain hybrid signature v1\\x00hybrid-ed25519-falcon-1024\\x00"

and the hybrid verifies only if both components do. As with the message representative of
the IETF composite signatures draft (draft-ietf-lamps-pq-composite-sigs: a fixed prefix and a
per-algorithm label signed by every component), the domain string means a component cannot be
stripped out of a hybrid and passed off as a stand-alone Ed25519 or Falcon-1024 signature of
``message``: stand-alone signatures sign ``message`` as is (so the NIST KAT verifies through
:meth:`VerifyKey.verify`), and a stripped component verifies only for the different message
``HYBRID_DOMAIN || message``.

Component keys
==============

``SigningKey.components()`` / ``VerifyKey.components()`` give a hybrid's Ed25519 and
Falcon-1024 keys as stand-alone keys (``from_components`` is the inverse). TrustChain uses them
on their own in exactly one place: hybrid X.509 certificates and CRLs
(:mod:`trustchain.ca.hybrid`), where the Ed25519 component signs the DER ``TBSCertificate`` /
``TBSCertList`` and the Falcon-1024 component the DER preTBS structure (ITU-T X.509 10/2019
§7.2.2). Those messages are DER SEQUENCEs, so they begin with the byte ``0x30``, while every
hybrid message representative begins with ``HYBRID_DOMAIN``'s ``b"T"`` (``0x54``): a hybrid
component signature is never a valid certificate signature, nor the other way round. Any
further stand-alone use of a component must likewise sign messages that cannot begin with
``HYBRID_DOMAIN``.

Errors
======

* Parsing (``from_bytes``, ``from_raw``, and the ``Signature`` / ``VerifyKey`` constructors):
  truncated or trailing bytes, wrong format version, wrong kind, a malformed hybrid body, or a
  signature of the wrong size or header byte (Falcon-1024 ``0x3A``; the NIST signed-message
  header ``0x2A`` included) raise :class:`~trustchain.errors.MalformedData`; a key body of the
  wrong size or header raises :class:`~trustchain.errors.InvalidKey` (a ``MalformedData``); an
  algorithm id that is not a signature algorithm raises
  :class:`~trustchain.errors.UnknownAlgorithm`.
* :meth:`VerifyKey.verify`: a signature of another algorithm raises
  :class:`~trustchain.errors.AlgorithmMismatch`; one that does not verify (any changed byte of
  the message, or of the signature or public key past their size and header checks; for a
  hybrid, either component) raises :class:`~trustchain.errors.InvalidSignature`.
* A missing optional implementation (py-fn-dsa, liboqs) raises
  :class:`~trustchain.errors.BackendUnavailable`.

Falcon-1024 signing and verification go through :func:`trustchain.crypto.falcon.get_backend`:
``SigningKey.generate`` / ``from_bytes`` take a ``falcon_backend`` name, and verification uses
the default (``$TRUSTCHAIN_FALCON_BACKEND``, else ``pqclean``). Every backend produces and accepts
the same bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final, Protocol

from cryptography.exceptions import InvalidSignature as _CryptographyInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from trustchain.crypto import encoding, falcon, fndsa
from trustchain.crypto.algorithms import SignatureAlgorithm, from_id
from trustchain.crypto.encoding import Kind
from trustchain.errors import (
    AlgorithmMismatch,
    InvalidKey,
    InvalidSignature,
    MalformedData,
)

#: Prefix of the message representative both components of a hybrid sign (see module docs).
HYBRID_DOMAIN: Final = (
    b"TrustChain hybrid signature v1\x00"
    + SignatureAlgorithm.HYBRID_ED25519_FALCON_1024.label.encode("ascii")
    + b"\x00"
)
#: The components of a hybrid, in serialization order.
HYBRID_COMPONENTS: Final = (SignatureAlgorithm.ED25519, SignatureAlgorithm.FALCON_1024)

ED25519_PUBLIC_KEY_SIZE: Final = 32
ED25519_PRIVATE_KEY_SIZE: Final = 32
ED25519_SIGNATURE_SIZE: Final = 64
FALCON_PRIVATE_BODY_SIZE: Final = falcon.SECRET_KEY_SIZE + falcon.PUBLIC_KEY_SIZE
FN_DSA_PRIVATE_BODY_SIZE: Final = fndsa.SIGN_KEY_SIZE + fndsa.VERIFY_KEY_SIZE


def _signature_algorithm(value: int) -> SignatureAlgorithm:
    """``value`` as a :class:`SignatureAlgorithm`; :class:`UnknownAlgorithm` if it is none."""
    return from_id(SignatureAlgorithm, int(value))


def _split_hybrid(body: bytes, kind: Kind) -> tuple[bytes, bytes]:
    """The component bodies (Ed25519, Falcon-1024) of a hybrid body of ``kind``."""
    ed25519_body, falcon_body = encoding.split_components(
        body, kind, HYBRID_COMPONENTS, kind.name.lower().replace("_", " ")
    )
    return ed25519_body, falcon_body


def _join_hybrid(kind: Kind, ed25519_body: bytes, falcon_body: bytes) -> bytes:
    return encoding.join_components(
        kind,
        [(SignatureAlgorithm.ED25519, ed25519_body), (SignatureAlgorithm.FALCON_1024, falcon_body)],
    )


# --- values -----------------------------------------------------------------------------------


def _check_public_raw(algorithm: SignatureAlgorithm, raw: bytes) -> None:
    if algorithm is SignatureAlgorithm.ED25519:
        if len(raw) != ED25519_PUBLIC_KEY_SIZE:
            raise InvalidKey(
                f"Ed25519 public key must be {ED25519_PUBLIC_KEY_SIZE} bytes, got {len(raw)}"
            )
    elif algorithm is SignatureAlgorithm.FALCON_1024:
        falcon.check_public_key(raw)
    elif algorithm is SignatureAlgorithm.FN_DSA_1024:
        fndsa.check_verify_key(raw)
    else:
        try:
            ed25519_raw, falcon_raw = _split_hybrid(raw, Kind.SIGNING_PUBLIC_KEY)
        except MalformedData as exc:
            raise InvalidKey(f"malformed hybrid public key: {exc}") from exc
        _check_public_raw(SignatureAlgorithm.ED25519, ed25519_raw)
        _check_public_raw(SignatureAlgorithm.FALCON_1024, falcon_raw)


def _check_signature_raw(algorithm: SignatureAlgorithm, raw: bytes) -> None:
    if algorithm is SignatureAlgorithm.ED25519:
        if len(raw) != ED25519_SIGNATURE_SIZE:
            raise MalformedData(
                f"Ed25519 signature must be {ED25519_SIGNATURE_SIZE} bytes, got {len(raw)}"
            )
    elif algorithm is SignatureAlgorithm.FALCON_1024:
        falcon.check_signature(raw)
    elif algorithm is SignatureAlgorithm.FN_DSA_1024:
        fndsa.check_signature(raw)
    else:
        ed25519_raw, falcon_raw = _split_hybrid(raw, Kind.SIGNATURE)
        _check_signature_raw(SignatureAlgorithm.ED25519, ed25519_raw)
        _check_signature_raw(SignatureAlgorithm.FALCON_1024, falcon_raw)


def _verifies(
    algorithm: SignatureAlgorithm, public_raw: bytes, signature_raw: bytes, message: bytes
) -> bool:
    """Whether a single-algorithm signature verifies (raw forms, already validated)."""
    if algorithm is SignatureAlgorithm.ED25519:
        try:
            Ed25519PublicKey.from_public_bytes(public_raw).verify(signature_raw, message)
        except _CryptographyInvalidSignature:
            return False
        return True
    if algorithm is SignatureAlgorithm.FALCON_1024:
        return falcon.get_backend().verify(public_raw, message, signature_raw)
    if algorithm is SignatureAlgorithm.FN_DSA_1024:
        return fndsa.verify(public_raw, message, signature_raw)
    raise AlgorithmMismatch(f"{algorithm.label} is not a single signature algorithm")


@dataclass(frozen=True)
class Signature:
    """A signature: its algorithm and the algorithm's raw signature (see the module docs).

    Constructing one validates ``raw``'s size and header (:class:`MalformedData`).
    """

    algorithm: SignatureAlgorithm
    raw: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "algorithm", _signature_algorithm(self.algorithm))
        object.__setattr__(self, "raw", bytes(self.raw))
        _check_signature_raw(self.algorithm, self.raw)

    def to_bytes(self) -> bytes:
        """The ``SIGNATURE`` envelope."""
        return encoding.encode(Kind.SIGNATURE, self.algorithm, self.raw)

    @classmethod
    def from_bytes(cls, data: bytes) -> Signature:
        """Parse a ``SIGNATURE`` envelope (:class:`MalformedData` / :class:`UnknownAlgorithm`)."""
        algorithm, body = encoding.decode(bytes(data), Kind.SIGNATURE)
        return cls(_signature_algorithm(algorithm), body)


@dataclass(frozen=True)
class VerifyKey:
    """A public signature key: its algorithm and raw public key (see the module docs).

    For the hybrid, ``raw`` is the two component public-key envelopes. Constructing one
    validates ``raw``'s size and header (:class:`InvalidKey`).
    """

    algorithm: SignatureAlgorithm
    raw: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "algorithm", _signature_algorithm(self.algorithm))
        object.__setattr__(self, "raw", bytes(self.raw))
        _check_public_raw(self.algorithm, self.raw)

    def verify(self, signature: Signature, message: bytes) -> None:
        """Return if ``signature`` is valid for ``message``, else raise.

        :class:`AlgorithmMismatch` if the signature is of another algorithm than this key,
        :class:`InvalidSignature` if it does not verify (for a hybrid: if either component
        does not verify over ``HYBRID_DOMAIN || message``).
        """
        if signature.algorithm is not self.algorithm:
            raise AlgorithmMismatch(
                f"{signature.algorithm.label} signature given to a {self.algorithm.label} key"
            )
        message = bytes(message)
        if self.algorithm is not SignatureAlgorithm.HYBRID_ED25519_FALCON_1024:
            if not _verifies(self.algorithm, self.raw, signature.raw, message):
                raise InvalidSignature(f"{self.algorithm.label} signature does not verify")
            return
        represented = HYBRID_DOMAIN + message
        public_parts = _split_hybrid(self.raw, Kind.SIGNING_PUBLIC_KEY)
        signature_parts = _split_hybrid(signature.raw, Kind.SIGNATURE)
        failed = [
            component.label
            for component, public_raw, signature_raw in zip(
                HYBRID_COMPONENTS, public_parts, signature_parts, strict=True
            )
            if not _verifies(component, public_raw, signature_raw, represented)
        ]
        if failed:
            which = (
                f"the {failed[0]} component does not verify"
                if len(failed) == 1
                else f"neither the {failed[0]} nor the {failed[1]} component verifies"
            )
            raise InvalidSignature(f"{self.algorithm.label} signature: {which}")

    def to_bytes(self) -> bytes:
        """The ``SIGNING_PUBLIC_KEY`` envelope."""
        return encoding.encode(Kind.SIGNING_PUBLIC_KEY, self.algorithm, self.raw)

    @classmethod
    def from_bytes(cls, data: bytes) -> VerifyKey:
        """Parse a ``SIGNING_PUBLIC_KEY`` envelope."""
        algorithm, body = encoding.decode(bytes(data), Kind.SIGNING_PUBLIC_KEY)
        return cls(_signature_algorithm(algorithm), body)

    @classmethod
    def from_raw(cls, algorithm: SignatureAlgorithm, raw: bytes) -> VerifyKey:
        """The key of ``algorithm`` whose raw public key is ``raw`` (validated)."""
        return cls(algorithm, raw)

    @property
    def key_id(self) -> bytes:
        """SHA-256 of :meth:`to_bytes` (32 bytes)."""
        return hashlib.sha256(self.to_bytes()).digest()

    def components(self) -> tuple[VerifyKey, VerifyKey]:
        """A hybrid key's component keys: ``(Ed25519 key, Falcon-1024 key)``.

        Each component verifies stand-alone signatures (over the message as is, no
        ``HYBRID_DOMAIN``); see "Component keys" in the module docs.
        :class:`AlgorithmMismatch` for a key that is not a hybrid.
        """
        if self.algorithm is not SignatureAlgorithm.HYBRID_ED25519_FALCON_1024:
            raise AlgorithmMismatch(f"{self.algorithm.label} key has no components")
        ed25519_raw, falcon_raw = _split_hybrid(self.raw, Kind.SIGNING_PUBLIC_KEY)
        return (
            VerifyKey(SignatureAlgorithm.ED25519, ed25519_raw),
            VerifyKey(SignatureAlgorithm.FALCON_1024, falcon_raw),
        )

    @classmethod
    def from_components(cls, ed25519: VerifyKey, falcon_1024: VerifyKey) -> VerifyKey:
        """The hybrid key made of an Ed25519 key and a Falcon-1024 key (inverse of
        :meth:`components`); :class:`AlgorithmMismatch` if either has another algorithm."""
        _check_components(ed25519.algorithm, falcon_1024.algorithm)
        return cls(
            SignatureAlgorithm.HYBRID_ED25519_FALCON_1024,
            ed25519.to_bytes() + falcon_1024.to_bytes(),
        )


def _check_components(ed25519: SignatureAlgorithm, falcon_1024: SignatureAlgorithm) -> None:
    for given, expected in zip((ed25519, falcon_1024), HYBRID_COMPONENTS, strict=True):
        if given is not expected:
            raise AlgorithmMismatch(f"hybrid component must be {expected.label}, got {given.label}")


# --- private keys -----------------------------------------------------------------------------


class _Signer(Protocol):
    def public_raw(self) -> bytes: ...

    def sign_raw(self, message: bytes) -> bytes: ...

    def private_body(self) -> bytes: ...


class _Ed25519Signer:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    def public_raw(self) -> bytes:
        return self._key.public_key().public_bytes_raw()

    def sign_raw(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def private_body(self) -> bytes:
        return self._key.private_bytes_raw()


class _FalconSigner:
    def __init__(self, secret_key: bytes, public_key: bytes, backend: falcon.FalconBackend):
        self._secret_key = secret_key
        self._public_key = public_key
        self._backend = backend

    def public_raw(self) -> bytes:
        return self._public_key

    def sign_raw(self, message: bytes) -> bytes:
        return self._backend.sign(self._secret_key, message)

    def private_body(self) -> bytes:
        return self._secret_key + self._public_key


class _FnDsaSigner:
    def __init__(self, sign_key: bytes, verify_key: bytes) -> None:
        self._sign_key = sign_key
        self._verify_key = verify_key

    def public_raw(self) -> bytes:
        return self._verify_key

    def sign_raw(self, message: bytes) -> bytes:
        return fndsa.sign(self._sign_key, message)

    def private_body(self) -> bytes:
        return self._sign_key + self._verify_key


class _HybridSigner:
    def __init__(self, ed25519: SigningKey, falcon_1024: SigningKey) -> None:
        self._ed25519 = ed25519
        self._falcon = falcon_1024

    def public_raw(self) -> bytes:
        return self._ed25519.public_key().to_bytes() + self._falcon.public_key().to_bytes()

    def sign_raw(self, message: bytes) -> bytes:
        represented = HYBRID_DOMAIN + message
        return (
            self._ed25519.sign(represented).to_bytes() + self._falcon.sign(represented).to_bytes()
        )

    def private_body(self) -> bytes:
        return self._ed25519.to_bytes() + self._falcon.to_bytes()

    def components(self) -> tuple[SigningKey, SigningKey]:
        return self._ed25519, self._falcon


class SigningKey:
    """A private signature key. SECRET: never log :meth:`to_bytes`.

    Immutable. Make one with :meth:`generate` or :meth:`from_bytes`. ``repr`` shows only the
    algorithm and the public key id.
    """

    __slots__ = ("_public", "_signer", "algorithm")

    algorithm: SignatureAlgorithm
    _signer: _Signer
    _public: VerifyKey

    def __init__(self, algorithm: SignatureAlgorithm, signer: _Signer) -> None:
        """Internal: use :meth:`generate` or :meth:`from_bytes`."""
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "_signer", signer)
        object.__setattr__(self, "_public", VerifyKey(algorithm, signer.public_raw()))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"SigningKey is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"SigningKey is immutable (cannot delete {name!r})")

    def __repr__(self) -> str:
        return f"SigningKey({self.algorithm.label}, key_id={self._public.key_id.hex()[:16]})"

    __str__ = __repr__

    @classmethod
    def generate(
        cls,
        algorithm: SignatureAlgorithm = SignatureAlgorithm.HYBRID_ED25519_FALCON_1024,
        *,
        falcon_backend: str | None = None,
    ) -> SigningKey:
        """A fresh key. ``falcon_backend`` names the Falcon-1024 backend (ignored without one).

        :class:`BackendUnavailable` for FN-DSA-1024 without py-fn-dsa, or an absent backend.
        """
        algorithm = _signature_algorithm(algorithm)
        if algorithm is SignatureAlgorithm.ED25519:
            return cls(algorithm, _Ed25519Signer(Ed25519PrivateKey.generate()))
        if algorithm is SignatureAlgorithm.FALCON_1024:
            backend = falcon.get_backend(falcon_backend)
            public_key, secret_key = backend.generate_keypair()
            return cls(algorithm, _FalconSigner(secret_key, public_key, backend))
        if algorithm is SignatureAlgorithm.FN_DSA_1024:
            verify_key, sign_key = fndsa.generate_keypair()
            return cls(algorithm, _FnDsaSigner(sign_key, verify_key))
        return cls(
            algorithm,
            _HybridSigner(
                cls.generate(SignatureAlgorithm.ED25519),
                cls.generate(SignatureAlgorithm.FALCON_1024, falcon_backend=falcon_backend),
            ),
        )

    def public_key(self) -> VerifyKey:
        """The matching public key."""
        return self._public

    def components(self) -> tuple[SigningKey, SigningKey]:
        """A hybrid key's component keys: ``(Ed25519 key, Falcon-1024 key)``. SECRET.

        Each component signs stand-alone (the message as is, no ``HYBRID_DOMAIN``); see
        "Component keys" in the module docs. :class:`AlgorithmMismatch` for a key that is
        not a hybrid.
        """
        signer = self._signer
        if not isinstance(signer, _HybridSigner):
            raise AlgorithmMismatch(f"{self.algorithm.label} key has no components")
        return signer.components()

    @classmethod
    def from_components(cls, ed25519: SigningKey, falcon_1024: SigningKey) -> SigningKey:
        """The hybrid key made of an Ed25519 key and a Falcon-1024 key (inverse of
        :meth:`components`); :class:`AlgorithmMismatch` if either has another algorithm."""
        _check_components(ed25519.algorithm, falcon_1024.algorithm)
        return cls(
            SignatureAlgorithm.HYBRID_ED25519_FALCON_1024, _HybridSigner(ed25519, falcon_1024)
        )

    def sign(self, message: bytes) -> Signature:
        """Sign ``message`` (a hybrid signs ``HYBRID_DOMAIN || message`` with both components)."""
        return Signature(self.algorithm, self._signer.sign_raw(bytes(message)))

    def to_bytes(self) -> bytes:
        """The ``SIGNING_PRIVATE_KEY`` envelope. SECRET."""
        return encoding.encode(
            Kind.SIGNING_PRIVATE_KEY, self.algorithm, self._signer.private_body()
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, falcon_backend: str | None = None) -> SigningKey:
        """Parse a ``SIGNING_PRIVATE_KEY`` envelope.

        :class:`MalformedData` for a bad envelope, :class:`InvalidKey` for a body that is not a
        valid key (wrong size or header; Falcon / FN-DSA halves that do not belong together),
        :class:`UnknownAlgorithm` for an unknown algorithm id.
        """
        algorithm_id, body = encoding.decode(bytes(data), Kind.SIGNING_PRIVATE_KEY)
        return cls._from_body(_signature_algorithm(algorithm_id), body, falcon_backend)

    @classmethod
    def _from_body(
        cls, algorithm: SignatureAlgorithm, body: bytes, falcon_backend: str | None
    ) -> SigningKey:
        if algorithm is SignatureAlgorithm.ED25519:
            if len(body) != ED25519_PRIVATE_KEY_SIZE:
                raise InvalidKey(
                    f"Ed25519 private key must be {ED25519_PRIVATE_KEY_SIZE} bytes, got {len(body)}"
                )
            return cls(algorithm, _Ed25519Signer(Ed25519PrivateKey.from_private_bytes(body)))
        if algorithm is SignatureAlgorithm.FALCON_1024:
            if len(body) != FALCON_PRIVATE_BODY_SIZE:
                raise InvalidKey(
                    f"Falcon-1024 private key body must be {FALCON_PRIVATE_BODY_SIZE} bytes "
                    f"(sk || pk), got {len(body)}"
                )
            secret_key = body[: falcon.SECRET_KEY_SIZE]
            public_key = body[falcon.SECRET_KEY_SIZE :]
            falcon.check_key_pair(secret_key, public_key)
            backend = falcon.get_backend(falcon_backend)
            return cls(algorithm, _FalconSigner(secret_key, public_key, backend))
        if algorithm is SignatureAlgorithm.FN_DSA_1024:
            if len(body) != FN_DSA_PRIVATE_BODY_SIZE:
                raise InvalidKey(
                    f"FN-DSA-1024 private key body must be {FN_DSA_PRIVATE_BODY_SIZE} bytes "
                    f"(sk || vk), got {len(body)}"
                )
            sign_key = body[: fndsa.SIGN_KEY_SIZE]
            verify_key = body[fndsa.SIGN_KEY_SIZE :]
            fndsa.check_key_pair(sign_key, verify_key)
            return cls(algorithm, _FnDsaSigner(sign_key, verify_key))
        try:
            ed25519_body, falcon_body = _split_hybrid(body, Kind.SIGNING_PRIVATE_KEY)
        except MalformedData as exc:
            raise InvalidKey(f"malformed hybrid private key: {exc}") from exc
        return cls(
            algorithm,
            _HybridSigner(
                cls._from_body(SignatureAlgorithm.ED25519, ed25519_body, falcon_backend),
                cls._from_body(SignatureAlgorithm.FALCON_1024, falcon_body, falcon_backend),
            ),
        )
