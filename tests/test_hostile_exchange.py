"""An authenticated peer sends hostile exchange messages after the handshake to ONE real node.

The peer passes the real handshake (the core's own code on the client side), then sends random
``peers`` lists (good ids, bad ids, the node's and its own id, junk) and records, alone in
``records`` messages or riding in a ``peers`` message after its list
(records of the listed peers signed by their own keys, with usable and unusable addresses and
random sequence numbers; records signed by the wrong key, tampered, truncated, or not base64;
junk), and unknown message types. The node must not crash; must never dial an address that came
only in a record that does not verify (they all point at a "honeypot" listener that must see no
connection); must never even try an address of a kind no peer may give (DNS names, unspecified,
multicast, link-local, reserved: every dial attempt is recorded); must connect to no one (no
announced peer answers with its id); and its table must hold exactly what the documented rules
give, computed here by an independent model: the peers of the last list (valid ids, the node and
the sender skipped, the first ``exchange_peers_per_sender``), each at the usable addresses of the
newest valid record received for it while it was listed.

Cases per target: ``CASES_PER_TARGET`` (100) for the random messages; ``BUG_CASES`` (10) for the
regression target of a bug this suite found (fixed).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import idna
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from exo_discovery_core import records, transport
from exo_discovery_core.identity import Identity, PeerId
from exo_discovery_core.models import Address
from exo_discovery_core.routes import usable_from_peer
from exo_discovery_core.wire import MAX_FRAME
from tests.support.hostile import (
    CLOSED_ERRORS,
    WRITE_WITHIN,
    Listener,
    LiveNode,
    authenticate,
    json_body,
    json_values,
    listeners,
    read_until_closed,
)

CASES_PER_TARGET = 100
BUG_CASES = 10
SETTLE = 0.1  # seconds more, after the table is as expected, for any dial it would cause
TABLE_WITHIN = 10.0  # seconds for the table to become what the messages say (a busy machine)
POOL = [Identity.generate() for _ in range(12)]  # well-formed peers, whose keys sign records
PER_SENDER = 64  # the default of exchange_peers_per_sender
REAL_CONNECT = transport.connect  # before conftest's loopback guard replaces it
UNUSABLE = ["0.0.0.0", "224.0.0.251", "169.254.169.254", "fe80::1", "240.0.0.1", "[::]",
            "255.255.255.255", "example.com", "localhost", "ff02::1"]  # fmt: skip


@pytest.fixture
def dials(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every host the node tries to dial (the loopback guard of conftest still applies)."""
    attempts: list[str] = []
    guarded = transport.connect

    async def record(remote_host: Any, remote_port: int, **kwargs: Any) -> Any:
        attempts.append(str(remote_host))
        return await guarded(remote_host, remote_port, **kwargs)

    monkeypatch.setattr(transport, "connect", record)
    yield attempts


def signed(identity: Identity, seq: int, addrs: list[str], signer: Identity | None = None) -> str:
    """A record of ``identity`` (signed by ``signer``, its own key unless given), base64."""
    payload = {
        "addrs": addrs,
        "boot": "00" * 16,
        "meta": {},
        "peer_id": str(identity.peer_id),
        "protocol": "exo-discovery/2",
        "seq": seq,
    }
    envelope = records.seal(signer or identity, json.dumps(payload).encode())
    return base64.b64encode(envelope).decode()


@dataclass
class Model:
    """The documented rules, written again independently: what the table must hold."""

    me: PeerId
    sender: PeerId
    listed: list[PeerId] = field(default_factory=list)
    newest: dict[PeerId, tuple[int, tuple[Address, ...]]] = field(default_factory=dict)

    def peers(self, entries: Any) -> None:
        wanted: list[PeerId] = []
        for entry in entries[:100] if isinstance(entries, list) else []:
            pid = next((i.peer_id for i in POOL if str(i.peer_id) == entry), None)
            if pid is not None and pid not in wanted and len(wanted) < PER_SENDER:
                wanted.append(pid)
        for gone in set(self.listed) - set(wanted):
            self.newest.pop(gone, None)
        self.listed = wanted

    def record(self, pid: PeerId, seq: int, addrs: list[str]) -> None:
        if pid in self.listed and seq > self.newest.get(pid, (0, ()))[0]:
            self.newest[pid] = (seq, tuple(_usable(addrs)))

    def table(self) -> dict[str, tuple[PeerId, tuple[Address, ...]]]:
        return {
            str(pid): (pid, self.newest[pid][1])
            for pid in self.listed
            if pid in self.newest and self.newest[pid][1]
        }


