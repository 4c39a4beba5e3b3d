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

from vmmove.errors import ConnectionFailed
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
#: Beyond this a "quantity" is no resource a cluster has (Kubernetes caps them near 2**63);
#: checked before multiplying, so ``1e999999999Ei`` costs nothing.
_QUANTITY_MAX = Decimal(2**64)


def _clip(value: Any, limit: int = 60) -> str:
    """A value quoted in a message, not echoed at length."""
    text = as_text(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def as_text(value: Any) -> str:
    """``str(value)`` that cannot fail (str() of a 5000-digit int raises ValueError)."""
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except ValueError:
        return f"<{type(value).__name__}>"


def parse_quantity(value: Any) -> Decimal:
    """A Kubernetes quantity (``"4"``, ``"3500m"``, ``"16Gi"``, ``"1e3"``) as a number.

    Raises :class:`ConnectionFailed` (the platform spoke nonsense) for anything else:
    other types, NaN, infinities and absurd magnitudes included."""
    number: Decimal | None = None
    if isinstance(value, bool):  # a JSON true is no quantity, though bool is an int
        pass
    elif isinstance(value, int | float | str):
        m = _QUANTITY.match(as_text(value).strip())
        if m is not None and m.group(2) in _SUFFIX:
            try:
                number = Decimal(m.group(1))
            except InvalidOperation:  # "1.2.3", "."
                number = None
            if number is not None and (not number.is_finite() or number.adjusted() > 30):
                number = None
            if number is not None:
                number *= Decimal(_SUFFIX[m.group(2)])
                if abs(number) > _QUANTITY_MAX:
                    number = None
    if number is None:
        raise ConnectionFailed(f"not a Kubernetes quantity: {_clip(value)}")
    return number


def _quantity(value: Any, default: int = 0) -> int:
    """A size in bytes; ``default`` when absent or unreadable, 0 when negative."""
    try:
        return max(int(parse_quantity(value)), 0) if value is not None else default
    except ConnectionFailed:
        return default


def as_map(value: Any) -> Obj:
    """A nested field that should be an object: anything else counts as absent."""
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    """A nested field that should be a list: anything else (a string too) counts as absent."""
    return list(value) if isinstance(value, list | tuple) else []


def _maps(value: Any) -> list[Obj]:
    """The objects of a list field, skipping entries that are not objects."""
    return [v for v in _list(value) if isinstance(v, Mapping)]


def as_name(value: Any) -> str | None:
    """A node or object name: a non-empty string, else ``None``."""
    return value if isinstance(value, str) and value else None


def _obj(value: Any, what: str) -> Obj:
    """A whole API object: without one there is nothing to read."""
    if not isinstance(value, Mapping):
        raise ConnectionFailed(f"the API server sent {what} as {type(value).__name__}")
    return value


def condition(obj: Obj, ctype: str) -> Obj | None:
    for cond in _maps(as_map(_obj(obj, "an object").get("status")).get("conditions")):
        if cond.get("type") == ctype:
            return dict(cond)
    return None


def _labels(obj: Obj) -> dict[str, str]:
    labels = as_map(as_map(obj.get("metadata")).get("labels"))
    return {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)}


def _prefixed(labels: Mapping[str, str], prefix: str) -> list[str]:
    return sorted(
        k[len(prefix) :] for k, v in labels.items() if k.startswith(prefix) and v == "true"
    )


# ---- hosts ----------------------------------------------------------------------------------


def node_state(node: Obj) -> HostState:
    ready = condition(_obj(node, "a Node"), "Ready")
    if ready is not None and ready.get("status") != "True":
        return HostState.DOWN
    if as_map(node.get("spec")).get("unschedulable"):
        return HostState.MAINTENANCE
    if _labels(node).get("kubevirt.io/schedulable") == "false":
        return HostState.MAINTENANCE
    return HostState.UP


def selector_keys(specs: Iterable[Obj]) -> set[str]:
    """The label keys the nodeSelectors of these VMI (or VM template) specs ask for, but
    ``kubernetes.io/hostname`` (a pin, which a cold move changes)."""
    return {
        key
        for spec in specs
        for key in as_map(_obj(spec, "a VMI spec").get("nodeSelector"))
        if key != HOSTNAME_LABEL
    }


