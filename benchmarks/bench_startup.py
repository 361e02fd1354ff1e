"""Start-up: ``exo-discovery plugins`` and ``exo-discovery id`` vs importing the dependencies.

Each command runs as ``python -m exo_discovery_core ...`` in a fresh process (cwd and state dir in a
temp dir, so no config file is picked up); the figure is the median wall time of RUNS runs, the
three commands interleaved, after a warm-up run of each (byte-code caches written). Reference:
``python -c "import pluggy, httpx, pydantic, zeroconf"``. When a target is missed, ``-X
importtime`` says which imports the command pays for beyond the reference.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import Row, clean_env, median

NAME = "startup"
RUNS = 10
TARGET_RATIO = 1.5
REFERENCE = [sys.executable, "-c", "import pluggy, httpx, pydantic, zeroconf"]
ALL_DEPS = [sys.executable, "-c", "import pluggy, httpx, pydantic, zeroconf, anyio, click, base58, "
            "platformdirs, ifaddr, cryptography.hazmat.primitives.asymmetric.ed25519"]  # fmt: skip


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
                        "cryptography's ed25519: the floor for any command that loads the core "
                        f"and all plugins; `plugins` is {median(times['plugins']) / all_deps:.2f}x "
                        f"this, `id` {median(times['id']) / all_deps:.2f}x"))  # fmt: skip
        return rows
