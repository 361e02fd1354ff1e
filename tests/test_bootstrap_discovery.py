"""The bootstrap plugin run as the node runs it: candidates, DNS, the watched file, itself, doctor.

DNS: only names this host resolves by itself are used for real lookups (``localhost``, and the
reserved ``.invalid`` TLD, which never resolves). A name with several addresses, or answers that
change between rounds, come from a resolver the test injects (``BootstrapPlugin(resolver=...)``),
since /etc/hosts must not be modified.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from exo_discovery_bootstrap import BootstrapPlugin
from exo_discovery_bootstrap.plugin import plugin as bootstrap_plugin
from exo_discovery_bootstrap.plugin import system_resolver
from exo_discovery_core import Address, DiscoveryContext, NodeInfo, PeerCandidate, local_addresses
from exo_discovery_core.identity import Identity
from exo_discovery_core.ip import LocalNetworks, local_interfaces
from exo_discovery_core.testing import make_context, peer_sets

LOGGER = "exo_discovery.plugin.bootstrap"
NODE_PORT = 40001
OTHER = Identity.generate().peer_id


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def node_info(port: int = NODE_PORT, local: LocalNetworks | None = None) -> NodeInfo:
    return NodeInfo(
        peer_id=Identity.generate().peer_id,
        namespace="test",
        port=port,
        listen_addresses=(Address(host="0.0.0.0", port=port),),
        local=local or LocalNetworks(),
    )


def context(
    config: dict[str, Any], plugin: object = bootstrap_plugin, node: NodeInfo | None = None
) -> DiscoveryContext[Any]:
    return make_context(plugin, config, name="bootstrap", node=node or node_info())


def addrs(*pairs: tuple[str, int]) -> tuple[Address, ...]:
    return tuple(Address(host=h, port=p) for h, p in pairs)


def cand(host: str, port: int, peer_id: str | None = None) -> tuple[str | None, tuple[str, ...]]:
    return (peer_id, (str(Address(host=host, port=port)),))


def shape(peers: Iterable[PeerCandidate]) -> set[tuple[str | None, tuple[str, ...]]]:
    """A candidate set without metadata, easy to compare."""
    return {(p.peer_id, tuple(str(a) for a in p.addresses)) for p in peers}


def localhost_ips(family: socket.AddressFamily = socket.AF_UNSPEC) -> list[str]:
    try:
        infos = socket.getaddrinfo("localhost", 1, family=family, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return sorted({str(i[4][0]) for i in infos})


@dataclass
class Running:
    """The plugin's stream consumed in a task, so a test can change things between rounds."""

    sets: list[frozenset[PeerCandidate]] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)

    async def until(
        self, check: Callable[[frozenset[PeerCandidate]], bool], timeout: float = 10.0
    ) -> frozenset[PeerCandidate]:
        with anyio.fail_after(timeout):
            while not (self.sets and check(self.sets[-1])):
                await self.changed.wait()
        return self.sets[-1]

    async def quiet_for(self, seconds: float) -> None:
        """Assert that no new set comes for a while (the plugin kept what it had)."""
        before = len(self.sets)
        await anyio.sleep(seconds)
        assert len(self.sets) == before, f"unexpected new set: {self.sets[-1]}"


@asynccontextmanager
async def running(
    ctx: DiscoveryContext[Any], plugin: Any = bootstrap_plugin
) -> AsyncIterator[Running]:
    stream = plugin.discover_peers(ctx)
    assert stream is not None
    state = Running()

    async def consume() -> None:
        async with aclosing(stream):
            async for peers in stream:
                state.sets.append(frozenset(peers))
                state.changed.set()
                state.changed = anyio.Event()

    async with anyio.create_task_group() as group:
        group.start_soon(consume)
        yield state
        group.cancel_scope.cancel()


# -- static entries ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_ip_entries_are_candidates_with_their_peer_ids() -> None:
    peers = [
        "/ip4/10.0.0.2/tcp/52417",
        f"/ip6/fd00::2/tcp/52417/p2p/{OTHER}",
        "10.0.0.3:6000",
        "[fd00::3]:6001",
    ]
    [first] = await peer_sets(bootstrap_plugin, context=context({"peers": peers}))
    assert shape(first) == {
        cand("10.0.0.2", 52417),
        cand("fd00::2", 52417, OTHER),
        cand("10.0.0.3", 6000),
        cand("fd00::3", 6001),
    }
    by_addr = {p.addresses[0].host: dict(p.metadata) for p in first}
    assert by_addr["fd00::3"] == {"bootstrap": "[fd00::3]:6001"}  # users see where it came from


