"""What every benchmark shares: result rows, statistics, and real node processes that always end.

Node processes are ``python -m exo_discovery_core -v run --json`` on 127.0.0.1 (or inside a lab
namespace when started with a ``prefix``); their stdout is read in a thread and every event is
stamped with ``_mono`` (``time.monotonic()`` when the line arrived), as ``tests/support/nodes.py``
does. Every process started here is registered at once, so :func:`end_all` can end it even when
the benchmark failed half way.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.support.netns import Event as Event  # re-exported for the benchmarks
from tests.support.netns import JsonLines

REPO = Path(__file__).resolve().parents[1]


class BenchSkipped(Exception):
    """The machine cannot run this benchmark (the message says why)."""


# -- results -------------------------------------------------------------------------------------


@dataclass
class Row:
    """One figure, its reference measured in the same run, and the target.

    ``max_ratio``: the target is ``value / ref_value <= max_ratio``; ``max_value``: the target is
    ``value <= max_value``; both: both. Neither: informational. ``status`` other than "ok" means
    not measured.
    """

    bench: str
    figure: str
    value: float | None
    unit: str
    reference: str = ""
    ref_value: float | None = None
    max_ratio: float | None = None
    max_value: float | None = None
    note: str = ""
    status: str = "ok"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.ref_value:
            return None
        return self.value / self.ref_value

    @property
    def target(self) -> str:
        targets = []
        if self.max_value is not None:
            targets.append(f"≤ {fmt(self.max_value, self.unit)}")
        if self.max_ratio is not None:
            targets.append(f"≤ {self.max_ratio:g}x ref")
        return " and ".join(targets)

    @property
    def met(self) -> bool | None:
        if self.status != "ok" or self.value is None:
            return None
        if self.max_value is not None and self.value > self.max_value:
            return False
        if self.max_ratio is not None:
            ratio = self.ratio
            return None if ratio is None else ratio <= self.max_ratio
        return True if self.max_value is not None else None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(ratio=self.ratio, target=self.target, met=self.met)
        return data


def not_run(bench: str, figure: str, why: str) -> Row:
    return Row(bench, figure, None, "", status=f"not run: {why}")


def fmt(value: float | None, unit: str) -> str:
    """A number with its unit, scaled so it stays readable (s -> ms -> µs)."""
    if value is None:
        return "—"
    if unit == "s":
        if abs(value) < 1e-3:
            return f"{value * 1e6:.0f} µs"
        if abs(value) < 1.0:
            return f"{value * 1e3:.1f} ms"
        return f"{value:.2f} s"
    if unit == "%":
        return f"{value:.2f} %"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    if abs(value) >= 1000:
        return f"{value:,.0f} {unit}".strip()
    return f"{value:.3g} {unit}".strip()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile (nearest rank on the sorted values)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return float(ordered[index])


def spread(values: Sequence[float]) -> str:
    """``n=5, min .. max`` for a note."""
    return f"n={len(values)}, min {min(values):.3f} s, max {max(values):.3f} s"


# -- processes -----------------------------------------------------------------------------------

_live: list[subprocess.Popen[Any]] = []
_live_lock = threading.Lock()


def track(proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
    with _live_lock:
        _live.append(proc)
    return proc


def end_process(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM (SIGCONT first: a stopped process cannot exit), then SIGKILL after ``grace``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
    with _live_lock, contextlib.suppress(ValueError):
        _live.remove(proc)


def end_all() -> None:
    """End every process any benchmark started and did not end (the last line of defence)."""
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    with _live_lock:
        _live.clear()


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment without any EXO_/HEADSCALE_ setting of the caller's shell.

    Nor ``PYTHONDONTWRITEBYTECODE``: an installed package runs from byte-code caches (pip writes
    them), and with the setting every start would compile the project's modules from source
    (about 100 ms of `exo-discovery plugins` on this machine) while the dependencies it is
    compared with load theirs.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EXO_DISCOVERY", "EXO_BOOTSTRAP", "EXO_MDNS", "HEADSCALE_"))
        and k != "PYTHONDONTWRITEBYTECODE"
    }
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


_PORTS = range(20000, 32000)  # below Linux's ephemeral range (32768-60999): no --port 0
_GIVEN: set[int] = set()  # listener or outgoing connection of this machine is given these


def free_port() -> int:
    """A port free on 127.0.0.1 for TCP and UDP (serf's gossip uses both), never handed out twice
    in one run: a port the kernel picks for ``bind(0)`` is released at once and may be picked
    again for the next caller, and with 200 serf agents (400 ports) that happened."""
    for _ in range(1000):
        port = random.choice(_PORTS)
        if port in _GIVEN:
            continue
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        _GIVEN.add(port)
        return port
    raise RuntimeError("no free port on 127.0.0.1 between 20000 and 32000")


class Member:
    """A cluster member's process; its events arrive in a thread, each stamped with ``_mono``.

    Subclasses say how to start it and how to read its stdout; every member reports the same
    events: ``started`` and, per other member, ``connected`` / ``disconnected`` with ``peer_id``.
    """

    def __init__(
        self,
        state_dir: Path,
        name: str,
        argv: list[str],
        env: dict[str, str],
        parse: Callable[[str], Event | None] | None = None,
    ) -> None:
        self.name = name
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = state_dir / f"{name}.stderr.log"
        self.argv = argv
        self._stderr = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.spawned_at = time.monotonic()
        self.proc = track(
            subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=self._stderr, env=env, cwd=str(state_dir)
            )
        )
        self.lines = JsonLines(self.proc, name, parse)  # each event stamped with ``_mono``
        self.peer_id = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> str:
        """``host:port`` where the other members can join this one."""
        raise NotImplementedError

    def wait_started(self, timeout: float = 30.0) -> Event:
        event = self.wait_for("started", timeout)
        self.peer_id = str(event["peer_id"])
        return event

    @property
    def events(self) -> list[Event]:
        return self.lines.events

    def wait_until(self, pred: Callable[[Event], bool], timeout: float, start: int = 0) -> Event:
        """The first event (from index ``start``) matching ``pred``; TimeoutError otherwise."""
        try:
            return self.lines.wait_for(pred, timeout, start=start)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- log ---\n{self.log_tail()}") from None

    def wait_for(self, kind: str, timeout: float, start: int = 0, **match: Any) -> Event:
        return self.wait_until(
            lambda e: e.get("event") == kind and all(e.get(k) == v for k, v in match.items()),
            timeout,
            start,
        )

    def mark(self) -> int:
        """Index of the next event: wait from here to see only what comes after now."""
        return len(self.lines.snapshot())

    def snapshot(self) -> list[Event]:
        return self.lines.snapshot()

    def connected_peers(self) -> set[str]:
        peers: set[str] = set()
        for event in self.snapshot():
            if event.get("event") == "connected":
                peers.add(str(event["peer_id"]))
            elif event.get("event") == "disconnected":
                peers.discard(str(event["peer_id"]))
        return peers

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def complaints(self) -> list[str]:
        """Warning and error lines it logged (stderr log, or stdout lines that are not events)."""
        try:
            logged = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            logged = []
        raw = [str(e.get("line")) for e in self.snapshot() if e.get("event") == "raw"]
        return [line for line in logged + raw if _COMPLAINT.search(line)]

    def rss_mib(self) -> float:
        return self.memory_mib("VmRSS")[0]

    def memory_mib(self, *fields: str) -> list[float]:
        """``fields`` of its /proc status (VmRSS, RssAnon, RssFile...), in MiB."""
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines()
        )
        try:
            return [int(status[field].split()[0]) / 1024 for field in fields]
        except KeyError as missing:
            raise RuntimeError(f"no {missing.args[0]} for pid {self.pid}") from None

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self, grace: float = 5.0) -> None:
        end_process(self.proc, grace)
        self._stderr.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        self._stderr.close()


class Node(Member):
    """An exo-discovery node process (``python -m exo_discovery_core -v run --json``)."""

    def __init__(
        self,
        state_dir: Path,
        args: Sequence[str] = (),
        *,
        plugins: str | None = None,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
        name: str = "node",
        listen_host: str | None = "127.0.0.1",
        verbosity: int = 1,
    ) -> None:
        """``plugins``: ``--plugins`` value; None means no plugin at all (not even mdns).
        ``verbosity``: 1 logs INFO to the node's stderr log, 2 DEBUG (for diagnosis)."""
        extra = dict(env or {})
        argv = [*prefix, sys.executable, "-m", "exo_discovery_core"]
        argv += ["-" + "v" * verbosity] if verbosity else []
        argv += ["run", "--json"]
        argv += ["--state-dir", str(state_dir)]
        if listen_host:
            argv += ["--listen-host", listen_host]
        if plugins is None:
            extra["EXO_DISCOVERY_PLUGINS"] = ""
        else:
            argv += ["--plugins", plugins]
        argv += list(args)
        if "--port" not in args:
            argv += ["--port", "0"]
        super().__init__(state_dir, name, argv, clean_env(extra))
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_started(self, timeout: float = 30.0) -> Event:
        event = super().wait_started(timeout)
        self.port = int(event["port"])
        return event


_COMPLAINT = re.compile(r"\b(WARN|WARNING|ERR|ERROR)\b")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (its own threads; /proc/<pid>/stat fields 14 and 15)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class Fleet:
    """Node processes under one temp dir; all are ended on exit (in parallel), pass or fail."""

    def __init__(self, label: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix=f"exo-bench-{label}-")
        self.root = Path(self._tmp.name)
        self.nodes: list[Member] = []
        self._count = 0

    def start(self, name: str | None = None, *args: str, **kwargs: Any) -> Node:
        self._count += 1
        name = name or f"n{self._count}"
        node = Node(self.root / name, args, name=name, **kwargs)
        self.nodes.append(node)
        return node

    def adopt(self, member: Member) -> Member:
        """End ``member`` (started elsewhere, e.g. a serf agent) with the rest of the fleet."""
        self.nodes.append(member)
        return member

    def close(self) -> None:
        threads = [threading.Thread(target=n.stop, args=(3.0,)) for n in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
        self.nodes.clear()
        self._tmp.cleanup()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def fleet(label: str) -> Iterator[Fleet]:
    nodes = Fleet(label)
    try:
        yield nodes
    finally:
        nodes.close()


class Deadline:
    """A time budget for one benchmark: ``left()`` seconds, ``check()`` raises past it."""

    def __init__(self, seconds: float, what: str) -> None:
        self.end = time.monotonic() + seconds
        self.what = what

    def left(self, cap: float | None = None) -> float:
        left = max(0.0, self.end - time.monotonic())
        return left if cap is None else min(left, cap)

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise TimeoutError(f"{self.what}: time budget exhausted")
