"""Happy Eyeballs v2 (RFC 8305): the sans-IO core on a fake clock, and the asyncio driver.

The core is driven with explicit ``now`` values, so every delay is checked exactly without
sleeping. The driver is exercised with scripted resolvers and attempt coroutines gated by
asyncio events; those tests assert which addresses were tried, in which order, and what came
out, never how long anything took.
"""

from __future__ import annotations

import asyncio
import heapq
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stoq.errors import ConnectError, PeerRejected, ResolutionError
from stoq.happy_eyeballs import (
    DEFAULT_ATTEMPT_DELAY,
    DEFAULT_RESOLUTION_DELAY,
    Failed,
    HappyEyeballs,
    ResolvedAddress,
    StartAttempt,
    Succeeded,
    SystemResolver,
    Wait,
    race,
)

V6 = socket.AF_INET6
V4 = socket.AF_INET
SIX = ["2001:db8::1", "2001:db8::2", "2001:db8::3"]
FOUR = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]


def start(address: str) -> StartAttempt:
    family = V6 if ":" in address else V4
    return StartAttempt(address, family)


def fail_through(core: HappyEyeballs, now: float) -> list[str]:
    """Start attempts and fail each at once until the core stops starting; the order tried."""
    order: list[str] = []
    while isinstance(action := core.next_action(now), StartAttempt):
        order.append(action.address)
        core.attempt_failed(action.address, "refused", now)
    return order


# --- section 3: resolution delay ------------------------------------------------------------


def test_a_answer_first_waits_exactly_the_resolution_delay() -> None:
    core = HappyEyeballs()
    core.resolved(V4, FOUR[:1], 10.0)
    deadline = 10.0 + DEFAULT_RESOLUTION_DELAY
    assert core.next_action(10.0) == Wait(deadline)
    assert core.next_action(10.049) == Wait(deadline)
    assert core.next_action(deadline) == start(FOUR[0])


def test_aaaa_answer_during_the_resolution_delay_goes_first() -> None:
    core = HappyEyeballs()
    core.resolved(V4, FOUR[:1], 0.0)
    assert core.next_action(0.0) == Wait(DEFAULT_RESOLUTION_DELAY)
    core.resolved(V6, SIX[:1], 0.03)
    assert core.next_action(0.03) == start(SIX[0])


def test_negative_aaaa_answer_ends_the_resolution_delay_at_once() -> None:
    core = HappyEyeballs()
    core.resolved(V4, FOUR[:1], 0.0)
    core.resolution_failed(V6, "NXDOMAIN", 0.01)
    assert core.next_action(0.01) == start(FOUR[0])


def test_aaaa_answer_first_starts_at_once() -> None:
    core = HappyEyeballs()
    assert core.next_action(0.0) == Wait(None)
    core.resolved(V6, SIX[:1], 0.2)
    assert core.next_action(0.2) == start(SIX[0])


def test_empty_aaaa_then_a_starts_ipv4_at_once() -> None:
    core = HappyEyeballs()
    core.resolved(V6, [], 0.0)
    assert core.next_action(0.0) == Wait(None)
    core.resolved(V4, FOUR[:1], 0.5)
    assert core.next_action(0.5) == start(FOUR[0])


def test_with_ipv4_preferred_the_aaaa_answer_waits_for_a() -> None:
    core = HappyEyeballs(prefer_ipv6=False)
    core.resolved(V6, SIX[:1], 1.0)
    assert core.next_action(1.0) == Wait(1.0 + DEFAULT_RESOLUTION_DELAY)
    core.resolved(V4, FOUR[:1], 1.01)
    assert core.next_action(1.01) == start(FOUR[0])


# --- section 4: interleaving ----------------------------------------------------------------


def test_three_and_three_addresses_interleave_ipv6_first() -> None:
    core = HappyEyeballs()
    core.resolved(V6, SIX, 0.0)
    core.resolved(V4, FOUR, 0.0)
    assert fail_through(core, 0.0) == [SIX[0], FOUR[0], SIX[1], FOUR[1], SIX[2], FOUR[2]]


