"""Approval models on synthetic arrays: metrics, calibration, masking, uncertain heads, weighting."""

from __future__ import annotations

import json

import numpy as np
import pytest

from smartrouter import catalog
from smartrouter.errors import ConfigError, DataCheckError
from smartrouter.models import calibration, data, make_model, metrics

P = len(catalog.PROCESSORS)


@pytest.fixture(scope="module")
def synth():
    return data.synthetic(6000, d=12, seed=3)


# ------------------------------------------------------------------ metrics
def test_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300), 1)  # many ties
    pos, neg = p[y == 1], p[y == 0]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert metrics.auc(y, p) == pytest.approx(brute, abs=1e-12)
    assert np.isnan(metrics.auc(np.ones(5), np.random.random(5)))


def test_ece_is_equal_mass_and_zero_when_calibrated_in_every_bin():
    p = np.repeat(np.linspace(0.05, 0.95, 15), 100)
    y = np.concatenate([np.r_[np.ones(int(round(q * 100))), np.zeros(100 - int(round(q * 100)))] for q in np.linspace(0.05, 0.95, 15)])
    assert metrics.ece(y, p) < 0.006
    assert metrics.ece(np.zeros(1000), np.full(1000, 0.3)) == pytest.approx(0.3)
    assert metrics.brier(np.zeros(4), np.full(4, 0.5)) == pytest.approx(0.25)
    assert metrics.logloss(np.ones(3), np.full(3, np.e ** -1)) == pytest.approx(1.0)


# ------------------------------------------------------------------ calibration
def test_calibration_fixes_a_miscalibrated_score_and_serialises():
    rng = np.random.default_rng(1)
    true = rng.uniform(0.3, 0.99, 40000)
    y = (rng.random(40000) < true).astype(float)
    raw = true**3  # systematically too low
    cal = calibration.fit_calibrator(raw, y)
    assert cal["method"] != "identity"
    spec = json.loads(json.dumps(cal))  # plain JSON
    assert calibration.validate_spec(spec) is None
    fixed = calibration.apply(spec, raw)
    assert metrics.ece(y, fixed) < 0.02 < metrics.ece(y, raw)
    for q in (0.0, 0.01, 0.37, 0.5, 0.999, 1.0):  # the per-payment path agrees with the vectorised one
        assert calibration.apply_scalar(spec, q) == pytest.approx(float(calibration.apply(spec, np.array([q]))[0]), abs=1e-12)


def test_calibration_with_too_little_data_is_identity():
    assert calibration.fit_calibrator(np.array([0.5, 0.6]), np.array([1.0, 0.0]))["method"] == "identity"
    assert calibration.validate_spec({"method": "isotonic", "x": [0.2, 0.1], "y": [0.1, 0.2]})
    assert calibration.validate_spec({"method": "magic"})


# ------------------------------------------------------------------ data
def test_importance_weights_clip_and_self_normalise_per_processor():
    proc = np.array([0, 0, 0, 1, 1])
    w = data.importance_weights(np.array([1.0, 0.5, 0.001, 1.0, np.nan]), proc)
    assert w[:3].mean() == pytest.approx(1.0) and w[3:].mean() == pytest.approx(1.0)
    assert w[2] / w[0] == pytest.approx(data.WEIGHT_CLIP)  # 1/0.001 clipped
    assert w[3] == w[4]  # a missing propensity counts as 1


def test_per_processor_groups_ignore_brand_and_message_type_values():
    names = ["CARD_BRAND=AMEX", "CARD_BRAND=VISA", "MCI_MSI_TYPE=MIT", "MCI_MSI_TYPE=CIT"]
    names += [f"HEALTH_{p}_1H_TIMEOUT_RATE" for p in catalog.PROCESSORS] + ["HEALTH_MIT_1H_VOLUME"]
    groups = data.per_processor_groups(names)
    assert list(groups) == ["HEALTH_{P}_1H_TIMEOUT_RATE"]
    assert groups["HEALTH_{P}_1H_TIMEOUT_RATE"] == [4, 5, 6, 7, 8]


