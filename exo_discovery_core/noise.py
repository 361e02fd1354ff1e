"""The Noise Protocol Framework (revision 34): handshake and transport, written from the spec.

Supports the DH function 25519, the cipher ChaChaPoly and the hashes SHA256 and BLAKE2s, for the
interactive patterns NN, KK, XK, IK and XX and any ``psk`` modifiers (``XXpsk0``,
``XXpsk0+psk3``, ...). The protocol name fixes every choice, as the spec says; the module is
checked against the published cacophony and snow vectors byte for byte
(tests/test_noise_vectors.py). Section numbers below are the spec's.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import struct
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

from .crypto import ChaCha20Poly1305, InvalidTag, X25519PrivateKey, X25519PublicKey

MAX_MESSAGE = 65535  # §3: every Noise message, handshake or transport, is at most this long
DHLEN = 32
TAGLEN = 16
_T = TypeVar("_T")
_MAX_NONCE = 2**64 - 1  # §5.1: reserved, never used to encrypt
_NONCE = struct.Struct("<4xQ")  # §5.1 ChaChaPoly: 32 bits of zeros, then the counter little-endian

# §7.4 and §7.5: pre-messages (initiator's, responder's) and the message patterns.
_PATTERNS: dict[str, tuple[tuple[str, str], tuple[tuple[str, ...], ...]]] = {
    "NN": (("", ""), (("e",), ("e", "ee"))),
    "KK": (("s", "s"), (("e", "es", "ss"), ("e", "ee", "se"))),
    "XK": (("", "s"), (("e", "es"), ("e", "ee"), ("s", "se"))),
    "IK": (("", "s"), (("e", "es", "s", "ss"), ("e", "ee", "se"))),
    "XX": (("", ""), (("e",), ("e", "ee", "s", "es"), ("s", "se"))),
}
_HASHES = {"SHA256": "sha256", "BLAKE2s": "blake2s"}  # Noise's names to hashlib's
_NAME = re.compile(r"Noise_([A-Z]+)(psk\d+(?:\+psk\d+)*)?_25519_ChaChaPoly_(SHA256|BLAKE2s)")


class NoiseError(Exception):
    """A message failed to decrypt or does not fit the pattern: the session cannot go on."""


def _need(value: _T | None) -> _T:
    if value is None:
        raise ValueError("the pattern needs a key that was not given")
    return value


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


class CipherState:
    """§5.1: a key and a nonce counter; without a key it passes plaintext through."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key
        self._aead: ChaCha20Poly1305 | None = None  # made on first use: most keys never are
        self.nonce = 0

    @property
    def has_key(self) -> bool:
        return self._key is not None

    def _cipher(self) -> ChaCha20Poly1305 | None:
        if self._aead is None and self._key is not None:
            self._aead = ChaCha20Poly1305(self._key)
        return self._aead

    def _next_nonce(self) -> bytes:
        if self.nonce >= _MAX_NONCE:
            raise NoiseError("nonce space exhausted")
        return _NONCE.pack(self.nonce)

    def encrypt(self, ad: bytes, plaintext: bytes) -> bytes:
        aead = self._cipher()
        if aead is None:
            return plaintext
        ciphertext = aead.encrypt(self._next_nonce(), plaintext, ad)
        self.nonce += 1
        return ciphertext

    def decrypt(self, ad: bytes, ciphertext: bytes) -> bytes:
        aead = self._cipher()
        if aead is None:
            return ciphertext
        try:
            plaintext = aead.decrypt(self._next_nonce(), ciphertext, ad)
        except InvalidTag:
            raise NoiseError("message failed authentication") from None
        self.nonce += 1
        return plaintext


