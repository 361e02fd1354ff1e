"""Signed peer records: what a node says of itself, which no one else can say for it.

Modelled on libp2p's signed envelope (RFC 0002) and routing record (RFC 0003). The envelope is
libp2p's protobuf ``Envelope`` (public key, payload type, payload, signature); the signature is
Ed25519 over the exact payload bytes, domain-separated as RFC 0002 prescribes
(``varint(len) || domain || varint(len) || payload type || varint(len) || payload``), so a
record's signature is good for nothing else. The payload is a small JSON object:

    {"addrs": ["192.168.1.5:52417"], "boot": "<32 hex>", "meta": {"api_port": "52415"},
     "peer_id": "12D3KooW...", "protocol": "exo-discovery/2", "seq": 1764578400123456}

``seq`` only grows, across restarts too (time-based like libp2p, and never below the last one
written to the state dir); ``boot`` is new on every start, so two live nodes with one key show
up as two boot ids for one peer id. Decoding is strict and bounded: every byte is hostile until
the signature checks out, and a record that decodes is exactly the one its key signed.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import write_private
from .identity import Identity, InvalidPeerId, PeerId
from .models import Address

DOMAIN = b"exo-discovery-peer-record"
PAYLOAD_TYPE = b"/exo-discovery/peer-record/2"
MAX_RECORD_BYTES = 4096
MAX_ADDRESSES = 16
MAX_META_KEYS = 32
MAX_META_BYTES = 1024
SEQ_FILE_NAME = "record.seq"
META_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PROTOCOL = re.compile(r"[\x21-\x7e]{1,64}")
_BOOT = re.compile(r"[0-9a-f]{32}")
_FIELDS = frozenset({"addrs", "boot", "meta", "peer_id", "protocol", "seq"})
_MAX_SEQ = 2**63 - 1
# Envelope field tags (field number << 3 | wire type 2, length-delimited), in libp2p's order.
_TAGS = (0x0A, 0x12, 0x1A, 0x2A)  # public_key = 1, payload_type = 2, payload = 3, signature = 5


class RecordError(ValueError):
    """A record that is not one its key signed, or not one we accept; the message says why."""


def check_meta(meta: Mapping[str, Any]) -> dict[str, str]:
    """``meta`` if it is within the bounds (ValueError naming the first problem if not)."""
    if len(meta) > MAX_META_KEYS:
        raise ValueError(f"{len(meta)} metadata keys; at most {MAX_META_KEYS} are allowed")
    total = 0
    for key, value in meta.items():
        if not isinstance(key, str) or not META_KEY.fullmatch(key):
            raise ValueError(
                f"metadata key {str(key)[:40]!r} is not 1-64 of A-Z a-z 0-9 _ . - "
                "(starting with a letter or digit)"
            )
        if not isinstance(value, str):
            raise ValueError(f"metadata {key!r} must be a string")
        if not value.isprintable():  # C0/C1 controls, bidi overrides, line breaks, surrogates
            raise ValueError(f"metadata {key!r} contains a control or format character")
        total += len(key.encode()) + len(value.encode())
    if total > MAX_META_BYTES:
        raise ValueError(
            f"metadata is {total} bytes (keys and values, UTF-8); at most {MAX_META_BYTES} "
            "are allowed"
        )
    return dict(meta)


@dataclass(frozen=True)
class PeerRecord:
    """A verified record: the peer's own word on where it listens and what it is."""

    peer_id: PeerId
    seq: int
    boot: str
    protocol: str
    addresses: tuple[Address, ...]
    meta_items: tuple[tuple[str, str], ...]
    envelope: bytes = field(repr=False, compare=False)
    """The signed bytes as the peer made them: what is relayed, unchanged."""

    @property
    def meta(self) -> dict[str, str]:
        return dict(self.meta_items)

    @functools.cached_property
    def relayed(self) -> str:
        """The envelope in base64, as the exchange relays it: encoded once for every peer it
        goes to (at 50 members a round relays each record to 49 peers at once)."""
        return base64.b64encode(self.envelope).decode()

    def newer_than(self, other: PeerRecord | None) -> bool:
        return other is None or self.seq > other.seq


# -- the envelope ----------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 35, 7):  # lengths here are < 2**32: at most five bytes
        if at >= len(data):
            raise RecordError("envelope ends inside a length")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
    raise RecordError("envelope has an over-long length")


def signing_bytes(payload_type: bytes, payload: bytes) -> bytes:
    """RFC 0002: what the signature covers, so it cannot be taken for any other signature."""
    return b"".join(_varint(len(part)) + part for part in (DOMAIN, payload_type, payload))


def seal(identity: Identity, payload: bytes) -> bytes:
    """The envelope of ``payload``, signed by ``identity``."""
    signature = identity.sign(signing_bytes(PAYLOAD_TYPE, payload))
    parts = (identity.peer_id.key_bytes(), PAYLOAD_TYPE, payload, signature)
    return b"".join(
        bytes([tag]) + _varint(len(part)) + part for tag, part in zip(_TAGS, parts, strict=True)
    )


