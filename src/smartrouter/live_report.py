"""The live report: what the service's choices truly earned, day by day, against the static rules and
the oracle-best on the same payments (issue 12, item 5 and the numbers of its must-shows).

Inputs, all on the world's (oracle's) side, never read by models or the service:

- ``<live>/truth/<YYYY-MM-DD>.parquet`` (one row per attempt the loop made, ``world.live.TRUTH_COLUMNS``):
  the choice made (``CHOSEN``), what the static rules would have chosen (``RULES_CHOICE``), the
  oracle-best, and the TRUE approval probability of each at that moment (``P_CHOSEN``, ``P_RULES``,
  ``P_BEST``), plus what the service logged (arm, source, model version, propensity, latency);
- ``<live>/days.jsonl`` (the engine's per-day summary), the run manifests (gate decisions) and the
  registry's history (promotions).

Definitions (one place). The policy comparisons (true approval of the choices vs the rules vs the
oracle-best, the share of the gain, the outage recovery, OPE) are made on *first attempts*, like the
evaluation's policy value: a retry exists only because of what happened before, and the static rules
route a retry by their retry rules, not by ``RULES_CHOICE`` (their first choice at that moment), so
"the rules on the same payment" is defined for the first attempt. Observed approval, conversion,
outage losses, exploration and latency count every attempt.

- *true approval* of a set of first attempts = mean of P over them (an expectation, so it has no
  outcome noise); *observed approval* = share APPROVED.
- *share of the oracle's gain* = Σ(P_CHOSEN − P_RULES) / Σ(P_BEST − P_RULES) over the same attempts.
  Its 95 % interval is a delta method clustered by order: the numerator and denominator are summed
  per order (an order's retries are not independent of its first attempt), and the ratio's
  linearization is ``evaluation._influence`` -- the same one the evaluation's paired lifts use.
  It measures which payments and choices happened to occur; the P's themselves are exact.
- *approvals lost to outages* = Σ(P_BEST − P_CHOSEN) over attempts made while some processor was in
  an outage (``OUTAGE_PROCESSORS`` non-empty): expected approvals, not a share.
- *failed attempt*: STATUS DECLINED, TIMEOUT or ERROR (PROCESSING is unresolved).
- *outage window*: a maximal time-ordered run of attempts whose ``OUTAGE_PROCESSORS`` names the
  processor. *Marked DOWN at*: the first ``failover`` decision in the window (the service only fails
  over around a processor it holds DOWN or ramps back); without one, the moment after which the
  processor got probes only (``exploration`` decisions), if the rest of the window would have
  carried at least ``STOP_EVIDENCE`` attempts to it at its earlier rate (else: not marked);
  *failed attempts before DOWN* = failed attempts on the processor in the window before that moment.
  Limit: the truth does not say which processor a failover avoided; a processor still held DOWN from
  an earlier outage when this window starts would be read as this one being marked at once.
- *OPE* per 3-day block and arm: the served policy's value and the static rules' value estimated
  from the logged first attempts only (chosen processor, outcome, arm, the service's logged
  propensity, and the rules' choice), with ``evaluation.logged_data`` and
  ``evaluation.estimate_policies`` (IPS and SNIPS, its Poisson-bootstrap 95 % interval), beside the truth (mean P_CHOSEN, mean P_RULES on the same attempts). With its own
  propensities the served policy's IPS weight is 1 on every row, so its estimate is the observed
  approval: the check that the machinery reads served logs correctly. The rules' estimate is
  off-policy (weight 1[chosen = rules' choice] / propensity) and needs the logger to give the
  rules' choice some probability; with exploration off, the treatment arm's logs cannot support
  it and the interval will say so by missing the truth. DM/DR are not shown: they need an outcome
  model's score of every candidate, which the truth table does not carry.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from smartrouter import atomic, catalog
from smartrouter.config import Settings, load_settings
from smartrouter.errors import SmartrouterError

# The columns of the engine's truth files (world.live.TRUTH_COLUMNS) this report reads.
NEEDED_COLUMNS: tuple[str, ...] = (
    "ATTEMPT_ID", "ORDER_ID", "DAY", "CREATED_AT", "ATTEMPT_NUMBER", "ARM", "SOURCE", "MODEL_VERSION", "CHOSEN",
    "PROPENSITY", "RULES_CHOICE", "P_CHOSEN", "P_RULES", "P_BEST", "STATUS", "APPROVED", "OUTAGE_PROCESSORS",
    "LATENCY_MS",
)
BLOCK_DAYS = 3
LEVEL = 0.95
# The must-show bars, shown beside each number (the report states them, it does not tune them).
GAIN_SHARE_BAR = 0.80
DOWN_WITHIN_FAILURES = 20
OUTAGE_RECOVERY_BAR = 0.80
OPE_TOLERANCE = 0.005  # ±0.5 pp
OPE_ESTIMATORS: tuple[str, ...] = ("IPS", "SNIPS")
TREATMENT = "treatment"  # routing.experiment.TREATMENT (not imported: the report must not pull in the service)
PROBE_SOURCE = "exploration"
# What the service's health tracker counts as a failure; PROCESSING is unresolved, so it is no signal yet.
FAILED_STATUSES: frozenset[str] = frozenset({"DECLINED", "TIMEOUT", "ERROR"})
FAILOVER_SOURCE = "failover"
NOT_MARKED = "not marked DOWN"
STOP_EVIDENCE = 3.0  # expected attempts on a processor that must be missing before "it stopped being chosen"
ALL_ARMS = "all"
# Added to the run reports' CSS: the wide tables keep each number on one line and scroll sideways.
_CSS = "table.live { font-size: .8rem; } table.live td.num { white-space: nowrap; }"


class LiveReportError(SmartrouterError):
    """The live state is missing or malformed; the message names the file and the fix."""


# ---------------------------------------------------------------- inputs
def resolve_live_dir(settings: Settings) -> Path:
    """The live folder of the local world (the engine's one definition)."""
    try:
        from smartrouter.world.live import live_dir
    except ImportError as exc:
        raise LiveReportError(f"the live engine is not available ({exc}); pass the live folder explicitly "
                              "(--live-dir) or update the checkout") from None
    return Path(live_dir(settings))


def _is_day(stem: str) -> bool:
    try:
        dt.date.fromisoformat(stem)
    except ValueError:
        return False  # a temporary file of an atomic write, or something else: not a completed day
    return True


def load_truth(live: str | Path) -> pd.DataFrame:
    """Every completed day's truth rows, oldest first; raises LiveReportError naming what is wrong."""
    folder = Path(live) / "truth"
    files = sorted(p for p in folder.glob("*.parquet") if _is_day(p.stem)) if folder.is_dir() else []
    if not files:
        raise LiveReportError(f"no completed live day under {folder}: run `smartrouter live --days N` "
                              "(or `smartrouter world advance --days N`) first")
    frames = []
    for path in files:
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line cause
            raise LiveReportError(f"{path} is not a readable parquet file ({type(exc).__name__}: {exc}); "
                                  "delete it and rerun `smartrouter world advance` to redo that day") from None
        missing = [c for c in NEEDED_COLUMNS if c not in frame.columns]
        if missing:
            raise LiveReportError(f"{path} lacks the truth column(s) {', '.join(missing)}; it was written by an "
                                  "older engine: regenerate the live days with the current `smartrouter world advance`")
        frames.append(frame)
    return prepare_truth(pd.concat(frames, ignore_index=True))


def prepare_truth(frame: pd.DataFrame) -> pd.DataFrame:
    """Normalize types (dates, booleans, strings) and check the probabilities; returns a sorted copy."""
    missing = [c for c in NEEDED_COLUMNS if c not in frame.columns]
    if missing:
        raise LiveReportError(f"the truth frame lacks column(s) {', '.join(missing)}; build it with the live engine")
    t = frame.copy()
    t["DAY"] = pd.to_datetime(t["DAY"]).dt.date
    t["CREATED_AT"] = pd.to_datetime(t["CREATED_AT"])
    t["APPROVED"] = t["APPROVED"].astype(bool)
    for col in ("ARM", "SOURCE", "MODEL_VERSION", "CHOSEN", "RULES_CHOICE", "OUTAGE_PROCESSORS", "STATUS"):
        t[col] = t[col].fillna("").astype(str)
    t["ARM"] = t["ARM"].str.lower()  # the engine keeps the warehouse's upper case; the service says lower
    t["STATUS"] = t["STATUS"].str.upper()
    for col in ("P_CHOSEN", "P_RULES", "P_BEST", "PROPENSITY", "LATENCY_MS"):
        t[col] = pd.to_numeric(t[col], errors="coerce").astype(np.float64)
    for col in ("P_CHOSEN", "P_RULES", "P_BEST"):
        bad = ~t[col].between(0.0, 1.0)
        if bad.any():
            raise LiveReportError(f"{int(bad.sum())} truth row(s) have {col} outside [0, 1] (first attempt "
                                  f"{t.loc[bad, 'ATTEMPT_ID'].iloc[0]}); the engine wrote a broken truth file")
    return t.sort_values(["CREATED_AT", "ATTEMPT_ID"], kind="mergesort").reset_index(drop=True)


def read_day_summaries(live: str | Path) -> list[dict[str, Any]]:
    """The engine's per-day summaries (days.jsonl); a torn last line after a crash is skipped."""
    path = Path(live) / "days.jsonl"
    out: list[dict[str, Any]] = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                out.append(row)
    return out


def gate_decisions(settings: Settings, days: Sequence[dt.date]) -> pd.DataFrame:
    """The daily runs that learned from each live day: the run whose data ends with day d (as_of = d + 1, as the
    loop runs them); a run as of the first live day (the loop's bootstrap) is listed under the day before."""
    from smartrouter.pipeline import list_runs

    wanted = {d + dt.timedelta(days=1): d for d in days}
    if days:  # the loop's first run (no promoted model yet) learned from the days before the first live day
        wanted.setdefault(min(days), min(days) - dt.timedelta(days=1))
    rows = []
    for m in list_runs(settings):
        try:
            as_of = dt.date.fromisoformat(str(m.get("as_of")))
        except ValueError:
            continue
        if as_of not in wanted:
            continue
        gate = m.get("gate") or {}
        rows.append({"DAY": wanted[as_of], "run_id": m.get("run_id"), "status": m.get("status"),
                     "decision": gate.get("decision") or ("failed at " + str(m.get("failed_stage"))
                                                           if m.get("status") == "failed" else "not reached"),
                     "model_version": m.get("model_version"), "reasons": "; ".join(gate.get("reasons") or [])})
    return pd.DataFrame(rows, columns=["DAY", "run_id", "status", "decision", "model_version", "reasons"])


def registry_events(settings: Settings, run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Promotions, forced promotions and rollbacks made by the loop's runs (or after the first of them)."""
    from smartrouter.registry import Registry

    ids = set(run_ids)
    events = [e for e in Registry(settings).history() if e.get("action") in ("promote", "force", "rollback")]
    return [e for e in events if e.get("run_id") in ids]


# ---------------------------------------------------------------- computations
def ratio_interval(num: np.ndarray, den: np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """Σnum/Σden with a delta-method interval over the rows (value, low, high); NaN when Σden ≤ 0."""
    from smartrouter.evaluation import _influence

    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    n = len(num)
    # Σden at the scale of rounding error is "no gain to take": a share of it would be noise.
    if n == 0 or float(den.sum()) <= 1e-12 * max(1.0, float(np.abs(den).sum())):
        return float("nan"), float("nan"), float("nan")
    value, infl = _influence(num, den)
    if n < 2:
        return value, float("nan"), float("nan")
    se = math.sqrt(float(infl @ infl) / (n - 1) / n)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return value, value - z * se, value + z * se


def gain_share(frame: pd.DataFrame, level: float = LEVEL) -> tuple[float, float, float]:
    """Share of the oracle's gain over the rules captured by the choices made, with its order-clustered interval."""
    per_order = pd.DataFrame({"ORDER_ID": frame["ORDER_ID"].to_numpy(),
                              "num": (frame["P_CHOSEN"] - frame["P_RULES"]).to_numpy(),
                              "den": (frame["P_BEST"] - frame["P_RULES"]).to_numpy()}).groupby("ORDER_ID", sort=False).sum()
    return ratio_interval(per_order["num"].to_numpy(), per_order["den"].to_numpy(), level)


def _in_outage(frame: pd.DataFrame) -> pd.Series:
    return frame["OUTAGE_PROCESSORS"].str.strip() != ""


def first_attempts(frame: pd.DataFrame) -> pd.DataFrame:
    """The routing decisions a policy comparison is made on (see the module docstring)."""
    return frame[frame["ATTEMPT_NUMBER"] == 1]


def group_metrics(frame: pd.DataFrame, level: float = LEVEL) -> dict[str, Any]:
    """Every per-day/per-arm number of the report for one set of attempts."""
    first = first_attempts(frame)
    converted = frame.groupby("ORDER_ID", sort=False)["APPROVED"].any()
    outage = frame[_in_outage(frame)]
    share, lo, hi = gain_share(first, level)
    lat = frame["LATENCY_MS"].dropna()
    versions = frame.loc[frame["MODEL_VERSION"] != "", "MODEL_VERSION"].value_counts()
    nan = float("nan")
    return {
        "attempts": int(len(frame)),
        "orders": int(len(converted)),
        "orders_converted": int(converted.sum()),
        "conversion": float(converted.mean()) if len(converted) else nan,
        "approval_observed": float(frame["APPROVED"].mean()) if len(frame) else nan,
        "approval_first_observed": float(first["APPROVED"].mean()) if len(first) else nan,
        "approval_true": float(first["P_CHOSEN"].mean()) if len(first) else nan,
        "approval_rules_true": float(first["P_RULES"].mean()) if len(first) else nan,
        "approval_best_true": float(first["P_BEST"].mean()) if len(first) else nan,
        "lift_over_rules_pp": 100.0 * float((first["P_CHOSEN"] - first["P_RULES"]).mean()) if len(first) else nan,
        "gain_share": share, "gain_share_low": lo, "gain_share_high": hi,
        "approval_true_all_attempts": float(frame["P_CHOSEN"].mean()) if len(frame) else nan,
        "outage_attempts": int(len(outage)),
        "approvals_lost_to_outages": float((outage["P_BEST"] - outage["P_CHOSEN"]).sum()),
        "exploration_share": float((frame["SOURCE"] == PROBE_SOURCE).mean()) if len(frame) else nan,
        "latency_p50_ms": float(lat.quantile(0.5)) if len(lat) else nan,
        "latency_p99_ms": float(lat.quantile(0.99)) if len(lat) else nan,
        "model_versions": ", ".join(f"{v} ({c / max(1, len(frame)):.0%})" for v, c in versions.items()),
    }


def _with_arms(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    arms = sorted(frame["ARM"].unique(), key=lambda a: (a != TREATMENT, a))
    return [(a, frame[frame["ARM"] == a]) for a in arms] + [(ALL_ARMS, frame)]


def block_labels(days: Sequence[dt.date], block_days: int = BLOCK_DAYS) -> dict[dt.date, str]:
    """Each live day -> its block ('days 1–3'), counting the loop's days from 1."""
    ordered = sorted(set(days))
    out = {}
    for i, d in enumerate(ordered):
        b = i // block_days
        last = min(len(ordered), (b + 1) * block_days)
        out[d] = f"days {b * block_days + 1}–{last}" if last > b * block_days + 1 else f"day {last}"
    return out


def day_table(truth: pd.DataFrame, level: float = LEVEL) -> pd.DataFrame:
    """One row per simulated day and arm (plus 'all'), the day numbered from 1."""
    order = {d: i + 1 for i, d in enumerate(sorted(truth["DAY"].unique()))}
    rows = []
    for day, frame in truth.groupby("DAY", sort=True):
        for arm, part in _with_arms(frame):
            rows.append({"day": order[day], "DAY": day, "arm": arm, **group_metrics(part, level)})
    return pd.DataFrame(rows)


def block_table(truth: pd.DataFrame, block_days: int = BLOCK_DAYS, level: float = LEVEL) -> pd.DataFrame:
    """The day table's numbers per block of ``block_days`` consecutive live days."""
    labels = block_labels(truth["DAY"].unique(), block_days)
    block = truth["DAY"].map(labels)
    rows = []
    for label in dict.fromkeys(labels[d] for d in sorted(labels)):
        frame = truth[block == label]
        for arm, part in _with_arms(frame):
            rows.append({"block": label, "arm": arm, **group_metrics(part, level)})
    return pd.DataFrame(rows)


def version_spans(truth: pd.DataFrame) -> pd.DataFrame:
    """Each model version served: first and last decision time, attempts, arms (a canary overlaps its champion)."""
    served = truth[truth["MODEL_VERSION"] != ""]
    rows = [{"model_version": v, "first_served": g["CREATED_AT"].min(), "last_served": g["CREATED_AT"].max(),
             "attempts": int(len(g)), "arms": ", ".join(sorted(g["ARM"].unique()))}
            for v, g in served.groupby("MODEL_VERSION", sort=False)]
    out = pd.DataFrame(rows, columns=["model_version", "first_served", "last_served", "attempts", "arms"])
    return out.sort_values("first_served", kind="mergesort").reset_index(drop=True)


def _names_processor(outages: pd.Series, processor: str) -> np.ndarray:
    return ("," + outages.str.replace(" ", "", regex=False) + ",").str.contains(f",{processor},", regex=False).to_numpy()


def _scenario_outage(scenarios: Sequence[tuple[dt.date, Any]], processor: str, start: pd.Timestamp,
                     end: pd.Timestamp) -> Any:
    """The scenario outage (if any) of this processor that overlaps [start, end]; 'busiest' matches any.

    ``scenarios``: (the first live day the scenario ran from, the scenario) -- its ``day`` counts from there.
    """
    for first_day, scenario in scenarios:
        for o in getattr(scenario, "outages", ()) or ():
            if o.processor not in (processor, "busiest"):
                continue
            o_start = pd.Timestamp(first_day) + pd.Timedelta(days=o.day - 1, minutes=o.start_minute)
            o_end = o_start + pd.Timedelta(minutes=o.duration_minutes)
            if o_start <= end and start < o_end:
                return o
    return None


def loop_scenarios(live: str | Path) -> list[tuple[dt.date, Any]]:
    """(first day, scenario) of each loop recorded in the live folder's loop.json (none without one).

    A scenario file that has since moved only costs the outage windows their labels, so it is skipped.
    """
    from smartrouter.live import read_loop_file
    from smartrouter.world.scenario import load_scenario

    try:
        loops = read_loop_file(Path(live)).get("loops", [])
    except SmartrouterError:
        return []  # an unreadable loop record only costs the labels; `smartrouter live` reports it itself
    out = []
    for loop in loops:
        dates = [r.get("date") for r in loop.get("day_records") or [] if r.get("date")]
        if not dates or not loop.get("scenario"):
            continue
        try:
            out.append((dt.date.fromisoformat(min(dates)), load_scenario(loop["scenario"])))
        except (SmartrouterError, OSError, ValueError):
            continue
    return out


def _as_runs(scenario: Any, first_day: dt.date | None) -> list[tuple[dt.date, Any]]:
    if scenario is None or first_day is None:
        return []
    if isinstance(scenario, (list, tuple)):
        return list(scenario)
    return [(first_day, scenario)]


def _stopped_after(window: pd.DataFrame, last: pd.Timestamp, sent: int) -> bool:
    """Did the service stop choosing the processor after ``last``? Only if the rest of the window, at the rate
    it got attempts until then, would have carried at least STOP_EVIDENCE more: a gap that long happens by
    chance with probability about exp(-STOP_EVIDENCE)."""
    until = int((window["CREATED_AT"] <= last).sum())
    rest = len(window) - until
    return rest * sent / max(1, until) >= STOP_EVIDENCE


def outage_windows(truth: pd.DataFrame, scenario: Any = None, level: float = LEVEL) -> pd.DataFrame:
    """Per outage window: failed attempts before the service marked the processor DOWN, and the gap recovered.

    ``scenario`` (optional, labels windows with kind and severity): a scenario that ran from the first live
    day, or a list of (first day, scenario) pairs as ``loop_scenarios`` returns.
    """
    rows = []
    runs = _as_runs(scenario, min(truth["DAY"]) if len(truth) else None)
    flagged = truth[_in_outage(truth)]
    processors = sorted({p.strip() for s in flagged["OUTAGE_PROCESSORS"].unique() for p in s.split(",") if p.strip()})
    for proc in processors:
        on = _names_processor(truth["OUTAGE_PROCESSORS"], proc)
        run_id = np.cumsum(np.r_[True, on[1:] != on[:-1]])  # consecutive runs in time order
        for rid in np.unique(run_id[on]):
            w = truth[(run_id == rid) & on]
            start, end = w["CREATED_AT"].min(), w["CREATED_AT"].max()
            mine = w[w["CHOSEN"] == proc]
            failovers = w[w["SOURCE"] == FAILOVER_SOURCE]
            non_probe = mine[mine["SOURCE"] != PROBE_SOURCE]
            if len(failovers):
                down_at, how = failovers["CREATED_AT"].iloc[0], "first failover decision"
                before = mine[mine["CREATED_AT"] < down_at]
            elif len(non_probe) and _stopped_after(w, non_probe["CREATED_AT"].iloc[-1], len(non_probe)):
                down_at, how = non_probe["CREATED_AT"].iloc[-1], "probes only after this"
                before = mine[mine["CREATED_AT"] <= down_at]
            elif not len(non_probe):
                down_at, how = start, "never chosen in the window"
                before = mine.iloc[:0]
            else:
                down_at, how = pd.NaT, NOT_MARKED
                before = mine
            after = mine[mine["CREATED_AT"] > down_at] if down_at is not pd.NaT else mine.iloc[:0]
            o = _scenario_outage(runs, proc, start, end)
            row = {
                "processor": proc, "start": start, "end": end,
                "kind": getattr(o, "kind", None), "severity": getattr(o, "severity", None),
                "attempts": int(len(w)), "attempts_on_processor": int(len(mine)),
                "marked_down_at": down_at, "how_marked": how,
                "failed_before_down": int(before["STATUS"].isin(FAILED_STATUSES).sum()),
                "after_down_on_processor": int(len(after)),
                "after_down_probes": int((after["SOURCE"] == PROBE_SOURCE).sum()),
                "approvals_lost": float((w["P_BEST"] - w["P_CHOSEN"]).sum()),
            }
            for arm, part in _with_arms(w):
                share, lo, hi = gain_share(first_attempts(part), level)
                row[f"recovered_{arm}"], row[f"recovered_{arm}_low"], row[f"recovered_{arm}_high"] = share, lo, hi
            rows.append(row)
    return pd.DataFrame(rows)


def ope_block(frame: pd.DataFrame, *, n_boot: int = 300, seed: int = 0, level: float = LEVEL) -> list[dict[str, Any]]:
    """IPS/SNIPS of the served policy and of the static rules from these logged first attempts, beside their truth.

    The logged data are built by ``evaluation.logged_data`` from the same fields the warehouse rows carry
    (processor, outcome, arm, the service's source and propensity): the served policy with the logged
    propensity of each row (``naive``: on-policy, weight 1), the rules with the evaluation's served-log
    propensities (``pooled``: with both A/B arms present the rules' choice is learnt from control rows,
    each arm over its share) -- one definition with the daily run's 04_evaluate.
    """
    from smartrouter.evaluation import estimate_policies, logged_data
    from smartrouter.policies import P, one_hot, processor_index

    action = processor_index(frame["CHOSEN"])
    if (action < 0).any():
        first = frame["ATTEMPT_ID"].to_numpy()[np.flatnonzero(action < 0)[0]]
        raise LiveReportError(f"{int((action < 0).sum())} logged attempt(s) name no known processor as CHOSEN "
                              f"(first: attempt {first}); the engine wrote a broken truth file")
    n = len(frame)
    r = np.arange(n)
    ev = pd.DataFrame({"PROCESSOR": frame["CHOSEN"].to_numpy(), "APPROVED": frame["APPROVED"].to_numpy(),
                       "EXPERIMENT_ARM": frame["ARM"].str.upper().to_numpy(),
                       "PROPENSITY": frame["PROPENSITY"].to_numpy(), "ROUTING_SOURCE": frame["SOURCE"].to_numpy()})
    rules_idx = processor_index(frame["RULES_CHOICE"])
    mask = np.ones((n, P), dtype=bool)  # candidates only shape the merchant logger's mixture; every row here is served
    zeros = np.zeros((n, P))  # no outcome model: DM/DR are left out below
    on_policy = logged_data(ev, rules_idx, mode="naive", mask=mask)
    # The served policy put the logged probability on what it chose: weight 1 on every row.
    served = np.zeros((n, P))
    served[r, action] = on_policy.propensity
    tables = [estimate_policies(on_policy, {"served": served}, zeros, n_boot=n_boot, seed=seed, level=level).table,
              estimate_policies(logged_data(ev, rules_idx, mode="pooled", mask=mask), {"rules": one_hot(rules_idx)},
                                zeros, n_boot=n_boot, seed=seed, level=level).table]
    truth = {"served": float(frame["P_CHOSEN"].mean()), "rules": float(frame["P_RULES"].mean())}
    out = []
    for rec in pd.concat(tables, ignore_index=True).to_dict("records"):
        if rec["estimator"] not in OPE_ESTIMATORS:
            continue  # DM/DR with no outcome model are not estimates of anything
        t = truth[rec["policy"]]
        out.append({"policy": rec["policy"], "estimator": rec["estimator"], "n": n, "estimate": rec["estimate"],
                    "ci_low": rec["ci_low"], "ci_high": rec["ci_high"], "truth": t,
                    "error_pp": 100.0 * (rec["estimate"] - t),
                    "covered": bool(rec["ci_low"] <= t <= rec["ci_high"]),
                    "within_tolerance": bool(abs(rec["estimate"] - t) <= OPE_TOLERANCE),
                    "invalid_propensities": int(on_policy.invalid_propensities)})
    return out


def ope_table(truth: pd.DataFrame, block_days: int = BLOCK_DAYS, n_boot: int = 300, seed: int = 0,
              level: float = LEVEL) -> pd.DataFrame:
    """OPE per block and arm (plus 'all') on first attempts, served policy and static rules, IPS and SNIPS."""
    labels = block_labels(truth["DAY"].unique(), block_days)
    block = truth["DAY"].map(labels)
    rows = []
    for label in dict.fromkeys(labels[d] for d in sorted(labels)):
        for arm, part in _with_arms(first_attempts(truth[block == label])):
            rows.extend({"block": label, "arm": arm, **rec}
                        for rec in ope_block(part, n_boot=n_boot, seed=seed, level=level))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the whole report
@dataclass
class LiveReport:
    days: pd.DataFrame
    blocks: pd.DataFrame
    versions: pd.DataFrame
    gates: pd.DataFrame
    outages: pd.DataFrame
    ope: pd.DataFrame
    summaries: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    verdict: dict[str, Any] = field(default_factory=dict)
    rollouts: pd.DataFrame = field(default_factory=pd.DataFrame)  # per day: canary stage, changes, versions' truth

    def to_json(self) -> dict[str, Any]:
        def records(df: pd.DataFrame) -> list[dict[str, Any]]:
            return json.loads(df.to_json(orient="records", date_format="iso"))

        def plain(v: Any) -> Any:  # standard JSON: NaN (an undefined share) becomes null
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, Mapping):
                return {k: plain(x) for k, x in v.items()}
            return v

        return {"verdict": plain(self.verdict), "days": records(self.days), "blocks": records(self.blocks),
                "versions": records(self.versions), "gates": records(self.gates), "outages": records(self.outages),
                "ope": records(self.ope), "day_summaries": self.summaries, "registry_events": self.events,
                "rollouts": records(self.rollouts)}


def verdict(days: pd.DataFrame, outages: pd.DataFrame, ope: pd.DataFrame, overall: Mapping[str, Any]) -> dict[str, Any]:
    """The must-show numbers in one place (the HTML's verdict paragraph and `--json`)."""
    treat = days[days["arm"] == TREATMENT].sort_values("day")
    later = treat[treat["day"] > 1]
    served = ope[(ope["policy"] == "served") & (ope["estimator"] == "SNIPS") & (ope["arm"] == ALL_ARMS)] if len(ope) else ope
    out: dict[str, Any] = {
        "days": int(days["day"].max()) if len(days) else 0,
        "treatment": dict(overall),
        "days_after_first_meeting_gain_bar": int((later["gain_share"] >= GAIN_SHARE_BAR).sum()),
        "days_after_first": int(len(later)),
        "worst_day_gain_share": float(later["gain_share"].min()) if len(later) else float("nan"),
        "outage_windows": int(len(outages)),
        "ope_blocks": int(len(served)),
        "ope_blocks_within_tolerance": int(served["within_tolerance"].sum()) if len(served) else 0,
        "ope_blocks_covered": int(served["covered"].sum()) if len(served) else 0,
    }
    if len(outages):
        # a processor that is the only one its cards may use (AMEX for Amex cards) cannot be failed
        # over: its windows are reported, but not held to the failover bars
        sole = outages["processor"].map(lambda p: not has_alternative(str(p)))
        out["outage_windows_without_alternative"] = int(sole.sum())
        judged = outages[~sole]
        out["outage_windows"] = int(len(judged))
        marked = judged[judged["how_marked"] != NOT_MARKED]
        out["outage_windows_not_marked"] = int(len(judged) - len(marked))
        out["outage_failed_before_down_max"] = int(marked["failed_before_down"].max()) if len(marked) else None
        col = f"recovered_{TREATMENT}" if f"recovered_{TREATMENT}" in outages else f"recovered_{ALL_ARMS}"
        out["outage_recovered_min"] = float(judged[col].min()) if len(judged) else float("nan")
    return out


def has_alternative(processor: str) -> bool:
    """Whether some payment that may go to ``processor`` may also go elsewhere (catalog's hard rules)."""
    for brand in catalog.CARD_BRANDS:
        for currency in catalog.CURRENCIES:
            eligible = catalog.eligible_processors(brand, currency, catalog.PROCESSORS)
            if processor in eligible and len(eligible) > 1:
                return True
    return False


def build_report(settings: Settings | None = None, live: str | Path | None = None, *, scenario: Any = None,
                 truth: pd.DataFrame | None = None, n_boot: int = 300, seed: int = 0) -> LiveReport:
    """Compute every table of the live report from the live folder (or a given truth frame).

    ``scenario``: as ``outage_windows`` takes; by default the scenarios of the loops recorded in loop.json.
    """
    settings = settings or load_settings()
    live = Path(live) if live is not None else resolve_live_dir(settings)
    t = load_truth(live) if truth is None else prepare_truth(truth)
    if t.empty:
        raise LiveReportError(f"the truth under {live} has no attempts; run `smartrouter live --days N` first")
    days = day_table(t)
    gates = gate_decisions(settings, sorted(t["DAY"].unique()))
    outages = outage_windows(t, scenario if scenario is not None else loop_scenarios(live))
    ope = ope_table(t, n_boot=n_boot, seed=seed)
    treat = t[t["ARM"] == TREATMENT]
    overall = group_metrics(treat) if len(treat) else {}
    return LiveReport(days=days, blocks=block_table(t), versions=version_spans(t), gates=gates, outages=outages,
                      ope=ope, summaries=read_day_summaries(live),
                      events=registry_events(settings, [r for r in gates["run_id"] if r]),
                      verdict=verdict(days, outages, ope, overall), rollouts=rollout_days(t, live))


def rollout_days(truth: pd.DataFrame, live: str | Path) -> pd.DataFrame:
    """Per day with a canary rollout: its stage as the day began and ended, the controller's changes (from
    loop.json), and each model version's first attempts in the model arm with their TRUE approval."""
    from smartrouter.live import read_loop_file

    try:
        loops = read_loop_file(Path(live)).get("loops", [])
    except SmartrouterError:
        loops = []
    recorded: dict[str, dict[str, Any]] = {}
    for loop in loops:
        for d in loop.get("day_records") or []:
            r = ((d.get("steps") or {}).get("advance") or {}).get("rollout")
            if r and (r.get("start") or r.get("events")):
                recorded[str(d.get("date"))] = r
    cols = ["DAY", "stage_start", "stage_end", "changes", "versions"]
    first = truth[(truth["ARM"] == TREATMENT) & (truth["ATTEMPT_NUMBER"] == 1) & (truth["MODEL_VERSION"] != "")]
    rows = []
    for day, frame in first.groupby("DAY", sort=True):
        r = recorded.get(str(day))
        by = frame.groupby("MODEL_VERSION")["P_CHOSEN"].agg(["size", "mean"])
        if r is None and len(by) < 2:
            continue

        def stage(x: dict[str, Any] | None) -> str:
            return "–" if not x else (f"{x['candidate']} {x['stage']} ({100 * float(x['share']):.0f} %) beside "
                                      f"{x['champion']}: {x['status']}")

        changes = "; ".join(f"{e['event_time']} {e['applied']} {e['stage']}"
                            f"{' -> ' + e['to_stage'] if e['applied'] == 'advance' else ''}: {e['reason']}"
                            for e in (r or {}).get("events") or [])
        rows.append({"DAY": day, "stage_start": stage((r or {}).get("start")), "stage_end": stage((r or {}).get("end")),
                     "changes": changes or "–",
                     "versions": ", ".join(f"{v}: {int(n):,} first attempts, true approval {100 * m:.2f} %"
                                           for v, (n, m) in by.iterrows())})
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------- HTML
def _pct(v: Any, digits: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{100 * float(v):.{digits}f} %"


def _pp(v: Any, digits: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):+.{digits}f} pp"


def _share_ci(v: Any, lo: Any, hi: Any) -> str:
    if v is None or not math.isfinite(float(v)):
        return "– (rules already best)"
    return f"{_pct(v, 0)} [{_pct(lo, 0)}, {_pct(hi, 0)}]"


def _ts(v: Any) -> str:
    return "–" if v is None or v is pd.NaT or (isinstance(v, float) and math.isnan(v)) else pd.Timestamp(v).strftime("%Y-%m-%d %H:%M")


def plots_png(days: pd.DataFrame) -> bytes | None:
    """True approval, share of the oracle's gain and outage losses over days, as one PNG."""
    if days.empty:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    arms = [a for a in days["arm"].unique() if a != ALL_ARMS]
    ax = axes[0]
    ref = days[days["arm"] == ALL_ARMS].sort_values("day")
    for arm in arms:
        d = days[days["arm"] == arm].sort_values("day")
        ax.plot(d["day"], 100 * d["approval_true"], marker="o", ms=3, label=f"{arm}: choices made")
    ax.plot(ref["day"], 100 * ref["approval_rules_true"], ls="--", color="#757575", label="static rules (same payments)")
    ax.plot(ref["day"], 100 * ref["approval_best_true"], ls=":", color="#2e7d32", label="oracle-best (same payments)")
    ax.set_title("True approval of first attempts (%); rules and best: all arms", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    for arm in arms:
        d = days[days["arm"] == arm].sort_values("day")
        y = 100 * d["gain_share"]
        err = np.vstack([y - 100 * d["gain_share_low"], 100 * d["gain_share_high"] - y])
        ax.errorbar(d["day"], y, yerr=np.nan_to_num(err), marker="o", ms=3, capsize=2, label=arm)
    ax.axhline(100 * GAIN_SHARE_BAR, color="#c62828", lw=1, ls="--", label=f"bar {GAIN_SHARE_BAR:.0%}")
    ax.set_title("Share of the oracle's gain over the rules (%), 95 % CI", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[2]
    ax.bar(ref["day"], ref["approvals_lost_to_outages"], color="#ef6c00")
    ax.set_title("Approvals lost to outages (expected, all arms)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("simulated day", fontsize=8)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def verdict_text(report: LiveReport) -> str:
    """The verdict in plain words for a payments manager."""
    v = report.verdict
    t = v.get("treatment") or {}
    if not t:
        return (f"Over {v['days']} simulated day(s) no payment was routed by the model (no treatment arm); "
                "the tables below show what the static rules earned.")
    parts = [
        f"Over {v['days']} simulated day(s) the model-routed arm's new payments (first attempts) would truly be approved "
        f"{_pct(t['approval_true'])} of the time, against {_pct(t['approval_rules_true'])} had the static rules "
        f"routed the same payments and {_pct(t['approval_best_true'])} with the best possible choice each time: "
        f"the service took {_share_ci(t['gain_share'], t['gain_share_low'], t['gain_share_high'])} of the best "
        f"possible gain over the rules ({_pp(t['lift_over_rules_pp'])} approval). "
        f"{t['orders_converted']:,} of {t['orders']:,} model-routed orders were paid.",
    ]
    if v["days_after_first"]:
        parts.append(f"On {v['days_after_first_meeting_gain_bar']} of the {v['days_after_first']} days after the first "
                     f"it took at least {GAIN_SHARE_BAR:.0%} of that gain (worst day {_pct(v['worst_day_gain_share'], 0)}).")
    if v["outage_windows"]:
        n, missed = v["outage_windows"], v["outage_windows_not_marked"]
        stopped = (f"the service stopped sending to the failing processor after at most "
                   f"{v['outage_failed_before_down_max']} failed attempt(s) (bar: {DOWN_WITHIN_FAILURES})"
                   if missed < n else "")
        never = f"in {missed} of them it never stopped sending to it" if missed else ""
        if n:
            parts.append(f"In {n} outage window(s) {'; '.join(x for x in (stopped, never) if x)}, and its choices "
                         f"recovered at least {_pct(v['outage_recovered_min'], 0)} of the gap between the rules and the "
                         f"best choice there (bar: {OUTAGE_RECOVERY_BAR:.0%}).")
    if v.get("outage_windows_without_alternative"):
        parts.append(f"{v['outage_windows_without_alternative']} outage window(s) hit a processor its cards cannot leave "
                     f"(e.g. Amex cards go only to {catalog.AMEX_PROCESSOR}): nothing to fail over to, so they are listed "
                     "below but not held to these bars.")
    if not v["outage_windows"] and not v.get("outage_windows_without_alternative"):
        parts.append("No processor outage happened in these days.")
    if v["ope_blocks"]:
        parts.append(f"Estimated from the service's own logs alone, the served policy's value was within "
                     f"±{100 * OPE_TOLERANCE:.1f} pp of the truth in {v['ope_blocks_within_tolerance']} of "
                     f"{v['ope_blocks']} {BLOCK_DAYS}-day block(s), and its 95 % interval covered the truth in "
                     f"{v['ope_blocks_covered']}.")
    return " ".join(parts)


DAY_COLUMNS: tuple[tuple[str, str | None, Any], ...] = (
    ("attempts", "attempts", lambda v: f"{int(v):,}"),
    ("orders paid", "orders_converted", lambda v: f"{int(v):,}"),
    ("orders paid %", "conversion", _pct), ("observed approval", "approval_observed", _pct),
    ("observed, 1st attempts", "approval_first_observed", _pct),
    ("TRUE approval of choices, 1st attempts", "approval_true", _pct), ("rules, true", "approval_rules_true", _pct),
    ("best, true", "approval_best_true", _pct), ("lift over rules", "lift_over_rules_pp", _pp),
    ("share of best gain [95 % CI]", None, None),
    ("TRUE approval, all attempts", "approval_true_all_attempts", _pct),
    ("lost to outages", "approvals_lost_to_outages", lambda v: f"{float(v):,.1f}"),
    ("exploring", "exploration_share", _pct), ("latency p50 / p99 ms", None, None),
    ("models served", "model_versions", str),
)
DAY_LEGEND = ("<p class=\"muted\">Columns: <i>observed approval</i> = share of attempts approved; <i>TRUE approval "
              "of choices</i> = mean true approval probability of the processors chosen for first attempts (new "
              "payments); <i>rules, true</i> and <i>best, true</i> = the same payments routed by the static rules (no "
              "failover) and by the best eligible processor; <i>lift</i> in percentage points (pp); <i>share of best gain</i> = (choices − rules) / "
              "(best − rules), its interval a delta method clustered by order; <i>lost to outages</i> = expected "
              "approvals lost against the best choice on attempts made during an outage; <i>exploring</i> = share of "
              "exploration decisions (probes included).</p>")


def _metrics_table(df: pd.DataFrame, first: tuple[tuple[str, str], ...]) -> str:
    from smartrouter.reports import _e

    head = [h for h, _ in first] + [h for h, _, _ in DAY_COLUMNS]
    parts = ['<div style="overflow-x:auto"><table class="live"><tr>'
             + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for rec in df.to_dict("records"):
        cells = [f"<td>{_e(rec[k])}</td>" for _, k in first]
        for h, key, fmt in DAY_COLUMNS:
            if h.startswith("share of"):
                text = _share_ci(rec["gain_share"], rec["gain_share_low"], rec["gain_share_high"])
            elif h.startswith("latency"):
                text = f"{rec['latency_p50_ms']:.1f} / {rec['latency_p99_ms']:.1f}"
            else:
                text = fmt(rec[key])
            cells.append(f"<td class=\"num\">{_e(text)}</td>")
        style = ' style="background:#fafafa"' if rec.get("arm") == ALL_ARMS else ""
        parts.append(f"<tr{style}>" + "".join(cells) + "</tr>")
    parts.append("</table></div>")
    return "".join(parts)


def render_html(report: LiveReport) -> str:
    """The live report page (plain HTML, the run reports' CSS, the plot inline)."""
    from smartrouter.reports import _e, _page

    parts = [f"<style>{_CSS}</style>", '<p class="muted"><a href="../index.html">&larr; all runs</a></p>',
             "<h1>smartrouter live: the service routing a moving world</h1>",
             '<p class="muted">Each simulated day the world\'s payments were routed by the running service; the '
             "world knows the true approval probability of every processor at every moment, so each choice is "
             "compared with what the static rules and the best possible choice would have earned on the same "
             "payment. Percentages are of attempts unless said otherwise; pp = percentage points.</p>",
             f'<h2 id="verdict">Verdict</h2><p>{_e(verdict_text(report))}</p>']
    png = plots_png(report.days)
    if png:
        parts.append('<h2 id="plots">Over days</h2><img class="trend" alt="true approval, share of the oracle\'s gain '
                     f'and outage losses over days" src="data:image/png;base64,{base64.b64encode(png).decode()}">')
    parts.append('<h2 id="days">Per day and arm</h2>' + DAY_LEGEND)
    parts.append(_metrics_table(report.days, (("day", "day"), ("arm", "arm"))))
    parts.append(f'<h2 id="blocks">Per {BLOCK_DAYS}-day block</h2>')
    parts.append(_metrics_table(report.blocks, (("block", "block"), ("arm", "arm"))))
    parts.append('<h2 id="models">Models served and gate decisions</h2><table><tr><th>model version</th>'
                 "<th>first served</th><th>last served</th><th>attempts</th><th>arms</th></tr>")
    for rec in report.versions.to_dict("records"):
        parts.append(f"<tr><td>{_e(rec['model_version'])}</td><td>{_e(_ts(rec['first_served']))}</td>"
                     f"<td>{_e(_ts(rec['last_served']))}</td><td class=\"num\">{rec['attempts']:,}</td>"
                     f"<td>{_e(rec['arms'])}</td></tr>")
    parts.append("</table>")
    if report.gates.empty:
        parts.append('<p class="muted">No daily run learned from these days yet.</p>')
    else:
        parts.append("<table><tr><th>after day</th><th>run</th><th>status</th><th>gate decision</th>"
                     "<th>model produced</th><th>reasons</th></tr>")
        for rec in report.gates.to_dict("records"):
            rid = _e(rec["run_id"])
            parts.append(f"<tr><td>{_e(rec['DAY'])}</td><td><a href=\"../{rid}/index.html\">{rid}</a></td>"
                         f"<td>{_e(rec['status'])}</td><td>{_e(rec['decision'])}</td>"
                         f"<td>{_e(rec['model_version'] or '–')}</td><td>{_e(rec['reasons'])}</td></tr>")
        parts.append("</table>")
    parts.append('<h2 id="outages">Outages</h2>')
    if report.outages.empty:
        parts.append("<p>No processor outage happened in these days.</p>")
    else:
        parts.append(f"<p class=\"muted\">Marked DOWN = the first failover decision in the window (else the moment after "
                     f"which the processor got recovery probes only). Bars: DOWN within {DOWN_WITHIN_FAILURES} failed "
                     f"attempts; at least {OUTAGE_RECOVERY_BAR:.0%} of the rules-vs-best gap recovered.</p>"
                     "<table class=\"live\"><tr><th>processor</th><th>window</th><th>kind / severity</th><th>attempts (on it)</th>"
                     "<th>marked DOWN at</th><th>failed attempts before</th><th>after: on it (probes)</th>"
                     "<th>gap recovered, model arm, 1st attempts [95 % CI]</th><th>gap recovered, all arms</th>"
                     "<th>approvals lost (expected)</th></tr>")
        for rec in report.outages.to_dict("records"):
            kind = f"{rec['kind']} / {rec['severity']}" if rec.get("kind") else "–"
            tr = (_share_ci(rec[f"recovered_{TREATMENT}"], rec[f"recovered_{TREATMENT}_low"],
                            rec[f"recovered_{TREATMENT}_high"]) if f"recovered_{TREATMENT}" in rec else "–")
            parts.append(
                f"<tr><td>{_e(rec['processor'])}</td><td>{_e(_ts(rec['start']))} – {_e(_ts(rec['end']))}</td>"
                f"<td>{_e(kind)}</td><td class=\"num\">{rec['attempts']:,} ({rec['attempts_on_processor']:,})</td>"
                f"<td>{_e(_ts(rec['marked_down_at']))} ({_e(rec['how_marked'])})</td>"
                f"<td class=\"num\">{rec['failed_before_down']}</td>"
                f"<td class=\"num\">{rec['after_down_on_processor']} ({rec['after_down_probes']})</td>"
                f"<td class=\"num\">{_e(tr)}</td><td class=\"num\">{_e(_pct(rec[f'recovered_{ALL_ARMS}'], 0))}</td>"
                f"<td class=\"num\">{rec['approvals_lost']:,.1f}</td></tr>")
        parts.append("</table>")
    parts.append(f'<h2 id="ope">Off-policy estimates from the logs vs the truth</h2><p class="muted">Per '
                 f"{BLOCK_DAYS}-day block, estimated from the logged choices, outcomes and the service's logged "
                 "propensities only (IPS, SNIPS; 95 % Poisson-bootstrap interval), beside the truth on the same "
                 "first attempts. The served policy's estimate with its own propensities is its observed approval; the "
                 f"static rules' is off-policy. Tolerance ±{100 * OPE_TOLERANCE:.1f} pp.</p>")
    parts.append("<table class=\"live\"><tr><th>block</th><th>arm</th><th>policy</th><th>estimator</th><th>attempts</th>"
                 "<th>estimate [95 % CI]</th><th>truth</th><th>error</th><th>interval covers truth</th>"
                 "<th>within tolerance</th></tr>")
    for rec in report.ope.to_dict("records"):
        parts.append(f"<tr><td>{_e(rec['block'])}</td><td>{_e(rec['arm'])}</td><td>{_e(rec['policy'])}</td>"
                     f"<td>{_e(rec['estimator'])}</td><td class=\"num\">{rec['n']:,}</td>"
                     f"<td class=\"num\">{_pct(rec['estimate'], 2)} [{_pct(rec['ci_low'], 2)}, {_pct(rec['ci_high'], 2)}]</td>"
                     f"<td class=\"num\">{_pct(rec['truth'], 2)}</td><td class=\"num\">{_e(_pp(rec['error_pp']))}</td>"
                     f"<td>{'yes' if rec['covered'] else 'no'}</td><td>{'yes' if rec['within_tolerance'] else 'no'}</td></tr>")
    parts.append("</table>")
    if len(report.ope) and report.ope["invalid_propensities"].any():
        bad = report.ope[report.ope["arm"] == ALL_ARMS].drop_duplicates("block")
        parts.append(f"<p class=\"error\">{int(bad['invalid_propensities'].sum()):,} logged first attempt(s) carried no "
                     "valid propensity in (0, 1]; they were counted as deterministic choices (a service logging fault).</p>")
    if len(report.rollouts):
        parts.append('<h2 id="rollouts">Canary rollouts</h2><p class="muted">The rollout controller looked at the '
                     "service's decision log between batches; each change is listed at its event time. Versions: the "
                     "model arm's first attempts per version and the TRUE approval of their choices.</p>"
                     "<table class=\"live\"><tr><th>day</th><th>as the day began</th><th>as it ended</th>"
                     "<th>changes</th><th>versions served</th></tr>")
        for rec in report.rollouts.to_dict("records"):
            parts.append(f"<tr><td>{_e(rec['DAY'])}</td><td>{_e(rec['stage_start'])}</td><td>{_e(rec['stage_end'])}</td>"
                         f"<td>{_e(rec['changes'])}</td><td>{_e(rec['versions'])}</td></tr>")
        parts.append("</table>")
    if report.events:
        parts.append("<h3>Registry events of the loop's runs</h3><ul>" + "".join(
            f"<li>{_e(e.get('at'))}: {_e(e.get('action'))} {_e(e.get('version'))} (run {_e(e.get('run_id'))}): "
            f"{_e(e.get('reason'))}</li>" for e in report.events) + "</ul>")
    return _page("smartrouter live report", "\n".join(parts))


def write_report(report: LiveReport, settings: Settings | None = None) -> Path:
    """Write reports/live/index.html atomically and relist it on reports/index.html; returns its path."""
    from smartrouter.reports import LIVE_REPORT, render_all_runs_index

    settings = settings or load_settings()
    path = atomic.write_text(settings.reports_dir / LIVE_REPORT, render_html(report))
    render_all_runs_index(settings)
    return path


def add_report_arguments(parser: Any) -> Any:
    """The options of `smartrouter live report` (for the CLI module that owns `live`)."""
    parser.add_argument("--json", action="store_true", help="print the report's numbers as JSON")
    parser.add_argument("--live-dir", dest="live_dir", type=Path, default=None, metavar="DIR",
                        help="the live folder to read (default: the local world's live/ folder)")
    parser.add_argument("--scenario", default=None, metavar="FILE|NAME",
                        help="the scenario the days ran (a TOML file or a name in scenarios/), to label outage windows; "
                             "default: the scenarios recorded in the live folder's loop.json")
    return parser


def main_report(args: Any) -> int:
    """`smartrouter live report [--json]`: build the live report; prints its path (or the numbers as JSON with --json).

    ``args`` needs ``json`` (bool); optional ``live_dir`` (a path) and ``scenario`` (a file or a shipped name).
    """
    settings = load_settings()
    scenario = None
    if getattr(args, "scenario", None):
        from smartrouter.live import resolve_scenario_path
        from smartrouter.world.scenario import load_scenario

        scenario = load_scenario(resolve_scenario_path(args.scenario))
    report = build_report(settings, getattr(args, "live_dir", None), scenario=scenario)
    path = write_report(report, settings)
    if getattr(args, "json", False):
        print(json.dumps({"report": str(path), **report.to_json()}, indent=2, default=str))
    else:
        print(verdict_text(report))
        print(f"live report: {path}")
    return 0
