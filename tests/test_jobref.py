"""JobRef: the typed reference a record keeps to find its job again."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmmove import Intent, JobRef, MigrationMode

text = st.text(max_size=20)


@given(data=st.dictionaries(text.filter(lambda k: k != "intent"), text, max_size=5))
def test_a_job_reference_round_trips_as_the_backend_wrote_it(data: dict[str, str]) -> None:
    ref = JobRef(data=data)
    assert ref.dump() == data  # the record holds the backend's keys, nothing added
    assert JobRef.load(ref.dump()) == ref


@given(
    request_id=text,
    vm=text,
    target=text,
    mode=st.sampled_from(MigrationMode),
    at=st.none() | st.floats(allow_nan=False, allow_infinity=False),
)
def test_a_start_reference_round_trips(
    request_id: str, vm: str, target: str, mode: MigrationMode, at: float | None
) -> None:
    ref = JobRef.start(request_id=request_id, vm=vm, target=target, mode=mode, at=at)
    back = JobRef.load(ref.dump())
    assert back == ref
    assert back.intent is Intent.START
    assert back.get("request_id") == ""  # typed, not among the backend's keys


def test_records_written_before_jobref_still_load() -> None:
    # Journals written by earlier releases: a job's plain keys, or the intent mapping.
    assert JobRef.load({"task": "task-7", "vm": "vm-1"}).get("task") == "task-7"
    old = JobRef.load({"intent": "start", "request_id": "r", "vm": "v", "mode": "cold", "at": "x"})
    assert (old.intent, old.request_id, old.mode, old.at) == (
        Intent.START,
        "r",
        MigrationMode.COLD,
        None,  # an unreadable time is no time
    )


def test_bad_references_are_refused() -> None:
    with pytest.raises(ValueError, match="intent"):
        JobRef(data={"intent": "job"})
    with pytest.raises(ValueError, match="text"):
        JobRef(data={"n": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="cold"):
        JobRef.load({"intent": "cold", "step": "moving"})  # the engine's own, not a job's


def test_the_data_cannot_be_changed_behind_the_record() -> None:
    source = {"job": "j-1"}
    ref = JobRef(data=source)
    source["job"] = "j-2"
    assert ref.get("job") == "j-1"
    with pytest.raises(TypeError):
        ref.data["job"] = "j-3"  # type: ignore[index]
