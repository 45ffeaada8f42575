"""The message configuration audit: what the merchant sends today, and what each toggle of the
message (smartrouter.messages.TOGGLES: MIT vs CIT, AVS data on vs off, MCC 4722 vs 4511) does to
approval, per processor and card type.

**Mix.** ``mix_counts`` (sql/message_mix.sql) counts attempts per (processor, card type,
configuration, randomized or not); ``configuration_mix`` turns the merchant's own rows (not the
randomized ones) into each toggle's share, overall and among the payments eligible for it, and
``config_shares`` into the share of every configuration.

**Deltas.** Only the randomized rows (``MESSAGE_RANDOMIZED`` = 1, sql/message_randomized_rows.sql)
are used: there the configuration was drawn uniformly among the payment's eligible ones, so among
the rows eligible for a toggle, "on" and "off" are each drawn with probability 1/2 and carry the
same mix of payments and of the other toggles. The difference of approval rates (on − off) in a
cell (toggle, processor, card type) is then an unbiased estimate of the toggle's effect there; the
merchant's own rows are not (it sends MIT to app payments and retries, AVS to foreign cards).
Each delta gets the two-sample Wald interval and p-value of ``sequential.fixed_horizon`` (the one
used by the A/B readout; the audit looks once).

**Correction: Holm** (``sequential.holm``) over every tested cell. A delta flagged here changes
what is sent for every payment of a processor × card type, so the flag should hold for the whole
list at once: Holm bounds the chance that *any* flagged cell is a false one by ``alpha`` under any
dependence between cells (they share payments across toggles), where Benjamini–Hochberg would only
bound the expected share of false ones. With tens of cells and thousands of rows each, effects of
a few tenths of a logit (2–5 pp) stay detectable after it. "Act on it" = significant after Holm
AND |delta| ≥ ``min_abs_delta_pp`` (message_audit.toml).

**Truth** (synthetic world only). ``true_deltas`` asks the world's oracle, row by row, for the
mean true approval over the row's eligible configurations with the toggle on minus with it off
(on its processor, at its time, outcomes that resolve), and averages over the cell's rows: exactly
what the difference of means estimates on those rows. Rows outside the oracle's span (live days)
have no truth. ``coverage`` is the share of tested cells whose interval holds the truth.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from smartrouter import checks, messages, strict_toml
from smartrouter.errors import ConfigError
from smartrouter.sequential import fixed_horizon, holm

CONFIG_PATH = Path(__file__).resolve().parent / "message_audit.toml"
SCHEMA: dict[str, dict[str, type]] = {"deltas": {"alpha": float, "min_rows": int, "min_abs_delta_pp": float}}
CELL: tuple[str, ...] = ("TOGGLE", "PROCESSOR", "CARD_TYPE")
_NEEDED = ("PROCESSOR", "CARD_TYPE", "STATUS", messages.RANDOMIZED_COLUMN) + messages.MESSAGE_COLUMNS + messages.ELIGIBILITY_COLUMNS


def load_config(path: str | Path | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """message_audit.toml (or ``path``), checked: unknown, missing, mistyped keys and bad values are errors."""
    path = Path(path) if path else CONFIG_PATH
    cfg = strict_toml.load(path, SCHEMA, what="message audit config", home="src/smartrouter/message_audit.toml",
                           overrides=overrides)
    d = cfg["deltas"]
    strict_toml.require(0.0 < d["alpha"] < 1.0, path, "[deltas] alpha", f"= {d['alpha']} must lie strictly between 0 and 1 (e.g. 0.05)")
    strict_toml.require(d["min_rows"] >= 2, path, "[deltas] min_rows", f"= {d['min_rows']} must be at least 2 (e.g. 500)")
    strict_toml.require(d["min_abs_delta_pp"] >= 0.0, path, "[deltas] min_abs_delta_pp",
                        f"= {d['min_abs_delta_pp']} must be >= 0 (percentage points, e.g. 1.0)")
    return cfg


# ------------------------------------------------------------------ mix
def mix_counts(start: Any, end: Any, conn: Any = None, settings: Any = None) -> pd.DataFrame:
    """Attempts per (processor, card type, configuration, randomized) in [start, end) (sql/message_mix.sql)."""
    from smartrouter import warehouse

    return warehouse.query_frame("message_mix", {"start": str(start), "end": str(end)}, conn=conn, settings=settings)


def _merchant_rows(counts: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("PROCESSOR", "CARD_TYPE", "ATTEMPTS", "MESSAGE_RANDOMIZED") + messages.MESSAGE_COLUMNS if c not in counts.columns]
    if missing:
        raise ConfigError(f"message mix counts lack column(s) {missing}; pass the result of mix_counts (sql/message_mix.sql)")
    c = counts[pd.to_numeric(counts["MESSAGE_RANDOMIZED"]).fillna(0) == 0].copy()
    c["CONFIG"] = np.array(messages.CONFIG_KEYS, dtype=object)[messages.config_codes(c)]
    return c


def configuration_mix(counts: pd.DataFrame) -> pd.DataFrame:
    """Per processor and card type, over the merchant's own (not randomized) attempts: attempts,
    approval, each toggle's share of attempts and its share among the attempts eligible for it,
    and the most sent configuration."""
    c = _merchant_rows(counts)
    codes = messages.config_codes(c)
    for t in messages.TOGGLES:
        c[f"_{t.name}_ON"] = c["ATTEMPTS"] * t.config_on[codes]
    rows = []
    for (proc, ctype), g in c.groupby(["PROCESSOR", "CARD_TYPE"], sort=True):
        n = float(g["ATTEMPTS"].sum())
        row: dict[str, Any] = {"PROCESSOR": proc, "CARD_TYPE": ctype, "ATTEMPTS": int(n),
                               "APPROVAL_RATE": float(g["APPROVED"].sum() / g["RESOLVED"].sum()) if g["RESOLVED"].sum() else math.nan}
        for t in messages.TOGGLES:
            on, eligible = float(g[f"_{t.name}_ON"].sum()), float(g[t.eligibility].sum())
            row[f"{t.name}_SHARE"] = on / n if n else math.nan
            row[f"{t.name}_SHARE_OF_ELIGIBLE"] = on / eligible if eligible else math.nan
            row[f"{t.eligibility}_SHARE"] = eligible / n if n else math.nan
        top = g.groupby("CONFIG")["ATTEMPTS"].sum()
        row["TOP_CONFIG"], row["TOP_CONFIG_SHARE"] = str(top.idxmax()), float(top.max() / n)
        rows.append(row)
    return pd.DataFrame(rows)


def mix_sentence(counts: pd.DataFrame) -> str:
    """One sentence computed from the mix: how often each toggle is on today, overall and where allowed,
    and how far the MIT share varies across processor x card type."""
    c = _merchant_rows(counts)
    if c.empty or not c["ATTEMPTS"].sum():
        return "No attempt of the merchant's own traffic carries a message configuration in this window."
    codes = messages.config_codes(c)
    n = float(c["ATTEMPTS"].sum())
    parts = []
    for t, what in zip(messages.TOGGLES, ("MIT", "AVS data", f"the travel-package MCC {messages.PACKAGE_MCC}")):
        on = float((c["ATTEMPTS"] * t.config_on[codes]).sum())
        eligible = float(c[t.eligibility].sum())
        where = f"{100 * on / eligible:.0f} % of those allowed to" if eligible else "none is allowed to"
        parts.append(f"{what} on {100 * on / n:.1f} % of its attempts ({where})")
    mix = configuration_mix(counts)
    big = mix[mix["ATTEMPTS"] >= 0.01 * n]
    lo, hi = big.loc[big["MIT_VS_CIT_SHARE"].idxmin()], big.loc[big["MIT_VS_CIT_SHARE"].idxmax()]
    return (f"Today the merchant sends {parts[0]}, {parts[1]} and {parts[2]}; its MIT share ranges from "
            f"{100 * lo['MIT_VS_CIT_SHARE']:.0f} % ({lo['PROCESSOR']} {lo['CARD_TYPE']}) to {100 * hi['MIT_VS_CIT_SHARE']:.0f} % "
            f"({hi['PROCESSOR']} {hi['CARD_TYPE']}) across processor x card type cells with at least 1 % of the traffic.")


def config_shares(counts: pd.DataFrame) -> pd.DataFrame:
    """Share of each configuration (columns, messages.CONFIG_KEYS order) per processor and card type
    over the merchant's own attempts; rows sum to 1."""
    c = _merchant_rows(counts)
    pivot = c.pivot_table(index=["PROCESSOR", "CARD_TYPE"], columns="CONFIG", values="ATTEMPTS", aggfunc="sum", fill_value=0)
    pivot = pivot.reindex(columns=list(messages.CONFIG_KEYS), fill_value=0)
    return pivot.div(pivot.sum(axis=1), axis=0)


