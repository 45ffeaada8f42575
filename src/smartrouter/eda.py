"""The exploratory analysis the EDA stage notebook (01_extract_eda) shows.

Every computation is an aggregate pushed to the warehouse (one SQL file each, ``sql/eda_*.sql``):
the notebook never pulls the 880K attempts to count them. Row-level data checks run on a bounded
sample of the newest rows. Plot helpers return matplotlib figures (seaborn style) so the notebook
stays one call per section.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from smartrouter import catalog, checks, warehouse
from smartrouter.errors import ConfigError

# Minimum attempts per arm in 7 days before an A/B comparison is worth reading.
AB_MIN_PER_ARM = 1_000
AB_DAYS = 7
# A bucket is part of an incident when at least this share of its attempts timed out.
OUTAGE_TIMEOUT_SHARE = 0.2
OUTAGE_MIN_ATTEMPTS = 10


@dataclass(frozen=True)
class Window:
    """The data window [start, end) in UTC days (end = the as-of date, exclusive)."""

    start: dt.date
    end: dt.date

    @property
    def params(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}

    @property
    def days(self) -> int:
        return (self.end - self.start).days


def window(as_of: str | dt.date, lookback_days: int) -> Window:
    """The window of ``lookback_days`` days before ``as_of`` (as_of itself excluded)."""
    if isinstance(as_of, str):
        try:
            as_of = dt.date.fromisoformat(as_of)
        except ValueError:
            raise ConfigError(f"as_of={as_of!r} is not a date; give YYYY-MM-DD") from None
    if int(lookback_days) <= 0:
        raise ConfigError(f"lookback_days={lookback_days} must be a positive number of days")
    return Window(as_of - dt.timedelta(days=int(lookback_days)), as_of)


def _q(name: str, conn: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
    return warehouse.query_frame(name, params or {}, conn=conn)


# ------------------------------------------------------------------ volume and trend
def volume_trend(conn: Any, win: Window) -> pd.DataFrame:
    """Attempts and outcomes per day and processor."""
    return _q("eda_daily_volume", conn, win.params)


def daily_totals(volume: pd.DataFrame) -> pd.DataFrame:
    """Per day: attempts, orders-ish and approval rate over definite outcomes."""
    d = volume.groupby("DAY", as_index=False)[["ATTEMPTS", "APPROVED", "DECLINED", "PROCESSING"]].sum()
    d["APPROVAL_RATE"] = d["APPROVED"] / (d["APPROVED"] + d["DECLINED"]).where(lambda s: s > 0)
    return d


def summary(volume: pd.DataFrame) -> dict[str, Any]:
    """Headline numbers of the window: attempts, approval rate, PROCESSING share, days, processors."""
    attempts = int(volume["ATTEMPTS"].sum())
    approved = int(volume["APPROVED"].sum())
    declined = int(volume["DECLINED"].sum())
    processing = int(volume["PROCESSING"].sum())
    return {
        "attempts": attempts,
        "days_with_data": int(volume["DAY"].nunique()),
        "attempts_per_day": round(attempts / max(volume["DAY"].nunique(), 1), 1),
        "approval_rate": approved / (approved + declined) if approved + declined else None,
        "processing_share": processing / attempts if attempts else None,
        "processors_seen": sorted(volume["PROCESSOR"].unique().tolist()),
    }


# ------------------------------------------------------------------ approval by segment
def approval_by_segment(conn: Any, win: Window) -> pd.DataFrame:
    """Approval per processor in each segment of brand, currency, card type and amount quartile."""
    return _q("eda_approval_by_segment", conn, win.params)


def best_processor_by_segment(seg: pd.DataFrame, min_attempts: int = 200) -> pd.DataFrame:
    """Per segment, the processor with the highest approval (segments where the best one differs show routing headroom)."""
    s = seg[seg["ATTEMPTS"] >= min_attempts]
    idx = s.groupby(["DIMENSION", "SEGMENT"])["APPROVAL_RATE"].idxmax()
    best = s.loc[idx, ["DIMENSION", "SEGMENT", "PROCESSOR", "APPROVAL_RATE"]].rename(
        columns={"PROCESSOR": "BEST_PROCESSOR", "APPROVAL_RATE": "BEST_APPROVAL"})
    worst = s.groupby(["DIMENSION", "SEGMENT"])["APPROVAL_RATE"].min().rename("WORST_APPROVAL")
    out = best.merge(worst, on=["DIMENSION", "SEGMENT"])
    out["SPREAD_PP"] = 100 * (out["BEST_APPROVAL"] - out["WORST_APPROVAL"])
    return out.reset_index(drop=True)


# ------------------------------------------------------------------ retries
@dataclass
class RetryChains:
    """Attempts per order, success by attempt number, and which processor retries went to."""

    per_order: pd.DataFrame
    by_position: pd.DataFrame
    switches: pd.DataFrame

    @property
    def retry_share(self) -> float:
        """Share of attempts that are retries (attempt number > 1)."""
        total = self.by_position["ATTEMPTS"].sum()
        return float(self.by_position.loc[self.by_position["ATTEMPT_NUMBER"] > 1, "ATTEMPTS"].sum() / total) if total else math.nan

    def approval_at(self, n: int) -> float | None:
        row = self.by_position[self.by_position["ATTEMPT_NUMBER"] == n]
        return float(row["APPROVAL_RATE"].iloc[0]) if len(row) and pd.notna(row["APPROVAL_RATE"].iloc[0]) else None

    @property
    def switch_share(self) -> float:
        """Share of retries sent to a different processor than the previous attempt."""
        r = self.switches
        total = r["RETRIES"].sum()
        return float(r.loc[r["PREVIOUS_PROCESSOR"] != r["RETRY_PROCESSOR"], "RETRIES"].sum() / total) if total else math.nan


def retry_chains(conn: Any, win: Window) -> RetryChains:
    """The retry behaviour of the window (three aggregates)."""
    return RetryChains(
        per_order=_q("eda_attempts_per_order", conn, win.params),
        by_position=_q("eda_retry_by_position", conn, win.params),
        switches=_q("eda_retry_switches", conn, win.params),
    )


# ------------------------------------------------------------------ declines
def declines(conn: Any, win: Window) -> pd.DataFrame:
    """Declines by processor, hard/soft, category and error code."""
    d = _q("eda_declines", conn, win.params)
    d["DESCRIPTION"] = d["ERROR_CODE"].map(lambda c: catalog.ERROR_CODES[c].description if c in catalog.ERROR_CODES else "")
    return d


def hard_soft_by_processor(dec: pd.DataFrame) -> pd.DataFrame:
    """Share of hard vs soft declines per processor (rows: processor, columns: HARD/SOFT)."""
    t = dec.pivot_table(index="PROCESSOR", columns="HARD_SOFT", values="DECLINES", aggfunc="sum", fill_value=0)
    return t.div(t.sum(axis=1), axis=0)


# ------------------------------------------------------------------ routing detail, rules, latency
def routing_detail_keys(conn: Any, win: Window, sample_rows: int = 20_000) -> pd.DataFrame:
    """Keys found in DYNAMIC_ROUTING_DETAIL over the newest ``sample_rows`` attempts, with their coverage."""
    k = _q("eda_routing_detail_keys", conn, {**win.params, "sample_rows": int(sample_rows)})
    n = min(int(sample_rows), int(k["ROWS_WITH_KEY"].max())) if len(k) else 0
    k["SHARE_OF_ROWS"] = k["ROWS_WITH_KEY"] / n if n else math.nan
    return k


def static_rules(conn: Any, merchant: str = catalog.MERCHANT) -> pd.DataFrame:
    """The merchant's static routing rules."""
    return _q("eda_rules", conn, {"merchant": merchant})


