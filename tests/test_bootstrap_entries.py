"""The bootstrap entry parser and the config validation built on it.

Why: a peer list is typed by hand; a bad entry must fail loudly with a message that quotes it and
says which part is wrong, wherever it came from (file, env, flag), and never be dropped silently.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exo_discovery_bootstrap import BadEntry, BootstrapConfig, parse_entry
from exo_discovery_core import ConfigError, PeerId
from exo_discovery_core.config import ConfigSource
from exo_discovery_core.identity import Identity

PEER = Identity.generate().peer_id


@pytest.mark.parametrize(
    ("text", "kind", "host", "port"),
    [
        ("/ip4/10.0.0.2/tcp/52417", "ip4", "10.0.0.2", 52417),
        ("/ip6/fd00::2/tcp/52417", "ip6", "fd00::2", 52417),
        ("/ip6/FD00:0::2/tcp/1", "ip6", "fd00::2", 1),
        ("/dns/gpu-box.lan/tcp/52417", "dns", "gpu-box.lan", 52417),
        ("/dns4/Example.COM./tcp/80", "dns4", "example.com", 80),
        ("/dns6/localhost/tcp/65535", "dns6", "localhost", 65535),
        ("10.0.0.2:52417", "ip4", "10.0.0.2", 52417),
        ("gpu-box.lan:52417", "dns", "gpu-box.lan", 52417),
        ("localhost:1", "dns", "localhost", 1),
        ("[fd00::2]:52417", "ip6", "fd00::2", 52417),
        ("[::1]:52417", "ip6", "::1", 52417),
        ("  /ip4/10.0.0.2/tcp/52417/  ", "ip4", "10.0.0.2", 52417),
    ],
)
def test_valid_forms_parse(text: str, kind: str, host: str, port: int) -> None:
    entry = parse_entry(text)
    assert (entry.kind, entry.host, entry.port, entry.peer_id) == (kind, host, port, None)
    assert entry.is_name == kind.startswith("dns")
    assert parse_entry(entry.multiaddr).multiaddr == entry.multiaddr  # canonical form round-trips


@pytest.mark.parametrize(
    "prefix",
    [
        "/ip4/10.0.0.2/tcp/52417",
        "/ip6/fd00::2/tcp/52417",
        "/dns/gpu-box.lan/tcp/52417",
        "/dns4/gpu-box.lan/tcp/52417",
        "/dns6/gpu-box.lan/tcp/52417",
    ],
)
@pytest.mark.parametrize("proto", ["p2p", "ipfs"])
def test_peer_id_is_carried(prefix: str, proto: str) -> None:
    entry = parse_entry(f"{prefix}/{proto}/{PEER}")
    assert entry.peer_id == PEER
    assert isinstance(entry.peer_id, PeerId)
    assert entry.multiaddr == f"{prefix}/p2p/{PEER}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/ip4/10.0.0.999/tcp/52417", "'10.0.0.999' is not an IPv4 address"),
        ("/ip4/fd00::1/tcp/52417", "'fd00::1' is not an IPv4 address"),
        ("/ip6/10.0.0.1/tcp/52417", "'10.0.0.1' is not an IPv6 address"),
        ("10.0.0:52417", "'10.0.0' is not an IPv4 address"),
        ("[fd00::zz]:52417", "'fd00::zz' is not an IPv6 address"),
        ("/ip4/10.0.0.2", "missing port"),
        ("/ip4/10.0.0.2/tcp", "missing port"),
        ("10.0.0.2", "missing port (expected 10.0.0.2:PORT)"),
        ("10.0.0.2:", "missing port"),
        ("[fd00::2]", "missing port (expected [IPv6]:PORT)"),
        ("fd00::2", "IPv6 needs brackets"),
        ("/ip4/10.0.0.2/tcp/0", "port 0 is out of range (1-65535)"),
        ("/ip4/10.0.0.2/tcp/70000", "port 70000 is out of range (1-65535)"),
        ("10.0.0.2:70000", "port 70000 is out of range (1-65535)"),
        ("[::1]:0", "port 0 is out of range (1-65535)"),
        ("10.0.0.2:http", "port 'http' is not a number"),
        ("/ip4/10.0.0.2/udp/52417", "protocol /udp/ is not supported here"),
        ("/foo/10.0.0.2/tcp/52417", "unknown protocol /foo/"),
        ("/ip4/10.0.0.2/foo/52417", "unknown protocol /foo/"),
        ("/ip4/10.0.0.2/tcp/52417/ws", "protocol /ws/ is not supported here"),
        ("/dnsaddr/bootstrap.libp2p.io/tcp/1", "protocol /dnsaddr/ is not supported here"),
        (
            "/ip4/10.0.0.2/tcp/52417/p2p/xyz",
            "bad peer id: peer id 'xyz' is not the id of an Ed25519",
        ),
        (
            "/ip4/10.0.0.2/tcp/52417/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
            "bad peer id",
        ),  # an RSA-era id: valid multihash, not Ed25519
        ("/ip4/10.0.0.2/tcp/52417/p2p/0OIl", "bad peer id: peer id '0OIl' is not base58"),
        ("/ip4/10.0.0.2/tcp/52417/p2p", "/p2p/ needs a peer id"),
        (f"/ip4/10.0.0.2/tcp/52417/p2p/{PEER}/extra", "unexpected /extra after the peer id"),
        ("", "empty entry"),
        ("   ", "empty entry"),
        ("!!garbage!!", "'!!garbage!!' is not a valid DNS name"),
        ("/dns/under_score/tcp/1", "'under_score' is not a valid DNS name"),
        ("/dns/10.0.0.2/tcp/1", "is an IP address, not a DNS name"),
        ("//ip4/10.0.0.2", "has an empty component"),
        ("a b:1", "contains whitespace"),
        (":52417", "missing host"),
    ],
)
def test_bad_forms_have_their_own_message(text: str, expected: str) -> None:
    with pytest.raises(BadEntry) as info:
        parse_entry(text)
    message = str(info.value)
    assert message.startswith(f"bad bootstrap peer {text.strip()!r}: "), message
    assert expected in message, message
    assert info.value.fix  # doctor shows a fix for every bad entry


def test_unsupported_and_unknown_protocols_are_told_apart() -> None:
    """/udp/ is a real protocol we do not dial; /foo/ is a typo; the user needs to know which."""
    with pytest.raises(BadEntry) as udp_info:
        parse_entry("/ip4/1.2.3.4/udp/1")
    with pytest.raises(BadEntry) as foo_info:
        parse_entry("/ip4/1.2.3.4/foo/1")
    udp, foo = str(udp_info.value), str(foo_info.value)
    assert "not supported" in udp and "unknown" not in udp
    assert "unknown protocol /foo/" in foo


# -- config validation (the core's ConfigSource, as the node runs it) --------------------------


def _validate(table: dict[str, object] | None = None, **kwargs: object) -> BootstrapConfig:
    source = ConfigSource(**kwargs)  # type: ignore[arg-type]
    config = source.plugin_config_from("bootstrap", BootstrapConfig, table or {})
    assert isinstance(config, BootstrapConfig)
    return config


def test_config_accepts_lists_from_file_env_and_flag() -> None:
    peers = f"/ip4/10.0.0.2/tcp/52417/p2p/{PEER},gpu-box.lan:52417, [::1]:9"
    by_env = _validate(env={"EXO_BOOTSTRAP_PEERS": peers})
    by_flag = _validate(env={}, flags={"--bootstrap-peers": peers})
    by_file = _validate({"peers": [p.strip() for p in peers.split(",")]}, env={})
    assert by_env.peers == by_flag.peers == by_file.peers
    assert [e.kind for e in by_env.entries] == ["ip4", "dns", "ip6"]
    assert by_env.entries[0].peer_id == PEER


def test_bad_env_entry_fails_naming_env_and_entry() -> None:
    with pytest.raises(ConfigError) as info:
        _validate(env={"EXO_BOOTSTRAP_PEERS": "10.0.0.2:52417,10.0.0.3:70000"})
    message = str(info.value)
    assert message.startswith("env EXO_BOOTSTRAP_PEERS")
    assert "'10.0.0.3:70000'" in message and "port 70000 is out of range" in message
    assert "(plugin 'bootstrap')" in message


def test_bad_flag_entry_fails_naming_flag() -> None:
    with pytest.raises(ConfigError) as info:
        _validate(env={}, flags={"--bootstrap-peers": "/ip4/10.0.0.2/udp/1"})
    message = str(info.value)
    assert message.startswith("flag --bootstrap-peers")
    assert "'/ip4/10.0.0.2/udp/1'" in message and "/udp/ is not supported" in message


def test_bad_file_entries_are_all_reported_with_their_key() -> None:
    with pytest.raises(ConfigError) as info:
        _validate(
            {"peers": ["/ip4/1.2.3.999/tcp/1", "10.0.0.2:1", "/ip4/10.0.0.2/tcp/1/p2p/nope"]},
            file=Path("exo.toml"),
            env={},
        )
    lines = str(info.value).splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("exo.toml [plugins.bootstrap] peers")
    assert "'1.2.3.999' is not an IPv4 address" in lines[0]
    assert "bad peer id" in lines[1] and "/p2p/nope" in lines[1]


def test_empty_env_means_no_peers_and_no_file() -> None:
    config = _validate(env={"EXO_BOOTSTRAP_PEERS": "", "EXO_BOOTSTRAP_PEERS_FILE": ""})
    assert config.peers == () and config.peers_file is None


def test_unknown_key_and_bad_interval_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        _validate({"peer": ["10.0.0.2:1"]}, env={})
    with pytest.raises(ConfigError, match="env EXO_BOOTSTRAP_REFRESH_INTERVAL"):
        _validate(env={"EXO_BOOTSTRAP_REFRESH_INTERVAL": "0"})
