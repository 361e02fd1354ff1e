"""A normalised view of a Headscale node (ints, parsed IPs, one tag set), for the spec tests.

The plugin reasons on :class:`WireNode` directly; this view only lets the tests state, version by
version, what each field of the published node object means.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from exo_discovery_core import IP, parse_ips
from exo_discovery_headscale.api import TagField, WireNode


@dataclass(frozen=True)
class HeadscaleNode:
    """A node of any Headscale version, normalised."""

    id: int
    name: str
    addresses: tuple[IP, ...]
    online: bool
    tags: frozenset[str]
    user: str | None
    last_seen: datetime | None = None
    tag_field: TagField = "tags"

    @classmethod
    def from_wire(cls, wire: WireNode) -> HeadscaleNode:
        return cls(
            id=wire.id,
            name=wire.hostname,
            addresses=parse_ips(wire.ipAddresses or ()),
            online=bool(wire.online),
            tags=frozenset(wire.tag_set),
            user=wire.user.name if wire.user and wire.user.name else None,
            last_seen=_parse_time(wire.lastSeen),
            tag_field=wire.tag_field,
        )


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
