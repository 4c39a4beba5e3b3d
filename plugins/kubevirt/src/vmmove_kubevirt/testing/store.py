"""The object store behind the fake API server: what etcd and the apiserver's registry do.

Every change bumps one cluster-wide ``resourceVersion`` and is kept in a bounded history
that watches replay from; a watch that asks for a version older than the history gets
``410 Gone``, exactly like a compacted etcd. Objects are plain JSON dicts.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BUILTIN_RESOURCES",
    "ApiError",
    "Event",
    "Obj",
    "ObjectStore",
    "ResourceType",
    "json_patch",
    "merge_patch",
    "parse_field_selector",
    "parse_label_selector",
]

Obj = dict[str, Any]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ApiError(Exception):
    """An error the API answers with: an HTTP code and a Kubernetes ``Status`` object."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details or {})

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "code": self.code,
        }
        if self.reason:  # omitted when empty, as Go's omitempty does (webhook denials)
            body["reason"] = self.reason
        if self.details:
            body["details"] = self.details
        return body

    @classmethod
    def not_found(cls, rt: ResourceType, name: str) -> ApiError:
        return cls(
            404,
            "NotFound",
            f'{rt.plural}{"." + rt.group if rt.group else ""} "{name}" not found',
            details={"name": name, "group": rt.group, "kind": rt.plural},
        )

    @classmethod
    def already_exists(cls, rt: ResourceType, name: str) -> ApiError:
        return cls(
            409,
            "AlreadyExists",
            f'{rt.plural}{"." + rt.group if rt.group else ""} "{name}" already exists',
            details={"name": name, "group": rt.group, "kind": rt.plural},
        )

    @classmethod
    def conflict(cls, rt: ResourceType, name: str) -> ApiError:
        return cls(
            409,
            "Conflict",
            f"Operation cannot be fulfilled on {rt.plural}{'.' + rt.group if rt.group else ''} "
            f'"{name}": the object has been modified; please apply your changes to the '
            "latest version and try again",
            details={"name": name, "group": rt.group, "kind": rt.plural},
        )

    @classmethod
    def invalid(cls, rt: ResourceType, name: str, message: str) -> ApiError:
        return cls(
            422,
            "Invalid",
            f'{rt.kind}.{rt.group or "core"} "{name}" is invalid: {message}',
            details={"name": name, "group": rt.group, "kind": rt.kind},
        )

    @classmethod
    def bad_request(cls, message: str) -> ApiError:
        return cls(400, "BadRequest", message)


