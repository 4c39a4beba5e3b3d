"""The vSphere backend against the platform variants of PLATFORMS.md, each switched on in the
simulator (testbed README, "Platform variants"): a vCenter restart while a migration is
polled, lost and late answers to RelocateVM_Task, refusals in both shapes, the pool-less
compatibility check, and tasks that vCenter forgets."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import vmmove
from vmmove.backend import JobRef
from vmmove.errors import (
    Conflict,
    ConnectionFailed,
    NotFound,
    PrecheckFailed,
    ReservationRefused,
)
from vmmove.events import EventKind
from vmmove.machine import Phase
from vmmove.model import MigrationMode, MigrationSpec
from vmmove.policy import PRESETS

pytestmark = pytest.mark.integration

Connect = Callable[..., vmmove.Connection]
VM = "DC0_C0_RP0_VM0"
TARGET = "DC0_C1_H1"  # another cluster: every move here also takes DC0_C1's pool

# How the engine calls check(): the mode and the policy already resolved.
RESOLVED: dict[str, Any] = {"mode": MigrationMode.LIVE, "policy": PRESETS["balanced"]}


def _until_progress(m: vmmove.Migration, percent: float) -> None:
    for event in m.events(timeout=30):
        if event.kind is EventKind.PROGRESS and event.progress.percent > percent:
            return
    raise AssertionError(f"the migration never passed {percent}%: {m.record}")


def _until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy (the condition, not a delay)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        time.sleep(0.05)


def _poll_until_terminal(backend: Any, job: Any, timeout: float = 30.0) -> Any:
    def terminal() -> Any:
        status = backend.poll(job)
        return status if status.phase.terminal else None

    return _until(terminal, timeout, "a terminal status")


def _outcome(m: vmmove.Migration) -> Any:
    try:
        return m.wait(30)
    except vmmove.MigrationError:
        return m.record


def _start(conn: vmmove.Connection, vm: str, target: str, request_id: str) -> Any:
    """backend.start as the engine calls it (the intent the engine saves, and the job)."""
    info, host = conn.vm(vm), conn.host(target)
    intent = {
        "intent": "start",
        "vm": info.id,
        "target": host.id,
        "mode": "live",
        "request_id": request_id,
    }
    spec = MigrationSpec(vm=info.id, target=host.id)
    call = lambda: conn.backend.start(  # noqa: E731
        info,
        host,
        spec,
        MigrationMode.LIVE,
        policy=PRESETS["balanced"],
        needs=frozenset(),
        reservation=None,
        request_id=request_id,
    )
    return intent, call


# ---- a vCenter restart -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("inflight", "down", "lands"),
    [("lost", 1.0, "source"), ("commit", 0.0, "target")],
    ids=["migration-lost-503-for-1s", "migration-committed"],
)
def test_vcenter_restart_while_a_migration_is_polled(
    make_estate: Callable[..., Any], connect_to: Connect, inflight: str, down: float, lands: str
) -> None:
    """The key case: sessions, connections and the task all die with the restart. The backend
    logs in again, finds the task gone, and the record ends with the host the VM really runs
    on: the source when the restart lost the migration, the target when the hosts had
    committed it. Never "location unknown"."""
    estate = make_estate()
    estate.set_extra(VM, "vmmove.migrateDuration", "4s")
    with connect_to(estate.sim) as conn:
        vm, target = conn.vm(VM), conn.host(TARGET)
        logins = conn.backend.session.generation
        m = conn.migrate(vm.id, to=target.id, mode=MigrationMode.LIVE)
        _until_progress(m, 10)
        report = estate.sim.restart(down=down, inflight=inflight)
        task = m.record.job_ref["task"]
        assert task in report["dropped_tasks"]
        assert task in report["lost_migrations" if inflight == "lost" else "committed"]
        record = _outcome(m)
        assert conn.backend.session.generation > logins  # it logged in again
    estate.reconnect()
    expected = target.id if lands == "target" else vm.host
    assert record.vm_host == expected
    assert estate.host(estate.placement(VM)[0])._moId == expected
    if lands == "target":
        assert record.phase is Phase.COMPLETED
    else:
        assert record.phase is Phase.FAILED
        assert record.error is not None
        assert f"task {task} is gone from vCenter" in record.error
        assert "did not move" in record.error


def test_vcenter_restart_during_a_cold_move_powers_the_vm_on_again(
    make_estate: Callable[..., Any], connect_to: Connect
) -> None:
    """A cold move of a running VM loses its relocation to the restart: the VM is stopped on
    its source. The backend's poll says the task is gone and the VM did not move; the core
    powers it on again there before it reports the failure."""
    estate = make_estate()
    estate.set_extra(VM, "vmmove.migrateDuration", "4s")
    with connect_to(estate.sim) as conn:
        vm = conn.vm(VM)
        m = conn.migrate(vm.id, to=TARGET, mode=MigrationMode.COLD)
        _until(lambda: any(t.state == "running" for t in estate.tasks(VM)), what="the relocation")
        estate.sim.restart()
        record = _outcome(m)
    estate.reconnect()
    assert record.phase is Phase.FAILED
    assert record.vm_host == vm.host
    assert record.error is not None
    assert "is gone from vCenter" in record.error
    host, _, _, power = estate.placement(VM)
    assert (estate.host(host)._moId, power) == (vm.host, "poweredOn")


def test_missing_set_not_authenticated_logs_in_again_and_reads_again(
    make_estate: Callable[..., Any], connect_to: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a restart RetrievePropertiesEx answers with a NotAuthenticated fault per property
    in missingSet rather than faulting the call. The backend must not read that as a VM
    without a host: it logs in again and reads again."""
    estate = make_estate()
    with connect_to(estate.sim) as conn:
        backend, vm = conn.backend, conn.vm(VM)
        session = backend.session
        seen: list[str] = []
        check = session._check_missing

        def spy(item: Any) -> None:
            seen.extend(type(m.fault).__name__ for m in item.missingSet or ())
            check(item)

        monkeypatch.setattr(session, "_check_missing", spy)
        logins = session.generation
        estate.sim.restart()

        def located() -> str | None:
            try:
                return backend.locate(vm.id)
            except ConnectionFailed:  # the TCP connection from before the restart is closed
                return None

        assert _until(located, what="locate") == vm.host
        assert "vim.fault.NotAuthenticated" in seen
        assert session.generation == logins + 1
        assert {v.name: v.host for v in conn.vms()}[VM] == vm.host  # the view is made again


