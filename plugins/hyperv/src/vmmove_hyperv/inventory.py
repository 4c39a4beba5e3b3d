"""Get-VMHost and Get-VM output (see :mod:`vmmove_hyperv.scripts`) read as vmmove inventory.

Enums arrive as numbers or names (:mod:`vmmove_hyperv.psjson`); memory in bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmmove.errors import ConnectionFailed
from vmmove.model import Capacity, CpuInfo, HostInfo, PowerState, Storage, VMInfo
from vmmove_hyperv.psjson import (
    Obj,
    as_bool,
    as_int,
    as_list,
    as_object,
    as_text,
    enum_value,
)

__all__ = ["VM_STATES", "HostFacts", "host_facts", "host_info", "vm_info"]

#: Microsoft.HyperV.PowerShell.VMState
VM_STATES: Mapping[str, int] = {
    "Other": 1,
    "Running": 2,
    "Off": 3,
    "Stopping": 4,
    "Saved": 6,
    "Paused": 9,
    "Starting": 10,
    "Reset": 11,
    "Saving": 32773,
    "Pausing": 32776,
    "Resuming": 32777,
    "FastSaved": 32779,
    "FastSaving": 32780,
    "RunningCritical": 32785,
    "OffCritical": 32786,
    "StoppingCritical": 32787,
    "SavedCritical": 32788,
    "PausedCritical": 32789,
}
_STATE_NAMES = {v: k for k, v in VM_STATES.items()}
#: Running (and on its way down: it still runs until Off) / stopped (nothing runs; a
#: starting VM is not running yet) / anything else is paused: not running, not stopped.
_RUNNING = {2, 4, 32785, 32787}
_STOPPED = {3, 6, 10, 32779, 32786, 32788}
#: Microsoft.HyperV.PowerShell.VMMigrationPerformance
PERFORMANCE: Mapping[str, int] = {"TCPIP": 0, "Compression": 1, "SMB": 2}
#: Microsoft.HyperV.PowerShell.MigrationAuthenticationType
AUTHENTICATION: Mapping[str, int] = {"CredSSP": 0, "Kerberos": 1}


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What a pre-check needs of a host, beyond HostInfo."""

    name: str
    fqdn: str
    migration_enabled: bool
    max_migrations: int
    active_migrations: int
    performance: str
    authentication: str
    processor: str


def _name_of(value: int, names: Mapping[str, int]) -> str:
    return next((k for k, v in names.items() if v == value), str(value))


def host_facts(raw: Any, address: str) -> HostFacts:
    obj = as_object(as_single(raw, f"Get-VMHost on {address}"), f"Get-VMHost on {address}")
    what = f"Get-VMHost on {address}"
    name = as_text(obj.get("Name"), f"{what}: Name")
    if not name:
        raise ConnectionFailed(f"{what}: the host has no name")
    return HostFacts(
        name=name,
        fqdn=as_text(obj.get("FullyQualifiedDomainName"), f"{what}: FQDN", default=name) or name,
        migration_enabled=as_bool(obj.get("VirtualMachineMigrationEnabled"), f"{what}: enabled"),
        max_migrations=as_int(
            obj.get("MaximumVirtualMachineMigrations"), f"{what}: max", default=2
        ),
        active_migrations=as_int(obj.get("ActiveMigrations"), f"{what}: active", default=0),
        performance=_name_of(
            enum_value(
                obj.get("VirtualMachineMigrationPerformanceOption", 0),
                PERFORMANCE,
                f"{what}: performance option",
            ),
            PERFORMANCE,
        ),
        authentication=_name_of(
            enum_value(
                obj.get("VirtualMachineMigrationAuthenticationType", 0),
                AUTHENTICATION,
                f"{what}: authentication type",
            ),
            AUTHENTICATION,
        ),
        processor=as_text(obj.get("ProcessorModel"), f"{what}: processor", default=""),
    )


def as_single(raw: Any, what: str) -> Any:
    """The one object a command prints (a list of one, on PowerShell 7 with -AsArray)."""
    items = as_list(raw, what)
    if len(items) != 1:
        raise ConnectionFailed(f"{what}: expected one object, got {len(items)}")
    return items[0]