def test_first_address_family_count_two() -> None:
    core = HappyEyeballs(first_family_count=2)
    core.resolved(V6, SIX, 0.0)
    core.resolved(V4, FOUR, 0.0)
    assert fail_through(core, 0.0) == [SIX[0], SIX[1], FOUR[0], SIX[2], FOUR[1], FOUR[2]]


def test_ipv4_preferred_interleaves_ipv4_first() -> None:
    core = HappyEyeballs(prefer_ipv6=False)
    core.resolved(V4, FOUR[:2], 0.0)
    core.resolved(V6, SIX, 0.0)
    assert fail_through(core, 0.0) == [FOUR[0], SIX[0], FOUR[1], SIX[1], SIX[2]]


def test_a_family_that_runs_out_leaves_the_other_in_order() -> None:
    core = HappyEyeballs()
    core.resolved(V6, SIX[:1], 0.0)
    core.resolved(V4, FOUR, 0.0)
    assert fail_through(core, 0.0) == [SIX[0], *FOUR]


def test_literal_addresses_need_no_resolution_and_are_deduplicated() -> None:
    core = HappyEyeballs.for_addresses([FOUR[0], SIX[0], FOUR[0], FOUR[1]], 3.0)
    assert fail_through(core, 3.0) == [SIX[0], FOUR[0], FOUR[1]]
    action = core.next_action(3.0)
    assert isinstance(action, Failed)
    assert [address for address, _ in action.attempts] == [SIX[0], FOUR[0], FOUR[1]]


# --- section 5: racing ----------------------------------------------------------------------


def test_next_attempt_starts_after_the_attempt_delay_while_the_first_is_pending() -> None:
    core = HappyEyeballs()
    core.resolved(V6, SIX[:1], 0.0)
    core.resolved(V4, FOUR[:2], 0.0)
    assert core.next_action(0.0) == start(SIX[0])
    assert core.next_action(0.0) == Wait(DEFAULT_ATTEMPT_DELAY)
    assert core.next_action(0.2) == Wait(DEFAULT_ATTEMPT_DELAY)
    assert core.next_action(DEFAULT_ATTEMPT_DELAY) == start(FOUR[0])
    assert core.next_action(DEFAULT_ATTEMPT_DELAY) == Wait(2 * DEFAULT_ATTEMPT_DELAY)
    # The first attempt is still running and may still win.
    core.attempt_succeeded(SIX[0], 0.3)
    assert core.next_action(0.3) == Succeeded(SIX[0])


def test_a_failure_starts_the_next_attempt_at_once() -> None:
    core = HappyEyeballs(attempt_delay=1.0)
    core.resolved(V6, SIX[:1], 0.0)
    core.resolved(V4, FOUR[:1], 0.0)
    assert core.next_action(0.0) == start(SIX[0])
    core.attempt_failed(SIX[0], "unreachable", 0.1)
    assert core.next_action(0.1) == start(FOUR[0])


def test_a_failure_of_an_older_attempt_also_starts_the_next() -> None:
    core = HappyEyeballs()
    core.resolved(V6, SIX, 0.0)
    core.resolved(V4, FOUR[:1], 0.0)
    assert core.next_action(0.0) == start(SIX[0])
    assert core.next_action(0.25) == start(FOUR[0])
    core.attempt_failed(SIX[0], "timeout", 0.3)
    assert core.next_action(0.3) == start(SIX[1])
    assert core.next_action(0.3) == Wait(0.3 + DEFAULT_ATTEMPT_DELAY)


def test_late_aaaa_answer_merges_interleaved_into_what_is_left() -> None:
    core = HappyEyeballs()
    core.resolved(V4, FOUR, 0.0)
    assert core.next_action(DEFAULT_RESOLUTION_DELAY) == start(FOUR[0])
    core.resolved(V6, SIX[:2], 0.1)
    first = DEFAULT_RESOLUTION_DELAY
    assert core.next_action(0.1) == Wait(first + DEFAULT_ATTEMPT_DELAY)
    order = []
    now = 0.1
    while True:
        action = core.next_action(now)
        if isinstance(action, StartAttempt):
            order.append(action.address)
        elif isinstance(action, Wait) and action.until is not None:
            now = action.until
        else:
            break
    assert order == [SIX[0], FOUR[1], SIX[1], FOUR[2]]


