"""The password canary: migrations at DEBUG logging with a known password; it shows up
nowhere: not in logs, reprs, exceptions, CLI output, records or the journal file."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import vmmove
import vmmove.journal
from vmmove.cli import cli
from vmmove_hyperv.testing import Fabric, FakeHyperV, Timing

CANARY = "canary-hv-Zq81-do-not-leak"


def test_the_password_never_leaks(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    fabric = Fabric(timing=Timing(starting=0.05, cancel=0.05)).sample()
    for vm in fabric:
        vm.migrate_seconds = 0.3
    seen: list[str] = []
    with FakeHyperV(fabric, password=CANARY, operation_timeout_cap=1.0) as fake:
        options: dict[str, Any] = {"password": vmmove.Secret(CANARY), "poll_interval": 0.2}
        with vmmove.connect(fake.uri, **options) as conn:
            seen += [repr(conn), repr(conn.backend), repr(options)]
            m = conn.migrate("web-1", to="hv2")
            seen += [repr(e) for e in m.events(timeout=60)]
            seen += [repr(m), repr(m.wait(0))]
        with pytest.raises(vmmove.AuthenticationFailed) as info:
            vmmove.connect(fake.uri, password=vmmove.Secret(CANARY + "x"))
        seen += [str(info.value), repr(info.value)]

        monkeypatch.setenv("VMMOVE_PASSWORD", CANARY)
        runner = CliRunner()
        for args in (["hosts"], ["migrate", "app-1", "--to", "hv1", "--json"]):
            result = runner.invoke(cli, ["--uri", fake.uri, *args])
            seen += [result.output, str(result.exception or "")]
            assert result.exit_code == 0, result.output
        history = runner.invoke(cli, ["history", "--json"])
        assert len(json.loads(history.output)) >= 2
        seen.append(history.output)

    journal_file = Path(vmmove.journal.default_path())
    journal = b"".join(p.read_bytes() for p in journal_file.parent.glob(journal_file.name + "*"))
    assert journal
    assert CANARY.encode() not in journal
    assert caplog.text
    assert CANARY not in "\n".join([*seen, caplog.text])
