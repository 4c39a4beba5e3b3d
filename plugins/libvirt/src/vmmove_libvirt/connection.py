"""One libvirt host of a cluster: its connection, its identity, its cached static facts, and
the domain events it forwards to the backend.

Opening a host asks only for its name and libvirt's version. The host's capabilities (its
UUID and CPU) and the default QEMU's release are read on first use and kept: on a daemon that
has not probed its emulators yet, ``virConnectGetCapabilities`` and ``virConnectGetVersion``
(which builds the same capabilities) run every installed ``qemu-system-*`` binary to probe it
(1.4 s for the two on a test host here, 16.8 s on a host with more of them), and ``connect``
used to pay that. libvirt keeps the probe results on disk: later daemons and calls are quick.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from vmmove.errors import AuthenticationFailed, ConnectionFailed
from vmmove.secrets import Secret
from vmmove_libvirt.config import redact
from vmmove_libvirt.events import ensure_loop
from vmmove_libvirt.xmlinfo import HostFacts, host_facts, machine_version

__all__ = ["Emulator", "EventListener", "HostConn", "libvirt_error_code"]

log = logging.getLogger("vmmove.libvirt")

#: ``listener(host, domain_uuid, kind, payload)``; kind is "lifecycle" (payload (event,
#: detail)), "iteration" (payload: pass number) or "completed" (payload: final job stats).
EventListener = Callable[["HostConn", str, str, Any], None]

_AUTH_ERRORS = {45, 46}  # VIR_ERR_AUTH_FAILED, VIR_ERR_AUTH_CANCELLED


@dataclass(frozen=True, kw_only=True)
class Emulator:
    usable: bool
    version: tuple[int, int] | None
    error: str


def libvirt_error_code(exc: BaseException) -> int | None:
    get = getattr(exc, "get_error_code", None)
    return get() if callable(get) else None


class HostConn:
    """A libvirt connection to one host. ``id`` is the host's name as libvirt reports it
    (``virConnectGetHostname``), which the backend checks is unique in the cluster."""

    def __init__(
        self,
        lv: Any,
        uri: str,
        password: Secret | None,
        listener: EventListener,
        open_uri: str | None = None,
    ) -> None:
        self.lv = lv
        self.uri = uri  # as configured: what the host is known by
        self._open_uri = open_uri or uri  # what this client opens (the TLS settings added)
        self._password = password
        self._listener = listener
        self._lock = threading.Lock()
        self._emulators: dict[tuple[str, str, str], Emulator] = {}
        self._callbacks: list[int] = []
        self.conn: Any = None
        self.id = ""  # the host's id in the cluster: its hostname, unless another host has it
        self.hostname = ""
        self._facts: HostFacts | None = None
        self._facts_lock = threading.Lock()
        self.libvirt_version = ""
        self._hypervisor_version: str | None = None
        self._open()

    def __repr__(self) -> str:
        return f"<HostConn {self.id or '?'} {redact(self.uri)}>"

    # ---- connection ----------------------------------------------------------------------
    def _open(self) -> None:
        ensure_loop(self.lv)
        try:
            if self._password is None:
                conn = self.lv.open(self._open_uri)
            else:
                conn = self.lv.openAuth(self._open_uri, self._auth(), 0)
        except self.lv.libvirtError as exc:
            message = f"cannot connect to {redact(self.uri)}: {exc}"
            if "certificate" in str(exc).lower():
                # libvirt files a failed TLS check under AUTH_FAILED: it is not a credential.
                raise ConnectionFailed(
                    f"{message} (TLS: is the host's CA in tls_dir's cacert.pem?)"
                ) from None
            if libvirt_error_code(exc) in _AUTH_ERRORS:
                raise AuthenticationFailed(message) from None
            raise ConnectionFailed(message) from None
        try:
            hostname = conn.getHostname()
            lib = conn.getLibVersion()
            callbacks = [
                conn.domainEventRegisterAny(
                    None, self.lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
                ),
                conn.domainEventRegisterAny(
                    None, self.lv.VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION, self._on_iteration, None
                ),
                conn.domainEventRegisterAny(
                    None, self.lv.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, self._on_completed, None
                ),
            ]
        except self.lv.libvirtError as exc:
            conn.close()
            raise ConnectionFailed(f"{redact(self.uri)}: {exc}") from None
        except BaseException:  # e.g. capabilities it cannot parse: don't leak the connection
            conn.close()
            raise
        if self.hostname and hostname != self.hostname:
            log.warning("%s now calls itself %s, not %s", redact(self.uri), hostname, self.hostname)
        self.conn = conn
        self.id = self.id or hostname
        self.hostname = hostname
        self.libvirt_version = _version(lib)
        self._callbacks = callbacks

    def _auth(self) -> list[Any]:
        lv = self.lv
        user = unquote(urlsplit(self.uri).username or "")
        secret = self._password

        def answer(credentials: list[list[Any]], _data: Any) -> int:
            for cred in credentials:
                if cred[0] == lv.VIR_CRED_AUTHNAME:
                    cred[4] = user or cred[3]
                elif cred[0] == lv.VIR_CRED_PASSPHRASE and secret is not None:
                    cred[4] = secret.reveal()
                else:
                    return -1
            return 0

        return [[lv.VIR_CRED_AUTHNAME, lv.VIR_CRED_PASSPHRASE], answer, None]

    @property
    def facts(self) -> HostFacts:
        """The host's UUID and CPU, from its capabilities: read once, on first use (see the
        module docstring); :class:`ConnectionFailed` if the host cannot be asked."""
        with self._facts_lock:
            if self._facts is None:
                conn = self.ensure()
                try:
                    caps = conn.getCapabilities()
                except self.lv.libvirtError as exc:
                    raise ConnectionFailed(f"{redact(self.uri)}: {exc}") from None
                self._facts = host_facts(caps)
            return self._facts

    @property
    def hypervisor_version(self) -> str:
        """The release of the driver's default QEMU (read once; "" if it cannot be read)."""
        if self._hypervisor_version is None:
            try:
                self._hypervisor_version = _version(self.ensure().getVersion())
            except (self.lv.libvirtError, ConnectionFailed) as exc:
                log.debug("no QEMU release from %s: %s", redact(self.uri), exc)
                return ""
        return self._hypervisor_version

    @property
    def known_facts(self) -> HostFacts | None:
        """The facts if they were read already (never asks the host)."""
        return self._facts

    def alive(self) -> bool:
        try:
            return bool(self.conn is not None and self.conn.isAlive())
        except self.lv.libvirtError:
            return False

    def ensure(self) -> Any:
        """The live connection, reopened if it dropped; :class:`ConnectionFailed` if it can't be."""
        with self._lock:
            if not self.alive():
                log.info("reconnecting to %s", redact(self.uri))
                self._close_quietly()
                self._open()
            return self.conn

    def close(self) -> None:
        with self._lock:
            self._close_quietly()

    def _close_quietly(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        for cb in self._callbacks:
            with contextlib.suppress(self.lv.libvirtError):
                conn.domainEventDeregisterAny(cb)
        self._callbacks = []
        with contextlib.suppress(self.lv.libvirtError):
            conn.close()

    # ---- lookups ---------------------------------------------------------------------------
    def domain(self, uuid: str) -> Any | None:
        """The domain with this UUID on this host, or ``None``."""
        conn = self.ensure()
        try:
            return conn.lookupByUUIDString(uuid)
        except self.lv.libvirtError as exc:
            if libvirt_error_code(exc) == self.lv.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def domain_named(self, name: str) -> Any | None:
        conn = self.ensure()
        try:
            return conn.lookupByName(name)
        except self.lv.libvirtError as exc:
            if libvirt_error_code(exc) == self.lv.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def emulator(self, emulator: str, arch: str, virt_type: str) -> Emulator:
        """Whether this host can run ``emulator`` for ``arch``/``virt_type``, and its QEMU
        release (from the domain capabilities, else the driver's default); cached."""
        key = (emulator, arch, virt_type)
        if key not in self._emulators:
            conn = self.ensure()
            try:
                caps = conn.getDomainCapabilities(emulator or None, arch or None, None, virt_type)
            except self.lv.libvirtError as exc:
                return Emulator(usable=False, version=None, error=str(exc))  # not cached
            version = machine_version(caps)
            if version is None and self.hypervisor_version:
                major, minor = self.hypervisor_version.split(".")[:2]
                version = (int(major), int(minor))
            self._emulators[key] = Emulator(usable=True, version=version, error="")
        return self._emulators[key]

    # ---- events (called on the event loop's thread: never raise) --------------------------
    def _forward(self, dom: Any, kind: str, payload: Any) -> None:
        try:
            self._listener(self, dom.UUIDString(), kind, payload)
        except Exception:
            log.exception("handling a libvirt %s event failed", kind)

    def _on_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        self._forward(dom, "lifecycle", (event, detail))

    def _on_iteration(self, _conn: Any, dom: Any, iteration: int, _opaque: Any) -> None:
        self._forward(dom, "iteration", iteration)

    def _on_completed(self, _conn: Any, dom: Any, params: dict[str, Any], _opaque: Any) -> None:
        self._forward(dom, "completed", dict(params))


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"