def _usable(addrs: list[str]) -> list[Address]:
    out: list[Address] = []
    for text in addrs:
        host, _, port = text.rpartition(":")
        address = Address(host=host, port=int(port))
        if usable_from_peer(address, sender_on_this_host=True) and address not in out:
            out.append(address)
    return out


JSON = json_values(12)


@dataclass
class Scenario:
    frames: list[bytes] = field(default_factory=list)
    model: Model | None = None


@st.composite
def scenario(draw: st.DrawFn, me: Identity, sender: Identity, sink: int, honeypot: int) -> Scenario:
    model = Model(me.peer_id, sender.peer_id)
    result = Scenario(model=model)
    hp = f"127.0.0.1:{honeypot}"
    if draw(st.booleans()):  # half the cases start from a well-formed exchange, then go wild
        listed = [str(i.peer_id) for i in POOL[:4]]
        result.frames.append(json_body({"type": "peers", "peers": listed}))
        model.peers(listed)
        good = [(i, draw(st.integers(1, 20))) for i in POOL[:4]]
        batch = [signed(i, seq, [f"127.0.0.1:{sink}"]) for i, seq in good]
        if draw(st.booleans()):  # the records ride in the list: read after it
            result.frames[-1] = json_body({"type": "peers", "peers": listed, "records": batch})
        else:
            result.frames.append(json_body({"type": "records", "records": batch}))
        for i, seq in good:
            model.record(i.peer_id, seq, [f"127.0.0.1:{sink}"])
    last_list: Any = None  # the body of the last peers message: records may ride in it again
    for n in range(draw(st.integers(1, 6))):
        first = ["peers"] * 3 if n == 0 else []  # records count only for peers listed before
        kind = draw(st.sampled_from([*first, "peers", "records", "records", "other"]))
        if kind == "peers":
            entries: list[Any] = []
            for _ in range(draw(st.integers(0, 20))):
                entries.append(
                    draw(
                        st.sampled_from([str(i.peer_id) for i in POOL[:4]])  # often: with records
                        | st.sampled_from([str(i.peer_id) for i in POOL])
                        | st.sampled_from([str(me.peer_id), str(sender.peer_id), "", "12D3KooW"])
                        | JSON
                    )
                )
            body: Any = entries if draw(st.integers(0, 9)) else draw(JSON)
            result.frames.append(json_body({"type": "peers", "peers": body}))
            model.peers(body)
            last_list = body
        elif kind == "records":
            ride = last_list is not None and draw(st.booleans())  # the same list, with records
            if ride:
                model.peers(last_list)
            batch: list[Any] = []
            for _ in range(draw(st.integers(0, 8))):
                who = draw(st.sampled_from(POOL[:4]) | st.sampled_from(POOL))
                seq = draw(st.integers(1, 20))
                how = draw(st.sampled_from(["good", "good", "forged", "tampered", "cut", "junk"]))
                if how == "good":
                    addrs = [f"127.0.0.1:{sink}"] * min(1, draw(st.integers(0, 3))) + draw(
                        st.lists(st.sampled_from(UNUSABLE).map(lambda h: f"{h}:{sink}"), max_size=3)
                    )
                    batch.append(signed(who, seq, addrs))
                    model.record(who.peer_id, seq, addrs)
                elif how == "forged":  # someone else's key: a stranger speaking for the peer
                    batch.append(signed(who, seq, [hp], signer=draw(st.sampled_from([sender, me]))))
                elif how == "tampered":
                    raw = bytearray(base64.b64decode(signed(who, seq, [hp])))
                    raw[draw(st.integers(0, len(raw) - 1))] ^= 1 << draw(st.integers(0, 7))
                    batch.append(base64.b64encode(bytes(raw)).decode())
                elif how == "cut":
                    text = signed(who, seq, [hp])
                    batch.append(text[: draw(st.integers(0, len(text) - 1))])
                else:
                    batch.append(draw(JSON))
            message = {"type": "peers", "peers": last_list} if ride else {"type": "records"}
            result.frames.append(json_body({**message, "records": batch}))
        else:
            other = draw(
                st.sampled_from(["ping", "hello", "proof", "refuse", "PEERS", "duplicate_identity"])
                | st.text(max_size=12).filter(lambda t: t not in ("bye", "peers", "records"))
            )
            extra = draw(st.dictionaries(st.text(max_size=6), JSON, max_size=4))
            result.frames.append(json_body({**extra, "type": other}))
    return result


