"""The observability extras load only when used: not by ``import vmmove``, ``vmmove --help``
or loading the plugins, and a migration runs the same without them installed."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("prometheus_client", "opentelemetry", "ansible")

_LOADED = f"""
import sys
print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))
"""


def _run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def test_import_vmmove_loads_none_of_them() -> None:
    assert _run("import vmmove" + _LOADED) == "[]"


def test_help_loads_none_of_them() -> None:
    code = (
        "from vmmove.cli import cli\n"
        "for args in (['--help'], ['metrics', '--help'], ['metrics', 'serve', '--help']):\n"
        "    try:\n"
        "        cli.main(args, prog_name='vmmove')\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
    )
    assert _run(code + _LOADED) == "[]"


def test_loading_the_plugins_loads_none_of_them() -> None:
    code = (
        "import vmmove\n"
        "from vmmove.plugins import load_plugins\n"
        "plugins = load_plugins()\n"
        "names = {n for n, _ in plugins.pm.list_name_plugin()}\n"
        "assert {'metrics', 'otel'} <= names, plugins.broken\n"
        "conn = vmmove.connect('sim://')\n"
        "conn.close()\n"
    )
    assert _run(code + _LOADED) == "[]"


def test_a_migration_runs_the_same_without_the_extras() -> None:
    # A None in sys.modules is how Python says "not installed" to find_spec and import. Only
    # the top packages: as on a machine without them, a submodule's lookup imports its package.
    code = (
        "import sys, logging\n"
        "for name in ('prometheus_client', 'opentelemetry'):\n"
        "    sys.modules[name] = None\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "import vmmove\n"
        "with vmmove.connect('sim://', store=vmmove.MemoryStore()) as conn:\n"
        "    print(conn.migrate('web-1', to='host-b').wait().phase.value)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "completed"
    assert "could not record" not in out.stderr, out.stderr
    assert "Traceback" not in out.stderr, out.stderr  # no observer raised either
