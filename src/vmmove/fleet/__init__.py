"""Fleet operations: plans a person can read before they run, and a bounded executor.

A **plan** is data: ordered moves, each with why it moves, why that target, and what it is
predicted to cost; the VMs that cannot move and why; the hosts it empties. Three planners
make them:

- :func:`evacuate` empties a host (for maintenance);
- :func:`rebalance` moves VMs off hosts whose memory use sits above their cluster's mean;
- :func:`consolidate` packs VMs onto as few hosts as it can, so the others can be powered off.

Planners only read the inventory; nothing moves until :func:`execute` runs the plan. The
**executor** honours limits per source host, per target host and per cluster; never lets
a host's memory (VMs plus reservations of moves in flight) exceed its capacity; starts the
longest predicted moves first; and schedules with the source link in mind: migrations from
one host share its link, so a guest that writes memory fast runs alone at full bandwidth
(the next move starts as it nears its end, so the link never idles), while light guests
run together. A failed move is retried on another host; the report says where every VM
ended and why any stayed.

Only the public :class:`~vmmove.Connection` API is used: ``migrate``, ``hosts``, ``vms``,
``host`` and the :class:`~vmmove.Migration` handles. On a virtual clock the executor drives
simulated time by waiting, one poll interval at a time.

The package: :mod:`~vmmove.fleet.plan` (the plan model), :mod:`~vmmove.fleet.planners`
(with the helpers they share in :mod:`~vmmove.fleet.planning`), :mod:`~vmmove.fleet.executor`
(with each move's task in :mod:`~vmmove.fleet.tasks`) and :mod:`~vmmove.fleet.report`
(limits, outcomes, events).
"""

from __future__ import annotations

from vmmove.fleet.executor import Executor, execute
from vmmove.fleet.plan import Move, Plan, Stay, overcommits
from vmmove.fleet.planners import (
    consolidate,
    evacuate,
    moves,
    plan_consolidate,
    plan_evacuate,
    plan_moves,
    plan_rebalance,
    rebalance,
)
from vmmove.fleet.report import Attempt, FleetEvent, Limits, Outcome, Report
from vmmove.prediction import downtime_schedule

__all__ = [
    "Attempt",
    "Executor",
    "FleetEvent",
    "Limits",
    "Move",
    "Outcome",
    "Plan",
    "Report",
    "Stay",
    "consolidate",
    "downtime_schedule",
    "evacuate",
    "execute",
    "moves",
    "overcommits",
    "plan_consolidate",
    "plan_evacuate",
    "plan_moves",
    "plan_rebalance",
    "rebalance",
]
