"""Hostile bytes as a signed peer record (what the handshake and the exchange carry).

Every input must either decode to exactly the record its key signed or raise ``RecordError``:
never another exception, never a record that says something its key did not sign.

Cases per target: ``CASES_PER_TARGET`` (300) for random bytes, for valid records with bytes
flipped, cut or inserted, and for signed payloads of random JSON.

Every record checked is remembered (``records._checked``, and the exchange's decoded entries),
a bad one's reason too: a stranger flooding distinct records, good and bad, of any size the
handshake or a frame can carry, cannot make those caches hold more than their bound, nor
evict a peer's record to put another in its place (what is remembered is the answer for those
exact bytes: a forged record is refused before the flood and after it, and a bad record of a
peer never makes its good one refused).
"""

from __future__ import annotations

import base64
import gc
import json
import os
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exo_discovery_core import exchange, records
from exo_discovery_core.identity import Identity
from exo_discovery_core.models import Address
from exo_discovery_core.records import LocalRecord, RecordError
from tests.support.hostile import json_values

CASES_PER_TARGET = 300
SETTINGS = settings(
    max_examples=CASES_PER_TARGET,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SIGNER = Identity.generate()
GOOD = LocalRecord(
    SIGNER,
    None,
    protocol="exo-discovery/2",
    addresses=(Address(host="10.0.0.2", port=52417),),
    meta={"api_port": "52415"},
).encode()


def decodes_or_refuses(data: bytes) -> records.PeerRecord | None:
    try:
        record = records.verify(data)
    except RecordError:
        return None
    # a record that decodes is its signer's word: checked again here
    _key, payload_type, payload, signature = records._fields(data)
    assert record.peer_id.verify(signature, records.signing_bytes(payload_type, payload))
    return record


@SETTINGS
@given(st.binary(max_size=5000))
def test_random_bytes(data: bytes) -> None:
    """Cases: CASES_PER_TARGET (300)."""
    assert decodes_or_refuses(data) is None or data == GOOD


@SETTINGS
@given(st.data())
def test_a_valid_record_with_bytes_flipped_cut_or_inserted(data: st.DataObject) -> None:
    """Cases: CASES_PER_TARGET (300)."""
    raw = bytearray(GOOD)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        how = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if how == "flip":
            raw[at] ^= data.draw(st.integers(1, 255))
        elif how == "cut":
            del raw[at : at + data.draw(st.integers(1, 40))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=40))
        if not raw:
            raw = bytearray(b"\x00")
    changed = bytes(raw)
    assert decodes_or_refuses(changed) is None or changed == GOOD


JSON = json_values(20)


@SETTINGS
@given(
    JSON,
    st.dictionaries(st.sampled_from(["addrs", "boot", "meta", "peer_id", "protocol", "seq"]), JSON),
)
def test_signed_payloads_of_random_json(value: Any, overrides: dict[str, Any]) -> None:
    """Cases: CASES_PER_TARGET (300): signed by the right key, so only the payload's checks
    stand between it and the table."""
    good = json.loads(records._fields(GOOD)[2])
    payload = {**good, **overrides} if overrides else value
    record = decodes_or_refuses(records.seal(SIGNER, json.dumps(payload).encode()))
    if record is not None:
        assert record.peer_id == SIGNER.peer_id
        assert len(record.addresses) <= records.MAX_ADDRESSES
        assert records.check_meta(record.meta) == record.meta


CACHED = records._checked.cache_info().maxsize  # records remembered (and entries decoded)
assert CACHED is not None
FLOOD = 2 * CACHED  # enough to have evicted every record remembered before it


def record_of(identity: Identity, port: int = 52417, *, most: bool = False) -> bytes:
    """A good record of ``identity``; with ``most``, with as many addresses and as much
    metadata as a record may have (each key and value as long as the metadata bound allows)."""
    addresses = [Address(host="10.0.0.2", port=port)]
    meta: dict[str, str] = {}
    if most:
        addresses = [Address(host=f"fd00::{n:x}:ffff:ffff", port=65000 + n) for n in range(16)]
        each = records.MAX_META_BYTES // records.MAX_META_KEYS
        meta = {f"k{n:02d}": "v" * (each - 3) for n in range(records.MAX_META_KEYS)}
    return LocalRecord(
        identity, None, protocol="exo-discovery/2", addresses=addresses, meta=meta
    ).encode()


def retained(meet: Callable[[int], object], count: int = FLOOD) -> int:
    """Bytes still held after ``meet(n)`` for ``count`` distinct inputs, each dropped after
    it was met: what the caches kept of them."""
    records.forget_checked()
    exchange._opened.cache_clear()
    gc.collect()
    tracemalloc.start()
    try:
        for n in range(count):
            meet(n)
        gc.collect()
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        records.forget_checked()
        exchange._opened.cache_clear()
    return held


