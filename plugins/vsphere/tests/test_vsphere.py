"""The vSphere backend against the simulator: connecting, TLS, inventory, pre-checks,
cross-cluster, cold and storage moves, cancel, failures and re-attaching."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

import vmmove
from vmmove.backend import JobRef
from vmmove.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    MigrationCancelled,
    MigrationFailed,
    NotFound,
    PrecheckFailed,
    ReservationRefused,
)
from vmmove.events import EventKind
from vmmove.machine import Phase
from vmmove.model import HostState, MigrationMode, MigrationSpec, PowerState, Storage
from vmmove.policy import PRESETS
from vmmove.testing.contract import check_events
from vmmove_vsphere.tls import InsecureConnectionWarning

pytestmark = pytest.mark.integration

Connect = Callable[..., vmmove.Connection]

# How the engine calls check(): the mode and the policy already resolved.
RESOLVED: dict[str, Any] = {"mode": MigrationMode.LIVE, "policy": PRESETS["balanced"]}


def _thumbprint(sim: Any, digest: str = "sha256") -> str:
    pem = ssl.get_server_certificate((sim.host, sim.port))
    return hashlib.new(digest, ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def _poll_until_terminal(backend: Any, job: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    status = backend.poll(job)
    while not status.phase.terminal:
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
        status = backend.poll(job)
    return status


# ---- connecting -----------------------------------------------------------------------------
def test_tls_is_verified_by_default(vcsim: Any, uri_for: Callable[..., str]) -> None:
    # No ca_file: the system's CAs do not know the simulator's CA, so the handshake fails
    # (pyVim alone would skip the check for 127.0.0.1).
    with pytest.raises(ConnectionFailed, match="certificate verify failed"):
        vmmove.connect(uri_for(vcsim), password=vmmove.Secret(vcsim.password))


def test_ca_file_trusts_the_server_and_hostnames_are_checked(
    vcsim: Any, uri_for: Callable[..., str]
) -> None:
    password = vmmove.Secret(vcsim.password)
    for host in ("127.0.0.1", "localhost"):  # both are in the certificate
        with vmmove.connect(uri_for(vcsim, host=host), password=password, ca_file=vcsim.ca_file):
            pass


def test_thumbprint_pins_the_certificate(vcsim: Any, uri_for: Callable[..., str]) -> None:
    password = vmmove.Secret(vcsim.password)
    for digest in ("sha256", "sha1"):
        with vmmove.connect(
            uri_for(vcsim), password=password, thumbprint=_thumbprint(vcsim, digest)
        ) as conn:
            assert len(conn.hosts()) == 4  # later pooled connections are pinned too
    with pytest.raises(ConnectionFailed, match="thumbprint mismatch") as info:
        vmmove.connect(uri_for(vcsim), password=password, thumbprint="ab" * 32)
    message = str(info.value)  # a sentence, not an exception's args tuple
    assert "('" not in message
    assert f"SHA-256 thumbprint {_thumbprint(vcsim)}, not the pinned {'ab' * 32}" in message


def test_insecure_only_when_asked_and_warned(
    vcsim: Any, uri_for: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    with (
        pytest.warns(InsecureConnectionWarning, match="verification is OFF"),
        vmmove.connect(uri_for(vcsim), password=vmmove.Secret(vcsim.password), insecure=True),
    ):
        pass
    assert "verification is OFF" in caplog.text


def test_wrong_password_is_an_authentication_error(
    vcsim: Any, uri_for: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthenticationFailed) as info:
        vmmove.connect(
            uri_for(vcsim), password=vmmove.Secret("not-the-Pa55word"), ca_file=vcsim.ca_file
        )
    assert "InvalidLogin" in str(info.value)
    assert vcsim.username in str(info.value)
    assert "not-the-Pa55word" not in str(info.value) + caplog.text


def test_password_from_the_environment(
    vcsim: Any, uri_for: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMMOVE_PASSWORD", vcsim.password)
    with vmmove.connect(uri_for(vcsim), ca_file=vcsim.ca_file) as conn:
        assert conn.hosts()


def test_unreachable_endpoint_and_unknown_datacenter(
    vcsim: Any, uri_for: Callable[..., str]
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionFailed, match="connection refused"):
        vmmove.connect(f"vsphere://u@127.0.0.1:{port}/DC0", password=vmmove.Secret("x"))
    with pytest.raises(NotFound, match="no datacenter"):
        vmmove.connect(
            uri_for(vcsim, datacenter="DC9"),
            password=vmmove.Secret(vcsim.password),
            ca_file=vcsim.ca_file,
        )


def test_secrets_stay_out_of_reprs_and_logs(
    vcsim: Any, connect_to: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with connect_to(vcsim) as conn:
        conn.hosts()
        shown = " ".join([repr(conn), conn.uri, repr(conn.backend), repr(conn.backend.settings)])
    assert vcsim.password not in shown + caplog.text
    assert f"{vcsim.username}@127.0.0.1:{vcsim.port}/DC0" in shown


def test_expired_session_logs_in_again(vcsim: Any, connect_to: Connect) -> None:
    with connect_to(vcsim) as conn:
        conn.backend.session.content.sessionManager.Logout()  # as if it had timed out
        assert len(conn.hosts()) == 4


# ---- inventory ------------------------------------------------------------------------------
def test_inventory(vcsim: Any, connect_to: Connect) -> None:
    with connect_to(vcsim) as conn:
        hosts = conn.hosts()
        assert sorted(h.name for h in hosts) == [
            "DC0_C0_H0",
            "DC0_C0_H1",
            "DC0_C1_H0",
            "DC0_C1_H1",
        ]
        for h in hosts:
            assert h.id.startswith("host-")
            assert h.cluster == h.name[:6]
            assert h.state is HostState.UP
            assert h.capacity.cpus == 2
            assert h.capacity.memory > 4000 << 20  # the model's 4095 MB hosts
            assert h.extra["standalone"] == "no"
            assert h.extra["datastores"] == "LocalDS_0,LocalDS_1"
        # every VM (32 MiB, 1 vCPU, powered on) counts on its host
        assert sum(h.allocated.memory for h in hosts) == 6 * (32 << 20)
        vms = conn.vms()
        assert len(vms) == 6
        by_id = {h.id: h for h in hosts}
        for vm in vms:
            assert vm.id.startswith("vm-")
            assert (vm.memory, vm.vcpus, vm.power) == (32 << 20, 1, PowerState.RUNNING)
            assert by_id[vm.host].cluster == vm.extra["cluster"] == vm.name[:6]
            assert vm.extra["datastores"] == "LocalDS_0"
            assert vm.storage is Storage.SHARED  # LocalDS_0 is mounted on every host
        vm = conn.vm("DC0_C1_RP0_VM2")
        assert conn.vm(vm.id) == vm


def test_host_states_follow_vsphere(estate: Any, connect_to: Connect) -> None:
    estate.maintenance("DC0_C1_H1")
    estate.power_off("DC0_C0_RP0_VM0")
    with connect_to(estate.sim) as conn:
        assert conn.host("DC0_C1_H1").state is HostState.MAINTENANCE
        assert conn.vm("DC0_C0_RP0_VM0").power is PowerState.STOPPED
        assert sum(h.allocated.memory for h in conn.hosts()) == 5 * (32 << 20)


# ---- pre-checks -----------------------------------------------------------------------------
def test_maintenance_target_is_refused_at_precheck(estate: Any, connect_to: Connect) -> None:
    estate.maintenance("DC0_C1_H1")
    before = estate.placement("DC0_C0_RP0_VM0")
    with connect_to(estate.sim) as conn:
        vm, target = conn.vm("DC0_C0_RP0_VM0"), conn.host("DC0_C1_H1")
        # The engine's placement sees the state first...
        problems = conn.check(vm.id, to=target.id)
        assert any("maintenance" in p.message for p in problems if p.severity == "error")
        # ...and vSphere's own CheckRelocate_Task says the same, as InvalidHostState.
        own = conn.backend.check(
            vm,
            target,
            MigrationSpec(vm=vm.id, target=target.id),
            mode=MigrationMode.LIVE,
            policy=PRESETS["balanced"],
        )
        assert [p.code for p in own if p.severity == "error"] == ["InvalidHostState"]
        assert "DC0_C1_H1" in own[0].message
        m = conn.migrate(vm.id, to=target.id)
        with pytest.raises(PrecheckFailed):
            m.wait(30)
        assert Phase.REQUESTING not in [t.phase for t in m.record.history]
    assert estate.placement("DC0_C0_RP0_VM0") == before
    assert estate.tasks("DC0_C0_RP0_VM0") == []  # no migration task was ever started


def test_check_errors_refuse_and_warnings_are_recorded(estate: Any, connect_to: Connect) -> None:
    estate.set_extra("DC0_C0_RP0_VM0", "vmmove.checkError", "MigrationFault:no vMotion network")
    estate.set_extra("DC0_C0_RP0_VM1", "vmmove.checkWarning", "MigrationFault:networks differ")
    with connect_to(estate.sim) as conn:
        m = conn.migrate("DC0_C0_RP0_VM0", to="DC0_C1_H0")
        with pytest.raises(PrecheckFailed) as info:
            m.wait(30)
        (problem,) = info.value.problems
        assert problem.code == "MigrationFault"
        assert "no vMotion network" in problem.message
        assert m.record.vm_host == conn.vm("DC0_C0_RP0_VM0").host

        record = conn.migrate("DC0_C0_RP0_VM1", to="DC0_C1_H0").wait(30)
        assert record.phase is Phase.COMPLETED
        assert any("networks differ" in w for w in record.warnings)


def test_busy_vm_is_refused_by_the_checker(estate: Any, connect_to: Connect) -> None:
    vim = estate.vim
    estate.set_extra("DC0_C0_RP0_VM0", "vmmove.migrateDuration", "3s")
    target = estate.host("DC0_C0_H0")
    if estate.vm("DC0_C0_RP0_VM0").runtime.host == target:
        target = estate.host("DC0_C0_H1")
    other = estate.vm("DC0_C0_RP0_VM0").RelocateVM_Task(spec=vim.vm.RelocateSpec(host=target))
    with connect_to(estate.sim) as conn:
        problems = conn.check("DC0_C0_RP0_VM0", to="DC0_C1_H0")
        assert "TaskInProgress" in [p.code for p in problems if p.severity == "error"]
    other.CancelTask()


def test_vmotion_compatibility_without_the_ex_call(
    estate: Any, connect_to: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where QueryVMotionCompatibilityEx_Task is missing, QueryVMotionCompatibility answers."""
    from vmmove_vsphere.backend import VSphereBackend

    original = VSphereBackend._run_check

    def without_ex(self: VSphereBackend, name: str, call: Any, where: str) -> Any:
        if name == "QueryVMotionCompatibilityEx_Task":
            return [vmmove.Problem(code="unavailable", severity="warning", message=name)]
        return original(self, name, call, where)

    monkeypatch.setattr(VSphereBackend, "_run_check", without_ex)
    estate.maintenance("DC0_C1_H1")
    with connect_to(estate.sim) as conn:
        vm, good, bad = (conn.vm("DC0_C0_RP0_VM0"), conn.host("DC0_C1_H0"), conn.host("DC0_C1_H1"))
        spec = MigrationSpec(vm=vm.id, mode=MigrationMode.LIVE)
        assert conn.backend.check(vm, good, spec, **RESOLVED) == []
        codes = {
            p.code
            for p in conn.backend.check(
                vm, bad, spec, mode=MigrationMode.LIVE, policy=PRESETS["balanced"]
            )
            if p.severity == "error"
        }
        assert {"vmotion-cpu", "vmotion-software", "InvalidHostState"} <= codes


