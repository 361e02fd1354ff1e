"""The attacks of issue 11, each against REAL node processes on loopback, each a reproduction that
failed before records and bounds: a flood of idle connections under a low open-file limit, address
poisoning through the peer exchange, an exchange frame that turns the node into a dialer of the
sender's choice, and two live nodes holding one key.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from exo_discovery_core import records
from exo_discovery_core.identity import Identity, PeerId
from tests.support.cli import exo_discovery
from tests.support.hostile import Listener, Stranger, probe
from tests.support.nodes import NodeFleet

ARGS = ["--plugins", "static", "--listen-host", "127.0.0.1", "--port", "0"]
# the defaults of learned_dial_burst and learned_dial_rate (README, configuration reference)
LEARNED_DIAL_BURST, LEARNED_DIAL_RATE = 20, 5.0


@contextmanager
def portal() -> Iterator[BlockingPortal]:
    """An event loop in a thread, for strangers that must stay connected while the test waits."""
    with start_blocking_portal("asyncio") as loop:
        yield loop


@contextmanager
def strangers(loop: BlockingPortal, count: int) -> Iterator[list[Stranger]]:
    """``count`` authenticated strangers that keep their connections up until the end."""
    made = [Stranger() for _ in range(count)]
    futures = [loop.start_task_soon(s.keep_alive) for s in made]
    try:
        yield made
    finally:
        for future in futures:
            future.cancel()
        for stranger in made:
            loop.call(stranger.aclose)


def forged(peer_id: str, addrs: list[str], signer: Identity) -> str:
    """A record naming ``peer_id`` but signed by someone else: what a stranger can make."""
    payload = {"addrs": addrs, "boot": "00" * 16, "meta": {}, "peer_id": peer_id,
               "protocol": "exo-discovery/2", "seq": 2**62}  # fmt: skip
    return base64.b64encode(records.seal(signer, json.dumps(payload).encode())).decode()


def made_up(addr: str) -> tuple[str, str]:
    """A peer that does not exist: a fresh identity's id, and its validly signed record at
    ``addr`` (base64)."""
    identity = Identity.generate()
    payload = {"addrs": [addr], "boot": "11" * 16, "meta": {}, "peer_id": str(identity.peer_id),
               "protocol": "exo-discovery/2", "seq": 1}  # fmt: skip
    envelope = records.seal(identity, json.dumps(payload).encode())
    return str(identity.peer_id), base64.b64encode(envelope).decode()


async def answers_within(port: int, peer_id: str, timeout: float) -> bool:
    """True once the node at ``port`` proves ``peer_id`` in a handshake again (within timeout)."""
    with anyio.move_on_after(timeout):
        while not await probe(port, PeerId.parse(peer_id), timeout=2.0):  # noqa: ASYNC110 - a remote node: no event to wait on
            await anyio.sleep(0.2)
        return True
    return False


def test_a_node_with_256_open_files_survives_1000_idle_connections_then_connects_a_peer(
    nodes: NodeFleet, static_plugin_env: dict[str, str]
) -> None:
    """Before: accept() raised EMFILE inside the listener and the node ended (issue 11, 1)."""
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit is not installed")
    v = nodes.start("v", *ARGS, env=static_plugin_env, prefix=["prlimit", "--nofile=256"])
    idle: list[socket.socket] = []
    try:
        for _ in range(1000):
            idle.append(socket.create_connection(("127.0.0.1", v.port), timeout=10))
        assert v.proc.poll() is None, "the node ended under 1,000 idle connections"
        # the idle ones that got a handshake slot are cut at handshake_timeout, the rest at once:
        # then the node answers a handshake again (a refused dial would wait the dialer's 30 s)
        assert anyio.run(answers_within, v.port, v.peer_id, 30.0), "the node stopped answering"
        good = nodes.start("good", *ARGS, "--static-peers", v.address, env=static_plugin_env)
        good.wait_for("connected", timeout=30, peer_id=v.peer_id)
        v.wait_for("connected", timeout=5, peer_id=good.peer_id)
        assert v.proc.poll() is None
    finally:
        for sock in idle:
            sock.close()
    log = v.log_path.read_text()
    assert "Traceback" not in log
    assert log.count("refusing inbound connections") <= 2, "the refusals are logged once a burst"


def test_v_and_r_connect_despite_a_strangers_poisoning(
    nodes: NodeFleet, static_plugin_env: dict[str, str]
) -> None:
    """Before: the first sender to name a peer decided its address; a stranger telling V that R
    is at 127.0.0.9:9 (and R the same of V) kept them apart for good (issue 11, 2)."""
    v = nodes.start("v", *ARGS, env=static_plugin_env)
    r = nodes.start("r", *ARGS, env=static_plugin_env)
    poison = "127.0.0.9:9"
    with portal() as loop, strangers(loop, 2) as (old_style, new_style):
        for node, other in ((v, r), (r, v)):
            # the attack as the old protocol allowed it: a bare address for the other's id
            stream = loop.call(old_style.connect, node.port)
            bare = {"type": "peers", "peers": [{"id": other.peer_id, "addr": poison}]}
            loop.call(old_style.send, stream, bare)
            # the best a stranger can do now: list the id, with a record it signed itself
            stream = loop.call(new_style.connect, node.port)
            fake = forged(other.peer_id, [poison], new_style.identity)
            listed = {"type": "peers", "peers": [other.peer_id]}
            loop.call(new_style.send, stream, listed, {"type": "records", "records": [fake]})
        for node in (v, r):  # the strangers are connected, and said what they said first
            for stranger in (old_style, new_style):
                node.wait_for("connected", timeout=10, peer_id=str(stranger.identity.peer_id))
        h = nodes.start(
            "h", *ARGS, "--static-peers", f"{v.address},{r.address}", env=static_plugin_env
        )
        v.wait_for("connected", timeout=15, peer_id=r.peer_id)
        r.wait_for("connected", timeout=15, peer_id=v.peer_id)
        assert {v.peer_id, r.peer_id} <= h.connected_peers()


def test_one_frame_of_100_made_up_peers_makes_at_most_the_documented_dials(
    nodes: NodeFleet, static_plugin_env: dict[str, str]
) -> None:
    """Before: one 8.7 kB frame naming 100 made-up peers made the node connect ~840 times in
    10 s to addresses the sender chose (issue 11, 3). Now the sender's peers are only hints, at
    most ``exchange_peers_per_sender`` (64) of them are taken, and dials of peers known only
    through exchange are paced: at most learned_dial_burst + learned_dial_rate x seconds."""
    n = nodes.start("n", *ARGS, env=static_plugin_env)
    with Listener() as target, portal() as loop, strangers(loop, 2) as (old_style, new_style):
        addr = f"127.0.0.1:{target.port}"
        bare = [{"id": str(Identity.generate().peer_id), "addr": addr} for _ in range(100)]
        stream = loop.call(old_style.connect, n.port)
        loop.call(old_style.send, stream, {"type": "peers", "peers": bare})
        ids, fakes = zip(*(made_up(addr) for _ in range(100)), strict=True)
        stream = loop.call(new_style.connect, n.port)
        listed = {"type": "peers", "peers": list(ids)}
        batches = [{"type": "records", "records": fakes[i : i + 20]} for i in range(0, 100, 20)]
        started = time.monotonic()
        loop.call(new_style.send, stream, listed, *batches)
        time.sleep(10.0)  # a measurement window, not a wait for an event: count what it did
        dials, elapsed = target.accepted, time.monotonic() - started
        bound = LEARNED_DIAL_BURST + LEARNED_DIAL_RATE * elapsed
        assert dials <= bound, f"{dials} dials in {elapsed:.1f} s (bound {bound:.0f})"
        assert dials > 0, "the records were not used at all"
        status = peers_json(n.state_dir)
        assert len(status["peers"]) <= 64 + 2, "more peers taken from one sender than the limit"
    assert n.proc.poll() is None


def peers_json(state_dir: Path) -> dict[str, Any]:
    result = exo_discovery(state_dir, "peers", "--json", "--state-dir", str(state_dir))
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_two_nodes_with_one_state_dir_are_both_told(
    nodes: NodeFleet, static_plugin_env: dict[str, str], tmp_path: Path
) -> None:
    """Before: two nodes started with one state dir ran with one peer id and nothing said so."""
    hub = nodes.start("hub", *ARGS, env=static_plugin_env)
    shared = tmp_path / "shared"
    first = nodes.start(
        "first", *ARGS, "--static-peers", hub.address, env=static_plugin_env,
        state_dir_override=shared,
    )  # fmt: skip
    hub.wait_for("connected", timeout=10, peer_id=first.peer_id)
    second = nodes.start(
        "second", *ARGS, "--static-peers", hub.address, env=static_plugin_env,
        state_dir_override=shared,
    )  # fmt: skip
    assert second.peer_id == first.peer_id
    for node in (first, second):
        told = node.wait_for("duplicate_identity", timeout=15, peer_id=first.peer_id)
        assert "exo-discovery id --regenerate" in told["reason"]
    seen = hub.wait_for("duplicate_identity", timeout=5, peer_id=first.peer_id)
    assert "2 live nodes hold this peer's key" in seen["reason"]
    row = next(p for p in peers_json(hub.state_dir)["peers"] if p["peer_id"] == first.peer_id)
    assert "exo-discovery id --regenerate" in row["duplicate_identity"]
    # one event each, not one per reconnection: reported, not flapping silently or loudly
    time.sleep(3.0)
    assert first.count("duplicate_identity") == 1 and second.count("duplicate_identity") == 1


def test_a_cloned_key_is_reported_by_peers_and_doctor_on_both(
    nodes: NodeFleet, static_plugin_env: dict[str, str], tmp_path: Path
) -> None:
    """The cloned-disk case (exo #1332): two state dirs holding one key."""
    hub = nodes.start("hub", *ARGS, env=static_plugin_env)
    one = nodes.start("one", *ARGS, "--static-peers", hub.address, env=static_plugin_env)
    hub.wait_for("connected", timeout=10, peer_id=one.peer_id)
    clone_dir = tmp_path / "clone"
    clone_dir.mkdir()
    shutil.copy(one.state_dir / "identity.key", clone_dir / "identity.key")
    clone = nodes.start(
        "clone", *ARGS, "--static-peers", hub.address, env=static_plugin_env,
        state_dir_override=clone_dir,
    )  # fmt: skip
    env = static_plugin_env
    for node in (one, clone):
        node.wait_for("duplicate_identity", timeout=15, peer_id=one.peer_id)
        status = peers_json(node.state_dir)
        assert "another node holds this node's key" in status["duplicate_identity"]
        human = exo_discovery(node.state_dir, "peers", "--state-dir", str(node.state_dir))
        assert "WARNING: another node holds this node's key" in human.stdout
        doctor = exo_discovery(
            node.state_dir, "doctor", "--plugins", "static", "--state-dir", str(node.state_dir),
            env=env,
        )  # fmt: skip
        assert doctor.returncode == 1, doctor.stdout + doctor.stderr
        assert "✗ duplicate identity" in doctor.stdout
        assert "fix: exo-discovery id --regenerate" in doctor.stdout


def test_metadata_travels_in_the_record_to_events_and_peers_json(
    nodes: NodeFleet, static_plugin_env: dict[str, str]
) -> None:
    a = nodes.start(
        "a", *ARGS, "--meta", "api_port=52415", "--meta", "role=worker", env=static_plugin_env
    )
    b = nodes.start(
        "b", *ARGS, "--static-peers", a.address, env={**static_plugin_env,
        "EXO_DISCOVERY_META": "api_port=1,zone=x"},
    )  # fmt: skip
    meta_a, meta_b = {"api_port": "52415", "role": "worker"}, {"api_port": "1", "zone": "x"}
    assert b.wait_for("connected", timeout=10, peer_id=a.peer_id)["meta"] == meta_a
    assert a.wait_for("connected", timeout=10, peer_id=b.peer_id)["meta"] == meta_b
    # the record came in the handshake, before the connection was reported: so did its meta
    told = [e for e in b.events if e["event"].startswith("peer_") and e.get("peer_id") == a.peer_id]
    assert told and told[-1].get("meta") == meta_a, told
    row = next(p for p in peers_json(b.state_dir)["peers"] if p["peer_id"] == a.peer_id)
    assert row["meta"] == meta_a
    human = exo_discovery(b.state_dir, "peers", "--state-dir", str(b.state_dir))
    assert "  meta api_port=52415, role=worker" in human.stdout, human.stdout


@pytest.mark.anyio
async def test_new_metadata_at_run_time_is_one_update_on_the_peer() -> None:
    """A host program changes its metadata: one new record (higher seq), one event on the peer."""
    from exo_discovery_core import PeerCandidate
    from exo_discovery_core.testing import next_event, run_node
    from tests.support.static import Static

    async with run_node(node={"meta": {"v": "1"}}) as a:
        plugin = Static(PeerCandidate.at("127.0.0.1", a.port, str(a.peer_id)))
        async with run_node({"static": plugin}) as b, b.events() as events:
            await next_event(events, "connected", peer_id=a.peer_id)
            assert b.meta_of(a.peer_id) == {"v": "1"}
            with anyio.fail_after(5):  # on_connection runs in a task of its own
                while not plugin.connections:  # noqa: ASYNC110 - the plugin records, no event
                    await anyio.sleep(0.01)
            assert plugin.connections[0].meta == {"v": "1"}, "ConnectionEvent.meta"
            before = a.record.seq
            a.set_meta({"v": "2", "api_port": "52415"})
            assert a.record.seq > before
            update = await next_event(events, "peer_updated", peer_id=a.peer_id)
            assert update.meta == {"v": "2", "api_port": "52415"}
            with anyio.move_on_after(1.5):
                extra = await next_event(events, "peer_updated", peer_id=a.peer_id)
                raise AssertionError(f"a second update event: {extra}")
