"""A NAT laboratory: real Linux NATs (iptables + conntrack) in network namespaces.

:class:`NatLab` builds one "internet" and one private site per :class:`SiteKind`, starts a
RFC 5780 STUN server and a TURN server on the internet, and tears all of it down on
:meth:`NatLab.close` (or leaving ``with``). Namespaces are named ``stq-<pid>-lab<n>-<role>``, so
:func:`netns.reap_stale` deletes those a killed run left behind (every lab reaps on creation).

Topology (site number ``K`` = 1, 2, ... in the order of the kinds asked for, then the twins)::

                         namespace "inet": bridge br0, 203.0.113.0/24 (TEST-NET-3)
      STUN 203.0.113.1:3478 (primary), alternate 203.0.113.2:3479 (RFC 5780: A1/A2, P1/P2)
      TURN 203.0.113.3:3478 (UDP and TCP; relayed addresses on 203.0.113.3)
          |  veth "sK" (in inet, a port of br0)  <->  "pub0" (in the site's router)
      router rK: pub0 203.0.113.(10+K)/24 (the site's public IP), priv0 10.100.K.1/24,
          |      ip_forward=1, the NAT rules of its kind (below)
          |  veth "priv0" (router)  <->  "eth0" (host)
      host hK: eth0 10.100.K.2/24, default route via 10.100.K.1

* ``public``: no router; the host's eth0 is a port of br0 with 203.0.113.(10+K)/24 (no NAT,
  no firewall: the baseline).
* ``double-nat``: two routers in series. Outer rK: pub0 203.0.113.(10+K), priv0
  192.168.K.1/24; inner iK: pub0 192.168.K.2/24 (default route via 192.168.K.1), priv0
  10.100.K.1/24; host hK behind iK as above. Both routers carry the ``port-restricted-cone``
  rules (a home router behind a carrier NAT).

The internet never has a route to 10.100.0.0/16 or 192.168.0.0/16: anything reaching a host
went through its router's translation. Every rule below is run as ``iptables RULE`` inside the
router namespace, in this order, with ``{host}`` the host's (or, for an outer double-NAT
router, the inner router's) private IP and ``{public}`` the router's public IP. Every router
first gets :data:`FILTER_BASE` (forwarding default-deny; answers to what went out come back;
unsolicited UDP to the router itself is dropped, as home routers' input firewalls do):

* ``-P FORWARD DROP``
* ``-A FORWARD -i pub0 -o priv0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT``
* ``-A INPUT -i pub0 -p udp -m conntrack --ctstate NEW -j DROP``

The input rule matters for hole punching, not only for looks. A datagram the router *accepts*
for itself (even just to answer ICMP port unreachable) gets a confirmed conntrack entry
``peer:p -> router:q``. When the router's host later sends ``host:q -> peer:p``, the reply tuple
of its masqueraded flow would be that very entry, so MASQUERADE must pick another source port:
the host's server-reflexive candidate (port ``q``) goes stale, and a peer that filters on
address and port never gets in. Two sites one bridge apart (microseconds) hit this whenever one
side's first check reaches the other's router before that router's host has sent its own. A
datagram dropped in INPUT never gets its conntrack entry confirmed, so the port stays free.

``full-cone`` (endpoint-independent mapping and filtering): a static 1:1 NAT of the host.
Outbound UDP keeps its source port (SNAT only changes a port that would clash, and there is one
host), and every inbound UDP to the public IP is forwarded to the same port of the host,
whoever sends it; the host's own stack answers ports nothing listens on::

    -t nat -A POSTROUTING -o pub0 -s {host} -j SNAT --to-source {public}
    -t nat -A PREROUTING -i pub0 -d {public} -p udp -j DNAT --to-destination {host}
    -A FORWARD -i pub0 -o priv0 -d {host} -m conntrack --ctstate DNAT -j ACCEPT
    -A FORWARD -i priv0 -o pub0 -j ACCEPT

``restricted-cone`` (endpoint-independent mapping, address-dependent filtering): the same SNAT;
every remote IP the host sends to is recorded in the ``xt_recent`` list ``contacted``, and
inbound UDP is forwarded to the host only from an IP on that list (seen in the last 120 s),
from any port. Known deviation from RFC 4787 §5: the filter is kept per site (per host IP)
and per remote IP, not per mapping — a remote IP the host contacted from one port may reach
the host's other mapped ports too. With one host probing from one socket (the discovery and
relay tests here) the difference cannot show::

    -t nat -A POSTROUTING -o pub0 -s {host} -j SNAT --to-source {public}
    -t nat -A PREROUTING -i pub0 -d {public} -p udp -m recent --rcheck --seconds 120
        --name contacted --rsource -j DNAT --to-destination {host}      (one rule)
    -A FORWARD -i priv0 -o pub0 -m recent --set --name contacted --rdest
    -A FORWARD -i pub0 -o priv0 -d {host} -m conntrack --ctstate DNAT -j ACCEPT
    -A FORWARD -i priv0 -o pub0 -j ACCEPT

``port-restricted-cone`` (endpoint-independent mapping with port preservation,
address-and-port-dependent filtering): plain Linux masquerading. conntrack keys each flow on
the full 5-tuple, so only the exact (IP, port) the host sent to gets back in; an unsolicited
datagram is for the router itself, whose input firewall (:data:`FILTER_BASE`) drops it::

    -t nat -A POSTROUTING -o pub0 -j MASQUERADE
    -A FORWARD -i priv0 -o pub0 -j ACCEPT

``symmetric`` (address-and-port-dependent mapping and filtering): masquerading with a random
source port for every new flow, drawn by the kernel from 1024-65535 when the host's port is
above 1023 (so two destinations see two different ports; the chance that two random ports
coincide, which would read as endpoint-independent, is about 1 in 64 000)::

    -t nat -A POSTROUTING -o pub0 -j MASQUERADE --random-fully
    -A FORWARD -i priv0 -o pub0 -j ACCEPT

``udp-blocked`` (a firewall that lets only TCP out; masquerading as above, but every outbound
UDP datagram is dropped silently, so STUN gets no answer at all)::

    -t nat -A POSTROUTING -o pub0 -j MASQUERADE
    -A FORWARD -i priv0 -o pub0 -p udp -j DROP
    -A FORWARD -i priv0 -o pub0 -j ACCEPT

Not built: an *address-dependent mapping* NAT (a new port per remote IP but the same port for
every port of that IP). Linux conntrack picks the translated port per flow (5-tuple); no
iptables target keeps one port per (host port, remote IP) pair, so it cannot be made faithfully.

The TURN server refuses peers in the documentation ranges by default (its peer policy,
:func:`stoq.nat.turn_server.peer_refusal`), and 203.0.113.0/24 is one: the lab starts it with
``--allow-peer 203.0.113.0/24`` (and never ``--allow-loopback-peers``), so it relays between the
lab's public addresses only.

Programs run in a namespace as subprocesses (:func:`netns.run_in`, :meth:`NatLab.run_all`), or
inside this process: :func:`inside` moves the calling thread into a namespace for the sockets
it creates there (a socket stays in the namespace it was created in), then moves it back.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import pytest

from . import netns
from .netns import NetnsError, NetnsProcess, _run, _write_sysctls, netns_argv, python

PUBLIC_NETWORK = "203.0.113.0/24"
STUN_PRIMARY = ("203.0.113.1", 3478)
STUN_ALTERNATE = ("203.0.113.2", 3479)
TURN_IP = "203.0.113.3"
TURN_PORT = 3478
TURN_REALM = "natlab.test"
TURN_USER = "natlab"
TURN_PASSWORD = "natlab-secret"
BRIDGE = "br0"


class SiteKind(enum.StrEnum):
    """What stands between a site's host and the internet."""

    PUBLIC = "public"
    FULL_CONE = "full-cone"
    RESTRICTED_CONE = "restricted-cone"
    PORT_RESTRICTED_CONE = "port-restricted-cone"
    SYMMETRIC = "symmetric"
    DOUBLE_NAT = "double-nat"
    UDP_BLOCKED = "udp-blocked"


