"""The mdns plugin's own run, in this process, over loopback multicast, without root.

python-zeroconf's own tests work this way: zeroconf bound to 127.0.0.1 only, a service type of
the test's own. So the plugin's core (register, browse, resolve, the record rules, the goodbye)
is covered in every run, not only by the root-only namespace tests (tests/test_mdns_netns.py),
which alone show real multicast between hosts. The runs announce 192.0.2.77 (a documentation
address, RFC 5737): it is only carried in the records, never dialed, and nothing leaves lo.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing

import anyio
import pytest

from exo_discovery_core import Address, DiscoveryContext, PeerCandidate, PeerSets, hookimpl
from exo_discovery_core.testing import discovering, node_info
from exo_discovery_mdns.config import MdnsConfig
from exo_discovery_mdns.interfaces import Snapshot
from exo_discovery_mdns.run import MdnsRun

pytestmark = pytest.mark.anyio
ANNOUNCED = "192.0.2.77"
DEADLINE = 15.0


def loopback(selection: str | Sequence[str], ip_version: str) -> Snapshot:
    """This host as the run sees it: zeroconf on 127.0.0.1 only, announcing ANNOUNCED."""
    return Snapshot(bind=("127.0.0.1",), announce=(ANNOUNCED,))


class OnLoopback:
    """The mdns plugin, its run given the loopback view of this host's interfaces."""

    @hookimpl
    def config_model(self) -> type[MdnsConfig]:
        return MdnsConfig

    @hookimpl
    async def discover_peers(self, context: DiscoveryContext[MdnsConfig]) -> PeerSets:
        async with aclosing(MdnsRun(context, interfaces=loopback).run()) as sets:
            async for peers in sets:
                yield peers


async def until(
    sets: AsyncIterator[frozenset[PeerCandidate]],
    wanted: Callable[[frozenset[PeerCandidate]], bool],
    seen: list[frozenset[PeerCandidate]],
) -> frozenset[PeerCandidate]:
    with anyio.fail_after(DEADLINE):
        while True:
            peers = frozenset(await anext(sets))
            seen.append(peers)
            if wanted(peers):
                return peers


class Heard(logging.Handler):
    """Sets ``event`` when a record whose message contains ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


async def test_two_runs_find_each_other_other_namespaces_are_not_peers_a_goodbye_removes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = {
        "service_type": f"_t{secrets.token_hex(4)}._tcp.local.",  # this test's own
        "ip_version": "v4",
        "interface_check_interval": 3600,
    }
    a, b = node_info(port=40001, namespace="loop"), node_info(port=40002, namespace="loop")
    other = node_info(port=40003, namespace="elsewhere")
    foreign = Heard("namespace 'elsewhere'")
    caplog.set_level(logging.INFO, logger="exo_discovery.plugin.mdns-b")
    logging.getLogger("exo_discovery.plugin.mdns-b").addHandler(foreign)
    seen: list[frozenset[PeerCandidate]] = []
    try:
        async with discovering(OnLoopback(), config, name="mdns-b", node=b) as b_sets:
            assert await until(b_sets, lambda _: True, seen) == frozenset()  # nothing yet
            async with (
                discovering(OnLoopback(), config, name="mdns-a", node=a) as a_sets,
                discovering(OnLoopback(), config, name="mdns-c", node=other) as c_sets,
            ):
                await anext(a_sets)
                await anext(c_sets)
                found = await until(b_sets, lambda s: bool(s), seen)
                [peer] = found
                assert peer.peer_id == a.peer_id
                assert peer.addresses == (Address(host=ANNOUNCED, port=a.port),)
                assert dict(peer.metadata)["mdns_name"].endswith(config["service_type"])
                with anyio.fail_after(DEADLINE):
                    await foreign.event.wait()  # B has heard C, and said why it is no peer
            # A and C closed their runs: A's goodbye takes it out of B's set, within moments
            await until(b_sets, lambda s: not s, seen)
    finally:
        logging.getLogger("exo_discovery.plugin.mdns-b").removeHandler(foreign)
    assert all(other.peer_id not in {p.peer_id for p in peers} for peers in seen)


async def test_advertise_addresses_are_what_mdns_announces() -> None:
    """[node] advertise_addresses (a container behind a port mapping): the records carry the
    given address and port, not the interfaces'."""
    config = {
        "service_type": f"_t{secrets.token_hex(4)}._tcp.local.",
        "ip_version": "v4",
        "interface_check_interval": 3600,
    }
    a = dataclasses.replace(
        node_info(port=40011, namespace="adv"),
        listen_addresses=(Address(host="192.0.2.99", port=7100),),
        advertised_explicitly=True,
    )
    b = node_info(port=40012, namespace="adv")
    seen: list[frozenset[PeerCandidate]] = []
    async with (
        discovering(OnLoopback(), config, name="mdns-b", node=b) as b_sets,
        discovering(OnLoopback(), config, name="mdns-a", node=a) as a_sets,
    ):
        await anext(a_sets)
        [peer] = await until(b_sets, lambda s: bool(s), seen)
    assert peer.peer_id == a.peer_id
    assert peer.addresses == (Address(host="192.0.2.99", port=7100),)
