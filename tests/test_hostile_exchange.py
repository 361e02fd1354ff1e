"""An authenticated peer sends hostile frames after the handshake to ONE real node.

The peer passes the real handshake (the core's own code on the client side), then sends random
``peers`` exchange frames (malformed entries, bad ids, our own and the node's id, loopback and
out-of-range addresses, more than ``MAX_PEERS``) and unknown frame types. The node must not crash,
must never dial an address that came only in a malformed entry (those all point at a "honeypot"
listener that must see no connection), must connect to no one (no announced peer proves its id),
and its table must hold exactly the well-formed candidates of the last ``peers`` frame (first
``MAX_PEERS`` entries, the node itself and the sender skipped, the last entry for an id wins).

Cases per target: ``CASES_PER_TARGET`` (100) for the random frames; ``BUG_CASES`` (10) for the
regression target of a bug this suite found (fixed).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio._core._sockets as anyio_sockets
import idna
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from exo_discovery_core.exchange import MAX_PEERS
from exo_discovery_core.identity import Identity, PeerId
from exo_discovery_core.models import Address
from exo_discovery_core.wire import MAX_FRAME
from tests.support.hostile import (
    CLOSED_ERRORS,
    Listener,
    LiveNode,
    authenticate,
    json_body,
    listeners,
    read_until_closed,
)

CASES_PER_TARGET = 100
BUG_CASES = 10
SETTLE = 0.1  # seconds for the node to read the frames and start any dial they cause
POOL = [Identity.generate().peer_id for _ in range(12)]  # ids that are well-formed peers


@dataclass
class Scenario:
    """One example: the frames, and which entries of the last ``peers`` frame are well-formed."""

    frames: list[bytes] = field(default_factory=list)
    expected: dict[PeerId, Address] = field(default_factory=dict)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def _bad_ids(good: str) -> st.SearchStrategy[Any]:
    """Strings (and non-strings) that are not Ed25519 peer ids."""
    return (
        st.sampled_from(
            [
                "",
                good[:-1],  # truncated
                good + "1",  # too long
                "Qm" + good[2:],  # another multihash prefix
                good.replace("1", "0"),  # '0' is not base58
                "12D3KooW",
                good.lower(),
            ]
        )
        | st.text(alphabet=st.characters(max_codepoint=127), max_size=60).filter(
            lambda t: not t.startswith("12D3KooW")
        )
        | JSON.filter(lambda v: not isinstance(v, str))
    )


@st.composite
def peers_frame(
    draw: st.DrawFn, me: PeerId, sender: PeerId, sink: int, honeypot: int
) -> tuple[dict[str, Any], dict[PeerId, Address]]:
    """A ``peers`` frame and the candidates the node should take from it.

    Well-formed entries point at ``sink`` (or a few other loopback forms); every malformed one,
    and every entry naming the node or the sender, points at ``honeypot``.
    """
    entries: list[Any] = []
    expected: dict[PeerId, Address] = {}
    hp = f"127.0.0.1:{honeypot}"
    for _ in range(draw(st.integers(0, 30))):
        kind = draw(
            st.sampled_from(["good", "good", "bad_id", "bad_addr", "self", "junk", "missing"])
        )
        good = str(draw(st.sampled_from(POOL)))
        if kind == "good":
            host = draw(st.sampled_from(["127.0.0.1", "[::ffff:127.0.0.1]", "127.0.0.1"]))
            extra = draw(st.dictionaries(st.text(max_size=4), JSON, max_size=2))
            entries.append({**extra, "id": good, "addr": f"{host}:{sink}"})
            if len(entries) <= MAX_PEERS:
                expected[PeerId(good)] = Address(host=host, port=sink)
        elif kind == "bad_id":
            entries.append({"id": draw(_bad_ids(good)), "addr": hp})
        elif kind == "bad_addr":
            addr = draw(
                st.sampled_from(
                    [
                        "",
                        "127.0.0.1",  # no port
                        f"127.0.0.1:{honeypot}x",
                        "127.0.0.1:0",
                        "127.0.0.1:65536",
                        "127.0.0.1:-1",
                        f":{honeypot}",  # no host
                        "a" * 254 + f":{honeypot}",  # host too long
                        "127.0.0.1:" + "9" * 5000,  # a port of 5000 digits
                    ]
                )
                | st.integers().map(str)
            )
            entries.append({"id": good, "addr": addr})
        elif kind == "self":
            entries.append({"id": str(draw(st.sampled_from([me, sender]))), "addr": hp})
        elif kind == "missing":
            entries.append(draw(st.sampled_from([{"id": good}, {"addr": hp}, {}])))
        else:
            entries.append(draw(JSON))
    message: dict[str, Any] = {"type": "peers", "peers": entries}
    if draw(st.integers(0, 9)) == 0:  # not a list at all: the previous set is dropped
        message["peers"] = draw(JSON.filter(lambda v: not isinstance(v, list)))
        expected = {}
    return message, expected


@st.composite
def scenario(draw: st.DrawFn, me: PeerId, sender: PeerId, sink: int, honeypot: int) -> Scenario:
    result = Scenario()
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            message, expected = draw(peers_frame(me, sender, sink, honeypot))
            encoded = json_body(message)
            if len(encoded) > MAX_FRAME:
                continue  # an over-long frame ends the connection; tested on its own below
            result.frames.append(encoded)
            result.expected = expected
        else:
            kind = draw(
                st.sampled_from(["ping", "hello", "proof", "refuse", "PEERS", "peers2"])
                | st.text(max_size=12).filter(lambda t: t not in ("bye", "peers"))
            )
            body = draw(st.dictionaries(st.text(max_size=6), JSON, max_size=4))
            result.frames.append(json_body({**body, "type": kind}))
    return result


class Peer:
    """The authenticated hostile peer: connect, handshake, send frames, hang up."""

    def __init__(self, live: LiveNode) -> None:
        self.live = live
        self.identity = Identity.generate()

    def exchange(self, frames: list[bytes], check: Any) -> None:
        live = self.live

        async def run() -> Any:
            session = await authenticate(live.node.port, self.identity)
            try:
                for data in frames:
                    await session.send_bytes(data, 1.0)
                await anyio.sleep(SETTLE)
                return check()
            finally:
                await session.aclose()

        live.call(run)
        # gone: the node drops the connection and what this peer announced
        assert live.wait_until(lambda: not live.node.connections.connected())


def _table(live: LiveNode) -> dict[str, tuple[PeerId | None, tuple[Address, ...]]]:
    return {k: (p.peer_id, tuple(p.addresses)) for k, p in live.node.table.merged().items()}


def _check(live: LiveNode, peer: Peer, expected: dict[PeerId, Address], honeypot: Listener) -> None:
    node = live.node
    assert set(node.connections.connected()) <= {peer.identity.peer_id}, (
        "connected to an announced peer"
    )
    table = _table(live)
    want = {str(pid): (pid, (addr,)) for pid, addr in expected.items()}
    assert table == want
    for key, peer_entry in node.table.merged().items():
        assert peer_entry.peer_id is not None and PeerId.parse(str(peer_entry.peer_id)) == key
        assert peer_entry.peer_id not in (node.peer_id, peer.identity.peer_id)
        assert peer_entry.sources == {"exchange"}
    assert honeypot.accepted == 0, "the node dialed an address given only in a malformed entry"


def test_hostile_peers_frames_and_unknown_types() -> None:
    """Random peers frames and unknown frame types from an authenticated peer.

    Cases: CASES_PER_TARGET (100).
    """
    with listeners(2) as (sink, honeypot), LiveNode() as live:
        peer = Peer(live)

        @settings(
            max_examples=CASES_PER_TARGET,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(scenario(live.node.peer_id, peer.identity.peer_id, sink.port, honeypot.port))
        def target(case: Scenario) -> None:
            live.ensure_alive()
            peer.exchange(case.frames, lambda: _check(live, peer, case.expected, honeypot))
            live.check_alive()
            assert _table(live) == {}, "what a disconnected peer announced must be forgotten"

        target()
        assert live.real_peer_connects() < 5.0


def test_more_entries_than_fit_or_are_read() -> None:
    """Deterministic sizes: 10,000 entries (over the 16 KiB message limit: the connection is closed),
    5,000 junk entries that just fit, and 150 well-formed entries (only the first 100 are read)."""
    with listeners(2) as (sink, honeypot), LiveNode() as live:
        peer = Peer(live)
        ids = [Identity.generate().peer_id for _ in range(150)]
        many = [{"id": str(pid), "addr": f"127.0.0.1:{sink.port}"} for pid in ids]
        assert len(json.dumps({"type": "peers", "peers": many})) < MAX_FRAME
        expected = {pid: Address(host="127.0.0.1", port=sink.port) for pid in ids[:MAX_PEERS]}
        peer.exchange(
            [json_body({"type": "peers", "peers": many})],
            lambda: _check(live, peer, expected, honeypot),
        )
        junk = json_body({"type": "peers", "peers": [0] * 5000})
        assert len(junk) < MAX_FRAME
        peer.exchange([junk], lambda: _check(live, peer, {}, honeypot))

        huge = {
            "type": "peers",
            "peers": [{"id": str(POOL[0]), "addr": f"127.0.0.1:{honeypot.port}"}] * 10_000,
        }

        async def oversized() -> None:
            session = await authenticate(live.node.port, peer.identity)
            try:  # as much of it as a frame can hold: more than a message may be
                with contextlib.suppress(*CLOSED_ERRORS):
                    await session.send_bytes(json_body(huge)[: MAX_FRAME + 1], 1.0)
                await read_until_closed(session._stream, 2.0)
            finally:
                await session.aclose()

        live.call(oversized)
        assert live.wait_until(lambda: not live.node.connections.connected())
        live.check_alive()
        assert _table(live) == {} and honeypot.accepted == 0
        assert live.real_peer_connects() < 5.0


# -- regression: a bug this suite found, now fixed ----------------------------------------------------------------------------------


def _fails_idna(host: str) -> bool:
    """True if anyio cannot even encode ``host`` for getaddrinfo (so no DNS query is sent)."""
    try:
        idna.encode(host, uts46=True)
    except idna.IDNAError:
        return True
    except UnicodeError:
        return True
    return False


def _hosts() -> Iterator[str]:
    yield "é" * 64  # a label over 63 characters
    yield "\u2603.example"  # a disallowed code point


B5 = (
    "B5: Node._dial (node.py:483-505) catches HandshakeError/TimeoutError/OSError/stream errors "
    "only; anyio.connect_tcp raises idna.IDNAError (a UnicodeError/ValueError) for a host name "
    "IDNA cannot encode, and exchange.read accepts any host string, so one 'peers' frame from an "
    "authenticated peer naming such a host kills the node's task group: the node stops"
)


def test_fixed_bug_peer_announcing_an_unencodable_host_kills_the_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cases: BUG_CASES (10): a well-formed id with a non-ASCII host IDNA cannot encode.

    conftest's ``dial_only_loopback`` guard refuses such a host with an OSError before anyio
    sees it, which hides the bug; here the real ``connect_tcp`` gets the hosts that cannot leave
    this machine (loopback, and names IDNA cannot encode: they fail before any DNS query).
    """
    real_connect = anyio_sockets.connect_tcp

    async def guarded(remote_host: Any, remote_port: int, **kwargs: Any) -> Any:
        host = str(remote_host)
        try:
            local = ipaddress.ip_address(host).is_loopback
        except ValueError:
            local = host == "localhost" or _fails_idna(host)
        if not local:
            raise OSError(f"hostile-suite guard: refusing to dial {host}:{remote_port}")
        return await real_connect(remote_host, remote_port, **kwargs)

    monkeypatch.setattr(anyio, "connect_tcp", guarded)
    hosts = st.sampled_from(list(_hosts())) | st.text(
        alphabet=st.characters(min_codepoint=0x80, exclude_categories=["Cs"]),
        min_size=1,
        max_size=80,
    ).filter(lambda h: ":" not in h and _fails_idna(h))
    with LiveNode() as live:
        peer = Peer(live)

        @settings(max_examples=BUG_CASES, deadline=None, phases=[Phase.generate], database=None)
        @given(hosts)
        def target(host: str) -> None:
            live.ensure_alive()

            async def send() -> None:
                session = await authenticate(live.node.port, peer.identity)
                try:
                    entry = {"id": str(POOL[0]), "addr": f"{host}:5"}
                    await session.send({"type": "peers", "peers": [entry]}, 1.0)
                    await anyio.sleep(0.5)
                finally:
                    await session.aclose()

            live.call(send)
            live.check_alive("the node stopped serving after a peers frame")

        target()
