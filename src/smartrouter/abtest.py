"""The A/B readout: what the service's live split (static rules vs model) truly did, read every day.

Input is the service's decision log -- local JSONL segments (`routing.decision_log`) or the
warehouse table PAYMENT_ML.SMARTROUTER.DECISION_LOG that `smartrouter decisions ship` fills -- with
each decision joined to its outcome by request id. Output (`readout`):

* per arm and per (arm, model version): payments (attempts with an outcome), orders, approval,
  first-attempt approval, order conversion, decision / processor / payment latency;
* the primary metric's lift (treatment − control) per order, the unit the SHA-256 split
  randomizes, with the fixed-horizon interval AND the always-valid one (`smartrouter.sequential`:
  mSPRT / normal-mixture confidence sequence), the latter computed at every day's end so the
  always-valid p-value is the running minimum over daily looks (reading it daily costs nothing);
* each model version against the control orders of the same hours (a randomized comparison,
  since control runs beside every version), and versions that served the model arm at the same
  time (a canary beside its champion, split by its own SHA-256 bucket) head to head;
* a sample-ratio-mismatch check (chi-square of split keys per arm vs routing.toml's share);
* a per-slice harm check (brand, currency, card type; processor listed but not tested, see
  experiment.toml), Holm-corrected;
* the auto-winner rule of experiment.toml (`decide`), applied only on the always-valid test;
* the lift in approved orders and money per day, and one paragraph in plain words.

Two splits are read the same way (``split``): ``model`` (routing.toml [experiment]: static rules =
control, model = treatment) and ``messages`` (routing.toml [messages] ab_share, inside the model
arm: without message recommendations = control, with = treatment). On world data, ``true_lift``
gives the lift the world truly had on the same orders (the oracle's probabilities of what was sent).

`simulate` runs many A/B experiments with a known true lift through the same `decide` (the
coverage check of bench/bench_abtest.py and tests/test_abtest_coverage.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from smartrouter import atomic, strict_toml
from smartrouter.errors import SmartrouterError
from smartrouter.notebook_tools import plain
from smartrouter.routing.experiment import CONTROL, TREATMENT
from smartrouter.sequential import SequentialTest, chi_square_split, fixed_horizon, holm, sequential_looks

CONFIG_PATH = Path(__file__).resolve().parent / "experiment.toml"
METRICS: tuple[str, ...] = ("first_attempt_approval", "order_conversion")
# slice name -> the payment field it groups by (evaluation.SLICE_COLUMNS spells the first three the same way)
SLICE_FIELDS: dict[str, str] = {"brand": "CARD_BRAND", "currency": "CURRENCY", "card_type": "CARD_TYPE",
                                "processor": "PROCESSOR"}
# slices the arm itself chooses: reported, never tested (they compare different payments)
POST_ASSIGNMENT_SLICES = frozenset({"processor"})
READOUT_FILE = "readout.json"
# The splits a readout can read: name -> (what control is, what treatment is). The message split's
# arms are logged as ``message_arm`` (routing.messages.WITHOUT / WITH) on model-arm decisions only.
SPLITS: dict[str, tuple[str, str]] = {
    "model": ("the static rules", "the model"),
    "messages": ("the model without message recommendations", "the model with message recommendations"),
}
_MESSAGE_ARMS = {"without": CONTROL, "with": TREATMENT}

SCHEMA: dict[str, dict[str, type]] = {
    "readout": {"primary_metric": str, "alpha": float, "mixture_sd": float},
    "srm": {"alpha": float},
    "harm": {"slices": list, "alpha": float, "min_units": int},
    "winner": {"alpha": float, "min_payments_per_arm": int, "min_days": int, "min_relative_lift": float,
               "max_latency_regression": float},
}


class NoDataError(SmartrouterError):
    """There is nothing to read out (no decision log, or no decision with an outcome)."""


def load_config(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """experiment.toml (or ``path``), checked: unknown / missing / mistyped keys and bad values are errors."""
    path = Path(path) if path else CONFIG_PATH
    cfg = strict_toml.load(path, SCHEMA, what="experiment config", home="src/smartrouter/experiment.toml")
    r = cfg["readout"]
    strict_toml.require(r["primary_metric"] in METRICS, path, "[readout] primary_metric",
                        f"= {r['primary_metric']!r} is unknown; use one of {', '.join(METRICS)}")
    for where, value in (("[readout] alpha", r["alpha"]), ("[srm] alpha", cfg["srm"]["alpha"]),
                         ("[harm] alpha", cfg["harm"]["alpha"]), ("[winner] alpha", cfg["winner"]["alpha"])):
        strict_toml.require(0.0 < value < 1.0, path, where, f"= {value} must lie strictly between 0 and 1 (e.g. 0.05)")
    strict_toml.require(r["mixture_sd"] > 0, path, "[readout] mixture_sd", f"= {r['mixture_sd']} must be > 0 (e.g. 0.01 = 1 pp)")
    bad = [s for s in cfg["harm"]["slices"] if s not in SLICE_FIELDS]
    strict_toml.require(not bad, path, "[harm] slices", f"names unknown slices {bad}; use some of {', '.join(SLICE_FIELDS)}")
    w = cfg["winner"]
    for key in ("min_payments_per_arm", "min_days", "min_relative_lift", "max_latency_regression"):
        strict_toml.require(w[key] >= 0, path, f"[winner] {key}", f"= {w[key]} must be >= 0")
    return cfg


# ------------------------------------------------------------------ the decision log as frames
def load_records(source: str | Path | None = None, settings: Any = None) -> tuple[list[dict[str, Any]], str]:
    """(records, where they came from): a folder of JSONL segments, or the warehouse table when ``source`` is None.

    Raises NoDataError naming where it looked when there is no log at all.
    """
    from smartrouter.routing.decision_log import SEGMENT_GLOB, read_records

    if source is not None:
        folder = Path(source)
        if not folder.is_dir() or not any(folder.glob(SEGMENT_GLOB)):
            raise NoDataError(f"no decision log in {folder} (no {SEGMENT_GLOB} segments); point --decisions-dir at the "
                              "service's <state dir>/decisions, or omit it to read the warehouse table")
        return list(read_records(folder)), str(folder)
    from smartrouter import warehouse
    from smartrouter.routing.shipping import TABLE

    try:
        frame = warehouse.query_frame("decision_log_records", settings=settings)
    except SmartrouterError as exc:
        raise NoDataError(f"no decision log in the warehouse ({TABLE}: {exc}); ship it with `smartrouter decisions ship` "
                          "or read the service's segments with --decisions-dir") from None
    except Exception as exc:  # noqa: BLE001 - the table does not exist before the first ship
        raise NoDataError(f"no decision log in the warehouse ({TABLE} unreadable: {type(exc).__name__}); ship it with "
                          "`smartrouter decisions ship` or read the service's segments with --decisions-dir") from None
    return [json.loads(text) for text in frame["RECORD"] if isinstance(text, str)], TABLE


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _attempt_number(value: Any) -> int:
    """The attempt's number within its order (a request without one is a first attempt, as the API defaults)."""
    n = _num(value)
    return 1 if math.isnan(n) else int(n)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def attempts_frame(records: Iterable[Mapping[str, Any]], split_key: str = "order_id", split: str = "model") -> pd.DataFrame:
    """One row per decision (deduplicated by request id) with its outcome, if one came back.

    ``split="messages"``: ARM is the message A/B arm (control = without, treatment = with) and only
    the decisions inside that test are kept."""
    _check_split(split)
    decisions: dict[str, dict[str, Any]] = {}
    outcomes: dict[str, Mapping[str, Any]] = {}
    key_field = "ORDER_ID" if split_key == "order_id" else "USER_ID"
    for rec in records:
        rid = rec.get("request_id")
        if not rid:
            continue
        if rec.get("kind") == "decision":
            pay = rec.get("payment") or {}
            decisions[rid] = {
                "REQUEST_ID": rid, "ORDER_ID": pay.get("ORDER_ID"),
                "KEY": pay.get(key_field) or pay.get("ORDER_ID"),
                "CREATED_AT": rec.get("created_at"),
                "ARM": rec.get("arm") if split == "model" else _MESSAGE_ARMS.get(rec.get("message_arm")),
                "MODEL_VERSION": rec.get("model_version") or "none", "SOURCE": rec.get("source"),
                "PROCESSOR": rec.get("chosen"), "ATTEMPT": _attempt_number(pay.get("NUM_ATTEMPTS_ORDER")),
                "CARD_BRAND": pay.get("CARD_BRAND"), "CURRENCY": pay.get("CURRENCY"), "CARD_TYPE": pay.get("CARD_TYPE"),
                "AMOUNT": _num(pay.get("AMOUNT")), "DECISION_LATENCY_MS": _num(rec.get("latency_ms")),
            }
        elif rec.get("kind") == "outcome":
            outcomes[rid] = rec
    if split != "model":
        decisions = {rid: d for rid, d in decisions.items() if d["ARM"] is not None}
    if not decisions:
        return pd.DataFrame()
    frame = pd.DataFrame.from_records(list(decisions.values()))
    status = frame["REQUEST_ID"].map(lambda r: outcomes[r].get("status") if r in outcomes else None)
    frame["STATUS"] = status
    frame["HAS_OUTCOME"] = status.notna()
    frame["APPROVED"] = (status == "APPROVED").astype(float).where(frame["HAS_OUTCOME"])
    frame["PROCESSOR_LATENCY_MS"] = frame["REQUEST_ID"].map(
        lambda r: _num(outcomes[r].get("latency_ms")) if r in outcomes else math.nan)
    frame["CREATED_AT"] = pd.to_datetime(frame["CREATED_AT"], format="ISO8601")  # isoformat() drops zero microseconds
    frame["DAY"] = frame["CREATED_AT"].dt.strftime("%Y-%m-%d")
    return frame.sort_values("CREATED_AT", kind="mergesort").reset_index(drop=True)


