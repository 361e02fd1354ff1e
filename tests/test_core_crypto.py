"""exo_discovery_core.crypto (libsodium through PyNaCl) against cryptography (OpenSSL): the same
keys, signatures, shared secrets and ciphertexts both ways, and the same refusals."""

from __future__ import annotations

import os

import pytest
from cryptography.exceptions import InvalidSignature as ReferenceInvalidSignature
from cryptography.exceptions import InvalidTag as ReferenceInvalidTag
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers import aead

from exo_discovery_core import crypto

# RFC 7748 section 6.1: Alice's and Bob's keys and their shared secret.
ALICE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


def test_ed25519_signatures_cross_verify_with_cryptography() -> None:
    seed, message = os.urandom(32), b"a signed peer record"
    ours = crypto.Ed25519PrivateKey.from_private_bytes(seed)
    theirs = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    assert ours.public_key().public_bytes_raw() == theirs.public_key().public_bytes_raw()
    assert ours.sign(message) == theirs.sign(message)  # Ed25519 is deterministic
    theirs.public_key().verify(ours.sign(message), message)
    ours.public_key().verify(theirs.sign(message), message)
    assert ours.private_bytes_raw() == seed


def test_ed25519_refuses_what_cryptography_refuses() -> None:
    key = crypto.Ed25519PrivateKey.generate()
    public, reference = (
        key.public_key(),
        ed25519.Ed25519PublicKey.from_public_bytes(key.public_key().public_bytes_raw()),
    )
    signature = bytearray(key.sign(b"message"))
    signature[5] ^= 1
    for bad, message in ((bytes(signature), b"message"), (key.sign(b"message"), b"massage")):
        with pytest.raises(crypto.InvalidSignature):
            public.verify(bad, message)
        with pytest.raises(ReferenceInvalidSignature):
            reference.verify(bad, message)
    with pytest.raises(crypto.InvalidSignature):
        public.verify(b"short", b"message")
    with pytest.raises(ValueError):
        crypto.Ed25519PublicKey.from_public_bytes(b"\x01" * 31)


def test_x25519_gives_rfc_7748s_shared_secret_and_cryptographys() -> None:
    alice = crypto.X25519PrivateKey.from_private_bytes(ALICE)
    assert alice.exchange(crypto.X25519PublicKey.from_public_bytes(BOB_PUBLIC)) == SHARED
    mine, other = crypto.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    reference = x25519.X25519PrivateKey.from_private_bytes(mine.private_bytes_raw())
    assert mine.public_key().public_bytes_raw() == reference.public_key().public_bytes_raw()
    other_public = crypto.X25519PublicKey.from_public_bytes(other.public_key().public_bytes_raw())
    assert mine.exchange(other_public) == other.exchange(reference.public_key())


def test_x25519_refuses_a_low_order_point_as_cryptography_does() -> None:
    mine = crypto.X25519PrivateKey.generate()
    with pytest.raises(ValueError, match="low-order"):
        mine.exchange(crypto.X25519PublicKey.from_public_bytes(bytes(32)))
    reference = x25519.X25519PrivateKey.from_private_bytes(mine.private_bytes_raw())
    with pytest.raises(ValueError):
        reference.exchange(x25519.X25519PublicKey.from_public_bytes(bytes(32)))


def test_chacha20poly1305_matches_cryptography_and_refuses_a_changed_byte() -> None:
    key, nonce, ad, data = os.urandom(32), os.urandom(12), b"header", os.urandom(1000)
    ours, theirs = crypto.ChaCha20Poly1305(key), aead.ChaCha20Poly1305(key)
    sealed = ours.encrypt(nonce, data, ad)
    assert sealed == theirs.encrypt(nonce, data, ad)
    assert ours.decrypt(nonce, sealed, ad) == data
    changed = bytearray(sealed)
    changed[-1] ^= 1
    cases = ((nonce, bytes(changed), ad), (nonce, sealed, b"other"), (nonce, sealed[:15], ad))
    for bad_nonce, bad, bad_ad in cases:
        with pytest.raises(crypto.InvalidTag):
            ours.decrypt(bad_nonce, bad, bad_ad)
        with pytest.raises(ReferenceInvalidTag):
            theirs.decrypt(bad_nonce, bad, bad_ad)
    assert ours.decrypt(nonce, ours.encrypt(nonce, b"", None), None) == b""


def test_private_keys_never_show_their_bytes() -> None:
    for key in (crypto.Ed25519PrivateKey.generate(), crypto.X25519PrivateKey.generate()):
        assert key.private_bytes_raw().hex() not in repr(key)
    assert "..." in repr(crypto.ChaCha20Poly1305(bytes(32)))
