"""Every pre-check, the engine's and the backend's; chooses the target when none was named."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from vmmove.errors import PrecheckFailed
from vmmove.model import (
    HostInfo,
    MigrationMode,
    MigrationSpec,
    PowerState,
    Problem,
    Problems,
    VMInfo,
)
from vmmove.placement import choose, explain
from vmmove.policy import Policy

if TYPE_CHECKING:
    from vmmove.engine.connection import Connection
    from vmmove.engine.run import MigrationRun


class Checked(NamedTuple):
    """What the pre-checks found: the mode to run, the target (``None``: no host can take
    the VM) and the problems; ``source`` is the VM's host as read for them."""

    mode: MigrationMode
    target: HostInfo | None
    problems: list[Problem]
    source: HostInfo


def precheck(
    conn: Connection,
    vm: VMInfo,
    spec: MigrationSpec,
    policy: Policy,
    exclude: MigrationRun | None = None,
) -> Checked:
    """Every pre-check, the engine's and the backend's; chooses the target if needed."""
    backend = conn.backend
    caps = backend.capabilities
    problems = Problems()
    refuse = problems.add

    mode = spec.mode
    if mode is MigrationMode.AUTO:
        mode = MigrationMode.LIVE if vm.power is PowerState.RUNNING else MigrationMode.COLD
    if mode is MigrationMode.LIVE:
        if vm.power is not PowerState.RUNNING:
            refuse("not-running", f"live migration needs a running VM; {vm.name} is {vm.power}")
        elif not vm.live_migratable:
            why = vm.not_migratable_reason or "the platform says so"
            refuse("not-migratable", f"{vm.name} cannot migrate live: {why}")
        if not caps.live:
            refuse("unsupported", "this backend cannot migrate live")
    elif not caps.cold:
        refuse("unsupported", "this backend cannot migrate cold")
    for name in ("bandwidth", "max_downtime", "max_slowdown"):
        if getattr(spec, name) is not None and not caps.has(name):
            refuse("unsupported", f"{name} is not supported by this backend; ignored", "warning")
    target: HostInfo | None = None
    source = backend.host(vm.host)
    cluster = source.cluster
    ctx = conn.ledger.placement_context(exclude, cluster, vm)
    placement = conn.plugins.placement
    if spec.target is not None:
        target = backend.host(spec.target)
        if not caps.choose_target:
            refuse("unsupported", "this backend lets the platform choose the target host")
        if spec.datastore is not None and not caps.storage_move:
            refuse("unsupported", "this backend cannot move storage")
        if target.id == vm.host and spec.datastore is None:
            refuse("same-host", f"{vm.name} already runs on {target.name}")
        elif target.id != vm.host:
            verdict = explain(vm, [target], ctx, placement)[0]
            for reason in verdict.rejected:
                refuse("placement", f"{target.name}: {reason}")
    elif not problems or all(p.severity == "warning" for p in problems):
        try:
            target = choose(vm, backend.hosts(), ctx, placement)
        except PrecheckFailed as exc:
            problems.extend(exc.problems)
    if target is not None and all(p.severity == "warning" for p in problems):
        problems.extend(backend.check(vm, target, spec, mode=mode, policy=policy))
    return Checked(mode, target, problems, source)
