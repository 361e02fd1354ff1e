"""The mdns plugin between real hosts: node processes in network namespaces on one bridge.

Why here and not on loopback: only separate network stacks have their own port 5353, their own
interfaces and real multicast between them; everything asserted here (found, connected, goodbye,
namespaces kept apart, a network that comes up late) is what a LAN of exo machines does.
Timings are printed (run with ``-s``): node start to connected, goodbye to peer_lost, and the
bare python-zeroconf reference in the same kind of lab.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.netns import Host, JsonLines, NetnsLab
from tests.support.nodes import NodeProcess

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

LabFactory = Callable[[int], NetnsLab]
PROBE = str(Path(__file__).parent / "support" / "zc_probe.py")
CONNECT_TIMEOUT_S = 15.0
#: A goodbye (TTL 0) expires the records 1 s later (RFC 6762 10.1); "well under 5 s".
GOODBYE_WITHIN_S = 2.5


class Nodes:
    """Node processes inside lab hosts; every one is stopped when the test ends, pass or fail."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.all: list[NodeProcess] = []
        self._count = 0

    def start(self, host: Host, *args: str, name: str | None = None) -> NodeProcess:
        self._count += 1
        name = name or f"{host.netns.rsplit('-', 1)[-1]}-{self._count}"
        node = NodeProcess(
            self.root / name,
            ["--plugins", "mdns", "--port", "0", *args],
            prefix=["ip", "netns", "exec", host.netns],
            name=name,
        )
        self.all.append(node)
        return node

    def close(self) -> None:
        for node in self.all:
            try:
                node.stop(timeout=5)
            except Exception:  # noqa: BLE001 - keep stopping the others
                node.kill()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    started = Nodes(tmp_path / "nodes")
    try:
        yield started
    finally:
        started.close()


def _connected(node: NodeProcess, peer: NodeProcess) -> dict[str, object]:
    return node.wait_for("connected", timeout=CONNECT_TIMEOUT_S, peer_id=peer.peer_id)


def _addresses(event: dict[str, object]) -> list[str]:
    value = event.get("addresses")
    return [str(a) for a in value] if isinstance(value, list) else []


PEER_NEWS = ("peer_discovered", "peer_identified", "peer_updated")


def _discovered_with(node: NodeProcess, peer: NodeProcess, want: set[str]) -> dict[str, object]:
    """The event of ``peer`` listing all of ``want`` (A and AAAA records may arrive in separate
    packets: ``peer_discovered`` can carry only one family and ``peer_updated`` the rest),
    reported by mdns (the core's peer exchange may have told about it first)."""
    deadline = time.monotonic() + 5.0
    while True:
        left = deadline - time.monotonic()
        event = node.wait_for(PEER_NEWS, timeout=max(left, 0.01), peer_id=peer.peer_id)
        sources = event.get("sources")
        if want <= set(_addresses(event)) and isinstance(sources, list) and "mdns" in sources:
            return event


def test_three_hosts_find_connect_and_see_a_goodbye(netns_lab: LabFactory, nodes: Nodes) -> None:
    lab = netns_lab(3)
    started = [nodes.start(h) for h in lab.hosts]
    for node in started:
        for peer in started:
            if peer is node:
                continue
            _connected(node, peer)  # maybe inbound first: the peer found us a moment earlier
            host = lab.hosts[started.index(peer)]
            want = {f"{host.ipv4}:{peer.port}", f"[{host.ipv6}]:{peer.port}"}
            _discovered_with(node, peer, want)
    for node in started:
        assert node.count("peer_discovered", peer_id=node.peer_id) == 0, "reported itself"

    leaving, stays = started[2], started[:2]
    stop_at = time.monotonic()
    assert leaving.stop() == 0
    for node in stays:
        lost = node.wait_for("peer_lost", timeout=5, peer_id=leaving.peer_id)
        took = lost["_mono"] - stop_at
        print(f"\n[mdns] SIGTERM -> peer_lost on {node.name}: {took:.3f}s")
        assert took < GOODBYE_WITHIN_S, took
    for node in stays:  # the two left are untouched
        assert node.connected_peers() == {stays[1 - stays.index(node)].peer_id}


