"""Prometheus target groups, the format of its ``file_sd`` and ``http_sd``: ``[{targets, labels}]``.

One reader for every source that speaks it (the http plugin's answer, the bootstrap peers file),
so the rules and the messages are the same everywhere. A group is a list of ``host:port``
targets and a map of labels; the labels are hints shown as the peers' metadata, except
``peer_id``, which pins who must answer at the group's targets (all of them are then addresses
of that one peer). Problems name the group and the field by position, never echo the content.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .identity import PeerId
from .models import Address, PeerCandidate

if TYPE_CHECKING:
    from pydantic import TypeAdapter

PEER_ID_LABEL = "peer_id"
"""The label that pins the peer id of a group's targets (libp2p form, ``12D3KooW...``)."""
LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
"""Prometheus' label name rule."""

_LabelName = Annotated[str, Field(pattern=LABEL_NAME, max_length=128)]
_LabelValue = Annotated[str, Field(max_length=1024)]
_Target = Annotated[str, Field(min_length=1, max_length=300)]
_BRACKETED = re.compile(r"^\[(?P<host>[^\]]+)\](?::(?P<port>.*))?$")
_HOST = re.compile(r"^[A-Za-z0-9_.:-]+$")  # an IP literal or a DNS name: nothing else


class TargetGroupError(ValueError):
    """The data is not a list of target groups; the message says where (group, field)."""


class TargetGroup(BaseModel):
    """One ``{"targets": [...], "labels": {...}}``; unknown keys are ignored, as Prometheus does."""

    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)

    targets: tuple[_Target, ...] = ()
    labels: dict[_LabelName, _LabelValue] = Field(default_factory=dict, max_length=64)

    @property
    def peer_id(self) -> PeerId | None:
        """The pinned peer id; :class:`ValueError` if the label is there but not a peer id."""
        text = self.labels.get(PEER_ID_LABEL)
        return PeerId.parse(text) if text else None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The labels as candidate metadata (``peer_id`` is not metadata: it is the identity)."""
        return tuple(sorted((k, v) for k, v in self.labels.items() if k != PEER_ID_LABEL))


@functools.cache
def _groups() -> TypeAdapter[list[TargetGroup]]:
    """Built on first use, not when a plugin that might read target groups is imported (nor
    is pydantic's TypeAdapter module: a node whose peers file is not target groups never
    needs it)."""
    from pydantic import TypeAdapter

    return TypeAdapter(list[TargetGroup])


def parse_target_groups(data: Any, *, max_targets: int) -> list[TargetGroup]:
    """Validate decoded JSON/YAML (or raw JSON bytes) as target groups, ``max_targets`` in all."""
    try:
        if isinstance(data, bytes | str):
            groups = _groups().validate_json(data)
        else:
            groups = _groups().validate_python(data)
    except ValidationError as exc:
        raise TargetGroupError(f"not a list of target groups: {_first_error(exc)}") from None
    total = sum(len(group.targets) for group in groups)
    if total > max_targets:
        raise TargetGroupError(f"{total} targets, more than the limit of {max_targets}")
    return groups


def target_address(text: str, default_port: int) -> Address:
    """``host:port``, ``[v6]:port`` or a bare host or IP (at ``default_port``)."""
    match = _BRACKETED.match(text)
    if match is not None:
        host, port = match["host"], match["port"]
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:  # a bare name, IPv4 or IPv6 address
        host, port = text, None
    if not _HOST.match(host):
        raise ValueError("the host is neither an IP address nor a DNS name")
    if port is not None and not (port.isascii() and port.isdigit() and len(port) <= 5):
        raise ValueError("the port is not a number")
    return Address(host=host, port=int(port) if port is not None else default_port)


def group_candidates(
    groups: Iterable[TargetGroup], default_port: int, *, source: str
) -> tuple[list[PeerCandidate], list[str]]:
    """The candidates of ``groups`` and one problem line per target or group that was skipped.

    A group with a ``peer_id`` label is one candidate with all its targets; any other target is
    a candidate of its own. A bad target or peer id skips only itself (``source`` names the
    list in the problem lines).
    """
    candidates: list[PeerCandidate] = []
    problems: list[str] = []
    for index, group in enumerate(groups):
        where = f"{source} group {index}"
        try:
            peer_id = group.peer_id
        except ValueError as exc:
            problems.append(f"{where}: label {PEER_ID_LABEL!r} is not a peer id ({exc})")
            continue
        addresses: list[Address] = []
        for position, target in enumerate(group.targets):
            try:
                addresses.append(target_address(target, default_port))
            except ValueError as exc:
                problems.append(f"{where} target {position}: not HOST:PORT ({_reason(exc)})")
        if not addresses:
            continue
        if peer_id is not None:
            unique = tuple(dict.fromkeys(addresses))
            candidates.append(
                PeerCandidate(peer_id=peer_id, addresses=unique, metadata=group.metadata)
            )
        else:
            candidates += [
                PeerCandidate(addresses=(address,), metadata=group.metadata)
                for address in addresses
            ]
    return candidates, problems


def _reason(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        return _first_error(exc)
    return str(exc)


def _location(part: int | str) -> str:
    """A path part as shown: an index or a field name; a key the source chose shows as ``?``."""
    text = str(part)
    return text if re.fullmatch(r"[A-Za-z0-9_\[\]]{1,40}", text) else "?"


def _first_error(exc: ValidationError) -> str:
    """The first problem by location only: what the source sent is never echoed."""
    errors = exc.errors(include_input=False, include_url=False, include_context=False)
    if not errors:
        return "invalid"
    err = errors[0]
    where = "/".join(map(_location, err["loc"])) or "top level"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"at {where}: {err['msg']}{more}"


__all__ = [
    "LABEL_NAME",
    "PEER_ID_LABEL",
    "TargetGroup",
    "TargetGroupError",
    "group_candidates",
    "parse_target_groups",
    "target_address",
]
