"""The channel handshake: agreement, authentication policy, binding, tampering, misuse, MITM."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustchain.crypto import encoding
from trustchain.crypto.algorithms import AeadAlgorithm, KemAlgorithm, SignatureAlgorithm
from trustchain.crypto.channel import ChannelConfig, SecureChannel
from trustchain.crypto.handshake import (
    _LENGTH,
    INITIATOR_SIGNATURE_CONTEXT,
    RESPONDER_SIGNATURE_CONTEXT,
    Initiator,
    MessageType,
    Responder,
    _handshake_keys,
    _Item,
    _parse_payload,
    _Transcript,
)
from trustchain.crypto.kem import KemCiphertext, KemPrivateKey, KemPublicKey
from trustchain.crypto.signatures import SigningKey, VerifyKey
from trustchain.errors import (
    DecryptionFailed,
    HandshakeError,
    InvalidKey,
    InvalidSignature,
    MalformedData,
    UntrustedPeer,
)

#: What a tampered, truncated or garbled message may raise (UntrustedPeer is deliberately absent:
#: it means "authenticated, but refused", which tampering can never produce).
TAMPER_ERRORS = {MalformedData, InvalidKey, HandshakeError}


@pytest.fixture(scope="module")
def alice() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def bob() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def mallory() -> SigningKey:
    return SigningKey.generate()


def run(initiator: Initiator, responder: Responder) -> tuple[bytes, bytes, bytes]:
    """Drive a handshake to completion; the three messages."""
    m1 = initiator.start()
    m2 = responder.receive(m1)
    assert m2 is not None
    m3 = initiator.receive(m2)
    assert responder.receive(m3) is None
    return m1, m2, m3


def assert_connected(a: SecureChannel, b: SecureChannel) -> None:
    assert a.channel_id == b.channel_id
    assert len(a.channel_id) == 32
    assert a.aead_algorithm is b.aead_algorithm
    assert b.open(a.seal(b"initiator to responder", b"ad"), b"ad") == b"initiator to responder"
    assert a.open(b.seal(b"responder to initiator")) == b"responder to initiator"


# --- success -----------------------------------------------------------------------------------


def test_full_handshake(alice: SigningKey, bob: SigningKey) -> None:
    initiator = Initiator(alice, expected_peer=bob.public_key())
    responder = Responder(bob)
    assert (initiator.complete, responder.complete) == (False, False)
    m1, m2, m3 = run(initiator, responder)
    assert (initiator.complete, responder.complete) == (True, True)
    assert m1[:2] == bytes([1, MessageType.INITIATOR_HELLO])
    assert m2[:2] == bytes([1, MessageType.RESPONDER_HELLO])
    assert m3[:2] == bytes([1, MessageType.INITIATOR_FINISH])
    assert initiator.channel.peer == bob.public_key()
    assert responder.channel.peer == alice.public_key()
    assert initiator.channel.aead_algorithm is AeadAlgorithm.AES_256_GCM
    assert_connected(initiator.channel, responder.channel)


def test_every_handshake_makes_a_new_channel(alice: SigningKey, bob: SigningKey) -> None:
    first_i, first_r = Initiator(alice), Responder(bob)
    second_i, second_r = Initiator(alice), Responder(bob)
    run(first_i, first_r)
    run(second_i, second_r)
    assert first_i.channel.channel_id != second_i.channel.channel_id
    with pytest.raises(DecryptionFailed):
        second_r.channel.open(first_i.channel.seal(b"for the first session"))


@pytest.mark.parametrize(
    ("offered", "preferred", "chosen"),
    [
        ((AeadAlgorithm.CHACHA20_POLY1305,), None, AeadAlgorithm.CHACHA20_POLY1305),
        (
            (AeadAlgorithm.AES_256_GCM, AeadAlgorithm.CHACHA20_POLY1305),
            (AeadAlgorithm.CHACHA20_POLY1305, AeadAlgorithm.AES_256_GCM),
            AeadAlgorithm.CHACHA20_POLY1305,  # the responder's preference wins
        ),
    ],
)
def test_aead_negotiation(
    alice: SigningKey,
    bob: SigningKey,
    offered: tuple[AeadAlgorithm, ...],
    preferred: tuple[AeadAlgorithm, ...] | None,
    chosen: AeadAlgorithm,
) -> None:
    initiator = Initiator(alice, aead_algorithms=offered)
    responder = Responder(bob) if preferred is None else Responder(bob, aead_algorithms=preferred)
    run(initiator, responder)
    assert initiator.channel.aead_algorithm is chosen
    assert responder.channel.aead_algorithm is chosen
    assert_connected(initiator.channel, responder.channel)


def test_ml_kem_only_handshake(alice: SigningKey, bob: SigningKey) -> None:
    initiator = Initiator(alice, kem_algorithm=KemAlgorithm.ML_KEM_1024)
    responder = Responder(bob)
    run(initiator, responder)
    assert_connected(initiator.channel, responder.channel)


def test_binding_that_matches(alice: SigningKey, bob: SigningKey) -> None:
    initiator = Initiator(alice, binding=b"exporter value")
    responder = Responder(bob, binding=b"exporter value")
    run(initiator, responder)
    assert_connected(initiator.channel, responder.channel)
    # The binding changes the keys: same peers, no binding, different channel.
    other_i, other_r = Initiator(alice), Responder(bob)
    run(other_i, other_r)
    assert other_i.channel.channel_id != initiator.channel.channel_id


def test_channel_config_reaches_the_channel(alice: SigningKey, bob: SigningKey) -> None:
    config = ChannelConfig(max_records_per_key=2)
    initiator = Initiator(alice, channel_config=config)
    responder = Responder(bob, channel_config=config)
    run(initiator, responder)
    assert initiator.channel.config is config
    records = [initiator.channel.seal(b"%d" % i) for i in range(5)]
    assert initiator.channel.send_epoch == 2
    assert [responder.channel.open(r) for r in records] == [b"%d" % i for i in range(5)]


def test_identities_are_not_visible_on_the_wire(alice: SigningKey, bob: SigningKey) -> None:
    m1, m2, m3 = run(Initiator(alice), Responder(bob))
    wire = m1 + m2 + m3
    for identity in (alice, bob):
        public = identity.public_key()
        assert public.to_bytes() not in wire
        assert public.raw[-64:] not in wire  # not even a piece of a component key


def test_ephemeral_key_dropped(alice: SigningKey, bob: SigningKey) -> None:
    initiator = Initiator(alice)
    responder = Responder(bob)
    m2 = responder.receive(initiator.start())
    assert m2 is not None
    held_before = initiator._kem_private is not None
    initiator.receive(m2)
    assert held_before
    assert initiator._kem_private is None
    assert initiator._keys is None
    assert responder._keys is not None  # still needed to read M3


def test_channel_before_completion(alice: SigningKey, bob: SigningKey) -> None:
    initiator = Initiator(alice)
    responder = Responder(bob)
    with pytest.raises(HandshakeError):
        _ = initiator.channel
    m2 = responder.receive(initiator.start())
    with pytest.raises(HandshakeError):
        _ = responder.channel
    # Asking early is not a failure: the handshake still completes.
    assert m2 is not None
    assert responder.receive(initiator.receive(m2)) is None
    assert_connected(initiator.channel, responder.channel)


# --- identity policy ---------------------------------------------------------------------------


def test_expected_peer_mismatch(alice: SigningKey, bob: SigningKey, mallory: SigningKey) -> None:
    initiator = Initiator(alice, expected_peer=mallory.public_key())
    responder = Responder(bob)
    m2 = responder.receive(initiator.start())
    assert m2 is not None
    with pytest.raises(UntrustedPeer):
        initiator.receive(m2)
    with pytest.raises(HandshakeError):
        _ = initiator.channel


def test_initiator_accept_peer_refuses(alice: SigningKey, bob: SigningKey) -> None:
    seen: list[VerifyKey] = []

    def refuse(peer: VerifyKey) -> bool:
        seen.append(peer)
        return False

    initiator = Initiator(alice, accept_peer=refuse)
    responder = Responder(bob)
    m2 = responder.receive(initiator.start())
    assert m2 is not None
    with pytest.raises(UntrustedPeer):
        initiator.receive(m2)
    assert seen == [bob.public_key()]


def test_responder_accept_peer_refuses(alice: SigningKey, bob: SigningKey) -> None:
    seen: list[VerifyKey] = []

    def refuse(peer: VerifyKey) -> bool:
        seen.append(peer)
        return False

    initiator = Initiator(alice, expected_peer=bob.public_key())
    responder = Responder(bob, accept_peer=refuse)
    m2 = responder.receive(initiator.start())
    assert m2 is not None
    m3 = initiator.receive(m2)
    with pytest.raises(UntrustedPeer):
        responder.receive(m3)
    assert seen == [alice.public_key()]
    with pytest.raises(HandshakeError):
        _ = responder.channel


def test_accept_peer_allows(alice: SigningKey, bob: SigningKey) -> None:
    initiator = Initiator(
        alice, expected_peer=bob.public_key(), accept_peer=lambda k: k == bob.public_key()
    )
    responder = Responder(bob, accept_peer=lambda k: k.key_id == alice.public_key().key_id)
    run(initiator, responder)
    assert_connected(initiator.channel, responder.channel)


def test_classical_identity_refused_by_default(alice: SigningKey) -> None:
    classical = SigningKey.generate(SignatureAlgorithm.ED25519)
    initiator = Initiator(alice)
    responder = Responder(classical)
    m2 = responder.receive(initiator.start())
    assert m2 is not None
    with pytest.raises(UntrustedPeer):
        initiator.receive(m2)
    # ...unless the caller allows it explicitly.
    allowed = set(SignatureAlgorithm)
    initiator = Initiator(alice, peer_signature_algorithms=allowed)
    run(initiator, Responder(classical))
    assert initiator.channel.peer.algorithm is SignatureAlgorithm.ED25519


def test_mallory_with_her_own_identity_is_refused(
    alice: SigningKey, bob: SigningKey, mallory: SigningKey
) -> None:
    """Mallory terminates both sides with her own key: Alice, expecting Bob, refuses her."""
    initiator = Initiator(alice, expected_peer=bob.public_key())
    mallory_responder = Responder(mallory)
    m2 = mallory_responder.receive(initiator.start())
    assert m2 is not None
    with pytest.raises(UntrustedPeer):
        initiator.receive(m2)


# --- binding -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("initiator_binding", "responder_binding"),
    [(b"connection A", b"connection B"), (b"", b"exporter"), (b"exporter", b"")],
)
def test_binding_mismatch(
    alice: SigningKey, bob: SigningKey, initiator_binding: bytes, responder_binding: bytes
) -> None:
    initiator = Initiator(alice, binding=initiator_binding)
    responder = Responder(bob, binding=responder_binding)
    m2 = responder.receive(initiator.start())
    assert m2 is not None
    with pytest.raises(HandshakeError) as caught:
        initiator.receive(m2)
    assert type(caught.value) is HandshakeError
    assert isinstance(caught.value.__cause__, DecryptionFailed)


# --- tampering ---------------------------------------------------------------------------------


def tampered_handshake(
    alice: SigningKey, bob: SigningKey, index: int, mutate: Callable[[bytes], bytes]
) -> tuple[Initiator, Responder]:
    """Run a handshake with message ``index`` (0, 1, 2) passed through ``mutate``; it must fail
    with one of TAMPER_ERRORS. The two parties, for further checks."""
    initiator = Initiator(alice, expected_peer=bob.public_key())
    responder = Responder(bob)

    def drive() -> None:
        m1 = initiator.start()
        m2 = responder.receive(mutate(m1) if index == 0 else m1)
        assert m2 is not None
        m3 = initiator.receive(mutate(m2) if index == 1 else m2)
        responder.receive(mutate(m3) if index == 2 else m3)

    with pytest.raises(tuple(TAMPER_ERRORS)) as caught:
        drive()
    assert type(caught.value) in TAMPER_ERRORS, repr(caught.value)
    assert not responder.complete
    if index < 2:
        assert not initiator.complete
    return initiator, responder


def flip(position: int, mask: int = 0x01) -> Callable[[bytes], bytes]:
    def mutate(message: bytes) -> bytes:
        data = bytearray(message)
        data[position % len(data)] ^= mask
        return bytes(data)

    return mutate


def structural_positions(message: bytes, offsets: list[int]) -> list[int]:
    """Every header byte and envelope header byte, plus a stride through the rest."""
    positions = set(range(min(48, len(message))))
    for offset in offsets:
        positions.update(range(offset, min(offset + encoding.HEADER.size, len(message))))
    positions.update(range(0, len(message), 97))
    positions.update(range(max(0, len(message) - 24), len(message)))
    return sorted(p for p in positions if p < len(message))


def cut_to(length: int) -> Callable[[bytes], bytes]:
    return lambda message: message[:length]


def drop_last(count: int) -> Callable[[bytes], bytes]:
    return lambda message: message[:-count]


def append(extra: bytes) -> Callable[[bytes], bytes]:
    return lambda message: message + extra


@pytest.fixture(scope="module")
def sample_messages(alice: SigningKey, bob: SigningKey) -> tuple[bytes, bytes, bytes]:
    return run(Initiator(alice), Responder(bob))


def test_flipped_bytes_of_m1(
    alice: SigningKey, bob: SigningKey, sample_messages: tuple[bytes, bytes, bytes]
) -> None:
    m1 = sample_messages[0]
    # Envelope headers: the KEM public key, and the hybrid's two component envelopes inside it.
    key_offset = 2 + 32 + 1 + 2 * 2
    x25519_end = key_offset + encoding.HEADER.size + encoding.HEADER.size + 32
    offsets = [key_offset, key_offset + encoding.HEADER.size, x25519_end]
    for position in structural_positions(m1, offsets):
        tampered_handshake(alice, bob, 0, flip(position))


def test_flipped_bytes_of_m2(
    alice: SigningKey, bob: SigningKey, sample_messages: tuple[bytes, bytes, bytes]
) -> None:
    m2 = sample_messages[1]
    _, _, ciphertext_end = encoding.decode_prefix(m2, encoding.Kind.KEM_CIPHERTEXT, 36)
    offsets = [36, 36 + encoding.HEADER.size, ciphertext_end]
    for position in structural_positions(m2, offsets):
        tampered_handshake(alice, bob, 1, flip(position))


def test_flipped_bytes_of_m3(
    alice: SigningKey, bob: SigningKey, sample_messages: tuple[bytes, bytes, bytes]
) -> None:
    m3 = sample_messages[2]
    for position in structural_positions(m3, [2]):
        tampered_handshake(alice, bob, 2, flip(position))


@settings(max_examples=30, deadline=None)
@given(
    index=st.integers(min_value=0, max_value=2),
    position=st.integers(min_value=0, max_value=20_000),
    mask=st.integers(min_value=1, max_value=255),
)
def test_random_corruption_always_fails(
    alice: SigningKey, bob: SigningKey, index: int, position: int, mask: int
) -> None:
    tampered_handshake(alice, bob, index, flip(position, mask))


@pytest.mark.parametrize("index", [0, 1, 2])
def test_truncation_and_extension(alice: SigningKey, bob: SigningKey, index: int) -> None:
    # Falcon signatures vary in length, so M2 and M3 do too: cut relative to each message.
    mutations: list[Callable[[bytes], bytes]] = [lambda m: m[: len(m) // 2]]
    mutations += [cut_to(cut) for cut in (0, 1, 2, 3, 5, 35, 36, 40, 44)]
    mutations += [drop_last(drop) for drop in (1, 16, 17)]
    mutations += [append(extra) for extra in (b"\x00", b"\xff" * 33)]
    for mutate in mutations:
        tampered_handshake(alice, bob, index, mutate)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_truncation_and_extension_are_malformed(
    alice: SigningKey, bob: SigningKey, index: int
) -> None:
    """Length problems are reported as MalformedData specifically (every length is checked)."""
    for mutate in (drop_last(1), append(b"\x00"), cut_to(1)):
        initiator = Initiator(alice)
        responder = Responder(bob)
        m1 = initiator.start()
        if index == 0:
            with pytest.raises(MalformedData):
                responder.receive(mutate(m1))
            continue
        m2 = responder.receive(m1)
        assert m2 is not None
        if index == 1:
            with pytest.raises(MalformedData):
                initiator.receive(mutate(m2))
            continue
        m3 = initiator.receive(m2)
        with pytest.raises(MalformedData):
            responder.receive(mutate(m3))


def test_wrong_protocol_version(alice: SigningKey, bob: SigningKey) -> None:
    initiator = Initiator(alice)
    m1 = initiator.start()
    with pytest.raises(HandshakeError, match="version"):
        Responder(bob).receive(b"\x02" + m1[1:])


def test_empty_message(bob: SigningKey) -> None:
    with pytest.raises(MalformedData):
        Responder(bob).receive(b"")


def test_oversized_message(bob: SigningKey) -> None:
    with pytest.raises(MalformedData, match="limit"):
        Responder(bob).receive(bytes([1, 1]) + bytes(1 << 16))


# --- negotiation failures ----------------------------------------------------------------------


def test_no_common_aead(alice: SigningKey, bob: SigningKey) -> None:
    initiator = Initiator(alice, aead_algorithms=[AeadAlgorithm.CHACHA20_POLY1305])
    responder = Responder(bob, aead_algorithms=[AeadAlgorithm.AES_256_GCM])
    with pytest.raises(HandshakeError, match="AEAD"):
        responder.receive(initiator.start())


def test_classical_kem_refused_by_default(alice: SigningKey, bob: SigningKey) -> None:
    initiator = Initiator(alice, kem_algorithm=KemAlgorithm.X25519)
    with pytest.raises(HandshakeError, match="KEM"):
        Responder(bob).receive(initiator.start())
    # A responder configured for it accepts.
    initiator = Initiator(alice, kem_algorithm=KemAlgorithm.X25519)
    responder = Responder(bob, kem_algorithms=[KemAlgorithm.X25519])
    run(initiator, responder)
    assert_connected(initiator.channel, responder.channel)


def test_responder_choosing_an_aead_not_offered(alice: SigningKey, bob: SigningKey) -> None:
    initiator = Initiator(alice, aead_algorithms=[AeadAlgorithm.AES_256_GCM])
    responder = Responder(bob)
    m2 = responder.receive(initiator.start())
    assert m2 is not None
    forged = m2[:34] + AeadAlgorithm.CHACHA20_POLY1305.to_bytes(2, "big") + m2[36:]
    with pytest.raises(HandshakeError, match="not offered"):
        initiator.receive(forged)


def test_duplicate_and_zero_aead_offers(alice: SigningKey, bob: SigningKey) -> None:
    m1 = Initiator(alice).start()
    aes = AeadAlgorithm.AES_256_GCM.to_bytes(2, "big")
    duplicated = m1[:34] + b"\x02" + aes + aes + m1[39:]
    with pytest.raises(MalformedData, match="repeat"):
        Responder(bob).receive(duplicated)
    none_offered = m1[:34] + b"\x00" + m1[39:]
    with pytest.raises(MalformedData):
        Responder(bob).receive(none_offered)


def test_unknown_aead_offers_are_ignored(alice: SigningKey, bob: SigningKey) -> None:
    """A newer initiator may offer algorithms this version does not know; they are skipped (the
    handshake then fails only because the forged M1 is not what the initiator sent)."""
    initiator = Initiator(alice)
    m1 = initiator.start()
    forged = m1[:35] + b"\x7f\x7f" + m1[37:]  # the first offer becomes an unknown identifier
    m2 = Responder(bob).receive(forged)
    assert m2 is not None
    assert m2[34:36] == AeadAlgorithm.CHACHA20_POLY1305.to_bytes(2, "big")
    with pytest.raises(HandshakeError):
        initiator.receive(m2)


def test_parameter_validation(alice: SigningKey) -> None:
    with pytest.raises(ValueError, match="at least one"):
        Initiator(alice, aead_algorithms=[])
    with pytest.raises(ValueError, match="repeat"):
        Initiator(alice, aead_algorithms=[AeadAlgorithm.AES_256_GCM] * 2)


# --- state machine misuse ----------------------------------------------------------------------


def test_out_of_order_calls(alice: SigningKey, bob: SigningKey) -> None:
    # receive() before start()
    initiator = Initiator(alice)
    with pytest.raises(HandshakeError):
        initiator.receive(b"\x01\x02")
    with pytest.raises(HandshakeError):
        initiator.start()  # failed for good
    # start() twice
    initiator = Initiator(alice)
    initiator.start()
    with pytest.raises(HandshakeError):
        initiator.start()
    # M1 sent to an initiator, M3 sent before M1, M2 reflected to a responder
    initiator, responder = Initiator(alice), Responder(bob)
    m1, m2, m3 = run(initiator, responder)
    waiting = Initiator(alice)
    waiting.start()
    with pytest.raises(HandshakeError, match="RESPONDER_HELLO"):
        waiting.receive(m1)
    with pytest.raises(HandshakeError, match="INITIATOR_HELLO"):
        Responder(bob).receive(m3)
    with pytest.raises(HandshakeError, match="INITIATOR_HELLO"):
        Responder(bob).receive(m2)


def test_failure_is_terminal(alice: SigningKey, bob: SigningKey) -> None:
    initiator, responder = Initiator(alice), Responder(bob)
    m1 = initiator.start()
    m2 = responder.receive(m1)
    assert m2 is not None
    with pytest.raises(HandshakeError):
        responder.receive(m1)  # M1 again instead of M3
    m3 = initiator.receive(m2)
    with pytest.raises(HandshakeError, match="already failed"):
        responder.receive(m3)  # the genuine M3 no longer helps
    with pytest.raises(HandshakeError):
        _ = responder.channel
    assert responder._keys is None


def test_messages_after_completion(alice: SigningKey, bob: SigningKey) -> None:
    initiator, responder = Initiator(alice), Responder(bob)
    m1, m2, m3 = run(initiator, responder)
    for message in (m1, m3):
        with pytest.raises(HandshakeError, match="already complete"):
            responder.receive(message)
    with pytest.raises(HandshakeError, match="already complete"):
        initiator.receive(m2)
    # The established channels are untouched by the stray messages.
    assert_connected(initiator.channel, responder.channel)


def test_replayed_m3_into_another_handshake(alice: SigningKey, bob: SigningKey) -> None:
    first_i, first_r = Initiator(alice), Responder(bob)
    m1, _, m3 = run(first_i, first_r)
    # The same M1 replayed to a fresh responder gets a fresh KEM encapsulation; the old M3 does
    # not decrypt under the new handshake keys.
    replay_r = Responder(bob)
    assert replay_r.receive(m1) is not None
    with pytest.raises(HandshakeError) as caught:
        replay_r.receive(m3)
    assert isinstance(caught.value.__cause__, DecryptionFailed)
    # Likewise into an unrelated handshake.
    other_i, other_r = Initiator(alice), Responder(bob)
    assert other_r.receive(other_i.start()) is not None
    with pytest.raises(HandshakeError):
        other_r.receive(m3)


def test_replayed_m2_to_another_initiator(alice: SigningKey, bob: SigningKey) -> None:
    _, m2, _ = run(Initiator(alice), Responder(bob))
    other = Initiator(alice)
    other.start()
    with pytest.raises(HandshakeError):
        other.receive(m2)


# --- man in the middle -------------------------------------------------------------------------


def test_mitm_forwarding_m2_cannot_complete(alice: SigningKey, bob: SigningKey) -> None:
    """Mallory swaps in her own ephemeral key and forwards Bob's M2 unchanged: Alice cannot
    decapsulate Bob's ciphertext, so M2 does not decrypt."""
    initiator = Initiator(alice, expected_peer=bob.public_key())
    responder = Responder(bob)
    m1 = initiator.start()
    key_offset = 2 + 32 + 1 + 2 * 2
    forged_m1 = m1[:key_offset] + KemPrivateKey.generate().public_key().to_bytes()
    m2 = responder.receive(forged_m1)
    assert m2 is not None
    with pytest.raises(HandshakeError):
        initiator.receive(m2)
    assert not initiator.complete


