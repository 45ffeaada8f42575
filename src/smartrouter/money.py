"""Money: what each processor charges, the expected net revenue of a routing choice, and the
routing objective the merchant chooses.

**Fees** come from ``fees.toml`` (``load_schedule``; ``SMARTROUTER_FEES_CONFIG`` for another
file): per processor and card type a percentage and a fixed fee per currency, a cross-border
surcharge (the card's country is not the merchant's, ``catalog.HOME_COUNTRY``) and a
currency-conversion surcharge (the payment's currency is not one the processor settles in). A fee
is charged on approved payments only. The schedule is turned once into two tables, a rate
``[processor, card type, currency, foreign]`` and a fixed fee ``[processor, card type, currency]``,
and every fee -- a frame's (``fee_matrix``, ``fee``) or one payment's (``payment_fees``) -- is
``amount x rate + fixed`` read from them by ``_fees``: one code path for both.

**The objective** (routing.toml ``[objective]``, read through ``routing.config``; ``objective()``
is what the router, the evaluation and the gates call):

* ``approval`` (the default, and what the router always did): the eligible processors by the
  model's approval probability.
* ``net_revenue``: the expected net revenue of sending the payment to processor *a* is
  ``p(a) x (amount - fee(a))`` (a declined payment earns nothing and costs nothing). **Approval
  floor**: per payment, only processors whose approval probability is within ``floor_pp``
  percentage points of the best eligible processor's are candidates; they are ranked by expected
  net revenue, the rest follow by approval. Why a floor: expected net revenue already trades
  approval against fees, but a declined airline booking costs more than its fee (the customer may
  not come back, a retry costs time and another attempt), and the model's probabilities are only
  calibrated to about a point; the floor bounds what a cheaper fee may cost in approval on every
  single payment, so the approval the A/B test and the gates read can never fall by more than
  ``floor_pp`` (by the model's own estimate) for the money it saves.

``preference_order`` is the one definition of that ranking, vectorized; the router ranks one
payment with it (``rank``) and the evaluation ranks the test window with it (``objective_policy``).
``evaluate`` values every policy in approval, fee cost and net revenue (DR estimate with its
interval, and the truth on world data); ``objective_gates`` is the gate the objective adds.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from statistics import NormalDist
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from smartrouter import catalog, strict_toml
from smartrouter.errors import ConfigError

log = logging.getLogger("smartrouter.money")

CONFIG_PATH = Path(__file__).resolve().parent / "fees.toml"
CONFIG_ENV = "SMARTROUTER_FEES_CONFIG"
HOME = "src/smartrouter/fees.toml"
OBJECTIVES: tuple[str, ...] = ("approval", "net_revenue")
REPORT_CURRENCY = "MXN"  # the currency fx rates convert to; USD figures are derived from it
NET_REVENUE_SUFFIX = "@net_revenue"  # policy name of a model ranked by net revenue: "model:xgb@net_revenue"
NET_REVENUE_GATE = "net_revenue"  # the gate objective_gates adds (only under the net_revenue objective)
FEE_KEYS: tuple[str, ...] = ("percent", *(f"fixed_{c.lower()}" for c in catalog.CURRENCIES),
                             "cross_border_percent", "conversion_percent")
EXAMPLE_WARNING = ("fee schedule values are EXAMPLES (fees.toml values_are_examples = true), not the merchant's "
                   "contracts: replace them before reading money figures as real")


def _schema() -> dict[str, dict[str, type]]:
    """Every table and key fees.toml holds, from the catalog (one place lists processors and card types)."""
    schema: dict[str, dict[str, type]] = {
        "schedule": {"values_are_examples": bool, "as_of": str, "note": str},
        "fx": {"as_of": str, **{c: float for c in catalog.CURRENCIES}},
        "processors": {},
    }
    for p in catalog.PROCESSORS:
        schema[f"processors.{p}"] = {"settlement_currencies": list}
        for t in catalog.CARD_TYPES:
            schema[f"processors.{p}.{t}"] = {k: float for k in FEE_KEYS}
    return schema


# ---------------------------------------------------------------- the schedule
@dataclass(frozen=True)
class FeeSchedule:
    """A validated fee schedule and the two tables every fee is read from."""

    source: str
    values_are_examples: bool
    as_of: str
    note: str
    fx: dict[str, float]  # currency -> MXN per unit
    fx_as_of: str
    settlement: dict[str, tuple[str, ...]]
    terms: dict[str, dict[str, dict[str, float]]]  # processor -> card type -> fee keys (as written)
    # processors last, so one payment's lookup is already a row of fees
    rate: np.ndarray = field(repr=False)  # (card types, currencies, foreign 0/1, P): share of the amount
    fixed: np.ndarray = field(repr=False)  # (card types, currencies, P): in the payment's currency

    def describe(self) -> dict[str, Any]:
        """Plain JSON: where the schedule came from, its dates, the FX rates and the examples flag."""
        return {"source": self.source, "values_are_examples": self.values_are_examples, "as_of": self.as_of,
                "note": self.note, "fx": {"as_of": self.fx_as_of, "to": REPORT_CURRENCY, "rates": dict(self.fx)},
                "warning": EXAMPLE_WARNING if self.values_are_examples else None}


def _precheck(path: Path) -> None:
    """Name an unknown processor or card type, or a missing card type, before the generic schema check."""
    import tomllib

    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return  # strict_toml.load names these
    procs = raw.get("processors")
    if not isinstance(procs, dict):
        return
    for name, table in procs.items():
        if name not in catalog.PROCESSORS:
            raise ConfigError(f"fee schedule {path}: [processors.{name}] is not a processor; the processors are "
                              f"{', '.join(catalog.PROCESSORS)} (catalog.PROCESSORS): rename or remove the table")
        if not isinstance(table, dict):
            continue
        types = {k for k, v in table.items() if isinstance(v, dict)}
        unknown = sorted(types - set(catalog.CARD_TYPES))
        if unknown:
            raise ConfigError(f"fee schedule {path}: [processors.{name}.{unknown[0]}] is not a card type; the card "
                              f"types are {', '.join(catalog.CARD_TYPES)}")
        missing = [t for t in catalog.CARD_TYPES if t not in types]
        if missing:
            raise ConfigError(f"fee schedule {path}: {name} has no fees for card type(s) {', '.join(missing)}; add "
                              f"[processors.{name}.{missing[0]}] with {', '.join(FEE_KEYS)} (see {HOME})")
    absent = [p for p in catalog.PROCESSORS if p not in procs]
    if absent:
        raise ConfigError(f"fee schedule {path}: no fees for processor(s) {', '.join(absent)}; add "
                          f"[processors.{absent[0]}] and its card-type tables (see {HOME})")


def load_schedule(path: str | Path | None = None,
                  overrides: Mapping[str, Mapping[str, Any]] | None = None) -> FeeSchedule:
    """The fee schedule of ``path`` (default: $SMARTROUTER_FEES_CONFIG, else the shipped fees.toml), validated.

    ``overrides`` are ``{table: {key: value}}`` (``{"processors.MIT.CREDIT": {"percent": 0.02}}``),
    checked like the file. Raises ConfigError naming the file, table and key.
    """
    path = Path(path or os.environ.get(CONFIG_ENV) or CONFIG_PATH)
    _precheck(path)
    cfg = strict_toml.load(path, _schema(), what="fee schedule", home=HOME, overrides=overrides)
    fx = {c: cfg["fx"][c] for c in catalog.CURRENCIES}
    for c, r in fx.items():
        strict_toml.require(r > 0 and math.isfinite(r), path, f"[fx] {c}", f"= {r} must be a positive rate (MXN per {c})")
    strict_toml.require(fx[REPORT_CURRENCY] == 1.0, path, f"[fx] {REPORT_CURRENCY}",
                        f"= {fx[REPORT_CURRENCY]} must be 1.0: rates convert to {REPORT_CURRENCY}")
    settlement, terms = {}, {}
    P, T, C = len(catalog.PROCESSORS), len(catalog.CARD_TYPES), len(catalog.CURRENCIES)
    rate, fixed = np.zeros((T, C, 2, P)), np.zeros((T, C, P))
    for i, p in enumerate(catalog.PROCESSORS):
        cur = tuple(cfg[f"processors.{p}"]["settlement_currencies"])
        bad = [c for c in cur if c not in catalog.CURRENCIES]
        strict_toml.require(cur and not bad, path, f"[processors.{p}] settlement_currencies",
                            f"= {list(cur)} must list currencies from {', '.join(catalog.CURRENCIES)}")
        settlement[p] = cur
        terms[p] = {}
        for j, t in enumerate(catalog.CARD_TYPES):
            f = cfg[f"processors.{p}.{t}"]
            for k, v in f.items():
                strict_toml.require(math.isfinite(v) and v >= 0, path, f"[processors.{p}.{t}] {k}",
                                    f"= {v} is negative; a fee is a charge (0 for none)")
                strict_toml.require(not k.endswith("percent") or v < 0.5, path, f"[processors.{p}.{t}] {k}",
                                    f"= {v} is a share of the amount (0.021 = 2.1 %), not a percentage")
            terms[p][t] = dict(f)
            for m, c in enumerate(catalog.CURRENCIES):
                conversion = f["conversion_percent"] if c not in cur else 0.0
                rate[j, m, 0, i] = f["percent"] + conversion
                rate[j, m, 1, i] = f["percent"] + conversion + f["cross_border_percent"]
                fixed[j, m, i] = f[f"fixed_{c.lower()}"]
    s = cfg["schedule"]
    return FeeSchedule(source=str(path), values_are_examples=s["values_are_examples"], as_of=s["as_of"], note=s["note"],
                       fx=fx, fx_as_of=cfg["fx"]["as_of"], settlement=settlement, terms=terms, rate=rate, fixed=fixed)


@lru_cache(maxsize=4)
def _cached_schedule(path: str, mtime: float) -> FeeSchedule:
    return load_schedule(path)


def default_schedule() -> FeeSchedule:
    """The schedule in force (re-read when the file changes): what the router and the evaluation use by default."""
    path = Path(os.environ.get(CONFIG_ENV) or CONFIG_PATH)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        mtime = -1.0  # load_schedule names the missing file
    return _cached_schedule(str(path), mtime)


def objective(config: Any = None) -> Any:
    """The routing objective in force (routing.toml ``[objective]``: ``name``, ``floor_pp``).

    The one reader the router (its RoutingConfig), the evaluation and the gates call; without
    ``config`` it loads the routing config ($SMARTROUTER_ROUTING_CONFIG or the shipped routing.toml).
    """
    if config is None:
        from smartrouter.routing.config import load_routing_config

        config = load_routing_config()
    return config.objective


# ---------------------------------------------------------------- fees: one path for frames and single payments
_POSITIONS = {names: {n: i for i, n in enumerate(names)} for names in (catalog.CARD_TYPES, catalog.CURRENCIES, catalog.PROCESSORS)}


def _is_foreign(country: Any) -> int:
    """1 when the card's country is known and not the merchant's; a missing country counts as domestic."""
    return int(isinstance(country, str) and country.strip() != "" and country != catalog.HOME_COUNTRY)


def _index(values: Any, names: tuple[str, ...], what: str, column: str) -> Any:
    """Position of each of ``values`` in ``names`` (an int for one value); an unknown value is a ConfigError naming it."""
    lookup = _POSITIONS[names]
    one = isinstance(values, str)
    if one:  # one payment: a dict lookup on the router's path (an unknown value falls through to the error)
        i = lookup.get(values, -1)
        if i >= 0:
            return i
        values = [values]
    arr = np.asarray(values, dtype=object)
    idx = np.fromiter((lookup.get(v, -1) for v in arr.ravel()), dtype=np.int64, count=arr.size).reshape(arr.shape)
    if (idx < 0).any():
        bad = sorted({str(v) for v in arr[idx < 0].ravel().tolist()})[:5]
        raise ConfigError(f"{column} values {bad} have no fees: the fee schedule knows the {what} {', '.join(names)}")
    return int(idx[0]) if one else idx


def _fees(schedule: FeeSchedule, amount: Any, card_type: Any, currency: Any, country: Any) -> np.ndarray:
    """Fee of every processor, in the payment's currency: shape (..., P) for inputs of shape (...)."""
    t = _index(card_type, catalog.CARD_TYPES, "card types", "CARD_TYPE")
    c = _index(currency, catalog.CURRENCIES, "currencies", "CURRENCY")
    if isinstance(t, int):
        x = _is_foreign(country)
    else:
        x = np.fromiter((_is_foreign(v) for v in np.asarray(country, dtype=object).ravel()), dtype=np.int64,
                        count=np.size(country)).reshape(np.shape(t))
    return np.asarray(amount, dtype=np.float64)[..., None] * schedule.rate[t, c, x] + schedule.fixed[t, c]


