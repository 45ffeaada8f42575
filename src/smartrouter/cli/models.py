"""`smartrouter models list | show vN | promote vN | rollback | verify vN`: the model registry from the shell."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from smartrouter.errors import ConfigError


def _registry() -> Any:
    from smartrouter.registry import Registry

    return Registry()


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * float(x):.2f}%"


def _num(x: Any, fmt: str) -> str:
    return "-" if x is None else format(float(x), fmt)


def _list(args: argparse.Namespace) -> int:
    reg = _registry()
    rows = reg.list()
    if args.json:
        print(json.dumps({"registry": str(reg.root), "promoted": (reg.pointer() or {}).get("version"), "versions": rows},
                         indent=2, default=str))
        return 0
    if not rows:
        print(f"no model versions in {reg.root} (a pipeline run registers them: `smartrouter run`)")
        return 0
    print(f"{'':2}{'version':<8} {'status':<11} {'family':<9} {'run':<22} {'value':>8} {'lift':>8} {'auc':>6}")
    for r in rows:
        h = r.get("headline") or {}
        lift = h.get("lift_vs_rules")
        print(f"{'*' if r.get('promoted') else ' ':2}{r['version']:<8} {str(r.get('status')):<11} {str(r.get('family')):<9} "
              f"{str(r.get('run_id')):<22} {_pct(h.get('policy_value')):>8} "
              f"{('-' if lift is None else _num(100 * lift, '+.2f') + 'pp'):>8} {_num(h.get('auc'), '.3f'):>6}")
    print("* = promoted (served). value = estimated approval of first attempts; lift = vs static rules.")
    return 0


def _show(args: argparse.Namespace) -> int:
    data = _registry().show(args.version)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    v, card, gates = data["version"], data["card"], data["gates"]
    print(f"{v['version']}  status={v.get('status')}  family={v.get('family')}  run={v.get('run_id')}  created={v.get('created_at')}")
    integ = data.get("integrity") or {}
    print(f"integrity: {'ok' if integ.get('ok') else 'FAILED: ' + str(integ.get('error'))}")
    print(f"gate decision: {gates.get('decision')}")
    for reason in gates.get("reasons") or []:
        print(f"  - {reason}")
    for g in gates.get("gates") or []:
        print(f"  {'PASS' if g.get('passed') else 'FAIL'} {g.get('gate'):<22} {g.get('reason')}")
    from smartrouter.verdict import card_policy_rows  # the run page's verdict reads the card the same way

    pv = card_policy_rows(data)
    if pv:
        print("policy value (first attempts, test window):")
        for r in pv:
            true = f"  true {_pct(r.get('true_value'))}" if r.get("true_value") is not None else ""
            print(f"  {r['policy']:<24} {_pct(r.get('estimate'))} [{_pct(r.get('ci_low'))}, {_pct(r.get('ci_high'))}]{true}")
    heads = data["metrics"].get("heads") or []
    if heads:
        print("heads (test window):")
        for h in heads:
            print(f"  {h['processor']:<9} n={h.get('n'):<7} auc={_num(h.get('auc'), '.3f')} ece={_num(h.get('ece'), '.4f')}")
    hist = card.get("rollout_history") or []
    if hist:
        print("rollout history:")
        for e in hist:
            print(f"  {e.get('at')} {e.get('event')} {e.get('reason') or ''}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    if args.force and not (args.reason or "").strip():
        raise ConfigError("--force needs --reason \"why serving this version is safe\" (it is recorded)")
    ptr = _registry().promote(args.version, args.reason or "promoted by hand", force=args.force)
    print(f"promoted {ptr['version']} (was {ptr.get('previous') or 'none'}){' [forced]' if ptr.get('forced') else ''}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    ptr = _registry().rollback(args.reason or "rollback by hand")
    print(f"rolled back to {ptr['version']} (was {ptr.get('previous')})")
    return 0


def _verify(args: argparse.Namespace) -> int:
    reg = _registry()
    res = reg.verify(args.version)
    reg.load(args.version)
    print(f"{args.version}: {res['files']} files match their checksums; the serving form loads")
    return 0


def register(subparsers: Any) -> None:
    """Add `smartrouter models ...`."""
    parser = subparsers.add_parser("models", help="the model registry: list, show, promote, rollback, verify",
                                   description="Versioned model registry: one promoted version at a time.")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("list", help="every version with status and headline numbers")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_list)
    p = sub.add_parser("show", help="model card, per-head metrics, policy-value table and gate results of a version")
    p.add_argument("version", help="vN")
    p.add_argument("--json", action="store_true", help="the card, metrics and gates as JSON")
    p.set_defaults(func=_show)
    p = sub.add_parser("promote", help="serve a version (atomic pointer swap)")
    p.add_argument("version", help="vN")
    p.add_argument("--force", action="store_true", help="promote a version the gates rejected (needs --reason)")
    p.add_argument("--reason", default="", help="why (recorded in the history)")
    p.set_defaults(func=_promote)
    p = sub.add_parser("rollback", help="serve the previously promoted version again")
    p.add_argument("--reason", default="", help="why (recorded in the history)")
    p.set_defaults(func=_rollback)
    p = sub.add_parser("verify", help="check a version's checksums and that its serving form loads")
    p.add_argument("version", help="vN")
    p.set_defaults(func=_verify)


if __name__ == "__main__":  # pragma: no cover
    from smartrouter.cli import main

    sys.exit(main(["models", *sys.argv[1:]]))
