"""vmmove-hyperv: the ``hyperv://`` backend for vmmove (Hyper-V over WinRM).

``winrm`` (pywinrm) is imported on the first connect, not with this package.
"""

from __future__ import annotations

__version__ = "0.1.0"
