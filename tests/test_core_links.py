"""Link classes: from a fake sysfs tree (each kind of Linux interface as the kernel shows it),
from macOS's interface names and networksetup's port list, from real veth, bridge, tun and dummy
interfaces in a network namespace, and for addresses (local or a peer's)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from exo_discovery_core.ip import LocalNetworks
from exo_discovery_core.links import (
    LinkClass,
    LinkMap,
    address_class,
    interface_class,
    macos_class,
    parse_hardware_ports,
)
from exo_discovery_core.models import Address
from exo_discovery_core.routes import Paths
from tests.support.netns import NetnsLab

L = LinkClass


def _iface(
    root: Path,
    name: str,
    kind: int = 1,
    *,
    driver: str | None = None,
    wireless: bool = False,
    ports: tuple[str, ...] = (),
    lower: tuple[str, ...] = (),
) -> None:
    """One /sys/class/net/<name> as the kernel lays it out (the parts that are read)."""
    base = root / "net" / name
    base.mkdir(parents=True)
    (base / "type").write_text(f"{kind}\n")
    if driver is not None:
        drivers = root / "bus" / "drivers" / driver
        drivers.mkdir(parents=True, exist_ok=True)
        device = root / "devices" / name
        device.mkdir(parents=True)
        (device / "driver").symlink_to(drivers)
        (base / "device").symlink_to(device)
    if wireless:
        (base / "wireless").mkdir()
    if ports:
        (base / "brif").mkdir()
        for port in ports:
            (base / "brif" / port).symlink_to(root / "net" / port)
    for name_below in lower:
        (base / f"lower_{name_below}").symlink_to(root / "net" / name_below)


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    _iface(tmp_path, "lo", 772)
    _iface(tmp_path, "enp3s0", driver="igb")
    _iface(tmp_path, "eth1", driver="virtio_net")  # a VM's NIC is its Ethernet
    _iface(tmp_path, "wlp2s0", driver="iwlwifi", wireless=True)
    _iface(tmp_path, "thunderbolt0", driver="thunderbolt-net")
    _iface(tmp_path, "tb-link", driver="thunderbolt-net")  # renamed by udev: the driver tells
    _iface(tmp_path, "tailscale0", 65534)
    _iface(tmp_path, "wg0", 65534)
    _iface(tmp_path, "docker0", ports=("veth1a2b",))
    _iface(tmp_path, "veth1a2b")
    _iface(tmp_path, "br0", ports=("enp3s0", "veth1a2b"))  # a host bridge over the NIC
    _iface(tmp_path, "bond0", lower=("enp3s0",))
    _iface(tmp_path, "enp3s0.100", lower=("bond0",))  # a VLAN on the bond
    _iface(tmp_path, "dummy0")
    _iface(tmp_path, "loopy", lower=("loopy",))  # a malformed tree must not hang us
    return tmp_path / "net"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lo", L.LOOPBACK),
        ("enp3s0", L.ETHERNET),
        ("eth1", L.ETHERNET),
        ("wlp2s0", L.WIFI),
        ("thunderbolt0", L.THUNDERBOLT),
        ("tb-link", L.THUNDERBOLT),
        ("tailscale0", L.TAILSCALE),
        ("wg0", L.OTHER),
        ("docker0", L.OTHER),
        ("veth1a2b", L.OTHER),
        ("br0", L.ETHERNET),
        ("bond0", L.ETHERNET),
        ("enp3s0.100", L.ETHERNET),
        ("dummy0", L.OTHER),
        ("loopy", L.OTHER),
        ("gone0", L.OTHER),
    ],
)
def test_linux_classes_from_sysfs(sysfs: Path, name: str, expected: LinkClass) -> None:
    assert interface_class(name, system="linux", sysfs=sysfs) is expected


NETWORKSETUP = """
Hardware Port: Ethernet
Device: en0
Ethernet Address: 00:00:00:00:00:01

Hardware Port: Wi-Fi
Device: en1
Ethernet Address: 00:00:00:00:00:02

Hardware Port: Thunderbolt 1
Device: en2
Ethernet Address: 00:00:00:00:00:03

Hardware Port: Thunderbolt Bridge
Device: bridge0
Ethernet Address: 00:00:00:00:00:04

Hardware Port: USB 10/100/1000 LAN
Device: en7
Ethernet Address: 00:00:00:00:00:05

