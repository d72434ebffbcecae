"""STOQ's throughput, latency and robustness measurements, beside raw aioquic, qh3 and TCP+TLS.

``stoq bench --json`` prints :func:`run_comparison`'s records; ``benchmarks/stoq.py`` runs every
figure here (``nox -s bench``). All figures are loopback (127.0.0.1) and one run of a figure uses
one connection unless it says otherwise.

Processes
=========

Every measurement runs its server in a fresh process of its own
(``python -P -m stoq.benchmark serve SPEC``, see :class:`ServerSpec`) and its client in the
calling process. The server prints one JSON line ``{"port": <udp or tcp port>}`` once it
listens, answers each ``stats`` line on its standard input with one JSON line of counters,
and exits when its standard input is closed; the client side (:class:`ServerProcess`) starts
it, reads the port, and closes its stdin when done. A run that takes longer than its timeout
raises :class:`BenchmarkFailed` instead of hanging.

The measuring protocol
======================

The server counts what it receives and reports the count back, so a run only counts bytes that
really arrived:

* QUIC peers (raw aioquic, qh3): the client writes its bytes on a bidirectional stream and ends
  it (FIN); the server answers on that stream with one JSON object
  ``{"received": <bytes>, "largest_datagram": <bytes>}`` and ends it. ``largest_datagram`` is
  the largest UDP datagram the server has received so far, which shows the datagram size the
  client really used.
* TCP + TLS 1.3 (asyncio streams over Python's ``ssl``): asyncio cannot half-close a TLS stream,
  so the client first sends the byte count as 8 bytes big-endian, then the bytes; the server
  answers ``{"received": <bytes>}`` and a newline once it has read that many.
* STOQ: the client sends messages of :data:`CHUNK` bytes (each sealed by the post-quantum
  channel) and finishes the stream; the server answers with one message
  ``{"received": <bytes>, "messages": <count>}`` and finishes.

The client checks that ``received`` equals what it sent and raises :class:`BenchmarkFailed`
otherwise. A bulk run is timed from the first byte written to the arrival of that answer;
Gbps = bits / seconds / 1e9.

Peers
=====

The raw peers present a throwaway self-signed ECDSA P-256 certificate made at start-up (qh3 does
not offer Ed25519 by default), and their clients do not verify it: they are benchmark peers
that measure the transport, not the PKI. STOQ uses a real TrustChain PKI
(:func:`make_bench_pki`): a root, an intermediate and two node certificates, validated on both
sides with their CRLs, exactly as in production except for the key store's weak test-grade
Argon2 parameters (the key store's cost is not what is measured).

* ``aioquic``: its default configuration except ``max_datagram_size``. "pmtu" means 16383
  bytes: aioquic 1.7.2 writes STREAM frame lengths as 2-byte varints (at most 16383), so larger
  datagrams corrupt frames (FRAME_ENCODING_ERROR) and the transfer hangs.
* ``qh3`` (optional, ``pip install stoq[qh3]``; a record with ``skipped`` when missing): 1200
  fixes ``max_datagram_size`` at 1200 with path MTU probing off; "pmtu" turns its DPLPMTUD
  probing on with a ceiling of :data:`UDP_MAX_PAYLOAD` (the largest UDP payload over IPv4).
* ``tcp-tls``: TCP segments, so the datagram size does not apply; reported as "pmtu" with a
  note.
* ``stoq``: :class:`~stoq.config.StoqConfig` with ``max_datagram_size`` 1200 or ``"pmtu"``
  (the engine then picks the size; ``largest_datagram`` shows what it used).

Every QUIC server reports the largest datagram it received (``largest_datagram``), so a record
shows the datagram size really used, not only the one asked for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib
import json
import os
import secrets
import select
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Literal, TypeAlias, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stoq.config import StoqConfig
from stoq.connection import StoqConnection, Stream
from stoq.endpoint import Endpoint, connect
from stoq.engine import ALPN
from stoq.errors import (
    ConnectError,
    ConnectionLost,
    MessageTooLarge,
    StoqError,
    StreamClosed,
)
from stoq.identity import NodeIdentity, PeerPolicy
from stoq.session import ERROR_MESSAGE_TOO_LARGE
from stoq.udp import Batch, BatchSocket
from trustchain.ca.trust import TrustAnchor, TrustStore

__all__ = [
    "CHUNK",
    "DATAGRAMS",
    "IMPLS",
    "UDP_MAX_PAYLOAD",
    "BenchPki",
    "BenchRecord",
    "BenchmarkFailed",
    "ConnectionRateRecord",
    "Datagram",
    "HandshakeRecord",
    "Impl",
    "ServerProcess",
    "ServerSpec",
    "SoakReport",
    "StreamsRecord",
    "concurrent_streams",
    "connection_rate",
    "handshake_latency",
    "make_bench_pki",
    "make_self_signed",
    "run_comparison",
    "soak",
]

Impl: TypeAlias = Literal["stoq", "aioquic", "qh3", "tcp-tls"]
#: A datagram size as the CLI reports it: 1200 bytes, or the path MTU.
Datagram: TypeAlias = int | Literal["pmtu"]

#: Every implementation measured, in the order the reports list them.
IMPLS: Final[tuple[Impl, ...]] = ("stoq", "aioquic", "qh3", "tcp-tls")
#: The datagram sizes of the comparison.
DATAGRAMS: Final[tuple[Datagram, ...]] = (1200, "pmtu")
MIB: Final = 1 << 20
#: Bytes per write (per STOQ message) of a bulk transfer.
CHUNK: Final = 64 * 1024
#: The largest UDP payload over IPv4 (65535 - 20 - 8): the ceiling for path MTU discovery.
UDP_MAX_PAYLOAD: Final = 65507
#: aioquic 1.7.2's largest working datagram (see the module docs).
AIOQUIC_MAX_DATAGRAM: Final = 16383
#: ALPN of the raw QUIC peers.
RAW_ALPN: Final = "stoq-bench-raw"
#: Seconds one run may take before it counts as hung.
RUN_TIMEOUT: Final = 120.0
#: Seconds a server process may take to start listening.
START_TIMEOUT: Final = 60.0
#: The soak server's message size limit; the soak sends messages of twice this.
SOAK_MAX_MESSAGE: Final = 1 << 20
#: QUIC application error code the soak server closes a connection with after an oversized
#: message.
SOAK_OVERSIZED_CODE: Final = 0x5354

_T = TypeVar("_T")


class BenchmarkFailed(StoqError):
    """A measurement could not be made: a server process failed or did not start, a run timed
    out, or the server counted other bytes than the client sent."""


# --- results ----------------------------------------------------------------------------------


def _gbps(nbytes: int, seconds: float) -> float:
    return nbytes * 8 / seconds / 1e9


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


@dataclass(frozen=True)
class BenchRecord:
    """One bulk-throughput figure: ``impl`` at ``datagram`` (1200 or "pmtu").

    ``gbps`` is the median of ``samples`` (Gbps of each of ``repeats`` runs of ``mb`` MiB), or
    None when the implementation was ``skipped`` (the reason). ``datagram_bytes``: the
    configured largest datagram (None for TCP); ``largest_datagram``: the largest datagram the
    server saw, where it can see them. ``engine``: STOQ's QUIC engine. ``note``: what else a
    reader must know to compare the figure.
    """

    impl: Impl
    datagram: Datagram
    mb: int
    gbps: float | None
    repeats: int
    samples: tuple[float, ...] = ()
    datagram_bytes: int | None = None
    largest_datagram: int | None = None
    engine: str | None = None
    note: str | None = None
    skipped: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as one JSON object: ``impl``, ``datagram``, ``gbps`` (null only when
        skipped), ``mb``, ``repeats``, ``samples``, then whichever of ``datagram_bytes``,
        ``largest_datagram``, ``engine``, ``note``, ``skipped`` apply."""
        body = _without_none(asdict(self))
        body["gbps"] = None if self.gbps is None else round(self.gbps, 4)
        body["samples"] = [round(s, 4) for s in self.samples]
        return {"figure": "bulk", **body}


