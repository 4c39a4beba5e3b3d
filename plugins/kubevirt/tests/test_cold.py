"""Cold migration on the fake cluster, orchestrated by the core (vmmove.cold) through this
backend's primitives: stop the VirtualMachine (requesting), move its pin (transferring),
start it on the target (switching_over); on every KubeVirt release line of the matrix (see
conftest). On KubeVirt 1.5 the connection declares choose_target=False (for live moves; the
capability is not per mode), so the tests let placement choose there, which in the sample
estate can only be node-b."""

from __future__ import annotations

from typing import Any

import pytest

from vmmove import Conflict, MigrationCancelled, NotFound, Phase, PowerState, PrecheckFailed
from vmmove.backend import JobRef
from vmmove.engine import Connection
from vmmove.model import MigrationSpec
from vmmove.testing.contract import check_events
from vmmove_kubevirt.testing import FakeKube

HOSTNAME = "kubernetes.io/hostname"


def to(conn: Connection, node: str) -> str | None:
    """``node``, or ``None`` (placement chooses) where targets cannot be named."""
    return node if conn.capabilities.choose_target else None


def vm_spec(kube: FakeKube, name: str) -> dict[str, Any]:
    return dict((kube.get("VirtualMachine", name) or {})["spec"])


def test_cold_migration_of_a_running_vm_stops_repins_and_starts_it(
    kube: FakeKube, connect: Any
) -> None:
    conn = connect(kube)
    m = conn.migrate("web-1", to=to(conn, "node-b"), mode="cold")
    check_events(list(m.events(timeout=30)))
    record = m.wait(0)
    assert record.vm_host == "node-b"
    history = [t.phase for t in record.history]
    assert history[2:5] == [Phase.REQUESTING, Phase.TRANSFERRING, Phase.SWITCHING_OVER]
    spec = vm_spec(kube, "web-1")
    assert spec["running"] is True
    assert spec["template"]["spec"]["nodeSelector"] == {HOSTNAME: "node-b"}
    assert kube.vmi_node("web-1") == "node-b"
    after = conn.vm("web-1")
    assert (after.host, after.power) == ("node-b", PowerState.RUNNING)
    assert any("guest restarts" in w for w in record.warnings)


def test_cold_migration_keeps_the_run_strategy(kube: FakeKube, connect: Any) -> None:
    kube.add_vm("rs-1", node="node-a", run_strategy="RerunOnFailure")
    conn = connect(kube)
    m = conn.migrate("rs-1", to=to(conn, "node-b"), mode="cold")
    assert kube.wait_for(lambda: vm_spec(kube, "rs-1")["runStrategy"] == "Halted", 10)
    record = m.wait(30)
    assert record.vm_host == "node-b" == kube.vmi_node("rs-1")
    vm = kube.get("VirtualMachine", "rs-1") or {}
    assert vm["spec"]["runStrategy"] == "RerunOnFailure"  # given back, not Always
    assert "vmmove.io/run-strategy" not in (vm["metadata"].get("annotations") or {})


def test_cold_migration_of_a_stopped_vm_moves_its_pin_only(kube: FakeKube, connect: Any) -> None:
    conn = connect(kube)
    record = conn.migrate("batch-1", to=to(conn, "node-b")).wait(30)  # auto: stopped -> cold
    assert record.mode.value == "cold"
    assert record.vm_host == "node-b"
    assert vm_spec(kube, "batch-1")["template"]["spec"]["nodeSelector"] == {HOSTNAME: "node-b"}
    assert kube.get("VirtualMachineInstance", "batch-1") is None
    after = conn.vm("batch-1")
    assert (after.host, after.power) == ("node-b", PowerState.STOPPED)


def test_cold_migration_of_a_bare_vmi_is_refused(kube: FakeKube, connect: Any) -> None:
    conn = connect(kube)
    m = conn.migrate("legacy-1", to=to(conn, "node-a"), mode="cold")
    with pytest.raises(PrecheckFailed) as info:
        m.wait(30)
    (problem,) = [p for p in info.value.problems if p.code == "bare-vmi"]
    assert "bare VirtualMachineInstance" in problem.message
    assert kube.vmi_node("legacy-1") == "node-b"


