"""The bootstrap plugin: report the configured peers, every round, as the node should dial them.

Each round (``refresh_interval``) re-reads the peers file, looks every SRV name up again,
re-resolves every DNS name and yields the whole candidate set when it changed (the core's
``poll`` does the loop). With literal addresses only there is nothing to re-read: one round, and
the plugin sleeps until the node stops. Dialing, backoff and reconnecting to a peer that comes up later are the
node's job: this plugin only keeps reporting.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import logging
import math
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import anyio
from pydantic import AfterValidator, BaseModel, ConfigDict

from exo_discovery_core import (
    Address,
    CheckResult,
    DiscoveryContext,
    LogOnce,
    PeerCandidate,
    PeerId,
    PeerSets,
    hookimpl,
    option,
    poll,
)

from .entries import FORMATS, BadEntry, BootstrapEntry, parse_entry
from .peersfile import MAX_FILE_BYTES, BadPeersFile, FileEntry, file_entries, parse_peers_file
from .srv import SrvRecord, SrvResolver, system_srv_resolver

Resolver = Callable[[str, int, socket.AddressFamily], Awaitable[list[str]]]
"""``(name, port, family) -> IP strings``; raises ``OSError`` when the name does not resolve."""


def _valid_entry(text: str) -> str:
    """Fail config validation on a bad entry, so it is never silently dropped."""
    return parse_entry(text).text


class BootstrapConfig(BaseModel):
    """The ``[plugins.bootstrap]`` table."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built when a node uses it

    peers: tuple[Annotated[str, AfterValidator(_valid_entry)], ...] = option(
        (),
        help=f"Peers to join ({FORMATS}); comma-separated in the flag and env",
        flag="--bootstrap-peers",
        env="EXO_BOOTSTRAP_PEERS",
        needed=True,
    )
    peers_file: Path | None = option(
        None,
        help="File of peers (one per line with # comments, a JSON list, or TOML peers = [...]), "
        "re-read every round",
        flag="--bootstrap-peers-file",
        env="EXO_BOOTSTRAP_PEERS_FILE",
        needed=True,
    )
    refresh_interval: float = option(
        2.0,
        help="Seconds between rounds (file re-read, DNS names re-resolved; literal addresses "
        "only: one round)",
        flag="--bootstrap-refresh-interval",
        env="EXO_BOOTSTRAP_REFRESH_INTERVAL",
        gt=0,
        le=3600,
    )
    dns_timeout: float = option(
        5.0,
        help="Seconds one DNS name may take to resolve",
        gt=0,
        le=60,
    )

    @property
    def entries(self) -> list[BootstrapEntry]:
        return [parse_entry(text) for text in self.peers]


