"""The protocol's three primitives (Ed25519, X25519, ChaCha20-Poly1305) on libsodium, via PyNaCl.

PyNaCl (PyCA's binding of libsodium) rather than cryptography for what a node runs: these three
cost a node 1.3 MiB resident with PyNaCl against 11.5 MiB with cryptography, whose one Rust
extension (14 MB, all of OpenSSL's algorithms) is mostly resident once loaded: a fifth of an idle
node (``benchmarks/bench_startup.py``), for the same libsodium/OpenSSL-grade code. The classes keep
cryptography's names and the methods the protocol calls, so the Noise and handshake code reads as
it would with cryptography; keys are kept in their raw 32-byte forms. The Noise test vectors
(``tests/test_noise_vectors.py``) check the X25519 and AEAD paths byte for byte, and
``tests/test_core_identity.py`` checks keys and signatures against cryptography's.
"""

from __future__ import annotations

from typing import ClassVar, Self

import nacl.bindings as sodium
from nacl.exceptions import BadSignatureError, CryptoError

KEY_BYTES = 32
SIGNATURE_BYTES = 64
TAG_BYTES = 16


class InvalidSignature(Exception):
    """A signature that does not verify with the key."""


class InvalidTag(Exception):
    """A ciphertext, key, nonce or associated data that does not authenticate."""


def _raw(data: bytes, what: str) -> bytes:
    if len(data) != KEY_BYTES:
        raise ValueError(f"an {what} is {KEY_BYTES} bytes long, not {len(data)}")
    return bytes(data)


class _PublicKey:
    """A public key: its raw 32 bytes, their length checked."""

    __slots__ = ("_raw",)
    _NAME: ClassVar[str]  # for the error message

    def __init__(self, raw: bytes) -> None:
        self._raw = _raw(raw, self._NAME)

    @classmethod
    def from_public_bytes(cls, data: bytes) -> Self:
        return cls(data)

    def public_bytes_raw(self) -> bytes:
        return self._raw


class Ed25519PublicKey(_PublicKey):
    """A peer's identity key: verifies its signatures (RFC 8032, libsodium's strict checks)."""

    __slots__ = ()
    _NAME = "Ed25519 public key"

    def verify(self, signature: bytes, data: bytes) -> None:
        """Nothing when ``signature`` is this key's over ``data``; else :class:`InvalidSignature`."""
        if len(signature) != SIGNATURE_BYTES:
            raise InvalidSignature("not an Ed25519 signature (64 bytes)")
        try:
            sodium.crypto_sign_open(bytes(signature) + bytes(data), self._raw)
        except BadSignatureError:
            raise InvalidSignature("the signature does not verify") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ed25519PublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)


class Ed25519PrivateKey:
    """The node's identity key, made from its 32-byte seed (what the key file holds)."""

    __slots__ = ("_public", "_secret", "_seed")

    def __init__(self, seed: bytes) -> None:
        self._seed = _raw(seed, "Ed25519 private key")
        public, self._secret = sodium.crypto_sign_seed_keypair(self._seed)
        self._public = Ed25519PublicKey(public)

    @classmethod
    def generate(cls) -> Ed25519PrivateKey:
        return cls(sodium.randombytes(KEY_BYTES))

    @classmethod
    def from_private_bytes(cls, data: bytes) -> Ed25519PrivateKey:
        return cls(data)

    def private_bytes_raw(self) -> bytes:
        return self._seed

    def public_key(self) -> Ed25519PublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        return sodium.crypto_sign(bytes(data), self._secret)[:SIGNATURE_BYTES]

    def __repr__(self) -> str:
        return "Ed25519PrivateKey(...)"  # never the seed


class X25519PublicKey(_PublicKey):
    """The other side's ephemeral or static Noise key."""

    __slots__ = ()
    _NAME = "X25519 public key"


class X25519PrivateKey:
    """A Noise key pair (RFC 7748; libsodium clamps the scalar as the RFC says)."""

    __slots__ = ("_public", "_raw")

    def __init__(self, raw: bytes) -> None:
        self._raw = _raw(raw, "X25519 private key")
        self._public: X25519PublicKey | None = None

    @classmethod
    def generate(cls) -> X25519PrivateKey:
        return cls(sodium.randombytes(KEY_BYTES))

    @classmethod
    def from_private_bytes(cls, data: bytes) -> X25519PrivateKey:
        return cls(data)

    def private_bytes_raw(self) -> bytes:
        return self._raw

    def public_key(self) -> X25519PublicKey:
        if self._public is None:
            self._public = X25519PublicKey(sodium.crypto_scalarmult_base(self._raw))
        return self._public

    def exchange(self, peer_public_key: X25519PublicKey) -> bytes:
        """The shared secret; ValueError for a low-order point (an all-zero secret)."""
        try:
            return sodium.crypto_scalarmult(self._raw, peer_public_key.public_bytes_raw())
        except CryptoError:  # libsodium refuses an all-zero result
            raise ValueError("low-order X25519 public key: the shared secret is zero") from None

    def __repr__(self) -> str:
        return "X25519PrivateKey(...)"


class ChaCha20Poly1305:
    """The AEAD of RFC 8439 (the IETF construction: 96-bit nonce), one key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = _raw(key, "ChaCha20-Poly1305 key")

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        return sodium.crypto_aead_chacha20poly1305_ietf_encrypt(
            bytes(data), associated_data, bytes(nonce), self._key
        )

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        if len(data) < TAG_BYTES:  # not even a tag: nothing to authenticate
            raise InvalidTag("the message is shorter than its tag")
        try:
            return sodium.crypto_aead_chacha20poly1305_ietf_decrypt(
                bytes(data), associated_data, bytes(nonce), self._key
            )
        except CryptoError:
            raise InvalidTag("the message does not authenticate") from None

    def __repr__(self) -> str:
        return "ChaCha20Poly1305(...)"