def orders_frame(attempts: pd.DataFrame) -> pd.DataFrame:
    """One row per order: its arm, model version, day and slices (from its first attempt) and the two order metrics."""
    a = attempts.sort_values(["ORDER_ID", "ATTEMPT", "CREATED_AT"], kind="mergesort")
    first = a.groupby("ORDER_ID", sort=False).head(1).set_index("ORDER_ID")
    out = first[["KEY", "ARM", "MODEL_VERSION", "DAY", "CREATED_AT", "CARD_BRAND", "CURRENCY", "CARD_TYPE", "PROCESSOR",
                 "AMOUNT"]].copy()
    # first attempt of the order with an outcome: the routing decision's own result (NaN: no outcome came back)
    out["first_attempt_approval"] = first["APPROVED"].where(first["ATTEMPT"] == 1)
    known = a[a["HAS_OUTCOME"]].groupby("ORDER_ID")["APPROVED"].max()
    out["order_conversion"] = known.reindex(out.index)
    return out.reset_index()


# ------------------------------------------------------------------ per-group metrics
def _quantile(values: pd.Series, q: float) -> float:
    v = values.dropna()
    return float(v.quantile(q)) if len(v) else math.nan


def group_metrics(attempts: pd.DataFrame, orders: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Payments, orders, approval, first-attempt approval, order conversion and latency per group."""
    rows = []
    for key, part in attempts.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        sel = np.ones(len(orders), dtype=bool)
        for col, value in zip(by, key):
            sel &= (orders[col] == value).to_numpy()
        o = orders[sel]
        done = part[part["HAS_OUTCOME"]]
        dec, proc = done["DECISION_LATENCY_MS"], done["PROCESSOR_LATENCY_MS"]
        rows.append({
            **dict(zip(by, key)),
            "payments": int(len(done)), "orders": int(len(o)),
            "approval": float(done["APPROVED"].mean()) if len(done) else math.nan,
            "first_attempt_approval": float(o["first_attempt_approval"].mean()),
            "order_conversion": float(o["order_conversion"].mean()),
            "decision_latency_ms_mean": float(dec.mean()), "decision_latency_ms_p99": _quantile(dec, 0.99),
            "processor_latency_ms_mean": float(proc.mean()),
            "payment_latency_ms_mean": float((dec + proc.fillna(0.0)).mean()),
            "first_day": str(part["DAY"].min()), "last_day": str(part["DAY"].max()),
        })
    return pd.DataFrame(rows)


def _counts(orders: pd.DataFrame, metric: str) -> tuple[int, int, int, int]:
    """(n_control, x_control, n_treatment, x_treatment) of a 0/1 order metric (orders without a value left out)."""
    out = []
    for arm in (CONTROL, TREATMENT):
        v = orders.loc[orders["ARM"] == arm, metric].dropna()
        out += [int(len(v)), int(v.sum())]
    return tuple(out)  # type: ignore[return-value]


def daily_looks(orders: pd.DataFrame, metric: str) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Cumulative counts at the end of each day (the looks of the sequential test)."""
    looks = []
    for day in sorted(orders["DAY"].unique()):
        looks.append((str(day), _counts(orders[orders["DAY"] <= day], metric)))
    return looks


# ------------------------------------------------------------------ checks
def srm_check(orders: pd.DataFrame, treatment_share: float, alpha: float, shadow: bool = False) -> dict[str, Any]:
    """Chi-square of split keys per arm against the configured split."""
    units = orders.drop_duplicates("KEY")
    n_c, n_t = int((units["ARM"] == CONTROL).sum()), int((units["ARM"] == TREATMENT).sum())
    if shadow:
        return {"checked": False, "flagged": False, "units": {CONTROL: n_c, TREATMENT: n_t},
                "note": "shadow mode: every payment is routed by control, there is no split to check"}
    if not 0.0 < treatment_share < 1.0:
        return {"checked": False, "flagged": False, "units": {CONTROL: n_c, TREATMENT: n_t},
                "note": f"treatment_share {treatment_share} leaves one arm empty by design"}
    stat, p = chi_square_split([n_c, n_t], [1 - treatment_share, treatment_share])
    observed = n_t / (n_c + n_t) if n_c + n_t else math.nan
    flagged = bool(p < alpha) if not math.isnan(p) else False
    return {"checked": True, "flagged": flagged, "units": {CONTROL: n_c, TREATMENT: n_t},
            "expected_treatment_share": treatment_share, "observed_treatment_share": observed,
            "chi2": stat, "p_value": p, "alpha": alpha,
            "note": (f"sample-ratio mismatch: treatment holds {observed:.2%} of units, {treatment_share:.0%} configured "
                     f"(p = {p:.1e}); the split is broken, the lift cannot be trusted" if flagged else
                     f"split as configured (treatment {observed:.2%} of units vs {treatment_share:.0%}, p = {p:.2g})")}


def harm_check(orders: pd.DataFrame, metric: str, slices: Sequence[str], alpha: float, min_units: int) -> pd.DataFrame:
    """Per slice value: treatment − control on ``metric``, one-sided harm p-value, Holm-adjusted over tested slices."""
    from statistics import NormalDist

    rows = []
    for name in slices:
        col = SLICE_FIELDS[name]
        for value, part in orders.groupby(col, sort=True, dropna=True):
            n_a, x_a, n_b, x_b = _counts(part, metric)
            iv = fixed_horizon(n_a, x_a, n_b, x_b, alpha=alpha)
            tested = name not in POST_ASSIGNMENT_SLICES and min(n_a, n_b) >= min_units
            p_harm = NormalDist().cdf(iv.lift / iv.se) if tested and iv.se > 0 else math.nan
            rows.append({"slice": name, "value": str(value), "n_control": n_a, "n_treatment": n_b,
                         "rate_control": iv.rate_a, "rate_treatment": iv.rate_b, "lift": iv.lift,
                         "ci_low": iv.ci_low, "ci_high": iv.ci_high, "tested": bool(tested),
                         "p_harm": p_harm,
                         "why_not_tested": None if tested else ("the arm chooses the processor: not a randomized comparison"
                                                                if name in POST_ASSIGNMENT_SLICES else
                                                                f"fewer than {min_units} orders in an arm")})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_harm_holm"] = holm(table["p_harm"].tolist())
    table["harmed"] = table["tested"] & (table["p_harm_holm"] < alpha)
    return table


# ------------------------------------------------------------------ the decision
@dataclass
class Evidence:
    """What the winner rule reads (a readout, or one simulated experiment)."""

    test: SequentialTest  # after the last look
    payments: dict[str, int]  # per arm
    days: int
    rate_control: float
    latency_regression: float | None = None  # treatment / control mean payment latency − 1 (None: not measured)
    srm_flagged: bool = False
    harmed: list[str] = field(default_factory=list)


@dataclass
class Decision:
    """The auto-winner's verdict: 'treatment', 'control' or 'continue', with every condition and why."""

    winner: str | None
    verdict: str
    conditions: dict[str, bool]
    reasons: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"winner": self.winner, "verdict": self.verdict, "conditions": self.conditions, "reasons": self.reasons}


