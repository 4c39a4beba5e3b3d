"""The plan model: a plan is data a person reads before anything moves.

:class:`Move` (one planned migration, why, where, predicted cost), :class:`Stay` (a VM
that cannot move, and why), :class:`Plan` (ordered moves, stays, hosts emptied, figures
before and after); :func:`overcommits` replays a plan against host capacity. Each move's
cost comes from :mod:`vmmove.prediction`, the one migration cost model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from vmmove.model import HostInfo, MigrationMode
from vmmove.prediction import Cost


@dataclass(frozen=True, kw_only=True)
class Move:
    """One planned migration."""

    vm: str  # VM id
    vm_name: str
    source: str  # host id
    target: str  # host id
    memory: int
    vcpus: int
    mode: MigrationMode  # what AUTO will do: live for a running VM, cold otherwise
    reason: str  # why the VM moves
    placement: str  # why this target
    cost: Cost  # predicted alone on the source's link
    dirty_rate: float = 0.0  # bytes/s the guest writes, as the platform reported it
    source_name: str = ""
    target_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "vm_name": self.vm_name,
            "source": self.source,
            "source_name": self.source_name or self.source,
            "target": self.target,
            "target_name": self.target_name or self.target,
            "memory": self.memory,
            "dirty_rate": self.dirty_rate,
            "vcpus": self.vcpus,
            "mode": self.mode.value,
            "reason": self.reason,
            "placement": self.placement,
            "predicted": _cost_dict(self.cost),
        }


@dataclass(frozen=True, kw_only=True)
class Stay:
    """A VM the plan wanted to move and cannot, with the reason."""

    vm: str
    vm_name: str
    host: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"vm": self.vm, "vm_name": self.vm_name, "host": self.host, "reason": self.reason}


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Ordered moves (longest predicted first), what stays and why, what ends empty."""

    kind: Literal["evacuate", "rebalance", "consolidate", "moves"]
    scope: str  # the host evacuated, or the cluster(s)
    moves: tuple[Move, ...] = ()
    stays: tuple[Stay, ...] = ()
    frees: tuple[str, ...] = ()  # host ids the plan sets out to empty (once nothing stays)
    headroom: float = 0.0
    policy: str = "balanced"
    before: Mapping[str, float] = field(default_factory=dict)
    after: Mapping[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Every VM the plan set out to move has a move."""
        return not self.stays

    @property
    def data(self) -> int:
        return sum(m.cost.data for m in self.moves)

    @property
    def predicted_seconds(self) -> float:
        """Lower bound on the run: the busiest source link sending its moves back to back."""
        per_source: dict[str, float] = {}
        for m in self.moves:
            if m.cost.converges:
                per_source[m.source] = per_source.get(m.source, 0.0) + m.cost.seconds
        return max(per_source.values(), default=0.0)

    @property
    def diverging(self) -> list[Move]:
        """Moves predicted not to converge by pre-copy alone even with the whole link: they
        rely on the policy's emergency steps (auto-converge, post-copy) or fail."""
        return [m for m in self.moves if not m.cost.converges]

    def to_dict(self) -> dict[str, Any]:
        seconds = self.predicted_seconds
        return {
            "kind": self.kind,
            "scope": self.scope,
            "policy": self.policy,
            "headroom": self.headroom,
            "moves": [m.to_dict() for m in self.moves],
            "stays": [s.to_dict() for s in self.stays],
            "frees": list(self.frees),
            "predicted_data": self.data,
            "predicted_seconds": seconds,
            "diverging": [m.vm for m in self.diverging],
            "before": dict(self.before),
            "after": dict(self.after),
            "notes": list(self.notes),
        }


def _cost_dict(cost: Cost) -> dict[str, Any]:
    return {
        "seconds": cost.seconds if math.isfinite(cost.seconds) else None,
        "data": cost.data,
        "passes": cost.passes,
        "converges": cost.converges,
        "rate": cost.rate,
        "need": cost.need,
    }


def overcommits(plan: Plan, hosts: Iterable[HostInfo]) -> list[tuple[int, str, int, int]]:
    """Replay ``plan`` against ``hosts``; return ``(step, host id, used, limit)`` for every
    step that puts a host's memory over its capacity less the plan's headroom.

    Each move reserves its memory on the target when it starts, and the replay assumes every
    earlier move is still in flight (no source freed yet): the worst moment of any order or
    concurrency the executor may choose.
    """
    used = {h.id: h.allocated.memory for h in hosts}
    limit = {h.id: memory_limit(h, plan.headroom) for h in hosts}
    bad: list[tuple[int, str, int, int]] = []
    for step, m in enumerate(plan.moves):
        used[m.target] = used.get(m.target, 0) + m.memory
        if used[m.target] > limit.get(m.target, 0):
            bad.append((step, m.target, used[m.target], limit.get(m.target, 0)))
    return bad


def memory_limit(host: HostInfo, headroom: float) -> int:
    """Memory a host may hold: what the ``memory`` placement filter allows."""
    return host.capacity.memory - int(host.capacity.memory * headroom)