def test_mitm_reencrypting_m2_fails_on_signature(alice: SigningKey, bob: SigningKey) -> None:
    """The strongest version: Mallory runs the key schedule on both sides (she knows both KEM
    secrets), decrypts Bob's identity and signature, re-encrypts them for Alice with a *correct*
    finished MAC. Bob's signature covers the transcript with Mallory's key, not Alice's, so
    Alice rejects it."""
    aead = AeadAlgorithm.AES_256_GCM
    initiator = Initiator(alice, expected_peer=bob.public_key())
    responder = Responder(bob)
    m1 = initiator.start()
    key_offset = 2 + 32 + 1 + 2 * 2
    alice_kem = KemPublicKey.from_bytes(m1[key_offset:])
    mallory_kem = KemPrivateKey.generate()
    forged_m1 = m1[:key_offset] + mallory_kem.public_key().to_bytes()

    m2 = responder.receive(forged_m1)
    assert m2 is not None
    _, _, ct_end = encoding.decode_prefix(m2, encoding.Kind.KEM_CIPHERTEXT, 36)
    # Mallory's view of Bob's side.
    to_bob = _Transcript(b"")
    to_bob.absorb(_Item.INITIATOR_HELLO, forged_m1)
    to_bob.absorb(_Item.RESPONDER_HELLO, m2[:ct_end])
    secret = mallory_kem.decapsulate(KemCiphertext.from_bytes(m2[36:ct_end]))
    keys = _handshake_keys(b"", secret, to_bob.digest(), aead)
    bob_auth = _parse_payload(
        keys.r2i.key.decrypt(keys.r2i.iv, m2[ct_end + _LENGTH.size :], m2[: ct_end + _LENGTH.size])
    )
    assert bob_auth.identity == bob.public_key()

    # Mallory's M2 for Alice: her own encapsulation, Bob's identity and signature, a valid MAC.
    secret, ciphertext = alice_kem.encapsulate()
    hello = m2[:36] + ciphertext.to_bytes()
    to_alice = _Transcript(b"")
    to_alice.absorb(_Item.INITIATOR_HELLO, m1)
    to_alice.absorb(_Item.RESPONDER_HELLO, hello)
    keys = _handshake_keys(b"", secret, to_alice.digest(), aead)
    to_alice.absorb(_Item.RESPONDER_IDENTITY, bob_auth.identity_bytes)
    to_alice.absorb(_Item.RESPONDER_SIGNATURE, bob_auth.signature_bytes)
    finished = keys.r2i.finished(to_alice.digest())
    payload = bob_auth.identity_bytes + bob_auth.signature_bytes + finished
    aad = hello + _LENGTH.pack(len(payload) + 16)
    forged_m2 = aad + keys.r2i.key.encrypt(keys.r2i.iv, payload, aad)

    with pytest.raises(HandshakeError) as caught:
        initiator.receive(forged_m2)
    assert type(caught.value) is HandshakeError
    assert isinstance(caught.value.__cause__, InvalidSignature)
    assert not initiator.complete