def decide(ev: Evidence, winner_cfg: Mapping[str, Any]) -> Decision:
    """The auto-winner rule of experiment.toml [winner]; significance comes only from the always-valid test."""
    iv = ev.test.interval
    lift = iv.lift if iv is not None else math.nan
    rel = lift / ev.rate_control if ev.rate_control and not math.isnan(lift) else math.nan
    p = ev.test.p_value
    fewest = min(ev.payments.get(CONTROL, 0), ev.payments.get(TREATMENT, 0))
    lat = ev.latency_regression
    cond = {
        "significant": bool(p < winner_cfg["alpha"]),
        "enough_payments": bool(fewest >= winner_cfg["min_payments_per_arm"]),
        "enough_days": bool(ev.days >= winner_cfg["min_days"]),
        "lift_large_enough": bool(not math.isnan(rel) and rel >= winner_cfg["min_relative_lift"]),
        "latency_ok": bool(lat is None or lat <= winner_cfg["max_latency_regression"]),
        "no_srm": not ev.srm_flagged,
        "no_harmed_slice": not ev.harmed,
    }
    reasons = []
    if not cond["significant"]:
        reasons.append(f"always-valid p = {p:.3g}, not below {winner_cfg['alpha']:g}")
    if not cond["enough_payments"]:
        reasons.append(f"{fewest:,} payments in the smaller arm, {winner_cfg['min_payments_per_arm']:,} needed")
    if not cond["enough_days"]:
        reasons.append(f"{ev.days} day(s) of data, {winner_cfg['min_days']} needed")
    if not cond["lift_large_enough"]:
        reasons.append(f"relative lift {rel:+.2%}, at least {winner_cfg['min_relative_lift']:+.0%} needed")
    if not cond["latency_ok"]:
        reasons.append(f"payment latency {lat:+.1%} vs control, at most {winner_cfg['max_latency_regression']:+.0%} allowed")
    if not cond["no_srm"]:
        reasons.append("sample-ratio mismatch: the split is broken")
    if ev.harmed:
        reasons.append(f"harmed slice(s): {', '.join(ev.harmed)}")
    enough = cond["enough_payments"] and cond["enough_days"] and cond["no_srm"]
    if all(cond.values()):
        return Decision(TREATMENT, f"treatment wins: {rel:+.2%} relative lift, always-valid p = {p:.2g}", cond, [])
    if enough and cond["significant"] and lift < 0:
        return Decision(CONTROL, f"control wins: treatment is worse ({rel:+.2%}, always-valid p = {p:.2g})", cond, reasons)
    return Decision(None, "continue: no winner yet (" + "; ".join(reasons) + ")", cond, reasons)


