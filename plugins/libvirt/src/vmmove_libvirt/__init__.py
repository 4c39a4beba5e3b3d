"""vmmove-libvirt: the libvirt/KVM backend for vmmove.

Installed, it serves ``qemu://``, ``qemu+tcp://``, ``qemu+ssh://``... (any ``qemu+<transport>``)
and ``libvirt://NAME``::

    import vmmove

    with vmmove.connect("qemu+tcp://10.0.0.1,10.0.0.2/system") as conn:
        conn.migrate("web-1", to="kvm2").wait()

``libvirt`` (libvirt-python) is imported only when a connection is made.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