def refused(data: bytes) -> None:
    with pytest.raises(RecordError):
        records.verify(data)


def good_entry(_n: int) -> None:
    identity = Identity.generate()
    entry = base64.b64encode(record_of(identity, most=True)).decode()
    assert exchange._record(entry, {identity.peer_id}) is not None


# what a stranger can send, in its handshakes (a record of up to a Noise message, 64 KiB) and
# in its records frames (entries of up to a frame's worth, 16 KiB), each one different
FLOODS: dict[str, Callable[[int], object]] = {
    "handshake records past the size of one": lambda _n: refused(os.urandom(60_000)),
    "handshake records of the largest size, bad": lambda _n: refused(
        os.urandom(records.MAX_RECORD_BYTES)
    ),
    "handshake records, good, the largest": lambda _n: records.verify(
        record_of(Identity.generate(), most=True)
    ),
    "relayed base64 past the size of a record": lambda _n: exchange._record(
        base64.b64encode(os.urandom(12_000)).decode(), set()
    ),
    "relayed text that is not base64": lambda n: exchange._record(f"!{n}" * 2000, set()),
    "relayed records, good, the largest": good_entry,
}


@pytest.fixture(scope="module")
def bound() -> int:
    """What the caches may hold, measured in this run: CACHED of the largest record a peer may
    sign, each remembered in both caches (its bytes, its base64, its fields), and a fifth more
    for the caches' own bookkeeping."""
    each = retained(good_entry, 64) / 64
    return int(CACHED * each * 1.2)


@pytest.mark.parametrize("flood", FLOODS)
def test_a_flood_of_distinct_records_holds_no_more_than_the_cache_bound(
    flood: str, bound: int
) -> None:
    """Cases: FLOOD (2048) distinct inputs of each kind. (A handshake's record of 60 KiB, refused for
    its size, was kept with its reason: 1024 of them held 60 MiB.)"""
    held = retained(FLOODS[flood])
    assert held <= bound, f"{held / 2**20:.1f} MiB held after {FLOOD}; bound {bound / 2**20:.1f}"


def test_an_entry_too_long_to_be_a_record_is_not_even_decoded() -> None:
    """Relayed entries of up to a frame each were base64-decoded and remembered (16 MiB)."""
    exchange._opened.cache_clear()
    for n in range(8):
        assert exchange._record(base64.b64encode(os.urandom(12_000 + n)).decode(), set()) is None
    assert exchange._opened.cache_info().currsize == 0


def test_a_flood_cannot_evict_a_peer_s_record_and_put_a_forged_one_in_its_place() -> None:
    """A good record of X is checked; forged ones of X (X's key with another's signature, X's
    signature over a changed payload, X's payload signed by another key) are refused; a flood
    evicts them all; met again, each gets the same answer, checked afresh."""
    x, stranger = Identity.generate(), Identity.generate()
    good = record_of(x)
    payload = records._fields(good)[2]
    changed = payload.replace(b"52417", b"52418")
    forged = [
        record_of(x)[:-64] + records._fields(record_of(stranger))[3],  # another's signature
        good.replace(payload, changed),  # X's signature over what X did not say
        records.seal(stranger, payload),  # X's payload under another key: not X's record
    ]

    def answers() -> list[Any]:
        refused = []
        for data in forged:
            try:
                record = records.verify(data, x.peer_id)
            except RecordError as exc:
                refused.append(str(exc))
            else:
                raise AssertionError(f"a forged record of X was taken: {record}")
        return [records.verify(good, x.peer_id), *refused]

    before = answers()
    for _ in range(FLOOD):  # every answer above evicted
        with pytest.raises(RecordError):
            records.verify(os.urandom(200))
    assert answers() == before
    assert before[0].envelope == good
    assert before[0].addresses == (Address(host="10.0.0.2", port=52417),)


def test_a_bad_record_of_a_peer_does_not_make_its_good_one_refused() -> None:
    """Refused for one content, a peer's record is refused for that content only: a good record
    of the same peer (the same seq and key, or a newer one) is taken, before or after it."""
    x = Identity.generate()
    good = record_of(x, port=1000)
    bad = bytearray(good)
    bad[-1] ^= 1  # the signature broken
    with pytest.raises(RecordError):
        records.verify(bytes(bad), x.peer_id)
    assert records.verify(good, x.peer_id).envelope == good
    newer = record_of(x, port=1001)
    with pytest.raises(RecordError):
        records.verify(newer[:-1] + bytes([newer[-1] ^ 1]), x.peer_id)
    assert records.verify(newer, x.peer_id).seq > records.verify(good, x.peer_id).seq
