"""Start-up and memory: ``exo-discovery plugins`` and ``exo-discovery id`` vs importing the
dependencies, and the resident memory of an idle node vs that of its dependencies alone.

Each command runs as ``python -m exo_discovery_core ...`` in a fresh process (cwd and state dir in a
temp dir, so no config file is picked up); the figure is the median wall time of RUNS runs, the
three commands interleaved, after a warm-up run of each (byte-code caches written). Reference:
``python -c "import pluggy, httpx, pydantic, zeroconf"``. When a target is missed, ``-X
importtime`` says which imports the command pays for beyond the reference.

Memory: a node started as ``bench_scale`` starts one (the bootstrap plugin, a cluster key, on
loopback, its own address as its bootstrap peer), VmRSS read from /proc (as for serf) once it has
idled IDLE_S seconds, median of RSS_RUNS nodes. Reference, in the same run: a process that imports
only the node's dependencies and runs an event loop; the note breaks both down, step by step.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from exo_discovery_core import clusterkey

from .common import Fleet, Row, clean_env, free_port, median

NAME = "startup"
RUNS = 10
TARGET_RATIO = 1.5
REFERENCE = [sys.executable, "-c", "import pluggy, httpx, pydantic, zeroconf"]
ALL_DEPS = [sys.executable, "-c", "import pluggy, httpx, pydantic, zeroconf, anyio, click, base58, "
            "platformdirs, ifaddr, nacl.bindings"]  # fmt: skip
RSS_TARGET_MIB = 40.0
RSS_RUNS = 3
IDLE_S = 3.0
# What an idle node holds, imported step by step in a fresh process (VmRSS after each): first
# its dependencies with an event loop (the reference), then everything of ours the node imports.
RSS_STEPS = [
    ("the interpreter", "pass"),
    ("asyncio (with ssl and hashlib: OpenSSL's libcrypto)", "import asyncio"),
    ("pydantic (pydantic-core)", "from pydantic import BaseModel"),
    ("PyNaCl (libsodium: Ed25519, X25519, ChaCha20-Poly1305)", "import nacl.bindings"),
    ("anyio with a running loop, click, pluggy, importlib.metadata (the entry points; pydantic's "
     "plugin loader imports it too, at the first model build)",
     "import anyio, click, pluggy, importlib.metadata\nanyio.run(anyio.sleep, 0)"),
    ("pydantic's model machinery, which defining any model imports (pydantic.fields: "
     "annotated_types, pydantic.types, secrets, hmac, hashlib)", "import pydantic.fields"),
    ("a first model class built (pydantic's one-time cost; the node's are built on first use)",
     "class _First(BaseModel):\n    x: int = 0"),
    ("the core, its CLI and the bootstrap plugin (modules and their other imports)",
     "import exo_discovery_core.cli, exo_discovery_core.runner, exo_discovery_core.node\n"
     "import exo_discovery_bootstrap.plugin"),
]  # fmt: skip
DEPENDENCY_STEPS = 5  # the first five are the reference; the next two, pydantic's share of ours
_RSS_PROBE = """
import json, sys
def rss():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmRSS:")) / 1024
out = []
for step in json.loads(sys.argv[1]):
    exec(step)
    out.append(rss())
print(json.dumps(out))
"""


def _time(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, timeout=60, check=False)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[1:])} failed: {done.stderr.decode()[-300:]}")
    return took


def _import_costs(argv: list[str], cwd: Path, env: dict[str, str]) -> dict[str, int]:
    """Top-level package -> self import time in µs, from ``-X importtime``."""
    done = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    costs: dict[str, int] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = line.removeprefix("import time:").split("|")
        module = name.strip()
        package = module if module.startswith("exo_discovery") else module.split(".")[0]
        costs[package] = costs.get(package, 0) + int(self_us)
    return costs


def _analysis(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    runs = 3
    command: dict[str, int] = {}
    reference: dict[str, int] = {}
    for _ in range(runs):
        for package, us in _import_costs(argv, cwd, env).items():
            command[package] = command.get(package, 0) + us // runs
        for package, us in _import_costs(REFERENCE, cwd, env).items():
            reference[package] = reference.get(package, 0) + us // runs
    extra = sorted(((us - reference.get(p, 0), p) for p, us in command.items()), reverse=True)
    total = sum(command.values()) - sum(reference.values())
    lines = [f"`{' '.join(argv[1:])}` imports {total / 1000:.0f} ms more than the reference "
             "(-X importtime, self time by top-level package, exo modules each, mean of 3):"]  # fmt: skip
    lines += [f"    {us / 1000:6.1f} ms  {package}" for us, package in extra[:16] if us > 0]
    return "\n".join(lines)


def _idle_node_rss() -> list[tuple[float, float, float]]:
    """VmRSS, RssAnon and RssFile (MiB) of RSS_RUNS idle nodes, each started as bench_scale
    starts its first member. The file-backed part is shared libraries' pages, and how many a
    process maps moves with the page cache (by ~0.8 MiB between two virtualenvs of the same
    code): the anonymous part is the node's own."""
    env = {"EXO_DISCOVERY_CLUSTER_KEY": clusterkey.encode(clusterkey.generate())}
    found = []
    with Fleet("startup-rss") as fleet:
        for i in range(RSS_RUNS):
            port = free_port()
            node = fleet.start(f"idle{i}", "--port", str(port), "--bootstrap-peers",
                               f"127.0.0.1:{port}", plugins="bootstrap", env=env)  # fmt: skip
            node.wait_started()
            time.sleep(IDLE_S)  # the measurement window: the node at rest
            vm, anon, file = node.memory_mib("VmRSS", "RssAnon", "RssFile")
            found.append((vm, anon, file))
            node.stop()
    return found


