"""The record is the truth: regressions for every way a record once lied, on the simulator.

Each test makes the platform's answers go wrong in one way (a lost answer, an unreachable
inventory, a backend that raises after the commit point...) and checks that the record
names where the VM really runs, with a history the state machine allows.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest

import vmmove
from vmmove import MigrationRecord, Phase
from vmmove.backend import Job, JobStatus
from vmmove.machine import TRANSITIONS
from vmmove.outcomes import ExitCode, error_of, exit_code
from vmmove.sim import Fault, parse


def estate(**kwargs: Any) -> vmmove.Connection:
    inventory = parse(
        {
            "link_mib_s": 200,
            "host": [{"name": "a"}, {"name": "b"}],
            "vm": [
                {"name": n, "host": "a", "memory_mib": 2048, "resident_mib": 1024,
                 "working_set_mib": 256, "dirty_mib_s": 50}
                for n in ("v", "w")
            ],
        }
    )  # fmt: skip
    return vmmove.connect("sim://", inventory=inventory, **kwargs)


def legal(record: MigrationRecord) -> None:
    phases = [t.phase for t in record.history]
    assert phases[0] is Phase.PENDING
    for a, b in itertools.pairwise(phases):
        assert b in TRANSITIONS[a], f"illegal {a} -> {b} in {phases}"
    assert record.phase.terminal


def test_finish_raising_after_the_commit_completes_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn = estate()

    def broken_finish(job: Job) -> None:
        raise RuntimeError("the platform's cleanup call blew up")

    monkeypatch.setattr(conn.backend, "finish", broken_finish)
    record = conn.migrate("v", to="b").wait()
    legal(record)
    assert record.phase is Phase.COMPLETED
    assert record.vm_host == "b" == conn.backend.locate("v")
    assert any("cleanup failed" in w and "blew up" in w for w in record.warnings)


def test_a_failure_is_the_same_error_live_and_after_attach() -> None:
    with estate() as conn:
        conn.backend.inject(Fault(kind="target-fails", vm="v", phase=Phase.TRANSFERRING))  # type: ignore[attr-defined]
        m = conn.migrate("v", to="b")
        with pytest.raises(vmmove.VMMoveError) as live:
            m.wait()
        record = m.record
    again = vmmove.attach(record.id, uri="sim://", inventory=conn.backend.inventory)  # type: ignore[attr-defined]
    with pytest.raises(vmmove.VMMoveError) as attached:
        again.wait()
    assert type(live.value) is type(attached.value) is vmmove.MigrationFailed
    assert exit_code(live.value) == exit_code(attached.value) == ExitCode.FAILED
    assert type(error_of(record)) is vmmove.MigrationFailed


def test_a_refusal_keeps_its_class_and_problems_after_attach() -> None:
    inventory = parse(
        {"host": [{"name": "a"}, {"name": "b", "state": "maintenance"}],
         "vm": [{"name": "v", "host": "a"}]}
    )  # fmt: skip
    with vmmove.connect("sim://", inventory=inventory) as conn:
        m = conn.migrate("v", to="b")
        with pytest.raises(vmmove.PrecheckFailed) as live:
            m.wait()
        record = m.record
    rebuilt = error_of(record)
    assert isinstance(rebuilt, vmmove.PrecheckFailed)
    assert rebuilt.problems == live.value.problems != ()
    assert exit_code(rebuilt) is exit_code(live.value) is ExitCode.REFUSED
    again = vmmove.attach(record.id, uri="sim://")
    with pytest.raises(vmmove.PrecheckFailed) as attached:
        again.wait()
    assert attached.value.problems == live.value.problems


def test_a_start_the_platform_never_received_fails_with_the_vm_on_its_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn = estate()
    conn.poll_grace = 20.0

    def lost(*args: Any, **kwargs: Any) -> Job:
        raise vmmove.ConnectionFailed("connection reset before the request was sent")

    monkeypatch.setattr(conn.backend, "start", lost)
    m = conn.migrate("v", to="b")
    with pytest.raises(vmmove.MigrationFailed, match="start request was lost"):
        m.wait()
    legal(m.record)
    assert m.record.vm_host == "a" == conn.backend.locate("v")
    assert m.record.located_at is not None
    # It asked for the whole grace before concluding: the platform might have acted late.
    assert m.record.updated_at - m.record.created_at >= 20.0


def test_a_start_applied_late_is_found_and_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = estate()
    backend = conn.backend
    real_start, real_attach = backend.start, backend.attach
    pending: list[tuple[Any, Any]] = []
    asked = itertools.count()

    def start(*args: Any, **kwargs: Any) -> Job:
        pending.append((args, kwargs))  # the platform queues it; the answer never comes
        raise vmmove.ConnectionFailed("read timed out")

    def attach(ref: Any) -> Job:
        if pending and next(asked) == 3:  # the platform acts on it a few seconds later
            args, kwargs = pending.pop()
            real_start(*args, **kwargs)
        return real_attach(ref)

    monkeypatch.setattr(backend, "start", start)
    monkeypatch.setattr(backend, "attach", attach)
    record = conn.migrate("v", to="b").wait()
    legal(record)
    assert record.phase is Phase.COMPLETED
    assert record.vm_host == "b" == backend.locate("v")
    assert any("had acted on the start request" in w for w in record.warnings)


def test_location_unknown_only_while_the_inventory_cannot_be_read(
    monkeypatch: pytest.MonkeyPatch, journal_path: Any
) -> None:
    conn = estate()
    conn.poll_grace = 10.0
    backend = conn.backend
    real_locate = backend.locate
    down = [True]

    def locate(vm_id: str) -> str | None:
        if down[0]:
            raise vmmove.ConnectionFailed("inventory service unavailable")
        return real_locate(vm_id)

    monkeypatch.setattr(backend, "locate", locate)
    record = conn.migrate("v", to="b").wait()
    assert record.phase is Phase.COMPLETED
    assert record.vm_host is None
    assert record.located_at is None
    assert any("location unknown" in w for w in record.warnings)
    down[0] = False
    settled = conn.attach(record.id).record
    assert settled.vm_host == "b" == real_locate("v")
    assert settled.located_at is not None
    assert any("verified later" in w for w in settled.warnings)


def test_progress_going_down_is_recorded_against_the_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn = estate()
    real = conn.backend.poll
    polls = itertools.count()

    def shaky(job: Job) -> JobStatus:
        status = real(job)
        if status.data_processed and next(polls) == 4:
            return dataclasses.replace(status, data_processed=status.data_processed // 2)
        return status

    monkeypatch.setattr(conn.backend, "poll", shaky)
    m = conn.migrate("v", to="b")
    events = list(m.events())
    percents = [e.progress.percent for e in events if e.progress is not None]
    assert percents == sorted(percents), "users still see progress that never goes back"
    warnings = [w for w in m.record.warnings if "going down" in w]
    assert len(warnings) == 1
    assert "backend sim" in warnings[0]


def test_a_cancelled_migration_keeps_its_last_percentage() -> None:
    conn = estate()
    m = conn.migrate("v", to="b")
    seen = []
    for event in m.events():
        seen.append(event.progress.percent if event.progress else 0.0)
        if event.phase is Phase.TRANSFERRING and event.progress and event.progress.percent > 20:
            m.cancel()
    with pytest.raises(vmmove.MigrationCancelled):
        m.wait()
    assert m.progress.percent == max(seen[:-1]) < 91


def test_same_host_is_refused_at_migrate_without_a_record() -> None:
    conn = estate()
    with pytest.raises(vmmove.PrecheckFailed, match="already runs on"):
        conn.migrate("v", to="a")
    assert conn.migrations() == []
    assert conn.store.list() == []


def test_misspelt_and_mistyped_migrate_arguments_are_invalid_input() -> None:
    conn = estate()
    with pytest.raises(vmmove.InvalidInput, match="polcy"):
        conn.migrate("v", to="b", polcy="balanced")  # type: ignore[call-arg]
    with pytest.raises(vmmove.InvalidInput, match="max_downtime"):
        conn.migrate("v", to="b", max_downtime="500")  # type: ignore[arg-type]
    assert conn.store.list() == []


def test_connection_events_follow_every_migration_in_one_stream() -> None:
    conn = estate()
    first = conn.migrate("v", to="b")
    second = conn.migrate("w", to="b")
    events = list(conn.events())
    assert {e.migration for e in events} == {first.id, second.id}
    for m in (first, second):
        mine = [e for e in events if e.migration == m.id]
        assert mine == list(m.events()), "the same events, in the same order"
    assert first.done
    assert second.done
    ats = [e.at for e in events]
    assert ats == sorted(ats)


def test_poll_grace_is_a_connect_option() -> None:
    with vmmove.connect("sim://", poll_grace=5) as conn:
        assert conn.poll_grace == 5.0
    for bad in ("5", -1, float("nan"), True):
        with pytest.raises(vmmove.InvalidInput, match="poll_grace"):
            vmmove.connect("sim://", poll_grace=bad)


NAMED = """
[[host]]
id = "host-0001"
name = "rack1-a"
memory_gib = 24
[[host]]
id = "host-0002"
name = "rack1-b"
[[vm]]
name = "web"
host = "host-0001"
"""


def test_records_keep_ids_and_names_and_the_cli_prints_names(tmp_path: Any) -> None:
    inventory_file = tmp_path / "named.toml"
    inventory_file.write_text(NAMED)
    uri = f"sim://{inventory_file}"
    with vmmove.connect(uri) as conn:
        record = conn.migrate("web", to="rack1-b").wait()  # by name: the record holds ids
    assert (record.source, record.source_name) == ("host-0001", "rack1-a")
    assert (record.target, record.target_name) == ("host-0002", "rack1-b")
    assert (record.vm_host, record.vm_host_name) == ("host-0002", "rack1-b")
    from click.testing import CliRunner

    from vmmove import cli

    out = CliRunner().invoke(cli.cli, ["history"], catch_exceptions=False).output
    assert "rack1-b" in out
    assert "host-0002" not in out
    hosts = CliRunner().invoke(cli.cli, ["--uri", uri, "hosts"], catch_exceptions=False).output
    assert "24.0" in hosts  # memory in GiB with one decimal, never 1.09671/23.54


def test_steps_the_platform_decides_count_as_skipped_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmmove.engine import PLATFORM_DECIDES

    conn = estate()
    real_check = conn.backend.check

    def check(vm: Any, target: Any, spec: Any, **resolved: Any) -> list[vmmove.Problem]:
        assert resolved["mode"] is vmmove.MigrationMode.LIVE  # resolved before the backend
        assert resolved["policy"].name == "none"
        note = vmmove.Problem(
            code=PLATFORM_DECIDES, message="'postcopy' is the cluster's call", severity="warning"
        )
        return [*real_check(vm, target, spec, **resolved), note]

    monkeypatch.setattr(conn.backend, "check", check)
    record = conn.migrate("v", to="b", policy="none").wait()
    skipped = [s for s in record.steps if not s.applied]
    assert [s.step for s in skipped] == ["'postcopy' is the cluster's call"]
    assert skipped[0].reason == "decided by the platform"
    assert "'postcopy' is the cluster's call" in record.warnings  # said at the start too
    # ... and the CLI's summary lists it once, as a skipped step
    from rich.console import Console

    from vmmove.cli.render import summary

    console = Console(record=True, width=200)
    summary(console, record)
    assert console.export_text().count("'postcopy' is the cluster's call") == 1


def test_a_cold_move_reports_progress_while_the_vm_moves() -> None:
    inventory = parse(
        {"link_mib_s": 100, "host": [{"name": "a"}, {"name": "b"}],
         "vm": [{"name": "v", "host": "a", "power": "stopped", "storage": "local", "disk_gib": 2}]}
    )  # fmt: skip
    with vmmove.connect("sim://", inventory=inventory) as conn:
        m = conn.migrate("v", to="b", mode="cold")
        progress = [e for e in m.events() if e.kind is vmmove.EventKind.PROGRESS]
        assert m.wait().phase is Phase.COMPLETED
    percents = [e.progress.percent for e in progress if e.progress is not None]
    assert len(percents) >= 3
    assert percents == sorted(percents)
    assert percents[-1] > percents[0]


@pytest.mark.parametrize("interrupted_in", [Phase.REQUESTING, Phase.TRANSFERRING])
def test_attach_resumes_a_cold_move_the_client_left_half_done(interrupted_in: Phase) -> None:
    inventory = parse(
        {"link_mib_s": 100, "host": [{"name": "a"}, {"name": "b"}],
         "vm": [{"name": "v", "host": "a", "storage": "local", "disk_gib": 2}]}
    )  # fmt: skip
    conn = vmmove.connect("sim://", inventory=inventory, store=vmmove.MemoryStore())
    m = conn.migrate("v", to="b", mode="cold")
    for event in m.events():
        if event.kind is vmmove.EventKind.PHASE and event.phase is interrupted_in:
            break
    conn.detach()  # the client dies with the VM stopped (or stopping) on its source
    assert m.record.job_ref["intent"] == "cold"
    again = vmmove.Connection(conn.backend, uri="sim://", plugins=conn.plugins, store=conn.store)
    record = again.attach(m.id).wait()
    assert record.phase is Phase.COMPLETED
    vm = again.vm("v")
    assert (vm.host, vm.power) == ("b", vmmove.PowerState.RUNNING)
    assert (record.vm_host, record.vm_power) == ("b", vmmove.PowerState.RUNNING)
    # Its time runs from the start of the move in the first process, not from the attach.
    asked = next(t.at for t in record.history if t.phase is Phase.REQUESTING)
    assert record.figures.total_time is not None
    assert record.figures.total_time >= record.history[-1].at - asked - 0.05


@pytest.mark.parametrize("acted", [True, False], ids=["acted-on", "never-received"])
def test_a_lost_answer_to_a_cold_move_is_looked_for_before_asking_again(
    monkeypatch: pytest.MonkeyPatch, acted: bool
) -> None:
    conn = estate()
    backend = conn.backend
    real_relocate = backend.relocate
    calls: list[str] = []

    def relocate(vm: Any, target: Any, spec: Any, *, request_id: str) -> Job:
        calls.append(request_id)
        if len(calls) == 1:
            if acted:  # the platform moves it; the answer is lost on the way back
                real_relocate(vm, target, spec, request_id=request_id)
            raise vmmove.ConnectionFailed("read timed out")
        return real_relocate(vm, target, spec, request_id=request_id)

    monkeypatch.setattr(backend, "relocate", relocate)
    record = conn.migrate("w", to="b", mode="cold").wait()
    legal(record)
    assert record.phase is Phase.COMPLETED
    assert record.vm_host == "b" == backend.locate("w")
    # Acted on: found by its request id, never asked twice; never received: asked once more.
    assert calls == ([calls[0]] if acted else [calls[0], calls[0]])
    assert any("acted on the move request" in w for w in record.warnings) is acted


def test_a_cancel_the_platform_cannot_honour_answers_false_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn = estate()
    caps = dataclasses.replace(conn.backend.capabilities, cancel=False)
    monkeypatch.setattr(conn.backend, "capabilities", caps)
    monkeypatch.setattr(conn.backend, "cancel_refusal", "this toy cannot abort its jobs")
    m = conn.migrate("v", to="b")
    answers = []
    for event in m.events():
        if event.phase is Phase.TRANSFERRING and not answers:
            answers.append(m.cancel())
    record = m.wait(0)
    assert answers == [False]
    assert record.phase is Phase.COMPLETED  # nothing was pretended: it went on
    assert [w for w in record.warnings if w.startswith("cancel refused")] == [
        "cancel refused: this toy cannot abort its jobs; the migration goes on"
    ]
    # Before the platform holds a job the engine stops a migration itself.
    queued = conn.migrate("w", to="b")
    assert queued.cancel() is True
    with pytest.raises(vmmove.MigrationCancelled):
        queued.wait()
    assert conn.backend.locate(conn.vm("w").id) == "a"
