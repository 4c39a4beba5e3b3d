#!/bin/bash
# vmmove libvirt testbed: idempotent installer for a Debian 12 machine (run as root).
#
#   plugins/libvirt/testbed/setup.sh            # install / verify everything (skip-fast when done)
#   VMMOVE_TESTBED_CACHE=/some/dir setup.sh     # use another cache root (artifacts go to <root>/libvirt)
#   VMMOVE_TESTBED_SKIP_PIP=1 setup.sh          # do not pip-install libvirt-python
#
# What it does (each step is skipped when its result is already present):
#   1. apt: libvirt 9.0 daemon + QEMU 7.2 (libvirt needs a system QEMU installed), libvirt-dev,
#      pkg-config and python3-dev (to build libvirt-python), gcc/static libc/cpio for the test
#      guest, iptables (the link-cut fault test), openssl (the TLS test's PKI), and the few shared
#      libraries QEMU 10 needs.
#   2. guest kernel: `apt-get download` of the Debian cloud kernel, vmlinuz extracted into the cache.
#   3. QEMU 10 from bookworm-backports, fetched with a PRIVATE apt configuration (own sources.list,
#      lists and cache dirs under the cache dir; the system's apt sources are not touched) and
#      unpacked with dpkg-deb -x. Debian 12's QEMU 7.2 corrupts guest memory in TCG live migration
#      (fixed upstream in QEMU 9.0, commit 03bfc2188f), hence QEMU 10.
#   3b. libvirt 11 (libvirtd and its QEMU driver) from bookworm-backports the same way, unpacked
#      beside it: hosts.py bind-mounts it over the system's libvirt inside a host's own mount
#      namespace when asked (VMMOVE_TESTBED_LIBVIRT=backports). The system's libvirt stays 9.0.
#   4. an <emulator> wrapper (cache/bin/qemu-system-x86_64-10) that runs QEMU 10 in its own mount
#      namespace with QEMU 10's module dir bind-mounted over /usr/lib/x86_64-linux-gnu/qemu, and
#      checks that libvirt can probe it.
#   5. libvirt-python via pip (built from source against libvirt-dev) where smoke.py runs.
#   6. guest/build.sh: static /init + initramfs.
#
# Nothing here starts a daemon that keeps running; hosts.py does that.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Artifacts live in the libvirt/ subdirectory of the shared testbed cache root (other vmmove testbeds
# use the same root).
CACHE="${VMMOVE_TESTBED_CACHE:-/var/cache/vmmove-testbed}/libvirt"
APT=(apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3 -o APT::Sandbox::User=root)
LOGDIR="$CACHE/logs"
export DEBIAN_FRONTEND=noninteractive

SYSTEM_PKGS=(
  libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils
  libvirt-dev pkg-config python3-dev
  gcc libc6-dev cpio util-linux iptables openssl
  iproute2  # ip netns, veth and tc: the shaped link between the hosts
)
# Shared libraries the bookworm-backports QEMU 10 binary links against beyond what the Debian 12
# QEMU 7.2 install pulls in. Currently none (checked with ldd on QEMU 10.0.2); the ldd check in
# step 3 fails loudly if this drifts: add the missing library packages here.
QEMU10_EXTRA_LIBS=()
# bookworm-backports packages unpacked for QEMU 10 (seabios comes from there too when available).
QEMU10_PKGS=(qemu-system-x86 qemu-system-common qemu-system-data seabios)
# bookworm-backports packages unpacked for the second libvirt the testbed can run
# (VMMOVE_TESTBED_LIBVIRT=backports, libvirt 11): the daemon, its QEMU driver and the storage
# driver (the local-disk tests define a directory pool).
LIBVIRT_BPO_PKGS=(libvirt0 libvirt-common libvirt-daemon libvirt-daemon-common libvirt-daemon-log
                  libvirt-daemon-driver-qemu libvirt-daemon-driver-storage)

