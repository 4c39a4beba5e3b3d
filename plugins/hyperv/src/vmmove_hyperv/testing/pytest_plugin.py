"""pytest fixtures for the fake Hyper-V hosts (registered through the ``pytest11`` entry
point of vmmove-hyperv)."""

from __future__ import annotations
