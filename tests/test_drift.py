"""Drift watch (smartrouter.drift): PSI, calibration drift, processor health, config, CLI errors, retrain reason."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from smartrouter import drift
from config_edits import assert_edit_refused

CFG = drift.load_config()


def test_psi_is_near_zero_without_drift_and_large_with_it():
    rng = np.random.default_rng(0)
    train = pd.Series(rng.normal(0, 1, 20_000))
    same = pd.Series(rng.normal(0, 1, 3_000))
    shifted = pd.Series(rng.normal(1.0, 1, 3_000))
    # no drift: PSI ~ (bins-1)(1/n_e + 1/n_a) ~ 0.0035; 0.02 leaves a 5x margin
    assert drift.numeric_psi(train, same) < 0.02
    assert drift.numeric_psi(train, shifted) > CFG["psi"]["threshold"]
    # missing values are a bin of their own: 30 % missing on the live side is drift
    holes = same.copy()
    holes[:900] = np.nan
    assert drift.numeric_psi(train, holes) > CFG["psi"]["threshold"]


def test_categorical_psi_pools_rare_categories():
    rng = np.random.default_rng(1)
    # 2,000 rare categories (a BIN-like column): without pooling, sampling noise alone gives PSI ~ 0.7
    train = pd.Series(rng.integers(0, 2000, 20_000).astype(str))
    live = pd.Series(rng.integers(0, 2000, 3_000).astype(str))
    assert drift.categorical_psi(train, live, 0.01) < 0.02
    brands = pd.Series(rng.choice(["VISA", "MASTERCARD", "AMEX"], 20_000, p=[0.6, 0.3, 0.1]))
    moved = pd.Series(rng.choice(["VISA", "MASTERCARD", "AMEX"], 3_000, p=[0.3, 0.3, 0.4]))
    assert drift.categorical_psi(brands, moved, 0.01) > CFG["psi"]["threshold"]
    assert drift.categorical_psi(brands, brands.iloc[:3000], 0.01) < 0.01


def test_input_psi_marks_report_only_groups():
    from smartrouter.features import MODEL_FEATURES

    rng = np.random.default_rng(2)
    health = next(f.name for f in MODEL_FEATURES if f.group == "health")
    train = pd.DataFrame({"AMOUNT": rng.lognormal(5, 1, 5000), health: rng.random(5000) * 0.01})
    live = pd.DataFrame({"AMOUNT": rng.lognormal(5, 1, 2000), health: 0.5 + rng.random(2000) * 0.01})
    table = drift.input_psi(train, live, CFG).set_index("feature")
    assert not table.loc["AMOUNT", "crossed"]
    assert table.loc[health, "crossed"] and table.loc[health, "report_only"]


def _calib_frame(n: int, bias_bank: str | None, shift: float, seed: int = 3):
    rng = np.random.default_rng(seed)
    banks = rng.choice(["BBVA MEXICO", "BANORTE", "SANTANDER"], n)
    procs = rng.choice(["WORLDPAY", "MIT"], n)
    p = rng.uniform(0.6, 0.95, n)
    truth = np.where((banks == bias_bank) & (procs == "WORLDPAY"), p - shift, p) if bias_bank else p
    y = (rng.random(n) < truth).astype(float)
    frame = pd.DataFrame({"PROCESSOR": procs, "APPROVED": y, "BANK": banks, "CARD_BRAND": "VISA",
                          "CURRENCY": "MXN", "CARD_TYPE": "CREDIT"})
    scores = np.zeros((n, 5))
    scores[:, 0] = p  # WORLDPAY
    scores[:, 1] = p  # MIT
    return frame, scores


def test_calibration_flags_the_bank_whose_approval_fell_on_one_processor_only():
    frame, scores = _calib_frame(12_000, "BBVA MEXICO", 0.15)
    table = drift.calibration(frame, scores, ["WORLDPAY", "MIT", "ELAVON", "AMEX", "ADYEN"], CFG)
    crossed = {(r.processor, r.slice, r.value) for r in table.itertuples() if r.crossed}
    assert ("WORLDPAY", "BANK", "BBVA MEXICO") in crossed
    assert not any(p == "MIT" for p, _, _ in crossed)
    assert ("WORLDPAY", "BANK", "BANORTE") not in crossed
    row = table[(table.processor == "WORLDPAY") & (table.value == "BBVA MEXICO")].iloc[0]
    # the measured bias is the planted 15 pp within 4 of its standard errors
    assert abs(row.bias - 0.15) < 4 * math.sqrt(0.2 * 0.8 / row.n)


def test_calibration_quiet_when_the_model_is_right():
    frame, scores = _calib_frame(12_000, None, 0.0, seed=4)
    table = drift.calibration(frame, scores, ["WORLDPAY", "MIT", "ELAVON", "AMEX", "ADYEN"], CFG)
    assert not table["crossed"].any()
    assert set(table["processor"]) == {"WORLDPAY", "MIT"}  # heads without min_rows outcomes are left out


def test_health_trend_flags_a_timeout_spike_only():
    day = dt.date(2026, 12, 5)
    rows = []
    for k in range(8):
        d = day - dt.timedelta(days=7 - k)
        spike = d == day
        rows.append({"BUCKET": pd.Timestamp(d), "PROCESSOR": "WORLDPAY", "ATTEMPTS": 2000,
                     "TIMEOUTS": 300 if spike else 20, "PROCESSOR_ERRORS": 10, "APPROVED": 1600 if not spike else 1350})
        rows.append({"BUCKET": pd.Timestamp(d), "PROCESSOR": "MIT", "ATTEMPTS": 2000, "TIMEOUTS": 20,
                     "PROCESSOR_ERRORS": 10, "APPROVED": 1600})
    table = drift.health_trend(pd.DataFrame(rows), day, CFG)
    crossed = {(r.processor, r.metric) for r in table.itertuples() if r.crossed}
    assert crossed == {("WORLDPAY", "timeout"), ("WORLDPAY", "approval")}


def test_retrain_reason_names_the_crossings_and_refuses_without_any():
    report = {"day": "2026-12-05", "model_version": "v3", "retrain_reasons": ["WORLDPAY head on BANK=X: bias +9.0 pp"]}
    assert drift.retrain_reason(report) == "drift on 2026-12-05 (model v3): WORLDPAY head on BANK=X: bias +9.0 pp"
    with pytest.raises(drift.DriftError, match="crossed no retrain threshold"):
        drift.retrain({**report, "retrain_reasons": []})


def test_report_files_and_latest(tmp_path: Path):
    class S:
        reports_dir = tmp_path

    assert drift.read_latest(S) is None
    drift.write_report({"day": "2026-12-05", "crossed": []}, S)
    assert drift.read_latest(S)["day"] == "2026-12-05"
    assert (tmp_path / "drift" / "2026-12-05.json").is_file()


@pytest.mark.parametrize("edit, key", [
    (("\n[health]\n", "\n[health]\nwindow = 3\n"), "window"),
    (("threshold = 0.25\nreference_days", "threshold = -1\nreference_days"), "[psi] threshold"),
    (('report_only_groups = ["health"]', 'report_only_groups = ["weather"]'), "report_only_groups"),
    (('slices = ["BANK", "CARD_BRAND", "CURRENCY", "CARD_TYPE"]', 'slices = ["ISSUER"]'), "[calibration] slices"),
    (("retrain = false", 'retrain = "no"'), "retrain"),
    (("min_z = 4.0\nmax_ece_excess", "max_ece_excess"), "min_z"),
])
def test_bad_config_names_the_key(tmp_path: Path, edit, key):
    assert_edit_refused(drift.load_config, drift.CONFIG_PATH, tmp_path, edit, key)


def test_drift_check_on_an_empty_warehouse_is_a_clear_error(tmp_path: Path, monkeypatch, capsys):
    from smartrouter.cli import main

    monkeypatch.setenv("SMARTROUTER_LOCAL_DIR", str(tmp_path / "wh"))
    monkeypatch.setenv("SMARTROUTER_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("SMARTROUTER_WAREHOUSE", "local")
    assert main(["drift", "check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("smartrouter drift: error:") and "\n" not in err


def test_metrics_export_the_latest_report(tmp_path: Path):
    from prometheus_client import generate_latest

    from smartrouter.routing.service import Metrics

    m = Metrics()
    assert not m.drift.refresh(tmp_path)  # no report yet: nothing to export, no error

    class S:
        reports_dir = tmp_path

    report = {"day": "2026-12-05", "drifted": True,
              "crossed": [{"check": "calibration", "what": "x", "retrain": True},
                          {"check": "calibration", "what": "y", "retrain": True},
                          {"check": "health", "what": "z", "retrain": False}],
              "inputs": [{"feature": "AMOUNT", "psi": 0.02}, {"feature": "BANK", "psi": 0.31}],
              "scores": [{"processor": "WORLDPAY", "psi": 0.12}],
              "calibration": [{"processor": "WORLDPAY", "slice": "all", "bias": 0.034},
                              {"processor": "WORLDPAY", "slice": "BANK", "value": "B", "bias": 0.2}]}
    drift.write_report(report, S)
    assert m.drift.refresh(tmp_path)
    text = generate_latest(m.registry).decode()
    assert 'smartrouter_drift_crossed{check="calibration"} 2.0' in text
    assert 'smartrouter_drift_crossed{check="psi"} 0.0' in text
    assert "smartrouter_drift_retrain_needed 1.0" in text
    assert "smartrouter_drift_input_psi_max 0.31" in text
    assert 'smartrouter_drift_calibration_bias{processor="WORLDPAY"} 0.034' in text
    assert "smartrouter_drift_checked_day_timestamp_seconds 1.7964288e+09" in text  # 2026-12-05T00:00Z


def test_live_loop_retrains_on_drift_with_the_reason_even_under_no_retrain(tmp_path, monkeypatch):
    """The loop's hook: a day whose drift check crosses gets a retrain run carrying the reason; quiet days none."""
    import test_live_loop as T  # the live loop's fakes (engine, ship, retrain, service)

    for name, sub in (("SMARTROUTER_HOME", ""), ("SMARTROUTER_RUNS_DIR", "runs"), ("SMARTROUTER_LOCAL_DIR", "wh"),
                      ("SMARTROUTER_STATE_DIR", "state")):
        monkeypatch.setenv(name, str(tmp_path / sub))
    drifted = T.day(2)
    checked: list[dt.date] = []

    def hook(settings, day, echo):
        checked.append(day)
        return f"drift on {day}: WORLDPAY head on BANK=X" if day == drifted else None

    monkeypatch.setattr(drift, "loop_hook", hook)

    class World(T.FakeWorld):
        def retrain(self, settings, *, profile, as_of, echo, render, reason=None):
            self.events.append(("reason", as_of, reason))
            return super().retrain(settings, profile=profile, as_of=as_of, echo=echo, render=render)

    w = World(tmp_path)
    T.go(w, days=3, retrain=False, retrain_profile="quick")
    assert checked == [T.day(1), T.day(2), T.day(3)]  # every day is checked once, before its retrain step
    assert [e for e in w.events if e[0] == "reason"] == [("reason", T.day(3), f"drift on {drifted}: WORLDPAY head on BANK=X")]


