#!/usr/bin/env python3
"""Two real libvirt "hosts" on one machine, for vmmove's libvirt plugin tests.

Each host is ``libvirtd --listen -f <conf>`` running inside
``unshare --mount --uts --propagation private`` with its own copies of /etc/libvirt, /run/libvirt,
/var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt bind-mounted over the real ones, its own
hostname, TCP port (127.0.0.1 only, no auth), host_uuid and migration port range. Guests are TCG
(``<domain type='qemu'>``) and run QEMU 10 through the wrapper that setup.sh generates.

Needs only the standard library and ``virsh`` (libvirt-clients). Run ``setup.sh`` first.

CLI::

    python3 plugins/libvirt/testbed/hosts.py start  [--state-dir DIR] [--ports 16600,16601]
    python3 plugins/libvirt/testbed/hosts.py status [--json]
    python3 plugins/libvirt/testbed/hosts.py stop
    python3 plugins/libvirt/testbed/hosts.py xml NAME [--wss-mib N --dirty-mib-s N]   # print a guest XML

Python (e.g. a pytest session fixture)::

    tb = Testbed.start()                 # or Testbed.attach() to reuse hosts started by the CLI
    tb.uris                              # ["qemu+tcp://127.0.0.1:16600/system", "qemu+tcp://127.0.0.1:16601/system"]
    xml = tb.domain_xml("g1", wss_mib=128, dirty_mib_s=64)
    hb = read_heartbeats(tb.console_path("g1"))   # hb.latest_seq, hb.bad, hb.ok
    tb.stop()                            # destroys domains, then kills exactly the recorded PIDs

Environment: VMMOVE_TESTBED_CACHE (cache root, default /var/cache/vmmove-testbed; setup.sh puts
QEMU 10, the wrapper, kernel and initramfs in its libvirt/ subdirectory), VMMOVE_TESTBED_STATE (default /run/vmmove-testbed: host dirs,
PIDs, consoles, logs).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterable, Optional
from xml.sax.saxutils import escape, quoteattr

DEFAULT_CACHE = "/var/cache/vmmove-testbed"
DEFAULT_STATE = "/run/vmmove-testbed"
DEFAULT_PORTS = (16600, 16601)
MIGRATION_PORT_BASE = 49152  # host i gets [base + 64*i, base + 64*i + 63]
MIGRATION_PORT_SPAN = 64
TLS_PORT_OFFSET = 10  # host i also listens for TLS on its TCP port + 10 (16610, 16611)
HOST_NAMES = "abcdefghijklmnopqrstuvwxyz"

# Directories each host gets a private copy of (bind-mounted inside its mount namespace).
HOST_DIRS = {
    "pki": "/etc/pki",  # the daemon's TLS files, as server and as the client of its peer
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}

UNSHARE = "/usr/bin/unshare"
LIBVIRTD = "/usr/sbin/libvirtd"
VIRSH = "virsh"
IPTABLES = "iptables"
#: Our own iptables chain (jumped to from INPUT): a cut link is a pair of DROP rules in it.
LINK_CHAIN = "VMMOVE-TESTBED"


class TestbedError(RuntimeError):
    pass


def cache_dir() -> Path:
    """Where setup.sh put QEMU 10, the wrapper, kernel and initramfs: <cache root>/libvirt."""
    return Path(os.environ.get("VMMOVE_TESTBED_CACHE", DEFAULT_CACHE)) / "libvirt"


def state_dir_default() -> Path:
    return Path(os.environ.get("VMMOVE_TESTBED_STATE", DEFAULT_STATE))


# --------------------------------------------------------------------------------------------------
# heartbeats
# --------------------------------------------------------------------------------------------------
_HB_RE = re.compile(r"HB ((?:[a-z_]+=\d+ ?)+)")
_START_RE = re.compile(r"VMMOVE-GUEST START")
_PANIC_RE = re.compile(r"Kernel panic|BUG:|Oops", re.I)


@dataclasses.dataclass
class Heartbeats:
    """What a guest console file says. ``bad`` is the total of bad pages over all boots."""

    count: int = 0  # heartbeat lines seen
    latest: Optional[dict] = None  # fields of the last heartbeat line
    boots: int = 0  # "VMMOVE-GUEST START" lines (more than 1: the guest rebooted)
    bad: int = 0  # total bad pages (sum over boots of the cumulative counter)
    bad_lines: list = dataclasses.field(default_factory=list)  # "BAD page=..." lines
    panic_lines: list = dataclasses.field(default_factory=list)

    @property
    def latest_seq(self) -> int:
        return self.latest["seq"] if self.latest else 0

    @property
    def ok(self) -> bool:
        return self.bad == 0 and self.boots <= 1 and not self.panic_lines and not self.bad_lines


def parse_heartbeats(text: str) -> Heartbeats:
    hb = Heartbeats()
    boot_bad = 0
    for raw in text.splitlines():
        line = raw.strip("\r")
        if _START_RE.search(line):
            hb.bad += boot_bad
            boot_bad = 0
            hb.boots += 1
            continue
        m = _HB_RE.search(line)
        if m:
            fields = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
            hb.count += 1
            hb.latest = fields
            boot_bad = max(boot_bad, fields.get("bad", 0))
            continue
        if "BAD page=" in line:
            hb.bad_lines.append(line[line.index("BAD page=") :])
        elif _PANIC_RE.search(line):
            hb.panic_lines.append(line)
    hb.bad += boot_bad
    return hb


def read_heartbeats(path: os.PathLike | str) -> Heartbeats:
    """Parse a guest's console file (missing file: no heartbeats yet)."""
    try:
        with open(path, "r", errors="replace") as f:
            return parse_heartbeats(f.read())
    except FileNotFoundError:
        return Heartbeats()


