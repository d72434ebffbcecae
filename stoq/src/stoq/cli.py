"""The ``stoq`` command: ``serve``, ``connect``, ``bench``, ``stun-server``, ``nat-check``,
``turn-server``, ``rendezvous``, ``resolve``, ``dns-server`` and ``names-pull``.

``serve`` and ``connect`` need a node identity: a TrustChain key store (``--home``, passphrase
from ``$TRUSTCHAIN_PASSPHRASE`` or ``--passphrase-file``), the key's name (``--key``) and its
certificate chain (``--chain``, PEM, leaf first), plus the roots to trust (``--trust``, PEM) and
optionally CRLs (``--crl``, PEM or DER) and accepted namespaces (``--namespace``).

* ``stoq serve`` prints ``{"listening": [host, port]}`` and echoes every message of every stream
  (and every datagram) back to its sender until interrupted.
* ``stoq connect HOST [HOST...] --port P`` connects (Happy Eyeballs over every address), sends
  ``--message`` on a stream, reads the echo, and prints one JSON line: ``{"remote": [ip, port],
  "family": 4|6, "peer": name, "peer_id": hex, "tls_group": ..., "seconds": t, "echo": text}``;
  on failure ``{"error": ..., "attempts": [[address, reason], ...]}`` and exit status 1.
* ``stoq bench [--json]`` runs the throughput comparison of :mod:`stoq.benchmark`.
* ``stoq stun-server --listen HOST:PORT [--listen ...] [--alternate HOST:PORT]`` runs a STUN
  server (:mod:`stoq.nat.stun_server`; RFC 5780 with ``--alternate``, the address with the other
  IP and port), prints one ``listening HOST:PORT`` line per socket, and runs until SIGINT or
  SIGTERM (then exit status 0).
* ``stoq nat-check --server HOST:PORT`` runs RFC 5780 NAT discovery (:mod:`stoq.nat.discovery`)
  and prints ``nat type: T``, ``mapping: M``, ``filtering: F``, ``public address: A`` and
  ``local address: L`` lines (or one JSON object with ``--json``); if the server does not
  answer or cannot do RFC 5780, a ``stoq: ...`` message on stderr and exit status 1.
* ``stoq turn-server --listen HOST:PORT [--listen-tcp HOST:PORT] [--listen-tls HOST:PORT --cert
  FILE --key FILE] --realm REALM --user NAME:PASSWORD [--user ...] [--relay-ip IP]
  [--allow-loopback-peers] [--allow-peer NETWORK]`` runs a TURN relay for clients over UDP
  (``--listen``), TCP (``--listen-tcp``) and TLS (``--listen-tls``, with the PEM certificate
  chain ``--cert`` and key ``--key``; at least one listener, all repeatable) — peers are always
  reached over UDP
  (:mod:`stoq.nat.turn_server`; relayed addresses on ``--relay-ip``, by default the listen IPs),
  prints one ``listening HOST:PORT`` line per UDP socket and one ``listening tcp HOST:PORT``
  line per TCP socket (``listening tls HOST:PORT`` per TLS socket), and runs until SIGINT or
  SIGTERM (then exit status 0). Peers on loopback, private and other special-purpose addresses
  are refused unless
  ``--allow-loopback-peers`` (loopback only) or ``--allow-peer`` (a network) opens them.
* ``stoq rendezvous --listen HOST:PORT [--max-peers N] [--rate-limit N]`` plus the identity
  arguments runs the rendezvous (signalling) service (:mod:`stoq.nat.rendezvous`) on a STOQ
  endpoint, prints one ``listening HOST:PORT`` line per socket, and runs until SIGINT or SIGTERM
  (then exit status 0).
* ``stoq resolve [NAME] [--policy P] [--server IP[:PORT] ...] [--zone-file FILE | --home DIR]
  [--stagger S] [--timeout S] [--json]`` resolves NAME (default ``trust.hypermesh.online``, the
  bootstrap name) through the resolver chain (:mod:`stoq.dns.resolver`): TrustChain names from
  a record-set file (``trustchain names export``; each record it refuses is reported on stderr)
  or a TrustChain home's registry, and DNS (the ``--server`` options, default port 53, or
  the system's), in the order ``--policy`` says (``trustchain-first``, the default, ``dns-first``,
  ``trustchain-only``, ``dns-only``). Prints one line per address (IPv6 first) and a ``source:
  ...`` line (``trustchain ORIGIN (serial N, signer SUBJECT)`` or ``dns IP:PORT (udp|tcp)``,
  with ``, cached`` when it came from the cache), or with ``--json`` one object
  (:meth:`stoq.dns.resolver.Answer.to_json`). A name no source has, or no usable DNS answer:
  a ``stoq: ...`` message on stderr (with ``--json`` also ``{"name", "error", "attempts"}`` on
  stdout) and exit status 1.
* ``stoq dns-server --listen HOST:PORT [--listen ...] --zone-file FILE [--trust ROOT.pem ...]
  [--zone NAME ...]`` serves the TrustChain names of a record-set file (``trustchain names
  export``) in standard DNS over UDP and TCP on each address (:mod:`stoq.dns.server`; A, AAAA,
  TXT, SRV, SOA; authoritative only, anything outside its zones REFUSED). Records are verified
  against the file's own anchors, or only against the ``--trust`` roots; each record refused is
  reported on stderr as ``refused NAME: REASON: DETAIL``. Zones: the ``--zone`` names, by default
  the outermost of the records' parent domains. Prints one ``listening HOST:PORT`` (UDP) and one
  ``listening tcp HOST:PORT`` line per address and runs until SIGINT or SIGTERM (then exit
  status 0); a zone file that cannot be read or is not a record set: a ``stoq: ...`` message and
  exit status 1.
* ``stoq names-pull HOST [HOST...] --port P`` plus the identity arguments (``--home`` is also
  the TrustChain home whose name registry, ``HOME/names/names.db``, receives the records)
  ``[--server-name NAME] [--attempt-delay S] [--timeout S]`` connects as ``stoq connect`` does,
  pulls the peer's signed name records and revocations over the connection
  (:mod:`stoq.dns.replication`) and merges them into the home's registry, verified against the
  home's trust exactly as ``trustchain names import`` does (the peer's anchors are not used).
  Prints what ``names import`` prints: ``revoked NAME through serial N``, ``accepted NAME
  serial N`` and ``refused NAME serial N: REASON: detail`` lines, then ``A accepted, R revoked,
  U unchanged, F refused``; exit status 1 if anything was refused. ``--timeout`` bounds the
  connect and, again, the pull. A failed connect, a refusal by the peer (its reason), a
  malformed answer or a home without trust anchors: a ``stoq: ...`` message and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import signal
import ssl
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509

from stoq.config import PATH_MTU, StoqConfig
from stoq.connection import StoqConnection, Stream
from stoq.dns.resolver import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_STAGGER,
    DEFAULT_TIMEOUT,
    Answer,
    NameLookup,
    Policy,
    RecordSetNames,
    RegistryNames,
    Resolver,
)
from stoq.endpoint import Endpoint, connect
from stoq.engine import available_engines
from stoq.errors import ConnectError, ResolutionError, StoqError, StreamClosed
from stoq.identity import NodeIdentity, PeerPolicy, load_pem_chain
from stoq.nat.discovery import discover
from stoq.nat.rendezvous import DEFAULT_RATE, MAX_PEERS, RendezvousServer
from stoq.nat.stun_client import format_address, parse_address
from stoq.nat.stun_server import DEFAULT_SOFTWARE, RateLimit, StunServer
from stoq.nat.turn_server import MAX_LIFETIME, TurnServer
from trustchain.ca.trust import TrustAnchor, TrustStore
from trustchain.cli_common import home_dir, open_store
from trustchain.errors import TrustChainError
from trustchain.naming import commands as names_commands
from trustchain.naming.commands import registry_path

__all__ = ["main"]


def _identity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", help="TrustChain key store directory ($TRUSTCHAIN_HOME)")
    parser.add_argument("--passphrase-file", help="file holding the key store passphrase")
    parser.add_argument("--key", required=True, help="name of the node key in the key store")
    parser.add_argument("--chain", required=True, type=Path, help="PEM chain, leaf first")
    parser.add_argument(
        "--trust", required=True, type=Path, action="append", help="PEM root(s) to trust"
    )
    parser.add_argument("--crl", type=Path, action="append", default=[], help="CRL file(s)")
    parser.add_argument(
        "--namespace", action="append", default=[], help="accept only peers in this namespace"
    )
    parser.add_argument("--engine", default="aioquic", choices=("aioquic", "qh3"))
    parser.add_argument(
        "--datagram", default="1200", help='datagram size in bytes, or "pmtu" (default 1200)'
    )


def _config(args: argparse.Namespace, **extra: object) -> StoqConfig:
    chain = load_pem_chain(args.chain.read_bytes())
    with open_store(args, private=True) as store:
        identity = NodeIdentity.from_keystore(store, args.key, chain)
    anchors = []
    for index, path in enumerate(args.trust):
        for number, certificate in enumerate(load_pem_chain(path.read_bytes())):
            anchors.append(TrustAnchor(certificate, f"{path.stem}-{index}-{number}"))
    trust = TrustStore(anchors, certificates=chain[1:])
    for path in args.crl:
        data = path.read_bytes()
        crl = (
            x509.load_pem_x509_crl(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_crl(data)
        )
        trust.add_crl(crl)
    datagram: int | str = PATH_MTU if args.datagram == PATH_MTU else int(args.datagram)
    return StoqConfig(
        identity=identity,
        policy=PeerPolicy(trust, namespaces=tuple(args.namespace)),
        engine=args.engine,
        max_datagram_size=datagram,  # type: ignore[arg-type]
        **extra,  # type: ignore[arg-type]
    )


def _emit(record: dict[str, object]) -> None:
    print(json.dumps(record), flush=True)


# --- serve ----------------------------------------------------------------------------------


async def _echo_stream(stream: Stream) -> None:
    try:
        async for message in stream:
            await stream.send(message)
        await stream.finish()
    except StoqError:
        return  # the peer went away; the connection's own close reports it


async def _echo_datagrams(connection: StoqConnection) -> None:
    with contextlib.suppress(StoqError):
        while True:
            connection.send_datagram(await connection.receive_datagram())


async def _serve_connection(connection: StoqConnection) -> None:
    tasks = {asyncio.ensure_future(_echo_datagrams(connection))}
    try:
        while True:
            stream = await connection.accept_stream()
            task = asyncio.ensure_future(_echo_stream(stream))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    except StoqError:
        return
    finally:
        for task in tasks:
            task.cancel()


async def _serve(args: argparse.Namespace) -> int:
    config = _config(args)
    endpoint = await Endpoint.listen(config, args.host, args.port)
    host = endpoint.addresses[0][0]
    _emit({"listening": [host, endpoint.port], "engine": config.engine})
    connections: set[asyncio.Task[None]] = set()
    try:
        while True:
            connection = await endpoint.accept()
            task = asyncio.ensure_future(_serve_connection(connection))
            connections.add(task)
            task.add_done_callback(connections.discard)
    finally:
        await endpoint.close()


# --- connect --------------------------------------------------------------------------------


async def _connect(args: argparse.Namespace) -> int:
    config = _config(
        args, attempt_delay=args.attempt_delay, connect_timeout=args.timeout, keepalive=None
    )
    hosts: str | list[str] = args.hosts[0] if len(args.hosts) == 1 else list(args.hosts)
    started = time.perf_counter()
    try:
        connection = await connect(config, hosts, args.port, server_name=args.server_name)
    except ConnectError as exc:
        _emit({"error": str(exc), "attempts": [list(a) for a in exc.attempts]})
        return 1
    except StoqError as exc:
        _emit({"error": str(exc), "attempts": []})
        return 1
    seconds = time.perf_counter() - started
    try:
        stream = await connection.open_stream()
        await stream.send(args.message.encode())
        echo = await stream.receive()
        await stream.finish()
        with contextlib.suppress(StreamClosed):
            await stream.receive()
    finally:
        await connection.close(0, "done")
    _emit(
        {
            "remote": list(connection.remote_address),
            "family": connection.family,
            "peer": connection.peer.name,
            "peer_id": connection.peer.peer_id.hex(),
            "tls_group": connection.tls_group,
            "engine": connection.engine,
            "seconds": round(seconds, 6),
            "echo": echo.decode(errors="replace"),
        }
    )
    return 0


# --- bench ----------------------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> int:
    from stoq import benchmark

    # STOQ is measured on every installed QUIC engine; each record names its engine.
    records = benchmark.run_comparison(
        mb=args.mb, repeats=args.repeats, engines=available_engines()
    )
    for record in records:
        payload = record.to_json()
        if args.json:
            _emit(payload)
        else:
            print(" ".join(f"{key}={value}" for key, value in payload.items()), flush=True)
    return 0


# --- stun-server and nat-check ---------------------------------------------------------------


def _address_argument(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


async def _stun_server(args: argparse.Namespace) -> int:
    rate_limit = (
        None
        if args.rate_limit is None
        else RateLimit(args.rate_limit, max(1.0, 2 * args.rate_limit))
    )
    server = await StunServer.start(
        args.listen, alternate=args.alternate, software=args.software, rate_limit=rate_limit
    )
    try:
        await _until_signalled(f"listening {format_address(a)}" for a in server.addresses)
    finally:
        await server.close()
    return 0


async def _until_signalled(lines: Iterable[str]) -> None:
    """Print ``lines`` (each flushed: a parent process waits for them), then wait for SIGINT or
    SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    try:
        for signum in signals:
            loop.add_signal_handler(signum, stop.set)
        for line in lines:
            print(line, flush=True)
        await stop.wait()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def _user_argument(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep or not name or not password:
        raise argparse.ArgumentTypeError(f"bad user {text!r}: expected NAME:PASSWORD")
    return (name, password)


async def _turn_server(args: argparse.Namespace) -> int:
    tls_context: ssl.SSLContext | None = None
    if args.listen_tls:
        if args.cert is None or args.key is None:
            raise ValueError("--listen-tls needs --cert and --key")
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(args.cert, args.key)
    server = await TurnServer.start(
        args.listen,
        listen_tcp=args.listen_tcp,
        listen_tls=args.listen_tls,
        tls_context=tls_context,
        realm=args.realm,
        users=dict(args.user),
        relay_ips=args.relay_ip,
        allow_loopback_peers=args.allow_loopback_peers,
        allowed_peers=args.allow_peer,
        quota=args.quota,
        max_lifetime=args.max_lifetime,
    )
    lines = [
        *(f"listening {format_address(a)}" for a in server.addresses),
        *(f"listening tcp {format_address(a)}" for a in server.tcp_addresses),
        *(f"listening tls {format_address(a)}" for a in server.tls_addresses),
    ]
    try:
        await _until_signalled(lines)
    finally:
        await server.close()
    return 0


async def _rendezvous(args: argparse.Namespace) -> int:
    config = _config(args)
    host, port = args.listen
    endpoint = await Endpoint.listen(config, host, port)
    try:
        server = await RendezvousServer.serve(
            endpoint,
            max_peers=args.max_peers,
            rate=args.rate_limit,
            burst=max(1, round(2 * args.rate_limit)),
        )
    except BaseException:
        await endpoint.close()
        raise
    try:
        await _until_signalled(
            f"listening {format_address((str(a[0]), int(a[1])))}" for a in endpoint.addresses
        )
    finally:
        await server.close()
        await endpoint.close()
    return 0


async def _nat_check(args: argparse.Namespace) -> int:
    found = await discover(args.server, local=args.local, timeout=args.timeout, rto=args.rto)
    if args.json:
        _emit(
            {
                "nat_type": found.nat_type,
                "mapping": str(found.mapping),
                "filtering": str(found.filtering),
                "public_address": list(found.public_address),
                "local_address": list(found.local_address),
            }
        )
        return 0
    print(f"nat type: {found.nat_type}")
    print(f"mapping: {found.mapping}")
    print(f"filtering: {found.filtering}")
    print(f"public address: {format_address(found.public_address)}")
    print(f"local address: {format_address(found.local_address)}", flush=True)
    return 0


# --- resolve --------------------------------------------------------------------------------


def _dns_server_argument(text: str) -> tuple[str, int]:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT``; port 53 when none is given."""
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return (str(ipaddress.ip_address(bare)), 53)
    except ValueError:
        pass
    try:
        host, port = parse_address(text)
        return (str(ipaddress.ip_address(host)), port)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"bad DNS server {text!r}: expected IP, IP:PORT or [IPv6]:PORT"
        ) from exc


async def _resolve(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        names: NameLookup | None = None
        if args.zone_file is not None:
            record_set = RecordSetNames.from_file(args.zone_file)
            for refused in record_set.rejected:
                who = refused.name or "a record"
                print(f"stoq: {args.zone_file}: refused {who}: {refused}", file=sys.stderr)
            names = record_set
        elif args.home is not None:
            # The home's registry, verified against the home's trust (its CA's roots, the roots
            # it trusts for names, fresh CRLs when $TRUSTCHAIN_PASSPHRASE unlocks its key store),
            # exactly as `trustchain names` builds it.
            home_args = argparse.Namespace(home=str(args.home), passphrase_file=None)
            registry, _trust = stack.enter_context(
                names_commands.open_home_registry(home_args, args.home)
            )
            names = RegistryNames(registry, origin=f"registry {registry_path(args.home)}")
        resolver = Resolver(
            Policy(args.policy),
            names=names,
            servers=args.server or None,
            stagger=args.stagger,
            timeout=args.timeout,
        )
        answer = await _resolve_answer(resolver, args)
    if args.json:
        _emit(answer.to_json())
        return 0
    for address in answer.addresses:
        print(address)
    print(f"source: {answer.source}{', cached' if answer.from_cache else ''}", flush=True)
    return 0


async def _resolve_answer(resolver: Resolver, args: argparse.Namespace) -> Answer:
    try:
        return await resolver.resolve(args.name)
    except ResolutionError as exc:
        if args.json:
            _emit(
                {
                    "name": args.name,
                    "error": str(exc),
                    "attempts": [list(attempt) for attempt in exc.attempts],
                }
            )
        raise


# --- dns-server -----------------------------------------------------------------------------


async def _dns_server(args: argparse.Namespace) -> int:
    from stoq.dns.server import DnsServer, DnsServerError, load_record_set

    trust: list[x509.Certificate] | None = None
    if args.trust:
        trust = []
        for path in args.trust:
            try:
                trust += load_pem_chain(path.read_bytes())
            except (OSError, ValueError) as exc:
                raise DnsServerError(f"cannot read the --trust roots {str(path)!r}: {exc}") from exc
    loaded = load_record_set(args.zone_file, trust=trust, zones=args.zone or None)
    for refusal in loaded.refused:
        print(f"refused {refusal.name or '(unnamed)'}: {refusal}", file=sys.stderr, flush=True)
    server = await DnsServer.start(args.listen, loaded.authority)
    lines = [
        *(f"listening {format_address(a)}" for a in server.addresses),
        *(f"listening tcp {format_address(a)}" for a in server.addresses),
    ]
    try:
        await _until_signalled(lines)
    finally:
        await server.close()
    return 0


# --- names-pull -----------------------------------------------------------------------------


async def _names_pull(args: argparse.Namespace) -> int:
    from stoq.dns.replication import NamesPullError, pull_names

    home = home_dir(args)
    config = _config(
        args, attempt_delay=args.attempt_delay, connect_timeout=args.timeout, keepalive=None
    )
    hosts: str | list[str] = args.hosts[0] if len(args.hosts) == 1 else list(args.hosts)
    with names_commands.open_home_registry(args, home) as (registry, _trust):
        connection = await connect(config, hosts, args.port, server_name=args.server_name)
        try:
            host, port = connection.remote_address
            print(
                f"stoq: pulling names from {connection.peer.name} at "
                f"{format_address((host, port))}",
                file=sys.stderr,
            )
            async with asyncio.timeout(args.timeout):
                report = await pull_names(connection, registry)
        except TimeoutError:
            raise NamesPullError(f"the names pull took longer than {args.timeout:g} s") from None
        finally:
            await connection.close(0, "done")
    for revocation in report.revoked:
        print(f"revoked {revocation.name} through serial {revocation.serial}")
    for record in report.accepted:
        print(f"accepted {record.name} serial {record.serial}")
    for rejection in report.refused:
        who = rejection.name or "(undecodable)"
        if rejection.serial is not None:
            who = f"{who} serial {rejection.serial}"
        print(f"refused {who}: {rejection}")
    print(
        f"{len(report.accepted)} accepted, {len(report.revoked)} revoked, "
        f"{report.unchanged} unchanged, {len(report.refused)} refused",
        flush=True,
    )
    return 1 if report.refused else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stoq", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run an echoing STOQ server")
    _identity_arguments(serve)
    serve.add_argument("--host", default="::", help='address to bind (default "::", dual-stack)')
    serve.add_argument("--port", type=int, default=0)

    conn = commands.add_parser("connect", help="connect, send a message, print the echo")
    _identity_arguments(conn)
    conn.add_argument("hosts", nargs="+", help="host name(s) or address(es)")
    conn.add_argument("--port", type=int, required=True)
    conn.add_argument("--server-name", help="name the server's certificate must carry")
    conn.add_argument("--attempt-delay", type=float, default=0.25)
    conn.add_argument("--timeout", type=float, default=10.0, help="seconds per attempt")
    conn.add_argument("--message", default="hello over stoq")
    conn.add_argument("--json", action="store_true", help="(always JSON; accepted for clarity)")

    bench = commands.add_parser("bench", help="throughput: stoq vs aioquic, qh3, TCP+TLS")
    bench.add_argument("--json", action="store_true", help="one JSON object per line")
    bench.add_argument("--mb", type=int, default=64, help="MiB per transfer")
    bench.add_argument("--repeats", type=int, default=5, help="runs per figure (median)")

    stun = commands.add_parser("stun-server", help="run a STUN server (RFC 8489, RFC 5780)")
    stun.add_argument(
        "--listen",
        required=True,
        action="append",
        type=_address_argument,
        metavar="HOST:PORT",
        help="IP address and port to listen on ([IPv6]:PORT; port 0: any; repeatable)",
    )
    stun.add_argument(
        "--alternate",
        type=_address_argument,
        metavar="HOST:PORT",
        help="RFC 5780 alternate address: another IP and another port (one --listen only)",
    )
    stun.add_argument("--software", default=DEFAULT_SOFTWARE, help="SOFTWARE attribute text")
    stun.add_argument(
        "--rate-limit",
        type=float,
        metavar="N",
        help="answer at most N requests per second per source IP (bursts of 2N)",
    )

    check = commands.add_parser("nat-check", help="find the NAT type with a RFC 5780 server")
    check.add_argument(
        "--server",
        required=True,
        type=_address_argument,
        metavar="HOST:PORT",
        help="the STUN server's primary address",
    )
    check.add_argument(
        "--local", type=_address_argument, metavar="HOST:PORT", help="local address to probe from"
    )
    check.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to wait for each probe (default 3)"
    )
    check.add_argument(
        "--rto", type=float, default=0.5, help="first retransmission timeout (default 0.5 s)"
    )
    check.add_argument("--json", action="store_true", help="one JSON object")

    turn = commands.add_parser("turn-server", help="run a TURN relay over UDP and TCP (RFC 8656)")
    turn.add_argument(
        "--listen",
        action="append",
        default=[],
        type=_address_argument,
        metavar="HOST:PORT",
        help="IP address and port to listen on for UDP ([IPv6]:PORT; port 0: any; repeatable)",
    )
    turn.add_argument(
        "--listen-tcp",
        action="append",
        default=[],
        type=_address_argument,
        metavar="HOST:PORT",
        help="IP address and port to listen on for TCP (repeatable)",
    )
    turn.add_argument(
        "--listen-tls",
        action="append",
        default=[],
        type=_address_argument,
        metavar="HOST:PORT",
        help="IP address and port to listen on for TLS, e.g. 0.0.0.0:443 (repeatable)",
    )
    turn.add_argument("--cert", metavar="FILE", help="PEM certificate chain for --listen-tls")
    turn.add_argument("--key", metavar="FILE", help="PEM private key for --listen-tls")
    turn.add_argument("--realm", required=True, help="the long-term credential realm")
    turn.add_argument(
        "--user",
        required=True,
        action="append",
        type=_user_argument,
        metavar="NAME:PASSWORD",
        help="a user allowed to allocate (repeatable)",
    )
    turn.add_argument(
        "--relay-ip",
        action="append",
        default=[],
        metavar="IP",
        help="IP to open relayed addresses on, one per IP version (default: the listen IPs)",
    )
    turn.add_argument(
        "--allow-loopback-peers",
        action="store_true",
        help="let clients relay to loopback addresses (for tests; refused by default)",
    )
    turn.add_argument(
        "--allow-peer",
        action="append",
        default=[],
        metavar="NETWORK",
        help="a network peers may be in even if special-purpose, e.g. 10.0.0.0/8 (repeatable)",
    )
    turn.add_argument("--quota", type=int, default=10, help="allocations per user (default 10)")
    turn.add_argument(
        "--max-lifetime",
        type=int,
        default=MAX_LIFETIME,
        help=f"longest allocation lifetime in seconds (default {MAX_LIFETIME})",
    )
    rendezvous = commands.add_parser(
        "rendezvous", help="run the rendezvous (signalling) service over STOQ"
    )
    _identity_arguments(rendezvous)
    rendezvous.add_argument(
        "--listen",
        required=True,
        type=_address_argument,
        metavar="HOST:PORT",
        help="IP address and port to listen on ([IPv6]:PORT; [::]:PORT is dual-stack; port 0: any)",
    )
    rendezvous.add_argument(
        "--max-peers",
        type=int,
        default=MAX_PEERS,
        help=f"most peers registered at once (default {MAX_PEERS})",
    )
    rendezvous.add_argument(
        "--rate-limit",
        type=float,
        default=DEFAULT_RATE,
        metavar="N",
        help=f"messages per second per connection (bursts of 2N; default {DEFAULT_RATE:g})",
    )
    resolve = commands.add_parser(
        "resolve", help="resolve a name: TrustChain names and DNS, as the policy says"
    )
    resolve.add_argument(
        "name",
        nargs="?",
        default=DEFAULT_BOOTSTRAP,
        help=f"the name to resolve (default {DEFAULT_BOOTSTRAP}, the bootstrap name)",
    )
    resolve.add_argument(
        "--policy",
        default="trustchain-first",
        choices=("trustchain-first", "dns-first", "trustchain-only", "dns-only"),
        help="which sources to ask, in which order (default trustchain-first)",
    )
    resolve.add_argument(
        "--server",
        action="append",
        default=[],
        type=_dns_server_argument,
        metavar="IP[:PORT]",
        help="a DNS server, in the order to ask them (repeatable; default: the system's)",
    )
    names_source = resolve.add_mutually_exclusive_group()
    names_source.add_argument(
        "--zone-file",
        type=Path,
        metavar="FILE",
        help="TrustChain names: a record set written by `trustchain names export`",
    )
    names_source.add_argument(
        "--home",
        type=Path,
        metavar="DIR",
        help="TrustChain names: the registry of this TrustChain home",
    )
    resolve.add_argument(
        "--stagger",
        type=float,
        default=DEFAULT_STAGGER,
        help=f"seconds before also asking the next DNS server (default {DEFAULT_STAGGER:g})",
    )
    resolve.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds the DNS step may take in all (default {DEFAULT_TIMEOUT:g})",
    )
    resolve.add_argument("--json", action="store_true", help="one JSON object")
    dns_server = commands.add_parser(
        "dns-server", help="serve TrustChain names in standard DNS (UDP and TCP)"
    )
    dns_server.add_argument(
        "--listen",
        required=True,
        action="append",
        type=_address_argument,
        metavar="HOST:PORT",
        help="IP address and port for UDP and TCP ([IPv6]:PORT; port 0: any; repeatable)",
    )
    dns_server.add_argument(
        "--zone-file",
        required=True,
        type=Path,
        metavar="FILE",
        help="the record set to serve, as written by `trustchain names export`",
    )
    dns_server.add_argument(
        "--trust",
        action="append",
        default=[],
        type=Path,
        metavar="ROOT.pem",
        help="verify records against these roots only, not the file's anchors (repeatable)",
    )
    dns_server.add_argument(
        "--zone",
        action="append",
        default=[],
        metavar="NAME",
        help="a zone to be authoritative for (repeatable; default: the records' parent domains)",
    )
    pull = commands.add_parser(
        "names-pull",
        help="pull a peer's signed name records over STOQ into this home's registry",
    )
    _identity_arguments(pull)
    pull.add_argument("hosts", nargs="+", help="the peer's host name(s) or address(es)")
    pull.add_argument("--port", type=int, required=True)
    pull.add_argument("--server-name", help="name the peer's certificate must carry")
    pull.add_argument("--attempt-delay", type=float, default=0.25)
    pull.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds for the connect, and again for the pull (default 30)",
    )
    parser.epilog = f"QUIC engines installed: {', '.join(available_engines())}"
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return asyncio.run(_serve(args))
        if args.command == "connect":
            return asyncio.run(_connect(args))
        if args.command == "stun-server":
            return asyncio.run(_stun_server(args))
        if args.command == "nat-check":
            return asyncio.run(_nat_check(args))
        if args.command == "turn-server":
            return asyncio.run(_turn_server(args))
        if args.command == "rendezvous":
            return asyncio.run(_rendezvous(args))
        if args.command == "resolve":
            return asyncio.run(_resolve(args))
        if args.command == "dns-server":
            return asyncio.run(_dns_server(args))
        if args.command == "names-pull":
            return asyncio.run(_names_pull(args))
        return _bench(args)
    except KeyboardInterrupt:
        return 130
    except (StoqError, TrustChainError, OSError, ValueError) as exc:
        print(f"stoq: {exc}", file=sys.stderr)
        return 1
