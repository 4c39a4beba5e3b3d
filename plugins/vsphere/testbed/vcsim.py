"""Start and stop vcsim-vmmove (govmomi's vCenter simulator + vmmove's migration extension) from tests.

Typical pytest use::

    import pytest
    from vcsim import Vcsim   # plugins/vsphere/testbed on sys.path, or load the file by path

    @pytest.fixture(scope="session")
    def vcsim():
        sim = Vcsim.start(cluster=2, host=2, vm=2, migrate_duration="1s")
        yield sim
        sim.stop()

    def test_connect(vcsim):
        si = SmartConnect(host=vcsim.host, port=vcsim.port, user=vcsim.username, pwd=vcsim.password,
                          sslContext=vcsim.ssl_context())

Each instance gets its own TMPDIR (the simulator creates one directory per datastore there), a generated CA
(``.ca_file``) and a random free loopback port. ``stop()`` terminates exactly the PID it started and removes the
TMPDIR. Only the standard library is used here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
BUILD_SH = HERE / "build.sh"


def cache_dir() -> Path:
    return Path(os.environ.get("VMMOVE_TESTBED_CACHE", "/var/cache/vmmove-testbed"))


def binary_path() -> Path:
    return cache_dir() / "vcsim-vmmove"


def build(force: bool = False) -> Path:
    """Run build.sh if the binary is missing (or always, with force=True; build.sh itself skips
    the compile when the binary is newer than the sources). Returns the binary path."""
    path = binary_path()
    if force or not os.access(path, os.X_OK):
        env = dict(os.environ)
        subprocess.run(["sh", str(BUILD_SH)], check=True, env=env, stdout=subprocess.DEVNULL)
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"build.sh did not produce {path}")
    return path


class VcsimError(RuntimeError):
    pass


@dataclass
class Vcsim:
    """A running simulator. Create with Vcsim.start()."""

    url: str
    host: str
    port: int
    ca_file: str
    username: str
    password: str
    pid: int
    tmpdir: str
    log_file: str
    startup_seconds: float
    _proc: subprocess.Popen = field(repr=False, default=None)
    _ctl_token: str = field(repr=False, default="")

    # Model flags accepted by start() (keyword -> command-line flag); see README.md for meanings.
    FLAGS = {
        "dc": "-dc",
        "cluster": "-cluster",
        "host": "-host",
        "standalone_host": "-standalone-host",
        "vm": "-vm",
        "pool": "-pool",
        "ds": "-ds",
        "pg": "-pg",
        "autostart": "-autostart",
        "host_memory_mb": "-host-memory-mb",
        "migrate_duration": "-migrate-duration",
        "queue_delay": "-queue-delay",
        "tick": "-tick",
        "check_delay": "-check-delay",
        "max_per_host": "-max-per-host",
        "validation_faults": "-validation-faults",
        "task_retention": "-task-retention",
        "compat_ex_poolless": "-compat-ex-poolless",
        "tls_hostname": "-tls-hostname",
        "trace": "-trace",
        # descriptive aliases
        "datacenters": "-dc",
        "clusters": "-cluster",
        "hosts_per_cluster": "-host",
        "standalone_hosts": "-standalone-host",
        "vms_per_pool": "-vm",
        "datastores": "-ds",
    }

    @classmethod
    def start(
        cls,
        *,
        username: str = "vmmove-admin",
        password: Optional[str] = None,
        listen: str = "127.0.0.1:0",
        binary: Optional[os.PathLike] = None,
        timeout: float = 30.0,
        **model_flags,
    ) -> "Vcsim":
        """Launch the simulator and wait until it accepts TLS connections.

        model_flags: dc, cluster, host (per cluster), standalone_host, vm (per pool), pool, ds (or the aliases
        datacenters, clusters, hosts_per_cluster, standalone_hosts, vms_per_pool, datastores),
        host_memory_mb, migrate_duration ("2s" or seconds as a number), queue_delay, tick, check_delay,
        max_per_host, validation_faults ("task"|"running"|"sync"), task_retention, compat_ex_poolless,
        tls_hostname, trace.
        """
        exe = Path(binary) if binary else build()
        password = password if password is not None else "pw-" + os.urandom(6).hex()
        tmpdir = tempfile.mkdtemp(prefix="vmmove-vcsim-")
        ca_file = os.path.join(tmpdir, "ca.pem")
        info_file = os.path.join(tmpdir, "info.json")
        log_file = os.path.join(tmpdir, "vcsim.log")

        args = [
            str(exe),
            "-listen",
            listen,
            "-username",
            username,
            "-password",
            password,
            "-cert-file",
            ca_file,
            "-info-file",
            info_file,
            "-exit-on-stdin-eof",
        ]
        for key, value in model_flags.items():
            flag = cls.FLAGS.get(key)
            if flag is None:
                shutil.rmtree(tmpdir, ignore_errors=True)
                raise TypeError(f"unknown vcsim flag {key!r}; known: {sorted(cls.FLAGS)}")
            if isinstance(value, bool):
                args.append(f"{flag}={'true' if value else 'false'}")
            elif isinstance(value, float) and key in (
                "migrate_duration",
                "queue_delay",
                "tick",
                "check_delay",
                "task_retention",
            ):
                args += [flag, f"{value}s"]
            elif isinstance(value, (list, tuple)):
                args += [flag, ",".join(map(str, value))]
            else:
                args += [flag, str(value)]

        env = dict(os.environ, TMPDIR=tmpdir)
        t0 = time.monotonic()
        log = open(log_file, "wb")
        try:
            # stdin is a pipe we never write: if this Python process dies, the pipe closes and the
            # simulator exits by itself (-exit-on-stdin-eof), so no orphan outlives the test run.
            proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tmpdir,
                close_fds=True,
            )
        except BaseException:
            log.close()
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        log.close()

        sim = None
        try:
            info = cls._wait_ready(proc, info_file, log_file, timeout)
            sim = cls(
                url=info["url"],
                host=info["host"],
                port=int(info["port"]),
                ca_file=ca_file,
                username=username,
                password=password,
                pid=proc.pid,
                tmpdir=tmpdir,
                log_file=log_file,
                startup_seconds=time.monotonic() - t0,
                _proc=proc,
                _ctl_token=info.get("ctl_token", ""),
            )
            return sim
        finally:
            if sim is None:
                cls._kill(proc)
                shutil.rmtree(tmpdir, ignore_errors=True)

    @staticmethod
    def _wait_ready(proc, info_file, log_file, timeout) -> dict:
        """Poll for the info file (written after the listener is up), then for the port to accept."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        info = None
        while time.monotonic() < deadline:
            rc = proc.poll()
            if rc is not None:
                raise VcsimError(
                    f"vcsim-vmmove exited with {rc} during startup:\n{_tail(log_file)}"
                )
            if info is None and os.path.exists(info_file):
                with open(info_file) as f:
                    info = json.load(f)
            if info is not None:
                try:
                    with socket.create_connection((info["host"], int(info["port"])), timeout=1.0):
                        return info
                except OSError:
                    pass
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        raise VcsimError(f"vcsim-vmmove not ready after {timeout}s:\n{_tail(log_file)}")

    # -- client helpers -------------------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only this simulator's CA. The certificate is valid for
        127.0.0.1, ::1 and localhost (plus any tls_hostname), so hostname checking stays on."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def connect(self, host: Optional[str] = None, **kw):
        """pyVim.connect.SmartConnect with verified TLS (imports pyvmomi lazily)."""
        from pyVim.connect import SmartConnect

        return SmartConnect(
            host=host or self.host,
            port=self.port,
            user=kw.pop("user", self.username),
            pwd=kw.pop("pwd", self.password),
            sslContext=kw.pop("sslContext", self.ssl_context()),
            **kw,
        )

    def restart(self, down: float = 0.0, inflight: str = "lost") -> dict:
        """Simulate a vCenter restart as clients see it (README "Platform variants"): every session and
        TCP connection is dropped, every task MoRef is gone, /sdk answers 503 for ``down`` seconds; the
        inventory is kept. ``inflight``: "lost" (a migration in flight is lost, the VM stays on its
        source) or "commit" (it had passed the commit point: the VM is on its target). Returns the
        server's report: epoch, dropped_tasks, lost_migrations, committed."""
        return self._ctl("restart", down=f"{down}s", inflight=inflight)

    def _ctl(self, action: str, **params: str) -> dict:
        import http.client
        import urllib.parse

        conn = http.client.HTTPSConnection(
            self.host, self.port, context=self.ssl_context(), timeout=10
        )
        try:
            path = f"/vmmove/ctl/{action}?{urllib.parse.urlencode(params)}"
            conn.request("POST", path, headers={"X-Vmmove-Ctl": self._ctl_token})
            resp = conn.getresponse()
            body = resp.read().decode()
            if resp.status != 200:
                raise VcsimError(f"{action}: HTTP {resp.status}: {body.strip()}")
            return json.loads(body)
        finally:
            conn.close()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate exactly this simulator's PID (SIGTERM, then SIGKILL) and remove its TMPDIR."""
        if self._proc is not None:
            self._kill(self._proc, timeout)
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    @staticmethod
    def _kill(proc: subprocess.Popen, timeout: float = 10.0) -> None:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
            except ProcessLookupError:
                pass
        if proc.stdin:
            proc.stdin.close()

    def __enter__(self) -> "Vcsim":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _tail(path: str, n: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"
