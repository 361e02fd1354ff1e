"""The peers file: one entry per line (``#`` comments), a JSON list, or TOML ``peers = [...]``.

A file is taken whole or not at all: if any entry is bad, the caller keeps the previous good
version, so one typo while editing never drops every other peer. Errors name the file and line.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from .entries import BadEntry, BootstrapEntry, parse_entry

MAX_FILE_BYTES = 1 << 20


class BadPeersFile(ValueError):
    """A peers file that cannot be used; one line per problem, each with its file and line."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__("; ".join(f"{path}{p}" for p in problems))
        self.path = path
        self.problems = problems


def parse_peers_file(path: Path, content: str) -> list[BootstrapEntry]:
    """Every entry of the file, or :class:`BadPeersFile` listing every bad one."""
    texts = entry_texts(path, content)
    entries: list[BootstrapEntry] = []
    problems: list[str] = []
    for line, text in texts:
        try:
            entries.append(parse_entry(text))
        except BadEntry as exc:
            problems.append(f" line {line}: {exc}" if line else f": {exc}")
    if problems:
        raise BadPeersFile(path, problems)
    return entries


def file_format(path: Path, content: str) -> str:
    """``json``, ``toml`` or ``lines``: by extension, else by the first meaningful line."""
    suffix = path.suffix.lower()
    if suffix in (".json", ".toml"):
        return suffix[1:]
    for raw in content.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            return "json"
        if line.startswith("peers") and line[5:].lstrip().startswith("="):
            return "toml"
        return "lines"
    return "lines"


def entry_texts(path: Path, content: str) -> list[tuple[int, Any]]:
    """(line number, raw entry) pairs, not yet parsed; line 0 when it cannot be told.

    Raises :class:`BadPeersFile` only when the file as a whole is unreadable (bad JSON/TOML).
    """
    fmt = file_format(path, content)
    if fmt == "lines":
        pairs = []
        for number, raw in enumerate(content.splitlines(), start=1):
            text = raw.split("#", 1)[0].strip()  # '#' never occurs in a multiaddr or host:port
            if text:
                pairs.append((number, text))
        return pairs
    if fmt == "json":
        try:
            data: Any = json.loads(content)
        except json.JSONDecodeError as exc:
            raise BadPeersFile(path, [f" line {exc.lineno}: not valid JSON: {exc.msg}"]) from None
        if not isinstance(data, list):
            raise BadPeersFile(path, [": a JSON peers file must be a list of strings"])
    else:
        try:
            table = tomllib.loads(content)
        except tomllib.TOMLDecodeError as exc:
            raise BadPeersFile(path, [f": not valid TOML: {exc}"]) from None
        unknown = sorted(set(table) - {"peers"})
        if unknown:
            raise BadPeersFile(path, [f": unknown key(s) {', '.join(unknown)} (only 'peers')"])
        data = table.get("peers", [])
        if not isinstance(data, list):
            raise BadPeersFile(path, [": 'peers' must be a list of strings"])
    return [(_line_of(content, item), item) for item in data]


def _line_of(content: str, item: Any) -> int:
    """The line a JSON/TOML string sits on, so an error can point at it."""
    if not isinstance(item, str):
        return 0
    for number, raw in enumerate(content.splitlines(), start=1):
        if f'"{item}"' in raw or f"'{item}'" in raw:
            return number
    return 0
