"""The libvirt backend against a fake libvirt: what the two real hosts cannot be made to do on
cue (a ``jobStats()`` that blocks, a daemon that is down at the moment of a question, a
post-copy that broke), and what needs no daemon at all (option checks, lazy capabilities).

The fake has libvirt-python's constants and exception class, and hosts, connections and
domains that answer the calls the backend makes, each from a plain attribute a test sets.
"""

# ruff: noqa: N802 (the fakes answer libvirt-python's camelCase calls)
from __future__ import annotations

import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from vmmove.backend import JobRef
from vmmove.errors import ConnectionFailed, InvalidInput, NotFound, NotSupported
from vmmove.machine import Phase
from vmmove.model import Capacity, HostInfo, MiB, MigrationMode, MigrationSpec, PowerState, VMInfo
from vmmove.policy import PRESETS, AtIteration, AutoConverge, Compress, Policy, PostCopy, Step

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed")

from vmmove_libvirt import backend as backend_mod  # noqa: E402
from vmmove_libvirt import connection as connection_mod  # noqa: E402
from vmmove_libvirt import jobs as jobs_mod  # noqa: E402
from vmmove_libvirt.backend import LibvirtBackend, Marker  # noqa: E402
from vmmove_libvirt.config import parse  # noqa: E402

RUNNING, PAUSED, SHUTOFF = libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED, 5
UUID = "6f1c2c1e-8d7b-4f7a-9a55-1d1f0f0c0a01"
DOMAIN_XML = f"""<domain type='qemu'><name>web-1</name><uuid>{UUID}</uuid>
  <memory unit='KiB'>262144</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os><devices/></domain>"""


class FakeError(libvirt.libvirtError):
    def __init__(self, message: str, code: int = libvirt.VIR_ERR_INTERNAL_ERROR) -> None:
        Exception.__init__(self, message)
        self.code = code

    def get_error_code(self) -> int:
        return self.code


class FakeHost:
    def __init__(self, name: str, uuid: str) -> None:
        self.name = name
        self.uuid = uuid
        self.up = True
        self.doms: dict[str, FakeDom] = {}
        self.capability_calls = 0
        self.list_calls = 0

    def check(self) -> None:
        if not self.up:
            raise FakeError("Cannot write data: Broken pipe", libvirt.VIR_ERR_SYSTEM_ERROR)


class FakeDom:
    def __init__(self, host: FakeHost, *, state: int = RUNNING, reason: int = 1) -> None:
        self.host = host
        self.st, self.reason = state, reason
        self.persistent = True
        self.stats: dict[str, Any] = {"type": 0}
        self.stats_gate: threading.Event | None = None  # jobStats waits for it
        self.in_stats = threading.Event()
        self.marker: str | None = None
        self.migrated = threading.Event()  # migrateToURI3 returns when set
        self.migrate_error: Exception | None = None
        self.calls: list[tuple[Any, ...]] = []
        self.after_downtime: Callable[[int], None] | None = None
        self.dirty_mib_s: int | None = None  # what libvirt's dirty-rate calculation reads
        host.doms[UUID] = self

    def UUIDString(self) -> str:
        return UUID

    def name(self) -> str:
        return "web-1"

    def state(self) -> list[int]:
        self.host.check()
        return [self.st, self.reason]

    def isActive(self) -> bool:
        self.host.check()
        return self.st != SHUTOFF

    def isPersistent(self) -> bool:
        return self.persistent

    def info(self) -> list[int]:
        return [self.st, 262144, 262144, 1, 0]

    def XMLDesc(self, _flags: int = 0) -> str:
        return DOMAIN_XML

    def jobStats(self, flags: int = 0) -> dict[str, Any]:
        self.host.check()
        if flags & libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED:
            # The last job's (a poll's gate does not hold it); libvirt removes them once
            # read unless asked to keep them.
            stats = dict(self.stats)
            if not flags & libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED:
                self.stats = {"type": 0}
            return stats
        self.in_stats.set()
        if self.stats_gate is not None:
            self.stats_gate.wait(10)
        self.host.check()
        return dict(self.stats)

    def metadata(self, _kind: int, _uri: str, _flags: int) -> str:
        self.host.check()
        if self.marker is None:
            raise FakeError("no metadata", libvirt.VIR_ERR_NO_DOMAIN_METADATA)
        return self.marker

    def setMetadata(self, _kind: int, xml: str, _key: str, _uri: str, _flags: int) -> None:
        self.marker = xml

    def migrateToURI3(self, uri: str, params: dict[str, Any], flags: int) -> None:
        self.calls.append(("migrate", uri, dict(params), flags))
        self.stats = {"type": 2, "operation": 5, "data_total": 256 * MiB, "memory_iteration": 1}
        self.migrated.wait(10)
        self.stats = {"type": 0}
        if self.migrate_error is not None:
            raise self.migrate_error

    def migrateSetMaxDowntime(self, ms: int, _flags: int) -> None:
        self.calls.append(("downtime", ms))
        if self.after_downtime is not None:
            self.after_downtime(ms)

    def migrateStartPostCopy(self, _flags: int) -> None:
        started = [c for c in self.calls if c[0] == "migrate"]
        if started and not started[-1][3] & libvirt.VIR_MIGRATE_POSTCOPY:
            raise FakeError(
                "Requested operation is not valid: post-copy migration was not enabled",
                libvirt.VIR_ERR_OPERATION_INVALID,
            )
        self.calls.append(("postcopy",))

    def startDirtyRateCalc(self, seconds: int, _flags: int) -> None:
        self.calls.append(("dirtyrate", seconds))

    def abortJob(self) -> None:
        self.calls.append(("abort",))

    def dirty_stats(self) -> dict[str, Any]:
        if self.dirty_mib_s is None:
            return {"dirtyrate.calc_status": 0}
        return {
            "dirtyrate.calc_status": 2,
            "dirtyrate.calc_start_time": int(time.time()),
            "dirtyrate.megabytes_per_second": self.dirty_mib_s,
        }


