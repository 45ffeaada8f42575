"""`smartrouter retry evaluate|live`: the retry advice measured with the world's truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from smartrouter.cli.world import one_line_errors


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "retry",
        help="retry advice measured with the truth: a run's test window, or the live loop's outage recovery",
        description="evaluate: simulate the merchant's current retries, the retry advice and the oracle-best retry "
                    "policy on a run's test window with the world's truth (what 04_evaluate's retry section does; "
                    "rewrites the run's retry_evaluation.json). live: orders whose first attempt hit an outage on the "
                    "live days, recovered by an immediate retry elsewhere vs the oracle-best immediate retry. "
                    "Exit 2 on bad input.",
    )
    sub = p.add_subparsers(dest="retry_command", metavar="ACTION")
    sub.required = True
    ev = sub.add_parser("evaluate", help="simulate the retry policies on a run's test window with the truth")
    ev.add_argument("--run", type=Path, default=None, help="run folder (default: the newest run with a retry model)")
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    one_line_errors(ev)
    ev.set_defaults(func=_evaluate)
    lv = sub.add_parser("live", help="outage recovery by immediate retries elsewhere on the live days")
    lv.add_argument("--json", action="store_true", help="print the result as JSON")
    one_line_errors(lv)
    lv.set_defaults(func=_live)


def _evaluate(args: argparse.Namespace) -> int:
    from smartrouter import evaluation, features
    from smartrouter.config import load_settings
    from smartrouter.errors import ConfigError
    from smartrouter.retry.model import RETRY_DIR
    from smartrouter.retry.simulate import evaluate_run

    settings = load_settings()
    run = args.run
    if run is None:
        found = sorted(settings.runs_dir.glob(f"*/{RETRY_DIR}/model.json")) if settings.runs_dir.is_dir() else []
        if not found:
            raise ConfigError(f"no run with a retry model under {settings.runs_dir}; run the daily pipeline (`smartrouter run`) first")
        run = found[-1].parent.parent
    if not (run / "features.parquet").exists():
        raise ConfigError(f"{run} has no features.parquet; pass a run folder of a finished daily run (--run runs/<run_id>)")
    oracle, why = evaluation.load_oracle(settings)
    if oracle is None:
        raise ConfigError(f"no truth for this warehouse ({why}); the simulation needs the local world")
    out = evaluate_run(run, features.read_table(run / "features.parquet", filter=features.split_is("test")), oracle, settings)
    if args.json:
        print(json.dumps(out, indent=1, default=str))
        return 0
    sim = out.get("simulation")
    if not sim:
        print(out.get("note"))
        return 0
    print(f"run {run.name}: {sim['summary'][0]['orders']:,} orders in the test window, "
          f"{sim['summary'][0]['declined_first']:,} declined at the first attempt")
    print(f"{'policy':<18} {'conversion':>10} {'attempts/order':>14} {'retries':>8} {'hard-decline retries':>20} {'violations':>10}")
    for r in sim["summary"]:
        print(f"{r['policy']:<18} {100 * r['conversion']:>9.2f}% {r['attempts_per_order']:>14.3f} {r['retries']:>8,} "
              f"{r['hard_decline_retries']:>20,} {r['rule_violations']:>10,}")
    ms = sim["must_show"]
    print(f"advice: {100 * (ms['share_of_gap'] or 0):.0f} % of the gap from current to the oracle-best "
          f"(bar 50 %), attempts/order {ms['attempts_advice']:.3f} vs {ms['attempts_current']:.3f}, "
          f"{ms['advice_violations']} violations: {'PASS' if ms['passed'] else 'FAIL'}")
    return 0


def _live(args: argparse.Namespace) -> int:
    from smartrouter.config import load_settings
    from smartrouter.retry.simulate import live_recovery

    out = live_recovery(load_settings())
    if args.json:
        print(json.dumps(out, indent=1, default=str))
        return 0
    share = out["share_of_oracle"]
    stuck = out["cannot_leave"]
    print(f"live days {', '.join(out['days'])}: {out['orders_hit']:,} orders whose first attempt hit an outage and whose card "
          f"may go elsewhere ({', '.join(f'{k} {v}' for k, v in out['by_processor'].items())}); "
          f"{out['retried_immediately_elsewhere']:,} retried immediately elsewhere; {stuck['orders']:,} more could not leave "
          f"({', '.join(f'{k} {v}' for k, v in stuck['by_processor'].items()) or 'none'}; {stuck['retried']} retried)")
    print(f"recovered {100 * out['recovered_expected']:.1f} % (truth; realized {100 * out['recovered_realized']:.1f} %) vs "
          f"the oracle-best immediate retry {100 * out['oracle_best_immediate']:.1f} %: "
          f"{100 * share:.0f} % of the oracle-best (bar 80 %)" if share is not None else "no outage orders")
    return 0
