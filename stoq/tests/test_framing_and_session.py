"""The sans-IO parts: message framing and the post-quantum session, without sockets."""

from __future__ import annotations

import itertools
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stoq.engine import _SecretsLog, get_engine
from stoq.errors import MessageTooLarge, PeerRejected, ProtocolViolation, StoqError
from stoq.framing import LENGTH, MessageDecoder, frame
from stoq.identity import NodeIdentity
from stoq.session import (
    ClientSession,
    ServerSession,
    decode_chain,
    encode_chain,
    tls_binding,
)

SERVER_NAME = "node1.bank.hypermesh"


@given(
    messages=st.lists(st.binary(max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_framing_survives_any_split(messages: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(frame(m) for m in messages)
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    decoder = MessageDecoder(300)
    out: list[bytes] = []
    for start, end in itertools.pairwise(points):
        out.extend(decoder.feed(wire[start:end]))
    decoder.end()
    assert out == messages
    assert decoder.buffered == 0


def test_an_announced_length_over_the_limit_is_refused_before_the_body() -> None:
    decoder = MessageDecoder(1000)
    with pytest.raises(MessageTooLarge):
        decoder.feed(LENGTH.pack(1001))
    with pytest.raises(ProtocolViolation):
        decoder.feed(b"more")


def test_a_stream_ending_inside_a_message_is_a_violation() -> None:
    decoder = MessageDecoder(100)
    assert decoder.feed(frame(b"whole") + frame(b"partial")[:-2]) == [b"whole"]
    with pytest.raises(ProtocolViolation):
        decoder.end()


@settings(max_examples=300)
@given(st.binary(max_size=64))
def test_decode_chain_rejects_garbage_with_one_error_type(data: bytes) -> None:
    try:
        chain = decode_chain(data)
    except ProtocolViolation:
        return
    assert encode_chain(chain) == data


def test_chain_round_trip() -> None:
    chain = (b"leaf-der", b"intermediate-der")
    assert decode_chain(encode_chain(chain)) == chain
    with pytest.raises(ProtocolViolation):
        decode_chain(encode_chain(chain) + b"x")


def test_binding_needs_both_secrets() -> None:
    with pytest.raises(StoqError):
        tls_binding(b"", b"s" * 32)
    assert tls_binding(b"c" * 32, b"s" * 32) != tls_binding(b"s" * 32, b"c" * 32)


def test_secrets_log_keeps_only_the_application_traffic_secrets() -> None:
    log = _SecretsLog()
    log.write("CLIENT_HANDSHAKE_TRAFFIC_SECRET aa bb\nCLIENT_TRAFFIC_SECRET_0 00 ")
    log.write("0a0b\nSERVER_TRAFFIC_SECRET_0 00 0c0d\n")
    log.flush()
    assert log.secrets == {
        "CLIENT_TRAFFIC_SECRET_0": b"\x0a\x0b",
        "SERVER_TRAFFIC_SECRET_0": b"\x0c\x0d",
    }


def test_unknown_engine_is_a_typed_error() -> None:
    with pytest.raises(StoqError, match="unknown QUIC engine"):
        get_engine("quiche")


def _der(identity: NodeIdentity) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return identity.leaf.public_bytes(serialization.Encoding.DER)


def test_session_completes_with_equal_bindings(
    pki: Any, server_identity: NodeIdentity, client_identity: NodeIdentity
) -> None:
    binding = os.urandom(32)
    client = ClientSession(
        client_identity,
        pki.policy(),
        binding,
        tls_peer_certificate=_der(server_identity),
        server_name=SERVER_NAME,
    )
    server = ServerSession(server_identity, pki.policy(), binding)
    hello = server.receive(client.start())
    finish = client.receive(hello)
    assert finish is not None
    accepted = server.receive(finish)
    assert client.receive(accepted) is None
    assert client.established
    assert server.established
    assert client.channel.channel_id == server.channel.channel_id
    assert server.peer.peer_id == client_identity.peer_id
    assert client.peer.peer_id == server_identity.peer_id
    with pytest.raises(ProtocolViolation):
        server.receive(finish)


def test_a_relay_between_two_tls_sessions_is_detected(
    pki: Any, server_identity: NodeIdentity, client_identity: NodeIdentity
) -> None:
    """A man in the middle terminating TLS on both sides relays every session message
    unchanged, but its two TLS sessions have different secrets, so different bindings."""
    client = ClientSession(
        client_identity,
        pki.policy(),
        os.urandom(32),
        tls_peer_certificate=_der(server_identity),
        server_name=SERVER_NAME,
    )
    server = ServerSession(server_identity, pki.policy(), os.urandom(32))
    hello = server.receive(client.start())
    with pytest.raises(PeerRejected, match="post-quantum handshake bound to this connection"):
        client.receive(hello)


def test_a_tls_certificate_other_than_the_chain_leaf_is_refused(
    pki: Any, server_identity: NodeIdentity, client_identity: NodeIdentity
) -> None:
    binding = os.urandom(32)
    client = ClientSession(
        client_identity,
        pki.policy(),
        binding,
        tls_peer_certificate=_der(client_identity),
        server_name=SERVER_NAME,
    )
    server = ServerSession(server_identity, pki.policy(), binding)
    with pytest.raises(PeerRejected, match="TLS certificate"):
        client.receive(server.receive(client.start()))


def test_a_server_signing_with_another_key_than_its_chain_is_refused(
    pki: Any, server_identity: NodeIdentity, client_identity: NodeIdentity
) -> None:
    """An impostor replays the real server's chain but can only sign with its own key."""
    impostor = NodeIdentity.__new__(NodeIdentity)
    object.__setattr__(impostor, "chain", server_identity.chain)
    object.__setattr__(impostor, "signing_key", client_identity.signing_key)
    binding = os.urandom(32)
    client = ClientSession(
        client_identity, pki.policy(), binding, tls_peer_certificate=None, server_name=SERVER_NAME
    )
    server = ServerSession(impostor, pki.policy(), binding)
    with pytest.raises(PeerRejected):
        client.receive(server.receive(client.start()))


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_control_messages_get_typed_errors(
    pki: Any, server_identity: NodeIdentity, data: bytes
) -> None:
    server = ServerSession(server_identity, pki.policy(), b"b" * 32)
    with pytest.raises((ProtocolViolation, PeerRejected)):
        server.receive(data)
