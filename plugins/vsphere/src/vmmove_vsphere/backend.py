"""The ``vsphere://`` backend: vmmove's protocol over vCenter tasks.

Native status -> phase (``poll``):

=====================================  ==================  =================================
vSphere                                phase               notes
=====================================  ==================  =================================
RelocateVM_Task ``queued``             requesting          admission, placement checks
RelocateVM_Task ``running``            transferring        ``TaskInfo.progress`` -> percent
RelocateVM_Task ``success``            completed           ``vm_host`` = the VM's runtime.host
``error`` = ``RequestCanceled``        cancelled           the VM stays on its source
``error``, a refusal fault             (raised)            ReservationRefused, Conflict,
                                                           PrecheckFailed: by the fault's type,
                                                           queued or started alike
``error``, any other fault             failed              the fault's type and message
task gone (``ManagedObjectNotFound``)  completed / failed  from the VM's recent tasks, else
                                                           from where the VM runs now
=====================================  ==================  =================================

A cold move (``mode=cold``, or a ``ColdFallback`` policy step) is orchestrated by the core
(:mod:`vmmove.cold`, ``Capabilities.relocate_stopped``) from three primitives:
``power_off`` (``ShutdownGuest``, or ``PowerOffVM_Task`` when forced), ``relocate`` (a
``RelocateVM_Task`` of the stopped VM, polled as above) and ``power_on``
(``PowerOnVM_Task``). Each returns once vCenter has the request; the core watches the VM's
power state.

vCenter restarts: sessions die (the session logs in again), task MoRefs die (a vanished
task is settled from the VM's recent tasks or its host, never reported as "unknown"), and
the VM is where the hosts left it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from vmmove.backend import Backend, Intent, Job, JobRef, JobStatus, Reservation
from vmmove.errors import Conflict, InvalidInput, NotFound, NotSupported, VMMoveError
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
from vmmove.policy import Policy
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
from vmmove_vsphere.options import Settings, settings
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
_RELOCATIONS = ("VirtualMachine.relocate", "VirtualMachine.migrate")
#: How much earlier than the intent a task may have been queued and still be the intent's: the
#: clock skew is measured over one round trip, and vCenter stamps queueTime on its own clock.
_INTENT_SLACK = dt.timedelta(seconds=1)


@dataclass(frozen=True, kw_only=True)
class _Intent:
    """A start request as this process sent it: what, and when on vCenter's clock."""

    vm: str
    target: str
    mode: MigrationMode
    since: datetime


