"""Address choice: the most direct route first, IPv4 and IPv6 alike."""

from __future__ import annotations

import ipaddress

from exo_discovery_core import Address, is_tailscale, local_addresses
from exo_discovery_core.routes import LocalNetworks, by_preference


class FakeLan(LocalNetworks):
    """This host on 192.0.2.0/24 and 2001:db8:1::/64 (documentation ranges)."""

    def __init__(self) -> None:
        super().__init__()
        self._networks = [
            ipaddress.ip_network("192.0.2.0/24"),
            ipaddress.ip_network("2001:db8:1::/64"),
        ]
        self._addresses = {ipaddress.ip_address("192.0.2.2")}
        self._read_at = float("inf")  # never re-read the real interfaces


def test_loopback_then_lan_then_tailscale_then_private_then_public_then_names() -> None:
    hosts = [
        "gpu-box.example",
        "9.9.9.9",
        "fd7a:115c:a1e0::5",
        "10.1.2.3",
        "2001:db8:1::9",
        "100.64.0.5",
        "192.0.2.9",
        "::1",
    ]
    ordered = by_preference([Address(host=h, port=1) for h in hosts], FakeLan())
    assert [a.host for a in ordered] == [
        "::1",
        "2001:db8:1::9",
        "192.0.2.9",
        "fd7a:115c:a1e0::5",
        "100.64.0.5",
        "10.1.2.3",
        "9.9.9.9",
        "gpu-box.example",
    ]


def test_tailscale_ranges_and_local_addresses() -> None:
    assert is_tailscale(ipaddress.ip_address("100.127.255.254"))
    assert is_tailscale(ipaddress.ip_address("fd7a:115c:a1e0:ab12::1"))
    assert not is_tailscale(ipaddress.ip_address("100.128.0.1"))
    assert ipaddress.ip_address("127.0.0.1") in local_addresses()


def test_addresses_normalise_ipv4_mapped_and_brackets() -> None:
    assert Address(host="::ffff:127.0.0.1", port=5).host == "127.0.0.1"
    assert str(Address(host="[fd00::1]", port=5)) == "[fd00::1]:5"
    assert Address(host="Gpu-Box.LAN.", port=5).host == "gpu-box.lan"
