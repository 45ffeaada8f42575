"""What changed since the previous run: the second block of the run page.

Two halves. ``snapshot`` (04_evaluate calls it) writes this run's facts about its test window into the
run folder: ``run_facts.json`` (first attempts per day, mean amount, how many declined first attempts a
retry approved anyway, volume and approval per processor and per segment, the traffic mix each policy
sends to each processor) and ``run_facts_sample.parquet`` (a seeded sample of the model inputs and the
reference family's scores, for drift). Both are small and part of a run's record (``retention`` keeps
them). ``compare`` reads two runs' facts and 01_extract_eda metrics and keeps only what moved beyond
``changes.toml``'s thresholds, or failed; feature and score drift are ``smartrouter.drift``'s PSI.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from smartrouter import strict_toml
from smartrouter.config import Settings, load_settings
from smartrouter.errors import ConfigError
from smartrouter.notebook_tools import read_json, write_json_atomic

FACTS_FILE = "run_facts.json"
SAMPLE_FILE = "run_facts_sample.parquet"
OUTAGES_FILE = "outages.json"
CONFIG_PATH = Path(__file__).resolve().parent / "changes.toml"
SEGMENTS: tuple[str, ...] = ("CARD_BRAND", "CURRENCY", "CARD_TYPE", "CARD_COUNTRY")
SCORE_PREFIX = "SCORE_"
# 01_extract_eda numbers compared run to run: (metric, words, kind) where kind says how a move is measured
DATA_METRICS: tuple[tuple[str, str, str], ...] = (
    ("attempts_per_day", "attempts per day", "relative"),
    ("approval_rate", "approval rate", "pp"),
    ("approval_attempt_1", "first-attempt approval", "pp"),
    ("processing_share", "share stuck in PROCESSING", "pp"),
    ("timeout_rate", "timeout rate", "pp"),
    ("retry_share", "share of attempts that are retries", "pp"),
    ("hard_decline_share", "share of declines that are hard", "pp"),
)
SCHEMA: dict[str, dict[str, type]] = {
    "thresholds": {"approval_pp": float, "volume_relative": float, "mix_pp": float, "min_rows_per_day": float},
    "sample": {"rows": int, "seed": int},
}


def load_config(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """changes.toml (or ``path``), strictly: unknown, missing or mistyped keys are errors naming the key."""
    path = Path(path) if path else CONFIG_PATH
    cfg = strict_toml.load(path, SCHEMA, what="changes config", home="src/smartrouter/changes.toml")
    t = cfg["thresholds"]
    for key, value in t.items():
        if value < 0:
            raise ConfigError(f"{path}: [thresholds] {key} = {value} is negative; set it to 0 or more")
    if cfg["sample"]["rows"] < 100:
        raise ConfigError(f"{path}: [sample] rows = {cfg['sample']['rows']} is too few for a PSI; set it to >= 100")
    return cfg


# ------------------------------------------------------------------ this run's facts (04_evaluate)
def _first_days(first: Any) -> int:
    import pandas as pd

    return max(1, int(pd.to_datetime(first["CREATED_AT"]).dt.normalize().nunique())) if len(first) else 1


def retry_recovered_share(test: Any) -> float | None:
    """Share of declined first attempts whose order a later attempt approved (same window)."""
    import pandas as pd

    if not {"ORDER_ID", "NUM_ATTEMPTS_ORDER", "APPROVED"} <= set(test.columns):
        return None
    n = pd.to_numeric(test["NUM_ATTEMPTS_ORDER"], errors="coerce").fillna(1)
    first = test[n == 1]
    declined = set(first.loc[first["APPROVED"].astype(int) == 0, "ORDER_ID"])
    if not declined:
        return None
    later = test[(n > 1) & test["ORDER_ID"].isin(declined)]
    recovered = set(later.loc[later["APPROVED"].astype(int) == 1, "ORDER_ID"])
    return len(recovered) / len(declined)


def _groups(first: Any, column: str, days: int) -> list[dict[str, Any]]:
    g = first.groupby(first[column].astype(str))["APPROVED"]
    return [{"group": str(k), "per_day": float(c) / days, "approval": float(m)}
            for k, c, m in zip(g.count().index, g.count().to_numpy(), g.mean().to_numpy())]


def snapshot(ev: Any, run_dir: str | Path, cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write run_facts.json and run_facts_sample.parquet for this run's test window; returns the facts."""
    import numpy as np
    import pandas as pd

    from smartrouter import catalog, money
    from smartrouter.features import MODEL_FEATURES
    from smartrouter.notebook_tools import plain

    cfg = cfg or load_config()
    run_dir = Path(run_dir)
    first, days = ev.first, _first_days(ev.first)
    facts: dict[str, Any] = {"days": days, "first_attempts": len(first), "first_attempts_per_day": len(first) / days,
                             "window": {"start": str(pd.to_datetime(first["CREATED_AT"]).min()) if len(first) else None,
                                        "end": str(pd.to_datetime(first["CREATED_AT"]).max()) if len(first) else None},
                             "retry_recovered_share": retry_recovered_share(ev.test)}
    if {"AMOUNT", "CURRENCY"} <= set(first.columns) and len(first):
        amount = pd.to_numeric(first["AMOUNT"], errors="coerce").to_numpy(dtype=np.float64)
        sched = money.default_schedule()
        facts["mean_amount_mxn"] = float(np.nanmean(money.to_report(amount, first["CURRENCY"].to_numpy(dtype=object), sched)))
    facts["by_processor"] = _groups(first, "PROCESSOR", days)
    facts["by_segment"] = {c: _groups(first, c, days) for c in SEGMENTS if c in first.columns}
    # where each policy sends first attempts; "logged" is what production did in the window (now)
    logged = first["PROCESSOR"].astype(str).value_counts(normalize=True)
    mix = {"logged": {p: float(logged.get(p, 0.0)) for p in catalog.PROCESSORS}}
    for name, pi in ev.policies.items():
        mix[name] = dict(zip(catalog.PROCESSORS, np.asarray(pi, dtype=np.float64).mean(axis=0)))
    facts["traffic_mix"] = mix
    facts["reference_family"] = ev.reference_family
    write_json_atomic(run_dir / FACTS_FILE, plain(facts))
    # drift sample: model inputs of the test window's first attempts and the reference family's scores
    cols = [f.name for f in MODEL_FEATURES if f.name in first.columns]
    rng = np.random.default_rng(int(cfg["sample"]["seed"]))
    take = np.sort(rng.choice(len(first), size=min(len(first), int(cfg["sample"]["rows"])), replace=False))
    sample = first.iloc[take][cols].reset_index(drop=True)
    scores = np.asarray(ev.family_probs[ev.reference_family], dtype=np.float64)[ev.first_index][take]
    for j, p in enumerate(catalog.PROCESSORS):
        sample[SCORE_PREFIX + p] = scores[:, j].astype(np.float32)
    sample.to_parquet(run_dir / SAMPLE_FILE, index=False)
    return facts


