"""Real-network test lab: Linux network namespaces joined by a bridge.

Why: mDNS discovery can only be tested honestly with real multicast between
separate network stacks (own sockets, own port 5353, own interfaces). A
``NetnsLab`` builds a tiny LAN per test::

    switch netns  (exo-<pid>-<lab>-sw):   br0 <- p1, p2, ...   (veth ends)
    host netns    (exo-<pid>-<lab>-h1):   eth0 = 10.213.<lab>.11/24, fd00:213:<lab>::b/64, fe80::

Every lab has its own bridge, so two labs alive at once are isolated LANs.
Everything it creates (namespaces, processes) is removed on exit, even when the
test body raised; ``cleanup_stale`` removes leftovers of crashed earlier runs.

Gotchas handled here (see the docstrings below for the details):

* IPv6 DAD would leave addresses "tentative" for ~1-2 s (unusable as source),
  so DAD is switched off per interface and the ULA is added with ``nodad``.
* The bridge's multicast snooping (no querier in the lab) can filter
  ``ff02::fb`` between ports, so snooping is switched off: the bridge floods.
* A namespace has no default route; ``224.0.0.0/4`` is routed via ``eth0`` so
  that sockets that do not set ``IP_MULTICAST_IF`` can still send mDNS.
* Interface names are per namespace, so the 15-char ``IFNAMSIZ`` limit only
  bites for names we choose (``br0``, ``p<i>``, ``eth0``); namespace names are
  free-form and carry the creating pid for ``cleanup_stale``.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

__all__ = [
    "DEFAULT_PREFIX",
    "Host",
    "JsonLines",
    "NetnsError",
    "NetnsLab",
    "cleanup_stale",
    "list_netns",
    "netns_available",
]

#: Every namespace we create starts with this; ``exo-<pid>-<lab>-<role>``.
DEFAULT_PREFIX = "exo-"
#: Host interface name inside every host namespace.
HOST_IFNAME = "eth0"
BRIDGE_IFNAME = "br0"

_IP = "ip"
_CMD_TIMEOUT_S = 20.0
_lab_counter = itertools.count()


class NetnsError(RuntimeError):
    """An ``ip`` command failed while building or tearing down a lab."""


@dataclass(frozen=True)
class Host:
    """One host of a lab: its namespace name, interface and static addresses."""

    index: int
    netns: str
    ifname: str
    peer: str  # the veth end in the switch namespace (``p<index>``)
    mac: str
    ipv4: str
    ipv4_prefixlen: int
    ipv6: str  # ULA, added with ``nodad``
    ipv6_prefixlen: int

    @property
    def ipv4_cidr(self) -> str:
        return f"{self.ipv4}/{self.ipv4_prefixlen}"

    @property
    def ipv6_cidr(self) -> str:
        return f"{self.ipv6}/{self.ipv6_prefixlen}"

    @property
    def link_local(self) -> str:
        """EUI-64 link-local address (deterministic because the MAC is)."""
        octets = [int(b, 16) for b in self.mac.split(":")]
        octets[0] ^= 0x02
        eui = [*octets[:3], 0xFF, 0xFE, *octets[3:]]
        groups = [f"{(eui[i] << 8) | eui[i + 1]:x}" for i in range(0, 8, 2)]
        return "fe80::" + ":".join(groups)


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a short command, raising ``NetnsError`` with its stderr on failure."""
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=_CMD_TIMEOUT_S, check=False
    )
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)!r} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _sysctl(netns: str, key: str, value: str) -> None:
    """Set a per-namespace sysctl (``/proc/sys/net`` follows the caller's netns)."""
    path = "/proc/sys/" + key.replace(".", "/")
    _run([_IP, "netns", "exec", netns, "sh", "-c", f"printf %s {value} > {path}"])


