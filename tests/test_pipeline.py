"""The runner: parameters and profiles, run ids, the lock, the failure drill (raise, cell timeout,
stage timeout), exit codes, and the whole chain on a small world."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from smartrouter import pipeline
from smartrouter.cli import main
from smartrouter.config import REPO_ROOT, load_settings
from smartrouter.errors import ConfigError
from smartrouter.pipeline import RunLock, Stage, run_pipeline

NB = REPO_ROOT / "tests" / "notebooks"
DRILL, DRILL_GATE = NB / "drill.ipynb", NB / "drill_gate.ipynb"
# The drills declare none of the real stages' parameters, so they run under their own profiles file.
DRILL_PROFILES = NB / "drill_profiles.toml"
DIRS = ("RUNS", "REPORTS", "REGISTRY", "STATE", "LOCAL")


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in DIRS:
        monkeypatch.setenv(f"SMARTROUTER_{name}_DIR", str(tmp_path / name.lower()))
    return load_settings()


def drill_home(tmp_path: Path) -> Path:
    """A project home whose notebooks/ are the drill stages (so the real CLI runs them)."""
    home = tmp_path / "home"
    (home / "notebooks").mkdir(parents=True)
    for stage in ("01_extract_eda", "02_features", "03_train", "04_evaluate"):
        shutil.copy(DRILL, home / "notebooks" / f"{stage}.ipynb")
    shutil.copy(DRILL_GATE, home / "notebooks" / "05_gate.ipynb")
    return home


def cli(args: list[str], home: Path, tmp_path: Path, **popen) -> subprocess.Popen[str]:
    env = dict(os.environ, SMARTROUTER_HOME=str(home), SMARTROUTER_ADMIN_TOKEN="tok-do-not-leak")
    for name in DIRS:
        env[f"SMARTROUTER_{name}_DIR"] = str(tmp_path / name.lower())
    exe = Path(sys.executable).parent / "smartrouter"
    return subprocess.Popen([str(exe), "run", "--profiles", str(DRILL_PROFILES), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


# ------------------------------------------------------------------ parameters, ids, input errors
def test_profiles_merge_and_overrides() -> None:
    p = pipeline.resolve_parameters("quick", ["run.lookback_days=7", '03_train.family="xgb"',
                                              "runner.cell_timeout_s=5", "02_features.flag=true", "05_gate.name=word"])
    assert p.run == {"lookback_days": 7, "valid_days": 3, "test_days": 3, "seed": 0}  # seed from default
    assert p.stages["01_extract_eda"]["outage_bucket_minutes"] == 60  # inherited from default
    assert p.stages["01_extract_eda"]["check_sample_rows"] == 20000  # quick's
    assert p.stages["03_train"]["family"] == "xgb" and p.stages["02_features"]["flag"] is True
    assert p.stages["05_gate"]["name"] == "word"
    assert p.runner["cell_timeout_s"] == 5 and p.runner["stage_timeout_s"] == 300
    assert set(pipeline.load_profiles()) >= {"quick", "default", "prod"}
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        pipeline.resolve_parameters("nope")
    with pytest.raises(ConfigError, match="no section '09_x'"):
        pipeline.resolve_parameters("quick", ["09_x.a=1"])
    with pytest.raises(ConfigError, match="STAGE.KEY=VALUE"):
        pipeline.parse_override("lookback_days=7")


def test_select_stages_and_as_of() -> None:
    stages = [Stage(n, Path(f"{n}.ipynb")) for n in pipeline.STAGES]
    assert [s.name for s in pipeline.select_stages(stages, "02,01")] == ["01_extract_eda", "02_features"]
    assert [s.name for s in pipeline.select_stages(stages, "05_gate")] == ["05_gate"]
    with pytest.raises(ConfigError, match="no stage '7'"):
        pipeline.select_stages(stages, "7")
    assert pipeline.parse_as_of("2026-10-01") == dt.date(2026, 10, 1)
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        pipeline.parse_as_of("2026-13-01")


def test_run_ids_sortable_and_never_reused(tmp_path: Path) -> None:
    t = dt.datetime(2026, 11, 23, 16, 25, 30, tzinfo=dt.timezone.utc)
    ids = [pipeline.new_run_dir(tmp_path, t)[0] for _ in range(3)]
    assert ids == ["20261123T162530Z", "20261123T162530Z-2", "20261123T162530Z-3"]
    later = pipeline.new_run_dir(tmp_path, t + dt.timedelta(seconds=1))[0]
    assert sorted([*ids, later]) == [*ids, later] and all(pipeline.is_run_id(i) for i in ids)
    assert not pipeline.is_run_id("lab")


def test_redact_secrets() -> None:
    out = pipeline.redact({"01": {"api_token": "x", "lookback_days": 3}, "db_password": "y"})
    assert out == {"01": {"api_token": "<redacted>", "lookback_days": 3}, "db_password": "<redacted>"}


def test_bad_input_exit_code_2(settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--profile", "nope"]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err
    assert main(["run", "--as-of", "2026-02-30"]) == 2
    assert "--as-of" in capsys.readouterr().err
    assert not settings.runs_dir.exists() or not any(settings.runs_dir.iterdir())  # nothing started


# ------------------------------------------------------------------ notebook tools
def test_record_plain_values_and_merge(settings, tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd

    from smartrouter.notebook_tools import plain, stage_context

    assert plain({"a": np.float32(0.5), "b": np.int64(3), "c": np.bool_(True), "d": float("nan"),
                  "e": pd.Series([1, 2], index=["x", "y"]), "f": np.array([1.0, np.inf])}) == \
        {"a": 0.5, "b": 3, "c": True, "d": None, "e": {"x": 1, "y": 2}, "f": [1.0, None]}
    with pytest.raises(TypeError, match="cannot record"):
        plain(object())
    ctx = stage_context(tmp_path / "run", "01_extract_eda", settings)
    ctx.record("rows", np.int64(10))
    stage_context(tmp_path / "run", "02_features", settings).record("auc", np.float64(0.7))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == {"01_extract_eda": {"rows": 10},
                                                                            "02_features": {"auc": 0.7}}
    assert stage_context("", "01_extract_eda", settings).run_dir == settings.runs_dir / "lab"


# ------------------------------------------------------------------ the lock
def test_lock_names_the_holder_and_takes_over_stale(settings) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    settings.state_dir.mkdir(parents=True)
    stale = {"run_id": "20260101T000000Z", "pid": int(dead.stdout), "host": os.uname().nodename, "started": "x"}
    (settings.state_dir / pipeline.LOCK_HOLDER_FILE).write_text(json.dumps(stale))
    lock = RunLock(settings.state_dir)
    with pytest.warns(RuntimeWarning, match="stale run lock left by run 20260101T000000Z"):
        lock.acquire()
    lock.set_holder("20261123T000000Z", "2026-11-23T00:00:00Z")
    holder_code = (
        "import sys; from pathlib import Path; from smartrouter.pipeline import RunLock, RunLocked\n"
        "try:\n    RunLock(Path(sys.argv[1])).acquire()\nexcept RunLocked as e:\n    print(e); sys.exit(e.exit_code)\n"
    )
    other = subprocess.run([sys.executable, "-c", holder_code, str(settings.state_dir)], capture_output=True, text=True)
    assert other.returncode == 3
    assert f"another run is in progress: 20261123T000000Z (pid {os.getpid()}" in other.stdout
    lock.release()
    assert not (settings.state_dir / pipeline.LOCK_HOLDER_FILE).exists()


# ------------------------------------------------------------------ failure drill
@pytest.mark.slow
def test_failure_drill_then_recovery(tmp_path: Path) -> None:
    """A stage that raises: run failed, exit 1, failing cell visible, nothing promoted; the next run succeeds."""
    home = drill_home(tmp_path)
    p = cli(["--profile", "quick", "--stages", "01,02,05", "-p", '02_features.mode="raise"'], home, tmp_path)
    out, err = p.communicate(timeout=400)
    assert p.returncode == 1, out + err
    assert "02_features: FAILED: cell" in out and "ValueError: drill failure in 02_features" in out
    assert "failed at 02_features" in err
    runs = tmp_path / "runs"
    (run_dir,) = [d for d in runs.iterdir() if pipeline.is_run_id(d.name)]
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "failed" and m["failed_stage"] == "02_features"
    assert [s["status"] for s in m["stages"]] == ["succeeded", "failed", "skipped"]
    assert m["gate"] is None and m["model_version"] is None
    assert not (run_dir / "gate.json").exists() and not (tmp_path / "registry" / "PROMOTED").exists()
    assert (run_dir / "02_features.ipynb").exists()  # the partial notebook is kept
    html = (tmp_path / "reports" / m["run_id"] / "02_features.html").read_text()
    assert "drill failure in 02_features" in html and "This stage failed" in html
    assert "raise ValueError" in html.replace("<span", " <span") or "ValueError" in html
    assert "tok-do-not-leak" not in (run_dir / "manifest.json").read_text()
    from smartrouter import lineage

    fails = lineage.failed_runs(load_settings({f"SMARTROUTER_{n}_DIR": str(tmp_path / n.lower()) for n in DIRS}))
    assert [f["failed_stage"] for f in fails] == ["02_features"]

    p = cli(["--profile", "quick", "--stages", "01,02,05"], home, tmp_path)
    out, err = p.communicate(timeout=400)
    assert p.returncode == 0, out + err
    newest = sorted(d for d in runs.iterdir() if pipeline.is_run_id(d.name))[-1]
    m2 = json.loads((newest / "manifest.json").read_text())
    assert m2["status"] == "succeeded" and m2["run_id"] > m["run_id"]
    assert m2["gate"]["decision"] == "promoted" and m2["model_version"] == "v1"
    assert [s["status"] for s in m2["stages"]] == ["succeeded"] * 3
    assert all(s["duration_s"] > 0 for s in m2["stages"])
    index = (tmp_path / "reports" / "index.html").read_text()
    assert m["run_id"] in index and m2["run_id"] in index


@pytest.mark.slow
def test_cell_timeout_and_stage_timeout_fail_the_run(settings) -> None:
    stage = [Stage("01_extract_eda", DRILL)]
    r = run_pipeline(settings, profile="quick", stages=stage, echo=None, render=False, profiles_file=DRILL_PROFILES,
                     overrides=['01_extract_eda.mode="sleep"', "01_extract_eda.sleep_s=120", "runner.cell_timeout_s=3"])
    assert r.status == "failed" and r.failed_stage == "01_extract_eda"
    assert "timeout" in r.error.lower(), r.error
    t0 = time.monotonic()
    r = run_pipeline(settings, profile="quick", stages=stage, echo=None, render=True, profiles_file=DRILL_PROFILES,
                     overrides=['01_extract_eda.mode="sleep"', "01_extract_eda.sleep_s=120", "runner.stage_timeout_s=4"])
    assert r.status == "failed" and "exceeded its 4 s timeout" in r.error, r.error
    assert time.monotonic() - t0 < 100  # the watchdog stopped the 120 s sleep
    m = json.loads((r.run_dir / "manifest.json").read_text())
    assert m["status"] == "failed" and m["stages"][0]["error"] == r.error
    assert "exceeded its 4 s timeout" in (settings.reports_dir / r.run_id / "01_extract_eda.html").read_text()


@pytest.mark.slow
def test_two_concurrent_runs(tmp_path: Path) -> None:
    home = drill_home(tmp_path)
    first = cli(["--profile", "quick", "--stages", "01", "-p", '01_extract_eda.mode="sleep"',
                 "-p", "01_extract_eda.sleep_s=6"], home, tmp_path)
    holder = tmp_path / "state" / pipeline.LOCK_HOLDER_FILE
    deadline = time.monotonic() + 120
    while not holder.exists() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert holder.exists(), "the first run never took the lock"
    run_id = json.loads(holder.read_text())["run_id"]
    second = cli(["--profile", "quick", "--stages", "01"], home, tmp_path)
    out2, err2 = second.communicate(timeout=120)
    assert second.returncode == 3, out2 + err2
    assert f"another run is in progress: {run_id} (pid {first.pid}" in err2
    out1, err1 = first.communicate(timeout=400)
    assert first.returncode == 0, out1 + err1
    assert len([d for d in (tmp_path / "runs").iterdir() if pipeline.is_run_id(d.name)]) == 1
    # what the stage recorded reads back with scrapbook (our glue writes scrapbook's format)
    import scrapbook as sb

    scraps = sb.read_notebook(str(tmp_path / "runs" / run_id / "01_extract_eda.ipynb")).scraps
    assert scraps["value"].data == 1.5 and isinstance(scraps["pid"].data, int)
    metrics = json.loads((tmp_path / "runs" / run_id / "metrics.json").read_text())
    assert metrics["01_extract_eda"]["value"] == 1.5


# ------------------------------------------------------------------ the whole chain on a small world
@pytest.mark.slow
def test_whole_chain_on_small_world(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import scrapbook as sb

    from smartrouter import lineage, warehouse
    from smartrouter.world import World, WorldParams

    monkeypatch.setenv("SMARTROUTER_ADMIN_TOKEN", "tok-do-not-leak")
    settings = load_settings()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = warehouse.write_world(World(WorldParams.small(per_day=1000)), settings, progress=False)
    # the quick profile looks back 14 days: as of the day after the world's 14th day, it reads every row
    as_of = (dt.date.fromisoformat(summary.start[:10]) + dt.timedelta(days=14)).isoformat()
    result = run_pipeline(settings, profile="quick", as_of=as_of, echo=print)
    m = json.loads((result.run_dir / "manifest.json").read_text())
    assert result.ok, f"failed at {result.failed_stage}: {result.error}"
    assert m["status"] == "succeeded" and pipeline.is_run_id(m["run_id"]) and m["as_of"] == as_of
    assert [s["name"] for s in m["stages"]] == list(pipeline.STAGES)
    assert all(s["status"] == "succeeded" and s["duration_s"] > 0 for s in m["stages"])
    assert m["run"] == {"as_of": as_of, "lookback_days": 14, "valid_days": 3, "test_days": 3, "seed": 0}
    assert m["parameters"]["01_extract_eda"]["lookback_days"] == 14 and m["parameters"]["01_extract_eda"]["run_dir"] == str(result.run_dir)
    # what each stage ran with (papermill's record in the executed notebook) is what the manifest says
    for stage in pipeline.STAGES:
        used = json.loads((result.run_dir / f"{stage}.ipynb").read_text())["metadata"]["papermill"]["parameters"]
        assert used == {k: v for k, v in m["parameters"][stage].items() if k in used}, stage
        assert {k: used[k] for k in m["run"] if k in used} == {k: v for k, v in m["run"].items() if k in used}, stage
    split = json.loads((result.run_dir / "split.json").read_text())
    assert (split["valid_days"], split["test_days"]) == (m["run"]["valid_days"], m["run"]["test_days"])
    assert m["code"]["commit"] and len(m["code"]["commit"]) == 40
    assert m["packages"]["papermill"] and m["packages"]["pandas"]
    assert "tok-do-not-leak" not in json.dumps(m)
    assert m["data"]["window"] == {"start": (dt.date.fromisoformat(as_of) - dt.timedelta(days=14)).isoformat(),
                                   "end_exclusive": as_of, "lookback_days": 14}
    fp = m["data"]["fingerprint"]
    assert fp == m["metrics"]["01_extract_eda"]["data_fingerprint"]
    assert fp["tables"][0]["rows"] == summary.attempts
    assert m["gate"] is not None and m["gate"]["decision"]  # the gate recorded a decision with reasons
    # headline numbers read back from the executed notebook with scrapbook
    scraps = sb.read_notebook(str(result.run_dir / "01_extract_eda.ipynb")).scraps
    attempts = scraps["attempts"].data
    assert abs(attempts - 14 * 1000) / (14 * 1000) < 0.1 and attempts == summary.attempts
    assert 0.7 <= scraps["approval_rate"].data <= 0.9
    assert scraps["checks_passed"].data is True
    assert scraps["data_fingerprint"].data["hash"] == fp["hash"]
    assert m["metrics"]["01_extract_eda"]["approval_rate"] == scraps["approval_rate"].data
    # the train stage records how many learned crosses the logistic heads got: the exported model's
    lr_config = json.loads((result.run_dir / "models" / "logistic" / "model.json").read_text())["config"]
    assert m["metrics"]["03_train"]["logistic_crosses"] == len(lr_config["crosses"])
    # the evaluate stage's optimized static rules: within the row limit, rows the rules engine loads
    from smartrouter.rules import RulesEngine

    s04 = sb.read_notebook(str(result.run_dir / "04_evaluate.ipynb")).scraps
    proposal = json.loads((result.run_dir / "rule_proposal.json").read_text())
    assert 1 <= s04["rules_proposed_rows"].data == len(proposal["proposed_rows"]) <= 25
    assert len(RulesEngine(proposal["proposed_rows"])) == s04["rules_proposed_rows"].data
    assert s04["rules_lift"].data == proposal["held_out"]["headline"]["lift"] and "rules_true_lift" in s04
    # reports and lineage
    for stage in pipeline.STAGES:
        assert (settings.reports_dir / m["run_id"] / f"{stage}.html").stat().st_size > 1000
    assert (settings.reports_dir / "index.html").exists()
    assert lineage.runs(settings)[0]["run_id"] == m["run_id"]
