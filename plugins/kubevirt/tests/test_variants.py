"""The backend against KubeVirt as it really behaves across releases and faults: each test
switches one variant of the fake on (vmmove_kubevirt.testing.controller's docstring lists them)
and checks what poll, locate, start and attach make of it.

Polls here go to the backend directly (no engine in between), so what a single poll says
is what is checked: a poll must never call a cancelled or failed migration completed, nor
answer with a stale status when the API cannot be reached.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes.client import ApiException

from vmmove import (
    AuthenticationFailed,
    Conflict,
    ConnectionFailed,
    InvalidInput,
    MigrationMode,
    MigrationSpec,
    NotFound,
    Phase,
)
from vmmove.backend import Job, JobRef, JobStatus
from vmmove.engine import Connection
from vmmove.policy import PRESETS
from vmmove_kubevirt.backend import LABELLED_AT, REQUEST_ANNOTATION, KubeVirtBackend
from vmmove_kubevirt.kube import api_error
from vmmove_kubevirt.policy import POLICY_LABEL
from vmmove_kubevirt.testing import FakeKube

VMIM, VMI = "VirtualMachineInstanceMigration", "VirtualMachineInstance"
VMIMS = "virtualmachineinstancemigrations"
NEVER_ON_THE_WAY_TO_A_FAILURE = (Phase.SWITCHING_OVER, Phase.COMPLETING, Phase.COMPLETED)


def backend_of(conn: Connection) -> KubeVirtBackend:
    backend = conn.backend
    assert isinstance(backend, KubeVirtBackend)
    return backend


def start(conn: Connection, vm: str, target: str, request_id: str = "") -> Job:
    return backend_of(conn).start(
        conn.vm(vm),
        conn.host(target),
        MigrationSpec(vm=vm, target=target),
        MigrationMode.LIVE,
        policy=PRESETS["balanced"],
        needs=frozenset(),
        reservation=None,
        request_id=request_id,
    )


def until(backend: KubeVirtBackend, done: Callable[[], bool], timeout: float = 15.0) -> None:
    """Re-check ``done`` on every change the backend's watches bring (or every 0.1 s)."""
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        assert left > 0, "timed out"
        with backend._cond:
            backend._cond.wait(min(left, 0.1))


def poll_until(
    backend: KubeVirtBackend, job: Job, stop: Callable[[JobStatus], bool], seen: list[JobStatus]
) -> JobStatus:
    """Poll until ``stop(status)``; every distinct answer goes to ``seen``."""
    last: list[JobStatus] = []

    def done() -> bool:
        status = backend.poll(job)
        if not seen or seen[-1] != status:
            seen.append(status)
        last[:] = [status]
        return stop(status)

    until(backend, done)
    return last[0]


def vmi_state(kube: FakeKube, vmi: str) -> dict[str, Any]:
    return dict(((kube.get(VMI, vmi) or {})["status"]).get("migrationState") or {})


def labels(kube: FakeKube, vmi: str) -> dict[str, str]:
    return dict((kube.get(VMI, vmi) or {})["metadata"].get("labels") or {})


# ---- migrationState across releases: completed never means success on its own -----------


@pytest.mark.parametrize("release", ["1.5", "1.7", "1.9"], ids=lambda r: f"kv{r}")
@pytest.mark.parametrize("how", ["cancelled", "failed"])
def test_a_migration_stopped_mid_transfer_is_never_reported_completed(
    make_kube: Any, connect: Any, timing: Any, release: str, how: str
) -> None:
    kube: FakeKube = make_kube(release=release, timing=timing(running=30.0, report_lag=0.4))
    if how == "failed":
        kube.fail_migration("Running", vmi="web-1", reason="migration stalled", after=0.3)
    conn = connect(kube)
    backend = backend_of(conn)
    job = start(conn, "web-1", "node-b")  # 1.5: not pinned, but node-b is the only choice
    seen: list[JobStatus] = []
    poll_until(backend, job, lambda s: s.phase is Phase.TRANSFERRING, seen)
    if how == "cancelled":
        backend.abort(job)
    end = poll_until(backend, job, lambda s: s.phase.terminal, seen)
    assert [s.phase for s in seen if s.phase in NEVER_ON_THE_WAY_TO_A_FAILURE] == []
    # The window where the VMI said it was over and the VMIM still said Running was seen.
    assert any("failed on the VMI" in s.native for s in seen), [s.native for s in seen]
    expected = Phase.CANCELLED if how == "cancelled" else Phase.FAILED
    assert (end.phase, end.vm_host) == (expected, "node-a")
    if how == "failed":
        assert end.error == "migration stalled"
    state = vmi_state(kube, "web-1")
    assert bool(state.get("completed")) is (release != "1.7")  # the shape under test
    assert state["targetNode"] == "node-b"
    assert backend.locate("web-1") == "node-a"


