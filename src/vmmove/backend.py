"""The contract between the engine and a hypervisor backend.

A backend is a thin adapter: it lists inventory, runs platform pre-checks, and starts,
polls, tunes and aborts *jobs*. Everything true of every hypervisor (the state machine,
policy, progress smoothing, timeouts, records, placement) lives in the engine.

Every method must answer promptly: one supervisor loop drives thousands of migrations.
A platform call that blocks (libvirt's ``migrateToURI3``) runs in the backend's own
worker while ``poll`` answers from the latest sample.

Capabilities are declared data, never discovered by trying: the engine skips (and
records) any policy step whose capability is not declared.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import ClassVar, Protocol, TypeVar

from vmmove.clock import Clock, RealClock
from vmmove.errors import NotFound, NotSupported
from vmmove.machine import Phase
from vmmove.model import Figures, HostInfo, MigrationMode, MigrationSpec, Problem, VMInfo
from vmmove.policy import Action, Policy
from vmmove.prediction import POSTCOPY_PAUSE_S, SWITCH_OVERHEAD_S

__all__ = [
    "Backend",
    "Capabilities",
    "Intent",
    "Job",
    "JobRef",
    "JobStatus",
    "Reservation",
    "lookup",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class Capabilities:
    live: bool = True
    cold: bool = True
    cancel: bool = True  # abort a running job before its commit point
    postcopy: bool = False
    max_downtime: bool = False
    bandwidth: bool = False
    auto_converge: bool = False
    compression: bool = False
    #: the job reports auto-converge's throttle (``JobStatus.throttle``), so the engine
    #: can hold the caller's ``max_slowdown``
    max_slowdown: bool = False
    progress_bytes: bool = False  # poll reports byte counts, not only a percentage
    reserve: bool = False  # the target reserves resources before the transfer starts
    storage_move: bool = False
    choose_target: bool = True  # the caller may name the target host
    #: the backend supplies power_off/relocate/power_on and the core orchestrates cold
    #: migration (vmmove.engine.cold); without it a cold move is one start(mode=COLD) job
    relocate_stopped: bool = False

    def has(self, name: str) -> bool:
        return bool(getattr(self, name, False))

    @staticmethod
    def describe(name: str) -> str:
        """What the capability ``name`` means, in a few words (docs and ``vmmove backends``)."""
        return _CAPABILITY_DOCS[name]

    def names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name)]


_CAPABILITY_DOCS = {
    "live": "live migration (the VM runs throughout)",
    "cold": "cold migration (stop, move, start)",
    "cancel": "a running migration can be cancelled before its commit point",
    "postcopy": "switch to post-copy",
    "max_downtime": "set the allowed switch-over pause",
    "bandwidth": "limit the migration's bandwidth",
    "auto_converge": "throttle the guest's vCPUs to converge",
    "compression": "send re-dirtied pages as deltas (XBZRLE)",
    "max_slowdown": "hold a limit on the guest's throttle (the job reports it)",
    "progress_bytes": "progress in bytes (not only a percentage)",
    "reserve": "the target reserves resources before the transfer",
    "storage_move": "move disks with the VM",
    "choose_target": "the caller names the target host",
    "relocate_stopped": "cold moves driven by the core from the backend's primitives",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Reservation:
    id: str
    host: str
    memory: int
    cpus: int


class Intent(StrEnum):
    """What a saved :class:`JobRef` stands for."""

    #: a job the platform acknowledged: ``JobRef.data`` is the backend's own reference
    JOB = "job"
    #: a start (or a cold move's relocate) request whose answer was not seen: the client
    #: died inside the call, or the answer was lost; ``attach`` finds the job by its id
    START = "start"


def _no_data() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True, slots=True)
class JobRef:
    """How :meth:`Backend.attach` finds a job again, from a durable record.

    A backend builds ``JobRef(data={...})`` for the jobs it starts (plain strings it chooses:
    a task id, a migration name). The engine builds the ``START`` kind before it calls
    :meth:`Backend.start` or :meth:`Backend.relocate`, and saves either in the record
    (:meth:`dump`, read back with :meth:`load`).
    """

    intent: Intent = Intent.JOB
    data: Mapping[str, str] = field(default_factory=_no_data)
    # set on a START reference: what was asked, and when (the connection clock's time)
    request_id: str = ""
    vm: str = ""
    target: str = ""
    mode: MigrationMode | None = None
    at: float | None = None

    def __post_init__(self) -> None:
        data = dict(self.data)
        bad = [k for k, v in data.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad or "intent" in data:
            raise ValueError(f"JobRef data must map text to text, without 'intent': {bad}")
        object.__setattr__(self, "data", MappingProxyType(data))

    @classmethod
    def start(
        cls, *, request_id: str, vm: str, target: str, mode: MigrationMode, at: float | None
    ) -> JobRef:
        return cls(
            intent=Intent.START, request_id=request_id, vm=vm, target=target, mode=mode, at=at
        )

    def get(self, key: str, default: str = "") -> str:
        """One of the backend's own keys (``data``)."""
        return self.data.get(key, default)

    def dump(self) -> dict[str, str]:
        """The record's ``job_ref``: text only, as journals store it."""
        if self.intent is Intent.JOB:
            return dict(self.data)  # a job's reference is the backend's keys alone
        return {
            "intent": self.intent.value,
            "request_id": self.request_id,
            "vm": self.vm,
            "target": self.target,
            "mode": self.mode.value if self.mode else "",
            "at": repr(self.at) if self.at is not None else "",
        }

    @classmethod
    def load(cls, saved: Mapping[str, str]) -> JobRef:
        """Read back what :meth:`dump` wrote (or an older record's plain mapping)."""
        intent = saved.get("intent", Intent.JOB.value)
        if intent == Intent.JOB.value:
            return cls(data={k: v for k, v in saved.items() if k != "intent"})
        if intent != Intent.START.value:
            raise ValueError(f"not a job reference: intent {intent!r}")
        at: float | None
        try:
            at = float(saved.get("at", ""))
        except ValueError:
            at = None
        mode = saved.get("mode", "")
        return cls(
            intent=Intent.START,
            request_id=saved.get("request_id", ""),
            vm=saved.get("vm", ""),
            target=saved.get("target", ""),
            mode=MigrationMode(mode) if mode else None,
            at=at if at is not None and math.isfinite(at) else None,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    """A started migration on the platform; ``ref`` finds it again (:meth:`Backend.attach`)."""

    id: str
    vm: str
    source: str
    target: str
    mode: MigrationMode
    ref: JobRef = field(default_factory=JobRef)


@dataclass(frozen=True, kw_only=True, slots=True)
class JobStatus:
    """One answer from :meth:`Backend.poll`: the native status mapped onto a phase.

    Backends map and pass figures through; the engine smooths, times and judges.
    ``vm_host`` must be set once the job is terminal (``COMPLETED``, ``FAILED``,
    ``CANCELLED``); a backend that cannot tell leaves it ``None`` and the engine asks
    :meth:`Backend.locate`.
    """

    phase: Phase
    native: str
    data_total: int | None = None
    data_processed: int | None = None
    data_remaining: int | None = None
    transfer_rate: float | None = None
    dirty_rate: float | None = None
    iteration: int | None = None
    expected_downtime_ms: int | None = None
    percent: float | None = None  # the platform's own percentage, where it has one
    throttle: int | None = None  # percent of the guest's vCPU time auto-converge takes
    vm_host: str | None = None
    error: str | None = None
    figures: Figures | None = None
    postcopy: bool = False  # the job has entered post-copy (even if it is past it now)
    #: seconds until this job wants polling again (``None``: the backend's poll_interval);
    #: per job, so one job's pace never sets another's
    next_poll: float | None = None


class Backend(abc.ABC):
    """Base class for backends. Subclass it and register a factory through the
    ``vmmove_add_backends`` hook; see ``docs/plugins.md``."""

    #: URI scheme served, for messages.
    scheme: ClassVar[str] = ""
    capabilities: Capabilities = Capabilities()
    #: How often the engine polls a running job, in seconds of this backend's clock.
    poll_interval: float = 1.0
    #: why a started job cannot be cancelled, where ``capabilities.cancel`` is false: the
    #: record keeps it beside the refused cancel (``Migration.cancel()`` answers ``False``)
    cancel_refusal: ClassVar[str] = "the platform cannot abort a running migration"
    #: seconds a live migration costs this platform beyond moving memory (handshakes, the
    #: target's process started and finished): what predictions add to the transfer
    setup_s: float = 0.0
    #: seconds a pre-copy switch-over pauses the guest beyond copying the last pages (device
    #: state, the target's resume): what predictions add to the pause
    switchover_s: float = SWITCH_OVERHEAD_S
    #: seconds a switch to post-copy pauses the guest (device state, the target's resume; the
    #: pages follow on demand): the pause predictions give a post-copy migration
    postcopy_switch_s: float = POSTCOPY_PAUSE_S

    @property
    def clock(self) -> Clock:
        return _REAL_CLOCK

    # ---- inventory ---------------------------------------------------------------------
    @abc.abstractmethod
    def hosts(self) -> list[HostInfo]: ...

    @abc.abstractmethod
    def vms(self) -> list[VMInfo]: ...

    def vm(self, ref: str) -> VMInfo:
        """A VM by id, or by name when no id matches."""
        return lookup(self.vms(), ref, "VM")

    def host(self, ref: str) -> HostInfo:
        """A host by id, or by name when no id matches."""
        return lookup(self.hosts(), ref, "host")

    def locate(self, vm_id: str) -> str | None:
        """Where the VM runs now (host id), or ``None`` if no host runs it, read from the
        platform's inventory independently of any job's own report.

        The engine calls it at every terminal state and at attach, and believes it over the
        job: it must raise :class:`ConnectionFailed` when the platform cannot be asked,
        never answer ``None`` for "I could not tell". A running VM is where it runs; a
        stopped one is where it is registered (defined once); a copy paused by a migration
        that cannot resume it there (a broken post-copy) runs nowhere: ``None``."""
        try:
            return self.vm(vm_id).host
        except NotFound:
            return None

    # ---- migration ---------------------------------------------------------------------
    def check(
        self,
        vm: VMInfo,
        target: HostInfo,
        spec: MigrationSpec,
        *,
        mode: MigrationMode,
        policy: Policy,
    ) -> list[Problem]:
        """Platform pre-checks beyond the engine's own (CPU, storage, name clashes).
        ``mode`` is resolved (LIVE or COLD, never AUTO) and ``policy`` is the resolved
        :class:`~vmmove.policy.Policy`: a backend never resolves either itself."""
        return []

    def reserve(self, vm: VMInfo, target: HostInfo, spec: MigrationSpec) -> Reservation | None:
        """Reserve the VM's resources on the target, or raise ReservationRefused."""
        return None

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation that was not used."""

    @abc.abstractmethod
    def start(
        self,
        vm: VMInfo,
        target: HostInfo,
        spec: MigrationSpec,
        mode: MigrationMode,
        *,
        policy: Policy,
        needs: frozenset[str],
        reservation: Reservation | None,
        request_id: str = "",
    ) -> Job:
        """Start the job. ``mode`` is LIVE or COLD (never AUTO); ``policy`` is the resolved
        policy the engine will apply; ``needs`` lists the capabilities it may use later, for
        platforms that must enable them at start.

        ``request_id`` is unique to this start attempt. The engine saves it first, in a
        :class:`JobRef` of intent ``START`` (with the VM, target, mode and the connection
        clock's time). Put it on the platform request where the platform can carry it (an
        annotation, a request-id header, a task description): when the answer to ``start``
        is lost, the engine hands that reference to :meth:`attach` to learn whether the
        platform acted on it."""

    @abc.abstractmethod
    def poll(self, job: Job) -> JobStatus: ...

    def tune(self, job: Job, action: Action) -> float | None:
        """Apply a policy action to a running job. Return seconds until this job should be
        polled again (a step may end the pass at once), or ``None`` for the usual pace."""
        raise NotSupported(f"{type(self).__name__} cannot apply {action}")

    @abc.abstractmethod
    def abort(self, job: Job) -> None:
        """Ask the platform to abort the job. The outcome is observed through ``poll``."""

    def sample_dirty_rate(self, vm: VMInfo) -> float | None:
        """Measure how fast the running ``vm`` dirties its memory now, in bytes/s, for a
        prediction (:meth:`vmmove.Connection.predict`). May take a second or two; ``None``
        where the platform cannot say. The default is the inventory's own figure."""
        return vm.dirty_rate

    # ---- cold migration primitives (``Capabilities.relocate_stopped``) ----------------
    def power_off(self, vm: VMInfo, *, force: bool) -> None:
        """Ask the platform to stop the VM: a guest shutdown (ACPI), or a hard power-off
        when ``force``. Return at once; the engine watches the power state in ``vm()``."""
        raise NotSupported(f"{type(self).__name__} cannot power VMs off")

    def power_on(self, vm: VMInfo) -> None:
        """Ask the platform to start the stopped VM where it is registered. Return at once;
        raise when the platform refuses the request itself."""
        raise NotSupported(f"{type(self).__name__} cannot power VMs on")

    def power_on_failure(self, vm: VMInfo) -> str | None:
        """Why the platform says the last :meth:`power_on` of ``vm`` failed after it took the
        request (a power-on task that ended in error), or ``None`` while it has not said so.
        Answer at once from what the platform reports: the core asks while it waits for the
        VM to run, and on an answer moves it back at once instead of at ``boot_timeout``."""
        return None

    def relocate(
        self, vm: VMInfo, target: HostInfo, spec: MigrationSpec, *, request_id: str
    ) -> Job:
        """Start moving the stopped VM (its registration, and disks where they move) to
        ``target``: a job polled with :meth:`poll` like any other (``COMPLETED`` once the
        VM is registered on the target). ``request_id`` as for :meth:`start`."""
        raise NotSupported(f"{type(self).__name__} cannot move stopped VMs")

    def finish(self, job: Job) -> None:
        """Release whatever the backend holds for a job that reached a terminal phase."""

    def attach(self, ref: JobRef) -> Job:
        """Find a job again from ``ref`` (after the client that started it died).

        ``ref`` is a ``Job.ref`` saved earlier (intent ``JOB``), or the reference saved before
        ``start``/``relocate`` (intent ``START``: the answer was lost, or the client died
        inside the call). For ``START``, return the job that request began (match
        ``ref.request_id`` where the platform carries it), even one that already ended;
        raise :class:`NotFound` when the platform has no such job (yet), and
        :class:`ConnectionFailed` when it cannot be asked."""
        raise NotSupported(f"{type(self).__name__} cannot re-attach to jobs")

    def close(self) -> None:
        """Close connections; the backend is not used afterwards."""


_REAL_CLOCK = RealClock()


class _Named(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...


_T = TypeVar("_T", bound=_Named)


def lookup(items: Iterable[_T], ref: str, kind: str) -> _T:
    """The item whose id is ``ref``, else the one item named ``ref``; NotFound otherwise."""
    named = []
    for item in items:
        if item.id == ref:
            return item
        if item.name == ref:
            named.append(item)
    if len(named) == 1:
        return named[0]
    raise NotFound(f"no {kind} {ref!r}" if not named else f"{kind} name {ref!r} is ambiguous")
