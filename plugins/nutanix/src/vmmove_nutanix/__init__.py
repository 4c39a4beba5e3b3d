"""vmmove-nutanix: the ``nutanix://`` backend for vmmove (Nutanix AHV through Prism).

Install it next to vmmove and connect::

    import vmmove

    with vmmove.connect("nutanix://admin@prism-central:9440", password=vmmove.Secret("...")) as c:
        c.migrate("web-1", to="node-b").wait()

``nutanix://`` speaks Prism Central's v4 API (or Prism Element's v2.0 when that is all the
server answers); ``nutanix+v2://`` speaks v2.0 only. ``requests`` is imported on the first
connect, not with this package.
"""

from __future__ import annotations

__version__ = "0.1.0"
