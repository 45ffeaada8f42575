"""Evaluation on the held-out future window: model metrics, policy value with off-policy
estimators, and (on world data) the truth check.

Two kinds of rows, on purpose:

* **Model metrics** (per processor head, per family, per slice) use *every* labelled attempt of
  the test window: each head predicts P(approved) of the attempts its processor handled.
* **Policy value** uses *first attempts only* (``NUM_ATTEMPTS_ORDER == 1``): a routing policy is
  the choice of processor for a new payment. Retries follow the retry rules of the logging policy
  (their logged choice depends on the previous attempt), so mixing them in would evaluate a
  different decision problem. Every policy, estimator and truth value below is "approval rate of
  first attempts in the test window".

Off-policy estimation, and why the propensities are *pooled*. The logs come from a mixture of two
loggers: a CONTROL arm that follows the static rules deterministically (logged propensity 1.0)
and an EXPERIMENT arm (share ε, assigned by a hash of the order id, so independent of the
payment) that picks uniformly among the candidates (logged propensity 1/|C|). Using the logged
propensity row by row is biased: a CONTROL row is weighted 1 but only exists for the rules'
choice, so a policy that disagrees with the rules is silently evaluated on the experiment rows
plus a biased share of control rows. Two unbiased options:

* ``mode="experiment"``: use only experiment-arm rows with their logged propensity 1/|C|. Clean,
  but throws away ~90 % of the data.
* ``mode="pooled"`` (default): treat the whole log as drawn from the mixture logger
  μ(a|x) = (1-ε)·1[a = rules(x)] + ε/|C(x)|, which is the true marginal probability of each logged
  action because the arm does not depend on x. All rows are used; a policy that agrees with the
  rules gets weights ≈ 1/(1-ε+ε/|C|) on the many control rows (low variance) and a disagreeing
  choice is supported by the experiment rows (weight |C|/ε). This is the "balanced" multiple-logger
  IPS; ε is the observed share of EXPERIMENT first attempts and rules(x) is the logged choice on
  control rows and the rules engine's choice on experiment rows.

``mode="naive"`` (logged propensity on every row) is kept only to show its bias in the truth check.

Days the routing service served (the live loop, or production after deployment) are not "rules +
uniform ε": the service chose by model, rules, failover or exploration, and logged the probability
of each choice -- 1.0 for a deterministic one, the Thompson-sampling/probe/ramp probability
otherwise, already marginalised over the service's own coin flips. Its rows are recognised by the
``source`` its decision record carries (``ROUTING_SOURCE``; the merchant's logger writes none) or an
``ALGORITHM_TYPE`` that is not one of the merchant logger's, and use that logged propensity when it
is valid (0 < p <= 1; an invalid one counts as 1.0 and is reported). The mixture above is
re-derived for the merchant logger's rows only, with ε their own EXPERIMENT share. When the served
rows hold both A/B arms, ``pooled`` learns the static rules' choice from control rows and every
other choice from treatment rows, each weighted by its logged propensity times its arm's share
(``_split_served_arms`` says why). Off-policy information comes only from rows logged with a
propensity below 1 ("stochastic" rows): a row logged with propensity 1 contributes to IPS/SNIPS only
for a policy that makes the same choice, and DR falls back to its outcome model there.
``logging_summary`` counts those rows and the share of each policy's choices no logger covers
(``unsupported_share``), and says so when a window has too few (exploration switched off leaves
only failover probes and ramps).

Estimators (π = target policy matrix, q̂ = an outcome model's probability matrix, w = π(a|x)/μ(a|x)):
IPS = mean(w·r); SNIPS = Σw·r / Σw; DM = mean Σ_a π(a|x) q̂(x,a); DR = DM + mean(w·(r − q̂(x,a))).
Intervals of one policy's value: 95 % percentile bootstrap with Poisson(1) resampling weights
(vectorized, seeded).

Differences between two policies (``paired_lift``, ``PolicyValues.lift``, ``lift_by_group``): both are
estimated on the SAME rows, so the difference is taken per row and the noise the two share (which
payments were approved, which rows the logger explored) cancels. Every estimator above is a ratio
Σnum/Σden of per-row terms; its linearization (influence) per row is (num − v·den)/mean(den), the
lift's per-row term is the difference of the two policies' influences, and the interval is
lift ± z·sd(difference)/√n. Why this and not the bootstrap: for these sums it is the same
large-sample interval the bootstrap approximates, but exact to compute -- no Monte-Carlo error in the
end a promotion decision reads (the 2.5 % quantile of 300 resamples moves by ~0.15 standard errors
between seeds) -- and two identical policies get exactly [0, 0].
"""

from __future__ import annotations

import math
from statistics import NormalDist
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from smartrouter import catalog
from smartrouter.errors import ConfigError
from smartrouter.models import metrics as M
from smartrouter.policies import P, candidate_mask, greedy_policy, one_hot, processor_index
from smartrouter.world.generate import ALGORITHMS as MERCHANT_LOGGER_ALGORITHMS

ESTIMATORS: tuple[str, ...] = ("IPS", "SNIPS", "DM", "DR")
PROPENSITY_MODES: tuple[str, ...] = ("pooled", "experiment", "naive")
EXPERIMENT_ARM = "EXPERIMENT"
# Below this many exploratory rows any off-policy term's 95 % interval is wider than ±7 pp
# (1.96 · 0.5 / sqrt(200) for a 0/1 reward): the window cannot tell policies apart off-policy.
MIN_STOCHASTIC_ROWS = 200
# A row logged with propensity <= 0.5 is one where the logger chose what it did not prefer (an
# explored, probed or uniformly drawn choice): the rows that inform about alternatives. A row with
# 0.5 < p < 1 is stochastic too, but mostly re-weights the logger's own preferred choice (the
# service logs p = 0.98 on every row routed while a probe of a DOWN processor was possible).
EXPLORATORY_P = 0.5
# The smallest propensity the routing service can log (routing.bandit: an explored choice has at
# least max_share x uniform_floor / |candidates|, ~0.006 with the shipped routing.toml). A smaller
# logged value is a logging fault (e.g. a Monte-Carlo estimate of 0 floored at 1e-6 by an earlier
# service): weighting its row by 1/p would swamp every estimate, so it counts as invalid.
MIN_VALID_PROPENSITY = 1e-3
SLICE_COLUMNS: dict[str, str] = {
    "brand": "CARD_BRAND",
    "currency": "CURRENCY",
    "card_type": "CARD_TYPE",
    "card_country": "CARD_COUNTRY",
    "amount_band": "AMOUNT",
    "customer": "IS_RETURNING_CUSTOMER",
}
TOP_COUNTRIES = 5