def test_namespaces_on_one_lan_never_see_each_other(netns_lab: LabFactory, nodes: Nodes) -> None:
    lab = netns_lab(5)
    blue = [nodes.start(h, "--namespace", "blue") for h in lab.hosts[:2]]
    green = [nodes.start(h, "--namespace", "green") for h in lab.hosts[2:4]]
    # Records a node must ignore: a bad peer id and a wrong version, both in namespace blue.
    probes = [
        _probe(lab, lab.hosts[4], "register", "badid", "--txt", "id=not-a-peer-id",
               "--txt", "ns=blue", "--txt", "v=1", "--type", "_exo-discovery._tcp.local.",
               "--stdin"),
        _probe(lab, lab.hosts[4], "register", "future", "--txt", f"id={blue[0].peer_id}",
               "--txt", "ns=blue", "--txt", "v=2", "--type", "_exo-discovery._tcp.local.",
               "--stdin"),
    ]  # fmt: skip
    for probe in probes:
        probe.wait_event("registered", 10)
    for group in (blue, green):
        a, b = group
        _connected(a, b)
        _connected(b, a)
    time.sleep(3.0)  # every announcement round is over: anything crossing would show by now
    for group, other in ((blue, green), (green, blue)):
        for node in group:
            node.drain()
            seen = {e.get("peer_id") for e in node.events if e.get("event") == "peer_discovered"}
            partner = group[1 - group.index(node)]
            assert seen == {partner.peer_id}, (node.name, seen)
            assert node.connected_peers() == {partner.peer_id}
            assert not {o.peer_id for o in other} & seen
    log = blue[0].log_tail(400)
    assert log.count("bad peer id") == 1, "a bad record is logged once, not every refresh"
    assert "record version '2'" in log
    # the other cluster is counted, not silently invisible: said once, and in the plugin's status
    assert log.count("ignoring nodes of namespace 'green' on this LAN") == 1, log
    status = subprocess.run(
        [sys.executable, "-m", "exo_discovery_core", "peers", "--json",
         "--state-dir", str(blue[0].state_dir)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    [mdns] = [p for p in json.loads(status.stdout)["plugins"] if p["name"] == "mdns"]
    assert mdns["health"].endswith("; ignoring 2 nodes of other namespaces (green)"), mdns


def test_a_node_started_before_its_network_comes_up_is_found(
    netns_lab: LabFactory, nodes: Nodes
) -> None:
    """The laptop case: exo starts, then the Wi-Fi joins. The plugin must follow the new
    interface (rebind zeroconf, announce the new addresses), not keep its start-time sockets."""
    lab = netns_lab(2)
    a_host, late_host = lab.hosts
    a = nodes.start(a_host)
    lab.set_link(late_host, False)
    lab.run(late_host, ["ip", "addr", "flush", "dev", late_host.ifname])
    late = nodes.start(late_host)
    time.sleep(1.0)
    up_at = time.monotonic()
    lab.set_link(late_host, True)
    seen_a = _connected(late, a)
    seen_late = _connected(a, late)
    took = max(seen_a["_mono"], seen_late["_mono"]) - up_at
    print(f"\n[mdns] network up -> connected both ways: {took:.2f}s (address check every 5 s)")
    _discovered_with(a, late, {f"{late_host.ipv4}:{late.port}"})


def _probe(lab: NetnsLab, host: Host, *args: str) -> JsonLines:
    proc = lab.popen(
        host,
        [sys.executable, PROBE, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return JsonLines(proc, label=f"{host.netns}:{args[0]}")


def test_start_to_connected_timings_against_bare_zeroconf(
    netns_lab: LabFactory, nodes: Nodes
) -> None:
    """Several rounds of a node joining two running ones; then the bare zeroconf reference."""
    lab = netns_lab(3)
    h1, h2, h3 = lab.hosts
    running = [nodes.start(h1), nodes.start(h2)]
    _connected(running[0], running[1])
    spawn_to_all, started_to_all, peers_see, announced, goodbyes = [], [], [], [], []
    for round_ in range(4):
        joiner = nodes.start(h3, name=f"joiner-{round_}")
        done = max(_connected(joiner, peer)["_mono"] for peer in running)
        started = joiner.events[0]["_mono"]  # the "started" event, read in the constructor
        spawn_to_all.append(done - joiner.started_at)
        started_to_all.append(done - started)
        peers_see.append(max(_connected(p, joiner)["_mono"] for p in running) - started)
        # Before the goodbye can be timed the peers must know the joiner from its announcement
        # (it browses first and dials them while it is still probing its own name).
        want = {f"{h3.ipv4}:{joiner.port}"}
        announced.append(max(_discovered_with(p, joiner, want)["_mono"] for p in running) - started)
        stop_at = time.monotonic()
        joiner.stop()
        goodbyes.append(
            max(
                p.wait_for("peer_lost", timeout=5, peer_id=joiner.peer_id)["_mono"] for p in running
            )
            - stop_at
        )
        time.sleep(0.5)

    reference = []
    for round_ in range(4):
        browser = _probe(lab, h2, "browse", "--type", "_exoref._tcp.local.", "--stdin")
        browser.wait_event("started", 15)
        reg = _probe(
            lab, h1, "register", f"ref{round_}", "--type", "_exoref._tcp.local.", "--stdin"
        )
        registered = reg.wait_event("registered", 10)
        added = browser.wait_event("added", 10, name=f"ref{round_}._exoref._tcp.local.")
        reference.append(added["t_seen"] - registered["t_start"])
        for probe in (reg, browser):
            assert probe.proc.stdin is not None
            probe.proc.stdin.close()
            probe.proc.wait(timeout=10)

    def fmt(values: list[float]) -> str:
        return (
            f"median {statistics.median(values):.3f}s "
            f"(min {min(values):.3f}, max {max(values):.3f}; {', '.join(f'{v:.3f}' for v in values)})"
        )

    print(
        f"\n[mdns timings, {len(spawn_to_all)} rounds]"
        f"\n  node spawn   -> connected to both peers: {fmt(spawn_to_all)}"
        f"\n  'started'    -> connected to both peers: {fmt(started_to_all)}"
        f"\n  'started'    -> both peers connected to it: {fmt(peers_see)}"
        f"\n  'started'    -> both peers discovered it (mdns): {fmt(announced)}"
        f"\n  SIGTERM      -> peer_lost on both peers: {fmt(goodbyes)}"
        f"\n  bare zeroconf register start -> browser found: {fmt(reference)}"
    )
    assert max(goodbyes) < GOODBYE_WITHIN_S
    assert max(started_to_all) < 5.0


def _doctor(lab: NetnsLab, host: Host, tmp: Path) -> subprocess.CompletedProcess[str]:
    return lab.run(
        host,
        ["env", f"EXO_DISCOVERY_STATE_DIR={tmp}", sys.executable, "-m", "exo_discovery_core",
         "doctor", "--plugins", "mdns"],
        check=False,
        timeout=60,
    )  # fmt: skip


HOLD_5353 = (
    "import socket, time\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind(('0.0.0.0', 5353))\n"
    "print('bound', flush=True)\n"
    "time.sleep(60)\n"
)


def test_doctor_says_whether_multicast_works_and_what_to_do(
    netns_lab: LabFactory, tmp_path: Path
) -> None:
    lab = netns_lab(2)
    ok_host, bad_host = lab.hosts
    ok = _doctor(lab, ok_host, tmp_path / "ok")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "✓ mdns: multicast send and receive: heard our own query on 224.0.0.251" in ok.stdout
    assert "ff02::fb" in ok.stdout

    holder = lab.popen(
        bad_host, [sys.executable, "-c", HOLD_5353], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "bound"
    taken = _doctor(lab, bad_host, tmp_path / "taken")
    assert taken.returncode == 1, taken.stdout
    assert "✗ mdns: UDP port 5353 can be shared" in taken.stdout
    assert "fix: find it with `ss -ulpn" in taken.stdout
    holder.kill()
    holder.wait(timeout=10)

    lab.set_link(bad_host, False)
    lab.run(bad_host, ["ip", "addr", "flush", "dev", bad_host.ifname])
    offline = _doctor(lab, bad_host, tmp_path / "offline")
    assert offline.returncode == 1, offline.stdout
    assert "✗ mdns: multicast-capable network interface: no interface other than loopback" in (
        offline.stdout
    )
    assert "fix: connect this host to the LAN" in offline.stdout


def test_two_nodes_with_one_instance_name_are_both_found_at_their_own_addresses(
    netns_lab: LabFactory, nodes: Nodes
) -> None:
    """The second ``twin`` is renamed ``twin-2`` and, with it, announces its addresses under a
    host name of its own: a third node records each twin at its own host's addresses only (no
    dial of the wrong one), and the rename is logged once."""
    lab = netns_lab(3)
    observer = nodes.start(lab.hosts[2], name="observer")
    first = nodes.start(lab.hosts[0], "--mdns-instance-name", "twin", name="twin")
    _connected(observer, first)
    second = nodes.start(lab.hosts[1], "--mdns-instance-name", "twin", name="twin2")
    _connected(observer, second)
    _connected(first, second)
    for twin, host in ((first, lab.hosts[0]), (second, lab.hosts[1])):
        _discovered_with(observer, twin, {f"{host.ipv4}:{twin.port}", f"[{host.ipv6}]:{twin.port}"})
    observer.drain()
    for twin, other in ((first, lab.hosts[1]), (second, lab.hosts[0])):
        for event in observer.events:
            if event.get("event") == "peer_discovered" and event.get("peer_id") == twin.peer_id:
                shown = " ".join(_addresses(event))
                assert other.ipv4 not in shown and other.ipv6 not in shown, (twin.name, shown)
    assert "answered as" not in observer.log_tail(400)
    renamed = [line for line in second.log_tail(400).splitlines() if "is taken" in line]
    assert len(renamed) == 1, renamed
    assert "'twin-2'" in renamed[0] and "twin-2.local" in renamed[0]
    assert "is taken" not in first.log_tail(400)
