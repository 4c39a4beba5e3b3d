"""The libvirt backend: a cluster of libvirt hosts (QEMU driver) behind one vmmove connection.

Host ids are the hosts' own names (``virConnectGetHostname``), VM ids are domain UUIDs and VM
names are domain names. Live migrations are peer-to-peer ``migrateToURI3`` calls. Cold ones
are the core's (``vmmove.cold``) over three primitives: ``power_off`` (``shutdown()``, forced:
``destroy()``), ``relocate`` (an OFFLINE move of the stopped domain's definition) and
``power_on`` (``create()`` where the definition is); see :mod:`vmmove_libvirt.jobs` for how
each job maps onto vmmove's phases.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import ipaddress
import logging
import re
import socket
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from xml.sax.saxutils import quoteattr

from vmmove.backend import Backend, Intent, Job, JobRef, JobStatus, Reservation
from vmmove.errors import (
    Conflict,
    ConnectionFailed,
    InvalidInput,
    MigrationFailed,
    NotFound,
    NotSupported,
)
from vmmove.machine import Phase
from vmmove.model import (
    Capacity,
    CpuInfo,
    HostInfo,
    HostState,
    MiB,
    MigrationMode,
    MigrationSpec,
    PowerState,
    Problem,
    Problems,
    Storage,
    VMInfo,
)
from vmmove.policy import (
    Action,
    AutoConverge,
    Compress,
    Policy,
    PostCopy,
    SetBandwidth,
    SetDowntime,
)
from vmmove_libvirt.config import (
    ClusterConfig,
    build,
    client_uri,
    migration_address,
    migration_uri,
    peer_uri,
    redact,
)
from vmmove_libvirt.connection import HostConn, libvirt_error_code
from vmmove_libvirt.jobs import (
    DIRTY_CALC_SECONDS,
    FAST_POLL,
    SLOW_POLL,
    LiveJob,
    MigrationJob,
    RelocateJob,
    runs,
)
from vmmove_libvirt.plugin import CAPABILITIES
from vmmove_libvirt.stats import (
    DIRTYRATE_MEASURING,
    JOB_ACTIVE,
    JOB_OPERATION_MIGRATION_OUT,
    PAGE,
    completed_flags,
    delta_ratio,
    dirty_rate,
    nonzero_memory,
)
from vmmove_libvirt.xmlinfo import NETWORK_POOLS, Disk, DomainFacts, HostFacts, domain_facts

__all__ = ["QEMU_DEFAULT_DOWNTIME_MS", "LibvirtBackend"]

log = logging.getLogger("vmmove.libvirt")

#: QEMU's own downtime-limit; a spec's max_downtime below it lowers the start value.
QEMU_DEFAULT_DOWNTIME_MS = 300
#: XBZRLE's page cache lives in the source QEMU while the job runs (filled page by page as
#: pages are re-sent): as large as the guest (a delta needs the page's last copy), at most this.
XBZRLE_CACHE_MAX = 1 << 30


def _unarmed(job: LiveJob, what: str) -> str:
    """Why a step that libvirt arms only with the call cannot be applied to ``job``."""
    if job.attached:
        return (
            f"{what} is armed only when the migration starts, and this job was adopted: "
            "libvirt does not say whether the process that started it armed it"
        )
    return f"{what} must be enabled when the job starts"


def xbzrle_cache(memory: int) -> int:
    """The cache for a guest of ``memory`` bytes: QEMU takes a power of two, at least a page,
    and no larger than the guest's RAM."""
    size = min(max(memory, PAGE), XBZRLE_CACHE_MAX)
    return 1 << (size.bit_length() - 1)


#: QEMU releases before this lose guest writes in TCG live migration (QEMU commit 03bfc2188f,
#: "physmem: Fix migration dirty bitmap coherency with TCG memory access", in 9.0).
TCG_FIXED_IN = (9, 0)
_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)
#: Where a live migration carries vmmove's request id: an element in the domain's
#: ``<metadata>``, set on the source's *live* definition just before the call. libvirt sends
#: the live definition, metadata and all, to the destination, so the id can be read on the
#: source while its job runs, and on the destination from Prepare on and after the move: a
#: lost answer to ``start`` is traced on either side. The ``destination_xml`` parameter would
#: mark the destination only, and a job found on the source could not be told from another
#: client's. The persistent definitions are left alone (PERSIST_DEST sends the source's own).
MARKER_NS = "urn:vmmove:libvirt:migration:1"
MARKER_KEY = "vmmove"
_VIR_DOMAIN_AFFECT_LIVE = 1
#: An inventory's dirty rate older than this is measured again (a guest's load changes).
_DIRTY_RATE_FRESH = 60.0
_SAMPLE_POLL_S = 0.1


@dataclass(frozen=True)
class Marker:
    """The ``<vmmove:migration>`` element a live migration leaves on its domain."""

    request: str
    job: str
    source: str
    target: str

    def xml(self) -> str:
        attrs = " ".join(
            f"{k}={quoteattr(v)}"
            for k, v in (
                ("request", self.request),
                ("job", self.job),
                ("source", self.source),
                ("target", self.target),
            )
        )
        return f"<migration {attrs}/>"


def read_marker(lv: Any, dom: Any) -> Marker | None:
    """The domain's marker, or ``None``; libvirt errors other than "no such metadata" pass."""
    try:
        text = dom.metadata(lv.VIR_DOMAIN_METADATA_ELEMENT, MARKER_NS, 0)
    except lv.libvirtError as exc:
        if libvirt_error_code(exc) == getattr(lv, "VIR_ERR_NO_DOMAIN_METADATA", 80):
            return None
        raise
    try:
        el = ET.fromstring(text)  # noqa: S314 (libvirt's own rendering of our element)
    except (ET.ParseError, TypeError):
        return None
    return Marker(
        request=el.get("request", ""),
        job=el.get("job", ""),
        source=el.get("source", ""),
        target=el.get("target", ""),
    )


def resolves(name: str) -> bool:
    """Whether ``name`` resolves here (the client's resolver stands in for the hosts')."""
    try:
        return bool(socket.getaddrinfo(name, None, type=socket.SOCK_STREAM))
    except (OSError, UnicodeError):
        return False


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _load_libvirt() -> Any:
    try:
        return importlib.import_module("libvirt")
    except ImportError:
        raise ConnectionFailed(
            "libvirt-python is not installed (pip install libvirt-python; it builds against "
            "the system's libvirt development files)"
        ) from None


