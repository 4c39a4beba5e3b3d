"""What every module shares: the connection parameters, the connection, and how a vmmove
error becomes ``fail_json``'s facts (the error type and where the VM runs)."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

import vmmove
from vmmove.cli.config import secret_option  # the CLI's rule for which option is the secret
from vmmove.model import MigrationRecord

__all__ = ["CONNECTION_ARGS", "ModuleFailure", "connect", "failure", "plain", "record_result"]

#: The argument spec every module takes, in AnsibleModule's terms.
CONNECTION_ARGS: dict[str, dict[str, Any]] = {
    "uri": {"type": "str"},  # None: $VMMOVE_URI, then sim://
    "password": {"type": "str", "no_log": True},
    "options": {"type": "dict", "default": {}},
}


class ModuleFailure(Exception):
    """The module fails: ``msg`` and ``facts`` go to ``fail_json``."""

    def __init__(self, msg: str, **facts: Any) -> None:
        super().__init__(msg)
        self.facts = facts


def connect(params: Mapping[str, Any]) -> vmmove.Connection:
    """The connection the parameters name; the password goes to the backend's secret option
    (as the CLI does), never into a URI, a message or the result."""
    uri: str | None = params.get("uri")
    options = dict(params.get("options") or {})
    password = params.get("password")
    if password:
        name = secret_option(uri)
        if name is None:
            raise ModuleFailure("this backend takes no password", error_type="InvalidInput")
        options[name] = vmmove.Secret(password)
    try:
        return vmmove.connect(uri, **options)
    except vmmove.VMMoveError as exc:
        raise failure(exc) from None


def failure(
    exc: vmmove.VMMoveError, *, conn: vmmove.Connection | None = None, vm: str | None = None
) -> ModuleFailure:
    """The failure for a vmmove error: its type, and the VM's host (from the error when it
    names one, else read from the inventory when the VM is known)."""
    facts: dict[str, Any] = {"error_type": type(exc).__name__}
    record: MigrationRecord | None = getattr(exc, "record", None)
    if isinstance(exc, vmmove.MigrationError):
        facts["vm_host"] = exc.vm_host
    elif conn is not None and vm is not None:
        try:
            facts["vm_host"] = conn.vm(vm).host
        except vmmove.VMMoveError:
            facts["vm_host"] = None  # the inventory cannot say: neither do we
    if isinstance(exc, vmmove.PrecheckFailed):
        facts["problems"] = plain(list(exc.problems))
    if record is not None:
        facts["record"] = record_result(record)
        facts["changed"] = record.vm_host != record.source
    return ModuleFailure(str(exc), **facts)


def plain(obj: Any) -> Any:
    """Dataclasses, enums and mappings as JSON data, for module results."""
    if isinstance(obj, enum.Enum):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, set | frozenset):
        return sorted(plain(v) for v in obj)
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


def record_result(record: MigrationRecord) -> dict[str, Any]:
    """A migration record for a module result (the job's platform reference left out)."""
    body: dict[str, Any] = plain(record)
    body.pop("job_ref", None)
    return body
