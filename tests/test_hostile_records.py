"""Hostile bytes as a signed peer record (what the handshake and the exchange carry).

Every input must either decode to exactly the record its key signed or raise ``RecordError``:
never another exception, never a record that says something its key did not sign.

Cases per target: ``CASES_PER_TARGET`` (300) for random bytes, for valid records with bytes
flipped, cut or inserted, and for signed payloads of random JSON.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exo_discovery_core import records
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
