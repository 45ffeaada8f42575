"""Run-level parameters and override validation (issue 11, findings 3 and 4).

One run-level set (as_of, lookback, split, seed) reaches every stage that declares it; a run-level
name set per stage, an unknown name, a value of the wrong type or an unknown profile key is refused
with exit code 2 before the lock is taken or a run folder made.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from pathlib import Path

import pytest

from smartrouter import pipeline
from smartrouter.cli import main
from smartrouter.config import REPO_ROOT, load_settings
from smartrouter.errors import ConfigError

DIRS = ("RUNS", "REPORTS", "REGISTRY", "STATE", "LOCAL")
NOTEBOOKS = REPO_ROOT / "notebooks"


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in DIRS:
        monkeypatch.setenv(f"SMARTROUTER_{name}_DIR", str(tmp_path / name.lower()))
    return load_settings()


def _nothing_started(settings) -> None:
    """No run folder, no lock: the refusal came before the run began."""
    assert not settings.runs_dir.exists() or not any(settings.runs_dir.iterdir())
    assert not (settings.state_dir / pipeline.LOCK_FILE).exists()


def _refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(["run", "--as-of", "2026-10-01", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    return err


# ------------------------------------------------------------------ the shipped profiles and notebooks
def test_shipped_profiles_fit_the_notebooks() -> None:
    """Every key of profiles.toml is a parameter of its notebook, of the default's type."""
    stages = [pipeline.Stage(s, NOTEBOOKS / f"{s}.ipynb") for s in pipeline.STAGES]
    for profile in pipeline.load_profiles():
        params = pipeline.resolve_parameters(profile)
        params.run = {pipeline.AS_OF: "2026-10-01", **params.run}
        pipeline.check_parameters(params, stages)  # raises on any mismatch


def test_notebook_defaults_of_run_parameters_match_the_base_profile() -> None:
    """A notebook opened in JupyterLab runs with the daily run's run-level values."""
    run = pipeline.load_profiles()[pipeline.BASE_PROFILE]["run"]
    for stage in pipeline.STAGES:
        defaults = pipeline.notebook_defaults(NOTEBOOKS / f"{stage}.ipynb")
        for key, value in run.items():
            if key in defaults:
                assert defaults[key] == value, f"{stage}.ipynb: {key} = {defaults[key]!r}, [default.run] says {value!r}"


