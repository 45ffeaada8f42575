"""Numpy-compiled XGBoost trees: exact parity with xgboost (NaNs, depths), fixed-batch hot path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xgboost as xgb

from smartrouter.models.xgb_numpy import CompiledTrees, FixedBatch, compile_booster, concat


def _train(depth: int, rounds: int, seed: int, width: int = 12, n: int = 4000) -> tuple[xgb.Booster, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, width)).astype(np.float32)
    X[:, 3] = rng.integers(0, 2, n)  # a 0/1 column, as one-hot features are
    X[rng.random(X.shape) < 0.15] = np.nan  # missing values learn a default direction per node
    logit = 1.2 * np.nan_to_num(X[:, 0]) - np.nan_to_num(X[:, 1]) * np.nan_to_num(X[:, 2]) + 0.8 * X[:, 3] + np.isnan(X[:, 4])
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    params = {"objective": "binary:logistic", "max_depth": depth, "eta": 0.3, "tree_method": "hist", "nthread": 2, "seed": seed}
    return xgb.train(params, xgb.DMatrix(X, label=y), num_boost_round=rounds), X


@pytest.fixture(scope="module")
def trained():
    return _train(depth=6, rounds=40, seed=3)


def _rows(width: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, width)).astype(np.float32)
    X[:, 3] = rng.integers(0, 2, n)
    X[rng.random(X.shape) < 0.2] = np.nan
    X[:50] = np.nan  # whole rows missing
    return X


def test_compiled_trees_match_booster_predict_on_12000_rows_with_nans(trained):
    bst, train_X = trained
    c = compile_booster(bst)
    X = np.vstack([_rows(12, 8000, 1), train_X])  # training rows hit split thresholds exactly
    ref = bst.predict(xgb.DMatrix(X, missing=np.nan)).astype(np.float64)
    assert len(X) >= 10_000 and np.isnan(X).any()
    assert np.abs(c.predict(X) - ref).max() < 1e-5
    margin = bst.predict(xgb.DMatrix(X), output_margin=True).astype(np.float64)
    assert np.abs(c.margin(X) - margin).max() < 1e-4
    assert c.n_trees == 40 and c.depth == 6


@pytest.mark.parametrize("depth", [1, 2, 4, 7])
def test_fixed_batch_reaches_the_same_leaves_at_any_depth(depth):
    bst, _ = _train(depth=depth, rounds=15, seed=depth, n=2000)
    c = compile_booster(bst)
    fb = FixedBatch(c, 5, 12)
    for seed in range(40):
        X = _rows(12, 5, seed)
        if seed % 2:
            X = np.nan_to_num(X)  # the no-NaN fast path
        got = fb.leaf_values(X)
        assert np.array_equal(got, c.value[c.leaves(X)])
        ref = bst.predict(xgb.DMatrix(X)).astype(np.float64)
        assert np.abs(1 / (1 + np.exp(-(c.bias + got.sum(axis=1)))) - ref).max() < 1e-5


def test_concat_serves_two_boosters_in_one_traversal(trained):
    bst, _ = trained
    small, _ = _train(depth=3, rounds=10, seed=9, width=8, n=1500)  # reads only the first 8 columns
    a, b = compile_booster(bst), compile_booster(small)
    both = FixedBatch(concat([a, b]), 5, 12)
    X = _rows(12, 5, 11)
    leaf = both.leaf_values(X)
    assert np.allclose(a.bias + leaf[:, : a.n_trees].sum(axis=1), bst.predict(xgb.DMatrix(X), output_margin=True), atol=1e-4)
    assert np.allclose(b.bias + leaf[:, a.n_trees :].sum(axis=1), small.predict(xgb.DMatrix(X[:, :8]), output_margin=True), atol=1e-4)


def test_base_score_is_read_in_probability_space(trained):
    bst, _ = trained
    base = float(json.loads(bst.save_config())["learner"]["learner_model_param"]["base_score"].strip("[]"))
    assert compile_booster(bst).bias == pytest.approx(np.log(base / (1 - base)))


def test_arrays_round_trip_and_bad_arrays_are_named(trained):
    c = compile_booster(trained[0])
    arrays = c.to_arrays("head_")
    back = CompiledTrees.from_arrays(arrays, "head_")
    X = _rows(12, 300, 2)
    assert np.array_equal(back.predict(X), c.predict(X))
    broken = dict(arrays, head_feature=arrays["head_feature"] + 100)
    with pytest.raises(ValueError, match="head_feature points outside"):
        CompiledTrees.from_arrays(broken, "head_")
    with pytest.raises(ValueError, match="head_children"):
        CompiledTrees.from_arrays(dict(arrays, head_children=arrays["head_children"][:-2]), "head_")
    with pytest.raises(ValueError, match="lacks arrays"):
        CompiledTrees.from_arrays({k: v for k, v in arrays.items() if k != "head_value"}, "head_")


def test_other_objectives_are_refused():
    X = np.random.default_rng(0).normal(size=(200, 3))
    bst = xgb.train({"objective": "reg:squarederror", "nthread": 1}, xgb.DMatrix(X, label=X[:, 0]), num_boost_round=2)
    with pytest.raises(ValueError, match="binary:logistic"):
        compile_booster(bst)
