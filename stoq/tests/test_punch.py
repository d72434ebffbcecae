"""Hole punching: the sans-IO ICE-style checks of stoq.nat.punch and its asyncio shell."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stoq.nat import stun
from stoq.nat.punch import (
    Candidate,
    CandidateKind,
    Failed,
    PairState,
    PunchError,
    PunchFailed,
    PunchSession,
    Selected,
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
    )


Deliver = Callable[[str, Address], Address | None]


def direct_network(sender: str, destination: Address) -> Address | None:
    """A and B see each other's real address; anything else is lost. The source seen."""
    if sender == "A" and destination == B_ADDR:
        return A_ADDR
    if sender == "B" and destination == A_ADDR:
        return B_ADDR
    return None


def run(
    a: PunchSession,
    b: PunchSession,
    network: Deliver = direct_network,
    *,
    until: float = 10.0,
    noise: list[bytes] | None = None,
) -> float:
    """Step both sessions on a simulated clock until both have a result; the final time."""
    now = 0.0
    sides = {"A": a, "B": b}
    noise = list(noise or [])
    while now < until:
        progressed = True
        while progressed:
            progressed = False
            for name, side in sides.items():
                other = sides["B" if name == "A" else "A"]
                for data, destination in side.datagrams_to_send():
                    source = network(name, destination)
                    if source is not None:
                        progressed = True
                        other.handle_datagram(data, source, now)
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
    (sent,) = s.datagrams_to_send()
    return sent


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
    answer, destination = b.datagrams_to_send()[0]
    assert destination == ("198.51.100.7", 4242)
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


def nat_network(sender: str, destination: Address) -> Address | None:
    """B is behind a full-cone NAT: it is reached at 198.51.100.2:40000 and its packets come
    from there; A is public."""
    if sender == "A" and destination == ("198.51.100.2", 40000):
        return A_ADDR
    if sender == "B" and destination == A_ADDR:
        return ("198.51.100.2", 40000)
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
