"""Text from the network in log records, under a host program's own handlers.

A host (exo) logs with handlers of its own, not this package's ``ShownFormatter``: so a record
must be clean where it is made. Every logger of the core and every plugin's ``context.log``
comes from :func:`exo_discovery_core.text.logger`, whose filter makes each record one bounded
line of printable text (its traceback's lines each cleaned) before any handler sees it. The
last tests send a Headscale node name and an mDNS instance name and TXT value holding a newline,
a forged log line and an escape sequence through the real plugins, and a hostile HTTP answer
(control characters in its reason phrase, 12 KiB of headers) through the Headscale and http_sd
clients, whose httpx and httpcore records must be as clean.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exo_discovery_core.testing import discovering, make_context, node_info
from exo_discovery_core.text import MAX_LINE, logger, shown
from tests.test_hostile_text import OWNED, _clean, hostile_text

# what zeroconf lets through in an instance name (it refuses C0 controls): NEL and the line
# separator, which some log viewers break lines at, a C1 CSI, a bidi override
NAME = "evil\x85 2026 ERROR fake\u2028line \x9b31m \u202eelif"
FORGED = "\n2026-12-01 12:00:00 ERROR exo_discovery.node: fake log line \x1b[2J\x1b]0;title\x07"


class Kept(logging.Handler):
    """A host's own handler: keeps every record, formats nothing."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.heard = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.heard.set()

    def lines(self) -> list[str]:
        """Every record as a plain formatter (no cleaning of its own) writes it."""
        plain = logging.Formatter("%(levelname)s %(name)s: %(message)s")
        return [line for r in self.records for line in plain.format(r).split("\n")]


@contextmanager
def kept(name: str) -> Iterator[Kept]:
    handler, log = Kept(), logging.getLogger(name)
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


@settings(max_examples=300, deadline=None)
@given(hostile_text, hostile_text, st.sampled_from(["%s: %s", "%r said %r", "{} {}"]))
def test_a_core_loggers_record_reaches_a_hosts_handler_as_one_clean_line(
    peer: str, reason: str, form: str
) -> None:
    log = logger("exo_discovery.hostile-test")
    with kept(log.name) as handler:
        if "{" in form:
            log.warning(form.format(peer, reason))  # already formatted, as an f-string is
        else:
            log.warning(form, peer, reason)
    [record] = handler.records
    message = record.getMessage()
    assert _clean(message) and len(message) <= MAX_LINE
    assert all(_clean(line) for line in handler.lines())


def test_a_traceback_quoting_the_network_keeps_its_lines_each_clean() -> None:
    log = logger("exo_discovery.hostile-test")
    with kept(log.name) as handler:
        try:
            raise ValueError(OWNED + FORGED)
        except ValueError:
            log.exception("internal error on the connection to %s", FORGED)
    lines = handler.lines()
    assert lines[1] == "Traceback (most recent call last):"
    assert all(_clean(line) for line in lines)
    assert not any(line.startswith("2026-12-01") for line in lines), "a forged line stands alone"


def test_a_plugins_context_log_is_clean_under_a_hosts_handler() -> None:
    context = make_context(object(), name="hostile-plugin")
    with kept(context.log.name) as handler:
        context.log.info("peer %s answered", FORGED)
    assert all(_clean(line) for line in handler.lines())
    assert r"\n2026-12-01" in handler.records[0].getMessage()  # shown, escaped, not obeyed


def test_a_headscale_node_name_with_a_forged_line_is_logged_clean() -> None:
    """A node named with a newline, a fake log line and escapes, with a bad port tag: the
    plugin's warning names it, escaped."""
    from exo_discovery_headscale.api import parse_node_list
    from exo_discovery_headscale.config import HeadscaleConfig
    from exo_discovery_headscale.plugin import Selector
    from tests.support.fake_headscale import FakeNode, list_answer

    nodes = [
        FakeNode.numbered(1, tags=("tag:exo",)),
        FakeNode(
            id=2, name="evil" + FORGED, ips=("100.64.0.2",), tags=("tag:exo", "tag:exo-port-x")
        ),
    ]
    body = json.dumps(list_answer("0.29.2", nodes)).encode()
    config = HeadscaleConfig(api_url="http://127.0.0.1:1", api_key="hskey-hostile-0000")
    context = make_context(object(), name="headscale")
    with kept(context.log.name) as handler:
        selector = Selector(config, node_info(interfaces=["100.64.0.1"]), log=context.log)
        selector.select(parse_node_list(body, "node"), frozenset({"100.64.0.1"}))
    assert any("port tag with bad port" in r.getMessage() for r in handler.records)
    assert all(_clean(line) for line in handler.lines())


