"""A fake Headscale REST API for fault injection, plus the published specs and a tiny validator.

Not a Headscale: it only lists nodes and sets tags, answering as a given version would (node
objects built to that version's swagger schema), and can be told to fail in the ways a real
server or network fails (5xx, 401/403, 404, truncated or misshapen JSON, hanging, crawling, a
10 MB answer). Real behaviour is tested against the real server elsewhere.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.loopback_http import LoopbackHTTP

SPEC_DIR = Path(
    os.environ.get("EXO_HEADSCALE_SPECS")  # a git worktree is not beside shared/
    or Path(__file__).resolve().parents[2].parent / "shared" / "headscale-openapi"
)
VERSIONS = ("0.22.3", "0.23.0", "0.26.1", "0.27.1", "0.28.0", "0.29.2")
FAULTS = ("500", "401", "403", "404", "truncated", "shape", "hang", "slow", "huge")


def spec_path(version: str) -> Path:
    return SPEC_DIR / f"headscale-v{version}.swagger.json"


def load_spec(version: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(spec_path(version).read_text(encoding="utf-8"))
    return data


def is_machine_api(version: str) -> bool:
    return version.startswith("0.22.")


def has_single_tags(version: str) -> bool:
    """0.28 and later: one ``tags`` list instead of forced/valid/invalid."""
    minor = int(version.split(".")[1])
    return minor >= 28


def node_definition_name(version: str) -> str:
    return "v1Machine" if is_machine_api(version) else "v1Node"


def list_definition_name(version: str) -> str:
    return "v1ListMachinesResponse" if is_machine_api(version) else "v1ListNodesResponse"


# -- a tiny validator for the swagger 2.0 subset Headscale's spec uses ---------------------------


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/definitions/")
        schema = spec["definitions"][name]
    return schema


def validate(
    spec: dict[str, Any], schema: dict[str, Any], value: Any, path: str = "$"
) -> list[str]:
    """Problems of ``value`` against ``schema`` (type, format, enum, items, properties).

    Unknown properties are problems (the spec has no ``additionalProperties`` on these types),
    which is what makes this a check that an answer is *that* version's shape.
    """
    schema = _resolve(spec, schema)
    problems: list[str] = []
    kind = schema.get("type")
    if value is None:
        # grpc-gateway emits null for an unset message field; a scalar must be present
        return [] if kind in (None, "object") else [f"{path}: null for {kind}"]
    if kind == "object" or "properties" in schema:
        if not isinstance(value, dict):
            return [f"{path}: expected object"]
        props = schema.get("properties", {})
        for key, item in value.items():
            if key in props:
                problems += validate(spec, props[key], item, f"{path}.{key}")
            elif "additionalProperties" not in schema:
                problems.append(f"{path}: unknown property {key!r}")
    elif kind == "array":
        if not isinstance(value, list):
            return [f"{path}: expected array"]
        for i, item in enumerate(value):
            problems += validate(spec, schema["items"], item, f"{path}[{i}]")
    elif kind == "string":
        if not isinstance(value, str):
            return [f"{path}: expected string"]
        fmt = schema.get("format")
        if fmt in ("uint64", "int64") and not value.lstrip("-").isdigit():
            problems.append(f"{path}: {fmt} string expected, got {value!r}")
        if fmt == "date-time" and not _is_rfc3339(value):
            problems.append(f"{path}: RFC 3339 time expected, got {value!r}")
        if "enum" in schema and value not in schema["enum"]:
            problems.append(f"{path}: {value!r} not in {schema['enum']}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            problems.append(f"{path}: expected boolean")
    elif kind == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
        problems.append(f"{path}: expected integer")
    return problems


def _is_rfc3339(text: str) -> bool:
    from datetime import datetime

    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return "T" in text


def example_from_schema(
    spec: dict[str, Any], schema: dict[str, Any], n: int = 1, depth: int = 0
) -> Any:
    """An instance with every property set, typed as the spec says (uint64 as a string...)."""
    schema = _resolve(spec, schema)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        if depth > 4:
            return {}
        return {
            key: example_from_schema(spec, sub, n, depth + 1)
            for key, sub in schema.get("properties", {}).items()
            if not key.startswith("@")
        }
    if kind == "array":
        return [example_from_schema(spec, schema["items"], n, depth + 1)]
    if kind == "boolean":
        return True
    if kind == "integer":
        return n
    fmt = schema.get("format")
    if "enum" in schema:
        return str(schema["enum"][-1])
    if fmt in ("uint64", "int64"):
        return str(n)
    if fmt == "date-time":
        return "2024-05-01T12:00:00.123456789Z"
    return f"s{n}"


# -- nodes as a version sends them -----------------------------------------------------------------


@dataclass
class FakeNode:
    """A node; ``tags`` are what the server set (forced tags before 0.28, ``tags`` after)."""

    id: int
    name: str
    ips: tuple[str, ...]
    online: bool = True
    tags: tuple[str, ...] = ()
    valid_tags: tuple[str, ...] = ()
    invalid_tags: tuple[str, ...] = ()
    user: str = "exo"

    @classmethod
    def numbered(cls, i: int, **kwargs: Any) -> FakeNode:
        ips = (f"100.64.{i // 256 % 256}.{i % 256}", f"fd7a:115c:a1e0::{i:x}")
        return cls(id=i, name=f"node-{i}", ips=ips, **kwargs)


def node_json(version: str, node: FakeNode) -> dict[str, Any]:
    """``node`` as ``version`` sends it: every property of its v1Node / v1Machine."""
    created = "2024-01-01T00:00:00Z"
    user: dict[str, Any] = {"id": "1", "name": node.user, "createdAt": created}
    if int(version.split(".")[1]) >= 26:
        user |= {
            "displayName": "",
            "email": "",
            "providerId": "",
            "provider": "",
            "profilePicUrl": "",
        }
    data: dict[str, Any] = {
        "id": str(node.id),
        "machineKey": "mkey:" + "a" * 64,
        "nodeKey": "nodekey:" + "b" * 64,
        "discoKey": "discokey:" + "c" * 64,
        "ipAddresses": list(node.ips),
        "name": node.name,
        "user": user,
        "lastSeen": "2024-05-01T12:00:00.123456789Z",
        "expiry": "0001-01-01T00:00:00Z",
        "preAuthKey": None,
        "createdAt": created,
        "registerMethod": "REGISTER_METHOD_AUTH_KEY",
        "givenName": node.name,
        "online": node.online,
    }
    if is_machine_api(version):
        data["lastSuccessfulUpdate"] = "2024-05-01T12:00:00Z"
    if int(version.split(".")[1]) >= 26:
        data |= {"approvedRoutes": [], "availableRoutes": [], "subnetRoutes": []}
    if has_single_tags(version):
        data["tags"] = sorted({*node.tags, *node.valid_tags})
    else:
        data |= {
            "forcedTags": list(node.tags),
            "validTags": list(node.valid_tags),
            "invalidTags": list(node.invalid_tags),
        }
    return data


def list_answer(version: str, nodes: list[FakeNode]) -> dict[str, Any]:
    key = "machines" if is_machine_api(version) else "nodes"
    return {key: [node_json(version, n) for n in nodes]}


# -- the server -----------------------------------------------------------------------------------


@dataclass
class FakeHeadscale(LoopbackHTTP):
    """Serve on 127.0.0.1 (free port) in a thread; use as a context manager.

    ``fault`` (one of :data:`FAULTS`, or None) can be changed at any time; ``requests`` records
    ``(method, path)`` of each request.
    """

    version: str = "0.29.2"
    key: str = "hskey-test-0000"
    nodes: list[FakeNode] = field(default_factory=list)
    fault: str | None = None
    slow_delay: float = 0.05
    requests: list[tuple[str, str]] = field(default_factory=list)
    tag_calls: list[tuple[int, list[str]]] = field(default_factory=list)

    def answer(self, user: str | None = None) -> dict[str, Any]:
        with self.lock:
            nodes = [n for n in self.nodes if user is None or n.user == user]
            return list_answer(self.version, nodes)

    def huge_answer(self, size: int = 10 * 1024 * 1024) -> bytes:
        """The real nodes plus enough offline, untagged ones to pass ``size`` bytes."""
        with self.lock:
            nodes = list(self.nodes)
        one = len(json.dumps(node_json(self.version, FakeNode.numbered(1))))
        filler = [FakeNode.numbered(10_000 + i, online=False) for i in range(size // one + 1)]
        return json.dumps(list_answer(self.version, nodes + filler)).encode()


class _Handler(BaseHTTPRequestHandler):
    server_state: FakeHeadscale
    timeout = 5

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _send(self, status: int, body: bytes, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: int, message: str) -> None:
        self._send(status, json.dumps({"code": code, "message": message, "details": []}).encode())

    def _handle(self, method: str) -> None:
        fake = self.server_state
        parts = urlsplit(self.path)
        fake.requests.append((method, parts.path))
        fault = fake.fault
        auth = self.headers.get("Authorization") or ""
        if auth != f"Bearer {fake.key}":
            # as the real 0.22 does: a key it has no record of is HTTP 500 "Unauthorized"
            legacy = is_machine_api(fake.version) and auth.startswith("Bearer ")
            self._send(500 if legacy else 401, b"Unauthorized")
            return
        if fault in ("401", "403"):
            self._send(int(fault), b"Unauthorized" if fault == "401" else b"Forbidden")
            return
        if fault == "500":
            self._error(500, 13, "database is locked")
            return
        if fault == "404":
            self._error(404, 5, "Not Found")
            return
        if fault == "hang":
            fake.stopping.wait()
            return
        api = "machine" if is_machine_api(fake.version) else "node"
        segments = parts.path.strip("/").split("/")
        if segments[:3] != ["api", "v1", api]:
            self._error(404, 5, "Not Found")
            return
        if method == "GET" and len(segments) == 3:
            user = parse_qs(parts.query).get("user", [None])[0]
            self._list(fault, user)
        elif method == "POST" and len(segments) == 5 and segments[4] == "tags":
            self._set_tags(int(segments[3]))
        else:
            self._error(404, 5, "Not Found")

    def _list(self, fault: str | None, user: str | None) -> None:
        fake = self.server_state
        if fault == "huge":
            self._send(200, fake.huge_answer())
            return
        body = json.dumps(fake.answer(user)).encode()
        if fault == "truncated":
            self._send(200, body[: len(body) // 2])
        elif fault == "shape":
            self._send(200, json.dumps({"nodes": {"id": "1"}}).encode())
        elif fault == "slow":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for i in range(len(body)):
                if fake.stopping.wait(fake.slow_delay):
                    return
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
        else:
            self._send(200, body)

    def _set_tags(self, node_id: int) -> None:
        fake = self.server_state
        length = int(self.headers.get("Content-Length", "0"))
        tags = json.loads(self.rfile.read(length) or b"{}").get("tags", [])
        with fake.lock:
            fake.tag_calls.append((node_id, list(tags)))
            for node in fake.nodes:
                if node.id == node_id:
                    node.tags = tuple(tags)
                    key = "machine" if is_machine_api(fake.version) else "node"
                    self._send(200, json.dumps({key: node_json(fake.version, node)}).encode())
                    return
        self._error(404, 5, "node not found")


FakeHeadscale.handler = _Handler


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    """Poll a plain predicate from a test thread (helper for synchronous checks)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.01)


def each_version() -> Iterator[str]:
    yield from VERSIONS
