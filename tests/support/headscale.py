"""Real Headscale server and Tailscale clients on loopback, for integration tests.

Everything runs as unprivileged child processes with state in temp dirs:

* :class:`HeadscaleServer` - ``headscale serve`` with SQLite, a HuJSON policy, an
  embedded DERP server on 127.0.0.1 and no outbound internet dependencies; the newest
  release by default, or with ``tool="headscale-0.22"`` the oldest supported (0.22.3), whose
  config file, policy syntax and CLI differ (written and called here in its own dialect).
* :class:`TailscaleClient` - ``tailscaled --tun=userspace-networking`` joined to
  that server with a pre-auth key.

Both are context managers; processes are always killed (and reaped) on exit.
Every wait is bounded by a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypeVar

from tests.support.gotools import ensure_go_binary

DEFAULT_TAGS: tuple[str, ...] = ("tag:exo", "tag:exo-port-52415", "tag:other")
DEFAULT_USERS: tuple[str, ...] = ("testuser",)

T = TypeVar("T")


class ProcessStartupError(RuntimeError):
    """A managed process failed to start or become ready; message has the log tail."""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """Return a currently-free port on 127.0.0.1 (TCP by default, or UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 60) -> str:
    """Last ``lines`` lines of a log file ('' if missing)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` expires."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - reported on timeout
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(interval)


def _short_tmpdir(prefix: str) -> Path:
    """A temp dir with a short path (unix socket paths are limited to ~107 bytes)."""
    base = "/tmp" if os.path.isdir("/tmp") else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


class _ManagedProcess:
    """A child process in its own session whose output goes to a log file."""

    def __init__(
        self, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 5.0, sig: int = signal.SIGTERM) -> None:
        """Signal the process group, escalate to SIGKILL after ``grace``, and reap it."""
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)
                try:
                    self.proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
            else:
                # Leader is gone; make sure no stragglers in its group survive.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
        finally:
            self._log.close()


def _run(
    argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a short-lived command with a timeout, capturing output."""
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
    )