@dataclass(frozen=True)
class HandshakeRecord:
    """Time from starting to connect to a usable connection, ``count`` sequential connections.

    ``pq_channel``: whether the figure includes STOQ's post-quantum channel handshake (None for
    peers that have none). Milliseconds: the median, the 90th percentile, every sample.
    """

    impl: Impl
    count: int
    median_ms: float | None
    p90_ms: float | None
    samples_ms: tuple[float, ...] = ()
    pq_channel: bool | None = None
    engine: str | None = None
    note: str | None = None
    skipped: str | None = None

    def to_json(self) -> dict[str, Any]:
        body = _without_none(asdict(self))
        for key in ("median_ms", "p90_ms"):
            if key in body:
                body[key] = round(body[key], 3)
        body["samples_ms"] = [round(s, 3) for s in self.samples_ms]
        return {"figure": "handshake", **body}


@dataclass(frozen=True)
class StreamsRecord:
    """Aggregate Gbps of ``streams`` concurrent streams on one connection, each sending an equal
    share of ``mb`` MiB; the median of ``samples`` (one per run)."""

    impl: Impl
    streams: int
    datagram: Datagram
    mb: int
    gbps: float | None
    repeats: int
    samples: tuple[float, ...] = ()
    datagram_bytes: int | None = None
    engine: str | None = None
    skipped: str | None = None

    def to_json(self) -> dict[str, Any]:
        body = _without_none(asdict(self))
        if self.gbps is not None:
            body["gbps"] = round(self.gbps, 4)
        body["samples"] = [round(s, 4) for s in self.samples]
        return {"figure": "streams", **body}


@dataclass(frozen=True)
class ConnectionRateRecord:
    """Sequential connect + close cycles per second over ``seconds`` (``connections`` made)."""

    impl: Impl
    per_second: float | None
    connections: int
    seconds: float
    engine: str | None = None
    note: str | None = None
    skipped: str | None = None

    def to_json(self) -> dict[str, Any]:
        body = _without_none(asdict(self))
        if self.per_second is not None:
            body["per_second"] = round(self.per_second, 2)
        body["seconds"] = round(self.seconds, 3)
        return {"figure": "connections", **body}


