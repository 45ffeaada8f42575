"""Evaluation of message configuration recommendations: processor-only vs joint routing vs the
oracle-best joint choice, and the check that no ineligible configuration is ever recommended.

Policies, on the first attempts of the test window (like evaluation.py's policy values):

* ``processor_only``: the model's processor choice with the payment scored under the merchant's
  default configuration, which it then sends (what the router does with ``[messages] recommend = false``);
* ``joint``: the model's pair: each processor's best ELIGIBLE configuration (ties to the default),
  the processor ranked by the routing objective on those scores, its best configuration sent
  (what routing.messages serves; the same decomposition, vectorized);
* ``oracle_joint`` (world only): the truly best eligible pair (the oracle's joint matrix);
* ``oracle_config`` (world only): processor_only's processor with its truly best eligible
  configuration: the message headroom alone (oracle_joint's gain also holds the processor choice's).

TRUE values come from the oracle's joint matrix (``Oracle.joint_probability_matrix``). OPE values
(IPS, SNIPS, DM, DR, evaluation._contributions over the joint action space) weight each logged
(processor, configuration) pair by its logging probability: the merchant's logger is a mixture of
the control arm (static rules' processor, default configuration, probability 1 - eps) and the
experiment arm (a uniform processor among the candidates AND a uniform eligible configuration,
drawn in the same orders: eps / (|candidates| x |eligible configurations|)); rows the routing
service logged carry their processor propensity times their ``MESSAGE_PROPENSITY``.

``serving_check`` runs test rows through the real Router with the model (routing.messages'
scorer, exploration included) and counts chosen or recommended configurations that
``messages.eligible_matrix`` forbids; ``eligibility_gate`` refuses a model with any.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from smartrouter import catalog, messages, money
from smartrouter.errors import ArtifactError, ConfigError
from smartrouter.evaluation import (ESTIMATORS, LoggedData, _contributions, candidate_mask, paired_difference,
                                    poisson_bootstrap)

P = len(catalog.PROCESSORS)
C = messages.N_CONFIGS
PROCESSOR_ONLY, JOINT, ORACLE_JOINT = "processor_only", "joint", "oracle_joint"
ORACLE_CONFIG = "oracle_config"  # processor_only's processor with the truly best eligible configuration
JOINT_CHUNK_ROWS = 50_000  # rows scored per configuration at a time by joint_probabilities


def joint_probabilities(model: Any, frame: pd.DataFrame) -> np.ndarray:
    """(n, P, C) the model's probability of every (processor, configuration) pair: one batch per configuration
    and chunk of rows (a copy of the frame and its encoding per configuration, for JOINT_CHUNK_ROWS rows at a
    time: on a 330K-row test window all at once that was 53 KB a row)."""
    out = np.empty((len(frame), P, C), dtype=np.float64)
    for lo in range(0, len(frame), JOINT_CHUNK_ROWS):
        part = frame.iloc[lo:lo + JOINT_CHUNK_ROWS]
        for c in range(C):
            out[lo:lo + len(part), :, c] = model.score_matrix(
                model.encoder.transform(messages.with_config(part, messages.CONFIGS[c])))
    return out


def _objective_choice(prob: np.ndarray, mask: np.ndarray, frame: pd.DataFrame, objective: Any) -> np.ndarray:
    """(n,) processor index the routing objective picks from ``prob`` (-1 where none is a candidate)."""
    net = money.net_revenue(frame, prob) if objective.name == "net_revenue" else None
    choice = money.preference_order(prob, mask, objective, net)[:, 0]
    return np.where(mask.any(axis=1), choice, -1)


@dataclasses.dataclass
class JointChoices:
    """Each policy's (processor, configuration) per row; processor -1 where no candidate exists."""

    processor: dict[str, np.ndarray]
    config: dict[str, np.ndarray]
    default: np.ndarray  # (n,) the merchant's default configuration
    eligible: np.ndarray  # (n, C) messages.eligible_matrix


