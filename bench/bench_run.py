"""The daily run's time budget: runs `smartrouter run` (default profile) on the configured world
and prints the whole run's and each stage's wall time from the manifest, against the 10-minute budget.

Usage: python bench/bench_run.py [--profile default] [--as-of YYYY-MM-DD]
(build the default world first: `make world`). Exits 1 when the run fails or exceeds the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from _targets import Targets
from smartrouter.pipeline import run_pipeline

BUDGET_S = 600.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--as-of", default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    result = run_pipeline(profile=args.profile, as_of=args.as_of, echo=None)
    wall = time.perf_counter() - t0
    m = result.manifest
    print(f"run {result.run_id}: {result.status} on {os.cpu_count()} CPU(s), profile {args.profile}")
    for s in m["stages"]:
        print(f"  {s['name']:<16} {s['status']:<10} {s['duration_s'] or 0:8.1f} s")
    overhead = wall - sum(s["duration_s"] or 0 for s in m["stages"])
    print(f"  {'runner+reports':<16} {'':<10} {overhead:8.1f} s")
    print(f"  {'total':<16} {'':<10} {wall:8.1f} s  (budget {BUDGET_S:.0f} s)")
    attempts = (m.get("metrics") or {}).get("01_extract_eda", {}).get("attempts")
    print(json.dumps({"run_id": result.run_id, "status": result.status, "wall_s": round(wall, 1),
                      "attempts": attempts, "stages": {s["name"]: s["duration_s"] for s in m["stages"]}}))
    targets = Targets("bench_run")
    targets.check("the run succeeded", result.ok, result.error or result.status)
    targets.at_most("whole daily run", wall, BUDGET_S, "s")
    return targets.report()


if __name__ == "__main__":
    sys.exit(main())
