"""Pytest fixtures for network-namespace labs (wire via ``pytest_plugins``).

Why a factory: some tests need one LAN, some need two isolated LANs at once;
every lab made here is closed at teardown even when the test failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.netns import NetnsLab, cleanup_stale, netns_available

__all__ = ["netns_lab"]

_stale_cleaned = False


@pytest.fixture
def netns_lab() -> Iterator[Callable[[int], NetnsLab]]:
    """Factory ``make(n_hosts) -> NetnsLab`` (entered); skips if netns are unavailable."""
    global _stale_cleaned
    ok, reason = netns_available()
    if not ok:
        pytest.skip(reason)
    if not _stale_cleaned:
        cleanup_stale()  # leftovers of an earlier run that was SIGKILLed
        _stale_cleaned = True
    labs: list[NetnsLab] = []

    def make(n_hosts: int = 2) -> NetnsLab:
        lab = NetnsLab(n_hosts)
        labs.append(lab)
        return lab.__enter__()

    try:
        yield make
    finally:
        for lab in reversed(labs):
            lab.close()
