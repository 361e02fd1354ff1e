"""Build pinned Go tools (Headscale, Tailscale, serf) from source for tests and benchmarks.

Binaries are installed with ``go install module@version`` into a per-version
cache directory so that they are built once and reused across test runs. A tool
marked ``throwaway_module`` (Headscale 0.22.3, which the module proxy's deprecation
lookup refuses to ``go install``) is built from a scratch module that requires it,
with ``go build -mod=mod``.

Run ``python -m tests.support.gotools`` from the repo root to pre-build all of
them (CI does this before pytest so the build time is visible).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: Headscale v0.29.3 is the newest tag on the module proxy; it needs go >= 1.26.5.
HEADSCALE_VERSION = "v0.29.3"
#: The oldest Headscale the plugin supports (the ``machine`` API); tailscaled v1.98 joins it.
HEADSCALE_OLDEST_VERSION = "v0.22.3"
#: Headscale v0.29.3 supports Tailscale clients v1.80 .. v1.98 (capver 113..138);
#: v1.98.10 is the newest patch release of the newest supported minor.
TAILSCALE_VERSION = "v1.98.10"
#: serf, the reference the scale benchmarks measure our nodes against (gossip over memberlist).
SERF_VERSION = "v0.10.4"

BUILD_TIMEOUT_S = 1800.0
LOCK_TIMEOUT_S = 1900.0


@dataclass(frozen=True)
class GoTool:
    """A pinned ``go install`` target."""

    name: str
    module: str
    package: str
    version: str
    throwaway_module: bool = False

    @property
    def spec(self) -> str:
        """``package@version`` argument for ``go install``."""
        return f"{self.package}@{self.version}"


TOOLS: dict[str, GoTool] = {
    "headscale": GoTool(
        "headscale",
        "github.com/juanfont/headscale",
        "github.com/juanfont/headscale/cmd/headscale",
        HEADSCALE_VERSION,
    ),
    "headscale-0.22": GoTool(
        "headscale",
        "github.com/juanfont/headscale",
        "github.com/juanfont/headscale/cmd/headscale",
        HEADSCALE_OLDEST_VERSION,
        throwaway_module=True,
    ),
    "tailscaled": GoTool(
        "tailscaled", "tailscale.com", "tailscale.com/cmd/tailscaled", TAILSCALE_VERSION
    ),
    "tailscale": GoTool(
        "tailscale", "tailscale.com", "tailscale.com/cmd/tailscale", TAILSCALE_VERSION
    ),
    "serf": GoTool(
        "serf", "github.com/hashicorp/serf", "github.com/hashicorp/serf/cmd/serf", SERF_VERSION
    ),
}


class GoBuildError(RuntimeError):
    """Raised when a Go tool cannot be built."""


def cache_root() -> Path:
    """Root of the binary cache (``$EXO_GO_BIN_CACHE`` or ``~/.cache/...``)."""
    env = os.environ.get("EXO_GO_BIN_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "exo-discovery" / "go-bin"


def binary_path(name: str) -> Path:
    """Expected path of the cached binary for tool ``name`` (may not exist yet)."""
    tool = _tool(name)
    return cache_root() / f"{tool.name}-{tool.version}" / tool.name


def _tool(name: str) -> GoTool:
    try:
        return TOOLS[name]
    except KeyError:
        raise KeyError(f"unknown Go tool {name!r}; known: {sorted(TOOLS)}") from None


@contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[None]:
    """Exclusive ``flock`` on ``path`` with a timeout (polling)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"timed out waiting for lock {path}") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _go_executable() -> str:
    go = shutil.which("go")
    if go is None:
        for cand in ("/usr/local/go/bin/go", str(Path.home() / "go" / "bin" / "go")):
            if Path(cand).is_file():
                return cand
        raise GoBuildError("`go` not found on PATH; Go >= 1.26.5 is required")
    return go


