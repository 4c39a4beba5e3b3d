"""One authenticated SOAP session with a vCenter: connect, log in, call, retrieve, log out.

pyVmomi is imported here, and only when a session connects. Every call goes through
:meth:`Session.call`, which turns transport failures into :class:`ConnectionFailed` (with
the reason: refused, timed out, certificate verify failed, 503 while vCenter restarts...)
and logs in again once, with the stored credentials, when the session is gone
(``NotAuthenticated``: it expired, or vCenter restarted). vSphere faults pass through for
the caller to map (see :mod:`vmmove_vsphere.faults`).

Property reads never drop ``missingSet``: vCenter answers ``RetrievePropertiesEx`` of a
dead session with a ``NotAuthenticated`` fault per property instead of a fault of the call
(govmomi's client treats any missingSet entry as the read's error, ``mo.ObjectContentToType``).
Those log in again and read again; any other missing property is a ConnectionFailed that
names the fault, never an object that silently lacks the property.
"""

from __future__ import annotations

import datetime
import http.client
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from vmmove.errors import AuthenticationFailed, ConnectionFailed
from vmmove_vsphere.faults import fault_text, is_fault
from vmmove_vsphere.options import Settings
from vmmove_vsphere.tls import describe_tls_error, ssl_context

__all__ = ["Session", "vmomi"]

log = logging.getLogger("vmmove.vsphere")

T = TypeVar("T")


def vmomi() -> tuple[Any, Any]:
    """``(vim, vmodl)``, imported on first use. Typed ``Any``: pyVmomi's types are partial."""
    from pyVmomi import vim, vmodl  # noqa: PLC0415 (lazy: importing pyVmomi costs ~0.3 s)

    return vim, vmodl


