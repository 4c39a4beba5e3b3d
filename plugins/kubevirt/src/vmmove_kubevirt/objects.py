"""Kubernetes and KubeVirt objects (plain JSON dicts) read as vmmove inventory.

Nodes become hosts, VirtualMachineInstances (and stopped, pinned VirtualMachines) become
VMs. Pure functions, no API calls: the backend feeds them what it listed or watched.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from vmmove.model import Capacity, CpuInfo, HostInfo, HostState, PowerState, VMInfo

__all__ = [
    "HOSTNAME_LABEL",
    "condition",
    "host_info",
    "node_pin",
    "parse_quantity",
    "scheduling_problems",
    "selector_keys",
    "vm_info",
    "vmi_memory",
    "vmi_vcpus",
]

Obj = Mapping[str, Any]

HOSTNAME_LABEL = "kubernetes.io/hostname"
_ARCH = {"amd64": "x86_64", "arm64": "aarch64", "s390x": "s390x", "ppc64le": "ppc64le"}
_SUFFIX: dict[str, Decimal | int] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def parse_quantity(value: Any) -> Decimal:
    """A Kubernetes quantity (``"4"``, ``"3500m"``, ``"16Gi"``, ``"1e3"``) as a number."""
    if isinstance(value, int | float):
        return Decimal(str(value))
    m = _QUANTITY.match(str(value).strip())
    if m is None or m.group(2) not in _SUFFIX:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    try:
        return Decimal(m.group(1)) * Decimal(_SUFFIX[m.group(2)])
    except InvalidOperation:
        raise ValueError(f"not a Kubernetes quantity: {value!r}") from None


def _quantity(value: Any, default: int = 0) -> int:
    try:
        return int(parse_quantity(value)) if value is not None else default
    except ValueError:
        return default


def condition(obj: Obj, ctype: str) -> Obj | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return None


def _labels(obj: Obj) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _prefixed(labels: Mapping[str, str], prefix: str) -> list[str]:
    return sorted(
        k[len(prefix) :] for k, v in labels.items() if k.startswith(prefix) and v == "true"
    )


# ---- hosts ----------------------------------------------------------------------------------


def node_state(node: Obj) -> HostState:
    ready = condition(node, "Ready")
    if ready is not None and ready.get("status") != "True":
        return HostState.DOWN
    if (node.get("spec") or {}).get("unschedulable"):
        return HostState.MAINTENANCE
    if _labels(node).get("kubevirt.io/schedulable") == "false":
        return HostState.MAINTENANCE
    return HostState.UP


def selector_keys(specs: Iterable[Obj]) -> set[str]:
    """The label keys the nodeSelectors of these VMI (or VM template) specs ask for, but
    ``kubernetes.io/hostname`` (a pin, which a cold move changes)."""
    return {
        key for spec in specs for key in (spec.get("nodeSelector") or {}) if key != HOSTNAME_LABEL
    }


def host_info(node: Obj, vmis: Iterable[Obj], cluster: str, keys: Iterable[str] = ()) -> HostInfo:
    """A node as a host: allocatable CPU and memory, what its VMIs hold, CPU labels, and
    its values for the label ``keys`` some VM's nodeSelector asks for (``node_labels``)."""
    meta = node.get("metadata") or {}
    name = str(meta.get("name"))
    labels = _labels(node)
    status = node.get("status") or {}
    alloc = status.get("allocatable") or status.get("capacity") or {}
    cpus, memory = 0, 0
    for vmi in vmis:
        if ((vmi.get("status") or {}).get("nodeName")) == name:
            cpus += vmi_vcpus(vmi)
            memory += vmi_memory(vmi)
    models = _prefixed(labels, "host-model-cpu.node.kubevirt.io/")
    vendors = _prefixed(labels, "cpu-vendor.node.kubevirt.io/")
    state = node_state(node)
    extra = {
        "schedulable": "no" if state is not HostState.UP else "yes",
        "cpu_models": ",".join(_prefixed(labels, "cpu-model.node.kubevirt.io/")),
        HOSTNAME_LABEL: labels.get(HOSTNAME_LABEL, name),
    }
    wanted = sorted(f"{k}={labels[k]}" for k in set(keys) if k in labels)
    if wanted:
        extra["node_labels"] = ",".join(wanted)
    if (node.get("spec") or {}).get("unschedulable"):
        extra["cordoned"] = "yes"
    taints = [
        f"{t.get('key')}:{t.get('effect')}"
        for t in (node.get("spec") or {}).get("taints") or []
        if t.get("effect") in ("NoSchedule", "NoExecute")
    ]
    if taints:
        extra["taints"] = ",".join(taints)
    kubelet = (status.get("nodeInfo") or {}).get("kubeletVersion")
    if kubelet:
        extra["kubelet"] = str(kubelet)
    return HostInfo(
        id=name,
        name=name,
        cluster=cluster,
        state=state,
        capacity=Capacity(
            cpus=max(math.floor(parse_quantity(alloc.get("cpu", 0))), 0),
            memory=_quantity(alloc.get("memory")),
        ),
        allocated=Capacity(cpus=cpus, memory=memory),
        cpu=CpuInfo(
            arch=_ARCH.get(labels.get("kubernetes.io/arch", "amd64"), "x86_64"),
            model=models[0] if models else "",
            vendor=vendors[0] if vendors else "",
            features=frozenset(_prefixed(labels, "cpu-feature.node.kubevirt.io/")),
        ),
        extra=extra,
    )


