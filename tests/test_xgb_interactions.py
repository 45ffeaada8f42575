"""XGBoost's per-processor trees: gated into the one booster exactly, and they find processor interactions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xgboost as xgb

from smartrouter import catalog
from smartrouter.models import data, make_model
from smartrouter.models.xgb import all_processor_rows, append_trees, gate_tree
from smartrouter.models.xgb_numpy import FixedBatch, compile_booster, gated_processors, own_row_trees, shared_trees, ungated_trees

P = len(catalog.PROCESSORS)
PARAMS = {"objective": "binary:logistic", "max_depth": 4, "eta": 0.3, "tree_method": "hist", "nthread": 2, "seed": 0}


def _rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows [x0..x3, one-hot of 3 processors], processor, label) with a processor x x2 interaction."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan  # missing values must take the same paths through a gated tree
    proc = rng.integers(0, 3, n)
    onehot = np.eye(3, dtype=np.float32)[proc]
    logit = np.nan_to_num(x[:, 0]) + (proc == 1) * 1.5 * np.sign(np.nan_to_num(x[:, 2]))
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return np.hstack([x, onehot]), proc, y


def test_a_gated_tree_adds_its_margin_to_its_processors_rows_only():
    X, proc, y = _rows(6000, seed=1)
    shared = xgb.train(PARAMS, xgb.DMatrix(X, label=y), num_boost_round=15)
    own = proc == 1
    margin = shared.predict(xgb.DMatrix(X[own]), output_margin=True)
    extra = xgb.train(PARAMS, xgb.DMatrix(X[own], label=y[own], base_margin=margin), num_boost_round=10)
    trees = json.loads(extra.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
    combined = append_trees(shared, [gate_tree(t, 4 + 1) for t in trees])  # column 5: processor 1's one-hot
    assert combined.num_boosted_rounds() == 25

    test, tproc, _ = _rows(3000, seed=2)
    got = combined.predict(xgb.DMatrix(test), output_margin=True).astype(np.float64)
    base = shared.predict(xgb.DMatrix(test), output_margin=True).astype(np.float64)
    # the extra booster was trained from a base margin: its own output is only the sum of its trees
    added = extra.predict(xgb.DMatrix(test, base_margin=np.zeros(len(test))), output_margin=True).astype(np.float64)
    on = tproc == 1
    # float32 leaf values summed in a different order: a few float32 ulps of a margin of size ~10
    tol = 25 * 10 * np.finfo(np.float32).eps
    assert np.abs(got[on] - (base[on] + added[on])).max() < tol
    assert np.abs(got[~on] - base[~on]).max() < tol
    assert np.abs(added[on]).max() > 0.1  # the check above is not vacuous
    # the numpy-compiled serving form reads the gated trees as xgboost does
    assert np.abs(compile_booster(combined).margin(test) - got).max() < tol


def test_each_row_walks_the_shared_trees_and_its_own_processors_trees_only():
    """Serving's walk of a booster with gated trees: every row walks the shared trees, and in a second
    batch its own processor's gated trees without their gate (their right subtree), padded with a tree of
    one zero leaf; the two sums give the full booster's margin, for every processor, NaNs included."""
    X, proc, y = _rows(6000, seed=3)
    shared = xgb.train(PARAMS, xgb.DMatrix(X, label=y), num_boost_round=12)
    gated_trees = []
    for j, rounds in ((1, 9), (2, 4)):  # processor 0 gets none, 2 fewer than 1: both padded
        own = proc == j
        margin = shared.predict(xgb.DMatrix(X[own]), output_margin=True)
        extra = xgb.train(PARAMS, xgb.DMatrix(X[own], label=y[own], base_margin=margin), num_boost_round=rounds)
        trees = json.loads(extra.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
        gated_trees += [gate_tree(t, 4 + j) for t in trees]
    compiled = compile_booster(append_trees(shared, gated_trees))
    gated = gated_processors(compiled, first_column=4, n_processors=3)
    assert gated.tolist() == [-1] * 12 + [1] * 9 + [2] * 4  # the shared booster's trees are never taken for gates
    assert shared_trees(gated).tolist() == list(range(12))

    test, tproc, _ = _rows(300, seed=4)
    ungated = ungated_trees(compiled, gated)
    assert ungated.n_trees == 9 + 4 + 1 and ungated.depth <= compiled.depth - 1  # the gate level is gone
    own_rows = own_row_trees(gated, tproc)
    assert own_rows.shape == (300, 9)  # the most any processor has, not all 13
    assert own_rows[tproc == 0].tolist()[0] == [13] * 9  # processor 0: the zero tree only
    assert own_rows[tproc == 2].tolist()[0] == [9, 10, 11, 12] + [13] * 5
    walked = (compiled.bias
              + FixedBatch(compiled, 300, 7, np.tile(shared_trees(gated), (300, 1))).leaf_values(test).sum(axis=1)
              + FixedBatch(ungated, 300, 7, own_rows).leaf_values(test).sum(axis=1))
    tol = 25 * 10 * np.finfo(np.float32).eps  # float32 leaves summed in another order, margins of size ~10
    assert np.abs(walked - compiled.margin(test)).max() < tol
    # walking only the shared trees would be wrong for processors 1 and 2: the check above is not vacuous
    only_shared = compiled.bias + FixedBatch(compiled, 300, 7, np.tile(np.arange(12), (300, 1))).leaf_values(test).sum(axis=1)
    assert np.abs(only_shared - compiled.margin(test))[tproc > 0].max() > 0.05
    with pytest.raises(ValueError, match="outside the 25 trees"):
        FixedBatch(compiled, 300, 7, np.tile(np.arange(12), (300, 1)) + 25)


def _interaction_data(n: int, seed: int) -> tuple[data.ModelData, np.ndarray]:
    """ModelData whose best processor flips with the sign of x2 * x3, under a strong shared main effect.

    Returns the data and the true approval probability of every row on every processor, (n, P).
    """
    rng = np.random.default_rng(seed)
    d = 6
    X = rng.normal(size=(n, d)).astype(np.float32)
    proc = rng.integers(0, P, n)
    shared = 1.5 * X[:, 0] - 1.0 * X[:, 1] + 0.5 * X[:, 4]
    flip = np.sign(X[:, 2] * X[:, 3])
    # processors 0 and 1 trade places with the sign; the others sit in between
    per_proc = np.stack([0.6 * flip, -0.6 * flip, np.zeros(n), 0.1 * flip, -0.1 * flip], axis=1)[:, :P]
    true = 1 / (1 + np.exp(-(1.0 + shared[:, None] + per_proc)))
    y = (rng.random(n) < true[np.arange(n), proc]).astype(np.float32)
    split = np.where(np.arange(n) < 0.7 * n, "train", np.where(np.arange(n) < 0.85 * n, "valid", "test")).astype(object)
    names = [f"f{j}" for j in range(d)]
    return data.ModelData(X, proc, y, np.ones(n, np.float32), split, names), true


def _share_of_oracle_gain(prob: np.ndarray, true: np.ndarray) -> float:
    """(value of the greedy policy - best single processor) / (oracle - best single processor)."""
    rows = np.arange(len(true))
    chosen = true[rows, prob.argmax(axis=1)].mean()
    single = true.mean(axis=0).max()
    return float((chosen - single) / (true.max(axis=1).mean() - single))


@pytest.mark.slow
def test_processor_trees_find_an_attribute_by_attribute_by_processor_interaction():
    """The best processor flips with sign(x2 * x3): no additive model can route on it (a logistic model
    gets ~2 % of the oracle's gain over the best single processor here), and neither did the shared
    booster alone (measured 0.6 %: its processor splits drown under the shared main effects). With 300
    rounds of per-processor trees it was 59 %; 0.4 leaves room for seeds and versions while a model
    that misses the interaction stays far below it."""
    d, true = _interaction_data(40_000, seed=7)
    tr, va, te = d.part("train"), d.part("valid"), d.part("test")
    t = true[d.split == "test"]
    with_trees = make_model("xgb", nthread=2, processor_rounds=300).fit(tr, va)
    assert with_trees.history["processor_best_iteration"]  # the per-processor stage ran
    share = _share_of_oracle_gain(with_trees.predict_proba(te.X), t)
    without = make_model("xgb", nthread=2, processor_rounds=0).fit(tr, va)
    share_without = _share_of_oracle_gain(without.predict_proba(te.X), t)
    assert share >= 0.4 > share_without, (share, share_without)
    # serving: the gated trees score through the compiled form exactly as through xgboost
    rows = all_processor_rows(te.X[:500], with_trees.self_idx)
    ref = with_trees.booster.predict(xgb.DMatrix(rows), output_margin=True)
    assert np.abs(compile_booster(with_trees.booster).margin(rows) - ref).max() < 1e-4