def _rss_steps(cwd: Path, env: dict[str, str]) -> list[float]:
    """VmRSS after each of RSS_STEPS, in one fresh process (median of RSS_RUNS processes)."""
    steps = json.dumps([code for _, code in RSS_STEPS])
    runs = []
    for _ in range(RSS_RUNS):
        done = subprocess.run([sys.executable, "-c", _RSS_PROBE, steps], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        runs.append(json.loads(done.stdout))
    return [median([run[i] for run in runs]) for i in range(len(RSS_STEPS))]


def _memory_rows(cwd: Path, env: dict[str, str]) -> list[Row]:
    steps = _rss_steps(cwd, env)
    measured = _idle_node_rss()
    nodes = [vm for vm, _, _ in measured]
    node = median(nodes)
    floor = steps[DEPENDENCY_STEPS - 1]
    lines = ["VmRSS of one process importing, step by step (median of "
             f"{RSS_RUNS}; MiB, what the step added):"]  # fmt: skip
    before = 0.0
    for (what, _), after in zip(RSS_STEPS, steps, strict=True):
        lines.append(f"    {after:6.1f}  +{after - before:5.1f}  {what}")
        before = after
    lines.append(f"    {node:6.1f}  +{node - before:5.1f}  running: config validated, listening, "
                 f"status socket, plugin started, idle {IDLE_S:g} s (the node's own VmRSS)")  # fmt: skip
    return [
        Row(NAME, "idle node RSS (bootstrap plugin, as bench_scale starts it), median", node,
            "MiB", "a process importing only its dependencies, with an event loop", floor,
            max_value=RSS_TARGET_MIB, extra={"memory": "\n".join(lines)},
            note=f"VmRSS after {IDLE_S:g} s idle, {RSS_RUNS} nodes: "
            + ", ".join(f"{v:.2f}" for v in nodes) + " MiB (anonymous + file-backed: "
            + ", ".join(f"{a:.2f} + {f:.2f}" for _, a, f in measured) + "); the reference is "
            f"steps 1-{DEPENDENCY_STEPS} of the breakdown below"),
    ]  # fmt: skip


def run() -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="exo-bench-startup-") as tmp:
        cwd = Path(tmp)
        env = clean_env({"EXO_DISCOVERY_STATE_DIR": str(cwd / "state")})
        base = [sys.executable, "-m", "exo_discovery_core"]
        commands = {"plugins": [*base, "plugins"], "id": [*base, "id"]}
        times: dict[str, list[float]] = {"reference": [], "all deps": [], "plugins": [], "id": []}
        for argv in (REFERENCE, ALL_DEPS, *commands.values()):
            _time(argv, cwd, env)  # warm-up; `id` creates the key here
        for _ in range(RUNS):
            times["reference"].append(_time(REFERENCE, cwd, env))
            times["all deps"].append(_time(ALL_DEPS, cwd, env))
            for name, argv in commands.items():
                times[name].append(_time(argv, cwd, env))
        reference = median(times["reference"])
        rows = []
        for name, argv in commands.items():
            value = median(times[name])
            extra = {}
            if value > TARGET_RATIO * reference:
                extra["imports"] = _analysis(argv, cwd, env)
            rows.append(Row(NAME, f"`exo-discovery {name}` wall time, median", value, "s",
                            "`python -c 'import pluggy, httpx, pydantic, zeroconf'`", reference,
                            max_ratio=TARGET_RATIO, extra=extra,
                            note=f"{RUNS} runs each, interleaved, after a warm-up; "
                            f"min {min(times[name]) * 1e3:.0f} ms, "
                            f"reference min {min(times['reference']) * 1e3:.0f} ms"))  # fmt: skip
        all_deps = median(times["all deps"])
        rows.append(Row(NAME, "importing every runtime dependency, median", all_deps, "s",
                        "`python -c 'import pluggy, httpx, pydantic, zeroconf'`", reference,
                        note="the same plus anyio, click, base58, platformdirs, ifaddr and "
                        "PyNaCl: the floor for any command that loads the core "
                        f"and all plugins; `plugins` is {median(times['plugins']) / all_deps:.2f}x "
                        f"this, `id` {median(times['id']) / all_deps:.2f}x"))  # fmt: skip
        rows += _memory_rows(cwd, env)
        return rows
