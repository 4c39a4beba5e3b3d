"""Fixtures for the libvirt backend's tests: two real libvirt hosts on this machine.

The session starts them with ``testbed/hosts.py`` (imported by path) and stops them, by PID,
at the end. Guests are the testbed's TCG test guest: a kernel and an init that dirties memory
at a given rate and checks its own pages, so every migration test also proves the guest's
memory arrived intact (heartbeat ``bad=0``).

Run ``bash plugins/libvirt/testbed/setup.sh`` once first (as root).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

TESTBED_DIR = Path(__file__).resolve().parent.parent / "testbed"
HOST_A, HOST_B = "vmmove-host-a", "vmmove-host-b"
#: Guests this suite creates carry this prefix; anything else on the hosts is left alone.
PREFIX = "vt-"


def load_testbed() -> ModuleType:
    """``testbed/hosts.py`` as a module (it is not a package)."""
    name = "vmmove_libvirt_testbed_hosts"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TESTBED_DIR / "hosts.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def hostsmod() -> ModuleType:
    return load_testbed()


@pytest.fixture(scope="session")
def lv() -> Any:
    libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed")
    from vmmove_libvirt.events import ensure_loop

    ensure_loop(libvirt)  # before any connection opens
    return libvirt


#: The link between the hosts: ``lan`` (32 MiB/s, 0.5 ms RTT) unless VMMOVE_TESTBED_PROFILE
#: names another (``wan``, ``fat``: unshaped). Which libvirt the hosts run: the machine's (9.0)
#: unless VMMOVE_TESTBED_LIBVIRT=backports (libvirt 11, see the testbed's README).
PROFILE = os.environ.get("VMMOVE_TESTBED_PROFILE") or "lan"


@pytest.fixture(scope="session")
def testbed(hostsmod: ModuleType, lv: Any) -> Iterator[Any]:
    """Both hosts, each in its own network namespace, joined by a link shaped to ``PROFILE``,
    started for the session (or reused when ``VMMOVE_TESTBED_REUSE=1`` and ``hosts.py start``
    left them running with that profile: then they are left running too)."""
    reuse = os.environ.get("VMMOVE_TESTBED_REUSE") == "1"
    try:
        tb = hostsmod.Testbed.start(reuse=reuse, profile=PROFILE)
    except hostsmod.TestbedError as exc:
        pytest.fail(f"libvirt testbed unavailable: {exc} (run plugins/libvirt/testbed/setup.sh)")
    started = bool(tb._procs)
    try:
        yield tb
    finally:
        if started:
            tb.stop()


class Guests:
    """Test guests on the two hosts, through raw libvirt (not the code under test)."""

    def __init__(self, tb: Any, lv: Any, hostsmod: ModuleType) -> None:
        self.tb = tb
        self.lv = lv
        self.hm = hostsmod
        self.conns = [lv.open(uri) for uri in tb.uris]

    def close(self) -> None:
        for conn in self.conns:
            conn.close()

    def console(self, name: str) -> str:
        return str(self.tb.console_path(name))

    def xml(self, name: str, **kw: Any) -> str:
        emulator = kw.pop("emulator", None)
        extra_devices = kw.pop("devices", "")
        xml = self.tb.domain_xml(name, **kw)
        if emulator is not None:
            xml = xml.replace(
                f"<emulator>{self.tb.emulator}</emulator>", f"<emulator>{emulator}</emulator>"
            )
        if extra_devices:
            xml = xml.replace("<devices>", f"<devices>\n{extra_devices}", 1)
        return xml

    def create(
        self,
        name: str,
        *,
        host: int = 0,
        start: bool = True,
        paused: bool = False,
        wait_beats: int = 0,
        **kw: Any,
    ) -> Any:
        """Define ``name`` on host ``host`` (0 = a, 1 = b), start it, and wait for its
        ``wait_beats``-th heartbeat (0: don't wait; the guest is still booting)."""
        assert name.startswith(PREFIX)
        self.remove(name)
        dom = self.conns[host].defineXML(self.xml(name, **kw))
        if start:
            dom.createWithFlags(self.lv.VIR_DOMAIN_START_PAUSED if paused else 0)
        if wait_beats:
            self.wait_beat(name, wait_beats)
        return dom

    def find(self, name: str) -> list[tuple[int, Any]]:
        out = []
        for i, uri in enumerate(self.tb.uris):
            if not self.conns[i].isAlive():  # its libvirtd restarted
                self.conns[i] = self.lv.open(uri)
            with contextlib.suppress(self.lv.libvirtError):
                out.append((i, self.conns[i].lookupByName(name)))
        return out

    def remove(self, name: str) -> None:
        for _, dom in self.find(name):
            try:
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            except self.lv.libvirtError:
                pass

    def remove_all(self, keep: Callable[[str], bool] = lambda n: False) -> None:
        for conn in self.conns:
            for dom in conn.listAllDomains(0):
                if dom.name().startswith(PREFIX) and not keep(dom.name()):
                    self.remove(dom.name())

    def heartbeats(self, name: str) -> Any:
        return self.hm.read_heartbeats(self.console(name))

    def wait_beat(self, name: str, seq: int, timeout: float = 90.0) -> Any:
        return self.hm.wait_heartbeat(self.console(name), seq, timeout=timeout)

    def wait_boot(self, name: str, boots: int, seq: int, timeout: float = 90.0) -> Any:
        """Wait until the console shows boot number ``boots`` beating up to ``seq``."""
        hb = None

        def there() -> bool:
            nonlocal hb
            hb = self.heartbeats(name)
            return bool(hb.boots >= boots and hb.latest_seq >= seq)

        assert self.wait_until(there, timeout, step=0.2), hb
        return hb

    def assert_alive_and_intact(self, name: str, more: int = 3, timeout: float = 60.0) -> Any:
        """The guest keeps beating (``more`` new heartbeats) and its page check found no
        corrupt page, on one boot, without a kernel panic."""
        seq = self.heartbeats(name).latest_seq
        hb = self.wait_beat(name, seq + more, timeout=timeout)
        assert hb.bad == 0, hb.bad_lines
        assert not hb.panic_lines, hb.panic_lines
        assert hb.boots == 1, f"{name} rebooted: {hb.boots} boots"
        return hb

    @staticmethod
    def wait_until(what: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if what():
                return True
            time.sleep(step)
        return what()

    def running(self, name: str) -> list[str]:
        """The hosts where ``name`` runs, a paused copy marked as such."""
        ids = (HOST_A, HOST_B)
        out = []
        for i, dom in self.find(name):
            if dom.isActive():
                paused = dom.state()[0] == self.lv.VIR_DOMAIN_PAUSED
                out.append(ids[i] + (" (paused)" if paused else ""))
        return out

    def where(self, name: str) -> list[tuple[str, bool]]:
        """(host id, active) for every host that knows ``name``."""
        ids = (HOST_A, HOST_B)
        return [(ids[i], bool(dom.isActive())) for i, dom in self.find(name)]


@pytest.fixture(scope="session")
def guests_session(testbed: Any, lv: Any, hostsmod: ModuleType) -> Iterator[Guests]:
    g = Guests(testbed, lv, hostsmod)
    g.remove_all()
    yield g
    g.remove_all()
    g.close()


@pytest.fixture
def guests(guests_session: Guests) -> Iterator[Guests]:
    """Per test: whatever guest the test made is gone afterwards."""
    yield guests_session
    guests_session.remove_all(keep=lambda n: n.startswith(PREFIX + "c-"))


@pytest.fixture
def fault_row(guests: Guests, fault_table: Any) -> Callable[[str, str, Any, str], None]:
    """``fault_row(fault, phase, record, vm_name)``: this test's row of the libvirt fault
    table (printed at the end of the session); where the VM runs is read from the hosts."""

    def add(fault: str, phase: str, record: Any, name: str) -> None:
        where = ", ".join(guests.running(name)) or "-"
        row = (fault, phase, str(record.phase), record.error_type or "", where)
        fault_table("libvirt fault matrix (real libvirt + QEMU)", row)

    return add


@pytest.fixture(scope="session")
def cluster_uri(testbed: Any) -> str:
    """Both hosts in one URI: ``qemu+tcp://10.213.X.1:16600,10.213.X.2:16601/system``."""
    authorities = ",".join(uri.split("/")[2] for uri in testbed.uris)
    return f"qemu+tcp://{authorities}/system"


@pytest.fixture
def connect(cluster_uri: str) -> Iterator[Callable[..., Any]]:
    """``connect(**options)``: a vmmove connection to the cluster, closed after the test.
    Records stay in memory: tests do not share the user's journal."""
    import vmmove
    from vmmove.store import MemoryStore

    opened: list[Any] = []

    def _connect(**options: Any) -> Any:
        conn = vmmove.connect(cluster_uri, store=MemoryStore(), **options)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.close()


@pytest.fixture
def cold_policy() -> Callable[..., Any]:
    """``cold_policy(shutdown, base="balanced")``: ``base`` (a preset name or a Policy) whose
    cold moves power the guest off after ``shutdown`` seconds. The test guest ignores ACPI,
    and the wait is the core's (the policy's ``shutdown_timeout``), not the backend's."""
    from dataclasses import replace

    from vmmove.policy import resolve

    def make(shutdown: float, base: Any = "balanced", boot: float = 60.0) -> Any:
        return replace(resolve(base), shutdown_timeout=shutdown, boot_timeout=boot)

    return make


@pytest.fixture
def quick_cold(cold_policy: Callable[..., Any]) -> Callable[..., Any]:
    """``quick_cold(conn)``: ``conn`` whose migrations run under ``cold_policy(3 s)`` of the
    policy they ask for (for the contract kit's own tests, which pass no policy of ours)."""

    def wrap(conn: Any, shutdown: float = 3.0) -> Any:
        migrate = conn.migrate

        def _migrate(*args: Any, **kw: Any) -> Any:
            if kw.get("spec") is None:
                kw["policy"] = cold_policy(shutdown, kw.get("policy") or "balanced")
            return migrate(*args, **kw)

        conn.migrate = _migrate
        return conn

    return wrap