@dataclass(kw_only=True)
class _Run:
    """What the backend holds for one job it started or attached to."""

    job: Job
    name: str  # the VM's name, for messages
    vm: Any  # vim.VirtualMachine
    task: Any  # the vim.Task of the relocation (None: expired, see poll)
    lock: threading.Lock = field(default_factory=threading.Lock)
    phase: Phase = Phase.REQUESTING  # the furthest non-terminal phase reported
    ran: bool = False  # the relocation reached `running`
    best: float | None = None  # highest progress seen
    first_queued: datetime | None = None
    completed: datetime | None = None
    final: JobStatus | None = None
    seen: set[str] = field(default_factory=set)  # ids of every task this job has used
    queued: datetime | None = None  # queueTime of the current task


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
        self._intents: dict[str, _Intent] = {}  # request id -> the start request it names
        self._by_request: dict[str, str] = {}  # request id -> job id, once known
        self._claimed: set[str] = set()  # task ids that belong to a job of this backend
        self._power_tasks: dict[str, Any] = {}  # VM id -> its last PowerOnVM_Task (cold moves)
        if session is None:
            self._session.connect()
        try:
            self._root = self._find_root()
        except BaseException:
            self._session.close()
            raise

    @classmethod
    def from_uri(cls, uri: str, options: Mapping[str, Any]) -> VSphereBackend:
        """``options`` as the core parsed them from :data:`vmmove_vsphere.options.OPTIONS`."""
        return cls(settings(uri, options))

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
        """The VM's ``runtime.host``, read now; ``None`` when no such VM is registered.
        ConnectionFailed (never ``None``) when vCenter cannot be asked, or answers without
        the property (see :meth:`Session.retrieve`)."""
        props = self._vm_props(vm_id)
        if props is None:
            return None
        return moid(props.get("runtime.host")) or None

    def _recent_tasks(self, vm_id: str) -> list[tuple[Any, Any]]:
        """``(task, TaskInfo)`` of the VM's recent tasks, oldest first: its own ``recentTask``
        and the TaskManager's (some endpoints keep only the latter), in two reads. Tasks
        vCenter has forgotten meanwhile are left out."""
        s, vim = self._session, self._vim
        vm = self._ref("VirtualMachine", vm_id)
        manager = s.content.taskManager
        rows = s.retrieve(
            [
                s.objects_filter([vm], vim.VirtualMachine, ["recentTask"]),
                s.objects_filter([manager], vim.TaskManager, ["recentTask"]),
            ]
        )
        refs: dict[str, Any] = {}
        for _obj, props in rows:
            value = props.get("recentTask")
            for task in value if isinstance(value, list | tuple) else ():
                if moid(task):
                    refs.setdefault(moid(task), task)
        if not refs:
            return []
        infos = s.retrieve([s.objects_filter(refs.values(), vim.Task, ["info"])])
        out = [
            (task, props["info"])
            for task, props in infos
            if props.get("info") is not None and moid(props["info"].entity) == vm_id
        ]
        far = datetime.max.replace(tzinfo=dt.UTC)
        return sorted(out, key=lambda pair: pair[1].queueTime or far)

    def _describe_task(self, task: Any) -> str:
        """``task-7 (VirtualMachine.reconfigure by bob, running)``, as far as vCenter says."""
        ident = moid(task)
        if not ident:
            return ""
        s = self._session
        try:
            info = s.task_info(task)
        except (VMMoveError, s.vmodl.MethodFault):
            return f"task {ident}"
        who = getattr(info.reason, "userName", None)
        by = f" by {who}" if isinstance(who, str) and who else ""
        return f"task {ident} ({info.descriptionId or info.name}{by}, {info.state})"

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
    def check(
        self,
        vm: VMInfo,
        target: HostInfo,
        spec: MigrationSpec,
        *,
        mode: MigrationMode,
        policy: Policy,
    ) -> list[Problem]:
        """``CheckRelocate_Task`` for every move; for a live one also
        ``QueryVMotionCompatibilityEx_Task`` (``QueryVMotionCompatibility`` where the Ex call
        is missing). Their errors refuse the move; their warnings go into the record.

        Across clusters the full-spec ``CheckRelocate_Task`` (with the target cluster's pool,
        as the move itself is sent) is the authority: ``QueryVMotionCompatibilityEx_Task``
        checks a spec without a pool and can flag a host in another cluster that the real
        move accepts, so its errors become warnings there."""
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
        full = self._run_check(
            "CheckRelocate_Task",
            lambda: checker.CheckRelocate_Task(vm=vm_ref, spec=reloc),
            target.name,
        )
        problems += full
        if live:
            ex = self._run_check(
                "QueryVMotionCompatibilityEx_Task",
                lambda: checker.QueryVMotionCompatibilityEx_Task(vm=[vm_ref], host=[host_ref]),
                target.name,
            )
            answered = not any(p.code in ("unavailable", "check-timeout") for p in full)
            if any(p.code == "unavailable" for p in ex):
                ex = self._vmotion_compatibility(vm_ref, host_ref, target.name)
            elif reloc.pool is not None and answered:
                ex = [self._overruled(p, target) for p in ex]
            problems += ex
        unique: dict[tuple[str, str, str], Problem] = {}
        for p in problems:
            unique.setdefault((p.severity, p.code, p.message), p)
        return list(unique.values())

    @staticmethod
    def _overruled(problem: Problem, target: HostInfo) -> Problem:
        """A pool-less compatibility error on a cross-cluster move, as a warning."""
        if problem.severity != "error":
            return problem
        return Problem(
            code=problem.code,
            severity="warning",
            message=f"{problem.message} (QueryVMotionCompatibilityEx_Task checks a spec "
            "without a resource pool; CheckRelocate_Task with the pool of "
            f"{target.cluster or target.name}, as the move is sent, decides)",
        )

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
        policy: Policy,
        needs: frozenset[str],
        reservation: Reservation | None,
        request_id: str = "",
    ) -> Job:
        if mode is MigrationMode.COLD and vm.power is not PowerState.STOPPED:
            # The core stops it first (power_off, relocate, power_on: vmmove.cold).
            raise Conflict(f"{vm.name} must be stopped before a cold move ({vm.power})")
        return self._relocate(vm, target, spec, mode, request_id)

    def _relocate(
        self,
        vm: VMInfo,
        target: HostInfo,
        spec: MigrationSpec,
        mode: MigrationMode,
        request_id: str,
    ) -> Job:
        """``RelocateVM_Task``: a live move of a running VM, or the move of a stopped one."""
        s = self._session
        reloc = self._relocate_spec(vm, target, spec.datastore)
        vm_ref = self._ref("VirtualMachine", vm.id)
        if request_id:  # what attach() needs should the answer be lost (see _attach_intent)
            since = s.server_time()
            with self._lock:
                self._intents[request_id] = _Intent(
                    vm=vm.id, target=target.id, mode=mode, since=since
                )
        priority = self.settings.priority
        try:
            task = s.call(lambda: vm_ref.RelocateVM_Task(spec=reloc, priority=priority))
        except s.vmodl.MethodFault as fault:
            raise self._refusal(fault, vm.name, target.name) from None
        with self._lock:
            self._storage.pop(vm.id, None)
        job = self._job(
            task,
            vm_id=vm.id,
            source=vm.host,
            target=target.id,
            mode=mode,
            request_id=request_id,
        )
        run = _Run(job=job, name=vm.name, vm=vm_ref, task=task)
        self._keep(run)
        log.info(
            "%s: %s migration of %s %s -> %s (task %s)",
            self.settings.display(),
            mode,
            vm.name,
            vm.host,
            target.id,
            job.id,
        )
        return job

    # ---- cold migration primitives (the core's vmmove.cold drives them) ----------------
    def _power_state(self, vm: VMInfo) -> str:
        props = self._vm_props(vm.id)
        if props is None:
            raise NotFound(f"{self.settings.display()}: no VM {vm.id} ({vm.name})")
        return str(props.get("runtime.powerState", ""))

    def power_off(self, vm: VMInfo, *, force: bool) -> None:
        """``ShutdownGuest`` (VMware Tools ask the guest; vCenter answers once the request is
        passed on), or ``PowerOffVM_Task`` when ``force`` (not awaited)."""
        s = self._session
        state = self._power_state(vm)
        if state == "poweredOff" or (not force and state != "poweredOn"):
            return  # stopped already; a suspended guest cannot be asked (the core forces)
        vm_ref = self._ref("VirtualMachine", vm.id)
        try:
            if force:
                task = s.call(vm_ref.PowerOffVM_Task)
                log.info("%s: powering %s off (task %s)", self, vm.name, moid(task))
            else:
                s.call(vm_ref.ShutdownGuest)
                log.info("%s: asked the guest of %s to shut down", self, vm.name)
        except s.vmodl.MethodFault as fault:
            if faults.is_fault(fault, "InvalidPowerState"):
                return  # it stopped meanwhile
            if not force and faults.is_fault(fault, "ToolsUnavailable"):
                # Without VMware Tools nobody can ask the guest; the core powers the VM off
                # after the policy's shutdown_timeout.
                log.warning(
                    "%s: VMware Tools do not run in %s: the guest cannot be asked to shut down",
                    self,
                    vm.name,
                )
                return
            raise faults.refusal(fault, f"vSphere refused to stop {vm.name}", vm.host) from None

    def power_on(self, vm: VMInfo) -> None:
        """``PowerOnVM_Task`` where the VM is registered (not awaited)."""
        s = self._session
        if self._power_state(vm) == "poweredOn":
            return
        vm_ref = self._ref("VirtualMachine", vm.id)
        try:
            task = s.call(vm_ref.PowerOnVM_Task)
        except s.vmodl.MethodFault as fault:
            if faults.is_fault(fault, "InvalidPowerState"):
                return  # it runs already
            raise faults.refusal(fault, f"vSphere refused to start {vm.name}", vm.host) from None
        log.info("%s: powering %s on (task %s)", self, vm.name, moid(task))
        with self._lock:
            self._power_tasks[vm.id] = task

    def power_on_failure(self, vm: VMInfo) -> str | None:
        """The error of the VM's last ``PowerOnVM_Task`` once vCenter says it failed (a host
        that cannot start it: resources, a locked file, a missing device)."""
        with self._lock:
            task = self._power_tasks.get(vm.id)
        if task is None:
            return None
        s = self._session
        try:
            info = s.task_info(task)
        except s.vmodl.fault.ManagedObjectNotFound:
            info = None  # vCenter forgot it: the power state is all there is to go by
        if info is None or info.state != "error":
            return None
        with self._lock:
            self._power_tasks.pop(vm.id, None)
        return faults.fault_text(info.error) if info.error is not None else "power-on failed"

    def relocate(
        self, vm: VMInfo, target: HostInfo, spec: MigrationSpec, *, request_id: str
    ) -> Job:
        """``RelocateVM_Task`` of a VM that is not running, polled like a live move. vCenter
        moves a suspended VM cold too (its suspend file travels with it): it stays suspended
        on the target. A running VM is refused: the core stops it first."""
        state = self._power_state(vm)
        if state not in ("poweredOff", "suspended"):
            raise Conflict(f"{vm.name} must be stopped before it is moved cold ({state})")
        return self._relocate(vm, target, spec, MigrationMode.COLD, request_id)

    @staticmethod
    def _job(
        task: Any,
        *,
        vm_id: str,
        source: str,
        target: str,
        mode: MigrationMode,
        request_id: str,
    ) -> Job:
        data = {
            "task": moid(task),
            "vm": vm_id,
            "source": source,
            "target": target,
            "mode": mode.value,
        }
        if request_id:
            data["request_id"] = request_id
        ref = JobRef(data=data)
        return Job(id=moid(task), vm=vm_id, source=source, target=target, mode=mode, ref=ref)

    def _keep(self, run: _Run) -> None:
        with self._lock:
            self._runs[run.job.id] = run
            if run.task is not None:
                self._claimed.add(moid(run.task))
                run.seen.add(moid(run.task))
            request_id = run.job.ref.get("request_id", "")
            if request_id:
                self._by_request[request_id] = run.job.id
                self._intents.pop(request_id, None)

    def _refusal(self, fault: Any, name: str, where: str) -> VMMoveError:
        other = ""
        if faults.is_fault(fault, "TaskInProgress"):
            other = self._describe_task(getattr(fault, "task", None))
        return faults.refusal(fault, f"vSphere refused to move {name}", where, other)

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
                else:
                    run.phase = status.phase
                return status
            return run.final

    def _status(self, run: _Run, phase: Phase, native: str, **kw: Any) -> JobStatus:
        """A non-terminal status that never goes back behind what was reported."""
        if _ORDER[phase] < _ORDER[run.phase]:
            phase = run.phase
        return JobStatus(phase=phase, native=native, percent=run.best, **kw)

    def _end(
        self,
        run: _Run,
        phase: Phase,
        native: str,
        error: str | None = None,
        *,
        vm_host: str | None = None,
    ) -> JobStatus:
        """A terminal status. ``total_time``: from the task's queueing to its end."""
        total = None
        if run.first_queued is not None and run.completed is not None:
            total = max((run.completed - run.first_queued).total_seconds(), 0.0)
        return JobStatus(
            phase=phase,
            native=native,
            percent=run.best,
            vm_host=vm_host if vm_host is not None else self.locate(run.job.vm),
            error=error,
            figures=Figures(total_time=total),
        )

    def _info(self, run: _Run) -> Any:
        """The current task's TaskInfo, or ``None`` when vCenter no longer knows the task (it
        restarted, or forgot the task a while after it ended)."""
        s = self._session
        if run.task is None:
            return None
        try:
            info = s.task_info(run.task)
        except s.vmodl.fault.ManagedObjectNotFound:
            return None
        self._times(run, info)
        return info

    @staticmethod
    def _times(run: _Run, info: Any) -> None:
        run.queued = info.queueTime
        if run.first_queued is None or (
            info.queueTime is not None and info.queueTime < run.first_queued
        ):
            run.first_queued = info.queueTime
        if info.completeTime is not None and (
            run.completed is None or info.completeTime > run.completed
        ):
            run.completed = info.completeTime

    def _step(self, run: _Run) -> JobStatus:
        info = self._info(run)
        if info is None:
            return self._vanished(run)
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
            return self._end(run, Phase.COMPLETED, "success")
        fault = info.error
        if faults.is_fault(fault, "RequestCanceled") or bool(info.cancelled):
            return self._end(run, Phase.CANCELLED, "cancelled", "RequestCanceled")
        if faults.is_refusal(fault):
            # A refusal, by the fault's type: vCenter sends these as a task that fails while
            # queued or as one that starts and then fails (startTime set): the VM stayed.
            raise self._refusal(fault, run.name, run.job.target)
        return self._end(run, Phase.FAILED, "error", faults.fault_text(fault))

    def _vanished(self, run: _Run) -> JobStatus:
        """vCenter no longer knows the current task: it restarted (every task MoRef dies with
        it), or the task ended long enough ago to be forgotten. The same task may be listed
        again among the VM's recent tasks; otherwise where the VM runs now, and whether it
        runs, settles the step the task was for."""
        gone = moid(run.task) if run.task is not None else run.job.id
        again = self._find_again(run)
        if again is not None:
            log.info("%s: task %s is listed again as %s", self, gone, moid(again))
            run.task = again
            run.seen.add(moid(again))
            with self._lock:
                self._claimed.add(moid(again))
            return self._step(run)
        props = self._vm_props(run.job.vm)
        if props is None:
            return self._end(
                run,
                Phase.FAILED,
                "VM gone",
                f"task {gone} and the VM {run.name} are both gone from vCenter",
                vm_host="",
            )
        host = moid(props.get("runtime.host"))
        lost = f"task {gone} is gone from vCenter (restarted, or the task aged out)"
        where = host or "no host"
        log.warning("%s: %s; %s runs on %s", self.settings.display(), lost, run.name, where)
        if host and host == run.job.target:
            run.best = 100.0
            return self._end(run, Phase.COMPLETED, "task gone; VM on target", vm_host=host)
        return self._end(
            run,
            Phase.FAILED,
            "task gone; VM not on target",
            f"{lost} and {run.name} is on {where}: it did not move",
            vm_host=host,
        )

    def _find_again(self, run: _Run) -> Any:
        """The relocation among the VM's recent tasks under another MoRef (a vCenter that
        lists its tasks again after a restart): a relocation of the same queue time. ``None``
        if vCenter lists no such task, or the lost task's queue time was never seen (then
        nothing tells another client's later task from ours)."""
        if run.final is not None or run.queued is None:
            return None
        with self._lock:
            claimed = set(self._claimed)
        for task, info in self._recent_tasks(run.job.vm):
            ident = moid(task)
            if ident in run.seen or ident in claimed or info.descriptionId not in _RELOCATIONS:
                continue
            if info.queueTime is not None and abs(info.queueTime - run.queued) <= _INTENT_SLACK:
                return task
        return None

    def abort(self, job: Job) -> None:
        run = self._run(job)
        with run.lock:
            if run.final is not None or run.task is None:
                return  # it ended, or vCenter lost the task: poll settles it
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
                return  # it ended meanwhile, or vCenter lost it: poll reports how
            log.info("%s: cancel sent for task %s", self.settings.display(), job.id)

    def finish(self, job: Job) -> None:
        with self._lock:
            self._runs.pop(job.id, None)

    def attach(self, ref: JobRef) -> Job:
        """Find a job again from ``Job.ref`` (the task's managed object id and the move), or
        from the reference saved before ``start`` (see :meth:`_attach_intent`)."""
        if ref.intent is Intent.START:
            return self._attach_intent(ref)
        if ref.get("restart") == "yes":
            # The backend's own cold pipeline is gone (the core orchestrates cold moves now).
            raise NotSupported(
                f"job {ref.get('task', '?')} is a cold move begun by an older vmmove-vsphere; "
                "look at the VM in vCenter and start it where it is if it is stopped"
            )
        task_id, vm_id = ref.get("task"), ref.get("vm")
        try:
            mode = MigrationMode(ref.get("mode", "live"))
        except ValueError:
            mode = None
        if not task_id or not vm_id or mode is None:
            raise InvalidInput(f"not a vsphere job reference: {dict(ref.data)!r}")
        job = Job(
            id=task_id,
            vm=vm_id,
            source=ref.get("source"),
            target=ref.get("target"),
            mode=mode,
            ref=ref,
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
        props = self._vm_props(vm_id)
        if info is None and props is None:
            raise NotFound(f"no task {task_id} and no VM {vm_id}: nothing to attach to")
        run = _Run(
            job=job,
            name=str((props or {}).get("name", vm_id)),
            vm=self._ref("VirtualMachine", vm_id),
            task=task if info is not None else None,
        )
        run.seen.add(task_id)
        if info is not None:
            self._times(run, info)
        self._keep(run)
        return job

    def _attach_intent(self, ref: JobRef) -> Job:
        """The job a start request began whose answer never came back (a dropped connection,
        a timeout, or a client that died inside ``start``).

        vCenter cannot carry our request id on ``RelocateVM_Task``: ``TaskInfo.activationId``
        is filled only for tasks an extension creates (``TaskManager.CreateTask``), and the
        SOAP ``operationID`` header only reaches vCenter's logs. So the request is matched by
        what it asked: the VM's first relocation queued at or after the moment the request
        was sent, on vCenter's clock, that no other job of ours holds. The target cannot be
        read from a TaskInfo; the engine's location check settles it once the task ends.

        The moment is known exactly when this process sent the request; otherwise from the
        intent's ``at`` (seconds since the epoch, the writer's clock) if it has one; without
        either (a client that died inside start, an older record), the VM's newest relocation
        that is still running or that put the VM on the target is taken."""
        vm_id, target, request_id = ref.vm, ref.target, ref.request_id
        if not vm_id:
            raise InvalidInput(f"not a vsphere intent reference: {ref!r}")
        with self._lock:
            known = self._by_request.get(request_id) if request_id else None
            if known is not None and known in self._runs:
                return self._runs[known].job
            intent = self._intents.get(request_id) if request_id else None
            claimed = set(self._claimed)
        mode = ref.mode or (intent.mode if intent else MigrationMode.LIVE)
        since = intent.since if intent is not None else self._intent_time(ref)
        tasks = [
            (task, info)
            for task, info in self._recent_tasks(vm_id)
            if moid(task) not in claimed and info.descriptionId in _RELOCATIONS
        ]
        if since is not None:
            after = [
                (t, i)
                for t, i in tasks
                if i.queueTime is not None and i.queueTime >= since - _INTENT_SLACK
            ]
            first = after[0] if after else None
        else:
            first = self._newest_plausible(vm_id, target, tasks)
        if first is None:
            raise NotFound(
                f"vCenter shows no task of the start request for {vm_id} -> {target or '?'}"
                + (" (yet)" if since is not None else "")
            )
        task, info = first
        # Until the relocation succeeds the VM is on its source; after, the record knows it.
        source = "" if info.state == "success" else (self.locate(vm_id) or "")
        job_ref = self._job(
            task,
            vm_id=vm_id,
            source=source,
            target=target,
            mode=mode,
            request_id=request_id,
        ).ref
        log.info(
            "%s: the start request %s for %s was acted on: task %s (%s)",
            self.settings.display(),
            request_id or "(no id)",
            vm_id,
            moid(task),
            info.state,
        )
        return self.attach(job_ref)

    def _intent_time(self, ref: JobRef) -> datetime | None:
        """The intent's ``at`` (seconds since the epoch on the writer's clock) on vCenter's
        clock, or ``None``."""
        if ref.at is None:
            return None
        try:
            return self._session.server_time(ref.at)
        except (TypeError, ValueError, OverflowError, OSError):
            return None

    def _newest_plausible(
        self, vm_id: str, target: str, tasks: list[tuple[Any, Any]]
    ) -> tuple[Any, Any] | None:
        if not tasks:
            return None
        task, info = tasks[-1]
        if info.state in ("queued", "running"):
            return task, info
        if info.state == "success" and target and self.locate(vm_id) == target:
            return task, info
        return None

    def close(self) -> None:
        with self._lock:
            view, self._view = self._view, None
        try:
            if view is not None:
                self._session.call(view.Destroy)
        except Exception:
            log.debug("destroying the container view failed", exc_info=True)
        self._session.close()
