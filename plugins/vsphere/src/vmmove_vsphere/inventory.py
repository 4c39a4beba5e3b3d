"""Inventory: hosts, clusters, datastores and VMs in one property-collector round trip.

Plain functions from property values to vmmove's :class:`HostInfo` / :class:`VMInfo`, so
the mapping is readable in one place:

- host ``state``: not connected or powered off/standby -> ``down``; in maintenance mode ->
  ``maintenance``; else ``up``. ``capacity``: logical CPUs and memory; ``allocated``: the
  vCPUs and memory of the powered-on VMs it runs (what vSphere admits against).
- host ``cluster``: the name of its compute resource (a cluster, or the standalone host's own).
- VM ``power``: poweredOn -> running, suspended -> paused, poweredOff -> stopped.
- VM ``storage``: ``shared`` when every datastore it uses is mounted on more than one host,
  ``local`` otherwise, ``none`` without datastores. Templates are not listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vmmove.errors import ConnectionFailed
from vmmove.model import (
    Capacity,
    CpuInfo,
    HostInfo,
    HostState,
    MiB,
    PowerState,
    Storage,
    VMInfo,
)

__all__ = [
    "HOST_PROPS",
    "VM_PROPS",
    "Topology",
    "host_info",
    "vm_info",
]

HOST_PROPS = [
    "name",
    "parent",
    "runtime.connectionState",
    "runtime.inMaintenanceMode",
    "runtime.powerState",
    "summary.hardware.memorySize",
    "summary.hardware.numCpuThreads",
    "summary.hardware.cpuModel",
    "datastore",
]
VM_PROPS = [
    "name",
    "runtime.host",
    "runtime.powerState",
    "runtime.connectionState",
    "summary.config.memorySizeMB",
    "summary.config.numCpu",
    "summary.config.template",
    "datastore",
    "resourcePool",
]
COMPUTE_PROPS = ["name", "resourcePool"]
DATASTORE_PROPS = ["name"]

_POWER = {
    "poweredOn": PowerState.RUNNING,
    "suspended": PowerState.PAUSED,
    "poweredOff": PowerState.STOPPED,
}


def moid(obj: Any) -> str:
    """A managed object's id (``host-21``, ``vm-42``); ``""`` for ``None`` and for anything
    that is no managed object reference (a property vSphere left odd reads as unset)."""
    ident = getattr(obj, "_moId", None)
    return ident if isinstance(ident, str) else ""


def _refs(value: Any) -> list[Any]:
    """A property holding managed object references: pyVmomi arrays are lists; anything
    else (a number, a string) holds none."""
    return list(value) if isinstance(value, list | tuple) else []


_COUNT_LIMIT = 1 << 63  # vSphere's longs; beyond that a figure is nonsense, not a size


def _count(value: Any) -> int:
    """A CPU, memory or MB figure: a non-negative int, else 0 as when unset (int() would
    raise on "x", NaN, infinity or a dict, and take a string or float it should not)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _COUNT_LIMIT:
        return int(value)
    return 0


def _text(value: Any, default: str = "") -> str:
    """A property as text; ``default`` when unset. str() can raise: ValueError for a
    5000-digit int, anything at all from an odd object's __str__."""
    if value is None:
        return default
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception:  # whatever it is, it has no text
        return f"<{type(value).__name__}>"


def _props(props: Any, what: str) -> Mapping[str, Any]:
    """An object's property values: without them there is nothing to read."""
    if not isinstance(props, Mapping):
        raise ConnectionFailed(f"vSphere sent the properties of {what} as {type(props).__name__}")
    return props


@dataclass(frozen=True, kw_only=True)
class Compute:
    id: str
    name: str
    pool: str  # root resource pool id
    cluster: bool


@dataclass(kw_only=True)
class Topology:
    """What rarely changes: hosts -> compute resources -> root pools, datastores."""

    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)  # host id -> properties
    compute: dict[str, Compute] = field(default_factory=dict)
    datastores: dict[str, str] = field(default_factory=dict)  # id -> name
    mounts: dict[str, int] = field(default_factory=dict)  # datastore id -> hosts mounting it

    def compute_of(self, host_id: str) -> Compute | None:
        props = self.hosts.get(host_id)
        if props is None:
            return None
        return self.compute.get(moid(props.get("parent")))

    def datastore_id(self, ref: str) -> str | None:
        if ref in self.datastores:
            return ref
        named = [i for i, name in self.datastores.items() if name == ref]
        return named[0] if len(named) == 1 else None


