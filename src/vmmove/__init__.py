"""vmmove: move running virtual machines between hosts on any hypervisor through one API.

>>> import vmmove
>>> with vmmove.connect("sim://") as conn:
...     record = conn.migrate("web-1", to="host-b").wait()
...     record.phase
<Phase.COMPLETED: 'completed'>
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from vmmove.errors import (
    AuthenticationFailed,
    BackendNotFound,
    BackendProtocolError,
    Conflict,
    ConnectionFailed,
    InsecureConnectionWarning,
    InvalidInput,
    MigrationCancelled,
    MigrationError,
    MigrationFailed,
    MigrationTimedOut,
    NotFound,
    NotSupported,
    PostcopyFailed,
    PrecheckFailed,
    ReservationRefused,
    VMMoveError,
    WaitTimeout,
)

if TYPE_CHECKING:
    from vmmove.backend import Backend, Capabilities, Job, JobStatus, Reservation
    from vmmove.engine import Connection, Migration
    from vmmove.events import EventKind, MigrationEvent
    from vmmove.hookspecs import hookimpl
    from vmmove.machine import Phase, Side
    from vmmove.model import (
        Capacity,
        CpuInfo,
        Figures,
        HostInfo,
        HostState,
        MigrationMode,
        MigrationRecord,
        MigrationSpec,
        PowerState,
        Problem,
        Progress,
        Storage,
        VMInfo,
    )
    from vmmove.policy import PRESETS, Policy, Step
    from vmmove.secrets import Secret
    from vmmove.store import MemoryStore, RecordStore

# Everything but the errors loads on first use, so `import vmmove` (and `vmmove --help`)
# stay fast: name -> module that defines it.
_LAZY = {
    **dict.fromkeys(
        ("Backend", "Capabilities", "Job", "JobStatus", "Reservation"), "vmmove.backend"
    ),
    **dict.fromkeys(("Connection", "Migration"), "vmmove.engine"),
    **dict.fromkeys(("EventKind", "MigrationEvent"), "vmmove.events"),
    "hookimpl": "vmmove.hookspecs",
    **dict.fromkeys(("Phase", "Side"), "vmmove.machine"),
    **dict.fromkeys(
        (
            "Capacity", "CpuInfo", "Figures", "HostInfo", "HostState", "MigrationMode",
            "MigrationRecord", "MigrationSpec", "PowerState", "Problem", "Progress", "Storage",
            "VMInfo",
        ),
        "vmmove.model",
    ),
    **dict.fromkeys(("PRESETS", "Policy", "Step"), "vmmove.policy"),
    "Secret": "vmmove.secrets",
    **dict.fromkeys(("MemoryStore", "RecordStore"), "vmmove.store"),
}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vmmove' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "AuthenticationFailed",
    "Backend",
    "BackendNotFound",
    "BackendProtocolError",
    "Capabilities",
    "Capacity",
    "Conflict",
    "Connection",
    "ConnectionFailed",
    "CpuInfo",
    "EventKind",
    "Figures",
    "HostInfo",
    "HostState",
    "InsecureConnectionWarning",
    "InvalidInput",
    "Job",
    "JobStatus",
    "MemoryStore",
    "Migration",
    "MigrationCancelled",
    "MigrationError",
    "MigrationEvent",
    "MigrationFailed",
    "MigrationMode",
    "MigrationRecord",
    "MigrationSpec",
    "MigrationTimedOut",
    "NotFound",
    "NotSupported",
    "Phase",
    "Policy",
    "PostcopyFailed",
    "PowerState",
    "PrecheckFailed",
    "Problem",
    "Progress",
    "RecordStore",
    "Reservation",
    "ReservationRefused",
    "Secret",
    "Side",
    "Step",
    "Storage",
    "VMInfo",
    "VMMoveError",
    "WaitTimeout",
    "__version__",
    "attach",
    "connect",
    "hookimpl",
]

DEFAULT_URI = "sim://"


def connect(
    uri: str | None = None,
    *,
    store: RecordStore | None = None,
    max_concurrent: int | None = None,
    **options: Any,
) -> Connection:
    """Connect to the estate behind ``uri`` through the backend plugin for its scheme.

    ``uri`` defaults to ``$VMMOVE_URI``, then the embedded simulator (``sim://``).
    ``options`` go to the backend (credentials as :class:`Secret`, TLS settings...).
    """
    from vmmove.engine import Connection  # noqa: PLC0415 (loaded on first use)
    from vmmove.plugins import plugin_manager  # noqa: PLC0415

    uri = uri or os.environ.get("VMMOVE_URI") or DEFAULT_URI
    if not isinstance(uri, str):
        raise InvalidInput(f"a URI is a string, not {type(uri).__name__}")
    try:
        scheme = urlsplit(uri).scheme
    except ValueError as exc:
        raise InvalidInput(f"malformed URI: {exc}") from None
    if not scheme:
        raise InvalidInput(
            f"URI {uri!r} has no scheme; for example sim:// or qemu+tcp://host/system"
        )
    plugins = plugin_manager()
    estate = _redact(uri)
    backend = plugins.backends.get(scheme).factory(uri, options)
    return Connection(
        backend,
        uri=estate,
        plugins=plugins,
        store=_store_for(estate, store),
        max_concurrent=max_concurrent,
    )


def attach(
    record_id: str, *, uri: str | None = None, store: RecordStore | None = None, **options: Any
) -> Migration:
    """Pick up a migration whose client died, from the journal.

    ``uri`` defaults to the estate the record was written for (without credentials: pass
    them in ``options`` or the environment, as for :func:`connect`).
    """
    from vmmove.journal import Journal  # noqa: PLC0415

    journal = store if store is not None else Journal()
    if uri is None:
        if not isinstance(journal, Journal):
            raise InvalidInput("name the estate's uri: this store does not remember it")
        uri = journal.estate_of(record_id)
    conn = connect(uri, store=journal, **options)
    return conn.attach(record_id)


def _store_for(estate: str, store: RecordStore | None) -> RecordStore:
    """The journal by default (``VMMOVE_JOURNAL=off`` keeps records in memory only)."""
    from vmmove.journal import OFF, Journal  # noqa: PLC0415
    from vmmove.store import MemoryStore  # noqa: PLC0415

    if store is None:
        if os.environ.get("VMMOVE_JOURNAL", "").lower() in OFF:
            return MemoryStore()
        store = Journal()
    if isinstance(store, Journal) and not store.estate:
        return store.for_estate(estate)
    return store


def _redact(uri: str) -> str:
    """The URI without any password, for reprs, logs and records."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else host
    return parts._replace(netloc=netloc).geturl()
