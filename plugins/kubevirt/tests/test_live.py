"""Live migration on the fake cluster: cancels, failures, one migration per VMI, target
selection, policies, post-copy and re-attaching; on every KubeVirt release line of the
matrix (see conftest). KubeVirt 1.5 cannot be told the target node: there the tests let the
scheduler choose, which in the sample estate can only be node-b."""

from __future__ import annotations

from typing import Any

import pytest

import vmmove
from vmmove import (
    Conflict,
    MigrationCancelled,
    MigrationFailed,
    MigrationMode,
    Phase,
    PrecheckFailed,
)
from vmmove.engine import Connection, Migration
from vmmove.events import EventKind
from vmmove.policy import PRESETS
from vmmove.testing.contract import check_events
from vmmove_kubevirt.policy import POLICY_LABEL
from vmmove_kubevirt.testing import FakeKube

VMIM = "VirtualMachineInstanceMigration"
VMI = "VirtualMachineInstance"


def vmim_phase(kube: FakeKube, vmi: str) -> str | None:
    for obj in kube.list(VMIM):
        if obj["spec"]["vmiName"] == vmi:
            return str((obj.get("status") or {}).get("phase") or "")
    return None


def migration_state(kube: FakeKube, vmi: str) -> dict[str, Any]:
    obj = kube.get(VMI, vmi) or {}
    return dict((obj.get("status") or {}).get("migrationState") or {})


def phases(m: Migration) -> list[Phase]:
    return [t.phase for t in m.record.history]


def to(conn: Connection, node: str) -> str | None:
    """``node``, or ``None`` (the scheduler chooses) where the cluster cannot be told."""
    return node if conn.capabilities.choose_target else None


