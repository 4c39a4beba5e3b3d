"""Fuzzing the public surface: whatever comes in, nothing escapes vmmove's error tree."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import vmmove
from vmmove.journal import record_from_json
from vmmove.sim import parse
from vmmove.testing.fuzz import anything, only_vmmove_errors


@settings(max_examples=300, deadline=None)
@given(
    vm=anything | st.sampled_from(["web-1", "db-1", "batch-1", "gpu-1"]),
    to=anything | st.sampled_from(["host-a", "host-b", "edge-1", None]),
    options=st.dictionaries(
        st.sampled_from(
            ["mode", "policy", "bandwidth", "max_downtime", "completion_budget_per_gib",
             "stall_timeout", "allow_postcopy", "max_slowdown", "colour"]
        ),
        anything | st.sampled_from(["live", "cold", "auto", "balanced", "converge"]),
        max_size=4,
    ),
)  # fmt: skip
def test_migrate_inputs(vm: Any, to: Any, options: dict[str, Any]) -> None:
    with vmmove.connect("sim://") as conn:
        try:
            m = conn.migrate(vm, to, **options)
        except vmmove.VMMoveError:
            return
        only_vmmove_errors(m.wait)
        assert m.record.phase.terminal
        assert m.record.vm_host is not None


@settings(max_examples=300, deadline=None)
@given(uri=st.text(max_size=40) | st.builds(lambda s: "sim://" + s, st.text(max_size=20)))
def test_connect_uris(uri: str) -> None:
    only_vmmove_errors(vmmove.connect, uri)


@settings(max_examples=300, deadline=None)
@given(data=st.dictionaries(st.sampled_from(["host", "vm", "link_mib_s"]), anything, max_size=3))
def test_inventory_parser(data: dict[str, Any]) -> None:
    only_vmmove_errors(parse, data)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200) | anything.map(repr))
def test_journal_record_parser(text: str) -> None:
    only_vmmove_errors(record_from_json, text)