def test_model_data_rejects_inconsistent_arrays():
    with pytest.raises(DataCheckError, match="rows"):
        data.ModelData(np.zeros((3, 2), np.float32), np.zeros(2, np.int64), np.zeros(3), np.ones(3), np.array(["train"] * 3))
    with pytest.raises(DataCheckError, match="processor_idx"):
        data.ModelData(np.zeros((1, 2), np.float32), np.array([P]), np.zeros(1), np.ones(1), np.array(["train"]))


def test_unknown_family_or_parameter_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown model family"):
        make_model("forest")
    with pytest.raises(ConfigError, match="no parameter"):
        make_model("logistic", depth=3)


# ------------------------------------------------------------------ families
FAST = {"logistic": {}, "xgb": {"n_estimators": 60, "nthread": 2}, "dnn": {"epochs": 6, "hidden": (32,), "batch_size": 256}}


@pytest.mark.parametrize("family", ["logistic", "xgb", "dnn"])
def test_family_scores_every_processor_and_flags_the_late_joiner(synth, family):
    tr, va, te = synth.part("train"), synth.part("valid"), synth.part("test")
    m = make_model(family, min_rows=500, **FAST[family]).fit(tr, va)
    prob = m.predict_proba(te.X)
    assert prob.shape == (len(te), P) and np.all((prob >= 0) & (prob <= 1))
    # ADYEN has ~100 train rows: uncertain, shrunk toward the global prediction; the big heads are not
    assert m.uncertain["ADYEN"] and not m.uncertain["WORLDPAY"]
    assert 0 < m.blend[catalog.PROCESSOR_INDEX["ADYEN"]] < 1 and m.blend[0] == 1.0
    ev = {r["processor"]: r for r in m.evaluate(te)}
    assert ev["WORLDPAY"]["auc"] > 0.75  # the synthetic signal is strong
    assert len(m.global_importance(tr)) >= tr.n_features


def test_dnn_masked_loss_trains_only_the_logged_head():
    """Processor 1's rows are all approved, everyone else's declined: only masking can separate the heads."""
    rng = np.random.default_rng(0)
    n = 4000
    X = rng.normal(size=(n, 4)).astype(np.float32)
    proc = rng.integers(0, 3, n)
    y = (proc == 1).astype(np.float32)
    split = np.array(["train"] * 3000 + ["valid"] * 1000, dtype=object)
    d = data.ModelData(X, proc, y, np.ones(n, np.float32), split, [f"f{i}" for i in range(4)])
    # wide=False: the trunk alone must separate the heads (the linear path would do it by itself)
    m = make_model("dnn", epochs=8, hidden=(8,), dropout=0.0, batch_size=128, learning_rate=1e-2, min_rows=10, min_class=0,
                   wide=False)
    m.fit(d.part("train"), d.part("valid"))
    raw = m.predict_raw(X[:200])
    assert raw[:, 1].mean() > 0.9 and raw[:, 0].mean() < 0.1 and raw[:, 2].mean() < 0.1


def test_importance_weighting_changes_weights_not_shapes(synth):
    w = data.importance_weights(synth.propensity, synth.processor_idx)
    assert w.max() > 1.5  # experiment-arm rows (propensity 0.25) weigh more
    d2 = data.ModelData(synth.X, synth.processor_idx, synth.y, w, synth.split, synth.feature_names)
    m = make_model("logistic").fit(d2.part("train"), d2.part("valid"))
    assert m.predict_proba(synth.X[:10]).shape == (10, P)


# ------------------------------------------------------------------ sign-constrained inputs (timeouts)
def test_monotone_columns_come_from_the_health_feature_definition():
    from smartrouter import features

    names = ["AMOUNT"]
    for p in catalog.PROCESSORS:
        for m in ("APPROVAL_RATE", "TIMEOUT_RATE", "DECLINE_RATE", "VOLUME"):
            names.append(features.health_column(p, "1H", m))
        names.append(features.health_column(p, "1H", "TIMEOUT_RATE") + "__MISSING")
    scale = np.full(len(names), 0.05)
    mono = data.monotone_columns(names, scale)
    assert [names[j] for j in mono.negative] == [features.health_column(p, "1H", "TIMEOUT_RATE") for p in catalog.PROCESSORS]
    assert len(mono.triples) == P and all(names[t[1]].endswith("_TIMEOUT_RATE") for t in mono.triples)
    scale[names.index(features.health_column("MIT", "1H", "APPROVAL_RATE"))] = np.nan  # unknown scale: no triple, sign kept
    mono = data.monotone_columns(names, scale)
    assert len(mono.triples) == P - 1 and len(mono.negative) == P


