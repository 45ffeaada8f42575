"""The static-rule optimizer: a better ``VW_ROUTING_MERCHANT_RULE`` table, searched on the logs.

Not every merchant can call a model on the payment path, and every one needs a fallback when the
service is unreachable: a rule table is what a payments manager can read, argue with and sign off.
This module proposes one that the merchant's own rules engine (``smartrouter.rules.RulesEngine``)
loads unchanged, and measures its lift honestly.

How it searches. The objective is the off-policy value (``smartrouter.evaluation``'s estimators:
pooled propensities of the randomized rows, DR with the model as outcome model by default) of the
table's routing on the first attempts of a *search window* (the days before the held-out window),
minus ``row_penalty`` per active row. A rule table routes every payment of one (currency, brand,
card type, candidate set) cell the same way, so each estimator's per-row terms are summed once per
cell and processor; a table's value is then one lookup per cell, with the cell's choice computed by
``policies.rules_choice`` on the engine built from the table's rows -- the same call evaluation
makes, so the search values exactly the routing the engine will do. The search is greedy and starts
from the current table: each step takes the best of "make processor p the first choice of pattern
X" (X any combination of a value or ``*`` per segment column: a new row, or a re-ordering of rows
that are already there) and "drop row r", while the penalized objective improves. It never sees the
model's per-payment argmax: only what a row can express. A row is dropped only when every payment
keeps a first choice and, where it had one, a fallback (the objective sees first choices only, but a
fallback is what failover and retries use).

How it reports. The proposal is evaluated on the held-out window (the run's test split), which the
search never saw, so the reported estimate carries no selection bias: value with a bootstrap
interval, paired lift over the current rules (exact paired interval), per changed segment and per
new or changed row, and on world data the truth (the oracle) beside each estimate.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from smartrouter import atomic, catalog, strict_toml
from smartrouter import evaluation as E
from smartrouter.errors import ConfigError
from smartrouter.policies import P, candidate_mask, greedy_policy, one_hot, rules_choice
from smartrouter.rules import WILDCARD, RulesEngine

CONFIG_PATH = Path(__file__).resolve().parent / "rule_search.toml"
# The columns the rules engine matches on: the only dimensions a row can be specific on.
MATCH_COLUMNS: tuple[str, ...] = ("CURRENCY", "CARD_BRAND", "CARD_TYPE")
SCHEMA: dict[str, dict[str, type]] = {
    "search": {"max_rows": int, "row_penalty": float, "min_z": float, "confirm_days": int, "search_days": int,
               "max_search_rows": int, "min_segment_payments": int, "segments": list, "estimator": str},
    "report": {"level": float, "bootstrap": int, "seed": int},
}
PROPOSAL_FILE = "proposal.json"  # under <state dir>/rules/: the last proposal (diff / export / install read it)
OPTIMIZED_FILE = "optimized.json"  # under <registry>/rules/: the installed table the service's fallback may use
CURRENT, PROPOSED, MODEL = "current_rules", "proposed_rules", "model"


# ---------------------------------------------------------------- configuration
def load_config(path: str | Path | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Settings from rule_search.toml (or ``path``) with ``{section: {key: value}}`` overrides; strict.

    An unknown or missing table or key, a value of the wrong type or out of range is a ConfigError
    naming it and the fix.
    """
    path = Path(path) if path else CONFIG_PATH
    merged = strict_toml.load(path, SCHEMA, what="rule search config", home="src/smartrouter/rule_search.toml",
                              overrides=overrides)
    s, r = merged["search"], merged["report"]
    if s["max_rows"] < 1:
        raise ConfigError(f"max rows {s['max_rows']} must be at least 1: a table without rows routes nothing; use e.g. --max-rows 25")
    unknown = [c for c in s["segments"] if c not in MATCH_COLUMNS]
    if unknown or not s["segments"]:
        raise ConfigError(f"unknown segment column(s) {', '.join(unknown) or '(none given)'}; the rules engine matches on "
                          f"{', '.join(MATCH_COLUMNS)}: use some of those")
    if s["estimator"] not in E.ESTIMATORS:
        raise ConfigError(f"estimator {s['estimator']!r} is unknown; use one of {', '.join(E.ESTIMATORS)}")
    for key in ("search_days", "confirm_days", "min_segment_payments", "max_search_rows"):
        if s[key] < (0 if key in ("min_segment_payments", "max_search_rows") else 1):
            raise ConfigError(f"rule search [search] {key} = {s[key]} is out of range; use a positive number")
    if s["min_z"] < 0:
        raise ConfigError(f"rule search min_z = {s['min_z']} must be >= 0 (standard errors; 2 is a sensible bar)")
    if s["row_penalty"] < 0:
        raise ConfigError(f"rule search row_penalty = {s['row_penalty']} must be >= 0 (a share of approval, 0.0005 = 0.05 pp)")
    if not 0.5 <= r["level"] < 1.0:
        raise ConfigError(f"rule search [report] level {r['level']} must be in [0.5, 1), e.g. 0.95")
    if r["bootstrap"] < 10:
        raise ConfigError(f"rule search [report] bootstrap {r['bootstrap']} is too few resamples; use at least 10 (e.g. 300)")
    return merged