class Peer:
    """The authenticated hostile peer: connect, handshake, send frames, hang up."""

    def __init__(self, live: LiveNode) -> None:
        self.live = live
        self.identity = Identity.generate()

    def exchange(self, frames: list[bytes], want: dict[str, Any], check: Any) -> None:
        """Send ``frames``, wait (with a deadline) until the table is ``want``, then ``check``."""
        live = self.live

        async def run() -> Any:
            session = await authenticate(live.node.port, self.identity)
            try:
                for data in frames:
                    await session.send_bytes(data, WRITE_WITHIN)
                with anyio.move_on_after(TABLE_WITHIN):
                    while _table(live) != want:  # noqa: ASYNC110 - the table has no event
                        await anyio.sleep(0.01)
                await anyio.sleep(SETTLE)
                return check()
            finally:
                await session.aclose()

        live.call(run)
        # gone: the node drops the connection and what this peer announced
        assert live.wait_until(lambda: not live.node.connections.connected())


def _table(live: LiveNode) -> dict[str, tuple[PeerId | None, tuple[Address, ...]]]:
    return {k: (p.peer_id, tuple(p.addresses)) for k, p in live.node.table.merged().items()}


def _check(
    live: LiveNode, peer: Peer, want: dict[str, Any], honeypot: Listener, dials: list[str]
) -> None:
    node = live.node
    assert set(node.connections.connected()) <= {peer.identity.peer_id}, "connected to a stranger"
    assert _table(live) == want
    for entry in node.table.merged().values():
        assert entry.peer_id not in (node.peer_id, peer.identity.peer_id)
        assert entry.sources == {"exchange"}
    assert honeypot.accepted == 0, "the node dialed an address from a record that did not verify"
    assert set(dials) <= {"127.0.0.1"}, f"the node tried addresses no peer may give: {dials}"


