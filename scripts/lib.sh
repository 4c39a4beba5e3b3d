# Shared by scripts/demo and scripts/test-all: a project virtualenv in .venv.
# shellcheck shell=bash

VENV="${VMMOVE_VENV:-$PWD/.venv}"

ensure_venv() {
    if [ -x "$VENV/bin/python" ]; then
        return
    fi
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        # Debian ships venv separately; as root we can add it, otherwise say what is missing.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get -o DPkg::Lock::Timeout=600 install -y -q python3-venv >/dev/null \
                || { apt-get update -q >/dev/null && apt-get -o DPkg::Lock::Timeout=600 install -y -q python3-venv >/dev/null; }
            rm -rf "$VENV"
            python3 -m venv "$VENV"
        else
            echo "python3 -m venv failed: install python3-venv (Debian) and retry" >&2
            exit 1
        fi
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip
}
