"""Fuzzing what the API server sends back: Nodes, VMIs, VMs and migration objects (JSON
dicts) read as vmmove inventory and job states. Whatever arrives, only vmmove errors escape
(nonsense is ConnectionFailed), and valid objects still read right."""

from __future__ import annotations

import copy
import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vmmove import Phase
from vmmove.backend import JobStatus
from vmmove.errors import ConnectionFailed
from vmmove.model import HostInfo, HostState, PowerState, VMInfo
from vmmove.testing.fuzz import anything, only_vmmove_errors
from vmmove_kubevirt.objects import (
    HOSTNAME_LABEL,
    condition,
    host_info,
    node_pin,
    node_state,
    parse_quantity,
    scheduling_problems,
    selector_keys,
    vm_info,
    vmi_memory,
    vmi_vcpus,
)
from vmmove_kubevirt.phases import VMIM_PHASES, live_status

FUZZ = settings(max_examples=200, deadline=None)

#: Values a broken or hostile API server might put anywhere.
odd = st.one_of(
    anything,
    st.sampled_from([
        -1, 0, 2**70, -(2**70), float("nan"), float("inf"), -float("inf"), True, False, "",
        "-5Gi", "1e999999999", "1e999999999Ei", "1.2.3", ".", "Ki", "\u2603" * 3,
        "\uff11\uff12", [], {}, [None], [[]], {"": None}, "abc",
    ]),
)  # fmt: skip


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out += _paths(value, (*prefix, i))
    return out


@st.composite
def perturbed(draw: st.DrawFn, objects: st.SearchStrategy[Any]) -> Any:
    """A valid object with one to four fields dropped or replaced by odd values."""
    obj = copy.deepcopy(draw(objects))
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(obj)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            # A copy: sampled_from hands out the same [None] every time, and a later round
            # may change what it put in.
            parent[path[-1]] = copy.deepcopy(draw(odd))
    return obj


# ---- quantities ------------------------------------------------------------------------------

#: What each suffix is worth, written out independently of the parser.
SUFFIXES: dict[str, int | Decimal] = {
    "": 1,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "m": Decimal("0.001"),
}


@FUZZ
@given(value=odd | st.text(max_size=30) | st.from_regex(r"[+-]?[0-9.eE+-]{0,12}[a-zA-Z]{0,3}"))
@example(value="abc")  # ValueError escaped
@example(value=True)  # decimal.InvalidOperation escaped
@example(value="1e999999999Ki")  # decimal.Overflow escaped
@example(value=float("nan"))  # returned Decimal('NaN'): int() of it raised later
def test_junk_quantities(value: Any) -> None:
    got = only_vmmove_errors(parse_quantity, value)
    if got is not None:
        assert got.is_finite()
        assert abs(got) <= 2**64


@FUZZ
@given(
    whole=st.integers(0, 10**6),
    fraction=st.none() | st.integers(0, 999),
    suffix=st.sampled_from(sorted(SUFFIXES)),
    padded=st.booleans(),
)
def test_valid_quantities(whole: int, fraction: int | None, suffix: str, padded: bool) -> None:
    number = Decimal(whole) if fraction is None else Decimal(f"{whole}.{fraction:03d}")
    text = f"{number}{suffix}"
    got = parse_quantity(f" {text} " if padded else text)
    assert got == number * SUFFIXES[suffix]


# ---- nodes -----------------------------------------------------------------------------------

names = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12)


@st.composite
def vmis(draw: st.DrawFn, node: str | None = None) -> dict[str, Any]:
    """A running VMI: guest memory in Mi, and a CPU topology or a CPU request."""
    memory_mi = draw(st.integers(1, 2**20))
    cpu: dict[str, Any] = {}
    resources: dict[str, Any] = {}
    if draw(st.booleans()):
        cpu = {k: draw(st.integers(1, 8)) for k in ("cores", "sockets", "threads")}
        vcpus = cpu["cores"] * cpu["sockets"] * cpu["threads"]
    else:
        millis = draw(st.integers(1, 64000))
        resources = {"requests": {"cpu": f"{millis}m"}}
        vcpus = math.ceil(millis / 1000)
    return {
        "metadata": {"name": draw(names), "uid": "u", "_vcpus": vcpus, "_memory": memory_mi << 20},
        "spec": {
            "domain": {"cpu": cpu, "memory": {"guest": f"{memory_mi}Mi"}, "resources": resources}
        },
        "status": {"phase": "Running", "nodeName": node or draw(names)},
    }


