"""A KubeVirt control plane in miniature: the migration controller, the VM controller, the
``migration-create-validator`` admission webhook, and a scheduler that places pods.

Migrations walk ``Pending -> Scheduling -> Scheduled -> PreparingTarget -> TargetReady ->
Running -> Succeeded`` with configurable timing. On the way the VMI's
``status.migrationState`` is filled in as KubeVirt does (``migrationUid``, ``sourceNode``,
``targetNode``, ``startTimestamp``, ``completed``, ``failed``, ``failureReason``,
``abortRequested``, ``abortStatus``, ``mode``, ``migrationPolicyName``,
``migrationConfiguration``), and at the end ``status.nodeName`` and the
``kubevirt.io/nodeName`` label move to the target. Deleting a migration aborts it (the object
carries KubeVirt's finalizer until the abort is done); a failure can be injected at any phase.

Release profiles and variants
-----------------------------
``release`` picks how one KubeVirt release line behaves (:data:`RELEASES`); the default is
the newest, ``"1.9"``, since that is what users meet. Each behaviour is also a switch of its
own (keyword arguments of :class:`KubeVirtController` and ``FakeKube``), ``None`` meaning
"as the release does":

``completed_on_failure``
    KubeVirt up to 1.5 and again from 1.9 on set ``migrationState.completed: true``
    together with ``failed: true`` when a migration fails and when an abort succeeds (with
    ``abortStatus``); 1.6 to 1.8 leave ``completed`` false on failure (virt-launcher's
    ``setMigrationResultHelper`` lost its ``completed`` argument in 1.6). ``targetNode``
    keeps naming the target either way; only ``status.nodeName`` says where the VM runs.
``added_node_selector``
    ``spec.addedNodeSelector`` on VMIMs (1.6 and later); an older CRD prunes it silently.
``handoff_phase``
    The phase the migration leaves when the controller hands it to virt-handler and writes
    the new ``migrationState`` (KubeVirt: ``Scheduled``). Until then the VMI keeps the
    *previous* migration's state: its ``migrationUid``, ``completed``/``failed`` flags and
    ``targetNode``. ``"TargetReady"`` widens that window to the start of ``Running``.
``inserted_phases``
    ``{"NewPhase": "KnownPhase"}``: every migration passes through ``NewPhase`` (for
    ``MigrationTiming.inserted`` seconds) just before ``KnownPhase``, as a newer release's
    phase would look to an older client (KubeVirt 1.6+ has ``WaitingForSync`` and
    ``Synchronizing`` for decentralized migrations).
``migration_policy_api``
    ``False``: no ``migrations.kubevirt.io`` API group at all (older clusters, or the API
    disabled); creating a MigrationPolicy answers 404.
``admission_window``
    KubeVirt's in-flight check lists the VMI's migrations and is not atomic with the
    create: two creates closer together than this many seconds are both admitted. The
    controller then runs them one after the other, as KubeVirt does.
``wrap_denials``
    Webhook denials arrive wrapped as ``<plural> "<name>" is forbidden: admission webhook
    ... denied the request: ...`` with 403; otherwise as KubeVirt's admitter sends them:
    400 with no ``reason`` (``ToAdmissionResponseError``), and 422 ``Invalid`` with causes
    only for a spec that fails validation (a missing ``spec.vmiName``).
``live_migration_gate``
    ``False``: the ``LiveMigration`` feature gate is off, as older releases allowed: every
    VMIM is denied ("LiveMigration feature gate is not enabled in kubevirt-config", 400).
``ignore_added_node_selector``
    The CRD keeps ``spec.addedNodeSelector`` but the scheduler places the target pod as if
    it were not there (a cluster that ignores it): the VMI may land on another node.

``MigrationTiming.report_lag`` is how long the VMIM's ``Failed`` trails the VMI's
``migrationState`` saying the migration failed or was aborted (two controllers, two writes):
a client that reads the VMI in between sees ``failed`` (and, per release, ``completed``)
while the VMIM still says ``Running``.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vmmove_kubevirt.testing.store import ApiError, Obj, ObjectStore, ResourceType

__all__ = [
    "CLUSTER_MIGRATION_DEFAULTS",
    "DEFAULT_RELEASE",
    "MIGRATION_PHASES",
    "RELEASES",
    "KubeVirtController",
    "KubeVirtRelease",
    "MigrationFault",
    "MigrationTiming",
]

MIGRATION_PHASES = (
    "Pending",
    "Scheduling",
    "Scheduled",
    "PreparingTarget",
    "TargetReady",
    "Running",
)
FINALIZER = "kubevirt.io/migrationJobFinalize"
HOSTNAME = "kubernetes.io/hostname"
NODE_LABEL = "kubevirt.io/nodeName"
#: Annotations on a VirtualMachine (or VMI) that make the fake report LiveMigratable=False.
NOT_MIGRATABLE_REASON = "testing.vmmove.io/not-migratable-reason"
NOT_MIGRATABLE_MESSAGE = "testing.vmmove.io/not-migratable-message"

#: ``spec.configuration.migrations`` of the KubeVirt CR, KubeVirt's documented defaults.
CLUSTER_MIGRATION_DEFAULTS: Mapping[str, Any] = {
    "parallelMigrationsPerCluster": 5,
    "parallelOutboundMigrationsPerNode": 2,
    "bandwidthPerMigration": "0Mi",
    "progressTimeout": 150,
    "completionTimeoutPerGiB": 150,
    "allowAutoConverge": False,
    "allowPostCopy": False,
}
_POLICY_FIELDS = (
    "allowAutoConverge",
    "allowPostCopy",
    "bandwidthPerMigration",
    "completionTimeoutPerGiB",
)
#: The label KubeVirt's mutating webhook puts on every VMIM; the in-flight check lists by it.
VMI_NAME_LABEL = "kubevirt.io/vmi-name"


@dataclass(frozen=True, kw_only=True)
class KubeVirtRelease:
    """How one KubeVirt release line shows its migrations (see the module docstring)."""

    name: str
    version: str  # the KubeVirt CR's observedKubeVirtVersion
    added_node_selector: bool
    completed_on_failure: bool


#: The release lines the fake imitates, by name.
RELEASES: Mapping[str, KubeVirtRelease] = {
    r.name: r
    for r in (
        KubeVirtRelease(
            name="1.5", version="v1.5.2", added_node_selector=False, completed_on_failure=True
        ),
        KubeVirtRelease(
            name="1.6", version="v1.6.0", added_node_selector=True, completed_on_failure=False
        ),
        KubeVirtRelease(
            name="1.7", version="v1.7.1", added_node_selector=True, completed_on_failure=False
        ),
        KubeVirtRelease(
            name="1.8", version="v1.8.0", added_node_selector=True, completed_on_failure=False
        ),
        KubeVirtRelease(
            name="1.9", version="v1.9.0", added_node_selector=True, completed_on_failure=True
        ),
    )
}
#: The newest release line: what users meet, and what the fake imitates by default.
DEFAULT_RELEASE = "1.9"


def _ts() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(kw_only=True)
class MigrationTiming:
    """Seconds each migration phase lasts in the fake (real time).

    ``switchover`` is the time between the VMI's ``migrationState.completed`` and the
    migration's ``Succeeded``; ``abort`` the time an abort of a running migration takes.
    ``unschedulable_timeout`` fails a migration whose target cannot be placed (KubeVirt:
    300 s). ``postcopy_after``: seconds into ``Running`` after which a migration whose
    effective configuration allows post-copy switches to it (``None``: never).
    ``report_lag``: seconds the VMIM's ``Failed`` trails the VMI's migrationState saying
    the migration failed or was aborted. ``inserted``: how long an inserted (unknown to
    older clients) phase lasts. ``running_by_vmi``: ``Running`` seconds for particular
    VMIs, instead of ``running`` (a slow VM beside quick ones).
    """

    pending: float = 0.05
    scheduling: float = 0.1
    scheduled: float = 0.05
    preparing_target: float = 0.1
    target_ready: float = 0.05
    running: float = 1.0
    switchover: float = 0.1
    abort: float = 0.1
    unschedulable_timeout: float = 300.0
    postcopy_after: float | None = None
    vm_start: float = 0.1
    vm_stop: float = 0.1
    report_lag: float = 0.05
    inserted: float = 0.1
    running_by_vmi: dict[str, float] = field(default_factory=dict)

    def of(self, phase: str) -> float:
        return {
            "Pending": self.pending,
            "Scheduling": self.scheduling,
            "Scheduled": self.scheduled,
            "PreparingTarget": self.preparing_target,
            "TargetReady": self.target_ready,
            "Running": self.running,
            "Completed": self.switchover,
        }.get(phase, self.inserted)


@dataclass(kw_only=True)
class MigrationFault:
    """The next ``times`` migrations of ``vmi`` (any VMI when ``None``) fail ``after``
    seconds into ``phase``, with ``reason`` as the VMI's ``failureReason``."""

    phase: str = "PreparingTarget"
    vmi: str | None = None
    reason: str = "injected failure"
    after: float = 0.0
    times: int = 1

    def __post_init__(self) -> None:
        if self.phase not in MIGRATION_PHASES:
            raise ValueError(f"phase must be one of {', '.join(MIGRATION_PHASES)}")


