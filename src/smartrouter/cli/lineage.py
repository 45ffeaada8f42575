"""`smartrouter lineage`: which data, code and parameters made the serving model; which runs failed."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "lineage",
        help="query the lineage store (serving model, failed runs, all runs)",
        description="serving: which data, code and parameters produced the model now serving; "
                    "failures: which runs failed and where; runs: every run.",
    )
    p.add_argument("what", nargs="?", choices=("serving", "failures", "runs"), default="runs")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--limit", type=int, default=20, help="runs: how many of the newest (default 20)")
    p.set_defaults(func=_lineage)


def _lineage(args: argparse.Namespace) -> int:
    from smartrouter import lineage

    if args.what == "serving":
        data: Any = lineage.serving_model_lineage()
    elif args.what == "failures":
        data = lineage.failed_runs()
    else:
        data = lineage.runs(limit=args.limit)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    if args.what == "serving":
        _print_serving(data)
    elif not data:
        print("no failed runs" if args.what == "failures" else "no runs recorded yet (run `smartrouter run`)")
    elif args.what == "failures":
        for r in data:
            print(f"{r['run_id']}  failed at {r['failed_stage']}: {r['error']}  ({r['run_dir']})")
    else:
        print(f"{'run':<20} {'status':<10} {'as of':<11} {'model':<6} {'gate':<10} commit")
        for r in data:
            commit = (r.get("git_commit") or "?")[:10] + ("+dirty" if r.get("git_dirty") else "")
            print(f"{r['run_id']:<20} {r['status']:<10} {r['as_of'] or '':<11} {r['model_version'] or '-':<6} "
                  f"{r['gate_decision'] or '-':<10} {commit}")
    return 0


def _print_serving(d: dict[str, Any]) -> None:
    if not d.get("serving"):
        print(d.get("message"))
        return
    print(f"serving model: {d['serving']} (made by run {d.get('run_id') or 'unknown'})")
    if "run_status" not in d:
        print(d.get("message", ""))
        return
    window = (d.get("data") or {}).get("window") or {}
    fp = (d.get("data") or {}).get("fingerprint")
    code = d.get("code") or {}
    print(f"  data:       {window.get('start')} .. {window.get('end_exclusive')} (exclusive), as of {d.get('as_of')}")
    print(f"  fingerprint: {json.dumps(fp, default=str) if fp is not None else 'none recorded'}")
    print(f"  code:       commit {code.get('commit')}{' (dirty)' if code.get('dirty') else ''}")
    print(f"  profile:    {d.get('profile')}")
    print(f"  gate:       {(d.get('gate') or {}).get('decision')}; " + "; ".join((d.get("gate") or {}).get("reasons") or []))
    for stage, params in (d.get("parameters") or {}).items():
        shown = ", ".join(f"{k}={v}" for k, v in params.items() if k != "run_dir")
        print(f"  {stage}: {shown}")
    for p in d.get("promotions") or []:
        print(f"  {p['at']}  {p['action']}  {p['reason'] or ''}")
