"""The training engine switch: the local engine is today's booster without the concatenation; dask trains the same model."""

import math
import socket
import subprocess
import sys
import time

import dask
import numpy as np
import pytest
import xgboost as xgb
from sklearn.metrics import roc_auc_score

from smartrouter import config
from smartrouter.errors import ConfigError
from smartrouter.models import engine

PARAMS = {
    "objective": "binary:logistic",
    "eval_metric": "logloss",
    "tree_method": "hist",
    "max_depth": 5,
    "eta": 0.15,
    "subsample": 0.9,
    "colsample_bytree": 0.8,
    "min_child_weight": 5.0,
    "seed": 11,
    "verbosity": 0,
    "monotone_constraints": "(1,0,0,0,0,0,0,0,0,0)",
}
ROUNDS, PATIENCE = 150, 10


def _world(n: int, rng: np.random.Generator):
    """Rows with missing values, a categorical-like column and an interaction, as float32 like xgb's rows."""
    X = rng.normal(size=(n, 10)).astype(np.float32)
    X[:, 3] = rng.integers(0, 5, n)
    X[rng.random((n, 10)) < 0.05] = np.nan
    Z = np.nan_to_num(X)
    logit = 0.9 * Z[:, 0] - 0.6 * Z[:, 1] ** 2 + 0.8 * (X[:, 3] == 2) + 0.7 * Z[:, 2] * Z[:, 4] - 0.3
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    weight = rng.uniform(0.5, 2.0, n).astype(np.float32)
    return X, y, weight


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(20261203)
    return {"train": _world(60_000, rng), "valid": _world(15_000, rng), "test": _world(20_000, rng)}


def _settings(**env):
    return config.load_settings({f"SMARTROUTER_{k.upper()}": v for k, v in env.items()})


@pytest.fixture(scope="module")
def reference(data):
    """Today's call in models/xgb.py: one QuantileDMatrix on the whole arrays; (booster, evals_result)."""
    X, y, w = data["train"]
    Xv, yv, wv = data["valid"]
    dtr = xgb.QuantileDMatrix(X, label=y, weight=w)
    dva = xgb.QuantileDMatrix(Xv, label=yv, weight=wv, ref=dtr)
    curves = {}
    booster = xgb.train(
        PARAMS, dtr, ROUNDS, evals=[(dtr, "train"), (dva, "valid")], early_stopping_rounds=PATIENCE, evals_result=curves, verbose_eval=False
    )
    return booster, curves


def test_local_engine_builds_the_same_booster_as_the_concatenated_arrays(data, reference):
    # XGBoost's numpy QuantileDMatrix is a one-batch DataIter inside, and each feature's sketch
    # is fed row by row either way, so batching changes neither the cuts nor the trees: the
    # dumps are identical, not merely close. Uneven batches (7,000 rows; the last is shorter);
    # train read lazily through BatchSource, valid as a list.
    expected, expected_curves = reference
    train = engine.BatchSource(lambda: iter(engine.batches_of(*data["train"], rows=7_000)))
    valid = engine.batches_of(*data["valid"], rows=7_000)
    booster, curves = engine.fit_booster(
        PARAMS, train, valid, num_boost_round=ROUNDS, early_stopping_rounds=PATIENCE, settings=_settings()
    )
    assert booster.best_iteration == expected.best_iteration < ROUNDS - 1  # early stopping did stop
    assert booster.get_dump(dump_format="json") == expected.get_dump(dump_format="json")
    assert curves == expected_curves and set(curves) == {"train", "valid"}


def test_batches_must_be_reiterable_and_float32(data):
    X, y, w = data["valid"]
    one_shot = (b for b in engine.batches_of(X, y, w, rows=5_000))
    with pytest.raises(TypeError, match="one-shot"):
        engine.fit_booster(PARAMS, one_shot, None, num_boost_round=2, early_stopping_rounds=1, settings=_settings())
    batches = engine.batches_of(X, y, w, rows=5_000)
    batches[1] = (batches[1][0].astype(np.float64), batches[1][1], batches[1][2])
    with pytest.raises(ValueError, match="train batch 1: X must be a 2-D float32"):
        engine.fit_booster(PARAMS, batches, None, num_boost_round=2, early_stopping_rounds=1, settings=_settings())


