"""The data vmmove speaks: frozen, keyword-only dataclasses.

Units are fixed across the whole API: bytes for sizes, bytes per second for rates,
seconds (float) for durations, except ``max_downtime`` and ``downtime_ms`` in
milliseconds and ``bandwidth`` in MiB/s, the units every hypervisor uses for them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from vmmove.errors import InvalidInput
from vmmove.machine import Phase

if TYPE_CHECKING:
    from vmmove.policy import Policy

__all__ = [
    "Capacity",
    "CpuInfo",
    "Figures",
    "GiB",
    "HostInfo",
    "HostState",
    "MiB",
    "MigrationMode",
    "MigrationRecord",
    "MigrationSpec",
    "PowerState",
    "Problem",
    "Progress",
    "StepRecord",
    "Storage",
    "Transition",
    "VMInfo",
]

MiB = 1 << 20
GiB = 1 << 30


def _empty() -> Mapping[str, str]:
    return MappingProxyType({})


def _no_limits() -> Mapping[str, float]:
    return MappingProxyType({})


#: The :class:`MigrationSpec` fields that bind whoever supervises the migration: the record
#: keeps them (``MigrationRecord.limits``), so a process that adopts it holds them too.
LIMITS = (
    "bandwidth",
    "max_downtime",
    "completion_budget_per_gib",
    "stall_timeout",
    "allow_postcopy",
    "max_slowdown",
)


class HostState(enum.StrEnum):
    UP = "up"
    MAINTENANCE = "maintenance"  # up, but accepts no incoming VMs
    DOWN = "down"


class PowerState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


class Storage(enum.StrEnum):
    SHARED = "shared"  # every host of the cluster sees the disks
    LOCAL = "local"  # disks must be copied with the VM
    NONE = "none"  # diskless


class MigrationMode(enum.StrEnum):
    LIVE = "live"
    COLD = "cold"
    AUTO = "auto"  # live for a running VM, cold for a stopped one; never stops a running VM


@dataclass(frozen=True, kw_only=True, slots=True)
class Capacity:
    cpus: int
    memory: int  # bytes

    def fits(self, *, cpus: int, memory: int) -> bool:
        return cpus <= self.cpus and memory <= self.memory


@dataclass(frozen=True, kw_only=True, slots=True)
class CpuInfo:
    arch: str = "x86_64"
    model: str = ""
    vendor: str = ""
    features: frozenset[str] = frozenset()


@dataclass(frozen=True, kw_only=True, slots=True)
class HostInfo:
    id: str
    name: str
    cluster: str = ""
    state: HostState = HostState.UP
    capacity: Capacity
    allocated: Capacity = field(default_factory=lambda: Capacity(cpus=0, memory=0))
    cpu: CpuInfo = field(default_factory=CpuInfo)
    extra: Mapping[str, str] = field(
        default_factory=_empty
    )  # backend-specific facts, shown but never relied on

    @property
    def free_memory(self) -> int:
        return self.capacity.memory - self.allocated.memory


@dataclass(frozen=True, kw_only=True, slots=True)
class VMInfo:
    id: str
    name: str
    host: str  # id of the host that runs (or holds) it
    power: PowerState
    memory: int  # bytes
    vcpus: int
    storage: Storage = Storage.SHARED
    live_migratable: bool = True
    not_migratable_reason: str | None = None
    dirty_rate: float | None = None  # bytes/s, where the platform knows it
    extra: Mapping[str, str] = field(default_factory=_empty)


@dataclass(frozen=True, kw_only=True, slots=True)
class Problem:
    """One pre-check finding. Errors refuse the migration; warnings are kept in the record."""

    code: str
    message: str
    severity: Literal["error", "warning"] = "error"


class Problems(list[Problem]):
    """A pre-check's findings, in the order found (what ``Backend.check`` returns)."""

    def add(self, code: str, message: str, severity: Literal["error", "warning"] = "error") -> None:
        self.append(Problem(code=code, message=message, severity=severity))