class _Protocol(NamedTuple):
    """What a protocol name fixes, worked out once per name: a handshake only reads it."""

    pre: tuple[str, str]  # pre-messages, initiator's and responder's
    messages: tuple[tuple[str, ...], ...]  # with the psk tokens placed (§9.2)
    hash_name: str  # hashlib's name
    new_hash: Callable[[bytes], hashlib._Hash]
    initial_h: bytes  # §5.2 InitializeSymmetric: h and ck before the prologue
    psks: int  # how many psk tokens


class SymmetricState:
    """§5.2: the chaining key and handshake hash, mixed by every token."""

    def __init__(self, protocol: _Protocol) -> None:
        self._hash = protocol.hash_name
        self._new_hash = protocol.new_hash
        self.h = self.ck = protocol.initial_h
        self.cipher = CipherState()

    def _hkdf(self, ikm: bytes, outputs: int) -> list[bytes]:
        """§4.3: HKDF with HMAC-HASH, chaining key as salt, no info; two or three outputs."""
        temp_key = hmac.digest(self.ck, ikm, self._hash)
        first = hmac.digest(temp_key, b"\x01", self._hash)
        second = hmac.digest(temp_key, first + b"\x02", self._hash)
        if outputs == 2:
            return [first, second]
        return [first, second, hmac.digest(temp_key, second + b"\x03", self._hash)]

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = self._hkdf(ikm, 2)
        self.cipher = CipherState(temp_k[:32])

    def mix_hash(self, data: bytes) -> None:
        self.h = self._new_hash(self.h + data).digest()

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = self._hkdf(ikm, 3)
        self.mix_hash(temp_h)
        self.cipher = CipherState(temp_k[:32])

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = self._hkdf(b"", 2)
        return CipherState(k1[:32]), CipherState(k2[:32])


@functools.lru_cache(maxsize=64)
def parse_protocol_name(name: str) -> _Protocol:
    """Pre-messages, message patterns with the psk tokens placed (§9.2), the hash, h0."""
    match = _NAME.fullmatch(name)
    if match is None or match.group(1) not in _PATTERNS:
        raise ValueError(f"unsupported Noise protocol {name!r}")
    pre, base = _PATTERNS[match.group(1)]
    messages = [list(tokens) for tokens in base]
    modifiers = match.group(2).split("+") if match.group(2) else []
    for modifier in modifiers:
        position = int(modifier[3:])
        if position > len(messages):
            raise ValueError(f"{name!r}: {modifier} is past the last message")
        if position == 0:
            messages[0].insert(0, "psk")
        else:
            messages[position - 1].append("psk")
    hash_name = _HASHES[match.group(3)]
    new_hash = getattr(hashlib, hash_name)
    raw = name.encode()
    hashlen = new_hash(b"").digest_size
    initial_h = raw.ljust(hashlen, b"\0") if len(raw) <= hashlen else new_hash(raw).digest()
    return _Protocol(
        pre=pre,
        messages=tuple(tuple(tokens) for tokens in messages),
        hash_name=hash_name,
        new_hash=new_hash,
        initial_h=initial_h,
        psks=sum(tokens.count("psk") for tokens in messages),
    )