@st.composite
def nodes(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(names)
    labels = {HOSTNAME_LABEL: name}
    features = draw(st.lists(st.sampled_from(["avx2", "x2apic", "ssse3", "ñ"]), unique=True))
    for f in features:
        labels[f"cpu-feature.node.kubevirt.io/{f}"] = "true"
    model = draw(st.sampled_from(["", "EPYC", "Skylake-Server"]))
    if model:
        labels[f"host-model-cpu.node.kubevirt.io/{model}"] = "true"
    if draw(st.booleans()):
        labels["kubevirt.io/schedulable"] = draw(st.sampled_from(["true", "false"]))
    ready = draw(st.sampled_from([None, "True", "False", "Unknown"]))
    conditions = [] if ready is None else [{"type": "Ready", "status": ready}]
    spec: dict[str, Any] = {}
    if draw(st.booleans()):
        spec["unschedulable"] = True
    millis = draw(st.integers(0, 10**6))
    memory_ki = draw(st.integers(0, 2**40))
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
        "status": {
            "allocatable": {"cpu": f"{millis}m", "memory": f"{memory_ki}Ki"},
            "conditions": conditions,
            "nodeInfo": {"kubeletVersion": "v1.31.0"},
        },
    }


def _sane_host(h: HostInfo) -> None:
    assert isinstance(h.id, str)
    assert h.id
    assert h.state in HostState
    for cap in (h.capacity, h.allocated):
        assert isinstance(cap.cpus, int)
        assert cap.cpus >= 0
        assert isinstance(cap.memory, int)
        assert cap.memory >= 0
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in h.extra.items())
    assert all(isinstance(f, str) for f in h.cpu.features)


@FUZZ
@given(node=odd, vmi_list=st.lists(odd, max_size=3), keys=st.lists(st.text(max_size=8)))
@example(node={"metadata": {"name": "n"}, "status": [1]}, vmi_list=[], keys=[])  # AttributeError
@example(
    node={"metadata": {"name": "n"}, "status": {"allocatable": {"cpu": "x"}}}, vmi_list=[], keys=[]
)  # ValueError escaped
@example(
    node={"metadata": {"name": "n"}, "status": {"allocatable": {"cpu": float("nan")}}},
    vmi_list=[],
    keys=[],
)  # ValueError: cannot convert NaN
@example(node={"spec": "x"}, vmi_list=[], keys=[])  # AttributeError in node_state
def test_junk_nodes(node: Any, vmi_list: list[Any], keys: list[str]) -> None:
    h = only_vmmove_errors(host_info, node, vmi_list, "cluster", keys)
    if h is not None:
        _sane_host(h)
    state = only_vmmove_errors(node_state, node)
    assert state is None or state in HostState


@FUZZ
@given(node=perturbed(nodes()), vmi_list=st.lists(perturbed(vmis()), max_size=3))
def test_perturbed_nodes(node: Any, vmi_list: list[Any]) -> None:
    h = only_vmmove_errors(host_info, node, vmi_list, "cluster", ["a", HOSTNAME_LABEL])
    if h is not None:
        _sane_host(h)


