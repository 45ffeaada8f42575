"""One payment, all its data: what an analyst opens when a merchant asks "why did this payment go there?".

``story(id)`` takes an order id or any of its attempt ids and gathers, for every attempt of the order
in order:

* the attempt as the warehouse holds it (processor, outcome, error, card and order context) and the
  routing log's row (who routed it: ``ALGORITHM_TYPE``, arm, candidates, logged propensity);
* the **decision** behind it from the service's decision log (arm, source, model version, ranked
  scores, reasons, propensity, eligible processors, fallback reason, rollout): the shipped table
  ``PAYMENT_ML.SMARTROUTER.DECISION_LOG`` and the local log folders (the service's state folder and the
  live loop's), joined on the attempt id. Training history was routed by the merchant's own logger, so
  its attempts have no entry and the story says so (their ``DYNAMIC_ROUTING_DETAIL`` is shown instead);
* the **features at decision time**, recomputed with the training code (``features.build_training_table``:
  the same SQL, point-in-time: only outcomes created before the attempt's minute count), and the scores
  the decision's model version gives them (for history: the model serving now, labelled so). Beside a
  logged decision the recomputed scores show whether the decision can be reproduced offline;
* the **outcome**;
* on world data, the **truth**: the world oracle's approval probability on every processor for this very
  attempt (a live day with a scenario also shows the live truth file's value for the chosen processor,
  which includes the scenario's incidents).

``render_text`` and ``render_html`` present it; ``smartrouter payment ID [--html FILE] [--json]`` is the
command.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from smartrouter import catalog
from smartrouter.config import Settings, load_settings
from smartrouter.errors import ConfigError

# decision-record fields shown for each attempt (the rest of the record is the payment itself)
DECISION_FIELDS = ("request_id", "created_at", "arm", "source", "model_version", "chosen", "ranked", "reasons",
                   "propensity", "eligible", "fallback_reason", "shadow_choice", "rollout_id", "rollout_stage",
                   "canary_choice", "latency_ms", "message_config", "message_source", "message_propensity",
                   "message_arm", "message_recommendations")
ATTEMPT_FIELDS = ("ATTEMPT_ID", "NUM_ATTEMPTS_ORDER", "CREATED_AT", "PROCESSOR", "STATUS", "ERROR_CODE",
                  "ERROR_CATEGORY", "HARD_SOFT", "PROCESSOR_LATENCY_MS", "MCI_MSI_TYPE", "AVS_DATA", "MCC", "PREVIOUS_ORDER_ERROR_CODE",
                  "PREVIOUS_PROCESSOR", "SEC_SINCE_PREVIOUS_ATTEMPT")
ORDER_FIELDS = ("ORDER_ID", "USER_ID", "AMOUNT", "CURRENCY", "CARD_BRAND", "CARD_TYPE", "CARD_LEVEL", "CARD_BIN",
                "BANK", "CARD_COUNTRY", "ORDER_COUNTRY_CODE", "IS_RETURNING_CUSTOMER", "FLIGHT_TYPE", "CHANNEL",
                "DEVICE")
ROUTING_FIELDS = ("ALGORITHM_TYPE", "EXPERIMENT_ARM", "CANDIDATES", "CHOSEN_PROCESSOR", "PROPENSITY",
                  "ROUTING_LATENCY_MS", "SKIP_REASONS")


class PaymentNotFound(ConfigError):
    """No order or attempt has the id asked for."""


def _plain(v: Any) -> Any:
    from smartrouter.notebook_tools import plain

    return plain(v)


def _json_or_text(v: Any) -> Any:
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def _attempts(ident: str, settings: Settings) -> pd.DataFrame:
    from smartrouter import warehouse

    frame = warehouse.query_frame("payment_attempts", {"id": ident}, settings=settings)
    if frame.empty:
        raise PaymentNotFound(f"no order or attempt {ident!r} in {catalog.ATTEMPTS_VIEW}; give an ORDER_ID (e.g. "
                              "O20260909000021) or an ATTEMPT_ID (A...) of this warehouse")
    frame["CREATED_AT"] = pd.to_datetime(frame["CREATED_AT"])
    return frame.sort_values(["CREATED_AT", "NUM_ATTEMPTS_ORDER"], kind="mergesort").reset_index(drop=True)


def decision_dirs(settings: Settings, extra: Iterable[str | Path] = ()) -> list[Path]:
    """Local decision-log folders searched: any given, the service's state folder, the live loop's service."""
    from smartrouter.live import SERVICE_DIR
    from smartrouter.world.live import live_dir

    found = [Path(p) for p in extra]
    found += [settings.state_dir / "decisions", live_dir(settings) / SERVICE_DIR / "state" / "decisions"]
    return list(dict.fromkeys(p for p in found if p.is_dir()))


def _decision_records(order_id: str, settings: Settings, dirs: list[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """Decision records of the order (shipped table + local logs, one per request id) and where they were looked for."""
    from smartrouter import warehouse
    from smartrouter.routing.decision_log import SEGMENT_GLOB

    looked, records = [], []
    try:
        shipped = warehouse.query_frame("payment_decisions", {"order_id": order_id}, settings=settings)
        looked.append(f"{catalog.DATABASE}.SMARTROUTER.DECISION_LOG")
        records += [json.loads(r) for r in shipped["RECORD"]]
    except Exception as exc:  # noqa: BLE001 - no log shipped yet (the table does not exist): the local logs may hold it
        looked.append(f"DECISION_LOG table unavailable ({type(exc).__name__})")
    needle = order_id.encode()
    for d in dirs:
        looked.append(str(d))
        for path in sorted(d.glob(SEGMENT_GLOB)):
            with open(path, "rb") as fh:
                for line in fh:
                    if needle not in line:  # cheap filter: only this order's lines are parsed
                        continue
                    try:
                        records.append(json.loads(line))
                    except ValueError:  # a partial last line of a segment being written
                        continue
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        if rec.get("kind") != "decision" or str((rec.get("payment") or {}).get("ORDER_ID")) != order_id:
            continue
        out.setdefault(str(rec.get("request_id")), rec)
    return list(out.values()), looked


def _features(attempts: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """The training code's feature rows of these attempts, as of each attempt (one window per attempt minute)."""
    from smartrouter import features

    parts = []
    for minute in sorted(set(attempts["CREATED_AT"].dt.floor("min"))):
        start = minute.to_pydatetime()
        rows = features.build_training_table(settings, start, start + dt.timedelta(minutes=1))
        parts.append(rows[rows["ATTEMPT_ID"].isin(attempts["ATTEMPT_ID"])])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _scores(frame: pd.DataFrame, version: str, settings: Settings) -> np.ndarray:
    from smartrouter.registry import Registry

    model = Registry(settings).load(version)
    return np.asarray(model.score_matrix(model.encoder.transform(frame)), dtype=np.float64)