def routing_latency(conn: Any, win: Window) -> pd.DataFrame:
    """Routing-engine latency p50/p95/p99 per algorithm."""
    return _q("eda_routing_latency", conn, win.params)


# ------------------------------------------------------------------ outages
def outage_timeline(conn: Any, win: Window, bucket_minutes: int = 60) -> pd.DataFrame:
    """Timeouts and processor errors per processor per time bucket, with the timeout rate."""
    if int(bucket_minutes) <= 0:
        raise ConfigError(f"outage_bucket_minutes={bucket_minutes} must be a positive number of minutes")
    t = _q("eda_outage_timeline", conn, {**win.params, "bucket_minutes": int(bucket_minutes)})
    t["TIMEOUT_RATE"] = t["TIMEOUTS"] / t["ATTEMPTS"].where(t["ATTEMPTS"] > 0)
    return t


def outage_incidents(timeline: pd.DataFrame, threshold: float = OUTAGE_TIMEOUT_SHARE,
                     min_attempts: int = OUTAGE_MIN_ATTEMPTS) -> pd.DataFrame:
    """Runs of consecutive buckets where a processor's timeout rate ≥ ``threshold``: one row per incident."""
    cols = ["PROCESSOR", "START", "END", "BUCKETS", "ATTEMPTS", "TIMEOUTS", "PEAK_TIMEOUT_RATE"]
    hot = timeline[(timeline["ATTEMPTS"] >= min_attempts) & (timeline["TIMEOUT_RATE"] >= threshold)]
    if hot.empty:
        return pd.DataFrame(columns=cols)
    step = timeline["BUCKET"].sort_values().diff().dropna()
    step = step[step > pd.Timedelta(0)].min() if len(step) else pd.Timedelta(hours=1)
    rows = []
    for proc, g in hot.sort_values("BUCKET").groupby("PROCESSOR"):
        incident = (g["BUCKET"].diff() != step).cumsum()
        for _, h in g.groupby(incident):
            rows.append({"PROCESSOR": proc, "START": h["BUCKET"].min(), "END": h["BUCKET"].max() + step,
                         "BUCKETS": len(h), "ATTEMPTS": int(h["ATTEMPTS"].sum()), "TIMEOUTS": int(h["TIMEOUTS"].sum()),
                         "PEAK_TIMEOUT_RATE": float(h["TIMEOUT_RATE"].max())})
    return pd.DataFrame(rows, columns=cols).sort_values("START").reset_index(drop=True)


