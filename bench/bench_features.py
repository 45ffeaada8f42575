"""Feature benchmarks: the point-in-time feature build on the local world and encode_payment latency.

    .venv/bin/python bench/bench_features.py            # uses the configured local world if built
    .venv/bin/python bench/bench_features.py --build    # builds the default world into a temp dir first

Targets: feature build of the default world (~880K attempts, 12 weeks) <= 90 s; encode_payment <= 50 us
(p50). Exits 1 when any is missed (bench/_targets.py).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

from _targets import Targets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", action="store_true", help="build a world into a temp dir first")
    ap.add_argument("--days", type=int, default=84)
    ap.add_argument("--per-day", type=int, default=10_500)
    ap.add_argument("--calls", type=int, default=10_000, help="encode_payment calls to time")
    args = ap.parse_args()

    tmp = None
    if args.build:
        tmp = tempfile.mkdtemp(prefix="bench-features-")
        os.environ["SMARTROUTER_LOCAL_DIR"] = tmp
    from smartrouter import features, warehouse
    from smartrouter.config import load_settings
    from smartrouter.encoder import FeatureEncoder
    from smartrouter.errors import SmartrouterError

    settings = load_settings()
    targets = Targets("bench_features")
    try:
        if args.build:
            from smartrouter.world import World, WorldParams

            t0 = time.perf_counter()
            summary = warehouse.write_world(World(WorldParams(days=args.days, per_day=args.per_day)), settings, progress=False)
            print(f"world build: {summary.attempts:,} attempts in {time.perf_counter() - t0:.1f} s")
        try:
            info = warehouse.load_world_info(settings)
        except SmartrouterError as exc:
            print(f"no local world ({exc}); run with --build or `make world`")
            return 1
        start, end = info["start"], info["end"]
        t0 = time.perf_counter()
        table = features.build_training_table(settings, start, end)
        seconds = time.perf_counter() - t0
        ti = table.attrs["info"]
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"feature build: {len(table):,} rows x {len(features.FEATURE_NAMES)} features over {start} .. {end}")
        print(f"  total {seconds:.1f} s wall, {ti.cpu_seconds:.1f} s CPU ({', '.join(f'{k} {v:.1f}s' for k, v in ti.timings.items())}); "
              f"processing excluded {ti.processing_excluded:,}; peak RSS {peak_mb:,.0f} MB")
        days = info.get("days") or 0
        if days >= 84:  # the target is stated for the default world
            print(f"  load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
            targets.at_most("feature build of the default world", seconds, 90, "s")

        split = features.time_split(table, valid_days=7, test_days=7)
        t0 = time.perf_counter()
        enc = FeatureEncoder.fit(split[split["SPLIT"] == "train"], features.FEATURES)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        X = enc.transform(split)
        tr_s = time.perf_counter() - t0
        print(f"encoder: d={enc.dim}; fit {fit_s:.1f} s; transform {len(split):,} rows {tr_s:.1f} s ({X.nbytes / 1e6:,.0f} MB)")
        rows = split[list(features.FEATURE_NAMES)].head(args.calls).to_dict("records")
        for r in rows[:200]:
            enc.encode_payment(r)  # warm-up
        lat = []
        for r in rows:
            t = time.perf_counter()
            enc.encode_payment(r)
            lat.append(time.perf_counter() - t)
        lat.sort()
        p50, p99 = lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6
        print(f"encode_payment: {len(lat):,} calls, mean {statistics.fmean(lat) * 1e6:.1f} us, p50 {p50:.1f} us, "
              f"p99 {p99:.1f} us")
        targets.at_most("encode_payment p50", p50, 50, "us")
        state = features.OnlineFeatureState.from_history(
            features.outcome_history(settings, split["CREATED_AT"].max() - __import__("datetime").timedelta(days=1),
                                     split["CREATED_AT"].max()))
        at = split["CREATED_AT"].max().to_pydatetime()
        t = time.perf_counter()
        for b in split["CARD_BIN"].head(2000):
            state.features(b, at)
        print(f"online features (health + BIN, all processors): {(time.perf_counter() - t) / 2000 * 1e6:.1f} us per payment")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return targets.report()


if __name__ == "__main__":
    sys.exit(main())