@pytest.mark.anyio
async def test_no_peers_configured_means_idle() -> None:
    assert await peer_sets(bootstrap_plugin, context=context({})) == []


@pytest.mark.anyio
async def test_same_peer_twice_is_one_candidate() -> None:
    """Two entries naming one id are one peer with two addresses; an id-less duplicate merges."""
    peers = [
        f"/ip4/10.0.0.2/tcp/1/p2p/{OTHER}",
        f"/ip4/10.0.0.9/tcp/1/p2p/{OTHER}",
        "10.0.0.2:1",
        "10.0.0.5:1",
        "/ip4/10.0.0.5/tcp/1",
    ]
    [first] = await peer_sets(bootstrap_plugin, context=context({"peers": peers}))
    assert shape(first) == {
        (OTHER, ("10.0.0.2:1", "10.0.0.9:1")),
        cand("10.0.0.5", 1),
    }


# -- DNS ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_localhost_resolves_to_its_loopback_addresses() -> None:
    expected = localhost_ips()
    assert "127.0.0.1" in expected
    [first] = await peer_sets(
        bootstrap_plugin, context=context({"peers": ["/dns/localhost/tcp/6001", "localhost:6002"]})
    )
    assert shape(first) == {cand(ip, port) for ip in expected for port in (6001, 6002)}


@pytest.mark.anyio
async def test_dns4_asks_only_a_and_dns6_only_aaaa() -> None:
    [v4] = await peer_sets(
        bootstrap_plugin, context=context({"peers": ["/dns4/localhost/tcp/6001"]})
    )
    assert shape(v4) == {cand("127.0.0.1", 6001)}
    [v6] = await peer_sets(
        bootstrap_plugin, context=context({"peers": ["/dns6/localhost/tcp/6001", "10.0.0.2:1"]})
    )
    # ::1 only if this host maps localhost to it; either way no IPv4 address comes from /dns6.
    assert shape(v6) == {cand(ip, 6001) for ip in localhost_ips(socket.AF_INET6)} | {
        cand("10.0.0.2", 1)
    }


