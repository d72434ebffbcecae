"""The TURN client core (RFC 8656) against scripted server messages, and its asyncio shell
against our TURN server on loopback."""

from __future__ import annotations

import asyncio
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stoq.nat import stun
from stoq.nat.stun import AttributeType, MessageClass, Method
from stoq.nat.stun_client import StunResponseError, StunTimeout
from stoq.nat.turn_client import (
    CHANNEL_MIN,
    MAX_STALE_NONCE_RETRIES,
    AddressFamily,
    Allocated,
    AllocationExpired,
    ChannelBound,
    DataReceived,
    Deallocated,
    Event,
    PermissionCreated,
    Refreshed,
    State,
    TransactionFailed,
    TurnClient,
    TurnClientCore,
    TurnError,
    TurnStateError,
    decode_channel_data,
    encode_channel_data,
    is_channel_data,
    refresh_margin,
)

SERVER = ("192.0.2.1", 3478)
USER = "alice"
PASSWORD = "wonderland"
REALM = "example.org"
KEY = stun.long_term_key(USER, REALM, PASSWORD)
RELAYED = ("192.0.2.1", 49152)
MAPPED = ("198.51.100.7", 40000)
PEER = ("203.0.113.5", 5000)


# --- a scripted server ---------------------------------------------------------------------------


def one(core: TurnClientCore) -> stun.Message:
    out = core.datagrams_to_send()
    assert len(out) == 1, out
    return stun.decode(out[0])


def one_raw(core: TurnClientCore) -> bytes:
    out = core.datagrams_to_send()
    assert len(out) == 1, out
    return out[0]


def answer(
    request: stun.Message,
    *attributes: stun.Attribute,
    key: bytes | None = KEY,
    error: tuple[int, str] | None = None,
) -> bytes:
    if error is None:
        message = stun.success_response(request, *attributes)
    else:
        message = stun.error_response(request, error[0], error[1], *attributes)
    return stun.encode(message, integrity_key=key, fingerprint=True)


def challenge(request: stun.Message, nonce: str = "nonce-1", code: int = 401) -> bytes:
    reason = "Unauthorized" if code == 401 else "Stale Nonce"
    return answer(
        request,
        stun.Attribute(AttributeType.REALM, REALM.encode()),
        stun.Attribute(AttributeType.NONCE, nonce.encode()),
        key=None,
        error=(code, reason),
    )


def xor(kind: int, address: tuple[str, int], request: stun.Message) -> stun.Attribute:
    return stun.Attribute(
        kind, stun.encode_xor_address(address[0], address[1], request.transaction_id)
    )


def lifetime(seconds: int) -> stun.Attribute:
    return stun.Attribute(AttributeType.LIFETIME, seconds.to_bytes(4, "big"))


def allocate_success(request: stun.Message, seconds: int = 600) -> bytes:
    return answer(
        request,
        xor(AttributeType.XOR_RELAYED_ADDRESS, RELAYED, request),
        xor(AttributeType.XOR_MAPPED_ADDRESS, MAPPED, request),
        lifetime(seconds),
    )


def events(core: TurnClientCore) -> list[Event]:
    found: list[Event] = []
    while (event := core.next_event()) is not None:
        found.append(event)
    return found


def allocated(now: float = 0.0, seconds: int = 600, **options: object) -> TurnClientCore:
    """A core with an allocation made at ``now`` (401 then success)."""
    core = TurnClientCore(SERVER, USER, PASSWORD, **options)  # type: ignore[arg-type]
    core.allocate(now)
    core.handle_datagram(challenge(one(core)), SERVER, now)
    core.handle_datagram(allocate_success(one(core), seconds), SERVER, now)
    assert [type(e) for e in events(core)] == [Allocated]
    return core


def with_permission(now: float = 0.0) -> TurnClientCore:
    core = allocated(now)
    core.create_permission([PEER[0]], now)
    core.handle_datagram(answer(one(core)), SERVER, now)
    assert [type(e) for e in events(core)] == [PermissionCreated]
    return core


# --- allocation and authentication ---------------------------------------------------------------


