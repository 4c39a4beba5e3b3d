"""Docs checks for plugin authors: a generated table on a docs page is what the code says.

A page marks a generated block ``<!-- name -->`` ... ``<!-- /name -->``; a test compares it
with what the code writes (``vmmove.options.markdown_table(OPTIONS)`` for ``options-table``).
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["marked_block"]


def marked_block(page: Path, name: str) -> str:
    """The text between ``<!-- name -->`` and ``<!-- /name -->`` on ``page``, without the
    markers' own lines; AssertionError naming the page when it has no such block."""
    found = re.search(
        rf"<!-- {re.escape(name)} -->\n(.*?)\n?<!-- /{re.escape(name)} -->", page.read_text(), re.S
    )
    assert found is not None, f"{page} has no <!-- {name} --> block"
    return found.group(1)
