"""The fake WinRM endpoint driven by real pywinrm: round trips, auth, long-polls, faults."""

from __future__ import annotations

import base64
import contextlib
import threading
import uuid
from collections.abc import Iterator
from typing import Any, Literal

import pytest
import requests
import winrm
from winrm.exceptions import InvalidCredentialsError, WinRMTransportError, WSManFaultError
from winrm.protocol import Protocol

from vmmove_hyperv.testing import clixml, soap
from vmmove_hyperv.testing.shell import Output
from vmmove_hyperv.testing.shell import ScriptedShell as Stub
from vmmove_hyperv.testing.wsman import Call, WinRMServer, decode_command_line

USER, PASSWORD = "Administrator", "s3cret-Pa55"
Transport = Literal["basic", "ntlm", "ssl", "kerberos", "credssp"]
WAIT = 10.0  # generous bound on event waits; they return as soon as the event happens


@pytest.fixture
def stub() -> Stub:
    return Stub()


@pytest.fixture
def server(stub: Stub) -> Iterator[WinRMServer]:
    srv = WinRMServer(stub, users={USER: PASSWORD}, operation_timeout_cap=0.2)
    srv.add_host("hv1")
    srv.add_host("hv2")
    with srv:
        yield srv
    assert srv.emulation_errors == []


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


def test_basic_round_trip_reaches_the_named_host(server: WinRMServer, stub: Stub) -> None:
    r1 = session(server, "hv1").run_ps("Get-VM | ConvertTo-Json")
    r2 = session(server, "hv2").run_ps("Get-VMHost")
    assert r1.status_code == 0
    assert r1.std_out == b"hv1: Get-VM | ConvertTo-Json\r\n"
    assert r2.std_out == b"hv2: Get-VMHost\r\n"
    assert stub.seen == [("hv1", "Get-VM | ConvertTo-Json"), ("hv2", "Get-VMHost")]
    assert server.hosts["hv1"].startswith("127.0.0.2:")
    assert server.hosts["hv2"] == f"127.0.0.3:{server.port}"
    actions = [c.action for c in server.calls() if c.host == "hv1"]
    assert actions == ["Create", "Command", "Receive", "Signal", "Delete"]


def test_non_ascii_output_follows_the_shell_code_page(server: WinRMServer, stub: Stub) -> None:
    stub.answers["names"] = Output(stdout="Zoë\nnext")
    proto = protocol(server, "hv1")
    for codepage, expected in (
        (437, "Zoë\r\nnext\r\n".encode("cp437")),
        (65001, "Zoë\r\nnext\r\n".encode()),
    ):
        shell_id = proto.open_shell(codepage=codepage)
        command_id = proto.run_command(shell_id, "powershell -Command names")
        out, err, code = proto.get_command_output(shell_id, command_id)
        proto.cleanup_command(shell_id, command_id)
        proto.close_shell(shell_id, close_session=False)
        assert (out, err, code) == (expected, b"", 0)


def test_wrong_password_is_refused(server: WinRMServer, stub: Stub) -> None:
    bad = winrm.Session(server.endpoint("hv1"), auth=(USER, "wrong"), transport="basic")
    with pytest.raises(InvalidCredentialsError):
        bad.run_ps("Get-VM")
    assert stub.seen == []
    assert any(c.outcome == "refused" for c in server.calls())


def test_errors_arrive_as_clixml_that_pywinrm_reads(server: WinRMServer, stub: Stub) -> None:
    stub.answers["Get-VM nope"] = Output(
        errors=['Hyper-V was unable to find a virtual machine with name "nope".', "line1\nline2"],
        exit_code=1,
    )
    proto = protocol(server, "hv1")
    shell_id = proto.open_shell()
    encoded = base64.b64encode("Get-VM nope".encode("utf-16-le")).decode()
    command_id = proto.run_command(shell_id, f"powershell -encodedcommand {encoded}")
    _, raw_err, code = proto.get_command_output(shell_id, command_id)
    proto.close_shell(shell_id)
    assert code == 1
    assert raw_err.startswith(b"#< CLIXML\r\n<Objs ")
    assert b"_x000D__x000A_</S>" in raw_err
    assert clixml.decode_errors(raw_err.decode()) == [
        'Hyper-V was unable to find a virtual machine with name "nope".',
        "line1",
        "line2",
    ]
    r = session(server, "hv1").run_ps("Get-VM nope")
    assert r.status_code == 1
    assert r.std_err == (
        b'Hyper-V was unable to find a virtual machine with name "nope".\nline1\nline2'
    )


