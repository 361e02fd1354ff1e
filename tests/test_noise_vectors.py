"""exo_discovery_core.noise against the published Noise test vectors, byte for byte.

Every vector in tests/vectors/noise (cacophony's and snow's, 26 each, copied unchanged from the
team's shared/noise-vectors; SOURCES.md there names the upstream commits) runs both sides in lockstep: each handshake and transport message must equal the vector's
ciphertext and decrypt to its payload on the other side, and the handshake hash must match where
the file gives one (cacophony) and agree between the two sides (all).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from exo_discovery_core import noise
from exo_discovery_core.crypto import X25519PrivateKey

VECTORS = Path(__file__).resolve().parent / "vectors" / "noise"
FILES = ("cacophony-25519-chachapoly.json", "snow-25519-chachapoly.json")


def _load() -> list[Any]:
    cases = []
    for name in FILES:
        for vector in json.loads((VECTORS / name).read_text())["vectors"]:
            cases.append(pytest.param(vector, id=f"{name.split('-')[0]}:{vector['protocol_name']}"))
    return cases


def _key(vector: dict[str, Any], name: str) -> X25519PrivateKey | None:
    value = vector.get(name)
    return X25519PrivateKey.from_private_bytes(bytes.fromhex(value)) if value else None


def _side(vector: dict[str, Any], role: str) -> noise.HandshakeState:
    remote = vector.get(f"{role}_remote_static")
    return noise.HandshakeState(
        vector["protocol_name"],
        initiator=role == "init",
        prologue=bytes.fromhex(vector[f"{role}_prologue"]),
        static=_key(vector, f"{role}_static"),
        remote_static=bytes.fromhex(remote) if remote else None,
        psks=[bytes.fromhex(psk) for psk in vector.get(f"{role}_psks", [])],
        ephemeral=_key(vector, f"{role}_ephemeral"),
    )


def test_both_files_hold_26_vectors() -> None:
    assert [len(json.loads((VECTORS / n).read_text())["vectors"]) for n in FILES] == [26, 26]


@pytest.mark.parametrize("vector", _load())
def test_vector(vector: dict[str, Any]) -> None:
    initiator, responder = _side(vector, "init"), _side(vector, "resp")
    for index, message in enumerate(vector["messages"]):
        payload, expected = bytes.fromhex(message["payload"]), bytes.fromhex(message["ciphertext"])
        sender, receiver = (initiator, responder) if index % 2 == 0 else (responder, initiator)
        if not initiator.finished:
            assert sender.write_message(payload) == expected, f"handshake message {index}"
            assert receiver.read_message(expected) == payload
        else:
            assert sender.transport is not None and receiver.transport is not None
            assert sender.transport[0].encrypt(b"", payload) == expected, f"transport {index}"
            assert receiver.transport[1].decrypt(b"", expected) == payload
    assert initiator.finished and responder.finished
    assert initiator.handshake_hash == responder.handshake_hash
    if "handshake_hash" in vector:
        assert initiator.handshake_hash.hex() == vector["handshake_hash"]


def test_a_flipped_bit_fails_authentication() -> None:
    """The negative case the vectors do not cover: one changed bit and decryption refuses."""
    initiator = noise.HandshakeState(
        "Noise_XXpsk0_25519_ChaChaPoly_SHA256",
        initiator=True,
        static=X25519PrivateKey.generate(),
        psks=[b"k" * 32],
    )
    responder = noise.HandshakeState(
        "Noise_XXpsk0_25519_ChaChaPoly_SHA256",
        initiator=False,
        static=X25519PrivateKey.generate(),
        psks=[b"x" * 32],
    )
    with pytest.raises(noise.NoiseError):
        responder.read_message(initiator.write_message(b"hello"))
