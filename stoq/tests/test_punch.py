"""Hole punching: the sans-IO ICE-style checks of stoq.nat.punch and its asyncio shell."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections import Counter
from collections.abc import Callable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stoq.nat import stun
from stoq.nat.punch import (
    BIRTHDAY_PORTS,
    Birthday,
    BirthdayRole,
    Candidate,
    CandidateKind,
    Failed,
    PairState,
    PunchError,
    PunchFailed,
    PunchSession,
    Selected,
    birthday_roles,
    candidate_priority,
    pair_priority,
    punch,
    receive,
)
from stoq.nat.stun import AttributeType, MessageClass

Address = tuple[str, int]
A_ADDR: Address = ("192.0.2.1", 1000)
B_ADDR: Address = ("192.0.2.2", 2000)
UNREACHABLE: Address = ("10.9.9.9", 9999)


def host(address: Address) -> Candidate:
    return Candidate.make(CandidateKind.HOST, address)


def session(
    locals_: list[Candidate],
    remotes: list[Candidate],
    *,
    controlling: bool,
    me: str = "A",
    peer: str = "B",
    remote_pwd: str | None = None,
    now: float = 0.0,
    timeout: float = 5.0,
    tie_breaker: int | None = None,
    birthday: Birthday | None = None,
) -> PunchSession:
    return PunchSession(
        locals_,
        remotes,
        controlling=controlling,
        local_ufrag=f"ufrag{me}",
        local_pwd=f"password-of-{me}-0123456789",
        remote_ufrag=f"ufrag{peer}",
        remote_pwd=remote_pwd if remote_pwd is not None else f"password-of-{peer}-0123456789",
        now=now,
        timeout=timeout,
        tie_breaker=tie_breaker,
        birthday=birthday,
    )


#: ``(sender name, sending base, destination)`` -> ``(source seen, receiving base)``, or None
#: when the datagram is lost. A receiving base of None lets the session pick its first base.
Deliver = Callable[[str, Address, Address], tuple[Address, Address | None] | None]


def direct_network(sender: str, base: Address, destination: Address) -> tuple[Address, None] | None:
    """A and B see each other's real address; anything else is lost."""
    if sender == "A" and destination == B_ADDR:
        return A_ADDR, None
    if sender == "B" and destination == A_ADDR:
        return B_ADDR, None
    return None


def run(
    a: PunchSession,
    b: PunchSession,
    network: Deliver = direct_network,
    *,
    until: float = 10.0,
    noise: list[bytes] | None = None,
    lose: Callable[[str, bytes], bool] | None = None,
) -> float:
    """Step both sessions on a simulated clock until both have a result; the final time.
    ``lose(sender, datagram)`` True drops that datagram."""
    now = 0.0
    sides = {"A": a, "B": b}
    noise = list(noise or [])
    while now < until:
        progressed = True
        while progressed:
            progressed = False
            for name, side in sides.items():
                other = sides["B" if name == "A" else "A"]
                for data, destination, base in side.datagrams_to_send():
                    if lose is not None and lose(name, data):
                        continue
                    delivered = network(name, base, destination)
                    if delivered is not None:
                        source, receiving_base = delivered
                        progressed = True
                        other.handle_datagram(data, source, now, base=receiving_base)
                        if noise:
                            junk = noise.pop()
                            returned = other.handle_datagram(junk, source, now)
                            assert returned == (None if stun.is_stun(junk) else junk)
        if a.result is not None and b.result is not None:
            return now
        timers = [t for t in (a.get_timer(), b.get_timer()) if t is not None]
        if not timers:
            return now
        now = max(min(timers), now)
        for side in sides.values():
            timer = side.get_timer()
            if timer is not None and timer <= now:
                side.handle_timeout(now)
    return now


# --- priorities and pairs --------------------------------------------------------------------


def test_candidate_priorities_follow_rfc_8445_formula() -> None:
    # 2^24 * type preference + 2^8 * 65535 + (256 - 1): the values every ICE stack produces.
    assert candidate_priority(CandidateKind.HOST) == 2130706431
    assert candidate_priority(CandidateKind.PEER_REFLEXIVE) == 1862270975
    assert candidate_priority(CandidateKind.SERVER_REFLEXIVE) == 1694498815
    assert candidate_priority(CandidateKind.RELAYED) == 16777215
    assert candidate_priority(CandidateKind.HOST, 0, 256) == 126 << 24
    assert candidate_priority(CandidateKind.SERVER_REFLEXIVE, 10) == (100 << 24) + (10 << 8) + 255
    with pytest.raises(PunchError, match="local preference 65536"):
        candidate_priority(CandidateKind.HOST, 65536)
    with pytest.raises(PunchError, match="component 0"):
        candidate_priority(CandidateKind.HOST, component=0)


def test_pair_priority_formula_and_tie_bit() -> None:
    g, d = 2130706431, 1694498815
    assert pair_priority(g, d) == (d << 32) + 2 * g + 1
    assert pair_priority(d, g) == (d << 32) + 2 * g
    assert pair_priority(g, g) == (g << 32) + 2 * g
    # The min term dominates: a pair with a relay is below every pair without one.
    relay = candidate_priority(CandidateKind.RELAYED)
    assert pair_priority(g, relay) < pair_priority(d, d)


