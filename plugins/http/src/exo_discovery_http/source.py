"""One request to an http_sd URL: the target groups it answers, bounded in size and time.

As Prometheus does, the request carries ``X-Prometheus-Refresh-Interval-Seconds`` (how often
we ask); an answer carrying the same header asks us to poll at that interval instead. Anything
but a 200 with a JSON list of target groups is an :class:`HttpSourceError` with one line and a
fix; the messages name status codes and positions, never the token or what the body held.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import anyio

from exo_discovery_core import SourceError
from exo_discovery_core.remote import TooLarge, clean_http_logs, read_limited, short_reason
from exo_discovery_core.targetgroups import TargetGroup, TargetGroupError, parse_target_groups

from .config import HttpConfig

if TYPE_CHECKING:
    import httpx  # imported by the source, when the plugin runs: loading it costs no httpx

REFRESH_HEADER = "X-Prometheus-Refresh-Interval-Seconds"
MAX_REFRESH = 3600.0


class HttpSourceError(SourceError):
    """The URL did not answer a usable target list; ``fix`` says what a user can do."""


class HttpSource:
    """A client for one http_sd URL; ``interval`` is the one to poll at now."""

    def __init__(
        self, config: HttpConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        import httpx

        clean_http_logs()  # the server's text reaches httpx's records too
        assert config.url is not None
        self.config = config
        self.url = config.url
        self.interval = config.refresh_interval
        headers = {"Accept": "application/json", "User-Agent": "exo-discovery-http"}
        if config.bearer_token is not None:
            headers["Authorization"] = f"Bearer {config.bearer_token.get_secret_value()}"
        # no redirects: the token goes to the URL the user gave, nowhere else
        self._http = httpx.AsyncClient(
            headers=headers, timeout=config.timeout, transport=transport, follow_redirects=False
        )

    def __repr__(self) -> str:
        return f"HttpSource({self.config.shown_url!r})"

    async def __aenter__(self) -> HttpSource:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()

    async def fetch(self) -> list[TargetGroup]:
        """The target groups the URL answers now."""
        body, suggested = await self._get()
        if suggested is not None:
            self.interval = suggested
        try:
            return parse_target_groups(body, max_targets=self.config.max_targets)
        except TargetGroupError as exc:
            fix = (
                "raise max_targets"
                if "limit" in str(exc)
                else 'serve a JSON list of {"targets": ["host:port", ...], "labels": {...}}'
            )
            raise HttpSourceError(f"answer from {self._where}: {exc}", fix=fix) from None

    @property
    def _where(self) -> str:
        return self.config.shown_url

    async def _get(self) -> tuple[bytes, float | None]:
        import httpx

        config = self.config
        headers = {REFRESH_HEADER: f"{self.interval:g}"}
        try:
            with anyio.fail_after(config.timeout):
                async with self._http.stream("GET", self.url, headers=headers) as response:
                    self._check(response)
                    body = await read_limited(
                        response.aiter_bytes(),
                        config.max_answer_bytes,
                        declared_length=response.headers.get("content-length"),
                    )
                    return body, self._suggested(response)
        except (TimeoutError, httpx.TimeoutException):
            raise HttpSourceError(
                f"no answer from {self._where} within {config.timeout:g} s",
                fix="check the server is up, or raise timeout",
            ) from None
        except TooLarge:
            raise HttpSourceError(
                f"answer from {self._where} is larger than max_answer_bytes "
                f"({config.max_answer_bytes} bytes); refused",
                fix="raise max_answer_bytes in [plugins.http] if the list is really that big",
            ) from None
        except httpx.HTTPError as exc:
            raise HttpSourceError(
                f"cannot reach {self._where}: {short_reason(exc)}",
                fix="check url's host and port and that the server is running",
            ) from None

    def _check(self, response: httpx.Response) -> None:
        status = response.status_code
        if status == 200:
            kind = response.headers.get("content-type", "application/json").lower()
            if "json" not in kind and "text/plain" not in kind:
                raise HttpSourceError(
                    f"answer from {self._where} is not JSON (Content-Type {kind.split(';')[0]!r})",
                    fix="point url at the http_sd endpoint itself (a login page or proxy "
                    "answered instead)",
                )
            return
        if status in (401, 403):
            what = "no token configured" if self.config.bearer_token is None else "token rejected"
            raise HttpSourceError(
                f"{what}: HTTP {status} from {self._where}",
                fix="set bearer_token_file (or EXO_HTTP_SD_BEARER_TOKEN_FILE) to a valid token",
                retry_after=max(self.interval, 60.0),
            )
        if 300 <= status < 400:
            raise HttpSourceError(
                f"{self._where} redirects (HTTP {status}); redirects are not followed",
                fix="set url to the final URL (https:// if the server redirects to it)",
            )
        raise HttpSourceError(
            f"HTTP {status} from {self._where}",
            fix="check url; a 5xx is the server's problem: look at its log",
        )

    def _suggested(self, response: httpx.Response) -> float | None:
        """The server's refresh interval, if it sent a sensible one, within our bounds."""
        text = response.headers.get(REFRESH_HEADER)
        if text is None:
            return None
        try:
            seconds = float(text)
        except ValueError:
            return None
        if not math.isfinite(seconds) or seconds <= 0:  # NaN, inf or nonsense: ignored
            return None
        return min(max(seconds, self.config.min_refresh_interval), MAX_REFRESH)