def test_first_allocate_is_unauthenticated_and_asks_for_udp() -> None:
    core = TurnClientCore(SERVER, USER, PASSWORD, lifetime=1200)
    tid = core.allocate(0.0)
    raw = one_raw(core)
    request = stun.decode(raw)
    assert (request.method, request.message_class) == (Method.ALLOCATE, MessageClass.REQUEST)
    assert request.transaction_id == tid
    assert request.get(AttributeType.REQUESTED_TRANSPORT) == b"\x11\x00\x00\x00"
    assert request.get(AttributeType.LIFETIME) == (1200).to_bytes(4, "big")
    assert request.get(AttributeType.REQUESTED_ADDRESS_FAMILY) is None
    assert request.get(AttributeType.USERNAME) is None
    assert request.get(AttributeType.MESSAGE_INTEGRITY) is None
    stun.verify_fingerprint(raw)
    assert core.state == State.ALLOCATING


def test_ipv6_allocation_requests_the_family() -> None:
    core = TurnClientCore(SERVER, USER, PASSWORD, family=AddressFamily.IPV6)
    core.allocate(0.0)
    assert one(core).get(AttributeType.REQUESTED_ADDRESS_FAMILY) == b"\x02\x00\x00\x00"


def test_401_leads_to_an_authenticated_retry_with_the_long_term_key() -> None:
    core = TurnClientCore(SERVER, USER, PASSWORD)
    tid = core.allocate(0.0)
    first = one(core)
    core.handle_datagram(challenge(first, "n0nce"), SERVER, 0.1)
    assert events(core) == []
    raw = one_raw(core)
    retry = stun.decode(raw)
    assert retry.transaction_id != first.transaction_id  # a new transaction
    assert retry.username() == USER
    assert retry.realm() == REALM
    assert retry.nonce() == "n0nce"
    assert retry.get(AttributeType.REQUESTED_TRANSPORT) == b"\x11\x00\x00\x00"
    stun.verify_integrity(raw, KEY)  # MD5(alice:example.org:wonderland)
    with pytest.raises(stun.IntegrityError):
        stun.verify_integrity(raw, stun.long_term_key(USER, REALM, "wrong"))
    stun.verify_fingerprint(raw)
    core.handle_datagram(allocate_success(retry, 900), SERVER, 0.2)
    assert events(core) == [Allocated(tid, RELAYED, MAPPED, 900)]  # the caller's id
    assert core.state == State.ALLOCATED
    assert (core.relayed, core.mapped, core.lifetime) == (RELAYED, MAPPED, 900)


def test_401_to_an_authenticated_request_is_final() -> None:
    core = TurnClientCore(SERVER, USER, "bad password")
    tid = core.allocate(0.0)
    core.handle_datagram(challenge(one(core)), SERVER, 0.0)
    core.handle_datagram(challenge(one(core)), SERVER, 0.0)
    (event,) = events(core)
    assert isinstance(event, TransactionFailed)
    assert event.transaction_id == tid
    assert isinstance(event.error, TurnError)
    assert (event.error.code, event.error.reason) == (401, "Unauthorized")
    assert str(event.error) == "TURN ALLOCATE error 401: Unauthorized"
    assert core.state == State.FAILED
    assert core.datagrams_to_send() == []


def test_401_without_realm_and_nonce_fails() -> None:
    core = TurnClientCore(SERVER, USER, PASSWORD)
    core.allocate(0.0)
    core.handle_datagram(answer(one(core), key=None, error=(401, "Unauthorized")), SERVER, 0.0)
    (event,) = events(core)
    assert isinstance(event, TransactionFailed)
    assert isinstance(event.error, StunResponseError)
    assert str(event.error) == "a 401 answer without REALM and NONCE"


