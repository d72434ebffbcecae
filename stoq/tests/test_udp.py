"""The batching UDP layer on real loopback sockets: GSO/GRO batches, order, errors."""

from __future__ import annotations

import asyncio
import socket

import pytest

from stoq.udp import Batch, BatchSocket, open_socket


async def _collect(received: Batch, n: int) -> None:
    while len(received) < n:
        await asyncio.sleep(0.005)


def test_batches_arrive_whole_and_in_order() -> None:
    """Equal-size runs go out with GSO where the kernel has it and come back split (GRO)."""

    async def main() -> list[bytes]:
        received: Batch = []
        server = BatchSocket(open_socket("127.0.0.1", 0), received.extend)
        client = BatchSocket(open_socket("127.0.0.1", 0), lambda batch: None)
        try:
            port = server.local_address[1]
            payloads = [bytes([i]) * 1200 for i in range(100)] + [b"tail" * 10]
            client.send([(p, ("127.0.0.1", port)) for p in payloads])
            await asyncio.wait_for(_collect(received, len(payloads)), 5)
            assert client.datagrams_sent == len(payloads)
            assert client.send_errors == 0
            assert all(address[0] == "127.0.0.1" for _, address in received)
            return [data for data, _ in received]
        finally:
            server.close()
            client.close()

    data = asyncio.run(main())
    assert data == [bytes([i]) * 1200 for i in range(100)] + [b"tail" * 10]


def test_dual_stack_socket_reports_ipv4_peers_as_ipv4() -> None:
    async def main() -> Batch:
        received: Batch = []
        try:
            sock = open_socket("::", 0)
        except OSError:
            pytest.skip("this host cannot open a dual-stack socket")
        server = BatchSocket(sock, received.extend)
        client = BatchSocket(open_socket("127.0.0.1", 0), lambda batch: None)
        try:
            client.send([(b"hello", ("127.0.0.1", server.local_address[1]))])
            await asyncio.wait_for(_collect(received, 1), 5)
            return received
        finally:
            server.close()
            client.close()

    received = asyncio.run(main())
    assert received[0][0] == b"hello"
    assert received[0][1][0] == "127.0.0.1"


def test_oversized_datagram_is_lost_not_a_refused_path() -> None:
    """EMSGSIZE (a path-MTU probe larger than the route) must not fail a connection attempt."""

    async def main() -> tuple[list[OSError], int, int]:
        errors: list[OSError] = []
        target = open_socket("127.0.0.1", 0)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(target.getsockname())
        client = BatchSocket(sock, lambda batch: None, on_error=errors.append)
        try:
            client.send([(b"x" * 65508, target.getsockname())])  # IPv4's UDP maximum is 65507
            client.send([(b"y" * 100, target.getsockname())])
            await asyncio.sleep(0.05)
            return errors, client.send_errors, client.datagrams_sent
        finally:
            client.close()
            target.close()

    errors, send_errors, sent = asyncio.run(main())
    assert errors == []
    assert send_errors == 1
    assert sent == 1


def test_refused_connected_path_is_reported() -> None:
    """An ICMP port-unreachable on a connected socket reaches ``on_error`` (Happy Eyeballs)."""

    async def main() -> list[OSError]:
        errors: list[OSError] = []
        closed = open_socket("127.0.0.1", 0)
        address = closed.getsockname()
        closed.close()  # nothing listens there now: the kernel answers port unreachable
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(address)
        client = BatchSocket(sock, lambda batch: None, on_error=errors.append)
        try:
            for _ in range(20):
                client.send([(b"anyone?", address)])
                await asyncio.sleep(0.01)
                if errors:
                    break
            return errors
        finally:
            client.close()

    errors = asyncio.run(main())
    assert errors
    assert isinstance(errors[0], ConnectionRefusedError)
