"""Hostile bootstrap entries through ``parse_entry``: a valid entry or a ``BadEntry`` quoting it.

Never another exception type. A valid entry's canonical multiaddr parses back to the same peer.
SRV answers (from the network) through the plugin: candidates within bounds, never an error.

Cases per target: ``CASES_PER_TARGET`` (300) for text() and for multiaddr-ish compositions;
``BUG_CASES`` (20) for the regression target of a bug this suite found (fixed).
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from exo_discovery_bootstrap import BootstrapPlugin
from exo_discovery_bootstrap.entries import BadEntry, BootstrapEntry, parse_entry
from exo_discovery_bootstrap.srv import MAX_SRV_RECORDS, best_first
from exo_discovery_core.identity import Identity
from exo_discovery_core.testing import peer_sets

CASES_PER_TARGET = 300
BUG_CASES = 20
PEER = str(Identity.generate().peer_id)
SETTINGS = settings(max_examples=CASES_PER_TARGET, deadline=None)

PROTOCOLS = st.sampled_from(
    [
        "ip4",
        "ip6",
        "dns",
        "dns4",
        "dns6",
        "dnsaddr",
        "tcp",
        "udp",
        "quic",
        "quic-v1",
        "p2p",
        "ipfs",
        "ws",
        "tls",
        "unix",
        "onion",
        "ip",
        "",
        "IP4",
        "tcp ",
    ]
) | st.text(max_size=8)
VALUES = (
    st.sampled_from(
        [
            "127.0.0.1",
            "::1",
            "[::1]",
            "fe80::1%eth0",
            "1.2.3",
            "256.1.1.1",
            "example.com",
            "-a.com",
            "a" * 64,
            "0",
            "52417",
            "65535",
            "65536",
            "-1",
            "+1",
            " 1",
            PEER,
            PEER[:-1],
            "12D3KooW",
            "xn--",
            "localhost",
            "..",
            "%",
            "1e3",
        ]
    )
    | st.text(max_size=20)
    | st.integers(-5, 70000).map(str)
)
# ASCII digits only: a Unicode digit in a port is bug B6 (fixed) (target below).
ASCII_PORTS = st.integers(-5, 70000).map(str) | st.sampled_from(["", "0", "00080", "1" * 30])


@st.composite
def multiaddrish(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.tuples(PROTOCOLS, VALUES), max_size=5))
    text = "".join(f"/{p}/{v}" for p, v in parts)
    if draw(st.booleans()):
        text += draw(st.sampled_from(["/", "//", "/tcp", f"/p2p/{PEER}", ""]))
    return text


@st.composite
def host_port(draw: st.DrawFn) -> str:
    host = draw(VALUES | st.sampled_from(["[::1", "::1]", "[]", "[127.0.0.1]"]))
    sep = draw(st.sampled_from([":", "", "::", ":" * 3]))
    return f"{host}{sep}{draw(ASCII_PORTS)}"


def _no_unicode_digit_port(text: str) -> bool:
    """Known bug B6 (its own target): a port of Unicode digits raises ValueError."""
    return not any(ch.isdigit() and not ch.isascii() for ch in text)


def check(text: Any) -> None:
    try:
        entry = parse_entry(text)
    except BadEntry as exc:
        quoted = text.strip() if isinstance(text, str) else repr(text)
        assert exc.entry == quoted
        assert repr(quoted) in str(exc), str(exc)
        assert exc.reason and exc.fix
        return
    assert isinstance(entry, BootstrapEntry)
    assert 1 <= entry.port <= 65535 or (entry.is_srv and entry.port == 0)
    again = parse_entry(entry.multiaddr)  # the canonical form is an entry too, the same peer
    assert (again.kind, again.host, again.port, again.peer_id) == (
        entry.kind,
        entry.host,
        entry.port,
        entry.peer_id,
    )


@SETTINGS
@given(st.text(max_size=80).filter(_no_unicode_digit_port))
def test_any_text_is_an_entry_or_a_bad_entry_quoting_it(text: str) -> None:
    """Cases: CASES_PER_TARGET (300)."""
    check(text)


@SETTINGS
@given((multiaddrish() | host_port()).filter(_no_unicode_digit_port))
def test_multiaddr_and_host_port_compositions(text: str) -> None:
    """Random protocol names/values composed as multiaddrs and host:port. Cases: 300."""
    check(text)


@pytest.mark.parametrize("value", [None, 52417, b"127.0.0.1:1", ["127.0.0.1:1"], {"a": 1}])
def test_non_strings_are_bad_entries(value: Any) -> None:
    check(value)


B6 = (
    "B6: entries._check_port (entries.py:204) tests str.isdigit(), which is True for "
    "superscripts and other Unicode digits int() rejects: parse_entry('127.0.0.1:²') raises a "
    "bare ValueError, not BadEntry (and '١٢' is silently read as port 12); use "
    "text.isascii() and text.isdigit()"
)


@settings(max_examples=BUG_CASES, deadline=None, phases=[Phase.generate], database=None)
@given(
    st.sampled_from(["127.0.0.1:", "example.com:", "[::1]:", "/ip4/1.2.3.4/tcp/", "/dns/a.b/tcp/"]),
    st.text(alphabet=st.sampled_from("²³¹⁴①"), min_size=1, max_size=4),
)
def test_fixed_bug_unicode_digit_port(prefix: str, port: str) -> None:
    """Cases: BUG_CASES (20): ports written with digits int() does not read."""
    check(prefix + port)


# -- SRV answers ------------------------------------------------------------------------------

SRV_CASES = 100
SERVICE = "_exo-discovery._tcp.example.com"
SRV_TARGETS = (
    st.sampled_from(
        [
            ".",
            "",
            "a.example",
            "A.EXAMPLE.",
            "127.0.0.1",
            "::1",
            "x" * 300,
            "bad_name.example",
            "a..b",
            "-a.example",
            "\\032.example",
            "name.with space",
        ]
    )
    | st.text(max_size=40)
    | st.from_regex(r"\A[a-z0-9.-]{1,30}\Z")
)
SRV_RECORDS = st.lists(
    st.tuples(st.integers(0, 65535), st.integers(0, 65535), SRV_TARGETS, st.integers(0, 70000)),
    max_size=400,
)


@settings(max_examples=SRV_CASES, deadline=None)
@given(SRV_RECORDS)
def test_hostile_srv_answers_give_bounded_candidates(
    records: list[tuple[int, int, str, int]],
) -> None:
    """Cases: SRV_CASES (100) answers, as the system resolver hands them on (bounded, best first)."""

    async def srv(name: str) -> list[tuple[str, int]]:
        return best_first(records[:MAX_SRV_RECORDS])

    async def a(name: str, port: int, family: Any) -> list[str]:
        return ["10.0.0.1"]

    plugin = BootstrapPlugin(resolver=a, srv_resolver=srv)
    [peers] = anyio.run(lambda: peer_sets(plugin, {"peers": [SERVICE]}, name="bootstrap"))
    assert len(peers) <= MAX_SRV_RECORDS
    for peer in peers:
        assert all(1 <= address.port <= 65535 for address in peer.addresses)
