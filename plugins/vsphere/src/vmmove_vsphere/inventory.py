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
    """A managed object's id (``host-21``, ``vm-42``); ``""`` for ``None``."""
    return str(obj._moId) if obj is not None else ""


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
    for props in hosts.values():
        for ds in props.get("datastore") or ():
            mounts[moid(ds)] = mounts.get(moid(ds), 0) + 1
    return Topology(
        hosts=dict(hosts),
        compute={
            cid: Compute(
                id=cid,
                name=str(props.get("name", cid)),
                pool=moid(props.get("resourcePool")),
                cluster=compute_types.get(cid, False),
            )
            for cid, props in compute.items()
        },
        datastores={did: str(props.get("name", did)) for did, props in datastores.items()},
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
    compute = topo.compute_of(host_id)
    extra = {
        "connection_state": str(props.get("runtime.connectionState", "")),
        "maintenance": "yes" if props.get("runtime.inMaintenanceMode") else "no",
        "datastores": ",".join(
            sorted(topo.datastores.get(moid(d), moid(d)) for d in props.get("datastore") or ())
        ),
    }
    if compute is not None:
        extra["compute_resource"] = compute.id
        extra["resource_pool"] = compute.pool
        extra["standalone"] = "no" if compute.cluster else "yes"
    return HostInfo(
        id=host_id,
        name=str(props.get("name", host_id)),
        cluster=compute.name if compute is not None else "",
        state=_state(props),
        capacity=Capacity(
            cpus=int(props.get("summary.hardware.numCpuThreads") or 0),
            memory=int(props.get("summary.hardware.memorySize") or 0),
        ),
        allocated=Capacity(cpus=used[0], memory=used[1]),
        cpu=CpuInfo(arch="x86_64", model=str(props.get("summary.hardware.cpuModel") or "")),
        extra=extra,
    )


def listed(props: Mapping[str, Any]) -> bool:
    """Templates and VMs without a host are not migration candidates."""
    return not props.get("summary.config.template") and props.get("runtime.host") is not None


def vm_usage(props: Mapping[str, Any]) -> tuple[int, int]:
    """(vCPUs, memory bytes) a VM holds on its host: only while powered on."""
    if props.get("runtime.powerState") != "poweredOn":
        return (0, 0)
    return (
        int(props.get("summary.config.numCpu") or 0),
        int(props.get("summary.config.memorySizeMB") or 0) * MiB,
    )


def vm_info(vm_id: str, props: Mapping[str, Any], topo: Topology) -> VMInfo:
    host = moid(props.get("runtime.host"))
    stores = [moid(d) for d in props.get("datastore") or ()]
    if not stores:
        storage = Storage.NONE
    elif all(topo.mounts.get(d, 0) > 1 for d in stores):
        storage = Storage.SHARED
    else:
        storage = Storage.LOCAL
    connection = str(props.get("runtime.connectionState", "connected"))
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
        name=str(props.get("name", vm_id)),
        host=host,
        power=_POWER.get(str(props.get("runtime.powerState")), PowerState.STOPPED),
        memory=int(props.get("summary.config.memorySizeMB") or 0) * MiB,
        vcpus=int(props.get("summary.config.numCpu") or 0),
        storage=storage,
        live_migratable=connection == "connected",
        not_migratable_reason=None if connection == "connected" else f"VM is {connection}",
        extra=extra,
    )
