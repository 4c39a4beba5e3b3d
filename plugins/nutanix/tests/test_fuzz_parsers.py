"""Hypothesis over Prism's JSON parsers: any JSON is either read into a typed record or
refused with ConnectionFailed (never another exception), and well-formed documents read
back the values they hold."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmmove.errors import ConnectionFailed
from vmmove_nutanix import parse
from vmmove_nutanix.phases import phase_of

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=20,
)
KEYS = [
    "extId",
    "name",
    "hostName",
    "powerState",
    "memorySizeBytes",
    "numSockets",
    "host",
    "cluster",
    "isLiveMigrateCapable",
    "gpus",
    "hostAffinity",
    "status",
    "progressPercentage",
    "errorMessages",
    "entitiesAffected",
    "createdTime",
    "uuid",
    "power_state",
    "host_uuid",
    "memory_mb",
    "num_vcpus",
    "allow_live_migrate",
    "affinity",
    "progress_status",
    "percentage_complete",
    "meta_response",
    "entity_list",
    "memory_capacity_in_bytes",
    "num_cpu_threads",
    "numberOfCpuThreads",
    "data",
    "entities",
    "metadata",
]
DOCS = st.dictionaries(st.sampled_from(KEYS), JSON, max_size=12) | JSON

PARSERS: list[Callable[[Any], object]] = [
    parse.v4_host,
    parse.v4_vm,
    parse.v4_task,
    parse.v4_page,
    parse.task_ref_v4,
    parse.v2_host,
    parse.v2_vm,
    parse.v2_task,
    parse.v2_page,
    parse.task_ref_v2,
]


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.__name__)
@settings(max_examples=40, deadline=None)
@given(doc=DOCS)
def test_any_json_is_read_or_refused_as_nonsense(parser: Callable[[Any], object], doc: Any) -> None:
    refused: list[str] = []
    try:
        parser(doc)
    except ConnectionFailed as exc:
        refused.append(str(exc))
    assert all("nonsense" in r for r in refused), refused


ids = st.uuids().map(str)
counts = st.integers(min_value=1, max_value=1 << 40)


@settings(max_examples=50, deadline=None)
@given(
    vm=ids,
    name=st.text(min_size=1, max_size=20),
    host=ids,
    memory=counts,
    sockets=st.integers(1, 64),
    on=st.booleans(),
    live=st.booleans(),
    gpus=st.integers(0, 3),
    pinned=st.booleans(),
)
def test_a_v4_vm_reads_back_what_it_holds(  # noqa: PLR0917 (hypothesis draws)
    vm: str,
    name: str,
    host: str,
    memory: int,
    sockets: int,
    on: bool,
    live: bool,
    gpus: int,
    pinned: bool,
) -> None:
    doc: dict[str, Any] = {
        "extId": vm,
        "name": name,
        "powerState": "ON" if on else "OFF",
        "memorySizeBytes": memory,
        "numSockets": sockets,
        "isLiveMigrateCapable": live,
        "gpus": [{}] * gpus,
        "cluster": {"extId": "c"},
    }
    if on:
        doc["host"] = {"extId": host}
    if pinned:
        doc["hostAffinity"] = {"hosts": [{"extId": host}]}
    got = parse.v4_vm(doc)
    assert (got.id, got.name, got.memory, got.vcpus, got.gpus) == (vm, name, memory, sockets, gpus)
    assert got.power == ("on" if on else "off")
    assert got.live_migrate is live
    # running: where it runs; stopped: the one host its affinity allows, else nowhere
    assert got.host == (host if on or pinned else None)


@settings(max_examples=50, deadline=None)
@given(
    task=ids,
    status=st.sampled_from(["Queued", "Running", "Succeeded", "Failed", "Odd"]),
    pct=st.integers(0, 100),
    usecs=st.integers(0, 1 << 52),
    error=st.text(max_size=10),
)
def test_a_v2_task_reads_back_what_it_holds(
    task: str, status: str, pct: int, usecs: int, error: str
) -> None:
    doc = {
        "uuid": task,
        "progress_status": status,
        "percentage_complete": pct,
        "create_time_usecs": usecs,
        "entity_list": [{"entity_id": "vm-1"}],
        "meta_response": {"error_code": 1 if error else 0, "error_detail": error},
    }
    got = parse.v2_task(doc)
    assert (got.id, got.status, got.percent) == (task, status, float(pct))
    assert got.created == pytest.approx(usecs / 1e6)
    assert got.entities == ("vm-1",)
    assert (got.error is not None) is bool(error)
    phase, native = phase_of(status, v4=False, percent=got.percent)
    assert (native == status) is (status != "Odd")
    assert not (status == "Odd" and phase.terminal)  # an unknown status never ends a job
