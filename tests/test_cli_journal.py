"""The journal from the command line: history, show, attach, and cancel from another process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from vmmove.cli import cli

VMMOVE = [sys.executable, "-m", "vmmove.cli"]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_history_and_show_read_the_journal() -> None:
    code, _ = run("--uri", "sim://", "migrate", "web-1", "--to", "host-b")
    assert code == 0
    code, out = run("history", "--json")
    assert code == 0
    records = json.loads(out)
    assert [r["vm_name"] for r in records] == ["web-1"]
    code, out = run("show", records[0]["id"])
    assert code == 0
    assert "completed" in out
    assert "host-b" in out
    code, out = run("show", records[0]["id"], "--json")
    assert json.loads(out)["vm_host"] == "host-b"


def test_show_and_cancel_of_unknown_records_are_not_found() -> None:
    assert run("show", "nope")[0] == 6
    assert run("cancel", "nope")[0] == 6
    assert run("attach", "nope")[0] == 6


def test_cancel_of_a_finished_migration_is_refused() -> None:
    run("--uri", "sim://", "migrate", "web-1", "--to", "host-b")
    record = json.loads(run("history", "--json")[1])[0]
    code, out = run("cancel", record["id"])
    assert code == 3
    assert "completed" in out


def test_cancel_from_another_process(journal_path: Path) -> None:
    env = {**os.environ, "VMMOVE_JOURNAL": str(journal_path)}
    # A long migration in real time (db-1 takes ~17 simulated seconds; 2x speed).
    mover = subprocess.Popen(
        [*VMMOVE, "--uri", "sim://?speed=2", "migrate", "db-1", "--to", "host-b", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert mover.stderr is not None
    migration_id = None
    for line in mover.stderr:  # the phases as they pass: wait for the transfer to start
        if line.startswith("Migration "):
            migration_id = line.split()[1].rstrip(":")
        if "transferring" in line:
            break
    assert migration_id is not None
    canceller = subprocess.run(
        [*VMMOVE, "cancel", migration_id],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert canceller.returncode == 0, canceller.stderr
    out, _ = mover.communicate(timeout=120)
    assert mover.returncode == 5
    record = json.loads(out)
    assert record["phase"] == "cancelled"
    assert record["vm_host"] == "host-a"
    assert any("another process" in w for w in record["warnings"])
