#!/bin/sh
# vmmove vSphere testbed: idempotent setup for a Debian 12 machine (run as root), called by
# scripts/test-all for plugins/vsphere. Installs golang-go and golang-github-vmware-govmomi-dev
# when missing and builds vcsim-vmmove (govmomi's vCenter simulator + vmmove's migration
# extension) into ${VMMOVE_TESTBED_CACHE:-/var/cache/vmmove-testbed}; a no-op (about 0.05 s)
# when the binary is newer than its sources. Starts nothing: the tests start the simulator.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
start=$(date +%s)
bin=$(sh "$here/build.sh" | tail -n 1)
[ -x "$bin" ] || { echo "setup.sh: build.sh did not produce $bin" >&2; exit 1; }
echo "vsphere testbed: $bin ready in $(( $(date +%s) - start )) s"