def test_other_missing_set_faults_are_errors_naming_the_fault(
    vcsim: Any, connect_to: Connect
) -> None:
    from pyVmomi import vim, vmodl

    pc = vmodl.query.PropertyCollector
    with connect_to(vcsim) as conn:
        session = conn.backend.session
        item = pc.ObjectContent(
            obj=vim.VirtualMachine("vm-42"),
            propSet=[],
            missingSet=[
                pc.MissingProperty(
                    path="runtime.host", fault=vim.fault.NoPermission(privilegeId="System.Read")
                ),
                pc.MissingProperty(path="name", fault=vmodl.fault.SystemError(reason="x")),
            ],
        )
        with pytest.raises(ConnectionFailed, match=r"'runtime.host' of vm-42: NoPermission") as e:
            session._check_missing(item)
        assert "1 more" in str(e.value)
        authless = pc.ObjectContent(
            obj=vim.VirtualMachine("vm-42"),
            missingSet=[pc.MissingProperty(path="name", fault=vim.fault.NotAuthenticated())],
        )
        with pytest.raises(vim.fault.NotAuthenticated):  # for call() to log in again
            session._check_missing(authless)


def test_locate_raises_while_vcenter_cannot_be_reached(
    make_estate: Callable[..., Any], connect_to: Connect
) -> None:
    estate = make_estate()
    conn = connect_to(estate.sim)
    try:
        vm = conn.vm(VM)
        estate.sim.restart(down=60)
        for _ in range(3):  # the dropped connection, then 503 from the proxy
            with pytest.raises(ConnectionFailed):
                conn.backend.locate(vm.id)
        estate.sim.stop()
        with pytest.raises(ConnectionFailed, match="refused"):
            conn.backend.locate(vm.id)
    finally:
        conn.detach()