def _columns(frame: pd.DataFrame) -> tuple[Any, ...]:
    missing = [c for c in ("AMOUNT", "CARD_TYPE", "CURRENCY") if c not in frame.columns]
    if missing:
        raise ConfigError(f"fees need the attempt columns {', '.join(missing)}; this frame has none of them "
                          "(join the attempt view's columns, evaluation.with_attempt_columns)")
    country = frame["CARD_COUNTRY"].to_numpy(dtype=object) if "CARD_COUNTRY" in frame.columns else np.full(len(frame), None)
    return (pd.to_numeric(frame["AMOUNT"], errors="coerce").to_numpy(dtype=np.float64),
            frame["CARD_TYPE"].to_numpy(dtype=object), frame["CURRENCY"].to_numpy(dtype=object), country)


def fee_matrix(frame: pd.DataFrame, schedule: FeeSchedule | None = None) -> np.ndarray:
    """(n, P) fee each processor would charge for each row if approved, in the row's currency."""
    return _fees(schedule or default_schedule(), *_columns(frame))


def fee(frame: pd.DataFrame, processors: Sequence[str] | np.ndarray, schedule: FeeSchedule | None = None) -> np.ndarray:
    """(n,) fee of the named processor of each row (e.g. the logged ``PROCESSOR``), in the row's currency."""
    idx = _index(np.asarray(processors, dtype=object), catalog.PROCESSORS, "processors", "PROCESSOR")
    return fee_matrix(frame, schedule)[np.arange(len(frame)), idx]


