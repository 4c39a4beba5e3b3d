"""The PowerShell scripts the backend sends, one per question or request.

Each runs in a fresh ``powershell.exe`` (no state is assumed between calls), stops at the
first error (``$ErrorActionPreference = 'Stop'``: the error arrives as CLIXML on stderr),
and prints one JSON document. Parameters are single-quoted literals at the top of the
script (``$p_vm = '...'``), so no caller's text is ever parsed as PowerShell. Every
``ConvertTo-Json`` is given ``-Depth``: the default (2) truncates silently on 5.1.

Scripts stay short: ``-EncodedCommand`` carries them base64'd UTF-16 on a command line
limited to 8191 characters.
"""

from __future__ import annotations

import re

from vmmove.errors import InvalidInput

__all__ = [
    "DEPTH",
    "JOB_FIELDS",
    "MIGRATION_TYPE_VIRTUAL_SYSTEM",
    "REQUEST_MARK",
    "cancel",
    "compare",
    "find",
    "host",
    "jobs",
    "power",
    "quote",
    "start",
    "vms",
]

NS = "root/virtualization/v2"
#: deep enough for a VM's HardDrives[].Path (VM -> list -> drive -> Path)
DEPTH = 4
#: Msvm_VirtualSystemMigrationSettingData.MigrationType: the VM alone (storage shared)
MIGRATION_TYPE_VIRTUAL_SYSTEM = 32768
#: how a start request's id is carried on the VM (its Notes travel with it)
REQUEST_MARK = "[vmmove-request:{}]"
JOB_FIELDS = (
    "InstanceID, JobState, PercentComplete, ErrorCode, ErrorDescription, "
    "VirtualSystemName, DestinationHost"
)
_PRELUDE = "$ErrorActionPreference = 'Stop'\n$ProgressPreference = 'SilentlyContinue'\n"
_GUIDISH = re.compile(r"^[{]?[0-9A-Za-z][0-9A-Za-z:_.-]{0,99}[}]?$")
# Every character PowerShell takes for a single quote (it accepts the typographic ones).
_QUOTES = "'\u2018\u2019\u201a\u201b"


def quote(value: str) -> str:
    """``value`` as a PowerShell single-quoted literal (quotes doubled)."""
    if any(ord(c) < 32 and c not in "\t" for c in value):
        raise InvalidInput("control characters are not sent to PowerShell")
    return "'" + "".join(c * 2 if c in _QUOTES else c for c in value) + "'"


def ident(value: str, what: str) -> str:
    """A VM id, job id or request id: checked, so it may stand in a WMI filter."""
    if not _GUIDISH.match(value):
        raise InvalidInput(f"{what} {value[:60]!r} is not an id Hyper-V would use")
    return value


def _params(**values: str) -> str:
    return "".join(f"$p_{k} = {quote(v)}\n" for k, v in values.items())


def _json(depth: int = DEPTH) -> str:
    return f"ConvertTo-Json -Depth {depth} -Compress"


def host(*, depth: int = DEPTH) -> str:
    """The host: Get-VMHost, its CPU, and how many migrations it runs now."""
    return (
        _PRELUDE + f"$jobs = @(Get-CimInstance -Namespace {NS} -ClassName Msvm_MigrationJob"
        " | Where-Object { $_.JobState -in 2,3,4 })\n"
        "$cpu = @(Get-CimInstance -ClassName Win32_Processor)[0]\n"
        "Get-VMHost | Select-Object Name, FullyQualifiedDomainName, LogicalProcessorCount,"
        " MemoryCapacity, VirtualMachineMigrationEnabled, MaximumVirtualMachineMigrations,"
        " VirtualMachineMigrationPerformanceOption, VirtualMachineMigrationAuthenticationType,"
        " @{n='ProcessorModel';e={$cpu.Name}}, @{n='ActiveMigrations';e={$jobs.Count}}"
        f" | {_json(depth)}\n"
    )


def vms(*, vm: str = "", depth: int = DEPTH) -> str:
    """Every VM of the host (or the one with id ``vm``)."""
    where = " | Where-Object { $_.Id.ToString() -eq $p_vm }" if vm else ""
    return (
        _PRELUDE
        + (_params(vm=ident(vm, "VM id")) if vm else "")
        + f"Get-VM{where} | Select-Object @{{n='Id';e={{$_.Id.ToString()}}}}, Name, State,"
        " MemoryAssigned, MemoryStartup, DynamicMemoryEnabled, ProcessorCount, Path, Notes,"
        " @{n='CompatibilityForMigrationEnabled';"
        "e={(Get-VMProcessor -VM $_).CompatibilityForMigrationEnabled}},"
        " @{n='HardDrives';e={@($_.HardDrives | ForEach-Object { @{Path = $_.Path} })}}"
        f" | {_json(depth)}\n"
    )


def compare(*, vm: str, destination: str) -> str:
    """Compare-VM against the destination: its incompatibilities, nothing if none."""
    return (
        _PRELUDE
        + _params(vm=ident(vm, "VM id"), dest=destination)
        + "$r = Compare-VM -VM (Get-VM -Id $p_vm) -DestinationHost $p_dest\n"
        "@($r.Incompatibilities) | Select-Object Message, MessageId"
        f" | {_json(2)}\n"
    )


