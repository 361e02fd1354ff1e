"""Our node models against Headscale's published swagger, version by version (0.22 to 0.29)."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from exo_discovery_headscale.api import HeadscaleError, parse_node_list
from tests.support.fake_headscale import (
    VERSIONS,
    FakeNode,
    example_from_schema,
    has_single_tags,
    is_machine_api,
    list_answer,
    list_definition_name,
    load_spec,
    node_definition_name,
    spec_path,
    validate,
)
from tests.support.gotools import HEADSCALE_VERSION
from tests.support.headscale_model import HeadscaleNode

pytestmark = pytest.mark.skipif(
    not spec_path(VERSIONS[0]).exists(), reason="shared/headscale-openapi not beside the clone"
)


def _api(version: str) -> str:
    return "machine" if is_machine_api(version) else "node"


@pytest.mark.parametrize("version", VERSIONS)
def test_spec_has_the_definitions_we_rely_on(version: str) -> None:
    spec = load_spec(version)
    node = spec["definitions"][node_definition_name(version)]["properties"]
    assert node["id"] == {"type": "string", "format": "uint64"}
    assert node["ipAddresses"]["type"] == "array"
    assert node["online"]["type"] == "boolean"
    assert {"name", "givenName", "user", "lastSeen"} <= set(node)
    tag_keys = {"tags"} if has_single_tags(version) else {"forcedTags", "validTags", "invalidTags"}
    assert tag_keys <= set(node)
    paths = spec["paths"]
    assert f"/api/v1/{_api(version)}" in paths
    assert any(p.endswith("/tags") and p.startswith(f"/api/v1/{_api(version)}/") for p in paths)


@pytest.mark.parametrize("version", VERSIONS)
def test_models_parse_an_example_built_from_the_spec(version: str) -> None:
    """Every property present, typed per the spec: the model must take it and normalise it."""
    spec = load_spec(version)
    schema = spec["definitions"][node_definition_name(version)]
    example = example_from_schema(spec, schema, n=7)
    assert validate(spec, schema, example) == []
    example["ipAddresses"] = ["100.64.0.7", "fd7a:115c:a1e0::7"]
    key = "machines" if is_machine_api(version) else "nodes"
    body = json.dumps({key: [example, {**example, "id": "18446744073709551615"}]}).encode()
    assert (
        validate(spec, spec["definitions"][list_definition_name(version)], json.loads(body)) == []
    )

    wire = parse_node_list(body, _api(version))  # type: ignore[arg-type]
    assert [w.id for w in wire] == [7, 2**64 - 1]
    node = HeadscaleNode.from_wire(wire[0])
    assert node.id == 7
    assert node.online is True
    assert node.addresses == (
        ipaddress.ip_address("100.64.0.7"),
        ipaddress.ip_address("fd7a:115c:a1e0::7"),
    )
    assert node.user == example["user"]["name"]
    assert node.last_seen is not None
    assert node.name == example["givenName"]
    if has_single_tags(version):
        assert node.tags == frozenset(example["tags"])
        assert node.tag_field == "tags"
    else:  # forced + valid, never invalid
        assert node.tags == frozenset(example["forcedTags"] + example["validTags"])
        assert node.tag_field == "forcedTags"


@pytest.mark.parametrize("version", VERSIONS)
def test_fake_server_answers_follow_the_spec(version: str) -> None:
    spec = load_spec(version)
    nodes = [
        FakeNode.numbered(1, tags=("tag:exo",), valid_tags=("tag:b",), invalid_tags=("tag:c",)),
        FakeNode.numbered(2, online=False),
    ]
    answer = list_answer(version, nodes)
    assert validate(spec, spec["definitions"][list_definition_name(version)], answer) == []
    wire = parse_node_list(json.dumps(answer).encode(), _api(version))  # type: ignore[arg-type]
    first = HeadscaleNode.from_wire(wire[0])
    assert first.tags == {"tag:exo", "tag:b"}
    assert "tag:c" not in first.tags


def test_validator_catches_wrong_types() -> None:
    """The tiny validator must actually fail things, or the checks above prove nothing."""
    spec = load_spec("0.29.2")
    schema = spec["definitions"]["v1Node"]
    assert validate(spec, schema, {"id": 5}) != []
    assert validate(spec, schema, {"lastSeen": "yesterday"}) != []
    assert validate(spec, schema, {"forcedTags": []}) != []  # gone in 0.28
    assert validate(spec, schema, {"ipAddresses": "100.64.0.1"}) != []


@pytest.mark.parametrize(
    "body",
    [
        b'{"nodes": [{"id": "1", "ipAddresses": ["100.64.0.1"]}',  # truncated
        b'{"nodes": {"id": "1"}}',
        b"[]",
        b'{"nodes": [{"id": "x"}]}',
        b'{"nodes": [{"id": "-1"}]}',
        b'{"error": "nope"}',
        b"<html>hi</html>",
    ],
)
def test_not_a_node_list_is_a_clear_error(body: bytes) -> None:
    with pytest.raises(HeadscaleError) as info:
        parse_node_list(body)
    assert str(info.value).startswith("answer is not a Headscale node list")
    assert info.value.kind == "shape"
    assert "nope" not in str(info.value)  # content is not echoed


def test_empty_and_null_fields_are_tolerated() -> None:
    assert parse_node_list(b"{}") == []
    assert parse_node_list(b'{"nodes": []}') == []
    wire = parse_node_list(
        b'{"nodes": [{"id": "3", "user": null, "ipAddresses": null, "tags": null,'
        b' "preAuthKey": null, "online": false, "somethingNew": {"x": 1}}]}'
    )
    node = HeadscaleNode.from_wire(wire[0])
    assert (node.id, node.user, node.addresses, node.tags) == (3, None, (), frozenset())


def _module_spec(version: str) -> Path | None:
    """The swagger a Headscale release ships in its Go module (downloaded when it was built)."""
    go = shutil.which("go")
    if go is None:
        return None
    cache = subprocess.run([go, "env", "GOMODCACHE"], capture_output=True, text=True, check=False)
    path = (
        Path(cache.stdout.strip())
        / f"github.com/juanfont/headscale@{version}/gen/openapiv2/headscale/v1/headscale.swagger.json"
    )
    return path if path.is_file() else None


def test_the_newest_release_has_the_api_of_the_newest_spec_here() -> None:
    """The newest Headscale (the one the real-server tests build) against the newest spec in
    these tests: the same API, so every test above of that spec covers the release too. When a
    release changes its API this fails: add its spec to shared/headscale-openapi and VERSIONS."""
    published = _module_spec(HEADSCALE_VERSION)
    if published is None:
        pytest.skip(f"Headscale {HEADSCALE_VERSION}'s module is not in the Go module cache")
    newest = load_spec(VERSIONS[-1])
    release = json.loads(published.read_text(encoding="utf-8"))
    assert release["paths"] == newest["paths"], f"{HEADSCALE_VERSION} changed its paths"
    assert release["definitions"] == newest["definitions"], (
        f"{HEADSCALE_VERSION} changed its models"
    )