def test_long_command_is_answered_through_timeout_long_polls(
    server: WinRMServer, stub: Stub
) -> None:
    stub.hold = threading.Event()
    result: list[winrm.Response] = []
    client = threading.Thread(target=lambda: result.append(session(server, "hv1").run_ps("slow")))
    client.start()

    def timeouts(calls: list[Call]) -> int:
        return sum(1 for c in calls if c.action == "Receive" and c.outcome == "timeout")

    try:
        assert server.wait_for_calls(lambda calls: timeouts(calls) >= 3, WAIT)
        assert not result  # still waiting on the command
    finally:
        stub.hold.set()
    client.join(WAIT)
    assert not client.is_alive()
    assert result[0].std_out == b"hv1: slow\r\n"
    assert result[0].status_code == 0


def test_timeout_fault_is_the_one_windows_sends(server: WinRMServer, stub: Stub) -> None:
    stub.hold = threading.Event()
    proto = protocol(server, "hv1")
    shell_id = proto.open_shell()
    command_id = proto.run_command(shell_id, "powershell -Command slow")
    try:
        with pytest.raises(winrm.exceptions.WinRMOperationTimeoutError):
            proto.get_command_output_raw(shell_id, command_id)
        # the same answer, read without pywinrm's conversion: HTTP 500 and a SOAP Fault
        transport = proto.transport
        msg = raw_envelope(
            soap.ACTION_RECEIVE,
            shell_id,
            f'<rsp:Receive><rsp:DesiredStream CommandId="{command_id}">stdout stderr'
            "</rsp:DesiredStream></rsp:Receive>",
        )
        with pytest.raises(WinRMTransportError) as info:
            transport.send_message(msg)
        assert info.value.code == 500
        assert 'Code="2150858793"' in info.value.response_text
        assert "<s:Fault>" in info.value.response_text
        assert "w:TimedOut" in info.value.response_text
    finally:
        stub.hold.set()
    out, _, code = proto.get_command_output(shell_id, command_id)
    assert (out, code) == (b"hv1: slow\r\n", 0)
    proto.close_shell(shell_id)


