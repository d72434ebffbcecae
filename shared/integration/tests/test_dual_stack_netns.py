"""Dual-stack STOQ across Linux network namespaces: Happy Eyeballs against real kernels.

Every test builds a fresh server and client namespace joined by a veth pair (see ``netns.py``):
the server has 10.77.0.1 and fd77::1, the client 10.77.0.2 and fd77::2, either family switched
off per side as the scenario needs, and ``node1.bank.hypermesh`` in both namespaces' hosts
files, so the client's AAAA and A lookups are real ``getaddrinfo`` answers.

The first group checks the harness itself with plain UDP sockets (an echo server in the server
namespace, a one-shot client in the client namespace): each family works or fails the way the
scenario says, before STOQ is involved. The second group runs the STOQ command line as two
processes, ``python -m stoq serve`` in the server namespace and ``python -m stoq connect``
in the client namespace, with certificates from a real TrustChain CA, and asserts which family
the connection used (or, when nothing is reachable, that every address was tried). Nothing
here asserts on durations; the reported seconds only appear in failure messages.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from cryptography.hazmat.primitives import serialization

from trustchain.ca.authority import CertificateAuthority, Issued
from trustchain.crypto.keystore import KdfParams, KeyStore

from .netns import (
    CLIENT_V4,
    CLIENT_V6,
    NETNS_ETC,
    SERVER_NAME,
    SERVER_V4,
    SERVER_V6,
    Block,
    NetnsFactory,
    NetnsPair,
    NetnsProcess,
    block_udp,
    firewall_rules,
    netns_pair,
    python,
    require_netns,
    run_in,
)

NAMESPACE = "bank.hypermesh"
CLIENT_NAME = "client1.bank.hypermesh"
PASSPHRASE = "pw"
#: The weakest Argon2id the key store accepts without ``allow_weak_kdf`` (which the command
#: line does not pass): the STOQ processes open the store like any operator would.
KDF = KdfParams(
    time_cost=KdfParams.MIN_TIME_COST, memory_cost_kib=KdfParams.MIN_MEMORY_KIB, parallelism=1
)


CAPTURE: dict[str, Any] = {"capture_output": True, "text": True, "check": True}


@pytest.fixture
def netns() -> Iterator[NetnsFactory]:
    require_netns()
    with NetnsFactory() as factory:
        yield factory


# --- the harness, with plain UDP --------------------------------------------------------------

UDP_ECHO = """
import json, socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 0))
print(json.dumps({"listening": ["::", s.getsockname()[1]]}), flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(b"echo:" + data, peer)
"""

#: argv: name port family(4|6) timeout. Resolves the name for that family, sends "ping" on a
#: connected UDP socket (so ICMP errors surface) and prints one JSON line: the address used and
#: either the reply or the errno name ("timeout" when nothing came back).
UDP_CLIENT = """
import errno, json, socket, sys
name, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[4])
family = socket.AF_INET6 if sys.argv[3] == "6" else socket.AF_INET
try:
    infos = socket.getaddrinfo(name, port, family, socket.SOCK_DGRAM)
except socket.gaierror as exc:
    print(json.dumps({"error": "gaierror", "detail": str(exc)}))
    raise SystemExit(0)
sockaddr = infos[0][4]
result = {"address": sockaddr[0]}
s = socket.socket(family, socket.SOCK_DGRAM)
s.settimeout(timeout)
try:
    s.connect(sockaddr)
    s.send(b"ping")
    result["reply"] = s.recv(2048).decode()
except TimeoutError:
    result["error"] = "timeout"
except OSError as exc:
    result["error"] = errno.errorcode.get(exc.errno, str(exc.errno))