# ------------------------------------------------------------------ deltas
def randomized_rows(start: Any, end: Any, conn: Any = None, settings: Any = None) -> pd.DataFrame:
    """Every column of the randomized attempts with a definite outcome in [start, end) (sql/message_randomized_rows.sql)."""
    from smartrouter import warehouse

    return warehouse.query_frame("message_randomized_rows", {"start": str(start), "end": str(end)}, conn=conn,
                                 settings=settings)


def _prepared(rows: pd.DataFrame) -> pd.DataFrame:
    """The randomized, resolved rows of ``rows`` (upper-case columns), with APPROVED and CONFIG_CODE."""
    f = rows.rename(columns=str.upper)
    missing = [c for c in _NEEDED if c not in f.columns]
    if missing:
        raise ConfigError(f"the audit needs attempt column(s) {missing}; pass rows of the attempts view "
                          "(sql/message_randomized_rows.sql) from a world built with message configurations")
    rand = pd.to_numeric(f[messages.RANDOMIZED_COLUMN], errors="coerce").fillna(0).to_numpy() == 1
    f, _ = checks.labelled(f[rand])  # PROCESSING rows are not outcomes
    f = f.reset_index(drop=True)
    f["CONFIG_CODE"] = messages.config_codes(f)
    return f


def toggle_counts(rows: pd.DataFrame) -> pd.DataFrame:
    """Per cell (toggle, processor, card type), over the randomized rows eligible for the toggle:
    rows and approvals with the toggle off (N_OFF, X_OFF) and on (N_ON, X_ON)."""
    f = _prepared(rows)
    allowed = messages.eligible_matrix(f)
    parts = []
    for t in messages.TOGGLES:
        elig = allowed[:, t.config_on].any(axis=1)  # the payment may send "on"
        g = f[elig]
        on = t.config_on[g["CONFIG_CODE"].to_numpy()]
        agg = (pd.DataFrame({"PROCESSOR": g["PROCESSOR"].to_numpy(), "CARD_TYPE": g["CARD_TYPE"].to_numpy(),
                             "N_ON": on.astype(np.int64), "X_ON": on * g["APPROVED"].to_numpy(np.int64),
                             "N_OFF": (~on).astype(np.int64), "X_OFF": ~on * g["APPROVED"].to_numpy(np.int64)})
               .groupby(["PROCESSOR", "CARD_TYPE"], as_index=False).sum())
        agg.insert(0, "TOGGLE", t.name)
        parts.append(agg)
    out = pd.concat(parts, ignore_index=True)
    return out[list(CELL) + ["N_OFF", "X_OFF", "N_ON", "X_ON"]].astype({c: np.int64 for c in ("N_OFF", "X_OFF", "N_ON", "X_ON")})


