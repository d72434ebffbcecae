"""STOQ endpoints: listening for connections, and connecting with Happy Eyeballs.

:meth:`Endpoint.listen` binds one dual-stack UDP socket (``[::]`` with ``IPV6_V6ONLY`` = 0) or,
where the host cannot do that, one socket per family, and routes each received datagram to its
connection by destination connection ID (QUIC's version-independent header, RFC 8999). A new
connection is admitted only from a long-header Initial packet in a datagram of at least 1200
bytes (RFC 9000 §14.1) and only within ``max_connections`` and ``max_pending_handshakes``;
everything else that matches no connection is dropped without reply. :meth:`Endpoint.accept`
returns connections whose peer passed the post-quantum session (:mod:`stoq.session`).

:func:`connect` resolves a name's AAAA and A records concurrently and races attempts over
both families (RFC 8305, :mod:`stoq.happy_eyeballs`). Each attempt has its own *connected*
UDP socket, so an ICMP refusal fails that attempt at once instead of waiting for a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence

from stoq import engine as eng
from stoq.config import PATH_MTU, StoqConfig
from stoq.connection import StoqConnection
from stoq.errors import ConnectError, ConnectionLost, PeerRejected
from stoq.happy_eyeballs import ResolvedAddress, Resolver, race
from stoq.session import ERROR_PEER_REJECTED
from stoq.udp import Address, Batch, BatchSocket, DatagramSender, open_socket

__all__ = [
    "Endpoint",
    "PeerServer",
    "client_connection",
    "connect",
    "connect_socket",
    "destination_connection_id",
]

log = logging.getLogger(__name__)

#: Length of the connection IDs STOQ's engines choose for themselves.
LOCAL_CID_LENGTH = 8
MIN_INITIAL_DATAGRAM = 1200


def destination_connection_id(data: bytes) -> tuple[bytes, bool] | None:
    """``(destination connection id, is_long_header)`` of a QUIC packet, or ``None`` if the
    bytes cannot be a QUIC packet addressed to us (RFC 8999 invariants)."""
    if len(data) < 1 + LOCAL_CID_LENGTH:
        return None
    first = data[0]
    if first & 0x80:
        if len(data) < 7:
            return None
        length = data[5]
        if length > 20 or len(data) < 6 + length:
            return None
        return bytes(data[6 : 6 + length]), True
    if not first & 0x40:  # the fixed bit of QUIC v1 short headers
        return None
    return bytes(data[1 : 1 + LOCAL_CID_LENGTH]), False


def _is_initial(data: bytes) -> bool:
    # Long header, QUIC version 1, packet type Initial (0b00).
    return data[0] & 0xF0 == 0xC0 and data[1:5] == b"\x00\x00\x00\x01"


def _settings(
    config: StoqConfig,
    *,
    is_client: bool,
    server_name: str | None = None,
    path_mtu: int | None = None,
) -> eng.EngineSettings:
    engine = eng.get_engine(config.engine)
    size = config.max_datagram_size
    probe = False
    if size == PATH_MTU:
        if engine.name == "qh3":
            # qh3 starts at max_datagram_size and probes up to its own ceiling (about 1472
            # bytes). A larger start trips a qh3 2.1 bug ("packet builder capacity exhausted" in
            # the server's amplification-limited first flight, depending on certificate sizes),
            # so STOQ stays at 1200 and lets qh3 probe: see BENCHMARKS.md.
            datagram = eng.MIN_DATAGRAM
            probe = True
        else:
            mtu = path_mtu or eng.MIN_DATAGRAM + 48
            datagram = max(eng.MIN_DATAGRAM, mtu - 48)  # IPv6 + UDP headers
    else:
        datagram = int(size)
    return eng.EngineSettings(
        is_client=is_client,
        certificate=config.identity.leaf,
        # Only the leaf goes into TLS: the PQ session carries and validates the whole chain, and
        # a hybrid chain (Falcon keys and signatures) would overflow the server's first flight
        # under the 3x anti-amplification limit (qh3 fails on that rather than waiting).
        chain=(),
        private_key=config.identity.tls_private_key,
        max_datagram_size=min(datagram, engine.max_datagram_limit()),
        probe_path_mtu=probe,
        idle_timeout=config.idle_timeout,
        max_data=config.max_data,
        max_stream_data=config.max_stream_data,
        max_datagram_frame_size=config.max_datagram_frame_size,
        server_name=server_name,
    )


class Endpoint:
    """A listening STOQ endpoint. Use :meth:`listen`; close with :meth:`close`."""

    def __init__(self, config: StoqConfig) -> None:
        self.config = config
        self._engine = eng.get_engine(config.engine)
        self._sockets: list[BatchSocket] = []
        self._by_cid: dict[bytes, StoqConnection] = {}
        self._cids: dict[StoqConnection, set[bytes]] = {}
        self._pending = 0
        self._accepted: asyncio.Queue[StoqConnection] = asyncio.Queue()
        self._closed = asyncio.Event()
        self.dropped_datagrams = 0
        self.refused_connections = 0

    @classmethod
    async def listen(cls, config: StoqConfig, host: str = "::", port: int = 0) -> Endpoint:
        """Listen on ``host``:``port``. ``"::"`` is dual-stack; where the host has no IPv6 or
        cannot mix families on one socket, separate IPv4 and IPv6 sockets share the port."""
        endpoint = cls(config)
        if host in ("::", ""):
            try:
                socks = [open_socket("::", port, dual_stack=True)]
            except OSError as exc:
                log.info("no dual-stack socket (%s); binding per family", exc)
                socks = [open_socket("0.0.0.0", port)]  # noqa: S104 - listening on all is asked
                try:
                    socks.append(open_socket("::", socks[0].getsockname()[1], dual_stack=False))
                except OSError as v6_exc:
                    log.info("no IPv6 socket: %s", v6_exc)
        else:
            socks = [open_socket(host, port)]
        for sock in socks:
            endpoint._add_socket(sock)
        return endpoint

    def _add_socket(self, sock: socket.socket) -> None:
        holder: list[BatchSocket] = []
        batch_socket = BatchSocket(sock, lambda batch: self._on_batch(holder[0], batch))
        holder.append(batch_socket)
        self._sockets.append(batch_socket)

    @property
    def port(self) -> int:
        return int(self._sockets[0].local_address[1])

    @property
    def addresses(self) -> tuple[Address, ...]:
        return tuple(s.local_address for s in self._sockets)

    @property
    def connections(self) -> tuple[StoqConnection, ...]:
        return tuple(self._cids)

    async def accept(self) -> StoqConnection:
        """The next authenticated connection."""
        getter = asyncio.ensure_future(self._accepted.get())
        closer = asyncio.ensure_future(self._closed.wait())
        try:
            done, _ = await asyncio.wait({getter, closer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closer.cancel()
        if getter in done:
            return getter.result()
        getter.cancel()
        raise ConnectionLost(0, "the endpoint is closed")

    async def close(self) -> None:
        """Close every connection (code 0) and the sockets."""
        for connection in list(self._cids):
            await connection.close(0, "endpoint closing")
        for batch_socket in self._sockets:
            batch_socket.close()
        self._closed.set()

    async def __aenter__(self) -> Endpoint:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- datagram routing --------------------------------------------------------------------

    def _on_batch(self, batch_socket: BatchSocket, batch: Batch) -> None:
        grouped: dict[StoqConnection, tuple[list[bytes], Address]] = {}
        # A batch is mostly short-header packets of one connection: remember the last route.
        last_cid = b""
        last: list[bytes] | None = None
        last_address: Address | None = None
        for data, address in batch:
            if (
                last is not None
                and data[0] & 0xC0 == 0x40
                and data[1 : 1 + LOCAL_CID_LENGTH] == last_cid
                and address == last_address
            ):
                last.append(data)
                continue
            header = destination_connection_id(data)
            if header is None:
                self.dropped_datagrams += 1
                continue
            cid, is_long = header
            connection = self._by_cid.get(cid)
            if connection is None:
                if not (is_long and len(data) >= MIN_INITIAL_DATAGRAM and _is_initial(data)):
                    self.dropped_datagrams += 1
                    continue
                connection = self._admit(batch_socket, cid, address)
                if connection is None:
                    continue
            entry = grouped.get(connection)
            if entry is None:
                entry = grouped[connection] = ([data], address)
            elif entry[1] == address:
                entry[0].append(data)
            else:  # a path change inside the batch: deliver what came before it first
                connection.datagrams_received(entry[0], entry[1])
                entry = grouped[connection] = ([data], address)
            last, last_address = (entry[0], address) if not is_long else (None, None)
            last_cid = cid
        for connection, (datagrams, address) in grouped.items():
            connection.datagrams_received(datagrams, address)

    def _admit(
        self, batch_socket: BatchSocket, cid: bytes, address: Address
    ) -> StoqConnection | None:
        if len(self._cids) >= self.config.max_connections or (
            self._pending >= self.config.max_pending_handshakes
        ):
            self.refused_connections += 1
            return None
        settings = _settings(self.config, is_client=False)
        quic, secrets_log = self._engine.server(settings, original_destination_connection_id=cid)
        connection = StoqConnection(
            config=self.config,
            engine=self._engine,
            quic=quic,
            secrets_log=secrets_log,
            socket=batch_socket,
            remote=address,
            is_client=False,
            on_established=self._established,
            on_closed=self._closed_connection,
            on_connection_id=self._connection_id,
        )
        self._pending += 1
        self._cids[connection] = set()
        # A handshake that does not finish in time (e.g. a forged Initial that created state)
        # gives its slot back instead of holding it for the whole idle timeout.
        asyncio.get_running_loop().call_later(
            self.config.handshake_timeout, connection.abandon_handshake
        )
        self._connection_id(connection, cid, True)
        self._connection_id(connection, quic.host_cid, True)
        return connection

    def _connection_id(self, connection: StoqConnection, cid: bytes, issued: bool) -> None:
        cids = self._cids.get(connection)
        if cids is None:
            return
        if issued:
            cids.add(cid)
            self._by_cid[cid] = connection
        else:
            cids.discard(cid)
            if self._by_cid.get(cid) is connection:
                del self._by_cid[cid]

    def _established(self, connection: StoqConnection) -> None:
        self._pending -= 1
        self._accepted.put_nowait(connection)

    def _closed_connection(self, connection: StoqConnection) -> None:
        cids = self._cids.pop(connection, set())
        for cid in cids:
            if self._by_cid.get(cid) is connection:
                del self._by_cid[cid]
        if not connection.established:
            self._pending -= 1


class _ClientEndpoint:
    """One client connection with its own connected UDP socket (made here, or given)."""

    def __init__(
        self,
        config: StoqConfig,
        address: ResolvedAddress,
        server_name: str | None,
        sock: socket.socket | None = None,
    ):
        self.config = config
        self.address = address
        self.server_name = server_name
        self.connection: StoqConnection | None = None
        self._socket: BatchSocket | None = None
        self._given = sock

    async def run(self) -> StoqConnection:
        engine = eng.get_engine(self.config.engine)
        sock = self._given or socket.socket(self.address.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(self.address.sockaddr)
        except OSError:
            sock.close()
            raise
        batch_socket = BatchSocket(sock, self._on_batch, on_error=lambda exc: self._on_error(exc))
        self._socket = batch_socket
        path_mtu = batch_socket.path_mtu(self.address.sockaddr)
        settings = _settings(
            self.config, is_client=True, server_name=self.server_name, path_mtu=path_mtu
        )
        quic, secrets_log = engine.client(settings)
        connection = StoqConnection(
            config=self.config,
            engine=engine,
            quic=quic,
            secrets_log=secrets_log,
            socket=batch_socket,
            remote=self.address.sockaddr[:2],
            is_client=True,
            server_name=self.server_name,
            on_closed=lambda _: batch_socket.close(),
        )
        self.connection = connection
        try:
            connection.start()
            await connection.wait_established()
        except ConnectionLost as exc:
            batch_socket.close()
            if exc.error_code == ERROR_PEER_REJECTED:
                raise PeerRejected(f"the server refused this node: {exc.reason}") from exc
            raise
        except BaseException:
            await connection.close(0, "connection attempt abandoned")
            batch_socket.close()
            raise
        return connection

    def _on_batch(self, batch: Batch) -> None:
        if self.connection is None:
            return
        datagrams = [data for data, _ in batch]
        self.connection.datagrams_received(datagrams, batch[-1][1])

    def _on_error(self, exc: OSError) -> None:
        if self.connection is not None:
            self.connection.path_error(exc)


async def connect(
    config: StoqConfig,
    host: str | Sequence[str],
    port: int,
    *,
    server_name: str | None = None,
    resolver: Resolver | None = None,
) -> StoqConnection:
    """Connect to ``host`` (a name, an address, or several) and authenticate the peer.

    A name is resolved (AAAA and A at once) by ``resolver`` (default: the system's; e.g.
    :class:`stoq.dns.resolver.HappyEyeballsResolver` for TrustChain names and DNS by policy)
    and also becomes the name the server's certificate must carry unless ``server_name`` says
    otherwise. Attempts race per RFC 8305 with
    ``config.attempt_delay`` between starts; the first connection whose post-quantum session
    completes wins and the others are closed. :class:`ConnectError` names every address tried
    and why it failed; :class:`PeerRejected` when the only reachable peers were refused.
    """
    if server_name is None and isinstance(host, str) and not _is_address(host):
        server_name = host

    rejections: list[PeerRejected] = []

    async def attempt(address: ResolvedAddress) -> StoqConnection:
        try:
            async with asyncio.timeout(config.connect_timeout):
                return await _ClientEndpoint(config, address, server_name).run()
        except TimeoutError:
            raise ConnectionLost(0, f"no answer within {config.connect_timeout} s") from None
        except PeerRejected as exc:
            rejections.append(exc)
            raise

    try:
        connection, _ = await race(
            host,
            port,
            attempt,
            attempt_delay=config.attempt_delay,
            resolution_delay=config.resolution_delay,
            resolver=resolver,
        )
    except ConnectError:
        if rejections:
            # A peer answered but the identity check failed: that is the error to report
            # (its cause stays what the peer said; the other attempts are in its context).
            rejected = rejections[0]
            raise rejected from rejected.__cause__
        raise
    return connection


async def connect_socket(
    config: StoqConfig,
    sock: socket.socket,
    remote: tuple[str, int],
    *,
    server_name: str | None = None,
) -> StoqConnection:
    """Connect from an existing UDP socket (bound or not; it is connected to ``remote`` here
    and closed with the connection) to the IP address ``remote`` and authenticate the peer.

    For callers that must make the socket themselves, e.g. in another network namespace or
    bound to a chosen port. Raises what :func:`connect` raises for one attempt.
    """
    host, port = remote
    if not _is_address(host):
        raise ValueError(f"{host!r} is not an IP address")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if sock.family != family or sock.type != socket.SOCK_DGRAM:
        raise ValueError("the socket must be a UDP socket of the remote address's family")
    address = ResolvedAddress(family, host, port)
    try:
        async with asyncio.timeout(config.connect_timeout):
            return await _ClientEndpoint(config, address, server_name, sock).run()
    except TimeoutError:
        raise ConnectionLost(0, f"no answer within {config.connect_timeout} s") from None


def client_connection(
    config: StoqConfig,
    sender: DatagramSender,
    remote: Address,
    *,
    server_name: str | None = None,
    on_closed: Callable[[StoqConnection], None] | None = None,
) -> StoqConnection:
    """A client connection whose datagrams go out through ``sender`` (to ``remote``, which
    the sender may treat as a name for a path rather than an address).

    The caller feeds every datagram of this connection to
    :meth:`~stoq.connection.StoqConnection.datagrams_received`, then calls ``start()`` and
    awaits ``wait_established()``.
    """
    engine = eng.get_engine(config.engine)
    quic, secrets_log = engine.client(_settings(config, is_client=True, server_name=server_name))
    return StoqConnection(
        config=config,
        engine=engine,
        quic=quic,
        secrets_log=secrets_log,
        socket=sender,
        remote=remote,
        is_client=True,
        server_name=server_name,
        on_closed=on_closed,
    )


class PeerServer:
    """The server side of exactly one connection over ``sender`` (a virtual path to one peer).

    Feed it every datagram from the peer (:meth:`datagrams_received`); the first QUIC Initial
    of at least 1200 bytes creates the connection and later datagrams go to it whatever their
    connection IDs (there is only one peer). Anything before that Initial is dropped.
    :meth:`accept` returns the connection once the peer passed the post-quantum session.
    """

    def __init__(self, config: StoqConfig, sender: DatagramSender) -> None:
        self.config = config
        self._sender = sender
        self._engine = eng.get_engine(config.engine)
        self.connection: StoqConnection | None = None
        self.dropped_datagrams = 0
        self._ready: asyncio.Future[StoqConnection] = asyncio.get_running_loop().create_future()

    def datagrams_received(self, datagrams: list[bytes], address: Address) -> None:
        if self.connection is None:
            while datagrams:
                first = datagrams[0]
                header = destination_connection_id(first)
                long_enough = len(first) >= MIN_INITIAL_DATAGRAM
                if header is not None and header[1] and long_enough and _is_initial(first):
                    self._create(header[0], address)
                    break
                datagrams = datagrams[1:]
                self.dropped_datagrams += 1
            if self.connection is None:
                return
        self.connection.datagrams_received(datagrams, address)

    def _create(self, cid: bytes, address: Address) -> None:
        quic, secrets_log = self._engine.server(
            _settings(self.config, is_client=False), original_destination_connection_id=cid
        )
        self.connection = StoqConnection(
            config=self.config,
            engine=self._engine,
            quic=quic,
            secrets_log=secrets_log,
            socket=self._sender,
            remote=address,
            is_client=False,
            on_established=self._established,
            on_closed=self._closed,
        )
        asyncio.get_running_loop().call_later(
            self.config.handshake_timeout, self.connection.abandon_handshake
        )

    def _established(self, connection: StoqConnection) -> None:
        if not self._ready.done():
            self._ready.set_result(connection)

    def _closed(self, connection: StoqConnection) -> None:
        if not self._ready.done():
            self._ready.set_exception(ConnectionLost(0, "the connection closed during handshake"))
            self._ready.exception()  # reported by accept(); nobody may be waiting

    async def accept(self) -> StoqConnection:
        """The connection, once authenticated; :class:`ConnectionLost` if its handshake failed."""
        return await asyncio.shield(self._ready)


def _is_address(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True
