"""An http_sd endpoint on 127.0.0.1 for the http plugin's tests: a real HTTP server whose answer
(and faults) the test sets between requests.

``body`` is served as-is with ``status`` and ``headers``; ``fault`` makes it fail the way a
real server or network does: ``hang`` (no answer until stopped), ``endless`` (a chunked 200
that never ends), ``lying_length`` (a Content-Length of 10 GB). Every request's headers are
kept in ``requests`` and counted under a condition, so a test waits for the n-th request with
a deadline instead of sleeping.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import anyio
import anyio.to_thread

from tests.support.loopback_http import LoopbackHTTP


@dataclass
class SdServer(LoopbackHTTP):
    body: bytes = b"[]"
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    fault: str | None = None
    token: str | None = None
    requests: list[dict[str, str]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def serve(self, groups: list[dict[str, Any]], **headers: str) -> None:
        """Answer ``groups`` (as JSON) from the next request on, with extra ``headers``."""
        with self.lock:
            self.body = json.dumps(groups).encode()
            self.status, self.fault = 200, None
            self.headers = {"Content-Type": "application/json", **headers}

    async def wait_requests(self, count: int, timeout: float = 10.0) -> None:
        """Until ``count`` requests have arrived in all (waited for in a worker thread, so the
        event loop keeps polling); TimeoutError otherwise."""

        def wait() -> None:
            with self.arrived:
                if not self.arrived.wait_for(lambda: len(self.requests) >= count, timeout):
                    raise TimeoutError(f"{len(self.requests)} of {count} requests in {timeout} s")

        await anyio.to_thread.run_sync(wait)


class _Handler(BaseHTTPRequestHandler):
    server_state: SdServer
    timeout = 5
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        sd = self.server_state
        with sd.arrived:
            sd.requests.append(dict(self.headers.items()))
            sd.arrived.notify_all()
        with sd.lock:
            body, status, headers, fault = sd.body, sd.status, dict(sd.headers), sd.fault
        if sd.token is not None and self.headers.get("Authorization") != f"Bearer {sd.token}":
            body, status, headers, fault = b"Unauthorized", 401, {}, None
        if fault == "hang":
            sd.stopping.wait()
            return
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if fault == "endless":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"[" + b'{"targets": ["127.0.0.1:1"]},' * 1000
            while not sd.stopping.is_set():
                try:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                except OSError:
                    return  # the client gave up, as it should
            return
        length = 10 * 1024**3 if fault == "lying_length" else len(body)
        self.send_header("Content-Length", str(length))
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            return


SdServer.handler = _Handler