def test_hostile_exchange_messages_and_unknown_types(dials: list[str]) -> None:
    """Random peers lists, records (good, forged, tampered, cut, junk) and unknown types.

    Cases: CASES_PER_TARGET (100).
    """
    with listeners(2) as (sink, honeypot), LiveNode() as live:
        peer = Peer(live)
        me = Identity.generate()  # stands in for the node's id in lists; the node's own is below
        me_id = live.node.peer_id
        filled: list[int] = []  # the cases whose table was not empty: the model is not vacuous

        @settings(
            max_examples=CASES_PER_TARGET,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(scenario(me, peer.identity, sink.port, honeypot.port))
        def target(case: Scenario) -> None:
            assert case.model is not None
            live.ensure_alive()
            frames = [f.replace(str(me.peer_id).encode(), str(me_id).encode()) for f in case.frames]
            frames = [f for f in frames if len(f) <= MAX_FRAME]
            want = case.model.table()
            filled.extend([1] if want else [])
            peer.exchange(frames, want, lambda: _check(live, peer, want, honeypot, dials))
            live.check_alive()
            assert _table(live) == {}, "what a disconnected peer announced must be forgotten"

        target()
        assert len(filled) >= CASES_PER_TARGET // 10, f"only {len(filled)} cases filled the table"
        assert live.real_peer_connects() < 5.0


def test_an_old_record_never_replaces_a_newer_one_and_a_stranger_cannot_speak_for_a_peer(
    dials: list[str],
) -> None:
    with listeners(2) as (sink, honeypot), LiveNode() as live:
        peer = Peer(live)
        target_peer = POOL[0]
        listed = json_body({"type": "peers", "peers": [str(target_peer.peer_id)]})
        newer = signed(target_peer, 10, [f"127.0.0.1:{sink.port}"])
        older = signed(target_peer, 9, [f"127.0.0.1:{honeypot.port}"])
        forged = signed(target_peer, 11, [f"127.0.0.1:{honeypot.port}"], signer=peer.identity)
        frames = [listed] + [
            json_body({"type": "records", "records": [r]}) for r in (newer, older, forged)
        ]
        want = {
            str(target_peer.peer_id): (
                target_peer.peer_id,
                (Address(host="127.0.0.1", port=sink.port),),
            )
        }
        peer.exchange(frames, want, lambda: _check(live, peer, want, honeypot, dials))


def test_a_flood_of_forged_records_cannot_evict_a_peer_s_record_and_poison_it(
    dials: list[str],
) -> None:
    """After a listed peer's good record, 1,500 distinct records in its name that do not verify
    (its key, another's signature: each checked, and remembered as bad, evicting every record
    checked before), then a forged newer one pointing at the honeypot: the table keeps the
    good record's address, and the good record sent again changes nothing. (Last, another
    peer listed with its record: when the table shows it, every frame before was read.)"""
    with listeners(2) as (sink, honeypot), LiveNode() as live:
        peer = Peer(live)
        target_peer = POOL[1]
        listed = json_body({"type": "peers", "peers": [str(target_peer.peer_id)]})
        good = signed(target_peer, 10, [f"127.0.0.1:{sink.port}"])
        envelope = base64.b64decode(good)
        forged = [  # each distinct: its own (bad) signature
            base64.b64encode(envelope[:-64] + peer.identity.sign(n.to_bytes(4, "big"))).decode()
            for n in range(1500)
        ]
        newer = signed(target_peer, 11, [f"127.0.0.1:{honeypot.port}"], signer=peer.identity)
        frames = [listed, json_body({"type": "records", "records": [good]})]
        frames += [
            json_body({"type": "records", "records": forged[at : at + 20]})
            for at in range(0, len(forged), 20)
        ]
        frames += [json_body({"type": "records", "records": [r]}) for r in (newer, good)]
        last = POOL[2]
        frames.append(json_body({
            "type": "peers", "peers": [str(target_peer.peer_id), str(last.peer_id)],
            "records": [signed(last, 1, [f"127.0.0.1:{sink.port}"])],
        }))  # fmt: skip
        at_sink = (Address(host="127.0.0.1", port=sink.port),)
        want = {str(p.peer_id): (p.peer_id, at_sink) for p in (target_peer, last)}
        checks = records._checked.cache_info().misses
        peer.exchange(frames, want, lambda: _check(live, peer, want, honeypot, dials))
        assert records._checked.cache_info().misses - checks >= len(forged), "not all checked"


def test_more_entries_than_fit_or_are_read(dials: list[str]) -> None:
    """Deterministic sizes: a list of 10,000 ids (far over the 16 KiB frame: the connection is
    closed), 5,000 junk entries that just fit, and 150 well-formed ids with a record each (only
    the first ``exchange_peers_per_sender`` are taken)."""
    with listeners(2) as (sink, honeypot), LiveNode() as live:
        peer = Peer(live)
        many = [Identity.generate() for _ in range(150)]
        ids = [str(i.peer_id) for i in many]
        batches = [many[i : i + 20] for i in range(0, len(many), 20)]
        frames = [json_body({"type": "peers", "peers": ids})] + [
            json_body(
                {
                    "type": "records",
                    "records": [signed(i, 1, [f"127.0.0.1:{sink.port}"]) for i in b],
                }
            )
            for b in batches
        ]
        assert all(len(f) < MAX_FRAME for f in frames)
        want = {
            str(i.peer_id): (i.peer_id, (Address(host="127.0.0.1", port=sink.port),))
            for i in many[:PER_SENDER]
        }
        peer.exchange(frames, want, lambda: _check(live, peer, want, honeypot, dials))
        junk = json_body({"type": "peers", "peers": [0] * 5000})
        assert len(junk) < MAX_FRAME
        peer.exchange([junk], {}, lambda: _check(live, peer, {}, honeypot, dials))

        huge = {"type": "peers", "peers": [str(POOL[0].peer_id)] * 10_000}

        async def oversized() -> None:
            session = await authenticate(live.node.port, peer.identity)
            try:  # as much of it as a frame can hold: more than a message may be
                with contextlib.suppress(*CLOSED_ERRORS):
                    await session.send_bytes(json_body(huge)[: MAX_FRAME + 1], WRITE_WITHIN)
                await read_until_closed(session._stream, WRITE_WITHIN)
            finally:
                await session.aclose()

        live.call(oversized)
        assert live.wait_until(lambda: not live.node.connections.connected())
        live.check_alive()
        assert _table(live) == {} and honeypot.accepted == 0
        assert live.real_peer_connects() < 5.0


# -- regression: a bug this suite found, now fixed ----------------------------------------------


def _fails_idna(host: str) -> bool:
    """True if anyio cannot even encode ``host`` for getaddrinfo (so no DNS query is sent)."""
    try:
        idna.encode(host, uts46=True)
    except (idna.IDNAError, UnicodeError):
        return True
    return False


def _hosts() -> Iterator[str]:
    yield "é" * 64  # a label over 63 characters
    yield "\u2603.example"  # a disallowed code point


B5 = (
    "B5: Node._dial caught HandshakeError/TimeoutError/OSError/stream errors only; anyio.connect_tcp "
    "raises idna.IDNAError (a UnicodeError/ValueError) for a host name IDNA cannot encode, and "
    "the exchange accepted any host string, so one frame from an authenticated peer naming such "
    "a host killed the node's task group. Now no peer may give a name at all."
)


def test_fixed_bug_peer_announcing_an_unencodable_host_kills_the_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cases: BUG_CASES (10): a record (validly signed) with a non-ASCII host IDNA cannot encode.

    conftest's ``dial_only_loopback`` guard refuses such a host with an OSError before anyio
    sees it, which would hide the bug; here the real ``connect_tcp`` gets the hosts that cannot
    leave this machine (loopback, and names IDNA cannot encode: they fail before any DNS query).
    """
    real_connect = REAL_CONNECT

    async def guarded(remote_host: Any, remote_port: int, **kwargs: Any) -> Any:
        host = str(remote_host)
        try:
            local = ipaddress.ip_address(host).is_loopback
        except ValueError:
            local = host == "localhost" or _fails_idna(host)
        if not local:
            raise OSError(f"hostile-suite guard: refusing to dial {host}:{remote_port}")
        return await real_connect(remote_host, remote_port, **kwargs)

    monkeypatch.setattr(transport, "connect", guarded)
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
                    listed = {"type": "peers", "peers": [str(POOL[0].peer_id)]}
                    await session.send_bytes(json_body(listed), WRITE_WITHIN)
                    record = signed(POOL[0], 1, [f"{host}:5"])
                    await session.send_bytes(
                        json_body({"type": "records", "records": [record]}), WRITE_WITHIN
                    )
                    await anyio.sleep(0.5)
                finally:
                    await session.aclose()

            live.call(send)
            live.check_alive("the node stopped serving after a records frame")

        target()
