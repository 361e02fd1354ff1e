"""Bare python-zeroconf probe: register a DNS-SD service, or browse and report events.

Why: it proves real multicast between lab namespaces, and it is the "bare
zeroconf browser" reference for benchmarks, so every event is one JSON line on
stdout (flushed) with a ``time.monotonic()`` timestamp ``t``. CLOCK_MONOTONIC is
shared by all processes of the machine (network namespaces don't change it), so
``t`` values from different hosts of a lab are directly comparable.

Usage (run inside a namespace with ``sys.executable``)::

    zc_probe.py register NAME [--type T] [--port P] [--txt k=v ...] [--addr IP ...]
        [--ip-version all|v4|v6]
        [--duration S] [--stdin]
        prints "registered" (probing done, discoverable) and "announced";
        unregisters (mDNS goodbye) on SIGTERM/SIGINT, after --duration, or
        (with --stdin) on a stdin line / EOF, printing "unregistering",
        "goodbye_sent" (first goodbye out) and "unregistered".
    zc_probe.py browse [--type T] [--duration S] [--stdin] [--ip-version all|v4|v6]
        prints "started", then "added" (with resolved addresses), "updated",
        "removed"; stops like register, then prints "stopped".

Sockets: ``InterfaceChoice.All`` + ``IPVersion.All`` (one socket per interface
address, joined to 224.0.0.251 and ff02::fb). ``InterfaceChoice.Default`` with
IPv6 cannot send ff02::fb (zeroconf itself warns), so All is what works in a
namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from typing import Any

from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from exo_discovery_core import interface_addresses

DEFAULT_TYPE = "_exoinfra._tcp.local."
RESOLVE_TIMEOUT_MS = 3000


def emit(event: str, **fields: Any) -> None:
    """One JSON line per event, flushed at once (the reader measures latency)."""
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def local_addresses() -> list[str]:
    """Non-loopback, non-link-local addresses of this namespace (what A advertises)."""
    ips = {entry.ip for entry in interface_addresses()}
    return sorted(str(ip) for ip in ips if not ip.is_loopback and not ip.is_link_local)


IP_VERSIONS = {"all": IPVersion.All, "v4": IPVersion.V4Only, "v6": IPVersion.V6Only}


def new_zeroconf(ip_version: str) -> AsyncZeroconf:
    """``--ip-version v4|v6`` restricts the multicast *transport* (224.0.0.251 or
    ff02::fb); the advertised A and AAAA records are the same either way."""
    return AsyncZeroconf(interfaces=InterfaceChoice.All, ip_version=IP_VERSIONS[ip_version])


async def wait_for_stop(duration: float | None, use_stdin: bool) -> str:
    """Return why we stop: a stdin line/EOF (if ``use_stdin``), a signal, or the duration."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[str] = loop.create_future()

    def _set(reason: str) -> None:
        if not stop.done():
            stop.set_result(reason)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _set, sig.name)
    if duration is not None:
        loop.call_later(duration, _set, "duration")

    def _on_stdin() -> None:
        # add_reader, not a thread: a blocked readline() thread would keep
        # asyncio.run() from returning after a signal.
        data = os.read(0, 4096)
        _set("stdin" if data else "stdin-eof")

    if use_stdin:
        loop.add_reader(0, _on_stdin)
    try:
        return await stop
    finally:
        if use_stdin:
            loop.remove_reader(0)


async def register(args: argparse.Namespace) -> None:
    addrs = args.addr or local_addresses()
    txt = dict(kv.split("=", 1) for kv in args.txt)
    info = AsyncServiceInfo(
        args.type,
        f"{args.name}.{args.type}",
        port=args.port,
        properties=txt,
        server=f"{args.name}.local.",
        parsed_addresses=addrs,
    )
    azc = new_zeroconf(args.ip_version)
    t0 = time.monotonic()
    # First await: probing done, first announcement sent (now discoverable).
    # Second await: the remaining announcements were sent.
    announced = await azc.async_register_service(info)
    emit("registered", name=info.name, addresses=addrs, t_start=t0)
    announcing = asyncio.ensure_future(announced)
    announcing.add_done_callback(lambda _: emit("announced", name=info.name))
    reason = await wait_for_stop(args.duration, args.stdin)
    t1 = time.monotonic()
    emit("unregistering", name=info.name, reason=reason)
    goodbyes = await azc.async_unregister_service(info)  # TTL=0 goodbye records
    emit("goodbye_sent", name=info.name, t_start=t1)
    await goodbyes
    emit("unregistered", name=info.name, t_start=t1)
    await azc.async_close()


def _addresses(info: AsyncServiceInfo) -> list[str]:
    return sorted(info.parsed_scoped_addresses(IPVersion.All))


async def browse(args: argparse.Namespace) -> None:
    azc = new_zeroconf(args.ip_version)
    tasks: set[asyncio.Task[None]] = set()

    async def resolve(zc: Zeroconf, service_type: str, name: str, event: str, t: float) -> None:
        info = AsyncServiceInfo(service_type, name)
        ok = await info.async_request(zc, RESOLVE_TIMEOUT_MS)
        emit(
            event,
            name=name,
            t_seen=t,
            resolved=ok,
            addresses=_addresses(info) if ok else [],
            port=info.port,
            server=info.server,
            txt={
                k.decode(errors="replace"): (v.decode(errors="replace") if v is not None else None)
                for k, v in (info.properties or {}).items()
            },
        )

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        t = time.monotonic()
        if state_change is ServiceStateChange.Removed:
            emit("removed", name=name)
            return
        event = "added" if state_change is ServiceStateChange.Added else "updated"
        task = asyncio.create_task(resolve(zeroconf, service_type, name, event, t))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    browser = AsyncServiceBrowser(azc.zeroconf, [args.type], handlers=[on_change])
    emit("started", type=args.type, hostname=socket.gethostname())
    reason = await wait_for_stop(args.duration, args.stdin)
    await browser.async_cancel()
    for task in list(tasks):
        task.cancel()
    await azc.async_close()
    emit("stopped", reason=reason)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="cmd", required=True)
    reg = sub.add_parser("register")
    reg.add_argument("name")
    reg.add_argument("--type", default=DEFAULT_TYPE)
    reg.add_argument("--port", type=int, default=52415)
    reg.add_argument("--txt", action="append", default=[], metavar="K=V")
    reg.add_argument("--addr", action="append", default=[])
    reg.add_argument("--duration", type=float, default=None)
    reg.add_argument("--stdin", action="store_true", help="unregister on a stdin line/EOF")
    br = sub.add_parser("browse")
    br.add_argument("--type", default=DEFAULT_TYPE)
    br.add_argument("--duration", type=float, default=None)
    br.add_argument("--stdin", action="store_true", help="stop on a stdin line/EOF")
    for p in (reg, br):
        p.add_argument("--ip-version", choices=sorted(IP_VERSIONS), default="all")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(register(args) if args.cmd == "register" else browse(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
