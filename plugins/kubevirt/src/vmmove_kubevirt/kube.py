"""The Kubernetes side: configuration, API calls with errors mapped onto vmmove's tree,
and informers (a list, then a resourceVersion-aware watch, re-listing on 410) that keep a
cache the backend answers polls from.

``kubernetes`` is imported here only, and this module only when a backend connects.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client as kclient
from kubernetes import config as _kconfig
from kubernetes import watch as _kwatch

from vmmove.errors import (
    AuthenticationFailed,
    Conflict,
    ConnectionFailed,
    InsecureConnectionWarning,
    InvalidInput,
    NotFound,
    VMMoveError,
)
from vmmove.secrets import Secret

__all__ = ["Informer", "Kube", "api_error", "connect"]

log = logging.getLogger("vmmove.kubevirt")

Obj = dict[str, Any]
KV, KV_VERSION = "kubevirt.io", "v1"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# The client's config and watch modules carry no type hints.
kconfig: Any = _kconfig
kwatch: Any = _kwatch


def _status_message(exc: Any) -> str:
    """The ``message`` of the Kubernetes ``Status`` in an ApiException, else its reason."""
    body = getattr(exc, "body", None)
    if body:
        try:
            data = json.loads(body)
            if isinstance(data, dict) and data.get("message"):
                return str(data["message"])
        except ValueError:
            pass
    return str(getattr(exc, "reason", "") or type(exc).__name__).strip()


def api_error(exc: BaseException, what: str) -> VMMoveError:
    """An exception from the client (or urllib3 under it) as a vmmove error."""
    if isinstance(exc, VMMoveError):
        return exc
    if isinstance(exc, kclient.ApiException):
        code = int(exc.status or 0)
        message = _status_message(exc)
        text = f"{what}: {message}"
        if 400 <= code < 500 and "denied the request" in message:
            # An admission webhook said no. KubeVirt's answers 400 without a reason (422
            # for an invalid spec), and newer API servers relay a denial as "... is
            # forbidden: admission webhook ... denied the request: ..." (403): the message
            # says what it is, the code alone does not.
            if "in-flight migration" in message:
                return Conflict(text)
            if "does not exist" in message:
                return NotFound(text)
            return InvalidInput(f"{what}: the API server refused it ({code}): {message}")
        if code == 401:
            return AuthenticationFailed(f"{what}: the API server refused the credentials (401)")
        if code == 403:
            return AuthenticationFailed(f"{what}: forbidden (403): {message}")
        if code == 404:
            return NotFound(text)
        if code == 409:
            return Conflict(text)
        if code in (400, 415, 422):
            return InvalidInput(f"{what}: the API server refused it ({code}): {message}")
        if code == 0:
            return ConnectionFailed(f"{what}: {message}")
        return ConnectionFailed(f"{what}: the API server answered {code}: {message}")
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        reason = getattr(exc, "reason", None) or exc
        return ConnectionFailed(f"{what}: the API server is unreachable: {reason}")
    if isinstance(exc, kconfig.ConfigException):
        return InvalidInput(f"{what}: {exc}")
    return ConnectionFailed(f"{what}: {type(exc).__name__}: {exc}")


def _in_pod() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(
        os.path.join(SA_DIR, "token")
    )


def _kubeconfig_exists(path: str | None) -> bool:
    if path:
        return True
    env = os.environ.get("KUBECONFIG")
    if env:
        return any(os.path.exists(p) for p in env.split(os.pathsep) if p)
    return os.path.exists(os.path.expanduser("~/.kube/config"))


@dataclass(frozen=True, kw_only=True)
class Connected:
    api: Any  # kubernetes.client.ApiClient
    namespace: str
    context: str
    host: str


def connect(
    context: str | None,
    namespace: str | None,
    kubeconfig: str | None,
    in_cluster: bool | None,
    token: Secret | None = None,
    *,
    insecure: bool = False,
) -> Connected:
    """Load a kubeconfig context (or the in-cluster service account) into a new ApiClient.
    ``token``, if given, is the bearer token sent instead of the configured credentials.
    A context that skips TLS verification is refused unless ``insecure`` says it is meant;
    ``insecure`` switches verification off for any context, with a warning."""
    use_cluster = (
        in_cluster
        if in_cluster is not None
        else (not context and _in_pod() and not _kubeconfig_exists(kubeconfig))
    )
    cfg = kclient.Configuration()
    try:
        if use_cluster:
            kconfig.load_incluster_config(client_configuration=cfg)
            ctx_name = "in-cluster"
            if not namespace:
                try:
                    with open(os.path.join(SA_DIR, "namespace"), encoding="utf-8") as f:
                        namespace = f.read().strip()
                except OSError:
                    namespace = "default"
        else:
            # Resolved here, not by the client: it reads $KUBECONFIG once, on import.
            kubeconfig = (
                kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
            )
            contexts, active = kconfig.list_kube_config_contexts(config_file=kubeconfig)
            chosen = active
            if context:
                chosen = next((c for c in contexts if c.get("name") == context), None)
                if chosen is None:
                    names = ", ".join(sorted(str(c.get("name")) for c in contexts)) or "none"
                    raise InvalidInput(f"no kubeconfig context {context!r} (contexts: {names})")
            ctx_name = str((chosen or {}).get("name") or "")
            namespace = namespace or (chosen or {}).get("context", {}).get("namespace") or "default"
            kconfig.load_kube_config(
                config_file=kubeconfig,
                context=context or None,
                client_configuration=cfg,
                persist_config=False,
            )
    except VMMoveError:
        raise
    except Exception as exc:  # ConfigException, missing files, bad YAML
        raise InvalidInput(f"cannot load the Kubernetes configuration: {exc}") from None
    if not cfg.verify_ssl and not insecure:
        raise InvalidInput(
            f"the Kubernetes context {ctx_name!r} turns off TLS certificate checks "
            "(insecure-skip-tls-verify); pass insecure=True if that is really meant, or give "
            "the cluster's certificate-authority"
        )
    if insecure:
        cfg.verify_ssl = False
        message = (
            f"TLS certificate verification is OFF for {cfg.host} (insecure=True): anyone on "
            "the path can read the token; trust the cluster's CA in the kubeconfig instead"
        )
        warnings.warn(message, InsecureConnectionWarning, stacklevel=6)
        log.warning("%s", message)
    if token:
        cfg.api_key = {"authorization": f"Bearer {token.reveal()}"}
        cfg.api_key_prefix = {}
        cfg.refresh_api_key_hook = None
    return Connected(
        api=kclient.ApiClient(configuration=cfg),
        namespace=str(namespace),
        context=ctx_name,
        host=str(cfg.host),
    )


class Kube:
    """Typed-enough calls on one namespace; every error comes out as a VMMoveError."""

    def __init__(self, conn: Connected, *, timeout: float = 15.0) -> None:
        self.conn = conn
        self.api = conn.api
        self.namespace = conn.namespace
        self.custom = kclient.CustomObjectsApi(self.api)
        self.timeout = timeout

    def close(self) -> None:
        try:
            self.api.close()
        except Exception:  # closing must not fail
            log.debug("closing the API client failed", exc_info=True)

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", (5.0, self.timeout))
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise api_error(exc, what) from None

    def request(
        self, what: str, method: str, path: str, query: list[tuple[str, str]] | None = None
    ) -> Obj:
        """A request answered with plain JSON, without the client's typed models (loading
        CoreV1Api's models alone costs two seconds)."""
        api = self.api

        def send() -> Obj:
            req = api.param_serialize(
                method=method,
                resource_path=path,
                query_params=query or [],
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
            )
            resp = api.call_api(*req, _request_timeout=(5.0, self.timeout))
            resp.read()
            if not 200 <= resp.status <= 299:
                kclient.ApiException.from_response(http_resp=resp, body=None, data=None)
            data = json.loads(resp.data)
            if not isinstance(data, dict):
                raise ValueError(f"the API server answered {type(data).__name__}")
            return data

        try:
            return send()
        except ValueError:
            raise ConnectionFailed(f"{what}: the API server answered something not JSON") from None
        except Exception as exc:
            raise api_error(exc, what) from None

    # ---- core ----
    def version(self) -> Obj:
        return self.request("GET /version", "GET", "/version")

    def api_groups(self) -> list[str]:
        data = self.request("GET /apis", "GET", "/apis")
        return [str(g.get("name")) for g in data.get("groups") or []]

    def nodes(self) -> list[Obj]:
        return list(self.request("list nodes", "GET", "/api/v1/nodes").get("items") or [])

    def node(self, name: str) -> Obj:
        return self.request(f"get node {name}", "GET", f"/api/v1/nodes/{name}")

    # ---- custom objects in our namespace ----
    def list_all(self, plural: str, **kwargs: Any) -> tuple[list[Obj], str]:
        data = self.call(
            f"list {plural}",
            self.custom.list_namespaced_custom_object,
            KV,
            KV_VERSION,
            self.namespace,
            plural,
            **kwargs,
        )
        return list(data.get("items") or []), str(
            (data.get("metadata") or {}).get("resourceVersion", "")
        )

    def get(self, plural: str, name: str) -> Obj:
        return dict(
            self.call(
                f"get {plural}/{name}",
                self.custom.get_namespaced_custom_object,
                KV,
                KV_VERSION,
                self.namespace,
                plural,
                name,
            )
        )

    def find(self, plural: str, name: str) -> Obj | None:
        try:
            return self.get(plural, name)
        except NotFound:
            return None

    def create(self, plural: str, body: Obj) -> Obj:
        return dict(
            self.call(
                f"create {plural}",
                self.custom.create_namespaced_custom_object,
                KV,
                KV_VERSION,
                self.namespace,
                plural,
                body,
            )
        )

    def merge_patch(self, plural: str, name: str, patch: Obj) -> Obj:
        return self._patch(plural, name, patch, "application/merge-patch+json")

    def json_patch(self, plural: str, name: str, ops: list[Obj]) -> Obj:
        return self._patch(plural, name, ops, "application/json-patch+json")

    def _patch(self, plural: str, name: str, body: Obj | list[Obj], content_type: str) -> Obj:
        return dict(
            self.call(
                f"patch {plural}/{name}",
                self.custom.patch_namespaced_custom_object,
                KV,
                KV_VERSION,
                self.namespace,
                plural,
                name,
                body,
                _content_type=content_type,
            )
        )

    def delete(self, plural: str, name: str) -> None:
        self.call(
            f"delete {plural}/{name}",
            self.custom.delete_namespaced_custom_object,
            KV,
            KV_VERSION,
            self.namespace,
            plural,
            name,
        )

    # ---- cluster-scoped ----
    def cluster_get(self, group: str, version: str, plural: str, name: str) -> Obj | None:
        try:
            return dict(
                self.call(
                    f"get {plural}.{group}/{name}",
                    self.custom.get_cluster_custom_object,
                    group,
                    version,
                    plural,
                    name,
                )
            )
        except NotFound:
            return None

    def cluster_create(self, group: str, version: str, plural: str, body: Obj) -> Obj:
        return dict(
            self.call(
                f"create {plural}.{group}",
                self.custom.create_cluster_custom_object,
                group,
                version,
                plural,
                body,
            )
        )

    def all_namespaces(self, group: str, version: str, plural: str) -> list[Obj]:
        data = self.call(
            f"list {plural}.{group}",
            self.custom.list_cluster_custom_object,
            group,
            version,
            plural,
        )
        return list(data.get("items") or [])


