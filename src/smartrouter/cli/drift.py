"""`smartrouter drift check [--retrain]`: the daily drift watch and the retrain trigger cron can call."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXIT_OK, EXIT_RETRAIN_FAILED = 0, 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("drift", help="drift watch: input/score PSI, calibration, processor health; retrain trigger",
                              description="Compare one day of the warehouse with the training rows of the model that "
                                          "served it (thresholds in drift.toml).")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    c = sub.add_parser("check", help="run the drift checks for a day; --retrain starts `smartrouter run` when one crosses",
                       description="Writes <reports dir>/drift/<day>.json and latest.json. Exit codes: 0 checked (and "
                                   "retrained when asked and needed), 1 the retrain run failed, 2 bad input or no data, "
                                   "3 another run holds the lock.")
    c.add_argument("--day", default=None, metavar="YYYY-MM-DD", help="day to check (default: the warehouse's newest)")
    c.add_argument("--version", default=None, help="model version to check (default: the one that served the day)")
    c.add_argument("--config", type=Path, default=None, metavar="FILE", help="drift config (default drift.toml)")
    c.add_argument("--retrain", action="store_true",
                   help="when a retrain threshold is crossed, start the daily run with the reasons in its manifest")
    c.add_argument("--profile", default="default", help="profile of that run (profiles.toml; default 'default')")
    c.add_argument("--no-reports", dest="render", action="store_false", help="that run skips its HTML reports")
    c.add_argument("--json", action="store_true", help="print the drift report as JSON")
    c.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from smartrouter import drift
    from smartrouter.config import load_settings

    settings = load_settings()
    cfg = drift.load_config(args.config)
    report = drift.check(settings, args.day, cfg, version=args.version)
    path = drift.write_report(report, settings)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"drift check of {report['day']} against {report['model_version']} ({report['model_found_by']}): "
              f"{report['rows']['live']:,} live rows vs {report['rows']['training']:,} training rows -> {path}")
        for c in report["crossed"]:
            print(f"  CROSSED [{c['check']}] {c['what']}" + ("" if c["retrain"] else "  (report only)"))
        if not report["crossed"]:
            print("  nothing crossed a threshold")
        print("  retrain: " + ("needed" if report["drifted"] else "not needed"))
    if args.retrain and report["drifted"]:
        echo = (lambda m: None) if args.json else (lambda m: print(m, flush=True))
        result = drift.retrain(report, settings, profile=args.profile, echo=echo, render=args.render)
        if not args.json:
            print(f"retrain run {result.run_id}: {result.status} (reason recorded in its manifest)")
        return EXIT_OK if result.ok else EXIT_RETRAIN_FAILED
    return EXIT_OK
