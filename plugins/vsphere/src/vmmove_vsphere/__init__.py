"""vmmove-vsphere: the VMware vSphere backend for vmmove (``vsphere://``), on pyVmomi.

>>> import vmmove
>>> conn = vmmove.connect(
...     "vsphere://administrator%40vsphere.local@vcenter.example/DC0",
...     password=vmmove.Secret("..."),
...     ca_file="/etc/ssl/vcenter-ca.pem",
... )  # doctest: +SKIP

Importing this package is cheap: pyVmomi loads only when a connection is made.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
