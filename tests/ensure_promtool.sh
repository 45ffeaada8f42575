#!/usr/bin/env bash
# Debian's prometheus package for `promtool`: tests/test_ops.py checks the shipped alerting rules with it.
exec bash "$(dirname "$0")/ensure_debian.sh" promtool prometheus
