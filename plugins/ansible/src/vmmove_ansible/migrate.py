"""``vmmove.core.migrate``: move one VM, idempotently.

A VM that already runs on the target reports ``changed: false`` and moves nothing. Check
mode runs the pre-checks (``Connection.check``) and moves nothing: a refusal fails the task
as the real run would, anything else reports the change the run would make.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import vmmove
from vmmove_ansible.common import CONNECTION_ARGS, ModuleFailure, connect, failure, plain
from vmmove_ansible.common import record_result as _record

__all__ = ["ARGS", "run"]

ARGS: dict[str, dict[str, Any]] = {
    **CONNECTION_ARGS,
    "vm": {"type": "str", "required": True},
    "to": {"type": "str"},  # None: placement chooses
    "mode": {"type": "str", "default": "auto", "choices": ["auto", "live", "cold"]},
    "policy": {"type": "str", "default": "balanced"},
    "max_downtime": {"type": "int"},
    "bandwidth": {"type": "int"},
    "allow_postcopy": {"type": "bool"},
    "max_slowdown": {"type": "int"},
    "wait_timeout": {"type": "float"},
}


def run(params: Mapping[str, Any], *, check_mode: bool) -> dict[str, Any]:
    vm_ref: str = params["vm"]
    options = {
        k: params[k]
        for k in ("mode", "policy", "max_downtime", "bandwidth", "allow_postcopy", "max_slowdown")
        if params.get(k) is not None
    }
    with connect(params) as conn:
        try:
            vm = conn.vm(vm_ref)
            target = None if params.get("to") is None else conn.host(params["to"])
        except vmmove.VMMoveError as exc:
            raise failure(exc, conn=conn, vm=vm_ref) from None
        if target is not None and vm.host == target.id:
            return {
                "changed": False,
                "msg": f"{vm.name} already runs on {target.name}",
                "vm_host": target.id,
            }
        if check_mode:
            return _check(conn, vm, target, options)
        try:
            migration = conn.migrate(vm.id, None if target is None else target.id, **options)
        except vmmove.VMMoveError as exc:
            raise failure(exc, conn=conn, vm=vm.id) from None
        try:
            record = migration.wait(params.get("wait_timeout"))
        except vmmove.WaitTimeout as exc:
            # The migration goes on without us: say so, with where the VM runs now.
            raise ModuleFailure(
                str(exc),
                error_type="WaitTimeout",
                vm_host=migration.record.vm_host,
                record=_record(migration.record),
                changed=True,
            ) from None
        except vmmove.VMMoveError as exc:
            raise failure(exc, conn=conn, vm=vm.id) from None
    return {
        "changed": True,
        "msg": f"{record.vm_name} moved to {record.vm_host_name or record.vm_host}",
        "vm_host": record.vm_host,
        "record": _record(record),
    }


def _check(
    conn: vmmove.Connection,
    vm: vmmove.VMInfo,
    target: vmmove.HostInfo | None,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    try:
        problems = conn.check(vm.id, None if target is None else target.id, **options)
    except vmmove.VMMoveError as exc:
        raise failure(exc, conn=conn, vm=vm.id) from None
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise failure(
            vmmove.PrecheckFailed(f"cannot migrate {vm.name}", errors), conn=conn, vm=vm.id
        )
    where = "a host placement chooses" if target is None else target.name
    result = {
        "changed": True,
        "msg": f"{vm.name} would move from {vm.host} to {where}",
        "vm_host": vm.host,
        "problems": plain(problems),  # warnings only: nothing refused it
    }
    if options.get("mode", "auto") != "cold" and vm.power is vmmove.PowerState.RUNNING:
        # A live move: what it would cost, as `vmmove check --predict` says it.
        wanted = ("policy", "bandwidth", "max_downtime", "allow_postcopy", "max_slowdown")
        try:
            prediction = conn.predict(
                vm.id,
                None if target is None else target.id,
                **{k: v for k, v in options.items() if k in wanted},
            )
        except vmmove.VMMoveError as exc:
            raise failure(exc, conn=conn, vm=vm.id) from None
        result["prediction"] = plain(prediction)
    return result
