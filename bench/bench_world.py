"""Benchmark: build the default world into a scratch local warehouse and print its headline numbers.

    .venv/bin/python bench/bench_world.py [--days 84] [--per-day 10500] [--seed 42] [--target DIR]

Prints rows, days, overall approval, ADYEN's first week, Amex-rule violations, generation
seconds and peak memory (this process and its children), then the headroom: the oracle's best
processor vs the static rules over the same first attempts, and the share of that gap due to
outages. Targets (issue 2): generation <= 60 s, peak memory <= 2 GB (and the default world's bands);
exits 1 when any is missed (bench/_targets.py).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from _targets import Targets

from smartrouter import catalog, warehouse
from smartrouter.config import load_settings
from smartrouter.world import World, WorldParams

MAX_SECONDS = 60.0
MAX_PEAK_MB = 2048.0
HEADROOM_BAND_PP = (3.0, 8.0)
APPROVAL_BAND = (0.79, 0.82)


def peak_rss_mb() -> float:
    """Peak resident memory so far of this process plus its largest child (ru_maxrss is in KiB on Linux)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024.0


def headroom(settings, world: World, batch_rows: int = 100_000) -> dict[str, float]:
    """Oracle best vs static rules over the world's first attempts, read back from the warehouse."""
    oracle, engine = world.oracle(), world.rules_engine
    tot = {"n": 0.0, "oracle": 0.0, "rules": 0.0, "oracle_no": 0.0, "rules_no": 0.0}
    sql = f"SELECT * FROM {catalog.ATTEMPTS_VIEW} WHERE NUM_ATTEMPTS_ORDER = 1"
    for frame in warehouse.iter_frames(sql, batch_rows=batch_rows, settings=settings):
        h = oracle.headroom(frame, engine, include_outages=True)
        h0 = oracle.headroom(frame, engine, include_outages=False)
        n = len(frame)
        tot["n"] += n
        for k, src in (("oracle", h), ("rules", h), ("oracle_no", h0), ("rules_no", h0)):
            tot[k] += src[k.removesuffix("_no")] * n
    n = max(tot["n"], 1.0)
    gap = (tot["oracle"] - tot["rules"]) / n
    gap_no = (tot["oracle_no"] - tot["rules_no"]) / n
    return {
        "first_attempts": tot["n"],
        "oracle": tot["oracle"] / n,
        "rules": tot["rules"] / n,
        "gap_pp": 100 * gap,
        "gap_no_outages_pp": 100 * gap_no,
        "outage_share": (gap - gap_no) / gap if gap > 0 else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=84)
    ap.add_argument("--per-day", type=int, default=10_500)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--target", type=Path, help="local warehouse folder to build into (default: a temporary one)")
    args = ap.parse_args(argv)

    params = WorldParams.default(days=args.days, per_day=args.per_day, seed=args.seed)
    scratch = args.target is None
    target = Path(tempfile.mkdtemp(prefix="bench-world-")) if scratch else args.target
    settings = load_settings({**os.environ, "SMARTROUTER_LOCAL_DIR": str(target), "SMARTROUTER_WAREHOUSE": "local"})
    try:
        load_before = os.getloadavg()[0]
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        world = World(params)
        summary = warehouse.write_world(world, settings, progress=True)
        gen_s = time.perf_counter() - t0
        gen_cpu = time.process_time() - cpu0  # all threads of this process: independent of other load
        load_after = os.getloadavg()[0]
        peak_mb = peak_rss_mb()

        with warehouse.connect(settings) as conn:
            o = warehouse.query_frame("attempts_overview", conn=conn).iloc[0]
            procs = warehouse.query_frame("approval_by_processor", conn=conn).set_index("PROCESSOR")
        start = pd.Timestamp(summary.start).normalize()
        adyen = procs["FIRST_DAY"].get("ADYEN")
        adyen_week = int((pd.Timestamp(adyen) - start).days // 7 + 1) if adyen is not None else None
        t1 = time.perf_counter()
        h = headroom(settings, world)
        head_s = time.perf_counter() - t1

        print()
        print(f"world            {params.days} days x {params.per_day:,}/day, seed {params.seed} -> {target}")
        print(f"rows             {summary.attempts:,} attempts, {summary.rows[catalog.ROUTING_LOG_VIEW]:,} routing records")
        print(f"days             {int(o['DAYS'])} ({summary.start[:10]} .. {summary.params['end']})")
        print(f"approval         {o['APPROVAL_RATE']:.2%} of all attempts (band {APPROVAL_BAND[0]:.0%}-{APPROVAL_BAND[1]:.0%})")
        print(f"ADYEN first      {adyen} (week {adyen_week})")
        print(f"Amex violations  {int(o['AMEX_RULE_VIOLATIONS'])}")
        print(f"PROCESSING       {int(o['PROCESSING']):,}")
        print(
            f"generation       {gen_s:.1f} s wall, {gen_cpu:.1f} s CPU (incl. loading into the warehouse; "
            f"machine load {load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} cores)"
        )
        print(f"peak memory      {peak_mb:,.0f} MB")
        print(
            f"headroom         oracle {h['oracle']:.2%} vs rules {h['rules']:.2%} = {h['gap_pp']:.2f} pp "
            f"over {h['first_attempts']:,.0f} first attempts; {h['gap_no_outages_pp']:.2f} pp without outages, "
            f"outage share {h['outage_share']:.0%} ({head_s:.1f} s)"
        )
        targets = Targets("bench_world")
        targets.at_most("generation", gen_s, MAX_SECONDS, "s")
        targets.at_most("peak memory", peak_mb, MAX_PEAK_MB, "MB")
        checks = []
        if (args.days, args.per_day) == (84, 10_500):  # the bands are stated for the default world
            checks += [
                ("approval in 79-82 %", APPROVAL_BAND[0] <= o["APPROVAL_RATE"] <= APPROVAL_BAND[1]),
                ("headroom in 3-8 pp", HEADROOM_BAND_PP[0] <= h["gap_pp"] <= HEADROOM_BAND_PP[1]),
                ("outages < 1/3 of headroom", h["outage_share"] < 1 / 3),
                ("ADYEN from week 9", adyen_week == 9),
                ("Amex only on AMEX", int(o["AMEX_RULE_VIOLATIONS"]) == 0),
            ]
        for name, ok in checks:
            targets.check(name, ok)
        return targets.report()
    finally:
        if scratch:
            shutil.rmtree(target, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
