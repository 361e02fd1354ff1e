"""Headscale's REST API, 0.22 to 0.29: the node models and a small client.

The wire model (:class:`WireNode`) takes every version's node object: 0.22's ``machines``, the
``forcedTags``/``validTags``/``invalidTags`` of 0.23-0.27 and the single ``tags`` of 0.28+. It
declares only the fields discovery needs and is validated for the whole list at once from the raw
bytes (pydantic-core), so a 10,000-node answer costs about what ``json.loads`` of it costs.

Errors are :class:`HeadscaleError` (a ``SourceError``) with a one-line message and a ``fix``.
Messages are built from status codes and exception types only: the request, its headers and
the key are never formatted into one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
from pydantic import ConfigDict, Field, SecretStr, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

from exo_discovery_core import SourceError
from exo_discovery_core.remote import TooLarge, clean_http_logs, read_limited, short_reason

from .config import AUTH_RETRY_AFTER, MAX_ANSWER_BYTES

if TYPE_CHECKING:
    import httpx  # imported by the client, when the plugin runs: loading it costs no httpx

T = TypeVar("T")
Api = Literal["node", "machine"]
TagField = Literal["tags", "forcedTags"]
ErrorKind = Literal["auth", "not_found", "server", "timeout", "connect", "shape", "too_large"]

_UINT64 = Field(ge=0, lt=2**64)
_WIRE = ConfigDict(extra="ignore", populate_by_name=True, str_max_length=4096, defer_build=True)


@pydantic_dataclass(frozen=True, config=_WIRE)
class WireUser:
    """``v1User``: only the name is used (to filter and to show)."""

    name: str = ""


@pydantic_dataclass(frozen=True, config=_WIRE)
class WireNode:
    """One ``v1Node`` / ``v1Machine`` as sent; every field optional but ``id`` (uint64 as string).

    ``None`` for a tag list means the server did not send it: that tells 0.28+ (``tags``) from
    0.23-0.27 (``forcedTags``...). Frozen and hashable, so a round can reuse unchanged nodes.
    """

    id: int = _UINT64
    name: str = ""
    givenName: str = ""
    ipAddresses: tuple[str, ...] | None = None
    online: bool | None = None
    lastSeen: str | None = None
    user: WireUser | None = None
    tags: tuple[str, ...] | None = None
    forcedTags: tuple[str, ...] | None = None
    validTags: tuple[str, ...] | None = None
    invalidTags: tuple[str, ...] | None = None

    @property
    def tag_set(self) -> tuple[str, ...]:
        """The tags that count: ``tags`` (0.28+), else forced + valid; never the invalid ones."""
        if self.tags is not None:
            return self.tags
        return (self.forcedTags or ()) + (self.validTags or ())

    @property
    def tag_field(self) -> TagField:
        """Which list ``set_tags`` replaces on this server: ``tags`` on 0.28+, else forced tags."""
        return "tags" if self.tags is not None or self.forcedTags is None else "forcedTags"

    @property
    def hostname(self) -> str:
        return self.givenName or self.name


@pydantic_dataclass(frozen=True, config=_WIRE)
class WireNodeList:
    """``v1ListNodesResponse`` (``nodes``) or 0.22's ``v1ListMachinesResponse`` (``machines``)."""

    nodes: list[WireNode] | None = None
    machines: list[WireNode] | None = None


@pydantic_dataclass(frozen=True, config=_WIRE)
class WireSetTags:
    """``v1SetTagsResponse``: the node (``machine`` on 0.22) after the change."""

    node: WireNode | None = None
    machine: WireNode | None = None


_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def _adapter(wire: type[T]) -> TypeAdapter[T]:
    """Built on first use: a start-up that never talks to Headscale never builds the schemas."""
    adapter = _ADAPTERS.get(wire)
    if adapter is None:
        adapter = _ADAPTERS[wire] = TypeAdapter(wire)
    return adapter


def parse_node_list(body: bytes, api: Api = "node") -> list[WireNode]:
    """The nodes of a list answer; :class:`HeadscaleError` (kind ``shape``) if it is not one.

    The key the API version answers with must be there; only an empty object ``{}`` (a server
    that omits empty fields) means "no nodes".
    """
    answer = _validated(_adapter(WireNodeList), body, "a Headscale node list")
    nodes = answer.nodes if api == "node" else answer.machines
    if nodes is None:
        nodes = answer.machines if api == "node" else answer.nodes
    if nodes is None:
        if body.strip() in (b"{}", b""):
            return []
        key = "nodes" if api == "node" else "machines"
        raise HeadscaleError(
            f"answer is not a Headscale node list: no {key!r} list in it", kind="shape"
        )
    return nodes


