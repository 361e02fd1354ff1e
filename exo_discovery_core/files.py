"""The node's files in its state dir, and writing the private ones so that a crash or a full disk
never leaves half a file.

The data goes to a temporary file in the same directory (mode 0600), is fsynced, and is then
renamed over the target (or linked, when an existing file must not be replaced), and the
directory is fsynced: a reader sees the old file or the new one, never a part of either.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

SOCKET_NAME = "status.sock"


def socket_path(state_dir: Path) -> Path:
    """The status socket of the node running with ``state_dir`` (here, not in :mod:`.status`:
    ``exo-discovery plugins`` checks for it without importing the status models)."""
    return state_dir / SOCKET_NAME


def write_private(path: Path, data: bytes, *, replace: bool = True) -> bool:
    """Write ``data`` to ``path`` atomically, mode 0600.

    With ``replace=False`` an existing file is kept and False returned (another process was
    first); otherwise True.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)  # fails if the file exists: create-if-absent, atomically
            except FileExistsError:
                return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    _fsync_dir(path.parent)
    return True


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
