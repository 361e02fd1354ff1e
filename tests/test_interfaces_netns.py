"""[node] interfaces / exclude_interfaces / advertise_addresses with real node processes in a
network namespace that also has a container bridge (docker0) and a Tailscale-like tun: what the
node advertises (its 'started' addresses, what plugins are told) follows the settings."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.netns import NetnsLab
from tests.support.nodes import NodeFleet

pytestmark = pytest.mark.netns


def test_what_the_node_advertises(netns_lab: Callable[[int], NetnsLab], nodes: NodeFleet) -> None:
    lab = netns_lab(1)
    host = lab.hosts[0]
    for argv in (
        ["ip", "link", "add", "docker0", "type", "bridge"],
        ["ip", "addr", "add", "172.17.0.1/16", "dev", "docker0"],
        ["ip", "link", "set", "docker0", "up"],
        ["ip", "tuntap", "add", "tailscale0", "mode", "tun"],
        ["ip", "addr", "add", "100.101.1.2/32", "dev", "tailscale0"],
        ["ip", "link", "set", "tailscale0", "up"],
    ):
        lab.run(host, argv)
    prefix = ["ip", "netns", "exec", host.netns]

    def advertised(name: str, *args: str) -> set[str]:
        node = nodes.start(name, "--plugins", "", "--port", "0", *args, prefix=prefix)
        [started] = [e for e in node.events if e["event"] == "started"]
        return {a.rsplit(":", 1)[0].strip("[]") for a in started["addresses"]}

    default = advertised("default")
    assert host.ipv4 in default and "100.101.1.2" in default  # the LAN and Tailscale
    assert "172.17.0.1" not in default  # docker0: excluded by default
    assert advertised("only-eth", "--interfaces", "eth0") == {
        host.ipv4,
        host.ipv6,
        "127.0.0.1",
        "::1",
    }
    assert "172.17.0.1" in advertised("all", "--exclude-interfaces", "none-such")
    assert advertised("nat", "--advertise-addresses", "203.0.113.7:7100,gw.example.com") == {
        "203.0.113.7",
        "gw.example.com",
    }