def _validated(adapter: TypeAdapter[T], body: bytes, what: str, *, of: str = "answer") -> T:
    """``body`` as ``adapter``'s type, or a ``shape`` error naming where it is wrong."""
    try:
        return adapter.validate_json(body)
    except ValidationError as exc:
        raise HeadscaleError(f"{of} is not {what}: {_first_error(exc)}", kind="shape") from None


def _first_error(exc: ValidationError) -> str:
    """The first validation problem, by location only: the answer's content is never echoed."""
    errors = exc.errors(include_input=False, include_url=False, include_context=False)
    if not errors:
        return "invalid"
    err = errors[0]
    where = ".".join(str(part) for part in err["loc"]) or "top level"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {err['msg']}{more}"


class HeadscaleError(SourceError):
    """A Headscale request failed; ``kind`` says how and ``fix`` what a human should do."""

    FIXES: dict[str, str] = {
        "auth": "create a key with `headscale apikeys create` and set it as api_key "
        "(`exo-discovery run --help` lists every way to set it)",
        "not_found": "check api_url: it is the Headscale server's base URL (the one `tailscale up "
        "--login-server` uses), and the server must be Headscale 0.22 or later",
        "server": "look at the Headscale server's log; the plugin retries with backoff",
        "timeout": "check the server is up and not overloaded, or raise timeout",
        "connect": "check api_url's host and port and that Headscale is running and reachable",
        "shape": "check api_url points at Headscale itself, not a proxy or another service",
        "too_large": "raise max_answer_bytes in [plugins.headscale] (about 800 bytes a node), or "
        "set user to list fewer nodes",
    }

    def __init__(self, message: str, *, kind: ErrorKind, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after, fix=self.FIXES[kind])
        self.kind: ErrorKind = kind