def net_revenue(frame: pd.DataFrame, prob_matrix: np.ndarray, schedule: FeeSchedule | None = None) -> np.ndarray:
    """(n, P) expected net revenue of each routing choice, in the row's currency: p x (amount − fee)."""
    amount = pd.to_numeric(frame["AMOUNT"], errors="coerce").to_numpy(dtype=np.float64)
    return np.asarray(prob_matrix, dtype=np.float64) * (amount[:, None] - fee_matrix(frame, schedule))


def payment_fees(payment: Mapping[str, Any], schedule: FeeSchedule | None = None) -> dict[str, float]:
    """{processor: fee} for one payment (upper-case attempt columns), in its currency: the router's path."""
    f = _fees(schedule or default_schedule(), float(payment["AMOUNT"]), payment.get("CARD_TYPE"), payment["CURRENCY"],
              payment.get("CARD_COUNTRY"))
    return dict(zip(catalog.PROCESSORS, f.tolist()))


def to_report(values: np.ndarray, currency: Any, schedule: FeeSchedule) -> np.ndarray:
    """Amounts in each row's currency -> MXN with the schedule's dated rates (rows along the first axis)."""
    rate = np.asarray([schedule.fx[c] for c in catalog.CURRENCIES])[_index(currency, catalog.CURRENCIES, "currencies", "CURRENCY")]
    values = np.asarray(values, dtype=np.float64)
    return values * rate.reshape(rate.shape + (1,) * (values.ndim - rate.ndim))


