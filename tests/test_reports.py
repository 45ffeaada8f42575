"""HTML reports: code hidden, plots inline, failing cell visible, run and all-runs index pages, and a
real rendering opened in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import nbformat
import pytest

from smartrouter import reports
from smartrouter.config import REPO_ROOT, load_settings
from smartrouter.notebook_tools import write_json_atomic

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
DRILL = REPO_ROOT / "tests" / "notebooks" / "drill.ipynb"
# An element (not a CSS rule) that shows code: an editor area, an input prompt, highlighted source.
CODE_ELEMENT = re.compile(r'class="[^"]*(jp-InputArea-editor|jp-InputPrompt|jp-CodeMirrorEditor|highlight hl-)')
# 1x1 PNG
PNG = base64.b64encode(
    bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                  "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082")).decode()


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in ("RUNS", "REPORTS", "REGISTRY", "STATE", "LOCAL"):
        monkeypatch.setenv(f"SMARTROUTER_{name}_DIR", str(tmp_path / name.lower()))
    return load_settings()


def executed_notebook(path: Path, fail: bool) -> Path:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "smartrouter", "display_name": "s"},
                                            "papermill": {"parameters": {"run_dir": "/r", "lookback_days": 14}}})
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Title\n\nPurpose."),
        nbformat.v4.new_code_cell("secret_code_line = 1", outputs=[
            nbformat.v4.new_output("display_data", {"image/png": PNG, "text/plain": "<Figure>"}),
            nbformat.v4.new_output("stream", name="stderr", text="noisy warning"),
            nbformat.v4.new_output("display_data", {"application/scrapbook.scrap.json+json":
                                                    {"name": "x", "data": 1, "encoder": "json", "version": 1}}),
        ]),
    ]
    if fail:
        nb.cells.append(nbformat.v4.new_code_cell("failing_code_line()", outputs=[
            nbformat.v4.new_output("error", ename="ValueError", evalue="boom happened", traceback=["ValueError: boom happened"])]))
    nbformat.write(nb, str(path))
    return path


def test_render_notebook_hides_code_keeps_plots(tmp_path: Path) -> None:
    html = reports.render_notebook(executed_notebook(tmp_path / "ok.ipynb", fail=False), tmp_path / "ok.html").read_text()
    assert "secret_code_line" not in html
    assert f"data:image/png;base64,{PNG}" in html
    assert "noisy warning" not in html and "application/scrapbook" not in html
    assert "lookback_days" in html  # parameters shown as a table
    assert not CODE_ELEMENT.search(html)
    assert oct((tmp_path / "ok.html").stat().st_mode & 0o777) == "0o644"


def test_render_failed_notebook_shows_failing_cell(tmp_path: Path) -> None:
    nb = executed_notebook(tmp_path / "bad.ipynb", fail=True)
    html = reports.render_notebook(nb, tmp_path / "bad.html", error="cell 3 raised ValueError: boom happened").read_text()
    assert "secret_code_line" not in html  # ordinary cells stay hidden
    assert "failing_code_line" in html  # the failing cell's code is visible
    assert CODE_ELEMENT.search(html)  # (so the pattern used for "no code" does find code)
    assert "boom happened" in html and "This stage failed" in html


def manifest(run_id: str, status: str, approval: float | None, **extra: Any) -> dict[str, Any]:
    m = {"run_id": run_id, "status": status, "as_of": "2026-11-01", "started_at": f"{run_id}", "duration_s": 12.5,
         "profile": "quick", "stages": [{"name": "01_extract_eda", "status": status, "duration_s": 3.2,
                                         "report": f"/x/{run_id}/01_extract_eda.html", "error": "<b>bad</b>" if status == "failed" else None}],
         "metrics": {"01_extract_eda": {"approval_rate": approval, "attempts": 1000, "fp": {"hash": "h"}}} if approval else {},
         "data": {"window": {"start": "2026-10-18", "end_exclusive": "2026-11-01"}, "fingerprint": {"hash": "abcd"}},
         "code": {"commit": "0123456789abcdef", "dirty": True}, "parameters": {"01_extract_eda": {"lookback_days": 14}},
         "packages": {"pandas": "2.3.3"}, "model_version": None, "gate": None}
    m.update(extra)
    return m


def test_run_index_and_all_runs_index(settings) -> None:
    runs = [manifest("20261101T020000Z", "succeeded", 0.80),
            manifest("20261102T020000Z", "failed", 0.78, failed_stage="01_extract_eda", error="cell 2 raised <X>"),
            manifest("20261103T020000Z", "succeeded", 0.81, model_version="v2",
                     gate={"decision": "promoted", "model_version": "v2", "reasons": ["beats rules by 2.1 pp"]})]
    for m in runs:
        write_json_atomic(settings.runs_dir / m["run_id"] / "manifest.json", m)
        reports.render_run_index(m, settings)
    (settings.runs_dir / "lab").mkdir()  # the interactive folder is not a run
    page = (settings.reports_dir / "20261103T020000Z" / "index.html").read_text()
    assert "promoted" in page and "v2" in page and "beats rules by 2.1 pp" in page
    assert 'href="01_extract_eda.html"' in page and "abcd" in page and "uncommitted" in page
    failed = (settings.reports_dir / "20261102T020000Z" / "index.html").read_text()
    assert "Failed at 01_extract_eda" in failed and "cell 2 raised &lt;X&gt;" in failed and "<b>bad</b>" not in failed
    index = reports.render_all_runs_index(settings).read_text()
    rows = re.findall(r'<a href="(\d{8}T\d{6}Z)/index.html">', index)
    assert rows == ["20261103T020000Z", "20261102T020000Z", "20261101T020000Z"]  # newest first, lab skipped
    # fixed columns, whatever the runs recorded: no metric picked by its name
    assert "approval_rate" not in index and ">promoted v2<" in index and "run failed at 01_extract_eda" in index
    assert re.search(r"<td>v2</td>", index)  # the version serving after the promotion
    # no lift in any run: no trend (a dot per run is not a trend)
    assert "data:image/png" not in index and "<h2>Trend</h2>" not in index
    # the raw numbers are folded away on the run page
    assert re.search(r"<details><summary>Every number the stages recorded \(2, raw\)</summary>", page)


def _lifted(settings, run_id: str, lift: float, serving: float | None) -> dict[str, Any]:
    """A run folder with gate.json and evaluation.json holding a lift over the rules (and over a champion)."""
    m = manifest(run_id, "succeeded", 0.8, model_version="v1", gate={"decision": "promoted", "model_version": "v1"})
    run = settings.runs_dir / run_id
    write_json_atomic(run / "manifest.json", m)
    gates = [{"gate": "regression", "passed": True, "reason": "r", "details":
              {"value_lift": {"lift": serving, "ci_low": serving - 0.01, "ci_high": serving + 0.01, "estimator": "DR"}}
              if serving is not None else {}}]
    write_json_atomic(run / "gate.json", {"decision": "promoted", "model_version": "v1", "champion_family": "xgb",
                                          "champion_compared": "v0" if serving is not None else None, "gates": gates})
    write_json_atomic(run / "evaluation.json", {"policy_value": {"table": [], "lift_vs_rules": [
        {"policy": "model:xgb", "lift": lift, "ci_low": lift - 0.012, "ci_high": lift + 0.013}]}})
    return m


def test_runs_index_lifts_and_trend_from_two_runs(settings) -> None:
    _lifted(settings, "20261101T020000Z", 0.0734, None)
    one = reports.render_all_runs_index(settings).read_text()
    assert "+7.34 pp [+6.14, +8.64]" in one and "<h2>Trend</h2>" not in one  # one run: nothing to trend
    _lifted(settings, "20261102T020000Z", 0.0701, -0.002)
    two = reports.render_all_runs_index(settings).read_text()
    assert "-0.20 pp [-1.20, +0.80]" in two and "+7.01 pp [+5.81, +8.31]" in two
    png = re.search(r'src="data:image/png;base64,([^"]+)"', two)
    assert png and base64.b64decode(png.group(1)).startswith(b"\x89PNG")


def test_stage_page_links_back_to_the_verdict(tmp_path: Path) -> None:
    html = reports.render_notebook(executed_notebook(tmp_path / "ok.ipynb", fail=False), tmp_path / "ok.html").read_text()
    assert html.count('href="index.html#verdict"') == 2  # at the top and at the bottom


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_real_report_in_headless_chromium(settings, tmp_path: Path) -> None:
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).exists()):
        pytest.fail(f"{CHROMIUM} is missing; install it with tests/ensure_chromium.sh (make test does)")
    from smartrouter.pipeline import Stage, run_pipeline

    result = run_pipeline(settings, profile="quick", stages=[Stage("01_extract_eda", DRILL)], echo=None,
                          profiles_file=DRILL.with_name("drill_profiles.toml"))
    assert result.ok, result.error
    pages = [settings.reports_dir / result.run_id / "01_extract_eda.html",
             settings.reports_dir / result.run_id / "index.html", settings.reports_dir / "index.html"]
    for page in pages:
        dom = _chromium(["--dump-dom", page.as_uri()], tmp_path)
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert "</html>" in dom.stdout.lower() or "</body>" in dom.stdout.lower(), f"{page.name} did not load"
        assert "Uncaught" not in dom.stderr, dom.stderr[-2000:]
        images = re.findall(r'<img[^>]+src="data:image/png;base64,([^"]+)"', dom.stdout)
        if page.name != "index.html":
            assert images and all(len(base64.b64decode(i)) > 1000 for i in images), f"{page.name}: no plot rendered"
        elif page.parent == settings.reports_dir:
            assert not images, "one run has no trend to plot"
        # no code: no editor areas or input prompts, and none of the drill's source lines
        assert not CODE_ELEMENT.search(dom.stdout), f"{page.name}: a code cell is visible"
        assert "stage_context(" not in dom.stdout and "plt.subplots" not in dom.stdout
    shot = tmp_path / "shot.png"
    res = _chromium([f"--screenshot={shot}", "--window-size=1200,1600", pages[0].as_uri()], tmp_path)
    assert res.returncode == 0 and shot.exists() and shot.stat().st_size > 5000
    assert json.loads((result.run_dir / "manifest.json").read_text())["status"] == "succeeded"


# ------------------------------------------------------------------ notebook sentences computed from the numbers
def _split_table(shift: float, n: int = 4000, seed: int = 0) -> Any:
    """Attempts on two processors over train/test; WORLDPAY's test approval moves by ``shift``."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    split = np.where(np.arange(n) < n // 2, "train", "test")
    proc = rng.choice(["WORLDPAY", "MIT"], n)
    p = np.where((proc == "WORLDPAY") & (split == "test"), 0.8 + shift, 0.8)
    return pd.DataFrame({"SPLIT": split, "PROCESSOR": proc, "APPROVED": (rng.random(n) < p).astype(int)})


