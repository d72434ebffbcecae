"""Our STUN discovery and TURN relaying behind real Linux NATs (issue 7), in the NAT lab.

One :class:`~.natlab.NatLab` per module (topology and every iptables rule: natlab's docstring).

1. ``stoq nat-check --json`` runs in every site's host, all at once, against the lab's RFC 5780
   STUN server; each site must be reported exactly as its NAT was built (mapping, filtering,
   classic type, public IP; port preservation where the NAT preserves ports). The UDP-blocked
   site must fail with the CLI's "did not answer" error.
2. Relay matrix, for every ordered pairing (A, B) of the sites, A = B included: A and B each
   allocate on the TURN server (over TCP from the UDP-blocked site, else UDP), permit each
   other's relayed address and exchange a datagram each way relay to relay ("relayed"); then B
   sends from a plain UDP socket straight to A's relayed address and gets A's answer through the
   relay ("direct"; not applicable when B cannot send UDP). Every relayed pairing must work.
   The table is printed, and written as JSON to ``$NAT_MATRIX_OUT`` when that is set.

The symmetric site reads as endpoint-independent if two random ports coincide (about 1 in
64 000 per run; natlab's docstring).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from stoq.nat.turn_client import TurnClient

from . import natlab
from .natlab import (
    STUN_PRIMARY,
    TURN_IP,
    TURN_PASSWORD,
    TURN_PORT,
    TURN_USER,
    NatLab,
    Site,
    SiteKind,
    inside,
    require_natlab,
)
from .netns import _run, python, reap_stale

pytestmark = pytest.mark.slow

EI = "endpoint-independent"
AD = "address-dependent"
APD = "address-and-port-dependent"

#: (nat_type, mapping, filtering) that discovery must report for each site that answers.
EXPECTED: dict[SiteKind, tuple[str, str, str]] = {
    SiteKind.PUBLIC: ("open", EI, EI),
    SiteKind.FULL_CONE: ("full-cone", EI, EI),
    SiteKind.RESTRICTED_CONE: ("restricted-cone", EI, AD),
    SiteKind.PORT_RESTRICTED_CONE: ("port-restricted-cone", EI, APD),
    SiteKind.SYMMETRIC: ("symmetric", APD, APD),
    SiteKind.DOUBLE_NAT: ("port-restricted-cone", EI, APD),
}
#: Sites whose NAT keeps the host's source port.
PORT_PRESERVING = set(EXPECTED) - {SiteKind.SYMMETRIC}

ATTEMPTS = 3
WAIT = 1.0


@pytest.fixture(scope="module")
def lab() -> Iterator[NatLab]:
    require_natlab()
    with NatLab() as built:
        yield built


@pytest.fixture(scope="module")
def nat_checks(lab: NatLab) -> dict[str, subprocess.CompletedProcess[str]]:
    server = f"{STUN_PRIMARY[0]}:{STUN_PRIMARY[1]}"
    argv = python(
        "-m", "stoq", "nat-check", "--server", server, "--json", "--timeout", "1", "--rto", "0.2"
    )  # fmt: skip
    return lab.run_all({kind.value: (site.host, argv) for kind, site in lab.sites.items()})


# --- the lab itself --------------------------------------------------------------------------


def test_every_rule_is_documented() -> None:
    doc = " ".join((natlab.__doc__ or "").split())
    for rule in (*natlab.FILTER_BASE, *(r for rules in natlab.RULES.values() for r in rules)):
        assert " ".join(rule.split()) in doc, rule


def test_private_addresses_are_not_routed_on_the_internet(lab: NatLab) -> None:
    for site in lab.sites.values():
        if site.kind == SiteKind.PUBLIC:
            continue
        done = subprocess.run(
            ["ip", "-n", lab.inet, "route", "get", site.host_ip],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode != 0, done.stdout
        assert "Network is unreachable" in done.stderr


def test_teardown_deletes_every_namespace_and_reaps_stale_ones() -> None:
    require_natlab()
    with NatLab([SiteKind.DOUBLE_NAT]) as small:
        names = list(small.namespaces)
        assert len(names) == 4  # inet, outer router, inner router, host
    listed = _run(["ip", "netns", "list"])
    assert not [name for name in names if name in listed]
    # A namespace of a run that is gone (a pid that has exited) is reaped.
    child = subprocess.Popen(["true"])
    child.wait()
    stale = f"stq-{child.pid}-lab99-inet"
    _run(["ip", "netns", "add", stale])
    try:
        assert stale in reap_stale()
    finally:
        if Path(f"/run/netns/{stale}").exists():
            _run(["ip", "netns", "del", stale])
    assert stale not in _run(["ip", "netns", "list"])


# --- discovery -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(EXPECTED), ids=str)
def test_nat_check_reports_the_nat_as_built(
    kind: SiteKind, lab: NatLab, nat_checks: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    site = lab.sites[kind]
    done = nat_checks[kind.value]
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    nat_type, mapping, filtering = EXPECTED[kind]
    assert (found["nat_type"], found["mapping"], found["filtering"]) == (
        nat_type,
        mapping,
        filtering,
    ), lab.iptables_dump(site.routers[-1]) if site.routers else found
    assert found["public_address"][0] == site.public_ip
    assert found["local_address"][0] == site.host_ip
    if kind in PORT_PRESERVING:
        assert found["public_address"][1] == found["local_address"][1]


def test_nat_check_behind_the_udp_firewall_gets_no_answer(
    nat_checks: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    done = nat_checks[SiteKind.UDP_BLOCKED.value]
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == f"stoq: STUN server {STUN_PRIMARY[0]}:{STUN_PRIMARY[1]} did not answer\n"


# --- relaying --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pairing:
    """One row: A allocated, B reached A's relayed address (attempts: datagrams sent)."""

    a: str
    b: str
    a_transport: str
    b_transport: str
    relayed_ok: bool
    relayed_attempts: int
    direct_ok: bool | None  # None: B cannot send UDP
    direct_attempts: int


