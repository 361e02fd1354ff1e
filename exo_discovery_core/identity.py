"""The node's identity: an Ed25519 key kept on disk, named by a libp2p peer id.

The peer id is the libp2p form (``12D3KooW...``): base58btc of an identity multihash over the
protobuf-encoded public key, as the libp2p peer-id spec defines it. Keeping the key on disk is
what keeps the id the same across restarts; exo lost clusters to ids that changed on every start.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import base58
from pydantic_core import core_schema

from .files import write_private

if TYPE_CHECKING:
    from .crypto import Ed25519PrivateKey, Ed25519PublicKey

# The keys (libsodium) are imported where they are used: parsing a peer id (every plugin does)
# needs none.

# protobuf PublicKey{Type: Ed25519 (1), Data: 32 bytes}: field 1 varint, field 2 length-delimited.
_ED25519_PROTO_PREFIX = bytes([0x08, 0x01, 0x12, 0x20])
# multihash "identity" (0x00) of length 36 (the 4-byte prefix plus the 32-byte key).
_IDENTITY_MULTIHASH_PREFIX = bytes([0x00, 0x24])
KEY_FILE_NAME = "identity.key"


_REMEMBERED = 1024  # ids a node meets over and over; also the most strangers can make it keep


class _Recent:
    """base58 text -> bytes, the most recently used first out last; bounded, thread-safe (a
    host program may parse peer ids in any thread)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get(self, text: str) -> bytes | None:
        with self._lock:
            raw = self._items.pop(text, None)
            if raw is not None:
                self._items[text] = raw  # used: the newest again
            return raw

    def put(self, text: str, raw: bytes) -> None:
        with self._lock:
            self._items.pop(text, None)
            if len(self._items) >= self._limit:
                del self._items[next(iter(self._items))]
            self._items[text] = raw

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_decoded = _Recent(_REMEMBERED)


def _b58decode(text: str) -> bytes:
    """base58 is pure Python and slow; a node sees the same few ids over and over."""
    raw = _decoded.get(text)
    if raw is None:
        raw = bytes(base58.b58decode(text))
        _decoded.put(text, raw)
    return raw


@functools.lru_cache(maxsize=_REMEMBERED)
def _id_text(multihash: bytes) -> str:
    """The base58 id of ``multihash``, remembered both ways: a handshake makes a peer's id from
    its key, and checking the peer's record with that id then decodes nothing."""
    text = base58.b58encode(multihash).decode()
    _decoded.put(text, multihash)
    return text


@functools.lru_cache(maxsize=_REMEMBERED)
def _public_key(peer_id: str) -> Ed25519PublicKey:
    from .crypto import Ed25519PublicKey

    raw = _b58decode(peer_id)[len(_IDENTITY_MULTIHASH_PREFIX + _ED25519_PROTO_PREFIX) :]
    return Ed25519PublicKey.from_public_bytes(raw)


def forget_ids() -> None:
    """Forget every id and key worked out so far, as a node that never met anyone (the
    handshake benchmark measures first meetings)."""
    _decoded.clear()
    _id_text.cache_clear()
    _public_key.cache_clear()


class InvalidPeerId(ValueError):
    """A string that is not a libp2p Ed25519 peer id."""


