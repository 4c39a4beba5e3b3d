"""docs/errors.md carries the outcome classifier's table, and it matches the code."""

from __future__ import annotations

import re
from pathlib import Path

from vmmove.outcomes import OUTCOMES

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


def test_the_errors_page_has_the_classifier_table_as_the_code_has_it() -> None:
    text = DOC.read_text()
    block = re.search(r"<!-- outcomes-table:.*?-->\n(.*?)\n<!-- /outcomes-table -->", text, re.S)
    assert block is not None, "the generated table is missing from docs/errors.md"
    rows = [r for r in block.group(1).splitlines()[2:] if r.strip()]
    assert len(rows) == len(OUTCOMES)
    for row, outcome in zip(rows, OUTCOMES, strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == f"`{outcome.error_type}`"
        assert cells[1] == (outcome.phase.value if outcome.phase else "-")
        assert cells[2] == f"`{outcome.error.__name__}`"
        assert cells[3] == f"{outcome.exit_code.value} ({outcome.exit_code.name.lower()})"
        assert cells[4] == outcome.meaning
