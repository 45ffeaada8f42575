"""HTML reports for people who never open Python.

- ``reports/<run_id>/<stage>.html``: an executed stage notebook with the code hidden, plots inline
  (PNG) and the parameters as a table; in a failed stage the failing cell's code and traceback
  stay visible, and a banner says what went wrong (a timeout leaves no traceback in the notebook).
- ``reports/<run_id>/index.html``: the run: status, dates, data window, code version, stages
  with durations and links, headline metrics, model version and gate decision.
- ``reports/index.html``: every run with status, date, model version, gate decision, headline
  metrics, and a trend plot of those metrics across runs; a link to ``reports/live/index.html``
  (``smartrouter.live_report``) when the live loop has written it.

Plain HTML with a little CSS; no JavaScript.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from smartrouter import atomic
from smartrouter.config import Settings, load_settings

REPORT_INDEX = "index.html"
LIVE_REPORT = "live/index.html"  # written by smartrouter.live_report
# Metric names that make the best headline columns, in order of preference (substring match).
HEADLINE_HINTS: tuple[str, ...] = ("approval", "uplift", "gain", "auc", "logloss", "brier", "attempts", "rows")
MAX_TABLE_METRICS = 4
MAX_TREND_PANELS = 12

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .92rem; }
th, td { border: 1px solid #ddd; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.status { font-weight: bold; padding: .1rem .5rem; border-radius: .3rem; color: white; }
.succeeded { background: #2e7d32; } .failed { background: #c62828; } .running { background: #f9a825; }
.skipped, .pending { background: #9e9e9e; }
.muted { color: #666; font-size: .9rem; } .error { color: #c62828; }
img.trend { max-width: 100%; border: 1px solid #eee; }
details { margin: .5rem 0; } code { background: #f5f5f5; padding: 0 .2rem; }
"""


def _write_atomic(path: Path, text: str) -> Path:
    return atomic.write_text(path, text)


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 1 or value == 0:
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _dur(seconds: Any) -> str:
    return "–" if seconds is None else f"{float(seconds):,.0f}"


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def _status(status: Any) -> str:
    s = _e(status or "unknown")
    return f'<span class="status {s}">{s}</span>'


# ------------------------------------------------------------------ one executed notebook
def _has_error(cell: Any) -> bool:
    return any(o.get("output_type") == "error" for o in cell.get("outputs", []))


def _prepare(nb: Any, error: str | None) -> Any:
    """Hide code (except failing cells), drop invisible scrapbook payloads and stderr noise, add a parameters table."""
    import nbformat

    params = (nb.metadata.get("papermill") or {}).get("parameters") or {}
    cells = []
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags or "parameters" in tags:
            continue  # shown as a table below instead of code
        if cell.cell_type == "code":
            failing = _has_error(cell)
            cell.outputs = [
                o for o in cell.outputs
                if not (o.get("output_type") in ("display_data", "execute_result")
                        and o.get("data") and all(k.startswith("application/scrapbook") for k in o["data"]))
                and not (o.get("output_type") == "stream" and o.get("name") == "stderr" and not failing)
            ]
            # TagRemovePreprocessor removes the input of cells tagged remove_input.
            if not failing:
                cell.metadata.setdefault("tags", [])
                if "remove_input" not in cell.metadata["tags"]:
                    cell.metadata["tags"].append("remove_input")
            if not failing and not cell.outputs:
                continue  # nothing left to show
        cells.append(cell)
    extra = []
    if error:
        extra.append(nbformat.v4.new_markdown_cell(
            f'<div class="error" style="border:2px solid #c62828;padding:.6rem;border-radius:.3rem">'
            f"<b>This stage failed:</b> {_e(error)}</div>"))
    if params:
        rows = "".join(f"<tr><td><code>{_e(k)}</code></td><td>{_e(v)}</td></tr>" for k, v in params.items())
        extra.append(nbformat.v4.new_markdown_cell(
            f"<details><summary>Parameters of this run</summary><table><tr><th>parameter</th><th>value</th></tr>"
            f"{rows}</table></details>"))
    # Title cell first, then the banner and parameters.
    nb.cells = cells[:1] + extra + cells[1:]
    return nb


def render_notebook(notebook: Path, html_path: Path, title: str | None = None, error: str | None = None) -> Path:
    """Render an executed notebook to HTML with code hidden and plots inline; returns the HTML path."""
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor
    from traitlets.config import Config

    nb = nbformat.read(str(notebook), as_version=4)
    nb = _prepare(nb, error)
    cfg = Config()
    cfg.TagRemovePreprocessor.remove_input_tags = {"remove_input"}
    cfg.TagRemovePreprocessor.enabled = True
    cfg.HTMLExporter.exclude_input_prompt = True
    cfg.HTMLExporter.exclude_output_prompt = True
    exporter = HTMLExporter(config=cfg, template_name="lab")
    exporter.register_preprocessor(TagRemovePreprocessor(config=cfg), enabled=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title or notebook.stem}})
    # A way back to the run page for readers who arrived from a link.
    back = ('<p style="margin:1rem 2rem" class="muted"><a href="index.html">&larr; run overview</a> · '
            '<a href="../index.html">all runs</a></p>')
    body = body.replace("<body", "<body data-smartrouter-report=\"stage\"", 1)
    body = body.replace("</main>", f"{back}</main>", 1) if "</main>" in body else body.replace("</body>", f"{back}</body>", 1)
    return _write_atomic(html_path, body)


