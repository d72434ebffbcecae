"""The one internal interface between STOQ and a sans-IO QUIC implementation.

STOQ drives a QUIC connection object that takes datagrams and time and gives datagrams, timers
and events (``aioquic.quic.connection.QuicConnection``'s shape). Two implementations fit:

* ``aioquic`` (default, pure Python), and
* ``qh3`` (optional, ``pip install stoq[qh3]``): an aioquic fork with a Rust packet core, path
  MTU discovery (DPLPMTUD) built in, and the hybrid X25519MLKEM768 TLS key exchange (0x11EC)
  offered by default.

:class:`Engine` hides the differences: building a configuration from STOQ's settings,
translating events into STOQ's own (:class:`HandshakeDone`, :class:`StreamData`...), reading
how much stream data is still buffered (backpressure), and capturing the TLS traffic secrets
that bind the post-quantum channel to this very QUIC connection (see :mod:`stoq.tls_binding`).
Both engines are exercised by the same tests.
"""

from __future__ import annotations

import abc
import importlib
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from stoq.errors import StoqError

__all__ = [
    "AIOQUIC_MAX_DATAGRAM",
    "ALPN",
    "ConnectionIdIssued",
    "ConnectionIdRetired",
    "DatagramReceived",
    "Engine",
    "EngineEvent",
    "EngineSettings",
    "HandshakeDone",
    "QuicConnectionLike",
    "StopSending",
    "StreamData",
    "StreamReset",
    "Terminated",
    "available_engines",
    "get_engine",
]

#: The ALPN protocol of STOQ version 1.
ALPN = "stoq/1"
#: aioquic 1.7.2 writes STREAM and CRYPTO frame lengths as 2-byte varints (at most 16383), so a
#: frame in a larger datagram is corrupt (FRAME_ENCODING_ERROR). The aioquic engine never uses
#: datagrams larger than this.
AIOQUIC_MAX_DATAGRAM = 16383
#: The smallest datagram every QUIC path must carry (RFC 9000 §14).
MIN_DATAGRAM = 1200


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    """The TLS handshake finished; ``alpn`` is the negotiated protocol."""

    alpn: str | None
    group: str | None


@dataclass(frozen=True, slots=True)
class StreamData:
    stream_id: int
    data: bytes
    end_stream: bool


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class StopSending:
    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class DatagramReceived:
    data: bytes


@dataclass(frozen=True, slots=True)
class Terminated:
    error_code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionIdIssued:
    connection_id: bytes


@dataclass(frozen=True, slots=True)
class ConnectionIdRetired:
    connection_id: bytes


EngineEvent = (
    HandshakeDone
    | StreamData
    | StreamReset
    | StopSending
    | DatagramReceived
    | Terminated
    | ConnectionIdIssued
    | ConnectionIdRetired
)


# --- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineSettings:
    """What STOQ asks of a QUIC connection, independent of the engine."""

    is_client: bool
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    private_key: CertificateIssuerPrivateKeyTypes
    max_datagram_size: int
    #: Let the engine discover the path MTU itself (qh3 only).
    probe_path_mtu: bool
    idle_timeout: float
    max_data: int
    max_stream_data: int
    max_datagram_frame_size: int
    server_name: str | None = None


class QuicConnectionLike(Protocol):
    """The subset of aioquic's ``QuicConnection`` STOQ uses (qh3 has the same)."""

    def connect(self, addr: Any, now: float) -> None: ...
    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None: ...
    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]: ...

    host_cid: bytes

    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def next_event(self) -> Any: ...
    def get_next_available_stream_id(self, is_unidirectional: bool = False) -> int: ...
    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None: ...
    def reset_stream(self, stream_id: int, error_code: int) -> None: ...
    def stop_stream(self, stream_id: int, error_code: int) -> None: ...
    def send_datagram_frame(self, data: bytes) -> None: ...
    def send_ping(self, uid: int) -> None: ...
    def close(
        self, error_code: int = ..., frame_type: int | None = ..., reason_phrase: str = ...
    ) -> None: ...


