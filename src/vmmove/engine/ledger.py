"""The in-flight ledger of a connection: slots, claims, and which run owns each VM."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmmove.backend import Backend
from vmmove.model import VMInfo
from vmmove.placement import PlacementContext, groups_of

if TYPE_CHECKING:
    from vmmove.engine.run import MigrationRun


class Ledger:
    """What the migrations of one connection hold: concurrency slots, memory claimed on
    target hosts, migrations per host, and which run owns each VM. Kept incrementally so
    placement stays O(hosts); every method is called with the supervisor lock held."""

    def __init__(self, backend: Backend, max_concurrent: int | None) -> None:
        self.backend = backend
        self.max_concurrent = max_concurrent
        self.by_vm: dict[str, MigrationRun] = {}
        self.active = 0
        self.reserved: dict[str, int] = {}
        self.inflight: dict[str, int] = {}

    def take_slot(self, run: MigrationRun) -> bool:
        if self.max_concurrent is not None and self.active >= self.max_concurrent:
            return False
        self.active += 1
        run.holds_slot = True
        return True

    def settle(self, run: MigrationRun) -> None:
        self.unclaim(run)
        if self.by_vm.get(run.vm.id) is run:
            del self.by_vm[run.vm.id]
        if run.holds_slot:
            run.holds_slot = False
            self.active -= 1

    def placement_context(
        self,
        exclude: MigrationRun | None = None,
        source_cluster: str = "",
        vm: VMInfo | None = None,
    ) -> PlacementContext:
        """What moves in flight hold (memory reserved on targets, migrations per host) and,
        for a VM in affinity groups, where the rest of its groups run."""
        reserved = dict(self.reserved)
        inflight = dict(self.inflight)
        if exclude is not None and exclude.claimed:
            self._count(exclude, -1, reserved, inflight)
        groups: dict[str, dict[str, int]] = {}
        wanted = {g for gs in groups_of(vm) for g in gs} if vm is not None else set()
        if wanted:  # listing every VM costs O(VMs): only for VMs that ask for it
            for other in self.backend.vms():
                for group in {g for gs in groups_of(other) for g in gs} & wanted:
                    per_host = groups.setdefault(group, {})
                    per_host[other.host] = per_host.get(other.host, 0) + 1
            for run in self.by_vm.values():  # moves in flight count where they are going
                if run is not exclude and run.target is not None and run.claimed:
                    for group in {g for gs in groups_of(run.vm) for g in gs} & wanted:
                        per_host = groups.setdefault(group, {})
                        per_host[run.target.id] = per_host.get(run.target.id, 0) + 1
        return PlacementContext(
            reserved_memory=reserved,
            inflight=inflight,
            source_cluster=source_cluster,
            groups=groups,
        )

    @staticmethod
    def _count(
        run: MigrationRun, sign: int, reserved: dict[str, int], inflight: dict[str, int]
    ) -> None:
        assert run.target is not None
        target, source = run.target.id, run.vm.host
        reserved[target] = reserved.get(target, 0) + sign * run.memory_claim
        inflight[target] = inflight.get(target, 0) + sign
        inflight[source] = inflight.get(source, 0) + sign

    def claim(self, run: MigrationRun) -> None:
        """Count a run that chose its target; kept incrementally so placement stays O(hosts)."""
        if not run.claimed:
            run.memory_claim = run.vm.memory
            self._count(run, +1, self.reserved, self.inflight)
            run.claimed = True

    def reserved_by_backend(self, run: MigrationRun) -> None:
        """The backend holds the memory now and reports it in ``HostInfo.allocated``:
        stop counting it here too, or a filling host looks fuller than it is."""
        if run.claimed and run.memory_claim and run.target is not None:
            self.reserved[run.target.id] -= run.memory_claim
            run.memory_claim = 0

    def unclaim(self, run: MigrationRun) -> None:
        if run.claimed:
            self._count(run, -1, self.reserved, self.inflight)
            run.claimed = False
