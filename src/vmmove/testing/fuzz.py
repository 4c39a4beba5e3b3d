"""Hypothesis helpers for fuzzing a backend's parsers: whatever comes in, nothing but a
:class:`~vmmove.VMMoveError` may come out.

Needs hypothesis (``pip install 'vmmove[test]'``); nothing in vmmove imports this module.

.. code-block:: python

    from hypothesis import given
    from vmmove.testing.fuzz import anything, only_vmmove_errors

    @given(anything)
    def test_job_stats(value):
        only_vmmove_errors(parse_job_stats, value)  # any other exception fails the test
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import strategies as st

from vmmove.errors import VMMoveError

__all__ = ["anything", "only_vmmove_errors"]

T = TypeVar("T")

#: JSON-like values, nested: what a broken or hostile endpoint might send anywhere.
anything: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def only_vmmove_errors(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``fn(*args, **kwargs)``, or ``None`` if it raised a vmmove error; anything else
    propagates, so the test fails."""
    with contextlib.suppress(VMMoveError):
        return fn(*args, **kwargs)
    return None
