"""The emulated Hyper-V estate: hosts that share VMs, migration jobs that progress on a
clock, and the faults a test can arrange. :mod:`vmmove_hyperv.testing.emulation` answers
PowerShell scripts from it.

Time is the fabric's ``clock`` (real monotonic seconds by default; :class:`ManualClock` for
tests that step it). Every read brings the estate up to that time first (:meth:`tick`), so a
job's state is a pure function of when it was started, cancelled or failed.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "Fabric",
    "FakeHost",
    "FakeJob",
    "FakeVM",
    "JobFailure",
    "ManualClock",
    "Timing",
]

GiB = 1 << 30
#: Msvm_ConcreteJob.JobState values the fabric uses
NEW, STARTING, RUNNING, SHUTTING_DOWN, COMPLETED, TERMINATED, EXCEPTION = 2, 3, 4, 6, 7, 8, 10
#: VMState values the fabric uses
VM_RUNNING, VM_OFF, VM_STOPPING, VM_STARTING = 2, 3, 4, 10
#: WMI method return values
OK, JOB_STARTED, FAILED, INVALID_STATE = 0, 4096, 32768, 32775


class ManualClock:
    """A clock that moves only when told to (:meth:`advance`)."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
            listeners = list(self._listeners)
        for notify in listeners:
            notify()

    def on_advance(self, notify: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(notify)


@dataclass
class Timing:
    """Seconds each step takes on the fabric's clock."""

    starting: float = 0.2  # New -> Starting -> Running
    cancel: float = 0.2  # ShuttingDown after RequestStateChange(4), then Terminated
    cold: float = 0.5  # an Off VM's move (its configuration only)
    shutdown: float = 0.5  # guest shutdown: Stopping -> Off
    boot: float = 0.5  # Starting -> Running
    job_ttl: float = 300.0  # an ended job's object stays this long (TimeBeforeRemoval)
    #: past this percentage the switch-over has begun: a cancel is refused (32775)
    point_of_no_return: float = 95.0


@dataclass
class FakeHost:
    name: str
    fqdn: str = ""
    cpus: int = 32
    memory: int = 256 * GiB
    migration_enabled: bool = True
    max_migrations: int = 2
    performance: int = 0  # TCPIP 0, Compression 1, SMB 2
    authentication: int = 1  # CredSSP 0, Kerberos 1
    processor: str = "Intel(R) Xeon(R) Gold 6330 CPU @ 2.00GHz"
    #: migrations from this host are refused with this message (a host that refuses)
    refuse: str | None = None
    smb_bandwidth_limit: int | None = None

    def __post_init__(self) -> None:
        self.fqdn = self.fqdn or f"{self.name}.lab.local"


@dataclass
class FakeVM:
    name: str
    host: str
    state: int = VM_RUNNING
    memory: int = 4 * GiB
    cpus: int = 2
    dynamic_memory: bool = False
    compatibility: bool = True  # processor compatibility for migration
    notes: str = ""
    disks: list[str] = field(default_factory=list)
    #: seconds a live migration of this VM transfers (0 -> 100 %)
    migrate_seconds: float = 1.0
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: (state, at): where a power operation leads, and when
    pending: tuple[int, float] | None = None

    def __post_init__(self) -> None:
        if not self.disks:
            self.disks = [f"\\\\fs1\\vms\\{self.name}\\{self.name}.vhdx"]


@dataclass
class JobFailure:
    at_percent: float = 40.0
    code: int = 32768
    description: str = "The virtual machine migration operation failed at migration source."


@dataclass
class FakeJob:
    id: str
    vm: str
    source: str
    destination: str
    created: float
    duration: float
    cold: bool = False
    state: int = NEW
    percent: float = 0.0
    error_code: int = 0
    error_description: str = ""
    started: float | None = None  # when it left New (a slot was free)
    cancel_at: float | None = None
    ended: float | None = None
    failure: JobFailure | None = None
    hidden: bool = False  # the WMI service was restarted: the object is gone, the job is not

    @property
    def active(self) -> bool:
        return self.state in (NEW, STARTING, RUNNING, SHUTTING_DOWN)


class Fabric:
    """Hosts, VMs and migration jobs, shared by every emulated host."""

    def __init__(
        self, clock: Callable[[], float] | None = None, timing: Timing | None = None
    ) -> None:
        self.clock: Callable[[], float] = clock or time.monotonic
        self.timing = timing or Timing()
        self.hosts: dict[str, FakeHost] = {}
        self.vms: dict[str, FakeVM] = {}
        self.jobs: dict[str, FakeJob] = {}
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        #: (host, vm id or name, message, message id): what Compare-VM reports besides CPUs
        self.incompatibilities: list[tuple[str, str, str, int]] = []
        self.fail_next_job: dict[str, JobFailure] = {}  # vm id -> how its next job fails
        self.fail_next_start: set[str] = set()  # vm ids whose next power-on fails
        self.hangs: list[tuple[str, re.Pattern[str], threading.Event]] = []
        self.calls: list[tuple[str, str]] = []  # (host, operation) per script, in order
        self._ids = itertools.count(1)
        if isinstance(clock, ManualClock):
            clock.on_advance(self._notify)

    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    # ---- building an estate ---------------------------------------------------------
    def add_host(self, name: str, **kwargs: object) -> FakeHost:
        with self.lock:
            host = FakeHost(name=name, **kwargs)  # type: ignore[arg-type]
            self.hosts[name] = host
            return host

    def add_vm(self, name: str, host: str, **kwargs: object) -> FakeVM:
        with self.lock:
            if host not in self.hosts:
                raise KeyError(f"no host {host}")
            vm = FakeVM(name=name, host=host, **kwargs)  # type: ignore[arg-type]
            self.vms[vm.id] = vm
            return vm

    def sample(self) -> Fabric:
        """Three hosts (hv3 with another CPU generation) and six VMs."""
        for name in ("hv1", "hv2"):
            self.add_host(name)
        self.add_host("hv3", processor="AMD EPYC 7543 32-Core Processor")
        self.add_vm("web-1", "hv1", memory=4 * GiB, cpus=2)
        self.add_vm("db-1", "hv1", memory=16 * GiB, cpus=8, migrate_seconds=4.0)
        self.add_vm("app-1", "hv2", memory=8 * GiB, cpus=4, dynamic_memory=True)
        self.add_vm("batch-1", "hv1", state=VM_OFF, memory=2 * GiB, cpus=2)
        self.add_vm("legacy-1", "hv2", memory=2 * GiB, cpus=1, compatibility=False)
        self.add_vm("local-1", "hv2", disks=["D:\\Hyper-V\\local-1\\local-1.vhdx"])
        return self

    # ---- lookups --------------------------------------------------------------------
    def host(self, ref: str) -> FakeHost | None:
        ref = ref.lower()
        return next(
            (h for h in self.hosts.values() if ref in (h.name.lower(), h.fqdn.lower())), None
        )

    def vm(self, ref: str) -> FakeVM:
        """A VM by id or name (tests use names)."""
        with self.lock:
            if ref in self.vms:
                return self.vms[ref]
            named = [v for v in self.vms.values() if v.name == ref]
            if len(named) != 1:
                raise KeyError(f"no VM {ref}")
            return named[0]

    def visible_jobs(self, host: str) -> list[FakeJob]:
        """The Msvm_MigrationJob objects the host's WMI shows."""
        self.tick()
        return [j for j in self.jobs.values() if j.source == host and not j.hidden]

    # ---- faults ---------------------------------------------------------------------
    def refuse(self, host: str, message: str | None = "the host refuses migrations") -> None:
        with self.lock:
            self.hosts[host].refuse = message

    def fail_job(self, vm: str, failure: JobFailure | None = None) -> None:
        """The next migration job of ``vm`` ends in state 10 (Exception)."""
        with self.lock:
            self.fail_next_job[self.vm(vm).id] = failure or JobFailure()

    def fail_power_on(self, vm: str) -> None:
        with self.lock:
            self.fail_next_start.add(self.vm(vm).id)

    def incompatible(self, host: str, vm: str, message: str, message_id: int = 21024) -> None:
        """Compare-VM of ``vm`` against ``host`` reports this incompatibility."""
        with self.lock:
            self.incompatibilities.append((host, self.vm(vm).id, message, message_id))

    def restart_wmi(self, host: str) -> None:
        """Every migration job object of ``host`` is gone; the migrations go on."""
        with self.lock:
            for job in self.jobs.values():
                if job.source == host:
                    job.hidden = True

    def hang(self, host: str, operation: str = ".*") -> threading.Event:
        """Scripts on ``host`` whose operation matches block until the event is set."""
        release = threading.Event()
        with self.lock:
            self.hangs.append((host, re.compile(operation), release))
        return release

    def release_all(self) -> None:
        with self.lock:
            hangs, self.hangs = self.hangs, []
        for _, _, event in hangs:
            event.set()

    def hung(self, host: str, operation: str) -> threading.Event | None:
        with self.lock:
            for name, pattern, event in self.hangs:
                if name == host and pattern.fullmatch(operation) and not event.is_set():
                    return event
        return None

    # ---- time -----------------------------------------------------------------------
    def tick(self) -> float:
        """Bring every job and power operation up to the clock's time."""
        with self.lock:
            now = self.clock()
            for vm in self.vms.values():
                if vm.pending is not None and now >= vm.pending[1]:
                    vm.state, vm.pending = vm.pending[0], None
            for job in sorted(self.jobs.values(), key=lambda j: j.created):
                self._advance(job, now)
            for job_id in [
                j.id
                for j in self.jobs.values()
                if j.ended is not None and now - j.ended >= self.timing.job_ttl
            ]:
                del self.jobs[job_id]
            return now

    def _active_from(self, host: str) -> int:
        return sum(
            1
            for j in self.jobs.values()
            if j.source == host and j.started is not None and j.state in (STARTING, RUNNING)
        )

    def _advance(self, job: FakeJob, now: float) -> None:
        t = self.timing
        if job.ended is not None:
            return
        if job.started is None:
            # Beyond the host's MaximumVirtualMachineMigrations a job waits in New.
            if self._active_from(job.source) >= self.hosts[job.source].max_migrations:
                if job.cancel_at is not None:
                    self._end(job, TERMINATED, job.cancel_at)
                return
            job.started = max(job.created, now if job.cancel_at is None else job.created)
        if job.cancel_at is not None and now >= job.cancel_at + t.cancel:
            self._end(job, TERMINATED, job.cancel_at + t.cancel)
            return
        if job.cancel_at is not None:
            job.state = SHUTTING_DOWN
            return
        running_at = job.started + t.starting
        if now < running_at:
            job.state = STARTING if now >= job.started + t.starting / 2 else NEW
            return
        job.state = RUNNING
        progress = 100.0 * (now - running_at) / max(job.duration, 1e-9)
        failure = job.failure
        if failure is not None and progress >= failure.at_percent:
            job.percent = failure.at_percent
            job.error_code, job.error_description = failure.code, failure.description
            self._end(job, EXCEPTION, running_at + job.duration * failure.at_percent / 100)
            return
        if progress >= 100.0:
            job.percent = 100.0
            self.vms[job.vm].host = job.destination
            self._end(job, COMPLETED, running_at + job.duration)
            return
        job.percent = progress

    def _end(self, job: FakeJob, state: int, at: float) -> None:
        job.state, job.ended = state, at
        self.changed.notify_all()

    # ---- operations the emulated cmdlets and WMI methods perform ----------------------
    def migrate(self, source: str, vm_id: str, destination: str) -> tuple[int, FakeJob | None, str]:
        """MigrateVirtualSystemToHost: (return value, job, error message)."""
        with self.lock:
            self.tick()
            vm = self.vms.get(vm_id)
            dest = self.host(destination)
            src = self.hosts[source]
            if vm is None or vm.host != source:
                return FAILED, None, f"The virtual machine {vm_id} is not on {source}."
            if dest is None:
                return FAILED, None, f"No such host is known: {destination}."
            if dest.name == source:
                return INVALID_STATE, None, "The source and destination host are the same."
            if src.refuse or not src.migration_enabled or not dest.migration_enabled:
                why = src.refuse or "Virtual machine migration is not enabled on the host."
                return FAILED, None, why
            if any(j.vm == vm_id and j.active for j in self.jobs.values()):
                return INVALID_STATE, None, f"'{vm.name}' is already being migrated."
            if vm.state not in (VM_RUNNING, VM_OFF):
                return INVALID_STATE, None, f"'{vm.name}' cannot be migrated while changing state."
            cold = vm.state == VM_OFF
            job = FakeJob(
                id=str(uuid.uuid4()).upper(),
                vm=vm_id,
                source=source,
                destination=dest.name,
                created=self.clock(),
                duration=self.timing.cold if cold else vm.migrate_seconds,
                cold=cold,
                failure=self.fail_next_job.pop(vm_id, None),
            )
            self.jobs[job.id] = job
            self.tick()
            return JOB_STARTED, job, ""

    def cancel(self, job_id: str) -> int:
        """RequestStateChange(4) on a migration job."""
        with self.lock:
            self.tick()
            job = self.jobs.get(job_id)
            if job is None or not job.active:
                return INVALID_STATE
            if job.cancel_at is not None:
                return JOB_STARTED
            if job.percent >= self.timing.point_of_no_return:
                return INVALID_STATE  # the switch-over has begun
            job.cancel_at = self.clock()
            self.tick()
            return JOB_STARTED

    def power(self, vm_id: str, action: str) -> int:
        """shutdown / off / on, answering at once (the change follows on the clock)."""
        with self.lock:
            self.tick()
            vm = self.vms[vm_id]
            now = self.clock()
            busy = any(j.vm == vm_id and j.active for j in self.jobs.values())
            if action == "on":
                if vm_id in self.fail_next_start:
                    self.fail_next_start.discard(vm_id)
                    return FAILED
                if vm.state != VM_OFF or busy:
                    return INVALID_STATE
                vm.state, vm.pending = VM_STARTING, (VM_RUNNING, now + self.timing.boot)
                return JOB_STARTED
            if vm.state != VM_RUNNING or busy:
                return INVALID_STATE
            if action == "off":
                vm.state, vm.pending = VM_OFF, None
                return JOB_STARTED
            vm.state, vm.pending = VM_STOPPING, (VM_OFF, now + self.timing.shutdown)
            return OK

    def wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Block (as a cmdlet that waits would) until ``done()``, at most ``timeout`` real s."""
        end = time.monotonic() + timeout
        with self.changed:
            while True:
                self.tick()
                if done():
                    return True
                left = end - time.monotonic()
                if left <= 0:
                    return False
                # Woken by a ManualClock step; a real clock moves by itself.
                self.changed.wait(min(left, 0.05))

    def __iter__(self) -> Iterator[FakeVM]:
        return iter(list(self.vms.values()))
