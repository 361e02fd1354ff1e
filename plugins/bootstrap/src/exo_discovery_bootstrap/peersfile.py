"""The peers file: one entry per line (``#`` comments), a JSON or YAML list, TOML
``peers = [...]``, or Prometheus ``file_sd`` target groups in JSON or YAML.

``file_sd`` is ``[{"targets": ["host:port", ...], "labels": {...}}]``, read by the core's
target-group reader (the one the http plugin uses): each target is any bootstrap entry, the
labels are metadata hints on its peers, and a ``peer_id`` label pins the targets' peer id.
A file is taken whole or not at all: if any entry is bad, the caller keeps the previous good
version, so one typo while editing never drops every other peer. Errors name the file and line.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exo_discovery_core.targetgroups import (
    PEER_ID_LABEL,
    TargetGroup,
    TargetGroupError,
    parse_target_groups,
)

from .entries import BadEntry, BootstrapEntry, parse_entry

MAX_FILE_BYTES = 1 << 20
MAX_ENTRIES = 100_000
FORMATS = ("lines", "json", "toml", "yaml")


class BadPeersFile(ValueError):
    """A peers file that cannot be used; one line per problem, each with its file and line."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__("; ".join(f"{path}{p}" for p in problems))
        self.path = path
        self.problems = problems


@dataclass(frozen=True)
class FileEntry:
    """One entry as the file holds it, not yet parsed; ``line`` is 0 when it cannot be told."""

    line: int
    text: Any
    group: TargetGroup | None = None  # the file_sd group it is a target of

    def parse(self) -> BootstrapEntry:
        """The entry, with its group's labels; :class:`BadEntry` if it or its labels are bad."""
        entry = parse_entry(self.text)
        if self.group is None:
            return entry
        try:
            pinned = self.group.peer_id
        except ValueError as exc:
            raise BadEntry(str(self.text), f"label {PEER_ID_LABEL!r}: {exc}") from None
        if pinned is not None and entry.peer_id not in (None, pinned):
            raise BadEntry(str(self.text), f"its /p2p/ id is not the group's {PEER_ID_LABEL!r}")
        return dataclasses.replace(
            entry, peer_id=entry.peer_id or pinned, labels=self.group.metadata
        )


def parse_peers_file(path: Path, content: str) -> list[BootstrapEntry]:
    """Every entry of the file, or :class:`BadPeersFile` listing every bad one."""
    entries: list[BootstrapEntry] = []
    problems: list[str] = []
    for item in file_entries(path, content):
        try:
            entries.append(item.parse())
        except BadEntry as exc:
            problems.append(f" line {item.line}: {exc}" if item.line else f": {exc}")
    if problems:
        raise BadPeersFile(path, problems)
    return entries


def file_format(path: Path, content: str) -> str:
    """One of :data:`FORMATS`: by extension, else by the first meaningful line."""
    suffix = path.suffix.lower()
    if suffix in (".json", ".toml", ".yaml", ".yml"):
        return "yaml" if suffix == ".yml" else suffix[1:]
    for raw in content.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            return "json"
        if line.startswith("peers") and line[5:].lstrip().startswith("="):
            return "toml"
        if line.startswith(("- ", "---")) or line == "-":
            return "yaml"
        return "lines"
    return "lines"


def file_entries(path: Path, content: str) -> list[FileEntry]:
    """The file's entries, not yet parsed.

    Raises :class:`BadPeersFile` only when the file as a whole is unusable (bad JSON, TOML or
    YAML, or not a list of peers or of target groups).
    """
    fmt = file_format(path, content)
    if fmt == "lines":
        pairs = []
        for number, raw in enumerate(content.splitlines(), start=1):
            text = raw.split("#", 1)[0].strip()  # '#' never occurs in a multiaddr or host:port
            if text:
                pairs.append(FileEntry(number, text))
        return pairs
    data = _load(path, fmt, content)
    if fmt == "toml":
        unknown = sorted(set(data) - {"peers"})
        if unknown:
            raise BadPeersFile(path, [f": unknown key(s) {', '.join(unknown)} (only 'peers')"])
        data = data.get("peers", [])
        if not isinstance(data, list):
            raise BadPeersFile(path, [": 'peers' must be a list of strings"])
    elif data is None:  # an empty YAML document
        data = []
    if not isinstance(data, list):
        raise BadPeersFile(path, [f": a {fmt.upper()} peers file must be a list"])
    if data and all(isinstance(item, dict) for item in data):
        return _group_entries(path, content, data)
    return [FileEntry(_line_of(content, item), item) for item in data]


def _load(path: Path, fmt: str, content: str) -> Any:
    if fmt == "json":
        try:
            return json.loads(content)
        except json.JSONDecodeError as exc:
            raise BadPeersFile(path, [f" line {exc.lineno}: not valid JSON: {exc.msg}"]) from None
    if fmt == "toml":
        import tomllib  # as yaml below: imported by the node that reads such a file

        try:
            return tomllib.loads(content)
        except tomllib.TOMLDecodeError as exc:
            raise BadPeersFile(path, [f": not valid TOML: {exc}"]) from None
    import yaml  # imported by the node that reads a YAML file, not by every start-up

    try:
        # no anchors or aliases: a handful of them can make a small file cost a lot to walk
        if any(
            isinstance(event, yaml.AliasEvent) for event in yaml.parse(content, yaml.SafeLoader)
        ):
            raise BadPeersFile(path, [": YAML aliases (*name) are not allowed in a peers file"])
        return yaml.safe_load(content)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise BadPeersFile(path, [f"{where}: not valid YAML: {problem}"]) from None


def _group_entries(path: Path, content: str, data: list[Any]) -> list[FileEntry]:
    """A ``file_sd`` list: every target of every group, each with its group."""
    try:
        groups = parse_target_groups(data, max_targets=MAX_ENTRIES)
    except TargetGroupError as exc:
        raise BadPeersFile(
            path, [f": {exc} (file_sd: [{{targets: [...], labels: {{...}}}}])"]
        ) from None
    return [
        FileEntry(_line_of(content, target), target, group)
        for group in groups
        for target in group.targets
    ]


def _line_of(content: str, item: Any) -> int:
    """The line a JSON/TOML/YAML string sits on, so an error can point at it."""
    if not isinstance(item, str):
        return 0
    quoted = (f'"{item}"', f"'{item}'", f"- {item}")
    for number, raw in enumerate(content.splitlines(), start=1):
        if any(q in raw for q in quoted):
            return number
    return 0