def test_signed_logistic_without_constraints_is_sklearns_logistic_regression(synth):
    from sklearn.linear_model import LogisticRegression

    from smartrouter.models.logistic import SignedLinear, fit_signed_logistic

    tr = synth.part("train")
    m = tr.processor_idx == 0
    X, y = tr.X[m], tr.y[m]
    coef, b, _ = fit_signed_logistic(X, y, np.ones(len(y)), C=0.2, signs=SignedLinear(X.shape[1], data.MonotoneColumns()),
                                     max_iter=2000, tol=1e-7)
    ref = LogisticRegression(C=0.2, max_iter=2000, tol=1e-7).fit(X, y)
    # the same objective: the same probabilities (the collinear health rates leave the
    # coefficients themselves loosely determined)
    ours = 1 / (1 + np.exp(-(X.astype(np.float64) @ coef + b)))
    assert np.abs(ours - ref.predict_proba(X)[:, 1]).max() < 1e-3


def _timeout_helps(n: int = 9000, seed: int = 4) -> data.ModelData:
    """Synthetic data where a processor's own recent timeout rate RAISES its approval (a spurious pattern).

    An unconstrained fit learns it; the sign constraints must hold regardless.
    """
    d = data.synthetic(n, d=6, seed=seed, late_processor_rows=0)
    mono = data.monotone_columns(d.feature_names)
    own_t = d.X[np.arange(n), np.array([t[1] for t in mono.triples])[d.processor_idx]]
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 1 / (1 + np.exp(-(1.0 + 60.0 * (own_t - 0.03))))).astype(np.float32)
    return data.ModelData(d.X, d.processor_idx, y, d.weight, d.split, d.feature_names)


def _shift_to_timeouts(X: np.ndarray, mono: data.MonotoneColumns, source: int, step: float) -> np.ndarray:
    """Move ``step`` of every window's share from the approval (source=0) or decline (2) rate to the timeout rate."""
    out = X.copy()
    for t in mono.triples:
        moved = np.minimum(out[:, t[source]], step)
        out[:, t[source]] -= moved
        out[:, t[1]] += moved
    return out


@pytest.mark.parametrize("family", ["logistic", "dnn"])
def test_timeouts_never_raise_a_score_even_when_the_data_says_they_do(family):
    d = _timeout_helps()
    tr, va, te = d.part("train"), d.part("valid"), d.part("test")
    params = {"logistic": {}, "dnn": {"epochs": 6, "hidden": (16,), "batch_size": 256, "learning_rate": 5e-3}}[family]
    mono = data.monotone_columns(d.feature_names)
    neg = list(mono.negative)

    free = make_model(family, min_rows=200, monotone=False, **params).fit(tr, va)
    raised = te.X.copy()
    raised[:, neg] += 0.2
    # the pattern is learnable: without the constraint some score rises with a timeout rate,
    # so the checks below can fail
    assert (free.predict_raw(raised) - free.predict_raw(te.X)).max() > 1e-3

    m = make_model(family, min_rows=200, **params).fit(tr, va)
    base = m.predict_proba(te.X)
    # not 0: where a bound is active (timeout weight == approval weight) a moved share changes the
    # score by rounding alone: float32 X in the logistic model (~1e-11 seen), and Keras' float32
    # output in the DNN (a few ulps, ~1e-7). A learned effect is 1e-3 and more.
    tol = 1e-9 if family == "logistic" else 3e-7
    assert (m.predict_proba(raised) - base).max() <= tol
    for source in (0, 2):  # share moving from approvals or from issuer declines to timeouts
        assert (m.predict_proba(_shift_to_timeouts(te.X, mono, source, 0.1)) - base).max() <= tol
    if family == "logistic":
        assert m.W[:, neg].max() <= 0 and m.Wg[neg].max() <= 0
    else:
        assert m.wide[neg].max() <= 0 and not np.any(m.layers[0][0][mono.columns])  # wide path only, never the trunk


