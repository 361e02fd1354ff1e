"""The ``[plugins.mdns]`` table: which interfaces and IP versions, which service type, what name."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from exo_discovery_core import option

if TYPE_CHECKING:
    from zeroconf import IPVersion

DEFAULT_SERVICE_TYPE = "_exo-discovery._tcp.local."
_LABEL = re.compile(r"^[^.\x00-\x1f]{1,63}$")
#: RFC 6763 section 7: a service name is 1-15 letters, digits and hyphens, starting with a letter.
_SERVICE_TYPE = re.compile(r"^_[A-Za-z0-9](?:[A-Za-z0-9-]{0,14})\._(?:tcp|udp)\.local\.$")


class MdnsConfig(BaseModel):
    """The ``[plugins.mdns]`` table."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built when a node uses it

    interfaces: Literal["all"] | tuple[str, ...] = option(
        "all",
        help='"all", or the interfaces to use (names like eth0 or their IPs); '
        "comma-separated in the flag and env",
        flag="--mdns-interfaces",
        env="EXO_MDNS_INTERFACES",
    )
    ip_version: Literal["all", "v4", "v6"] = option(
        "all",
        help="IP versions to announce, browse and report: all, v4 or v6",
        flag="--mdns-ip-version",
        env="EXO_MDNS_IP_VERSION",
    )
    service_type: str = option(
        DEFAULT_SERVICE_TYPE,
        help="DNS-SD service type; every node of a cluster must use the same one",
        flag="--mdns-service-type",
        env="EXO_MDNS_SERVICE_TYPE",
    )
    instance_name: str | None = option(
        None,
        help="Service instance name (default: <hostname>-<last 8 chars of the peer id>)",
        flag="--mdns-instance-name",
        env="EXO_MDNS_INSTANCE_NAME",
    )
    browse_only: bool = option(
        False,
        help="Only look for peers; do not announce this node",
        flag="--mdns-browse-only",
        env="EXO_MDNS_BROWSE_ONLY",
    )
    interface_check_interval: float = option(
        5.0,
        help="Seconds between checks of this host's addresses (interfaces that come and go)",
        gt=0,
        le=3600,
    )
    record_ttl: int = option(
        120,
        help="TTL in seconds of the records we announce: how long a peer that vanished "
        "without a goodbye (crash, cable pulled) stays listed",
        ge=5,
        le=4500,
    )

    @field_validator("interfaces", mode="before")
    @classmethod
    def _all_or_list(cls, value: Any) -> Any:
        """Flags and env vars arrive as a list; ``all`` alone in it still means all."""
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
            value = value or ["all"]
        if isinstance(value, list | tuple):
            items = [str(item).strip() for item in value]
            if any(item.lower() == "all" for item in items):
                if len(items) > 1:
                    raise ValueError('"all" cannot be combined with interface names')
                return "all"
            if not items or not all(items):
                raise ValueError('give "all" or at least one interface name or IP')
            return tuple(items)
        return value

    @field_validator("service_type")
    @classmethod
    def _valid_type(cls, value: str) -> str:
        """A bad type would only fail later inside zeroconf, with a less helpful message."""
        text = value.strip()
        if not text.endswith("."):
            text += "."
        if not _SERVICE_TYPE.match(text) or "--" in text or text.split(".")[0].endswith("-"):
            raise ValueError(
                f"not a DNS-SD service type like {DEFAULT_SERVICE_TYPE!r} "
                "(_<1-15 letters, digits, hyphens>._tcp.local.)"
            )
        return text

    @field_validator("instance_name")
    @classmethod
    def _valid_instance(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not _LABEL.match(value.strip()) or len(value.strip().encode()) > 63:
            raise ValueError("must be 1-63 bytes without dots or control characters")
        return value.strip()

    @property
    def zc_ip_version(self) -> IPVersion:
        from zeroconf import IPVersion  # here: the config is read where zeroconf never runs

        return {"all": IPVersion.All, "v4": IPVersion.V4Only, "v6": IPVersion.V6Only}[
            self.ip_version
        ]