@dataclass(frozen=True)
class SoakReport:
    """What a :func:`soak` run did to a STOQ server and how its memory behaved.

    RSS (resident set size, KiB, from ``/proc/<pid>/status`` ``VmRSS``): ``rss_start_kib``
    after the first connection's first round trip, ``rss_peak_kib`` the largest sample,
    ``rss_end_kib`` the last; ``rss_samples`` are ``(seconds since start, KiB)``.

    Traffic: ``round_trips``: request/answer round trips that succeeded, on one long-lived
    connection plus the final check (a failed one raises); ``random_datagrams``,
    ``forged_initials``, ``mutated_initials``: hostile datagrams sent (see :func:`soak`);
    ``fuzz_blocked``: hostile datagrams the client's own socket buffer refused;
    ``oversized_rejected``: oversized messages the server refused as it must.

    Admission: ``new_connections`` attempted while under attack (for the oversized messages,
    and one at the end), ``connect_failures`` of them failed (``last_connect_error`` says
    why); ``accepting_at_end``: the last one connected and completed a round trip;
    ``server_alive``: the server process was still running at the end. ``server_stats``: the
    server's counters at the end (:meth:`ServerProcess.stats`).
    """

    seconds: float
    engine: str
    rss_start_kib: int
    rss_peak_kib: int
    rss_end_kib: int
    round_trips: int
    random_datagrams: int
    forged_initials: int
    mutated_initials: int
    fuzz_blocked: int
    oversized_rejected: int
    new_connections: int
    connect_failures: int
    accepting_at_end: bool
    server_alive: bool
    server_stats: dict[str, int] = field(default_factory=dict)
    last_connect_error: str | None = None
    rss_samples: tuple[tuple[float, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        body = _without_none(asdict(self))
        body["seconds"] = round(self.seconds, 1)
        body["rss_samples"] = [[round(t, 1), kib] for t, kib in self.rss_samples]
        return {"figure": "soak", **body}


# --- certificates -----------------------------------------------------------------------------


def make_self_signed(directory: Path, name: str = "bench") -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for ``name`` (valid one day) and its key, written
    as ``directory/bench-cert.pem`` and ``directory/bench-key.pem`` (PKCS#8, unencrypted: a
    throwaway benchmark key); returns ``(certificate path, key path)``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "bench-cert.pem"
    key_path = directory / "bench-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass(frozen=True)
class BenchPki:
    """The files of a throwaway TrustChain PKI (see :func:`make_bench_pki`), as path strings.

    ``keystore``: the key store home holding both node keys (``server_key`` and
    ``client_key`` are their names), opened with ``passphrase``; ``root``: the root
    certificate (PEM); ``crls``: the root's and the intermediate's CRLs (PEM files);
    ``server_chain`` / ``client_chain``: leaf then intermediate (PEM); ``server_name``: the DNS
    name in the server's certificate (it also names 127.0.0.1 and ::1).
    """

    keystore: str
    passphrase: str
    root: str
    crls: tuple[str, ...]
    server_key: str
    server_chain: str
    client_key: str
    client_chain: str
    server_name: str

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> BenchPki:
        return cls(**{**body, "crls": tuple(body["crls"])})


def make_bench_pki(directory: Path) -> BenchPki:
    """Issue a root, an intermediate (namespace ``bench.hypermesh``) and node certificates for
    ``server.bench.hypermesh`` and ``client.bench.hypermesh`` with TrustChain's CA, keys in a
    new key store, everything under ``directory``.

    The key store uses :data:`~trustchain.crypto.keystore.INSECURE_TEST_KDF_PARAMS` (Argon2id
    at test cost) with a random passphrase: fine for a throwaway benchmark PKI, never for a
    real node.
    """
    from trustchain.ca.authority import CertificateAuthority
    from trustchain.crypto.keystore import INSECURE_TEST_KDF_PARAMS, KeyStore

    passphrase = secrets.token_hex(16)
    home = directory / "keys"
    server_name = "server.bench.hypermesh"
    client_name = "client.bench.hypermesh"
    with KeyStore.open(
        home,
        passphrase=passphrase.encode(),
        kdf_params=INSECURE_TEST_KDF_PARAMS,
        allow_weak_kdf=True,
    ) as store:
        ca = CertificateAuthority(directory / "ca", store)
        try:
            root = ca.init_root("stoq-bench-root")
            ca.issue_intermediate("bench", "bench.hypermesh")
            server = ca.issue(
                "bench",
                "node",
                server_name,
                dns_names=[server_name],
                ip_addresses=["127.0.0.1", "::1"],
            )
            client = ca.issue("bench", "node", client_name, dns_names=[client_name])
            crls = (ca.crl(), ca.crl("bench"))
        finally:
            ca.close()
    assert server.key_name is not None  # issued with a fresh key-store key
    assert client.key_name is not None
    root_path = directory / "root.pem"
    root_path.write_bytes(root.certificate.public_bytes(serialization.Encoding.PEM))
    crl_paths = []
    for index, crl in enumerate(crls):
        path = directory / f"crl-{index}.pem"
        path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        crl_paths.append(str(path))
    server_chain = directory / "server-chain.pem"
    server_chain.write_bytes(server.pem())
    client_chain = directory / "client-chain.pem"
    client_chain.write_bytes(client.pem())
    return BenchPki(
        keystore=str(home),
        passphrase=passphrase,
        root=str(root_path),
        crls=tuple(crl_paths),
        server_key=server.key_name,
        server_chain=str(server_chain),
        client_key=client.key_name,
        client_chain=str(client_chain),
        server_name=server_name,
    )


# --- server processes -------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    """What a benchmark server process serves (JSON on its command line).

    ``impl``: which server; ``datagram_bytes``: the server's largest datagram (QUIC);
    ``cert`` / ``key``: the raw peers' certificate files; ``pki``: STOQ's PKI; ``engine``:
    STOQ's QUIC engine; ``stoq_datagram``: STOQ's ``max_datagram_size``;
    ``max_message_size``: STOQ's message limit (None: the default).
    """

    impl: Impl
    datagram_bytes: int = 1200
    cert: str | None = None
    key: str | None = None
    pki: BenchPki | None = None
    engine: str | None = None
    stoq_datagram: Datagram = 1200
    max_message_size: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServerSpec:
        body = json.loads(text)
        if body.get("pki") is not None:
            body["pki"] = BenchPki.from_json(body["pki"])
        return cls(**body)


class ServerProcess:
    """A benchmark server in a child process: ``with ServerProcess(spec) as server:`` starts
    it and waits until it listens (``server.port``); leaving the block closes its stdin, which
    ends it, and kills it if it has not exited after ``stop_timeout`` seconds.

    Its stderr goes to a temporary file whose end is quoted in :class:`BenchmarkFailed`.
    """

    def __init__(self, spec: ServerSpec, *, start_timeout: float = START_TIMEOUT) -> None:
        self.spec = spec
        self.start_timeout = start_timeout
        self.stop_timeout = 10.0
        self.port = 0
        self._stderr: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise BenchmarkFailed("the server process is not running")
        return self._process.pid

    def __enter__(self) -> ServerProcess:
        self._stderr = tempfile.TemporaryFile()
        # -P: the current directory must not shadow the stoq package (benchmarks/stoq.py).
        self._process = subprocess.Popen(
            [sys.executable, "-P", "-m", "stoq.benchmark", "serve", self.spec.to_json()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        try:
            self.port = self._read_port()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop()

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self._process is not None and self._process.poll() is None

    def rss_kib(self) -> int:
        """The process's resident set size in KiB (``VmRSS`` of ``/proc/<pid>/status``)."""
        status = Path(f"/proc/{self.pid}/status")
        try:
            text = status.read_text()
        except OSError as exc:
            raise BenchmarkFailed(f"cannot read the server's memory use: {exc}") from exc
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise BenchmarkFailed(f"{status} has no VmRSS line")

    def failure(self, message: str) -> BenchmarkFailed:
        """A :class:`BenchmarkFailed` saying ``message`` and quoting the server's stderr."""
        tail = self.stderr_tail()
        return BenchmarkFailed(f"{message}; server stderr: {tail}" if tail else message)

    def stderr_tail(self, limit: int = 2000) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-limit:].strip()

    def stats(self) -> dict[str, int]:
        """The server's counters, asked over its stdin. Every server: ``largest_datagram``
        (QUIC); STOQ also ``connections`` (open now), ``dropped_datagrams`` (matching no
        connection and no valid Initial) and ``refused_connections`` (over the limits)."""
        assert self._process is not None
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(b"stats\n")
            self._process.stdin.flush()
        except BrokenPipeError as exc:
            raise self.failure("the server is gone") from exc
        line = self._read_line(self.stop_timeout, "answer with its counters")
        try:
            body = json.loads(line)
            return {str(key): int(value) for key, value in body.items()}
        except (ValueError, AttributeError, TypeError) as exc:
            raise self.failure(f"the server answered {line!r}, not counters") from exc

    def _read_port(self) -> int:
        line = self._read_line(self.start_timeout, "start listening")
        try:
            port = int(json.loads(line)["port"])
        except (ValueError, KeyError, TypeError) as exc:
            raise self.failure(f"the server announced {line!r}, not a port") from exc
        return port

    def _read_line(self, timeout: float, what: str) -> bytes:
        """One line of the server's stdout, waiting at most ``timeout`` seconds for it to
        ``what``."""
        assert self._process is not None
        assert self._process.stdout is not None
        stdout = self._process.stdout
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.failure(f"the {self.spec.impl} server did not {what}")
            ready, _, _ = select.select([stdout], [], [], remaining)
            if not ready:
                continue
            byte = os.read(stdout.fileno(), 1)
            if not byte:
                self._process.wait(timeout=self.stop_timeout)
                raise self.failure(
                    f"the {self.spec.impl} server exited with {self._process.returncode} "
                    f"instead of: {what}"
                )
            line += byte
        return line

    def _stop(self) -> None:
        process = self._process
        if process is None:
            return
        if process.stdin is not None and not process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()
        try:
            process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
        self._process = None


# --- helpers shared by the clients -----------------------------------------------------------


def _run(coroutine: Coroutine[Any, Any, _T], timeout: float, what: str) -> _T:
    """Run ``coroutine`` in a fresh event loop; a run past ``timeout`` s is a failure."""

    async def bounded() -> _T:
        try:
            return await asyncio.wait_for(coroutine, timeout)
        except TimeoutError:
            raise BenchmarkFailed(f"{what} did not finish within {timeout:g} s") from None

    return asyncio.run(bounded())


def _shares(total: int, parts: int) -> list[int]:
    """``total`` bytes split into ``parts`` near-equal shares (the first ones one byte more)."""
    base, extra = divmod(total, parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]


def _check_count(answer: bytes, sent: int, what: str) -> dict[str, Any]:
    """The server's JSON answer, after checking that it counted exactly ``sent`` bytes."""
    try:
        body = json.loads(answer)
        if not isinstance(body, dict):
            raise TypeError("not a JSON object")
        received = int(body["received"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BenchmarkFailed(f"{what}: the server answered {answer[:200]!r}") from exc
    if received != sent:
        raise BenchmarkFailed(f"{what}: sent {sent} bytes but the server received {received}")
    return body


def _payload() -> bytes:
    return os.urandom(CHUNK)


def _qh3_available() -> bool:
    try:
        import qh3  # noqa: F401
    except ImportError:
        return False
    return True


class _Tasks:
    """Tasks a server spawns per connection or stream; failures are written to stderr (the
    parent quotes it when a run fails), never dropped."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            print(f"server task failed: {task.exception()!r}", file=sys.stderr, flush=True)

    async def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# --- raw QUIC peers (aioquic, qh3) ------------------------------------------------------------


class _DatagramMeter:
    """The largest datagram a server has received."""

    def __init__(self) -> None:
        self.largest = 0

    def see(self, size: int) -> None:
        if size > self.largest:
            self.largest = size


async def _count_quic_stream(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, meter: _DatagramMeter
) -> None:
    received = 0
    while chunk := await reader.read(MIB):
        received += len(chunk)
    answer = {"received": received, "largest_datagram": meter.largest}
    writer.write(json.dumps(answer).encode())
    writer.write_eof()


@dataclass(frozen=True)
class _Running:
    """A benchmark server inside its process: its port, how to close it (a function returning
    None or an awaitable) and its counters (see :meth:`ServerProcess.stats`)."""

    port: int
    close: Callable[[], Awaitable[None] | None]
    stats: Callable[[], dict[str, int]]


async def _serve_raw_quic(spec: ServerSpec, tasks: _Tasks) -> _Running:
    """A raw aioquic or qh3 server on 127.0.0.1 counting every stream (see the module docs)."""
    assert spec.cert is not None
    assert spec.key is not None
    meter = _DatagramMeter()

    def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.spawn(_count_quic_stream(reader, writer, meter))

    # aioquic and qh3 share this API; only the package name differs.
    package = spec.impl
    protocol = importlib.import_module(f"{package}.asyncio.protocol")
    server_module = importlib.import_module(f"{package}.asyncio.server")
    configuration = importlib.import_module(f"{package}.quic.configuration")
    config = configuration.QuicConfiguration(
        is_client=False, alpn_protocols=[RAW_ALPN], max_datagram_size=spec.datagram_bytes
    )
    config.load_cert_chain(spec.cert, spec.key)
    base: Any = server_module.QuicServer

    class MeteredServer(base):  # type: ignore[misc]
        def datagram_received(self, data: bytes | str, addr: Any) -> None:
            meter.see(len(data))
            super().datagram_received(data, addr)

    transport, server = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: MeteredServer(
            configuration=config,
            create_protocol=protocol.QuicConnectionProtocol,
            stream_handler=on_stream,
        ),
        local_addr=("127.0.0.1", 0),
    )
    return _Running(
        int(transport.get_extra_info("sockname")[1]),
        server.close,
        lambda: {"largest_datagram": meter.largest},
    )


def _raw_quic_client_config(impl: Impl, datagram_bytes: int, probe: bool) -> Any:
    """A client configuration for the raw peer ``impl`` (its own class, hence ``Any``)."""
    if impl == "aioquic":
        from aioquic.quic.configuration import QuicConfiguration

        # A benchmark peer: the server's throwaway self-signed certificate is not verified.
        return QuicConfiguration(
            is_client=True,
            alpn_protocols=[RAW_ALPN],
            max_datagram_size=datagram_bytes,
            verify_mode=ssl.CERT_NONE,
        )
    from qh3.quic.configuration import QuicConfiguration as Qh3Configuration

    # A benchmark peer: the server's throwaway self-signed certificate is not verified.
    return Qh3Configuration(
        is_client=True,
        alpn_protocols=[RAW_ALPN],
        max_datagram_size=datagram_bytes,
        probe_datagram_size=probe,
        verify_mode=ssl.CERT_NONE,
    )


def _raw_quic_connect(
    impl: Impl, port: int, config: Any
) -> contextlib.AbstractAsyncContextManager[Any]:
    if impl == "aioquic":
        from aioquic.asyncio.client import connect

        return connect("127.0.0.1", port, configuration=config)
    from qh3.asyncio.client import connect as qh3_connect

    return qh3_connect("127.0.0.1", port, configuration=config)


async def _raw_quic_handshake(impl: Impl, port: int, config: Any) -> float:
    """Connect a raw aioquic or qh3 client: seconds until the TLS handshake completes. Then
    close it the way STOQ closes: CONNECTION_CLOSE sent and the socket released at once (the
    libraries' ``connect`` context managers also wait out the closing period, ~3 PTO, which
    would dominate a connections-per-second figure)."""
    loop = asyncio.get_running_loop()
    address = ("127.0.0.1", port)
    start = time.perf_counter()
    if impl == "aioquic":
        from aioquic.asyncio.protocol import QuicConnectionProtocol
        from aioquic.quic.connection import QuicConnection

        transport, protocol = await loop.create_datagram_endpoint(
            lambda: QuicConnectionProtocol(QuicConnection(configuration=config)),
            remote_addr=address,
        )
        try:
            protocol.connect(address)
            await protocol.wait_connected()
            elapsed = time.perf_counter() - start
            protocol.close()
        finally:
            transport.close()
        return elapsed
    from qh3.asyncio.protocol import QuicConnectionProtocol as Qh3Protocol
    from qh3.quic.connection import QuicConnection as Qh3Connection

    qh3_transport, qh3_protocol = await loop.create_datagram_endpoint(
        lambda: Qh3Protocol(Qh3Connection(configuration=config)), remote_addr=address
    )
    try:
        qh3_protocol.connect(address)
        await qh3_protocol.wait_connected()
        elapsed = time.perf_counter() - start
        qh3_protocol.close()
    finally:
        qh3_transport.close()
    return elapsed


async def _quic_send_counted(client: Any, size: int, payload: bytes) -> int:
    """Open a stream on ``client`` (an aioquic or qh3 connection protocol), write ``size``
    bytes and FIN, check the server's count; return the largest datagram the server saw.

    The stream is written to as soon as it is opened, in the same task: the library allocates
    a stream id only when data is first sent, so streams opened together before any write would
    all get the same id.

    Neither aioquic's nor qh3's stream writer applies backpressure (``drain`` returns at once,
    or fails on qh3's): each write goes into the QUIC stack's send buffer, which flow control
    and the congestion controller empty.
    """
    reader, writer = await client.create_stream()
    left = size
    while left >= len(payload):
        writer.write(payload)
        left -= len(payload)
    if left:
        writer.write(payload[:left])
    writer.write_eof()
    answer = await reader.read()
    body = _check_count(answer, size, "raw QUIC stream")
    return int(body.get("largest_datagram", 0))


async def _raw_quic_transfer(
    impl: Impl, port: int, datagram_bytes: int, probe: bool, total: int, streams: int
) -> tuple[float, int]:
    """One connection, ``streams`` streams sharing ``total`` bytes: (seconds, largest
    datagram)."""
    config = _raw_quic_client_config(impl, datagram_bytes, probe)
    payload = _payload()
    async with _raw_quic_connect(impl, port, config) as client:
        start = time.perf_counter()
        largest = await asyncio.gather(
            *(_quic_send_counted(client, share, payload) for share in _shares(total, streams))
        )
        elapsed = time.perf_counter() - start
    return elapsed, max(largest)


# --- TCP + TLS --------------------------------------------------------------------------------


async def _count_tls_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        expected = int.from_bytes(await reader.readexactly(8), "big")
        received = 0
        while received < expected:
            chunk = await reader.read(min(MIB, expected - received))
            if not chunk:
                break
            received += len(chunk)
        writer.write(json.dumps({"received": received}).encode() + b"\n")
        await writer.drain()
    finally:
        await _tcp_tls_close(writer)


async def _serve_tcp_tls(spec: ServerSpec, tasks: _Tasks) -> _Running:
    assert spec.cert is not None
    assert spec.key is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(spec.cert, spec.key)

    def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.spawn(_count_tls_stream(reader, writer))

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0, ssl=context)
    return _Running(int(server.sockets[0].getsockname()[1]), server.close, dict)


def _tls_client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    # A benchmark peer: the server's throwaway self-signed certificate is not verified.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _tcp_tls_open(
    port: int, context: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, ssl=context)


async def _tcp_tls_close(writer: asyncio.StreamWriter) -> None:
    """Close a TLS stream whose exchange is over (and was checked): a peer that has already
    closed makes the TLS shutdown fail with an SSL or connection error, which changes
    nothing then."""
    writer.close()
    with contextlib.suppress(ssl.SSLError, ConnectionError):
        await writer.wait_closed()


async def _tcp_tls_transfer(port: int, total: int) -> float:
    reader, writer = await _tcp_tls_open(port, _tls_client_context())
    payload = memoryview(_payload())
    try:
        start = time.perf_counter()
        writer.write(total.to_bytes(8, "big"))
        left = total
        while left > 0:
            n = min(left, len(payload))
            writer.write(payload[:n])
            left -= n
            await writer.drain()
        answer = await reader.readline()
        elapsed = time.perf_counter() - start
        _check_count(answer, total, "TCP+TLS")
    finally:
        await _tcp_tls_close(writer)
    return elapsed


# --- STOQ -------------------------------------------------------------------------------------


def _stoq_config(
    pki: BenchPki,
    role: Literal["server", "client"],
    *,
    engine: str | None,
    datagram: Datagram,
    max_message_size: int | None = None,
) -> StoqConfig:
    """The STOQ configuration of the benchmark's server or client node (see :class:`BenchPki`).

    Peers are validated as in production: the root as the only anchor, the intermediate and
    both CRLs in the trust store, the ``bench.hypermesh`` namespace required.
    """
    key, chain = (
        (pki.server_key, pki.server_chain)
        if role == "server"
        else (pki.client_key, pki.client_chain)
    )
    identity = NodeIdentity.load(
        Path(pki.keystore),
        key,
        Path(chain),
        passphrase=pki.passphrase.encode(),
        allow_weak_kdf=True,
    )
    root = x509.load_pem_x509_certificate(Path(pki.root).read_bytes())
    store = TrustStore([TrustAnchor(root, "stoq-bench")], certificates=identity.chain[1:])
    for crl in pki.crls:
        store.add_crl(x509.load_pem_x509_crl(Path(crl).read_bytes()))
    config = StoqConfig(
        identity=identity,
        policy=PeerPolicy(trust_store=store, namespaces=("bench.hypermesh",)),
        max_datagram_size=datagram,
    )
    if engine is not None:
        config = replace(config, engine=engine)
    if max_message_size is not None:
        config = replace(config, max_message_size=max_message_size)
    return config


class _MeteredEndpoint(Endpoint):
    """An endpoint that also notes the largest datagram it receives (for the reports).

    It hooks the endpoint's datagram routing (``_on_batch``), which sees every datagram once.
    """

    def __init__(self, config: StoqConfig) -> None:
        super().__init__(config)
        self.meter = _DatagramMeter()

    def _on_batch(self, batch_socket: BatchSocket, batch: Batch) -> None:
        see = self.meter.see
        for data, _ in batch:
            see(len(data))
        super()._on_batch(batch_socket, batch)


async def _stoq_count_stream(stream: Stream, meter: _DatagramMeter) -> None:
    received = messages = 0
    while True:
        try:
            message = await stream.receive()
        except StreamClosed:
            break  # the client finished the stream: every message has been read
        except MessageTooLarge:
            # The connection has closed itself with ERROR_MESSAGE_TOO_LARGE, which is what the
            # soak's client checks for; there is no one left to answer.
            return
        received += len(message)
        messages += 1
    answer = {"received": received, "messages": messages, "largest_datagram": meter.largest}
    await stream.send(json.dumps(answer).encode())
    await stream.finish()


async def _stoq_serve_connection(
    connection: StoqConnection, tasks: _Tasks, meter: _DatagramMeter
) -> None:
    while True:
        try:
            stream = await connection.accept_stream()
        except ConnectionLost:
            return  # the client closed the connection
        tasks.spawn(_stoq_count_stream(stream, meter))


async def _serve_stoq(spec: ServerSpec, tasks: _Tasks) -> _Running:
    assert spec.pki is not None
    config = _stoq_config(
        spec.pki,
        "server",
        engine=spec.engine,
        datagram=spec.stoq_datagram,
        max_message_size=spec.max_message_size,
    )
    endpoint = await _MeteredEndpoint.listen(config, host="127.0.0.1", port=0)
    assert isinstance(endpoint, _MeteredEndpoint)
    meter = endpoint.meter

    async def accept_loop() -> None:
        while True:
            connection = await endpoint.accept()
            tasks.spawn(_stoq_serve_connection(connection, tasks, meter))

    def stats() -> dict[str, int]:
        return {
            "connections": len(endpoint.connections),
            "dropped_datagrams": endpoint.dropped_datagrams,
            "refused_connections": endpoint.refused_connections,
            "largest_datagram": meter.largest,
        }

    tasks.spawn(accept_loop())
    return _Running(endpoint.port, endpoint.close, stats)


async def _stoq_connect(config: StoqConfig, pki: BenchPki, port: int) -> StoqConnection:
    return await connect(config, "127.0.0.1", port, server_name=pki.server_name)


async def _stoq_send_counted(
    connection: StoqConnection, size: int, payload: bytes
) -> dict[str, Any]:
    """Open a stream, send ``size`` bytes as messages of at most ``len(payload)`` bytes and
    finish; check the server's count and return its answer."""
    stream = await connection.open_stream()
    left = size
    while left >= len(payload):
        await stream.send(payload)
        left -= len(payload)
    if left:
        await stream.send(payload[:left])
    await stream.finish()
    return _check_count(await stream.receive(), size, "STOQ stream")


async def _stoq_transfer(
    config: StoqConfig, pki: BenchPki, port: int, total: int, streams: int
) -> tuple[float, int]:
    """One connection, ``streams`` streams sharing ``total`` bytes: (seconds, largest
    datagram the server saw)."""
    payload = _payload()
    connection = await _stoq_connect(config, pki, port)
    try:
        start = time.perf_counter()
        answers = await asyncio.gather(
            *(_stoq_send_counted(connection, share, payload) for share in _shares(total, streams))
        )
        elapsed = time.perf_counter() - start
    finally:
        await connection.close()
    return elapsed, max(int(answer.get("largest_datagram", 0)) for answer in answers)


# --- measurements -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Peer:
    """How one implementation runs at one datagram size: ``datagram_bytes`` configured (None:
    not applicable, or chosen by STOQ's engine), path MTU ``probe`` (qh3), ``note``."""

    impl: Impl
    datagram: Datagram
    datagram_bytes: int | None
    probe: bool = False
    note: str | None = None


def _peer(impl: Impl, datagram: Datagram) -> _Peer:
    if datagram != "pmtu" and not isinstance(datagram, int):
        raise ValueError(f'a datagram size is a number of bytes or "pmtu", not {datagram!r}')
    if isinstance(datagram, int) and not 1200 <= datagram <= UDP_MAX_PAYLOAD:
        raise ValueError(f"datagram sizes run from 1200 to {UDP_MAX_PAYLOAD} bytes")
    if impl == "tcp-tls":
        return _Peer(impl, datagram, None, note="TCP segments; datagram size not applicable")
    if impl == "aioquic":
        size = AIOQUIC_MAX_DATAGRAM if datagram == "pmtu" else datagram
        if size > AIOQUIC_MAX_DATAGRAM:
            raise ValueError(f"aioquic 1.7.2 cannot use datagrams above {AIOQUIC_MAX_DATAGRAM}")
        note = (
            f"aioquic 1.7.2's largest working datagram ({AIOQUIC_MAX_DATAGRAM}): it writes "
            "STREAM frame lengths as 2-byte varints"
            if datagram == "pmtu"
            else None
        )
        return _Peer(impl, datagram, size, note=note)
    if impl == "qh3":
        if datagram == "pmtu":
            return _Peer(
                impl,
                datagram,
                UDP_MAX_PAYLOAD,
                probe=True,
                note=f"DPLPMTUD on, ceiling {UDP_MAX_PAYLOAD}",
            )
        return _Peer(impl, datagram, datagram)
    if impl == "stoq":
        return _Peer(impl, datagram, datagram if isinstance(datagram, int) else None)
    raise ValueError(f"unknown implementation {impl!r} (known: {', '.join(IMPLS)})")


class _Workbench:
    """Certificates, STOQ configurations and per-implementation clients for one set of
    measurements, in ``directory``."""

    def __init__(self, directory: Path, *, stoq: bool) -> None:
        cert, key = make_self_signed(directory)
        self.cert, self.key = str(cert), str(key)
        self.pki = make_bench_pki(directory / "pki") if stoq else None
        self._configs: dict[tuple[str | None, Datagram], StoqConfig] = {}

    def stoq_config(self, engine: str | None, datagram: Datagram) -> StoqConfig:
        """The client's configuration (made once: loading the identity is not measured)."""
        config = self._configs.get((engine, datagram))
        if config is None:
            if self.pki is None:
                raise ValueError("this workbench has no STOQ PKI")
            config = _stoq_config(self.pki, "client", engine=engine, datagram=datagram)
            self._configs[engine, datagram] = config
        return config

    def spec(self, peer: _Peer, engine: str | None) -> ServerSpec:
        if peer.impl == "stoq":
            return ServerSpec(impl="stoq", pki=self.pki, engine=engine, stoq_datagram=peer.datagram)
        return ServerSpec(
            impl=peer.impl,
            datagram_bytes=peer.datagram_bytes or 1200,
            cert=self.cert,
            key=self.key,
        )

    async def transfer(
        self, peer: _Peer, engine: str | None, port: int, total: int, streams: int
    ) -> tuple[float, int | None]:
        """Send ``total`` bytes over ``streams`` streams of one connection: (seconds, largest
        datagram the server saw, None for TCP)."""
        if peer.impl == "stoq":
            assert self.pki is not None
            config = self.stoq_config(engine, peer.datagram)
            return await _stoq_transfer(config, self.pki, port, total, streams)
        if peer.impl == "tcp-tls":
            if streams != 1:
                raise ValueError("TCP+TLS has one stream per connection")
            return await _tcp_tls_transfer(port, total), None
        assert peer.datagram_bytes is not None
        return await _raw_quic_transfer(
            peer.impl, port, peer.datagram_bytes, peer.probe, total, streams
        )

    async def handshake(self, peer: _Peer, engine: str | None, port: int) -> float:
        """Connect once: seconds until the connection is usable; then close it (not timed)."""
        if peer.impl == "stoq":
            assert self.pki is not None
            config = self.stoq_config(engine, peer.datagram)
            start = time.perf_counter()
            connection = await _stoq_connect(config, self.pki, port)
            elapsed = time.perf_counter() - start
            await connection.close()
            return elapsed
        if peer.impl == "tcp-tls":
            context = _tls_client_context()
            start = time.perf_counter()
            _, writer = await _tcp_tls_open(port, context)
            elapsed = time.perf_counter() - start
            await _tcp_tls_close(writer)
            return elapsed
        assert peer.datagram_bytes is not None
        config = _raw_quic_client_config(peer.impl, peer.datagram_bytes, peer.probe)
        return await _raw_quic_handshake(peer.impl, port, config)


def _skip_reason(impl: Impl, engine: str | None) -> str | None:
    if (impl == "qh3" or (impl == "stoq" and engine == "qh3")) and not _qh3_available():
        return "qh3 not installed"
    return None


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


def _transfer_runs(
    bench: _Workbench,
    peer: _Peer,
    engine: str | None,
    *,
    mb: int,
    repeats: int,
    streams: int,
    timeout: float,
) -> tuple[list[float], int | None]:
    """``repeats`` runs, each with a fresh server process: (Gbps of each, largest datagram)."""
    total = mb * MIB
    samples: list[float] = []
    largest: int | None = None
    what = f"{peer.impl} bulk transfer ({mb} MiB, datagram {peer.datagram}, {streams} streams)"
    for _ in range(repeats):
        with ServerProcess(bench.spec(peer, engine)) as server:
            try:
                seconds, seen = _run(
                    bench.transfer(peer, engine, server.port, total, streams), timeout, what
                )
            except (StoqError, OSError) as exc:
                raise server.failure(f"{what}: {exc}") from exc
        samples.append(_gbps(total, seconds))
        if seen is not None:
            largest = max(largest or 0, seen)
    return samples, largest


def run_comparison(
    *,
    mb: int = 64,
    repeats: int = 5,
    impls: Sequence[Impl] = IMPLS,
    datagrams: Sequence[Datagram] = DATAGRAMS,
    engines: Sequence[str] | None = None,
    timeout: float = RUN_TIMEOUT,
) -> Iterator[BenchRecord]:
    """Single-connection, single-stream bulk throughput of each of ``impls`` at each of
    ``datagrams``, ``mb`` MiB client to server, the median of ``repeats`` runs (see the module
    docs). TCP+TLS is measured once, as "pmtu". ``engines``: STOQ's QUIC engines (default:
    :class:`~stoq.config.StoqConfig`'s). Records come as each figure is done; an implementation
    that is not installed yields a record with ``skipped``. :class:`BenchmarkFailed` when a run
    fails or takes longer than ``timeout`` seconds.
    """
    _check_positive(mb=mb, repeats=repeats, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="stoq-bench-") as tmp:
        bench = _Workbench(Path(tmp), stoq="stoq" in impls)
        for datagram in datagrams:
            for impl in impls:
                if impl == "tcp-tls" and datagram != "pmtu":
                    continue
                peer = _peer(impl, datagram)
                impl_engines: Sequence[str | None] = (
                    (engines or [None]) if impl == "stoq" else [None]
                )
                for engine in impl_engines:
                    skipped = _skip_reason(impl, engine)
                    engine_name = (
                        bench.stoq_config(engine, datagram).engine
                        if impl == "stoq" and skipped is None
                        else engine
                    )
                    if skipped is not None:
                        yield BenchRecord(
                            impl, datagram, mb, None, repeats, engine=engine_name, skipped=skipped
                        )
                        continue
                    samples, largest = _transfer_runs(
                        bench, peer, engine, mb=mb, repeats=repeats, streams=1, timeout=timeout
                    )
                    yield BenchRecord(
                        impl=impl,
                        datagram=datagram,
                        mb=mb,
                        gbps=statistics.median(samples),
                        repeats=repeats,
                        samples=tuple(samples),
                        datagram_bytes=peer.datagram_bytes,
                        largest_datagram=largest,
                        engine=engine_name,
                        note=peer.note,
                    )


def concurrent_streams(
    *,
    mb: int = 64,
    repeats: int = 3,
    counts: Sequence[int] = (1, 10, 100),
    impls: Sequence[Impl] = ("stoq", "aioquic"),
    datagram: Datagram = "pmtu",
    engine: str | None = None,
    timeout: float = RUN_TIMEOUT,
) -> Iterator[StreamsRecord]:
    """Aggregate Gbps of 1, 10 and 100 (``counts``) concurrent streams on one connection, each
    sending an equal share of ``mb`` MiB; the median of ``repeats`` runs. QUIC peers only."""
    _check_positive(mb=mb, repeats=repeats, timeout=timeout)
    if "tcp-tls" in impls:
        raise ValueError("TCP+TLS has one stream per connection")
    with tempfile.TemporaryDirectory(prefix="stoq-bench-") as tmp:
        bench = _Workbench(Path(tmp), stoq="stoq" in impls)
        for impl in impls:
            peer = _peer(impl, datagram)
            impl_engine = engine if impl == "stoq" else None
            for streams in counts:
                _check_positive(streams=streams)
                skipped = _skip_reason(impl, impl_engine)
                engine_name = (
                    bench.stoq_config(impl_engine, datagram).engine
                    if impl == "stoq" and skipped is None
                    else impl_engine
                )
                if skipped is not None:
                    yield StreamsRecord(
                        impl,
                        streams,
                        datagram,
                        mb,
                        None,
                        repeats,
                        engine=engine_name,
                        skipped=skipped,
                    )
                    continue
                samples, _ = _transfer_runs(
                    bench,
                    peer,
                    impl_engine,
                    mb=mb,
                    repeats=repeats,
                    streams=streams,
                    timeout=timeout,
                )
                yield StreamsRecord(
                    impl=impl,
                    streams=streams,
                    datagram=datagram,
                    mb=mb,
                    gbps=statistics.median(samples),
                    repeats=repeats,
                    samples=tuple(samples),
                    datagram_bytes=peer.datagram_bytes,
                    engine=engine_name,
                )


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _handshakes(
    bench: _Workbench, peer: _Peer, engine: str | None, port: int, count: int, warmup: int
) -> list[float]:
    for _ in range(warmup):
        await bench.handshake(peer, engine, port)
    return [await bench.handshake(peer, engine, port) for _ in range(count)]


def handshake_latency(
    *,
    count: int = 50,
    impls: Sequence[Impl] = IMPLS,
    engine: str | None = None,
    warmup: int = 3,
    timeout: float = RUN_TIMEOUT,
) -> Iterator[HandshakeRecord]:
    """Time to a usable connection: ``count`` sequential connections per implementation to one
    server process, after ``warmup`` untimed ones; each is closed before the next (not timed).

    Raw aioquic and qh3: the QUIC TLS 1.3 handshake (self-signed certificate, not verified).
    TCP+TLS: TCP connect plus TLS 1.3. STOQ: QUIC TLS 1.3 plus the post-quantum channel
    handshake with both TrustChain chains validated; STOQ has no way to run without the PQ
    channel (every connection is authenticated through it), so the figure without it is the raw
    engine's (``aioquic`` by default).
    """
    _check_positive(count=count, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="stoq-bench-") as tmp:
        bench = _Workbench(Path(tmp), stoq="stoq" in impls)
        for impl in impls:
            impl_engine = engine if impl == "stoq" else None
            pq = True if impl == "stoq" else None
            skipped = _skip_reason(impl, impl_engine)
            engine_name = (
                bench.stoq_config(impl_engine, 1200).engine
                if impl == "stoq" and skipped is None
                else impl_engine
            )
            if skipped is not None:
                yield HandshakeRecord(
                    impl, count, None, None, pq_channel=pq, engine=engine_name, skipped=skipped
                )
                continue
            peer = _peer(impl, 1200)
            what = f"{impl} handshakes"
            with ServerProcess(bench.spec(peer, impl_engine)) as server:
                try:
                    samples = _run(
                        _handshakes(bench, peer, impl_engine, server.port, count, warmup),
                        timeout,
                        what,
                    )
                except (StoqError, OSError) as exc:
                    raise server.failure(f"{what}: {exc}") from exc
            millis = [s * 1000 for s in samples]
            yield HandshakeRecord(
                impl=impl,
                count=count,
                median_ms=statistics.median(millis),
                p90_ms=_percentile(millis, 0.9),
                samples_ms=tuple(millis),
                pq_channel=pq,
                engine=engine_name,
                note=(
                    "TLS 1.3 and the hybrid PQ channel handshake; STOQ cannot turn it off"
                    if impl == "stoq"
                    else None
                ),
            )


async def _connection_cycles(
    bench: _Workbench, peer: _Peer, engine: str | None, port: int, seconds: float
) -> tuple[int, float]:
    await bench.handshake(peer, engine, port)  # warm up
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        await bench.handshake(peer, engine, port)
        count += 1
        now = time.perf_counter()
        if now >= deadline:
            return count, now - start


def connection_rate(
    *,
    seconds: float = 5.0,
    impls: Sequence[Impl] = IMPLS,
    engine: str | None = None,
    timeout: float = RUN_TIMEOUT,
) -> Iterator[ConnectionRateRecord]:
    """Sequential connect + close cycles per second for ``seconds`` per implementation, one
    server process each. The connect is what :func:`handshake_latency` times; a QUIC close
    sends CONNECTION_CLOSE and releases the socket without waiting out the closing period
    (STOQ's own close does that; the raw peers are closed the same way), a TCP+TLS close is
    asyncio's (close_notify, then FIN)."""
    _check_positive(seconds=seconds, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="stoq-bench-") as tmp:
        bench = _Workbench(Path(tmp), stoq="stoq" in impls)
        for impl in impls:
            impl_engine = engine if impl == "stoq" else None
            skipped = _skip_reason(impl, impl_engine)
            engine_name = (
                bench.stoq_config(impl_engine, 1200).engine
                if impl == "stoq" and skipped is None
                else impl_engine
            )
            if skipped is not None:
                yield ConnectionRateRecord(
                    impl, None, 0, seconds, engine=engine_name, skipped=skipped
                )
                continue
            peer = _peer(impl, 1200)
            what = f"{impl} connection cycles"
            with ServerProcess(bench.spec(peer, impl_engine)) as server:
                try:
                    count, elapsed = _run(
                        _connection_cycles(bench, peer, impl_engine, server.port, seconds),
                        seconds + timeout,
                        what,
                    )
                except (StoqError, OSError) as exc:
                    raise server.failure(f"{what}: {exc}") from exc
            yield ConnectionRateRecord(
                impl=impl,
                per_second=count / elapsed,
                connections=count,
                seconds=elapsed,
                engine=engine_name,
            )


# --- soak -------------------------------------------------------------------------------------


class _SoakCounters:
    """What the soak's tasks have done so far (mutable, inside one soak)."""

    def __init__(self) -> None:
        self.round_trips = 0
        self.random = 0
        self.forged = 0
        self.mutated = 0
        self.blocked = 0
        self.oversized_rejected = 0
        self.new_connections = 0
        self.connect_failures = 0
        self.last_connect_error: str | None = None


def _captured_initials(port: int, server_name: str, count: int) -> list[bytes]:
    """First datagrams (QUIC Initial packets) of ``count`` real aioquic clients dialling STOQ."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    initials: list[bytes] = []
    for _ in range(count):
        client = QuicConnection(
            configuration=QuicConfiguration(
                is_client=True, alpn_protocols=[ALPN], server_name=server_name
            )
        )
        now = time.monotonic()
        client.connect(("127.0.0.1", port), now=now)
        initials.extend(data for data, _ in client.datagrams_to_send(now=now))
    return initials


def _below(limit: int) -> int:
    return secrets.randbelow(limit)


def _mutated(packet: bytes) -> bytes:
    """``packet`` with one random mutation: bit flips, an overwritten span, truncation, junk
    appended, or unchanged (a replay)."""
    kind = _below(5)
    data = bytearray(packet)
    if kind == 0:
        for _ in range(1 + _below(8)):
            data[_below(len(data))] ^= 1 << _below(8)
    elif kind == 1:
        at = _below(len(data))
        span = os.urandom(1 + _below(64))
        data[at : at + len(span)] = span
    elif kind == 2:
        del data[1 + _below(len(data) - 1) :]
    elif kind == 3:
        data += os.urandom(1 + _below(300))
    return bytes(data)


def _forged_initial() -> bytes:
    """A datagram with a QUIC v1 Initial long header, random connection ids and a random rest
    of 1200..1499 bytes in all: it passes a server's first look (an Initial of at least 1200
    bytes) but does not decrypt."""
    dcid = os.urandom(8 + _below(13))
    scid = os.urandom(_below(21))
    header = bytes([0xC0 | _below(4), 0, 0, 0, 1, len(dcid)]) + dcid
    header += bytes([len(scid)]) + scid
    return header + os.urandom(1200 + _below(300) - len(header))


async def _fuzz(
    port: int, initials: Sequence[bytes], per_second: float, deadline: float, counts: _SoakCounters
) -> None:
    """Send ``per_second`` hostile datagrams per second until ``deadline`` (loop time) from 8
    sockets, in turn: random bytes (1..1500), a forged Initial, a mutated or replayed real
    Initial. What the server sends back is not read (the kernel drops it)."""
    loop = asyncio.get_running_loop()
    sockets: list[socket.socket] = []
    try:
        for _ in range(8):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.setblocking(False)
            sock.bind(("127.0.0.1", 0))
        tick = 0.01
        due = 0.0
        sent = 0
        while loop.time() < deadline:
            due += per_second * tick
            while sent < due:
                kind = sent % 3
                if kind == 0:
                    data = os.urandom(1 + _below(1500))
                elif kind == 1:
                    data = _forged_initial()
                else:
                    data = _mutated(initials[_below(len(initials))])
                sent += 1
                try:
                    sockets[sent % len(sockets)].sendto(data, ("127.0.0.1", port))
                except BlockingIOError:
                    counts.blocked += 1  # our socket buffer is full: this datagram is lost
                    continue
                if kind == 0:
                    counts.random += 1
                elif kind == 1:
                    counts.forged += 1
                else:
                    counts.mutated += 1
            await asyncio.sleep(tick)
    finally:
        for sock in sockets:
            sock.close()


async def _round_trip(connection: StoqConnection, size: int = 1024) -> None:
    """One request/answer on a new stream: ``size`` random bytes, the server's count back."""
    stream = await connection.open_stream()
    await stream.send(os.urandom(size))
    await stream.finish()
    answer = _check_count(await stream.receive(), size, "soak round trip")
    if answer.get("messages") != 1:
        raise BenchmarkFailed(f"soak round trip: the server counted {answer} for one message")


async def _soak_connect(
    config: StoqConfig, pki: BenchPki, port: int, counts: _SoakCounters
) -> StoqConnection | None:
    """A new connection, or None (counted, with the reason) if the server did not take it."""
    counts.new_connections += 1
    try:
        return await _stoq_connect(config, pki, port)
    except ConnectError as exc:
        counts.connect_failures += 1
        counts.last_connect_error = str(exc)
        return None


async def _oversized(
    config: StoqConfig,
    pki: BenchPki,
    port: int,
    deadline: float,
    every: float,
    counts: _SoakCounters,
) -> None:
    """Every ``every`` seconds until ``deadline``: a new connection sends a message twice the
    server's limit; the server must close that connection with ERROR_MESSAGE_TOO_LARGE."""
    loop = asyncio.get_running_loop()
    message = os.urandom(2 * SOAK_MAX_MESSAGE)
    while loop.time() < deadline:
        connection = await _soak_connect(config, pki, port, counts)
        if connection is not None:
            try:
                stream = await connection.open_stream()
                await stream.send(message)
                await stream.finish()
                answer = await stream.receive()
            except ConnectionLost as exc:
                if exc.error_code != ERROR_MESSAGE_TOO_LARGE:
                    raise BenchmarkFailed(
                        f"an oversized message closed the connection with code "
                        f"{exc.error_code:#x} ({exc.reason}), not ERROR_MESSAGE_TOO_LARGE"
                    ) from exc
                counts.oversized_rejected += 1
            else:
                raise BenchmarkFailed(f"the server accepted an oversized message: {answer[:200]!r}")
            finally:
                await connection.close()
        await asyncio.sleep(every)


async def _sample_rss(
    server: ServerProcess,
    start: float,
    deadline: float,
    every: float,
    samples: list[tuple[float, int]],
) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() + every < deadline:
        await asyncio.sleep(every)
        samples.append((loop.time() - start, server.rss_kib()))


async def _soak(
    server: ServerProcess,
    pki: BenchPki,
    config: StoqConfig,
    *,
    seconds: float,
    sample_every: float,
    fuzz_per_second: float,
    oversized_every: float,
) -> SoakReport:
    loop = asyncio.get_running_loop()
    counts = _SoakCounters()
    initials = _captured_initials(server.port, pki.server_name, 16)
    main = await _stoq_connect(config, pki, server.port)
    try:
        await _round_trip(main)
        counts.round_trips += 1
        start = loop.time()
        samples = [(0.0, server.rss_kib())]
        deadline = start + seconds
        helpers = [
            loop.create_task(_fuzz(server.port, initials, fuzz_per_second, deadline, counts)),
            loop.create_task(
                _oversized(config, pki, server.port, deadline, oversized_every, counts)
            ),
            loop.create_task(_sample_rss(server, start, deadline, sample_every, samples)),
        ]
        try:
            while loop.time() < deadline:
                await _round_trip(main)
                counts.round_trips += 1
            await asyncio.gather(*helpers)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
    finally:
        await main.close()
    # The server must still take new connections and answer on them.
    final = await _soak_connect(config, pki, server.port, counts)
    if final is not None:
        try:
            await _round_trip(final)
            counts.round_trips += 1
        finally:
            await final.close()
    samples.append((loop.time() - start, server.rss_kib()))
    return SoakReport(
        seconds=loop.time() - start,
        engine=config.engine,
        rss_start_kib=samples[0][1],
        rss_peak_kib=max(kib for _, kib in samples),
        rss_end_kib=samples[-1][1],
        round_trips=counts.round_trips,
        random_datagrams=counts.random,
        forged_initials=counts.forged,
        mutated_initials=counts.mutated,
        fuzz_blocked=counts.blocked,
        oversized_rejected=counts.oversized_rejected,
        new_connections=counts.new_connections,
        connect_failures=counts.connect_failures,
        accepting_at_end=final is not None,
        server_alive=server.alive(),
        server_stats=server.stats(),
        last_connect_error=counts.last_connect_error,
        rss_samples=tuple(samples),
    )


def soak(
    seconds: float,
    *,
    engine: str | None = None,
    datagram: Datagram = 1200,
    sample_every: float = 5.0,
    fuzz_per_second: float = 3000.0,
    oversized_every: float = 1.0,
) -> SoakReport:
    """Run a STOQ server process for ``seconds`` under hostile traffic; report its RSS.

    All at once, from the calling process:

    * ``fuzz_per_second`` hostile datagrams, in equal parts random bytes (1..1500 bytes),
      forged Initials (a valid QUIC v1 Initial header with random connection ids, >= 1200
      bytes, undecryptable) and real QUIC Initials captured from aioquic clients dialling the
      server, mutated (bit flips, overwritten spans, truncation, junk appended) or replayed;
    * every ``oversized_every`` seconds a new connection sending a message twice the server's
      limit (:data:`SOAK_MAX_MESSAGE`), which the server must refuse by closing that
      connection with ``ERROR_MESSAGE_TOO_LARGE``;
    * back-to-back request/answer round trips on one long-lived connection, each on a new
      stream; every one must succeed.

    The server's RSS is sampled every ``sample_every`` seconds; at the end a new connection
    must still complete a round trip (``accepting_at_end``). New connections the server does
    not take are counted, not fatal, so the report shows them; a failed round trip, a wrong
    answer or an oversized message accepted raise :class:`BenchmarkFailed` (with the server's
    stderr).
    """
    _check_positive(
        seconds=seconds,
        sample_every=sample_every,
        fuzz_per_second=fuzz_per_second,
        oversized_every=oversized_every,
    )
    with tempfile.TemporaryDirectory(prefix="stoq-soak-") as tmp:
        pki = make_bench_pki(Path(tmp))
        config = _stoq_config(pki, "client", engine=engine, datagram=datagram)
        spec = ServerSpec(
            impl="stoq",
            pki=pki,
            engine=engine,
            stoq_datagram=datagram,
            max_message_size=SOAK_MAX_MESSAGE,
        )
        with ServerProcess(spec) as server:
            try:
                return _run(
                    _soak(
                        server,
                        pki,
                        config,
                        seconds=seconds,
                        sample_every=sample_every,
                        fuzz_per_second=fuzz_per_second,
                        oversized_every=oversized_every,
                    ),
                    seconds + RUN_TIMEOUT,
                    "the soak",
                )
            except (StoqError, OSError) as exc:
                raise server.failure(f"soak: {exc}") from exc


# --- the server process ------------------------------------------------------------------------


async def _serve(spec: ServerSpec) -> None:
    """Start ``spec``'s server, print ``{"port": ...}``, then answer each ``stats`` line on
    stdin with one JSON line of counters, until stdin reaches end of file."""
    tasks = _Tasks()
    if spec.impl in ("aioquic", "qh3"):
        running = await _serve_raw_quic(spec, tasks)
    elif spec.impl == "tcp-tls":
        running = await _serve_tcp_tls(spec, tasks)
    else:
        running = await _serve_stoq(spec, tasks)
    commands = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(commands), sys.stdin
    )
    print(json.dumps({"port": running.port}), flush=True)
    try:
        while line := await commands.readline():
            if line.strip() == b"stats":
                print(json.dumps(running.stats()), flush=True)
            else:
                print(json.dumps({"error": f"unknown command {line!r}"}), flush=True)
    finally:
        transport.close()
        await tasks.cancel()
        result = running.close()
        if isinstance(result, Awaitable):
            await result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stoq.benchmark serve SPEC``: a benchmark server (see :class:`ServerSpec`)."""
    parser = argparse.ArgumentParser(prog="python -m stoq.benchmark")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run a benchmark server until stdin closes")
    serve.add_argument("spec", help="the ServerSpec as JSON")
    args = parser.parse_args(argv)
    asyncio.run(_serve(ServerSpec.from_json(args.spec)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
