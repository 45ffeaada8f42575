"""The suite's own output: the summary line is the last thing a user sees."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pytest_summary_is_the_last_line_after_duckdb_and_a_frozen_service_heap():
    """A DuckDB connection, then an in-process service start-up (which calls gc.freeze()): without
    unfreezing at the end of the session, DuckDB's bindings print 'nanobind: leaked ...' after the summary."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_warehouse.py::test_views_exist_with_snowflake_names",
         "tests/test_service.py::test_admin_needs_the_token"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0, out[-3000:]
    assert "nanobind" not in out, out[-3000:]
    assert re.search(r"\d+ passed in [\d.]+s", out.splitlines()[-1]), out[-500:]
