"""SecureChannel: record format, replay window, reordering, key updates, usage limits, closing."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustchain.crypto.algorithms import AeadAlgorithm, SignatureAlgorithm
from trustchain.crypto.channel import (
    MAX_EPOCH,
    RECORD_HEADER,
    RECORD_OVERHEAD,
    ChannelConfig,
    SecureChannel,
    _EpochKeys,
)
from trustchain.crypto.signatures import SigningKey, VerifyKey
from trustchain.errors import ChannelClosed, DecryptionFailed, MalformedData, ReplayDetected

AEADS = [AeadAlgorithm.AES_256_GCM, AeadAlgorithm.CHACHA20_POLY1305]


@pytest.fixture(scope="module")
def peer_keys() -> tuple[VerifyKey, VerifyKey]:
    """Identities for the channels' ``peer`` fields (Ed25519: the record layer does not care)."""
    return (
        SigningKey.generate(SignatureAlgorithm.ED25519).public_key(),
        SigningKey.generate(SignatureAlgorithm.ED25519).public_key(),
    )


def make_pair(
    peer_keys: tuple[VerifyKey, VerifyKey],
    config: ChannelConfig | None = None,
    algorithm: AeadAlgorithm = AeadAlgorithm.AES_256_GCM,
) -> tuple[SecureChannel, SecureChannel]:
    """Two ends of one channel, as a handshake would make them (secrets swapped)."""
    a_to_b, b_to_a, channel_id = os.urandom(32), os.urandom(32), os.urandom(32)
    a = SecureChannel(
        channel_id=channel_id,
        peer=peer_keys[1],
        aead_algorithm=algorithm,
        send_secret=a_to_b,
        receive_secret=b_to_a,
        config=config,
    )
    b = SecureChannel(
        channel_id=channel_id,
        peer=peer_keys[0],
        aead_algorithm=algorithm,
        send_secret=b_to_a,
        receive_secret=a_to_b,
        config=config,
    )
    return a, b


def header_of(record: bytes) -> tuple[int, int]:
    epoch, sequence = RECORD_HEADER.unpack_from(record)
    return epoch, sequence


# --- round trips and format --------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", AEADS)
def test_round_trip_both_directions(
    peer_keys: tuple[VerifyKey, VerifyKey], algorithm: AeadAlgorithm
) -> None:
    a, b = make_pair(peer_keys, algorithm=algorithm)
    for i in range(5):
        assert a.next_send_sequence == i
        record = a.seal(b"ping %d" % i, b"stream 7")
        assert len(record) == len(b"ping %d" % i) + RECORD_OVERHEAD
        assert header_of(record) == (0, i)
        assert b.open(record, b"stream 7") == b"ping %d" % i
        reply = b.seal(b"pong %d" % i)
        opened = a.open_record(reply)
        assert (opened.epoch, opened.sequence, opened.plaintext) == (0, i, b"pong %d" % i)
    assert a.channel_id == b.channel_id
    assert a.peer == peer_keys[1]
    assert b.peer == peer_keys[0]
    assert a.aead_algorithm is algorithm