@dataclass(frozen=True, kw_only=True)
class ResourceType:
    """One REST resource the fake serves (what a CRD or a built-in type declares)."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    status_subresource: bool = True
    #: extra columns for ``kubectl get`` (Table): (name, dotted path into the object)
    columns: tuple[tuple[str, str], ...] = ()
    #: field selectors besides metadata.name / metadata.namespace (built-in types only)
    fields: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def api_resource(self) -> Obj:
        out: Obj = {
            "name": self.plural,
            "singularName": self.singular or self.kind.lower(),
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": [
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
        }
        if self.short_names:
            out["shortNames"] = list(self.short_names)
        return out


_KV = "kubevirt.io"
BUILTIN_RESOURCES: tuple[ResourceType, ...] = (
    ResourceType(
        group="",
        version="v1",
        plural="nodes",
        kind="Node",
        namespaced=False,
        short_names=("no",),
        columns=(("Unschedulable", "spec.unschedulable"),),
        fields=("spec.unschedulable",),
    ),
    ResourceType(
        group="",
        version="v1",
        plural="namespaces",
        kind="Namespace",
        namespaced=False,
        short_names=("ns",),
        columns=(("Status", "status.phase"),),
        fields=("status.phase",),
    ),
    ResourceType(
        group=_KV,
        version="v1",
        plural="virtualmachineinstances",
        kind="VirtualMachineInstance",
        namespaced=True,
        short_names=("vmi", "vmis"),
        columns=(("Phase", "status.phase"), ("NodeName", "status.nodeName")),
    ),
    ResourceType(
        group=_KV,
        version="v1",
        plural="virtualmachines",
        kind="VirtualMachine",
        namespaced=True,
        short_names=("vm", "vms"),
        columns=(("Status", "status.printableStatus"), ("Ready", "status.ready")),
    ),
    ResourceType(
        group=_KV,
        version="v1",
        plural="virtualmachineinstancemigrations",
        kind="VirtualMachineInstanceMigration",
        namespaced=True,
        short_names=("vmim", "vmims"),
        columns=(("Phase", "status.phase"), ("VMI", "spec.vmiName")),
    ),
    ResourceType(
        group=_KV,
        version="v1",
        plural="kubevirts",
        kind="KubeVirt",
        namespaced=True,
        short_names=("kv", "kvs"),
        columns=(("Phase", "status.phase"),),
    ),
    ResourceType(
        group="migrations.kubevirt.io",
        version="v1alpha1",
        plural="migrationpolicies",
        kind="MigrationPolicy",
        namespaced=False,
    ),
    ResourceType(
        group="apiextensions.k8s.io",
        version="v1",
        plural="customresourcedefinitions",
        kind="CustomResourceDefinition",
        namespaced=False,
        short_names=("crd", "crds"),
    ),
)


# ---- selectors ------------------------------------------------------------------------------

Selector = Callable[[Mapping[str, str]], bool]

_REQ = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9./_-]+)\s*"
    r"(?:(?P<op>==|!=|=|\s+in\s+|\s+notin\s+)\s*(?P<val>\([^)]*\)|[A-Za-z0-9._-]*))?\s*$"
)


def _split_requirements(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def _requirement(key: str, op: str, values: frozenset[str], negated: bool) -> Selector:
    def check(labels: Mapping[str, str]) -> bool:
        if negated:
            return key not in labels
        if not op:
            return key in labels
        if op in ("=", "==", "in"):
            return labels.get(key) in values
        return labels.get(key) not in values  # != and notin: absent keys match, as in Kubernetes

    return check


def parse_label_selector(text: str | None) -> Selector:
    """A label selector (``a=b,c!=d,e in (f,g),!h,i``) as a predicate over labels."""
    if not text:
        return lambda labels: True
    checks: list[Selector] = []
    for raw in _split_requirements(text):
        m = _REQ.match(raw)
        if m is None:
            raise ApiError.bad_request(f"unable to parse requirement: {raw.strip()!r}")
        key, op, val, neg = m["key"], (m["op"] or "").strip(), m["val"] or "", bool(m["neg"])
        if neg and op:
            raise ApiError.bad_request(f"unable to parse requirement: {raw.strip()!r}")
        if op in ("in", "notin"):
            if not val.startswith("("):
                raise ApiError.bad_request(f"unable to parse requirement: {raw.strip()!r}")
            values = frozenset(v.strip() for v in val[1:-1].split(",") if v.strip())
        else:
            values = frozenset({val})
        checks.append(_requirement(key, op, values, neg))
    return lambda labels: all(c(labels) for c in checks)


def _dig(obj: Mapping[str, Any], path: str) -> Any:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


def _field_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _field_check(path: str, value: str, negated: bool) -> Callable[[Obj], bool]:
    def check(obj: Obj) -> bool:
        return (_field_value(_dig(obj, path)) == value) != negated

    return check


def parse_field_selector(text: str | None, rt: ResourceType) -> Callable[[Obj], bool]:
    """A field selector; like the real API, custom resources support only
    ``metadata.name`` and ``metadata.namespace``."""
    if not text:
        return lambda obj: True
    allowed = {"metadata.name", "metadata.namespace", *rt.fields}
    checks: list[Callable[[Obj], bool]] = []
    for raw in text.split(","):
        m = re.match(r"^\s*([A-Za-z0-9.]+)\s*(==|!=|=)\s*(.*?)\s*$", raw)
        if m is None:
            raise ApiError.bad_request(f"invalid field selector: {raw!r}")
        path, op, val = m.groups()
        if path not in allowed:
            raise ApiError.bad_request(f'field label not supported: "{path}"')
        checks.append(_field_check(path, val, op == "!="))
    return lambda obj: all(c(obj) for c in checks)


# ---- patches ------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge: lists are replaced)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> tuple[Any, str]:
    cur = doc
    for part in parts[:-1]:
        if isinstance(cur, list):
            cur = cur[int(part)]
        elif isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            raise ApiError(422, "Invalid", f"path /{'/'.join(parts)} does not exist")
    return cur, parts[-1]


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch: add, remove, replace, move, copy, test."""
    if not isinstance(ops, list):
        raise ApiError.bad_request("a JSON patch is a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ApiError.bad_request(f"malformed JSON patch operation {op!r}")
        kind, parts = op["op"], _pointer(op["path"])
        try:
            if kind in ("add", "replace", "test"):
                value = copy.deepcopy(op["value"])
            elif kind in ("move", "copy"):
                src = _pointer(op["from"])
                sp, sk = _parent(doc, src)
                value = copy.deepcopy(sp[int(sk)] if isinstance(sp, list) else sp[sk])
                if kind == "move":
                    if isinstance(sp, list):
                        del sp[int(sk)]
                    else:
                        del sp[sk]
                kind = "add"
            elif kind != "remove":
                raise ApiError.bad_request(f"unknown JSON patch operation {kind!r}")
            if not parts:
                if kind == "test":
                    if doc != value:
                        raise ApiError(422, "Invalid", "JSON patch test failed")
                    continue
                if kind == "remove":
                    raise ApiError(422, "Invalid", "cannot remove the whole document")
                doc = value
                continue
            parent, last = _parent(doc, parts)
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(index, value)
                elif kind == "remove":
                    del parent[index]
                elif kind == "replace":
                    parent[index] = value
                elif parent[index] != value:
                    raise ApiError(422, "Invalid", f"JSON patch test failed at {op['path']}")
            elif isinstance(parent, dict):
                if kind == "add":
                    parent[last] = value
                elif kind in {"remove", "replace"}:
                    if last not in parent:
                        raise ApiError(422, "Invalid", f"path {op['path']} does not exist")
                    if kind == "remove":
                        del parent[last]
                    else:
                        parent[last] = value
                elif parent.get(last) != value:
                    raise ApiError(422, "Invalid", f"JSON patch test failed at {op['path']}")
            else:
                raise ApiError(422, "Invalid", f"path {op['path']} does not exist")
        except (IndexError, ValueError, KeyError):
            raise ApiError(422, "Invalid", f"JSON patch failed at {op['path']}") from None
    return doc


# ---- the store ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """One committed change, as watches see it. ``old`` is the object before the change."""

    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    resource: str  # ResourceType.key
    namespace: str
    name: str
    obj: Obj
    old: Obj | None = None


#: ``admit(operation, resource, new, old)``: may change ``new`` or raise ApiError.
Admission = Callable[[str, ResourceType, Obj, "Obj | None"], None]


class ObjectStore:
    """Thread-safe objects by (resource, namespace, name), with a watchable history."""

    def __init__(
        self, resources: Iterable[ResourceType] = BUILTIN_RESOURCES, *, history: int = 2000
    ) -> None:
        self.cond = threading.Condition(threading.RLock())
        self.resources: dict[str, ResourceType] = {}
        for rt in resources:
            self.add_resource(rt)
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._events: list[Event] = []
        self._history = history
        self._rv = 1000
        self._compacted = 0  # versions at or below this are gone from the history
        self.admission: list[Admission] = []
        self.closed = False

    # ---- resources ----
    def add_resource(self, rt: ResourceType) -> None:
        self.resources[rt.key] = rt

    def resource(self, group: str, version: str, plural: str) -> ResourceType:
        rt = self.resources.get(f"{plural}.{group}" if group else plural)
        if rt is None or rt.version != version:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({plural})"
            )
        return rt

    def kind(self, kind: str) -> ResourceType:
        for rt in self.resources.values():
            if rt.kind == kind:
                return rt
        raise KeyError(kind)

    # ---- versions and history ----
    @property
    def resource_version(self) -> int:
        with self.cond:
            return self._rv

    def _commit(self, etype: str, rt: ResourceType, obj: Obj, old: Obj | None) -> Obj:
        """Record ``obj`` (already stored or removed) as a new version; wake watchers."""
        self._rv += 1
        rv = self._rv
        obj["metadata"]["resourceVersion"] = str(rv)
        meta = obj["metadata"]
        event = Event(
            rv=rv,
            type=etype,
            resource=rt.key,
            namespace=meta.get("namespace", ""),
            name=meta["name"],
            obj=copy.deepcopy(obj),
            old=old,
        )
        self._events.append(event)
        if len(self._events) > self._history:
            drop = len(self._events) - self._history
            self._compacted = self._events[drop - 1].rv
            del self._events[:drop]
        self.cond.notify_all()
        return copy.deepcopy(obj)

    def compact(self) -> int:
        """Forget the whole history (as etcd compaction does): older watches get 410."""
        with self.cond:
            self._compacted = self._rv
            self._events.clear()
            self.cond.notify_all()
            return self._compacted

    def events_since(self, rv: int) -> list[Event]:
        """Every event after ``rv``; raises 410 Gone if the history no longer reaches it."""
        with self.cond:
            if rv < self._compacted:
                raise ApiError(
                    410,
                    "Expired",
                    f"too old resource version: {rv} ({self._compacted + 1})",
                )
            lo, hi = 0, len(self._events)
            while lo < hi:
                mid = (lo + hi) // 2
                if self._events[mid].rv <= rv:
                    lo = mid + 1
                else:
                    hi = mid
            return self._events[lo:]

    def history(self) -> list[Event]:
        """The retained history (for tests that compare what a client saw)."""
        with self.cond:
            return list(self._events)

    # ---- reads ----
    def _key(self, rt: ResourceType, ns: str | None, name: str) -> tuple[str, str, str]:
        return (rt.key, (ns or "") if rt.namespaced else "", name)

    def get(self, rt: ResourceType, ns: str | None, name: str) -> Obj:
        with self.cond:
            obj = self._objects.get(self._key(rt, ns, name))
            if obj is None:
                raise ApiError.not_found(rt, name)
            return copy.deepcopy(obj)

    def find(self, rt: ResourceType, ns: str | None, name: str) -> Obj | None:
        try:
            return self.get(rt, ns, name)
        except ApiError:
            return None

    def list(
        self,
        rt: ResourceType,
        ns: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[Obj], int]:
        labels = parse_label_selector(label_selector)
        fields = parse_field_selector(field_selector, rt)
        with self.cond:
            items = [
                copy.deepcopy(obj)
                for (res, ons, _), obj in sorted(self._objects.items())
                if res == rt.key
                and (ns is None or not rt.namespaced or ons == ns)
                and labels(obj["metadata"].get("labels") or {})
                and fields(obj)
            ]
            return items, self._rv

    # ---- writes ----
    def _admit(self, op: str, rt: ResourceType, new: Obj, old: Obj | None) -> None:
        for admit in list(self.admission):
            admit(op, rt, new, old)

    def create(self, rt: ResourceType, ns: str | None, body: Obj, *, admit: bool = True) -> Obj:
        if not isinstance(body, dict):
            raise ApiError.bad_request("the request body must be a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError.bad_request("metadata must be an object")
        with self.cond:
            if not meta.get("name"):
                prefix = meta.get("generateName")
                if not prefix:
                    raise ApiError.invalid(
                        rt, "", "metadata.name: Required value: name or generateName is required"
                    )
                meta["name"] = f"{prefix}{uuid.uuid4().hex[:5]}"
            name = meta["name"]
            if not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", name) or len(name) > 253:
                raise ApiError.invalid(
                    rt, name, "metadata.name: Invalid value: a lowercase RFC 1123 subdomain"
                )
            if rt.namespaced:
                if meta.get("namespace") and ns and meta["namespace"] != ns:
                    raise ApiError.bad_request(
                        "the namespace of the provided object does not match the namespace "
                        "sent on the request"
                    )
                meta["namespace"] = ns or meta.get("namespace") or "default"
            else:
                meta.pop("namespace", None)
            key = self._key(rt, meta.get("namespace"), name)
            if key in self._objects:
                raise ApiError.already_exists(rt, name)
            obj["apiVersion"] = rt.api_version
            obj["kind"] = rt.kind
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta["generation"] = 1
            meta.pop("resourceVersion", None)
            meta.pop("deletionTimestamp", None)
            if admit:
                self._admit("CREATE", rt, obj, None)
            self._objects[key] = obj
            return self._commit("ADDED", rt, obj, None)

    def _store_update(self, rt: ResourceType, key: tuple[str, str, str], new: Obj, old: Obj) -> Obj:
        """Commit ``new`` in place of ``old``: generation, finalizers, the event."""
        meta = new["metadata"]
        for fixed in ("uid", "creationTimestamp", "name", "namespace"):
            if fixed in old["metadata"]:
                meta[fixed] = old["metadata"][fixed]
            else:
                meta.pop(fixed, None)
        if old["metadata"].get("deletionTimestamp"):
            meta["deletionTimestamp"] = old["metadata"]["deletionTimestamp"]
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind

        def spec_of(o: Obj) -> Obj:
            return {k: v for k, v in o.items() if k not in ("metadata", "status")}

        meta["generation"] = old["metadata"].get("generation", 1) + (spec_of(new) != spec_of(old))
        if json.dumps(new, sort_keys=True) == json.dumps(old, sort_keys=True):
            return copy.deepcopy(old)  # no-op updates do not bump the version
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            del self._objects[key]
            return self._commit("DELETED", rt, new, old)
        self._objects[key] = new
        return self._commit("MODIFIED", rt, new, old)

    def update(
        self,
        rt: ResourceType,
        ns: str | None,
        name: str,
        body: Obj,
        *,
        subresource: str | None = None,
        admit: bool = True,
    ) -> Obj:
        """PUT: replace the object (or only its status, through ``/status``)."""
        if not isinstance(body, dict):
            raise ApiError.bad_request("the request body must be a JSON object")
        with self.cond:
            key = self._key(rt, ns, name)
            old = self._objects.get(key)
            if old is None:
                raise ApiError.not_found(rt, name)
            body_meta = body.get("metadata") or {}
            if body_meta.get("name") not in (None, name):
                raise ApiError.bad_request("the name of the object does not match the URL")
            want_rv = body_meta.get("resourceVersion")
            if want_rv and str(want_rv) != old["metadata"]["resourceVersion"]:
                raise ApiError.conflict(rt, name)
            new = self._shape(rt, old, copy.deepcopy(body), subresource)
            if admit:
                self._admit("UPDATE", rt, new, copy.deepcopy(old))
            return self._store_update(rt, key, new, old)

    @staticmethod
    def _shape(rt: ResourceType, old: Obj, new: Obj, subresource: str | None) -> Obj:
        """Keep ``.status`` behind the status subresource, and only ``.status`` in it."""
        if subresource == "status":
            shaped = copy.deepcopy(old)
            if "status" in new:
                shaped["status"] = new["status"]
            else:
                shaped.pop("status", None)
            return shaped
        if subresource is not None:
            raise ApiError(404, "NotFound", f"unknown subresource {subresource!r}")
        if rt.status_subresource:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        new.setdefault("metadata", {})
        return new

    def patch(
        self,
        rt: ResourceType,
        ns: str | None,
        name: str,
        content_type: str,
        body: Any,
        *,
        subresource: str | None = None,
    ) -> Obj:
        ctype = content_type.split(";", maxsplit=1)[0].strip().lower()
        with self.cond:
            key = self._key(rt, ns, name)
            old = self._objects.get(key)
            if old is None:
                raise ApiError.not_found(rt, name)
            if ctype == "application/json-patch+json":
                patched = json_patch(old, body)
            elif ctype in (
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ):
                if not isinstance(body, dict):
                    raise ApiError.bad_request("a merge patch is a JSON object")
                patched = merge_patch(old, body)
                want_rv = (body.get("metadata") or {}).get("resourceVersion")
                if want_rv and str(want_rv) != old["metadata"]["resourceVersion"]:
                    raise ApiError.conflict(rt, name)
            else:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types "
                    f"include: application/json-patch+json, application/merge-patch+json, "
                    f"application/strategic-merge-patch+json (not {ctype})",
                )
            if not isinstance(patched, dict):
                raise ApiError(422, "Invalid", "the patch did not produce an object")
            patched.setdefault("metadata", {})
            new = self._shape(rt, old, patched, subresource)
            self._admit("UPDATE", rt, new, copy.deepcopy(old))
            return self._store_update(rt, key, new, old)

    def mutate(
        self, rt: ResourceType, ns: str | None, name: str, change: Callable[[Obj], None]
    ) -> Obj | None:
        """Change an object in place, as a controller does (status included, no admission).
        Returns the new object, or ``None`` if it does not exist."""
        with self.cond:
            key = self._key(rt, ns, name)
            old = self._objects.get(key)
            if old is None:
                return None
            new = copy.deepcopy(old)
            change(new)
            return self._store_update(rt, key, new, old)

    def delete(self, rt: ResourceType, ns: str | None, name: str) -> Obj:
        """DELETE: gone at once, or marked with ``deletionTimestamp`` while finalizers remain."""
        with self.cond:
            key = self._key(rt, ns, name)
            old = self._objects.get(key)
            if old is None:
                raise ApiError.not_found(rt, name)
            if old["metadata"].get("finalizers"):
                if old["metadata"].get("deletionTimestamp"):
                    return copy.deepcopy(old)
                new = copy.deepcopy(old)
                new["metadata"]["deletionTimestamp"] = _now()
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                self._objects[key] = new
                return self._commit("MODIFIED", rt, new, old)
            del self._objects[key]
            gone = copy.deepcopy(old)
            return self._commit("DELETED", rt, gone, old)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
