"""The libvirt backend: a cluster of libvirt hosts (QEMU driver) behind one vmmove connection.

Host ids are the hosts' own names (``virConnectGetHostname``), VM ids are domain UUIDs and VM
names are domain names. Live migrations are peer-to-peer ``migrateToURI3`` calls, cold ones
stop the domain, move its definition (OFFLINE) and start it on the target; see
:mod:`vmmove_libvirt.jobs` for how each maps onto vmmove's phases.
"""

from __future__ import annotations

import importlib
import logging
import re
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from vmmove.backend import Backend, Job, JobStatus, Reservation
from vmmove.errors import Conflict, ConnectionFailed, InvalidInput, NotFound, NotSupported
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
    Storage,
    VMInfo,
)
from vmmove.policy import Action, AutoConverge, PostCopy, SetBandwidth, SetDowntime
from vmmove_libvirt.config import (
    ClusterConfig,
    client_uri,
    migration_address,
    parse,
    peer_uri,
    redact,
)
from vmmove_libvirt.connection import HostConn, libvirt_error_code
from vmmove_libvirt.jobs import FAST_POLL, SLOW_POLL, ColdJob, LiveJob, MigrationJob
from vmmove_libvirt.plugin import CAPABILITIES
from vmmove_libvirt.stats import JOB_ACTIVE
from vmmove_libvirt.xmlinfo import NETWORK_POOLS, Disk, DomainFacts, domain_facts

__all__ = ["QEMU_DEFAULT_DOWNTIME_MS", "LibvirtBackend"]

log = logging.getLogger("vmmove.libvirt")

