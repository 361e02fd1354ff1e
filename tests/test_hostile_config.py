"""Hostile config files through ``ConfigSource.load`` + ``node_config()`` + the plugins' tables.

Random TOML documents (random dicts over the real keys and random ones, written with ``tomli_w``)
and raw random bytes: each ends in a valid config or a ``ConfigError`` whose message names the
file; never another exception.

Cases per target: ``CASES_PER_TARGET`` (200) for TOML documents and for raw bytes; ``BUG_CASES``
(10) for each of the four regression targets of bugs this suite found (fixed).
"""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from exo_discovery_bootstrap.plugin import BootstrapConfig
from exo_discovery_core.config import ConfigError, ConfigSource, NodeConfig
from exo_discovery_headscale.config import HeadscaleConfig

CASES_PER_TARGET = 200
BUG_CASES = 10
SETTINGS = settings(
    max_examples=CASES_PER_TARGET,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
BUG_SETTINGS = settings(
    max_examples=BUG_CASES, deadline=None, phases=[Phase.generate], database=None
)
DIR = Path(tempfile.mkdtemp(prefix="exo-hostile-config-"))
PLUGINS: dict[str, type[BaseModel]] = {"bootstrap": BootstrapConfig, "headscale": HeadscaleConfig}
INSTALLED = ["bootstrap", "headscale", "mdns"]

SCALARS = (
    st.booleans()
    | st.integers()
    | st.sampled_from([0, -1, 65535, 65536, 2**63 - 1, -(2**63), 10**30])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.characters(exclude_characters="\x00"), max_size=30)
    | st.sampled_from(
        [
            "",
            "exo",
            "127.0.0.1:1",
            "/ip4/1.2.3.4/tcp/1",
            "http://127.0.0.1:1",
            "tag:exo",
            "/nonexistent/file",
            "/",
            "~",
            "mdns",
            "bootstrap",
        ]
    )
    | st.datetimes(min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime(9999, 1, 1))
    | st.dates()
    | st.times()
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
NODE_KEYS = list(NodeConfig.model_fields)
BOOT_KEYS = [*BootstrapConfig.model_fields, "enabled"]
HS_KEYS = [*HeadscaleConfig.model_fields, "enabled"]
# api_key_file: a value the file path cannot be (a NUL) is bug B8 (fixed), tested on its own
KEY_TEXT = st.text(max_size=12)


def _table(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(keys) | KEY_TEXT, VALUES, max_size=6)


DOCS = st.fixed_dictionaries(
    {},
    optional={
        "node": _table(NODE_KEYS) | VALUES,
        "plugins": st.fixed_dictionaries(
            {},
            optional={
                # a plugin's entry that is not a table is bug B10 (fixed) (its own target)
                "bootstrap": _table(BOOT_KEYS),
                "headscale": _table(HS_KEYS).map(
                    # a secret file is read: keep it off /dev/zero and the like
                    lambda t: {k: v for k, v in t.items() if k != "api_key_file"}
                ),
                "enabled": st.lists(st.sampled_from([*INSTALLED, "nope"]), max_size=3) | VALUES,
                "disabled": st.lists(st.sampled_from([*INSTALLED, "nope"]), max_size=3) | VALUES,
            },
        )
        | VALUES,
    },
).flatmap(
    lambda doc: (
        st.dictionaries(KEY_TEXT, VALUES, max_size=2).map(lambda extra: {**extra, **doc})
        | st.just(doc)
    )
)


def load_everything(path: Path) -> None:
    """What the node does with a config file, up to the point it starts."""
    source = ConfigSource.load(path, env={})
    source.node_config()
    source.plugin_selection(INSTALLED)
    for name, model in PLUGINS.items():
        source.plugin_config(name, model)


def check_file(path: Path) -> None:
    try:
        load_everything(path)
    except ConfigError as exc:
        assert str(path) in str(exc), f"the error does not name the file: {exc}"
    # any other exception fails the test with its traceback


_counter = iter(range(10**9))


def _write(data: bytes) -> Path:
    path = DIR / f"config-{next(_counter)}.toml"
    path.write_bytes(data)
    return path


def _toml(doc: dict[str, Any]) -> bytes | None:
    try:
        return tomli_w.dumps(doc).encode()
    except (TypeError, ValueError):
        return None  # tomli_w cannot write it (e.g. a key that is not a string)


@SETTINGS
@given(DOCS)
def test_random_toml_documents(doc: dict[str, Any]) -> None:
    """Cases: CASES_PER_TARGET (200)."""
    data = _toml(doc)
    if data is None:
        return
    check_file(_write(data))


@SETTINGS
@given(
    st.binary(max_size=400)
    | st.tuples(DOCS, st.binary(max_size=20), st.integers(0, 400)).map(
        # a real document with bytes spliced in or cut short
        lambda t: (lambda d: d[: t[2]] + t[1] + d[t[2] :])(_toml(t[0]) or b"")
    )
)
def test_random_bytes(data: bytes) -> None:
    """Cases: CASES_PER_TARGET (200)."""
    check_file(_write(data))


def test_missing_unreadable_and_directory_paths() -> None:
    for path in (DIR / "missing.toml", DIR):
        check_file(path)


# -- regressions: bugs this suite found, now fixed -------------------------------------------------------------------------------

B7 = (
    "B7: ConfigSource.load (config.py:189) catches TOMLDecodeError/OSError/UnicodeDecodeError; "
    "tomllib recurses per nested array/inline table, so a file nested a few thousand deep "
    "raises RecursionError instead of ConfigError naming the file"
)
B8 = (
    "B8: _read_secret (config.py:322-325) catches OSError only; an api_key_file value holding a "
    "NUL (TOML '\\u0000') makes Path.read_text raise ValueError('embedded null byte'), not "
    "ConfigError"
)
B9 = (
    "B9: _describe (config.py:313) names the origin by err['loc'][0]; a model-level error "
    "(HeadscaleConfig._user_for_all_nodes, loc ()) comes out as '[plugins.headscale]  (default): "
    "...' without the file, although the file set all_nodes_of_user"
)


@BUG_SETTINGS
@given(st.integers(1200, 6000), st.sampled_from(["[]", "{}"]))
def test_fixed_bug_deeply_nested_toml(depth: int, kind: str) -> None:
    """Cases: BUG_CASES (10)."""
    body = "[" * depth + "]" * depth if kind == "[]" else "{a=" * depth + "1" + "}" * depth
    check_file(_write(f"[node]\nx = {body}\n".encode()))


@BUG_SETTINGS
@given(st.text(max_size=10), st.text(max_size=10))
def test_fixed_bug_secret_file_path_with_nul(before: str, after: str) -> None:
    """Cases: BUG_CASES (10)."""
    doc = {"plugins": {"headscale": {"api_key_file": f"{before}\x00{after}"}}}
    check_file(_write(tomli_w.dumps(doc).encode()))


@BUG_SETTINGS
@given(st.booleans())
def test_fixed_bug_model_level_error_does_not_name_the_file(with_url: bool) -> None:
    """Cases: BUG_CASES (10, of 2 distinct documents)."""
    table: dict[str, Any] = {"all_nodes_of_user": True}
    if with_url:
        table["api_url"] = "http://127.0.0.1:1"
    check_file(_write(tomli_w.dumps({"plugins": {"headscale": table}}).encode()))


B10 = (
    "B10: a plugin's entry that is not a table ([plugins] bootstrap = false, = 'x', = 1) passes "
    "_check_top_level (config.py:204-216) and plugin_selection (which skips non-dicts), then "
    "plugin_config_from (config.py:272) does dict(table): TypeError/ValueError, not ConfigError; "
    "the node (Node.__aenter__) and the CLI crash with a traceback"
)


@BUG_SETTINGS
@given(
    st.sampled_from(["bootstrap", "headscale"]),
    st.booleans() | st.integers() | st.text(min_size=1, max_size=5),
)
def test_fixed_bug_plugin_entry_that_is_not_a_table(name: str, value: Any) -> None:
    """Cases: BUG_CASES (10)."""
    check_file(_write(tomli_w.dumps({"plugins": {name: value}}).encode()))
