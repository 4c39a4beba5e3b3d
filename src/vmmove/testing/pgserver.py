"""A private PostgreSQL server for tests and benchmarks: Debian's server binaries, a cluster
in a temporary folder, a private port and Unix socket, stopped by the PID it wrote.

The server refuses to run as root: as root the cluster belongs to an unprivileged user (the
``postgres`` account Debian's package creates, else ``nobody``) and every server process is
started as that user. ``scripts/postgres.sh`` installs the binaries when they are missing.

Used by the ``pg_server`` fixture (``tests/conftest.py``) and ``benchmarks/workers.py``.
"""

from __future__ import annotations

import glob
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["PostgresServer", "find_bindir"]


def find_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres`` (newest version)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    raise RuntimeError("no PostgreSQL server binaries: run scripts/postgres.sh (it installs them)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One private server. ``start()``, ``stop()`` (fast shutdown, by PID), ``restart()``."""

    def __init__(self, base: Path | None = None) -> None:
        self.bindir = find_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="vmmove-pg-", dir=base))
        self.data = self.root / "data"
        self.sockets = self.root / "run"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self.user = "vmmove"
        self._as: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    self._as = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
            if self._as is None:
                raise RuntimeError("running as root and no unprivileged account to run PostgreSQL")
        self.sockets.mkdir()
        if self._as is not None:
            for path in (self.root, self.sockets):
                os.chown(path, self._as.pw_uid, self._as.pw_gid)
        self._initdb()

    @property
    def dsn(self) -> str:
        """A libpq URI for the superuser over TCP (no password: trust, local only)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def schema_dsn(self, schema: str) -> str:
        """A DSN whose tables live in their own schema (created here): one test's journal."""
        import psycopg  # noqa: PLC0415

        with psycopg.connect(self.dsn, autocommit=True) as db:
            db.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        return f"{self.dsn}?options=-csearch_path%3D{schema}"

    def drop_schema(self, schema: str) -> None:
        import psycopg  # noqa: PLC0415

        with psycopg.connect(self.dsn, autocommit=True) as db:
            db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    def _run(self, *args: str) -> None:
        kwargs: dict[str, Any] = {}
        if self._as is not None:
            kwargs = {"user": self._as.pw_uid, "group": self._as.pw_gid, "extra_groups": []}
        proc = subprocess.run(
            list(args), capture_output=True, text=True, cwd=self.root, check=False, **kwargs
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed: {proc.stderr.strip()[-2000:]}")

    def _initdb(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        # -w: pg_ctl returns once the server accepts connections.
        self._run(
            str(self.bindir / "pg_ctl"),
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
        )

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None

    def stop(self, timeout: float = 60.0) -> None:
        """Fast shutdown (SIGINT to the postmaster), waiting on the process itself."""
        pid = self.pid()
        if pid is None:
            return
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            os.kill(pid, signal.SIGINT)
            ready, _, _ = select.select([fd], [], [], timeout)  # readable once it exited
            if not ready:
                os.kill(pid, signal.SIGKILL)
                select.select([fd], [], [], timeout)
        except ProcessLookupError:
            pass
        finally:
            os.close(fd)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
