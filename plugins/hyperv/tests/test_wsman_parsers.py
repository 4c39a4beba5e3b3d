"""Hypothesis over the wire parsers of the fake WinRM endpoint: malformed input gives a SOAP
fault (or a refusal), never a crash or a traceback."""

from __future__ import annotations

import contextlib
import functools
import threading
import uuid
from collections.abc import Iterator

import pytest
import requests
import spnego
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmmove_hyperv.testing import clixml, soap
from vmmove_hyperv.testing.auth import EncryptionError, decrypt_body, encrypt_body
from vmmove_hyperv.testing.shell import Output
from vmmove_hyperv.testing.wsman import WinRMServer

USER, PASSWORD = "Administrator", "s3cret-Pa55"


def envelope(action: str, body: str, *, header_extra: str = "", message_id: str = "") -> bytes:
    mid = message_id or f"uuid:{uuid.uuid4()}"
    return (
        f'<s:Envelope xmlns:s="{soap.NS_SOAP}" xmlns:a="{soap.NS_ADDR}" xmlns:w="{soap.NS_WSMAN}"'
        f' xmlns:rsp="{soap.NS_SHELL}"><s:Header><a:MessageID>{mid}</a:MessageID>'
        f"<w:ResourceURI>{soap.RESOURCE_CMD}</w:ResourceURI><a:Action>{action}</a:Action>"
        f"{header_extra}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


pieces = st.sampled_from(
    [
        b"<",
        b">",
        b"</s:Body>",
        b"<s:Header>",
        b"<!DOCTYPE x>",
        b"&amp;",
        b"&bogus;",
        b"\x00",
        b"\xff\xfe",
        b'xmlns:s="x"',
        b"<w:OperationTimeout>PTxS</w:OperationTimeout>",
        b"<w:MaxEnvelopeSize>big</w:MaxEnvelopeSize>",
        b"<rsp:CommandLine/>",
        b"<rsp:Receive/>",
        b'<rsp:Signal CommandId="x"/>',
    ]
)


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    action = draw(st.sampled_from([soap.ACTION_CREATE, soap.ACTION_COMMAND, soap.ACTION_RECEIVE]))
    data = bytearray(envelope(action, draw(st.sampled_from(["", "<rsp:Shell/>", "<x/>"]))))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        if draw(st.booleans()):
            data[at:at] = draw(pieces)
        else:
            del data[at : at + draw(st.integers(1, 20))]
    return bytes(data)


@given(st.one_of(st.binary(max_size=300), mangled()))
@settings(max_examples=150, deadline=None)
def test_parse_request_returns_or_faults(data: bytes) -> None:
    req: soap.Request | None = None
    fault: soap.WSManFault | None = None
    try:
        req = soap.parse_request(data)
    except soap.WSManFault as exc:
        fault = exc
    if fault is not None:
        assert fault.code > 0x80330000
        assert soap.fault_envelope(fault, relates_to=None, machine="hv1").startswith(b"<s:")
        return
    assert req is not None
    assert req.action
    assert req.message_id
    # the body accessors fault too, they do not crash
    for accessor in (req.command_line, req.receive_command_id, req.signal):
        with contextlib.suppress(soap.WSManFault):
            accessor()


@given(st.text(max_size=40))
def test_durations(text: str) -> None:
    try:
        seconds = soap.parse_duration(text)
    except ValueError:
        return
    assert seconds >= 0


def test_durations_known() -> None:
    assert soap.parse_duration("PT20S") == 20
    assert soap.parse_duration("PT60.000S") == 60
    assert soap.parse_duration("P1DT1H1M1.5S") == 86400 + 3600 + 60 + 1.5
    with pytest.raises(ValueError, match="xs:duration"):
        soap.parse_duration("PT")


@given(st.text())
def test_clixml_escape_round_trip(text: str) -> None:
    escaped = clixml.escape(text)
    assert all(ord(c) >= 0x20 for c in escaped)
    assert clixml.unescape(escaped) == text


@given(st.lists(st.text(alphabet=st.characters(exclude_characters="\r\n")), max_size=4))
def test_clixml_errors_round_trip(messages: list[str]) -> None:
    stream = clixml.encode_errors(messages, progress=True)
    assert stream.startswith("#< CLIXML\r\n")
    assert clixml.decode_errors(stream) == messages


def test_clixml_shape() -> None:
    stream = clixml.encode_errors(["a_x\nb & <c>"])
    assert stream == (
        '#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/'
        '2004/04"><S S="Error">a_x_x000D__x000A_</S>'
        '<S S="Error">b &amp; &lt;c&gt;_x000D__x000A_</S></Objs>'
    )
    assert clixml.escape("_x0041_") == "_x005F_x0041_"
    assert clixml.encode_errors([]) == ""


@functools.cache
def _ntlm_pair() -> tuple[spnego.ContextProxy, spnego.ContextProxy]:
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "users")
        with open(path, "w", encoding="utf-8") as f:
            f.write(f":{USER}:{PASSWORD}\n")
        before = os.environ.get("NTLM_USER_FILE")
        os.environ["NTLM_USER_FILE"] = path
        try:
            client = spnego.client(USER, PASSWORD, protocol="ntlm")
            server = spnego.server(protocol="ntlm")
            token = client.step()
            while not (client.complete and server.complete):
                token = server.step(token)
                if token is not None:
                    token = client.step(token)
        finally:
            if before is None:
                del os.environ["NTLM_USER_FILE"]
            else:
                os.environ["NTLM_USER_FILE"] = before
    return client, server


