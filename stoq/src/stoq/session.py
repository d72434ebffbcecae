"""The post-quantum session STOQ runs inside every QUIC connection, sans-IO.

QUIC's TLS 1.3 handshake authenticates the server and agrees keys, but its key exchange is
classical (X25519) with aioquic, and aioquic cannot ask a client for a certificate. So once TLS is
done, the client opens the *control stream* (the first client bidirectional stream, id 0) and
the peers run TrustChain's channel handshake (:mod:`trustchain.crypto.handshake`: hybrid
X25519 + ML-KEM-1024 key agreement, hybrid Ed25519 + Falcon-1024 signatures) over it, with both
certificate chains::

    client                                                      server
    CLIENT_HELLO   M1                                        ->
                                       <-  SERVER_HELLO   M2, server chain
    CLIENT_FINISH  M3, seal(client chain)                    ->
                                       <-  ACCEPTED       seal("")

Every message is one length-prefixed frame (:mod:`stoq.framing`) whose first byte is the type.
``chain`` is ``u16 count`` then ``count`` times ``u32 length || DER``, leaf first. ``seal`` is
the new :class:`~trustchain.crypto.channel.SecureChannel`, with associated data naming the
message, so the client's chain (and with it the client's identity) is only ever sent
post-quantum encrypted, after the server proved its key.

Binding. The handshake's external binding is ``SHA-256("stoq/1 tls binding" || 0x00 ||
client_application_traffic_secret_0 || server_application_traffic_secret_0)`` of the carrying
TLS session. Both peers of one QUIC connection compute the same value; a relay that terminates
TLS on both sides (a man in the middle) holds two TLS sessions with different secrets, so the
handshake it relays fails (the client cannot open M2). The binding enters the handshake's
transcript and key schedule (see :mod:`trustchain.crypto.handshake`).

Acceptance. The client validates the server's chain before sending anything that identifies
it; the chain's leaf must certify the key that signed M2, and must be the certificate the server
showed in TLS. The server validates the client's chain the same way against the key that signed
M3. Either side refuses with :class:`~stoq.errors.PeerRejected` (the shell closes the connection
with :data:`ERROR_PEER_REJECTED` and the reason).

After ACCEPTED, application data on every other stream and every QUIC datagram is sealed with
the session's channel (see :mod:`stoq.connection`).
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Sequence

from cryptography.hazmat.primitives import serialization

from stoq.errors import PeerRejected, ProtocolViolation, StoqError
from stoq.identity import NodeIdentity, PeerIdentity, PeerPolicy
from trustchain.ca.validation import Purpose
from trustchain.crypto.channel import ChannelConfig, SecureChannel
from trustchain.crypto.handshake import Initiator, Responder
from trustchain.crypto.signatures import VerifyKey
from trustchain.errors import CryptoError

__all__ = [
    "CHANNEL_CONFIG",
    "ERROR_PEER_REJECTED",
    "ERROR_PROTOCOL",
    "ClientSession",
    "MessageType",
    "ServerSession",
    "decode_chain",
    "encode_chain",
    "tls_binding",
]

#: QUIC application error codes STOQ closes connections with.
ERROR_NONE = 0x0
ERROR_PEER_REJECTED = 0x5301
ERROR_PROTOCOL = 0x5302
ERROR_MESSAGE_TOO_LARGE = 0x5303
ERROR_INTERNAL = 0x5304

#: Records from many streams interleave, so the replay window is as wide as TrustChain allows.
CHANNEL_CONFIG = ChannelConfig(replay_window=1 << 16)
#: Control messages are small: a handshake message and a chain of a few certificates.
MAX_CONTROL_MESSAGE = 1 << 17
MAX_CHAIN_CERTIFICATES = 8

BINDING_LABEL = b"stoq/1 tls binding\x00"
AD_CLIENT_CHAIN = b"stoq/1 client chain"
AD_ACCEPTED = b"stoq/1 accepted"

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class MessageType(enum.IntEnum):
    CLIENT_HELLO = 1
    SERVER_HELLO = 2
    CLIENT_FINISH = 3
    ACCEPTED = 4


def tls_binding(client_secret: bytes, server_secret: bytes) -> bytes:
    """The channel binding of a TLS session from its two application traffic secrets."""
    if not client_secret or not server_secret:
        raise StoqError("the QUIC engine did not expose the TLS traffic secrets")
    return hashlib.sha256(BINDING_LABEL + client_secret + server_secret).digest()


def encode_chain(chain_der: Sequence[bytes]) -> bytes:
    if not 1 <= len(chain_der) <= MAX_CHAIN_CERTIFICATES:
        raise ValueError(f"a chain has 1 to {MAX_CHAIN_CERTIFICATES} certificates")
    return _U16.pack(len(chain_der)) + b"".join(_U32.pack(len(c)) + c for c in chain_der)


def decode_chain(data: bytes) -> tuple[bytes, ...]:
    """The DER certificates of an encoded chain; :class:`ProtocolViolation` if malformed."""
    if len(data) < _U16.size:
        raise ProtocolViolation("truncated certificate chain")
    (count,) = _U16.unpack_from(data)
    if not 1 <= count <= MAX_CHAIN_CERTIFICATES:
        raise ProtocolViolation(f"a chain of {count} certificates is not accepted")
    offset = _U16.size
    chain = []
    for _ in range(count):
        if len(data) - offset < _U32.size:
            raise ProtocolViolation("truncated certificate chain")
        (length,) = _U32.unpack_from(data, offset)
        offset += _U32.size
        if length == 0 or len(data) - offset < length:
            raise ProtocolViolation("truncated certificate chain")
        chain.append(data[offset : offset + length])
        offset += length
    if offset != len(data):
        raise ProtocolViolation("trailing bytes after the certificate chain")
    return tuple(chain)


def _split_prefixed(data: bytes, what: str) -> tuple[bytes, bytes]:
    """``u32 length || part || rest`` -> (part, rest)."""
    if len(data) < _U32.size:
        raise ProtocolViolation(f"truncated {what}")
    (length,) = _U32.unpack_from(data)
    if len(data) - _U32.size < length:
        raise ProtocolViolation(f"truncated {what}")
    return data[_U32.size : _U32.size + length], data[_U32.size + length :]


def _message(kind: MessageType, body: bytes) -> bytes:
    return bytes([kind]) + body


def _parse(message: bytes, expected: MessageType) -> bytes:
    if not message:
        raise ProtocolViolation("empty control message")
    if message[0] != expected:
        raise ProtocolViolation(f"expected control message {expected.name}, got type {message[0]}")
    return message[1:]


def _der_chain(identity: NodeIdentity) -> tuple[bytes, ...]:
    return tuple(c.public_bytes(serialization.Encoding.DER) for c in identity.chain)


def _same_key(expected: VerifyKey, actual: VerifyKey) -> bool:
    return expected.key_id == actual.key_id


class ClientSession:
    """The client's half: :meth:`start`, then :meth:`receive` each server message."""

    def __init__(
        self,
        identity: NodeIdentity,
        policy: PeerPolicy,
        binding: bytes,
        *,
        tls_peer_certificate: bytes | None,
        server_name: str | None = None,
    ) -> None:
        self._identity = identity
        self._policy = policy
        self._server_name = server_name
        self._tls_peer_certificate = tls_peer_certificate
        self._peer: PeerIdentity | None = None
        self._initiator = Initiator(
            identity.signing_key,
            binding=binding,
            accept_peer=self._accept_key,
            channel_config=CHANNEL_CONFIG,
        )
        self._established = False

    @property
    def established(self) -> bool:
        return self._established

    @property
    def peer(self) -> PeerIdentity:
        if self._peer is None or not self._established:
            raise StoqError("the session is not established")
        return self._peer

    @property
    def channel(self) -> SecureChannel:
        if not self._established:
            raise StoqError("the session is not established")
        return self._initiator.channel

    def _accept_key(self, key: VerifyKey) -> bool:
        return self._peer is not None and _same_key(self._peer.key, key)

    def start(self) -> bytes:
        return _message(MessageType.CLIENT_HELLO, self._initiator.start())

    def receive(self, message: bytes) -> bytes | None:
        """SERVER_HELLO gives CLIENT_FINISH; ACCEPTED establishes the session (``None``)."""
        if self._peer is None:
            return self._server_hello(message)
        body = _parse(message, MessageType.ACCEPTED)
        try:
            self._initiator.channel.open(body, AD_ACCEPTED)
        except CryptoError as exc:
            raise ProtocolViolation(f"the server's ACCEPTED does not open: {exc}") from exc
        self._established = True
        return None

    def _server_hello(self, message: bytes) -> bytes:
        m2, chain_data = _split_prefixed(_parse(message, MessageType.SERVER_HELLO), "SERVER_HELLO")
        chain = decode_chain(chain_data)
        if self._tls_peer_certificate is not None and chain[0] != self._tls_peer_certificate:
            raise PeerRejected("the server's TLS certificate is not the leaf of its chain")
        # The chain is validated before M2 is processed: M2 is only accepted if signed by the
        # validated leaf's key (accept_peer), and only then does the client reveal itself.
        self._peer = self._policy.check(
            chain, purpose=Purpose.SERVER, server_name=self._server_name
        )
        try:
            m3 = self._initiator.receive(m2)
        except CryptoError as exc:
            raise PeerRejected(
                f"the server did not complete the post-quantum handshake bound to this "
                f"connection: {exc}"
            ) from exc
        sealed = self._initiator.channel.seal(
            encode_chain(_der_chain(self._identity)), AD_CLIENT_CHAIN
        )
        return _message(MessageType.CLIENT_FINISH, _U32.pack(len(m3)) + m3 + sealed)