class Informer:
    """A cache of one namespaced KubeVirt resource, kept by a list and then a watch.

    The watch resumes from the last resourceVersion it saw after any break (no event is
    missed or repeated), and re-lists only when the server answers 410 Gone. ``on_change``
    runs on the informer's thread after every change; keep it quick.
    """

    def __init__(
        self,
        kube: Kube,
        plural: str,
        on_change: Callable[[], None],
        *,
        watch_seconds: int = 300,
        keep_log: int = 10_000,
    ) -> None:
        self.kube = kube
        self.plural = plural
        self.on_change = on_change
        self.watch_seconds = watch_seconds
        self.lock = threading.Lock()
        self.cache: dict[str, Obj] = {}
        self.synced = threading.Event()
        self.resource_version = ""
        self.relists = 0  # lists after the first (410 Gone)
        self.reconnects = 0  # watches resumed after a break
        self.last_error: str | None = None
        #: (event type, name, resourceVersion) of every watch event applied, oldest first
        self.log: deque[tuple[str, str, str]] = deque(maxlen=keep_log)
        self._stop = threading.Event()
        self._watch: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"vmmove-kubevirt-{self.plural}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        w = self._watch
        if w is not None:
            w.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def wait_synced(self, timeout: float) -> bool:
        return self.synced.wait(timeout)

    def get(self, name: str) -> Obj | None:
        with self.lock:
            return self.cache.get(name)

    def seed(self, obj: Obj) -> None:
        """Put an object we just created in the cache, unless the watch brought it already."""
        name = str(obj["metadata"]["name"])
        with self.lock:
            self.cache.setdefault(name, obj)

    def items(self) -> list[Obj]:
        with self.lock:
            return list(self.cache.values())

    def _relist(self) -> None:
        items, rv = self.kube.list_all(self.plural)
        with self.lock:
            self.cache = {str(o["metadata"]["name"]): o for o in items}
            self.resource_version = rv
        self.synced.set()
        self.on_change()

    def _apply(self, etype: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        rv = str(meta.get("resourceVersion") or "")
        name = str(meta.get("name") or "")
        with self.lock:
            if etype == "BOOKMARK":
                self.resource_version = rv or self.resource_version
                return
            if etype == "DELETED":
                self.cache.pop(name, None)
            else:
                self.cache[name] = obj
            self.resource_version = rv or self.resource_version
            self.log.append((etype, name, rv))
        self.on_change()

    def _run(self) -> None:
        backoff = 0.05
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    self._relist()
                    need_list = False
                    self.last_error = None
                self._watch = w = kwatch.Watch()
                stream = w.stream(
                    self.kube.custom.list_namespaced_custom_object,
                    KV,
                    KV_VERSION,
                    self.kube.namespace,
                    self.plural,
                    resource_version=self.resource_version,
                    timeout_seconds=self.watch_seconds,
                    allow_watch_bookmarks=True,
                    _request_timeout=(5.0, self.watch_seconds + 15.0),
                )
                for event in stream:
                    if self._stop.is_set():
                        break
                    self.last_error = None  # the watch is back: the cache is current again
                    raw = event.get("raw_object")
                    if isinstance(raw, dict):
                        self._apply(str(event.get("type")), raw)
                backoff = 0.05
                self.last_error = None
            except kclient.ApiException as exc:
                if exc.status == 410:
                    need_list = True
                    self.relists += 1
                    continue
                self._failed(exc)
                need_list = need_list or exc.status in (401, 403)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception as exc:  # dropped connections, timeouts, TLS resets
                if self._stop.is_set():
                    break
                self._failed(exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                self._watch = None

    def _failed(self, exc: BaseException) -> None:
        self.reconnects += 1
        self.last_error = str(api_error(exc, f"watch {self.plural}"))
        log.debug("watch %s broke: %s", self.plural, self.last_error)
