"""The node's identity: an Ed25519 key kept on disk, named by a libp2p peer id.

The peer id is the libp2p form (``12D3KooW...``): base58btc of an identity multihash over the
protobuf-encoded public key, as the libp2p peer-id spec defines it. Keeping the key on disk is
what keeps the id the same across restarts; exo lost clusters to ids that changed on every start.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import base58
from pydantic_core import core_schema

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

# cryptography is imported where keys are used: parsing a peer id (every plugin does) needs none.

# protobuf PublicKey{Type: Ed25519 (1), Data: 32 bytes}: field 1 varint, field 2 length-delimited.
_ED25519_PROTO_PREFIX = bytes([0x08, 0x01, 0x12, 0x20])
# multihash "identity" (0x00) of length 36 (the 4-byte prefix plus the 32-byte key).
_IDENTITY_MULTIHASH_PREFIX = bytes([0x00, 0x24])
KEY_FILE_NAME = "identity.key"


@functools.lru_cache(maxsize=1024)
def _b58decode(text: str) -> bytes:
    """base58 is pure Python and slow; a node sees the same few ids over and over."""
    return bytes(base58.b58decode(text))


@functools.lru_cache(maxsize=1024)
def _public_key(peer_id: str) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    raw = _b58decode(peer_id)[len(_IDENTITY_MULTIHASH_PREFIX + _ED25519_PROTO_PREFIX) :]
    return Ed25519PublicKey.from_public_bytes(raw)


class InvalidPeerId(ValueError):
    """A string that is not a libp2p Ed25519 peer id."""


class PeerId(str):
    """A libp2p peer id of an Ed25519 key; it embeds the key, so it verifies signatures itself."""

    __slots__ = ()

    @classmethod
    def from_public_key(cls, key: Ed25519PublicKey) -> PeerId:
        from cryptography.hazmat.primitives import serialization

        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(
            base58.b58encode(_IDENTITY_MULTIHASH_PREFIX + _ED25519_PROTO_PREFIX + raw).decode()
        )

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
        from cryptography.exceptions import InvalidSignature

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
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, state_dir: Path) -> Identity:
        """Read the key from ``state_dir``, creating it (mode 0600) on first start."""
        path = state_dir / KEY_FILE_NAME
        if path.exists():
            return cls.load(path)
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            return cls.load(path)
        with os.fdopen(fd, "wb") as out:
            out.write(seed)
        return cls(key)

    @classmethod
    def load(cls, path: Path) -> Identity:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        seed = path.read_bytes()
        if len(seed) != 32:
            raise ValueError(
                f"{path}: not an Ed25519 key file (expected 32 bytes, got {len(seed)})"
            )
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            os.chmod(path, 0o600)
        return cls(Ed25519PrivateKey.from_private_bytes(seed))
