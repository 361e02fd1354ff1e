"""Text from the network on its way to people: a peer's bye, a record's metadata, a plugin's
health, a server's names. Whatever it holds (escape sequences, newlines, carriage returns, bidi
overrides, lone surrogates), a log line, the live view, ``run``'s lines, ``peers`` and ``doctor``
show it as one bounded line of printable text, and JSON output stays valid."""

from __future__ import annotations

import io
import json
import logging
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from exo_discovery_core import Address, PeerCandidate, records
from exo_discovery_core.events import NodeEvent
from exo_discovery_core.identity import Identity
from exo_discovery_core.liveview import LineView, LiveView, describe
from exo_discovery_core.members import render, why_not
from exo_discovery_core.models import CheckResult
from exo_discovery_core.node import Node
from exo_discovery_core.status import PeerRow, PluginStatus, Status
from exo_discovery_core.testing import next_event
from exo_discovery_core.text import MAX_LINE, MAX_SHOWN, ShownFormatter, shown
from tests.support.cli import QUIET_PLUGINS, start
from tests.support.hostile import CLOSED_ERRORS, LiveNode, authenticate

CASES = 300
OWNED = "\x1b[2J\x1b[31mowned\n fake log line"
PEER = "12D3KooWRBhwfeP2Y9CDkFRBAZ1pmxUadH36TKuk6KE7Bzv3KxXE"
# What a terminal obeys or a log reader is fooled by, mixed into ordinary text.
_DANGEROUS = [
    "\x1b",
    "\x1b[2J",
    "\x1b]0;title\x07",
    "\x9b",
    "\n",
    "\r",
    "\r\n",
    "\t",
    "\x00",
    "\x7f",
    "\x08",
    "\u202e",
    "\u2066",
    "\u200f",
    "\u2028",
    "\u2029",
    "\ufeff",
    "\ud800",
    "\udfff",
    "\U000e0001",
]
hostile_text = st.lists(st.sampled_from(_DANGEROUS) | st.text(max_size=20), max_size=40).map(
    "".join
)
_FAST = settings(
    max_examples=CASES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _clean(line: str) -> bool:
    return all(c.isprintable() for c in line)


@_FAST
@given(hostile_text, st.integers(min_value=1, max_value=400))
def test_shown_text_is_printable_bounded_and_plain_text_unchanged(text: str, limit: int) -> None:
    out = shown(text, limit)
    assert _clean(out) and len(out) <= limit
    if text.isprintable() and len(text) <= limit:
        assert out == text  # nothing to neutralise: nothing changed


def test_shown_names_what_it_neutralised() -> None:
    assert shown(OWNED) == r"\x1b[2J\x1b[31mowned\n fake log line"
    assert shown("a\u202eb\ud800") == r"a\u202eb\ud800"
    assert shown("x" * 1000) == "x" * (MAX_SHOWN - 1) + "…"


@_FAST
@given(hostile_text, hostile_text)
def test_a_log_record_with_a_hostile_argument_is_one_clean_line(peer: str, reason: str) -> None:
    record = logging.LogRecord(
        "exo_discovery.pipeline",
        logging.INFO,
        __file__,
        1,
        "disconnected from %s: %s",
        (peer, reason),
        None,
    )
    line = ShownFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert _clean(line) and len(line) <= MAX_LINE


def test_a_traceback_keeps_its_lines_each_clean() -> None:
    try:
        raise ValueError(OWNED)
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "%s", (OWNED,), None)
        import sys

        record.exc_info = sys.exc_info()
    lines = ShownFormatter("%(message)s").format(record).split("\n")
    assert lines[0] == shown(OWNED, MAX_LINE) and lines[1] == "Traceback (most recent call last):"
    assert all(_clean(line) for line in lines)


def _row(text: str, **fields: Any) -> PeerRow:
    row: dict[str, Any] = {
        "peer_id": PEER,
        "addresses": ["127.0.0.1:1"],
        "sources": [text],
        "state": "known",
        "metadata": {"hostname": text},
        "last_reason": text,
        "retry_in": 2.0,
    }
    return PeerRow(**{**row, **fields})


