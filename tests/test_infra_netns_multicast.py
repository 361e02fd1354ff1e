"""Real mDNS between network namespaces, with python-zeroconf as the reference.

Why: the mDNS plugin's tests and benchmarks rely on this lab; these tests prove
that multicast (224.0.0.251 and ff02::fb) really crosses the lab bridge, that
goodbyes arrive fast, and that two labs are isolated LANs.

What worked inside namespaces: ``InterfaceChoice.All`` + ``IPVersion.All``
(see tests/support/zc_probe.py), with DAD off, bridge snooping off and a
224.0.0.0/4 route (see tests/support/netns.py).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.netns import Host, JsonLines, NetnsLab

pytest_plugins = ["tests.support.netns_fixtures"]

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

PROBE = str(Path(__file__).parent / "support" / "zc_probe.py")
SERVICE_TYPE = "_exoinfra._tcp.local."
FOUND_TIMEOUT_S = 10.0
#: A goodbye (TTL=0) makes zeroconf expire the records 1 s later (RFC 6762 10.1).
REMOVED_WITHIN_S = 2.5

LabFactory = Callable[[int], NetnsLab]


def _probe(lab: NetnsLab, host: Host, *args: str, ip_version: str = "all") -> JsonLines:
    proc = lab.popen(
        host,
        [sys.executable, PROBE, *args, "--ip-version", ip_version],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return JsonLines(proc, label=f"{host.netns}:{args[0]}")


def _browse(lab: NetnsLab, host: Host, ip_version: str = "all") -> JsonLines:
    browser = _probe(lab, host, "browse", "--type", SERVICE_TYPE, ip_version=ip_version)
    browser.wait_event("started", 15.0)
    return browser


def _register(
    lab: NetnsLab, host: Host, name: str, *txt: str, ip_version: str = "all"
) -> JsonLines:
    args = ["register", name, "--type", SERVICE_TYPE, "--stdin"]
    for kv in txt:
        args += ["--txt", kv]
    return _probe(lab, host, *args, ip_version=ip_version)


def _fqdn(name: str) -> str:
    return f"{name}.{SERVICE_TYPE}"


def _unregister(reg: JsonLines) -> None:
    assert reg.proc.stdin is not None
    reg.proc.stdin.write("unregister\n")
    reg.proc.stdin.flush()


# "v4"/"v6" prove each multicast group (224.0.0.251, ff02::fb) works on its own.
@pytest.mark.parametrize("ip_version", ["all", "v4", "v6"])
def test_mdns_found_resolved_and_goodbye_across_namespaces(
    netns_lab: LabFactory, ip_version: str
) -> None:
    lab = netns_lab(2)
    a, b = lab.hosts
    browser = _browse(lab, b, ip_version)
    reg = _register(lab, a, "nodeA", "role=infra", f"lab={lab.base}", ip_version=ip_version)

    registered = reg.wait_event("registered", FOUND_TIMEOUT_S)
    added = browser.wait_event("added", FOUND_TIMEOUT_S, name=_fqdn("nodeA"))
    assert added["resolved"], browser.dump()
    assert a.ipv4 in added["addresses"], added
    assert a.ipv6 in added["addresses"], added
    assert added["txt"] == {"role": "infra", "lab": lab.base}
    assert added["port"] == 52415

    _unregister(reg)
    goodbye = reg.wait_event("unregistering", 10.0)  # just before the goodbye is sent
    removed = browser.wait_event("removed", 10.0, name=_fqdn("nodeA"))
    start_to_found = added["t_seen"] - registered["t_start"]
    probing = registered["t"] - registered["t_start"]
    goodbye_to_removed = removed["t"] - goodbye["t"]
    print(
        f"\n[netns-mdns {ip_version}] register-start->found {start_to_found:.3f}s "
        f"(probing+announce {probing:.3f}s, resolved +{added['t'] - added['t_seen']:.3f}s); "
        f"goodbye->removed {goodbye_to_removed * 1000:.1f}ms; addresses {added['addresses']}"
    )
    assert goodbye_to_removed < REMOVED_WITHIN_S
    reg.wait_event("unregistered", 10.0)
    assert reg.proc.wait(timeout=10.0) == 0, reg.dump()


def test_late_joiner_and_link_flap(netns_lab: LabFactory) -> None:
    """add_host() joins a running LAN; set_link() down hides multicast, up restores it."""
    lab = netns_lab(1)
    (a,) = lab.hosts
    reg1 = _register(lab, a, "early")
    reg1.wait_event("registered", FOUND_TIMEOUT_S)

    c = lab.add_host()
    browser = _browse(lab, c)
    found = browser.wait_event("added", FOUND_TIMEOUT_S, name=_fqdn("early"))
    assert a.ipv4 in found["addresses"]

    lab.set_link(c, False)
    _unregister(reg1)
    reg1.wait_event("unregistered", 10.0)
    # The goodbye went out while C's link was down: C never hears it and keeps
    # the stale entry (a host "leaving Wi-Fi" misses goodbyes).
    with pytest.raises(TimeoutError):
        browser.wait_event("removed", REMOVED_WITHIN_S, name=_fqdn("early"))

    lab.set_link(c, True)
    reg2 = _register(lab, a, "again")
    again = browser.wait_event("added", FOUND_TIMEOUT_S, name=_fqdn("again"))
    assert a.ipv6 in again["addresses"]
    _unregister(reg2)
    browser.wait_event("removed", 10.0, name=_fqdn("again"))


def test_two_labs_are_isolated(netns_lab: LabFactory) -> None:
    """Each lab has its own bridge: its multicast never reaches the other lab."""
    lab1, lab2 = netns_lab(2), netns_lab(2)
    b1 = _browse(lab1, lab1.hosts[1])
    b2 = _browse(lab2, lab2.hosts[1])
    _register(lab1, lab1.hosts[0], "in-lab1")
    _register(lab2, lab2.hosts[0], "in-lab2")

    # Positive control first: each lab sees its own service...
    seen1 = b1.wait_event("added", FOUND_TIMEOUT_S, name=_fqdn("in-lab1"))
    seen2 = b2.wait_event("added", FOUND_TIMEOUT_S, name=_fqdn("in-lab2"))
    assert lab1.hosts[0].ipv4 in seen1["addresses"]
    assert lab2.hosts[0].ipv4 in seen2["addresses"]
    # ...then, after both announcement rounds are over, never the other's.
    with pytest.raises(TimeoutError):
        b1.wait_event("added", 3.0, name=_fqdn("in-lab2"))
    assert not b2.find(lambda e: e.get("name") == _fqdn("in-lab1")), b2.dump()
    assert not b1.find(lambda e: e.get("name") == _fqdn("in-lab2")), b1.dump()