def test_slow_checker_is_a_warning_not_a_hang(
    start_vcsim: Callable[..., Any], connect_to: Connect
) -> None:
    sim = start_vcsim(check_delay="3s")
    try:
        with connect_to(sim, check_timeout=0.3) as conn:
            started = time.monotonic()
            problems = conn.check("DC0_C0_RP0_VM0", to="DC0_C1_H0")
            assert time.monotonic() - started < 3  # not 2 x 3 s
            assert [p.code for p in problems] == ["check-timeout", "check-timeout"]
            assert all(p.severity == "warning" for p in problems)
    finally:
        sim.stop()


# ---- migrations -----------------------------------------------------------------------------
def test_cross_cluster_move_takes_the_target_clusters_pool(
    estate: Any, connect_to: Connect
) -> None:
    with connect_to(estate.sim) as conn:
        vm = conn.vm("DC0_C0_RP0_VM0")
        target = conn.host("DC0_C1_H0")
        m = conn.migrate(vm.id, to=target.id)
        events = list(m.events(timeout=30))
        record = m.wait(0)
        check_events(events)
        assert (record.phase, record.vm_host, record.source) == (
            Phase.COMPLETED,
            target.id,
            vm.host,
        )
        assert record.job_ref["task"].startswith("task-")
        assert record.figures.total_time is not None
        assert record.figures.total_time >= 1.0
        # progress came from TaskInfo.progress while transferring, rising
        moving = [e.progress.percent for e in events if e.phase is Phase.TRANSFERRING]
        assert len(set(moving)) >= 3
        assert moving == sorted(moving)
        assert conn.vm(vm.id).extra["cluster"] == "DC0_C1"
    assert estate.placement("DC0_C0_RP0_VM0") == ("DC0_C1_H0", "DC0_C1", ["LocalDS_0"], "poweredOn")


