"""Happy Eyeballs version 2 (RFC 8305): race a host's IPv6 and IPv4 addresses, first success wins.

Two layers:

* :class:`HappyEyeballs` is the sans-IO core. It owns no clock and no socket: the caller feeds it
  DNS answers and attempt outcomes, each stamped with the caller's monotonic time ``now`` (in
  seconds), and asks :meth:`HappyEyeballs.next_action` what to do. The answer is one of
  :class:`StartAttempt` (start connecting to that address now), :class:`Wait` (call again at
  ``until``, or when the next input arrives if ``until`` is None), :class:`Succeeded` or
  :class:`Failed`.
* :func:`race` is the asyncio driver: it resolves names (AAAA and A queries concurrently), runs
  the caller's ``attempt`` coroutine per address as the core says, cancels the rest when one
  wins and raises :class:`~stoq.errors.ConnectError` (or :class:`~stoq.errors.ResolutionError`)
  when none does.

The rules, with the RFC section each comes from:

* Section 3, resolution: when the preferred family's answer (AAAA, unless ``prefer_ipv6`` is
  False) arrives first, attempts start at once. When only the other family's answer is in, the
  core waits the Resolution Delay (default 50 ms) for the preferred one; a negative preferred
  answer inside that window ends the wait at once.
* Section 4, ordering: within a family, addresses keep the order the resolver gave (the system
  resolver already sorts them by RFC 6724). Families are interleaved: First Address Family Count
  (default 1) addresses of the preferred family, then alternating. Addresses that arrive while
  attempts are under way join the not-yet-attempted ones, still interleaved: the next attempt
  takes the family other than the last attempt's whenever both have addresses left.
* Section 5, racing: the next attempt starts when an attempt fails, or when the Connection
  Attempt Delay (default 250 ms, allowed range 100 ms to 2 s) has passed since the last attempt
  started, whichever comes first. Earlier attempts keep running; the first success wins.

Addresses are IP literals as text (``"2001:db8::1"``, ``"192.0.2.1"``); each one is attempted at
most once even if several answers carry it.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import math
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, runtime_checkable

from stoq.errors import ConnectError, ResolutionError, StoqError

__all__ = [
    "DEFAULT_ATTEMPT_DELAY",
    "DEFAULT_RESOLUTION_DELAY",
    "MAX_ATTEMPT_DELAY",
    "MIN_ATTEMPT_DELAY",
    "Action",
    "Failed",
    "HappyEyeballs",
    "ResolvedAddress",
    "Resolver",
    "StartAttempt",
    "Succeeded",
    "SystemResolver",
    "Wait",
    "race",
]

logger = logging.getLogger(__name__)

#: RFC 8305 section 5: the recommended Connection Attempt Delay and its recommended bounds.
DEFAULT_ATTEMPT_DELAY = 0.25
MIN_ATTEMPT_DELAY = 0.1
MAX_ATTEMPT_DELAY = 2.0
#: RFC 8305 section 3: how long an A answer waits for the AAAA answer.
DEFAULT_RESOLUTION_DELAY = 0.05

#: What an attempt (or a query) may fail with and still count as that address failing. Anything
#: else is a programming error and propagates out of :func:`race`.
CONNECT_FAILURES: tuple[type[BaseException], ...] = (StoqError, OSError, asyncio.TimeoutError)

_FAMILIES = (socket.AF_INET6, socket.AF_INET)


def _query_name(family: socket.AddressFamily) -> str:
    """The DNS query that answers for ``family``: "AAAA" or "A"."""
    return "AAAA" if family == socket.AF_INET6 else "A"


def _check_family(family: socket.AddressFamily) -> None:
    if family not in _FAMILIES:
        raise ValueError(f"family must be AF_INET6 or AF_INET, not {family!r}")


def _literal_family(address: str) -> socket.AddressFamily:
    """The family of IP literal ``address``; ValueError if it is not one."""
    parsed = ipaddress.ip_address(address)
    return socket.AF_INET6 if parsed.version == 6 else socket.AF_INET


# --- the sans-IO core ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StartAttempt:
    """Start a connection attempt to ``address`` (of ``family``) now.

    Returning this commits the core: the attempt counts as running from the ``now`` passed to
    :meth:`HappyEyeballs.next_action`, and the caller must report its outcome.
    """

    address: str
    family: socket.AddressFamily


@dataclass(frozen=True)
class Wait:
    """Nothing to do until time ``until`` (same clock as ``now``), or until the next input when
    ``until`` is None. An input that arrives earlier may make new work: ask again after it."""

    until: float | None


@dataclass(frozen=True)
class Succeeded:
    """The attempt to ``address`` succeeded first; the caller cancels every other attempt."""

    address: str


@dataclass(frozen=True)
class Failed:
    """Every attempt failed and every query has answered.

    ``attempts``: each address tried, in the order attempts started, with its failure reason.
    ``resolution_errors``: each query that failed or came back empty, as (query, reason) where
    query is "AAAA" or "A".
    """

    attempts: tuple[tuple[str, str], ...]
    resolution_errors: tuple[tuple[str, str], ...] = ()


Action = StartAttempt | Wait | Succeeded | Failed


class HappyEyeballs:
    """The RFC 8305 state machine for one connection (see the module docstring for the rules).

    ``names`` is how many host names are being resolved; each has one AAAA and one A query whose
    answer the caller reports with :meth:`resolved` or :meth:`resolution_failed`. Literal
    addresses (no resolution) go in through :meth:`add_addresses`, or build the core with
    :meth:`for_addresses`. Times passed as ``now`` must never decrease.

    An input that contradicts the state (an answer to a query that is not pending, an outcome
    for an attempt that is not running, an address that is not an IP literal of the query's
    family, time going backwards) is a caller bug: it raises ValueError and changes nothing.
    """

    def __init__(
        self,
        *,
        names: int = 1,
        attempt_delay: float = DEFAULT_ATTEMPT_DELAY,
        resolution_delay: float = DEFAULT_RESOLUTION_DELAY,
        prefer_ipv6: bool = True,
        first_family_count: int = 1,
    ) -> None:
        if not MIN_ATTEMPT_DELAY <= attempt_delay <= MAX_ATTEMPT_DELAY:
            raise ValueError(
                f"attempt_delay must be between {MIN_ATTEMPT_DELAY} and {MAX_ATTEMPT_DELAY} "
                f"seconds (RFC 8305 section 5), got {attempt_delay!r}"
            )
        if not 0.0 <= resolution_delay <= MAX_ATTEMPT_DELAY:
            raise ValueError(
                f"resolution_delay must be between 0 and {MAX_ATTEMPT_DELAY} seconds, "
                f"got {resolution_delay!r}"
            )
        if names < 0:
            raise ValueError(f"names must be >= 0, got {names}")
        if first_family_count < 1:
            raise ValueError(f"first_family_count must be >= 1, got {first_family_count}")
        self._attempt_delay = attempt_delay
        self._resolution_delay = resolution_delay
        self._first_family_count = first_family_count
        self._preferred = socket.AF_INET6 if prefer_ipv6 else socket.AF_INET
        self._other = socket.AF_INET if prefer_ipv6 else socket.AF_INET6
        self._pending = {socket.AF_INET6: names, socket.AF_INET: names}
        self._remaining: dict[socket.AddressFamily, list[str]] = {
            socket.AF_INET6: [],
            socket.AF_INET: [],
        }
        self._seen: set[str] = set()
        self._other_since: float | None = None
        self._started = False
        self._order: list[tuple[str, socket.AddressFamily]] = []
        self._running: set[str] = set()
        self._failures: dict[str, str] = {}
        self._resolution_errors: list[tuple[str, str]] = []
        self._last_start = -math.inf
        self._failed_since_last_start = False
        self._winner: str | None = None
        self._now = -math.inf

    @classmethod
    def for_addresses(
        cls,
        addresses: Iterable[str],
        now: float,
        *,
        attempt_delay: float = DEFAULT_ATTEMPT_DELAY,
        prefer_ipv6: bool = True,
        first_family_count: int = 1,
    ) -> HappyEyeballs:
        """A core for literal addresses only: nothing to resolve, every address known at once."""
        core = cls(
            names=0,
            attempt_delay=attempt_delay,
            prefer_ipv6=prefer_ipv6,
            first_family_count=first_family_count,
        )
        core.add_addresses(addresses, now)
        return core

    # -- inputs ----------------------------------------------------------------------------------

    def resolved(self, family: socket.AddressFamily, addresses: Sequence[str], now: float) -> None:
        """One ``family`` query answered with ``addresses`` (an empty list is a failed query)."""
        parsed = self._parse(addresses, expected=family)
        self._answer(family, now)
        if not parsed:
            self._resolution_errors.append((_query_name(family), "no addresses"))
            return
        self._merge(parsed, now)

    def resolution_failed(self, family: socket.AddressFamily, reason: str, now: float) -> None:
        """One ``family`` query failed; ``reason`` says why (it ends up in :class:`Failed`)."""
        self._answer(family, now)
        self._resolution_errors.append((_query_name(family), reason))

    def add_addresses(self, addresses: Iterable[str], now: float) -> None:
        """Literal addresses of either family, known without a query."""
        parsed = self._parse(list(addresses), expected=None)
        self._advance(now)
        self._merge(parsed, now)

    def attempt_failed(self, address: str, reason: str, now: float) -> None:
        """The running attempt to ``address`` failed; the next one may start at once."""
        self._finish(address, now)
        self._failures[address] = reason
        self._failed_since_last_start = True

    def attempt_succeeded(self, address: str, now: float) -> None:
        """The running attempt to ``address`` succeeded. The first success reported wins."""
        self._finish(address, now)
        if self._winner is None:
            self._winner = address

    # -- output ----------------------------------------------------------------------------------

    def next_action(self, now: float) -> Action:
        """What to do at time ``now``. Call it again after each :class:`StartAttempt`."""
        self._advance(now)
        if self._winner is not None:
            return Succeeded(self._winner)
        if not self._started:
            self._started = self._may_start(now)
        if not self._started:
            # Only the preferred family's query can hold us back here.
            if self._other_since is None:
                return Wait(None)
            return Wait(self._other_since + self._resolution_delay)
        if self._remaining[socket.AF_INET6] or self._remaining[socket.AF_INET]:
            due = self._last_start + self._attempt_delay
            if not self._running or self._failed_since_last_start or now >= due:
                return self._start(now)
            return Wait(due)
        if self._running or any(self._pending.values()):
            return Wait(None)
        return Failed(
            attempts=tuple((address, self._failures[address]) for address, _ in self._order),
            resolution_errors=tuple(self._resolution_errors),
        )

    # -- internals -------------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        if not math.isfinite(now):
            raise ValueError(f"now must be a finite time, got {now!r}")
        if now < self._now:
            raise ValueError(f"time went backwards: {now} after {self._now}")
        self._now = now

    def _answer(self, family: socket.AddressFamily, now: float) -> None:
        _check_family(family)
        if self._pending[family] == 0:
            raise ValueError(f"no {_query_name(family)} query is pending")
        self._advance(now)
        self._pending[family] -= 1

    @staticmethod
    def _parse(
        addresses: Sequence[str], *, expected: socket.AddressFamily | None
    ) -> list[tuple[str, socket.AddressFamily]]:
        parsed = [(address, _literal_family(address)) for address in addresses]
        for address, family in parsed:
            if expected is not None and family != expected:
                raise ValueError(
                    f"{address} is not an address of the {_query_name(expected)} query"
                )
        return parsed

    def _merge(self, parsed: Sequence[tuple[str, socket.AddressFamily]], now: float) -> None:
        for address, family in parsed:
            if address in self._seen:
                continue
            self._seen.add(address)
            self._remaining[family].append(address)
            if family == self._other and self._other_since is None:
                self._other_since = now

    def _finish(self, address: str, now: float) -> None:
        if address not in self._running:
            raise ValueError(f"no attempt to {address} is running")
        self._advance(now)
        self._running.remove(address)

    def _may_start(self, now: float) -> bool:
        if self._remaining[self._preferred] or self._pending[self._preferred] == 0:
            return True
        return self._other_since is not None and now >= self._other_since + self._resolution_delay

    def _next_family(self) -> socket.AddressFamily:
        available = [f for f in (self._preferred, self._other) if self._remaining[f]]
        if len(available) == 1:
            return available[0]
        if not self._order:
            return self._preferred
        if len(self._order) < self._first_family_count and all(
            family == self._preferred for _, family in self._order
        ):
            return self._preferred
        last = self._order[-1][1]
        return self._other if last == self._preferred else self._preferred

    def _start(self, now: float) -> StartAttempt:
        family = self._next_family()
        address = self._remaining[family].pop(0)
        self._order.append((address, family))
        self._running.add(address)
        self._last_start = now
        self._failed_since_last_start = False
        return StartAttempt(address, family)


# --- the asyncio driver -------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedAddress:
    """One address to connect to: ``host`` is an IP literal of ``family``."""

    family: socket.AddressFamily
    host: str
    port: int

    @property
    def sockaddr(self) -> tuple[str, int] | tuple[str, int, int, int]:
        """The address in the form ``socket.sendto``/``connect`` take for its family.

        IPv6: ``(host, port, flowinfo=0, scope_id)``, the scope taken from a ``%zone`` suffix
        (a number or an interface name) and 0 without one.
        """
        if self.family == socket.AF_INET:
            return (self.host, self.port)
        scope = ipaddress.IPv6Address(self.host).scope_id
        if scope is None:
            return (self.host, self.port, 0, 0)
        scope_id = int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
        return (self.host, self.port, 0, scope_id)


class Resolver(Protocol):
    """Resolves one host name for one family (an AAAA or an A query)."""

    async def resolve(self, host: str, port: int, family: socket.AddressFamily) -> list[str]:
        """The IP literals of ``family`` that ``host`` has, in preference order (may be empty).

        A failed lookup raises OSError (e.g. ``socket.gaierror``) or a StoqError.
        """
        ...


class SystemResolver:
    """The operating system's resolver (``getaddrinfo``, so /etc/hosts and DNS)."""

    async def resolve(self, host: str, port: int, family: socket.AddressFamily) -> list[str]:
        """The ``family`` addresses ``getaddrinfo(host, port, family, SOCK_DGRAM)`` returns."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
        except UnicodeError as exc:
            raise ResolutionError(f"{host!r} is not a valid host name: {exc}") from exc
        addresses: list[str] = []
        for info_family, _type, _proto, _canonical, sockaddr in infos:
            address = str(sockaddr[0])
            if info_family == family and address not in addresses:
                addresses.append(address)
        return addresses


@runtime_checkable
class _Closable(Protocol):
    def close(self) -> object: ...


T = TypeVar("T")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _split_literal(host: str) -> str | None:
    """``host`` as a normalised IP literal (brackets removed), or None for a name."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        return None


