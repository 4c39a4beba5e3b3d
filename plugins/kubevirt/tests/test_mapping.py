"""The phase mapping table, the policy translation and the inventory, on plain objects."""

from __future__ import annotations

from typing import Any

import pytest

from vmmove import MigrationSpec, Phase
from vmmove.policy import PRESETS
from vmmove_kubevirt.capabilities import CAPABILITIES
from vmmove_kubevirt.objects import node_pin, parse_quantity, vm_info
from vmmove_kubevirt.phases import VMIM_PHASES, live_status
from vmmove_kubevirt.policy import plan

UID = "u-1"


def vmim(phase: str | None, *, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "m", "uid": UID}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {} if phase is None else {"phase": phase}}


def vmi(node: str = "node-a", **state: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running", "nodeName": node}
    if state:
        status["migrationState"] = {"migrationUid": UID, "sourceNode": "node-a", **state}
    return {"metadata": {"name": "vm"}, "status": status}


def status(obj: dict[str, Any] | None, inst: dict[str, Any] | None, aborted: bool = False) -> Any:
    return live_status(obj, inst, uid=UID, abort_requested=aborted, target="node-b")


@pytest.mark.parametrize(
    ("native", "phase"),
    [
        (None, Phase.REQUESTING),
        ("Pending", Phase.REQUESTING),
        ("Scheduling", Phase.REQUESTING),
        ("Scheduled", Phase.REQUESTING),
        ("PreparingTarget", Phase.REQUESTING),
        ("TargetReady", Phase.REQUESTING),
        ("Running", Phase.TRANSFERRING),
        ("Succeeded", Phase.COMPLETED),
        ("Failed", Phase.FAILED),
    ],
)
def test_every_vmim_phase_has_a_shared_phase(native: str | None, phase: Phase) -> None:
    got = status(vmim(native), vmi())
    assert got.phase is phase
    assert got.percent is None  # no bytes, no made-up percentage
    assert got.data_total is None
    assert (native or "") in VMIM_PHASES


def test_running_refined_by_the_vmis_migration_state() -> None:
    assert status(vmim("Running"), vmi(mode="PostCopy")).phase is Phase.POSTCOPY
    switching = status(vmim("Running"), vmi("node-b", completed=True, targetNode="node-b"))
    assert switching.phase is Phase.SWITCHING_OVER
    after_postcopy = status(vmim("Running"), vmi("node-b", completed=True, mode="PostCopy"))
    assert after_postcopy.phase is Phase.COMPLETING
    assert after_postcopy.postcopy is True
    # Another migration's state on the VMI says nothing about this one.
    other = vmi(completed=True)
    other["status"]["migrationState"]["migrationUid"] = "someone-else"
    assert status(vmim("Running"), other).phase is Phase.TRANSFERRING


def test_terminal_answers_say_where_the_vm_runs() -> None:
    done = status(vmim("Succeeded"), vmi("node-b", completed=True, targetNode="node-b"))
    assert (done.phase, done.vm_host) == (Phase.COMPLETED, "node-b")
    failed = status(vmim("Failed"), vmi(failed=True, failureReason="target pod crashed"))
    assert (failed.phase, failed.vm_host, failed.error) == (
        Phase.FAILED,
        "node-a",
        "target pod crashed",
    )
    late = status(vmim("Failed"), vmi("node-b", completed=True, targetNode="node-b"))
    assert late.phase is Phase.COMPLETED  # failed after the switch-over: cleanup trouble


def test_cancel_outcomes_and_abort_status() -> None:
    aborted = status(None, vmi(failed=True, abortStatus="Succeeded"), aborted=True)
    assert aborted.phase is Phase.CANCELLED
    assert "abortStatus=Succeeded" in aborted.native
    assert aborted.vm_host == "node-a"
    early = status(None, vmi(), aborted=True)  # deleted before the handover
    assert early.phase is Phase.CANCELLED
    too_late = status(None, vmi("node-b", completed=True, abortStatus="Failed"), aborted=True)
    assert too_late.phase is Phase.COMPLETED
    deleting = status(vmim("Running", deleting=True), vmi(abortStatus="Aborting"), aborted=True)
    assert deleting.phase is Phase.TRANSFERRING
    assert "deleting" in deleting.native
    assert "Aborting" in deleting.native
    gone = status(None, vmi())  # deleted by someone else
    assert gone.phase is Phase.FAILED


@pytest.mark.parametrize("completed", [True, False], ids=["kv1.5+1.9", "kv1.6-1.8"])
def test_completed_alone_never_means_success(completed: bool) -> None:
    """KubeVirt up to 1.5 and from 1.9 on set completed with failed on failure and abort."""
    failed_on_node = vmi(
        completed=completed, failed=True, failureReason="stalled", targetNode="node-b"
    )
    # The VMI says it failed before the VMIM does: still running, never a switch-over.
    running = status(vmim("Running"), failed_on_node)
    assert running.phase is Phase.TRANSFERRING
    assert "failed on the VMI" in running.native
    failed = status(vmim("Failed"), failed_on_node)
    assert (failed.phase, failed.vm_host, failed.error) == (Phase.FAILED, "node-a", "stalled")
    gone = status(None, failed_on_node)
    assert (gone.phase, gone.vm_host) == (Phase.FAILED, "node-a")
    aborted_on_node = vmi(
        completed=completed, failed=True, abortStatus="Succeeded", targetNode="node-b"
    )
    for obj in (vmim("Running", deleting=True), vmim("Failed"), None):
        got = status(obj, aborted_on_node, aborted=True)
        assert got.phase is not Phase.COMPLETED
        assert got.phase is not Phase.SWITCHING_OVER
        if got.phase.terminal:
            assert (got.phase, got.vm_host) == (Phase.CANCELLED, "node-a")
    # KubeVirt's own abort (its completion timeout) with no cancel asked: a failure.
    timed_out = status(vmim("Failed"), vmi(completed=completed, abortStatus="Succeeded"))
    assert timed_out.phase is Phase.FAILED


def test_where_the_vm_runs_is_the_vmis_node_never_target_node_alone() -> None:
    done = status(vmim("Succeeded"), vmi("node-d", completed=True, targetNode="node-b"))
    assert done.vm_host == "node-d"  # the cluster chose another node: say so
    not_running = vmi("node-a", failed=True)
    not_running["status"]["phase"] = "Failed"
    assert status(vmim("Failed"), not_running).vm_host is None


def test_the_previous_migrations_state_says_nothing_about_this_one() -> None:
    old = vmi("node-b", completed=True, targetNode="node-b")
    old["status"]["migrationState"]["migrationUid"] = "the-previous-one"
    for native in ("Pending", "Scheduling", "Scheduled", "PreparingTarget", "TargetReady"):
        assert status(vmim(native), old).phase is Phase.REQUESTING
    failed = status(vmim("Failed"), old)  # failed before the handover
    assert (failed.phase, failed.vm_host) == (Phase.FAILED, "node-b")


@pytest.mark.parametrize("native", ["WaitingForSync", "Synchronizing", "SomethingNew"])
def test_unknown_vmim_phases_are_read_from_the_vmi(native: str) -> None:
    early = status(vmim(native), vmi())
    assert early.phase is Phase.REQUESTING
    assert early.native.startswith(native)
    assert "unknown to vmmove" in early.native
    assert status(vmim(native), vmi(startTimestamp="t")).phase is Phase.TRANSFERRING
    assert status(vmim(native), vmi(startTimestamp="t", mode="PostCopy")).phase is Phase.POSTCOPY
    done = status(vmim(native), vmi("node-b", completed=True))
    assert done.phase is Phase.SWITCHING_OVER
    failed = status(vmim(native), vmi(startTimestamp="t", completed=True, failed=True))
    assert failed.phase is Phase.TRANSFERRING  # the VMIM's own Failed is the end
    assert "failed on the VMI" in failed.native


def test_policy_translation() -> None:
    spec = MigrationSpec(vm="vm")
    gib = 1 << 30
    none = plan(PRESETS["none"], spec, 4 * gib, CAPABILITIES)
    assert none.settings == {"completionTimeoutPerGiB": 150}
    converge = plan(
        PRESETS["converge"], MigrationSpec(vm="vm", bandwidth=64), 4 * gib, CAPABILITIES
    )
    assert converge.settings == {
        "completionTimeoutPerGiB": 75,
        "allowPostCopy": True,
        "bandwidthPerMigration": "64Mi",
    }
    assert converge.name.startswith("vmmove-")
    assert converge.name != none.name
    assert plan(PRESETS["none"], spec, gib, CAPABILITIES).name == none.name  # by settings
    balanced = plan(PRESETS["balanced"], spec, 4 * gib, CAPABILITIES)
    assert balanced.settings["allowAutoConverge"] is True
    notes = "\n".join(balanced.notes)
    assert "downtime" in notes
    assert "cluster, not vmmove" in notes
    body = converge.body()
    assert body["apiVersion"] == "migrations.kubevirt.io/v1alpha1"
    assert body["spec"]["selectors"] == {
        "virtualMachineInstanceSelector": {"migrations.vmmove.io/policy": converge.name}
    }


@pytest.mark.parametrize(
    ("text", "value"),
    [("4", 4), ("3500m", 3.5), ("16Gi", 16 << 30), ("3783496Ki", 3783496 << 10), ("1e3", 1000)],
)
def test_quantities(text: str, value: float) -> None:
    assert float(parse_quantity(text)) == value


def test_stopped_vms_are_on_the_node_they_are_pinned_to() -> None:
    pinned = {"spec": {"template": {"spec": {"nodeSelector": {"kubernetes.io/hostname": "h-a"}}}}}
    info = vm_info("vm", None, pinned, {"h-a": "node-a"})
    assert info is not None
    assert (info.host, info.power.value) == ("node-a", "stopped")
    assert vm_info("vm", None, {"spec": {"template": {"spec": {}}}}, {}) is None
    affinity = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchFields": [
                                {"key": "metadata.name", "operator": "In", "values": ["n"]}
                            ]
                        }
                    ]
                }
            }
        }
    }
    assert node_pin(affinity, {}) == "n"
