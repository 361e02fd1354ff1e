"""Which of this host's interfaces the node uses: to advertise its addresses, and for mDNS.

``[node] interfaces`` (globs, default every interface) minus ``[node] exclude_interfaces``
(globs, default the container and virtual bridges ``docker*``, ``br-*``, ``veth*``, ``virbr*``:
their addresses are unreachable from other hosts and only mislead peers). Tailscale's
``tailscale0`` / ``utun*`` are not excluded. Loopback is always kept (nodes on one host).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_EXCLUDE = ("docker*", "br-*", "veth*", "virbr*")


@dataclass(frozen=True)
class InterfaceFilter:
    """``allows(name)``: included by a glob of ``include`` and by none of ``exclude``."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE

    def allows(self, *names: str) -> bool:
        """True if any of ``names`` (an interface's name and its friendly name) is selected."""
        return any(
            name in ("lo", "lo0")
            or (_matches(name, self.include) and not _matches(name, self.exclude))
            for name in names
        )

    def unmatched(self, present: Iterable[str]) -> list[str]:
        """The ``include`` globs (other than ``*``) that match no interface here (now)."""
        names = list(present)
        return [
            g
            for g in self.include
            if g != "*" and not any(fnmatch.fnmatchcase(n, g) for n in names)
        ]


def _matches(name: str, globs: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, glob) for glob in globs)
