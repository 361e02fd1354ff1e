"""[node] interfaces / exclude_interfaces: globs, container bridges out by default, Tailscale in."""

from __future__ import annotations

from exo_discovery_core.interfacefilter import DEFAULT_EXCLUDE, InterfaceFilter


def test_default_leaves_out_container_and_virtual_bridges_only() -> None:
    f = InterfaceFilter()
    kept = [
        n
        for n in (
            "lo",
            "eth0",
            "en0",
            "wlan0",
            "tailscale0",
            "utun3",
            "bridge0",
            "docker0",
            "br-5f2a",
            "veth12ab",
            "virbr0",
        )
        if f.allows(n)
    ]
    assert kept == ["lo", "eth0", "en0", "wlan0", "tailscale0", "utun3", "bridge0"]
    assert DEFAULT_EXCLUDE == ("docker*", "br-*", "veth*", "virbr*")


def test_include_and_exclude_globs_and_friendly_names() -> None:
    f = InterfaceFilter(include=("en*", "tailscale*"), exclude=("en5",))
    assert [n for n in ("en0", "en5", "eth0", "tailscale0", "lo") if f.allows(n)] == [
        "en0",
        "tailscale0",
        "lo",
    ]  # loopback always: nodes on one host
    assert f.allows("{GUID-1234}", "en1")  # Windows: the adapter's friendly name matches
    assert f.unmatched(["en0", "eth0"]) == ["tailscale*"]
    assert InterfaceFilter(exclude=()).allows("docker0")
