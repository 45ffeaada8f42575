"""The run page's verdict and "what changed" blocks: their numbers are evaluation.json's, gate.json's and
the serving champion's card's (recomputed here from those files and from the data, never copied), and a
promoted, a rejected and a failed run render and are screenshotted in headless Chromium.

The three runs are built once per session, cheaply: the runner executes the drill notebook as the data
stage (a real manifest, a real failure for the failed run), and the evaluation, the gates, the registry
and the facts are the real library calls on a small synthetic log (tests/eval_fakes), as 04_evaluate and
05_gate make them. Screenshots go to tests/artifacts/screenshots/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from smartrouter import changes, money, reports, verdict
from smartrouter import evaluation as E
from smartrouter import gates as G
from smartrouter.config import REPO_ROOT, load_settings
from smartrouter.models.serving import load_serving_model
from smartrouter.notebook_tools import read_json, write_json_atomic
from smartrouter.pipeline import GATE_FILE, MANIFEST_FILE, Stage, _refresh_from_run_dir, run_pipeline
from smartrouter.registry import Registry

from eval_fakes import FakeOracle, FakeRules, export_logistic, split_frame, synthetic_log

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
DRILL = REPO_ROOT / "tests" / "notebooks" / "drill.ipynb"
SHOTS = REPO_ROOT / "tests" / "artifacts" / "screenshots"
# the synthetic test window is small: its intervals are wider than the default world's (tests/test_gates.py)
FAST = {"stability": {"max_interval_width": 0.08}}
REJECT = {**FAST, "auc": {"min_auc": 0.99}}  # a gate override that no model passes: the rejected run


def _eda_metrics(frame: pd.DataFrame) -> dict[str, Any]:
    """The 01_extract_eda numbers the changes block compares, computed from the synthetic log."""
    days = max(1, pd.to_datetime(frame["CREATED_AT"]).dt.normalize().nunique())
    return {"attempts_per_day": len(frame) / days, "approval_rate": float(frame["APPROVED"].mean()),
            "checks_failed": 0, "checks_passed": True, "outage_incidents": 0}


def _judged_run(settings, root: Path, seed: int, gate_cfg: dict, registry: Registry, promote: bool) -> dict[str, Any]:
    """One run through the runner (drill data stage), then 04's and 05's library calls into its folder."""
    res = run_pipeline(settings, stages=[Stage("01_extract_eda", DRILL)], echo=None, render=False,
                       profiles_file=DRILL.with_name("drill_profiles.toml"))
    assert res.ok, res.error
    frame, truth, _ = synthetic_log(n=14_000, eps=0.3, seed=seed)
    frame = split_frame(frame)
    folder = export_logistic(frame, res.run_dir / "models" / "logistic", seed=seed)
    test = frame[frame["SPLIT"] == "test"].reset_index(drop=True)
    oracle = FakeOracle(test, truth[(frame["SPLIT"] == "test").to_numpy()])
    model = load_serving_model(folder)
    probs = G.score_with(model, test)
    ev = E.evaluate_run(test, {"logistic": probs}, FakeRules(), oracle=oracle, n_boot=100, seed=0, compare_modes=False)
    write_json_atomic(res.run_dir / "evaluation.json", ev.to_json())
    changes.snapshot(ev, res.run_dir)
    current = registry.promoted()
    champion = None
    if current is not None:
        _, served = registry.load_promoted()
        champion = G.Champion(current[0], served.family, G.score_with(served, ev.test))
    cfg = G.load_config(overrides=gate_cfg)
    report = G.run_gates(ev, train_counts=frame[frame["SPLIT"] == "train"]["PROCESSOR"].value_counts().to_dict(),
                         serving_dirs={"logistic": folder}, uncertain={"logistic": model.uncertain}, champion=champion,
                         config=cfg)
    write_json_atomic(res.run_dir / verdict.SERVING_ON_WINDOW_FILE,
                      verdict.serving_on_window(ev, champion, level=cfg["policy_value"]["level"]))
    gate = report.to_json()
    version = registry.register(res.run_dir, "logistic", E.registry_metrics(ev, "logistic"), gate,
                                status="promoted" if report.passed and promote else "rejected", serving_dir=folder,
                                reason="; ".join(report.reasons))
    gate["model_version"] = version
    write_json_atomic(res.run_dir / GATE_FILE, gate)
    metrics = read_json(res.run_dir / "metrics.json", {})
    metrics.setdefault("01_extract_eda", {}).update(_eda_metrics(frame))
    write_json_atomic(res.run_dir / "metrics.json", metrics)
    manifest = read_json(res.run_dir / MANIFEST_FILE)
    _refresh_from_run_dir(manifest, res.run_dir)
    write_json_atomic(res.run_dir / MANIFEST_FILE, manifest)
    return {"manifest": manifest, "ev": ev, "gate": gate, "run_dir": res.run_dir, "frame": frame, "version": version}


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """A promoted run (v1), a rejected run (v2, judged against v1) and a failed run, rendered."""
    root = tmp_path_factory.mktemp("verdict")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("RUNS", "REPORTS", "REGISTRY", "STATE", "LOCAL"):
            mp.setenv(f"SMARTROUTER_{name}_DIR", str(root / name.lower()))
        settings = load_settings()
        registry = Registry(settings)
        promoted = _judged_run(settings, root, seed=5, gate_cfg=FAST, registry=registry, promote=True)
        rejected = _judged_run(settings, root, seed=6, gate_cfg=REJECT, registry=registry, promote=True)
        failed = run_pipeline(settings, stages=[Stage("01_extract_eda", DRILL)], echo=None,
                              overrides=['01_extract_eda.mode="raise"'], profiles_file=DRILL.with_name("drill_profiles.toml"))
        assert not failed.ok
        for r in (promoted, rejected):
            reports.render_run_index(r["manifest"], settings)
        reports.render_all_runs_index(settings)
    # the directories stay in `settings`, not in the environment: a later test's subprocess (a
    # service under test_worker_restart) must not inherit this fixture's registry and state dirs
    yield {"settings": settings, "promoted": promoted, "rejected": rejected, "failed": failed, "registry": registry}


def _table_row(evaluation: dict, policy: str, estimator: str = "DR") -> dict:
    return next(r for r in evaluation["policy_value"]["table"] if r["policy"] == policy and r["estimator"] == estimator)


def _first_attempt_traffic(frame: pd.DataFrame) -> tuple[float, float]:
    """(first attempts per day, mean amount in MXN) of the test window, from the data itself."""
    test = frame[frame["SPLIT"] == "test"]
    first = E.first_attempts(test)
    days = pd.to_datetime(first["CREATED_AT"]).dt.normalize().nunique()
    amount = money.to_report(first["AMOUNT"].to_numpy(dtype=np.float64), first["CURRENCY"].to_numpy(dtype=object),
                             money.default_schedule())
    return len(first) / days, float(np.mean(amount))


@pytest.mark.slow
def test_verdict_numbers_are_the_files_numbers(runs) -> None:
    settings = runs["settings"]
    for key in ("promoted", "rejected"):
        r = runs[key]
        v = verdict.build(r["manifest"], settings)
        evaluation = read_json(r["run_dir"] / "evaluation.json")
        gate = read_json(r["run_dir"] / "gate.json")
        cand, rules = _table_row(evaluation, "model:logistic"), _table_row(evaluation, "static_rules")
        assert v["candidate"] == {"value": cand["estimate"], "ci_low": cand["ci_low"], "ci_high": cand["ci_high"],
                                  "true": cand["true_value"]}
        assert v["rules"]["value"] == rules["estimate"] and v["rules"]["ci_low"] == rules["ci_low"]
        lift = next(x for x in evaluation["policy_value"]["lift_vs_rules"] if x["policy"] == "model:logistic")
        assert (v["lift_vs_rules"]["value"], v["lift_vs_rules"]["ci_low"], v["lift_vs_rules"]["ci_high"]) == (
            lift["lift"], lift["ci_low"], lift["ci_high"])
        # per day at the test window's traffic, recomputed from the data
        per_day, amount = _first_attempt_traffic(r["frame"])
        usd = money.default_schedule().fx["USD"]
        got = v["per_day_vs_rules"]
        assert got["orders_per_day"]["value"] == pytest.approx(lift["lift"] * per_day, rel=1e-9)
        assert got["volume_mxn_per_day"]["ci_low"] == pytest.approx(lift["ci_low"] * per_day * amount, rel=1e-9)
        assert got["volume_usd_per_day"]["value"] == pytest.approx(lift["lift"] * per_day * amount / usd, rel=1e-9)
        assert v["decision"] == gate["decision"] and v["model_version"] == gate["model_version"]
        assert [g["passed"] for g in v["gates"]] == [g["passed"] for g in gate["gates"]]
        page = (settings.reports_dir / r["manifest"]["run_id"] / "index.html").read_text()
        assert reports.pct_ci(v["candidate"]) in page and reports.pp_ci(v["lift_vs_rules"]) in page
        assert page.index('id="verdict"') < page.index('id="changes"') < page.index("<h2>Stages</h2>")

    # the rejected run was judged against v1, the serving champion: its card and the same-window numbers
    r = runs["rejected"]
    v = verdict.build(r["manifest"], settings)
    gate = read_json(r["run_dir"] / "gate.json")
    reg_gate = next(g for g in gate["gates"] if g["gate"] == "regression")
    assert v["serving"]["version"] == gate["champion_compared"] == runs["promoted"]["version"]
    vl = reg_gate["details"]["value_lift"]
    assert (v["lift_vs_serving"]["value"], v["lift_vs_serving"]["ci_low"]) == (vl["lift"], vl["ci_low"])
    card = runs["registry"].show(gate["champion_compared"])["card"]
    row = next(x for x in card["policy_value"]["summary"] if x["policy"] == "model:logistic")
    assert v["serving"]["card"]["value"]["value"] == row["estimate"] and v["serving"]["card"]["value"]["ci_high"] == row["ci_high"]
    assert v["serving"]["card"]["lift_vs_rules"] == card["metrics"]["headline"]["lift_vs_rules"]
    # the champion on this window: same estimator as the table, and its paired lift vs the candidate's
    on = read_json(r["run_dir"] / verdict.SERVING_ON_WINDOW_FILE)
    assert v["serving"]["on_window"]["value"] == on["value"]["estimate"]
    cand = _table_row(read_json(r["run_dir"] / "evaluation.json"), "model:logistic")["estimate"]
    # a paired lift is exactly the difference of the two ratio estimates on the same rows
    assert cand - on["value"]["estimate"] == pytest.approx(vl["lift"], abs=1e-12)
    assert "Rejected" in v["sentence"] and "auc" in v["sentence"] and f"{runs['promoted']['version']} keeps serving" in v["sentence"]


@pytest.mark.slow
def test_failed_run_says_where_why_and_what_serves(runs) -> None:
    settings, f = runs["settings"], runs["failed"]
    v = verdict.build(f.manifest, settings)
    assert v["decision"] == "failed" and v["failed"]["stage"] == "01_extract_eda"
    assert "drill failure" in v["failed"]["error"]
    assert v["serving_now"]["version"] == runs["promoted"]["version"]
    assert v["sentence"] == (f"The run failed while reading and checking the payment data (01_extract_eda), so no model "
                             f"was judged; {runs['promoted']['version']} keeps serving.")
    page = (settings.reports_dir / f.run_id / "index.html").read_text()
    assert 'class="verdict failed"' in page and "drill failure" in page
    stage = (settings.reports_dir / f.run_id / "01_extract_eda.html").read_text()
    assert 'href="index.html#verdict"' in stage


@pytest.mark.slow
def test_changes_since_the_previous_run(runs) -> None:
    settings = runs["settings"]
    r, before = runs["rejected"], runs["promoted"]
    c = changes.compare(r["manifest"], settings)
    assert c["previous"] == before["manifest"]["run_id"]
    facts, facts_before = read_json(r["run_dir"] / changes.FACTS_FILE), read_json(before["run_dir"] / changes.FACTS_FILE)
    t = changes.load_config()["thresholds"]
    # every listed processor moved beyond a threshold, and every processor that did is listed
    prev = {x["group"]: x for x in facts_before["by_processor"]}
    expected = {x["group"] for x in facts["by_processor"] if x["group"] in prev
                and max(x["per_day"], prev[x["group"]]["per_day"]) >= t["min_rows_per_day"]
                and (abs(100 * (x["approval"] - prev[x["group"]]["approval"])) >= t["approval_pp"]
                     or abs(x["per_day"] / prev[x["group"]]["per_day"] - 1) >= t["volume_relative"])}
    assert {x["group"] for x in c["processors"]} == expected
    # drift is smartrouter.drift's PSI of the two samples
    from smartrouter import drift as D

    a, b = pd.read_parquet(before["run_dir"] / changes.SAMPLE_FILE), pd.read_parquet(r["run_dir"] / changes.SAMPLE_FILE)
    psi = D.input_psi(a, b, D.load_config())
    assert c["drift"]["n_features"] == len(psi)
    # traffic mix: the new model vs the serving model on the same window
    on = read_json(r["run_dir"] / verdict.SERVING_ON_WINDOW_FILE)
    assert c["traffic_mix"]["columns"][f"serving {on['version']}"] == on["traffic_mix"]
    assert c["traffic_mix"]["columns"]["new model"] == pytest.approx(
        dict(zip(on["traffic_mix"], r["ev"].policies["model:logistic"].mean(axis=0))))
    first = changes.compare(before["manifest"], settings)
    assert first["note"].startswith("first run")


@pytest.mark.slow
def test_runs_index_fixed_columns_and_trend(runs) -> None:
    settings = runs["settings"]
    index = (settings.reports_dir / "index.html").read_text()
    heads = re.findall(r"<th>([^<]+)</th>", index.split("<h2>Runs</h2>")[1])
    assert heads == ["run", "decision", "serving after", "lift vs serving [95 % CI]", "lift vs rules [95 % CI]",
                     "data", "checks", "duration (s)"]
    rows = re.findall(r'<a href="(\d{8}T\d{6}Z(?:-\d+)?)/index.html">', index)
    assert rows == [runs["failed"].run_id, runs["rejected"]["manifest"]["run_id"], runs["promoted"]["manifest"]["run_id"]]
    v1 = runs["promoted"]["version"]
    # the version serving after each run: v1 after its promotion, still v1 after the rejection and the failure
    assert index.count(f"<td>{v1}</td>") == 3
    assert "data:image/png;base64," in index  # two runs with a lift: a trend


def _chromium_shot(page: Path, out: Path, profile: Path, height: int = 2200) -> None:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size=1200,{height}",
           page.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and out.exists(), res.stderr[-2000:]


@pytest.mark.slow
def test_screenshots_of_promoted_rejected_and_failed_runs(runs, tmp_path) -> None:
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).exists()):
        pytest.fail(f"{CHROMIUM} is missing; install it with tests/ensure_chromium.sh (make test does)")
    settings = runs["settings"]
    SHOTS.mkdir(parents=True, exist_ok=True)
    pages = {"promoted": settings.reports_dir / runs["promoted"]["manifest"]["run_id"] / "index.html",
             "rejected": settings.reports_dir / runs["rejected"]["manifest"]["run_id"] / "index.html",
             "failed": settings.reports_dir / runs["failed"].run_id / "index.html",
             "runs_index": settings.reports_dir / "index.html"}
    for name, page in pages.items():
        out = SHOTS / f"{name}.png"
        out.unlink(missing_ok=True)
        _chromium_shot(page, out, tmp_path / "profile")
        data = out.read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 20_000, f"{name}: screenshot is (nearly) blank"


@pytest.mark.parametrize("edit, key", [
    (("approval_pp = 1.0", "approval_pp = -1.0"), "approval_pp"),
    (("approval_pp = 1.0", "approval_pp = \"1 pp\""), "approval_pp"),
    (("mix_pp = 2.0", "mix_pp = 2.0\nmix_points = 2.0"), "mix_points"),
    (("rows = 3000", "rows = 10"), "rows"),
    (("seed = 0", ""), "seed"),
])
def test_changes_config_refuses_bad_edits(tmp_path, edit, key) -> None:
    from config_edits import assert_edit_refused

    assert_edit_refused(changes.load_config, changes.CONFIG_PATH, tmp_path, edit, key)


def test_gate_sentences_cover_every_gate() -> None:
    """Every gate the Gate stage can report has a plain sentence for passing and for failing."""
    from smartrouter import money

    assert set(G.GATES) | {money.NET_REVENUE_GATE} <= set(verdict.GATE_WORDS)


def test_changes_lists_only_what_moved_and_failed_checks(tmp_path, monkeypatch) -> None:
    """Data-stage numbers: a 2 pp approval move is listed, a 10 % volume move is not (15 % threshold);
    failed checks are always listed, and flagged on the page."""
    for name in ("RUNS", "REPORTS", "REGISTRY", "STATE", "LOCAL"):
        monkeypatch.setenv(f"SMARTROUTER_{name}_DIR", str(tmp_path / name.lower()))
    settings = load_settings()
    before = {"run_id": "20261101T020000Z", "metrics": {"01_extract_eda": {
        "approval_rate": 0.80, "attempts_per_day": 1000.0, "checks_failed": 0, "outage_incidents": 1}}}
    now = {"run_id": "20261102T020000Z", "metrics": {"01_extract_eda": {
        "approval_rate": 0.78, "attempts_per_day": 1100.0, "checks_failed": 2, "outage_incidents": 3}}}
    c = changes.compare(now, settings, previous=before)
    assert [d["metric"] for d in c["data"]] == ["approval_rate"]
    assert c["checks_failed"] == 2 and c["outages"]["count"] == 3 and c["outages"]["count_before"] == 1
    assert c["facts_note"].startswith("this run did not reach 04_evaluate")
    page = reports.changes_html(c)
    assert '<span class="flag">2 data check(s) failed</span>' in page
    assert "approval rate: 80.00 % → 78.00 % (-2.00 pp)" in page and "Outage incidents: 1 → 3" in page


@pytest.mark.parametrize("objective, served", [("approval", "model:xgb"), ("net_revenue", "model:xgb@net_revenue")])
def test_money_row_is_the_ranking_the_router_uses(tmp_path, monkeypatch, objective, served) -> None:
    for name in ("RUNS", "REPORTS", "REGISTRY", "STATE", "LOCAL"):
        monkeypatch.setenv(f"SMARTROUTER_{name}_DIR", str(tmp_path / name.lower()))
    settings = load_settings()
    run = settings.runs_dir / "20261101T020000Z"

    def row(policy: str, net: float) -> dict:
        cell = {"estimate": net, "ci_low": net - 1, "ci_high": net + 1, "true": None}
        return {"policy": policy, "approval": {"estimate": 0.8, "ci_low": 0.79, "ci_high": 0.81},
                "fee_per_day_mxn": cell, "net_revenue_per_day_mxn": cell, "net_revenue_per_day_usd": cell,
                "lift_vs_rules": {"net_revenue_per_day_mxn": {"lift": net / 10, "ci_low": 0, "ci_high": net / 5}}}

    write_json_atomic(run / "gate.json", {"decision": "rejected", "model_version": "v1", "champion_family": "xgb", "gates": []})
    write_json_atomic(run / "evaluation.json", {"money": {
        "available": True, "objective": {"name": objective, "floor_pp": 0.5},
        "schedule": {"values_are_examples": True, "fx": {"rates": {"USD": 17.5}, "as_of": "2026-11-30"}},
        "policies": [row("model:xgb", 1000.0), row("model:xgb@net_revenue", 2000.0)]}})
    v = verdict.build({"run_id": run.name, "status": "succeeded"}, settings)
    expected = next(r for r in read_json(run / "evaluation.json")["money"]["policies"] if r["policy"] == served)
    assert v["money"]["policy"] == served and v["money"]["objective"] == objective
    assert v["money"]["net_revenue_per_day_mxn"] == expected["net_revenue_per_day_mxn"]
    assert v["money"]["examples"] is True


@pytest.mark.parametrize("decision, words", [
    ("candidate", "this run was told not to promote"),
    ("candidate (a canary is rolling out)", "a canary is already rolling out"),
    ("canary", "Canary: v2 (xgb) passed every gate"),
])
def test_sentence_for_every_decision(decision, words) -> None:
    v = {"decision": decision, "model_version": "v2", "family": "xgb", "serving_now": {"version": "v1"},
         "serving": {"version": "v1"}, "lift_vs_rules": {"value": 0.05}, "lift_vs_serving": {"value": 0.004}, "gates": []}
    text = verdict.sentence(v)
    assert words in text and "+5.00 pp vs the static rules and +0.40 pp vs v1" in text