@pytest.mark.anyio
async def test_unresolvable_name_is_retried_and_others_still_yield(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    asked: list[str] = []
    retried = anyio.Event()

    async def counting(name: str, port: int, family: socket.AddressFamily) -> list[str]:
        asked.append(name)
        if asked.count("does-not-exist.invalid") >= 4:
            retried.set()
        return await system_resolver(name, port, family)

    plugin = BootstrapPlugin(resolver=counting)
    health: list[tuple[bool, str]] = []
    ctx = context(
        {"peers": ["/dns/does-not-exist.invalid/tcp/1", "10.0.0.2:1"], "refresh_interval": 0.05},
        plugin,
    )
    ctx = DiscoveryContext(
        ctx.plugin_name,
        ctx.config,
        ctx.node,
        ctx.state_dir,
        ctx.log,
        lambda ok, msg: health.append((ok, msg)),
    )
    async with running(ctx, plugin) as run:
        first = await run.until(lambda s: True)
        assert shape(first) == {cand("10.0.0.2", 1)}
        with anyio.fail_after(5):
            await retried.wait()
    warnings = [r for r in caplog.records if "does-not-exist.invalid" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # logged once, retried often
    assert "retrying every round" in warnings[0].getMessage()
    assert health and not health[-1][0] and "does-not-exist.invalid" in health[-1][1]


@pytest.mark.anyio
async def test_every_address_of_a_name_is_a_candidate_or_one_peer_with_an_id() -> None:
    """Uses an injected resolver: one name, three addresses (the test owns this name)."""
    answers = {"cluster.test": ["10.0.0.5", "10.0.0.6", "fd00::7"]}

    async def resolver(name: str, port: int, family: socket.AddressFamily) -> list[str]:
        if name not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[name]

    plugin = BootstrapPlugin(resolver=resolver)
    [anonymous] = await peer_sets(plugin, context=context({"peers": ["cluster.test:7"]}, plugin))
    assert shape(anonymous) == {cand("10.0.0.5", 7), cand("10.0.0.6", 7), cand("fd00::7", 7)}
    [pinned] = await peer_sets(
        plugin, context=context({"peers": [f"/dns/cluster.test/tcp/7/p2p/{OTHER}"]}, plugin)
    )
    assert shape(pinned) == {(OTHER, ("10.0.0.5:7", "10.0.0.6:7", "[fd00::7]:7"))}


@pytest.mark.anyio
async def test_names_are_resolved_again_every_round() -> None:
    answers = {"cluster.test": ["10.0.0.5"]}

    async def resolver(name: str, port: int, family: socket.AddressFamily) -> list[str]:
        return list(answers[name])

    plugin = BootstrapPlugin(resolver=resolver)
    ctx = context({"peers": ["/dns/cluster.test/tcp/7"], "refresh_interval": 0.05}, plugin)
    async with running(ctx, plugin) as run:
        await run.until(lambda s: shape(s) == {cand("10.0.0.5", 7)})
        answers["cluster.test"] = ["10.0.0.6", "10.0.0.5"]
        await run.until(lambda s: shape(s) == {cand("10.0.0.5", 7), cand("10.0.0.6", 7)})
        answers["cluster.test"] = ["10.0.0.6"]
        await run.until(lambda s: shape(s) == {cand("10.0.0.6", 7)})


# -- the node itself ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_own_address_and_own_peer_id_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    injected = ipaddress.ip_interface("10.1.2.3/32")
    node = node_info(NODE_PORT, LocalNetworks(read=lambda: [*local_interfaces(), injected]))
    lan = sorted(str(ip) for ip in local_addresses() if ip.version == 4 and not ip.is_loopback)
    own = [
        f"127.0.0.1:{NODE_PORT}",
        f"[::1]:{NODE_PORT}",
        f"0.0.0.0:{NODE_PORT}",
        f"localhost:{NODE_PORT}",
        f"/ip4/10.9.9.9/tcp/1/p2p/{node.peer_id}",
        f"/ip4/10.1.2.3/tcp/{NODE_PORT}",  # an interface address, injected below
        *(f"{ip}:{NODE_PORT}" for ip in lan[:1]),  # a real interface address of this host
    ]
    kept = [f"127.0.0.1:{NODE_PORT + 1}", f"10.1.2.3:{NODE_PORT + 1}", f"10.1.2.4:{NODE_PORT}"]
    [first] = await peer_sets(bootstrap_plugin, context=context({"peers": own + kept}, node=node))
    assert shape(first) == {
        cand("127.0.0.1", NODE_PORT + 1),
        cand("10.1.2.3", NODE_PORT + 1),
        cand("10.1.2.4", NODE_PORT),
    }
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert any("own peer id" in m for m in skipped)
    assert any(f"127.0.0.1 port {NODE_PORT} is this node's own address" in m for m in skipped)


# -- the peers file ----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("peers.txt", "# comment\n10.0.0.2:1  # first\n\n/ip4/10.0.0.3/tcp/2\n"),
        ("peers.json", '["10.0.0.2:1", "/ip4/10.0.0.3/tcp/2"]'),
        ("peers.toml", 'peers = ["10.0.0.2:1", "/ip4/10.0.0.3/tcp/2"]'),
    ],
)
async def test_peers_file_formats(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    [first] = await peer_sets(
        bootstrap_plugin, context=context({"peers": ["10.0.0.4:3"], "peers_file": str(path)})
    )
    assert shape(first) == {cand("10.0.0.2", 1), cand("10.0.0.3", 2), cand("10.0.0.4", 3)}


@pytest.mark.anyio
async def test_file_edits_apply_within_a_round_and_broken_edits_keep_the_last_good(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    path = tmp_path / "peers.txt"
    path.write_text("10.0.0.2:1\n")
    interval = 0.1
    health: list[tuple[bool, str]] = []
    ctx = context({"peers_file": str(path), "refresh_interval": interval})
    ctx = DiscoveryContext(
        ctx.plugin_name,
        ctx.config,
        ctx.node,
        ctx.state_dir,
        ctx.log,
        lambda ok, msg: health.append((ok, msg)),
    )
    async with running(ctx) as run:
        await run.until(lambda s: shape(s) == {cand("10.0.0.2", 1)})

        path.write_text("10.0.0.2:1\n10.0.0.3:1\n")  # add a peer
        start = anyio.current_time()
        await run.until(lambda s: shape(s) == {cand("10.0.0.2", 1), cand("10.0.0.3", 1)})
        assert anyio.current_time() - start < interval * 2 + 0.5  # next round, slack for CI

        path.write_text("10.0.0.2:1\n10.0.0.3:1\n10.0.0.4:99999\n")  # a typo while editing
        await run.quiet_for(interval * 5)
        assert shape(run.sets[-1]) == {cand("10.0.0.2", 1), cand("10.0.0.3", 1)}
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]  # once, not every round
        message = errors[0].getMessage()
        assert f"{path} line 3" in message and "'10.0.0.4:99999'" in message
        assert "port 99999 is out of range" in message
        assert "keeping the previous 2 peer(s)" in message
        assert health[-1][0] is False and "line 3" in health[-1][1]  # still broken, still said

        path.write_text("10.0.0.2:1\n10.0.0.3:1\n10.0.0.4:9999\n")  # fixed
        await run.until(lambda s: cand("10.0.0.4", 9999) in shape(s))
        assert health[-1][0] is True

        path.write_text("10.0.0.4:9999\n")  # removing peers works as well
        await run.until(lambda s: shape(s) == {cand("10.0.0.4", 9999)})


@pytest.mark.anyio
async def test_same_size_edit_is_seen(tmp_path: Path) -> None:
    """mtime and size can both stay the same; the content hash still sees the edit."""
    path = tmp_path / "peers.txt"
    path.write_text("10.0.0.2:1\n")
    ctx = context({"peers_file": str(path), "refresh_interval": 0.05})
    async with running(ctx) as run:
        await run.until(lambda s: shape(s) == {cand("10.0.0.2", 1)})
        stat = path.stat()
        path.write_text("10.0.0.3:1\n")
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        await run.until(lambda s: shape(s) == {cand("10.0.0.3", 1)})


@pytest.mark.anyio
async def test_missing_file_is_not_fatal_and_is_picked_up_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    path = tmp_path / "later.json"
    ctx = context({"peers": ["10.0.0.9:9"], "peers_file": str(path), "refresh_interval": 0.05})
    async with running(ctx) as run:
        await run.until(lambda s: shape(s) == {cand("10.0.0.9", 9)})
        await anyio.sleep(0.2)
        path.write_text('["10.0.0.2:1"]')
        await run.until(lambda s: shape(s) == {cand("10.0.0.9", 9), cand("10.0.0.2", 1)})
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"cannot read {path}" in errors[0], errors


# -- doctor ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_doctor_reports_entries_names_and_file(tmp_path: Path) -> None:
    path = tmp_path / "peers.txt"
    path.write_text("10.0.0.2:1\n/ip4/10.0.0.3/udp/1\ndoes-not-exist.invalid:5\n")
    ctx = context({"peers": ["localhost:6001"], "peers_file": str(path)})
    checks = await bootstrap_plugin.doctor(ctx)
    by_name = {c.name: c for c in checks}
    local = by_name["bootstrap peer 'localhost:6001' (config)"]
    assert local.ok and f"resolves to {len(localhost_ips())} address(es)" in local.detail
    assert by_name[f"bootstrap: peers_file {path}"].ok
    assert by_name[f"bootstrap peer '10.0.0.2:1' ({path} line 1)"].ok
    udp = by_name[f"bootstrap peer '/ip4/10.0.0.3/udp/1' ({path} line 2)"]
    assert not udp.ok and "/udp/ is not supported" in udp.detail and udp.fix
    dns = by_name[f"bootstrap peer 'does-not-exist.invalid:5' ({path} line 3)"]
    assert not dns.ok and "does not resolve" in dns.detail and dns.fix

    path.unlink()
    [missing] = await bootstrap_plugin.doctor(context({"peers_file": str(path)}))
    assert not missing.ok and "cannot read" in missing.detail and "peers_file" in missing.fix

    [idle] = await bootstrap_plugin.doctor(context({}))
    assert idle.ok and "idle" in idle.detail


@pytest.mark.parametrize(
    ("config", "settled"),
    [
        ({"peers": ["10.0.0.2:7", f"/ip6/fd00::2/tcp/7/p2p/{OTHER}"]}, True),
        ({"peers": [f"127.0.0.1:{NODE_PORT}", "[::1]:1"]}, True),  # loopback is always this node
        ({"peers": [f"10.0.0.2:{NODE_PORT}"]}, False),  # this node's? the interfaces say
        ({"peers": ["10.0.0.2:7", "/dns/cluster.test/tcp/7"]}, False),
        ({"peers": ["_exo._tcp.cluster.test"]}, False),
        ({"peers_file": "/nonexistent/peers.txt"}, False),
    ],
)
def test_only_what_can_change_is_read_again(config: dict[str, Any], settled: bool) -> None:
    """Literal addresses only: one round, then the plugin costs nothing (no 2 s rounds)."""
    from exo_discovery_bootstrap.plugin import _Round

    ctx = context(config)
    assert _Round(bootstrap_plugin, ctx, ctx.config).settled is settled
