"""The v2 handshake: Noise XX (XXpsk0 with a cluster key) binding each side's Ed25519 peer id.

On the wire, every length big-endian::

    I -> R  preamble, len16 + Noise message 1   payload empty
    R -> I  preamble, len16 + Noise message 2   payload: R's proof and hello
    I -> R  len16 + Noise message 3             payload: I's proof and hello
    R -> I  only if R judges ids (trusted_peers): sealed accept, or a sealed refuse

The preamble is one length byte and the protocol id in plaintext, so a peer of another version
is answered with ours and the connection closed: both sides can say which versions met. With a
cluster key, message 1 is sealed by it (psk0): a responder that cannot open it closes at once
without a byte (WireGuard's habit), so a client without the key learns nothing, not even a peer
id. A proof is what libp2p-noise sends: the identity key and its signature over a domain string
and the sender's Noise static key, so the Noise session is the peer id's. Ephemeral keys give
forward secrecy; the static key lives as long as the process, so its signature is made once.

Each side checks the same things of the other (version, namespace, not itself), so after
message 3 an honest initiator is accepted, and it need not wait for a verdict (one round trip
less) unless the responder said it also judges peer ids: then its record waits for the accept.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
from collections.abc import Iterable
from typing import Any

import anyio
from anyio.abc import ByteStream

from . import noise, wire
from .clusterkey import Keyring
from .crypto import Ed25519PublicKey, InvalidSignature, X25519PrivateKey
from .identity import Identity, PeerId, forget_ids
from .records import forget_checked
from .session import ExactReceiver, Session, frame, read_frame, reader
from .text import shown

PROTOCOL = "exo-discovery/2"
PROTOCOL_FAMILY = "exo-discovery/"
SIGNATURE_DOMAIN = b"exo-discovery-noise-static-key:"
PATTERN = "Noise_XX_25519_ChaChaPoly_SHA256"
PATTERN_WITH_KEY = "Noise_XXpsk0_25519_ChaChaPoly_SHA256"
MAX_PREAMBLE = 32  # "exo-discovery/2" is 15
MAX_FIRST = 64  # message 1: an ephemeral key and, with a cluster key, a tag
MAX_HANDSHAKE = 8 * 1024  # messages 2 and 3: keys, a proof, a hello with a record


class HandshakeError(Exception):
    """The peer was refused, or refused us; the message says why, for one clear log line."""


class SelfConnection(HandshakeError):
    """The other end proved our own peer id: ourselves (our own address was listed as a peer),
    or another node holding our key; ``record`` is the one it sent, to tell which (its boot)."""

    def __init__(self, record: bytes) -> None:
        super().__init__("connected to ourselves")
        self.record = record


class Unanswered(HandshakeError):
    """The other end closed before saying anything: a node without our cluster key (which says
    nothing, by design), a node shutting down, or no exo-discovery node at all. It is not a
    refusal: a peer that was restarting answers a moment later."""


class NamespaceMismatch(HandshakeError):
    """The peer is of another namespace; both are named."""


class IncompatibleVersion(HandshakeError):
    """The peer speaks another version of the protocol; both are named."""

    def __init__(self, theirs: str, ours: str) -> None:
        named = theirs if _is_protocol_id(theirs.encode()) else repr(theirs[:40])
        super().__init__(f"the peer speaks {named}, this node speaks {ours}")
        self.theirs, self.ours = theirs, ours


class Credentials:
    """What this node proves and demands in every handshake, prepared once per process."""

    def __init__(
        self,
        identity: Identity,
        *,
        namespace: str,
        keyring: Keyring | None = None,
        trusted: Iterable[PeerId] = (),
        protocol: str = PROTOCOL,
    ) -> None:
        self.peer_id = identity.peer_id
        self.namespace = namespace
        self.keyring = keyring or Keyring()
        self.trusted = frozenset(trusted)
        self.protocol = protocol
        self.preamble = bytes([len(protocol)]) + protocol.encode()
        self.static = X25519PrivateKey.generate()
        static_public = noise.public_bytes(self.static)
        key = identity.peer_id.public_key().public_bytes_raw()
        # what both messages 2 and 3 open with: the proof and what the other side checks
        self.introduction = {
            "key": _b64(key),
            "sig": _b64(identity.sign(SIGNATURE_DOMAIN + static_public)),
            "protocol": protocol,
            "namespace": namespace,
        }

    def __repr__(self) -> str:
        return f"Credentials(peer_id={self.peer_id!s}, keyring={self.keyring!r})"

    def noise(self, *, initiator: bool, key: bytes | None) -> noise.HandshakeState:
        return noise.HandshakeState(
            PATTERN if key is None else PATTERN_WITH_KEY,
            initiator=initiator,
            prologue=self.protocol.encode(),
            static=self.static,
            psks=[] if key is None else [key],
        )

    def check_peer(
        self, peer_id: PeerId, hello: dict[str, Any], expected: PeerId | None = None
    ) -> None:
        if peer_id == self.peer_id:
            raise SelfConnection(_bytes(hello, "record"))
        if expected is not None and peer_id != expected:
            raise HandshakeError(f"answered as {peer_id}, expected {expected}")
        if self.trusted and peer_id not in self.trusted:
            raise HandshakeError(f"{peer_id} is not in trusted_peers")

    def check_hello(self, hello: dict[str, Any]) -> None:
        protocol, namespace = _text(hello, "protocol"), _text(hello, "namespace")
        if protocol != self.protocol:
            raise IncompatibleVersion(protocol, self.protocol)
        if namespace != self.namespace:
            raise NamespaceMismatch(
                f"namespace {namespace[:64]!r} is not ours ({self.namespace!r})"
            )


async def initiate(
    stream: ByteStream,
    credentials: Credentials,
    *,
    local_record: bytes = b"",
    listen_port: int = 0,
    expected: PeerId | None = None,
    verify_only: bool = False,
) -> Session:
    """Dial side; HandshakeError if either side refuses (the caller bounds the time).

    ``verify_only`` says in our hello that we came to learn who answers (its proven id and its
    record) and will close: the responder then does not count it as a connection."""
    try:
        return await _initiate(
            stream, credentials, local_record, listen_port, expected, verify_only
        )
    except noise.NoiseError as exc:  # e.g. a low-order ephemeral key from the peer
        raise HandshakeError(f"handshake: {exc}") from None


async def respond(
    stream: ByteStream, credentials: Credentials, *, local_record: bytes = b""
) -> Session:
    """Listen side; HandshakeError if either side refuses (the caller bounds the time).

    Until the initiator has proven that it holds an accepted cluster key, nothing is sent but,
    to a client of another version, the preamble."""
    try:
        return await _respond(stream, credentials, local_record)
    except noise.NoiseError as exc:
        raise HandshakeError(f"handshake: {exc}") from None


async def _initiate(
    stream: ByteStream,
    credentials: Credentials,
    local_record: bytes,
    listen_port: int,
    expected: PeerId | None,
    verify_only: bool = False,
) -> Session:
    receive = reader(stream)
    state = credentials.noise(initiator=True, key=credentials.keyring.primary)
    await stream.send(credentials.preamble + frame(state.write_message()))
    try:
        theirs = await _read_preamble(receive)
    except wire.ProtocolError as exc:
        raise HandshakeError(str(exc)) from None
    if theirs is None:
        raise Unanswered(
            "closed without answering: it is not an exo-discovery node, or its cluster key is "
            "not ours" + (" (we have none)" if not credentials.keyring else "")
        )
    if theirs != credentials.protocol:
        raise IncompatibleVersion(theirs, credentials.protocol)
    answer = open_payload(state, await read_frame(receive, MAX_HANDSHAKE))
    peer_id = verify_proof(answer, state.rs)
    hello = {
        **credentials.introduction,
        "record": _b64(local_record),
        "port": listen_port,
        **({"verify": True} if verify_only else {}),
    }
    message3 = frame(state.write_message(wire.to_json(hello)))
    try:
        credentials.check_peer(peer_id, answer, expected)
        credentials.check_hello(answer)
    except (SelfConnection, IncompatibleVersion, NamespaceMismatch):
        await stream.send(message3)  # it finds the same in ours and says so (sealed), or not at all
        raise
    await stream.send(message3)
    session = _session(stream, receive, state, peer_id)
    if answer.get("judges") is not True:
        # it checks nothing we did not check ourselves: an honest peer accepts us now
        session.remote_record = _bytes(answer, "record")
        return session
    verdict = await session.receive()
    if verdict["type"] == "refuse":
        raise HandshakeError(f"refused by {peer_id}: {shown(str(verdict.get('reason')), 200)}")
    if verdict["type"] != "accept":
        raise HandshakeError(f"expected 'accept', got {verdict['type'][:40]!r}")
    session.remote_record = _bytes(verdict, "record")
    return session


async def _respond(stream: ByteStream, credentials: Credentials, local_record: bytes) -> Session:
    receive = reader(stream)
    theirs = await _read_preamble(receive)
    if theirs is None or not theirs.startswith(PROTOCOL_FAMILY):
        raise HandshakeError("not an exo-discovery client")
    if theirs != credentials.protocol:
        await stream.send(credentials.preamble)
        raise IncompatibleVersion(theirs, credentials.protocol)
    first = await read_frame(receive, MAX_FIRST)
    state = _accept_first(credentials, first)
    # With trusted_peers we judge the initiator's id, which it cannot foresee: it waits for our
    # verdict, and our record goes with the accept, to no one we would refuse.
    judges = bool(credentials.trusted)
    answer = {
        **credentials.introduction,
        "judges": judges,
        "record": "" if judges else _b64(local_record),
    }
    await stream.send(credentials.preamble + frame(state.write_message(wire.to_json(answer))))
    hello = open_payload(state, await read_frame(receive, MAX_HANDSHAKE))
    peer_id = verify_proof(hello, state.rs)
    session = _session(stream, receive, state, peer_id)
    try:
        credentials.check_peer(peer_id, hello)
        credentials.check_hello(hello)
        port = hello.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise HandshakeError("'port' is not a port number")
        session.remote_record = _bytes(hello, "record")
        session.listen_port = port
        session.verify_only = hello.get("verify") is True
    except HandshakeError as exc:
        await _refuse(session, exc)
        raise
    if judges:
        await session.send({"type": "accept", "record": _b64(local_record)}, timeout=5.0)
    return session


def _accept_first(credentials: Credentials, message: bytes) -> noise.HandshakeState:
    """The handshake state under the first accepted key that opens message 1 (rotation: any)."""
    for key in credentials.keyring.accepted or [None]:
        state = credentials.noise(initiator=False, key=key)
        try:
            payload = state.read_message(message)
        except noise.NoiseError:
            continue
        if payload:
            break  # message 1 carries nothing; an XX responder reads a keyed message as payload
        return state
    if not credentials.keyring:
        raise HandshakeError("the peer has a cluster key and we have none")
    if len(message) == noise.DHLEN:
        raise HandshakeError("the peer has no cluster key")
    raise HandshakeError("the peer's cluster key is not one of ours")


async def _read_preamble(receive: ExactReceiver) -> str | None:
    """The peer's protocol id; None if it closed first. Anything but printable ASCII is refused."""
    try:
        (length,) = await receive.receive_exactly(1)
    except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
        return None
    if not 0 < length <= MAX_PREAMBLE:  # an HTTP request ("G" is 71) is refused at once
        raise wire.ProtocolError("the preamble is not a protocol id")
    raw = await receive.receive_exactly(length)
    if not _is_protocol_id(raw):
        raise wire.ProtocolError("the preamble is not a protocol id")
    return raw.decode()