class _SecretsLog:
    """A write-only text sink in NSS key log format; keeps the 1-RTT traffic secrets.

    Both engines write ``LABEL <client_random hex> <secret hex>`` lines to
    ``QuicConfiguration.secrets_log_file`` as secrets are derived. We keep only the two
    application traffic secrets, in memory, to derive the channel binding; nothing is written
    anywhere.
    """

    WANTED = ("CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0")

    def __init__(self) -> None:
        self.secrets: dict[str, bytes] = {}
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            fields = line.split()
            if len(fields) == 3 and fields[0] in self.WANTED:
                self.secrets[fields[0]] = bytes.fromhex(fields[2])
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered beyond a partial line."""


class Engine(abc.ABC):
    """One QUIC implementation behind STOQ's interface. Use :func:`get_engine`."""

    name: str = ""

    def __init__(self, module_prefix: str) -> None:
        self._prefix = module_prefix
        connection = importlib.import_module(f"{module_prefix}.quic.connection")
        configuration = importlib.import_module(f"{module_prefix}.quic.configuration")
        events = importlib.import_module(f"{module_prefix}.quic.events")
        self._connection_class = connection.QuicConnection
        self._configuration_class = configuration.QuicConfiguration
        self._events = events
        self._handshake_completed = events.HandshakeCompleted
        self._translators: dict[type, Any] = {
            events.StreamDataReceived: lambda e: StreamData(e.stream_id, e.data, e.end_stream),
            events.DatagramFrameReceived: lambda e: DatagramReceived(e.data),
            events.StreamReset: lambda e: StreamReset(e.stream_id, e.error_code),
            events.StopSendingReceived: lambda e: StopSending(e.stream_id, e.error_code),
            events.ConnectionTerminated: lambda e: Terminated(e.error_code, e.reason_phrase),
            events.ConnectionIdIssued: lambda e: ConnectionIdIssued(e.connection_id),
            events.ConnectionIdRetired: lambda e: ConnectionIdRetired(e.connection_id),
        }

    # -- construction ------------------------------------------------------------------------

    def max_datagram_limit(self) -> int:
        """The largest datagram this engine handles correctly."""
        return 65527

    def configuration(self, settings: EngineSettings) -> tuple[Any, _SecretsLog]:
        secrets_log = _SecretsLog()
        config = self._configuration_class(
            is_client=settings.is_client,
            alpn_protocols=[ALPN],
            idle_timeout=settings.idle_timeout,
            max_datagram_size=min(settings.max_datagram_size, self.max_datagram_limit()),
            max_data=settings.max_data,
            max_stream_data=settings.max_stream_data,
            max_datagram_frame_size=settings.max_datagram_frame_size,
            server_name=settings.server_name,
            # TrustChain validates the peer (both signatures, revocation, names) over the
            # post-quantum channel handshake bound to this connection: see stoq.session. The
            # TLS layer still checks the server's CertificateVerify signature.
            verify_mode=ssl.CERT_NONE,
        )
        config.secrets_log_file = secrets_log
        self._load_certificate(config, settings)
        self._tune(config, settings)
        return config, secrets_log

    def _load_certificate(self, config: Any, settings: EngineSettings) -> None:
        config.certificate = settings.certificate
        config.certificate_chain = list(settings.chain)
        config.private_key = settings.private_key

    def _tune(self, config: Any, settings: EngineSettings) -> None:  # noqa: B027 - optional hook
        """Engine-specific settings (none by default)."""

    def client(self, settings: EngineSettings) -> tuple[QuicConnectionLike, _SecretsLog]:
        config, secrets_log = self.configuration(settings)
        connection: QuicConnectionLike = self._connection_class(configuration=config)
        return connection, secrets_log

    def server(
        self, settings: EngineSettings, original_destination_connection_id: bytes
    ) -> tuple[QuicConnectionLike, _SecretsLog]:
        config, secrets_log = self.configuration(settings)
        connection: QuicConnectionLike = self._connection_class(
            configuration=config,
            original_destination_connection_id=original_destination_connection_id,
        )
        return connection, secrets_log

    # -- running -----------------------------------------------------------------------------

    def events(self, connection: QuicConnectionLike) -> Iterator[EngineEvent]:
        """The connection's pending events, translated; events STOQ does not use are skipped."""
        translators = self._translators
        while (event := connection.next_event()) is not None:
            if type(event) is self._handshake_completed:
                yield HandshakeDone(event.alpn_protocol, self.key_exchange_group(connection))
                continue
            translate = translators.get(type(event))
            if translate is not None:
                yield translate(event)

    def receive_datagrams(
        self, connection: QuicConnectionLike, datagrams: Sequence[bytes], addr: Any, now: float
    ) -> None:
        for data in datagrams:
            connection.receive_datagram(data, addr, now)

    def datagrams_to_send(
        self, connection: QuicConnectionLike, now: float
    ) -> list[tuple[bytes, Any]]:
        """The datagrams ``connection`` has to send now."""
        return connection.datagrams_to_send(now=now)

    def stream_blocked(self, connection: QuicConnectionLike, stream_id: int) -> bool:
        """Whether opening ``stream_id`` now would exceed the peer's stream limit. aioquic
        queues such a stream itself (STREAMS_BLOCKED) and sends when the limit rises."""
        return False

    @abc.abstractmethod
    def send_buffered(self, connection: QuicConnectionLike, stream_id: int) -> int:
        """Bytes written to ``stream_id`` that the peer has not acknowledged yet."""

    @abc.abstractmethod
    def peer_certificate_der(self, connection: QuicConnectionLike) -> bytes | None:
        """The certificate the peer presented in the TLS handshake, DER (server's, on a client)."""

    def key_exchange_group(self, connection: QuicConnectionLike) -> str | None:
        """The TLS key exchange group the handshake used, when the engine tells."""
        return None


