"""Linux network namespaces for tests: a server and a client joined by one veth pair.

:class:`NetnsFactory` (or the one-shot :func:`netns_pair`) builds a :class:`NetnsPair`: two
fresh namespaces named ``stq-<pid>-<n>-srv`` and ``stq-<pid>-<n>-cli``, each with ``lo`` up and
one end of a veth pair called ``veth0``. Addresses, per side and per family:

==========  ================  ================
side        IPv4 (/24)        IPv6 (/64, nodad)
==========  ================  ================
server      10.77.0.1         fd77::1
client      10.77.0.2         fd77::2
==========  ================  ================

A side built without IPv6 runs with ``net.ipv6.conf.{all,default,lo,veth0}.disable_ipv6=1`` in
its namespace (no IPv6 address at all, not even ``::1`` or a link-local one); a side without
IPv4 has no IPv4 address on ``veth0`` (only ``127.0.0.1`` on ``lo``), so it has no route to
the other side's IPv4 address.

Name resolution: ``ip netns exec NAME`` bind-mounts every file in ``/etc/netns/NAME/`` over the
file of the same name in ``/etc``. Each side gets an ``/etc/netns/NAME/hosts`` mapping
:data:`SERVER_NAME` (``node1.bank.hypermesh``) to the server's IPv6 and IPv4 addresses (those
it has), so ``getaddrinfo`` inside the namespaces returns real AAAA and A answers.

Firewalling (:func:`block_udp`) adds an ``iptables``/``ip6tables`` rule to a side's INPUT chain
for UDP arriving on ``veth0``: ``drop`` (silent), or ``REJECT`` with ICMP administratively
prohibited or port unreachable (actively refused).

Programs run inside a namespace with :func:`run_in` (to completion) or :func:`spawn_in` (in the
background, killed at teardown). Teardown kills what was spawned, deletes both namespaces (which
destroys the veth pair and the firewall rules) and removes ``/etc/netns/NAME`` even when setup
or the test failed; namespaces a killed run left behind (their test process is gone) are
deleted by the next factory. :func:`require_netns` skips the calling test when not root or when
``ip`` is missing.
"""

from __future__ import annotations

import itertools
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import pytest

SERVER_NAME = "node1.bank.hypermesh"
SERVER_V4 = "10.77.0.1"
CLIENT_V4 = "10.77.0.2"
SERVER_V6 = "fd77::1"
CLIENT_V6 = "fd77::2"
INTERFACE = "veth0"
NETNS_ETC = Path("/etc/netns")

#: How a firewall rule treats the UDP it matches.
Block = Literal["drop", "adm-prohibited", "port-unreachable"]
_REJECT_WITH = {
    (6, "adm-prohibited"): "icmp6-adm-prohibited",
    (6, "port-unreachable"): "icmp6-port-unreachable",
    (4, "adm-prohibited"): "icmp-admin-prohibited",
    (4, "port-unreachable"): "icmp-port-unreachable",
}

_counter = itertools.count()


class NetnsError(RuntimeError):
    """A command that builds or drives a namespace failed; the message has its stderr."""


def require_netns() -> None:
    """Skip the calling test unless namespaces can be built here (root, and ``ip`` present)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("network namespaces need iproute2's ip command")


def _run(argv: Sequence[str], *, timeout: float = 30.0) -> str:
    """Run a setup command; its stdout, or NetnsError with its stderr when it fails."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise NetnsError(f"{argv[0]} is not installed: {exc}") from exc
    if done.returncode != 0:
        raise NetnsError(
            f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip() or done.stdout}"
        )
    return done.stdout


@dataclass(frozen=True)
class Side:
    """One namespace: its name and the addresses its ``veth0`` has (None: that family is off)."""

    name: str
    ipv4: str | None
    ipv6: str | None
    interface: str = INTERFACE

    @property
    def hosts_file(self) -> Path:
        """The file ``ip netns exec`` mounts over /etc/hosts inside this namespace."""
        return NETNS_ETC / self.name / "hosts"


@dataclass(frozen=True)
class NetnsPair:
    """A server namespace and a client namespace on one veth link."""

    server: Side
    client: Side


def python(*args: str) -> list[str]:
    """An argv that runs this interpreter (the test's virtualenv) with ``args``."""
    return [sys.executable, *args]