@_FAST
@given(hostile_text, st.integers(min_value=80, max_value=200))
def test_the_peers_table_shows_a_hostile_hostname_reason_and_source_cleanly(
    text: str, width: int
) -> None:
    # no id: the address names the row; meta: what a record said (printable, but long)
    rows = [
        _row(text),
        _row(text, peer_id=None, meta={"note": text.encode("utf-8", "replace").decode()}),
    ]
    lines = render(rows, width)
    assert len(lines) == 1 + 2 * 2 + 1  # the title, each peer and its reason, the meta: no more
    assert all(_clean(line) and len(line) <= width for line in lines)
    assert _clean(why_not(rows[0]))  # run --wait-for's "not ready" lines


@_FAST
@given(hostile_text)
def test_run_lines_and_the_live_view_show_hostile_event_and_plugin_text_cleanly(
    text: str,
) -> None:
    events = [
        NodeEvent(event="disconnected", peer_id=PEER, reason=text),
        NodeEvent(event="plugin_error", plugin="http", error=text),
        NodeEvent(event="peer_discovered", addresses=["127.0.0.1:1"], sources=[text]),
    ]
    out = io.StringIO()
    for event in events:
        LineView(out).show(event)
    assert all(_clean(line) for line in out.getvalue().splitlines())
    assert len(out.getvalue().splitlines()) == len(events)
    assert all(_clean(describe(e)) and len(describe(e)) <= MAX_LINE for e in events)

    plugins = [
        PluginStatus(
            name="http",
            distribution="d",
            version="1",
            enabled=True,
            status="enabled",
            state="ok",
            health=text,
        ),
        PluginStatus(
            name="mdns", distribution="d", version="1", enabled=True, status="enabled", error=text
        ),
    ]
    status = Status(peer_id=PEER, port=1, namespace="exo", peers=[_row(text)], plugins=plugins)
    screen = io.StringIO()
    view = LiveView(lambda: status, out=screen, size=lambda: (100, 40))
    view.log(shown(text))  # what the log area's ShownFormatter gives it
    for event in events:
        view.show(event)
    assert all(_clean(line) for line in view.frame(100, 40))
    last = screen.getvalue().rsplit("\x1b[H", 1)[1]  # the last frame, after "cursor home"
    drawn = last.replace("\x1b[K", "").replace("\x1b[J", "")  # the view's own escapes
    assert "\x1b" not in drawn and all(len(line) <= 100 for line in drawn.splitlines())


@_FAST
@given(hostile_text)
def test_json_output_keeps_the_text_and_stays_valid(text: str) -> None:
    """Metadata a server gave (a Headscale name, an http_sd label, a TXT value) is kept as it
    came; only a lone surrogate, which no UTF-8 output can hold, becomes "?"."""
    candidate = PeerCandidate(
        addresses=(Address(host="127.0.0.1", port=1),), metadata=(("hostname", text),)
    )
    kept = dict(candidate.metadata)["hostname"]
    assert kept == text.encode("utf-8", "replace").decode()
    row = _row(kept)
    status = Status(peer_id=PEER, port=1, namespace="exo", peers=[row], plugins=[])
    assert Status.model_validate_json(status.model_dump_json().encode()) == status
    event = NodeEvent(event="disconnected", peer_id=PEER, reason=kept)
    assert json.loads(event.to_json())["reason"] == kept


@_FAST
@given(hostile_text)
def test_an_address_is_an_ip_or_a_dns_name_never_other_text(text: str) -> None:
    """Addresses come from records, TXT, Headscale, http_sd, LocalAPI, SRV: each is checked
    where it is made."""
    for host in (text, f"fe80::1%{text}", f"host{text}.example"):
        try:
            address = Address(host=host, port=1)
        except ValueError:
            continue
        assert re.fullmatch(r"[A-Za-z0-9_.:%\[\]-]+", str(address)), address


@_FAST
@given(hostile_text)
def test_a_signed_record_carries_printable_metadata_and_real_addresses_only(text: str) -> None:
    """A key vouches for its owner's word, not for what that word does to a terminal: a record
    whose metadata value or address holds a control or format character is refused."""
    identity = Identity.generate()
    fields = {
        "addrs": ["127.0.0.1:1"],
        "boot": "ab" * 16,
        "meta": {"hostname": text},
        "peer_id": str(identity.peer_id),
        "protocol": "/exo-discovery/2",
        "seq": 1,
    }
    for payload in (fields, {**fields, "meta": {}, "addrs": [f"h{text}:1"]}):
        envelope = records.seal(identity, json.dumps(payload).encode())
        try:
            record = records.verify(envelope)
        except records.RecordError:
            assert payload is not fields or not text.isprintable() or len(text) > 100
            continue  # refused; a short printable hostname is not
        assert all(v.isprintable() for v in record.meta.values())
        assert all(re.fullmatch(r"[a-z0-9_.-]+", a.host) for a in record.addresses)