def save_outages(run_dir: str | Path, incidents: Any) -> None:
    """01_extract_eda's outage incidents, kept for the next run's comparison."""
    from smartrouter.notebook_tools import plain

    write_json_atomic(Path(run_dir) / OUTAGES_FILE, plain(incidents))


# ------------------------------------------------------------------ comparing two runs
def previous_run(run_id: str, settings: Settings | None = None) -> dict[str, Any] | None:
    """The newest earlier run whose data stage finished (its manifest), or None."""
    from smartrouter.pipeline import list_runs

    earlier = [m for m in list_runs(settings) if str(m.get("run_id")) < run_id
               and isinstance((m.get("metrics") or {}).get("01_extract_eda"), Mapping)]
    return earlier[-1] if earlier else None


def _shifts(now: list[dict[str, Any]], before: list[dict[str, Any]], t: Mapping[str, float]) -> list[dict[str, Any]]:
    prev = {r["group"]: r for r in before}
    out = []
    for r in now:
        p = prev.get(r["group"])
        if p is None or max(r["per_day"], p["per_day"]) < t["min_rows_per_day"]:
            continue
        d_app = 100 * (r["approval"] - p["approval"])
        d_vol = (r["per_day"] - p["per_day"]) / p["per_day"] if p["per_day"] else math.inf
        if abs(d_app) >= t["approval_pp"] or abs(d_vol) >= t["volume_relative"]:
            out.append({"group": r["group"], "per_day": r["per_day"], "per_day_before": p["per_day"], "volume_change": d_vol,
                        "approval": r["approval"], "approval_before": p["approval"], "approval_change_pp": d_app})
    return sorted(out, key=lambda x: -abs(x["approval_change_pp"]) * x["per_day"])


