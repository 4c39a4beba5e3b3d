"""One bounded PowerShell call over WinRM: the only place that talks to pywinrm.

pywinrm's own ``run_ps`` retries a Receive that answers WSManFault 2150858793 ("no output
yet") forever, so a command that hangs on the host hangs the caller. Here every call has

- an operation timeout (WS-Management ``OperationTimeout``: how long one Receive may wait
  for output before the host answers "nothing yet"),
- an HTTP read timeout a little longer than that (a host that stops answering at all),
- a wall-clock deadline for the whole call (Create, Command, every Receive, Signal,
  Delete): past it the call ends in :class:`~vmmove.ConnectionFailed` naming the host and
  the command, never the password.

Each call is a new shell and a new PowerShell process (``-EncodedCommand``); nothing is
assumed to survive between calls. The HTTP session (and its NTLM/Kerberos context) is
reused, one per concurrent caller. ``winrm`` is imported on the first call.
"""

from __future__ import annotations

import base64
import contextlib
import math
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from vmmove.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    InsecureConnectionWarning,
    InvalidInput,
)
from vmmove.secrets import Secret
from vmmove_hyperv import clixml

__all__ = ["Reply", "ScriptFailed", "Settings", "WinRMClient", "WinRMProtocol"]

T = TypeVar("T")
TRANSPORTS = ("ntlm", "kerberos", "credssp", "ssl", "basic")
#: seconds a best-effort Signal/Delete may take after a call gave up
_CLEANUP_SECONDS = 1


class WinRMProtocol(Protocol):
    """What is used of ``winrm.protocol.Protocol`` (a test double implements the same)."""

    def open_shell(self, *, codepage: int = 437) -> str: ...

    def run_command(self, shell_id: str, command: str) -> str: ...

    def get_command_output_raw(
        self, shell_id: str, command_id: str
    ) -> tuple[bytes, bytes, int, bool]: ...

    def cleanup_command(self, shell_id: str, command_id: str) -> None: ...

    def close_shell(self, shell_id: str, close_session: bool = True) -> None: ...


class ScriptFailed(ConnectionFailed):
    """The script ran and PowerShell reported errors (``messages``, from CLIXML)."""

    def __init__(self, message: str, messages: list[str]) -> None:
        super().__init__(message)
        self.messages = messages


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    transport: str = "ntlm"
    username: str = ""
    password: Secret | None = None
    port: int | None = None
    https: bool = False
    insecure: bool = False
    ca_trust_path: str | None = None
    operation_timeout: float = 20.0
    call_timeout: float = 60.0
    shell: str = "powershell"

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise InvalidInput(f"transport {self.transport!r}: one of {', '.join(TRANSPORTS)}")
        if self.operation_timeout < 1:
            raise InvalidInput("operation_timeout is at least 1 s (WS-Management counts seconds)")
        if self.call_timeout < self.operation_timeout:
            raise InvalidInput("call_timeout must be at least operation_timeout")

    @property
    def tls(self) -> bool:
        return self.https or self.transport == "ssl"

    def check(self) -> None:
        """Refuse what would send credentials in the clear; warn about what skips checks."""
        if self.transport == "basic" and not self.tls:
            if not self.insecure:
                raise InvalidInput(
                    "basic authentication over plain HTTP sends the password readable by "
                    "anyone on the path (and needs AllowUnencrypted on the host): use "
                    "transport=ntlm (encrypted messages), kerberos, credssp or ssl, or pass "
                    "insecure=true to do it anyway"
                )
            warnings.warn(
                "hyperv: basic authentication over plain HTTP (insecure=true): the password "
                "and every command cross the network unencrypted",
                InsecureConnectionWarning,
                stacklevel=4,
            )
        elif self.insecure and self.tls:
            warnings.warn(
                "hyperv: the host's TLS certificate is not verified (insecure=true)",
                InsecureConnectionWarning,
                stacklevel=4,
            )
        if self.transport in ("ntlm", "kerberos", "credssp", "basic", "ssl") and not (
            self.username or self.transport == "kerberos"
        ):
            raise InvalidInput(f"transport {self.transport} needs a user name")


@dataclass(frozen=True, slots=True)
class Reply:
    stdout: str
    errors: list[str]
    warnings: list[str]
    exit_code: int


ProtocolFactory = Callable[[str, Settings, float], WinRMProtocol]


