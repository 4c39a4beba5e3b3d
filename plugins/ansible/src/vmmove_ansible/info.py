"""``vmmove.core.info``: the hosts and VMs of an estate, as data. Changes nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import vmmove
from vmmove_ansible.common import CONNECTION_ARGS, connect, failure, plain

__all__ = ["ARGS", "run"]

ARGS: dict[str, dict[str, Any]] = {**CONNECTION_ARGS}


def run(params: Mapping[str, Any], *, check_mode: bool) -> dict[str, Any]:
    with connect(params) as conn:
        try:
            hosts, vms = conn.hosts(), conn.vms()
        except vmmove.VMMoveError as exc:
            raise failure(exc) from None
        return {
            "changed": False,
            "backend": conn.backend_name,
            "hosts": plain(hosts),
            "vms": plain(vms),
        }
