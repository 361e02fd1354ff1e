"""Every ```python block of the README and of docs/ runs, as a user would paste it.

Each block is run alone in a fresh interpreter, in an empty directory, with no EXO_* or plugin
environment variables, and must exit 0 within its deadline. A block that cannot run on its own
does not belong in the docs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SNIPPET_DEADLINE = 60.0
_FENCE = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)
_OWN_ENV = ("EXO_", "HEADSCALE_", "TAILSCALE_")


def snippets() -> list[tuple[str, str]]:
    found = []
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 2  # the first line of code
            found.append((f"{document.relative_to(ROOT)}:{line}", match.group(1)))
    return found


def test_the_readme_and_the_guides_have_snippets() -> None:
    where = {name.split(":")[0] for name, _ in snippets()}
    assert {"README.md", "docs/embedding.md", "docs/plugin-guide.md"} <= where


@pytest.mark.parametrize(("where", "code"), snippets(), ids=[name for name, _ in snippets()])
def test_snippet_runs(where: str, code: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_ENV)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=SNIPPET_DEADLINE,
    )
    assert result.returncode == 0, f"{where} failed:\n{result.stdout}\n{result.stderr}"
