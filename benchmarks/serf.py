"""hashicorp serf agents as benchmark members: the reference our nodes are measured against.

The agent is ``serf`` (``tests/support/gotools.py`` builds the pinned release with ``go install``
and caches it). Each agent binds 127.0.0.1 only (gossip and RPC), seals its gossip with a key
shared by the run (read from a config file, never argv), and joins the first agent with
``-retry-join``: the join runs after start-up, so the log streams live from the first line
instead of after a gated join. Its log lines become the members' common events:
``==> Log data will now stream in`` -> ``started``; ``serf: EventMemberJoin: NAME`` ->
``connected``; ``EventMemberFailed`` / ``EventMemberLeave`` -> ``disconnected``.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

from tests.support import gotools

from .common import Event, Fleet, Member, clean_env, free_port

_EVENT = re.compile(r"\[INFO\] serf: EventMember(Join|Failed|Leave): (\S+)")
_STARTED = "==> Log data will now stream in"
_KINDS = {"Join": "connected", "Failed": "disconnected", "Leave": "disconnected"}


class SerfMissing(Exception):
    """serf cannot be built here (no Go, no module proxy): the message says why."""


def binary() -> Path:
    """The cached serf binary, built on first use."""
    try:
        return gotools.ensure_go_binary("serf")
    except (gotools.GoBuildError, TimeoutError) as exc:
        raise SerfMissing(str(exc).splitlines()[0]) from None


def version() -> str:
    return gotools.TOOLS["serf"].version


def cluster_key() -> str:
    """A fresh gossip key for one run (32 random bytes, base64, as ``serf keygen`` makes)."""
    return base64.b64encode(os.urandom(32)).decode()


class SerfAgent(Member):
    """``serf agent`` on 127.0.0.1; ``peer_id`` is its node name."""

    def __init__(self, state_dir: Path, name: str, key: str, join: str | None = None) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = state_dir / "serf.json"
        config.write_text(json.dumps({"encrypt_key": key}))
        config.chmod(0o600)
        argv = [str(binary()), "agent", f"-node={name}", f"-config-file={config}",
                f"-bind=127.0.0.1:{self.port}", f"-advertise=127.0.0.1:{self.port}",
                f"-rpc-addr=127.0.0.1:{free_port()}", "-log-level=info"]  # fmt: skip
        if join:
            argv.append(f"-retry-join={join}")
        super().__init__(state_dir, name, argv, clean_env(), self._parse)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _parse(self, line: str) -> Event | None:
        if line.startswith(_STARTED):
            return {"event": "started", "peer_id": self.name}
        found = _EVENT.search(line)
        if found is None or found.group(2) == self.name:
            return None
        kind, peer = found.groups()
        return {"event": _KINDS[kind], "peer_id": peer, "reason": kind.lower()}


def start(fleet: Fleet, name: str, key: str, join: str | None = None) -> SerfAgent:
    """An agent under the fleet's directory, ended with the fleet."""
    agent = SerfAgent(fleet.root / name, name, key, join)
    fleet.adopt(agent)
    return agent
