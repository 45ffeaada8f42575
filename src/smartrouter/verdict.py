"""The verdict of one run, as a payments manager reads it: what was decided, against what is serving,
in approved orders and money, and why.

``build(manifest, settings)`` reads only what the run and the registry already hold -- the manifest,
``evaluation.json`` (04_evaluate), ``gate.json`` (05_gate), ``run_facts.json`` (traffic of the test
window, ``smartrouter.changes.snapshot``), ``serving_on_window.json`` (the serving champion scored
on this run's test window, ``serving_on_window`` below, called by 05_gate) and the serving
champion's model card (``Registry.show``, what ``smartrouter models show`` prints) -- and returns
one plain structure; ``reports.render_run_index`` draws it at the top of the run page. Nothing here
re-estimates anything: every number is one of those files' numbers, converted (share -> pp,
per attempt -> per day, MXN -> USD) with the arithmetic written next to it.

Money: the lift in approved orders per day is ``lift x first attempts per day``; approved volume per
day is that times the mean amount (in MXN) of the test window's first attempts, converted to USD at
the fee schedule's dated rate (``smartrouter.money``). Both count first attempts only; the share of
declined first attempts a retry approved anyway (``run_facts.json``) says how much of it the
merchant's retries would have recovered, and the order-level figure is shown beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from smartrouter.config import Settings, load_settings
from smartrouter.notebook_tools import read_json

EVALUATION_FILE = "evaluation.json"
GATE_FILE = "gate.json"
SERVING_ON_WINDOW_FILE = "serving_on_window.json"
STATIC_RULES = "static_rules"  # evaluation.STATIC_RULES (not imported: this module must stay cheap to import)
# What each stage does, in words, for "the run failed while ...".
STAGE_WORDS = {"01_extract_eda": "reading and checking the payment data", "02_features": "building the features",
               "03_train": "training the models", "04_evaluate": "evaluating the models",
               "05_gate": "judging the model against the gates", "06_readout": "reading out the A/B test"}
# One plain sentence per gate: (passed, failed). {reason} is the gate's own line, kept as the detail.
GATE_WORDS: dict[str, tuple[str, str]] = {
    "min_data": ("There was enough payment history to train and judge the model.",
                 "There was not enough payment history to trust the model."),
    "auc": ("The model tells approvals from declines well enough on every processor.",
            "On at least one processor the model cannot tell approvals from declines well enough."),
    "regression": ("It is at least as good as the model serving now, on the same payments.",
                   "It is not good enough compared with the model serving now, on the same payments."),
    "stability": ("Its gain over the static rules holds across the whole test period.",
                  "Its gain over the static rules does not hold across the test period (or is too uncertain)."),
    "completeness": ("Its serving files are complete and load fast enough for the service.",
                     "Its serving files are incomplete or load too slowly for the service."),
    "retry": ("Its retry advice does not convert fewer orders than today's retries.",
              "Its retry advice would convert fewer orders than today's retries."),
    "slices": ("No large group of payments (by brand, currency, card type, country, amount, customer) does worse "
               "than under the static rules.",
               "A large group of payments would do worse than under the static rules."),
    "simpler_is_not_better": ("It beats the simpler alternatives (a success-rate router, a logistic model).",
                              "A simpler alternative does as well, so this model is not worth its complexity."),
    "messages": ("It never recommends an authorization message a payment is not allowed to send.",
                 "It would recommend an authorization message some payment is not allowed to send."),
    "net_revenue": ("Under the net-revenue objective it earns more after fees without giving up more approval "
                    "than allowed.", "Under the net-revenue objective it does not earn enough more after fees."),
}
NO_CHAMPION_SENTENCE = "Nothing was serving yet, so it was not compared with a serving model."
USD_ASSUMED = 17.5  # MXN per USD, used only when neither the evaluation nor fees.toml gives a rate (stated)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def _interval(row: Mapping[str, Any] | None, key: str = "estimate") -> dict[str, float] | None:
    if not row or not _finite(row.get(key)):
        return None
    out = {"value": float(row[key]), "ci_low": row.get("ci_low"), "ci_high": row.get("ci_high")}
    if _finite(row.get("true_value", row.get("true"))):
        out["true"] = float(row.get("true_value", row.get("true")))
    return out


def _policy_row(evaluation: Mapping[str, Any], policy: str, estimator: str) -> dict[str, Any] | None:
    for r in (evaluation.get("policy_value") or {}).get("table") or []:
        if r.get("policy") == policy and r.get("estimator") == estimator:
            return r
    return None


def _lift_row(evaluation: Mapping[str, Any], policy: str) -> dict[str, Any] | None:
    for r in (evaluation.get("policy_value") or {}).get("lift_vs_rules") or []:
        if r.get("policy") == policy:
            return r
    return None


def card_policy_rows(shown: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The policy-value table (first attempts of its run's test window) of a ``Registry.show`` answer: the
    model card's, else the version's metrics.json (one reading for ``smartrouter models show`` and the verdict)."""
    card, metrics = shown.get("card") or {}, shown.get("metrics") or {}
    return list(((card.get("policy_value") or metrics.get("policy_value") or {}).get("summary")) or [])


