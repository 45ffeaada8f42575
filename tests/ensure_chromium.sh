#!/usr/bin/env bash
# Debian's headless-capable Chromium for the report rendering tests (/usr/bin/chromium or $CHROMIUM).
exec bash "$(dirname "$0")/ensure_debian.sh" "${CHROMIUM:-/usr/bin/chromium}" chromium fonts-dejavu-core