# ------------------------------------------------------------------ A/B sample size
@dataclass
class ABCheck:
    """Attempts per experiment arm in the last days of the window, and whether each arm is big enough."""

    arms: pd.DataFrame
    days: int
    min_per_arm: int

    @property
    def smallest_arm(self) -> int:
        logged = self.arms[self.arms["ARM"] != "UNLOGGED"]
        return int(logged["ATTEMPTS"].min()) if len(logged) else 0

    @property
    def ok(self) -> bool:
        logged = self.arms[self.arms["ARM"] != "UNLOGGED"]
        return len(logged) >= 2 and self.smallest_arm >= self.min_per_arm

    def detectable_difference_pp(self, alpha_z: float = 1.96, power_z: float = 0.84) -> float | None:
        """Smallest approval difference (pp) the two arms could detect at 5 % two-sided, 80 % power."""
        logged = self.arms[self.arms["ARM"] != "UNLOGGED"]
        if len(logged) < 2 or self.smallest_arm == 0:
            return None
        p = float((logged["APPROVAL_RATE"] * logged["ATTEMPTS"]).sum() / logged["ATTEMPTS"].sum())
        n = self.smallest_arm
        return 100 * (alpha_z + power_z) * math.sqrt(2 * p * (1 - p) / n)


def ab_sample_size(conn: Any, as_of: str | dt.date, days: int = AB_DAYS, min_per_arm: int = AB_MIN_PER_ARM) -> ABCheck:
    """Attempts per experiment arm over the ``days`` days before as_of (≥ min_per_arm each?)."""
    win = window(as_of, days)
    arms = _q("eda_ab_arms", conn, win.params)
    return ABCheck(arms=arms, days=days, min_per_arm=min_per_arm)


# ------------------------------------------------------------------ data checks and fingerprint
def data_checks(conn: Any, win: Window, sample_rows: int = 200_000) -> checks.CheckReport:
    """Row-level checks (schema, nulls, ranges, vocabularies, duplicates, freshness vs as_of) on the newest rows."""
    sample = _q("eda_check_sample", conn, {**win.params, "sample_rows": int(sample_rows)})
    # Freshness is judged against the as-of date, so a backfill is not "stale".
    now = pd.Timestamp(win.end)
    return checks.check_attempts(sample, now=now)


def fingerprint(conn: Any, win: Window) -> dict[str, Any]:
    """What the run read: rows, time span and content hash per table, plus one combined hash."""
    f = _q("eda_fingerprint", conn, win.params)
    tables = []
    h = hashlib.sha256()
    for r in f.to_dict(orient="records"):
        entry = {
            "table": r["TABLE_NAME"],
            "rows": int(r["ROW_COUNT"]),
            "min_created_at": None if pd.isna(r["MIN_CREATED_AT"]) else pd.Timestamp(r["MIN_CREATED_AT"]).isoformat(),
            "max_created_at": None if pd.isna(r["MAX_CREATED_AT"]) else pd.Timestamp(r["MAX_CREATED_AT"]).isoformat(),
            "content_hash": None if pd.isna(r["CONTENT_HASH"]) else str(int(r["CONTENT_HASH"])),
        }
        tables.append(entry)
        h.update(repr(sorted(entry.items())).encode())
    return {"window": win.params, "hash": h.hexdigest()[:16], "tables": tables}


