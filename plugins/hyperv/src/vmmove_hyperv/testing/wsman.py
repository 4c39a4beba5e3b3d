"""A WinRM endpoint on real sockets that pywinrm cannot tell from Windows: the wire half of the
Hyper-V fake. What a script *does* is the business of a :class:`~.shell.PowerShell`.

Public API (everything else here is private)::

    server = WinRMServer(shell, users={"Administrator": "pw"}, auth=("basic", "ntlm"), tls=False)
    with server:                                   # start() ... stop()
        addr = server.add_host("hv1")              # "127.0.0.2:PORT": own loopback address,
        server.add_host("hv2")                     # "127.0.0.3:PORT": one port for all hosts
        server.endpoint("hv1")                     # "http://127.0.0.2:PORT/wsman" (https with tls)
        server.hosts                               # {"hv1": "127.0.0.2:PORT", ...}
        server.port, server.ca_file                # ca_file: the CA's PEM when tls=True, else None
        # faults: scoped to a host, optionally to scripts containing a substring; counted
        server.refuse_auth("hv1", times=1)         # 401 whatever the credentials
        server.hang_command("hv1", "Get-VM")       # Receive answers 2150858793 forever
        server.drop_connection("hv1", "Move-VM", on="Command")  # act, then close unanswered
        server.delay("hv1", 0.5, on="Receive")     # wait before answering
        server.clear_faults()
        server.calls()                             # [Call(host, action, shell_id, ...)]
        server.wait_for_calls(pred, timeout=5.0)   # event-driven wait on the call log
        server.emulation_errors                    # exceptions raised by shell.run

``WinRMServer(shell, *, users, auth=("basic", "ntlm"), tls=False, port=0,
allow_unencrypted=True, operation_timeout_cap=None, clixml_progress=False,
command_join_timeout=5.0)``:

* ``users``: user name (``user``, ``DOMAIN\\user``) -> password; never logged or shown.
* ``auth``: any of ``"basic"``, ``"ntlm"``. NTLM is offered as ``WWW-Authenticate:
  Negotiate`` and supports message encryption; Kerberos and CredSSP requests get a 401
  saying the fake does not support them.
* ``allow_unencrypted=False`` refuses Basic over plain HTTP and unencrypted SOAP bodies over
  plain HTTP, as a Windows listener does by default (AllowUnencrypted=false).
* ``operation_timeout_cap``: the longest a Receive long-polls, whatever the client's
  ``w:OperationTimeout`` (Windows' MaxTimeoutms); tests use it to make long-polls short.
* ``clixml_progress``: start every powershell stderr with the "Preparing modules for first
  use." progress record, as Windows PowerShell 5.1 does, even when nothing failed.

The wire: ``POST /wsman`` SOAP 1.2 for the cmd shell resource: Create (``ShellId``), Command
(``CommandId``; each runs ``shell.run(host, script)`` on its own thread, one process per
command), Receive (long-polls up to ``w:OperationTimeout``, then the WSManFault 2150858793
as HTTP 500; when done: base64 ``stdout``/``stderr`` streams split to fit
``w:MaxEnvelopeSize``, ``CommandState/Done`` and ``ExitCode``), Signal (``terminate``:
the command is gone; ``ctrl_c``: it ends with exit code 0xC000013A), Delete. Every answer
carries ``a:RelatesTo`` = the request's ``a:MessageID``. Unknown shells and commands get
fault 2150858843 (w:InvalidSelectors); malformed envelopes a Sender fault, never a
traceback.

Scripts: ``powershell -EncodedCommand <base64 UTF-16LE>`` (any unambiguous prefix of the
switch, as powershell.exe takes it) is decoded; ``powershell -Command ...`` passes the rest of
the line; any other command line is passed whole. stdout is written with CRLF line ends
(the last line too) in the shell's code page (``WINRS_CODEPAGE``: 437 by default, which
turns what it cannot encode into ``?``; 65001 is UTF-8). ``Output.errors`` become the
``#< CLIXML`` stream on stderr (see :mod:`.clixml`); the exit code is ``Output.exit_code``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import shlex
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler
from werkzeug.wrappers import Request as HttpRequest
from werkzeug.wrappers import Response as HttpResponse

from vmmove_hyperv.testing import clixml, soap
from vmmove_hyperv.testing.auth import (
    ENCRYPTED_CONTENT_TYPE,
    ConnectionAuth,
    EncryptionError,
    NtlmUsers,
    check_basic,
    decrypt_body,
    encrypt_body,
    parse_authorization,
)
from vmmove_hyperv.testing.certs import CertificateAuthority
from vmmove_hyperv.testing.shell import Output, PowerShell

__all__ = ["Call", "Fault", "WinRMServer", "decode_command_line"]

log = logging.getLogger("vmmove_hyperv.testing.wsman")

Action = Literal["Create", "Command", "Receive", "Signal", "Delete"]
_ACTIONS: dict[str, Action] = {
    soap.ACTION_CREATE: "Create",
    soap.ACTION_COMMAND: "Command",
    soap.ACTION_RECEIVE: "Receive",
    soap.ACTION_SIGNAL: "Signal",
    soap.ACTION_DELETE: "Delete",
}
_SOAP_CONTENT_TYPE = "application/soap+xml;charset=UTF-8"
_DEFAULT_OPERATION_TIMEOUT = 60.0
_DEFAULT_MAX_ENVELOPE = 153600
_CTRL_C_EXIT = 0xC000013A
_ENV_CONN = "vmmove.wsman.connection"
_ENV_HOST = "vmmove.wsman.host"


@dataclass(frozen=True)
class Call:
    """One answered (or dropped) request, for tests to look at."""

    host: str
    action: str  # Create, Command, Receive, Signal, Delete, or "auth" / "invalid"
    outcome: str  # ok, running, done, timeout, fault, refused, dropped
    shell_id: str | None = None
    command_id: str | None = None


@dataclass
class Fault:
    """An injected fault; ``hits`` counts how often it struck, ``times`` what is left
    (``None``: forever)."""

    kind: Literal["refuse_auth", "hang", "drop", "delay"]
    host: str
    script: str | None = None
    on: str | None = None
    times: int | None = 1
    seconds: float = 0.0
    run: bool = False
    hits: int = 0

    def matches(self, host: str, action: str | None, script: str | None) -> bool:
        if self.host != host or self.times == 0:
            return False
        if self.on is not None and self.on != action:
            return False
        return self.script is None or (script is not None and self.script in script)


class _Dropped(ConnectionError):
    """Raised out of the app to close the connection without an answer."""


class _Refused(Exception):
    """A request refused with 401 once its script was known."""


def decode_command_line(command_line: str) -> str:
    """The script a cmd shell's command line runs (see the module's docstring)."""
    try:
        words = shlex.split(command_line, posix=False)
    except ValueError:
        return command_line
    if not words or words[0].lower().removesuffix(".exe") not in ("powershell", "pwsh"):
        return command_line
    for i, word in enumerate(words[1:], start=1):
        switch = word.lower()
        if not switch.startswith("-") or len(switch) < 2:
            continue
        name = switch[1:]
        if "encodedcommand".startswith(name) or name == "ec":
            if i + 1 >= len(words):
                return ""
            try:
                raw = base64.b64decode(words[i + 1], validate=True)
                return raw.decode("utf-16-le")
            except (binascii.Error, UnicodeDecodeError):
                raise _BadEncodedCommand from None
        if "command".startswith(name) and len(name) >= 1 and name != "e":
            return " ".join(words[i + 1 :])
    return command_line


class _BadEncodedCommand(ValueError):
    pass


_BAD_ENCODING = (
    "Cannot process the command because the value specified with -EncodedCommand is not"
    " properly encoded. The value must be Base64 encoded."
)


@dataclass(eq=False)
class _Command:
    id: str
    shell_id: str
    host: str
    script: str
    hung: bool = False
    output: Output | None = None
    exit_override: int | None = None
    pending: list[tuple[str, bytes]] = field(default_factory=list)
    prepared: bool = False


@dataclass(eq=False)
class _Shell:
    id: str
    host: str
    codepage: str
    commands: dict[str, _Command] = field(default_factory=dict)
    last_script: str | None = None


def _codec(codepage: str) -> str:
    return {"65001": "utf-8", "1252": "cp1252", "850": "cp850"}.get(codepage, "cp437")


class _Handler(WSGIRequestHandler):
    """werkzeug's handler with HTTP/1.1 keep-alive (NTLM authenticates connections, and
    werkzeug's own server closes each one after its answer) and an unanswered close."""

    server: _Listener
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # headers and body leave in two writes: without this, Nagle and delayed ACKs add 40 ms
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.auth_state = ConnectionAuth()
        self.server.track(self)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self)

    def make_environ(self) -> Any:
        environ = super().make_environ()
        environ[_ENV_CONN] = self.auth_state
        environ[_ENV_HOST] = self.server.host_name
        return environ

    def run_wsgi(self) -> None:
        if not self.server.begin(self):
            self._drop()
            return
        try:
            self._run_wsgi()
        finally:
            self.server.end(self)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _run_wsgi(self) -> None:
        environ = self.make_environ()
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
            started[:] = [status, headers]
            return None

        try:
            chunks = self.server.app(environ, start_response)
            body = b"".join(chunks)
        except _Dropped:
            self._drop()
            return
        except Exception:
            # a bug of the fake: say so in the log, answer 500 without a traceback
            log.exception("%s: the fake WinRM endpoint failed", self.server.host_name)
            self.close_connection = True
            started[:] = ["500 Internal Server Error", []]
            body = b""
        status, headers = started
        code, _, reason = str(status).partition(" ")
        self.send_response(int(code), reason)
        for key, value in headers:
            if key.lower() not in ("content-length", "connection", "server", "date"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        if self.server.stopping.is_set():
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def version_string(self) -> str:
        return "Microsoft-HTTPAPI/2.0"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("%s %s %s", self.server.host_name, self.requestline, code)

    def log(self, type: str, message: str, *args: Any) -> None:
        log.debug("%s: " + message, self.server.host_name, *args)


class _Listener(ThreadedWSGIServer):
    """One host's listening socket; handler threads are joined when it closes."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, wire: WinRMServer, host_name: str, sock: socket.socket, tls: Any) -> None:
        address, port = sock.getsockname()[:2]
        self.host_name = host_name
        self.stopping = threading.Event()
        self._handlers: set[_Handler] = set()
        self._busy: set[_Handler] = set()
        self._handlers_lock = threading.Lock()
        super().__init__(
            address, port, wire.wsgi_app, handler=_Handler, ssl_context=tls, fd=sock.fileno()
        )

    def track(self, handler: _Handler) -> None:
        with self._handlers_lock:
            self._handlers.add(handler)
            if self.stopping.is_set():
                self._shut(handler)

    def untrack(self, handler: _Handler) -> None:
        with self._handlers_lock:
            self._handlers.discard(handler)
            self._busy.discard(handler)

    def begin(self, handler: _Handler) -> bool:
        """A request starts on ``handler``'s connection; False when stopping."""
        with self._handlers_lock:
            if self.stopping.is_set():
                return False
            self._busy.add(handler)
            return True

    def end(self, handler: _Handler) -> None:
        with self._handlers_lock:
            self._busy.discard(handler)
            if self.stopping.is_set():
                handler.close_connection = True

    def close_connections(self) -> None:
        """Close idle connections now; busy ones close after their answer (never mid-way)."""
        with self._handlers_lock:
            self.stopping.set()
            for handler in self._handlers:
                if handler in self._busy:
                    handler.close_connection = True
                else:
                    self._shut(handler)

    @staticmethod
    def _shut(handler: _Handler) -> None:
        handler.close_connection = True
        with contextlib.suppress(OSError):
            handler.connection.shutdown(socket.SHUT_RDWR)


class WinRMServer:
    """The fake WinRM endpoint; see the module's docstring for the API."""

    def __init__(
        self,
        shell: PowerShell,
        *,
        users: Mapping[str, str],
        auth: Collection[str] = ("basic", "ntlm"),
        tls: bool = False,
        port: int = 0,
        allow_unencrypted: bool = True,
        operation_timeout_cap: float | None = None,
        clixml_progress: bool = False,
        command_join_timeout: float = 5.0,
    ) -> None:
        unknown = set(auth) - {"basic", "ntlm"}
        if unknown:
            raise ValueError(f"the fake supports basic and ntlm only, not {sorted(unknown)}")
        self._shell = shell
        self._users = dict(users)
        self._auth = frozenset(auth)
        self._tls = tls
        self._port = port
        self._allow_unencrypted = allow_unencrypted
        self._cap = operation_timeout_cap
        self._progress = clixml_progress
        self._join_timeout = command_join_timeout
        self._dir = tempfile.TemporaryDirectory(prefix="vmmove-winrm-")
        self._ca = CertificateAuthority(self._dir.name) if tls else None
        self.ca_file: str | None = self._ca.ca_file if self._ca else None
        self._ntlm = NtlmUsers(self._users) if "ntlm" in self._auth else None
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._started = False
        self._hosts: dict[str, str] = {}
        self._listeners: dict[str, _Listener] = {}
        self._serve_threads: dict[str, threading.Thread] = {}
        self._shells: dict[str, _Shell] = {}
        self._command_threads: list[threading.Thread] = []
        self._faults: list[Fault] = []
        self._calls: list[Call] = []
        self.emulation_errors: list[BaseException] = []

    def __repr__(self) -> str:
        return f"WinRMServer(hosts={self._hosts!r}, auth={sorted(self._auth)!r}, tls={self._tls})"

    # -- life cycle ---------------------------------------------------------------------

    def __enter__(self) -> WinRMServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            names = list(self._listeners)
        for name in names:
            self._serve(name)

    def stop(self) -> None:
        """Stop serving: wake long-polls, close connections and sockets, join threads."""
        with self._lock:
            listeners = list(self._listeners.values())
            threads = list(self._serve_threads.values())
        for listener in listeners:
            listener.close_connections()
        with self._lock:
            self._stopping.set()  # long-polls wake and close their connections unanswered
            self._lock.notify_all()
        for name, listener in zip(list(self._listeners), listeners, strict=True):
            if name in self._serve_threads:
                listener.shutdown()  # serve_forever closes the socket and joins handlers
            else:
                listener.server_close()
        for thread in threads:
            thread.join()
        with self._lock:
            commands = list(self._command_threads)
        deadline = time.monotonic() + self._join_timeout
        for thread in commands:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("a PowerShell command still runs after stop(): %s", thread.name)
        if self._ntlm is not None:
            self._ntlm.close()
        self._dir.cleanup()

    # -- hosts --------------------------------------------------------------------------

    def add_host(self, name: str) -> str:
        """Listen for host ``name`` on the next loopback address; returns ``address:port``."""
        with self._lock:
            if name in self._hosts:
                return self._hosts[name]
            if self._stopping.is_set():
                raise RuntimeError("the server is stopped")
            address = f"127.0.0.{len(self._hosts) + 2}"
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((address, self._port))
                sock.listen(64)
                port = sock.getsockname()[1]
                tls = self._ca.server_context(address, name) if self._ca else None
                listener = _Listener(self, name, sock, tls)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"cannot listen for host {name!r} on {address}:{self._port}"
                ) from exc
            finally:
                sock.close()  # the listener holds its own duplicate
            self._port = port
            self._hosts[name] = f"{address}:{port}"
            self._listeners[name] = listener
            started = self._started
        if started:
            self._serve(name)
        return self._hosts[name]

    def _serve(self, name: str) -> None:
        listener = self._listeners[name]
        thread = threading.Thread(
            target=listener.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"vmmove-winrm-{name}",
            daemon=True,
        )
        self._serve_threads[name] = thread
        thread.start()

    @property
    def hosts(self) -> dict[str, str]:
        with self._lock:
            return dict(self._hosts)

    @property
    def port(self) -> int:
        return self._port

    def address(self, name: str) -> str:
        return self._hosts[name]

    def endpoint(self, name: str) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{self._hosts[name]}/wsman"

    # -- faults -------------------------------------------------------------------------

    def _add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def refuse_auth(self, host: str, script: str | None = None, *, times: int | None = 1) -> Fault:
        """Answer 401 to requests for ``host`` (with ``script``: those about such a command)."""
        return self._add_fault(Fault("refuse_auth", host, script, times=times))

    def hang_command(
        self, host: str, script: str | None = None, *, times: int | None = 1, run: bool = False
    ) -> Fault:
        """Commands that never produce output: every Receive long-polls and answers the
        2150858793 fault. ``run``: the script still runs (its effects happen), unseen."""
        return self._add_fault(Fault("hang", host, script, on="Command", times=times, run=run))

    def drop_connection(
        self,
        host: str,
        script: str | None = None,
        *,
        on: str = "Command",
        times: int | None = 1,
    ) -> Fault:
        """Carry out the ``on`` request, then close the connection without an answer."""
        return self._add_fault(Fault("drop", host, script, on=on, times=times))

    def delay(
        self,
        host: str,
        seconds: float,
        script: str | None = None,
        *,
        on: str | None = None,
        times: int | None = 1,
    ) -> Fault:
        """Wait ``seconds`` (after acting) before answering ``on`` requests (None: any)."""
        return self._add_fault(Fault("delay", host, script, on=on, times=times, seconds=seconds))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _strike(self, kind: str, host: str, action: str | None, script: str | None) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind == kind and fault.matches(host, action, script):
                    fault.hits += 1
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    # -- observation --------------------------------------------------------------------

    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def wait_for_calls(self, predicate: Callable[[list[Call]], bool], timeout: float) -> bool:
        """Wait until ``predicate(calls)`` holds (True) or ``timeout`` passes (False)."""
        with self._lock:
            return self._lock.wait_for(lambda: predicate(self._calls), timeout)

    def _record(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)
            self._lock.notify_all()

    # -- HTTP ---------------------------------------------------------------------------

    def wsgi_app(self, environ: Any, start_response: Any) -> Iterable[bytes]:
        """The WSGI application (needs this module's keep-alive handler for NTLM)."""
        request = HttpRequest(environ)
        body = request.get_data(cache=False)  # read it all: the connection is kept alive
        host: str = environ.get(_ENV_HOST, "")
        conn: ConnectionAuth = environ.get(_ENV_CONN) or ConnectionAuth()
        response = self._answer(request, body, host, conn)
        chunks: Iterable[bytes] = response(environ, start_response)
        return chunks

    def _unauthorized(self, host: str, message: str = "", token: str | None = None) -> HttpResponse:
        response = HttpResponse(message, status=401, content_type="text/plain; charset=utf-8")
        if token is not None:
            response.headers.add("WWW-Authenticate", token)
            return response
        if "ntlm" in self._auth:
            response.headers.add("WWW-Authenticate", "Negotiate")
        if "basic" in self._auth and (self._tls or self._allow_unencrypted):
            response.headers.add("WWW-Authenticate", 'Basic realm="WSMAN"')
        self._record(Call(host, "auth", "refused"))
        return response

    def _authenticate(
        self, request: HttpRequest, host: str, conn: ConnectionAuth
    ) -> HttpResponse | None:
        """None when the request may proceed; else the 401 to answer."""
        if self._strike("refuse_auth", host, None, None) is not None:
            conn.reset()
            return self._unauthorized(host)
        parsed = parse_authorization(request.headers.get("Authorization"))
        if parsed is None:
            # NTLM authenticates the connection; Basic has to come with every request
            authenticated = conn.user is not None and conn.scheme == "ntlm"
            return None if authenticated else self._unauthorized(host)
        scheme, credentials = parsed
        if scheme == "basic":
            if "basic" not in self._auth or not (self._tls or self._allow_unencrypted):
                return self._unauthorized(host, "Basic authentication is not enabled.")
            user = check_basic(credentials, self._users)
            if user is None:
                return self._unauthorized(host)
            conn.user, conn.scheme = user, "basic"
            return None
        if scheme in ("negotiate", "ntlm"):
            if self._ntlm is None:
                return self._unauthorized(host, "NTLM authentication is not enabled.")
            try:
                token = base64.b64decode(credentials, validate=True)
                complete, out = conn.ntlm_step(self._ntlm, token)
            except Exception as exc:
                log.debug("%s: NTLM refused (%s)", host, type(exc).__name__)
                conn.reset()
                return self._unauthorized(host)
            if not complete:
                label = "NTLM" if scheme == "ntlm" else "Negotiate"
                encoded = base64.b64encode(out or b"").decode()
                return self._unauthorized(host, token=f"{label} {encoded}")
            return None
        what = {"kerberos": "Kerberos", "credssp": "CredSSP"}.get(scheme, scheme[:40])
        return self._unauthorized(
            host, f"{what} authentication is not supported by the fake WinRM endpoint."
        )

    def _answer(
        self, request: HttpRequest, body: bytes, host: str, conn: ConnectionAuth
    ) -> HttpResponse:
        if request.path.rstrip("/").lower() != "/wsman":
            return HttpResponse("", status=404)
        if request.method != "POST":
            return HttpResponse("", status=405, headers={"Allow": "POST"})
        refused = self._authenticate(request, host, conn)
        if refused is not None:
            return refused
        encrypted = request.mimetype == "multipart/encrypted"
        if encrypted:
            if conn.context is None:
                return HttpResponse("", status=400)
            try:
                message = decrypt_body(conn.context, body)
            except EncryptionError as exc:
                log.debug("%s: %s", host, exc)
                return HttpResponse("", status=400)
        else:
            if body and not self._tls and not self._allow_unencrypted:
                return self._unauthorized(host, "Unencrypted traffic is not allowed.")
            message = body
        if not message:
            return HttpResponse(b"", status=200)  # the empty POST that finishes NTLM set-up
        try:
            status, answer, script, action = self._dispatch(host, conn, request, message)
        except _Refused:
            return self._unauthorized(host)
        if action is not None:
            delay = self._strike("delay", host, action, script)
            if delay is not None:
                self._stopping.wait(delay.seconds)
            if self._strike("drop", host, action, script) is not None:
                self._record(Call(host, action, "dropped"))
                raise _Dropped
        if encrypted and conn.context is not None:
            payload = encrypt_body(conn.context, answer)
            return HttpResponse(payload, status=status, content_type=ENCRYPTED_CONTENT_TYPE)
        return HttpResponse(answer, status=status, content_type=_SOAP_CONTENT_TYPE)

    # -- SOAP ---------------------------------------------------------------------------

    def _dispatch(
        self, host: str, conn: ConnectionAuth, http: HttpRequest, message: bytes
    ) -> tuple[int, bytes, str | None, str | None]:
        """``(status, answer, script, action)``; never raises."""
        try:
            req = soap.parse_request(message)
        except soap.WSManFault as fault:
            self._record(Call(host, "invalid", "fault"))
            return 500, soap.fault_envelope(fault, relates_to=None, machine=host), None, None
        action = _ACTIONS.get(req.action)
        script: str | None = None
        try:
            if action is None:
                raise soap.WSManFault(
                    soap.CODE_ACTION_NOT_SUPPORTED,
                    "The WS-Management service does not support the action specified in the"
                    " request.",
                    subcode="a:ActionNotSupported",
                )
            if req.resource_uri != soap.RESOURCE_CMD:
                raise soap.WSManFault(
                    soap.CODE_RESOURCE_NOT_FOUND,
                    "The WS-Management service cannot process the request. The service cannot"
                    " find the resource identified by the resource URI and selectors.",
                    subcode="w:DestinationUnreachable",
                )
            script = self._script_of(req, action)
            if script is not None and self._strike("refuse_auth", host, None, script):
                self._record(Call(host, action, "refused", req.shell_id))
                conn.reset()
                raise _Refused
            if action == "Create":
                answer = self._create(host, conn, http, req)
            elif action == "Command":
                answer = self._command(host, req)
            elif action == "Receive":
                answer = self._receive(host, req)
            elif action == "Signal":
                answer = self._signal(host, req)
            else:
                answer = self._delete(host, req)
            return 200, answer, script, action
        except soap.WSManFault as fault:
            self._record(Call(host, action or "invalid", "fault", req.shell_id))
            envelope = soap.fault_envelope(fault, relates_to=req.message_id, machine=host)
            return 500, envelope, script, action

    def _script_of(self, req: soap.Request, action: str) -> str | None:
        with self._lock:
            shell = self._shells.get(req.shell_id or "")
        if shell is None:
            return None
        if action == "Command":
            try:
                return decode_command_line(req.command_line())
            except (_BadEncodedCommand, soap.WSManFault):
                return None
        if action == "Receive":
            command = shell.commands.get(req.receive_command_id())
            return command.script if command else None
        if action == "Signal":
            command = shell.commands.get(req.signal()[0])
            return command.script if command else None
        return shell.last_script

    def _shell_for(self, host: str, req: soap.Request) -> _Shell:
        shell_id = req.shell_id
        with self._lock:
            shell = self._shells.get(shell_id or "")
        if shell is None or shell.host != host:
            raise soap.WSManFault.not_found(f"ShellId {shell_id}")
        return shell

    def _create(
        self, host: str, conn: ConnectionAuth, http: HttpRequest, req: soap.Request
    ) -> bytes:
        shell_id = str(uuid.uuid4()).upper()
        codepage = req.options.get("WINRS_CODEPAGE", "437")
        with self._lock:
            self._shells[shell_id] = _Shell(shell_id, host, codepage)
        self._record(Call(host, "Create", "ok", shell_id))
        return soap.create_response(
            req,
            shell_id,
            address=f"{http.scheme}://{self._hosts.get(host, host)}/wsman",
            owner=conn.user or "",
            client_ip=http.remote_addr or "",
        )

    def _command(self, host: str, req: soap.Request) -> bytes:
        shell = self._shell_for(host, req)
        command_line = req.command_line()
        command_id = str(uuid.uuid4()).upper()
        bad_encoding = False
        try:
            script = decode_command_line(command_line)
        except _BadEncodedCommand:
            script, bad_encoding = command_line, True
        command = _Command(command_id, shell.id, host, script)
        hang = self._strike("hang", host, "Command", script)
        command.hung = hang is not None
        with self._lock:
            shell.commands[command_id] = command
            shell.last_script = script
        if bad_encoding:
            self._finish(command, Output(errors=[_BAD_ENCODING], exit_code=1))
        elif hang is None or hang.run:
            thread = threading.Thread(
                target=self._run, args=(command,), name=f"vmmove-winrm-ps-{host}", daemon=True
            )
            with self._lock:
                self._command_threads = [t for t in self._command_threads if t.is_alive()]
                self._command_threads.append(thread)
            thread.start()
        self._record(Call(host, "Command", "ok", shell.id, command_id))
        return soap.command_response(req, command_id)

    def _run(self, command: _Command) -> None:
        try:
            output = self._shell.run(command.host, command.script)
        except Exception as exc:
            # the emulation's bug, not a PowerShell error: kept for tests to see
            log.exception("PowerShell emulation failed on %s", command.host)
            self.emulation_errors.append(exc)
            output = Output(errors=[f"The emulation failed: {type(exc).__name__}"], exit_code=1)
        self._finish(command, output)

    def _finish(self, command: _Command, output: Output) -> None:
        with self._lock:
            command.output = output
            self._lock.notify_all()

    def _prepare(self, shell: _Shell, command: _Command) -> None:
        """Encode a finished command's output once, as powershell.exe would print it."""
        assert command.output is not None
        codec = _codec(shell.codepage)
        stdout = command.output.stdout.replace("\r\n", "\n").replace("\n", "\r\n")
        if stdout and not stdout.endswith("\r\n"):
            stdout += "\r\n"  # powershell.exe ends every line it prints
        stderr = clixml.encode_errors(command.output.errors, progress=self._progress)
        if stdout:
            command.pending.append(("stdout", stdout.encode(codec, errors="replace")))
        if stderr:
            command.pending.append(("stderr", stderr.encode(codec, errors="replace")))
        command.prepared = True

    def _receive(self, host: str, req: soap.Request) -> bytes:
        shell = self._shell_for(host, req)
        command_id = req.receive_command_id()
        command = shell.commands.get(command_id)
        if command is None:
            raise soap.WSManFault.not_found(f"ShellId {shell.id} and CommandId {command_id}")
        timeout = req.operation_timeout or _DEFAULT_OPERATION_TIMEOUT
        if self._cap is not None:
            timeout = min(timeout, self._cap)
        with self._lock:

            def ready() -> bool:
                return self._stopping.is_set() or (
                    not command.hung
                    and (command.output is not None or command.exit_override is not None)
                )

            self._lock.wait_for(ready, timeout)
            if self._stopping.is_set():
                raise _Dropped
            if not ready():
                self._calls.append(Call(host, "Receive", "timeout", shell.id, command_id))
                self._lock.notify_all()
                raise soap.WSManFault.timed_out()
            streams: list[tuple[str, bytes]] = []
            if command.exit_override is not None:
                exit_code, done = command.exit_override, True
            else:
                if not command.prepared:
                    self._prepare(shell, command)
                assert command.output is not None
                budget = max(1024, ((req.max_envelope_size or _DEFAULT_MAX_ENVELOPE) // 2) * 3 // 4)
                while command.pending and budget > 0:
                    name, data = command.pending[0]
                    piece, rest = data[:budget], data[budget:]
                    streams.append((name, piece))
                    budget -= len(piece)
                    if rest:
                        command.pending[0] = (name, rest)
                    else:
                        command.pending.pop(0)
                done = not command.pending
                exit_code = command.output.exit_code
            self._calls.append(
                Call(host, "Receive", "done" if done else "running", shell.id, command_id)
            )
            self._lock.notify_all()
        return soap.receive_response(req, command_id, streams, done=done, exit_code=exit_code)

    def _signal(self, host: str, req: soap.Request) -> bytes:
        shell = self._shell_for(host, req)
        command_id, code = req.signal()
        with self._lock:
            command = shell.commands.get(command_id)
            if command is None:
                raise soap.WSManFault.not_found(f"ShellId {shell.id} and CommandId {command_id}")
            if code == soap.SIGNAL_CTRL_C and command.output is None:
                command.exit_override = _CTRL_C_EXIT
                command.hung = False
                self._lock.notify_all()
            elif code != soap.SIGNAL_CTRL_C:
                del shell.commands[command_id]  # terminate: the process and its output go
        self._record(Call(host, "Signal", "ok", shell.id, command_id))
        return soap.empty_response(req)

    def _delete(self, host: str, req: soap.Request) -> bytes:
        shell = self._shell_for(host, req)
        with self._lock:
            self._shells.pop(shell.id, None)
        self._record(Call(host, "Delete", "ok", shell.id))
        return soap.empty_response(req)
