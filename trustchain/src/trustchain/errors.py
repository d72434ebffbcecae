"""Every failure TrustChain reports, as a typed exception.

A check that fails raises one of these; nothing in TrustChain signals failure by returning
``False``. All derive from :class:`TrustChainError`, so callers can catch the family or one member.
"""

from __future__ import annotations


class TrustChainError(Exception):
    """Base class of every TrustChain error."""


# --- cryptography -----------------------------------------------------------------------------


class CryptoError(TrustChainError):
    """A cryptographic operation failed."""


class MalformedData(CryptoError, ValueError):
    """Bytes that do not parse: wrong length, truncated, trailing bytes, bad header or version."""


class InvalidKey(MalformedData):
    """A key encoding that is not a valid key of its algorithm (wrong size, bad header)."""


class UnknownAlgorithm(CryptoError, ValueError):
    """An algorithm identifier or name that TrustChain does not know."""


class AlgorithmMismatch(CryptoError, ValueError):
    """A key, signature or ciphertext used with an object of a different algorithm."""


class BackendUnavailable(CryptoError):
    """The requested implementation (e.g. liboqs, py-fn-dsa) is not installed on this host."""


class InvalidSignature(CryptoError):
    """A signature does not verify (for a hybrid, at least one component failed)."""


class DecryptionFailed(CryptoError):
    """Authenticated decryption failed: wrong key, tampered ciphertext, tag or associated data."""


class ReplayDetected(CryptoError):
    """A record whose sequence number was already accepted, or is too old to be checked."""


class HandshakeError(CryptoError):
    """The channel handshake failed: unexpected message, bad transcript signature or MAC."""


class UntrustedPeer(HandshakeError):
    """The peer authenticated correctly, but with an identity the caller does not accept."""


class ChannelClosed(CryptoError):
    """A secure channel was used after it was closed or after its keys were exhausted."""


# --- key store --------------------------------------------------------------------------------


class KeyStoreError(TrustChainError):
    """A key store operation failed."""


class KeyNotFound(KeyStoreError, LookupError):
    """No key (or key version) of that name or id exists in the store."""


class KeyExists(KeyStoreError):
    """A key of that name already exists; the caller must rotate it, not recreate it."""


class KeyRetired(KeyStoreError):
    """The key version is retired: it may no longer sign, verify or decrypt."""


class KeyRevoked(KeyRetired):
    """The key version was revoked (compromised): nothing made with it is trusted."""


class WrongPassphrase(KeyStoreError):
    """The passphrase (or key file) does not open this key store."""


class KeyStoreCorrupted(KeyStoreError):
    """The store's contents fail their integrity checks."""