class LibvirtBackend(Backend):
    """``qemu+tcp://h1,h2/system``, ``qemu+ssh://...``, or ``libvirt://NAME`` with ``hosts``;
    see :mod:`vmmove_libvirt.config` for the URI forms and options."""

    scheme = "qemu"
    # Full set but `reserve`: libvirt reserves nothing before the transfer (placement checks
    # memory instead). storage_move: copy_storage="all"|"inc" (NON_SHARED_DISK / _INC).
    capabilities = CAPABILITIES
    poll_interval = SLOW_POLL
    # A peer-to-peer migration's fixed cost beyond memory: begin/prepare (the target's QEMU
    # started) and confirm; and the fixed part of the pause: libvirt's downtime runs to the
    # destination's resume after its Finish phase. Measured on the testbed (libvirt 9.0,
    # QEMU 10 under TCG, the lan link): the idle guest, with nothing left to copy, pauses
    # 264-361 ms; its wall time less its transfer and that pause leaves 0.5 s.
    setup_s = 0.5
    switchover_s = 0.3
    # A switch to post-copy sends device state alone: QEMU's downtime measured 5-16 ms (median
    # 10) over 33 post-copy runs of the convergence benchmark, lan and wan.
    postcopy_switch_s = 0.010

    def __init__(self, config: ClusterConfig, lv: Any | None = None) -> None:
        self.config = config
        self.lv = lv if lv is not None else _load_libvirt()
        self._lock = threading.RLock()
        self._jobs: dict[str, MigrationJob] = {}
        self._by_vm: dict[str, MigrationJob] = {}
        self._by_request: dict[str, MigrationJob] = {}
        self._pool_types: dict[tuple[str, str], str] = {}
        self._capacity: dict[str, Capacity] = {}
        self._resolved: set[str] = set()
        # What a VM's migrations measured, by UUID: libvirt keeps the counts of the last job
        # only, and a failed or post-copy migration leaves none (see _with_history).
        self._history: dict[str, dict[str, str]] = {}
        opened: list[HostConn] = []
        try:
            for uri in config.uris:
                opened.append(
                    HostConn(
                        self.lv,
                        uri,
                        config.password,
                        self._on_event,
                        open_uri=client_uri(uri, config),
                    )
                )
            self._hosts = self._identify(opened)
            self._addresses = self._migration_addresses(opened)
        except BaseException:
            for host in opened:
                host.close()
            raise

    @classmethod
    def from_uri(cls, uri: str, options: Mapping[str, Any]) -> LibvirtBackend:
        """``options``: the values the core parsed from the declaration (config.OPTIONS)."""
        return cls(build(uri, options))

    @staticmethod
    def _identify(hosts: list[HostConn]) -> dict[str, HostConn]:
        """Host ids: each host's name, or its URI when an earlier host has that name (one
        daemon reached through two URIs, or two hosts with one name). Whether two of them are
        one libvirt host (one host UUID) is the pre-check's question: reading the UUID costs a
        capabilities probe, and a connection should not pay it up front."""
        by_id: dict[str, HostConn] = {}
        for host in hosts:
            if host.id in by_id:
                other = by_id[host.id]
                alias = redact(host.uri)
                if alias in by_id:
                    raise ConnectionFailed(f"{alias} is listed twice")
                log.warning(
                    "%s and %s both call themselves %r: the second is known as %s",
                    redact(other.uri),
                    alias,
                    host.id,
                    alias,
                )
                host.id = alias
            by_id[host.id] = host
        return by_id

    def _migration_addresses(self, hosts: list[HostConn]) -> dict[str, str]:
        out = {}
        for key, address in self.config.migration_addresses.items():
            host = self._hosts.get(key) or next(
                (h for h in hosts if key in (h.uri, redact(h.uri), h.hostname)), None
            )
            if host is None:
                known = ", ".join(sorted(self._hosts))
                raise InvalidInput(
                    f"migration_address names {key!r}, which is none of the cluster's hosts "
                    f"({known}; or give a host's URI)"
                )
            out[host.id] = address
        return out

    # ---- lookups ---------------------------------------------------------------------------
    def _host(self, host_id: str) -> HostConn:
        try:
            return self._hosts[host_id]
        except KeyError:
            raise NotFound(f"no host {host_id!r} in libvirt cluster {self.config.name}") from None

    def _entries(self, vm_id: str) -> list[tuple[HostConn, Any]]:
        out = []
        for host in self._hosts.values():
            try:
                dom = host.domain(vm_id)
            except (ConnectionFailed, self.lv.libvirtError):
                continue
            if dom is not None:
                out.append((host, dom))
        return out

    def _primary(self, entries: list[tuple[HostConn, Any]]) -> tuple[HostConn, Any, int]:
        """Where a VM is, when more than one host knows it: the host that runs it; while a
        migration pauses both sides, the one with the persistent definition; else the first."""
        lv = self.lv
        best: tuple[int, int, HostConn, Any, int] | None = None
        for order, (host, dom) in enumerate(entries):
            try:
                state = dom.state()[0]
                persistent = bool(dom.isPersistent())
            except lv.libvirtError:
                continue
            if state in (lv.VIR_DOMAIN_RUNNING, lv.VIR_DOMAIN_BLOCKED, lv.VIR_DOMAIN_SHUTDOWN):
                rank = 3
            elif state in (lv.VIR_DOMAIN_PAUSED, lv.VIR_DOMAIN_PMSUSPENDED):
                rank = 2 if persistent else 1
            else:
                rank = 0
            key = (-rank, order, host, dom, state)
            if best is None or key[:2] < best[:2]:
                best = key
        if best is None:
            raise NotFound("the VM vanished while it was looked up")
        return best[2], best[3], best[4]

    def _job_running(self, dom: Any) -> bool:
        """Whether libvirt runs a job (a migration, a save...) on ``dom`` now."""
        try:
            return bool(dom.isActive()) and dom.jobStats().get("type", 0) in JOB_ACTIVE
        except self.lv.libvirtError:
            return False

    def _power(self, state: int) -> PowerState:
        lv = self.lv
        if state in (lv.VIR_DOMAIN_RUNNING, lv.VIR_DOMAIN_BLOCKED, lv.VIR_DOMAIN_SHUTDOWN):
            return PowerState.RUNNING
        if state in (lv.VIR_DOMAIN_PAUSED, lv.VIR_DOMAIN_PMSUSPENDED):
            return PowerState.PAUSED
        return PowerState.STOPPED

    # ---- inventory -------------------------------------------------------------------------
    def hosts(self) -> list[HostInfo]:
        return [self._host_info(h) for h in self._hosts.values()]

    def host(self, ref: str) -> HostInfo:
        if ref in self._hosts:
            return self._host_info(self._hosts[ref])
        for h in self._hosts.values():
            if ref in (h.uri, redact(h.uri)):
                return self._host_info(h)
        return super().host(ref)

    def _host_info(self, h: HostConn) -> HostInfo:
        lv = self.lv
        extra = {"uri": redact(h.uri), "libvirt": h.libvirt_version}
        try:
            conn = h.ensure()
            facts = h.facts  # the capabilities: read once per connection
            _model, memory_mib, cpus, *_ = conn.getInfo()
            free = int(conn.getFreeMemory())
            committed, vcpus = 0, 0
            for dom in conn.listAllDomains(lv.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                try:
                    info = dom.info()
                except lv.libvirtError:
                    continue  # it stopped meanwhile
                committed += int(info[1]) * 1024
                vcpus += int(info[3])
        except (ConnectionFailed, lv.libvirtError) as exc:
            return HostInfo(
                id=h.id,
                name=h.id,
                cluster=self.config.name,
                state=HostState.DOWN,
                capacity=self._capacity.get(h.id, Capacity(cpus=0, memory=0)),
                cpu=self._cpu(h.known_facts),
                extra={**extra, "error": str(exc)},
            )
        capacity = Capacity(cpus=int(cpus), memory=int(memory_mib) * MiB)
        self._capacity[h.id] = capacity
        # A guest's memory is committed when it starts, though QEMU allocates it lazily: count
        # the larger of what the domains may use and what the host already uses.
        used = max(capacity.memory - free, committed)
        return HostInfo(
            id=h.id,
            name=h.id,
            cluster=self.config.name,
            state=HostState.UP,
            capacity=capacity,
            allocated=Capacity(cpus=vcpus, memory=used),
            cpu=self._cpu(facts),
            extra={
                **extra,
                "host_uuid": facts.uuid,
                "qemu_default": h.hypervisor_version,  # the driver's default emulator
                "free_memory_mib": str(free // MiB),
                "committed_memory_mib": str(committed // MiB),
            },
        )

    @staticmethod
    def _cpu(f: HostFacts | None) -> CpuInfo:
        if f is None:
            return CpuInfo(arch="")
        return CpuInfo(arch=f.arch, model=f.model, vendor=f.vendor, features=f.features)

    def vms(self) -> list[VMInfo]:
        found: dict[str, list[tuple[HostConn, Any]]] = {}
        rates: dict[str, float] = {}
        for host in self._hosts.values():
            try:
                domains = host.ensure().listAllDomains(0)
            except (ConnectionFailed, self.lv.libvirtError):
                continue
            for dom in domains:
                found.setdefault(dom.UUIDString(), []).append((host, dom))
            rates.update(self._dirty_rates(host, domains))
        out = []
        for vm_id, entries in found.items():
            try:
                info = self._vm_info(entries)
            except (NotFound, self.lv.libvirtError):
                continue  # undefined while we looked
            out.append(replace(info, dirty_rate=rates.get(vm_id)))
        return out

    def sample_dirty_rate(self, vm: VMInfo) -> float | None:
        """A sample of the guest's dirty rate now (``virDomainStartDirtyRateCalc``), for a
        prediction: blocks for the live job's window (3 s: QEMU's page sampling needs the
        pages; a 1 s window read a 16 MiB/s writer as 8 to 20 MiB/s before ten benchmark
        runs); ``None`` where libvirt or QEMU cannot measure."""
        lv = self.lv
        flag = getattr(lv, "VIR_DOMAIN_STATS_DIRTYRATE", None)
        host = self._host(vm.host)
        dom = host.domain(vm.id)
        if flag is None or dom is None or not _active(dom):
            return None
        asked = time.time()
        with contextlib.suppress(lv.libvirtError):  # one already running serves as well
            dom.startDirtyRateCalc(DIRTY_CALC_SECONDS, 0)
        deadline = time.monotonic() + DIRTY_CALC_SECONDS + 4 * _SAMPLE_POLL_S * 10
        while time.monotonic() < deadline:
            time.sleep(_SAMPLE_POLL_S)  # QEMU samples for its window; nothing to wait on
            try:
                [(_, stats)] = host.ensure().domainListGetStats([dom], flag)
            except (ConnectionFailed, lv.libvirtError, ValueError):
                return None
            rate = dirty_rate(stats, since=asked)
            if rate is not None:
                return rate
        return None

    def _dirty_rates(self, host: HostConn, domains: list[Any]) -> dict[str, float]:
        """The guests' dirty rates as libvirt last measured them (bytes/s), for running
        domains; a guest without a recent measurement gets a new 1 s sample started (not
        waited for: the next listing shows it). QEMU counts pages only while sampling, so an
        inventory has no rate until something asked for one (libvirt >= 7.2, QEMU >= 5.2)."""
        lv = self.lv
        flag = getattr(lv, "VIR_DOMAIN_STATS_DIRTYRATE", None)
        running = [d for d in domains if _active(d)]
        if flag is None or not running:
            return {}
        try:
            stats = host.ensure().domainListGetStats(running, flag)
        except (ConnectionFailed, lv.libvirtError):
            return {}
        now = time.time()
        with self._lock:
            busy = set(self._by_vm)  # a live job samples for itself
        out: dict[str, float] = {}
        for dom, values in stats:
            rate = dirty_rate(values, since=now - _DIRTY_RATE_FRESH)
            if rate is not None:
                out[dom.UUIDString()] = rate
            elif (
                values.get("dirtyrate.calc_status") != DIRTYRATE_MEASURING
                and dom.UUIDString() not in busy
            ):
                with contextlib.suppress(lv.libvirtError):
                    dom.startDirtyRateCalc(1, 0)
        return out

    def vm(self, ref: str) -> VMInfo:
        if _UUID.match(ref):
            entries = self._entries(ref)
            if entries:
                return self._with_history(self._vm_info(entries), entries)
        named: dict[str, list[tuple[HostConn, Any]]] = {}
        for host in self._hosts.values():
            try:
                dom = host.domain_named(ref)
            except (ConnectionFailed, self.lv.libvirtError):
                continue
            if dom is not None:
                named.setdefault(dom.UUIDString(), []).append((host, dom))
        if len(named) > 1:
            raise NotFound(f"VM name {ref!r} is ambiguous: {len(named)} domains carry it")
        if not named:
            raise NotFound(f"no VM {ref!r} in libvirt cluster {self.config.name}")
        (uuid_,) = named
        entries = self._entries(uuid_) or named[uuid_]
        return self._with_history(self._vm_info(entries), entries)

    def _with_history(self, info: VMInfo, entries: list[tuple[HostConn, Any]]) -> VMInfo:
        """``info`` with what the guest's last migration to its host measured: the memory
        that was not zero (``extra["resident_mib"]``), which a prediction's first pass sends,
        and, if it compressed, what a re-sent page cost (``extra["delta_ratio"]``). One call
        per VM, so a lookup has it and a listing does not. libvirt keeps only its last job's
        counts, and a migration that failed, or went post-copy, leaves none: the figures an
        earlier migration of the VM left, seen by this process, stand in for them. So does
        the working set (``extra["working_set_mib"]``), which no count of libvirt's gives:
        what this process saw the guest dirty during a migration's first pass, and how long
        that pass took (``extra["working_set_window_s"]``)."""
        if info.power is not PowerState.RUNNING:
            return info
        _, dom, _ = self._primary(entries)
        try:
            stats = dom.jobStats(completed_flags(self.lv))  # may block: not under the lock
        except self.lv.libvirtError:
            stats = None
        fresh: dict[str, str] = {}
        if isinstance(stats, Mapping):
            nonzero = nonzero_memory(stats)
            if nonzero is not None:
                fresh["resident_mib"] = f"{min(nonzero, info.memory) / MiB:.0f}"
            ratio = delta_ratio(stats)
            if ratio is not None:
                fresh["delta_ratio"] = f"{ratio:.3f}"
        with self._lock:  # merged, so that a figure finish() stored meanwhile stays
            if fresh:
                self._history.setdefault(info.id, {}).update(fresh)
            known = dict(self._history.get(info.id, {}))
        return replace(info, extra={**info.extra, **known}) if known else info

    def _vm_info(self, entries: list[tuple[HostConn, Any]]) -> VMInfo:
        host, dom, state = self._primary(entries)
        facts = self._facts(host, dom)
        storage = Storage.NONE
        if facts.disks:
            storage = Storage.LOCAL if facts.local_disks else Storage.SHARED
        extra = {
            "persistent": "yes" if dom.isPersistent() else "no",
            "virt_type": facts.virt_type,
            "emulator": facts.emulator,
            "machine": facts.machine,
        }
        if facts.disks:
            extra["disks"] = "; ".join(
                f"{d.describe()}: {'shared, ' + d.why if d.shared else 'local'}"
                for d in facts.disks
            )
        others = [h.id for h, _ in entries if h is not host]
        if others:
            extra["also_defined_on"] = ",".join(others)
        if facts.virt_type == "kvm" and facts.arch:
            extra["cpu_arch"] = facts.arch  # hardware virtualization runs on its own arch only
        reason = None
        if facts.hostdevs:
            reason = f"{facts.hostdevs} host device(s) passed through (<hostdev>)"
        return VMInfo(
            id=dom.UUIDString(),
            name=dom.name(),
            host=host.id,
            power=self._power(state),
            memory=facts.memory,
            vcpus=facts.vcpus,
            storage=storage,
            live_migratable=reason is None,
            not_migratable_reason=reason,
            extra=extra,
        )

    def _facts(self, host: HostConn, dom: Any) -> DomainFacts:
        facts = domain_facts(dom.XMLDesc(0), self.config.shared_paths)
        disks = tuple(self._classify(host, d) for d in facts.disks)
        return replace(facts, disks=disks)

    def _classify(self, host: HostConn, disk: Disk) -> Disk:
        """A disk the XML alone leaves local may sit in a storage pool every host reaches."""
        if disk.shared or disk.kind not in ("file", "block", "volume"):
            return disk
        lv = self.lv
        try:
            conn = host.ensure()
            if disk.kind == "volume":
                pool = conn.storagePoolLookupByName(disk.source.split("/", 1)[0])
            else:
                pool = conn.storageVolLookupByPath(disk.source).storagePoolLookupByVolume()
            key = (host.id, pool.name())
            if key not in self._pool_types:
                self._pool_types[key] = ET.fromstring(pool.XMLDesc(0)).get("type", "")  # noqa: S314
            kind = self._pool_types[key]
        except (ConnectionFailed, lv.libvirtError, ET.ParseError):
            return disk
        if kind in NETWORK_POOLS:
            return replace(disk, shared=True, why=f"in {kind} pool {key[1]}")
        return disk

    def locate(self, vm_id: str) -> str | None:
        """The host whose copy of the VM *runs* (see :func:`vmmove_libvirt.jobs.runs`), asked of
        every host in turn: a UUID lookup and the domain's state, no listing.

        A paused copy (switch-over, a failed post-copy, a user's pause) is not where the VM
        runs: with one and no running copy, ``None``. A VM that is shut off everywhere is where
        its one definition is (a stopped VM has a home; two shut-off definitions, an offline
        move half done, name none). A host that cannot be asked makes the answer unknown
        (:class:`ConnectionFailed`) unless another host runs the VM."""
        lv = self.lv
        unreachable: list[str] = []
        paused = False
        defined: list[str] = []
        for host in self._hosts.values():
            try:
                dom = host.domain(vm_id)
                if dom is None:
                    continue
                state, reason = dom.state()[:2]
            except ConnectionFailed as exc:
                unreachable.append(f"{host.id} ({exc})")
                continue
            except lv.libvirtError as exc:
                if libvirt_error_code(exc) == lv.VIR_ERR_NO_DOMAIN:
                    continue  # undefined between the lookup and the question
                unreachable.append(f"{host.id} ({exc})")
                continue
            if runs(lv, state, reason):
                return host.id
            if state in (lv.VIR_DOMAIN_SHUTOFF, lv.VIR_DOMAIN_CRASHED, lv.VIR_DOMAIN_NOSTATE):
                defined.append(host.id)
            else:
                paused = True
        if unreachable:
            raise ConnectionFailed(
                f"cannot tell where VM {vm_id} runs: no host that answered runs it, and "
                f"{'; '.join(unreachable)} could not be asked"
            )
        if paused or len(defined) != 1:
            return None
        return defined[0]

    # ---- pre-checks ------------------------------------------------------------------------
    def check(
        self,
        vm: VMInfo,
        target: HostInfo,
        spec: MigrationSpec,
        *,
        mode: MigrationMode,
        policy: Policy,
    ) -> list[Problem]:
        problems = Problems()
        add = problems.add
        source, dest = self._host(vm.host), self._host(target.id)
        try:
            dest.ensure()
        except ConnectionFailed as exc:
            add("target-down", str(exc))
            return problems
        dom = source.domain(vm.id)
        if dom is None:
            raise NotFound(f"VM {vm.name} is no longer on {source.id}")
        facts = self._facts(source, dom)
        if source is not dest:
            self._check_same_host(source, dest, target, add)
        if mode is MigrationMode.LIVE:
            _address, why_not = self._migration_target(dest)
            if why_not is not None:
                add("migration-address", why_not)

        with self._lock:
            busy = vm.id in self._by_vm
        if busy or self._job_running(dom):
            add("busy", f"{vm.name} has a libvirt job running already")

        same_uuid = dest.domain(vm.id)
        if same_uuid is not None:
            add(
                "target-has-vm",
                f"{target.name} already holds a definition of {vm.name} (UUID {vm.id}); "
                "undefine the stale copy first",
            )
        else:
            clash = dest.domain_named(vm.name)
            if clash is not None:
                add(
                    "name-taken",
                    f"{target.name} already has a domain named {vm.name} "
                    f"(UUID {clash.UUIDString()})",
                )

        local = facts.local_disks
        if mode is MigrationMode.LIVE:
            if local and self.config.copy_storage == "none":
                add(
                    "local-storage",
                    f"disk(s) {', '.join(d.describe() for d in local)} are local to {source.id}: "
                    "the target cannot reach them. Put them on shared storage (or list their "
                    "directory in shared_paths), or connect with copy_storage='all' to copy them "
                    "(NON_SHARED_DISK)",
                )
            elif local:
                flag = "NON_SHARED_DISK" if self.config.copy_storage == "all" else "NON_SHARED_INC"
                add(
                    "storage-copy",
                    f"local disk(s) {', '.join(d.describe() for d in local)} are copied too "
                    f"({flag})",
                    "warning",
                )
        self._check_emulators(facts, source, dest, target, add, live=mode is MigrationMode.LIVE)
        self._check_cpu(facts, source, dest, target, add)
        if mode is MigrationMode.COLD:
            if local:
                add(
                    "local-storage",
                    f"cold migration moves the definition only: local disk(s) "
                    f"{', '.join(d.describe() for d in local)} would stay on {source.id}",
                )
            if not dom.isPersistent():
                add(
                    "transient",
                    f"{vm.name} is transient (no persistent definition): stopping it for a cold "
                    "migration would delete it",
                )
        return problems

    @staticmethod
    def _check_same_host(source: HostConn, dest: HostConn, target: HostInfo, add: Any) -> None:
        """Two URIs can reach one libvirt host (``qemu+tcp://localhost`` and its socket), and
        two daemons can share a host UUID (cloned machines): libvirt refuses either move
        ("Attempt to migrate guest to the same host"), after the destination was contacted."""
        try:
            here, there = source.facts.uuid, dest.facts.uuid
        except ConnectionFailed as exc:
            add(
                "host-uuid",
                f"could not compare the host UUIDs of {source.id} and {target.name}: {exc}",
                "warning",
            )
            return
        if here and here == there:
            add(
                "same-host",
                f"{target.name} is the same libvirt host as {source.id} (host UUID {here}): "
                "libvirt refuses to migrate a guest to the host it runs on. If they are two "
                "machines, give each its own host_uuid in libvirtd.conf",
            )

    def _migration_target(self, dest: HostConn) -> tuple[str | None, str | None]:
        """The address the migration stream goes to (``migrate_uri``, ``listen_address``), or
        why there is none. Without one libvirt hands QEMU the destination's host name (or its
        qemu.conf ``migration_host``), which need not resolve on the source: the migration then
        fails two seconds in with "Unable to resolve address"."""
        configured = self._addresses.get(dest.id)
        if configured is not None:
            return configured, None
        fix = f"name one with migration_address='{dest.id}=ADDRESS'"
        address = migration_address(dest.uri)
        if address is None:
            return None, (
                f"{dest.id} is reached through a local socket ({redact(dest.uri)}), which gives "
                "no network address for the migration stream (libvirt would fall back to the "
                f"host's name {dest.hostname!r}, which need not resolve on the source): {fix}"
            )
        if _is_ip(address) or address in self._resolved:
            return address, None
        if resolves(address):
            self._resolved.add(address)
            return address, None
        return None, (
            f"{address!r}, the host in {redact(dest.uri)}, does not resolve here (an ssh "
            f"alias?), so the source's QEMU could not connect to it: {fix}"
        )

    def _check_emulators(
        self,
        facts: DomainFacts,
        source: HostConn,
        dest: HostConn,
        target: HostInfo,
        add: Any,
        *,
        live: bool,
    ) -> None:
        src = source.emulator(facts.emulator, facts.arch, facts.virt_type)
        dst = dest.emulator(facts.emulator, facts.arch, facts.virt_type)
        if not dst.usable:
            add(
                "emulator",
                f"{target.name} cannot run {facts.emulator or 'the default emulator'} "
                f"({facts.arch}, {facts.virt_type}): {dst.error}",
            )
        if facts.virt_type != "qemu" or not live:
            return  # the bug below is TCG's, and live migration's
        for side, em in ((source.id, src), (target.name, dst)):
            if em.version is not None and em.version < TCG_FIXED_IN:
                add(
                    "qemu-tcg-migration",
                    f"{side} runs QEMU {em.version[0]}.{em.version[1]} under TCG: before 9.0, "
                    "QEMU can lose guest writes during a live migration of a TCG guest "
                    "(fixed by QEMU commit 03bfc2188f); use QEMU 9.0 or later, KVM, or a cold "
                    "migration",
                    "warning",
                )

    def _check_cpu(
        self, facts: DomainFacts, source: HostConn, dest: HostConn, target: HostInfo, add: Any
    ) -> None:
        lv = self.lv
        if facts.cpu_mode in ("host-passthrough", "maximum") or facts.cpu_xml is None:
            if facts.cpu_mode == "host-passthrough":
                s, d = source.facts, dest.facts
                if (s.vendor, s.model) != (d.vendor, d.model) or not s.features <= d.features:
                    missing = sorted(s.features - d.features)
                    add(
                        "cpu",
                        f"{facts.name} passes the host CPU through, and {target.name}'s CPU "
                        f"({d.vendor} {d.model}) differs from {source.id}'s ({s.vendor} {s.model})"
                        + (f"; missing: {', '.join(missing[:8])}" if missing else ""),
                    )
            return
        try:
            result = dest.ensure().compareHypervisorCPU(
                facts.emulator or None,
                facts.arch or None,
                facts.machine or None,
                facts.virt_type or None,
                facts.cpu_xml,
                lv.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE,
            )
        except lv.libvirtError as exc:
            if libvirt_error_code(exc) == lv.VIR_ERR_CPU_INCOMPATIBLE:
                add("cpu", f"{target.name} cannot provide {facts.name}'s CPU: {exc}")
            else:
                add("cpu-unknown", f"could not compare CPUs on {target.name}: {exc}", "warning")
            return
        if result == lv.VIR_CPU_COMPARE_INCOMPATIBLE:
            add("cpu", f"{target.name} cannot provide {facts.name}'s CPU model")

    # ---- migration -------------------------------------------------------------------------
    def start(
        self,
        vm: VMInfo,
        target: HostInfo,
        spec: MigrationSpec,
        mode: MigrationMode,
        *,
        policy: Policy,
        needs: frozenset[str],
        reservation: Reservation | None,
        request_id: str = "",
    ) -> Job:
        lv = self.lv
        source, dest = self._host(vm.host), self._host(target.id)
        dom = source.domain(vm.id)
        if dom is None:
            raise NotFound(f"VM {vm.name} is no longer on {source.id}")
        with self._lock:
            if vm.id in self._by_vm:
                raise Conflict(f"{vm.name} is already migrating (job {self._by_vm[vm.id].id})")
        if self._job_running(dom):
            raise Conflict(f"{vm.name} has a libvirt job running already")
        job_id = uuid.uuid4().hex[:12]
        common: dict[str, Any] = {
            "job_id": job_id,
            "lv": lv,
            "dom": dom,
            "vm": vm.id,
            "source": source,
            "target": dest,
        }
        job: MigrationJob
        if mode is MigrationMode.LIVE:
            job = self._live_job(
                dom=dom,
                vm=vm,
                source=source,
                dest=dest,
                spec=spec,
                policy=policy,
                needs=needs,
                request_id=request_id,
                common=common,
            )
        else:
            # Cold moves are the core's (relocate_stopped): power_off, relocate, power_on.
            raise NotSupported(f"start() takes live migrations only, not {mode}")
        return self._launch(job, request_id)

    def _launch(self, job: MigrationJob, request_id: str) -> Job:
        job.request_id = job.request_id or request_id
        with self._lock:
            self._jobs[job.id] = job
            self._by_vm[job.vm] = job
            if request_id:
                self._by_request[request_id] = job
        job.start()
        return self._job_handle(job)

    # ---- cold migration primitives (the core orchestrates them: vmmove.cold) ---------------
    def _domain(self, vm: VMInfo) -> tuple[HostConn, Any]:
        """The VM's domain on the host that holds it (``vm.host``)."""
        host = self._host(vm.host)
        try:
            dom = host.domain(vm.id)
        except self.lv.libvirtError as exc:
            raise ConnectionFailed(f"{host.id} could not look up {vm.name}: {exc}") from None
        if dom is None:
            raise NotFound(f"VM {vm.name} is no longer on {host.id}")
        return host, dom

    def _inactive(self, dom: Any) -> bool:
        try:
            return not dom.isActive()
        except self.lv.libvirtError as exc:
            raise ConnectionFailed(f"cannot tell whether the domain runs: {exc}") from None

    def power_off(self, vm: VMInfo, *, force: bool) -> None:
        """``shutdown()`` (the guest's ACPI power button), or ``destroy()`` when ``force``."""
        host, dom = self._domain(vm)
        if self._inactive(dom):
            return
        try:
            dom.destroy() if force else dom.shutdown()
        except self.lv.libvirtError as exc:
            if self._inactive(dom):
                return  # it stopped meanwhile: what was asked for
            how = "destroy" if force else "shut down"
            raise MigrationFailed(
                f"{host.id} refused to {how} {vm.name}: {exc}", vm_host=host.id
            ) from None

    def power_on(self, vm: VMInfo) -> None:
        """``create()`` on the host that holds the (inactive) definition."""
        host, dom = self._domain(vm)
        if not self._inactive(dom):
            return
        try:
            dom.create()
        except self.lv.libvirtError as exc:
            if not self._inactive(dom):
                return
            # It runs nowhere now: the core says where it is stopped (vm_power) and restores.
            raise MigrationFailed(
                f"{host.id} could not start {vm.name}: {exc}", vm_host=None
            ) from None

    def relocate(
        self, vm: VMInfo, target: HostInfo, spec: MigrationSpec, *, request_id: str
    ) -> Job:
        """Move the stopped VM's definition to ``target`` (OFFLINE | PERSIST_DEST |
        UNDEFINE_SOURCE, peer-to-peer, in the job's thread: this returns at once)."""
        lv = self.lv
        source, dom = self._domain(vm)
        dest = self._host(target.id)
        if not self._inactive(dom):
            raise Conflict(f"{vm.name} runs on {source.id}: it must be stopped before it is moved")
        with self._lock:
            if vm.id in self._by_vm and not self._by_vm[vm.id].done:
                raise Conflict(f"{vm.name} is already migrating (job {self._by_vm[vm.id].id})")
        flags = (
            lv.VIR_MIGRATE_OFFLINE
            | lv.VIR_MIGRATE_PERSIST_DEST
            | lv.VIR_MIGRATE_UNDEFINE_SOURCE
            | lv.VIR_MIGRATE_PEER2PEER
        )
        job = RelocateJob(
            dest_uri=peer_uri(dest.uri),
            flags=flags,
            job_id=uuid.uuid4().hex[:12],
            lv=lv,
            dom=dom,
            vm=vm.id,
            source=source,
            target=dest,
        )
        job.request_id = request_id
        return self._launch(job, request_id)

    def _live_job(
        self,
        *,
        dom: Any,
        vm: VMInfo,
        source: HostConn,
        dest: HostConn,
        spec: MigrationSpec,
        policy: Policy,
        needs: frozenset[str],
        request_id: str,
        common: dict[str, Any],
    ) -> LiveJob:
        lv = self.lv
        flags = lv.VIR_MIGRATE_LIVE | lv.VIR_MIGRATE_PEER2PEER
        if dom.isPersistent():
            # The definition moves with the VM.
            flags |= lv.VIR_MIGRATE_PERSIST_DEST | lv.VIR_MIGRATE_UNDEFINE_SOURCE
        elif self.config.persist_transient:
            flags |= lv.VIR_MIGRATE_PERSIST_DEST  # asked for: define it on the target
        auto_converge = "auto_converge" in needs
        postcopy = "postcopy" in needs
        if auto_converge:
            flags |= lv.VIR_MIGRATE_AUTO_CONVERGE
        facts = self._facts(source, dom)
        if postcopy:
            flags |= lv.VIR_MIGRATE_POSTCOPY
        compressed = "compression" in needs
        if compressed:
            flags |= lv.VIR_MIGRATE_COMPRESSED
        if facts.local_disks:
            if self.config.copy_storage == "all":
                flags |= lv.VIR_MIGRATE_NON_SHARED_DISK
            elif self.config.copy_storage == "inc":
                flags |= lv.VIR_MIGRATE_NON_SHARED_INC
        params: dict[str, Any] = {}
        address, _why_not = self._migration_target(dest)
        if address is not None:
            # The stream goes to this address (QEMU would get the destination's host name
            # otherwise), and the destination QEMU listens on it alone, not on every address.
            params[lv.VIR_MIGRATE_PARAM_URI] = migration_uri(address)
            params[lv.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = address
        if spec.bandwidth is not None:
            params[lv.VIR_MIGRATE_PARAM_BANDWIDTH] = spec.bandwidth
        if compressed:
            params[lv.VIR_MIGRATE_PARAM_COMPRESSION] = "xbzrle"
            params[lv.VIR_MIGRATE_PARAM_COMPRESSION_XBZRLE_CACHE] = xbzrle_cache(vm.memory)
        throttle = next(
            (s.action for s in policy.steps if isinstance(s.action, AutoConverge)), None
        )
        if auto_converge and throttle is not None:
            # A policy's own first throttle and step (a sized one's is known only mid-flight:
            # QEMU's 20 %, or the caller's max_slowdown if lower, as adapt set it).
            if throttle.initial is not None:
                params[lv.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL] = throttle.initial
            if throttle.increment is not None:
                params[lv.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT] = throttle.increment
        # The downtime limit starts at QEMU's default, or at the cap if lower; set it every time,
        # since a limit left by an earlier, failed migration would otherwise carry over.
        downtime = min(QEMU_DEFAULT_DOWNTIME_MS, spec.max_downtime or QEMU_DEFAULT_DOWNTIME_MS)
        marker = Marker(request=request_id, job=common["job_id"], source=source.id, target=dest.id)

        def prepare(job: LiveJob) -> None:
            """In the worker, just before the call: nothing here may hold up start()."""
            if request_id:
                try:
                    dom.setMetadata(
                        lv.VIR_DOMAIN_METADATA_ELEMENT,
                        marker.xml(),
                        MARKER_KEY,
                        MARKER_NS,
                        _VIR_DOMAIN_AFFECT_LIVE,
                    )
                except lv.libvirtError as exc:  # the migration goes on, only less traceable
                    log.warning("could not mark %s with request %s: %s", vm.name, request_id, exc)
            try:
                dom.migrateSetMaxDowntime(downtime, 0)
            except lv.libvirtError as exc:
                log.warning("could not set the downtime limit of %s: %s", vm.name, exc)
            job.start_dirty_rate_calc()

        return LiveJob(
            dest_uri=peer_uri(dest.uri),
            params=params,
            flags=flags,
            postcopy_enabled=postcopy,
            auto_converge=auto_converge,
            name=vm.name,
            request_id=request_id,
            prepare=prepare,
            locate=self.locate,
            **common,
        )

    def _job(self, job: Job) -> MigrationJob:
        with self._lock:
            found = self._jobs.get(job.id)
        if found is None:
            raise NotFound(f"no libvirt job {job.id!r} in this connection")
        return found

    def poll(self, job: Job) -> JobStatus:
        """The job as its own threads last saw it: no libvirt call here."""
        st = self._job(job)
        # This job's own pace (fast near a switch-over): never the class's, shared by all.
        return dataclasses.replace(st.status(), next_poll=st.poll_interval())

    def tune(self, job: Job, action: Action) -> float | None:
        st = self._job(job)
        if not isinstance(st, LiveJob):
            raise NotSupported(f"a cold migration cannot apply {action}")
        lv = self.lv
        call: Any
        if isinstance(action, SetDowntime):
            call = lambda: st.dom.migrateSetMaxDowntime(action.ms, 0)  # noqa: E731
        elif isinstance(action, SetBandwidth):
            call = lambda: st.dom.migrateSetMaxSpeed(action.mib_s, 0)  # noqa: E731
        elif isinstance(action, AutoConverge):
            if not st.auto_converge:
                raise NotSupported(_unarmed(st, "auto-converge"))
            started = (
                st.params.get(lv.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL),
                st.params.get(lv.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT),
            )
            asked = (action.initial, action.increment)
            if asked not in ((None, None), started):  # not what the job started with
                # libvirt takes auto_converge.initial/.increment with the call, not later.
                raise NotSupported(
                    "libvirt sets auto-converge's throttle only when the migration starts: "
                    "QEMU throttles by the rule set then (its own: 20 % then +10 % a pass)"
                )
            return None  # armed at start (AUTO_CONVERGE): QEMU throttles the guest by its own rule
        elif isinstance(action, Compress):
            if not st.flags & lv.VIR_MIGRATE_COMPRESSED:
                raise NotSupported(_unarmed(st, "compression"))
            return None  # armed at start (COMPRESSED): XBZRLE from the third pass on
        elif isinstance(action, PostCopy):
            # An adopted job's flags are not known here: libvirt itself refuses the switch
            # of a job started without POSTCOPY ("post-copy migration was not enabled").
            if not st.postcopy_enabled and not st.attached:
                raise NotSupported("post-copy must be enabled when the job starts")

            def call() -> None:  # on the monitor's thread, in order with its samples
                st.dom.migrateStartPostCopy(0)
                st.postcopy_requested = True  # switching: the monitor watches for a broken one

        else:
            raise NotSupported(f"libvirt cannot apply {action}")
        try:
            # The monitor makes the call, in order with its samples: libvirt may block it for
            # seconds in switch-over. A refusal within TUNE_WAIT is raised here, a later one
            # logged.
            st.submit(call, str(action))
        except lv.libvirtError as exc:
            if st.done:
                return None  # the job ended meanwhile: the step came too late to matter
            raise NotSupported(f"libvirt refused {action}: {exc}") from None
        # Look again soon: the step may end the pass (a longer downtime limit) or start
        # post-copy right away.
        return FAST_POLL

    def abort(self, job: Job) -> None:
        self._job(job).abort()

    def finish(self, job: Job) -> None:
        with self._lock:
            st = self._jobs.pop(job.id, None)
            if st is None:
                return
            if isinstance(st, LiveJob) and st.working_set is not None:
                # What the first pass showed of the guest's working set (see _with_history).
                dirtied, window = st.working_set
                known = self._history.setdefault(st.vm, {})
                known["working_set_mib"] = f"{dirtied / MiB:.0f}"
                known["working_set_window_s"] = f"{window:.1f}"
            if self._by_vm.get(st.vm) is st:
                del self._by_vm[st.vm]
            if st.request_id and self._by_request.get(st.request_id) is st:
                del self._by_request[st.request_id]
        st.stop()

    def attach(self, ref: JobRef) -> Job:
        """Find a job again from its ``ref``.

        A job's ref names its source: watch the VM's migration job there, or, once it is over,
        judge the outcome by where the VM is. A ``START`` reference (saved before ``start``
        returned) names none: the job is the one whose domain carries that request id (see
        :data:`MARKER_NS`), an outgoing migration job on a source or the VM already running on
        the target; :class:`NotFound` if no host has it, :class:`ConnectionFailed` if a host
        that might have it cannot be asked."""
        intent = ref.intent is Intent.START
        if intent:
            vm_id, target_id, request_id = ref.vm, ref.target, ref.request_id
            mode = ref.mode or MigrationMode.LIVE
        else:
            vm_id, target_id, request_id = ref.get("vm"), ref.get("target"), ref.get("request_id")
            mode = MigrationMode(ref.get("mode") or MigrationMode.LIVE.value)
        if not vm_id or not target_id:
            raise NotFound(f"job reference {ref} names no VM or target")
        dest = self._host(target_id)
        with self._lock:
            known = self._by_request.get(request_id) if request_id else None
            if known is None and not intent:
                known = self._by_vm.get(vm_id)
        if known is not None:
            return self._job_handle(known)
        if mode is MigrationMode.COLD:
            return self._attach_relocate(vm_id, dest, ref, intent=intent)
        if intent and request_id:
            source, dom, job_id = self._find_request(vm_id, dest, request_id)
        else:
            source, dom, job_id = self._find_running(vm_id, dest, ref)
        job = LiveJob(
            dest_uri=peer_uri(dest.uri),
            params={},
            flags=0,
            postcopy_enabled=False,
            auto_converge=False,
            attached=True,
            request_id=request_id,
            locate=self.locate,
            job_id=job_id or uuid.uuid4().hex[:12],
            lv=self.lv,
            dom=dom if mode is MigrationMode.LIVE else None,
            vm=vm_id,
            source=source,
            target=dest,
        )
        job.mode = mode
        with self._lock:
            self._jobs[job.id] = job
            self._by_vm[vm_id] = job
            if request_id:
                self._by_request[request_id] = job
        job.watch()
        return self._job_handle(job)

    def _attach_relocate(self, vm_id: str, dest: HostConn, ref: JobRef, *, intent: bool) -> Job:
        """A move of a stopped VM started by a client that went away. An offline migration
        outlives no client (libvirt holds no job for it): the definitions say whether it
        happened. The target holding the only one: a completed move; else, for an intent,
        :class:`NotFound` (the core moves it then), and for a job, a failed one."""
        holders = self._holders(vm_id)
        source_id = ref.get("source") or next((h for h in holders if h != dest.id), "")
        source = self._hosts.get(source_id) or dest
        if holders == [dest.id]:
            outcome, native, vm_host, error = Phase.COMPLETED, "completed", dest.id, None
        elif intent:
            raise NotFound(f"VM {vm_id} was not moved to {dest.id} (its definition is elsewhere)")
        else:
            where = ", ".join(holders) or "no host"
            outcome, native, vm_host = Phase.FAILED, "failed", source.id
            error = f"the move was not finished by the client that began it (defined on {where})"
        job = RelocateJob(
            dest_uri=peer_uri(dest.uri),
            flags=0,
            job_id=ref.get("job") or uuid.uuid4().hex[:12],
            lv=self.lv,
            dom=None,
            vm=vm_id,
            source=source,
            target=dest,
        )
        job.request_id = ref.request_id if intent else ref.get("request_id")
        job.settled(outcome, native, vm_host, error)
        with self._lock:
            self._jobs[job.id] = job
            self._by_vm[vm_id] = job
        return self._job_handle(job)

    def _holders(self, vm_id: str) -> list[str]:
        """The hosts that hold a definition of the VM; :class:`ConnectionFailed` when one
        cannot be asked."""
        out = []
        for host in self._hosts.values():
            try:
                if host.domain(vm_id) is not None:
                    out.append(host.id)
            except self.lv.libvirtError as exc:
                raise ConnectionFailed(f"cannot ask {host.id} for VM {vm_id}: {exc}") from None
        return out

    def _find_running(self, vm_id: str, dest: HostConn, ref: JobRef) -> tuple[HostConn, Any, str]:
        """A job's own ref (or an old intent without a request id): its source, or the host
        running an outgoing migration of the VM."""
        source_id = ref.get("source")
        if source_id:
            source = self._host(source_id)
            return source, source.domain(vm_id), ref.get("job", "")
        for host, candidate in self._entries(vm_id):
            if host is not dest and self._migrating_out(candidate):
                return host, candidate, ref.get("job", "")
        raise NotFound(f"no migration of VM {vm_id} is running")

    def _find_request(
        self, vm_id: str, dest: HostConn, request_id: str
    ) -> tuple[HostConn, Any, str]:
        """The migration that request ``request_id`` started: on a source, a domain carrying
        the request's marker with an outgoing migration job; else on the target, the VM
        carrying it and running (the migration is over, or past its switch-over)."""
        lv = self.lv
        unreachable: list[str] = []
        landed: Marker | None = None
        for host in self._hosts.values():
            try:
                dom = host.domain(vm_id)
                if dom is None:
                    continue
                marker = read_marker(lv, dom)
                if marker is None or marker.request != request_id:
                    continue
                if host is not dest:
                    if self._migrating_out(dom, strict=True):
                        return host, dom, marker.job
                    continue
                state, reason = dom.state()[:2]
            except ConnectionFailed as exc:
                unreachable.append(f"{host.id} ({exc})")
                continue
            except lv.libvirtError as exc:
                if libvirt_error_code(exc) != lv.VIR_ERR_NO_DOMAIN:
                    unreachable.append(f"{host.id} ({exc})")
                continue
            if runs(lv, state, reason) and reason != lv.VIR_DOMAIN_RUNNING_POSTCOPY:
                landed = marker
        if unreachable:
            # The source may be among them, with the job running (or in post-copy).
            raise ConnectionFailed(
                f"cannot tell whether request {request_id} started a migration of VM {vm_id}: "
                f"{'; '.join(unreachable)} could not be asked"
            )
        if landed is not None:
            source = self._hosts.get(landed.source) or next(
                (h for h in self._hosts.values() if h is not dest), dest
            )
            return source, None, landed.job
        raise NotFound(f"no migration of VM {vm_id} carries request {request_id}")

    def _migrating_out(self, dom: Any, *, strict: bool = False) -> bool:
        """Whether ``dom`` has an outgoing migration job running (any job, where libvirt does
        not say which: it reports ``operation`` from 3.3 on; ``strict`` wants it said)."""
        try:
            if not dom.isActive():
                return False
            stats = dom.jobStats()
        except self.lv.libvirtError:
            if strict:
                raise
            return False
        if stats.get("type", 0) not in JOB_ACTIVE:
            return False
        operation = stats.get("operation")
        if operation is None:
            return True
        return bool(operation == JOB_OPERATION_MIGRATION_OUT)

    @staticmethod
    def _job_handle(job: MigrationJob) -> Job:
        data = {
            "job": job.id,
            "vm": job.vm,
            "source": job.source.id,
            "target": job.target.id,
            "mode": job.mode.value,
        }
        if job.request_id:
            data["request_id"] = job.request_id
        return Job(
            id=job.id,
            vm=job.vm,
            source=job.source.id,
            target=job.target.id,
            mode=job.mode,
            ref=JobRef(data=data),
        )

    def close(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for st in jobs:
            st.stop()
        for host in self._hosts.values():
            host.close()

    # ---- events ----------------------------------------------------------------------------
    def _on_event(self, host: HostConn, vm_id: str, kind: str, payload: Any) -> None:
        with self._lock:
            job = self._by_vm.get(vm_id)
        if job is not None:
            job.on_event(host.id, kind, payload)


def _active(dom: Any) -> bool:
    try:
        return bool(dom.isActive())
    except Exception:  # gone while we looked: nothing to measure
        return False
