"""A Kubernetes API server over real HTTP/1.1 (optionally TLS), on the standard library.

It speaks enough of the real API that the official ``kubernetes`` Python client and
``kubectl --validate=false`` cannot tell: discovery (legacy, not aggregated), get, list,
create (201), update with resourceVersion preconditions, merge, strategic-merge and JSON
patches, the ``/status`` subresource, delete with finalizers, label and field selectors,
``?watch=true`` as chunked JSON lines resumable from a resourceVersion (410 when expired),
``Table`` answers for ``kubectl get``, bearer tokens, and injected faults.

Faults (:class:`ApiFault`) include a request carried out with its answer lost
(``drop_response``) and one carried out *later*, after the client gave up (``apply_after``).
:meth:`KubeApiServer.outage` makes the whole API unreachable for a while: connections
refused (the listening socket closed, then opened again on the same port) or reset.
"""

from __future__ import annotations

import contextlib
import hmac
import http.client
import io
import json
import logging
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from vmmove_kubevirt.testing._tls import CA_PEM, server_context
from vmmove_kubevirt.testing.store import (
    ApiError,
    Event,
    Obj,
    ObjectStore,
    ResourceType,
    parse_field_selector,
    parse_label_selector,
)

__all__ = ["ApiFault", "KubeApiServer", "Outage", "RequestLog"]

log = logging.getLogger("vmmove_kubevirt.testing")

KUBE_VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-vmmove-fake"}
_JSON = "application/json"
_PUBLIC = frozenset({"/version", "/healthz", "/livez", "/readyz"})


@dataclass(kw_only=True)
class ApiFault:
    """A fault the server injects into matching requests.

    Match on ``method``, ``path`` (a regular expression searched in the URL path) and
    ``watch`` (``True``: watches only, ``False``: never watches). Then ``delay`` seconds
    pass, and the request is answered with ``status`` (a Kubernetes ``Status``), or its
    connection is dropped without an answer (``drop``: nothing was done;
    ``drop_response``: the request was carried out, only the answer is lost), or, for a
    watch, the stream breaks off after ``drop_watch_after`` events. ``apply_after``: the
    connection is dropped unanswered (after ``delay``, so a client with a shorter timeout
    has given up by then) and the request is carried out ``apply_after`` seconds later, as
    an API server whose write outlived the client's patience. ``times`` is how many
    requests it affects (``None``: all). ``body``: a regular expression searched in the
    request body too (writes only: a webhook that refuses one kind of change, such as a
    VirtualMachine's node pin, and lets the others through).
    """

    method: str | None = None
    path: str | None = None
    watch: bool | None = None
    body: str | None = None
    status: int | None = None
    reason: str = ""
    message: str = ""
    drop: bool = False
    drop_response: bool = False
    delay: float = 0.0
    drop_watch_after: int | None = None
    apply_after: float | None = None
    times: int | None = 1
    hits: int = field(default=0, init=False)

    def matches(self, method: str, path: str, watch: bool, body: bytes | None = None) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.body is not None and (
            body is None or re.search(self.body, body.decode("utf-8", "replace")) is None
        ):
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        if self.watch is not None and self.watch != watch:
            return False
        return self.path is None or re.search(self.path, path) is not None


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestLog:
    method: str
    path: str
    query: str
    status: int
    at: float
    late: bool = False  # carried out after its connection was gone (ApiFault.apply_after)


