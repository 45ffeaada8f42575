#!/usr/bin/env bash
# Installs Debian's redis-server when it is missing: SMARTROUTER_STATE_STORE=redis://... (several hosts)
# and its tests need a real server. Idempotent: does nothing when redis-server is on PATH.
set -euo pipefail
if command -v redis-server >/dev/null; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "error: redis-server is missing and not root; install it with: apt-get install -y redis-server" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
redis-server --version
