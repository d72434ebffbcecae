"""The TURN server (RFC 8656): the sans-IO core on a virtual clock, then the asyncio shell and the
CLI on loopback, driven with raw STUN messages built with the codec (no TURN client involved).

Core tests relay to documentation addresses opened with the allow-list (nothing is sent); live
tests relay to UDP sockets on 127.0.0.1 and ::1 with ``allow_loopback_peers``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stoq.nat import stun
from stoq.nat.stun import Attribute, AttributeType, Message, MessageClass, Method
from stoq.nat.stun_client import Address
from stoq.nat.turn_server import (
    CHANNEL_LIFETIME,
    PERMISSION_LIFETIME,
    Transmit,
    TurnServer,
    TurnServerCore,
    TurnServerError,
    decode_channel_data,
    encode_channel_data,
    peer_allowed,
    peer_refusal,
)

REALM = "hypermesh.test"
USER, PASSWORD = "alice", "wonderland"
LOCAL = ("192.0.2.1", 3478)
CLIENT = ("198.51.100.7", 40000)
PEER = ("203.0.113.9", 5000)
PEER2 = ("203.0.113.10", 6000)
PEER6 = ("2001:db8::9", 5000)
DOCUMENTATION = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
KEY = stun.long_term_key(USER, REALM, PASSWORD)
UDP = Attribute(AttributeType.REQUESTED_TRANSPORT, bytes((17, 0, 0, 0)))


def family_attribute(code: int) -> Attribute:
    return Attribute(AttributeType.REQUESTED_ADDRESS_FAMILY, bytes((code, 0, 0, 0)))


def lifetime(seconds: int) -> Attribute:
    return Attribute(AttributeType.LIFETIME, seconds.to_bytes(4, "big"))


def channel_number(number: int) -> Attribute:
    return Attribute(AttributeType.CHANNEL_NUMBER, number.to_bytes(2, "big") + b"\0\0")


def peer_attribute(peer: Address, txid: bytes) -> Attribute:
    return Attribute(AttributeType.XOR_PEER_ADDRESS, stun.encode_xor_address(*peer, txid))


class FakeRelays:
    """Relayed addresses from documentation ranges; records what is open."""

    def __init__(self, families: frozenset[int] = frozenset({4, 6}), limit: int = 100) -> None:
        self._families = families
        self.limit = limit
        self.open_relays: set[Address] = set()
        self._next = 50000

    @property
    def families(self) -> frozenset[int]:
        return self._families

    def open(self, family: int) -> Address:
        if len(self.open_relays) >= self.limit:
            raise TurnServerError("no relay port free")
        self._next += 1
        relay = ("192.0.2.100" if family == 4 else "2001:db8::100", self._next)
        self.open_relays.add(relay)
        return relay

    def close(self, relay: Address) -> None:
        self.open_relays.remove(relay)


def make_core(relays: FakeRelays | None = None, **kwargs: object) -> TurnServerCore:
    options: dict[str, object] = {
        "realm": REALM,
        "users": {USER: PASSWORD, "bob": "builder"},
        "allowed_peers": DOCUMENTATION,
    }
    options.update(kwargs)
    return TurnServerCore(relays or FakeRelays(), **options)  # type: ignore[arg-type]


def decoded(transmit: Transmit, key: bytes | None = None) -> Message:
    stun.verify_fingerprint(transmit.data)
    if key is not None:
        stun.verify_integrity(transmit.data, key)
    return stun.decode(transmit.data)


@dataclass
class CoreClient:
    """A raw-STUN TURN client against a core, with its own clock."""

    core: TurnServerCore
    source: Address = CLIENT
    local: Address = LOCAL
    username: str = USER
    password: str = PASSWORD
    now: float = 1000.0
    nonce: str | None = None
    sent: list[bytes] = field(default_factory=list)

    @property
    def key(self) -> bytes:
        return stun.long_term_key(self.username, REALM, self.password)

    def raw(self, data: bytes) -> list[Transmit]:
        return self.core.receive(data, self.source, self.local, self.now)

    def request(
        self, method: int, *attributes: Attribute, txid: bytes | None = None, sign: bool = True
    ) -> Message:
        """Send a request (signed with the current nonce, fetched by a first 401 if needed) and
        return the one answer, its fingerprint and (when signed) integrity checked."""
        txid = txid or stun.new_transaction_id()
        if sign and self.nonce is None:
            challenge = self.request(method, *attributes, sign=False)
            assert challenge.error() == (401, "Unauthenticated")
            self.nonce = challenge.nonce()
        built = list(attributes)
        if sign:
            assert self.nonce is not None
            built += [
                Attribute(AttributeType.USERNAME, self.username.encode()),
                Attribute(AttributeType.REALM, REALM.encode()),
                Attribute(AttributeType.NONCE, self.nonce.encode()),
            ]
        message = Message(method, MessageClass.REQUEST, txid, tuple(built))
        data = stun.encode(message, integrity_key=self.key if sign else None, fingerprint=True)
        self.sent.append(data)
        out = self.raw(data)
        assert len(out) == 1, out
        assert (out[0].destination, out[0].via) == (self.source, self.local)
        answer = decoded(out[0])
        assert (answer.transaction_id, answer.method) == (txid, method)
        error = answer.error()
        if sign and (error is None or error[0] not in (401, 438)):
            stun.verify_integrity(out[0].data, self.key)
        return answer

    def allocate(self, *attributes: Attribute) -> Address:
        answer = self.request(Method.ALLOCATE, UDP, *attributes)
        assert answer.message_class == MessageClass.SUCCESS, answer.error()
        relay = answer.address(AttributeType.XOR_RELAYED_ADDRESS)
        assert relay is not None
        return relay

    def permit(self, *peers: Address) -> Message:
        txid = stun.new_transaction_id()
        return self.request(
            Method.CREATE_PERMISSION, *(peer_attribute(p, txid) for p in peers), txid=txid
        )

    def bind(self, number: int, peer: Address) -> Message:
        txid = stun.new_transaction_id()
        return self.request(
            Method.CHANNEL_BIND, channel_number(number), peer_attribute(peer, txid), txid=txid
        )

    def send_indication(self, peer: Address, data: bytes) -> list[Transmit]:
        txid = stun.new_transaction_id()
        message = Message(
            Method.SEND,
            MessageClass.INDICATION,
            txid,
            (peer_attribute(peer, txid), Attribute(AttributeType.DATA, data)),
        )
        return self.raw(stun.encode(message, fingerprint=True))


def error(answer: Message) -> tuple[int, str]:
    assert answer.message_class == MessageClass.ERROR
    found = answer.error()
    assert found is not None
    return found


# --- peer policy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.3.4.5", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("0.0.0.0", "the unspecified address"),  # noqa: S104
        ("::", "the unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("169.254.169.254", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("255.255.255.255", "the broadcast address"),
        ("10.1.2.3", "a private or special-purpose address"),
        ("172.16.0.1", "a private or special-purpose address"),
        ("192.168.1.1", "a private or special-purpose address"),
        ("fd00::1", "a private or special-purpose address"),
        ("192.0.2.1", "a private or special-purpose address"),
        ("2001:db8::1", "a private or special-purpose address"),
        ("198.18.0.1", "a private or special-purpose address"),
        ("240.0.0.1", "a private or special-purpose address"),
        ("fec0::1", "a site-local address"),
        ("64:ff9b::808:808", "a reserved address"),
        ("100.64.0.1", "a special-purpose address (not global)"),
        ("::ffff:10.0.0.1", "a private or special-purpose address"),
    ],
)
def test_peer_policy_refuses_special_purpose_addresses(ip: str, reason: str) -> None:
    assert peer_refusal(ip) == reason
    assert peer_allowed(ip) is False


@pytest.mark.parametrize("ip", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.4.4"])
def test_peer_policy_allows_global_addresses(ip: str) -> None:
    assert peer_refusal(ip) is None
    assert peer_allowed(ip)


def test_peer_policy_loopback_flag_and_allow_list() -> None:
    assert peer_allowed("127.0.0.1", allow_loopback=True)
    assert peer_allowed("::1", allow_loopback=True)
    assert not peer_allowed("10.0.0.1", allow_loopback=True)  # the flag opens loopback only
    assert peer_allowed("10.0.0.1", allowed=["10.0.0.0/8"])
    assert peer_allowed("::ffff:10.0.0.1", allowed=["10.0.0.0/8"])
    assert not peer_allowed("10.0.0.1", allowed=["10.1.0.0/16"])
    assert peer_allowed("fd12::5", allowed=["fd12::/16"])
    with pytest.raises(TurnServerError, match=r"not an IP address: 'example\.com'"):
        peer_allowed("example.com")
    with pytest.raises(TurnServerError, match="not an IP network in the peer allow-list"):
        peer_allowed("8.8.8.8", allowed=["10.0.0.0/33"])


# --- ChannelData ---------------------------------------------------------------------------------


# --- authentication ------------------------------------------------------------------------------


def test_unauthenticated_request_gets_401_with_realm_and_nonce() -> None:
    client = CoreClient(make_core())
    answer = client.request(Method.ALLOCATE, UDP, sign=False)
    assert error(answer) == (401, "Unauthenticated")
    assert answer.realm() == REALM
    assert answer.nonce()
    assert answer.get(AttributeType.MESSAGE_INTEGRITY) is None
    assert client.core.allocations == 0


def test_allocate_after_the_challenge() -> None:
    relays = FakeRelays()
    client = CoreClient(make_core(relays))
    answer = client.request(Method.ALLOCATE, UDP)
    assert answer.message_class == MessageClass.SUCCESS
    relay = answer.address(AttributeType.XOR_RELAYED_ADDRESS)
    assert relay is not None
    assert relay in relays.open_relays
    assert relay[0] == "192.0.2.100"
    assert answer.get(AttributeType.LIFETIME) == (600).to_bytes(4, "big")
    assert answer.xor_mapped_address() == CLIENT
    assert answer.software() == "stoq TURN server"
    assert client.core.relay_of(CLIENT, LOCAL) == relay
    assert client.core.allocations_of(USER) == 1


def test_wrong_password_and_unknown_user_get_401() -> None:
    core = make_core()
    wrong = CoreClient(core, password="not-it")
    answer = wrong.request(Method.ALLOCATE, UDP)
    assert error(answer) == (401, "Unauthenticated: wrong MESSAGE-INTEGRITY")
    assert answer.realm() == REALM
    assert answer.nonce()
    stranger = CoreClient(core, username="mallory")
    assert error(stranger.request(Method.ALLOCATE, UDP)) == (
        401,
        "Unauthenticated: unknown USERNAME",
    )
    assert core.allocations == 0


def test_missing_realm_or_nonce_with_integrity_is_400() -> None:
    client = CoreClient(make_core())
    txid = stun.new_transaction_id()
    message = Message(
        Method.ALLOCATE,
        MessageClass.REQUEST,
        txid,
        (UDP, Attribute(AttributeType.USERNAME, USER.encode())),
    )
    out = client.raw(stun.encode(message, integrity_key=KEY, fingerprint=True))
    assert decoded(out[0]).error() == (400, "Bad Request: USERNAME, REALM and NONCE are required")


def test_stale_forged_and_foreign_nonces_get_438_and_a_fresh_nonce() -> None:
    core = make_core(nonce_lifetime=100)
    client = CoreClient(core)
    client.allocate()
    first = client.nonce
    client.now += 101
    answer = client.request(Method.REFRESH)
    assert error(answer) == (438, "Stale Nonce")
    assert answer.realm() == REALM
    fresh = answer.nonce()
    assert fresh is not None
    assert fresh != first
    client.nonce = fresh
    assert client.request(Method.REFRESH).message_class == MessageClass.SUCCESS
    client.nonce = "0" * 44
    assert error(client.request(Method.REFRESH)) == (438, "Stale Nonce")
    other = CoreClient(core, source=("198.51.100.8", 40000), now=client.now, nonce=fresh)
    assert error(other.request(Method.ALLOCATE, UDP)) == (438, "Stale Nonce")


def test_integrity_sha256_is_accepted_and_answered_in_kind() -> None:
    client = CoreClient(make_core())
    challenge = client.request(Method.ALLOCATE, UDP, sign=False)
    txid = stun.new_transaction_id()
    message = Message(
        Method.ALLOCATE,
        MessageClass.REQUEST,
        txid,
        (
            UDP,
            Attribute(AttributeType.USERNAME, USER.encode()),
            Attribute(AttributeType.REALM, REALM.encode()),
            Attribute(AttributeType.NONCE, (challenge.nonce() or "").encode()),
        ),
    )
    out = client.raw(stun.encode(message, integrity_sha256_key=KEY, fingerprint=True))
    stun.verify_integrity_sha256(out[0].data, KEY)
    assert decoded(out[0]).message_class == MessageClass.SUCCESS


# --- Allocate ------------------------------------------------------------------------------------


def test_allocate_retransmission_and_437_mismatch() -> None:
    client = CoreClient(make_core())
    txid = stun.new_transaction_id()
    client.request(Method.ALLOCATE, UDP, txid=txid)
    again = client.raw(client.sent[-1])
    first = client.core.receive(client.sent[-1], CLIENT, LOCAL, client.now)
    assert again[0].data == first[0].data  # the same answer, byte for byte
    assert decoded(again[0], KEY).message_class == MessageClass.SUCCESS
    assert client.core.allocations == 1
    assert error(client.request(Method.ALLOCATE, UDP)) == (
        437,
        "Allocation Mismatch: the 5-tuple already has an allocation",
    )


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ((), (400, "Bad Request: REQUESTED-TRANSPORT is required")),
        (
            (Attribute(AttributeType.REQUESTED_TRANSPORT, bytes((6, 0, 0, 0))),),
            (442, "Unsupported Transport Protocol 6 (only UDP is relayed)"),
        ),
        (
            (Attribute(AttributeType.REQUESTED_TRANSPORT, b"\x11"),),
            (400, "Bad Request: REQUESTED-TRANSPORT must be 4 bytes"),
        ),
        ((UDP, family_attribute(3)), (440, "Address Family not Supported")),
        (
            (UDP, Attribute(AttributeType.LIFETIME, b"\0")),
            (400, "Bad Request: LIFETIME must be 4 bytes"),
        ),
    ],
)
def test_allocate_errors(attributes: tuple[Attribute, ...], expected: tuple[int, str]) -> None:
    client = CoreClient(make_core())
    assert error(client.request(Method.ALLOCATE, *attributes)) == expected
    assert client.core.allocations == 0


def test_allocate_without_a_relay_of_the_family_is_440_and_no_port_is_508() -> None:
    client = CoreClient(make_core(FakeRelays(frozenset({4}))))
    assert error(client.request(Method.ALLOCATE, UDP, family_attribute(2))) == (
        440,
        "Address Family not Supported: no IPv6 relay address",
    )
    full = CoreClient(make_core(FakeRelays(limit=0)))
    assert error(full.request(Method.ALLOCATE, UDP)) == (508, "Insufficient Capacity")


def test_ipv6_allocation() -> None:
    client = CoreClient(make_core())
    relay = client.allocate(family_attribute(2))
    assert relay[0] == "2001:db8::100"
    assert error(client.permit(PEER)) == (443, "Peer Address Family Mismatch")
    assert client.permit(PEER6).message_class == MessageClass.SUCCESS
    out = client.send_indication(PEER6, b"six")
    assert out == [Transmit(b"six", PEER6, relay)]
    assert error(client.request(Method.REFRESH, family_attribute(1))) == (
        443,
        "Peer Address Family Mismatch",
    )


def test_per_user_quota_is_486() -> None:
    core = make_core(quota=2)
    for port in (1, 2):
        CoreClient(core, source=("198.51.100.7", port)).allocate()
    third = CoreClient(core, source=("198.51.100.7", 3))
    assert error(third.request(Method.ALLOCATE, UDP)) == (486, "Allocation Quota Reached")
    bob = CoreClient(core, source=("198.51.100.7", 4), username="bob", password="builder")
    bob.allocate()  # the quota is per user
    first = CoreClient(core, source=("198.51.100.7", 1))
    assert first.request(Method.REFRESH, lifetime(0)).message_class == MessageClass.SUCCESS
    third.allocate()


def test_unknown_comprehension_required_attribute_is_420_signed() -> None:
    client = CoreClient(make_core())
    dont_fragment = Attribute(AttributeType.DONT_FRAGMENT, b"")
    answer = client.request(Method.ALLOCATE, UDP, dont_fragment)
    assert error(answer) == (420, "Unknown Attribute")
    assert answer.unknown_attributes() == (AttributeType.DONT_FRAGMENT,)


# --- Refresh and lifetimes -----------------------------------------------------------------------


def test_refresh_lifetimes_delete_and_437() -> None:
    relays = FakeRelays()
    core = make_core(relays)
    client = CoreClient(core)
    client.allocate(lifetime(10))  # raised to the default
    assert client.request(Method.REFRESH, lifetime(99999)).get(AttributeType.LIFETIME) == (
        3600
    ).to_bytes(4, "big")
    assert client.request(Method.REFRESH).get(AttributeType.LIFETIME) == (600).to_bytes(4, "big")
    answer = client.request(Method.REFRESH, lifetime(0))
    assert answer.get(AttributeType.LIFETIME) == bytes(4)
    assert core.allocations == 0
    assert not relays.open_relays
    assert error(client.request(Method.REFRESH)) == (
        437,
        "Allocation Mismatch: no allocation on this 5-tuple",
    )
    assert error(client.permit(PEER)) == (437, "Allocation Mismatch: no allocation on this 5-tuple")


def test_allocation_expires_on_the_clock() -> None:
    relays = FakeRelays()
    core = make_core(relays)
    client = CoreClient(core)
    relay = client.allocate()
    client.permit(PEER)
    assert core.next_expiry() == client.now + PERMISSION_LIFETIME
    core.expire(client.now + 599)
    assert core.allocations == 1
    assert core.next_expiry() == client.now + 600
    # A peer datagram read from the relay just as the allocation expires is dropped.
    assert core.receive(b"late", PEER, relay, client.now + 600) == []
    assert core.allocations == 0
    assert not relays.open_relays
    assert core.next_expiry() is None


def test_another_user_on_the_allocation_is_441() -> None:
    core = make_core()
    CoreClient(core).allocate()
    bob = CoreClient(core, username="bob", password="builder")
    assert error(bob.request(Method.REFRESH)) == (
        441,
        "Wrong Credentials: the allocation belongs to another user",
    )


# --- permissions, Send and Data ------------------------------------------------------------------


def test_send_and_data_with_permissions_that_expire() -> None:
    core = make_core()
    client = CoreClient(core)
    relay = client.allocate()
    assert client.send_indication(PEER, b"early") == []  # no permission yet
    assert core.receive(b"hello", PEER, relay, client.now) == []
    assert client.permit(PEER, PEER2).message_class == MessageClass.SUCCESS
    assert client.send_indication(PEER, b"ping") == [Transmit(b"ping", PEER, relay)]
    # Any port of a permitted IP may answer (permissions are per IP).
    out = core.receive(b"pong", (PEER[0], 9999), relay, client.now + 1)
    assert [(o.destination, o.via) for o in out] == [(CLIENT, LOCAL)]
    data = decoded(out[0])
    assert (data.method, data.message_class) == (Method.DATA, MessageClass.INDICATION)
    assert data.address(AttributeType.XOR_PEER_ADDRESS) == (PEER[0], 9999)
    assert data.get(AttributeType.DATA) == b"pong"
    assert data.get(AttributeType.MESSAGE_INTEGRITY) is None
    # Permissions last 300 s; a CreatePermission refreshes one.
    client.now += PERMISSION_LIFETIME - 1
    client.permit(PEER2)
    client.now += 2
    assert client.send_indication(PEER, b"late") == []
    assert core.receive(b"late", PEER, relay, client.now) == []
    assert client.send_indication(PEER2, b"still") == [Transmit(b"still", PEER2, relay)]


def test_forbidden_peers_are_403_all_or_nothing() -> None:
    core = make_core()
    client = CoreClient(core)
    client.allocate()
    assert error(client.permit(PEER, ("127.0.0.1", 80))) == (
        403,
        "Forbidden: peer 127.0.0.1 is a loopback address",
    )
    assert client.send_indication(PEER, b"x") == []  # PEER got no permission either
    assert error(client.permit(("10.0.0.1", 80))) == (
        403,
        "Forbidden: peer 10.0.0.1 is a private or special-purpose address",
    )
    assert error(client.bind(0x4000, ("169.254.169.254", 80))) == (
        403,
        "Forbidden: peer 169.254.169.254 is a link-local address",
    )
    assert error(client.request(Method.CREATE_PERMISSION)) == (
        400,
        "Bad Request: XOR-PEER-ADDRESS is required",
    )


# --- channels ------------------------------------------------------------------------------------


def test_channel_data_both_ways_and_expiry() -> None:
    core = make_core(nonce_lifetime=10000)
    client = CoreClient(core)
    relay = client.allocate(lifetime(3600))
    assert client.bind(0x4001, PEER).message_class == MessageClass.SUCCESS
    assert client.raw(encode_channel_data(0x4001, b"via channel")) == [
        Transmit(b"via channel", PEER, relay)
    ]
    assert client.raw(b"\x40\x01\x00\x03abc") == [Transmit(b"abc", PEER, relay)]  # no padding
    assert client.raw(encode_channel_data(0x4002, b"unbound")) == []
    back = core.receive(b"reply", PEER, relay, client.now)
    assert back == [Transmit(encode_channel_data(0x4001, b"reply", pad=True), CLIENT, LOCAL)]
    # Another port of the peer IP has the permission but no channel: a Data indication.
    other = core.receive(b"other", (PEER[0], 1), relay, client.now)
    assert decoded(other[0]).method == Method.DATA
    # A ChannelBind refreshes the permission too; the channel lasts 600 s.
    client.now += PERMISSION_LIFETIME - 1
    client.bind(0x4001, PEER)
    client.now += PERMISSION_LIFETIME - 1
    assert client.raw(encode_channel_data(0x4001, b"x")) == [Transmit(b"x", PEER, relay)]
    client.now += 2  # the permission from the bind has expired, the channel has not
    assert client.raw(encode_channel_data(0x4001, b"x")) == []
    assert client.permit(PEER).message_class == MessageClass.SUCCESS
    client.now = 1000.0 + PERMISSION_LIFETIME - 1 + CHANNEL_LIFETIME  # the channel has expired
    assert client.raw(encode_channel_data(0x4001, b"x")) == []
    assert decoded(core.receive(b"y", PEER, relay, client.now)[0]).method == Method.DATA


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        (0x3FFF, "Bad Request: channel 0x3fff is not 0x4000-0x4FFF"),
        (0x5000, "Bad Request: channel 0x5000 is not 0x4000-0x4FFF"),
    ],
)
def test_channel_numbers_out_of_range_are_400(number: int, reason: str) -> None:
    client = CoreClient(make_core())
    client.allocate()
    assert error(client.bind(number, PEER)) == (400, reason)


def test_channel_rebinding_conflicts_are_400() -> None:
    client = CoreClient(make_core())
    client.allocate()
    client.bind(0x4000, PEER)
    assert error(client.bind(0x4000, PEER2)) == (
        400,
        "Bad Request: channel 0x4000 is bound to another peer",
    )
    assert error(client.bind(0x4001, PEER)) == (
        400,
        "Bad Request: the peer is bound to channel 0x4000",
    )
    assert error(client.request(Method.CHANNEL_BIND, channel_number(0x4002))) == (
        400,
        "Bad Request: XOR-PEER-ADDRESS is required",
    )


# --- robustness ----------------------------------------------------------------------------------


def test_binding_malformed_and_other_messages() -> None:
    client = CoreClient(make_core())
    binding = client.request(Method.BINDING, sign=False)
    assert binding.message_class == MessageClass.SUCCESS
    assert binding.xor_mapped_address() == CLIENT
    # A well-framed request whose attribute overruns: 400 naming the problem.
    txid = bytes(12)
    header = bytes.fromhex("0003 0008 2112a442") + txid
    out = client.raw(header + bytes.fromhex("0019 0008 11000000"))
    answer = decoded(out[0])
    assert answer.transaction_id == txid
    code, reason = error(answer)
    assert code == 400
    assert reason.startswith("Bad Request: ")
    assert client.raw(b"\x99" * 40) == []
    assert client.raw(b"") == []
    assert error(client.request(0x00A, sign=True)) == (
        400,
        "Bad Request: method 0x00a is not a TURN request",
    )


hostile = st.one_of(
    st.binary(max_size=200),
    st.binary(min_size=4, max_size=64).map(lambda b: b"\x40" + b),
    st.builds(
        lambda body, method, cls: (
            stun.message_type(method, cls).to_bytes(2, "big")
            + len(body).to_bytes(2, "big")
            + stun.MAGIC_COOKIE.to_bytes(4, "big")
            + bytes(12)
            + body
        ),
        st.binary(max_size=80).map(lambda b: b + bytes(-len(b) % 4)),
        st.sampled_from([1, 3, 4, 6, 8, 9, 0x7FF]),
        st.integers(0, 3),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile, max_size=5))
def test_arbitrary_bytes_never_break_the_core(datagrams: list[bytes]) -> None:
    core = make_core()
    client = CoreClient(core)
    relay = client.allocate()
    client.permit(PEER)
    for data in datagrams:
        for out in core.receive(data, CLIENT, LOCAL, client.now):
            assert out.destination in (CLIENT, PEER)
        for out in core.receive(data, PEER, relay, client.now):
            assert out.destination == CLIENT
    assert client.request(Method.REFRESH).message_class == MessageClass.SUCCESS


# --- live: the asyncio shell on loopback ---------------------------------------------------------


def run_in_thread(**kwargs: object) -> Iterator[TurnServer]:
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: list[TurnServer] = []
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            holder.append(
                loop.run_until_complete(
                    TurnServer.start(
                        [("127.0.0.1", 0), ("::1", 0)],
                        realm=REALM,
                        users={USER: PASSWORD, "bob": "builder"},
                        relay_ips=("127.0.0.1", "::1"),
                        **kwargs,  # type: ignore[arg-type]
                    )
                )
            )
        except Exception as exc:  # noqa: BLE001 - re-raised in the test's thread
            failure.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(holder[0].close())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    if failure:
        raise failure[0]
    try:
        yield holder[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture(scope="module")
def open_server() -> Iterator[TurnServer]:
    yield from run_in_thread(allow_loopback_peers=True)


@pytest.fixture(scope="module")
def strict_server() -> Iterator[TurnServer]:
    yield from run_in_thread()


class UdpClient:
    """A raw-STUN TURN client over a real UDP socket."""

    def __init__(self, server: Address, family: int = socket.AF_INET) -> None:
        self.server = server
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
        self.sock.settimeout(5)
        self.nonce: str | None = None

    def close(self) -> None:
        self.sock.close()

    def receive(self) -> bytes:
        data, _ = self.sock.recvfrom(65535)
        return data

    def request(self, method: int, *attributes: Attribute, sign: bool = True) -> Message:
        txid = stun.new_transaction_id()
        built = [
            Attribute(a.type, stun.encode_xor_address(*stun.decode_address(a.value), txid))
            if a.type == AttributeType.XOR_PEER_ADDRESS
            else a
            for a in attributes
        ]
        if sign:
            assert self.nonce is not None
            built += [
                Attribute(AttributeType.USERNAME, USER.encode()),
                Attribute(AttributeType.REALM, REALM.encode()),
                Attribute(AttributeType.NONCE, self.nonce.encode()),
            ]
        message = Message(method, MessageClass.REQUEST, txid, tuple(built))
        self.sock.sendto(
            stun.encode(message, integrity_key=KEY if sign else None, fingerprint=True),
            self.server,
        )
        data = self.receive()
        stun.verify_fingerprint(data)
        answer = stun.decode(data)
        assert answer.transaction_id == txid
        if sign:
            stun.verify_integrity(data, KEY)
        return answer

    def allocate(self, *attributes: Attribute) -> Address:
        challenge = self.request(Method.ALLOCATE, UDP, *attributes, sign=False)
        assert challenge.error() == (401, "Unauthenticated")
        self.nonce = challenge.nonce()
        answer = self.request(Method.ALLOCATE, UDP, *attributes)
        relay = answer.address(AttributeType.XOR_RELAYED_ADDRESS)
        assert relay is not None, answer.error()
        return relay


def peer_of(address: Address) -> Attribute:
    """An XOR-PEER-ADDRESS placeholder: :meth:`UdpClient.request` XORs it with the real id."""
    return Attribute(AttributeType.XOR_PEER_ADDRESS, stun.encode_address(*address))


def udp_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(5)
    return sock


def test_live_full_flow_ipv4(open_server: TurnServer) -> None:
    client = UdpClient(open_server.addresses[0])
    peer = udp_socket("127.0.0.1")
    try:
        relay = client.allocate()
        assert relay[0] == "127.0.0.1"
        peer_address: Address = peer.getsockname()
        answer = client.request(Method.CREATE_PERMISSION, peer_of(peer_address))
        assert answer.message_class == MessageClass.SUCCESS
        txid = stun.new_transaction_id()
        send = Message(
            Method.SEND,
            MessageClass.INDICATION,
            txid,
            (
                Attribute(
                    AttributeType.XOR_PEER_ADDRESS, stun.encode_xor_address(*peer_address, txid)
                ),
                Attribute(AttributeType.DATA, b"hello peer"),
            ),
        )
        client.sock.sendto(stun.encode(send, fingerprint=True), client.server)
        data, source = peer.recvfrom(65535)
        assert (data, source) == (b"hello peer", relay)
        peer.sendto(b"hello client", relay)
        indication = stun.decode(client.receive())
        assert (indication.method, indication.message_class) == (
            Method.DATA,
            MessageClass.INDICATION,
        )
        assert indication.address(AttributeType.XOR_PEER_ADDRESS) == peer_address
        assert indication.get(AttributeType.DATA) == b"hello client"

        bound = client.request(Method.CHANNEL_BIND, channel_number(0x4123), peer_of(peer_address))
        assert bound.message_class == MessageClass.SUCCESS
        client.sock.sendto(encode_channel_data(0x4123, b"over the channel"), client.server)
        assert peer.recvfrom(65535) == (b"over the channel", relay)
        peer.sendto(b"back on it", relay)
        assert decode_channel_data(client.receive()) == (0x4123, b"back on it")

        deleted = client.request(Method.REFRESH, lifetime(0))
        assert deleted.get(AttributeType.LIFETIME) == bytes(4)
    finally:
        client.close()
        peer.close()
    assert open_server.internal_errors == 0


def test_live_ipv6_relay(open_server: TurnServer) -> None:
    client = UdpClient(open_server.addresses[1], socket.AF_INET6)
    peer = udp_socket("::1")
    try:
        relay = client.allocate(family_attribute(2))
        assert relay[0] == "::1"
        peer_address = peer.getsockname()[:2]
        bound = client.request(Method.CHANNEL_BIND, channel_number(0x4000), peer_of(peer_address))
        assert bound.message_class == MessageClass.SUCCESS
        client.sock.sendto(encode_channel_data(0x4000, b"six"), client.server)
        data, source = peer.recvfrom(65535)
        assert (data, source[:2]) == (b"six", relay)
        peer.sendto(b"xis", relay)
        assert decode_channel_data(client.receive()) == (0x4000, b"xis")
        # An IPv4 peer on an IPv6 relay is refused.
        answer = client.request(Method.CREATE_PERMISSION, peer_of(("127.0.0.1", 9)))
        assert answer.error() == (443, "Peer Address Family Mismatch")
    finally:
        client.close()
        peer.close()


def test_live_loopback_peer_is_forbidden_without_the_flag(strict_server: TurnServer) -> None:
    client = UdpClient(strict_server.addresses[0])
    try:
        client.allocate()
        answer = client.request(Method.CREATE_PERMISSION, peer_of(("127.0.0.1", 9)))
        assert answer.error() == (403, "Forbidden: peer 127.0.0.1 is a loopback address")
    finally:
        client.close()


def test_live_fuzzing_never_breaks_the_server(open_server: TurnServer) -> None:
    target = open_server.addresses[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fuzzer:
        fuzzer.bind(("127.0.0.1", 0))

        @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(hostile)
        def send(data: bytes) -> None:
            fuzzer.sendto(data, target)

        send()
    client = UdpClient(target)
    try:
        client.allocate()  # still serving
    finally:
        client.close()
    assert open_server.internal_errors == 0


def test_start_refuses_a_wildcard_without_relay_ip() -> None:
    async def main() -> None:
        with pytest.raises(TurnServerError, match="no relay IP"):
            await TurnServer.start([("0.0.0.0", 0)], realm=REALM, users={})  # noqa: S104

    asyncio.run(main())


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_turn_server_answers_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stoq",
            "turn-server",
            "--listen",
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
        assert line.startswith("listening 127.0.0.1:"), (line, process.stderr)
        port = int(line.rsplit(":", 1)[1])
        client = UdpClient(("127.0.0.1", port))
        try:
            relay = client.allocate()
            assert relay[0] == "127.0.0.1"
        finally:
            client.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
