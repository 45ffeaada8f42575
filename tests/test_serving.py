"""Serving forms: parity with the trained models, verified loading, no TensorFlow at request time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from smartrouter import catalog
from smartrouter.errors import ArtifactError
from smartrouter.models import base, data, make_model
from smartrouter.models.serving import load_serving_model

P = len(catalog.PROCESSORS)
# xgb with per-processor gated trees, so every parity check below covers serving's per-row tree selection
# (the ensemble combines the three above, so it comes last; three members where the default has two)
PARAMS = {"logistic": {}, "xgb": {"n_estimators": 60, "nthread": 2, "processor_rounds": 30},
          "dnn": {"epochs": 3, "hidden": (32, 16)}, "ensemble": {"members": ("logistic", "xgb", "dnn")}}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each family trained on synthetic data and exported: {family: (model, folder, ModelData)}."""
    d = data.synthetic(14_000, d=16, seed=5)
    enc = data.PassthroughEncoder(d.feature_names)
    root = tmp_path_factory.mktemp("serving")
    out = {}
    for fam, params in PARAMS.items():
        m = make_model(fam, min_rows=500, **params)
        if fam == "ensemble":
            m.set_members({f: model for f, (model, _, _) in out.items()})
        m.fit(d.part("train"), d.part("valid"))
        out[fam] = (m, m.export(root / fam, enc.to_spec()), d)
    return out


@pytest.mark.parametrize("family", list(PARAMS))
def test_serving_form_reproduces_the_trained_model_on_10000_rows(exported, family):
    model, folder, d = exported[family]
    sm = load_serving_model(folder)
    X = d.X[:10_000]
    assert np.abs(sm.score_matrix(X) - model.predict_proba(X)).max() < 1e-5
    # the per-payment path (encode -> raw -> calibrate, no batching) agrees as well
    for i in (0, 17, 4242):
        pay = dict(zip(d.feature_names, map(float, X[i])))
        got = sm.score(pay)
        assert list(got) == list(catalog.PROCESSORS)
        assert np.allclose([got[p] for p in catalog.PROCESSORS], model.predict_proba(X[i : i + 1])[0], atol=1e-5)
    assert sm.family == family and sm.processors == list(catalog.PROCESSORS)
    assert sm.uncertain["ADYEN"] is True and sm.feature_names == d.feature_names


@pytest.mark.parametrize("family", list(PARAMS))
def test_load_is_fast_and_contributions_name_features(exported, family):
    _, folder, d = exported[family]
    load_serving_model(folder)  # warm imports
    t0 = time.perf_counter()
    sm = load_serving_model(folder)
    assert time.perf_counter() - t0 < 0.5
    pay = dict(zip(d.feature_names, map(float, d.X[3])))
    top = sm.contributions(pay, "MIT", top_k=4)
    assert len(top) == 4 and all(isinstance(n, str) and np.isfinite(v) for n, v in top)
    assert abs(top[0][1]) >= abs(top[-1][1])


def test_xgb_contributions_are_shap_values_that_sum_to_the_margin(exported):
    model, folder, d = exported["xgb"]
    sm = load_serving_model(folder)
    pay = dict(zip(d.feature_names, map(float, d.X[9])))
    every = sm.contributions(pay, "WORLDPAY", top_k=10_000)
    contrib = model.contributions(d.X[9:10], "WORLDPAY")[0]
    raw = model._head_proba(d.X[9:10])[0, 0]
    assert sum(v for _, v in every) + contrib[-1] == pytest.approx(np.log(raw / (1 - raw)), abs=1e-4)


def test_rank_applies_hard_eligibility(exported):
    _, folder, d = exported["logistic"]
    sm = load_serving_model(folder)
    pay = dict(zip(d.feature_names, map(float, d.X[0])))
    amex = sm.rank({**pay, "CARD_BRAND": "AMEX", "CURRENCY": "MXN"}, candidates=list(catalog.PROCESSORS))
    assert [p for p, _ in amex] == ["AMEX"]
    usd = sm.rank({**pay, "CARD_BRAND": "VISA", "CURRENCY": "USD"})
    assert {p for p, _ in usd} == set(catalog.eligible_processors("VISA", "USD"))
    assert [s for _, s in usd] == sorted((s for _, s in usd), reverse=True)
    assert sm.rank({**pay, "CARD_BRAND": "VISA", "CURRENCY": "MXN"}, candidates=["AMEX"]) == []


