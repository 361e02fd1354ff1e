"""Parsing one bootstrap peer entry: a multiaddr, ``host:port``, ``[v6]:port`` or an SRV name.

One parser for every place an entry comes from (config, env, flag, the peers file, ``doctor``),
so a bad entry gets the same message everywhere: it quotes the entry and says what is wrong.
Our own checks run first because they can say *which* part is wrong; ``multiaddr`` then checks
the canonical form (DNS name syntax, anything we missed), so we never accept what libp2p refuses.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Literal

from exo_discovery_core import PeerId

Kind = Literal["ip4", "ip6", "dns", "dns4", "dns6", "srv"]
HOST_PROTOCOLS: tuple[Kind, ...] = ("ip4", "ip6", "dns", "dns4", "dns6")
PEER_PROTOCOLS = ("p2p", "ipfs")  # "ipfs" is the old name of "p2p"

FORMATS = (
    "/ip4/ADDR/tcp/PORT, /ip6/ADDR/tcp/PORT, /dns/NAME/tcp/PORT (or /dns4/, /dns6/), "
    "each optionally ending in /p2p/PEER_ID; or HOST:PORT, or [IPv6]:PORT; or a DNS SRV name "
    "(_service._tcp.example.com, no port: host and port come from its records)"
)
GENERIC_FIX = f"write each peer as one of: {FORMATS}"

_SRV_PREFIX = re.compile(r"^_[a-z0-9][a-z0-9-]{0,62}\._tcp\.", re.IGNORECASE)
_BRACKETED = re.compile(r"^\[(?P<host>[^\]]*)\](?::(?P<port>.*))?$")
_LOOKS_IPV4 = re.compile(r"^[0-9.]+$")


class BadEntry(ValueError):
    """An entry that is not a bootstrap peer; the message quotes it and says what is wrong."""

    def __init__(self, entry: str, reason: str, *, fix: str = GENERIC_FIX) -> None:
        super().__init__(f"bad bootstrap peer {entry!r}: {reason}")
        self.entry = entry
        self.reason = reason
        self.fix = fix


@dataclass(frozen=True)
class BootstrapEntry:
    """One parsed peer: where to find it (an IP or a name to resolve) and maybe who it is."""

    text: str
    kind: Kind
    host: str
    port: int  # 0 for an SRV name: each record has its own
    peer_id: PeerId | None = None
    labels: tuple[tuple[str, str], ...] = ()  # a file_sd group's labels: metadata hints

    @property
    def is_name(self) -> bool:
        """A DNS name (A/AAAA), resolved again every round (its records may change)."""
        return self.kind.startswith("dns")

    @property
    def is_srv(self) -> bool:
        """An SRV name: its records, looked up again every round, name the hosts and ports."""
        return self.kind == "srv"

    @property
    def family(self) -> socket.AddressFamily:
        """Which records to ask for: /dns4 only A, /dns6 only AAAA, /dns both."""
        return {"dns4": socket.AF_INET, "dns6": socket.AF_INET6}.get(self.kind, socket.AF_UNSPEC)

    @property
    def multiaddr(self) -> str:
        """The canonical multiaddr form (what ``doctor`` and the logs show); an SRV name has
        none, so it is shown as the name."""
        if self.is_srv:
            return self.host
        tail = f"/p2p/{self.peer_id}" if self.peer_id else ""
        return f"/{self.kind}/{self.host}/tcp/{self.port}{tail}"


def parse_entry(text: str) -> BootstrapEntry:
    """Parse one entry; raise :class:`BadEntry` naming the part that is wrong."""
    entry = text.strip() if isinstance(text, str) else text
    if not isinstance(entry, str):
        raise BadEntry(repr(text), f"expected a string, got {type(text).__name__}")
    if not entry:
        raise BadEntry(entry, "empty entry")
    if any(ch.isspace() for ch in entry):
        raise BadEntry(entry, "contains whitespace (one peer per entry; separate with commas)")
    _check_not_url(entry)
    if _SRV_PREFIX.match(entry):
        return _parse_srv(entry)
    if entry.startswith("/"):
        parsed = _parse_multiaddr(entry)
        _cross_check(parsed)
        return parsed
    if entry.startswith("["):
        return _parse_bracketed(entry)
    return _parse_host_port(entry)


def _check_not_url(entry: str) -> None:
    """``http://host:port`` is what people copy from a browser: say to drop the scheme."""
    scheme, sep, rest = entry.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return
    address = rest.split("/", 1)[0].rpartition("@")[2] or "HOST:PORT"
    raise BadEntry(entry, f"a URL, not a peer address: drop the {scheme}://, write {address}")


# -- multiaddr ------------------------------------------------------------------------------


def _parse_multiaddr(entry: str) -> BootstrapEntry:
    parts = entry[1:].removesuffix("/").split("/")
    if any(not part for part in parts):
        raise BadEntry(entry, "has an empty component ('//')")
    proto, rest = parts[0], parts[1:]
    if proto not in HOST_PROTOCOLS:
        expected = "must start with /ip4/, /ip6/, /dns/, /dns4/ or /dns6/"
        raise BadEntry(entry, _unsupported(proto, expected))
    if not rest:
        what = "an address" if proto.startswith("ip") else "a name"
        raise BadEntry(entry, f"/{proto}/ needs {what}")
    host, rest = rest[0], rest[1:]
    kind: Kind = proto  # narrowed by the HOST_PROTOCOLS check above
    host = _check_host(entry, kind, host)
    if not rest:
        raise BadEntry(entry, "missing port: add /tcp/PORT after the address")
    if rest[0] != "tcp":
        raise BadEntry(entry, _unsupported(rest[0], "only /tcp/PORT may follow the address"))
    if len(rest) < 2:
        raise BadEntry(entry, "missing port: /tcp/ needs a port number")
    port = _check_port(entry, rest[1])
    rest = rest[2:]
    peer_id: PeerId | None = None
    if rest:
        if rest[0] not in PEER_PROTOCOLS:
            raise BadEntry(entry, _unsupported(rest[0], "only /p2p/PEER_ID may follow /tcp/PORT"))
        if len(rest) < 2:
            raise BadEntry(entry, f"/{rest[0]}/ needs a peer id")
        peer_id = _check_peer_id(entry, rest[1])
        if len(rest) > 2:
            raise BadEntry(entry, f"unexpected /{'/'.join(rest[2:])} after the peer id")
    return BootstrapEntry(entry, kind, host, port, peer_id)