VLAN Configurations
===================
"""


def test_macos_classes_from_networksetup() -> None:
    ports = parse_hardware_ports(NETWORKSETUP)
    assert ports["en1"] == "Wi-Fi" and ports["bridge0"] == "Thunderbolt Bridge"
    shown = {
        n: macos_class(n, ports)
        for n in ("lo0", "en0", "en1", "en2", "bridge0", "en7", "utun3", "awdl0")
    }
    assert shown == {
        "lo0": L.LOOPBACK,
        "en0": L.ETHERNET,
        "en1": L.WIFI,
        "en2": L.THUNDERBOLT,
        "bridge0": L.THUNDERBOLT,
        "en7": L.ETHERNET,
        "utun3": L.OTHER,
        "awdl0": L.OTHER,
    }
    assert macos_class("en0", {}) is L.OTHER  # no networksetup: not guessed
    assert macos_class("bridge0", {}) is L.THUNDERBOLT


def test_address_classes_local_and_peer() -> None:
    links = [
        ("en1", ipaddress.ip_interface("192.168.1.20/24"), L.WIFI),
        ("bridge0", ipaddress.ip_interface("169.254.10.1/16"), L.THUNDERBOLT),
        ("en0", ipaddress.ip_interface("192.168.1.21/24"), L.ETHERNET),  # same LAN, wired too
        ("en0", ipaddress.ip_interface("fe80::1/64"), L.ETHERNET),
        ("en1", ipaddress.ip_interface("fe80::2/64"), L.WIFI),
    ]

    def cls(text: str) -> LinkClass:
        bare, _, scope = text.partition("%")
        return address_class(ipaddress.ip_address(bare), scope or None, links)

    assert cls("127.0.0.1") is L.LOOPBACK and cls("::1") is L.LOOPBACK
    assert cls("100.101.102.103") is L.TAILSCALE and cls("fd7a:115c:a1e0::5") is L.TAILSCALE
    assert cls("169.254.10.2") is L.THUNDERBOLT  # a peer across the cable
    assert cls("192.168.1.50") is L.ETHERNET  # reachable on both: the better link
    assert cls("192.168.1.20") is L.WIFI  # our own address: its interface's class
    assert cls("fe80::9%en1") is L.WIFI and cls("fe80::9%en0") is L.ETHERNET
    assert cls("8.8.8.8") is L.OTHER


@pytest.mark.netns
def test_real_interfaces_in_a_network_namespace(netns_lab: Callable[[int], NetnsLab]) -> None:
    """The lab's own interfaces (veth on a bridge) plus a tun named like Tailscale's, another tun
    (a VPN) and a bridge over a veth pair, classified by a process inside that namespace (its own sysfs)."""
    lab = netns_lab(1)
    host = lab.hosts[0]
    for argv in (
        ["ip", "tuntap", "add", "tailscale0", "mode", "tun"],
        ["ip", "tuntap", "add", "vpn0", "mode", "tun"],
        ["ip", "link", "add", "va", "type", "veth", "peer", "name", "vb"],
        ["ip", "link", "add", "br9", "type", "bridge"],
        ["ip", "link", "set", "va", "master", "br9"],
    ):
        lab.run(host, argv)
    code = (
        "import json, sys; from exo_discovery_core.links import interface_class;"
        "print(json.dumps({n: str(interface_class(n)) for n in sys.argv[1:]}))"
    )
    names = ["lo", "eth0", "tailscale0", "vpn0", "va", "br9"]
    done = lab.run(host, [sys.executable, "-c", code, *names])
    assert json.loads(done.stdout) == {
        "lo": "loopback",
        "eth0": "other",
        "tailscale0": "tailscale",
        "vpn0": "other",
        "va": "other",
        "br9": "other",
    }
    switch = subprocess.run(  # the lab's switch: a bridge of veth ports is no Ethernet either
        ["ip", "netns", "exec", lab.switch, sys.executable, "-c", code, "br0", "p1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(switch.stdout) == {"br0": "other", "p1": "other"}


def test_paths_order_by_class_then_measured_rtt_then_rank() -> None:
    entries = [
        ("en1", ipaddress.ip_interface("192.168.1.2/24"), L.WIFI),
        ("en0", ipaddress.ip_interface("10.0.0.2/24"), L.ETHERNET),
        ("bridge0", ipaddress.ip_interface("169.254.7.2/16"), L.THUNDERBOLT),
    ]
    paths = Paths(
        LocalNetworks(read=lambda: [e[1] for e in entries]), LinkMap(read=lambda: entries)
    )
    a = {
        name: Address(host=host, port=1)
        for name, host in [
            ("wifi", "192.168.1.9"),
            ("eth", "10.0.0.9"),
            ("eth2", "10.0.0.8"),
            ("tb", "169.254.7.9"),
            ("ts", "100.64.0.9"),
            ("public", "8.8.8.8"),
            ("name", "box.lan"),
        ]
    }
    order = [a["public"], a["name"], a["ts"], a["wifi"], a["eth"], a["eth2"], a["tb"]]
    assert paths.ordered(order) == [
        a[n] for n in ("tb", "eth", "eth2", "wifi", "ts", "public", "name")
    ]
    paths.measured(a["eth2"], 0.002)
    paths.measured(a["eth"], 0.010)
    assert paths.ordered(order)[1:3] == [a["eth2"], a["eth"]]  # same class: the faster first
    paths.measured(a["eth"], 0.0)  # smoothed: one fast sample does not win outright
    assert paths.rtt(a["eth"]) == pytest.approx(0.005)
    assert paths.link(a["tb"]) is L.THUNDERBOLT and str(paths.link(a["wifi"])) == "wifi"


def test_a_loopback_or_tailscale_peer_is_classed_without_reading_the_links() -> None:
    """Reading this host's links walks every interface (ifaddr, ctypes): a peer whose range
    decides its class never needs them; any other address reads them, once per max_age."""
    reads: list[int] = []
    entries = [("en0", ipaddress.ip_interface("10.0.0.2/24"), L.ETHERNET)]
    links = LinkMap(read=lambda: reads.append(1) or entries)
    for host in ("127.0.0.1", "::1", "100.64.0.9", "fd7a:115c:a1e0::9"):
        assert links.of(Address(host=host, port=1)) in (L.LOOPBACK, L.TAILSCALE)
    assert reads == []
    assert links.of(Address(host="10.0.0.9", port=1)) is L.ETHERNET
    assert links.of(Address(host="8.8.8.8", port=1)) is L.OTHER
    assert reads == [1]