def host_info(raw: Any, address: str, vms: list[VMInfo], cluster: str = "") -> HostInfo:
    obj = as_object(as_single(raw, f"Get-VMHost on {address}"), f"Get-VMHost on {address}")
    facts = host_facts(obj, address)
    what = f"Get-VMHost on {address}"
    cpus = as_int(obj.get("LogicalProcessorCount"), f"{what}: LogicalProcessorCount")
    memory = as_int(obj.get("MemoryCapacity"), f"{what}: MemoryCapacity")
    if cpus <= 0 or memory <= 0:
        raise ConnectionFailed(f"{what}: a host without processors or memory")
    running = [v for v in vms if v.host == facts.name and v.power is not PowerState.STOPPED]
    return HostInfo(
        id=facts.name,
        name=facts.name,
        cluster=cluster,
        capacity=Capacity(cpus=cpus, memory=memory),
        allocated=Capacity(
            cpus=sum(v.vcpus for v in running), memory=sum(v.memory for v in running)
        ),
        cpu=CpuInfo(model=facts.processor),
        extra={
            "address": address,
            "fqdn": facts.fqdn,
            "migration_enabled": str(facts.migration_enabled).lower(),
            "max_migrations": str(facts.max_migrations),
            "active_migrations": str(facts.active_migrations),
            "performance_option": facts.performance,
            "migration_authentication": facts.authentication,
        },
    )


def _storage(drives: list[Any], what: str) -> Storage:
    paths = [
        as_text(as_object(d, f"{what}: a hard drive").get("Path"), f"{what}: disk path", default="")
        for d in drives
    ]
    paths = [p for p in paths if p]
    if not paths:
        return Storage.NONE
    # An SMB share or a cluster shared volume is seen by every host; anything else is local.
    shared = all(
        p.startswith("\\\\") or p.lower().startswith("c:\\clusterstorage\\") for p in paths
    )
    return Storage.SHARED if shared else Storage.LOCAL


def vm_info(raw: Obj | Any, host: str) -> VMInfo:
    obj = as_object(raw, f"Get-VM on {host}")
    vm_id = as_text(obj.get("Id"), f"Get-VM on {host}: Id")
    name = as_text(obj.get("Name"), f"Get-VM on {host}: Name")
    what = f"VM {name[:40] or vm_id[:40]} on {host}"
    if not vm_id or not name:
        raise ConnectionFailed(f"Get-VM on {host}: a VM without id or name")
    state = enum_value(obj.get("State"), VM_STATES, f"{what}: State")
    power = (
        PowerState.RUNNING
        if state in _RUNNING
        else PowerState.STOPPED
        if state in _STOPPED
        else PowerState.PAUSED
    )
    assigned = as_int(obj.get("MemoryAssigned"), f"{what}: MemoryAssigned", default=0)
    startup = as_int(obj.get("MemoryStartup"), f"{what}: MemoryStartup", default=0)
    memory = max(assigned, startup)
    vcpus = as_int(obj.get("ProcessorCount"), f"{what}: ProcessorCount")
    if memory <= 0 or vcpus <= 0:
        raise ConnectionFailed(f"{what}: no memory or no processors")
    compat = as_bool(
        obj.get("CompatibilityForMigrationEnabled"), f"{what}: compatibility", default=False
    )
    dynamic = as_bool(obj.get("DynamicMemoryEnabled"), f"{what}: dynamic memory", default=False)
    storage = _storage(as_list(obj.get("HardDrives"), f"{what}: HardDrives"), what)
    return VMInfo(
        id=vm_id,
        name=name,
        host=host,
        power=power,
        memory=memory,
        vcpus=vcpus,
        storage=storage,
        extra={
            "state": _STATE_NAMES.get(state, str(state)),
            "memory_assigned": str(assigned),
            "memory_startup": str(startup),
            "dynamic_memory": str(dynamic).lower(),
            "processor_compatibility": str(compat).lower(),
            "path": as_text(obj.get("Path"), f"{what}: Path", default="")[:260],
        },
    )