def host_info(node: Obj, vmis: Iterable[Obj], cluster: str, keys: Iterable[str] = ()) -> HostInfo:
    """A node as a host: allocatable CPU and memory, what its VMIs hold, CPU labels, and
    its values for the label ``keys`` some VM's nodeSelector asks for (``node_labels``)."""
    name = as_name(as_map(_obj(node, "a Node").get("metadata")).get("name"))
    if name is None:  # a host needs an id
        raise ConnectionFailed("the API server sent a Node without a name")
    labels = _labels(node)
    status = as_map(node.get("status"))
    alloc = as_map(status.get("allocatable") or status.get("capacity"))
    cpus, memory = 0, 0
    for vmi in vmis:
        if as_map(as_map(vmi).get("status")).get("nodeName") == name:
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
    if as_map(node.get("spec")).get("unschedulable"):
        extra["cordoned"] = "yes"
    taints = [
        f"{as_text(t.get('key'))}:{as_text(t.get('effect'))}"
        for t in _maps(as_map(node.get("spec")).get("taints"))
        if t.get("effect") in ("NoSchedule", "NoExecute")
    ]
    if taints:
        extra["taints"] = ",".join(taints)
    kubelet = as_map(status.get("nodeInfo")).get("kubeletVersion")
    if kubelet:
        extra["kubelet"] = as_text(kubelet)
    return HostInfo(
        id=name,
        name=name,
        cluster=cluster,
        state=state,
        capacity=Capacity(
            cpus=_cpus(alloc.get("cpu")),
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


def _cpus(value: Any) -> int:
    """Allocatable CPUs, whole ones; 0 when absent, unreadable or negative."""
    try:
        return max(math.floor(parse_quantity(value)), 0) if value is not None else 0
    except ConnectionFailed:
        return 0


# ---- VMs ------------------------------------------------------------------------------------


def vmi_memory(vmi: Obj) -> int:
    """Guest memory in bytes: ``domain.memory.guest``, else the memory request or limit."""
    spec = as_map(_obj(vmi, "a VMI").get("spec"))
    domain = as_map(spec.get("domain"))
    resources = as_map(domain.get("resources"))
    current = as_map(as_map(vmi.get("status")).get("memory")).get("guestCurrent")
    for value in (
        current,
        as_map(domain.get("memory")).get("guest"),
        as_map(resources.get("requests")).get("memory"),
        as_map(resources.get("limits")).get("memory"),
    ):
        if value:
            got = _quantity(value)
            if got > 0:
                return got
    return 0


def _topology_count(value: Any) -> int:
    """cores/sockets/threads: a positive int, else the default 1 (KubeVirt's own default;
    a string, float or negative number here is nonsense we do not multiply)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1 << 16
    return int(value) if ok else 1


def vmi_vcpus(vmi: Obj) -> int:
    spec = as_map(_obj(vmi, "a VMI").get("spec"))
    domain = as_map(spec.get("domain"))
    cpu = as_map(domain.get("cpu"))
    if any(k in cpu for k in ("cores", "sockets", "threads")):
        return (
            _topology_count(cpu.get("cores"))
            * _topology_count(cpu.get("sockets"))
            * _topology_count(cpu.get("threads"))
        )
    request = as_map(as_map(domain.get("resources")).get("requests")).get("cpu")
    if request:
        try:
            return max(1, math.ceil(parse_quantity(request)))
        except ConnectionFailed:
            return 1  # an unreadable request: at least one vCPU, as with none
    return 1


def _required_terms(spec: Obj) -> list[Obj]:
    """``affinity.nodeAffinity.requiredDuringScheduling...nodeSelectorTerms``."""
    affinity = as_map(as_map(spec.get("affinity")).get("nodeAffinity"))
    required = as_map(affinity.get("requiredDuringSchedulingIgnoredDuringExecution"))
    return _maps(required.get("nodeSelectorTerms"))


def node_pin(spec: Obj, nodes_by_hostname: Mapping[str, str]) -> str | None:
    """The single node a (VM template or VMI) spec is pinned to, or ``None``.

    Pins are ``nodeSelector[kubernetes.io/hostname]``, or a required node affinity with one
    term naming one node by ``kubernetes.io/hostname`` or ``metadata.name``.
    """
    selector = as_map(_obj(spec, "a VMI spec").get("nodeSelector"))
    if HOSTNAME_LABEL in selector:
        value = as_text(selector[HOSTNAME_LABEL])
        return nodes_by_hostname.get(value, value)
    terms = _required_terms(spec)
    if len(terms) != 1:
        return None
    for key, exprs in (("matchExpressions", HOSTNAME_LABEL), ("matchFields", "metadata.name")):
        for expr in _maps(terms[0].get(key)):
            values = _list(expr.get("values"))
            if expr.get("key") == exprs and expr.get("operator") == "In" and len(values) == 1:
                value = as_text(values[0])
                return nodes_by_hostname.get(value, value) if key == "matchExpressions" else value
    return None


def _owner_vm(vmi: Obj) -> str | None:
    for ref in _maps(as_map(vmi.get("metadata")).get("ownerReferences")):
        if ref.get("kind") == "VirtualMachine":
            return as_text(ref.get("name"))
    return None


def vm_info(
    name: str,
    vmi: Obj | None,
    vm: Obj | None,
    nodes_by_hostname: Mapping[str, str],
) -> VMInfo | None:
    """A VMI (running, paused) or a stopped VM pinned to a node, as a VM; ``None`` when it
    is on no node (a stopped VM with no pin, a VMI not scheduled yet)."""
    if vm is not None:
        vm = _obj(vm, "a VirtualMachine")
    template = as_map(as_map((vm or {}).get("spec")).get("template"))
    source: Obj = _obj(vmi, "a VMI") if vmi is not None else template
    spec = as_map(source.get("spec"))
    extra: dict[str, str] = {}
    if vmi is not None:
        status = as_map(vmi.get("status"))
        node = as_name(status.get("nodeName"))
        phase = as_text(status.get("phase") or "")
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
        extra["uid"] = as_text(as_map(vmi.get("metadata")).get("uid", ""))
        owner = _owner_vm(vmi)
        extra["owner"] = f"VirtualMachine/{owner}" if owner else "none (bare VMI)"
        migratable = condition(vmi, "LiveMigratable")
        state = as_map(status.get("migrationState"))
        if state.get("migrationUid"):
            # failed first: KubeVirt up to 1.5 and from 1.9 on set completed with it
            outcome = (
                "failed"
                if state.get("failed") or state.get("abortStatus") == "Succeeded"
                else "completed"
                if state.get("completed")
                else "active"
            )
            extra["last_migration"] = f"{as_text(state.get('migrationUid'))} {outcome}"
    else:
        node = node_pin(spec, nodes_by_hostname)
        power = PowerState.STOPPED
        migratable = None
        extra["phase"] = "Stopped"
        extra["owner"] = f"VirtualMachine/{name}"
    if not node:
        return None
    if vm is not None:
        vspec = as_map(vm.get("spec"))
        extra["run_strategy"] = as_text(
            vspec.get("runStrategy") or ("Always" if vspec.get("running") else "Halted")
        )
    eviction = spec.get("evictionStrategy")
    if eviction:
        extra["eviction_strategy"] = as_text(eviction)
    selector = as_map(spec.get("nodeSelector"))
    if selector:
        pairs = sorted((as_text(k), as_text(v)) for k, v in selector.items())
        extra["node_selector"] = ",".join(f"{k}={v}" for k, v in pairs)
    live, why = True, None
    if migratable is not None:
        live = migratable.get("status") == "True"
        extra["live_migratable"] = as_text(migratable.get("status"))
        if not live:
            reason = as_text(migratable.get("reason") or "")
            message = as_text(migratable.get("message") or "")
            why = f"{reason}: {message}" if reason and message else reason or message or None
            extra["live_migratable_reason"] = reason
    return VMInfo(
        id=name,
        name=name,
        host=node,
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
        for expr in _maps(exprs):
            # An unhashable key or a string of "values" would make a TypeError of get()/in.
            key, op = as_name(expr.get("key")), expr.get("operator")
            values = _list(expr.get("values"))
            value = source.get(key) if key is not None else None
            ok = {
                "In": value in values,
                "NotIn": value not in values,
                "Exists": key in source,
                "DoesNotExist": key not in source,
                "Gt": value is not None and values and _int(value) > _int(values[0]),
                "Lt": value is not None and values and _int(value) < _int(values[0]),
            }.get(as_text(op), False)
            if not ok:
                return False
    return True


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
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
    name = as_text(as_map(_obj(node, "a Node").get("metadata")).get("name"))
    labels = _labels(node)
    out: list[str] = []
    selector = as_map(_obj(spec, "a VMI spec").get("nodeSelector"))
    for key, want in sorted(selector.items(), key=lambda kv: as_text(kv[0])):
        if labels.get(key) != want:
            have = labels.get(key)
            out.append(
                f"the VMI's nodeSelector {as_text(key)}={as_text(want)} excludes it"
                + (f" (it has {as_text(key)}={have})" if have is not None else "")
            )
    terms = _required_terms(spec)
    if terms and not any(_term_ok(labels, name, t) for t in terms):
        out.append("the VMI's required node affinity excludes it")
    model = as_map(as_map(spec.get("domain")).get("cpu")).get("model")
    if (
        model
        and model not in ("host-model", "host-passthrough")
        and labels.get(f"cpu-model.node.kubevirt.io/{as_text(model)}") != "true"
    ):
        out.append(f"it does not offer the VMI's CPU model {as_text(model)}")
    tolerations = _maps(spec.get("tolerations"))
    for taint in _maps(as_map(node.get("spec")).get("taints")):
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerated(
            tolerations, taint
        ):
            if taint.get("key") == "node.kubernetes.io/unschedulable":
                continue  # reported as "cordoned" by the caller
            out.append(
                f"taint {as_text(taint.get('key'))}:{as_text(taint.get('effect'))} is not tolerated"
            )
    return out
