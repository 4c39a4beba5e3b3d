"""The secret canary: migrations at DEBUG logging with a known password; the password shows
up nowhere — not in logs, reprs, exceptions, CLI output, records or the journal file."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import vmmove
import vmmove.journal
from vmmove import EventKind
from vmmove.cli import cli

CANARY = "canary-Zx9q7-do-not-leak"


def test_password_never_leaks(
    start_vcsim: Callable[..., Any],
    uri_for: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    sim = start_vcsim(password=CANARY)
    seen: list[str] = []
    options = {"password": vmmove.Secret(CANARY), "ca_file": sim.ca_file, "poll_interval": 0.2}

    # The API: a migration, a cancelled one, and the reprs of everything on the way.
    with vmmove.connect(uri_for(sim), **options) as conn:
        seen += [repr(conn), repr(conn.backend), repr(options), str(conn.capabilities)]
        vm = conn.vms()[0]
        target = next(h for h in conn.hosts() if h.id != vm.host)
        m = conn.migrate(vm.id, to=target.id)
        seen += [repr(e) for e in m.events(timeout=60)]
        seen += [repr(m), repr(m.wait(0))]
        logins = conn.backend.session.generation
        sim.restart()  # sessions die: the backend logs in again with the stored password
        for _ in range(3):  # the first request meets the connection the restart closed
            try:
                seen.append(repr(conn.hosts()))
                break
            except vmmove.ConnectionFailed as exc:
                seen += [str(exc), repr(exc)]
        assert conn.backend.session.generation == logins + 1
        back = conn.migrate(vm.id, to=vm.host)
        for event in back.events(timeout=60):
            if event.kind is EventKind.PHASE and event.phase.cancellable:
                back.cancel()
        seen.append(repr(back.record))
        try:
            back.wait(0)
        except vmmove.VMMoveError as exc:
            seen += [str(exc), repr(exc)]

    # Wrong password: the error names the user, never either password.
    with pytest.raises(vmmove.AuthenticationFailed) as info:
        vmmove.connect(uri_for(sim), **{**options, "password": vmmove.Secret(CANARY + "x")})
    seen += [str(info.value), repr(info.value)]

    # The CLI, with the password from the environment and the CA from a config file.
    config = tmp_path / "config.toml"
    config.write_text(f'uri = "{uri_for(sim)}"\n[options]\nca_file = "{sim.ca_file}"\n')
    monkeypatch.setenv("VMMOVE_PASSWORD", CANARY)
    runner = CliRunner()
    for args in (["hosts"], ["vms", "--json"], ["migrate", vm.id, "--to", vm.host, "--json"]):
        result = runner.invoke(cli, ["--config", str(config), *args])
        seen += [result.output, str(result.exception or "")]
    assert result.exit_code in (0, 3), result.output  # moved, or refused as same host

    history = runner.invoke(cli, ["history", "--json"])
    assert len(json.loads(history.output)) >= 3
    seen.append(history.output)

    journal_file = Path(vmmove.journal.default_path())
    journal = b"".join(p.read_bytes() for p in journal_file.parent.glob(journal_file.name + "*"))
    assert journal  # the journal was written
    assert CANARY.encode() not in journal
    everything = "\n".join([*seen, caplog.text])
    assert caplog.text  # DEBUG logging really ran
    assert CANARY not in everything