@FUZZ
@given(data=st.data(), node=nodes())
def test_valid_nodes_read_right(data: st.DataObject, node: dict[str, Any]) -> None:
    name = node["metadata"]["name"]
    mine = data.draw(st.lists(vmis(name), max_size=3))
    others = data.draw(st.lists(vmis(), max_size=2))
    h = host_info(node, mine + others, "cluster")
    _sane_host(h)
    alloc = node["status"]["allocatable"]
    assert (h.id, h.name, h.cluster) == (name, name, "cluster")
    assert h.capacity.cpus == int(alloc["cpu"][:-1]) // 1000
    assert h.capacity.memory == int(alloc["memory"][:-2]) << 10
    ours = [v for v in mine + others if v["status"]["nodeName"] == name]
    assert h.allocated.cpus == sum(v["metadata"]["_vcpus"] for v in ours)
    assert h.allocated.memory == sum(v["metadata"]["_memory"] for v in ours)
    labels = node["metadata"]["labels"]
    ready = (condition(node, "Ready") or {}).get("status", "True")
    if ready != "True":
        assert h.state is HostState.DOWN
    elif node["spec"].get("unschedulable") or labels.get("kubevirt.io/schedulable") == "false":
        assert h.state is HostState.MAINTENANCE
    else:
        assert h.state is HostState.UP
    assert h.cpu.features == {
        k.rsplit("/", 1)[1] for k in labels if k.startswith("cpu-feature.node.kubevirt.io/")
    }


# ---- VMIs and VMs ----------------------------------------------------------------------------


def _sane_vm(v: VMInfo) -> None:
    assert isinstance(v.host, str)
    assert v.host
    assert v.power in PowerState
    assert isinstance(v.memory, int)
    assert v.memory >= 0
    assert isinstance(v.vcpus, int)
    assert v.vcpus >= 1
    assert v.not_migratable_reason is None or isinstance(v.not_migratable_reason, str)
    assert all(isinstance(k, str) and isinstance(val, str) for k, val in v.extra.items())


@FUZZ
@given(vmi=st.none() | odd, vm=st.none() | odd, hostnames=st.dictionaries(names, names))
@example(vmi={"status": {"conditions": "ab", "nodeName": "n"}}, vm=None, hostnames={})
@example(
    vmi={"spec": {"domain": {"cpu": {"cores": "x"}}}, "status": {"nodeName": "n"}},
    vm=None,
    hostnames={},
)  # ValueError escaped
@example(
    vmi={"spec": {"domain": {"cpu": {"cores": {"a": 1}}}}, "status": {"nodeName": "n"}},
    vm=None,
    hostnames={},
)  # TypeError escaped
@example(
    vmi={
        "spec": {"domain": {"resources": {"requests": {"cpu": "x"}}}},
        "status": {"nodeName": "n"},
    },
    vm=None,
    hostnames={},
)
@example(
    vmi={"spec": {"domain": {"memory": {"guest": "1e999999999Gi"}}}, "status": {"nodeName": "n"}},
    vm=None,
    hostnames={},
)  # decimal.Overflow
def test_junk_vms(vmi: Any, vm: Any, hostnames: dict[str, str]) -> None:
    v = only_vmmove_errors(vm_info, "vm", vmi, vm, hostnames)
    if v is not None:
        _sane_vm(v)
    for fn in (vmi_memory, vmi_vcpus, node_state):
        only_vmmove_errors(fn, vmi)


@FUZZ
@given(vmi=perturbed(vmis()), vm=st.none() | perturbed(st.just({"spec": {"running": True}})))
def test_perturbed_vms(vmi: Any, vm: Any) -> None:
    v = only_vmmove_errors(vm_info, "vm", vmi, vm, {})
    if v is not None:
        _sane_vm(v)
    memory = only_vmmove_errors(vmi_memory, vmi)
    assert memory is None or memory >= 0
    vcpus = only_vmmove_errors(vmi_vcpus, vmi)
    assert vcpus is None or vcpus >= 1


@FUZZ
@given(
    vmi=vmis(),
    paused=st.booleans(),
    migratable=st.sampled_from([None, "True", "False"]),
    reason=st.text(max_size=10),
)
def test_valid_vmis_read_right(
    vmi: dict[str, Any], paused: bool, migratable: str | None, reason: str
) -> None:
    conditions = [{"type": "Paused", "status": "True"}] if paused else []
    if migratable is not None:
        conditions.append({"type": "LiveMigratable", "status": migratable, "reason": reason})
    vmi["status"]["conditions"] = conditions
    v = vm_info("vm", vmi, None, {})
    assert v is not None
    _sane_vm(v)
    assert v.host == vmi["status"]["nodeName"]
    assert v.power is (PowerState.PAUSED if paused else PowerState.RUNNING)
    assert (v.memory, v.vcpus) == (vmi["metadata"]["_memory"], vmi["metadata"]["_vcpus"])
    assert v.live_migratable is (migratable != "False")
    if migratable == "False":
        assert v.not_migratable_reason == (reason or None)


