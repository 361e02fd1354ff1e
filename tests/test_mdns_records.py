"""The mdns plugin's rules without a network: TXT parsing, namespace filter, self-skip, bad ids,
interface selection and config errors. The same rules run in the real-multicast tests."""

from __future__ import annotations

from typing import Any

import ifaddr
import pytest

from exo_discovery_core import ConfigError, PeerCandidate, PeerId
from exo_discovery_core.identity import Identity
from exo_discovery_core.interfacefilter import InterfaceFilter
from exo_discovery_core.testing import make_context
from exo_discovery_mdns import plugin
from exo_discovery_mdns.config import DEFAULT_SERVICE_TYPE, MdnsConfig
from exo_discovery_mdns.interfaces import snapshot
from exo_discovery_mdns.records import (
    Rejected,
    candidate_from_service,
    default_instance_name,
    txt_properties,
)

ME = Identity.generate().peer_id
PEER = Identity.generate().peer_id


def _parse(
    txt: dict[bytes, bytes | None] | None = None,
    addresses: tuple[str, ...] = ("10.0.0.2", "fd00::2"),
    port: int | None = 52417,
    ip_version: str = "all",
) -> PeerCandidate | Rejected:
    properties = {b"id": PEER.encode(), b"ns": b"exo", b"v": b"1"} if txt is None else txt
    return candidate_from_service(
        name=f"box-1234.{DEFAULT_SERVICE_TYPE}",
        properties=properties,
        addresses=addresses,
        port=port,
        own_id=ME,
        namespace="exo",
        ip_version=ip_version,
        server="box-1234.local.",
    )


def test_our_txt_record_parses_back_into_us() -> None:
    txt = {k.encode(): v.encode() for k, v in txt_properties(PEER, "exo").items()}
    assert txt == {b"id": PEER.encode(), b"ns": b"exo", b"v": b"1"}
    candidate = _parse(txt)
    assert isinstance(candidate, PeerCandidate)
    assert candidate.peer_id == PEER
    assert [str(a) for a in candidate.addresses] == ["10.0.0.2:52417", "[fd00::2]:52417"]
    assert dict(candidate.metadata)["hostname"] == "box-1234.local"


@pytest.mark.parametrize(
    ("txt", "reason", "quiet"),
    [
        ({b"id": PEER.encode(), b"ns": b"other", b"v": b"1"}, "namespace 'other'", True),
        ({b"id": PEER.encode(), b"v": b"1"}, "namespace None", True),
        ({b"id": ME.encode(), b"ns": b"exo", b"v": b"1"}, "ourselves", True),
        ({b"id": b"12D3KooWnope", b"ns": b"exo", b"v": b"1"}, "bad peer id", False),
        ({b"ns": b"exo", b"v": b"1"}, "bad peer id: peer id is empty", False),
        ({b"id": PEER.encode(), b"ns": b"exo", b"v": b"2"}, "record version '2'", False),
        ({b"id": PEER.encode(), b"ns": b"exo"}, "record version None", False),
    ],
)
def test_records_that_are_not_peers_say_why(
    txt: dict[bytes, bytes | None], reason: str, quiet: bool
) -> None:
    result = _parse(txt)
    assert isinstance(result, Rejected)
    assert result.reason.startswith(reason), result
    assert result.quiet is quiet


@pytest.mark.parametrize(
    ("theirs", "ours", "accepted"),
    [
        ((), (), True),
        (("aaaa",), ("aaaa",), True),
        (("bbbb", "aaaa"), ("aaaa", "bbbb"), True),  # mid-rotation: their primary we accept
        (("aaaa",), (), False),  # they have a key, we have none
        ((), ("aaaa",), False),  # we have a key, they have none
        (("cccc",), ("aaaa", "bbbb"), False),  # another cluster
    ],
)
def test_nodes_whose_cluster_key_we_do_not_accept_are_skipped(
    theirs: tuple[str, ...], ours: tuple[str, ...], accepted: bool
) -> None:
    """The TXT record carries the fingerprint of the key a node dials with, never the key."""
    txt = txt_properties(PEER, "exo", theirs)
    assert txt.get("ck") == (theirs[0] if theirs else None)
    result = candidate_from_service(
        name=f"box-1234.{DEFAULT_SERVICE_TYPE}",
        properties=txt,
        addresses=("10.0.0.2",),
        port=52417,
        own_id=ME,
        namespace="exo",
        key_fingerprints=ours,
    )
    assert isinstance(result, PeerCandidate) is accepted
    if not accepted:
        assert isinstance(result, Rejected) and result.quiet
        assert "cluster key" in result.reason