def test_dnn_export_without_its_linear_path_fails_to_load_naming_the_file(synth, tmp_path):
    from smartrouter.errors import ArtifactError
    from smartrouter.models import base
    from smartrouter.models.serving import load_serving_model

    m = make_model("dnn", epochs=1, hidden=(8,), batch_size=512, min_rows=500).fit(synth.part("train"), synth.part("valid"))
    folder = m.export(tmp_path / "dnn", data.PassthroughEncoder(synth.feature_names).to_spec())
    assert load_serving_model(folder).score_matrix(synth.X[:5]).shape == (5, P)
    wpath = folder / "weights.npz"
    with np.load(wpath) as z:
        arrays = {k: z[k] for k in z.files if k != "wide"}
    with open(wpath, "wb") as fh:
        np.savez(fh, **arrays)
    sums = json.loads((folder / base.CHECKSUM_FILE).read_text())
    sums["weights.npz"] = base.sha256_file(wpath)  # a consistent but incomplete artifact
    (folder / base.CHECKSUM_FILE).write_text(json.dumps(sums))
    with pytest.raises(ArtifactError, match="weights.npz lacks array 'wide'"):
        load_serving_model(folder)


def test_logistic_heads_read_only_their_own_processors_health_and_bin_history(synth):
    m = make_model("logistic").fit(synth.part("train"), synth.part("valid"))
    own = data.processor_feature_columns(synth.feature_names)
    assert all(len(cols) == 3 for cols in own.values())  # the synthetic health triple of each processor
    for j, proc in enumerate(catalog.PROCESSORS):
        others = [c for p, cols in own.items() if p != proc for c in cols]
        assert not np.any(m.W[j, others]), proc
    assert np.any(m.Wg[[c for cols in own.values() for c in cols]])  # the global model reads them all
    free = make_model("logistic", own_processor_only=False).fit(synth.part("train"), synth.part("valid"))
    assert np.any(free.W[0, own["MIT"]])  # the restriction is what zeroes them


def test_processor_feature_columns_come_from_the_feature_definition():
    from smartrouter import features

    names = ["PREVIOUS_PROCESSOR=MIT", features.bin_columns("MIT")[0], features.bin_columns("MIT")[0] + "__MISSING",
             features.health_column("ELAVON", "15M", "VOLUME"), "CARD_BRAND=AMEX", "AMOUNT"]
    cols = data.processor_feature_columns(names)
    assert cols["MIT"] == [1, 2] and cols["ELAVON"] == [3] and cols["AMEX"] == [] and cols["WORLDPAY"] == []


def test_xgb_trees_read_a_processors_features_only_as_the_scored_processors_self_columns(synth):
    m = make_model("xgb", n_estimators=40, min_rows=500).fit(synth.part("train"), synth.part("valid"))
    used = {int(k[1:]) for k in m.booster.get_score(importance_type="weight")}
    held = set(m._held_constant().tolist())
    assert len(held) == 3 * P  # the synthetic health triples
    assert not used & held
    assert any(m.aug_names[j].startswith("SELF:") for j in used)
    free = make_model("xgb", n_estimators=40, min_rows=500, self_only=False).fit(synth.part("train"), synth.part("valid"))
    assert {int(k[1:]) for k in free.booster.get_score(importance_type="weight")} & held  # the option is what stops it


def test_dnn_trunk_never_sees_the_processors_own_features(synth):
    m = make_model("dnn", epochs=1, hidden=(8,), batch_size=512, min_rows=500).fit(synth.part("train"), synth.part("valid"))
    own = [j for cols in data.processor_feature_columns(synth.feature_names).values() for j in cols]
    assert own and not np.any(m.layers[0][0][own])  # zero rows: the linear path alone carries them
    assert np.any(m.wide[own])