def test_438_stale_nonce_retries_with_the_new_nonce() -> None:
    core = allocated()
    tid = core.create_permission([PEER[0]], 1.0)
    first = one(core)
    assert first.nonce() == "nonce-1"
    core.handle_datagram(challenge(first, "nonce-2", code=438), SERVER, 1.0)
    raw = one_raw(core)
    retry = stun.decode(raw)
    assert retry.nonce() == "nonce-2"
    assert retry.transaction_id != first.transaction_id
    stun.verify_integrity(raw, KEY)
    # the peer address is re-XORed with the new transaction id
    assert retry.address(AttributeType.XOR_PEER_ADDRESS) == (PEER[0], 0)
    core.handle_datagram(answer(retry), SERVER, 1.0)
    assert events(core) == [PermissionCreated(tid, (PEER[0],))]
    # later requests carry the new nonce too
    core.refresh(2.0)
    assert one(core).nonce() == "nonce-2"


def test_438_again_and_again_ends_in_a_turn_error() -> None:
    core = allocated()
    tid = core.refresh(1.0)
    for attempt in range(MAX_STALE_NONCE_RETRIES + 1):
        core.handle_datagram(challenge(one(core), f"n{attempt}", code=438), SERVER, 1.0)
    (event,) = events(core)
    assert isinstance(event, TransactionFailed)
    assert event.transaction_id == tid
    assert isinstance(event.error, TurnError)
    assert (event.error.code, event.error.method) == (438, Method.REFRESH)


def test_rfc8489_password_algorithms_are_echoed() -> None:
    core = TurnClientCore(SERVER, USER, PASSWORD)
    core.allocate(0.0)
    first = one(core)
    offered = stun.encode_password_algorithms(
        [(stun.PasswordAlgorithm.SHA256, b""), (stun.PasswordAlgorithm.MD5, b"")]
    )
    nonce = "obMatJos2AAAAxyz"
    core.handle_datagram(
        answer(
            first,
            stun.Attribute(AttributeType.REALM, REALM.encode()),
            stun.Attribute(AttributeType.NONCE, nonce.encode()),
            stun.Attribute(AttributeType.PASSWORD_ALGORITHMS, offered),
            key=None,
            error=(401, "Unauthorized"),
        ),
        SERVER,
        0.0,
    )
    raw = one_raw(core)
    retry = stun.decode(raw)
    assert retry.get(AttributeType.PASSWORD_ALGORITHMS) == offered
    assert retry.get(AttributeType.PASSWORD_ALGORITHM) == stun.encode_password_algorithm(
        stun.PasswordAlgorithm.MD5
    )
    stun.verify_integrity(raw, KEY)


def test_sha256_password_algorithm_when_md5_is_not_offered() -> None:
    core = TurnClientCore(SERVER, USER, PASSWORD)
    core.allocate(0.0)
    offered = stun.encode_password_algorithms([(stun.PasswordAlgorithm.SHA256, b"")])
    core.handle_datagram(
        answer(
            one(core),
            stun.Attribute(AttributeType.REALM, REALM.encode()),
            stun.Attribute(AttributeType.NONCE, b"obMatJos2xyz"),
            stun.Attribute(AttributeType.PASSWORD_ALGORITHMS, offered),
            key=None,
            error=(401, "Unauthorized"),
        ),
        SERVER,
        0.0,
    )
    raw = one_raw(core)
    stun.verify_integrity(
        raw, stun.long_term_key(USER, REALM, PASSWORD, stun.PasswordAlgorithm.SHA256)
    )


def test_forged_or_stray_answers_are_ignored() -> None:
    core = TurnClientCore(SERVER, USER, PASSWORD)
    core.allocate(0.0)
    core.handle_datagram(challenge(one(core)), SERVER, 0.0)
    request = one(core)
    good = allocate_success(request)
    core.handle_datagram(good, ("192.0.2.99", 3478), 0.0)  # not from the server
    forged = stun.encode(stun.decode(good), integrity_key=b"not the key", fingerprint=True)
    core.handle_datagram(forged, SERVER, 0.0)
    unsigned = stun.encode(stun.decode(good), integrity_key=None)
    core.handle_datagram(unsigned[:-8], SERVER, 0.0)  # drop FINGERPRINT: length mismatch
    core.handle_datagram(b"\x00\x01garbage", SERVER, 0.0)
    core.handle_datagram(b"\xff" * 30, SERVER, 0.0)
    other = stun.Message(Method.ALLOCATE, MessageClass.SUCCESS, stun.new_transaction_id())
    core.handle_datagram(stun.encode(other, integrity_key=KEY), SERVER, 0.0)
    assert events(core) == []
    assert core.state == State.ALLOCATING
    assert list(core.ignored) == [
        "a datagram from 192.0.2.99:3478, not the server",
        "an answer with a bad MESSAGE-INTEGRITY: MESSAGE-INTEGRITY does not match",
        "malformed STUN message: message length 64 does not match the 56 bytes after the header",
        "neither STUN nor ChannelData",
        "neither STUN nor ChannelData",
        "an answer to no pending request",
    ]
    core.handle_datagram(good, SERVER, 0.0)
    assert [type(e) for e in events(core)] == [Allocated]