async def system_resolver(name: str, port: int, family: socket.AddressFamily) -> list[str]:
    """Resolve with the system resolver (``/etc/hosts``, DNS), TCP only, off the event loop."""
    infos = await anyio.getaddrinfo(name, port, family=family, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class BootstrapPlugin:
    """The plugin as an object, so tests can swap the resolvers.

    The entry point names :data:`plugin`, an instance with the system resolvers.
    """

    def __init__(
        self,
        resolver: Resolver | None = None,
        srv_resolver: SrvResolver | None = None,
    ) -> None:
        self.resolver = resolver or system_resolver
        self.srv_resolver = srv_resolver or system_srv_resolver

    @hookimpl
    def config_model(self) -> type[BaseModel]:
        """The ``[plugins.bootstrap]`` table: peers, peers_file, refresh_interval, dns_timeout."""
        return BootstrapConfig

    @hookimpl
    def discover_peers(self, context: DiscoveryContext[BootstrapConfig]) -> PeerSets | None:
        """Every configured peer, re-read and re-resolved each round; None when none configured."""
        config = context.config
        if not config.peers and config.peers_file is None:
            return None
        return self._run(context, config)

    async def _run(
        self, context: DiscoveryContext[BootstrapConfig], config: BootstrapConfig
    ) -> PeerSets:
        round_ = _Round(self, context, config)
        # literal addresses only: the first round's answer stands, and no round is due again
        interval = math.inf if round_.settled else config.refresh_interval
        async for peers in poll(
            round_.fetch,
            interval=interval,
            log=context.log,
            what="bootstrap peers",
            timeout=config.dns_timeout + 5.0,
        ):
            yield peers

    @hookimpl
    async def doctor(self, context: DiscoveryContext[BootstrapConfig]) -> list[CheckResult]:
        """Each entry parsed, each DNS and SRV name looked up, the peers file readable."""
        config = context.config
        if not config.peers and config.peers_file is None:
            return [
                CheckResult(
                    name="bootstrap: peers configured",
                    ok=True,
                    detail=f"none, so the plugin stays idle (to use it, {context.how_to_set()})",
                )
            ]
        checks = [await self._check_entry(context, text, "config") for text in config.peers]
        if config.peers_file is not None:
            checks += await self._check_file(context, config.peers_file)
        return checks

    async def _check_file(
        self, context: DiscoveryContext[BootstrapConfig], path: Path
    ) -> list[CheckResult]:
        name = f"bootstrap: peers_file {path}"
        try:
            content = (await anyio.Path(path).read_bytes()).decode("utf-8")
            texts = file_entries(path, content)
        except (OSError, UnicodeDecodeError, BadPeersFile) as exc:
            detail = f"cannot read: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
            return [
                CheckResult(
                    name=name,
                    ok=False,
                    detail=detail,
                    fix=f"create the file or {context.how_to_set('peers_file')}; it must be "
                    "UTF-8: one peer per line, a JSON or YAML list, TOML peers = [...], or "
                    "file_sd target groups",
                )
            ]
        checks = [CheckResult(name=name, ok=True, detail=f"readable, {len(texts)} entries")]
        for item in texts:
            where = f"{path} line {item.line}" if item.line else str(path)
            checks.append(await self._check_entry(context, item, where))
        return checks

    async def _check_entry(
        self, context: DiscoveryContext[BootstrapConfig], item: FileEntry | str, where: str
    ) -> CheckResult:
        text = item.text if isinstance(item, FileEntry) else item
        name = f"bootstrap peer {text!r} ({where})"
        try:
            entry = item.parse() if isinstance(item, FileEntry) else parse_entry(item)
        except BadEntry as exc:
            return CheckResult(name=name, ok=False, detail=str(exc), fix=exc.fix)
        if entry.peer_id is not None and entry.peer_id == context.node.peer_id:
            return CheckResult(name=name, ok=True, detail="this node's own peer id; skipped")
        if entry.is_srv:
            return await self._check_srv(context, name, entry)
        if not entry.is_name:
            detail = f"{entry.kind} address, port {entry.port}"
            return CheckResult(name=name, ok=True, detail=detail)
        try:
            with anyio.fail_after(context.config.dns_timeout):
                ips = await self.resolver(entry.host, entry.port, entry.family)
        except (OSError, TimeoutError) as exc:
            return CheckResult(
                name=name,
                ok=False,
                detail=f"{entry.host!r} does not resolve: {_why(exc)}",
                fix="check the name and this host's DNS (or /etc/hosts); until it resolves the "
                "plugin retries it every round and reports the other peers",
            )
        return CheckResult(
            name=name,
            ok=bool(ips),
            detail=f"{entry.host!r} resolves to {len(ips)} address(es): {', '.join(ips)}",
            fix="" if ips else f"give {entry.host!r} an A/AAAA record",
        )

    async def _check_srv(
        self, context: DiscoveryContext[BootstrapConfig], name: str, entry: BootstrapEntry
    ) -> CheckResult:
        try:
            with anyio.fail_after(context.config.dns_timeout):
                records = await self.srv_resolver(entry.host)
        except (OSError, TimeoutError) as exc:
            return CheckResult(
                name=name,
                ok=False,
                detail=f"SRV {entry.host!r}: {_why(exc)}",
                fix="check the name and this host's DNS servers (/etc/resolv.conf); until it "
                "answers the plugin asks again every round and reports the other peers",
            )
        shown = ", ".join(f"{host}:{port}" for host, port in records)
        return CheckResult(
            name=name,
            ok=bool(records),
            detail=f"SRV {entry.host!r}: {len(records)} record(s): {shown}",
            fix="" if records else f"give {entry.host!r} SRV records (priority weight port host)",
        )


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


@dataclass
class _Round:
    """What one run of ``discover_peers`` remembers between rounds (file, failures logged)."""

    plugin: BootstrapPlugin
    context: DiscoveryContext[BootstrapConfig]
    config: BootstrapConfig
    file_entries: list[BootstrapEntry] = field(default_factory=list)
    file_hash: bytes | None = None  # of the last version parsed, good or bad
    read_problem: str | None = None  # the file cannot be read now
    content_problem: str | None = None  # the version at file_hash is broken
    unresolved: dict[str, str] = field(default_factory=dict)
    said: LogOnce = field(init=False)

    def __post_init__(self) -> None:
        self.said = LogOnce(self.context.log)

    @property
    def log(self) -> logging.Logger:
        return self.context.log

    @property
    def settled(self) -> bool:
        """Nothing a round reads can change: no peers file, no name to resolve, and no entry
        at this node's own port that only the interfaces could tell from this node (loopback
        is always this node)."""
        if self.config.peers_file is not None:
            return False
        own_port = self.context.node.port
        for entry in self.config.entries:
            if entry.is_name or entry.is_srv:
                return False
            try:
                loopback = ipaddress.ip_address(entry.host).is_loopback
            except ValueError:
                return False
            if entry.port == own_port and not loopback:
                return False
        return True

    async def fetch(self) -> frozenset[PeerCandidate]:
        entries = self.config.entries + await self._file_entries()
        srv_names = {e.host for e in entries if e.is_srv}
        srv = await self._lookup_all(
            {_srv_label(n): functools.partial(self.plugin.srv_resolver, n) for n in srv_names}
        )
        entries = [t for e in entries for t in self._srv_targets(e, srv)]
        wanted = {(e.host, e.family): e.port for e in entries if e.is_name}
        resolved = await self._lookup_all(
            {
                _label(name, family): functools.partial(self.plugin.resolver, name, port, family)
                for (name, family), port in wanted.items()
            }
        )
        labels = {_srv_label(n) for n in srv_names} | {_label(n, f) for n, f in wanted}
        for gone in set(self.unresolved) - labels:  # removed from the file: no longer a problem
            del self.unresolved[gone]
            self.said.clear(("dns", gone))
        peers = self._candidates(entries, resolved)
        problems = [p for p in (self.read_problem, self.content_problem) if p] + [
            f"{name}: {why}" for name, why in sorted(self.unresolved.items())
        ]
        seen = f"{len(peers)} peer{'' if len(peers) == 1 else 's'} configured"
        self.context.report_health(not problems, "; ".join(problems) or seen)
        return peers

    # -- the file ---------------------------------------------------------------------------

    async def _file_entries(self) -> list[BootstrapEntry]:
        """The file's entries, or its last good ones while it is missing or broken.

        The file is read and hashed every round (it is small): mtime and size alone miss an
        edit of the same size within one clock tick.
        """
        path = self.config.peers_file
        if path is None:
            return []
        try:
            file = anyio.Path(path)
            too_big = (await file.stat()).st_size > MAX_FILE_BYTES
            data = b"" if too_big else await file.read_bytes()
        except OSError as exc:
            self._read_failed(f"cannot read {path}: {exc.strerror or exc}")
            return self.file_entries
        if too_big:
            self._read_failed(f"{path} is larger than {MAX_FILE_BYTES} bytes; not a peers file")
            return self.file_entries
        if self.read_problem is not None:
            self.said.clear("file")
            self.log.info("%s: readable again", path)
            self.read_problem = None
        digest = hashlib.sha256(data).digest()
        if digest == self.file_hash:
            return self.file_entries
        self.file_hash = digest  # a broken version is reported once, not every round
        try:
            entries = parse_peers_file(path, data.decode("utf-8"))
        except (UnicodeDecodeError, BadPeersFile) as exc:
            why = f"{path}: not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
            self.content_problem = why
            self._log_kept(why)
            return self.file_entries
        self.content_problem = None
        self.said.clear("file")
        self.log.info("%s: %d bootstrap peer(s)", path, len(entries))
        self.file_entries = entries
        return self.file_entries

    def _read_failed(self, why: str) -> None:
        self._log_kept(why)
        self.read_problem = why

    def _log_kept(self, why: str) -> None:
        self.said.log(
            logging.ERROR,
            "file",
            "bootstrap peers file: %s (keeping the previous %d peer(s) from it)",
            why,
            len(self.file_entries),
        )

    # -- DNS --------------------------------------------------------------------------------

    async def _lookup_all(
        self, lookups: Mapping[str, Callable[[], Awaitable[list[Any]]]]
    ) -> dict[str, list[Any]]:
        """Every lookup at once (``label: lookup``), each bounded by ``dns_timeout``; a
        failing one gives [] and is logged once until it answers again."""
        results: dict[str, list[Any]] = {}

        async def run(label: str, lookup: Callable[[], Awaitable[list[Any]]]) -> None:
            try:
                with anyio.fail_after(self.config.dns_timeout):
                    found = await lookup()
                if not found:
                    raise OSError(0, "no addresses")
            except (OSError, TimeoutError) as exc:
                why = self.unresolved[label] = _why(exc)
                self.said.warning(
                    ("dns", label), "cannot resolve %s: %s; retrying every round", label, why
                )
                results[label] = []
                return
            if self.unresolved.pop(label, None) is not None:
                self.said.clear(("dns", label))
                self.log.info("%s resolves again", label)
            results[label] = found

        async with anyio.create_task_group() as group:
            for label, lookup in lookups.items():
                group.start_soon(run, label, lookup)
        return results

    def _srv_targets(
        self, entry: BootstrapEntry, records: Mapping[str, list[SrvRecord]]
    ) -> list[BootstrapEntry]:
        """An SRV entry as one entry per record (host and port from it); others as they are."""
        if not entry.is_srv:
            return [entry]
        targets = []
        for host, port in records.get(_srv_label(entry.host), []):
            try:
                target = parse_entry(f"{host}:{port}")
            except BadEntry as exc:
                self._skip(entry, f"its SRV record {host}:{port} is not usable ({exc.reason})")
                continue
            targets.append(dataclasses.replace(target, text=entry.text, labels=entry.labels))
        return targets

    # -- candidates -------------------------------------------------------------------------

    def _candidates(
        self,
        entries: Sequence[BootstrapEntry],
        resolved: Mapping[str, list[str]],
    ) -> frozenset[PeerCandidate]:
        """One candidate per known peer id (all its addresses), else one per address."""
        node = self.context.node
        by_id: dict[PeerId, tuple[set[Address], set[BootstrapEntry]]] = {}
        by_addr: dict[Address, set[BootstrapEntry]] = {}
        for entry in entries:
            if entry.peer_id is not None and entry.peer_id == node.peer_id:
                self._skip(entry, "it is this node's own peer id")
                continue
            ips = (
                resolved.get(_label(entry.host, entry.family), [])
                if entry.is_name
                else [entry.host]
            )
            addresses = set()
            for text in ips:
                if entry.port == node.port and node.is_own(text):
                    self._skip(entry, f"{text} port {entry.port} is this node's own address")
                    continue
                addresses.add(Address(host=text, port=entry.port))
            if entry.peer_id is not None:
                addrs, texts = by_id.setdefault(entry.peer_id, (set(), set()))
                addrs |= addresses
                if addresses:
                    texts.add(entry)
            else:
                for address in addresses:
                    by_addr.setdefault(address, set()).add(entry)
        pinned = {a for addrs, _ in by_id.values() for a in addrs}
        peers = [
            _candidate(peer_id, addrs, texts) for peer_id, (addrs, texts) in by_id.items() if addrs
        ] + [
            _candidate(None, {address}, texts)
            for address, texts in by_addr.items()
            if address not in pinned  # the same address with a known id is the better candidate
        ]
        return frozenset(peers)

    def _skip(self, entry: BootstrapEntry, why: str) -> None:
        message = f"skipping bootstrap peer {entry.text!r}: {why}"
        self.said.info(message, "%s", message)


def _label(name: str, family: socket.AddressFamily) -> str:
    return repr(name) if family == socket.AF_UNSPEC else f"{name!r} ({family.name})"


def _srv_label(name: str) -> str:
    return f"{name!r} (SRV)"


def _candidate(
    peer_id: PeerId | None, addresses: set[Address], entries: set[BootstrapEntry]
) -> PeerCandidate:
    """The entries' texts under ``bootstrap``, and their file_sd labels, as the metadata."""
    labels = dict(
        label for entry in sorted(entries, key=lambda e: e.text) for label in entry.labels
    )
    labels["bootstrap"] = ", ".join(sorted({e.text for e in entries}))
    return PeerCandidate(
        peer_id=peer_id,
        addresses=tuple(sorted(addresses, key=lambda a: (a.ip is None, str(a)))),
        metadata=tuple(sorted(labels.items())),
    )


plugin = BootstrapPlugin()
"""What the entry point names: the plugin with the system resolvers."""

__all__ = [
    "BootstrapConfig",
    "BootstrapPlugin",
    "Resolver",
    "plugin",
    "system_resolver",
]