class _Aioquic(Engine):
    name = "aioquic"

    def __init__(self) -> None:
        super().__init__("aioquic")

    def max_datagram_limit(self) -> int:
        return AIOQUIC_MAX_DATAGRAM

    def send_buffered(self, connection: QuicConnectionLike, stream_id: int) -> int:
        # aioquic keeps unacknowledged stream data in QuicStreamSender._buffer; there is no
        # public accessor, and this is the one place STOQ reaches into it.
        stream = connection._streams.get(stream_id)  # type: ignore[attr-defined]
        if stream is None:
            return 0
        return len(stream.sender._buffer)

    def peer_certificate_der(self, connection: QuicConnectionLike) -> bytes | None:
        tls = connection.tls  # type: ignore[attr-defined]
        certificate = getattr(tls, "_peer_certificate", None)
        if certificate is None:
            return None
        return certificate.public_bytes(serialization.Encoding.DER)  # type: ignore[no-any-return]

    def key_exchange_group(self, connection: QuicConnectionLike) -> str | None:
        tls = connection.tls  # type: ignore[attr-defined]
        if getattr(tls, "_x25519_private_key", None) is not None:
            return "x25519"
        return None


class _Qh3(Engine):
    name = "qh3"

    def __init__(self) -> None:
        super().__init__("qh3")

    def _load_certificate(self, config: Any, settings: EngineSettings) -> None:
        # qh3 has its own certificate and key types; build them from DER and PKCS#8 directly
        # (its PEM splitter mis-parses some certificates).
        tls = importlib.import_module("qh3.tls")
        config.certificate = tls.X509Certificate(
            settings.certificate.public_bytes(serialization.Encoding.DER)
        )
        config.certificate_chain = [
            tls.X509Certificate(c.public_bytes(serialization.Encoding.DER)) for c in settings.chain
        ]
        config.private_key = tls.load_pem_private_key(
            settings.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def _tune(self, config: Any, settings: EngineSettings) -> None:
        config.probe_datagram_size = settings.probe_path_mtu
        # qh3 leaves EdDSA out of its default list; TrustChain node keys are Ed25519 (+ Falcon).
        tls = importlib.import_module("qh3.tls")
        config.signature_algorithms = [tls.SignatureAlgorithm.ED25519]

    def receive_datagrams(
        self, connection: QuicConnectionLike, datagrams: Sequence[bytes], addr: Any, now: float
    ) -> None:
        if len(datagrams) == 1:
            connection.receive_datagram(datagrams[0], addr, now)
        else:
            connection.receive_many_datagrams(list(datagrams), addr, now)  # type: ignore[attr-defined]

    def datagrams_to_send(
        self, connection: QuicConnectionLike, now: float
    ) -> list[tuple[bytes, Any]]:
        # qh3's public wrapper parses the header of every packet it sends, for a qlog that
        # STOQ never configures: about a fifth of the sender's time at 1200-byte datagrams.
        # Without a logger, poll the Rust core directly (same calls, same errors).
        core = getattr(connection, "_core", None)
        if core is None or getattr(connection, "_quic_logger", True) is not None:
            return connection.datagrams_to_send(now=now)
        poll = core.poll_transmit
        datagrams = []
        try:
            while (transmit := poll(now)) is not None:
                datagrams.append((transmit[0], transmit[1]))
        except RuntimeError as exc:
            raise StoqError(f"qh3: {exc}") from exc
        return datagrams

    def stream_blocked(self, connection: QuicConnectionLike, stream_id: int) -> bool:
        # qh3 refuses (ValueError) a stream beyond the peer's cumulative MAX_STREAMS limit.
        limit = (
            connection.max_concurrent_uni_streams  # type: ignore[attr-defined]
            if stream_id & 2
            else connection.max_concurrent_bidi_streams  # type: ignore[attr-defined]
        )
        return stream_id >> 2 >= int(limit)

    def send_buffered(self, connection: QuicConnectionLike, stream_id: int) -> int:
        return int(connection.get_send_buffer_size(stream_id))  # type: ignore[attr-defined]

    def peer_certificate_der(self, connection: QuicConnectionLike) -> bytes | None:
        certificate = connection.get_peercert()  # type: ignore[attr-defined]
        if certificate is None:
            return None
        return bytes(certificate.public_bytes())

    def key_exchange_group(self, connection: QuicConnectionLike) -> str | None:
        tls = connection.tls  # type: ignore[attr-defined]
        if getattr(tls, "_x25519_kyber_768_private_key", None) is not None:
            return "X25519MLKEM768"
        if getattr(tls, "_x25519_private_key", None) is not None:
            return "x25519"
        return None


_ENGINES: dict[str, Callable[[], Engine]] = {"aioquic": _Aioquic, "qh3": _Qh3}
_LOADED: dict[str, Engine] = {}


def available_engines() -> tuple[str, ...]:
    """Names of the engines whose library is installed."""
    names = []
    for name in _ENGINES:
        try:
            get_engine(name)
        except StoqError:
            continue
        names.append(name)
    return tuple(names)


def get_engine(name: str) -> Engine:
    """The engine called ``name``; :class:`StoqError` if unknown or its library is missing."""
    engine = _LOADED.get(name)
    if engine is not None:
        return engine
    try:
        factory = _ENGINES[name]
    except KeyError:
        raise StoqError(f"unknown QUIC engine {name!r} (known: {', '.join(_ENGINES)})") from None
    try:
        engine = factory()
    except ImportError as exc:
        raise StoqError(
            f"QUIC engine {name!r} is not installed ({exc}); pip install stoq[{name}]"
        ) from exc
    _LOADED[name] = engine
    return engine