def _truth(attempts: pd.DataFrame, settings: Settings) -> tuple[np.ndarray | None, str]:
    from smartrouter.evaluation import load_oracle

    oracle, why = load_oracle(settings)
    if oracle is None:
        return None, why
    return np.asarray(oracle.probability_matrix(attempts), dtype=np.float64), f"world oracle ({why})"


def _live_truth(attempts: pd.DataFrame, settings: Settings) -> dict[str, dict[str, Any]]:
    from smartrouter.world.live import truth_path

    out: dict[str, dict[str, Any]] = {}
    for day in sorted(set(attempts["CREATED_AT"].dt.date)):
        path = truth_path(settings, day)
        if not path.is_file():
            continue
        t = pd.read_parquet(path)
        t = t[t["ATTEMPT_ID"].isin(attempts["ATTEMPT_ID"])]
        for _, r in t.iterrows():
            out[str(r["ATTEMPT_ID"])] = {k: _plain(r[k]) for k in ("CHOSEN", "P_CHOSEN", "RULES_CHOICE", "P_RULES",
                                                                   "ORACLE_BEST", "P_BEST", "OUTAGE_PROCESSORS")}
    return out


def story(ident: str, settings: Settings | None = None, *, decisions_dirs: Iterable[str | Path] = (),
          with_features: bool = True) -> dict[str, Any]:
    """Everything about the order ``ident`` names (an order id or an attempt id); see the module docstring."""
    settings = settings or load_settings()
    ident = (ident or "").strip()
    if not ident:
        raise ConfigError("give an order id or an attempt id, e.g. `smartrouter payment O20260909000021`")
    att = _attempts(ident, settings)
    order_id = str(att["ORDER_ID"].iloc[0])
    dirs = decision_dirs(settings, decisions_dirs)
    records, looked = _decision_records(order_id, settings, dirs)
    by_attempt = {str((r.get("payment") or {}).get("ATTEMPT_ID")): r for r in records}
    truth, truth_note = _truth(att, settings)
    live_truth = _live_truth(att, settings)
    feats = pd.DataFrame()
    feature_note = "not computed (--no-features)"
    if with_features:
        try:
            feats = _features(att, settings)
            feature_note = ("recomputed with the training code as of each attempt (outcomes before its minute only)"
                            if len(feats) else "no feature row: every attempt is still PROCESSING (features are built "
                                               "for resolved attempts only)")
        except Exception as exc:  # noqa: BLE001 - e.g. a warehouse built by older code lacks a column: say so
            feature_note = (f"could not be recomputed ({type(exc).__name__}: {exc}); the warehouse and the feature "
                            "code disagree: rebuild the world (smartrouter world build) or update the code")
    from smartrouter.features import MODEL_FEATURES
    from smartrouter.registry import Registry

    try:
        serving_now = (Registry(settings).pointer() or {}).get("version")
    except Exception:  # noqa: BLE001 - a broken pointer: no "serving now" scores, the rest of the story stands
        serving_now = None
    feats_by_id = {str(r["ATTEMPT_ID"]): i for i, r in feats.iterrows()} if len(feats) else {}
    score_cache: dict[str, np.ndarray | str] = {}

    def scores_for(version: str | None, i: int) -> dict[str, Any] | None:
        if version is None or not len(feats):
            return None
        if version not in score_cache:
            try:
                score_cache[version] = _scores(feats, version, settings)
            except Exception as exc:  # noqa: BLE001 - e.g. a version no longer in this registry
                score_cache[version] = f"{type(exc).__name__}: {exc}"
        got = score_cache[version]
        if isinstance(got, str):
            return {"version": version, "error": got}
        return {"version": version, "scores": {p: round(float(got[i, j]), 6) for j, p in enumerate(catalog.PROCESSORS)}}

    attempts = []
    for k, row in att.iterrows():
        aid = str(row["ATTEMPT_ID"])
        item: dict[str, Any] = {f: _plain(row.get(f)) for f in ATTEMPT_FIELDS}
        item["routing_log"] = {f: _plain(_json_or_text(row.get(f))) for f in ROUTING_FIELDS}
        rec = by_attempt.get(aid)
        if rec is not None:
            item["decision"] = {f: _plain(rec.get(f)) for f in DECISION_FIELDS if f in rec}
        else:
            algo = row.get("ALGORITHM_TYPE")
            item["decision"] = None
            item["decision_note"] = (f"no decision-log entry for {aid}: the attempt was routed by "
                                     f"{algo or 'the merchant'} (routing log), not by the smartrouter service")
            item["routing_detail"] = _plain(_json_or_text(row.get("DYNAMIC_ROUTING_DETAIL")))
        fi = feats_by_id.get(aid)
        if fi is not None:
            frow = feats.loc[fi]
            item["features"] = {f.name: _plain(frow[f.name]) for f in MODEL_FEATURES}
            version = (rec or {}).get("model_version")
            item["model_scores"] = scores_for(version, fi)
            if item["model_scores"] is not None:
                item["model_scores"]["which"] = "the decision's model version"
            elif serving_now:
                item["model_scores"] = scores_for(serving_now, fi)
                if item["model_scores"] is not None:
                    item["model_scores"]["which"] = "the model serving now (no model made this decision)"
        else:
            item["features"] = None
        if truth is not None:
            probs = {p: round(float(truth[k, j]), 6) for j, p in enumerate(catalog.PROCESSORS)}
            eligible = {p: v for p, v in probs.items() if v > 0}
            best = max(eligible, key=eligible.get) if eligible else None
            chosen = item["PROCESSOR"]
            item["truth"] = {"probabilities": probs, "best": best, "chosen": probs.get(chosen),
                             "regret_pp": round(100 * (eligible[best] - probs.get(chosen, 0.0)), 3) if best else None}
            if aid in live_truth:
                item["truth"]["live_day"] = live_truth[aid]
        attempts.append(item)
    first = att.iloc[0]
    outcome = "approved" if (att["STATUS"] == "APPROVED").any() else str(att["STATUS"].iloc[-1]).lower()
    return {
        "query": ident,
        "found_by": "order id" if ident == order_id else "attempt id",
        "order": {f: _plain(first.get(f)) for f in ORDER_FIELDS},
        "outcome": outcome,
        "n_attempts": len(attempts),
        "with_decision": sum(a["decision"] is not None for a in attempts),
        "decision_logs_searched": looked,
        "features_note": feature_note,
        "truth_note": truth_note,
        "serving_now": serving_now,
        "attempts": attempts,
    }


