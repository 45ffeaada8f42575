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