class Session:
    """A logged-in session; thread-safe (pyVmomi's stub pools its HTTP connections)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.vim, self.vmodl = vmomi()
        self._lock = threading.Lock()
        self._stub: Any = None
        self.si: Any = None
        self.content: Any = None
        self._generation = 0  # bumped at each login: objects tied to a session are re-made
        self._closed = False
        self.clock_skew = 0.0  # vCenter's clock minus ours, in seconds, measured at login

    def __repr__(self) -> str:
        return f"<vmmove_vsphere.Session {self.settings.display()}>"

    # ---- connect / login -------------------------------------------------------------------
    def connect(self) -> None:
        """Open the connection and log in; raise ConnectionFailed / AuthenticationFailed."""
        from pyVim import connect  # noqa: PLC0415

        smart_stub: Any = connect.SmartStubAdapter  # untyped in pyVim
        s = self.settings
        ctx = ssl_context(s)
        try:
            # Reach the port first, within the timeout: pyVim's API-version probe has none.
            socket.create_connection((s.host, s.port), timeout=s.timeout).close()
            stub = smart_stub(
                host=s.host,
                port=s.port,
                sslContext=ctx,
                httpConnectionTimeout=s.timeout,
            )
        except Exception as exc:
            raise self._connection_error(exc) from None
        self._stub = stub
        self.si = self.vim.ServiceInstance("ServiceInstance", stub)
        self.content = self._transport(self.si.RetrieveContent)
        self._login()

    def _login(self) -> None:
        s = self.settings
        try:
            self._transport(
                self.content.sessionManager.Login, s.username, s.password.reveal(), None
            )
        except self.vmodl.MethodFault as fault:
            if is_fault(fault, "InvalidLogin", "NotAuthenticated", "NoPermission"):
                raise AuthenticationFailed(
                    f"{s.display()}: the server refused the credentials of {s.username} "
                    f"({fault_text(fault)})"
                ) from None
            raise ConnectionFailed(f"{s.display()}: login failed: {fault_text(fault)}") from None
        self._generation += 1
        self._measure_skew()
        about = self.content.about
        log.info("connected to %s (%s, API %s)", s.display(), about.fullName, about.apiVersion)

    def _measure_skew(self) -> None:
        """vCenter's clock against ours: task times are the server's, an intent's time ours."""
        try:
            before = time.time()
            server = self._transport(self.si.CurrentTime)
            after = time.time()
        except Exception:  # an old endpoint without it: assume the clocks agree
            log.debug("reading the server time failed", exc_info=True)
            return
        if isinstance(server, datetime.datetime):
            if server.tzinfo is None:
                server = server.replace(tzinfo=datetime.UTC)
            self.clock_skew = server.timestamp() - (before + after) / 2

    def server_time(self, local: float | None = None) -> datetime.datetime:
        """A local time (default: now) on vCenter's clock, as an aware datetime."""
        moment = (time.time() if local is None else local) + self.clock_skew
        return datetime.datetime.fromtimestamp(moment, tz=datetime.UTC)

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def stub(self) -> Any:
        return self._stub

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.content is not None:
                self.content.sessionManager.Logout()
        except Exception:  # best effort: the session expires on the server anyway
            log.debug("logout from %s failed", self.settings.display(), exc_info=True)
        finally:
            drop = getattr(self._stub, "DropConnections", None)
            if drop is not None:
                drop()

    # ---- calls -------------------------------------------------------------------------------
    def _connection_error(self, exc: BaseException) -> ConnectionFailed:
        where = self.settings.display()
        if isinstance(exc, ssl.SSLError | ssl.CertificateError):
            return ConnectionFailed(f"{where}: {describe_tls_error(exc)}")
        if isinstance(exc, TimeoutError):
            return ConnectionFailed(f"{where}: timed out after {self.settings.timeout:g} s")
        if isinstance(exc, ConnectionRefusedError):
            return ConnectionFailed(f"{where}: connection refused")
        if isinstance(exc, OSError):
            return ConnectionFailed(f"{where}: {exc.strerror or exc}")
        if isinstance(exc, http.client.HTTPException):
            return ConnectionFailed(f"{where}: HTTP error: {type(exc).__name__}: {exc}")
        return ConnectionFailed(f"{where}: {type(exc).__name__}: {exc}")

    def _transport(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn``; vSphere faults pass through, anything else is a ConnectionFailed."""
        if self._closed:
            raise ConnectionFailed(f"{self.settings.display()}: the connection is closed")
        try:
            return fn(*args, **kwargs)
        except self.vmodl.MethodFault:
            raise
        except Exception as exc:
            raise self._connection_error(exc) from None

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (a closure over pyVmomi calls); log in again once if the session is
        gone (expired, or vCenter restarted). ``fn`` is re-run after a re-login, so it must be
        safe to repeat: a call the server refused as NotAuthenticated did nothing."""
        generation = self._generation
        try:
            return self._transport(fn)
        except self.vim.fault.NotAuthenticated:
            with self._lock:
                if self._closed:  # logged out on purpose: never log in again behind close()
                    raise ConnectionFailed(
                        f"{self.settings.display()}: the connection is closed"
                    ) from None
                if self._generation == generation:
                    log.info(
                        "session with %s is gone (expired, or vCenter restarted); logging in again",
                        self.settings.display(),
                    )
                    self._login()
        try:
            return self._transport(fn)
        except self.vim.fault.NotAuthenticated as fault:
            raise ConnectionFailed(
                f"{self.settings.display()}: still not authenticated after logging in again "
                f"({fault_text(fault)})"
            ) from None

    # ---- property collector ------------------------------------------------------------------
    def retrieve(self, filters: Iterable[Any]) -> list[tuple[Any, dict[str, Any]]]:
        """``RetrievePropertiesEx`` over ``filters`` (FilterSpecs), all pages:
        ``[(managed object, {property path: value})]``."""
        pc = self.vmodl.query.PropertyCollector
        specs = list(filters)

        def run() -> list[tuple[Any, dict[str, Any]]]:
            collector = self.content.propertyCollector
            out: list[tuple[Any, dict[str, Any]]] = []
            result = collector.RetrievePropertiesEx(specs, pc.RetrieveOptions(maxObjects=1000))
            while result is not None:
                for item in result.objects or ():
                    self._check_missing(item)
                    out.append((item.obj, {p.name: p.val for p in item.propSet or ()}))
                if not result.token:
                    break
                result = collector.ContinueRetrievePropertiesEx(result.token)
            return out

        return self.call(run)

    def _check_missing(self, item: Any) -> None:
        """Raise what an object's ``missingSet`` says: a NotAuthenticated fault as itself (so
        :meth:`call` logs in again and reads again), anything else as ConnectionFailed."""
        missing = [m for m in item.missingSet or () if getattr(m, "fault", None) is not None]
        if not missing:
            return
        for m in missing:
            if isinstance(m.fault, self.vim.fault.NotAuthenticated):
                raise m.fault
        first = missing[0]
        what = getattr(item.obj, "_moId", "?")
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConnectionFailed(
            f"{self.settings.display()}: vSphere could not read {first.path!r} of {what}: "
            f"{fault_text(first.fault)}{more}"
        )

    def object_filter(self, obj: Any, kind: Any, paths: list[str]) -> Any:
        """A FilterSpec for properties of one object."""
        pc = self.vmodl.query.PropertyCollector
        return pc.FilterSpec(
            objectSet=[pc.ObjectSpec(obj=obj, skip=False)],
            propSet=[pc.PropertySpec(type=kind, pathSet=paths)],
            reportMissingObjectsInResults=True,
        )

    def objects_filter(self, objs: Iterable[Any], kind: Any, paths: list[str]) -> Any:
        """A FilterSpec for properties of several objects of one type; objects that no longer
        exist are left out of the result rather than failing the read."""
        pc = self.vmodl.query.PropertyCollector
        return pc.FilterSpec(
            objectSet=[pc.ObjectSpec(obj=obj, skip=False) for obj in objs],
            propSet=[pc.PropertySpec(type=kind, pathSet=paths)],
            reportMissingObjectsInResults=True,
        )

    def view_filter(self, view: Any, props: dict[Any, list[str]]) -> Any:
        """A FilterSpec for properties of every object in a ContainerView, by type."""
        pc = self.vmodl.query.PropertyCollector
        traverse = pc.TraversalSpec(
            name="view", type=self.vim.view.ContainerView, path="view", skip=False
        )
        return pc.FilterSpec(
            objectSet=[pc.ObjectSpec(obj=view, skip=True, selectSet=[traverse])],
            propSet=[pc.PropertySpec(type=kind, pathSet=paths) for kind, paths in props.items()],
        )

    def task_info(self, task: Any) -> Any:
        return self.call(lambda: task.info)

    def wait_task(self, task: Any, timeout: float) -> Any:
        """Poll a (short) task until it ends; its ``TaskInfo``. ``TimeoutError`` after
        ``timeout`` seconds (the task is left running)."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            info = self.task_info(task)
            if info.state in ("success", "error"):
                return info
            if time.monotonic() + delay > deadline:
                raise TimeoutError(f"task {task._moId} still {info.state} after {timeout:g} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
