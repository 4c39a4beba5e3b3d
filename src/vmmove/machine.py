"""The one migration state machine every backend shares.

Phases follow how live migration really works::

    pending -> preparing -> requesting -> transferring -> switching_over -> completing -> completed
       |           |             |             |   ^            |   |
       |           |             |             |   '- (cold     |   '-> postcopy -> completing
       |           |             |             |    fallback:   |           |
       v           v             v             v    requesting) v           v
    cancelled   failed/      failed/       failed/           failed      failed (PostcopyFailed:
                cancelled    cancelled     cancelled        (VM on        the VM may be lost)
                                                             source)

Cold migration walks the same phases: *transferring* moves the stopped VM's definition
(and disks), *switching_over* starts it on the target.

The table is checked when this module loads: every phase is reachable from ``PENDING``,
every non-terminal phase can reach a terminal one, and terminal phases have no exits.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from vmmove.errors import BackendProtocolError

__all__ = ["TRANSITIONS", "Phase", "Side", "check_transition"]


class Phase(enum.StrEnum):
    """Where a migration stands. The value is the stable name used in records and JSON."""

    PENDING = "pending"
    PREPARING = "preparing"
    REQUESTING = "requesting"
    TRANSFERRING = "transferring"
    SWITCHING_OVER = "switching_over"
    POSTCOPY = "postcopy"
    COMPLETING = "completing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def committed(self) -> bool:
        """True once the destination is primary: from here on the migration only goes forward."""
        return self in _COMMITTED

    @property
    def cancellable(self) -> bool:
        """True while a cancel still leaves the VM untouched on its source."""
        return Phase.CANCELLED in TRANSITIONS[self]

    @property
    def primary(self) -> Side:
        """Which side runs the VM while the migration is in this phase.

        ``FAILED`` and ``CANCELLED`` say nothing on their own (a failure may come before or
        after the commit point), so the record's ``vm_host`` is the truth there.
        """
        if self in _COMMITTED:
            return Side.TARGET
        if self is Phase.SWITCHING_OVER:
            return Side.IN_TRANSIT
        if self in (Phase.FAILED, Phase.CANCELLED):
            return Side.RECORDED
        return Side.SOURCE


class Side(enum.StrEnum):
    SOURCE = "source"
    IN_TRANSIT = "in_transit"  # paused for switchover: the source still holds the VM until commit
    TARGET = "target"
    RECORDED = "recorded"  # terminal: read MigrationRecord.vm_host


_TERMINAL = frozenset({Phase.COMPLETED, Phase.FAILED, Phase.CANCELLED})
_COMMITTED = frozenset({Phase.POSTCOPY, Phase.COMPLETING, Phase.COMPLETED})

P = Phase
TRANSITIONS: Mapping[Phase, frozenset[Phase]] = {
    P.PENDING: frozenset({P.PREPARING, P.CANCELLED, P.FAILED}),
    P.PREPARING: frozenset({P.REQUESTING, P.FAILED, P.CANCELLED}),
    P.REQUESTING: frozenset({P.TRANSFERRING, P.FAILED, P.CANCELLED}),
    # REQUESTING again when the policy falls back to cold migration after aborting the live one.
    P.TRANSFERRING: frozenset({P.SWITCHING_OVER, P.REQUESTING, P.FAILED, P.CANCELLED}),
    # The commit point lies inside switchover: failing here means the source resumed.
    P.SWITCHING_OVER: frozenset({P.POSTCOPY, P.COMPLETING, P.FAILED}),
    P.POSTCOPY: frozenset({P.COMPLETING, P.FAILED}),
    # After the commit the migration is done: cleanup trouble is a warning, never a rollback.
    P.COMPLETING: frozenset({P.COMPLETED}),
    P.COMPLETED: frozenset(),
    P.FAILED: frozenset(),
    P.CANCELLED: frozenset(),
}
del P


def check_transition(current: Phase, new: Phase) -> None:
    """Raise :class:`BackendProtocolError` unless ``current -> new`` is in the table."""
    if new not in TRANSITIONS[current]:
        raise BackendProtocolError(f"illegal transition {current} -> {new}")


def _validate(table: Mapping[Phase, frozenset[Phase]]) -> None:
    if set(table) != set(Phase):
        raise AssertionError("transition table must list every phase")
    for phase in Phase:
        if phase.terminal and table[phase]:
            raise AssertionError(f"terminal phase {phase} has exits")
    reached: set[Phase] = set()
    frontier = [Phase.PENDING]
    while frontier:
        phase = frontier.pop()
        if phase not in reached:
            reached.add(phase)
            frontier.extend(table[phase])
    if unreachable := set(Phase) - reached:
        raise AssertionError(f"unreachable phases: {sorted(unreachable)}")
    for phase in Phase:
        seen: set[Phase] = set()
        stack = [phase]
        while stack:
            p = stack.pop()
            if p not in seen:
                seen.add(p)
                stack.extend(table[p])
        if not any(p.terminal for p in seen):
            raise AssertionError(f"phase {phase} can never end")
    for phase in _COMMITTED - {Phase.COMPLETED}:
        if Phase.CANCELLED in table[phase]:
            raise AssertionError(f"{phase} is past the commit point but can be cancelled")


_validate(TRANSITIONS)