def build_topology(
    hosts: Mapping[str, dict[str, Any]],
    compute: Mapping[str, dict[str, Any]],
    datastores: Mapping[str, dict[str, Any]],
    compute_types: Mapping[str, bool],
) -> Topology:
    mounts: dict[str, int] = {}
    for hid, props in hosts.items():
        for ds in _refs(_props(props, hid).get("datastore")):
            if moid(ds):  # a datastore without an id is no mount
                mounts[moid(ds)] = mounts.get(moid(ds), 0) + 1
    return Topology(
        hosts=dict(hosts),
        compute={
            cid: Compute(
                id=cid,
                name=_text(_props(props, cid).get("name"), cid),
                pool=moid(props.get("resourcePool")),
                cluster=bool(compute_types.get(cid, False)),
            )
            for cid, props in compute.items()
        },
        datastores={
            did: _text(_props(props, did).get("name"), did) for did, props in datastores.items()
        },
        mounts=mounts,
    )


def _state(props: Mapping[str, Any]) -> HostState:
    if props.get("runtime.connectionState") != "connected":
        return HostState.DOWN
    if props.get("runtime.powerState") not in (None, "poweredOn"):
        return HostState.DOWN
    if props.get("runtime.inMaintenanceMode"):
        return HostState.MAINTENANCE
    return HostState.UP


def host_info(
    host_id: str, props: Mapping[str, Any], topo: Topology, used: tuple[int, int]
) -> HostInfo:
    props = _props(props, host_id)
    compute = topo.compute_of(host_id)
    extra = {
        "connection_state": _text(props.get("runtime.connectionState")),
        "maintenance": "yes" if props.get("runtime.inMaintenanceMode") else "no",
        "datastores": ",".join(
            sorted(topo.datastores.get(moid(d), moid(d)) for d in _refs(props.get("datastore")))
        ),
    }
    if compute is not None:
        extra["compute_resource"] = compute.id
        extra["resource_pool"] = compute.pool
        extra["standalone"] = "no" if compute.cluster else "yes"
    return HostInfo(
        id=host_id,
        name=_text(props.get("name"), host_id),
        cluster=compute.name if compute is not None else "",
        state=_state(props),
        capacity=Capacity(
            cpus=_count(props.get("summary.hardware.numCpuThreads")),
            memory=_count(props.get("summary.hardware.memorySize")),
        ),
        allocated=Capacity(cpus=used[0], memory=used[1]),
        cpu=CpuInfo(arch="x86_64", model=_text(props.get("summary.hardware.cpuModel") or "")),
        extra=extra,
    )


def listed(props: Mapping[str, Any]) -> bool:
    """Templates and VMs without a host are not migration candidates."""
    props = _props(props, "a VM")
    return not props.get("summary.config.template") and props.get("runtime.host") is not None


def vm_usage(props: Mapping[str, Any]) -> tuple[int, int]:
    """(vCPUs, memory bytes) a VM holds on its host: only while powered on."""
    if _props(props, "a VM").get("runtime.powerState") != "poweredOn":
        return (0, 0)
    return (
        _count(props.get("summary.config.numCpu")),
        _count(props.get("summary.config.memorySizeMB")) * MiB,
    )


def vm_info(vm_id: str, props: Mapping[str, Any], topo: Topology) -> VMInfo:
    props = _props(props, vm_id)
    host = moid(props.get("runtime.host"))
    stores = [moid(d) for d in _refs(props.get("datastore"))]
    if not stores:
        storage = Storage.NONE
    elif all(topo.mounts.get(d, 0) > 1 for d in stores):
        storage = Storage.SHARED
    else:
        storage = Storage.LOCAL
    connection = _text(props.get("runtime.connectionState"), "connected")
    compute = topo.compute_of(host)
    extra = {
        "datastores": ",".join(topo.datastores.get(d, d) for d in stores),
        "resource_pool": moid(props.get("resourcePool")),
    }
    if compute is not None:
        extra["cluster"] = compute.name
        extra["compute_resource"] = compute.id
    return VMInfo(
        id=vm_id,
        name=_text(props.get("name"), vm_id),
        host=host,
        power=_POWER.get(_text(props.get("runtime.powerState")), PowerState.STOPPED),
        memory=_count(props.get("summary.config.memorySizeMB")) * MiB,
        vcpus=_count(props.get("summary.config.numCpu")),
        storage=storage,
        live_migratable=connection == "connected",
        not_migratable_reason=None if connection == "connected" else f"VM is {connection}",
        extra=extra,
    )
