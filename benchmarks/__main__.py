"""``python -m benchmarks [--only NAME ...] [--json PATH]``: run the benchmarks, print one table.

Each figure is printed next to its reference, measured in the same run on the same machine, with
the ratio and the target. Every benchmark runs under a time budget (an alarm ends it; its own
``finally`` blocks end its processes and namespaces), and whatever process is still alive
afterwards is killed before the next one starts.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from .common import BenchSkipped, Row, end_all, fmt, not_run


@dataclass(frozen=True)
class Bench:
    name: str
    module: str
    budget: float  # seconds, enforced by an alarm
    what: str


BENCHES = [
    Bench("handshake", "bench_handshake", 180, "connect + handshake vs TCP connect"),
    Bench("startup", "bench_startup", 180, "CLI start-up vs importing the dependencies"),
    Bench("bootstrap", "bench_bootstrap", 240, "listen socket open -> connected on the dialer"),
    Bench("mdns", "bench_mdns", 300, "start -> discovered, goodbye -> lost, vs bare zeroconf"),
    Bench("headscale", "bench_headscale", 240, "parse+compare vs json.loads; polling CPU"),
    Bench("failure", "bench_failure", 180, "kill -9 / SIGSTOP -> disconnected"),
    Bench("scale", "bench_scale", 600, "N members beside serf: mesh, CPU, RSS, failure"),
    Bench("bounded", "bench_bounded", 600, "100 members, max_connections = 8, beside serf"),
    Bench("starved", "bench_starved", 600, "beside busy loops; an embedded node's host blocks"),
]


class BudgetExceeded(BaseException):
    """Raised by the alarm in the main thread: a BaseException, so no `except Exception` eats it."""


class Terminated(BaseException):
    """SIGTERM: unwind (running every cleanup) instead of dying with children left behind."""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise BudgetExceeded()


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def run_one(bench: Bench) -> tuple[list[Row], float]:
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, bench.budget)
    try:
        module = importlib.import_module(f"benchmarks.{bench.module}")
        rows: list[Row] = module.run()
    except BenchSkipped as exc:
        rows = [not_run(bench.name, bench.what, str(exc))]
    except BudgetExceeded:
        rows = [Row(bench.name, bench.what, None, "",
                    status=f"error: over its {bench.budget:g} s budget")]  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - one failed benchmark must not stop the others
        traceback.print_exc()
        rows = [Row(bench.name, bench.what, None, "",
                    status=f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")]  # fmt: skip
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        end_all()
    return rows, time.monotonic() - started


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }


def _met(row: Row) -> str:
    if row.status != "ok":
        return row.status
    return {True: "✅ yes", False: "❌ **no**", None: ""}[row.met]


def table(rows: list[Row], info: dict[str, Any], runs: dict[str, dict[str, float]]) -> str:
    lines = [
        f"Benchmarks — {info['date']}; {info['nproc']} CPUs ({info['cpu'] or 'unknown CPU'}); "
        f"{info['implementation']} {info['python']}; {info['platform']}",
        "",
        "| benchmark | figure | value | reference (same run) | ref. value | ratio | target | met |",
        "| --- | --- | ---: | --- | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        ref_value = fmt(row.ref_value, row.unit) if row.reference else ""
        lines.append(
            f"| {row.bench} | {row.figure} | {fmt(row.value, row.unit)} | {row.reference} "
            f"| {ref_value} | {ratio} | {row.target} | {_met(row)} |"
        )
    if runs:
        lines += ["", "Run: " + "; ".join(
            f"{name} {run['seconds']:.0f} s (load avg {run['load_before']:.1f} before)"
            for name, run in runs.items()
        ) + ". (1-minute load average; above the CPU count, other work competed with the "
            "benchmark: the machine may be shared.)"]  # fmt: skip
    notes = [f"- **{r.bench} / {r.figure}**: {r.note}" for r in rows if r.note]
    if notes:
        lines += ["", "Notes:", "", *notes]
    for row in rows:
        for key, text in row.extra.items():
            if isinstance(text, str) and "\n" in text:
                lines += ["", f"{row.bench} — {key}:", "", "```", text, "```"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    names = [b.name for b in BENCHES]
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--only", action="append", choices=names, metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(names)}")  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    args = parser.parse_args(argv)
    if Path.cwd().resolve() != Path(__file__).resolve().parents[1]:
        os.chdir(Path(__file__).resolve().parents[1])
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGTERM, _on_term)
    info = machine()
    rows: list[Row] = []
    runs: dict[str, dict[str, float]] = {}
    status = 0
    try:
        for bench in BENCHES:
            if args.only and bench.name not in args.only:
                continue
            print(f"== {bench.name}: {bench.what} (budget {bench.budget:g} s)", file=sys.stderr,
                  flush=True)  # fmt: skip
            load = os.getloadavg()[0]
            got, took = run_one(bench)
            runs[bench.name] = {"seconds": took, "load_before": load}
            rows += got
            for row in got:
                print(f"   {row.figure}: {fmt(row.value, row.unit)}"
                      + (f" vs {fmt(row.ref_value, row.unit)}" if row.reference else "")
                      + (f" [{row.status}]" if row.status != "ok" else ""),
                      file=sys.stderr, flush=True)  # fmt: skip
            print(f"   ({took:.0f} s)", file=sys.stderr, flush=True)
    except (Terminated, KeyboardInterrupt):
        print("interrupted: the processes and namespaces started were ended; partial table:",
              file=sys.stderr)  # fmt: skip
        status = 130
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        end_all()
    print(table(rows, info, runs))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": info, "runs": runs, "rows": [r.as_dict() for r in rows]},
                indent=2,
            )
            + "\n"
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
