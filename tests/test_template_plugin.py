"""The plugin template, copied and renamed as the guide says, installs and passes its own tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_template_copied_renamed_installed_and_tested(tmp_path: Path) -> None:
    copy = tmp_path / "exo-discovery-lanparty"
    shutil.copytree(
        ROOT / "templates" / "plugin",
        copy,
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache"),
    )
    # the rename, exactly as the template's README and the guide give it
    rename = (
        "grep -rl template . | xargs sed -i 's/exo_discovery_template/exo_discovery_lanparty/g; "
        "s/exo-discovery-template/exo-discovery-lanparty/g; s/EXO_TEMPLATE/EXO_LANPARTY/g; "
        "s/template/lanparty/g' && mv src/exo_discovery_template src/exo_discovery_lanparty"
    )
    subprocess.run(["bash", "-c", rename], cwd=copy, check=True)
    assert not list(copy.rglob("*template*"))

    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(copy),
        ],
        check=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    tested = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(copy / "tests")],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "4 passed" in tested.stdout

    listed = subprocess.run(
        [sys.executable, "-m", "exo_discovery_core", "plugins", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    plugin = next(p for p in json.loads(listed.stdout) if p["name"] == "lanparty")
    assert plugin["distribution"] == "exo-discovery-lanparty" and plugin["error"] is None
