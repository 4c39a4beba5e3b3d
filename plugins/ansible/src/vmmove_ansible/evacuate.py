"""``vmmove.core.evacuate``: empty a host. Check mode returns the plan; otherwise the plan
runs within the limits and the report is the result. A host with nothing to move reports
``changed: false``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import vmmove
from vmmove import fleet
from vmmove_ansible.common import CONNECTION_ARGS, ModuleFailure, connect, failure

__all__ = ["ARGS", "run"]

ARGS: dict[str, dict[str, Any]] = {
    **CONNECTION_ARGS,
    "host": {"type": "str", "required": True},
    "policy": {"type": "str", "default": "balanced"},
    "max_downtime": {"type": "int"},
    "headroom": {"type": "float", "default": 0.0},
    "per_source": {"type": "int", "default": 2},
    "per_target": {"type": "int", "default": 2},
    "per_cluster": {"type": "int", "default": 5},
    "total": {"type": "int"},
}


def run(params: Mapping[str, Any], *, check_mode: bool) -> dict[str, Any]:
    with connect(params) as conn:
        try:
            plan = fleet.evacuate(
                conn,
                params["host"],
                headroom=params.get("headroom") or 0.0,
                policy=params.get("policy") or "balanced",
                max_downtime=params.get("max_downtime"),
            )
            if check_mode or not plan.moves:
                return {
                    "changed": bool(plan.moves),
                    "msg": f"{len(plan.moves)} to move, {len(plan.stays)} cannot",
                    "plan": plan.to_dict(),
                }
            limits = fleet.Limits(
                per_source=params.get("per_source"),
                per_target=params.get("per_target"),
                per_cluster=params.get("per_cluster"),
                total=params.get("total"),
            )
            options = (
                {}
                if params.get("max_downtime") is None
                else {"max_downtime": params["max_downtime"]}
            )
            report = fleet.execute(conn, plan, limits, migrate_options=options)
        except vmmove.VMMoveError as exc:
            raise failure(exc) from None
    result = {
        "changed": bool(report.moved),
        "msg": f"{len(report.moved)} moved, {len(report.stayed)} stayed",
        "plan": plan.to_dict(),
        "report": report.to_dict(),
    }
    if not report.ok:
        # Some VM did not leave: fail with the whole report, as the CLI exits non-zero.
        raise ModuleFailure(
            f"{plan.scope} is not empty: {result['msg']}",
            error_type="EvacuationIncomplete",
            **result,
        )
    return result