def champion_card(version: str, settings: Settings | None = None) -> dict[str, Any] | None:
    """The serving champion's numbers from its model card (``Registry.show``, as ``smartrouter models show``):
    version, family, run, its policy value with interval and its lift over the static rules, both on ITS
    OWN test window. None when the registry cannot show it."""
    from smartrouter.errors import SmartrouterError
    from smartrouter.registry import Registry

    try:
        data = Registry(settings or load_settings()).show(version)
    except (SmartrouterError, OSError):
        return None
    card = data.get("card") or {}
    model = card.get("model") or data.get("version") or {}
    metrics = data.get("metrics") or {}
    head = (card.get("metrics") or {}).get("headline") or metrics.get("headline") or {}
    policy = f"model:{model.get('family')}"
    summary = card_policy_rows(data)
    row = next((r for r in summary if r.get("policy") == policy), None)
    rules = next((r for r in summary if r.get("policy") == STATIC_RULES), None)
    return {"version": model.get("version", version), "family": model.get("family"), "run_id": model.get("run_id"),
            "status": model.get("status"), "estimator": head.get("estimator"),
            "value": _interval(row) or ({"value": head["policy_value"], "ci_low": None, "ci_high": None}
                                        if _finite(head.get("policy_value")) else None),
            "rules_value": _interval(rules), "lift_vs_rules": head.get("lift_vs_rules"),
            "objective": (card.get("objective") or {}).get("name") if isinstance(card.get("objective"), Mapping) else None}


def serving_now(settings: Settings | None = None) -> dict[str, Any]:
    """What the service serves now: the promoted version and an active canary, from the registry."""
    from smartrouter.errors import SmartrouterError
    from smartrouter.registry import Registry

    reg = Registry(settings or load_settings())
    try:
        ptr = reg.pointer() or {}
        rollout = reg.rollout() or {}
    except (SmartrouterError, OSError) as exc:
        return {"version": None, "error": str(exc)}
    canary = rollout.get("candidate") if rollout.get("status") == "active" else None
    stages, at = rollout.get("stages") or [], rollout.get("stage_index")
    stage = stages[at].get("name") if canary and isinstance(at, int) and 0 <= at < len(stages) else None
    return {"version": ptr.get("version"), "canary": canary, "canary_stage": stage}


