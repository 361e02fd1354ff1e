"""The ``[plugins.http]`` table: the URL, the token, how often and how much."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

from exo_discovery_core import option
from exo_discovery_core.remote import check_http_url


class HttpConfig(BaseModel):
    """The ``[plugins.http]`` table; ``url`` unset leaves the plugin idle."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built when a node uses it

    url: str | None = option(
        None,
        help='URL answering Prometheus http_sd JSON, [{"targets": ["host:port"], "labels": {}}] '
        "(unset: plugin idle)",
        flag="--http-sd-url",
        env="EXO_HTTP_SD_URL",
        needed=True,
    )
    bearer_token: SecretStr | None = option(
        None,
        help="Sent as 'Authorization: Bearer ...'; prefer bearer_token_file or "
        "EXO_HTTP_SD_BEARER_TOKEN_FILE",
        env="EXO_HTTP_SD_BEARER_TOKEN",
        secret=True,
    )
    refresh_interval: float = option(
        30.0,
        help="Seconds between requests (a server's X-Prometheus-Refresh-Interval-Seconds "
        "answer header overrides it, within min_refresh_interval..3600)",
        flag="--http-sd-refresh-interval",
        env="EXO_HTTP_SD_REFRESH_INTERVAL",
        gt=0,
        le=3600,
    )
    min_refresh_interval: float = option(
        1.0,
        help="The shortest interval a server may ask for",
        gt=0,
        le=3600,
    )
    timeout: float = option(
        10.0,
        help="Seconds one request may take, reading the answer included",
        gt=0,
        le=300,
    )
    max_answer_bytes: int = option(
        4 * 1024 * 1024,
        help="Largest answer accepted; a larger one is refused and the last good list kept",
        ge=1024,
        le=1024 * 1024 * 1024,
    )
    max_targets: int = option(
        10_000,
        help="Most targets one answer may hold; more and the answer is refused",
        ge=1,
        le=1_000_000,
    )

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str | None) -> str | None:
        """http(s) with a host; no credentials in it (they would show in logs: use the token)."""
        if value is None:
            return None
        return check_http_url(value, example="https://inventory.example.com/sd")

    @property
    def shown_url(self) -> str:
        """The URL as logs show it: no query string, which may carry a token of its own."""
        if self.url is None:
            return ""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}" + ("?..." if parts.query else "")