def test_allocate_success_without_relayed_address_is_a_response_error() -> None:
    core = TurnClientCore(SERVER, USER, PASSWORD)
    core.allocate(0.0)
    core.handle_datagram(challenge(one(core)), SERVER, 0.0)
    core.handle_datagram(answer(one(core), lifetime(600)), SERVER, 0.0)
    (event,) = events(core)
    assert isinstance(event, TransactionFailed)
    assert isinstance(event.error, StunResponseError)
    assert str(event.error) == "the Allocate success response has no XOR-RELAYED-ADDRESS"
    assert core.state == State.FAILED


@pytest.mark.parametrize(
    ("code", "reason"),
    [(486, "Allocation Quota Reached"), (442, "Unsupported Transport Protocol"), (508, "Full")],
)
def test_allocate_error_responses(code: int, reason: str) -> None:
    core = TurnClientCore(SERVER, USER, PASSWORD)
    tid = core.allocate(0.0)
    core.handle_datagram(challenge(one(core)), SERVER, 0.0)
    core.handle_datagram(answer(one(core), error=(code, reason)), SERVER, 0.0)
    (event,) = events(core)
    assert isinstance(event, TransactionFailed)
    assert event.transaction_id == tid
    assert isinstance(event.error, TurnError)
    assert (event.error.code, event.error.reason, event.error.method) == (
        code,
        reason,
        Method.ALLOCATE,
    )


def test_403_on_create_permission() -> None:
    core = allocated()
    tid = core.create_permission(["127.0.0.1"], 1.0)
    core.handle_datagram(answer(one(core), error=(403, "Forbidden")), SERVER, 1.0)
    (event,) = events(core)
    assert isinstance(event, TransactionFailed)
    assert event.transaction_id == tid
    assert isinstance(event.error, TurnError)
    assert str(event.error) == "TURN CREATE-PERMISSION error 403: Forbidden"
    assert core.permissions == {}
    assert core.state == State.ALLOCATED


def test_error_response_without_error_code() -> None:
    core = allocated()
    core.refresh(1.0)
    request = one(core)
    bare = stun.Message(Method.REFRESH, MessageClass.ERROR, request.transaction_id)
    core.handle_datagram(stun.encode(bare, integrity_key=KEY), SERVER, 1.0)
    (event,) = events(core)
    assert isinstance(event, TransactionFailed)
    assert isinstance(event.error, StunResponseError)
    assert str(event.error) == "the server's REFRESH error response has no ERROR-CODE"


def test_requests_before_allocation_are_state_errors() -> None:
    core = TurnClientCore(SERVER, USER, PASSWORD)
    with pytest.raises(TurnStateError, match=r"^create_permission\(\) needs an allocation"):
        core.create_permission([PEER[0]], 0.0)
    with pytest.raises(TurnStateError, match=r"^send\(\) needs an allocation; this client is new"):
        core.send(PEER, b"x")
    core.allocate(0.0)
    with pytest.raises(TurnStateError, match="allocate\\(\\) is for a new client"):
        core.allocate(0.0)


# --- retransmissions and timers ------------------------------------------------------------------