def compare(manifest: Mapping[str, Any], settings: Settings | None = None, cfg: Mapping[str, Any] | None = None,
            previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What changed between this run and the previous one; only what failed or moved. Plain JSON."""
    settings = settings or load_settings()
    cfg = cfg or load_config()
    t = cfg["thresholds"]
    run_id = str(manifest["run_id"])
    prev = previous if previous is not None else previous_run(run_id, settings)
    here, there = settings.runs_dir / run_id, (settings.runs_dir / str(prev["run_id"])) if prev else None
    eda = (manifest.get("metrics") or {}).get("01_extract_eda") or {}
    out: dict[str, Any] = {"previous": prev.get("run_id") if prev else None, "data": [], "checks_failed": eda.get("checks_failed")}
    if prev is None:
        out["note"] = "first run: nothing to compare with"
        return out
    if not eda:
        out["data_note"] = "this run did not finish reading the data (01_extract_eda): nothing to compare"
    before = (prev.get("metrics") or {}).get("01_extract_eda") or {}
    for key, words, kind in DATA_METRICS:
        a, b = eda.get(key), before.get(key)
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b)):
            continue
        moved = (abs(a - b) / b >= t["volume_relative"]) if kind == "relative" and b else (100 * abs(a - b) >= t["approval_pp"])
        if moved:
            out["data"].append({"metric": key, "words": words, "now": a, "before": b, "kind": kind})
    out["outages"] = {"now": read_json(here / OUTAGES_FILE), "count": eda.get("outage_incidents"),
                      "count_before": before.get("outage_incidents")}
    facts, facts_before = read_json(here / FACTS_FILE), read_json(there / FACTS_FILE) if there else None
    if facts and facts_before:
        out["processors"] = _shifts(facts["by_processor"], facts_before["by_processor"], t)
        out["segments"] = {c: s for c in SEGMENTS
                           if (s := _shifts((facts.get("by_segment") or {}).get(c, []),
                                            (facts_before.get("by_segment") or {}).get(c, []), t))}
    elif not facts:
        out["facts_note"] = "this run did not reach 04_evaluate: no test-window facts"
    else:
        out["facts_note"] = f"the previous run {prev['run_id']} kept no test-window facts"
    out["drift"] = drift(here / SAMPLE_FILE, there / SAMPLE_FILE if there else None)
    out["traffic_mix"] = traffic_mix(facts, read_json(here / "gate.json"), read_json(here / "serving_on_window.json"), t)
    return out


def drift(sample: Path, sample_before: Path | None) -> dict[str, Any] | None:
    """Feature and score PSI of the two runs' test-window samples (``smartrouter.drift``'s PSI and thresholds)."""
    import pandas as pd

    from smartrouter import catalog
    from smartrouter import drift as D

    if sample_before is None or not sample.exists() or not sample_before.exists():
        return None
    a, b = pd.read_parquet(sample_before), pd.read_parquet(sample)
    dcfg = D.load_config()
    feats = D.input_psi(a, b, dcfg)
    score_cols = [SCORE_PREFIX + p for p in catalog.PROCESSORS]
    scores = None
    if set(score_cols) <= set(a.columns) & set(b.columns):
        scores = D.score_psi(a[score_cols].to_numpy(), b[score_cols].to_numpy(), list(catalog.PROCESSORS),
                             dcfg["scores"]["threshold"])
    top = feats.sort_values("psi", ascending=False) if len(feats) else feats
    return {"threshold": dcfg["psi"]["threshold"], "score_threshold": dcfg["scores"]["threshold"],
            "features_crossed": top[top["crossed"]].to_dict(orient="records") if len(top) else [],
            "features_top": top.head(5).to_dict(orient="records") if len(top) else [],
            "n_features": len(feats),
            "scores": scores.to_dict(orient="records") if scores is not None else []}


def traffic_mix(facts: Mapping[str, Any] | None, gate: Mapping[str, Any] | None, serving: Mapping[str, Any] | None,
                t: Mapping[str, float]) -> dict[str, Any] | None:
    """Share of first attempts per processor: the new model, the serving model (same window), the static
    rules and what production logged (now); ``moved`` lists processors whose share the new model changes
    by at least ``mix_pp`` against the serving model (else against the logs)."""
    if not facts or not gate or not gate.get("champion_family"):
        return None
    mix = facts.get("traffic_mix") or {}
    cand = mix.get(f"model:{gate['champion_family']}")
    if cand is None:
        return None
    cols = {"new model": cand, "static rules": mix.get("static_rules"), "logged (now)": mix.get("logged")}
    if serving and serving.get("available"):
        cols = {"new model": cand, f"serving {serving['version']}": serving["traffic_mix"], **{k: v for k, v in cols.items() if k != "new model"}}
    base_name = f"serving {serving['version']}" if serving and serving.get("available") else "logged (now)"
    base = cols[base_name] or {}
    moved = [{"processor": p, "new": s, "base": base.get(p, 0.0), "change_pp": 100 * (s - base.get(p, 0.0))}
             for p, s in cand.items() if abs(100 * (s - base.get(p, 0.0))) >= t["mix_pp"]]
    return {"columns": {k: v for k, v in cols.items() if v is not None}, "base": base_name,
            "moved": sorted(moved, key=lambda r: -abs(r["change_pp"]))}