# ---------------------------------------------------------------- small helpers
def first_attempts(frame: pd.DataFrame) -> pd.DataFrame:
    """The first attempt of each order (the rows policy value is measured on)."""
    if "NUM_ATTEMPTS_ORDER" not in frame.columns:
        return frame
    return frame[pd.to_numeric(frame["NUM_ATTEMPTS_ORDER"], errors="coerce").fillna(1).astype(int) == 1]


def logged_probability(prob_matrix: np.ndarray, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(p of the logged processor, logged processor index) per row."""
    idx = processor_index(frame["PROCESSOR"])
    if (idx < 0).any():
        bad = sorted(set(frame["PROCESSOR"][idx < 0].astype(str)))[:5]
        raise ConfigError(f"unknown PROCESSOR values {bad}; every row must name one of {catalog.PROCESSORS}")
    return np.asarray(prob_matrix, dtype=np.float64)[np.arange(len(idx)), idx], idx


def _check_matrix(name: str, matrix: np.ndarray, n: int) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (n, P):
        raise ConfigError(f"{name} has shape {matrix.shape}; expected ({n}, {P}) = (rows, catalog.PROCESSORS)")
    if not np.isfinite(matrix).all():
        raise ConfigError(f"{name} contains NaN or infinite values; score every processor with finite probabilities")
    return matrix


def _curve_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (tp, fp) at each distinct threshold, highest first, plus totals (numpy; no sklearn import)."""
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    last = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]  # end of each tie group
    tp = np.cumsum(ys)[last]
    fp = (last + 1) - tp
    return tp, fp, tp[-1:], fp[-1:]


def _pr_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision (area under the precision-recall step curve), as sklearn defines it."""
    y = (np.asarray(y) > 0.5).astype(np.float64)
    if y.min(initial=1) == y.max(initial=0):
        return float("nan")
    tp, fp, P_, _ = _curve_points(y, np.asarray(p, dtype=np.float64))
    precision = tp / (tp + fp)
    recall = tp / P_
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _metric_row(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    row: dict[str, Any] = M.summary(y, p) if len(y) else {"n": 0, "auc": float("nan"), "ece": float("nan"),
                                                         "brier": float("nan"), "logloss": float("nan"),
                                                         "rate": float("nan"), "mean_p": float("nan")}
    row["pr_auc"] = _pr_auc(y, p) if len(y) else float("nan")
    pred = p >= threshold
    yb = y > 0.5
    row.update(tp=int((pred & yb).sum()), fp=int((pred & ~yb).sum()), tn=int((~pred & ~yb).sum()),
               fn=int((~pred & yb).sum()), positives=int(yb.sum()))
    return row


# ---------------------------------------------------------------- model metrics
def head_metrics(frame: pd.DataFrame, prob_matrix: np.ndarray, threshold: float = 0.5) -> pd.DataFrame:
    """Per processor head (rows that processor handled) + ``ALL``: n, AUC, PR-AUC, log loss, Brier, ECE, confusion."""
    y = frame["APPROVED"].to_numpy(dtype=np.float64)
    p, idx = logged_probability(_check_matrix("prob_matrix", prob_matrix, len(frame)), frame)
    rows = []
    for j, name in enumerate(catalog.PROCESSORS):
        sel = idx == j
        rows.append({"processor": name, **_metric_row(y[sel], p[sel], threshold)})
    rows.append({"processor": "ALL", **_metric_row(y, p, threshold)})
    return pd.DataFrame(rows)


def slice_labels(frame: pd.DataFrame, slice_name: str) -> np.ndarray:
    """Label of each row in slice dimension ``slice_name`` (one of SLICE_COLUMNS)."""
    col = SLICE_COLUMNS.get(slice_name)
    if col is None:
        raise ConfigError(f"unknown slice {slice_name!r}; use one of {', '.join(SLICE_COLUMNS)}")
    if col not in frame.columns:
        return np.full(len(frame), "n/a", dtype=object)
    values = frame[col]
    if slice_name == "amount_band":
        # bands within each currency (a peso amount and a dollar amount are not comparable)
        out = np.empty(len(frame), dtype=object)
        amt = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        cur = frame["CURRENCY"].astype(str).to_numpy() if "CURRENCY" in frame.columns else np.full(len(frame), "")
        for c in np.unique(cur):
            sel = cur == c
            q25, q75, q95 = np.nanquantile(amt[sel], [0.25, 0.75, 0.95]) if sel.any() else (0, 0, 0)
            band = np.where(amt[sel] < q25, "low (<p25)", np.where(amt[sel] < q75, "mid (p25-p75)",
                            np.where(amt[sel] < q95, "high (p75-p95)", "top (>=p95)")))
            out[sel] = band
        return out
    if slice_name == "customer":
        return np.where(values.astype(bool).to_numpy(), "returning", "new").astype(object)
    labels = values.astype(str).to_numpy().astype(object)
    if slice_name == "card_country":
        top = values.astype(str).value_counts().index[:TOP_COUNTRIES]
        labels = np.where(np.isin(labels, top), labels, "OTHER").astype(object)
    return labels


def slice_metrics(frame: pd.DataFrame, prob_matrix: np.ndarray, min_rows: int = 500,
                  threshold: float = 0.5) -> pd.DataFrame:
    """Metrics of the logged processor's probability per slice; ``small`` flags slices under ``min_rows``."""
    y = frame["APPROVED"].to_numpy(dtype=np.float64)
    p, _ = logged_probability(_check_matrix("prob_matrix", prob_matrix, len(frame)), frame)
    rows = []
    for name in SLICE_COLUMNS:
        labels = slice_labels(frame, name)
        for value in sorted(set(labels.tolist()), key=str):
            sel = labels == value
            rows.append({"slice": name, "value": str(value), **_metric_row(y[sel], p[sel], threshold),
                         "small": bool(sel.sum() < min_rows)})
    return pd.DataFrame(rows)


def curves(frame: pd.DataFrame, prob_matrix: np.ndarray, points: int = 101, bins: int = M.ECE_BINS) -> dict[str, Any]:
    """Plot data per processor head: ROC (fpr, tpr), PR (recall, precision), reliability (mean p, rate)."""
    y = frame["APPROVED"].to_numpy(dtype=np.float64)
    p, idx = logged_probability(_check_matrix("prob_matrix", prob_matrix, len(frame)), frame)
    out: dict[str, Any] = {}
    for j, name in enumerate(catalog.PROCESSORS):
        sel = idx == j
        ys, ps = y[sel], p[sel]
        if len(np.unique(ys)) < 2:
            continue
        tp, fp, pos, neg = _curve_points(ys, ps)
        fpr, tpr = np.r_[0.0, fp / neg], np.r_[0.0, tp / pos]
        rec, prec = tp / pos, tp / (tp + fp)
        grid = np.linspace(0, 1, points)
        order = np.argsort(ps, kind="mergesort")
        parts = np.array_split(order, min(bins, len(order)))
        out[name] = {
            "roc": {"fpr": grid.tolist(), "tpr": np.interp(grid, fpr, tpr).tolist()},
            "pr": {"recall": grid.tolist(), "precision": np.interp(grid, rec, prec).tolist()},
            "reliability": {"mean_p": [float(ps[b].mean()) for b in parts], "rate": [float(ys[b].mean()) for b in parts],
                            "n": [int(len(b)) for b in parts]},
        }
    return out