ALL_KINDS: tuple[SiteKind, ...] = tuple(SiteKind)

FILTER_BASE: tuple[str, ...] = (
    "-P FORWARD DROP",
    "-A FORWARD -i pub0 -o priv0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
    "-A INPUT -i pub0 -p udp -m conntrack --ctstate NEW -j DROP",
)

_OUT = "-A FORWARD -i priv0 -o pub0 -j ACCEPT"
_DNAT_IN = "-A FORWARD -i pub0 -o priv0 -d {host} -m conntrack --ctstate DNAT -j ACCEPT"
_SNAT = "-t nat -A POSTROUTING -o pub0 -s {host} -j SNAT --to-source {public}"
_MASQUERADE = "-t nat -A POSTROUTING -o pub0 -j MASQUERADE"

#: The rules of each router kind, after :data:`FILTER_BASE` (see the module docstring).
RULES: Mapping[SiteKind, tuple[str, ...]] = {
    SiteKind.FULL_CONE: (
        _SNAT,
        "-t nat -A PREROUTING -i pub0 -d {public} -p udp -j DNAT --to-destination {host}",
        _DNAT_IN,
        _OUT,
    ),
    SiteKind.RESTRICTED_CONE: (
        _SNAT,
        "-t nat -A PREROUTING -i pub0 -d {public} -p udp -m recent --rcheck --seconds 120 "
        "--name contacted --rsource -j DNAT --to-destination {host}",
        "-A FORWARD -i priv0 -o pub0 -m recent --set --name contacted --rdest",
        _DNAT_IN,
        _OUT,
    ),
    SiteKind.PORT_RESTRICTED_CONE: (_MASQUERADE, _OUT),
    SiteKind.SYMMETRIC: ("-t nat -A POSTROUTING -o pub0 -j MASQUERADE --random-fully", _OUT),
    SiteKind.UDP_BLOCKED: (_MASQUERADE, "-A FORWARD -i priv0 -o pub0 -p udp -j DROP", _OUT),
}

