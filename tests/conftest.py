"""Suite-wide hooks."""

from __future__ import annotations

import gc


def pytest_sessionfinish(session, exitstatus):
    """Hand objects frozen by in-process service apps back to the garbage collector.

    The service calls ``gc.freeze()`` after start-up (a long-lived server's heap stays out of
    every collection). In the test process that also freezes whatever the earlier tests left in
    reference cycles, DuckDB connections among them; frozen cycles are never collected, not even at
    interpreter exit, so DuckDB's nanobind bindings would print hundreds of "leaked instance"
    lines after pytest's summary. The service unfreezes on shut-down for the same reason.
    """
    gc.unfreeze()
    gc.collect()
