"""The mutual handshake: each side proves it holds the key of the peer id it claims.

Both sides send ``hello`` (protocol, namespace, peer id, a fresh 32-byte nonce, listen port) at
once, then ``proof``: an Ed25519 signature over the other side's nonce bound to both peer ids and
the namespace, so a proof cannot be replayed to another peer, another session or another cluster.
The peer id embeds the public key, so no key needs to be trusted beyond the id itself.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
from dataclasses import dataclass
from typing import Any

from anyio.abc import ByteSendStream
from anyio.streams.buffered import BufferedByteReceiveStream

from . import wire
from .identity import Identity, InvalidPeerId, PeerId

PROTOCOL = "exo-discovery/1"
_NONCE_BYTES = 32


class HandshakeError(Exception):
    """The peer was refused; the message says why, for one clear log line."""


class SelfConnection(HandshakeError):
    """We dialed ourselves (our own address was listed as a peer)."""


@dataclass(frozen=True)
class Handshake:
    peer_id: PeerId
    listen_port: int


def _transcript(nonce: bytes, signer: PeerId, verifier: PeerId, namespace: str) -> bytes:
    return b"\0".join(
        [PROTOCOL.encode(), b"proof", nonce, signer.encode(), verifier.encode(), namespace.encode()]
    )


def _field(message: dict[str, Any], name: str, kind: type) -> Any:
    value = message.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise HandshakeError(f"{message.get('type')!r} frame has no valid {name!r}")
    return value


def _b64(message: dict[str, Any], name: str, size: int) -> bytes:
    try:
        data = base64.b64decode(_field(message, name, str), validate=True)
    except (binascii.Error, ValueError):  # ValueError: a non-ASCII string
        raise HandshakeError(f"{name!r} is not base64") from None
    if len(data) != size:
        raise HandshakeError(f"{name!r} must be {size} bytes")
    return data


async def _expect(stream: BufferedByteReceiveStream, kind: str) -> dict[str, Any]:
    message = await wire.receive(stream)
    if message["type"] == "refuse":
        raise HandshakeError(f"peer refused us: {str(message.get('reason', '?'))[:200]}")
    if message["type"] != kind:
        raise HandshakeError(f"expected {kind!r} frame, got {message['type'][:40]!r}")
    return message


async def perform(
    send: ByteSendStream,
    receive: BufferedByteReceiveStream,
    *,
    identity: Identity,
    namespace: str,
    listen_port: int,
    expected: PeerId | None = None,
) -> Handshake:
    """Run the handshake on a fresh connection; raise HandshakeError (after telling the peer why)."""
    nonce = os.urandom(_NONCE_BYTES)
    await wire.send(
        send,
        {
            "type": "hello",
            "protocol": PROTOCOL,
            "namespace": namespace,
            "peer_id": str(identity.peer_id),
            "nonce": base64.b64encode(nonce).decode(),
            "port": listen_port,
        },
    )
    try:
        hello = await _expect(receive, "hello")
        if hello.get("protocol") != PROTOCOL:
            raise HandshakeError(
                f"protocol {str(hello.get('protocol'))[:40]!r}, we speak {PROTOCOL!r}"
            )
        theirs = _field(hello, "namespace", str)
        if theirs != namespace:
            raise HandshakeError(f"namespace {theirs[:64]!r} is not ours ({namespace!r})")
        try:
            peer_id = PeerId.parse(_field(hello, "peer_id", str))
        except InvalidPeerId as exc:
            raise HandshakeError(str(exc)[:200]) from None
        if peer_id == identity.peer_id:
            raise SelfConnection("connected to ourselves")
        if expected is not None and peer_id != expected:
            raise HandshakeError(f"answered as {peer_id}, expected {expected}")
        port = _field(hello, "port", int)
        if not 0 <= port <= 65535:
            raise HandshakeError(f"port {port} out of range")
        their_nonce = _b64(hello, "nonce", _NONCE_BYTES)
        signature = identity.sign(_transcript(their_nonce, identity.peer_id, peer_id, namespace))
        await wire.send(send, {"type": "proof", "signature": base64.b64encode(signature).decode()})
        proof = await _expect(receive, "proof")
        if not peer_id.verify(
            _b64(proof, "signature", 64), _transcript(nonce, peer_id, identity.peer_id, namespace)
        ):
            raise HandshakeError(f"peer could not prove it holds the key of {peer_id}")
    except HandshakeError as exc:
        # the peer may be gone already; the refusal stands either way
        with contextlib.suppress(Exception):
            await wire.send(send, {"type": "refuse", "reason": str(exc)})
        raise
    return Handshake(peer_id=peer_id, listen_port=port)
