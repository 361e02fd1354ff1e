"""The ``[plugins.headscale]`` table: where the Headscale API is, the key, and which nodes count."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator, model_validator

from exo_discovery_core import IP, option, parse_ip
from exo_discovery_core.remote import check_http_url

MAX_ANSWER_BYTES = 16 * 1024 * 1024
"""The default of ``max_answer_bytes``: a larger node list is refused (~800 bytes a node, so
~20,000 nodes). The event loop parses a list in one piece (json.loads of 16 MiB: ~0.16 s of CPU;
of 64 MiB: ~0.7 s), so the cap is also how long a hostile server can hold the node up per poll."""

TAG_RULE = re.compile(r"^tag:[A-Za-z][A-Za-z0-9-]*$")
"""Tailscale's tag syntax: ``tag:``, a letter, then letters, digits and ``-`` only."""
AUTH_RETRY_AFTER = 60.0
"""A rejected key is not retried sooner: it needs a human, and hammering only fills logs."""


class HeadscaleConfig(BaseModel):
    """The ``[plugins.headscale]`` table; ``api_url`` unset leaves the plugin idle."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built when a node uses it

    api_url: str | None = option(
        None,
        help="Headscale server URL, e.g. https://headscale.example.com (unset: plugin idle)",
        flag="--headscale-api-url",
        env="HEADSCALE_API_URL",
        needed=True,
    )
    api_key: SecretStr | None = option(
        None,
        help="Headscale API key (`headscale apikeys create`); prefer api_key_file",
        flag="--headscale-api-key",
        env="HEADSCALE_API_KEY",
        secret=True,
        needed=True,
    )
    poll_interval: float = option(
        5.0,
        help="Seconds between reads of the node list",
        flag="--headscale-poll-interval",
        env="HEADSCALE_POLL_INTERVAL",
        gt=0,
        le=3600,
    )
    tag: str = option(
        "tag:exo",
        help="Membership tag: nodes carrying it are peers",
        flag="--headscale-tag",
        env="HEADSCALE_TAG",
    )
    port_tag_prefix: str = option(
        "tag:exo-port-",
        help="A node tagged <prefix><port> (tag:exo-port-52417) is dialed on that port; "
        "others on this node's own port",
    )
    user: str | None = option(
        None,
        help="Only nodes of this Headscale user (the API's ?user= filter)",
        flag="--headscale-user",
        env="HEADSCALE_USER",
    )
    all_nodes_of_user: bool = option(
        False,
        help="Every online node of `user` is a peer, tagged or not (needs user)",
    )
    self_register: bool = option(
        False,
        help="Add the membership tag to this node's own Headscale node (the key needs write rights)",
        flag="--headscale-self-register",
        env="HEADSCALE_SELF_REGISTER",
    )
    self_addresses: tuple[IP, ...] = option(
        (),
        help="This node's Tailscale IPs when no local interface has them (tailscaled in "
        "userspace-networking mode); used to skip and self-register this node",
        flag="--headscale-self-addresses",
        env="HEADSCALE_SELF_ADDRESSES",
    )
    timeout: float = option(
        10.0,
        help="Seconds one API request may take, including reading the answer",
        gt=0,
        le=300,
    )
    max_answer_bytes: int = option(
        MAX_ANSWER_BYTES,
        help="Largest node list accepted, in bytes (about 800 a node: 16 MiB is ~20,000 nodes); "
        "a larger answer is refused and the last good list kept",
        ge=64 * 1024,
        le=4 * 1024 * 1024 * 1024,
    )

    @field_validator("api_url")
    @classmethod
    def _valid_url(cls, value: str | None) -> str | None:
        """http(s), a host, no credentials in the URL (they would show in logs)."""
        if value is None:
            return None
        example = "https://headscale.example.com"
        return check_http_url(value, example=example, allow_query=False).rstrip("/")

    @field_validator("tag", "port_tag_prefix")
    @classmethod
    def _valid_tag(cls, value: str) -> str:
        if not TAG_RULE.match(value):
            raise ValueError(
                "must be tag: then a letter, then only letters, digits and - (Tailscale's rule)"
            )
        return value

    @model_validator(mode="after")
    def _user_for_all_nodes(self) -> HeadscaleConfig:
        if self.all_nodes_of_user and not self.user:
            raise ValueError("all_nodes_of_user needs user (--headscale-user / HEADSCALE_USER)")
        return self

    @property
    def plain_http_remote(self) -> bool:
        """True when the key would cross the network unencrypted (http to a non-loopback host)."""
        if self.api_url is None:
            return False
        parts = urlsplit(self.api_url)
        if parts.scheme != "http":
            return False
        host = parts.hostname or ""
        if host == "localhost" or host.endswith(".localhost"):
            return False
        ip = parse_ip(host)
        return ip is None or not ip.is_loopback