async def race(
    host: str | Sequence[str],
    port: int,
    attempt: Callable[[ResolvedAddress], Awaitable[T]],
    *,
    attempt_delay: float = DEFAULT_ATTEMPT_DELAY,
    resolution_delay: float = DEFAULT_RESOLUTION_DELAY,
    resolver: Resolver | None = None,
    prefer_ipv6: bool = True,
) -> tuple[T, ResolvedAddress]:
    """Connect to ``host`` by Happy Eyeballs; return the winning attempt's result and address.

    ``host`` is a name, an IP literal (IPv6 optionally in brackets), or a list of them; literals
    are used as they are, names are resolved with ``resolver`` (default: :class:`SystemResolver`)
    by one AAAA and one A query each, run concurrently. ``attempt(address)`` makes one
    connection attempt: it returns the connection or raises OSError, TimeoutError or a
    StoqError, which count as that address failing (any other exception propagates at once,
    after every pending attempt is cancelled).

    When one attempt succeeds every other is cancelled and awaited. If a losing attempt returns
    a result anyway (it finished before its cancellation landed), that result's ``close()`` is
    called and awaited when it returns an awaitable, so a connection that lost the race is not
    leaked. Raises :class:`ResolutionError` when no address could be resolved at all (naming
    the host and each query's error), :class:`ConnectError` when every attempt failed (its
    ``attempts`` lists every address tried with its reason). Cancelling ``race`` cancels every
    attempt and query it started.
    """
    hosts = [host] if isinstance(host, str) else list(host)
    if not hosts:
        raise ValueError("no host to connect to")
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1..65535, got {port}")
    literals: list[str] = []
    names: list[str] = []
    for entry in hosts:
        literal = _split_literal(entry)
        if literal is None:
            names.append(entry)
        else:
            literals.append(literal)
    core = HappyEyeballs(
        names=len(names),
        attempt_delay=attempt_delay,
        resolution_delay=resolution_delay,
        prefer_ipv6=prefer_ipv6,
    )
    loop = asyncio.get_running_loop()
    if literals:
        core.add_addresses(literals, loop.time())
    runner = _Race(core, hosts, port, attempt, resolver or SystemResolver(), loop)
    return await runner.run(names)


