"""The ``SecurityLayer`` gRPC service: channels, transport encryption and asset keys.

The service is the node's local security API, in the spirit of ``ssh-agent``: it holds the node's
identity and key store, runs the responder side of the channel handshake
(:mod:`trustchain.crypto.handshake`) for peers that open a channel through it, and seals and opens
records on those channels. It listens on loopback by default; anything that can reach it can use
the node's channels, so it must not be exposed beyond the host without transport security.

RPCs:

* ``OpenChannel`` / ``CompleteChannel`` carry the three handshake messages. ``OpenChannel`` answers
  with the responder's message and a random *pending id* naming the half-open handshake; pending
  handshakes expire after ``handshake_ttl`` and their number is capped.
* In process, :meth:`SecurityLayerServicer.adopt_channel` registers a channel whose handshake ran
  elsewhere (e.g. STOQ's channel export over a QUIC stream), so that the RPCs below serve it like
  one made by ``CompleteChannel``; both count against ``max_channels``.
* ``EncryptTransport`` / ``DecryptTransport`` seal and open records on an established channel.
* ``GenerateAssetKeys`` creates an asset's hybrid signing key and hybrid KEM key in the key store
  and returns the public halves. A second call for the same asset follows the request's
  ``if_exists`` policy: fail with ``ALREADY_EXISTS`` (the default), return the current keys, or
  rotate both (old versions stay usable for verifying and decrypting).
* ``ValidateCertificates`` validates a DER chain (leaf first) against one of the configured trust
  stores, selected by the request's ``policy`` name (``""``: the default store), with
  :func:`trustchain.ca.validation.validate`: both signatures on every link, validity, constraints,
  revocation and SCT policy. A chain that fails is an answer (``REJECTED`` with its reason), not
  an error; an unknown policy is ``NOT_FOUND``; a server with no trust store configured answers
  ``FAILED_PRECONDITION``.

Every TrustChain error maps to one gRPC status (see :data:`STATUS_OF`); the server keeps serving.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from hypermesh_interfaces.v1 import common_pb2, security_pb2, security_pb2_grpc
from trustchain import errors
from trustchain.ca.trust import TrustStore
from trustchain.ca.validation import Purpose, validate_certificates_response
from trustchain.crypto.algorithms import KemAlgorithm, SignatureAlgorithm
from trustchain.crypto.channel import SecureChannel
from trustchain.crypto.handshake import Responder
from trustchain.crypto.keystore import KeyInfo, KeyStore
from trustchain.crypto.signatures import SigningKey
from trustchain.grpc_status import Abort, abort_on_errors


class ChannelLimitReached(errors.TrustChainError):
    """The security layer already holds its ``max_channels`` channels; none can be added."""


class ChannelExists(errors.TrustChainError):
    """A channel with the same id is already registered (the same channel adopted twice)."""


#: gRPC status for each TrustChain error; the first matching class (most specific first) wins.
STATUS_OF: tuple[tuple[type[errors.TrustChainError], grpc.StatusCode], ...] = (
    (errors.UnknownTrustPolicy, grpc.StatusCode.NOT_FOUND),
    (ChannelLimitReached, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ChannelExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.UntrustedPeer, grpc.StatusCode.PERMISSION_DENIED),
    (errors.HandshakeError, grpc.StatusCode.UNAUTHENTICATED),
    (errors.InvalidSignature, grpc.StatusCode.UNAUTHENTICATED),
    (errors.ReplayDetected, grpc.StatusCode.ALREADY_EXISTS),
    (errors.ChannelClosed, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.KeyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.KeyNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.KeyRetired, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.WrongPassphrase, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.MalformedData, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.UnknownAlgorithm, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.AlgorithmMismatch, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.DecryptionFailed, grpc.StatusCode.INVALID_ARGUMENT),
)

#: The only KEM this service accepts for channels.
CHANNEL_KEM = KemAlgorithm.HYBRID_X25519_ML_KEM_1024
ASSET_ID_SIZE = 32
CHANNEL_ID_SIZE = 32
PENDING_ID_SIZE = 16
#: Largest plaintext or record one request may carry (the gRPC message limit is set above it).
MAX_PAYLOAD = 1 << 20
MAX_MESSAGE = MAX_PAYLOAD + (64 << 10)
#: Most certificates one ValidateCertificates request may carry, and the largest one.
MAX_CHAIN_CERTIFICATES = 16
MAX_CERTIFICATE_SIZE = 64 << 10


@contextmanager
def _handle(context: grpc.ServicerContext) -> Iterator[None]:
    """Turn TrustChain errors and :class:`Abort` into a gRPC status on ``context``."""
    with abort_on_errors(context, STATUS_OF):
        yield


@dataclass
class _Pending:
    responder: Responder
    expires: float


@dataclass
class _Channel:
    channel: SecureChannel
    lock: threading.Lock


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _require_size(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise Abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"{name} must be {size} bytes, got {len(value)}"
        )


def _require_at_most(name: str, value: bytes, limit: int) -> None:
    if len(value) > limit:
        raise Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{name} of {len(value)} bytes exceeds the {limit}-byte limit",
        )


class SecurityLayerServicer(security_pb2_grpc.SecurityLayerServicer):
    """``SecurityLayer`` over a node identity and a key store. Thread-safe."""

    def __init__(
        self,
        identity: SigningKey,
        keystore: KeyStore,
        *,
        handshake_ttl: float = 30.0,
        max_pending: int = 1024,
        max_channels: int = 65536,
        trust_stores: Mapping[str, TrustStore] | None = None,
        purpose: Purpose = Purpose.ANY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._identity = identity
        self._keystore = keystore
        self._handshake_ttl = handshake_ttl
        self._max_pending = max_pending
        self._max_channels = max_channels
        self._clock = clock
        self._trust_stores = dict(trust_stores) if trust_stores is not None else None
        self._purpose = purpose
        self._lock = threading.Lock()
        self._keystore_lock = threading.Lock()
        self._pending: dict[bytes, _Pending] = {}
        self._channels: dict[bytes, _Channel] = {}

    # -- channels ---------------------------------------------------------------------------

    def OpenChannel(
        self, request: security_pb2.OpenChannelRequest, context: grpc.ServicerContext
    ) -> security_pb2.OpenChannelResponse:
        with _handle(context):
            _require_at_most("handshake", request.handshake, MAX_PAYLOAD)
            # Hybrid only: the channel must stay confidential if either X25519 or ML-KEM falls.
            responder = Responder(self._identity, kem_algorithms=(CHANNEL_KEM,))
            reply = responder.receive(request.handshake)
            if reply is None:
                raise Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "OpenChannel takes the first handshake message",
                )
            pending_id = secrets.token_bytes(PENDING_ID_SIZE)
            with self._lock:
                self._expire_pending()
                if len(self._pending) >= self._max_pending:
                    raise Abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"{self._max_pending} handshakes already pending; try again later",
                    )
                self._pending[pending_id] = _Pending(responder, self._clock() + self._handshake_ttl)
            return security_pb2.OpenChannelResponse(channel_id=pending_id, handshake=reply)
        raise AssertionError("unreachable: _handle aborts")  # pragma: no cover

    def CompleteChannel(
        self, request: security_pb2.CompleteChannelRequest, context: grpc.ServicerContext
    ) -> common_pb2.SecureChannel:
        with _handle(context):
            _require_size("channel_id", request.channel_id, PENDING_ID_SIZE)
            _require_at_most("handshake", request.handshake, MAX_PAYLOAD)
            with self._lock:
                self._expire_pending()
                # A pending handshake is consumed by its first completion attempt, good or bad:
                # a failed attempt cannot be retried against the same responder state.
                pending = self._pending.pop(request.channel_id, None)
            if pending is None:
                raise Abort(grpc.StatusCode.NOT_FOUND, "no pending handshake with that id")
            if pending.responder.receive(request.handshake) is not None:
                raise Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "CompleteChannel takes the final handshake message",
                )
            # The responder was made to accept CHANNEL_KEM only (OpenChannel).
            return self._register(pending.responder.channel, CHANNEL_KEM)
        raise AssertionError("unreachable: _handle aborts")  # pragma: no cover

    def adopt_channel(
        self, channel: SecureChannel, *, kem_algorithm: KemAlgorithm
    ) -> common_pb2.SecureChannel:
        """Register ``channel``, established by a handshake this service did not relay, and
        describe it as ``CompleteChannel`` would: ``EncryptTransport`` and ``DecryptTransport``
        then accept its ``channel_id``. Thread-safe.

        ``kem_algorithm`` is the KEM the handshake agreed its keys with (the channel object does
        not record it); it must be :data:`CHANNEL_KEM`, the only one this service accepts, or
        :class:`~trustchain.errors.AlgorithmMismatch`. The channel now belongs to the service:
        the caller must not seal or open with it any more, since the service's records and the
        caller's would share one sequence space. :class:`~trustchain.errors.ChannelClosed` for a
        closed channel, :class:`ChannelExists` if its id is registered already,
        :class:`ChannelLimitReached` when ``max_channels`` are held.
        """
        if kem_algorithm != CHANNEL_KEM:
            raise errors.AlgorithmMismatch(
                f"this security layer holds {CHANNEL_KEM.label} channels only, "
                f"not {kem_algorithm.label}"
            )
        if channel.closed:
            raise errors.ChannelClosed("a closed channel cannot be adopted")
        return self._register(channel, kem_algorithm)

    def EncryptTransport(
        self, request: security_pb2.EncryptTransportRequest, context: grpc.ServicerContext
    ) -> security_pb2.EncryptTransportResponse:
        with _handle(context):
            _require_at_most("plaintext", request.plaintext, MAX_PAYLOAD)
            entry = self._channel(request.channel_id)
            with entry.lock:
                record = entry.channel.seal(request.plaintext, request.associated_data)
            return security_pb2.EncryptTransportResponse(
                record=record, sequence=SecureChannel.record_sequence(record)
            )
        raise AssertionError("unreachable: _handle aborts")  # pragma: no cover

    def DecryptTransport(
        self, request: security_pb2.DecryptTransportRequest, context: grpc.ServicerContext
    ) -> security_pb2.DecryptTransportResponse:
        with _handle(context):
            _require_at_most("record", request.record, MAX_MESSAGE)
            entry = self._channel(request.channel_id)
            with entry.lock:
                opened = entry.channel.open_record(request.record, request.associated_data)
            return security_pb2.DecryptTransportResponse(
                plaintext=opened.plaintext, sequence=opened.sequence
            )
        raise AssertionError("unreachable: _handle aborts")  # pragma: no cover

    # -- certificates -------------------------------------------------------------------------

    def ValidateCertificates(
        self, request: security_pb2.ValidateCertificatesRequest, context: grpc.ServicerContext
    ) -> security_pb2.ValidateCertificatesResponse:
        with _handle(context):
            if self._trust_stores is None:
                raise Abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "this server has no trust anchors configured",
                )
            certificates = request.chain.certificates
            if not 1 <= len(certificates) <= MAX_CHAIN_CERTIFICATES:
                raise Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"a chain has 1 to {MAX_CHAIN_CERTIFICATES} certificates, "
                    f"got {len(certificates)}",
                )
            for index, certificate in enumerate(certificates):
                _require_at_most(f"certificate {index}", certificate, MAX_CERTIFICATE_SIZE)
            return validate_certificates_response(
                request, self._trust_stores, purpose=self._purpose
            )
        raise AssertionError("unreachable: _handle aborts")  # pragma: no cover

    # -- asset keys ---------------------------------------------------------------------------

    def GenerateAssetKeys(
        self, request: security_pb2.GenerateAssetKeysRequest, context: grpc.ServicerContext
    ) -> common_pb2.AssetKeyPair:
        with _handle(context):
            asset = request.asset_id.id
            _require_size("asset_id.id", asset, ASSET_ID_SIZE)
            policy = request.if_exists
            known = (
                security_pb2.EXISTING_KEYS_POLICY_FAIL,
                security_pb2.EXISTING_KEYS_POLICY_RETURN,
                security_pb2.EXISTING_KEYS_POLICY_ROTATE,
            )
            if policy not in known:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown if_exists policy {policy}")
            signing_name, kem_name = asset_key_names(asset)
            with self._keystore_lock:
                if self._has_key(signing_name):
                    if policy == security_pb2.EXISTING_KEYS_POLICY_FAIL:
                        raise Abort(
                            grpc.StatusCode.ALREADY_EXISTS,
                            f"asset {asset.hex()} already has keys; ask to RETURN or ROTATE them",
                        )
                    if policy == security_pb2.EXISTING_KEYS_POLICY_ROTATE:
                        self._keystore.rotate(signing_name)
                        if self._has_key(kem_name):
                            self._keystore.rotate(kem_name)
                else:
                    self._keystore.generate(
                        signing_name, SignatureAlgorithm.HYBRID_ED25519_FALCON_1024
                    )
                # The two keys are two store transactions; a crash between them leaves an asset
                # with a signing key only, which the next call completes instead of failing on.
                if not self._has_key(kem_name):
                    self._keystore.generate(kem_name, KemAlgorithm.HYBRID_X25519_ML_KEM_1024)
                signing = self._keystore.info(signing_name)
                kem = self._keystore.info(kem_name)
                return self._asset_key_pair(asset, signing, kem)
        raise AssertionError("unreachable: _handle aborts")  # pragma: no cover

    # -- internals ------------------------------------------------------------------------------

    def _asset_key_pair(
        self, asset: bytes, signing: KeyInfo, kem: KeyInfo
    ) -> common_pb2.AssetKeyPair:
        return common_pb2.AssetKeyPair(
            asset_id=common_pb2.AssetId(id=asset),
            signing_public_key=self._keystore.export_public(signing.name),
            kem_public_key=self._keystore.export_public(kem.name),
            signing_key_id=signing.key_id,
            kem_key_id=kem.key_id,
            version=signing.version,
            created_at=_timestamp(signing.created_at),
            signature_algorithm=signing.algorithm,
            kem_algorithm=kem.algorithm,
        )

    def _has_key(self, name: str) -> bool:
        try:
            self._keystore.info(name)
        except errors.KeyNotFound:
            return False
        return True

    def _register(
        self, channel: SecureChannel, kem_algorithm: KemAlgorithm
    ) -> common_pb2.SecureChannel:
        """Add an established channel to the table (within ``max_channels``); its description."""
        with self._lock:
            if channel.channel_id in self._channels:
                # Never replace an entry: a second lock for the same channel would let two
                # threads seal with one sequence counter at once.
                raise ChannelExists(f"channel {channel.channel_id.hex()} is already registered")
            if len(self._channels) >= self._max_channels:
                raise ChannelLimitReached(f"{self._max_channels} channels already open")
            self._channels[channel.channel_id] = _Channel(channel, threading.Lock())
        return common_pb2.SecureChannel(
            channel_id=channel.channel_id,
            peer_id=common_pb2.PeerId(id=channel.peer.key_id),
            peer_signing_public_key=channel.peer.to_bytes(),
            kem_algorithm=kem_algorithm.label,
            aead_algorithm=channel.aead_algorithm.label,
            established_at=_timestamp(datetime.now().astimezone()),
        )

    def _channel(self, channel_id: bytes) -> _Channel:
        _require_size("channel_id", channel_id, CHANNEL_ID_SIZE)
        with self._lock:
            entry = self._channels.get(channel_id)
        if entry is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, "no open channel with that id")
        return entry

    def _expire_pending(self) -> None:
        now = self._clock()
        for pending_id in [p for p, e in self._pending.items() if e.expires <= now]:
            del self._pending[pending_id]


def asset_key_names(asset_id: bytes) -> tuple[str, str]:
    """The key store names of an asset's signing key and KEM key."""
    return f"asset/{asset_id.hex()}/signing", f"asset/{asset_id.hex()}/kem"


def serve(
    servicer: SecurityLayerServicer, address: str = "127.0.0.1:0", *, workers: int = 4
) -> tuple[grpc.Server, int]:
    """Start a gRPC server for ``servicer`` on ``address``; returns it and the bound port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ],
    )
    security_pb2_grpc.add_SecurityLayerServicer_to_server(servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind the SecurityLayer server to {address}")
    server.start()
    return server, port
