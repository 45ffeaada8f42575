"""The static-rule optimizer (smartrouter.rule_search) on a synthetic log with a known truth.

The log (tests/eval_fakes.synthetic_log) is the world's logging policy in miniature: static rules
on a control arm, uniform randomization on an experiment arm, and a truth matrix in which the best
processor depends on the segment (what rules can express) and on a per-payment signal X (what they
cannot).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eval_fakes import FakeOracle, model_probs, split_frame, synthetic_log
from smartrouter import catalog
from smartrouter import evaluation as E
from smartrouter import rule_search as RS
from smartrouter.errors import ConfigError
from smartrouter.policies import one_hot, rules_choice
from smartrouter.rules import RulesEngine

# the logging rules of synthetic_log (eval_fakes.FakeRules) as rule rows, with fallbacks
CURRENT_ROWS = [
    {"RULE_ID": 1, "MERCHANT": catalog.MERCHANT, "CURRENCY": "MXN", "CARD_BRAND": "*", "CARD_TYPE": "*", "PROCESSOR": "WORLDPAY", "PRIORITY": 1},
    {"RULE_ID": 2, "MERCHANT": catalog.MERCHANT, "CURRENCY": "MXN", "CARD_BRAND": "*", "CARD_TYPE": "*", "PROCESSOR": "ELAVON", "PRIORITY": 2},
    {"RULE_ID": 3, "MERCHANT": catalog.MERCHANT, "CURRENCY": "USD", "CARD_BRAND": "*", "CARD_TYPE": "*", "PROCESSOR": "ELAVON", "PRIORITY": 1},
    {"RULE_ID": 4, "MERCHANT": catalog.MERCHANT, "CURRENCY": "USD", "CARD_BRAND": "*", "CARD_TYPE": "*", "PROCESSOR": "WORLDPAY", "PRIORITY": 2},
    {"RULE_ID": 5, "MERCHANT": catalog.MERCHANT, "CURRENCY": "*", "CARD_BRAND": "*", "CARD_TYPE": "*", "PROCESSOR": "ADYEN", "PRIORITY": 1,
     "SHADOW_MODE": True},
]


@pytest.fixture(scope="module")
def logged():
    frame, truth, _ = synthetic_log(n=60_000, eps=0.3, seed=11)
    frame = split_frame(frame)
    q = model_probs(truth, noise=0.3)
    lookup = FakeOracle(frame, truth)
    score = dict(zip(frame["CREATED_AT"], q))
    return frame, truth, (lambda f: np.stack([score[t] for t in f["CREATED_AT"]])), lookup.probability_matrix


@pytest.fixture(scope="module")
def result(logged):
    frame, _, score, truth = logged
    return RS.run(frame, score, CURRENT_ROWS, truth=truth)


def _best_static_gain(frame: pd.DataFrame, truth: np.ndarray, mask: np.ndarray, base: np.ndarray) -> float:
    """True gain of the best possible table over (currency, brand, card type) over ``base`` choices."""
    key = frame[list(RS.MATCH_COLUMNS)].astype(str).agg("|".join, axis=1).to_numpy()
    r = np.arange(len(frame))
    best = base.copy()
    for k in np.unique(key):
        idx = np.flatnonzero(key == k)
        best[idx] = np.where(mask[idx].all(0), truth[idx].mean(0), -1).argmax()
    return float((truth[r, best] - truth[r, base]).mean())


def test_cell_sums_equal_the_estimators_value(logged):
    """The search's one-lookup-per-cell value of a table is evaluation's own estimate of it, to rounding."""
    frame, _, score, _ = logged
    search_f, _ = RS.split_windows(frame, 28)
    engine = RulesEngine(CURRENT_ROWS)
    w = RS.logged_window(search_f, score(search_f), engine)
    table = RS._set_first([dict(r) for r in RS._normalize(CURRENT_ROWS) if not r["SHADOW_MODE"]],
                          ("MXN", "*", "DEBIT"), "MIT", 99)
    for est in E.ESTIMATORS:
        cells = RS.build_cells(w, engine, est)
        pi = one_hot(rules_choice(w.frame, RulesEngine(table), w.mask))
        want = E.estimate_policies(w.logged, {"t": pi}, w.q_hat, n_boot=10).point[("t", est)]
        got = cells.value(cells.choices(table))
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12), est
        # and the noise bar a move must clear is the paired interval's standard error
        base = RS._normalize(CURRENT_ROWS)[:4]
        pi0 = one_hot(rules_choice(w.frame, RulesEngine(base), w.mask))
        pv = E.estimate_policies(w.logged, {"t": pi, "c": pi0}, w.q_hat, n_boot=10)
        se = cells.lift_se(cells.choices(table), cells.choices(base))
        assert se == pytest.approx(pv.lift("t", "c", est)["se"], rel=1e-9), est


def test_proposal_is_truly_better_and_honestly_estimated(logged, result):
    frame, truth_m, _, _ = logged
    head = result.report.headline()
    _, hold = RS.split_windows(frame, 28)
    mask = RS.logged_window(hold, np.zeros((len(hold), len(catalog.PROCESSORS))), RulesEngine(CURRENT_ROWS)).mask
    truth = np.asarray(FakeOracle(frame, truth_m).probability_matrix(hold))
    best = _best_static_gain(hold, truth, mask, rules_choice(hold, RulesEngine(CURRENT_ROWS), mask))
    # the search sees noisy estimates on other days, so it need not find the best table; half of it
    # is the bar for the rules against the model, and the best table is an upper bound on it
    assert head["true_lift"] >= 0.5 * best > 0
    assert len(result.proposal.rows) <= RS.load_config()["search"]["max_rows"]
    # the held-out estimate is judged on rows the search never saw: its interval covers the truth
    assert head["lift_ci"][0] <= head["true_lift"] <= head["lift_ci"][1]
    assert head["value_covered"]
    # the model's greedy policy also uses X, which no rule can name
    assert head["true_model_lift"] > head["true_lift"]


def test_search_starts_from_the_current_table_and_respects_its_structure(result):
    steps = result.proposal.steps
    assert steps[0].move == "current table" and steps[0].rows == 4  # active rows only: the shadow row is left alone
    # every step is worth its row: a re-routing gains (clearly), a dropped row never re-routes to a loss
    assert all(b.value >= a.value for a, b in zip(steps, steps[1:]))
    assert all(s.z >= 2.0 for s in steps[1:] if not s.move.startswith("drop"))
    assert result.proposal.shadow_rows and all(not r["SHADOW_MODE"] for r in result.proposal.rows)
    # every payment keeps a first choice and a fallback: fallbacks are what failover and retries use
    engine = RulesEngine(result.proposal.rows)
    for cur in ("MXN", "USD"):
        for brand in ("VISA", "MASTERCARD"):
            for ctype in catalog.CARD_TYPES:
                assert len(engine.ranked(cur, brand, ctype)) >= 2


def test_exported_rows_route_exactly_as_evaluated(logged, result):
    """Rows in VW_ROUTING_MERCHANT_RULE format load into the engine unchanged and route as the report assumed."""
    frame, _, score, _ = logged
    _, hold = RS.split_windows(frame, 28)
    doc = result.to_json()
    active = RS.export_rows(doc, shadow=False)
    assert list(active.columns) == list(catalog.RULE_COLUMNS)
    w = RS.logged_window(hold, score(hold), RulesEngine(CURRENT_ROWS))
    exported = rules_choice(hold, RulesEngine(active), w.mask)
    assert (exported == rules_choice(hold, RulesEngine(result.proposal.rows), w.mask)).all()
    # the value the report states is evaluation's estimate of exactly the exported routing
    want = E.estimate_policies(w.logged, {"x": one_hot(exported)}, w.q_hat, n_boot=10).point[("x", "DR")]
    assert result.report.values.set_index("policy").loc[RS.PROPOSED, "estimate"] == pytest.approx(want, rel=1e-12)
    # shadowed: appended to the merchant's table, active routing is unchanged and the shadow ranking is the proposal's
    shadow = RS.export_rows(doc, shadow=True)
    assert shadow["SHADOW_MODE"].all() and set(shadow["RULE_ID"]).isdisjoint(r["RULE_ID"] for r in CURRENT_ROWS)
    merged = RulesEngine(pd.concat([pd.DataFrame(CURRENT_ROWS), shadow], ignore_index=True))
    proposed, current = RulesEngine(active), RulesEngine(CURRENT_ROWS)
    for cur in ("MXN", "USD"):
        for brand in ("VISA", "MASTERCARD"):
            for ctype in catalog.CARD_TYPES:
                assert merged.ranked(cur, brand, ctype) == current.ranked(cur, brand, ctype)
                assert merged.shadow(cur, brand, ctype)[0] == proposed.ranked(cur, brand, ctype)[0]


def test_row_penalty_and_limit(logged):
    frame, _, score, _ = logged
    search_f, _ = RS.split_windows(frame, 28)
    w = RS.logged_window(search_f, score(search_f), RulesEngine(CURRENT_ROWS))
    # a penalty larger than any possible gain (approval is a share: gains are below 1) adds nothing
    strict = RS.load_config(overrides={"search": {"row_penalty": 1.0}})
    p = RS.propose(w, CURRENT_ROWS, strict)
    assert len(p.rows) <= 4 and all(r["RULE_ID"] <= 4 for r in p.rows)
    # a limit equal to the current table's length: re-ordering and swaps only
    tight = RS.propose(w, CURRENT_ROWS, RS.load_config(overrides={"search": {"max_rows": 4}}))
    assert len(tight.rows) <= 4 and tight.search_value_proposed >= tight.search_value_current
    with pytest.raises(ConfigError, match="max rows 1 is too few"):
        RS.propose(w, CURRENT_ROWS, RS.load_config(overrides={"search": {"max_rows": 1}}))


def test_segments_limit_what_rows_may_name(logged):
    frame, _, score, _ = logged
    search_f, _ = RS.split_windows(frame, 28)
    w = RS.logged_window(search_f, score(search_f), RulesEngine(CURRENT_ROWS))
    p = RS.propose(w, CURRENT_ROWS, RS.load_config(overrides={"search": {"segments": ["CURRENCY"]}}))
    assert all(r["CARD_BRAND"] == "*" and r["CARD_TYPE"] == "*" for r in p.rows)


def test_config_is_strict(tmp_path):
    with pytest.raises(ConfigError, match="unknown segment column"):
        RS.load_config(overrides={"search": {"segments": ["CARD_COUNTRY"]}})
    with pytest.raises(ConfigError, match="at least 1"):
        RS.load_config(overrides={"search": {"max_rows": 0}})
    with pytest.raises(ConfigError, match="unknown key 'max_row'"):
        RS.load_config(overrides={"search": {"max_row": 3}})
    bad = tmp_path / "r.toml"
    bad.write_text(RS.CONFIG_PATH.read_text().replace("seed = 0", "seed = 0\nextra = 1"))
    with pytest.raises(ConfigError, match="unknown key 'extra'"):
        RS.load_config(bad)


def test_no_logs_is_a_clear_error():
    empty = pd.DataFrame(columns=["CREATED_AT", "SPLIT", "NUM_ATTEMPTS_ORDER"])
    with pytest.raises(ConfigError, match="no test split"):
        RS.split_windows(empty, 28)


def test_diff_in_words(result):
    lines = RS.diff_lines(result.to_json())
    assert "held-out DR lift" in lines[0]
    changes = [ln for ln in lines if "→" in ln]
    assert len(changes) == len(result.report.segments) > 0
    assert all("payments/week" in ln and " pp [" in ln for ln in changes)
