"""Helpers the stage notebooks call: where this run's files go, how headline numbers are recorded,
and one plot style.

A notebook opens with ``ctx = stage_context(run_dir, "01_extract_eda")``; every headline number
goes through ``ctx.record(name, value)``, which both glues it into the executed notebook with
scrapbook (read back later without re-running) and merges it into ``run_dir/metrics.json``
(``{"01_extract_eda": {...}, "02_features": {...}}``), which the runner copies into the manifest.

Run as a module to strip outputs from notebooks after editing them in JupyterLab:
``python -m smartrouter.notebook_tools strip notebooks/*.ipynb``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smartrouter import atomic
from smartrouter.config import Settings, load_settings
from smartrouter.errors import ConfigError

METRICS_FILE = "metrics.json"
# Folder a notebook uses when opened in JupyterLab with its default (empty) run_dir: the stages
# still find each other's files there. Its name is not a run_id, so run listings skip it.
LAB_RUN_DIR = "lab"
# Set by the runner for each stage, so record() knows the stage even without a context.
STAGE_ENV = "SMARTROUTER_STAGE"

_current: StageContext | None = None


def plain(value: Any) -> Any:
    """Convert numpy/pandas scalars, arrays, frames and series into JSON-safe Python values.

    scrapbook 0.5.0 cannot encode numpy scalars or frames, and JSON has no NaN: NaN/inf become None.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    # numpy / pandas, imported lazily so this module stays cheap to import
    import numpy as np
    import pandas as pd

    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return plain(float(value))
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, pd.Timestamp):
        return None if pd.isna(value) else value.isoformat()
    if isinstance(value, pd.DataFrame):
        return [plain(r) for r in value.to_dict(orient="records")]
    if isinstance(value, pd.Series):
        return {str(k): plain(v) for k, v in value.items()}
    if value is pd.NaT:
        return None
    raise TypeError(f"cannot record a {type(value).__name__}; record a number, string, list or dict")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` atomically (readers never see half a file)."""
    atomic.write_json(path, obj, indent=2)


def read_json(path: Path, default: Any = None) -> Any:
    """Read a JSON file, or return ``default`` when it does not exist."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default


@dataclass
class StageContext:
    """Where one stage of one run reads and writes."""

    run_dir: Path
    stage: str
    settings: Settings

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_FILE

    def path(self, name: str) -> Path:
        """A file inside the run folder (the only place a stage writes)."""
        return self.run_dir / name

    def metrics(self, stage: str | None = None) -> dict[str, Any]:
        """Metrics recorded so far in this run: all stages, or one stage's."""
        allm = read_json(self.metrics_path, {}) or {}
        return allm if stage is None else dict(allm.get(stage, {}))

    def record(self, name: str, value: Any, glue: bool = True) -> Any:
        """Record a headline number: scrapbook glue in the notebook + run_dir/metrics.json."""
        value = plain(value)
        allm = read_json(self.metrics_path, {}) or {}
        allm.setdefault(self.stage, {})[name] = value
        write_json_atomic(self.metrics_path, allm)
        if glue:
            _glue(name, value)
        return value

    def write_json(self, name: str, obj: Any) -> Path:
        """Write a JSON artefact into the run folder atomically."""
        path = self.path(name)
        write_json_atomic(path, plain(obj))
        return path

    def read_json(self, name: str, default: Any = None) -> Any:
        """Read a JSON artefact an earlier stage wrote into the run folder."""
        return read_json(self.path(name), default)


# scrapbook's on-notebook format (scrapbook.schemas, version 1). We write it directly because
# `import scrapbook` pulls papermill -> nbformat -> jsonschema and costs 5-20 s per kernel; the
# tests read our scraps back with scrapbook.read_notebook, so the format cannot drift unnoticed.
_SCRAP_MIME = "application/scrapbook.scrap.{encoder}+json"
_SCRAP_VERSION = 1


def _glue(name: str, value: Any) -> None:
    """scrapbook.glue(name, value) for a plain value, without importing scrapbook."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover
        return
    if get_ipython() is None:  # plain Python or a test: no notebook to glue into
        return
    if value is None:  # scrapbook's schema has no null: a missing number stays in metrics.json only
        return
    # scrapbook's json encoder json.loads() any str it is given, so strings use "text".
    encoder = "text" if isinstance(value, str) else "json"
    payload = {"name": name, "data": value, "encoder": encoder, "version": _SCRAP_VERSION}
    display({_SCRAP_MIME.format(encoder=encoder): payload},
            metadata={"scrapbook": {"name": name, "data": True, "display": False}}, raw=True)


def stage_context(run_dir: str | os.PathLike[str] | None, stage: str | None = None,
                  settings: Settings | None = None) -> StageContext:
    """Open the run folder for ``stage``; an empty run_dir means the interactive folder runs/lab."""
    global _current
    settings = settings or load_settings()
    stage = stage or os.environ.get(STAGE_ENV)
    if not stage:
        raise ConfigError("stage_context needs a stage name; pass it, e.g. stage_context(run_dir, '01_extract_eda')")
    path = Path(run_dir) if run_dir else settings.runs_dir / LAB_RUN_DIR
    path = path.expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    _current = StageContext(run_dir=path, stage=stage, settings=settings)
    return _current


def record(name: str, value: Any) -> Any:
    """Record a headline number in the current stage (see StageContext.record)."""
    if _current is None:
        raise ConfigError("record() called before stage_context(); call ctx = stage_context(run_dir, stage) first")
    return _current.record(name, value)


def setup_plots() -> None:
    """One look for every notebook plot: seaborn theme, PNG output sized for the HTML reports."""
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", palette="deep")
    mpl.rcParams.update({"figure.figsize": (9, 3.8), "figure.dpi": 90, "axes.titleweight": "bold",
                         "axes.titlesize": 12})
    try:
        from IPython import get_ipython

        ip = get_ipython()
        if ip is not None:
            # PNG (not SVG) keeps the reports small and renders the same everywhere.
            ip.run_line_magic("matplotlib", "inline")
            from matplotlib_inline.backend_inline import set_matplotlib_formats

            set_matplotlib_formats("png")
    except Exception:  # pragma: no cover - plotting still works with the default backend
        pass


# ------------------------------------------------------------------ sentences computed from the numbers
# A notebook's fixed prose may not assert anything about the numbers: each helper below reads the
# numbers and returns the sentence (and whether it is a warning), and ``say`` shows it -- a failed
# check as a red-bordered flag a reader cannot miss in the HTML report.
SPLIT_SHIFT_PP = 3.0  # a processor's approval moving more than this between splits is worth a flag
IDENTIFIER_MIN_VALUES = 500  # a categorical with this many distinct values is an identifier, not a signal
# feature_quality's association of a categorical is in-sample: its categories' own approval rates


def say(text: str, flag: bool = False) -> None:
    """Show one sentence under a table or plot; ``flag`` draws it in a red warning box (a check failed, or the
    numbers contradict what the section expects)."""
    try:
        from IPython.display import HTML, Markdown, display
    except ImportError:  # pragma: no cover
        print(("WARNING: " if flag else "") + text)
        return
    if flag:
        import html

        display(HTML('<div style="border:2px solid #c62828;border-radius:.3rem;padding:.5rem .8rem;margin:.4rem 0">'
                     f"<b>&#9888; Warning:</b> {html.escape(text)}</div>"))
    else:
        display(Markdown(text))


def split_sentence(table: Any, max_shift_pp: float = SPLIT_SHIFT_PP) -> tuple[str, bool]:
    """Approval per time split overall and the processor whose approval moves most between train and test."""
    rates = table.groupby("SPLIT")["APPROVED"].mean()
    by = table.pivot_table(index="PROCESSOR", columns="SPLIT", values="APPROVED", aggfunc="mean")
    n = table.pivot_table(index="PROCESSOR", columns="SPLIT", values="APPROVED", aggfunc="size")
    text = "Approval by split: " + ", ".join(f"{s} {100 * rates[s]:.1f} %" for s in ("train", "valid", "test") if s in rates)
    flagged = False
    if {"train", "test"} <= set(by.columns):
        shift = (by["test"] - by["train"]).dropna()
        if len(shift):
            p = shift.abs().idxmax()
            text += (f". The largest move is {p}: {100 * by.loc[p, 'train']:.1f} % in training, "
                     f"{100 * by.loc[p, 'test']:.1f} % in the test window ({100 * shift[p]:+.1f} pp)")
            # a move counts when it is large AND beyond the binomial noise of the two windows (|z| > 3)
            pool = (by.loc[p, "train"] * n.loc[p, "train"] + by.loc[p, "test"] * n.loc[p, "test"]) / (n.loc[p, "train"] + n.loc[p, "test"])
            se = math.sqrt(max(pool * (1 - pool), 1e-12) * (1 / n.loc[p, "train"] + 1 / n.loc[p, "test"]))
            z = float(shift[p]) / se
            text += f", z = {z:+.1f} against sampling noise"
            flagged = bool(abs(100 * shift[p]) > max_shift_pp and abs(z) > 3.0)
            if flagged:
                text += (f", more than {max_shift_pp:g} pp: the test window is not like the training window for {p}, "
                         "so its head is judged on a world it did not train on")
    missing = list(by.index[by["train"].isna()]) if "train" in by.columns else []
    if missing:
        text += f". No training rows for {', '.join(missing)} (joined late: served with a shrunk prior)"
    return text + ".", flagged


def signals_sentence(quality: Any, top: int = 5, identifier_min_values: int = IDENTIFIER_MIN_VALUES) -> tuple[str, bool]:
    """The features most associated with approval, by group, and whether an identifier tops the list."""
    q = quality.dropna(subset=["corr_approved"])
    order = q["corr_approved"].abs().sort_values(ascending=False).index[:top]
    names = ", ".join(f"{f} ({q.loc[f, 'group']}, {q.loc[f, 'corr_approved']:+.2f})" for f in order)
    text = f"The {len(order)} strongest associations with approval in the training split: {names}."
    ids = [f for f in order if q.loc[f, "kind"] != "numeric" and q.loc[f, "n_unique"] >= identifier_min_values]
    if ids:
        text += (f" {', '.join(ids)} {'is' if len(ids) == 1 else 'are'} an identifier ("
                 + ", ".join(f"{int(q.loc[f, 'n_unique']):,} values" for f in ids)
                 + "): a category's association here is its own in-sample approval rate, which overstates what the "
                 "models can learn from it on new payments; the BIN x processor history features carry that signal "
                 "point in time.")
    return text, bool(ids)


def agreement_sentence(importance: dict[str, Any], top: int = 12) -> str:
    """The features every family ranks in its top ``top`` (the stable signals), from the families' importances."""
    tops = {fam: set(list(s.index)[:top]) for fam, s in importance.items() if len(s)}
    if not tops:
        return "No family reported feature importances."

    def base(name: str) -> str:  # XGBoost's SELF: columns are the scored processor's own features
        return name.split(":", 1)[1] if name.startswith("SELF:") else name

    common = set.intersection(*({base(n) for n in t} for t in tops.values()))
    if len(tops) == 1:
        fam = next(iter(tops))
        return f"Only {fam} was trained; its top features: {', '.join(list(importance[fam].index)[:5])}."
    if not common:
        return f"The {len(tops)} families share none of their top {top} features: they read the payments differently."
    return (f"Every family ({', '.join(tops)}) ranks these among its top {top}: {', '.join(sorted(common))}; "
            "what they agree on is the signal least likely to be an artefact of one model.")


def heads_sentence(heads: Any, min_auc: float) -> tuple[str, bool]:
    """The weakest head by AUC and the worst calibration excess over its noise floor, across families."""
    h = heads[(heads["n"] > 0) & (~heads["uncertain"].astype(bool))] if "uncertain" in heads else heads[heads["n"] > 0]
    h = h[h["processor"] != "ALL (logged)"] if "processor" in h else h
    if not len(h):
        return "No head had test rows to judge.", False
    low = h.loc[h["auc"].idxmin()]
    text = f"Weakest head: {low['family']}/{low['processor']} with AUC {low['auc']:.3f} on {int(low['n']):,} attempts"
    if "ece_floor" in h:
        excess = (h["ece"] - h["ece_floor"])
        w = h.loc[excess.idxmax()]
        text += (f"; largest calibration error above its noise floor: {w['family']}/{w['processor']} "
                 f"(ECE {w['ece']:.3f} vs floor {w['ece_floor']:.3f})")
    flagged = bool(low["auc"] < min_auc)
    if flagged:
        text += f". That is below the gate's {min_auc:.2f}: the gate will reject this family unless that head is exempt"
    return text + ".", flagged


def policy_sentence(summary: Any, lift: Any, policy: str) -> str:
    """One policy's DR value and its paired lift over the static rules, in words."""
    s = summary.set_index("policy")
    row, rules = s.loc[policy], s.loc["static_rules"]
    lr = lift.set_index("policy").loc[policy]
    better = "above" if lr["ci_low"] > 0 else ("below" if lr["ci_high"] < 0 else "not distinguishable from")
    return (f"{policy} approves an estimated {100 * row['estimate']:.2f} % [{100 * row['ci_low']:.2f}, "
            f"{100 * row['ci_high']:.2f}] of first attempts against {100 * rules['estimate']:.2f} % for the static rules: "
            f"{100 * lr['lift']:+.2f} pp [{100 * lr['ci_low']:+.2f}, {100 * lr['ci_high']:+.2f}], {better} the rules "
            "with 95 % confidence.")


def slice_sentence(slices: Any) -> str:
    """The non-small slice whose mean prediction is furthest from its approval rate, and the lowest AUC."""
    sl = slices[~slices["small"].astype(bool)] if "small" in slices else slices
    if not len(sl):
        return "Every slice is too small to read."
    gap = (sl["mean_p"] - sl["rate"]).abs()
    w = sl.loc[gap.idxmax()]
    text = (f"The largest gap between prediction and outcome is {w['slice']}={w['value']}: predicted {100 * w['mean_p']:.1f} %, "
            f"approved {100 * w['rate']:.1f} % ({int(w['n']):,} attempts)")
    if "auc" in sl and sl["auc"].notna().any():
        a = sl.loc[sl["auc"].idxmin()]
        text += f"; the lowest AUC is {a['slice']}={a['value']} ({a['auc']:.3f})"
    return text + "."


def strip_notebook(path: str | os.PathLike[str]) -> bool:
    """Remove outputs, execution counts and widget state from a notebook; True when it changed."""
    import nbformat

    path = Path(path)
    before = path.read_text()
    nb = nbformat.reads(before, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        for key in ("execution", "papermill", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    for key in ("widgets", "papermill"):
        nb.metadata.pop(key, None)
    after = nbformat.writes(nb) + "\n"
    if after != before:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(after)
        os.replace(tmp, path)
        return True
    return False


def _main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "strip":
        print("usage: python -m smartrouter.notebook_tools strip NOTEBOOK.ipynb ...", file=sys.stderr)
        return 2
    for name in argv[1:]:
        if strip_notebook(name):
            print(f"stripped {name}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
