"""TLS to real libvirt hosts: verified by default, insecure only when asked, with a warning.

The testbed's hosts also listen for TLS (libvirt's own, GnuTLS) with certificates from a
throw-away CA; ``testbed.tls_dir`` trusts it, ``testbed.untrusting_tls_dir`` trusts another.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

import vmmove
from vmmove.errors import ConnectionFailed, InsecureConnectionWarning, InvalidInput
from vmmove.model import MigrationMode
from vmmove.store import MemoryStore

pytestmark = pytest.mark.integration

HOST_A, HOST_B = "vmmove-host-a", "vmmove-host-b"


def tls_cluster(testbed: Any, query: str = "") -> str:
    authorities = ",".join(uri.split("/")[2] for uri in testbed.tls_uris)
    return f"qemu+tls://{authorities}/system{query}"


def test_a_trusted_host_connects_and_migrates_over_tls(guests: Any, testbed: Any) -> None:
    """Client to daemons over TLS, and daemon to daemon (peer-to-peer) over TLS too: the
    source daemon gets the peer's URI without the client's pkipath and checks it with its own
    PKI."""
    guests.create("vt-tls", wait_beats=2, memory_mib=256, wss_mib=16, dirty_mib_s=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InsecureConnectionWarning)
        conn = vmmove.connect(tls_cluster(testbed), store=MemoryStore(), tls_dir=testbed.tls_dir)
    with conn:
        assert sorted(h.id for h in conn.hosts()) == [HOST_A, HOST_B]
        record = conn.migrate("vt-tls", to=HOST_B, mode=MigrationMode.LIVE).wait(180)
        assert record.vm_host == HOST_B
    assert guests.where("vt-tls") == [(HOST_B, True)]
    guests.assert_alive_and_intact("vt-tls")


def test_a_host_whose_certificate_is_not_trusted_is_refused(testbed: Any) -> None:
    with pytest.raises(ConnectionFailed) as info:
        vmmove.connect(
            tls_cluster(testbed), store=MemoryStore(), tls_dir=testbed.untrusting_tls_dir
        )
    assert not isinstance(info.value, vmmove.AuthenticationFailed)
    assert "certificate" in str(info.value)
    assert "tls_dir" in str(info.value)


def test_turning_verification_off_needs_insecure_and_warns(testbed: Any) -> None:
    uri = tls_cluster(testbed, "?no_verify=1")
    with pytest.raises(InvalidInput, match="insecure=True"):
        vmmove.connect(uri, store=MemoryStore(), tls_dir=testbed.untrusting_tls_dir)
    with pytest.warns(InsecureConnectionWarning, match="verification is OFF"):
        conn = vmmove.connect(
            tls_cluster(testbed),
            store=MemoryStore(),
            tls_dir=testbed.untrusting_tls_dir,
            insecure=True,
        )
    with conn:
        assert len(conn.hosts()) == 2