#: QEMU's own downtime-limit; a spec's max_downtime below it lowers the start value.
QEMU_DEFAULT_DOWNTIME_MS = 300
#: QEMU releases before this lose guest writes in TCG live migration (QEMU commit 03bfc2188f,
#: "physmem: Fix migration dirty bitmap coherency with TCG memory access", in 9.0).
TCG_FIXED_IN = (9, 0)
_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)


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

    def __init__(self, config: ClusterConfig, lv: Any | None = None) -> None:
        self.config = config
        self.lv = lv if lv is not None else _load_libvirt()
        self._lock = threading.RLock()
        self._jobs: dict[str, MigrationJob] = {}
        self._by_vm: dict[str, MigrationJob] = {}
        self._pool_types: dict[tuple[str, str], str] = {}
        self._capacity: dict[str, Capacity] = {}
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
        except BaseException:
            for host in opened:
                host.close()
            raise

    @classmethod
    def from_uri(cls, uri: str, options: Mapping[str, Any]) -> LibvirtBackend:
        return cls(parse(uri, options))

    @staticmethod
    def _identify(hosts: list[HostConn]) -> dict[str, HostConn]:
        by_id: dict[str, HostConn] = {}
        by_uuid: dict[str, HostConn] = {}
        for host in hosts:
            for seen, key, what in (
                (by_id, host.id, "hostname"),
                (by_uuid, host.facts.uuid, "host UUID"),
            ):
                if key and key in seen:
                    other = seen[key]
                    raise ConnectionFailed(
                        f"{redact(other.uri)} and {redact(host.uri)} report the same {what} "
                        f"{key!r}: they are one host, or two hosts libvirt cannot tell apart "
                        "(set host_uuid in libvirtd.conf)"
                    )
                seen[key] = host
        return by_id

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
        extra = {"uri": redact(h.uri), "host_uuid": h.facts.uuid, "libvirt": h.libvirt_version}
        try:
            conn = h.ensure()
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
                cpu=self._cpu(h),
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
            cpu=self._cpu(h),
            extra={
                **extra,
                "qemu_default": h.hypervisor_version,  # the driver's default emulator
                "free_memory_mib": str(free // MiB),
                "committed_memory_mib": str(committed // MiB),
            },
        )

    @staticmethod
    def _cpu(h: HostConn) -> CpuInfo:
        f = h.facts
        return CpuInfo(arch=f.arch, model=f.model, vendor=f.vendor, features=f.features)

    def vms(self) -> list[VMInfo]:
        found: dict[str, list[tuple[HostConn, Any]]] = {}
        for host in self._hosts.values():
            try:
                domains = host.ensure().listAllDomains(0)
            except (ConnectionFailed, self.lv.libvirtError):
                continue
            for dom in domains:
                found.setdefault(dom.UUIDString(), []).append((host, dom))
        out = []
        for entries in found.values():
            try:
                out.append(self._vm_info(entries))
            except (NotFound, self.lv.libvirtError):
                continue  # undefined while we looked
        return out

    def vm(self, ref: str) -> VMInfo:
        if _UUID.match(ref):
            entries = self._entries(ref)
            if entries:
                return self._vm_info(entries)
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
        return self._vm_info(self._entries(uuid_) or named[uuid_])

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
        entries = self._entries(vm_id)
        if not entries:
            return None
        try:
            return self._primary(entries)[0].id
        except NotFound:
            return None

    # ---- pre-checks ------------------------------------------------------------------------
    def check(self, vm: VMInfo, target: HostInfo, spec: MigrationSpec) -> list[Problem]:
        problems: list[Problem] = []

        def add(code: str, message: str, severity: str = "error") -> None:
            problems.append(Problem(code=code, message=message, severity=severity))  # type: ignore[arg-type]

        mode = spec.mode
        if mode is MigrationMode.AUTO:
            mode = MigrationMode.LIVE if vm.power is PowerState.RUNNING else MigrationMode.COLD
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
                dom=dom, source=source, dest=dest, spec=spec, needs=needs, common=common
            )
        elif mode is MigrationMode.COLD:
            flags = (
                lv.VIR_MIGRATE_OFFLINE
                | lv.VIR_MIGRATE_PERSIST_DEST
                | lv.VIR_MIGRATE_UNDEFINE_SOURCE
                | lv.VIR_MIGRATE_PEER2PEER
            )
            job = ColdJob(
                dest_uri=peer_uri(dest.uri),
                flags=flags,
                shutdown_timeout=self.config.shutdown_timeout,
                **common,
            )
        else:
            raise InvalidInput(f"start() takes live or cold, not {mode}")
        with self._lock:
            self._jobs[job_id] = job
            self._by_vm[vm.id] = job
        job.start()
        return self._job_handle(job, {})

    def _live_job(
        self,
        *,
        dom: Any,
        source: HostConn,
        dest: HostConn,
        spec: MigrationSpec,
        needs: frozenset[str],
        common: dict[str, Any],
    ) -> LiveJob:
        lv = self.lv
        flags = lv.VIR_MIGRATE_LIVE | lv.VIR_MIGRATE_PEER2PEER | lv.VIR_MIGRATE_PERSIST_DEST
        if dom.isPersistent():
            flags |= lv.VIR_MIGRATE_UNDEFINE_SOURCE
        auto_converge = "auto_converge" in needs
        postcopy = "postcopy" in needs
        if auto_converge:
            flags |= lv.VIR_MIGRATE_AUTO_CONVERGE
        if postcopy:
            flags |= lv.VIR_MIGRATE_POSTCOPY
        facts = self._facts(source, dom)
        if facts.local_disks:
            if self.config.copy_storage == "all":
                flags |= lv.VIR_MIGRATE_NON_SHARED_DISK
            elif self.config.copy_storage == "inc":
                flags |= lv.VIR_MIGRATE_NON_SHARED_INC
        params: dict[str, Any] = {}
        address = migration_address(dest.uri)
        if address is not None:
            # Without it QEMU gets the destination's hostname, which need not resolve; and the
            # destination QEMU would listen on every address.
            params[lv.VIR_MIGRATE_PARAM_URI] = f"tcp://{address}"
            params[lv.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = address.strip("[]")
        if spec.bandwidth is not None:
            params[lv.VIR_MIGRATE_PARAM_BANDWIDTH] = spec.bandwidth
        # The downtime limit starts at QEMU's default, or at the cap if lower; set it every time,
        # since a limit left by an earlier, failed migration would otherwise carry over.
        downtime = min(QEMU_DEFAULT_DOWNTIME_MS, spec.max_downtime or QEMU_DEFAULT_DOWNTIME_MS)
        try:
            dom.migrateSetMaxDowntime(downtime, 0)
        except lv.libvirtError as exc:
            log.warning("could not set the downtime limit of %s: %s", dom.name(), exc)
        job = LiveJob(
            dest_uri=peer_uri(dest.uri),
            params=params,
            flags=flags,
            postcopy_enabled=postcopy,
            auto_converge=auto_converge,
            **common,
        )
        if dom.isActive():
            job.start_dirty_rate_calc()
        return job

    def _job(self, job: Job) -> MigrationJob:
        with self._lock:
            found = self._jobs.get(job.id)
        if found is None:
            raise NotFound(f"no libvirt job {job.id!r} in this connection")
        return found

    def poll(self, job: Job) -> JobStatus:
        st = self._job(job)
        if isinstance(st, LiveJob) and st.source_lost_at is not None and not st.done:
            self._reconnect_source(st)
        st.refresh()
        if isinstance(st, LiveJob) and st.unwatched_end and not st.done:
            self._settle_unwatched(st)
        status = st.status()
        self.poll_interval = st.poll_interval()
        if status.phase.terminal and status.vm_host is None:
            host: str | None
            if status.phase is Phase.COMPLETED:
                host = st.target.id
            elif status.postcopy:
                # Failed in post-copy: neither side holds all of the memory. A paused copy is
                # not the VM; only a running one is.
                host = self._running_on(st.vm)
            else:
                host = self.locate(st.vm)
            status = replace(status, vm_host=host)
        return status

    def _running_on(self, vm_id: str) -> str | None:
        lv = self.lv
        for host, dom in self._entries(vm_id):
            try:
                if dom.state()[0] in (lv.VIR_DOMAIN_RUNNING, lv.VIR_DOMAIN_BLOCKED):
                    return host.id
            except lv.libvirtError:
                continue
        return None

    def _reconnect_source(self, st: LiveJob) -> None:
        """The source's libvirtd went away during the call. While it does not answer, say so
        (the engine keeps polling for its grace period, and records that it lost contact); once
        it answers again (it recovers or cancels the migration as it restarts), watch the VM as
        an attached job would."""
        try:
            st.source.ensure()
            dom = st.source.domain(st.vm)
        except self.lv.libvirtError as exc:
            raise ConnectionFailed(f"{st.source.id}: {exc}") from None
        with st.lock:
            st.dom, st.attached, st.source_lost_at = dom, True, None

    def _settle_unwatched(self, st: LiveJob) -> None:
        """An attached job whose migration ended while nobody watched: judge by where the VM is."""
        where = self.locate(st.vm)
        if where == st.target.id:
            st.final_event.wait(1.0)  # JOB_COMPLETED, with the figures, may still be on its way
        with st.lock:
            if st.done:
                return
            st.ended = time.monotonic()
            elapsed = (st.final or {}).get("time_elapsed")
            if isinstance(elapsed, int):  # the platform's own duration of the whole job
                st.started = st.ended - elapsed / 1000
            if where == st.target.id:
                st.outcome, st.native = Phase.COMPLETED, "completed (while detached)"
                st.error = None
            else:
                st.outcome, st.native = Phase.FAILED, "ended while detached"
                why = st.error or "the migration ended while no client watched it"
                st.error = f"{why}; the VM is on {where}"

    def tune(self, job: Job, action: Action) -> None:
        st = self._job(job)
        if not isinstance(st, LiveJob):
            raise NotSupported(f"a cold migration cannot apply {action}")
        lv = self.lv
        try:
            if isinstance(action, SetDowntime):
                st.dom.migrateSetMaxDowntime(action.ms, 0)
            elif isinstance(action, SetBandwidth):
                st.dom.migrateSetMaxSpeed(action.mib_s, 0)
            elif isinstance(action, AutoConverge):
                if not st.auto_converge:
                    raise NotSupported("auto-converge must be enabled when the job starts")
                # Armed at start (AUTO_CONVERGE): QEMU throttles the guest by its own rule.
            elif isinstance(action, PostCopy):
                if not st.postcopy_enabled:
                    raise NotSupported("post-copy must be enabled when the job starts")
                st.dom.migrateStartPostCopy(0)
            else:
                raise NotSupported(f"libvirt cannot apply {action}")
        except lv.libvirtError as exc:
            if st.done:
                return  # the job ended meanwhile: the step came too late to matter
            raise NotSupported(f"libvirt refused {action}: {exc}") from None
        # The engine reads poll_interval after applying the policy: look again soon, the step
        # may end the pass (a longer downtime limit) or start post-copy right away.
        self.poll_interval = FAST_POLL

    def abort(self, job: Job) -> None:
        self._job(job).abort()

    def finish(self, job: Job) -> None:
        with self._lock:
            st = self._jobs.pop(job.id, None)
            if st is not None and self._by_vm.get(st.vm) is st:
                del self._by_vm[st.vm]

    def attach(self, ref: Mapping[str, str]) -> Job:
        """Find a job again from its ``ref``: watch the VM's migration job on the source, or,
        once it is over, judge the outcome by where the VM is. A ref written before ``start``
        returned (``intent: start``) names no source: the job is looked for on every host."""
        vm_id, target_id = ref.get("vm"), ref.get("target")
        if not vm_id or not target_id:
            raise NotFound(f"job reference {dict(ref)} names no VM or target")
        dest = self._host(target_id)
        with self._lock:
            known = self._by_vm.get(vm_id)
        if known is not None:
            return self._job_handle(known, ref)
        source_id = ref.get("source")
        dom = None
        if source_id is None:  # the client died inside start(): is a migration running?
            for host, candidate in self._entries(vm_id):
                if host is not dest and self._job_running(candidate):
                    source_id, dom = host.id, candidate
            if source_id is None:
                raise NotFound(f"no migration of VM {vm_id} is running")
        source = self._host(source_id)
        if dom is None:
            dom = source.domain(vm_id)
        mode = MigrationMode(ref.get("mode", MigrationMode.LIVE.value))
        job = LiveJob(
            dest_uri=peer_uri(dest.uri),
            params={},
            flags=0,
            postcopy_enabled=False,
            auto_converge=False,
            attached=True,
            job_id=ref.get("job") or uuid.uuid4().hex[:12],
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
        return self._job_handle(job, ref)

    @staticmethod
    def _job_handle(job: MigrationJob, ref: Mapping[str, str]) -> Job:
        return Job(
            id=job.id,
            vm=job.vm,
            source=job.source.id,
            target=job.target.id,
            mode=job.mode,
            ref={
                **{k: v for k, v in ref.items() if k != "intent"},
                "job": job.id,
                "vm": job.vm,
                "source": job.source.id,
                "target": job.target.id,
                "mode": job.mode.value,
            },
        )

    def close(self) -> None:
        for host in self._hosts.values():
            host.close()

    # ---- events ----------------------------------------------------------------------------
    def _on_event(self, host: HostConn, vm_id: str, kind: str, payload: Any) -> None:
        with self._lock:
            job = self._by_vm.get(vm_id)
        if job is not None:
            job.on_event(host.id, kind, payload)
