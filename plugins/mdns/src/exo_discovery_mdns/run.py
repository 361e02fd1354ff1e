"""One run of the mdns plugin's ``discover_peers``: the zeroconf instance, our registration, the
peers seen.

One zeroconf instance per ``discover_peers`` call (made there, closed in its ``finally``, with the
goodbye sent even though the node cancels the task). Every few seconds the host's addresses are
re-read; a change rebinds zeroconf to the new interface set and re-announces the new addresses,
so a node started before its Wi-Fi came up, or whose VPN came up later, is still found.

Its own module, imported when the plugin starts: a node without mdns configured, and
``exo-discovery plugins``, never import zeroconf.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence

import anyio
from zeroconf import IPVersion, NonUniqueNameException, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from exo_discovery_core import DiscoveryContext, LogOnce, PeerCandidate
from exo_discovery_core.text import logger

from .config import MdnsConfig
from .interfaces import Snapshot, snapshot
from .records import (
    Rejected,
    candidate_from_service,
    default_instance_name,
    server_name,
    txt_properties,
)

RESOLVE_TIMEOUT_MS = 3000
GOODBYE_BUDGET_S = 2.0
REGISTER_ATTEMPTS = 10


class MdnsRun:
    """One run of ``discover_peers``: the zeroconf instance, our registration, the peers seen."""

    def __init__(
        self,
        context: DiscoveryContext[MdnsConfig],
        interfaces: Callable[[str | Sequence[str], str], Snapshot] | None = None,
    ) -> None:
        """``interfaces`` reads this host's interfaces (a test on loopback gives its own view);
        by default those of the node's interfaces (``[node] interfaces``) the selection names."""
        self.context = context
        self.interfaces = interfaces or functools.partial(
            snapshot, node_interfaces=context.node.interfaces
        )
        self.config = context.config
        self.log = context.log
        logger("zeroconf")  # zeroconf's own records quote names from the LAN: cleaned as ours
        self.type = self.config.service_type
        self.azc: AsyncZeroconf | None = None
        self.browser: AsyncServiceBrowser | None = None
        self.info: AsyncServiceInfo | None = None
        self.snap: Snapshot | None = None
        self.peers: dict[str, PeerCandidate] = {}
        self.changed = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._said = LogOnce(context.log)
        self._registering: asyncio.Task[None] | None = None
        self._renamed: str | None = None  # the instance we were renamed to, once logged
        self.foreign: dict[str, str] = {}  # service name -> namespace, of other clusters' nodes

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> AsyncGenerator[frozenset[PeerCandidate], None]:
        """The peer sets, one whenever they change (the empty set first)."""
        changed = self.changed
        try:
            await self._start(self.interfaces(self.config.interfaces, self.config.ip_version))
            last: frozenset[PeerCandidate] = frozenset()
            yield last
            next_check = time.monotonic() + self.config.interface_check_interval
            while True:
                with anyio.move_on_after(max(0.0, next_check - time.monotonic())):
                    await changed.wait()
                if time.monotonic() >= next_check:
                    await self._check_interfaces()
                    next_check = time.monotonic() + self.config.interface_check_interval
                changed.clear()
                self._raise_registration_error()
                current = frozenset(self.peers.values())
                if current != last:
                    last = current
                    yield current
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(GOODBYE_BUDGET_S):
                await self._stop()

    async def _start(self, snap: Snapshot) -> None:
        self.snap = snap
        self._report_unmatched(snap)
        self.azc = AsyncZeroconf(interfaces=list(snap.bind), ip_version=self.config.zc_ip_version)
        # Browse first, register in the background: probing our name takes ~1 s, and the peers
        # answer our query at once, so the node can dial them before it is itself announced.
        self._browse()
        if not self.config.browse_only:
            task = asyncio.get_running_loop().create_task(self._register())
            task.add_done_callback(lambda _: self._notify())
            self._registering = task

    def _raise_registration_error(self) -> None:
        """A registration that failed for good fails the plugin (the node restarts it)."""
        task = self._registering
        if task is None or not task.done() or task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._registering = None
            raise error

    def _browse(self) -> None:
        """A new browser queries at once: how peers on a just-joined interface are found."""
        assert self.azc is not None
        self.browser = AsyncServiceBrowser(
            self.azc.zeroconf, [self.type], handlers=[self._on_change]
        )

    async def _stop(self) -> None:
        """Goodbye first (peers drop us at once), then the browser and the sockets."""
        azc, self.azc = self.azc, None
        registering, self._registering = self._registering, None
        for task in [*self._tasks.values(), *([registering] if registering else [])]:
            task.cancel()
        if registering is not None:
            await asyncio.wait([registering])
        if azc is None:
            return
        try:
            if self.info is not None:
                info, self.info = self.info, None
                sent = await azc.async_unregister_service(info)
                await sent  # the first await queues the goodbyes, this one waits till they are out
            if self.browser is not None:
                await self.browser.async_cancel()
        finally:
            self.browser = None
            await azc.async_close()

    # -- our own registration ------------------------------------------------------------------

    def _service_info(self, instance: str, snap: Snapshot) -> AsyncServiceInfo:
        node = self.context.node
        ttl = self.config.record_ttl
        port, addresses = node.port, list(snap.announce)
        explicit = [a for a in node.listen_addresses if a.ip is not None]
        if node.advertised_explicitly and explicit:  # [node] advertise_addresses: as given
            port, addresses = explicit[0].port, [a.host for a in explicit]
        return AsyncServiceInfo(
            self.type,
            f"{instance}.{self.type}",
            port=port,
            properties=txt_properties(node.peer_id, node.namespace, node.cluster_key_fingerprints),
            server=server_name(instance),
            host_ttl=ttl,
            other_ttl=ttl,
            parsed_addresses=addresses,
        )

    async def _register(self) -> None:
        """Register; a name another node holds gets ``-2``, ``-3``... and with it a host name of
        its own (``twin-2.local.``), never an error. zeroconf's own renaming is not used: it
        renames the instance but keeps the host name, so two nodes would announce their
        addresses under one host name and peers would record both nodes' addresses for each."""
        assert self.azc is not None and self.snap is not None
        snap = self.snap
        base = self.config.instance_name or default_instance_name(self.context.node.peer_id)
        for attempt in range(REGISTER_ATTEMPTS):
            instance = base if attempt == 0 else f"{base}-{attempt + 1}"
            info = self._service_info(instance, snap)
            try:
                await self.azc.async_register_service(info, allow_name_change=False)
            except NonUniqueNameException:
                continue
            self.info = info
            if instance != base and self._renamed != instance:  # said once, not per re-register
                self.log.warning(
                    "mDNS instance name %r is taken on this LAN by another node; announced as "
                    "%r with host name %s (give each node its own --mdns-instance-name)",
                    base,
                    instance,
                    info.server,
                )
            self._renamed = instance if instance != base else None
            self.log.info("announced %s on %s", info.name, ", ".join(snap.announce) or "no address")
            if self.snap is not None and self.snap.announce != snap.announce:
                await self._update_addresses(self.snap)  # they changed while we were probing
            return
        raise NonUniqueNameException(
            f"no free mDNS name for {base!r} ({REGISTER_ATTEMPTS} tried); set another "
            "--mdns-instance-name"
        )

    async def _check_interfaces(self) -> None:
        """Follow interfaces that came or went: rebind zeroconf, re-announce our addresses."""
        assert self.azc is not None
        new = self.interfaces(self.config.interfaces, self.config.ip_version)
        old = self.snap
        if new == old:
            return
        assert old is not None
        self.log.info(
            "interfaces changed: announce %s -> %s", list(old.announce), list(new.announce)
        )
        self._report_unmatched(new)
        self.snap = new
        if new.bind != old.bind:
            update = getattr(self.azc, "async_update_interfaces", None)
            if update is None:
                await self._restart(new)
                return
            try:
                await update(list(new.bind))  # zeroconf >= 0.148 rebinds in place
            except OSError as exc:
                self.log.warning("rebinding mDNS sockets failed (will retry): %s", exc)
                self.snap = old
                return
            if self.browser is not None:
                await self.browser.async_cancel()
            self._browse()
        if new.announce != old.announce:
            await self._update_addresses(new)

    async def _update_addresses(self, snap: Snapshot) -> None:
        if self.info is None or self.azc is None:
            return  # not registered (yet): the registration reads the current snapshot
        info = self._service_info(self.info.name.removesuffix(f".{self.type}"), snap)
        self.info = info
        await self.azc.async_update_service(info)

    async def _restart(self, snap: Snapshot) -> None:
        """Older zeroconf binds its sockets once: a new instance is the only way to a new
        interface. The goodbye of the old one is refreshed by the new announcement at once."""
        await self._stop()
        await self._start(snap)

    def _report_unmatched(self, snap: Snapshot) -> None:
        if snap.unmatched:
            message = f"configured interfaces not found (now): {', '.join(snap.unmatched)}"
            self.log.warning("%s", message)
            self.context.report_health(False, message)
        elif not snap.announce and not self.config.browse_only:
            self.context.report_health(False, "no usable address to announce (not on a network?)")
        else:
            seen = f"announcing {', '.join(snap.announce) or 'nothing'}"
            self.context.report_health(True, seen + self._foreign_note())

    def _foreign_note(self) -> str:
        """``; ignoring 2 nodes of other namespaces (lab)``, or nothing."""
        if not self.foreign:
            return ""
        count, names = len(self.foreign), ", ".join(sorted(set(self.foreign.values())))
        return f"; ignoring {count} node{'s' if count > 1 else ''} of other namespaces ({names})"

    def _foreign_changed(self, name: str, namespace: str | None) -> None:
        """Count a node of another namespace (or one that left or joined ours)."""
        before = dict(self.foreign)
        if namespace is None:
            self.foreign.pop(name, None)
        else:
            self.foreign[name] = namespace
            self._said.info(  # once per namespace, not per node
                ("namespace", namespace),
                "mDNS: ignoring nodes of namespace %r on this LAN (this node's is %r; "
                "--namespace or EXO_DISCOVERY_NAMESPACE joins them)",
                namespace,
                self.context.node.namespace,
            )
        if self.foreign != before and self.snap is not None:
            self._report_unmatched(self.snap)

    # -- browsing ------------------------------------------------------------------------------

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """Zeroconf's browser callback (on the event loop): resolve added/updated, drop removed."""
        pending = self._tasks.pop(name, None)
        if pending is not None:
            pending.cancel()  # a newer state of this service wins
        if state_change is ServiceStateChange.Removed:
            self._foreign_changed(name, None)
            if self.peers.pop(name, None) is not None:
                self.log.debug("mDNS service %s left", name)
                self._notify()
            return
        task = asyncio.get_running_loop().create_task(self._resolve(zeroconf, name))
        self._tasks[name] = task
        task.add_done_callback(
            lambda t: self._tasks.pop(name, None) if self._tasks.get(name) is t else None
        )

    async def _resolve(self, zeroconf: Zeroconf, name: str) -> None:
        info = AsyncServiceInfo(self.type, name)
        if not await info.async_request(zeroconf, RESOLVE_TIMEOUT_MS):
            self.log.debug("mDNS service %s did not resolve", name)
            return
        result = candidate_from_service(
            name=name,
            properties=info.properties or {},
            addresses=info.parsed_scoped_addresses(IPVersion.All),
            port=info.port,
            own_id=self.context.node.peer_id,
            namespace=self.context.node.namespace,
            ip_version=self.config.ip_version,
            server=info.server,
            key_fingerprints=self.context.node.cluster_key_fingerprints,
        )
        self._foreign_changed(name, result.namespace if isinstance(result, Rejected) else None)
        if isinstance(result, Rejected):
            self._rejected(name, result)
            if self.peers.pop(name, None) is not None:
                self._notify()
            return
        if self.peers.get(name) != result:
            self.peers[name] = result
            self._notify()

    def _notify(self) -> None:
        self.changed.set()

    def _rejected(self, name: str, why: Rejected) -> None:
        """Log a rejected record once per (name, reason): a bad peer must not flood the log."""
        level = logging.DEBUG if why.quiet else logging.WARNING
        self._said.log(level, (name, why.reason), "ignoring mDNS service %s: %s", name, why.reason)
