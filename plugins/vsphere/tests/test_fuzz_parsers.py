"""Fuzzing what vSphere sends back: faults (pyVmomi objects, and stand-ins with odd
attributes) and property-collector values read as inventory. Whatever arrives, only vmmove
errors escape, and valid values still read right. No simulator needed."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import vmmove
from vmmove.errors import (
    AuthenticationFailed,
    Conflict,
    ConnectionFailed,
    NotFound,
    PrecheckFailed,
    ReservationRefused,
)
from vmmove.model import HostInfo, HostState, MiB, PowerState, Storage, VMInfo
from vmmove.testing.fuzz import anything, only_vmmove_errors
from vmmove_vsphere import faults
from vmmove_vsphere.inventory import (
    HOST_PROPS,
    VM_PROPS,
    Topology,
    build_topology,
    host_info,
    listed,
    vm_info,
    vm_usage,
)

pyvmomi = pytest.importorskip("pyVmomi")
vim, vmodl = pyvmomi.vim, pyvmomi.vmodl

FUZZ = settings(max_examples=200, deadline=None)


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text here")


odd = st.one_of(
    anything,
    st.sampled_from([-1, 2**70, float("nan"), float("inf"), True, "", "x" * 5000, "\u2603"]),
    st.builds(_Unprintable),
    st.builds(SimpleNamespace, _moId=anything),  # a reference whose id is not a string
    st.builds(SimpleNamespace, message=anything),
)


# ---- faults ----------------------------------------------------------------------------------


def _check_fault_readers(fault: Any) -> None:
    names = faults.fault_names(fault)
    assert names
    assert all(isinstance(n, str) for n in names)
    text = faults.fault_text(fault)
    assert isinstance(text, str)
    assert text.startswith(names[0])
    assert len(text) < 1200  # quoted, not echoed at length
    p = faults.problem(fault, severity="warning", where="esx-1")
    assert (p.code, p.severity) == (names[0], "warning")
    assert p.message == f"esx-1: {text}"
    error = faults.refusal(fault, "vSphere refused to move vm-1", "esx-2")
    assert isinstance(error, vmmove.VMMoveError)


@FUZZ
@given(
    msg=odd,
    messages=odd | st.lists(st.builds(SimpleNamespace, message=odd), max_size=3),
    wsdl=st.none() | anything | st.builds(_Unprintable),  # names are pyVmomi's: never huge
)
@example(msg="m", messages=5, wsdl=None)  # TypeError: int is not iterable
@example(msg=10**5000, messages=None, wsdl=None)  # ValueError from str() of a huge int
@example(msg=_Unprintable(), messages=[SimpleNamespace(message=_Unprintable())], wsdl=None)
def test_stand_in_faults(msg: Any, messages: Any, wsdl: Any) -> None:
    cls = type("Odd", (Exception,), {} if wsdl is None else {"_wsdlName": wsdl})
    fault = cls()
    fault.msg = msg
    fault.faultMessage = messages
    _check_fault_readers(fault)
    _check_fault_readers(SimpleNamespace(msg=msg, faultMessage=messages))


@FUZZ
@given(fault=odd | st.builds(object))
def test_things_that_are_no_fault(fault: Any) -> None:
    _check_fault_readers(fault)


#: Real pyVmomi faults and where each belongs in vmmove's tree.
KINDS: list[tuple[Any, type[vmmove.VMMoveError]]] = [
    (vim.fault.InsufficientMemoryResourcesFault, ReservationRefused),
    (vim.fault.InsufficientCpuResourcesFault, ReservationRefused),
    (vim.fault.TaskInProgress, Conflict),
    (vim.fault.ConcurrentAccess, Conflict),
    (vmodl.fault.ManagedObjectNotFound, NotFound),
    (vim.fault.InvalidLogin, AuthenticationFailed),
    (vim.fault.InvalidHostState, PrecheckFailed),
    (vim.fault.MigrationFault, PrecheckFailed),
    (vmodl.fault.InvalidArgument, PrecheckFailed),
]
texts = st.text(max_size=40) | st.sampled_from(["", " ", "x" * 3000, "\u00e9\u2603\U0001f600"])


@FUZZ
@given(
    kind=st.sampled_from(KINDS),
    msg=st.none() | texts,
    messages=st.lists(st.tuples(texts, st.none() | texts), max_size=3),
)
def test_real_pyvmomi_faults(
    kind: tuple[Any, type[vmmove.VMMoveError]],
    msg: str | None,
    messages: list[tuple[str, str | None]],
) -> None:
    cls, error_type = kind
    fault = cls(
        msg=msg,
        faultMessage=[vmodl.LocalizableMessage(key=k, message=m) for k, m in messages],
    )
    _check_fault_readers(fault)
    name = cls._wsdlName
    assert faults.fault_names(fault)[0] == name
    assert type(faults.refusal(fault, "refused", "esx-2")) is error_type
    text = faults.fault_text(fault)
    clean = (msg or "").strip()
    if clean and len(clean) <= 500:
        assert text.startswith(f"{name}: {clean}")
    if not clean and not any((m or "").strip() for _, m in messages):
        assert text == name


# ---- inventory -------------------------------------------------------------------------------


def _sane_host(h: HostInfo) -> None:
    assert h.state in HostState
    for value in (h.capacity.cpus, h.capacity.memory):
        assert isinstance(value, int)
        assert value >= 0
    assert isinstance(h.name, str)
    assert isinstance(h.cpu.model, str)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in h.extra.items())


def _sane_vm(v: VMInfo) -> None:
    assert isinstance(v.host, str)
    assert isinstance(v.name, str)
    assert v.power in PowerState
    assert v.storage in Storage
    for value in (v.memory, v.vcpus):
        assert isinstance(value, int)
        assert value >= 0
    assert all(isinstance(k, str) and isinstance(val, str) for k, val in v.extra.items())


host_props = st.dictionaries(st.sampled_from(HOST_PROPS) | st.text(max_size=8), odd, max_size=6)
vm_props = st.dictionaries(st.sampled_from(VM_PROPS) | st.text(max_size=8), odd, max_size=6)


@FUZZ
@given(
    hosts=st.dictionaries(st.text(max_size=6), host_props | odd, max_size=3),
    compute=st.dictionaries(st.text(max_size=6), host_props | odd, max_size=2),
    stores=st.dictionaries(st.text(max_size=6), host_props | odd, max_size=2),
    props=vm_props | odd,
)
@example(hosts={"h": {"datastore": 5}}, compute={}, stores={}, props={})  # TypeError
@example(hosts={}, compute={}, stores={}, props={"name": _Unprintable()})  # its RuntimeError
@example(hosts={}, compute={}, stores={}, props={"datastore": "ab"})  # AttributeError: _moId
@example(
    hosts={"h": {"summary.hardware.memorySize": float("nan")}}, compute={}, stores={}, props={}
)  # ValueError: int(NaN)
@example(
    hosts={},
    compute={},
    stores={},
    props={"runtime.powerState": "poweredOn", "summary.config.numCpu": "x"},
)  # ValueError: int("x")
def test_junk_properties(
    hosts: dict[str, Any], compute: dict[str, Any], stores: dict[str, Any], props: Any
) -> None:
    topo = only_vmmove_errors(build_topology, hosts, compute, stores, {})
    if topo is None:
        topo = Topology()
    for hid, hprops in topo.hosts.items():
        h = only_vmmove_errors(host_info, hid, hprops, topo, (0, 0))
        if h is not None:
            _sane_host(h)
    v = only_vmmove_errors(vm_info, "vm-1", props, topo)
    if v is not None:
        _sane_vm(v)
    usage = only_vmmove_errors(vm_usage, props)
    assert usage is None or all(isinstance(n, int) and n >= 0 for n in usage)
    only_vmmove_errors(listed, props)


@st.composite
def estates(draw: st.DrawFn) -> dict[str, Any]:
    """A valid datacenter: hosts in compute resources, datastores mounted by some hosts."""
    n_hosts, n_stores = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stores = {f"datastore-{i}": {"name": f"ds{i}"} for i in range(n_stores)}
    cluster = {"domain-c1": {"name": "C1", "resourcePool": vim.ResourcePool("resgroup-1")}}
    hosts = {}
    for i in range(n_hosts):
        mounted = draw(st.lists(st.sampled_from(sorted(stores)), unique=True))
        hosts[f"host-{i}"] = {
            "name": f"esx-{i}",
            "parent": vim.ClusterComputeResource("domain-c1"),
            "runtime.connectionState": draw(st.sampled_from(["connected", "disconnected"])),
            "runtime.inMaintenanceMode": draw(st.booleans()),
            "runtime.powerState": "poweredOn",
            "summary.hardware.memorySize": draw(st.integers(0, 2**50)),
            "summary.hardware.numCpuThreads": draw(st.integers(0, 1024)),
            "summary.hardware.cpuModel": draw(st.text(max_size=20)),
            "datastore": [vim.Datastore(d) for d in mounted],
        }
    return {"hosts": hosts, "compute": cluster, "stores": stores}


@FUZZ
@given(estate=estates(), data=st.data())
def test_valid_properties_read_right(estate: dict[str, Any], data: st.DataObject) -> None:
    power = data.draw(st.sampled_from(["poweredOn", "poweredOff", "suspended"]))
    memory_mb, cpus = data.draw(st.integers(0, 2**30)), data.draw(st.integers(0, 768))
    connection = data.draw(st.sampled_from(["connected", "orphaned", "inaccessible"]))
    hosts = estate["hosts"]
    topo = build_topology(hosts, estate["compute"], estate["stores"], {"domain-c1": True})
    mounts: dict[str, int] = {}
    for props in hosts.values():
        for ds in props["datastore"]:
            mounts[ds._moId] = mounts.get(ds._moId, 0) + 1
    assert topo.mounts == mounts
    for hid, props in hosts.items():
        h = host_info(hid, props, topo, (2, 3 * MiB))
        _sane_host(h)
        assert (h.name, h.cluster) == (props["name"], "C1")
        assert h.capacity.cpus == props["summary.hardware.numCpuThreads"]
        assert h.capacity.memory == props["summary.hardware.memorySize"]
        assert (h.allocated.cpus, h.allocated.memory) == (2, 3 * MiB)
        if props["runtime.connectionState"] != "connected":
            assert h.state is HostState.DOWN
        elif props["runtime.inMaintenanceMode"]:
            assert h.state is HostState.MAINTENANCE
        else:
            assert h.state is HostState.UP
    host = data.draw(st.sampled_from(sorted(hosts)))
    used = data.draw(st.lists(st.sampled_from(sorted(estate["stores"])), unique=True))
    props = {
        "name": "web-1",
        "runtime.host": vim.HostSystem(host),
        "runtime.powerState": power,
        "runtime.connectionState": connection,
        "summary.config.memorySizeMB": memory_mb,
        "summary.config.numCpu": cpus,
        "summary.config.template": False,
        "datastore": [vim.Datastore(d) for d in used],
        "resourcePool": vim.ResourcePool("resgroup-1"),
    }
    assert listed(props)
    v = vm_info("vm-1", props, topo)
    _sane_vm(v)
    assert (v.name, v.host, v.memory, v.vcpus) == ("web-1", host, memory_mb * MiB, cpus)
    expected_power = {"poweredOn": "running", "suspended": "paused", "poweredOff": "stopped"}
    assert v.power.value == expected_power[power]
    if not used:
        assert v.storage is Storage.NONE
    elif all(mounts.get(d, 0) > 1 for d in used):
        assert v.storage is Storage.SHARED
    else:
        assert v.storage is Storage.LOCAL
    assert v.live_migratable is (connection == "connected")
    assert vm_usage(props) == ((cpus, memory_mb * MiB) if power == "poweredOn" else (0, 0))


def test_properties_that_are_no_mapping_are_connection_failures() -> None:
    with pytest.raises(ConnectionFailed):
        vm_info("vm-1", ["not", "properties"], Topology())  # type: ignore[arg-type]
    with pytest.raises(ConnectionFailed):
        host_info("host-1", None, Topology(), (0, 0))  # type: ignore[arg-type]
    with pytest.raises(ConnectionFailed):
        build_topology({"host-1": 5}, {}, {}, {})  # type: ignore[dict-item]
