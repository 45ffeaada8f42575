"""Lineage store: runs, stages, metrics, models, promotions; the serving model's data, code and parameters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from smartrouter import lineage
from smartrouter.cli import main
from smartrouter.config import load_settings


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in ("RUNS", "REPORTS", "REGISTRY", "STATE", "LOCAL"):
        monkeypatch.setenv(f"SMARTROUTER_{name}_DIR", str(tmp_path / name.lower()))
    return load_settings()


def manifest(run_id: str, status: str = "succeeded", version: str | None = None, failed: str | None = None) -> dict[str, Any]:
    return {
        "run_id": run_id, "status": status, "profile": "quick", "as_of": "2026-11-01",
        "started_at": "2026-11-01T02:00:00Z", "ended_at": "2026-11-01T02:05:00Z", "duration_s": 300.0,
        "parameters": {"03_train": {"run_dir": f"/runs/{run_id}", "as_of": "2026-11-01", "epochs": 3}},
        "stages": [{"name": "01_extract_eda", "status": "succeeded", "duration_s": 10.0},
                   {"name": "03_train", "status": "failed" if failed else "succeeded", "duration_s": 5.0,
                    "error": "cell 4 raised ValueError: boom" if failed else None}],
        "failed_stage": failed, "error": "cell 4 raised ValueError: boom" if failed else None,
        "code": {"commit": "abc123", "dirty": False},
        "packages": {"pandas": "2.3.3"},
        "data": {"window": {"start": "2026-10-18", "end_exclusive": "2026-11-01"},
                 "fingerprint": {"hash": f"fp-{run_id}", "tables": []}},
        "metrics": {"01_extract_eda": {"attempts": 1000, "approval_rate": 0.8, "keys": ["a"], "ok": True}},
        "model_version": version,
        "gate": {"decision": "promoted" if version else None, "model_version": version,
                 "champion_family": "xgb" if version else None, "reasons": ["beats rules by 2 pp"] if version else []},
    }


def test_record_and_query_runs(settings) -> None:
    lineage.record_run(manifest("20261101T020000Z"), settings)
    lineage.record_run(manifest("20261102T020000Z", status="failed", failed="03_train"), settings)
    lineage.record_run(manifest("20261102T020000Z", status="failed", failed="03_train"), settings)  # idempotent
    runs = lineage.runs(settings)
    assert [r["run_id"] for r in runs] == ["20261102T020000Z", "20261101T020000Z"]
    fails = lineage.failed_runs(settings)
    assert len(fails) == 1 and fails[0]["failed_stage"] == "03_train" and "boom" in fails[0]["error"]
    m = lineage.metrics("20261101T020000Z", settings)
    assert m["01_extract_eda"] == {"attempts": 1000.0, "approval_rate": 0.8, "ok": 1.0}  # lists are not metrics
    with lineage.connect(settings) as db:
        assert db.execute("SELECT COUNT(*) FROM stages WHERE run_id = '20261102T020000Z'").fetchone()[0] == 2


def test_serving_lineage_without_and_with_promotion(settings) -> None:
    out = lineage.serving_model_lineage(settings)
    assert out["serving"] is None and "static rules" in out["message"]
    lineage.record_run(manifest("20261103T020000Z", version="v3"), settings)
    lineage.record_promotion("v3", "20261103T020000Z", "promote", "passed every gate", settings)
    settings.registry_dir.mkdir(parents=True)
    (settings.registry_dir / lineage.PROMOTED_FILE).write_text(json.dumps({"version": "v3"}))
    out = lineage.serving_model_lineage(settings)
    assert out["serving"] == "v3" and out["run_id"] == "20261103T020000Z"
    assert out["data"]["fingerprint"]["hash"] == "fp-20261103T020000Z"
    assert out["data"]["window"]["start"] == "2026-10-18"
    assert out["code"]["commit"] == "abc123"
    assert out["parameters"]["03_train"]["epochs"] == 3
    assert out["gate"]["reasons"] == ["beats rules by 2 pp"]
    assert [p["action"] for p in out["promotions"]] == ["promote"]


def test_promoted_model_unknown_to_lineage(settings) -> None:
    settings.registry_dir.mkdir(parents=True)
    (settings.registry_dir / lineage.PROMOTED_FILE).write_text(json.dumps({"version": "v9", "run_id": "x"}))
    out = lineage.serving_model_lineage(settings)
    assert out["serving"] == "v9" and "not in the lineage store" in out["message"]


def test_cli(settings, capsys: pytest.CaptureFixture[str]) -> None:
    lineage.record_run(manifest("20261101T020000Z", version="v1"), settings)
    lineage.record_run(manifest("20261102T020000Z", status="failed", failed="03_train"), settings)
    (settings.registry_dir).mkdir(parents=True)
    (settings.registry_dir / lineage.PROMOTED_FILE).write_text(json.dumps({"version": "v1"}))
    assert main(["lineage", "failures"]) == 0
    assert "20261102T020000Z  failed at 03_train" in capsys.readouterr().out
    assert main(["lineage", "serving", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["serving"] == "v1" and data["code"]["commit"] == "abc123"
    assert main(["lineage", "serving"]) == 0
    text = capsys.readouterr().out
    assert "serving model: v1" in text and "fp-20261101T020000Z" in text and "abc123" in text
    assert main(["lineage"]) == 0
    assert "20261101T020000Z" in capsys.readouterr().out
