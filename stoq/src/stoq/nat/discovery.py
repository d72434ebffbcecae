"""NAT behaviour discovery (RFC 5780 §4.3 mapping, §4.4 filtering) from one local socket.

:class:`NatDiscovery` is the procedure with no I/O: it says which Binding request to send next
(a :class:`Probe`) and is told what came back (a :class:`~stoq.nat.stun_client.BindingResult`,
or None when the probe got no answer), until it returns the :class:`NatBehaviour`. Any transport
can drive it; :func:`discover` drives it with :func:`~stoq.nat.stun_client.binding` over one
UDP socket, which every probe must share (the mapping under test is that socket's).

The probes, all from the same socket, in this order (the server's primary address is
(A1, P1); its OTHER-ADDRESS is (A2, P2)):

1. **Test I**: Binding to (A1, P1). The answer gives the mapped address X1 and OTHER-ADDRESS;
   no answer, or no OTHER-ADDRESS (not an RFC 5780 server), ends discovery with
   :class:`NatDiscoveryError`.
2. **Filtering test II**: to (A1, P1) with CHANGE-REQUEST "change IP and port": the answer
   comes from (A2, P2). An answer → **endpoint-independent** filtering.
3. **Filtering test III** (only without an answer to II): to (A1, P1) with "change port": the
   answer comes from (A1, P2). An answer → **address-dependent** filtering, none →
   **address-and-port-dependent**.
4. **Mapping test II**: to (A2, P1), giving X2. X2 = X1 → **endpoint-independent** mapping.
5. **Mapping test III** (only if X2 != X1): to (A2, P2), giving X3. X3 = X2 →
   **address-dependent** mapping, else **address-and-port-dependent**.

The filtering tests run before anything is sent to A2 on purpose: until then the NAT has seen
this socket talk to (A1, P1) only, so an answer from A2 or from P2 passes its filter only if the
filter really lets it. (Mapping tests first would open the filter towards A2 and make an
address-dependent filter look endpoint-independent.) An answer to a CHANGE-REQUEST that comes
from any other address than the one asked for is refused with :class:`NatDiscoveryError`, as
it would fake the result. Mapping tests II and III must be answered (A2 is the server's own).

No NAT: when X1 equals the local address, there is no NAT between the socket and the server;
the tests still run (a firewall may still filter). On loopback, with the server on 127.0.0.1
and 127.0.0.2, everything is answered and nothing is translated: no NAT, endpoint-independent
mapping and filtering, and :attr:`NatBehaviour.nat_type` ``"open"``.

Classic (RFC 3489) names, :attr:`NatBehaviour.nat_type`:

======================================  ==============================  ========================
mapping                                 filtering                       ``nat_type``
======================================  ==============================  ========================
(no NAT: X1 = local address)            endpoint-independent            ``open``
(no NAT)                                address(-and-port)-dependent    ``firewall``
endpoint-independent                    endpoint-independent            ``full-cone``
endpoint-independent                    address-dependent               ``restricted-cone``
endpoint-independent                    address-and-port-dependent      ``port-restricted-cone``
address- or address-and-port-dependent  any                             ``symmetric``
======================================  ==============================  ========================
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from collections.abc import Generator
from dataclasses import dataclass

from stoq.nat.stun import StunError
from stoq.nat.stun_client import (
    DEFAULT_RETRANSMISSIONS,
    DEFAULT_RM,
    Address,
    BindingResult,
    StunTimeout,
    binding,
    format_address,
    normalize_address,
    open_client_socket,
    resolve_server,
    socket_address,
)

__all__ = [
    "Behaviour",
    "NatBehaviour",
    "NatDiscovery",
    "NatDiscoveryError",
    "Probe",
    "discover",
    "local_address_towards",
]


class NatDiscoveryError(StunError):
    """Discovery could not finish: the server did not answer, does not do RFC 5780, or
    answered a CHANGE-REQUEST from the wrong address. ``public_address`` is the mapped
    address of test I when it was learnt (else None)."""

    def __init__(self, message: str, public_address: Address | None = None) -> None:
        self.public_address = public_address
        if public_address is not None:
            message = f"{message} (public address {format_address(public_address)})"
        super().__init__(message)


class Behaviour(enum.StrEnum):
    """A NAT's mapping or filtering behaviour (RFC 4787 §4.1 and §5 terms)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


