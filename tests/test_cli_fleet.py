"""``vmmove evacuate | rebalance | consolidate`` on the simulator's virtual clock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from vmmove import cli


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's environment or config file."""
    for name in ("VMMOVE_URI", "VMMOVE_PASSWORD", "VMMOVE_CONFIG", "VMMOVE_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    config_dir = tmp_path / "user-config"
    config_dir.mkdir()
    monkeypatch.setattr("platformdirs.user_config_dir", lambda appname: str(config_dir))


def run(*args: str) -> Result:
    return CliRunner().invoke(cli.cli, list(args), catch_exceptions=False)


def test_evacuate_dry_run_prints_the_plan_and_moves_nothing() -> None:
    result = run("evacuate", "host-a", "--dry-run")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Plan: evacuate host-a: 4 moves, 0 stays" in out
    for name in ("db-1", "web-1", "web-2", "batch-1"):
        assert name in out
    assert "evacuate host-a; host-" in out  # why it moves; why that target
    assert "score" in out
    assert "✓" not in out  # nothing ran


def test_evacuate_dry_run_json() -> None:
    result = run("evacuate", "host-c", "--dry-run", "--json")
    assert result.exit_code == 3  # a VM cannot move
    plan = json.loads(result.stdout)["plan"]
    assert plan["kind"] == "evacuate"
    assert plan["moves"] == []
    assert plan["stays"] == [
        {"vm": "gpu-1", "vm_name": "gpu-1", "host": "host-c",
         "reason": "cannot migrate live: PCI passthrough device"}
    ]  # fmt: skip


def test_evacuate_runs_and_reports_json() -> None:
    result = run("evacuate", "host-a", "--json", "--per-source", "3")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    report = data["report"]
    assert report["ok"] is True
    assert report["limits"]["per_source"] == 3
    assert {o["vm_name"]: o["status"] for o in report["outcomes"]} == dict.fromkeys(
        ("db-1", "web-1", "web-2", "batch-1"), "moved"
    )
    assert all(o["host"] != "host-a" for o in report["outcomes"])
    assert report["left_behind"] == []
    assert "completed" not in result.stdout.split("{", 1)[0]  # stdout holds the JSON alone


def test_evacuate_runs_with_a_line_per_move() -> None:
    result = run("evacuate", "host-a")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("✓ ") == 5  # four moves and the summary
    assert "evacuate host-a: 4 moved, 0 stayed" in result.stdout
    assert "hosts now empty: 1 of 1" in result.stdout


def test_evacuate_that_leaves_a_vm_exits_3_and_says_why() -> None:
    result = run("evacuate", "host-c")
    assert result.exit_code == 3
    assert "gpu-1 on host-c: cannot migrate live: PCI passthrough device" in result.stdout
    assert "hosts now empty: 0 of 1" in result.stdout


def test_rebalance_and_consolidate() -> None:
    result = run("rebalance", "--dry-run", "--json", "--threshold", "0.01")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["plan"]
    assert plan["kind"] == "rebalance"
    assert plan["moves"]
    assert all(m["source"] == "host-a" for m in plan["moves"])
    result = run("consolidate", "--cluster", "lab", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["plan"]["frees"] == ["host-a"]
    assert data["report"]["ok"] is True


def test_a_move_that_fails_everywhere_exits_4(tmp_path: Path) -> None:
    estate = tmp_path / "estate.toml"
    estate.write_text(
        'link_mib_s = 100\n'
        '[[host]]\nname = "a"\n[[host]]\nname = "b"\n[[host]]\nname = "c"\n'
        '[[vm]]\nname = "hot"\nhost = "a"\nmemory_mib = 4096\nresident_mib = 2048\n'
        'working_set_mib = 2048\ndirty_mib_s = 500\n'
    )  # fmt: skip
    result = run("--uri", f"sim://{estate}", "evacuate", "a", "--policy", "safe")
    assert result.exit_code == 4, result.output
    assert "hot on a:" in result.stdout
    assert "stalled: remaining data stopped falling (after 2 attempts); no other host" in (
        result.stdout
    )
    assert "1 move(s) predicted not to converge by pre-copy alone" in result.stdout


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["evacuate", "nope", "--dry-run"], 6, "no host 'nope'"),
        (["rebalance", "--cluster", "nope"], 6, "no cluster 'nope'"),
        (["consolidate", "--cluster", "nope"], 6, "no cluster 'nope'"),
        (["evacuate", "host-a", "--per-source", "0"], 2, "--per-source"),
        (["evacuate", "host-a", "--headroom", "2"], 2, "--headroom"),
        (["evacuate", "host-a", "--policy", "yolo"], 2, "unknown policy 'yolo'"),
        (["evacuate"], 2, "Missing argument"),
    ],
)
def test_bad_input(args: list[str], code: int, says: str) -> None:
    result = run(*args)
    assert result.exit_code == code, result.output
    assert says in result.stderr
