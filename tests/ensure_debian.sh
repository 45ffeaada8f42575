#!/usr/bin/env bash
# ensure_debian.sh TOOL PACKAGE...: installs Debian PACKAGEs when TOOL (a command on PATH or an executable
# path) is missing, so `make test` sets up the real servers and tools its tests need. Idempotent.
set -euo pipefail
tool="$1"; shift
if command -v "$tool" >/dev/null || [ -x "$tool" ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "error: $tool is missing and not root; install it with: apt-get install -y $*" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
"$tool" --version 2>&1 | head -1