def test_split_sentence_names_the_move_and_flags_only_a_real_one() -> None:
    from smartrouter.notebook_tools import split_sentence

    table = _split_table(-0.10)
    text, flagged = split_sentence(table)
    wp = table[table["PROCESSOR"] == "WORLDPAY"].groupby("SPLIT")["APPROVED"].mean()
    assert flagged and "The largest move is WORLDPAY" in text
    assert f"{100 * wp['train']:.1f} % in training, {100 * wp['test']:.1f} % in the test window" in text
    # the same data without the move: nothing flagged (the 3 pp / z > 3 rule, not a fixed sentence)
    text, flagged = split_sentence(_split_table(0.0))
    assert not flagged and "test window is not like" not in text


def test_signals_sentence_names_the_top_feature_and_flags_an_identifier() -> None:
    import pandas as pd

    from smartrouter.notebook_tools import signals_sentence

    q = pd.DataFrame({"feature": ["CARD_BIN", "AMOUNT", "NUM_ATTEMPTS_ORDER"], "group": ["card", "transaction", "retry"],
                      "kind": ["categorical", "numeric", "numeric"], "n_unique": [1751, 900, 3],
                      "corr_approved": [0.37, -0.05, -0.21]}).set_index("feature")
    text, flagged = signals_sentence(q, top=2)
    assert text.startswith("The 2 strongest associations with approval in the training split: CARD_BIN (card, +0.37), "
                           "NUM_ATTEMPTS_ORDER (retry, -0.21).")
    assert flagged and "CARD_BIN is an identifier (1,751 values)" in text
    text, flagged = signals_sentence(q.drop(index="CARD_BIN"), top=2)
    assert not flagged and "identifier" not in text


def test_policy_sentence_reads_the_dr_table() -> None:
    import pandas as pd

    from smartrouter.notebook_tools import policy_sentence

    summary = pd.DataFrame({"policy": ["static_rules", "model:xgb"], "estimate": [0.7961, 0.8678],
                            "ci_low": [0.7906, 0.8386], "ci_high": [0.8019, 0.8953]})
    lift = pd.DataFrame({"policy": ["model:xgb"], "lift": [0.0718], "ci_low": [0.0448], "ci_high": [0.0988]})
    assert policy_sentence(summary, lift, "model:xgb") == (
        "model:xgb approves an estimated 86.78 % [83.86, 89.53] of first attempts against 79.61 % for the static rules: "
        "+7.18 pp [+4.48, +9.88], above the rules with 95 % confidence.")
    lift.loc[0, "ci_low"] = -0.001
    assert "not distinguishable from the rules" in policy_sentence(summary, lift, "model:xgb")
