"""What the executor is told and what it tells: :class:`Limits` on moves in flight, and
the :class:`Report` of a run (an :class:`Outcome` per VM, an :class:`Attempt` per migration
started), plus the :class:`FleetEvent` an observer receives while it runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from vmmove.errors import InvalidInput
from vmmove.fleet.plan import Plan, Stay
from vmmove.machine import Phase

if TYPE_CHECKING:
    from vmmove.engine import Migration


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Moves in flight at once. ``None``: no limit.

    Defaults follow KubeVirt and VDSM: 2 out of each host, 2 into each, 5 per cluster.
    """

    per_source: int | None = 2
    per_target: int | None = 2
    per_cluster: int | None = 5
    total: int | None = None

    def __post_init__(self) -> None:
        for name in ("per_source", "per_target", "per_cluster", "total"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise InvalidInput(f"limit {name} must be at least 1, not {value!r}")


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """One migration the executor started for a move."""

    migration: str  # record id ("" if migrate() refused at once)
    target: str
    started_at: float  # the record's created_at (clock.time())
    ended_at: float  # its terminal transition
    phase: Phase
    vm_host: str | None
    error: str | None = None
    error_type: str | None = None
    alone: bool = False  # ran with its source link to itself

    def to_dict(self) -> dict[str, Any]:
        return {
            "migration": self.migration,
            "target": self.target,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "phase": self.phase.value,
            "vm_host": self.vm_host,
            "error": self.error,
            "error_type": self.error_type,
            "alone": self.alone,
        }


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """Where a VM ended and why."""

    vm: str
    vm_name: str
    source: str
    host: str | None  # where it runs now; None: no host runs it (failed in post-copy)
    status: Literal["moved", "stayed", "lost"]
    reason: str = ""
    memory: int = 0
    attempts: tuple[Attempt, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "vm_name": self.vm_name,
            "source": self.source,
            "host": self.host,
            "status": self.status,
            "reason": self.reason,
            "memory": self.memory,
            "attempts": [a.to_dict() for a in self.attempts],
        }


@dataclass(frozen=True, kw_only=True)
class Report:
    """What a run of a plan did."""

    plan: Plan
    limits: Limits
    outcomes: tuple[Outcome, ...]
    started_at: float
    ended_at: float
    left_behind: tuple[Stay, ...] = ()  # for an evacuation: VMs still on the host at the end

    @property
    def makespan(self) -> float:
        return self.ended_at - self.started_at

    @property
    def moved(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "moved"]

    @property
    def stayed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != "moved"]

    @property
    def aborted(self) -> int:
        """Attempts that ran and failed or were cancelled (refusals at start excluded)."""
        return sum(
            1
            for o in self.outcomes
            for a in o.attempts
            if a.phase is not Phase.COMPLETED and a.migration and a.error_type != "PrecheckFailed"
        )

    @property
    def ok(self) -> bool:
        return all(o.status == "moved" for o in self.outcomes) and not self.left_behind

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.plan.kind,
            "scope": self.plan.scope,
            "ok": self.ok,
            "makespan": self.makespan,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "limits": {
                "per_source": self.limits.per_source,
                "per_target": self.limits.per_target,
                "per_cluster": self.limits.per_cluster,
                "total": self.limits.total,
            },
            "moved": len(self.moved),
            "stayed": len(self.stayed),
            "outcomes": [o.to_dict() for o in self.outcomes],
            "left_behind": [s.to_dict() for s in self.left_behind],
        }


@dataclass(frozen=True, kw_only=True)
class FleetEvent:
    """What the executor tells its observer: a move started, ended, will be retried, or a
    tick passed (``kind="tick"``: read :attr:`~vmmove.fleet.Executor.running` for progress)."""

    kind: Literal["start", "end", "retry", "skip", "tick"]
    vm_name: str = ""
    source: str = ""
    target: str = ""
    attempt: int = 0
    migration: Migration | None = None
    message: str = ""