@pytest.mark.anyio
async def test_an_mdns_instance_name_and_txt_value_with_a_forged_line_are_logged_clean() -> None:
    """A LAN host announces a service of our type whose instance name and version TXT hold a
    line break, a fake log line and escapes (over loopback multicast): the plugin ignores it,
    and its warning saying so is clean."""
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    from tests.test_mdns_loopback import DEADLINE, OnLoopback

    service_type = f"_t{secrets.token_hex(4)}._tcp.local."
    config: dict[str, Any] = {
        "service_type": service_type,
        "ip_version": "v4",
        "interface_check_interval": 3600,
    }
    hostile = AsyncServiceInfo(
        service_type,
        f"{NAME}.{service_type}",
        addresses=[socket.inet_aton("192.0.2.78")],
        port=40100,
        properties={"v": "9" + FORGED[:40]},
        server="evil.local.",
    )
    name = "exo_discovery.plugin.mdns-hostile"
    with kept(name) as handler:
        async with discovering(
            OnLoopback(), config, name="mdns-hostile", node=node_info(port=40101)
        ) as sets:
            await anext(sets)
            announcer = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
            try:
                await announcer.async_register_service(hostile)
                with anyio.fail_after(DEADLINE):
                    while not any(f"ignoring mDNS service {shown(NAME)}" in r.getMessage()
                                  for r in handler.records):  # fmt: skip
                        handler.heard = anyio.Event()
                        await handler.heard.wait()
            finally:
                await announcer.async_unregister_all_services()
                await announcer.async_close()
    assert all(_clean(line) for line in handler.lines())
    warned = [r for r in handler.records if shown(NAME) in r.getMessage()]
    assert warned[0].levelno == logging.WARNING and "record version '9" in warned[0].getMessage()


# a status line and headers a server may send (h11 takes a tab and bytes past ASCII in a reason
# phrase, and headers up to 16 KiB): httpx logs the reason at INFO, httpcore every header at
# DEBUG, all on one line
HOSTILE_RESPONSE = (
    b"HTTP/1.1 503 busy\tnow \x9b31m\r\n"
    b"X-Pad: " + b"x" * 12_000 + b"\r\n"
    b"X-Said: \xe2\x80\xae evil\r\n"
    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
)


async def poll_headscale(url: str) -> None:
    from pydantic import SecretStr

    from exo_discovery_headscale.api import HeadscaleClient, HeadscaleError

    async with HeadscaleClient(url, SecretStr("hskey-hostile-0000")) as client:
        with pytest.raises(HeadscaleError):
            await client.list_wire_nodes()


async def poll_http_sd(url: str) -> None:
    from exo_discovery_http.config import HttpConfig
    from exo_discovery_http.source import HttpSource, HttpSourceError

    async with HttpSource(HttpConfig(url=url)) as source:
        with pytest.raises(HttpSourceError):
            await source.fetch()


@pytest.mark.anyio
@pytest.mark.parametrize("poll", [poll_headscale, poll_http_sd])
async def test_httpx_and_httpcore_records_of_a_hostile_answer_are_clean(
    poll: Callable[[str], Awaitable[None]],
) -> None:
    """A Headscale or http_sd server answers the poll with a tab and a C1 control in the
    reason phrase and 12 KiB of headers: every record httpx and httpcore make of it (httpx's
    request line at INFO, httpcore's headers at DEBUG) reaches a host's handler as one clean,
    bounded line. (They were the only records a server's text reached unfiltered.)"""
    from exo_discovery_core.remote import HTTP_LOGGERS

    async def answer(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.receive()  # the request (one read: it is small)
            await stream.send(HOSTILE_RESPONSE)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    with kept("httpx") as httpx_records, kept("httpcore") as httpcore_records:
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, answer)
            await poll(f"http://127.0.0.1:{port}/")
            tg.cancel_scope.cancel()
    said = [r for r in httpx_records.records if "HTTP Request" in r.getMessage()]
    assert said and "503 busy\\tnow" in said[0].getMessage()
    headers = [r for r in httpcore_records.records if "X-Pad" in r.getMessage()]
    assert headers, "httpcore logged no headers at DEBUG: nothing here to check"
    for handler in (httpx_records, httpcore_records):
        for record in handler.records:
            message = record.getMessage()
            assert _clean(message) and len(message) <= MAX_LINE, (record.name, message[:200])
    made = {n for n in logging.Logger.manager.loggerDict if n.startswith(("httpx", "httpcore."))}
    assert made <= set(HTTP_LOGGERS), "a logger of httpx or httpcore that is not filtered"