# ---- VMs ------------------------------------------------------------------------------------


def vmi_memory(vmi: Obj) -> int:
    """Guest memory in bytes: ``domain.memory.guest``, else the memory request or limit."""
    spec = vmi.get("spec") or {}
    domain = spec.get("domain") or {}
    current = ((vmi.get("status") or {}).get("memory") or {}).get("guestCurrent")
    for value in (
        current,
        (domain.get("memory") or {}).get("guest"),
        ((domain.get("resources") or {}).get("requests") or {}).get("memory"),
        ((domain.get("resources") or {}).get("limits") or {}).get("memory"),
    ):
        if value:
            got = _quantity(value)
            if got > 0:
                return got
    return 0


def vmi_vcpus(vmi: Obj) -> int:
    spec = vmi.get("spec") or {}
    domain = spec.get("domain") or {}
    cpu = domain.get("cpu") or {}
    if any(k in cpu for k in ("cores", "sockets", "threads")):
        return (
            int(cpu.get("cores") or 1) * int(cpu.get("sockets") or 1) * int(cpu.get("threads") or 1)
        )
    request = ((domain.get("resources") or {}).get("requests") or {}).get("cpu")
    if request:
        return max(1, math.ceil(parse_quantity(request)))
    return 1


def node_pin(spec: Obj, nodes_by_hostname: Mapping[str, str]) -> str | None:
    """The single node a (VM template or VMI) spec is pinned to, or ``None``.

    Pins are ``nodeSelector[kubernetes.io/hostname]``, or a required node affinity with one
    term naming one node by ``kubernetes.io/hostname`` or ``metadata.name``.
    """
    selector = spec.get("nodeSelector") or {}
    if HOSTNAME_LABEL in selector:
        value = str(selector[HOSTNAME_LABEL])
        return nodes_by_hostname.get(value, value)
    terms = (
        (((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        ) or {}).get("nodeSelectorTerms") or []
    )  # fmt: skip
    if len(terms) != 1:
        return None
    for key, exprs in (("matchExpressions", HOSTNAME_LABEL), ("matchFields", "metadata.name")):
        for expr in terms[0].get(key) or []:
            values = expr.get("values") or []
            if expr.get("key") == exprs and expr.get("operator") == "In" and len(values) == 1:
                value = str(values[0])
                return nodes_by_hostname.get(value, value) if key == "matchExpressions" else value
    return None


def _owner_vm(vmi: Obj) -> str | None:
    for ref in (vmi.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "VirtualMachine":
            return str(ref.get("name"))
    return None


def vm_info(
    name: str,
    vmi: Obj | None,
    vm: Obj | None,
    nodes_by_hostname: Mapping[str, str],
) -> VMInfo | None:
    """A VMI (running, paused) or a stopped VM pinned to a node, as a VM; ``None`` when it
    is on no node (a stopped VM with no pin, a VMI not scheduled yet)."""
    template = ((vm or {}).get("spec") or {}).get("template") or {}
    source: Obj = vmi if vmi is not None else template
    spec = source.get("spec") or {}
    extra: dict[str, str] = {}
    if vmi is not None:
        status = vmi.get("status") or {}
        node = status.get("nodeName")
        phase = str(status.get("phase") or "")
        paused = condition(vmi, "Paused")
        if phase == "Running" and node:
            power = (
                PowerState.PAUSED
                if paused and paused.get("status") == "True"
                else PowerState.RUNNING
            )
        else:
            node = node or node_pin(spec, nodes_by_hostname)
            power = PowerState.STOPPED
        extra["phase"] = phase
        extra["uid"] = str((vmi.get("metadata") or {}).get("uid", ""))
        owner = _owner_vm(vmi)
        extra["owner"] = f"VirtualMachine/{owner}" if owner else "none (bare VMI)"
        migratable = condition(vmi, "LiveMigratable")
        state = status.get("migrationState") or {}
        if state.get("migrationUid"):
            outcome = (
                "completed"
                if state.get("completed")
                else "failed"
                if state.get("failed")
                else "active"
            )
            extra["last_migration"] = f"{state.get('migrationUid')} {outcome}"
    else:
        node = node_pin(spec, nodes_by_hostname)
        power = PowerState.STOPPED
        migratable = None
        extra["phase"] = "Stopped"
        extra["owner"] = f"VirtualMachine/{name}"
    if not node:
        return None
    if vm is not None:
        vspec = vm.get("spec") or {}
        extra["run_strategy"] = str(
            vspec.get("runStrategy") or ("Always" if vspec.get("running") else "Halted")
        )
    eviction = spec.get("evictionStrategy")
    if eviction:
        extra["eviction_strategy"] = str(eviction)
    selector = spec.get("nodeSelector") or {}
    if selector:
        extra["node_selector"] = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    live, why = True, None
    if migratable is not None:
        live = migratable.get("status") == "True"
        extra["live_migratable"] = str(migratable.get("status"))
        if not live:
            reason, message = migratable.get("reason") or "", migratable.get("message") or ""
            why = f"{reason}: {message}" if reason and message else reason or message or None
            extra["live_migratable_reason"] = str(reason)
    return VMInfo(
        id=name,
        name=name,
        host=str(node),
        power=power,
        memory=vmi_memory(source),
        vcpus=vmi_vcpus(source),
        live_migratable=live,
        not_migratable_reason=why,
        extra=extra,
    )


# ---- can this VMI's target pod land on that node? -------------------------------------------


def _term_ok(labels: Mapping[str, str], name: str, term: Obj) -> bool:
    fields = {"metadata.name": name}
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
                "Gt": value is not None and values and _int(value) > _int(values[0]),
                "Lt": value is not None and values and _int(value) < _int(values[0]),
            }.get(str(op), False)
            if not ok:
                return False
    return True


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _tolerated(tolerations: Iterable[Obj], taint: Obj) -> bool:
    for tol in tolerations:
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists":
            if not tol.get("key") or tol["key"] == taint.get("key"):
                return True
        elif tol.get("key") == taint.get("key") and tol.get("value") == taint.get("value"):
            return True
    return False


def scheduling_problems(spec: Obj, node: Obj) -> list[str]:
    """Why a pod of this VMI ``spec`` cannot run on ``node`` (nothing: it can)."""
    meta = node.get("metadata") or {}
    name = str(meta.get("name"))
    labels = _labels(node)
    out: list[str] = []
    for key, want in sorted((spec.get("nodeSelector") or {}).items()):
        if labels.get(key) != want:
            have = labels.get(key)
            out.append(
                f"the VMI's nodeSelector {key}={want} excludes it"
                + (f" (it has {key}={have})" if have is not None else "")
            )
    terms = (
        (((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        ) or {}).get("nodeSelectorTerms") or []
    )  # fmt: skip
    if terms and not any(_term_ok(labels, name, t) for t in terms):
        out.append("the VMI's required node affinity excludes it")
    model = ((spec.get("domain") or {}).get("cpu") or {}).get("model")
    if (
        model
        and model not in ("host-model", "host-passthrough")
        and labels.get(f"cpu-model.node.kubevirt.io/{model}") != "true"
    ):
        out.append(f"it does not offer the VMI's CPU model {model}")
    tolerations = spec.get("tolerations") or []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerated(
            tolerations, taint
        ):
            if taint.get("key") == "node.kubernetes.io/unschedulable":
                continue  # reported as "cordoned" by the caller
            out.append(f"taint {taint.get('key')}:{taint.get('effect')} is not tolerated")
    return out
