"""DNS SRV lookups (RFC 2782) for bootstrap entries such as ``_exo-discovery._tcp.example.com``.

Each record names a host and a port; every record is a peer (we want every node, not one
server), ordered by priority, then weight, so the preferred ones are dialed first. The host
names are then resolved like any other name (A/AAAA, the system resolver), so a record's
target may also be a name in ``/etc/hosts``. The system's DNS servers come from
``/etc/resolv.conf`` (dnspython); a lookup is bounded in time by the caller and in size here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

MAX_SRV_RECORDS = 256
"""More records than this in one answer are not looked at (an answer is hostile until proven)."""

SrvRecord = tuple[str, int]
"""``(target host, port)`` of one SRV record."""
SrvResolver = Callable[[str], Awaitable[list[SrvRecord]]]
"""``name -> records``; raises ``OSError`` with a short reason when the name has none."""


async def system_srv_resolver(name: str) -> list[SrvRecord]:
    """The SRV records of ``name`` from the system's DNS servers, best first."""
    # dnspython costs tens of milliseconds to import: only a node with an SRV entry pays it
    import dns.asyncresolver
    import dns.exception
    import dns.rdatatype
    import dns.resolver
    from dns.rdtypes.IN.SRV import SRV

    try:
        answer = await dns.asyncresolver.resolve(name, dns.rdatatype.SRV, search=False)
    except dns.resolver.NXDOMAIN:
        raise OSError(0, "no such name") from None
    except dns.resolver.NoAnswer:
        raise OSError(0, "no SRV records") from None
    except dns.resolver.NoNameservers:
        raise OSError(0, "no DNS server answered") from None
    except dns.exception.Timeout:
        raise OSError(0, "no answer from the DNS servers in time") from None
    except dns.exception.DNSException as exc:
        raise OSError(0, f"DNS lookup failed ({type(exc).__name__})") from None
    records = [r for r in answer if isinstance(r, SRV)][:MAX_SRV_RECORDS]
    return best_first(
        [(r.priority, r.weight, r.target.to_text(omit_final_dot=True), r.port) for r in records]
    )


def best_first(records: list[tuple[int, int, str, int]]) -> list[SrvRecord]:
    """``(priority, weight, host, port)`` as ``(host, port)``: lowest priority first, heavier
    weight first within one; a target of ``.`` (RFC 2782: "no service here") is dropped."""
    ordered = sorted(records, key=lambda r: (r[0], -r[1], r[2], r[3]))
    seen: dict[SrvRecord, None] = {}
    for _priority, _weight, host, port in ordered:
        if host not in ("", ".") and 1 <= port <= 65535:
            seen.setdefault((host.lower(), port), None)
    return list(seen)