# ---------------------------------------------------------------- off-policy evaluation
@dataclass
class LoggedData:
    """The logged bandit feedback policy value is estimated from (first attempts)."""

    action: np.ndarray  # (n,) logged processor index
    reward: np.ndarray  # (n,) 1 = approved
    propensity: np.ndarray  # (n,) μ(a|x) used by the estimators (depends on mode)
    mask: np.ndarray  # (n, P) candidates
    rows: np.ndarray  # (n,) positions in the frame these rows came from
    mode: str
    experiment_share: float
    # (n,) whether the routing service logged the row (its own propensity) -- None: not known
    served: np.ndarray | None = None
    # (n,) whether the row's logger randomised (valid logged propensity < 1) -- None: not known
    stochastic: np.ndarray | None = None
    invalid_propensities: int = 0  # served rows whose logged propensity was missing or outside (0, 1]
    # (n,) logged propensity <= EXPLORATORY_P: the logger tried what it did not prefer -- None: not known
    exploratory: np.ndarray | None = None
    # served rows split by A/B arm (see logged_data): per row "control" / "treatment" / "" (not split),
    # the arm's share among the split rows, and the static rules' choice
    arm: np.ndarray | None = None
    arm_share: np.ndarray | None = None
    rules: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.action)


def logged_data(frame: pd.DataFrame, rules_idx: np.ndarray | None = None, mode: str = "pooled",
                experiment_share: float | None = None, mask: np.ndarray | None = None) -> LoggedData:
    """Build the logged data of ``frame`` (already restricted to first attempts) for ``mode``.

    ``rules_idx``: the static rules' choice per row (``policies.rules_choice``); needed by ``pooled``
    when the frame holds rows of the merchant's logger. Rows the routing service logged use its
    logged propensity (see the module docstring).
    """
    if mode not in PROPENSITY_MODES:
        raise ConfigError(f"propensity mode {mode!r} is unknown; use one of {', '.join(PROPENSITY_MODES)}")
    n = len(frame)
    if n == 0:
        raise ConfigError("no rows to evaluate policies on; widen the test window or check the feature table")
    mask = candidate_mask(frame) if mask is None else mask
    action = processor_index(frame["PROCESSOR"])
    reward = frame["APPROVED"].to_numpy(dtype=np.float64)
    arm = frame["EXPERIMENT_ARM"].astype(str).str.upper().to_numpy() if "EXPERIMENT_ARM" in frame.columns else np.full(n, "CONTROL")
    served = served_rows(frame)
    is_exp = (arm == EXPERIMENT_ARM) & ~served
    logged_p = pd.to_numeric(frame["PROPENSITY"], errors="coerce").to_numpy(dtype=np.float64) if "PROPENSITY" in frame.columns else np.ones(n)
    valid = np.isfinite(logged_p) & (logged_p >= MIN_VALID_PROPENSITY) & (logged_p <= 1)
    # an invalid propensity on a served row (a logging fault) counts as a deterministic choice: a
    # guessed or implausibly small value would give the row an arbitrary, possibly huge, weight
    served_p = np.where(valid, logged_p, 1.0)
    stochastic = valid & (logged_p < 1.0)
    exploratory = valid & (logged_p <= EXPLORATORY_P)
    invalid = int((served & ~valid).sum())
    merchant = ~served
    eps = (float(is_exp[merchant].mean()) if merchant.any() else 0.0) if experiment_share is None else float(experiment_share)
    rows = np.arange(n)
    k = mask.sum(axis=1).clip(min=1)
    if mode == "naive":
        prop = np.where(served, served_p, logged_p)
    elif mode == "experiment":
        if not is_exp.any():
            raise ConfigError("no EXPERIMENT-arm rows in the window: the experiment estimator needs the randomized arm; use mode='pooled'")
        rows = np.flatnonzero(is_exp)
        prop = np.where(np.isfinite(logged_p) & (logged_p > 0), logged_p, 1.0 / k)
    else:
        prop = served_p.copy()
        if merchant.any():
            if rules_idx is None:
                raise ConfigError("pooled propensities need the static rules' choice per row (policies.rules_choice)")
            rules_idx = np.asarray(rules_idx)
            # on control rows the logged action IS the logging rules' choice (at that time)
            logging_rule = np.where(is_exp, rules_idx, action)
            mixture = (1.0 - eps) * (action == logging_rule) + eps / k
            prop[merchant] = mixture[merchant]
    split, share = _split_served_arms(arm, served, action, rules_idx) if mode != "naive" else (np.full(n, ""), np.ones(n))
    if mode == "pooled":
        # each action is learnt from ONE arm: the rules' choice from control rows, any other choice
        # from treatment rows; a row whose action belongs to the other arm gets no weight (infinite
        # propensity) and the arm's share turns the arm's mean into a population mean
        ctrl, treat = split == "control", split == "treatment"
        is_rules = action == np.asarray(rules_idx) if (ctrl | treat).any() else np.zeros(n, dtype=bool)
        own = (ctrl & is_rules) | (treat & ~is_rules)
        prop = np.where(ctrl | treat, np.where(own, share * prop, np.inf), prop)
    return LoggedData(action=action[rows], reward=reward[rows], propensity=np.asarray(prop, dtype=np.float64)[rows],
                      mask=mask[rows], rows=rows, mode=mode, experiment_share=eps, served=served[rows],
                      stochastic=stochastic[rows], invalid_propensities=invalid, exploratory=exploratory[rows],
                      arm=split[rows], arm_share=share[rows],
                      rules=None if rules_idx is None else np.asarray(rules_idx)[rows])


