"""Evaluation: metrics, policies, off-policy estimators (unbiased on a synthetic log with known truth), truth check."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from smartrouter import catalog, evaluation as E, policies as POL
from smartrouter.errors import ConfigError

from eval_fakes import FakeOracle, FakeRules, indifferent_log, model_probs, synthetic_log

P = len(catalog.PROCESSORS)
NON_AMEX = [p for p in catalog.PROCESSORS if p != "AMEX"]


@pytest.fixture(scope="module")
def log():
    return synthetic_log()


# ---------------------------------------------------------------- policies
def test_candidate_mask_parses_json_and_falls_back_to_hard_rules():
    f = pd.DataFrame({"CANDIDATES": ['["WORLDPAY", "ADYEN"]', None], "CARD_BRAND": ["VISA", "AMEX"],
                      "CURRENCY": ["MXN", "USD"]})
    m = POL.candidate_mask(f)
    assert m[0].tolist() == [True, False, False, False, True]
    assert m[1].tolist() == [False, False, False, True, False]  # Amex card -> AMEX only


def test_greedy_never_picks_ineligible():
    scores = np.array([[0.1, 0.9, 0.5, 0.99, 0.2]])
    mask = np.array([[True, False, True, False, True]])
    assert POL.greedy_choice(scores, mask).tolist() == [2]
    assert POL.greedy_choice(scores, np.zeros_like(mask)).tolist() == [-1]


def test_success_rate_router_learns_best_processor_and_explores():
    router = POL.SuccessRateRouter(window=50, exploration=0.1)
    seg = ("MXN", "VISA", "CREDIT")
    rng = np.random.default_rng(0)
    for _ in range(100):
        router.observe(seg, "WORLDPAY", rng.random() < 0.6)
        router.observe(seg, "MIT", rng.random() < 0.9)
    probs = router.probabilities(seg, ["WORLDPAY", "MIT", "ELAVON"])
    assert max(probs, key=probs.get) == "MIT"
    assert probs["MIT"] == pytest.approx(0.9 + 0.1 / 3)
    assert probs["ELAVON"] == pytest.approx(0.1 / 3)
    assert sum(probs.values()) == pytest.approx(1.0)
    counts = pd.Series([router.choose(seg, ["WORLDPAY", "MIT", "ELAVON"], rng)[0] for _ in range(3000)]).value_counts(normalize=True)
    assert 0.9 < counts["MIT"] < 0.96 and counts["ELAVON"] > 0.02
    # the window forgets: after MIT goes bad, WORLDPAY wins within one window
    for _ in range(60):
        router.observe(seg, "MIT", 0)
    assert router.probabilities(seg, ["WORLDPAY", "MIT"])["WORLDPAY"] > 0.9
    with pytest.raises(ConfigError, match="exploration"):
        POL.SuccessRateRouter(exploration=1.5)


def test_router_replay_returns_valid_distribution(log):
    frame, truth, mask = log
    sub = frame.iloc[:3000]
    rep = POL.SuccessRateRouter().replay(sub, seed=1)
    assert np.allclose(rep.probabilities.sum(1), 1.0)
    assert (rep.probabilities[~mask[:3000]] == 0).all()
    assert mask[:3000][np.arange(3000), rep.chosen].all()
    assert np.allclose(rep.propensity, rep.probabilities[np.arange(3000), rep.chosen])
    again = POL.SuccessRateRouter().replay(sub, seed=1)
    assert (again.chosen == rep.chosen).all()


# ---------------------------------------------------------------- model metrics
def test_head_metrics_and_slices(log):
    frame, truth, mask = log
    good = model_probs(truth, 0.05)
    heads = E.head_metrics(frame, good).set_index("processor")
    assert heads.loc["ALL", "n"] == len(frame)
    assert heads.loc["WORLDPAY", "n"] == (frame["PROCESSOR"] == "WORLDPAY").sum()
    assert heads.loc["WORLDPAY", "auc"] > 0.6 and heads.loc["WORLDPAY", "ece"] < 0.03
    assert heads.loc["AMEX", "n"] == 0  # no Amex cards in this log
    h = heads.loc["ALL"]
    assert h["tp"] + h["fp"] + h["tn"] + h["fn"] == len(frame)
    sl = E.slice_metrics(frame, good, min_rows=5000)
    assert set(sl["slice"]) == set(E.SLICE_COLUMNS)
    country = sl[sl["slice"] == "card_country"].set_index("value")
    assert country.loc["CO", "small"] and not country.loc["MX", "small"]
    assert sl[sl["slice"] == "amount_band"]["n"].sum() == len(frame)
    c = E.curves(frame, good)
    assert set(c["WORLDPAY"]) == {"roc", "pr", "reliability"}


def test_pr_auc_matches_sklearn():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(4)
    y = (rng.random(3000) < 0.7).astype(int)
    p = np.round(np.clip(0.5 * y + rng.random(3000) * 0.6, 0, 1), 2)  # rounded: ties matter
    assert E._pr_auc(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)


def test_bad_matrix_shape_is_a_clear_error(log):
    frame, truth, _ = log
    with pytest.raises(ConfigError, match="expected"):
        E.head_metrics(frame, truth[:, :3])


# ---------------------------------------------------------------- off-policy estimators
def test_pooled_estimators_unbiased_and_naive_biased(log):
    frame, truth, mask = log
    rules_idx = POL.processor_index(FakeRules().choose_frame(frame))
    q = model_probs(truth, 0.3)
    policies = {"rules": POL.one_hot(rules_idx), "oracle": POL.greedy_policy(truth, mask),
                "uniform": mask / mask.sum(1, keepdims=True), "model": POL.greedy_policy(q, mask)}
    vals = E.estimate_policies(E.logged_data(frame, rules_idx, "pooled"), policies, q, n_boot=200, truth_matrix=truth)
    t = vals.table.set_index(["policy", "estimator"])
    for pol in policies:
        for est in ("IPS", "SNIPS", "DR"):
            row = t.loc[(pol, est)]
            half = (row["ci_high"] - row["ci_low"]) / 2
            # unbiased: within ~3 standard errors of the truth
            assert abs(row["error"]) < 1.6 * half + 1e-3, (pol, est, row.to_dict())
    # DR uses the model: far tighter than IPS for a policy that disagrees with the logger
    dr, ips = t.loc[("oracle", "DR")], t.loc[("oracle", "IPS")]
    assert (dr["ci_high"] - dr["ci_low"]) < (ips["ci_high"] - ips["ci_low"])
    # naive propensities (1.0 on control rows) undervalue a policy that disagrees with the rules
    naive = E.estimate_policies(E.logged_data(frame, rules_idx, "naive"), policies, q, n_boot=50, truth_matrix=truth)
    nv = naive.table.set_index(["policy", "estimator"]).loc[("oracle", "IPS")]
    assert abs(nv["error"]) > 0.05
    # paired lift interval contains the true lift
    lift = vals.lift("oracle", "rules", "DR")
    assert lift["ci_low"] <= lift["true_lift"] <= lift["ci_high"]
    assert vals.truth["oracle"] > vals.truth["rules"]


def test_experiment_only_estimator_is_unbiased_but_wider(log):
    frame, truth, mask = log
    rules_idx = POL.processor_index(FakeRules().choose_frame(frame))
    pol = {"rules": POL.one_hot(rules_idx), "oracle": POL.greedy_policy(truth, mask)}
    exp = E.estimate_policies(E.logged_data(frame, rules_idx, "experiment"), pol, truth, n_boot=200, truth_matrix=truth)
    pooled = E.estimate_policies(E.logged_data(frame, rules_idx, "pooled"), pol, truth, n_boot=200, truth_matrix=truth)
    e = exp.table.set_index(["policy", "estimator"]).loc[("rules", "SNIPS")]
    p = pooled.table.set_index(["policy", "estimator"]).loc[("rules", "SNIPS")]
    assert exp.n_rows < 0.2 * pooled.n_rows
    assert e["covered"] or abs(e["error"]) < 0.02
    assert (p["ci_high"] - p["ci_low"]) < 0.6 * (e["ci_high"] - e["ci_low"])


def test_estimator_unbiased_over_repeated_logs():
    """Mean error of SNIPS and DR over independent logs is ~0 (unbiasedness, not just one lucky draw)."""
    errs = {"SNIPS": [], "DR": []}
    for seed in range(6):
        frame, truth, mask = synthetic_log(n=8000, seed=100 + seed)
        rules_idx = POL.processor_index(FakeRules().choose_frame(frame))
        q = model_probs(truth, 0.5, seed=seed)
        vals = E.estimate_policies(E.logged_data(frame, rules_idx), {"oracle": POL.greedy_policy(truth, mask)}, q,
                                   n_boot=20, truth_matrix=truth)
        for est in errs:
            errs[est].append(vals.table.set_index("estimator").loc[est, "error"])
    for est, e in errs.items():
        assert abs(np.mean(e)) < 2.5 * np.std(e) / np.sqrt(len(e)) + 0.004, (est, e)


def test_poisson_bootstrap_shapes_and_determinism():
    rng = np.random.default_rng(0)
    num = rng.random((2, 1000))
    a = E.poisson_bootstrap(num, np.ones_like(num), n_boot=120, seed=5)
    b = E.poisson_bootstrap(num, np.ones_like(num), n_boot=120, seed=5)
    assert a.shape == (120, 2) and np.array_equal(a, b)
    assert abs(a[:, 0].std() - num[0].std() / np.sqrt(1000)) < 0.004


def test_paired_lift_of_equal_policies_covers_zero_and_is_far_narrower_than_unpaired():
    """Two policies with exactly the same true value (the processor does not matter in this world) that
    disagree on ~8 % of rows: the paired interval covers 0 and is far narrower than either policy's own
    interval, because the noise of the ~92 % rows they share cancels row by row."""
    frame, truth, mask = indifferent_log(seed=1)
    rules_idx = POL.processor_index(FakeRules().choose_frame(frame))
    logged = E.logged_data(frame, rules_idx)
    a = POL.greedy_choice(model_probs(truth, 0.3, seed=11), mask)  # leaves the rules on ~70 % of rows
    flip = np.random.default_rng(1).random(len(frame)) < 0.10
    b = np.where(flip, POL.greedy_choice(model_probs(truth, 0.3, seed=21), mask), a)
    share = float((a != b).mean())
    assert 0.05 < share < 0.10
    q = model_probs(truth, 0.3, seed=1)
    vals = E.estimate_policies(logged, {"a": POL.one_hot(a), "b": POL.one_hot(b)}, q, n_boot=400, seed=3, truth_matrix=truth)
    assert vals.truth["a"] == pytest.approx(vals.truth["b"], abs=1e-12)  # equal by construction
    lift = vals.lift("a", "b", "DR")
    assert lift["ci_low"] < 0 < lift["ci_high"], lift
    t = vals.table.set_index(["policy", "estimator"])
    unpaired = min(t.loc[(p, "DR"), "ci_high"] - t.loc[(p, "DR"), "ci_low"] for p in ("a", "b"))
    # only the disagreeing rows carry noise into the difference: width ratio ~ sqrt(2 * share) ~ 0.4
    assert lift["ci_high"] - lift["ci_low"] < 0.6 * unpaired, (lift, unpaired)
    # one definition: the same numbers from the policies directly, and from the bootstrap's resamples
    direct = E.paired_lift(logged, POL.one_hot(a), q, POL.one_hot(b), q, estimator="DR")
    assert direct["lift"] == pytest.approx(lift["lift"], abs=1e-12) and direct["se"] == pytest.approx(lift["se"], rel=1e-9)
    boot = vals.replicates[("a", "DR")] - vals.replicates[("b", "DR")]
    # a bootstrap standard deviation from B resamples has relative Monte-Carlo error ~ 1/sqrt(2B)
    assert abs(boot.std() / lift["se"] - 1) < 4 / np.sqrt(2 * len(boot))


def test_paired_lift_of_a_policy_with_itself_is_exactly_zero(log):
    frame, truth, mask = log
    rules_idx = POL.processor_index(FakeRules().choose_frame(frame))
    pi = POL.greedy_policy(model_probs(truth, 0.3), mask)
    for est in E.ESTIMATORS:
        res = E.paired_lift(E.logged_data(frame, rules_idx), pi, truth, pi, truth, estimator=est)
        assert res["lift"] == res["ci_low"] == res["ci_high"] == 0.0 and res["se"] == 0.0
    with pytest.raises(ConfigError, match="estimator"):
        E.paired_lift(E.logged_data(frame, rules_idx), pi, truth, pi, truth, estimator="AIPW")
    with pytest.raises(ConfigError, match="level"):
        E.paired_difference((np.ones(3), np.ones(3)), (np.ones(3), np.ones(3)), level=95)


def test_lift_by_group_and_psi(log):
    frame, truth, mask = log
    rules_idx = POL.processor_index(FakeRules().choose_frame(frame))
    logged = E.logged_data(frame, rules_idx)
    folds = E.time_folds(frame, 3)
    assert sorted(set(folds)) == ["fold1", "fold2", "fold3"]
    res = E.lift_by_group(logged, POL.greedy_policy(truth, mask), POL.one_hot(rules_idx), truth, folds)
    assert len(res) == 3 and (res["lift"] > 0).all()
    x = np.random.default_rng(0).random(5000)
    assert E.psi(x, x) < 1e-6
    assert E.psi(x, x ** 3) > 0.25


# ---------------------------------------------------------------- the whole evaluation + truth check
def test_evaluate_run_truth_check(log):
    frame, truth, mask = log
    oracle = FakeOracle(frame, truth)
    probs = {"logistic": model_probs(truth, 0.6, seed=1), "xgb": model_probs(truth, 0.2, seed=2)}
    ev = E.evaluate_run(frame, probs, FakeRules(), oracle=oracle, n_boot=100, min_slice_rows=1000)
    assert ev.reference_family == "xgb"  # lowest log loss
    names = set(ev.values.table["policy"])
    assert names == {"static_rules", "success_rate_router", "model:logistic", "model:xgb", "oracle"}
    s = E.summarize(ev.values).set_index("policy")
    assert s.loc["oracle", "true_value"] >= s.loc["model:xgb", "true_value"] >= s.loc["static_rules", "true_value"]
    tc = E.truth_check(ev.values)
    assert tc[tc["estimator"].isin(["SNIPS", "DR"])]["abs_error_pp"].max() < 2.0
    assert set(ev.comparison["mode"]) == {"pooled", "experiment", "naive"}
    js = ev.to_json()
    json.dumps(js)
    assert js["truth"]["available"] and js["policy_value"]["n_rows"] == len(frame)
    assert {r["policy"] for r in js["policy_value"]["lift_vs_rules"]} >= {"oracle", "model:xgb"}


def test_evaluate_run_without_oracle_has_no_truth(log):
    frame, truth, _ = log
    ev = E.evaluate_run(frame.iloc[:5000], {"logistic": model_probs(truth[:5000], 0.3)}, FakeRules(), n_boot=30)
    assert ev.truth_matrix is None and "true_value" not in ev.values.table.columns
    with pytest.raises(ConfigError, match="truth"):
        E.truth_check(ev.values)


# ---------------------------------------------------------------- days the routing service served
def served_log(explore: float = 0.3, n: int = 40_000, seed: int = 5, treatment_share: float = 1.0):
    """The contexts and truth of ``synthetic_log`` routed by a service-like logger whose propensities
    are known: deterministic static rules where the model is not confident (X > 1, ``fallback``),
    a deterministic failover choice on prepaid cards, and elsewhere the model's greedy choice kept with
    probability 1 - explore or a sampled one (logged propensity (1-explore)·1[a = greedy] +
    explore·q(a), as the service's bandit logs it). With ``treatment_share`` < 1 the other orders
    are the A/B control arm: the static rules, propensity 1. ``det_choice`` is the treatment logger's
    deterministic choice (-1 where it randomises). Returns (frame, truth, mask, greedy, det_choice)."""
    frame, truth, mask = synthetic_log(n=n, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    r = np.arange(n)
    rules = POL.processor_index(FakeRules().choose_frame(frame))
    scores = model_probs(truth, 0.5, seed=seed)
    greedy = POL.greedy_choice(scores, mask)
    q = np.where(mask, np.exp(5 * scores), 0.0)
    q /= q.sum(1, keepdims=True)
    sampled = (rng.random(n)[:, None] > np.cumsum(q, axis=1)).sum(1).clip(max=P - 1)
    explored = rng.random(n) < explore
    model_action = np.where(explored, sampled, greedy)
    model_p = (1 - explore) * (model_action == greedy) + explore * q[r, model_action]
    fallback = frame["X"].to_numpy() > 1.0
    # failover: the first candidate that is not the greedy choice (the greedy one is "down")
    first_other = np.argmax(mask & (np.arange(P)[None, :] != greedy[:, None]), axis=1)
    failover = (frame["CARD_TYPE"].to_numpy() == "PREPAID") & ~fallback
    det_choice = np.where(fallback, rules, np.where(failover, first_other, -1))
    treat = rng.random(n) < treatment_share
    action = np.where(treat, np.where(det_choice >= 0, det_choice, model_action), rules)
    source = np.where(fallback, "fallback", np.where(failover, "failover", np.where(explored, "exploration", "model")))
    out = frame.assign(
        PROCESSOR=[catalog.PROCESSORS[a] for a in action],
        APPROVED=(rng.random(n) < truth[r, action]).astype(int),
        EXPERIMENT_ARM=np.where(treat, "TREATMENT", "CONTROL"), ALGORITHM_TYPE=None,
        ROUTING_SOURCE=np.where(treat, source, "rules"),
        PROPENSITY=np.where(treat & (det_choice < 0), model_p, 1.0),
    )
    return out, truth, mask, greedy, det_choice


def _within(values: E.PolicyValues, policy: str, est: str, target: float, k: float = 4.0) -> tuple[bool, dict]:
    """Is the estimate within k standard errors (from the per-row terms' variance) of ``target``?"""
    num, den = values.terms[(policy, est)]
    value, infl = E._influence(num, den)
    se = float(np.sqrt(infl @ infl / (len(infl) - 1) / len(infl)))
    return abs(value - target) <= k * se, {"value": value, "target": target, "se": se}


def test_served_log_uses_logged_propensities_and_recovers_the_truth():
    """A policy that makes the logged choice wherever the logger was deterministic is supported
    everywhere: IPS, SNIPS and DR (with a poor outcome model) recover its true value within 4
    standard errors computed from the per-row terms. Before served rows were recognised, the
    "rules + uniform ε" mixture gave every row propensity 1 here (no EXPERIMENT arm): IPS 27 pp low."""
    frame, truth, mask, greedy, det = served_log()
    rules_idx = POL.processor_index(FakeRules().choose_frame(frame))
    logged = E.logged_data(frame, rules_idx)
    assert logged.served.all() and logged.invalid_propensities == 0
    np.testing.assert_array_equal(logged.propensity, frame["PROPENSITY"].to_numpy())
    oracle = POL.greedy_choice(truth, mask)
    agree = np.where(det >= 0, det, oracle)
    pols = {"agree": POL.one_hot(agree), "greedy": POL.one_hot(np.where(det >= 0, det, greedy))}
    vals = E.estimate_policies(logged, pols, model_probs(truth, 0.6, seed=9), n_boot=20, truth_matrix=truth)
    for pol in pols:
        for est in ("IPS", "SNIPS", "DR"):
            ok, info = _within(vals, pol, est, vals.truth[pol])
            assert ok, (pol, est, info)
    assert vals.logging["unsupported_share"] == {"agree": 0.0, "greedy": 0.0}
    n_stoch = int((frame["PROPENSITY"] < 1).sum())
    assert vals.logging["n_stochastic"] == n_stoch == vals.logging["n_stochastic_served"] and not vals.logging["few_stochastic"]
    # the propensities of the old "rules + uniform ε" model (all 1.0 on these rows) are far off
    old_ips = float((POL.one_hot(agree)[np.arange(len(frame)), logged.action] * logged.reward).mean())
    ok, info = _within(vals, "agree", "IPS", old_ips)
    assert not ok and vals.truth["agree"] - old_ips > 0.02, info


def test_rows_logged_with_propensity_one_and_another_choice_contribute_nothing_to_ips():
    """The oracle disagrees with the deterministic fallback/failover choices on some rows: those rows add
    exactly 0 to IPS, so IPS recovers the oracle's value on the supported rows only, while DR with an
    exact outcome model still recovers its whole value; the summary reports the unsupported share."""
    frame, truth, mask, _, det = served_log()
    rules_idx = POL.processor_index(FakeRules().choose_frame(frame))
    logged = E.logged_data(frame, rules_idx)
    oracle = POL.greedy_choice(truth, mask)
    vals = E.estimate_policies(logged, {"oracle": POL.one_hot(oracle)}, truth, n_boot=20, truth_matrix=truth)
    num, _ = vals.terms[("oracle", "IPS")]
    unsupported = (det >= 0) & (det != oracle)
    assert 0.05 < unsupported.mean() < 0.5
    assert (num[unsupported] == 0).all()
    assert vals.logging["unsupported_share"]["oracle"] == pytest.approx(unsupported.mean(), abs=1e-12)
    r = np.arange(len(frame))
    supported_value = float((truth[r, oracle] * ~unsupported).mean())
    ok, info = _within(vals, "oracle", "IPS", supported_value)
    assert ok, info
    assert vals.truth["oracle"] - supported_value > 0.05  # IPS is short by the unsupported rows' value
    ok, info = _within(vals, "oracle", "DR", vals.truth["oracle"])
    assert ok, info


def test_exploration_off_is_reported_as_too_few_stochastic_rows():
    frame, truth, mask, _, _ = served_log(explore=0.0, n=5_000)
    logged = E.logged_data(frame, POL.processor_index(FakeRules().choose_frame(frame)))
    summary = E.logging_summary(logged, {"oracle": POL.greedy_policy(truth, mask)})
    assert summary["n_stochastic"] == summary["n_exploratory"] == 0 and summary["few_stochastic"]
    assert summary["n_served"] == 5_000
    assert "[exploration].enabled in routing.toml" in summary["note"]
    assert summary["unsupported_share"]["oracle"] > 0.1
    frame2, _, _, _, _ = served_log(explore=0.3, n=5_000)
    on = E.logging_summary(E.logged_data(frame2, POL.processor_index(FakeRules().choose_frame(frame2))))
    assert not on["few_stochastic"] and on["n_exploratory"] > E.MIN_STOCHASTIC_ROWS
    # a window where the only randomisation is a 2 % probe chance (p = 0.98 on the rows it spared)
    # is stochastic on every row yet still "few": almost nothing was tried
    probed = frame.assign(PROPENSITY=0.98)
    s_probe = E.logging_summary(E.logged_data(probed, POL.processor_index(FakeRules().choose_frame(probed))))
    assert s_probe["n_stochastic"] == 5_000 and s_probe["n_exploratory"] == 0 and s_probe["few_stochastic"]


def test_mixed_window_pools_merchant_rows_and_keeps_served_propensities():
    """History routed by the merchant's logger followed by served days: each row gets its own logger's
    propensity, ε is the EXPERIMENT share of the merchant's rows only, and the oracle (supported on both
    parts) is recovered within 4 standard errors."""
    hist, truth_h, mask_h = synthetic_log(n=20_000, seed=3)
    hist = hist.assign(ALGORITHM_TYPE=np.where(hist["EXPERIMENT_ARM"] == "EXPERIMENT", "RANDOMIZED_EXPERIMENT", "STATIC_RULES"),
                       ROUTING_SOURCE=None)
    served, truth_s, mask_s, _, det = served_log(n=20_000)
    frame = pd.concat([hist, served], ignore_index=True)
    truth, mask = np.vstack([truth_h, truth_s]), np.vstack([mask_h, mask_s])
    rules_idx = POL.processor_index(FakeRules().choose_frame(frame))
    logged = E.logged_data(frame, rules_idx)
    assert logged.served.tolist() == [False] * len(hist) + [True] * len(served)
    assert logged.experiment_share == pytest.approx((hist["EXPERIMENT_ARM"] == "EXPERIMENT").mean())
    np.testing.assert_array_equal(logged.propensity[len(hist):], served["PROPENSITY"].to_numpy())
    assert (logged.propensity[:len(hist)] < 1).all()  # the mixture, not the logged 1.0
    oracle = POL.greedy_choice(truth, mask)
    target = np.r_[oracle[:len(hist)], np.where(det >= 0, det, oracle[len(hist):])]
    vals = E.estimate_policies(logged, {"t": POL.one_hot(target)}, model_probs(truth, 0.6, seed=4), n_boot=20,
                               truth_matrix=truth)
    for est in ("IPS", "SNIPS", "DR"):
        ok, info = _within(vals, "t", est, vals.truth["t"])
        assert ok, (est, info)


def test_served_rows_are_recognised_and_invalid_propensities_counted():
    f = pd.DataFrame({
        "PROCESSOR": ["WORLDPAY"] * 6, "APPROVED": [1, 0, 1, 1, 0, 1], "CURRENCY": "MXN", "CARD_BRAND": "VISA",
        "EXPERIMENT_ARM": ["CONTROL", "EXPERIMENT", "treatment", "treatment", "treatment", "treatment"],  # one served arm
        "ALGORITHM_TYPE": ["STATIC_RULES", "RANDOMIZED_EXPERIMENT", None, "MODEL", None, None],
        "ROUTING_SOURCE": [None, None, "rules", None, "exploration", "exploration"],
        # 1e-6: what a Monte-Carlo propensity of 0 was floored at by an earlier service (a weight of 1e6)
        "PROPENSITY": [1.0, 0.25, 0.0, np.nan, 0.4, 1e-6],
    })
    assert E.served_rows(f).tolist() == [False, False, True, True, True, True]
    logged = E.logged_data(f, np.zeros(6, dtype=int))
    assert logged.invalid_propensities == 3
    assert logged.propensity[2:].tolist() == [1.0, 1.0, 0.4, 1.0]
    s = E.logging_summary(logged)
    assert s["n_stochastic"] == s["n_exploratory"] == 2 and s["n_stochastic_served"] == 1
    assert "counted as deterministic" in s["note"]


def test_two_arm_served_log_learns_the_rules_choice_from_control_and_the_rest_from_treatment():
    """Half the orders in the A/B control arm (static rules, propensity 1): per-row logged propensities
    ("naive") leave every control row silent for a policy that disagrees with the rules, so IPS is far
    low; the arm split recovers IPS/SNIPS/DR of every supported policy within 4 standard errors."""
    frame, truth, mask, _, det = served_log(treatment_share=0.5)
    rules_idx = POL.processor_index(FakeRules().choose_frame(frame))
    logged = E.logged_data(frame, rules_idx)
    assert set(logged.arm) == {"control", "treatment"}
    oracle = POL.greedy_choice(truth, mask)
    pols = {"agree": POL.one_hot(np.where(det >= 0, det, oracle)), "rules": POL.one_hot(rules_idx)}
    q = model_probs(truth, 0.6, seed=9)
    vals = E.estimate_policies(logged, pols, q, n_boot=20, truth_matrix=truth)
    for pol in pols:
        for est in ("IPS", "SNIPS", "DR"):
            ok, info = _within(vals, pol, est, vals.truth[pol])
            assert ok, (pol, est, info)
    assert vals.logging["unsupported_share"] == pytest.approx({"agree": 0.0, "rules": 0.0}, abs=1e-12)
    naive = E.estimate_policies(E.logged_data(frame, rules_idx, "naive"), pols, q, n_boot=20, truth_matrix=truth)
    ok, info = _within(vals, "agree", "IPS", naive.estimate("agree", "IPS"))
    assert not ok and vals.truth["agree"] - naive.estimate("agree", "IPS") > 0.05, info


def test_two_arm_unsupported_share_matches_the_known_logger():
    """The oracle also disagrees where the treatment logger is deterministic and the rules differ: that
    mass is uncovered by either arm; its share, measured on treatment rows only, matches the known
    logger's within sampling error; IPS recovers the covered part, DR with an exact model the whole."""
    frame, truth, mask, _, det = served_log(treatment_share=0.5)
    rules_idx = POL.processor_index(FakeRules().choose_frame(frame))
    logged = E.logged_data(frame, rules_idx)
    oracle = POL.greedy_choice(truth, mask)
    vals = E.estimate_policies(logged, {"oracle": POL.one_hot(oracle)}, truth, n_boot=20, truth_matrix=truth)
    uncovered = (oracle != rules_idx) & (det >= 0) & (oracle != det)
    u = float(uncovered.mean())
    assert 0.03 < u < 0.5
    n_t = int((logged.arm == "treatment").sum())
    assert abs(vals.logging["unsupported_share"]["oracle"] - u) < 4 * np.sqrt(u * (1 - u) / n_t), (vals.logging, u)
    r = np.arange(len(frame))
    ok, info = _within(vals, "oracle", "IPS", float((truth[r, oracle] * ~uncovered).mean()))
    assert ok, info
    ok, info = _within(vals, "oracle", "DR", vals.truth["oracle"])
    assert ok, info


def test_days_served_by_the_live_loop_value_the_static_rules_within_the_truth(tmp_path):
    """The real thing: a small world, two days routed by the service in process (A/B arms, exploration),
    read back through the feature query. Every row is recognised as served, the logging note is there,
    and the static rules' SNIPS/IPS value is within 4 standard errors of the live truth (plus the
    labelled-rows offset: PROCESSING rows carry no label, so the estimators measure P(approved | resolved)
    <= P(approved) / (1 - processing_share)); the old all-ones propensities are far low."""
    import datetime as dt
    import glob
    import warnings

    from routing_fakes import fake_loader, write_version
    from smartrouter import warehouse
    from smartrouter.config import load_settings
    from smartrouter.world import World, WorldParams, live

    settings = load_settings({"SMARTROUTER_HOME": str(tmp_path), "SMARTROUTER_LOCAL_DIR": str(tmp_path / "wh"),
                              "SMARTROUTER_REGISTRY_DIR": str(tmp_path / "models")})
    params = WorldParams.small(days=7, per_day=1500, end=dt.date(2025, 6, 30))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warehouse.write_world(World(params), settings, progress=False)
    write_version(tmp_path / "models", "v1", probs={"WORLDPAY": 0.70, "MIT": 0.82, "ELAVON": 0.75, "AMEX": 0.85, "ADYEN": 0.60})
    client = live.InProcessClient(settings, model_loader=fake_loader, seed_features=False, poll=False)
    try:
        days = live.advance(settings, 2, client)
    finally:
        client.close()
    truth = pd.concat([pd.read_parquet(f) for f in sorted(glob.glob(str(tmp_path / "wh" / "live" / "truth" / "*.parquet")))])
    start = dt.datetime.combine(days[0].day, dt.time())
    end = dt.datetime.combine(days[-1].day + dt.timedelta(days=1), dt.time())
    base = warehouse.query_frame("features_base", {"merchant": catalog.MERCHANT, "start": start, "end": end}, settings=settings)
    assert E.served_rows(base).all() and base["ROUTING_SOURCE"].notna().all()
    first = truth[truth["ATTEMPT_NUMBER"] == 1][["ATTEMPT_ID", "RULES_CHOICE", "P_RULES"]]
    f = base[base["STATUS"] != "PROCESSING"].merge(first, on="ATTEMPT_ID", how="inner").reset_index(drop=True)
    f["APPROVED"] = (f["STATUS"] == "APPROVED").astype(int)
    rules_idx = POL.processor_index(f["RULES_CHOICE"])
    logged = E.logged_data(f, rules_idx)
    assert set(logged.arm) == {"control", "treatment"}
    pols = {"static_rules": POL.one_hot(rules_idx)}
    vals = E.estimate_policies(logged, pols, np.full((len(f), P), 0.8), n_boot=20)
    assert vals.logging["n_served"] == len(f) and vals.logging["note"]
    true_value = float(f["P_RULES"].mean())
    offset = true_value * params.processing_share / (1 - params.processing_share)
    for est in ("IPS", "SNIPS"):
        num, den = vals.terms[("static_rules", est)]
        value, infl = E._influence(num, den)
        se = float(np.sqrt(infl @ infl / (len(infl) - 1) / len(infl)))
        assert -4 * se <= value - true_value <= 4 * se + offset, (est, value, true_value, se)
    # before served rows were recognised: no EXPERIMENT arm, so the "rules + uniform ε" mixture was 1.0 on
    # every row and treatment rows off the rules' choice counted as zeros
    old_terms = pols["static_rules"][np.arange(len(f)), logged.action] * logged.reward
    old_se = old_terms.std(ddof=1) / np.sqrt(len(f))
    assert true_value - old_terms.mean() > 4 * old_se + 0.05, (old_terms.mean(), true_value)
