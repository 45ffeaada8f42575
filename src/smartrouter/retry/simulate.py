"""Retry policies valued on order conversion: by simulation with the world's truth, and off-policy on logs.

The population is the test window's orders (their first attempts, as logged: the outcome of the
first attempt is what really happened). At every declined first attempt a retry policy decides
stop, or (delay bucket, processor); the value of a policy is

    conversion = mean over orders of [ first approved + first declined x retried x P_true(approved | the retry) ]
    attempts per order = 1 + share of orders retried

with P_true from the world's oracle for exactly that retry (previous code and processor, attempt
number, delay, the time it is made, outages then). Policies compared on the same orders:

- ``current``: the merchant's logged behaviour: the order's logged second attempt (its processor,
  its delay), if it has one;
- ``advice``: `RetryAdvisor.advise` with the run's retry model (what the service answers);
- ``oracle``: the same rules, buckets and costs, choosing with the true probabilities, held to the
  merchant's number of retries on these orders (the best retry policy with no more attempts per
  order); ``oracle_unbudgeted`` retries every decline whose true value beats stopping.

One retry decision per order: what a second retry would face depends on the code of a declined
retry that was never made, which the logs cannot tell (the live loop measures every retry with the
truth instead). The merchant's logged third attempts are left out for every policy alike.
Violations of the network rules and retries of hard declines are counted for each policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from smartrouter import catalog
from smartrouter.policies import candidate_mask
from smartrouter.retry.advice import RetryAdvisor, is_processor_error, retry_frame
from smartrouter.retry.rules import BUCKETS, CardRetryCounter, RetryRules

POLICIES = ("current", "advice", "oracle", "oracle_unbudgeted")
PROCS = np.array(catalog.PROCESSORS, dtype=object)
POLICY_FILE = "policy.json"  # in the retry model's folder: its operating point (extra_cost)


@dataclass
class RetrySimulation:
    """Per-policy values and per-order decisions of one simulation."""

    summary: pd.DataFrame  # one row per policy
    decisions: pd.DataFrame  # one row per declined first attempt and policy
    notes: list[str] = field(default_factory=list)

    def value(self, policy: str, column: str = "conversion") -> float:
        return float(self.summary.set_index("policy").loc[policy, column])

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary.to_dict(orient="records"), "notes": list(self.notes), "must_show": must_show(self)}


def _card_key(frame: pd.DataFrame) -> np.ndarray:
    """The card a retry counts against: the world has no card token, so user + BIN stands for it."""
    user = frame["USER_ID"].astype(str) if "USER_ID" in frame.columns else frame["ORDER_ID"].astype(str)
    return (user + ":" + frame["CARD_BIN"].astype(str)).to_numpy(dtype=object)


@dataclass
class Declined:
    """The declined first attempts of a window, with what every policy needs to decide on them."""

    n_orders: int
    first_approved: float  # orders approved at the first attempt
    order_ids: np.ndarray
    codes: np.ndarray
    brands: np.ndarray
    prev: np.ndarray
    cards: np.ndarray
    at: np.ndarray  # epoch seconds of the decline
    eligible: list[list[str]]
    model_p: dict[str, np.ndarray]  # bucket -> (m, P) retry model P(approved)
    true_p: dict[str, np.ndarray] | None  # bucket -> (m, P) oracle P(approved)
    cur_retry: np.ndarray  # the merchant retried (logged second attempt)
    cur_delay: np.ndarray
    cur_proc: np.ndarray
    cur_p: np.ndarray  # true P(approved) of the logged retry (0 without an oracle)
    notes: list[str]

    def __len__(self) -> int:
        return len(self.codes)


def declined_first_attempts(frame: pd.DataFrame, raw: pd.DataFrame, retry_model: Any, rules: RetryRules,
                            oracle: Any = None) -> Declined:
    """``frame``: feature-table rows of a window (every attempt); ``raw``: the same rows with the attempt
    view's columns (`evaluation.with_attempt_columns`: ERROR_CODE, USER_ID, raw types for the oracle)."""
    raw = raw.set_index("ATTEMPT_ID")
    feat = frame.set_index("ATTEMPT_ID")
    n_att = pd.to_numeric(feat["NUM_ATTEMPTS_ORDER"], errors="coerce").fillna(1).astype(int)
    orders = feat[n_att == 1]
    approved1 = orders["APPROVED"].to_numpy(float)
    declined = orders.index[approved1 < 0.5]
    d_feat = feat.loc[declined].copy()
    d_raw = raw.loc[declined].copy()
    for col in ("ERROR_CODE", "USER_ID"):
        d_feat[col] = d_raw[col].to_numpy()
    codes = d_raw["ERROR_CODE"].astype(str).to_numpy()
    known = np.isin(codes, list(catalog.ERROR_CODES))
    notes = []
    if not known.all():
        notes.append(f"{int((~known).sum())} declined first attempts without a catalog code left out (never retried)")
    d_feat, d_raw, codes = d_feat[known].reset_index(), d_raw[known].reset_index(), codes[known]
    m = len(d_feat)
    order_ids = d_feat["ORDER_ID"].to_numpy()
    prev = d_feat["PROCESSOR"].astype(str).to_numpy()
    mask = candidate_mask(d_feat)
    model_p, true_p = {}, ({} if oracle is not None else None)
    for b in BUCKETS:
        delay = rules.delays[b]
        f = retry_frame(d_feat, delay)
        model_p[b] = np.asarray(retry_model.score_matrix(retry_model.encoder.transform(f)), dtype=float)
        if oracle is not None:
            r = retry_frame(d_raw.assign(PROCESSOR=prev, NUM_ATTEMPTS_ORDER=1), delay)
            true_p[b] = np.asarray(oracle.probability_matrix(r), dtype=float)
    # the merchant's logged retry: the order's second attempt
    second = feat[(n_att == 2) & feat["ORDER_ID"].isin(order_ids)].reset_index().drop_duplicates("ORDER_ID").set_index("ORDER_ID")
    cur_retry = np.isin(order_ids, second.index)
    cur_p, cur_delay, cur_proc = np.zeros(m), np.full(m, np.nan), np.full(m, None, dtype=object)
    if cur_retry.any():
        rows2 = second.loc[order_ids[cur_retry]]
        cur_delay[cur_retry] = pd.to_numeric(rows2["SEC_SINCE_PREVIOUS_ATTEMPT"], errors="coerce").to_numpy()
        cur_proc[cur_retry] = rows2["PROCESSOR"].astype(str).to_numpy()
        if oracle is not None:
            raw2 = raw.loc[rows2["ATTEMPT_ID"].to_numpy()].reset_index()
            cur_p[cur_retry] = oracle.approval_probability(raw2, raw2["PROCESSOR"].astype(str).to_numpy())
    return Declined(
        n_orders=len(orders), first_approved=float(approved1.sum()), order_ids=order_ids, codes=codes,
        brands=d_feat["CARD_BRAND"].astype(str).to_numpy(), prev=prev, cards=_card_key(d_raw),
        at=(pd.to_datetime(d_feat["CREATED_AT"]).astype("int64") / 1e9).to_numpy(),
        eligible=[[str(p) for p in PROCS[row]] for row in mask], model_p=model_p, true_p=true_p,
        cur_retry=cur_retry, cur_delay=cur_delay, cur_proc=cur_proc, cur_p=cur_p, notes=notes,
    )


