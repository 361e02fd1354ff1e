"""The v2 channel with real node processes on loopback: what a man in the middle and a client
without the cluster key can do (nothing), the refusals as a user meets them, keygen and doctor.

Every byte the node sends to the attacker is recorded and searched for what would identify the
node: its peer id (base58), its raw Ed25519 key, its namespace and its port and address strings.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import base58
import pytest

from exo_discovery_core import clusterkey, handshake
from exo_discovery_core.identity import Identity, PeerId
from exo_discovery_core.session import frame
from tests.support.hostile import PREAMBLE, listeners
from tests.support.nodes import NodeFleet, NodeProcess

NAMESPACE = "secretlab"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def identifying(node: NodeProcess) -> dict[str, bytes]:
    """What must not appear in any byte a stranger receives from ``node``."""
    raw_key = base58.b58decode(node.peer_id)[6:]
    return {
        "peer id": node.peer_id.encode(),
        "raw identity key": raw_key,
        "identity key, base64": base64.b64encode(raw_key),
        "namespace": NAMESPACE.encode(),
        "port": str(node.port).encode(),
        # (not the port's two raw bytes: any 2 bytes turn up in a few KB of ciphertext by chance)
        "address": b"127.0.0.1",
    }


def assert_nothing_identifying(data: bytes, *nodes: NodeProcess) -> None:
    for node in nodes:
        for what, needle in identifying(node).items():
            assert needle not in data, f"the {what} of {node.name} was sent: {needle!r}"


def keygen(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exo_discovery_core", "keygen", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def start(
    nodes: NodeFleet, name: str, env: dict[str, str], *args: str, state_dir: Path | None = None
) -> NodeProcess:
    base = ["--plugins", "static", "--listen-host", "127.0.0.1", "--namespace", NAMESPACE]
    return nodes.start(name, *base, *args, env=env, state_dir_override=state_dir)


def wait_for_log(node: NodeProcess, text: str, timeout: float = 10.0) -> str:
    """The first stderr line containing ``text``; fails with the log tail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in node.log_path.read_text(errors="replace").splitlines():
            if text in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"{node.name}: no log line with {text!r}\n{node.log_tail()}")


# -- a man in the middle ---------------------------------------------------------------------


