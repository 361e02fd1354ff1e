"""What a failure the user can cause means: one line naming the thing at fault, and a fix.

The CLI prints these instead of a traceback (``-vv`` shows the traceback as well). Only failures
a user can cause and fix are explained here; anything else is a bug and says so.
"""

from __future__ import annotations

import errno
from pathlib import Path

from .config import NodeConfig
from .identity import IdentityError

STATE_DIR_OPTION = "--state-dir, EXO_DISCOVERY_STATE_DIR or [node] state_dir"
PORT_OPTION = "--port, EXO_DISCOVERY_PORT or [node] port"
LISTEN_HOST_OPTION = "--listen-host, EXO_DISCOVERY_LISTEN_HOST or [node] listen_host"


class UserError(Exception):
    """A failure with its cause (the thing at fault) and how to fix it."""

    def __init__(self, message: str, fix: str = "", exit_code: int = 1) -> None:
        super().__init__(message)
        self.message, self.fix, self.exit_code = message, fix, exit_code

    def __str__(self) -> str:
        return f"{self.message}; {self.fix}" if self.fix else self.message


def state_dir_error(state_dir: Path, exc: OSError) -> UserError:
    """The state dir (or the key in it) cannot be created, read or written."""
    where = Path(exc.filename) if exc.filename else state_dir
    if isinstance(exc, NotADirectoryError):
        problem = "a part of the path is a file, not a directory"
    elif exc.errno == errno.EEXIST:
        problem = "it is a file, not a directory" if where == state_dir else f"{where} is a file"
    else:
        problem = f"cannot create or write it ({exc.strerror or exc})"
    return UserError(
        f"state dir {state_dir}: {problem}",
        f"choose a directory this user can write with {STATE_DIR_OPTION}",
    )


def key_file_error(exc: IdentityError) -> UserError:
    """The identity key exists but is not a key (empty, truncated, another file), or cannot be
    written; the identity module says which and how to fix it."""
    return UserError(f"key file {exc.path} {exc.problem}", exc.fix)


def listen_error(config: NodeConfig, exc: OSError) -> UserError | None:
    """The node cannot listen where it was told to; None for an error that is not about that."""
    host = config.listen_host or "every interface"
    if exc.errno == errno.EADDRINUSE:
        return UserError(
            f"port {config.port} is already in use on {host} (another exo-discovery running?)",
            f"stop the other program, or choose another port with {PORT_OPTION} (0: any free port)",
        )
    if exc.errno == errno.EACCES:
        return UserError(
            f"not allowed to listen on port {config.port} (ports below 1024 need privileges)",
            f"choose a port of 1024 or above with {PORT_OPTION}",
        )
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        return UserError(
            f"cannot listen on {config.listen_host!r}: it is not an address of this host",
            f"use one of this host's addresses, or leave {LISTEN_HOST_OPTION} empty for all",
        )
    return None
