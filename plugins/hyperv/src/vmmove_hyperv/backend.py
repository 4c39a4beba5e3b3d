"""The ``hyperv://`` backend: Hyper-V hosts driven over WinRM, one PowerShell call at a time.

A live migration is a WMI job: ``Msvm_VirtualSystemMigrationService.MigrateVirtualSystemToHost``
on the source host answers 4096 with an ``Msvm_MigrationJob`` that lives in the host's WMI
(not in the PowerShell process that asked, which ends with the call). The job is followed
by its ``JobState``/``PercentComplete`` (read by :class:`~vmmove_hyperv.sampler.Sampler`),
cancelled with ``RequestStateChange(4)``, and disappears about five minutes after it ends:
then the outcome is where the VM is registered (:func:`~vmmove_hyperv.phases.gone_status`).

The engine's request id travels in the VM's Notes (``[vmmove-request:ID]``, set in the same
call that starts the job; Notes move with the VM), so ``attach`` can tell whether a start
whose answer was lost reached the host, and then follows the VM's migration job.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from vmmove.backend import Backend, Intent, Job, JobRef, JobStatus
from vmmove.engine import PLATFORM_DECIDES
from vmmove.errors import (
    Conflict,
    ConnectionFailed,
    InvalidInput,
    MigrationFailed,
    NotFound,
)
from vmmove.machine import Phase
from vmmove.model import (
    HostInfo,
    MigrationMode,
    MigrationSpec,
    PowerState,
    Problem,
    Storage,
    VMInfo,
)
from vmmove.policy import AutoConverge, Policy, PostCopy, SetBandwidth, SetDowntime
from vmmove.secrets import Secret
from vmmove_hyperv import inventory, psjson, scripts
from vmmove_hyperv.capabilities import CAPABILITIES
from vmmove_hyperv.phases import gone_status, job_status
from vmmove_hyperv.sampler import Sample, Sampler, Watched
from vmmove_hyperv.winrm_client import ProtocolFactory, ScriptFailed, Settings, WinRMClient

__all__ = ["HyperVBackend", "parse_uri"]

log = logging.getLogger(__name__)

_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9_.-]*)(:[0-9]{1,5})?$")
_OK = (0, 4096)  # WMI: done, or a job was started


def parse_uri(uri: str) -> tuple[str, list[str], str]:
    """``hyperv://[USER@]HOST1[:PORT],HOST2[/CLUSTER]`` -> (user, addresses, cluster)."""
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise InvalidInput(f"malformed URI: {exc}") from None
    if parts.scheme != "hyperv":
        raise InvalidInput(f"not a hyperv:// URI: {parts.scheme}://")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    if ":" in userinfo:
        raise InvalidInput("a password never goes in the URI: pass password= or VMMOVE_PASSWORD")
    addresses = [a.strip() for a in hostlist.split(",")]
    if not hostlist or any(not _ADDRESS.match(a) for a in addresses):
        raise InvalidInput(
            "hyperv:// needs a comma-separated list of hosts (name or name:port), "
            f"not {hostlist[:80]!r}"
        )
    if len(set(addresses)) != len(addresses):
        raise InvalidInput("a host is named twice in the URI")
    cluster = unquote(parts.path.strip("/"))
    return unquote(userinfo), addresses, cluster


