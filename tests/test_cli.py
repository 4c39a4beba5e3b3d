"""The ``vmmove`` command line, driven through click's CliRunner on the simulator.

Plain ``sim://`` runs on a virtual clock: a migration completes as fast as the CLI reads
its events, so nothing here sleeps or races the wall clock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner, Result

import vmmove
from vmmove import cli
from vmmove.plugins import BackendSpec, load_plugins
from vmmove.sim import Fault, SimBackend

CANARY = "canary-Pa55-7f3e9b"  # a password that must never show up in any output


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's environment or config file."""
    for name in ("VMMOVE_URI", "VMMOVE_PASSWORD", "VMMOVE_CONFIG", "VMMOVE_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    config_dir = tmp_path / "user-config"
    config_dir.mkdir()
    monkeypatch.setattr("platformdirs.user_config_dir", lambda appname: str(config_dir))


@pytest.fixture
def user_config(tmp_path: Path) -> Path:
    return tmp_path / "user-config" / "config.toml"


def run(*args: str, env: Mapping[str, str] | None = None, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli.cli, list(args), env=env, input=stdin, catch_exceptions=False)


def error_line(result: Result) -> str:
    """The one line a failing command leaves on stderr."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vmmove: error: ")
    assert "Traceback" not in result.output
    return lines[0]


# ---- a backend that can be unreachable or refuse credentials -------------------------------
received: list[Mapping[str, Any]] = []


def _fake_factory(uri: str, options: Mapping[str, Any]) -> vmmove.Backend:
    received.append(options)
    host = urlsplit(uri).hostname
    if host == "down.example":
        raise vmmove.ConnectionFailed("cannot reach down.example:443: connection refused")
    password = options.get("password")
    if not isinstance(password, vmmove.Secret) or password.reveal() != "right":
        raise vmmove.AuthenticationFailed(f"{host} refused the credentials")
    return SimBackend()


@pytest.fixture
def fake_backend(monkeypatch: pytest.MonkeyPatch) -> list[Mapping[str, Any]]:
    spec = BackendSpec(
        scheme="fake", factory=_fake_factory, description="test", capabilities=None, plugin="t"
    )
    monkeypatch.setitem(load_plugins().backends._specs, "fake", spec)
    received.clear()
    return received


# ---- help and startup -----------------------------------------------------------------------
def test_help_documents_commands_and_exit_codes() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for command in ("backends", "hosts", "vms", "check", "migrate", "cancel", "demo"):
        assert command in result.stdout
    for code in cli.ExitCode:
        assert f"\n    {code.value:<4} " in result.stdout


def test_module_docstring_lists_every_exit_code() -> None:
    assert cli.__doc__ is not None
    for code in cli.ExitCode:
        assert f"\n{code.value:<4}  " in cli.__doc__


def test_import_does_not_load_rich() -> None:
    code = "import sys, vmmove.cli; print('rich' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- read commands --------------------------------------------------------------------------
def test_backends_text_and_json(fake_backend: object) -> None:
    text = run("backends")
    assert text.exit_code == 0
    assert "sim://" in text.stdout
    assert "not declared" in text.stdout  # the fake backend declares no capabilities
    data = json.loads(run("backends", "--json").stdout)
    sim = next(b for b in data["backends"] if b["scheme"] == "sim")
    assert sim["capabilities"]["live"] is True
    assert data["broken"] == []


def test_backends_reports_broken_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load_plugins(), "broken", {"vmmove-xen": "ImportError: no xen"})
    assert "vmmove-xen failed to load" in run("backends").stdout
    data = json.loads(run("backends", "--json").stdout)
    assert data["broken"] == [{"plugin": "vmmove-xen", "error": "ImportError: no xen"}]


def test_hosts() -> None:
    assert "edge-2" in run("hosts").stdout
    hosts = json.loads(run("hosts", "--json").stdout)
    host_a = next(h for h in hosts if h["id"] == "host-a")
    assert host_a["state"] == "up"
    assert host_a["capacity"]["memory"] == 128 << 30
    assert host_a["extra"]["link_mib_s"] == "1170"


def test_vms() -> None:
    result = run("vms")
    assert "PCI passthrough" in result.stdout
    vms = {v["name"]: v for v in json.loads(run("vms", "--json").stdout)}
    assert vms["batch-1"]["power"] == "stopped"
    assert vms["gpu-1"]["live_migratable"] is False
    assert vms["db-1"]["memory"] == 16 << 30


def test_check_passes() -> None:
    result = run("check", "db-1", "--to", "host-b")
    assert result.exit_code == 0
    assert "can move to host-b" in result.stdout
    data = json.loads(run("check", "db-1", "--to", "host-b", "--json").stdout)
    assert data == {"vm": "db-1", "target": "host-b", "ok": True, "problems": []}


def test_check_predicts_the_migration_it_would_start() -> None:
    data = json.loads(run("check", "db-1", "--to", "host-b", "--predict", "--json").stdout)
    p = data["prediction"]
    assert (p["vm"], p["policy"], p["converges"]) == ("db-1", "balanced", True)
    assert p["total_time"] > 0
    assert p["data"] >= 8 << 30  # db-1's resident memory crosses at least once
    text = run("check", "db-1", "--to", "host-b", "--predict", "--policy", "minimal-downtime")
    assert "post-copy" in text.stdout
    assert "dirty rate" in text.stdout  # says what it assumed
    # the prediction of what would really happen: the simulator agrees on the figures
    record = vmmove.connect("sim://").migrate("db-1", to="host-b").wait()
    measured = record.figures.total_time
    assert measured is not None
    assert p["total_time"] == pytest.approx(measured, rel=0.15)  # set-up included


@pytest.mark.parametrize(("flag", "postcopy"), [((), False), (("--allow-postcopy",), True),
                                              (("--no-postcopy",), False)])  # fmt: skip
def test_check_predicts_the_callers_postcopy_choice(flag: tuple[str, ...], postcopy: bool) -> None:
    # cache-1 dirties memory faster than its link: balanced's non-convergence step fires
    out = run("check", "cache-1", "--predict", "--json", *flag)
    assert out.exit_code == 0, out.output
    p = json.loads(out.stdout)["prediction"]
    assert p["postcopy"] is postcopy
    action = "post-copy" if postcopy else "auto-converge(sized)"
    assert f"dirty-rate>=80%-of-transfer -> {action}" in p["steps"]


def test_check_refused_gives_reasons_and_exit_3() -> None:
    result = run("check", "gpu-1", "--to", "host-a")
    assert result.exit_code == cli.ExitCode.REFUSED
    assert "not-migratable" in result.stdout
    assert "PCI passthrough device" in result.stdout
    result = run("check", "batch-1", "--live", "--json")
    assert result.exit_code == cli.ExitCode.REFUSED
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert [p["code"] for p in data["problems"]] == ["not-running"]
    assert data["problems"][0]["severity"] == "error"


# ---- migrate --------------------------------------------------------------------------------
def test_migrate_shows_phases_and_summary() -> None:
    result = run("migrate", "db-1", "--to", "host-b")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for phase in ("preparing", "requesting to host-b (live)", "transferring", "completed"):
        assert phase in out
    assert "db-1 runs on host-b" in out
    assert "iteration>=2" in out  # a policy step fired and is listed
    for label in ("total time", "downtime", "data sent", "iterations", "policy"):
        assert label in out


def test_migrate_json_is_the_final_record() -> None:
    result = run("migrate", "app-1", "--to", "edge-2", "--max-downtime", "200", "--json")
    assert result.exit_code == 0
    record = json.loads(result.stdout)  # stdout holds the JSON alone
    assert record["phase"] == "completed"
    assert record["vm_host"] == "edge-2"
    assert record["mode"] == "live"
    assert record["figures"]["iterations"] > 1
    assert record["figures"]["downtime_ms"] > 0
    assert any("clamped to max_downtime 200 ms" in s["reason"] for s in record["steps"])
    assert "transferring" in result.stderr  # the human display went to stderr


def test_the_caller_s_limits_reach_the_migration() -> None:
    """``--no-postcopy`` and ``--max-slowdown`` arrive as the spec's; the sample's guest
    converges within them."""
    args = ("--to", "edge-2", "--no-postcopy", "--max-slowdown", "30", "--json")
    predicted = json.loads(run("check", "app-1", "--predict", *args).stdout)["prediction"]
    assert predicted["converges"] is True
    record = json.loads(run("migrate", "app-1", *args).stdout)
    assert (record["phase"], record["vm_host"]) == ("completed", "edge-2")


def test_migrate_lets_placement_choose_and_cold_moves_stopped_vm() -> None:
    result = run("migrate", "batch-1", "--cold", "--bandwidth", "100", "--json")
    assert result.exit_code == 0
    record = json.loads(result.stdout)
    assert record["mode"] == "cold"
    assert record["vm_host"] not in (None, record["source"])


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["migrate", "nope", "--to", "host-b"], 6, "no VM 'nope'"),
        (["check", "nope"], 6, "no VM 'nope'"),
        (["migrate", "web-1", "--to", "nowhere"], 6, "no host 'nowhere'"),
        (["--uri", "bogus://x", "vms"], 2, "no backend serves bogus://"),
        (["--uri", "no-scheme", "hosts"], 2, "has no scheme"),
        (["--uri", "sim://?speed=fast", "vms"], 2, "speed"),
        (["--uri", "sim:///nonexistent/inventory.toml", "vms"], 2, "cannot read inventory"),
        (["migrate", "web-1", "--max-downtime", "abc"], 2, "--max-downtime"),
        (["migrate", "web-1", "--max-downtime", "0"], 2, "--max-downtime"),
        (["migrate", "web-1", "--bandwidth", "-5"], 2, "--bandwidth"),
        (["migrate", "web-1", "--max-slowdown", "0"], 2, "--max-slowdown"),
        (["check", "web-1", "--max-slowdown", "100"], 2, "--max-slowdown"),
        (["migrate", "web-1", "--policy", "yolo"], 2, "unknown policy 'yolo'"),
        (["migrate", "web-1", "--live", "--cold"], 2, "exclude each other"),
        (["migrate"], 2, "Missing argument"),
        (["demo", "--speed", "0"], 2, "--speed"),
        (["--nope"], 2, "No such option"),
        (["frobnicate"], 2, "No such command"),
        (["migrate", "batch-1", "--live", "--to", "host-b"], 3, "batch-1 is stopped"),
        (["migrate", "gpu-1", "--to", "host-a"], 3, "PCI passthrough device"),
        (["migrate", "web-1", "--to", "host-a"], 3, "already runs on host-a"),
        (["cancel", "0123abcd"], 6, "no migration record '0123abcd'"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code(args: list[str], code: int, says: str) -> None:
    result = run(*args)
    assert result.exit_code == code
    assert says in error_line(result)


def test_refused_migration_json_still_prints_the_record() -> None:
    result = run("migrate", "gpu-1", "--to", "host-a", "--json")
    assert result.exit_code == cli.ExitCode.REFUSED
    record = json.loads(result.stdout)
    assert record["error_type"] == "PrecheckFailed"
    assert record["vm_host"] == "host-c"


@pytest.fixture
def faulty(monkeypatch: pytest.MonkeyPatch) -> Callable[[Fault], None]:
    """Arm a simulator fault in the connection the CLI is about to open."""

    def arm(fault: Fault) -> None:
        real_connect = vmmove.connect

        def connect(uri: str | None = None, **options: Any) -> vmmove.Connection:
            conn = real_connect(uri, **options)
            assert isinstance(conn.backend, SimBackend)
            conn.backend.inject(fault)
            return conn

        monkeypatch.setattr(vmmove, "connect", connect)

    return arm


def test_failed_migration_exits_4_and_says_where_the_vm_runs(
    faulty: Callable[[Fault], None],
) -> None:
    faulty(Fault(kind="target-fails", vm="web-1", phase=vmmove.Phase.TRANSFERRING))
    result = run("migrate", "web-1", "--to", "host-b")
    assert result.exit_code == cli.ExitCode.FAILED
    assert "failed: web-1 runs on host-a" in result.stdout
    assert "\n  error " in result.stdout  # the summary gives the reason too
    line = error_line(result)
    assert "VM running on host-a" in line


def test_reservation_refused_exits_3(faulty: Callable[[Fault], None]) -> None:
    faulty(Fault(kind="reserve-refused", vm="web-1"))
    result = run("migrate", "web-1", "--to", "host-b")
    assert result.exit_code == cli.ExitCode.REFUSED
    assert "refused to reserve" in error_line(result)


def test_unexpected_error_is_one_line_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: object) -> list[vmmove.HostInfo]:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(vmmove.Connection, "hosts", boom)
    result = run("hosts")
    assert result.exit_code == cli.ExitCode.INTERNAL
    assert "internal error: RuntimeError: kaboom" in error_line(result)
    with pytest.raises(RuntimeError):  # and the traceback is there for those who ask
        run("hosts", env={"VMMOVE_DEBUG": "1"})


# ---- Ctrl-C ---------------------------------------------------------------------------------
def _interrupt_during_transfer(monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    """Send SIGINT to ourselves (as a terminal would) at the first transfer progress."""
    original = cli._Display.event
    sent: list[bool] = []

    def event(self: cli._Display, ev: vmmove.MigrationEvent, rec: vmmove.MigrationRecord) -> None:
        original(self, ev, rec)
        if ev.kind is vmmove.EventKind.PROGRESS and ev.phase is vmmove.Phase.TRANSFERRING:
            while len(sent) < times:
                sent.append(True)
                signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(cli._Display, "event", event)


def test_ctrl_c_cancels_and_exits_5(monkeypatch: pytest.MonkeyPatch) -> None:
    _interrupt_during_transfer(monkeypatch, times=1)
    before = signal.getsignal(signal.SIGINT)  # not always Python's default (a background job)
    result = run("migrate", "app-1", "--to", "edge-2")
    assert result.exit_code == cli.ExitCode.CANCELLED
    assert "cancel requested" in result.stdout
    assert "cancelled: app-1 runs on edge-1" in result.stdout
    assert "cancelled" in error_line(result)
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_second_ctrl_c_stops_watching(monkeypatch: pytest.MonkeyPatch) -> None:
    _interrupt_during_transfer(monkeypatch, times=2)
    result = run("migrate", "app-1", "--to", "edge-2")
    assert result.exit_code == cli.ExitCode.INTERRUPTED
    assert "stopped watching migration" in result.stderr
    assert "it goes on (transferring, VM on edge-1)" in result.stderr


def test_real_sigint_cancels_a_real_time_migration() -> None:
    """End to end: a real process, a real signal, on a sped-up real clock."""
    vmmove_cmd = [sys.executable, "-c", "from vmmove.cli import main; main()"]
    proc = subprocess.Popen(
        [*vmmove_cmd, "--uri", "sim://?speed=10", "migrate", "app-1", "--to", "edge-2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "VMMOVE_CONFIG": os.devnull},
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # synchronise on output, not on time
        if "transferring" in line:
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == cli.ExitCode.CANCELLED, err
    assert "app-1 runs on edge-1" in out


# ---- cancel ---------------------------------------------------------------------------------
def test_cancel_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = vmmove.connect("sim://")
    migration = conn.migrate("db-1", "host-b")  # on a virtual clock: waits for a driver
    monkeypatch.setattr(cli, "_connect", lambda ctx: conn)
    result = run("cancel", migration.id)
    assert result.exit_code == 0
    assert f"cancel requested for migration {migration.id}" in result.stdout
    with pytest.raises(vmmove.MigrationCancelled):
        migration.wait()
    result = run("cancel", migration.id)
    assert result.exit_code == cli.ExitCode.REFUSED
    assert "cannot be cancelled now (cancelled; VM on host-a)" in error_line(result)


# ---- demo -----------------------------------------------------------------------------------
def test_demo() -> None:
    result = run("demo", "--speed", "1000")
    assert result.exit_code == 0
    assert "vmmove demo" in result.stdout
    assert f"{cli.DEMO_VM} runs on {cli.DEMO_TARGET}" in result.stdout
    record = json.loads(run("demo", "--speed", "1000", "--json").stdout)
    assert record["phase"] == "completed"
    assert record["figures"]["iterations"] >= 3  # the demo shows pre-copy converging


# ---- configuration and credentials ----------------------------------------------------------
def _inventory(tmp_path: Path) -> Path:
    path = tmp_path / "lab.toml"
    path.write_text(
        '[[host]]\nname = "alpha"\n[[host]]\nname = "beta"\n'
        '[[vm]]\nname = "svc-1"\nhost = "alpha"\n'
    )
    return path


def _write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_uri_from_default_config_file(tmp_path: Path, user_config: Path) -> None:
    _write(user_config, f'uri = "sim://{_inventory(tmp_path)}"\n', 0o644)
    hosts = [h["name"] for h in json.loads(run("hosts", "--json").stdout)]
    assert hosts == ["alpha", "beta"]


def test_command_line_beats_env_beats_config(tmp_path: Path, user_config: Path) -> None:
    _write(user_config, 'uri = "bogus://"\n', 0o600)
    env_only = run("vms", "--json", env={"VMMOVE_URI": f"sim://{_inventory(tmp_path)}"})
    assert [v["name"] for v in json.loads(env_only.stdout)] == ["svc-1"]
    both = run("--uri", "sim://", "vms", "--json", env={"VMMOVE_URI": "bogus://"})
    assert "db-1" in {v["name"] for v in json.loads(both.stdout)}


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize(
    "text",
    [
        f'uri = "fake://kvm.example"\npassword = "{CANARY}"\n',
        f'uri = "fake://kvm.example"\n[options]\npassword = "{CANARY}"\n',
        f'uri = "fake://root:{CANARY}@kvm.example"\n',
    ],
)
def test_config_with_password_readable_by_others_is_refused(
    tmp_path: Path, fake_backend: list[Mapping[str, Any]], text: str
) -> None:
    config = _write(tmp_path / "c.toml", text, 0o644)
    result = run("--config", str(config), "hosts")
    assert result.exit_code == cli.ExitCode.USAGE
    line = error_line(result)
    assert "holds a password but others can read it (mode 0644)" in line
    assert "chmod 600" in line
    assert CANARY not in result.output
    assert fake_backend == []  # refused before connecting


def test_config_password_and_options_reach_the_backend_as_secret(
    tmp_path: Path, fake_backend: list[Mapping[str, Any]]
) -> None:
    config = _write(
        tmp_path / "c.toml",
        'uri = "fake://kvm.example"\n[options]\npassword = "right"\ntls_verify = false\n',
        0o600,
    )
    result = run("hosts", env={"VMMOVE_CONFIG": str(config)})
    assert result.exit_code == 0, result.output
    (options,) = fake_backend
    assert options["tls_verify"] is False
    assert isinstance(options["password"], vmmove.Secret)
    assert options["password"].reveal() == "right"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('uri = "sim://"\nusername = "x"\n', "unknown key(s) username"),
        ("uri = [1]\n", "uri must be a string"),
        ("uri = \n", "not valid TOML"),
        ('options = "x"\n', "[options] must be a table"),
    ],
)
def test_bad_config_file_exits_2(tmp_path: Path, text: str, says: str) -> None:
    config = _write(tmp_path / "c.toml", text, 0o600)
    result = run("--config", str(config), "vms")
    assert result.exit_code == cli.ExitCode.USAGE
    assert says in error_line(result)


def test_named_config_file_must_exist(tmp_path: Path) -> None:
    result = run("vms", env={"VMMOVE_CONFIG": str(tmp_path / "missing.toml")})
    assert result.exit_code == cli.ExitCode.USAGE
    assert "does not exist" in error_line(result)


def test_unreachable_endpoint_exits_7(fake_backend: object) -> None:
    result = run("--uri", "fake://down.example", "vms")
    assert result.exit_code == cli.ExitCode.CONNECTION
    assert "cannot reach down.example" in error_line(result)


def test_wrong_password_exits_7_and_never_shows_it(fake_backend: object) -> None:
    result = run("--uri", "fake://kvm.example", "vms", env={"VMMOVE_PASSWORD": CANARY})
    assert result.exit_code == cli.ExitCode.CONNECTION
    assert "refused the credentials" in error_line(result)
    assert CANARY not in result.output


def test_ask_password_prompts_with_hidden_input(
    fake_backend: list[Mapping[str, Any]],
) -> None:
    result = run("--uri", "fake://kvm.example", "--ask-password", "vms", stdin=f"{CANARY}\n")
    assert result.exit_code == cli.ExitCode.CONNECTION
    assert "Password:" in result.stderr
    assert CANARY not in result.output
    assert fake_backend[0]["password"].reveal() == CANARY
    ok = run("--uri", "fake://kvm.example", "--ask-password", "vms", "--json", stdin="right\n")
    assert ok.exit_code == 0
    json.loads(ok.stdout)  # the prompt went to stderr: stdout is clean JSON


def test_password_in_command_line_uri_is_refused(fake_backend: list[Mapping[str, Any]]) -> None:
    result = run("--uri", f"fake://root:{CANARY}@kvm.example", "vms")
    assert result.exit_code == cli.ExitCode.USAGE
    assert "--uri holds a password" in error_line(result)
    assert CANARY not in result.output
    assert fake_backend == []


def test_password_from_the_keyring_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    store = {("vmmove", "sim://"): "from-keyring"}
    fake = types.SimpleNamespace(get_password=lambda service, user: store.get((service, user)))
    monkeypatch.setitem(sys.modules, "keyring", fake)
    monkeypatch.delenv("VMMOVE_PASSWORD", raising=False)
    seen: dict[str, object] = {}
    real_connect = vmmove.connect

    def spy(uri: str | None = None, **options: object) -> vmmove.Connection:
        seen.update(options)
        return real_connect(uri, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(vmmove, "connect", spy)
    result = run("--uri", "sim://", "hosts")
    assert result.exit_code == 0, result.output
    assert seen["password"] == vmmove.Secret("from-keyring")
    assert "from-keyring" not in result.output