def _unsupported(proto: str, expected: str) -> str:
    """Tell a real multiaddr protocol we do not dial (udp, quic) from a typo or garbage."""
    from multiaddr.exceptions import Error as MultiaddrError
    from multiaddr.protocols import protocol_with_name

    try:
        protocol_with_name(proto)
    except MultiaddrError:  # ProtocolNotFoundError: not a multiaddr protocol at all
        return f"unknown protocol /{proto}/ ({expected})"
    return f"protocol /{proto}/ is not supported here ({expected})"


# -- SRV names ----------------------------------------------------------------------------


def _parse_srv(entry: str) -> BootstrapEntry:
    """``_service._tcp.domain``: the domain must be a DNS name; a port is not allowed."""
    if ":" in entry:
        raise BadEntry(entry, "an SRV name takes no port (the port comes from each SRV record)")
    service, _tcp, domain = entry.split(".", 2)
    name = _check_host(entry, "dns", domain)
    return BootstrapEntry(entry, "srv", f"{service.lower()}._tcp.{name}", 0)


# -- host:port and [v6]:port ----------------------------------------------------------------


def _parse_bracketed(entry: str) -> BootstrapEntry:
    match = _BRACKETED.match(entry)
    if match is None:
        raise BadEntry(entry, "not [IPv6]:PORT (missing ']' or text after it is not :PORT)")
    host = _check_host(entry, "ip6", match["host"])
    if not match["port"]:
        raise BadEntry(entry, "missing port (expected [IPv6]:PORT)")
    return BootstrapEntry(entry, "ip6", host, _check_port(entry, match["port"]))


def _parse_host_port(entry: str) -> BootstrapEntry:
    if entry.count(":") > 1:
        if _is_ip(entry, 6):
            raise BadEntry(entry, f"missing port (IPv6 needs brackets: [{entry}]:PORT)")
        raise BadEntry(entry, "an IPv6 address needs brackets: [IPv6]:PORT")
    host, sep, port_text = entry.partition(":")
    if not host:
        raise BadEntry(entry, "missing host before ':PORT'")
    kind: Kind = "ip4" if _LOOKS_IPV4.match(host) else "dns"
    host = _check_host(entry, kind, host)
    if not sep or not port_text:
        raise BadEntry(entry, f"missing port (expected {host}:PORT)")
    return BootstrapEntry(entry, kind, host, _check_port(entry, port_text))


# -- parts ----------------------------------------------------------------------------------


def _check_host(entry: str, kind: Kind, host: str) -> str:
    if kind in ("ip4", "ip6"):
        version = 4 if kind == "ip4" else 6
        if "%" in host:
            raise BadEntry(entry, f"{host!r}: IPv6 zones (%iface) are not supported")
        if not _is_ip(host, version):
            raise BadEntry(entry, f"{host!r} is not an IPv{version} address")
        return str(ipaddress.ip_address(host))
    if _is_ip(host, 4) or _is_ip(host, 6):
        raise BadEntry(entry, f"{host!r} is an IP address, not a DNS name (use /ip4/ or /ip6/)")
    name = host.lower().rstrip(".")
    if (
        not name
        or len(name) > 253
        or not all(
            0 < len(label) <= 63
            and re.fullmatch(r"[a-z0-9-]+", label)
            and not label.startswith("-")
            and not label.endswith("-")
            for label in name.split(".")
        )
    ):
        raise BadEntry(entry, f"{host!r} is not a valid DNS name")
    return name


def _is_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def _check_port(entry: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()):  # "²" and "١٢" are digits to Python
        raise BadEntry(entry, f"port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise BadEntry(entry, f"port {port} is out of range (1-65535)")
    return port


def _check_peer_id(entry: str, text: str) -> PeerId:
    try:
        return PeerId.parse(text)
    except ValueError as exc:
        raise BadEntry(
            entry,
            f"bad peer id: {exc}",
            fix="copy the id the peer prints at start-up (12D3KooW..., 52 chars), "
            "or leave /p2p/... off",
        ) from None


def _cross_check(entry: BootstrapEntry) -> None:
    """Let ``multiaddr`` confirm the canonical form of an entry written as a multiaddr, so libp2p
    tools would accept it too. A ``host:port`` entry needs no second opinion: its multiaddr is
    built from an IP ``ipaddress`` wrote, an LDH name and a checked port.

    Imported here: a node given only ``host:port`` entries, and loading the plugin, never pay for
    multiaddr and netaddr (about 1 MiB resident)."""
    from multiaddr import Multiaddr
    from multiaddr.exceptions import Error as MultiaddrError

    try:
        Multiaddr(entry.multiaddr)
    except (MultiaddrError, ValueError) as exc:
        reason = str(exc).split(": ", 1)[-1].split(" (string:", 1)[0]
        raise BadEntry(entry.text, f"not a valid multiaddr: {reason}") from None
