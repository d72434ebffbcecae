"""TURN over TCP (RFC 8656 §12.5, RFC 8489 §6.2.2): the stream framer, the client core's TCP
mode, and our client through our server on loopback (relayed transport to peers over UDP)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from stoq.nat import stun
from stoq.nat.channel_data import decode_channel_data, encode_channel_data
from stoq.nat.framing import MAX_FRAME, FramingError, StreamFramer
from stoq.nat.stun import AttributeType, MessageClass, Method, StunError
from stoq.nat.stun_client import StunTimeout
from stoq.nat.turn_client import (
    CHANNEL_MIN,
    DEFAULT_TCP_TIMEOUT,
    TransactionFailed,
    Transport,
    TurnClient,
    TurnClientCore,
    TurnStateError,
)
from stoq.nat.turn_server import TurnServer, TurnServerError, stream_local

USER = "alice"
PASSWORD = "wonderland"
REALM = "example.org"

# --- the stream framer ---------------------------------------------------------------------------


def stun_message(size: int, index: int) -> bytes:
    """A valid STUN indication carrying ``size`` bytes of DATA (with FINGERPRINT)."""
    tid = index.to_bytes(12, "big")
    message = stun.Message(
        Method.SEND,
        MessageClass.INDICATION,
        tid,
        (stun.Attribute(AttributeType.DATA, bytes([index % 256]) * size),),
    )
    return stun.encode(message, fingerprint=True)


frames = st.lists(
    st.one_of(
        st.builds(stun_message, st.integers(0, 200), st.integers(0, 2**32)),
        st.builds(
            lambda channel, data: encode_channel_data(channel, data, pad=True),
            st.integers(0x4000, 0x4FFF),
            st.binary(max_size=200),
        ),
    ),
    max_size=12,
)


@given(messages=frames, cuts=st.lists(st.integers(0, 5000), max_size=30))
def test_any_chunking_gives_back_the_messages(messages: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(messages)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    framer = StreamFramer()
    out: list[bytes] = []
    for chunk in chunks:
        out += framer.feed(chunk)
    assert out == messages
    assert framer.buffered == 0


@given(messages=frames)
def test_one_byte_at_a_time(messages: list[bytes]) -> None:
    stream = b"".join(messages)
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(len(stream)):
        out += framer.feed(stream[i : i + 1])
    assert out == messages


def test_channel_data_padding_is_part_of_the_frame() -> None:
    framer = StreamFramer()
    frame = encode_channel_data(0x4001, b"abcde", pad=True)
    assert len(frame) == 12
    assert framer.feed(frame[:9]) == []
    assert framer.feed(frame[9:] + b"\x40") == [frame]
    assert decode_channel_data(frame) == (0x4001, b"abcde")
    assert framer.buffered == 1


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x80\x00\x00\x00", "first byte 0x80 is neither STUN (0-3) nor ChannelData"),
        # A TLS ClientHello sent to the TCP port (TLS record type 22).
        (b"\x16\x03\x01\x02\x00", "first byte 0x16 is neither STUN (0-3) nor ChannelData"),
        (
            b"\x00\x01\x00\x00\xde\xad\xbe\xef",
            "a STUN header without the magic cookie (0xdeadbeef)",
        ),
        (b"\x00\x01\x00\x05\x21\x12\xa4\x42", "a STUN message length of 5, not a multiple of 4"),
    ],
)
def test_garbage_is_a_framing_error_and_stays_one(data: bytes, reason: str) -> None:
    framer = StreamFramer()
    with pytest.raises(FramingError) as caught:
        framer.feed(data)
    assert caught.value.reason == reason
    assert isinstance(caught.value, stun.StunDecodeError)
    with pytest.raises(FramingError) as again:
        framer.feed(stun_message(4, 1))
    assert again.value.reason == reason


def test_garbage_after_a_good_message_raises_without_losing_the_order() -> None:
    framer = StreamFramer()
    good = stun_message(8, 2)
    assert framer.feed(good) == [good]
    with pytest.raises(FramingError):
        framer.feed(b"\xff")


def test_oversized_lengths_are_bounded() -> None:
    framer = StreamFramer(max_frame=100)
    with pytest.raises(FramingError) as caught:
        framer.feed(b"\x40\x00\x01\x00")  # ChannelData of 256 bytes
    assert caught.value.reason == "a frame of 260 bytes exceeds the limit of 100"
    big = StreamFramer(max_frame=100)
    with pytest.raises(FramingError) as caught:
        big.feed(b"\x00\x01\x00\x64\x21\x12\xa4\x42")  # STUN with 100 attribute bytes
    assert caught.value.reason == "a frame of 120 bytes exceeds the limit of 100"
    # The default bound admits the largest frame either form can announce, and no more.
    default = StreamFramer()
    assert default.feed(b"\x4f\xff\xff\xff") == []
    assert default.buffered == 4
    assert MAX_FRAME == 20 + 0xFFFC
    for bad in (19, MAX_FRAME + 1):
        with pytest.raises(ValueError, match="max_frame must be"):
            StreamFramer(max_frame=bad)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_frames_or_a_framing_error(data: bytes) -> None:
    framer = StreamFramer(max_frame=256)
    try:
        out = framer.feed(data)
    except FramingError:
        return
    assert b"".join(out) == data[: len(data) - framer.buffered]
    assert framer.buffered < 256


# --- the client core's TCP mode ------------------------------------------------------------------


def test_tcp_requests_are_sent_once_and_time_out_after_ti() -> None:
    core = TurnClientCore(("192.0.2.1", 3478), USER, PASSWORD, transport="tcp")
    assert core.transport == Transport.TCP
    tid = core.allocate(100.0)
    assert len(core.datagrams_to_send()) == 1
    assert core.get_timer() == 100.0 + DEFAULT_TCP_TIMEOUT
    core.handle_timeout(100.0 + DEFAULT_TCP_TIMEOUT - 0.5)
    assert core.datagrams_to_send() == []
    core.handle_timeout(100.0 + DEFAULT_TCP_TIMEOUT)
    assert core.datagrams_to_send() == []
    event = core.next_event()
    assert isinstance(event, TransactionFailed)
    assert event.transaction_id == tid
    assert isinstance(event.error, StunTimeout)
    assert event.error.requests_sent == 1


def test_tcp_timeout_is_configurable() -> None:
    core = TurnClientCore(("192.0.2.1", 3478), USER, PASSWORD, transport="tcp", timeout=2.0)
    core.allocate(0.0)
    assert core.get_timer() == 2.0


def test_unknown_transport_is_refused() -> None:
    with pytest.raises(ValueError, match="'sctp' is not a valid Transport"):
        TurnClientCore(("192.0.2.1", 3478), USER, PASSWORD, transport="sctp")


# --- our client through our server over TCP ------------------------------------------------------


@asynccontextmanager
async def tcp_server(**options: object) -> AsyncIterator[TurnServer]:
    server = await TurnServer.start(
        listen_tcp=[("127.0.0.1", 0)],
        realm=REALM,
        users={USER: PASSWORD, "bob": "builder"},
        allow_loopback_peers=True,
        **options,  # type: ignore[arg-type]
    )
    try:
        yield server
    finally:
        await server.close()


def udp_peer() -> socket.socket:
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    return peer


async def settle(condition: object, what: str) -> None:
    """Wait (bounded) for ``condition()`` to hold: the server reacts to a close asynchronously."""
    for _ in range(500):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


def test_allocation_permission_send_and_channel_over_tcp() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        peer = udp_peer()
        async with tcp_server() as server:
            assert server.addresses == ()
            (address,) = server.tcp_addresses
            try:
                async with await TurnClient.allocate(
                    address, USER, PASSWORD, transport="tcp", timeout=5
                ) as client:
                    assert client.core.transport == Transport.TCP
                    assert client.relayed_address[0] == "127.0.0.1"
                    assert client.mapped_address == client.local_address
                    key = stream_local("tcp", address)
                    assert server.core.relay_of(client.local_address, key) == (
                        client.relayed_address
                    )
                    assert server.core.relay_of(client.local_address, address) is None
                    where = peer.getsockname()
                    await client.create_permission("127.0.0.1")
                    await client.send(where, b"indication")
                    data, source = await asyncio.wait_for(loop.sock_recvfrom(peer, 100), 5)
                    assert (data, source) == (b"indication", client.relayed_address)
                    await loop.sock_sendto(peer, b"reply", source)
                    assert await asyncio.wait_for(client.receive(), 5) == (where, b"reply")
                    assert await client.channel_bind(where) == CHANNEL_MIN
                    padded = client.core.send(where, b"abcde")
                    assert padded == encode_channel_data(CHANNEL_MIN, b"abcde", pad=True)
                    await client.send(where, b"channel")
                    data, source = await asyncio.wait_for(loop.sock_recvfrom(peer, 100), 5)
                    assert (data, source) == (b"channel", client.relayed_address)
                    # Several replies may arrive in one TCP read, or one split over reads.
                    for i in range(5):
                        await loop.sock_sendto(peer, b"reply %d" % i + b"!" * i, source)
                    for i in range(5):
                        got = await asyncio.wait_for(client.receive(), 5)
                        assert got == (where, b"reply %d" % i + b"!" * i)
                    assert await client.refresh(700) == 700
                assert server.core.counts["relayed to peer"] == 2
                assert server.core.counts["relayed to client"] == 6
                await settle(lambda: server.core.allocations == 0, "the allocation deleted")
            finally:
                peer.close()

    asyncio.run(main())


def test_two_tcp_clients_get_separate_allocations() -> None:
    async def main() -> None:
        async with tcp_server() as server:
            (address,) = server.tcp_addresses
            first = await TurnClient.allocate(address, USER, PASSWORD, transport="tcp", timeout=5)
            second = await TurnClient.allocate(
                address, "bob", "builder", transport="tcp", timeout=5
            )
            try:
                assert first.local_address != second.local_address
                assert first.relayed_address != second.relayed_address
                assert server.core.allocations == 2
                assert server.connections == 2
                assert server.core.allocations_of(USER) == 1
                assert server.core.allocations_of("bob") == 1
            finally:
                await first.close()
                await second.close()

    asyncio.run(main())


def test_closing_the_tcp_connection_frees_the_allocation() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        peer = udp_peer()
        async with tcp_server() as server:
            (address,) = server.tcp_addresses
            client = await TurnClient.allocate(address, USER, PASSWORD, transport="tcp", timeout=5)
            relayed = client.relayed_address
            await client.create_permission("127.0.0.1")
            assert server.core.allocations == 1
            # Drop the connection without deleting the allocation (no Refresh 0).
            assert client._stream is not None
            client._stream.abort()
            await settle(lambda: server.core.allocations == 0, "the allocation deleted")
            assert server.connections == 0
            # The relay socket is closed: its port can be bound again.
            again = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                again.bind(relayed)
            finally:
                again.close()
                peer.close()
            with pytest.raises(TurnStateError, match="TCP connection to the TURN server closed"):
                await client.receive()
            with pytest.raises(TurnStateError, match="TCP connection to the TURN server closed"):
                await client.create_permission("127.0.0.1")
            await client.close()
            del loop

    asyncio.run(main())


def test_server_closing_the_connection_loses_the_client_allocation() -> None:
    async def main() -> None:
        async with tcp_server() as server:
            (address,) = server.tcp_addresses
            client = await TurnClient.allocate(address, USER, PASSWORD, transport="tcp", timeout=5)
            for stream in list(server._streams.values()):
                stream.abort()
            with pytest.raises(TurnStateError, match="TCP connection to the TURN server closed"):
                await asyncio.wait_for(client.receive(), 5)
            await client.close()

    asyncio.run(main())


def test_garbage_closes_the_connection_and_the_server_keeps_serving() -> None:
    async def main() -> None:
        async with tcp_server() as server:
            (address,) = server.tcp_addresses
            reader, writer = await asyncio.open_connection(*address)
            try:
                writer.write(b"\x16\x03\x01\x02\x00\x01")  # a TLS ClientHello's start
                await writer.drain()
                assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
            finally:
                writer.close()
            assert server.framing_errors == 1
            assert server.internal_errors == 0
            async with await TurnClient.allocate(
                address, USER, PASSWORD, transport="tcp", timeout=5
            ) as client:
                assert client.relayed_address[0] == "127.0.0.1"

    asyncio.run(main())


def test_binding_request_split_over_writes_is_answered() -> None:
    async def main() -> None:
        async with tcp_server() as server:
            (address,) = server.tcp_addresses
            reader, writer = await asyncio.open_connection(*address)
            try:
                request = stun.encode(stun.binding_request(), fingerprint=True)
                for i in range(0, len(request), 3):
                    writer.write(request[i : i + 3])
                    await writer.drain()
                header = await asyncio.wait_for(reader.readexactly(20), 5)
                body = await asyncio.wait_for(reader.readexactly(header[3]), 5)
                answer = stun.decode(header + body)
                assert answer.message_class == MessageClass.SUCCESS
                assert answer.xor_mapped_address() == writer.get_extra_info("sockname")
            finally:
                writer.close()

    asyncio.run(main())


def test_connections_beyond_the_limit_are_closed() -> None:
    async def main() -> None:
        async with tcp_server(max_connections=1) as server:
            (address,) = server.tcp_addresses
            async with await TurnClient.allocate(
                address, USER, PASSWORD, transport="tcp", timeout=5
            ):
                reader, writer = await asyncio.open_connection(*address)
                try:
                    assert await asyncio.wait_for(reader.read(), 5) == b""
                finally:
                    writer.close()
                assert server.refused_connections == 1

    asyncio.run(main())


def test_udp_and_tcp_listeners_together() -> None:
    async def main() -> None:
        server = await TurnServer.start(
            [("127.0.0.1", 0)],
            listen_tcp=[("127.0.0.1", 0)],
            realm=REALM,
            users={USER: PASSWORD},
            allow_loopback_peers=True,
        )
        try:
            udp = await TurnClient.allocate(server.addresses[0], USER, PASSWORD, timeout=5)
            tcp = await TurnClient.allocate(
                server.tcp_addresses[0], USER, PASSWORD, transport="tcp", timeout=5
            )
            assert udp.relayed_address != tcp.relayed_address
            assert server.core.allocations == 2
            await tcp.close()
            await udp.close()
            assert server.core.allocations == 0
        finally:
            await server.close()

    asyncio.run(main())


def test_nothing_to_listen_on() -> None:
    async def main() -> None:
        with pytest.raises(TurnServerError, match="nothing to listen on"):
            await TurnServer.start(realm=REALM, users={USER: PASSWORD})

    asyncio.run(main())


def test_cli_turn_server_listens_on_tcp() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stoq",
            "turn-server",
            "--listen-tcp",
            "127.0.0.1:0",
            "--realm",
            REALM,
            "--user",
            f"{USER}:{PASSWORD}",
            "--allow-loopback-peers",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening tcp 127.0.0.1:"), (line, process.stderr)
        port = int(line.rsplit(":", 1)[1])

        async def main() -> None:
            async with await TurnClient.allocate(
                ("127.0.0.1", port), USER, PASSWORD, transport="tcp", timeout=5
            ) as client:
                assert client.relayed_address[0] == "127.0.0.1"

        asyncio.run(main())
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_turn_server_without_any_listener_fails() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "stoq", "turn-server", "--realm", REALM, "--user", "a:b"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "stoq: nothing to listen on"


# --- TLS -----------------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for the IP 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "turn test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file = directory / "cert.pem"
    key_file = directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_allocation_permission_send_and_channel_over_tls(tmp_path: Path) -> None:
    cert_file, key_file = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file, key_file)
    client_context = ssl.create_default_context(cafile=str(cert_file))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        peer = udp_peer()
        server = await TurnServer.start(
            listen_tls=[("127.0.0.1", 0)],
            tls_context=server_context,
            realm=REALM,
            users={USER: PASSWORD},
            allow_loopback_peers=True,
        )
        try:
            (address,) = server.tls_addresses
            assert server.tcp_addresses == ()
            with pytest.raises(StunError, match="cannot connect over TLS"):
                # The system's trust store does not know the self-signed certificate.
                await TurnClient.allocate(address, USER, PASSWORD, transport="tls", timeout=5)
            async with await TurnClient.allocate(
                address, USER, PASSWORD, transport="tls", timeout=5, ssl_context=client_context
            ) as client:
                assert client.core.transport == Transport.TLS
                key = stream_local("tls", address)
                assert server.core.relay_of(client.local_address, key) == client.relayed_address
                where = peer.getsockname()
                await client.create_permission("127.0.0.1")
                await client.send(where, b"indication")
                data, source = await asyncio.wait_for(loop.sock_recvfrom(peer, 100), 5)
                assert (data, source) == (b"indication", client.relayed_address)
                await loop.sock_sendto(peer, b"reply", source)
                assert await asyncio.wait_for(client.receive(), 5) == (where, b"reply")
                assert await client.channel_bind(where) == CHANNEL_MIN
                await client.send(where, b"channel")
                data, source = await asyncio.wait_for(loop.sock_recvfrom(peer, 100), 5)
                assert (data, source) == (b"channel", client.relayed_address)
                await loop.sock_sendto(peer, b"reply 2", source)
                assert await asyncio.wait_for(client.receive(), 5) == (where, b"reply 2")
                assert client._stream is not None
                client._stream.abort()
                with pytest.raises(TurnStateError, match="TLS connection to the TURN server"):
                    await asyncio.wait_for(client.receive(), 5)
            await settle(lambda: server.core.allocations == 0, "the allocation deleted")
        finally:
            peer.close()
            await server.close()

    asyncio.run(main())


def test_tls_listener_needs_a_context() -> None:
    async def main() -> None:
        with pytest.raises(TurnServerError, match="listening for TLS needs a tls_context"):
            await TurnServer.start(
                listen_tls=[("127.0.0.1", 0)], realm=REALM, users={USER: PASSWORD}
            )

    asyncio.run(main())


def test_cli_turn_server_listens_on_tls(tmp_path: Path) -> None:
    cert_file, key_file = self_signed(tmp_path)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stoq",
            "turn-server",
            "--listen-tls",
            "127.0.0.1:0",
            "--cert",
            str(cert_file),
            "--key",
            str(key_file),
            "--realm",
            REALM,
            "--user",
            f"{USER}:{PASSWORD}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening tls 127.0.0.1:"), (line, process.stderr)
        port = int(line.rsplit(":", 1)[1])
        context = ssl.create_default_context(cafile=str(cert_file))

        async def main() -> None:
            async with await TurnClient.allocate(
                ("127.0.0.1", port), USER, PASSWORD, transport="tls", ssl_context=context
            ) as client:
                assert client.relayed_address[0] == "127.0.0.1"

        asyncio.run(main())
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_tls_needs_cert_and_key() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stoq",
            "turn-server",
            "--listen-tls",
            "127.0.0.1:0",
            "--realm",
            REALM,
            "--user",
            "a:b",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "stoq: --listen-tls needs --cert and --key"