def serving_on_window(ev: Any, champion: Any, level: float = 0.95, estimator: str = "DR") -> dict[str, Any]:
    """The serving champion's policy value on THIS run's test window (same rows, same estimator and
    bootstrap as evaluation.json), its paired lift over the static rules, and where it sends traffic.

    Called by 05_gate with the champion it scored (``gates.Champion``); written to serving_on_window.json
    so the verdict can show the candidate, the serving model and the rules side by side on one window.
    """
    import numpy as np

    from smartrouter import evaluation as E
    from smartrouter.notebook_tools import plain
    from smartrouter.policies import greedy_policy

    if champion is None or getattr(champion, "probs", None) is None:
        why = "no model was serving" if champion is None else f"{champion.version} could not be loaded ({champion.load_error})"
        return {"available": False, "note": why, "version": getattr(champion, "version", None)}
    cp = np.asarray(champion.probs, dtype=np.float64)[ev.first_index]
    pi = greedy_policy(cp, ev.first_mask)
    n_boot = len(next(iter(ev.values.replicates.values()))) if ev.values.replicates else 300
    values = E.estimate_policies(ev.logged, {"serving": pi}, {"serving": cp}, n_boot=n_boot, seed=0,
                                 truth_matrix=ev.truth_matrix, level=level)
    row = values.table[values.table["estimator"] == estimator].iloc[0].to_dict()
    lift = E.paired_difference(values.terms[("serving", estimator)], ev.values.terms[(E.STATIC_RULES, estimator)], level)
    share = pi[ev.logged.rows].mean(axis=0)
    from smartrouter import catalog

    return plain({"available": True, "version": champion.version, "family": champion.family, "estimator": estimator,
                  "level": level, "value": {k: row.get(k) for k in ("estimate", "ci_low", "ci_high", "true_value")},
                  "lift_vs_rules": lift, "traffic_mix": dict(zip(catalog.PROCESSORS, share))})


def _fx_usd(evaluation: Mapping[str, Any]) -> tuple[float, str]:
    """MXN per USD and where the rate came from."""
    sched = ((evaluation.get("money") or {}).get("schedule") or {})
    rates = (sched.get("fx") or {}).get("rates") or {}
    if _finite(rates.get("USD")):
        return float(rates["USD"]), f"fees.toml rate of {(sched.get('fx') or {}).get('as_of', 'its date')}"
    try:
        from smartrouter import money

        return float(money.default_schedule().fx["USD"]), "fees.toml rate"
    except Exception:  # no readable schedule: say the number is an assumption
        return USD_ASSUMED, f"ASSUMED {USD_ASSUMED:g} MXN per USD (no fee schedule readable)"


