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
PIDs, consoles, logs), VMMOVE_TESTBED_PROFILE (the link, default lan), VMMOVE_TESTBED_LIBVIRT
(``system``: the machine's libvirt 9.0, the default; ``backports``: the libvirt 11 setup.sh
unpacked, bind-mounted over the system's inside each host's mount namespace).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
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
NSENTER = "/usr/bin/nsenter"
LIBVIRTD = "/usr/sbin/libvirtd"
#: Which libvirt the hosts run: the machine's own, or the one setup.sh unpacked from
#: bookworm-backports (<cache>/libvirt-bpo/root), mounted over the system's paths in each host's
#: own mount namespace, so its compiled-in paths (driver modules, CPU map) hold.
LIBVIRT_BUILDS = ("system", "backports")
DEFAULT_LIBVIRT = "system"
#: What of a backports root a host mounts over the system's: (path in the root, mount point).
LIBVIRT_BPO_MOUNTS = (
    ("usr/sbin/libvirtd", LIBVIRTD),
    ("usr/lib/x86_64-linux-gnu/libvirt", "/usr/lib/x86_64-linux-gnu/libvirt"),
    ("usr/share/libvirt", "/usr/share/libvirt"),
)
VIRSH = "virsh"
IPTABLES = "iptables"
IP = "ip"
TC = "tc"
#: Our own iptables chain in each host's network namespace: a cut link is DROP rules in it.
LINK_CHAIN = "VMMOVE-TESTBED"
NETNS_DIR = "/run/netns"
NETNS_PREFIX = "vmmove-"  # + <tag>-<host>: the tag is a hash of the state dir
LINK_MTU = 9000  # jumbo frames, as migration networks use: fewer frames for the wire to carry


@dataclasses.dataclass(frozen=True)
class LinkProfile:
    """The link between the hosts, shaped both ways.

    rate: a tbf token bucket on each host's egress, counted on the wire (Ethernet frames of a
    9000-byte MTU: TCP's goodput is ~99 % of it). Delay, jitter and loss: this machine's kernel
    has no netem, so a "wire" process (``hosts.py wire``) in a namespace of its own forwards
    the frames between the two hosts' veths, each after half the RTT (± ``jitter_ms``, in
    order) and drops ``loss_pct`` of them, each way."""

    name: str
    rate_mib_s: Optional[float]  # None: unshaped (memory speed)
    rtt_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0

    @property
    def shaped(self) -> bool:
        return self.rate_mib_s is not None

    def describe(self) -> str:
        if not self.shaped:
            return f"{self.name}: unshaped veth"
        extra = f", jitter {self.jitter_ms:g} ms" if self.jitter_ms else ""
        extra += f", loss {self.loss_pct:g} % each way" if self.loss_pct else ""
        return f"{self.name}: {self.rate_mib_s:g} MiB/s, RTT {self.rtt_ms:g} ms{extra}"


PROFILES = {
    "lan": LinkProfile("lan", 32.0, rtt_ms=0.5),
    "wan": LinkProfile("wan", 32.0, rtt_ms=10.0, jitter_ms=0.5, loss_pct=0.1),
    "fat": LinkProfile("fat", None),
}
DEFAULT_PROFILE = "lan"


def profile_default() -> str:
    """$VMMOVE_TESTBED_PROFILE, else lan."""
    return os.environ.get("VMMOVE_TESTBED_PROFILE") or DEFAULT_PROFILE


def libvirt_default() -> str:
    """$VMMOVE_TESTBED_LIBVIRT, else system."""
    return os.environ.get("VMMOVE_TESTBED_LIBVIRT") or DEFAULT_LIBVIRT


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
_TICK_RE = re.compile(r"(?:^|[^A-Z])T seq=(\d+) w=(\d+) g=(\d+)")
_START_RE = re.compile(r"VMMOVE-GUEST START")
# Case matters: "..MP-BIOS bug: 8254 timer not connected" is a boot warning a slow TCG boot
# prints, not a kernel BUG.
_PANIC_RE = re.compile(r"Kernel panic|\bBUG:|Oops")


