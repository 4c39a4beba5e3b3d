"""The vmmove.core collection under the real ansible-playbook, against ``sim://``.

``sim://`` runs inside each module's process, so every task starts from the estate file it
is given. Idempotence is shown the way it matters: the same task, run against the estate
as it stands after the move (rendered from the first run's own result), reports no change.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

COLLECTIONS = Path(__file__).resolve().parents[1]  # holds ansible_collections/vmmove/core
CANARY = "s3cret-canary-pw"

ESTATE = """
[[host]]
name = "host-a"
cluster = "lab"
[[host]]
name = "host-b"
cluster = "lab"
[[host]]
name = "host-c"
cluster = "lab"
[[host]]
name = "host-d"
cluster = "lab"

[[vm]]
name = "web-1"
host = "{web1_host}"
memory_mib = 2048
dirty_mib_s = 20
[[vm]]
name = "gpu-1"
host = "host-a"
memory_mib = 4096
live_migratable = false
not_migratable_reason = "PCI passthrough"
[[vm]]
name = "app-1"
host = "host-c"
memory_mib = 1024
dirty_mib_s = 5
[[vm]]
name = "app-2"
host = "host-c"
memory_mib = 1024
power = "stopped"
"""

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  module_defaults:  # every vmmove task on the estate file, as a real play names its estate
    vmmove.core.info: &sim {uri: "sim://", options: {inventory: "{{ before }}"}}
    vmmove.core.migrate: *sim
    vmmove.core.evacuate: *sim
  tasks:
    - name: the estate, with a password that must never show
      vmmove.core.info: {password: "{{ canary }}"}
      register: info

    - name: check mode runs the pre-checks only
      vmmove.core.migrate: {vm: web-1, to: host-b}
      check_mode: true
      register: check_move

    - name: check mode refuses what the run would refuse
      vmmove.core.migrate: {vm: gpu-1, to: host-b}
      check_mode: true
      ignore_errors: true
      register: check_refused

    - name: a refused migration fails with the error type and the VM's host
      vmmove.core.migrate: {vm: gpu-1, to: host-b}
      ignore_errors: true
      register: refused

    - name: move web-1
      vmmove.core.migrate: {vm: web-1, to: host-b, max_downtime: 500}
      register: moved

    - name: the estate as it stands after the move, from the module's own answer
      ansible.builtin.template: {src: "{{ template }}", dest: "{{ after }}"}
      vars: {web1_host: "{{ moved.vm_host }}"}

    - name: the same task again, on that estate, changes nothing
      vmmove.core.migrate: {vm: web-1, to: host-b, options: {inventory: "{{ after }}"}}
      register: again

    - name: the plan, in check mode
      vmmove.core.evacuate: {host: host-c}
      check_mode: true
      register: plan

    - name: the evacuation
      vmmove.core.evacuate: {host: host-c}
      register: evacuated

    - name: an empty host has nothing to evacuate
      vmmove.core.evacuate: {host: host-d}
      register: empty

    - name: hand the results to the test
      ansible.builtin.copy:
        dest: "{{ results }}"
        content: "{{ {'info': info, 'check_move': check_move, 'check_refused': check_refused,
                      'refused': refused, 'moved': moved, 'again': again, 'plan': plan,
                      'evacuated': evacuated, 'empty': empty} | to_json }}"
      check_mode: false
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    """One ansible-playbook run (they start slowly); the tests read its results."""
    if shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("ansible-core is not installed (pip install 'vmmove-ansible[test]')")
    tmp = tmp_path_factory.mktemp("ansible")
    (tmp / "before.toml").write_text(ESTATE.format(web1_host="host-a"))
    (tmp / "estate.toml.j2").write_text(ESTATE.format(web1_host="{{ web1_host }}"))
    (tmp / "playbook.yml").write_text(PLAYBOOK)
    env = {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
        "ANSIBLE_CONFIG": str(tmp / "none.cfg"),  # no ansible.cfg of the machine's
        "ANSIBLE_LOCAL_TEMP": str(tmp / "local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp / "remote"),
        "ANSIBLE_HOME": str(tmp / "home"),
        "ANSIBLE_NOCOLOR": "1",
        "VMMOVE_JOURNAL": str(tmp / "journal.sqlite3"),
    }
    extra = {
        "ansible_python_interpreter": sys.executable,  # where vmmove is installed
        "before": str(tmp / "before.toml"),
        "after": str(tmp / "after.toml"),
        "template": str(tmp / "estate.toml.j2"),
        "results": str(tmp / "results.json"),
        "canary": CANARY,
    }
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-v",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            json.dumps(extra),
            "playbook.yml",
        ],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads((tmp / "results.json").read_text()), proc.stdout + proc.stderr, tmp


def estate(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def test_info_lists_the_estate(run: tuple[dict[str, Any], str, Path]) -> None:
    results, _, tmp = run
    info = results["info"]
    want = estate(tmp / "before.toml")
    assert info["changed"] is False
    assert info["backend"] == "sim"
    assert sorted(h["name"] for h in info["hosts"]) == sorted(h["name"] for h in want["host"])
    assert {v["name"]: v["host"] for v in info["vms"]} == {v["name"]: v["host"] for v in want["vm"]}


def test_check_mode_runs_the_prechecks_and_moves_nothing(
    run: tuple[dict[str, Any], str, Path],
) -> None:
    results, _, tmp = run
    check = results["check_move"]
    assert check["changed"] is True
    assert check["vm_host"] == "host-a"
    assert "record" not in check
    assert all(p["severity"] == "warning" for p in check["problems"])
    forecast = check["prediction"]  # check mode predicts the live move too
    assert (forecast["target"], forecast["policy"], forecast["converges"]) == (
        "host-b",
        "balanced",
        True,
    )
    assert forecast["total_time"] > 0
    refused = results["check_refused"]
    assert refused["failed"] is True
    assert refused["error_type"] == "PrecheckFailed"
    assert refused["vm_host"] == "host-a"
    assert "PCI passthrough" in json.dumps(refused["problems"])
    # Check mode wrote no migration record either.
    records = subprocess.run(
        [sys.executable, "-m", "vmmove.cli", "history", "--json"],
        env={**os.environ, "VMMOVE_JOURNAL": str(tmp / "journal.sqlite3")},
        capture_output=True,
        text=True,
        check=True,
    )
    ran = {r["vm_name"] for r in json.loads(records.stdout)}
    assert ran == {"gpu-1", "web-1", "app-1", "app-2"}  # the real runs only...
    count = sum(1 for r in json.loads(records.stdout) if r["vm_name"] == "gpu-1")
    assert count == 1  # ...the refusal once: its check-mode twin left nothing


def test_refused_migration_fails_with_type_and_host(run: tuple[dict[str, Any], str, Path]) -> None:
    refused = run[0]["refused"]
    assert refused["failed"] is True
    assert refused["error_type"] == "PrecheckFailed"
    assert refused["vm_host"] == "host-a"
    assert refused["changed"] is False
    assert [p["code"] for p in refused["problems"]]


def test_migrate_moves_then_is_idempotent(run: tuple[dict[str, Any], str, Path]) -> None:
    results, _, tmp = run
    moved = results["moved"]
    assert moved["changed"] is True
    assert moved["vm_host"] == "host-b"
    assert moved["record"]["phase"] == "completed"
    assert moved["record"]["source"] == "host-a"
    assert moved["record"]["figures"]["downtime_ms"] <= 500
    after = {v["name"]: v["host"] for v in estate(tmp / "after.toml")["vm"]}
    assert after["web-1"] == "host-b"  # rendered from the module's answer
    again = results["again"]
    assert again["changed"] is False
    assert again["vm_host"] == "host-b"
    assert "record" not in again


def test_evacuate_plans_in_check_mode_then_runs(run: tuple[dict[str, Any], str, Path]) -> None:
    results, _, tmp = run
    on_c = sorted(v["name"] for v in estate(tmp / "before.toml")["vm"] if v["host"] == "host-c")
    plan = results["plan"]
    assert plan["changed"] is True
    assert "report" not in plan
    assert sorted(m["vm_name"] for m in plan["plan"]["moves"]) == on_c
    done = results["evacuated"]
    assert done["changed"] is True
    report = done["report"]
    assert report["ok"] is True
    assert sorted(o["vm_name"] for o in report["outcomes"]) == on_c
    for outcome in report["outcomes"]:
        assert outcome["status"] == "moved"
        assert outcome["host"] not in (None, "host-c")
    empty = results["empty"]
    assert empty["changed"] is False
    assert empty["plan"]["moves"] == []


def test_the_password_never_shows(run: tuple[dict[str, Any], str, Path]) -> None:
    results, output, _ = run
    assert "TASK [the estate, with a password that must never show]" in output
    assert CANARY not in json.dumps(results)
    assert CANARY not in output


def test_documentation_matches_the_argument_specs(tmp_path: Path) -> None:
    """ansible-doc parses each module's DOCUMENTATION (with the shared fragment), and it
    documents exactly the options the module takes, with their types and defaults."""
    from vmmove_ansible import evacuate, info, migrate

    doc = shutil.which("ansible-doc", path=str(Path(sys.executable).parent))
    if doc is None:
        pytest.skip("ansible-core is not installed")
    names = {"migrate": migrate.ARGS, "evacuate": evacuate.ARGS, "info": info.ARGS}
    out = subprocess.run(
        [doc, "--json", *(f"vmmove.core.{n}" for n in names)],
        env={
            **os.environ,
            "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
            "ANSIBLE_CONFIG": str(tmp_path / "none.cfg"),
            "ANSIBLE_HOME": str(tmp_path / "home"),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    docs = json.loads(out.stdout)
    for name, args in names.items():
        options = docs[f"vmmove.core.{name}"]["doc"]["options"]
        assert set(options) == set(args), name
        for option, spec in args.items():
            assert options[option]["type"] == spec["type"], (name, option)
            assert options[option].get("default") == spec.get("default"), (name, option)
            assert bool(options[option].get("required")) == bool(spec.get("required"))
            assert options[option].get("choices") == spec.get("choices"), (name, option)