_lab_counter = itertools.count()
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def require_natlab() -> None:
    """Skip the calling test unless a lab can be built here (root, ``ip`` and ``iptables``)."""
    if os.geteuid() != 0:
        pytest.skip("the NAT lab needs root (network namespaces and iptables)")
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            pytest.skip(f"the NAT lab needs the {tool} command")


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise NetnsError(f"setns failed: {os.strerror(errno)}")


@contextmanager
def inside(namespace: str) -> Iterator[None]:
    """Run the body with the calling thread in network namespace ``namespace``; sockets created
    there stay in it. The thread is moved back on leaving, also on errors."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


@dataclass(frozen=True)
class Site:
    """One private site: its kind, the host's namespace and IP, the public IP its traffic
    leaves with, and its routers' namespaces (outermost first; none for ``public``)."""

    kind: SiteKind
    number: int
    host: str
    host_ip: str
    public_ip: str
    routers: tuple[str, ...]


class NatLab:
    """The internet, the servers and one site per kind (module docstring); use with ``with``."""

    def __init__(
        self, kinds: Sequence[SiteKind] = ALL_KINDS, *, twins: Sequence[SiteKind] = ()
    ) -> None:
        netns.reap_stale()
        self._stack = ExitStack()
        self.base = f"stq-{os.getpid()}-lab{next(_lab_counter)}"
        self.namespaces: list[str] = []
        self.inet = f"{self.base}-inet"
        self.sites: dict[SiteKind, Site] = {}
        #: A second site of each kind in ``twins`` (numbered after the sites), for pairings of
        #: two NATs of the same kind.
        self.twins: dict[SiteKind, Site] = {}
        self.servers: list[NetnsProcess] = []
        try:
            self._build(kinds, twins)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> NatLab:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the servers and delete every namespace (with its veths, bridge and rules)."""
        self._stack.close()

    # --- building ---

    def _namespace(self, role: str) -> str:
        name = f"{self.base}-{role}"
        _run(["ip", "netns", "add", name])
        self._stack.callback(_run, ["ip", "netns", "del", name])
        self.namespaces.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    @staticmethod
    def _veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        _run(["ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b,
              "netns", ns_b])  # fmt: skip
        for ns, interface in ((ns_a, if_a), (ns_b, if_b)):
            _run(["ip", "-n", ns, "link", "set", interface, "up"])

    @staticmethod
    def _address(ns: str, interface: str, cidr: str) -> None:
        _run(["ip", "-n", ns, "addr", "add", cidr, "dev", interface])

    def _uplink(self, ns: str, number: int, interface: str) -> str:
        """Plug ``ns``'s ``interface`` into br0 with the site's public IP; that IP."""
        port = f"s{number}"
        self._veth(ns, interface, self.inet, port)
        _run(["ip", "-n", self.inet, "link", "set", port, "master", BRIDGE])
        public = f"203.0.113.{10 + number}"
        self._address(ns, interface, f"{public}/24")
        return public

    def _router(self, role: str) -> str:
        name = self._namespace(role)
        _write_sysctls(name, {"net.ipv4.ip_forward": "1"})
        return name

    @staticmethod
    def _rules(router: str, kind: SiteKind, host: str, public: str) -> None:
        for rule in (*FILTER_BASE, *RULES[kind]):
            argv = rule.format(host=host, public=public).split()
            _run(netns_argv(router, ["iptables", "-w", *argv]))

    def _build(self, kinds: Sequence[SiteKind], twins: Sequence[SiteKind]) -> None:
        self._namespace("inet")
        inet = ["ip", "-n", self.inet]
        _run([*inet, "link", "add", BRIDGE, "type", "bridge"])
        _run([*inet, "link", "set", BRIDGE, "up"])
        for ip in (STUN_PRIMARY[0], STUN_ALTERNATE[0], TURN_IP):
            self._address(self.inet, BRIDGE, f"{ip}/24")
        for number, kind in enumerate(kinds, start=1):
            self.sites[kind] = self._site(kind, number)
        for number, kind in enumerate(twins, start=len(kinds) + 1):
            self.twins[kind] = self._site(kind, number)
        self._start_servers()

    def _site(self, kind: SiteKind, number: int) -> Site:
        host = self._namespace(f"h{number}")
        host_ip = f"10.100.{number}.2"
        if kind == SiteKind.PUBLIC:
            public = self._uplink(host, number, "eth0")
            return Site(kind, number, host, public, public, ())
        outer = self._router(f"r{number}")
        public = self._uplink(outer, number, "pub0")
        routers: tuple[str, ...] = (outer,)
        last = outer
        if kind == SiteKind.DOUBLE_NAT:
            inner = self._router(f"i{number}")
            self._veth(outer, "priv0", inner, "pub0")
            self._address(outer, "priv0", f"192.168.{number}.1/24")
            self._address(inner, "pub0", f"192.168.{number}.2/24")
            _run(["ip", "-n", inner, "route", "add", "default", "via", f"192.168.{number}.1"])
            self._rules(outer, SiteKind.PORT_RESTRICTED_CONE, f"192.168.{number}.2", public)
            routers = (outer, inner)
            last = inner
        self._veth(last, "priv0", host, "eth0")
        self._address(last, "priv0", f"10.100.{number}.1/24")
        self._address(host, "eth0", f"{host_ip}/24")
        _run(["ip", "-n", host, "route", "add", "default", "via", f"10.100.{number}.1"])
        if kind == SiteKind.DOUBLE_NAT:
            self._rules(last, SiteKind.PORT_RESTRICTED_CONE, host_ip, f"192.168.{number}.2")
        else:
            self._rules(last, kind, host_ip, public)
        return Site(kind, number, host, host_ip, public, routers)

    def _spawn(self, argv: Sequence[str]) -> NetnsProcess:
        process = netns.spawn_in(self.inet, argv)
        self._stack.callback(process.stderr_file.close)
        self._stack.callback(process.stop)
        self.servers.append(process)
        return process

    def _start_servers(self) -> None:
        stun = self._spawn(
            python(
                "-m", "stoq", "stun-server",
                "--listen", f"{STUN_PRIMARY[0]}:{STUN_PRIMARY[1]}",
                "--alternate", f"{STUN_ALTERNATE[0]}:{STUN_ALTERNATE[1]}",
            )
        )  # fmt: skip
        turn = self._spawn(
            python(
                "-m", "stoq", "turn-server",
                "--listen", f"{TURN_IP}:{TURN_PORT}",
                "--listen-tcp", f"{TURN_IP}:{TURN_PORT}",
                "--realm", TURN_REALM,
                "--user", f"{TURN_USER}:{TURN_PASSWORD}",
                "--allow-peer", PUBLIC_NETWORK,
                "--quota", "1000",
            )
        )  # fmt: skip
        # Both print their "listening" lines only once every socket is bound.
        for process in (stun, turn):
            line = process.read_line(timeout=30)
            if not line.startswith("listening "):
                raise NetnsError(f"{process.argv} printed {line!r}; {process.stderr_text()}")

    # --- using ---

    @staticmethod
    def run_all(
        jobs: Mapping[str, tuple[str, Sequence[str]]], *, timeout: float = 60.0
    ) -> dict[str, subprocess.CompletedProcess[str]]:
        """Run every ``key: (namespace, argv)`` at once; their outcomes by key."""
        started = {
            key: subprocess.Popen(
                netns_argv(ns, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for key, (ns, argv) in jobs.items()
        }
        done: dict[str, subprocess.CompletedProcess[str]] = {}
        try:
            for key, popen in started.items():
                out, err = popen.communicate(timeout=timeout)
                done[key] = subprocess.CompletedProcess(popen.args, popen.returncode, out, err)
        finally:
            for popen in started.values():
                if popen.poll() is None:
                    popen.kill()
                    popen.communicate()
        return done

    def iptables_dump(self, router: str) -> str:
        """``iptables -S`` and ``iptables -t nat -S`` in ``router`` (for assertion messages)."""
        return _run(netns_argv(router, ["iptables", "-S"])) + _run(
            netns_argv(router, ["iptables", "-t", "nat", "-S"])
        )
