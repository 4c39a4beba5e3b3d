"""vmmove: move running virtual machines between hosts on any hypervisor through one API.

>>> import vmmove
>>> with vmmove.connect("sim://") as conn:
...     record = conn.migrate("web-1", to="host-b").wait()
...     record.phase
<Phase.COMPLETED: 'completed'>
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Mapping
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
    from vmmove.backend import Backend, Capabilities, Intent, Job, JobRef, JobStatus, Reservation
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
    from vmmove.prediction import Prediction
    from vmmove.prediction import predict_migration as predict
    from vmmove.secrets import Secret
    from vmmove.store import MemoryStore, RecordStore

# Everything but the errors loads on first use, so `import vmmove` (and `vmmove --help`)
# stay fast: name -> module that defines it.
_LAZY = {
    **dict.fromkeys(
        ("Backend", "Capabilities", "Intent", "Job", "JobRef", "JobStatus", "Reservation"),
        "vmmove.backend",
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
    "Prediction": "vmmove.prediction",
    "predict": "vmmove.prediction:predict_migration",
    "Secret": "vmmove.secrets",
    **dict.fromkeys(("MemoryStore", "RecordStore"), "vmmove.store"),
}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vmmove' has no attribute {name!r}")
    module, _, attr = module.partition(":")  # "module:attr" where the names differ
    value = getattr(importlib.import_module(module), attr or name)
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
    "Intent",
    "InvalidInput",
    "Job",
    "JobRef",
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
    "Prediction",
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
    "predict",
]

DEFAULT_URI = "sim://"


def connect(
    uri: str | None = None,
    *,
    store: RecordStore | None = None,
    journal: str | None = None,
    max_concurrent: int | None = None,
    poll_grace: float | None = None,
    link_mib_s: float | None = None,
    **options: Any,
) -> Connection:
    """Connect to the estate behind ``uri`` through the backend plugin for its scheme.

    ``uri`` ``None`` means ``$VMMOVE_URI``, then the embedded simulator (``sim://``).
    ``store`` keeps the records (default: the journal); ``journal`` names the journal when
    no ``store`` is given (a SQLite path or a ``postgresql://`` URI; default
    ``$VMMOVE_JOURNAL``, then the SQLite file); ``max_concurrent`` (a positive
    int) caps how many migrations run at once; ``poll_grace`` (seconds, default 120) is how
    long the platform may stay unreachable, or a lost answer unexplained, before a
    migration is judged by the inventory alone; ``link_mib_s`` (MiB/s) declares the
    migration link between hosts whose platform does not report one, for predictions and the
    forecasts kept in records (default: 10 GbE). ``options`` go to the backend, which
    refuses any it does not know (credentials as :class:`Secret`, TLS settings...).

    Anything malformed raises :class:`InvalidInput` before a backend, a journal file or a
    record is touched.
    """
    from vmmove.engine import Connection  # noqa: PLC0415 (loaded on first use)
    from vmmove.plugins import load_plugins  # noqa: PLC0415

    uri = _check_uri(uri)
    _check_store(store)
    if journal is not None and (not isinstance(journal, str) or store is not None):
        raise InvalidInput("journal is a path or a postgresql:// URI, and not with store=")
    if max_concurrent is not None and (
        isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int)
    ):
        raise InvalidInput(
            f"max_concurrent is a positive int or None, not {type(max_concurrent).__name__}"
        )
    if max_concurrent is not None and max_concurrent < 1:
        raise InvalidInput(f"max_concurrent must be at least 1, not {max_concurrent}")
    if poll_grace is not None and (
        isinstance(poll_grace, bool)
        or not isinstance(poll_grace, int | float)
        or not 0 <= poll_grace < float("inf")
    ):
        raise InvalidInput(f"poll_grace is a number of seconds >= 0, not {poll_grace!r}")
    if link_mib_s is not None and (
        isinstance(link_mib_s, bool)
        or not isinstance(link_mib_s, int | float)
        or not 0 < link_mib_s < float("inf")
    ):
        raise InvalidInput(f"link_mib_s is a rate in MiB/s > 0, not {link_mib_s!r}")
    try:
        scheme = urlsplit(uri).scheme
    except ValueError as exc:
        raise InvalidInput(f"malformed URI: {exc}") from None
    if not scheme:
        raise InvalidInput(
            f"URI {uri!r} has no scheme; for example sim:// or qemu+tcp://host/system"
        )
    plugins = load_plugins()
    estate = _redact(uri)
    try:
        backend = plugins.backends.get(scheme).build(uri, options)
    except InvalidInput as exc:
        hint = _core_hint(options)
        if hint:
            raise InvalidInput(f"{exc}; {hint}") from None
        raise
    try:
        return Connection(
            backend,
            uri=estate,
            plugins=plugins,
            store=_store_for(estate, store, journal),
            max_concurrent=max_concurrent,
            **({} if poll_grace is None else {"poll_grace": float(poll_grace)}),
            link=None if link_mib_s is None else float(link_mib_s) * 2**20,
        )
    except BaseException:
        backend.close()  # nothing may stay open behind a refused connect
        raise


def attach(
    record_id: str, *, uri: str | None = None, store: RecordStore | None = None, **options: Any
) -> Migration:
    """Pick up a migration whose client died, from the journal.

    ``uri`` defaults to the estate the record was written for (without credentials: pass
    them in ``options`` or the environment, as for :func:`connect`).
    """
    from vmmove.journal import Journal, default_path  # noqa: PLC0415
    from vmmove.journals import is_postgres, journal_spec, open_journal  # noqa: PLC0415

    if not isinstance(record_id, str) or not record_id:
        raise InvalidInput("attach() takes a migration record id (a non-empty string)")
    if uri is not None:
        _check_uri(uri)
    _check_store(store)
    if store is None and is_postgres(journal_spec()):
        store = open_journal()
    if store is None:
        path = default_path()
        if not path.exists():  # no journal, no record: and creating one would be a change
            raise NotFound(f"no migration record {record_id!r}: there is no journal at {path}")
        journal: RecordStore = Journal(path)
    else:
        journal = store
    if uri is None:
        if not callable(getattr(journal, "estate_of", None)):
            raise InvalidInput("name the estate's uri: this store does not remember it")
        uri = journal.estate_of(record_id)  # type: ignore[attr-defined]
    conn = connect(uri, store=journal, **options)
    return conn.attach(record_id)


# The keyword arguments connect() itself takes; every other one is the backend's.
_CORE_OPTIONS = ("store", "journal", "max_concurrent", "poll_grace", "link_mib_s")


def _check_uri(uri: object) -> str:
    """``None`` -> ``$VMMOVE_URI`` (unset or empty: the simulator); anything else must be
    a non-empty string: ``""`` is a mistake, never a quiet request for the simulator."""
    if uri is None:
        return os.environ.get("VMMOVE_URI") or DEFAULT_URI
    if not isinstance(uri, str):
        raise InvalidInput(f"a URI is a string, not {type(uri).__name__}")
    if not uri.strip():
        raise InvalidInput(
            "the URI is empty; name the estate (sim://, qemu+tcp://host/system...) "
            "or pass None for $VMMOVE_URI, then sim://"
        )
    return uri


def _check_store(store: object) -> None:
    from vmmove.store import RecordStore  # noqa: PLC0415

    if store is None:
        return
    # RecordStore is a Protocol: check the methods the engine calls, by name.
    missing = [
        name
        for name in vars(RecordStore)
        if not name.startswith("_") and not callable(getattr(store, name, None))
    ]
    if missing:
        raise InvalidInput(
            f"store must be a vmmove.RecordStore (a Journal or a MemoryStore); "
            f"{type(store).__name__} has no {', '.join(sorted(missing))}"
        )


def _core_hint(options: Mapping[str, Any]) -> str:
    """A "did you mean max_concurrent?" hint when a refused backend option is a core keyword
    misspelt (the backend cannot know connect()'s own keywords)."""
    for name in options:
        close = difflib.get_close_matches(name, _CORE_OPTIONS, n=1, cutoff=0.8)
        if close:
            return f"did you mean connect(..., {close[0]}=...)?"
    return ""


def _store_for(estate: str, store: RecordStore | None, journal: str | None = None) -> RecordStore:
    """The journal by default (``VMMOVE_JOURNAL=off`` keeps records in memory only)."""
    from vmmove.journal import OFF  # noqa: PLC0415
    from vmmove.journals import open_journal  # noqa: PLC0415
    from vmmove.store import MemoryStore  # noqa: PLC0415

    if store is None:
        if (journal or os.environ.get("VMMOVE_JOURNAL", "")).lower() in OFF:
            return MemoryStore()
        store = open_journal(journal)
    for_estate = getattr(store, "for_estate", None)  # the SQLite and PostgreSQL journals
    if callable(for_estate) and not getattr(store, "estate", "x"):
        twin: RecordStore = for_estate(estate)
        return twin
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