print(json.dumps(result))
"""


def udp_echo(netns: NetnsFactory, pair: NetnsPair) -> int:
    server = netns.spawn(pair.server, python("-c", UDP_ECHO))
    listening = server.read_json(timeout=30)
    port = listening["listening"][1]
    assert isinstance(port, int)
    return port


def udp_ping(pair: NetnsPair, port: int, family: Literal[4, 6], timeout: float = 2.0) -> Any:
    done = run_in(
        pair.client, python("-c", UDP_CLIENT, SERVER_NAME, str(port), str(family), str(timeout))
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def addresses_in(pair_side: str, family: Literal[4, 6]) -> str:
    flag = "-6" if family == 6 else "-4"
    done = run_in(pair_side, ["ip", flag, "-o", "addr", "show"])
    assert done.returncode == 0, done.stderr
    return str(done.stdout)


def test_harness_dual_stack_echoes_over_both_families(netns: NetnsFactory) -> None:
    pair = netns.pair()
    port = udp_echo(netns, pair)
    assert udp_ping(pair, port, 6) == {"address": SERVER_V6, "reply": "echo:ping"}
    assert udp_ping(pair, port, 4) == {"address": SERVER_V4, "reply": "echo:ping"}
    assert CLIENT_V6 in addresses_in(pair.client.name, 6)
    assert CLIENT_V4 in addresses_in(pair.client.name, 4)


def test_harness_ipv4_only_client_has_no_ipv6_but_still_resolves_aaaa(
    netns: NetnsFactory,
) -> None:
    pair = netns.pair(client_ipv6=False)
    port = udp_echo(netns, pair)
    assert addresses_in(pair.client.name, 6) == ""
    # With IPv6 disabled there is no source address to connect from, so the kernel says so.
    assert udp_ping(pair, port, 6) == {"address": SERVER_V6, "error": "EADDRNOTAVAIL"}
    assert udp_ping(pair, port, 4) == {"address": SERVER_V4, "reply": "echo:ping"}


def test_harness_ipv6_only_client_has_no_route_to_ipv4(netns: NetnsFactory) -> None:
    pair = netns.pair(client_ipv4=False)
    port = udp_echo(netns, pair)
    assert CLIENT_V4 not in addresses_in(pair.client.name, 4)
    assert udp_ping(pair, port, 4) == {"address": SERVER_V4, "error": "ENETUNREACH"}
    assert udp_ping(pair, port, 6) == {"address": SERVER_V6, "reply": "echo:ping"}


@pytest.mark.parametrize(
    ("how", "error"),
    [("drop", "timeout"), ("adm-prohibited", "EACCES"), ("port-unreachable", "ECONNREFUSED")],
)
def test_harness_firewall_blocks_ipv6_udp_only(netns: NetnsFactory, how: Block, error: str) -> None:
    pair = netns.pair()
    port = udp_echo(netns, pair)
    block_udp(pair.server, 6, how)
    rules = firewall_rules(pair.server, 6)
    assert "-A INPUT -i veth0 -p udp -j" in rules
    assert udp_ping(pair, port, 6, timeout=1.0) == {"address": SERVER_V6, "error": error}, rules
    assert udp_ping(pair, port, 4) == {"address": SERVER_V4, "reply": "echo:ping"}


def test_harness_teardown_removes_namespaces_and_hosts_files() -> None:
    require_netns()
    built: list[NetnsPair] = []

    def fail_inside() -> None:
        with netns_pair() as pair:
            built.append(pair)
            assert pair.client.hosts_file.read_text().count(SERVER_NAME) == 2
            raise RuntimeError("failure inside the block")

    with pytest.raises(RuntimeError, match="inside the block"):
        fail_inside()
    (pair,) = built
    listed = subprocess.run(["ip", "netns", "list"], **CAPTURE).stdout
    for side in (pair.server, pair.client):
        assert side.name not in listed
        assert not side.hosts_file.parent.exists()


def test_harness_reaps_namespaces_left_by_a_killed_run() -> None:
    require_netns()
    finished = subprocess.run(python("-c", "import os; print(os.getpid())"), **CAPTURE)
    dead_pid = int(finished.stdout)
    name = f"stq-{dead_pid}-0-srv"
    subprocess.run(["ip", "netns", "add", name], **CAPTURE)
    (NETNS_ETC / name).mkdir(parents=True)
    (NETNS_ETC / name / "hosts").write_text("")
    with NetnsFactory():
        listed = subprocess.run(["ip", "netns", "list"], **CAPTURE).stdout
        assert name not in listed
        assert not (NETNS_ETC / name).exists()


# --- STOQ over the namespaces -----------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    key_name: str
    chain_pem: Path


@dataclass(frozen=True)
class Pki:
    home: Path
    root_pem: Path
    server: Credentials
    client: Credentials

    def args(self, who: Credentials) -> list[str]:
        return [
            "--home",
            str(self.home),
            "--key",
            who.key_name,
            "--chain",
            str(who.chain_pem),
            "--trust",
            str(self.root_pem),
        ]


def _write_chain(path: Path, issued: Issued) -> Path:
    path.write_bytes(
        b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (issued.certificate, *issued.chain)
        )
    )
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("dual-stack-pki")
    home = base / "keys"
    with KeyStore.open(home, passphrase=PASSPHRASE.encode(), kdf_params=KDF) as store:
        ca = CertificateAuthority(base / "ca", store)
        try:
            root = ca.init_root("hypermesh-root")
            ca.issue_intermediate("bank", NAMESPACE)
            server = ca.issue("bank", "node", SERVER_NAME, dns_names=[SERVER_NAME])
            client = ca.issue("bank", "node", CLIENT_NAME, dns_names=[CLIENT_NAME])
        finally:
            ca.close()
    assert server.key_name is not None
    assert client.key_name is not None
    root_pem = base / "root.pem"
    root_pem.write_bytes(root.certificate.public_bytes(serialization.Encoding.PEM))
    return Pki(
        home=home,
        root_pem=root_pem,
        server=Credentials(server.key_name, _write_chain(base / "server.pem", server)),
        client=Credentials(client.key_name, _write_chain(base / "client.pem", client)),
    )


ENV = {"TRUSTCHAIN_PASSPHRASE": PASSPHRASE}


def stoq_serve(netns: NetnsFactory, pair: NetnsPair, pki: Pki) -> tuple[NetnsProcess, int]:
    argv = python(
        "-m", "stoq", "serve", *pki.args(pki.server),
        "--host", "::", "--port", "0", "--namespace", NAMESPACE,
    )  # fmt: skip
    server = netns.spawn(pair.server, argv, env=ENV)
    listening = server.read_json(timeout=60)
    assert "listening" in listening, listening
    port = listening["listening"][1]
    assert isinstance(port, int)
    assert port > 0
    return server, port


@dataclass(frozen=True)
class Outcome:
    code: int
    report: dict[str, Any]
    stderr: str

    def describe(self, server: NetnsProcess) -> str:
        return (
            f"exit {self.code}, report {self.report}\n--- client stderr\n{self.stderr}"
            f"\n--- server stderr\n{server.stderr_text()}"
        )


def stoq_connect(pair: NetnsPair, pki: Pki, port: int, *extra: str) -> Outcome:
    argv = python(
        "-m", "stoq", "connect", SERVER_NAME, "--port", str(port), *pki.args(pki.client),
        "--server-name", SERVER_NAME, "--message", "hello across namespaces", "--json", *extra,
    )  # fmt: skip
    done = run_in(pair.client, argv, env=ENV, timeout=120)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line, got {done.stdout!r}; stderr {done.stderr}"
    report = json.loads(lines[0])
    assert isinstance(report, dict)
    return Outcome(done.returncode, report, done.stderr)


def assert_connected(
    outcome: Outcome, server: NetnsProcess, *, family: Literal[4, 6], address: str
) -> None:
    why = outcome.describe(server)
    assert outcome.code == 0, why
    assert outcome.report["family"] == family, why
    assert outcome.report["remote"][0] == address, why
    assert outcome.report["peer"] == SERVER_NAME, why
    assert outcome.report["echo"] == "hello across namespaces", why


def test_ipv4_only_client_reaches_a_dual_stack_server(netns: NetnsFactory, pki: Pki) -> None:
    pair = netns.pair(client_ipv6=False)
    server, port = stoq_serve(netns, pair, pki)
    outcome = stoq_connect(pair, pki, port)
    assert_connected(outcome, server, family=4, address=SERVER_V4)


def test_ipv6_only_client_reaches_a_dual_stack_server(netns: NetnsFactory, pki: Pki) -> None:
    pair = netns.pair(client_ipv4=False)
    server, port = stoq_serve(netns, pair, pki)
    outcome = stoq_connect(pair, pki, port)
    assert_connected(outcome, server, family=6, address=SERVER_V6)


def test_dual_stack_on_both_sides_prefers_ipv6(netns: NetnsFactory, pki: Pki) -> None:
    pair = netns.pair()
    server, port = stoq_serve(netns, pair, pki)
    outcome = stoq_connect(pair, pki, port)
    assert_connected(outcome, server, family=6, address=SERVER_V6)


def test_silently_dropped_ipv6_falls_back_to_ipv4(netns: NetnsFactory, pki: Pki) -> None:
    pair = netns.pair()
    server, port = stoq_serve(netns, pair, pki)
    block_udp(pair.server, 6, "drop")
    outcome = stoq_connect(pair, pki, port)
    assert_connected(outcome, server, family=4, address=SERVER_V4)


@pytest.mark.parametrize("how", ["adm-prohibited", "port-unreachable"])
def test_actively_refused_ipv6_falls_back_to_ipv4(
    netns: NetnsFactory, pki: Pki, how: Block
) -> None:
    pair = netns.pair()
    server, port = stoq_serve(netns, pair, pki)
    block_udp(pair.server, 6, how)
    outcome = stoq_connect(pair, pki, port)
    assert_connected(outcome, server, family=4, address=SERVER_V4)


def test_nothing_reachable_fails_naming_every_address(netns: NetnsFactory, pki: Pki) -> None:
    pair = netns.pair()
    server, port = stoq_serve(netns, pair, pki)
    block_udp(pair.server, 6, "drop")
    block_udp(pair.server, 4, "drop")
    outcome = stoq_connect(pair, pki, port, "--attempt-delay", "0.1", "--timeout", "3")
    why = outcome.describe(server)
    assert outcome.code == 1, why
    assert set(outcome.report) == {"error", "attempts"}, why
    tried = [address for address, _reason in outcome.report["attempts"]]
    assert sorted(tried) == sorted([SERVER_V6, SERVER_V4]), why
    assert all(reason for _address, reason in outcome.report["attempts"]), why
    assert SERVER_V6 in outcome.report["error"], why
    assert SERVER_V4 in outcome.report["error"], why
