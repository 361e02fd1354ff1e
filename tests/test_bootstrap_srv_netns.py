"""A bootstrap DNS SRV name answered by a real DNS server (dnsmasq) inside the test's own network
namespaces, looked up by real node processes through the system's resolver configuration: the
host and the port come from each record, and the records are asked for again every round, so a
replica added to DNS later is joined without a restart.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.dnsmasq import DnsServer, dnsmasq_binary, resolver_for
from tests.support.netns import NetnsLab
from tests.support.nodes import NodeFleet

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        dnsmasq_binary() is None,
        reason="dnsmasq is not installed (./dev test installs dnsmasq-base as root with apt)",
    ),
]

SERVICE = "_exo-discovery._tcp.exo.test"


def test_srv_records_give_host_and_port_and_are_asked_again(
    netns_lab: Callable[[int], NetnsLab], nodes: NodeFleet
) -> None:
    lab = netns_lab(4)
    dns_host, dialer, first, second = lab.hosts
    dns = DnsServer(lab, dns_host)
    hosts = [f"r1.exo.test,{first.ipv4}", f"r2.exo.test,{second.ipv4}"]
    dns.serve(srv=[f"{SERVICE},r1.exo.test,6001,0,10"], hosts=hosts)
    common = ["--plugins", "bootstrap", "--no-exchange"]
    r1 = nodes.start("r1", *common, "--port", "6001", prefix=["ip", "netns", "exec", first.netns])
    r2 = nodes.start("r2", *common, "--port", "6002", prefix=["ip", "netns", "exec", second.netns])
    with resolver_for(dialer, dns):
        joiner = nodes.start(
            "dialer", *common, "--port", "6000",
            "--bootstrap-peers", SERVICE, "--bootstrap-refresh-interval", "0.5",
            prefix=["ip", "netns", "exec", dialer.netns],
        )  # fmt: skip
        joiner.wait_for("connected", timeout=20, peer_id=r1.peer_id)
        assert r2.peer_id not in joiner.connected_peers()
        found = {
            a for e in joiner.events if e.get("event") == "peer_discovered" for a in e["addresses"]
        }
        assert f"{first.ipv4}:6001" in found  # the port is the record's, not the node's 6000

        dns.serve(
            srv=[f"{SERVICE},r1.exo.test,6001,0,10", f"{SERVICE},r2.exo.test,6002,0,10"],
            hosts=hosts,
        )
        joiner.wait_for("connected", timeout=20, peer_id=r2.peer_id)
        assert joiner.connected_peers() == {r1.peer_id, r2.peer_id}
