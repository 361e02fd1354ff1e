"""The ``[plugins.tailscale]`` table: which socket, which peers, which port."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_validator

from exo_discovery_core import option

TAG_RULE = re.compile(r"^tag:[A-Za-z][A-Za-z0-9-]*$")
"""Tailscale's tag syntax (``tailcfg.CheckTag``): ``tag:``, a letter, then letters, digits, ``-``."""


class TailscaleConfig(BaseModel):
    """The ``[plugins.tailscale]`` table; every field also has a default that works on a laptop."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built when a node uses it

    socket: Path | None = option(
        None,
        help="tailscaled's LocalAPI socket (default: the platform's usual paths)",
        flag="--tailscale-socket",
        env="TAILSCALE_SOCKET",
    )
    tag: str = option(
        "tag:exo",
        help="Membership tag: online peers carrying it are peers of this cluster",
        flag="--tailscale-tag",
        env="TAILSCALE_TAG",
    )
    all_peers: bool = option(
        False,
        help="Every online peer of the tailnet is a candidate, tagged or not",
        flag="--tailscale-all-peers",
        env="TAILSCALE_ALL_PEERS",
    )
    port: int | None = option(
        None,
        help="Port the peers listen on (default: this node's own port)",
        flag="--tailscale-port",
        env="TAILSCALE_PORT",
        ge=1,
        le=65535,
    )
    poll_interval: float = option(
        10.0,
        help="Seconds between status reads (changes seen on the IPN bus wake it early)",
        flag="--tailscale-poll-interval",
        env="TAILSCALE_POLL_INTERVAL",
        gt=0,
        le=3600,
    )
    watch: bool = option(
        True,
        help="Follow tailscaled's IPN bus to notice changes at once (false: poll only)",
    )
    timeout: float = option(
        5.0,
        help="Seconds one LocalAPI request may take",
        gt=0,
        le=120,
    )

    @field_validator("tag")
    @classmethod
    def _valid_tag(cls, value: str) -> str:
        text = value.strip()
        if not TAG_RULE.match(text):
            raise ValueError(
                "not a Tailscale tag: expected tag:<name>, the name a letter followed by "
                "letters, digits or '-' (e.g. tag:exo)"
            )
        return text
