"""The drift watch on the service's /metrics: gauges read from the newest drift report.

`smartrouter drift check` (cron, or the live loop's daily hook) writes
``<reports dir>/drift/latest.json``; each scrape re-reads it when its modification time changed.
All workers read the same file, so the gauges use ``livemax`` in multiprocess mode. Kept apart from
`smartrouter.drift` so the service does not import pandas for it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

CHECKS: tuple[str, ...] = ("psi", "scores", "calibration", "health")


class DriftGauges:
    """smartrouter_drift_* gauges, refreshed from the latest drift report at scrape time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        kw: dict[str, Any] = {"registry": registry, "multiprocess_mode": "livemax"}
        self.crossed = Gauge("smartrouter_drift_crossed", "Thresholds crossed in the latest drift report, per check",
                             ["check"], **kw)
        self.retrain = Gauge("smartrouter_drift_retrain_needed", "1 when the latest drift report called for a retrain", **kw)
        self.input_psi = Gauge("smartrouter_drift_input_psi_max", "Largest model-input PSI in the latest drift report", **kw)
        self.score_psi = Gauge("smartrouter_drift_score_psi", "Score PSI per processor head (latest drift report)",
                               ["processor"], **kw)
        self.bias = Gauge("smartrouter_drift_calibration_bias", "Mean score minus approval per head on the checked day",
                          ["processor"], **kw)
        self.day = Gauge("smartrouter_drift_checked_day_timestamp_seconds", "UTC midnight of the day the latest report checked",
                         **kw)
        self._seen: tuple[str, float] | None = None

    def refresh(self, reports_dir: str | os.PathLike[str]) -> bool:
        """Re-read the report if it changed; False when there is none (gauges keep their last values)."""
        path = Path(reports_dir) / "drift" / "latest.json"
        try:
            stamp = (str(path), path.stat().st_mtime)
            if stamp == self._seen:
                return True
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        self._seen = stamp
        counts = {c: 0 for c in CHECKS}
        for c in report.get("crossed", []):
            counts[c.get("check", "")] = counts.get(c.get("check", ""), 0) + 1
        for check, n in counts.items():
            self.crossed.labels(check).set(n)
        self.retrain.set(1.0 if report.get("drifted") else 0.0)
        self.input_psi.set(max((float(r["psi"]) for r in report.get("inputs", []) if r.get("psi") is not None), default=0.0))
        for r in report.get("scores", []):
            if r.get("psi") is not None:
                self.score_psi.labels(r["processor"]).set(float(r["psi"]))
        for r in report.get("calibration", []):
            if r.get("slice") == "all" and r.get("bias") is not None:
                self.bias.labels(r["processor"]).set(float(r["bias"]))
        try:
            day = dt.datetime.combine(dt.date.fromisoformat(report["day"]), dt.time(), tzinfo=dt.timezone.utc)
            self.day.set(day.timestamp())
        except (KeyError, TypeError, ValueError):
            pass
        return True
