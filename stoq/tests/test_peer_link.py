"""PeerLink on loopback: demultiplexing, routes, keepalives and liveness, socket cleanup.

Real sockets and our STUN server; the "peer" is a plain UDP socket the test drives.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from stoq.nat import stun
from stoq.nat.peer_link import VIRTUAL_PEER, PeerLink, Route
from stoq.nat.punch import Candidate, CandidateKind, Failed, PunchSession
from stoq.nat.stun_server import StunServer

QUIC_LIKE = b"\x40" + b"q" * 40  # first byte 64..191: not STUN (RFC 9443)


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def run(body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        async with asyncio.timeout(30):
            await body()

    asyncio.run(main())


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


def test_binding_runs_on_the_link_socket_and_unvalidated_datagrams_are_dropped() -> None:
    async def body() -> None:
        server = await StunServer.start([("127.0.0.1", 0)])
        sock = _udp()
        link = PeerLink(sock, sock.getsockname(), virtual=VIRTUAL_PEER)
        received: list[list[bytes]] = []
        link.receiver = lambda datagrams, address: received.append(datagrams)
        stranger = _udp()
        try:
            result = await link.binding(server.addresses[0])
            assert result.mapped == sock.getsockname()
            # No connectivity check validated the stranger's address: its datagrams, QUIC or
            # keepalive, never reach the connection.
            loop = asyncio.get_running_loop()
            keepalive = stun.encode(
                stun.Message(
                    stun.Method.BINDING, stun.MessageClass.INDICATION, stun.new_transaction_id(), ()
                ),
                fingerprint=True,
            )
            for data in (QUIC_LIKE, keepalive, QUIC_LIKE + b"2"):
                await loop.sock_sendto(stranger, data, sock.getsockname())
            await _until(lambda: link.ignored >= 2)
            assert received == []
            # No route yet: what the connection sends is dropped and counted.
            assert link.route == Route.NONE
            link.send([(b"x", VIRTUAL_PEER)])
            assert link.dropped == 1
        finally:
            await link.close()
            stranger.close()
            await server.close()

    run(body)


def test_a_failed_session_closes_the_extra_sockets() -> None:
    async def body() -> None:
        primary = _udp()
        link = PeerLink(primary, primary.getsockname(), virtual=VIRTUAL_PEER)
        extras = {s.getsockname(): s for s in (_udp(), _udp(), _udp())}
        link.add_sockets(extras)
        assert len(link.bases) == 4
        blackhole = _udp()  # never answers
        loop = asyncio.get_running_loop()
        session = PunchSession(
            [Candidate.make(CandidateKind.HOST, b) for b in link.bases],
            [Candidate.make(CandidateKind.SERVER_REFLEXIVE, blackhole.getsockname())],
            controlling=True,
            local_ufrag="aaaa",
            local_pwd="a" * 22,
            remote_ufrag="bbbb",
            remote_pwd="b" * 22,
            now=loop.time(),
            timeout=0.5,
        )
        try:
            result = await link.punch(session)
            assert isinstance(result, Failed)
            assert link.bases == (primary.getsockname(),)
            assert all(s.fileno() == -1 for s in extras.values())
            assert link.route == Route.NONE
        finally:
            await link.close()
            blackhole.close()
        assert primary.fileno() == -1

    run(body)


def test_a_silent_direct_path_is_lost_and_reported() -> None:
    async def body() -> None:
        a_sock, b_sock = _udp(), _udp()
        lost: list[str] = []
        a = PeerLink(
            a_sock,
            a_sock.getsockname(),
            virtual=VIRTUAL_PEER,
            keepalive=0.1,
            path_timeout=0.4,
            on_path_lost=lost.append,
        )
        b = PeerLink(b_sock, b_sock.getsockname(), virtual=VIRTUAL_PEER, keepalive=0.1,
                     path_timeout=0.4)  # fmt: skip
        loop = asyncio.get_running_loop()
        creds = {"local_pwd": "a" * 22, "remote_pwd": "b" * 22}
        sa = PunchSession(
            [Candidate.make(CandidateKind.HOST, a_sock.getsockname())],
            [Candidate.make(CandidateKind.HOST, b_sock.getsockname())],
            controlling=True, local_ufrag="aaaa", remote_ufrag="bbbb", now=loop.time(),
            **creds,
        )  # fmt: skip
        sb = PunchSession(
            [Candidate.make(CandidateKind.HOST, b_sock.getsockname())],
            [Candidate.make(CandidateKind.HOST, a_sock.getsockname())],
            controlling=False, local_ufrag="bbbb", remote_ufrag="aaaa", now=loop.time(),
            local_pwd="b" * 22, remote_pwd="a" * 22,
        )  # fmt: skip
        try:
            await asyncio.gather(a.punch(sa), b.punch(sb))
            assert (a.route, b.route) == (Route.DIRECT, Route.DIRECT)
            # The validated pair carries datagrams to the connection, named by the virtual
            # address; the same bytes from another socket do not get through.
            got: list[tuple[list[bytes], object]] = []
            a.receiver = lambda datagrams, address: got.append((datagrams, address))
            ignored = a.ignored
            b.send([(QUIC_LIKE, VIRTUAL_PEER)])
            stranger = _udp()
            await loop.sock_sendto(stranger, QUIC_LIKE + b"!", a_sock.getsockname())
            await _until(lambda: got != [] and a.ignored > ignored)
            stranger.close()
            assert got == [([QUIC_LIKE], VIRTUAL_PEER)]
            assert (a_sock.getsockname(), b_sock.getsockname()) in a.validated
            # Keepalives alone keep both paths alive for several path timeouts.
            await asyncio.sleep(1.0)
            assert (a.route, b.route) == (Route.DIRECT, Route.DIRECT)
            assert lost == []
            # b goes away: a hears nothing more and reports the path lost.
            await b.close()
            await _until(lambda: a.route == Route.NONE)
            assert len(lost) == 1
            assert lost[0].startswith("nothing from 127.0.0.1:")
            assert [c.route for c in a.changes] == [Route.DIRECT, Route.NONE]
        finally:
            await a.close()
            await b.close()

    run(body)


def test_keepalive_must_be_shorter_than_the_path_timeout() -> None:
    async def body() -> None:
        sock = _udp()
        with pytest.raises(ValueError, match="keepalive must be positive"):
            PeerLink(sock, sock.getsockname(), virtual=VIRTUAL_PEER, keepalive=5, path_timeout=5)
        sock.close()

    run(body)