def list_netns() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    out = _run([_IP, "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _netns_pids(netns: str) -> list[int]:
    proc = _run([_IP, "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _kill_netns_processes(netns: str) -> None:
    """SIGKILL whatever still runs in ``netns`` (also untracked grandchildren)."""
    for pid in _netns_pids(netns):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _delete_netns(netns: str) -> None:
    _kill_netns_processes(netns)
    _run([_IP, "netns", "del", netns], check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Delete ``<prefix><pid>-...`` namespaces whose creating pid is gone.

    Why: a test run killed hard (SIGKILL, CI timeout) cannot run ``__exit__``;
    its namespaces would otherwise pile up and keep port 5353 sockets alive.
    Returns the names removed.
    """
    if not netns_available()[0]:
        return []
    pattern = re.compile(re.escape(prefix) + r"(\d+)-")
    removed: list[str] = []
    for name in list_netns():
        m = pattern.match(name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        _delete_netns(name)
        removed.append(name)
    return removed


@functools.cache
def netns_available() -> tuple[bool, str]:
    """Whether this machine lets us build a lab (root, iproute2, netns, bridge, veth).

    Why a real probe instead of just ``geteuid() == 0``: containers can be root
    yet lack CAP_SYS_ADMIN or the bridge/veth kernel modules.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False, "needs root to create network namespaces"
    if shutil.which(_IP) is None:
        return False, "iproute2 'ip' command not found"
    name = f"{DEFAULT_PREFIX}{os.getpid()}-probe"
    try:
        _run([_IP, "netns", "add", name])
        try:
            _run([_IP, "-n", name, "link", "add", "pb0", "type", "bridge"])
            _run([_IP, "-n", name, "link", "add", "pv0", "type", "veth", "peer", "name", "pv1"])
        finally:
            _run([_IP, "netns", "del", name], check=False)
    except (NetnsError, OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot create netns/bridge/veth here: {exc}"
    return True, "ok"


class NetnsLab:
    """A bridge in its own namespace plus N host namespaces attached by veth.

    Use as a context manager; ``popen``/``run`` execute inside a host's
    namespace. All processes started via ``popen`` are tracked and terminated
    (then killed) on exit, before the namespaces are deleted.
    """

    def __init__(self, n_hosts: int = 2, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.lab_id = next(_lab_counter)
        self.prefix = prefix
        self.base = f"{prefix}{os.getpid()}-{self.lab_id}"
        self.switch = f"{self.base}-sw"
        # One /24 and one /64 per lab (per process): labs are isolated anyway,
        # distinct subnets just make leaks obvious in a failure message.
        self.subnet_octet = self.lab_id % 256
        self.hosts: list[Host] = []
        self._initial_hosts = n_hosts
        self._procs: list[subprocess.Popen[Any]] = []
        self._namespaces: list[str] = []
        self._next_index = 1

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self._create_switch()
            for _ in range(self._initial_hosts):
                self.add_host()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop every tracked process, then delete every namespace. Idempotent."""
        self.stop_all()
        # Hosts first, switch last: deleting a namespace destroys its veth ends.
        for ns in reversed(self._namespaces):
            _delete_netns(ns)
        self._namespaces.clear()

    def stop_all(self, grace_s: float = 3.0) -> None:
        """SIGTERM every tracked process group, SIGKILL what is left after ``grace_s``."""
        live = [p for p in self._procs if p.poll() is None]
        for p in live:
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in live:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=5.0)
        for p in self._procs:
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self._procs.clear()

    # -- topology ----------------------------------------------------------------

    def _create_switch(self) -> None:
        _run([_IP, "netns", "add", self.switch])
        self._namespaces.append(self.switch)
        sw = [_IP, "-n", self.switch]
        _run([*sw, "link", "set", "lo", "up"])
        # mcast_snooping 0 (defensive): without an MLD/IGMP querier in the lab,
        # snooping state can stop ff02::fb from reaching a port; flooding can't.
        _run(
            [
                *sw, "link", "add", BRIDGE_IFNAME, "type", "bridge",
                "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0",
            ]
        )  # fmt: skip
        _run([*sw, "link", "set", BRIDGE_IFNAME, "multicast", "on", "up"])

    def add_host(self) -> Host:
        """Create one more host namespace and plug it into the bridge (a host joining)."""
        i = self._next_index
        self._next_index += 1
        if i > 200:
            raise NetnsError("too many hosts in one lab")
        ns = f"{self.base}-h{i}"
        host = Host(
            index=i,
            netns=ns,
            ifname=HOST_IFNAME,
            peer=f"p{i}",
            mac=f"02:13:{self.subnet_octet:02x}:00:00:{i:02x}",
            ipv4=f"10.213.{self.subnet_octet}.{10 + i}",
            ipv4_prefixlen=24,
            # Canonical form (as zeroconf/ifaddr print it): compare with ==.
            ipv6=str(ipaddress.IPv6Address(f"fd00:213:{self.subnet_octet:x}::{10 + i:x}")),
            ipv6_prefixlen=64,
        )
        _run([_IP, "netns", "add", ns])
        self._namespaces.append(ns)
        _run([_IP, "-n", ns, "link", "set", "lo", "up"])
        # Create the pair in the switch netns with the host end born in the host
        # netns: no temporary names in the root netns, so parallel runs can't clash.
        _run(
            [
                _IP, "-n", self.switch, "link", "add", host.peer, "type", "veth",
                "peer", "name", host.ifname, "netns", ns,
            ]
        )  # fmt: skip
        _run([_IP, "-n", self.switch, "link", "set", host.peer, "master", BRIDGE_IFNAME])
        _run([_IP, "-n", self.switch, "link", "set", host.peer, "multicast", "on", "up"])
        _run([_IP, "-n", ns, "link", "set", host.ifname, "address", host.mac])
        # No DAD: link-local and ULA are usable the moment the link is up (else
        # link-local stays "tentative" ~1.4 s after every link up, and binding or
        # sending from it fails with EADDRNOTAVAIL meanwhile).
        for key in ("accept_dad", "dad_transmits"):
            _sysctl(ns, f"net.ipv6.conf.{host.ifname}.{key}", "0")
        # Keep the static ULA across set_link(down/up) like a static config would.
        _sysctl(ns, f"net.ipv6.conf.{host.ifname}.keep_addr_on_down", "1")
        self.hosts.append(host)
        self.set_link(host, True)
        return host

    def host(self, ref: Host | str | int) -> Host:
        """Look a host up by ``Host``, namespace name or index (1-based)."""
        if isinstance(ref, Host):
            return ref
        for h in self.hosts:
            if h.netns == ref or h.index == ref:
                return h
        raise KeyError(ref)

    def set_link(self, ref: Host | str | int, up: bool) -> None:
        """Take a host's interface down/up (Wi-Fi leaving/joining the LAN).

        On ``up`` the addresses and the multicast route are (re)applied: the
        kernel drops IPv4 routes via a downed interface.
        """
        h = self.host(ref)
        hn = [_IP, "-n", h.netns]
        if not up:
            _run([*hn, "link", "set", h.ifname, "down"])
            return
        _run([*hn, "link", "set", h.ifname, "multicast", "on", "up"])
        _run([*hn, "addr", "replace", h.ipv4_cidr, "dev", h.ifname])
        _run([*hn, "-6", "addr", "replace", h.ipv6_cidr, "dev", h.ifname, "nodad"])
        _run([*hn, "route", "replace", "224.0.0.0/4", "dev", h.ifname])
        # Link-local appears on "up"; with DAD off it is usable immediately.
        self._wait_for(lambda: h.link_local in self._addrs(h), f"{h.netns}: link-local")

    def _addrs(self, h: Host) -> str:
        return _run([_IP, "-n", h.netns, "-6", "addr", "show", "dev", h.ifname]).stdout

    @staticmethod
    def _wait_for(pred: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not pred():
            if time.monotonic() > deadline:
                raise NetnsError(f"timed out waiting for {what}")
            time.sleep(0.02)

    # -- processes -----------------------------------------------------------------

    def _argv(self, ref: Host | str | int, argv: Sequence[str]) -> list[str]:
        return [_IP, "netns", "exec", self.host(ref).netns, *argv]

    def popen(self, ref: Host | str | int, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside a host netns; tracked and stopped on lab exit.

        ``ip netns exec`` execs the command (same pid); it runs in its own
        session so that stop_all() can signal the whole process group.
        """
        kw.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(self._argv(ref, argv), **kw)
        self._procs.append(proc)
        return proc

    def run(
        self,
        ref: Host | str | int,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run a short command inside a host netns and capture its output."""
        proc = subprocess.run(
            self._argv(ref, argv), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise NetnsError(f"{argv!r} in {self.host(ref).netns} failed: {proc.stderr.strip()}")
        return proc

    @property
    def namespaces(self) -> list[str]:
        """Namespaces currently owned by this lab (switch first)."""
        return list(self._namespaces)


def _signal_group(p: subprocess.Popen[Any], sig: signal.Signals) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(sig)


Event = dict[str, Any]


class JsonLines:
    """Collect a process's stdout as JSON-line events (background thread).

    Why: probes report timestamped events; tests wait for one with a timeout
    instead of a blocking ``readline()`` that could hang the suite. Non-JSON
    lines (e.g. stderr merged in, log warnings) are kept as ``{"event": "raw"}``.
    Each event gets ``_mono``, the monotonic time it arrived (comparable across namespaces).
    """

    def __init__(
        self,
        proc: subprocess.Popen[Any],
        label: str = "",
        parse: Callable[[str], Event | None] | None = None,
    ) -> None:
        """``parse`` turns a line that is not JSON into an event (None: keep it as "raw");
        for a program that prints log lines, such as a serf agent."""
        if proc.stdout is None:
            raise ValueError("start the process with stdout=subprocess.PIPE")
        self.proc = proc
        self.label = label
        self._parse = parse
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self._eof = False
        self._thread = threading.Thread(target=self._pump, name=f"jsonlines-{label}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        try:
            for raw in self.proc.stdout:
                arrived = time.monotonic()
                line = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
                line = line.rstrip("\n")
                if not line:
                    continue
                try:
                    ev = json.loads(line)
                    if not isinstance(ev, dict):
                        raise ValueError
                except ValueError:
                    parsed = self._parse(line) if self._parse else None
                    ev = parsed if parsed is not None else {"event": "raw", "line": line}
                ev["_mono"] = arrived
                with self._cond:
                    self.events.append(ev)
                    self._cond.notify_all()
        except (OSError, ValueError, RuntimeError):
            pass  # stream closed by stop_all() while we were reading
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def wait_for(self, pred: Callable[[Event], bool], timeout: float, *, start: int = 0) -> Event:
        """First event (from index ``start``) matching ``pred``; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self.events):
                    if pred(self.events[i]):
                        return self.events[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    break
                self._cond.wait(left)
        raise TimeoutError(
            f"{self.label}: no matching event within {timeout}s "
            f"(exit={self.proc.poll()}); events so far:\n{self.dump()}"
        )

    def wait_event(self, event: str, timeout: float, **match: Any) -> Event:
        """Wait for ``{"event": event, **match}``."""
        return self.wait_for(
            lambda e: e.get("event") == event and all(e.get(k) == v for k, v in match.items()),
            timeout,
        )

    def snapshot(self) -> list[Event]:
        with self._cond:
            return list(self.events)

    def find(self, pred: Callable[[Event], bool]) -> list[Event]:
        with self._cond:
            return [e for e in self.events if pred(e)]

    def dump(self) -> str:
        with self._cond:
            return "\n".join(json.dumps(e) for e in self.events)