def test_late_aaaa_answer_after_the_delay_passed_starts_at_once() -> None:
    core = HappyEyeballs()
    core.resolved(V4, FOUR[:1], 0.0)
    assert core.next_action(0.05) == start(FOUR[0])
    assert core.next_action(0.05) == Wait(None)
    core.resolved(V6, SIX[:1], 0.9)
    assert core.next_action(0.9) == start(SIX[0])


def test_first_success_wins_and_later_outcomes_do_not_change_it() -> None:
    core = HappyEyeballs.for_addresses([SIX[0], FOUR[0]], 0.0)
    assert core.next_action(0.0) == start(SIX[0])
    assert core.next_action(0.25) == start(FOUR[0])
    core.attempt_succeeded(FOUR[0], 0.3)
    core.attempt_succeeded(SIX[0], 0.3)
    assert core.next_action(0.3) == Succeeded(FOUR[0])


def test_all_attempts_failing_lists_every_address_with_its_reason() -> None:
    core = HappyEyeballs()
    core.resolved(V6, SIX[:2], 0.0)
    core.resolved(V4, FOUR[:2], 0.0)
    now = 0.0
    for _ in range(4):
        action = core.next_action(now)
        assert isinstance(action, StartAttempt)
        core.attempt_failed(action.address, f"refused by {action.address}", now)
        now += 0.01
    assert core.next_action(now) == Failed(
        attempts=tuple(
            (address, f"refused by {address}") for address in [SIX[0], FOUR[0], SIX[1], FOUR[1]]
        )
    )


def test_pending_query_keeps_the_core_waiting_after_all_attempts_failed() -> None:
    core = HappyEyeballs()
    core.resolved(V6, SIX[:1], 0.0)
    assert fail_through(core, 0.0) == [SIX[0]]
    assert core.next_action(0.0) == Wait(None)
    core.resolution_failed(V4, "SERVFAIL", 0.4)
    assert core.next_action(0.4) == Failed(
        attempts=((SIX[0], "refused"),), resolution_errors=(("A", "SERVFAIL"),)
    )


def test_no_address_at_all_fails_with_both_query_errors() -> None:
    core = HappyEyeballs()
    core.resolution_failed(V6, "NXDOMAIN", 0.0)
    core.resolved(V4, [], 0.1)
    assert core.next_action(0.1) == Failed(
        attempts=(), resolution_errors=(("AAAA", "NXDOMAIN"), ("A", "no addresses"))
    )


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [0.0, 0.099, 2.001, 10.0, -0.25, float("nan"), float("inf")])
def test_attempt_delay_outside_the_rfc_range_is_refused(delay: float) -> None:
    with pytest.raises(ValueError, match="attempt_delay"):
        HappyEyeballs(attempt_delay=delay)


@pytest.mark.parametrize("delay", [0.1, 0.25, 2.0])
def test_attempt_delay_bounds_are_accepted(delay: float) -> None:
    core = HappyEyeballs.for_addresses(SIX[:2], 0.0, attempt_delay=delay)
    assert core.next_action(0.0) == start(SIX[0])
    assert core.next_action(0.0) == Wait(delay)


@pytest.mark.parametrize("delay", [-0.01, 2.5, float("nan")])
def test_bad_resolution_delay_is_refused(delay: float) -> None:
    with pytest.raises(ValueError, match="resolution_delay"):
        HappyEyeballs(resolution_delay=delay)


def test_misuse_is_refused() -> None:
    core = HappyEyeballs()
    with pytest.raises(ValueError, match="not an address of the AAAA"):
        core.resolved(V6, FOUR[:1], 0.0)
    core.resolved(V6, SIX[:1], 0.0)
    with pytest.raises(ValueError, match="no AAAA query is pending"):
        core.resolved(V6, SIX[1:2], 0.0)
    with pytest.raises(ValueError, match="no attempt to"):
        core.attempt_failed(SIX[0], "never started", 0.0)
    with pytest.raises(ValueError, match="time went backwards"):
        core.next_action(-1.0)
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        core.add_addresses(["node1.bank.hypermesh"], 0.0)
    with pytest.raises(ValueError, match="first_family_count"):
        HappyEyeballs(first_family_count=0)


# --- property: any arrival pattern, any outcomes ---------------------------------------------