def _probs(matrices: dict[str, np.ndarray], i: int):
    return lambda b: dict(zip(catalog.PROCESSORS, matrices[b][i]))


def _run_policy(d: Declined, advisor: RetryAdvisor, matrices: dict[str, np.ndarray], darktime: bool) -> list[Any]:
    """The advice for every declined attempt, in time order, counting each card's retries as it goes."""
    counter = CardRetryCounter()
    out: list[Any] = [None] * len(d)
    for i in np.argsort(d.at, kind="stable"):
        c24, c30 = counter.counts(d.cards[i], d.at[i])
        verdict = advisor.verdict(d.brands[i], d.codes[i], 1, c24, c30)
        adv = advisor.advise(verdict, d.codes[i], d.prev[i], d.eligible[i], _probs(matrices, i), darktime=darktime)
        out[i] = (adv, c24, c30)
        if adv.retry:
            counter.record(d.cards[i], d.at[i] + adv.delay_seconds)
    return out


def _best_value(adv: Any) -> float | None:
    vals = [v for k, v in adv.ev.items() if k != "stop" and v is not None]
    return max(vals) if vals else None


def calibrate(frame: pd.DataFrame, raw: pd.DataFrame, retry_model: Any, rules: RetryRules) -> dict[str, Any]:
    """The retry model's operating point on a (validation) window: the extra price of an issuer-decline
    retry that keeps the advice's retries (darktime ones, which do not pay it, included) within
    ``rules.retry_budget`` x the merchant's logged retries there."""
    d = declined_first_attempts(frame, raw, retry_model, rules)
    base = _run_policy(d, RetryAdvisor(rules), d.model_p, darktime=True)
    dark = np.array([is_processor_error(c) for c in d.codes], dtype=bool)
    retried = np.array([a.retry for a, _, _ in base], dtype=bool)
    values = np.sort(np.array([_best_value(a) for (a, _, _), x in zip(base, dark) if a.retry and not x], dtype=float))[::-1]
    logged = int(d.cur_retry.sum())
    target = int(np.floor(rules.retry_budget * logged))
    issuer_target = max(target - int((retried & dark).sum()), 0)
    extra = float(values[issuer_target]) if len(values) > issuer_target else 0.0
    return {"extra_cost": max(extra, 0.0), "declined_first": len(d), "logged_retries": logged,
            "retry_budget": rules.retry_budget, "target_retries": target, "darktime_retries": int((retried & dark).sum()),
            "unbudgeted_retries": int(retried.sum()), "rules": rules.path}


