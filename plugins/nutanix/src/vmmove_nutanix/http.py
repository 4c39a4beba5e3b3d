"""One ``requests.Session`` to Prism: HTTP Basic, TLS, retries for idempotent calls only,
Prism's answers mapped onto vmmove's errors, and ``Retry-After`` honoured without blocking.

Imported on connect only: ``import vmmove`` and ``vmmove backends`` never load ``requests``.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from vmmove.errors import (
    AuthenticationFailed,
    Conflict,
    ConnectionFailed,
    InsecureConnectionWarning,
    InvalidInput,
    NotFound,
)
from vmmove.secrets import Secret

__all__ = ["PrismHttp", "StaleETag"]

log = logging.getLogger("vmmove.nutanix")


class StaleETag(Conflict):
    """412: the VM changed since its ETag was read (re-read, re-check, retry)."""


class PrismHttp:
    """Calls to one Prism. ``verify`` is the CA file, or ``True`` (system trust), or
    ``False`` (``insecure``). ``now`` is injectable for the Retry-After tests."""

    def __init__(
        self,
        base_url: str,
        *,
        user: str,
        password: Secret | None,
        ca_file: Path | None,
        insecure: bool,
        timeout: float,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.now = now
        self._quiet_until = 0.0
        if insecure:
            warnings.warn(
                f"TLS certificate verification is off for {self.base_url} (insecure=true)",
                InsecureConnectionWarning,
                stacklevel=4,
            )
            log.warning("TLS certificate verification is off for %s", self.base_url)
            self._verify: bool | str = False
        elif ca_file is not None:
            if not ca_file.is_file():
                raise InvalidInput(f"ca_file {ca_file} is not a file")
            self._verify = str(ca_file)
        else:
            self._verify = True
        session = requests.Session()
        # The password goes out only in the Authorization header requests builds here.
        session.auth = (user, password.reveal() if password else "")
        session.headers["Accept"] = "application/json"
        # Idempotent reads only: urllib3 never resends a POST (a migrate without a request
        # id could then run twice); a connection never made is safe to retry for any call.
        retry = Retry(
            total=3,
            connect=2,
            read=1,
            status=2,
            other=0,
            allowed_methods=frozenset({"GET", "HEAD"}),
            status_forcelist=frozenset({502, 504}),
            backoff_factor=0.05,
            respect_retry_after_header=False,  # a 429/503 is ours to honour, without sleeping
            raise_on_status=False,
        )
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=8)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        self.session = session

    def close(self) -> None:
        self.session.close()

    def __repr__(self) -> str:
        return f"PrismHttp({self.base_url!r})"

    # ---- calls ------------------------------------------------------------------------
    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Any, Mapping[str, str]]:
        """The JSON body and the headers of a 2xx answer; a vmmove error otherwise."""
        wait = self._quiet_until - self.now()
        if wait > 0:
            # Prism asked for quiet: no request goes out before the time it named.
            raise ConnectionFailed(f"Prism asked to wait: retry in {wait:.1f} s (Retry-After)")
        url = self.base_url + path
        try:
            # verify on every call: REQUESTS_CA_BUNDLE overrides Session.verify (trust_env)
            # but never a verify given with the request, so a configured CA wins.
            response = self.session.request(
                method,
                url,
                params=params,
                json=body,
                headers=dict(headers or {}),
                timeout=self.timeout,
                verify=self._verify,
            )
        except requests.exceptions.SSLError as exc:
            raise ConnectionFailed(
                f"TLS with {self.base_url} failed (certificate not trusted? set ca_file): "
                f"{type(exc).__name__}"
            ) from None
        except requests.exceptions.Timeout:
            raise ConnectionFailed(
                f"{method} {path}: no answer within {self.timeout:g} s"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise ConnectionFailed(f"{method} {path}: {_reason(exc)}") from None
        return self._answer(method, path, response), response.headers

    def _answer(self, method: str, path: str, response: requests.Response) -> Any:
        status = response.status_code
        if 200 <= status < 300:
            if not response.content:
                return {}
            try:
                return response.json()
            except ValueError:
                raise ConnectionFailed(
                    f"{method} {path}: Prism answered nonsense (not JSON)"
                ) from None
        message = _message(response)
        where = f"{method} {path}"
        if status in (429, 503) and response.headers.get("Retry-After"):
            seconds = _retry_after(response.headers["Retry-After"])
            self._quiet_until = max(self._quiet_until, self.now() + seconds)
            raise ConnectionFailed(f"{where}: Prism is busy ({status}); retry in {seconds:g} s")
        if status in (401, 403):
            raise AuthenticationFailed(f"Prism refused the credentials ({status})")
        if status == 404:
            raise NotFound(f"{where}: {message}")
        if status == 412:
            raise StaleETag(f"{where}: {message}")
        if 400 <= status < 500:
            raise Conflict(f"Prism refused {where} ({status}): {message}")
        raise ConnectionFailed(f"{where}: Prism failed ({status}): {message}")


def _reason(exc: Exception) -> str:
    # The exception's text can hold the URL, never the password (it is never in the URL).
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _retry_after(value: str) -> float:
    try:
        return min(600.0, max(0.0, float(value)))
    except ValueError:
        return 1.0  # an HTTP date: wait a little, Prism sends seconds


def _message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason or ""
    if isinstance(body, dict):
        data = body.get("data")
        if isinstance(data, dict) and isinstance(data.get("error"), list):
            texts = [e.get("message") for e in data["error"] if isinstance(e, dict)]
            found = "; ".join(t for t in texts if isinstance(t, str))
            if found:
                return found[:300]
        if isinstance(body.get("message"), str):
            return str(body["message"])[:300]
    return response.reason or ""