mkdir -p "$CACHE" "$LOGDIR"
log() { printf '[setup %4ds] %s\n' "$SECONDS" "$*"; }

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
pkgs_missing() {  # prints the packages from "$@" that are not installed
  local p st
  for p in "$@"; do
    st=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    [[ "$st" == ii* ]] || echo "$p"
  done
}

system_lists_fresh() {  # true when the system apt lists exist and are less than 7 days old
  local newest
  newest=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -printf '%T@\n' 2>/dev/null | sort -n | tail -1)
  [[ -n "$newest" ]] || return 1
  (( $(date +%s) - ${newest%.*} < 7 * 86400 ))
}

APT_UPDATED=0
system_apt_update() {
  if [[ $APT_UPDATED == 0 ]]; then
    log "apt-get update (system lists)"
    "${APT[@]}" update -qq
    APT_UPDATED=1
  fi
}

system_install() {  # install packages, running apt-get update once if lists are old or install fails
  local missing
  missing=$(pkgs_missing "$@")
  [[ -z "$missing" ]] && return 0
  system_lists_fresh || system_apt_update
  # shellcheck disable=SC2086
  if ! "${APT[@]}" install -y -q --no-install-recommends $missing >>"$LOGDIR/apt-install.log" 2>&1; then
    if [[ $APT_UPDATED == 1 ]]; then tail -30 "$LOGDIR/apt-install.log" >&2; return 1; fi
    system_apt_update
    # shellcheck disable=SC2086
    "${APT[@]}" install -y -q --no-install-recommends $missing >>"$LOGDIR/apt-install.log" 2>&1 \
      || { tail -30 "$LOGDIR/apt-install.log" >&2; return 1; }
  fi
}

debian_mirror() {  # the Debian archive URI the machine's own apt sources use (same host for backports)
  local uri
  uri=$( { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
             | sed -n 's/^[[:space:]]*deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([a-z+]\+:\/\/[^[:space:]]\+\).*/\2/p'
           cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
             | sed -n 's/^URIs:[[:space:]]*//p' | tr ' ' '\n'
         } | grep -E '^[a-z+]+://' | grep -v -- '-security' | grep -E '/debian/?$' | head -1)
  # No fallback host: without a Debian archive in the machine's own sources there is nothing to trust.
  [[ -n "$uri" ]] || { echo "no Debian archive found in the machine's apt sources" >&2; return 1; }
  echo "$uri" | sed 's:/*$::'
}

# --------------------------------------------------------------------------------------------------
# 1. system packages
# --------------------------------------------------------------------------------------------------
T=$(date +%s)
MISSING=$(pkgs_missing "${SYSTEM_PKGS[@]}" ${QEMU10_EXTRA_LIBS[@]+"${QEMU10_EXTRA_LIBS[@]}"})
if [[ -n "$MISSING" ]]; then
  log "installing system packages: $(echo $MISSING)"
  system_install "${SYSTEM_PKGS[@]}" ${QEMU10_EXTRA_LIBS[@]+"${QEMU10_EXTRA_LIBS[@]}"}
  log "system packages installed in $(( $(date +%s) - T )) s"
else
  log "system packages: present"
fi
# mount points used by hosts.py and the emulator wrapper
mkdir -p /run/libvirt /etc/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt \
         /usr/lib/x86_64-linux-gnu/qemu