def test_move_within_a_cluster_keeps_the_vms_pool(estate: Any, connect_to: Connect) -> None:
    with connect_to(estate.sim) as conn:
        vm = conn.vm("DC0_C0_RP0_VM0")
        (target,) = [h for h in conn.hosts() if h.cluster == "DC0_C0" and h.id != vm.host]
        pool = vm.extra["resource_pool"]
        assert conn.migrate(vm.id, to=target.id).wait(30).vm_host == target.id
        assert conn.vm(vm.id).extra["resource_pool"] == pool


def test_placement_chooses_a_target_when_none_is_named(estate: Any, connect_to: Connect) -> None:
    with connect_to(estate.sim) as conn:
        vm = conn.vm("DC0_C0_RP0_VM0")
        record = conn.migrate(vm.id).wait(30)
        assert record.phase is Phase.COMPLETED
        assert record.vm_host != vm.host
        assert conn.host(record.vm_host).cluster == "DC0_C0"  # stays in its cluster


def test_cancel_mid_flight_leaves_the_vm_on_its_source(estate: Any, connect_to: Connect) -> None:
    estate.set_extra("DC0_C0_RP0_VM0", "vmmove.migrateDuration", "5s")
    before = estate.placement("DC0_C0_RP0_VM0")
    with connect_to(estate.sim) as conn:
        vm = conn.vm("DC0_C0_RP0_VM0")
        m = conn.migrate(vm.id, to="DC0_C1_H1", mode=MigrationMode.LIVE)
        for event in m.events(timeout=30):
            if event.kind is EventKind.PROGRESS and event.progress.percent > 10:
                assert m.cancel()
        with pytest.raises(MigrationCancelled) as info:
            m.wait(0)
        assert info.value.vm_host == vm.host == m.record.vm_host
        assert m.record.phase is Phase.CANCELLED
        assert Phase.TRANSFERRING in [t.phase for t in m.record.history]
        if estate.keeps_tasks:  # else vCenter has forgotten the task already
            (task,) = estate.tasks("DC0_C0_RP0_VM0")
            assert task.state == "error"
            assert task.cancelled
            assert type(task.error).__name__ == "vmodl.fault.RequestCanceled"
    assert estate.placement("DC0_C0_RP0_VM0") == before


