"""The STUN server (sans-IO core and asyncio shell) and client, on loopback.

The RFC 5780 server listens on 127.0.0.1 and 127.0.0.2 (every 127.x.y.z is local on Linux),
each with two ports. The core's decisions are checked one by one, with the exact error codes
and reasons; the client's retransmission schedule is checked on a virtual clock.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stoq.errors import StoqError
from stoq.nat import stun
from stoq.nat.stun import Attribute, AttributeType, Message, MessageClass, Method
from stoq.nat.stun_client import (
    BindingResult,
    BindingTransaction,
    Credentials,
    StunErrorResponse,
    StunResponseError,
    StunTimeout,
    binding,
    format_address,
    normalize_address,
    parse_address,
    run_transaction,
)
from stoq.nat.stun_server import (
    DEFAULT_SOFTWARE,
    Dropped,
    RateLimit,
    Reply,
    Rfc5780Addresses,
    StunServer,
    StunServerCore,
    StunServerError,
)

VECTORS = Path(__file__).parent / "data" / "stun" / "stun_test_vectors.json"
A1, P1, A2, P2 = "192.0.2.1", 3478, "192.0.2.2", 3479
PRIMARY = (A1, P1)
ALTERNATE = (A2, P2)
CLIENT = ("203.0.113.5", 40000)
TXID = bytes(range(12))
WILDCARD = "0.0.0.0"  # noqa: S104 - a wildcard listener is what some tests are about


def request(*attributes: Attribute, method: int = Method.BINDING, txid: bytes = TXID) -> Message:
    return Message(method, MessageClass.REQUEST, txid, attributes)


def wire(message: Message, **keys: bytes | bool) -> bytes:
    return stun.encode(message, **keys)  # type: ignore[arg-type]


def reply_of(decision: Reply | Dropped) -> tuple[Reply, Message]:
    assert isinstance(decision, Reply), decision
    stun.verify_fingerprint(decision.data)
    return decision, stun.decode(decision.data)


def error_of(decision: Reply | Dropped) -> tuple[int, str]:
    _, message = reply_of(decision)
    assert message.message_class == MessageClass.ERROR
    assert message.transaction_id == TXID
    error = message.error()
    assert error is not None
    return error


def rfc5780_core(**kwargs: object) -> StunServerCore:
    return StunServerCore(rfc5780=Rfc5780Addresses(PRIMARY, ALTERNATE), **kwargs)  # type: ignore[arg-type]


# --- the sans-IO core: successes ---------------------------------------------------------------


def test_binding_success_carries_the_source_origin_software_and_fingerprint() -> None:
    decision = StunServerCore().handle(wire(request()), CLIENT, PRIMARY)
    reply, message = reply_of(decision)
    assert (reply.destination, reply.via) == (CLIENT, PRIMARY)
    assert message.method == Method.BINDING
    assert message.message_class == MessageClass.SUCCESS
    assert message.transaction_id == TXID
    assert [a.type for a in message.attributes] == [
        AttributeType.XOR_MAPPED_ADDRESS,
        AttributeType.RESPONSE_ORIGIN,
        AttributeType.SOFTWARE,
        AttributeType.FINGERPRINT,
    ]
    assert message.xor_mapped_address() == CLIENT
    assert message.response_origin() == PRIMARY
    assert message.software() == DEFAULT_SOFTWARE
    assert message.get(AttributeType.MAPPED_ADDRESS) is None  # only the XOR form is sent


def test_ipv6_sources_are_mapped_as_ipv6_and_software_can_be_left_out() -> None:
    source = ("2001:db8::7", 50123)
    core = StunServerCore(software=None)
    _, message = reply_of(core.handle(wire(request()), source, ("2001:db8::1", 3478)))
    assert message.xor_mapped_address() == source
    assert message.software() is None


def test_a_wildcard_listener_sends_no_response_origin() -> None:
    _, message = reply_of(StunServerCore().handle(wire(request()), CLIENT, (WILDCARD, 3478)))
    assert message.response_origin() is None
    assert message.xor_mapped_address() == CLIENT


def test_comprehension_optional_unknowns_and_ice_attributes_are_accepted() -> None:
    message = request(
        Attribute(0x8FFF, b"whatever"),
        Attribute(AttributeType.PRIORITY, bytes.fromhex("6e0001ff")),
        Attribute(AttributeType.USE_CANDIDATE, b""),
        Attribute(AttributeType.ICE_CONTROLLING, bytes(8)),
    )
    _, answer = reply_of(StunServerCore().handle(wire(message, fingerprint=True), CLIENT, PRIMARY))
    assert answer.message_class == MessageClass.SUCCESS


@pytest.mark.parametrize(
    ("local", "other"),
    [((A1, P1), (A2, P2)), ((A1, P2), (A2, P1)), ((A2, P1), (A1, P2)), ((A2, P2), (A1, P1))],
)
def test_other_address_has_the_other_ip_and_the_other_port(
    local: tuple[str, int], other: tuple[str, int]
) -> None:
    reply, message = reply_of(rfc5780_core().handle(wire(request()), CLIENT, local))
    assert message.other_address() == other
    assert message.response_origin() == local == reply.via


@pytest.mark.parametrize(
    ("change_ip", "change_port", "via"),
    [
        (False, False, (A1, P1)),
        (False, True, (A1, P2)),
        (True, False, (A2, P1)),
        (True, True, (A2, P2)),
    ],
)
def test_change_request_answers_from_the_changed_address(
    change_ip: bool, change_port: bool, via: tuple[str, int]
) -> None:
    change = Attribute(
        AttributeType.CHANGE_REQUEST, stun.encode_change_request(change_ip, change_port)
    )
    reply, message = reply_of(rfc5780_core().handle(wire(request(change)), CLIENT, PRIMARY))
    assert reply.via == via
    assert reply.destination == CLIENT
    assert message.response_origin() == via
    assert message.other_address() == ALTERNATE  # relative to where the request arrived
    assert message.xor_mapped_address() == CLIENT


def test_response_port_redirects_the_answer_to_that_port_of_the_source_ip() -> None:
    port = Attribute(AttributeType.RESPONSE_PORT, (5000).to_bytes(2, "big") + bytes(2))
    reply, message = reply_of(StunServerCore().handle(wire(request(port)), CLIENT, PRIMARY))
    assert reply.destination == (CLIENT[0], 5000)
    assert message.xor_mapped_address() == CLIENT


# --- the sans-IO core: errors and drops ---------------------------------------------------------


def test_unknown_comprehension_required_attributes_get_420_listing_them_in_order() -> None:
    message = request(
        Attribute(0x7777, b"abcd"),
        Attribute(AttributeType.PADDING, bytes(8)),
        Attribute(0x7777, b"again"),
        Attribute(0x8888, b"optional"),
    )
    decision = StunServerCore().handle(wire(message), CLIENT, PRIMARY)
    assert error_of(decision) == (420, "Unknown Attribute")
    reply, answer = reply_of(decision)
    assert answer.unknown_attributes() == (0x7777, AttributeType.PADDING)
    assert answer.software() == DEFAULT_SOFTWARE
    assert (reply.destination, reply.via) == (CLIENT, PRIMARY)


def test_change_request_without_an_alternate_address_is_unknown() -> None:
    change = Attribute(AttributeType.CHANGE_REQUEST, stun.encode_change_request(True, True))
    decision = StunServerCore().handle(wire(request(change)), CLIENT, PRIMARY)
    assert error_of(decision) == (420, "Unknown Attribute")
    assert reply_of(decision)[1].unknown_attributes() == (AttributeType.CHANGE_REQUEST,)


@pytest.mark.parametrize(
    ("attribute", "reason"),
    [
        (
            Attribute(AttributeType.CHANGE_REQUEST, b"\x00\x06"),
            "Bad Request: CHANGE-REQUEST must be 4 bytes",
        ),
        (
            Attribute(AttributeType.RESPONSE_PORT, bytes(4)),
            "Bad Request: RESPONSE-PORT must be 4 bytes naming a port other than 0",
        ),
        (
            Attribute(AttributeType.RESPONSE_PORT, b"\x13\x88"),
            "Bad Request: RESPONSE-PORT must be 4 bytes naming a port other than 0",
        ),
    ],
)
def test_bad_attribute_values_get_400(attribute: Attribute, reason: str) -> None:
    decision = rfc5780_core().handle(wire(request(attribute)), CLIENT, PRIMARY)
    assert error_of(decision) == (400, reason)


def test_a_method_other_than_binding_gets_400() -> None:
    decision = StunServerCore().handle(wire(request(method=Method.ALLOCATE)), CLIENT, PRIMARY)
    assert error_of(decision) == (400, "Bad Request: method 0x003 is not supported (only Binding)")
    assert reply_of(decision)[1].method == Method.ALLOCATE


def test_a_well_framed_request_whose_attributes_do_not_parse_gets_400() -> None:
    # Header says 8 bytes follow; the one TLV claims 8 value bytes but only 4 are left.
    data = bytes.fromhex("0001 0008 2112a442") + TXID + bytes.fromhex("7777 0008 61626364")
    decision = StunServerCore().handle(data, CLIENT, PRIMARY)
    assert error_of(decision) == (
        400,
        "Bad Request: attribute 0x7777 at offset 20 overruns the message: 8 value bytes, 4 left",
    )


def test_an_attribute_after_fingerprint_gets_400() -> None:
    data = wire(request(), fingerprint=True)
    data = (
        data[:2]
        + (len(data) - 20 + 8).to_bytes(2, "big")
        + data[4:]
        + bytes.fromhex("8022 0004 61626364")
    )
    assert error_of(StunServerCore().handle(data, CLIENT, PRIMARY)) == (
        400,
        "Bad Request: SOFTWARE (0x8022) after FINGERPRINT",
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not a STUN message"),
        (b"hello, server", "not a STUN message"),
        # A QUIC long header (first byte 0xC0) that happens to carry the cookie.
        (b"\xc0\x00\x00\x01\x21\x12\xa4\x42" + bytes(12), "not a STUN message"),
        (b"\x00\x01\x00\x00\x21\x12\xa4\x43" + bytes(12), "not a STUN message"),
        (
            b"\x00\x01\x00\x04\x21\x12\xa4\x42" + bytes(12),
            "malformed STUN message: message length 4 does not match the 0 bytes after the header",
        ),
        (
            b"\x00\x01\x00\x02\x21\x12\xa4\x42" + bytes(14),
            "malformed STUN message: message length 2 is not a multiple of 4",
        ),
        (
            # A well-framed *indication* with an overrunning TLV: not answered.
            bytes.fromhex("0011 0004 2112a442") + TXID + bytes.fromhex("7777 0008"),
            "malformed STUN message: attribute 0x7777 at offset 20 overruns the message: "
            "8 value bytes, 0 left",
        ),
    ],
)
def test_what_is_not_a_well_framed_stun_request_is_dropped(data: bytes, reason: str) -> None:
    core = StunServerCore()
    assert core.handle(data, CLIENT, PRIMARY) == Dropped(reason)
    assert core.counts == {"dropped": 1}


@pytest.mark.parametrize(
    ("message_class", "reason"),
    [
        (MessageClass.INDICATION, "an indication (this server takes none)"),
        (MessageClass.SUCCESS, "a response (this server sends no requests)"),
        (MessageClass.ERROR, "a response (this server sends no requests)"),
    ],
)
def test_indications_and_responses_are_ignored(message_class: MessageClass, reason: str) -> None:
    message = Message(Method.BINDING, message_class, TXID, ())
    assert StunServerCore().handle(wire(message), CLIENT, PRIMARY) == Dropped(reason)


def test_a_wrong_fingerprint_is_dropped() -> None:
    data = bytearray(wire(request(Attribute(AttributeType.SOFTWARE, b"abcd")), fingerprint=True))
    data[-1] ^= 0x01
    assert StunServerCore().handle(bytes(data), CLIENT, PRIMARY) == Dropped("wrong FINGERPRINT")


def test_counts_tell_how_datagrams_ended() -> None:
    core = StunServerCore()
    core.handle(wire(request()), CLIENT, PRIMARY)
    core.handle(wire(request()), CLIENT, PRIMARY)
    core.handle(wire(request(Attribute(0x7777, b""))), CLIENT, PRIMARY)
    core.handle(b"junk", CLIENT, PRIMARY)
    assert core.counts == {"success": 2, "error 420": 1, "dropped": 1}


# --- the sans-IO core: short-term credentials -----------------------------------------------------

USER, PASSWORD = "alice", "correct horse"


def signed(message: Message, password: str = PASSWORD, *, sha256: bool = False) -> bytes:
    key = stun.short_term_key(password)
    if sha256:
        return stun.encode(message, integrity_sha256_key=key, fingerprint=True)
    return stun.encode(message, integrity_key=key, fingerprint=True)


def authenticating_core() -> StunServerCore:
    return StunServerCore(credentials={USER: PASSWORD})


USERNAME = Attribute(AttributeType.USERNAME, USER.encode())


@pytest.mark.parametrize("sha256", [False, True])
def test_an_authenticated_request_gets_an_answer_signed_the_same_way(sha256: bool) -> None:
    data = signed(request(USERNAME), sha256=sha256)
    reply, message = reply_of(authenticating_core().handle(data, CLIENT, PRIMARY))
    assert message.message_class == MessageClass.SUCCESS
    key = stun.short_term_key(PASSWORD)
    if sha256:
        stun.verify_integrity_sha256(reply.data, key)
        assert message.get(AttributeType.MESSAGE_INTEGRITY) is None
    else:
        stun.verify_integrity(reply.data, key)
        assert message.get(AttributeType.MESSAGE_INTEGRITY_SHA256) is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            wire(request(USERNAME), fingerprint=True),
            (400, "Bad Request: USERNAME and MESSAGE-INTEGRITY are required"),
        ),
        (
            signed(request()),
            (400, "Bad Request: USERNAME and MESSAGE-INTEGRITY are required"),
        ),
        (
            signed(request(Attribute(AttributeType.USERNAME, b"mallory"))),
            (401, "Unauthenticated: unknown USERNAME"),
        ),
        (
            signed(request(Attribute(AttributeType.USERNAME, b"\xff\xfe"))),
            (401, "Unauthenticated: unknown USERNAME"),
        ),
        (
            signed(request(USERNAME), "wrong password"),
            (401, "Unauthenticated: wrong MESSAGE-INTEGRITY"),
        ),
        (
            signed(request(USERNAME), "wrong password", sha256=True),
            (401, "Unauthenticated: wrong MESSAGE-INTEGRITY-SHA256"),
        ),
    ],
)
def test_requests_that_do_not_authenticate_get_400_or_401_unsigned(
    data: bytes, expected: tuple[int, str]
) -> None:
    decision = authenticating_core().handle(data, CLIENT, PRIMARY)
    assert error_of(decision) == expected
    _, message = reply_of(decision)
    assert message.get(AttributeType.MESSAGE_INTEGRITY) is None
    assert message.get(AttributeType.MESSAGE_INTEGRITY_SHA256) is None


def test_a_420_to_an_authenticated_request_is_signed() -> None:
    data = signed(request(USERNAME, Attribute(0x7777, b"x")))
    decision = authenticating_core().handle(data, CLIENT, PRIMARY)
    assert error_of(decision) == (420, "Unknown Attribute")
    assert isinstance(decision, Reply)
    stun.verify_integrity(decision.data, stun.short_term_key(PASSWORD))


def test_the_rfc_5769_sample_request_is_answered_and_signed() -> None:
    vector = next(
        v
        for v in json.loads(VECTORS.read_text())["vectors"]
        if v["name"] == "rfc5769-2.1-sample-request"
    )
    core = StunServerCore(credentials={vector["username"]: vector["password"]})
    decision = core.handle(bytes.fromhex(vector["hex"]), CLIENT, PRIMARY)
    reply, message = reply_of(decision)
    assert message.message_class == MessageClass.SUCCESS
    assert message.transaction_id == bytes.fromhex(vector["transaction_id"])
    assert message.xor_mapped_address() == CLIENT
    stun.verify_integrity(reply.data, bytes.fromhex(vector["hmac_key_hex"]))


# --- the sans-IO core: rate limit -----------------------------------------------------------------


def test_the_rate_limit_drops_a_source_over_budget_and_refills_with_time() -> None:
    core = StunServerCore(rate_limit=RateLimit(per_second=1.0, burst=2))
    data = wire(request())
    assert isinstance(core.handle(data, CLIENT, PRIMARY, now=100.0), Reply)
    assert isinstance(core.handle(data, CLIENT, PRIMARY, now=100.0), Reply)
    assert core.handle(data, CLIENT, PRIMARY, now=100.5) == Dropped(
        "rate limit exceeded by 203.0.113.5"
    )
    other = ("203.0.113.6", 40000)
    assert isinstance(core.handle(data, other, PRIMARY, now=100.5), Reply)
    assert isinstance(core.handle(data, CLIENT, PRIMARY, now=101.0), Reply)
    assert core.handle(data, CLIENT, PRIMARY, now=101.0) == Dropped(
        "rate limit exceeded by 203.0.113.5"
    )


def test_the_rate_limit_forgets_the_least_recent_source_beyond_its_table_size() -> None:
    core = StunServerCore(rate_limit=RateLimit(per_second=0.001, burst=1, max_sources=2))
    data = wire(request())
    for host in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        assert isinstance(core.handle(data, (host, 1), PRIMARY, now=0.0), Reply)
    # 10.0.0.1 was forgotten, so it has a full bucket again; 10.0.0.3 is still remembered.
    assert isinstance(core.handle(data, ("10.0.0.1", 1), PRIMARY, now=0.0), Reply)
    assert core.handle(data, ("10.0.0.3", 1), PRIMARY, now=0.0) == Dropped(
        "rate limit exceeded by 10.0.0.3"
    )


def test_a_rate_limit_must_be_positive() -> None:
    with pytest.raises(StunServerError, match="per_second > 0, burst >= 1"):
        RateLimit(per_second=0, burst=1)


# --- the sans-IO core: configuration ------------------------------------------------------------


@pytest.mark.parametrize(
    ("primary", "alternate", "message"),
    [
        ((A1, P1), (A1, P2), "another IP and another port"),
        ((A1, P1), (A2, P1), "another IP and another port"),
        ((A1, P1), ("2001:db8::1", P2), "same family"),
        ((WILDCARD, P1), (A2, P2), "wildcard address cannot be an OTHER-ADDRESS"),
    ],
)
def test_rfc5780_addresses_must_differ_in_ip_and_port(
    primary: tuple[str, int], alternate: tuple[str, int], message: str
) -> None:
    with pytest.raises(StunServerError, match=message):
        Rfc5780Addresses(primary, alternate)


def test_software_must_be_short() -> None:
    with pytest.raises(StunServerError, match="fewer than 128 characters"):
        StunServerCore(software="x" * 128)


# --- the sans-IO core: nothing crashes it -------------------------------------------------------

attribute_strategy = st.builds(
    Attribute,
    st.sampled_from([*AttributeType, 0x7777, 0x8777]).filter(
        lambda t: (
            t
            not in (
                AttributeType.MESSAGE_INTEGRITY,
                AttributeType.MESSAGE_INTEGRITY_SHA256,
                AttributeType.FINGERPRINT,
                AttributeType.RESPONSE_PORT,  # would aim answers at arbitrary local ports
            )
        )
    ),
    st.binary(max_size=24),
)
request_strategy = st.builds(
    lambda method, cls, txid, attrs, fp: stun.encode(
        Message(method, cls, txid, tuple(attrs)), fingerprint=fp
    ),
    st.sampled_from([Method.BINDING, Method.BINDING, Method.ALLOCATE, 0x0FFF]),
    st.sampled_from(list(MessageClass)),
    st.binary(min_size=12, max_size=12),
    st.lists(attribute_strategy, max_size=5),
    st.booleans(),
)
framed_strategy = st.builds(
    lambda first, txid, body: (
        first + len(body).to_bytes(2, "big") + stun.MAGIC_COOKIE.to_bytes(4, "big") + txid + body
    ),
    st.sampled_from([b"\x00\x01", b"\x00\x11", b"\x01\x01", b"\x00\x03"]),
    st.binary(min_size=12, max_size=12),
    st.binary(max_size=40).map(lambda b: b[: len(b) - len(b) % 4]),
)
datagram_strategy = st.one_of(st.binary(max_size=120), request_strategy, framed_strategy)


def _check_decision(data: bytes, decision: Reply | Dropped) -> None:
    if isinstance(decision, Dropped):
        return
    stun.verify_fingerprint(decision.data)
    message = stun.decode(decision.data)
    assert message.message_class in (MessageClass.SUCCESS, MessageClass.ERROR)
    assert message.transaction_id == data[8:20]


@settings(max_examples=400, deadline=None)
@given(datagram_strategy)
def test_the_core_decides_every_datagram_without_raising(data: bytes) -> None:
    for core in (StunServerCore(), rfc5780_core(), authenticating_core()):
        _check_decision(data, core.handle(data, CLIENT, PRIMARY))


# --- the client transaction, sans-IO ------------------------------------------------------------


def server_answer(
    transaction: BindingTransaction, *attributes: Attribute, fingerprint: bool = True
) -> bytes:
    message = Message(Method.BINDING, MessageClass.SUCCESS, transaction.transaction_id, attributes)
    return stun.encode(message, fingerprint=fingerprint)


def test_the_request_is_a_binding_request_with_change_request_software_and_fingerprint() -> None:
    transaction = BindingTransaction(PRIMARY, change_ip=True, software="probe")
    stun.verify_fingerprint(transaction.request)
    message = stun.decode(transaction.request)
    assert (message.method, message.message_class) == (Method.BINDING, MessageClass.REQUEST)
    assert message.transaction_id == transaction.transaction_id
    assert message.change_request() == (True, False)
    assert message.software() == "probe"


def test_retransmissions_follow_rfc_8489_on_a_virtual_clock() -> None:
    transaction = BindingTransaction(PRIMARY)  # RTO 0.5 s, Rc 7, Rm 16
    transaction.start(0.0)
    assert transaction.handle_timeout(0.2) is None  # not due yet
    sends = [0.0]
    for _ in range(6):
        now = transaction.deadline
        assert transaction.handle_timeout(now) == transaction.request
        sends.append(now)
    assert sends == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert transaction.requests_sent == 7
    assert transaction.deadline == 39.5  # 31.5 + Rm * RTO
    assert transaction.handle_timeout(39.4) is None
    with pytest.raises(StunTimeout) as caught:
        transaction.handle_timeout(39.5)
    assert caught.value.requests_sent == 7
    assert str(caught.value) == "STUN server 192.0.2.1:3478 did not answer (7 requests sent)"


def test_timeout_cuts_the_schedule_short() -> None:
    transaction = BindingTransaction(PRIMARY, rto=1.0, timeout=2.5)
    transaction.start(10.0)
    assert transaction.deadline == 11.0
    assert transaction.handle_timeout(11.0) == transaction.request
    assert transaction.deadline == 12.5  # 13.0 capped at start + timeout
    with pytest.raises(StunTimeout) as caught:
        transaction.handle_timeout(12.5)
    assert caught.value.requests_sent == 2


def test_stray_datagrams_are_ignored_and_the_answer_is_taken() -> None:
    transaction = BindingTransaction(PRIMARY, local=("10.0.0.9", 5555))
    transaction.start(0.0)
    mapped = stun.encode_xor_address("198.51.100.7", 61000, transaction.transaction_id)
    answer = server_answer(
        transaction,
        Attribute(AttributeType.XOR_MAPPED_ADDRESS, mapped),
        Attribute(AttributeType.RESPONSE_ORIGIN, stun.encode_address(A2, P2)),
        Attribute(AttributeType.OTHER_ADDRESS, stun.encode_address(A2, P2)),
        Attribute(AttributeType.SOFTWARE, b"srv"),
    )
    corrupted = bytearray(answer)
    corrupted[-1] ^= 0xFF
    other_transaction = bytearray(answer)
    other_transaction[8] ^= 0xFF
    request_copy = transaction.request
    strays = [
        b"not stun at all",
        bytes.fromhex("0101 0004 2112a442") + transaction.transaction_id,  # length mismatch
        bytes(other_transaction),
        request_copy,
        stun.encode(
            Message(Method.ALLOCATE, MessageClass.SUCCESS, transaction.transaction_id, ()),
            fingerprint=True,
        ),
        bytes(corrupted),
    ]
    for stray in strays:
        assert transaction.handle_datagram(stray, ("192.0.2.66", 1)) is None
    assert transaction.ignored == [
        "not a STUN message",
        "malformed STUN message: message length 4 does not match the 0 bytes after the header",
        "another transaction",
        "not a response",
        "a response to method 0x003, not Binding",
        "wrong FINGERPRINT",
    ]
    result = transaction.handle_datagram(answer, (A2, P2))
    assert result == BindingResult(
        mapped=("198.51.100.7", 61000),
        response_origin=(A2, P2),
        other_address=(A2, P2),
        source=(A2, P2),
        server=PRIMARY,
        local=("10.0.0.9", 5555),
        software="srv",
    )


def test_mapped_address_is_the_fallback_for_old_servers() -> None:
    transaction = BindingTransaction(PRIMARY)
    transaction.start(0.0)
    answer = server_answer(
        transaction,
        Attribute(AttributeType.MAPPED_ADDRESS, stun.encode_address("198.51.100.7", 1)),
        fingerprint=False,
    )
    result = transaction.handle_datagram(answer, PRIMARY)
    assert result is not None
    assert result.mapped == ("198.51.100.7", 1)
    assert result.other_address is None


def test_unusable_answers_raise_typed_errors() -> None:
    transaction = BindingTransaction(PRIMARY)
    transaction.start(0.0)
    with pytest.raises(StunResponseError, match="no XOR-MAPPED-ADDRESS nor MAPPED-ADDRESS"):
        transaction.handle_datagram(server_answer(transaction), PRIMARY)
    bad = server_answer(transaction, Attribute(AttributeType.XOR_MAPPED_ADDRESS, b"\x00\x09"))
    with pytest.raises(StunResponseError, match="XOR-MAPPED-ADDRESS does not decode"):
        transaction.handle_datagram(bad, PRIMARY)


def test_an_error_response_raises_with_code_reason_and_unknown_attributes() -> None:
    transaction = BindingTransaction(PRIMARY)
    transaction.start(0.0)
    message = Message(
        Method.BINDING,
        MessageClass.ERROR,
        transaction.transaction_id,
        (
            Attribute(AttributeType.ERROR_CODE, stun.encode_error_code(420, "Unknown Attribute")),
            Attribute(AttributeType.UNKNOWN_ATTRIBUTES, stun.encode_unknown_attributes([3, 38])),
        ),
    )
    with pytest.raises(StunErrorResponse) as caught:
        transaction.handle_datagram(stun.encode(message, fingerprint=True), PRIMARY)
    assert (caught.value.code, caught.value.reason) == (420, "Unknown Attribute")
    assert caught.value.unknown_attributes == (3, 38)
    assert (
        str(caught.value) == "STUN error 420: Unknown Attribute (unknown attributes 0x0003, 0x0026)"
    )
    assert isinstance(caught.value, StoqError)


def test_a_signed_request_takes_only_a_correctly_signed_success() -> None:
    credentials = Credentials(USER, PASSWORD)
    transaction = BindingTransaction(PRIMARY, credentials=credentials)
    transaction.start(0.0)
    sent = stun.decode(transaction.request)
    assert sent.username() == USER
    stun.verify_integrity(transaction.request, stun.short_term_key(PASSWORD))
    mapped = Attribute(
        AttributeType.XOR_MAPPED_ADDRESS,
        stun.encode_xor_address(*CLIENT, transaction.transaction_id),
    )
    answer = Message(Method.BINDING, MessageClass.SUCCESS, transaction.transaction_id, (mapped,))
    unsigned = stun.encode(answer, fingerprint=True)
    forged = stun.encode(answer, integrity_key=stun.short_term_key("guess"), fingerprint=True)
    good = stun.encode(answer, integrity_key=stun.short_term_key(PASSWORD), fingerprint=True)
    assert transaction.handle_datagram(unsigned, PRIMARY) is None
    assert transaction.handle_datagram(forged, PRIMARY) is None
    assert transaction.ignored == ["missing or wrong MESSAGE-INTEGRITY"] * 2
    result = transaction.handle_datagram(good, PRIMARY)
    assert result is not None
    assert result.mapped == CLIENT


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rto": 0}, "rto must be positive"),
        ({"retransmissions": 0}, "at least 1"),
        ({"rm": -1}, "rm must not be negative"),
        ({"timeout": 0}, "timeout must be positive"),
    ],
)
def test_transaction_parameters_are_checked(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BindingTransaction(PRIMARY, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:3478", ("127.0.0.1", 3478)),
        ("[::1]:0", ("::1", 0)),
        ("stun.example.org:19302", ("stun.example.org", 19302)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", "::1:3478", "[::1]3478", "host:99999", ":1", "h:x"])
def test_parse_address_refuses_malformed_text(text: str) -> None:
    with pytest.raises(ValueError, match="bad address"):
        parse_address(text)


def test_addresses_are_normalized_and_formatted() -> None:
    assert normalize_address(("::ffff:10.1.2.3", 7, 0, 0)) == ("10.1.2.3", 7)
    assert normalize_address(("fe80::1%lo", 7, 0, 1)) == ("fe80::1", 7)
    assert normalize_address(("2001:DB8:0::1", 7)) == ("2001:db8::1", 7)
    assert format_address(("2001:db8::1", 7)) == "[2001:db8::1]:7"
    assert format_address(("10.1.2.3", 7)) == "10.1.2.3:7"


# --- live, on loopback ----------------------------------------------------------------------------


def rfc5780_server() -> asyncio.Future[StunServer]:
    return asyncio.ensure_future(StunServer.start([("127.0.0.1", 0)], alternate=("127.0.0.2", 0)))


def test_the_rfc5780_server_listens_on_four_sockets_and_maps_the_client() -> None:
    async def main() -> None:
        async with await rfc5780_server() as server:
            (a1, p1), (_, p2), _, _ = server.addresses
            assert server.addresses == (
                ("127.0.0.1", p1),
                ("127.0.0.1", p2),
                ("127.0.0.2", p1),
                ("127.0.0.2", p2),
            )
            assert p1 != p2
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.0.1", 0))
                result = await binding((a1, p1), sock=sock, timeout=5)
                assert result.mapped == sock.getsockname()
                assert result.local == sock.getsockname()
            assert result.source == result.response_origin == result.server == (a1, p1)
            assert result.other_address == ("127.0.0.2", p2)
            assert result.software == DEFAULT_SOFTWARE
            assert server.internal_errors == 0

    asyncio.run(main())


@pytest.mark.parametrize(("change_ip", "change_port"), [(True, True), (True, False), (False, True)])
def test_change_request_answers_really_come_from_the_changed_address(
    change_ip: bool, change_port: bool
) -> None:
    async def main() -> None:
        async with await rfc5780_server() as server:
            (_, p1), (_, p2), _, _ = server.addresses
            for target in server.addresses:
                result = await binding(
                    target,
                    local=("127.0.0.1", 0),
                    change_ip=change_ip,
                    change_port=change_port,
                    timeout=5,
                )
                ip, port = target
                if change_ip:
                    ip = "127.0.0.2" if ip == "127.0.0.1" else "127.0.0.1"
                if change_port:
                    port = p2 if port == p1 else p1
                assert result.source == (ip, port)  # where the datagram actually came from
                assert result.response_origin == result.source
                assert result.mapped == result.local

    asyncio.run(main())


def test_a_plain_server_refuses_change_request_with_420() -> None:
    async def main() -> None:
        async with await StunServer.start([("127.0.0.1", 0)]) as server:
            with pytest.raises(StunErrorResponse) as caught:
                await binding(server.addresses[0], change_port=True, timeout=5)
            assert (caught.value.code, caught.value.reason) == (420, "Unknown Attribute")
            assert caught.value.unknown_attributes == (AttributeType.CHANGE_REQUEST,)
            result = await binding(server.addresses[0], timeout=5)
            assert result.other_address is None

    asyncio.run(main())


def test_live_short_term_credentials() -> None:
    async def main() -> None:
        async with await StunServer.start(
            [("127.0.0.1", 0)], credentials={USER: PASSWORD}
        ) as server:
            address = server.addresses[0]
            for sha256 in (False, True):
                result = await binding(
                    address, credentials=Credentials(USER, PASSWORD, sha256), timeout=5
                )
                assert result.mapped[0] == "127.0.0.1"
            with pytest.raises(StunErrorResponse) as caught:
                await binding(address, credentials=Credentials(USER, "nope"), timeout=5)
            assert (caught.value.code, caught.value.reason) == (
                401,
                "Unauthenticated: wrong MESSAGE-INTEGRITY",
            )
            with pytest.raises(StunErrorResponse) as caught:
                await binding(address, timeout=5)
            assert caught.value.code == 400

    asyncio.run(main())


def test_ipv6_and_dual_stack() -> None:
    async def main() -> None:
        try:
            server = await StunServer.start([("::1", 0), ("::", 0)])
        except StunServerError as exc:
            pytest.skip(f"no IPv6 loopback / dual-stack here: {exc}")
        async with server:
            loopback6, wildcard = server.addresses
            result = await binding(loopback6, timeout=5)
            assert result.mapped[0] == "::1"
            assert result.response_origin == loopback6
            # An IPv4 client of the dual-stack socket is mapped as IPv4, and the wildcard
            # listener cannot say its origin.
            result = await binding(("127.0.0.1", wildcard[1]), timeout=5)
            assert result.mapped[0] == "127.0.0.1"
            assert result.response_origin is None

    asyncio.run(main())


def test_the_client_retransmits_rc_times_then_times_out() -> None:
    async def main() -> tuple[StunTimeout, list[bytes]]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            silent.setblocking(False)
            with pytest.raises(StunTimeout) as caught:
                await binding(
                    silent.getsockname(), rto=0.01, retransmissions=4, rm=2, local=("127.0.0.1", 0)
                )
            received = []
            while True:
                try:
                    received.append(silent.recv(2048))
                except BlockingIOError:
                    break
            return caught.value, received

    error, received = asyncio.run(main())
    assert error.requests_sent == 4
    assert len(received) == 4
    assert len(set(received)) == 1  # the same request, same transaction id, each time
    assert stun.decode(received[0]).message_class == MessageClass.REQUEST


def test_the_client_ignores_strays_from_anywhere_and_takes_the_answer() -> None:
    async def main() -> tuple[BindingTransaction, BindingResult]:
        async with await StunServer.start([("127.0.0.1", 0)]) as server:
            with (
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as noise,
            ):
                client.bind(("127.0.0.1", 0))
                noise.bind(("127.0.0.1", 0))
                # Stray datagrams already queued on the socket before the request goes out.
                noise.sendto(b"junk", client.getsockname())
                foreign = stun.encode(
                    Message(Method.BINDING, MessageClass.SUCCESS, bytes(12), ()), fingerprint=True
                )
                noise.sendto(foreign, client.getsockname())
                client.setblocking(False)
                transaction = BindingTransaction(
                    server.addresses[0], local=client.getsockname(), timeout=5
                )
                return transaction, await run_transaction(client, transaction)

    transaction, result = asyncio.run(main())
    assert transaction.ignored == ["not a STUN message", "another transaction"]
    assert result.mapped == result.local


def test_the_server_survives_a_handler_bug_and_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> StunServer:
        async with await StunServer.start([("127.0.0.1", 0)]) as server:
            real = server.core.handle
            calls = 0

            def broken_once(*args: object, **kwargs: object) -> Reply | Dropped:
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise RuntimeError("injected bug")
                return real(*args, **kwargs)  # type: ignore[arg-type]

            server.core.handle = broken_once  # type: ignore[method-assign]
            result = await binding(server.addresses[0], local=("127.0.0.1", 0), rto=0.05, timeout=5)
            assert result.mapped == result.local
            return server

    server = asyncio.run(main())
    assert server.internal_errors == 1
    assert "could not be handled" in caplog.text


@pytest.mark.parametrize(
    ("listen", "alternate", "message"),
    [
        ([("127.0.0.1", 0), ("127.0.0.2", 0)], ("127.0.0.3", 0), "exactly one listen address"),
        ([("localhost", 0)], None, "must be IP addresses"),
        ([], None, "nothing to listen on"),
        ([("127.0.0.1", 4000)], ("127.0.0.2", 4000), "another IP and another port"),
        ([(WILDCARD, 0)], ("127.0.0.2", 0), "wildcard"),
        ([("192.0.2.123", 0)], None, "cannot listen on 192.0.2.123:0"),
    ],
)
def test_bad_server_configurations_are_refused(
    listen: list[tuple[str, int]], alternate: tuple[str, int] | None, message: str
) -> None:
    async def main() -> None:
        with pytest.raises(StunServerError, match=message):
            await StunServer.start(listen, alternate=alternate)

    asyncio.run(main())


def test_a_port_in_use_is_refused() -> None:
    async def main() -> None:
        async with await StunServer.start([("127.0.0.1", 0)]) as server:
            with pytest.raises(
                StunServerError, match=r"cannot listen on 127\.0\.0\.1:\d+: .*in use"
            ):
                await StunServer.start([server.addresses[0]])

    asyncio.run(main())


# --- live fuzzing -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def threaded_server() -> Iterator[StunServer]:
    """An RFC 5780 server on its own event loop in a thread, so hypothesis can drive it."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: list[StunServer] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        holder.append(loop.run_until_complete(rfc5780_server()))
        started.set()
        loop.run_forever()
        loop.run_until_complete(holder[0].close())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield holder[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_fuzzed_datagrams_never_break_the_live_server(threaded_server: StunServer) -> None:
    target = threaded_server.addresses[0]
    sent_ids: set[bytes] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fuzzer:
        fuzzer.bind(("127.0.0.1", 0))

        @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(datagram_strategy)
        def send(data: bytes) -> None:
            sent_ids.add(data[8:20])
            fuzzer.sendto(data, target)

        send()
        # A real Binding request afterwards (queued behind every fuzzed datagram) succeeds.
        result = asyncio.run(binding(target, local=("127.0.0.1", 0), timeout=10))
        assert result.mapped == result.local
        assert result.other_address == threaded_server.addresses[3]

        fuzzer.setblocking(False)
        replies = []
        while True:
            try:
                replies.append(fuzzer.recv(4096))
            except BlockingIOError:
                break
    # Every answer the fuzzer got is a well-formed response to one of its own datagrams.
    for reply in replies:
        stun.verify_fingerprint(reply)
        message = stun.decode(reply)
        assert message.message_class in (MessageClass.SUCCESS, MessageClass.ERROR)
        assert message.transaction_id in sent_ids
    assert threaded_server.internal_errors == 0
    assert threaded_server.core.counts["success"] >= 1
