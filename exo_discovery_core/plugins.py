"""Finding, loading and calling plugins: entry points, isolation at import, per-plugin hook calls.

A disabled plugin is never imported. A plugin that fails to import, or implements a hook that
does not exist (a typo), is recorded with its error and left out; the others load regardless.
"""

from __future__ import annotations

import functools
import importlib.metadata as metadata
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pluggy
from pydantic import BaseModel, ConfigDict

from . import hookspecs
from .text import logger

log = logger("exo_discovery.plugins")


class EmptyConfig(BaseModel):
    """The config model of a plugin that declares none."""

    model_config = ConfigDict(extra="forbid", defer_build=True)


@dataclass
class PluginInfo:
    """One installed (or registered) plugin, as ``exo-discovery plugins`` shows it.

    An installed plugin's distribution and version are read from its metadata when first
    shown (``plugins``, the status socket): parsing METADATA imports the email parser, which a
    node that is only running has no use for."""

    name: str
    status: str  # "enabled", or why not
    error: str | None = None
    entry_point: metadata.EntryPoint | None = None
    hooks: tuple[str, ...] = ()
    """The hooks it implements, once registered."""
    registered_by: str = "(registered)"
    """The distribution shown for a plugin registered directly (no entry point)."""

    @functools.cached_property
    def distribution(self) -> str:
        if self.entry_point is None:
            return self.registered_by
        dist = self.entry_point.dist
        return dist.name if dist else "?"

    @functools.cached_property
    def version(self) -> str:
        if self.entry_point is None:
            return "-"
        dist = self.entry_point.dist
        return dist.version if dist else "?"

    @property
    def enabled(self) -> bool:
        return self.status == "enabled"

    @property
    def loaded(self) -> bool:
        return self.enabled and self.error is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "enabled": self.enabled,
            "status": self.status,
            "error": self.error,
            "hooks": list(self.hooks),
        }


def _discover_peers_error(function: Callable[..., Any]) -> str | None:
    """Why ``function`` cannot be a ``discover_peers`` (None when it can), said at registration.

    The contract: an async generator, or a plain function returning an async iterator or None.
    """
    if inspect.isasyncgenfunction(function):
        return None
    if inspect.iscoroutinefunction(function):
        return (
            "discover_peers is an `async def` that returns instead of yielding: make it an async "
            "generator (`yield` each peer set), or a plain `def` that returns an async iterator, "
            "or None to stay idle"
        )
    if inspect.isgeneratorfunction(function):
        return (
            "discover_peers is a plain generator (`def` with `yield`): make it `async def`, "
            "so the node iterates it on its event loop"
        )
    return None


@functools.cache
def installed_entry_points() -> dict[str, metadata.EntryPoint]:
    """The plugins installed in this environment, by name, without importing any of them.

    Read once per process: scanning every distribution's metadata costs milliseconds.
    """
    return {ep.name: ep for ep in metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP)}


def new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


class PluginHost:
    """The plugin manager plus what the node knows about each plugin."""

    def __init__(self) -> None:
        self.pm = new_manager()
        self.infos: dict[str, PluginInfo] = {}

    def load_installed(self, selection: dict[str, str]) -> None:
        """Import and register each enabled entry-point plugin; record the others."""
        for name, ep in sorted(installed_entry_points().items()):
            info = PluginInfo(name=name, status=selection.get(name, "enabled"), entry_point=ep)
            self.infos[name] = info
            if not info.enabled:
                continue
            try:
                plugin = ep.load()
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                info.error = f"import failed: {type(exc).__name__}: {exc}"
                log.error("plugin %r (%s) failed to load: %s", name, info.distribution, info.error)
                continue
            self._register(name, plugin, info)

    def register(self, name: str, plugin: object, *, distribution: str = "(registered)") -> None:
        """Register a plugin object directly (tests, a host program's own discovery)."""
        info = PluginInfo(name, "enabled", registered_by=distribution)
        self.infos[name] = info
        self._register(name, plugin, info)
        if info.error:
            raise ValueError(f"plugin {name!r}: {info.error}")

    def _register(self, name: str, plugin: object, info: PluginInfo) -> None:
        try:
            self.pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            info.error = f"invalid plugin: {exc}"
            log.error("plugin %r: %s", name, info.error)
            return
        unknown = [
            impl.function.__name__
            for hook in self.pm.get_hookcallers(plugin) or []
            if not hook.has_spec()
            for impl in hook.get_hookimpls()
            if impl.plugin is plugin
        ]
        if unknown:
            self.pm.unregister(plugin)
            info.error = (
                f"implements unknown hook(s) {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(self.hook_names()))})"
            )
            log.error("plugin %r: %s", name, info.error)
            return
        broken = self._impl("discover_peers", plugin)
        why = _discover_peers_error(broken.function) if broken is not None else None
        if why is not None:
            self.pm.unregister(plugin)
            info.error = why
            log.error("plugin %r: %s", name, info.error)
            return
        info.hooks = tuple(
            sorted(hook.name for hook in self.pm.get_hookcallers(plugin) or [] if hook.has_spec())
        )

    def hook_names(self) -> list[str]:
        return [n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "exo_discovery_spec")]

    def loaded(self) -> list[str]:
        return [name for name, info in self.infos.items() if info.loaded]

    def _impl(self, hook: str, plugin: object) -> pluggy.HookImpl | None:
        caller = getattr(self.pm.hook, hook)
        return next((impl for impl in caller.get_hookimpls() if impl.plugin is plugin), None)

    def call(self, name: str, hook: str, **kwargs: Any) -> Any:
        """Call one plugin's implementation of ``hook``; None when it has none."""
        plugin = self.pm.get_plugin(name)
        impl = None if plugin is None else self._impl(hook, plugin)
        if impl is None:
            return None
        return impl.function(*[kwargs[arg] for arg in impl.argnames])

    def is_async_generator(self, name: str, hook: str) -> bool:
        """Whether ``name``'s ``hook`` is an ``async def`` generator (calling it runs no code)."""
        plugin = self.pm.get_plugin(name)
        impl = None if plugin is None else self._impl(hook, plugin)
        return impl is not None and inspect.isasyncgenfunction(impl.function)

    def implements(self, name: str, hook: str) -> bool:
        plugin = self.pm.get_plugin(name)
        caller = getattr(self.pm.hook, hook)
        return any(impl.plugin is plugin for impl in caller.get_hookimpls())

    def config_model(self, name: str) -> type[BaseModel]:
        model = self.call(name, "config_model")
        if model is None:
            return EmptyConfig
        if not (inspect.isclass(model) and issubclass(model, BaseModel)):
            raise TypeError(f"plugin {name!r}: config_model must return a pydantic model class")
        return model

    def infos_sorted(self) -> Iterable[PluginInfo]:
        return [self.infos[name] for name in sorted(self.infos)]
