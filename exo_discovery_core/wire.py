"""The messages peers exchange: JSON objects with a string ``type``, at most ``MAX_FRAME`` bytes.

Small and strict: bytes that are not UTF-8 JSON, or JSON that is not an object with a string
``type``, raise :class:`ProtocolError`, which closes the connection and nothing more. Each message
travels sealed in one frame of the session (:mod:`.session`).
"""

from __future__ import annotations

import json
from typing import Any

MAX_FRAME = 16 * 1024


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame; the connection is closed."""


def dumps(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ValueError(f"message of {len(body)} bytes exceeds {MAX_FRAME}")
    return body


def loads(body: bytes) -> dict[str, Any]:
    if not body or len(body) > MAX_FRAME:
        raise ProtocolError(f"message of {len(body)} bytes outside 1..{MAX_FRAME}")
    try:
        message = json.loads(body)
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, a 5,000-digit int, deep nesting
        raise ProtocolError(f"message is not JSON: {str(exc)[:100]}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("message is not an object with a string 'type'")
    return message