def test_empty_plaintext_round_trips(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, b = make_pair(peer_keys)
    record = a.seal(b"")
    assert len(record) == RECORD_OVERHEAD
    assert b.open(record) == b""


def test_same_plaintext_gives_different_records(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, _ = make_pair(peer_keys)
    first, second = a.seal(b"same"), a.seal(b"same")
    assert first[RECORD_HEADER.size :] != second[RECORD_HEADER.size :]


def test_repr_hides_keys(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, _ = make_pair(peer_keys)
    text = repr(a)
    assert "SecureChannel" in text
    assert a._send is not None
    assert a._send.secret.hex() not in text


# --- reordering and replay ----------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    plaintexts=st.lists(st.binary(max_size=300), min_size=1, max_size=40),
    seed=st.integers(min_value=0, max_value=2**32),
    associated=st.binary(max_size=16),
)
def test_reordered_records_all_open_once(
    peer_keys: tuple[VerifyKey, VerifyKey], plaintexts: list[bytes], seed: int, associated: bytes
) -> None:
    a, b = make_pair(peer_keys)
    records = [(i, a.seal(p, associated)) for i, p in enumerate(plaintexts)]
    random.Random(seed).shuffle(records)
    for i, record in records:
        opened = b.open_record(record, associated)
        assert opened.plaintext == plaintexts[i]
        assert opened.sequence == i
    # Every record, replayed in any order, is refused.
    for _, record in records:
        with pytest.raises(ReplayDetected):
            b.open(record, associated)


@settings(max_examples=60, deadline=None)
@given(
    window=st.integers(min_value=1, max_value=12),
    order=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=80),
)
def test_replay_window_matches_reference_model(
    peer_keys: tuple[VerifyKey, VerifyKey], window: int, order: list[int]
) -> None:
    """Deliver an arbitrary sequence (duplicates, reordering, old records) through a small window;
    the channel accepts exactly what a straightforward reference model accepts."""
    a, b = make_pair(peer_keys, ChannelConfig(replay_window=window))
    records = [a.seal(b"%d" % i) for i in range(41)]
    highest = -1
    seen: set[int] = set()
    for sequence in order:
        acceptable = sequence not in seen and sequence > highest - window
        if acceptable:
            assert b.open(records[sequence]) == b"%d" % sequence
            seen.add(sequence)
            highest = max(highest, sequence)
        else:
            with pytest.raises(ReplayDetected):
                b.open(records[sequence])


def test_duplicate_is_replay(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, b = make_pair(peer_keys)
    first, second = a.seal(b"one"), a.seal(b"two")
    assert b.open(first) == b"one"
    with pytest.raises(ReplayDetected):
        b.open(first)
    assert b.open(second) == b"two"
    with pytest.raises(ReplayDetected):
        b.open(first)
    with pytest.raises(ReplayDetected):
        b.open(second)


def test_window_edge(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, b = make_pair(peer_keys, ChannelConfig(replay_window=8))
    records = [a.seal(b"%d" % i) for i in range(20)]
    assert b.open(records[19]) == b"19"
    assert b.open(records[12]) == b"12"  # 7 behind the highest: inside an 8-record window
    with pytest.raises(ReplayDetected):
        b.open(records[11])  # 8 behind: outside
    assert b.open(records[18]) == b"18"


def test_far_jump_ahead_then_old_record(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, b = make_pair(peer_keys, ChannelConfig(replay_window=4))
    records = [a.seal(b"%d" % i) for i in range(100)]
    assert b.open(records[0]) == b"0"
    assert b.open(records[99]) == b"99"
    with pytest.raises(ReplayDetected):
        b.open(records[1])
    assert b.open(records[96]) == b"96"


# --- tampering, reflection ---------------------------------------------------------------------


def test_every_flipped_byte_fails_to_open(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, b = make_pair(peer_keys)
    record = a.seal(b"attack at dawn", b"ctx")
    for position in range(len(record)):
        forged = bytearray(record)
        forged[position] ^= 0x01
        with pytest.raises(DecryptionFailed):
            b.open(bytes(forged), b"ctx")
    # None of the failures consumed the sequence number or changed any state.
    assert b.open(record, b"ctx") == b"attack at dawn"


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_random_tampering_fails(
    peer_keys: tuple[VerifyKey, VerifyKey], data: st.DataObject
) -> None:
    a, b = make_pair(peer_keys)
    plaintext = data.draw(st.binary(max_size=64))
    record = a.seal(plaintext)
    position = data.draw(st.integers(min_value=RECORD_HEADER.size, max_value=len(record) - 1))
    mask = data.draw(st.integers(min_value=1, max_value=255))
    forged = bytearray(record)
    forged[position] ^= mask
    with pytest.raises(DecryptionFailed):
        b.open(bytes(forged))
    assert b.open(record) == plaintext


def test_header_tampering(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, b = make_pair(peer_keys)
    record = a.seal(b"payload")
    body = record[RECORD_HEADER.size :]
    # Another (fresh) sequence number: the nonce and the associated data change.
    with pytest.raises(DecryptionFailed):
        b.open(RECORD_HEADER.pack(0, 5) + body)
    # The next epoch: the receiver tries the next keys, which do not authenticate it.
    with pytest.raises(DecryptionFailed):
        b.open(RECORD_HEADER.pack(1, 0) + body)
    # An epoch beyond max_epoch_advance: not even tried.
    with pytest.raises(DecryptionFailed):
        b.open(RECORD_HEADER.pack(1000, 0) + body)
    assert b.receive_epoch == 0
    assert b.open(record) == b"payload"


def test_wrong_associated_data(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, b = make_pair(peer_keys)
    record = a.seal(b"payload", b"method=/a")
    with pytest.raises(DecryptionFailed):
        b.open(record, b"method=/b")
    with pytest.raises(DecryptionFailed):
        b.open(record)
    assert b.open(record, b"method=/a") == b"payload"


def test_truncated_and_extended_records(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, b = make_pair(peer_keys)
    record = a.seal(b"payload")
    for length in range(RECORD_OVERHEAD):
        with pytest.raises(MalformedData):
            b.open(record[:length])
    for length in range(RECORD_OVERHEAD, len(record)):
        with pytest.raises(DecryptionFailed):
            b.open(record[:length])
    with pytest.raises(DecryptionFailed):
        b.open(record + b"\x00")
    assert b.open(record) == b"payload"


def test_reflected_record_does_not_open(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, b = make_pair(peer_keys)
    record = a.seal(b"to b")
    with pytest.raises(DecryptionFailed):
        a.open(record)
    assert b.open(record) == b"to b"


def test_record_of_another_channel_does_not_open(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, _ = make_pair(peer_keys)
    _, d = make_pair(peer_keys)
    with pytest.raises(DecryptionFailed):
        d.open(a.seal(b"wrong channel"))


def test_integrity_limit_closes_channel(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, b = make_pair(peer_keys, ChannelConfig(max_failed_decryptions=3))
    record = a.seal(b"x")
    forged = record[:-1] + bytes([record[-1] ^ 1])
    for _ in range(3):
        with pytest.raises(DecryptionFailed):
            b.open(forged)
    with pytest.raises(ChannelClosed):
        b.open(forged)
    assert b.closed
    with pytest.raises(ChannelClosed):
        b.open(record)


# --- key updates -------------------------------------------------------------------------------


def test_rekey_many_times_stays_in_sync(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, b = make_pair(peer_keys)
    rng = random.Random(1234)
    for round_number in range(60):
        sender, receiver = (a, b) if rng.random() < 0.5 else (b, a)
        if rng.random() < 0.5:
            before = sender.send_epoch
            sender.rekey()
            assert sender.send_epoch == before + 1
            assert sender.next_send_sequence == 0
        records = [sender.seal(b"%d/%d" % (round_number, i)) for i in range(rng.randint(1, 3))]
        for i, record in enumerate(records):
            assert receiver.open(record) == b"%d/%d" % (round_number, i)
        assert receiver.receive_epoch == sender.send_epoch
    assert a.send_epoch > 5
    assert b.send_epoch > 5


def test_rekey_changes_keys_and_restarts_sequence(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, b = make_pair(peer_keys)
    old = a.seal(b"old")
    a.rekey()
    new = a.seal(b"new")
    assert header_of(old) == (0, 0)
    assert header_of(new) == (1, 0)
    # Same (epoch-relative) sequence, different key: not a replay of the old record.
    assert b.open(new) == b"new"
    assert b.receive_epoch == 1
    # The old epoch is within its grace: the in-flight record still opens, once.
    assert b.open(old) == b"old"
    with pytest.raises(ReplayDetected):
        b.open(old)


def test_old_epoch_rejected_after_grace(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, b = make_pair(peer_keys, ChannelConfig(epoch_grace_records=3))
    late = [a.seal(b"epoch0-%d" % i) for i in range(3)]
    a.rekey()
    assert b.open(a.seal(b"epoch1-0")) == b"epoch1-0"
    assert b.open(late[0]) == b"epoch0-0"  # within the grace (1 record of epoch 1 opened)
    assert b.open(a.seal(b"epoch1-1")) == b"epoch1-1"
    assert b.open(late[1]) == b"epoch0-1"  # still within (2 records)
    assert b.open(a.seal(b"epoch1-2")) == b"epoch1-2"  # 3 records: the grace ends
    with pytest.raises(ReplayDetected):
        b.open(late[2])


def test_only_the_previous_epoch_is_kept(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, b = make_pair(peer_keys)
    epoch0 = a.seal(b"e0")
    a.rekey()
    epoch1 = a.seal(b"e1")
    a.rekey()
    assert b.open(epoch1) == b"e1"
    assert b.open(a.seal(b"e2")) == b"e2"
    assert b.receive_epoch == 2
    with pytest.raises(ReplayDetected):
        b.open(epoch0)


def test_receiver_catches_up_over_several_epochs(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, b = make_pair(peer_keys, ChannelConfig(max_epoch_advance=4))
    skipped = a.seal(b"in epoch 0")
    for _ in range(4):
        a.rekey()
    assert b.open(a.seal(b"epoch 4")) == b"epoch 4"
    assert b.receive_epoch == 4
    assert b.open(skipped) == b"in epoch 0"  # the epoch it came from is still in its grace
    for _ in range(5):
        a.rekey()
    with pytest.raises(DecryptionFailed):
        b.open(a.seal(b"epoch 9: five ahead"))
    assert b.receive_epoch == 4


def test_forged_record_of_next_epoch_does_not_advance(
    peer_keys: tuple[VerifyKey, VerifyKey],
) -> None:
    a, b = make_pair(peer_keys)
    current = a.seal(b"epoch 0")
    forged = RECORD_HEADER.pack(1, 0) + os.urandom(40)
    with pytest.raises(DecryptionFailed):
        b.open(forged)
    assert b.receive_epoch == 0
    assert b.open(current) == b"epoch 0"


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_reordering_across_key_updates(
    peer_keys: tuple[VerifyKey, VerifyKey], data: st.DataObject
) -> None:
    """Records of two consecutive epochs, shuffled together, all open once (grace covers them)."""
    a, b = make_pair(peer_keys)
    before = data.draw(st.integers(min_value=1, max_value=15))
    after = data.draw(st.integers(min_value=1, max_value=15))
    records = [(b"old %d" % i, a.seal(b"old %d" % i)) for i in range(before)]
    a.rekey()
    records += [(b"new %d" % i, a.seal(b"new %d" % i)) for i in range(after)]
    order = data.draw(st.permutations(records))
    for plaintext, record in order:
        assert b.open(record) == plaintext
    assert b.receive_epoch == 1
    for _, record in order:
        with pytest.raises(ReplayDetected):
            b.open(record)


def test_automatic_rekey_at_record_limit(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, b = make_pair(peer_keys, ChannelConfig(max_records_per_key=3))
    records = []
    for i in range(10):
        announced = (a.send_epoch, a.next_send_sequence)
        record = a.seal(b"%d" % i)
        assert announced == header_of(record)
        assert (SecureChannel.record_epoch(record), SecureChannel.record_sequence(record)) == (
            announced
        )
        records.append(record)
    assert [header_of(r) for r in records] == [
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, 0)
    ]  # fmt: skip
    for i, record in enumerate(records):
        assert b.open(record) == b"%d" % i
    assert b.receive_epoch == 3
    assert (a.send_epoch, a.next_send_sequence) == (3, 1)


def test_automatic_rekey_at_byte_limit(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, b = make_pair(peer_keys, ChannelConfig(max_bytes_per_key=100))
    sizes = [40, 40, 40, 10, 150, 1]
    records = [a.seal(bytes(size)) for size in sizes]
    # 40+40 fit; the third 40 would make 120; 40+10 fit; 150 needs a fresh key and gets one
    # alone; the next record cannot join it.
    assert [header_of(r)[0] for r in records] == [0, 0, 1, 1, 2, 3]
    for size, record in zip(sizes, records, strict=True):
        assert b.open(record) == bytes(size)


def test_record_header_helpers() -> None:
    record = RECORD_HEADER.pack(7, 2**40) + bytes(16)
    assert SecureChannel.record_epoch(record) == 7
    assert SecureChannel.record_sequence(record) == 2**40
    with pytest.raises(MalformedData):
        SecureChannel.record_sequence(record[:11])


def test_epochs_exhausted_closes_channel(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, _ = make_pair(peer_keys)
    # Reaching 2^32 - 1 honestly takes 4 billion key updates; put the sender there directly.
    a._send = _EpochKeys.derive(a.aead_algorithm, MAX_EPOCH, os.urandom(32))
    assert header_of(a.seal(b"last epoch")) == (MAX_EPOCH, 0)
    with pytest.raises(ChannelClosed):
        a.rekey()
    assert a.closed


# --- closing and configuration -------------------------------------------------------------------


def test_close(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    a, b = make_pair(peer_keys)
    record = a.seal(b"before close")
    b.close()
    b.close()  # idempotent
    assert b.closed
    with pytest.raises(ChannelClosed):
        b.open(record)
    with pytest.raises(ChannelClosed):
        b.seal(b"after close")
    with pytest.raises(ChannelClosed):
        b.rekey()
    with pytest.raises(ChannelClosed):
        _ = b.next_send_sequence
    with pytest.raises(ChannelClosed):
        _ = b.receive_epoch
    # The other end is unaffected until it is closed too.
    assert not a.closed
    a.close()
    with pytest.raises(ChannelClosed):
        a.seal(b"x")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"replay_window": 0},
        {"replay_window": (1 << 16) + 1},
        {"max_records_per_key": 0},
        {"max_records_per_key": 1 << 64},
        {"max_bytes_per_key": 0},
        {"epoch_grace_records": -1},
        {"max_epoch_advance": 0},
        {"max_failed_decryptions": -1},
    ],
)
def test_config_validation(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must"):
        ChannelConfig(**kwargs)


def test_constructor_validation(peer_keys: tuple[VerifyKey, VerifyKey]) -> None:
    secret = os.urandom(32)
    with pytest.raises(ValueError, match="channel_id"):
        SecureChannel(
            channel_id=b"short",
            peer=peer_keys[0],
            aead_algorithm=AeadAlgorithm.AES_256_GCM,
            send_secret=secret,
            receive_secret=os.urandom(32),
        )
    with pytest.raises(ValueError, match="traffic secret"):
        SecureChannel(
            channel_id=os.urandom(32),
            peer=peer_keys[0],
            aead_algorithm=AeadAlgorithm.AES_256_GCM,
            send_secret=secret,
            receive_secret=secret,
        )