# ---------------------------------------------------------------- the objective's ranking
def preference_order(prob: np.ndarray, mask: np.ndarray, objective: Any, net: np.ndarray | None = None) -> np.ndarray:
    """(n, P) processor indices, most preferred first (ineligible ones last): THE ranking of both objectives.

    ``approval``: by probability (ties to catalog order, as ``policies.greedy_choice``).
    ``net_revenue``: the processors within ``floor_pp`` of the best eligible probability, by expected net
    revenue ``net`` (ties by probability), then the others by probability.
    """
    prob = np.asarray(prob, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    n, p = prob.shape
    cols = np.broadcast_to(np.arange(p), (n, p))
    if objective.name == "approval":
        return np.lexsort((cols, -prob, ~mask))
    if objective.name != "net_revenue":
        raise ConfigError(f"routing objective {objective.name!r} is unknown; use one of {', '.join(OBJECTIVES)}")
    if net is None:
        raise ConfigError("the net_revenue objective needs the expected net revenue of every processor (money.net_revenue)")
    best = np.where(mask, prob, -np.inf).max(axis=1, keepdims=True)
    # a hair of tolerance so a processor exactly floor_pp below the best is inside, whatever the float rounding
    inside = mask & (prob >= best - objective.floor_pp / 100.0 - 1e-12)
    key = np.where(inside, -np.asarray(net, dtype=np.float64), 0.0)
    return np.lexsort((cols, -prob, key, ~inside, ~mask))


def objective_policy(prob: np.ndarray, mask: np.ndarray, objective: Any, net: np.ndarray | None = None) -> np.ndarray:
    """(n, P) one-hot policy: the first processor of ``preference_order`` (rows with no candidate stay zero)."""
    order = preference_order(prob, mask, objective, net)
    out = np.zeros(np.shape(prob), dtype=np.float64)
    ok = np.asarray(mask, dtype=bool).any(axis=1)
    out[np.flatnonzero(ok), order[ok, 0]] = 1.0
    return out


def rank(eligible: Sequence[str], scores: Mapping[str, float], payment: Mapping[str, Any], objective: Any,
         schedule: FeeSchedule | None = None) -> list[str]:
    """The router's order of ``eligible`` for one payment under ``objective`` (preference_order on one row).

    Never fails a payment: fees it cannot compute (a card type the schedule lacks) rank by approval, logged.
    """
    if objective.name == "approval":  # the hot path stays what it was: a sort by score
        return sorted(eligible, key=lambda p: -scores.get(p, 0.0))
    idx = [catalog.PROCESSOR_INDEX[p] for p in eligible]
    prob = np.zeros((1, len(catalog.PROCESSORS)))
    prob[0, idx] = [scores.get(p, 0.0) for p in eligible]
    mask = np.zeros_like(prob, dtype=bool)
    mask[0, idx] = True
    try:
        amount = float(payment["AMOUNT"])
        fees = _fees(schedule or default_schedule(), amount, payment.get("CARD_TYPE"), payment["CURRENCY"],
                     payment.get("CARD_COUNTRY"))
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        log.warning("net_revenue objective: no fees for this payment (%s); ranked by approval", exc)
        return sorted(eligible, key=lambda p: -scores.get(p, 0.0))
    net = prob * (amount - fees)
    order = preference_order(prob, mask, objective, net)[0]
    return [catalog.PROCESSORS[i] for i in order[: len(eligible)]]


def explain(payment: Mapping[str, Any], scores: Mapping[str, float] | None, order: Sequence[str], objective: Any,
            schedule: FeeSchedule | None = None) -> list[str]:
    """The decision's reason when the net_revenue objective put first another processor than approval would
    ([] otherwise): both processors' probability and fee, and the floor."""
    if objective.name != "net_revenue" or not scores or not order:
        return []
    by_approval = rank(order, scores, payment, replace(objective, name="approval"), schedule)[0]
    first = order[0]
    if first == by_approval or rank(order, scores, payment, objective, schedule)[0] != first:
        return []  # approval agrees, or something else (an uncertain processor moved last) decided the order
    fees = payment_fees(payment, schedule)
    cur = payment["CURRENCY"]
    return [f"objective net_revenue: {first} (p={scores[first]:.3f}, fee {cur} {fees[first]:,.2f}) earns more net of fees "
            f"than {by_approval} (p={scores[by_approval]:.3f}, fee {cur} {fees[by_approval]:,.2f}), within the "
            f"{objective.floor_pp:g} pp approval floor"]


# ---------------------------------------------------------------- evaluation: approval, fee cost, net revenue
def _first_days(first: pd.DataFrame) -> int:
    if "CREATED_AT" not in first.columns or first.empty:
        return 1
    return max(1, int(pd.to_datetime(first["CREATED_AT"]).dt.normalize().nunique()))


@dataclass
class MoneyTerms:
    """Per-row estimator terms of every money policy and metric on the evaluation's logged rows."""

    policies: dict[str, np.ndarray]  # name -> (n_first, P) policy matrix
    terms: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]  # (policy, metric) -> (num, den)
    truth: dict[tuple[str, str], float]  # (policy, metric) -> true value per first attempt (world only)
    objective_of: dict[str, str]  # policy -> the objective that ranked it
    per_day: float  # first attempts per day of the window: per-attempt values x this = per day
    days: int
    schedule: FeeSchedule
    objective: Any
    estimator: str


