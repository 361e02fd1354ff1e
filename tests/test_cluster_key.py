"""Cluster keys in the configuration: every source, the keyring's order, and the key never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from exo_discovery_core import clusterkey
from exo_discovery_core.clusterkey import ClusterKeyError, Keyring
from exo_discovery_core.config import ConfigError, ConfigSource
from exo_discovery_core.handshake import Credentials
from exo_discovery_core.identity import Identity

ONE, TWO = clusterkey.generate(), clusterkey.generate()


def test_a_key_file_holds_the_primary_first_and_comments_and_blank_lines_are_skipped(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cluster.key"
    path.write_text(
        f"# new key first\n{clusterkey.encode(TWO)}\n\n{clusterkey.encode(ONE)}  # old\n"
    )
    config = ConfigSource(env={"EXO_DISCOVERY_CLUSTER_KEY_FILE": str(path)}).node_config()
    keyring = config.keyring()
    assert keyring.primary == TWO and keyring.accepted == (TWO, ONE)
    assert keyring.fingerprints == (clusterkey.fingerprint(TWO), clusterkey.fingerprint(ONE))


@pytest.mark.parametrize(
    ("env", "file_data", "flags"),
    [
        ({"EXO_DISCOVERY_CLUSTER_KEY": clusterkey.encode(ONE)}, {}, {}),
        ({}, {"node": {"cluster_key": clusterkey.encode(ONE)}}, {}),
        ({}, {"node": {"cluster_key_file": "KEYFILE"}}, {}),
        ({"EXO_DISCOVERY_CLUSTER_KEY_FILE": "KEYFILE"}, {}, {}),
        ({}, {}, {"--cluster-key-file": "KEYFILE"}),
    ],
    ids=["env", "file key", "file key file", "env file", "flag"],
)
def test_every_source_gives_the_same_key(
    tmp_path: Path, env: dict[str, str], file_data: dict[str, dict[str, str]], flags: dict[str, str]
) -> None:
    path = tmp_path / "cluster.key"
    path.write_text(clusterkey.encode(ONE) + "\n")

    def fill(table: dict[str, str]) -> dict[str, str]:
        return {k: str(path) if v == "KEYFILE" else v for k, v in table.items()}

    source = ConfigSource(
        env=fill(env),
        file_data={k: fill(v) for k, v in file_data.items()},
        flags=fill(flags),
    )
    config = source.node_config()
    assert config.keyring().accepted == (ONE,)
    assert clusterkey.encode(ONE) not in repr(config) + str(config)


def test_comma_separated_keys_in_the_environment() -> None:
    value = f"{clusterkey.encode(ONE)},{clusterkey.encode(TWO)}"
    config = ConfigSource(env={"EXO_DISCOVERY_CLUSTER_KEY": value}).node_config()
    assert config.keyring().accepted == (ONE, TWO)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hunter2", "key 1 is not a cluster key (base64 of 32 bytes); make one with"),
        (clusterkey.encode(ONE) + ",c2hvcnQ=", "key 2 is not a cluster key"),
        ("# only a comment\n", "no cluster key in it"),
        (
            ",".join(clusterkey.encode(clusterkey.generate()) for _ in range(9)),
            "9 cluster keys; at most 8",
        ),
    ],
)
def test_a_bad_key_is_one_line_naming_where_and_never_quoting_it(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        ConfigSource(env={"EXO_DISCOVERY_CLUSTER_KEY": text}).node_config()
    assert str(error.value).startswith("env EXO_DISCOVERY_CLUSTER_KEY: ")
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    for secret in ("hunter2", "c2hvcnQ=", clusterkey.encode(ONE)):
        assert secret not in str(error.value)


def test_a_missing_key_file_and_two_sources_at_once(tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    with pytest.raises(ConfigError, match=r"flag --cluster-key-file: cannot read .*nope.key"):
        ConfigSource(env={}, flags={"--cluster-key-file": str(missing)}).node_config()
    path = tmp_path / "k"
    path.write_text(clusterkey.encode(ONE))
    both = {
        "EXO_DISCOVERY_CLUSTER_KEY": clusterkey.encode(TWO),
        "EXO_DISCOVERY_CLUSTER_KEY_FILE": str(path),
    }
    with pytest.raises(ConfigError, match="set cluster_key or cluster_key_file, not both"):
        ConfigSource(env=both).node_config()


def test_no_repr_shows_a_key() -> None:
    keyring = Keyring((ONE, TWO))
    credentials = Credentials(Identity.generate(), namespace="exo", keyring=keyring)
    for text in (repr(keyring), repr(credentials), str(keyring)):
        assert (
            clusterkey.encode(ONE) not in text and ONE.hex() not in text and repr(ONE) not in text
        )
        assert clusterkey.fingerprint(ONE) in text
    with pytest.raises(ClusterKeyError):
        Keyring((b"short",))