class WinRMClient:
    """Runs scripts on one host (``address`` is ``name`` or ``name:port``)."""

    def __init__(
        self, address: str, settings: Settings, *, factory: ProtocolFactory | None = None
    ) -> None:
        self.address = address
        self.settings = settings
        self._factory = factory or _pywinrm_protocol
        self._idle: list[WinRMProtocol] = []
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"WinRMClient({self.address!r}, transport={self.settings.transport!r})"

    @property
    def endpoint(self) -> str:
        return endpoint(self.address, self.settings)

    # ---- the call -----------------------------------------------------------------------
    def run(self, script: str, what: str, *, timeout: float | None = None) -> Reply:
        """Run ``script`` in a new PowerShell process; ``what`` names it in errors."""
        limit = self.settings.call_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        proto = self._take(limit)
        healthy = False
        try:
            reply = self._run(proto, script, what, deadline, limit)
            healthy = True
            return reply
        finally:
            self._give(proto, healthy)

    def _run(
        self, proto: WinRMProtocol, script: str, what: str, deadline: float, limit: float
    ) -> Reply:
        from winrm.exceptions import WinRMOperationTimeoutError  # noqa: PLC0415

        # UTF-8 output (65001): names with accents survive; the default 437 turns them into '?'.
        shell = self._step(proto, what, deadline, limit, lambda: proto.open_shell(codepage=65001))
        command = self._step(
            proto,
            what,
            deadline,
            limit,
            lambda: proto.run_command(shell, command_line(script, self.settings.shell)),
        )
        out: list[bytes] = []
        err: list[bytes] = []
        code = -1
        while True:
            try:
                o, e, code, done = self._step(
                    proto,
                    what,
                    deadline,
                    limit,
                    lambda: proto.get_command_output_raw(shell, command),
                )
            except WinRMOperationTimeoutError:
                done = False  # "no output yet": ask again while the deadline allows
            else:
                out.append(o)
                err.append(e)
            if done:
                break
            if time.monotonic() >= deadline:
                self._abandon(proto, shell, command)
                raise self._hung(what, limit)
        self._abandon(proto, shell, command)
        errors = clixml.parse(_text(b"".join(err)))
        return Reply(
            stdout=_text(b"".join(out)),
            errors=[self._scrub(m) for m in errors.errors],
            warnings=[self._scrub(m) for m in errors.warnings],
            exit_code=code,
        )

    def run_checked(self, script: str, what: str, *, timeout: float | None = None) -> str:
        """stdout of a script that must succeed; PowerShell's errors raise ScriptFailed."""
        reply = self.run(script, what, timeout=timeout)
        if reply.exit_code != 0 or reply.errors:
            shown = "; ".join(reply.errors) or f"exit code {reply.exit_code}"
            raise ScriptFailed(f"{self.address}: {what} failed: {shown[:800]}", reply.errors)
        return reply.stdout

    # ---- one HTTP exchange, bounded -----------------------------------------------------
    def _step(
        self,
        proto: WinRMProtocol,
        what: str,
        deadline: float,
        limit: float,
        call: Callable[[], T],
    ) -> T:
        from winrm.exceptions import WinRMOperationTimeoutError  # noqa: PLC0415

        left = deadline - time.monotonic()
        if left <= 0:
            raise self._hung(what, limit)
        _bound(proto, self.settings.operation_timeout, left)
        try:
            return call()
        except WinRMOperationTimeoutError:
            raise
        except ConnectionFailed:
            raise
        except Exception as exc:  # every library error becomes a vmmove error
            raise self._translate(exc, what, limit) from None

    def _translate(self, exc: Exception, what: str, limit: float) -> ConnectionFailed:
        import requests  # noqa: PLC0415
        from winrm import exceptions as wx  # noqa: PLC0415

        host = self.address
        if isinstance(exc, wx.InvalidCredentialsError | wx.AuthenticationError):
            user = self.settings.username or "(the Kerberos ticket's user)"
            return AuthenticationFailed(
                f"{host}: WinRM refused the credentials of {user} ({self.settings.transport})"
            )
        if isinstance(exc, wx.WSManFaultError):
            return ConnectionFailed(
                f"{host}: {what}: WS-Management fault {exc.wsman_fault_code or exc.code}: "
                f"{self._scrub(str(exc.reason))[:300]}"
            )
        if isinstance(exc, wx.WinRMTransportError):
            if exc.code == 401:
                return AuthenticationFailed(f"{host}: WinRM refused the credentials (HTTP 401)")
            return ConnectionFailed(f"{host}: {what}: WinRM answered HTTP {exc.code}")
        if isinstance(exc, requests.exceptions.Timeout):
            return self._hung(what, limit)
        if isinstance(exc, requests.exceptions.SSLError):
            return ConnectionFailed(
                f"{host}: the TLS certificate was not accepted ({self._scrub(str(exc))[:200]}); "
                "give the CA with ca_trust_path, or insecure=true to skip the check"
            )
        if isinstance(exc, requests.exceptions.RequestException):
            return ConnectionFailed(
                f"{host}: {what}: cannot reach WinRM at {self.endpoint} ({type(exc).__name__})"
            )
        if isinstance(exc, wx.WinRMError) and "not installed" in str(exc):
            return ConnectionFailed(
                f"{host}: transport {self.settings.transport} needs an extra package: "
                f"{self._scrub(str(exc))}"
            )
        return ConnectionFailed(
            f"{host}: {what}: {type(exc).__name__}: {self._scrub(str(exc))[:300]}"
        )

    def _hung(self, what: str, limit: float) -> ConnectionFailed:
        return ConnectionFailed(
            f"{self.address}: the command {what} did not finish within {limit:g} s "
            f"(WinRM operation timeout {self.settings.operation_timeout:g} s); it may still "
            "be running on the host"
        )

    def _scrub(self, text: str) -> str:
        password = self.settings.password.reveal() if self.settings.password else ""
        return text.replace(password, "********") if password else text

    # ---- sessions -----------------------------------------------------------------------
    def _take(self, limit: float) -> WinRMProtocol:
        with self._lock:
            if self._closed:
                raise ConnectionFailed(f"{self.address}: the connection is closed")
            if self._idle:
                return self._idle.pop()
        try:
            return self._factory(self.endpoint, self.settings, limit)
        except (InvalidInput, ConnectionFailed):
            raise
        except Exception as exc:
            raise self._translate(exc, "connect", limit) from None

    def _give(self, proto: WinRMProtocol, healthy: bool) -> None:
        with self._lock:
            if healthy and not self._closed:
                self._idle.append(proto)
                return
        _close(proto)

    def _abandon(self, proto: WinRMProtocol, shell: str, command: str) -> None:
        """Signal and Delete, briefly: the host cleans up after a shell we give up on."""
        _bound(proto, 1, _CLEANUP_SECONDS)
        # Best effort: the host reaps idle shells itself.
        with contextlib.suppress(Exception):
            proto.cleanup_command(shell, command)
        with contextlib.suppress(Exception):
            proto.close_shell(shell, close_session=False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for proto in idle:
            _close(proto)


def endpoint(address: str, settings: Settings) -> str:
    scheme = "https" if settings.tls else "http"
    if address.startswith("[") or address.count(":") == 1:
        hostport = address  # already has its port (or is a bracketed IPv6 address)
        if settings.port is not None and address.count(":") == 1:
            hostport = address.rsplit(":", 1)[0] + f":{settings.port}"
    else:
        hostport = address
    if ":" not in hostport.rsplit("]", 1)[-1]:
        hostport += f":{settings.port or (5986 if settings.tls else 5985)}"
    return f"{scheme}://{hostport}/wsman"


def command_line(script: str, shell: str = "powershell") -> str:
    """The command line of one PowerShell process running ``script``."""
    encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
    return f"{shell} -NoProfile -NonInteractive -EncodedCommand {encoded}"


def _text(data: bytes) -> str:
    # The console code page of a Windows host is not UTF-8 everywhere; never fail on it.
    return data.decode("utf-8", errors="replace")


def _bound(proto: Any, operation_timeout: float, left: float) -> None:
    """Fit one exchange's timeouts inside what is left of the call's deadline."""
    transport = getattr(proto, "transport", None)
    read = max(1, math.ceil(min(left, operation_timeout + 5)))
    if transport is not None and hasattr(transport, "read_timeout_sec"):
        transport.read_timeout_sec = read
    if hasattr(proto, "operation_timeout_sec"):
        proto.operation_timeout_sec = max(1, min(int(operation_timeout), read - 1 or 1))


def _close(proto: WinRMProtocol) -> None:
    transport = getattr(proto, "transport", None)
    if transport is not None and hasattr(transport, "close_session"):
        with contextlib.suppress(Exception):  # closing: nothing left to tell
            transport.close_session()


def _pywinrm_protocol(url: str, settings: Settings, limit: float) -> WinRMProtocol:
    from winrm.protocol import Protocol as PyWinRM  # noqa: PLC0415 (loaded on first use)

    operation = max(1, int(settings.operation_timeout))
    transport: Any = settings.transport
    # None: the system's CAs only (not pywinrm's legacy environment lookup).
    ca: Any = settings.ca_trust_path or None
    return PyWinRM(
        endpoint=url,
        transport=transport,
        username=settings.username or None,
        password=settings.password.reveal() if settings.password else None,
        server_cert_validation="ignore" if settings.insecure else "validate",
        ca_trust_path=ca,
        read_timeout_sec=operation + 5,
        operation_timeout_sec=operation,
        # NTLM over plain HTTP: every message encrypted (pywinrm does it over HTTP by default
        # too; "always" makes a transport that cannot encrypt an error, not clear text).
        message_encryption="always"
        if settings.transport in ("ntlm", "credssp") and not settings.tls
        else "auto",
        proxy=None,
    )