@dataclass(frozen=True)
class NatBehaviour:
    """What discovery found. ``public_address`` is the mapped address of test I;
    ``local_address`` the socket's own (with a wildcard bind: the source address the system
    picks towards the server)."""

    mapping: Behaviour
    filtering: Behaviour
    public_address: Address
    local_address: Address

    @property
    def behind_nat(self) -> bool:
        """False when the server saw the socket's own address (no translation)."""
        return self.public_address != self.local_address

    @property
    def nat_type(self) -> str:
        """The classic name (table in the module docstring)."""
        if not self.behind_nat:
            return "open" if self.filtering == Behaviour.ENDPOINT_INDEPENDENT else "firewall"
        if self.mapping != Behaviour.ENDPOINT_INDEPENDENT:
            return "symmetric"
        return {
            Behaviour.ENDPOINT_INDEPENDENT: "full-cone",
            Behaviour.ADDRESS_DEPENDENT: "restricted-cone",
            Behaviour.ADDRESS_AND_PORT_DEPENDENT: "port-restricted-cone",
        }[self.filtering]


@dataclass(frozen=True)
class Probe:
    """One Binding request to send: to ``server``, with CHANGE-REQUEST flags as given.
    ``name`` says which test it is (``"test I"``, ``"filtering test II"``, ...)."""

    name: str
    server: Address
    change_ip: bool = False
    change_port: bool = False


_Steps = Generator[Probe, BindingResult | None, NatBehaviour]


class NatDiscovery:
    """The RFC 5780 procedure as a sans-IO state machine.

    ``server`` is the server's primary address (an IP address, not a name) and ``local`` the
    probing socket's address as the server would see it without NAT. Call :meth:`start` for
    the first :class:`Probe`, then :meth:`feed` each probe's outcome (None for no answer):
    it returns the next probe or, at the end, the :class:`NatBehaviour`.
    """

    def __init__(self, server: Address, local: Address) -> None:
        self.server = normalize_address(server)
        self.local = normalize_address(local)
        self._steps = self._run()
        self._pending: Probe | None = None
        #: Every probe sent and what came back, in order.
        self.history: list[tuple[Probe, BindingResult | None]] = []

    def start(self) -> Probe:
        if self._pending is not None or self.history:
            raise RuntimeError("discovery has already started")
        self._pending = next(self._steps)
        return self._pending

    def feed(self, outcome: BindingResult | None) -> Probe | NatBehaviour:
        if self._pending is None:
            raise RuntimeError("no probe is waiting for an outcome")
        self.history.append((self._pending, outcome))
        try:
            self._pending = self._steps.send(outcome)
        except StopIteration as stop:
            self._pending = None
            result: NatBehaviour = stop.value
            return result
        return self._pending

    def _run(self) -> _Steps:
        a1, p1 = self.server
        first = yield Probe("test I", self.server)
        if first is None:
            raise NatDiscoveryError(f"STUN server {format_address(self.server)} did not answer")
        public = first.mapped
        other = first.other_address
        if other is None:
            raise NatDiscoveryError(
                f"STUN server {format_address(self.server)} does not support RFC 5780 "
                "(no OTHER-ADDRESS in its answer): mapping and filtering cannot be tested",
                public,
            )
        a2, p2 = other
        if a2 == a1 or p2 == p1:
            raise NatDiscoveryError(
                f"STUN server {format_address(self.server)} gave OTHER-ADDRESS "
                f"{format_address(other)}, which does not differ in both IP and port",
                public,
            )

        # Filtering, before anything goes to A2 (see the module docstring).
        answer = yield Probe("filtering test II", self.server, change_ip=True, change_port=True)
        self._check_source(answer, other, public)
        if answer is not None:
            filtering = Behaviour.ENDPOINT_INDEPENDENT
        else:
            answer = yield Probe("filtering test III", self.server, change_port=True)
            self._check_source(answer, (a1, p2), public)
            filtering = (
                Behaviour.ADDRESS_DEPENDENT
                if answer is not None
                else Behaviour.ADDRESS_AND_PORT_DEPENDENT
            )

        # Mapping.
        second = yield Probe("mapping test II", (a2, p1))
        if second is None:
            raise NatDiscoveryError(
                f"the server's alternate address {format_address((a2, p1))} did not answer",
                public,
            )
        if second.mapped == public:
            mapping = Behaviour.ENDPOINT_INDEPENDENT
        else:
            third = yield Probe("mapping test III", (a2, p2))
            if third is None:
                raise NatDiscoveryError(
                    f"the server's alternate address {format_address((a2, p2))} did not answer",
                    public,
                )
            mapping = (
                Behaviour.ADDRESS_DEPENDENT
                if third.mapped == second.mapped
                else Behaviour.ADDRESS_AND_PORT_DEPENDENT
            )
        return NatBehaviour(mapping, filtering, public, self.local)

    @staticmethod
    def _check_source(answer: BindingResult | None, expected: Address, public: Address) -> None:
        if answer is not None and answer.source != expected:
            raise NatDiscoveryError(
                f"the answer to a CHANGE-REQUEST came from {format_address(answer.source)}, "
                f"not from {format_address(expected)}: the server does not honour CHANGE-REQUEST",
                public,
            )


