"""Drift watch: is the served model still looking at the world it was trained on, and still right about it?

Daily, for one day of the warehouse (default: the newest), against the model version that served
that day (the decision log's most frequent MODEL_VERSION that day, else the promoted one):

* **inputs** — PSI of every model input (`features.MODEL_FEATURES`), the day's point-in-time
  feature rows (`features.build_training_table`, the one definition serving shares) vs the
  rows of the run that made the version (its newest days: drift.toml [psi] reference_days);
* **scores** — PSI of each processor head's score on the same two sets of rows;
* **calibration** — per head, on the day's outcomes (the head of the processor that handled the
  attempt): mean bias (score − approval), its z against the day's binomial noise, and ECE beside
  its noise floor (`models.metrics`), per head and per (head, slice value): concept drift such as
  one issuer declining more on some processors shows first as a bias of those heads on that bank;
* **health** — each processor's approval, timeout and processor-error rates vs its trailing days.

Thresholds are drift.toml's. The report lists every check and which crossed; `retrain_reasons`
are the crossings of checks with ``retrain = true``. `smartrouter drift check --retrain` then
starts the daily run with those reasons recorded in its manifest (`pipeline.run_pipeline(reason=)`).
Reports go to ``<reports dir>/drift/<day>.json`` and ``latest.json`` (the service exports the
latter on /metrics).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from smartrouter import atomic, catalog, strict_toml
from smartrouter.errors import ConfigError, SmartrouterError

CONFIG_PATH = Path(__file__).resolve().parent / "drift.toml"
REPORT_DIR = "drift"
LATEST = "latest.json"
MISSING_BIN = "__MISSING__"
OTHER = "__OTHER__"
MAX_REFERENCE_ROWS = 30_000  # training rows scored for the reference (seeded sample): PSI bins need ~1,000s, not all

SCHEMA: dict[str, dict[str, type]] = {
    "psi": {"threshold": float, "reference_days": int, "min_category_share": float, "report_only_groups": list,
            "retrain": bool},
    "scores": {"threshold": float, "retrain": bool},
    "calibration": {"max_abs_bias": float, "min_z": float, "max_ece_excess": float, "min_rows": int, "slices": list,
                    "retrain": bool},
    "health": {"baseline_days": int, "max_change": float, "min_z": float, "retrain": bool},
}


class DriftError(SmartrouterError):
    """The drift check cannot run (no data for the day, no model, training rows gone); names the fix."""


def load_config(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """drift.toml (or ``path``), checked: unknown / missing / mistyped keys and bad values are errors."""
    path = Path(path) if path else CONFIG_PATH
    cfg = strict_toml.load(path, SCHEMA, what="drift config", home="src/smartrouter/drift.toml")
    for table, key in (("psi", "threshold"), ("scores", "threshold"), ("calibration", "max_abs_bias"),
                       ("calibration", "min_z"), ("calibration", "max_ece_excess"), ("health", "max_change"),
                       ("health", "min_z")):
        strict_toml.require(cfg[table][key] > 0, path, f"[{table}] {key}", f"= {cfg[table][key]} must be > 0")
    strict_toml.require(0 <= cfg["psi"]["min_category_share"] < 1, path, "[psi] min_category_share",
                        f"= {cfg['psi']['min_category_share']} must be in [0, 1), e.g. 0.01")
    strict_toml.require(cfg["psi"]["reference_days"] >= 1, path, "[psi] reference_days",
                        f"= {cfg['psi']['reference_days']} must be >= 1")
    strict_toml.require(cfg["health"]["baseline_days"] >= 1, path, "[health] baseline_days",
                        f"= {cfg['health']['baseline_days']} must be >= 1")
    strict_toml.require(cfg["calibration"]["min_rows"] >= 1, path, "[calibration] min_rows", "must be >= 1")
    from smartrouter.features import MODEL_FEATURES

    groups = {f.group for f in MODEL_FEATURES}
    bad = [g for g in cfg["psi"]["report_only_groups"] if g not in groups]
    strict_toml.require(not bad, path, "[psi] report_only_groups", f"names unknown groups {bad}; groups: {', '.join(sorted(groups))}")
    bad = [c for c in cfg["calibration"]["slices"] if c not in catalog.ATTEMPT_COLUMNS]
    strict_toml.require(not bad, path, "[calibration] slices", f"names unknown columns {bad}; use attempt columns like BANK")
    return cfg


# ------------------------------------------------------------------ PSI
def categorical_psi(expected: pd.Series, actual: pd.Series, min_share: float) -> float:
    """PSI over the categories holding >= ``min_share`` of ``expected`` (the rest pooled, missing its own bin)."""
    e = expected.astype(object).where(expected.notna(), MISSING_BIN).astype(str)
    a = actual.astype(object).where(actual.notna(), MISSING_BIN).astype(str)
    shares = e.value_counts(normalize=True)
    kept = set(shares[shares >= min_share].index)
    e = e.where(e.isin(kept), OTHER).value_counts(normalize=True)
    a = a.where(a.isin(kept), OTHER).value_counts(normalize=True)
    cats = e.index.union(a.index)
    # the same floor as evaluation.psi: an empty bin on one side counts as 0.01 % of rows
    pe = np.clip(e.reindex(cats, fill_value=0.0).to_numpy(), 1e-4, None)
    pa = np.clip(a.reindex(cats, fill_value=0.0).to_numpy(), 1e-4, None)
    return float(((pa - pe) * np.log(pa / pe)).sum())


def numeric_psi(expected: pd.Series, actual: pd.Series, bins: int = 10, resolution: float = 0.02) -> float:
    """PSI on quantile bins of ``expected`` (missing values a bin of their own), edges at least
    ``resolution`` x the 1-99 % range apart.

    Why the minimum width: many inputs have point masses that move a hair from day to day (a BIN
    with no history takes its processor's prior, itself a daily rate; a rate window with no traffic
    is 0). Plain quantile edges sit inside such a mass, so a shift of 0.001 moves a fifth of the rows
    across an edge and the PSI reads as a major shift (measured: 6.1 on a quiet live day).
    """
    e = pd.to_numeric(expected, errors="coerce").to_numpy(np.float64)
    a = pd.to_numeric(actual, errors="coerce").to_numpy(np.float64)
    finite = e[np.isfinite(e)]
    if not len(finite):
        return categorical_psi(pd.Series(np.isfinite(e)), pd.Series(np.isfinite(a)), 0.0)
    lo, hi = np.quantile(finite, [0.01, 0.99])
    gap = resolution * (hi - lo)
    edges: list[float] = []
    for q in np.quantile(finite, np.linspace(0, 1, bins + 1))[1:-1]:
        if not edges or q - edges[-1] > gap:
            edges.append(float(q))

    def labels(x: np.ndarray) -> pd.Series:
        idx = np.searchsorted(edges, x, side="right").astype(object)
        idx[~np.isfinite(x)] = MISSING_BIN
        return pd.Series(idx)

    return categorical_psi(labels(e), labels(a), 0.0)


def input_psi(train: pd.DataFrame, live: pd.DataFrame, cfg: Mapping[str, Any]) -> pd.DataFrame:
    """PSI of every model input, with whether it crossed the threshold and whether it may trigger a retrain."""
    from smartrouter.features import MODEL_FEATURES

    c = cfg["psi"]
    rows = []
    for f in MODEL_FEATURES:
        if f.name not in train.columns or f.name not in live.columns:
            continue
        value = (categorical_psi(train[f.name], live[f.name], c["min_category_share"]) if f.kind == "categorical"
                 else numeric_psi(train[f.name], live[f.name]))
        rows.append({"feature": f.name, "group": f.group, "kind": f.kind, "psi": value,
                     "crossed": bool(value >= c["threshold"]), "report_only": f.group in c["report_only_groups"]})
    return pd.DataFrame(rows)


def score_psi(train_scores: np.ndarray, live_scores: np.ndarray, processors: list[str], threshold: float) -> pd.DataFrame:
    """PSI of each head's score, reference rows vs the day's rows."""
    rows = []
    for j, p in enumerate(processors):
        value = numeric_psi(pd.Series(train_scores[:, j]), pd.Series(live_scores[:, j]))
        rows.append({"processor": p, "psi": value, "crossed": bool(value >= threshold)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ calibration
def _calibration_row(y: np.ndarray, p: np.ndarray, cfg: Mapping[str, Any], floor: bool) -> dict[str, Any]:
    from smartrouter.models import metrics as M

    n = len(y)
    bias = float(p.mean() - y.mean())
    se = math.sqrt(float((p * (1 - p)).sum())) / n
    z = bias / se if se > 0 else math.inf
    ece = M.ece(y, p)
    ece_floor = M.ece_noise_floor(p, draws=50) if floor else math.nan
    crossed_bias = abs(bias) >= cfg["max_abs_bias"] and abs(z) >= cfg["min_z"]
    crossed_ece = floor and ece - ece_floor >= cfg["max_ece_excess"]
    return {"n": n, "approval": float(y.mean()), "mean_score": float(p.mean()), "bias": bias, "z": z,
            "ece": ece, "ece_floor": ece_floor, "crossed": bool(crossed_bias or crossed_ece)}


def calibration(live: pd.DataFrame, scores: np.ndarray, processors: list[str], cfg: Mapping[str, Any]) -> pd.DataFrame:
    """Per head and per (head, slice value): bias, z, ECE (heads only) on the day's outcomes."""
    c = cfg["calibration"]
    head = live["PROCESSOR"].astype(str).to_numpy()
    y = live["APPROVED"].to_numpy(np.float64)
    rows = []
    for j, p in enumerate(processors):
        sel = head == p
        if sel.sum() < c["min_rows"]:
            continue
        ps, ys = scores[sel, j], y[sel]
        rows.append({"processor": p, "slice": "all", "value": "all", **_calibration_row(ys, ps, c, True)})
        for col in c["slices"]:
            if col not in live.columns:
                continue
            vals = live.loc[sel, col].astype(str).to_numpy()
            for v in sorted(set(vals)):
                part = vals == v
                if part.sum() >= c["min_rows"]:
                    rows.append({"processor": p, "slice": col, "value": v,
                                 **_calibration_row(ys[part], ps[part], c, False)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ processor health
def health_trend(daily: pd.DataFrame, day: dt.date, cfg: Mapping[str, Any]) -> pd.DataFrame:
    """Each processor's approval / timeout / processor-error rate on ``day`` vs its baseline days (pooled)."""
    c = cfg["health"]
    d = daily.copy()
    d["DAY"] = pd.to_datetime(d["BUCKET"]).dt.date
    rows = []
    for proc, part in d.groupby("PROCESSOR", sort=True):
        today, base = part[part["DAY"] == day], part[part["DAY"] < day]
        n_t, n_b = float(today["ATTEMPTS"].sum()), float(base["ATTEMPTS"].sum())
        if not n_t or not n_b:
            continue
        for metric, col in (("approval", "APPROVED"), ("timeout", "TIMEOUTS"), ("processor_error", "PROCESSOR_ERRORS")):
            r_t, r_b = float(today[col].sum()) / n_t, float(base[col].sum()) / n_b
            pool = (float(today[col].sum()) + float(base[col].sum())) / (n_t + n_b)
            se = math.sqrt(pool * (1 - pool) * (1 / n_t + 1 / n_b)) if 0 < pool < 1 else 0.0
            change = r_t - r_b
            z = change / se if se > 0 else 0.0
            rows.append({"processor": str(proc), "metric": metric, "today": r_t, "baseline": r_b, "change": change, "z": z,
                         "attempts": int(n_t), "crossed": bool(abs(change) >= c["max_change"] and abs(z) >= c["min_z"])})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ the check
def served_version(settings: Any, day: dt.date) -> tuple[str | None, str]:
    """(version, how it was found): the decision log's most frequent model version that day, else the promoted one."""
    from smartrouter import warehouse
    from smartrouter.registry import Registry

    start = dt.datetime.combine(day, dt.time())
    try:
        frame = warehouse.query_frame("drift_served_versions", {"start": start, "end": start + dt.timedelta(days=1)},
                                      settings=settings)
        if len(frame):
            return str(frame["MODEL_VERSION"].iloc[0]), "decision log"
    except Exception:  # noqa: BLE001 - no decision log shipped yet: fall back to the registry
        pass
    promoted = Registry(settings).promoted()
    return (promoted[0], "registry (promoted)") if promoted else (None, "no model")


def _reference_rows(version_dir: Path, days: int, seed: int = 0) -> pd.DataFrame:
    """The newest ``days`` days of the feature table of the run that made the version (its view of the world)."""
    from smartrouter import features
    from smartrouter.registry import VERSION_FILE

    info = json.loads((version_dir / VERSION_FILE).read_text())
    table = Path(info.get("run_dir") or "") / "features.parquet"
    if not table.exists():
        raise DriftError(f"the training rows of {version_dir.name} ({table}) are gone; the drift check compares with them: "
                         "keep run folders of served versions, or retrain (`smartrouter run`)")
    newest = pd.to_datetime(features.read_table(table, columns=["CREATED_AT"])["CREATED_AT"]).max()
    # only the newest days are read (a filter while reading), not the whole table
    ref = features.read_table(table, filter=features.created_since(newest.normalize() - pd.Timedelta(days=days - 1)))
    if len(ref) > MAX_REFERENCE_ROWS:
        ref = ref.sample(MAX_REFERENCE_ROWS, random_state=seed).sort_index()
    return ref


def _table(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records")) if len(frame) else []


def check(settings: Any = None, day: str | dt.date | None = None, cfg: Mapping[str, Any] | None = None,
          version: str | None = None) -> dict[str, Any]:
    """Run every drift check for ``day`` (default: the warehouse's newest day); the report as a JSON-ready dict."""
    from smartrouter import features, warehouse
    from smartrouter.config import load_settings
    from smartrouter.models.serving import load_serving_model
    from smartrouter.registry import SERVING, Registry

    settings = settings or load_settings()
    cfg = cfg or load_config()
    if day is None:
        last = features.last_attempt_time(settings)
        if last is None:
            raise DriftError("the warehouse holds no attempts; build the world (`smartrouter world build`) or load data")
        day = last.date()
    elif isinstance(day, str):
        try:
            day = dt.date.fromisoformat(day)
        except ValueError:
            raise ConfigError(f"day {day!r} is not a date; use YYYY-MM-DD") from None
    start = dt.datetime.combine(day, dt.time())
    how = "given"
    if version is None:
        version, how = served_version(settings, day)
    if version is None:
        raise DriftError("no model served and none is promoted: there is nothing to watch yet; run `smartrouter run` first")
    folder = Registry(settings).version_dir(version)
    if not (folder / SERVING).is_dir():
        raise DriftError(f"model {version} is not in the registry at {folder}; pass --version with a registered one")
    model = load_serving_model(folder / SERVING)
    train = _reference_rows(folder, cfg["psi"]["reference_days"])
    live = features.build_training_table(settings, start, start + dt.timedelta(days=1))
    if live.empty:
        raise DriftError(f"no labelled attempts on {day} in the warehouse; pick a day with data (--day YYYY-MM-DD)")
    processors = list(catalog.PROCESSORS)
    live_scores = np.asarray(model.score_matrix(model.encoder.transform(live)), dtype=np.float64)
    train_scores = np.asarray(model.score_matrix(model.encoder.transform(train)), dtype=np.float64)
    inputs = input_psi(train, live, cfg)
    scores = score_psi(train_scores, live_scores, processors, cfg["scores"]["threshold"])
    calib = calibration(live, live_scores, processors, cfg)
    daily = warehouse.query_frame("eda_outage_timeline", {"start": start - dt.timedelta(days=cfg["health"]["baseline_days"]),
                                                          "end": start + dt.timedelta(days=1), "bucket_minutes": 1440},
                                  settings=settings)
    health = health_trend(daily, day, cfg)
    crossed: list[dict[str, Any]] = []
    for row in inputs[inputs["crossed"]].itertuples() if len(inputs) else ():
        crossed.append({"check": "psi", "what": f"input {row.feature} PSI {row.psi:.3f} >= {cfg['psi']['threshold']:g}",
                        "retrain": bool(cfg["psi"]["retrain"] and not row.report_only)})
    for row in scores[scores["crossed"]].itertuples() if len(scores) else ():
        crossed.append({"check": "scores", "what": f"{row.processor} score PSI {row.psi:.3f} >= {cfg['scores']['threshold']:g}",
                        "retrain": cfg["scores"]["retrain"]})
    for row in calib[calib["crossed"]].itertuples() if len(calib) else ():
        where = f"{row.processor} head" + ("" if row.slice == "all" else f" on {row.slice}={row.value}")
        crossed.append({"check": "calibration", "what": f"{where}: bias {row.bias * 100:+.1f} pp (z {row.z:+.1f}, "
                                                        f"{row.n:,} outcomes), ECE {row.ece:.3f}",
                        "retrain": cfg["calibration"]["retrain"]})
    for row in health[health["crossed"]].itertuples() if len(health) else ():
        crossed.append({"check": "health", "what": f"{row.processor} {row.metric} {row.today:.1%} vs {row.baseline:.1%} "
                                                   f"over the previous days (z {row.z:+.1f})",
                        "retrain": cfg["health"]["retrain"]})
    reasons = [c["what"] for c in crossed if c["retrain"]]
    report = {
        "day": day.isoformat(), "model_version": version, "model_found_by": how,
        "rows": {"live": int(len(live)), "training": int(len(train))},
        "crossed": crossed, "retrain_reasons": reasons, "drifted": bool(reasons),
        "inputs": _table(inputs), "scores": _table(scores), "calibration": _table(calib), "health": _table(health),
        "thresholds": {k: dict(v) for k, v in cfg.items()},
    }
    return report


def report_dir(settings: Any) -> Path:
    return Path(settings.reports_dir) / REPORT_DIR


def write_report(report: Mapping[str, Any], settings: Any) -> Path:
    """``<reports>/drift/<day>.json`` and ``latest.json``, each atomically."""
    folder = report_dir(settings)
    path = atomic.write_json(folder / f"{report['day']}.json", report)
    atomic.write_json(folder / LATEST, report)
    return path


def read_latest(settings: Any) -> dict[str, Any] | None:
    """The newest drift report, or None (never raises: /metrics reads it on every scrape)."""
    try:
        return json.loads((report_dir(settings) / LATEST).read_text())
    except (OSError, ValueError):
        return None


def retrain_reason(report: Mapping[str, Any]) -> str:
    """The one line a retrain run records: which checks crossed on which day, against which model."""
    return f"drift on {report['day']} (model {report['model_version']}): " + "; ".join(report["retrain_reasons"])


def retrain(report: Mapping[str, Any], settings: Any = None, profile: str = "default", as_of: str | None = None,
            echo: Any = print, render: bool = True) -> Any:
    """Start the daily run with the drift report's reasons recorded in its manifest; returns its RunResult."""
    from smartrouter.pipeline import run_pipeline

    if not report.get("retrain_reasons"):
        raise DriftError(f"the drift report of {report.get('day')} crossed no retrain threshold; nothing to retrain for")
    as_of = as_of or (dt.date.fromisoformat(report["day"]) + dt.timedelta(days=1)).isoformat()
    return run_pipeline(settings, profile=profile, as_of=as_of, echo=echo, render=render, reason=retrain_reason(report))


def loop_hook(settings: Any, day: dt.date, echo: Any = print) -> str | None:
    """The live loop's daily drift watch: check ``day``, write the report, say what crossed.

    Returns the retrain reason when a retrain threshold was crossed, else None. Never raises: a
    check that cannot run (no model served yet, training rows gone) is one line, not a stopped loop.
    """
    import logging

    try:
        report = check(settings, day)
        write_report(report, settings)
    except SmartrouterError as exc:
        echo(f"drift check skipped: {exc}")
        return None
    except Exception as exc:  # noqa: BLE001 - the watch must never stop the loop it watches
        logging.getLogger("smartrouter.drift").exception("drift check failed")
        echo(f"drift check failed ({type(exc).__name__}: {exc}); the loop goes on")
        return None
    only = {}
    for c in report["crossed"]:
        if not c["retrain"]:
            only[c["check"]] = only.get(c["check"], 0) + 1
    noted = (f" ({sum(only.values())} report-only crossings: " + ", ".join(f"{k} {n}" for k, n in only.items()) + ")"
             if only else "")
    reasons = report["retrain_reasons"]
    echo(f"drift check of {report['day']} vs {report['model_version']}: "
         + (f"RETRAIN triggered by {len(reasons)}: {'; '.join(reasons[:3])}{' ...' if len(reasons) > 3 else ''}"
            if reasons else "no retrain threshold crossed") + noted)
    return retrain_reason(report) if report["drifted"] else None
