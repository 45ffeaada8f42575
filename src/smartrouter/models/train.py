"""Train every model family on a run's feature table: metrics, calibration before/after, timings, sizes.

``train_all`` is what the train notebook calls: it builds ModelData once, fits each family on
the train split (early stopping and calibration on the time-later valid split), scores the test
split, exports each family's serving form to ``out_dir/<family>/`` and writes
``out_dir/train_results.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from smartrouter import atomic
from smartrouter import catalog
from smartrouter.errors import DataCheckError
from smartrouter.models import FAMILY_NAMES, make_model, metrics
from smartrouter.models.data import P, ModelData, from_frame, from_table

RESULTS_FILE = "train_results.json"
# Per-family caps on training rows (a seeded sample of the train split), applied after the global
# ``max_train_rows``; empty: every family trains on every row. Logistic and DNN gain from every row
# (on the default world, all 725K rows lift the DNN's true share of the oracle's gain from 67 % to
# 85 %), and so does XGBoost: on the default world its fit (200 rounds, hist on a QuantileDMatrix)
# takes 68 s on all 727,611 train rows vs 30 s on the former 250K sample (2 cores), test AUC 0.7404
# -> 0.7448, true share 81 -> 85 % (README "A world with interactions").
FAMILY_MAX_ROWS: dict[str, int] = {}


def logged_summary(data: ModelData, prob: np.ndarray) -> dict[str, float]:
    """Metrics of the logged processor's probability over all rows (the 'overall' number)."""
    return metrics.summary(data.y, prob[np.arange(len(data)), data.processor_idx])


def greedy_snips(data: ModelData, prob: np.ndarray) -> dict[str, float]:
    """Self-normalised IPS value of 'pick the best eligible processor' on the experiment-arm rows.

    Only randomised rows (propensity < 1) carry information about other choices; the estimate is
    the approval rate the greedy policy would get there. ``match`` = share of rows where the
    policy agrees with the logged choice (the effective sample).
    """
    if data.experiment is None or data.propensity is None:
        return {"n": 0, "value": float("nan"), "match": float("nan"), "logged_rate": float("nan")}
    m = data.experiment & (data.propensity > 0) & (data.propensity < 1)
    if not m.any():
        return {"n": 0, "value": float("nan"), "match": float("nan"), "logged_rate": float("nan")}
    p = np.where(data.eligible[m], prob[m], -np.inf) if data.eligible is not None else prob[m]
    pick = np.argmax(p, axis=1)
    hit = pick == data.processor_idx[m]
    w = hit / data.propensity[m]
    return {
        "n": int(m.sum()),
        "value": float((w * data.y[m]).sum() / w.sum()) if w.sum() > 0 else float("nan"),
        "match": float(hit.mean()),
        "logged_rate": float(data.y[m].mean()),
    }


def _cap_rows(data: ModelData, max_rows: int | None, seed: int) -> ModelData:
    if not max_rows or len(data) <= max_rows:
        return data
    idx = np.sort(np.random.default_rng(seed).choice(len(data), size=int(max_rows), replace=False))
    return data.subset(idx)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return metrics.clean(float(obj))
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj


def calibration_table(model: Any, data: ModelData) -> list[dict[str, Any]]:
    """Per head: chosen method and ECE / Brier / log loss before and after calibration on ``data``."""
    raw, cal = model.predict_raw(data.X), model.predict_proba(data.X)
    rows = []
    for j, proc in enumerate(model.processors):
        m = data.processor_idx == j
        before, after = metrics.summary(data.y[m], raw[m, j]), metrics.summary(data.y[m], cal[m, j])
        rows.append({
            "processor": proc,
            "method": model.calibrators[j]["method"],
            "n": int(m.sum()),
            **{f"{k}_before": before[k] for k in ("ece", "brier", "logloss")},
            **{f"{k}_after": after[k] for k in ("ece", "brier", "logloss")},
        })
    return rows