class FakeConn:
    def __init__(self, host: FakeHost) -> None:
        self.host = host
        self.open = True

    def isAlive(self) -> bool:
        return self.open and self.host.up

    def getHostname(self) -> str:
        return self.host.name

    def getLibVersion(self) -> int:
        return 9_000_000

    def getVersion(self) -> int:
        self.host.capability_calls += 1  # the QEMU driver builds its capabilities for it
        return 10_000_002

    def getCapabilities(self) -> str:
        self.host.check()
        self.host.capability_calls += 1
        return (
            f"<capabilities><host><uuid>{self.host.uuid}</uuid><cpu><arch>x86_64</arch>"
            "<model>qemu64</model></cpu></host></capabilities>"
        )

    def getDomainCapabilities(self, *_args: Any) -> str:
        return "<domainCapabilities><machine>pc-i440fx-10.0</machine></domainCapabilities>"

    def getInfo(self) -> list[Any]:
        self.host.check()
        return ["x86_64", 4096, 2, 0, 1, 1, 2, 1]

    def getFreeMemory(self) -> int:
        return 2048 * MiB

    def domainListGetStats(self, doms: list[FakeDom], _flags: int) -> list[tuple[FakeDom, Any]]:
        self.host.check()
        return [(dom, dom.dirty_stats()) for dom in doms]

    def listAllDomains(self, _flags: int = 0) -> list[FakeDom]:
        self.host.check()
        self.host.list_calls += 1
        return list(self.host.doms.values())

    def lookupByName(self, name: str) -> FakeDom:
        self.host.check()
        for dom in self.host.doms.values():
            if dom.name() == name:
                return dom
        raise FakeError("no domain", libvirt.VIR_ERR_NO_DOMAIN)

    def domainEventRegisterAny(self, *_args: Any) -> int:
        return 1

    def domainEventDeregisterAny(self, _cb: int) -> None:
        pass

    def close(self) -> None:
        self.open = False

    def lookupByUUIDString(self, uuid: str) -> FakeDom:
        self.host.check()
        try:
            return self.host.doms[uuid]
        except KeyError:
            raise FakeError("no domain", libvirt.VIR_ERR_NO_DOMAIN) from None


class Fake:
    """A cluster of fake hosts behind a libvirt-like module; ``fake.lv`` goes to the backend."""

    def __init__(self, *hosts: FakeHost) -> None:
        self.hosts = {f"qemu+tcp://{h.name}/system": h for h in hosts}
        constants = {k: v for k, v in vars(libvirt).items() if k.startswith("VIR_")}
        self.lv = types.SimpleNamespace(
            **constants, libvirtError=libvirt.libvirtError, open=self.open
        )

    def open(self, uri: str) -> FakeConn:
        host = self.hosts[uri]
        if not host.up:
            raise FakeError("unable to connect", libvirt.VIR_ERR_SYSTEM_ERROR)
        return FakeConn(host)


@pytest.fixture
def no_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake has no event loop; the real one must not be registered for it either. And
    no name is looked up in DNS: every fake host's name resolves, unless a test says not."""
    monkeypatch.setattr(connection_mod, "ensure_loop", lambda _lv: None)
    monkeypatch.setattr(backend_mod, "resolves", lambda _name: True)
    # The fake sends no JOB_COMPLETED event: don't wait for it.
    monkeypatch.setattr(jobs_mod, "FINAL_EVENT_WAIT", 0.0)
    monkeypatch.setattr(jobs_mod, "SETTLE_EVENT_WAIT", 0.0)


@pytest.fixture
def cluster(no_event_loop: None) -> Iterator[Callable[..., tuple[LibvirtBackend, Fake]]]:
    made: list[LibvirtBackend] = []

    def make(*hosts: FakeHost, **options: Any) -> tuple[LibvirtBackend, Fake]:
        hosts = hosts or (FakeHost("a", "uuid-a"), FakeHost("b", "uuid-b"))
        fake = Fake(*hosts)
        uri = "qemu+tcp://" + ",".join(h.name for h in hosts) + "/system"
        backend = LibvirtBackend(parse(uri, options), lv=fake.lv)
        made.append(backend)
        return backend, fake

    yield make
    for backend in made:
        backend.close()


def vm_on(host: str) -> VMInfo:
    return VMInfo(
        id=UUID, name="web-1", host=host, power=PowerState.RUNNING, memory=256 * MiB, vcpus=1
    )


def host_info(host: str) -> HostInfo:
    return HostInfo(id=host, name=host, capacity=Capacity(cpus=2, memory=4096 * MiB))


def start(backend: LibvirtBackend, request_id: str = "req-1", **spec: Any) -> Any:
    return backend.start(
        vm_on("a"),
        host_info("b"),
        MigrationSpec(vm=UUID, **spec),
        MigrationMode.LIVE,
        policy=PRESETS["balanced"],
        needs=frozenset({"postcopy"}),
        reservation=None,
        request_id=request_id,
    )