def signer(data: bytes) -> PeerId:
    """Whose key an envelope names, NOT verified: only to skip, cheaply, a record not wanted."""
    return _fields(data)[0]


def _open(data: bytes) -> tuple[PeerId, bytes]:
    """The signer and payload of an envelope whose signature checks out."""
    signer, payload_type, payload, signature = _fields(data)
    if len(signature) != 64 or not signer.verify(signature, signing_bytes(payload_type, payload)):
        raise RecordError(f"signature does not verify with the key of {signer}")
    return signer, payload


def _fields(data: bytes) -> tuple[PeerId, bytes, bytes, bytes]:
    """The envelope's four fields, strictly: each once, in order, nothing after."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise RecordError("record is not bytes")
    data = bytes(data)
    if not 0 < len(data) <= MAX_RECORD_BYTES:
        raise RecordError(f"record of {len(data)} bytes, outside 1..{MAX_RECORD_BYTES}")
    parts: list[bytes] = []
    at = 0
    for tag in _TAGS:
        if at >= len(data) or data[at] != tag:
            raise RecordError("envelope fields are not public key, type, payload, signature")
        length, at = _read_varint(data, at + 1)
        if at + length > len(data):
            raise RecordError("envelope field runs past the end")
        parts.append(data[at : at + length])
        at += length
    if at != len(data):
        raise RecordError("bytes after the envelope's signature")
    key, payload_type, payload, signature = parts
    try:
        signer = PeerId.from_key_bytes(key)
    except InvalidPeerId as exc:
        raise RecordError(str(exc)) from None
    if payload_type != PAYLOAD_TYPE:
        raise RecordError(f"payload type {payload_type[:40]!r} is not a peer record")
    return signer, payload_type, payload, signature


# -- the payload -----------------------------------------------------------------------------


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise RecordError("record repeats a key")
    return result


def _payload(fields: Mapping[str, Any]) -> bytes:
    return json.dumps(fields, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def _parse_address(text: Any) -> Address:
    if not isinstance(text, str) or len(text) > 300:
        raise RecordError("record address is not a string of at most 300 characters")
    host, _, port = text.rpartition(":")
    if not port.isdigit() or len(port) > 5:
        raise RecordError(f"record address {text[:60]!r} has no port")
    try:
        return Address(host=host, port=int(port))
    except ValueError:
        raise RecordError(f"record address {text[:60]!r} is not host:port") from None


def _decode_payload(signer: PeerId, payload: bytes, envelope: bytes) -> PeerRecord:
    try:
        fields = json.loads(payload.decode(), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RecordError(f"record payload is not JSON: {str(exc)[:80]}") from None
    if not isinstance(fields, dict) or set(fields) != _FIELDS:
        raise RecordError(f"record payload must have exactly the keys {sorted(_FIELDS)}")
    if fields["peer_id"] != str(signer):
        raise RecordError("record names another peer than the key that signed it")
    seq, boot, protocol = fields["seq"], fields["boot"], fields["protocol"]
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 < seq <= _MAX_SEQ:
        raise RecordError("record seq is not a positive 63-bit integer")
    if not isinstance(boot, str) or not _BOOT.fullmatch(boot):
        raise RecordError("record boot id is not 32 lowercase hex digits")
    if not isinstance(protocol, str) or not _PROTOCOL.fullmatch(protocol):
        raise RecordError("record protocol is not 1-64 printable ASCII characters")
    addrs, meta = fields["addrs"], fields["meta"]
    if not isinstance(addrs, list) or len(addrs) > MAX_ADDRESSES:
        raise RecordError(f"record addrs is not a list of at most {MAX_ADDRESSES}")
    if not isinstance(meta, dict):
        raise RecordError("record meta is not an object")
    try:
        checked = check_meta(meta)
    except ValueError as exc:
        raise RecordError(f"record {exc}") from None
    return PeerRecord(
        peer_id=signer,
        seq=seq,
        boot=boot,
        protocol=protocol,
        addresses=tuple(dict.fromkeys(_parse_address(a) for a in addrs)),
        meta_items=tuple(sorted(checked.items())),
        envelope=envelope,
    )


def verify(data: bytes, expected_peer_id: PeerId | None = None) -> PeerRecord:
    """The record in ``data`` if its signature checks out (and it is ``expected_peer_id``'s).
    Only what may be a record is remembered: bytes past ``MAX_RECORD_BYTES`` (a handshake can
    carry 64 KiB) are refused for their size each time, at no cost, and never kept."""
    cached = isinstance(data, bytes | bytearray | memoryview) and len(data) <= MAX_RECORD_BYTES
    outcome = _checked(bytes(data)) if cached else _check(data)
    if isinstance(outcome, str):
        raise RecordError(outcome)
    if expected_peer_id is not None and outcome.peer_id != expected_peer_id:
        raise RecordError(f"record of {outcome.peer_id}, expected {expected_peer_id}")
    return outcome


@functools.lru_cache(maxsize=1024)
def _checked(data: bytes) -> PeerRecord | str:
    """A node meets each record at least twice (relayed by the exchange, then in the handshake
    with its owner; in a forming mesh from several peers): its signature is checked once, and
    a bad one's reason is kept too (sent again, it costs no second check). What is kept is the
    answer for these exact bytes, so a flood evicts answers but cannot change one. It holds
    at most 1024 records of at most ``MAX_RECORD_BYTES`` each and what was made of each: for
    the largest a peer may sign (16 addresses, 1 KiB of metadata) about 20 KiB with the
    exchange's decoded entry, so ~20 MiB that a stranger's flood can fill
    (tests/test_hostile_records.py)."""
    return _check(data)


def _check(data: Any) -> PeerRecord | str:
    """The record in ``data``, or why it is not one."""
    try:
        signer, payload = _open(data)
        return _decode_payload(signer, payload, bytes(data))
    except RecordError as exc:
        return str(exc)


def forget_checked() -> None:
    """Forget every record checked, so the next meeting with any peer checks its record as a
    first one does (the handshake benchmark measures first meetings)."""
    _checked.cache_clear()


# -- our own record ----------------------------------------------------------------------------


class SequenceNumbers:
    """Sequence numbers that only grow: microseconds since the epoch, never below the last one
    used from this state dir (the clock may go back; a restart must not)."""

    def __init__(self, state_dir: Path | None) -> None:
        self.path = state_dir / SEQ_FILE_NAME if state_dir is not None else None
        self._last = self._read()

    def _read(self) -> int:
        if self.path is None:
            return 0
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return 0
        return int(text) if text.isdigit() and len(text) < 19 else 0

    def next(self) -> int:
        seq = max(self._last + 1, self._read() + 1, time.time_ns() // 1000)
        if self.path is not None:
            write_private(self.path, str(seq).encode())
        self._last = seq
        return seq


class LocalRecord:
    """This node's own record; every change makes a new one with a higher ``seq``.

    ``state_dir`` keeps the last seq across restarts (None: a client that keeps nothing)."""

    def __init__(
        self,
        identity: Identity,
        state_dir: Path | None,
        *,
        protocol: str,
        addresses: Iterable[Address],
        meta: Mapping[str, str],
    ) -> None:
        self._identity = identity
        self._sequence = SequenceNumbers(state_dir)
        self.boot = os.urandom(16).hex()
        self._protocol = protocol
        self.record = self._make(tuple(addresses), check_meta(meta))

    def _make(self, addresses: tuple[Address, ...], meta: dict[str, str]) -> PeerRecord:
        own = [a for a in dict.fromkeys(addresses) if a.ip is not None][:MAX_ADDRESSES]
        payload = _payload(
            {
                "addrs": [str(a) for a in own],
                "boot": self.boot,
                "meta": meta,
                "peer_id": str(self._identity.peer_id),
                "protocol": self._protocol,
                "seq": self._sequence.next(),
            }
        )
        envelope = seal(self._identity, payload)
        if len(envelope) > MAX_RECORD_BYTES:  # cannot happen within the bounds above
            raise ValueError(f"record of {len(envelope)} bytes exceeds {MAX_RECORD_BYTES}")
        return _decode_payload(self._identity.peer_id, payload, envelope)

    def encode(self) -> bytes:
        """The signed record, as the handshake and the exchange carry it."""
        return self.record.envelope

    def update(
        self,
        *,
        addresses: Iterable[Address] | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> PeerRecord:
        """A new record with these addresses and/or metadata (and a higher seq)."""
        current = self.record
        self.record = self._make(
            tuple(current.addresses if addresses is None else addresses),
            current.meta if meta is None else check_meta(meta),
        )
        return self.record


# -- what we know of others --------------------------------------------------------------------


class RecordStore:
    """The newest record of each peer, at most ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._records: dict[PeerId, PeerRecord] = {}

    def offer(self, record: PeerRecord) -> bool:
        """Keep ``record`` if it is newer than what we hold (and there is room); True if kept."""
        current = self._records.get(record.peer_id)
        if not record.newer_than(current):
            return False
        if current is None and len(self._records) >= self.limit:
            return False
        self._records[record.peer_id] = record
        return True

    def get(self, peer_id: PeerId) -> PeerRecord | None:
        return self._records.get(peer_id)

    def drop(self, peer_id: PeerId) -> None:
        self._records.pop(peer_id, None)

    def __len__(self) -> int:
        return len(self._records)


def other_boot(
    direct: PeerRecord, *, live: PeerRecord | None, newest: PeerRecord | None
) -> PeerRecord | None:
    """The record of another live node holding ``direct``'s key, if these show one.

    ``direct`` came from the peer itself (a handshake: it is alive now). A different boot id on
    a connection that is still up is a second node with that key; so is an older boot that is
    still alive after a newer one started (a restarted node never comes back with its old boot).
    """
    if live is not None and live.boot != direct.boot:
        return live
    if newest is not None and newest.boot != direct.boot and newest.seq > direct.seq:
        return newest
    return None
