"""Cluster keys: the shared secret without which the handshake's first message is refused.

A key is 32 random bytes, written as one line of base64 (``exo-discovery keygen``). A key file
or ``EXO_DISCOVERY_CLUSTER_KEY`` may hold several, one a line: the node accepts every one of
them and dials with the first (the primary). That is serf's install / use / remove rotation:
add the new key as a second line everywhere, then move it first everywhere, then remove the old
one. A key never appears in a log line, an error or a repr; only its fingerprint does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from .files import write_private

KEY_BYTES = 32
MAX_KEYS = 8  # the responder tries each on the first message; a few are enough for a rotation
_FINGERPRINT_DOMAIN = b"exo-discovery cluster key fingerprint\n"


class ClusterKeyError(ValueError):
    """A key file or value that is not what keygen writes; the message names where, not what."""


def generate() -> bytes:
    return os.urandom(KEY_BYTES)


def encode(key: bytes) -> str:
    return base64.b64encode(key).decode()


def fingerprint(key: bytes) -> str:
    """A short public name of a key: tells keys apart, and reveals nothing usable about one."""
    return hashlib.sha256(_FINGERPRINT_DOMAIN + key).hexdigest()[:16]


class Keyring:
    """The cluster keys this node accepts, primary first; empty when no key is set."""

    __slots__ = ("_keys",)

    def __init__(self, keys: tuple[bytes, ...] = ()) -> None:
        if len(keys) > MAX_KEYS:
            raise ClusterKeyError(f"{len(keys)} cluster keys; at most {MAX_KEYS} are accepted")
        if any(len(key) != KEY_BYTES for key in keys):
            raise ClusterKeyError(f"a cluster key is {KEY_BYTES} bytes")
        self._keys = tuple(dict.fromkeys(keys))

    @classmethod
    def parse(cls, text: str, origin: str = "") -> Keyring:
        """Keys from ``text``: base64 keys, one a line or comma-separated, ``#`` comments.

        ``origin`` names the source in errors, which never quote the text itself."""
        where = f"{origin}: " if origin else ""
        fix = "make one with `exo-discovery keygen`"
        entries = [line.split("#", 1)[0] for line in text.splitlines()]
        items = [item.strip() for entry in entries for item in entry.split(",") if item.strip()]
        keys = []
        for number, item in enumerate(items, 1):
            try:
                key = base64.b64decode(item, validate=True)
            except (binascii.Error, ValueError):
                key = b""
            if len(key) != KEY_BYTES:
                raise ClusterKeyError(
                    f"{where}key {number} is not a cluster key (base64 of {KEY_BYTES} bytes); {fix}"
                )
            keys.append(key)
        if not keys:
            raise ClusterKeyError(f"{where}no cluster key in it; {fix}")
        try:
            return cls(tuple(keys))
        except ClusterKeyError as exc:
            raise ClusterKeyError(f"{where}{exc}") from None

    @property
    def primary(self) -> bytes | None:
        """The key this node dials with."""
        return self._keys[0] if self._keys else None

    @property
    def accepted(self) -> tuple[bytes, ...]:
        return self._keys

    @property
    def fingerprints(self) -> tuple[str, ...]:
        return tuple(fingerprint(key) for key in self._keys)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __repr__(self) -> str:
        return f"Keyring(fingerprints={list(self.fingerprints)})"


def write_key_file(path: Path, *, force: bool = False) -> str:
    """Write a new key to ``path`` (mode 0600, atomically); its fingerprint. Without ``force`` an
    existing file is never replaced: FileExistsError."""
    key = generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not write_private(path, (encode(key) + "\n").encode(), replace=force):
        raise FileExistsError(path)
    return fingerprint(key)