def _hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUC measured on n_pos positives and n_neg negatives (Hanley & McNeil 1982)."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    return math.sqrt((auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg))


def test_dask_engine_on_a_local_cluster_trains_the_same_model(data, reference):
    # Distributed hist is not bit-identical to local hist: each worker sketches its own rows and
    # the sketches are merged (slightly different cuts), row subsampling draws per worker, and
    # the per-round histograms are summed across workers in another order (float addition is not
    # associative). The dask booster is another fit of the same model on the same rows, like a
    # change of seed. The test set cannot tell two models apart whose AUCs differ by less than its
    # own sampling error, so the tolerance is 2 standard errors of the AUC on these test rows.
    # The local booster is the reference (the test above shows the local engine builds it).
    local, _ = reference
    train = engine.batches_of(*data["train"], rows=7_000)  # 9 batches over 2 workers
    valid = engine.batches_of(*data["valid"], rows=7_000)
    started = time.monotonic()
    distributed, curves = engine.fit_booster(
        PARAMS, train, valid, num_boost_round=ROUNDS, early_stopping_rounds=PATIENCE,
        settings=_settings(train_engine="dask", dask_workers="2"),
    )
    seconds = time.monotonic() - started
    assert type(distributed) is xgb.Booster  # a plain booster: artifact, xgb_numpy and serving unchanged
    rounds = distributed.num_boosted_rounds()
    assert set(curves) == {"train", "valid"} and all(len(c["logloss"]) == rounds for c in curves.values())
    assert distributed.best_iteration < rounds - 1 and curves["valid"]["logloss"][-1] < curves["valid"]["logloss"][0]
    X, y, _ = data["test"]
    auc_local = roc_auc_score(y, local.predict(xgb.DMatrix(X), iteration_range=(0, local.best_iteration + 1)))
    auc_dask = roc_auc_score(y, distributed.predict(xgb.DMatrix(X), iteration_range=(0, distributed.best_iteration + 1)))
    se = _hanley_mcneil_se(auc_local, int(y.sum()), int(len(y) - y.sum()))
    print(f"AUC local {auc_local:.4f} dask {auc_dask:.4f} (SE {se:.4f}); dask engine {seconds:.1f} s incl. LocalCluster start/stop")
    assert abs(auc_dask - auc_local) <= 2 * se


def test_an_unknown_engine_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match=r"SMARTROUTER_TRAIN_ENGINE='spark'.*local, dask"):
        _settings(train_engine="spark")
    env = {"SMARTROUTER_TRAIN_ENGINE": "dask", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "smartrouter", "config", "--json"], capture_output=True, text=True, env=env, check=True)
    assert '"train_engine": "dask"' in out.stdout


def test_dask_not_installed_says_how_to_install(monkeypatch, data):
    settings = _settings(train_engine="dask")  # taken while dask is importable
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'dask\[distributed\]'"):
        _settings(train_engine="dask")
    batches = engine.batches_of(*data["valid"], rows=5_000)
    with pytest.raises(ConfigError, match=r"cannot import distributed: pip install 'dask\[distributed\]'"):
        engine.fit_booster(PARAMS, batches, None, num_boost_round=2, early_stopping_rounds=1, settings=settings)


def test_an_unreachable_scheduler_is_a_clear_error(data):
    with socket.socket() as s:  # a port nothing listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = _settings(train_engine="dask", dask_scheduler=f"tcp://127.0.0.1:{port}")
    batches = engine.batches_of(*data["valid"], rows=5_000)
    started = time.monotonic()
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        with pytest.raises(ConfigError, match=rf"SMARTROUTER_DASK_SCHEDULER='tcp://127.0.0.1:{port}' cannot be reached"):
            engine.fit_booster(PARAMS, batches, None, num_boost_round=2, early_stopping_rounds=1, settings=settings)
    assert time.monotonic() - started < 15  # the connect timeout, not Dask's default 30 s