def test_requests_are_retransmitted_then_time_out() -> None:
    core = TurnClientCore(SERVER, USER, PASSWORD, rto=1.0, retransmissions=3, rm=4)
    tid = core.allocate(0.0)
    first = one_raw(core)
    assert core.get_timer() == 1.0
    core.handle_timeout(0.5)
    assert core.datagrams_to_send() == []
    core.handle_timeout(1.0)
    assert core.datagrams_to_send() == [first]  # same bytes, same transaction
    assert core.get_timer() == 3.0
    core.handle_timeout(3.0)
    assert core.datagrams_to_send() == [first]
    assert core.get_timer() == 7.0  # Rm * RTO after the last one
    core.handle_timeout(7.0)
    (event,) = events(core)
    assert isinstance(event, TransactionFailed)
    assert event.transaction_id == tid
    assert isinstance(event.error, StunTimeout)
    assert event.error.requests_sent == 3
    assert core.state == State.FAILED
    assert core.get_timer() is None


def test_refresh_margin() -> None:
    assert refresh_margin(600) == 60
    assert refresh_margin(30) == 15


def test_automatic_refresh_before_expiry() -> None:
    core = allocated(now=100.0, seconds=600)
    assert core.expires_at == 700.0
    assert core.get_timer() == 640.0
    core.handle_timeout(639.9)
    assert core.datagrams_to_send() == []
    core.handle_timeout(640.0)
    raw = one_raw(core)
    refresh = stun.decode(raw)
    assert refresh.method == Method.REFRESH
    assert refresh.get(AttributeType.LIFETIME) == (600).to_bytes(4, "big")
    stun.verify_integrity(raw, KEY)
    core.handle_datagram(answer(refresh, lifetime(300)), SERVER, 641.0)
    assert events(core) == [Refreshed(refresh.transaction_id, 300)]
    assert (core.lifetime, core.expires_at) == (300, 941.0)
    assert core.get_timer() == 941.0 - 60


def test_allocation_expires_without_a_refresh_answer() -> None:
    core = allocated(now=0.0, seconds=100, rto=1.0, retransmissions=2, rm=2)
    assert core.get_timer() == 50.0  # half of a short lifetime
    core.handle_timeout(50.0)
    refresh = one_raw(core)
    core.handle_timeout(51.0)
    assert core.datagrams_to_send() == [refresh]
    core.handle_timeout(53.0)
    (event,) = events(core)
    assert isinstance(event, TransactionFailed)
    assert isinstance(event.error, StunTimeout)
    assert core.get_timer() == 100.0
    core.handle_timeout(100.0)
    assert events(core) == [AllocationExpired()]
    assert core.state == State.FAILED
    with pytest.raises(TurnStateError, match="needs an allocation; this client is failed"):
        core.send(PEER, b"late")


def test_permissions_and_channels_are_renewed() -> None:
    core = with_permission(now=0.0)
    assert core.permissions == {PEER[0]: 240.0}
    core.channel_bind(PEER, 10.0)
    core.handle_datagram(answer(one(core)), SERVER, 10.0)
    events(core)
    assert core.permissions == {PEER[0]: 250.0}  # the binding refreshed the permission
    core.handle_timeout(250.0)
    renewal = one(core)
    assert renewal.method == Method.CREATE_PERMISSION
    assert renewal.address(AttributeType.XOR_PEER_ADDRESS) == (PEER[0], 0)
    core.handle_datagram(answer(renewal), SERVER, 250.0)
    events(core)
    assert core.permissions == {PEER[0]: 490.0}
    core.handle_timeout(550.0)
    kinds = sorted(stun.decode(d).method for d in core.datagrams_to_send())
    assert kinds == [Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND]


# --- close ---------------------------------------------------------------------------------------


def test_close_deletes_with_lifetime_zero() -> None:
    core = with_permission()
    tid = core.close(5.0)
    request = one(core)
    assert request.method == Method.REFRESH
    assert request.get(AttributeType.LIFETIME) == b"\x00\x00\x00\x00"
    assert core.state == State.CLOSING
    core.handle_datagram(answer(request, lifetime(0)), SERVER, 5.0)
    assert events(core) == [Deallocated(tid)]
    assert core.state == State.CLOSED
    assert core.permissions == {}
    assert core.get_timer() is None