def simulate(test: pd.DataFrame, raw: pd.DataFrame, retry_model: Any, oracle: Any, rules: RetryRules,
             extra_cost: float = 0.0) -> RetrySimulation:
    """Value the retry policies on the test window (see the module docstring); ``extra_cost``: the
    retry model's operating point (`calibrate`, shipped as its policy.json)."""
    d = declined_first_attempts(test, raw, retry_model, rules, oracle)
    assert d.true_p is not None
    runs = {
        "advice": _run_policy(d, RetryAdvisor(rules, extra_cost), d.model_p, darktime=True),
        "oracle_unbudgeted": _run_policy(d, RetryAdvisor(rules), d.true_p, darktime=False),
    }
    # the oracle held to the merchant's retries: its most valuable ones (dropping retries only lowers
    # every card's counts, so the kept ones stay within the limits)
    budget = int(d.cur_retry.sum())
    vals = np.array([(_best_value(a) if a.retry else -np.inf) for a, _, _ in runs["oracle_unbudgeted"]])
    keep = np.zeros(len(d), dtype=bool)
    keep[np.argsort(-vals, kind="stable")[:budget]] = True
    keep &= np.isfinite(vals)
    recs = []
    for i in range(len(d)):
        code, hs = d.codes[i], catalog.ERROR_CODES[d.codes[i]].hard_soft
        for pol in POLICIES:
            if pol == "current":
                go, proc, delay, bucket, p = bool(d.cur_retry[i]), d.cur_proc[i], d.cur_delay[i], None, d.cur_p[i]
                c24 = c30 = 0  # the merchant's card counts are not in the logs: its violations are code rules only
            else:
                adv, c24, c30 = runs["oracle_unbudgeted" if pol == "oracle" else pol][i]
                go = adv.retry and (pol != "oracle" or bool(keep[i]))
                proc, delay, bucket = adv.processor, adv.delay_seconds, adv.delay
                p = float(d.true_p[bucket][i, catalog.PROCESSOR_INDEX[proc]]) if go else 0.0
            violation = rules.violation(d.brands[i], code, 1, c24, c30, float(np.nan_to_num(delay))) if go else None
            recs.append((d.order_ids[i], pol, code, hs, d.prev[i], go, bucket if go else None, delay if go else np.nan,
                         proc if go else None, p if go else 0.0, violation))
    dec = pd.DataFrame(recs, columns=["ORDER_ID", "policy", "code", "hard_soft", "previous_processor", "retry", "bucket",
                                      "delay_seconds", "processor", "p_true", "violation"])
    rows = []
    for pol in POLICIES:
        x = dec[dec["policy"] == pol]
        retries = int(x["retry"].sum())
        rows.append({
            "policy": pol, "orders": d.n_orders, "declined_first": len(d),
            "conversion": (d.first_approved + float(x["p_true"].sum())) / d.n_orders,
            "attempts_per_order": 1.0 + retries / d.n_orders,
            "retries": retries,
            "recovered": float(x["p_true"].sum()),
            "recovery_per_retry": float(x["p_true"].sum()) / max(retries, 1),
            "hard_decline_retries": int((x["retry"] & (x["hard_soft"] == "HARD")).sum()),
            "never_retry_retries": int(x["violation"].astype(str).str.contains("never-retry|merchant advice").sum()),
            "rule_violations": int(x["violation"].notna().sum()),
        })
    notes = d.notes + [f"advice priced with extra attempt cost {extra_cost:.3f} (the model's operating point)"]
    return RetrySimulation(pd.DataFrame(rows), dec, notes)


