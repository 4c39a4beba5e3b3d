"""Over the wire: pywinrm against the fake WinRM endpoint with the emulation behind it.
NTLM with message encryption, basic refusal rules, refused credentials, and a hung command
that ends in a typed error within its deadline."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

import vmmove
from vmmove_hyperv.testing import Fabric, FakeHyperV, Timing


@pytest.fixture
def fake() -> Iterator[FakeHyperV]:
    fabric = Fabric(timing=Timing(starting=0.05)).sample()
    for vm in fabric:
        vm.migrate_seconds = 0.3
    with FakeHyperV(fabric, shape="7", operation_timeout_cap=1.0) as fake:
        yield fake


def _connect(fake: FakeHyperV, **options: Any) -> vmmove.Connection:
    options.setdefault("password", vmmove.Secret(fake.password))
    options.setdefault("poll_interval", 0.2)
    return vmmove.connect(fake.uri, **options)


def test_ntlm_with_encryption_migrates_over_the_wire(fake: FakeHyperV) -> None:
    with _connect(fake) as conn:
        assert sorted(h.name for h in conn.hosts()) == ["hv1", "hv2", "hv3"]
        record = conn.migrate("web-1", to="hv2").wait(60)
        assert (record.phase, record.vm_host) == (vmmove.Phase.COMPLETED, "hv2")
    assert fake.fabric.vm("web-1").host == "hv2"


def test_refused_credentials_are_authentication_failed(fake: FakeHyperV) -> None:
    with pytest.raises(vmmove.AuthenticationFailed) as info:
        _connect(fake, password=vmmove.Secret("not-the-password"))
    assert "not-the-password" not in str(info.value)
    assert fake.password not in str(info.value)


def test_basic_over_http_only_when_insecure_and_warned(fake: FakeHyperV) -> None:
    with pytest.raises(vmmove.InvalidInput, match="insecure=true"):
        _connect(fake, transport="basic")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _connect(fake, transport="basic", insecure=True) as conn:
            assert len(conn.vms()) == 6
    assert any(issubclass(w.category, vmmove.InsecureConnectionWarning) for w in caught)


def test_kerberos_needs_its_extra_or_a_ticket(fake: FakeHyperV) -> None:
    # The fake offers basic and NTLM only: a Kerberos client is refused, typed.
    with pytest.raises(vmmove.ConnectionFailed):
        _connect(fake, transport="kerberos")


def test_a_hung_command_ends_in_a_typed_error_within_its_deadline(fake: FakeHyperV) -> None:
    with _connect(fake, operation_timeout=1.0, call_timeout=2.0) as conn:
        fake.server.hang_command("hv1", "Get-VM |")
        began = time.monotonic()
        with pytest.raises(vmmove.ConnectionFailed) as info:
            conn.vms()
        took = time.monotonic() - began
    message = str(info.value)
    assert "127.0.0.2" in message
    assert "Get-VM" in message
    assert "2 s" in message
    assert fake.password not in message
    assert took < 2.0 + 2.5  # the deadline, plus one bounded Signal/Delete
