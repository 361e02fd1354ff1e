"""``exo-zenoh-host``: a zenoh peer whose peers come from exo-discovery, one JSON line per event.

The host listens on a zenoh TCP endpoint and publishes it in its exo-discovery record
(``meta zenoh=tcp/HOST:PORT``). When exo-discovery reports a verified peer with such an endpoint,
the host connects its zenoh session there (by reopening it: see :mod:`.link`). zenoh's own
scouting (multicast and gossip) is off, so discovery is exo-discovery's alone.

stdin takes commands, one a line: ``publish TEXT`` puts TEXT on ``<prefix>/<namespace>/msg/<peer id>``.
stdout says, as JSON lines: ``ready``, ``zenoh_peers`` (the discovered peers whose zenoh
session this one sees now: a publication reaches them), ``received``, ``peer_gone``
(exo-discovery lost a peer that had a zenoh endpoint) and ``stopped``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from exo_discovery_core import Trigger
from exo_discovery_core.host import ConfigError, Node, NodeEvent, PeerView
from exo_discovery_core.identity import Identity

from .link import ZenohLink, same_zid, zenoh_id

META_KEY = "zenoh"
INBOUND_GRACE = 1.0  # seconds the higher peer id waits for the lower one to connect to it
DEBOUNCE = 0.2  # seconds of discovery changes gathered into one reopen
_print_lock = threading.Lock()


def say(event: str, **fields: Any) -> None:
    """One JSON line on stdout (from any thread: zenoh calls back on its own)."""
    with _print_lock:
        sys.stdout.write(json.dumps({"event": event, **fields}, separators=(",", ":")) + "\n")
        sys.stdout.flush()


def endpoint_of(peer: PeerView) -> str | None:
    """The zenoh endpoint a peer advertises in its signed record, if it is ``tcp/IP:PORT`` at an
    address discovery verified for that peer: a peer may not point us at a third party."""
    value = (peer.meta or {}).get(META_KEY)
    if value is None or not value.startswith("tcp/"):
        return None
    host, _, port = value.removeprefix("tcp/").rpartition(":")
    hosts = {a.address.host for a in peer.addresses}
    if not port.isdigit() or not 0 < int(port) < 65536 or host.strip("[]") not in hosts:
        return None
    return value


@dataclass
class ZenohHost:
    node: Node
    link: ZenohLink
    prefix: str
    wake: Trigger = field(default_factory=Trigger)
    endpoints: dict[str, str] = field(default_factory=dict)  # peer id -> its zenoh endpoint
    first_seen: dict[str, float] = field(default_factory=dict)
    reported: frozenset[str] = frozenset()

    @property
    def me(self) -> str:
        return str(self.node.peer_id)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._follow_events)
            tg.start_soon(self._reconcile)
            tg.start_soon(self._commands, tg)
            say(
                "ready",
                peer_id=self.me,
                zenoh_id=self.link.zid,
                endpoint=self.link.endpoint,
                port=self.node.port,
            )

    async def _follow_events(self) -> None:
        async with self.node.events(replay=True) as events:
            async for event in events:
                self._on_event(event)

    def _on_event(self, event: NodeEvent) -> None:
        """A peer that had a zenoh endpoint and is no longer connected is gone."""
        if (
            event.event in ("disconnected", "peer_lost")
            and event.peer_id in self.endpoints
            and not any(
                str(peer.peer_id) == event.peer_id and peer.state == "connected"
                for peer in self.node.peers()
            )
        ):
            self.endpoints.pop(event.peer_id)
            self.first_seen.pop(event.peer_id, None)
            say("peer_gone", peer_id=event.peer_id, reason=event.reason or event.event)
        self.wake.set()

    async def _reconcile(self) -> None:
        """Connect zenoh to every verified peer's endpoint: reopen when one is not linked yet."""
        while True:
            await self.wake.wait(timeout=INBOUND_GRACE / 2)
            await anyio.sleep(DEBOUNCE)
            now = anyio.current_time()
            for peer in self.node.peers():
                peer_id = str(peer.peer_id) if peer.peer_id else None
                endpoint = endpoint_of(peer)
                if peer_id and endpoint and peer_id != self.me:
                    if self.endpoints.get(peer_id) != endpoint:
                        self.first_seen[peer_id] = now
                    self.endpoints[peer_id] = endpoint
            self._report_links()
            linked = self.link.linked()
            missing = [
                pid
                for pid, ep in self.endpoints.items()
                if ep not in self.link.connect
                and not any(same_zid(z, zenoh_id(pid)) for z in linked)
                # the lower peer id connects at once; the other waits for it a moment
                and (self.me < pid or now - self.first_seen.get(pid, now) >= INBOUND_GRACE)
            ]
            if missing:
                await self.link.reopen(set(self.link.connect) | set(self.endpoints.values()))
                self.wake.set()

    def _report_links(self) -> None:
        """The discovered peers whose zenoh session this one sees (by their liveliness token)."""
        peers = frozenset(self.endpoints) & frozenset(self.link.alive)
        if peers != self.reported:
            self.reported = peers
            say("zenoh_peers", peers=sorted(peers))

    async def _commands(self, tg: TaskGroup) -> None:
        """stdin, a line at a time (read in a thread the node never waits for); EOF stops."""
        while line := await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True):
            command, _, text = line.strip().partition(" ")
            if command == "publish":
                await self.link.put(f"{self.prefix}/msg/{self.me}", text.encode())
            elif command == "quit":
                break
        tg.cancel_scope.cancel()


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="exo-zenoh-host", description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default="exo", help="exo-discovery namespace (cluster name)")
    parser.add_argument(
        "--bootstrap-peers", default="", help="host:port,... of other hosts' discovery"
    )
    parser.add_argument(
        "--plugins", default=None, help="only these exo-discovery plugins (default: all)"
    )
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="where the key lives (default: a temp dir)"
    )
    parser.add_argument(
        "--listen-host", default="127.0.0.1", help="address for discovery and zenoh"
    )
    parser.add_argument("--port", type=int, default=0, help="exo-discovery's TCP port (0: any)")
    parser.add_argument("--zenoh-port", type=int, default=0, help="zenoh's TCP port (0: any)")
    parser.add_argument(
        "--prefix", default="exo-zenoh-host", help="zenoh key prefix of publications"
    )
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="exo-zenoh-host-"))
    identity = Identity.load_or_create(state_dir)
    prefix = f"{args.prefix}/{args.namespace}"
    wake = Trigger()
    link = ZenohLink(
        zenoh_id(str(identity.peer_id)),
        args.listen_host,
        str(identity.peer_id),
        f"{prefix}/alive",
        on_sample=lambda key, payload: say(
            "received",
            key=key,
            sender=key.rsplit("/", 1)[-1],
            text=payload.decode(errors="replace"),
        ),
        on_change=wake.set,
        subscriptions=[f"{prefix}/msg/**"],
        port=args.zenoh_port,
    )
    await link.start()
    try:
        plugins: dict[str, Any] = {}
        if args.plugins is not None:
            plugins["enabled"] = [p.strip() for p in args.plugins.split(",") if p.strip()]
        if args.bootstrap_peers:
            plugins["bootstrap"] = {"peers": [p.strip() for p in args.bootstrap_peers.split(",")]}
        node = Node.from_settings(
            use_file=True,
            use_env=True,
            namespace=args.namespace,
            listen_host=args.listen_host,
            port=args.port,
            state_dir=state_dir,
            identity=identity,
            plugins=plugins,
            meta={META_KEY: link.endpoint},
        )
        host = ZenohHost(node, link, prefix, wake)
        async with node:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with anyio.create_task_group() as tg:

                    async def stop_on_signal() -> None:
                        async for _ in signals:
                            tg.cancel_scope.cancel()

                    tg.start_soon(stop_on_signal)
                    await host.run()
                    tg.cancel_scope.cancel()
        say("stopped", peer_id=str(identity.peer_id))
    finally:
        await link.close()


def main(argv: Sequence[str] | None = None) -> None:
    try:
        anyio.run(serve, parse(argv))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
