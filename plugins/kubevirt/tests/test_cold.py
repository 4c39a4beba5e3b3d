"""Cold migration on the fake cluster: stop the VirtualMachine, move its pin, start it; on
every KubeVirt release line of the matrix (see conftest). On KubeVirt 1.5 the connection
declares choose_target=False (for live moves; the capability is not per mode), so the tests
let placement choose there, which in the sample estate can only be node-b."""

from __future__ import annotations

from typing import Any

import pytest

from vmmove import MigrationCancelled, Phase, PowerState, PrecheckFailed
from vmmove.engine import Connection
from vmmove.testing.contract import check_events
from vmmove.testing.kube import FakeKube

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
    assert Phase.TRANSFERRING in history
    assert Phase.SWITCHING_OVER in history
    spec = vm_spec(kube, "web-1")
    assert spec["running"] is True
    assert spec["template"]["spec"]["nodeSelector"] == {HOSTNAME: "node-b"}
    assert kube.vmi_node("web-1") == "node-b"
    after = conn.vm("web-1")
    assert (after.host, after.power) == ("node-b", PowerState.RUNNING)
    assert any("guest restarts" in w for w in record.warnings)


def test_cold_migration_keeps_the_run_strategy(kube: FakeKube, connect: Any) -> None:
    kube.add_vm("rs-1", node="node-a", run_strategy="Always")
    conn = connect(kube)
    record = conn.migrate("rs-1", to=to(conn, "node-b"), mode="cold").wait(30)
    assert record.vm_host == "node-b" == kube.vmi_node("rs-1")
    assert vm_spec(kube, "rs-1")["runStrategy"] == "Always"


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
    assert kube.wait_for(lambda: m.record.phase is Phase.TRANSFERRING, 10)
    assert m.cancel() is True
    with pytest.raises(MigrationCancelled) as info:
        m.wait(30)
    assert info.value.vm_host == "node-a"
    spec = vm_spec(kube, "web-1")
    assert spec["running"] is True
    assert "nodeSelector" not in spec["template"]["spec"]  # never re-pinned
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