# ---- pins, selectors, scheduling -------------------------------------------------------------


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """A VMI spec with a nodeSelector, a required node affinity, a CPU model, tolerations."""
    spec: dict[str, Any] = {}
    if draw(st.booleans()):
        spec["nodeSelector"] = draw(
            st.dictionaries(st.sampled_from(["zone", "gpu", HOSTNAME_LABEL]), names, max_size=2)
        )
    if draw(st.booleans()):
        key = draw(st.sampled_from([HOSTNAME_LABEL, "zone"]))
        field = draw(st.sampled_from(["matchExpressions", "matchFields"]))
        op = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]))
        values = draw(st.lists(names | st.integers(-5, 5).map(str), min_size=1, max_size=2))
        term = {
            field: [
                {
                    "key": key if field == "matchExpressions" else "metadata.name",
                    "operator": op,
                    "values": values,
                }
            ]
        }
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
            }
        }
    if draw(st.booleans()):
        spec["domain"] = {"cpu": {"model": draw(st.sampled_from(["host-model", "EPYC", "x"]))}}
    if draw(st.booleans()):
        spec["tolerations"] = [{"key": "dedicated", "operator": "Exists"}]
    return spec


@FUZZ
@given(spec=odd | perturbed(specs()), node=odd | perturbed(nodes()), hostnames=st.just({"a": "b"}))
@example(
    spec={
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": 3}]}
                    ]
                }
            }
        }
    },
    node={},
    hostnames={},
)  # TypeError: len() of an int
@example(
    spec={
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": [1], "operator": "In"}]}]
                }
            }
        }
    },
    node={},
    hostnames={},
)  # TypeError: unhashable list
@example(
    spec={
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "a", "operator": "In", "values": "abc"}]}
                    ]
                }
            }
        }
    },
    node={},
    hostnames={},
)  # TypeError: 'in <string>' requires string
@example(
    spec={
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "a", "operator": "Gt", "values": [float("inf")]}
                            ]
                        }
                    ]
                }
            }
        }
    },
    node={"metadata": {"labels": {"a": "1"}}},
    hostnames={},
)  # OverflowError
@example(spec={"nodeSelector": 1}, node={}, hostnames={})  # TypeError in selector_keys
def test_junk_specs(spec: Any, node: Any, hostnames: dict[str, str]) -> None:
    pin = only_vmmove_errors(node_pin, spec, hostnames)
    assert pin is None or isinstance(pin, str)
    keys = only_vmmove_errors(selector_keys, [spec])
    assert keys is None or all(isinstance(k, str) for k in keys)
    problems = only_vmmove_errors(scheduling_problems, spec, node)
    assert problems is None or all(isinstance(p, str) for p in problems)


@FUZZ
@given(spec=specs(), node=nodes(), hostnames=st.dictionaries(names, names, max_size=2))
def test_valid_specs_read_right(
    spec: dict[str, Any], node: dict[str, Any], hostnames: dict[str, str]
) -> None:
    selector = spec.get("nodeSelector", {})
    pin = node_pin(spec, hostnames)
    if HOSTNAME_LABEL in selector:
        assert pin == hostnames.get(selector[HOSTNAME_LABEL], selector[HOSTNAME_LABEL])
    assert selector_keys([spec]) == set(selector) - {HOSTNAME_LABEL}
    problems = scheduling_problems(spec, node)
    labels = node["metadata"]["labels"]
    for key, want in selector.items():
        refused = any(p.startswith(f"the VMI's nodeSelector {key}={want} ") for p in problems)
        assert refused is (labels.get(key) != want)


# ---- migration objects -----------------------------------------------------------------------

UID = "u-1"


