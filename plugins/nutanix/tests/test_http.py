"""The HTTP layer: TLS trust (a configured CA wins over ``REQUESTS_CA_BUNDLE``), errors
mapped onto vmmove's, ``Retry-After`` honoured without sleeping, POSTs never resent."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

import vmmove
from vmmove.engine import Connection
from vmmove_nutanix.http import PrismHttp
from vmmove_nutanix.testing import DEFAULT_PASSWORD, FakePrism
from vmmove_nutanix.testing._tls import UNRELATED_CA_PEM

HOSTS = "/api/clustermgmt/v4.0/config/hosts"


def _http(prism: FakePrism, tmp_path: Path, clock: list[float] | None = None) -> PrismHttp:
    now = (lambda: clock[0]) if clock is not None else None
    kwargs = {"now": now} if now is not None else {}
    return PrismHttp(
        prism.url,
        user="admin",
        password=vmmove.Secret(DEFAULT_PASSWORD),
        ca_file=prism.ca_file(tmp_path),
        insecure=False,
        timeout=5.0,
        **kwargs,
    )


def test_the_configured_ca_wins_over_requests_ca_bundle(
    prism: FakePrism,
    connect: Callable[..., Connection],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unrelated = tmp_path / "unrelated.pem"
    unrelated.write_text(UNRELATED_CA_PEM)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(unrelated))
    conn = connect(prism)  # ca_file = the fake's CA
    assert len(conn.hosts()) == 3
    # Without a configured CA the environment's bundle applies, and it trusts nothing here.
    with pytest.raises(vmmove.ConnectionFailed, match="TLS"):
        connect(prism, ca_file=None)


def test_tls_is_verified_by_default_and_insecure_warns(
    prism: FakePrism, connect: Callable[..., Connection]
) -> None:
    with pytest.raises(vmmove.ConnectionFailed, match="TLS"):
        connect(prism, ca_file=None)  # the system trust store does not know the fake's CA
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        conn = connect(prism, ca_file=None, insecure=True)
    assert any(issubclass(w.category, vmmove.InsecureConnectionWarning) for w in caught)
    assert len(conn.vms()) == 5


def test_a_429_with_retry_after_is_honoured_without_sleeping(
    prism: FakePrism, tmp_path: Path
) -> None:
    clock = [100.0]
    http = _http(prism, tmp_path, clock)
    prism.fault("GET", HOSTS, status=429, retry_after=2, times=1)
    with pytest.raises(vmmove.ConnectionFailed, match="retry in 2 s"):
        http.call("GET", HOSTS)
    before = len(prism.app.log)
    clock[0] += 1.5  # within Retry-After: nothing goes out
    with pytest.raises(vmmove.ConnectionFailed, match="Retry-After"):
        http.call("GET", HOSTS)
    assert len(prism.app.log) == before
    clock[0] += 0.6  # past it: asked again, and answered
    body, _ = http.call("GET", HOSTS)
    assert len(body["data"]) == 3
    assert len(prism.app.log) == before + 1
    http.close()


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, vmmove.AuthenticationFailed),
        (404, vmmove.NotFound),
        (409, vmmove.Conflict),
        (412, vmmove.Conflict),
        (500, vmmove.ConnectionFailed),
    ],
)
def test_prism_errors_become_vmmove_errors(
    prism: FakePrism, tmp_path: Path, status: int, error: type[Exception]
) -> None:
    http = _http(prism, tmp_path)
    prism.fault("POST", "/vms/x/", status=status, times=1)
    with pytest.raises(error):
        http.call("POST", "/api/vmm/v4.0/ahv/config/vms/x/$actions/power-on", body={})
    http.close()


def test_reads_are_retried_on_a_dropped_answer_but_a_post_never_is(
    prism: FakePrism, tmp_path: Path
) -> None:
    http = _http(prism, tmp_path)
    prism.fault("GET", HOSTS, drop=True, times=1)
    body, _ = http.call("GET", HOSTS)  # urllib3 asked again
    assert len(body["data"]) == 3
    vm = prism.state.vm_named("web-1")
    prism.fault("POST", "power-off", drop=True, times=1)
    with pytest.raises(vmmove.ConnectionFailed):
        http.call(
            "POST",
            f"/api/vmm/v4.0/ahv/config/vms/{vm.id}/$actions/power-off",
            body={},
            headers={"If-Match": vm.etag},
        )
    assert len([r for r in prism.app.log if "power-off" in r.path]) == 1
    http.close()


def test_a_slow_answer_is_a_timeout_not_a_hang(prism: FakePrism, tmp_path: Path) -> None:
    import threading

    release = threading.Event()
    http = PrismHttp(
        prism.url,
        user="admin",
        password=vmmove.Secret(DEFAULT_PASSWORD),
        ca_file=prism.ca_file(tmp_path),
        insecure=False,
        timeout=0.3,
    )
    prism.fault("GET", HOSTS, hold=release, times=3)
    try:
        with pytest.raises(vmmove.ConnectionFailed, match=r"no answer|timed out|Read"):
            http.call("GET", HOSTS)
    finally:
        release.set()
        http.close()


def test_wrong_password_is_refused_and_not_named(
    prism: FakePrism, connect: Callable[..., Connection]
) -> None:
    with pytest.raises(vmmove.AuthenticationFailed) as info:
        connect(prism, password=vmmove.Secret("wrong-7Qz"))
    assert "wrong-7Qz" not in str(info.value)
    assert DEFAULT_PASSWORD not in str(info.value)