class HeadscaleClient:
    """The few calls discovery needs, over one ``httpx.AsyncClient`` with the Bearer key.

    It learns the API generation on the first list (``/api/v1/node``, or on 404 0.22's
    ``/api/v1/machine``) and remembers it; a later 404 makes it ask again.
    """

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr | None,
        *,
        timeout: float = 10.0,
        max_bytes: int = MAX_ANSWER_BYTES,
        auth_retry_after: float = AUTH_RETRY_AFTER,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.auth_retry_after = auth_retry_after
        self.api: Api | None = None
        self._key = api_key
        import httpx

        clean_http_logs()  # the server's text reaches httpx's records too
        headers = {"Accept": "application/json", "User-Agent": "exo-discovery-headscale"}
        if api_key is not None:
            headers["Authorization"] = f"Bearer {api_key.get_secret_value()}"
        self._http = httpx.AsyncClient(
            headers=headers, timeout=timeout, transport=transport, follow_redirects=False
        )

    def __repr__(self) -> str:
        return f"HeadscaleClient({self.base_url!r}, api={self.api!r})"

    async def __aenter__(self) -> HeadscaleClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- calls ------------------------------------------------------------------------------

    async def list_wire_nodes(self, user: str | None = None) -> list[WireNode]:
        """Every node the key sees (of ``user`` if given), as sent: the fast path for polling."""
        params = {"user": user} if user else None
        for api in (self.api,) if self.api else ("node", "machine"):
            try:
                body = await self._request("GET", f"/api/v1/{api}", params=params)
            except HeadscaleError as exc:
                if exc.kind == "not_found" and self.api is None and api == "node":
                    continue  # 0.22 has no node API: try its machine API
                if exc.kind == "not_found":
                    self.api = None  # upgraded or moved: detect again next time
                raise
            nodes = parse_node_list(body, api)
            self.api = api
            return nodes
        raise AssertionError("unreachable")  # pragma: no cover

    async def set_tags(self, node_id: int, tags: Iterable[str]) -> WireNode | None:
        """Replace the node's tags (forced tags before 0.28); the node as the server now has it."""
        if self.api is None:
            await self.list_wire_nodes()  # learns which API the server speaks
        api = self.api
        assert api is not None
        payload = json.dumps({"tags": sorted(set(tags))}).encode()
        body = await self._request(
            "POST", f"/api/v1/{api}/{node_id}/tags", content=payload, json_body=True
        )
        answer = _validated(
            _adapter(WireSetTags), body, "a Headscale node", of="answer to set tags"
        )
        return answer.node or answer.machine

    # -- transport --------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        content: bytes | None = None,
        json_body: bool = False,
    ) -> bytes:
        """The body of a 2xx answer, read up to ``max_bytes`` within ``timeout`` in all."""
        import httpx

        url = self.base_url + path
        headers = {"Content-Type": "application/json"} if json_body else None
        try:
            with anyio.fail_after(self.timeout):
                async with self._http.stream(
                    method, url, params=params, content=content, headers=headers
                ) as response:
                    if response.status_code >= 300:
                        page = await read_limited(response.aiter_bytes(), 4096, truncate=True)
                        raise self._status_error(response.status_code, _server_message(page))
                    return await read_limited(
                        response.aiter_bytes(),
                        self.max_bytes,
                        declared_length=response.headers.get("content-length"),
                    )
        except (TimeoutError, httpx.TimeoutException):
            raise HeadscaleError(
                f"no answer from {self.base_url} within {self.timeout:g} s", kind="timeout"
            ) from None
        except TooLarge as exc:
            raise HeadscaleError(
                f"node list from {self.base_url} is larger than max_answer_bytes "
                f"({_size(exc.limit)}); refused, the last good list is kept",
                kind="too_large",
            ) from None
        except (httpx.ConnectError, httpx.NetworkError, httpx.ProtocolError) as exc:
            raise HeadscaleError(
                f"cannot reach {self.base_url}: {short_reason(exc)}", kind="connect"
            ) from None
        except httpx.HTTPError as exc:
            raise HeadscaleError(
                f"request to {self.base_url} failed: {type(exc).__name__}", kind="connect"
            ) from None

    def _status_error(self, status: int, detail: str) -> HeadscaleError:
        said = f" ({self._redact(detail)})" if detail else ""
        # Headscale 0.22 answers a key it has no record of with HTTP 500 "Unauthorized"
        # (hscontrol/app.go: ValidateAPIKey fails): a rejected key, not a server fault.
        legacy_reject = status == 500 and detail.strip().lower() == "unauthorized"
        if status in (401, 403) or legacy_reject:
            what = (
                "no API key configured and the server wants one"
                if self._key is None
                else "API key rejected (wrong, expired or lacking permission)"
            )
            return HeadscaleError(
                f"{what}: HTTP {status} from {self.base_url}{said}",
                kind="auth",
                retry_after=self.auth_retry_after,
            )
        if status == 404:
            return HeadscaleError(
                f"no Headscale API at {self.base_url} — wrong URL or unsupported version "
                f"(HTTP 404{said})",
                kind="not_found",
            )
        if status >= 500:
            return HeadscaleError(
                f"Headscale server error: HTTP {status} from {self.base_url}{said}", kind="server"
            )
        if 300 <= status < 400:
            return HeadscaleError(
                f"{self.base_url} redirects (HTTP {status}); use the final URL as api_url "
                "(https:// if the server redirects to it)",
                kind="not_found",
            )
        return HeadscaleError(
            f"Headscale refused the request: HTTP {status} from {self.base_url}{said}",
            kind="server",
        )

    def _redact(self, text: str) -> str:
        """Belt and braces: a server message never carries the key, but if it did, hide it."""
        if self._key is not None:
            secret = self._key.get_secret_value()
            if secret:
                text = text.replace(secret, "**********")
        return text


def _size(limit: int) -> str:
    mib = limit / (1024 * 1024)
    return f"{mib:g} MiB" if mib >= 1 else f"{limit} bytes"


def _server_message(body: bytes) -> str:
    """The ``message`` of a gRPC-gateway error (``rpcStatus``), else a short plain-text body."""
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return " ".join(text.split())[:200] if text and "<" not in text[:1] else ""
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return " ".join(data["message"].split())[:200]
    return ""


__all__ = [
    "AUTH_RETRY_AFTER",
    "MAX_ANSWER_BYTES",
    "Api",
    "HeadscaleClient",
    "HeadscaleError",
    "WireNode",
    "WireNodeList",
    "WireUser",
    "parse_node_list",
]