def _is_protocol_id(raw: bytes) -> bool:
    return 0 < len(raw) <= MAX_PREAMBLE and all(0x21 <= c <= 0x7E for c in raw)


def open_payload(state: noise.HandshakeState, message: bytes) -> dict[str, Any]:
    """Read handshake ``message``: its payload, a JSON object."""
    try:
        payload = state.read_message(message)
    except noise.NoiseError as exc:
        raise HandshakeError(f"handshake message: {exc}") from None
    try:
        value = wire.from_json(payload)
    except (ValueError, RecursionError):
        raise HandshakeError("handshake payload is not JSON") from None
    if not isinstance(value, dict):
        raise HandshakeError("handshake payload is not an object")
    return value


def verify_proof(proof: dict[str, Any], static: bytes | None) -> PeerId:
    """The peer id whose key signed the peer's Noise static key."""
    key, signature = _bytes(proof, "key"), _bytes(proof, "sig")
    if len(key) != 32 or len(signature) != 64 or static is None:
        raise HandshakeError("the peer's proof is not an Ed25519 key and signature")
    if not _signed(key, signature, static):
        raise HandshakeError("the peer could not prove its peer id")
    return PeerId.from_raw_key(key)  # a valid key: _signed parsed it


@functools.lru_cache(maxsize=1024)
def _signed(key: bytes, signature: bytes, static: bytes) -> bool:
    """A peer's static key lives as long as its process: each reconnection shows the same proof."""
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, SIGNATURE_DOMAIN + static)
    except (InvalidSignature, ValueError):
        return False
    return True


