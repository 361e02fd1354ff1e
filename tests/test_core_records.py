"""Signed peer records: the envelope (RFC 0002 signing rule), strict decoding, seq, the store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from exo_discovery_core import records
from exo_discovery_core.identity import Identity
from exo_discovery_core.models import Address
from exo_discovery_core.records import (
    MAX_META_BYTES,
    MAX_META_KEYS,
    LocalRecord,
    RecordError,
    RecordStore,
    check_meta,
    other_boot,
    verify,
)

ADDRS = (Address(host="192.168.1.5", port=52417), Address(host="127.0.0.1", port=52417))


def local(identity: Identity, state_dir: Path, **meta: str) -> LocalRecord:
    state_dir.mkdir(parents=True, exist_ok=True)
    return LocalRecord(identity, state_dir, protocol="exo-discovery/2", addresses=ADDRS, meta=meta)


def _fields(data: bytes) -> list[bytes]:
    """An independent reading of the envelope: four length-delimited protobuf fields."""
    out, at = [], 0
    while at < len(data):
        at += 1  # tag
        length = shift = 0
        while True:
            byte = data[at]
            at += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        out.append(data[at : at + length])
        at += length
    return out


def test_a_record_verifies_and_says_what_its_node_said(tmp_path: Path) -> None:
    identity = Identity.generate()
    mine = local(identity, tmp_path, api_port="52415", role="worker")
    record = verify(mine.encode(), identity.peer_id)
    assert record.peer_id == identity.peer_id
    assert record.addresses == ADDRS
    assert record.meta == {"api_port": "52415", "role": "worker"}
    assert record.protocol == "exo-discovery/2"
    assert len(record.boot) == 32 and record.seq > 0
    assert record.envelope == mine.encode()


def test_the_signature_covers_the_domain_the_type_and_the_exact_payload(tmp_path: Path) -> None:
    """RFC 0002: sign(varint-prefixed domain || payload type || payload), nothing else."""
    identity = Identity.generate()
    key, payload_type, payload, signature = _fields(local(identity, tmp_path).encode())
    assert key == bytes([0x08, 0x01, 0x12, 0x20]) + identity.peer_id.key_bytes()[4:]
    assert payload_type == b"/exo-discovery/peer-record/2"
    signed = (
        bytes([len(b"exo-discovery-peer-record")])
        + b"exo-discovery-peer-record"
        + bytes([len(payload_type)])
        + payload_type
        + records._varint(len(payload))
        + payload
    )
    assert identity.peer_id.verify(signature, signed)
    assert not identity.peer_id.verify(signature, payload)  # the bare payload is not what is signed
    assert json.loads(payload)["peer_id"] == str(identity.peer_id)


def test_every_flipped_byte_is_refused(tmp_path: Path) -> None:
    data = local(Identity.generate(), tmp_path, k="v").encode()
    for i in range(len(data)):
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        with pytest.raises(RecordError):
            verify(bytes(tampered))


def test_truncated_extended_and_foreign_records_are_refused(tmp_path: Path) -> None:
    identity, other = Identity.generate(), Identity.generate()
    data = local(identity, tmp_path).encode()
    for bad in (b"", data[:-1], data + b"\x00", data[:10], b"\x0a" * 5000):
        with pytest.raises(RecordError):
            verify(bad)
    with pytest.raises(RecordError, match="expected"):
        verify(data, other.peer_id)


@pytest.mark.parametrize("bad", ["a record?", None, 5, [1, 2]])
def test_what_is_not_bytes_is_refused_as_not_a_record(bad: object) -> None:
    with pytest.raises(RecordError, match="not bytes"):
        verify(bad)  # type: ignore[arg-type]


def test_a_record_checked_once_is_checked_again_after_forget_checked(tmp_path: Path) -> None:
    """Good and bad outcomes are both kept; the handshake benchmark's first meetings forget them."""
    data = local(Identity.generate(), tmp_path).encode()
    records.forget_checked()
    assert verify(data) is verify(data)  # one check, one record
    with pytest.raises(RecordError):
        verify(data[:-1])
    misses = records._checked.cache_info().misses
    with pytest.raises(RecordError):
        verify(data[:-1])  # its reason kept: no second check
    assert records._checked.cache_info().misses == misses
    records.forget_checked()
    assert records._checked.cache_info().currsize == 0
    assert verify(data) == verify(data)


def _signed(identity: Identity, payload: dict[str, object] | bytes) -> bytes:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return records.seal(identity, body)