# ------------------------------------------------------------------ the readout
def _version_vs_control(orders: pd.DataFrame, metric: str, alpha: float, mixture_sd: float) -> list[dict[str, Any]]:
    """Each model version against the control orders created while it served (same hours: randomized)."""
    out = []
    treated = orders[orders["ARM"] == TREATMENT]
    for version, part in treated.groupby("MODEL_VERSION", sort=True):
        lo, hi = part["CREATED_AT"].min(), part["CREATED_AT"].max()
        ctrl = orders[(orders["ARM"] == CONTROL) & (orders["CREATED_AT"] >= lo) & (orders["CREATED_AT"] <= hi)]
        both = pd.concat([ctrl, part])
        test, _ = sequential_looks([c for _, c in daily_looks(both, metric)], mixture_sd=mixture_sd, alpha=alpha)
        fh = fixed_horizon(*_counts(both, metric), alpha=alpha)
        iv = test.interval
        out.append({"model_version": str(version), "from": str(lo), "to": str(hi), "n_control": fh.n_a,
                    "n_treatment": fh.n_b, "rate_control": fh.rate_a, "rate_treatment": fh.rate_b, "lift": fh.lift,
                    "fixed_ci_low": fh.ci_low, "fixed_ci_high": fh.ci_high, "fixed_p_value": fh.p_value,
                    "always_valid_ci_low": iv.ci_low if iv else math.nan,
                    "always_valid_ci_high": iv.ci_high if iv else math.nan, "always_valid_p_value": test.p_value})
    return out


