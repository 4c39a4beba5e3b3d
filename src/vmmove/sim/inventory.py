"""The simulator's estate: read from TOML, or the built-in sample.

.. code-block:: toml

    link_mib_s = 1170            # default outgoing link per host (10 GbE is ~1170 MiB/s)

    [[host]]
    name = "host-a"
    cluster = "lab"
    cpus = 32
    memory_gib = 256
    cpu_model = "Skylake-Server"
    link_mib_s = 117              # optional: a 1 GbE host
    state = "up"                  # up | maintenance | down

    [[vm]]
    name = "db-1"
    host = "host-a"
    memory_mib = 8192
    vcpus = 4
    dirty_mib_s = 60              # how fast the guest writes memory
    working_set_mib = 1024        # how much memory it keeps rewriting
    resident_mib = 6144           # memory holding data (zero pages cost nothing)
    power = "running"             # running | stopped
    storage = "shared"            # shared | local | none
    disk_gib = 0                  # copied by a cold move of local storage
    live_migratable = true
    not_migratable_reason = ""
    extra = { affinity = "db-pair" }   # passed through to VMInfo.extra / HostInfo.extra
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmmove.errors import InvalidInput
from vmmove.model import GiB, HostState, MiB, PowerState, Storage

__all__ = ["SimHost", "SimInventory", "SimVM", "load", "sample"]


@dataclass(eq=False)
class SimHost:
    id: str
    name: str
    cluster: str
    cpus: int
    memory: int
    cpu_model: str
    link: float  # bytes/s
    state: HostState = HostState.UP
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(eq=False)
class SimVM:
    id: str
    name: str
    host: str
    memory: int
    vcpus: int
    dirty_rate: float
    working_set: int
    resident: int
    power: PowerState = PowerState.RUNNING
    storage: Storage = Storage.SHARED
    disk: int = 0
    live_migratable: bool = True
    not_migratable_reason: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # e.g. affinity = "db-pair"
    migrating: str | None = None  # job id


@dataclass
class SimInventory:
    hosts: dict[str, SimHost] = field(default_factory=dict)
    vms: dict[str, SimVM] = field(default_factory=dict)


def _num(table: dict[str, Any], key: str, default: float, where: str) -> float:
    value = table.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value < 1e12  # also refuses NaN and infinity
    ):
        raise InvalidInput(f"{where}: {key} must be a non-negative number, not {value!r}")
    return float(value)


def _enum(cls: Any, table: dict[str, Any], key: str, default: str, where: str) -> Any:
    try:
        return cls(table.get(key, default))
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise InvalidInput(f"{where}: {key} must be one of {choices}") from None


def _extra(table: dict[str, Any], where: str) -> dict[str, str]:
    """Free-form facts passed through to ``extra`` (placement groups, labels)."""
    extra = table.get("extra", {})
    if not isinstance(extra, dict):
        raise InvalidInput(f"{where}: extra must be a table of strings")
    return {str(k): str(v) for k, v in extra.items()}


def _tables(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise InvalidInput(f"inventory: `{key}` must be an array of tables ([[{key}]])")
    return value


def parse(data: dict[str, Any]) -> SimInventory:
    if not isinstance(data, dict):
        raise InvalidInput("inventory: expected a table")
    inv = SimInventory()
    default_link = _num(data, "link_mib_s", 1170, "inventory") * MiB
    for i, h in enumerate(_tables(data, "host")):
        where = f"host #{i + 1}"
        if not isinstance(h, dict) or not h.get("name"):
            raise InvalidInput(f"{where}: needs a name")
        host = SimHost(
            id=str(h.get("id", h["name"])),
            name=str(h["name"]),
            cluster=str(h.get("cluster", "default")),
            cpus=int(_num(h, "cpus", 32, where)),
            memory=int(_num(h, "memory_gib", 256, where) * GiB),
            cpu_model=str(h.get("cpu_model", "Skylake-Server")),
            link=_num(h, "link_mib_s", default_link / MiB, where) * MiB,
            state=_enum(HostState, h, "state", "up", where),
            extra=_extra(h, where),
        )
        if host.id in inv.hosts:
            raise InvalidInput(f"{where}: duplicate host id {host.id!r}")
        inv.hosts[host.id] = host
    names = {h.name: h.id for h in inv.hosts.values()}
    for i, v in enumerate(_tables(data, "vm")):
        where = f"vm #{i + 1}"
        if not isinstance(v, dict) or not v.get("name"):
            raise InvalidInput(f"{where}: needs a name")
        host_ref = str(v.get("host", ""))
        host_id = host_ref if host_ref in inv.hosts else names.get(host_ref)
        if host_id is None:
            raise InvalidInput(f"{where}: unknown host {host_ref!r}")
        memory = int(_num(v, "memory_mib", 2048, where) * MiB)
        wss = int(_num(v, "working_set_mib", memory / MiB / 8, where) * MiB)
        vm = SimVM(
            id=str(v.get("id", v["name"])),
            name=str(v["name"]),
            host=host_id,
            memory=memory,
            vcpus=int(_num(v, "vcpus", 2, where)),
            dirty_rate=_num(v, "dirty_mib_s", 0, where) * MiB,
            working_set=min(wss, memory),
            resident=min(
                int(_num(v, "resident_mib", max(wss, memory) / MiB / 3, where) * MiB), memory
            ),
            power=_enum(PowerState, v, "power", "running", where),
            storage=_enum(Storage, v, "storage", "shared", where),
            disk=int(_num(v, "disk_gib", 0, where) * GiB),
            live_migratable=bool(v.get("live_migratable", True)),
            not_migratable_reason=str(v.get("not_migratable_reason", "")),
            extra=_extra(v, where),
        )
        vm.resident = max(vm.resident, vm.working_set)
        if vm.id in inv.vms:
            raise InvalidInput(f"{where}: duplicate VM id {vm.id!r}")
        inv.vms[vm.id] = vm
    return inv


def load(path: str | Path) -> SimInventory:
    try:
        with open(path, "rb") as fh:
            return parse(tomllib.load(fh))
    except OSError as exc:
        raise InvalidInput(f"cannot read inventory {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"inventory {path} is not valid TOML: {exc}") from None
    except InvalidInput:
        raise
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise InvalidInput(f"cannot read inventory {path!r}: {exc}") from None


def sample() -> SimInventory:
    """A small lab: three hosts on 10 GbE, one on 1 GbE, and VMs of every temper."""
    return parse(
        {
            "link_mib_s": 1170,
            "host": [
                {"name": "host-a", "cluster": "lab", "cpus": 32, "memory_gib": 128},
                {"name": "host-b", "cluster": "lab", "cpus": 32, "memory_gib": 128},
                {"name": "host-c", "cluster": "lab", "cpus": 16, "memory_gib": 64},
                {
                    "name": "edge-1",
                    "cluster": "edge",
                    "cpus": 8,
                    "memory_gib": 32,
                    "link_mib_s": 117,
                },
                {
                    "name": "edge-2",
                    "cluster": "edge",
                    "cpus": 8,
                    "memory_gib": 32,
                    "link_mib_s": 117,
                },
            ],
            "vm": [
                {
                    "name": "web-1",
                    "host": "host-a",
                    "memory_mib": 4096,
                    "vcpus": 2,
                    "dirty_mib_s": 20,
                    "working_set_mib": 256,
                    "resident_mib": 1536,
                },
                {
                    "name": "web-2",
                    "host": "host-a",
                    "memory_mib": 4096,
                    "vcpus": 2,
                    "dirty_mib_s": 20,
                    "working_set_mib": 256,
                    "resident_mib": 1536,
                },
                {
                    "name": "db-1",
                    "host": "host-a",
                    "memory_mib": 16384,
                    "vcpus": 8,
                    "dirty_mib_s": 400,
                    "working_set_mib": 4096,
                    "resident_mib": 12288,
                },
                {
                    "name": "cache-1",
                    "host": "host-b",
                    "memory_mib": 8192,
                    "vcpus": 4,
                    "dirty_mib_s": 1500,
                    "working_set_mib": 6144,
                    "resident_mib": 8192,
                },
                {
                    "name": "batch-1",
                    "host": "host-a",
                    "memory_mib": 2048,
                    "vcpus": 2,
                    "power": "stopped",
                },
                {
                    "name": "gpu-1",
                    "host": "host-c",
                    "memory_mib": 8192,
                    "vcpus": 4,
                    "live_migratable": False,
                    "not_migratable_reason": "PCI passthrough device",
                },
                {
                    "name": "app-1",
                    "host": "edge-1",
                    "memory_mib": 8192,
                    "vcpus": 4,
                    "dirty_mib_s": 60,
                    "working_set_mib": 1024,
                    "resident_mib": 6144,
                },
            ],
        }
    )
