"""For every test under this repository (core and plugins): its journal goes into its own
temporary folder, never the user's; and the fault tables the fault-matrix tests fill are
printed at the end of the session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

#: title -> rows of (fault, phase, outcome, error, where the VM runs)
_FAULT_TABLES: dict[str, list[tuple[str, str, str, str, str]]] = {}


@pytest.fixture(autouse=True)
def journal_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "journal.sqlite3"
    monkeypatch.setenv("VMMOVE_JOURNAL", str(path))
    return path


@pytest.fixture
def fault_table() -> Callable[[str, tuple[str, str, str, str, str]], None]:
    """``fault_table(title, (fault, phase, outcome, error, where))``: a row for the table of
    that title, printed at the end of the session (only rows of tests that got that far)."""

    def add(title: str, row: tuple[str, str, str, str, str]) -> None:
        _FAULT_TABLES.setdefault(title, []).append(row)

    return add


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for title, rows in _FAULT_TABLES.items():
        terminalreporter.section(title)
        terminalreporter.write_line("| fault | phase | outcome | error | VM runs on |")
        terminalreporter.write_line("|---|---|---|---|---|")
        for row in rows:
            terminalreporter.write_line("| " + " | ".join(row) + " |")


# The contract kit's own tests run broken toy backends through it with pytester.
pytest_plugins = ("pytester",)
