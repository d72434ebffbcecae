"""The TrustChain channel handshake: mutual authentication with post-quantum keys, sans-IO.

Two peers, the *initiator* and the *responder*, exchange three messages and end up with a
:class:`~trustchain.crypto.channel.SecureChannel` each. Key agreement is an ephemeral KEM (by
default hybrid X25519 + ML-KEM-1024), authentication is a signature of each peer's identity key
(by default hybrid Ed25519 + Falcon-1024) over the transcript, followed by a finished MAC
(SIGMA-I / TLS 1.3 shape, with a KEM in place of Diffie-Hellman)::

    initiator                                             responder
    M1  version, random_i, offered AEADs, ephemeral KEM public key  ->
    <-  M2  random_r, KEM ciphertext, chosen AEAD,
            {identity_r, Sign_r(transcript), Finished_r}   (encrypted, r2i handshake key)
    M3  {identity_i, Sign_i(transcript), Finished_i}         (encrypted, i2r handshake key)  ->

Both identities travel encrypted; the initiator's is only sent once the responder proved its own,
so a passive observer learns neither and an active one cannot learn the initiator's without
holding an identity the initiator accepts. :class:`Initiator` and :class:`Responder` are plain
objects over ``bytes``: no sockets, no clocks, no threads.

Wire format (integers big-endian; "envelope" is :mod:`trustchain.crypto.encoding`'s
self-delimiting ``version, kind, algorithm, length, body``)::

    M1  offset  size   field
        0       1      protocol version (= 1)
        1       1      message type (= 1)
        2       32     initiator random
        34      1      n, number of offered AEAD algorithms (1..16)
        35      2n     offered AEAD algorithm identifiers, preferred first, no duplicates
        35+2n   ...    ephemeral KEM public key envelope; must end the message

    M2  offset  size   field
        0       1      protocol version (= 1)
        1       1      message type (= 2)
        2       32     responder random
        34      2      chosen AEAD algorithm identifier
        36      ...    KEM ciphertext envelope (to the M1 key), ending at offset c
        c       4      L, length of the encrypted part (>= 16)
        c+4     L      AEAD(r2i handshake key, r2i handshake IV, payload, aad = M2[0 : c+4]);
                       must end the message

    M3  offset  size   field
        0       1      protocol version (= 1)
        1       1      message type (= 3)
        2       4      L, length of the encrypted part (>= 16)
        6       L      AEAD(i2r handshake key, i2r handshake IV, payload, aad = M3[0 : 6]);
                       must end the message

    payload (M2, M3): identity VerifyKey envelope || Signature envelope || 32-byte finished MAC

Transcript. A running SHA-256 over items, each ``tag (u8) || length (u32) || bytes``, in order:
0 the domain label ``"trustchain channel handshake v1"``, 1 the external ``binding`` (e.g. a
TLS exporter value of the carrying QUIC connection; empty if none), 2 M1, 3 M2[0 : c] (M2 up to
the end of the KEM ciphertext), 4 the responder's identity envelope, 5 its signature envelope,
6 its finished MAC, 7 the initiator's identity envelope, 8 its signature envelope, 9 its
finished MAC. ``TH(n)`` is the hash after item ``n``.

Signatures. The responder signs ``"trustchain channel v1 responder signature" || 0x00 || TH(4)``,
the initiator ``"trustchain channel v1 initiator signature" || 0x00 || TH(7)``: distinct
contexts, so neither can stand in for the other. Finished MACs are
``HMAC-SHA256(finished key, TH(5))`` and ``HMAC-SHA256(finished key, TH(8))``.

Key schedule (HKDF-SHA256; ``expand_label`` is
:func:`trustchain.crypto.channel.expand_label`, TLS 1.3's HKDF-Expand-Label with prefix
``"trustchain1 "``)::

    binding_secret   = HKDF-Extract(salt = "trustchain channel v1", IKM = binding)
    handshake_secret = HKDF-Extract(salt = expand_label(binding_secret, "derived", ""),
                                    IKM = KEM shared secret)
    hs_i2r, hs_r2i   = expand_label(handshake_secret, "hs i2r" / "hs r2i", TH(3))
    key, IV          = expand_label(hs_x, "key", "", 32), expand_label(hs_x, "iv", "", 12)
    finished key     = expand_label(hs_x, "finished", "", 32)   (r2i: responder's, i2r: initiator's)
    master_secret    = HKDF-Extract(salt = expand_label(handshake_secret, "derived", ""),
                                    IKM = 32 zero bytes)
    i2r, r2i         = expand_label(master_secret, "i2r" / "r2i", TH(9))   (epoch-0 traffic secrets)
    channel_id       = expand_label(master_secret, "channel id", TH(9))

The binding enters both the transcript and the key schedule, so peers with different bindings
derive different handshake keys and the initiator cannot open M2.

Errors. :meth:`Initiator.receive` and :meth:`Responder.receive` raise only
:class:`~trustchain.errors.MalformedData` (bytes that do not parse: wrong length, truncated,
trailing bytes, bad envelope) or :class:`~trustchain.errors.HandshakeError` (wrong protocol
version, unexpected message for the state, no common algorithm, a message that does not
decrypt, a bad signature or finished MAC -- the underlying ``DecryptionFailed`` /
``InvalidSignature`` is chained as ``__cause__``), and :class:`~trustchain.errors.UntrustedPeer`
(a ``HandshakeError``) when the peer authenticated but the caller's policy refuses its identity.
Any error leaves the object in a terminal failed state, its secrets dropped; every later call
raises :class:`~trustchain.errors.HandshakeError`. A completed handshake rejects further messages
with :class:`~trustchain.errors.HandshakeError` but keeps its channel (a stray or replayed message
must not tear down an established session).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from trustchain.crypto import encoding
from trustchain.crypto.aead import AeadKey, hkdf_extract
from trustchain.crypto.algorithms import AeadAlgorithm, KemAlgorithm, SignatureAlgorithm, from_id
from trustchain.crypto.channel import ChannelConfig, SecureChannel, expand_label
from trustchain.crypto.kem import KemCiphertext, KemPrivateKey, KemPublicKey
from trustchain.crypto.signatures import Signature, SigningKey, VerifyKey
from trustchain.errors import CryptoError, HandshakeError, MalformedData, UntrustedPeer

__all__ = [
    "DEFAULT_AEAD_ALGORITHMS",
    "DEFAULT_KEM_ALGORITHMS",
    "PROTOCOL_VERSION",
    "QUANTUM_RESISTANT_SIGNATURES",
    "Initiator",
    "MessageType",
    "Responder",
]

PROTOCOL_VERSION = 1
RANDOM_SIZE = 32
FINISHED_SIZE = 32
MAX_OFFERED_AEADS = 16
#: No handshake message is larger; anything bigger is rejected before parsing.
MAX_MESSAGE_SIZE = 1 << 16

DOMAIN = b"trustchain channel handshake v1"
BINDING_SALT = b"trustchain channel v1"
RESPONDER_SIGNATURE_CONTEXT = b"trustchain channel v1 responder signature\x00"
INITIATOR_SIGNATURE_CONTEXT = b"trustchain channel v1 initiator signature\x00"

DEFAULT_AEAD_ALGORITHMS: tuple[AeadAlgorithm, ...] = (
    AeadAlgorithm.AES_256_GCM,
    AeadAlgorithm.CHACHA20_POLY1305,
)
#: KEMs a responder accepts unless told otherwise: only quantum-resistant ones.
DEFAULT_KEM_ALGORITHMS: tuple[KemAlgorithm, ...] = (
    KemAlgorithm.HYBRID_X25519_ML_KEM_1024,
    KemAlgorithm.ML_KEM_1024,
)
#: Peer identity algorithms accepted unless told otherwise: those a quantum computer cannot forge.
QUANTUM_RESISTANT_SIGNATURES: frozenset[SignatureAlgorithm] = frozenset(
    {
        SignatureAlgorithm.HYBRID_ED25519_FALCON_1024,
        SignatureAlgorithm.FALCON_1024,
        SignatureAlgorithm.FN_DSA_1024,
    }
)

_HEADER = struct.Struct(">BB")
_LENGTH = struct.Struct(">I")
_AEAD_ID = struct.Struct(">H")
_ITEM = struct.Struct(">BI")


class MessageType(enum.IntEnum):
    INITIATOR_HELLO = 1  # M1
    RESPONDER_HELLO = 2  # M2
    INITIATOR_FINISH = 3  # M3


class _Item(enum.IntEnum):
    DOMAIN = 0
    BINDING = 1
    INITIATOR_HELLO = 2
    RESPONDER_HELLO = 3
    RESPONDER_IDENTITY = 4
    RESPONDER_SIGNATURE = 5
    RESPONDER_FINISHED = 6
    INITIATOR_IDENTITY = 7
    INITIATOR_SIGNATURE = 8
    INITIATOR_FINISHED = 9


class _State(enum.Enum):
    START = "start"
    WAIT_RESPONDER_HELLO = "wait M2"
    WAIT_INITIATOR_HELLO = "wait M1"
    WAIT_INITIATOR_FINISH = "wait M3"
    DONE = "done"
    FAILED = "failed"


# --- transcript and key schedule --------------------------------------------------------------


class _Transcript:
    """The running transcript hash (see the module docstring for its items)."""

    def __init__(self, binding: bytes) -> None:
        self._hash = hashlib.sha256()
        self.absorb(_Item.DOMAIN, DOMAIN)
        self.absorb(_Item.BINDING, binding)

    def absorb(self, item: _Item, data: bytes) -> None:
        self._hash.update(_ITEM.pack(item, len(data)))
        self._hash.update(data)

    def digest(self) -> bytes:
        return self._hash.copy().digest()


@dataclass(frozen=True, repr=False)
class _DirectionKeys:
    key: AeadKey
    iv: bytes
    finished_key: bytes

    @classmethod
    def derive(cls, algorithm: AeadAlgorithm, secret: bytes) -> _DirectionKeys:
        return cls(
            AeadKey(algorithm, expand_label(secret, "key", b"", 32)),
            expand_label(secret, "iv", b"", AeadKey.NONCE_SIZE),
            expand_label(secret, "finished", b"", 32),
        )

    def finished(self, transcript_hash: bytes) -> bytes:
        return hmac.new(self.finished_key, transcript_hash, hashlib.sha256).digest()


@dataclass(frozen=True, repr=False)
class _HandshakeKeys:
    i2r: _DirectionKeys
    r2i: _DirectionKeys
    master_secret: bytes


def _handshake_keys(
    binding: bytes, kem_secret: bytes, transcript_hash: bytes, algorithm: AeadAlgorithm
) -> _HandshakeKeys:
    """Handshake keys from the KEM secret and TH(3) (module docstring, "Key schedule")."""
    binding_secret = hkdf_extract(BINDING_SALT, binding)
    handshake_secret = hkdf_extract(expand_label(binding_secret, "derived", b""), kem_secret)
    master_secret = hkdf_extract(expand_label(handshake_secret, "derived", b""), bytes(32))
    return _HandshakeKeys(
        i2r=_DirectionKeys.derive(
            algorithm, expand_label(handshake_secret, "hs i2r", transcript_hash)
        ),
        r2i=_DirectionKeys.derive(
            algorithm, expand_label(handshake_secret, "hs r2i", transcript_hash)
        ),
        master_secret=master_secret,
    )


@dataclass(frozen=True, repr=False)
class _TrafficSecrets:
    i2r: bytes
    r2i: bytes
    channel_id: bytes


def _traffic_secrets(master_secret: bytes, transcript_hash: bytes) -> _TrafficSecrets:
    """Epoch-0 traffic secrets and the channel id from TH(9)."""
    return _TrafficSecrets(
        i2r=expand_label(master_secret, "i2r", transcript_hash),
        r2i=expand_label(master_secret, "r2i", transcript_hash),
        channel_id=expand_label(master_secret, "channel id", transcript_hash),
    )


# --- parsing ----------------------------------------------------------------------------------


def _check_header(message: bytes, expected: MessageType) -> None:
    if len(message) > MAX_MESSAGE_SIZE:
        raise MalformedData(
            f"handshake message of {len(message)} bytes exceeds the {MAX_MESSAGE_SIZE}-byte limit"
        )
    if len(message) < _HEADER.size:
        raise MalformedData(f"handshake message of {len(message)} bytes has no header")
    version, kind = _HEADER.unpack_from(message)
    if version != PROTOCOL_VERSION:
        raise HandshakeError(
            f"unsupported handshake protocol version {version} (expected {PROTOCOL_VERSION})"
        )
    if kind != expected:
        try:
            got = MessageType(kind).name
        except ValueError:
            got = f"unknown message type {kind}"
        raise HandshakeError(f"expected {expected.name}, got {got}")


def _take(message: bytes, offset: int, size: int, what: str) -> bytes:
    end = offset + size
    if end > len(message):
        raise MalformedData(f"handshake message truncated in {what}")
    return bytes(message[offset:end])


def _encrypted_part(message: bytes, offset: int) -> tuple[bytes, bytes]:
    """``(aad, ciphertext)`` of the length-prefixed encrypted part at ``offset``; must end."""
    (length,) = _LENGTH.unpack(_take(message, offset, _LENGTH.size, "encrypted part length"))
    start = offset + _LENGTH.size
    if length < AeadKey.TAG_SIZE:
        raise MalformedData(f"encrypted part of {length} bytes cannot hold a tag")
    if start + length != len(message):
        raise MalformedData(
            f"encrypted part declares {length} bytes, {len(message) - start} present"
        )
    return bytes(message[:start]), bytes(message[start:])


@dataclass(frozen=True)
class _Authentication:
    """A decrypted M2/M3 payload: identity, its encoding, the signature and finished MAC."""

    identity: VerifyKey
    identity_bytes: bytes
    signature: Signature
    signature_bytes: bytes
    finished: bytes


def _encode_payload(identity_bytes: bytes, signature_bytes: bytes, finished: bytes) -> bytes:
    return identity_bytes + signature_bytes + finished


def _parse_payload(payload: bytes) -> _Authentication:
    _, _, identity_end = encoding.decode_prefix(payload, encoding.Kind.SIGNING_PUBLIC_KEY)
    identity_bytes = payload[:identity_end]
    _, _, signature_end = encoding.decode_prefix(payload, encoding.Kind.SIGNATURE, identity_end)
    signature_bytes = payload[identity_end:signature_end]
    finished = payload[signature_end:]
    if len(finished) != FINISHED_SIZE:
        raise MalformedData(f"finished MAC must be {FINISHED_SIZE} bytes, got {len(finished)}")
    return _Authentication(
        identity=VerifyKey.from_bytes(identity_bytes),
        identity_bytes=identity_bytes,
        signature=Signature.from_bytes(signature_bytes),
        signature_bytes=signature_bytes,
        finished=finished,
    )


def _aead_list(algorithms: Sequence[AeadAlgorithm]) -> tuple[AeadAlgorithm, ...]:
    result = tuple(from_id(AeadAlgorithm, int(a)) for a in algorithms)
    if not result:
        raise ValueError("at least one AEAD algorithm is required")
    if len(result) > MAX_OFFERED_AEADS:
        raise ValueError(f"at most {MAX_OFFERED_AEADS} AEAD algorithms may be offered")
    if len(set(result)) != len(result):
        raise ValueError("AEAD algorithms must not repeat")
    return result


# --- shared machinery -------------------------------------------------------------------------


class _Party:
    """What both roles share: identity, policy, transcript, state, failure handling."""

    def __init__(
        self,
        identity: SigningKey,
        *,
        accept_peer: Callable[[VerifyKey], bool] | None,
        binding: bytes,
        aead_algorithms: Sequence[AeadAlgorithm],
        peer_signature_algorithms: Collection[SignatureAlgorithm],
        channel_config: ChannelConfig | None,
    ) -> None:
        self._identity = identity
        self._identity_bytes = identity.public_key().to_bytes()
        self._accept_peer = accept_peer
        self._binding = bytes(binding)
        self._aead_algorithms = _aead_list(aead_algorithms)
        self._peer_signature_algorithms = frozenset(peer_signature_algorithms)
        self._channel_config = channel_config
        self._transcript = _Transcript(self._binding)
        self._keys: _HandshakeKeys | None = None
        self._aead: AeadAlgorithm | None = None
        self._channel: SecureChannel | None = None
        self._state = _State.START

    @property
    def complete(self) -> bool:
        """True once the handshake succeeded and :attr:`channel` is available."""
        return self._state is _State.DONE

    @property
    def channel(self) -> SecureChannel:
        """The established channel; :class:`~trustchain.errors.HandshakeError` before that."""
        if self._channel is None:
            raise HandshakeError(f"the handshake is not complete (state: {self._state.value})")
        return self._channel

    def _fail(self) -> None:
        self._state = _State.FAILED
        self._keys = None
        self._drop_secrets()

    def _drop_secrets(self) -> None:
        """Role-specific secrets to forget on failure or completion."""

    def _guarded(self, step: Callable[[], bytes | None]) -> bytes | None:
        """Run one handshake step; on any error fail for good, with the documented errors."""
        if self._state is _State.FAILED:
            raise HandshakeError("the handshake already failed")
        if self._state is _State.DONE:
            raise HandshakeError("the handshake is already complete; unexpected message")
        try:
            return step()
        except (MalformedData, HandshakeError):
            self._fail()
            raise
        except CryptoError as exc:
            self._fail()
            raise HandshakeError(f"handshake failed: {exc}") from exc
        except BaseException:
            self._fail()
            raise

    def _sign_and_finish(
        self, keys: _DirectionKeys, context: bytes, items: tuple[_Item, _Item, _Item]
    ) -> bytes:
        """Absorb our identity, signature and finished MAC; the payload that carries them."""
        identity_item, signature_item, finished_item = items
        self._transcript.absorb(identity_item, self._identity_bytes)
        signature = self._identity.sign(context + self._transcript.digest()).to_bytes()
        self._transcript.absorb(signature_item, signature)
        finished = keys.finished(self._transcript.digest())
        self._transcript.absorb(finished_item, finished)
        return _encode_payload(self._identity_bytes, signature, finished)

    def _verify_peer(
        self,
        auth: _Authentication,
        keys: _DirectionKeys,
        context: bytes,
        items: tuple[_Item, _Item, _Item],
        expected_peer: VerifyKey | None,
    ) -> None:
        """Check the peer's signature and finished MAC, then the caller's policy."""
        identity_item, signature_item, finished_item = items
        self._transcript.absorb(identity_item, auth.identity_bytes)
        auth.identity.verify(auth.signature, context + self._transcript.digest())
        self._transcript.absorb(signature_item, auth.signature_bytes)
        if not hmac.compare_digest(auth.finished, keys.finished(self._transcript.digest())):
            raise HandshakeError("the peer's finished MAC does not verify")
        self._transcript.absorb(finished_item, auth.finished)
        # The peer is authenticated; now the caller's policy decides whether it is welcome.
        peer = auth.identity
        if peer.algorithm not in self._peer_signature_algorithms:
            raise UntrustedPeer(
                f"peer identity uses {peer.algorithm.label}, which this side does not accept"
            )
        if expected_peer is not None and peer.to_bytes() != expected_peer.to_bytes():
            raise UntrustedPeer(
                f"peer identity {peer.key_id.hex()} is not the expected "
                f"{expected_peer.key_id.hex()}"
            )
        if self._accept_peer is not None and not self._accept_peer(peer):
            raise UntrustedPeer(f"peer identity {peer.key_id.hex()} refused by accept_peer")

    def _establish(self, keys: _HandshakeKeys, peer: VerifyKey, *, initiator: bool) -> None:
        assert self._aead is not None
        secrets = _traffic_secrets(keys.master_secret, self._transcript.digest())
        send, receive = (secrets.i2r, secrets.r2i) if initiator else (secrets.r2i, secrets.i2r)
        self._channel = SecureChannel(
            channel_id=secrets.channel_id,
            peer=peer,
            aead_algorithm=self._aead,
            send_secret=send,
            receive_secret=receive,
            config=self._channel_config,
        )
        self._keys = None
        self._drop_secrets()
        self._state = _State.DONE


# --- the two roles ----------------------------------------------------------------------------


class Initiator(_Party):
    """The side that speaks first: :meth:`start` gives M1, :meth:`receive` takes M2, gives M3.

    The responder must prove ``expected_peer``'s key if given, pass ``accept_peer`` if given,
    and use an identity algorithm in ``peer_signature_algorithms``; otherwise
    :class:`~trustchain.errors.UntrustedPeer`. With neither ``expected_peer`` nor ``accept_peer``,
    any responder identity is accepted: check ``channel.peer`` before trusting the channel.
    """

    def __init__(
        self,
        identity: SigningKey,
        *,
        expected_peer: VerifyKey | None = None,
        accept_peer: Callable[[VerifyKey], bool] | None = None,
        binding: bytes = b"",
        kem_algorithm: KemAlgorithm = KemAlgorithm.HYBRID_X25519_ML_KEM_1024,
        aead_algorithms: Sequence[AeadAlgorithm] = DEFAULT_AEAD_ALGORITHMS,
        peer_signature_algorithms: Collection[SignatureAlgorithm] = QUANTUM_RESISTANT_SIGNATURES,
        channel_config: ChannelConfig | None = None,
    ) -> None:
        super().__init__(
            identity,
            accept_peer=accept_peer,
            binding=binding,
            aead_algorithms=aead_algorithms,
            peer_signature_algorithms=peer_signature_algorithms,
            channel_config=channel_config,
        )
        self._expected_peer = expected_peer
        self._kem_algorithm = from_id(KemAlgorithm, int(kem_algorithm))
        self._kem_private: KemPrivateKey | None = None

    def _drop_secrets(self) -> None:
        self._kem_private = None

    def start(self) -> bytes:
        """M1: a fresh ephemeral KEM key and the offered AEADs. Callable once."""
        if self._state is not _State.START:
            self._fail()
            raise HandshakeError("start() may be called only once, before anything else")
        try:
            self._kem_private = KemPrivateKey.generate(self._kem_algorithm)
            message = (
                _HEADER.pack(PROTOCOL_VERSION, MessageType.INITIATOR_HELLO)
                + os.urandom(RANDOM_SIZE)
                + bytes([len(self._aead_algorithms)])
                + b"".join(_AEAD_ID.pack(a) for a in self._aead_algorithms)
                + self._kem_private.public_key().to_bytes()
            )
            self._transcript.absorb(_Item.INITIATOR_HELLO, message)
        except BaseException:
            self._fail()
            raise
        self._state = _State.WAIT_RESPONDER_HELLO
        return message

    def receive(self, message: bytes) -> bytes:
        """Take M2, authenticate the responder, and return M3; :attr:`channel` is then ready."""
        result = self._guarded(lambda: self._receive_responder_hello(bytes(message)))
        assert result is not None
        return result

    def _receive_responder_hello(self, message: bytes) -> bytes:
        if self._state is not _State.WAIT_RESPONDER_HELLO:
            raise HandshakeError("the initiator must start() before it can receive")
        _check_header(message, MessageType.RESPONDER_HELLO)
        offset = _HEADER.size
        _take(message, offset, RANDOM_SIZE, "responder random")
        offset += RANDOM_SIZE
        (aead_id,) = _AEAD_ID.unpack(_take(message, offset, _AEAD_ID.size, "chosen AEAD"))
        offset += _AEAD_ID.size
        kem_id, _, ciphertext_end = encoding.decode_prefix(
            message, encoding.Kind.KEM_CIPHERTEXT, offset
        )
        aad, encrypted = _encrypted_part(message, ciphertext_end)
        if aead_id not in self._aead_algorithms:
            raise HandshakeError(f"responder chose AEAD 0x{aead_id:04x}, which was not offered")
        self._aead = AeadAlgorithm(aead_id)
        if kem_id != self._kem_algorithm:
            raise HandshakeError(
                f"KEM ciphertext of algorithm 0x{kem_id:04x}, expected {self._kem_algorithm.label}"
            )
        ciphertext = KemCiphertext.from_bytes(message[offset:ciphertext_end])
        self._transcript.absorb(_Item.RESPONDER_HELLO, message[:ciphertext_end])

        kem_private = self._kem_private
        assert kem_private is not None
        self._kem_private = None  # the ephemeral key is used exactly once
        shared_secret = kem_private.decapsulate(ciphertext)
        keys = _handshake_keys(self._binding, shared_secret, self._transcript.digest(), self._aead)
        self._keys = keys
        payload = keys.r2i.key.decrypt(keys.r2i.iv, encrypted, aad)
        auth = _parse_payload(payload)
        self._verify_peer(
            auth,
            keys.r2i,
            RESPONDER_SIGNATURE_CONTEXT,
            (_Item.RESPONDER_IDENTITY, _Item.RESPONDER_SIGNATURE, _Item.RESPONDER_FINISHED),
            self._expected_peer,
        )

        reply = self._sign_and_finish(
            keys.i2r,
            INITIATOR_SIGNATURE_CONTEXT,
            (_Item.INITIATOR_IDENTITY, _Item.INITIATOR_SIGNATURE, _Item.INITIATOR_FINISHED),
        )
        header = _HEADER.pack(PROTOCOL_VERSION, MessageType.INITIATOR_FINISH) + _LENGTH.pack(
            len(reply) + AeadKey.TAG_SIZE
        )
        m3 = header + keys.i2r.key.encrypt(keys.i2r.iv, reply, header)
        self._establish(keys, auth.identity, initiator=True)
        return m3


class Responder(_Party):
    """The side that answers: :meth:`receive` takes M1 and gives M2, then takes M3.

    The initiator must use an identity algorithm in ``peer_signature_algorithms`` and pass
    ``accept_peer`` if given; otherwise :class:`~trustchain.errors.UntrustedPeer`. The initiator's
    ephemeral KEM must be one of ``kem_algorithms`` (by default only quantum-resistant ones); the
    AEAD is the first of ``aead_algorithms`` (the responder's preference) that was offered.
    """

    def __init__(
        self,
        identity: SigningKey,
        *,
        accept_peer: Callable[[VerifyKey], bool] | None = None,
        binding: bytes = b"",
        aead_algorithms: Sequence[AeadAlgorithm] = DEFAULT_AEAD_ALGORITHMS,
        kem_algorithms: Collection[KemAlgorithm] = DEFAULT_KEM_ALGORITHMS,
        peer_signature_algorithms: Collection[SignatureAlgorithm] = QUANTUM_RESISTANT_SIGNATURES,
        channel_config: ChannelConfig | None = None,
    ) -> None:
        super().__init__(
            identity,
            accept_peer=accept_peer,
            binding=binding,
            aead_algorithms=aead_algorithms,
            peer_signature_algorithms=peer_signature_algorithms,
            channel_config=channel_config,
        )
        self._kem_algorithms = frozenset(from_id(KemAlgorithm, int(k)) for k in kem_algorithms)
        self._state = _State.WAIT_INITIATOR_HELLO

    def receive(self, message: bytes) -> bytes | None:
        """M1 gives M2; M3 gives ``None`` and completes the handshake (see :attr:`channel`)."""
        data = bytes(message)
        if self._state is _State.WAIT_INITIATOR_FINISH:
            return self._guarded(lambda: self._receive_initiator_finish(data))
        return self._guarded(lambda: self._receive_initiator_hello(data))

    def _receive_initiator_hello(self, message: bytes) -> bytes:
        _check_header(message, MessageType.INITIATOR_HELLO)
        offset = _HEADER.size + RANDOM_SIZE
        _take(message, _HEADER.size, RANDOM_SIZE, "initiator random")
        count = _take(message, offset, 1, "AEAD count")[0]
        offset += 1
        if not 1 <= count <= MAX_OFFERED_AEADS:
            raise MalformedData(f"{count} AEAD algorithms offered; 1..{MAX_OFFERED_AEADS} allowed")
        raw_ids = _take(message, offset, count * _AEAD_ID.size, "offered AEADs")
        offset += count * _AEAD_ID.size
        offered = [_AEAD_ID.unpack_from(raw_ids, i * _AEAD_ID.size)[0] for i in range(count)]
        if len(set(offered)) != len(offered):
            raise MalformedData("offered AEAD algorithms repeat")
        kem_id, _, key_end = encoding.decode_prefix(message, encoding.Kind.KEM_PUBLIC_KEY, offset)
        if key_end != len(message):
            raise MalformedData(f"{len(message) - key_end} trailing bytes after M1")
        # Unknown AEAD identifiers are ignored (a newer initiator may offer more).
        chosen = next((a for a in self._aead_algorithms if a in offered), None)
        if chosen is None:
            raise HandshakeError("no AEAD algorithm in common with the initiator")
        if kem_id not in self._kem_algorithms:
            raise HandshakeError(f"KEM 0x{kem_id:04x} is not acceptable to this responder")
        public_key = KemPublicKey.from_bytes(message[offset:])
        self._aead = chosen
        self._transcript.absorb(_Item.INITIATOR_HELLO, message)

        shared_secret, ciphertext = public_key.encapsulate()
        hello = (
            _HEADER.pack(PROTOCOL_VERSION, MessageType.RESPONDER_HELLO)
            + os.urandom(RANDOM_SIZE)
            + _AEAD_ID.pack(chosen)
            + ciphertext.to_bytes()
        )
        self._transcript.absorb(_Item.RESPONDER_HELLO, hello)
        keys = _handshake_keys(self._binding, shared_secret, self._transcript.digest(), chosen)
        self._keys = keys
        payload = self._sign_and_finish(
            keys.r2i,
            RESPONDER_SIGNATURE_CONTEXT,
            (_Item.RESPONDER_IDENTITY, _Item.RESPONDER_SIGNATURE, _Item.RESPONDER_FINISHED),
        )
        aad = hello + _LENGTH.pack(len(payload) + AeadKey.TAG_SIZE)
        self._state = _State.WAIT_INITIATOR_FINISH
        return aad + keys.r2i.key.encrypt(keys.r2i.iv, payload, aad)

    def _receive_initiator_finish(self, message: bytes) -> None:
        _check_header(message, MessageType.INITIATOR_FINISH)
        aad, encrypted = _encrypted_part(message, _HEADER.size)
        keys = self._keys
        assert keys is not None
        payload = keys.i2r.key.decrypt(keys.i2r.iv, encrypted, aad)
        auth = _parse_payload(payload)
        self._verify_peer(
            auth,
            keys.i2r,
            INITIATOR_SIGNATURE_CONTEXT,
            (_Item.INITIATOR_IDENTITY, _Item.INITIATOR_SIGNATURE, _Item.INITIATOR_FINISHED),
            None,
        )
        self._establish(keys, auth.identity, initiator=False)