def train_family(
    family: str, train: ModelData, valid: ModelData, test: ModelData, params: Mapping[str, Any] | None,
    out_dir: Path | None, encoder_spec: dict[str, Any] | None, linear_start: Any = None,
    members: Mapping[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Fit one family and measure it; export its serving form when ``out_dir`` is given.

    ``linear_start``: a fitted logistic model on the same train rows, which the DNN's linear
    path starts from instead of fitting its own (saves the DNN one logistic fit).
    ``members``: the fitted models the ensemble family combines (required for it, ignored otherwise).
    """
    model = make_model(family, **dict(params or {}))
    if family == "dnn" and linear_start is not None:
        model.linear_start = linear_start
    if family == "ensemble":
        model.set_members(members or {})
    model.fit(train, valid)
    t0 = time.perf_counter()
    prob_test = model.predict_proba(test.X)
    predict_s = time.perf_counter() - t0
    res: dict[str, Any] = {
        "family": family,
        "train_seconds": model.train_seconds,
        "predict_seconds_test": predict_s,
        "uncertain": model.uncertain,
        "n_train": [int(n) for n in model.n_train],
        "valid": model.evaluate(valid),
        "test": model.evaluate(test),
        "test_overall": logged_summary(test, prob_test),
        "calibration_test": calibration_table(model, test),
        "experiment_greedy": greedy_snips(test, prob_test),
        "history": model.history,
        "importance": dict(sorted(model.global_importance(train).items(), key=lambda kv: -kv[1])[:25]),
    }
    if out_dir is not None and encoder_spec is not None:
        folder = model.export(Path(out_dir) / family, encoder_spec)
        res["artifact_dir"] = str(folder)
        res["artifact_bytes"] = model.artifact_bytes(folder)
    return model, res


def train_all(
    frame: Any,
    encoder: Any = None,
    families: Iterable[str] = FAMILY_NAMES,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    out_dir: str | Path | None = None,
    *,
    importance_weighting: bool = False,
    max_train_rows: int | None = None,
    family_max_rows: Mapping[str, int | None] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Train ``families`` on a feature table with a SPLIT column; return {family: results} (+ 'models', 'data').

    ``encoder``: a fitted FeatureEncoder (fit on the train split if None). ``params``: per-family
    overrides, e.g. {"dnn": {"epochs": 5}}. Artifacts go to ``out_dir/<family>/``.
    ``max_train_rows`` caps every family's train rows; ``family_max_rows`` (default
    ``FAMILY_MAX_ROWS``) caps single families further (a seeded subsample; None or 0 = no cap).
    A caller that can let the table go while the models train calls ``encode`` then ``train_encoded``.
    """
    families = _known_families(families, params)  # before the encoding: a typo fails at once
    if encoder is None and "SPLIT" in frame.columns:
        from smartrouter.encoder import FeatureEncoder

        encoder = FeatureEncoder.fit(frame[frame["SPLIT"] == "train"])
    t0 = time.perf_counter()
    data = encode(frame, encoder, importance_weighting=importance_weighting)
    return train_encoded(data, encoder, families, params, out_dir, max_train_rows=max_train_rows,
                         family_max_rows=family_max_rows, seed=seed, encode_seconds=time.perf_counter() - t0,
                         importance_weighting=importance_weighting)


def _known_families(families: Iterable[str], params: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """The families to train, checked, in training order: the ensemble after the families it combines
    (checked before anything trains: a missing member would otherwise fail after an hour of training)."""
    from smartrouter.errors import ConfigError

    families = list(dict.fromkeys(families))
    for f in families:
        if f not in FAMILY_NAMES:
            raise ConfigError(f"unknown model family {f!r}; choose from {', '.join(FAMILY_NAMES)}")
    if "ensemble" in families:
        from smartrouter.models.ensemble import member_families

        members = member_families((params or {}).get("ensemble"))
        missing = [f for f in members if f not in families]
        if missing:
            raise ConfigError(f"the ensemble combines {', '.join(members)}, but {', '.join(missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} not among the families to train; add "
                              f"{'it' if len(missing) == 1 else 'them'} (e.g. 03_train.families={','.join(members)},ensemble)")
        families = [f for f in families if f != "ensemble"] + ["ensemble"]
    return families


def encode(frame: Any, encoder: Any, *, importance_weighting: bool = False) -> ModelData:
    """The feature table as ModelData (every split): the arrays are all that training reads from it."""
    if "SPLIT" not in frame.columns:
        raise DataCheckError("the feature table has no SPLIT column; run features.time_split on it first")
    return from_frame(frame, encoder, importance_weighting=importance_weighting)


def encode_table(path: Any, encoder: Any, *, max_rows: Mapping[str, int | None] | None = None, seed: int = 0,
                 importance_weighting: bool = False) -> ModelData:
    """The feature table on disk as ModelData, encoded in batches (``data.from_table``): what the train
    stage trains on at any history length. ``max_rows`` {split: cap} keeps a seeded sample of a split."""
    return from_table(path, encoder, max_rows=max_rows, seed=seed, importance_weighting=importance_weighting)


def train_encoded(
    data: ModelData,
    encoder: Any,
    families: Iterable[str] = FAMILY_NAMES,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    out_dir: str | Path | None = None,
    *,
    max_train_rows: int | None = None,
    family_max_rows: Mapping[str, int | None] | None = None,
    seed: int = 0,
    encode_seconds: float | None = None,
    importance_weighting: bool = False,
) -> dict[str, Any]:
    """``train_all`` on ModelData that ``encode`` built (same arguments, same results).

    ``encode_seconds`` and ``importance_weighting`` (how ``data`` was built) are recorded in the results.

    The train notebook encodes, drops the feature table (2 GB of pandas objects on the default
    world) and then trains, so the table and the networks' working memory never coexist.
    """
    families = _known_families(families, params)
    train, valid, test = data.part("train"), data.part("valid"), data.part("test")
    for name, part in (("train", train), ("valid", valid), ("test", test)):
        if len(part) == 0:
            raise DataCheckError(f"the {name} split is empty; widen the window or change valid_days/test_days")
    train = _cap_rows(train, max_train_rows, seed)
    caps = dict(FAMILY_MAX_ROWS if family_max_rows is None else family_max_rows)
    spec = encoder.to_spec()
    results: dict[str, Any] = {
        "rows": {"train": len(train), "valid": len(valid), "test": len(test)},
        "train_rows_by_family": {f: min(len(train), int(caps.get(f) or len(train))) for f in families},
        "n_features": data.n_features,
        "encode_seconds": encode_seconds,
        "importance_weighting": importance_weighting,
        "families": {},
    }
    models: dict[str, Any] = {}
    for fam in families:
        fam_params = {"seed": seed, **dict((params or {}).get(fam, {}))}
        fam_train = _cap_rows(train, caps.get(fam), seed)
        models[fam], results["families"][fam] = train_family(fam, fam_train, valid, test, fam_params, out_dir, spec,
                                                             linear_start=models.get("logistic"), members=dict(models))
    if out_dir is not None:
        atomic.write_json(Path(out_dir) / RESULTS_FILE, _jsonable(results), indent=1, sort_keys=True,
                          trailing_newline=False)
    results["models"] = models
    results["data"] = {"train": train, "valid": valid, "test": test}  # the train rows before per-family caps
    return results


def head_table(results: Mapping[str, Any], split: str = "test") -> Any:
    """Per-family, per-head metrics as one DataFrame (for the notebook and the report)."""
    import pandas as pd

    rows = []
    for fam, r in results["families"].items():
        for h in r[split]:
            rows.append({"family": fam, **h})
        rows.append({"family": fam, "processor": "ALL (logged)", **r[f"{split}_overall"]} if f"{split}_overall" in r else {})
    return pd.DataFrame([r for r in rows if r])


def weighting_effect(frame: Any, encoder: Any, family: str = "logistic", params: Mapping[str, Any] | None = None,
                     seed: int = 0) -> dict[str, Any]:
    """Train ``family`` without and with importance weights; compare on the experiment-arm test rows."""
    out = {}
    for flag in (False, True):
        data = from_frame(frame, encoder, importance_weighting=flag)
        tr, va, te = data.part("train"), data.part("valid"), data.part("test")
        model = make_model(family, seed=seed, **dict(params or {})).fit(tr, va)
        prob = model.predict_proba(te.X)
        exp = te.subset(te.experiment) if te.experiment is not None else te
        out["weighted" if flag else "unweighted"] = {
            "test_auc_all": logged_summary(te, prob)["auc"],
            "test_auc_experiment": logged_summary(exp, prob[te.experiment])["auc"] if te.experiment is not None else None,
            "greedy_snips": greedy_snips(te, prob),
        }
    return out


__all__ = ["train_all", "encode", "encode_table", "train_encoded", "train_family", "weighting_effect", "head_table", "greedy_snips", "logged_summary", "calibration_table", "P", "catalog"]
