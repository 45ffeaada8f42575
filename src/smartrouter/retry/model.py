"""The retry model: P(approved | the declined attempt's context, the next processor, the delay).

Trained on the retry rows (NUM_ATTEMPTS_ORDER > 1) of the run's feature table, whose retry
columns carry the previous attempt's code and class, its processor, the attempt number and the
delay, beside the card, the payment and processor health: the routing models' own feature
definitions, encoder (the run's `FeatureEncoder`) and per-processor calibration (logistic family,
`models.train.train_family`). Its serving form goes into every family's serving folder as
``retry/``, so registration copies it into the same registry version as the routing model and the
service loads both from one folder (`load_retry_model`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from smartrouter import atomic
from smartrouter.models.data import from_frame
from smartrouter.models.train import _jsonable, logged_summary, train_family

RETRY_DIR = "retry"  # inside a serving folder
FAMILY = "logistic"  # the simplest calibrated family: retry rows are ~15 % of attempts
RESULTS_FILE = "retry_train_results.json"  # beside the family folders, not inside a serving form
MIN_ROWS = {"train": 500, "valid": 100, "test": 100}


def retry_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The labelled retry attempts (second and later attempts of an order)."""
    return table[pd.to_numeric(table["NUM_ATTEMPTS_ORDER"], errors="coerce").fillna(1) > 1]


def train_retry_model(table: pd.DataFrame, encoder: Any, models_dir: str | Path, *, seed: int = 0,
                      params: dict[str, Any] | None = None, rules: Any = None, settings: Any = None) -> dict[str, Any]:
    """Fit the retry model on ``table``'s retry rows, export it to ``<run>/retry`` (beside ``models_dir``,
    not in it: every folder there is a routing family) and into each family folder under
    ``models_dir`` (``<family>/retry``); returns its metrics.

    Its operating point (`simulate.calibrate` on the validation window: the price of an attempt that
    keeps its retries within the rules' retry budget) is written beside it as ``policy.json``, which
    the service and the evaluation read with the model.

    ``{"skipped": why}`` when a split has too few retry rows to fit and calibrate it: the run ships no
    retry model and the service gives rules-only retry advice (a thin window must not block routing)."""
    rows = retry_rows(table)
    counts = rows["SPLIT"].value_counts().to_dict()
    short = {s: int(counts.get(s, 0)) for s, n in MIN_ROWS.items() if counts.get(s, 0) < n}
    if short:
        return {"skipped": f"too few retry rows to train the retry model: {short} (need {MIN_ROWS}); "
                           "widen the window (run.lookback_days) for one"}
    data = from_frame(rows, encoder)
    train, valid, test = data.part("train"), data.part("valid"), data.part("test")
    models_dir = Path(models_dir)
    model, res = train_family(FAMILY, train, valid, test, {"seed": seed, **(params or {})}, None, None)
    folder = model.export(models_dir.parent / RETRY_DIR, encoder.to_spec())
    from smartrouter import evaluation
    from smartrouter.models.serving import load_serving_model
    from smartrouter.retry.rules import load_rules
    from smartrouter.retry.simulate import POLICY_FILE, calibrate

    valid_all = table[table["SPLIT"] == "valid"]
    operating = calibrate(valid_all, evaluation.with_attempt_columns(valid_all, settings), load_serving_model(folder),
                          rules or load_rules())
    atomic.write_json(folder / POLICY_FILE, operating, indent=1, sort_keys=True)
    copies = []
    for fam_dir in sorted(p for p in models_dir.iterdir() if p.is_dir() and (p / "model.json").is_file()):
        dest = fam_dir / RETRY_DIR
        tmp = fam_dir / f".{RETRY_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(folder, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)  # whole folder or nothing under its final name
        copies.append(str(dest))
    prob = model.predict_proba(test.X)
    out = {
        "family": FAMILY,
        "rows": {k: int(v) for k, v in counts.items()},
        "test_overall": logged_summary(test, prob),
        "test_heads": res["test"],
        "calibration_test": res["calibration_test"],
        "importance": res["importance"],
        "operating_point": operating,
        "artifact_dir": str(folder),
        "copies": copies,
    }
    atomic.write_json(models_dir.parent / RESULTS_FILE, _jsonable(out), indent=1, sort_keys=True)
    return out


def load_retry_model(serving_dir: str | Path) -> tuple[Any, float] | None:
    """(the retry model, its extra attempt cost) shipped in a serving folder (``<serving>/retry``), or
    None when it has none; ArtifactError when it is there but broken."""
    import json

    from smartrouter.errors import ArtifactError
    from smartrouter.models.serving import load_serving_model
    from smartrouter.retry.simulate import POLICY_FILE

    folder = Path(serving_dir) / RETRY_DIR
    if not folder.is_dir():
        return None
    model = load_serving_model(folder)
    try:
        extra = float(json.loads((folder / POLICY_FILE).read_text())["extra_cost"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{folder / POLICY_FILE} is missing or has no extra_cost ({exc}); retrain the retry model") from None
    if not 0.0 <= extra < 1.0:
        raise ArtifactError(f"{folder / POLICY_FILE}: extra_cost {extra} outside [0, 1); retrain the retry model")
    return model, extra
