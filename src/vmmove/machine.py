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

This module is the only authority on phases: the engine writes every phase, the failure
paths included, through :func:`check_transition`, and fills in phases it did not observe
with :func:`route`. Two kinds of edge are special and listed as data below:

- :data:`ENGINE_ONLY` edges are never inferred from a backend's report (the step back to
  *requesting* is the engine's own decision to fall back to cold migration);
- :data:`ON_EVIDENCE` edges are legal only when the platform's inventory, read
  independently of the job, contradicts what the job said: a job that reported its commit
  (*completing*) while the VM still runs on its source failed, whatever the job claims.

The table is checked when this module loads: every phase is reachable from ``PENDING``,
every non-terminal phase can reach a terminal one, and terminal phases have no exits.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from vmmove.errors import BackendProtocolError

__all__ = [
    "ENGINE_ONLY",
    "INFERRED",
    "ON_EVIDENCE",
    "PHASE_ORDER",
    "TRANSITIONS",
    "Phase",
    "Side",
    "check_transition",
    "route",
]


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
    # FAILED only on evidence: the inventory shows the commit the job reported never happened.
    P.COMPLETING: frozenset({P.COMPLETED, P.FAILED}),
    P.COMPLETED: frozenset(),
    P.FAILED: frozenset(),
    P.CANCELLED: frozenset(),
}
#: Edges the engine takes on its own decision, never to fill in an unobserved phase.
ENGINE_ONLY: frozenset[tuple[Phase, Phase]] = frozenset({(P.TRANSFERRING, P.REQUESTING)})
#: Edges legal only when the platform's inventory contradicts the job's own report.
ON_EVIDENCE: Mapping[tuple[Phase, Phase], str] = {
    (P.COMPLETING, P.FAILED): "the platform's inventory shows the VM did not move",
}
#: The note on a phase the engine filled in because the backend skipped over it.
INFERRED = "inferred: not observed"
#: Forward order of the non-terminal phases, for telling a report that goes backwards.
PHASE_ORDER: Mapping[Phase, int] = {
    phase: rank
    for rank, phase in enumerate(
        (
            P.PENDING,
            P.PREPARING,
            P.REQUESTING,
            P.TRANSFERRING,
            P.SWITCHING_OVER,
            P.POSTCOPY,
            P.COMPLETING,
        )
    )
}
del P


def check_transition(current: Phase, new: Phase, *, evidence: bool = False) -> None:
    """Raise :class:`BackendProtocolError` unless ``current -> new`` is in the table
    (and, for an :data:`ON_EVIDENCE` edge, the inventory contradicted the job)."""
    if new not in TRANSITIONS[current]:
        raise BackendProtocolError(f"illegal transition {current} -> {new}")
    if (current, new) in ON_EVIDENCE and not evidence:
        raise BackendProtocolError(
            f"{current} -> {new} is taken only when the inventory contradicts the job"
        )


def route(current: Phase, new: Phase, *, via_postcopy: bool = False) -> list[Phase] | None:
    """The phases to write to get from ``current`` to ``new`` (``new`` last), or ``None``.

    A backend may skip phases it could not observe (a fast job polled slowly): this is the
    shortest forward path of legal edges, never through a terminal phase, an
    :data:`ENGINE_ONLY` or an :data:`ON_EVIDENCE` edge. ``via_postcopy`` goes through
    *postcopy* when the job said it passed there.
    """
    if via_postcopy and new in (Phase.COMPLETING, Phase.COMPLETED) and current != new:
        first = _shortest(current, Phase.POSTCOPY)
        rest = _shortest(Phase.POSTCOPY, new)
        if first is not None and rest is not None:
            return first + rest
    return _shortest(current, new)


def _shortest(current: Phase, new: Phase) -> list[Phase] | None:
    if new == current:
        return []
    frontier: list[tuple[Phase, list[Phase]]] = [(current, [])]
    seen = {current}
    while frontier:
        nxt_frontier: list[tuple[Phase, list[Phase]]] = []
        for phase, path in frontier:
            for nxt in sorted(TRANSITIONS[phase], key=lambda p: p.value):
                edge = (phase, nxt)
                if nxt in seen or edge in ENGINE_ONLY or edge in ON_EVIDENCE:
                    continue
                if nxt == new:
                    return [*path, nxt]
                if not nxt.terminal:
                    seen.add(nxt)
                    nxt_frontier.append((nxt, [*path, nxt]))
        frontier = nxt_frontier
    return None


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
    for a, b in (*ENGINE_ONLY, *ON_EVIDENCE):
        if b not in table[a]:
            raise AssertionError(f"special edge {a} -> {b} is not in the table")


_validate(TRANSITIONS)
