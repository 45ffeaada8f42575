"""`smartrouter experiment readout`: the live A/B split read out (always-valid lift, SRM, slice harm, auto-winner)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("experiment", help="the live A/B experiment (static rules vs model)",
                              description="Read out the service's A/B split from its decision log.")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    r = sub.add_parser("readout", help="lift with always-valid and fixed-horizon intervals, SRM, slice harm, winner",
                       description="Per arm and model version: payments, orders, approval, first-attempt approval, "
                                   "order conversion, latency; the primary metric's lift with an always-valid interval "
                                   "(safe to read daily) beside the fixed-horizon one; sample-ratio mismatch; per-slice "
                                   "harm; the auto-winner rule of experiment.toml. Exit 2 when there is no data.")
    r.add_argument("--decisions-dir", type=Path, default=None, metavar="DIR",
                   help="read the service's JSONL segments here (default: the warehouse table the ship step fills)")
    r.add_argument("--config", type=Path, default=None, metavar="FILE", help="experiment config (default experiment.toml)")
    r.add_argument("--split", choices=("model", "messages"), default="model",
                   help="which A/B to read: model = static rules vs model (routing.toml [experiment]); messages = the "
                        "model without vs with message recommendations (routing.toml [messages] ab_share)")
    r.add_argument("--truth", type=Path, default=None, metavar="LIVE_DIR",
                   help="world data only: the live loop's folder (<data>/live); prints the true lift of the same "
                        "split (the oracle's probabilities of what was sent) and whether the intervals hold it")
    r.add_argument("--out", type=Path, default=None, metavar="FILE", help="also write the readout JSON here")
    r.add_argument("--json", action="store_true", help="print the readout as JSON")
    r.set_defaults(func=_readout)


def _readout(args: argparse.Namespace) -> int:
    from smartrouter import abtest

    cfg = abtest.load_config(args.config)
    records, source = abtest.load_records(args.decisions_dir)
    result = abtest.readout(records, cfg, source=source, split=args.split)
    if args.truth is not None:
        from smartrouter.live_report import load_truth

        truth = abtest.true_lift(load_truth(args.truth), args.split)
        result["truth"] = {**truth, "covered": abtest.covers(result, truth)}
    if args.out is not None:
        abtest.write_readout(result, args.out)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    lift = result["lift"]
    sp = result["split"]
    print(f"source {result['source']}, {result['window']['days']} day(s), primary metric {result['primary_metric']}, "
          f"split {sp['name']}: control = {sp['control']}, treatment = {sp['treatment']}")
    for row in result["per_arm"]:
        print(f"  {row['ARM']:<9} payments {row['payments']:>8,}  orders {row['orders']:>8,}  approval "
              f"{_pct(row['approval'])}  first-attempt {_pct(row['first_attempt_approval'])}  conversion "
              f"{_pct(row['order_conversion'])}  payment latency {_num(row['payment_latency_ms_mean'])} ms")
    av, fh = lift["always_valid"], lift["fixed_horizon"]
    print(f"  lift {_pp(lift['lift'])}  always-valid [{_pp(av['ci_low'])}, {_pp(av['ci_high'])}] p={_num(av['p_value'], '.3g')}"
          f"  fixed-horizon [{_pp(fh['ci_low'])}, {_pp(fh['ci_high'])}] p={_num(fh['p_value'], '.3g')} (one look only)")
    for v in result["versions_vs_control"]:
        print(f"  {v['model_version']:<6} vs control of its hours: {_pp(v['lift'])} always-valid "
              f"[{_pp(v['always_valid_ci_low'])}, {_pp(v['always_valid_ci_high'])}]")
    for v in result["versions_head_to_head"]:
        print(f"  {v['challenger']} vs {v['champion']} while both served: {_pp(v['lift'])} always-valid "
              f"[{_pp(v['always_valid_ci_low'])}, {_pp(v['always_valid_ci_high'])}] ({v['n_challenger']:,} vs "
              f"{v['n_champion']:,} orders)")
    if "truth" in result:
        t = result["truth"]
        held = "holds it" if t["covered"]["always_valid"] else "MISSES it"
        part = f" (the message part alone {_pp(t['message_part'])})" if "message_part" in t else ""
        print(f"  truth (world oracle, same orders' first attempts): {_pp(t['lift'])}{part}; the always-valid interval {held}")
    print(f"  SRM: {result['srm']['note']}")
    harmed = [f"{h['slice']}={h['value']}" for h in result["harm"] if h["harmed"]]
    print(f"  harmed slices: {', '.join(harmed) if harmed else 'none'}")
    print(f"  decision: {result['decision']['verdict']}")
    print(result["summary"])
    return 0


def _pct(x: float | None) -> str:
    return "   n/a" if x is None else f"{x:6.2%}"


def _pp(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:+.2f} pp"


def _num(x: float | None, fmt: str = ".1f") -> str:
    return "n/a" if x is None else format(x, fmt)