def _transport(site: Site) -> str:
    return "tcp" if site.kind == SiteKind.UDP_BLOCKED else "udp"


async def _allocate(site: Site) -> TurnClient:
    # Sequential on purpose: the thread sits in the host's namespace while the client's socket
    # is made, and no other task may open a socket meanwhile.
    with inside(site.host):
        client = await TurnClient.allocate(
            (TURN_IP, TURN_PORT),
            TURN_USER,
            TURN_PASSWORD,
            transport=_transport(site),
            rto=0.2,
            timeout=5.0 if site.kind == SiteKind.UDP_BLOCKED else None,
        )
    assert client.mapped_address is not None
    assert client.mapped_address[0] == site.public_ip
    return client


async def _relay(sender: TurnClient, receiver: TurnClient, payload: bytes) -> int:
    """Datagrams sent until ``receiver`` got ``payload`` from ``sender``'s relay (0: never)."""
    for attempt in range(1, ATTEMPTS + 1):
        await sender.send(receiver.relayed_address, payload)
        try:
            while True:
                peer, data = await asyncio.wait_for(receiver.receive(), WAIT)
                if data == payload:
                    assert peer == sender.relayed_address
                    return attempt
        except TimeoutError:
            continue
    return 0


async def _direct(a: TurnClient, b_site: Site, payload: bytes) -> int:
    """B's plain UDP socket to A's relayed address and A's answer back; datagrams sent."""
    loop = asyncio.get_running_loop()
    with inside(b_site.host):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.setblocking(False)
        sock.bind(("0.0.0.0", 0))  # noqa: S104 - inside the lab host's namespace
        await a.create_permission(b_site.public_ip)
        for attempt in range(1, ATTEMPTS + 1):
            await loop.sock_sendto(sock, payload, a.relayed_address)
            try:
                peer, data = await asyncio.wait_for(a.receive(), WAIT)
                assert peer[0] == b_site.public_ip
                assert data == payload
                await a.send(peer, payload[::-1])
                answer, source = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), WAIT)
            except TimeoutError:
                continue
            assert (answer, source) == (payload[::-1], a.relayed_address)
            return attempt
    return 0


async def _pairing(a_site: Site, b_site: Site) -> Pairing:
    a = await _allocate(a_site)
    try:
        b = await _allocate(b_site)
        try:
            await a.create_permission(b.relayed_address[0])
            await b.create_permission(a.relayed_address[0])
            there = await _relay(b, a, f"{b_site.kind}->{a_site.kind}".encode())
            back = await _relay(a, b, f"{a_site.kind}->{b_site.kind}".encode())
        finally:
            await b.close()
        direct_ok: bool | None = None
        direct = 0
        if b_site.kind != SiteKind.UDP_BLOCKED:
            direct = await _direct(a, b_site, f"direct {b_site.kind}".encode())
            direct_ok = direct > 0
    finally:
        await a.close()
    return Pairing(
        a_site.kind.value,
        b_site.kind.value,
        _transport(a_site),
        _transport(b_site),
        there > 0 and back > 0,
        there + back,
        direct_ok,
        direct,
    )


async def _matrix(lab: NatLab) -> list[Pairing]:
    sites = list(lab.sites.values())
    return [await _pairing(a, b) for a in sites for b in sites]


def _table(rows: list[Pairing]) -> str:
    lines = [f"{'A (allocates)':<22} {'B (sends)':<22} {'relayed':<12} {'direct':<12}"]
    for row in rows:
        direct = "n/a" if row.direct_ok is None else f"{row.direct_ok} ({row.direct_attempts})"
        relayed = f"{row.relayed_ok} ({row.relayed_attempts})"
        lines.append(f"{row.a:<22} {row.b:<22} {relayed:<12} {direct:<12}")
    ok = sum(row.relayed_ok for row in rows)
    lines.append(f"relayed connectivity: {ok}/{len(rows)} pairings")
    return "\n".join(lines)


def test_turn_relays_between_every_pairing(lab: NatLab, capsys: pytest.CaptureFixture[str]) -> None:
    rows = asyncio.run(_matrix(lab))
    with capsys.disabled():
        print("\nTURN relay matrix (attempts = datagrams sent):\n" + _table(rows))
    out = os.environ.get("NAT_MATRIX_OUT")
    if out:
        Path(out).write_text(
            json.dumps({"pairings": [asdict(row) for row in rows]}, indent=2) + "\n",
            encoding="utf-8",
        )
    assert len(rows) == len(lab.sites) ** 2
    assert [row for row in rows if not row.relayed_ok] == []
    assert [row for row in rows if row.direct_ok is False] == []
    assert {row.b for row in rows if row.direct_ok is None} == {SiteKind.UDP_BLOCKED.value}
