"""`smartrouter live`: the live loop — the world advances day by day through the service, the daily run learns."""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from pathlib import Path

from smartrouter.cli.world import one_line_errors


def _positive_days(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    from smartrouter.live import DEFAULT_DAYS, DEFAULT_PROFILE, DEFAULT_WORKERS

    p = subparsers.add_parser(
        "live",
        help="the live loop: advance the world day by day through the service, ship, retrain, hot-reload",
        description="For each simulated day: `world advance` through the routing service, ship its decision log, "
                    "`smartrouter run` as of the next day, hot-reload a newly promoted model. Resumes an unfinished "
                    "loop (loop.json in the live dir) at the first step not done. Exit codes: 0 done, 1 a step "
                    "failed (or a daily run failed: the loop went on), 2 bad input, 3 another loop or run holds "
                    "the lock, 130 interrupted (rerun to resume).",
    )
    one_line_errors(p)
    p.add_argument("--days", type=_positive_days, default=None,
                   help=f"simulated days (default {DEFAULT_DAYS}; resuming: the unfinished loop's)")
    p.add_argument("--scenario", default=None, metavar="FILE|NAME",
                   help="scenario TOML file or the name of one in scenarios/ (default: scenarios/default.toml)")
    p.add_argument("--retrain-profile", dest="retrain_profile", default=None, metavar="PROFILE",
                   help=f"profiles.toml profile of the daily run (default {DEFAULT_PROFILE})")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", default=None,
                       help="route through this running service (its routing.toml needs [health] clock = \"event\"; "
                            "SMARTROUTER_ADMIN_TOKEN must be its admin token for hot reloads)")
    where.add_argument("--in-process", dest="in_process", action="store_true",
                       help="route through the service's library in this process (no HTTP; fast checks)")
    p.add_argument("--decisions-dir", dest="decisions_dir", type=Path, default=None, metavar="DIR",
                   help="with --url: that service's decision-log folder (default SMARTROUTER_STATE_DIR/decisions)")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                   help=f"worker processes of the service the loop starts (default {DEFAULT_WORKERS})")
    p.add_argument("--new", action="store_true", help="abandon an unfinished loop and start a new one")
    p.add_argument("--no-reports", dest="render", action="store_false", help="the daily runs skip their HTML reports")
    p.add_argument("--no-retrain", dest="retrain", action="store_false",
                   help="skip each day's daily run (serve what the registry holds; a canary rollout still advances)")
    p.set_defaults(func=_live)


def _live(args: argparse.Namespace) -> int:
    def stop(signum, frame):  # noqa: ANN001 - `kill` stops the loop like Ctrl-C: the service is stopped, loop.json saved
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    from smartrouter.live import LoopOptions, run_loop

    options = LoopOptions(days=args.days, scenario=args.scenario, retrain_profile=args.retrain_profile,
                          url=args.url, in_process=args.in_process, workers=args.workers,
                          decisions_dir=args.decisions_dir, new=args.new, render=args.render, retrain=args.retrain)
    with warnings.catch_warnings():
        warnings.simplefilter("always", RuntimeWarning)  # a stale lock taken over: one line
        warnings.showwarning = lambda m, *a, **k: print(f"smartrouter live: warning: {m}", file=sys.stderr)
        result = run_loop(options, echo=lambda m: print(m, flush=True))
    days = [d for d in result.loop["day_records"] if d["complete"]]
    now = len(result.days_done_now)
    per_day = result.seconds / now if now else float("nan")
    print(f"loop {result.loop['id']}: {len(days)} of {result.loop['days']} days done "
          f"({now} in this call) in {result.seconds:.0f} s; {per_day:.1f} s per simulated day")
    if result.failed_runs:
        print(f"smartrouter live: error: the daily run failed on {', '.join(result.failed_runs)} (the service kept "
              "its model); open those runs' failing notebooks (runs/<run_id>/)", file=sys.stderr)
        return 1
    return 0