def test_the_previous_migrations_state_is_not_read_as_this_ones(
    make_kube: Any, connect: Any, timing: Any
) -> None:
    kube: FakeKube = make_kube(timing=timing(running=0.1), handoff_phase="TargetReady")
    conn = connect(kube)
    backend = backend_of(conn)
    seen: list[JobStatus] = []
    first = start(conn, "web-1", "node-b")
    poll_until(backend, first, lambda s: s.phase.terminal, seen)
    old = vmi_state(kube, "web-1")
    assert (old["completed"], old["targetNode"]) == (True, "node-b")
    # The next one fails before the handover: the VMI keeps the first one's state all along.
    kube.timing.preparing_target = 5.0
    kube.fail_migration("PreparingTarget", vmi="web-1", reason="target pod crashed", after=0.3)
    seen.clear()
    second = start(conn, "web-1", "node-a")
    end = poll_until(backend, second, lambda s: s.phase.terminal, seen)
    assert vmi_state(kube, "web-1") == old
    assert sorted({s.phase for s in seen}) == sorted({Phase.REQUESTING, Phase.FAILED})
    assert end.vm_host == "node-b"  # where it runs, not where the old state's target was


# ---- lost answers and outages ----------------------------------------------------------------


def test_a_create_applied_after_the_client_gave_up_is_followed(
    kube: FakeKube, connect: Any
) -> None:
    conn = connect(kube, timeout=1)
    kube.api_fault(method="POST", path=f"{VMIMS}$", delay=1.3, apply_after=0.3)
    m = conn.migrate("web-1", to="node-b")
    record = m.wait(30)
    assert record.phase is Phase.COMPLETED
    assert record.vm_host == "node-b" == kube.vmi_node("web-1")
    assert any("answer to the start request was lost" in w for w in record.warnings)
    posts = list(kube.server.requests_matching("POST", f"{VMIMS}$"))
    assert [(p.status, p.late) for p in posts] == [(0, False), (201, True)]  # never sent twice
    (vmim,) = kube.list(VMIM)
    assert record.job_ref["migration"] == vmim["metadata"]["name"]
    assert vmim["metadata"]["annotations"][REQUEST_ANNOTATION] == record.job_ref["request_id"]


def test_attach_finds_exactly_the_vmim_of_a_request_even_one_that_ended(
    kube: FakeKube, connect: Any
) -> None:
    conn = connect(kube)
    intent = {"intent": "start", "vm": "web-1", "target": "node-b", "mode": "live"}
    other = start(conn, "db-1", "node-b", request_id="req-db")  # another request's VMIM
    job = start(conn, "web-1", "node-b", request_id="req-web")
    seen: list[JobStatus] = []
    poll_until(backend_of(conn), job, lambda s: s.phase.terminal, seen)
    again = backend_of(connect(kube))
    found = again.attach(JobRef.load({**intent, "request_id": "req-web"}))
    assert found.id == job.id != other.id
    assert found.ref.get("uid") == job.ref.get("uid")
    status = again.poll(found)
    assert (status.phase, status.vm_host) == (Phase.COMPLETED, "node-b")
    with pytest.raises(NotFound):
        again.attach(JobRef.load({**intent, "request_id": "req-never-made"}))
    outage = kube.outage(5.0)
    try:
        with pytest.raises(ConnectionFailed):
            again.attach(JobRef.load({**intent, "request_id": "req-web"}))
    finally:
        outage.end()


@pytest.mark.parametrize("mode", ["refuse", "reset"])
def test_an_api_outage_is_connection_failed_never_a_stale_status(
    make_kube: Any, connect: Any, timing: Any, mode: str
) -> None:
    kube: FakeKube = make_kube(timing=timing(running=1.0))
    conn = connect(kube)
    backend = backend_of(conn)
    job = start(conn, "web-1", "node-b")
    seen: list[JobStatus] = []
    poll_until(backend, job, lambda s: s.phase is Phase.TRANSFERRING, seen)
    outage = kube.outage(30.0, mode)  # ended below, once checked
    try:
        watches = [backend.informer(p) for p in (VMIMS, "virtualmachineinstances")]
        until(backend, lambda: all(w is not None and w.last_error for w in watches))
        with pytest.raises(ConnectionFailed):
            backend.poll(job)
        with pytest.raises(ConnectionFailed):
            backend.locate("web-1")
    finally:
        outage.end()
    end = poll_until(backend, job, lambda s: s.phase.terminal, seen)
    assert (end.phase, end.vm_host) == (Phase.COMPLETED, "node-b")


