"""mDNS: a node's start -> reported by the plugin on another host; goodbye -> removal.

Runs in a network-namespace lab (``tests/support/netns.py``: hosts on one bridge, real multicast,
nothing on the machine's own network), so it needs root; otherwise it is skipped with the reason.

Plugin: a resident node (``--plugins mdns``) runs on h1; RUNS times a node starts on h2, and the
figure is h1's first peer event for it (``peer_discovered`` or ``peer_updated``) with ``mdns`` among its sources, minus the joiner's
``started``; then the joiner gets SIGTERM (its plugin sends the goodbye) and the second figure is
h1's ``peer_lost`` minus the moment the signal was sent.

Reference: the bare python-zeroconf probe (``tests/support/zc_probe.py``) in the same lab: a
browser on h1, ``register`` on h2; from the probe's ``t_start`` (just before
``async_register_service``) to the browser's ``added`` line (emitted once the service resolved, as
the plugin reports only resolved services); then closing register's stdin (unregister, goodbye)
to the browser's ``removed``. Probe times are the probes' own ``time.monotonic()`` (shared by
every namespace); node times are when their lines arrived here.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from typing import Any

from .common import REPO, BenchSkipped, Deadline, Event, Fleet, Node, Row, median, not_run, spread

NAME = "mdns"
RUNS = 4
TARGET_RATIO = 1.2
PROBE = str(REPO / "tests" / "support" / "zc_probe.py")
REF_TYPE = "_exoref._tcp.local."


def _mdns_discovered(peer_id: str) -> Any:
    def match(event: Event) -> bool:
        sources = event.get("sources")
        return (
            event.get("event") in ("peer_discovered", "peer_identified", "peer_updated")
            and event.get("peer_id") == peer_id
            and isinstance(sources, list)
            and "mdns" in sources
        )

    return match


def _plugin_rounds(lab: Any, fleet: Fleet, deadline: Deadline) -> tuple[list[float], list[float]]:
    h1, h2 = lab.hosts[0], lab.hosts[1]

    def start(host: Any, name: str) -> Node:
        return fleet.start(name, prefix=["ip", "netns", "exec", host.netns], plugins="mdns",
                           listen_host=None)  # fmt: skip

    resident = start(h1, "resident")
    resident.wait_started(deadline.left(30))
    found: list[float] = []
    lost: list[float] = []
    for index in range(RUNS):
        joiner = start(h2, f"joiner{index}")
        try:
            started = float(joiner.wait_started(deadline.left(30))["_mono"])
            seen = resident.wait_until(_mdns_discovered(joiner.peer_id), deadline.left(20))
            found.append(float(seen["_mono"]) - started)
            time.sleep(1.0)  # announcements over: the goodbye is what removes it
            mark = resident.mark()
            stop_at = time.monotonic()
            joiner.stop()
            gone = resident.wait_for("peer_lost", deadline.left(20), start=mark,
                                     peer_id=joiner.peer_id)  # fmt: skip
            lost.append(float(gone["_mono"]) - stop_at)
        finally:
            joiner.stop()
        time.sleep(0.5)
    return found, lost


def _reference_rounds(lab: Any, deadline: Deadline) -> tuple[list[float], list[float], list[float]]:
    from tests.support.netns import JsonLines

    h1, h2 = lab.hosts[0], lab.hosts[1]

    def probe(host: Any, *args: str) -> JsonLines:
        proc = lab.popen(host, [sys.executable, PROBE, *args], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        return JsonLines(proc, label=f"{host.netns}:{args[0]}")

    found: list[float] = []
    seen: list[float] = []
    lost: list[float] = []
    for index in range(RUNS):
        browser = probe(h1, "browse", "--type", REF_TYPE, "--stdin")
        browser.wait_event("started", deadline.left(20))
        name = f"ref{index}"
        reg = probe(h2, "register", name, "--type", REF_TYPE, "--stdin")
        try:
            registered = reg.wait_event("registered", deadline.left(20))
            added = browser.wait_event("added", deadline.left(20), name=f"{name}.{REF_TYPE}")
            found.append(float(added["t"]) - float(registered["t_start"]))
            seen.append(float(added["t_seen"]) - float(registered["t_start"]))
            time.sleep(1.0)
            assert reg.proc.stdin is not None
            stop_at = time.monotonic()
            reg.proc.stdin.close()  # unregister: the goodbye
            removed = browser.wait_event("removed", deadline.left(20), name=f"{name}.{REF_TYPE}")
            lost.append(float(removed["t"]) - stop_at)
        finally:
            for p in (reg, browser):
                if p.proc.stdin is not None and not p.proc.stdin.closed:
                    p.proc.stdin.close()
                try:
                    p.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.proc.kill()
    return found, seen, lost


def run() -> list[Row]:
    if importlib.util.find_spec("exo_discovery_mdns") is None:
        return [not_run(NAME, "start -> discovered", "plugin missing")]
    from tests.support.netns import NetnsLab, cleanup_stale, netns_available

    ok, why = netns_available()
    if not ok:
        raise BenchSkipped(why)
    cleanup_stale()
    deadline = Deadline(280, NAME)
    with NetnsLab(2) as lab:
        with Fleet(NAME) as fleet:
            found, lost = _plugin_rounds(lab, fleet, deadline)
        ref_found, ref_seen, ref_lost = _reference_rounds(lab, deadline)
    return [
        Row(NAME, "node started -> peer_discovered (mdns) on the other host, median",
            median(found), "s", "bare zeroconf: register -> browser resolved it",
            median(ref_found), max_ratio=TARGET_RATIO,
            note=f"plugin {spread(found)}; reference {spread(ref_found)} (browser callback "
            f"before resolving: median {median(ref_seen):.3f} s); netns lab, 2 hosts on a bridge",
            extra={"plugin_s": found, "reference_s": ref_found}),
        Row(NAME, "SIGTERM (goodbye) -> peer_lost, median", median(lost), "s",
            "bare zeroconf: unregister -> browser removed", median(ref_lost),
            note=f"plugin {spread(lost)}; reference {spread(ref_lost)}; the plugin's figure "
            "includes the node's shutdown up to its goodbye",
            extra={"plugin_s": lost, "reference_s": ref_lost}),
    ]  # fmt: skip
