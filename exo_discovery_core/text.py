"""Text from elsewhere as a person may read it: on a terminal, in a log, in a table.

A peer's bye or refusal, a record's metadata, an mDNS name, a Headscale node name, an HTTP SD
label: any of it may carry an escape sequence (clear the screen, recolour, set the title), a
newline that forges a log line, or a bidi override that reverses what follows. Everything shown
to people passes through :func:`shown` at the output boundary (and where a protocol bounds a
field, when it is parsed); JSON output keeps the text as it came (``json`` escapes it).
"""

from __future__ import annotations

import logging

MAX_SHOWN = 300  # characters of one piece of text from elsewhere
MAX_LINE = 2000  # characters of one line of output: a log message, an event


def shown(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` with every character ``str.isprintable`` refuses (C0 and C1 controls, ESC, CR,
    LF, DEL, bidi overrides and other format characters, line separators, surrogates,
    unassigned code points) written as its escape (``\\x1b``, ``\\n``, ``\\u202e``), cut to
    ``limit`` characters with "…"."""
    if text.isprintable() and len(text) <= limit:
        return text
    clean = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )
    return clean if len(clean) <= limit else clean[: max(limit - 1, 0)] + "…"


def encodable(text: str) -> str:
    """``text`` with each lone surrogate (what a JSON ``\\ud800`` decodes to; UTF-8 cannot carry
    it, so JSON output would fail) as "?"; all else is kept, for JSON to escape."""
    return text.encode("utf-8", "replace").decode("utf-8")


class ShownFormatter(logging.Formatter):
    """A formatter whose every record is one line of printable text: a message cannot end the
    line early, start a forged one or drive the terminal (a traceback, with -vv, keeps its
    lines, each cleaned)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return shown(super().formatMessage(record), MAX_LINE)

    def format(self, record: logging.LogRecord) -> str:
        """The message as one line; a traceback or stack after it keeps its lines, each cleaned."""
        return "\n".join(shown(line, MAX_LINE) for line in super().format(record).splitlines())
