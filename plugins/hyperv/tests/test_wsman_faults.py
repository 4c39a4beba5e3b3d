"""Fault injection and TLS on the fake WinRM endpoint, seen through real pywinrm."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import pytest
import requests
import winrm
from winrm.protocol import Protocol

from vmmove_hyperv.testing.shell import Output
from vmmove_hyperv.testing.shell import ScriptedShell as Stub
from vmmove_hyperv.testing.wsman import Call, WinRMServer

USER, PASSWORD = "Administrator", "s3cret-Pa55"
Transport = Literal["basic", "ntlm", "ssl", "kerberos", "credssp"]
WAIT = 10.0  # generous bound on event waits; they return as soon as the event happens


@pytest.fixture
def stub() -> Stub:
    return Stub()


@pytest.fixture
def server(stub: Stub) -> Iterator[WinRMServer]:
    srv = WinRMServer(stub, users={USER: PASSWORD}, operation_timeout_cap=0.1)
    srv.add_host("hv1")
    with srv:
        yield srv


def protocol(server: WinRMServer, host: str, transport: Transport = "basic", **kw: Any) -> Protocol:
    kw.setdefault("operation_timeout_sec", 1)
    kw.setdefault("read_timeout_sec", 5)
    return Protocol(
        server.endpoint(host), transport=transport, username=USER, password=PASSWORD, **kw
    )


def session(
    server: WinRMServer, host: str, transport: str = "basic", **kw: object
) -> winrm.Session:
    kw.setdefault("operation_timeout_sec", 1)
    kw.setdefault("read_timeout_sec", 5)
    return winrm.Session(server.endpoint(host), auth=(USER, PASSWORD), transport=transport, **kw)


def _timeouts(calls: list[Call]) -> int:
    return sum(1 for c in calls if c.action == "Receive" and c.outcome == "timeout")


def test_hung_command_keeps_pywinrm_spinning_until_the_server_goes(stub: Stub) -> None:
    srv = WinRMServer(stub, users={USER: PASSWORD}, operation_timeout_cap=0.1)
    srv.add_host("hv1")
    fault = srv.hang_command("hv1", "Get-VM")
    errors: list[BaseException] = []

    def client() -> None:
        try:
            session(srv, "hv1").run_ps("Get-VM -Name x")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=client, daemon=True)
    with srv:
        thread.start()
        # pywinrm retries the "no output yet" fault forever: the wall clock is the test's
        assert srv.wait_for_calls(lambda calls: _timeouts(calls) >= 5, WAIT)
        assert thread.is_alive()
        assert fault.hits == 1
        assert stub.seen == []  # a hung powershell.exe did nothing
    thread.join(WAIT)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], requests.ConnectionError)


def test_hang_is_one_shot_and_script_scoped(server: WinRMServer, stub: Stub) -> None:
    server.hang_command("hv1", "Move-VM", run=True)
    assert session(server, "hv1").run_ps("Get-VM").std_out == b"hv1: Get-VM\r\n"
    done = threading.Event()
    ended: list[BaseException] = []

    def client() -> None:
        try:
            session(server, "hv1").run_ps("Move-VM a")
            done.set()
        except requests.ConnectionError as exc:  # the server stopped under it
            ended.append(exc)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    assert server.wait_for_calls(lambda calls: _timeouts(calls) >= 2, WAIT)
    assert ("hv1", "Move-VM a") in stub.seen  # run=True: it ran, its answer never comes
    assert not done.is_set()
    assert session(server, "hv1").run_ps("Move-VM b").status_code == 0
    server.stop()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert len(ended) == 1


def test_dropped_connection_after_the_command_ran(server: WinRMServer, stub: Stub) -> None:
    fault = server.drop_connection("hv1", "Move-VM", on="Command")
    with pytest.raises(requests.ConnectionError):
        session(server, "hv1").run_ps("Move-VM -Name vm1")
    assert stub.started.wait(WAIT)  # the server acted: the command was started
    assert stub.seen == [("hv1", "Move-VM -Name vm1")]
    assert fault.hits == 1
    assert any(c.action == "Command" and c.outcome == "dropped" for c in server.calls())
    # one-shot: the next call is answered
    assert session(server, "hv1").run_ps("Move-VM -Name vm1").status_code == 0


def test_dropped_connection_on_receive_with_ntlm(server: WinRMServer, stub: Stub) -> None:
    server.drop_connection("hv1", on="Receive", times=1)
    with pytest.raises(requests.ConnectionError):
        session(server, "hv1", "ntlm").run_ps("Get-VM")
    assert stub.seen == [("hv1", "Get-VM")]
    assert session(server, "hv1", "ntlm").run_ps("Get-VM").status_code == 0


def test_delay_before_answers_is_counted(server: WinRMServer, stub: Stub) -> None:
    fault = server.delay("hv1", 0.3, on="Create", times=2)
    start = time.monotonic()
    assert session(server, "hv1").run_ps("x").status_code == 0
    assert time.monotonic() - start >= 0.3
    assert fault.hits == 1
    assert fault.times == 1


def test_emulation_exception_is_an_error_record_and_kept(stub: Stub) -> None:
    class Broken:
        def run(self, host: str, script: str) -> Output:
            raise RuntimeError("bug in the emulation")

    with WinRMServer(Broken(), users={USER: PASSWORD}) as srv:
        srv.add_host("hv1")
        r = session(srv, "hv1").run_ps("Get-VM")
    assert r.status_code == 1
    assert b"RuntimeError" in r.std_err
    assert len(srv.emulation_errors) == 1


def test_tls_with_the_servers_ca(stub: Stub) -> None:
    with WinRMServer(stub, users={USER: PASSWORD}, tls=True) as srv:
        srv.add_host("hv1")
        srv.add_host("hv2")
        assert srv.ca_file is not None
        for host in ("hv1", "hv2"):
            r = winrm.Session(
                srv.endpoint(host),
                auth=(USER, PASSWORD),
                transport="ssl",
                ca_trust_path=srv.ca_file,
            ).run_ps("Get-VM")
            assert r.std_out == f"{host}: Get-VM\r\n".encode()
        # NTLM over HTTPS: no message encryption, channel bindings sent
        r = winrm.Session(
            srv.endpoint("hv1"), auth=(USER, PASSWORD), transport="ntlm", ca_trust_path=srv.ca_file
        ).run_ps("Get-VMHost")
        assert r.std_out == b"hv1: Get-VMHost\r\n"
        with WinRMServer(stub, users={USER: PASSWORD}, tls=True) as other:
            other_ca = other.ca_file
            assert other_ca is not None
            with pytest.raises(requests.exceptions.SSLError):
                winrm.Session(
                    srv.endpoint("hv1"),
                    auth=(USER, PASSWORD),
                    transport="ssl",
                    ca_trust_path=other_ca,
                ).run_ps("Get-VM")
    assert len(stub.seen) == 3