# ---------------------------------------------------------------- presentation
def _pct(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * float(v):.1f} %"


def _ranked(dec: dict[str, Any]) -> str:
    parts = []
    for entry in dec.get("ranked") or []:
        p, s = (entry[0], entry[1]) if isinstance(entry, (list, tuple)) else (entry, None)
        parts.append(f"{p} {_pct(s)}" if s is not None else str(p))
    return ", ".join(parts) or "-"


def render_text(s: dict[str, Any]) -> str:
    o = s["order"]
    lines = [f"order {o['ORDER_ID']} ({s['found_by']} {s['query']}): {o['AMOUNT']} {o['CURRENCY']}, {o['CARD_BRAND']} "
             f"{o['CARD_TYPE']} BIN {o['CARD_BIN']} ({o['BANK']}, {o['CARD_COUNTRY']}); {s['n_attempts']} attempt(s), "
             f"{s['outcome']}; {s['with_decision']} with a smartrouter decision"]
    for a in s["attempts"]:
        lines.append("")
        lines.append(f"attempt {a['NUM_ATTEMPTS_ORDER']}  {a['ATTEMPT_ID']}  {a['CREATED_AT']}  -> {a['PROCESSOR']}: "
                     f"{a['STATUS']}" + (f" ({a['ERROR_CODE']} {a['ERROR_CATEGORY']})" if a.get("ERROR_CODE") else ""))
        r = a["routing_log"]
        lines.append(f"  routed by {r['ALGORITHM_TYPE']} arm {r['EXPERIMENT_ARM']}, candidates "
                     f"{', '.join(r['CANDIDATES'] or []) if isinstance(r['CANDIDATES'], list) else r['CANDIDATES']}, "
                     f"logged propensity {r['PROPENSITY']}")
        d = a["decision"]
        if d is None:
            lines.append(f"  {a['decision_note']}")
        else:
            lines.append(f"  decision {d.get('request_id')}: {d.get('source')} on arm {d.get('arm')}, model "
                         f"{d.get('model_version') or '-'}, chose {d.get('chosen')} (propensity {d.get('propensity')})")
            lines.append(f"    ranked: {_ranked(d)}")
            for reason in d.get("reasons") or []:
                lines.append(f"    - {reason}")
            if d.get("fallback_reason"):
                lines.append(f"    fallback: {d['fallback_reason']}")
            if d.get("rollout_id"):
                lines.append(f"    rollout {d['rollout_id']} stage {d.get('rollout_stage')}")
            if d.get("message_config"):
                recs = "; ".join(f"{r['processor']} {r['message_config']['key']} {_pct(r['probability'])}"
                                 for r in d.get("message_recommendations") or [])
                lines.append(f"    message sent {d['message_config']['key']} ({d.get('message_source')}, propensity "
                             f"{d.get('message_propensity')}" + (f", message A/B arm {d['message_arm']}" if d.get("message_arm") else "")
                             + ")" + (f"; top pairs: {recs}" if recs else ""))
        ms = a.get("model_scores")
        if ms and ms.get("scores"):
            lines.append(f"  recomputed scores ({ms['version']}, {ms['which']}): "
                         + ", ".join(f"{p} {_pct(v)}" for p, v in ms["scores"].items() if v > 0))
        elif ms and ms.get("error"):
            lines.append(f"  recomputed scores ({ms['version']}): unavailable, {ms['error']}")
        f = a.get("features")
        if f:
            keys = [k for k in ("IS_DOMESTIC_CARD", "HOUR_LOCAL", "PREVIOUS_HARD_SOFT") if k in f]
            keys += [k for k in f if k.startswith("BIN_") and k.endswith("_APPROVAL_SMOOTHED")]
            keys += [k for k in f if k.startswith("HEALTH_") and "_1H_APPROVAL_RATE" in k]
            lines.append("  features at decision time: " + ", ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in ((k, f[k]) for k in keys)))
        t = a.get("truth")
        if t:
            lines.append("  truth: " + ", ".join(f"{p} {_pct(v)}" for p, v in t["probabilities"].items() if v > 0)
                         + (f"; best {t['best']}, chosen {_pct(t['chosen'])} ({t['regret_pp']:.1f} pp below the best)"
                            if t.get("regret_pp") is not None else ""))
            if t.get("live_day"):
                lv = t["live_day"]
                lines.append(f"  live-day truth file (scenario included): chosen {lv['CHOSEN']} {_pct(lv['P_CHOSEN'])}, rules "
                             f"{lv['RULES_CHOICE']} {_pct(lv['P_RULES'])}, best {lv['ORACLE_BEST']} {_pct(lv['P_BEST'])}"
                             + (f", outage on {lv['OUTAGE_PROCESSORS']}" if lv.get("OUTAGE_PROCESSORS") else ""))
    lines += ["", f"features: {s['features_note']}", f"truth: {s['truth_note']}",
              f"decision logs searched: {'; '.join(s['decision_logs_searched'])}"]
    return "\n".join(lines)


def render_html(s: dict[str, Any]) -> str:
    """A small self-contained page: the order, then one section per attempt with tables."""
    e = html.escape

    def table(rows: list[tuple[str, Any]]) -> str:
        body = "".join(f"<tr><th>{e(str(k))}</th><td>{e(v if isinstance(v, str) else json.dumps(v, default=str))}</td></tr>"
                       for k, v in rows)
        return f"<table>{body}</table>"

    def grid(header: list[str], rows: list[list[Any]]) -> str:
        head = "".join(f"<th>{e(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    o = s["order"]
    parts = [f"<h1>Order {e(str(o['ORDER_ID']))}</h1>",
             f"<p>{e(render_text(s).splitlines()[0])}</p>", table(list(o.items()))]
    for a in s["attempts"]:
        parts.append(f"<h2>Attempt {a['NUM_ATTEMPTS_ORDER']}: {e(str(a['ATTEMPT_ID']))} → {e(str(a['PROCESSOR']))}, "
                     f"{e(str(a['STATUS']))}</h2>")
        parts.append(table([(k, a[k]) for k in ATTEMPT_FIELDS if k in a]))
        parts.append("<h3>Routing log</h3>" + table(list(a["routing_log"].items())))
        d = a["decision"]
        parts.append("<h3>Decision</h3>" + (table(list(d.items())) if d else f"<p>{e(a['decision_note'])}</p>"
                                            + (f"<pre>{e(json.dumps(a.get('routing_detail'), indent=1, default=str))}</pre>"
                                               if a.get("routing_detail") else "")))
        by_proc: list[list[Any]] = []
        ms = (a.get("model_scores") or {}).get("scores") or {}
        ranked = {str(x[0]): x[1] for x in ((d or {}).get("ranked") or []) if isinstance(x, (list, tuple))}
        truth = (a.get("truth") or {}).get("probabilities") or {}
        for p in catalog.PROCESSORS:
            by_proc.append([p, _pct(ranked.get(p)) if p in ranked else "-", _pct(ms.get(p)) if p in ms else "-",
                            _pct(truth.get(p)) if p in truth else "-", "chosen" if p == a["PROCESSOR"] else ""])
        parts.append("<h3>Per processor</h3>" + grid(["processor", "logged score", "recomputed score", "truth", ""], by_proc))
        if a.get("features"):
            parts.append("<details><summary>Features at decision time</summary>" + table(list(a["features"].items())) + "</details>")
    parts.append(f"<p>Features: {e(s['features_note'])}. Truth: {e(s['truth_note'])}. Decision logs searched: "
                 f"{e('; '.join(s['decision_logs_searched']))}.</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;"
             "margin:.5em 0}th,td{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:13px}th{background:#f4f4f4}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>payment {e(str(o['ORDER_ID']))}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