# ------------------------------------------------------------------ one run
def _scalar_metrics(metrics: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    out = []
    for stage, values in (metrics or {}).items():
        if isinstance(values, Mapping):
            for name, v in values.items():
                if isinstance(v, (int, float, str, bool)) or v is None:
                    out.append((stage, name, v))
    return out


def render_run_index(manifest: Mapping[str, Any], settings: Settings | None = None) -> Path:
    """Write reports/<run_id>/index.html for one run; returns its path."""
    settings = settings or load_settings()
    run_id = manifest["run_id"]
    out_dir = settings.reports_dir / run_id
    gate = manifest.get("gate") or {}
    data = manifest.get("data") or {}
    window = data.get("window") or {}
    fp = data.get("fingerprint")
    code = manifest.get("code") or {}
    parts = [
        f"<p class=\"muted\"><a href=\"../index.html\">&larr; all runs</a></p>",
        f"<h1>Run {_e(run_id)} {_status(manifest.get('status'))}</h1>",
        "<table>",
        f"<tr><th>started</th><td>{_e(manifest.get('started_at'))}</td></tr>",
        f"<tr><th>ended</th><td>{_e(manifest.get('ended_at'))}</td></tr>",
        f"<tr><th>duration</th><td>{_e(_dur(manifest.get('duration_s')))} s</td></tr>",
        f"<tr><th>profile</th><td>{_e(manifest.get('profile'))}</td></tr>",
        f"<tr><th>data as of</th><td>{_e(manifest.get('as_of'))} (window {_e(window.get('start'))} to "
        f"{_e(window.get('end_exclusive'))}, exclusive)</td></tr>",
        f"<tr><th>data fingerprint</th><td><code>{_e(fp.get('hash') if isinstance(fp, Mapping) else fp)}</code></td></tr>",
        f"<tr><th>code version</th><td><code>{_e((code.get('commit') or 'unknown')[:12])}</code>"
        f"{' (uncommitted changes)' if code.get('dirty') else ''}</td></tr>",
        f"<tr><th>model produced</th><td>{_e(manifest.get('model_version') or 'none')}</td></tr>",
        f"<tr><th>gate decision</th><td>{_e(gate.get('decision') or 'not reached')}</td></tr>",
        "</table>",
    ]
    if manifest.get("status") == "failed":
        parts.append(f"<p class=\"error\"><b>Failed at {_e(manifest.get('failed_stage'))}:</b> "
                     f"{_e(manifest.get('error'))}. Nothing from this run was promoted.</p>")
    if gate.get("reasons"):
        parts.append("<h2>Why the gate decided so</h2><ul>"
                     + "".join(f"<li>{_e(r)}</li>" for r in gate["reasons"]) + "</ul>")
    parts.append("<h2>Stages</h2><table><tr><th>stage</th><th>status</th><th>started</th>"
                 "<th>duration (s)</th><th>report</th><th>error</th></tr>")
    for st in manifest.get("stages") or []:
        report = st.get("report")
        link = f'<a href="{_e(Path(report).name)}">{_e(st["name"])}.html</a>' if report else "–"
        parts.append(f"<tr><td>{_e(st['name'])}</td><td>{_status(st.get('status'))}</td>"
                     f"<td>{_e(st.get('started_at') or '–')}</td>"
                     f"<td class=\"num\">{_e(_fmt(st.get('duration_s')) if st.get('duration_s') is not None else '–')}</td>"
                     f"<td>{link}</td><td class=\"error\">{_e(st.get('error') or '')}</td></tr>")
    parts.append("</table>")
    scal = _scalar_metrics(manifest.get("metrics") or {})
    if scal:
        parts.append("<h2>Headline numbers</h2><table><tr><th>stage</th><th>metric</th><th>value</th></tr>")
        parts.extend(f"<tr><td>{_e(s)}</td><td>{_e(n)}</td><td class=\"num\">{_e(_fmt(v))}</td></tr>"
                     for s, n, v in scal)
        parts.append("</table>")
    params = manifest.get("parameters") or {}
    if params:
        parts.append("<details><summary>All parameters</summary><table><tr><th>stage</th><th>parameter</th>"
                     "<th>value</th></tr>")
        for stage, values in params.items():
            for k, v in (values or {}).items():
                parts.append(f"<tr><td>{_e(stage)}</td><td><code>{_e(k)}</code></td><td>{_e(v)}</td></tr>")
        parts.append("</table></details>")
    pk = manifest.get("packages") or {}
    if pk:
        parts.append("<details><summary>Package versions</summary><table>"
                     + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in pk.items())
                     + "</table></details>")
    return _write_atomic(out_dir / REPORT_INDEX, _page(f"Run {run_id}", "\n".join(parts)))