@pytest.fixture(scope="module")
def small_served(tmp_path_factory):
    """A 6-day small world, a logistic model trained on days 2-4 (day 5 its test window) and registered as v1 (promoted)."""
    import json as _json

    from smartrouter import features, warehouse
    from smartrouter.config import load_settings
    from smartrouter.encoder import FeatureEncoder
    from smartrouter.models.data import from_frame
    from smartrouter.models.logistic import LogisticModel
    from smartrouter.registry import Registry
    from smartrouter.world import World, WorldParams

    root = tmp_path_factory.mktemp("drift")
    mp = pytest.MonkeyPatch()
    for name, sub in (("SMARTROUTER_LOCAL_DIR", "wh"), ("SMARTROUTER_REGISTRY_DIR", "models"),
                      ("SMARTROUTER_REPORTS_DIR", "reports"), ("SMARTROUTER_RUNS_DIR", "runs")):
        mp.setenv(name, str(root / sub))
    mp.setenv("SMARTROUTER_WAREHOUSE", "local")
    settings = load_settings()
    world = World(WorldParams.small(days=6, per_day=700))
    warehouse.write_world(world, settings, progress=False)
    start = world.start + dt.timedelta(days=1)
    table = features.time_split(features.build_training_table(settings, start, start + dt.timedelta(days=4)),
                                valid_days=1, test_days=1)
    run = root / "runs" / "r1"
    run.mkdir(parents=True)
    features.write_table(table, run / "features.parquet")
    (run / "split.json").write_text(_json.dumps(table.attrs["split"]))
    encoder = FeatureEncoder.fit(table[table["SPLIT"] == "train"], features.FEATURES, min_count=5)
    data = from_frame(table, encoder)
    split = table["SPLIT"].to_numpy()
    model = LogisticModel(min_rows=100, min_class=10).fit(data.subset(split == "train"), data.subset(split == "valid"))
    model.export(run / "models" / "logistic", encoder.to_spec())
    Registry(settings).register(run, "logistic", {}, {}, status="promoted", reason="drift test")
    yield settings, world
    mp.undo()


