"""Who a STOQ node is, and which peers it accepts.

A node is a TrustChain node certificate chain plus the hybrid (Ed25519 + Falcon-1024) key the
leaf certifies (:class:`NodeIdentity`). The classical half of that key also serves the QUIC TLS
handshake, so the certificate the server shows in TLS is the same one it proves post-quantum.

A peer is accepted only if TrustChain's validator accepts its chain (both signatures on every
link, validity, revocation through the trust store's CRLs, the anchor's policy), its leaf has a
DNS name inside one of the allowed namespaces (when any are configured), and, on a client
dialling a name, the leaf names that host (:class:`PeerPolicy`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtensionOID

from stoq.errors import PeerRejected
from trustchain.ca.hybrid import certificate_public_key, classical_private_key
from trustchain.ca.trust import TrustLevel, TrustStore
from trustchain.ca.validation import DEFAULT_CLOCK_SKEW, Purpose, validate
from trustchain.crypto.keystore import KeyStore
from trustchain.crypto.signatures import SigningKey, VerifyKey
from trustchain.errors import CertificateRejected, MalformedData, TrustChainError

__all__ = ["NodeIdentity", "PeerIdentity", "PeerPolicy", "load_pem_chain"]


def load_pem_chain(data: bytes) -> tuple[x509.Certificate, ...]:
    """Certificates from PEM text, in order; :class:`ValueError` if there are none."""
    chain = tuple(x509.load_pem_x509_certificates(data))
    if not chain:
        raise ValueError("no certificate in the PEM data")
    return chain


@dataclass(frozen=True)
class NodeIdentity:
    """A node's certificate chain (leaf first) and the hybrid signing key its leaf certifies."""

    chain: tuple[x509.Certificate, ...]
    signing_key: SigningKey = field(repr=False)
    tls_private_key: Ed25519PrivateKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.chain:
            raise ValueError("a node identity needs at least its own certificate")
        try:
            leaf_key = certificate_public_key(self.chain[0])
        except TrustChainError as exc:
            raise ValueError(f"the leaf certificate has no hybrid key: {exc}") from exc
        if leaf_key.key_id != self.signing_key.public_key().key_id:
            raise ValueError("the signing key is not the key the leaf certificate certifies")
        object.__setattr__(self, "tls_private_key", classical_private_key(self.signing_key))

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def peer_id(self) -> bytes:
        """The leaf key's id (``hypermesh.v1.PeerId.id``)."""
        return self.signing_key.public_key().key_id

    @classmethod
    def from_keystore(
        cls, keystore: KeyStore, key_name: str, chain: Sequence[x509.Certificate]
    ) -> NodeIdentity:
        """The identity of key ``key_name`` in ``keystore``, certified by ``chain``."""
        return cls(tuple(chain), keystore.signing_key(key_name))

    @classmethod
    def load(
        cls,
        home: Path,
        key_name: str,
        chain_pem: Path,
        *,
        passphrase: bytes,
        allow_weak_kdf: bool = False,
    ) -> NodeIdentity:
        """Open the key store at ``home`` and load ``key_name`` with the PEM chain file.

        ``allow_weak_kdf`` admits stores made with test-grade Argon2 parameters.
        """
        chain = load_pem_chain(chain_pem.read_bytes())
        with KeyStore.open(
            home, passphrase=passphrase, create=False, allow_weak_kdf=allow_weak_kdf
        ) as keystore:
            return cls.from_keystore(keystore, key_name, chain)


@dataclass(frozen=True)
class PeerIdentity:
    """A peer STOQ accepted: its validated chain and what the validator reported."""

    chain: tuple[x509.Certificate, ...]
    key: VerifyKey
    trust_level: TrustLevel
    anchor: str | None
    dns_names: tuple[str, ...]

    @property
    def peer_id(self) -> bytes:
        return self.key.key_id

    @property
    def name(self) -> str:
        """The leaf's first DNS name, or its serial number in hex if it has none."""
        return self.dns_names[0] if self.dns_names else format(self.chain[0].serial_number, "x")


def _now() -> datetime:
    return datetime.now(UTC)


def _dns_names(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        extension = certificate.extensions.get_extension_for_oid(
            ExtensionOID.SUBJECT_ALTERNATIVE_NAME
        )
    except x509.ExtensionNotFound:
        return ()
    san = extension.value
    assert isinstance(san, x509.SubjectAlternativeName)
    return tuple(name.lower() for name in san.get_values_for_type(x509.DNSName))


def _within(name: str, namespace: str) -> bool:
    namespace = namespace.lower().strip(".")
    return name == namespace or name.endswith("." + namespace)


@dataclass(frozen=True)
class PeerPolicy:
    """Which peers a node accepts.

    * ``trust_store``: anchors, intermediates and CRLs (TrustChain).
    * ``namespaces``: if not empty, the peer's leaf must carry a DNS name equal to or under one
      of them (``bank.hypermesh`` admits ``node1.bank.hypermesh``).
    * ``min_trust_level``: the least trust the validator may report.
    * ``clock``: the validation time (tests move it).
    """

    trust_store: TrustStore
    namespaces: tuple[str, ...] = ()
    min_trust_level: TrustLevel = TrustLevel.PARTIAL
    clock: Callable[[], datetime] = _now
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW

    def check(
        self,
        chain_der: Sequence[bytes],
        *,
        purpose: Purpose,
        server_name: str | None = None,
    ) -> PeerIdentity:
        """Validate a peer's chain (DER, leaf first); :class:`PeerRejected` with the reason."""
        try:
            chain = tuple(x509.load_der_x509_certificate(der) for der in chain_der)
        except ValueError as exc:
            raise PeerRejected(f"the peer's certificate does not decode: {exc}") from exc
        if not chain:
            raise PeerRejected("the peer presented no certificate")
        try:
            report = validate(
                chain,
                self.trust_store,
                at=self.clock(),
                purpose=purpose,
                clock_skew=self.clock_skew,
                dns_name=server_name,
            )
        except CertificateRejected as exc:
            raise PeerRejected(f"the peer's certificate chain is refused: {exc}") from exc
        except MalformedData as exc:
            raise PeerRejected(f"the peer's certificate chain is malformed: {exc}") from exc
        if report.trust_level < self.min_trust_level:
            raise PeerRejected(
                f"the peer's chain is trusted only at {report.trust_level.name}, "
                f"below the required {self.min_trust_level.name}: {'; '.join(report.notes)}"
            )
        names = _dns_names(chain[0])
        if self.namespaces and not any(
            _within(name, namespace) for name in names for namespace in self.namespaces
        ):
            raise PeerRejected(
                f"the peer's names {list(names)} are outside the accepted namespaces "
                f"{list(self.namespaces)}"
            )
        return PeerIdentity(
            chain=tuple(report.path),
            key=report.leaf_key,
            trust_level=report.trust_level,
            anchor=report.anchor,
            dns_names=names,
        )