def test_cancel_during_a_cold_move_starts_the_vm_again_on_its_source(
    make_kube: Any, connect: Any, timing: Any
) -> None:
    kube: FakeKube = make_kube(timing=timing(vm_stop=30.0))
    conn = connect(kube)
    m = conn.migrate("web-1", to=to(conn, "node-b"), mode="cold")
    assert kube.wait_for(lambda: vm_spec(kube, "web-1")["running"] is False, 10)
    # the guest is shutting down on its source
    assert kube.wait_for(lambda: m.record.phase is Phase.REQUESTING, 10)
    assert m.cancel() is True
    with pytest.raises(MigrationCancelled) as info:
        m.wait(30)
    assert info.value.vm_host == "node-a"
    spec = vm_spec(kube, "web-1")
    assert spec["running"] is True
    # Pinned where it ran when it was stopped (so that it comes back there), never moved.
    assert spec["template"]["spec"]["nodeSelector"] == {HOSTNAME: "node-a"}
    assert kube.vmi_node("web-1") == "node-a"


def test_cold_fallback_after_an_aborted_live_migration(kube: FakeKube, connect: Any) -> None:
    from vmmove.policy import BudgetShare, ColdFallback, Policy, Step

    policy = Policy(
        name="fallback-now",
        steps=(Step(trigger=BudgetShare(share=1e-6), action=ColdFallback()),),
    )
    conn = connect(kube)
    m = conn.migrate("web-1", to=to(conn, "node-b"), policy=policy)
    record = m.wait(30)
    notes = [(t.phase, t.note) for t in record.history]
    assert (Phase.REQUESTING, "falling back to cold migration") in notes
    assert record.mode.value == "cold"
    assert record.vm_host == "node-b" == kube.vmi_node("web-1")
    assert vm_spec(kube, "web-1")["template"]["spec"]["nodeSelector"] == {HOSTNAME: "node-b"}


def test_relocate_refuses_a_running_vm_and_a_forced_stop_has_no_grace_period(
    kube: FakeKube, connect: Any
) -> None:
    conn = connect(kube)
    backend = conn.backend
    vm, target = conn.vm("web-1"), conn.host("node-b")
    with pytest.raises(Conflict, match="must be stopped"):
        backend.relocate(vm, target, MigrationSpec(vm=vm.id), request_id="r-running")
    assert "nodeSelector" not in vm_spec(kube, "web-1")["template"]["spec"]  # nothing moved
    before = kube.get("VirtualMachineInstance", "web-1") or {}
    assert before["spec"].get("terminationGracePeriodSeconds") != 0
    backend.power_off(vm, force=True)
    vmi = kube.get("VirtualMachineInstance", "web-1")
    assert vmi is None or vmi["spec"]["terminationGracePeriodSeconds"] == 0
    assert vm_spec(kube, "web-1")["running"] is False


def test_a_move_is_found_again_by_its_request_id_and_read_from_the_vm_object(
    kube: FakeKube, connect: Any
) -> None:
    conn = connect(kube)
    backend = conn.backend
    vm, target = conn.vm("batch-1"), conn.host("node-b")
    with pytest.raises(NotFound):  # no move made by this request (yet)
        backend.attach(
            JobRef.load({"intent": "start", "mode": "cold", "vm": vm.id, "request_id": "r-1"})
        )
    job = backend.relocate(vm, target, MigrationSpec(vm=vm.id), request_id="r-1")
    assert backend.poll(job).phase is Phase.COMPLETED
    again = backend.attach(
        JobRef.load({"intent": "start", "mode": "cold", "vm": vm.id, "request_id": "r-1"})
    )
    status = backend.poll(again)
    assert (status.phase, status.vm_host) == (Phase.COMPLETED, "node-b")
    # Someone pins it elsewhere: the job's own report says so (never invented success).
    kube.store.mutate(
        kube.store.kind("VirtualMachine"),
        "default",
        "batch-1",
        lambda o: o["spec"]["template"]["spec"].update(nodeSelector={HOSTNAME: "node-c"}),
    )
    assert backend.poll(backend.attach(job.ref)).phase is Phase.FAILED
