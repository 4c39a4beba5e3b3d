"""Fixtures for the vSphere backend tests: govmomi's vCenter simulator with vmmove's
migration extension (``plugins/vsphere/testbed``), started and stopped by PID.

- ``vcsim``: one simulator for the whole session (tests that change nothing: TLS, login,
  inventory). Built first if the binary is missing (``testbed/build.sh``).
- ``fresh_vcsim``: a simulator of its own for one test (about 0.15 s to start), for tests
  and the contract suite that move VMs or change hosts. Parametrized: every such test runs
  on the stock behaviour and again with the platform variants that must not change its
  outcome switched on (:data:`NEUTRAL_VARIANTS`).
- ``estate``: pyVmomi helpers to arrange a simulator (maintenance mode, power, directives).

Each simulator gets its own TMPDIR (the simulator keeps its datastores there) and is
stopped by its PID; the directory is removed with it. Nothing here reads outside the repo.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import vmmove
from vmmove.engine import Connection

TESTBED = Path(__file__).resolve().parents[1] / "testbed"
#: Hosts, clusters and VMs of every simulator here: DC0 with clusters DC0_C0 and DC0_C1 of
#: two hosts each (DC0_C0_H0...), three 32 MiB VMs per cluster (DC0_C0_RP0_VM0...).
MODEL: dict[str, Any] = {
    "cluster": 2,
    "host": 2,
    "vm": 3,
    "standalone_host": 0,
    "migrate_duration": "1s",
}


#: Platform variants (testbed README, "Platform variants") that must not change the outcome of
#: any migration test: refusals arrive as tasks that start and then fail; the pool-less
#: QueryVMotionCompatibilityEx_Task flags every host in another cluster; a finished task is
#: forgotten 0.3 s after it ends (a poll may find it gone: the outcome comes from the VM).
NEUTRAL_VARIANTS: dict[str, Any] = {
    "validation_faults": "running",
    "compat_ex_poolless": True,
    "task_retention": "0.3s",
}


def _load_vcsim() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "vmmove_vsphere_testbed_vcsim", TESTBED / "vcsim.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def vcsim_module() -> ModuleType:
    return _load_vcsim()


@pytest.fixture(scope="session")
def vcsim_binary(vcsim_module: ModuleType) -> Path:
    """The simulator binary, built by ``testbed/build.sh`` when it is missing or older than
    its sources (build.sh checks that in about 0.05 s)."""
    started = time.monotonic()
    path = vcsim_module.build(force=True)
    took = time.monotonic() - started
    if took > 1:
        print(f"\nvcsim-vmmove built in {took:.1f} s: {path}")
    return Path(path)


@pytest.fixture(scope="session")
def start_vcsim(vcsim_module: ModuleType, vcsim_binary: Path) -> Iterator[Callable[..., Any]]:
    """``start_vcsim(**flags)``: a running simulator; every one still running at the end
    of the session is stopped by its PID."""
    running: list[Any] = []

    def start(**flags: Any) -> Any:
        sim = vcsim_module.Vcsim.start(binary=vcsim_binary, **{**MODEL, **flags})
        running.append(sim)
        return sim

    yield start
    for sim in running:
        sim.stop()


@pytest.fixture(scope="session")
def vcsim(start_vcsim: Callable[..., Any]) -> Any:
    """The session's simulator. Tests using it must leave it as they found it."""
    return start_vcsim()


@pytest.fixture(params=["stock", "variants"])
def fresh_vcsim(request: pytest.FixtureRequest, start_vcsim: Callable[..., Any]) -> Iterator[Any]:
    """A simulator for this test alone: stock, then with :data:`NEUTRAL_VARIANTS` on."""
    variants = NEUTRAL_VARIANTS if request.param == "variants" else {}
    sim = start_vcsim(**variants)
    sim.variants = dict(variants)
    yield sim
    sim.stop()


def uri_of(sim: Any, datacenter: str = "DC0", host: str = "127.0.0.1") -> str:
    return f"vsphere://{sim.username}@{host}:{sim.port}/{datacenter}"


def connect(sim: Any, **options: Any) -> Connection:
    """A vmmove connection to ``sim`` with its CA trusted (options override)."""
    options = {
        "password": vmmove.Secret(sim.password),
        "ca_file": sim.ca_file,
        "poll_interval": 0.25,
        **options,
    }
    return vmmove.connect(uri_of(sim), **options)


@pytest.fixture(scope="session")
def uri_for() -> Callable[..., str]:
    """``uri_for(sim, datacenter="DC0", host="127.0.0.1")``: the simulator's vsphere:// URI."""
    return uri_of


@pytest.fixture(scope="session")
def connect_to() -> Callable[..., Connection]:
    """``connect_to(sim, **options)``: a vmmove connection with the simulator's CA trusted."""
    return connect


