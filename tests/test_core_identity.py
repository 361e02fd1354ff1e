"""Identity: libp2p peer ids (checked against the spec's vectors), kept across restarts."""

from __future__ import annotations

import stat
from pathlib import Path

import base58
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519 as reference
from multiaddr import Multiaddr

from exo_discovery_core.crypto import Ed25519PrivateKey
from exo_discovery_core.identity import Identity, InvalidPeerId, PeerId, forget_ids

# libp2p specs, peer-ids/peer-ids.md "Test vectors": an Ed25519 key pair as protobuf bytes.
SPEC_PRIVATE = bytes.fromhex(
    "080112407e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d"
    "1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)
SPEC_PUBLIC = bytes.fromhex(
    "080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)


def test_spec_vector_gives_the_identity_multihash_of_the_public_key_protobuf() -> None:
    assert SPEC_PRIVATE[:4] == bytes([0x08, 0x01, 0x12, 0x40])  # PrivateKey{Ed25519, 64 bytes}
    seed, public = SPEC_PRIVATE[4:36], SPEC_PRIVATE[36:]
    identity = Identity(Ed25519PrivateKey.from_private_bytes(seed))
    raw_public = identity.peer_id.public_key().public_bytes_raw()
    assert raw_public == public == SPEC_PUBLIC[4:]
    # and cryptography (OpenSSL) makes the same key of the seed
    assert reference.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw() == (
        raw_public
    )
    # the spec: keys of <= 42 protobuf bytes use the identity multihash (0x00, length) of them
    assert base58.b58decode(identity.peer_id) == bytes([0x00, len(SPEC_PUBLIC)]) + SPEC_PUBLIC
    assert identity.peer_id.startswith("12D3KooW")
    # an independent implementation (py-multiaddr's CID check) accepts it as a /p2p/ id
    assert Multiaddr(f"/ip4/1.2.3.4/tcp/1/p2p/{identity.peer_id}").value_for_protocol("p2p") == (
        identity.peer_id
    )


def test_signatures_verify_only_with_the_matching_id() -> None:
    one, two = Identity.generate(), Identity.generate()
    signature = one.sign(b"challenge")
    assert one.peer_id.verify(signature, b"challenge")
    assert not two.peer_id.verify(signature, b"challenge")
    assert not one.peer_id.verify(signature, b"other challenge")


def test_key_is_created_once_with_mode_0600_and_the_id_survives_restarts(tmp_path: Path) -> None:
    first = Identity.load_or_create(tmp_path / "state")
    key_file = tmp_path / "state" / "identity.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again = Identity.load_or_create(tmp_path / "state")
    assert again.peer_id == first.peer_id


def test_a_corrupt_key_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "identity.key").write_bytes(b"short")
    with pytest.raises(ValueError, match="identity.key"):
        Identity.load_or_create(tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("not-base58-0OIl", "not base58"),
        ("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", "not the id of an Ed25519 key"),
        ("12D3KooW", "not the id of an Ed25519 key"),
    ],
)
def test_bad_peer_ids_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InvalidPeerId, match=message):
        PeerId.parse(text)


def test_identity_repr_shows_no_key_material() -> None:
    identity = Identity.generate()
    assert repr(identity) == f"Identity(peer_id={identity.peer_id})"


def test_an_id_made_from_a_key_gives_that_key_back_without_decoding_base58(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A handshake makes the peer's id from its key; checking its record with that id (the key
    from the id) decodes no base58 (pure Python), and after forget_ids everything is worked
    out again, as for a peer never met."""

    forget_ids()
    peer_id = PeerId.from_raw_key(SPEC_PUBLIC[4:])
    decoded: list[str] = []
    real_decode = base58.b58decode

    def counted(text: str) -> bytes:
        decoded.append(text)
        return real_decode(text)

    monkeypatch.setattr(base58, "b58decode", counted)
    assert peer_id.key_bytes() == SPEC_PUBLIC
    assert peer_id.verify(b"\0" * 64, b"message") is False  # a key was parsed, a signature checked
    assert decoded == []
    forget_ids()
    assert PeerId.parse(str(peer_id)).key_bytes() == SPEC_PUBLIC
    assert decoded == [str(peer_id)]


def test_the_ids_remembered_are_bounded() -> None:
    """A stranger can make the node parse any number of ids; it keeps at most the bound."""
    from exo_discovery_core import identity as module

    forget_ids()
    for _ in range(module._REMEMBERED + 50):
        PeerId.parse(str(Identity.generate().peer_id))
    assert len(module._decoded._items) == module._REMEMBERED
    forget_ids()