@dataclasses.dataclass
class Heartbeats:
    """What a guest console file says. ``bad`` is the total of bad pages over all boots."""

    count: int = 0  # heartbeat lines seen
    latest: Optional[dict] = None  # fields of the last heartbeat line
    boots: int = 0  # "VMMOVE-GUEST START" lines (more than 1: the guest rebooted)
    bad: int = 0  # total bad pages (sum over boots of the cumulative counter)
    bad_lines: list = dataclasses.field(default_factory=list)  # "BAD page=..." lines
    panic_lines: list = dataclasses.field(default_factory=list)
    # Guest's own clock, this boot: the longest main-loop stall (throttling, post-copy faults;
    # not the stop-and-copy pause, during which the guest's clock stops too), and tick lines.
    max_gap_ms: int = 0
    ticks: int = 0
    pages_written: int = 0  # from the latest tick line (or HB written_mib)

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
            hb.max_gap_ms = hb.ticks = hb.pages_written = 0
            continue
        m = _HB_RE.search(line)
        if m:
            fields = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
            hb.count += 1
            hb.latest = fields
            boot_bad = max(boot_bad, fields.get("bad", 0))
            hb.max_gap_ms = max(hb.max_gap_ms, fields.get("max_gap_ms", 0))
            hb.pages_written = max(hb.pages_written, fields.get("written_mib", 0) * 256)
            continue
        t = _TICK_RE.search(line)
        if t:
            hb.ticks += 1
            hb.pages_written = int(t.group(2))
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


