#!/usr/bin/env bash
# Debian's redis-server: SMARTROUTER_STATE_STORE=redis://... (several hosts) and its tests need a real server.
exec bash "$(dirname "$0")/ensure_debian.sh" redis-server redis-server
