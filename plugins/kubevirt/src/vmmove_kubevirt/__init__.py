"""vmmove-kubevirt: the ``kubevirt://`` backend for vmmove.

Install it next to vmmove and connect::

    import vmmove

    with vmmove.connect("kubevirt://my-context/my-namespace") as conn:
        conn.migrate("web-1", to="node-b").wait()

``kubernetes`` is imported on the first connect, not with this package.
"""

from __future__ import annotations

__version__ = "0.1.0"
