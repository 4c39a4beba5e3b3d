"""The simulator follows the shape of real QEMU measurements (QEMU 10, TCG, 256 MiB guest,
128 MiB working set dirtied at 64 MiB/s, migration capped at 32 MiB/s):

- hypervisor defaults (300 ms downtime limit) never converge;
- a raised downtime limit converges, with a short real pause (stop-copy runs uncapped);
- auto-converge converges, slowly;
- post-copy converges fastest, with the shortest pause.
"""

from __future__ import annotations

import pytest

import vmmove
from vmmove.model import MiB
from vmmove.sim import SimBackend, parse

BOUND_S = 256 / 32  # memory / bandwidth


def hot_guest() -> vmmove.Connection:
    inventory = parse(
        {
            "link_mib_s": 1000,
            "host": [{"name": "a"}, {"name": "b"}],
            "vm": [
                {"name": "hot", "host": "a", "memory_mib": 256, "working_set_mib": 128,
                 "resident_mib": 128, "dirty_mib_s": 64},
                {"name": "idle", "host": "a", "memory_mib": 256, "working_set_mib": 8,
                 "resident_mib": 88, "dirty_mib_s": 0},
            ],
        }
    )  # fmt: skip
    return vmmove.connect("sim://", inventory=inventory)


def run(policy: str, vm: str = "hot", **kw: object) -> vmmove.MigrationRecord:
    conn = hot_guest()
    m = conn.migrate(vm, to="b", bandwidth=32, policy=policy, **kw)
    try:
        return m.wait()
    except vmmove.MigrationError:
        return m.record


def test_defaults_never_converge_and_the_vm_stays() -> None:
    record = run("none", completion_budget_per_gib=20)
    assert record.phase is vmmove.Phase.FAILED
    assert record.error_type == "MigrationTimedOut"
    assert record.vm_host == "a"
    assert record.figures.iterations is not None
    assert record.figures.iterations > 5


def test_raised_downtime_converges_with_a_short_real_pause() -> None:
    record = run("balanced")
    assert record.phase is vmmove.Phase.COMPLETED
    assert record.figures.total_time is not None
    assert record.figures.total_time <= 1.2 * BOUND_S
    assert record.figures.downtime_ms is not None
    assert record.figures.downtime_ms <= 300
    assert any(s.applied and "5000ms" in s.step for s in record.steps)


def test_auto_converge_alone_converges_slowly() -> None:
    policy = vmmove.Policy(
        name="ac",
        steps=(
            vmmove.Step(
                trigger=vmmove.policy.AtIteration(n=2), action=vmmove.policy.AutoConverge()
            ),
        ),
    )
    slow = run(policy)  # type: ignore[arg-type]
    fast = run("balanced")
    assert slow.phase is vmmove.Phase.COMPLETED
    assert slow.figures.total_time > 3 * fast.figures.total_time  # type: ignore[operator]


def test_postcopy_is_fastest_with_the_shortest_pause() -> None:
    record = run("minimal-downtime")
    assert record.phase is vmmove.Phase.COMPLETED
    assert record.figures.total_time <= BOUND_S  # type: ignore[operator]
    assert record.figures.downtime_ms <= 20  # type: ignore[operator]
    assert vmmove.Phase.POSTCOPY in [t.phase for t in record.history]


def test_converge_preset_converges() -> None:
    assert run("converge").phase is vmmove.Phase.COMPLETED


def test_idle_guest_converges_under_defaults_in_few_passes() -> None:
    record = run("none", vm="idle")
    assert record.phase is vmmove.Phase.COMPLETED
    assert record.figures.iterations is not None
    assert record.figures.iterations <= 3
    assert record.figures.data_sent is not None
    assert record.figures.data_sent < 100 * MiB


def test_sharing_a_link_slows_each_migration() -> None:
    def elapsed(n: int) -> float:
        inventory = parse(
            {
                "link_mib_s": 100,
                "host": [{"name": "a"}, {"name": "b"}],
                "vm": [{"name": f"v{i}", "host": "a", "memory_mib": 1024, "resident_mib": 500}
                       for i in range(n)],
            }
        )  # fmt: skip
        conn = vmmove.connect("sim://", inventory=inventory)
        for i in range(n):
            conn.migrate(f"v{i}", to="b")
        records = conn.wait_all()
        return max(r.figures.total_time or 0 for r in records)

    one, four = elapsed(1), elapsed(4)
    assert four == pytest.approx(4 * (one - 1.0 - 0.3) + 1.3, rel=0.1)


def test_backend_is_the_sim() -> None:
    assert isinstance(hot_guest().backend, SimBackend)
