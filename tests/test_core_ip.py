"""IP literals as the node reads them: brackets, zones and IPv4-mapped addresses, and parsed once
per text (``Address.ip`` and the dialer ask for the same few addresses again and again)."""

from __future__ import annotations

import ipaddress

from exo_discovery_core.ip import parse_ip, unbracketed


def test_brackets_zones_and_mapped_addresses_are_read_as_the_ip_they_name() -> None:
    assert unbracketed(" [::1] ") == "::1"
    assert parse_ip("[::1]") == ipaddress.ip_address("::1")
    assert parse_ip("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    assert parse_ip("::ffff:10.0.0.1") == ipaddress.ip_address("10.0.0.1")
    assert parse_ip("node.example") is None


def test_a_text_is_parsed_once_and_then_remembered() -> None:
    parse_ip.cache_clear()
    first = parse_ip("192.0.2.7")
    assert parse_ip("192.0.2.7") is first
    assert parse_ip.cache_info().hits == 1 and parse_ip.cache_info().misses == 1