class HyperVBackend(Backend):
    scheme = "hyperv"
    capabilities = CAPABILITIES

    def __init__(
        self,
        uri: str,
        options: Mapping[str, Any],
        *,
        protocol_factory: ProtocolFactory | None = None,
    ) -> None:
        user, addresses, cluster = parse_uri(uri)
        password = options.get("password")
        ca = options.get("ca_trust_path")
        self.settings = Settings(
            transport=str(options.get("transport", "ntlm")),
            username=str(options.get("username") or user),
            password=password if isinstance(password, Secret) else None,
            port=options.get("port"),
            https=bool(options.get("https", False)),
            insecure=bool(options.get("insecure", False)),
            ca_trust_path=str(ca) if ca is not None else None,
            operation_timeout=float(options.get("operation_timeout", 20.0)),
            call_timeout=float(options.get("call_timeout", 60.0)),
            shell=str(options.get("shell", "powershell")),
        )
        self.settings.check()
        self.uri = uri
        self.cluster = str(options.get("cluster") or cluster)
        self.performance = str(options.get("performance", "host"))
        self.smb_bandwidth: int | None = options.get("smb_bandwidth")
        if self.smb_bandwidth is not None and self.performance != "smb":
            raise InvalidInput("smb_bandwidth applies with performance=smb only")
        self.poll_interval = float(options.get("poll_interval", 2.0))
        self._clients = {
            a: WinRMClient(a, self.settings, factory=protocol_factory) for a in addresses
        }
        self._lock = threading.Lock()
        self._aborted: set[str] = set()
        self._final: dict[str, JobStatus] = {}
        self._best: dict[str, float] = {}
        self._sampler = Sampler(self._fetch_jobs, self.locate, self.poll_interval)
        # Each address answers with its host's name: the id vmmove uses from here on.
        self._address_of: dict[str, str] = {}
        try:
            for address in addresses:
                name = self._host_facts(address).name
                if name in self._address_of:
                    raise InvalidInput(f"{address} and {self._address_of[name]} are one host")
                self._address_of[name] = address
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"HyperVBackend({self.uri!r}, transport={self.settings.transport!r})"

    # ---- plumbing -------------------------------------------------------------------
    def _client(self, host_id: str) -> WinRMClient:
        address = self._address_of.get(host_id)
        if address is None:
            raise NotFound(f"no Hyper-V host {host_id!r} in {self.uri}")
        return self._clients[address]

    def _json(self, client: WinRMClient, script: str, what: str) -> Any:
        return psjson.loads(client.run_checked(script, what), f"{what} on {client.address}")

    def _host_facts(self, address: str) -> inventory.HostFacts:
        raw = self._json(self._clients[address], scripts.host(), "Get-VMHost")
        return inventory.host_facts(raw, address)

    # ---- inventory ------------------------------------------------------------------
    def hosts(self) -> list[HostInfo]:
        vms = self.vms()
        out = []
        for name, address in self._address_of.items():
            raw = self._json(self._clients[address], scripts.host(), "Get-VMHost")
            info = inventory.host_info(raw, address, vms, self.cluster)
            if info.id != name:
                raise ConnectionFailed(f"{address} now answers as {info.id}, not {name}")
            out.append(info)
        return out

    def vms(self) -> list[VMInfo]:
        out: list[VMInfo] = []
        for name, address in self._address_of.items():
            raw = self._json(self._clients[address], scripts.vms(), "Get-VM")
            out += [inventory.vm_info(v, name) for v in psjson.as_list(raw, "Get-VM")]
        return out

    def locate(self, vm_id: str) -> str | None:
        try:
            scripts.ident(vm_id, "VM id")
        except InvalidInput:
            return None  # not a Hyper-V id: no host has it
        found: list[VMInfo] = []
        for name, address in self._address_of.items():
            raw = self._json(self._clients[address], scripts.vms(vm=vm_id), "Get-VM")
            found += [inventory.vm_info(v, name) for v in psjson.as_list(raw, "Get-VM")]
        running = [v.host for v in found if v.power is PowerState.RUNNING]
        if running:
            return running[0]
        return found[0].host if found else None

    # ---- pre-checks -----------------------------------------------------------------
    def check(
        self,
        vm: VMInfo,
        target: HostInfo,
        spec: MigrationSpec,
        *,
        mode: MigrationMode,
        policy: Policy,
    ) -> list[Problem]:
        problems: list[Problem] = []
        live = mode is MigrationMode.LIVE
        source = self.host(vm.host)
        for host in (source, target):
            if host.extra.get("migration_enabled") == "false":
                problems.append(
                    Problem(
                        code="migration-disabled",
                        message=f"virtual machine migration is disabled on {host.name} "
                        "(Enable-VMMigration)",
                    )
                )
        active = int(target.extra.get("active_migrations", "0"))
        limit = int(target.extra.get("max_migrations", "0") or 0)
        if limit and active >= limit:
            problems.append(
                Problem(
                    code="migration-limit",
                    severity="warning",
                    message=f"{target.name} runs {active} migrations, its limit "
                    f"(MaximumVirtualMachineMigrations {limit}): this one waits in the queue",
                )
            )
        if live and vm.power is not PowerState.RUNNING:
            problems.append(
                Problem(code="not-running", message=f"{vm.name} is not running: move it cold")
            )
        if live and vm.storage is Storage.LOCAL:
            problems.append(
                Problem(
                    code="local-storage",
                    message=f"{vm.name}'s disks are local to {source.name}: a live migration "
                    "without shared storage must move them too (Move-VM -IncludeStorage), "
                    "which vmmove-hyperv does not do",
                )
            )
        if self.performance == "smb" and source.extra.get("performance_option") != "SMB":
            problems.append(
                Problem(
                    code="performance-option",
                    message=f"performance=smb, but {source.name} migrates over "
                    f"{source.extra.get('performance_option')} (Set-VMHost "
                    "-VirtualMachineMigrationPerformanceOption SMB)",
                )
            )
        if live and vm.power is PowerState.RUNNING and vm.host != target.id:
            problems += self._compare(vm, source, target)
        problems += self._platform_decides(spec, policy, live)
        return problems

    def _compare(self, vm: VMInfo, source: HostInfo, target: HostInfo) -> list[Problem]:
        script = scripts.compare(vm=vm.id, destination=target.extra.get("fqdn", target.name))
        try:
            raw = self._json(self._client(source.id), script, "Compare-VM")
        except ScriptFailed as exc:
            return [Problem(code="compare-vm", message="Compare-VM: " + "; ".join(exc.messages))]
        problems = []
        for item in psjson.as_list(raw, "Compare-VM"):
            obj = psjson.as_object(item, "Compare-VM incompatibility")
            message = psjson.as_text(obj.get("Message"), "Message", default="")[:500]
            message_id = psjson.as_int(obj.get("MessageId"), "MessageId", default=0)
            problems.append(
                Problem(code=f"compare-vm-{message_id}", message=message or f"#{message_id}")
            )
        compat = vm.extra.get("processor_compatibility") == "true"
        if (
            not compat
            and source.cpu.model != target.cpu.model
            and not any("processor" in p.message.lower() for p in problems)
        ):
            problems.append(
                Problem(
                    code="processor-compatibility",
                    message=f"{vm.name} runs without processor compatibility mode and "
                    f"{target.name} has another processor ({target.cpu.model})",
                )
            )
        return problems

    def _platform_decides(self, spec: MigrationSpec, policy: Policy, live: bool) -> list[Problem]:
        if not live:
            return []
        notes = []
        knobs = {
            SetDowntime: "switch-over downtime",
            SetBandwidth: "bandwidth per migration",
            AutoConverge: "auto-converge",
            PostCopy: "post-copy",
        }
        for step in policy.steps:
            for kind, knob in knobs.items():
                if isinstance(step.action, kind):
                    notes.append(f"Hyper-V decides '{step}' itself: it has no {knob} knob")
        if spec.max_downtime is not None:
            notes.append("Hyper-V decides the switch-over downtime itself (max_downtime)")
        if spec.bandwidth is not None:
            notes.append(
                "Hyper-V decides the bandwidth itself (bandwidth); only the SMB transport "
                "has a host-wide limit (smb_bandwidth)"
            )
        return [Problem(code=PLATFORM_DECIDES, message=n, severity="warning") for n in notes]

    # ---- migration ------------------------------------------------------------------
    def start(
        self,
        vm: VMInfo,
        target: HostInfo,
        spec: MigrationSpec,
        mode: MigrationMode,
        *,
        policy: Policy,
        needs: frozenset[str],
        reservation: Any,
        request_id: str = "",
    ) -> Job:
        return self._begin(vm, target, mode, request_id)

    def relocate(
        self, vm: VMInfo, target: HostInfo, spec: MigrationSpec, *, request_id: str
    ) -> Job:
        return self._begin(vm, target, MigrationMode.COLD, request_id)

    def _begin(self, vm: VMInfo, target: HostInfo, mode: MigrationMode, request_id: str) -> Job:
        client = self._client(vm.host)
        compression = {"tcpip": False, "compression": True}.get(self.performance)
        script = scripts.start(
            vm=vm.id,
            destination=target.extra.get("fqdn", target.name),
            request_id=request_id or "none",
            compression=compression if mode is MigrationMode.LIVE else None,
            smb_bandwidth=self.smb_bandwidth if mode is MigrationMode.LIVE else None,
        )
        try:
            raw = self._json(client, script, "MigrateVirtualSystemToHost")
        except ScriptFailed as exc:  # the host answered: it refused
            raise MigrationFailed(
                f"{vm.host} refused to migrate {vm.name}: {'; '.join(exc.messages)[:500]}",
                vm_host=vm.host,
            ) from None
        obj = psjson.as_object(inventory.as_single(raw, "migrate"), "MigrateVirtualSystemToHost")
        code = psjson.as_int(obj.get("ReturnValue"), "ReturnValue")
        job_id = psjson.as_text(obj.get("Job"), "Job", default="")
        if code == 32775:
            raise Conflict(f"{vm.host} refused to migrate {vm.name} now (invalid state: 32775)")
        if code not in _OK or (code == 4096 and not job_id):
            raise MigrationFailed(
                f"{vm.host} refused to migrate {vm.name}: MigrateVirtualSystemToHost "
                f"returned {code}",
                vm_host=vm.host,
            )
        log.info("hyperv: %s -> %s started as job %s", vm.name, target.name, job_id or "-")
        return self._job(
            job_id, vm=vm.id, source=vm.host, target=target.id, mode=mode, request=request_id
        )

    def _job(
        self, job_id: str, *, vm: str, source: str, target: str, mode: MigrationMode, request: str
    ) -> Job:
        data = {
            "job": job_id,
            "vm": vm,
            "source": source,
            "target": target,
            "mode": mode.value,
            "request": request,
        }
        return Job(
            id=job_id or f"{vm}@{target}",
            vm=vm,
            source=source,
            target=target,
            mode=mode,
            ref=JobRef(data=data),
        )

    def _fetch_jobs(self, host: str, job_ids: list[str]) -> dict[str, Mapping[str, Any]]:
        raw = self._json(self._client(host), scripts.jobs(job_ids), "Msvm_MigrationJob")
        out: dict[str, Mapping[str, Any]] = {}
        for item in psjson.as_list(raw, "Msvm_MigrationJob"):
            obj = psjson.as_object(item, "Msvm_MigrationJob")
            out[psjson.as_text(obj.get("InstanceID"), "InstanceID")] = obj
        return out

    def poll(self, job: Job) -> JobStatus:
        with self._lock:
            final = self._final.get(job.id)
            aborted = job.id in self._aborted
            best = self._best.get(job.id, 0.0)
        if final is not None:
            return final
        job_id = job.ref.get("job")
        if job_id:
            self._sampler.watch(Watched(job_id=job_id, source=job.source, vm=job.vm))
            sample = self._sampler.latest(job_id)
        else:  # no job object to read (gone before attach found it): where the VM is
            sample = Sample(gone=True, vm_host=self.locate(job.vm))
        if sample is None:
            return JobStatus(
                phase=Phase.REQUESTING, native="submitted; no reading yet", percent=best
            )
        if sample.error is not None:
            raise ConnectionFailed(sample.error)
        if sample.gone:
            status = gone_status(
                vm_host=sample.vm_host,
                source=job.source,
                target=job.target,
                abort_requested=aborted,
                percent=best,
            )
        else:
            status = job_status(sample.raw, abort_requested=aborted)
        percent = max(best, status.percent or 0.0)
        if status.phase is not Phase.COMPLETED:
            status = dataclasses.replace(status, percent=percent)
        with self._lock:
            self._best[job.id] = status.percent or percent
            if status.phase.terminal:
                self._final[job.id] = status
        if status.phase.terminal and job_id:
            self._sampler.forget(job_id)
        return status

    def abort(self, job: Job) -> None:
        with self._lock:
            self._aborted.add(job.id)
        job_id = job.ref.get("job")
        if not job_id:
            return
        raw = self._json(self._client(job.source), scripts.cancel(job_id), "RequestStateChange")
        obj = psjson.as_object(inventory.as_single(raw, "cancel"), "RequestStateChange")
        code = psjson.as_int(obj.get("ReturnValue"), "ReturnValue")
        if code not in (*_OK, -1):
            # 32775: the job is past its switch-over (or over): the outcome shows in poll.
            log.info("hyperv: cancel of job %s answered %s", job_id, code)

    def finish(self, job: Job) -> None:
        job_id = job.ref.get("job")
        if job_id:
            self._sampler.forget(job_id)

    def attach(self, ref: JobRef) -> Job:
        if ref.intent is Intent.JOB:
            job_id, vm = ref.get("job"), ref.get("vm")
            if not vm or ref.get("source") not in self._address_of:
                raise NotFound(f"not a Hyper-V job reference: {dict(ref.data)}")
            mode = MigrationMode(ref.get("mode") or MigrationMode.LIVE.value)
            return self._job(
                job_id,
                vm=vm,
                source=ref.get("source"),
                target=ref.get("target"),
                mode=mode,
                request=ref.get("request"),
            )
        return self._find(ref)

    def _find(self, ref: JobRef) -> Job:
        """The job a start request whose answer was lost began, if the host acted on it."""
        mode = ref.mode or MigrationMode.LIVE
        marked = False
        vm_on: str | None = None
        jobs: list[tuple[str, Mapping[str, Any]]] = []
        script = scripts.find(vm=ref.vm, request_id=ref.request_id or "none")
        target = self._address_of.get(ref.target) and self.host(ref.target)
        names = {ref.target.lower()}
        if isinstance(target, HostInfo):
            names.add(target.extra.get("fqdn", "").lower())
        for name, address in self._address_of.items():
            raw = self._json(self._clients[address], script, "find migration job")
            obj = psjson.as_object(inventory.as_single(raw, "find"), "find migration job")
            if psjson.as_bool(obj.get("HasVM"), "HasVM", default=False):
                vm_on = name
            marked = marked or psjson.as_bool(obj.get("Marked"), "Marked", default=False)
            for item in psjson.as_list(obj.get("Jobs"), "Jobs"):
                job = psjson.as_object(item, "Msvm_MigrationJob")
                dest = psjson.as_text(job.get("DestinationHost"), "DestinationHost", default="")
                if dest.lower() in names:
                    jobs.append((name, job))
        active = [(h, j) for h, j in jobs if job_status(j, abort_requested=False).phase.cancellable]
        chosen = (active or jobs)[:1] if marked else active[:1]
        if chosen:
            host, job = chosen[0]
            job_id = psjson.as_text(job.get("InstanceID"), "InstanceID")
            return self._job(
                job_id, vm=ref.vm, source=host, target=ref.target, mode=mode, request=ref.request_id
            )
        if marked and vm_on == ref.target:
            # It reached the host and the VM is on the target: the job ended and is gone.
            source = next(n for n in self._address_of if n != ref.target)
            return self._job(
                "", vm=ref.vm, source=source, target=ref.target, mode=mode, request=ref.request_id
            )
        raise NotFound(f"no migration job of {ref.vm} for request {ref.request_id}")

    # ---- cold migration primitives --------------------------------------------------
    def power_off(self, vm: VMInfo, *, force: bool) -> None:
        self._power(vm, "off" if force else "shutdown")

    def power_on(self, vm: VMInfo) -> None:
        self._power(vm, "on")

    def _power(self, vm: VMInfo, action: str) -> None:
        what = {"off": "RequestStateChange(3)", "on": "RequestStateChange(2)"}.get(
            action, "InitiateShutdown"
        )
        try:
            raw = self._json(self._client(vm.host), scripts.power(vm=vm.id, action=action), what)
        except ScriptFailed as exc:
            raise MigrationFailed(
                f"{vm.host}: {what} of {vm.name} failed: {'; '.join(exc.messages)[:300]}",
                vm_host=None,
            ) from None
        obj = psjson.as_object(inventory.as_single(raw, what), what)
        code = psjson.as_int(obj.get("ReturnValue"), "ReturnValue")
        if code == 32775:
            # Invalid state: fine if the VM is already where it was asked to go.
            wanted = PowerState.RUNNING if action == "on" else PowerState.STOPPED
            if self.vm(vm.id).power is wanted:
                return
        if code not in _OK:
            raise MigrationFailed(f"{vm.host}: {what} of {vm.name} answered {code}", vm_host=None)

    def close(self) -> None:
        self._sampler.close()
        for client in self._clients.values():
            client.close()
