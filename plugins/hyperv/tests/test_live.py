"""Live and cold migrations on the emulated fabric (in-process, no wire): cancel mid-flight,
refusals, a job that ends in state 10, a job gone before its outcome was read, a WMI
restart, a lost start answer, and the policy steps Hyper-V decides."""

from __future__ import annotations

from typing import Any

import pytest

import vmmove
from vmmove import EventKind, MigrationMode, Phase
from vmmove.engine import PLATFORM_DECIDES
from vmmove_hyperv.testing.emulation import HyperVShell
from vmmove_hyperv.testing.fabric import Fabric, JobFailure


def test_cancel_mid_flight_terminates_the_wmi_job(fabric: Fabric, shape: str, connect: Any) -> None:
    conn = connect(HyperVShell(fabric, shape))
    m = conn.migrate("db-1", to="hv2")
    seen: list[float] = []
    for event in m.events(timeout=30):
        if event.progress is not None and event.phase is Phase.TRANSFERRING:
            seen.append(event.progress.percent)
            if event.progress.percent > 5:
                assert m.cancel() is True
    with pytest.raises(vmmove.MigrationCancelled):
        m.wait(0)
    job = next(j for j in fabric.jobs.values() if fabric.vms[j.vm].name == "db-1")
    assert job.state == 8  # Terminated, by RequestStateChange(4)
    assert fabric.vm("db-1").host == "hv1" == m.record.vm_host
    assert ("hv1", "cancel") in fabric.calls


def test_compare_vm_incompatibility_refuses_before_anything_moves(
    fabric: Fabric, connect: Any
) -> None:
    conn = connect(HyperVShell(fabric))
    fabric.incompatible("hv2", "web-1", "The switch 'LAN' does not exist on 'hv2'.", 21502)
    with pytest.raises(vmmove.PrecheckFailed) as info:
        conn.migrate("web-1", to="hv2").wait(10)
    assert [p.code for p in info.value.problems] == ["compare-vm-21502"]
    assert "switch 'LAN'" in str(info.value)
    assert not fabric.jobs
    assert fabric.vm("web-1").host == "hv1"


def test_processor_generation_and_local_disks_are_refused(fabric: Fabric, connect: Any) -> None:
    conn = connect(HyperVShell(fabric))
    with pytest.raises(vmmove.PrecheckFailed, match="processor-specific"):
        conn.migrate("legacy-1", to="hv3").wait(10)
    with pytest.raises(vmmove.PrecheckFailed) as info:
        conn.migrate("local-1", to="hv1").wait(10)
    assert "local-storage" in [p.code for p in info.value.problems]
    fabric.hosts["hv2"].migration_enabled = False
    with pytest.raises(vmmove.PrecheckFailed, match="Enable-VMMigration"):
        conn.migrate("web-1", to="hv2").wait(10)
    assert not fabric.jobs


def test_a_job_that_ends_in_exception_fails_with_its_description(
    fabric: Fabric, shape: str, connect: Any
) -> None:
    conn = connect(HyperVShell(fabric, shape))
    fabric.fail_job("web-1", JobFailure(at_percent=30, code=32768, description="Disk full."))
    m = conn.migrate("web-1", to="hv2")
    with pytest.raises(vmmove.MigrationFailed) as info:
        m.wait(30)
    assert "Disk full. (ErrorCode 32768)" in (m.record.error or "")
    assert info.value.vm_host == "hv1" == fabric.vm("web-1").host


def test_a_host_that_refuses_fails_the_migration_at_once(fabric: Fabric, connect: Any) -> None:
    conn = connect(HyperVShell(fabric))
    fabric.refuse("hv1", "The Virtual Machine Management Service refused.")
    m = conn.migrate("web-1", to="hv2")
    with pytest.raises(vmmove.MigrationFailed, match="returned 32768"):
        m.wait(30)
    assert not fabric.jobs
    assert m.record.vm_host == "hv1"


