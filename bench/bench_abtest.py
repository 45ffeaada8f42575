"""Benchmark: does the A/B readout keep its promises when it is read every day?

    .venv/bin/python bench/bench_abtest.py [--experiments 200] [--days 28] [--orders-per-day 2000] [--lift 0.01]

Simulates many A/B experiments in process (`smartrouter.abtest.simulate`: orders split by the
service's SHA-256 hash, outcomes drawn from each order's own true approval, a known true lift) and
reads each one out at the end of every day with the readout's own interval and winner rule:

* with a true lift of ``--lift``: the share of experiments whose 95 % always-valid interval held
  the true lift at EVERY daily look (target >= 95 %), beside the fixed-horizon interval's;
* with no true lift: the share where the auto-winner ever declared the treatment (target <= 5 %),
  and the rejection rate of the always-valid test (<= 5 %) beside the fixed-horizon test's when
  read daily (the inflation the sequential method exists to prevent: shown, and checked to be
  above 5 %, so the bench would notice if the simulation stopped exercising it);
* a split skewed by ``--skew`` (treatment orders lost) is flagged as a sample-ratio mismatch in
  every experiment, and a correct split in no more than a few (SRM alpha 0.001).

Exits 1 when a target is missed (bench/_targets.py).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd
from _targets import Targets

from smartrouter import abtest
from smartrouter.routing.experiment import CONTROL, TREATMENT, bucket


def srm_rates(experiments: int, orders: int, skew: float, share: float, alpha: float, seed: int) -> tuple[float, float]:
    """(share flagged with a correct split, share flagged when ``skew`` of treatment orders are lost)."""
    rng = np.random.default_rng(seed)
    flagged = [0, 0]
    for e in range(experiments):
        keys = [f"s{seed}-{e}-{i}" for i in range(orders)]
        treated = np.fromiter((bucket(k, "srm") < share for k in keys), bool, orders)
        for j, lose in enumerate((0.0, skew)):
            keep = ~(treated & (rng.random(orders) < lose))
            frame = pd.DataFrame({"KEY": np.asarray(keys)[keep], "ARM": np.where(treated[keep], TREATMENT, CONTROL)})
            flagged[j] += abtest.srm_check(frame, share, alpha)["flagged"]
    return flagged[0] / experiments, flagged[1] / experiments


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experiments", type=int, default=200)
    ap.add_argument("--days", type=int, default=28)
    ap.add_argument("--orders-per-day", type=int, default=2000)
    ap.add_argument("--lift", type=float, default=0.01, help="true lift of the coverage run (0.01 = 1 pp)")
    ap.add_argument("--base-rate", type=float, default=0.80)
    ap.add_argument("--skew", type=float, default=0.10, help="share of treatment orders lost in the SRM run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = abtest.load_config()
    alpha = cfg["readout"]["alpha"]
    t0 = time.time()
    kw = dict(days=args.days, orders_per_day=args.orders_per_day, base_rate=args.base_rate, cfg=cfg)
    lifted = abtest.simulate(args.experiments, true_lift=args.lift, seed=args.seed, **kw)
    null = abtest.simulate(args.experiments, true_lift=0.0, seed=args.seed + 1, **kw)
    srm_ok, srm_skewed = srm_rates(args.experiments, args.orders_per_day * 7, args.skew, 0.5,
                                   cfg["srm"]["alpha"], args.seed + 2)
    seconds = time.time() - t0
    print(f"{args.experiments} experiments x {args.days} daily looks x {args.orders_per_day:,} orders/day, "
          f"base approval {args.base_rate:.0%}, alpha {alpha:g}, mixture sd {cfg['readout']['mixture_sd']:g} "
          f"({seconds:.0f} s)")
    print(f"{'':34}{'always-valid':>14}{'fixed, daily':>14}{'fixed, 1 look':>15}")
    print(f"{f'coverage, true lift {args.lift * 100:+.1f} pp':34}{lifted.always_valid_coverage:>14.1%}"
          f"{lifted.fixed_coverage_all_looks:>14.1%}{lifted.fixed_coverage_last_look:>15.1%}")
    print(f"{'coverage, no true lift':34}{null.always_valid_coverage:>14.1%}{null.fixed_coverage_all_looks:>14.1%}"
          f"{null.fixed_coverage_last_look:>15.1%}")
    print(f"{'p < alpha ever, no true lift':34}{null.always_valid_rejections:>14.1%}{null.fixed_rejections_peeking:>14.1%}"
          f"{null.fixed_rejections_last_look:>15.1%}")
    print(f"{f'power, true lift {args.lift * 100:+.1f} pp':34}{lifted.always_valid_rejections:>14.1%}"
          f"{lifted.fixed_rejections_peeking:>14.1%}{lifted.fixed_rejections_last_look:>15.1%}")
    print(f"auto-winner declared: {null.winners:.1%} with no true lift, {lifted.winners:.1%} with {args.lift * 100:+.1f} pp")
    print(f"SRM flagged: {srm_ok:.1%} of correct splits, {srm_skewed:.1%} with {args.skew:.0%} of treatment orders lost "
          f"({args.orders_per_day * 7:,} orders each)")
    t = Targets("bench_abtest")
    t.at_least("always-valid 95 % interval covers the true lift at every daily look", lifted.always_valid_coverage, 0.95)
    t.at_least("always-valid coverage with no true lift", null.always_valid_coverage, 0.95)
    t.at_most("false-winner rate with no true lift (daily looks)", null.winners, 0.05)
    t.at_most("always-valid false-positive rate with daily looks", null.always_valid_rejections, 0.05)
    t.check("fixed-horizon test read daily rejects more often than 5 % (the peeking problem is exercised)",
            null.fixed_rejections_peeking > 0.05, f"measured {null.fixed_rejections_peeking:.1%}")
    t.at_least("skewed split flagged as SRM", srm_skewed, 0.95)
    t.at_most("correct split flagged as SRM", srm_ok, 0.02)
    return t.report()


if __name__ == "__main__":
    sys.exit(main())
