#!/usr/bin/env bash
# Make PostgreSQL's server binaries available for the test suite and the benchmarks: Debian's
# `postgresql` package, installed with apt (from the machine's own apt configuration) when no
# initdb is found. The suite then runs its own private server (vmmove.testing.pgserver): a
# cluster in a temporary folder, as an unprivileged user, on a private port and socket.
set -euo pipefail

found() {
    command -v initdb >/dev/null 2>&1 && return 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

if found; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "postgres.sh: no PostgreSQL server binaries, and installing them needs root:" >&2
    echo "  apt-get install postgresql" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }
apt_get install -y -q --no-install-recommends postgresql >/dev/null \
    || { apt_get update -q >/dev/null && apt_get install -y -q --no-install-recommends postgresql >/dev/null; }
found || { echo "postgres.sh: postgresql installed but no initdb found" >&2; exit 1; }
echo "postgres.sh: PostgreSQL installed"