def _versions_head_to_head(orders: pd.DataFrame, metric: str, alpha: float, mixture_sd: float) -> list[dict[str, Any]]:
    """Model versions that served the treatment arm at the same time (a canary beside its champion), paired up
    over the hours both served: the newer minus the older, the always-valid test over daily looks."""
    treated = orders[orders["ARM"] == TREATMENT]
    spans = treated.groupby("MODEL_VERSION")["CREATED_AT"].agg(["min", "max", "size"])
    names = sorted(spans.index, key=lambda v: (spans.loc[v, "min"], str(v)))
    out = []
    for i, older in enumerate(names):
        for newer in names[i + 1:]:
            lo, hi = max(spans.loc[older, "min"], spans.loc[newer, "min"]), min(spans.loc[older, "max"], spans.loc[newer, "max"])
            if lo >= hi:
                continue  # one after the other (daily promotions): not a concurrent comparison
            both = treated[(treated["CREATED_AT"] >= lo) & (treated["CREATED_AT"] <= hi)
                           & treated["MODEL_VERSION"].isin([older, newer])]
            # the sequential helpers compare arm 'a' (control) with arm 'b' (treatment): older as a, newer as b
            pair = both.assign(ARM=np.where(both["MODEL_VERSION"] == newer, TREATMENT, CONTROL))
            test, _ = sequential_looks([c for _, c in daily_looks(pair, metric)], mixture_sd=mixture_sd, alpha=alpha)
            fh = fixed_horizon(*_counts(pair, metric), alpha=alpha)
            iv = test.interval
            out.append({"champion": str(older), "challenger": str(newer), "from": str(lo), "to": str(hi),
                        "n_champion": fh.n_a, "n_challenger": fh.n_b, "rate_champion": fh.rate_a,
                        "rate_challenger": fh.rate_b, "lift": fh.lift, "fixed_ci_low": fh.ci_low,
                        "fixed_ci_high": fh.ci_high, "always_valid_ci_low": iv.ci_low if iv else math.nan,
                        "always_valid_ci_high": iv.ci_high if iv else math.nan, "always_valid_p_value": test.p_value})
    return out