def test_injected_failure_ends_failed_on_the_source(estate: Any, connect_to: Connect) -> None:
    estate.set_extra("DC0_C0_RP0_VM0", "vmmove.inject", "fail@50:MigrationFault:link lost")
    estate.set_extra("DC0_C0_RP0_VM0", "vmmove.migrateDuration", "3s")
    before = estate.placement("DC0_C0_RP0_VM0")
    with connect_to(estate.sim) as conn:
        vm = conn.vm("DC0_C0_RP0_VM0")
        m = conn.migrate(vm.id, to="DC0_C1_H1")
        events = list(m.events(timeout=30))
        check_events(events)
        with pytest.raises(MigrationFailed) as info:
            m.wait(0)
        assert info.value.vm_host == vm.host
        assert m.record.phase is Phase.FAILED
        assert m.record.error is not None
        assert "MigrationFault" in m.record.error
        assert "link lost" in m.record.error
        assert m.record.history[-2].phase is Phase.TRANSFERRING  # it failed while moving
        assert 30 < max(e.progress.percent for e in events) <= 48  # 48 = 5 + 86 * 50%
    assert estate.placement("DC0_C0_RP0_VM0") == before


def test_refusal_by_vsphere_when_the_task_starts(estate: Any, connect_to: Connect) -> None:
    """Faults vCenter raises when the task starts (admission, validation) are refusals,
    as the engine's own pre-checks would be: the VM never moved."""
    with connect_to(estate.sim) as conn:
        backend = conn.backend
        vm, target = conn.vm("DC0_C0_RP0_VM0"), conn.host("DC0_C1_H0")
        estate.set_extra("DC0_C0_RP0_VM0", "vmmove.migrateDuration", "1s")
        spec = MigrationSpec(vm=vm.id, target=target.id)
        # Too much memory for the target: InsufficientMemoryResourcesFault.
        reconfig = estate.vim.vm.ConfigSpec(memoryMB=8192)
        assert estate.wait(estate.vm("DC0_C0_RP0_VM0").ReconfigVM_Task(spec=reconfig)).state == (
            "success"
        )
        big = conn.vm(vm.id)
        job = backend.start(
            big,
            target,
            spec,
            MigrationMode.LIVE,
            policy=PRESETS["balanced"],
            needs=frozenset(),
            reservation=None,
        )
        with pytest.raises(ReservationRefused, match="InsufficientMemoryResourcesFault"):
            _poll_until_terminal(backend, job)
        backend.finish(job)
        assert conn.vm(vm.id).host == vm.host