@st.composite
def migration_states(draw: st.DrawFn) -> dict[str, Any]:
    state: dict[str, Any] = {"migrationUid": draw(st.sampled_from([UID, "other"]))}
    for key, values in (
        ("mode", st.sampled_from(["PreCopy", "PostCopy"])),
        ("completed", st.booleans()),
        ("failed", st.booleans()),
        ("abortStatus", st.sampled_from(["Aborting", "Succeeded", "Failed"])),
        ("targetNode", names),
        ("sourceNode", names),
        ("failureReason", st.text(max_size=10)),
    ):
        if draw(st.booleans()):
            state[key] = draw(values)
    return state


native_phases = st.sampled_from(sorted(VMIM_PHASES)) | st.text(max_size=10)
vmims = st.builds(
    lambda phase, deleting: {
        "metadata": {"name": "m", "uid": UID, **({"deletionTimestamp": "t"} if deleting else {})},
        "status": {"phase": phase, "phaseTransitionTimestamps": [{"phase": "Running"}]},
    },
    native_phases,
    st.booleans(),
)
live_vmis = st.builds(
    lambda node, phase, state: {
        "status": {"phase": phase, "nodeName": node, "migrationState": state}
    },
    names,
    st.sampled_from(["Running", "Failed", "Scheduling"]),
    migration_states(),
)


def _sane_status(s: JobStatus) -> None:
    assert s.phase in Phase
    assert isinstance(s.native, str)
    assert s.vm_host is None or (isinstance(s.vm_host, str) and s.vm_host)
    assert s.error is None or isinstance(s.error, str)
    assert s.percent is None  # KubeVirt reports no bytes: no made-up percentage


@FUZZ
@given(
    vmim=st.none() | odd | perturbed(vmims),
    vmi=st.none() | odd | perturbed(live_vmis),
    aborted=st.booleans(),
)
@example(vmim={"status": [1]}, vmi=None, aborted=False)  # AttributeError escaped
@example(vmim=None, vmi={"status": {"migrationState": "x"}}, aborted=False)  # AttributeError
@example(
    vmim={"status": {"phase": "Failed", "phaseTransitionTimestamps": [1]}}, vmi=None, aborted=False
)  # AttributeError in _last_phase
@example(
    vmim={"status": {"phase": "Succeeded"}},
    vmi={"status": {"nodeName": ["n"], "migrationState": {"migrationUid": UID}}},
    aborted=False,
)  # a list as vm_host
def test_junk_migration_objects(vmim: Any, vmi: Any, aborted: bool) -> None:
    s = only_vmmove_errors(
        live_status, vmim, vmi, uid=UID, abort_requested=aborted, target="node-b"
    )
    if s is not None:
        _sane_status(s)


@FUZZ
@given(vmim=vmims, node=names, aborted=st.booleans())
def test_valid_migration_objects_read_right(vmim: dict[str, Any], node: str, aborted: bool) -> None:
    vmi = {"status": {"phase": "Running", "nodeName": node}}  # no migrationState handed over
    s = live_status(vmim, vmi, uid=UID, abort_requested=aborted, target="node-b")
    _sane_status(s)
    native = vmim["status"]["phase"]
    if native not in VMIM_PHASES:
        # Kept as text, read from the VMI (nothing handed over: still requesting), no end.
        assert s.phase is Phase.REQUESTING
        assert "unknown to vmmove" in s.native
        assert s.error is None
    elif VMIM_PHASES[native] is Phase.FAILED and aborted:
        assert s.phase is Phase.CANCELLED
    else:
        assert s.phase is VMIM_PHASES[native]
    if s.phase in (Phase.COMPLETED, Phase.CANCELLED):
        assert s.vm_host == node  # no migrationState: where the VMI runs


def test_whole_objects_of_the_wrong_type_are_connection_failures() -> None:
    with pytest.raises(ConnectionFailed):
        live_status([], None, uid=UID, abort_requested=False, target="t")
    with pytest.raises(ConnectionFailed):
        vm_info("vm", "a string", None, {})
    with pytest.raises(ConnectionFailed):
        host_info({"metadata": {}}, [], "c")  # a Node without a name has no id