def test_pairs_form_on_the_base_and_sort_by_priority() -> None:
    base = ("10.0.0.1", 5000)
    local = [
        host(base),
        Candidate.make(CandidateKind.SERVER_REFLEXIVE, ("198.51.100.1", 6000), base=base),
        Candidate.make(CandidateKind.RELAYED, ("203.0.113.3", 7000), base=base),
    ]
    remote = [
        host(("10.0.0.2", 5000)),
        Candidate.make(CandidateKind.SERVER_REFLEXIVE, ("198.51.100.2", 6001)),
        Candidate.make(CandidateKind.RELAYED, ("203.0.113.3", 7001)),
        host(("2001:db8::2", 5000)),  # no IPv6 base: not paired
    ]
    s = session(local, remote, controlling=True)
    pairs = s.pairs
    # One local base (srflx replaced by its base, relay not paired), three IPv4 remotes.
    assert [p.local.address for p in pairs] == [base] * 3
    assert [p.remote.address for p in pairs] == [
        ("10.0.0.2", 5000),
        ("198.51.100.2", 6001),
        ("203.0.113.3", 7001),
    ]
    assert [p.priority for p in pairs] == sorted((p.priority for p in pairs), reverse=True)
    controlled = session(remote[:3], local, controlling=False, me="B", peer="A")
    # Both sides compute the same priority for the same pair (G is always the controlling side).
    mirrored = {(p.remote.address, p.local.address): p.priority for p in controlled.pairs}
    assert pairs[0].priority == mirrored[(base, ("10.0.0.2", 5000))]


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(PunchError, match="no local host or server-reflexive candidate"):
        session([Candidate.make(CandidateKind.RELAYED, A_ADDR)], [host(B_ADDR)], controlling=True)
    with pytest.raises(PunchError, match="ufrags must be non-empty"):
        PunchSession(
            [host(A_ADDR)], [], controlling=True, local_ufrag="", local_pwd="p" * 22,
            remote_ufrag="x", remote_pwd="p" * 22, now=0.0,
        )  # fmt: skip


# --- the check message -----------------------------------------------------------------------


def first_check(s: PunchSession) -> tuple[bytes, Address]:
    s.handle_timeout(0.0)
    ((data, destination, base),) = s.datagrams_to_send()
    assert base == s.bases[0].address
    return data, destination


def test_check_message_format() -> None:
    s = session([host(A_ADDR)], [host(B_ADDR)], controlling=True, tie_breaker=0x0102030405060708)
    data, destination = first_check(s)
    assert destination == B_ADDR
    message = stun.decode(data)
    assert (message.method, message.message_class) == (stun.Method.BINDING, MessageClass.REQUEST)
    assert [a.type for a in message.attributes] == [
        AttributeType.USERNAME,
        AttributeType.PRIORITY,
        AttributeType.ICE_CONTROLLING,
        AttributeType.MESSAGE_INTEGRITY,
        AttributeType.FINGERPRINT,
    ]
    assert message.username() == "ufragB:ufragA"  # remote ufrag : local ufrag
    assert message.get(AttributeType.PRIORITY) == struct.pack(">I", 1862270975)
    assert message.get(AttributeType.ICE_CONTROLLING) == bytes.fromhex("0102030405060708")
    # Signed with the REMOTE password's short-term key, not ours.
    stun.verify_integrity(data, stun.short_term_key("password-of-B-0123456789"))
    with pytest.raises(stun.IntegrityError):
        stun.verify_integrity(data, stun.short_term_key("password-of-A-0123456789"))
    stun.verify_fingerprint(data)
    assert s.pairs[0].state == PairState.IN_PROGRESS


def test_controlled_check_carries_ice_controlled() -> None:
    s = session([host(B_ADDR)], [host(A_ADDR)], controlling=False, me="B", peer="A")
    message = stun.decode(first_check(s)[0])
    assert message.get(AttributeType.ICE_CONTROLLING) is None
    assert message.get(AttributeType.ICE_CONTROLLED) is not None
    assert message.get(AttributeType.USE_CANDIDATE) is None


def test_answer_is_signed_with_the_local_password_and_carries_the_source() -> None:
    a = session([host(A_ADDR)], [host(B_ADDR)], controlling=True)
    b = session([host(B_ADDR)], [host(A_ADDR)], controlling=False, me="B", peer="A")
    check, _ = first_check(a)
    assert b.handle_datagram(check, ("198.51.100.7", 4242), 0.0) is None
    answer, destination, base = b.datagrams_to_send()[0]
    assert destination == ("198.51.100.7", 4242)
    assert base == B_ADDR
    message = stun.decode(answer)
    assert message.message_class == MessageClass.SUCCESS
    assert message.xor_mapped_address() == ("198.51.100.7", 4242)
    stun.verify_integrity(answer, stun.short_term_key("password-of-B-0123456789"))
    stun.verify_fingerprint(answer)
    # The unknown source became a peer-reflexive remote candidate with the check's PRIORITY.
    learned = [p.remote for p in b.pairs if p.remote.address == ("198.51.100.7", 4242)]
    assert learned[0].kind == CandidateKind.PEER_REFLEXIVE
    assert learned[0].priority == 1862270975


def test_a_check_with_the_wrong_password_or_username_is_ignored() -> None:
    a = session(
        [host(A_ADDR)], [host(B_ADDR)], controlling=True, remote_pwd="not-the-password!!!!!!"
    )
    b = session([host(B_ADDR)], [host(A_ADDR)], controlling=False, me="B", peer="A")
    check, _ = first_check(a)
    b.handle_datagram(check, A_ADDR, 0.0)
    assert b.datagrams_to_send() == []
    assert "MESSAGE-INTEGRITY" in b.ignored[-1]
    stranger = session([host(A_ADDR)], [host(B_ADDR)], controlling=True, me="C")
    check, _ = first_check(stranger)
    b.handle_datagram(check, A_ADDR, 0.0)
    assert b.datagrams_to_send() == []
    assert b.ignored[-1].endswith("USERNAME 'ufragB:ufragC', not 'ufragB:ufragA'")


def test_mismatched_passwords_never_select() -> None:
    a = session(
        [host(A_ADDR)], [host(B_ADDR)], controlling=True, remote_pwd="wrong-password-b-0000000"
    )
    b = session(
        [host(B_ADDR)], [host(A_ADDR)], controlling=False, me="B", peer="A",
        remote_pwd="wrong-password-a-0000000",
    )  # fmt: skip
    run(a, b)
    assert isinstance(a.result, Failed)
    assert isinstance(b.result, Failed)
    assert a.result.reason.startswith("no candidate pair selected within 5 s")
    assert any("MESSAGE-INTEGRITY" in reason for reason in a.ignored)


# --- whole runs ------------------------------------------------------------------------------


