"""Talking to a remote source that may be hostile: read no more than a limit of what it sends
(its body costs at most ``limit`` bytes, whatever its ``Content-Length`` says), say why a
request failed in a few words taken from the error's cause, never from the request itself,
and let the HTTP client's own log records reach a host's handlers clean."""

from __future__ import annotations

import os
from collections.abc import AsyncIterable
from urllib.parse import urlsplit

from .text import logger

# every logger httpx and httpcore log through, by name: httpcore makes each one when the
# module that logs is first imported (on the first request), so a walk of the loggers made so
# far would miss them, and a filter on "httpcore" does not see its children's records
HTTP_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


def clean_http_logs() -> None:
    """Make the records of httpx and httpcore clean where they are made, as ours are
    (:func:`~.text.logger`): they quote what a server said (a reason phrase, its headers, at
    DEBUG all of them on one line), which may hold a control character or run to 16 KiB."""
    for name in HTTP_LOGGERS:
        logger(name)


def check_http_url(value: str, *, example: str, allow_query: bool = True) -> str:
    """``value`` if it is an http(s) URL with a host and no credentials, else ValueError saying
    which (credentials in a URL would show in logs; they belong in a secret option)."""
    text = value.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"has no host (expected e.g. {example})")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not hold credentials; put them in the key or token option")
    if not allow_query and (parts.query or parts.fragment):
        raise ValueError("must not have a query or fragment")
    return text


class TooLarge(Exception):
    """The body is over ``limit`` bytes (declared or sent); nothing of it is kept."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit


async def read_limited(
    chunks: AsyncIterable[bytes],
    limit: int,
    *,
    declared_length: str | None = None,
    truncate: bool = False,
) -> bytes:
    """The body from ``chunks``; :class:`TooLarge` past ``limit`` bytes, or with ``truncate``
    its first ``limit`` bytes (an error page, read only to quote it). ``declared_length`` (a
    ``Content-Length``) over the limit fails before a byte is read."""
    if (
        not truncate
        and declared_length is not None
        and declared_length.isascii()
        and declared_length.isdigit()
        and int(declared_length) > limit
    ):
        raise TooLarge(limit)
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            if truncate:
                return bytes(body[:limit])
            raise TooLarge(limit)
    return bytes(body)


def short_reason(exc: BaseException) -> str:
    """A few words on why ``exc`` happened ("connection refused"), from the OS error under it.

    Never ``str(exc)`` of an HTTP error, which may hold the URL with its query, or headers.
    """
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno).lower()
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__