class PeerId(str):
    """A libp2p peer id of an Ed25519 key; it embeds the key, so it verifies signatures itself."""

    __slots__ = ()

    @classmethod
    def from_public_key(cls, key: Ed25519PublicKey) -> PeerId:
        return cls.from_raw_key(key.public_bytes_raw())

    @classmethod
    def from_raw_key(cls, raw: bytes) -> PeerId:
        """The id of the 32 raw bytes of an Ed25519 public key."""
        return cls.from_key_bytes(_ED25519_PROTO_PREFIX + raw)

    @classmethod
    def from_key_bytes(cls, data: bytes) -> PeerId:
        """The id of a libp2p protobuf ``PublicKey`` (what a signed envelope carries)."""
        if len(data) != len(_ED25519_PROTO_PREFIX) + 32 or not data.startswith(
            _ED25519_PROTO_PREFIX
        ):
            raise InvalidPeerId("not a protobuf-encoded Ed25519 public key")
        return cls(_id_text(_IDENTITY_MULTIHASH_PREFIX + data))

    def key_bytes(self) -> bytes:
        """The public key as libp2p's protobuf ``PublicKey``: the id without its multihash prefix."""
        return _b58decode(str(self))[len(_IDENTITY_MULTIHASH_PREFIX) :]

    @classmethod
    def parse(cls, text: str) -> PeerId:
        """Check ``text`` is an Ed25519 peer id; the error says what is wrong with it."""
        if not isinstance(text, str) or not text:
            raise InvalidPeerId("peer id is empty")
        try:
            decoded = _b58decode(text)
        except ValueError as exc:
            raise InvalidPeerId(f"peer id {text!r} is not base58: {exc}") from None
        prefix = _IDENTITY_MULTIHASH_PREFIX + _ED25519_PROTO_PREFIX
        if len(decoded) != len(prefix) + 32 or not decoded.startswith(prefix):
            raise InvalidPeerId(
                f"peer id {text!r} is not the id of an Ed25519 key (expected 12D3KooW..., 52 chars)"
            )
        return cls(text)

    def public_key(self) -> Ed25519PublicKey:
        return _public_key(str(self))

    def verify(self, signature: bytes, message: bytes) -> bool:
        from .crypto import InvalidSignature

        try:
            self.public_key().verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    def short(self) -> str:
        """The last characters, enough to tell peers apart in a log line."""
        return f"…{str(self)[-8:]}"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            lambda value: cls.parse(value), core_schema.str_schema()
        )


class Identity:
    """The node's private key and the peer id it proves."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.peer_id = PeerId.from_public_key(private_key.public_key())

    def __repr__(self) -> str:
        return f"Identity(peer_id={self.peer_id!s})"

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    @classmethod
    def generate(cls) -> Identity:
        from .crypto import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, state_dir: Path) -> Identity:
        """Read the key from ``state_dir``, creating it (mode 0600, atomically) on first start."""
        path = state_dir / KEY_FILE_NAME
        if path.exists():
            return cls.load(path)
        identity = cls.generate()
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not write_private(path, identity._seed(), replace=False):
                return cls.load(path)  # another process created it first: use theirs
        except OSError as exc:
            raise IdentityError(path, _unwritable(exc), fix=_FREE_SPACE) from None
        return identity

    @classmethod
    def regenerate(cls, state_dir: Path) -> tuple[Identity, str | None]:
        """Replace the key with a new one; also what the old one was (its id, why it was
        unreadable, or None if there was none).

        The old key file is kept beside it as ``identity.key.old``.
        """
        path = state_dir / KEY_FILE_NAME
        if not path.exists():
            return cls.load_or_create(state_dir), None
        try:
            old = f"peer id {cls.load(path).peer_id}"
        except IdentityError as exc:
            old = f"unreadable ({exc.problem})"
        identity = cls.generate()
        try:
            # copied, not moved: at every moment the key file is the old key or the new one
            write_private(path.with_name(KEY_FILE_NAME + ".old"), path.read_bytes())
            write_private(path, identity._seed())
        except OSError as exc:
            raise IdentityError(
                path, _unwritable(exc), fix="the old key is unchanged; " + _FREE_SPACE
            ) from None
        return identity, old

    def _seed(self) -> bytes:
        return self._key.private_bytes_raw()

    @classmethod
    def load(cls, path: Path) -> Identity:
        from .crypto import Ed25519PrivateKey

        try:
            seed = path.read_bytes()
        except OSError as exc:
            raise IdentityError(path, f"cannot be read: {exc.strerror}") from None
        if len(seed) != 32:
            what = "is empty (0 bytes)" if not seed else f"has {len(seed)} bytes, not 32"
            raise IdentityError(path, f"{what}: not an Ed25519 key")
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            os.chmod(path, 0o600)
        return cls(Ed25519PrivateKey.from_private_bytes(seed))


class IdentityError(ValueError):
    """The key file cannot be used; one line naming the file and the fix, never replaced silently."""

    def __init__(self, path: Path, problem: str, fix: str | None = None) -> None:
        self.path, self.problem = path, problem
        self.fix = fix or (
            "restore it from a backup, or make a new key (a new peer id) with "
            f"`exo-discovery id --regenerate --state-dir {path.parent}`"
        )
        super().__init__(f"key file {path} {problem}; {self.fix}")


_FREE_SPACE = "make room (or fix the permissions) in the state dir and start again"


def _unwritable(exc: OSError) -> str:
    return f"cannot be written: {exc.strerror or exc}"