def test_the_record_says_contact_was_lost_during_an_outage(
    make_kube: Any, connect: Any, timing: Any
) -> None:
    kube: FakeKube = make_kube(timing=timing(running=1.5))
    conn = connect(kube)
    m = conn.migrate("web-1", to="node-b")
    until(backend_of(conn), lambda: m.record.phase is Phase.TRANSFERRING)
    kube.outage(0.8, "refuse")
    record = m.wait(30)
    assert record.phase is Phase.COMPLETED
    assert record.vm_host == "node-b"
    assert any("lost contact" in w for w in record.warnings), record.warnings


# ---- newer phases, missing APIs, a cluster with its own mind ---------------------------------


def test_unknown_vmim_phases_are_kept_as_text_and_read_from_the_vmi(
    make_kube: Any, connect: Any, timing: Any
) -> None:
    kube: FakeKube = make_kube(
        timing=timing(inserted=0.3),
        inserted_phases={"Synchronizing": "Pending", "WaitingForSync": "Running"},
    )
    conn = connect(kube)
    backend = backend_of(conn)
    natives: list[str] = []
    real_poll = backend.poll

    def poll(job: Job) -> JobStatus:
        status = real_poll(job)
        natives.append(status.native)
        return status

    backend.poll = poll  # type: ignore[method-assign]
    record = conn.migrate("web-1", to="node-b").wait(30)
    assert record.phase is Phase.COMPLETED
    assert record.vm_host == "node-b"
    assert any(n.startswith("Synchronizing (phase unknown to vmmove") for n in natives), natives
    assert any(n.startswith("WaitingForSync (phase unknown to vmmove") for n in natives), natives


def test_without_a_migration_policy_api_the_cluster_defaults_apply(
    make_kube: Any, connect: Any
) -> None:
    kube: FakeKube = make_kube(migration_policy_api=False)
    conn = connect(kube)
    record = conn.migrate("web-1", to="node-b", policy="converge").wait(30)
    assert record.phase is Phase.COMPLETED
    assert record.job_ref["policy"].startswith("cluster defaults (no MigrationPolicy API")
    text = "\n".join(record.warnings)
    assert "no MigrationPolicy API" in text
    assert "allowPostCopy=False" in text  # the cluster's settings, named
    assert "post-copy is not allowed" in text  # the step the cluster decides
    assert POLICY_LABEL not in labels(kube, "web-1")
    # ...and the steps the cluster decides are counted among the skipped steps
    decided = [s for s in record.steps if s.reason == "decided by the platform"]
    assert any("post-copy is not allowed" in s.step for s in decided), record.steps
    assert not any(s.applied for s in decided)


def test_the_node_the_cluster_chose_is_the_one_reported(make_kube: Any, connect: Any) -> None:
    kube: FakeKube = make_kube(ignore_added_node_selector=True)
    kube.add_node("node-d")  # the emptiest: the scheduler's pick when it ignores the selector
    conn = connect(kube)
    backend = backend_of(conn)
    job = start(conn, "web-1", "node-b")
    seen: list[JobStatus] = []
    end = poll_until(backend, job, lambda s: s.phase.terminal, seen)
    assert (end.phase, end.vm_host) == (Phase.COMPLETED, "node-d")
    assert backend.locate("web-1") == "node-d" == kube.vmi_node("web-1")


# ---- admission ---------------------------------------------------------------------------


def _api_exc(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason="x")
    exc.body = json.dumps({"kind": "Status", "message": message, "code": status})
    return exc


DENIED = 'admission webhook "migration-create-validator.kubevirt.io" denied the request: '
WRAPPED = 'virtualmachineinstancemigrations.kubevirt.io "m" is forbidden: ' + DENIED


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (400, DENIED + "in-flight migration detected. Active migration job (u)", Conflict),
        (403, WRAPPED + "in-flight migration detected. Active migration job (u)", Conflict),
        (400, DENIED + 'the VMI "default/x" does not exist', NotFound),
        (403, WRAPPED + "Cannot migrate VMI, Reason: HostDevice, Message: no", InvalidInput),
        (422, DENIED + "vmiName is missing", InvalidInput),
        (
            400,
            DENIED + "LiveMigration feature gate is not enabled in kubevirt-config",
            InvalidInput,
        ),
        (
            403,
            'virtualmachineinstancemigrations.kubevirt.io is forbidden: User "u" cannot create',
            AuthenticationFailed,
        ),
    ],
)
def test_admission_denials_map_by_message_and_code(status: int, message: str, kind: type) -> None:
    assert type(api_error(_api_exc(status, message), "create")) is kind