def _gate_sentences(gate: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for g in gate.get("gates") or []:
        name, passed = g.get("gate"), bool(g.get("passed"))
        words = GATE_WORDS.get(name)
        text = (words[0] if passed else words[1]) if words else (f"{name}: {'passed' if passed else 'failed'}.")
        if name == "regression" and passed and not (g.get("details") or {}).get("test"):
            text = NO_CHAMPION_SENTENCE if "no promoted champion" in str(g.get("reason")) else text
        out.append({"gate": name, "passed": passed, "sentence": text, "detail": g.get("reason")})
    return out


def _money_figures(lift: Mapping[str, Any] | None, facts: Mapping[str, Any], usd: float) -> dict[str, Any] | None:
    """A lift (share of first attempts, with interval) as approved orders and volume per day."""
    per_day = facts.get("first_attempts_per_day")
    if not lift or not _finite(per_day):
        return None
    amount = facts.get("mean_amount_mxn")
    keys = ("value", "ci_low", "ci_high")
    orders = {k: float(lift[k]) * float(per_day) if _finite(lift.get(k)) else None for k in keys}
    out: dict[str, Any] = {"orders_per_day": orders, "first_attempts_per_day": float(per_day)}
    if _finite(amount):
        out["volume_mxn_per_day"] = {k: (v * float(amount) if v is not None else None) for k, v in orders.items()}
        out["volume_usd_per_day"] = {k: (v / usd if v is not None else None) for k, v in out["volume_mxn_per_day"].items()}
        out["mean_amount_mxn"] = float(amount)
    rec = facts.get("retry_recovered_share")
    if _finite(rec):
        out["retry_recovered_share"] = float(rec)
        out["orders_per_day_net_of_retries"] = {k: (v * (1 - float(rec)) if v is not None else None) for k, v in orders.items()}
    return out


def build(manifest: Mapping[str, Any], settings: Settings | None = None, run_dir: Path | None = None) -> dict[str, Any]:
    """The verdict of one run (see the module docstring); every number names the file it came from."""
    settings = settings or load_settings()
    run_dir = Path(run_dir) if run_dir else settings.runs_dir / str(manifest["run_id"])
    evaluation = read_json(run_dir / EVALUATION_FILE) or {}
    gate = read_json(run_dir / GATE_FILE) or dict(manifest.get("gate") or {})  # the manifest copies its decision
    facts = read_json(run_dir / "run_facts.json") or {}
    on_window = read_json(run_dir / SERVING_ON_WINDOW_FILE) or {}
    now = serving_now(settings)
    status = manifest.get("status")
    # the estimator of evaluation.json's paired lifts over the rules: values and lifts are read with the same one
    est = next((r.get("estimator") for r in (evaluation.get("policy_value") or {}).get("lift_vs_rules") or []
                if r.get("estimator")), None) or "DR"
    v: dict[str, Any] = {"run_id": manifest.get("run_id"), "status": status, "estimator": est,
                         "serving_now": now, "model_version": gate.get("model_version"),
                         "family": gate.get("champion_family"), "decision": gate.get("decision")}
    if status == "failed":
        stage = manifest.get("failed_stage")
        # a failure after the gate (06_readout) leaves the gate's decision standing: say both
        v["decision"] = gate.get("decision") or "failed"
        v["failed"] = {"stage": stage, "doing": STAGE_WORDS.get(stage, stage), "error": manifest.get("error"),
                       "after_gate": bool(gate)}
    elif status == "running":
        v["decision"] = "running"
    elif not gate:
        v["decision"] = "not judged"

    # ---- candidate, serving champion, static rules (evaluation.json, serving_on_window.json, the card)
    fam = gate.get("champion_family")
    policy = f"model:{fam}" if fam else None
    if evaluation and policy:
        v["candidate"] = _interval(_policy_row(evaluation, policy, est))
        v["rules"] = _interval(_policy_row(evaluation, STATIC_RULES, est))
        lr = _lift_row(evaluation, policy)
        v["lift_vs_rules"] = {"value": lr["lift"], "ci_low": lr["ci_low"], "ci_high": lr["ci_high"],
                              **({"true": lr["true_lift"]} if _finite(lr.get("true_lift")) else {})} if lr else None
        n_rows = (evaluation.get("policy_value") or {}).get("n_rows")
        v["n_first_attempts"] = n_rows
    compared = gate.get("champion_compared")
    if compared:
        reg = next((g for g in gate.get("gates") or [] if g.get("gate") == "regression"), {})
        vl = (reg.get("details") or {}).get("value_lift")
        v["lift_vs_serving"] = {"value": vl["lift"], "ci_low": vl["ci_low"], "ci_high": vl["ci_high"]} if vl else None
        if vl and vl.get("estimator", est) != est:  # gates.toml judged with another estimator: say so
            v["estimator_note"] = f"The lift vs the serving model is the gate's {vl['estimator']} estimate; the rest is {est}."
        v["serving"] = {"version": compared, "card": champion_card(compared, settings),
                        "on_window": _interval(on_window.get("value")) if on_window.get("available") else None,
                        "note": on_window.get("note")}
    # ---- orders and money per day at the test window's traffic
    usd, usd_source = _fx_usd(evaluation)
    v["fx"] = {"mxn_per_usd": usd, "source": usd_source}
    v["traffic"] = {k: facts.get(k) for k in ("first_attempts_per_day", "mean_amount_mxn", "days", "retry_recovered_share")}
    v["per_day_vs_rules"] = _money_figures(v.get("lift_vs_rules"), facts, usd)
    v["per_day_vs_serving"] = _money_figures(v.get("lift_vs_serving"), facts, usd)
    mon = evaluation.get("money") or {}
    if mon.get("available") and policy:
        # the row of the ranking the router uses: under the net_revenue objective that is "<policy>@net_revenue"
        from smartrouter.money import NET_REVENUE_SUFFIX

        obj = (mon.get("objective") or {}).get("name")
        served = f"{policy}{NET_REVENUE_SUFFIX}" if obj == "net_revenue" else policy
        row = next((r for r in mon.get("policies") or [] if r.get("policy") == served), None)
        if row:
            v["money"] = {"objective": obj, "policy": served, "approval": row.get("approval"),
                          "examples": bool((mon.get("schedule") or {}).get("values_are_examples")),
                          "fee_per_day_mxn": row.get("fee_per_day_mxn"),
                          "net_revenue_per_day_mxn": row.get("net_revenue_per_day_mxn"),
                          "net_revenue_per_day_usd": row.get("net_revenue_per_day_usd"),
                          "net_revenue_lift_vs_rules_mxn": (row.get("lift_vs_rules") or {}).get("net_revenue_per_day_mxn"),
                          "fee_lift_vs_rules_mxn": (row.get("lift_vs_rules") or {}).get("fee_per_day_mxn")}
    v["gates"] = _gate_sentences(gate)
    v["assumptions"] = _assumptions(v)
    v["sentence"] = sentence(v)
    return v


def _assumptions(v: Mapping[str, Any]) -> list[str]:
    out = [f"Approval is of first attempts in the test window, estimated with {v.get('estimator', 'DR')} from the logs "
           "(95 % intervals in brackets); a retry of a declined first attempt is not counted."]
    t = v.get("traffic") or {}
    if _finite(t.get("first_attempts_per_day")):
        out.append(f"Per day means at the test window's traffic: {t['first_attempts_per_day']:,.0f} first attempts a day"
                   + (f", mean amount MXN {t['mean_amount_mxn']:,.0f}; the extra approvals are assumed to have the mean amount."
                      if _finite(t.get("mean_amount_mxn")) else "."))
    if _finite(t.get("retry_recovered_share")):
        out.append(f"Retries would have recovered some of these orders anyway: {100 * t['retry_recovered_share']:.1f} % of "
                   "declined first attempts in the test window were approved by a later attempt of the same order, so the "
                   "order-level gain is about that much smaller (shown as 'net of retries').")
    if v.get("estimator_note"):
        out.append(v["estimator_note"])
    fx = v.get("fx") or {}
    out.append(f"USD = MXN / {fx.get('mxn_per_usd', USD_ASSUMED):g} ({fx.get('source', 'assumed')}).")
    if (v.get("money") or {}).get("examples"):
        out.append("Fee and net-revenue figures use the EXAMPLE fee schedule (fees.toml), not the merchant's contracts.")
    return out


def _pp(x: Any) -> str:
    return f"{100 * float(x):+.2f} pp" if _finite(x) else "–"


def _pct(x: Any) -> str:
    return f"{100 * float(x):.2f} %" if _finite(x) else "–"


def sentence(v: Mapping[str, Any]) -> str:
    """The decision in one sentence, from the verdict's own numbers."""
    now = (v.get("serving_now") or {}).get("version")
    serving = f"{now} keeps serving" if now else "nothing is serving (the service uses the static rules)"
    f = v.get("failed") or {}
    if v.get("decision") == "failed":
        return f"The run failed while {f.get('doing')} ({f.get('stage')}), so no model was judged; {serving}."
    if v.get("decision") in ("running", "not judged"):
        return f"This run has no gate decision ({v['decision']}); {serving}."
    text = _decision_sentence(v, serving)
    return text + (f" The run then failed while {f.get('doing')} ({f.get('stage')})." if f else "")


def _decision_sentence(v: Mapping[str, Any], serving: str) -> str:
    now = (v.get("serving_now") or {}).get("version")
    ver, fam = v.get("model_version"), v.get("family")
    lr, ls = v.get("lift_vs_rules") or {}, v.get("lift_vs_serving") or {}
    vs_serving = f" and {_pp(ls.get('value'))} vs {(v.get('serving') or {}).get('version')}, the serving model" if ls else ""
    orders = ((v.get("per_day_vs_serving") or v.get("per_day_vs_rules") or {}).get("orders_per_day") or {}).get("value")
    basis = f"than {(v.get('serving') or {}).get('version')}" if v.get("per_day_vs_serving") else "than the static rules"
    per_day = (f", about {abs(orders):,.0f} {'more' if orders >= 0 else 'fewer'} approved orders a day {basis}"
               if orders is not None else "")
    failed = [g["gate"] for g in v.get("gates") or [] if not g["passed"]]
    dec = str(v.get("decision"))
    if dec == "promoted":
        return (f"Promoted: {ver} ({fam}) now serves. It approves {_pct((v.get('candidate') or {}).get('value'))} of first "
                f"attempts: {_pp(lr.get('value'))} vs the static rules{vs_serving}{per_day}.")
    if dec == "canary":
        return (f"Canary: {ver} ({fam}) passed every gate and now takes a share of payments beside "
                f"{(v.get('serving') or {}).get('version') or now}, which still serves the rest: "
                f"{_pp(lr.get('value'))} vs the static rules{vs_serving}{per_day}.")
    if dec == "rejected":
        return (f"Rejected: {ver} ({fam}) failed {len(failed)} of {len(v.get('gates') or [])} gates "
                f"({', '.join(failed)}); {serving}.")
    if dec.startswith("candidate"):  # passed, but registered only (promote = False, or a canary already rolling out)
        why = "a canary is already rolling out" if "canary" in dec else "this run was told not to promote"
        return (f"Passed, not promoted: {ver} ({fam}) passed every gate but waits as a candidate because {why}; "
                f"{_pp(lr.get('value'))} vs the static rules{vs_serving}; {serving}.")
    return f"{ver} ({fam}): {dec}; {serving}."


def index_row(manifest: Mapping[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """The runs index's fixed columns for one run, from its manifest, gate.json and evaluation.json only
    (no registry look-up: the index lists every run): decision, lifts with intervals, data freshness, checks."""
    import datetime as dt

    settings = settings or load_settings()
    run_dir = settings.runs_dir / str(manifest.get("run_id"))
    gate = read_json(run_dir / GATE_FILE) or dict(manifest.get("gate") or {})  # the manifest copies its decision
    evaluation = read_json(run_dir / EVALUATION_FILE) or {}
    eda = (manifest.get("metrics") or {}).get("01_extract_eda") or {}
    row: dict[str, Any] = {"run_id": manifest.get("run_id"), "status": manifest.get("status"), "as_of": manifest.get("as_of"),
                           "decision": gate.get("decision") or ("failed" if manifest.get("status") == "failed" else "–"),
                           "model_version": gate.get("model_version"), "family": gate.get("champion_family"),
                           "compared_with": gate.get("champion_compared"), "failed_stage": manifest.get("failed_stage"),
                           "checks_failed": eda.get("checks_failed"), "checks_passed": eda.get("checks_passed")}
    fam = gate.get("champion_family")
    if evaluation and fam:
        lr = _lift_row(evaluation, f"model:{fam}")
        row["lift_vs_rules"] = {"value": lr["lift"], "ci_low": lr["ci_low"], "ci_high": lr["ci_high"]} if lr else None
        row["candidate"] = _interval(_policy_row(evaluation, f"model:{fam}", "DR"))
        row["rules"] = _interval(_policy_row(evaluation, STATIC_RULES, "DR"))
    reg = next((g for g in gate.get("gates") or [] if g.get("gate") == "regression"), {})
    vl = (reg.get("details") or {}).get("value_lift")
    row["lift_vs_serving"] = {"value": vl["lift"], "ci_low": vl["ci_low"], "ci_high": vl["ci_high"]} if vl else None
    # freshness: the newest payment the run read vs the day it ran as of
    fp = (manifest.get("data") or {}).get("fingerprint") or eda.get("data_fingerprint") or {}
    newest = max((t.get("max_created_at") for t in (fp.get("tables") or []) if isinstance(t, Mapping) and t.get("max_created_at")),
                 default=None)
    row["newest_payment"] = newest
    if newest and manifest.get("as_of"):
        try:
            lag = dt.datetime.fromisoformat(str(manifest["as_of"])) - dt.datetime.fromisoformat(str(newest)[:19])
            row["data_lag_hours"] = lag.total_seconds() / 3600
        except ValueError:
            row["data_lag_hours"] = None
    return row