class ServerSession:
    """The server's half: :meth:`receive` CLIENT_HELLO, then CLIENT_FINISH."""

    def __init__(self, identity: NodeIdentity, policy: PeerPolicy, binding: bytes) -> None:
        self._identity = identity
        self._policy = policy
        self._responder = Responder(
            identity.signing_key, binding=binding, channel_config=CHANNEL_CONFIG
        )
        self._hello_seen = False
        self._peer: PeerIdentity | None = None

    @property
    def established(self) -> bool:
        return self._peer is not None

    @property
    def peer(self) -> PeerIdentity:
        if self._peer is None:
            raise StoqError("the session is not established")
        return self._peer

    @property
    def channel(self) -> SecureChannel:
        if self._peer is None:
            raise StoqError("the session is not established")
        return self._responder.channel

    def receive(self, message: bytes) -> bytes:
        """CLIENT_HELLO gives SERVER_HELLO; CLIENT_FINISH gives ACCEPTED (session established)."""
        if not self._hello_seen:
            self._hello_seen = True
            m1 = _parse(message, MessageType.CLIENT_HELLO)
            try:
                m2 = self._responder.receive(m1)
            except CryptoError as exc:
                raise ProtocolViolation(f"bad CLIENT_HELLO: {exc}") from exc
            assert m2 is not None
            chain = encode_chain(_der_chain(self._identity))
            return _message(MessageType.SERVER_HELLO, _U32.pack(len(m2)) + m2 + chain)
        if self._peer is not None:
            raise ProtocolViolation("control message after the session was established")
        m3, sealed_chain = _split_prefixed(
            _parse(message, MessageType.CLIENT_FINISH), "CLIENT_FINISH"
        )
        try:
            self._responder.receive(m3)
            channel = self._responder.channel
            client_chain = decode_chain(channel.open(sealed_chain, AD_CLIENT_CHAIN))
        except CryptoError as exc:
            raise PeerRejected(
                f"the client did not complete the post-quantum handshake bound to this "
                f"connection: {exc}"
            ) from exc
        peer = self._policy.check(client_chain, purpose=Purpose.CLIENT)
        if not _same_key(peer.key, channel.peer):
            raise PeerRejected("the client's certificate does not certify the key it proved")
        self._peer = peer
        return _message(MessageType.ACCEPTED, channel.seal(b"", AD_ACCEPTED))