def test_close_answered_437_counts_as_deleted() -> None:
    core = allocated()
    tid = core.close(5.0)
    core.handle_datagram(answer(one(core), error=(437, "Allocation Mismatch")), SERVER, 5.0)
    assert events(core) == [Deallocated(tid)]
    assert core.state == State.CLOSED


# --- data ----------------------------------------------------------------------------------------


def test_send_without_permission_is_refused() -> None:
    core = allocated()
    with pytest.raises(TurnStateError, match=r"^no permission for 203\.0\.113\.5: call create"):
        core.send(PEER, b"hi")


def test_peer_of_the_wrong_family_is_refused() -> None:
    core = allocated()
    with pytest.raises(TurnStateError, match=r"^peer ::1 is not of the relayed address's family"):
        core.create_permission(["::1"], 0.0)
    with pytest.raises(TurnStateError, match=r"^not an IP address: 'peer\.example'"):
        core.create_permission(["peer.example"], 0.0)


def test_send_indication_then_channel_data() -> None:
    core = with_permission()
    datagram = core.send(PEER, b"hello")
    indication = stun.decode(datagram)
    assert (indication.method, indication.message_class) == (Method.SEND, MessageClass.INDICATION)
    assert indication.address(AttributeType.XOR_PEER_ADDRESS) == PEER
    assert indication.get(AttributeType.DATA) == b"hello"
    assert indication.get(AttributeType.MESSAGE_INTEGRITY) is None
    tid, channel = core.channel_bind(PEER, 1.0)
    assert channel == CHANNEL_MIN
    request = one(core)
    assert request.get(AttributeType.CHANNEL_NUMBER) == b"\x40\x00\x00\x00"
    assert request.address(AttributeType.XOR_PEER_ADDRESS) == PEER
    assert stun.decode(core.send(PEER, b"x")).method == Method.SEND  # not bound yet
    core.handle_datagram(answer(request), SERVER, 1.0)
    assert events(core) == [ChannelBound(tid, PEER, CHANNEL_MIN)]
    assert core.send(PEER, b"hello") == b"\x40\x00\x00\x05hello"
    # binding again renews the same channel; another peer gets the next number
    assert core.channel_bind(PEER, 2.0)[1] == CHANNEL_MIN
    assert core.channel_bind(("203.0.113.6", 1), 2.0)[1] == CHANNEL_MIN + 1


def test_data_indication_and_channel_data_are_received() -> None:
    core = with_permission()
    indication = stun.Message(Method.DATA, MessageClass.INDICATION, stun.new_transaction_id())
    indication = stun.Message(
        Method.DATA,
        MessageClass.INDICATION,
        indication.transaction_id,
        (
            xor(AttributeType.XOR_PEER_ADDRESS, PEER, indication),
            stun.Attribute(AttributeType.DATA, b"from peer"),
        ),
    )
    core.handle_datagram(stun.encode(indication, fingerprint=True), SERVER, 1.0)
    assert events(core) == [DataReceived(PEER, b"from peer")]
    core.channel_bind(PEER, 1.0)
    core.handle_datagram(answer(one(core)), SERVER, 1.0)
    events(core)
    core.handle_datagram(b"\x40\x00\x00\x03abc\x00", SERVER, 1.0)  # padded
    core.handle_datagram(b"\x40\x00\x00\x02ab", SERVER, 1.0)  # not padded
    assert events(core) == [
        DataReceived(PEER, b"abc", CHANNEL_MIN),
        DataReceived(PEER, b"ab", CHANNEL_MIN),
    ]
    core.handle_datagram(b"\x40\x01\x00\x01z", SERVER, 1.0)
    core.handle_datagram(b"\x40\x00\x00\x09abc", SERVER, 1.0)
    no_data = stun.Message(Method.DATA, MessageClass.INDICATION, stun.new_transaction_id())
    core.handle_datagram(stun.encode(no_data), SERVER, 1.0)
    assert events(core) == []
    assert list(core.ignored)[-3:] == [
        "ChannelData on unbound channel 0x4001",
        "malformed ChannelData: ChannelData announces 9 bytes but carries 3",
        "a Data indication without XOR-PEER-ADDRESS and DATA",
    ]