def test_validation_faults_raised_by_the_call_itself(
    start_vcsim: Callable[..., Any], connect_to: Connect
) -> None:
    sim = start_vcsim(validation_faults="sync")
    try:
        with connect_to(sim) as conn:
            from vmmove_vsphere.backend import VSphereBackend

            backend = conn.backend
            assert isinstance(backend, VSphereBackend)
            vm = conn.vm("DC0_C0_RP0_VM0")
            busy = backend.start(
                vm,
                conn.host("DC0_C1_H0"),
                MigrationSpec(vm=vm.id),
                MigrationMode.LIVE,
                policy=PRESETS["balanced"],
                needs=frozenset(),
                reservation=None,
            )
            with pytest.raises(vmmove.Conflict, match="TaskInProgress"):
                backend.start(
                    vm,
                    conn.host("DC0_C1_H1"),
                    MigrationSpec(vm=vm.id),
                    MigrationMode.LIVE,
                    policy=PRESETS["balanced"],
                    needs=frozenset(),
                    reservation=None,
                )
            backend.abort(busy)
    finally:
        sim.stop()


def test_a_suspended_vm_moves_cold_and_stays_suspended(estate: Any, connect_to: Connect) -> None:
    VM2 = "DC0_C0_RP0_VM2"  # noqa: N806
    estate.suspend(VM2)

    def power_tasks() -> list[str]:
        return [t.key for s in ("On", "Off") for t in estate.tasks(VM2, f"VirtualMachine.power{s}")]

    powered = power_tasks()
    with connect_to(estate.sim) as conn:
        vm = conn.vm("DC0_C0_RP0_VM2")
        assert vm.power is PowerState.PAUSED
        record = conn.migrate(vm.id, to="DC0_C1_H0", mode=MigrationMode.COLD).wait(30)
        assert record.phase is Phase.COMPLETED
        assert (record.vm_host, record.vm_power) == (conn.host("DC0_C1_H0").id, PowerState.PAUSED)
    assert estate.placement("DC0_C0_RP0_VM2") == ("DC0_C1_H0", "DC0_C1", ["LocalDS_0"], "suspended")
    # neither powered off nor on: the suspend state travels with it
    assert power_tasks() == powered


def test_cold_move_of_a_running_vm_stops_moves_and_starts_it(
    estate: Any, connect_to: Connect
) -> None:
    with connect_to(estate.sim) as conn:
        vm = conn.vm("DC0_C0_RP0_VM0")
        m = conn.migrate(vm.id, to="DC0_C1_H0", mode=MigrationMode.COLD)
        events = list(m.events(timeout=30))
        check_events(events)
        record = m.wait(0)
        assert record.phase is Phase.COMPLETED
        phases = [t.phase for t in record.history]
        assert phases[2:5] == [
            Phase.REQUESTING,  # the guest is shut down on the source
            Phase.TRANSFERRING,  # the stopped VM is moved
            Phase.SWITCHING_OVER,  # it is powered on at the target
        ]
        assert (
            "inferred"
            not in next(t for t in record.history if t.phase is Phase.SWITCHING_OVER).note
        )
    assert estate.placement("DC0_C0_RP0_VM0") == ("DC0_C1_H0", "DC0_C1", ["LocalDS_0"], "poweredOn")
    if estate.keeps_tasks:
        # stopped through the guest (ShutdownGuest, no task), not powered off hard
        assert estate.tasks("DC0_C0_RP0_VM0", "VirtualMachine.powerOff") == []
        (moved,) = estate.tasks("DC0_C0_RP0_VM0")
        assert moved.state == "success"
        started = estate.tasks("DC0_C0_RP0_VM0", "VirtualMachine.powerOn")[-1]
        assert started.state == "success"
        assert started.queueTime >= moved.completeTime


