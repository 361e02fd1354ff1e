"""The bounds' mechanics: token buckets, the inbound gate, an accept loop that outlives the
system's accept errors. (The same bounds against real node processes: tests/test_bounds_e2e.py.)
"""

from __future__ import annotations

import errno
import logging
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from exo_discovery_core import limits
from exo_discovery_core.limits import InboundGate, TokenBucket, accept_forever
from tests.support.clock import Clock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(limits.time, "monotonic", fake)
    return fake


def test_a_bucket_gives_its_burst_then_its_rate(clock: Clock) -> None:
    bucket = TokenBucket(rate=5, burst=20)
    assert sum(bucket.try_take() for _ in range(100)) == 20
    clock.now += 2.0  # 2 s at 5 a second
    assert sum(bucket.try_take() for _ in range(100)) == 10
    assert bucket.wait_time() == pytest.approx(0.2)
    clock.now += 3600
    assert sum(bucket.try_take() for _ in range(100)) == 20, "never more than the burst saved"


def test_the_gate_makes_room_by_dropping_the_oldest_handshake_never_a_connected_peer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "descriptor_limit", lambda: None)
    gate = InboundGate(max_total=5, max_per_ip=2, max_handshakes=3)
    dropped: list[str] = []

    def admit(ip: str, name: str) -> limits.Ticket:
        ticket = gate.admit(ip)
        assert isinstance(ticket, limits.Ticket), ticket
        ticket.cancel = lambda: dropped.append(name)
        return ticket

    a1, a2 = admit("10.0.0.1", "a1"), admit("10.0.0.1", "a2")
    a3 = admit("10.0.0.1", "a3")  # per IP: the oldest handshake from that IP makes room
    assert dropped == ["a1"] and a1.released
    a2.handshake_done()
    a3.handshake_done()  # both connected now: never dropped for a newcomer
    refused = gate.admit("10.0.0.1")
    assert refused == "every connection counted by max_inbound_per_ip is past its handshake"
    b1, b2 = admit("10.0.0.2", "b1"), admit("10.0.0.3", "b2")
    b3 = admit("10.0.0.4", "b3")  # 5 in all now, 3 of them handshaking
    admit("10.0.0.5", "b4")  # in all: the oldest handshake anywhere makes room
    assert dropped == ["a1", "b1"] and b1.released
    b2.handshake_done()
    admit("10.0.0.6", "c1")  # in all again: the oldest still handshaking (b3), not b2
    assert dropped == ["a1", "b1", "b3"]
    assert (gate.total, gate.handshakes) == (5, 2)
    for ticket in [a2, a3, b2, b3, *list(gate.pending)]:
        ticket.release()
        ticket.release()  # releasing twice counts once
    assert (gate.total, gate.handshakes, dict(gate.per_ip), gate.pending) == (0, 0, {}, {})
    assert gate.refused == {"max_inbound_per_ip": 1}
    assert gate.evicted == {"max_inbound_per_ip": 1, "max_inbound_connections": 2}
    handshakes = InboundGate(max_total=9, max_per_ip=9, max_handshakes=1)
    first = handshakes.admit("10.0.0.7")
    assert isinstance(first, limits.Ticket)
    assert isinstance(handshakes.admit("10.0.0.8"), limits.Ticket) and first.released
    assert handshakes.evicted == {"max_handshakes": 1}


def test_the_gate_stays_below_the_open_file_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "descriptor_limit", lambda: 256)
    assert InboundGate(max_total=1024, max_per_ip=64, max_handshakes=64).max_total == 192
    monkeypatch.setattr(limits, "descriptor_limit", lambda: None)
    assert InboundGate(max_total=1024, max_per_ip=64, max_handshakes=64).max_total == 1024


class ShortListener:
    """A listener whose accept() fails as the system's does when it is out of descriptors (the
    fault), then accepts real loopback connections (the real contract)."""

    def __init__(self, real: Any, failures: list[int]) -> None:
        self.real = real
        self.failures = failures

    async def accept(self) -> Any:
        if self.failures:
            code = self.failures.pop(0)
            raise OSError(code, "injected: " + errno.errorcode[code])
        return await self.real.accept()


@pytest.mark.anyio
async def test_accept_errors_pause_log_once_and_accepting_resumes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "exo_discovery.limits")
    failures = [errno.EMFILE] * 5 + [errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED]
    served = anyio.Event()

    async def handler(stream: Any, ticket: Any) -> None:
        async with stream:
            await stream.send(b"hi")
        served.set()

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as real:
        port = real.extra(anyio.abc.SocketAttribute.local_port)
        shaky = ShortListener(real.listeners[0], failures)
        async with anyio.create_task_group() as tg:
            tg.start_soon(accept_forever, shaky, handler, tg)  # type: ignore[arg-type]
            with anyio.fail_after(10):
                async with await anyio.connect_tcp("127.0.0.1", port) as client:
                    assert await client.receive() == b"hi"
                await served.wait()
            tg.cancel_scope.cancel()
    assert not failures
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # one when it began, one when it ended
    assert lines[0].startswith("cannot accept connections: injected: EMFILE; pausing")
    assert lines[1].startswith("accepting connections again after") and "(8 failed" in lines[1]


@pytest.mark.anyio
async def test_other_accept_errors_are_not_swallowed() -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as real:
        shaky = ShortListener(real.listeners[0], [errno.EBADF])
        async with anyio.create_task_group() as tg:
            with pytest.raises(OSError, match="EBADF"):
                await accept_forever(shaky, lambda s, t: anyio.lowlevel.checkpoint(), tg)  # type: ignore[arg-type]
