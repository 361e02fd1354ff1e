"""Node metadata: ``[node.meta]``, ``EXO_DISCOVERY_META`` (k=v,k=v) and ``--meta KEY=VALUE``
(repeatable), laid over each other, within 32 keys and 1 KiB; past a bound, one line naming
where the value came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from exo_discovery_core.config import ConfigError, ConfigSource
from tests.support.cli import exo_discovery
from tests.test_core_config import write


def test_file_env_and_flags_are_laid_over_each_other(tmp_path: Path) -> None:
    path = write(tmp_path, '[node.meta]\napi_port = "52415"\nrole = "file"\n')
    source = ConfigSource.load(
        path,
        env={"EXO_DISCOVERY_META": "role=env, zone=a"},
        flags={"--meta": ("role=flag", "gpu=h100")},
    )
    assert source.node_config().meta == {
        "api_port": "52415",
        "role": "flag",
        "zone": "a",
        "gpu": "h100",
    }
    assert ConfigSource.load(path, env={}, flags={"--meta": ()}).node_config().meta == {
        "api_port": "52415",
        "role": "file",
    }


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (
            {"env": {"EXO_DISCOVERY_META": "novalue"}},
            "env EXO_DISCOVERY_META: 'novalue' is not KEY=VALUE",
        ),
        ({"flags": {"--meta": ("=v",)}}, "flag --meta: '=v' is not KEY=VALUE"),
        (
            {"flags": {"--meta": tuple(f"k{i}=v" for i in range(33))}},
            "flag --meta: 33 metadata keys; at most 32 are allowed",
        ),
        (
            {"env": {"EXO_DISCOVERY_META": "k=" + "v" * 1024}},
            "env EXO_DISCOVERY_META: metadata is 1025 bytes",
        ),
        ({"flags": {"--meta": ("bad key=v",)}}, "flag --meta: metadata key 'bad key'"),
    ],
)
def test_bad_or_too_much_metadata_names_its_origin(
    tmp_path: Path, where: dict[str, dict[str, object]], message: str
) -> None:
    source = ConfigSource.load(None, env=where.get("env", {}), flags=where.get("flags", {}))
    with pytest.raises(ConfigError) as caught:
        source.node_config()
    assert message in str(caught.value)


def test_too_much_metadata_in_the_file_names_the_file_and_key(tmp_path: Path) -> None:
    keys = "\n".join(f'k{i} = "v"' for i in range(33))
    path = write(tmp_path, f"[node.meta]\n{keys}\n")
    with pytest.raises(ConfigError, match=f"{path} \\[node\\] meta: 33 metadata keys"):
        ConfigSource.load(path, env={}).node_config()


def test_the_cli_refuses_too_much_metadata_in_one_line(tmp_path: Path) -> None:
    args = [f"--meta=k{i}=v" for i in range(33)]
    result = exo_discovery(tmp_path, "run", "--state-dir", str(tmp_path), *args)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: flag --meta: 33 metadata keys; at most 32 are allowed (node)"
    )
