"""``./dev run`` on a fresh machine says what it is doing while it installs (issue 13): the
README's first command, run as a new user would, into a virtual environment of the test's own."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dev_run_says_each_step_on_stderr_and_then_runs_the_node_command(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXO_", "VIRTUAL_ENV"))}
    env["EXO_DISCOVERY_VENV"] = str(venv)
    proc = subprocess.run(
        [str(ROOT / "dev"), "run", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = [line for line in proc.stderr.splitlines() if line.startswith("== ")]
    assert steps[0] == f"== creating the virtual environment {venv}", steps
    assert any(s.startswith("== installing exo-discovery-core and the plugins") for s in steps)
    assert any(s.startswith("== installed: exo-discovery ") for s in steps), steps
    assert (
        steps[-1]
        == "== starting: exo-discovery run --help (Ctrl-C to stop; -v for log lines on stderr)"
    )
    assert "Usage:" in proc.stdout and "Traceback" not in proc.stderr
    # the node's own output stays on stdout, for `./dev run --json | jq`
    assert "== " not in proc.stdout