def test_encrypted_body_round_trip_and_tamper() -> None:
    client, server = _ntlm_pair.__wrapped__()  # fresh: NTLM sealing counts messages
    body = encrypt_body(client, b"<s:Envelope/>")
    assert decrypt_body(server, body) == b"<s:Envelope/>"
    tampered = bytearray(encrypt_body(client, b"<s:Envelope/>"))
    tampered[-30] ^= 0xFF
    with pytest.raises(EncryptionError):
        decrypt_body(server, bytes(tampered))


@given(st.binary(max_size=200))
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_decrypt_garbage_is_an_encryption_error(data: bytes) -> None:
    _, server = _ntlm_pair()
    with contextlib.suppress(EncryptionError):
        decrypt_body(server, b"--Encrypted Boundary\r\n" + data)


class Echo:
    def run(self, host: str, script: str) -> Output:
        return Output(stdout=script)


@pytest.fixture(scope="module")
def live() -> Iterator[WinRMServer]:
    srv = WinRMServer(Echo(), users={USER: PASSWORD})
    srv.add_host("hv1")
    with srv:
        yield srv


@given(st.one_of(st.binary(max_size=300), mangled()))
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_endpoint_answers_malformed_envelopes_with_a_soap_fault(
    live: WinRMServer, data: bytes
) -> None:
    r = requests.post(
        live.endpoint("hv1"),
        data=data,
        auth=(USER, PASSWORD),
        headers={"Content-Type": "application/soap+xml;charset=UTF-8"},
        timeout=5,
    )
    assert r.status_code in (200, 500)
    if r.status_code == 500:
        assert b"<s:Fault>" in r.content
        assert b"Traceback" not in r.content
        assert b'Code="2150' in r.content


def test_fault_relates_to_the_request(live: WinRMServer) -> None:
    mid = f"uuid:{uuid.uuid4()}"
    data = envelope(
        soap.ACTION_COMMAND,
        "<rsp:CommandLine><rsp:Command>x</rsp:Command></rsp:CommandLine>",
        header_extra='<w:SelectorSet><w:Selector Name="ShellId">NOPE</w:Selector></w:SelectorSet>',
        message_id=mid,
    )
    r = requests.post(live.endpoint("hv1"), data=data, auth=(USER, PASSWORD), timeout=5)
    assert r.status_code == 500
    assert f"<a:RelatesTo>{mid}</a:RelatesTo>".encode() in r.content
    assert b'Code="2150858843"' in r.content
    assert threading.active_count() >= 1