# --- ChannelData framing -------------------------------------------------------------------------


def test_channel_data_framing() -> None:
    assert encode_channel_data(0x4001, b"abcde") == b"\x40\x01\x00\x05abcde"
    assert encode_channel_data(0x4001, b"abcde", pad=True) == b"\x40\x01\x00\x05abcde\0\0\0"
    assert encode_channel_data(0x4FFF, b"", pad=True) == b"\x4f\xff\x00\x00"
    assert decode_channel_data(b"\x40\x01\x00\x05abcde\0\0\0") == (0x4001, b"abcde")
    assert is_channel_data(b"\x40\x00")
    assert is_channel_data(b"\x4f")
    assert not is_channel_data(b"\x00\x01")
    assert not is_channel_data(b"\x50")
    assert not is_channel_data(b"")


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"\x40\x00\x00", "ChannelData of 3 bytes has no 4-byte header"),
        (b"\x50\x00\x00\x00", "channel number 0x5000 is outside 0x4000-0x4FFF"),
        (b"\x3f\xff\x00\x00", "channel number 0x3fff is outside 0x4000-0x4FFF"),
        (b"\x40\x00\x00\x04abc", "ChannelData announces 4 bytes but carries 3"),
        (
            b"\x40\x00\x00\x01a\0\0\0\0",
            "ChannelData has 4 bytes after its 1 data bytes, more than the padding",
        ),
        (
            b"\x40\x00\x00\x01a\0\0",
            "ChannelData has 2 bytes after its 1 data bytes, more than the padding",
        ),
    ],
)
def test_malformed_channel_data(datagram: bytes, reason: str) -> None:
    with pytest.raises(stun.StunDecodeError) as caught:
        decode_channel_data(datagram)
    assert caught.value.reason == reason


@pytest.mark.parametrize("channel", [0x3FFF, 0x5000])
def test_channel_out_of_range_is_not_encoded(channel: int) -> None:
    with pytest.raises(stun.StunError, match="is outside 0x4000-0x4FFF"):
        encode_channel_data(channel, b"x")


@given(
    channel=st.integers(0x4000, 0x4FFF),
    data=st.binary(max_size=300),
    pad=st.booleans(),
)
def test_channel_data_round_trip(channel: int, data: bytes, pad: bool) -> None:
    datagram = encode_channel_data(channel, data, pad=pad)
    assert len(datagram) % 4 == 0 or not pad
    assert decode_channel_data(datagram) == (channel, data)


@given(st.binary(max_size=64))
def test_arbitrary_datagrams_never_break_the_core(data: bytes) -> None:
    core = with_permission()
    core.handle_datagram(data, SERVER, 1.0)
    assert core.state == State.ALLOCATED
    for event in events(core):
        assert isinstance(event, DataReceived)


# --- the asyncio shell against our TURN server ---------------------------------------------------


def test_turn_client_through_our_server_on_loopback() -> None:
    async def main() -> None:
        from stoq.nat.turn_server import TurnServer

        server = await TurnServer.start(
            [("127.0.0.1", 0)], realm=REALM, users={USER: PASSWORD}, allow_loopback_peers=True
        )
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            with pytest.raises(TurnError) as caught:
                await TurnClient.allocate(server.addresses[0], USER, "wrong", rto=0.1, timeout=5)
            assert caught.value.code == 401
            async with await TurnClient.allocate(
                server.addresses[0], USER, PASSWORD, local=("127.0.0.1", 0), rto=0.1, timeout=5
            ) as client:
                assert client.relayed_address[0] == "127.0.0.1"
                assert client.mapped_address == client.local_address
                where = peer.getsockname()
                with pytest.raises(TurnStateError, match=r"^no permission for 127\.0\.0\.1"):
                    await client.send(where, b"too early")
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
                granted = await client.refresh(300)
                assert granted == client.lifetime
                assert granted >= 300  # RFC 8656 §7.2: a server may grant its default instead
            assert client.core.state == State.CLOSED
            with pytest.raises(TurnStateError, match="closed"):
                await client.receive()
        finally:
            peer.close()
            await server.close()

    asyncio.run(main())