def _split_served_arms(arm: np.ndarray, served: np.ndarray, action: np.ndarray,
                       rules_idx: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(arm label, arm share) per row for served rows of an A/B test with both arms present, else ("", 1).

    Why: the service's control arm routes by the static rules deterministically (propensity 1), so
    on its own it says nothing about any other choice, and the treatment arm rarely picks the rules'
    choice where the model disagrees. The arm is drawn by a hash of the order, independently of the
    payment, so each arm is a random sample of the same payments: learning the rules' choice from
    control rows and every other choice from treatment rows (each divided by its arm's share) is
    unbiased wherever the arm that owns an action can pick it -- without the treatment's
    probabilities on control rows, which the logs do not hold.
    """
    from smartrouter.routing.experiment import CONTROL, TREATMENT

    n = len(arm)
    label = np.full(n, "", dtype=object)
    share = np.ones(n)
    low = np.char.lower(arm.astype(str))
    ctrl, treat = served & (low == CONTROL), served & (low == TREATMENT)
    if not (ctrl.any() and treat.any()):
        return label, share
    if rules_idx is None:
        raise ConfigError("served rows of both A/B arms need the static rules' choice per row (policies.rules_choice)")
    both = int(ctrl.sum() + treat.sum())
    label[ctrl], label[treat] = "control", "treatment"
    share[ctrl], share[treat] = ctrl.sum() / both, treat.sum() / both
    return label, share


def served_rows(frame: pd.DataFrame) -> np.ndarray:
    """(n,) True where the routing service made the logged decision (its record names a ``source``,
    or the algorithm is not one of the merchant logger's), False for the merchant's own logger."""
    n = len(frame)
    out = np.zeros(n, dtype=bool)
    if "ROUTING_SOURCE" in frame.columns:
        src = frame["ROUTING_SOURCE"]
        out |= (src.notna() & (src.astype(str).str.strip() != "")).to_numpy()
    if "ALGORITHM_TYPE" in frame.columns:
        algo = frame["ALGORITHM_TYPE"]
        known = algo.isna() | algo.astype(str).str.upper().isin(MERCHANT_LOGGER_ALGORITHMS)
        out |= ~known.to_numpy()
    return out


def logging_summary(logged: LoggedData, policies: Mapping[str, np.ndarray] | None = None,
                    min_stochastic: int = MIN_STOCHASTIC_ROWS) -> dict[str, Any]:
    """How much off-policy information the evaluated rows hold, as plain JSON.

    Keys: n_rows, n_served, n_stochastic (logged propensity < 1: the rows OPE learns off-policy
    from), stochastic_share, n_stochastic_served, n_exploratory (propensity <= EXPLORATORY_P: the
    logger tried a choice it did not prefer), invalid_propensities, few_stochastic (fewer than
    ``min_stochastic`` exploratory rows), note, and with
    ``policies`` (name -> (n_frame, P) matrices) ``unsupported_share``: per policy, the share of its
    probability mass on rows logged with propensity 1 and another choice -- IPS/SNIPS see nothing
    there, DR only its outcome model.
    """
    n = len(logged)
    served = logged.served if logged.served is not None else np.zeros(n, dtype=bool)
    stoch = logged.stochastic if logged.stochastic is not None else logged.propensity < 1.0
    n_stoch = int(stoch.sum())
    explo = logged.exploratory if logged.exploratory is not None else logged.propensity <= EXPLORATORY_P
    n_explo = int(explo.sum())
    few = n_explo < min_stochastic
    out: dict[str, Any] = {
        "n_rows": n, "n_served": int(served.sum()), "n_stochastic": n_stoch,
        "stochastic_share": n_stoch / n if n else float("nan"), "n_stochastic_served": int((stoch & served).sum()),
        "n_exploratory": n_explo, "invalid_propensities": int(logged.invalid_propensities), "few_stochastic": bool(few),
    }
    head = (f"{n_stoch} of {n} evaluated rows ({100.0 * n_stoch / n:.1f} %) were logged with a propensity below 1, "
            f"{n_explo} of them at most {EXPLORATORY_P:g} (the logger tried a choice it did not prefer)")
    if few:
        out["note"] = (f"{head}: fewer than {min_stochastic} exploratory rows, so little off-policy information -- "
                       "IPS/SNIPS only see rows where a policy makes the logged choice, DR rests on its outcome model "
                       "elsewhere; is exploration switched off ([exploration].enabled in routing.toml)?")
    else:
        out["note"] = f"{head}: the rows off-policy estimates learn from"
    if logged.invalid_propensities:
        out["note"] += (f"; {logged.invalid_propensities} served row(s) had no valid propensity in "
                        f"[{MIN_VALID_PROPENSITY:g}, 1] and were counted as deterministic")
    if policies is not None:
        out["unsupported_share"] = {name: unsupported_share(logged, matrix) for name, matrix in policies.items()}
    return out


def unsupported_share(logged: LoggedData, policy: np.ndarray) -> float:
    """Share of ``policy``'s probability mass (over the evaluated rows) that no logger could have chosen.

    A deterministic row (logged propensity 1) covers only its logged choice; a stochastic row is
    taken to cover every candidate. For served rows split by A/B arm the rules' choice is covered by
    control and every other choice by treatment, so each arm's rows measure its own part (divided by
    the arm's share: each arm is a random sample of the payments). The merchant logger's pooled
    mixture covers every candidate when ε > 0.
    """
    n = len(logged)
    if not n:
        return float("nan")
    r = np.arange(n)
    pi = np.asarray(policy, dtype=np.float64)[logged.rows]
    stoch = logged.stochastic if logged.stochastic is not None else logged.propensity < 1.0
    det = ~stoch
    pi_a = pi[r, logged.action]
    u = det * (1.0 - pi_a)
    if logged.served is not None and logged.mode == "pooled":
        u = np.where(~logged.served & (logged.experiment_share > 0), 0.0, u)
    if logged.arm is not None and logged.rules is not None and logged.mode == "pooled":
        ctrl, treat = logged.arm == "control", logged.arm == "treatment"
        pi_rules = pi[r, logged.rules]
        is_rules = logged.action == logged.rules
        # treatment owns every choice but the rules': uncovered = mass off its logged choice and off the rules
        u_t = det * (1.0 - pi_a - np.where(is_rules, 0.0, pi_rules))
        # control owns the rules' choice: uncovered only when it deterministically chose something else
        u_c = det * np.where(is_rules, 0.0, pi_rules)
        u = np.where(treat, u_t / logged.arm_share, np.where(ctrl, u_c / logged.arm_share, u))
    return float(np.clip(u, 0.0, None).mean())


def _contributions(logged: LoggedData, pi: np.ndarray, q_hat: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-row (numerator, denominator) of each estimator; the estimate is Σnum / Σden."""
    n = len(logged)
    r = np.arange(n)
    w = pi[r, logged.action] / logged.propensity
    dm = (pi * q_hat).sum(axis=1)
    ones = np.ones(n)
    return {
        "IPS": (w * logged.reward, ones),
        "SNIPS": (w * logged.reward, w),
        "DM": (dm, ones),
        "DR": (dm + w * (logged.reward - q_hat[r, logged.action]), ones),
    }


def poisson_bootstrap(num: np.ndarray, den: np.ndarray, n_boot: int = 300, seed: int = 0,
                      chunk: int = 50) -> np.ndarray:
    """(n_boot, K) bootstrap replicates of Σnum_k/Σden_k with Poisson(1) row weights (same weights for all k)."""
    num = np.atleast_2d(num)
    den = np.atleast_2d(den)
    rng = np.random.default_rng(seed)
    n = num.shape[1]
    out = np.empty((n_boot, num.shape[0]))
    stacked = np.vstack([num, den]).T  # (n, 2K)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        weights = rng.poisson(1.0, size=(b, n)).astype(np.float64)
        sums = weights @ stacked
        k = num.shape[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + b] = sums[:, :k] / sums[:, k:]
    return out


@dataclass
class PolicyValues:
    """Estimates, intervals and bootstrap replicates for a set of policies on one logged data set."""

    table: pd.DataFrame  # policy, estimator, estimate, ci_low, ci_high, [true_value, error, covered]
    replicates: dict[tuple[str, str], np.ndarray]  # (policy, estimator) -> (n_boot,)
    point: dict[tuple[str, str], float]
    n_rows: int
    mode: str
    experiment_share: float
    truth: dict[str, float] = field(default_factory=dict)
    # logging_summary of the rows: stochastic (off-policy-informative) rows, unsupported shares, note
    logging: dict[str, Any] = field(default_factory=dict)
    # (policy, estimator) -> per-row (numerator, denominator) terms, for paired differences
    terms: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def estimate(self, policy: str, estimator: str = "DR") -> float:
        return self.point[(policy, estimator)]

    def lift(self, policy: str, baseline: str, estimator: str = "DR", level: float = 0.95) -> dict[str, Any]:
        """Paired difference policy − baseline on the same rows with its interval (and the true lift when known)."""
        missing = [k for k in ((policy, estimator), (baseline, estimator)) if k not in self.terms]
        if missing:
            raise ConfigError(f"no per-row terms for {missing}: evaluate these policies with estimate_policies "
                              "(an evaluation.pkl from older code: re-run the 04_evaluate stage)")
        out = {"policy": policy, "baseline": baseline, "estimator": estimator,
               **paired_difference(self.terms[(policy, estimator)], self.terms[(baseline, estimator)], level)}
        if policy in self.truth and baseline in self.truth:
            out["true_lift"] = self.truth[policy] - self.truth[baseline]
        return out

    def lift_table(self, baseline: str, estimator: str = "DR") -> pd.DataFrame:
        """Every policy's paired lift over ``baseline``."""
        names = list(dict.fromkeys(self.table["policy"]))
        return pd.DataFrame([self.lift(p, baseline, estimator) for p in names if p != baseline])


def true_value(pi: np.ndarray, truth_matrix: np.ndarray) -> float:
    """True approval rate of a policy: mean over rows of Σ_a π(a|x) · P_true(x, a)."""
    return float((np.asarray(pi) * np.asarray(truth_matrix)).sum(axis=1).mean())


def estimate_policies(logged: LoggedData, policies: Mapping[str, np.ndarray],
                      q_hat: np.ndarray | Mapping[str, np.ndarray], *, n_boot: int = 300, seed: int = 0,
                      truth_matrix: np.ndarray | None = None, level: float = 0.95) -> PolicyValues:
    """IPS, SNIPS, DM and DR estimates of each policy's value, with bootstrap intervals.

    ``policies`` maps a name to its (n_frame, P) matrix over the *frame's* rows (the logged data
    picks its rows); ``q_hat`` is one outcome model for all policies or one per policy name (a
    model's greedy policy is best paired with its own model). With ``truth_matrix`` (world only)
    the table also holds each policy's true value, the estimate's error and interval coverage.
    """
    if not policies:
        raise ConfigError("no policies to evaluate; pass at least the static rules")
    names = list(policies)
    nums, dens, keys = [], [], []
    terms: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    point: dict[tuple[str, str], float] = {}
    truth: dict[str, float] = {}
    for name in names:
        pi = np.asarray(policies[name], dtype=np.float64)[logged.rows]
        q = q_hat[name] if isinstance(q_hat, Mapping) else q_hat
        q = np.asarray(q, dtype=np.float64)[logged.rows]
        if pi.shape != (len(logged), P) or q.shape != pi.shape:
            raise ConfigError(f"policy {name!r} or its outcome model does not cover the evaluated rows with {P} processors")
        for est, (num, den) in _contributions(logged, pi, q).items():
            nums.append(num)
            dens.append(den)
            keys.append((name, est))
            terms[(name, est)] = (num, den)
            point[(name, est)] = float(num.sum() / den.sum()) if den.sum() > 0 else float("nan")
        if truth_matrix is not None:
            truth[name] = true_value(pi, np.asarray(truth_matrix, dtype=np.float64)[logged.rows])
    reps = poisson_bootstrap(np.vstack(nums), np.vstack(dens), n_boot=n_boot, seed=seed)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    rows = []
    replicates = {}
    for k, key in enumerate(keys):
        replicates[key] = reps[:, k]
        lo, hi = np.nanquantile(reps[:, k], [lo_q, hi_q])
        row = {"policy": key[0], "estimator": key[1], "estimate": point[key], "ci_low": float(lo), "ci_high": float(hi)}
        if truth:
            t = truth[key[0]]
            row.update(true_value=t, error=point[key] - t, covered=bool(lo <= t <= hi))
        rows.append(row)
    return PolicyValues(table=pd.DataFrame(rows), replicates=replicates, point=point, n_rows=len(logged),
                        mode=logged.mode, experiment_share=logged.experiment_share, truth=truth, terms=terms,
                        logging=logging_summary(logged, policies))


def _influence(num: np.ndarray, den: np.ndarray) -> tuple[float, np.ndarray]:
    """(value, per-row influence) of the ratio estimate Σnum/Σden: value − truth ≈ mean(influence)."""
    total = float(den.sum())
    if not len(num) or total <= 0:
        return float("nan"), np.full(len(num), np.nan)
    value = float(num.sum()) / total
    return value, (num - value * den) / (total / len(den))


def paired_difference(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray],
                      level: float = 0.95) -> dict[str, Any]:
    """Lift a − b of two ratio estimates over the SAME rows, from their per-row (num, den) terms.

    The one definition of a paired interval (see the module docstring): lift ± z·se with se the
    standard error of the per-row difference of the two influences. Keys: lift, se, ci_low,
    ci_high, n, level. NaN when either estimate is undefined (no weight on the rows).
    """
    if not 0.0 < level < 1.0:
        raise ConfigError(f"interval level {level!r} must lie strictly between 0 and 1 (e.g. 0.95)")
    (num_a, den_a), (num_b, den_b) = a, b
    if not (len(num_a) == len(den_a) == len(num_b) == len(den_b)):
        raise ConfigError("a paired difference needs both policies' terms on the same rows; got different lengths")
    n = len(num_a)
    va, ia = _influence(np.asarray(num_a, dtype=np.float64), np.asarray(den_a, dtype=np.float64))
    vb, ib = _influence(np.asarray(num_b, dtype=np.float64), np.asarray(den_b, dtype=np.float64))
    d = ia - ib
    # each influence sums to zero, so Σd² / (n − 1) is the sample variance of the per-row difference
    se = float(math.sqrt(float(d @ d) / (n - 1) / n)) if n > 1 else float("nan")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    lift = va - vb
    return {"lift": lift, "se": se, "ci_low": lift - z * se, "ci_high": lift + z * se, "n": n, "level": level}


def paired_lift(logged: LoggedData, pi_a: np.ndarray, q_a: np.ndarray, pi_b: np.ndarray, q_b: np.ndarray, *,
                estimator: str = "DR", level: float = 0.95) -> dict[str, Any]:
    """Value of policy a − policy b on the same logged rows (each with its own outcome model), paired.

    ``pi_*``/``q_*`` are (n_frame, P) matrices over the frame's rows, like ``estimate_policies`` takes.
    """
    if estimator not in ESTIMATORS:
        raise ConfigError(f"estimator {estimator!r} is unknown; use one of {', '.join(ESTIMATORS)}")
    terms = []
    for name, pi, q in (("a", pi_a, q_a), ("b", pi_b, q_b)):
        pi = np.asarray(pi, dtype=np.float64)[logged.rows]
        q = np.asarray(q, dtype=np.float64)[logged.rows]
        if pi.shape != (len(logged), P) or q.shape != pi.shape:
            raise ConfigError(f"policy {name} or its outcome model does not cover the evaluated rows with {P} processors")
        terms.append(_contributions(logged, pi, q)[estimator])
    return {"estimator": estimator, **paired_difference(terms[0], terms[1], level)}


def lift_by_group(logged: LoggedData, pi_a: np.ndarray, pi_b: np.ndarray, q_hat: np.ndarray, groups: np.ndarray,
                  *, estimator: str = "DR", level: float = 0.95, min_rows: int = 0) -> pd.DataFrame:
    """Per group (slice value or time fold): value of policy a − policy b with a paired interval.

    ``groups`` labels the frame's rows; groups with fewer than ``min_rows`` logged rows are flagged ``small``.
    """
    g = np.asarray(groups, dtype=object)[logged.rows]
    pa = np.asarray(pi_a, dtype=np.float64)[logged.rows]
    pb = np.asarray(pi_b, dtype=np.float64)[logged.rows]
    q = np.asarray(q_hat, dtype=np.float64)[logged.rows]
    ca, cb = _contributions(logged, pa, q)[estimator], _contributions(logged, pb, q)[estimator]
    out = []
    for value in sorted(set(g.tolist()), key=str):
        sel = np.flatnonzero(g == value)
        pair = paired_difference((ca[0][sel], ca[1][sel]), (cb[0][sel], cb[1][sel]), level)
        va, vb = _influence(ca[0][sel], ca[1][sel])[0], _influence(cb[0][sel], cb[1][sel])[0]
        out.append({"group": str(value), "n": int(len(sel)), "value_a": va, "value_b": vb,
                    "lift": pair["lift"], "se": pair["se"], "ci_low": pair["ci_low"], "ci_high": pair["ci_high"],
                    "small": bool(len(sel) < min_rows)})
    return pd.DataFrame(out)


def time_folds(frame: pd.DataFrame, folds: int) -> np.ndarray:
    """Fold label (0..folds-1) of each row by equal-count slices of CREATED_AT."""
    t = pd.to_datetime(frame["CREATED_AT"]).to_numpy()
    order = np.argsort(t, kind="mergesort")
    labels = np.empty(len(frame), dtype=object)
    for k, part in enumerate(np.array_split(order, max(1, folds))):
        labels[part] = f"fold{k + 1}"
    return labels


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``actual`` against ``expected`` (quantile bins of ``expected``)."""
    expected = np.asarray(expected, dtype=np.float64).ravel()
    actual = np.asarray(actual, dtype=np.float64).ravel()
    if not len(expected) or not len(actual):
        return float("nan")
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)))
    if len(edges) < 3:
        edges = np.linspace(min(expected.min(), actual.min()), max(expected.max(), actual.max()) + 1e-9, bins + 1)
    e = np.histogram(np.clip(expected, edges[0], edges[-1]), edges)[0] / len(expected)
    a = np.histogram(np.clip(actual, edges[0], edges[-1]), edges)[0] / len(actual)
    e, a = np.clip(e, 1e-4, None), np.clip(a, 1e-4, None)
    return float(((a - e) * np.log(a / e)).sum())


# ---------------------------------------------------------------- the truth (world only)
def load_oracle(settings: Any = None) -> tuple[Any | None, str]:
    """(oracle, why) for the data in the local warehouse; oracle is None when the data did not come from the world."""
    try:
        from smartrouter import warehouse
        from smartrouter.world import World

        params = warehouse.load_world_params(settings)
        return World(params).oracle(), f"world seed {getattr(params, 'seed', '?')}"
    except Exception as exc:  # noqa: BLE001 - any failure means "no truth available": say why, skip the check
        return None, f"truth check skipped: {type(exc).__name__}: {exc}"


def truth_check(values: PolicyValues) -> pd.DataFrame:
    """Each estimator's error against the truth: one row per (policy, estimator), errors in percentage points."""
    if not values.truth:
        raise ConfigError("these estimates carry no true values; pass truth_matrix (world data only)")
    t = values.table.copy()
    t["error_pp"] = 100.0 * t["error"]
    t["abs_error_pp"] = t["error_pp"].abs()
    return t[["policy", "estimator", "estimate", "ci_low", "ci_high", "true_value", "error_pp", "abs_error_pp", "covered"]]


# ---------------------------------------------------------------- one call for a whole run
@dataclass
class RunEvaluation:
    """Everything the Evaluate stage computes and the Gate stage judges (see ``evaluate_run``)."""

    heads: dict[str, pd.DataFrame]  # family -> head_metrics
    slices: dict[str, pd.DataFrame]  # family -> slice_metrics
    values: PolicyValues
    logged: LoggedData
    policies: dict[str, np.ndarray]  # policy name -> (n_first, P)
    q_hat: dict[str, np.ndarray]  # policy name -> outcome model used by DM/DR
    reference_family: str
    first: pd.DataFrame  # the first-attempt rows policies are evaluated on
    truth_note: str
    test: pd.DataFrame  # the whole test window (all labelled attempts, index 0..n-1)
    family_probs: dict[str, np.ndarray]  # family -> (len(test), P)
    first_index: np.ndarray  # positions in ``test`` of the first-attempt rows
    first_mask: np.ndarray  # (n_first, P) candidates of the first-attempt rows
    truth_matrix: np.ndarray | None = None
    comparison: pd.DataFrame | None = None  # estimator error by propensity mode (world only)
    # approval, fee cost and net revenue per policy under both routing objectives (smartrouter.money.evaluate)
    money: dict[str, Any] | None = None

    @property
    def test_action(self) -> np.ndarray:
        """Logged processor index of every test row."""
        return processor_index(self.test["PROCESSOR"])

    @property
    def test_mask(self) -> np.ndarray:
        """(len(test), P) candidates of every test row."""
        return candidate_mask(self.test)

    @property
    def families(self) -> list[str]:
        return list(self.heads)

    def family_policy(self, family: str) -> str:
        return f"model:{family}"

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON summary (per-head metrics, slices, policy-value table, lifts, truth check)."""
        from smartrouter.notebook_tools import plain

        out: dict[str, Any] = {
            "families": {f: {"heads": plain(h), "slices": plain(self.slices.get(f, pd.DataFrame()))} for f, h in self.heads.items()},
            "policy_value": {
                "rows": "first attempts of the test window",
                "n_rows": self.values.n_rows,
                "propensity_mode": self.values.mode,
                "experiment_share": self.values.experiment_share,
                "logging": getattr(self.values, "logging", {}),
                "dm_reference_family": self.reference_family,
                "table": plain(self.values.table),
                "lift_vs_rules": plain(self.values.lift_table(STATIC_RULES)),
            },
            "truth": {"available": self.truth_matrix is not None, "note": self.truth_note},
        }
        if self.comparison is not None:
            out["truth"]["by_mode"] = plain(self.comparison)
        out["money"] = getattr(self, "money", None)  # an evaluation.pkl from older code has none
        return out


STATIC_RULES = "static_rules"
SUCCESS_RATE = "success_rate_router"
ORACLE = "oracle"


def evaluate_run(test: pd.DataFrame, family_probs: Mapping[str, np.ndarray], rules_engine: Any, *,
                 oracle: Any = None, truth_note: str = "", warmup: pd.DataFrame | None = None,
                 router_params: Mapping[str, Any] | None = None, mode: str = "pooled", n_boot: int = 300,
                 seed: int = 0, threshold: float = 0.5, min_slice_rows: int = 500,
                 compare_modes: bool = True) -> RunEvaluation:
    """Evaluate every family on the test window and every policy's value (and the truth on world data).

    ``test``: labelled attempts of the test window (the feature table's test split, all attempts);
    ``family_probs``: family -> (len(test), P) calibrated probabilities; ``rules_engine``: the static
    rules; ``oracle``: the world's oracle or None; ``warmup``: labelled attempts before the window
    (the success-rate router starts from their outcomes).
    """
    if not family_probs:
        raise ConfigError("no model families to evaluate; train at least one (run_dir/models/<family>/)")
    test = test.reset_index(drop=True)
    probs = {f: _check_matrix(f"probabilities of {f}", m, len(test)) for f, m in family_probs.items()}
    heads = {f: head_metrics(test, m, threshold) for f, m in probs.items()}
    slices = {f: slice_metrics(test, m, min_slice_rows, threshold) for f, m in probs.items()}

    from smartrouter.policies import SuccessRateRouter, rules_choice

    # the router sees all labelled attempts' outcomes as they happen, but is scored on first attempts
    router = SuccessRateRouter(**dict(router_params or {}))
    replay = router.replay(test, seed=seed, warmup=warmup)
    is_first = np.zeros(len(test), dtype=bool)
    is_first[first_attempts(test).index.to_numpy()] = True
    first = test[is_first].reset_index(drop=True)
    fidx = np.flatnonzero(is_first)
    mask = candidate_mask(first)
    r_idx = rules_choice(first, rules_engine, mask)

    # DM/DR need an outcome model for the non-model policies: the family with the lowest log loss
    reference = min(probs, key=lambda f: float(heads[f].set_index("processor").loc["ALL", "logloss"]))
    policies: dict[str, np.ndarray] = {STATIC_RULES: one_hot(r_idx), SUCCESS_RATE: replay.probabilities[fidx]}
    q_hat: dict[str, np.ndarray] = {STATIC_RULES: probs[reference][fidx], SUCCESS_RATE: probs[reference][fidx]}
    for f, m in probs.items():
        policies[f"model:{f}"] = greedy_policy(m[fidx], mask)
        q_hat[f"model:{f}"] = m[fidx]
    truth = None
    if oracle is not None:
        # labels exclude PROCESSING rows, so the estimators measure approval among resolved attempts:
        # compare them with the same quantity, not with P(APPROVED) over all attempts
        truth = np.asarray(oracle.probability_matrix(first, resolved_only=True), dtype=np.float64)
        policies[ORACLE] = greedy_policy(truth, mask)
        q_hat[ORACLE] = probs[reference][fidx]
    logged = logged_data(first, r_idx, mode=mode, mask=mask)
    values = estimate_policies(logged, policies, q_hat, n_boot=n_boot, seed=seed, truth_matrix=truth)
    comparison = None
    if truth is not None and compare_modes:
        parts = []
        for m_ in PROPENSITY_MODES:
            try:
                lv = values if m_ == mode else estimate_policies(logged_data(first, r_idx, mode=m_, mask=mask), policies,
                                                                 q_hat, n_boot=n_boot, seed=seed, truth_matrix=truth)
            except ConfigError:
                continue
            t = lv.table.assign(mode=m_)
            parts.append(t)
        comparison = pd.concat(parts, ignore_index=True) if parts else None
    ev = RunEvaluation(heads=heads, slices=slices, values=values, logged=logged, policies=policies, q_hat=q_hat,
                       reference_family=reference, first=first, truth_note=truth_note or ("world oracle" if truth is not None else "no oracle"),
                       test=test, family_probs=probs, first_index=fidx, first_mask=mask,
                       truth_matrix=truth, comparison=comparison)
    from smartrouter import money  # fee cost and net revenue beside approval, under both objectives

    ev.money = money.evaluate_or_note(ev)
    return ev


def summarize(values: PolicyValues, estimator: str = "DR") -> pd.DataFrame:
    """One row per policy: the chosen estimator's value and interval, true value (world), lift over static rules in pp."""
    t = values.table[values.table["estimator"] == estimator].set_index("policy")
    base = values.point.get((STATIC_RULES, estimator), math.nan)
    out = t[["estimate", "ci_low", "ci_high"]].copy()
    out["lift_pp"] = 100.0 * (out["estimate"] - base)
    if values.truth:
        out["true_value"] = [values.truth[p] for p in out.index]
        out["true_lift_pp"] = 100.0 * (out["true_value"] - values.truth.get(STATIC_RULES, math.nan))
    return out.reset_index()


def registry_metrics(ev: RunEvaluation, family: str, estimator: str = "DR") -> dict[str, Any]:
    """What a registry version stores in metrics.json: headline, per-head metrics, slices, policy-value table."""
    from smartrouter.notebook_tools import plain

    pol = ev.family_policy(family)
    heads = ev.heads[family]
    overall = heads.set_index("processor").loc["ALL"].to_dict()
    summary = summarize(ev.values, estimator)
    base = ev.values.point[(STATIC_RULES, estimator)]
    headline = {"family": family, "estimator": estimator, "policy_value": ev.values.point[(pol, estimator)],
                "lift_vs_rules": ev.values.point[(pol, estimator)] - base, "auc": overall.get("auc"),
                "ece": overall.get("ece"), "logloss": overall.get("logloss")}
    if ev.values.truth:
        headline.update(true_value=ev.values.truth[pol], true_lift_vs_rules=ev.values.truth[pol] - ev.values.truth[STATIC_RULES])
        if ORACLE in ev.values.truth:
            gap = ev.values.truth[ORACLE] - ev.values.truth[STATIC_RULES]
            headline["share_of_oracle_gain"] = (headline["true_lift_vs_rules"] / gap) if gap > 0 else None
    return plain({
        "headline": headline,
        "overall": overall,
        "heads": heads,
        "slices": ev.slices[family],
        "families": {f: h for f, h in ev.heads.items()},
        "policy_value": {
            "rows": "first attempts of the test window", "n_rows": ev.values.n_rows, "estimator": estimator,
            "propensity_mode": ev.values.mode, "experiment_share": ev.values.experiment_share,
            "logging": getattr(ev.values, "logging", {}),
            "summary": summary, "table": ev.values.table, "lift_vs_rules": ev.values.lift_table(STATIC_RULES, estimator),
        },
        "truth": {"available": ev.truth_matrix is not None, "note": ev.truth_note,
                  "by_mode": ev.comparison if ev.comparison is not None else None},
        # the routing objective in force and each policy's approval, fee cost and net revenue (model card)
        "money": getattr(ev, "money", None),
    })


# ---------------------------------------------------------------- stage helpers (notebooks 04 / 05)
# The hand-off from 04_evaluate to 05_gate (smartrouter.handoff: arrays + parquet + JSON in one zip, no
# pickle). The pickle it replaced is only recognised, to say so.
EVALUATION_HANDOFF = "evaluation.handoff.zip"
LEGACY_EVALUATION_PICKLE = "evaluation.pkl"


def load_rules_engine(settings: Any = None) -> Any:
    """The merchant's static rules from the warehouse (sql/routing_rules.sql) as a RulesEngine."""
    from smartrouter import warehouse
    from smartrouter.rules import RulesEngine

    rows = warehouse.query_frame("routing_rules", {"merchant": catalog.MERCHANT}, settings=settings)
    if rows.empty:
        raise ConfigError(f"no static rules for {catalog.MERCHANT} in {catalog.RULES_VIEW}; load the rules view first")
    return RulesEngine(rows)


def model_dirs(run_dir: Any) -> dict[str, Any]:
    """family -> exported serving folder under run_dir/models/ (families the train stage exported)."""
    from pathlib import Path

    root = Path(run_dir) / "models"
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and (p / "model.json").is_file()}


def score_families(run_dir: Any, frame: pd.DataFrame) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load every family's serving form from the run and score ``frame``: (probs, loaded models)."""
    from smartrouter.models.serving import load_serving_model

    probs, models = {}, {}
    for fam, folder in model_dirs(run_dir).items():
        model = load_serving_model(folder)
        models[fam] = model
        probs[fam] = np.asarray(model.score_matrix(model.encoder.transform(frame)), dtype=np.float64)
    return probs, models


def _derived_q_hat(ev: RunEvaluation) -> dict[str, np.ndarray]:
    # as evaluate_run builds it: a model's policy is paired with its own model, the others with the reference family
    return {p: ev.family_probs[p.split(":", 1)[1] if p.startswith("model:") else ev.reference_family][ev.first_index]
            for p in ev.policies}


def _derived_terms(ev: RunEvaluation) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    rows = ev.logged.rows
    return {(p, est): t for p in ev.policies
            for est, t in _contributions(ev.logged, np.asarray(ev.policies[p], dtype=np.float64)[rows],
                                         np.asarray(ev.q_hat[p], dtype=np.float64)[rows]).items()}


# Fields of a RunEvaluation the hand-off recomputes instead of storing (~20 MB of the default world's ~40):
# each is left out only when the recomputation equals it exactly (smartrouter.handoff), in this order.
HANDOFF_DERIVED = {
    "first": lambda ev: ev.test.iloc[ev.first_index].reset_index(drop=True),
    "q_hat": _derived_q_hat,
    "values.terms": _derived_terms,
}


def save_evaluation(ev: RunEvaluation, path: Any) -> None:
    """Keep the evaluation for the gate stage: a compact, pickle-free hand-off file (smartrouter.handoff)."""
    from smartrouter import handoff

    handoff.save(ev, path, derived=HANDOFF_DERIVED)


def load_evaluation(path: Any) -> RunEvaluation:
    """The evaluation the Evaluate stage saved; a clear error when it is missing, corrupt or from older code."""
    from pathlib import Path

    from smartrouter import handoff

    path = Path(path)
    fix = "re-run the 04_evaluate stage of this run (smartrouter run), which writes it"
    if not path.is_file() and (path.parent / LEGACY_EVALUATION_PICKLE).is_file():
        raise handoff.HandoffError(f"{path} does not exist but {path.parent / LEGACY_EVALUATION_PICKLE} does: the run "
                                   f"was evaluated by older code, whose pickle this code no longer reads; {fix}")
    ev = handoff.load(path, fix=fix, derived=HANDOFF_DERIVED)
    if not isinstance(ev, RunEvaluation):
        raise handoff.HandoffError(f"{path} holds a {type(ev).__name__}, not an evaluation; {fix}")
    return ev


def with_attempt_columns(frame: pd.DataFrame, settings: Any = None) -> pd.DataFrame:
    """``frame`` with every attempt-view column taken from the warehouse's raw rows (joined on ATTEMPT_ID).

    The oracle must see attempts exactly as the view holds them: the feature table lacks some raw
    columns (ORDER_COUNTRY_CODE, USER_ID, ...) and stores booleans (AVS_CHECKED,
    IS_RETURNING_CUSTOMER) as 0.0/1.0, which the oracle misread -- measured 2.5 pp too low a
    truth on a small world before this join.
    """
    from smartrouter import warehouse

    if frame.empty:
        return frame
    t = pd.to_datetime(frame["CREATED_AT"])
    raw = warehouse.query_frame("evaluation_attempts", {"start": t.min().to_pydatetime(), "end": t.max().to_pydatetime()},
                                settings=settings)
    cols = [c for c in catalog.ATTEMPT_COLUMNS if c != "ATTEMPT_ID" and c in raw.columns]
    extra = raw[["ATTEMPT_ID", *cols]].drop_duplicates("ATTEMPT_ID")
    out = frame.drop(columns=[c for c in cols if c in frame.columns]).merge(extra, on="ATTEMPT_ID", how="left",
                                                                           validate="one_to_one")
    if len(out) != len(frame) or out["CREATED_AT"].isna().any():
        raise ConfigError("some test attempts are missing from the attempt view; rebuild the features from the same warehouse")
    return out[[*frame.columns, *[c for c in out.columns if c not in frame.columns]]]