def start(
    *,
    vm: str,
    destination: str,
    request_id: str,
    compression: bool | None,
    smb_bandwidth: int | None,
) -> str:
    """Mark the VM with the request id, then ask the migration service to move it.

    ``MigrateVirtualSystemToHost`` answers at once (4096: a job was started); the job lives
    in WMI, not in this PowerShell process, so it outlives the call."""
    props = f"MigrationType=[uint16]{MIGRATION_TYPE_VIRTUAL_SYSTEM}"
    if compression is not None:
        props += f"; EnableCompression=${'true' if compression else 'false'}"
    smb = (
        f"Set-SmbBandwidthLimit -Category LiveMigration -BytesPerSecond {int(smb_bandwidth)}\n"
        if smb_bandwidth
        else ""
    )
    mark = REQUEST_MARK.format("$p_request")
    return (
        _PRELUDE
        + _params(vm=ident(vm, "VM id"), dest=destination, request=ident(request_id, "request id"))
        + "$vm = Get-VM -Id $p_vm\n"
        '$kept = @(($vm.Notes -split "`r?`n") | Where-Object '
        "{ $_ -and $_ -notlike '[[]vmmove-request:*' })\n"
        f'Set-VM -VM $vm -Notes (($kept + "{mark}") -join "`r`n")\n'
        + smb
        + f"$svc = Get-CimInstance -Namespace {NS} -ClassName Msvm_VirtualSystemMigrationService\n"
        f"$cs = Get-CimInstance -Namespace {NS} -ClassName Msvm_ComputerSystem"
        " -Filter \"Name='$p_vm'\"\n"
        f"$sd = New-CimInstance -Namespace {NS}"
        f" -ClassName Msvm_VirtualSystemMigrationSettingData -ClientOnly -Property @{{{props}}}\n"
        "$mi = 'Microsoft.Management.Infrastructure.Serialization'\n"
        '$ser = ("$mi.CimSerializer" -as [type])::Create()\n'
        '$none = ("$mi.InstanceSerializationOptions" -as [type])::None\n'
        "$text = [Text.Encoding]::Unicode.GetString($ser.Serialize($sd, $none))\n"
        "$r = Invoke-CimMethod -InputObject $svc -MethodName MigrateVirtualSystemToHost"
        " -Arguments @{ComputerSystem=$cs; DestinationHost=$p_dest; MigrationSettingData=$text}\n"
        "$job = if ($r.Job) { $r.Job.InstanceID } else { '' }\n"
        "[pscustomobject]@{ReturnValue=[int]$r.ReturnValue; Job=$job}"
        f" | {_json(2)}\n"
    )


def jobs(job_ids: list[str]) -> str:
    """The migration jobs with these ids that the host's WMI still has."""
    ids = ",".join(ident(j, "job id") for j in job_ids)
    return (
        _PRELUDE + _params(jobs=ids) + "$ids = $p_jobs -split ','\n"
        f"@(Get-CimInstance -Namespace {NS} -ClassName Msvm_MigrationJob"
        " | Where-Object { $ids -contains $_.InstanceID })"
        f" | Select-Object {JOB_FIELDS} | {_json(2)}\n"
    )


def find(*, vm: str, request_id: str) -> str:
    """Whether the host has the VM, whether the VM carries the request's mark, and its
    migration jobs: what ``attach`` needs to find a job whose start answer was lost."""
    mark = REQUEST_MARK.format("$p_request").replace("[", "[[]", 1)
    return (
        _PRELUDE
        + _params(vm=ident(vm, "VM id"), request=ident(request_id, "request id"))
        + "$vm = Get-VM | Where-Object { $_.Id.ToString() -eq $p_vm }\n"
        f"$jobs = @(Get-CimInstance -Namespace {NS} -ClassName Msvm_MigrationJob"
        f" | Where-Object {{ $_.VirtualSystemName -eq $p_vm }} | Select-Object {JOB_FIELDS})\n"
        "[pscustomobject]@{HasVM=[bool]$vm;"
        f' Marked=[bool]($vm -and ($vm.Notes -like "*{mark}*")); Jobs=$jobs}}'
        f" | {_json(3)}\n"
    )


def cancel(job_id: str) -> str:
    """RequestStateChange(4) on the migration job: terminate it (before its switch-over)."""
    return (
        _PRELUDE
        + _params(job=ident(job_id, "job id"))
        + f"$job = Get-CimInstance -Namespace {NS} -ClassName Msvm_MigrationJob"
        " | Where-Object { $_.InstanceID -eq $p_job }\n"
        "if ($job) { $r = Invoke-CimMethod -InputObject $job -MethodName RequestStateChange"
        " -Arguments @{RequestedState=[uint16]4}; $rv = [int]$r.ReturnValue }"
        " else { $rv = -1 }\n"
        f"[pscustomobject]@{{Found=[bool]$job; ReturnValue=$rv}} | {_json(2)}\n"
    )


def power(*, vm: str, action: str) -> str:
    """``shutdown`` (the guest's own, through its shutdown integration service), ``off``
    (RequestStateChange 3) or ``on`` (RequestStateChange 2): each answers at once, unlike
    Stop-VM/Start-VM, which wait for the VM."""
    body = {
        "shutdown": "$sc = Get-CimAssociatedInstance -InputObject $cs"
        " -ResultClassName Msvm_ShutdownComponent\n"
        "$r = Invoke-CimMethod -InputObject $sc -MethodName InitiateShutdown"
        " -Arguments @{Force=$true; Reason='vmmove: cold migration'}\n",
        "off": "$r = Invoke-CimMethod -InputObject $cs -MethodName RequestStateChange"
        " -Arguments @{RequestedState=[uint16]3}\n",
        "on": "$r = Invoke-CimMethod -InputObject $cs -MethodName RequestStateChange"
        " -Arguments @{RequestedState=[uint16]2}\n",
    }[action]
    return (
        _PRELUDE
        + _params(vm=ident(vm, "VM id"), action=action)
        + f"$cs = Get-CimInstance -Namespace {NS} -ClassName Msvm_ComputerSystem"
        " -Filter \"Name='$p_vm'\"\n"
        + body
        + f"[pscustomobject]@{{ReturnValue=[int]$r.ReturnValue}} | {_json(2)}\n"
    )
