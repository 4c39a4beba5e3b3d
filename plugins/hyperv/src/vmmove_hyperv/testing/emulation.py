"""Hyper-V behind the fake WinRM endpoint: a :class:`~vmmove_hyperv.testing.shell.PowerShell`
that answers the scripts vmmove-hyperv sends (and plain ``Get-VM``, ``Stop-VM``,
``Start-VM``, ``Move-VM`` one-liners) from a :class:`~vmmove_hyperv.testing.fabric.Fabric`.

It is not a PowerShell interpreter. It recognises a script by the cmdlets and WMI methods
it names, reads its parameters from the single-quoted ``$p_name = '...'`` lines at its top
(or a cmdlet's ``-Name``/``-DestinationHost`` arguments) and its ``-Depth``, and prints
what the real cmdlet piped to ``ConvertTo-Json`` would, in the shape of the PowerShell
release chosen (:class:`Shape`): enums as numbers or names, one object unwrapped or in a
list, arrays in 5.1's ``{"value": [...], "Count": n}`` envelope, objects past ``-Depth``
replaced by their type name. A script it does not recognise fails as PowerShell would, with
an error record.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from vmmove_hyperv.testing import fabric as fab
from vmmove_hyperv.testing.fabric import Fabric
from vmmove_hyperv.testing.shell import Output

__all__ = ["SHAPES", "HyperVShell", "Shape"]

_VM_STATE_NAMES = {2: "Running", 3: "Off", 4: "Stopping", 6: "Saved", 9: "Paused", 10: "Starting"}
_PERFORMANCE_NAMES = {0: "TCPIP", 1: "Compression", 2: "SMB"}
_AUTH_NAMES = {0: "CredSSP", 1: "Kerberos"}


@dataclass(frozen=True)
class Shape:
    """How the emulated PowerShell prints ConvertTo-Json output."""

    release: str = "5.1"
    enums_as_names: bool = False  # -EnumsAsStrings (7 only)
    wrap_single: bool = False  # -AsArray (7 only): one object still printed as a list
    array_envelope: bool = True  # 5.1: @() arrays inside objects as {"value", "Count"}


SHAPES = {
    "5.1": Shape(),
    "7": Shape(release="7", enums_as_names=True, wrap_single=True, array_envelope=False),
}

_PARAM = re.compile(r"^\$p_(\w+) = '((?:[^']|'')*)'$", re.M)
_DEPTH = re.compile(r"-Depth (\d+)")


class HyperVShell:
    """``run(host, script)`` on the fabric's host ``host`` (its name)."""

    def __init__(self, fabric: Fabric, shape: Shape | str = "5.1") -> None:
        self.fabric = fabric
        self.shape = SHAPES[shape] if isinstance(shape, str) else shape

    # ---- the seam -------------------------------------------------------------------
    def run(self, host: str, script: str) -> Output:
        operation = _operation(script)
        with self.fabric.lock:
            self.fabric.calls.append((host, operation))
        hang = self.fabric.hung(host, operation)
        if hang is not None:
            hang.wait()  # a command that hangs: the endpoint long-polls meanwhile
        if self.fabric.host(host) is None:
            return _error(f"The Hyper-V host {host} is not part of this fabric.")
        params = {k: v.replace("''", "'") for k, v in _PARAM.findall(script)}
        depths = [int(d) for d in _DEPTH.findall(script)]
        depth = depths[-1] if depths else 2
        handler = getattr(self, f"_op_{operation.replace('-', '_').lower()}", None)
        if handler is None:
            first = script.strip().splitlines()[-1][:40] if script.strip() else ""
            return _error(
                f"The term '{first}' is not recognized as the name of a cmdlet, function, "
                "script file, or operable program."
            )
        try:
            out: Output = handler(self.fabric.host(host).name, params, script, depth)  # type: ignore[union-attr]
        except KeyError as exc:
            return _error(f"Hyper-V was unable to find a virtual machine {exc}.")
        return out

    # ---- printing -------------------------------------------------------------------
    def _print(self, value: Any, depth: int, *, single: bool = True) -> Output:
        if isinstance(value, list) and not value:
            return Output()
        if isinstance(value, list) and len(value) == 1 and single and not self.shape.wrap_single:
            value = value[0]
        return Output(stdout=json.dumps(_limit(value, depth, 0)) + "\r\n")

    def _enum(self, value: int, names: dict[int, str]) -> int | str:
        return names.get(value, value) if self.shape.enums_as_names else value

    def _array(self, items: list[Any]) -> Any:
        return {"value": items, "Count": len(items)} if self.shape.array_envelope else items

    # ---- operations -----------------------------------------------------------------
    def _op_get_vmhost(self, host: str, p: dict[str, str], s: str, depth: int) -> Output:
        f = self.fabric
        with f.lock:
            h = f.hosts[host]
            active = [j for j in f.visible_jobs(host) if j.state in (2, 3, 4)]
            obj = {
                "Name": h.name,
                "FullyQualifiedDomainName": h.fqdn,
                "LogicalProcessorCount": h.cpus,
                "MemoryCapacity": h.memory,
                "VirtualMachineMigrationEnabled": h.migration_enabled,
                "MaximumVirtualMachineMigrations": h.max_migrations,
                "VirtualMachineMigrationPerformanceOption": self._enum(
                    h.performance, _PERFORMANCE_NAMES
                ),
                "VirtualMachineMigrationAuthenticationType": self._enum(
                    h.authentication, _AUTH_NAMES
                ),
                "ProcessorModel": h.processor,
                "ActiveMigrations": len(active),
            }
        return self._print([obj], depth)

    def _op_get_vm(self, host: str, p: dict[str, str], s: str, depth: int) -> Output:
        f = self.fabric
        with f.lock:
            f.tick()
            found = [v for v in f if v.host == host and (not p.get("vm") or v.id == p["vm"])]
            objs = [self._vm(v) for v in found]
        return self._print(objs, depth)

    def _vm(self, v: fab.FakeVM) -> dict[str, Any]:
        running = v.state in (fab.VM_RUNNING, fab.VM_STOPPING)
        return {
            "Id": v.id,
            "Name": v.name,
            "State": self._enum(v.state, _VM_STATE_NAMES),
            "MemoryAssigned": v.memory if running else 0,
            "MemoryStartup": v.memory,
            "DynamicMemoryEnabled": v.dynamic_memory,
            "ProcessorCount": v.cpus,
            "Path": f"C:\\ProgramData\\Microsoft\\Windows\\Hyper-V\\{v.name}",
            "Notes": v.notes,
            "CompatibilityForMigrationEnabled": v.compatibility,
            "HardDrives": [{"Path": d} for d in v.disks],
        }

    def _op_compare_vm(self, host: str, p: dict[str, str], s: str, depth: int) -> Output:
        f = self.fabric
        with f.lock:
            vm = f.vms[p["vm"]]
            dest = f.host(p["dest"])
            if dest is None:
                return _error(f"Cannot connect to the host '{p['dest']}'.")
            found: list[dict[str, Any]] = []
            if not vm.compatibility and dest.processor != f.hosts[host].processor:
                found.append({
                    "Message": f"The virtual machine '{vm.name}' is using processor-specific "
                    f"features not supported on physical computer '{dest.name}'.",
                    "MessageId": 24004,
                })  # fmt: skip
            if vm.host != host:
                return _error(f"Hyper-V was unable to find a virtual machine with id {vm.id}.")
            found += [
                {"Message": message, "MessageId": message_id}
                for (h, vm_id, message, message_id) in f.incompatibilities
                if h == dest.name and vm_id == vm.id
            ]
        return self._print(found, depth)

    def _op_migrate(self, host: str, p: dict[str, str], s: str, depth: int) -> Output:
        f = self.fabric
        with f.lock:
            vm = f.vms.get(p["vm"])
            if vm is None or vm.host != host:
                return _error(f"Hyper-V was unable to find a virtual machine with id {p['vm']}.")
            kept = [
                line
                for line in vm.notes.splitlines()
                if line and not line.startswith("[vmmove-request:")
            ]
            vm.notes = "\r\n".join([*kept, f"[vmmove-request:{p['request']}]"])
            if "Set-SmbBandwidthLimit" in s:
                limit = re.search(r"-BytesPerSecond (\d+)", s)
                f.hosts[host].smb_bandwidth_limit = int(limit.group(1)) if limit else None
            code, job, _why = f.migrate(host, vm.id, p["dest"])
        result = {"ReturnValue": code, "Job": job.id if job else ""}
        return self._print([result], depth)

    def _op_jobs(self, host: str, p: dict[str, str], s: str, depth: int) -> Output:
        ids = set(p["jobs"].split(","))
        with self.fabric.lock:
            objs = [_job(j) for j in self.fabric.visible_jobs(host) if j.id in ids]
        return self._print(objs, depth)

    def _op_find(self, host: str, p: dict[str, str], s: str, depth: int) -> Output:
        f = self.fabric
        with f.lock:
            f.tick()
            vm = f.vms.get(p["vm"])
            has = vm is not None and vm.host == host
            mark = f"[vmmove-request:{p['request']}]"
            jobs = [_job(j) for j in f.visible_jobs(host) if j.vm == p["vm"]]
            obj = {
                "HasVM": has,
                "Marked": bool(has and vm is not None and mark in vm.notes),
                "Jobs": self._array(jobs),
            }
        return self._print([obj], depth)

    def _op_cancel(self, host: str, p: dict[str, str], s: str, depth: int) -> Output:
        f = self.fabric
        with f.lock:
            visible = {j.id for j in f.visible_jobs(host)}
            found = p["job"] in visible
            code = f.cancel(p["job"]) if found else -1
        return self._print([{"Found": found, "ReturnValue": code}], depth)

    def _op_power(self, host: str, p: dict[str, str], s: str, depth: int) -> Output:
        f = self.fabric
        with f.lock:
            vm = f.vms.get(p["vm"])
            if vm is None or vm.host != host:
                return _error(f"Hyper-V was unable to find a virtual machine with id {p['vm']}.")
            code = f.power(vm.id, p["action"])
        return self._print([{"ReturnValue": code}], depth)

    # Plain cmdlets, for people who drive the fake by hand (they block as the real ones do).
    def _op_stop_vm(self, host: str, p: dict[str, str], s: str, depth: int) -> Output:
        vm = self._named(host, s)
        turn_off = "-TurnOff" in s
        code = self.fabric.power(vm.id, "off" if turn_off else "shutdown")
        if code not in (fab.OK, fab.JOB_STARTED):
            return _error(f"Stop-VM : The virtual machine '{vm.name}' is not running.")
        self.fabric.wait_until(lambda: vm.state == fab.VM_OFF, 60.0)
        return Output()

    def _op_start_vm(self, host: str, p: dict[str, str], s: str, depth: int) -> Output:
        vm = self._named(host, s)
        if self.fabric.power(vm.id, "on") != fab.JOB_STARTED:
            return _error(f"Start-VM : '{vm.name}' failed to start.")
        self.fabric.wait_until(lambda: vm.state == fab.VM_RUNNING, 60.0)
        return Output()

    def _op_move_vm(self, host: str, p: dict[str, str], s: str, depth: int) -> Output:
        vm = self._named(host, s)
        dest = re.search(r"-DestinationHost\s+'?([\w.-]+)'?", s)
        _, job, why = self.fabric.migrate(host, vm.id, dest.group(1) if dest else "")
        if job is None:
            return _error(f"Move-VM : Virtual machine migration operation failed. {why}")
        self.fabric.wait_until(lambda: job.ended is not None, 600.0)
        if job.state != fab.COMPLETED:
            return _error(f"Move-VM : {job.error_description or 'the migration was cancelled'}")
        return Output()

    def _named(self, host: str, script: str) -> fab.FakeVM:
        match = re.search(r"-Name\s+'?([^'\s]+)'?", script)
        vm = self.fabric.vm(match.group(1) if match else "")
        if vm.host != host:
            raise KeyError(vm.name)
        return vm


