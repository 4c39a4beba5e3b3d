"""WS-Management SOAP envelopes for the WinRM shell resource (MS-WSMV), server side.

:func:`parse_request` turns a request body into a :class:`Request` or raises
:class:`WSManFault` (never anything else); the ``*_response`` builders and
:func:`fault_envelope` produce the answers Windows gives, with ``a:RelatesTo`` set to the
request's ``a:MessageID``.
"""

from __future__ import annotations

import base64
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

__all__ = [
    "ACTION_COMMAND",
    "ACTION_CREATE",
    "ACTION_DELETE",
    "ACTION_RECEIVE",
    "ACTION_SEND",
    "ACTION_SIGNAL",
    "CODE_NOT_FOUND",
    "CODE_TIMED_OUT",
    "RESOURCE_CMD",
    "SIGNAL_CTRL_C",
    "SIGNAL_TERMINATE",
    "Request",
    "WSManFault",
    "command_response",
    "create_response",
    "empty_response",
    "fault_envelope",
    "parse_duration",
    "parse_request",
    "receive_response",
]

NS_SOAP = "http://www.w3.org/2003/05/soap-envelope"
NS_ADDR = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
NS_WSMAN = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
NS_MSWSMAN = "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd"
NS_SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
NS_TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
NS_FAULT = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"

RESOURCE_CMD = NS_SHELL + "/cmd"
ACTION_CREATE = NS_TRANSFER + "/Create"
ACTION_DELETE = NS_TRANSFER + "/Delete"
ACTION_COMMAND = NS_SHELL + "/Command"
ACTION_RECEIVE = NS_SHELL + "/Receive"
ACTION_SIGNAL = NS_SHELL + "/Signal"
ACTION_SEND = NS_SHELL + "/Send"
ACTION_FAULT = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"
SIGNAL_TERMINATE = NS_SHELL + "/signal/terminate"
SIGNAL_CTRL_C = NS_SHELL + "/signal/ctrl_c"
STATE_DONE = NS_SHELL + "/CommandState/Done"
STATE_RUNNING = NS_SHELL + "/CommandState/Running"
ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"

#: ERROR_WSMAN_OPERATION_TIMEDOUT: "no output yet", which clients retry.
CODE_TIMED_OUT = 0x80338029
#: ERROR_WSMAN_UNEXPECTED_SELECTORS: the shell (or command) does not exist.
CODE_NOT_FOUND = 0x8033805B
CODE_HEADER_REQUIRED = 0x80338011
CODE_ACTION_NOT_SUPPORTED = 0x80338013
CODE_INVALID_BODY = 0x80338027
CODE_RESOURCE_NOT_FOUND = 0x80338000

