"""Learned crosses (models.crosses): the logistic heads find a planted attribute x attribute x processor
effect, buy nothing where there is none, and the serving form scores them as the trained model does."""

from __future__ import annotations

import json

import numpy as np
import pytest

from smartrouter import catalog
from smartrouter.errors import ArtifactError
from smartrouter.models import data, make_model
from smartrouter.models.crosses import CrossSet, chi2_z
from smartrouter.models.serving import load_serving_model

P = len(catalog.PROCESSORS)
LEVELS = {"CHANNEL": ["WEB", "APP", "KIOSK"], "FLIGHT_TYPE": ["DOMESTIC", "INTERNATIONAL"], "FARE_CLASS": ["A", "B", "C", "D"]}
# the planted effect: channel WEB x international is 0.8 better on WORLDPAY and 0.8 worse on MIT than their
# main effects say, channel KIOSK x domestic the other way round (log-odds)
PLANTED = {(0, 1): (0.8, -0.8), (2, 0): (-0.6, 0.6)}


def _world(n: int, seed: int, planted: bool) -> tuple[data.ModelData, np.ndarray]:
    """Encoded rows with real feature names (one-hot groups + AMOUNT) and each row's true logit per processor."""
    rng = np.random.default_rng(seed)
    codes = {name: rng.integers(0, len(v), n) for name, v in LEVELS.items()}
    amount = rng.normal(size=n).astype(np.float32)
    proc = rng.choice(P, size=n, p=[0.35, 0.3, 0.2, 0.15, 0.0])  # ADYEN never logged: an uncertain head
    truth = np.full((n, P), 1.0) + 0.3 * amount[:, None]
    for name, c in codes.items():
        truth += rng.normal(0.0, 0.3, (len(LEVELS[name]), P))[c]
    if planted:
        for (ch, fl), (wp, mit) in PLANTED.items():
            hit = (codes["CHANNEL"] == ch) & (codes["FLIGHT_TYPE"] == fl)
            truth[hit, 0] += wp
            truth[hit, 1] += mit
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-truth[np.arange(n), proc]))).astype(np.float32)
    cols, names = [], []
    for name, values in LEVELS.items():
        onehot = np.zeros((n, len(values) + 1), dtype=np.float32)  # + the unknown column, never hot here
        onehot[np.arange(n), codes[name]] = 1.0
        cols.append(onehot)
        names += [f"{name}={v}" for v in values] + [f"{name}=__UNKNOWN__"]
    X = np.hstack([*cols, amount[:, None]])
    names.append("AMOUNT")
    split = np.array(["train"] * n, dtype=object)
    split[int(n * 0.7): int(n * 0.85)] = "valid"
    split[int(n * 0.85):] = "test"
    md = data.ModelData(X, proc.astype(np.int64), y, np.ones(n, np.float32), split, names, None, None, np.ones((n, P), bool))
    return md, truth


def _fit(md: data.ModelData, **params):
    return make_model("logistic", min_rows=500, **params).fit(md.part("train"), md.part("valid"))


def _logit_gap_error(model, md: data.ModelData, truth: np.ndarray) -> float:
    """Mean absolute error of the WORLDPAY - MIT log-odds gap on the test rows (what routing between them reads)."""
    test = md.split == "test"
    p = np.clip(model.predict_raw(md.X[test]), 1e-9, 1 - 1e-9)
    gap = np.log(p[:, 0] / (1 - p[:, 0])) - np.log(p[:, 1] / (1 - p[:, 1]))
    return float(np.abs(gap - (truth[test, 0] - truth[test, 1])).mean())


@pytest.fixture(scope="module")
def planted():
    md, truth = _world(80_000, seed=3, planted=True)
    return md, truth, _fit(md), _fit(md, crosses=0)


def test_the_heads_find_the_planted_cross_and_route_it_right(planted):
    md, truth, crossed, plain = planted
    assert crossed.crosses.names() == ["CHANNEL x FLIGHT_TYPE"]
    assert crossed.crosses.crosses[0].z > 5.0
    # without the cross the gap is off by the planted terms on their rows; with it, by estimation noise
    with_cross, without = _logit_gap_error(crossed, md, truth), _logit_gap_error(plain, md, truth)
    assert with_cross < 0.5 * without, (with_cross, without)
    assert crossed.history["crosses"][0]["cross"] == "CHANNEL x FLIGHT_TYPE"
    assert "CHANNEL x FLIGHT_TYPE" in crossed.global_importance()