def test_a_wrapped_in_flight_denial_is_a_conflict(
    make_kube: Any, connect: Any, timing: Any
) -> None:
    kube: FakeKube = make_kube(timing=timing(running=30.0), wrap_denials=True)
    first = connect(kube)
    job = start(first, "db-1", "node-b")
    with pytest.raises(Conflict, match="in-flight migration"):
        start(connect(kube), "db-1", "node-b")
    first.backend.abort(job)


# ---- two clients, one VMI --------------------------------------------------------------------


def test_two_clients_racing_for_one_vmi_run_exactly_one_migration(
    make_kube: Any, connect: Any, timing: Any
) -> None:
    kube: FakeKube = make_kube(timing=timing(running=1.0), admission_window=5.0)
    a, b = connect(kube), connect(kube)
    job = start(a, "web-1", "node-b")
    winner_label = labels(kube, "web-1")[POLICY_LABEL]
    with pytest.raises(Conflict) as info:
        start(b, "web-1", "node-b")  # admitted too: KubeVirt's check is not atomic
    assert job.id in str(info.value)  # names the migration that won
    assert "vmmove deleted it" in str(info.value)
    assert kube.wait_for(lambda: [o["metadata"]["name"] for o in kube.list(VMIM)] == [job.id], 10)
    assert labels(kube, "web-1")[POLICY_LABEL] == winner_label
    seen: list[JobStatus] = []
    end = poll_until(backend_of(a), job, lambda s: s.phase.terminal, seen)
    assert (end.phase, end.vm_host) == (Phase.COMPLETED, "node-b")


def test_of_two_admitted_migrations_only_a_provably_older_one_is_kept(
    make_kube: Any, connect: Any, timing: Any
) -> None:
    kube: FakeKube = make_kube(timing=timing(running=30.0), admission_window=5.0)
    backend = backend_of(connect(kube))
    rt = kube.store.kind(VMIM)
    body = {"spec": {"vmiName": "web-1"}, "metadata": {"generateName": "m-"}}
    first = kube.store.create(rt, "default", body)
    second = kube.store.create(rt, "default", body)
    # One second older than the other: the older one's client keeps it...
    earlier = {
        **first,
        "metadata": {**first["metadata"], "creationTimestamp": "2000-01-01T00:00:00Z"},
    }
    backend._one_migration_only("web-1", earlier)
    # ...the younger one's client (and one whose rival is not provably younger) yields it.
    with pytest.raises(Conflict, match=first["metadata"]["name"]):
        backend._one_migration_only("web-1", second)
    gone = second["metadata"]["name"]
    assert kube.wait_for(lambda: kube.get(VMIM, gone) is None, 10)
    assert kube.get(VMIM, first["metadata"]["name"]) is not None


# ---- cleanup -----------------------------------------------------------------------------


def test_a_policy_label_whose_removal_failed_is_retried(
    make_kube: Any, connect: Any, timing: Any
) -> None:
    kube: FakeKube = make_kube(timing=timing(running=0.5))
    conn = connect(kube)
    m = conn.migrate("web-1", to="node-b")
    until(backend_of(conn), lambda: m.record.phase is Phase.TRANSFERRING)
    assert POLICY_LABEL in labels(kube, "web-1")
    kube.api_fault(method="PATCH", path="virtualmachineinstances/web-1$", status=500, times=2)
    assert m.wait(30).phase is Phase.COMPLETED

    def statuses() -> list[int]:
        patches = kube.server.requests_matching("PATCH", "virtualmachineinstances/web-1$")
        return [r.status for r in patches]

    # Two refusals, then the worker's retry goes through (the log is written after it).
    assert kube.wait_for(lambda: statuses()[-3:] == [500, 500, 200], 10), statuses()
    assert POLICY_LABEL not in labels(kube, "web-1")


def test_connect_removes_policy_labels_left_behind(make_kube: Any, connect: Any) -> None:
    kube: FakeKube = make_kube()
    rt = kube.store.kind(VMI)

    def label(vmi: str, at: float) -> None:
        def change(o: dict[str, Any]) -> None:
            o["metadata"].setdefault("labels", {})[POLICY_LABEL] = "vmmove-left"
            o["metadata"].setdefault("annotations", {})[LABELLED_AT] = str(int(at))

        kube.store.mutate(rt, "default", vmi, change)

    label("web-1", 0)  # left behind long ago
    label("db-1", time.time())  # just put there by a client about to create its VMIM
    label("legacy-1", 0)  # its migration is still going
    kube.store.create(
        kube.store.kind(VMIM),
        "default",
        {"metadata": {"name": "m"}, "spec": {"vmiName": "legacy-1"}},
    )
    conn = connect(kube)
    assert backend_of(conn).swept_labels == ["web-1"]
    assert POLICY_LABEL not in labels(kube, "web-1")
    assert LABELLED_AT not in (kube.get(VMI, "web-1") or {})["metadata"].get("annotations", {})
    assert labels(kube, "db-1")[POLICY_LABEL] == "vmmove-left"
    assert labels(kube, "legacy-1")[POLICY_LABEL] == "vmmove-left"