def raw_envelope(action: str, shell_id: str, body: str) -> str:
    """A request as any WS-Management client would write it (not through pywinrm)."""
    return (
        f'<s:Envelope xmlns:s="{soap.NS_SOAP}" xmlns:a="{soap.NS_ADDR}" xmlns:w="{soap.NS_WSMAN}"'
        f' xmlns:rsp="{soap.NS_SHELL}"><s:Header><a:To>http://x/wsman</a:To>'
        f"<a:MessageID>uuid:{uuid.uuid4()}</a:MessageID>"
        f"<w:ResourceURI>{soap.RESOURCE_CMD}</w:ResourceURI><a:Action>{action}</a:Action>"
        "<w:OperationTimeout>PT1S</w:OperationTimeout>"
        f'<w:SelectorSet><w:Selector Name="ShellId">{shell_id}</w:Selector></w:SelectorSet>'
        f"</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    )


def test_unknown_shell_gets_the_not_found_fault(server: WinRMServer) -> None:
    proto = protocol(server, "hv1")
    with pytest.raises(WSManFaultError) as info:
        proto.run_command("7A1E4B2C-0000-0000-0000-000000000000", "powershell -Command x")
    assert info.value.wsman_fault_code == 2150858843
    assert info.value.code == 500
    # a shell of another host is not found either
    shell_id = proto.open_shell()
    other = protocol(server, "hv2")
    with pytest.raises(WSManFaultError) as info:
        other.run_command(shell_id, "powershell -Command x")
    assert info.value.wsman_fault_code == 2150858843


def test_signal_terminate_ends_a_running_command(server: WinRMServer, stub: Stub) -> None:
    stub.hold = threading.Event()
    proto = protocol(server, "hv1")
    shell_id = proto.open_shell()
    command_id = proto.run_command(shell_id, "powershell -Command forever")
    try:
        assert stub.started.wait(WAIT)
        proto.cleanup_command(shell_id, command_id)  # Signal terminate, RelatesTo checked
        with pytest.raises(WSManFaultError) as info:
            proto.get_command_output_raw(shell_id, command_id)
        assert info.value.wsman_fault_code == 2150858843
    finally:
        stub.hold.set()
    proto.close_shell(shell_id)  # Delete: RelatesTo checked by pywinrm
    assert [c.action for c in server.calls()][-3:] == ["Signal", "Receive", "Delete"]


def test_ctrl_c_ends_the_command_with_its_exit_code(server: WinRMServer, stub: Stub) -> None:
    stub.hold = threading.Event()
    proto = protocol(server, "hv1")
    shell_id = proto.open_shell()
    command_id = proto.run_command(shell_id, "powershell -Command forever")
    try:
        signal = (
            f'<rsp:Signal CommandId="{command_id}"><rsp:Code>{soap.SIGNAL_CTRL_C}</rsp:Code>'
            "</rsp:Signal>"
        )
        proto.send_message(raw_envelope(soap.ACTION_SIGNAL, shell_id, signal))
        _, _, code = proto.get_command_output(shell_id, command_id)
        assert code == 0xC000013A
    finally:
        stub.hold.set()
    proto.close_shell(shell_id)


def test_decode_command_line_variants() -> None:
    enc = base64.b64encode("Get-VM 'ä'".encode("utf-16-le")).decode()
    assert decode_command_line(f"powershell -encodedcommand {enc}") == "Get-VM 'ä'"
    assert decode_command_line(f"PowerShell.exe -NoProfile -EncodedCommand {enc}") == "Get-VM 'ä'"
    assert decode_command_line(f"powershell -ec {enc}") == "Get-VM 'ä'"
    assert decode_command_line("powershell -Command Get-VM -Name x") == "Get-VM -Name x"
    assert decode_command_line("ipconfig /all") == "ipconfig /all"


def test_badly_encoded_command_answers_like_powershell(server: WinRMServer, stub: Stub) -> None:
    r = winrm.Session(server.endpoint("hv1"), auth=(USER, PASSWORD), transport="basic").run_cmd(
        "powershell -EncodedCommand !!notbase64!!"
    )
    assert r.status_code == 1
    assert b"not properly encoded" in r.std_err
    assert stub.seen == []


def test_refuse_auth_is_counted(server: WinRMServer, stub: Stub) -> None:
    fault = server.refuse_auth("hv1", times=1)
    with pytest.raises(InvalidCredentialsError):
        session(server, "hv1").run_ps("one")
    r = session(server, "hv1").run_ps("two")
    assert r.std_out == b"hv1: two\r\n"
    assert fault.hits == 1
    assert fault.times == 0
    assert stub.seen == [("hv1", "two")]


def test_refuse_auth_for_one_script_only(server: WinRMServer, stub: Stub) -> None:
    server.refuse_auth("hv1", "Move-VM", times=None)
    assert session(server, "hv1").run_ps("Get-VM").status_code == 0
    with pytest.raises(InvalidCredentialsError):
        session(server, "hv1").run_ps("Move-VM x")
    assert stub.seen == [("hv1", "Get-VM")]


def test_kerberos_and_credssp_are_refused_clearly(server: WinRMServer) -> None:
    for scheme in ("Kerberos", "CredSSP"):
        r = requests.post(
            server.endpoint("hv1"),
            data=b"<x/>",
            headers={"Authorization": f"{scheme} YWJj"},
            timeout=5,
        )
        assert r.status_code == 401
        assert f"{scheme} authentication is not supported" in r.text
        assert "Negotiate" in r.headers["WWW-Authenticate"]


def test_stop_leaves_no_threads_or_sockets(stub: Stub) -> None:
    before = {t.ident for t in threading.enumerate()}
    srv = WinRMServer(stub, users={USER: PASSWORD}, operation_timeout_cap=0.2)
    with srv:
        srv.add_host("hv1")
        session(srv, "hv1").run_ps("x")
        held = requests.Session()  # an idle keep-alive connection the server must close
        held.post(srv.endpoint("hv1"), data=b"", timeout=5)
    leftover = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert leftover == []
    with pytest.raises(requests.ConnectionError):
        requests.post(srv.endpoint("hv1"), data=b"", timeout=5)
    held.close()


def test_reprs_hide_the_password(server: WinRMServer) -> None:
    assert PASSWORD not in repr(server)
    assert PASSWORD not in str(vars(server).get("_ntlm"))


def test_ntlm_with_message_encryption_both_ways(server: WinRMServer, stub: Stub) -> None:
    stub.answers["Get-VM"] = Output(stdout='{"Name":"vm1"}', errors=["warning-ish"], exit_code=0)
    proto = protocol(server, "hv1", "ntlm")
    r = winrm.Session(server.endpoint("hv1"), auth=(USER, PASSWORD), transport="ntlm")
    r.protocol = proto
    result = r.run_ps("Get-VM")
    assert result.std_out == b'{"Name":"vm1"}\r\n'
    assert result.std_err == b"warning-ish"
    assert proto.transport.encryption is not None  # pywinrm did encrypt
    assert stub.seen == [("hv1", "Get-VM")]


def test_ntlm_bodies_are_encrypted_on_the_wire(server: WinRMServer, stub: Stub) -> None:
    seen: list[tuple[str, bytes]] = []
    proto = protocol(server, "hv1", "ntlm")
    session_ = proto.transport.build_session()
    session_.hooks["response"].append(
        lambda r, **_: seen.append((r.headers.get("Content-Type", ""), r.content))
    )
    shell_id = proto.open_shell()
    command_id = proto.run_command(shell_id, "powershell -Command Get-Secret-Thing")
    out, _, _ = proto.get_command_output(shell_id, command_id)
    proto.close_shell(shell_id)
    assert out == b"hv1: Get-Secret-Thing\r\n"
    soap_answers = [(ct, body) for ct, body in seen if body and ct.startswith("multipart")]
    assert len(soap_answers) >= 4  # Create, Command, Receive, Delete
    for content_type, body in soap_answers:
        assert 'protocol="application/HTTP-SPNEGO-session-encrypted"' in content_type
        assert b"Get-Secret-Thing" not in body
        assert b"Envelope" not in body


def test_ntlm_wrong_password_is_refused(server: WinRMServer, stub: Stub) -> None:
    bad = winrm.Session(server.endpoint("hv1"), auth=(USER, "nope"), transport="ntlm")
    with pytest.raises(InvalidCredentialsError):
        bad.run_ps("Get-VM")
    unknown = winrm.Session(server.endpoint("hv1"), auth=("mallory", PASSWORD), transport="ntlm")
    with pytest.raises(InvalidCredentialsError):
        unknown.run_ps("Get-VM")
    assert stub.seen == []


def test_ntlm_user_file_does_not_stay_in_the_environment(server: WinRMServer) -> None:
    import os

    session(server, "hv1", "ntlm").run_ps("x")
    assert "NTLM_USER_FILE" not in os.environ


def test_ntlm_only_server_refuses_basic(stub: Stub) -> None:
    with WinRMServer(stub, users={USER: PASSWORD}, auth=("ntlm",)) as srv:
        srv.add_host("hv1")
        with pytest.raises(InvalidCredentialsError):
            session(srv, "hv1", "basic").run_ps("x")
        assert session(srv, "hv1", "ntlm").run_ps("x").status_code == 0


def test_unencrypted_refused_when_the_listener_says_so(stub: Stub) -> None:
    with WinRMServer(stub, users={USER: PASSWORD}, allow_unencrypted=False) as srv:
        srv.add_host("hv1")
        with pytest.raises(InvalidCredentialsError):
            session(srv, "hv1", "basic").run_ps("x")
        with pytest.raises(InvalidCredentialsError):
            session(srv, "hv1", "ntlm", message_encryption="never").run_ps("x")
        assert session(srv, "hv1", "ntlm").run_ps("x").std_out == b"hv1: x\r\n"
    assert stub.seen == [("hv1", "x")]


def test_large_output_spans_several_receives(server: WinRMServer, stub: Stub) -> None:
    big = "".join(f"line {i:06d} " + "x" * 50 + "\n" for i in range(4000))  # ~250 kB
    stub.answers["big"] = Output(stdout=big)
    r = session(server, "hv1").run_ps("big")
    assert r.std_out == big.replace("\n", "\r\n").encode()
    outcomes = [c.outcome for c in server.calls() if c.action == "Receive"]
    assert outcomes.count("running") >= 2
    assert outcomes[-1] == "done"


def test_basic_does_not_authenticate_the_connection(server: WinRMServer) -> None:
    with requests.Session() as http:
        first = http.post(server.endpoint("hv1"), data=b"", auth=(USER, PASSWORD), timeout=5)
        assert first.status_code == 200
        second = http.post(server.endpoint("hv1"), data=b"", timeout=5)  # same connection
        assert second.status_code == 401


def test_password_never_logged(
    server: WinRMServer, stub: Stub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    session(server, "hv1").run_ps("x")
    session(server, "hv1", "ntlm").run_ps("x")
    for password in (PASSWORD, "wrong-" + PASSWORD):
        for transport in ("basic", "ntlm"):
            bad = winrm.Session(server.endpoint("hv1"), auth=(USER, password), transport=transport)
            with contextlib.suppress(InvalidCredentialsError):
                bad.run_ps("x")
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert caplog.records  # the fake did log
    assert PASSWORD not in caplog.text
    assert basic not in caplog.text