@dataclass
class _Mig:
    uid: str
    ns: str
    name: str
    vmi: str
    phase: str = ""  # "Completed": Running on the object, switch-over seen on the VMI
    entered: float = 0.0
    source: str | None = None
    target: str | None = None
    fault: MigrationFault | None = None
    abort_at: float | None = None
    resume: str = ""  # the known phase an inserted phase interrupted
    done: bool = False
    handed: bool = False  # the new migrationState is on the VMI
    outcome: str | None = None  # "Failed" once the VMI says so, before the VMIM follows
    outcome_at: float = 0.0
    inserted: set[str] = field(default_factory=set)  # inserted phases already passed
    created: float = field(default_factory=time.monotonic)


#: The known phase after each, for inserting phases a newer KubeVirt has.
_NEXT = {
    "": "Pending",
    "Pending": "Scheduling",
    "Scheduling": "Scheduled",
    "Scheduled": "PreparingTarget",
    "PreparingTarget": "TargetReady",
    "TargetReady": "Running",
}


def _labels(obj: Obj) -> dict[str, str]:
    return dict(obj.get("metadata", {}).get("labels") or {})


def _condition(obj: Obj, ctype: str) -> Obj | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return None


def node_matches(node: Obj, spec: Obj, extra_selector: Mapping[str, str] | None = None) -> bool:
    """Whether a pod with this VMI ``spec`` could be scheduled on ``node``."""
    labels = _labels(node)
    selector = dict(spec.get("nodeSelector") or {})
    selector.update(extra_selector or {})
    if any(labels.get(k) != v for k, v in selector.items()):
        return False
    model = ((spec.get("domain") or {}).get("cpu") or {}).get("model")
    if (
        model
        and model not in ("host-model", "host-passthrough")
        and labels.get(f"cpu-model.node.kubevirt.io/{model}") != "true"
    ):
        return False
    required = (
        ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
        or {}
    ).get("nodeSelectorTerms") or []
    if required and not any(_term_matches(node, term) for term in required):
        return False
    tolerations = spec.get("tolerations") or []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(_tolerates(t, taint) for t in tolerations):
            return False
    return True


