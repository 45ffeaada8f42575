#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium when it is missing; the report rendering test needs it.
# Idempotent: does nothing when /usr/bin/chromium (or $CHROMIUM) already exists.
set -euo pipefail
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "error: chromium is missing and not root; install it with: apt-get install -y chromium" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
"$CHROMIUM" --version
