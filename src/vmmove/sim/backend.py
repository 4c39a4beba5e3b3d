"""The simulated hypervisor: a backend like any other, over :mod:`vmmove.sim.physics`."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from vmmove.backend import (
    Backend,
    Capabilities,
    Intent,
    Job,
    JobRef,
    JobStatus,
    Reservation,
    lookup,
)
from vmmove.clock import Clock, ScaledClock, VirtualClock
from vmmove.errors import Conflict, InvalidInput, NotFound, NotSupported, ReservationRefused
from vmmove.machine import Phase
from vmmove.model import (
    Capacity,
    CpuInfo,
    Figures,
    HostInfo,
    HostState,
    MiB,
    MigrationMode,
    MigrationSpec,
    PowerState,
    Problem,
    Storage,
    VMInfo,
)
from vmmove.policy import Action, AutoConverge, Policy, PostCopy, SetBandwidth, SetDowntime
from vmmove.sim import inventory as inv
from vmmove.sim.faults import FAULT_STATES, Fault
from vmmove.sim.physics import (
    BOOT_S,
    CLEANUP_S,
    DEFAULT_DOWNTIME_MS,
    POSTCOPY_PAUSE_S,
    SETUP_S,
    SHUTDOWN_S,
    SWITCH_OVERHEAD_S,
    Link,
    SimJob,
)

__all__ = ["Fault", "SimBackend"]

_PHASES = {
    "setup": Phase.REQUESTING,
    "precopy": Phase.TRANSFERRING,
    "aborting": Phase.TRANSFERRING,
    "shutdown": Phase.TRANSFERRING,
    "copy": Phase.TRANSFERRING,
    "switch": Phase.SWITCHING_OVER,
    "stopcopy": Phase.SWITCHING_OVER,
    "boot": Phase.SWITCHING_OVER,
    "postcopy": Phase.POSTCOPY,
    "cleanup": Phase.COMPLETING,
    "completed": Phase.COMPLETED,
    "failed": Phase.FAILED,
    "cancelled": Phase.CANCELLED,
}


class SimBackend(Backend):
    """``sim://`` (built-in sample), ``sim:///path/inventory.toml``; ``?speed=N`` runs in
    real time N times faster instead of on a virtual clock."""

    scheme = "sim"
    capabilities = Capabilities(
        live=True,
        cold=True,
        cancel=True,
        postcopy=True,
        max_downtime=True,
        bandwidth=True,
        auto_converge=True,
        max_slowdown=True,
        progress_bytes=True,
        reserve=True,
        storage_move=True,
        relocate_stopped=True,
    )
    poll_interval = 0.5
    setup_s = SETUP_S + CLEANUP_S
    switchover_s = SWITCH_OVERHEAD_S
    postcopy_switch_s = POSTCOPY_PAUSE_S

    def __init__(
        self,
        inventory: inv.SimInventory | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.inventory = inventory or inv.sample()
        self._clock: Clock = clock or VirtualClock()
        self._lock = threading.RLock()
        self._links = {h.id: Link(h.link) for h in self.inventory.hosts.values()}
        self._jobs: dict[str, SimJob] = {}
        self._reservations: dict[str, Reservation] = {}
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)
        self._lost: set[str] = set()
        self._requests: dict[str, str] = {}  # start request id -> job id
        self._power_ops: dict[str, tuple[float, PowerState]] = {}  # VM -> (when, new state)
        self._synced_at = -1.0
        self._used: dict[str, list[int]] | None = None

    @classmethod
    def from_uri(cls, uri: str, options: Mapping[str, Any]) -> SimBackend:
        """Options: ``clock`` (a :class:`vmmove.clock.Clock`; not with ``?speed``),
        ``inventory`` (a :class:`SimInventory`, or the path of an inventory file) and
        ``password`` (ignored: the CLI passes ``$VMMOVE_PASSWORD`` to every backend).
        Anything else is :class:`InvalidInput`."""
        parts = urlsplit(uri)
        query = parse_qs(parts.query)
        unknown = set(query) - {"speed"}
        if unknown:
            raise InvalidInput(f"unknown sim:// option(s): {', '.join(sorted(unknown))}")
        known = ("clock", "inventory", "password")
        unknown = set(options) - set(known)
        if unknown:
            raise InvalidInput(
                f"unknown sim:// option(s): {', '.join(sorted(unknown))} "
                f"(known: {', '.join(known)})"
            )
        clock = options.get("clock")
        if clock is not None and not all(
            callable(getattr(clock, name, None)) for name in ("now", "time", "wait")
        ):
            raise InvalidInput(f"sim:// clock must be a vmmove Clock, not {type(clock).__name__}")
        if "speed" in query:
            if clock is not None:
                raise InvalidInput("sim:// takes a clock or ?speed=N, not both")
            try:
                clock = ScaledClock(float(query["speed"][-1]))
            except ValueError:
                raise InvalidInput("sim:// speed must be a positive number") from None
        path = (parts.netloc + parts.path) if parts.netloc not in ("", "localhost") else parts.path
        inventory: Any = options.get("inventory")
        if inventory is not None and path:
            raise InvalidInput("sim:// takes an inventory option or a path in the URI, not both")
        if isinstance(inventory, str) or hasattr(inventory, "__fspath__"):
            inventory = inv.load(inventory)
        elif inventory is not None and not isinstance(inventory, inv.SimInventory):
            raise InvalidInput(
                "sim:// inventory must be a SimInventory or the path of an inventory file, "
                f"not {type(inventory).__name__}"
            )
        return cls(inventory or (inv.load(path) if path else None), clock=clock)

    @property
    def clock(self) -> Clock:
        return self._clock

    # ---- the world -----------------------------------------------------------------------
    def _sync(self, source: str | None = None) -> None:
        """Bring the world to the clock's now: every link, or only ``source``'s (links are
        independent, so a poll needs only its own; on a real clock that is most of the cost)."""
        now = self._clock.now()
        for vm_id, (due, state) in list(self._power_ops.items()):
            if due <= now:  # a guest shutdown or boot has finished
                del self._power_ops[vm_id]
                self.inventory.vms[vm_id].power = state
        if now == self._synced_at:
            return  # every job is already at this instant
        links = self._links.values() if source is None else (self._links[source],)
        if source is None:
            self._synced_at = now
        for link in links:
            if link.jobs:
                link.advance(now, self._on_end)
            else:
                link.t = now

    def _account(self, host: str, cpus: int, memory: int) -> None:
        if self._used is not None:
            self._used[host][0] += cpus
            self._used[host][1] += memory

    def _on_end(self, job: SimJob) -> None:
        vm = self.inventory.vms[job.vm]
        vm.migrating = None
        if job.vm_host is None:
            self._account(vm.host, -vm.vcpus, -vm.memory)
            self._lost.add(vm.id)
            vm.power = PowerState.STOPPED
            return
        if job.vm_host != vm.host:
            self._account(vm.host, -vm.vcpus, -vm.memory)
            self._account(job.vm_host, vm.vcpus, vm.memory)
        vm.host = job.vm_host
        if not job.live:
            vm.power = PowerState.RUNNING if job.was_running else PowerState.STOPPED

    def inject(self, fault: Fault) -> None:
        """Arm a fault for the next matching migration."""
        with self._lock:
            if fault.vm is not None:
                self._vm(fault.vm)
            if fault.host is not None:
                self._host(fault.host)
            self._faults.append(fault)

    def set_link(self, host: str, mib_s: float) -> None:
        """Change a host's link speed now (a slow or congested host)."""
        if not mib_s > 0:
            raise InvalidInput("link speed must be positive")
        with self._lock:
            self._sync()
            self._links[self._host(host).id].capacity = mib_s * MiB

    def set_host_state(self, host: str, state: HostState) -> None:
        with self._lock:
            self._host(host).state = HostState(state)

    def _vm(self, ref: str) -> inv.SimVM:
        vms = self.inventory.vms
        return vms[ref] if ref in vms else lookup(vms.values(), ref, "VM")

    def _host(self, ref: str) -> inv.SimHost:
        hosts = self.inventory.hosts
        return hosts[ref] if ref in hosts else lookup(hosts.values(), ref, "host")

    def _take_fault(
        self,
        vm: str,
        host: str,
        kinds: tuple[str, ...],
        *,
        only: Phase | None = None,
        skip: Phase | None = None,
    ) -> Fault | None:
        for fault in self._faults:
            if only is not None and fault.phase is not only:
                continue
            if skip is not None and fault.phase is skip:
                continue
            if fault.kind in kinds and (fault.vm in (None, vm)) and (fault.host in (None, host)):
                self._faults.remove(fault)
                return fault
        return None

    # ---- inventory -------------------------------------------------------------------------
    def hosts(self) -> list[HostInfo]:
        with self._lock:
            self._sync()
            used = self._usage()
            return [self._host_info(h, used[h.id]) for h in self.inventory.hosts.values()]

    def host(self, ref: str) -> HostInfo:
        with self._lock:
            self._sync()
            host = self._host(ref)
            return self._host_info(host, self._usage()[host.id])

    def _usage(self) -> dict[str, list[int]]:
        """vCPUs and memory held on each host by its VMs and by reservations (kept up to
        date as VMs move and reservations come and go; computed once)."""
        if self._used is None:
            used: dict[str, list[int]] = {h: [0, 0] for h in self.inventory.hosts}
            for vm in self.inventory.vms.values():
                if vm.id not in self._lost:
                    used[vm.host][0] += vm.vcpus
                    used[vm.host][1] += vm.memory
            for r in self._reservations.values():
                used[r.host][0] += r.cpus
                used[r.host][1] += r.memory
            self._used = used
        return self._used

    def _host_info(self, h: inv.SimHost, used: list[int]) -> HostInfo:
        return HostInfo(
            id=h.id,
            name=h.name,
            cluster=h.cluster,
            state=h.state,
            capacity=Capacity(cpus=h.cpus, memory=h.memory),
            allocated=Capacity(cpus=used[0], memory=used[1]),
            cpu=CpuInfo(arch="x86_64", model=h.cpu_model, vendor="GenuineIntel"),
            extra={**h.extra, "link_mib_s": f"{self._links[h.id].capacity / MiB:g}"},
        )

    def vms(self) -> list[VMInfo]:
        with self._lock:
            self._sync()
            return [self._info(vm) for vm in self.inventory.vms.values()]

    def vm(self, ref: str) -> VMInfo:
        with self._lock:
            self._sync()
            return self._info(self._vm(ref))

    def _info(self, vm: inv.SimVM) -> VMInfo:
        power = vm.power
        job = self._jobs.get(vm.migrating) if vm.migrating else None
        if job is not None and not job.live and job.state in ("copy", "boot"):
            power = PowerState.STOPPED
        return VMInfo(
            id=vm.id,
            name=vm.name,
            host=vm.host,
            power=power,
            memory=vm.memory,
            vcpus=vm.vcpus,
            storage=vm.storage,
            live_migratable=vm.live_migratable,
            not_migratable_reason=vm.not_migratable_reason or None,
            dirty_rate=vm.dirty_rate,
            extra={
                **vm.extra,
                "working_set_mib": f"{vm.working_set / MiB:g}",
                "resident_mib": f"{vm.resident / MiB:g}",
            },
        )

    def locate(self, vm_id: str) -> str | None:
        with self._lock:
            self._sync()
            if vm_id in self._lost:
                return None
            return self._vm(vm_id).host

    # ---- migration -------------------------------------------------------------------------
    def check(
        self,
        vm: VMInfo,
        target: HostInfo,
        spec: MigrationSpec,
        *,
        mode: MigrationMode,
        policy: Policy,
    ) -> list[Problem]:
        problems = []
        if spec.datastore is not None:
            problems.append(Problem(code="datastore", message="the simulator has no datastores"))
        with self._lock:
            if self._vm(vm.id).migrating:
                problems.append(Problem(code="busy", message=f"{vm.name} is already migrating"))
            source = self._host(vm.host)
        if target.cpu.model != source.cpu_model:
            problems.append(
                Problem(
                    code="cpu-model",
                    severity="warning",
                    message=f"CPU model differs ({source.cpu_model} -> {target.cpu.model})",
                )
            )
        if vm.storage is Storage.LOCAL:
            problems.append(
                Problem(
                    code="local-storage", severity="warning", message="local disks are copied too"
                )
            )
        return problems

    def reserve(self, vm: VMInfo, target: HostInfo, spec: MigrationSpec) -> Reservation:
        with self._lock:
            if self._take_fault(vm.id, target.id, ("reserve-refused",)):
                raise ReservationRefused(
                    f"{target.name} refused to reserve {vm.memory >> 20} MiB (injected)"
                )
            host = self.host(target.id)
            if host.free_memory < vm.memory:
                free, need = host.free_memory >> 20, vm.memory >> 20
                raise ReservationRefused(f"{host.name} has {free} MiB free, {vm.name} needs {need}")
            r = Reservation(
                id=f"r{next(self._ids)}", host=target.id, memory=vm.memory, cpus=vm.vcpus
            )
            self._reservations[r.id] = r
            self._account(r.host, r.cpus, r.memory)
            return r

    def release(self, reservation: Reservation) -> None:
        with self._lock:
            if self._reservations.pop(reservation.id, None) is not None:
                self._account(reservation.host, -reservation.cpus, -reservation.memory)

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
        return self._begin(
            vm,
            target,
            spec,
            mode,
            needs=needs,
            reservation=reservation,
            request_id=request_id,
            skip_faults=None,
        )

    def _begin(
        self,
        vm: VMInfo,
        target: HostInfo,
        spec: MigrationSpec,
        mode: MigrationMode,
        *,
        needs: frozenset[str],
        reservation: Reservation | None,
        request_id: str,
        skip_faults: Phase | None,
    ) -> Job:
        with self._lock:
            self._sync()
            svm = self._vm(vm.id)
            if svm.migrating:
                raise Conflict(f"{svm.name} is already migrating (job {svm.migrating})")
            live = mode is MigrationMode.LIVE
            job = SimJob(
                id=f"job-{next(self._ids)}",
                vm=svm.id,
                source=svm.host,
                target=target.id,
                live=live,
                memory=svm.memory,
                resident=svm.resident,
                working_set=svm.working_set,
                dirty_rate=svm.dirty_rate,
                disk=svm.disk if svm.storage is Storage.LOCAL else 0,
                was_running=svm.power is PowerState.RUNNING,
                cap=spec.bandwidth * MiB if spec.bandwidth else None,
                downtime_limit=min(spec.max_downtime or DEFAULT_DOWNTIME_MS, DEFAULT_DOWNTIME_MS)
                / 1000,
                auto_converge_allowed="auto_converge" in needs,
                postcopy_allowed="postcopy" in needs,
            )
            fault = self._take_fault(
                svm.id,
                target.id,
                ("target-fails", "link-drop"),
                skip=skip_faults,
            )
            if fault is not None:
                state = FAULT_STATES[fault.phase][0 if live else 1]
                job.fault = (fault.kind, state, fault.after)
            link = self._links[svm.host]
            job.started = link.t
            link.jobs.append(job)
            self._jobs[job.id] = job
            if request_id:
                self._requests[request_id] = job.id
            svm.migrating = job.id
            return Job(
                id=job.id,
                vm=svm.id,
                source=job.source,
                target=job.target,
                mode=mode,
                ref=JobRef(data={"job": job.id}),
            )

    # ---- cold moves: the core orchestrates these primitives ---------------------------------
    def power_off(self, vm: VMInfo, *, force: bool) -> None:
        with self._lock:
            self._sync()
            svm = self._vm(vm.id)
            if svm.power is PowerState.STOPPED:
                return
            if not force and self._take_fault(svm.id, svm.host, ("shutdown-ignored",)):
                return  # the guest never answers the shutdown request
            self._power_ops[svm.id] = (
                self._clock.now() + (0.0 if force else SHUTDOWN_S),
                PowerState.STOPPED,
            )

    def power_on(self, vm: VMInfo) -> None:
        with self._lock:
            self._sync()
            svm = self._vm(vm.id)
            if svm.power is PowerState.RUNNING or svm.migrating:
                return
            kinds = ("target-fails", "link-drop")
            if self._take_fault(svm.id, svm.host, kinds, only=Phase.SWITCHING_OVER):
                return  # the host accepts the request and the VM never comes up
            self._power_ops[svm.id] = (self._clock.now() + BOOT_S, PowerState.RUNNING)

    def relocate(
        self, vm: VMInfo, target: HostInfo, spec: MigrationSpec, *, request_id: str
    ) -> Job:
        with self._lock:
            self._sync()
            if self._vm(vm.id).power is not PowerState.STOPPED:
                raise Conflict(f"{vm.name} must be stopped before it is moved")
        return self._begin(
            vm,
            target,
            spec,
            MigrationMode.COLD,
            needs=frozenset(),
            reservation=None,
            request_id=request_id,
            # A cold move the core orchestrates meets a switch-over fault at power-on.
            skip_faults=Phase.SWITCHING_OVER,
        )

    def _job(self, job: Job) -> SimJob:
        try:
            return self._jobs[job.id]
        except KeyError:
            raise NotFound(f"no simulator job {job.id!r}") from None

    def poll(self, job: Job) -> JobStatus:
        with self._lock:
            self._sync(job.source)
            sj = self._job(job)
            phase = _PHASES[sj.state]
            pending = sj.pending
            if sj.live and sj.iteration == 1 and sj.state == "precopy":
                # Zero pages are still "remaining" in pass 1, as QEMU counts them.
                pending = sj.pass_left * sj.memory / max(sj.resident, 1)
            expected = int(pending / sj.rate * 1000) if sj.rate else None
            figures = None
            if phase.terminal:
                figures = Figures(
                    total_time=(sj.ended or 0.0) - sj.started,
                    downtime_ms=sj.downtime * 1000 if sj.state == "completed" else None,
                    data_sent=int(sj.sent),
                    iterations=sj.iteration,
                )
            return JobStatus(
                phase=phase,
                native=sj.state,
                data_total=sj.memory if sj.live else sj.disk + MiB,
                data_processed=int(sj.sent),
                data_remaining=int(pending) if not phase.terminal else 0,
                transfer_rate=sj.rate or None,
                dirty_rate=sj.effective_dirty_rate if sj.live else None,
                iteration=sj.iteration or None,
                expected_downtime_ms=expected,
                throttle=round(sj.throttle * 100) if sj.live and sj.throttle else None,
                vm_host=sj.vm_host if phase.terminal else None,
                error=sj.error,
                figures=figures,
                postcopy=sj.entered_postcopy,
            )

    def tune(self, job: Job, action: Action) -> None:
        with self._lock:
            self._sync(job.source)
            sj = self._job(job)
            if isinstance(action, SetDowntime):
                sj.downtime_limit = action.ms / 1000
                sj.recheck = True
            elif isinstance(action, SetBandwidth):
                sj.cap = action.mib_s * MiB
                sj.recheck = True
            elif isinstance(action, AutoConverge):
                if not sj.auto_converge_allowed:
                    raise NotSupported("auto-converge must be enabled when the job starts")
                sj.auto_converge = True
                if action.initial is not None:
                    sj.throttle_first = action.initial / 100
                if action.increment is not None:
                    sj.throttle_step = action.increment / 100
            elif isinstance(action, PostCopy):
                if not sj.postcopy_allowed:
                    raise NotSupported("post-copy must be enabled when the job starts")
                sj.postcopy_requested = True
            else:
                raise NotSupported(f"the simulator cannot apply {action}")

    def abort(self, job: Job) -> None:
        with self._lock:
            self._sync(job.source)
            sj = self._job(job)
            if sj.ended is None:
                sj.abort_requested = True

    def attach(self, ref: JobRef) -> Job:
        with self._lock:
            job_id = ref.get("job")
            if ref.intent is Intent.START:  # the answer to start was lost: which job?
                job_id = self._requests.get(ref.request_id, "")
            sj = self._jobs.get(job_id)
            if sj is None:
                raise NotFound(f"no simulator job {job_id or ref.request_id!r}")
            mode = MigrationMode.LIVE if sj.live else MigrationMode.COLD
            return Job(
                id=sj.id,
                vm=sj.vm,
                source=sj.source,
                target=sj.target,
                mode=mode,
                ref=JobRef(data={"job": sj.id}),
            )