def _term_matches(node: Obj, term: Obj) -> bool:
    labels = _labels(node)
    fields = {"metadata.name": node["metadata"]["name"]}
    for source, exprs in (
        (labels, term.get("matchExpressions")),
        (fields, term.get("matchFields")),
    ):
        for expr in exprs or []:
            key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
            value = source.get(key)
            ok = {
                "In": value in values,
                "NotIn": value not in values,
                "Exists": key in source,
                "DoesNotExist": key not in source,
            }.get(op, False)
            if not ok:
                return False
    return True


def _tolerates(toleration: Obj, taint: Obj) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("operator") == "Exists":
        return not toleration.get("key") or toleration["key"] == taint.get("key")
    return bool(
        toleration.get("key") == taint.get("key") and toleration.get("value") == taint.get("value")
    )


def node_schedulable(node: Obj) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    if _labels(node).get("kubevirt.io/schedulable") == "false":
        return False
    ready = _condition(node, "Ready")
    return ready is None or ready.get("status") == "True"


class KubeVirtController:
    """The fake KubeVirt: call :meth:`install` once, then :meth:`start`; :meth:`stop` joins
    its thread."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        timing: MigrationTiming | None = None,
        release: str = DEFAULT_RELEASE,
        added_node_selector: bool | None = None,
        kubevirt_version: str | None = None,
        completed_on_failure: bool | None = None,
        handoff_phase: str = "Scheduled",
        inserted_phases: Mapping[str, str] | None = None,
        migration_policy_api: bool = True,
        admission_window: float = 0.0,
        wrap_denials: bool = False,
        live_migration_gate: bool = True,
        ignore_added_node_selector: bool = False,
        migrations: Mapping[str, Any] | None = None,
    ) -> None:
        if release not in RELEASES:
            raise ValueError(f"release must be one of {', '.join(RELEASES)}")
        if handoff_phase not in ("Scheduled", "TargetReady"):
            raise ValueError("handoff_phase is 'Scheduled' (KubeVirt) or 'TargetReady'")
        for new_phase, before in (inserted_phases or {}).items():
            if before not in MIGRATION_PHASES or new_phase in MIGRATION_PHASES:
                raise ValueError("inserted_phases maps a new phase name to a known phase")
        profile = RELEASES[release]
        self.store = store
        self.timing = timing or MigrationTiming()
        self.release = profile
        self.added_node_selector = (
            profile.added_node_selector if added_node_selector is None else added_node_selector
        )
        self.kubevirt_version = kubevirt_version or profile.version
        self.completed_on_failure = (
            profile.completed_on_failure if completed_on_failure is None else completed_on_failure
        )
        self.handoff_phase = handoff_phase
        self.inserted_phases = dict(inserted_phases or {})
        self.migration_policy_api = migration_policy_api
        self.admission_window = admission_window
        self.wrap_denials = wrap_denials
        self.live_migration_gate = live_migration_gate
        self.ignore_added_node_selector = ignore_added_node_selector
        self.migration_config = {**CLUSTER_MIGRATION_DEFAULTS, **(migrations or {})}
        self.faults: list[MigrationFault] = []
        self._admitted: dict[str, float] = {}  # VMIM uid -> when admitted
        self._migs: dict[str, _Mig] = {}
        self._vm_timers: dict[str, tuple[str, float]] = {}  # VM uid -> (action, since)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.rt_vmi = store.kind("VirtualMachineInstance")
        self.rt_vm = store.kind("VirtualMachine")
        self.rt_vmim = store.kind("VirtualMachineInstanceMigration")
        self.rt_node = store.kind("Node")
        self.rt_ns = store.kind("Namespace")
        self.rt_policy: ResourceType | None = store.kind("MigrationPolicy")
        if not migration_policy_api:  # the whole migrations.kubevirt.io group is absent
            del store.resources[self.rt_policy.key]
            self.rt_policy = None
        self.rt_crd = store.kind("CustomResourceDefinition")
        self.rt_kv = store.kind("KubeVirt")
        self.errors: list[str] = []  # reconcile errors (a bug in the fake), for tests

    # ---- setup -------------------------------------------------------------------------------
    def install(self) -> None:
        """Register the admission webhook; create the CRDs, the namespaces and the KubeVirt CR."""
        self.store.admission.append(self._admit)
        for rt in (self.rt_vmi, self.rt_vm, self.rt_vmim, self.rt_policy, self.rt_kv):
            if rt is not None:
                self.store.create(self.rt_crd, None, self._crd(rt), admit=False)
        for ns in ("default", "kubevirt"):
            if self.store.find(self.rt_ns, None, ns) is None:
                self.store.create(
                    self.rt_ns,
                    None,
                    {
                        "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
                        "status": {"phase": "Active"},
                    },
                    admit=False,
                )
        self.store.create(
            self.rt_kv,
            "kubevirt",
            {
                "metadata": {"name": "kubevirt"},
                "spec": {"configuration": {"migrations": dict(self.migration_config)}},
                "status": {
                    "phase": "Deployed",
                    "observedKubeVirtVersion": self.kubevirt_version,
                    "targetKubeVirtVersion": self.kubevirt_version,
                },
            },
            admit=False,
        )

    def _crd(self, rt: ResourceType) -> Obj:
        spec_props: Obj = {}
        if rt.kind == "VirtualMachineInstanceMigration":
            spec_props = {"vmiName": {"type": "string"}}
            if self.added_node_selector:
                spec_props["addedNodeSelector"] = {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                }
        schema: Obj = {
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "properties": spec_props,
                    "x-kubernetes-preserve-unknown-fields": not spec_props,
                },
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        }
        return {
            "metadata": {"name": f"{rt.plural}.{rt.group}"},
            "spec": {
                "group": rt.group,
                "names": {
                    "plural": rt.plural,
                    "kind": rt.kind,
                    "singular": rt.kind.lower(),
                    "shortNames": list(rt.short_names),
                },
                "scope": "Namespaced" if rt.namespaced else "Cluster",
                "versions": [
                    {
                        "name": rt.version,
                        "served": True,
                        "storage": True,
                        "schema": {"openAPIV3Schema": schema},
                        "subresources": {"status": {}} if rt.status_subresource else {},
                    }
                ],
            },
            "status": {"acceptedNames": {"kind": rt.kind, "plural": rt.plural}},
        }

    def start(self) -> KubeVirtController:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._loop, name="vmmove-fake-kubevirt", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self.store.cond:
            self.store.cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def inject(self, fault: MigrationFault) -> MigrationFault:
        with self.store.cond:
            self.faults.append(fault)
        return fault

    # ---- admission ----------------------------------------------------------------------------
    def _deny(self, new: Obj, message: str, code: int = 400, **extra: Any) -> ApiError:
        """A denial by KubeVirt's webhook as the API server relays it: 400 and no reason
        (``ToAdmissionResponseError``), or 422 Invalid with causes; wrapped as "forbidden"
        (403) when ``wrap_denials`` is on."""
        text = (
            'admission webhook "migration-create-validator.kubevirt.io" denied the request: '
            + message
        )
        if self.wrap_denials:
            name = (new.get("metadata") or {}).get("name", "")
            return ApiError(
                403,
                "Forbidden",
                f'{self.rt_vmim.plural}.{self.rt_vmim.group} "{name}" is forbidden: {text}',
            )
        return ApiError(code, "Invalid" if code == 422 else "", text, **extra)

    def _admit(self, op: str, rt: ResourceType, new: Obj, old: Obj | None) -> None:
        if rt.kind != "VirtualMachineInstanceMigration":
            return
        if op == "UPDATE":
            if old is not None and new.get("spec") != old.get("spec"):
                raise ApiError(
                    422,
                    "Invalid",
                    'admission webhook "migration-update-validator.kubevirt.io" denied the '
                    "request: update of Migration object's spec is restricted",
                )
            return
        spec = new.get("spec")
        if not isinstance(spec, dict) or not spec.get("vmiName"):
            raise self._deny(
                new,
                "vmiName is missing",
                422,
                details={
                    "causes": [
                        {
                            "type": "FieldValueRequired",
                            "message": "vmiName is missing",
                            "field": "spec.vmiName",
                        }
                    ]
                },
            )
        if not self.live_migration_gate:
            raise self._deny(new, "LiveMigration feature gate is not enabled in kubevirt-config")
        if not self.added_node_selector:
            spec.pop("addedNodeSelector", None)  # pruned: unknown to this CRD's schema
        elif "addedNodeSelector" in spec and not isinstance(spec["addedNodeSelector"], dict):
            raise self._deny(new, "spec.addedNodeSelector must be a map", 422)
        ns = new["metadata"]["namespace"]
        vmi = self.store.find(self.rt_vmi, ns, spec["vmiName"])
        if vmi is None:
            raise self._deny(new, f'the VMI "{ns}/{spec["vmiName"]}" does not exist')
        status = vmi.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            raise self._deny(new, "Cannot migrate VMI in finalized state.")
        cond = _condition(vmi, "LiveMigratable")
        if cond is not None and cond.get("status") == "False":
            raise self._deny(
                new,
                f"Cannot migrate VMI, Reason: {cond.get('reason')}, Message: {cond.get('message')}",
            )
        # As KubeVirt: list the VMI's migrations by label and refuse while one is not final.
        # That list and the create are not atomic: within admission_window a racing create
        # has not been seen yet.
        others, _ = self.store.list(
            self.rt_vmim, ns, label_selector=f"{VMI_NAME_LABEL}={spec['vmiName']}"
        )
        seen_before = time.time() - self.admission_window
        for other in others:
            if (other.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            if self._admitted.get(other["metadata"]["uid"], 0.0) > seen_before:
                continue
            raise self._deny(
                new,
                f"in-flight migration detected. Active migration job "
                f"({other['metadata']['uid']}) is currently already in progress for VMI "
                f"{spec['vmiName']}.",
            )
        meta = new["metadata"]
        meta.setdefault("labels", {})[VMI_NAME_LABEL] = spec["vmiName"]
        self._admitted[meta["uid"]] = time.time()  # creationTimestamp has whole seconds
        finalizers = meta.setdefault("finalizers", [])
        if FINALIZER not in finalizers:
            finalizers.append(FINALIZER)

    # ---- the loop ----------------------------------------------------------------------------
    def _loop(self) -> None:
        cond = self.store.cond
        while not self._stop.is_set():
            with cond:
                try:
                    due = self._reconcile(time.monotonic())
                except Exception as exc:  # a fake bug must show up in tests, not hang them
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    due = 0.05
                if self._stop.is_set():
                    return
                cond.wait(max(0.005, min(due, 0.5)))

    def _reconcile(self, now: float) -> float:
        """One pass over every VM and migration; returns seconds until something is due."""
        due = [0.5]
        self._reconcile_vms(now, due)
        items, _ = self.store.list(self.rt_vmim)
        seen = set()
        for obj in sorted(items, key=lambda o: int(o["metadata"]["resourceVersion"])):
            seen.add(obj["metadata"]["uid"])
            self._reconcile_migration(obj, now, due)
        for uid in list(self._migs):
            if uid not in seen:
                del self._migs[uid]
        for uid in [u for u in self._admitted if u not in seen]:
            del self._admitted[uid]
        self._collect_garbage()
        return max(0.0, min(due))

    # ---- migrations --------------------------------------------------------------------------
    def _set_phase(self, mig: _Mig, phase: str, now: float) -> None:
        mig.phase, mig.entered = phase, now
        if phase == "Completed":
            return

        def change(o: Obj) -> None:
            status = o.setdefault("status", {})
            status["phase"] = phase
            status.setdefault("phaseTransitionTimestamps", []).append(
                {"phase": phase, "phaseTransitionTimestamp": _ts()}
            )
            if phase in ("Succeeded", "Failed"):
                fins = o["metadata"].get("finalizers") or []
                o["metadata"]["finalizers"] = [f for f in fins if f != FINALIZER]

        self.store.mutate(self.rt_vmim, mig.ns, mig.name, change)
        if phase in ("Succeeded", "Failed"):
            mig.done = True

    def _strip_finalizer(self, mig: _Mig) -> None:
        def change(o: Obj) -> None:
            fins = o["metadata"].get("finalizers") or []
            o["metadata"]["finalizers"] = [f for f in fins if f != FINALIZER]

        self.store.mutate(self.rt_vmim, mig.ns, mig.name, change)

    def _mirror_state(self, mig: _Mig) -> None:
        """Copy the VMI's migrationState onto the migration object (KubeVirt >= 1.1 does)."""
        vmi = self.store.find(self.rt_vmi, mig.ns, mig.vmi)
        state = ((vmi or {}).get("status") or {}).get("migrationState")
        if state and state.get("migrationUid") == mig.uid:

            def change(o: Obj) -> None:
                o.setdefault("status", {})["migrationState"] = copy.deepcopy(state)

            self.store.mutate(self.rt_vmim, mig.ns, mig.name, change)

    def _vmi_state(self, mig: _Mig, **changes: Any) -> None:
        def change(o: Obj) -> None:
            state = o.setdefault("status", {}).setdefault("migrationState", {})
            if state.get("migrationUid") != mig.uid:
                return
            for key, value in changes.items():
                if value is None:
                    state.pop(key, None)
                else:
                    state[key] = value

        self.store.mutate(self.rt_vmi, mig.ns, mig.vmi, change)
        self._mirror_state(mig)

    def _fail(self, mig: _Mig, reason: str, now: float, due: list[float]) -> None:
        if not mig.handed:
            self._set_phase(mig, "Failed", now)  # nothing was handed over: the VMI is untouched
            return
        changes: dict[str, Any] = {"failed": True, "failureReason": reason, "endTimestamp": _ts()}
        if self.completed_on_failure or mig.phase in ("PreparingTarget", "TargetReady"):
            # The controller's handleMarkMigrationFailedOnVMI (target gone before the
            # migration started) sets completed with failed in every release.
            changes["completed"] = True
        self._vmi_state(mig, **changes)
        self._report(mig, now, due)

    def _report(self, mig: _Mig, now: float, due: list[float]) -> None:
        """The VMI says how it ended; the VMIM follows ``report_lag`` seconds later."""
        mig.outcome, mig.outcome_at = "Failed", now
        due.append(self.timing.report_lag)

    def _active_on(self, node: str | None) -> int:
        return sum(
            1
            for m in self._migs.values()
            if not m.done and m.source == node and m.phase not in ("", "Pending")
        )

    def _reconcile_migration(self, obj: Obj, now: float, due: list[float]) -> None:
        meta = obj["metadata"]
        uid = meta["uid"]
        status = obj.get("status") or {}
        mig = self._migs.get(uid)
        if mig is None:
            mig = _Mig(uid=uid, ns=meta["namespace"], name=meta["name"], vmi=obj["spec"]["vmiName"])
            self._migs[uid] = mig
            for fault in self.faults:
                if fault.times > 0 and fault.vmi in (None, mig.vmi):
                    fault.times -= 1
                    mig.fault = fault
                    break
            if status.get("phase") in ("Succeeded", "Failed"):
                mig.phase, mig.done = status["phase"], True
        if mig.done:
            if FINALIZER in (meta.get("finalizers") or []):
                self._strip_finalizer(mig)
            return
        if mig.outcome is not None:
            left = self.timing.report_lag - (now - mig.outcome_at)
            if left > 0:
                due.append(left)
            else:
                self._set_phase(mig, mig.outcome, now)
            return
        if meta.get("deletionTimestamp"):
            self._abort(mig, now, due)
            return
        if mig.phase == "":
            if not self._insert(mig, now, due):
                self._set_phase(mig, "Pending", now)
                due.append(self.timing.pending)
            return
        armed = mig.fault
        if armed is not None and armed.phase == mig.phase:
            if now - mig.entered >= armed.after:
                self._fail(mig, armed.reason, now, due)
                return
            due.append(armed.after - (now - mig.entered))
        if mig.phase == "Running" and self.timing.postcopy_after is not None:
            self._maybe_postcopy(mig, now)
        lasts = self.timing.of(mig.phase)
        if mig.phase == "Running":
            lasts = self.timing.running_by_vmi.get(mig.vmi, lasts)
        left = lasts - (now - mig.entered)
        if left > 0:
            due.append(left)
            return
        self._advance(mig, now, due)

    def _insert(self, mig: _Mig, now: float, due: list[float]) -> bool:
        """Pass through an inserted phase before the next known one, once."""
        nxt = _NEXT.get(mig.phase)
        for phase, before in self.inserted_phases.items():
            if before == nxt and phase not in mig.inserted:
                mig.inserted.add(phase)
                mig.resume = mig.phase
                self._set_phase(mig, phase, now)
                due.append(self.timing.inserted)
                return True
        return False

    def _advance(self, mig: _Mig, now: float, due: list[float]) -> None:
        if mig.phase in self.inserted_phases:
            mig.phase = mig.resume  # carry on where the inserted phase interrupted
            if mig.phase == "":
                self._set_phase(mig, "Pending", now)
                due.append(self.timing.pending)
                return
        vmi = self.store.find(self.rt_vmi, mig.ns, mig.vmi)
        if vmi is None or (vmi.get("status") or {}).get("phase") != "Running":
            self._fail(mig, "the VMI is not running", now, due)
            return
        if mig.phase not in ("Completed",) and self._insert(mig, now, due):
            return
        vstatus = vmi.get("status") or {}
        if mig.phase == "Pending":
            busy = any(
                m is not mig
                and not m.done
                and m.vmi == mig.vmi
                and m.ns == mig.ns
                and m.phase not in ("", "Pending")
                for m in self._migs.values()
            )
            cfg = self.migration_config
            running = sum(
                1 for m in self._migs.values() if not m.done and m.phase not in ("", "Pending")
            )
            if (
                busy
                or running >= int(cfg["parallelMigrationsPerCluster"])
                or self._active_on(vstatus.get("nodeName"))
                >= int(cfg["parallelOutboundMigrationsPerNode"])
            ):
                due.append(0.05)  # one active migration per VMI; cluster and node limits
                return
            mig.source = vstatus.get("nodeName")
            self._set_phase(mig, "Scheduling", now)
            due.append(self.timing.scheduling)
        elif mig.phase == "Scheduling":
            target = self._pick_target(mig, vmi)
            if target is None:
                if now - mig.entered >= self.timing.unschedulable_timeout:
                    self._set_phase(mig, "Failed", now)
                else:
                    due.append(0.05)
                return
            mig.target = target
            self._set_phase(mig, "Scheduled", now)
        elif mig.phase == "Scheduled":
            if self.handoff_phase == "Scheduled":
                self._handoff(mig, vmi)
            self._set_phase(mig, "PreparingTarget", now)
        elif mig.phase == "PreparingTarget":
            self._set_phase(mig, "TargetReady", now)
        elif mig.phase == "TargetReady":
            if not mig.handed:
                self._handoff(mig, vmi)
            self._vmi_state(mig, startTimestamp=_ts())
            self._set_phase(mig, "Running", now)
        elif mig.phase == "Running":
            self._complete_on_vmi(mig)
            self._set_phase(mig, "Completed", now)
        elif mig.phase == "Completed":
            self._set_phase(mig, "Succeeded", now)
        due.append(0.0 if mig.phase != "Succeeded" else 0.5)

    def _pick_target(self, mig: _Mig, vmi: Obj) -> str | None:
        vmim = self.store.find(self.rt_vmim, mig.ns, mig.name) or {}
        extra = (vmim.get("spec") or {}).get("addedNodeSelector") or {}
        if self.ignore_added_node_selector:
            extra = {}
        return self.schedule(vmi.get("spec") or {}, exclude=mig.source, extra_selector=extra)

    def schedule(
        self,
        spec: Obj,
        *,
        exclude: str | None = None,
        extra_selector: Mapping[str, str] | None = None,
    ) -> str | None:
        """The node the scheduler would choose for a pod of this VMI spec, or ``None``."""
        nodes, _ = self.store.list(self.rt_node)
        vmis, _ = self.store.list(self.rt_vmi)
        load: dict[str, int] = {}
        for v in vmis:
            node = (v.get("status") or {}).get("nodeName")
            if node:
                load[node] = load.get(node, 0) + 1
        fits = [
            n["metadata"]["name"]
            for n in nodes
            if n["metadata"]["name"] != exclude
            and node_schedulable(n)
            and node_matches(n, spec, extra_selector)
        ]
        return min(fits, key=lambda name: (load.get(name, 0), name), default=None)

    def _effective_config(self, vmi: Obj, ns: str) -> tuple[str | None, Obj]:
        """The MigrationPolicy that applies (most matching labels, then name) and the
        configuration it yields over the cluster defaults."""
        policies = self.store.list(self.rt_policy)[0] if self.rt_policy is not None else []
        ns_obj = self.store.find(self.rt_ns, None, ns) or {}
        vmi_labels, ns_labels = _labels(vmi), _labels(ns_obj)
        best: tuple[int, str] | None = None
        chosen: Obj | None = None
        for pol in policies:
            sel = (pol.get("spec") or {}).get("selectors") or {}
            want_vmi = sel.get("virtualMachineInstanceSelector") or {}
            want_ns = sel.get("namespaceSelector") or {}
            if any(vmi_labels.get(k) != v for k, v in want_vmi.items()):
                continue
            if any(ns_labels.get(k) != v for k, v in want_ns.items()):
                continue
            score = (-(len(want_vmi) + len(want_ns)), pol["metadata"]["name"])
            if best is None or score < best:
                best, chosen = score, pol
        config = {k: v for k, v in self.migration_config.items() if k in _POLICY_FIELDS}
        if chosen is None:
            return None, config
        for key in _POLICY_FIELDS:
            if key in (chosen.get("spec") or {}):
                config[key] = chosen["spec"][key]
        return chosen["metadata"]["name"], config

    def _handoff(self, mig: _Mig, vmi: Obj) -> None:
        policy, config = self._effective_config(vmi, mig.ns)
        state: Obj = {
            "migrationUid": mig.uid,
            "sourceNode": mig.source,
            "targetNode": mig.target,
            "targetPod": f"virt-launcher-{mig.vmi}-{uuid.uuid4().hex[:5]}",
            "mode": "PreCopy",
            "migrationConfiguration": config,
        }
        if policy is not None:
            state["migrationPolicyName"] = policy

        def change(o: Obj) -> None:
            # A fresh state: the previous migration's flags and nodes go only now.
            o.setdefault("status", {})["migrationState"] = copy.deepcopy(state)

        self.store.mutate(self.rt_vmi, mig.ns, mig.vmi, change)
        mig.handed = True
        self._mirror_state(mig)

    def _maybe_postcopy(self, mig: _Mig, now: float) -> None:
        after = self.timing.postcopy_after
        if after is None or now - mig.entered < after:
            return
        vmi = self.store.find(self.rt_vmi, mig.ns, mig.vmi) or {}
        state = (vmi.get("status") or {}).get("migrationState") or {}
        config = state.get("migrationConfiguration") or {}
        if config.get("allowPostCopy") and state.get("mode") != "PostCopy":
            self._vmi_state(mig, mode="PostCopy")

    def _complete_on_vmi(self, mig: _Mig) -> None:
        target = mig.target

        def change(o: Obj) -> None:
            status = o.setdefault("status", {})
            state = status.setdefault("migrationState", {})
            if state.get("migrationUid") != mig.uid or target is None:
                return
            stamp = _ts()
            state.update(completed=True, endTimestamp=stamp, targetNodeDomainReadyTimestamp=stamp)
            status["nodeName"] = target
            o["metadata"].setdefault("labels", {})[NODE_LABEL] = target

        self.store.mutate(self.rt_vmi, mig.ns, mig.vmi, change)
        self._mirror_state(mig)

    def _abort(self, mig: _Mig, now: float, due: list[float]) -> None:
        if not mig.handed:
            self._set_phase(mig, "Failed", now)  # nothing handed over yet: just drop it
            return
        if mig.phase == "Completed":
            self._vmi_state(mig, abortRequested=True, abortStatus="Failed")
            left = self.timing.switchover - (now - mig.entered)
            if left <= 0:
                self._set_phase(mig, "Succeeded", now)
            else:
                due.append(left)
            return
        if mig.abort_at is None:
            mig.abort_at = now
            self._vmi_state(mig, abortRequested=True, abortStatus="Aborting")
        left = self.timing.abort - (now - mig.abort_at)
        if left > 0:
            due.append(left)
            return
        changes: dict[str, Any] = {
            "abortStatus": "Succeeded",
            "failed": True,
            "failureReason": "Live migration aborted",
            "endTimestamp": _ts(),
        }
        if self.completed_on_failure:
            changes["completed"] = True
        self._vmi_state(mig, **changes)
        self._report(mig, now, due)

    def _collect_garbage(self) -> None:
        """Keep five finalized migrations per VMI, as KubeVirt does."""
        finished: dict[tuple[str, str], list[_Mig]] = {}
        for m in self._migs.values():
            if m.done:
                finished.setdefault((m.ns, m.vmi), []).append(m)
        for migs in finished.values():
            for old in sorted(migs, key=lambda m: m.created)[:-5]:
                with contextlib.suppress(ApiError):
                    self.store.delete(self.rt_vmim, old.ns, old.name)
                self._migs.pop(old.uid, None)

    # ---- virtual machines (start, stop) ------------------------------------------------------
    @staticmethod
    def wants_running(vm: Obj) -> bool | None:
        spec = vm.get("spec") or {}
        strategy = spec.get("runStrategy")
        if strategy is not None:
            return {"Always": True, "RerunOnFailure": True, "Halted": False}.get(strategy)
        return bool(spec.get("running"))

    def _reconcile_vms(self, now: float, due: list[float]) -> None:
        vms, _ = self.store.list(self.rt_vm)
        for vm in vms:
            meta = vm["metadata"]
            ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
            want = self.wants_running(vm)
            vmi = self.store.find(self.rt_vmi, ns, name)
            timer = self._vm_timers.get(uid)
            if want is True and vmi is None:
                if timer is None or timer[0] != "start":
                    self._vm_timers[uid] = ("start", now)
                    self._vm_status(ns, name, "Starting", ready=False)
                    due.append(self.timing.vm_start)
                elif now - timer[1] >= self.timing.vm_start:
                    if self._start_vmi(vm):
                        self._vm_timers.pop(uid, None)
                        self._vm_status(ns, name, "Running", ready=True)
                    else:
                        self._vm_status(ns, name, "ErrorUnschedulable", ready=False)
                        due.append(0.2)
                else:
                    due.append(self.timing.vm_start - (now - timer[1]))
            elif want is False and vmi is not None:
                if timer is None or timer[0] != "stop":
                    self._vm_timers[uid] = ("stop", now)
                    self._vm_status(ns, name, "Stopping", ready=False)
                    due.append(self.timing.vm_stop)
                elif now - timer[1] >= self.timing.vm_stop:
                    with contextlib.suppress(ApiError):
                        self.store.delete(self.rt_vmi, ns, name)
                    self._vm_timers.pop(uid, None)
                    self._vm_status(ns, name, "Stopped", ready=False)
                else:
                    due.append(self.timing.vm_stop - (now - timer[1]))
            else:
                self._vm_timers.pop(uid, None)
                if vmi is None:
                    self._vm_status(ns, name, "Stopped", ready=False)
                elif (vmi.get("status") or {}).get("phase") == "Running":
                    self._vm_status(ns, name, "Running", ready=True)

    def _vm_status(self, ns: str, name: str, printable: str, *, ready: bool) -> None:
        def change(o: Obj) -> None:
            status = o.setdefault("status", {})
            status["printableStatus"] = printable
            status["ready"] = ready
            status["created"] = printable not in ("Stopped",)
            strategy = (o.get("spec") or {}).get("runStrategy")
            if strategy:
                status["runStrategy"] = strategy

        self.store.mutate(self.rt_vm, ns, name, change)

    def _start_vmi(self, vm: Obj) -> bool:
        meta = vm["metadata"]
        template = copy.deepcopy((vm.get("spec") or {}).get("template") or {})
        spec = template.get("spec") or {}
        node = self.schedule(spec)
        if node is None:
            return False
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        labels[NODE_LABEL] = node
        annotations = dict(meta.get("annotations") or {})
        vmi: Obj = {
            "metadata": {
                "name": meta["name"],
                "labels": labels,
                "annotations": {
                    k: v for k, v in annotations.items() if k.startswith("testing.vmmove.io/")
                },
                "ownerReferences": [
                    {
                        "apiVersion": "kubevirt.io/v1",
                        "kind": "VirtualMachine",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": spec,
            "status": vmi_status(node, annotations),
        }
        self.store.create(self.rt_vmi, meta["namespace"], vmi, admit=False)
        return True


def vmi_status(node: str, annotations: Mapping[str, str] | None = None) -> Obj:
    """The status of a running VMI on ``node``, LiveMigratable unless annotated otherwise."""
    annotations = annotations or {}
    reason = annotations.get(NOT_MIGRATABLE_REASON)
    migratable: Obj = {"type": "LiveMigratable", "status": "True", "lastProbeTime": None}
    if reason:
        migratable = {
            "type": "LiveMigratable",
            "status": "False",
            "reason": reason,
            "message": annotations.get(NOT_MIGRATABLE_MESSAGE, ""),
            "lastProbeTime": None,
        }
    return {
        "phase": "Running",
        "nodeName": node,
        "conditions": [
            {"type": "Ready", "status": "True", "lastProbeTime": None},
            migratable,
        ],
        "migrationMethod": "LiveMigration",
        "qosClass": "Burstable",
    }