# --------------------------------------------------------------------------------------------------
# 2. guest kernel (downloaded, not installed)
# --------------------------------------------------------------------------------------------------
GUEST="$CACHE/guest"
mkdir -p "$GUEST"
if [[ ! -s "$GUEST/vmlinuz" ]]; then
  T=$(date +%s)
  system_lists_fresh || system_apt_update
  KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
           | sed -n 's/^[[:space:]]*Depends:[[:space:]]*\(linux-image-[^[:space:]]*-cloud-amd64\).*/\1/p' | head -1)
  if [[ -z "$KPKG" ]]; then
    system_apt_update
    KPKG=$(apt-cache depends linux-image-cloud-amd64 \
             | sed -n 's/^[[:space:]]*Depends:[[:space:]]*\(linux-image-[^[:space:]]*-cloud-amd64\).*/\1/p' | head -1)
  fi
  [[ -n "$KPKG" ]] || { echo "cannot resolve linux-image-cloud-amd64" >&2; exit 1; }
  log "downloading guest kernel $KPKG"
  TMP=$(mktemp -d)
  (cd "$TMP" && "${APT[@]}" download -qq "$KPKG") || { system_apt_update; (cd "$TMP" && "${APT[@]}" download -qq "$KPKG"); }
  dpkg-deb -x "$TMP"/*.deb "$TMP/x"
  install -m 0644 "$TMP"/x/boot/vmlinuz-* "$GUEST/vmlinuz.tmp"
  mv "$GUEST/vmlinuz.tmp" "$GUEST/vmlinuz"
  echo "$KPKG" > "$GUEST/kernel-package"
  rm -rf "$TMP"
  log "guest kernel ready in $(( $(date +%s) - T )) s"
else
  log "guest kernel: present ($(cat "$GUEST/kernel-package" 2>/dev/null || echo vmlinuz))"
fi

# --------------------------------------------------------------------------------------------------
# 3. QEMU 10 from bookworm-backports, private apt configuration
# --------------------------------------------------------------------------------------------------
Q="$CACHE/qemu10"
QROOT="$Q/root"
PAPT="$Q/apt"
PAPT_OPTS=(-o "Dir::Etc::SourceList=$PAPT/sources.list" -o "Dir::Etc::SourceParts=$PAPT/sources.list.d"
           -o "Dir::State::Lists=$PAPT/lists" -o "Dir::Cache=$PAPT/cache"
           -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=")
private_apt_ready() {  # the private bookworm-backports lists, fetched when missing or a week old
  local mirror
  mirror=$(debian_mirror) || return 1
  mkdir -p "$PAPT/lists/partial" "$PAPT/cache/archives/partial" "$PAPT/sources.list.d" "$PAPT/debs"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm-backports main" \
    > "$PAPT/sources.list"
  if [[ -z "$(find "$PAPT/lists" -maxdepth 1 -name '*_Packages*' -mtime -7 2>/dev/null)" ]]; then
    log "private apt-get update: $mirror bookworm-backports"
    "${APT[@]}" "${PAPT_OPTS[@]}" update -qq
  fi
}
unpack_debs() {  # DEBDIR ROOT LIST: every .deb of DEBDIR unpacked into ROOT (swapped in whole)
  rm -rf "$2.tmp"
  mkdir -p "$2.tmp"
  for d in "$1"/*.deb; do dpkg-deb -x "$d" "$2.tmp"; done
  rm -rf "$2"
  mv "$2.tmp" "$2"
  (cd "$1" && ls *.deb) > "$3"
}
if [[ ! -x "$QROOT/usr/bin/qemu-system-x86_64" || ! -f "$Q/.complete" ]]; then
  T=$(date +%s)
  private_apt_ready || exit 1
  log "downloading QEMU 10 packages: ${QEMU10_PKGS[*]}"
  rm -f "$PAPT/debs"/*.deb
  for p in "${QEMU10_PKGS[@]}"; do
    if [[ -n "$(apt-cache "${PAPT_OPTS[@]}" madison "$p" 2>/dev/null)" ]]; then
      (cd "$PAPT/debs" && "${APT[@]}" "${PAPT_OPTS[@]}" download -qq "$p")
    else  # not in backports (e.g. seabios): take bookworm's from the system sources
      log "  $p not in bookworm-backports, using the system archive"
      (cd "$PAPT/debs" && "${APT[@]}" download -qq "$p")
    fi
  done
  unpack_debs "$PAPT/debs" "$QROOT" "$Q/packages"
  touch "$Q/.complete"
  log "QEMU 10 unpacked in $(( $(date +%s) - T )) s: $(echo $(cat "$Q/packages"))"
else
  log "QEMU 10: present ($(echo $(cat "$Q/packages" 2>/dev/null)))"
fi
MISSING_LIBS=$(ldd "$QROOT/usr/bin/qemu-system-x86_64" | grep 'not found' || true)
if [[ -n "$MISSING_LIBS" ]]; then
  echo "QEMU 10 needs shared libraries that are not installed:" >&2
  echo "$MISSING_LIBS" >&2
  exit 1
fi

# --------------------------------------------------------------------------------------------------
# 3b. libvirt 11 from bookworm-backports, the same private apt configuration
# --------------------------------------------------------------------------------------------------
L="$CACHE/libvirt-bpo"
LROOT="$L/root"
# The stamp holds the package list it was made from: a list that grew (a driver added) redoes it.
if [[ ! -x "$LROOT/usr/sbin/libvirtd" || "$(cat "$L/.complete" 2>/dev/null)" != "${LIBVIRT_BPO_PKGS[*]}" ]]; then
  T=$(date +%s)
  private_apt_ready || exit 1
  mkdir -p "$L/debs"
  rm -f "$L/debs"/*.deb
  log "downloading libvirt packages from bookworm-backports: ${LIBVIRT_BPO_PKGS[*]}"
  (cd "$L/debs" && "${APT[@]}" "${PAPT_OPTS[@]}" download -qq "${LIBVIRT_BPO_PKGS[@]/%//bookworm-backports}")
  unpack_debs "$L/debs" "$LROOT" "$L/packages"
  echo "${LIBVIRT_BPO_PKGS[*]}" > "$L/.complete"
  log "libvirt (backports) unpacked in $(( $(date +%s) - T )) s: $(echo $(cat "$L/packages"))"
else
  log "libvirt (backports): present ($(echo $(cat "$L/packages" 2>/dev/null)))"
fi
MISSING_LIBS=$(LD_LIBRARY_PATH="$LROOT/usr/lib/x86_64-linux-gnu" ldd "$LROOT/usr/sbin/libvirtd" \
  "$LROOT/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/"*.so | grep 'not found' || true)
if [[ -n "$MISSING_LIBS" ]]; then
  echo "libvirt (backports) needs shared libraries that are not installed:" >&2
  echo "$MISSING_LIBS" >&2
  exit 1
fi

# --------------------------------------------------------------------------------------------------
# 4. the <emulator> wrapper
# --------------------------------------------------------------------------------------------------
WRAP="$CACHE/bin/qemu-system-x86_64-10"
mkdir -p "$CACHE/bin"
cat > "$WRAP.tmp" <<EOF
#!/bin/sh
# Generated by vmmove plugins/libvirt/testbed/setup.sh. libvirt <emulator> for QEMU 10 (bookworm-backports,
# unpacked under $QROOT). QEMU loads its modules from the compiled-in
# /usr/lib/x86_64-linux-gnu/qemu, which belongs to the system QEMU 7.2 ("Only modules from the same
# build can be loaded"), so this re-executes itself in a private mount namespace (unshare without
# --fork execs in place: libvirt still sees QEMU's PID), bind-mounts QEMU 10's module dir there, and
# points QEMU at its own firmware with -L.
QROOT='$QROOT'
if [ "\${VMMOVE_QEMU10_NS:-}" != 1 ]; then
    VMMOVE_QEMU10_NS=1
    export VMMOVE_QEMU10_NS
    exec /usr/bin/unshare --mount --propagation private "\$0" "\$@"
fi
/bin/mount --bind "\$QROOT/usr/lib/x86_64-linux-gnu/qemu" /usr/lib/x86_64-linux-gnu/qemu || exit 1
exec "\$QROOT/usr/bin/qemu-system-x86_64" -L "\$QROOT/usr/share/qemu" -L "\$QROOT/usr/share/seabios" "\$@"
EOF
chmod 0755 "$WRAP.tmp"
if cmp -s "$WRAP.tmp" "$WRAP"; then rm -f "$WRAP.tmp"; else mv "$WRAP.tmp" "$WRAP"; log "wrote $WRAP"; fi
VER=$("$WRAP" -version | head -1)
case "$VER" in
  *"version 10."*) log "emulator wrapper: $VER" ;;
  *) echo "emulator wrapper does not run QEMU 10: $VER" >&2; exit 1 ;;
esac
# libvirt probes the emulator over QMP (-machine none, qmp_capabilities, query-*): do the same once.
if [[ ! -f "$CACHE/bin/.qmp-ok" || "$WRAP" -nt "$CACHE/bin/.qmp-ok" ]]; then
  OUT=$(printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"query-version"}' \
          '{"execute":"query-machines"}' '{"execute":"quit"}' \
        | timeout 30 "$WRAP" -S -no-user-config -nodefaults -nographic -machine none,accel=tcg -qmp stdio 2>&1)
  if grep -q '"qemu": {"micro"' <<<"$OUT" && grep -q 'pc-i440fx-10' <<<"$OUT"; then
    touch "$CACHE/bin/.qmp-ok"
    log "emulator wrapper answers QMP"
  else
    echo "emulator wrapper QMP probe failed:" >&2; echo "$OUT" | head -20 >&2; exit 1
  fi
fi

# --------------------------------------------------------------------------------------------------
# 5. libvirt-python
# --------------------------------------------------------------------------------------------------
# It has no wheels: pip builds it against libvirt-dev with gcc, pkg-config and the Python headers
# (step 1). `pip install -e plugins/libvirt[test]` installs it as a dependency of vmmove-libvirt;
# this step also installs it where smoke.py runs: $VMMOVE_PYTHON, else the project's virtualenv
# (${VMMOVE_VENV:-.venv}) if there is one, else python3. A Python that refuses pip (Debian's own,
# "externally managed") only gets a note: the tests' environment installs it anyway.
if [[ "${VMMOVE_TESTBED_SKIP_PIP:-0}" != 1 ]]; then
  PY="${VMMOVE_PYTHON:-}"
  if [[ -z "$PY" ]]; then
    if [[ -x "${VMMOVE_VENV:-$PWD/.venv}/bin/python" ]]; then PY="${VMMOVE_VENV:-$PWD/.venv}/bin/python"
    else PY=python3; fi
  fi
  if "$PY" -c 'import libvirt' 2>/dev/null; then
    log "libvirt-python: present in $PY ($("$PY" -c 'import libvirt; print(libvirt.getVersion())'))"
  else
    T=$(date +%s)
    log "pip install libvirt-python into $PY (builds from source against libvirt-dev)"
    if "$PY" -m pip install -q libvirt-python; then
      log "libvirt-python installed in $(( $(date +%s) - T )) s"
    else
      log "note: could not pip-install libvirt-python into $PY; pip install -e plugins/libvirt[test]" \
          "in the environment that runs the tests installs it"
    fi
  fi
fi

# --------------------------------------------------------------------------------------------------
# 6. test guest (static /init + initramfs)
# --------------------------------------------------------------------------------------------------
"$HERE/guest/build.sh"

# a small manifest of what was built (informational; hosts.py derives the same paths)
cat > "$CACHE/testbed.env.tmp" <<EOF
VMMOVE_TESTBED_EMULATOR=$WRAP
VMMOVE_TESTBED_KERNEL=$GUEST/vmlinuz
VMMOVE_TESTBED_INITRD=$GUEST/initramfs.cpio.gz
VMMOVE_TESTBED_QEMU_VERSION=$VER
EOF
mv "$CACHE/testbed.env.tmp" "$CACHE/testbed.env"
log "done; cache: $CACHE"
