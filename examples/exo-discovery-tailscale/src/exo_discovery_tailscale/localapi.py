"""A small client of tailscaled's LocalAPI over its unix socket: status and the IPN bus.

Only the fields this plugin needs are modelled; everything else tailscaled sends is ignored, so
newer daemons keep working. Every failure becomes a :class:`LocalAPIError` (a ``SourceError``)
whose message says what is wrong and how to fix it.
"""

from __future__ import annotations

import errno
import json
import socket as _socket
import sys
import threading
from collections.abc import Generator
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exo_discovery_core import SourceError

if TYPE_CHECKING:
    import httpx  # imported by the clients, when the plugin runs: loading it costs no httpx

LOCALAPI_HOST = "local-tailscaled.sock"
"""tailscaled only answers requests with this Host (its guard against DNS rebinding)."""
BASE_URL = f"http://{LOCALAPI_HOST}"

LINUX_SOCKETS = (
    Path("/var/run/tailscale/tailscaled.sock"),
    Path("/run/tailscale/tailscaled.sock"),
)
MACOS_SOCKETS = (Path("/var/run/tailscaled.socket"),)
"""The open-source tailscaled on macOS. The App Store / standalone GUI app has no unix socket
(its LocalAPI is a localhost TCP port with a token file), so it is not supported."""

# ipn.NotifyWatchOpt bits (tailscale ipn/backend.go); they are part of the LocalAPI wire format.
NOTIFY_INITIAL_STATE = 1 << 1
NOTIFY_PEER_CHANGES = 1 << 12
WATCH_MASK = NOTIFY_INITIAL_STATE | NOTIFY_PEER_CHANGES
"""A first message at once (so a change between our first read and the watch is not missed),
then peer deltas as small ``PeerChanges`` instead of a full ``NetMap`` each time."""

FIX_START = (
    "start tailscaled (`sudo systemctl enable --now tailscaled`, or the Tailscale app) or point "
    "the plugin at its socket: socket = ... in [plugins.tailscale], --tailscale-socket or "
    "TAILSCALE_SOCKET"
)
FIX_PERMISSION = (
    "run exo as a user allowed to open the socket (check `ls -l` on it and its directory), "
    "or as root"
)
FIX_UP = "run `tailscale up` (and log in) so this machine joins the tailnet"


def default_sockets() -> tuple[Path, ...]:
    """Where tailscaled puts its socket on this platform, most usual first."""
    return MACOS_SOCKETS if sys.platform == "darwin" else LINUX_SOCKETS


def find_socket(configured: Path | None) -> Path:
    """The configured socket, else the first default path that exists (else the first default)."""
    if configured is not None:
        return configured.expanduser()
    candidates = default_sockets()
    return next((path for path in candidates if path.exists()), candidates[0])


class LocalAPIError(SourceError):
    """A LocalAPI failure with one clear message and its ``fix`` (``SourceError.fix``).

    ``unreachable`` means tailscaled could not be reached at all (as opposed to a bad answer);
    ``idle`` that there is no tailscaled here at all (no socket): the plugin is idle, not failing.
    """

    def __init__(
        self, message: str, *, fix: str = "", unreachable: bool = False, idle: bool = False
    ) -> None:
        super().__init__(message, fix=fix, idle=idle)
        self.unreachable = unreachable


# -- the status, as far as we read it ---------------------------------------------------------


class PeerStatus(BaseModel):
    """One node of ``/localapi/v0/status`` (``ipnstate.PeerStatus``)."""

    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)

    id: str = Field("", alias="ID")
    host_name: str = Field("", alias="HostName")
    dns_name: str = Field("", alias="DNSName")
    os: str = Field("", alias="OS")
    tailscale_ips: tuple[str, ...] = Field((), alias="TailscaleIPs")
    tags: tuple[str, ...] | None = Field(None, alias="Tags")
    online: bool = Field(False, alias="Online")
    expired: bool = Field(False, alias="Expired")


class Status(BaseModel):
    """``/localapi/v0/status`` (``ipnstate.Status``): the daemon's state, itself and its peers."""

    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)

    backend_state: str = Field("", alias="BackendState")
    version: str = Field("", alias="Version")
    self_: PeerStatus | None = Field(None, alias="Self")
    tailscale_ips: tuple[str, ...] | None = Field(None, alias="TailscaleIPs")
    peer: dict[str, PeerStatus] | None = Field(None, alias="Peer")

    @property
    def peers(self) -> list[PeerStatus]:
        return list((self.peer or {}).values())


# -- the client -------------------------------------------------------------------------------


class LocalAPI:
    """One tailscaled, reached through ``socket``; use as ``async with LocalAPI(path) as api``."""

    def __init__(self, socket: Path, *, timeout: float = 5.0) -> None:
        import httpx

        self.socket = socket
        self.timeout = timeout
        self._client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(socket)),
            base_url=BASE_URL,
            timeout=timeout,
            headers={"Host": LOCALAPI_HOST},
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def status(self) -> Status:
        """``GET /localapi/v0/status``, validated; LocalAPIError on any failure."""
        import httpx

        check_socket(self.socket)
        path = "/localapi/v0/status"
        try:
            response = await self._client.get(path)
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.socket, self.timeout) from None
        check_response(response, path)
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LocalAPIError(
                f"tailscaled sent bad JSON from {path}: {exc}",
                fix="is the socket really tailscaled's? check socket in [plugins.tailscale]",
            ) from None
        try:
            return Status.model_validate(data)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(map(str, first["loc"]))
            raise LocalAPIError(
                f"tailscaled's {path} has an unexpected shape at {where}: {first['msg']}",
                fix="update this plugin or tailscaled; please report the tailscaled version",
            ) from None


