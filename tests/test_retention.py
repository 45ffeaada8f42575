"""Run size and retention (issue 17 item 6): the pickle-free 04 -> 05 hand-off, `smartrouter runs list|prune`
(never the serving model's run, a canary's, the rollback target's or a running run), and a cron log free of
kernel and TensorFlow noise that still shows a real stage failure."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from smartrouter import evaluation as E
from smartrouter import gates as G
from smartrouter import handoff, kernel_log, retention
from smartrouter.cli import main
from smartrouter.config import REPO_ROOT, load_settings
from smartrouter.errors import ConfigError

from eval_fakes import FakeOracle, FakeRules, model_probs, split_frame, synthetic_log

DIRS = ("RUNS", "REPORTS", "REGISTRY", "STATE", "LOCAL")


# ------------------------------------------------------------------ the hand-off
@pytest.fixture(scope="module")
def ev():
    frame, truth, _ = synthetic_log(n=12_000, eps=0.25, seed=11)
    frame = split_frame(frame)
    test = frame[frame["SPLIT"] == "test"].reset_index(drop=True)
    tt = truth[(frame["SPLIT"] == "test").to_numpy()]
    probs = {"logistic": model_probs(tt, 0.3), "xgb": model_probs(tt, 0.2, seed=5)}
    return E.evaluate_run(test, probs, FakeRules(), oracle=FakeOracle(test, tt), n_boot=40, seed=7)


def _gates(e: E.RunEvaluation) -> str:
    cfg = G.load_config(overrides={"stability": {"max_interval_width": 0.3}})
    report = G.run_gates(e, train_counts={"WORLDPAY": 5000, "MIT": 5000, "ELAVON": 5000, "ADYEN": 5000},
                         serving_dirs={}, config=cfg)
    return json.dumps(report.to_json(), default=str, sort_keys=True)


def test_handoff_round_trip_is_exact_and_the_gate_decides_the_same(ev, tmp_path):
    path = tmp_path / E.EVALUATION_HANDOFF
    E.save_evaluation(ev, path)
    meta = json.loads(zipfile.ZipFile(path).read(handoff.META))
    assert meta["derived"] == ["first", "q_hat", "values.terms"]  # recomputed, not stored
    assert not any(n.endswith(".pkl") for n in zipfile.ZipFile(path).namelist())
    back = E.load_evaluation(path)
    assert handoff.same(ev, back)
    assert _gates(back) == _gates(ev)
    assert json.dumps(back.to_json(), default=str) == json.dumps(ev.to_json(), default=str)


def test_a_field_someone_adds_travels_and_a_derivation_that_stops_matching_is_stored(ev, tmp_path):
    import copy

    e = copy.copy(ev)
    e.money = {"objective": "net_revenue", "mix": pd.DataFrame({"p": ["MIT", "ADYEN"], "share": [0.4, 0.6]}),
               "fee": np.array([1.5, np.nan]), "pairs": {("a", "b"): (1, None, float("inf"))}}
    e.first = ev.first.assign(AMOUNT=ev.first["AMOUNT"] + 1.0)  # no longer the test rows it derives from
    path = tmp_path / "h.zip"
    E.save_evaluation(e, path)
    assert "first" not in json.loads(zipfile.ZipFile(path).read(handoff.META))["derived"]
    back = E.load_evaluation(path)
    assert handoff.same(e, back) and not handoff.same(ev.first, back.first)
    assert back.money["pairs"][("a", "b")] == (1, None, float("inf"))


def test_what_cannot_travel_is_refused_at_save_naming_where(ev, tmp_path):
    import copy

    e = copy.copy(ev)
    e.money = {"processors": {"MIT", "ADYEN"}}
    with pytest.raises(ConfigError, match=r"value\.money\['processors'\] is a builtins\.set"):
        E.save_evaluation(e, tmp_path / "h.zip")
    e.money = {"odd": np.array([object(), 1], dtype=object)}
    with pytest.raises(ConfigError, match="object array"):
        E.save_evaluation(e, tmp_path / "h.zip")
    assert not (tmp_path / "h.zip").exists()


def test_missing_corrupt_older_or_foreign_files_are_clear_errors(ev, tmp_path):
    path = tmp_path / E.EVALUATION_HANDOFF
    with pytest.raises(handoff.HandoffError, match="does not exist; re-run the 04_evaluate stage"):
        E.load_evaluation(path)
    (tmp_path / E.LEGACY_EVALUATION_PICKLE).write_bytes(b"\x80\x04old")
    with pytest.raises(handoff.HandoffError, match="evaluated by older code"):
        E.load_evaluation(path)
    E.save_evaluation(ev, path)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(handoff.HandoffError, match="corrupt"):
        E.load_evaluation(path)

    def rewrite(change) -> None:
        with zipfile.ZipFile(tmp_path / "src.zip", "w") as out, zipfile.ZipFile(tmp_path / "orig.zip") as src:
            for item in src.infolist():
                data = src.read(item.filename)
                if item.filename == handoff.META:
                    meta = json.loads(data)
                    change(meta)
                    data = json.dumps(meta).encode()
                out.writestr(item, data)
        path.write_bytes((tmp_path / "src.zip").read_bytes())

    (tmp_path / "orig.zip").write_bytes(good)
    rewrite(lambda m: m.update(version=99))
    with pytest.raises(handoff.HandoffError, match="format version 99"):
        E.load_evaluation(path)
    rewrite(lambda m: m["root"]["fields"].update(renamed_field=1))
    with pytest.raises(handoff.HandoffError, match="fields the code no longer has: renamed_field"):
        E.load_evaluation(path)
    rewrite(lambda m: m["root"].update({"__dataclass__": "subprocess:Popen"}))
    with pytest.raises(handoff.HandoffError, match="outside smartrouter"):
        E.load_evaluation(path)
    rewrite(lambda m: m.update(derived=["values.table"]))
    with pytest.raises(handoff.HandoffError, match="does not know how"):
        E.load_evaluation(path)


# ------------------------------------------------------------------ retention
def _run(runs: Path, run_id: str, status: str | None, started: str, heavy: int = 1000, version: str | None = None) -> Path:
    d = runs / run_id
    (d / "models" / "logistic").mkdir(parents=True)
    (d / "models" / "logistic" / "model.json").write_text("{}")
    (d / "01_extract_eda.ipynb").write_text("{}")
    (d / "gate.json").write_text("{}")
    (d / "features.parquet").write_bytes(b"f" * heavy)
    (d / E.EVALUATION_HANDOFF).write_bytes(b"h" * (heavy // 2))
    if status is not None:
        (d / "manifest.json").write_text(json.dumps({"run_id": run_id, "status": status, "started_at": started,
                                                     "model_version": version, "gate": {"decision": "promoted"}}))
    return d


def _version(registry: Path, version: str, run_id: str) -> None:
    (registry / version).mkdir(parents=True)
    (registry / version / "version.json").write_text(json.dumps({"version": version, "run_id": run_id}))


@pytest.fixture()
def world(tmp_path, monkeypatch):
    for name in DIRS:
        monkeypatch.setenv(f"SMARTROUTER_{name}_DIR", str(tmp_path / name.lower()))
    s = load_settings()
    runs, reg = s.runs_dir, s.registry_dir
    old = "2026-01-0{}T03:00:00Z"
    ids = [f"2026010{i}T030000Z" for i in range(1, 10)]
    _run(runs, ids[0], "succeeded", old.format(1), version="v1")  # rollback target
    _run(runs, ids[1], "succeeded", old.format(2), version="v2")  # serving
    _run(runs, ids[2], "succeeded", old.format(3), version="v3")  # canary
    _run(runs, ids[3], "succeeded", old.format(4), heavy=3000, version="v4")  # rejected: prunable
    _run(runs, ids[4], "failed", old.format(5), heavy=2000)  # prunable
    _run(runs, ids[5], "running", old.format(6))  # died or still going: never
    _run(runs, ids[6], None, old.format(7))  # no manifest: never
    _run(runs, ids[7], "succeeded", old.format(8))
    _run(runs, ids[8], "succeeded", old.format(9))
    (runs / "lab").mkdir()  # not a run folder
    for i, v in enumerate(("v1", "v2", "v3", "v4")):
        _version(reg, v, ids[i])
    (reg / "PROMOTED").write_text(json.dumps({"version": "v2"}))
    (reg / "history.jsonl").write_text("".join(json.dumps({"action": "promote", "version": v}) + "\n" for v in ("v1", "v2")))
    (reg / "ROLLOUT").write_text(json.dumps({"format": 1, "candidate": "v3", "champion": "v2", "status": "active"}))
    return s, ids


NOW = dt.datetime(2026, 1, 20, tzinfo=dt.timezone.utc)


def test_prune_keeps_serving_canary_rollback_running_and_the_last_n(world):
    s, ids = world
    policy = retention.Policy(keep_last=2, keep_days=None)
    before = {i: sorted(p.name for p in (s.runs_dir / i).iterdir()) for i in ids}
    dry = retention.prune(s, policy, dry_run=True, now=NOW)
    assert [r.run_id for r in dry.pruned] == [ids[3], ids[4]] and dry.bytes_freed == 3000 + 1500 + 2000 + 1000
    assert {i: sorted(p.name for p in (s.runs_dir / i).iterdir()) for i in ids} == before  # a dry run removes nothing
    lines: list[str] = []
    res = retention.prune(s, policy, now=NOW, echo=lines.append)
    assert [r.run_id for r in res.pruned] == [ids[3], ids[4]] and res.bytes_freed == dry.bytes_freed
    assert any(ids[3] in ln and "features.parquet 3.0 kB" in ln and "4.5 kB" in ln for ln in lines), lines
    keep = {r.run_id: r.keep for r in res.kept}
    assert keep[ids[0]] == ["rollback target v1"] and keep[ids[1]] == ["serving model v2"]
    assert keep[ids[2]] == ["canary v3"] and keep[ids[5]][0].startswith("running")
    assert keep[ids[6]][0].startswith("no readable manifest") and keep[ids[8]] == ["one of the last 2"]
    for i in (ids[3], ids[4]):
        left = sorted(p.name for p in (s.runs_dir / i).iterdir())
        assert left == ["01_extract_eda.ipynb", "gate.json", "manifest.json", "models", retention.PRUNED_FILE]
        marker = json.loads((s.runs_dir / i / retention.PRUNED_FILE).read_text())
        assert marker["bytes_freed"] == sum(b["bytes"] for b in marker["removed"]) > 0
    for i in (ids[0], ids[1], ids[2], ids[5], ids[6], ids[7], ids[8]):
        assert (s.runs_dir / i / "features.parquet").is_file()
    assert retention.prune(s, policy, now=NOW).bytes_freed == 0  # nothing left to do


def test_keep_days_and_a_registry_that_cannot_be_read(world):
    s, ids = world
    res = retention.prune(s, retention.Policy(keep_last=0, keep_days=15), dry_run=True, now=NOW)
    assert [r.run_id for r in res.pruned] == [ids[3]]  # the 5th started 14 days 21 hours before NOW: kept
    (s.registry_dir / "PROMOTED").write_text("{not json")
    with pytest.raises(ConfigError, match="fix it before pruning"):
        retention.prune(s, retention.Policy(keep_last=0), now=NOW)
    assert (s.runs_dir / ids[3] / "features.parquet").is_file()


def test_cli_list_prune_and_bad_input(world, capsys, tmp_path):
    s, ids = world
    assert main(["runs", "list", "--keep", "2"]) == 0
    out = capsys.readouterr().out
    assert "serving model v2" in out and "prunable (4.5 kB)" in out and "9 runs" in out
    assert main(["runs", "prune", "--keep", "2", "--keep-days", "0", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would prune {ids[3]}" in out and "would free 7.5 kB" in out and "kept 20260102T030000Z whole: serving model v2" in out
    assert (s.runs_dir / ids[3] / "features.parquet").is_file()
    assert main(["runs", "prune", "--keep", "-1"]) == 2
    assert "keep a number of runs >= 0" in capsys.readouterr().err
    bad = tmp_path / "r.toml"
    bad.write_text("[retention]\nkeep_last = 3\nkeep_days = 0\nafter_run = true\ncompact = true\nkeep_forever = 1\n")
    assert main(["runs", "list", "--config", str(bad)]) == 2
    assert "unknown key 'keep_forever'" in capsys.readouterr().err


def test_shipped_policy_and_the_after_run_hook(world, tmp_path, monkeypatch):
    s, ids = world
    shipped = retention.load_policy()
    assert shipped.keep_last >= 7 and shipped.after_run  # generous, and on (retention.toml says why)
    off = tmp_path / "off.toml"
    off.write_text("[retention]\nkeep_last = 1\nkeep_days = 0\nafter_run = false\ncompact = false\n")
    monkeypatch.setattr(retention, "RETENTION_FILE", off)
    assert retention.after_run(s, print) is None
    on = tmp_path / "on.toml"
    on.write_text("[retention]\nkeep_last = 1\nkeep_days = 0\nafter_run = true\ncompact = false\n")
    monkeypatch.setattr(retention, "RETENTION_FILE", on)
    said: list[str] = []
    res = retention.after_run(s, said.append)
    assert {r.run_id for r in res.pruned} == {ids[3], ids[4], ids[7]} and "freed" in said[0]


def _feature_run(runs: Path, run_id: str, days: int = 60, test_days: int = 7, per_day: int = 200) -> tuple[Path, pd.DataFrame]:
    """A finished run folder with a real feature table (written by features.write_table), its split and a hand-off."""
    from smartrouter import features

    d = runs / run_id
    d.mkdir(parents=True)
    end = dt.datetime(2026, 3, 1)
    created = end - pd.to_timedelta(np.arange(days * per_day) * (86400.0 / per_day), unit="s")
    test_start = end - dt.timedelta(days=test_days)
    table = pd.DataFrame({"ATTEMPT_ID": [f"A{i}" for i in range(len(created))], "CREATED_AT": created,
                          "SPLIT": np.where(created >= test_start, "test", "train"),
                          "AMOUNT": np.random.default_rng(0).random(len(created))})
    table = table.sort_values("CREATED_AT").reset_index(drop=True)
    features.write_table(table, d / "features.parquet")
    (d / "split.json").write_text(json.dumps({"test_start": test_start.isoformat(), "end": end.isoformat()}))
    (d / E.EVALUATION_HANDOFF).write_bytes(b"h" * 5000)
    (d / "manifest.json").write_text(json.dumps({"run_id": run_id, "status": "succeeded"}))
    return d, table


def test_compaction_keeps_what_later_readers_use_and_says_what_went(tmp_path):
    from smartrouter import drift, features, rule_search

    d, table = _feature_run(tmp_path, "20260301T030000Z")
    search_days = rule_search.load_config()["search"]["search_days"]
    assert search_days >= drift.load_config()["psi"]["reference_days"]  # the search window is the longer need
    record = retention.compact_run(d)
    assert not (d / E.EVALUATION_HANDOFF).exists() and (d / "manifest.json").is_file()
    kept = features.read_table(d / "features.parquet")
    start = dt.datetime(2026, 2, 22) - dt.timedelta(days=search_days)
    expect = table[table["CREATED_AT"] >= start].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, expect)  # exactly the rows from the search window on, unchanged
    # what rules propose reads is all there: the test split whole and the search_days before it
    search, held = rule_search.split_windows(kept.assign(NUM_ATTEMPTS_ORDER=1), search_days)
    full_search, full_held = rule_search.split_windows(table.assign(NUM_ATTEMPTS_ORDER=1), search_days)
    assert len(search) == len(full_search) and len(held) == len(full_held)
    saved = json.loads((d / retention.COMPACTED_FILE).read_text())
    assert saved["feature_table"]["rows_kept"] == len(expect) and saved["feature_table"]["rows_before"] == len(table)
    assert saved["removed"][0]["path"] == E.EVALUATION_HANDOFF and saved["bytes_freed"] > 5000
    assert retention.compact_run(d) is None  # once only


def test_compaction_without_a_split_names_it_and_changes_nothing(tmp_path):
    d, _ = _feature_run(tmp_path, "20260301T030000Z")
    (d / "split.json").unlink()
    before = (d / "features.parquet").read_bytes()
    with pytest.raises(ConfigError, match="split.json"):
        retention.compact_run(d)
    assert (d / "features.parquet").read_bytes() == before and (d / E.EVALUATION_HANDOFF).is_file()
    assert not (d / retention.COMPACTED_FILE).exists()


def test_the_after_run_hook_compacts_the_run_that_just_succeeded(tmp_path, monkeypatch):
    for name in DIRS:
        monkeypatch.setenv(f"SMARTROUTER_{name}_DIR", str(tmp_path / name.lower()))
    s = load_settings()
    d, _ = _feature_run(s.runs_dir, "20260301T030000Z")
    on = tmp_path / "on.toml"
    on.write_text("[retention]\nkeep_last = 5\nkeep_days = 0\nafter_run = false\ncompact = true\n")
    monkeypatch.setattr(retention, "RETENTION_FILE", on)
    said: list[str] = []
    assert retention.after_run(s, said.append, d) is None
    assert (d / retention.COMPACTED_FILE).is_file() and "compacted this run's folder" in said[0]


# ------------------------------------------------------------------ cron log noise
NOISE_SAMPLES = (
    "[IPKernelApp] WARNING | Kernel is running over TCP without encryption. All communication (including code) ...",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796236611.667495    5238 port.cc:153] oneDNN custom operations are on. You may see ...",
    "E0000 00:00:1796236625.348587    5238 node_def_util.cc:682] NodeDef mentions attribute use_unbounded_threadpool "
    "which is not in the op definition: Op<name=MapDataset; signature=input_dataset:variant> ...",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.",
    "0.00s - Debugger warning: It seems that frozen modules are being used, which may",
)
REAL_SAMPLES = (
    "E0000 00:00:1796236625.348587    5238 cuda_executor.cc:1] failed to allocate 2.0GiB: out of memory",
    "E0000 00:00:1796236625.348587    5238 node_def_util.cc:90] Invalid argument: NodeDef missing attr 'T'",
    "Traceback (most recent call last):",
    "[IPKernelApp] ERROR | Exception in message handler:",
    "MemoryError: Unable to allocate 3.1 GiB",
)


def test_noise_patterns_match_only_noise():
    assert all(kernel_log.is_noise(line) for line in NOISE_SAMPLES)
    assert not any(kernel_log.is_noise(line) for line in REAL_SAMPLES)


def _noisy_notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell('run_dir = ""\nas_of = ""\nmode = "ok"', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import os\n"
            "import tensorflow as tf  # its C++ start-up lines are the noise under test\n"
            "tf.data.Dataset.range(4).map(lambda x: x + 1).reduce(tf.constant(0, tf.int64), lambda a, b: a + b)\n"
            "os.write(2, b'REAL-STDERR-LINE: disk almost full\\n')  # a real line on the kernel's stderr\n"
            "if mode == 'raise':\n"
            "    raise ValueError('noisy stage failure')\n"),
    ]
    nb.metadata["kernelspec"] = {"name": "smartrouter", "display_name": "smartrouter", "language": "python"}
    nbformat.write(nb, path)


@pytest.mark.slow
def test_a_quick_runs_cron_log_has_no_noise_but_shows_a_real_failure(tmp_path):
    home = tmp_path / "home"
    (home / "notebooks").mkdir(parents=True)
    for stage in ("01_extract_eda", "02_features"):
        _noisy_notebook(home / "notebooks" / f"{stage}.ipynb")
    env = {k: v for k, v in os.environ.items() if k not in kernel_log.KERNEL_ENV_DEFAULTS}
    env["SMARTROUTER_HOME"] = str(home)
    for name in DIRS:
        env[f"SMARTROUTER_{name}_DIR"] = str(tmp_path / name.lower())
    exe = Path(sys.executable).parent / "smartrouter"
    log = tmp_path / "cron.log"
    with open(log, "wb") as fh:  # as cron does: `smartrouter run >> runs/cron.log 2>&1`
        p = subprocess.run([str(exe), "run", "--profiles", str(REPO_ROOT / "tests" / "notebooks" / "drill_profiles.toml"),
                            "--stages", "01,02", "--no-reports", "-p", '02_features.mode="raise"'],
                           env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text()
    assert p.returncode == 1, text
    assert "02_features: FAILED: cell" in text and "ValueError: noisy stage failure" in text
    assert text.count("REAL-STDERR-LINE: disk almost full") == 2  # one per stage: real lines pass through
    # the control: this environment's TensorFlow does print the noise, so its absence above is the filter's doing
    raw = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True, timeout=120)
    assert "oneDNN custom operations are on" in raw.stderr or "absl::InitializeLog" in raw.stderr, raw.stderr
    noisy = [ln for ln in text.splitlines() if kernel_log.is_noise(ln)]
    assert noisy == [], noisy
    for needle in ("absl::InitializeLog", "oneDNN", "without encryption", "node_def_util", "frozen modules"):
        assert needle not in text, needle