def must_show(sim: RetrySimulation) -> dict[str, Any]:
    """The issue's bar: advice >= current + half the gap to the oracle, no more attempts, no violations."""
    cur, adv, ora = (sim.value(p) for p in ("current", "advice", "oracle"))
    att = {p: sim.value(p, "attempts_per_order") for p in ("current", "advice")}
    violations = int(sim.value("advice", "rule_violations"))
    return {
        "current": cur, "advice": adv, "oracle": ora, "bar": cur + 0.5 * (ora - cur),
        "share_of_gap": (adv - cur) / (ora - cur) if ora > cur else None,
        "attempts_current": att["current"], "attempts_advice": att["advice"],
        "advice_violations": violations, "advice_never_retry": int(sim.value("advice", "never_retry_retries")),
        "passed": bool(adv >= cur + 0.5 * (ora - cur) and att["advice"] <= att["current"] and violations == 0),
    }


def off_policy(frame: pd.DataFrame, retry_model: Any, oracle: Any = None, raw: pd.DataFrame | None = None, *,
               n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Off-policy estimates (IPS, SNIPS, DM, DR with `evaluation.estimate_policies`) of where the advice
    sends a retry, on the logged retries of the randomized experiment arm (their logged propensities;
    the logged delay kept: the logs never randomized delays): the retry model's best processor vs the
    logged choice. With the oracle (world only) the table holds the truth beside each estimate.
    Retries the service decided (live days) are left out: the advice named their processor, so they
    say nothing about the others. Empty when no randomized retry is left."""
    from smartrouter.evaluation import estimate_policies, logged_data, served_rows
    from smartrouter.policies import greedy_policy, one_hot, processor_index

    n_att = pd.to_numeric(frame["NUM_ATTEMPTS_ORDER"], errors="coerce").fillna(1)
    rows = frame[(n_att > 1).to_numpy() & ~served_rows(frame)].reset_index(drop=True)
    if rows.empty or "EXPERIMENT_ARM" not in rows or not rows["EXPERIMENT_ARM"].astype(str).str.upper().eq("EXPERIMENT").any():
        return pd.DataFrame()
    mask = candidate_mask(rows)
    q = np.asarray(retry_model.score_matrix(retry_model.encoder.transform(rows)), dtype=float)
    logged = logged_data(rows, mode="experiment", mask=mask)
    policies = {"retry_model": greedy_policy(q, mask), "logged": one_hot(processor_index(rows["PROCESSOR"]))}
    truth = None
    if oracle is not None and raw is not None:
        r = raw.set_index("ATTEMPT_ID").loc[rows["ATTEMPT_ID"]].reset_index()
        truth = np.asarray(oracle.probability_matrix(r, resolved_only=True), dtype=float)
    values = estimate_policies(logged, policies, q, n_boot=n_boot, seed=seed, truth_matrix=truth)
    return values.table


EVALUATION_FILE = "retry_evaluation.json"  # in the run folder
MODEL_EVALUATION_FILE = "evaluation.json"  # beside each shipped copy of the retry model (the gate reads it)


def evaluate_run(run_dir: Any, table: pd.DataFrame, oracle: Any = None, settings: Any = None,
                 rules: RetryRules | None = None, n_boot: int = 200, seed: int = 0) -> dict[str, Any]:
    """The evaluate stage's retry section: simulation with the truth (world only) and off-policy
    estimates on the test window, written to ``<run>/retry_evaluation.json`` and beside every
    shipped copy of the retry model (``models/<family>/retry/evaluation.json``, which the gate reads).
    ``{"model": None}`` when the run trained no retry model."""
    import json
    from pathlib import Path

    from smartrouter import atomic
    from smartrouter.evaluation import with_attempt_columns
    from smartrouter.models.serving import load_serving_model
    from smartrouter.retry.model import RETRY_DIR
    from smartrouter.retry.rules import load_rules

    run_dir = Path(run_dir)
    folder = run_dir / RETRY_DIR
    if not folder.is_dir():
        out: dict[str, Any] = {"model": None, "note": "no retry model in this run: the service gives rules-only retry advice"}
        atomic.write_json(run_dir / EVALUATION_FILE, out, indent=1)
        return out
    rules = rules or load_rules()
    model = load_serving_model(folder)
    extra = float(json.loads((folder / POLICY_FILE).read_text())["extra_cost"])
    test = table[table["SPLIT"] == "test"]
    raw = with_attempt_columns(test, settings) if oracle is not None else None
    sim = simulate(test, raw, model, oracle, rules, extra).to_json() if oracle is not None else None
    ope = off_policy(test, model, oracle, raw, n_boot=n_boot, seed=seed)
    out = {"model": str(folder), "extra_cost": extra, "rules": rules.path, "simulation": sim,
           "off_policy": ope.to_dict(orient="records"),
           "note": "simulated with the world's truth" if sim is not None else "no truth (real warehouse): off-policy estimates only"}
    from smartrouter.models.train import _jsonable

    out = _jsonable(out)
    atomic.write_json(run_dir / EVALUATION_FILE, out, indent=1)
    for copy in sorted((run_dir / "models").glob(f"*/{RETRY_DIR}")):
        atomic.write_json(copy / MODEL_EVALUATION_FILE, out, indent=1)
    return out


def live_recovery(settings: Any = None) -> dict[str, Any]:
    """On the live loop's days: the orders whose first attempt hit an outage (a processor error on a
    processor in an incident), how much an immediate retry elsewhere recovered (the truth's P(approved)
    of the retry made: expected, so no coin-flip noise) against the oracle-best immediate retry
    (`world.live` logs its truth for every declined attempt), and the realized approvals. Judged on
    the orders whose card may go elsewhere (an Amex card may only go to AMEX; those are counted apart)."""
    from smartrouter.errors import ConfigError
    from smartrouter.world.live import RETRY_DIR as LIVE_RETRY_DIR, TRUTH_DIR, live_dir

    folder = live_dir(settings)
    logs = sorted((folder / LIVE_RETRY_DIR).glob("*.parquet"))
    if not logs:
        raise ConfigError(f"no retry decisions under {folder / LIVE_RETRY_DIR}; run live days with a service that "
                          "gives retry advice (smartrouter live / world advance)")
    dec = pd.concat([pd.read_parquet(p) for p in logs], ignore_index=True)
    truth = pd.concat([pd.read_parquet(folder / TRUTH_DIR / p.name) for p in logs if (folder / TRUTH_DIR / p.name).is_file()],
                      ignore_index=True)
    perr = [c for c, e in catalog.ERROR_CODES.items() if e.category == catalog.PROCESSOR_ERROR_CATEGORY]
    hit = dec[(dec["ATTEMPT_NUMBER"] == 1) & dec["IN_OUTAGE"] & dec["ERROR_CODE"].isin(perr)].drop_duplicates("ORDER_ID")
    second = truth[truth["ATTEMPT_NUMBER"] == 2].drop_duplicates("ORDER_ID").set_index("ORDER_ID")
    card = truth[truth["ATTEMPT_NUMBER"] == 1].drop_duplicates("ORDER_ID").set_index("ORDER_ID")
    seg = card.loc[hit["ORDER_ID"], ["CARD_BRAND", "CURRENCY"]]
    can_leave = np.array([len(catalog.eligible_processors(b, c)) > 1 for b, c in zip(seg["CARD_BRAND"], seg["CURRENCY"])], dtype=bool)
    stuck = hit[~can_leave]
    h = hit[can_leave].set_index("ORDER_ID")
    made = h.index.isin(second.index) & h["RETRY"].to_numpy()
    elsewhere = made & (h["DELAY"].to_numpy() == "immediate") & (h["ADVISED_PROCESSOR"].to_numpy() != h["PROCESSOR"].to_numpy())
    p_retry = np.zeros(len(h))
    approved = np.zeros(len(h))
    p_retry[elsewhere] = second.loc[h.index[elsewhere], "P_CHOSEN"].to_numpy(float)
    approved[elsewhere] = second.loc[h.index[elsewhere], "APPROVED"].to_numpy(float)
    best = float(h["P_BEST_IMMEDIATE"].mean()) if len(h) else float("nan")
    rate = float(p_retry.mean()) if len(h) else float("nan")
    return {
        "days": [p.stem for p in logs], "orders_hit": int(len(h)),
        "retried_immediately_elsewhere": int(elsewhere.sum()),
        "recovered_expected": rate, "recovered_realized": float(approved.mean()) if len(h) else float("nan"),
        "oracle_best_immediate": best, "share_of_oracle": rate / best if best > 0 else None,
        "by_processor": h["PROCESSOR"].value_counts().to_dict(),
        "cannot_leave": {"orders": int(len(stuck)), "by_processor": stuck["PROCESSOR"].value_counts().to_dict(),
                         "retried": int(stuck["RETRY"].sum())},
    }
