"""Frames on a node-to-node connection: a 4-byte big-endian length, then a JSON object.

Small and strict: a frame over ``MAX_FRAME`` bytes, a length of zero, bytes that are not UTF-8
JSON, or JSON that is not an object with a string ``type`` all raise :class:`ProtocolError`, which
closes the connection and nothing more.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from anyio.abc import ByteSendStream
from anyio.streams.buffered import BufferedByteReceiveStream

MAX_FRAME = 16 * 1024
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame; the connection is closed."""


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ValueError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


async def send(stream: ByteSendStream, message: dict[str, Any]) -> None:
    await stream.send(encode(message))


async def receive(stream: BufferedByteReceiveStream) -> dict[str, Any]:
    (length,) = _HEADER.unpack(await stream.receive_exactly(_HEADER.size))
    if length == 0 or length > MAX_FRAME:
        raise ProtocolError(f"frame length {length} outside 1..{MAX_FRAME}")
    body = await stream.receive_exactly(length)
    try:
        message = json.loads(body)
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, a 5,000-digit int, deep nesting
        raise ProtocolError(f"frame is not JSON: {str(exc)[:100]}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("frame is not an object with a string 'type'")
    return message
