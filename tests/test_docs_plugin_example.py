"""docs/plugins.md's complete plugin is correct as printed: the module passes ``mypy --strict``,
its pyproject.toml is a buildable project that registers it, and the contract kit passes
against it, discovered through its entry point as an installed plugin would be.

The page marks each file with ``<!-- docs-test: NAME -->`` right before its fenced block.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

# Loaded before pytester snapshots sys.modules: an in-process run drops the modules it
# imported itself, and a second run would then see two copies of the engine's classes.
import vmmove
import vmmove.engine
import vmmove.testing.contract
from vmmove.plugins import load_plugins

PAGE = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
_BLOCK = re.compile(
    r"<!-- docs-test: (?P<name>\S+) -->\s*```(?P<lang>\w+)\n(?P<body>.*?)\n```\n", re.DOTALL
)
FILES = {"vmmove_toy.py": "python", "pyproject.toml": "toml", "test_toy.py": "python"}


def blocks() -> dict[str, str]:
    found: dict[str, str] = {}
    for m in _BLOCK.finditer(PAGE.read_text()):
        assert m["name"] not in found, f"{m['name']} is marked twice on the page"
        assert m["lang"] == FILES.get(m["name"]), f"{m['name']} fenced as {m['lang']}"
        found[m["name"]] = m["body"] + "\n"
    return found


@pytest.fixture
def toy_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The page's module on sys.path beside a dist-info made from the page's pyproject: an
    installed distribution to importlib.metadata, found through its entry point."""
    files = blocks()
    site = tmp_path / "site-packages"
    site.mkdir()
    (site / "vmmove_toy.py").write_text(files["vmmove_toy.py"])
    project = tomllib.loads(files["pyproject.toml"])["project"]
    dist = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    (dist / "entry_points.txt").write_text(
        "".join(
            f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in eps.items())
            for group, eps in project["entry-points"].items()
        )
    )
    monkeypatch.syspath_prepend(str(site))
    load_plugins(reload=True)
    yield site
    monkeypatch.undo()
    sys.modules.pop("vmmove_toy", None)
    load_plugins(reload=True)


def test_the_page_marks_the_module_its_pyproject_and_its_test() -> None:
    assert set(blocks()) == set(FILES)


def test_the_pyproject_is_complete() -> None:
    data = tomllib.loads(blocks()["pyproject.toml"])
    build = data["build-system"]
    assert build["requires"], "[build-system] requires is empty"
    assert build["build-backend"]
    project = data["project"]
    assert project["name"] == "vmmove-toy"
    assert project["version"]
    assert any(re.match(r"vmmove\b", d) for d in project["dependencies"])
    # The entry point names the module the page prints.
    assert project["entry-points"]["vmmove"] == {"toy": "vmmove_toy"}


def test_the_module_passes_mypy_strict(tmp_path: Path) -> None:
    files = blocks()
    for name in ("vmmove_toy.py", "test_toy.py"):
        (tmp_path / name).write_text(files[name])
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "vmmove_toy.py", "test_toy.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found in 2 source files" in result.stdout


def test_the_contract_kit_passes_against_it(pytester: pytest.Pytester, toy_installed: Path) -> None:
    assert load_plugins().backends.get("toy").plugin == "toy"
    pytester.makepyfile(test_toy=blocks()["test_toy.py"])
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs")
    outcomes = result.parseoutcomes()
    assert set(outcomes) <= {"passed", "skipped"}, result.stdout.str()
    assert outcomes["passed"] >= 20, outcomes
    # A skip is allowed only where the toy declares no capability, never for a missing setup.
    skips = [line for line in result.outlines if line.startswith("SKIPPED")]
    assert len(skips) == outcomes.get("skipped", 0)
    assert all("declares no" in line for line in skips), skips


def test_its_options_are_parsed_by_the_core(toy_installed: Path) -> None:
    with vmmove.connect("toy://?copy_polls=2", store=vmmove.MemoryStore()) as conn:
        assert conn.migrate("vm-1", to="h2").wait(60).vm_host == "h2"
    for bad in ("toy://?copy_polls=two", "toy://?clock=virtual"):
        with pytest.raises(vmmove.InvalidInput):
            vmmove.connect(bad)


def started(request_id: str) -> vmmove.JobRef:
    """The reference the engine saves before it calls start."""
    mode = vmmove.MigrationMode.LIVE
    return vmmove.JobRef.start(request_id=request_id, vm="vm-1", target="h2", mode=mode, at=0.0)


def test_it_never_answers_from_a_stale_view(toy_installed: Path) -> None:
    with vmmove.connect("toy://", store=vmmove.MemoryStore()) as conn:
        toy = conn.backend
        vm, target = conn.vm("vm-1"), conn.host("h2")
        job = toy.start(
            vm, target, vmmove.MigrationSpec(vm="vm-1"), vmmove.MigrationMode.LIVE,
            policy=vmmove.PRESETS["balanced"], needs=frozenset(), reservation=None,
            request_id="r-1",
        )  # fmt: skip
        toy.reachable = False  # type: ignore[attr-defined]
        with pytest.raises(vmmove.ConnectionFailed):
            toy.poll(job)
        with pytest.raises(vmmove.ConnectionFailed):
            toy.locate("vm-1")
        with pytest.raises(vmmove.ConnectionFailed):
            toy.attach(started("r-1"))
        toy.reachable = True  # type: ignore[attr-defined]
        assert toy.attach(started("r-1")).id == job.id
        with pytest.raises(vmmove.NotFound):
            toy.attach(started("r-2"))