def readout(records: Iterable[Mapping[str, Any]], cfg: Mapping[str, Any] | None = None, *,
            routing_config: Any = None, source: str = "records", until: str | None = None,
            split: str = "model") -> dict[str, Any]:
    """The whole readout as a JSON-ready dict (see the module docstring). NoDataError when nothing can be read.

    ``until`` (YYYY-MM-DD, exclusive): only decisions before that day (a backfilled run reads what it would have seen).
    ``split``: "model" (static rules vs model) or "messages" (the model without vs with message recommendations).
    """
    from smartrouter.routing.config import load_routing_config

    _check_split(split)
    cfg = cfg or load_config()
    routing = routing_config or load_routing_config()
    exp = routing.experiment
    # the split's expected treatment share (the SRM check) and whether one arm is empty by design
    share, shadow = (exp.treatment_share, exp.shadow) if split == "model" else (routing.messages.ab_share, False)
    r, w = cfg["readout"], cfg["winner"]
    metric, alpha, tau = r["primary_metric"], r["alpha"], r["mixture_sd"]
    attempts = attempts_frame(records, exp.key, split)
    if until and not attempts.empty:
        attempts = attempts[attempts["CREATED_AT"] < pd.Timestamp(until)].reset_index(drop=True)
    if attempts.empty:
        if split == "messages":
            raise NoDataError(f"the decision log at {source} holds no decision of the message A/B (no message_arm); "
                              "set routing.toml [messages] ab_share below 1 (e.g. 0.5) and let the model arm route payments")
        raise NoDataError(f"the decision log at {source} holds no decisions; let the service route payments first")
    if attempts["ARM"].nunique() < 2:  # a split at share 0 or 1 (e.g. after a winner took all): nothing to compare
        only = str(attempts["ARM"].iloc[0])
        if split == "messages":
            raise NoDataError(f"the message A/B at {source} has only '{'with' if only == TREATMENT else 'without'}' orders "
                              f"({len(attempts):,} decisions): no test is running; set routing.toml [messages] ab_share "
                              "strictly between 0 and 1 (e.g. 0.5) to run one")
        raise NoDataError(f"the decision log at {source} has only {only} decisions ({len(attempts):,}): the model-vs-rules "
                          "split is not running (routing.toml [experiment] treatment_share is 0 or 1, or was then)")
    if not attempts["HAS_OUTCOME"].any():
        raise NoDataError(f"the decision log at {source} holds {len(attempts):,} decisions but no outcome; "
                          "outcomes come from POST /v1/outcomes")
    orders = orders_frame(attempts)
    per_arm = group_metrics(attempts, orders, ["ARM"])
    per_version = group_metrics(attempts, orders, ["ARM", "MODEL_VERSION"])
    looks = daily_looks(orders, metric)
    test, look_rows = sequential_looks([c for _, c in looks], mixture_sd=tau, alpha=alpha)
    for (day, _), row in zip(looks, look_rows):
        row["day"] = day
    fh = fixed_horizon(*looks[-1][1], alpha=alpha)
    iv = test.interval
    srm = srm_check(orders, share, cfg["srm"]["alpha"], shadow)
    harm = harm_check(orders, metric, cfg["harm"]["slices"], cfg["harm"]["alpha"], cfg["harm"]["min_units"])
    harmed = [f"{row.slice}={row.value}" for row in harm.itertuples() if row.harmed] if not harm.empty else []
    arm_row = per_arm.set_index("ARM")
    payments = {arm: int(arm_row.loc[arm, "payments"]) if arm in arm_row.index else 0 for arm in (CONTROL, TREATMENT)}
    lat = None
    if {CONTROL, TREATMENT} <= set(arm_row.index):
        c, t = arm_row.loc[CONTROL, "payment_latency_ms_mean"], arm_row.loc[TREATMENT, "payment_latency_ms_mean"]
        lat = float(t / c - 1.0) if c > 0 and math.isfinite(c) and math.isfinite(t) else None
    days = len(looks)
    ev = Evidence(test, payments, days, iv.rate_a if iv else math.nan, lat, srm["flagged"], harmed)
    decision = decide(ev, w)
    impact = _impact(orders, iv, fh, cfg)
    result = {
        "source": source, "primary_metric": metric, "alpha": alpha, "mixture_sd": tau,
        "split": {"name": split, "key": exp.key, "treatment_share": share, "shadow": shadow,
                  "control": SPLITS[split][0], "treatment": SPLITS[split][1]},
        "window": {"from": str(attempts["CREATED_AT"].min()), "to": str(attempts["CREATED_AT"].max()), "days": days},
        "per_arm": per_arm.to_dict("records"), "per_version": per_version.to_dict("records"),
        "lift": {"control": iv.rate_a, "treatment": iv.rate_b, "lift": iv.lift,
                 "relative_lift": iv.lift / iv.rate_a if iv.rate_a else math.nan,
                 "always_valid": {"ci_low": iv.ci_low, "ci_high": iv.ci_high, "p_value": test.p_value,
                                  "crossed_on": looks[test.crossed_at][0] if test.crossed_at is not None else None},
                 "fixed_horizon": {"ci_low": fh.ci_low, "ci_high": fh.ci_high, "p_value": fh.p_value,
                                   "note": "valid for one pre-planned look only; shown for comparison, never used"},
                 "n_control": iv.n_a, "n_treatment": iv.n_b},
        "latency_regression": lat,
        "daily_looks": look_rows,
        "versions_vs_control": _version_vs_control(orders, metric, alpha, tau),
        "versions_head_to_head": _versions_head_to_head(orders, metric, alpha, tau),
        "srm": srm,
        "harm": harm.to_dict("records") if not harm.empty else [],
        "decision": decision.as_dict(),
        "impact": impact,
    }
    result["summary"] = plain_words(result)
    return plain(result)  # JSON-ready: NaN -> None, numpy -> Python