def deltas(rows: pd.DataFrame, cfg: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Approval delta (on − off) per cell with its interval, p-value, Holm-adjusted p-value, and
    whether to act on it (see the module docstring); one row per cell, largest |delta| first."""
    d = (cfg or load_config())["deltas"]
    alpha, min_rows, min_delta = float(d["alpha"]), int(d["min_rows"]), float(d["min_abs_delta_pp"]) / 100.0
    table = toggle_counts(rows)
    recs = []
    for r in table.itertuples(index=False):
        iv = fixed_horizon(int(r.N_OFF), int(r.X_OFF), int(r.N_ON), int(r.X_ON), alpha=alpha)
        tested = r.N_OFF + r.N_ON >= min_rows and r.N_OFF > 0 and r.N_ON > 0
        recs.append({"RATE_OFF": iv.rate_a, "RATE_ON": iv.rate_b, "DELTA": iv.lift, "SE": iv.se, "CI_LOW": iv.ci_low,
                     "CI_HIGH": iv.ci_high, "P_VALUE": iv.p_value if tested else math.nan, "TESTED": bool(tested)})
    out = pd.concat([table, pd.DataFrame(recs, index=table.index)], axis=1)
    out.insert(3, "ROWS", out["N_OFF"] + out["N_ON"])
    out["P_HOLM"] = holm(out["P_VALUE"].tolist())
    out["SIGNIFICANT"] = out["TESTED"] & (out["P_HOLM"] < alpha)
    out["ACT"] = out["SIGNIFICANT"] & (out["DELTA"].abs() >= min_delta)
    toggles = messages.TOGGLES_BY_NAME
    out["SEND"] = [f"{toggles[t].column}={toggles[t].on if delta > 0 else toggles[t].off}" if act else ""
                   for t, delta, act in zip(out["TOGGLE"], out["DELTA"], out["ACT"])]
    return out.sort_values(["ACT", "SIGNIFICANT", "DELTA"], key=lambda s: s.abs() if s.name == "DELTA" else s,
                           ascending=False, kind="mergesort").reset_index(drop=True)


# ------------------------------------------------------------------ truth (synthetic world only)
def truth_mask(rows: pd.DataFrame, oracle: Any) -> np.ndarray:
    """Rows the oracle knows: created inside the world's span (live days continue past it)."""
    t = pd.to_datetime(rows.rename(columns=str.upper)["CREATED_AT"])
    start = pd.Timestamp(oracle.start)
    return ((t >= start) & (t < start + pd.Timedelta(seconds=float(oracle.span_sec)))).to_numpy()


def true_deltas(rows: pd.DataFrame, oracle: Any) -> pd.DataFrame:
    """Per cell, the oracle's true delta on the cell's randomized rows inside the oracle's span
    (TRUE_DELTA, TRUTH_ROWS); cells without such rows are absent."""
    f = _prepared(rows)
    f = f[truth_mask(f, oracle)].reset_index(drop=True)
    if f.empty:
        return pd.DataFrame(columns=[*CELL, "TRUE_DELTA", "TRUTH_ROWS"])
    procs = f["PROCESSOR"].astype(str).to_numpy()
    p = np.column_stack([oracle.approval_probability(f, procs, config=np.full(len(f), k), resolved_only=True)
                         for k in range(messages.N_CONFIGS)])
    elig = messages.eligible_matrix(f)
    parts = []
    for t in messages.TOGGLES:
        on_set, off_set = elig & t.config_on[None, :], elig & ~t.config_on[None, :]
        keep = on_set.any(axis=1)
        row_delta = ((p * on_set).sum(1) / np.maximum(on_set.sum(1), 1)) - ((p * off_set).sum(1) / np.maximum(off_set.sum(1), 1))
        g = pd.DataFrame({"PROCESSOR": procs[keep], "CARD_TYPE": f["CARD_TYPE"].to_numpy()[keep], "D": row_delta[keep]})
        agg = g.groupby(["PROCESSOR", "CARD_TYPE"], as_index=False).agg(TRUE_DELTA=("D", "mean"), TRUTH_ROWS=("D", "size"))
        agg.insert(0, "TOGGLE", t.name)
        parts.append(agg)
    return pd.concat(parts, ignore_index=True)


def audit(rows: pd.DataFrame, cfg: Mapping[str, Mapping[str, Any]] | None = None, oracle: Any = None) -> pd.DataFrame:
    """``deltas`` plus, with an oracle, TRUE_DELTA / TRUTH_ROWS / COVERED where the truth exists."""
    table = deltas(rows, cfg)
    if oracle is None:
        return table
    truth = true_deltas(rows, oracle)
    out = table.merge(truth, on=list(CELL), how="left")
    # the truth is of the same rows only when every row of the cell is inside the oracle's span
    same = out["TRUTH_ROWS"].fillna(0).to_numpy() == out["ROWS"].to_numpy()
    out.loc[~same, ["TRUE_DELTA", "TRUTH_ROWS"]] = np.nan
    out["COVERED"] = pd.array([bool(lo <= t <= hi) if s else pd.NA for lo, t, hi, s
                               in zip(out["CI_LOW"], out["TRUE_DELTA"], out["CI_HIGH"], same)], dtype="boolean")
    return out


def coverage(table: pd.DataFrame) -> dict[str, Any]:
    """How many tested cells with a truth have an interval that holds it (the audit's check on itself)."""
    if "COVERED" not in table.columns:
        return {"cells": 0, "covered": 0, "share": math.nan, "note": "no truth: the data did not come from the world"}
    sel = table["TESTED"] & table["COVERED"].notna()
    n, k = int(sel.sum()), int(table.loc[sel, "COVERED"].astype(bool).sum())
    return {"cells": n, "covered": k, "share": k / n if n else math.nan,
            "note": f"{k} of {n} tested cells' 95 % intervals hold the true delta" if n else "no tested cell has a truth"}


def plot_deltas(table: pd.DataFrame) -> Any:
    """Forest plot of the tested cells: delta and 95 % interval (pp) per toggle, the truth as a cross where it exists."""
    import matplotlib.pyplot as plt

    t = table[table["TESTED"]].sort_values(["TOGGLE", "DELTA"]).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(t) + 1.2))
    y = np.arange(len(t))
    colors = np.where(t["ACT"], "tab:red", np.where(t["SIGNIFICANT"], "tab:orange", "tab:gray"))
    ax.hlines(y, 100 * t["CI_LOW"], 100 * t["CI_HIGH"], colors=colors)
    ax.scatter(100 * t["DELTA"], y, c=colors, s=18, label="estimate (red: act on it)")
    if "TRUE_DELTA" in t:
        ax.scatter(100 * t["TRUE_DELTA"], y, marker="x", c="black", s=18, label="truth (world)")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, [f"{a} {b} {c}" for a, b, c in zip(t["TOGGLE"], t["PROCESSOR"], t["CARD_TYPE"])], fontsize=7)
    ax.set(xlabel="approval delta, on - off (pp)", title="Message toggles: approval delta per processor x card type")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def sentence(table: pd.DataFrame, cfg: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """One sentence computed from the deltas table: how many cells were tested, flagged, worth acting on."""
    d = (cfg or load_config())["deltas"]
    tested, sig, act = int(table["TESTED"].sum()), int(table["SIGNIFICANT"].sum()), table[table["ACT"]]
    text = (f"{tested} of {len(table)} cells have at least {int(d['min_rows']):,} randomized rows; {sig} deltas are "
            f"significant after Holm's correction and {len(act)} of them are at least {float(d['min_abs_delta_pp']):g} pp")
    if len(act):
        top = act.iloc[0]
        text += (f"; the largest: {top['TOGGLE']} on {top['PROCESSOR']} {top['CARD_TYPE']} cards, "
                 f"{100 * top['DELTA']:+.1f} pp [{100 * top['CI_LOW']:+.1f}, {100 * top['CI_HIGH']:+.1f}] (send {top['SEND']})")
    return text + "."
