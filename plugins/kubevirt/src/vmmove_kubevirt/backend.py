"""``kubevirt://CONTEXT/NAMESPACE``: vmmove on KubeVirt, through the ``kubernetes`` client.

A live migration is a ``VirtualMachineInstanceMigration`` object that KubeVirt's controller
advances; vmmove creates it, watches it and the VMI, and deletes it to cancel. For a cold
migration (orchestrated by the core, :mod:`vmmove.cold`) this backend supplies the three
primitives: stop the ``VirtualMachine`` (its run strategy), move its node pin, start it.

Threads: per connection, one watch thread per watched resource (migrations, VMIs) and one
worker for cancels and label clean-up, started on the first migration. None per migration:
``poll`` answers from the watch caches at once.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from vmmove.backend import Backend, Intent, Job, JobRef, JobStatus
from vmmove.engine import PLATFORM_DECIDES
from vmmove.errors import (
    Conflict,
    ConnectionFailed,
    InvalidInput,
    NotFound,
    NotSupported,
    VMMoveError,
)
from vmmove.machine import Phase
from vmmove.model import (
    Figures,
    HostInfo,
    MigrationMode,
    MigrationSpec,
    PowerState,
    Problem,
    Problems,
    VMInfo,
)
from vmmove.policy import Action, Policy
from vmmove.secrets import Secret
from vmmove_kubevirt import objects
from vmmove_kubevirt.capabilities import CAPABILITIES
from vmmove_kubevirt.options import OPTIONS
from vmmove_kubevirt.phases import (
    PHASE_RANK,
    VMIM_PHASES,
    live_status,
    settled,
    state_for,
    vm_node,
)
from vmmove_kubevirt.policy import (
    MANAGED_BY,
    POLICY_GROUP,
    POLICY_LABEL,
    POLICY_PLURAL,
    POLICY_VERSION,
    PolicyPlan,
    cluster_default_notes,
    plan,
)

if TYPE_CHECKING:
    from vmmove_kubevirt.kube import Informer, Kube

__all__ = ["CAPABILITIES", "KubeVirtBackend"]

log = logging.getLogger("vmmove.kubevirt")

Obj = dict[str, Any]
VMIS, VMS, VMIMS = "virtualmachineinstances", "virtualmachines", "virtualmachineinstancemigrations"
HOSTNAME = objects.HOSTNAME_LABEL
#: On every VMIM vmmove creates: the engine's request id (unique per start attempt), to
#: find the object when the answer to the create is lost.
REQUEST_ANNOTATION = "vmmove.io/request-id"
#: On every VMIM vmmove creates: the MigrationPolicy label value it put on the VMI for it.
POLICY_ANNOTATION = "vmmove.io/policy"
#: Beside the policy label on a VMI: when vmmove put it there (epoch seconds).
LABELLED_AT = "migrations.vmmove.io/labelled-at"
#: A policy label on a VMI with no active migration, older than this, was left behind.
STALE_LABEL_SECONDS = 60.0
MANAGED_SELECTOR = "app.kubernetes.io/managed-by=vmmove"
#: On a VirtualMachine vmmove stopped: the runStrategy to give back when it is started.
RUN_STRATEGY_ANNOTATION = "vmmove.io/run-strategy"
#: ``Job.ref["kind"]`` of moving a stopped VM's node pin (a cold move's middle step).
RELOCATE = "relocate"
_RUNNING_STRATEGIES = ("Always", "RerunOnFailure")


def _stamp(text: Any) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class _Live:
    job: Job
    name: str
    uid: str
    vmi: str
    aborted: bool = False
    gone_at: float | None = None
    last: JobStatus | None = None
    policy_label: str | None = None
    # vmmove's own clock (monotonic) on the transfer: first and last poll that saw it
    # running, and the first that saw it over; KubeVirt's timestamps have whole seconds.
    run_first: float | None = None
    run_last: float | None = None
    over_at: float | None = None


class KubeVirtBackend(Backend):
    """``kubevirt://CONTEXT/NAMESPACE`` (context and namespace optional: the kubeconfig's
    current ones; in a pod without a kubeconfig, the service account's).

    Options: :data:`vmmove_kubevirt.options.OPTIONS`, parsed by the core (the factory
    hands them over already converted to their kinds; the token as a Secret).
    """

    scheme = "kubevirt"
    capabilities = CAPABILITIES
    poll_interval = 0.25

    def __init__(self, uri: str, options: Mapping[str, Any] | None = None) -> None:
        # The declared defaults under what was given (the core passes both already).
        opts = {o.name: o.default for o in OPTIONS if o.default is not None}
        opts.update(options or {})
        parts = urlsplit(uri)
        if parts.scheme != "kubevirt":
            raise InvalidInput(f"not a kubevirt:// URI: {uri!r}")
        context = unquote(parts.netloc) or None
        namespace = unquote(parts.path.strip("/")) or None
        if namespace is not None and "/" in namespace:
            raise InvalidInput("kubevirt://CONTEXT/NAMESPACE: the namespace has no '/'")
        self.poll_interval = float(opts["poll_interval"])
        timeout = float(opts["timeout"])
        self._watch_seconds = int(opts["watch_seconds"])
        if not (self.poll_interval > 0 and timeout > 0 and self._watch_seconds > 0):
            raise InvalidInput("poll_interval, timeout and watch_seconds must be positive")
        self._use_policies = bool(opts["migration_policy"])
        kubeconfig = opts.get("kubeconfig")
        in_cluster = opts.get("in_cluster")
        token: Secret | None = opts.get("token")

        from vmmove_kubevirt import kube  # noqa: PLC0415 (kubernetes loads on connect)

        self._kmod = kube
        conn = kube.connect(
            context,
            namespace,
            str(kubeconfig) if kubeconfig is not None else None,
            None if in_cluster is None else bool(in_cluster),
            token,
            insecure=bool(opts["insecure"]),
        )
        self._kube: Kube = kube.Kube(conn, timeout=timeout)
        self.namespace = conn.namespace
        self.context = conn.context
        try:
            groups = self._kube.api_groups()
            if "kubevirt.io" not in groups:
                raise ConnectionFailed(
                    f"{conn.host} serves no kubevirt.io API group: is KubeVirt installed?"
                )
            #: whether migrations.kubevirt.io (MigrationPolicy) is served at all
            self.policy_api = POLICY_GROUP in groups
            self.node_selector, self.node_selector_why = self._detect_node_selector()
        except BaseException:
            self._kube.close()
            raise
        if not self.node_selector:
            self.capabilities = replace(CAPABILITIES, choose_target=False)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._live: dict[str, _Live] = {}
        self._relocations: dict[str, str] = {}  # relocate job -> "aborted" once asked
        self._deletes: dict[str, float] = {}  # migration name -> when to try again
        self._unlabels: dict[str, float] = {}  # VMI name -> when to try the label again
        self._lost: dict[str, str] = {}  # request id of a create with no answer -> VMI
        self._outcomes: dict[str, JobStatus] = {}
        self._informers: dict[str, Informer] = {}
        self._worker: threading.Thread | None = None
        self._closed = False
        self._ids = itertools.count(1)
        #: VMIs whose stale policy label this connection took off when it was made
        self.swept_labels = self._sweep_labels()

    def __repr__(self) -> str:
        return f"<KubeVirtBackend context={self.context!r} namespace={self.namespace!r}>"

    # ---- discovery -----------------------------------------------------------------------------
    def _detect_node_selector(self) -> tuple[bool, str]:
        """Whether VirtualMachineInstanceMigration has ``spec.addedNodeSelector`` (KubeVirt
        1.6+): the CRD's schema says so; else the KubeVirt CR's version; else assume not."""
        kube = self._kube
        crd = None
        try:
            crd = kube.cluster_get(
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                "virtualmachineinstancemigrations.kubevirt.io",
            )
        except VMMoveError as exc:
            log.debug("cannot read the VMIM CRD: %s", exc)
        if crd is not None:
            for version in (crd.get("spec") or {}).get("versions") or []:
                if version.get("name") != "v1":
                    continue
                props = (
                    (((version.get("schema") or {}).get("openAPIV3Schema") or {}).get("properties")
                     or {}).get("spec") or {}
                ).get("properties") or {}  # fmt: skip
                if "addedNodeSelector" in props:
                    return (
                        True,
                        "the VirtualMachineInstanceMigration CRD has spec.addedNodeSelector",
                    )
                return False, (
                    "this KubeVirt's VirtualMachineInstanceMigration has no "
                    "spec.addedNodeSelector (KubeVirt 1.6 added it)"
                )
        try:
            kvs = kube.all_namespaces("kubevirt.io", "v1", "kubevirts")
        except VMMoveError as exc:
            return False, f"cannot tell the KubeVirt version ({exc}); assuming no addedNodeSelector"
        for kv in kvs:
            version = str((kv.get("status") or {}).get("observedKubeVirtVersion") or "")
            nums = [int(p) for p in version.lstrip("v").split("-")[0].split(".")[:2] if p.isdigit()]
            if len(nums) == 2:
                ok = tuple(nums) >= (1, 6)
                return ok, f"KubeVirt {version} {'has' if ok else 'lacks'} spec.addedNodeSelector"
        return False, "cannot tell the KubeVirt version; assuming no spec.addedNodeSelector"

    # ---- watching ------------------------------------------------------------------------------
    def _changed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _informer(self, plural: str) -> Informer:
        with self._lock:
            inf = self._informers.get(plural)
            if inf is None:
                if self._closed:
                    raise ConnectionFailed("the connection is closed")
                inf = self._kmod.Informer(
                    self._kube, plural, self._changed, watch_seconds=self._watch_seconds
                )
                self._informers[plural] = inf
                inf.start()
            return inf

    def _ensure_watching(self) -> None:
        for plural in (VMIMS, VMIS):
            inf = self._informer(plural)
            if not inf.wait_synced(self._kube.timeout):
                raise ConnectionFailed(
                    f"cannot list {plural}: {inf.last_error or 'no answer from the API server'}"
                )
        self._start_worker()

    def informer(self, plural: str) -> Informer | None:
        """The running informer for ``virtualmachineinstances`` or
        ``virtualmachineinstancemigrations`` (for tests and tools), or ``None``."""
        with self._lock:
            return self._informers.get(plural)

    # ---- inventory -----------------------------------------------------------------------------
    def _vmis(self) -> list[Obj]:
        inf = self.informer(VMIS)
        if inf is not None and inf.synced.is_set() and inf.last_error is None:
            return inf.items()
        return self._kube.list_all(VMIS)[0]

    @staticmethod
    def _by_hostname(nodes: list[Obj]) -> dict[str, str]:
        out = {}
        for node in nodes:
            meta = node.get("metadata") or {}
            name = str(meta.get("name"))
            out[str((meta.get("labels") or {}).get(HOSTNAME, name))] = name
        return out

    def hosts(self) -> list[HostInfo]:
        nodes = self._kube.nodes()
        vmis = self._vmis()
        templates = [
            ((v.get("spec") or {}).get("template") or {}).get("spec") or {}
            for v in self._kube.list_all(VMS)[0]
        ]
        keys = objects.selector_keys([*(v.get("spec") or {} for v in vmis), *templates])
        return [objects.host_info(n, vmis, self.context, keys) for n in nodes]

    def vms(self) -> list[VMInfo]:
        nodes = self._kube.nodes()
        vmis = {str(v["metadata"]["name"]): v for v in self._kube.list_all(VMIS)[0]}
        vms = {str(v["metadata"]["name"]): v for v in self._kube.list_all(VMS)[0]}
        by_hostname = self._by_hostname(nodes)
        out = []
        for name in sorted(set(vmis) | set(vms)):
            info = objects.vm_info(name, vmis.get(name), vms.get(name), by_hostname)
            if info is not None:
                out.append(info)
        return out

    def vm(self, ref: str) -> VMInfo:
        vmi = self._kube.find(VMIS, ref)
        vm = self._kube.find(VMS, ref)
        if vmi is None and vm is None:
            raise NotFound(f"no VM {ref!r} in namespace {self.namespace}")
        info = objects.vm_info(ref, vmi, vm, self._by_hostname(self._kube.nodes()))
        if info is None:
            raise NotFound(
                f"VM {ref!r} runs on no node: a stopped VirtualMachine needs a node pin "
                f"(nodeSelector {HOSTNAME}) to have a host"
            )
        return info

    def locate(self, vm_id: str) -> str | None:
        """The node whose VMI runs the VM now (``status.nodeName`` of a ``Running`` VMI
        that is not paused), read from the API, not from a watch cache. A stopped
        VirtualMachine (no VMI, not asked to run) is on the node it is pinned to, as
        inventory lists it. ``None``: no node runs it (paused, starting, stopped mid-move,
        gone). Raises ConnectionFailed when the API cannot be asked."""
        vmi = self._kube.find(VMIS, vm_id)
        if vmi is not None:
            paused = objects.condition(vmi, "Paused")
            if paused is not None and paused.get("status") == "True":
                return None
            return vm_node(vmi)
        vmobj = self._kube.find(VMS, vm_id)
        if vmobj is None or self._wants_running(vmobj):
            return None
        info = objects.vm_info(vm_id, None, vmobj, self._by_hostname(self._kube.nodes()))
        return None if info is None else info.host

    @staticmethod
    def _wants_running(vm: Obj) -> bool:
        spec = vm.get("spec") or {}
        strategy = spec.get("runStrategy")
        if strategy is not None:
            return strategy not in ("Halted", "Manual")
        return bool(spec.get("running"))

    # ---- pre-checks ----------------------------------------------------------------------------
    def check(
        self,
        vm: VMInfo,
        target: HostInfo,
        spec: MigrationSpec,
        *,
        mode: MigrationMode,
        policy: Policy,
    ) -> list[Problem]:
        problems = Problems()
        add = problems.add

        node = self._kube.node(target.id)
        vmi = self._kube.find(VMIS, vm.id)
        vmobj = self._kube.find(VMS, vm.id)
        if (node.get("spec") or {}).get("unschedulable"):
            add("cordoned", f"node {target.name} is cordoned (spec.unschedulable)")
        if mode is MigrationMode.LIVE:
            if vmi is None:
                add("no-vmi", f"{vm.name} has no VirtualMachineInstance: it is not running")
                return problems
            cond = objects.condition(vmi, "LiveMigratable")
            if cond is not None and cond.get("status") == "False":
                add(
                    "not-migratable",
                    f"{vm.name} is not LiveMigratable: {cond.get('reason')}: {cond.get('message')}",
                )
            for why in objects.scheduling_problems(vmi.get("spec") or {}, node):
                add("node-mismatch", f"node {target.name}: {why}")
            self._check_cpu(vmi, node, add)
            self._check_busy(vm, vmi, add)
            if not self.node_selector:
                if spec.target is not None:
                    add(
                        "unsupported",
                        f"cannot send {vm.name} to {target.name}: {self.node_selector_why}",
                    )
                else:
                    add(
                        "scheduler-chooses",
                        f"the cluster's scheduler chooses the target node, not vmmove "
                        f"({self.node_selector_why}); {target.name} is only a guess",
                        "warning",
                    )
            # A note that names one of the policy's steps says the cluster decides that step:
            # the record lists it among the skipped steps.
            named = [f"'{step}'" for step in policy.steps]

            def note_code(note: str) -> str:
                return PLATFORM_DECIDES if any(n in note for n in named) else "cluster-policy"

            if self._use_policies and self.policy_api:
                p = plan(policy, spec, vm.memory, self.capabilities)
                for note in p.notes:
                    add(note_code(note), note, "warning")
            else:
                why = (
                    "migration_policy=false"
                    if not self._use_policies
                    else "this cluster has no MigrationPolicy API (migrations.kubevirt.io)"
                )
                why += ": the cluster's migration defaults apply, not the vmmove policy's settings"
                for note in cluster_default_notes(policy, self._cluster_config(), why):
                    add(note_code(note), note, "warning")
        else:
            if vmobj is None:
                add(
                    "bare-vmi",
                    f"{vm.name} is a bare VirtualMachineInstance: there is no VirtualMachine to "
                    "stop and start again, so it can only migrate live",
                )
                return problems
            vspec = vmobj.get("spec") or {}
            strategy = vspec.get("runStrategy")
            if strategy is not None and strategy not in ("Always", "RerunOnFailure", "Halted"):
                add(
                    "run-strategy",
                    f"{vm.name} has runStrategy {strategy}: vmmove stops and starts VMs only "
                    "through runStrategy Always/RerunOnFailure/Halted or spec.running",
                )
            template = copy.deepcopy(((vspec.get("template") or {}).get("spec")) or {})
            (template.get("nodeSelector") or {}).pop(HOSTNAME, None)
            for why in objects.scheduling_problems(template, node):
                add("node-mismatch", f"node {target.name}: {why}")
            if vm.power is not PowerState.STOPPED:
                add(
                    "restart",
                    f"cold migration stops {vm.name}, pins it to {target.name} and starts it "
                    "again: the guest restarts",
                    "warning",
                )
            add(
                "pinned",
                f"{vm.name} stays pinned to {target.name} (nodeSelector {HOSTNAME}) afterwards",
                "warning",
            )
        return problems

    def _cluster_config(self) -> dict[str, Any] | None:
        """``spec.configuration.migrations`` of the KubeVirt CR, or ``None`` if unreadable."""
        try:
            kvs = self._kube.all_namespaces("kubevirt.io", "v1", "kubevirts")
        except VMMoveError as exc:
            log.debug("cannot read the KubeVirt CR: %s", exc)
            return None
        for kv in kvs:
            config = (((kv.get("spec") or {}).get("configuration") or {}).get("migrations")) or {}
            if isinstance(config, dict):
                return dict(config)
        return None

    def _check_cpu(self, vmi: Obj, node: Obj, add: Any) -> None:
        model = (((vmi.get("spec") or {}).get("domain") or {}).get("cpu") or {}).get("model")
        if model not in (None, "", "host-model"):
            return
        source = ((vmi.get("status") or {}).get("nodeName")) or ""
        try:
            src = self._kube.node(source) if source else None
        except NotFound:
            src = None
        if src is None:
            return
        src_labels = (src.get("metadata") or {}).get("labels") or {}
        models = [
            k.split("/", 1)[1]
            for k, v in src_labels.items()
            if k.startswith("host-model-cpu.node.kubevirt.io/") and v == "true"
        ]
        labels = (node.get("metadata") or {}).get("labels") or {}
        for m in models:
            if labels.get(f"cpu-model-migration.node.kubevirt.io/{m}") != "true":
                add(
                    "cpu-model",
                    f"the VMI uses host-model ({m} on {source}); node "
                    f"{node['metadata']['name']} cannot run {m}",
                )

    def _check_busy(self, vm: VMInfo, vmi: Obj, add: Any) -> None:
        for mig in self._kube.list_all(VMIMS)[0]:
            phase = (mig.get("status") or {}).get("phase") or ""
            if (mig.get("spec") or {}).get("vmiName") == vm.id and phase not in (
                "Succeeded",
                "Failed",
            ):
                add(
                    "busy",
                    f"{vm.name} already has an active migration: "
                    f"VirtualMachineInstanceMigration {mig['metadata']['name']} "
                    f"({phase or 'new'})",
                )
                return
        state = (vmi.get("status") or {}).get("migrationState") or {}
        if state.get("migrationUid") and not state.get("completed") and not state.get("failed"):
            add("busy", f"{vm.name} is migrating (migration uid {state['migrationUid']})")

    # ---- migration -----------------------------------------------------------------------------
    def start(
        self,
        vm: VMInfo,
        target: HostInfo,
        spec: MigrationSpec,
        mode: MigrationMode,
        *,
        policy: Policy,
        needs: frozenset[str],
        reservation: Any,
        request_id: str = "",
    ) -> Job:
        if mode is MigrationMode.COLD:
            # The core moves a VM cold through power_off, relocate and power_on.
            raise NotSupported("a cold move on KubeVirt is power_off, relocate, power_on")
        self._ensure_watching()
        return self._start_live(vm, target, spec, policy, request_id or uuid.uuid4().hex)

    def _policy_ref(
        self, vm: VMInfo, spec: MigrationSpec, policy: Policy
    ) -> tuple[str, str | None]:
        """Ensure the MigrationPolicy exists and label the VMI for it. Returns the record's
        note and the label value set (``None``: none)."""
        if not self._use_policies:
            return "cluster defaults (migration_policy=false)", None
        if not self.policy_api:
            return "cluster defaults (no MigrationPolicy API, migrations.kubevirt.io)", None
        p: PolicyPlan = plan(policy, spec, vm.memory, self.capabilities)
        try:
            existing = self._kube.cluster_get(POLICY_GROUP, POLICY_VERSION, POLICY_PLURAL, p.name)
            if existing is None:
                # Conflict: another client made the same one meanwhile, so it is there.
                with contextlib.suppress(Conflict):
                    self._kube.cluster_create(POLICY_GROUP, POLICY_VERSION, POLICY_PLURAL, p.body())
        except VMMoveError as exc:  # NotFound too: the API went away since connect
            return f"cluster defaults (MigrationPolicy {p.name} not applied: {exc})", None
        try:
            self._kube.merge_patch(
                VMIS,
                vm.id,
                {
                    "metadata": {
                        "labels": {POLICY_LABEL: p.name},
                        "annotations": {LABELLED_AT: str(int(time.time()))},
                    }
                },
            )
        except NotFound:
            raise
        except VMMoveError as exc:
            return f"cluster defaults (MigrationPolicy {p.name} not applied: {exc})", None
        return f"MigrationPolicy {p.name}", p.name

    def _unlabel(self, vmi: str) -> None:
        self._kube.merge_patch(
            VMIS,
            vmi,
            {"metadata": {"labels": {POLICY_LABEL: None}, "annotations": {LABELLED_AT: None}}},
        )

    def _restore_label(self, vmi: str, previous: str | None) -> None:
        """A create that was refused: the policy label as it was (another client's
        migration may be using the one there before ours)."""
        if previous is None:
            self._unlabel_soon(vmi)
            return
        try:
            self._kube.merge_patch(VMIS, vmi, {"metadata": {"labels": {POLICY_LABEL: previous}}})
        except VMMoveError as exc:
            log.warning("could not put label %s back on %s: %s", POLICY_LABEL, vmi, exc)

    def _unlabel_soon(self, vmi: str) -> None:
        """Take the policy label off now, or keep trying from the worker until it goes
        (a 500 or an outage must not leave it selecting the VMI for good)."""
        try:
            self._unlabel(vmi)
        except NotFound:
            return  # the VMI is gone: nothing to clean
        except VMMoveError as exc:
            log.warning("could not take label %s off %s (%s): will retry", POLICY_LABEL, vmi, exc)
            with self._cond:
                self._unlabels[vmi] = time.monotonic() + 0.5
                self._cond.notify_all()
            self._start_worker()

    def _retry_unlabel(self, vmi: str) -> None:
        with self._lock:
            if any(st.vmi == vmi and st.policy_label for st in self._live.values()):
                self._unlabels.pop(vmi, None)  # a new migration of ours wants it again
                return
        try:
            self._unlabel(vmi)
        except NotFound:
            pass
        except VMMoveError as exc:
            log.debug("taking label %s off %s failed again: %s", POLICY_LABEL, vmi, exc)
            with self._lock:
                if vmi in self._unlabels:  # every second, while it keeps failing
                    self._unlabels[vmi] = time.monotonic() + 1.0
            return
        with self._lock:
            self._unlabels.pop(vmi, None)

    def _sweep_labels(self) -> list[str]:
        """Take off policy labels vmmove left on VMIs with no active migration (a client
        that died, a cleanup that never got through), older than a minute so that another
        client's label put on just before its create is left alone. Best effort: a
        connection without the rights to list or patch just keeps them."""
        removed: list[str] = []
        try:
            vmis = self._kube.list_all(VMIS, label_selector=POLICY_LABEL)[0]
            if not vmis:
                return removed
            busy = {
                (m.get("spec") or {}).get("vmiName")
                for m in self._kube.list_all(VMIMS)[0]
                if (m.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            }
            for vmi in vmis:
                meta = vmi.get("metadata") or {}
                name = str(meta.get("name"))
                try:
                    since = float((meta.get("annotations") or {}).get(LABELLED_AT, 0))
                except (TypeError, ValueError):
                    since = 0.0
                if name in busy or time.time() - since < STALE_LABEL_SECONDS:
                    continue
                self._unlabel(name)
                removed.append(name)
                log.info("took the stale label %s off VMI %s", POLICY_LABEL, name)
        except VMMoveError as exc:
            log.debug("stale policy labels not swept: %s", exc)
        return removed

    def _start_live(
        self, vm: VMInfo, target: HostInfo, spec: MigrationSpec, policy: Policy, request: str
    ) -> Job:
        vmis = self.informer(VMIS)
        cached = (vmis.get(vm.id) if vmis is not None else None) or {}
        previous = ((cached.get("metadata") or {}).get("labels") or {}).get(POLICY_LABEL)
        note, label = self._policy_ref(vm, spec, policy)
        hostname = target.extra.get(HOSTNAME, target.id)
        annotations = {
            "vmmove.io/source": vm.host,
            "vmmove.io/target": target.id,
            REQUEST_ANNOTATION: request,
        }
        if label is not None:
            annotations[POLICY_ANNOTATION] = label
        body: Obj = {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstanceMigration",
            "metadata": {
                "generateName": f"vmmove-{vm.id}-"[:58],
                "labels": dict(MANAGED_BY),
                "annotations": annotations,
            },
            "spec": {"vmiName": vm.id},
        }
        if self.node_selector:
            body["spec"]["addedNodeSelector"] = {HOSTNAME: hostname}
        try:
            created = self._kube.create(VMIMS, body)
        except ConnectionFailed:
            # The answer was lost, maybe not the request: a create is never sent twice,
            # so look for the object this very request would have made. Not found (yet):
            # the engine asks attach() with the request id for a while. The policy label
            # stays meanwhile: a create applied late still gets its policy (finish, or the
            # next connect's stale-label sweep, takes it off).
            found = self._created_by(request)
            if found is None:
                if label is not None:
                    with self._lock:
                        self._lost[request] = vm.id
                raise
            created = found
        except BaseException:
            if label is not None:
                self._restore_label(vm.id, previous)
            raise
        meta = created.get("metadata") or {}
        name, uid = str(meta.get("name")), str(meta.get("uid"))
        self._informer(VMIMS).seed(created)
        self._one_migration_only(vm.id, created)
        job = Job(
            id=name,
            vm=vm.id,
            source=vm.host,
            target=target.id,
            mode=MigrationMode.LIVE,
            ref=JobRef(
                data={
                    "kind": "live",
                    "namespace": self.namespace,
                    "migration": name,
                    "uid": uid,
                    "vmi": vm.id,
                    "target": target.id,
                    "policy": note,
                    "target_pinned": "yes" if self.node_selector else "no: the scheduler chooses",
                    "request_id": request,
                }
            ),
        )
        with self._lock:
            self._live[name] = _Live(job=job, name=name, uid=uid, vmi=vm.id, policy_label=label)
        return job

    def _created_by(self, request: str) -> Obj | None:
        try:
            return self._find_request(request)
        except VMMoveError:
            return None

    def _find_request(self, request: str) -> Obj | None:
        """The VMIM vmmove created for ``request`` (the engine's request id), in any
        phase; raises ConnectionFailed when the API cannot be asked."""
        items = self._kube.list_all(VMIMS, label_selector=MANAGED_SELECTOR)[0]
        for obj in items:
            annotations = (obj.get("metadata") or {}).get("annotations") or {}
            if annotations.get(REQUEST_ANNOTATION) == request:
                return obj
        return None

    def _one_migration_only(self, vmi: str, ours: Obj) -> None:
        """KubeVirt's in-flight check is not atomic: two clients racing for one VMI can
        both be admitted, and KubeVirt would then run both, one after the other. Checked
        right after our create: we keep ours only if every other active VMIM of the VMI is
        provably younger (a later creationTimestamp: its client checks after that and sees
        ours). Otherwise ours is deleted and start raises Conflict naming the other. Two
        creates in the same second that both see each other both yield: nothing runs,
        rather than both."""
        try:
            items = self._kube.list_all(VMIMS)[0]
        except ConnectionFailed as exc:
            log.debug("cannot look for racing migrations of %s: %s", vmi, exc)
            return

        def active(m: Obj) -> bool:
            meta = m.get("metadata") or {}
            return (
                (m.get("spec") or {}).get("vmiName") == vmi
                and (m.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                and not meta.get("deletionTimestamp")
            )

        def created(m: Obj) -> float:
            return _stamp((m.get("metadata") or {}).get("creationTimestamp")) or 0.0

        ours_uid = (ours.get("metadata") or {}).get("uid")
        older = [
            m
            for m in items
            if active(m) and m["metadata"].get("uid") != ours_uid and created(m) <= created(ours)
        ]
        if not older:
            return
        winner = min(older, key=lambda m: (created(m), str(m["metadata"].get("name"))))
        name = str(ours["metadata"]["name"])
        with self._cond:
            self._deletes[name] = 0.0
            self._cond.notify_all()
        self._delete(name)
        self._start_worker()
        # The VMI's policy label: the other's (if vmmove made it), else none.
        theirs = ((winner.get("metadata") or {}).get("annotations") or {}).get(POLICY_ANNOTATION)
        try:
            self._kube.merge_patch(
                VMIS, vmi, {"metadata": {"labels": {POLICY_LABEL: theirs or None}}}
            )
        except VMMoveError as exc:
            log.debug("could not restore the policy label of %s: %s", vmi, exc)
        raise Conflict(
            f"{vmi} is already being migrated by VirtualMachineInstanceMigration "
            f"{winner['metadata'].get('name')}; KubeVirt admitted this client's {name} too "
            "(its in-flight check is not atomic), and vmmove deleted it"
        )

    def poll(self, job: Job) -> JobStatus:
        if job.ref.get("kind") == RELOCATE:
            return self._relocate_status(job)
        with self._lock:
            live = self._live.get(job.id)
        if live is None:
            raise NotFound(f"no KubeVirt migration {job.id!r} on this connection")
        return self._live_status(live)

    def _live_status(self, st: _Live) -> JobStatus:
        vmims, vmis = self.informer(VMIMS), self.informer(VMIS)
        if vmims is None or vmis is None:
            self._ensure_watching()
            vmims, vmis = self.informer(VMIMS), self.informer(VMIS)
        assert vmims is not None
        assert vmis is not None
        # From the watch caches while both watches are up; otherwise straight from the
        # API, and a ConnectionFailed then goes to the engine: never a stale answer.
        if vmims.last_error is None and vmis.last_error is None:
            vmim, vmi = vmims.get(st.name), vmis.get(st.vmi)
        else:
            vmim, vmi = self._kube.find(VMIMS, st.name), self._kube.find(VMIS, st.vmi)
        ended = vmim is None or VMIM_PHASES.get(
            str((vmim.get("status") or {}).get("phase") or "")
        ) in (Phase.COMPLETED, Phase.FAILED)
        if ended and not settled(vmi, st.uid):
            # The VMIM says it is over but this view of the VMI does not (yet): the two
            # watches are separate streams. Read the VMI itself before concluding.
            vmi = self._kube.find(VMIS, st.vmi)
        status = live_status(
            vmim, vmi, uid=st.uid, abort_requested=st.aborted, target=st.job.target
        )
        now = time.monotonic()
        if vmim is None and st.last is not None and not st.last.phase.terminal:
            # The migration object is gone and the VMI does not say how it ended (someone
            # removed the finalizer?): give KubeVirt a moment before concluding.
            state = state_for(vmi, st.uid)
            st.gone_at = st.gone_at or now
            if state and not settled(vmi, st.uid) and now - st.gone_at < 5.0:
                return st.last
        if (
            not status.phase.terminal
            and st.last is not None
            and not st.last.phase.terminal
            and PHASE_RANK.get(status.phase, 0) < PHASE_RANK.get(st.last.phase, 0)
        ):
            # Read from an unknown VMIM phase: never back behind what was reported.
            status = replace(status, phase=st.last.phase)
        self._clock_transfer(st, status, now)
        if status.phase.terminal:
            status = replace(status, figures=self._figures(vmi, st))
            self._remember(st.name, status)
        st.last = status
        return status

    @staticmethod
    def _clock_transfer(st: _Live, status: JobStatus, now: float) -> None:
        if status.phase in (Phase.TRANSFERRING, Phase.POSTCOPY):
            st.run_first = st.run_first if st.run_first is not None else now
            st.run_last = now
        elif status.phase is not Phase.REQUESTING and st.over_at is None:
            st.over_at = now

    def _remember(self, job_id: str, status: JobStatus) -> None:
        with self._lock:
            self._outcomes[job_id] = status
            while len(self._outcomes) > 1000:
                del self._outcomes[next(iter(self._outcomes))]

    def outcome(self, job_id: str) -> JobStatus | None:
        """The terminal status a job ended with on this connection (its ``native`` carries
        KubeVirt's ``abortStatus`` after a cancel), or ``None``."""
        with self._lock:
            return self._outcomes.get(job_id)

    def _figures(self, vmi: Obj | None, st: _Live) -> Figures | None:
        """The transfer's duration: KubeVirt's ``startTimestamp``/``endTimestamp`` (whole
        seconds) held within what vmmove's own clock saw: never less than the time the
        transfer was seen running, never more than from its first sighting to its end."""
        state = state_for(vmi, st.uid)
        start, end = _stamp(state.get("startTimestamp")), _stamp(state.get("endTimestamp"))
        platform = max(end - start, 0.0) if start is not None and end is not None else None
        if st.run_first is None:
            return None if platform is None else Figures(total_time=platform)
        low = (st.run_last or st.run_first) - st.run_first
        high = (st.over_at or time.monotonic()) - st.run_first + self.poll_interval
        if platform is None:
            total = (st.over_at or st.run_last or st.run_first) - st.run_first
        else:
            total = min(platform, high)
        return Figures(total_time=round(max(total, low), 3))

    def tune(self, job: Job, action: Action) -> None:
        raise NotSupported(
            f"KubeVirt cannot apply {action} to a running migration: it reads its settings "
            "(MigrationPolicy) once, when the migration starts"
        )

    def abort(self, job: Job) -> None:
        if job.ref.get("kind") == RELOCATE:
            self._unpin(job)
            return
        with self._cond:
            if job.id in self._live:
                self._live[job.id].aborted = True
                self._deletes[job.id] = 0.0
            else:
                raise NotFound(f"no KubeVirt migration {job.id!r} on this connection")
            self._cond.notify_all()
        self._start_worker()

    def finish(self, job: Job) -> None:
        with self._lock:
            live = self._live.pop(job.id, None)
            self._relocations.pop(job.id, None)
            self._deletes.pop(job.id, None)
            still = live is not None and any(
                other.vmi == live.vmi and other.policy_label for other in self._live.values()
            )
        if live is not None and live.policy_label and not still:
            self._unlabel_soon(live.vmi)

    def attach(self, ref: JobRef) -> Job:
        if ref.intent is Intent.START:
            return self._attach_started(ref)
        if ref.get("kind") == RELOCATE:
            return self._relocation(ref.data)
        if ref.get("kind") != "live":
            raise NotSupported(f"not a KubeVirt job reference: kind {ref.get('kind')!r}")
        if ref.get("namespace") not in ("", self.namespace):
            raise InvalidInput(
                f"migration {ref.get('migration')} is in namespace {ref.get('namespace')}, "
                f"this connection in {self.namespace}"
            )
        name, vmi = ref.get("migration"), ref.get("vmi")
        self._ensure_watching()
        obj = self._kube.find(VMIMS, name)
        uid = ref.get("uid") or str(((obj or {}).get("metadata") or {}).get("uid", ""))
        if obj is None and not uid:
            raise NotFound(f"no VirtualMachineInstanceMigration {name!r}")
        if obj is not None:
            vmi = str((obj.get("spec") or {}).get("vmiName") or vmi)
            self._informer(VMIMS).seed(obj)
        label = ref.get("policy").removeprefix("MigrationPolicy ")
        kept = label if label.startswith("vmmove-") else None
        return self._adopt(name, uid, vmi, obj, ref=dict(ref.data), label=kept)

    def _attach_started(self, ref: JobRef) -> Job:
        """The job a start request made: the VMIM carrying its request id, in any phase
        (one that already ended too). NotFound: the platform has no such job (yet);
        ConnectionFailed: the API cannot be asked. Without a request id (records written
        before engines passed one), the active VMIM vmmove created for the VM."""
        vm, request = ref.vm, ref.request_id
        if ref.mode is MigrationMode.COLD:
            return self._relocated_by(vm, request)
        self._ensure_watching()
        if request:
            obj = self._find_request(request)
            if obj is None:
                raise NotFound(f"no VirtualMachineInstanceMigration carries request {request}")
        else:
            mine = [
                m
                for m in self._kube.list_all(VMIMS, label_selector=MANAGED_SELECTOR)[0]
                if (m.get("spec") or {}).get("vmiName") == vm
                and (m.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            ]
            if not mine:
                raise NotFound(f"vmmove started no migration of {vm} that is still active")
            obj = max(mine, key=lambda m: int(m["metadata"].get("resourceVersion") or "0"))
        meta = obj["metadata"]
        vmi = str((obj.get("spec") or {}).get("vmiName") or vm)
        annotations = meta.get("annotations") or {}
        label = annotations.get(POLICY_ANNOTATION)
        if label is None:
            vmi_obj = self._kube.find(VMIS, vmi) or {}
            label = ((vmi_obj.get("metadata") or {}).get("labels") or {}).get(POLICY_LABEL)
        ref2 = {
            "kind": "live",
            "namespace": self.namespace,
            "migration": str(meta["name"]),
            "uid": str(meta["uid"]),
            "vmi": vmi,
            "target": ref.target or str(annotations.get("vmmove.io/target", "")),
            "policy": f"MigrationPolicy {label}" if label else "cluster defaults",
        }
        if request:
            ref2["request_id"] = request
            with self._lock:
                self._lost.pop(request, None)
        self._informer(VMIMS).seed(obj)
        return self._adopt(str(meta["name"]), str(meta["uid"]), vmi, obj, ref=ref2, label=label)

    def _adopt(
        self,
        name: str,
        uid: str,
        vmi: str,
        obj: Obj | None,
        *,
        ref: dict[str, str],
        label: str | None,
    ) -> Job:
        annotations = ((obj or {}).get("metadata") or {}).get("annotations") or {}
        job = Job(
            id=name,
            vm=vmi,
            source=str(annotations.get("vmmove.io/source", "")),
            target=ref.get("target") or str(annotations.get("vmmove.io/target", "")),
            mode=MigrationMode.LIVE,
            ref=JobRef(data=ref),
        )
        with self._lock:
            self._live[name] = _Live(job=job, name=name, uid=uid, vmi=vmi, policy_label=label)
        return job

    # ---- cold migration primitives (the core orchestrates them: vmmove.cold) ------------------
    def _vm_object(self, vm: VMInfo) -> Obj:
        vmobj = self._kube.find(VMS, vm.id)
        if vmobj is None:
            raise NotSupported(
                f"{vm.name} is a bare VirtualMachineInstance: there is no VirtualMachine to "
                "stop, move and start, so it can only migrate live"
            )
        return vmobj

    def power_off(self, vm: VMInfo, *, force: bool) -> None:
        """Stop the VirtualMachine (runStrategy Halted, or ``running: false``; the strategy
        it had is kept in an annotation for :meth:`power_on`). ``force``: the VMI's
        termination grace period set to 0 first, as ``virtctl stop --grace-period 0`` does.
        A VM with no node pin is pinned to the node it runs on, so that stopped it still
        has a host and started again it comes back there."""
        vmobj = self._vm_object(vm)
        vspec = vmobj.get("spec") or {}
        vmi = self._kube.find(VMIS, vm.id)
        if force and vmi is not None:
            with contextlib.suppress(NotFound):  # gone meanwhile: stopped already
                self._kube.merge_patch(VMIS, vm.id, {"spec": {"terminationGracePeriodSeconds": 0}})
        patch: Obj = {"spec": {}}
        if "runStrategy" in vspec:
            strategy = vspec["runStrategy"]
            patch["spec"]["runStrategy"] = "Halted"
            if strategy in _RUNNING_STRATEGIES:
                patch["metadata"] = {"annotations": {RUN_STRATEGY_ANNOTATION: strategy}}
        else:
            patch["spec"]["running"] = False
        template = ((vspec.get("template") or {}).get("spec")) or {}
        node = vm_node(vmi) if vmi is not None else None
        if node and objects.node_pin(template, {}) is None:
            labels = (self._kube.node(node).get("metadata") or {}).get("labels") or {}
            hostname = str(labels.get(HOSTNAME, node))
            patch["spec"]["template"] = {"spec": {"nodeSelector": {HOSTNAME: hostname}}}
        self._kube.merge_patch(VMS, vm.id, patch)

    def power_on(self, vm: VMInfo) -> None:
        """Start the stopped VirtualMachine where it is pinned: the runStrategy it had before
        :meth:`power_off` (``Always`` if unknown), or ``running: true``."""
        vmobj = self._vm_object(vm)
        vspec = vmobj.get("spec") or {}
        if "runStrategy" in vspec:
            annotations = (vmobj.get("metadata") or {}).get("annotations") or {}
            kept = annotations.get(RUN_STRATEGY_ANNOTATION)
            strategy = kept if kept in _RUNNING_STRATEGIES else "Always"
            if vspec["runStrategy"] in _RUNNING_STRATEGIES:
                strategy = vspec["runStrategy"]
            patch: Obj = {
                "metadata": {"annotations": {RUN_STRATEGY_ANNOTATION: None}},
                "spec": {"runStrategy": strategy},
            }
        else:
            patch = {"spec": {"running": True}}
        self._kube.merge_patch(VMS, vm.id, patch)

    def relocate(
        self, vm: VMInfo, target: HostInfo, spec: MigrationSpec, *, request_id: str
    ) -> Job:
        """Pin the stopped VirtualMachine to ``target`` (its nodeSelector
        ``kubernetes.io/hostname``, and a required node affinity naming one node). The job
        completes once the VM object read back says so (:meth:`poll`)."""
        vmobj = self._vm_object(vm)
        if self._wants_running(vmobj) or self._kube.find(VMIS, vm.id) is not None:
            raise Conflict(f"{vm.name} must be stopped before it is moved")
        template = ((vmobj.get("spec") or {}).get("template") or {}).get("spec") or {}
        before = str((template.get("nodeSelector") or {}).get(HOSTNAME) or "")
        hostname = target.extra.get(HOSTNAME, target.id)
        request = request_id or uuid.uuid4().hex
        self._pin(vm.id, target.id, hostname, request)
        return self._relocation(
            {
                "kind": RELOCATE,
                "namespace": self.namespace,
                "vm": vm.id,
                "source": vm.host,
                "target": target.id,
                "hostname": hostname,
                "from_hostname": before,
                "request_id": request,
            }
        )

    def _relocation(self, ref: Mapping[str, str]) -> Job:
        if ref.get("namespace") not in (None, self.namespace):
            raise InvalidInput(
                f"the move of {ref.get('vm')} is in namespace {ref.get('namespace')}, "
                f"this connection in {self.namespace}"
            )
        vm = ref.get("vm", "")
        job = Job(
            id=f"{RELOCATE}-{vm}-{ref.get('request_id', '')}",
            vm=vm,
            source=ref.get("source", ""),
            target=ref.get("target", ""),
            mode=MigrationMode.COLD,
            ref=JobRef(data=ref),
        )
        with self._lock:
            self._relocations.setdefault(job.id, "")
        return job

    def _relocated_by(self, vm: str, request: str) -> Job:
        """The move a ``relocate`` with this request id made: its id is on the VM object."""
        vmobj = self._kube.find(VMS, vm)
        annotations = ((vmobj or {}).get("metadata") or {}).get("annotations") or {}
        if not request or vmobj is None or annotations.get(REQUEST_ANNOTATION) != request:
            raise NotFound(f"no move of {vm} by request {request or '?'}")
        template = ((vmobj.get("spec") or {}).get("template") or {}).get("spec") or {}
        hostname = str((template.get("nodeSelector") or {}).get(HOSTNAME) or "")
        target = self._by_hostname(self._kube.nodes()).get(hostname, hostname)
        return self._relocation(
            {
                "kind": RELOCATE,
                "namespace": self.namespace,
                "vm": vm,
                "target": target,
                "hostname": hostname,
                "request_id": request,
            }
        )

    def _pin(self, vm: str, node: str, hostname: str, request: str) -> None:
        vmobj = self._kube.get(VMS, vm)
        template = ((vmobj.get("spec") or {}).get("template") or {}).get("spec") or {}
        ops: list[Obj] = []
        terms = (
            (((template.get("affinity") or {}).get("nodeAffinity") or {}).get(
                "requiredDuringSchedulingIgnoredDuringExecution"
            ) or {}).get("nodeSelectorTerms") or []
        )  # fmt: skip
        base = (
            "/spec/template/spec/affinity/nodeAffinity/"
            "requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms"
        )
        for i, term in enumerate(terms):
            for kind, key, value in (
                ("matchExpressions", HOSTNAME, hostname),
                ("matchFields", "metadata.name", node),
            ):
                for j, expr in enumerate(term.get(kind) or []):
                    if expr.get("key") == key and expr.get("operator") == "In":
                        ops.append(
                            {
                                "op": "replace",
                                "path": f"{base}/{i}/{kind}/{j}/values",
                                "value": [value],
                            }
                        )
        if ops:
            self._kube.json_patch(VMS, vm, ops)
        self._kube.merge_patch(
            VMS,
            vm,
            {
                "metadata": {"annotations": {REQUEST_ANNOTATION: request}},
                "spec": {"template": {"spec": {"nodeSelector": {HOSTNAME: hostname}}}},
            },
        )

    def _unpin(self, job: Job) -> None:
        """Cancel a move: the pin it had back (or none), then poll says cancelled."""
        with self._lock:
            self._relocations[job.id] = "aborted"
        before = job.ref.get("from_hostname", "")
        if before:
            self._pin(job.vm, job.source, before, job.ref.get("request_id", ""))
        else:
            selector = {"nodeSelector": {HOSTNAME: None}}
            self._kube.merge_patch(VMS, job.vm, {"spec": {"template": {"spec": selector}}})

    def _relocate_status(self, job: Job) -> JobStatus:
        """Read from the VM object itself (not a cache): where its pin says it is."""
        vmobj = self._kube.find(VMS, job.vm)
        if vmobj is None:
            return JobStatus(
                phase=Phase.FAILED, native="VirtualMachine gone", error=f"{job.vm} was deleted"
            )
        template = ((vmobj.get("spec") or {}).get("template") or {}).get("spec") or {}
        pinned = str((template.get("nodeSelector") or {}).get(HOSTNAME) or "")
        with self._lock:
            aborted = self._relocations.get(job.id) == "aborted"
        if aborted:
            if pinned == job.ref.get("from_hostname", ""):
                return JobStatus(
                    phase=Phase.CANCELLED, native=f"pin back on {pinned or 'none'}",
                    vm_host=job.source or None,
                )  # fmt: skip
            return JobStatus(phase=Phase.TRANSFERRING, native=f"pinned to {pinned}: putting back")
        if pinned == job.ref.get("hostname"):
            return JobStatus(
                phase=Phase.COMPLETED, native=f"pinned to {pinned}", vm_host=job.target
            )
        return JobStatus(
            phase=Phase.FAILED,
            native=f"pinned to {pinned or 'no node'}",
            error=f"{job.vm} is pinned to {pinned or 'no node'}, not {job.ref.get('hostname')}",
        )

    # ---- the worker: cancels and label clean-up ---------------------------------------------
    def _start_worker(self) -> None:
        with self._lock:
            if self._worker is None and not self._closed:
                self._worker = threading.Thread(
                    target=self._work, name="vmmove-kubevirt-worker", daemon=True
                )
                self._worker.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                deletes = [n for n, at in self._deletes.items() if at <= now]
                unlabels = [v for v, at in self._unlabels.items() if at <= now]
            for name in deletes:
                self._delete(name)
            for vmi in unlabels:
                self._retry_unlabel(vmi)
            with self._cond:
                if self._closed:
                    return
                self._cond.wait(0.1 if (self._deletes or self._unlabels) else 1.0)

    def _delete(self, name: str) -> None:
        try:
            self._kube.delete(VMIMS, name)
        except NotFound:
            pass
        except VMMoveError as exc:
            log.debug("deleting migration %s failed: %s (will retry)", name, exc)
            with self._lock:
                if name in self._deletes:
                    self._deletes[name] = time.monotonic() + 0.5
            return
        with self._lock:
            self._deletes.pop(name, None)

    # ---- shutdown --------------------------------------------------------------------------------
    def _forget_lost(self) -> None:
        """Creates whose answer was lost and that were never found: take their policy
        label off, unless the create was applied after all."""
        with self._lock:
            lost, self._lost = dict(self._lost), {}
        for request, vmi in lost.items():
            try:
                if self._find_request(request) is None:
                    self._unlabel(vmi)
            except VMMoveError as exc:
                log.debug("label of %s left for the next connect's sweep: %s", vmi, exc)

    def close(self) -> None:
        with self._lock:
            closing = not self._closed
        if closing:
            self._forget_lost()
        with self._cond:
            if self._closed:
                return
            self._closed = True
            informers = list(self._informers.values())
            worker = self._worker
            self._cond.notify_all()
        for inf in informers:
            inf.stop()
        if worker is not None:
            worker.join(timeout=10)
        self._kube.close()