# ---------------------------------------------------------------- logged windows
@dataclass
class LoggedWindow:
    """First attempts of one window, ready for off-policy evaluation of rule tables."""

    frame: pd.DataFrame  # first attempts (reset index): match columns, CREATED_AT, logging columns
    mask: np.ndarray  # (n, P) candidates
    q_hat: np.ndarray  # (n, P) the outcome model's approval probabilities
    logged: E.LoggedData  # pooled propensities against the current (logging) rules
    days: float  # length of the window in days (payments per week = n / days * 7)

    def __len__(self) -> int:
        return len(self.frame)


def logged_window(first: pd.DataFrame, q_hat: np.ndarray, current: RulesEngine) -> LoggedWindow:
    """Wrap first attempts and the model's probabilities on them (the logger's rules are ``current``)."""
    if len(first) == 0:
        raise ConfigError("no logged first attempts in the window; widen the window or build/load the logs first")
    first = first.reset_index(drop=True)
    mask = candidate_mask(first)
    logged = E.logged_data(first, rules_choice(first, current, mask), mode="pooled", mask=mask)
    t = pd.to_datetime(first["CREATED_AT"])
    days = max((t.max() - t.min()).total_seconds() / 86400.0, 1.0)
    return LoggedWindow(first, mask, E._check_matrix("outcome model probabilities", q_hat, len(first)), logged, days)