def test_back_to_back_sessions_agree_on_the_nominated_pair() -> None:
    a = session([host(A_ADDR), host(UNREACHABLE)], [host(B_ADDR), host(("10.8.8.8", 1))],
                controlling=True)  # fmt: skip
    b = session([host(B_ADDR)], [host(A_ADDR)], controlling=False, me="B", peer="A")
    run(a, b)
    assert a.result == Selected(host(A_ADDR), host(B_ADDR))
    assert b.result == Selected(host(B_ADDR), host(A_ADDR))
    # After selection the controlled side still answers late checks.
    check, _ = first_check(session([host(A_ADDR)], [host(B_ADDR)], controlling=True))
    b.handle_datagram(check, A_ADDR, 20.0)
    assert stun.decode(b.datagrams_to_send()[0][0]).message_class == MessageClass.SUCCESS


def nat_network(sender: str, base: Address, destination: Address) -> tuple[Address, None] | None:
    """B is behind a full-cone NAT: it is reached at 198.51.100.2:40000 and its packets come
    from there; A is public."""
    if sender == "A" and destination == ("198.51.100.2", 40000):
        return A_ADDR, None
    if sender == "B" and destination == A_ADDR:
        return ("198.51.100.2", 40000), None
    return None


def test_peer_reflexive_candidates_are_learned_both_ways() -> None:
    # B only tells A its private host address; A learns B's public address from B's check.
    b_host = host(("10.0.0.2", 2000))
    a = session([host(A_ADDR)], [b_host], controlling=True)
    b = session([b_host], [host(A_ADDR)], controlling=False, me="B", peer="A")
    run(a, b, nat_network)
    assert isinstance(a.result, Selected)
    assert a.result.remote.address == ("198.51.100.2", 40000)
    assert a.result.remote.kind == CandidateKind.PEER_REFLEXIVE
    assert isinstance(b.result, Selected)
    assert b.result.remote.address == A_ADDR
    assert [c.address for c in b.learned] == [("198.51.100.2", 40000)]


def test_role_conflict_is_resolved_by_the_tie_breaker() -> None:
    a = session([host(A_ADDR)], [host(B_ADDR)], controlling=True, tie_breaker=10)
    b = session([host(B_ADDR)], [host(A_ADDR)], controlling=True, me="B", peer="A", tie_breaker=5)
    run(a, b)
    assert (a.controlling, b.controlling) == (True, False)
    assert isinstance(a.result, Selected)
    assert isinstance(b.result, Selected)
    assert (a.result.remote.address, b.result.remote.address) == (B_ADDR, A_ADDR)


def test_no_answer_leads_to_failed_at_the_deadline() -> None:
    a = session([host(A_ADDR)], [host(UNREACHABLE)], controlling=True, timeout=6.0)
    b = session([host(B_ADDR)], [host(UNREACHABLE)], controlling=False, me="B", peer="A",
                timeout=7.0)  # fmt: skip
    end = run(a, b)
    assert end == 7.0
    assert isinstance(a.result, Failed)
    assert a.result.reason == (
        "no candidate pair selected within 6 s (12 checks sent on 1 of 1 pairs, 0 checks answered)"
    )
    assert a.get_timer() is None
    assert [p.state for p in a.pairs] == [PairState.FAILED]


def test_retransmissions_follow_the_schedule() -> None:
    a = session([host(A_ADDR)], [host(UNREACHABLE)], controlling=True)
    sent_at: list[float] = []
    now = 0.0
    while a.result is None:
        a.handle_timeout(now)
        sent_at += [now for _ in a.datagrams_to_send()]
        timer = a.get_timer()
        if timer is None:
            break
        now = timer
    assert isinstance(a.result, Failed)
    # rto 0.1 doubling to 0.4, twelve transmissions in all, then the pair failed.
    assert sent_at[:5] == pytest.approx([0.0, 0.1, 0.3, 0.7, 1.1])
    assert len(sent_at) == 12


def test_application_data_is_returned() -> None:
    a = session([host(A_ADDR)], [host(B_ADDR)], controlling=True)
    assert a.handle_datagram(b"\x17hello", B_ADDR, 0.0) == b"\x17hello"
    assert a.handle_datagram(b"", B_ADDR, 0.0) == b""


stun_like = st.builds(
    lambda head, body: head + struct.pack(">I", stun.MAGIC_COOKIE) + body,
    st.binary(min_size=4, max_size=4).map(lambda b: bytes([b[0] & 0x3F]) + b[1:]),
    st.binary(max_size=80),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=120), stun_like), max_size=30))
def test_garbage_never_breaks_the_session(garbage: list[bytes]) -> None:
    a = session([host(A_ADDR)], [host(B_ADDR)], controlling=True)
    b = session([host(B_ADDR)], [host(A_ADDR)], controlling=False, me="B", peer="A")
    for junk in garbage:
        for side in (a, b):
            returned = side.handle_datagram(junk, ("198.51.100.99", 1), 0.0)
            assert returned is None if stun.is_stun(junk) else returned == junk
            # Nothing unauthenticated is ever answered.
            assert side.datagrams_to_send() == []
    run(a, b, noise=garbage)
    assert isinstance(a.result, Selected)
    assert isinstance(b.result, Selected)


# --- several bases ----------------------------------------------------------------------------

B2_ADDR: Address = ("192.0.2.2", 2002)