def wait_for(what: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


# ---- poll never calls libvirt --------------------------------------------------------------


def test_poll_answers_at_once_while_jobstats_blocks(cluster: Any) -> None:
    """QEMU's switch-over holds jobStats() for about 2 s; poll answers from the last sample
    meanwhile, and the next sample shows up once the call returns."""
    backend, fake = cluster()
    dom = FakeDom(fake.hosts["qemu+tcp://a/system"])
    job = start(backend)
    wait_for(lambda: backend.poll(job).phase is Phase.TRANSFERRING)

    dom.stats_gate = threading.Event()
    dom.in_stats.clear()
    assert dom.in_stats.wait(5)  # the monitor is now stuck inside jobStats()
    dom.stats = {"type": 2, "operation": 5, "data_total": 256 * MiB, "memory_iteration": 3}
    slowest = 0.0
    for _ in range(20):
        t0 = time.monotonic()
        status = backend.poll(job)
        slowest = max(slowest, time.monotonic() - t0)
        assert status.phase is Phase.TRANSFERRING
        assert status.iteration == 1  # the sample from before the block
    assert slowest < 0.05, f"poll took {slowest:.3f} s while jobStats() blocked"

    dom.stats_gate.set()
    wait_for(lambda: backend.poll(job).iteration == 3)
    dom.migrated.set()
    wait_for(lambda: backend.poll(job).phase.terminal)
    status = backend.poll(job)
    assert (status.phase, status.vm_host) == (Phase.COMPLETED, "b")
    backend.finish(job)


def test_tune_returns_within_its_bound_while_the_monitor_is_blocked(cluster: Any) -> None:
    backend, fake = cluster()
    dom = FakeDom(fake.hosts["qemu+tcp://a/system"])
    job = start(backend)
    wait_for(lambda: backend.poll(job).phase is Phase.TRANSFERRING)
    dom.stats_gate = threading.Event()
    dom.in_stats.clear()
    assert dom.in_stats.wait(5)
    from vmmove.policy import SetDowntime

    t0 = time.monotonic()
    backend.tune(job, SetDowntime(ms=900))
    assert time.monotonic() - t0 < jobs_mod.TUNE_WAIT + 0.2
    backend.abort(job)  # asks only: the monitor sends abortJob once it is free
    assert ("downtime", 900) not in dom.calls
    dom.stats_gate.set()
    wait_for(lambda: ("downtime", 900) in dom.calls and ("abort",) in dom.calls)
    # policy steps and aborts reach libvirt in the order they were given
    assert dom.calls.index(("downtime", 900)) < dom.calls.index(("abort",))
    dom.migrate_error = FakeError("operation aborted: migration out job: canceled by client")
    dom.migrated.set()
    wait_for(lambda: backend.poll(job).phase.terminal)
    status = backend.poll(job)
    assert (status.phase, status.vm_host) == (Phase.CANCELLED, "a")


def test_steps_of_one_poll_are_not_held_up_by_a_sample_between_them(cluster: Any) -> None:
    """At a pass boundary QEMU answers jobStats() seconds late (3.6 s measured) while it still
    takes a downtime change at once. A policy's steps come one after the other: a sample must
    not slip in between them, or the second waits for it (balanced's 5 s downtime step came
    3.5 s late and cost a pass: 1.31x the bound instead of 0.86x)."""
    from vmmove.policy import SetDowntime

    backend, fake = cluster()
    dom = FakeDom(fake.hosts["qemu+tcp://a/system"])
    job = start(backend)
    wait_for(lambda: backend.poll(job).phase is Phase.TRANSFERRING)
    gate = threading.Event()

    def pass_boundary(ms: int) -> None:
        if ms == 500:
            dom.stats_gate = gate  # from now on jobStats() blocks

    dom.after_downtime = pass_boundary
    backend.tune(job, SetDowntime(ms=500))
    t0 = time.monotonic()
    backend.tune(job, SetDowntime(ms=5000))
    assert time.monotonic() - t0 < 0.2
    assert ("downtime", 5000) in dom.calls
    gate.set()
    dom.migrated.set()
    wait_for(lambda: backend.poll(job).phase.terminal)


def test_poll_raises_connection_failed_while_the_source_is_down(cluster: Any) -> None:
    backend, fake = cluster()
    host_a = fake.hosts["qemu+tcp://a/system"]
    dom = FakeDom(host_a)
    job = start(backend)
    wait_for(lambda: backend.poll(job).phase is Phase.TRANSFERRING)
    host_a.up = False

    def refused() -> bool:
        try:
            backend.poll(job)
        except ConnectionFailed:
            return True
        return False

    wait_for(refused)
    host_a.up = True
    wait_for(lambda: not refused())
    assert backend.poll(job).phase is Phase.TRANSFERRING
    dom.migrated.set()
    wait_for(lambda: backend.poll(job).phase is Phase.COMPLETED)


# ---- post-copy that broke --------------------------------------------------------------------


def test_a_broken_postcopy_is_failed_at_once_though_the_call_never_returns(cluster: Any) -> None:
    backend, fake = cluster()
    host_a, host_b = fake.hosts["qemu+tcp://a/system"], fake.hosts["qemu+tcp://b/system"]
    src = FakeDom(host_a)
    FakeDom(host_b, state=RUNNING, reason=libvirt.VIR_DOMAIN_RUNNING_POSTCOPY)
    job = start(backend)
    wait_for(lambda: backend.poll(job).phase is Phase.TRANSFERRING)
    from vmmove.policy import PostCopy

    backend.tune(job, PostCopy())
    src.st, src.reason = PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY
    wait_for(lambda: backend.poll(job).phase is Phase.POSTCOPY)
    assert backend.locate(UUID) == "b"  # in post-copy the destination runs the VM

    del host_b.doms[UUID]  # the destination QEMU died; migrateToURI3 stays blocked
    src.reason = libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED
    t0 = time.monotonic()
    wait_for(lambda: backend.poll(job).phase.terminal, timeout=2)
    took = time.monotonic() - t0
    status = backend.poll(job)
    assert status.phase is Phase.FAILED
    assert status.postcopy
    assert status.vm_host is None
    assert took < 5 * jobs_mod.FAST_POLL + 0.5
    assert status.error is not None
    assert "paused" in status.error
    assert "virsh -c qemu+tcp://a/system destroy web-1" in status.error
    assert backend.locate(UUID) is None  # the paused source is not where the VM runs
    assert not src.migrated.is_set()  # still "in" the call: the job did not wait for it
    backend.finish(job)
    src.migrated.set()


def test_a_source_left_paused_for_the_switch_with_its_destination_gone(
    cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The destination dies as the source pauses to switch to post-copy, and libvirt leaves
    the source paused (reason MIGRATION) with the call hanging: failed after a short grace,
    with both ways out, since vmmove cannot tell whether the destination ever ran the guest.
    A source libvirt resumes within the grace is not touched."""
    monkeypatch.setattr(jobs_mod, "SWITCH_GRACE", 0.3)
    backend, fake = cluster()
    host_a, host_b = fake.hosts["qemu+tcp://a/system"], fake.hosts["qemu+tcp://b/system"]
    src = FakeDom(host_a)
    FakeDom(host_b, state=PAUSED, reason=libvirt.VIR_DOMAIN_PAUSED_MIGRATION)
    job = start(backend)
    wait_for(lambda: backend.poll(job).phase is Phase.TRANSFERRING)
    from vmmove.policy import PostCopy

    backend.tune(job, PostCopy())
    watched = backend._jobs[job.id]
    src.st, src.reason = PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION
    del host_b.doms[UUID]
    wait_for(lambda: watched.switch_broken_at is not None)  # the monitor saw it
    src.st, src.reason = RUNNING, 1  # within the grace, libvirt resumes the source
    wait_for(lambda: watched.switch_broken_at is None)
    time.sleep(jobs_mod.SWITCH_GRACE + 0.2)  # the grace runs out: still nothing to conclude
    assert not backend.poll(job).phase.terminal

    src.st, src.reason = PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION  # and now it stays
    wait_for(lambda: backend.poll(job).phase.terminal, timeout=3)
    status = backend.poll(job)
    assert (status.phase, status.postcopy, status.vm_host) == (Phase.FAILED, True, None)
    assert status.error is not None
    assert "did not see post-copy begin" in status.error
    assert "virsh -c qemu+tcp://a/system resume web-1" in status.error
    backend.finish(job)
    src.migrated.set()


def test_a_destination_left_running_with_postcopy_failed_is_not_running(cluster: Any) -> None:
    backend, fake = cluster()
    FakeDom(fake.hosts["qemu+tcp://a/system"], state=PAUSED, reason=13)
    FakeDom(
        fake.hosts["qemu+tcp://b/system"],
        state=RUNNING,
        reason=libvirt.VIR_DOMAIN_RUNNING_POSTCOPY_FAILED,
    )
    assert backend.locate(UUID) is None


# ---- locate ------------------------------------------------------------------------------------


def test_locate_is_where_the_vm_runs_or_connection_failed(cluster: Any) -> None:
    backend, fake = cluster()
    host_a, host_b = fake.hosts["qemu+tcp://a/system"], fake.hosts["qemu+tcp://b/system"]
    assert backend.locate(UUID) is None  # nowhere
    paused = FakeDom(host_a, state=PAUSED, reason=libvirt.VIR_DOMAIN_PAUSED_USER)
    assert backend.locate(UUID) is None  # a paused VM is not running
    paused.st = RUNNING
    assert backend.locate(UUID) == "a"
    host_b.up = False
    assert backend.locate(UUID) == "a"  # b is down, but a runs it: that settles it
    paused.st = PAUSED
    with pytest.raises(ConnectionFailed, match="could not be asked"):
        backend.locate(UUID)  # not on a, and b cannot say
    del host_a.doms[UUID]
    with pytest.raises(ConnectionFailed):
        backend.locate(UUID)
    host_b.up = True
    assert backend.locate(UUID) is None


def test_a_stopped_vm_is_where_its_one_definition_is(cluster: Any) -> None:
    backend, fake = cluster()
    host_a, host_b = fake.hosts["qemu+tcp://a/system"], fake.hosts["qemu+tcp://b/system"]
    FakeDom(host_a, state=SHUTOFF)
    assert backend.locate(UUID) == "a"
    FakeDom(host_b, state=SHUTOFF)  # an offline move half done: neither is the VM
    assert backend.locate(UUID) is None
    FakeDom(host_b, state=PAUSED, reason=libvirt.VIR_DOMAIN_PAUSED_MIGRATION)
    assert backend.locate(UUID) is None  # a copy mid-migration, paused


def test_a_lookup_knows_the_memory_the_last_migration_found_not_zero(cluster: Any) -> None:
    backend, fake = cluster()
    dom = FakeDom(fake.hosts["qemu+tcp://a/system"])
    assert "resident_mib" not in backend.vm(UUID).extra  # never migrated: nothing known
    dom.stats = {"operation": 4, "memory_total": 256 * MiB, "memory_constant": 32 * 256}
    assert backend.vm(UUID).extra["resident_mib"] == "224"
    assert backend.vm("web-1").extra["resident_mib"] == "224"
    assert "delta_ratio" not in backend.vm(UUID).extra  # it moved uncompressed
    dom.stats = {**dom.stats, "compression_pages": 8192, "compression_bytes": 8192 * 1024}
    assert backend.vm(UUID).extra["delta_ratio"] == "0.250"  # a re-sent page cost a quarter
    # A later migration that left no counts (failed, or post-copy): the last ones stand.
    dom.stats = {"type": 4, "operation": 5}
    assert backend.vm(UUID).extra["resident_mib"] == "224"
    assert backend.vm(UUID).extra["delta_ratio"] == "0.250"
    other, _ = cluster(*fake.hosts.values())  # another process has seen no migration of it
    assert "resident_mib" not in other.vm(UUID).extra
    dom.st = SHUTOFF  # a stopped VM's figure would be stale: not used
    assert "resident_mib" not in backend.vm(UUID).extra
    assert "delta_ratio" not in backend.vm(UUID).extra


@pytest.mark.parametrize("counted", [True, False])
def test_a_lookup_knows_what_a_first_pass_showed_of_the_working_set(
    cluster: Any, counted: bool
) -> None:
    """The second pass sends what the guest dirtied during the first. QEMU begins it at a
    bitmap sync once pass 1's rest falls under its threshold, and that rest carries over:
    counted from pass 2's first sample, plus the pages sent since pass 1's last one, less
    what pass 1 still had then; with the pass's length, the longest pass the figure caps.
    A libvirt without the page counters gives no figure."""
    backend, fake = cluster()
    dom = FakeDom(fake.hosts["qemu+tcp://a/system"])
    job = start(backend)
    wait_for(lambda: backend.poll(job).phase is Phase.TRANSFERRING)
    page = 4096
    running = {"type": 2, "operation": 5, "data_total": 256 * MiB, "memory_page_size": page}

    def pages(normal_mib: int, zero_mib: int) -> dict[str, int]:
        if not counted:
            return {}
        return {
            "memory_normal": normal_mib * MiB // page,
            "memory_constant": zero_mib * MiB // page,
        }

    dom.stats = {
        **running,
        **pages(150, 60),
        "memory_iteration": 1,
        "memory_remaining": 20 * MiB,
        "time_elapsed": 5900,
    }
    wait_for(lambda: backend._jobs[job.id].last.memory_remaining == 20 * MiB)
    # 5 MiB more went (zero pages among them, a few bytes each on the wire); pass 1's other
    # 15 MiB carried over into pass 2's 115 still to go: 100 MiB were dirtied.
    dom.stats = {
        **running,
        **pages(153, 62),
        "memory_iteration": 2,
        "memory_remaining": 115 * MiB,
        "time_elapsed": 6000,
    }
    wait_for(lambda: backend.poll(job).iteration == 2)
    dom.stats = {**dom.stats, "memory_iteration": 3, "memory_remaining": 10 * MiB}
    wait_for(lambda: backend.poll(job).iteration == 3)
    assert "working_set_mib" not in backend.vm(UUID).extra  # the job has not finished
    dom.migrated.set()
    wait_for(lambda: backend.poll(job).phase.terminal)
    backend.finish(job)
    extra = backend.vm(UUID).extra
    if counted:
        assert (extra["working_set_mib"], extra["working_set_window_s"]) == ("100", "6.0")
    else:
        assert "working_set_mib" not in extra
        assert "working_set_window_s" not in extra


def test_locate_lists_nothing(cluster: Any) -> None:
    """One UUID lookup and one state per host: no inventory listing."""
    backend, fake = cluster()
    FakeDom(fake.hosts["qemu+tcp://b/system"])
    assert backend.locate(UUID) == "b"
    assert [h.list_calls for h in fake.hosts.values()] == [0, 0]


# ---- a lost answer to start ------------------------------------------------------------------


def intent(request_id: str = "req-1", mode: str = "live") -> JobRef:
    return JobRef.load(
        {"intent": "start", "vm": UUID, "target": "b", "mode": mode, "request_id": request_id}
    )


def test_attach_finds_the_request_on_the_source(cluster: Any) -> None:
    backend, fake = cluster()
    dom = FakeDom(fake.hosts["qemu+tcp://a/system"])
    first = start(backend)
    wait_for(lambda: dom.marker is not None)
    assert Marker(request="req-1", job=first.id, source="a", target="b").xml() == dom.marker

    other, _ = cluster(*fake.hosts.values())  # another client: knows nothing of the job
    with pytest.raises(NotFound):
        other.attach(intent("req-2"))  # a different request
    job = other.attach(intent())
    assert (job.id, job.source, job.target, job.ref.get("request_id")) == (
        first.id,
        "a",
        "b",
        "req-1",
    )
    wait_for(lambda: other.poll(job).phase is Phase.TRANSFERRING)  # its monitor's first sample
    FakeDom(fake.hosts["qemu+tcp://b/system"]).marker = dom.marker  # it lands ...
    del fake.hosts["qemu+tcp://a/system"].doms[UUID]  # ... and the source goes (UNDEFINE_SOURCE)
    dom.migrated.set()
    wait_for(lambda: other.poll(job).phase.terminal)
    assert (other.poll(job).phase, other.poll(job).vm_host) == (Phase.COMPLETED, "b")
    # The same process finds its own job at once, even after the answer to start was lost.
    assert backend.attach(intent()).id == first.id


@pytest.mark.parametrize("armed", [True, False])
def test_an_adopted_job_can_still_switch_to_postcopy(cluster: Any, armed: bool) -> None:
    """The adopting process does not know the flags the job started with: it asks libvirt
    to switch, and libvirt is the one to refuse a job started without POSTCOPY. Steps libvirt
    arms only with the call are refused, saying why."""
    backend, fake = cluster()
    dom = FakeDom(fake.hosts["qemu+tcp://a/system"])
    backend.start(
        vm_on("a"),
        host_info("b"),
        MigrationSpec(vm=UUID),
        MigrationMode.LIVE,
        policy=PRESETS["minimal-downtime"],
        needs=frozenset({"postcopy"} if armed else ()),
        reservation=None,
        request_id="req-1",
    )
    wait_for(lambda: dom.marker is not None)
    other, _ = cluster(*fake.hosts.values())
    job = other.attach(intent())
    if armed:
        assert other.tune(job, PostCopy()) is not None  # submitted: look again soon
        wait_for(lambda: ("postcopy",) in dom.calls)
    else:
        with pytest.raises(NotSupported, match="post-copy migration was not enabled"):
            other.tune(job, PostCopy())
        assert ("postcopy",) not in dom.calls
        assert not other._job(job).postcopy_requested  # a pause stays a pre-copy pause
    for action in (Compress(), AutoConverge()):
        with pytest.raises(NotSupported, match="adopted"):
            other.tune(job, action)
    dom.migrated.set()
    wait_for(lambda: other.poll(job).phase.terminal)


def test_attach_finds_a_request_that_already_landed(cluster: Any) -> None:
    backend, fake = cluster()
    landed = FakeDom(fake.hosts["qemu+tcp://b/system"])
    landed.marker = Marker(request="req-1", job="j1", source="a", target="b").xml()
    job = backend.attach(intent())
    assert (job.id, job.source) == ("j1", "a")
    wait_for(lambda: backend.poll(job).phase.terminal)
    status = backend.poll(job)
    assert (status.phase, status.vm_host) == (Phase.COMPLETED, "b")


def test_attach_to_a_request_is_not_found_or_connection_failed(cluster: Any) -> None:
    backend, fake = cluster()
    dom = FakeDom(fake.hosts["qemu+tcp://a/system"])
    with pytest.raises(NotFound):
        backend.attach(intent())  # no marker anywhere: nothing started
    dom.marker = Marker(request="req-1", job="j1", source="a", target="b").xml()
    with pytest.raises(NotFound):
        backend.attach(intent())  # marked, but no migration job runs
    dom.stats = {"type": 2, "operation": 2}  # a save, not a migration
    with pytest.raises(NotFound):
        backend.attach(intent())
    fake.hosts["qemu+tcp://a/system"].up = False
    with pytest.raises(ConnectionFailed, match="req-1"):
        backend.attach(intent())


def test_a_cold_move_not_started_here_is_judged_by_the_definitions(cluster: Any) -> None:
    """An offline move outlives no client: where the definition is says whether it happened
    (an intent still on its source: NotFound, so the core moves it; on the target: done)."""
    backend, fake = cluster()
    dom = FakeDom(fake.hosts["qemu+tcp://a/system"], state=SHUTOFF)
    cold = intent(mode="cold")
    with pytest.raises(NotFound):
        backend.attach(cold)
    job = backend.attach(
        JobRef(data={"vm": UUID, "target": "b", "mode": "cold", "job": "j1", "source": "a"})
    )
    status = backend.poll(job)
    assert (status.phase, status.vm_host) == (Phase.FAILED, "a")
    assert "defined on a" in (status.error or "")
    backend.finish(job)
    del fake.hosts["qemu+tcp://a/system"].doms[UUID]
    fake.hosts["qemu+tcp://b/system"].doms[UUID] = dom
    moved = backend.poll(backend.attach(cold))
    assert (moved.phase, moved.vm_host) == (Phase.COMPLETED, "b")


def test_relocate_refuses_a_running_vm_and_moves_a_stopped_one(cluster: Any) -> None:
    from vmmove.errors import Conflict

    backend, fake = cluster()
    dom = FakeDom(fake.hosts["qemu+tcp://a/system"])
    spec = MigrationSpec(vm=UUID, mode="cold")
    with pytest.raises(Conflict, match="must be stopped"):
        backend.relocate(vm_on("a"), host_info("b"), spec, request_id="r")
    assert dom.calls == []
    dom.st = SHUTOFF
    job = backend.relocate(vm_on("a"), host_info("b"), spec, request_id="r")
    wait_for(lambda: bool(dom.calls))
    assert backend.poll(job).phase is Phase.TRANSFERRING
    flags = dom.calls[-1][3]
    want = libvirt.VIR_MIGRATE_OFFLINE | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    assert flags & want == want
    dom.migrate_error = FakeError("target refused the definition", 1)
    dom.migrated.set()
    wait_for(lambda: backend.poll(job).phase.terminal)
    status = backend.poll(job)
    assert (status.phase, status.vm_host) == (Phase.FAILED, "a")
    assert "refused the definition" in (status.error or "")


# ---- hosts, options, pre-checks ------------------------------------------------------------


def test_connect_does_not_probe_capabilities(cluster: Any) -> None:
    backend, fake = cluster()
    assert [h.capability_calls for h in fake.hosts.values()] == [0, 0]
    backend.hosts()
    backend.hosts()
    # capabilities and the default QEMU's release, each read once and kept
    assert [h.capability_calls for h in fake.hosts.values()] == [2, 2]


def test_one_host_under_two_names_is_refused_at_precheck(no_event_loop: None) -> None:
    """A second URI of a host that has a name already is known by its URI, and the pre-check
    refuses a move between two URIs of one libvirt host (one host UUID)."""
    a = FakeHost("a", "uuid-a")
    fake = Fake(a, FakeHost("b", "uuid-b"))
    fake.hosts["qemu+tcp://localhost/system"] = a  # the same daemon, reached another way
    uris = ["qemu+tcp://a/system", "qemu+tcp://b/system", "qemu+tcp://localhost/system"]
    backend = LibvirtBackend(parse("libvirt://lab", {"hosts": " ".join(uris)}), lv=fake.lv)
    try:
        assert sorted(backend._hosts) == ["a", "b", "qemu+tcp://localhost/system"]
        FakeDom(a)
        target = backend.host("qemu+tcp://localhost/system")
        spec = MigrationSpec(vm=UUID, mode="live")
        problems = _check(backend, vm_on("a"), target, spec)
        same = [p for p in problems if p.code == "same-host"]
        assert len(same) == 1, problems
        assert "uuid-a" in same[0].message
        assert same[0].severity == "error"
        assert not [
            p for p in _check(backend, vm_on("a"), host_info("b"), spec) if p.severity == "error"
        ]
    finally:
        backend.close()


def test_two_hosts_with_one_uuid_are_refused_at_precheck(cluster: Any) -> None:
    backend, fake = cluster(FakeHost("a", "same"), FakeHost("b", "same"))
    FakeDom(fake.hosts["qemu+tcp://a/system"])
    problems = _check(backend, vm_on("a"), host_info("b"), MigrationSpec(vm=UUID, mode="live"))
    assert [p.code for p in problems if p.severity == "error"] == ["same-host"], problems
    assert "host_uuid" in problems[0].message


def test_no_migration_address_is_refused_with_the_fix(
    cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ssh alias resolves only in ssh's config: QEMU on the source could not reach it."""
    monkeypatch.setattr(backend_mod, "resolves", lambda name: name != "b")
    backend, fake = cluster()
    FakeDom(fake.hosts["qemu+tcp://a/system"])
    problems = _check(backend, vm_on("a"), host_info("b"), MigrationSpec(vm=UUID, mode="live"))
    refused = [p for p in problems if p.code == "migration-address"]
    assert len(refused) == 1, problems
    assert "does not resolve" in refused[0].message
    assert "migration_address='b=ADDRESS'" in refused[0].message
    # cold moves send no migration stream
    cold = _check(backend, vm_on("a"), host_info("b"), MigrationSpec(vm=UUID, mode="cold"))
    assert not [p for p in cold if p.code == "migration-address"]

    given, _ = cluster(*fake.hosts.values(), migration_address="b=fd00::2")
    ok = _check(given, vm_on("a"), host_info("b"), MigrationSpec(vm=UUID, mode="live"))
    assert not [p for p in ok if p.code == "migration-address"], ok
    dom = fake.hosts["qemu+tcp://a/system"].doms[UUID]
    job = start(given, request_id="")
    wait_for(lambda: bool(dom.calls) and dom.calls[-1][0] == "migrate")
    _, _, params, _ = dom.calls[-1]
    assert params["migrate_uri"] == "tcp://[fd00::2]"
    assert params["listen_address"] == "fd00::2"
    dom.migrated.set()
    wait_for(lambda: given.poll(job).phase.terminal)


def test_a_local_socket_names_no_migration_address(no_event_loop: None) -> None:
    host = FakeHost("b", "uuid-b")
    fake = Fake(FakeHost("a", "uuid-a"), host)
    socket_uri = "qemu+unix:///system?socket=/run/b/libvirt-sock"
    fake.hosts[socket_uri] = host
    backend = LibvirtBackend(
        parse("libvirt://lab", {"hosts": f"qemu+tcp://a/system {socket_uri}"}), lv=fake.lv
    )
    try:
        FakeDom(fake.hosts["qemu+tcp://a/system"])
        problems = _check(backend, vm_on("a"), host_info("b"), MigrationSpec(vm=UUID, mode="live"))
        (refused,) = [p for p in problems if p.code == "migration-address"]
        assert "local socket" in refused.message
        assert "'b'" in refused.message  # libvirt's fallback: the host's name
    finally:
        backend.close()


def test_migration_address_option(no_event_loop: None) -> None:
    bad = ("10.0.0.2", "b=tcp://10.0.0.2", "b=10.0.0.2:49152/x", "b=", "=10.0.0.2", {"b": ""})
    for value in bad:
        with pytest.raises(InvalidInput, match="migration_address"):
            parse("qemu+tcp://a,b/system", {"migration_address": value})
    # text or, from Python and a config file's table, a mapping: the same answer
    for given in ("a=10.1.0.1, b=[fd00::2]", {"a": "10.1.0.1", "b": "[fd00::2]"}):
        cfg = parse("qemu+tcp://a,b/system", {"migration_address": given})
        assert cfg.migration_addresses == {"a": "10.1.0.1", "b": "fd00::2"}
    fake = Fake(FakeHost("a", "uuid-a"), FakeHost("b", "uuid-b"))
    with pytest.raises(InvalidInput, match="none of the cluster's hosts"):
        LibvirtBackend(parse("qemu+tcp://a,b/system", {"migration_address": "c=x"}), fake.lv)
    by_uri = parse("qemu+tcp://a,b/system", {"migration_address": "qemu+tcp://b/system=m"})
    backend = LibvirtBackend(by_uri, fake.lv)
    assert backend._addresses == {"b": "m"}
    backend.close()
    with pytest.raises(InvalidInput, match="persist_transient"):
        parse("qemu+tcp://a,b/system", {"persist_transient": "maybe"})


@pytest.mark.parametrize(
    ("persistent", "persist_transient", "persist", "undefine"),
    [(True, False, True, True), (False, False, False, False), (False, True, True, False)],
)
def test_a_transient_guest_stays_transient_unless_asked(
    cluster: Any, persistent: bool, persist_transient: bool, persist: bool, undefine: bool
) -> None:
    backend, fake = cluster(
        FakeHost("a", "uuid-a"), FakeHost("b", "uuid-b"), persist_transient=persist_transient
    )
    dom = FakeDom(fake.hosts["qemu+tcp://a/system"])
    dom.persistent = persistent
    job = start(backend)
    wait_for(lambda: bool(dom.calls) and dom.calls[-1][0] == "migrate")
    flags = dom.calls[-1][3]
    assert bool(flags & libvirt.VIR_MIGRATE_PERSIST_DEST) is persist
    assert bool(flags & libvirt.VIR_MIGRATE_UNDEFINE_SOURCE) is undefine
    dom.migrated.set()
    wait_for(lambda: backend.poll(job).phase.terminal)


def _check(backend: Any, vm: Any, target: Any, spec: MigrationSpec) -> list[Any]:
    """The backend's pre-check with the mode and policy resolved, as the engine calls it."""
    mode = MigrationMode.LIVE if spec.mode is MigrationMode.AUTO else spec.mode
    return list(backend.check(vm, target, spec, mode=mode, policy=PRESETS["balanced"]))


def test_auto_converge_throttle_goes_with_the_call_and_cannot_change_later(
    cluster: Any,
) -> None:
    backend, fake = cluster()
    dom = fake.hosts["qemu+tcp://a/system"].doms.get(UUID) or FakeDom(
        fake.hosts["qemu+tcp://a/system"]
    )
    own = Policy(
        name="throttle",
        steps=(Step(trigger=AtIteration(n=2), action=AutoConverge(initial=60, increment=15)),),
    )
    job = backend.start(
        vm_on("a"),
        host_info("b"),
        MigrationSpec(vm=UUID),
        MigrationMode.LIVE,
        policy=own,
        needs=frozenset({"auto_converge"}),
        reservation=None,
        request_id="req-ac",
    )
    wait_for(lambda: bool(dom.calls) and dom.calls[-1][0] == "migrate")
    _, _, params, _ = dom.calls[-1]
    assert (params["auto_converge.initial"], params["auto_converge.increment"]) == (60, 15)
    # a throttle sized mid-flight (the engine's AutoConverge(sized)) is not pretended
    with pytest.raises(NotSupported, match="only when the migration starts"):
        backend.tune(job, AutoConverge(initial=88, increment=10))
    # the settings it started with are in force: applied, not pretended away
    assert backend.tune(job, AutoConverge(initial=60, increment=15)) is None
    assert backend.tune(job, AutoConverge()) is None  # armed at start: QEMU's own rule
    # QEMU's throttle as libvirt reports it reaches the engine (it holds max_slowdown by it)
    dom.stats = {**dom.stats, "memory_iteration": 3, "auto_converge_throttle": 70}
    wait_for(lambda: backend.poll(job).throttle == 70)
    dom.migrated.set()
    wait_for(lambda: backend.poll(job).phase.terminal)


@pytest.mark.parametrize("armed", [True, False])
def test_compression_is_armed_with_the_call_or_not_at_all(cluster: Any, armed: bool) -> None:
    """XBZRLE goes with migrateToURI3 (COMPRESSED, its cache as large as the guest); a job
    started without it cannot be given it later, and the record will say so."""
    backend, fake = cluster()
    host = fake.hosts["qemu+tcp://a/system"]
    dom = host.doms.get(UUID) or FakeDom(host)
    job = backend.start(
        vm_on("a"),
        host_info("b"),
        MigrationSpec(vm=UUID),
        MigrationMode.LIVE,
        policy=PRESETS["balanced"],
        needs=frozenset({"compression"} if armed else ()),
        reservation=None,
        request_id="req-xb",
    )
    wait_for(lambda: bool(dom.calls) and dom.calls[-1][0] == "migrate")
    _, _, params, flags = dom.calls[-1]
    assert bool(flags & libvirt.VIR_MIGRATE_COMPRESSED) is armed
    if armed:
        assert params["compression"] == "xbzrle"
        assert params["compression.xbzrle.cache"] == 256 * MiB  # the guest's memory
        assert backend.tune(job, Compress()) is None
    else:
        assert "compression" not in params
        with pytest.raises(NotSupported, match="when the job starts"):
            backend.tune(job, Compress())
    dom.migrated.set()
    wait_for(lambda: backend.poll(job).phase.terminal)