def hand_built_m2(m1: bytes, identity: SigningKey, *, bad_finished: bool = False) -> bytes:
    """M2 built by hand from the module docstring's format and key schedule (no Responder)."""
    aead = AeadAlgorithm.AES_256_GCM
    initiator_key = KemPublicKey.from_bytes(m1[2 + 32 + 1 + 2 * 2 :])
    secret, ciphertext = initiator_key.encapsulate()
    hello = bytes([1, 2]) + bytes(32) + aead.to_bytes(2, "big") + ciphertext.to_bytes()
    transcript = _Transcript(b"")
    transcript.absorb(_Item.INITIATOR_HELLO, m1)
    transcript.absorb(_Item.RESPONDER_HELLO, hello)
    keys = _handshake_keys(b"", secret, transcript.digest(), aead)
    identity_bytes = identity.public_key().to_bytes()
    transcript.absorb(_Item.RESPONDER_IDENTITY, identity_bytes)
    signature = identity.sign(RESPONDER_SIGNATURE_CONTEXT + transcript.digest()).to_bytes()
    transcript.absorb(_Item.RESPONDER_SIGNATURE, signature)
    finished = keys.r2i.finished(transcript.digest())
    if bad_finished:
        finished = bytes(32)
    payload = identity_bytes + signature + finished
    aad = hello + _LENGTH.pack(len(payload) + 16)
    return aad + keys.r2i.key.encrypt(keys.r2i.iv, payload, aad)


def test_hand_built_m2_is_accepted(alice: SigningKey, mallory: SigningKey) -> None:
    """The documented wire format and key schedule are the implemented ones."""
    initiator = Initiator(alice)
    m3 = initiator.receive(hand_built_m2(initiator.start(), mallory))
    assert m3[:2] == bytes([1, MessageType.INITIATOR_FINISH])
    assert initiator.channel.peer == mallory.public_key()


def test_wrong_finished_mac(alice: SigningKey, mallory: SigningKey) -> None:
    """Correctly encrypted and signed, but the finished MAC is wrong: refused."""
    initiator = Initiator(alice)
    with pytest.raises(HandshakeError, match="finished"):
        initiator.receive(hand_built_m2(initiator.start(), mallory, bad_finished=True))
    assert not initiator.complete


def test_signature_contexts_differ() -> None:
    """A responder's signature can never verify as an initiator's: the signed bytes differ in
    their context prefix (and neither context is a prefix of the other)."""
    assert not INITIATOR_SIGNATURE_CONTEXT.startswith(RESPONDER_SIGNATURE_CONTEXT)
    assert not RESPONDER_SIGNATURE_CONTEXT.startswith(INITIATOR_SIGNATURE_CONTEXT)