METRICS: tuple[str, ...] = ("approval", "fee_mxn", "net_revenue_mxn")


def money_terms(ev: Any, schedule: FeeSchedule | None = None, objective_cfg: Any = None,
                estimator: str = "DR") -> MoneyTerms:
    """The estimator terms of approval, fee cost (MXN) and net revenue (MXN) per first attempt for
    the static rules, each model family under both objectives, and the oracle (world only).

    A money metric is the approval reward weighted by the money of the processor that approved: the
    logged reward x value(logged processor), the outcome model q̂ x value, the truth x value; so the
    same off-policy estimators (``evaluation._contributions``) and intervals apply unchanged.
    """
    from smartrouter import evaluation as E

    schedule = schedule or default_schedule()
    objective_cfg = objective_cfg if objective_cfg is not None else objective()
    net_cfg = replace(objective_cfg, name="net_revenue") if objective_cfg.name != "net_revenue" else objective_cfg
    appr_cfg = replace(objective_cfg, name="approval")
    first, logged = ev.first, ev.logged
    fees = fee_matrix(first, schedule)  # payment currency
    amount = pd.to_numeric(first["AMOUNT"], errors="coerce").to_numpy(dtype=np.float64)
    fee_mxn = to_report(fees, first["CURRENCY"].to_numpy(dtype=object), schedule)
    net_mxn = to_report(amount[:, None] - fees, first["CURRENCY"].to_numpy(dtype=object), schedule)
    policies = {E.STATIC_RULES: ev.policies[E.STATIC_RULES]}
    q_hat = {E.STATIC_RULES: ev.q_hat[E.STATIC_RULES]}
    objective_of = {E.STATIC_RULES: "static rules"}
    for fam in ev.families:
        prob = ev.family_probs[fam][ev.first_index]
        base = ev.family_policy(fam)
        policies[base] = objective_policy(prob, ev.first_mask, appr_cfg)
        policies[base + NET_REVENUE_SUFFIX] = objective_policy(prob, ev.first_mask, net_cfg, prob * (amount[:, None] - fees))
        q_hat[base] = q_hat[base + NET_REVENUE_SUFFIX] = prob
        objective_of[base], objective_of[base + NET_REVENUE_SUFFIX] = "approval", "net_revenue"
    if ev.truth_matrix is not None and E.ORACLE in ev.policies:
        policies[E.ORACLE], q_hat[E.ORACLE], objective_of[E.ORACLE] = ev.policies[E.ORACLE], ev.q_hat[E.ORACLE], "approval (truth)"
    r = np.arange(len(logged))
    scale = {"approval": np.ones_like(fee_mxn), "fee_mxn": fee_mxn, "net_revenue_mxn": net_mxn}
    terms, truth = {}, {}
    for metric, value in scale.items():
        v = value[logged.rows]
        weighted = replace(logged, reward=logged.reward * v[r, logged.action])
        for name, pi in policies.items():
            contrib = E._contributions(weighted, np.asarray(pi)[logged.rows], np.asarray(q_hat[name])[logged.rows] * v)
            terms[(name, metric)] = contrib[estimator]
            if ev.truth_matrix is not None:
                truth[(name, metric)] = E.true_value(np.asarray(pi)[logged.rows], ev.truth_matrix[logged.rows] * v)
    days = _first_days(first)
    return MoneyTerms(policies=policies, terms=terms, truth=truth, objective_of=objective_of, per_day=len(first) / days,
                      days=days, schedule=schedule, objective=objective_cfg, estimator=estimator)