def test_cancelled_cold_move_powers_the_vm_on_again_at_its_source(
    estate: Any, connect_to: Connect
) -> None:
    estate.set_extra("DC0_C0_RP0_VM0", "vmmove.migrateDuration", "5s")
    before = estate.placement("DC0_C0_RP0_VM0")
    with connect_to(estate.sim) as conn:
        m = conn.migrate("DC0_C0_RP0_VM0", to="DC0_C1_H0", mode=MigrationMode.COLD)
        for event in m.events(timeout=30):
            # transferring: the stopped VM is being moved (a 5 s relocation)
            if event.kind is EventKind.PHASE and event.phase is Phase.TRANSFERRING:
                m.cancel()
        with pytest.raises(MigrationCancelled):
            m.wait(0)
        assert (m.record.vm_host, m.record.vm_power) == (
            conn.vm("DC0_C0_RP0_VM0").host,
            PowerState.RUNNING,
        )
    assert estate.placement("DC0_C0_RP0_VM0") == before  # same host, powered on
    if estate.keeps_tasks:
        (moved,) = estate.tasks("DC0_C0_RP0_VM0")
        assert moved.state == "error"  # the relocation was cancelled, not left to finish


def test_storage_move_with_the_migration(estate: Any, connect_to: Connect) -> None:
    with connect_to(estate.sim) as conn:
        conn.backend.move_storage("DC0_C0_RP0_VM0", "LocalDS_1")
        record = conn.migrate("DC0_C0_RP0_VM0", to="DC0_C1_H1").wait(30)
        assert record.phase is Phase.COMPLETED
        assert conn.vm("DC0_C0_RP0_VM0").extra["datastores"] == "LocalDS_1"
        with pytest.raises(NotFound):
            conn.backend.move_storage("DC0_C0_RP0_VM1", "NoSuchDS")
    assert estate.placement("DC0_C0_RP0_VM0")[2] == ["LocalDS_1"]
    with connect_to(estate.sim, datastore="LocalDS_1") as conn:  # default for every move
        assert conn.migrate("DC0_C0_RP0_VM1", to="DC0_C1_H1").wait(30).phase is Phase.COMPLETED
    assert estate.placement("DC0_C0_RP0_VM1")[2] == ["LocalDS_1"]


def test_a_new_client_reattaches_to_a_running_task(estate: Any, connect_to: Connect) -> None:
    estate.set_extra("DC0_C0_RP0_VM0", "vmmove.migrateDuration", "2s")
    with connect_to(estate.sim) as first:
        vm = first.vm("DC0_C0_RP0_VM0")
        m = first.migrate(vm.id, to="DC0_C1_H1")
        while "task" not in m.record.job_ref:  # the start's own intent is saved first
            time.sleep(0.05)
        ref = dict(m.record.job_ref)
    # The first client is gone; the vCenter task goes on. A second one finds it by its id.
    with connect_to(estate.sim) as second:
        backend = second.backend
        job = backend.attach(JobRef.load(ref))
        assert (job.id, job.vm, job.target) == (ref["task"], vm.id, ref["target"])
        status = _poll_until_terminal(backend, job)
        assert (status.phase, status.vm_host) == (Phase.COMPLETED, ref["target"])
        with pytest.raises(NotFound):
            backend.attach(JobRef(data={"task": "task-nope", "vm": "vm-nope"}))