def split_windows(table: pd.DataFrame, search_days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(search, held-out) first attempts of a feature table: the held-out window is its test split,
    the search window the ``search_days`` days before it."""
    if "SPLIT" not in table.columns:
        raise ConfigError("the feature table has no SPLIT column; use the table the features stage wrote (features.parquet)")
    first = E.first_attempts(table)
    holdout = first[first["SPLIT"] == "test"]
    if holdout.empty:
        raise ConfigError("the feature table has no test split to hold out; run the features stage with test days")
    t = pd.to_datetime(first["CREATED_AT"])
    start = pd.to_datetime(holdout["CREATED_AT"]).min()
    search = first[(first["SPLIT"] != "test") & (t < start) & (t >= start - pd.Timedelta(days=int(search_days)))]
    if search.empty:
        raise ConfigError(f"no logs in the {search_days} days before the held-out window; "
                          "the search needs history before it (a longer lookback)")
    return (search.sort_values("CREATED_AT", kind="mergesort").reset_index(drop=True),
            holdout.sort_values("CREATED_AT", kind="mergesort").reset_index(drop=True))


# ---------------------------------------------------------------- cells: one lookup per table
@dataclass
class Cells:
    """Rows grouped by everything a rule table's choice depends on (segment, rule epoch, candidates)."""

    index: np.ndarray  # (n,) cell of each row
    rep: pd.DataFrame  # one representative row per cell (match columns + CREATED_AT)
    rep_mask: np.ndarray  # (cells, P)
    num: np.ndarray  # (cells, P): Σ of the estimator's numerator terms if the cell's rows all go to p
    den: np.ndarray  # (cells, P): likewise the denominator terms
    size: np.ndarray  # (cells,) rows
    gram: np.ndarray  # (cells, 2P, 2P): Σ z zᵀ of each row's terms z = (num(p) for p, den(p) for p)
    n: int  # evaluated rows

    def choices(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Each cell's processor index under the table ``rows`` (evaluation's own ``rules_choice``)."""
        return rules_choice(self.rep, RulesEngine(list(rows)), self.rep_mask)

    def depth(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """How many processors the table ranks for each cell's payments (first choice + fallbacks)."""
        engine = RulesEngine(list(rows))
        return np.array([len(engine.ranked(r.CURRENCY, r.CARD_BRAND, r.CARD_TYPE, at=r.CREATED_AT))
                         for r in self.rep.itertuples(index=False)])

    def value(self, choice: np.ndarray) -> float:
        c = np.arange(len(choice))
        return float(self.num[c, choice].sum() / self.den[c, choice].sum())

    def lift_se(self, a: np.ndarray, b: np.ndarray) -> float:
        """Standard error of value(a) − value(b) on the same rows: ``evaluation.paired_difference``'s
        (the per-row difference of the two ratio estimates' influences), summed per cell."""
        c = np.arange(len(a))
        coef = np.zeros((len(a), 2 * P))
        for choice, sign in ((a, 1.0), (b, -1.0)):
            total_den = self.den[c, choice].sum()
            v, m = self.num[c, choice].sum() / total_den, total_den / self.n
            np.add.at(coef, (c, choice), sign / m)
            np.add.at(coef, (c, P + choice), -sign * v / m)
        ss = float(np.einsum("ci,cij,cj->", coef, self.gram, coef))
        return math.sqrt(max(ss, 0.0) / (self.n - 1) / self.n) if self.n > 1 else math.nan


def cell_codes(frame: pd.DataFrame, mask: np.ndarray, engine: RulesEngine) -> tuple[np.ndarray, np.ndarray]:
    """(cell of each row, first row of each cell): rows of one cell get the same choice from any table
    whose ACTIVE_FROM instants are among ``engine``'s (a proposal only keeps or drops them)."""
    key = pd.DataFrame({c: frame[c].astype(str).str.upper().to_numpy() for c in MATCH_COLUMNS})
    key["EPOCH"] = engine.epoch_of(frame["CREATED_AT"])
    key["MASK"] = mask @ (1 << np.arange(P))
    codes, _ = pd.MultiIndex.from_frame(key).factorize()
    codes = np.asarray(codes)
    first_row = pd.Series(np.arange(len(codes))).groupby(codes).min().sort_index().to_numpy()
    return codes, first_row


def build_cells(window: LoggedWindow, current: RulesEngine, estimator: str) -> Cells:
    """Group the window's rows into cells and sum the estimator's per-row terms per (cell, processor)."""
    f = window.frame
    codes, first_row = cell_codes(f, window.mask, current)
    rep = f.iloc[first_row][[*MATCH_COLUMNS, "CREATED_AT"]].reset_index(drop=True)
    rep["CREATED_AT"] = pd.to_datetime(rep["CREATED_AT"]).dt.floor("us")  # the engine compares microseconds
    lg = window.logged
    rows_cell = codes[lg.rows]
    k = len(first_row)
    q = window.q_hat[lg.rows]
    n = len(lg)
    z = np.zeros((n, 2 * P))
    for a in range(P):
        pi = np.zeros((n, P))
        pi[:, a] = 1.0
        z[:, a], z[:, P + a] = E._contributions(lg, pi, q)[estimator]
    num = np.stack([np.bincount(rows_cell, z[:, a], minlength=k) for a in range(P)], axis=1)
    den = np.stack([np.bincount(rows_cell, z[:, P + a], minlength=k) for a in range(P)], axis=1)
    order = np.argsort(rows_cell, kind="stable")
    bounds = np.searchsorted(rows_cell[order], np.arange(k + 1))
    gram = np.stack([z[order[bounds[j]:bounds[j + 1]]].T @ z[order[bounds[j]:bounds[j + 1]]] for j in range(k)])
    return Cells(codes, rep, window.mask[first_row], num, den, np.bincount(codes, minlength=k), gram, n)


# ---------------------------------------------------------------- the search
def _pattern(row: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(str(row[c]).upper() for c in MATCH_COLUMNS)


def _normalize(rows: pd.DataFrame | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rule rows as plain dicts with every RULE_COLUMNS key (upper-case names, ids filled in)."""
    from smartrouter.rules import _to_bool

    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else [dict(r) for r in rows]
    out = []
    for i, r in enumerate(records):
        r = {str(k).upper(): v for k, v in r.items()}
        missing = [c for c in ("CURRENCY", "CARD_BRAND", "CARD_TYPE", "PROCESSOR", "PRIORITY") if c not in r]
        if missing:
            raise ConfigError(f"rule row {i + 1} lacks {', '.join(missing)}; pass rows with {', '.join(catalog.RULE_COLUMNS)}")
        at = r.get("ACTIVE_FROM")
        at = None if at is None or (isinstance(at, float) and math.isnan(at)) or pd.isna(at) else pd.Timestamp(at).isoformat()
        out.append({"RULE_ID": int(r.get("RULE_ID", i + 1)), "MERCHANT": str(r.get("MERCHANT", catalog.MERCHANT)),
                    "CURRENCY": str(r["CURRENCY"]).upper(), "CARD_BRAND": str(r["CARD_BRAND"]).upper(),
                    "CARD_TYPE": str(r["CARD_TYPE"]).upper(), "PROCESSOR": str(r["PROCESSOR"]).upper(),
                    "PRIORITY": int(r["PRIORITY"]), "SHADOW_MODE": _to_bool(r.get("SHADOW_MODE", False)),
                    "ACTIVE_FROM": at})
    return out


def _set_first(rows: list[dict[str, Any]], pattern: tuple[str, ...], processor: str, next_id: int) -> list[dict[str, Any]]:
    """``rows`` with ``processor`` first at exactly ``pattern`` (the other rows there keep their order behind it)."""
    same = sorted((r for r in rows if _pattern(r) == pattern), key=lambda r: (r["PRIORITY"], r["RULE_ID"]))
    others = [r for r in rows if _pattern(r) != pattern]
    mine = [r for r in same if r["PROCESSOR"] == processor]
    head = dict(mine[0]) if mine else {"RULE_ID": next_id, "MERCHANT": catalog.MERCHANT, **dict(zip(MATCH_COLUMNS, pattern)),
                                      "PROCESSOR": processor, "PRIORITY": 1, "SHADOW_MODE": False, "ACTIVE_FROM": None}
    ordered = [head] + [dict(r) for r in same if r["PROCESSOR"] != processor]
    for prio, r in enumerate(ordered, start=1):
        r["PRIORITY"] = prio
    return others + ordered


@dataclass
class SearchStep:
    move: str
    rows: int
    value: float  # the search objective's estimated value (no penalty) on the search window
    z: float  # the step's estimated gain over its own standard error (0: no payment re-routed)


@dataclass
class Proposal:
    """The search's result: the proposed active rows and how it got there."""

    rows: list[dict[str, Any]]
    current_rows: list[dict[str, Any]]  # the current table's active rows
    shadow_rows: list[dict[str, Any]]  # the current table's shadow rows (left as they are)
    steps: list[SearchStep]
    search_value_current: float
    search_value_proposed: float
    search_rows: int
    config: dict[str, Any]


def candidate_patterns(window: LoggedWindow, segments: Sequence[str], min_payments: int) -> list[tuple[str, ...]]:
    """Every pattern (a value or '*' per match column; '*' outside ``segments``) covering enough payments."""
    f = window.frame
    values = {c: sorted(set(f[c].astype(str).str.upper())) if c in segments else [] for c in MATCH_COLUMNS}
    key = pd.DataFrame({c: f[c].astype(str).str.upper() for c in MATCH_COLUMNS})
    out = []
    for combo in itertools.product(*[[WILDCARD, *values[c]] for c in MATCH_COLUMNS]):
        hit = np.ones(len(f), dtype=bool)
        for c, v in zip(MATCH_COLUMNS, combo):
            if v != WILDCARD:
                hit &= (key[c] == v).to_numpy()
        if int(hit.sum()) >= min_payments:
            out.append(tuple(combo))
    return out


def propose(search: LoggedWindow, current_rows: pd.DataFrame | Sequence[Mapping[str, Any]],
            config: Mapping[str, Any] | None = None) -> Proposal:
    """Greedy search for a better rule table on ``search`` (see the module docstring)."""
    cfg = dict(config or load_config())
    s = cfg["search"]
    rows_all = _normalize(current_rows)
    if not rows_all:
        raise ConfigError("the current rule table is empty; load the merchant's rules (VW_ROUTING_MERCHANT_RULE) first")
    current = [r for r in rows_all if not r["SHADOW_MODE"]]
    shadow = [r for r in rows_all if r["SHADOW_MODE"]]
    engine = RulesEngine(rows_all)
    cells = build_cells(search, engine, s["estimator"])
    penalty, max_rows = float(s["row_penalty"]), int(s["max_rows"])
    patterns = candidate_patterns(search, s["segments"], int(s["min_segment_payments"]))
    processors = [p for p in catalog.PROCESSORS if search.mask[:, catalog.PROCESSOR_INDEX[p]].any()]
    next_id = max(r["RULE_ID"] for r in rows_all) + 1

    # z grows with the square root of the window: a gain that reaches min_z on confirm_days of
    # payments reaches min_z * sqrt(search days / confirm_days) on the longer search window
    min_z = float(s["min_z"]) * math.sqrt(max(search.days / float(s["confirm_days"]), 1.0))
    table = [dict(r) for r in current]
    # the objective only sees first choices; a fallback row matters when the first processor is down
    # or refuses (failover, retries): every payment keeps a first choice and a fallback if it had them
    required = np.minimum(cells.depth(table), 2)
    choice = cells.choices(table)
    best_v = v0 = cells.value(choice)
    steps = [SearchStep("current table", len(table), v0, 0.0)]
    while True:
        over = len(table) > max_rows  # a current table longer than allowed: shed rows even at a loss
        best: tuple[float, str, list[dict[str, Any]], np.ndarray, float, float] | None = None
        moves: list[tuple[str, list[dict[str, Any]]]] = []
        for r in table:
            rest = [x for x in table if x is not r]
            if rest and (cells.depth(rest) >= required).all():
                moves.append((f"drop {_describe_row(r)}", rest))
        if not over:
            for pat in patterns:
                for proc in processors:
                    new = _set_first(table, pat, proc, next_id)
                    if len(new) <= max_rows and _signature(new) != _signature(table):
                        moves.append((f"{_pattern_words(pat)}: {proc} first", new))
        for name, new in moves:
            ch = cells.choices(new)
            v = cells.value(ch)
            gain, gain_j = v - best_v, v - best_v - penalty * (len(new) - len(table))
            if not over and gain_j <= 1e-12:
                continue
            # a re-routing must beat the noise of its own estimate, not only the penalty (with a few
            # hundred moves tried per step, the best of them by chance alone would otherwise win), and
            # clearly enough that a readout of confirm_days (a shadow week, the held-out window) can confirm it
            z = 0.0
            if (ch != choice).any():
                se = cells.lift_se(ch, choice)
                z = gain / se if se > 0 else math.inf
                if gain > 0 and z < min_z and not over:
                    continue
                if gain < 0 and not over:  # a shorter table never re-routes payments to an estimated loss
                    continue
            if best is None or gain_j > best[0]:
                best = (gain_j, name, new, ch, v, z)
        if best is None:
            break
        _, name, table, choice, best_v, z = best
        if any(r["RULE_ID"] == next_id for r in table):
            next_id += 1
        steps.append(SearchStep(name, len(table), best_v, z))
    if len(table) > max_rows:
        raise ConfigError(f"max rows {max_rows} is too few: {len(table)} rows are needed to keep a first choice and a "
                          f"fallback for every payment; use --max-rows {len(table)} or more")
    table = sorted(table, key=lambda r: (r["CURRENCY"], r["CARD_BRAND"], r["CARD_TYPE"], r["PRIORITY"], r["RULE_ID"]))
    for _, group in itertools.groupby(table, key=_pattern):  # priorities 1..k per pattern: the order is all that counts
        for prio, r in enumerate(group, start=1):
            r["PRIORITY"] = prio
    return Proposal(table, current, shadow, steps, v0, best_v, len(search), cfg)


def _signature(rows: Sequence[Mapping[str, Any]]) -> frozenset:
    return frozenset((_pattern(r), r["PROCESSOR"], r["PRIORITY"], r.get("ACTIVE_FROM")) for r in rows)


_WORDS = {"CREDIT": "credit", "DEBIT": "debit", "PREPAID": "prepaid", "VISA": "Visa", "MASTERCARD": "Mastercard",
          "AMEX": "Amex"}


def _pattern_words(pattern: Sequence[str]) -> str:
    """('USD', 'VISA', 'CREDIT') -> 'USD Visa credit'; wildcards are left out ('all payments' if all are)."""
    words = [_WORDS.get(v, v) for v in pattern if v != WILDCARD]
    return " ".join(words) if words else "all payments"


def _describe_row(r: Mapping[str, Any]) -> str:
    return f"{_pattern_words(_pattern(r))} -> {r['PROCESSOR']} (priority {r['PRIORITY']})"


# ---------------------------------------------------------------- evaluation on the held-out window
@dataclass
class HoldoutReport:
    """The proposal judged on the held-out window (never seen by the search)."""

    values: pd.DataFrame  # policy, estimate, ci_low, ci_high, [true_value, covered]
    lift: dict[str, Any]  # proposed − current (paired): lift, ci_low, ci_high, [true_lift]
    model_lift: dict[str, Any]  # model − current (paired)
    segments: pd.DataFrame  # per changed segment: from, to, payments/week, lift + interval, [true lift]
    rows: pd.DataFrame  # per new or changed proposed row: payments it decides, of them changed, lift + interval
    beyond_rules: pd.DataFrame  # model − proposed by slice the rules cannot express
    n_rows: int
    days: float
    estimator: str
    truth: bool

    def headline(self) -> dict[str, Any]:
        """The numbers the issue asks for, as plain JSON."""
        v = self.values.set_index("policy")
        out: dict[str, Any] = {"estimator": self.estimator, "held_out_rows": self.n_rows, "held_out_days": round(self.days, 2),
                               "value_current": float(v.loc[CURRENT, "estimate"]),
                               "value_proposed": float(v.loc[PROPOSED, "estimate"]),
                               "value_proposed_ci": [float(v.loc[PROPOSED, "ci_low"]), float(v.loc[PROPOSED, "ci_high"])],
                               "lift": self.lift["lift"], "lift_ci": [self.lift["ci_low"], self.lift["ci_high"]],
                               "model_lift": self.model_lift["lift"]}
        if self.truth:
            tp, tc, tm = (float(v.loc[p, "true_value"]) for p in (PROPOSED, CURRENT, MODEL))
            out.update(true_value_proposed=tp, true_value_current=tc, true_lift=tp - tc, true_model_lift=tm - tc,
                       share_of_model_gain=(tp - tc) / (tm - tc) if tm > tc else None,
                       value_error=float(v.loc[PROPOSED, "estimate"]) - tp,
                       value_covered=bool(v.loc[PROPOSED, "covered"]),
                       lift_error=self.lift["lift"] - (tp - tc),
                       lift_covered=bool(self.lift["ci_low"] <= tp - tc <= self.lift["ci_high"]))
        return out


def evaluate(holdout: LoggedWindow, proposal: Proposal, truth_matrix: np.ndarray | None = None) -> HoldoutReport:
    """Value, lift (overall, per segment, per row) of the proposal against the current rules on ``holdout``."""
    cfg = proposal.config
    est, level = cfg["search"]["estimator"], float(cfg["report"]["level"])
    f, mask, q = holdout.frame, holdout.mask, holdout.q_hat
    cur_engine, new_engine = RulesEngine(proposal.current_rows), RulesEngine(proposal.rows)
    cur, new = rules_choice(f, cur_engine, mask), rules_choice(f, new_engine, mask)
    policies = {CURRENT: one_hot(cur), PROPOSED: one_hot(new), MODEL: greedy_policy(q, mask)}
    pv = E.estimate_policies(holdout.logged, policies, q, n_boot=int(cfg["report"]["bootstrap"]),
                             seed=int(cfg["report"]["seed"]), truth_matrix=truth_matrix, level=level)
    values = pv.table[pv.table["estimator"] == est].drop(columns="estimator").reset_index(drop=True)
    lift = pv.lift(PROPOSED, CURRENT, est, level)
    model_lift = pv.lift(MODEL, CURRENT, est, level)
    weeks = holdout.days / 7.0
    changed = cur != new
    truth = None if truth_matrix is None else np.asarray(truth_matrix, dtype=np.float64)
    names = np.array(catalog.PROCESSORS, dtype=object)

    def grouped(labels: np.ndarray) -> pd.DataFrame:
        g = E.lift_by_group(holdout.logged, policies[PROPOSED], policies[CURRENT], q, labels, estimator=est, level=level)
        g = g[g["group"] != ""].reset_index(drop=True)
        if truth is not None:
            r = np.arange(len(f))
            diff = truth[r, new] - truth[r, cur]
            g["true_lift"] = [float(diff[labels == grp].mean()) for grp in g["group"]]
        return g

    seg_label = np.full(len(f), "", dtype=object)
    keys = f[list(MATCH_COLUMNS)].astype(str).apply(lambda c: c.str.upper()).to_numpy()
    for i in np.flatnonzero(changed):
        seg_label[i] = f"{_pattern_words(keys[i])}: {names[cur[i]]} -> {names[new[i]]}"
    segments = grouped(seg_label) if changed.any() else pd.DataFrame(columns=["group", "n", "lift", "ci_low", "ci_high"])
    if len(segments):
        segments["payments_per_week"] = segments["n"] / weeks
        segments = segments.sort_values("n", ascending=False).reset_index(drop=True)

    # which proposed row decides each payment: a row's lift is measured on the payments it re-routes
    codes, first_row = cell_codes(f, mask, RulesEngine(proposal.current_rows + proposal.shadow_rows))
    decider = np.array([new_engine.deciding_rule(*[f.at[i, c] for c in MATCH_COLUMNS], at=pd.Timestamp(f.at[i, "CREATED_AT"]).floor("us"),
                                                 candidates=[catalog.PROCESSORS[j] for j in np.flatnonzero(mask[i])])
                        for i in first_row], dtype=object)[codes]
    old = {(_pattern(r), r["PROCESSOR"], r["PRIORITY"]) for r in proposal.current_rows}
    row_label = np.where(changed, np.array([f"rule {d}" if d is not None else "" for d in decider], dtype=object), "")
    by_row = grouped(row_label) if changed.any() else pd.DataFrame(columns=["group", "n", "lift", "ci_low", "ci_high"])
    row_table = []
    for r in proposal.rows:
        status = "kept" if (_pattern(r), r["PROCESSOR"], r["PRIORITY"]) in old else (
            "new" if r["RULE_ID"] not in {c["RULE_ID"] for c in proposal.current_rows} else "changed")
        if status == "kept":
            continue
        decides = int((decider == r["RULE_ID"]).sum())
        hit = by_row[by_row["group"] == f"rule {r['RULE_ID']}"]
        entry = {"rule_id": r["RULE_ID"], "status": status, "row": _describe_row(r), "decides_per_week": decides / weeks,
                 "rerouted_per_week": float(hit["n"].iloc[0]) / weeks if len(hit) else 0.0}
        for col in ("lift", "ci_low", "ci_high", "true_lift"):
            if col in hit.columns:
                entry[col] = float(hit[col].iloc[0]) if len(hit) else float("nan")
        row_table.append(entry)
    dropped = [r for r in proposal.current_rows if r["RULE_ID"] not in {x["RULE_ID"] for x in proposal.rows}]
    for r in dropped:
        row_table.append({"rule_id": r["RULE_ID"], "status": "dropped", "row": _describe_row(r), "decides_per_week": 0.0,
                          "rerouted_per_week": 0.0})
    beyond = beyond_rules(holdout, policies[MODEL], policies[PROPOSED], est, level, truth)
    return HoldoutReport(values, lift, model_lift, segments, pd.DataFrame(row_table), beyond, len(f), holdout.days, est,
                         truth is not None)


def beyond_rules(holdout: LoggedWindow, pi_model: np.ndarray, pi_rules: np.ndarray, estimator: str, level: float,
                 truth: np.ndarray | None) -> pd.DataFrame:
    """What the model gains over the proposed table by slices a rule row cannot name (card country,
    amount band, customer) and how often it disagrees there."""
    f = holdout.frame
    parts = []
    disagree = pi_model.argmax(1) != pi_rules.argmax(1)
    for name in ("card_country", "amount_band", "customer"):
        labels = E.slice_labels(f, name)
        g = E.lift_by_group(holdout.logged, pi_model, pi_rules, holdout.q_hat, labels, estimator=estimator, level=level)
        g.insert(0, "slice", name)
        g["disagree_share"] = [float(disagree[labels == grp].mean()) for grp in g["group"]]
        if truth is not None:
            diff = (truth * (pi_model - pi_rules)).sum(axis=1)
            g["true_lift"] = [float(diff[labels == grp].mean()) for grp in g["group"]]
        parts.append(g)
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------- one call: table + model -> proposal + report
@dataclass
class Result:
    proposal: Proposal
    report: HoldoutReport
    model_version: str | None = None
    run_dir: str | None = None
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def to_json(self) -> dict[str, Any]:
        from smartrouter.notebook_tools import plain

        p, r = self.proposal, self.report
        return plain({
            "created_at": self.created_at, "model_version": self.model_version, "run_dir": self.run_dir,
            "config": p.config,
            "search": {"rows": p.search_rows, "value_current": p.search_value_current, "value_proposed": p.search_value_proposed,
                       "steps": [vars(s) for s in p.steps]},
            "current_rows": p.current_rows, "shadow_rows": p.shadow_rows, "proposed_rows": p.rows,
            "held_out": {"headline": r.headline(), "values": r.values, "lift": r.lift, "model_lift": r.model_lift,
                         "segments": r.segments, "rows": r.rows, "beyond_rules": r.beyond_rules},
        })


def read_windows(path: Any, config: Mapping[str, Any] | None = None, seed: int = 0) -> pd.DataFrame:
    """What ``run`` reads of a feature table on disk (one file or a folder of parts): the test split and
    the first attempts of the ``search_days`` before it, at most ``[search] max_search_rows`` of them (a
    seeded uniform sample; 0 = all), so the search's memory and time stop growing with the merchant's volume."""
    from smartrouter import features

    cfg = dict(config or load_config())
    holdout = features.read_table(path, filter=features.split_is("test"))
    if holdout.empty:
        raise ConfigError("the feature table has no test split to hold out; run the features stage with test days")
    start = pd.to_datetime(holdout["CREATED_AT"]).min()
    since = start - pd.Timedelta(days=int(cfg["search"]["search_days"]))
    search = features.read_sample(path, max_rows=int(cfg["search"]["max_search_rows"]) or None, seed=seed,
                                  filter=features.first_attempt_rows() & ~features.split_is("test")
                                  & features.created_since(since) & features.created_before(start))
    return pd.concat([search, holdout], ignore_index=True)


def run(table: pd.DataFrame, score: Callable[[pd.DataFrame], np.ndarray], current_rows: pd.DataFrame | Sequence[Mapping[str, Any]],
        *, config: Mapping[str, Any] | None = None, truth: Callable[[pd.DataFrame], np.ndarray] | None = None,
        model_version: str | None = None, run_dir: str | None = None) -> Result:
    """Search on the days before ``table``'s test split, report on the test split.

    ``score(frame) -> (n, P)``: the outcome model's probabilities; ``truth(frame) -> (n, P)`` (world
    only): the oracle's, for the held-out rows.
    """
    cfg = dict(config or load_config())
    rows = _normalize(current_rows)
    if not rows:
        raise ConfigError("the current rule table is empty; load the merchant's rules (VW_ROUTING_MERCHANT_RULE) first")
    engine = RulesEngine(rows)
    search_f, hold_f = split_windows(table, int(cfg["search"]["search_days"]))
    search = logged_window(search_f, score(search_f), engine)
    holdout = logged_window(hold_f, score(hold_f), engine)
    proposal = propose(search, rows, cfg)
    tm = truth(holdout.frame) if truth is not None else None
    return Result(proposal, evaluate(holdout, proposal, tm), model_version, run_dir)


def scorer(model: Any) -> Callable[[pd.DataFrame], np.ndarray]:
    """A serving model as ``run``'s outcome model: (n, P) approval probabilities of feature-table rows."""
    def score(frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(model.score_matrix(model.encoder.transform(frame)), dtype=np.float64)

    return score


def truth_of(oracle: Any, settings: Any = None) -> Callable[[pd.DataFrame], np.ndarray] | None:
    """The world oracle as ``run``'s truth (None without an oracle): it needs the full attempt rows."""
    if oracle is None:
        return None

    def truth(frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(oracle.probability_matrix(E.with_attempt_columns(frame, settings), resolved_only=True))

    return truth


def current_rules(settings: Any = None) -> pd.DataFrame:
    """The merchant's rule rows from the warehouse (sql/routing_rules.sql)."""
    from smartrouter import warehouse

    rows = warehouse.query_frame("routing_rules", {"merchant": catalog.MERCHANT}, settings=settings)
    if rows.empty:
        raise ConfigError(f"no static rules for {catalog.MERCHANT} in {catalog.RULES_VIEW}; load the rules view first")
    return rows


def promoted_run(settings: Any = None, config: Mapping[str, Any] | None = None, with_truth: bool = True) -> Result:
    """``run`` on the promoted model's run: its feature table, its serving model, the warehouse's rules."""
    from smartrouter import features
    from smartrouter.config import load_settings
    from smartrouter.registry import Registry

    settings = settings or load_settings()
    reg = Registry(settings)
    promoted = reg.promoted()
    if promoted is None:
        raise ConfigError(f"no promoted model in {reg.root}; run the daily pipeline first (`smartrouter run`)")
    version, folder = promoted
    info = json.loads((folder / "version.json").read_text())
    run_dir = Path(info.get("run_dir") or Path(settings.runs_dir) / str(info.get("run_id")))
    table_path = run_dir / "features.parquet"
    if not table_path.exists():
        raise ConfigError(f"no logs: {table_path} (the feature table of {version}'s run) does not exist; "
                          "run the daily pipeline again (`smartrouter run`)")
    model = reg.load(version)
    current = current_rules(settings)
    truth = truth_of(E.load_oracle(settings)[0], settings) if with_truth else None
    return run(read_windows(table_path, config), scorer(model), current, config=config, truth=truth,
               model_version=version, run_dir=str(run_dir))


# ---------------------------------------------------------------- where proposals and the installed table live
def proposal_path(settings: Any) -> Path:
    return Path(settings.state_dir) / "rules" / PROPOSAL_FILE


def optimized_path(registry_dir: str | Path) -> Path:
    """The installed optimized table: next to the models, so every host's service finds it."""
    return Path(registry_dir) / "rules" / OPTIMIZED_FILE


def save_proposal(result: Result, settings: Any) -> Path:
    return atomic.write_json(proposal_path(settings), result.to_json())


def load_proposal(settings: Any) -> dict[str, Any]:
    path = proposal_path(settings)
    if not path.is_file():
        raise ConfigError(f"no proposal at {path}; make one first with `smartrouter rules propose`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"{path} is not valid JSON; make a new proposal with `smartrouter rules propose`") from None
    if not isinstance(data, dict) or "proposed_rows" not in data:
        raise ConfigError(f"{path} holds no proposed rows; make a new proposal with `smartrouter rules propose`")
    return data


def export_rows(proposal: Mapping[str, Any], shadow: bool) -> pd.DataFrame:
    """The proposed rows in ``VW_ROUTING_MERCHANT_RULE`` format (catalog.RULE_COLUMNS, in order).

    With ``shadow`` every row carries SHADOW_MODE = TRUE and a RULE_ID after the current table's, so
    the rows can be appended to the merchant's table and shadowed before they act.
    """
    rows = [dict(r) for r in proposal["proposed_rows"]]
    if shadow:
        top = max([r["RULE_ID"] for r in proposal.get("current_rows", []) + proposal.get("shadow_rows", [])] + [0])
        for i, r in enumerate(rows, start=1):
            r["RULE_ID"], r["SHADOW_MODE"] = top + i, True
    frame = pd.DataFrame(rows, columns=list(catalog.RULE_COLUMNS))
    frame["ACTIVE_FROM"] = pd.to_datetime(frame["ACTIVE_FROM"])
    return frame


def install(proposal: Mapping[str, Any], registry_dir: str | Path) -> Path:
    """Write the proposed rows where the service's fallback reads them (atomic: never half-written)."""
    rows = export_rows(proposal, shadow=False)
    RulesEngine(rows)  # refuse a table the engine would not load
    doc = {"installed_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "proposal_created_at": proposal.get("created_at"), "model_version": proposal.get("model_version"),
           "headline": (proposal.get("held_out") or {}).get("headline"),
           "rows": json.loads(rows.to_json(orient="records", date_format="iso"))}
    return atomic.write_json(optimized_path(registry_dir), doc)


def load_optimized(registry_dir: str | Path) -> tuple[RulesEngine | None, str]:
    """(engine, where from) of the installed optimized table, or (None, why not); never raises."""
    path = optimized_path(registry_dir)
    try:
        doc = json.loads(path.read_text())
        rows = doc["rows"]
        return RulesEngine(rows), f"optimized ({path}, installed {doc.get('installed_at')})"
    except FileNotFoundError:
        return None, f"no optimized table at {path} (install one with `smartrouter rules install`)"
    except Exception as exc:  # noqa: BLE001 - a broken file must not stop the service: the merchant's rules serve
        return None, f"optimized table at {path} unusable ({type(exc).__name__}: {exc})"


# ---------------------------------------------------------------- words
def _pp(x: float) -> str:
    return f"{100 * x:+.1f} pp"


def diff_lines(proposal: Mapping[str, Any]) -> list[str]:
    """Old vs proposed, one sentence per changed segment and per new, changed or dropped row."""
    held = proposal.get("held_out") or {}
    head = held.get("headline") or {}
    out = [f"proposal of {proposal.get('created_at')} (model {proposal.get('model_version')}): "
           f"{len(proposal.get('current_rows', []))} active rows -> {len(proposal['proposed_rows'])}; "
           f"held-out {head.get('estimator', 'DR')} lift {_pp(head.get('lift', float('nan')))} "
           f"[{_pp((head.get('lift_ci') or [math.nan])[0])}, {_pp((head.get('lift_ci') or [0, math.nan])[1])}] "
           f"on {head.get('held_out_rows', 0):,} first attempts over {head.get('held_out_days', 0)} days"
           + (f"; true lift {_pp(head['true_lift'])}" if "true_lift" in head else "")]
    segs = held.get("segments") or []
    if segs:
        out.append("Payments that change processor:")
    for s in segs:
        out.append(f"  {s['group'].replace(' -> ', ' → ')}, {_pp(s['lift'])} [{_pp(s['ci_low'])}, {_pp(s['ci_high'])}] "
                   f"on {s['payments_per_week']:,.0f} payments/week"
                   + (f" (true {_pp(s['true_lift'])})" if s.get("true_lift") is not None else ""))
    rows = held.get("rows") or []
    if rows:
        out.append("Rows:")
    for r in rows:
        text = f"  {r['status']:<8} {r['row']}"
        if r["status"] != "dropped" and not r["decides_per_week"]:
            text += ": a fallback only (no payment's first choice comes from it)"
        elif r["status"] != "dropped":
            text += f": decides {r['decides_per_week']:,.0f}/week, re-routes {r['rerouted_per_week']:,.0f}/week"
            if r.get("lift") is not None and not (isinstance(r.get("lift"), float) and math.isnan(r["lift"])):
                text += f", {_pp(r['lift'])} [{_pp(r['ci_low'])}, {_pp(r['ci_high'])}] on those"
        out.append(text)
    if proposal.get("shadow_rows"):
        out.append(f"{len(proposal['shadow_rows'])} shadow row(s) of the current table are left as they are.")
    return out