V6_POOL = [f"2001:db8::{n}" for n in range(1, 6)]
V4_POOL = [f"192.0.2.{n}" for n in range(1, 6)]


@dataclass(order=True)
class Event:
    time: float
    seq: int
    kind: str = field(compare=False)
    address: str = field(compare=False, default="")
    success: bool = field(compare=False, default=False)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, object]:
    millis = st.integers(min_value=0, max_value=800).map(lambda ms: ms / 1000)
    return {
        "v6": draw(st.lists(st.sampled_from(V6_POOL), max_size=4, unique=True)),
        "v4": draw(st.lists(st.sampled_from(V4_POOL), max_size=4, unique=True)),
        "aaaa_at": draw(millis),
        "a_at": draw(millis),
        "aaaa_first_on_tie": draw(st.booleans()),
        "outcomes": {address: (draw(st.booleans()), draw(millis)) for address in V6_POOL + V4_POOL},
        "prefer_ipv6": draw(st.booleans()),
        "attempt_delay": draw(st.sampled_from([0.1, 0.25, 0.5, 2.0])),
        "first_family_count": draw(st.integers(min_value=1, max_value=3)),
    }


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_property_each_address_once_preferred_first_and_termination(
    scenario: dict[str, object],
) -> None:
    v6 = scenario["v6"]
    v4 = scenario["v4"]
    outcomes = scenario["outcomes"]
    aaaa_at = scenario["aaaa_at"]
    a_at = scenario["a_at"]
    prefer_ipv6 = scenario["prefer_ipv6"]
    attempt_delay = scenario["attempt_delay"]
    assert isinstance(v6, list)
    assert isinstance(v4, list)
    assert isinstance(outcomes, dict)
    assert isinstance(aaaa_at, float)
    assert isinstance(a_at, float)
    assert isinstance(prefer_ipv6, bool)
    assert isinstance(attempt_delay, float)
    first_family_count = scenario["first_family_count"]
    assert isinstance(first_family_count, int)
    core = HappyEyeballs(
        attempt_delay=attempt_delay,
        prefer_ipv6=prefer_ipv6,
        first_family_count=first_family_count,
    )
    seq = 0
    queue: list[Event] = []

    def schedule(time: float, kind: str, address: str = "", success: bool = False) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(queue, Event(time, seq, kind, address, success))

    if scenario["aaaa_first_on_tie"]:
        schedule(aaaa_at, "aaaa")
        schedule(a_at, "a")
    else:
        schedule(a_at, "a")
        schedule(aaaa_at, "aaaa")

    started: list[tuple[float, str, socket.AddressFamily]] = []
    running: set[str] = set()
    failed_since_start = False
    first_success: str | None = None
    answered: dict[str, float] = {}
    now = 0.0
    final: Succeeded | Failed | None = None
    for _ in range(500):
        action = core.next_action(now)
        if isinstance(action, StartAttempt):
            assert action.address not in {address for _, address, _ in started}
            if started and running and not failed_since_start:
                assert now >= started[-1][0] + attempt_delay
            started.append((now, action.address, action.family))
            running.add(action.address)
            failed_since_start = False
            success, duration = outcomes[action.address]
            schedule(now + duration, "outcome", action.address, success)
            continue
        if isinstance(action, (Succeeded, Failed)):
            final = action
            break
        next_event = queue[0].time if queue else None
        assert action.until is not None or next_event is not None, "waiting for nothing"
        if action.until is not None and (next_event is None or action.until < next_event):
            assert action.until > now
            now = action.until
            continue
        assert next_event is not None
        now = next_event
        while queue and queue[0].time == now:
            event = heapq.heappop(queue)
            if event.kind == "aaaa":
                core.resolved(V6, v6, now)
                answered["aaaa"] = now
            elif event.kind == "a":
                core.resolved(V4, v4, now)
                answered["a"] = now
            elif event.success:
                core.attempt_succeeded(event.address, now)
                running.discard(event.address)
                first_success = first_success or event.address
            else:
                core.attempt_failed(event.address, f"no {event.address}", now)
                running.discard(event.address)
                failed_since_start = True
    assert final is not None, "the core did not terminate"

    tried = [address for _, address, _ in started]
    assert set(tried) <= set(v6) | set(v4)
    if isinstance(final, Succeeded):
        assert final.address == first_success
    else:
        assert first_success is None
        assert set(tried) == set(v6) | set(v4)
        assert final.attempts == tuple((address, f"no {address}") for address in tried)

    preferred, other = (v6, v4) if prefer_ipv6 else (v4, v6)
    preferred_at = aaaa_at if prefer_ipv6 else a_at
    other_at = a_at if prefer_ipv6 else aaaa_at
    preferred_in_time = preferred_at <= other_at + DEFAULT_RESOLUTION_DELAY or not other
    if preferred and started and preferred_in_time:
        assert started[0][1] in preferred
        assert all(address in preferred for address in tried[:first_family_count][: len(preferred)])