# ---- lost and late answers ------------------------------------------------------------------
def test_lost_start_answer_finds_the_task_vcenter_started(
    make_estate: Callable[..., Any], connect_to: Connect
) -> None:
    """vCenter acts on RelocateVM_Task but the answer never arrives: start raises
    ConnectionFailed, and attach(intent) finds the relocation task the request began."""
    estate = make_estate()
    estate.set_extra(VM, "vmmove.answer", "drop")
    with connect_to(estate.sim) as conn:
        intent, start = _start(conn, VM, TARGET, "rec-1-aa")
        with pytest.raises(ConnectionFailed):
            start()
        (task,) = _until(lambda: estate.tasks(VM), what="the relocation task")
        job = conn.backend.attach(JobRef.load(intent))
        assert (job.id, job.vm, job.target) == (task.key, intent["vm"], intent["target"])
        assert job.ref.get("request_id") == "rec-1-aa"
        assert conn.backend.attach(JobRef.load(intent)) == job  # asked again: the same job
        status = _poll_until_terminal(conn.backend, job)
        assert (status.phase, status.vm_host) == (Phase.COMPLETED, intent["target"])


def test_lost_start_answer_through_the_engine(
    make_estate: Callable[..., Any], connect_to: Connect
) -> None:
    estate = make_estate()
    estate.set_extra(VM, "vmmove.answer", "drop")
    with connect_to(estate.sim) as conn:
        target = conn.host(TARGET)
        record = conn.migrate(VM, to=target.id).wait(30)
    assert (record.phase, record.vm_host) == (Phase.COMPLETED, target.id)
    assert any("answer to the start request was lost" in w for w in record.warnings)
    (task,) = estate.tasks(VM)
    assert record.job_ref["task"] == task.key


def test_late_start_answer_is_found_once_vcenter_applies_it(
    make_estate: Callable[..., Any], connect_to: Connect
) -> None:
    """The connection drops at once and vCenter applies the request 1.5 s later: attach says
    NotFound until then, and the job afterwards."""
    estate = make_estate()
    estate.set_extra(VM, "vmmove.answer", "late:1.5s")
    with connect_to(estate.sim) as conn:
        intent, start = _start(conn, VM, TARGET, "rec-2-bb")
        with pytest.raises(ConnectionFailed):
            start()
        with pytest.raises(NotFound, match="yet"):
            conn.backend.attach(JobRef.load(intent))

        def attached() -> Any:
            try:
                return conn.backend.attach(JobRef.load(intent))
            except NotFound:
                return None

        job = _until(attached, what="the late task")
        assert job.id == estate.tasks(VM)[-1].key
        assert _poll_until_terminal(conn.backend, job).vm_host == intent["target"]


def test_attach_intent_ignores_tasks_from_before_the_request(
    make_estate: Callable[..., Any], connect_to: Connect
) -> None:
    """vCenter cannot carry the request id, so the time of the request bounds the match: an
    earlier relocation of the same VM to the same target is not this request's job."""
    estate = make_estate()
    vim = estate.vim
    host = estate.host(TARGET)
    earlier = estate.vm(VM).RelocateVM_Task(
        spec=vim.vm.RelocateSpec(host=host, pool=host.parent.resourcePool)
    )
    assert estate.wait(earlier).state == "success"
    with connect_to(estate.sim) as conn:
        vm = conn.vm(VM)
        # Written now, after the earlier relocation (queued over 1.1 s ago) ended.
        intent = {
            "intent": "start",
            "vm": vm.id,
            "target": host._moId,
            "mode": "live",
            "request_id": "rec-3-cc",
            "at": str(time.time()),
        }
        with pytest.raises(NotFound):
            conn.backend.attach(JobRef.load(intent))
        other = estate.host("DC0_C1_H0")
        later = estate.vm(VM).RelocateVM_Task(spec=vim.vm.RelocateSpec(host=other))
        assert conn.backend.attach(JobRef.load(intent)).id == later._moId