class Estate:
    """pyVmomi access to a simulator, to arrange and inspect it behind vmmove's back."""

    def __init__(self, sim: Any) -> None:
        from pyVmomi import vim

        self.vim = vim
        self.sim = sim
        self.si = sim.connect()
        self.content = self.si.RetrieveContent()

    @property
    def keeps_tasks(self) -> bool:
        """Finished tasks stay readable (no short task retention on this simulator)."""
        return "task_retention" not in getattr(self.sim, "variants", {})

    def reconnect(self) -> None:
        """A new session, after the simulator restarted (its sessions and connections died)."""
        self.si = self.sim.connect()
        self.content = self.si.RetrieveContent()

    def close(self) -> None:
        from pyVim.connect import Disconnect

        with contextlib.suppress(Exception):  # a session a restart already dropped
            Disconnect(self.si)

    def _all(self, kind: Any) -> list[Any]:
        view = self.content.viewManager.CreateContainerView(self.content.rootFolder, [kind], True)
        try:
            return list(view.view)
        finally:
            view.Destroy()

    def vm(self, name: str) -> Any:
        (vm,) = [v for v in self._all(self.vim.VirtualMachine) if v.name == name]
        return vm

    def host(self, name: str) -> Any:
        (host,) = [h for h in self._all(self.vim.HostSystem) if h.name == name]
        return host

    def wait(self, task: Any, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while task.info.state not in ("success", "error"):
            assert time.monotonic() < deadline, f"task {task} did not end"
            time.sleep(0.02)
        return task.info

    def set_extra(self, vm_name: str, key: str, value: str) -> None:
        """A per-VM directive of the simulator (``vmmove.inject``, ``vmmove.migrateDuration``,
        ``vmmove.checkError``, ``vmmove.checkWarning``); ``""`` clears it."""
        vim = self.vim
        spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key=key, value=value)])
        info = self.wait(self.vm(vm_name).ReconfigVM_Task(spec=spec))
        assert info.state == "success", info.error

    def power_off(self, vm_name: str) -> None:
        info = self.wait(self.vm(vm_name).PowerOffVM_Task())
        assert info.state == "success", info.error

    def suspend(self, vm_name: str) -> None:
        info = self.wait(self.vm(vm_name).SuspendVM_Task())
        assert info.state == "success", info.error

    def maintenance(self, host_name: str, on: bool = True) -> None:
        host = self.host(host_name)
        task = host.EnterMaintenanceMode_Task(timeout=0) if on else host.ExitMaintenanceMode_Task(0)
        assert self.wait(task).state == "success"

    def placement(self, vm_name: str) -> tuple[str, str, list[str], str]:
        """(host name, resource pool's owner name, datastore names, power state)."""
        vm = self.vm(vm_name)
        return (
            vm.runtime.host.name,
            vm.resourcePool.owner.name,
            sorted(d.name for d in vm.datastore),
            str(vm.runtime.powerState),
        )

    def tasks(self, vm_name: str, description: str = "VirtualMachine.relocate") -> list[Any]:
        """TaskInfo of the VM's recent tasks of one kind (tasks vCenter forgets meanwhile are
        left out)."""
        from pyVmomi import vmodl

        vm = self.vm(vm_name)
        infos = []
        for task in self.content.taskManager.recentTask:
            try:
                info = task.info
            except vmodl.fault.ManagedObjectNotFound:
                continue
            if info.entity == vm and info.descriptionId == description:
                infos.append(info)
        return infos


@pytest.fixture
def estate(fresh_vcsim: Any) -> Iterator[Estate]:
    """pyVmomi helpers on this test's own simulator."""
    helper = Estate(fresh_vcsim)
    yield helper
    helper.close()


@pytest.fixture(scope="session")
def estate_type() -> type[Estate]:
    """The :class:`Estate` helper class, for fixtures of a wider scope than ``estate``."""
    return Estate


@pytest.fixture
def make_estate(start_vcsim: Callable[..., Any]) -> Iterator[Callable[..., Estate]]:
    """``make_estate(**flags)``: a simulator of this test's own with those flags, and its
    :class:`Estate`; both closed at the end of the test."""
    made: list[Estate] = []

    def make(**flags: Any) -> Estate:
        sim = start_vcsim(**flags)
        sim.variants = dict(flags)
        helper = Estate(sim)
        made.append(helper)
        return helper

    yield make
    for helper in made:
        helper.close()
        helper.sim.stop()


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tests say where the password comes from, not the developer's environment, and each
    writes its migration journal into its own folder, never the user's."""
    monkeypatch.delenv("VMMOVE_PASSWORD", raising=False)
    monkeypatch.delenv("VMMOVE_URI", raising=False)
    journal = tmp_path / "journal.sqlite3"
    monkeypatch.setenv("VMMOVE_JOURNAL", str(journal))
    return journal