# ------------------------------------------------------------------ plots
def _fig(width: float = 9, height: float = 3.8):
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def plot_volume(volume: pd.DataFrame):
    """Stacked daily attempts per processor with the daily approval rate on a second axis."""
    fig, ax = _fig()
    pivot = volume.pivot_table(index="DAY", columns="PROCESSOR", values="ATTEMPTS", aggfunc="sum", fill_value=0)
    pivot = pivot[[p for p in catalog.PROCESSORS if p in pivot.columns]]
    pivot.index = pd.to_datetime(pivot.index)
    ax.stackplot(pivot.index, pivot.T.values, labels=pivot.columns, alpha=0.85)
    ax.set_ylabel("attempts per day")
    ax.legend(loc="upper left", ncols=len(pivot.columns), fontsize=8)
    tot = daily_totals(volume)
    ax2 = ax.twinx()
    ax2.plot(pd.to_datetime(tot["DAY"]), tot["APPROVAL_RATE"], color="black", lw=1.5, label="approval rate")
    ax2.set_ylim(0.5, 1.0)
    ax2.set_ylabel("approval rate")
    ax2.grid(False)
    ax.set_title("Daily volume by processor and overall approval")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def plot_approval_by_segment(seg: pd.DataFrame):
    """Approval per processor within each segment, one panel per dimension."""
    import seaborn as sns

    g = sns.catplot(data=seg, x="SEGMENT", y="APPROVAL_RATE", hue="PROCESSOR", col="DIMENSION", kind="bar",
                    col_wrap=2, sharex=False, height=2.8, aspect=1.6,
                    hue_order=[p for p in catalog.PROCESSORS if p in set(seg["PROCESSOR"])])
    g.set(ylim=(0.4, 1.0))
    g.set_titles("{col_name}")
    g.set_axis_labels("", "approval rate")
    g.figure.suptitle("Approval per processor by segment", y=1.02, fontweight="bold")
    return g.figure


def plot_retries(rc: RetryChains):
    """Approval by attempt number and the share of orders needing 1, 2, 3… attempts."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
    sns.barplot(data=rc.by_position, x="ATTEMPT_NUMBER", y="APPROVAL_RATE", ax=a1, color="#4c72b0")
    a1.set(title="Approval by attempt number", xlabel="attempt number in the order", ylabel="approval rate", ylim=(0, 1))
    po = rc.per_order.assign(SHARE=lambda d: d["ORDERS"] / d["ORDERS"].sum())
    sns.barplot(data=po, x="N_ATTEMPTS", y="SHARE", ax=a2, color="#55a868")
    a2.set(title="Orders by number of attempts", xlabel="attempts in the order", ylabel="share of orders")
    fig.tight_layout()
    return fig


def plot_declines(dec: pd.DataFrame):
    """Declines per processor broken down by error code, hard codes hatched."""
    import seaborn as sns

    fig, ax = _fig(10, 3.8)
    share = dec.assign(SHARE=dec["DECLINES"] / dec.groupby("PROCESSOR")["DECLINES"].transform("sum"))
    share["CODE"] = share["ERROR_CODE"].astype(str) + " (" + share["HARD_SOFT"].astype(str).str.lower() + ")"
    sns.barplot(data=share, x="PROCESSOR", y="SHARE", hue="CODE", ax=ax)
    ax.set(title="Decline mix per processor (share of that processor's declines)", xlabel="", ylabel="share")
    ax.legend(fontsize=7, ncols=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig


def plot_outages(timeline: pd.DataFrame):
    """Timeout rate per processor over time (outages are the spikes)."""
    import seaborn as sns

    fig, ax = _fig(10, 3.8)
    sns.lineplot(data=timeline, x="BUCKET", y="TIMEOUT_RATE", hue="PROCESSOR", ax=ax, lw=0.9,
                 hue_order=[p for p in catalog.PROCESSORS if p in set(timeline["PROCESSOR"])])
    ax.set(title="Timeout rate per processor over time", xlabel="", ylabel="timeouts / attempts", ylim=(0, 1))
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def plot_latency(lat: pd.DataFrame):
    """Routing-engine latency percentiles per algorithm."""
    fig, ax = _fig(8, 3.0)
    long = lat.melt(id_vars=["ALGORITHM_TYPE"], value_vars=["P50_MS", "P95_MS", "P99_MS"], var_name="PERCENTILE",
                    value_name="MS")
    import seaborn as sns

    sns.barplot(data=long, x="ALGORITHM_TYPE", y="MS", hue="PERCENTILE", ax=ax)
    ax.set(title="Routing decision latency", xlabel="", ylabel="milliseconds")
    fig.tight_layout()
    return fig