class _Service:
    """A process of ours in a work dir: stopped and reaped (and the dir removed) on exit, even
    when starting it failed half-way."""

    workdir: Path
    _own_workdir: bool
    _proc: _ManagedProcess | None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM (or ``sig``), then SIGKILL after a grace period; always reaped."""
        if self._proc is not None:
            self._proc.stop(sig=sig)
            self._proc = None

    def cleanup(self) -> None:
        """Stop and remove the work dir (if we created it)."""
        self.stop()
        if self._own_workdir and os.environ.get("EXO_KEEP_TEST_DIRS") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


class HeadscaleServer(_Service):
    """A real ``headscale serve`` on 127.0.0.1 with a throwaway config and SQLite DB.

    Usage::

        with HeadscaleServer() as hs:
            hs.create_user("testuser")
            key = hs.create_preauth_key("testuser", tags=["tag:exo"])
    """

    def __init__(
        self,
        tags: Iterable[str] = DEFAULT_TAGS,
        tag_owners: Iterable[str] = DEFAULT_USERS,
        workdir: Path | None = None,
        startup_timeout: float = 30.0,
        log_level: str = "info",
        tool: str = "headscale",
    ) -> None:
        self.tool = tool
        self.tags = list(tags)
        self.tag_owners = list(tag_owners)
        self.startup_timeout = startup_timeout
        self.log_level = log_level
        self._own_workdir = workdir is None
        self.workdir = workdir if workdir is not None else _short_tmpdir("hs-")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.grpc_port = free_port()
        self.metrics_port = free_port()
        self.stun_port = free_port(socket.SOCK_DGRAM)
        self.config_path = self.workdir / "config.yaml"
        self.policy_path = self.workdir / "policy.hujson"
        self.log_path = self.workdir / "headscale.log"
        self.binary: Path | None = None
        self._proc: _ManagedProcess | None = None

    # -- properties ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL of the HTTP API / control server, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of ``headscale serve`` while running."""
        return self._proc.pid if self._proc else None

    @property
    def legacy(self) -> bool:
        """Headscale 0.22: the ``machine`` API, the old config keys, users by name."""
        return self.tool == "headscale-0.22"

    # -- config -------------------------------------------------------------------

    def policy(self) -> dict[str, Any]:
        """The ACL policy: allow-all, with ``tagOwners`` for every configured tag (0.22 names
        users bare, later versions as ``user@``)."""
        owners = [u if self.legacy else f"{u}@" for u in self.tag_owners]
        return {
            "tagOwners": {tag: owners for tag in self.tags},
            "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
        }

    def config(self) -> dict[str, Any]:
        """Headscale config (JSON is valid YAML) with loopback-only, offline settings."""
        if self.legacy:
            return self._config_v022()
        w = self.workdir
        return {
            **self._listeners(),
            "noise": {"private_key_path": str(w / "noise_private.key")},
            "prefixes": {
                "v4": "100.64.0.0/10",
                "v6": "fd7a:115c:a1e0::/48",
                "allocation": "sequential",
            },
            # Headscale refuses to start with an empty DERP map, so run the embedded
            # DERP server on loopback (clients need TS_DEBUG_USE_DERP_HTTP=1) and
            # fetch no public DERP map.
            "derp": {
                "server": {
                    "enabled": True,
                    "region_id": 999,
                    "region_code": "headscale",
                    "region_name": "Headscale Embedded DERP",
                    "verify_clients": True,
                    "stun_listen_addr": f"127.0.0.1:{self.stun_port}",
                    "private_key_path": str(w / "derp_server_private.key"),
                    "automatically_add_embedded_derp_region": True,
                    "ipv4": "127.0.0.1",
                },
                "urls": [],
                "paths": [],
                "auto_update_enabled": False,
                "update_frequency": "24h",
            },
            "disable_check_updates": True,
            "node": {"expiry": 0, "ephemeral": {"inactivity_timeout": "30m"}},
            "database": {
                "type": "sqlite",
                "sqlite": {"path": str(w / "db.sqlite"), "write_ahead_log": True},
            },
            "log": {"level": self.log_level, "format": "text"},
            "policy": {"mode": "file", "path": str(self.policy_path)},
            "dns": {
                "magic_dns": True,
                "base_domain": "exo.test",
                "override_local_dns": False,
                "nameservers": {"global": [], "split": {}},
                "search_domains": [],
                "extra_records": [],
            },
            "unix_socket": str(w / "headscale.sock"),
            "unix_socket_permission": "0770",
            "logtail": {"enabled": False},
            "taildrop": {"enabled": False},
            "auto_update": {"enabled": False},
        }

    def _listeners(self) -> dict[str, Any]:
        """Where the server listens, on loopback only: the same keys in every dialect."""
        return {
            "server_url": self.url,
            "listen_addr": f"127.0.0.1:{self.port}",
            "metrics_listen_addr": f"127.0.0.1:{self.metrics_port}",
            "grpc_listen_addr": f"127.0.0.1:{self.grpc_port}",
            "grpc_allow_insecure": False,
        }

    def _config_v022(self) -> dict[str, Any]:
        """The same server in 0.22's config dialect (flat db and policy keys, ``ip_prefixes``,
        ``dns_config``; the embedded DERP region is added by the server itself)."""
        w = self.workdir
        return {
            **self._listeners(),
            "private_key_path": str(w / "private.key"),
            "noise": {"private_key_path": str(w / "noise_private.key")},
            "ip_prefixes": ["fd7a:115c:a1e0::/48", "100.64.0.0/10"],
            "derp": {
                "server": {
                    "enabled": True,
                    "region_id": 999,
                    "region_code": "headscale",
                    "region_name": "Headscale Embedded DERP",
                    "stun_listen_addr": f"127.0.0.1:{self.stun_port}",
                },
                "urls": [],
                "paths": [],
                "auto_update_enabled": False,
                "update_frequency": "24h",
            },
            "disable_check_updates": True,
            "ephemeral_node_inactivity_timeout": "30m",
            "node_update_check_interval": "1s",
            "db_type": "sqlite3",
            "db_path": str(w / "db.sqlite"),
            "log": {"level": self.log_level, "format": "text"},
            "acl_policy_path": str(self.policy_path),
            "dns_config": {
                "override_local_dns": False,
                "nameservers": [],
                "domains": [],
                "magic_dns": True,
                "base_domain": "exo.test",
            },
            "unix_socket": str(w / "headscale.sock"),
            "unix_socket_permission": "0770",
            "logtail": {"enabled": False},
            "randomize_client_port": False,
        }

    def write_config(self) -> None:
        """Write ``config.yaml`` and ``policy.hujson`` into the work dir."""
        self.policy_path.write_text(json.dumps(self.policy(), indent=2) + "\n")
        self.config_path.write_text(json.dumps(self.config(), indent=2) + "\n")

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> Self:
        """Build/get the binary, write config, start ``headscale serve`` and wait for health."""
        self.binary = ensure_go_binary(self.tool)
        self.write_config()
        env = dict(os.environ)
        env.setdefault("HOME", str(self.workdir))
        self._proc = _ManagedProcess(
            [str(self.binary), "serve", "--config", str(self.config_path)], self.log_path, env
        )
        try:
            wait_for(self._healthy, self.startup_timeout, what="headscale /health")
        except TimeoutError as exc:
            self.stop()
            raise ProcessStartupError(
                f"headscale did not become healthy: {exc}\n--- {self.log_path} ---\n"
                f"{log_tail(self.log_path)}"
            ) from exc
        return self

    def _healthy(self) -> bool:
        if self._proc is None or not self._proc.alive():
            raise ProcessStartupError(
                f"headscale exited early (rc={self._proc.proc.returncode if self._proc else None})"
                f"\n--- {self.log_path} ---\n{log_tail(self.log_path)}"
            )
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    # -- CLI ----------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 30.0) -> str:
        """Run ``headscale --config CFG -o json ARGS...`` (over the unix socket); return stdout."""
        if self.binary is None:
            raise RuntimeError("HeadscaleServer not started")
        argv = [str(self.binary), "--config", str(self.config_path), "--force", *args]
        if "-o" not in args and "--output" not in args:
            argv += ["-o", "json"]
        proc = _run(argv, timeout)
        if proc.returncode != 0:
            raise RuntimeError(
                f"`headscale {' '.join(args)}` failed (rc={proc.returncode}):\n"
                f"{proc.stderr.strip()}\n{proc.stdout.strip()}"
            )
        return proc.stdout

    def cli_json(self, *args: str, timeout: float = 30.0) -> Any:
        """Like :meth:`cli` but parse the JSON output."""
        return json.loads(self.cli(*args, timeout=timeout))

    def create_user(self, name: str) -> dict[str, Any]:
        """Create a user; returns the user JSON (``id``, ``name``, ...)."""
        user: dict[str, Any] = self.cli_json("users", "create", name)
        return user

    def list_users(self) -> list[dict[str, Any]]:
        """All users as JSON."""
        users: list[dict[str, Any]] | None = self.cli_json("users", "list")
        return users or []

    def user_id(self, name: str) -> int:
        """Numeric ID of user ``name`` (this Headscale version's CLI wants IDs)."""
        for user in self.list_users():
            if user.get("name") == name:
                return int(user["id"])
        raise KeyError(f"no headscale user named {name!r}")

    def create_preauth_key(
        self,
        user: str | None,
        reusable: bool = True,
        tags: Sequence[str] | None = None,
        ephemeral: bool = False,
        expiration: str = "1h",
    ) -> str:
        """Create a pre-auth key and return it.

        ``user`` may be None for a tags-only key (nodes become owned by the tags).
        """
        args = ["preauthkeys", "create", "--expiration", expiration]
        if user is not None:
            args += ["--user", user if self.legacy else str(self.user_id(user))]
        if reusable:
            args.append("--reusable")
        if ephemeral:
            args.append("--ephemeral")
        if tags:
            args += ["--tags", ",".join(tags)]
        data = self.cli_json(*args)
        return str(data["key"])

    def create_api_key(self, expiration: str = "1d") -> str:
        """Create an API key for the REST API (``Authorization: Bearer <key>``)."""
        out = self.cli("apikeys", "create", "--expiration", expiration, "-o", "json").strip()
        try:
            value = json.loads(out)
        except json.JSONDecodeError:
            return out
        return value if isinstance(value, str) else str(value.get("key", out))

    def list_nodes_cli(self) -> list[dict[str, Any]]:
        """``headscale nodes list -o json`` (protojson: ``ip_addresses``, ``online``, ...)."""
        nodes: list[dict[str, Any]] | None = self.cli_json("nodes", "list")
        return nodes or []