def test_a_check_is_answered_from_the_base_it_arrived_on() -> None:
    a = session([host(A_ADDR)], [host(B_ADDR), host(B2_ADDR)], controlling=True)
    b = session([host(B_ADDR), host(B2_ADDR)], [host(A_ADDR)], controlling=False, me="B", peer="A")
    assert [c.address for c in b.bases] == [B_ADDR, B2_ADDR]
    check, _ = first_check(a)
    assert b.handle_datagram(check, A_ADDR, 0.0, base=B2_ADDR) is None
    ((answer, destination, base),) = b.datagrams_to_send()
    assert (destination, base) == (A_ADDR, B2_ADDR)
    assert stun.decode(answer).message_class == MessageClass.SUCCESS
    # The triggered check goes out from the same base, on the pair (B2, A).
    b.handle_timeout(0.0)
    ((triggered, destination, base),) = b.datagrams_to_send()
    assert (destination, base) == (A_ADDR, B2_ADDR)
    assert stun.decode(triggered).message_class == MessageClass.REQUEST
    states = {p.key: p.state for p in b.pairs}
    assert states == {(B2_ADDR, A_ADDR): PairState.IN_PROGRESS, (B_ADDR, A_ADDR): PairState.WAITING}
    # No base given: the first base answers.
    b.handle_datagram(check, A_ADDR, 0.0)
    assert [base for _, _, base in b.datagrams_to_send()] == [B_ADDR]
    with pytest.raises(PunchError, match=r"192\.0\.2\.9:1 is not one of this session's bases"):
        b.handle_datagram(check, A_ADDR, 0.0, base=("192.0.2.9", 1))


def test_a_response_on_another_base_fails_the_pair() -> None:
    a = session([host(A_ADDR), host(("192.0.2.1", 1001))], [host(B_ADDR)], controlling=True)
    b = session([host(B_ADDR)], [host(A_ADDR)], controlling=False, me="B", peer="A")
    check, _ = first_check(a)
    b.handle_datagram(check, A_ADDR, 0.0, base=B_ADDR)
    answer = b.datagrams_to_send()[0][0]
    a.handle_datagram(answer, B_ADDR, 0.0, base=("192.0.2.1", 1001))
    assert a.ignored[-1] == (
        "response from 192.0.2.2:2000: arrived on base 192.0.2.1:1001, the check went from "
        "192.0.2.1:1000 (asymmetric path)"
    )
    assert {p.key: p.state for p in a.pairs}[(A_ADDR, B_ADDR)] == PairState.FAILED


def test_selected_names_the_winning_base() -> None:
    # A's first base cannot be reached; only its second base's path works.
    a_other: Address = ("192.0.2.1", 1001)

    def second_base_only(
        sender: str, base: Address, destination: Address
    ) -> tuple[Address, Address] | None:
        if sender == "A" and base == a_other and destination == B_ADDR:
            return a_other, B_ADDR
        if sender == "B" and destination == a_other:
            return B_ADDR, a_other
        return None

    a = session([host(A_ADDR), host(a_other)], [host(B_ADDR)], controlling=True)
    b = session([host(B_ADDR)], [host(A_ADDR), host(a_other)], controlling=False, me="B", peer="A")
    run(a, b, second_base_only)
    assert a.result == Selected(host(a_other), host(B_ADDR))
    assert b.result == Selected(host(B_ADDR), host(a_other))


# --- birthday probing --------------------------------------------------------------------------


