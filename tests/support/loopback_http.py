"""An HTTP server on 127.0.0.1 in a thread, for fault-injecting fakes (Headscale, http_sd).

Subclasses set ``handler`` (a ``BaseHTTPRequestHandler`` class; each request's handler gets the
server object as ``server_state``). ``stopping`` is set on stop, so handlers that hang or crawl
on purpose end, and stop joins every handler thread: nothing outlives the test.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self


@dataclass
class LoopbackHTTP:
    handler: ClassVar[type[BaseHTTPRequestHandler]]
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Self:
        state = self
        handler: Any = type("Handler", (self.handler,), {"server_state": state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = False
        self._server.block_on_close = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, daemon=True, kwargs={"poll_interval": 0.05}
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()  # releases hanging and crawling handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()  # joins handler threads
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
