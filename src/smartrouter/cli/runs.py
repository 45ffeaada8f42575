"""`smartrouter runs list|prune`: run folders, their size, and retention (smartrouter.retention)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _policy(args: argparse.Namespace):
    from smartrouter.retention import Policy, load_policy

    base = load_policy(args.config)
    keep = base.keep_last if getattr(args, "keep", None) is None else args.keep
    days = base.keep_days if getattr(args, "keep_days", None) is None else (args.keep_days or None)
    return Policy(keep_last=keep, keep_days=days, after_run=base.after_run)


def _list(args: argparse.Namespace) -> int:
    from smartrouter.config import load_settings
    from smartrouter.retention import format_bytes, survey

    settings = load_settings()
    policy = _policy(args)
    runs = survey(settings, policy)
    if args.json:
        print(json.dumps({"runs_dir": str(settings.runs_dir), "policy": {"keep_last": policy.keep_last,
                          "keep_days": policy.keep_days}, "runs": [r.to_json() for r in runs]}, indent=1, default=str))
        return 0
    if not runs:
        print(f"no runs in {settings.runs_dir}")
        return 0
    print(f"{'run':<20} {'status':<10} {'model':<6} {'decision':<10} {'size':>9}  state")
    for r in runs:
        state = "record only" if r.pruned and not r.removable else (
            "whole: " + "; ".join(r.keep) if r.keep else f"prunable ({format_bytes(sum(b for _, b in r.removable))})")
        print(f"{r.run_id:<20} {str(r.status):<10} {str(r.model_version or '-'):<6} {str(r.decision or '-')[:10]:<10} "
              f"{format_bytes(r.bytes):>9}  {state}")
    total = sum(r.bytes for r in runs)
    would = sum(sum(b for _, b in r.removable) for r in runs if r.prunable)
    print(f"{len(runs)} runs, {format_bytes(total)} in {settings.runs_dir}; `smartrouter runs prune` "
          f"(keep last {policy.keep_last}" + (f", {policy.keep_days} days" if policy.keep_days else "")
          + f") would free {format_bytes(would)}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from smartrouter.config import load_settings
    from smartrouter.retention import format_bytes, prune

    settings = load_settings()
    policy = _policy(args)
    result = prune(settings, policy, dry_run=args.dry_run, echo=None if args.json else print)
    if args.json:
        print(json.dumps(result.to_json(), indent=1, default=str))
        return 0
    for r in result.kept:
        if r.keep and r.removable and not any(k.startswith(("one of the last", "started within")) for k in r.keep):
            print(f"kept {r.run_id} whole: {'; '.join(r.keep)}")
    verb = "would free" if args.dry_run else "freed"
    print(f"{len(result.pruned)} run(s) {'would be ' if args.dry_run else ''}pruned to their record, {verb} "
          f"{format_bytes(result.bytes_freed)}; {len(result.kept)} left as they were")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("runs", help="run folders: list them with their size, prune old ones to their record")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="retention settings (default: the package's retention.toml)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--keep", type=int, default=None, metavar="N",
                        help="keep the newest N runs whole (default: retention.toml keep_last)")
    common.add_argument("--keep-days", dest="keep_days", type=int, default=None, metavar="D",
                        help="also keep runs started within D days whole; 0 = no age rule (default: retention.toml)")
    ls = sub.add_parser("list", parents=[common], help="every run: status, model, size, and whether the policy keeps it whole")
    ls.set_defaults(func=_list)
    pr = sub.add_parser("prune", parents=[common],
                        help="reduce runs the policy does not keep to their record (drop the feature table and evaluation hand-off)",
                        description="Remove the rebuildable inputs (feature table, evaluation hand-off) of every run "
                                    "not kept whole. Never touches the serving model's run, an active canary's, the "
                                    "rollback target's, or a running run. Prints what it removes and the bytes freed.")
    pr.add_argument("--dry-run", dest="dry_run", action="store_true", help="say what would be removed, remove nothing")
    pr.set_defaults(func=_prune)