def true_lift(truth: pd.DataFrame, split: str = "model") -> dict[str, Any]:
    """World data only: the lift the world truly had on the split's orders, to hold a readout against.

    ``truth``: the live loop's truth rows (live_report.load_truth: one per attempt, with the oracle's
    probability of what was sent, P_CHOSEN). Per arm, the mean P_CHOSEN of the orders' first attempts
    (the primary metric's unit); the lift is treatment − control. For the message split it also gives
    the message part alone: the "with" orders' mean P_CHOSEN − P_CHOSEN_DEFAULT_CONFIG (the same
    processors with the merchant's default message), so a lift can be told apart from a routing shift.
    """
    _check_split(split)
    first = truth[pd.to_numeric(truth["ATTEMPT_NUMBER"], errors="coerce") == 1]
    if split == "model":
        arm = first["ARM"].astype(str).str.lower()
    else:
        if "MESSAGE_ARM" not in first.columns:
            raise NoDataError("the truth rows have no MESSAGE_ARM column: they were written before the message A/B "
                              "existed; rerun the live days with the current `smartrouter live`")
        arm = first["MESSAGE_ARM"].map(_MESSAGE_ARMS)
    p = pd.to_numeric(first["P_CHOSEN"], errors="coerce")
    c, t = p[arm == CONTROL], p[arm == TREATMENT]
    if c.empty or t.empty:
        raise NoDataError(f"the truth rows hold {len(c):,} control and {len(t):,} treatment first attempts of the "
                          f"{split} split; both arms need orders")
    out = {"split": split, "control": float(c.mean()), "treatment": float(t.mean()),
           "lift": float(t.mean() - c.mean()), "n_control": int(len(c)), "n_treatment": int(len(t))}
    if split == "messages" and "P_CHOSEN_DEFAULT_CONFIG" in first.columns:
        treated = first[arm == TREATMENT]
        out["message_part"] = float((pd.to_numeric(treated["P_CHOSEN"]) - pd.to_numeric(treated["P_CHOSEN_DEFAULT_CONFIG"])).mean())
    return out


def covers(result: Mapping[str, Any], truth: Mapping[str, Any]) -> dict[str, bool]:
    """Whether the readout's always-valid and fixed-horizon intervals hold the true lift."""
    lift, true = result["lift"], truth["lift"]
    return {name: bool(lift[name]["ci_low"] is not None and lift[name]["ci_low"] <= true <= lift[name]["ci_high"])
            for name in ("always_valid", "fixed_horizon")}


