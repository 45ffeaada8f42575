"""`smartrouter rules propose | diff | export | install`: an optimized static rule table (smartrouter.rule_search).

`propose` searches the promoted model's run logs for a better VW_ROUTING_MERCHANT_RULE table and
measures it on the held-out window; `diff` says what changes, in words; `export` writes the rows in
the view's format (``--shadow``: flagged SHADOW_MODE, to shadow them first); `install` puts them
where the routing service's fallback reads them (routing.toml ``[policy] fallback_rules = "optimized"``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _settings():
    from smartrouter.config import load_settings

    return load_settings()


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def propose_handler(args: argparse.Namespace) -> int:
    from smartrouter import rule_search as RS

    search: dict = {}
    if args.max_rows is not None:
        search["max_rows"] = args.max_rows
    if args.segments is not None:
        search["segments"] = [c.strip().upper() for c in args.segments.split(",") if c.strip()]
    cfg = RS.load_config(overrides={"search": search} if search else None)  # bad values fail before any work
    settings = _settings()
    result = RS.promoted_run(settings, cfg, with_truth=not args.no_truth)
    path = RS.save_proposal(result, settings)
    doc = json.loads(path.read_text())
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    h = doc["held_out"]["headline"]
    print(f"proposed table ({len(doc['proposed_rows'])} active rows, searched on {doc['search']['rows']:,} first attempts "
          f"before the held-out window) -> {path}")
    print(f"{'RULE_ID':>7}  {'CURRENCY':<8} {'CARD_BRAND':<10} {'CARD_TYPE':<9} {'PROCESSOR':<9} {'PRIORITY':>8}")
    for r in doc["proposed_rows"]:
        print(f"{r['RULE_ID']:>7}  {r['CURRENCY']:<8} {r['CARD_BRAND']:<10} {r['CARD_TYPE']:<9} {r['PROCESSOR']:<9} {r['PRIORITY']:>8}")
    print(f"held-out {h['estimator']}: current {_pct(h['value_current'])}, proposed {_pct(h['value_proposed'])} "
          f"[{_pct(h['value_proposed_ci'][0])}, {_pct(h['value_proposed_ci'][1])}], model lift {100 * h['model_lift']:+.2f} pp")
    if "true_lift" in h:
        share = h.get("share_of_model_gain")
        print(f"truth (world): proposed {_pct(h['true_value_proposed'])} (estimate error {100 * h['value_error']:+.2f} pp, "
              f"{'covered' if h['value_covered'] else 'NOT covered'}), true lift {100 * h['true_lift']:+.2f} pp = "
              f"{'-' if share is None else f'{100 * share:.0f} %'} of the model's {100 * h['true_model_lift']:+.2f} pp")
    for line in RS.diff_lines(doc):
        print(line)
    return 0


def diff_handler(args: argparse.Namespace) -> int:
    from smartrouter import rule_search as RS

    doc = RS.load_proposal(_settings())
    if args.json:
        print(json.dumps({"lines": RS.diff_lines(doc), "segments": doc["held_out"]["segments"],
                          "rows": doc["held_out"]["rows"]}, indent=2))
        return 0
    for line in RS.diff_lines(doc):
        print(line)
    return 0


def export_handler(args: argparse.Namespace) -> int:
    from smartrouter import atomic
    from smartrouter import rule_search as RS

    frame = RS.export_rows(RS.load_proposal(_settings()), shadow=args.shadow)
    text = (frame.to_json(orient="records", date_format="iso", indent=2) + "\n") if args.format == "json" \
        else frame.to_csv(index=False, date_format="%Y-%m-%d %H:%M:%S")
    if args.out:
        atomic.write_text(Path(args.out), text)
        print(f"{len(frame)} rows{' (SHADOW_MODE = TRUE)' if args.shadow else ''} -> {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def install_handler(args: argparse.Namespace) -> int:
    from smartrouter import rule_search as RS

    settings = _settings()
    path = RS.install(RS.load_proposal(settings), settings.registry_dir)
    print(f"installed the proposed table -> {path}; the service's fallback uses it with routing.toml "
          "[policy] fallback_rules = \"optimized\" (read when the service starts: restart it to pick this table up)")
    return 0


def _whole(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of rows") from None
    return value  # range checked by rule_search.load_config, with the fix in its message


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("rules", help="optimize the merchant's static rule table: propose, diff, export, install")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("propose", help="search the logs for a better rule table and measure it on the held-out window")
    p.add_argument("--max-rows", type=_whole, default=None, help="most active rows of the table (default: rule_search.toml)")
    p.add_argument("--segments", default=None,
                   help="comma-separated columns rows may name (of CURRENCY,CARD_BRAND,CARD_TYPE; default: all)")
    p.add_argument("--no-truth", action="store_true", help="skip the world oracle's truth beside the estimates")
    p.add_argument("--json", action="store_true", help="print the whole proposal as JSON")
    p.set_defaults(func=propose_handler)
    d = sub.add_parser("diff", help="the last proposal against the current table, in words")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=diff_handler)
    e = sub.add_parser("export", help="the proposed rows in VW_ROUTING_MERCHANT_RULE format")
    e.add_argument("--shadow", action="store_true", help="flag every row SHADOW_MODE (ids after the current table's)")
    e.add_argument("--format", choices=("csv", "json"), default="csv")
    e.add_argument("--out", default=None, help="write to this file (atomically) instead of stdout")
    e.set_defaults(func=export_handler)
    i = sub.add_parser("install", help="install the proposed rows for the service's fallback (registry/rules/optimized.json)")
    i.set_defaults(func=install_handler)

