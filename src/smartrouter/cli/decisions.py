"""`smartrouter decisions`: the service's decision log — ship it to the warehouse, or summarize it."""

from __future__ import annotations

import argparse
from pathlib import Path

from smartrouter.config import load_settings


def _directory(args: argparse.Namespace) -> Path:
    return Path(args.dir) if args.dir else load_settings().state_dir / "decisions"


def ship_handler(args: argparse.Namespace) -> int:
    from smartrouter.routing.shipping import TABLE, ship

    directory = _directory(args)
    r = ship(directory)
    print(f"shipped {r.shipped} records from {len(r.per_segment)} of {r.segments} segments in {directory} to {TABLE} "
          f"({r.already} shipped before; {r.pending_partial} segments still being written; {r.skipped_bad} bad lines skipped)")
    return 0


def summary_handler(args: argparse.Namespace) -> int:
    from smartrouter.routing.decision_log import read_frame

    directory = _directory(args)
    frame = read_frame(directory)
    if frame.empty:
        print(f"no records in {directory}")
        return 0
    print(f"{len(frame)} records in {directory}")
    print(frame.groupby("kind").size().to_string())
    decisions = frame[frame["kind"] == "decision"]
    if len(decisions):
        print("\ndecisions by source and arm:")
        print(decisions.groupby(["source", "arm"]).size().to_string())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("decisions", help="the service's decision log: ship to the warehouse, summarize")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    ship = sub.add_parser("ship", help="load new decision-log lines into the warehouse (idempotent; run from cron)")
    ship.add_argument("--dir", default=None, help="decision-log folder (default: SMARTROUTER_STATE_DIR/decisions)")
    ship.set_defaults(func=ship_handler)
    summary = sub.add_parser("summary", help="count the log's records by kind, source and arm")
    summary.add_argument("--dir", default=None, help="decision-log folder (default: SMARTROUTER_STATE_DIR/decisions)")
    summary.set_defaults(func=summary_handler)