@pytest.mark.one_release
def test_live_migration_pins_the_target_with_added_node_selector(
    make_kube: Any, connect: Any
) -> None:
    kube: FakeKube = make_kube()
    kube.add_node("node-d")  # emptiest node: the scheduler's own pick, were it free to choose
    conn: Connection = connect(kube)
    m = conn.migrate("db-1", to="node-b")
    events = list(m.events(timeout=30))
    check_events(events)
    record = m.wait(0)
    assert record.vm_host == "node-b" == kube.vmi_node("db-1")
    (vmim,) = kube.list(VMIM)
    assert vmim["spec"]["addedNodeSelector"] == {"kubernetes.io/hostname": "node-b"}
    assert vmim["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "vmmove"
    assert record.job_ref["migration"] == vmim["metadata"]["name"]
    # KubeVirt has no byte counts: progress is the phase's, every byte figure is None.
    transfer = [e for e in events if e.kind is EventKind.PROGRESS and e.phase is Phase.TRANSFERRING]
    assert transfer, "never observed Running"
    assert all(e.progress.data_total is None and e.progress.percent == 5.0 for e in transfer)
    assert Phase.SWITCHING_OVER in phases(m)  # migrationState.completed seen before Succeeded
    assert record.figures.total_time is not None
    assert record.figures.total_time >= 0.7  # db-1 runs 1 s: never the 1-s stamps' 0.0
    assert record.figures.data_sent is None


@pytest.mark.one_release  # release-independent: success, or nothing handed over
def test_cancel_while_scheduling_deletes_the_migration(
    make_kube: Any, connect: Any, timing: Any
) -> None:
    kube: FakeKube = make_kube(timing=timing(scheduling=30.0))
    conn = connect(kube)
    m = conn.migrate("db-1", to=to(conn, "node-b"))
    assert kube.wait_for(lambda: vmim_phase(kube, "db-1") == "Scheduling", 10)
    assert m.cancel() is True
    with pytest.raises(MigrationCancelled) as info:
        m.wait(30)
    assert info.value.vm_host == "node-a" == m.record.vm_host
    assert m.record.phase is Phase.CANCELLED
    assert kube.wait_for(lambda: kube.list(VMIM) == [], 5), "the migration object stays"
    assert migration_state(kube, "db-1") == {}  # never handed over to the nodes
    assert kube.vmi_node("db-1") == "node-a"
    outcome = conn.backend.outcome(m.record.job_ref["migration"])  # type: ignore[attr-defined]
    assert outcome is not None
    assert outcome.phase is Phase.CANCELLED
    labels = (kube.get(VMI, "db-1") or {})["metadata"].get("labels", {})
    assert POLICY_LABEL not in labels


def test_cancel_while_running_aborts_and_reports_abort_status(
    make_kube: Any, connect: Any, timing: Any, release: str
) -> None:
    kube: FakeKube = make_kube(timing=timing(running=30.0, abort=0.2))
    conn = connect(kube)
    m = conn.migrate("db-1", to=to(conn, "node-b"))
    assert kube.wait_for(lambda: vmim_phase(kube, "db-1") == "Running", 10)
    assert m.cancel() is True
    with pytest.raises(MigrationCancelled) as info:
        m.wait(30)
    assert info.value.vm_host == "node-a"
    state = migration_state(kube, "db-1")
    assert state["abortRequested"] is True
    assert state["abortStatus"] == "Succeeded"
    assert state["failed"] is True
    # KubeVirt 1.5 and 1.9 say completed too; the record says cancelled all the same.
    assert bool(state.get("completed")) is (release != "1.7")
    assert state["targetNode"] == "node-b"  # names the target, whatever happened
    assert kube.vmi_node("db-1") == "node-a"
    assert m.record.vm_host == "node-a"
    outcome = conn.backend.outcome(m.record.job_ref["migration"])  # type: ignore[attr-defined]
    assert outcome is not None
    assert "abortStatus=Succeeded" in outcome.native
    assert kube.wait_for(lambda: kube.list(VMIM) == [], 5)  # finalizer released, then gone


def test_failure_at_preparing_target_leaves_the_vmi_on_its_node(
    kube: FakeKube, connect: Any
) -> None:
    kube.fail_migration("PreparingTarget", vmi="db-1", reason="target virt-launcher crashed")
    conn = connect(kube)
    m = conn.migrate("db-1", to=to(conn, "node-b"))
    events = list(m.events(timeout=30))
    check_events(events)
    with pytest.raises(MigrationFailed) as info:
        m.wait(0)
    assert "target virt-launcher crashed" in str(info.value)
    assert info.value.vm_host == "node-a" == m.record.vm_host
    assert Phase.TRANSFERRING not in phases(m)
    assert kube.vmi_node("db-1") == "node-a"
    assert migration_state(kube, "db-1")["failed"] is True
    assert vmim_phase(kube, "db-1") == "Failed"


def test_failure_while_running_is_a_failed_migration_on_the_source(
    kube: FakeKube, connect: Any
) -> None:
    kube.fail_migration("Running", vmi="web-1", reason="migration stalled", after=0.2)
    conn = connect(kube)
    m = conn.migrate("web-1", to=to(conn, "node-b"))
    with pytest.raises(MigrationFailed, match="migration stalled"):
        m.wait(30)
    assert Phase.TRANSFERRING in phases(m)
    assert m.record.vm_host == "node-a" == kube.vmi_node("web-1")


@pytest.mark.one_release  # release-independent: success, or nothing handed over
def test_a_second_migration_of_the_same_vmi_is_refused(
    make_kube: Any, connect: Any, timing: Any
) -> None:
    kube: FakeKube = make_kube(timing=timing(running=30.0))
    first = connect(kube)
    m = first.migrate("db-1", to=to(first, "node-b"))
    assert kube.wait_for(lambda: vmim_phase(kube, "db-1") == "Running", 10)
    # Another client (its own connection, so no shared per-VM lock) is refused by the
    # pre-check, which sees the active VirtualMachineInstanceMigration...
    other = connect(kube, store=vmmove.MemoryStore())
    second = other.migrate("db-1", to=to(other, "node-b"))
    with pytest.raises(PrecheckFailed) as info:
        second.wait(30)
    assert any(p.code == "busy" for p in info.value.problems)
    # ...and, past the pre-check, by KubeVirt's admission webhook (in-flight migration).
    vm, target = other.vm("db-1"), other.host("node-b")
    with pytest.raises(Conflict, match="in-flight migration"):
        other.backend.start(
            vm,
            target,
            vmmove.MigrationSpec(vm="db-1", target="node-b"),
            MigrationMode.LIVE,
            policy=PRESETS["balanced"],
            needs=frozenset(),
            reservation=None,
        )
    assert len(kube.list(VMIM)) == 1
    m.cancel()
    with pytest.raises(MigrationCancelled):
        m.wait(30)


@pytest.mark.one_release
def test_kubevirt_without_added_node_selector_refuses_a_fixed_target(
    make_kube: Any, connect: Any
) -> None:
    kube: FakeKube = make_kube(added_node_selector=False)
    kube.add_node("node-d")
    conn = connect(kube)
    assert conn.capabilities.choose_target is False
    m = conn.migrate("db-1", to="node-b")
    with pytest.raises(PrecheckFailed, match="choose"):
        m.wait(30)
    assert kube.list(VMIM) == []
    # Without a named target the cluster's scheduler chooses, and the record says where.
    problems = conn.check("db-1")
    assert any(p.code == "scheduler-chooses" and p.severity == "warning" for p in problems)
    m = conn.migrate("db-1")
    record = m.wait(30)
    (vmim,) = kube.list(VMIM)
    assert "addedNodeSelector" not in vmim["spec"]
    assert record.vm_host == kube.vmi_node("db-1") == "node-d"  # the scheduler's pick
    assert any("scheduler" in w for w in record.warnings)


@pytest.mark.one_release  # release-independent: success, or nothing handed over
def test_policy_becomes_a_migration_policy_selected_by_a_vmi_label(
    make_kube: Any, connect: Any, timing: Any
) -> None:
    kube: FakeKube = make_kube(timing=timing(running=1.0, postcopy_after=0.3))
    conn = connect(kube)
    seen_label: list[str] = []
    m = conn.migrate("db-1", to=to(conn, "node-b"), policy="converge", bandwidth=64)
    kube.wait_for(
        lambda: (
            bool(
                (lb := ((kube.get(VMI, "db-1") or {})["metadata"].get("labels") or {})).get(
                    POLICY_LABEL
                )
            )
            and not seen_label.append(lb[POLICY_LABEL])
        ),
        10,
    )
    record = m.wait(30)
    (policy,) = kube.list("MigrationPolicy")
    name = policy["metadata"]["name"]
    assert seen_label == [name]
    assert policy["spec"]["selectors"] == {"virtualMachineInstanceSelector": {POLICY_LABEL: name}}
    assert policy["spec"]["allowPostCopy"] is True
    assert policy["spec"]["bandwidthPerMigration"] == "64Mi"
    assert policy["spec"]["completionTimeoutPerGiB"] == 75  # half the budget: post-copy first
    state = migration_state(kube, "db-1")
    assert state["migrationPolicyName"] == name
    assert state["migrationConfiguration"]["allowPostCopy"] is True
    assert state["mode"] == "PostCopy"
    assert Phase.POSTCOPY in phases(m)  # the cluster switched to post-copy, and we saw it
    assert record.phase is Phase.COMPLETED
    assert record.vm_host == "node-b"
    assert any(w.startswith("cluster, not vmmove") and "post-copy" in w for w in record.warnings)
    labels = (kube.get(VMI, "db-1") or {})["metadata"].get("labels", {})
    assert POLICY_LABEL not in labels  # taken off when the migration ended
    assert record.job_ref["policy"] == f"MigrationPolicy {name}"


@pytest.mark.one_release  # release-independent: success, or nothing handed over
def test_migration_policy_off_leaves_the_cluster_defaults(kube: FakeKube, connect: Any) -> None:
    conn = connect(kube, migration_policy=False)
    record = conn.migrate("web-1", to=to(conn, "node-b")).wait(30)
    assert kube.list("MigrationPolicy") == []
    assert any("cluster's migration defaults apply" in w for w in record.warnings)
    assert "migrationPolicyName" not in migration_state(kube, "web-1")


@pytest.mark.one_release
def test_not_live_migratable_vmi_is_refused_with_kubevirts_reason(
    kube: FakeKube, connect: Any
) -> None:
    conn = connect(kube)
    vm = conn.vm("gpu-1")
    assert vm.live_migratable is False
    assert vm.not_migratable_reason == "HostDeviceNotLiveMigratable: VMI uses a PCI host devices"
    m = conn.migrate("gpu-1", to="node-a", mode="live")
    with pytest.raises(PrecheckFailed, match="HostDeviceNotLiveMigratable"):
        m.wait(30)
    assert kube.list(VMIM) == []


@pytest.mark.one_release
def test_target_checks_cordon_node_selector_and_cpu_model(kube: FakeKube, connect: Any) -> None:
    kube.add_node("node-amd", cpu_model="EPYC-Rome", cpu_vendor="AMD")
    kube.add_node("node-gpu", labels={"gpu": "true"})
    conn = connect(kube)
    codes = {p.code for p in conn.check("web-1", "node-c")}
    assert "cordoned" in codes or "placement" in codes  # node-c is cordoned
    problems = conn.check("web-1", "node-amd")
    assert any(p.code == "cpu-model" for p in problems), problems
    kube.store.mutate(
        kube.controller.rt_vmi,
        "default",
        "web-1",
        lambda o: o["spec"].__setitem__("nodeSelector", {"gpu": "true"}),
    )
    problems = conn.check("web-1", "node-b")
    # Refused by the placement filter (kubevirt-node-selector) or by the backend's check.
    assert any(p.severity == "error" and "gpu=true" in p.message for p in problems), problems
    assert not [p for p in conn.check("web-1", "node-gpu") if p.severity == "error"]


@pytest.mark.one_release  # release-independent: success, or nothing handed over
def test_a_client_that_died_is_picked_up_from_the_journal(
    make_kube: Any, connect: Any, timing: Any, tmp_path: Any
) -> None:
    kube: FakeKube = make_kube(timing=timing(running=2.0))
    first = connect(kube)
    m = first.migrate("db-1", to=to(first, "node-b"))
    assert kube.wait_for(lambda: vmim_phase(kube, "db-1") == "Running", 10)
    record_id = m.id
    first.close()  # the client goes away; the migration goes on in the cluster
    again = vmmove.attach(
        record_id,
        uri="kubevirt://fake/default",
        kubeconfig=str(tmp_path / "kubeconfig"),
    )
    conn = again._run.conn  # the connection attach() opened
    try:
        record = again.wait(30)
        assert record.phase is Phase.COMPLETED
        assert record.vm_host == "node-b" == kube.vmi_node("db-1")
    finally:
        conn.close()