def choose(frame: pd.DataFrame, probs: np.ndarray, objective: Any, truth: np.ndarray | None = None,
           mask: np.ndarray | None = None) -> JointChoices:
    """processor_only, joint (and oracle_joint with ``truth``) choices for ``frame`` from (n, P, C) ``probs``."""
    n = len(frame)
    mask = candidate_mask(frame) if mask is None else mask
    eligible = messages.eligible_matrix(frame)
    default = messages.default_config(frame)
    rows = np.arange(n)
    p_default = probs[rows, :, default]  # (n, P)
    proc_only = _objective_choice(p_default, mask, frame, objective)
    # each processor's best eligible configuration, ties to the default (as routing.messages)
    masked = np.where(eligible[:, None, :], probs, -np.inf)
    best_cfg = masked.argmax(axis=2)
    best_p = masked.max(axis=2)
    best_cfg = np.where(p_default >= best_p, default[:, None], best_cfg)
    joint_proc = _objective_choice(np.maximum(best_p, p_default), mask, frame, objective)
    joint_cfg = best_cfg[rows, np.clip(joint_proc, 0, None)]
    procs = {PROCESSOR_ONLY: proc_only, JOINT: joint_proc}
    configs = {PROCESSOR_ONLY: default.copy(), JOINT: joint_cfg}
    if truth is not None:
        t = np.where(mask[:, :, None] & eligible[:, None, :], truth, -np.inf).reshape(n, P * C)
        flat = t.argmax(axis=1)
        procs[ORACLE_JOINT] = np.where(mask.any(axis=1), flat // C, -1)
        configs[ORACLE_JOINT] = flat % C
        procs[ORACLE_CONFIG] = proc_only
        configs[ORACLE_CONFIG] = np.where(eligible, truth[rows, np.clip(proc_only, 0, None), :], -np.inf).argmax(axis=1)
    return JointChoices(procs, configs, default, eligible)


def ineligible_count(choices: JointChoices) -> dict[str, int]:
    """Rows where a policy sends a configuration the payment may not send (must be 0 for every policy)."""
    rows = np.arange(len(choices.default))
    return {k: int((~choices.eligible[rows, c] & (choices.processor[k] >= 0)).sum()) for k, c in choices.config.items()}


def _joint_logged(logged: LoggedData, first: pd.DataFrame) -> LoggedData:
    """``logged`` (evaluation.logged_data of ``first``) over the joint (processor, configuration) actions."""
    sub = first.iloc[logged.rows]
    cfg = messages.config_codes(sub)
    n_cfg = messages.eligible_matrix(sub).sum(axis=1).clip(min=1)
    default = messages.default_config(sub)
    k = logged.mask.sum(axis=1).clip(min=1)
    eps = logged.experiment_share
    served = logged.served if logged.served is not None else np.zeros(len(logged), dtype=bool)
    if logged.rules is not None:
        mixture = (1 - eps) * ((logged.action == logged.rules) & (cfg == default)) + eps / (k * n_cfg)
    else:  # no rules' choice known: the experiment arm's uniform draw only
        mixture = eps / (k * n_cfg)
    msg_p = pd.to_numeric(sub[messages.PROPENSITY_COLUMN], errors="coerce").fillna(1.0).to_numpy(float) \
        if messages.PROPENSITY_COLUMN in sub.columns else np.ones(len(sub))
    prop = np.where(served, logged.propensity * np.clip(msg_p, 1e-6, 1.0), mixture)
    prop = np.where(prop > 0, prop, np.inf)  # a pair no logger could send carries no weight
    mask = (logged.mask[:, :, None] & messages.eligible_matrix(sub)[:, None, :]).reshape(len(sub), P * C)
    return dataclasses.replace(logged, action=logged.action * C + cfg, propensity=prop, mask=mask)


def _pair_matrix(proc: np.ndarray, cfg: np.ndarray) -> np.ndarray:
    out = np.zeros((len(proc), P * C))
    ok = proc >= 0
    out[np.flatnonzero(ok), proc[ok] * C + cfg[ok]] = 1.0
    return out


@dataclasses.dataclass
class MessageEvaluation:
    """True and OPE values of the three policies on the first attempts, and the eligibility counts."""

    table: pd.DataFrame  # policy, estimator, estimate, ci_low, ci_high[, true_value]
    lifts: pd.DataFrame  # joint - processor_only (and oracle_joint - processor_only) per estimator, with truth
    truth: dict[str, float]
    ineligible: dict[str, int]
    n_rows: int
    family: str
    gain_share: float | None  # joint's true gain over processor_only / the oracle-best joint's (None without truth)
    message_share: float | None  # joint's true gain over processor_only / oracle_config's (the message headroom)
    changed_share: float  # share of first attempts whose joint configuration is not the default

    def to_json(self) -> dict[str, Any]:
        from smartrouter.notebook_tools import plain

        return {"family": self.family, "rows": "first attempts of the test window", "n_rows": self.n_rows,
                "table": plain(self.table), "lifts": plain(self.lifts), "truth": self.truth,
                "ineligible": self.ineligible, "gain_share": self.gain_share, "message_share": self.message_share,
                "changed_share": self.changed_share}


def evaluate_messages(ev: Any, model: Any, family: str, *, oracle: Any = None, objective: Any = None,
                      n_boot: int = 200, seed: int = 0, level: float = 0.95) -> MessageEvaluation:
    """The three policies on ``ev``'s first attempts (evaluation.RunEvaluation) for ``model``'s family.

    Raises ConfigError when any policy would send an ineligible configuration (never expected: the
    choice is made among eligible ones; the check guards this code and the data's eligibility facts).
    """
    objective = money.objective() if objective is None else objective
    first = ev.first
    probs = joint_probabilities(model, first)
    truth = None
    if oracle is not None:
        truth = np.asarray(oracle.joint_probability_matrix(first, resolved_only=True, eligible_only=True), dtype=np.float64)
    ch = choose(first, probs, objective, truth, ev.first_mask)
    bad = ineligible_count(ch)
    if any(bad.values()):
        raise ConfigError(f"message evaluation: policies would send ineligible configurations {bad}; "
                          "check messages.eligible_matrix and the eligibility columns of the test window")
    logged = _joint_logged(ev.logged, first)
    rows = logged.rows
    q = probs.reshape(len(first), P * C)[rows]
    names = list(ch.processor)
    nums, dens, keys, terms, point, true = [], [], [], {}, {}, {}
    for name in names:
        pi = _pair_matrix(ch.processor[name], ch.config[name])
        for est, (num, den) in _contributions(logged, pi[rows], q).items():
            nums.append(num), dens.append(den), keys.append((name, est))
            terms[(name, est)] = (num, den)
            point[(name, est)] = float(num.sum() / den.sum())
        if truth is not None:
            true[name] = float((pi[rows] * truth.reshape(len(first), P * C)[rows]).sum(axis=1).mean())
    reps = poisson_bootstrap(np.vstack(nums), np.vstack(dens), n_boot=n_boot, seed=seed)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    table = []
    for j, key in enumerate(keys):
        lo, hi = np.nanquantile(reps[:, j], [lo_q, hi_q])
        row = {"policy": key[0], "estimator": key[1], "estimate": point[key], "ci_low": float(lo), "ci_high": float(hi)}
        if true:
            row.update(true_value=true[key[0]], covered=bool(lo <= true[key[0]] <= hi))
        table.append(row)
    lifts = []
    for name in names[1:]:
        for est in ESTIMATORS:
            d = {"policy": name, "baseline": PROCESSOR_ONLY, "estimator": est,
                 **paired_difference(terms[(name, est)], terms[(PROCESSOR_ONLY, est)], level)}
            if true:
                d["true_lift"] = true[name] - true[PROCESSOR_ONLY]
            lifts.append(d)
    gain_share = message_share = None
    if true:
        gain = true[JOINT] - true[PROCESSOR_ONLY]
        headroom, msg_headroom = true[ORACLE_JOINT] - true[PROCESSOR_ONLY], true[ORACLE_CONFIG] - true[PROCESSOR_ONLY]
        gain_share = float(gain / headroom) if headroom > 0 else None
        message_share = float(gain / msg_headroom) if msg_headroom > 0 else None
    on = ch.processor[JOINT] >= 0
    changed = float((ch.config[JOINT][on] != ch.default[on]).mean()) if on.any() else 0.0
    return MessageEvaluation(pd.DataFrame(table), pd.DataFrame(lifts), true, bad, len(logged), family, gain_share,
                             message_share, changed)


# ---------------------------------------------------------------- the real serving path
def serving_check(model: Any, frame: pd.DataFrame, *, max_rows: int | None = None, seed: int = 0,
                  routing_overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run ``frame``'s rows (all, or ``max_rows`` drawn at random) through the real Router serving
    ``model`` with message recommendations on (every payment in the treatment arm, message
    exploration as configured) and count chosen or recommended configurations the payment may not send."""
    from smartrouter.routing import Router, load_routing_config
    from smartrouter.routing.model_holder import LoadedModel

    over = {"experiment": {"treatment_share": 1.0}, "messages": {"recommend": True}}
    for k, v in (routing_overrides or {}).items():
        over.setdefault(k, {}).update(v)
    cfg = load_routing_config(overrides=over)

    class _Holder:
        current = LoadedModel("candidate", model, None, 0.0, 0.0)

    router = Router(cfg, None, _Holder(), seed=seed)
    rows = frame
    if max_rows is not None and len(frame) > max_rows:
        rows = frame.iloc[np.sort(np.random.default_rng(seed).choice(len(frame), max_rows, replace=False))]
    allowed = messages.eligible_matrix(rows)
    keys = {k: i for i, k in enumerate(messages.CONFIG_KEYS)}
    chosen_bad = recommended_bad = non_default = decisions = 0
    examples: list[str] = []
    for i, payment in enumerate(rows.to_dict(orient="records")):
        try:
            d = router.decide(payment)
        except Exception as exc:  # noqa: BLE001 - a payment the router refuses (no eligible processor) is not a message
            if type(exc).__name__ == "NoEligibleProcessor":
                continue
            raise
        decisions += 1
        sent = keys[d.message_config["key"]]
        non_default += d.message_source in ("model", "exploration") and d.message_config["key"] != messages.config_key(
            messages.default_config(payment))
        if not allowed[i, sent]:
            chosen_bad += 1
            if len(examples) < 3:
                examples.append(f"row {i}: sends {d.message_config['key']}")
        for r in d.message_recommendations:
            if not allowed[i, keys[r["message_config"]["key"]]]:
                recommended_bad += 1
                if len(examples) < 3:
                    examples.append(f"row {i}: recommends {r['processor']} {r['message_config']['key']}")
    return {"decisions": decisions, "ineligible_sent": chosen_bad, "ineligible_recommended": recommended_bad,
            "non_default_sent": int(non_default), "examples": examples}


def eligibility_gate(serving_dir: str | Path | None, test: pd.DataFrame | None, cfg: Mapping[str, Any]) -> Any:
    """The gate: the model, served by the real Router on the test window's rows, never sends nor
    recommends a configuration the payment may not send (gates.toml [messages])."""
    from smartrouter.gates import GateResult
    from smartrouter.models.serving import load_serving_model

    c = cfg["messages"]
    if serving_dir is None or test is None or not len(test):
        return GateResult("messages", False, None, c["max_ineligible"],
                          "no serving form or no test rows to check the message recommendations on; export the model "
                          "and pass the test window to run_gates")
    try:
        model = load_serving_model(serving_dir)
    except ArtifactError as exc:  # the completeness gate names the broken file too
        return GateResult("messages", False, None, c["max_ineligible"], f"serving form not loadable, nothing to check: {exc}")
    res = serving_check(model, test, max_rows=c["check_rows"] or None)
    bad = res["ineligible_sent"] + res["ineligible_recommended"]
    ok = bad <= c["max_ineligible"]
    text = (f"{res['decisions']} test payments through the router: {res['ineligible_sent']} ineligible configurations sent, "
            f"{res['ineligible_recommended']} recommended" + ("" if ok else f" ({'; '.join(res['examples'])})"))
    return GateResult("messages", ok, float(bad), float(c["max_ineligible"]), text, res)


def sentence(me: MessageEvaluation, estimator: str = "DR") -> str:
    """One sentence from the numbers: the joint policy's lift over processor-only (and its share of the
    oracle-best joint gain on world data), and the eligibility count."""
    row = me.lifts[(me.lifts["policy"] == JOINT) & (me.lifts["estimator"] == estimator)].iloc[0]
    bad = sum(me.ineligible.values())
    text = (f"{me.family}: sending each chosen processor its best eligible message changes the message on "
            f"{100 * me.changed_share:.0f} % of first attempts; {estimator} lift over processor-only routing "
            f"{100 * row['lift']:+.2f} pp (95 % CI {100 * row['ci_low']:+.2f} to {100 * row['ci_high']:+.2f})")
    if me.truth:
        gain = me.truth[JOINT] - me.truth[PROCESSOR_ONLY]
        best = me.truth[ORACLE_JOINT] - me.truth[PROCESSOR_ONLY]
        msg = me.truth[ORACLE_CONFIG] - me.truth[PROCESSOR_ONLY]
        share = "n/a" if me.gain_share is None else f"{100 * me.gain_share:.0f} %"
        msg_share = "n/a" if me.message_share is None else f"{100 * me.message_share:.0f} %"
        text += (f"; true gain {100 * gain:+.2f} pp against the oracle-best joint choice's {100 * best:+.2f} pp "
                 f"({share} of it) and the best messages on its own processors' {100 * msg:+.2f} pp ({msg_share})")
    return text + (f"; {bad} ineligible configurations chosen." if bad else "; no ineligible configuration chosen.")
