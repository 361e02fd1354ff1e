"""Text from elsewhere as a person may read it: on a terminal, in a log, in a table.

A peer's bye or refusal, a record's metadata, an mDNS name, a Headscale node name, an HTTP SD
label: any of it may carry an escape sequence (clear the screen, recolour, set the title), a
newline that forges a log line, or a bidi override that reverses what follows. Everything shown
to people passes through :func:`shown` at the output boundary (and where a protocol bounds a
field, when it is parsed); JSON output keeps the text as it came (``json`` escapes it).

Log records are made clean where they are made, not only where this package's CLI formats
them: a host program's own handlers (exo's, a journal, a file) never see raw text from
elsewhere. Every logger of the core and of the plugins' contexts is made by :func:`logger`,
whose :class:`ShownFilter` turns each record into one bounded line of printable text.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

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


class ShownFilter(logging.Filter):
    """Makes each record it passes one line of printable text (a message that is not: formatted
    and cleaned; its traceback's lines each cleaned) before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a call whose arguments do not fit: the handler says so
            return True
        if not message.isprintable() or len(message) > MAX_LINE:  # a clean one keeps its args
            record.msg, record.args = shown(message, MAX_LINE), ()
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = traceback_text(record.exc_info[1])
        if record.stack_info:
            lines = record.stack_info.splitlines()
            record.stack_info = "\n".join(shown(line, MAX_LINE) for line in lines)
        return True


_SHOWN_FILTER = ShownFilter()


def traceback_text(exc: BaseException) -> str:
    """``exc``'s traceback, each exception's message (and notes) as one clean line: a message
    quoting the network cannot start a line of its own that reads as a log line."""
    trace = traceback.TracebackException.from_exception(exc)
    seen: set[int] = set()
    pending = [trace]
    while pending:
        each = pending.pop()
        if id(each) in seen:
            continue
        seen.add(id(each))
        if isinstance(getattr(each, "_str", None), str):  # CPython's field for str(exc)
            each._str = shown(each._str, MAX_LINE)  # type: ignore[attr-defined]
        notes = getattr(each, "__notes__", None)
        if isinstance(notes, list):
            each.__notes__ = [shown(str(note), MAX_LINE) for note in notes]
        pending += [e for e in (each.__cause__, each.__context__) if e is not None]
        pending += getattr(each, "exceptions", None) or []
    return "\n".join(shown(line, MAX_LINE) for line in "".join(trace.format()).splitlines())


def logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, its records made clean by :class:`ShownFilter` (a logger's
    filter sees only the records logged on it, so each logger of ours gets one)."""
    log = logging.getLogger(name)
    if _SHOWN_FILTER not in log.filters:
        log.addFilter(_SHOWN_FILTER)
    return log


class ShownFormatter(logging.Formatter):
    """A formatter whose every record is one line of printable text: a message cannot end the
    line early, start a forged one or drive the terminal (a traceback, with -vv, keeps its
    lines, each cleaned)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return shown(super().formatMessage(record), MAX_LINE)

    def formatException(self, ei: Any) -> str:
        return traceback_text(ei[1]) if ei[1] is not None else super().formatException(ei)

    def format(self, record: logging.LogRecord) -> str:
        """The message as one line; a traceback or stack after it keeps its lines, each cleaned."""
        return "\n".join(shown(line, MAX_LINE) for line in super().format(record).splitlines())
