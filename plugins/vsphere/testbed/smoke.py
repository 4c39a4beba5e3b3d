#!/usr/bin/env python3
"""End-to-end smoke test of vcsim-vmmove with pyvmomi (pip install pyvmomi).

    python3 plugins/vsphere/testbed/smoke.py            # builds the binary first if missing

Starts one simulator (2 clusters x 2 hosts, 1 standalone host, 10 VMs per pool, 2 datastores), proves verified
TLS, login failure, live/storage/cold relocation with rising progress, cancel, TaskInProgress, injected failure,
maintenance-mode refusal, cross-cluster refusal, memory admission, a bogus host reference, the checker calls and
20 concurrent relocations; then stops the simulator by PID. Exit status 0 when every check passed.
"""

from __future__ import annotations

import os
import ssl
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vcsim import Vcsim  # noqa: E402

from pyVim.connect import Disconnect, SmartConnect  # noqa: E402
from pyVim.task import WaitForTask  # noqa: E402
from pyVmomi import vim, vmodl  # noqa: E402

RESULTS: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> bool:
    RESULTS.append((name, bool(ok), detail))
    print(f"[{'PASS' if ok else 'FAIL'}] {name}" + (f": {detail}" if detail else ""), flush=True)
    return ok


def wait(task, poll=0.05, timeout=60.0, trace=None):
    """Poll task.info until it leaves queued/running; return (info, [(state, progress, cancelable), ...])."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        info = task.info
        sample = (info.state, info.progress, info.cancelable)
        if not seen or seen[-1] != sample:
            seen.append(sample)
            if trace:
                trace(sample)
        if info.state in ("success", "error"):
            return info, seen
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task} still {info.state}")
        time.sleep(poll)


def reconfig(vm, **spec):
    info, _ = wait(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(**spec)))
    assert info.state == "success", info.error


def set_extra(vm, key, value):
    reconfig(vm, extraConfig=[vim.option.OptionValue(key=key, value=value)])


def extra(vm, key):
    vals = [o.value for o in (vm.config.extraConfig or []) if o.key == key]
    return vals[-1] if vals else None


def expect_fault(fn, fault_cls):
    try:
        fn()
    except fault_cls as e:
        return e
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"expected {fault_cls.__name__}, got {type(e).__name__}: {e}") from e
    raise AssertionError(f"expected {fault_cls.__name__}, no fault")


def main() -> int:
    t0 = time.monotonic()
    sim = Vcsim.start(
        cluster=2,
        host=2,
        standalone_host=1,
        vm=10,
        ds=2,
        migrate_duration="1s",
        queue_delay="100ms",
        tick="100ms",
    )
    print(
        f"simulator pid={sim.pid} url={sim.url} ready in {sim.startup_seconds * 1000:.0f} ms "
        f"(TMPDIR {sim.tmpdir})",
        flush=True,
    )
    si = None
    try:
        # -- TLS and login ---------------------------------------------------------------------------------
        t = time.monotonic()
        si = SmartConnect(
            host="localhost",
            port=sim.port,
            user=sim.username,
            pwd=sim.password,
            sslContext=sim.ssl_context(),
        )
        check(
            "connect over verified TLS (hostname localhost, CA file)",
            True,
            f"{(time.monotonic() - t) * 1000:.0f} ms, API {si.content.about.apiVersion}",
        )
        si2 = SmartConnect(
            host="127.0.0.1",
            port=sim.port,
            user=sim.username,
            pwd=sim.password,
            sslContext=sim.ssl_context(),
        )
        check("connect over verified TLS (IP 127.0.0.1)", True)
        Disconnect(si2)
        try:
            SmartConnect(
                host="localhost",
                port=sim.port,
                user=sim.username,
                pwd=sim.password,
                sslContext=ssl.create_default_context(cafile="/etc/ssl/certs/ca-certificates.crt"),
            )
            check("untrusted CA is rejected", False, "connected without our CA")
        except ssl.SSLCertVerificationError as e:
            check("untrusted CA is rejected", True, e.verify_message)
        e = expect_fault(
            lambda: SmartConnect(
                host="localhost",
                port=sim.port,
                user=sim.username,
                pwd="wrong",
                sslContext=sim.ssl_context(),
            ),
            vim.fault.InvalidLogin,
        )
        check("wrong password -> vim.fault.InvalidLogin", True, e.msg)

        content = si.RetrieveContent()

        def objs(kind):
            view = content.viewManager.CreateContainerView(content.rootFolder, [kind], True)
            try:
                return list(view.view)
            finally:
                view.Destroy()

        hosts = {h.name: h for h in objs(vim.HostSystem)}
        vms = {v.name: v for v in objs(vim.VirtualMachine)}
        dss = {d.name: d for d in objs(vim.Datastore)}
        check(
            "inventory",
            len(hosts) == 5 and len(vms) == 30 and len(dss) == 2,
            f"hosts={sorted(hosts)} vms={len(vms)} datastores={sorted(dss)}",
        )

        c0h0, c0h1, c1h0, c1h1 = (
            hosts[n] for n in ("DC0_C0_H0", "DC0_C0_H1", "DC0_C1_H0", "DC0_C1_H1")
        )
        c0_pool, c1_pool = c0h0.parent.resourcePool, c1h0.parent.resourcePool
        c0_vms = sorted(
            (v for n, v in vms.items() if n.startswith("DC0_C0_")), key=lambda v: v.name
        )
        c1_vms = sorted(
            (v for n, v in vms.items() if n.startswith("DC0_C1_")), key=lambda v: v.name
        )

        # -- live relocation to another cluster, progress rising ------------------------------------------
        vm = c0_vms[0]
        src_host = vm.runtime.host
        t = time.monotonic()
        task = vm.RelocateVM_Task(spec=vim.vm.RelocateSpec(host=c1h1, pool=c1_pool))
        info, seen = wait(
            task,
            trace=lambda s: print(
                f"    {vm.name}: state={s[0]} progress={s[1]} cancelable={s[2]}", flush=True
            ),
        )
        progress = [p for s, p, _ in seen if s == "running" and p is not None]
        check(
            "RelocateVM_Task live, cross-cluster: queued -> running -> success",
            [s for s, _, _ in seen][0] == "queued"
            and "running" in [s for s, _, _ in seen]
            and info.state == "success",
            f"{time.monotonic() - t:.2f} s, states={[s for s, _, _ in seen]}",
        )
        check(
            "progress rises while running, cancelable=True while running",
            len(progress) >= 3
            and progress == sorted(progress)
            and all(c for s, _, c in seen if s == "running")
            and info.progress == 100,
            f"progress={progress} final={info.progress}",
        )
        check(
            "VM moved: runtime.host, resourcePool",
            vm.runtime.host == c1h1 and vm.resourcePool == c1_pool,
            f"{src_host.name} -> {vm.runtime.host.name}",
        )
        check(
            "inverse lists fixed: host.vm, resourcePool.vm",
            vm in c1h1.vm and vm not in src_host.vm and vm in c1_pool.vm and vm not in c0_pool.vm,
        )

        # -- storage relocation ---------------------------------------------------------------------------
        old_ds = vm.datastore[0]
        new_ds = dss["LocalDS_1"] if old_ds.name == "LocalDS_0" else dss["LocalDS_0"]
        info, _ = wait(vm.RelocateVM_Task(spec=vim.vm.RelocateSpec(datastore=new_ds)))
        check(
            "storage move: datastore and datastore.vm lists",
            info.state == "success"
            and list(vm.datastore) == [new_ds]
            and vm in new_ds.vm
            and vm not in old_ds.vm
            and vm.config.files.vmPathName.startswith(f"[{new_ds.name}]"),
            f"{old_ds.name} -> {vm.datastore[0].name}, vmPathName={vm.config.files.vmPathName}",
        )

        # -- PropertyCollector sees the task finish (pyVim.task.WaitForTask uses WaitForUpdates) -------------
        t = time.monotonic()
        state = WaitForTask(vm.RelocateVM_Task(spec=vim.vm.RelocateSpec(host=c1h0)))
        check(
            "pyVim.task.WaitForTask (PropertyCollector updates)",
            state == "success" and vm.runtime.host == c1h0,
            f"{time.monotonic() - t:.2f} s",
        )

        # -- MigrateVM_Task ---------------------------------------------------------------------------------
        vm = c0_vms[1]
        info, _ = wait(
            vm.MigrateVM_Task(
                pool=c1_pool, host=c1h0, priority=vim.VirtualMachine.MovePriority.defaultPriority
            )
        )
        check("MigrateVM_Task cross-cluster", info.state == "success" and vm.runtime.host == c1h0)
        info, _ = wait(
            vm.MigrateVM_Task(
                host=c1h1, priority="defaultPriority", state=vim.VirtualMachinePowerState.poweredOff
            )
        )
        check(
            "MigrateVM_Task state guard -> InvalidPowerState",
            info.state == "error" and isinstance(info.error, vim.fault.InvalidPowerState),
            type(info.error).__name__,
        )

        # -- cancel mid-flight, TaskInProgress --------------------------------------------------------------
        vm = c0_vms[2]
        set_extra(vm, "vmmove.migrateDuration", "4s")
        src_host, src_pool = vm.runtime.host, vm.resourcePool
        task = vm.RelocateVM_Task(spec=vim.vm.RelocateSpec(host=c1h0, pool=c1_pool))
        while not (task.info.state == "running" and (task.info.progress or 0) >= 20):
            time.sleep(0.05)
        second = vm.RelocateVM_Task(spec=vim.vm.RelocateSpec(host=c1h1, pool=c1_pool))
        info2, _ = wait(second)
        check(
            "second migration of a migrating VM -> TaskInProgress",
            info2.state == "error"
            and isinstance(info2.error, vim.fault.TaskInProgress)
            and info2.error.task == task,
            f"task={info2.error.task if info2.error else None}",
        )
        at = task.info.progress
        t = time.monotonic()
        task.CancelTask()
        info, _ = wait(task)
        check(
            "CancelTask mid-flight -> state=error, error=RequestCanceled, VM stayed",
            info.state == "error"
            and isinstance(info.error, vmodl.fault.RequestCanceled)
            and info.cancelled
            and vm.runtime.host == src_host
            and vm.resourcePool == src_pool
            and vm in src_host.vm
            and vm not in c1h0.vm,
            f"cancelled at {at}%, ended {1000 * (time.monotonic() - t):.0f} ms after CancelTask",
        )
        e = expect_fault(lambda: task.CancelTask(), vim.fault.InvalidState)
        check("CancelTask on a finished task -> InvalidState", True)
        set_extra(vm, "vmmove.migrateDuration", "")

        # -- injected failure --------------------------------------------------------------------------------
        vm = c0_vms[3]
        set_extra(vm, "vmmove.inject", "fail@50:MigrationFault:injected by smoke.py")
        src_host = vm.runtime.host
        info, seen = wait(vm.RelocateVM_Task(spec=vim.vm.RelocateSpec(host=c1h0, pool=c1_pool)))
        check(
            "injected fail@50:MigrationFault",
            info.state == "error"
            and isinstance(info.error, vim.fault.MigrationFault)
            and info.progress == 50
            and vm.runtime.host == src_host,
            f"progress seen={[p for _, p, _ in seen]}, error={type(info.error).__name__}: "
            f"{info.error.faultMessage[0].message if info.error.faultMessage else info.error.msg}",
        )
        check(
            "injection is one-shot (consumed from extraConfig)", extra(vm, "vmmove.inject") is None
        )
        info, _ = wait(vm.RelocateVM_Task(spec=vim.vm.RelocateSpec(host=c1h0, pool=c1_pool)))
        check("next migration of that VM succeeds", info.state == "success")

        set_extra(c0_vms[4], "vmmove.inject", "hang@30")
        task = c0_vms[4].RelocateVM_Task(spec=vim.vm.RelocateSpec(host=c1h0, pool=c1_pool))
        time.sleep(1.5)
        p = task.info.progress
        task.CancelTask()
        info, _ = wait(task)
        check(
            "injected hang@30 stalls until cancelled",
            p == 30
            and info.state == "error"
            and isinstance(info.error, vmodl.fault.RequestCanceled),
            f"progress after 1.5 s of a 1 s move={p}",
        )

        # -- validation faults -------------------------------------------------------------------------------
        wait(c1h1.EnterMaintenanceMode_Task(timeout=0))
        vm = c0_vms[5]
        info, _ = wait(vm.RelocateVM_Task(spec=vim.vm.RelocateSpec(host=c1h1, pool=c1_pool)))
        check(
            "target in maintenance mode -> InvalidHostState",
            info.state == "error"
            and isinstance(info.error, vim.fault.InvalidHostState)
            and info.error.host == c1h1,
            info.error.msg if info.error else "",
        )
        chk = content.vmProvisioningChecker
        cinfo, _ = wait(
            chk.CheckRelocate_Task(vm=vm, spec=vim.vm.RelocateSpec(host=c1h1, pool=c1_pool))
        )
        res = cinfo.result
        check(
            "CheckRelocate_Task -> vim.vm.check.Result[] with the maintenance error",
            cinfo.state == "success"
            and len(res) == 1
            and isinstance(res[0], vim.vm.check.Result)
            and any(isinstance(x, vim.fault.InvalidHostState) for x in res[0].error),
            f"errors={[type(x).__name__ for x in res[0].error]}",
        )
        wait(c1h1.ExitMaintenanceMode_Task(timeout=0))

        info, _ = wait(vm.RelocateVM_Task(spec=vim.vm.RelocateSpec(host=c1h0, pool=c0_pool)))
        check(
            "host and pool in different clusters -> InvalidArgument",
            info.state == "error" and isinstance(info.error, vmodl.fault.InvalidArgument),
            f"invalidProperty={getattr(info.error, 'invalidProperty', None)}",
        )
        info, _ = wait(vm.RelocateVM_Task(spec=vim.vm.RelocateSpec(host=c1h0)))
        check(
            "host in another cluster without its pool -> InvalidArgument",
            info.state == "error" and isinstance(info.error, vmodl.fault.InvalidArgument),
        )

        bogus = vim.HostSystem("host-bogus", si._stub)
        e = expect_fault(
            lambda: vm.RelocateVM_Task(spec=vim.vm.RelocateSpec(host=bogus)),
            vmodl.fault.ManagedObjectNotFound,
        )
        check(
            "bogus host reference -> ManagedObjectNotFound (no panic)",
            e.obj._moId == "host-bogus",
            e.msg,
        )
        check(
            "simulator still alive after bogus reference", sim.running and content.about.name != ""
        )

        vm = c0_vms[6]
        reconfig(vm, memoryMB=8192)
        info, _ = wait(vm.RelocateVM_Task(spec=vim.vm.RelocateSpec(host=c1h0, pool=c1_pool)))
        check(
            "insufficient memory on target -> InsufficientResourcesFault",
            info.state == "error" and isinstance(info.error, vim.fault.InsufficientResourcesFault),
            f"{type(info.error).__name__}: requested={getattr(info.error, 'requested', None)} "
            f"unreserved={getattr(info.error, 'unreserved', None)}",
        )

        wait(vm.PowerOffVM_Task())
        info, _ = wait(vm.RelocateVM_Task(spec=vim.vm.RelocateSpec(host=c1h0, pool=c1_pool)))
        check(
            "powered-off VM (cold migration, no memory admission) -> success",
            info.state == "success"
            and vm.runtime.host == c1h0
            and vm.runtime.powerState == "poweredOff",
        )

        # -- checker calls -----------------------------------------------------------------------------------
        vm = c0_vms[7]
        cinfo, _ = wait(
            chk.CheckRelocate_Task(vm=vm, spec=vim.vm.RelocateSpec(host=c1h0, pool=c1_pool))
        )
        r0 = cinfo.result[0]
        check(
            "CheckRelocate_Task clean",
            cinfo.state == "success"
            and not r0.error
            and not r0.warning
            and r0.vm == vm
            and r0.host == c1h0,
        )
        set_extra(vm, "vmmove.checkWarning", "MigrationFault:network names differ")
        cinfo, _ = wait(chk.CheckMigrate_Task(vm=vm, host=c1h0, pool=c0_pool))
        r0 = cinfo.result[0]
        check(
            "CheckMigrate_Task -> InvalidArgument error + injected warning",
            [type(x).__name__ for x in r0.error] == ["vmodl.fault.InvalidArgument"]
            and [type(x).__name__ for x in r0.warning] == ["vim.fault.MigrationFault"],
            f"error={[x.msg for x in r0.error]} warning={[x.msg for x in r0.warning]}",
        )
        wait(c0h1.EnterMaintenanceMode_Task(timeout=0))
        cinfo, _ = wait(
            chk.QueryVMotionCompatibilityEx_Task(vm=[vm, c0_vms[8]], host=[c0h0, c0h1, c1h0])
        )
        summary = [
            (r.vm.name, r.host.name, [type(x).__name__ for x in r.error]) for r in cinfo.result
        ]
        check(
            "QueryVMotionCompatibilityEx_Task -> Result per (vm, host)",
            len(cinfo.result) == 6
            and all(bool(err) == (h == "DC0_C0_H1") for _, h, err in summary),
            str(summary),
        )
        compat = si.QueryVMotionCompatibility(
            vm=vm, host=[c0h0, c0h1], compatibility=["cpu", "software"]
        )
        check(
            "ServiceInstance.QueryVMotionCompatibility -> HostVMotionCompatibility[]",
            [(c.host.name, list(c.compatibility)) for c in compat]
            == [("DC0_C0_H0", ["cpu", "software"]), ("DC0_C0_H1", [])],
            str([(c.host.name, list(c.compatibility)) for c in compat]),
        )
        wait(c0h1.ExitMaintenanceMode_Task(timeout=0))

        # -- 20 concurrent relocations -------------------------------------------------------------------------
        movers = [v for v in c1_vms if v.runtime.powerState == "poweredOn"][:10] + [
            v for v in c0_vms[8:] + [vms[f"DC0_H0_VM{i}"] for i in range(10)]
        ][:10]
        movers = movers[:20]

        def move(v):
            tgt_host, tgt_pool = (c0h0, c0_pool) if v.resourcePool == c1_pool else (c1h1, c1_pool)
            t = time.monotonic()
            info, seen = wait(
                v.RelocateVM_Task(spec=vim.vm.RelocateSpec(host=tgt_host, pool=tgt_pool)), poll=0.1
            )
            return (
                v.name,
                info.state,
                time.monotonic() - t,
                v.runtime.host == tgt_host,
                type(info.error).__name__ if info.error else None,
            )

        t = time.monotonic()
        with ThreadPoolExecutor(max_workers=20) as pool:
            out = list(pool.map(move, movers))
        wall = time.monotonic() - t
        per = sorted(d for _, _, d, _, _ in out)
        check(
            "20 concurrent relocations (1 s each) all succeed",
            len(out) == 20 and all(s == "success" and moved for _, s, _, moved, _ in out),
            f"wall {wall:.2f} s, per-task {per[0]:.2f}-{per[-1]:.2f} s; "
            f"failures={[(n, e) for n, s, _, _, e in out if s != 'success']}",
        )
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        check("smoke run completed without exceptions", False)
    finally:
        if si is not None:
            try:
                Disconnect(si)
            except Exception:  # noqa: BLE001
                pass
        pid, tmpdir = sim.pid, sim.tmpdir
        sim.stop()
        gone = (
            not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
        )
        check(
            "simulator stopped by PID and TMPDIR removed",
            gone and not os.path.exists(tmpdir),
            f"pid {pid}",
        )

    failed = [n for n, ok, _ in RESULTS if not ok]
    print(
        f"\n{len(RESULTS) - len(failed)}/{len(RESULTS)} checks passed in {time.monotonic() - t0:.1f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
