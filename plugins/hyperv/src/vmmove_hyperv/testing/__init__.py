"""A fake Hyper-V estate reached over a wire-level WinRM endpoint, to test Hyper-V
automation without Windows.

:class:`FakeHyperV` puts an emulated fabric of Hyper-V hosts (:class:`Fabric`: VMs shared by
the hosts, migration jobs that progress on a clock, faults) behind
:class:`~vmmove_hyperv.testing.wsman.WinRMServer`, which pywinrm cannot tell from Windows::

    from vmmove_hyperv.testing import FakeHyperV

    with FakeHyperV(shape="7") as fake:                 # hv1, hv2, hv3 and six VMs
        conn = vmmove.connect(fake.uri, password=vmmove.Secret(fake.password))

:class:`HyperVShell` is the emulation alone (``run(host, script)``), in the output shape of
Windows PowerShell 5.1 or PowerShell 7 (:data:`SHAPES`). In pytest, the ``fake_hyperv``
fixture (:mod:`vmmove_hyperv.testing.pytest_plugin`); as a process,
``python -m vmmove_hyperv.testing``.
"""

from __future__ import annotations

from vmmove_hyperv.testing.emulation import SHAPES, HyperVShell, Shape
from vmmove_hyperv.testing.fabric import (
    Fabric,
    FakeHost,
    FakeJob,
    FakeVM,
    JobFailure,
    ManualClock,
    Timing,
)
from vmmove_hyperv.testing.fake import DEFAULT_PASSWORD, DEFAULT_USER, FakeHyperV
from vmmove_hyperv.testing.shell import Output, PowerShell

__all__ = [
    "DEFAULT_PASSWORD",
    "DEFAULT_USER",
    "SHAPES",
    "Fabric",
    "FakeHost",
    "FakeHyperV",
    "FakeJob",
    "FakeVM",
    "HyperVShell",
    "JobFailure",
    "ManualClock",
    "Output",
    "PowerShell",
    "Shape",
    "Timing",
]