class TailscaleClient(_Service):
    """A real ``tailscaled`` (userspace networking) joined to a Headscale server.

    Usage::

        with TailscaleClient(hs.url, key, hostname="node-a") as ts:
            print(ts.ipv4, ts.ipv6)
    """

    def __init__(
        self,
        login_server: str,
        authkey: str,
        hostname: str,
        advertise_tags: Sequence[str] | None = None,
        workdir: Path | None = None,
        startup_timeout: float = 60.0,
        extra_up_args: Sequence[str] = (),
    ) -> None:
        self.login_server = login_server
        self.authkey = authkey
        self.hostname = hostname
        self.advertise_tags = list(advertise_tags or [])
        self.startup_timeout = startup_timeout
        self.extra_up_args = list(extra_up_args)
        self._own_workdir = workdir is None
        self.workdir = workdir if workdir is not None else _short_tmpdir("ts-")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket_path = self.workdir / "tailscaled.sock"
        self.state_dir = self.workdir / "state"
        self.log_path = self.workdir / "tailscaled.log"
        self.cli_log_path = self.workdir / "tailscale-cli.log"
        self.ipv4: str | None = None
        self.ipv6: str | None = None
        self.tailscaled: Path | None = None
        self.tailscale: Path | None = None
        self._proc: _ManagedProcess | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment for tailscaled/tailscale: no log upload, DERP over plain HTTP."""
        env = dict(os.environ)
        env.update(
            {
                "TS_NO_LOGS_NO_SUPPORT": "1",
                "TS_LOGS_DIR": str(self.workdir / "logs"),
                # Embedded Headscale DERP is served over http:// on loopback.
                "TS_DEBUG_USE_DERP_HTTP": "1",
                "HOME": str(self.workdir),
            }
        )
        return env

    @property
    def pid(self) -> int | None:
        """PID of tailscaled while running."""
        return self._proc.pid if self._proc else None

    def start(self) -> Self:
        """Start tailscaled, run ``tailscale up`` and wait until Running with IPs."""
        self.tailscaled = ensure_go_binary("tailscaled")
        self.tailscale = ensure_go_binary("tailscale")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self._proc = _ManagedProcess(
            [
                str(self.tailscaled),
                "--tun=userspace-networking",
                f"--socket={self.socket_path}",
                f"--statedir={self.state_dir}",
                "--port=0",
                "--no-logs-no-support",
            ],
            self.log_path,
            self.env,
        )
        try:
            wait_for(self._socket_ready, 20.0, what="tailscaled socket")
            up = [
                "up",
                f"--login-server={self.login_server}",
                f"--authkey={self.authkey}",
                f"--hostname={self.hostname}",
                "--accept-dns=false",
                "--accept-routes=false",
                f"--timeout={int(self.startup_timeout)}s",
            ]
            if self.advertise_tags:
                up.append(f"--advertise-tags={','.join(self.advertise_tags)}")
            up += self.extra_up_args
            proc = self.cli(*up, timeout=self.startup_timeout + 10, check=False)
            if proc.returncode != 0:
                raise ProcessStartupError(
                    f"`tailscale up` failed (rc={proc.returncode}): {proc.stderr.strip()}"
                )
            wait_for(self._running, self.startup_timeout, what="tailscale Running with IPs")
            self.ipv4 = self.cli("ip", "-4").stdout.strip()
            self.ipv6 = self.cli("ip", "-6").stdout.strip()
        except Exception as exc:
            self.stop()
            raise ProcessStartupError(
                f"tailscale client {self.hostname!r} failed to start: {exc}\n"
                f"--- {self.log_path} ---\n{log_tail(self.log_path)}\n"
                f"--- {self.cli_log_path} ---\n{log_tail(self.cli_log_path, 20)}"
            ) from exc
        return self

    def _socket_ready(self) -> bool:
        if self._proc is None or not self._proc.alive():
            raise ProcessStartupError("tailscaled exited early")
        return self.socket_path.exists()

    def _running(self) -> bool:
        status = self.status()
        return status.get("BackendState") == "Running" and bool(status.get("TailscaleIPs"))

    def cli(
        self, *args: str, timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``tailscale --socket SOCK ARGS...``; output is also appended to the CLI log."""
        if self.tailscale is None:
            raise RuntimeError("TailscaleClient not started")
        argv = [str(self.tailscale), f"--socket={self.socket_path}", *args]
        proc = _run(argv, timeout, self.env)
        with self.cli_log_path.open("a") as fh:
            safe = [a if not a.startswith("--authkey=") else "--authkey=***" for a in args]
            fh.write(f"$ tailscale {' '.join(safe)}  (rc={proc.returncode})\n")
            fh.write(proc.stdout + proc.stderr)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"`tailscale {args[0] if args else ''}` failed (rc={proc.returncode}): "
                f"{proc.stderr.strip()}"
            )
        return proc

    def status(self) -> dict[str, Any]:
        """``tailscale status --json``."""
        data: dict[str, Any] = json.loads(self.cli("status", "--json").stdout)
        return data

    def down(self, method: str = "stop") -> None:
        """Take the node offline as seen by Headscale.

        ``method``: ``"stop"`` (default; SIGTERM tailscaled, then SIGKILL), ``"kill"``
        (SIGKILL), ``"down"`` (``tailscale down``; tailscaled keeps running and can
        ``up`` again) or ``"logout"`` (``tailscale logout``; also expires the node key).

        All methods drop the map-poll session immediately, but Headscale 0.29 waits a
        hard-coded 10s reconnect grace (``hscontrol/poll.go``) before reporting
        ``online: false``: expect ~10.5s with any method.
        """
        if method == "down":
            self.cli("down")
        elif method == "logout":
            self.cli("logout")
        elif method == "kill":
            self.stop(sig=signal.SIGKILL)
        elif method == "stop":
            self.stop()
        else:
            raise ValueError(f"unknown down method {method!r}")


def start_clients(
    stack: contextlib.ExitStack, server_url: str, keys: Sequence[tuple[str, str]]
) -> list[TailscaleClient]:
    """One tailscaled client per ``(auth key, hostname)``, started in parallel; each is ended by
    ``stack`` (registered before its start, so it is ended even if another one fails)."""
    from concurrent.futures import ThreadPoolExecutor

    clients = [TailscaleClient(server_url, key, hostname=name) for key, name in keys]
    for client in clients:
        stack.callback(client.cleanup)
    with ThreadPoolExecutor(len(clients)) as pool:
        for future in [pool.submit(c.start) for c in clients]:
            future.result()
    return clients