def test_birthday_roles_table() -> None:
    assert birthday_roles(True, True) is None
    assert birthday_roles(False, False) is None  # both hard: the relay serves it
    assert birthday_roles(False, True) == BirthdayRole.OPEN_PORTS
    assert birthday_roles(True, False) == BirthdayRole.SPRAY
    assert BIRTHDAY_PORTS == 256
    defaults = Birthday(BirthdayRole.SPRAY, remote_ip="198.51.100.1")
    assert (defaults.probes, defaults.first_port, defaults.last_port, defaults.rate) == (
        4096,
        1024,
        65535,
        2000.0,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"role": BirthdayRole.SPRAY}, "a birthday spray needs the hard side's public IP, not ''"),
        ({"role": BirthdayRole.SPRAY, "remote_ip": "nat.example"}, "public IP, not 'nat.example'"),
        (
            {"role": BirthdayRole.SPRAY, "remote_ip": "198.51.100.1", "first_port": 0},
            "birthday port range 0-65535 is not within 1-65535",
        ),
        (
            {
                "role": BirthdayRole.SPRAY,
                "remote_ip": "198.51.100.1",
                "first_port": 9,
                "last_port": 8,
            },
            "birthday port range 9-8 is not within 1-65535",
        ),
        (
            {
                "role": BirthdayRole.SPRAY,
                "remote_ip": "198.51.100.1",
                "probes": 12,
                "last_port": 1034,
            },
            r"birthday probes 12 is not in 1\.\.11 \(the ports in 1024-1034\)",
        ),
        (
            {"role": BirthdayRole.SPRAY, "remote_ip": "198.51.100.1", "probes": 0},
            r"birthday probes 0 is not in 1\.\.64512",
        ),
        ({"role": BirthdayRole.OPEN_PORTS, "rate": 0.0}, "birthday rate 0.0 is not a positive"),
        ({"role": BirthdayRole.OPEN_PORTS, "rate": float("inf")}, "birthday rate inf is not"),
    ],
)
def test_birthday_parameters_are_validated(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(PunchError, match=message):
        Birthday(**kwargs)  # type: ignore[arg-type]


def test_birthday_roles_need_their_sockets_and_family() -> None:
    with pytest.raises(PunchError, match="birthday OPEN_PORTS needs extra sockets"):
        session(
            [host(A_ADDR)], [host(B_ADDR)], controlling=True,
            birthday=Birthday(BirthdayRole.OPEN_PORTS),
        )  # fmt: skip
    with pytest.raises(PunchError, match=r"birthday spray IP 2001:db8::1 is not of the primary"):
        session(
            [host(A_ADDR)], [host(B_ADDR)], controlling=True,
            birthday=Birthday(BirthdayRole.SPRAY, remote_ip="2001:db8:0::1"),
        )  # fmt: skip


HARD_IP = "198.51.100.1"
STUN: Address = ("203.0.113.1", 3478)
HARD_SRFLX: Address = (HARD_IP, 50000)


def drive(s: PunchSession, *, step: float | None = None) -> list[tuple[float, bytes, Address]]:
    """Run one session alone until its result: ``(time, datagram, destination)`` sent. The clock
    follows get_timer, or moves in fixed ``step``s."""
    sent: list[tuple[float, bytes, Address]] = []
    now = 0.0
    while s.result is None:
        s.handle_timeout(now)
        sent += [(now, data, destination) for data, destination, _ in s.datagrams_to_send()]
        timer = s.get_timer()
        if timer is None:
            break
        now = round(now + step, 9) if step is not None else timer
    return sent


def sprayer(probes: int = 300, *, seed: int | None = 7, rate: float = 1000.0) -> PunchSession:
    spray = Birthday(
        BirthdayRole.SPRAY, remote_ip=HARD_IP, probes=probes, first_port=40000,
        last_port=40999, rate=rate, seed=seed,
    )  # fmt: skip
    srflx = Candidate.make(CandidateKind.SERVER_REFLEXIVE, HARD_SRFLX)
    return session([host(A_ADDR)], [srflx], controlling=True, timeout=5.0, birthday=spray)


def test_spray_sends_each_distinct_port_once_at_the_rate() -> None:
    s = sprayer()
    sent = drive(s)
    probes = [(t, data, d) for t, data, d in sent if d != HARD_SRFLX]
    ports = [d[1] for _, _, d in probes]
    assert len(ports) == 300
    assert len(set(ports)) == 300  # drawn without replacement, never retransmitted
    assert all(d[0] == HARD_IP and 40000 <= d[1] <= 40999 for _, _, d in probes)
    # Reproducible with a seed: random.Random(seed).sample of the range, in sending order.
    assert ports == random.Random(7).sample(range(40000, 41000), 300)
    assert ports == Birthday(
        BirthdayRole.SPRAY, remote_ip=HARD_IP, probes=300, first_port=40000, last_port=40999,
        seed=7,
    ).draw_ports()  # fmt: skip
    # Probe k at k / rate (1000 per second), driven by get_timer only.
    assert [t for t, _, _ in probes] == pytest.approx([k / 1000 for k in range(300)])
    # Every probe is an authenticated check with the session's credentials.
    for _, data, _ in probes[:5]:
        message = stun.decode(data)
        assert message.message_class == MessageClass.REQUEST
        assert message.username() == "ufragB:ufragA"
        stun.verify_integrity(data, stun.short_term_key("password-of-B-0123456789"))
        stun.verify_fingerprint(data)
    # The ordinary pair was checked as usual alongside (12 transmissions).
    assert sum(d == HARD_SRFLX for _, _, d in sent) == 12
    # One signed request, one transaction, sent to every port.
    assert len({data for _, data, _ in probes}) == 1
    # Unanswered probes leave no pair and no trace in `ignored`; the reason counts them.
    assert s.ignored == []
    assert [p.remote.address for p in s.pairs] == [HARD_SRFLX]
    assert isinstance(s.result, Failed)
    assert s.result.reason == (
        "no candidate pair selected within 5 s (312 checks sent on 1 of 1 pairs, 0 checks "
        "answered; birthday spray: 300 of 300 probes sent (0 skipped as known candidates))"
    )


def answer(request: bytes, source: Address, password: str) -> bytes:
    """The hard side's signed success response to ``request`` (its XOR-MAPPED-ADDRESS:
    ``source``)."""
    message = stun.decode(request)
    response = stun.success_response(
        message,
        stun.Attribute(
            AttributeType.XOR_MAPPED_ADDRESS,
            stun.encode_xor_address(source[0], source[1], message.transaction_id),
        ),
    )
    return stun.encode(response, integrity_key=stun.short_term_key(password), fingerprint=True)


def test_a_spray_hit_makes_its_pair_succeed_and_is_nominated() -> None:
    s = sprayer(probes=50)
    s.handle_timeout(0.01)  # probes 0..10 are due
    probes = [(data, d) for data, d, _ in s.datagrams_to_send() if d != HARD_SRFLX]
    assert len(probes) == 11
    request, hit = probes[3]
    password = "password-of-B-0123456789"
    # An answer from an address the spray did not go to is ignored.
    stranger = (HARD_IP, 39999)
    s.handle_datagram(answer(request, A_ADDR, password), stranger, 0.011, base=A_ADDR)
    assert s.ignored[-1] == (
        "response from 198.51.100.1:39999: to the birthday spray, from an address it did not "
        "go to (asymmetric path)"
    )
    # An unsigned (wrongly signed) answer is ignored too.
    s.handle_datagram(answer(request, A_ADDR, "not-the-password-000000"), hit, 0.011)
    assert "MESSAGE-INTEGRITY" in s.ignored[-1]
    assert [p.remote.address for p in s.pairs] == [HARD_SRFLX]
    # The real hit: the pair (primary base, hit) appears Succeeded and, controlling, we nominate.
    s.handle_datagram(answer(request, A_ADDR, password), hit, 0.012, base=A_ADDR)
    pair = {p.key: p for p in s.pairs}[(A_ADDR, hit)]
    assert pair.state == PairState.IN_PROGRESS  # its nomination check is under way
    assert pair.use_candidate
    assert pair.remote.from_birthday_spray
    assert pair.remote.kind == CandidateKind.PEER_REFLEXIVE
    ((nomination, destination, base),) = [out for out in s.datagrams_to_send() if out[1] == hit]
    assert (destination, base) == (hit, A_ADDR)
    assert stun.decode(nomination).get(AttributeType.USE_CANDIDATE) == b""
    # A path works: the spray stops (only the ordinary and the nomination checks go on).
    s.handle_timeout(0.05)
    assert {d for _, d, _ in s.datagrams_to_send()} <= {hit, HARD_SRFLX}
    s.handle_datagram(answer(nomination, A_ADDR, password), hit, 0.013, base=A_ADDR)
    assert s.result == Selected(host(A_ADDR), pair.remote)
    # Selected: the spray stops.
    s.handle_timeout(1.0)
    assert s.datagrams_to_send() == []


@settings(max_examples=40, deadline=None)
@given(
    first=st.integers(1, 65535),
    span=st.integers(1, 2000),
    share=st.floats(0.001, 1.0),
    seed=st.integers(0, 2**64),
    rate=st.sampled_from([250.0, 2000.0, 7919.0]),
)
def test_any_spray_is_distinct_in_range_reproducible_and_paced(
    first: int, span: int, share: float, seed: int, rate: float
) -> None:
    last = min(65535, first + span - 1)
    probes = max(1, int((last - first + 1) * share))
    spray = Birthday(
        BirthdayRole.SPRAY, remote_ip=HARD_IP, probes=probes, first_port=first, last_port=last,
        rate=rate, seed=seed,
    )  # fmt: skip
    ports = spray.draw_ports()
    assert len(ports) == len(set(ports)) == probes
    assert all(first <= port <= last for port in ports)
    assert spray.draw_ports() == ports
    s = session([host(A_ADDR)], [], controlling=True, timeout=probes / rate + 0.5, birthday=spray)
    sent = drive(s)
    assert [d for _, _, d in sent] == [(HARD_IP, port) for port in ports]
    assert [t for t, _, _ in sent] == pytest.approx([k / rate for k in range(probes)])
    assert s.pairs == []
    assert s.ignored == []


def test_spray_emits_every_probe_due_at_each_step() -> None:
    s = sprayer(probes=1000, seed=None, rate=2000.0)
    sent = drive(s, step=0.0125)  # a coarse clock: 25 probes are due per step
    per_step = Counter(t for t, _, d in sent if d != HARD_SRFLX)
    times = sorted(per_step)
    assert times[0] == 0.0
    cumulative = 0
    for t in times:
        cumulative += per_step[t]
        assert cumulative == min(1000, round(t * 2000) + 1)
    assert cumulative == 1000
    assert len({d for _, _, d in sent if d != HARD_SRFLX}) == 1000


def test_spray_skips_a_port_that_is_already_a_candidate() -> None:
    first = random.Random(7).sample(range(40000, 41000), 300)[0]
    spray = Birthday(
        BirthdayRole.SPRAY, remote_ip=HARD_IP, probes=300, first_port=40000, last_port=40999,
        seed=7,
    )  # fmt: skip
    known = Candidate.make(CandidateKind.SERVER_REFLEXIVE, (HARD_IP, first))
    s = session([host(A_ADDR)], [known], controlling=True, timeout=5.0, birthday=spray)
    sent = drive(s)
    assert sum(d == (HARD_IP, first) for _, _, d in sent) == 12  # the ordinary check only
    assert isinstance(s.result, Failed)
    assert s.result.reason.endswith(
        "birthday spray: 299 of 300 probes sent (1 skipped as known candidates))"
    )


def test_open_ports_pairs_extra_bases_with_reflexive_candidates_and_bursts() -> None:
    primary = ("10.0.0.2", 5000)
    extras = [("10.0.0.2", 6000 + i) for i in range(8)]
    remotes = [
        host(("10.1.0.2", 7000)),
        Candidate.make(CandidateKind.SERVER_REFLEXIVE, ("198.51.100.2", 7000)),
        Candidate.make(CandidateKind.PEER_REFLEXIVE, ("198.51.100.2", 7001)),
        Candidate.make(CandidateKind.RELAYED, ("203.0.113.3", 7002)),
    ]
    locals_ = [
        host(primary),
        Candidate.make(CandidateKind.SERVER_REFLEXIVE, ("198.51.100.1", 5000), base=primary),
        *(host(e) for e in extras),
    ]
    s = session(
        locals_, remotes, controlling=True, birthday=Birthday(BirthdayRole.OPEN_PORTS, rate=500.0)
    )
    assert [c.address for c in s.bases] == [primary, *extras]
    paired = {p.key for p in s.pairs}
    assert {key for key in paired if key[0] == primary} == {(primary, r.address) for r in remotes}
    reflexive = [remotes[1].address, remotes[2].address]
    assert {key for key in paired if key[0] != primary} == {
        (e, r) for e in extras for r in reflexive
    }
    first_sent: dict[tuple[Address, Address], float] = {}
    count: Counter[tuple[Address, Address]] = Counter()
    now = 0.0
    while s.result is None:
        s.handle_timeout(now)
        for _, destination, base in s.datagrams_to_send():
            first_sent.setdefault((base, destination), now)
            count[(base, destination)] += 1
        timer = s.get_timer()
        assert timer is not None or s.result is not None
        now = timer if timer is not None else now
    # The 16 extra pairs' first checks: one every 1/500 s from the start, in pairing order.
    burst = sorted(t for key, t in first_sent.items() if key[0] != primary)
    assert burst == pytest.approx([k / 500 for k in range(16)])
    # The primary base's 4 pairs: paced at Ta (20 ms), highest priority first.
    assert sorted(t for key, t in first_sent.items() if key[0] == primary) == pytest.approx(
        [0.0, 0.02, 0.04, 0.06]
    )
    # Then every check retransmits as usual.
    assert set(count.values()) == {12}
    assert len(count) == 20
    assert isinstance(s.result, Failed)
    assert s.result.reason.endswith("birthday: 8 extra ports open)")


def test_open_ports_stops_the_burst_and_its_retransmissions_at_the_first_success() -> None:
    primary = ("10.0.0.2", 5000)
    extras = [("10.0.0.2", 6000 + i) for i in range(8)]
    peer = Candidate.make(CandidateKind.SERVER_REFLEXIVE, ("198.51.100.2", 7000))
    s = session(
        [host(primary), *(host(e) for e in extras)], [peer], controlling=False,
        birthday=Birthday(BirthdayRole.OPEN_PORTS, rate=100.0),
    )  # fmt: skip
    s.handle_timeout(0.0)
    sent = s.datagrams_to_send()  # the primary's check and the first burst check
    assert [base for _, _, base in sent] == [primary, extras[0]]
    s.handle_timeout(0.01)
    (second,) = s.datagrams_to_send()
    assert second[2] == extras[1]
    # The peer answers the first extra base's check: the rest of the burst is dropped and the
    # other in-progress birthday check stops retransmitting.
    password = "password-of-B-0123456789"
    s.handle_datagram(answer(sent[1][0], ("198.51.100.1", 1), password), peer.address, 0.015)
    pairs = {p.key: p for p in s.pairs}
    assert pairs[(extras[0], peer.address)].state == PairState.SUCCEEDED
    later: list[Address] = []
    now = 0.02
    while now < 2.0:
        s.handle_timeout(now)
        later += [base for _, _, base in s.datagrams_to_send()]
        now += 0.01
    assert set(later) == {primary}  # only the ordinary check's retransmissions
    assert pairs[(extras[1], peer.address)].state == PairState.IN_PROGRESS
    assert all(pairs[(e, peer.address)].state == PairState.WAITING for e in extras[2:])
    # A late answer still counts; no "unknown transaction" line for it.
    s.handle_datagram(answer(second[0], ("198.51.100.1", 2), password), peer.address, 2.0)
    assert pairs[(extras[1], peer.address)].state == PairState.SUCCEEDED
    assert s.ignored == []


class BirthdayNat:
    """A (hard) behind a symmetric NAT: a fresh random public port (1024-65535, seeded) per
    (base, destination), and inbound only from that destination to that port. B (easy) behind a
    port-preserving NAT with address-and-port-dependent filtering: inbound only from an address
    B has sent to. ``drop_answers`` loses that many of A's first success responses."""

    HARD_PUBLIC = "198.51.100.1"
    EASY_PUBLIC = "198.51.100.2"

    def __init__(self, seed: int, *, drop_answers: int = 0) -> None:
        self.rng = random.Random(seed)
        self.hard: dict[tuple[Address, Address], int] = {}
        # The server-reflexive mapping (towards a STUN server) holds its port.
        self.hard_ports: dict[int, tuple[Address, Address]] = {40001: (("10.0.0.2", 5000), STUN)}
        self.easy_sent_to: set[Address] = set()
        self.sent: Counter[str] = Counter()
        self.drop_answers = drop_answers

    def __call__(
        self, sender: str, base: Address, destination: Address
    ) -> tuple[Address, Address] | None:
        self.sent[sender] += 1
        if sender == "A":
            port = self.hard.get((base, destination))
            if port is None:
                port = self.rng.randint(1024, 65535)
                while port in self.hard_ports:
                    port = self.rng.randint(1024, 65535)
                self.hard[(base, destination)] = port
                self.hard_ports[port] = (base, destination)
            source = (self.HARD_PUBLIC, port)
            if destination[0] != self.EASY_PUBLIC or source not in self.easy_sent_to:
                return None
            return source, ("10.0.1.2", destination[1])
        source = (self.EASY_PUBLIC, base[1])
        self.easy_sent_to.add(destination)
        mapped = self.hard_ports.get(destination[1]) if destination[0] == self.HARD_PUBLIC else None
        if mapped is None or mapped[1] != source:
            return None
        return source, mapped[0]


def birthday_sessions(
    *, birthday: bool, hard_controlling: bool, ports: int = BIRTHDAY_PORTS
) -> tuple[PunchSession, PunchSession]:
    hard_base = ("10.0.0.2", 5000)
    easy_base = ("10.0.1.2", 6000)
    hard_srflx = Candidate.make(
        CandidateKind.SERVER_REFLEXIVE, ("198.51.100.1", 40001), base=hard_base
    )
    easy_srflx = Candidate.make(
        CandidateKind.SERVER_REFLEXIVE, ("198.51.100.2", 6000), base=easy_base
    )
    extras = [host(("10.0.0.2", 20000 + i)) for i in range(ports)] if birthday else []
    spray = Birthday(BirthdayRole.SPRAY, remote_ip="198.51.100.1", seed=11)
    hard = session(
        [host(hard_base), hard_srflx, *extras], [host(easy_base), easy_srflx],
        controlling=hard_controlling, timeout=3.0,
        birthday=Birthday(BirthdayRole.OPEN_PORTS) if birthday else None,
    )  # fmt: skip
    easy = session(
        [host(easy_base), easy_srflx], [host(hard_base), hard_srflx],
        controlling=not hard_controlling, me="B", peer="A", timeout=3.0,
        birthday=spray if birthday else None,
    )  # fmt: skip
    return hard, easy


def test_without_birthday_a_symmetric_nat_behind_a_port_restricted_one_fails() -> None:
    hard, easy = birthday_sessions(birthday=False, hard_controlling=True)
    run(hard, easy, BirthdayNat(seed=1))
    assert isinstance(hard.result, Failed)
    assert isinstance(easy.result, Failed)


@pytest.mark.parametrize("hard_controlling", [True, False])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_birthday_punches_a_symmetric_nat_behind_a_port_restricted_one(
    seed: int, hard_controlling: bool
) -> None:
    hard, easy = birthday_sessions(birthday=True, hard_controlling=hard_controlling)
    nat = BirthdayNat(seed=seed)
    end = run(hard, easy, nat)
    assert isinstance(hard.result, Selected)
    assert isinstance(easy.result, Selected)
    # The easy side reached the hard side's NAT mapping of the winning base towards it.
    winner = hard.result.local.address
    assert hard.result.remote.address == ("198.51.100.2", 6000)
    assert easy.result.local.address == ("10.0.1.2", 6000)
    assert easy.result.remote.address == (
        "198.51.100.1",
        nat.hard[(winner, ("198.51.100.2", 6000))],
    )
    assert easy.result.remote.from_birthday_spray
    assert end < 3.0
    # Well within the budget (4096 probes; 256 * 12 extra checks): both sides stopped probing
    # at the first success, before the spray or even the opening burst was over.
    assert nat.sent["B"] < 1000
    assert nat.sent["A"] < BIRTHDAY_PORTS + 100


def test_a_spray_hit_whose_answer_is_lost_is_completed_by_the_triggered_check() -> None:
    hard, easy = birthday_sessions(birthday=True, hard_controlling=False, ports=64)

    lost: list[bytes] = []

    def lose_first_answer(sender: str, data: bytes) -> bool:
        """The hard side's first success response (to a spray probe: nothing else reaches it
        first) is lost."""
        if sender == "A" and not lost and stun.decode(data).message_class == MessageClass.SUCCESS:
            lost.append(data)
            return True
        return False

    run(hard, easy, BirthdayNat(seed=5), lose=lose_first_answer)
    assert len(lost) == 1
    assert isinstance(hard.result, Selected)
    assert isinstance(easy.result, Selected)
    assert easy.result.remote.from_birthday_spray
    won = {p.key: p for p in easy.pairs}[(easy.result.local.address, easy.result.remote.address)]
    assert won.state == PairState.SUCCEEDED
    # Won by an ordinary check of its own (triggered by the hard side's check), not by the
    # spray's transaction, whose answer was lost.
    assert won.request != b""
    assert stun.decode(won.request).transaction_id != stun.decode(lost[0]).transaction_id


# --- the asyncio shell -----------------------------------------------------------------------


def udp(ip: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, 0))
    sock.setblocking(False)
    return sock