def _good_payload(identity: Identity) -> dict[str, object]:
    return {
        "addrs": ["10.0.0.2:1"],
        "boot": "ab" * 16,
        "meta": {},
        "peer_id": str(identity.peer_id),
        "protocol": "exo-discovery/2",
        "seq": 1,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seq": 0}, "seq"),
        ({"seq": True}, "seq"),
        ({"seq": 2**63}, "seq"),
        ({"seq": "1"}, "seq"),
        ({"boot": "AB" * 16}, "boot"),
        ({"boot": "ab"}, "boot"),
        ({"protocol": ""}, "protocol"),
        ({"protocol": "a b"}, "protocol"),
        ({"addrs": "10.0.0.2:1"}, "addrs"),
        ({"addrs": ["10.0.0.2:1"] * 17}, "addrs"),
        ({"addrs": ["10.0.0.2"]}, "port"),
        ({"addrs": ["10.0.0.2:0"]}, "host:port"),
        ({"addrs": [5]}, "string"),
        ({"meta": []}, "meta"),
        ({"meta": {"k": 1}}, "string"),
        ({"meta": {f"k{i}": "" for i in range(33)}}, "33 metadata keys"),
        ({"meta": {"k": "v" * 1024}}, "bytes"),
        ({"meta": {"bad key": "v"}}, "metadata key"),
        ({"meta": {"k": "a\nb"}}, "control"),
        ({"extra": 1}, "exactly the keys"),
        ({"peer_id": str(Identity.generate().peer_id)}, "another peer"),
    ],
)
def test_a_signed_but_malformed_payload_is_refused(change: dict[str, object], message: str) -> None:
    identity = Identity.generate()
    with pytest.raises(RecordError, match=message):
        verify(_signed(identity, {**_good_payload(identity), **change}))


def test_a_signed_payload_that_is_not_one_json_object_is_refused() -> None:
    identity = Identity.generate()
    good = json.dumps(_good_payload(identity)).encode()
    for body in (b"\xff", b"[1]", b"{" * 3000, good[:-1] + b',"seq":2}', b"1e999"):
        with pytest.raises(RecordError):
            verify(_signed(identity, body))


def test_the_sequence_grows_across_restarts_even_if_the_clock_goes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity = Identity.generate()
    first = local(identity, tmp_path).record
    monkeypatch.setattr(time, "time_ns", lambda: 1_000_000)  # 1970: the clock went back
    restarted = local(identity, tmp_path).record
    assert restarted.seq > first.seq
    assert restarted.boot != first.boot
    assert (tmp_path / records.SEQ_FILE_NAME).stat().st_mode & 0o777 == 0o600


def test_new_metadata_is_a_new_record_with_a_higher_seq(tmp_path: Path) -> None:
    mine = local(Identity.generate(), tmp_path, role="a")
    before = mine.record
    after = mine.update(meta={"role": "b"})
    assert after.seq > before.seq and after.boot == before.boot
    assert verify(mine.encode()).meta == {"role": "b"}
    assert after.addresses == before.addresses


def test_metadata_bounds() -> None:
    assert check_meta({f"k{i}": "v" for i in range(MAX_META_KEYS)})
    with pytest.raises(ValueError, match="33 metadata keys; at most 32"):
        check_meta({f"k{i}": "v" for i in range(MAX_META_KEYS + 1)})
    assert check_meta({"k": "v" * (MAX_META_BYTES - 1)})
    with pytest.raises(ValueError, match="1025 bytes"):
        check_meta({"k": "v" * MAX_META_BYTES})
    with pytest.raises(ValueError, match="1025 bytes"):  # counted in UTF-8, not characters
        check_meta({"k": "é" * 512})


def test_the_largest_record_fits_the_record_limit(tmp_path: Path) -> None:
    many = tuple(Address(host=f"fd00::{i:x}:ffff:ffff:ffff", port=65535) for i in range(20))
    meta = {f"key{i:02}": "x" * 26 for i in range(MAX_META_KEYS)}
    mine = LocalRecord(Identity.generate(), tmp_path, protocol="p" * 64, addresses=many, meta=meta)
    record = verify(mine.encode())
    assert len(record.addresses) == records.MAX_ADDRESSES
    assert len(mine.encode()) <= records.MAX_RECORD_BYTES


def test_the_store_keeps_the_newest_record_per_peer_and_is_bounded(tmp_path: Path) -> None:
    identity = Identity.generate()
    mine = local(identity, tmp_path)
    old = mine.record
    new = mine.update(meta={"v": "2"})
    store = RecordStore(limit=2)
    assert store.offer(new)
    assert not store.offer(old), "an older record never replaces a newer one"
    assert store.get(identity.peer_id) == new
    assert store.offer(local(Identity.generate(), tmp_path / "b").record)
    assert not store.offer(local(Identity.generate(), tmp_path / "c").record), "over the limit"
    assert store.offer(mine.update(meta={"v": "3"})), "a known peer's newer record still fits"


def test_two_boots_of_one_key_alive_at_once_are_a_duplicate(tmp_path: Path) -> None:
    identity = Identity.generate()
    first = local(identity, tmp_path).record
    second = local(identity, tmp_path).record  # the same key started again (same state dir)
    # the second handshakes while the first's connection is up
    assert other_boot(second, live=first, newest=first) == first
    # the first handshakes again after the second started: an old boot that is still alive
    assert other_boot(first, live=None, newest=second) == second
    # a restart: the old boot's connection is gone and the new boot is the newest
    assert other_boot(second, live=None, newest=first) is None
    assert other_boot(second, live=second, newest=second) is None
