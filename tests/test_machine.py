"""The state machine: every allowed and every denied transition."""

from __future__ import annotations

import itertools

import pytest

from vmmove import BackendProtocolError
from vmmove.machine import TRANSITIONS, Phase, Side, check_transition, route

P = Phase
ALLOWED = {
    (P.PENDING, P.PREPARING), (P.PENDING, P.CANCELLED), (P.PENDING, P.FAILED),
    (P.PREPARING, P.REQUESTING), (P.PREPARING, P.FAILED), (P.PREPARING, P.CANCELLED),
    (P.REQUESTING, P.TRANSFERRING), (P.REQUESTING, P.FAILED), (P.REQUESTING, P.CANCELLED),
    (P.TRANSFERRING, P.SWITCHING_OVER), (P.TRANSFERRING, P.REQUESTING),
    (P.TRANSFERRING, P.FAILED), (P.TRANSFERRING, P.CANCELLED),
    (P.SWITCHING_OVER, P.POSTCOPY), (P.SWITCHING_OVER, P.COMPLETING),
    (P.SWITCHING_OVER, P.FAILED),
    (P.POSTCOPY, P.COMPLETING), (P.POSTCOPY, P.FAILED),
    (P.COMPLETING, P.COMPLETED), (P.COMPLETING, P.FAILED),
}  # fmt: skip
# Legal only when the inventory contradicts the job: never inferred, refused without evidence.
ON_EVIDENCE_ONLY = {(P.COMPLETING, P.FAILED)}


@pytest.mark.parametrize(("a", "b"), sorted(ALLOWED - ON_EVIDENCE_ONLY))
def test_allowed(a: Phase, b: Phase) -> None:
    check_transition(a, b)


@pytest.mark.parametrize(("a", "b"), sorted(ON_EVIDENCE_ONLY))
def test_evidence_edges_need_the_inventorys_word(a: Phase, b: Phase) -> None:
    with pytest.raises(BackendProtocolError, match="inventory contradicts"):
        check_transition(a, b)
    check_transition(a, b, evidence=True)
    assert route(a, b) is None, "an evidence edge is never inferred"


def test_route_fills_in_unobserved_phases_forward_only() -> None:
    assert route(P.REQUESTING, P.COMPLETED) == [
        P.TRANSFERRING, P.SWITCHING_OVER, P.COMPLETING, P.COMPLETED,
    ]  # fmt: skip
    assert route(P.TRANSFERRING, P.COMPLETED, via_postcopy=True) == [
        P.SWITCHING_OVER, P.POSTCOPY, P.COMPLETING, P.COMPLETED,
    ]  # fmt: skip
    assert route(P.TRANSFERRING, P.REQUESTING) is None, "the cold fallback is the engine's own"
    assert route(P.SWITCHING_OVER, P.TRANSFERRING) is None
    assert route(P.COMPLETED, P.FAILED) is None


DENIED = sorted(set(itertools.product(Phase, Phase)) - ALLOWED)


@pytest.mark.parametrize(("a", "b"), DENIED)
def test_denied(a: Phase, b: Phase) -> None:
    with pytest.raises(BackendProtocolError, match="illegal transition"):
        check_transition(a, b)


def test_table_is_exactly_the_documented_one() -> None:
    assert {(a, b) for a, nxt in TRANSITIONS.items() for b in nxt} == ALLOWED


def test_terminal_phases() -> None:
    assert {p for p in Phase if p.terminal} == {P.COMPLETED, P.FAILED, P.CANCELLED}


def test_cancellable_only_before_the_commit_point() -> None:
    assert {p for p in Phase if p.cancellable} == {
        P.PENDING, P.PREPARING, P.REQUESTING, P.TRANSFERRING,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("phase", "side"),
    [
        (P.PENDING, Side.SOURCE), (P.PREPARING, Side.SOURCE), (P.REQUESTING, Side.SOURCE),
        (P.TRANSFERRING, Side.SOURCE), (P.SWITCHING_OVER, Side.IN_TRANSIT),
        (P.POSTCOPY, Side.TARGET), (P.COMPLETING, Side.TARGET), (P.COMPLETED, Side.TARGET),
        (P.FAILED, Side.RECORDED), (P.CANCELLED, Side.RECORDED),
    ],
)  # fmt: skip
def test_primary_side_is_derived_from_the_phase(phase: Phase, side: Side) -> None:
    assert phase.primary is side


def test_validation_rejects_a_trap_state() -> None:
    from vmmove import machine

    broken = dict(TRANSITIONS)
    broken[P.POSTCOPY] = frozenset({P.POSTCOPY})
    with pytest.raises(AssertionError, match="never end"):
        machine._validate(broken)


def test_validation_rejects_an_unreachable_phase() -> None:
    from vmmove import machine

    broken = {p: frozenset(n - {P.POSTCOPY}) for p, n in TRANSITIONS.items()}
    with pytest.raises(AssertionError, match="unreachable"):
        machine._validate(broken)