def test_no_interaction_buys_no_cross():
    md, _ = _world(80_000, seed=4, planted=False)
    model = _fit(md)
    assert len(model.crosses) == 0 and model.Wc.shape == (P, 0)
    assert model.cross_screen[0]["best"][0]["z"] < 5.0


def test_chi2_z_is_the_normal_quantile_of_the_chi_square():
    from scipy import special, stats

    for df in (3.0, 20.0, 300.0):
        for q in (0.5, 0.99, 1 - 1e-6):
            T = float(stats.chi2.ppf(q, df))
            # two exact transforms of one probability: equal to what their float64 round trip keeps
            assert chi2_z(T, df) == pytest.approx(float(stats.norm.ppf(q)), abs=1e-6), (df, q)
    assert chi2_z(1e5, 20.0) > 100.0  # far past where the tail probability underflows a float
    # where scipy's log tail gives up (-inf), the asymptotic series takes over: finite, increasing, and
    # continuous with scipy's value where both exist (T = 1,400 at 3 df: their logs agree to 1e-9 relative)
    zs = [chi2_z(T, 3.0) for T in (1_400.0, 1e4, 1e5, 1e6)]
    assert all(np.isfinite(zs)) and zs == sorted(zs) and len(set(zs)) == 4
    a, x = 1.5, 700.0
    series = -x + (a - 1) * np.log(x) - special.gammaln(a) + np.log1p((a - 1) / x + (a - 1) * (a - 2) / x ** 2)
    assert series == pytest.approx(float(stats.chi2.logsf(1_400.0, 3.0)), rel=1e-9)


def test_serving_scores_the_crosses_as_the_trained_model(planted, tmp_path):
    md, _, crossed, _ = planted
    enc = data.PassthroughEncoder(md.feature_names)
    folder = crossed.export(tmp_path / "logistic", enc.to_spec())
    sm = load_serving_model(folder)
    X = md.X[:5000]
    assert np.abs(sm.score_matrix(X) - crossed.predict_proba(X)).max() < 1e-9
    for i in (0, 11, 4000):
        got = sm.score(dict(zip(md.feature_names, map(float, X[i]))))
        assert np.allclose([got[p] for p in catalog.PROCESSORS], crossed.predict_proba(X[i:i + 1])[0], atol=1e-12)
    # a payment in a planted cell: the cross is among what moved WORLDPAY's score most
    i = int(np.flatnonzero((X[:, 0] == 1) & (X[:, 5] == 1))[0])
    names = [n for n, _ in sm.contributions(dict(zip(md.feature_names, map(float, X[i]))), "WORLDPAY", top_k=3)]
    assert "CHANNEL x FLIGHT_TYPE" in names


def test_the_per_payment_cells_are_the_batch_cells(planted):
    md, _, crossed, _ = planted
    cs = crossed.crosses
    C = cs.columns(md.X[:500])
    for i in range(500):
        assert cs.hot(md.X[i]) == np.flatnonzero(C[i]).tolist()
    again = CrossSet.from_config(json.loads(json.dumps(cs.to_config())), md.n_features)
    assert np.array_equal(again.columns(md.X[:500]), C)


def test_a_cross_outside_the_encoder_is_refused_at_load(planted, tmp_path):
    md, _, crossed, _ = planted
    folder = crossed.export(tmp_path / "logistic", data.PassthroughEncoder(md.feature_names).to_spec())
    meta = json.loads((folder / "model.json").read_text())
    meta["config"]["crosses"][0]["a"]["columns"] = [0, 1, md.n_features + 3]
    (folder / "model.json").write_text(json.dumps(meta))
    from smartrouter.models.base import CHECKSUM_FILE, sha256_file

    sums = json.loads((folder / CHECKSUM_FILE).read_text())
    sums["model.json"] = sha256_file(folder / "model.json")
    (folder / CHECKSUM_FILE).write_text(json.dumps(sums))
    with pytest.raises(ArtifactError, match="config.crosses"):
        load_serving_model(folder)


def test_the_dnn_linear_path_starts_from_the_heads_before_their_crosses(planted):
    md, _, crossed, plain = planted
    W, b = crossed.main_effects
    # the same deterministic fit as a logistic model without crosses, to the bit
    assert np.array_equal(W, plain.W) and np.array_equal(b, plain.b)
    dnn = make_model("dnn", min_rows=500)
    dnn.feature_names = list(md.feature_names)
    dnn.linear_start = crossed
    K, bias = dnn._fit_linear_start(md.part("train"), md.part("valid"))
    assert np.array_equal(K[:, :P], plain.W.T.astype(np.float32)) and np.array_equal(bias[:P], plain.b.astype(np.float32))