def test_vcenter_admission_is_part_of_the_precheck(estate: Any, connect_to: Connect) -> None:
    """Another client's migration into the target already holds its memory: vmmove's
    placement cannot see that, but CheckRelocate_Task does, and the VM stays put. (Should
    admission refuse only once the task starts, that is a ReservationRefused: see
    test_refusal_by_vsphere_when_the_task_starts.)"""
    vim = estate.vim
    for name, mb in (("DC0_C0_RP0_VM1", 2500), ("DC0_C0_RP0_VM0", 2000)):
        spec = vim.vm.ConfigSpec(memoryMB=mb)
        assert estate.wait(estate.vm(name).ReconfigVM_Task(spec=spec)).state == "success"
    estate.set_extra("DC0_C0_RP0_VM1", "vmmove.migrateDuration", "5s")
    target = estate.host("DC0_C1_H0")
    other = estate.vm("DC0_C0_RP0_VM1").RelocateVM_Task(
        spec=vim.vm.RelocateSpec(host=target, pool=target.parent.resourcePool)
    )
    before = estate.placement("DC0_C0_RP0_VM0")
    with connect_to(estate.sim) as conn:
        m = conn.migrate("DC0_C0_RP0_VM0", to="DC0_C1_H0")
        with pytest.raises(PrecheckFailed) as info:
            m.wait(30)
        assert [p.code for p in info.value.problems] == ["InsufficientMemoryResourcesFault"]
        assert "2000 MB requested" in info.value.problems[0].message
        assert m.record.vm_host == conn.vm("DC0_C0_RP0_VM0").host
    other.CancelTask()
    assert estate.placement("DC0_C0_RP0_VM0") == before


def test_cold_fallback_policy_moves_the_vm_cold(estate: Any, connect_to: Connect) -> None:
    from vmmove.policy import BudgetShare, ColdFallback, Policy, Step

    estate.set_extra("DC0_C0_RP0_VM0", "vmmove.migrateDuration", "2s")
    policy = Policy(
        name="fallback-at-once",
        steps=(Step(trigger=BudgetShare(share=1e-6), action=ColdFallback()),),
    )
    with connect_to(estate.sim) as conn:
        m = conn.migrate("DC0_C0_RP0_VM0", to="DC0_C1_H0", policy=policy)
        check_events(list(m.events(timeout=60)))
        record = m.wait(0)
        assert record.phase is Phase.COMPLETED
        assert record.mode is MigrationMode.COLD
        assert [s.applied for s in record.steps] == [True]
    assert estate.placement("DC0_C0_RP0_VM0") == ("DC0_C1_H0", "DC0_C1", ["LocalDS_0"], "poweredOn")


_DYING_CLIENT = """
import os, sys, time, vmmove
uri, ca, vm, target = sys.argv[1:]
conn = vmmove.connect(uri, password=vmmove.Secret(os.environ["SIM_PASSWORD"]), ca_file=ca)
m = conn.migrate(vm, to=target)
while "task" not in m.record.job_ref:
    time.sleep(0.02)
print(m.id, flush=True)
os._exit(0)  # the client dies here; the vCenter task goes on
"""


def test_attach_after_the_client_died(
    estate: Any, uri_for: Callable[..., str], connect_to: Connect
) -> None:
    """The journal keeps the record and the task id; vmmove.attach() supervises it again."""
    sim = estate.sim
    estate.set_extra("DC0_C0_RP0_VM0", "vmmove.migrateDuration", "2s")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _DYING_CLIENT,
            uri_for(sim),
            sim.ca_file,
            "DC0_C0_RP0_VM0",
            "DC0_C1_H1",
        ],
        env={**os.environ, "SIM_PASSWORD": sim.password},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    record_id = out.stdout.strip()
    # vmmove.attach(record_id, ...) does the same but leaves its connection open.
    with connect_to(sim) as conn:
        m = conn.attach(record_id)
        record = m.wait(30)
    assert record.phase is Phase.COMPLETED
    assert estate.placement("DC0_C0_RP0_VM0")[0] == "DC0_C1_H1"
    assert record.vm_host == estate.host("DC0_C1_H1")._moId
    assert record.job_ref["task"].startswith("task-vmmove-")


def test_attach_when_the_client_died_inside_start(estate: Any, connect_to: Connect) -> None:
    vim = estate.vim
    estate.set_extra("DC0_C0_RP0_VM0", "vmmove.migrateDuration", "2s")
    with connect_to(estate.sim) as conn:
        vm, target = conn.vm("DC0_C0_RP0_VM0"), conn.host("DC0_C1_H1")
        intent = JobRef.load({"intent": "start", "vm": vm.id, "target": target.id})
        with pytest.raises(NotFound):
            conn.backend.attach(intent)  # nothing was started
        host = estate.host("DC0_C1_H1")
        estate.vm("DC0_C0_RP0_VM0").RelocateVM_Task(
            spec=vim.vm.RelocateSpec(host=host, pool=host.parent.resourcePool)
        )
        job = conn.backend.attach(intent)
        assert (job.vm, job.target, job.mode) == (vm.id, target.id, MigrationMode.LIVE)
        assert _poll_until_terminal(conn.backend, job).vm_host == target.id
