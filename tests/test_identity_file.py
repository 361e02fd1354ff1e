"""The key file, with real ``exo-discovery`` processes and real faults: a process killed at the
key write (strace's fault injection: SIGKILL at the write syscall) and a write that stops
half-way (``prlimit --fsize=16``: the file-size limit cuts the 32-byte key after 16 bytes, as a
full disk would). Either leaves the old key or a clear error, never a broken key; and a broken
key file is one line naming the file and the fix, never a traceback, never silently replaced.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.support.nodes import NodeProcess

KEY = "identity.key"


def cli(*args: str, prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # the key write is the first write
    env.pop("EXO_DISCOVERY_CONFIG", None)
    return subprocess.run(
        [*prefix, sys.executable, "-m", "exo_discovery_core", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def killed_at_first_write() -> list[str]:
    """SIGKILL the process at its first write(2): here, the key's (no -f: the main process only)."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (it injects the kill)")
    return [
        "strace",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        "trace=write",
        "-e",
        "inject=write:signal=KILL:when=1",
    ]


CUT_HALF_WAY = ["prlimit", "--fsize=16"]


def one_clear_line(result: subprocess.CompletedProcess[str], key_file: Path) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(key_file) in lines[0]
    return lines[0]


def test_a_first_key_write_killed_or_cut_half_way_leaves_no_broken_key(tmp_path: Path) -> None:
    killed, cut = tmp_path / "killed", tmp_path / "cut"
    result = cli("id", "--state-dir", str(killed), prefix=killed_at_first_write())
    assert result.returncode != 0  # it was killed
    assert not (killed / KEY).exists(), "a killed write left a key file"
    line = one_clear_line(cli("id", "--state-dir", str(cut), prefix=CUT_HALF_WAY), cut / KEY)
    assert "cannot be written" in line
    assert not (cut / KEY).exists(), "a write cut half-way left a key file"
    for state_dir in (killed, cut):  # the next start makes a good key and runs
        made = cli("id", "--state-dir", str(state_dir))
        assert made.returncode == 0, made.stderr
        assert (state_dir / KEY).stat().st_size == 32
        node = NodeProcess(state_dir, ["--listen-host", "127.0.0.1", "--port", "0"])
        try:
            assert node.peer_id == made.stdout.strip()
        finally:
            node.stop()


def test_a_regenerate_killed_or_cut_half_way_leaves_the_old_key(tmp_path: Path) -> None:
    first = cli("id", "--state-dir", str(tmp_path))
    old_id, old_key = first.stdout.strip(), (tmp_path / KEY).read_bytes()
    killed = cli("id", "--regenerate", "--state-dir", str(tmp_path), prefix=killed_at_first_write())
    assert killed.returncode != 0
    assert (tmp_path / KEY).read_bytes() == old_key
    cut = cli("id", "--regenerate", "--state-dir", str(tmp_path), prefix=CUT_HALF_WAY)
    assert "the old key is unchanged" in one_clear_line(cut, tmp_path / KEY)
    assert (tmp_path / KEY).read_bytes() == old_key
    assert cli("id", "--state-dir", str(tmp_path)).stdout.strip() == old_id


@pytest.mark.parametrize("content", [b"", b"\x00" * 16, b"x" * 33])
def test_a_broken_key_is_one_line_naming_the_file_and_the_fix(
    tmp_path: Path, content: bytes
) -> None:
    key_file = tmp_path / KEY
    key_file.write_bytes(content)
    for args in (["id"], ["run", "--listen-host", "127.0.0.1", "--port", "0"], ["doctor"]):
        result = cli(*args, "--state-dir", str(tmp_path))
        if args == ["doctor"]:
            assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
            assert f"✗ identity: key file {key_file}" in result.stdout
            assert "exo-discovery id --regenerate" in result.stdout
            continue
        line = one_clear_line(result, key_file)
        assert "exo-discovery id --regenerate" in line
        assert key_file.read_bytes() == content, "a broken key was silently replaced"


def test_regenerate_says_what_the_old_id_was_and_keeps_the_old_key(tmp_path: Path) -> None:
    old_id = cli("id", "--state-dir", str(tmp_path)).stdout.strip()
    old_key = (tmp_path / KEY).read_bytes()
    result = cli("id", "--regenerate", "--state-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    new_id = result.stdout.strip()
    assert new_id != old_id and new_id.startswith("12D3KooW")
    assert f"old key: peer id {old_id}" in result.stderr
    assert (tmp_path / (KEY + ".old")).read_bytes() == old_key
    assert (tmp_path / KEY).stat().st_mode & 0o777 == 0o600
    assert cli("id", "--state-dir", str(tmp_path)).stdout.strip() == new_id
    (tmp_path / KEY).write_bytes(b"")
    broken = cli("id", "--regenerate", "--state-dir", str(tmp_path))
    assert "old key: unreadable (is empty (0 bytes)" in broken.stderr