def test_addresses_follow_ip_version_and_unusable_ones_are_dropped() -> None:
    mixed = ("10.0.0.2", "fd00::2", "127.0.0.1", "::1", "fe80::1", "fe80::1%3")
    v4 = _parse(addresses=mixed, ip_version="v4")
    v6 = _parse(addresses=mixed, ip_version="v6")
    assert isinstance(v4, PeerCandidate) and isinstance(v6, PeerCandidate)
    assert [a.host for a in v4.addresses] == ["10.0.0.2"]
    assert [a.host for a in v6.addresses] == ["fd00::2", "fe80::1%3"]  # link-local only scoped
    assert isinstance(_parse(addresses=("127.0.0.1",)), Rejected)
    assert isinstance(_parse(port=0), Rejected)


def test_instance_names_are_readable_unique_and_valid_labels() -> None:
    name = default_instance_name(PeerId(PEER), "My Mac.local")
    assert name == f"My-Mac-{PEER[-8:]}"
    assert len(default_instance_name(PEER, "x" * 100)) <= 63


def _adapter(name: str, index: int, *ips: str) -> ifaddr.Adapter:
    entries = [
        ifaddr.IP((ip, 0, index) if ":" in ip else ip, 64 if ":" in ip else 24, name) for ip in ips
    ]
    return ifaddr.Adapter(name, name, entries, index=index)


ADAPTERS = [
    _adapter("lo", 1, "127.0.0.1", "::1"),
    _adapter("eth0", 2, "10.0.0.5", "fd00::5", "fe80::5"),
    _adapter("wg0", 3, "100.64.0.5"),
]


def test_interface_selection_by_all_name_ip_and_version() -> None:
    everything = snapshot("all", "all", ADAPTERS)
    assert everything.announce == ("10.0.0.5", "100.64.0.5", "fd00::5")
    assert everything.bind == ("10.0.0.5", "100.64.0.5", "127.0.0.1", 2)
    assert snapshot(("eth0",), "v4", ADAPTERS).announce == ("10.0.0.5",)
    assert snapshot(("100.64.0.5",), "all", ADAPTERS).bind == ("100.64.0.5",)
    assert snapshot(("eth0",), "v6", ADAPTERS).bind == (2,)
    missing = snapshot(("wlan0", "eth0"), "all", ADAPTERS)
    assert missing.unmatched == ("wlan0",)


def test_node_interfaces_decide_where_mdns_runs() -> None:
    """[node] exclude_interfaces (docker* by default) keeps a container bridge out of mDNS;
    [node] interfaces narrows it; loopback stays for nodes on one host."""
    adapters = [*ADAPTERS, _adapter("docker0", 4, "172.17.0.1")]
    assert (
        "172.17.0.1" not in snapshot("all", "all", adapters, node_interfaces=InterfaceFilter()).bind
    )
    assert "172.17.0.1" in snapshot("all", "all", adapters).bind  # without a node filter: all
    only_eth = snapshot("all", "all", adapters, node_interfaces=InterfaceFilter(include=("eth*",)))
    assert only_eth.announce == ("10.0.0.5", "fd00::5")
    assert only_eth.bind == ("10.0.0.5", "127.0.0.1", 2)


def test_config_defaults_flags_and_errors_name_the_key() -> None:
    config = make_context(plugin, {}).config
    assert isinstance(config, MdnsConfig)
    assert (config.interfaces, config.ip_version, config.service_type) == (
        "all",
        "all",
        DEFAULT_SERVICE_TYPE,
    )
    env: dict[str, Any] = {"EXO_MDNS_INTERFACES": "eth0, wlan0", "EXO_MDNS_IP_VERSION": "v4"}
    from_env = make_context(plugin, {}, env=env).config
    assert from_env.interfaces == ("eth0", "wlan0") and from_env.ip_version == "v4"
    assert make_context(plugin, {}, env={"EXO_MDNS_INTERFACES": "all"}).config.interfaces == "all"
    for table, key in [
        ({"ip_version": "v5"}, "ip_version"),
        ({"service_type": "_much-too-long-name._tcp.local."}, "service_type"),
        ({"interfaces": ["all", "eth0"]}, "interfaces"),
        ({"instance_name": "has.dot"}, "instance_name"),
        ({"record_ttl": 1}, "record_ttl"),
    ]:
        with pytest.raises(ConfigError, match=rf"\[plugins.mdns\] {key}"):
            make_context(plugin, table, name="mdns")