# ------------------------------------------------------------------ all runs
def headline_metrics(manifests: Sequence[Mapping[str, Any]], limit: int = MAX_TABLE_METRICS) -> list[tuple[str, str]]:
    """(stage, name) of the numeric metrics worth a column and a trend panel, best first."""
    seen: dict[tuple[str, str], int] = {}
    for m in manifests:
        for stage, name, v in _scalar_metrics(m.get("metrics") or {}):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                seen[(stage, name)] = seen.get((stage, name), 0) + 1

    def rank(key: tuple[str, str]) -> tuple[int, int, str, str]:
        hint = next((i for i, h in enumerate(HEADLINE_HINTS) if h in key[1].lower()), len(HEADLINE_HINTS))
        # Shorter names are the more general numbers (approval_rate before approval_attempt_2).
        return (hint, -seen[key], len(key[1]), key[0], key[1])

    return sorted(seen, key=rank)[:limit]


def _metric(m: Mapping[str, Any], key: tuple[str, str]) -> Any:
    v = ((m.get("metrics") or {}).get(key[0]) or {}).get(key[1])
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _short_run_label(run_id: str) -> str:
    """'20261123T162530Z' -> '11-23 16:25' (runs are days apart; the year is in the table)."""
    if len(run_id) >= 13 and run_id[8] == "T":
        return f"{run_id[4:6]}-{run_id[6:8]} {run_id[9:11]}:{run_id[11:13]}"
    return run_id


def trend_png(manifests: Sequence[Mapping[str, Any]], keys: Sequence[tuple[str, str]]) -> bytes | None:
    """Small multiples of each headline metric across runs (oldest to newest) as PNG bytes."""
    if not keys or not manifests:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(keys)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), squeeze=False)
    labels = [_short_run_label(str(m.get("run_id", ""))) for m in manifests]
    xs = list(range(len(manifests)))
    for ax, key in zip(axes.flat, keys):
        ys = [_metric(m, key) for m in manifests]
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
        colors = ["#c62828" if manifests[x].get("status") == "failed" else "#1565c0" for x, _ in pts]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color="#90a4ae", lw=1)
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=colors, s=18, zorder=3)
        ax.set_title(f"{key[1]}\n({key[0]})", fontsize=9)
        ax.set_xticks(xs if len(xs) <= 8 else xs[:: max(1, len(xs) // 8)])
        ax.set_xticklabels([labels[i] for i in ax.get_xticks().astype(int)], rotation=30, fontsize=7)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Headline numbers across runs (red = failed run)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def render_all_runs_index(settings: Settings | None = None) -> Path:
    """Write reports/index.html listing every run (newest first) with a trend plot; returns its path."""
    from smartrouter.pipeline import list_runs

    settings = settings or load_settings()
    manifests = list_runs(settings)  # oldest first
    cols = headline_metrics(manifests)
    trend_keys = headline_metrics(manifests, limit=MAX_TREND_PANELS)
    parts = ["<h1>smartrouter daily runs</h1>",
             f"<p class=\"muted\">{len(manifests)} run(s). Each run trains and checks a routing model on the "
             "merchant's payment history; a model is promoted only when it passes the gate.</p>"]
    if (settings.reports_dir / LIVE_REPORT).exists():
        parts.append(f'<p><a href="{LIVE_REPORT}">Live report</a>: the service routing the simulated world day by day, '
                     "against the static rules and the best possible choice (<code>smartrouter live report</code>).</p>")
    png = trend_png(manifests, trend_keys)
    if png:
        parts.append("<h2>Trend</h2><img class=\"trend\" alt=\"headline metrics across runs\" "
                     f"src=\"data:image/png;base64,{base64.b64encode(png).decode()}\">")
    parts.append("<h2>Runs</h2><table><tr><th>run</th><th>status</th><th>data as of</th><th>started</th>"
                 "<th>duration (s)</th><th>model</th><th>gate</th>"
                 + "".join(f"<th>{_e(n)}</th>" for _, n in cols) + "<th>failed at</th></tr>")
    for m in reversed(manifests):
        rid = m.get("run_id")
        gate = m.get("gate") or {}
        link = (f'<a href="{_e(rid)}/{REPORT_INDEX}">{_e(rid)}</a>'
                if (settings.reports_dir / str(rid) / REPORT_INDEX).exists() else _e(rid))
        parts.append(
            f"<tr><td>{link}</td><td>{_status(m.get('status'))}</td><td>{_e(m.get('as_of'))}</td>"
            f"<td>{_e(m.get('started_at'))}</td><td class=\"num\">{_e(_dur(m.get('duration_s')))}</td>"
            f"<td>{_e(m.get('model_version') or '–')}</td><td>{_e(gate.get('decision') or '–')}</td>"
            + "".join(f"<td class=\"num\">{_e(_fmt(v) if (v := _metric(m, k)) is not None else '–')}</td>" for k in cols)
            + f"<td class=\"error\">{_e(m.get('failed_stage') or '')}</td></tr>")
    parts.append("</table>")
    return _write_atomic(settings.reports_dir / REPORT_INDEX, _page("smartrouter runs", "\n".join(parts)))