# --- the asyncio driver -----------------------------------------------------------------------


class ScriptedResolver:
    """Answers from a script: per (host, family) a list of addresses or an exception to raise,
    released when the matching gate (if any) is set."""

    def __init__(
        self,
        answers: dict[tuple[str, socket.AddressFamily], list[str] | BaseException],
        gates: dict[tuple[str, socket.AddressFamily], asyncio.Event] | None = None,
    ) -> None:
        self.answers = answers
        self.gates = gates or {}
        self.calls: list[tuple[str, int, socket.AddressFamily]] = []
        self.cancelled: list[tuple[str, socket.AddressFamily]] = []

    async def resolve(self, host: str, port: int, family: socket.AddressFamily) -> list[str]:
        self.calls.append((host, port, family))
        gate = self.gates.get((host, family))
        if gate is not None:
            try:
                await gate.wait()
            except asyncio.CancelledError:
                self.cancelled.append((host, family))
                raise
        answer = self.answers[(host, family)]
        if isinstance(answer, BaseException):
            raise answer
        return answer


class NoResolver:
    async def resolve(self, host: str, port: int, family: socket.AddressFamily) -> list[str]:
        raise AssertionError(f"resolver called for {host}")


@dataclass
class Conn:
    address: ResolvedAddress
    closed: bool = False

    async def close(self) -> None:
        self.closed = True


Behaviour = Callable[[ResolvedAddress], Awaitable[Conn]]


class Attempts:
    """Scripted attempts: per address a behaviour; records starts, cancellations, results."""

    def __init__(self, behaviours: dict[str, Behaviour]) -> None:
        self.behaviours = behaviours
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.produced: list[Conn] = []
        self.started_event: dict[str, asyncio.Event] = {a: asyncio.Event() for a in behaviours}

    async def __call__(self, address: ResolvedAddress) -> Conn:
        self.started.append(address.host)
        self.started_event[address.host].set()
        try:
            conn = await self.behaviours[address.host](address)
        except asyncio.CancelledError:
            self.cancelled.append(address.host)
            raise
        self.produced.append(conn)
        return conn


async def succeed(address: ResolvedAddress) -> Conn:
    return Conn(address)


async def refuse(address: ResolvedAddress) -> Conn:
    raise ConnectionRefusedError(111, f"Connection refused by {address.host}")


async def hang(address: ResolvedAddress) -> Conn:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def test_literal_ipv6_and_ipv4_hosts_skip_the_resolver() -> None:
    async def scenario() -> None:
        for host, expected in [
            ("::1", ResolvedAddress(V6, "::1", 4433)),
            ("[::1]", ResolvedAddress(V6, "::1", 4433)),
            ("127.0.0.1", ResolvedAddress(V4, "127.0.0.1", 4433)),
        ]:
            attempts = Attempts({expected.host: succeed})
            conn, winner = await race(host, 4433, attempts, resolver=NoResolver())
            assert winner == expected
            assert conn.address == expected
            assert attempts.started == [expected.host]

    asyncio.run(scenario())


def test_a_list_of_literals_is_raced_ipv6_first() -> None:
    async def scenario() -> None:
        attempts = Attempts({"127.0.0.1": succeed, "::1": refuse})
        conn, winner = await race(["127.0.0.1", "::1"], 9, attempts, resolver=NoResolver())
        assert attempts.started == ["::1", "127.0.0.1"]
        assert winner == ResolvedAddress(V4, "127.0.0.1", 9)
        assert not conn.closed

    asyncio.run(scenario())