@pytest.mark.parametrize("how", ["ttl", "wmi-restart"])
def test_the_outcome_comes_from_where_the_vm_is_when_the_job_is_gone(
    fabric: Fabric, connect: Any, how: str
) -> None:
    shell = HyperVShell(fabric)
    conn = connect(shell)
    backend = conn.backend
    vm = conn.vm("web-1")
    target = conn.host("hv2")
    job = backend.start(
        vm, target, vmmove.MigrationSpec(vm=vm.id), MigrationMode.LIVE,
        policy=vmmove.Policy(name="p"), needs=frozenset(), reservation=None, request_id="r-1",
    )  # fmt: skip
    fabric_job = fabric.jobs[job.id]
    assert fabric.wait_until(lambda: fabric_job.ended is not None, 10.0)
    if how == "ttl":
        fabric.timing.job_ttl = 0.0  # Hyper-V removed it before anyone read the outcome
    else:
        fabric.restart_wmi("hv1")
    fabric.tick()
    status = _poll_until_terminal(backend, job)
    assert status.phase is Phase.COMPLETED
    assert status.native == "job gone; VM on hv2"
    assert status.vm_host == "hv2" == backend.locate(vm.id)


def _poll_until_terminal(backend: Any, job: Any) -> Any:
    from vmmove_hyperv.sampler import Watched

    # Read at once rather than at the sampler's pace.
    backend._sampler.watch(Watched(job.ref.get("job"), job.source, job.vm))
    backend._sampler.sample_once()
    status = backend.poll(job)
    assert status.phase.terminal, status
    return status


def test_attach_finds_the_job_of_a_lost_start_by_the_mark_on_the_vm(
    fabric: Fabric, connect: Any
) -> None:
    conn = connect(HyperVShell(fabric))
    backend = conn.backend
    vm = conn.vm("db-1")
    job = backend.start(
        vm, conn.host("hv2"), vmmove.MigrationSpec(vm=vm.id), MigrationMode.LIVE,
        policy=vmmove.Policy(name="p"), needs=frozenset(), reservation=None,
        request_id="req-42",
    )  # fmt: skip
    assert "[vmmove-request:req-42]" in fabric.vm("db-1").notes
    live = MigrationMode.LIVE
    found = backend.attach(
        vmmove.JobRef.start(request_id="req-42", vm=vm.id, target="hv2", mode=live, at=None)
    )
    assert found.id == job.id
    assert found.source == "hv1"
    other = conn.vm("web-1").id
    with pytest.raises(vmmove.NotFound):
        backend.attach(
            vmmove.JobRef.start(request_id="other", vm=other, target="hv2", mode=live, at=None)
        )
    backend.abort(job)


def test_policy_steps_hyperv_decides_are_recorded_as_skipped(fabric: Fabric, connect: Any) -> None:
    conn = connect(HyperVShell(fabric))
    m = conn.migrate("web-1", to="hv2", max_downtime=300)
    record = m.wait(30)
    decided = [s for s in record.steps if s.reason == "decided by the platform"]
    assert any("max_downtime" in s.step for s in decided)
    assert any("downtime knob" in s.step for s in decided)  # the balanced policy's steps
    problems = conn.backend.check(
        conn.vm("web-1"), conn.host("hv1"), vmmove.MigrationSpec(vm="x"),
        mode=MigrationMode.COLD, policy=vmmove.Policy(name="p"),
    )  # fmt: skip
    assert PLATFORM_DECIDES not in [p.code for p in problems]


def test_progress_follows_the_fabric_clock(connect: Any) -> None:
    from vmmove_hyperv.testing.fabric import ManualClock, Timing

    clock = ManualClock()
    fabric = Fabric(clock=clock, timing=Timing(starting=1.0)).sample()
    fabric.vm("web-1").migrate_seconds = 10.0
    conn = connect(HyperVShell(fabric))
    m = conn.migrate("web-1", to="hv2")
    percents: list[float] = []
    for event in m.events(timeout=30):
        if event.kind is EventKind.PHASE and event.phase is Phase.REQUESTING:
            clock.advance(1.0)  # Starting -> Running
        if event.progress is not None and event.phase is Phase.TRANSFERRING:
            percents.append(event.progress.percent)
            clock.advance(2.5)  # a quarter of the transfer per reading
    assert m.wait(0).phase is Phase.COMPLETED
    assert len(percents) >= 3
    assert percents == sorted(percents)
