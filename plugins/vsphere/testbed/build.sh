#!/bin/sh
# Build vcsim-vmmove: govmomi's vCenter simulator plus vmmove's migration extension (./vcsim-vmmove/*.go).
#
# Idempotent and offline apart from Debian packages: installs golang-go and golang-github-vmware-govmomi-dev
# if missing, then builds in GOPATH mode against /usr/share/gocode (module mode cannot build offline).
# Skips the build when the binary is newer than every source file.
#
#   VMMOVE_TESTBED_CACHE   output/cache directory (default /var/cache/vmmove-testbed)
#   VMMOVE_TESTBED_FORCE=1 rebuild even if up to date
#
# Output: $VMMOVE_TESTBED_CACHE/vcsim-vmmove. Prints the binary's path as the last line.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
src="$here/vcsim-vmmove"
cache="${VMMOVE_TESTBED_CACHE:-/var/cache/vmmove-testbed}"
bin="$cache/vcsim-vmmove"
govmomi=/usr/share/gocode/src/github.com/vmware/govmomi

need_pkgs=""
command -v go >/dev/null 2>&1 || need_pkgs="golang-go"
[ -d "$govmomi/simulator" ] || need_pkgs="$need_pkgs golang-github-vmware-govmomi-dev"
if [ -n "$need_pkgs" ]; then
    echo "build.sh: installing$need_pkgs ..." >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get -o DPkg::Lock::Timeout=600 install -y -q golang-go golang-github-vmware-govmomi-dev >&2; then
        apt-get -o DPkg::Lock::Timeout=600 update -q >&2
        apt-get -o DPkg::Lock::Timeout=600 install -y -q golang-go golang-github-vmware-govmomi-dev >&2
    fi
fi

mkdir -p "$cache"

if [ -x "$bin" ] && [ "${VMMOVE_TESTBED_FORCE:-0}" != 1 ]; then
    # Up to date if no source (ours, this script, or the stock govmomi/uuid packages) is newer than the binary.
    newer=$(find "$src" "$here/build.sh" "$govmomi" /usr/share/gocode/src/github.com/google/uuid \
        -newer "$bin" \( -name '*.go' -o -name build.sh \) -print -quit 2>/dev/null || true)
    if [ -z "$newer" ]; then
        echo "build.sh: $bin is up to date" >&2
        echo "$bin"
        exit 0
    fi
fi

start=$(date +%s)
# Private GOPATH entry first (go never writes into /usr/share/gocode), private build cache.
GO111MODULE=off GOFLAGS= GOPROXY=off \
GOPATH="$cache/gopath:/usr/share/gocode" GOCACHE="$cache/go-build" \
    sh -c 'cd "$1" && go build -trimpath -o "$2.tmp" .' sh "$src" "$bin"
mv -f "$bin.tmp" "$bin"
echo "build.sh: built $bin in $(( $(date +%s) - start )) s" >&2
echo "$bin"
