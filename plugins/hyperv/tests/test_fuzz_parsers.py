"""Fuzzing what a host prints: CLIXML error streams, ConvertTo-Json documents in either
PowerShell's shape, Get-VMHost/Get-VM objects and migration jobs. Whatever arrives, only
vmmove errors escape, and valid documents still read right."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import vmmove
from vmmove.machine import Phase
from vmmove.model import PowerState
from vmmove.testing.fuzz import anything, only_vmmove_errors
from vmmove_hyperv import clixml, inventory, psjson
from vmmove_hyperv.phases import JOB_STATES, job_status
from vmmove_hyperv.testing.direct import clixml as encode_clixml
from vmmove_hyperv.testing.emulation import SHAPES, HyperVShell
from vmmove_hyperv.testing.fabric import Fabric

FUZZ = settings(max_examples=150, deadline=None)
text = st.text(alphabet=st.characters(codec="utf-8"), max_size=60)


@FUZZ
@given(st.text(max_size=300))
def test_clixml_never_raises(stderr: str) -> None:
    stream = clixml.parse(stderr)
    assert all(isinstance(m, str) for m in stream.errors)
    assert clixml.parse(clixml.MARKER + "\r\n" + stderr) is not None


@FUZZ
@given(st.lists(text.filter(lambda t: t.strip() and t.isprintable()), max_size=4))
@example(messages=["~"])  # a message of tildes is not PowerShell's code underline
def test_clixml_round_trip(messages: list[str]) -> None:
    parsed = clixml.parse(encode_clixml(messages)).errors
    assert parsed == [" ".join(m.split()) for m in messages if m.split()]


def test_clixml_reads_powershell_51_error_records() -> None:
    stderr = (
        '#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
        '<Obj S="progress" RefId="0"><TN RefId="0">'
        "<T>System.Management.Automation.PSCustomObject</T></TN></Obj>"
        '<S S="Error">Get-VM : Hyper-V was unable to find a virtual machine '
        'with name "x"._x000D__x000A_</S>'
        '<S S="Error">At line:1 char:1_x000D__x000A_</S><S S="Error">+ Get-VM x_x000D__x000A_</S>'
        '<S S="Error">    + CategoryInfo          : InvalidArgument_x000D__x000A_</S>'
        '<S S="Error">Stop-VM : second_x005F_x0041_ one_x000D__x000A_</S>'
        '<S S="Error">At line:2 char:1_x000D__x000A_</S></Objs>'
    )  # fmt: skip
    assert clixml.parse(stderr).errors == [
        'Get-VM : Hyper-V was unable to find a virtual machine with name "x".',
        "Stop-VM : second_x0041_ one",
    ]


@FUZZ
@given(anything)
def test_json_shapes_only_raise_vmmove_errors(value: Any) -> None:
    document = json.dumps(value)
    parsed = only_vmmove_errors(psjson.loads, document, "fuzz")
    only_vmmove_errors(psjson.as_list, parsed, "fuzz")
    only_vmmove_errors(inventory.vm_info, parsed, "hv1")
    only_vmmove_errors(inventory.host_info, parsed, "hv1", [])
    only_vmmove_errors(job_status, parsed, abort_requested=False)


@FUZZ
@given(st.text(max_size=80))
def test_not_json_is_connection_failed(document: str) -> None:
    only_vmmove_errors(psjson.loads, document, "fuzz")


def _printed(shape: str, host: str, script: str) -> Any:
    fabric = Fabric().sample()
    out = HyperVShell(fabric, shape).run(host, script)
    assert out.exit_code == 0, out.errors
    return psjson.loads(out.stdout, "test")


@given(st.sampled_from(sorted(SHAPES)), st.sampled_from(["hv1", "hv2"]))
@settings(max_examples=8, deadline=None)
def test_both_shapes_read_the_same(shape: str, host: str) -> None:
    from vmmove_hyperv import scripts

    vms = [
        inventory.vm_info(v, host)
        for v in psjson.as_list(_printed(shape, host, scripts.vms()), "vms")
    ]
    other = "7" if shape == "5.1" else "5.1"
    again = [
        inventory.vm_info(v, host)
        for v in psjson.as_list(_printed(other, host, scripts.vms()), "vms")
    ]
    assert [(v.name, v.power, v.memory, v.storage) for v in vms] == [
        (v.name, v.power, v.memory, v.storage) for v in again
    ]
    assert {v.power for v in vms} <= {PowerState.RUNNING, PowerState.STOPPED}


def test_depth_truncation_is_an_error_not_a_wrong_reading() -> None:
    from vmmove_hyperv import scripts

    raw = _printed("5.1", "hv1", scripts.vms(depth=0))
    errors = [only_vmmove_errors(inventory.vm_info, v, "hv1") for v in psjson.as_list(raw, "vms")]
    assert errors
    assert all(e is None for e in errors)
    with pytest.raises(vmmove.ConnectionFailed, match="truncated by ConvertTo-Json -Depth"):
        inventory.vm_info(psjson.as_list(raw, "vms")[0], "hv1")


@given(st.sampled_from(sorted(JOB_STATES.items())), st.booleans(), st.integers(0, 100))
def test_job_states_by_number_or_name_map_alike(
    item: tuple[str, int], named: bool, pct: int
) -> None:
    name, number = item
    raw = {"JobState": name if named else number, "PercentComplete": pct}
    status = job_status(raw, abort_requested=False)
    assert status == job_status({**raw, "JobState": number}, abort_requested=False)
    if number == 7:
        assert status.phase is Phase.COMPLETED
        assert status.percent == 100
