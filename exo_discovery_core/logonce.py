"""Say a thing once, and again only when it changes: the log of a source that fails every round.

A failure retried every few seconds is one line, not one per round; a different failure is a new
line; ``clear`` when it is over (so the recovery can be said once, and a later failure is news).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Any


class LogOnce:
    """What was last said about each topic (a file, a DNS name, a peer), for ``log``."""

    def __init__(self, log: logging.Logger, max_topics: int | None = None) -> None:
        """``max_topics`` bounds what is remembered when the network picks the topics (source
        addresses): the oldest topic is forgotten first, so at worst it is said again."""
        self.logger = log
        self._said: dict[Hashable, Hashable] = {}
        self._max_topics = max_topics

    def changed(self, topic: Hashable, value: Hashable) -> bool:
        """Record ``value`` as what ``topic`` is now; True when that is news (first or different)."""
        if topic in self._said and self._said[topic] == value:
            return False
        self._said.pop(topic, None)  # re-inserted last: the newest topic is forgotten last
        self._said[topic] = value
        if self._max_topics is not None and len(self._said) > self._max_topics:
            del self._said[next(iter(self._said))]
        return True

    def log(self, level: int, topic: Hashable, message: str, *args: Any) -> bool:
        """Log ``message % args`` unless it is what was last logged about ``topic``; True if it was."""
        if not self.changed(topic, message % args if args else message):
            return False
        self.logger.log(level, message, *args)
        return True

    def warning(self, topic: Hashable, message: str, *args: Any) -> bool:
        return self.log(logging.WARNING, topic, message, *args)

    def info(self, topic: Hashable, message: str, *args: Any) -> bool:
        return self.log(logging.INFO, topic, message, *args)

    def clear(self, topic: Hashable) -> bool:
        """Forget ``topic``; True when something had been said about it (say it is resolved)."""
        return self._said.pop(topic, _UNSET) is not _UNSET

    def __contains__(self, topic: Hashable) -> bool:
        return topic in self._said

    def topics(self) -> list[Hashable]:
        return list(self._said)


_UNSET = object()
