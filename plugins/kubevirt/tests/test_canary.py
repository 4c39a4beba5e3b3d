"""The token canary: migrations at DEBUG logging with a known bearer token; the token shows
up nowhere: not in logs, reprs, exceptions, CLI output, records or the journal file."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import vmmove
import vmmove.journal
from vmmove import EventKind
from vmmove.cli import cli

CANARY = "canary-kube-7Qm2-do-not-leak"


def test_the_token_never_leaks(
    make_kube: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    kube = make_kube(token=CANARY)
    # The kubeconfig carries no credentials: the token comes from the caller only.
    config = kube.kubeconfig_dict(context="fake")
    config["users"][0]["user"] = {}
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps(config))
    seen: list[str] = []
    options = {"kubeconfig": str(kubeconfig), "token": vmmove.Secret(CANARY)}

    with vmmove.connect("kubevirt://fake/default", **options) as conn:
        seen += [repr(conn), repr(conn.backend), repr(options)]
        m = conn.migrate("web-1", to="node-b")
        seen += [repr(e) for e in m.events(timeout=30)]
        seen += [repr(m), repr(m.wait(0))]
        back = conn.migrate("web-1", to="node-a")
        for event in back.events(timeout=30):
            if event.kind is EventKind.PHASE and event.phase.cancellable:
                back.cancel()
        seen.append(repr(back.record))
        try:
            back.wait(0)
        except vmmove.VMMoveError as exc:
            seen += [str(exc), repr(exc)]

    # A wrong token: refused, and neither token is named.
    with pytest.raises(vmmove.AuthenticationFailed) as info:
        vmmove.connect(
            "kubevirt://fake/default", **{**options, "token": vmmove.Secret(CANARY + "x")}
        )
    seen += [str(info.value), repr(info.value)]

    # The CLI, the token from the environment.
    monkeypatch.setenv("VMMOVE_PASSWORD", CANARY)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    runner = CliRunner()
    for args in (["hosts"], ["vms", "--json"], ["migrate", "db-1", "--to", "node-b", "--json"]):
        result = runner.invoke(cli, ["--uri", "kubevirt://fake/default", *args])
        seen += [result.output, str(result.exception or "")]
        assert result.exit_code == 0, result.output
    history = runner.invoke(cli, ["history", "--json"])
    assert len(json.loads(history.output)) >= 3
    seen.append(history.output)

    journal_file = Path(vmmove.journal.default_path())
    journal = b"".join(p.read_bytes() for p in journal_file.parent.glob(journal_file.name + "*"))
    assert journal
    assert CANARY.encode() not in journal
    assert caplog.text  # DEBUG logging really ran
    assert CANARY not in "\n".join([*seen, caplog.text])