def wait_heartbeat(
    path: os.PathLike | str, min_seq: int = 1, timeout: float = 60.0, poll: float = 0.1
) -> Heartbeats:
    """Wait until the console shows a heartbeat with seq >= min_seq; raises TestbedError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        hb = read_heartbeats(path)
        if hb.latest_seq >= min_seq:
            return hb
        if time.monotonic() > deadline:
            raise TestbedError(
                f"no heartbeat seq>={min_seq} in {path} after {timeout:.0f}s (latest {hb.latest})"
            )
        time.sleep(poll)


# --------------------------------------------------------------------------------------------------
# process helpers (everything is by PID, and a PID is checked against /proc before a signal)
# --------------------------------------------------------------------------------------------------
def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []


def _alive(pid: int) -> bool:
    """True if pid runs and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _kill_pid(pid: int, must_contain: Iterable[str], timeout: float = 10.0) -> bool:
    """SIGTERM then SIGKILL one PID, only if its command line contains all of must_contain."""
    cmd = " ".join(_cmdline(pid))
    if not _alive(pid) or not all(s in cmd for s in must_contain):
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:  # reap if it is our child
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return True
            except ChildProcessError:
                pass
            if not _alive(pid):
                return True
            time.sleep(0.05)
    return not _alive(pid)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _virsh(uri: str, *args: str, timeout: float = 60.0, check: bool = True) -> str:
    p = subprocess.run(
        [VIRSH, "-q", "-c", uri, *args], capture_output=True, text=True, timeout=timeout
    )
    if check and p.returncode != 0:
        raise TestbedError(f"virsh -c {uri} {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def _iptables(*args: str, check: bool = True) -> int:
    """Run iptables (waiting for its lock); the exit status, or TestbedError if check fails."""
    if shutil.which(IPTABLES) is None:
        raise TestbedError("iptables is missing: run plugins/libvirt/testbed/setup.sh")
    p = subprocess.run([IPTABLES, "-w", "10", *args], capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise TestbedError(f"iptables {' '.join(args)}: {p.stderr.strip()}")
    return p.returncode


# --------------------------------------------------------------------------------------------------
# TLS: a throw-away CA, a server and a client certificate (openssl), in libvirt's layout
# --------------------------------------------------------------------------------------------------
_CA_EXT = """[req]
distinguished_name = dn
prompt = no
x509_extensions = ext
[dn]
CN = {cn}
[ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""
# libvirt checks key usage and purpose: digitalSignature + keyEncipherment, and the TLS
# server or client purpose to match the end the certificate is used at.
_LEAF_EXT = """[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = {purpose}
subjectAltName = DNS:localhost, IP:127.0.0.1
"""


def _openssl(*args: str, cwd: Path) -> None:
    p = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise TestbedError(f"openssl {' '.join(args)}: {p.stderr.strip()}")


def _new_key_args(key: str) -> list[str]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key]


def make_pki(root: Path) -> None:
    """Write, under ``root``: ``host/`` (a daemon's /etc/pki: CA, server and client pairs),
    ``client/`` (a client's pkipath: cacert, clientcert, clientkey) and ``untrusting/`` (the
    a client of another CA, which did not sign the server's certificate)."""
    if shutil.which("openssl") is None:
        raise TestbedError("openssl is missing: run plugins/libvirt/testbed/setup.sh")
    shutil.rmtree(root, ignore_errors=True)
    work = root / "work"
    work.mkdir(parents=True)
    for ca in ("ca", "other-ca"):
        (work / f"{ca}.cnf").write_text(_CA_EXT.format(cn=f"vmmove testbed {ca}"))
        _openssl("req", "-x509", "-new", *_new_key_args(f"{ca}.key"), "-days", "3650",
                 "-config", f"{ca}.cnf", "-out", f"{ca}.pem", cwd=work)  # fmt: skip
    leaves = (("server", "serverAuth", "ca"), ("client", "clientAuth", "ca"),
              ("other-client", "clientAuth", "other-ca"))  # fmt: skip
    for leaf, purpose, ca in leaves:
        (work / f"{leaf}.cnf").write_text(_LEAF_EXT.format(cn=f"vmmove-{leaf}", purpose=purpose))
        _openssl("req", "-new", *_new_key_args(f"{leaf}.key"), "-config", f"{leaf}.cnf",
                 "-out", f"{leaf}.csr", cwd=work)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{leaf}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-days", "3650", "-extfile", f"{leaf}.cnf", "-extensions",
                 "ext", "-out", f"{leaf}.pem", cwd=work)  # fmt: skip
    # The hosts trust clients of either CA, so a client that distrusts the hosts (untrusting/)
    # is still a client they accept: only its own check of the server can fail.
    (work / "both-cas.pem").write_text(
        (work / "ca.pem").read_text() + (work / "other-ca.pem").read_text()
    )
    layout = {
        "host/CA/cacert.pem": "both-cas.pem",
        "host/libvirt/servercert.pem": "server.pem",
        "host/libvirt/private/serverkey.pem": "server.key",
        "host/libvirt/clientcert.pem": "client.pem",
        "host/libvirt/private/clientkey.pem": "client.key",
        "client/cacert.pem": "ca.pem",
        "client/clientcert.pem": "client.pem",
        "client/clientkey.pem": "client.key",
        "untrusting/cacert.pem": "other-ca.pem",
        "untrusting/clientcert.pem": "other-client.pem",
        "untrusting/clientkey.pem": "other-client.key",
    }
    for dest, src in layout.items():
        path = root / dest
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / src, path)
        if src.endswith(".key"):
            path.chmod(0o600)


# --------------------------------------------------------------------------------------------------
# hosts
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Host:
    name: str  # "a", "b", ...
    hostname: str
    port: int
    migration_port_min: int
    migration_port_max: int
    host_uuid: str
    dir: str
    pid: int = 0  # libvirtd
    reaper_pid: int = 0  # the subreaper that started libvirtd and reaps its orphaned QEMUs
    # reapers of earlier libvirtd instances (restart_host): each stays while QEMUs it adopted run
    old_reapers: list = dataclasses.field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"qemu+tcp://127.0.0.1:{self.port}/system"

    @property
    def tls_port(self) -> int:
        return self.port + TLS_PORT_OFFSET

    @property
    def tls_uri(self) -> str:
        return f"qemu+tls://127.0.0.1:{self.tls_port}/system"

    @property
    def socket_uri(self) -> str:
        return f"qemu+unix:///system?socket={self.dir}/run/libvirt-sock"

    @property
    def log(self) -> str:
        return f"{self.dir}/daemon.log"

    def alive(self) -> bool:
        return bool(self.pid) and _alive(self.pid) and LIBVIRTD in " ".join(_cmdline(self.pid))

    def qemu_pids(self) -> dict[str, int]:
        """Domain name -> QEMU PID, from this host's private /run/libvirt/qemu/*.pid."""
        out = {}
        for f in Path(self.dir, "run", "qemu").glob("*.pid"):
            if not f.with_suffix(".xml").exists():  # e.g. driver.pid (libvirtd's own lock)
                continue
            try:
                out[f.stem] = int(f.read_text().strip())
            except (OSError, ValueError):
                pass
        return out


def _libvirtd_conf(h: Host) -> str:
    # TLS files are libvirt's defaults under /etc/pki, which is the host's own (bind mount).
    return f"""# generated by vmmove testbed hosts.py for host {h.name}
listen_tls = 1
tls_port = "{h.tls_port}"
auth_tls = "none"
listen_tcp = 1
listen_addr = "127.0.0.1"
tcp_port = "{h.port}"
auth_tcp = "none"
auth_unix_ro = "none"
auth_unix_rw = "none"
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
host_uuid = "{h.host_uuid}"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
keepalive_interval = 5
keepalive_count = 5
"""


def _qemu_conf(h: Host) -> str:
    return f"""# generated by vmmove testbed hosts.py for host {h.name}
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
cgroup_controllers = [ ]
namespaces = [ ]
migration_port_min = {h.migration_port_min}
migration_port_max = {h.migration_port_max}
"""


_LAUNCHER = """#!/bin/sh
# generated by vmmove testbed hosts.py: runs inside `unshare --mount --uts --propagation private`
set -e
{mounts}
hostname {hostname}
exec {libvirtd} --listen -f /etc/libvirt/libvirtd.conf -p {dir}/libvirtd.pid
"""


class Testbed:
    """Two (or more) libvirt hosts. Create with Testbed.start() or Testbed.attach()."""

    def __init__(
        self,
        state_dir: os.PathLike | str | None = None,
        ports: Iterable[int] = DEFAULT_PORTS,
        cache: os.PathLike | str | None = None,
    ):
        self.state_dir = Path(state_dir or state_dir_default())
        self.cache = Path(cache or cache_dir())
        self.emulator = str(self.cache / "bin" / "qemu-system-x86_64-10")
        self.kernel = str(self.cache / "guest" / "vmlinuz")
        self.initrd = str(self.cache / "guest" / "initramfs.cpio.gz")
        self.hosts: list[Host] = []
        for i, port in enumerate(ports):
            n = HOST_NAMES[i]
            hostname = f"vmmove-host-{n}"
            lo = MIGRATION_PORT_BASE + MIGRATION_PORT_SPAN * i
            self.hosts.append(
                Host(
                    name=n,
                    hostname=hostname,
                    port=int(port),
                    migration_port_min=lo,
                    migration_port_max=lo + MIGRATION_PORT_SPAN - 1,
                    host_uuid=str(
                        uuid.uuid5(uuid.NAMESPACE_DNS, f"{hostname}.vmmove-testbed.invalid")
                    ),
                    dir=str(self.state_dir / f"host-{n}"),
                )
            )
        self._procs: dict[str, subprocess.Popen] = {}
        self._retired: list[subprocess.Popen] = []  # reapers of restarted daemons

    # ---- properties ------------------------------------------------------------------------------
    @property
    def uris(self) -> list[str]:
        return [h.uri for h in self.hosts]

    @property
    def socket_uris(self) -> list[str]:
        return [h.socket_uri for h in self.hosts]

    @property
    def tls_uris(self) -> list[str]:
        return [h.tls_uri for h in self.hosts]

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def tls_dir(self) -> str:
        """A client's ``pkipath`` that trusts the hosts' CA."""
        return str(self.pki_dir / "client")

    @property
    def untrusting_tls_dir(self) -> str:
        """A client's ``pkipath`` whose CA did not sign the hosts' certificate."""
        return str(self.pki_dir / "untrusting")

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    def console_path(self, name: str) -> str:
        return str(self.state_dir / "consoles" / f"{name}.log")

    # ---- lifecycle -------------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        state_dir=None,
        ports: Iterable[int] = DEFAULT_PORTS,
        cache=None,
        warm: bool = True,
        reuse: bool = False,
        timeout: float = 60.0,
    ) -> "Testbed":
        """Start the hosts and wait until each answers (and has probed the emulator, if warm).

        Hosts left over from an earlier run in the same state dir are stopped first (by their
        recorded PIDs), unless reuse=True and they are all alive, in which case they are attached.
        """
        tb = cls(state_dir, ports, cache)
        tb._check_artifacts()
        prev = cls._load(tb.state_dir)
        if prev is not None:
            if (
                reuse
                and [h.port for h in prev.hosts] == [h.port for h in tb.hosts]
                and all(h.alive() for h in prev.hosts)
            ):
                return prev
            prev.stop()
        tb._start(warm=warm, timeout=timeout)
        return tb

    @classmethod
    def attach(cls, state_dir=None) -> "Testbed":
        """The running testbed recorded in state_dir (started e.g. by `hosts.py start`)."""
        tb = cls._load(Path(state_dir or state_dir_default()))
        if tb is None or not all(h.alive() for h in tb.hosts):
            raise TestbedError(f"no running testbed recorded in {state_dir or state_dir_default()}")
        return tb

    def __enter__(self) -> "Testbed":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _check_artifacts(self) -> None:
        missing = [
            p
            for p in (self.emulator, self.kernel, self.initrd, LIBVIRTD, UNSHARE)
            if not os.path.exists(p)
        ]
        if missing or not shutil.which(VIRSH):
            raise TestbedError(
                f"missing {missing or [VIRSH]}: run plugins/libvirt/testbed/setup.sh first"
            )

    def _prepare_host_dir(self, h: Host) -> None:
        d = Path(h.dir)
        # fresh state every start, except cache/ (libvirt's QEMU capabilities cache: faster warm-up)
        for sub in ("etc", "run", "lib", "log"):
            shutil.rmtree(d / sub, ignore_errors=True)
        d.mkdir(parents=True, exist_ok=True)
        shutil.copytree("/etc/libvirt", d / "etc", symlinks=True)
        shutil.copytree("/var/lib/libvirt", d / "lib", symlinks=True)
        for sub in ("run", "log/qemu", "cache"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        # no default network (would start dnsmasq), no autostarted anything
        for f in [
            d / "etc/qemu/networks/default.xml",
            *(d / "etc/qemu/networks/autostart").glob("*"),
            *(d / "etc/qemu/autostart").glob("*"),
        ]:
            if f.is_file() or f.is_symlink():
                f.unlink()
        shutil.rmtree(d / "pki", ignore_errors=True)
        shutil.copytree(self.pki_dir / "host", d / "pki")
        (d / "etc/libvirtd.conf").write_text(_libvirtd_conf(h))
        (d / "etc/qemu.conf").write_text(_qemu_conf(h))
        mounts = "\n".join(f"mount --bind {d / sub} {target}" for sub, target in HOST_DIRS.items())
        launcher = d / "launch.sh"
        launcher.write_text(
            _LAUNCHER.format(mounts=mounts, hostname=h.hostname, libvirtd=LIBVIRTD, dir=d)
        )
        launcher.chmod(0o755)
        for f in ("libvirtd.pid", "reaper.pid", "daemon.log"):
            (d / f).unlink(missing_ok=True)

    def _start(self, warm: bool, timeout: float) -> None:
        t0 = time.monotonic()
        for h in self.hosts:
            for port in (h.port, h.tls_port):
                if _port_open(port):
                    raise TestbedError(f"127.0.0.1:{port} is already in use")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        make_pki(self.pki_dir)
        (self.state_dir / "consoles").mkdir(exist_ok=True)
        for target in HOST_DIRS.values():  # mount points
            os.makedirs(target, exist_ok=True)
        try:
            for h in self.hosts:
                self._prepare_host_dir(h)
                self._launch(h)
            for h in self.hosts:
                h.pid = self._wait_child_pid(h, t0 + timeout)
            self._save()
            for h in self.hosts:
                self._wait_ready(h, t0 + timeout)
            if warm:
                with concurrent.futures.ThreadPoolExecutor(len(self.hosts)) as ex:
                    list(ex.map(self._warm, self.hosts))
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - t0

    def _launch(self, h: Host) -> None:
        with open(h.log, "ab") as log:
            # The reaper (this file, `reaper` command) is a child subreaper: QEMU daemonizes, so when
            # libvirt stops a guest its QEMU is an orphan, and this machine's PID 1 reaps orphans
            # lazily (libvirt then waits ~1.6 s for the zombie in every migration's confirm phase).
            # Its child: unshare without --fork execs in place and launch.sh execs libvirtd, so the
            # reaper's child PID is libvirtd's. New session: the daemon outlives the CLI that
            # started it.
            p = subprocess.Popen(
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "reaper",
                    "--pid-file",
                    f"{h.dir}/reaper.pid",
                    "--",
                    UNSHARE,
                    "--mount",
                    "--uts",
                    "--propagation",
                    "private",
                    "/bin/sh",
                    f"{h.dir}/launch.sh",
                ],  # fmt: skip
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                cwd="/",
            )
        h.reaper_pid = p.pid
        self._procs[h.name] = p

    def restart_host(
        self,
        index: int,
        sig: int = signal.SIGTERM,
        down_for: float = 0.0,
        timeout: float = 60.0,
        stop_timeout: float = 15.0,
    ) -> None:
        """Stop host ``index``'s libvirtd (``sig``: SIGTERM stops it, SIGKILL crashes it) and start a
        new one on the same state. Guests keep running: their QEMUs outlive libvirtd, and the new
        daemon reconnects to them. A SIGTERM'd libvirtd first waits for running API calls (a
        migration, say) for up to its 30 s shutdown timeout: give ``stop_timeout`` room."""
        h = self.hosts[index]
        if not h.alive() or f"{h.dir}/libvirtd.pid" not in " ".join(_cmdline(h.pid)):
            raise TestbedError(f"host {h.name}: libvirtd is not running")
        os.kill(h.pid, sig)
        deadline = time.monotonic() + stop_timeout
        while _alive(h.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(h.pid):
            raise TestbedError(f"host {h.name}: libvirtd {h.pid} did not stop")
        time.sleep(down_for)
        h.old_reapers.append(h.reaper_pid)
        old = self._procs.pop(h.name, None)
        if old is not None:
            self._retired.append(old)
        Path(h.dir, "reaper.pid").unlink(missing_ok=True)
        h.pid = 0
        t0 = time.monotonic()
        self._launch(h)
        h.pid = self._wait_child_pid(h, t0 + timeout)
        self._save()
        self._wait_ready(h, t0 + timeout)

    def _wait_child_pid(self, h: Host, deadline: float) -> int:
        """libvirtd's PID: the reaper's only direct child (written to reaper.pid as "reaper child")."""
        f = Path(h.dir, "reaper.pid")
        while True:
            try:
                reaper, child = (int(x) for x in f.read_text().split())
                if reaper == h.reaper_pid:
                    return child
            except (FileNotFoundError, ValueError):
                pass
            if not self._proc_running(h):
                raise TestbedError(
                    f"the launcher for host {h.name} exited; see {h.log}:\n" + _tail(h.log)
                )
            if time.monotonic() > deadline:
                raise TestbedError(f"host {h.name}: libvirtd did not start")
            time.sleep(0.01)

    def _wait_ready(self, h: Host, deadline: float) -> None:
        while True:
            if not self._proc_running(h):
                raise TestbedError(
                    f"libvirtd for host {h.name} exited; see {h.log} and {h.dir}/log/libvirtd.log:\n"
                    + _tail(h.log)
                )
            if _port_open(h.port):
                try:
                    _virsh(h.uri, "uri", timeout=10)
                    return
                except (TestbedError, subprocess.TimeoutExpired):
                    pass
            if time.monotonic() > deadline:
                raise TestbedError(f"libvirtd for host {h.name} not ready on port {h.port}")
            time.sleep(0.05)

    def _proc_running(self, h: Host) -> bool:
        if h.pid:  # may still be unshare or launch.sh, about to exec libvirtd
            return _alive(h.pid)
        p = self._procs.get(h.name)
        return p is not None and p.poll() is None

    def _warm(self, h: Host) -> None:
        """Have libvirt probe the QEMU 10 wrapper now, not during the first migration (3-4 s)."""
        _virsh(
            h.uri,
            "domcapabilities",
            "--emulatorbin",
            self.emulator,
            "--virttype",
            "qemu",
            timeout=120,
        )

    def stop(self) -> None:
        """Destroy every domain, kill left-over QEMUs, then the daemons: all by recorded PID."""
        self.heal_links()
        for h in self.hosts:
            if h.alive():
                try:
                    for name in _virsh(h.uri, "list", "--name", timeout=20).split():
                        _virsh(h.uri, "destroy", name, timeout=30, check=False)
                    for name in _virsh(h.uri, "list", "--all", "--name", timeout=20).split():
                        _virsh(h.uri, "undefine", name, timeout=30, check=False)
                except (TestbedError, subprocess.TimeoutExpired):
                    pass
            for dom, pid in h.qemu_pids().items():  # QEMU outlives libvirtd
                _kill_pid(pid, ("qemu", f"guest={dom}"))
        for h in self.hosts:
            if h.pid:
                _kill_pid(h.pid, (LIBVIRTD, f"{h.dir}/libvirtd.pid"))
            p = self._procs.pop(h.name, None)
            if p is not None:  # the reaper exits once libvirtd and every orphan it adopted are gone
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            for pid in [h.reaper_pid, *h.old_reapers]:
                if pid:
                    _kill_pid(pid, ("reaper", f"{h.dir}/reaper.pid"), timeout=5)
        for p in self._retired:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._retired = []
        if self.state_file.exists():
            self.state_file.unlink()

    # ---- the migration link ----------------------------------------------------------------------
    def cut_link(self, index: int) -> None:
        """Cut host ``index``'s migration network: every TCP segment to or from its migration
        ports on loopback is dropped, both ways, silently (no RST: to QEMU the wire just goes
        dark). libvirt's own connections (the hosts' TCP ports) stay up, as a separate
        management network would. ``heal_links()`` undoes it; ``stop()`` does too."""
        h = self.hosts[index]
        ports = f"{h.migration_port_min}:{h.migration_port_max}"
        if _iptables("-n", "-L", LINK_CHAIN, check=False) != 0:
            _iptables("-N", LINK_CHAIN)
        if _iptables("-C", "INPUT", "-j", LINK_CHAIN, check=False) != 0:
            _iptables("-I", "INPUT", "1", "-j", LINK_CHAIN)
        for direction in ("--dport", "--sport"):
            _iptables("-A", LINK_CHAIN, "-i", "lo", "-p", "tcp", direction, ports, "-j", "DROP")

    def heal_links(self) -> None:
        """Remove every cut (our chain and the jump to it); a no-op when nothing was cut."""
        if shutil.which(IPTABLES) is None:
            return
        while _iptables("-D", "INPUT", "-j", LINK_CHAIN, check=False) == 0:
            pass
        _iptables("-F", LINK_CHAIN, check=False)
        _iptables("-X", LINK_CHAIN, check=False)

    # ---- state file ------------------------------------------------------------------------------
    def _save(self) -> None:
        data = {"cache": str(self.cache), "hosts": [dataclasses.asdict(h) for h in self.hosts]}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.state_file)

    @classmethod
    def _load(cls, state_dir: Path) -> Optional["Testbed"]:
        try:
            data = json.loads((state_dir / "state.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        tb = cls(state_dir, [h["port"] for h in data["hosts"]], data.get("cache"))
        tb.hosts = [Host(**h) for h in data["hosts"]]
        return tb

    def status(self) -> dict:
        out = {"state_dir": str(self.state_dir), "emulator": self.emulator, "hosts": []}
        for h in self.hosts:
            st = {
                "name": h.name,
                "uri": h.uri,
                "pid": h.pid,
                "alive": h.alive(),
                "hostname": h.hostname,
                "host_uuid": h.host_uuid,
                "migration_ports": [h.migration_port_min, h.migration_port_max],
                "qemu_pids": {d: p for d, p in h.qemu_pids().items() if _alive(p)},
                "domains": None,
            }
            if st["alive"]:
                try:
                    st["domains"] = _virsh(h.uri, "list", "--all", "--name", timeout=10).split()
                except (TestbedError, subprocess.TimeoutExpired) as e:
                    st["domains"] = f"error: {e}"
            out["hosts"].append(st)
        return out

    # ---- guests ----------------------------------------------------------------------------------
    def domain_xml(
        self,
        name: str,
        memory_mib: int = 256,
        wss_mib: int = 0,
        dirty_mib_s: int = 0,
        console_path: Optional[str] = None,
        vcpus: int = 1,
        hb_ms: int = 1000,
        extra_cmdline: str = "",
        fresh_console: bool = True,
    ) -> str:
        """TCG test-guest XML: kernel + initramfs, serial console appended to a file, no disk/NIC.

        The console file (default: <state>/consoles/<name>.log) is shared by the source and the
        destination QEMU (append='on'), so one file holds the heartbeats across migrations. With
        fresh_console=True an existing file is truncated now.
        """
        console = console_path or self.console_path(name)
        Path(console).parent.mkdir(parents=True, exist_ok=True)
        if fresh_console:
            open(console, "w").close()
        cmdline = (
            f"console=ttyS0 quiet panic=-1 wss_mib={int(wss_mib)} dirty_mib_s={int(dirty_mib_s)} "
            f"hb_ms={int(hb_ms)} {extra_cmdline}"
        ).strip()
        return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{int(memory_mib)}</memory>
  <vcpu>{int(vcpus)}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(self.kernel)}</kernel>
    <initrd>{escape(self.initrd)}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{escape(self.emulator)}</emulator>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path={quoteattr(console)} append='on'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path={quoteattr(console)} append='on'/>
      <target type='serial' port='0'/>
    </console>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def _tail(path: str, n: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def reaper(pid_file: str, argv: list[str]) -> int:
    """Run argv as a child subreaper: reap every orphan re-parented here, at once; forward SIGTERM and
    SIGINT to the child; exit when no child is left (the child's exit status, or 0)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, close_fds=True)
    tmp = pid_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {child.pid}\n")
    os.replace(tmp, pid_file)

    def forward(signum, frame):
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return code
        if pid == child.pid:
            child.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
            code = child.returncode if child.returncode >= 0 else 128 - child.returncode


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["reaper"]:  # internal: python3 hosts.py reaper --pid-file F -- cmd...
        sep = argv.index("--")
        return reaper(argv[argv.index("--pid-file") + 1], argv[sep + 1 :])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--state-dir", default=None, help=f"default $VMMOVE_TESTBED_STATE or {DEFAULT_STATE}"
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start the hosts (no-op if they already run)")
    s.add_argument(
        "--ports",
        default=",".join(map(str, DEFAULT_PORTS)),
        help="comma-separated TCP ports, one per host",
    )
    s.add_argument("--no-warm", action="store_true", help="skip the emulator capability probe")
    s.add_argument("--restart", action="store_true", help="restart even if already running")
    sub.add_parser("stop", help="destroy domains and stop the hosts started from this state dir")
    st = sub.add_parser("status")
    st.add_argument("--json", action="store_true")
    x = sub.add_parser("xml", help="print a test-guest domain XML")
    x.add_argument("name")
    x.add_argument("--memory-mib", type=int, default=256)
    x.add_argument("--wss-mib", type=int, default=0)
    x.add_argument("--dirty-mib-s", type=int, default=0)
    x.add_argument("--console", default=None)
    hb = sub.add_parser("heartbeats", help="parse a guest console file")
    hb.add_argument("console")
    args = ap.parse_args(argv)

    if args.cmd == "start":
        ports = [int(p) for p in args.ports.split(",")]
        t0 = time.monotonic()
        tb = Testbed.start(args.state_dir, ports, warm=not args.no_warm, reuse=not args.restart)
        how = "started" if tb._procs else "already running"
        for h in tb.hosts:
            print(f"host {h.name}: {h.uri} pid={h.pid} hostname={h.hostname} {how}")
        print(
            f"ready in {time.monotonic() - t0:.1f}s; state {tb.state_dir}; stop with: {sys.argv[0]} stop"
        )
    elif args.cmd == "stop":
        tb = Testbed._load(Path(args.state_dir or state_dir_default()))
        if tb is None:
            print("not running (no state file)")
            return 0
        t0 = time.monotonic()
        pids = [h.pid for h in tb.hosts]
        tb.stop()
        print(f"stopped libvirtd pids {pids} in {time.monotonic() - t0:.1f}s")
    elif args.cmd == "status":
        tb = Testbed._load(Path(args.state_dir or state_dir_default()))
        if tb is None:
            print(json.dumps({"running": False}) if args.json else "not running")
            return 3
        stt = tb.status()
        if args.json:
            print(json.dumps(stt, indent=2))
        else:
            for h in stt["hosts"]:
                print(
                    f"host {h['name']}: {h['uri']} pid={h['pid']} alive={h['alive']} domains={h['domains']} "
                    f"qemu={h['qemu_pids']}"
                )
        return 0 if all(h["alive"] for h in stt["hosts"]) else 1
    elif args.cmd == "xml":
        tb = Testbed(args.state_dir)
        print(
            tb.domain_xml(
                args.name,
                args.memory_mib,
                args.wss_mib,
                args.dirty_mib_s,
                args.console,
                fresh_console=False,
            ),
            end="",
        )
    elif args.cmd == "heartbeats":
        r = read_heartbeats(args.console)
        print(
            json.dumps({**dataclasses.asdict(r), "latest_seq": r.latest_seq, "ok": r.ok}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
