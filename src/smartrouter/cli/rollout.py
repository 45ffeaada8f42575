"""`smartrouter rollout status | advance | abort | start vN`: the canary rollout of a model version."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _controller(args: argparse.Namespace) -> Any:
    from smartrouter.routing.rollout import Controller

    return Controller(decisions_dir=getattr(args, "decisions_dir", None))


def _print_verdict(v: dict[str, Any] | None) -> None:
    if not v:
        return
    c, ch = v.get("canary") or {}, v.get("champion") or {}
    print(f"  stage {v['stage']}: verdict {v['action']}")
    for r in v.get("reasons") or []:
        print(f"    - {r}")
    for name, t in (("canary", c), ("champion", ch)):
        appr = t.get("first_attempt_approval")
        print(f"    {name:<9} payments {t.get('payments', 0):>7,}  first-attempt approval "
              f"{'-' if appr is None else f'{100 * appr:.2f} %'}  p99 {t.get('latency_p99_ms') or '-'} ms  "
              f"timeouts {t.get('timeout_rate') if t.get('timeout_rate') is not None else '-'}  "
              f"errors {t.get('processor_error_rate') if t.get('processor_error_rate') is not None else '-'}")
    a = (v.get("checks") or {}).get("approval") or {}
    if "diff" in a:
        print(f"    approval canary - champion {100 * a['diff']:+.2f} pp [{100 * a['lower']:+.2f}, {100 * a['upper']:+.2f}] "
              f"(tolerance -{100 * a['tolerance']:.1f} pp, {a['level']:.0%} interval)")


def _status(args: argparse.Namespace) -> int:
    from smartrouter.routing.rollout import ACTIVE, summary

    ctl = _controller(args)
    record = ctl.registry.rollout()
    if record is None:
        out = {"rollout": None, "message": "no rollout was ever started; a daily-run promotion beside a champion "
                                          "starts one, or `smartrouter rollout start vN`"}
        print(json.dumps(out, indent=2) if args.json else out["message"])
        return 0
    live = ctl.verdict(record).to_json() if record["status"] == ACTIVE else None
    if args.json:
        print(json.dumps({"rollout": summary(record), "verdict_now": live, "last_check": record.get("last_check"),
                          "events": record["events"]}, indent=2, default=str))
        return 0
    s = summary(record)
    print(f"rollout {s['id']}: {s['candidate']} beside champion {s['champion']} -- {s['status']}, stage {s['stage']} "
          f"({s['share']:.0%} of the model arm{', shadow' if s['shadow'] else ''}); stages {' -> '.join(s['stages'])}")
    for e in record["events"]:
        print(f"  {e['at']} {e['event']:<11} {e.get('stage', '')}: {e.get('reason', '')}")
    _print_verdict(live)
    return 0


def _advance(args: argparse.Namespace) -> int:
    result = _controller(args).step()
    if args.json:
        print(json.dumps(result.to_json(), indent=2, default=str))
        return 0
    r = result.record or {}
    print(f"rollout {r.get('id')}: {result.applied} -- now {r.get('status')} at stage "
          f"{r['stages'][r['stage_index']]['name'] if r else '-'}")
    _print_verdict(result.verdict.to_json() if result.verdict else None)
    if result.applied in ("abort", "busy"):
        print(f"  {result.message}")
    return 0


def _abort(args: argparse.Namespace) -> int:
    from smartrouter.registry import Registry
    from smartrouter.routing.rollout import summary

    record = Registry().end_rollout("aborted", args.reason or "aborted by hand")
    print(json.dumps({"rollout": summary(record)}, indent=2) if args.json else
          f"rollout {record['id']} aborted at stage {summary(record)['stage']}: {record['candidate']} is a candidate again, "
          f"{record['champion']} serves every model-arm payment")
    return 0


def _start(args: argparse.Namespace) -> int:
    from smartrouter.registry import Registry
    from smartrouter.routing.rollout import summary

    record = Registry().start_canary(args.version, args.reason or ("" if args.force else "canary by hand"),
                                     force=args.force)
    s = summary(record)
    print(json.dumps({"rollout": s}, indent=2) if args.json else
          f"rollout {s['id']}: {s['candidate']} beside {s['champion']}, stage {s['stage']} "
          f"({s['share']:.0%}{', shadow' if s['shadow'] else ''}); the workers load it at their next poll")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("rollout", help="canary rollout of a model version: status, advance, abort, start",
                              description="A version promoted beside a champion walks the stages of rollout.toml "
                                          "(shadow -> 10 %% -> 50 %% -> 100 %% of the model arm); `advance` checks the "
                                          "guardrails on the decision log and advances, holds or rolls back. "
                                          "Exit codes: 0 done, 2 bad input (no rollout, finished rollout, unknown version).")
    sub = p.add_subparsers(dest="rollout_command", metavar="ACTION")
    sub.required = True
    for name, fn, text in (("status", _status, "the rollout, its events and the guardrails now (read-only)"),
                           ("advance", _advance, "check the guardrails and advance, hold or roll back (cron: every 1-2 h)"),
                           ("abort", _abort, "end the rollout, the champion keeps serving"),
                           ("start", _start, "put a registered version in canary beside the champion")):
        q = sub.add_parser(name, help=text, description=text)
        q.add_argument("--json", action="store_true", help="machine-readable output")
        if name in ("status", "advance"):
            q.add_argument("--decisions-dir", type=Path, default=None,
                           help="the service's decision log (default $SMARTROUTER_STATE_DIR/decisions)")
        if name in ("abort", "start"):
            q.add_argument("--reason", default=None, help="why (recorded in the registry and the lineage store)")
        if name == "start":
            q.add_argument("version", help="a registered version, e.g. v5")
            q.add_argument("--force", action="store_true", help="roll out a rejected (or retired) version; needs --reason")
        q.set_defaults(func=fn)