def _job(j: fab.FakeJob) -> dict[str, Any]:
    return {
        "InstanceID": j.id,
        "JobState": j.state,
        "PercentComplete": int(j.percent),
        "ErrorCode": j.error_code,
        "ErrorDescription": j.error_description,
        "VirtualSystemName": j.vm,
        "DestinationHost": j.destination,
    }


def _operation(script: str) -> str:
    """What the script does, by the cmdlets and methods it names (most specific first)."""
    for marker, name in (
        ("MigrateVirtualSystemToHost", "migrate"),
        ("Compare-VM", "Compare-VM"),
        ("Get-VMHost", "Get-VMHost"),
        ("HasVM", "find"),
        ("$p_jobs", "jobs"),
        ("$p_action", "power"),
        ("Move-VM", "Move-VM"),
        ("Stop-VM", "Stop-VM"),
        ("Start-VM", "Start-VM"),
        ("Get-VM", "Get-VM"),
    ):
        if marker in script:
            return name
    if "RequestStateChange" in script and "Msvm_MigrationJob" in script:
        return "cancel"
    return "unknown"


def _limit(value: Any, depth: int, level: int) -> Any:
    """ConvertTo-Json -Depth: an object nested deeper than ``depth`` prints as its type."""
    if isinstance(value, dict):
        if level > depth:
            return "System.Collections.Hashtable"
        return {k: _limit(v, depth, level + 1) for k, v in value.items()}
    if isinstance(value, list):
        if level > depth:
            return " ".join("System.Collections.Hashtable" for _ in value) or "System.Object[]"
        return [_limit(v, depth, level) for v in value]
    return value


def _error(message: str) -> Output:
    return Output(errors=[message], exit_code=1)