# ------------------------------------------------------------------ finding 3: one run-level set
def test_run_level_name_set_per_stage_is_refused(settings, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(["-p", "01_extract_eda.lookback_days=7"], capsys)
    assert "lookback_days is a run-level parameter" in err and "-p run.lookback_days" in err
    err = _refused(["-p", "02_features.valid_days=2"], capsys)
    assert "-p run.valid_days" in err
    err = _refused(["-p", "run.as_of=2026-01-01"], capsys)
    assert "--as-of" in err
    err = _refused(["-p", "03_train.run_dir=/tmp/x"], capsys)
    assert "set by the runner" in err
    _nothing_started(settings)


def test_run_values_reach_every_declaring_stage() -> None:
    stages = [pipeline.Stage(s, NOTEBOOKS / f"{s}.ipynb") for s in pipeline.STAGES]
    params = pipeline.resolve_parameters("quick", ["run.lookback_days=9", "run.seed=5", "run.valid_days=2"])
    params.run = {pipeline.AS_OF: "2026-10-01", **params.run}
    inject = pipeline.check_parameters(params, stages)
    assert inject["01_extract_eda"]["lookback_days"] == 9 and inject["02_features"]["lookback_days"] == 9
    assert inject["02_features"]["valid_days"] == 2 and inject["02_features"]["test_days"] == 3
    assert {inject[s]["seed"] for s in ("02_features", "03_train", "04_evaluate")} == {5}
    assert {inject[s]["as_of"] for s in pipeline.STAGES} == {"2026-10-01"}
    assert "lookback_days" not in inject["03_train"]  # only where the notebook declares it


def test_a_split_without_training_days_is_refused(settings, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(["--profile", "quick", "-p", "run.lookback_days=6"], capsys)
    assert "leave no training days" in err and "run.lookback_days=6" in err
    err = _refused(["-p", "run.test_days=0"], capsys)
    assert "run.test_days=0" in err
    _nothing_started(settings)


# ------------------------------------------------------------------ finding 4: validated before the run
def test_unknown_name_exit_2_and_no_run_folder(settings, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(["-p", "03_train.dnn_epoch=3"], capsys)
    assert "-p 03_train.dnn_epoch=3" in err and "03_train.ipynb has no parameter 'dnn_epoch'" in err
    assert "did you mean dnn_epochs" in err
    err = _refused(["-p", "runner.cell_timeout=3"], capsys)
    assert "unknown runner setting" in err
    _nothing_started(settings)


@pytest.mark.parametrize(("override", "expected"), [
    ("run.lookback_days=abc", "run.lookback_days expects an integer (default 84), got the string 'abc'"),
    ("run.lookback_days=7.5", "run.lookback_days expects an integer (default 84), got the float 7.5"),
    ("03_train.dnn_epochs=abc", "03_train.ipynb expects an integer for dnn_epochs (default 8), got the string 'abc'"),
    ("03_train.dnn_epochs=2.5", "03_train.ipynb expects an integer for dnn_epochs (default 8), got the float 2.5"),
    ("03_train.importance_weighting=1", "03_train.ipynb expects true or false for importance_weighting"),
    ("04_evaluate.operating_threshold=high", "04_evaluate.ipynb expects a number for operating_threshold"),
    ("runner.stage_timeout_s=soon", "runner.stage_timeout_s expects a number"),
])
def test_bad_value_exit_2_and_no_run_folder(override: str, expected: str, settings,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(["-p", override], capsys)
    assert f"-p {override}" in err and expected in err, err
    _nothing_started(settings)


def test_values_that_fit_are_kept_as_the_notebook_types() -> None:
    stages = [pipeline.Stage(s, NOTEBOOKS / f"{s}.ipynb") for s in pipeline.STAGES]
    params = pipeline.resolve_parameters("default", ["04_evaluate.operating_threshold=1", "03_train.dnn_hidden=256",
                                                     "03_train.families=xgb", "03_train.compare_weighting=true"])
    params.run = {pipeline.AS_OF: "2026-10-01", **params.run}
    inject = pipeline.check_parameters(params, stages)
    assert inject["04_evaluate"]["operating_threshold"] == 1.0 and isinstance(inject["04_evaluate"]["operating_threshold"], float)
    assert inject["03_train"]["dnn_hidden"] == "256"  # a string parameter takes the text as typed
    assert inject["03_train"]["families"] == "xgb" and inject["03_train"]["compare_weighting"] is True


@pytest.mark.parametrize(("text", "expected"), [
    ("[default.run]\nlookback_days = 84\nvalid_days = 7\ntest_days = 7\nseed = 0\n[default.03_trian]\n",
     "[default.03_trian] is not a section"),
    ("[default.run]\nlookback_days = 84\nvalid_days = 7\ntest_days = 7\nseed = 0\nlookbak = 3\n",
     "[default.run] lookbak: not a run-level parameter"),
    ("[default.run]\nlookback_days = 84\nvalid_days = 7\ntest_days = 7\nseed = 0\n[default.runner]\ntimeout = 3\n",
     "[default.runner] timeout: unknown runner setting"),
    ("[default.run]\nlookback_days = 84\nvalid_days = 7\ntest_days = 7\nseed = 0\n[quick.02_features]\nlookback_days = 3\n",
     "[quick.02_features] lookback_days: lookback_days is a run-level parameter"),
    ("[default.run]\nlookback_days = 84\nvalid_days = 7\ntest_days = 7\n", "[default.run] must set seed"),
    ("[quick.run]\nlookback_days = 84\n", "the base profile 'default' is required"),
    ("oops = 1\n[default.run]\nlookback_days = 84\nvalid_days = 7\ntest_days = 7\nseed = 0\n", "'oops' is not a profile table"),
])
def test_profile_file_rejects_unknown_keys(text: str, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        pipeline.load_profiles(path)
    assert expected in str(info.value) and str(path) in str(info.value)


def test_profile_key_unknown_to_its_notebook(settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "profiles.toml"
    path.write_text("[default.run]\nlookback_days = 84\nvalid_days = 7\ntest_days = 7\nseed = 0\n"
                    "[default.03_train]\ndnn_epochs = 3\n[quick.03_train]\nxgb_estimator = 5\n")
    err = _refused(["--profiles", str(path), "--profile", "quick"], capsys)
    assert "profiles.toml [quick.03_train] xgb_estimator = 5: 03_train.ipynb has no parameter 'xgb_estimator'" in err
    _nothing_started(settings)


# ------------------------------------------------------------------ the run records what the stages used
@pytest.mark.slow
def test_run_lookback_override_changes_the_training_window(settings) -> None:
    """-p run.lookback_days=7 is the window 01 reads and 02 trains on, and what the manifest records."""
    from smartrouter import warehouse
    from smartrouter.world import World, WorldParams

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = warehouse.write_world(World(WorldParams.small(per_day=400)), settings, progress=False)
    as_of = dt.date.fromisoformat(summary.start[:10]) + dt.timedelta(days=14)
    result = pipeline.run_pipeline(settings, profile="quick", as_of=as_of, select="01,02", echo=None, render=False,
                                   overrides=["run.lookback_days=7", "run.valid_days=2", "run.test_days=2"])
    assert result.ok, result.error
    m = json.loads((result.run_dir / "manifest.json").read_text())
    assert m["run"] == {"as_of": as_of.isoformat(), "lookback_days": 7, "valid_days": 2, "test_days": 2, "seed": 0}
    start = (as_of - dt.timedelta(days=7)).isoformat()
    assert m["data"]["window"] == {"start": start, "end_exclusive": as_of.isoformat(), "lookback_days": 7}
    split = json.loads((result.run_dir / "split.json").read_text())
    assert split["window_start"][:10] == start and (split["valid_days"], split["test_days"]) == (2, 2)
    metrics = m["metrics"]
    # 7 of the world's 14 days: both stages read the same half, not the profile's 14 days
    attempts = metrics["01_extract_eda"]["attempts"]
    assert attempts < summary.attempts * 0.75, (attempts, summary.attempts)
    assert 0 < metrics["02_features"]["feature_rows"] <= attempts < summary.attempts * 0.75
    for stage in ("01_extract_eda", "02_features"):
        used = json.loads((result.run_dir / f"{stage}.ipynb").read_text())["metadata"]["papermill"]["parameters"]
        assert used == {k: v for k, v in m["parameters"][stage].items() if k in used}
        assert {k: used[k] for k in m["run"] if k in used} == {k: v for k, v in m["run"].items() if k in used}
    assert m["parameters"]["01_extract_eda"]["lookback_days"] == m["parameters"]["02_features"]["lookback_days"] == 7


def test_a_split_the_data_cannot_fill_fails_instead_of_shrinking(settings) -> None:
    """02 once shortened valid/test silently on short data; now the run fails naming what to change."""
    from smartrouter import warehouse
    from smartrouter.world import World, WorldParams

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = warehouse.write_world(World(WorldParams.small(days=10, per_day=300)), settings, progress=False)
    # as of 4 days after the world's last day: the 3-day test window of the quick profile holds no rows
    as_of = dt.date.fromisoformat(summary.start[:10]) + dt.timedelta(days=14)
    result = pipeline.run_pipeline(settings, profile="quick", as_of=as_of, select="02", echo=None, render=False)
    assert result.status == "failed" and result.failed_stage == "02_features"
    assert "the test window holds no rows" in result.error and "-p run.valid_days" in result.error, result.error
    m = json.loads((result.run_dir / "manifest.json").read_text())
    assert (m["run"]["valid_days"], m["run"]["test_days"]) == (3, 3) and not (result.run_dir / "split.json").exists()
