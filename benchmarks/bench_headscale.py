"""Headscale: parsing a big node list, and what polling one costs a running node.

1. Parse + compare vs ``json.loads``: ``benchmarks/bench_headscale_parse.py`` (another engineer's
   script, run as it is, in a subprocess) prints one line per (version, node count); its rows are
   read from that output. Target: ≤ 2x json.loads for 10,000 nodes.
2. CPU share: a node process with only the headscale plugin polls a fake Headscale (in this
   process, 127.0.0.1) serving 1,000 online, tagged nodes every 5 s; the reference is the same
   node process, same config, with no plugin at all, measured over the same window. Both run
   with ``[node] connect = false`` and ``verify = false`` (the node dials nothing), so the 1,000
   Tailscale addresses are never dialed and no packet leaves loopback. CPU share = (utime + stime
   from /proc/<pid>/stat) / wall time, in % of one core.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from .common import REPO, BenchSkipped, Deadline, Fleet, Row, clean_env, not_run

NAME = "headscale"
PARSE_SCRIPT = REPO / "benchmarks" / "bench_headscale_parse.py"
NODES = 1_000
POLL_S = 5.0
WINDOW_S = 30.0
WARMUP_S = 3.0  # after the first round: the 1,000 candidates are in the table
PARSE_TARGET_RATIO = 2.0
_LINE = re.compile(
    r"^(?P<version>\d+\.\d+\.\d+)\s+(?P<nodes>\d+)\s+(?P<mb>[\d.]+)\s+(?P<loads>[\d.]+)ms\s+"
    r"(?P<ours>[\d.]+)ms\s+(?P<ratio>[\d.]+)\s+(?P<cold>[\d.]+)ms"
)


def _parse_rows(deadline: Deadline) -> list[Row]:
    if not PARSE_SCRIPT.exists():
        return [not_run(NAME, "parse + compare vs json.loads", f"{PARSE_SCRIPT.name} missing")]
    done = subprocess.run([sys.executable, str(PARSE_SCRIPT)], cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=deadline.left(150),
                          check=False)  # fmt: skip
    rows = []
    for line in done.stdout.splitlines():
        match = _LINE.match(line.strip())
        if match is None:
            continue
        count = int(match["nodes"])
        rows.append(
            Row(NAME, f"parse + compare, {count:,} nodes (v{match['version']}, steady round)",
                float(match["ours"]) / 1e3, "s", f"json.loads of the same {match['mb']} MB",
                float(match["loads"]) / 1e3,
                max_ratio=PARSE_TARGET_RATIO if count >= 10_000 else None,
                note=f"cold (first round, fresh selector): {match['cold']} ms; "
                f"from {PARSE_SCRIPT.name}"),
        )  # fmt: skip
    if not rows:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return [Row(NAME, "parse + compare vs json.loads", None, "",
                    status=f"error: {PARSE_SCRIPT.name} exit {done.returncode}: {tail[0][:150]}")]  # fmt: skip
    return rows


def _cpu_rows(deadline: Deadline) -> list[Row]:
    try:
        sys.path.insert(0, str(REPO))
        from tests.support.fake_headscale import FakeHeadscale, FakeNode
    except ImportError as exc:
        return [not_run(NAME, "node CPU, polling 1,000 nodes", f"fake Headscale missing ({exc})")]
    nodes = [FakeNode.numbered(i, tags=("tag:exo", "tag:exo-port-52417"))
             for i in range(1, NODES + 1)]  # fmt: skip
    with FakeHeadscale(nodes=nodes) as fake, Fleet(NAME) as fleet:
        config = fleet.root / "exo-discovery.toml"
        config.write_text("[node]\nconnect = false\nverify = false\n")
        polling = fleet.start("polling", "--config", str(config), "--headscale-api-url", fake.url,
                              "--headscale-poll-interval", f"{POLL_S:g}", plugins="headscale",
                              env={"HEADSCALE_API_KEY": fake.key})  # fmt: skip
        idle = fleet.start("idle", "--config", str(config))
        polling.wait_started(deadline.left(30))
        idle.wait_started(deadline.left(30))
        polling.wait_until(lambda _: len(fake.requests) >= 1, deadline.left(30))
        _wait_for_peers(polling.log_path, deadline)
        time.sleep(WARMUP_S)
        requests0 = len(fake.requests)
        wall0 = time.monotonic()
        cpu0 = {n.name: n.cpu_seconds() for n in (polling, idle)}
        time.sleep(min(WINDOW_S, deadline.left()))
        wall = time.monotonic() - wall0
        cpu = {n.name: n.cpu_seconds() - cpu0[n.name] for n in (polling, idle)}
        polls = len(fake.requests) - requests0
        discovered = sum(1 for e in polling.snapshot() if e.get("event") == "peer_discovered")
        rss = polling.rss_mib(), idle.rss_mib()
    share = {name: 100 * used / wall for name, used in cpu.items()}
    per_poll = (cpu["polling"] - cpu["idle"]) / polls if polls else None
    return [
        Row(NAME, f"node CPU while polling {NODES:,} nodes every {POLL_S:g} s", share["polling"],
            "%", "same node, no plugin, same window", share["idle"],
            note=f"{wall:.0f} s window, {polls} polls answered, {discovered} peers discovered; "
            + (f"≈ {per_poll * 1e3:.0f} ms CPU per poll above idle; " if per_poll else "")
            + f"RSS {rss[0]:.0f} MiB vs {rss[1]:.0f} MiB idle; connect = false, verify = false (no dialing)",
            extra={"cpu_s": cpu, "wall_s": wall, "polls": polls}),
    ]  # fmt: skip


def _wait_for_peers(log: Path, deadline: Deadline) -> None:
    """The plugin logs "Headscale: N peer(s) among M node(s)" after its first good round."""
    end = time.monotonic() + deadline.left(30)
    while time.monotonic() < end:
        if "peer(s) among" in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise TimeoutError(f"headscale plugin: no round within 30 s; log: {log.read_text()[-400:]}")


def run() -> list[Row]:
    deadline = Deadline(230, NAME)
    rows = _parse_rows(deadline)
    try:
        rows += _cpu_rows(deadline)
    except BenchSkipped as exc:
        rows.append(not_run(NAME, "node CPU, polling", str(exc)))
    return rows