class _Race(Generic[T]):
    """One run of :func:`race`: the tasks in flight and the core they report to."""

    def __init__(
        self,
        core: HappyEyeballs,
        hosts: Sequence[str],
        port: int,
        attempt: Callable[[ResolvedAddress], Awaitable[T]],
        resolver: Resolver,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._core = core
        self._hosts = tuple(hosts)
        self._port = port
        self._attempt = attempt
        self._resolver = resolver
        self._loop = loop
        self._queries: dict[asyncio.Task[list[str]], tuple[str, socket.AddressFamily]] = {}
        self._attempts: dict[asyncio.Task[T], ResolvedAddress] = {}
        self._winner: tuple[T, ResolvedAddress] | None = None
        self._several_names = False

    async def run(self, names: Sequence[str]) -> tuple[T, ResolvedAddress]:
        self._several_names = len(names) > 1
        for name in names:
            for family in _FAMILIES:
                task = asyncio.create_task(self._query(name, family))
                self._queries[task] = (name, family)
        try:
            result = await self._drive()
        except BaseException:
            try:
                await self._shutdown()
            finally:
                if self._winner is not None:
                    await _close_loser(self._winner[0], self._winner[1])
            raise
        try:
            await self._shutdown()
        except BaseException:
            await _close_loser(result[0], result[1])
            raise
        return result

    async def _query(self, name: str, family: socket.AddressFamily) -> list[str]:
        return await self._resolver.resolve(name, self._port, family)

    async def _connect(self, address: ResolvedAddress) -> T:
        return await self._attempt(address)

    async def _drive(self) -> tuple[T, ResolvedAddress]:
        while True:
            action = self._core.next_action(self._loop.time())
            if isinstance(action, StartAttempt):
                address = ResolvedAddress(action.family, action.address, self._port)
                self._attempts[asyncio.create_task(self._connect(address))] = address
            elif isinstance(action, Succeeded):
                assert self._winner is not None, "the core reported a success the driver lacks"
                winner, self._winner = self._winner, None
                return winner
            elif isinstance(action, Failed):
                raise self._failure(action)
            else:
                in_flight: set[asyncio.Task[list[str]] | asyncio.Task[T]] = {
                    *self._queries,
                    *self._attempts,
                }
                if not in_flight:
                    raise RuntimeError("Happy Eyeballs core is waiting with nothing in flight")
                timeout = (
                    None if action.until is None else max(0.0, action.until - self._loop.time())
                )
                done, _ = await asyncio.wait(
                    in_flight, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                # Report in a fixed order (queries, then attempts by start) for determinism.
                for query in [q for q in self._queries if q in done]:
                    self._absorb_query(query)
                for task in [t for t in self._attempts if t in done]:
                    await self._absorb_attempt(task)

    def _absorb_query(self, task: asyncio.Task[list[str]]) -> None:
        name, family = self._queries.pop(task)
        now = self._loop.time()
        prefix = f"{name}: " if self._several_names else ""
        exc = task.exception()
        if exc is None:
            addresses = task.result()
            if addresses:
                self._core.resolved(family, addresses, now)
            else:
                self._core.resolution_failed(
                    family, f"{prefix}no {_query_name(family)} records", now
                )
        elif isinstance(exc, CONNECT_FAILURES):
            self._core.resolution_failed(family, prefix + _describe(exc), now)
        else:
            raise exc

    async def _absorb_attempt(self, task: asyncio.Task[T]) -> None:
        address = self._attempts.pop(task)
        now = self._loop.time()
        exc = task.exception()
        if exc is None:
            self._core.attempt_succeeded(address.host, now)
            if self._winner is None:
                self._winner = (task.result(), address)
            else:
                await _close_loser(task.result(), address)
        elif isinstance(exc, CONNECT_FAILURES):
            self._core.attempt_failed(address.host, _describe(exc), now)
        else:
            raise exc

    def _failure(self, failed: Failed) -> ConnectError:
        target = f"{', '.join(self._hosts)} port {self._port}"
        if not failed.attempts:
            queries = "; ".join(f"{query}: {reason}" for query, reason in failed.resolution_errors)
            return ResolutionError(f"could not resolve {target} ({queries})")
        message = f"could not connect to {target}"
        if failed.resolution_errors:
            queries = "; ".join(f"{query}: {reason}" for query, reason in failed.resolution_errors)
            message += f" (failed queries: {queries})"
        return ConnectError(message, failed.attempts)

    async def _shutdown(self) -> None:
        """Cancel every query and attempt still in flight, await them, close late winners.

        A loser that failed with a connect failure is over and done; one that raised anything
        else is a programming error and is raised here.
        """
        queries = list(self._queries)
        attempts = list(self._attempts.items())
        tasks: list[asyncio.Task[list[str]] | asyncio.Task[T]] = [
            *queries,
            *(task for task, _ in attempts),
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._queries.clear()
        self._attempts.clear()
        unexpected: BaseException | None = None
        for query in queries:
            if not query.cancelled():
                exc = query.exception()
                if exc is not None and not isinstance(exc, CONNECT_FAILURES):
                    unexpected = unexpected or exc
        for task, address in attempts:
            if task.cancelled():
                continue
            exc = task.exception()
            if exc is None:
                await _close_loser(task.result(), address)
            elif not isinstance(exc, CONNECT_FAILURES):
                unexpected = unexpected or exc
        if unexpected is not None:
            raise unexpected


async def _close_loser(result: object, address: ResolvedAddress) -> None:
    """Close a connection that lost the race (or outlived a failed race), if it can be closed."""
    if not isinstance(result, _Closable):
        return
    try:
        outcome = result.close()
        if inspect.isawaitable(outcome):
            await outcome
    except CONNECT_FAILURES as exc:
        logger.debug("closing the losing connection to %s failed: %s", address.host, exc)
