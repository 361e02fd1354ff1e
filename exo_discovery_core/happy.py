"""Happy Eyeballs (RFC 8305, section 5): try a peer's addresses in parallel, staggered.

The first attempt starts at once; each next one starts when the one before it failed, or after
``delay`` (the RFC's Connection Attempt Delay, 250 ms recommended, 100 ms to 2 s) if it is
still running. The first success wins; every other attempt is cancelled, and one that succeeds
anyway after the win is handed to ``discard`` (closed), so exactly one connection is kept.
Addresses are tried in the caller's order of preference, IPv6 and IPv4 interleaved within it
(section 4) by :func:`interleave`.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import anyio

from .models import Address

T = TypeVar("T")

ATTEMPT_DELAY = 0.25
"""RFC 8305's recommended Connection Attempt Delay, in seconds."""


class AllFailed(Exception):
    """Every attempt failed; ``errors`` are their exceptions, in the order they were started."""

    def __init__(self, errors: list[BaseException]) -> None:
        super().__init__("; ".join(str(e) or type(e).__name__ for e in errors) or "no attempts")
        self.errors = errors


async def race(
    attempts: Sequence[Callable[[], Awaitable[T]]],
    *,
    delay: float = ATTEMPT_DELAY,
    discard: Callable[[T], Awaitable[None]],
) -> tuple[int, T]:
    """The index and result of the first attempt that succeeds; :class:`AllFailed` if none.

    One attempt (a peer with one address, the usual case) is awaited here: no race, so no
    task, task group or event for it."""
    if len(attempts) == 1:
        try:
            return 0, await attempts[0]()
        except Exception as exc:  # noqa: BLE001 - reported as the race reports it
            raise AllFailed([exc]) from None
    winner: list[tuple[int, T]] = []
    errors: list[BaseException | None] = [None] * len(attempts)
    done = [anyio.Event() for _ in attempts]
    async with anyio.create_task_group() as group:

        async def run(index: int) -> None:
            try:
                result = await attempts[index]()
            except Exception as exc:  # noqa: BLE001 - one failed address is the next one's turn
                errors[index] = exc
                done[index].set()
                return
            if winner:  # won by another: keep exactly one
                with anyio.CancelScope(shield=True):
                    await discard(result)
                return
            winner.append((index, result))
            group.cancel_scope.cancel()

        for index in range(len(attempts)):
            group.start_soon(run, index)
            if index + 1 < len(attempts):
                with anyio.move_on_after(delay):
                    await done[index].wait()  # a failure starts the next one at once
    if winner:
        return winner[0]
    raise AllFailed([e for e in errors if e is not None])


def interleave(
    addresses: Sequence[Address], rank: Callable[[Address], object] = lambda address: 0
) -> list[Address]:
    """``addresses`` (best first) with IPv6 and IPv4 alternating within each run of equal
    ``rank`` (a link class): each family's order kept, the run's best family first (RFC 8305
    section 4). A worse rank never moves ahead of a better one; names stay in their place."""
    out: list[Address] = []
    for _, run in itertools.groupby(addresses, key=rank):
        out += _alternate(list(run))
    return out


def _alternate(addresses: list[Address]) -> list[Address]:
    families: dict[int | None, list[Address]] = {}
    for address in addresses:
        ip = address.ip
        families.setdefault(ip.version if ip is not None else None, []).append(address)
    queues = list(families.values())  # in order of first appearance: the best family first
    out: list[Address] = []
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop(0))
    return out