class HandshakeState:
    """§5.3: one side of a handshake; alternate ``write_message`` and ``read_message``.

    ``ephemeral`` is for test vectors only; a real handshake draws a fresh key each time.
    """

    def __init__(
        self,
        protocol_name: str,
        *,
        initiator: bool,
        prologue: bytes = b"",
        static: X25519PrivateKey | None = None,
        remote_static: bytes | None = None,
        psks: Sequence[bytes] = (),
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        protocol = parse_protocol_name(protocol_name)
        self._messages = protocol.messages
        self.initiator = initiator
        self.s = static
        self.e = ephemeral
        self.rs = remote_static
        self.re: bytes | None = None
        self._remote: dict[str, X25519PublicKey] = {}  # "e"/"s": parsed once, used twice
        self._psks = list(psks)
        self._psk_mode = protocol.psks > 0
        if len(self._psks) != protocol.psks:
            raise ValueError(f"{protocol_name} needs {protocol.psks} psks, got {len(self._psks)}")
        if any(len(psk) != 32 for psk in self._psks):
            raise ValueError("a psk is 32 bytes")
        self._sym = SymmetricState(protocol)
        self._sym.mix_hash(prologue)
        for side, tokens in zip(("initiator", "responder"), protocol.pre, strict=True):
            if "s" in tokens:
                mine = (side == "initiator") == initiator
                key = public_bytes(_need(self.s)) if mine else _need(self.rs)
                self._sym.mix_hash(key)
        self._index = 0
        self.transport: tuple[CipherState, CipherState] | None = None

    @property
    def finished(self) -> bool:
        return self.transport is not None

    @property
    def handshake_hash(self) -> bytes:
        """§5.2 GetHandshakeHash: a channel binding once the handshake is done."""
        return self._sym.h

    @property
    def my_turn(self) -> bool:
        return (self._index % 2 == 0) == self.initiator

    def _tokens(self, writing: bool) -> tuple[str, ...]:
        if self.finished or self.my_turn != writing:
            raise NoiseError("out of turn")
        tokens = self._messages[self._index]
        self._index += 1
        return tokens

    def _dh(self, token: str) -> bytes:
        # §7.3: "es" is DH(e of initiator, s of responder), from whichever side computes it
        mine, theirs = (token[0], token[1]) if self.initiator else (token[1], token[0])
        local = _need(self.e if mine == "e" else self.s)
        try:
            remote = self._remote.get(theirs)
            if remote is None:
                raw = _need(self.re if theirs == "e" else self.rs)
                remote = self._remote[theirs] = X25519PublicKey.from_public_bytes(raw)
            return local.exchange(remote)
        except ValueError:  # a low-order point gives an all-zero secret
            raise NoiseError("invalid public key") from None

    def write_message(self, payload: bytes = b"") -> bytes:
        out = bytearray()
        for token in self._tokens(writing=True):
            if token == "e":
                self.e = self.e or X25519PrivateKey.generate()
                pub = public_bytes(self.e)
                out += pub
                self._sym.mix_hash(pub)
                if self._psk_mode:
                    self._sym.mix_key(pub)
            elif token == "s":
                out += self._sym.encrypt_and_hash(public_bytes(_need(self.s)))
            elif token == "psk":
                self._sym.mix_key_and_hash(self._psks.pop(0))
            else:
                self._sym.mix_key(self._dh(token))
        out += self._sym.encrypt_and_hash(payload)
        if len(out) > MAX_MESSAGE:
            raise ValueError(f"handshake message of {len(out)} bytes exceeds {MAX_MESSAGE}")
        self._finish_if_done()
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        if len(message) > MAX_MESSAGE:
            raise NoiseError(f"handshake message of {len(message)} bytes exceeds {MAX_MESSAGE}")
        view = memoryview(message)
        for token in self._tokens(writing=False):
            if token == "e":
                if len(view) < DHLEN:
                    raise NoiseError("handshake message too short")
                self.re, view = bytes(view[:DHLEN]), view[DHLEN:]
                self._sym.mix_hash(self.re)
                if self._psk_mode:
                    self._sym.mix_key(self.re)
            elif token == "s":
                size = DHLEN + TAGLEN if self._sym.cipher.has_key else DHLEN
                if len(view) < size:
                    raise NoiseError("handshake message too short")
                self.rs = self._sym.decrypt_and_hash(bytes(view[:size]))
                view = view[size:]
            elif token == "psk":
                self._sym.mix_key_and_hash(self._psks.pop(0))
            else:
                self._sym.mix_key(self._dh(token))
        payload = self._sym.decrypt_and_hash(bytes(view))
        self._finish_if_done()
        return payload

    def _finish_if_done(self) -> None:
        if self._index == len(self._messages):
            first, second = self._sym.split()
            # (send, receive): the initiator sends with the first CipherState
            self.transport = (first, second) if self.initiator else (second, first)