class BusReader:
    """The IPN bus (``/localapi/v0/watch-ipn-bus``), read with blocking I/O in a thread.

    Blocking on purpose: the bus is silent for long stretches, and a thread blocked on it can be
    woken with :meth:`interrupt` from any thread, where cancelling an asyncio read of a unix
    socket races with the data arriving (anyio on asyncio then reports ``InvalidStateError``).
    """

    def __init__(self, socket: Path, *, timeout: float = 5.0, mask: int = WATCH_MASK) -> None:
        self.socket = socket
        self.timeout = timeout
        self.mask = mask
        self._lock = threading.Lock()
        self._closed = False
        self._raw: _socket.socket | None = None

    def notes(self) -> Generator[dict[str, Any], None, None]:
        """One dict per notification until the stream ends or :meth:`interrupt` is called."""
        import httpx

        check_socket(self.socket)
        path = "/localapi/v0/watch-ipn-bus"
        transport = httpx.HTTPTransport(uds=str(self.socket))
        timeout = httpx.Timeout(self.timeout, read=None)
        try:
            with (
                httpx.Client(transport=transport, base_url=BASE_URL, timeout=timeout) as client,
                client.stream("GET", path, params={"mask": str(self.mask)}) as response,
            ):
                if not self._hold(response):
                    return
                if response.status_code != 200:
                    response.read()
                check_response(response, path)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        note = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise LocalAPIError(f"tailscaled sent bad JSON on {path}: {exc}") from None
                    if isinstance(note, dict):
                        yield note
        except httpx.HTTPError as exc:
            if self._closed:
                return
            raise transport_error(exc, self.socket, self.timeout) from None
        finally:
            with self._lock:
                self._raw = None

    def interrupt(self) -> None:
        """Make :meth:`notes` end soon, from any thread (shuts the connection down)."""
        with self._lock:
            self._closed = True
            if self._raw is not None:
                with suppress(OSError):
                    self._raw.shutdown(_socket.SHUT_RDWR)

    def _hold(self, response: httpx.Response) -> bool:
        """Remember the connection's socket so interrupt can reach it; False if already closed."""
        stream = response.extensions.get("network_stream")
        raw = stream.get_extra_info("socket") if stream is not None else None
        with self._lock:
            if self._closed:
                return False
            self._raw = raw if isinstance(raw, _socket.socket) else None
        return True


def check_socket(socket: Path) -> None:
    """LocalAPIError if there is nothing at ``socket`` (a clearer message than ENOENT)."""
    if not socket.exists():
        raise LocalAPIError(
            f"no tailscaled on this machine (no socket at {socket}); to use it, {FIX_START}",
            fix=FIX_START,
            unreachable=True,
            idle=True,
        )


def transport_error(exc: httpx.HTTPError, socket: Path, timeout: float) -> LocalAPIError:
    """A clear message for a failure to reach tailscaled at all."""
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return LocalAPIError(
            f"tailscaled at {socket} did not answer within {timeout:g} s",
            fix="check that tailscaled is healthy: `tailscale status`",
            unreachable=True,
        )
    os_error = _os_error(exc)
    code = os_error.errno if os_error is not None else None
    if code in (errno.EACCES, errno.EPERM):
        return LocalAPIError(
            f"permission denied opening tailscaled's socket {socket}",
            fix=FIX_PERMISSION,
            unreachable=True,
        )
    if code in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
        return LocalAPIError(
            f"tailscaled not running or socket not at {socket}"
            + (" (it refuses connections)" if code == errno.ECONNREFUSED else ""),
            fix=FIX_START,
            unreachable=True,
        )
    detail = os_error.strerror if os_error is not None and os_error.strerror else str(exc)
    return LocalAPIError(
        f"cannot talk to tailscaled at {socket}: {detail or type(exc).__name__}",
        fix=FIX_START,
        unreachable=True,
    )


def check_response(response: httpx.Response, path: str) -> None:
    """LocalAPIError unless the answer is a 200."""
    if response.status_code == 200:
        return
    body = response.text.strip().splitlines()
    reason = body[0][:200] if body else response.reason_phrase
    if response.status_code == 403:
        raise LocalAPIError(f"tailscaled refused {path} (403 {reason})", fix=FIX_PERMISSION)
    raise LocalAPIError(
        f"tailscaled answered {path} with HTTP {response.status_code}: {reason}",
        fix="check `tailscale status`; a very old tailscaled may lack this endpoint",
    )


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind an httpx error (httpx wraps the socket's own error)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current
        current = current.__cause__ or current.__context__
    return None
