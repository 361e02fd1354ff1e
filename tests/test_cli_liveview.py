"""The live view in a real terminal (a pty of the test's own): the frame fits the window at 80
and at 160 columns after a resize, -v log lines land in its log area instead of through it, and
Ctrl-C exits 130."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import termios
import threading
import time
from pathlib import Path

from tests.support.cli import EXO_DISCOVERY, RunningNode, user_env

FRAME = "\x1b[H"
END = "\x1b[J"
ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def set_size(fd: int, columns: int, rows: int = 30) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


class Terminal:
    """What the program wrote to the pty, read as it comes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.text = ""
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                self.text += chunk.decode("utf-8", "replace")

    def frames(self) -> list[str]:
        with self._lock:
            return self.text.split(FRAME)[1:]

    def wait_for_frame(self, predicate: object, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for frame in reversed(self.frames()):
                if callable(predicate) and predicate(frame):
                    return frame
            time.sleep(0.05)
        raise AssertionError(f"no such frame within {timeout} s; last: {self.frames()[-1:]}")


def lines_of(frame: str) -> list[str]:
    body = frame.split(END, 1)[0].replace("\r", "")
    return [ESCAPES.sub("", line) for line in body.split("\n") if line]


def test_the_live_view_fits_80_then_160_columns_and_keeps_log_lines_inside(
    tmp_path: Path, running: list[RunningNode]
) -> None:
    (tmp_path / "peer").mkdir()
    peer = RunningNode(tmp_path / "peer", env={"EXO_DISCOVERY_PLUGINS": "bootstrap"})
    running.append(peer)
    started = peer.wait_for("started")
    master, slave = pty.openpty()
    set_size(slave, 80)
    env = user_env(tmp_path, {"EXO_DISCOVERY_PLUGINS": "bootstrap", "TERM": "xterm"})
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    proc = subprocess.Popen(
        [EXO_DISCOVERY, "run", "-v", "--listen-host", "127.0.0.1", "--port", "0",
         "--bootstrap-peers", f"127.0.0.1:{started['port']}"],
        stdin=slave, stdout=slave, stderr=slave, cwd=tmp_path, env=env, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    screen = Terminal(master)
    try:
        narrow = screen.wait_for_frame(lambda f: "1/1 connected" in f and "log:" in f)
        assert max(map(len, lines_of(narrow))) <= 80, lines_of(narrow)
        assert "INFO exo_discovery.node: connected to 12D3KooW" in narrow  # in the log area
        set_size(master, 160)
        os.killpg(proc.pid, signal.SIGWINCH)
        wide = screen.wait_for_frame(lambda f: "  ADDRESS  " in f)  # a column from 120 on
        assert max(map(len, lines_of(wide))) <= 160
        assert started["peer_id"] in wide and "(Ctrl-C to stop)" in lines_of(wide)[0]
        for frame in screen.frames()[:-1]:  # nothing was written between the frames
            assert ESCAPES.sub("", frame.split(END, 1)[1]).strip("\r\n") == "", frame
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert "Traceback" not in screen.text