def netns_argv(ns: Side | str, argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped to run inside namespace ``ns``."""
    name = ns.name if isinstance(ns, Side) else ns
    return ["ip", "netns", "exec", name, *argv]


def run_in(
    ns: Side | str,
    argv: Sequence[str],
    *,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion inside ``ns``; stdout and stderr are captured as text.

    ``env`` is added to this process's environment. The exit status is not checked: the
    caller asserts on it (with the output in the message).
    """
    return subprocess.run(
        netns_argv(ns, argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
        input=input_text,
    )


@dataclass
class NetnsProcess:
    """A background process inside a namespace: stdout is a pipe, stderr goes to a temp file."""

    argv: list[str]
    popen: subprocess.Popen[str]
    stderr_file: IO[str]
    lines: list[str] = field(default_factory=list)

    def stderr_text(self) -> str:
        """Everything the process wrote to stderr so far."""
        self.stderr_file.flush()
        self.stderr_file.seek(0)
        return self.stderr_file.read()

    def read_line(self, timeout: float = 30.0) -> str:
        """The next line the process prints on stdout (without the newline).

        Raises NetnsError when the process exits first or prints nothing within ``timeout``,
        with what it wrote to stderr.
        """
        stdout = self.popen.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NetnsError(
                        f"{self.argv} printed no line within {timeout} s; "
                        f"stderr: {self.stderr_text()}"
                    )
                if selector.select(remaining):
                    break
        line = stdout.readline()
        if not line:
            code = self.popen.wait(timeout=10)
            raise NetnsError(f"{self.argv} exited {code} before printing; {self.stderr_text()}")
        self.lines.append(line)
        return line.rstrip("\n")

    def read_json(self, timeout: float = 30.0) -> Any:
        """The next stdout line, parsed as JSON."""
        line = self.read_line(timeout)
        try:
            return json.loads(line)
        except json.JSONDecodeError as exc:
            raise NetnsError(
                f"{self.argv} printed {line!r}, not JSON; {self.stderr_text()}"
            ) from exc

    def stop(self, timeout: float = 10.0) -> int:
        """Terminate the process (SIGTERM, then SIGKILL after ``timeout``); its exit status."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        code = self.popen.returncode
        assert code is not None
        return code


def spawn_in(
    ns: Side | str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
) -> NetnsProcess:
    """Start ``argv`` inside ``ns`` in the background (the caller stops it; see NetnsFactory)."""
    full = netns_argv(ns, argv)
    stderr_file = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 (owned below)
    try:
        popen = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            text=True,
            env={**os.environ, **(env or {})},
        )
    except BaseException:
        stderr_file.close()
        raise
    return NetnsProcess(full, popen, stderr_file)


def _write_sysctls(ns: str, values: Mapping[str, str]) -> None:
    """Set sysctls (dotted names) inside namespace ``ns`` through its /proc/sys."""
    script = (
        "import sys\n"
        "for item in sys.argv[1:]:\n"
        "    key, value = item.split('=', 1)\n"
        "    with open('/proc/sys/' + key.replace('.', '/'), 'w') as f:\n"
        "        f.write(value)\n"
    )
    _run(netns_argv(ns, python("-c", script, *(f"{k}={v}" for k, v in values.items()))))


def hosts_text(names: Mapping[str, Sequence[str]]) -> str:
    """An /etc/hosts body: localhost lines, then one line per (name, address)."""
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    lines += [f"{address} {name}" for name, addresses in names.items() for address in addresses]
    return "\n".join(lines) + "\n"


def block_udp(side: Side, family: Literal[4, 6], how: Block) -> None:
    """Add a rule to ``side``'s INPUT chain for UDP of ``family`` arriving on its veth.

    ``drop`` discards it silently; ``adm-prohibited`` / ``port-unreachable`` REJECT it with
    that ICMP (ICMPv6 for family 6) error, so the sender learns it was refused.
    """
    tool = "ip6tables" if family == 6 else "iptables"
    if shutil.which(tool) is None:
        raise NetnsError(f"{tool} is not installed (Debian package iptables)")
    rule = ["-A", "INPUT", "-i", side.interface, "-p", "udp"]
    if how == "drop":
        rule += ["-j", "DROP"]
    else:
        rule += ["-j", "REJECT", "--reject-with", _REJECT_WITH[(family, how)]]
    _run(netns_argv(side, [tool, *rule]))


def firewall_rules(side: Side, family: Literal[4, 6]) -> str:
    """``iptables -S`` / ``ip6tables -S`` inside ``side`` (for assertion messages)."""
    return _run(netns_argv(side, ["ip6tables" if family == 6 else "iptables", "-S"]))


def reap_stale() -> list[str]:
    """Delete ``stq-<pid>-*`` namespaces (and their /etc/netns directories) whose test process
    is gone, as a SIGKILLed run leaves them; the names deleted."""
    listed = _run(["ip", "netns", "list"])
    names = {line.split()[0] for line in listed.splitlines() if line.strip()}
    if NETNS_ETC.is_dir():
        names |= {path.name for path in NETNS_ETC.iterdir()}
    stale = []
    for name in sorted(names):
        parts = name.split("-")
        if len(parts) != 4 or parts[0] != "stq" or not parts[1].isdigit():
            continue
        if Path(f"/proc/{parts[1]}").exists():
            continue
        if Path(f"/run/netns/{name}").exists():
            _run(["ip", "netns", "del", name])
        shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
        stale.append(name)
    return stale


class NetnsFactory:
    """Builds namespace pairs and tears every one down on :meth:`close` (or leaving ``with``).

    Use one per test (see the ``netns`` fixtures in the tests); each :meth:`pair` gets fresh
    names, so pairs never collide with each other or with other test processes.
    """

    def __init__(self) -> None:
        reap_stale()
        self._stack = ExitStack()
        self._processes: list[NetnsProcess] = []

    def __enter__(self) -> NetnsFactory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop spawned processes, delete namespaces and their /etc/netns directories."""
        self._stack.close()

    def pair(
        self,
        *,
        server_ipv4: bool = True,
        server_ipv6: bool = True,
        client_ipv4: bool = True,
        client_ipv6: bool = True,
        hosts: Mapping[str, Sequence[str]] | None = None,
    ) -> NetnsPair:
        """Two new namespaces on one veth link, configured as the module docstring says.

        ``hosts`` overrides the name -> addresses map written into both namespaces' hosts
        files (default: :data:`SERVER_NAME` -> the server's IPv6 then IPv4 address).
        """
        n = next(_counter)
        base = f"stq-{os.getpid()}-{n}"
        server = Side(
            f"{base}-srv", SERVER_V4 if server_ipv4 else None, SERVER_V6 if server_ipv6 else None
        )
        client = Side(
            f"{base}-cli", CLIENT_V4 if client_ipv4 else None, CLIENT_V6 if client_ipv6 else None
        )
        if hosts is None:
            hosts = {SERVER_NAME: [a for a in (server.ipv6, server.ipv4) if a is not None]}
        for side in (server, client):
            _run(["ip", "netns", "add", side.name])
            self._stack.callback(_run, ["ip", "netns", "del", side.name])
            directory = side.hosts_file.parent
            directory.mkdir(parents=True, exist_ok=True)
            self._stack.callback(shutil.rmtree, directory, ignore_errors=False)
            side.hosts_file.write_text(hosts_text(hosts), encoding="utf-8")
        _run(
            f"ip link add {INTERFACE} netns {server.name} type veth "
            f"peer name {INTERFACE} netns {client.name}".split()
        )
        for side in (server, client):
            self._configure(side)
        return NetnsPair(server, client)

    @staticmethod
    def _configure(side: Side) -> None:
        ip = ["ip", "-n", side.name]
        if side.ipv6 is None:
            _write_sysctls(
                side.name,
                {
                    f"net.ipv6.conf.{dev}.disable_ipv6": "1"
                    for dev in ("all", "default", "lo", side.interface)
                },
            )
        else:
            _run([*ip, "addr", "add", f"{side.ipv6}/64", "dev", side.interface, "nodad"])
        if side.ipv4 is not None:
            _run([*ip, "addr", "add", f"{side.ipv4}/24", "dev", side.interface])
        _run([*ip, "link", "set", "lo", "up"])
        _run([*ip, "link", "set", side.interface, "up"])

    def spawn(
        self, ns: Side | str, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> NetnsProcess:
        """:func:`spawn_in`, stopped at teardown (before the namespaces go)."""
        process = spawn_in(ns, argv, env=env)
        self._stack.callback(process.stderr_file.close)
        self._stack.callback(process.stop)
        self._processes.append(process)
        return process


@contextmanager
def netns_pair(
    *,
    server_ipv4: bool = True,
    server_ipv6: bool = True,
    client_ipv4: bool = True,
    client_ipv6: bool = True,
    hosts: Mapping[str, Sequence[str]] | None = None,
) -> Iterator[NetnsPair]:
    """One :class:`NetnsPair`, torn down on leaving the ``with`` block."""
    with NetnsFactory() as factory:
        yield factory.pair(
            server_ipv4=server_ipv4,
            server_ipv6=server_ipv6,
            client_ipv4=client_ipv4,
            client_ipv6=client_ipv6,
            hosts=hosts,
        )