def forget_proofs() -> None:
    """Forget every proof seen and every peer id worked out, so the next handshake with any peer
    costs what a first one does (the benchmark measures first meetings, not reconnections):
    its record too is checked again."""
    _signed.cache_clear()
    forget_ids()
    forget_checked()


def _session(
    stream: ByteStream,
    receive: ExactReceiver,
    state: noise.HandshakeState,
    peer_id: PeerId,
) -> Session:
    assert state.transport is not None
    return Session(stream, receive, state.transport, peer_id)


async def _refuse(session: Session, reason: HandshakeError) -> None:
    """Tell an authenticated peer why, sealed; it may be gone already, the refusal stands."""
    with contextlib.suppress(Exception):
        await session.send({"type": "refuse", "reason": str(reason)}, timeout=1.0)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _text(message: dict[str, Any], name: str) -> str:
    value = message.get(name)
    if not isinstance(value, str):
        raise HandshakeError(f"handshake has no valid {name!r}")
    return value


def _bytes(message: dict[str, Any], name: str) -> bytes:
    try:  # strict: only the alphabet, padding only at the end (b64decode's validate, in C)
        return binascii.a2b_base64(_text(message, name), strict_mode=True)
    except (binascii.Error, ValueError):  # ValueError: a non-ASCII string
        raise HandshakeError(f"{name!r} is not base64") from None