def _age(created: str | None) -> str:
    if not created:
        return "<unknown>"
    try:
        then = time.mktime(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    except ValueError:
        return "<unknown>"
    secs = max(0, int(time.time() - then))
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    return f"{secs // 3600}h"


def _dig(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, api: KubeApiServer, host: str, port: int) -> None:
        self.api = api
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__((host, port), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        sock = request
        if self.api._resetting():
            _reset(sock)  # the outage: every connection is reset at once
            return
        with self.conns_lock:
            self.conns.add(sock)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.api.tls_context is not None:
                wrapped = self.api.tls_context.wrap_socket(sock, server_side=True)
                with self.conns_lock:
                    self.conns.discard(sock)
                    self.conns.add(wrapped)
                sock = wrapped
            _Handler(sock, client_address, self)
        except (OSError, ssl.SSLError) as exc:
            log.debug("connection from %s ended: %s", client_address, exc)
        finally:
            with self.conns_lock:
                self.conns.discard(sock)
                self.conns.discard(request)
            with contextlib.suppress(OSError):
                sock.close()

    def close_connections(self) -> None:
        with self.conns_lock:
            conns = list(self.conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), not a FIN: the peer sees "connection reset"."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Aborted(Exception):
    """The connection was dropped on purpose (an injected fault)."""


class _Api:
    """What a replayed request's handler needs of the HTTP server: the API."""

    def __init__(self, api: KubeApiServer) -> None:
        self.api = api


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    _swallow = False
    _status = 0
    _read: bytes | None = None  # this request's body, when read before routing

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ---- plumbing ------------------------------------------------------------------------
    @property
    def api(self) -> KubeApiServer:
        return self.server.api

    def _body(self) -> bytes:
        if self._read is not None:
            return self._read  # read once already, to match a fault on it
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> Any:
        raw = self._body()
        if not raw:
            raise ApiError.bad_request("the request has no body")
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError.bad_request("the request body is not valid JSON") from None

    def _send(self, code: int, body: Any, content_type: str = _JSON) -> None:
        if self._swallow:
            self._drop()  # done, but the client never hears of it
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self._status = code

    def _error(self, exc: ApiError) -> None:
        self._send(exc.code, exc.status())

    def _drop(self) -> None:
        self.close_connection = True
        self._status = 0
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        raise _Aborted

    # ---- dispatch ------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        path = url.path.rstrip("/") or "/"
        watch = query.get("watch", "").lower() in ("true", "1")
        self._status = 0
        self._swallow = False
        self._read = None
        try:
            if method in ("POST", "PUT", "PATCH") and self.api._matches_bodies():
                self._read = self._body()
            fault = self.api._take_fault(method, path, watch, self._read)
            self._swallow = fault is not None and fault.drop_response
            if fault is not None and fault.delay:
                self.api._stopping.wait(fault.delay)
            if fault is not None and fault.apply_after is not None:
                body = self._body()
                if path in _PUBLIC or self._authorized():
                    self.api._apply_later(fault.apply_after, method, self.path, self.headers, body)
                self._drop()
            if fault is not None and fault.drop:
                self._body()
                self._drop()
            if fault is not None and fault.status is not None:
                self._body()
                raise ApiError(
                    fault.status,
                    fault.reason or _REASONS.get(fault.status, "InternalError"),
                    fault.message or f"injected fault ({fault.status})",
                )
            if path not in _PUBLIC and not self._authorized():
                self._body()
                raise ApiError(401, "Unauthorized", "Unauthorized")
            self._route(method, path, query, watch, fault)
        except ApiError as exc:
            self._error(exc)
        except _Aborted:
            pass
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True
        finally:
            self.api._log(method, url.path, url.query, self._status)

    def _authorized(self) -> bool:
        token = self.api.token
        if token is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)

    def _route(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        watch: bool,
        fault: ApiFault | None,
    ) -> None:
        store = self.api.store
        if path == "/version":
            return self._send(200, KUBE_VERSION)
        if path in ("/healthz", "/livez", "/readyz"):
            return self._send(200, b"ok", "text/plain; charset=utf-8")
        segs = [s for s in path.split("/") if s]
        if not segs or segs[0] not in ("api", "apis"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if method == "GET" and self._discovery(segs):
            return None
        if segs[0] == "api":
            if len(segs) < 3:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            group, version, rest = "", segs[1], segs[2:]
        else:
            if len(segs) < 4:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            group, version, rest = segs[1], segs[2], segs[3:]
        ns: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
            ns, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        rt = store.resource(group, version, rest[0])
        if rt.namespaced is False and ns is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and (sub != "status" or not rt.status_subresource):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if rt.namespaced and ns is None and method != "GET":
            raise ApiError(405, "MethodNotAllowed", "namespaced resources need a namespace")
        if method == "GET":
            if name is not None:
                obj = store.get(rt, ns, name)
                return self._send(200, self._maybe_table(rt, [obj], query, single=True))
            if watch:
                return self._watch(rt, ns, query, fault)
            items, rv = store.list(
                rt,
                ns,
                label_selector=query.get("labelSelector"),
                field_selector=query.get("fieldSelector"),
            )
            body: Obj = {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            }
            return self._send(200, self._maybe_table(rt, items, query, rv=rv) or body)
        if method == "POST":
            if name is not None:
                raise ApiError(405, "MethodNotAllowed", "POST goes to the collection")
            created = store.create(rt, ns, self._json_body())
            return self._send(201, created)
        if name is None:
            if method == "DELETE":
                items, rv = store.list(
                    rt,
                    ns,
                    label_selector=query.get("labelSelector"),
                    field_selector=query.get("fieldSelector"),
                )
                gone = [store.delete(rt, ns, o["metadata"]["name"]) for o in items]
                return self._send(
                    200,
                    {
                        "kind": f"{rt.kind}List",
                        "apiVersion": rt.api_version,
                        "metadata": {"resourceVersion": str(store.resource_version)},
                        "items": gone,
                    },
                )
            raise ApiError(405, "MethodNotAllowed", f"{method} needs an object name")
        if method == "PUT":
            return self._send(200, store.update(rt, ns, name, self._json_body(), subresource=sub))
        if method == "PATCH":
            ctype = self.headers.get("Content-Type", "")
            return self._send(
                200, store.patch(rt, ns, name, ctype, self._json_body(), subresource=sub)
            )
        if method == "DELETE":
            self._body()
            if sub is not None:
                raise ApiError(405, "MethodNotAllowed", "cannot delete a subresource")
            return self._send(200, store.delete(rt, ns, name))
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")

    # ---- discovery ------------------------------------------------------------------------
    def _discovery(self, segs: list[str]) -> bool:
        store = self.api.store
        groups: dict[str, list[ResourceType]] = {}
        for rt in store.resources.values():
            groups.setdefault(rt.group, []).append(rt)
        address = [{"clientCIDR": "0.0.0.0/0", "serverAddress": self.api.address}]
        if segs == ["api"]:
            self._send(
                200,
                {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": address},
            )
            return True
        if segs == ["apis"]:
            self._send(
                200,
                {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [self._group(g, rts) for g, rts in sorted(groups.items()) if g],
                },
            )
            return True
        if len(segs) == 2 and segs[0] == "apis":
            if segs[1] not in groups or not segs[1]:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            self._send(200, {"apiVersion": "v1", **self._group(segs[1], groups[segs[1]])})
            return True
        if (segs[0] == "api" and len(segs) == 2) or (segs[0] == "apis" and len(segs) == 3):
            group = "" if segs[0] == "api" else segs[1]
            version = segs[-1]
            rts = [rt for rt in groups.get(group, []) if rt.version == version]
            if not rts:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            resources: list[Obj] = []
            for rt in sorted(rts, key=lambda r: r.plural):
                resources.append(rt.api_resource())
                if rt.status_subresource:
                    resources.append(
                        {
                            "name": f"{rt.plural}/status",
                            "singularName": "",
                            "namespaced": rt.namespaced,
                            "kind": rt.kind,
                            "verbs": ["get", "patch", "update"],
                        }
                    )
            self._send(
                200,
                {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": rts[0].api_version,
                    "resources": resources,
                },
            )
            return True
        return False

    @staticmethod
    def _group(name: str, rts: list[ResourceType]) -> Obj:
        versions = sorted({rt.version for rt in rts})
        entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        return {
            "kind": "APIGroup",
            "name": name,
            "versions": entries,
            "preferredVersion": entries[0],
        }

    # ---- tables (kubectl get) ------------------------------------------------------------
    def _maybe_table(
        self,
        rt: ResourceType,
        items: list[Obj],
        query: dict[str, str],
        *,
        single: bool = False,
        rv: int | None = None,
    ) -> Obj | None:
        if "as=Table" not in self.headers.get("Accept", ""):
            return items[0] if single else None
        columns = [{"name": "Name", "type": "string", "format": "name", "priority": 0}]
        columns += [
            {"name": title, "type": "string", "format": "", "priority": 0}
            for title, _ in rt.columns
        ]
        columns.append({"name": "Age", "type": "string", "format": "", "priority": 0})
        include = query.get("includeObject", "Metadata")
        rows = []
        for obj in items:
            meta = obj["metadata"]
            cells: list[Any] = [meta["name"]]
            for _, path in rt.columns:
                value = _dig(obj, path)
                cells.append("" if value is None else value)
            cells.append(_age(meta.get("creationTimestamp")))
            row: Obj = {"cells": cells}
            if include == "Object":
                row["object"] = obj
            elif include != "None":
                row["object"] = {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": meta,
                }
            rows.append(row)
        table_meta = {"resourceVersion": str(rv)} if rv is not None else {}
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": table_meta,
            "columnDefinitions": columns,
            "rows": rows,
        }

    # ---- watch ----------------------------------------------------------------------------
    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _event(
        self, etype: str, obj: Obj, rt: ResourceType | None = None, query: Any = None
    ) -> None:
        if rt is not None and etype not in {"ERROR", "BOOKMARK"}:
            table = self._maybe_table(rt, [obj], query or {})
            if table is not None and table.get("kind") == "Table":
                obj = table
        self._chunk(json.dumps({"type": etype, "object": obj}).encode() + b"\n")

    def _watch(
        self, rt: ResourceType, ns: str | None, query: dict[str, str], fault: ApiFault | None
    ) -> None:
        api, store = self.api, self.api.store
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(query.get("fieldSelector"), rt)
        timeout = float(query.get("timeoutSeconds") or api.watch_timeout)
        deadline = time.monotonic() + timeout
        bookmarks = query.get("allowWatchBookmarks", "").lower() == "true"
        rv_text = query.get("resourceVersion", "")

        def visible(obj: Obj | None, ev_ns: str) -> bool:
            if obj is None or (rt.namespaced and ns is not None and ev_ns != ns):
                return False
            return labels(obj["metadata"].get("labels") or {}) and fields(obj)

        initial: list[Obj] = []
        if rv_text in ("", "0"):
            initial, cursor = store.list(rt, ns)
            initial = [o for o in initial if visible(o, o["metadata"].get("namespace", ""))]
        else:
            try:
                cursor = int(rv_text)
            except ValueError:
                raise ApiError.bad_request(f"invalid resourceVersion {rv_text!r}") from None
        self.send_response(200)
        self.send_header("Content-Type", _JSON)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self._status = 200
        sent = 0
        limit = fault.drop_watch_after if fault is not None else None
        watch_id = api._watch_started()
        generation = api._generation
        try:
            for obj in initial:
                self._event("ADDED", obj, rt, query)
                sent += 1
                if limit is not None and sent >= limit:
                    self._drop()
            last_bookmark = time.monotonic()
            while not api._stopping.is_set() and api._generation == generation:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    with store.cond:
                        events: list[Event] = store.events_since(cursor)
                        if not events:
                            store.cond.wait(min(left, 0.5))
                            events = store.events_since(cursor)
                except ApiError as exc:
                    self._event("ERROR", exc.status())
                    break
                for ev in events:
                    cursor = ev.rv
                    if ev.resource != rt.key:
                        continue
                    now_in = ev.type != "DELETED" and visible(ev.obj, ev.namespace)
                    was_in = visible(ev.old, ev.namespace)
                    if ev.type == "ADDED" and now_in:
                        etype = "ADDED"
                    elif ev.type == "DELETED" and was_in:
                        etype = "DELETED"
                    elif ev.type == "MODIFIED" and now_in:
                        etype = "MODIFIED" if was_in else "ADDED"
                    elif ev.type == "MODIFIED" and was_in:
                        etype = "DELETED"
                    else:
                        continue
                    self._event(etype, ev.obj, rt, query)
                    sent += 1
                    api._delivered(watch_id, ev.rv)
                    if limit is not None and sent >= limit:
                        self._drop()
                if bookmarks and time.monotonic() - last_bookmark >= api.bookmark_interval:
                    last_bookmark = time.monotonic()
                    self._event(
                        "BOOKMARK",
                        {
                            "kind": rt.kind,
                            "apiVersion": rt.api_version,
                            "metadata": {"resourceVersion": str(cursor)},
                        },
                    )
            self._chunk(b"")
        finally:
            api._watch_ended(watch_id)


class _Replay(_Handler):
    """A request carried out after its connection is gone (``ApiFault.apply_after``): the
    same routing, with nobody to answer."""

    def __init__(self, api: KubeApiServer, headers: Any, body: bytes) -> None:  # no socket
        self._api = api
        self.headers = http.client.HTTPMessage()
        self.headers["Content-Type"] = headers.get("Content-Type", _JSON)
        self.headers["Content-Length"] = str(len(body))
        self.rfile = io.BytesIO(body)
        self._swallow = False
        self._status = 0
        self.close_connection = True

    @property
    def api(self) -> KubeApiServer:
        return self._api

    def _send(self, code: int, body: Any, content_type: str = _JSON) -> None:
        self._status = code  # the client gave up long ago: nobody hears this

    def run(self, method: str, raw_path: str) -> None:
        url = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            self._route(method, url.path.rstrip("/") or "/", query, False, None)
        except ApiError as exc:
            self._status = exc.code
        finally:
            self.api._log(method, url.path, url.query, self._status, late=True)


@dataclass(eq=False)
class Outage:
    """An outage of the API (:meth:`KubeApiServer.outage`): ``over`` is set once it ends;
    ``end()`` ends it early."""

    server: KubeApiServer
    mode: str
    seconds: float
    over: threading.Event = field(default_factory=threading.Event)

    def end(self) -> None:
        self.server._end_outage(self)

    def wait(self, timeout: float | None = None) -> bool:
        return self.over.wait(timeout)


class KubeApiServer:
    """The fake API server. ``start()`` binds (``port=0``: any free port) and serves in a
    thread; ``stop()`` closes every connection and joins every thread it started."""

    def __init__(
        self,
        store: ObjectStore | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        tls: bool = True,
        certfile: str | None = None,
        keyfile: str | None = None,
        watch_timeout: float = 1800.0,
        bookmark_interval: float = 1.0,
    ) -> None:
        self.store = store or ObjectStore()
        self.host = host
        self.port = port
        self.token = token
        self.tls_context = server_context(certfile, keyfile) if tls else None
        self.ca_pem = CA_PEM if tls and certfile is None else None
        self.watch_timeout = watch_timeout
        self.bookmark_interval = bookmark_interval
        self.faults: list[ApiFault] = []
        self.requests: list[RequestLog] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._watch_ids = 0
        self.active_watches: dict[int, int] = {}  # watch id -> last resourceVersion sent
        self._generation = 0  # bumped by an outage: open watches end
        self._reset_until = 0.0
        self._outage: Outage | None = None
        self._helpers: list[threading.Thread] = []  # late requests, outage timers

    # ---- lifecycle ----
    def start(self) -> KubeApiServer:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._listen()
        return self

    def _listen(self) -> None:
        self._httpd = _HTTPServer(self, self.host, self.port)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="vmmove-fake-kube-apiserver",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            helpers, self._helpers = list(self._helpers), []
            outage, self._outage = self._outage, None
        if outage is not None:
            outage.over.set()
        for helper in helpers:
            helper.join()  # they wait on _stopping: they end at once
        self._close_httpd()

    def _close_httpd(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._generation += 1
        with self.store.cond:
            self.store.cond.notify_all()
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()  # joins the request threads
        if thread is not None:
            thread.join()
        self._httpd = self._thread = None

    # ---- outages ----
    def outage(self, seconds: float, mode: str = "refuse") -> Outage:
        """Make the API unreachable for ``seconds`` from now, without blocking: ``"refuse"``
        closes the listening socket (new connections are refused) and opens it again on
        the same port; ``"reset"`` keeps listening but resets every connection. Open
        connections and watches are cut either way. The cluster itself goes on."""
        if mode not in ("refuse", "reset"):
            raise ValueError("mode is 'refuse' or 'reset'")
        if self._httpd is None and mode == "reset":
            raise RuntimeError("the server is not running")
        out = Outage(server=self, mode=mode, seconds=seconds)
        with self._lock:
            if self._outage is not None:
                raise RuntimeError("an outage is already going on")
            self._outage = out
        if mode == "reset":
            self._reset_until = time.monotonic() + seconds
            self._generation += 1
            with self.store.cond:
                self.store.cond.notify_all()
            if self._httpd is not None:
                self._httpd.close_connections()
        else:
            self._close_httpd()
        self._helper(seconds, lambda: self._end_outage(out), "outage")
        return out

    def _end_outage(self, out: Outage) -> None:
        with self._lock:
            if self._outage is not out:
                return
            self._outage = None
        self._reset_until = 0.0
        if out.mode == "refuse" and not self._stopping.is_set():
            self._listen()
        out.over.set()

    def _resetting(self) -> bool:
        return time.monotonic() < self._reset_until

    def _helper(self, after: float, action: Any, what: str) -> None:
        """Run ``action`` ``after`` seconds from now on a thread that ``stop()`` ends."""

        def run() -> None:
            if not self._stopping.wait(after):
                action()

        thread = threading.Thread(target=run, name=f"vmmove-fake-kube-{what}", daemon=True)
        with self._lock:
            self._helpers = [t for t in self._helpers if t.is_alive()]
            self._helpers.append(thread)
        thread.start()

    def _apply_later(self, after: float, method: str, path: str, headers: Any, body: bytes) -> None:
        replay = _Replay(self, headers, body)
        self._helper(after, lambda: replay.run(method, path), "late")

    def __enter__(self) -> KubeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_context else 'http'}://{self.address}"

    # ---- faults and observation ----
    def inject(self, fault: ApiFault) -> ApiFault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def drop_watches(self) -> None:
        """Break every open watch stream now, as a restarting apiserver would."""
        if self._httpd is None:
            return
        with self._lock:
            watching = bool(self.active_watches)
        if watching:
            self._httpd.close_connections()

    def _matches_bodies(self) -> bool:
        with self._lock:
            return any(f.body is not None for f in self.faults)

    def _take_fault(
        self, method: str, path: str, watch: bool, body: bytes | None = None
    ) -> ApiFault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path, watch, body):
                    fault.hits += 1
                    return fault
        return None

    def _log(self, method: str, path: str, query: str, status: int, *, late: bool = False) -> None:
        entry = RequestLog(
            method=method, path=path, query=query, status=status, at=time.time(), late=late
        )
        with self._lock:
            self.requests.append(entry)
            if len(self.requests) > 20_000:
                del self.requests[:10_000]

    def _watch_started(self) -> int:
        with self._lock:
            self._watch_ids += 1
            self.active_watches[self._watch_ids] = 0
            return self._watch_ids

    def _delivered(self, watch_id: int, rv: int) -> None:
        with self._lock:
            self.active_watches[watch_id] = rv

    def _watch_ended(self, watch_id: int) -> None:
        with self._lock:
            self.active_watches.pop(watch_id, None)

    def watch_count(self) -> int:
        with self._lock:
            return len(self.active_watches)

    def requests_matching(self, method: str, pattern: str) -> Iterator[RequestLog]:
        with self._lock:
            entries = list(self.requests)
        return (r for r in entries if r.method == method and re.search(pattern, r.path))