def _impact(orders: pd.DataFrame, iv: Any, fh: Any, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The lift in approved orders and money per day if all traffic went the treatment's way (with the always-valid range)."""
    from smartrouter import money

    fx = money.default_schedule().fx  # the one FX table (fees.toml [fx]): every money figure converts alike
    days = max(1, orders["DAY"].nunique())
    per_day = len(orders) / days
    rate = orders["CURRENCY"].map(lambda c: fx.get(str(c), math.nan))
    amount = float((orders["AMOUNT"] * rate).mean())
    out = {"orders_per_day": per_day, "mean_order_amount": amount, "currency": money.REPORT_CURRENCY}
    for name, lo, hi in (("always_valid", iv.ci_low, iv.ci_high), ("fixed_horizon", fh.ci_low, fh.ci_high)):
        out[name] = {"approved_orders_per_day": [lo * per_day, hi * per_day],
                     "money_per_day": [lo * per_day * amount, hi * per_day * amount]}
    out["approved_orders_per_day"] = iv.lift * per_day
    out["money_per_day"] = iv.lift * per_day * amount
    return out


def plain_words(r: Mapping[str, Any]) -> str:
    """One paragraph for stakeholders, every number from the readout."""
    lift, imp, dec = r["lift"], r["impact"], r["decision"]
    av = lift["always_valid"]
    metric = r["primary_metric"].replace("_", " ")
    cur = imp["currency"]
    control, treatment = SPLITS[r["split"].get("name", "model")]
    text = [f"Over {r['window']['days']} day(s), {metric} was {lift['treatment']:.2%} with {treatment} (treatment, "
            f"{lift['n_treatment']:,} orders) and {lift['control']:.2%} with {control} (control, "
            f"{lift['n_control']:,} orders): {lift['lift'] * 100:+.2f} pp ({lift['relative_lift']:+.1%})."]
    text.append(f"The always-valid 95 % interval, which stays valid however often it is read, is "
                f"[{av['ci_low'] * 100:+.2f}, {av['ci_high'] * 100:+.2f}] pp (p = {av['p_value']:.2g}); at "
                f"{imp['orders_per_day']:,.0f} orders a day that is {imp['approved_orders_per_day']:+,.0f} approved orders "
                f"(between {imp['always_valid']['approved_orders_per_day'][0]:+,.0f} and "
                f"{imp['always_valid']['approved_orders_per_day'][1]:+,.0f}) and {imp['money_per_day']:+,.0f} {cur} a day "
                f"if every order were routed by {treatment}.")
    if av["ci_low"] > 0:
        text.append(f"{treatment[0].upper() + treatment[1:]} is better with confidence.")
    elif av["ci_high"] < 0:
        text.append(f"{treatment[0].upper() + treatment[1:]} is worse with confidence.")
    else:
        text.append("The data cannot yet tell the two apart.")
    if r["srm"].get("flagged"):
        text.append("WARNING: " + r["srm"]["note"] + ".")
    text.append(f"Decision: {dec['verdict']}.")
    return " ".join(text)


def write_readout(result: Mapping[str, Any], path: str | Path) -> Path:
    """Save the readout JSON atomically."""
    return atomic.write_json(path, result)


# ------------------------------------------------------------------ coverage simulation (bench and tests)
@dataclass(frozen=True)
class SimulationResult:
    """Outcome of many simulated experiments: coverage and false-winner rates, always-valid vs fixed horizon."""

    experiments: int
    days: int
    true_lift: float
    always_valid_coverage: float  # share of experiments whose interval held the true lift at EVERY daily look
    fixed_coverage_all_looks: float  # same for the fixed-horizon interval
    fixed_coverage_last_look: float  # the fixed interval at its one planned look (the last day)
    always_valid_rejections: float  # share whose always-valid p ever fell below alpha
    fixed_rejections_peeking: float  # share whose fixed-horizon p was below alpha at some daily look
    fixed_rejections_last_look: float
    winners: float  # share declared a treatment winner by `decide` at some daily look

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def simulate(experiments: int, *, days: int = 28, orders_per_day: int = 1000, base_rate: float = 0.8,
             true_lift: float = 0.0, treatment_share: float = 0.5, heterogeneity: float = 0.5,
             cfg: Mapping[str, Any] | None = None, seed: int = 0) -> SimulationResult:
    """Simulate A/B experiments with a known true lift, peeked at daily, through the readout's own rule.

    Each experiment draws a population of orders whose true approval varies (a logit spread of
    ``heterogeneity`` around logit(``base_rate``), like payments of different cards), assigns each
    order an arm with SHA-256 of its id (`routing.experiment.bucket`, as the service does), and draws its outcome from its own probability: control p_i,
    treatment p_i + true_lift (clipped to [0, 1]). The true lift is the population mean difference.
    Every day the readout looks (cumulative counts) and `decide` may stop with a winner.
    """
    from smartrouter.routing.experiment import bucket

    cfg = cfg or load_config()
    alpha, tau = cfg["readout"]["alpha"], cfg["readout"]["mixture_sd"]
    rng = np.random.default_rng(seed)
    n = days * orders_per_day
    cover_av = cover_fx_all = cover_fx_last = rej_av = rej_fx = rej_fx_last = wins = 0
    logit0 = math.log(base_rate / (1 - base_rate))
    day_of = np.repeat(np.arange(days), orders_per_day)
    for e in range(experiments):
        z = logit0 + heterogeneity * rng.standard_normal(n)
        p_c = 1 / (1 + np.exp(-z))
        p_t = np.clip(p_c + true_lift, 0.0, 1.0)
        truth = float((p_t - p_c).mean())
        treated = np.fromiter((bucket(f"e{e}-o{i}", f"sim{seed}") < treatment_share for i in range(n)), bool, n)
        y = rng.random(n) < np.where(treated, p_t, p_c)
        test = SequentialTest(tau, alpha)
        ok_av = ok_fx = True
        fx_hit = won = False
        fh = None
        # cumulative (n, approved) per arm at each day's end
        cum = [np.cumsum(np.bincount(day_of, weights=w, minlength=days)).astype(np.int64)
               for w in (~treated, y & ~treated, treated, y & treated)]
        for d in range(days):
            n_a, n_b = int(cum[0][d]), int(cum[2][d])
            counts = (n_a, int(cum[1][d]), n_b, int(cum[3][d]))
            iv = test.look(*counts)
            fh = fixed_horizon(*counts, alpha=alpha)
            ok_av &= iv.covers(truth)
            ok_fx &= fh.covers(truth)
            fx_hit |= fh.p_value < alpha
            ev = Evidence(test, {CONTROL: n_a, TREATMENT: n_b}, d + 1, iv.rate_a, 0.0)
            won |= decide(ev, cfg["winner"]).winner == TREATMENT
        cover_av += ok_av
        cover_fx_all += ok_fx
        cover_fx_last += fh.covers(truth)
        rej_av += test.p_value < alpha
        rej_fx += fx_hit
        rej_fx_last += fh.p_value < alpha
        wins += won
    k = float(experiments)
    return SimulationResult(experiments, days, true_lift, cover_av / k, cover_fx_all / k, cover_fx_last / k,
                            rej_av / k, rej_fx / k, rej_fx_last / k, wins / k)
