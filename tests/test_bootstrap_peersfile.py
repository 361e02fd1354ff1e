"""The peers file formats: lines with comments, a JSON list, TOML ``peers = [...]``.

Why: users keep peer lists in whatever their tooling writes; each format must give the same peers,
and a bad entry must be reported with the file and the line it is on.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exo_discovery_bootstrap import BadPeersFile, parse_peers_file
from exo_discovery_bootstrap.peersfile import file_format
from exo_discovery_core.identity import Identity

PEER = Identity.generate().peer_id
EXPECTED = ["/ip4/10.0.0.2/tcp/52417", f"/dns/gpu-box.lan/tcp/52417/p2p/{PEER}", "/ip6/::1/tcp/9"]

FORMS = {
    "peers.txt": (
        "# cluster peers\n"
        "/ip4/10.0.0.2/tcp/52417\n"
        "\n"
        f"   /dns/gpu-box.lan/tcp/52417/p2p/{PEER}   # the big box\n"
        "[::1]:9\n"
    ),
    "peers.json": (
        '[\n  "/ip4/10.0.0.2/tcp/52417",\n'
        f'  "/dns/gpu-box.lan/tcp/52417/p2p/{PEER}",\n  "[::1]:9"\n]\n'
    ),
    "peers.toml": (
        "# cluster peers\npeers = [\n"
        '  "/ip4/10.0.0.2/tcp/52417",\n'
        f'  "/dns/gpu-box.lan/tcp/52417/p2p/{PEER}",  # the big box\n'
        "  '[::1]:9',\n]\n"
    ),
}


@pytest.mark.parametrize("name", sorted(FORMS))
@pytest.mark.parametrize("by_extension", [True, False])
def test_every_format_gives_the_same_peers(name: str, by_extension: bool) -> None:
    path = Path(name if by_extension else "peers")
    entries = parse_peers_file(path, FORMS[name])
    assert [e.multiaddr for e in entries] == EXPECTED
    assert file_format(path, FORMS[name]) == name.rsplit(".", 1)[1].replace("txt", "lines")


def test_empty_and_comment_only_files_have_no_peers() -> None:
    assert parse_peers_file(Path("p"), "") == []
    assert parse_peers_file(Path("p"), "# nobody yet\n\n") == []
    assert parse_peers_file(Path("p.json"), "[]") == []
    assert parse_peers_file(Path("p.toml"), "") == []


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "peers.txt",
            "10.0.0.2:1\n# ok\n10.0.0.3:70000\n",
            "peers.txt line 3: bad bootstrap peer '10.0.0.3:70000': port 70000 is out of range",
        ),
        (
            "peers.json",
            '[\n  "10.0.0.2:1",\n  "/ip4/10.0.0.3/udp/1"\n]',
            "peers.json line 3: bad bootstrap peer '/ip4/10.0.0.3/udp/1': protocol /udp/",
        ),
        (
            "peers.toml",
            'peers = [\n  "10.0.0.2:1",\n  "10.0.0:1",\n]',
            "peers.toml line 3: bad bootstrap peer '10.0.0:1': '10.0.0' is not an IPv4 address",
        ),
        ("peers.json", '["10.0.0.2:1",', "peers.json line 1: not valid JSON"),
        ("peers.json", '{"peers": []}', "peers.json: a JSON peers file must be a list"),
        ("peers.json", "[1]", "bad bootstrap peer '1': expected a string, got int"),
        ("peers.toml", 'peers = "10.0.0.2:1"', "peers.toml: 'peers' must be a list"),
        ("peers.toml", 'pears = ["10.0.0.2:1"]', "peers.toml: unknown key(s) pears"),
        ("peers.toml", "peers = [", "peers.toml: not valid TOML"),
    ],
)
def test_bad_files_name_file_line_and_entry(name: str, content: str, expected: str) -> None:
    with pytest.raises(BadPeersFile) as info:
        parse_peers_file(Path(name), content)
    assert expected in str(info.value), str(info.value)


def test_every_bad_line_is_reported_at_once() -> None:
    with pytest.raises(BadPeersFile) as info:
        parse_peers_file(Path("p.txt"), "10.0.0.2\n10.0.0.3:1\n/foo/bar\n")
    assert [p.split(":", 1)[0] for p in info.value.problems] == [" line 1", " line 3"]
    assert "'10.0.0.2': missing port" in str(info.value)
    assert "'/foo/bar': unknown protocol /foo/" in str(info.value)