def _value(num: np.ndarray, den: np.ndarray, level: float) -> tuple[float, float, float]:
    """(estimate, ci_low, ci_high) of a ratio estimate Σnum/Σden, linearized like the paired lifts."""
    from smartrouter.evaluation import _influence

    v, infl = _influence(num, den)
    n = len(num)
    se = float(np.sqrt(infl @ infl / (n - 1) / n)) if n > 1 else float("nan")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return v, v - z * se, v + z * se


def traffic_mix(policy: np.ndarray) -> dict[str, float]:
    """Share of first attempts a policy sends to each processor."""
    share = np.asarray(policy, dtype=np.float64).mean(axis=0) if len(policy) else np.zeros(len(catalog.PROCESSORS))
    return {p: float(s) for p, s in zip(catalog.PROCESSORS, share)}


def evaluate(ev: Any, schedule: FeeSchedule | None = None, objective_cfg: Any = None, estimator: str = "DR",
             level: float = 0.95) -> dict[str, Any]:
    """Plain JSON for evaluation.json["money"]: the objective in force, the schedule, and per policy its
    approval, fee cost and net revenue per day (MXN and USD, estimate with interval, truth on the world),
    its lift over the static rules (paired), and its traffic mix per processor."""
    from smartrouter.evaluation import STATIC_RULES, paired_difference

    mt = money_terms(ev, schedule, objective_cfg, estimator)
    usd = mt.schedule.fx["USD"]
    rows, mix = [], {}
    for name in mt.policies:
        row: dict[str, Any] = {"policy": name, "objective": mt.objective_of[name]}
        for metric in METRICS:
            est, lo, hi = _value(*mt.terms[(name, metric)], level)
            t = mt.truth.get((name, metric))
            if metric == "approval":
                row["approval"] = {"estimate": est, "ci_low": lo, "ci_high": hi, "true": t}
                continue
            key = metric.replace("_mxn", "")
            for cur, k in (("mxn", mt.per_day), ("usd", mt.per_day / usd)):
                row[f"{key}_per_day_{cur}"] = {"estimate": est * k, "ci_low": lo * k, "ci_high": hi * k,
                                               "true": None if t is None else t * k}
        if name != STATIC_RULES:
            row["lift_vs_rules"] = {}
            for metric in METRICS:
                d = paired_difference(mt.terms[(name, metric)], mt.terms[(STATIC_RULES, metric)], level)
                k = 1.0 if metric == "approval" else mt.per_day
                t_a, t_b = mt.truth.get((name, metric)), mt.truth.get((STATIC_RULES, metric))
                key = "approval" if metric == "approval" else metric.replace("_mxn", "") + "_per_day_mxn"
                row["lift_vs_rules"][key] = {"lift": d["lift"] * k, "ci_low": d["ci_low"] * k, "ci_high": d["ci_high"] * k,
                                             "true": None if t_a is None or t_b is None else (t_a - t_b) * k}
        rows.append(row)
        mix[name] = traffic_mix(mt.policies[name][ev.logged.rows])
    from smartrouter.notebook_tools import plain

    return plain({
        "available": True,
        "objective": {"name": mt.objective.name, "floor_pp": mt.objective.floor_pp},
        "schedule": mt.schedule.describe(),
        "estimator": estimator, "level": level, "rows": "first attempts of the test window",
        "days": mt.days, "first_attempts_per_day": mt.per_day,
        "policies": rows, "traffic_mix": mix,
    })


def evaluate_or_note(ev: Any, estimator: str = "DR") -> dict[str, Any]:
    """``evaluate`` with the schedule and objective in force; rows the schedule cannot price (no amount column,
    a card type or currency it lacks) get a note naming why, not an error: approval still gets evaluated.

    A broken fees.toml or routing.toml still fails (the stage must not run on a config nobody meant).
    """
    schedule, obj = default_schedule(), objective()
    missing = [c for c in ("AMOUNT", "CARD_TYPE", "CURRENCY") if c not in ev.first.columns]
    why = f"the evaluated rows lack {', '.join(missing)}" if missing else None
    if why is None:
        try:
            return evaluate(ev, schedule, obj, estimator)
        except ConfigError as exc:  # the data, not the config: fees.toml and routing.toml loaded above
            why = str(exc)
    return {"available": False, "objective": {"name": obj.name, "floor_pp": obj.floor_pp}, "note": f"no money figures: {why}"}


