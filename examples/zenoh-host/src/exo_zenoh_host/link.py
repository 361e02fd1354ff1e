"""The zenoh side: one peer-mode session, scouting off, connecting only where it is told.

eclipse-zenoh's Python API (1.10) cannot add a connect endpoint to an open session: ``Session``
has no ``config()`` (Rust's ``Session::config().insert_json5("connect/endpoints", ...)`` is
unstable there and not bound in Python), and a ``put`` to the admin space's
``@/<zid>/peer/config/connect/endpoints`` is ignored even with ``adminspace/permissions/write``.
What it offers instead is used here: the session is **reopened** with the new connect list. It
keeps its zenoh id (derived from the exo-discovery peer id, so it is the same across restarts
and every peer can tell whose link is whose) and its listening port; subscriptions are declared
again; links to the endpoints it already had come back by zenoh's own retry, which also
reconnects a peer that restarted. Publications made during the ~0.5 s of a reopen are lost
(zenoh's default, best-effort, reliability within a session only).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import zenoh

RETRY = {"period_init_ms": 200, "period_max_ms": 2000, "period_increase_factor": 2}
OPEN_TIMEOUT_MS = 1000  # open() waits this long for the connect endpoints, then retries behind


def zenoh_id(peer_id: str) -> str:
    """The zenoh id of the peer with exo-discovery ``peer_id``: 16 bytes of its hash, in hex."""
    digest = bytearray(hashlib.sha256(b"exo-zenoh-host/zid\0" + peer_id.encode()).digest()[:16])
    digest[0] |= 0x10  # no leading zero: zenoh prints ids without them
    return digest.hex()


def same_zid(a: object, b: str) -> bool:
    return int(str(a), 16) == int(b, 16)


def config(zid: str, listen: str, connect: Iterable[str], *, admin: bool = False) -> zenoh.Config:
    """Peer mode, scouting (multicast and gossip) off: zenoh meets only the endpoints given."""
    cfg = zenoh.Config()
    cfg.insert_json5("id", json.dumps(zid))
    cfg.insert_json5("mode", json.dumps("peer"))
    cfg.insert_json5("listen/endpoints", json.dumps([listen]))
    cfg.insert_json5("connect/endpoints", json.dumps(sorted(set(connect))))
    cfg.insert_json5("connect/timeout_ms", str(OPEN_TIMEOUT_MS))
    cfg.insert_json5("connect/exit_on_failure", "false")
    cfg.insert_json5("connect/retry", json.dumps(RETRY))
    cfg.insert_json5("scouting/multicast/enabled", "false")
    cfg.insert_json5("scouting/gossip/enabled", "false")
    cfg.insert_json5("adminspace/enabled", json.dumps(admin))
    return cfg


@dataclass
class ZenohLink:
    """The host's zenoh session and what it subscribed to; reopened when told to connect more.

    Each session declares, after its subscriptions, a liveliness token ``<alive>/<name>`` and
    watches the others' tokens. Declarations travel in order on a link, so a peer whose token is
    seen has its subscriptions known here too: a publication from now on reaches it. ``alive``
    holds those names; a token that goes (the peer's session closed, its link broke) leaves it.
    """

    zid: str
    host: str
    name: str
    alive_prefix: str
    on_sample: Callable[[str, bytes], None]
    on_change: Callable[[], None]
    subscriptions: list[str] = field(default_factory=list)
    port: int = 0
    connect: frozenset[str] = frozenset()
    alive: set[str] = field(default_factory=set)
    _session: zenoh.Session | None = None
    _declared: list[Any] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"tcp/{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen on a free port: zenoh picks it (port 0) and its admin space says which; then the
        session is opened again on that port without the admin space, before anyone knows it."""
        await anyio.to_thread.run_sync(self._learn_port)
        await self.reopen(self.connect)

    def _learn_port(self) -> None:
        if self.port:
            return
        probe = zenoh.open(config(self.zid, f"tcp/{self.host}:0", (), admin=True))
        try:
            answers = [reply.ok for reply in probe.get(f"@/{probe.zid()}/peer") if reply.ok]
            if not answers:
                raise RuntimeError("zenoh's admin space did not say where the session listens")
            locators = json.loads(answers[0].payload.to_string())["locators"]
            self.port = int(str(locators[0]).rsplit(":", 1)[1])
        finally:
            probe.close()  # type: ignore[no-untyped-call]  # the stub leaves it unannotated

    async def reopen(self, connect: Iterable[str]) -> None:
        """The session again, connecting to ``connect`` (zenoh cannot add to an open one)."""
        wanted = frozenset(connect)
        await anyio.to_thread.run_sync(self._reopen, wanted)

    def _reopen(self, connect: frozenset[str]) -> None:
        with self._lock:
            self._close()
            session = zenoh.open(config(self.zid, self.endpoint, connect))
            self.alive = set()
            self._declared = [
                session.info.declare_transport_events_listener(
                    lambda _event: self.on_change(), history=False
                )
            ]
            for key in self.subscriptions:
                self._declared.append(
                    session.declare_subscriber(
                        key,
                        lambda sample: self.on_sample(
                            str(sample.key_expr), sample.payload.to_bytes()
                        ),
                    )
                )
            liveliness = session.liveliness()
            self._declared.append(liveliness.declare_token(f"{self.alive_prefix}/{self.name}"))
            self._declared.append(
                liveliness.declare_subscriber(
                    f"{self.alive_prefix}/*", self._on_token, history=True
                )
            )
            self._session, self.connect = session, connect

    def _on_token(self, sample: zenoh.Sample) -> None:
        name = str(sample.key_expr).rsplit("/", 1)[-1]
        if name != self.name:
            if sample.kind == zenoh.SampleKind.PUT:
                self.alive.add(name)
            else:
                self.alive.discard(name)
            self.on_change()

    def linked(self) -> set[str]:
        """The zenoh ids this session has a transport to now."""
        session = self._session
        return {str(zid) for zid in session.info.peers_zid()} if session is not None else set()

    async def put(self, key: str, payload: bytes) -> None:
        await anyio.to_thread.run_sync(self._put, key, payload)

    def _put(self, key: str, payload: bytes) -> None:
        with self._lock:
            assert self._session is not None, "the session is not open"
            self._session.put(key, payload)

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._close_locked)

    def _close_locked(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        for declared in self._declared:
            declared.undeclare()
        self._declared = []
        if self._session is not None:
            self._session.close()  # type: ignore[no-untyped-call]
            self._session = None
