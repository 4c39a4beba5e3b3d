"""The ``vsphere://`` backend: vmmove's protocol over vCenter tasks.

Native status -> phase (``poll``):

=====================================  ==================  =================================
vSphere                                phase               notes
=====================================  ==================  =================================
RelocateVM_Task ``queued``             requesting          admission, placement checks
RelocateVM_Task ``running``            transferring        ``TaskInfo.progress`` -> percent
RelocateVM_Task ``success``            completed           ``vm_host`` = the VM's runtime.host
``error`` = ``RequestCanceled``        cancelled           the VM stays on its source
``error`` before the task ran          (raised)            refusal: ReservationRefused,
                                                           Conflict, PrecheckFailed...
``error`` after it ran                 failed              the fault's type and message
=====================================  ==================  =================================

A cold move of a running VM (``mode=cold``, or a ``ColdFallback`` policy step) is a short
pipeline: ``PowerOffVM_Task`` (transferring) -> ``RelocateVM_Task`` (transferring) ->
``PowerOnVM_Task`` on the target (switching over). Aborted or failed before the relocation
succeeded, the VM is powered on again on its source before the job reports its end.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from vmmove.backend import Backend, Job, JobStatus, Reservation
from vmmove.errors import InvalidInput, NotFound, VMMoveError
from vmmove.machine import Phase
from vmmove.model import (
    Figures,
    HostInfo,
    MigrationMode,
    MigrationSpec,
    PowerState,
    Problem,
    VMInfo,
)
from vmmove_vsphere import faults
from vmmove_vsphere.inventory import (
    COMPUTE_PROPS,
    DATASTORE_PROPS,
    HOST_PROPS,
    VM_PROPS,
    Topology,
    build_topology,
    host_info,
    listed,
    moid,
    vm_info,
    vm_usage,
)
from vmmove_vsphere.options import Settings, parse
from vmmove_vsphere.plugin import CAPABILITIES
from vmmove_vsphere.session import Session

__all__ = ["CAPABILITIES", "VSphereBackend"]

log = logging.getLogger("vmmove.vsphere")


# Phases in the order a job passes them, to keep reports from going backwards.
_ORDER = {
    Phase.REQUESTING: 0,
    Phase.TRANSFERRING: 1,
    Phase.SWITCHING_OVER: 2,
    Phase.COMPLETING: 3,
}
_UNAVAILABLE = ("MethodNotFound", "NotSupported", "NotImplemented")


@dataclass(kw_only=True)
class _Run:
    """What the backend holds for one job it started or attached to."""

    job: Job
    name: str  # the VM's name, for messages
    vm: Any  # vim.VirtualMachine
    spec: Any  # vim.vm.RelocateSpec, or None when attached without one
    restart: bool  # cold move of a running VM: power off, relocate, power on
    stage: str  # stopping | relocating | starting | restoring | done
    task: Any  # the vim.Task of the current stage (None: expired, see poll)
    lock: threading.Lock = field(default_factory=threading.Lock)
    phase: Phase = Phase.REQUESTING  # the furthest non-terminal phase reported
    aborting: bool = False
    ran: bool = False  # the relocation reached `running`
    best: float | None = None  # highest progress seen
    outcome: tuple[Phase, str | None] | None = None  # to report once the VM runs again
    first_queued: datetime | None = None
    completed: datetime | None = None
    final: JobStatus | None = None


class VSphereBackend(Backend):
    """vCenter (or ESXi) through pyVmomi. Build it with :meth:`from_uri`, or through
    ``vmmove.connect("vsphere://user@vcenter/Datacenter", password=vmmove.Secret(...))``."""

    scheme = "vsphere"
    capabilities = CAPABILITIES
    poll_interval = 0.5

    def __init__(self, settings: Settings, session: Session | None = None) -> None:
        self.settings = settings
        self.poll_interval = settings.poll_interval
        self._session = session or Session(settings)
        self._lock = threading.RLock()
        self._topo: Topology | None = None
        self._root: Any = None
        self._view: Any = None
        self._view_generation = -1
        self._runs: dict[str, _Run] = {}
        self._storage: dict[str, str] = {}  # VM id -> datastore id for its next migration
        if session is None:
            self._session.connect()
        try:
            self._root = self._find_root()
        except BaseException:
            self._session.close()
            raise

    @classmethod
    def from_uri(cls, uri: str, options: Mapping[str, Any]) -> VSphereBackend:
        return cls(parse(uri, options))

    def __repr__(self) -> str:
        return f"<VSphereBackend {self.settings.display()}>"

    # ---- plumbing ----------------------------------------------------------------------------
    @property
    def session(self) -> Session:
        return self._session

    @property
    def _vim(self) -> Any:
        return self._session.vim

    def _ref(self, kind: str, ident: str) -> Any:
        """A managed object reference (``vim.HostSystem("host-21")``) on this session."""
        return getattr(self._vim, kind)(ident, self._session.stub)

    def _find_root(self) -> Any:
        path = self.settings.datacenter
        content = self._session.content
        if not path:
            return content.rootFolder
        found = self._session.call(lambda: content.searchIndex.FindByInventoryPath(path))
        if found is None or not isinstance(found, self._vim.Datacenter):
            raise NotFound(f"{self.settings.display()}: no datacenter at inventory path {path!r}")
        return found

    def _container(self) -> Any:
        """A ContainerView over the datacenter (made again after a re-login)."""
        with self._lock:
            if self._view is None or self._view_generation != self._session.generation:
                vim = self._vim
                manager = self._session.content.viewManager
                kinds = [vim.HostSystem, vim.VirtualMachine, vim.ComputeResource, vim.Datastore]
                self._view = self._session.call(
                    lambda: manager.CreateContainerView(self._root, kinds, True)
                )
                self._view_generation = self._session.generation
            return self._view

    def _snapshot(self) -> tuple[Topology, dict[str, dict[str, Any]]]:
        """Everything in one round trip: the topology (cached for single lookups) and every
        VM's properties."""
        vim = self._vim
        props = {
            vim.HostSystem: HOST_PROPS,
            vim.VirtualMachine: VM_PROPS,
            vim.ComputeResource: COMPUTE_PROPS,
            vim.Datastore: DATASTORE_PROPS,
        }
        try:
            rows = self._session.retrieve([self._session.view_filter(self._container(), props)])
        except self._session.vmodl.fault.ManagedObjectNotFound:
            with self._lock:  # the view went away with its session: make it again
                self._view = None
            rows = self._session.retrieve([self._session.view_filter(self._container(), props)])
        hosts: dict[str, dict[str, Any]] = {}
        vms: dict[str, dict[str, Any]] = {}
        compute: dict[str, dict[str, Any]] = {}
        clusters: dict[str, bool] = {}
        stores: dict[str, dict[str, Any]] = {}
        for obj, values in rows:
            ident = moid(obj)
            if isinstance(obj, vim.HostSystem):
                hosts[ident] = values
            elif isinstance(obj, vim.VirtualMachine):
                vms[ident] = values
            elif isinstance(obj, vim.ComputeResource):
                compute[ident] = values
                clusters[ident] = isinstance(obj, vim.ClusterComputeResource)
            elif isinstance(obj, vim.Datastore):
                stores[ident] = values
        topo = build_topology(hosts, compute, stores, clusters)
        with self._lock:
            self._topo = topo
        return topo, vms

    def _topology(self, *host_ids: str) -> Topology:
        """The cached topology, refreshed when it does not know one of ``host_ids``."""
        with self._lock:
            topo = self._topo
        if topo is None or any(h not in topo.hosts for h in host_ids):
            topo = self._snapshot()[0]
        return topo

    def _vm_props(self, vm_id: str) -> dict[str, Any] | None:
        """One VM's properties, or ``None`` if no such VM exists."""
        s = self._session
        vm = self._ref("VirtualMachine", vm_id)
        try:
            rows = s.retrieve([s.object_filter(vm, self._vim.VirtualMachine, VM_PROPS)])
        except s.vmodl.fault.ManagedObjectNotFound:
            return None
        except s.vmodl.fault.InvalidArgument:
            return None
        return rows[0][1] if rows else None

    # ---- inventory ---------------------------------------------------------------------------
    def hosts(self) -> list[HostInfo]:
        topo, vms = self._snapshot()
        used: dict[str, tuple[int, int]] = {}
        for props in vms.values():
            host = moid(props.get("runtime.host"))
            cpus, memory = vm_usage(props)
            before = used.get(host, (0, 0))
            used[host] = (before[0] + cpus, before[1] + memory)
        infos = [
            host_info(hid, props, topo, used.get(hid, (0, 0))) for hid, props in topo.hosts.items()
        ]
        return sorted(infos, key=lambda h: (h.cluster, h.name))

    def vms(self) -> list[VMInfo]:
        topo, vms = self._snapshot()
        infos = [
            vm_info(vid, props, topo)
            for vid, props in vms.items()
            if listed(props) and moid(props.get("runtime.host")) in topo.hosts
        ]
        return sorted(infos, key=lambda v: v.name)

    def vm(self, ref: str) -> VMInfo:
        if ref.startswith("vm-"):  # an id: fetch just that VM
            props = self._vm_props(ref)
            if props is not None and listed(props):
                host = moid(props.get("runtime.host"))
                topo = self._topology(host)
                if host in topo.hosts:  # else: not in this datacenter
                    return vm_info(ref, props, topo)
        return super().vm(ref)

    def locate(self, vm_id: str) -> str | None:
        props = self._vm_props(vm_id)
        if props is None:
            return None
        return moid(props.get("runtime.host")) or None

    # ---- storage moves -----------------------------------------------------------------------
    def move_storage(self, vm: str, datastore: str | None) -> None:
        """Move ``vm``'s files to ``datastore`` (name or id) with its next migration;
        ``None`` forgets it. The connection option ``datastore=`` sets a default for every VM.

        This is how vSphere's storage move is asked for until :class:`MigrationSpec` carries
        a storage target of its own."""
        info = self.vm(vm)
        with self._lock:
            if datastore is None:
                self._storage.pop(info.id, None)
                return
        ident = self._topology().datastore_id(datastore) or self._snapshot()[0].datastore_id(
            datastore
        )
        if ident is None:
            raise NotFound(f"no datastore {datastore!r} (or the name is ambiguous)")
        with self._lock:
            self._storage[info.id] = ident

    def _datastore(self, vm: VMInfo, topo: Topology, requested: str | None) -> str | None:
        """The datastore id for ``vm``'s next move (the spec's, else ``move_storage``'s,
        else the connection default), or ``None`` to leave its files where they are."""
        with self._lock:
            wanted = requested or self._storage.get(vm.id) or self.settings.datastore
        if not wanted:
            return None
        ident = topo.datastore_id(wanted)
        if ident is None:
            raise InvalidInput(f"no datastore {wanted!r} in {self.settings.display()}")
        current = vm.extra.get("datastores", "").split(",")
        if current == [topo.datastores[ident]]:
            return None  # already there
        return ident

    def _relocate_spec(self, vm: VMInfo, target: HostInfo, datastore: str | None = None) -> Any:
        """Target host; its compute resource's root pool when the VM changes compute
        resource (else the VM keeps its own pool); the datastore for a storage move."""
        topo = self._topology(vm.host, target.id)
        spec = self._vim.vm.RelocateSpec()
        spec.host = self._ref("HostSystem", target.id)
        source, dest = topo.compute_of(vm.host), topo.compute_of(target.id)
        if dest is not None and (source is None or source.id != dest.id):
            spec.pool = self._ref("ResourcePool", dest.pool)
        ident = self._datastore(vm, topo, datastore)
        if ident is not None:
            spec.datastore = self._ref("Datastore", ident)
        return spec

    # ---- pre-checks --------------------------------------------------------------------------
    def check(self, vm: VMInfo, target: HostInfo, spec: MigrationSpec) -> list[Problem]:
        """``CheckRelocate_Task`` for every move; for a live one also
        ``QueryVMotionCompatibilityEx_Task`` (``QueryVMotionCompatibility`` where the Ex call
        is missing). Their errors refuse the move; their warnings go into the record."""
        live = spec.mode is MigrationMode.LIVE or (
            spec.mode is MigrationMode.AUTO and vm.power is PowerState.RUNNING
        )
        try:
            reloc = self._relocate_spec(vm, target, spec.datastore)
        except VMMoveError as exc:
            return [Problem(code="spec", message=str(exc))]
        problems: list[Problem] = []
        vm_ref = self._ref("VirtualMachine", vm.id)
        host_ref = self._ref("HostSystem", target.id)
        checker = self._session.content.vmProvisioningChecker
        if checker is None:
            return [
                Problem(
                    code="no-checker",
                    severity="warning",
                    message="this endpoint has no provisioning checker (ESXi?): "
                    "vSphere validates the move only when it starts",
                )
            ]
        problems += self._run_check(
            "CheckRelocate_Task",
            lambda: checker.CheckRelocate_Task(vm=vm_ref, spec=reloc),
            target.name,
        )
        if live:
            ex = self._run_check(
                "QueryVMotionCompatibilityEx_Task",
                lambda: checker.QueryVMotionCompatibilityEx_Task(vm=[vm_ref], host=[host_ref]),
                target.name,
            )
            if any(p.code == "unavailable" for p in ex):
                ex = self._vmotion_compatibility(vm_ref, host_ref, target.name)
            problems += ex
        unique: dict[tuple[str, str, str], Problem] = {}
        for p in problems:
            unique.setdefault((p.severity, p.code, p.message), p)
        return list(unique.values())

    def _run_check(self, name: str, call: Any, where: str) -> list[Problem]:
        s = self._session
        task = None
        try:
            task = s.call(call)
            info = s.wait_task(task, self.settings.check_timeout)
        except s.vmodl.MethodFault as fault:
            if faults.is_fault(fault, *_UNAVAILABLE):
                return [
                    Problem(
                        code="unavailable",
                        severity="warning",
                        message=f"{name} is not available here ({faults.fault_text(fault)})",
                    )
                ]
            return [faults.problem(fault, where=where)]
        except TimeoutError:
            if task is not None:
                self._cancel_quietly(task)
            return [
                Problem(
                    code="check-timeout",
                    severity="warning",
                    message=f"{name} did not finish in {self.settings.check_timeout:g} s; "
                    "vSphere validates the move again when it starts",
                )
            ]
        if info.state == "error":
            if faults.is_fault(info.error, *_UNAVAILABLE):
                return [Problem(code="unavailable", severity="warning", message=name)]
            return [faults.problem(info.error, where=where)]
        problems = []
        for result in info.result or ():
            at = result.host.name if result.host is not None else where
            problems += [faults.problem(f, where=at) for f in result.error or ()]
            problems += [faults.problem(f, severity="warning", where=at) for f in result.warning]
        return problems

    def _vmotion_compatibility(self, vm_ref: Any, host_ref: Any, where: str) -> list[Problem]:
        s = self._session
        wanted = ["cpu", "software"]
        try:
            answer = s.call(
                lambda: s.si.QueryVMotionCompatibility(
                    vm=vm_ref, host=[host_ref], compatibility=wanted
                )
            )
        except s.vmodl.MethodFault as fault:
            if faults.is_fault(fault, *_UNAVAILABLE):
                return []
            return [faults.problem(fault, where=where)]
        have: set[str] = set()
        for item in answer or ():
            have.update(item.compatibility or ())
        return [
            Problem(code=f"vmotion-{kind}", message=f"{where}: not vMotion-compatible ({kind})")
            for kind in wanted
            if kind not in have
        ]

    def _cancel_quietly(self, task: Any) -> None:
        try:
            self._session.call(task.CancelTask)
        except Exception:
            log.debug("cancelling %s failed", moid(task), exc_info=True)

    # ---- migration ---------------------------------------------------------------------------
    def start(
        self,
        vm: VMInfo,
        target: HostInfo,
        spec: MigrationSpec,
        mode: MigrationMode,
        *,
        needs: frozenset[str],
        reservation: Reservation | None,
        request_id: str = "",
    ) -> Job:
        s = self._session
        reloc = self._relocate_spec(vm, target, spec.datastore)
        vm_ref = self._ref("VirtualMachine", vm.id)
        restart = mode is MigrationMode.COLD and vm.power is PowerState.RUNNING
        try:
            if restart:
                task = s.call(vm_ref.PowerOffVM_Task)
            else:
                priority = self.settings.priority
                task = s.call(lambda: vm_ref.RelocateVM_Task(spec=reloc, priority=priority))
        except s.vmodl.MethodFault as fault:
            raise faults.refusal(fault, f"vSphere refused to move {vm.name}", target.name) from None
        with self._lock:
            self._storage.pop(vm.id, None)
        ref = {
            "task": moid(task),
            "vm": vm.id,
            "source": vm.host,
            "target": target.id,
            "mode": mode.value,
            "restart": "yes" if restart else "no",
        }
        job = Job(id=moid(task), vm=vm.id, source=vm.host, target=target.id, mode=mode, ref=ref)
        run = _Run(
            job=job,
            name=vm.name,
            vm=vm_ref,
            spec=reloc,
            restart=restart,
            stage="stopping" if restart else "relocating",
            task=task,
        )
        with self._lock:
            self._runs[job.id] = run
        log.info(
            "%s: %s %s %s -> %s (task %s)",
            self.settings.display(),
            "cold-moving (power off, relocate, power on)" if restart else f"{mode} migration of",
            vm.name,
            vm.host,
            target.id,
            job.id,
        )
        return job

    def _run(self, job: Job) -> _Run:
        with self._lock:
            run = self._runs.get(job.id)
        if run is None:
            raise NotFound(f"no vSphere job {job.id!r} in this connection (attach it first)")
        return run

    def poll(self, job: Job) -> JobStatus:
        run = self._run(job)
        with run.lock:
            if run.final is None:
                status = self._step(run)
                if status.phase.terminal:
                    run.final = status
                    run.stage = "done"
                else:
                    run.phase = status.phase
                return status
            return run.final

    def _status(self, run: _Run, phase: Phase, native: str, **kw: Any) -> JobStatus:
        """A non-terminal status that never goes back behind what was reported."""
        if _ORDER[phase] < _ORDER[run.phase]:
            phase = run.phase
        return JobStatus(phase=phase, native=native, percent=run.best, **kw)

    def _end(self, run: _Run, phase: Phase, native: str, error: str | None = None) -> JobStatus:
        total = None
        if run.first_queued is not None and run.completed is not None:
            total = max((run.completed - run.first_queued).total_seconds(), 0.0)
        return JobStatus(
            phase=phase,
            native=native,
            percent=run.best,
            vm_host=self.locate(run.job.vm),
            error=error,
            figures=Figures(total_time=total),
        )

    def _info(self, run: _Run) -> Any:
        """The current task's TaskInfo, or ``None`` when the task no longer exists (vCenter
        forgets finished tasks after a while)."""
        s = self._session
        if run.task is None:
            return None
        try:
            info = s.task_info(run.task)
        except s.vmodl.fault.ManagedObjectNotFound:
            return None
        if run.first_queued is None:
            run.first_queued = info.queueTime
        if info.completeTime is not None:
            run.completed = info.completeTime
        return info

    def _begin(self, run: _Run, stage: str, start: Any) -> Any:
        """Start the next task of a pipeline; its fault, if the server refuses at once."""
        s = self._session
        try:
            run.task = s.call(start)
        except s.vmodl.MethodFault as fault:
            run.task = None
            return fault
        run.stage = stage
        return None

    def _step(self, run: _Run) -> JobStatus:
        info = self._info(run)
        if info is None:
            return self._vanished(run)
        state = info.state
        stage = run.stage
        if stage == "relocating":
            return self._relocating(run, info)
        if stage == "stopping":
            if state in ("queued", "running"):
                return self._status(run, Phase.TRANSFERRING, f"powering off: {state}")
            if state == "error":
                return self._end(
                    run, Phase.FAILED, "power-off failed", faults.fault_text(info.error)
                )
            if run.aborting:
                return self._restore(run, Phase.CANCELLED, None)
            spec, priority = run.spec, self.settings.priority
            fault = self._begin(
                run, "relocating", lambda: run.vm.RelocateVM_Task(spec=spec, priority=priority)
            )
            if fault is not None:
                return self._restore(run, Phase.FAILED, faults.fault_text(fault))
            return self._status(run, Phase.TRANSFERRING, "relocating: queued")
        if stage == "starting":
            if state in ("queued", "running"):
                return self._status(run, Phase.SWITCHING_OVER, f"powering on: {state}")
            if state == "error":
                why = f"moved, but powering on failed: {faults.fault_text(info.error)}"
                return self._end(run, Phase.FAILED, "power-on failed", why)
            return self._end(run, Phase.COMPLETED, "success")
        if stage == "restoring":
            if state in ("queued", "running"):
                return self._status(run, Phase.TRANSFERRING, f"powering on again: {state}")
            assert run.outcome is not None
            phase, error = run.outcome
            if state == "error":
                again = f"powering it on again failed: {faults.fault_text(info.error)}"
                error = f"{error}; {again}" if error else again
            return self._end(run, phase, "restored", error)
        raise AssertionError(f"unknown stage {stage!r}")

    def _relocating(self, run: _Run, info: Any) -> JobStatus:
        state = info.state
        if state == "queued":
            return self._status(run, Phase.REQUESTING, "queued")
        if state == "running":
            run.ran = True
            if info.progress is not None:
                run.best = max(run.best or 0.0, float(info.progress))
            return self._status(run, Phase.TRANSFERRING, "running")
        if state == "success":
            run.best = 100.0
            if run.restart:
                fault = self._begin(run, "starting", run.vm.PowerOnVM_Task)
                if fault is not None:
                    return self._end(
                        run,
                        Phase.FAILED,
                        "power-on failed",
                        f"moved, but powering on failed: {faults.fault_text(fault)}",
                    )
                return self._status(run, Phase.SWITCHING_OVER, "powering on: queued")
            return self._end(run, Phase.COMPLETED, "success")
        fault = info.error
        cancelled = faults.is_fault(fault, "RequestCanceled") or bool(info.cancelled)
        if cancelled:
            phase, native, error = Phase.CANCELLED, "cancelled", "RequestCanceled"
        else:
            phase, native, error = Phase.FAILED, "error", faults.fault_text(fault)
        if run.restart:
            return self._restore(run, phase, error)
        if not cancelled and not run.ran and info.startTime is None:
            # Refused before it ran (admission, validation): say why, in the error's type.
            raise faults.refusal(fault, f"vSphere refused to move {run.name}", run.job.target)
        return self._end(run, phase, native, error)

    def _restore(self, run: _Run, phase: Phase, error: str | None) -> JobStatus:
        """Power the VM on again where it is, then report ``phase``."""
        run.outcome = (phase, error)
        fault = self._begin(run, "restoring", run.vm.PowerOnVM_Task)
        if fault is not None:
            again = f"powering it on again failed: {faults.fault_text(fault)}"
            return self._end(run, phase, "restore failed", f"{error}; {again}" if error else again)
        return self._status(run, Phase.TRANSFERRING, "powering on again: queued")

    def _vanished(self, run: _Run) -> JobStatus:
        """The task is gone (expired after the client that watched it died): the VM's
        location tells the outcome."""
        host = self.locate(run.job.vm)
        if host == run.job.target:
            return self._end(run, Phase.COMPLETED, "task expired; VM on target")
        return self._end(
            run, Phase.FAILED, "task expired", f"task {run.job.id} no longer exists on the server"
        )

    def abort(self, job: Job) -> None:
        run = self._run(job)
        with run.lock:
            run.aborting = True
            if run.stage != "relocating" or run.task is None:
                return  # a pipeline stops at its next step; restoring/starting go on
            s = self._session
            try:
                info = s.task_info(run.task)
                if info.state not in ("queued", "running"):
                    return
                if not info.cancelable:
                    log.warning("%s: task %s is not cancelable now", self, job.id)
                    return
                s.call(run.task.CancelTask)
            except (s.vim.fault.InvalidState, s.vmodl.fault.ManagedObjectNotFound):
                return  # it ended meanwhile: poll reports how
            log.info("%s: cancel sent for task %s", self.settings.display(), job.id)

    def finish(self, job: Job) -> None:
        with self._lock:
            self._runs.pop(job.id, None)

    def attach(self, ref: Mapping[str, str]) -> Job:
        """Find a job again from ``Job.ref`` (the task's managed object id and the move).

        A reference written before ``start`` returned (``intent=start``: the client died
        inside it) is matched to the VM's newest relocation task, if vCenter has one that
        is still running or that put the VM on the target."""
        if "task" not in ref and ref.get("intent") == "start" and "vm" in ref:
            ref = self._started_by_a_dead_client(ref)
        try:
            task_id, vm_id = ref["task"], ref["vm"]
            mode = MigrationMode(ref.get("mode", "live"))
        except (KeyError, ValueError):
            raise InvalidInput(f"not a vsphere job reference: {dict(ref)!r}") from None
        job = Job(
            id=task_id,
            vm=vm_id,
            source=ref.get("source", ""),
            target=ref.get("target", ""),
            mode=mode,
            ref=dict(ref),
        )
        with self._lock:
            if task_id in self._runs:
                return self._runs[task_id].job
        s = self._session
        task = self._ref("Task", task_id)
        try:
            info = s.task_info(task)
        except s.vmodl.fault.ManagedObjectNotFound:
            info = None
        if info is None and self._vm_props(vm_id) is None:
            raise NotFound(f"no task {task_id} and no VM {vm_id}: nothing to attach to")
        restart = ref.get("restart") == "yes"
        vm = self._ref("VirtualMachine", vm_id)
        spec = None
        if restart and job.target:
            spec = self._relocate_spec(self.vm(vm_id), self.host(job.target))
        run = _Run(
            job=job,
            name=str((self._vm_props(vm_id) or {}).get("name", vm_id)),
            vm=vm,
            spec=spec,
            restart=restart,
            stage="stopping" if restart else "relocating",
            task=task if info is not None else None,
        )
        if restart and info is not None and info.state == "success":
            self._resume(run)
        with self._lock:
            self._runs[task_id] = run
        return job

    def _started_by_a_dead_client(self, ref: Mapping[str, str]) -> dict[str, str]:
        s = self._session
        vm_id, target = ref["vm"], ref.get("target", "")
        newest: tuple[Any, Any] | None = None
        for task in s.call(lambda: s.content.taskManager.recentTask) or ():
            info = s.task_info(task)
            if moid(info.entity) != vm_id or info.descriptionId != "VirtualMachine.relocate":
                continue
            if newest is None or info.queueTime > newest[1].queueTime:
                newest = (task, info)
        props = self._vm_props(vm_id) or {}
        host = moid(props.get("runtime.host"))
        if newest is None or not (
            newest[1].state in ("queued", "running")
            or (newest[1].state == "success" and host == target)
        ):
            raise NotFound(f"no relocation of {vm_id} to {target} on the server")
        running = props.get("runtime.powerState") == "poweredOn"
        return {
            "task": moid(newest[0]),
            "vm": vm_id,
            "source": host if newest[1].state != "success" else "",
            "target": target,
            "mode": (MigrationMode.LIVE if running else MigrationMode.COLD).value,
            "restart": "no",
        }

    def _resume(self, run: _Run) -> None:
        """Where a cold pipeline whose power-off finished stands now, from the VM itself:
        on the target -> powering on (or done); a relocation still running -> watch it."""
        props = self._vm_props(run.job.vm) or {}
        host = moid(props.get("runtime.host"))
        on = props.get("runtime.powerState") == "poweredOn"
        if host == run.job.target:
            run.stage = "starting"
            run.task = None if on else self._session.call(run.vm.PowerOnVM_Task)
            if on:  # nothing left to do
                run.final = JobStatus(phase=Phase.COMPLETED, native="success", vm_host=host)
            return
        for task in self._session.call(lambda: self._session.content.taskManager.recentTask):
            info = self._session.task_info(task)
            if (
                moid(info.entity) == run.job.vm
                and info.descriptionId == "VirtualMachine.relocate"
                and info.state in ("queued", "running")
            ):
                run.stage, run.task = "relocating", task
                return
        if on:  # powered on again on the source by someone else: the move did not happen
            run.final = JobStatus(
                phase=Phase.FAILED,
                native="interrupted",
                vm_host=host or None,
                error="the cold move was interrupted: the VM runs on its source again",
            )
            return
        # Still powered off on the source with no relocation running: the stopping step is
        # done, so the next poll starts the relocation (the stage stays "stopping").

    def close(self) -> None:
        with self._lock:
            view, self._view = self._view, None
        try:
            if view is not None:
                self._session.call(view.Destroy)
        except Exception:
            log.debug("destroying the container view failed", exc_info=True)
        self._session.close()