class ConsoleWatch:
    """Timestamps a guest's console lines as they arrive (a thread polling the file every
    ``poll`` s): what an observer outside the guest sees, including the stop-and-copy pause that
    the guest's own clock cannot see. Start the guest with ``tick_ms`` (e.g. 20) for a fine
    grain. ``pause(t0, t1)``: the longest silence overlapping [t0, t1], minus one tick;
    ``work(t0, t1, rate)``: pages the guest wrote in [t0, t1] against ``rate`` pages/s."""

    def __init__(self, path: os.PathLike | str, tick_ms: int, poll: float = 0.002) -> None:
        self.path = str(path)
        self.tick_s = tick_ms / 1000.0
        self.poll = poll
        # (host monotonic, pages written, longest loop stall by the guest's clock in ms)
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"console {path}")

    def __enter__(self) -> "ConsoleWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:  # only what arrives from now on: older lines have no arrival time worth keeping
            pos = os.path.getsize(self.path)
        except FileNotFoundError:
            pos = 0
        buf = ""
        while not self._stop.is_set():
            try:
                with open(self.path, "r", errors="replace") as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
            except FileNotFoundError:
                chunk = ""
            now = time.monotonic()
            if chunk:
                buf += chunk
                *lines, buf = buf.split("\n")
                for line in lines:
                    m = _TICK_RE.search(line)
                    if m:
                        self.samples.append((now, int(m.group(2)), int(m.group(3))))
            time.sleep(self.poll)

    def rate(self, t0: float, t1: float) -> Optional[float]:
        """Pages/s the guest wrote between t0 and t1 (its own pace when nothing disturbs it)."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    def pause(self, t0: float, t1: float) -> Optional[float]:
        """Longest silence (s) between two tick lines, for silences that overlap [t0, t1],
        minus the tick interval itself; None without ticks."""
        times = [s[0] for s in self.samples]
        gaps = [b - a for a, b in zip(times, times[1:]) if b >= t0 and a <= t1]
        if not gaps:
            return None
        return max(0.0, max(gaps) - self.tick_s)

    def stall(self, t0: float, t1: float) -> Optional[float]:
        """Longest loop stall (s) the guest's own clock saw in ticks arriving in [t0, t1 + 1 s]
        (throttling, post-copy faults), minus the tick interval; None without ticks."""
        gs = [s[2] for s in self.samples if t0 <= s[0] <= t1 + 1.0]
        return max(0.0, max(gs) / 1000.0 - self.tick_s) if gs else None

    def work(self, t0: float, t1: float) -> Optional[int]:
        """Pages written between the last tick at or before t0 and the first at or after t1."""
        before = [s for s in self.samples if s[0] <= t0]
        after = [s for s in self.samples if s[0] >= t1]
        if not before or not after:
            return None
        return after[0][1] - before[-1][1]


def wire(ifaces: list[str], delay_ms: float, jitter_ms: float, loss_pct: float) -> int:
    """Forward every frame between two interfaces (raw sockets), each after ``delay_ms`` ± a
    uniform ``jitter_ms``, in order per direction (a link does not reorder), dropping
    ``loss_pct`` % of them. The virtio-net header (PACKET_VNET_HDR) travels with each frame, so
    checksums a veth left to offload are finished by the kernel on the other side. A frame is
    due ``delay_ms`` after the kernel received it (SO_TIMESTAMPNS), not after this process got
    round to reading it: the wire's own wake-up and work are part of the delay, not added."""
    import random
    import select
    import struct
    from collections import deque

    sol_packet, packet_vnet_hdr, packet_ignore_outgoing = 263, 15, 23
    so_timestampns = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's; Python 3.11 lacks it
    with contextlib.suppress(OSError):  # a late wake-up is added delay: run ahead of the guests
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    socks = []
    for name in ifaces:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        s.setsockopt(sol_packet, packet_vnet_hdr, 1)
        s.setsockopt(sol_packet, packet_ignore_outgoing, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        s.setsockopt(socket.SOL_SOCKET, so_timestampns, 1)
        s.bind((name, 0))
        s.setblocking(False)
        socks.append(s)
    delay, jitter, loss = delay_ms / 1000, jitter_ms / 1000, loss_pct / 100
    queues: list[deque] = [deque(), deque()]  # frames read from socks[i], due to leave on the other
    last_due = [0.0, 0.0]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        now = time.monotonic()
        due = [q[0][0] for q in queues if q]
        timeout = max(0.0, min(due) - now) if due else 1.0
        ready, _, _ = select.select(socks, [], [], timeout)
        now = time.monotonic()
        for i, s in enumerate(socks):
            if s not in ready:
                continue
            wall = time.time()  # the kernel stamps frames on the wall clock
            for _ in range(256):
                try:
                    frame, anc, _flags, _addr = s.recvmsg(65600, 64)
                except BlockingIOError:
                    break
                if loss and random.random() < loss:
                    continue
                age = 0.0
                for level, kind, data in anc:
                    if level == socket.SOL_SOCKET and kind == so_timestampns:
                        sec, nsec = struct.unpack("qq", data[:16])
                        age = min(max(wall - (sec + nsec / 1e9), 0.0), delay)
                at = max(
                    now - age + delay + (random.uniform(-jitter, jitter) if jitter else 0),
                    last_due[i],
                )
                last_due[i] = at
                queues[i].append((at, frame))
        now = time.monotonic()
        for i, q in enumerate(queues):
            out = socks[1 - i]
            while q and q[0][0] <= now:
                try:
                    out.send(q.popleft()[1])
                except (BlockingIOError, OSError):
                    pass  # a full queue drops the frame, as a switch would


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
    except (FileNotFoundError, ProcessLookupError):  # gone, or going between open and read
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


def _port_open(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((address, port)) == 0


def _virsh(uri: str, *args: str, timeout: float = 60.0, check: bool = True) -> str:
    p = subprocess.run(
        [VIRSH, "-q", "-c", uri, *args], capture_output=True, text=True, timeout=timeout
    )
    if check and p.returncode != 0:
        raise TestbedError(f"virsh -c {uri} {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def _in_netns(netns: str) -> list[str]:
    """Command prefix that runs the rest inside ``netns`` (nsenter execs in place: same PID)."""
    return [NSENTER, f"--net={NETNS_DIR}/{netns}"]


def _iptables(netns: str, *args: str, check: bool = True) -> int:
    """Run iptables in ``netns`` (waiting for its lock); the exit status, or TestbedError."""
    if shutil.which(IPTABLES) is None:
        raise TestbedError("iptables is missing: run plugins/libvirt/testbed/setup.sh")
    p = subprocess.run(
        [*_in_netns(netns), IPTABLES, "-w", "10", *args], capture_output=True, text=True, timeout=30
    )
    if check and p.returncode != 0:
        raise TestbedError(f"iptables (netns {netns}) {' '.join(args)}: {p.stderr.strip()}")
    return p.returncode


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise TestbedError(f"{' '.join(argv)}: {p.stderr.strip()}")
    return p


# A tiny TCP sink/source run inside a host's namespace by measure_link(): prints READY, then
# for each connection reads one command byte: "p" (a connect for the RTT: close), "s" (sink:
# 8-byte length, read it all, answer the seconds from first to last byte) or "r" (source:
# 8-byte length, send that many bytes).
_PROBE_SERVER = r"""
import socket, struct, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(64)
print("READY", flush=True)
while True:
    c, _ = s.accept()
    cmd = c.recv(1)
    if cmd in (b"s", b"r"):
        n = struct.unpack("!Q", c.recv(8, socket.MSG_WAITALL))[0]
    if cmd == b"s":
        got, first = 0, None
        while got < n:
            b = c.recv(1 << 20)
            if not b:
                break
            if first is None:
                first = time.monotonic()
            got += len(b)
        c.sendall(("%d %.6f\n" % (got, time.monotonic() - first)).encode())
    elif cmd == b"r":
        buf = b"\0" * (1 << 20)
        left = n
        while left > 0:
            left -= c.send(buf[: min(left, len(buf))])
    elif cmd == b"q":
        break
    c.close()
"""
_PROBE_CLIENT = r"""
import json, socket, statistics, struct, sys, time
addr, port, mib, pings = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def conn():
    return socket.create_connection((addr, port), timeout=30)
rtts = []
for _ in range(pings):
    t = time.monotonic(); c = conn(); rtts.append(time.monotonic() - t)
    c.sendall(b"p"); c.close()
# The same connects to a listener of our own over loopback: what timing one costs here
# (Python, the syscalls, a loaded machine), which the link's RTT does not include.
own = socket.socket(); own.bind(("127.0.0.1", 0)); own.listen(pings)
local = []
for _ in range(pings):
    t = time.monotonic(); c = socket.create_connection(own.getsockname(), timeout=30)
    local.append(time.monotonic() - t); c.close(); own.accept()[0].close()
own.close()
n = mib << 20
c = conn(); c.sendall(b"s" + struct.pack("!Q", n))
buf = b"\0" * (1 << 20); left = n
while left > 0:
    left -= c.send(buf[: min(left, len(buf))])
got, secs = c.makefile().readline().split(); c.close()
up = int(got) / float(secs) / (1 << 20)
c = conn(); c.sendall(b"r" + struct.pack("!Q", n))
got, first = 0, None
while got < n:
    b = c.recv(1 << 20)
    if not b:
        break
    if first is None:
        first = time.monotonic()
    got += len(b)
down = got / (time.monotonic() - first) / (1 << 20); c.close()
c = conn(); c.sendall(b"q"); c.close()
overhead = statistics.median(local)
print(json.dumps({"rtt_ms": (statistics.median(rtts) - overhead) * 1000,
                  "rtt_ms_raw": statistics.median(rtts) * 1000, "probe_ms": overhead * 1000,
                  "rtt_ms_max": max(rtts) * 1000, "up_mib_s": up, "down_mib_s": down}))
"""


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
subjectAltName = DNS:localhost, IP:127.0.0.1{ips}
"""


def _openssl(*args: str, cwd: Path) -> None:
    p = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise TestbedError(f"openssl {' '.join(args)}: {p.stderr.strip()}")


def _new_key_args(key: str) -> list[str]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key]


def make_pki(root: Path, ips: Iterable[str] = ()) -> None:
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
        sans = "".join(f", IP:{ip}" for ip in ips)  # the hosts' addresses in their namespaces
        (work / f"{leaf}.cnf").write_text(
            _LEAF_EXT.format(cn=f"vmmove-{leaf}", purpose=purpose, ips=sans)
        )
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
    netns: str = ""  # the host's network namespace (libvirtd and its QEMUs run in it)
    address: str = ""  # its end of the shaped link: migration streams and peer connections
    mgmt_address: str = ""  # its end of the unshaped management veth from the root namespace
    mgmt_veth: str = ""  # that veth's name in the root namespace

    # The one place the hosts' URIs are made. The client (root namespace) reaches `address`
    # through the host's management veth (a /32 route); the other host reaches it over the
    # shaped link. So the URI a client hands to the source daemon for a peer-to-peer migration,
    # and the migration stream to that address, both cross the link.
    @property
    def uri(self) -> str:
        return f"qemu+tcp://{self.address}:{self.port}/system"

    @property
    def tls_port(self) -> int:
        return self.port + TLS_PORT_OFFSET

    @property
    def tls_uri(self) -> str:
        return f"qemu+tls://{self.address}:{self.tls_port}/system"

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
# every address of the host's own network namespace: the link, the management veth, lo
listen_addr = "0.0.0.0"
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
{env}exec {libvirtd} --listen -f /etc/libvirt/libvirtd.conf -p {dir}/libvirtd.pid
"""


class Testbed:
    """Two (or more) libvirt hosts. Create with Testbed.start() or Testbed.attach()."""

    def __init__(
        self,
        state_dir: os.PathLike | str | None = None,
        ports: Iterable[int] = DEFAULT_PORTS,
        cache: os.PathLike | str | None = None,
        profile: str | None = None,
        libvirt: str | None = None,
    ):
        self.state_dir = Path(state_dir or state_dir_default())
        name = profile or profile_default()
        if name not in PROFILES:
            raise TestbedError(f"unknown link profile {name!r}; known: {', '.join(PROFILES)}")
        self.profile = PROFILES[name]
        # Names and addresses of this testbed's namespaces, veths and subnet derive from its
        # state dir, so two testbeds (another state dir) can run side by side.
        self.tag = hashlib.sha1(str(self.state_dir.resolve()).encode()).hexdigest()[:4]
        self.subnet = f"10.213.{16 + int(self.tag, 16) % 224}"  # a /24; link .0/25, mgmt .128/25
        ports = list(ports)
        if len(ports) != 2:
            raise TestbedError("the testbed's link is a veth pair: exactly two hosts")
        self.cache = Path(cache or cache_dir())
        self.libvirt = libvirt or libvirt_default()
        if self.libvirt not in LIBVIRT_BUILDS:
            raise TestbedError(f"unknown libvirt {self.libvirt!r}; known: {', '.join(LIBVIRT_BUILDS)}")
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
                    netns=f"{NETNS_PREFIX}{self.tag}-{n}",
                    address=f"{self.subnet}.{1 + i}",
                    mgmt_address=f"{self.subnet}.{128 + 4 * i + 2}",
                    mgmt_veth=f"vmm{self.tag}{n}",
                )
            )
        self._procs: dict[str, subprocess.Popen] = {}
        self._retired: list[subprocess.Popen] = []  # reapers of restarted daemons
        self.wire_netns = f"{NETNS_PREFIX}{self.tag}-wire"
        self.wire_pid = 0

    @property
    def libvirt_root(self) -> Optional[Path]:
        """The unpacked backports libvirt the hosts mount over the system's (None: the system's)."""
        return None if self.libvirt == "system" else self.cache / "libvirt-bpo" / "root"

    # ---- properties ------------------------------------------------------------------------------
    @property
    def uris(self) -> list[str]:
        return [h.uri for h in self.hosts]

    @property
    def _wired(self) -> bool:
        """A wire process carries the frames (delay, jitter or loss to emulate)."""
        p = self.profile
        return p.shaped and bool(p.rtt_ms or p.jitter_ms or p.loss_pct)

    @property
    def addresses(self) -> list[str]:
        """Each host's address on the link (what its URI names)."""
        return [h.address for h in self.hosts]

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
        profile: str | None = None,
        libvirt: str | None = None,
    ) -> "Testbed":
        """Start the hosts and wait until each answers (and has probed the emulator, if warm).

        Hosts left over from an earlier run in the same state dir are stopped first (by their
        recorded PIDs), unless reuse=True and they are all alive, in which case they are attached.
        """
        tb = cls(state_dir, ports, cache, profile, libvirt)
        tb._check_artifacts()
        prev = cls._load(tb.state_dir)
        if prev is not None:
            if (
                reuse
                and [h.port for h in prev.hosts] == [h.port for h in tb.hosts]
                and prev.profile == tb.profile
                and prev.libvirt == tb.libvirt
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
            for p in (self.emulator, self.kernel, self.initrd, LIBVIRTD, UNSHARE, NSENTER)
            if not os.path.exists(p)
        ]
        root = self.libvirt_root
        if root is not None:
            missing += [str(root / sub) for sub, _ in LIBVIRT_BPO_MOUNTS if not (root / sub).exists()]
        missing += [t for t in (VIRSH, IP, TC) if not shutil.which(t)]
        if missing:
            raise TestbedError(f"missing {missing}: run plugins/libvirt/testbed/setup.sh first")

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
        binds = [(d / sub, target) for sub, target in HOST_DIRS.items()]
        env = ""
        root = self.libvirt_root
        if root is not None:  # libvirtd finds its own libvirt.so.0 first, the rest at their paths
            binds += [(root / sub, target) for sub, target in LIBVIRT_BPO_MOUNTS]
            env = f"LD_LIBRARY_PATH={root / 'usr/lib/x86_64-linux-gnu'} "
        mounts = "\n".join(f"mount --bind {src} {target}" for src, target in binds)
        launcher = d / "launch.sh"
        launcher.write_text(
            _LAUNCHER.format(mounts=mounts, hostname=h.hostname, env=env, libvirtd=LIBVIRTD, dir=d)
        )
        launcher.chmod(0o755)
        for f in ("libvirtd.pid", "reaper.pid", "daemon.log"):
            (d / f).unlink(missing_ok=True)

    def _start(self, warm: bool, timeout: float) -> None:
        t0 = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ips = [a for h in self.hosts for a in (h.address, h.mgmt_address)]
        make_pki(self.pki_dir, ips)
        (self.state_dir / "consoles").mkdir(exist_ok=True)
        for target in HOST_DIRS.values():  # mount points
            os.makedirs(target, exist_ok=True)
        try:
            self._net_up()
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
                    *_in_netns(h.netns),
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
            if _port_open(h.address, h.port):
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
        self._net_down()
        if self.state_file.exists():
            self.state_file.unlink()

    # ---- the link ------------------------------------------------------------------------------
    def _net_up(self) -> None:
        """Namespaces, the link (a veth pair between them, shaped on both ends) and one
        unshaped management veth per host from the root namespace (the client's way in)."""
        self._net_down()  # leftovers of a killed run of this testbed (same names)
        used = _run(IP, "-4", "-o", "addr").stdout + _run(IP, "-4", "route").stdout
        if f" {self.subnet}." in used:
            raise TestbedError(f"{self.subnet}.0/24 is already in use here (another testbed?)")
        a, b = self.hosts
        for ns in [h.netns for h in self.hosts] + ([self.wire_netns] if self._wired else []):
            _run(IP, "netns", "add", ns)
            _run(IP, "-n", ns, "link", "set", "lo", "up")
        if self._wired:  # host a's link0 <-> wa ~wire process~ wb <-> host b's link0
            for h, end in ((a, "wa"), (b, "wb")):
                _run(IP, "link", "add", "link0", "netns", h.netns, "mtu", str(LINK_MTU),
                     "type", "veth", "peer", "name", end, "netns", self.wire_netns,
                     "mtu", str(LINK_MTU))  # fmt: skip
                _run(IP, "-n", self.wire_netns, "link", "set", end, "up")
        else:  # fat: one veth pair, nothing in between
            _run(IP, "link", "add", "link0", "netns", a.netns, "type", "veth",
                 "peer", "name", "link0", "netns", b.netns)  # fmt: skip
        for i, h in enumerate(self.hosts):
            ns, root_end = ("ip", "-n", h.netns), f"{self.subnet}.{128 + 4 * i + 1}"
            _run(*ns, "addr", "add", f"{h.address}/25", "dev", "link0")
            _run(IP, "link", "add", h.mgmt_veth, "type", "veth",
                 "peer", "name", "mgmt0", "netns", h.netns)  # fmt: skip
            _run(IP, "addr", "add", f"{root_end}/30", "dev", h.mgmt_veth)
            _run(*ns, "addr", "add", f"{h.mgmt_address}/30", "dev", "mgmt0")
            for dev in ("link0", "mgmt0"):
                _run(*ns, "link", "set", dev, "up")
            _run(IP, "link", "set", h.mgmt_veth, "up")
            _run(IP, "route", "add", f"{h.address}/32", "via", h.mgmt_address)
            self._shape(h)
        if self._wired:
            p = self.profile
            log = open(self.state_dir / "wire.log", "ab")
            with log:
                proc = subprocess.Popen(
                    [*_in_netns(self.wire_netns), sys.executable, os.path.abspath(__file__),
                     "wire", "--tag", self.tag, "--delay-ms", f"{p.rtt_ms / 2:g}",
                     "--jitter-ms", f"{p.jitter_ms:g}", "--loss-pct", f"{p.loss_pct:g}",
                     "wa", "wb"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True,
                )  # fmt: skip
            self.wire_pid = proc.pid
            self._procs["wire"] = proc
            # Up when a frame crosses: host a's TCP connect to b's closed port is refused.
            deadline = time.monotonic() + 10
            while True:
                r = _run(*_in_netns(a.netns), sys.executable, "-c",
                         "import socket,sys; s=socket.socket(); s.settimeout(0.5); "
                         f"sys.exit(s.connect_ex(('{b.address}', 9)) != 111)",
                         check=False)  # fmt: skip
                if r.returncode == 0:
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise TestbedError(
                        f"the link's wire did not come up; see {self.state_dir}/wire.log"
                    )

    def _shape(self, h: Host) -> None:
        """netem (delay, jitter, loss) with a tbf child (rate) on the host's end of the link:
        every byte leaving the host, stop-and-copy and post-copy page requests included."""
        p = self.profile
        # BBR, if the kernel has it: CUBIC's window collapses under random loss (0.1 % at 10 ms
        # caps one flow near 6 MiB/s), which would measure TCP, not the link.
        if "bbr" in Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text():
            _run(*_in_netns(h.netns), "sysctl", "-qw", "net.ipv4.tcp_congestion_control=bbr")
        if not p.shaped:
            return
        # One MTU per frame (no 64 KiB GSO bursts): the wire loses and delays frames, not bursts.
        _run(IP, "-n", h.netns, "link", "set", "link0", "gso_max_segs", "1")
        bits = int(p.rate_mib_s * 8 * 1024 * 1024)
        _run(TC, "-n", h.netns, "qdisc", "add", "dev", "link0", "root", "tbf",
             "rate", f"{bits}bit", "burst", "64kb", "latency", "50ms")  # fmt: skip

    def _net_down(self) -> None:
        """Stop the wire (by PID); remove this testbed's namespaces and root-side veths (by
        their names: ours only)."""
        if self.wire_pid:
            _kill_pid(self.wire_pid, ("wire", f"--tag {self.tag}"), timeout=5)
            p = self._procs.pop("wire", None)
            if p is not None:
                p.wait(timeout=5)
            self.wire_pid = 0
        prefix = f"{NETNS_PREFIX}{self.tag}-"
        try:
            names = os.listdir(NETNS_DIR)
        except FileNotFoundError:
            names = []
        for name in names:
            if name.startswith(prefix):
                _run(IP, "netns", "del", name, check=False)
        links = _run(IP, "-o", "link", "show", check=False).stdout
        for h in self.hosts:
            # A namespace outlives its name while a process (a stray QEMU) still holds it.
            if f" {h.mgmt_veth}@" in links or f" {h.mgmt_veth}:" in links:
                _run(IP, "link", "del", h.mgmt_veth, check=False)

    def measure_link(self, mib: int = 32, pings: int = 20, port: int = 5201) -> dict:
        """Goodput both ways over the link (``mib`` MiB each, plain TCP from host a's namespace
        to host b's) and the median TCP connect time (one RTT), less the median connect time
        over loopback in the same process (``probe_ms``: what timing a connect costs there;
        ``rtt_ms_raw`` keeps the sum)."""
        a, b = self.hosts
        server = subprocess.Popen(
            [*_in_netns(b.netns), sys.executable, "-c", _PROBE_SERVER, b.address, str(port)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            if server.stdout is None or server.stdout.readline().strip() != "READY":
                raise TestbedError("link probe server did not start")
            out = subprocess.run(
                [*_in_netns(a.netns), sys.executable, "-c", _PROBE_CLIENT, b.address, str(port),
                 str(mib), str(pings)],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            if out.returncode != 0:
                raise TestbedError(f"link probe failed: {out.stderr.strip()}")
            result = json.loads(out.stdout)
        finally:
            if server.poll() is None:
                server.kill()
            server.wait()
        result["profile"] = self.profile.name
        return result

    def check_link(self, tolerance: float = 0.10, mib: int = 32) -> dict:
        """measure_link(), and TestbedError unless both directions' goodput is within
        ``tolerance`` of the profile's rate and the RTT within 0.3 ms (or 10 %) of its own."""
        m = self.measure_link(mib)
        p = self.profile
        problems = []
        if p.shaped:
            for way in ("up_mib_s", "down_mib_s"):
                if abs(m[way] - p.rate_mib_s) > tolerance * p.rate_mib_s:
                    problems.append(
                        f"{way} {m[way]:.1f} MiB/s, not {p.rate_mib_s:g} ± {tolerance:.0%}"
                    )
            if abs(m["rtt_ms"] - p.rtt_ms) > max(0.3, 0.1 * p.rtt_ms):
                problems.append(f"RTT {m['rtt_ms']:.2f} ms, not {p.rtt_ms:g}")
        if problems:
            raise TestbedError(f"link {p.describe()}: " + "; ".join(problems))
        return m

    def cut_link(self, index: int) -> None:
        """Cut host ``index``'s migration streams: every TCP segment to or from its migration
        ports is dropped in its namespace, both ways, silently (no RST: to QEMU the wire just
        goes dark). libvirt's own connections (the hosts' TCP ports) stay up, as on a separate
        management network. ``heal_links()`` undoes it; ``stop()`` does too."""
        h = self.hosts[index]
        ports = f"{h.migration_port_min}:{h.migration_port_max}"
        if _iptables(h.netns, "-n", "-L", LINK_CHAIN, check=False) != 0:
            _iptables(h.netns, "-N", LINK_CHAIN)
        for hook in ("INPUT", "OUTPUT"):
            if _iptables(h.netns, "-C", hook, "-j", LINK_CHAIN, check=False) != 0:
                _iptables(h.netns, "-I", hook, "1", "-j", LINK_CHAIN)
        for direction in ("--dport", "--sport"):
            _iptables(h.netns, "-A", LINK_CHAIN, "-p", "tcp", direction, ports, "-j", "DROP")

    def heal_links(self) -> None:
        """Remove every cut (our chain and the jumps to it); a no-op when nothing was cut."""
        if shutil.which(IPTABLES) is None:
            return
        for h in self.hosts:
            if not os.path.exists(f"{NETNS_DIR}/{h.netns}"):
                continue
            for hook in ("INPUT", "OUTPUT"):
                while _iptables(h.netns, "-D", hook, "-j", LINK_CHAIN, check=False) == 0:
                    pass
            _iptables(h.netns, "-F", LINK_CHAIN, check=False)
            _iptables(h.netns, "-X", LINK_CHAIN, check=False)

    # ---- state file ------------------------------------------------------------------------------
    def _save(self) -> None:
        data = {
            "cache": str(self.cache),
            "profile": self.profile.name,
            "libvirt": self.libvirt,
            "wire_pid": self.wire_pid,
            "hosts": [dataclasses.asdict(h) for h in self.hosts],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.state_file)

    @classmethod
    def _load(cls, state_dir: Path) -> Optional["Testbed"]:
        try:
            data = json.loads((state_dir / "state.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        tb = cls(
            state_dir,
            [h["port"] for h in data["hosts"]],
            data.get("cache"),
            data.get("profile"),
            data.get("libvirt") or "system",  # recorded before the choice existed: the system's
        )
        tb.hosts = [Host(**h) for h in data["hosts"]]
        tb.wire_pid = data.get("wire_pid", 0)
        return tb

    def status(self) -> dict:
        out = {
            "state_dir": str(self.state_dir),
            "emulator": self.emulator,
            "link": self.profile.describe(),
            "libvirt": self.libvirt,
            "hosts": [],
        }
        for h in self.hosts:
            st = {
                "name": h.name,
                "uri": h.uri,
                "netns": h.netns,
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
        tick_ms: int = 0,
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
            f"hb_ms={int(hb_ms)} {f'tick_ms={int(tick_ms)} ' if tick_ms else ''}{extra_cmdline}"
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
    if argv[:1] == ["wire"]:  # internal: started by Testbed in the wire namespace
        w = argparse.ArgumentParser()
        for opt in ("--delay-ms", "--jitter-ms", "--loss-pct"):
            w.add_argument(opt, type=float, default=0.0)
        w.add_argument("--tag", default="")
        w.add_argument("ifaces", nargs=2)
        wa = w.parse_args(argv[1:])
        return wire(wa.ifaces, wa.delay_ms, wa.jitter_ms, wa.loss_pct)
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
    s.add_argument(
        "--profile",
        default=None,
        choices=sorted(PROFILES),
        help=f"the link between the hosts (default $VMMOVE_TESTBED_PROFILE or {DEFAULT_PROFILE})",
    )
    s.add_argument(
        "--libvirt",
        default=None,
        choices=LIBVIRT_BUILDS,
        help=f"which libvirt the hosts run (default $VMMOVE_TESTBED_LIBVIRT or {DEFAULT_LIBVIRT})",
    )
    s.add_argument("--restart", action="store_true", help="restart even if already running")
    sub.add_parser("stop", help="destroy domains and stop the hosts started from this state dir")
    lc = sub.add_parser("link-check", help="measure the running testbed's link against its profile")
    lc.add_argument("--mib", type=int, default=64)
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
        tb = Testbed.start(
            args.state_dir,
            ports,
            warm=not args.no_warm,
            reuse=not args.restart,
            profile=args.profile,
            libvirt=args.libvirt,
        )
        how = "started" if tb._procs else "already running"
        print(f"link {tb.profile.describe()}")
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
    elif args.cmd == "link-check":
        tb = Testbed.attach(args.state_dir)
        try:
            m = tb.check_link(mib=args.mib)
            ok = 0
        except TestbedError as exc:
            print(exc)
            m, ok = tb.measure_link(args.mib), 1
        print(f"link {tb.profile.describe()}")
        print(
            f"a->b {m['up_mib_s']:.1f} MiB/s, b->a {m['down_mib_s']:.1f} MiB/s, "
            f"RTT {m['rtt_ms']:.2f} ms (max {m['rtt_ms_max']:.2f})"
        )
        return ok
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