def test_check_end_to_end_on_a_small_world(small_served):
    settings, world = small_served
    last_day = (pd.Timestamp(world.end) - pd.Timedelta(days=1)).date()  # world.end is exclusive
    report = drift.check(settings, last_day)
    assert report["model_version"] == "v1" and report["model_found_by"] == "registry (promoted)"
    assert report["rows"]["live"] > 300 and report["rows"]["training"] > 300
    from smartrouter.features import MODEL_FEATURES

    assert {r["feature"] for r in report["inputs"]} == {f.name for f in MODEL_FEATURES}
    assert {r["processor"] for r in report["scores"]} >= {"WORLDPAY", "MIT"}
    assert any(r["slice"] == "all" for r in report["calibration"])
    assert {r["metric"] for r in report["health"]} == {"approval", "timeout", "processor_error"}
    assert report["drifted"] == bool(report["retrain_reasons"])
    path = drift.write_report(report, settings)
    assert drift.read_latest(settings)["day"] == report["day"] and path.is_file()
    from smartrouter.errors import SmartrouterError

    with pytest.raises(SmartrouterError, match="version v9 does not exist"):
        drift.check(settings, report["day"], version="v9")


def test_loop_hook_says_what_crossed_and_never_raises(tmp_path, monkeypatch):
    class S:
        reports_dir = tmp_path

    base = {"day": "2026-12-05", "model_version": "v1", "drifted": True,
            "crossed": [{"check": "psi", "what": "input X PSI 0.4 >= 0.25", "retrain": False},
                        {"check": "calibration", "what": "WORLDPAY head on BANK=B: bias +9.0 pp", "retrain": True}],
            "retrain_reasons": ["WORLDPAY head on BANK=B: bias +9.0 pp"]}
    lines: list[str] = []
    monkeypatch.setattr(drift, "check", lambda settings, day: dict(base))
    assert drift.loop_hook(S, dt.date(2026, 12, 5), lines.append) == drift.retrain_reason(base)
    assert "RETRAIN triggered by 1: WORLDPAY head on BANK=B" in lines[-1] and "report-only crossings: psi 1" in lines[-1]
    assert drift.read_latest(S)["day"] == "2026-12-05"
    quiet = {**base, "drifted": False, "crossed": base["crossed"][:1], "retrain_reasons": []}
    monkeypatch.setattr(drift, "check", lambda settings, day: dict(quiet))
    assert drift.loop_hook(S, dt.date(2026, 12, 6), lines.append) is None
    assert "no retrain threshold crossed" in lines[-1]

    def broken(settings, day):
        raise drift.DriftError("no model served")

    monkeypatch.setattr(drift, "check", broken)
    assert drift.loop_hook(S, dt.date(2026, 12, 7), lines.append) is None and "skipped: no model served" in lines[-1]
    monkeypatch.setattr(drift, "check", lambda settings, day: 1 / 0)
    assert drift.loop_hook(S, dt.date(2026, 12, 7), lines.append) is None and "ZeroDivisionError" in lines[-1]
