#!/bin/bash
# Build the vmmove test guest: a static /init (guest/init.c) packed with /dev/console into an
# initramfs. Output (in ${VMMOVE_TESTBED_CACHE:-/var/cache/vmmove-testbed}/libvirt/guest/):
#   vmlinuz             Debian cloud kernel (extracted by setup.sh)
#   initramfs.cpio.gz   newc cpio: /init, /dev/console
# Rebuilds only when init.c (or this script) changed. Needs gcc, static libc (libc6-dev), cpio, root
# (for mknod).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${VMMOVE_TESTBED_CACHE:-/var/cache/vmmove-testbed}/libvirt"
OUT="$CACHE/guest"
mkdir -p "$OUT"

SUM=$(cat "$HERE/init.c" "$HERE/build.sh" | sha256sum | cut -c1-16)
if [[ -s "$OUT/initramfs.cpio.gz" && "$(cat "$OUT/initramfs.stamp" 2>/dev/null)" == "$SUM" ]]; then
  echo "[guest] initramfs: up to date ($OUT/initramfs.cpio.gz)"
  exit 0
fi
T=$SECONDS
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/root/dev"
gcc -static -O2 -Wall -Wextra -o "$TMP/root/init" "$HERE/init.c"
strip "$TMP/root/init"
mknod -m 0600 "$TMP/root/dev/console" c 5 1
(cd "$TMP/root" && find . -mindepth 1 | sort | cpio --quiet -o -H newc -R 0:0) | gzip -9 > "$TMP/initramfs.cpio.gz"
mv "$TMP/initramfs.cpio.gz" "$OUT/initramfs.cpio.gz"
echo "$SUM" > "$OUT/initramfs.stamp"
echo "[guest] built $OUT/initramfs.cpio.gz ($(stat -c %s "$OUT/initramfs.cpio.gz") bytes) in $((SECONDS - T)) s"