def test_doctor_shows_a_plugins_hostile_check_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    from exo_discovery_core.doctor import _print

    _print(CheckResult(name=f"mdns {OWNED}", ok=False, detail=OWNED, fix=OWNED))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(_clean(line) for line in lines)
    assert r"owned\n fake log line" in lines[0]


# -- a peer's bye, to a real node ------------------------------------------------------------


async def _bye(node: Node, reason: str) -> str | None:
    """A fresh authenticated peer says bye with ``reason``; the reason the node reports."""
    identity = Identity.generate()
    async with node.events() as events:
        session = await authenticate(node.port, identity)
        try:
            await next_event(events, "connected", timeout=10, peer_id=identity.peer_id)
            await session.send({"type": "bye", "reason": reason}, timeout=5)
            gone = await next_event(events, "disconnected", timeout=10, peer_id=identity.peer_id)
        finally:
            await session.aclose()
    return gone.reason


def test_a_peers_bye_reason_is_kept_short_and_printable() -> None:
    with LiveNode() as live:

        @settings(max_examples=60, deadline=None, phases=[Phase.generate], database=None)
        @given(hostile_text | st.text(min_size=200, max_size=5000))
        def say(reason: str) -> None:
            live.ensure_alive()
            said = live.call(_bye, live.node, reason)
            assert said is not None and said.startswith("peer closed (")
            assert _clean(said) and len(said) <= len("peer closed ()") + 100

        say()


def _lines(stream: Any, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def test_a_bye_with_escapes_and_a_newline_is_one_clean_line_in_a_real_nodes_output(
    tmp_path: Path,
) -> None:
    """``run -v`` as a user runs it: its event lines on stdout, its log on stderr. A peer that
    says bye with an escape sequence and a forged log line changes neither."""
    proc = start(
        tmp_path, "run", "-v", "--listen-host", "127.0.0.1", "--port", "0", env=QUIET_PLUGINS
    )
    out: queue.Queue[str] = queue.Queue()
    err: queue.Queue[str] = queue.Queue()
    readers = [
        threading.Thread(target=_lines, args=(proc.stdout, out), daemon=True),
        threading.Thread(target=_lines, args=(proc.stderr, err), daemon=True),
    ]
    for reader in readers:
        reader.start()
    stdout: list[str] = []
    identity = Identity.generate()

    def until(pattern: str, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                stdout.append(out.get(timeout=left))
            except queue.Empty:
                break
            if found := re.search(pattern, stdout[-1]):
                return found
        raise AssertionError(f"no {pattern!r} within {timeout} s in {stdout}")

    async def say_bye(port: int) -> None:
        """Say the hostile bye, then read until the node closes the connection (as it does on
        a bye: what it sends before is read and dropped; anything but a close fails)."""
        session = await authenticate(port, identity)
        try:
            await session.send({"type": "bye", "reason": OWNED}, timeout=5)
            with anyio.fail_after(10):
                while True:
                    try:
                        await session.receive()
                    except CLOSED_ERRORS:
                        return
        finally:
            await session.aclose()

    try:
        port = int(until(r"listening on 127\.0\.0\.1:(\d+)")[1])
        anyio.run(say_bye, port)
        until(rf"disconnected {identity.peer_id}:")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for reader in readers:
            reader.join(timeout=10)
    while not out.empty():
        stdout.append(out.get())
    stderr = list(err.queue)
    said = r"peer closed (\x1b[2J\x1b[31mowned\n fake log line)"
    for name, lines in (("stdout", stdout), ("stderr", stderr)):
        text = "".join(lines)
        assert "\x1b" not in text and "\r" not in text, (name, text)
        forged = [line for line in lines if "fake log line" in line]
        assert forged and all(said in line for line in forged), (name, text)
    assert any(f"disconnected {identity.peer_id}: {said}" in line for line in stdout)
    assert any(f"disconnected from {identity.peer_id}: {said}" in line for line in stderr)
