"""The live loop's time budget: one simulated day of the default world through HTTP (<= 60 s), and
with --loop the whole loop with the quick retrain profile (<= 45 min for 14 days).

    python bench/bench_live.py [--days-loop 14] [--loop] [--scenario default] [--concurrency 8]

Works on a copy: the local world (SMARTROUTER_LOCAL_DIR) and the registry are copied into a
temporary folder, so the benchmark never adds live days to the world you use. The day: `smartrouter
serve` is started the way `smartrouter live` starts it (2 workers, event clock, the promoted model),
then `world.live.advance` generates and routes one day over HTTP; the target is that day's wall time
(generation, routing every attempt and retry, reporting outcomes, writing the warehouse and truth).
--loop then runs `smartrouter live --days N` (library call, same copy) and checks its total.
Build the default world and promote a model first (`make run`). Exits 1 on a missed target.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _targets import Targets  # noqa: E402

DAY_BUDGET_S = 60.0
LOOP_BUDGET_S = 45 * 60.0


def _copy_world(tmp: Path) -> None:
    """Point every writable setting at ``tmp``, with copies of the world and the registry."""
    from smartrouter.config import load_settings

    s = load_settings()
    if not (s.local_dir / "world.json").exists():
        raise SystemExit(f"no local world at {s.local_dir}: build it first (`make world`), then `make run`")
    shutil.copytree(s.local_dir, tmp / "warehouse", ignore=shutil.ignore_patterns("live", "*.lock"))
    if s.registry_dir.is_dir():
        shutil.copytree(s.registry_dir, tmp / "models", ignore=shutil.ignore_patterns("*.lock"))
    for name, sub in (("LOCAL_DIR", "warehouse"), ("REGISTRY_DIR", "models"), ("RUNS_DIR", "runs"),
                      ("REPORTS_DIR", "reports"), ("STATE_DIR", "state")):
        os.environ[f"SMARTROUTER_{name}"] = str(tmp / sub)


def one_day(scenario_arg: str | None, concurrency: int, workers: int) -> dict:
    from smartrouter.config import load_settings
    from smartrouter.live import HttpServing, resolve_scenario_path, start_service
    from smartrouter.world import live as engine
    from smartrouter.world.clients import HttpClient
    from smartrouter.world.scenario import load_scenario

    settings = load_settings()
    scenario = load_scenario(resolve_scenario_path(scenario_arg))
    t0 = time.perf_counter()
    serving: HttpServing = start_service(settings, engine.live_dir(settings), workers, print)
    start_s = time.perf_counter() - t0
    try:
        version = serving.serving_version()
        print(f"service {serving.url}: {workers} workers, serving {version or 'static rules'}, ready in {start_s:.1f} s")
        client = HttpClient(serving.url, concurrency=concurrency)
        try:
            t0 = time.perf_counter()
            [day] = engine.advance(settings, 1, client, scenario, progress=print)
            wall = time.perf_counter() - t0
        finally:
            client.close()
    finally:
        serving.close()
    return {"day": day.day.isoformat(), "orders": day.orders, "attempts": day.attempts, "route_calls": day.route_calls,
            "approved": day.approved, "wall_s": round(wall, 1), "p99_route_ms": day.p99_route_ms,
            "service_start_s": round(start_s, 1), "model_versions": day.model_versions, "concurrency": concurrency}


def whole_loop(days: int, scenario_arg: str | None) -> dict:
    from smartrouter.live import LoopOptions, run_loop

    t0 = time.perf_counter()
    # --new: the day the first part advanced is the world's now; the loop goes on after it
    result = run_loop(LoopOptions(days=days, scenario=scenario_arg, retrain_profile="quick", new=True),
                      echo=lambda m: print(m, flush=True))
    wall = time.perf_counter() - t0
    return {"days": len(result.days_done_now), "wall_s": round(wall, 1),
            "per_day_s": round(wall / max(len(result.days_done_now), 1), 1), "failed_runs": result.failed_runs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loop", action="store_true", help="also run the whole loop (takes up to 45 minutes)")
    ap.add_argument("--days-loop", type=int, default=14, help="days of the whole loop (default 14)")
    ap.add_argument("--scenario", default=None, help="scenario file or name (default scenarios/default.toml)")
    ap.add_argument("--concurrency", type=int, default=8, help="HTTP requests in flight (default 8)")
    ap.add_argument("--workers", type=int, default=2, help="service workers (default 2)")
    args = ap.parse_args()
    targets = Targets("bench_live")
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        _copy_world(Path(tmp))
        day = one_day(args.scenario, args.concurrency, args.workers)
        print(json.dumps(day))
        print(f"one simulated day ({day['orders']:,} orders, {day['attempts']:,} attempts, {day['route_calls']:,} route "
              f"calls) through HTTP on {os.cpu_count()} CPU(s): {day['wall_s']:.1f} s, p99 route {day['p99_route_ms']:.1f} ms")
        targets.at_most("one simulated day through HTTP", day["wall_s"], DAY_BUDGET_S, "s")
        if args.loop:
            loop = whole_loop(args.days_loop, args.scenario)
            print(json.dumps(loop))
            targets.check("every daily run of the loop succeeded", not loop["failed_runs"],
                          f"failed on {loop['failed_runs']}" if loop["failed_runs"] else "")
            budget = round(LOOP_BUDGET_S * args.days_loop / 14)  # the 45 minutes are for 14 days
            targets.at_most(f"the whole loop ({args.days_loop} days, quick retrain)", loop["wall_s"], budget, "s")
    return targets.report()


if __name__ == "__main__":
    sys.exit(main())
