"""The testbed's link is what it claims: the hosts' traffic crosses it at the profile's rate
and delay (a timed TCP transfer both ways and TCP connect times between their namespaces),
and the client's way in (the management veths) does not."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.integration


def test_the_link_holds_its_profile(testbed: Any) -> None:
    profile = testbed.profile
    m = testbed.measure_link(mib=32)
    if not profile.shaped:
        pytest.skip(f"{profile.describe()}: nothing to hold ({m})")
    for way in ("up_mib_s", "down_mib_s"):
        # Over the rate would mean some bytes escape the bucket; far under, a starved link.
        assert abs(m[way] - profile.rate_mib_s) <= 0.10 * profile.rate_mib_s, m
    assert abs(m["rtt_ms"] - profile.rtt_ms) <= max(0.3, 0.1 * profile.rtt_ms), m


def test_the_hosts_name_each_other_across_the_link(testbed: Any, lv: Any) -> None:
    """Each host's URI names its address on the link, and its libvirtd answers there; the
    route from the client goes through the management veth, not the link."""
    import subprocess

    for h in testbed.hosts:
        assert h.address in h.uri
        route = subprocess.run(
            ["ip", "route", "get", h.address], capture_output=True, text=True, check=True
        ).stdout
        assert h.mgmt_veth in route, route
        conn = lv.open(h.uri)
        try:
            assert conn.getHostname() == h.hostname
        finally:
            conn.close()
