"""Each move's task while the executor runs it: its attempts, the hosts it tried, how many
moves may share its source link, and the arithmetic that says when it will be done."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from vmmove.fleet.plan import Move
from vmmove.fleet.report import Attempt
from vmmove.machine import Phase

if TYPE_CHECKING:
    from vmmove.engine import Migration

CONSUMING = frozenset(
    {Phase.PENDING, Phase.PREPARING, Phase.REQUESTING, Phase.TRANSFERRING, Phase.POSTCOPY}
)


class Task:
    __slots__ = (
        "alone",
        "attempts",
        "k",
        "migration",
        "move",
        "priority",
        "robust",
        "target",
        "tried",
        "working_set",
    )

    def __init__(self, move: Move) -> None:
        self.move = move
        self.target = move.target
        self.attempts: list[Attempt] = []
        self.tried: set[str] = set()
        self.migration: Migration | None = None
        self.k = 1  # how many moves may share the source link with this one
        self.alone = False
        self.priority = move.cost.seconds
        self.working_set = move.memory
        self.robust = False  # still converges if a move overlaps it for a while


def time_left(remaining: float, rate: float, dirty: float, downtime: float) -> float:
    """Seconds of pre-copy left: the backlog falls at ``rate - dirty`` until the rest fits
    in the pause; a guest dirtying as fast as it is sent does not end by itself."""
    if remaining <= rate * downtime:
        return 0.0
    if dirty >= rate:
        return math.inf
    return (remaining - rate * downtime) / (rate - dirty)


def busy(task: Task) -> bool:
    m = task.migration
    return m is not None and m.record.phase in CONSUMING