def test_serving_needs_no_tensorflow(exported):
    _, folder, d = exported["dnn"]
    code = (
        "import sys, json\n"
        "from smartrouter.models.serving import load_serving_model\n"
        f"m = load_serving_model({str(folder)!r})\n"
        f"m.score(dict(zip({d.feature_names!r}, [0.1] * {len(d.feature_names)})))\n"
        "print(json.dumps(sorted(k for k in ('tensorflow', 'keras', 'sklearn') if k in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


# ------------------------------------------------------------------ broken artifacts
def _copy(exported, family, tmp_path):
    dst = tmp_path / family
    shutil.copytree(exported[family][1], dst)
    return dst


def _rehash(folder):
    sums = {f.name: base.sha256_file(f) for f in sorted(folder.iterdir()) if f.name != base.CHECKSUM_FILE}
    (folder / base.CHECKSUM_FILE).write_text(json.dumps(sums))


@pytest.mark.parametrize("family,victim", [("logistic", "weights.npz"), ("dnn", "encoder.json"), ("xgb", "booster.ubj"), ("xgb", "checksums.json")])
def test_missing_file_is_named(exported, tmp_path, family, victim):
    folder = _copy(exported, family, tmp_path)
    (folder / victim).unlink()
    with pytest.raises(ArtifactError, match=victim.replace(".", r"\.")):
        load_serving_model(folder)


def test_edited_file_fails_its_checksum(exported, tmp_path):
    folder = _copy(exported, "dnn", tmp_path)
    with open(folder / "weights.npz", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ArtifactError, match=r"weights\.npz does not match its checksum"):
        load_serving_model(folder)


def test_wrong_weight_shape_is_named_even_with_valid_checksums(exported, tmp_path):
    folder = _copy(exported, "logistic", tmp_path)
    z = dict(np.load(folder / "weights.npz"))
    z["W"] = z["W"][:, :-1]
    with open(folder / "weights.npz", "wb") as fh:
        np.savez(fh, **z)
    _rehash(folder)
    with pytest.raises(ArtifactError, match=r"weights\.npz: W has shape"):
        load_serving_model(folder)


def test_dnn_output_width_must_match_processors(exported, tmp_path):
    folder = _copy(exported, "dnn", tmp_path)
    z = dict(np.load(folder / "weights.npz"))
    last = max(int(k[1:]) for k in z if k.startswith("W"))
    z[f"W{last}"], z[f"b{last}"] = z[f"W{last}"][:, :3], z[f"b{last}"][:3]
    with open(folder / "weights.npz", "wb") as fh:
        np.savez(fh, **z)
    _rehash(folder)
    with pytest.raises(ArtifactError, match=r"weights\.npz"):
        load_serving_model(folder)


def test_encoder_from_another_model_is_refused(exported, tmp_path):
    folder = _copy(exported, "xgb", tmp_path)
    names = exported["xgb"][2].feature_names
    (folder / "encoder.json").write_text(base.canonical_json(data.PassthroughEncoder(names[:-1]).to_spec()))
    _rehash(folder)
    with pytest.raises(ArtifactError, match=r"encoder\.json is not the encoder this model was trained with"):
        load_serving_model(folder)


def test_export_replaces_atomically_and_leaves_no_temp(exported, tmp_path):
    model, _, d = exported["logistic"]
    enc = data.PassthroughEncoder(d.feature_names).to_spec()
    target = model.export(tmp_path / "m", enc)
    model.export(target, enc)  # over an existing folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert sorted(p.name for p in target.iterdir()) == ["checksums.json", "encoder.json", "model.json", "weights.npz"]
    load_serving_model(target)


# ------------------------------------------------------------------ xgb: numpy-compiled trees
def test_xgb_score_uses_the_compiled_trees_not_xgboost(exported, monkeypatch):
    model, folder, d = exported["xgb"]
    assert (folder / "trees.npz").is_file() and "trees.npz" in json.loads((folder / "checksums.json").read_text())
    sm = load_serving_model(folder)

    def refuse(*_a, **_k):
        raise AssertionError("xgboost called on the one-payment path")

    for key in ("booster", "global"):
        monkeypatch.setattr(sm._a[key], "inplace_predict", refuse)
        monkeypatch.setattr(sm._a[key], "predict", refuse)
    X = d.X[:200].copy()
    X[::3, ::2] = np.nan  # missing values follow each node's default direction
    want = model.predict_proba(X)
    for i in range(len(X)):
        got = sm.score(dict(zip(d.feature_names, map(float, X[i]))))
        assert np.allclose([got[p] for p in catalog.PROCESSORS], want[i], atol=1e-5)


def test_xgb_folder_without_trees_npz_is_compiled_at_load(exported, tmp_path):
    model, src, d = exported["xgb"]
    folder = _copy(exported, "xgb", tmp_path)
    (folder / "trees.npz").unlink()
    meta = json.loads((folder / "model.json").read_text())
    del meta["config"]["trees"]
    (folder / "model.json").write_text(base.canonical_json(meta))
    _rehash(folder)
    sm = load_serving_model(folder)
    pay = dict(zip(d.feature_names, map(float, d.X[5])))
    assert np.allclose(list(sm.score(pay).values()), model.predict_proba(d.X[5:6])[0], atol=1e-5)


def test_xgb_trees_npz_with_bad_shapes_or_from_another_model_is_named(exported, tmp_path):
    folder = _copy(exported, "xgb", tmp_path)
    z = dict(np.load(folder / "trees.npz"))
    z["head_threshold"] = z["head_threshold"][:-1]
    with open(folder / "trees.npz", "wb") as fh:
        np.savez(fh, **z)
    _rehash(folder)
    with pytest.raises(ArtifactError, match=r"trees\.npz: head_threshold has shape"):
        load_serving_model(folder)
    z = dict(np.load(exported["xgb"][1] / "trees.npz"))
    z["head_value"] = z["head_value"] * 1.5  # well-formed arrays that are not this booster's
    with open(folder / "trees.npz", "wb") as fh:
        np.savez(fh, **z)
    _rehash(folder)
    with pytest.raises(ArtifactError, match=r"trees\.npz: the compiled head trees disagree with .*booster\.ubj"):
        load_serving_model(folder)


@pytest.mark.parametrize("family", list(PARAMS))
def test_scoring_in_chunks_changes_no_number(exported, family, monkeypatch):
    """Large batches are scored in chunks (models.base / serving PREDICT_CHUNK_ROWS): row by row the same."""
    from smartrouter.models import base, serving

    model, folder, d = exported[family]
    sm = load_serving_model(folder)
    X = d.X[:5_000]
    whole_served, whole_trained = sm.score_matrix(X), model.predict_proba(X)
    monkeypatch.setattr(serving, "PREDICT_CHUNK_ROWS", 777)  # uneven chunks, the last one short
    monkeypatch.setattr(base, "PREDICT_CHUNK_ROWS", 777)
    # BLAS may sum a row's d products in another order for another batch shape: a float64 sum of d terms
    # moves by at most d * eps * sum|terms| (inputs standardised, |x_j w_j| well under 16 here), and the
    # sigmoid's slope is at most 1/4; calibration maps are monotone pieces of slope well under 4
    tol = X.shape[1] * np.finfo(np.float64).eps * 16 * X.shape[1]
    np.testing.assert_allclose(sm.score_matrix(X), whole_served, rtol=0, atol=tol)
    # the trained ensemble scores its DNN member with Keras in float32, whose sums move with the batch
    # shape by float32's epsilon instead; log-odds averaging and calibration keep slopes under 4
    trained_tol = tol if family != "ensemble" else X.shape[1] * np.finfo(np.float32).eps * 16 * X.shape[1]
    np.testing.assert_allclose(model.predict_proba(X), whole_trained, rtol=0, atol=trained_tol)


# ------------------------------------------------------------------ ensemble: members verified, paths agree
def test_ensemble_is_the_recalibrated_mean_of_its_members_log_odds(exported):
    from smartrouter.models.ensemble import combine

    model, folder, d = exported["ensemble"]
    sm = load_serving_model(folder)
    assert sorted(sm.members) == ["dnn", "logistic", "xgb"]
    X = d.X[:2_000]
    members = [load_serving_model(folder / "members" / f).score_matrix(X) for f in ("logistic", "xgb", "dnn")]
    np.testing.assert_allclose(sm.score_matrix(X), base.calibrate_heads(combine(members), sm.calibrators), rtol=0, atol=1e-12)
    # the message path (k rows of one payment in one call) agrees with the batch path
    np.testing.assert_allclose(sm.score_rows(X[:4]), sm.score_matrix(X[:4]), rtol=0, atol=1e-5)


def test_ensemble_member_replaced_or_edited_is_named(exported, tmp_path):
    folder = _copy(exported, "ensemble", tmp_path)
    # a member folder re-exported from another model: valid on its own, not the one the ensemble names
    shutil.rmtree(folder / "members" / "logistic")
    shutil.copytree(exported["logistic"][1], folder / "members" / "logistic")
    sums = json.loads((folder / "members" / "logistic" / "checksums.json").read_text())
    (folder / "members" / "logistic" / "checksums.json").write_text(json.dumps(sums, indent=2))
    with pytest.raises(ArtifactError, match=r"members/logistic/checksums\.json is not the member model\.json names"):
        load_serving_model(folder)
    folder = _copy(exported, "ensemble", tmp_path / "b")
    with open(folder / "members" / "xgb" / "booster.ubj", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ArtifactError, match=r"members/xgb/booster\.ubj does not match its checksum"):
        load_serving_model(folder)
    folder = _copy(exported, "ensemble", tmp_path / "c")
    shutil.rmtree(folder / "members" / "dnn")
    with pytest.raises(ArtifactError, match=r"members/dnn/checksums\.json is missing"):
        load_serving_model(folder)


def test_ensemble_members_are_checked_before_anything_trains():
    from smartrouter.errors import ConfigError
    from smartrouter.models.train import _known_families

    assert _known_families(["ensemble", "xgb", "logistic"]) == ["xgb", "logistic", "ensemble"]
    with pytest.raises(ConfigError, match=r"logistic is not among the families to train.*families=logistic,xgb,ensemble"):
        _known_families(["xgb", "ensemble"])
    with pytest.raises(ConfigError, match="dnn is not among"):
        _known_families(["xgb", "logistic", "ensemble"], {"ensemble": {"members": ("xgb", "dnn")}})
    with pytest.raises(ConfigError, match="at least two other families"):
        make_model("ensemble", members=("xgb",))
    with pytest.raises(ConfigError, match=r"members \['logistic'\] were not trained in this run"):
        make_model("ensemble").set_members({"xgb": object()})


def test_vectorized_head_calibrators_match_the_per_head_maps():
    """calibration.HeadCalibrators (the serving form's batch calibration) against calibration.apply head by head:
    the same arithmetic, so float64 rounding apart (a few eps on values <= 1)."""
    from smartrouter.models import calibration

    cals = [{"method": "identity"}, {"method": "platt", "a": 1.3, "b": -0.2}, {"method": "temperature", "t": 0.7},
            {"method": "isotonic", "x": [0.0, 0.3, 0.6, 1.0], "y": [0.05, 0.2, 0.7, 0.9]}, {"method": "platt", "a": 0.8, "b": 0.1}]
    raw = np.random.default_rng(3).uniform(0, 1, size=(500, len(cals)))
    raw[0] = [0.0, 1.0, 0.0, 1.0, 0.5]  # the clipped ends
    want = np.column_stack([calibration.apply(c, raw[:, j]) for j, c in enumerate(cals)])
    np.testing.assert_allclose(calibration.HeadCalibrators(cals).apply(raw), want, rtol=0, atol=8 * np.finfo(np.float64).eps)
    with pytest.raises(ValueError, match="unknown calibration method 'spline'"):
        calibration.HeadCalibrators([{"method": "spline"}])


def test_tree_reads_are_each_trees_split_columns(exported):
    from smartrouter.models.xgb_numpy import tree_reads

    _, folder, _ = exported["xgb"]
    sm = load_serving_model(folder)
    head = sm._a["head_trees"]
    reads = tree_reads(head, sm._one.shape[1])

    def splits(node, out):
        if "split" in node:
            out.add(int(str(node["split"]).lstrip("f")))
            for child in node["children"]:
                splits(child, out)
        return out

    dump = [json.loads(t) for t in sm._a["booster"].get_dump(dump_format="json")]
    assert len(dump) == head.n_trees
    for t, tree in enumerate(dump):
        assert set(np.flatnonzero(reads[t]).tolist()) == splits(tree, set()), t


def test_score_rows_walks_a_tree_only_on_the_rows_that_can_differ_for_it(exported):
    _, folder, d = exported["xgb"]
    sm = load_serving_model(folder)
    X = np.repeat(d.X[:1], 6, axis=0)
    X[:, 2] = np.linspace(-2.0, 2.0, 6)  # six configurations differing in one column
    np.testing.assert_allclose(sm.score_rows(X), sm.score_matrix(X), rtol=0, atol=1e-6)
    groups = next(g for key, (g, *_rest) in sm._row_batches.items() if key[0] == 6)
    n_rows = [None if b is None else b.n_rows for b in groups]
    # every shared tree is in exactly one group, and only the trees reading column 2 and a processor column walk 30 rows
    assert sum(0 if b is None else b.row_trees.shape[1] for b in groups) == len(sm._shared)
    assert n_rows[3] in (None, 6 * P) and n_rows[1] in (None, P)