@dataclass(frozen=True, kw_only=True)
class MigrationSpec:
    """What to move, where, and how.

    ``max_downtime`` (ms) caps the switchover pause the policy may allow: migrations start
    at the hypervisor's default limit (300 ms for QEMU) or the cap if lower, and policy
    steps are clamped to it. Like QEMU's downtime-limit, it bounds the *expected* pause at
    the measured pre-copy rate. ``bandwidth`` (MiB/s) limits the pre-copy rate.
    ``completion_budget_per_gib`` and ``stall_timeout`` override the policy's own.
    ``allow_postcopy``: ``True`` lets a policy's :class:`~vmmove.policy.ForceConvergence`
    step (the default ``balanced`` has one) switch to post-copy rather than throttle the
    guest; ``False`` forbids post-copy (a policy's ``PostCopy`` steps are skipped);
    ``None`` leaves the policy's own steps.
    ``max_slowdown`` (percent, 1-99) limits how hard auto-converge may throttle the guest's
    vCPUs: the first throttle is capped at it, and once the platform reports a throttle
    above it the live attempt ends, as a cold move where the policy has a
    :class:`~vmmove.policy.ColdFallback` step, else as a failure with the VM on its source.
    """

    vm: str
    target: str | None = None
    mode: MigrationMode = MigrationMode.AUTO
    policy: str | Policy = "balanced"
    bandwidth: int | None = None
    max_downtime: int | None = None
    completion_budget_per_gib: float | None = None
    stall_timeout: float | None = None
    datastore: str | None = None  # move the disks there too (backends with storage_move)
    allow_postcopy: bool | None = None
    max_slowdown: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.vm, str) or not self.vm:
            raise InvalidInput("MigrationSpec.vm must be a non-empty VM id or name")
        for name in ("target", "datastore"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidInput(f"MigrationSpec.{name} must be a non-empty name, or None")
        try:
            object.__setattr__(self, "mode", MigrationMode(self.mode))
        except ValueError:
            modes = ", ".join(m.value for m in MigrationMode)
            raise InvalidInput(f"mode must be one of {modes}, not {self.mode!r}") from None
        for name in ("bandwidth", "max_downtime"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value <= 0
            ):
                raise InvalidInput(f"{name} must be a positive integer, not {value!r}")
        for name in ("completion_budget_per_gib", "stall_timeout"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
            ):
                raise InvalidInput(f"{name} must be a positive number, not {value!r}")
        if self.allow_postcopy is not None and not isinstance(self.allow_postcopy, bool):
            raise InvalidInput(
                f"allow_postcopy is True, False or None, not {self.allow_postcopy!r}"
            )
        slow = self.max_slowdown
        if slow is not None and (
            isinstance(slow, bool) or not isinstance(slow, int) or not 1 <= slow <= 99
        ):
            raise InvalidInput(f"max_slowdown is a percent, 1 to 99, not {slow!r}")

    @property
    def limits(self) -> dict[str, float]:
        """The set :data:`LIMITS`, for the record."""
        found = {name: getattr(self, name) for name in LIMITS}
        return {name: value for name, value in found.items() if value is not None}


@dataclass(frozen=True, kw_only=True, slots=True)
class Progress:
    """A smoothed view of a migration: ``percent`` never goes backwards and is 100 only when done.

    Byte figures are ``None`` where the platform reports none (KubeVirt, for one);
    ``percent`` is then derived from the phase alone.
    """

    phase: Phase
    percent: float = 0.0
    data_total: int | None = None
    data_processed: int | None = None
    data_remaining: int | None = None
    transfer_rate: float | None = None  # bytes/s
    dirty_rate: float | None = None  # bytes/s
    iteration: int | None = None
    expected_downtime_ms: int | None = None
    throttle: int | None = None  # percent of the guest's vCPU time taken by auto-converge
    elapsed: float = 0.0
    eta: float | None = None  # seconds, where it can be estimated


@dataclass(frozen=True, kw_only=True, slots=True)
class Figures:
    """What a finished migration cost. ``None`` where the platform does not report it."""

    total_time: float | None = None
    downtime_ms: float | None = None
    data_sent: int | None = None
    iterations: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Transition:
    phase: Phase
    at: float  # seconds since the epoch, on the connection's clock
    note: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class StepRecord:
    """A policy step that fired: applied, or skipped because the backend cannot honour it."""

    step: str
    at: float
    applied: bool
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class MigrationRecord:
    """The durable truth about one migration. ``vm_host`` is where the VM runs now: at every
    terminal state it is read from the platform's inventory, not taken from the job's own
    report (see "How vmmove knows where your VM runs" in docs/concepts.md)."""

    id: str
    backend: str
    vm: str
    vm_name: str
    source: str
    target: str | None
    mode: MigrationMode
    policy: str
    phase: Phase
    vm_host: str | None
    history: tuple[Transition, ...] = ()
    steps: tuple[StepRecord, ...] = ()
    warnings: tuple[str, ...] = ()
    error: str | None = None
    error_type: str | None = None
    figures: Figures = field(default_factory=Figures)
    job_ref: Mapping[str, str] = field(
        default_factory=_empty
    )  # what the backend needs to find the job again
    created_at: float = 0.0
    updated_at: float = 0.0
    #: when the platform's inventory last confirmed ``vm_host`` (``None``: not verified; a
    #: terminal record with ``vm_host=None`` and no ``located_at`` means "location unknown",
    #: which ``attach`` can settle later)
    located_at: float | None = None
    #: the pre-check findings that refused the migration
    problems: tuple[Problem, ...] = ()
    #: the hosts' names beside their ids (ids are what the platform answers to; names are
    #: what people read): where it started, where it was asked to go, where it runs now
    source_name: str = ""
    target_name: str | None = None
    vm_host_name: str | None = None
    #: the VM's power state when the record ended, from the inventory (a cold move that
    #: could not start the VM again says ``stopped`` here; ``None``: not read)
    vm_power: PowerState | None = None
    #: what a live migration was predicted to cost when its target was chosen, in the same
    #: figures as ``figures`` (``total_time`` ``None``: predicted not to end within the
    #: policy's limits). Set only where the inventory had a dirty-rate sample: a prediction
    #: that assumed an idle guest would be a lower bound, not a forecast.
    predicted: Figures | None = None
    #: the caller's limits that bind whoever supervises the migration, the set ones only
    #: (:data:`LIMITS`): an ``attach`` after the client died holds them too
    limits: Mapping[str, float] = field(default_factory=_no_limits)

    @property
    def done(self) -> bool:
        return self.phase.terminal

    @property
    def outcome(self) -> Phase | None:
        """The terminal phase, or ``None`` while the migration runs."""
        return self.phase if self.phase.terminal else None
