"""The members view: the peer table as people read it (``tailscale status``, ``serf members``).

One row per peer: a short id (the shortest prefix no other row shares), the host name a source
gave, state, route class, round-trip time, last seen and sources; under a peer that is not
connected, why the last dial failed and when the next one is. It fits the width it is given, down
to 80 columns: the host name and the sources are cut first, and the address column appears only
when there is room for it. ``exo-discovery peers`` and the live view of ``run`` both print this.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .text import shown

if TYPE_CHECKING:
    from .status import PeerRow

MIN_WIDTH = 80
SHORT_ID_MIN = 12  # "12D3KooW" is common to every Ed25519 peer id: 4 more tell them apart
UNKNOWN_ID = "?"


def short_ids(peer_ids: Iterable[str], minimum: int = SHORT_ID_MIN) -> dict[str, str]:
    """Each id's shortest prefix (``minimum`` characters at least) that no other id starts with."""
    ids = sorted(set(peer_ids))
    short: dict[str, str] = {}
    for i, peer_id in enumerate(ids):
        neighbours = ids[max(i - 1, 0) : i] + ids[i + 1 : i + 2]  # sorted: only these can share
        shared = max((_common(peer_id, other) for other in neighbours), default=0)
        short[peer_id] = peer_id[: max(minimum, shared + 1)]
    return short


def _common(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def ago(seconds: float | None) -> str:
    """``now``, ``4s``, ``3m``, ``2h``, ``5d`` (``-`` when never)."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return "now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def rtt(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.1f}ms" if ms < 100 else f"{ms:.0f}ms"


@dataclass(frozen=True)
class _Column:
    title: str
    shrinks: bool = False  # cut (with "…") before the table is allowed to overflow
    least: int = 0  # narrowest a shrinking column gets


def cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def render(rows: Sequence[PeerRow], width: int = MIN_WIDTH, now: float | None = None) -> list[str]:
    """The table's lines, none longer than ``max(width, MIN_WIDTH)``."""
    if not rows:
        return ["no peers known (yet): see `exo-discovery doctor` for what each plugin sees"]
    width = max(width, MIN_WIDTH)
    now = time.time() if now is None else now
    ids = short_ids(str(r.peer_id) for r in rows if r.peer_id)
    wide = width >= 120
    columns = [
        _Column("PEER", shrinks=True, least=12),
        _Column("HOST", shrinks=True, least=4),
        _Column("STATE"),
        _Column("ROUTE"),
        _Column("LINK"),
        _Column("RTT"),
        _Column("SEEN"),
        *([_Column("ADDRESS", shrinks=True, least=12)] if wide else []),
        _Column("SOURCES", shrinks=True, least=7),
    ]
    cells = [  # every cell but the times may be a peer's or a server's word: shown, not obeyed
        [
            shown(text)
            for text in (
                ids[str(row.peer_id)] if row.peer_id else (row.addresses or [UNKNOWN_ID])[0],
                row.metadata.get("hostname", "-").removesuffix(".local") or "-",
                row.state,
                row.route or "-",
                row.link or "-",
                rtt(row.rtt_ms),
                ago(None if row.last_seen is None else now - row.last_seen),
                *([row.address or (row.addresses[0] if row.addresses else "-")] if wide else []),
                ",".join(row.sources) or "-",
            )
        ]
        for row in rows
    ]
    widths = _fit([c.title for c in columns], cells, columns, width)
    lines = [_line([c.title for c in columns], widths)]
    for row, texts in zip(rows, cells, strict=True):
        lines.append(_line(texts, widths))
        if row.state != "connected":
            lines.append(cut("  " + why_not(row), width))
        if row.meta:  # the peer's own, from its signed record
            pairs = ", ".join(f"{key}={value}" for key, value in sorted(row.meta.items()))
            lines.append(cut(f"  meta {shown(pairs, width)}", width))
    return lines


def why_not(row: PeerRow) -> str:
    """``↳ next try in 2 s: 10.0.0.2:52417: connection refused``: why a known peer is not
    connected (the next try first, so a cut line keeps it)."""
    reason = shown(row.last_reason or "not dialed yet")
    if row.retry_in is None:
        return f"↳ {reason}"
    when = f"next try in {row.retry_in:g} s" if row.retry_in > 0 else "dialing now"
    return f"↳ {when}: {reason}"


def _fit(
    titles: list[str], cells: list[list[str]], columns: list[_Column], width: int
) -> list[int]:
    widths = [max(len(t), *(len(r[i]) for r in cells)) for i, t in enumerate(titles)]
    floors = [
        max(c.least, len(t)) if c.shrinks else w
        for c, t, w in zip(columns, titles, widths, strict=True)
    ]
    over = sum(widths) + 2 * (len(widths) - 1) - width
    while over > 0:  # a character at a time from the widest column that may shrink: cuts are shared
        i = max(range(len(widths)), key=lambda i: (widths[i] - floors[i] > 0, widths[i]))
        if widths[i] <= floors[i]:
            break  # nothing left to cut: the lines are cut at the width instead
        widths[i] -= 1
        over -= 1
    return widths


def _line(texts: Sequence[str], widths: Sequence[int]) -> str:
    parts = [cut(t, w).ljust(w) for t, w in zip(texts, widths, strict=True)]
    return "  ".join(parts).rstrip()