# ---------------------------------------------------------------- reporting helpers
def fmt_money(value: float | None, currency: str = REPORT_CURRENCY, signed: bool = False) -> str:
    """'MXN 1,234,567' (or '+MXN 1,234' with ``signed``); '-' for a missing value."""
    if value is None or not math.isfinite(float(value)):
        return "-"
    sign = ("+" if value >= 0 else "-") if signed else ("-" if value < 0 else "")
    return f"{sign}{currency + ' ' if currency else ''}{abs(float(value)):,.0f}"


def fmt_range(cell: Mapping[str, Any], currency: str = REPORT_CURRENCY, signed: bool = False) -> str:
    """'MXN 1,234 [1,100, 1,350]' for an {estimate, ci_low, ci_high} (or {lift, ...}) cell."""
    v = cell.get("estimate", cell.get("lift"))
    return f"{fmt_money(v, currency, signed)} [{fmt_money(cell.get('ci_low'), '', signed)}, {fmt_money(cell.get('ci_high'), '', signed)}]"


def _metric_key(policy: str) -> str:
    return policy.replace(":", "_").replace("@", "_")


def headline_metrics(money: Mapping[str, Any]) -> dict[str, Any]:
    """Flat {name: value} of the money section for metrics.json: the objective, the examples flag, the USD
    rate (USD = MXN / money_fx_usd) and per policy its fee cost and net revenue per day in MXN (the truth's
    too on the world); the approval of each ``@net_revenue`` policy (the others' is ``value_*`` already).
    Intervals and everything else: evaluation.json["money"]."""
    if not money.get("available"):
        return {"money_objective": money.get("objective", {}).get("name")}
    out: dict[str, Any] = {"money_objective": money["objective"]["name"], "money_floor_pp": money["objective"]["floor_pp"],
                           "money_values_are_examples": money["schedule"]["values_are_examples"],
                           "money_fx_usd": money["schedule"]["fx"]["rates"]["USD"]}
    for row in money["policies"]:
        k = _metric_key(row["policy"])
        if row["policy"].endswith(NET_REVENUE_SUFFIX):
            out[f"approval_{k}"] = row["approval"]["estimate"]
        for name in ("fee_per_day_mxn", "net_revenue_per_day_mxn"):
            out[f"{name}_{k}"] = row[name]["estimate"]
        if row["net_revenue_per_day_mxn"].get("true") is not None:
            out[f"true_net_revenue_per_day_mxn_{k}"] = row["net_revenue_per_day_mxn"]["true"]
    return out