async def punch_pair(a_sock: socket.socket, b_sock: socket.socket) -> tuple[bytes, bytes]:
    loop = asyncio.get_running_loop()
    a_host = Candidate.make(CandidateKind.HOST, a_sock.getsockname())
    b_host = Candidate.make(CandidateKind.HOST, b_sock.getsockname())
    nowhere = Candidate.make(CandidateKind.SERVER_REFLEXIVE, ("127.0.0.9", 9))
    a = session([a_host], [nowhere, b_host], controlling=True, now=loop.time())
    b = session([b_host], [a_host], controlling=False, me="B", peer="A", now=loop.time())
    selected = await asyncio.gather(punch(a_sock, a, timeout=5), punch(b_sock, b, timeout=5))
    assert selected[0].remote == b_host
    assert selected[1].remote == a_host
    await loop.sock_sendto(a_sock, b"first byte", selected[0].remote.address)
    data, source = await receive(b_sock, b, timeout=5)
    assert source == a_host.address
    await loop.sock_sendto(b_sock, data.upper(), source)
    back, _ = await receive(a_sock, a, timeout=5)
    return data, back


def test_punch_over_loopback_sockets() -> None:
    a_sock, b_sock = udp("127.0.0.1"), udp("127.0.0.2")
    with a_sock, b_sock:
        assert asyncio.run(punch_pair(a_sock, b_sock)) == (b"first byte", b"FIRST BYTE")


