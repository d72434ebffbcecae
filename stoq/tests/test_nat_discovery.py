"""RFC 5780 NAT behaviour discovery: the procedure against simulated NATs (sans-IO), the real
thing on loopback, and the ``stoq stun-server`` / ``stoq nat-check`` commands.

Loopback has no NAT: the server on 127.0.0.1 and 127.0.0.2 sees the client's own address, and
answers from every address reach it. So discovery reports no NAT (``nat_type`` ``"open"``),
endpoint-independent mapping and filtering, and the public address equal to the local one.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from stoq.nat.discovery import (
    Behaviour,
    NatBehaviour,
    NatDiscovery,
    NatDiscoveryError,
    Probe,
    discover,
    local_address_towards,
)
from stoq.nat.stun_client import Address, BindingResult
from stoq.nat.stun_server import Rfc5780Addresses, StunServer

EI = Behaviour.ENDPOINT_INDEPENDENT
AD = Behaviour.ADDRESS_DEPENDENT
APD = Behaviour.ADDRESS_AND_PORT_DEPENDENT
SERVER = Rfc5780Addresses(("198.51.100.1", 3478), ("198.51.100.2", 3479))
LOCAL = ("10.0.0.2", 5000)
PUBLIC_IP = "203.0.113.9"


@dataclass
class SimulatedNat:
    """A NAT between LOCAL and the RFC 5780 server SERVER, with the given behaviours
    (``mapping`` None: no NAT at all, only a filter)."""

    mapping: Behaviour | None
    filtering: Behaviour
    ports: dict[object, int] = field(default_factory=dict)
    contacted: set[Address] = field(default_factory=set)

    def mapped(self, destination: Address) -> Address:
        if self.mapping is None:
            return LOCAL
        key: object = {
            EI: (),
            AD: destination[0],
            APD: destination,
        }[self.mapping]
        return (PUBLIC_IP, self.ports.setdefault(key, 40000 + len(self.ports)))

    def lets_in(self, origin: Address) -> bool:
        if self.filtering == EI:
            return True
        if self.filtering == AD:
            return origin[0] in {ip for ip, _ in self.contacted}
        return origin in self.contacted

    def send(self, probe: Probe) -> BindingResult | None:
        self.contacted.add(probe.server)
        mapped = self.mapped(probe.server)
        origin = SERVER.changed(
            probe.server, change_ip=probe.change_ip, change_port=probe.change_port
        )
        assert origin is not None
        if not self.lets_in(origin):
            return None
        return BindingResult(
            mapped=mapped,
            response_origin=origin,
            other_address=SERVER.changed(probe.server, change_ip=True, change_port=True),
            source=origin,
            server=probe.server,
            local=LOCAL,
        )


def run(machine: NatDiscovery, send: object) -> NatBehaviour:
    step: Probe | NatBehaviour = machine.start()
    while isinstance(step, Probe):
        step = machine.feed(send(step))  # type: ignore[operator]
    return step


EXPECTED_TYPE = {
    (EI, EI): "full-cone",
    (EI, AD): "restricted-cone",
    (EI, APD): "port-restricted-cone",
    (AD, EI): "symmetric",
    (AD, AD): "symmetric",
    (AD, APD): "symmetric",
    (APD, EI): "symmetric",
    (APD, AD): "symmetric",
    (APD, APD): "symmetric",
}


@pytest.mark.parametrize(("mapping", "filtering"), list(EXPECTED_TYPE))
def test_every_mapping_and_filtering_behaviour_is_told_apart(
    mapping: Behaviour, filtering: Behaviour
) -> None:
    nat = SimulatedNat(mapping, filtering)
    machine = NatDiscovery(SERVER.primary, LOCAL)
    found = run(machine, nat.send)
    assert found == NatBehaviour(mapping, filtering, (PUBLIC_IP, 40000), LOCAL)
    assert found.behind_nat
    assert found.nat_type == EXPECTED_TYPE[(mapping, filtering)]
    names = [probe.name for probe, _ in machine.history]
    assert names == [
        "test I",
        "filtering test II",
        *(["filtering test III"] if filtering != EI else []),
        "mapping test II",
        *(["mapping test III"] if mapping != EI else []),
    ]


@pytest.mark.parametrize(
    ("filtering", "nat_type"), [(EI, "open"), (AD, "firewall"), (APD, "firewall")]
)
def test_no_nat_is_open_or_a_firewall(filtering: Behaviour, nat_type: str) -> None:
    found = run(NatDiscovery(SERVER.primary, LOCAL), SimulatedNat(None, filtering).send)
    assert found == NatBehaviour(EI, filtering, LOCAL, LOCAL)
    assert not found.behind_nat
    assert found.nat_type == nat_type


def test_the_probes_are_sent_where_rfc_5780_says() -> None:
    machine = NatDiscovery(SERVER.primary, LOCAL)
    run(machine, SimulatedNat(APD, APD).send)
    (a1, p1), (a2, p2) = SERVER.primary, SERVER.alternate
    assert [probe for probe, _ in machine.history] == [
        Probe("test I", (a1, p1)),
        Probe("filtering test II", (a1, p1), change_ip=True, change_port=True),
        Probe("filtering test III", (a1, p1), change_port=True),
        Probe("mapping test II", (a2, p1)),
        Probe("mapping test III", (a2, p2)),
    ]


def answer(
    probe: Probe, *, other: Address | None = SERVER.alternate, source: Address | None = None
) -> BindingResult:
    return BindingResult(
        mapped=(PUBLIC_IP, 40000),
        response_origin=None,
        other_address=other,
        source=source or probe.server,
        server=probe.server,
        local=LOCAL,
    )


def test_no_answer_to_test_i_is_an_error() -> None:
    machine = NatDiscovery(SERVER.primary, LOCAL)
    machine.start()
    with pytest.raises(NatDiscoveryError) as caught:
        machine.feed(None)
    assert str(caught.value) == "STUN server 198.51.100.1:3478 did not answer"
    assert caught.value.public_address is None


def test_a_server_without_rfc_5780_is_an_error_that_still_tells_the_public_address() -> None:
    machine = NatDiscovery(SERVER.primary, LOCAL)
    probe = machine.start()
    with pytest.raises(NatDiscoveryError) as caught:
        machine.feed(answer(probe, other=None))
    assert str(caught.value) == (
        "STUN server 198.51.100.1:3478 does not support RFC 5780 (no OTHER-ADDRESS in its "
        "answer): mapping and filtering cannot be tested (public address 203.0.113.9:40000)"
    )
    assert caught.value.public_address == (PUBLIC_IP, 40000)


def test_an_other_address_that_does_not_differ_in_both_is_an_error() -> None:
    machine = NatDiscovery(SERVER.primary, LOCAL)
    probe = machine.start()
    with pytest.raises(NatDiscoveryError, match="does not differ in both IP and port"):
        machine.feed(answer(probe, other=("198.51.100.2", 3478)))


def test_a_change_request_answered_from_the_wrong_address_is_an_error() -> None:
    machine = NatDiscovery(SERVER.primary, LOCAL)
    step = machine.feed(answer(machine.start()))
    assert isinstance(step, Probe)
    assert step.name == "filtering test II"
    with pytest.raises(NatDiscoveryError) as caught:
        machine.feed(answer(step, source=SERVER.primary))  # the server ignored CHANGE-REQUEST
    assert str(caught.value) == (
        "the answer to a CHANGE-REQUEST came from 198.51.100.1:3478, not from "
        "198.51.100.2:3479: the server does not honour CHANGE-REQUEST "
        "(public address 203.0.113.9:40000)"
    )


def test_a_silent_alternate_address_is_an_error() -> None:
    machine = NatDiscovery(SERVER.primary, LOCAL)
    step = machine.feed(answer(machine.start()))
    assert isinstance(step, Probe)
    step = machine.feed(answer(step, source=SERVER.alternate))  # filtering: EI
    assert isinstance(step, Probe)
    assert step.name == "mapping test II"
    with pytest.raises(
        NatDiscoveryError, match=r"alternate address 198\.51\.100\.2:3478 did not answer"
    ):
        machine.feed(None)


def test_the_machine_is_used_in_order() -> None:
    machine = NatDiscovery(SERVER.primary, LOCAL)
    with pytest.raises(RuntimeError, match="no probe is waiting"):
        machine.feed(None)
    machine.start()
    with pytest.raises(RuntimeError, match="already started"):
        machine.start()


# --- live, on loopback ----------------------------------------------------------------------------


def test_discovery_on_loopback_finds_no_nat() -> None:
    async def main() -> tuple[NatBehaviour, Address]:
        async with await StunServer.start([("127.0.0.1", 0)], alternate=("127.0.0.2", 0)) as server:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.0.1", 0))
                found = await discover(server.addresses[0], sock=sock, timeout=5, rto=0.1)
                return found, sock.getsockname()

    found, local = asyncio.run(main())
    assert found == NatBehaviour(EI, EI, local, local)
    assert not found.behind_nat
    assert found.nat_type == "open"


def test_discovery_from_a_wildcard_socket_uses_the_routed_source_address() -> None:
    async def main() -> NatBehaviour:
        async with await StunServer.start([("127.0.0.1", 0)], alternate=("127.0.0.2", 0)) as server:
            return await discover(server.addresses[0], timeout=5, rto=0.1)

    found = asyncio.run(main())
    assert found.local_address[0] == "127.0.0.1"
    assert found.public_address == found.local_address
    assert found.nat_type == "open"


def test_local_address_towards_keeps_a_specific_bind() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.3", 0))
        assert local_address_towards(sock, ("127.0.0.1", 9)) == sock.getsockname()


def test_discovery_against_a_server_without_an_alternate_address() -> None:
    async def main() -> None:
        async with await StunServer.start([("127.0.0.1", 0)]) as server:
            with pytest.raises(NatDiscoveryError, match="does not support RFC 5780"):
                await discover(server.addresses[0], local=("127.0.0.1", 0), timeout=5)

    asyncio.run(main())


def test_discovery_against_a_silent_port() -> None:
    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            with pytest.raises(NatDiscoveryError) as caught:
                await discover(silent.getsockname(), timeout=0.3, rto=0.05)
            port = silent.getsockname()[1]
            assert str(caught.value) == f"STUN server 127.0.0.1:{port} did not answer"

    asyncio.run(main())


# --- the commands -------------------------------------------------------------------------------


def stoq(*argv: str) -> list[str]:
    return [sys.executable, "-m", "stoq", *argv]


@pytest.fixture
def stun_server_process() -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    process = subprocess.Popen(
        stoq("stun-server", "--listen", "127.0.0.1:0", "--alternate", "127.0.0.2:0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    try:
        lines = [process.stdout.readline().rstrip("\n") for _ in range(4)]
        yield process, lines
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_stun_server_and_nat_check_commands(
    stun_server_process: tuple[subprocess.Popen[str], list[str]],
) -> None:
    process, lines = stun_server_process
    assert all(line.startswith("listening ") for line in lines), lines
    addresses = [line.removeprefix("listening ") for line in lines]
    p1 = addresses[0].rsplit(":", 1)[1]
    p2 = addresses[1].rsplit(":", 1)[1]
    assert addresses == [
        f"127.0.0.1:{p1}",
        f"127.0.0.1:{p2}",
        f"127.0.0.2:{p1}",
        f"127.0.0.2:{p2}",
    ]

    check = subprocess.run(
        stoq("nat-check", "--server", addresses[0], "--local", "127.0.0.1:0", "--rto", "0.1"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr
    out = check.stdout.splitlines()
    assert out[:3] == [
        "nat type: open",
        "mapping: endpoint-independent",
        "filtering: endpoint-independent",
    ]
    assert out[3].startswith("public address: 127.0.0.1:")
    assert out[4] == out[3].replace("public", "local")
    assert len(out) == 5

    check = subprocess.run(
        stoq("nat-check", "--server", addresses[0], "--json", "--rto", "0.1"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr
    record = json.loads(check.stdout)
    assert record["nat_type"] == "open"
    assert (record["mapping"], record["filtering"]) == (EI.value, EI.value)
    assert record["public_address"] == record["local_address"]
    assert record["public_address"][0] == "127.0.0.1"

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0


def test_stun_server_stops_cleanly_on_sigint() -> None:
    process = subprocess.Popen(
        stoq("stun-server", "--listen", "127.0.0.1:0"), stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    try:
        assert process.stdout.readline().startswith("listening 127.0.0.1:")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_nat_check_fails_clearly_when_the_server_does_not_answer() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        check = subprocess.run(
            stoq("nat-check", "--server", f"127.0.0.1:{port}", "--timeout", "0.3", "--rto", "0.05"),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert check.returncode == 1
    assert check.stdout == ""
    assert check.stderr == f"stoq: STUN server 127.0.0.1:{port} did not answer\n"


def test_commands_refuse_malformed_addresses() -> None:
    check = subprocess.run(
        stoq("nat-check", "--server", "127.0.0.1"), capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 2
    assert "bad address '127.0.0.1': expected HOST:PORT" in check.stderr
    server = subprocess.run(
        stoq("stun-server", "--listen", "127.0.0.1:0", "--alternate", "127.0.0.1:0"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert server.returncode == 1
    assert server.stderr.startswith("stoq: RFC 5780 needs an alternate address with another IP")
