#!/usr/bin/env bash
# Installs Debian's prometheus package (for `promtool`) when it is missing: tests/test_ops.py checks the
# shipped alerting rules with it. Idempotent: does nothing when promtool is on PATH.
set -euo pipefail
if command -v promtool >/dev/null; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "error: promtool is missing and not root; install it with: apt-get install -y prometheus" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
promtool --version 2>&1 | head -1