# ---- where the VM runs -------------------------------------------------------------------


def test_locate_reports_only_where_the_vm_runs(kube: FakeKube, connect: Any) -> None:
    backend = backend_of(connect(kube))
    assert backend.locate("web-1") == "node-a"
    assert backend.locate("batch-1") == "node-a"  # stopped, pinned: where inventory has it
    assert backend.locate("no-such-vm") is None

    def pause(o: dict[str, Any]) -> None:
        o["status"]["conditions"].append({"type": "Paused", "status": "True"})

    kube.store.mutate(kube.store.kind(VMI), "default", "web-1", pause)
    assert backend.locate("web-1") is None  # paused: not running anywhere


# ---- figures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "low", "high"),
    [
        ("2026-01-01T00:00:10Z", "2026-01-01T00:00:10Z", 1.4, 1.6),  # stamps: 0 s
        ("2026-01-01T00:00:10Z", "2026-01-01T00:00:13Z", 1.4, 1.6),  # stamps: 3 s
        ("2026-01-01T00:00:10Z", "2026-01-01T00:00:11Z", 1.4, 1.6),  # stamps: 1 s
        (None, None, 1.4, 1.6),  # no stamps: vmmove's clock alone
    ],
)
def test_total_time_is_held_within_what_vmmoves_clock_saw(
    start: str | None, end: str | None, low: float, high: float
) -> None:
    from types import SimpleNamespace

    from vmmove_kubevirt.backend import _Live

    state = {"migrationUid": "u", "startTimestamp": start, "endTimestamp": end}
    vmi = {"status": {"phase": "Running", "nodeName": "n", "migrationState": state}}
    job = Job(id="m", vm="vm", source="a", target="b", mode=MigrationMode.LIVE)
    # Seen transferring from t=100.0 to t=101.4, seen over at t=101.5 (polls every 0.1 s).
    st = _Live(job=job, name="m", uid="u", vmi="vm", run_first=100.0, run_last=101.4, over_at=101.5)
    figures = KubeVirtBackend._figures(SimpleNamespace(poll_interval=0.1), vmi, st)  # type: ignore[arg-type]
    assert figures is not None
    assert figures.total_time is not None
    assert low <= figures.total_time <= high


def test_a_cold_move_whose_answer_was_lost_is_found_by_its_request_id(
    kube: FakeKube, connect: Any
) -> None:
    from vmmove import ConnectionFailed, NotFound
    from vmmove.model import MigrationSpec

    conn = connect(kube)
    backend = backend_of(conn)
    intent = {"intent": "start", "vm": "batch-1", "target": "node-b", "mode": "cold"}
    with pytest.raises(NotFound):  # nothing carries this request: the core moves it again
        backend.attach(JobRef.load({**intent, "request_id": "req-cold"}))
    # The pin is written, the answer lost: the VM object carries the request id.
    kube.api_fault(
        method="PATCH", path="virtualmachines/batch-1$", body="request-id", drop_response=True
    )
    vm, target = conn.vm("batch-1"), conn.host("node-b")
    with pytest.raises(ConnectionFailed):
        backend.relocate(vm, target, MigrationSpec(vm=vm.id), request_id="req-cold")
    job = backend.attach(JobRef.load({**intent, "request_id": "req-cold"}))
    status = backend.poll(job)
    assert (status.phase, status.vm_host) == (Phase.COMPLETED, "node-b")


def test_the_record_says_so_when_the_cluster_chose_another_node(
    make_kube: Any, connect: Any
) -> None:
    kube: FakeKube = make_kube(ignore_added_node_selector=True)
    kube.add_node("node-d")  # the emptiest: the scheduler's pick when it ignores the selector
    conn = connect(kube)
    record = conn.migrate("web-1", to="node-b").wait(60)
    assert record.phase is Phase.COMPLETED
    assert record.vm_host == "node-d" == kube.vmi_node("web-1")
    assert record.located_at is not None
    assert any("node-d" in w and "not on node-b" in w for w in record.warnings), record.warnings
