"""Prism's JSON, v4 and v2.0, read into a few plain records. Every shape problem is
:class:`~vmmove.errors.ConnectionFailed` ("answered nonsense"), never a ``KeyError`` or
``TypeError`` escaping the backend; the hypothesis tests hold every parser to that.

Only what vmmove uses is read; unknown fields are ignored, as newer Prism releases add them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vmmove.errors import ConnectionFailed

__all__ = [
    "NativeHost",
    "NativeTask",
    "NativeVM",
    "Page",
    "task_ref_v2",
    "task_ref_v4",
    "v2_host",
    "v2_page",
    "v2_task",
    "v2_vm",
    "v4_host",
    "v4_page",
    "v4_task",
    "v4_vm",
]


@dataclass(frozen=True, slots=True)
class NativeHost:
    id: str
    name: str
    cluster: str
    memory: int  # bytes
    cpus: int
    maintenance: bool
    state: str  # the platform's own word, shown in extra


@dataclass(frozen=True, slots=True)
class NativeVM:
    id: str
    name: str
    power: str  # "on", "off", or Prism's other word in lower case ("paused", ...)
    #: where it runs; for a stopped VM the one host its affinity allows (AHV places a
    #: stopped VM nowhere else), ``None`` when Prism says neither
    host: str | None
    memory: int
    vcpus: int
    cluster: str
    live_migrate: bool
    gpus: int
    affinity: tuple[str, ...]  # hosts the VM-host affinity allows (empty: any)


@dataclass(frozen=True, slots=True)
class NativeTask:
    id: str
    status: str
    percent: float | None
    error: str | None
    operation: str
    entities: tuple[str, ...]  # ids of the VMs and hosts the task names
    created: float | None  # seconds since the epoch (Prism's clock)
    completed: float | None


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Mapping[str, Any]]
    total: int | None  # how many exist, where Prism says


def _nonsense(what: str) -> ConnectionFailed:
    return ConnectionFailed(f"Prism answered nonsense: {what}")


def _obj(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _nonsense(f"{what} is not an object")
    return value


def _text(doc: Mapping[str, Any], key: str, what: str, *, default: str | None = None) -> str:
    value = doc.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise _nonsense(f"{what}.{key} is not text")
    return value


def _int(doc: Mapping[str, Any], key: str, what: str, *, default: int | None = None) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _nonsense(f"{what}.{key} is not a count")
    return value


def _flag(doc: Mapping[str, Any], key: str, what: str, *, default: bool) -> bool:
    value = doc.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _nonsense(f"{what}.{key} is not true or false")
    return value


def _list(doc: Mapping[str, Any], key: str, what: str) -> Sequence[Any]:
    value = doc.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _nonsense(f"{what}.{key} is not a list")
    return value


def _percent(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _nonsense(f"{what} is not a number")
    return min(100.0, max(0.0, float(value)))


def _ref(value: Any, what: str) -> str | None:
    """A v4 reference ``{"extId": ...}``, or nothing."""
    if value is None:
        return None
    ext = _obj(value, what).get("extId")
    if ext is None:
        return None
    if not isinstance(ext, str) or not ext:
        raise _nonsense(f"{what}.extId is not text")
    return ext


def _ids(values: Sequence[Any], key: str, what: str) -> tuple[str, ...]:
    out = []
    for item in values:
        if isinstance(item, str) and item:
            out.append(item)
            continue
        ident = _obj(item, what).get(key)
        if not isinstance(ident, str) or not ident:
            raise _nonsense(f"{what}.{key} is not text")
        out.append(ident)
    return tuple(out)


def _placed(power: str, running_on: str | None, affinity: tuple[str, ...]) -> str | None:
    if power == "on":
        return running_on
    return affinity[0] if len(affinity) == 1 else running_on


# ---- v4 ------------------------------------------------------------------------------------
def v4_page(body: Any) -> Page:
    doc = _obj(body, "the answer")
    data = doc.get("data")
    if data is None:
        data = []
    if not isinstance(data, list):
        raise _nonsense("data is not a list")
    items = [_obj(d, "data[]") for d in data]
    meta = doc.get("metadata")
    total = None
    if isinstance(meta, Mapping) and meta.get("totalAvailableResults") is not None:
        total = _int(meta, "totalAvailableResults", "metadata")
    return Page(items, total)


def v4_data(body: Any) -> Mapping[str, Any]:
    return _obj(_obj(body, "the answer").get("data"), "data")


def v4_host(raw: Any) -> NativeHost:
    what = "host"
    doc = _obj(raw, what)
    cluster = doc.get("cluster")
    cluster_id = ""
    if cluster is not None:
        cluster_id = _text(_obj(cluster, "host.cluster"), "uuid", "host.cluster", default="")
    hypervisor = doc.get("hypervisor")
    state = ""
    if hypervisor is not None:
        state = _text(_obj(hypervisor, "host.hypervisor"), "state", "hypervisor", default="")
    maintenance_state = _text(doc, "maintenanceState", what, default="")
    in_maintenance = "MAINTENANCE" in state or maintenance_state.lower() not in ("", "normal")
    threads = doc.get("numberOfCpuThreads")
    cpus = _int(doc, "numberOfCpuThreads" if threads is not None else "numberOfCpuCores", what)
    return NativeHost(
        id=_text(doc, "extId", what),
        name=_text(doc, "hostName", what),
        cluster=cluster_id,
        memory=_int(doc, "memorySizeBytes", what),
        cpus=cpus,
        maintenance=in_maintenance,
        state=state or maintenance_state or "normal",
    )


def v4_vm(raw: Any) -> NativeVM:
    what = "vm"
    doc = _obj(raw, what)
    power = _text(doc, "powerState", what).lower()
    affinity_doc = doc.get("hostAffinity")
    affinity: tuple[str, ...] = ()
    if affinity_doc is not None:
        affinity = _ids(_list(_obj(affinity_doc, "vm.hostAffinity"), "hosts", what), "extId", what)
    vcpus = (
        _int(doc, "numSockets", what, default=1)
        * _int(doc, "numCoresPerSocket", what, default=1)
        * _int(doc, "numThreadsPerCore", what, default=1)
    )
    return NativeVM(
        id=_text(doc, "extId", what),
        name=_text(doc, "name", what),
        power=power,
        host=_placed(power, _ref(doc.get("host"), "vm.host"), affinity),
        memory=_int(doc, "memorySizeBytes", what),
        vcpus=vcpus,
        cluster=_ref(doc.get("cluster"), "vm.cluster") or "",
        live_migrate=_flag(doc, "isLiveMigrateCapable", what, default=True),
        gpus=len(_list(doc, "gpus", what)),
        affinity=affinity,
    )


def _iso(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _nonsense(f"{what} is not a time")
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _nonsense(f"{what} is not a time") from None
    if when.tzinfo is None:
        raise _nonsense(f"{what} has no time zone")
    return when.timestamp()


def v4_task(raw: Any) -> NativeTask:
    what = "task"
    doc = _obj(raw, what)
    errors = []
    for item in _list(doc, "errorMessages", what):
        message = _obj(item, "task.errorMessages[]").get("message")
        if isinstance(message, str) and message:
            errors.append(message)
    entities = _ids(_list(doc, "entitiesAffected", what), "extId", "task.entitiesAffected")
    return NativeTask(
        id=_text(doc, "extId", what),
        status=_text(doc, "status", what),
        percent=_percent(doc.get("progressPercentage"), "task.progressPercentage"),
        error="; ".join(errors) or None,
        operation=_text(doc, "operation", what, default=""),
        entities=entities,
        created=_iso(doc.get("createdTime"), "task.createdTime"),
        completed=_iso(doc.get("completedTime"), "task.completedTime"),
    )


def task_ref_v4(body: Any) -> str:
    """The task id of an accepted v4 action (202: ``data.extId``)."""
    return _text(v4_data(body), "extId", "data")


# ---- v2.0 ----------------------------------------------------------------------------------
def v2_page(body: Any) -> Page:
    doc = _obj(body, "the answer")
    entities = _list(doc, "entities", "the answer")
    items = [_obj(e, "entities[]") for e in entities]
    meta = doc.get("metadata")
    total = None
    if isinstance(meta, Mapping) and meta.get("total_entities") is not None:
        total = _int(meta, "total_entities", "metadata")
    return Page(items, total)


def v2_host(raw: Any) -> NativeHost:
    what = "host"
    doc = _obj(raw, what)
    state = _text(doc, "state", what, default="NORMAL")
    in_maintenance = _flag(doc, "host_in_maintenance_mode", what, default=False)
    return NativeHost(
        id=_text(doc, "uuid", what),
        name=_text(doc, "name", what),
        cluster=_text(doc, "cluster_uuid", what, default=""),
        memory=_int(doc, "memory_capacity_in_bytes", what),
        cpus=_int(doc, "num_cpu_threads", what, default=_int(doc, "num_cpu_cores", what)),
        maintenance=in_maintenance or state.upper() != "NORMAL",
        state=state,
    )


def v2_vm(raw: Any) -> NativeVM:
    what = "vm"
    doc = _obj(raw, what)
    power = _text(doc, "power_state", what).lower()
    affinity_doc = doc.get("affinity")
    affinity: tuple[str, ...] = ()
    if affinity_doc is not None:
        aff = _obj(affinity_doc, "vm.affinity")
        if _text(aff, "policy", "vm.affinity", default="AFFINITY") == "AFFINITY":
            affinity = _ids(_list(aff, "host_uuids", "vm.affinity"), "uuid", "vm.affinity")
    host = doc.get("host_uuid")
    if host is not None and (not isinstance(host, str) or not host):
        raise _nonsense("vm.host_uuid is not text")
    memory_mb = _int(doc, "memory_mb", what)
    return NativeVM(
        id=_text(doc, "uuid", what),
        name=_text(doc, "name", what),
        power=power,
        host=_placed(power, host, affinity),
        memory=memory_mb << 20,
        vcpus=_int(doc, "num_vcpus", what, default=1)
        * _int(doc, "num_cores_per_vcpu", what, default=1),
        cluster=_text(doc, "cluster_uuid", what, default=""),
        live_migrate=_flag(doc, "allow_live_migrate", what, default=True),
        gpus=len(_list(doc, "gpus_assigned", what)),
        affinity=affinity,
    )


def _usecs(doc: Mapping[str, Any], key: str, what: str) -> float | None:
    if doc.get(key) is None:
        return None
    return _int(doc, key, what) / 1e6


def v2_task(raw: Any) -> NativeTask:
    what = "task"
    doc = _obj(raw, what)
    meta = doc.get("meta_response")
    error = None
    if meta is not None:
        meta = _obj(meta, "task.meta_response")
        detail = meta.get("error_detail")
        code = meta.get("error_code", 0)
        if code not in (0, None) or (isinstance(detail, str) and detail):
            error = detail if isinstance(detail, str) and detail else f"error code {code!r}"
    entities = _ids(_list(doc, "entity_list", what), "entity_id", "task.entity_list")
    return NativeTask(
        id=_text(doc, "uuid", what),
        status=_text(doc, "progress_status", what),
        percent=_percent(doc.get("percentage_complete"), "task.percentage_complete"),
        error=error,
        operation=_text(doc, "operation_type", what, default=""),
        entities=entities,
        created=_usecs(doc, "create_time_usecs", what),
        completed=_usecs(doc, "complete_time_usecs", what),
    )


def task_ref_v2(body: Any) -> str:
    """The task id of an accepted v2.0 action (``task_uuid``)."""
    return _text(_obj(body, "the answer"), "task_uuid", "the answer")