def test_names_are_resolved_with_one_aaaa_and_one_a_query() -> None:
    async def scenario() -> None:
        resolver = ScriptedResolver({("node", V6): SIX[:2], ("node", V4): FOUR[:1]})
        attempts = Attempts({SIX[0]: refuse, SIX[1]: succeed, FOUR[0]: refuse})
        _, winner = await race("node", 4433, attempts, resolver=resolver)
        assert sorted(resolver.calls) == sorted([("node", 4433, V6), ("node", 4433, V4)])
        assert attempts.started == [SIX[0], FOUR[0], SIX[1]]
        assert winner == ResolvedAddress(V6, SIX[1], 4433)

    asyncio.run(scenario())


def test_a_pending_attempt_is_cancelled_when_another_wins() -> None:
    async def scenario() -> None:
        attempts = Attempts({SIX[0]: hang, FOUR[0]: succeed})
        conn, winner = await race(
            [SIX[0], FOUR[0]], 443, attempts, attempt_delay=0.1, resolver=NoResolver()
        )
        assert winner.host == FOUR[0]
        assert conn.address.host == FOUR[0]
        assert attempts.started == [SIX[0], FOUR[0]]
        assert attempts.cancelled == [SIX[0]]

    asyncio.run(scenario())


def test_a_second_success_is_closed_not_leaked() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def gated(address: ResolvedAddress) -> Conn:
            await release.wait()
            return Conn(address)

        async def release_and_succeed(address: ResolvedAddress) -> Conn:
            release.set()
            return Conn(address)

        attempts = Attempts({SIX[0]: gated, FOUR[0]: release_and_succeed})
        conn, winner = await race(
            [SIX[0], FOUR[0]], 443, attempts, attempt_delay=0.1, resolver=NoResolver()
        )
        assert len(attempts.produced) == 2
        (loser,) = [c for c in attempts.produced if c is not conn]
        assert loser.closed
        assert not conn.closed
        assert conn.address == winner

    asyncio.run(scenario())


def test_every_attempt_failing_raises_connect_error_naming_each_address() -> None:
    async def scenario() -> None:
        resolver = ScriptedResolver({("node", V6): SIX[:1], ("node", V4): FOUR[:2]})

        async def rejected(address: ResolvedAddress) -> Conn:
            raise PeerRejected(f"{address.host} presented an untrusted chain")

        async def timeout(address: ResolvedAddress) -> Conn:
            raise TimeoutError

        attempts = Attempts({SIX[0]: refuse, FOUR[0]: rejected, FOUR[1]: timeout})
        with pytest.raises(ConnectError) as info:
            await race("node", 4433, attempts, resolver=resolver)
        assert type(info.value) is ConnectError
        assert [address for address, _ in info.value.attempts] == [SIX[0], FOUR[0], FOUR[1]]
        reasons = dict(info.value.attempts)
        assert reasons[SIX[0]].startswith("ConnectionRefusedError")
        assert reasons[FOUR[0]] == f"PeerRejected: {FOUR[0]} presented an untrusted chain"
        assert reasons[FOUR[1]] == "TimeoutError"
        message = str(info.value)
        assert "node port 4433" in message
        for address in (SIX[0], FOUR[0], FOUR[1]):
            assert address in message

    asyncio.run(scenario())


def test_no_address_resolved_raises_resolution_error_naming_both_queries() -> None:
    async def scenario() -> None:
        resolver = ScriptedResolver(
            {
                ("ghost.bank.hypermesh", V6): socket.gaierror(
                    socket.EAI_NONAME, "Name or service not known"
                ),
                ("ghost.bank.hypermesh", V4): [],
            }
        )
        with pytest.raises(ResolutionError) as info:
            await race("ghost.bank.hypermesh", 4433, Attempts({}), resolver=resolver)
        assert info.value.attempts == ()
        message = str(info.value)
        assert "ghost.bank.hypermesh" in message
        assert "AAAA: gaierror" in message
        assert "Name or service not known" in message
        assert "A: no A records" in message

    asyncio.run(scenario())