_DURATION = re.compile(
    r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


class WSManFault(Exception):
    """A SOAP fault the endpoint answers with (HTTP 500, as Windows does)."""

    def __init__(
        self, code: int, reason: str, *, sender: bool = True, subcode: str = "w:InternalError"
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.sender = sender
        self.subcode = subcode

    @classmethod
    def timed_out(cls) -> WSManFault:
        return cls(
            CODE_TIMED_OUT,
            "The WS-Management service cannot complete the operation within the time specified"
            " in OperationTimeout.",
            sender=False,
            subcode="w:TimedOut",
        )

    @classmethod
    def not_found(cls, what: str) -> WSManFault:
        return cls(
            CODE_NOT_FOUND,
            f"The request for the Windows Remote Shell with {what} failed because the shell was"
            " not found on the server. Possible causes are: the specified ShellId is incorrect"
            " or the shell no longer exists on the server. Provide the correct ShellId or create"
            " a new shell and try again.",
            subcode="w:InvalidSelectors",
        )


@dataclass(frozen=True)
class Request:
    """The parts of a WS-Management request the shell resource needs."""

    action: str
    message_id: str
    resource_uri: str
    #: seconds, ``None`` when the request has no ``w:OperationTimeout``
    operation_timeout: float | None
    max_envelope_size: int | None
    selectors: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    body: ET.Element | None = None

    @property
    def shell_id(self) -> str | None:
        return self.selectors.get("ShellId")

    # -- body accessors (each raises WSManFault when the body lacks what it needs) --

    def command_line(self) -> str:
        node = self._find(f"{{{NS_SHELL}}}CommandLine")
        command = node.find(f"{{{NS_SHELL}}}Command")
        if command is None or command.text is None:
            raise _invalid_body("rsp:CommandLine has no rsp:Command")
        parts = [command.text.strip()]
        parts += [(a.text or "") for a in node.findall(f"{{{NS_SHELL}}}Arguments")]
        return " ".join(p for p in parts if p)

    def receive_command_id(self) -> str:
        node = self._find(f"{{{NS_SHELL}}}Receive")
        stream = node.find(f"{{{NS_SHELL}}}DesiredStream")
        command_id = stream.get("CommandId") if stream is not None else None
        if not command_id:
            raise _invalid_body("rsp:Receive has no rsp:DesiredStream with a CommandId")
        return command_id

    def signal(self) -> tuple[str, str]:
        node = self._find(f"{{{NS_SHELL}}}Signal")
        code = node.find(f"{{{NS_SHELL}}}Code")
        command_id = node.get("CommandId")
        if not command_id or code is None or not code.text:
            raise _invalid_body("rsp:Signal needs a CommandId and a rsp:Code")
        return command_id, code.text.strip()

    def _find(self, tag: str) -> ET.Element:
        node = None if self.body is None else self.body.find(tag)
        if node is None:
            raise _invalid_body(f"the body has no {tag.rpartition('}')[2]}")
        return node


def _invalid_body(what: str) -> WSManFault:
    return WSManFault(
        CODE_INVALID_BODY,
        "The WS-Management service cannot process the request because the request packet"
        f" does not have a valid SOAP body: {what}.",
        subcode="w:SchemaValidationError",
    )


def parse_duration(text: str) -> float:
    """Seconds in an xs:duration such as ``PT20S`` or ``PT60.000S``; ValueError otherwise."""
    m = _DURATION.match(text.strip())
    if m is None or text.strip() in ("P", "PT"):
        raise ValueError(f"not an xs:duration: {text[:40]!r}")
    days, hours, minutes = (int(m.group(g) or 0) for g in "dhm")
    return days * 86400 + hours * 3600 + minutes * 60 + float(m.group("s") or 0)


def _text(header: ET.Element, tag: str) -> str | None:
    node = header.find(tag)
    return None if node is None or node.text is None else node.text.strip()


def parse_request(data: bytes) -> Request:
    """Parse a SOAP request; raises :class:`WSManFault` for anything malformed."""
    # No DTDs: the fake never needs them and entity expansion is a way to hurt a parser.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise _invalid_body("a DTD is not allowed")
    try:
        root = ET.fromstring(data)  # noqa: S314 - DTDs refused above
    except (ET.ParseError, ValueError) as exc:
        raise _invalid_body(f"not well-formed XML ({exc})") from None
    if root.tag != f"{{{NS_SOAP}}}Envelope":
        raise _invalid_body("the root is not a SOAP 1.2 Envelope")
    header = root.find(f"{{{NS_SOAP}}}Header")
    body = root.find(f"{{{NS_SOAP}}}Body")
    if header is None or body is None:
        raise _invalid_body("the Envelope needs a Header and a Body")
    action = _text(header, f"{{{NS_ADDR}}}Action")
    message_id = _text(header, f"{{{NS_ADDR}}}MessageID")
    resource_uri = _text(header, f"{{{NS_WSMAN}}}ResourceURI")
    if not action or not message_id or not resource_uri:
        raise WSManFault(
            CODE_HEADER_REQUIRED,
            "The WS-Management service cannot process the request. The request does not have"
            " all the expected SOAP headers (a:Action, a:MessageID, w:ResourceURI).",
            subcode="a:MessageInformationHeaderRequired",
        )
    timeout: float | None = None
    raw_timeout = _text(header, f"{{{NS_WSMAN}}}OperationTimeout")
    if raw_timeout is not None:
        try:
            timeout = parse_duration(raw_timeout)
        except ValueError:
            raise WSManFault(
                0x8033800C,
                "The WS-Management service does not support the specified timeout.",
                subcode="w:UnsupportedTimeout",
            ) from None
    max_env: int | None = None
    raw_env = _text(header, f"{{{NS_WSMAN}}}MaxEnvelopeSize")
    if raw_env is not None:
        try:
            max_env = int(raw_env)
        except ValueError:
            raise _invalid_body("w:MaxEnvelopeSize is not a number") from None
    selectors = {
        sel.get("Name", ""): (sel.text or "").strip()
        for sel in header.iterfind(f"{{{NS_WSMAN}}}SelectorSet/{{{NS_WSMAN}}}Selector")
    }
    options = {
        opt.get("Name", ""): (opt.text or "").strip()
        for opt in header.iterfind(f"{{{NS_WSMAN}}}OptionSet/{{{NS_WSMAN}}}Option")
    }
    return Request(
        action=action,
        message_id=message_id,
        resource_uri=resource_uri,
        operation_timeout=timeout,
        max_envelope_size=max_env,
        selectors=selectors,
        options=options,
        body=body,
    )


# -- answers ------------------------------------------------------------------------------

_NAMESPACES = (
    f'xml:lang="en-US" xmlns:s="{NS_SOAP}" xmlns:a="{NS_ADDR}" xmlns:x="{NS_TRANSFER}"'
    f' xmlns:w="{NS_WSMAN}" xmlns:rsp="{NS_SHELL}" xmlns:p="{NS_MSWSMAN}"'
)


def _envelope(action: str, relates_to: str | None, body: str) -> bytes:
    relates = "" if relates_to is None else f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo>"
    return (
        f"<s:Envelope {_NAMESPACES}><s:Header>"
        f"<a:Action>{escape(action)}</a:Action>"
        f"<a:MessageID>uuid:{str(uuid.uuid4()).upper()}</a:MessageID>"
        f"<a:To>{ANONYMOUS}</a:To>{relates}"
        f"</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def create_response(
    request: Request, shell_id: str, *, address: str, owner: str, client_ip: str
) -> bytes:
    body = (
        f"<x:ResourceCreated><a:Address>{escape(address)}</a:Address><a:ReferenceParameters>"
        f"<w:ResourceURI>{RESOURCE_CMD}</w:ResourceURI><w:SelectorSet>"
        f'<w:Selector Name="ShellId">{shell_id}</w:Selector></w:SelectorSet>'
        f"</a:ReferenceParameters></x:ResourceCreated>"
        f"<rsp:Shell><rsp:ShellId>{shell_id}</rsp:ShellId>"
        f"<rsp:ResourceUri>{RESOURCE_CMD}</rsp:ResourceUri>"
        f"<rsp:Owner>{escape(owner)}</rsp:Owner><rsp:ClientIP>{escape(client_ip)}</rsp:ClientIP>"
        f"<rsp:IdleTimeOut>PT7200.000S</rsp:IdleTimeOut>"
        f"<rsp:InputStreams>stdin</rsp:InputStreams>"
        f"<rsp:OutputStreams>stdout stderr</rsp:OutputStreams>"
        f"<rsp:ShellRunTime>P0DT0H0M0S</rsp:ShellRunTime>"
        f"<rsp:ShellInactivity>P0DT0H0M0S</rsp:ShellInactivity></rsp:Shell>"
    )
    return _envelope(ACTION_CREATE + "Response", request.message_id, body)


def command_response(request: Request, command_id: str) -> bytes:
    body = f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId></rsp:CommandResponse>"
    return _envelope(ACTION_COMMAND + "Response", request.message_id, body)


def receive_response(
    request: Request,
    command_id: str,
    streams: Sequence[tuple[str, bytes]],
    *,
    done: bool,
    exit_code: int = 0,
) -> bytes:
    """A ReceiveResponse with ``streams`` (name, bytes) in order; ``done`` ends both streams
    and reports the exit code."""
    cid = quoteattr(command_id)
    parts = ["<rsp:ReceiveResponse>"]
    for name, data in streams:
        encoded = base64.b64encode(data).decode("ascii")
        parts.append(f'<rsp:Stream Name="{name}" CommandId={cid}>{encoded}</rsp:Stream>')
    if done:
        parts.append(f'<rsp:Stream Name="stdout" CommandId={cid} End="true"></rsp:Stream>')
        parts.append(f'<rsp:Stream Name="stderr" CommandId={cid} End="true"></rsp:Stream>')
        parts.append(
            f'<rsp:CommandState CommandId={cid} State="{STATE_DONE}">'
            f"<rsp:ExitCode>{exit_code}</rsp:ExitCode></rsp:CommandState>"
        )
    else:
        parts.append(f'<rsp:CommandState CommandId={cid} State="{STATE_RUNNING}"/>')
    parts.append("</rsp:ReceiveResponse>")
    return _envelope(ACTION_RECEIVE + "Response", request.message_id, "".join(parts))


def empty_response(request: Request) -> bytes:
    """The answer to Signal (``rsp:SignalResponse``) and Delete (an empty body)."""
    if request.action == ACTION_SIGNAL:
        return _envelope(ACTION_SIGNAL + "Response", request.message_id, "<rsp:SignalResponse/>")
    return _envelope(request.action + "Response", request.message_id, "")


def fault_envelope(fault: WSManFault, *, relates_to: str | None, machine: str) -> bytes:
    code = "s:Sender" if fault.sender else "s:Receiver"
    reason = escape(fault.reason)
    body = (
        f"<s:Fault><s:Code><s:Value>{code}</s:Value><s:Subcode><s:Value>{escape(fault.subcode)}"
        f'</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">{reason}</s:Text>'
        f'</s:Reason><s:Detail><f:WSManFault xmlns:f="{NS_FAULT}" Code="{fault.code}"'
        f" Machine={quoteattr(machine)}><f:Message>{reason}</f:Message></f:WSManFault>"
        f"</s:Detail></s:Fault>"
    )
    return _envelope(ACTION_FAULT, relates_to, body)
