"""The messages peers exchange: JSON objects with a string ``type``, at most ``MAX_FRAME`` bytes.

Small and strict: bytes that are not UTF-8 JSON, or JSON that is not an object with a string
``type``, raise :class:`ProtocolError`, which closes the connection and nothing more. Each message
travels sealed in one frame of the session (:mod:`.session`).
"""

from __future__ import annotations

import json
from typing import Any

MAX_FRAME = 16 * 1024
# One encoder for all: json.dumps with any argument builds a new JSONEncoder on every call.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame; the connection is closed."""


def to_json(value: dict[str, Any]) -> bytes:
    """Compact JSON, UTF-8 (ASCII, in fact: non-ASCII text is escaped)."""
    return _COMPACT.encode(value).encode()


def from_json(body: bytes) -> Any:
    """UTF-8 JSON; ValueError (bad UTF-8 or JSON, a 5,000-digit int) or RecursionError otherwise.

    Decoded first: ``json.loads`` of bytes would also sniff for UTF-16 and UTF-32, at a cost."""
    return json.loads(body.decode())


def dumps(message: dict[str, Any]) -> bytes:
    body = to_json(message)
    if len(body) > MAX_FRAME:
        raise ValueError(f"message of {len(body)} bytes exceeds {MAX_FRAME}")
    return body


def loads(body: bytes) -> dict[str, Any]:
    if not body or len(body) > MAX_FRAME:
        raise ProtocolError(f"message of {len(body)} bytes outside 1..{MAX_FRAME}")
    try:
        message = from_json(body)
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, a 5,000-digit int, deep nesting
        raise ProtocolError(f"message is not JSON: {str(exc)[:100]}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("message is not an object with a string 'type'")
    return message
