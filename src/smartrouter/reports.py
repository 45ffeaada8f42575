"""HTML reports for people who never open Python.

- ``reports/<run_id>/<stage>.html``: an executed stage notebook with the code hidden, plots inline
  (PNG) and the parameters as a table; in a failed stage the failing cell's code and traceback
  stay visible, and a banner says what went wrong (a timeout leaves no traceback in the notebook).
  Every stage page links back to the run's verdict.
- ``reports/<run_id>/index.html``: the run: first the verdict (``smartrouter.verdict``: the decision
  in one sentence, this run's model vs the serving model vs the static rules with 95 % intervals,
  the lift in pp, approved orders and volume per day, money after fees, one sentence per gate; a
  failed run says where, why and what still serves), then what changed since the previous run
  (``smartrouter.changes``), then status, dates, data window, code version, stages; every raw
  number the stages recorded is folded away.
- ``reports/index.html``: every run with fixed columns (decision, the version serving after it,
  lift vs serving and vs the static rules with intervals, data freshness, data checks), a trend of
  those lifts once there are two runs to compare, and a link to ``reports/live/index.html``
  (``smartrouter.live_report``) when the live loop has written it.

Plain HTML with a little CSS; no JavaScript.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from smartrouter import atomic
from smartrouter.config import Settings, load_settings

REPORT_INDEX = "index.html"
LIVE_REPORT = "live/index.html"  # written by smartrouter.live_report
ESTIMATOR_WORDS = {"DR": "doubly robust", "SNIPS": "self-normalized inverse-propensity", "IPS": "inverse-propensity",
                   "DM": "direct-method"}

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
.verdict { border: 2px solid #9e9e9e; border-radius: .4rem; padding: .4rem 1rem 1rem; margin: 1rem 0; }
.verdict.promoted, .verdict.canary { border-color: #2e7d32; background: #f4faf4; }
.verdict.rejected { border-color: #ef6c00; background: #fff8f0; } .verdict.failed { border-color: #c62828; background: #fdf3f3; }
.verdict h2 { border: none; margin-top: .4rem; } p.decision { font-size: 1.15rem; font-weight: 600; margin: .3rem 0 .8rem; }
.pass { color: #2e7d32; font-weight: bold; } .fail { color: #c62828; font-weight: bold; }
ul.gates { list-style: none; padding-left: .2rem; } ul.gates li { margin: .25rem 0; }
ul.gates details, ul.gates summary { display: inline; } ul.gates summary { cursor: pointer; }
.small { font-size: .85rem; color: #555; } tr.candidate td { font-weight: 600; }
.flag { color: #c62828; font-weight: bold; }
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


def _decision_badge(manifest: Mapping[str, Any], gate: Mapping[str, Any]) -> str:
    """What the run decided, beside whether it ran: 'succeeded' alone reads as good news on a rejected run."""
    dec = (gate or {}).get("decision")
    if not dec:
        return ""
    color = {"promoted": "succeeded", "canary": "succeeded", "rejected": "running"}.get(str(dec).split(" ")[0], "skipped")
    return f'<span class="status {color}">model {_e(dec)}</span>'


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
    back = ('<p style="margin:1rem 2rem" class="muted"><a href="index.html#verdict">&larr; the run\'s verdict</a> · '
            '<a href="index.html">run overview</a> · <a href="../index.html">all runs</a></p>')
    body = body.replace("<body", "<body data-smartrouter-report=\"stage\"", 1)
    body = body.replace("</main>", f"{back}</main>", 1) if "</main>" in body else body.replace("</body>", f"{back}</body>", 1)
    # and at the top: a reader who opened a stage page first finds the decision in one click
    body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + back, body, count=1)
    return _write_atomic(html_path, body)


# ------------------------------------------------------------------ verdict and changes (smartrouter.verdict / .changes)
def _safe_block(fn: Any, what: str) -> str:
    """A block that cannot be built says so on the page instead of taking the whole page down."""
    try:
        return fn()
    except Exception as exc:  # the run page is the record of a run; a broken block must not hide it
        return f'<p class="error">The {_e(what)} block could not be built: {_e(type(exc).__name__)}: {_e(exc)}</p>'


def _isnum(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x


def _share_ci(cell: Mapping[str, Any] | None, spec: str, unit: str) -> str:
    if not cell or not _isnum(cell.get("value")):
        return "–"
    ci = (f" [{100 * cell['ci_low']:{spec}}, {100 * cell['ci_high']:{spec}}]"
          if _isnum(cell.get("ci_low")) and _isnum(cell.get("ci_high")) else "")
    return f"{100 * cell['value']:{spec}} {unit}{ci}"


def pct_ci(cell: Mapping[str, Any] | None) -> str:
    """'83.12 % [82.50, 83.71]' for a {value, ci_low, ci_high} share."""
    return _share_ci(cell, ".2f", "%")


def pp_ci(cell: Mapping[str, Any] | None) -> str:
    """'+7.34 pp [+6.10, +8.68]' for a {value, ci_low, ci_high} lift (a share)."""
    return _share_ci(cell, "+.2f", "pp")


def count_ci(cell: Mapping[str, Any] | None, unit: str = "", digits: int = 0, signed: bool = True) -> str:
    """'+1,234 [+1,000, +1,500]' (with ``unit`` in front; unsigned unless ``signed``) for a {value, ci_low, ci_high}."""
    if not cell or not _isnum(cell.get("value")):
        return "–"
    f = f"{{:{'+' if signed else ''},.{digits}f}}"
    ci = (f" [{f.format(cell['ci_low'])}, {f.format(cell['ci_high'])}]"
          if _isnum(cell.get("ci_low")) and _isnum(cell.get("ci_high")) else "")
    return f"{unit}{f.format(cell['value'])}{ci}"


def _money_cell(cell: Mapping[str, Any] | None, unit: str = "MXN ") -> str:
    """An amount (an {estimate, ...} cell, unsigned) or a difference (a {lift, ...} cell, signed) with its interval."""
    if not cell:
        return "–"
    v = {"value": cell.get("estimate", cell.get("lift")), "ci_low": cell.get("ci_low"), "ci_high": cell.get("ci_high")}
    return count_ci(v, unit, signed="lift" in cell)


def verdict_html(v: Mapping[str, Any]) -> str:
    """The verdict block (``smartrouter.verdict.build``) as HTML: the decision, the three policies with
    their intervals, the lift in pp, orders and money per day, one sentence per gate, the assumptions."""
    dec = str(v.get("decision") or "unknown")
    kind = dec if dec in ("promoted", "canary", "rejected", "failed") else "other"
    out = [f'<section id="verdict" class="verdict {kind}"><h2>Verdict</h2>',
           f'<p class="decision">{_e(v.get("sentence"))}</p>']
    now = v.get("serving_now") or {}
    serving_line = (f"Serving now: <b>{_e(now.get('version') or 'no model (static rules)')}</b>"
                    + (f", with <b>{_e(now['canary'])}</b> in canary ({_e(now.get('canary_stage'))})" if now.get("canary") else ""))
    if v.get("failed"):
        f = v["failed"]
        out.append(f"<table><tr><th>failed stage</th><td>{_e(f.get('stage'))} ({_e(f.get('doing'))})</td></tr>"
                   f"<tr><th>why</th><td class=\"error\">{_e(f.get('error'))}</td></tr></table>")
        if not f.get("after_gate"):
            out.append(f"<p>{serving_line}. Nothing from this run reached the registry; the stage's page shows the "
                       "failing cell.</p>")
            return "\n".join(out) + "</section>"
    est = _e(v.get("estimator") or "DR")
    if v.get("candidate"):
        out.append(f"<table><tr><th>routing policy</th><th>approval of first attempts [95 % CI]</th>"
                   f"<th>vs static rules</th><th>measured on</th></tr>")
        cand_name = f"{_e(v.get('model_version'))} ({_e(v.get('family'))}), this run's model"
        out.append(f"<tr class=\"candidate\"><td>{cand_name}</td><td class=\"num\">{pct_ci(v['candidate'])}</td>"
                   f"<td class=\"num\">{pp_ci(v.get('lift_vs_rules'))}</td><td>this run's test window</td></tr>")
        srv = v.get("serving") or {}
        if srv:
            card = srv.get("card") or {}
            if srv.get("on_window"):
                out.append(f"<tr><td>{_e(srv['version'])} ({_e(card.get('family'))}), serving when this run was judged</td>"
                           f"<td class=\"num\">{pct_ci(srv['on_window'])}</td><td class=\"num\">"
                           f"{pp_ci({'value': srv['on_window']['value'] - v['rules']['value']}) if v.get('rules') else '–'}</td>"
                           f"<td>the same payments</td></tr>")
            if card.get("value"):
                out.append(f"<tr><td class=\"small\">{_e(card['version'])} as its model card records it</td>"
                           f"<td class=\"num small\">{pct_ci(card['value'])}</td><td class=\"num small\">"
                           f"{pp_ci({'value': card.get('lift_vs_rules')})}</td>"
                           f"<td class=\"small\">its own test window (run {_e(card.get('run_id'))})</td></tr>")
        out.append(f"<tr><td>static rules (the merchant's routing table)</td><td class=\"num\">{pct_ci(v.get('rules'))}</td>"
                   f"<td class=\"num\">–</td><td>this run's test window</td></tr></table>")
        n = v.get("n_first_attempts")
        out.append(f"<p class=\"small\">Estimated from the payment logs ({est}: {_e(ESTIMATOR_WORDS.get(str(v.get('estimator')), 'off-policy'))} estimate) on "
                   f"{_fmt(n) if n else '–'} first attempts; brackets are 95 % intervals. Lifts compare both policies on "
                   "the same payments.</p>")
    per = [("vs the serving model", v.get("lift_vs_serving"), v.get("per_day_vs_serving")),
           ("vs the static rules", v.get("lift_vs_rules"), v.get("per_day_vs_rules"))]
    per = [p for p in per if p[1]]
    if per:
        out.append("<table><tr><th>this run's model</th>" + "".join(f"<th>{_e(n)}</th>" for n, _, _ in per) + "</tr>")
        out.append("<tr><td>lift in first-attempt approval</td>" + "".join(f"<td class=\"num\">{pp_ci(l)}</td>" for _, l, _ in per) + "</tr>")
        rows = [("approved orders / day", "orders_per_day", "", 0),
                ("… net of what retries recover anyway", "orders_per_day_net_of_retries", "", 0),
                ("approved volume / day (MXN)", "volume_mxn_per_day", "MXN ", 0),
                ("approved volume / day (USD)", "volume_usd_per_day", "USD ", 0)]
        for label, key, unit, d in rows:
            if any((m or {}).get(key) for _, _, m in per):
                out.append(f"<tr><td>{_e(label)}</td>" + "".join(
                    f"<td class=\"num\">{count_ci({'value': (m or {}).get(key, {}).get('value'), 'ci_low': (m or {}).get(key, {}).get('ci_low'), 'ci_high': (m or {}).get(key, {}).get('ci_high')}, unit, d)}</td>"
                    for _, _, m in per) + "</tr>")
        out.append("</table>")
    mon = v.get("money")
    if mon:
        flag = ' <span class="flag">example fee schedule, not the contracts</span>' if mon.get("examples") else ""
        out.append(f"<table><tr><th>after processor fees, per day{' (' + flag + ')' if flag else ''}</th>"
                   "<th>this run's model</th><th>vs the static rules</th></tr>"
                   f"<tr><td>processor fees</td><td class=\"num\">{_money_cell(mon.get('fee_per_day_mxn'))}</td>"
                   f"<td class=\"num\">{_money_cell(mon.get('fee_lift_vs_rules_mxn'))}</td></tr>"
                   f"<tr><td>net approved revenue (approved amount − fees)</td>"
                   f"<td class=\"num\">{_money_cell(mon.get('net_revenue_per_day_mxn'))}<br>"
                   f"{_money_cell(mon.get('net_revenue_per_day_usd'), 'USD ')}</td>"
                   f"<td class=\"num\">{_money_cell(mon.get('net_revenue_lift_vs_rules_mxn'))}</td></tr></table>"
                   f"<p class=\"small\">The router ranks processors by <code>{_e(mon.get('objective'))}</code> "
                   "(routing.toml [objective])"
                   + (f"; ranked that way this run's model approves {pct_ci({'value': (mon.get('approval') or {}).get('estimate'), 'ci_low': (mon.get('approval') or {}).get('ci_low'), 'ci_high': (mon.get('approval') or {}).get('ci_high')})} of first attempts"
                      if mon.get("objective") == "net_revenue" and mon.get("approval") else "") + ".</p>")
    out.append(f"<p>{serving_line}.</p>")
    gates = v.get("gates") or []
    if gates:
        n_pass = sum(g["passed"] for g in gates)
        out.append(f"<h3>The gates ({n_pass} of {len(gates)} passed)</h3><ul class=\"gates\">")
        for g in gates:
            mark = '<span class="pass">✓ passed</span>' if g["passed"] else '<span class="fail">✗ FAILED</span>'
            out.append(f"<li>{mark} {_e(g['sentence'])} <details><summary class=\"small\">numbers</summary>"
                       f"<span class=\"small\"><code>{_e(g['gate'])}</code>: {_e(g.get('detail'))}</span></details></li>")
        out.append("</ul>")
    if v.get("assumptions"):
        out.append("<details><summary>How these numbers are made (assumptions)</summary><ul class=\"small\">"
                   + "".join(f"<li>{_e(a)}</li>" for a in v["assumptions"]) + "</ul></details>")
    return "\n".join(out) + "</section>"


def changes_html(c: Mapping[str, Any]) -> str:
    """The 'what changed since the last run' block (``smartrouter.changes.compare``) as HTML."""
    out = ['<section id="changes"><h2>What changed since the last run</h2>']
    if c.get("note"):
        return out[0] + f"<p class=\"muted\">{_e(c['note'])}.</p></section>"
    out.append(f"<p class=\"muted\">Compared with run <a href=\"../{_e(c['previous'])}/index.html\">{_e(c['previous'])}</a>; "
               "only what failed or moved beyond <code>changes.toml</code>'s thresholds is listed.</p>")
    items = []
    if c.get("data_note"):
        items.append(f"<li>{_e(c['data_note'])}.</li>")
    if c.get("checks_failed"):
        items.append(f'<li><span class="flag">{_e(c["checks_failed"])} data check(s) failed</span> (see 01_extract_eda).</li>')
    for d in c.get("data") or []:
        if d["kind"] == "relative":
            items.append(f"<li>{_e(d['words'])}: {_fmt(d['before'])} → {_fmt(d['now'])} "
                         f"({100 * (d['now'] - d['before']) / d['before']:+.0f} %)</li>")
        else:
            items.append(f"<li>{_e(d['words'])}: {100 * d['before']:.2f} % → {100 * d['now']:.2f} % "
                         f"({100 * (d['now'] - d['before']):+.2f} pp)</li>")
    o = c.get("outages") or {}
    if o.get("now"):
        inc = "; ".join(f"{_e(r.get('PROCESSOR'))} from {_e(r.get('START'))} to {_e(r.get('END'))}" for r in o["now"][:6]
                        if isinstance(r, Mapping))
        items.append(f"<li>Outages in this run's data window: {len(o['now'])}" + (f" ({inc})" if inc else "")
                     + (f"; the previous run saw {_e(o.get('count_before'))}" if o.get("count_before") is not None else "") + ".</li>")
    elif o.get("count") is not None and o.get("count") != o.get("count_before"):
        items.append(f"<li>Outage incidents: {_e(o.get('count_before'))} → {_e(o.get('count'))}.</li>")
    out.append("<ul>" + ("".join(items) or "<li>Data checks: all passed; no data-stage number moved.</li>") + "</ul>")

    def signed(x: float, unit: str) -> str:
        return f"±0{unit}" if round(x) == 0 else f"{x:+.0f}{unit}"

    def shift_rows(kind: str, rows: list[Mapping[str, Any]]) -> str:
        return "".join(
            f"<tr><td>{_e(kind)}</td><td>{_e(r['group'])}</td><td class=\"num\">{r['per_day_before']:,.0f} → "
            f"{r['per_day']:,.0f} ({signed(100 * r['volume_change'], ' %')})</td><td class=\"num\">"
            f"{100 * r['approval_before']:.1f} % → {100 * r['approval']:.1f} % ({r['approval_change_pp']:+.1f} pp)</td></tr>"
            for r in rows)

    body = shift_rows("processor", c.get("processors") or []) + "".join(
        shift_rows(seg.lower().replace("_", " "), rows[:6]) for seg, rows in (c.get("segments") or {}).items())
    if body:
        out.append("<table><tr><th>by</th><th>group</th><th>first attempts / day (test window)</th>"
                   f"<th>approval as logged</th></tr>{body}</table>")
    if c.get("facts_note") and not c.get("data_note"):  # a run that never read its data: one line says so
        out.append(f"<p class=\"muted\">{_e(c['facts_note'])}.</p>")
    elif not c.get("processors") and not c.get("segments"):
        out.append("<p>No processor or segment moved beyond the thresholds.</p>")
    d = c.get("drift")
    if d:
        crossed = d.get("features_crossed") or []
        scores = [s for s in d.get("scores") or [] if s.get("crossed")]
        top = ", ".join(f"{_e(r['feature'])} {r['psi']:.2f}" for r in (d.get("features_top") or [])[:3])
        out.append(f"<p><b>Drift</b> (PSI of this test window vs the previous one, threshold {d['threshold']:g}): "
                   + (f'<span class="flag">{len(crossed)} of {d["n_features"]} model inputs shifted</span> '
                      f"({', '.join(_e(r['feature']) for r in crossed[:6])})" if crossed
                      else f"no model input shifted (largest: {top or '–'})")
                   + "; " + (f'<span class="flag">scores shifted on {", ".join(_e(s["processor"]) for s in scores)}</span>'
                             if scores else "no processor's scores shifted") + ".</p>")
    m = c.get("traffic_mix")
    if m:
        cols = m["columns"]
        procs = list(next(iter(cols.values())))
        out.append("<table><tr><th>share of first attempts</th>" + "".join(f"<th>{_e(p)}</th>" for p in procs) + "</tr>"
                   + "".join(f"<tr><td>{_e(name)}</td>" + "".join(f"<td class=\"num\">{100 * mix.get(p, 0):.1f} %</td>" for p in procs)
                             + "</tr>" for name, mix in cols.items()) + "</table>")
        moved = m.get("moved") or []
        out.append("<p>" + ("The new model would move traffic vs " + _e(m["base"]) + ": "
                            + "; ".join(f"{_e(r['processor'])} {100 * r['base']:.1f} % → {100 * r['new']:.1f} %" for r in moved)
                            if moved else f"The new model sends traffic much as {_e(m['base'])} does.") + "</p>")
    return "\n".join(out) + "</section>"


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
        f"<h1>Run {_e(run_id)} {_status(manifest.get('status'))} {_decision_badge(manifest, gate)}</h1>",
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
    # the verdict and what changed come first: what a payments manager opens the page for
    from smartrouter import changes, verdict

    parts[2:2] = [_safe_block(lambda: verdict_html(verdict.build(manifest, settings)), "verdict"),
                  _safe_block(lambda: changes_html(changes.compare(manifest, settings)), "what changed")]
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
        parts.append(f"<details><summary>Every number the stages recorded ({len(scal)}, raw)</summary>"
                     "<table><tr><th>stage</th><th>metric</th><th>value</th></tr>")
        parts.extend(f"<tr><td>{_e(s)}</td><td>{_e(n)}</td><td class=\"num\">{_e(_fmt(v))}</td></tr>"
                     for s, n, v in scal)
        parts.append("</table></details>")
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
STALE_DATA_HOURS = 36.0  # newest payment older than this before the as-of day: the data feed is late (flagged)


def _short_run_label(run_id: str) -> str:
    """'20261123T162530Z' -> '11-23 16:25' (runs are days apart; the year is in the table)."""
    if len(run_id) >= 13 and run_id[8] == "T":
        return f"{run_id[4:6]}-{run_id[6:8]} {run_id[9:11]}:{run_id[11:13]}"
    return run_id


def _serving_after(rows: Sequence[Mapping[str, Any]]) -> list[str | None]:
    """The version serving after each run (oldest first): a promotion replaces it, a canary adds to it."""
    out, serving = [], None
    for r in rows:
        dec = str(r.get("decision"))
        if r.get("compared_with"):
            serving = r["compared_with"]
        if dec == "promoted":
            serving = r.get("model_version")
        out.append(f"{serving} (+{r.get('model_version')} canary)" if dec == "canary" and serving else serving)
    return out


def trend_png(rows: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Lift over the static rules and over the serving model, with 95 % intervals, across runs (oldest
    first) as PNG bytes; None unless at least two runs have a lift (one dot is not a trend)."""
    have = [r for r in rows if r.get("lift_vs_rules")]
    if len(have) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.2))
    xs = list(range(len(rows)))
    for key, label, color, dx in (("lift_vs_rules", "vs static rules", "#1565c0", -0.08),
                                  ("lift_vs_serving", "vs the serving model", "#6a1b9a", 0.08)):
        pts = [(x + dx, r[key]) for x, r in zip(xs, rows) if r.get(key)]
        if not pts:
            continue
        y = [100 * p["value"] for _, p in pts]
        lo = [100 * (p["value"] - p["ci_low"]) for _, p in pts]
        hi = [100 * (p["ci_high"] - p["value"]) for _, p in pts]
        ax.errorbar([x for x, _ in pts], y, yerr=[lo, hi], fmt="o", color=color, label=label, ms=5, capsize=3)
    for x, r in zip(xs, rows):
        if r.get("decision") == "failed":
            ax.axvline(x, color="#c62828", alpha=0.25, lw=6)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(xs, [_short_run_label(str(r.get("run_id"))) + "\n" + str(r.get("decision")) for r in rows], fontsize=7)
    ax.set_ylabel("pp of first-attempt approval")
    ax.set_title("This run's model: lift with 95 % intervals (red band = failed run)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _freshness(r: Mapping[str, Any]) -> str:
    newest, lag = r.get("newest_payment"), r.get("data_lag_hours")
    if not newest:
        return "–"
    text = f"to {_e(str(newest)[:16].replace('T', ' '))}"
    if isinstance(lag, (int, float)):
        text += f" ({lag:.0f} h before as-of)"
        if lag > STALE_DATA_HOURS:
            text = f'<span class="flag">{text}: late</span>'
    return text


def _checks(r: Mapping[str, Any]) -> str:
    if r.get("checks_failed") is None:
        return "–"
    return "all passed" if not r["checks_failed"] else f'<span class="flag">{_e(r["checks_failed"])} failed</span>'


def render_all_runs_index(settings: Settings | None = None) -> Path:
    """Write reports/index.html listing every run (newest first) with fixed columns and a lift trend; returns its path."""
    from smartrouter import verdict
    from smartrouter.pipeline import list_runs

    settings = settings or load_settings()
    manifests = list_runs(settings)  # oldest first
    rows = [verdict.index_row(m, settings) for m in manifests]
    serving = _serving_after(rows)
    parts = ["<h1>smartrouter daily runs</h1>",
             f"<p class=\"muted\">{len(manifests)} run(s). Each run trains a routing model on the merchant's payment "
             "history and checks it against the gates; a model that passes replaces (or starts a canary beside) the "
             "one serving. Lifts are in percentage points of first-attempt approval with 95 % intervals.</p>"]
    if (settings.reports_dir / LIVE_REPORT).exists():
        parts.append(f'<p><a href="{LIVE_REPORT}">Live report</a>: the service routing the simulated world day by day, '
                     "against the static rules and the best possible choice (<code>smartrouter live report</code>).</p>")
    png = trend_png(rows)
    if png:
        parts.append("<h2>Trend</h2><img class=\"trend\" alt=\"lift of each run's model across runs\" "
                     f"src=\"data:image/png;base64,{base64.b64encode(png).decode()}\">")
    parts.append("<h2>Runs</h2><table><tr><th>run</th><th>decision</th><th>serving after</th>"
                 "<th>lift vs serving [95 % CI]</th><th>lift vs rules [95 % CI]</th><th>data</th><th>checks</th>"
                 "<th>duration (s)</th></tr>")
    for m, r, srv in reversed(list(zip(manifests, rows, serving))):
        rid = m.get("run_id")
        link = (f'<a href="{_e(rid)}/{REPORT_INDEX}">{_e(rid)}</a>'
                if (settings.reports_dir / str(rid) / REPORT_INDEX).exists() else _e(rid))
        dec = _e(r["decision"]) + (f" {_e(r['model_version'])}" if r.get("model_version") else "")
        if m.get("status") == "running":
            dec = _status("running")
        if r.get("failed_stage"):
            dec = (dec + "; " if r.get("model_version") else "") + f'<span class="error">run failed at {_e(r["failed_stage"])}</span>'
        parts.append(
            f"<tr><td>{link}<br><span class=\"small\">as of {_e(m.get('as_of'))}</span></td><td>{dec}</td><td>{_e(srv or '–')}</td><td class=\"num\">{pp_ci(r.get('lift_vs_serving'))}</td>"
            f"<td class=\"num\">{pp_ci(r.get('lift_vs_rules'))}</td><td>{_freshness(r)}</td><td>{_checks(r)}</td>"
            f"<td class=\"num\">{_e(_dur(m.get('duration_s')))}</td></tr>")
    parts.append("</table>")
    return _write_atomic(settings.reports_dir / REPORT_INDEX, _page("smartrouter runs", "\n".join(parts)))