def test_punch_raises_punch_failed_when_nobody_answers() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with udp("127.0.0.1") as sock:
            s = PunchSession(
                [Candidate.make(CandidateKind.HOST, sock.getsockname())],
                [host(("127.0.0.1", 9))],
                controlling=True, local_ufrag="a", local_pwd="p" * 22, remote_ufrag="b",
                remote_pwd="q" * 22, now=loop.time(), timeout=0.3,
            )  # fmt: skip
            with pytest.raises(PunchFailed, match=r"no candidate pair selected within 0\.3 s"):
                await punch(sock, s)

    asyncio.run(main())


def test_punch_on_several_sockets_answers_from_the_socket_that_was_reached() -> None:
    """A opens three sockets (OPEN_PORTS); B reaches only the second one, by a one-port spray.
    The answer must leave from that very socket (B checks the source), and A's Selected names
    it; after closing the others, data flows on the winner."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        a_socks = [udp("127.0.0.1") for _ in range(3)]
        b_sock = udp("127.0.0.2")
        try:
            a_bases = [s.getsockname() for s in a_socks]
            b_base = b_sock.getsockname()
            hit = a_bases[1]
            nowhere = Candidate.make(CandidateKind.SERVER_REFLEXIVE, ("127.0.0.9", 9))
            a = session(
                [host(base) for base in a_bases], [nowhere], controlling=False, now=loop.time(),
                birthday=Birthday(BirthdayRole.OPEN_PORTS),
            )  # fmt: skip
            spray = Birthday(
                BirthdayRole.SPRAY, remote_ip="127.0.0.1", probes=1, first_port=hit[1],
                last_port=hit[1],
            )  # fmt: skip
            b = session(
                [host(b_base)], [], controlling=True, me="B", peer="A", now=loop.time(),
                birthday=spray,
            )  # fmt: skip
            sockets: Mapping[Address, socket.socket] = dict(zip(a_bases, a_socks, strict=True))
            with pytest.raises(PunchError, match=r"no socket given for the bases 127\.0\.0\.1:"):
                await punch({hit: a_socks[1]}, a)
            with pytest.raises(PunchError, match=r"not bases: 127\.0\.0\.9:9"):
                await punch({**sockets, ("127.0.0.9", 9): b_sock}, a)

            async def side_a() -> Selected:
                selected = await punch(sockets, a, timeout=5)
                for base, sock in sockets.items():
                    if base != selected.local.address:
                        sock.close()
                winner = {selected.local.address: sockets[selected.local.address]}
                winner[selected.local.address].sendto(b"first byte", selected.remote.address)
                assert await receive(winner, a, timeout=5) == (b"FIRST BYTE", b_base)
                return selected

            async def side_b() -> Selected:
                # B keeps answering A's checks in receive() after its own selection.
                selected = await punch(b_sock, b, timeout=5)
                data, source = await receive(b_sock, b, timeout=5)
                assert (data, source) == (b"first byte", selected.remote.address)
                b_sock.sendto(data.upper(), source)
                return selected

            a_selected, b_selected = await asyncio.gather(side_a(), side_b())
            assert a_selected.local == host(hit)
            assert a_selected.remote.address == b_base
            assert b_selected.remote.address == hit
            assert b_selected.remote.from_birthday_spray
            with pytest.raises(PunchError, match=r"the socket of base 127\.0\.0\.1:\d+ is closed"):
                await receive(sockets, a, timeout=1)
        finally:
            for sock in (*a_socks, b_sock):
                sock.close()

    asyncio.run(main())


def test_receive_times_out() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with udp("127.0.0.1") as sock:
            s = session([host(sock.getsockname())], [], controlling=True, now=loop.time())
            with pytest.raises(TimeoutError, match=r"no application datagram within 0\.05 s"):
                await receive(sock, s, timeout=0.05)

    asyncio.run(main())