class Proxy:
    """A TCP relay on 127.0.0.1 to ``target``, recording both directions. ``arm()`` picks the
    connections whose dialer has sent its handshake (more than message 1); the next chunk one
    of them carries to the listener is rewritten by ``tamper`` (once; others pass untouched)."""

    def __init__(self, target: int, tamper: str) -> None:
        self.target, self.tamper = target, tamper
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.targets: set[int] = set()  # upstream pipes to tamper with, by their number
        self.tampered = threading.Event()
        self._upstreams = 0
        self._sent: dict[int, int] = {}  # upstream pipe -> bytes relayed
        self.seen = bytearray()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()

    def __enter__(self) -> Proxy:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.sock.close()
        for conn in self._conns:
            conn.close()
        for thread in self._threads:
            thread.join(5)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return
            self._conns += [client, server]
            self._upstreams += 1
            self._spawn(self._pipe, client, server, self._upstreams)
            self._spawn(self._pipe, server, client, -self._upstreams)  # downstream: < 0

    def arm(self) -> None:
        self.targets = {pipe for pipe, sent in self._sent.items() if pipe > 0 and sent > 150}

    def _pipe(self, src: socket.socket, dst: socket.socket, upstream: int) -> None:
        try:
            while data := src.recv(65536):
                self.seen += data
                self._sent[upstream] = self._sent.get(upstream, 0) + len(data)
                if upstream in self.targets and not self.tampered.is_set():
                    self.tampered.set()
                    data = self._rewrite(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _rewrite(self, data: bytes) -> bytes:
        if self.tamper == "flip":
            return data[:5] + bytes([data[5] ^ 0x01]) + data[6:]  # inside a sealed frame
        # insert: a frame the sender never sealed, naming a peer to be dialed
        forged = {
            "type": "peers",
            "peers": [{"id": str(FORGED), "addr": f"127.0.0.1:{self.honeypot}"}],
        }
        return frame(json.dumps(forged).encode()) + data

    honeypot = 0


FORGED = Identity.generate().peer_id


@pytest.mark.parametrize("tamper", ["insert", "flip"])
def test_a_proxy_that_inserts_or_flips_after_the_handshake_gets_the_connection_closed(
    nodes: NodeFleet, static_plugin_env: dict[str, str], tamper: str
) -> None:
    """A relays to B through the proxy. After both report the connection, the proxy inserts a
    frame (a peers message naming a honeypot) or flips one byte of A's next frame: B closes the
    connection, never dials the honeypot and never hears of the forged peer; and no byte the
    proxy relayed, handshake included, named either node (no cluster key here)."""
    port_b = free_port()
    with listeners(1) as (honeypot,), Proxy(port_b, tamper) as proxy:
        Proxy.honeypot = honeypot.port
        b = start(nodes, "b", static_plugin_env, "--port", str(port_b), "--no-connect")
        a = start(nodes, "a", static_plugin_env, "--port", str(free_port()),
                  "--static-peers", f"127.0.0.1:{proxy.port}")  # fmt: skip
        assert b.wait_for("connected", timeout=10)["peer_id"] == a.peer_id
        assert a.wait_for("connected", timeout=10)["peer_id"] == b.peer_id
        proxy.arm()
        assert proxy.tampered.wait(5), "A sent nothing after the handshake (heartbeats are 1 s)"
        gone = b.wait_for("disconnected", timeout=5, peer_id=a.peer_id)
        assert gone["reason"] == "bad frame: sealed frame: message failed authentication", gone
        line = wait_for_log(b, "sealed frame: message failed authentication")
        assert a.peer_id in line
        time.sleep(0.5)  # B had the chance to act on the forged frame, if it were going to
        assert honeypot.accepted == 0, "B dialed the address named in the inserted frame"
        assert b.count("peer_discovered", peer_id=str(FORGED)) == 0
        assert_nothing_identifying(bytes(proxy.seen), a, b)


# -- a client without the cluster key ----------------------------------------------------------


def raw_exchange(port: int, payload: bytes, timeout: float = 3.0) -> bytes:
    """Send ``payload``, then read everything the node sends until it closes (or ``timeout``)."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        if payload:
            sock.sendall(payload)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                break
            if not chunk:
                return bytes(received)
            received += chunk
    raise AssertionError(f"the node did not close the connection within {timeout} s")


def _first_message(key: bytes | None) -> bytes:
    state = handshake.Credentials(Identity.generate(), namespace=NAMESPACE).noise(
        initiator=True, key=key
    )
    return PREAMBLE + frame(state.write_message())


def test_a_client_without_the_cluster_key_receives_not_one_byte(
    nodes: NodeFleet, static_plugin_env: dict[str, str], tmp_path: Path
) -> None:
    key_file = tmp_path / "cluster.key"
    assert keygen(key_file).returncode == 0
    node = start(nodes, "keyed", static_plugin_env, "--cluster-key-file", str(key_file),
                 "--port", str(free_port()))  # fmt: skip
    attempts = {
        "a handshake without a key": _first_message(None),
        "a handshake with another key": _first_message(clusterkey.generate()),
        "garbage": os.urandom(200),
        "an HTTP request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "nothing (the client waits)": b"",
    }
    everything = bytearray()
    for what, payload in attempts.items():
        timeout = 7.0 if not payload else 3.0  # silence is cut at the handshake timeout (5 s)
        answer = raw_exchange(node.port, payload, timeout)
        assert answer == b"", f"{what}: the node answered {answer!r}"
        everything += answer
    # another version is told ours, and only that
    other = bytes([15]) + b"exo-discovery/3" + os.urandom(48)
    answer = raw_exchange(node.port, other)
    assert answer == PREAMBLE
    everything += answer
    assert_nothing_identifying(bytes(everything), node)
    wait_for_log(node, "the peer has no cluster key")
    wait_for_log(node, "the peer's cluster key is not one of ours")
    wait_for_log(node, "the peer speaks exo-discovery/3, this node speaks exo-discovery/2")
    # and the key itself is in no log line and no event
    secret = key_file.read_text().strip()
    assert secret not in node.log_path.read_text()
    assert all(secret not in json.dumps(e) for e in node.events)


# -- refusals as a user meets them -----------------------------------------------------------


@pytest.mark.parametrize("case", ["another key", "no key", "another namespace", "untrusted"])
def test_two_real_nodes_refuse_each_other_with_one_clear_line(
    nodes: NodeFleet, static_plugin_env: dict[str, str], tmp_path: Path, case: str
) -> None:
    one, two = tmp_path / "one.key", tmp_path / "two.key"
    assert keygen(one).returncode == 0 and keygen(two).returncode == 0
    port_b = free_port()
    b_args = ["--port", str(port_b), "--no-connect"]
    a_args = ["--port", str(free_port()), "--static-peers", f"127.0.0.1:{port_b}"]
    env_b = dict(static_plugin_env)
    if case == "another key":
        b_args += ["--cluster-key-file", str(one)]
        a_args += ["--cluster-key-file", str(two)]
        expect_b, expect_a = "the peer's cluster key is not one of ours", "closed without answering"
    elif case == "no key":
        b_args += ["--cluster-key-file", str(one)]
        expect_b, expect_a = "the peer has no cluster key", "closed without answering"
    elif case == "another namespace":
        b_args = ["--port", str(port_b), "--no-connect", "--namespace", "otherlab"]
        expect_b = f"namespace {NAMESPACE!r} is not ours ('otherlab')"
        expect_a = f"namespace 'otherlab' is not ours ({NAMESPACE!r})"
    else:
        env_b["EXO_DISCOVERY_TRUSTED_PEERS"] = str(Identity.generate().peer_id)
        expect_b, expect_a = "is not in trusted_peers", "is not in trusted_peers"
    b = start(nodes, "b", env_b, *b_args)
    a = start(nodes, "a", static_plugin_env, *a_args)
    line_b = wait_for_log(b, expect_b)
    line_a = wait_for_log(a, expect_a)
    assert "refused inbound connection from 127.0.0.1" in line_b
    assert f"127.0.0.1:{port_b}" in line_a
    if case == "untrusted":
        assert a.peer_id in line_b
    assert "Traceback" not in b.log_path.read_text() + a.log_path.read_text()
    assert a.count("connected") == 0 and b.count("connected") == 0


def test_rotation_with_real_nodes_keeps_them_connected(
    nodes: NodeFleet, static_plugin_env: dict[str, str], tmp_path: Path
) -> None:
    """serf's install / use / remove, one node restarted at a time: A and B reconnect at every
    step, and a node left on the old key is refused at the end."""
    old, new = tmp_path / "old.key", tmp_path / "new.key"
    assert keygen(old).returncode == 0 and keygen(new).returncode == 0
    ring_a, ring_b = tmp_path / "a.keys", tmp_path / "b.keys"
    port_a, port_b = free_port(), free_port()

    def run(name: str, ring: Path, port: int, peer: int) -> NodeProcess:
        return start(nodes, name, static_plugin_env, "--port", str(port), "--cluster-key-file",
                     str(ring), "--static-peers", f"127.0.0.1:{peer}",
                     state_dir=tmp_path / name[0])  # fmt: skip

    def keys(*files: Path) -> str:
        return "".join(f.read_text() for f in files)

    ring_a.write_text(keys(old))
    ring_b.write_text(keys(old))
    a, b = run("a0", ring_a, port_a, port_b), run("b0", ring_b, port_b, port_a)
    assert a.wait_for("connected", timeout=10)["peer_id"] == b.peer_id
    for step, ring in enumerate([keys(old, new), keys(new, old), keys(new)], 1):
        ring_a.write_text(ring)  # A restarts first: A new, B old config
        a.stop()
        a = run(f"a{step}", ring_a, port_a, port_b)
        assert a.wait_for("connected", timeout=15)["peer_id"] == b.peer_id, f"step {step}"
        ring_b.write_text(ring)
        b.stop()
        b = run(f"b{step}", ring_b, port_b, port_a)
        assert b.wait_for("connected", timeout=15)["peer_id"] == a.peer_id, f"step {step}"
    straggler = start(nodes, "c", static_plugin_env, "--cluster-key-file", str(old), "--port",
                      str(free_port()), "--static-peers", f"127.0.0.1:{port_a}")  # fmt: skip
    wait_for_log(a, "the peer's cluster key is not one of ours")
    assert straggler.count("connected") == 0


# -- keygen, the environment, doctor ---------------------------------------------------------


def test_keygen_writes_a_private_key_file_and_never_prints_the_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "cluster.key"
    made = keygen(path)
    assert made.returncode == 0, made.stderr
    text = path.read_text()
    key = base64.b64decode(text.strip(), validate=True)
    assert len(key) == 32 and text.endswith("\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert text.strip() not in made.stdout + made.stderr
    assert clusterkey.fingerprint(key) in made.stdout
    again = keygen(path)
    assert again.returncode != 0 and "--force" in again.stderr
    assert path.read_text() == text, "an existing key was replaced without --force"
    forced = keygen(path, "--force")
    assert forced.returncode == 0 and path.read_text() != text
    assert not [p for p in path.parent.iterdir() if p.name != "cluster.key"], "temporary file left"


def test_doctor_shows_the_fingerprint_and_a_bad_key_is_one_line(tmp_path: Path) -> None:
    key = clusterkey.generate()
    env = {**os.environ, "EXO_DISCOVERY_STATE_DIR": str(tmp_path / "state")}
    env.pop("EXO_DISCOVERY_CONFIG", None)

    def doctor(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "exo_discovery_core", "doctor", "--plugins", ""],
            capture_output=True, text=True, timeout=60, env={**env, **extra}, cwd=tmp_path,
        )  # fmt: skip

    none = doctor()
    assert "cluster key: none" in none.stdout, none.stdout + none.stderr
    keyed = doctor(EXO_DISCOVERY_CLUSTER_KEY=clusterkey.encode(key))
    assert (
        f"cluster key: set (cluster_key), fingerprint {clusterkey.fingerprint(key)}" in keyed.stdout
    )
    assert clusterkey.encode(key) not in keyed.stdout + keyed.stderr
    bad = doctor(EXO_DISCOVERY_CLUSTER_KEY="not-a-key")
    assert bad.returncode != 0
    assert "env EXO_DISCOVERY_CLUSTER_KEY: key 1 is not a cluster key" in bad.stdout + bad.stderr
    assert "not-a-key" not in bad.stdout + bad.stderr and "Traceback" not in bad.stderr
    missing = doctor(EXO_DISCOVERY_CLUSTER_KEY_FILE=str(tmp_path / "nope.key"))
    assert "env EXO_DISCOVERY_CLUSTER_KEY_FILE: cannot read" in missing.stdout + missing.stderr


def test_peer_id_from_the_raw_key_matches_the_base58_form() -> None:
    """The search for identifying bytes above looks for the right raw key."""
    identity = Identity.generate()
    raw = base58.b58decode(identity.peer_id)[6:]
    assert PeerId.from_public_key(identity.peer_id.public_key()) == identity.peer_id
    assert identity.peer_id.public_key().public_bytes_raw() == raw
