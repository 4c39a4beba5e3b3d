"""What the Nutanix backend declares, importable without connecting (for ``vmmove backends``)."""

from __future__ import annotations

from vmmove.backend import Capabilities

__all__ = ["CAPABILITIES"]

#: What AHV can do through Prism, the same on v4 and v2.0. ``cancel`` is false: a migrate
#: task is not cancellable (v4 ``isCancelable: false``), so the engine never asks and records
#: why. No downtime, bandwidth, auto-converge or post-copy control per migration; progress
#: is the task's percentage, no bytes. Cold moves are the core's (``relocate_stopped``):
#: stop, pin the stopped VM to the target host, power it on.
CAPABILITIES = Capabilities(
    live=True,
    cold=True,
    cancel=False,
    postcopy=False,
    max_downtime=False,
    bandwidth=False,
    auto_converge=False,
    progress_bytes=False,
    reserve=False,
    storage_move=False,
    choose_target=True,
    relocate_stopped=True,
)