def test_when_aaaa_never_answers_ipv4_goes_ahead_and_the_query_is_cancelled() -> None:
    async def scenario() -> None:
        never = asyncio.Event()
        resolver = ScriptedResolver(
            {("node", V6): SIX[:1], ("node", V4): FOUR[:1]}, gates={("node", V6): never}
        )
        attempts = Attempts({FOUR[0]: succeed, SIX[0]: succeed})
        _, winner = await race("node", 4433, attempts, resolver=resolver)
        assert winner.host == FOUR[0]
        assert attempts.started == [FOUR[0]]
        assert resolver.cancelled == [("node", V6)]

    asyncio.run(scenario())


def test_a_late_aaaa_answer_joins_the_race() -> None:
    async def scenario() -> None:
        aaaa_gate = asyncio.Event()
        resolver = ScriptedResolver(
            {("node", V6): SIX[:1], ("node", V4): FOUR[:2]}, gates={("node", V6): aaaa_gate}
        )

        async def release_aaaa_then_hang(address: ResolvedAddress) -> Conn:
            aaaa_gate.set()
            return await hang(address)

        attempts = Attempts({FOUR[0]: release_aaaa_then_hang, SIX[0]: succeed, FOUR[1]: hang})
        _, winner = await race("node", 4433, attempts, attempt_delay=0.1, resolver=resolver)
        assert attempts.started == [FOUR[0], SIX[0]]
        assert winner.host == SIX[0]
        assert attempts.cancelled == [FOUR[0]]

    asyncio.run(scenario())


def test_programming_errors_in_an_attempt_propagate_and_cancel_the_rest() -> None:
    async def scenario() -> None:
        async def broken(address: ResolvedAddress) -> Conn:
            raise KeyError("bug")

        attempts = Attempts({SIX[0]: hang, FOUR[0]: broken})
        with pytest.raises(KeyError, match="bug"):
            await race([SIX[0], FOUR[0]], 1, attempts, attempt_delay=0.1, resolver=NoResolver())
        assert attempts.cancelled == [SIX[0]]

    asyncio.run(scenario())


def test_cancelling_the_race_cancels_its_attempts_and_queries() -> None:
    async def scenario() -> None:
        never = asyncio.Event()
        resolver = ScriptedResolver(
            {("node", V6): SIX[:1], ("node", V4): FOUR[:1]}, gates={("node", V4): never}
        )
        attempts = Attempts({SIX[0]: hang})
        task = asyncio.create_task(race("node", 4433, attempts, resolver=resolver))
        await attempts.started_event[SIX[0]].wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert attempts.cancelled == [SIX[0]]
        assert resolver.cancelled == [("node", V4)]

    asyncio.run(scenario())


def test_programming_errors_in_a_resolver_propagate() -> None:
    async def scenario() -> None:
        resolver = ScriptedResolver({("node", V6): SIX[:1], ("node", V4): ZeroDivisionError()})
        with pytest.raises(ZeroDivisionError):
            await race("node", 1, Attempts({SIX[0]: hang}), resolver=resolver)

    asyncio.run(scenario())


def test_driver_validates_its_arguments() -> None:
    async def scenario() -> None:
        with pytest.raises(ValueError, match="no host"):
            await race([], 1, Attempts({}))
        with pytest.raises(ValueError, match="port"):
            await race("::1", 0, Attempts({}))
        with pytest.raises(ValueError, match="attempt_delay"):
            await race("::1", 1, Attempts({}), attempt_delay=0.01)

    asyncio.run(scenario())


def test_system_resolver_reads_the_hosts_database() -> None:
    addresses = asyncio.run(SystemResolver().resolve("localhost", 80, V4))
    assert "127.0.0.1" in addresses


def test_system_resolver_refuses_an_unencodable_name() -> None:
    with pytest.raises(ResolutionError, match="not a valid host name"):
        asyncio.run(SystemResolver().resolve("x" * 70 + ".hypermesh", 80, V4))


def test_resolved_address_sockaddr() -> None:
    assert ResolvedAddress(V4, "192.0.2.1", 4433).sockaddr == ("192.0.2.1", 4433)
    assert ResolvedAddress(V6, "2001:db8::1", 4433).sockaddr == ("2001:db8::1", 4433, 0, 0)
    assert ResolvedAddress(V6, "fe80::1%3", 4433).sockaddr == ("fe80::1%3", 4433, 0, 3)