def local_address_towards(sock: socket.socket, server: Address) -> Address:
    """``sock``'s address; for a wildcard bind, with the source IP the system would use to
    reach ``server`` (found with a connected throw-away socket: nothing is sent)."""
    local = normalize_address(sock.getsockname())
    if not ipaddress.ip_address(local[0]).is_unspecified:
        return local
    with socket.socket(sock.family, socket.SOCK_DGRAM) as probe:
        probe.connect(socket_address(sock, server))
        return (normalize_address(probe.getsockname())[0], local[1])


async def discover(
    server: tuple[str, int],
    *,
    sock: socket.socket | None = None,
    local: tuple[str, int] | None = None,
    timeout: float = 3.0,
    rto: float = 0.5,
    retransmissions: int = DEFAULT_RETRANSMISSIONS,
    rm: int = DEFAULT_RM,
) -> NatBehaviour:
    """Run :class:`NatDiscovery` against ``server`` (``(host, port)``, its primary address).

    All probes use one socket: ``sock`` (never closed here) or one opened on ``local``
    (default: wildcard, any port). Each probe is a Binding transaction with the given
    retransmission schedule, cut at ``timeout`` seconds: a probe unanswered by then counts as
    no answer (which for the filtering tests is the expected outcome behind a filtering NAT,
    so ``timeout`` bounds how long discovery takes: at most three unanswered probes).

    Raises :class:`NatDiscoveryError` (which see), :class:`~stoq.nat.stun_client.StunErrorResponse`
    if the server refuses a probe, or :class:`StunError`.
    """
    if sock is not None and local is not None:
        raise ValueError("give either sock or local, not both")
    address = await resolve_server(server, sock)
    own = sock is None
    if sock is None:
        try:
            sock = open_client_socket(address, local)
        except OSError as exc:
            raise StunError(f"cannot open a UDP socket for STUN: {exc}") from exc
    try:
        try:
            local_address = local_address_towards(sock, address)
        except OSError as exc:
            raise StunError(f"no route to {format_address(address)}: {exc}") from exc
        machine = NatDiscovery(address, local_address)
        step: Probe | NatBehaviour = machine.start()
        while isinstance(step, Probe):
            outcome: BindingResult | None
            try:
                outcome = await binding(
                    step.server,
                    sock=sock,
                    change_ip=step.change_ip,
                    change_port=step.change_port,
                    timeout=timeout,
                    rto=rto,
                    retransmissions=retransmissions,
                    rm=rm,
                )
            except StunTimeout:
                outcome = None
            step = machine.feed(outcome)
        return step
    finally:
        if own:
            sock.close()