def _run_go(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a go command with the build timeout, capturing output."""
    try:
        return subprocess.run(
            cmd,
            env=env,
            cwd=str(cwd),
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise GoBuildError(f"`{' '.join(cmd)}` timed out after {BUILD_TIMEOUT_S:.0f}s") from exc


def _is_proxy_list_error(stderr: str) -> bool:
    return "loading deprecation" in stderr or "/@v/list" in stderr


def _build_in_throwaway_module(
    tool: GoTool, env: dict[str, str], out_dir: Path
) -> subprocess.CompletedProcess[str]:
    """A scratch module requiring the pinned one, built with ``-mod=mod`` (no ``@v/list``)."""
    go = _go_executable()
    work = out_dir / "module"
    work.mkdir()
    (work / "go.mod").write_text(
        f"module exo.test/build\n\ngo 1.20\n\nrequire {tool.module} {tool.version}\n"
    )
    (work / "tools.go").write_text(
        f'//go:build tools\n\npackage tools\n\nimport _ "{tool.package}"\n'
    )
    cmd = [
        go,
        "build",
        "-mod=mod",
        "-trimpath",
        "-tags",
        "tools",
        "-o",
        str(out_dir / tool.name),
        tool.package,
    ]
    return _run_go(cmd, env, work)


def _build_from_module_source(
    tool: GoTool, env: dict[str, str], out_dir: Path
) -> subprocess.CompletedProcess[str]:
    """``go mod download`` the pinned module and ``go build`` the command inside it."""
    go = _go_executable()
    dl = _run_go([go, "mod", "download", "-json", f"{tool.module}@{tool.version}"], env, out_dir)
    if dl.returncode != 0:
        return dl
    src = Path(json.loads(dl.stdout)["Dir"])
    rel = "./" + tool.package.removeprefix(tool.module).lstrip("/")
    cmd = [go, "build", "-trimpath", "-o", str(out_dir / tool.name), rel]
    return _run_go(cmd, env, src)


def ensure_go_binary(name: str) -> Path:
    """Return the path to tool ``name``, building it with ``go install`` if needed.

    Safe to call concurrently from several processes (uses a file lock).
    """
    tool = _tool(name)
    target = binary_path(name)
    if target.is_file() and os.access(target, os.X_OK):
        return target
    bindir = target.parent
    with _file_lock(bindir.with_name(bindir.name + ".lock"), LOCK_TIMEOUT_S):
        if target.is_file() and os.access(target, os.X_OK):
            return target
        bindir.mkdir(parents=True, exist_ok=True)
        # Build into a scratch GOBIN, then rename: a crash never leaves a half binary.
        tmp_bin = bindir / ".partial"
        shutil.rmtree(tmp_bin, ignore_errors=True)
        tmp_bin.mkdir()
        env = dict(os.environ)
        env.update({"GOBIN": str(tmp_bin), "CGO_ENABLED": "0"})
        env.pop("GOOS", None)
        env.pop("GOARCH", None)
        if tool.throwaway_module:
            proc = _build_in_throwaway_module(tool, env, tmp_bin)
        else:
            proc = _run_go([_go_executable(), "install", tool.spec], env, bindir)
        if proc.returncode != 0 and _is_proxy_list_error(proc.stderr):
            # Some proxies refuse `@v/list` (which `go install pkg@version` reads to
            # check deprecation); build from the downloaded module source instead.
            proc = _build_from_module_source(tool, env, tmp_bin)
        built = tmp_bin / tool.name
        if proc.returncode != 0 or not built.is_file():
            tail = "\n".join((proc.stderr or proc.stdout or "").splitlines()[-40:])
            raise GoBuildError(
                f"building {tool.spec} failed (exit {proc.returncode}); "
                f"`{' '.join(proc.args)}` stderr tail:\n{tail}"
            )
        built.replace(target)
        shutil.rmtree(tmp_bin, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    """Build all (or the named) tools, printing time taken per binary."""
    names = (argv if argv is not None else sys.argv[1:]) or list(TOOLS)
    total = time.monotonic()
    for name in names:
        tool = _tool(name)
        start = time.monotonic()
        try:
            path = ensure_go_binary(name)
        except GoBuildError as exc:
            print(f"FAILED {tool.spec}: {exc}", file=sys.stderr, flush=True)
            return 1
        print(f"{tool.spec:<60} {time.monotonic() - start:7.1f}s  {path}", flush=True)
    print(f"total {time.monotonic() - total:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
