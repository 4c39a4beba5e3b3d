"""The password canary: migrations at DEBUG logging with a known password; it shows up
nowhere: not in logs, reprs, exceptions, CLI output, records or the journal file."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

import vmmove
import vmmove.journal
from vmmove.cli import cli
from vmmove.engine import Connection
from vmmove_nutanix.testing import FakePrism

CANARY = "canary-ntnx-7Qm2-do-not-leak"


def test_the_password_never_leaks(
    make_prism: Callable[..., FakePrism],
    connect: Callable[..., Connection],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    prism = make_prism(password=CANARY)
    prism.fault("POST", r"migrate", drop=True)  # a lost answer: more paths, more messages
    seen: list[str] = []
    conn = connect(prism, password=vmmove.Secret(CANARY), store=None)
    seen += [repr(conn), repr(conn.backend), str(vars(conn.backend))]
    m = conn.migrate("web-1", to="node-b")
    seen += [repr(e) for e in m.events(timeout=30)]
    seen += [repr(m), repr(m.wait(0))]
    failed = conn.migrate("gpu-1", to="node-a", mode="live")
    try:
        failed.wait(30)
    except vmmove.VMMoveError as exc:
        seen += [str(exc), repr(exc), repr(failed.record)]

    with pytest.raises(vmmove.AuthenticationFailed) as info:
        connect(prism, password=vmmove.Secret(CANARY + "x"))
    seen += [str(info.value), repr(info.value)]

    # The CLI, the password from the environment, the CA from the config file.
    config = tmp_path / "config.toml"
    config.write_text(f'[options]\nca_file = "{prism.ca_file(tmp_path)}"\n')
    config.chmod(0o600)
    monkeypatch.setenv("VMMOVE_PASSWORD", CANARY)
    monkeypatch.setenv("VMMOVE_CONFIG", str(config))
    runner = CliRunner()
    for args in (["hosts"], ["vms", "--json"], ["migrate", "db-1", "--to", "node-b", "--json"]):
        result = runner.invoke(cli, ["--uri", prism.uri, *args])
        seen += [result.output, str(result.exception or "")]
        assert result.exit_code == 0, result.output
    history = runner.invoke(cli, ["history", "--json"])
    assert len(json.loads(history.output)) >= 1
    seen.append(history.output)

    journal_file = Path(vmmove.journal.default_path())
    journal = b"".join(p.read_bytes() for p in journal_file.parent.glob(journal_file.name + "*"))
    assert journal
    assert CANARY.encode() not in journal
    assert caplog.text  # DEBUG logging really ran
    assert CANARY not in "\n".join([*seen, caplog.text])
