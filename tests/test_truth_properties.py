"""Property: whatever a backend says, the record follows the VM.

Hypothesis drives the simulator through random lying backends: job reports that disagree
with the inventory, start answers lost before or after the platform acted, ``finish`` that
raises, platform faults in any phase, cancels at any moment. Every record must end
terminal, name the host where the simulator really runs the VM, and carry a history the
state machine allows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import vmmove
from vmmove import Phase
from vmmove.backend import Job, JobStatus
from vmmove.machine import TRANSITIONS
from vmmove.sim import Fault, parse

FAULT_PHASES = [Phase.REQUESTING, Phase.TRANSFERRING, Phase.SWITCHING_OVER, Phase.POSTCOPY]

scenarios = st.fixed_dictionaries(
    {
        "fault": st.none() | st.tuples(st.sampled_from(["target-fails", "link-drop"]),
                                       st.sampled_from(FAULT_PHASES)),
        "lie": st.sampled_from(["none", "flip-terminal", "wrong-host"]),
        "lost": st.sampled_from(["none", "before-acting", "after-acting"]),
        "finish_raises": st.booleans(),
        "cancel_after_polls": st.none() | st.integers(min_value=0, max_value=30),
        "postcopy": st.booleans(),
    }
)  # fmt: skip


def _estate() -> vmmove.Connection:
    inventory = parse(
        {
            "link_mib_s": 200,
            "host": [{"name": "a"}, {"name": "b"}],
            "vm": [{"name": "v", "host": "a", "memory_mib": 2048, "resident_mib": 1024,
                    "working_set_mib": 512, "dirty_mib_s": 150}],
        }
    )  # fmt: skip
    conn = vmmove.connect("sim://", inventory=inventory)
    conn.poll_grace = 15.0
    return conn


def _lying(conn: vmmove.Connection, scenario: dict[str, Any]) -> None:
    backend: Any = conn.backend
    real_poll, real_start = backend.poll, backend.start
    polls = itertools.count()

    def poll(job: Job) -> JobStatus:
        status: JobStatus = real_poll(job)
        n = next(polls)
        if scenario["cancel_after_polls"] == n:
            for m in conn.migrations():
                m.cancel()
        if not status.phase.terminal:
            return status
        if scenario["lie"] == "flip-terminal":
            if status.phase is Phase.COMPLETED:
                return dataclasses.replace(status, phase=Phase.FAILED, native="lie", vm_host="a")
            return dataclasses.replace(status, phase=Phase.COMPLETED, native="lie", vm_host="b")
        if scenario["lie"] == "wrong-host":
            return dataclasses.replace(status, vm_host="b" if status.vm_host == "a" else "a")
        return status

    def start(*args: Any, **kwargs: Any) -> Job:
        if scenario["lost"] == "before-acting":
            raise vmmove.ConnectionFailed("connection reset before the request left")
        job: Job = real_start(*args, **kwargs)
        if scenario["lost"] == "after-acting":
            raise vmmove.ConnectionFailed("read timed out after the platform acted")
        return job

    def finish(job: Job) -> None:
        raise RuntimeError("finish blew up")

    backend.poll, backend.start = poll, start
    if scenario["finish_raises"]:
        backend.finish = finish


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios)
def test_the_record_follows_the_vm_whatever_the_backend_says(scenario: dict[str, Any]) -> None:
    conn = _estate()
    sim: Any = conn.backend
    truth = type(sim).locate  # the simulator's own answer, past every wrapper
    if scenario["fault"] is not None:
        kind, phase = scenario["fault"]
        sim.inject(Fault(kind=kind, vm="v", phase=phase))
    _lying(conn, scenario)
    policy = "minimal-downtime" if scenario["postcopy"] else "safe"
    m = conn.migrate("v", to="b", policy=policy)
    with contextlib.suppress(vmmove.VMMoveError):
        m.wait(3600)
    record = m.record
    assert record.phase.terminal
    phases = [t.phase for t in record.history]
    assert phases[0] is Phase.PENDING
    for a, b in itertools.pairwise(phases):
        assert b in TRANSITIONS[a], f"illegal {a} -> {b}: {phases}"
    where = truth(sim, "v")
    assert record.vm_host == where, (record.vm_host, where, record.warnings)
    assert record.located_at is not None
    # The outcome follows the VM: completed exactly when it runs on the target.
    assert (record.phase is Phase.COMPLETED) == (where == "b"), (record.phase, where)
    if where is None:
        assert record.error_type == "PostcopyFailed"
    event(f"{record.phase} ({record.error_type}) on {where}")
    event(f"contradicted: {any('CONTRADICTION' in w for w in record.warnings)}")
    error = m._run.error
    assert (error is None) == (record.phase is Phase.COMPLETED)
    conn.close()