# ---- refusals in both shapes ----------------------------------------------------------------
REFUSALS = [
    ("InvalidHostState", PrecheckFailed),
    ("InvalidPowerState", PrecheckFailed),
    ("TaskInProgress", Conflict),
    ("InsufficientResourcesFault", ReservationRefused),
    ("MigrationNotReady", PrecheckFailed),
]


@pytest.fixture(scope="module")
def refusing(start_vcsim: Callable[..., Any], estate_type: type) -> Iterator[Any]:
    """One simulator for the refusal cases: a refused move leaves everything as it was."""
    helper = estate_type(start_vcsim())
    yield helper
    helper.close()
    helper.sim.stop()


@pytest.mark.parametrize("shape", ["queued", "started"])
@pytest.mark.parametrize(("fault", "error"), REFUSALS, ids=[f for f, _ in REFUSALS])
def test_refusals_are_classified_by_fault_type(
    refusing: Any, connect_to: Connect, fault: str, error: type[Exception], shape: str
) -> None:
    """vCenter refuses with these faults as a task that fails while queued (no startTime)
    or as one that starts and then fails: both are the same refusal, the VM untouched."""
    estate = refusing
    before = estate.placement(VM)
    directive = f"refuse:{fault}" if shape == "queued" else f"fail@0:{fault}"
    estate.set_extra(VM, "vmmove.inject", directive)
    with connect_to(estate.sim) as conn:
        vm = conn.vm(VM)
        m = conn.migrate(vm.id, to=TARGET)
        with pytest.raises(error) as info:
            m.wait(30)
        assert m.record.vm_host == vm.host
        assert fault in str(info.value) or any(
            p.code == fault for p in getattr(info.value, "problems", ())
        )
        if fault == "TaskInProgress":  # names the other task and who holds it
            assert "VirtualMachine.reconfigure by other-client" in str(info.value)
    task = [t for t in estate.tasks(VM) if t.state == "error"][-1]
    assert (task.startTime is not None) == (shape == "started")
    assert estate.placement(VM) == before


def test_real_refusals_when_the_task_starts_first(
    make_estate: Callable[..., Any], connect_to: Connect
) -> None:
    """-validation-faults running: vCenter's own checks fail the task after it started."""
    estate = make_estate(validation_faults="running")
    vim = estate.vim
    estate.set_extra("DC0_C0_RP0_VM1", "vmmove.migrateDuration", "5s")
    host = estate.host("DC0_C1_H0")
    busy = estate.vm("DC0_C0_RP0_VM1").RelocateVM_Task(
        spec=vim.vm.RelocateSpec(host=host, pool=host.parent.resourcePool)
    )
    estate.maintenance("DC0_C1_H1")
    with connect_to(estate.sim) as conn:
        backend = conn.backend
        _, start = _start(conn, "DC0_C0_RP0_VM1", "DC0_C0_H1", "rec-4-dd")
        job = start()  # the engine's precheck would see TaskInProgress first: ask vCenter
        with pytest.raises(Conflict, match=f"busy with task {busy._moId}"):
            _poll_until_terminal(backend, job)
        _, start = _start(conn, VM, "DC0_C1_H1", "rec-5-ee")
        job = start()
        with pytest.raises(PrecheckFailed) as info:
            _poll_until_terminal(backend, job)
        assert [p.code for p in info.value.problems] == ["InvalidHostState"]
        assert conn.vm(VM).host == job.source
    started = [t for t in estate.tasks(VM) if t.state == "error"]
    assert started
    assert all(t.startTime is not None for t in started)
    busy.CancelTask()