def tables(money: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-policy table, traffic mix in %) for a notebook or a report."""
    rows = []
    for r in money["policies"]:
        rows.append({"policy": r["policy"], "objective": r["objective"],
                     "approval %": round(100 * r["approval"]["estimate"], 2),
                     "approval CI": f"[{100 * r['approval']['ci_low']:.2f}, {100 * r['approval']['ci_high']:.2f}]",
                     "true approval %": None if r["approval"]["true"] is None else round(100 * r["approval"]["true"], 2),
                     "fee cost / day (MXN)": fmt_range(r["fee_per_day_mxn"]),
                     "net revenue / day (MXN)": fmt_range(r["net_revenue_per_day_mxn"]),
                     "net revenue / day (USD)": fmt_range(r["net_revenue_per_day_usd"], "USD"),
                     "true net revenue / day (MXN)": fmt_money(r["net_revenue_per_day_mxn"]["true"])})
    mix = pd.DataFrame(money["traffic_mix"]).T * 100
    return pd.DataFrame(rows).set_index("policy"), mix.round(1)


def sentence(money: Mapping[str, Any], family: str) -> str:
    """One sentence from the numbers: what ranking ``family`` by net revenue changes against ranking it by approval."""
    if not money.get("available"):
        return money.get("note", "no money figures")
    rows = {r["policy"]: r for r in money["policies"]}
    a, n = rows[f"model:{family}"], rows[f"model:{family}{NET_REVENUE_SUFFIX}"]
    mix_a, mix_n = money["traffic_mix"][a["policy"]], money["traffic_mix"][n["policy"]]
    moved = 0.5 * sum(abs(mix_n[p] - mix_a[p]) for p in mix_a)
    gain = n["net_revenue_per_day_mxn"]["estimate"] - a["net_revenue_per_day_mxn"]["estimate"]
    saved = a["fee_per_day_mxn"]["estimate"] - n["fee_per_day_mxn"]["estimate"]
    d_app = 100 * (n["approval"]["estimate"] - a["approval"]["estimate"])
    biggest = max(mix_a, key=lambda p: abs(mix_n[p] - mix_a[p]))
    text = (f"Ranking {family} by net revenue (approval floor {money['objective']['floor_pp']:g} pp) instead of approval "
            f"moves {100 * moved:.1f} % of first attempts (most on {biggest}: {100 * mix_a[biggest]:.1f} % -> "
            f"{100 * mix_n[biggest]:.1f} %), saves {fmt_money(saved)} a day in fees and changes net revenue by "
            f"{fmt_money(gain, signed=True)} a day ({fmt_money(gain / money['schedule']['fx']['rates']['USD'], 'USD', True)}) "
            f"for {d_app:+.2f} pp of approval ({money['estimator']} estimates)")
    if n["approval"].get("true") is not None:
        t_gain = n["net_revenue_per_day_mxn"]["true"] - a["net_revenue_per_day_mxn"]["true"]
        text += (f"; by the truth {fmt_money(t_gain, signed=True)} a day for "
                 f"{100 * (n['approval']['true'] - a['approval']['true']):+.2f} pp")
    text += f". The objective in force is {money['objective']['name']}."
    if money["schedule"]["values_are_examples"]:
        text += " " + EXAMPLE_WARNING[0].upper() + EXAMPLE_WARNING[1:] + "."
    return text


# ---------------------------------------------------------------- the gate the objective adds
def objective_gates(ev: Any, family: str, cfg: Mapping[str, Any], objective_cfg: Any = None) -> list[Any]:
    """Under ``net_revenue``: one ``net_revenue`` gate (nothing under ``approval``).

    The candidate family ranked by net revenue must (1) earn more net revenue per first attempt than
    the static rules -- lower end of the paired interval above ``[net_revenue] min_relative_lift`` x the
    rules' net revenue -- and (2) keep the approval floor as a guardrail: the approval it gives up
    against the same model ranked by approval, paired, must be above −floor_pp at the lower end.
    """
    from smartrouter.evaluation import STATIC_RULES, paired_difference
    from smartrouter.gates import GateResult

    objective_cfg = objective_cfg if objective_cfg is not None else objective()
    if objective_cfg.name != "net_revenue":
        return []
    est, level = cfg["policy_value"]["estimator"], cfg["policy_value"]["level"]
    c = cfg["net_revenue"]
    try:
        mt = money_terms(ev, objective_cfg=objective_cfg, estimator=est)
    except ConfigError as exc:  # rows the schedule cannot price: the objective cannot be judged, so it fails
        return [GateResult(NET_REVENUE_GATE, False, None, None, f"objective net_revenue, but net revenue cannot be "
                           f"judged on the test rows: {exc}")]
    pol = ev.family_policy(family)
    net_pol = pol + NET_REVENUE_SUFFIX
    lift = paired_difference(mt.terms[(net_pol, "net_revenue_mxn")], mt.terms[(STATIC_RULES, "net_revenue_mxn")], level)
    rules_value = _value(*mt.terms[(STATIC_RULES, "net_revenue_mxn")], level)[0]
    need = c["min_relative_lift"] * rules_value
    given = paired_difference(mt.terms[(net_pol, "approval")], mt.terms[(pol, "approval")], level)
    floor = objective_cfg.floor_pp / 100.0
    k = mt.per_day
    problems = []
    if not lift["ci_low"] > need:
        problems.append(f"net revenue over static rules {fmt_money(lift['lift'] * k, signed=True)}/day "
                        f"[{fmt_money(lift['ci_low'] * k, '', True)}, {fmt_money(lift['ci_high'] * k, '', True)}]: "
                        f"lower end not above {fmt_money(need * k, signed=True)}/day")
    if given["ci_low"] < -floor:  # floor 0 and nothing given up ([0, 0]) passes
        problems.append(f"approval vs ranking by approval {100 * given['lift']:+.2f} pp (CI {100 * given['ci_low']:+.2f}.."
                        f"{100 * given['ci_high']:+.2f}): lower end below the floor -{objective_cfg.floor_pp:g} pp")
    text = (f"{net_pol}: net revenue over static rules {fmt_money(lift['lift'] * k, signed=True)}/day "
            f"(95% CI {fmt_money(lift['ci_low'] * k, '', True)}..{fmt_money(lift['ci_high'] * k, '', True)}, "
            f"paired {est}); approval vs ranking by approval {100 * given['lift']:+.2f} pp "
            f"(CI {100 * given['ci_low']:+.2f}..{100 * given['ci_high']:+.2f}, floor -{objective_cfg.floor_pp:g} pp)")
    details = {"objective": objective_cfg.name, "floor_pp": objective_cfg.floor_pp, "net_revenue_lift_per_day_mxn":
               {key: lift[key] * k for key in ("lift", "ci_low", "ci_high")}, "approval_given_up": given,
               "min_relative_lift": c["min_relative_lift"]}
    return [GateResult(NET_REVENUE_GATE, not problems, lift["ci_low"] * k, need * k, "; ".join(problems) or text, details)]