# ---- compatibility checks that disagree ------------------------------------------------------
def test_full_spec_check_is_the_authority_across_clusters(
    make_estate: Callable[..., Any], connect_to: Connect
) -> None:
    """QueryVMotionCompatibilityEx_Task (no pool in its spec) flags a host in another cluster;
    CheckRelocate_Task with that cluster's pool accepts it: a warning, not a refusal."""
    estate = make_estate(compat_ex_poolless=True)
    with connect_to(estate.sim) as conn:
        vm = conn.vm(VM)
        problems = conn.check(vm.id, to=TARGET)
        assert [p for p in problems if p.severity == "error"] == []
        (warning,) = problems
        assert warning.code == "InvalidArgument"
        assert "spec.pool" in warning.message
        assert "CheckRelocate_Task with the pool of DC0_C1" in warning.message
        (near,) = [h for h in conn.hosts() if h.cluster == "DC0_C0" and h.id != vm.host]
        assert conn.check(vm.id, to=near.id) == []  # same cluster: nothing to disagree on
        record = conn.migrate(vm.id, to=TARGET).wait(30)
        assert record.phase is Phase.COMPLETED
        assert any("spec.pool" in w for w in record.warnings)
        estate.maintenance("DC0_C1_H0")  # what the full-spec check refuses stays refused
        other, down = conn.vm("DC0_C0_RP0_VM1"), conn.host("DC0_C1_H0")
        spec = MigrationSpec(vm=other.id, mode=MigrationMode.LIVE)
        errors = [
            p
            for p in conn.backend.check(
                other, down, spec, mode=MigrationMode.LIVE, policy=PRESETS["balanced"]
            )
            if p.severity == "error"
        ]
        assert [p.code for p in errors] == ["InvalidHostState"]


# ---- tasks vCenter forgets --------------------------------------------------------------------
def test_a_task_forgotten_after_it_ended_is_settled_from_the_vms_host(
    make_estate: Callable[..., Any], connect_to: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    """-task-retention: the relocation ends, drops out of recentTask and its MoRef dies before
    the next poll. Poll reads the VM's host instead; so does a new client that attaches."""
    caplog.set_level(logging.WARNING, logger="vmmove.vsphere")
    estate = make_estate(task_retention="0.1s")
    with connect_to(estate.sim) as conn:
        _, start = _start(conn, VM, TARGET, "rec-6-ff")
        job = start()
        target = job.target
        _until(lambda: estate.placement(VM)[0] == TARGET, what="the move")
        _until(lambda: not estate.tasks(VM), what="vCenter to forget the task")
        status = conn.backend.poll(job)
        assert (status.phase, status.vm_host) == (Phase.COMPLETED, target)
        assert f"task {job.id} is gone from vCenter" in caplog.text
    with connect_to(estate.sim) as again:
        attached = again.backend.attach(job.ref)
        status = _poll_until_terminal(again.backend, attached)
        assert (status.phase, status.vm_host) == (Phase.COMPLETED, target)


def test_a_failed_task_forgotten_before_the_poll_ends_failed_on_the_source(
    make_estate: Callable[..., Any], connect_to: Connect
) -> None:
    estate = make_estate(task_retention="0.1s")
    estate.set_extra(VM, "vmmove.inject", "fail@20:MigrationFault:link lost")
    with connect_to(estate.sim) as conn:
        _, start = _start(conn, VM, TARGET, "rec-7-gg")
        job = start()
        # Only a finished task is forgotten (0.1 s after it ended): once none is left, the
        # injected failure has happened, whether or not anyone saw the task in error.
        _until(lambda: not estate.tasks(VM), what="vCenter to forget the task")
        status = conn.backend.poll(job)
        assert (status.phase, status.vm_host) == (Phase.FAILED, job.source)
        assert status.error is not None
        assert "did not move" in status.error


# ---- figures -----------------------------------------------------------------------------------
def test_cold_move_figures_cover_stop_relocate_and_start(
    make_estate: Callable[..., Any], connect_to: Connect
) -> None:
    """The core times a cold move from the shutdown request to the VM running on the target:
    more than the relocation task alone, and at least from its queueing to the power-on."""
    estate = make_estate()
    with connect_to(estate.sim) as conn:
        record = conn.migrate(VM, to=TARGET, mode=MigrationMode.COLD).wait(30)
    assert record.phase is Phase.COMPLETED
    on = estate.tasks(VM, "VirtualMachine.powerOn")[-1]  # [0]: the model's autostart
    (moved,) = estate.tasks(VM)
    relocation = (moved.completeTime - moved.queueTime).total_seconds()
    moved_to_on = (on.completeTime - moved.queueTime).total_seconds()
    assert record.figures.total_time is not None
    assert record.figures.total_time > relocation
    assert record.figures.total_time >= moved_to_on
