"""Features: THE one list of model inputs, the point-in-time training table, the time split,
feature quality checks and the online feature state the service keeps from outcomes.

Time semantics (shared by the SQL, the pandas reference and the online state): time is cut into
whole UTC minutes (``minute_number``). A time-windowed feature of an attempt created at ``t``
with window ``w`` minutes counts the outcomes of attempts created in ``[floor_minute(t) - w,
floor_minute(t))``: strictly before the attempt (never itself, never later), at most one minute
stale. Outcome kinds: APPROVED; TIMEOUT = a decline whose ERROR_CATEGORY is PROCESSOR_ERROR
(timeouts and processor errors); DECLINED = any other decline. PROCESSING rows are not outcomes.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from smartrouter import catalog, messages
from smartrouter.clock import EventClock
from smartrouter.errors import ConfigError

_log = logging.getLogger("smartrouter.features")

# ---------------------------------------------------------------- constants of the definition
EPOCH = datetime(1970, 1, 1)
HEALTH_WINDOWS: dict[str, int] = {"15M": 15, "1H": 60, "24H": 1440}  # label -> minutes (SQL aliases match)
HEALTH_METRICS: tuple[str, ...] = ("APPROVAL_RATE", "TIMEOUT_RATE", "DECLINE_RATE", "VOLUME")
BIN_HISTORY_MINUTES = 28 * 1440  # BIN x processor history (and its prior) looks back 28 days
BIN_PRIOR_STRENGTH = 20.0  # m in (approvals + m * prior) / (outcomes + m)
# Mexico City has kept UTC-6 all year since 2022 (no DST): a fixed offset, computable without tz data.
LOCAL_UTC_OFFSET_HOURS = -6
# Queries may come up to this much earlier than the newest time a counter has seen (requests
# arriving slightly out of order); older history is dropped to keep memory bounded.
ONLINE_SLACK_MINUTES = 60
# A feature failure on the request path is logged at most once per this many seconds (counted always).
FEATURE_ERROR_LOG_SECONDS = 60.0

APPROVED, TIMEOUT, DECLINED = 0, 1, 2  # outcome kinds (index into count vectors)
# Health columns the models do not see: a processor's 24-hour approval and decline rates follow
# the slow drift of its issuers, so what a model learns from them over the training weeks is a
# time trend that does not carry into the next week. Seen on the default world: ADYEN's 24-hour
# rates moved 1.2 training standard deviations between the validation and the test week and
# shifted the WORLDPAY and ADYEN heads by 1.5-2 pp (per-head ECE above 0.02). The level comes from
# the 28-day BIN history, acute health from the 15-minute and 1-hour windows; the 24-hour timeout
# rate and volume stay. The table keeps every column (EDA, reports, online state).
NOT_MODEL_INPUTS: frozenset[tuple[str, str]] = frozenset({("24H", "APPROVAL_RATE"), ("24H", "DECLINE_RATE")})


# Each message toggle crossed with the card type: cross column -> the toggle column. An issuer answers
# the same message differently by card type and by processor (the world's message effects are per
# toggle x card type x processor, as real issuers' stored-credential and AVS handling is), and a
# toggle's main effect can only carry a processor's card-type-averaged effect. The per-processor
# heads (logistic, the DNN's heads) times these crosses express exactly toggle x card type x
# processor; trees get the pair in one split instead of two. The value is "<CARD_TYPE>|<toggle value>"
# (message_cross_value), missing when either is missing. Being derived from the message columns,
# they change with the configuration: messages.with_config and the joint scorer re-derive them.
CROSSED_WITH = "CARD_TYPE"
MESSAGE_CROSS_TOGGLES: dict[str, str] = {f"{CROSSED_WITH}_X_{toggle}": toggle for toggle in messages.MESSAGE_COLUMNS}
MESSAGE_CROSSES: tuple[str, ...] = tuple(MESSAGE_CROSS_TOGGLES)  # CARD_TYPE_X_MCI_MSI_TYPE, _X_AVS_DATA, _X_MCC


# ---------------------------------------------------------------- feature definitions
@dataclass(frozen=True)
class Feature:
    """One model input: how it is encoded and where its value comes from."""

    name: str
    kind: str  # "categorical" | "numeric"
    source: str  # "attempt" (a column of the attempts view) | "derived" | "health" | "bin_history"
    description: str
    group: str  # card | transaction | user | retry | health
    per_processor: bool = False
    processor: str | None = None
    transform: str = "none"  # numeric only: "none" | "log1p" (applied before scaling)
    encoding: str = "onehot"  # categorical only: "onehot" (vocabulary + unknown) | "hash"
    model_input: bool = True  # False: in the table (EDA, reports, online state) but not encoded for the models

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "source": self.source, "description": self.description,
            "group": self.group, "per_processor": self.per_processor, "processor": self.processor,
            "transform": self.transform, "encoding": self.encoding, "model_input": self.model_input,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Feature":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def health_column(processor: str, window: str, metric: str) -> str:
    """Name of a processor-health column, e.g. HEALTH_WORLDPAY_15M_TIMEOUT_RATE."""
    return f"HEALTH_{processor}_{window}_{metric}"


def bin_columns(processor: str) -> tuple[str, str]:
    """Names of the BIN x processor history columns (smoothed approval, outcome count)."""
    return f"BIN_{processor}_APPROVAL_SMOOTHED", f"BIN_{processor}_OUTCOMES"


def _build_features() -> tuple[Feature, ...]:
    C, N = "categorical", "numeric"
    feats = [
        # card
        Feature("CARD_BIN", C, "attempt", "six-digit BIN, hashed into buckets", "card", encoding="hash"),
        Feature("CARD_BRAND", C, "attempt", "card brand", "card"),
        Feature("CARD_TYPE", C, "attempt", "credit / debit / prepaid", "card"),
        Feature("CARD_LEVEL", C, "attempt", "card level", "card"),
        Feature("BANK", C, "attempt", "issuing bank", "card"),
        Feature("CARD_COUNTRY", C, "attempt", "issuing country", "card"),
        Feature("IS_DOMESTIC_CARD", N, "derived", f"card issued in {catalog.HOME_COUNTRY} (1) or abroad (0)", "card"),
        # transaction
        Feature("AMOUNT", N, "attempt", "amount in its currency (log)", "transaction", transform="log1p"),
        Feature("CURRENCY", C, "attempt", "currency", "transaction"),
        Feature("MCI_MSI_TYPE", C, "attempt", "message configuration CIT / MIT", "transaction"),
        # AVS_CHECKED is the view's older copy of AVS_DATA (same fact): kept in the table, not encoded twice
        Feature("AVS_CHECKED", N, "attempt", "address verification requested", "transaction", model_input=False),
        # the rest of the message configuration and its eligibility facts (smartrouter.messages)
        Feature("AVS_DATA", N, "attempt", "billing address sent for AVS in the message (0/1)", "transaction"),
        Feature("MCC", C, "attempt", "merchant category code sent (4511 airline / 4722 travel package)", "transaction"),
        Feature("STORED_CREDENTIAL", N, "attempt", "card on file with a standing agreement (MIT allowed)", "transaction"),
        Feature("BILLING_ADDRESS", N, "attempt", "customer gave a billing address (AVS allowed)", "transaction"),
        Feature("TRAVEL_PACKAGE", N, "attempt", "booking bundles flight with hotel or car (MCC 4722 allowed)", "transaction"),
        # each message toggle crossed with the card type (MESSAGE_CROSSES)
        *(Feature(cross, C, "derived", f"card type x {toggle} sent, '<card type>|<value>'", "transaction")
          for cross, toggle in MESSAGE_CROSS_TOGGLES.items()),
        Feature("FLIGHT_TYPE", C, "attempt", "domestic / international flight", "transaction"),
        Feature("DAYS_TO_DEPARTURE", N, "attempt", "days from purchase to departure (log)", "transaction", transform="log1p"),
        Feature("PASSENGERS", N, "attempt", "passengers on the booking", "transaction"),
        Feature("FARE_CLASS", C, "attempt", "fare class", "transaction"),
        Feature("CHANNEL", C, "attempt", "web / app", "transaction"),
        Feature("DEVICE", C, "attempt", "device", "transaction"),
        Feature("BROWSER", C, "attempt", "browser", "transaction"),
        Feature("HOUR_LOCAL", C, "derived", "hour of day in Mexico City (UTC-6)", "transaction"),
        # The same hour as a number, because hours are ordered: a tree isolates a contiguous block of
        # hours (the night, the business day) in one or two splits of it, where the one-hot columns need
        # a split per hour; linear heads keep the one-hot form for effects that are not monotone in the
        # hour. Measured on an interactions world (seed 31337, whose strongest hidden term is hour band x
        # channel x processor): XGBoost's share of the oracle's gain 80.7 -> 84.9 % with it.
        Feature("HOUR_LOCAL_NUMBER", N, "derived", "hour of day in Mexico City (UTC-6) as a number 0-23", "transaction"),
        # user
        Feature("IS_RETURNING_CUSTOMER", N, "attempt", "returning customer", "user"),
        Feature("USER_RECENCY_DAYS", N, "attempt", "days since the user's last purchase (log)", "user", transform="log1p"),
        Feature("USER_FREQUENCY", N, "attempt", "user's purchase count (log)", "user", transform="log1p"),
        Feature("USER_MONETARY", N, "attempt", "user's spend (log)", "user", transform="log1p"),
        Feature("FRAUD_RATE_COHORT", C, "attempt", "fraud-rate cohort of the user", "user"),
        Feature("BROWSING_MINUTES", N, "attempt", "minutes browsing before paying (log)", "user", transform="log1p"),
        # retry context
        Feature("NUM_ATTEMPTS_ORDER", N, "attempt", "attempt number within the order", "retry"),
        Feature("PREVIOUS_PROCESSOR", C, "attempt", "processor of the previous attempt (none on a first attempt)", "retry"),
        Feature("PREVIOUS_ORDER_ERROR_CODE", C, "attempt", "decline code of the previous attempt", "retry"),
        Feature("PREVIOUS_HARD_SOFT", C, "derived", "hard / soft class of the previous decline code", "retry"),
        Feature("SEC_SINCE_PREVIOUS_ATTEMPT", N, "attempt", "seconds since the previous attempt (log)", "retry", transform="log1p"),
        Feature("AVG_SEC_BETWEEN_PAYMENT_ATTEMPS", N, "attempt", "mean seconds between the order's attempts (log)", "retry", transform="log1p"),
    ]
    for p in catalog.PROCESSORS:
        smoothed, outcomes = bin_columns(p)
        feats.append(Feature(smoothed, N, "bin_history", f"BIN issuer approval on {p} (approvals / issuer decisions, timeouts "
                             f"left out) over 28 days before the attempt, smoothed toward {p}'s (m={BIN_PRIOR_STRENGTH:g})", "card", True, p))
        feats.append(Feature(outcomes, N, "bin_history", f"BIN issuer decisions on {p} over 28 days before the attempt (log)",
                             "card", True, p, transform="log1p"))
    for p in catalog.PROCESSORS:
        for w in HEALTH_WINDOWS:
            for metric in HEALTH_METRICS:
                feats.append(Feature(
                    health_column(p, w, metric), N, "health",
                    f"{p} {metric.lower().replace('_', ' ')} over the {w.lower()} before the attempt's minute",
                    "health", True, p, transform="log1p" if metric == "VOLUME" else "none",
                    model_input=(w, metric) not in NOT_MODEL_INPUTS))
    return tuple(feats)


FEATURES: tuple[Feature, ...] = _build_features()
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
MODEL_FEATURES: tuple[Feature, ...] = tuple(f for f in FEATURES if f.model_input)  # what the encoder encodes
FEATURES_BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}
HEALTH_COLUMNS: tuple[str, ...] = tuple(f.name for f in FEATURES if f.source == "health")
BIN_COLUMNS: tuple[str, ...] = tuple(f.name for f in FEATURES if f.source == "bin_history")
DERIVED_COLUMNS: tuple[str, ...] = tuple(f.name for f in FEATURES if f.source == "derived")
# Columns of the training table besides the features.
ID_COLUMNS: tuple[str, ...] = ("ATTEMPT_ID", "ORDER_ID", "CREATED_AT", "MINUTE_NUM")
# ROUTING_SOURCE: set on rows the routing service decided (its logged propensity is the one to use)
LOGGING_COLUMNS: tuple[str, ...] = ("PROCESSOR", "EXPERIMENT_ARM", "ALGORITHM_TYPE", "PROPENSITY", "CANDIDATES",
                                    "ROUTING_SOURCE", "MESSAGE_RANDOMIZED", "MESSAGE_PROPENSITY")
LABEL = "APPROVED"
TABLE_COLUMNS: tuple[str, ...] = ID_COLUMNS + LOGGING_COLUMNS + (LABEL,) + FEATURE_NAMES


# ---------------------------------------------------------------- scalar helpers (pandas-free)
def minute_number(at: datetime) -> int:
    """Whole UTC minutes since the epoch (floor), for a naive UTC datetime."""
    if at.tzinfo is not None:  # an aware time: convert to naive UTC
        at = at.replace(tzinfo=None) - (at.utcoffset() or timedelta(0))
    return (at - EPOCH) // timedelta(minutes=1)


def outcome_kind(status: str | None, error_category: str | None) -> int | None:
    """APPROVED / TIMEOUT / DECLINED index of an outcome, or None when it is not one (PROCESSING)."""
    if status == "APPROVED":
        return APPROVED
    if status == "DECLINED":
        return TIMEOUT if error_category == catalog.PROCESSOR_ERROR_CATEGORY else DECLINED
    return None


def counts_toward_bin_history(kind: int | None) -> bool:
    """Whether an outcome counts in the BIN x processor history and its prior: the issuer's decisions only.

    A timeout or processor error reflects the processor's health (the health features), not the
    BIN's issuer; counted here, one outage would depress the BIN's history for 28 days.
    features_bin_history.sql and features_health.sql (A_PRIOR / N_PRIOR) apply the same rule.
    """
    return kind == APPROVED or kind == DECLINED


def health_values(approved: int, timeout: int, declined: int) -> tuple[float, float, float, float]:
    """(approval rate, timeout rate, decline rate, volume) of a window's counts; rates NaN when empty."""
    n = approved + timeout + declined
    if n == 0:
        return math.nan, math.nan, math.nan, 0.0
    return approved / n, timeout / n, declined / n, float(n)


def prior_rate(proc_approved: int, proc_outcomes: int, all_approved: int, all_outcomes: int) -> float:
    """The smoothing prior: the processor's approval, else all processors', else NaN."""
    if proc_outcomes > 0:
        return proc_approved / proc_outcomes
    if all_outcomes > 0:
        return all_approved / all_outcomes
    return math.nan


def smoothed_rate(approved: int, outcomes: int, prior: float, m: float = BIN_PRIOR_STRENGTH) -> float:
    """(approvals + m * prior) / (outcomes + m): shrinks a thin BIN history toward the prior."""
    return (approved + m * prior) / (outcomes + m)


def is_missing(v: Any) -> bool:
    """None, NaN or NaT (what the encoder and the derived features read as a missing value)."""
    try:
        return v is None or bool(v != v)  # NaN and NaT are not equal to themselves
    except (TypeError, ValueError):
        return False


def _toggle_text(value: Any) -> str:
    """A message toggle's value as text: whole numbers without a decimal part (AVS_DATA 1, 1.0 and True
    are all "1"; MCC 4722 and "4722" both "4722"), anything else its stripped string."""
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, float, np.integer, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def message_cross_value(card_type: Any, toggle_value: Any) -> str | None:
    """The value of a MESSAGE_CROSSES column: "<card type>|<toggle value>", None when either is missing."""
    if is_missing(card_type) or is_missing(toggle_value):
        return None
    return f"{card_type}|{_toggle_text(toggle_value)}"


def message_crosses_row(payment: Mapping[str, Any]) -> dict[str, str | None]:
    """The MESSAGE_CROSSES of one payment dict (what derive_row and the joint scorer use)."""
    card_type = payment.get(CROSSED_WITH)
    return {cross: message_cross_value(card_type, payment.get(toggle)) for cross, toggle in MESSAGE_CROSS_TOGGLES.items()}


def add_message_crosses(frame: pd.DataFrame) -> pd.DataFrame:
    """MESSAGE_CROSSES of every row, in place (message_cross_value applied once per distinct pair). An absent
    column reads as missing, as payment.get does in message_crosses_row (e.g. a retry frame without CARD_TYPE)."""
    def column(name: str) -> pd.Series:
        return frame[name] if name in frame.columns else pd.Series(None, index=frame.index, dtype=object)

    card_codes, card_types = pd.factorize(column(CROSSED_WITH), use_na_sentinel=True)
    for cross, toggle in MESSAGE_CROSS_TOGGLES.items():
        codes, values = pd.factorize(column(toggle), use_na_sentinel=True)
        # every (card type, toggle value) pair, the last row and column standing for missing (code -1)
        grid = np.array([[message_cross_value(c, v) for v in [*values, None]] for c in [*card_types, None]], dtype=object)
        frame[cross] = grid[card_codes, codes]
    return frame


def derive_row(payment: Mapping[str, Any]) -> dict[str, Any]:
    """The derived features of one payment dict (pandas-free; the service calls this)."""
    country = payment.get("CARD_COUNTRY")
    created = payment.get("CREATED_AT")
    if isinstance(created, str):
        created = datetime.fromisoformat(created)
    hour = None if is_missing(created) else (created.hour + LOCAL_UTC_OFFSET_HOURS) % 24
    code = payment.get("PREVIOUS_ORDER_ERROR_CODE")
    err = None if is_missing(code) else catalog.ERROR_CODES.get(str(code))
    return {
        "IS_DOMESTIC_CARD": math.nan if is_missing(country) else float(country == catalog.HOME_COUNTRY),
        "HOUR_LOCAL": None if hour is None else f"{hour:02d}",
        "HOUR_LOCAL_NUMBER": math.nan if hour is None else float(hour),
        "PREVIOUS_HARD_SOFT": None if err is None else err.hard_soft,
        **message_crosses_row(payment),
    }


def add_derived(frame: pd.DataFrame) -> pd.DataFrame:
    """Vectorized derive_row over a frame (same definitions; a test proves parity)."""
    out = frame
    country = out["CARD_COUNTRY"]
    out["IS_DOMESTIC_CARD"] = np.where(country.isna(), np.nan, (country == catalog.HOME_COUNTRY).astype(float))
    hours = ((pd.to_datetime(out["CREATED_AT"]).dt.hour + LOCAL_UTC_OFFSET_HOURS) % 24).to_numpy()
    out["HOUR_LOCAL"] = np.array([f"{h:02d}" for h in range(24)], dtype=object)[hours]
    out["HOUR_LOCAL_NUMBER"] = hours.astype(float)
    hard_soft = {c: e.hard_soft for c, e in catalog.ERROR_CODES.items()}
    out["PREVIOUS_HARD_SOFT"] = out["PREVIOUS_ORDER_ERROR_CODE"].map(hard_soft)
    add_message_crosses(out)
    return out


# ---------------------------------------------------------------- training table
def _as_datetime(value: date | datetime | str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ConfigError(f"{value!r} is not a date; give YYYY-MM-DD or an ISO timestamp") from None
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    return datetime(value.year, value.month, value.day)


def _query(conn: Any, name: str, params: dict[str, Any]) -> pd.DataFrame:
    from smartrouter import warehouse

    return warehouse.query_frame(name, params, conn=conn)


def _sql_params(start: datetime, end: datetime) -> dict[str, Any]:
    history_start = start - timedelta(minutes=BIN_HISTORY_MINUTES)
    return {
        "merchant": catalog.MERCHANT,
        "start": start.isoformat(sep=" "),
        "end": end.isoformat(sep=" "),
        "history_start": history_start.isoformat(sep=" "),
        "timeout_category": catalog.PROCESSOR_ERROR_CATEGORY,
        "w_15m": HEALTH_WINDOWS["15M"],
        "w_1h": HEALTH_WINDOWS["1H"],
        "w_24h": HEALTH_WINDOWS["24H"],
        "w_prior": BIN_HISTORY_MINUTES,
        "w_bin": BIN_HISTORY_MINUTES,
    }


def _time_windowed_columns(base: pd.DataFrame, health: pd.DataFrame, bins: pd.DataFrame) -> dict[str, np.ndarray]:
    """Health and BIN columns for every row of ``base`` from the two queries' long counts.

    Light reshaping only: rows are matched by integer positions (searchsorted), never by
    repeated merges, so the wide frame is assembled once.
    """
    n = len(base)
    row_min = base["MINUTE_NUM"].to_numpy(np.int64)
    cols: dict[str, np.ndarray] = {}

    def by_minute(frame: pd.DataFrame) -> np.ndarray:
        """Row i of ``base`` -> row of ``frame`` (sorted by MINUTE_NUM) with the same minute, or -1."""
        keys = frame["MINUTE_NUM"].to_numpy(np.int64)
        pos = np.searchsorted(keys, row_min)
        ok = pos < len(keys)
        ok[ok] = keys[pos[ok]] == row_min[ok]
        return np.where(ok, pos, -1)

    def take(values: np.ndarray, pos: np.ndarray) -> np.ndarray:
        out = np.zeros(n)
        hit = pos >= 0
        out[hit] = values[pos[hit]]
        return out

    per_proc: dict[str, pd.DataFrame] = {p: g.sort_values("MINUTE_NUM") for p, g in health.groupby("PROCESSOR")}
    prior_a: dict[str, np.ndarray] = {}
    prior_n: dict[str, np.ndarray] = {}
    all_a, all_n = np.zeros(n), np.zeros(n)
    for p, g in per_proc.items():
        pos = by_minute(g)
        prior_a[p] = take(g["A_PRIOR"].to_numpy(float), pos)
        prior_n[p] = take(g["N_PRIOR"].to_numpy(float), pos)
        all_a, all_n = all_a + prior_a[p], all_n + prior_n[p]
        if p not in catalog.PROCESSORS:
            continue
        for w in HEALTH_WINDOWS:
            a, t, d = (take(g[f"{k}_{w}"].to_numpy(float), pos) for k in ("A", "T", "D"))
            total = a + t + d
            with np.errstate(invalid="ignore", divide="ignore"):
                cols[health_column(p, w, "APPROVAL_RATE")] = np.where(total > 0, a / total, np.nan)
                cols[health_column(p, w, "TIMEOUT_RATE")] = np.where(total > 0, t / total, np.nan)
                cols[health_column(p, w, "DECLINE_RATE")] = np.where(total > 0, d / total, np.nan)
            cols[health_column(p, w, "VOLUME")] = total
    for p in catalog.PROCESSORS:  # a processor with no outcomes at all in the history
        for w in HEALTH_WINDOWS:
            for metric in HEALTH_METRICS:
                cols.setdefault(health_column(p, w, metric), np.zeros(n) if metric == "VOLUME" else np.full(n, np.nan))

    # BIN history: one row per (BIN, minute, processor) with outcomes; match rows by a joint key
    key = pd.MultiIndex.from_arrays([base["CARD_BIN"].astype(str).to_numpy(), row_min])
    for p in catalog.PROCESSORS:
        sub = bins[bins["PROCESSOR"] == p]
        idx = pd.MultiIndex.from_arrays([sub["CARD_BIN"].astype(str).to_numpy(), sub["MINUTE_NUM"].to_numpy(np.int64)])
        pos = idx.get_indexer(key) if len(sub) else np.full(n, -1)
        a = take(sub["BIN_APPROVED"].to_numpy(float), pos)
        cnt = take(sub["BIN_OUTCOMES"].to_numpy(float), pos)
        pa, pn = prior_a.get(p, np.zeros(n)), prior_n.get(p, np.zeros(n))
        with np.errstate(invalid="ignore", divide="ignore"):
            prior = np.where(pn > 0, pa / pn, np.where(all_n > 0, all_a / all_n, np.nan))
        smoothed, outcomes = bin_columns(p)
        cols[smoothed] = (a + BIN_PRIOR_STRENGTH * prior) / (cnt + BIN_PRIOR_STRENGTH)
        cols[outcomes] = cnt
    return cols


@dataclass
class TableInfo:
    """What a build read and dropped (recorded by the features notebook)."""

    start: datetime
    end: datetime
    rows: int
    processing_excluded: int
    sampled_from: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    cpu_seconds: float = 0.0  # process CPU (DuckDB threads included): a load-independent cost


def build_training_table(
    conn_or_settings: Any,
    start: date | datetime | str,
    end: date | datetime | str,
    *,
    max_rows: int | None = None,
    seed: int = 0,
    health: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per labelled attempt created in [start, end): ids, logging info, APPROVED, every feature.

    Health and BIN histories look back before ``start`` (warm-up). PROCESSING attempts are
    dropped and counted; ``frame.attrs["info"]`` holds a TableInfo. ``max_rows`` keeps a seeded
    uniform sample (time order preserved) after the features are computed. ``health``: the
    features_health rows of a window covering [start, end) when the caller already has them
    (write_training_table queries them once for all its chunks: one row per minute and processor,
    bounded by the window's minutes, not by its attempts).
    """
    from smartrouter import checks, warehouse
    from smartrouter.config import Settings

    t0, c0 = time.perf_counter(), time.process_time()
    start_dt, end_dt = _as_datetime(start), _as_datetime(end)
    if end_dt <= start_dt:
        raise ConfigError(f"feature window is empty: start {start_dt} is not before end {end_dt}; pass start < end")
    if max_rows is not None and max_rows <= 0:
        raise ConfigError(f"max_rows={max_rows} must be positive (or None for every row)")
    params = _sql_params(start_dt, end_dt)
    timings: dict[str, float] = {}

    def run(conn: Any) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        tq = time.perf_counter()
        base = _query(conn, "features_base", params)
        timings["sql_base"] = time.perf_counter() - tq
        tq = time.perf_counter()
        health_rows = _query(conn, "features_health", params) if health is None else health
        timings["sql_health"] = time.perf_counter() - tq
        tq = time.perf_counter()
        bins = _query(conn, "features_bin_history", params)
        timings["sql_bin_history"] = time.perf_counter() - tq
        return base, health_rows, bins

    if isinstance(conn_or_settings, Settings) or conn_or_settings is None:
        with warehouse.connect(conn_or_settings) as conn:
            base, health, bins = run(conn)
    else:
        base, health, bins = run(conn_or_settings)
    health = health.copy(deep=False)  # a caller's frame is not changed by the dtype fix below

    tq = time.perf_counter()
    base, n_processing = checks.labelled(base)
    base = base.reset_index(drop=True)
    base["MINUTE_NUM"] = base["MINUTE_NUM"].astype(np.int64)
    base["CREATED_AT"] = pd.to_datetime(base["CREATED_AT"])
    base["APPROVED"] = base["APPROVED"].astype(np.int8)
    sampled_from = len(base)
    if max_rows is not None and len(base) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(base), size=max_rows, replace=False))
        base = base.iloc[keep].reset_index(drop=True)
    health["MINUTE_NUM"] = health["MINUTE_NUM"].astype(np.int64)
    bins["MINUTE_NUM"] = bins["MINUTE_NUM"].astype(np.int64)
    add_derived(base)
    for col in ("AVS_CHECKED", "IS_RETURNING_CUSTOMER"):
        base[col] = base[col].astype(float)
    windowed = pd.DataFrame(_time_windowed_columns(base, health, bins), index=base.index)
    frame = pd.concat([base, windowed], axis=1)
    frame = frame[list(TABLE_COLUMNS)]
    timings["reshape"] = time.perf_counter() - tq
    info = TableInfo(start_dt, end_dt, len(frame), int(n_processing), sampled_from,
                     time.perf_counter() - t0, timings, time.process_time() - c0)
    frame.attrs["info"] = info
    return frame


# ---------------------------------------------------------------- split
def split_boundaries(end: date | datetime | str, valid_days: int, test_days: int) -> dict[str, str]:
    """ISO boundaries of the time split ending at ``end`` (exclusive): train < valid_start <= valid < test_start <= test."""
    if valid_days < 0 or test_days <= 0:
        raise ConfigError(f"valid_days={valid_days}, test_days={test_days}: need valid_days >= 0 and test_days > 0")
    end_dt = _as_datetime(end)
    test_start = end_dt - timedelta(days=test_days)
    valid_start = test_start - timedelta(days=valid_days)
    return {"valid_start": valid_start.isoformat(), "test_start": test_start.isoformat(), "end": end_dt.isoformat()}


def time_split(frame: pd.DataFrame, valid_days: int, test_days: int, end: date | datetime | str | None = None) -> pd.DataFrame:
    """Adds SPLIT in {train, valid, test} by CREATED_AT: the test window is the latest ``test_days``.

    ``end`` defaults to the midnight after the newest attempt. Boundaries go to ``frame.attrs["split"]``.
    """
    if frame.empty:
        raise ConfigError("cannot split an empty feature table; widen the window or build the world")
    created = pd.to_datetime(frame["CREATED_AT"])
    if end is None:
        newest = created.max()
        end = (newest.normalize() + pd.Timedelta(days=1)).to_pydatetime()
    bounds = split_boundaries(end, valid_days, test_days)
    test_start, valid_start = pd.Timestamp(bounds["test_start"]), pd.Timestamp(bounds["valid_start"])
    split = np.where(created >= test_start, "test", np.where(created >= valid_start, "valid", "train"))
    out = frame.copy()
    out["SPLIT"] = split
    counts = out["SPLIT"].value_counts()
    if counts.get("train", 0) == 0:
        raise ConfigError(
            f"time split leaves no training rows (valid_days={valid_days}, test_days={test_days} over data from "
            f"{created.min()} to {created.max()}); shorten the validation/test windows or widen the lookback")
    bounds.update({f"rows_{k}": int(counts.get(k, 0)) for k in ("train", "valid", "test")})
    out.attrs["split"] = bounds
    return out


def _replace_path(tmp: Any, path: Any) -> None:
    """Move ``tmp`` (file or folder) to ``path``, replacing whatever is there (file or folder) whole."""
    import os
    import shutil
    from pathlib import Path

    tmp, path = Path(tmp), Path(path)
    if path.is_dir() or (path.exists() and tmp.is_dir()):
        # os.replace cannot put anything over a non-empty folder, nor a folder over a file: the old table is
        # moved aside first (readers see the old or the new table, or briefly none, never a mix of the two)
        old = path.with_name(f".{path.name}.{os.getpid()}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        os.replace(tmp, path)


def write_table(frame: pd.DataFrame, path: Any) -> None:
    """Write a feature table held in memory to one parquet file atomically (temp file, then replace).

    The features stage writes the run's table with ``write_training_table`` instead (a folder of
    parts, never the whole table in memory); every reader here takes either form.
    """
    import os
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    plain = frame.copy(deep=False)
    plain.attrs = {}  # build info objects are not parquet metadata
    try:
        # zstd: ~25 % smaller than the default snappy on the feature table, read as fast
        plain.to_parquet(tmp, index=False, compression="zstd")
        _replace_path(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- the table at scale: built in chunks, read in parts
# The run's table is a folder (``features.parquet/``, Spark's layout) of parts, one per chunk of days,
# each written as soon as it is built: the features stage never holds more than one chunk, and readers
# take only the columns and rows they need (``read_table(columns=, filter=)``, ``iter_table``), so
# memory follows the chunk and the batch, not the length of the history.
PART_NAME = "part-{:05d}-{}.parquet"  # index, first day of the chunk (YYYYMMDD): name order = time order
DEFAULT_MAX_CHUNK_ROWS = 1_000_000  # ~2.5 GB of pandas per chunk; the default world (880K attempts) is one chunk
DEFAULT_SAMPLE_ROWS = 200_000  # the seeded row sample 02 plots, profiles and leakage-checks


def plan_chunks(conn: Any, start: datetime, end: datetime, max_chunk_rows: int) -> list[tuple[datetime, datetime]]:
    """[start, end) cut into windows of whole days, each holding at most ``max_chunk_rows`` attempts
    (from the day counts; a single day above it is its own chunk). One window when everything fits."""
    if max_chunk_rows <= 0:
        raise ConfigError(f"max_chunk_rows={max_chunk_rows} must be positive")
    counts = _query(conn, "features_day_counts", {"merchant": catalog.MERCHANT, "start": start.isoformat(sep=" "),
                                                  "end": end.isoformat(sep=" ")})
    per_day = {pd.Timestamp(d).date(): int(n) for d, n in zip(counts["DAY"], counts["ATTEMPTS"])}
    bounds, lo, rows, day = [], start, 0, start
    while day < end:
        nxt = min(datetime.combine(day.date(), datetime.min.time()) + timedelta(days=1), end)
        n = per_day.get(day.date(), 0)
        if rows and rows + n > max_chunk_rows:
            bounds.append((lo, day))
            lo, rows = day, 0
        rows += n
        day = nxt
    bounds.append((lo, end))
    return bounds


def assign_split(created: pd.Series, bounds: Mapping[str, str]) -> np.ndarray:
    """SPLIT (train / valid / test) of each CREATED_AT for the boundaries of ``split_boundaries``."""
    created = pd.to_datetime(created)
    test_start, valid_start = pd.Timestamp(bounds["test_start"]), pd.Timestamp(bounds["valid_start"])
    return np.where(created >= test_start, "test", np.where(created >= valid_start, "valid", "train"))


def write_training_table(
    conn_or_settings: Any,
    start: date | datetime | str,
    end: date | datetime | str,
    path: Any,
    *,
    valid_days: int,
    test_days: int,
    max_chunk_rows: int = DEFAULT_MAX_CHUNK_ROWS,
    sample_rows: int = DEFAULT_SAMPLE_ROWS,
    max_rows: int | None = None,
    seed: int = 0,
) -> tuple[TableInfo, dict[str, Any], pd.DataFrame]:
    """Build the time-split training table of [start, end) chunk by chunk into the folder ``path``.

    Each chunk (``plan_chunks``: whole days, at most ``max_chunk_rows`` attempts) is built by
    ``build_training_table`` (its BIN history looks back before the chunk, so every row's features are
    those of one build over the whole window: same SQL, same point in time) with the processor health
    queried once for the window, split with the run's boundaries and written as one part. The folder
    appears whole or not at all (a temp folder, then a rename).

    Returns (TableInfo summed over chunks, the split record ``time_split`` gives, a seeded uniform sample
    of at most ``sample_rows`` rows in time order, for the stage's profiles and plots). ``max_rows``
    keeps about that many rows overall (the same share of every chunk).
    """
    import os
    import shutil
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from smartrouter import warehouse
    from smartrouter.config import Settings

    t0, c0 = time.perf_counter(), time.process_time()
    start_dt, end_dt = _as_datetime(start), _as_datetime(end)
    if end_dt <= start_dt:
        raise ConfigError(f"feature window is empty: start {start_dt} is not before end {end_dt}; pass start < end")
    if max_rows is not None and max_rows <= 0:
        raise ConfigError(f"max_rows={max_rows} must be positive (or None for every row)")
    bounds = split_boundaries(end_dt, valid_days, test_days)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    timings: dict[str, float] = {}
    rows = processing = sampled_from = 0
    counts = {"train": 0, "valid": 0, "test": 0}
    created_min = created_max = None
    rng = np.random.default_rng(seed)
    sample_parts: list[pd.DataFrame] = []  # the rows with the smallest random keys so far: a uniform sample
    sample_keys = np.empty(0)

    def build(conn: Any) -> None:
        nonlocal rows, processing, sampled_from, created_min, created_max, sample_keys, sample_parts
        tq = time.perf_counter()
        chunks = plan_chunks(conn, start_dt, end_dt, max_chunk_rows)
        health = _query(conn, "features_health", _sql_params(start_dt, end_dt))
        health["MINUTE_NUM"] = health["MINUTE_NUM"].astype(np.int64)
        timings["sql_health"] = time.perf_counter() - tq
        total_attempts = None
        if max_rows is not None:
            day_counts = _query(conn, "features_day_counts", {"merchant": catalog.MERCHANT,
                                                              "start": start_dt.isoformat(sep=" "), "end": end_dt.isoformat(sep=" ")})
            total_attempts = max(int(day_counts["ATTEMPTS"].sum()), 1)
        for i, (lo, hi) in enumerate(chunks):
            lo_min, hi_min = minute_number(lo), minute_number(hi)
            minutes = health["MINUTE_NUM"].to_numpy()
            own = health[(minutes >= lo_min) & (minutes < hi_min)]
            chunk = build_training_table(conn, lo, hi, health=own, seed=seed + i)
            info = chunk.attrs["info"]
            for k, v in info.timings.items():
                if k != "sql_health":
                    timings[k] = timings.get(k, 0.0) + v
            processing += info.processing_excluded
            sampled_from += info.sampled_from
            if total_attempts is not None and len(chunk):  # the same share of every chunk
                keep_n = min(len(chunk), max(1, round(max_rows * info.sampled_from / total_attempts)))
                keep = np.sort(np.random.default_rng(seed + i).choice(len(chunk), size=keep_n, replace=False))
                chunk = chunk.iloc[keep].reset_index(drop=True)
            if not len(chunk):
                continue
            tw = time.perf_counter()
            chunk["SPLIT"] = assign_split(chunk["CREATED_AT"], bounds)
            for k, v in chunk["SPLIT"].value_counts().items():
                counts[str(k)] += int(v)
            rows += len(chunk)
            lo_c, hi_c = chunk["CREATED_AT"].min(), chunk["CREATED_AT"].max()
            created_min = lo_c if created_min is None else min(created_min, lo_c)
            created_max = hi_c if created_max is None else max(created_max, hi_c)
            chunk.attrs = {}
            pq.write_table(pa.Table.from_pandas(chunk, preserve_index=False), tmp / PART_NAME.format(i, f"{lo:%Y%m%d}"),
                           compression="zstd", row_group_size=250_000)
            if sample_rows > 0:  # keep the rows with the sample_rows smallest uniform keys seen so far
                keys = rng.random(len(chunk))
                pool_keys = np.concatenate([sample_keys, keys])
                if len(pool_keys) > sample_rows:
                    cut = np.partition(pool_keys, sample_rows - 1)[sample_rows - 1]
                    sample_parts = [p[p["_KEY"] <= cut] for p in sample_parts]
                    take = keys <= cut
                else:
                    take = np.ones(len(chunk), dtype=bool)
                part = chunk[take].copy()
                part["_KEY"] = keys[take]
                sample_parts.append(part)
                sample_keys = np.concatenate([p["_KEY"].to_numpy() for p in sample_parts])
            del chunk
            timings["write"] = timings.get("write", 0.0) + time.perf_counter() - tw

    try:
        if isinstance(conn_or_settings, Settings) or conn_or_settings is None:
            with warehouse.connect(conn_or_settings) as conn:
                build(conn)
        else:
            build(conn_or_settings)
        if rows == 0:
            raise ConfigError(f"no labelled attempts in [{start_dt}, {end_dt}); build the world or widen the window "
                              "(run.lookback_days)")
        if counts["train"] == 0:
            raise ConfigError(
                f"time split leaves no training rows (valid_days={valid_days}, test_days={test_days} over data from "
                f"{created_min} to {created_max}); shorten the validation/test windows or widen the lookback")
        _replace_path(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sample = (pd.concat(sample_parts, ignore_index=True).drop(columns="_KEY") if sample_parts
              else pd.DataFrame(columns=list(TABLE_COLUMNS) + ["SPLIT"]))
    sample = sample.sort_values("CREATED_AT", kind="mergesort").reset_index(drop=True)
    split = {**bounds, **{f"rows_{k}": counts[k] for k in ("train", "valid", "test")}}
    info = TableInfo(start_dt, end_dt, rows, processing, sampled_from, time.perf_counter() - t0, timings,
                     time.process_time() - c0)
    sample.attrs = {"info": info, "split": split, "sampled_from_rows": rows}
    return info, split, sample


def table_parts(path: Any) -> list[Any]:
    """The parquet file(s) of a feature table: the parts of a folder in time order, or the one file."""
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        parts = sorted(p for p in path.iterdir() if p.suffix == ".parquet" and not p.name.startswith("."))
        if not parts:
            raise ConfigError(f"{path} holds no parquet parts; rerun the features stage (notebooks/02_features.ipynb)")
        return parts
    if not path.exists():
        raise ConfigError(f"{path} does not exist; run the features stage (notebooks/02_features.ipynb) first")
    return [path]


def table_dataset(path: Any) -> Any:
    """The feature table (one file or a folder of parts) as one pyarrow dataset.

    A column that is empty in one part (all null) and typed in another gets the typed schema
    (``unify_schemas`` permissive), so parts built from chunks of different content read as one table.
    """
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    parts = table_parts(path)
    try:
        schemas = [pq.read_schema(p) for p in parts]
        schema = pa.unify_schemas(schemas, promote_options="permissive") if len(schemas) > 1 else schemas[0]
        return ds.dataset([str(p) for p in parts], schema=schema.with_metadata(schemas[0].metadata), format="parquet")
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"cannot read the feature table {path}: {exc}; rerun the features stage "
                          "(notebooks/02_features.ipynb)") from None


def _to_pandas(table: Any) -> pd.DataFrame:
    return table.to_pandas()


def read_table(path: Any, columns: Iterable[str] | None = None, filter: Any = None) -> pd.DataFrame:
    """Read a feature table written by write_table or write_training_table (a missing one -> ConfigError).

    ``columns``: only these; ``filter``: a pyarrow.dataset expression (e.g. ``created_since(t)``), applied
    while reading, so a stage that needs a few days or a few columns never holds the whole table.
    """
    import pyarrow as pa

    dataset = table_dataset(path)
    out = _to_pandas(dataset.to_table(columns=list(columns) if columns is not None else None, filter=filter))
    pa.default_memory_pool().release_unused()  # Arrow keeps its decode buffers otherwise (~1 GB on the default world)
    return out


def iter_table(path: Any, columns: Iterable[str] | None = None, filter: Any = None,
               batch_rows: int = 250_000) -> Iterable[pd.DataFrame]:
    """The rows of the feature table in time order, as frames of at most ``batch_rows`` rows."""
    dataset = table_dataset(path)
    cols = list(columns) if columns is not None else None
    for fragment in dataset.get_fragments():  # parts in name order = time order
        for batch in fragment.to_batches(columns=cols, filter=filter, batch_size=batch_rows):
            if batch.num_rows:
                yield batch.to_pandas()


def iter_sample(path: Any, *, max_rows: int | None, seed: int = 0, columns: Iterable[str] | None = None,
                filter: Any = None, batch_rows: int = 250_000) -> Iterable[pd.DataFrame]:
    """``iter_table`` keeping a seeded uniform sample of at most ``max_rows`` of the matching rows (time order
    kept; every row when they are fewer or ``max_rows`` is None). The rows are the ones
    ``np.sort(default_rng(seed).choice(n, max_rows, replace=False))`` picks among the n matching rows, as a
    sample of the same rows held in memory would be."""
    chosen = None
    if max_rows is not None:
        if max_rows <= 0:
            raise ConfigError(f"max_rows={max_rows} must be positive (or None for every row)")
        n = table_dataset(path).count_rows(filter=filter)
        if n > max_rows:
            chosen = np.zeros(n, dtype=bool)
            chosen[np.random.default_rng(seed).choice(n, size=int(max_rows), replace=False)] = True
    pos = 0
    for batch in iter_table(path, columns=columns, filter=filter, batch_rows=batch_rows):
        k = len(batch)
        if chosen is not None:
            batch = batch[chosen[pos:pos + k]].reset_index(drop=True)
        pos += k
        if len(batch):
            yield batch


def read_sample(path: Any, *, max_rows: int | None, seed: int = 0, columns: Iterable[str] | None = None,
                filter: Any = None) -> pd.DataFrame:
    """``iter_sample`` as one frame (memory: the sample and one batch, never every matching row)."""
    parts = list(iter_sample(path, max_rows=max_rows, seed=seed, columns=columns, filter=filter))
    if not parts:
        return read_table(path, columns=columns, filter=filter)  # empty, with the table's columns and types
    return pd.concat(parts, ignore_index=True)


def sample_orders(frame: pd.DataFrame, max_orders: int | None, seed: int = 0) -> pd.DataFrame:
    """The rows of a seeded uniform sample of at most ``max_orders`` of ``frame``'s orders (every attempt of a
    kept order, so retry chains stay whole; row order kept). ``frame`` itself when it has no more orders."""
    if not max_orders:
        return frame
    orders = pd.unique(frame["ORDER_ID"].to_numpy())
    if len(orders) <= max_orders:
        return frame
    keep = orders[np.random.default_rng(seed).choice(len(orders), size=int(max_orders), replace=False)]
    return frame[frame["ORDER_ID"].isin(keep).to_numpy()].reset_index(drop=True)


def value_counts(path: Any, column: str, filter: Any = None) -> dict[Any, int]:
    """{value: rows} of one column over the matching rows, counted by Arrow without a pandas copy."""
    counts = table_dataset(path).to_table(columns=[column], filter=filter).column(column).value_counts()
    return {v.as_py(): int(n.as_py()) for v, n in zip(counts.field("values"), counts.field("counts"))}


def created_since(at: Any) -> Any:
    """Filter expression: rows with CREATED_AT >= ``at``."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    return ds.field("CREATED_AT") >= pa.scalar(pd.Timestamp(at).to_pydatetime(), type=pa.timestamp("us"))


def created_before(at: Any) -> Any:
    """Filter expression: rows with CREATED_AT < ``at``."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    return ds.field("CREATED_AT") < pa.scalar(pd.Timestamp(at).to_pydatetime(), type=pa.timestamp("us"))


def split_is(*names: str) -> Any:
    """Filter expression: rows of these splits."""
    import pyarrow.dataset as ds

    return ds.field("SPLIT").isin(list(names))


def first_attempt_rows() -> Any:
    """Filter expression: first attempts of their order (NUM_ATTEMPTS_ORDER 1 or missing, as evaluation.first_attempts)."""
    import pyarrow.dataset as ds

    return (ds.field("NUM_ATTEMPTS_ORDER") == 1) | ds.field("NUM_ATTEMPTS_ORDER").is_null()


def retry_attempt_rows() -> Any:
    """Filter expression: second and later attempts of an order (retry.model.retry_rows)."""
    import pyarrow.dataset as ds

    return ds.field("NUM_ATTEMPTS_ORDER") > 1


def keep_rows_since(path: Any, since: Any) -> tuple[int, int]:
    """Rewrite the feature table keeping only the rows created at or after ``since``: part by part, in Arrow
    (one part in memory, no pandas copy), into a folder of parts that replaces the table whole.
    Returns (rows before, rows kept)."""
    import os
    import shutil
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    dataset = table_dataset(path)
    keep = created_since(since)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.keep")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    before = kept = 0
    try:
        for i, fragment in enumerate(dataset.get_fragments()):
            before += fragment.count_rows()
            rows = fragment.to_table(filter=keep, schema=dataset.schema)
            if rows.num_rows:
                kept += rows.num_rows
                pq.write_table(rows, tmp / Path(fragment.path).name if path.is_dir() else tmp / PART_NAME.format(i, "kept"),
                               compression="zstd", row_group_size=250_000)
            del rows
            pa.default_memory_pool().release_unused()
        if kept == 0:  # a table with no rows left still reads as the table (its columns and types)
            pq.write_table(dataset.schema.empty_table(), tmp / PART_NAME.format(0, "empty"), compression="zstd")
        _replace_path(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return before, kept


class TableColumns:
    """A frame-like view of the table's rows matching ``filter`` that reads one column at a time.

    For column-by-column passes over every row (``FeatureEncoder.fit``, ``feature_quality``): a column
    of millions of rows is small, the whole table is not. Supports ``len``, ``.columns`` and ``[name]``.
    """

    def __init__(self, path: Any, filter: Any = None) -> None:
        self._dataset = table_dataset(path)
        self._filter = filter
        self.columns = pd.Index(self._dataset.schema.names)
        self._n = self._dataset.count_rows(filter=filter)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, name: str) -> pd.Series:
        if name not in self.columns:
            raise KeyError(name)
        return _to_pandas(self._dataset.to_table(columns=[name], filter=self._filter))[name]


# ---------------------------------------------------------------- feature quality
def feature_quality(frame: pd.DataFrame, features: Iterable[Feature] = FEATURES) -> pd.DataFrame:
    """Per feature: kind, null share, range / cardinality, and association with APPROVED.

    Numeric: Pearson correlation with the label. Categorical: correlation of the label with its
    category's approval rate (an in-sample association, for ranking only).
    """
    y = frame[LABEL].astype(float)
    rows = []
    for f in features:
        col = frame[f.name]
        row: dict[str, Any] = {"feature": f.name, "kind": f.kind, "group": f.group, "null_share": float(col.isna().mean())}
        if f.kind == "numeric":
            x = pd.to_numeric(col, errors="coerce").astype(float)
            row.update(min=float(x.min()), max=float(x.max()), mean=float(x.mean()), n_unique=int(x.nunique()))
            ok = x.notna()
            row["corr_approved"] = float(np.corrcoef(x[ok], y[ok])[0, 1]) if ok.sum() > 2 and x[ok].std() > 0 else np.nan
        else:
            s = col.astype("object").where(col.notna(), "__NA__").astype(str)
            rate = y.groupby(s).transform("mean")
            row.update(min=np.nan, max=np.nan, mean=np.nan, n_unique=int(s.nunique()))
            row["corr_approved"] = float(np.corrcoef(rate, y)[0, 1]) if rate.std() > 0 else np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("feature")


# ---------------------------------------------------------------- reference implementation + leakage check
def reference_features(history: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """Brute-force pandas recomputation of the health and BIN features of ``rows`` from ``history``.

    Straight from the definition (filter outcomes created in [floor(t) - w, floor(t)) and count):
    slow, for checking the SQL on a handful of rows. ``history`` needs PROCESSOR, CREATED_AT,
    STATUS, ERROR_CATEGORY, CARD_BIN.
    """
    # the definition's functions, applied once per distinct value (a month of a large merchant's history is
    # millions of outcomes; per-row Python calls over it took minutes)
    s_codes, statuses = pd.factorize(history["STATUS"], use_na_sentinel=False)
    c_codes, categories = pd.factorize(history["ERROR_CATEGORY"], use_na_sentinel=False)
    kind_of = np.array([[outcome_kind(s, c) for c in categories] for s in statuses], dtype=object).reshape(len(statuses), len(categories))
    kinds = kind_of[s_codes, c_codes]
    is_outcome = np.array([k is not None for k in kinds], dtype=bool)
    created = pd.to_datetime(history["CREATED_AT"]).dt.floor("min")
    mcodes, minutes = pd.factorize(created)
    hist_min = np.array([minute_number(t.to_pydatetime()) for t in minutes] + [0], dtype=np.int64)[mcodes][is_outcome]
    kind = kinds[is_outcome].astype(np.int64)
    proc = history["PROCESSOR"].astype(str).to_numpy()[is_outcome]
    card_bin = history["CARD_BIN"].astype(str).to_numpy()[is_outcome]
    order = np.argsort(hist_min, kind="stable")  # time order: a window [a, b) is one slice of the history
    hist_min, kind, proc, card_bin = hist_min[order], kind[order], proc[order], card_bin[order]
    counts_for_bin = np.array([counts_toward_bin_history(k) for k in range(3)], dtype=bool)[kind]

    def window(lo_minute: int, hi_minute: int) -> slice:
        """The outcomes created in [lo_minute, hi_minute)."""
        return slice(int(np.searchsorted(hist_min, lo_minute, "left")), int(np.searchsorted(hist_min, hi_minute, "left")))

    out = []
    for _, r in rows.iterrows():
        m = minute_number(pd.Timestamp(r["CREATED_AT"]).to_pydatetime())
        vals: dict[str, Any] = {"ATTEMPT_ID": r["ATTEMPT_ID"]}
        for p in catalog.PROCESSORS:
            for w, minutes_back in HEALTH_WINDOWS.items():
                sel = window(m - minutes_back, m)
                k = kind[sel][proc[sel] == p]
                counts = [int((k == kk).sum()) for kk in (APPROVED, TIMEOUT, DECLINED)]
                for metric, v in zip(HEALTH_METRICS, health_values(*counts)):
                    vals[health_column(p, w, metric)] = v
        sel = window(m - BIN_HISTORY_MINUTES, m)
        keep = counts_for_bin[sel]
        pk, pp, pb = kind[sel][keep], proc[sel][keep], card_bin[sel][keep]
        all_a, all_n = int((pk == APPROVED).sum()), len(pk)
        same_bin = pb == str(r["CARD_BIN"])
        for p in catalog.PROCESSORS:
            on_p = pp == p
            prior = prior_rate(int((pk[on_p] == APPROVED).sum()), int(on_p.sum()), all_a, all_n)
            bb = pk[on_p & same_bin]
            smoothed, outcomes = bin_columns(p)
            vals[smoothed] = smoothed_rate(int((bb == APPROVED).sum()), len(bb), prior)
            vals[outcomes] = float(len(bb))
        out.append(vals)
    return pd.DataFrame(out)


def compare_features(table: pd.DataFrame, reference: pd.DataFrame, columns: Iterable[str] | None = None) -> float:
    """Largest absolute difference between two frames' feature values (rows matched by ATTEMPT_ID; NaN == NaN)."""
    cols = list(columns or [c for c in reference.columns if c != "ATTEMPT_ID"])
    a = table.set_index("ATTEMPT_ID").loc[reference["ATTEMPT_ID"], cols].to_numpy(float)
    b = reference.set_index("ATTEMPT_ID")[cols].to_numpy(float)
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return math.inf
    both = ~np.isnan(a)
    return float(np.max(np.abs(a[both] - b[both]), initial=0.0))


def span_rows(frame: pd.DataFrame, days: int = 2, seed: int = 0) -> pd.DataFrame:
    """The rows of ``frame`` created within ``days`` days from a seeded random row's day on.

    The leakage check's brute-force history runs from 28 days before its first row to its last: rows
    from a short span keep it a month of outcomes at any history length and merchant size.
    """
    if frame.empty:
        return frame
    created = pd.to_datetime(frame["CREATED_AT"])
    anchor = created.iloc[int(np.random.default_rng(seed).integers(len(frame)))].normalize()
    if anchor + pd.Timedelta(days=days) > created.max():  # near the end: the last ``days`` days instead
        anchor = max(created.max().normalize() - pd.Timedelta(days=days - 1), created.min().normalize())
    return frame[(created >= anchor) & (created < anchor + pd.Timedelta(days=days))]


def leakage_check(conn_or_settings: Any, table: pd.DataFrame, *, n_rows: int = 30, seed: int = 0) -> dict[str, Any]:
    """Recomputes a sample of rows' time-windowed features by brute force from outcomes created
    strictly before each row, and compares with the table (any future or own outcome in the
    table's values would show up as a difference). Returns {"rows", "max_abs_diff", "passed"}.
    """
    sample = table.sample(n=min(n_rows, len(table)), random_state=seed)
    lo = pd.to_datetime(sample["CREATED_AT"]).min().to_pydatetime() - timedelta(minutes=BIN_HISTORY_MINUTES + 1)
    hi = pd.to_datetime(sample["CREATED_AT"]).max().to_pydatetime() + timedelta(minutes=1)
    history = outcome_history(conn_or_settings, lo, hi)
    ref = reference_features(history, sample)
    diff = compare_features(sample, ref)
    return {"rows": len(sample), "max_abs_diff": diff, "passed": bool(diff <= 1e-9)}


def outcome_history(conn_or_settings: Any, since: date | datetime | str, until: date | datetime | str) -> pd.DataFrame:
    """Outcomes created in [since, until) in time order: what an OnlineFeatureState is seeded from."""
    from smartrouter import warehouse
    from smartrouter.config import Settings

    params = {"merchant": catalog.MERCHANT, "since": _as_datetime(since).isoformat(sep=" "),
              "until": _as_datetime(until).isoformat(sep=" ")}
    if isinstance(conn_or_settings, Settings) or conn_or_settings is None:
        with warehouse.connect(conn_or_settings) as conn:
            return _query(conn, "features_online_history", params)
    return _query(conn_or_settings, "features_online_history", params)


def last_attempt_time(conn_or_settings: Any) -> datetime | None:
    """The newest attempt's CREATED_AT in the warehouse (naive UTC), None when it holds none."""
    from smartrouter import warehouse
    from smartrouter.config import Settings

    if isinstance(conn_or_settings, Settings) or conn_or_settings is None:
        with warehouse.connect(conn_or_settings) as conn:
            frame = _query(conn, "freshness", {})
    else:
        frame = _query(conn_or_settings, "freshness", {})
    last = frame["LAST_CREATED_AT"].iloc[0] if len(frame) else None
    return None if last is None or pd.isna(last) else pd.Timestamp(last).to_pydatetime().replace(tzinfo=None)


# ---------------------------------------------------------------- online state (serving)
class WindowedCounts:
    """Outcome counts per minute over a sliding window [m - window, m), bounded memory.

    ``entries`` ([minute, c0, c1, ...], minute order) hold the minutes >= ``lo`` and are summed in
    ``totals``; the window slides forward as queries and outcomes arrive, so a query at the
    newest time costs O(1) amortized. Minutes that slid out stay ``ONLINE_SLACK_MINUTES`` longer
    in ``old`` so a slightly late query is still exact; anything older is dropped.
    """

    __slots__ = ("window", "width", "entries", "totals", "old", "lo")

    def __init__(self, window: int, width: int) -> None:
        self.window = window
        self.width = width
        self.entries: deque[list[int]] = deque()
        self.totals = [0] * width
        self.old: deque[list[int]] = deque()
        self.lo = -(2**62)

    @staticmethod
    def _entry(entries: deque[list[int]], minute: int, width: int) -> list[int]:
        if entries and entries[-1][0] == minute:
            return entries[-1]
        if not entries or entries[-1][0] < minute:
            e = [minute] + [0] * width
            entries.append(e)
            return e
        keys = [x[0] for x in entries]  # out-of-order outcome: rare, keep minute order
        i = bisect.bisect_left(keys, minute)
        if i < len(entries) and entries[i][0] == minute:
            return entries[i]
        e = [minute] + [0] * width
        entries.insert(i, e)
        return e

    def add(self, minute: int, kind: int, *extra: int, now: int | None = None) -> None:
        """Count one outcome of ``kind`` (an index < width) at ``minute``; ``extra`` indices count too.

        ``now`` (a minute): the window slides no further than it, so an outcome stamped a little
        ahead of the clock does not push the present's minutes onto the slow late-query path.
        """
        if minute < self.lo:
            if minute >= self.lo - ONLINE_SLACK_MINUTES:  # late outcome for a minute that slid out
                e = self._entry(self.old, minute, self.width)
                for k in (kind, *extra):
                    e[k + 1] += 1
            return
        e = self._entry(self.entries, minute, self.width)
        for k in (kind, *extra):
            e[k + 1] += 1
            self.totals[k] += 1
        self._slide((minute if now is None or now > minute else now) - self.window)

    def _slide(self, lo: int) -> None:
        if lo <= self.lo:
            return
        entries, totals, old = self.entries, self.totals, self.old
        while entries and entries[0][0] < lo:
            e = entries.popleft()
            for k in range(self.width):
                totals[k] -= e[k + 1]
            old.append(e)
        self.lo = lo
        cut = lo - ONLINE_SLACK_MINUTES
        while old and old[0][0] < cut:
            old.popleft()

    def counts(self, minute: int) -> list[int]:
        """Counts over [minute - window, minute)."""
        lo = minute - self.window
        if lo >= self.lo:
            self._slide(lo)
            res = list(self.totals)
            for e in reversed(self.entries):  # outcomes at or after the query minute
                if e[0] < minute:
                    break
                for k in range(self.width):
                    res[k] -= e[k + 1]
            return res
        if lo < self.lo - ONLINE_SLACK_MINUTES:
            raise ValueError(
                f"history before minute {self.lo - ONLINE_SLACK_MINUTES} was dropped; query times may lag the "
                f"newest outcome by at most {ONLINE_SLACK_MINUTES} minutes")
        res = [0] * self.width  # a late query: sum what is in its window from both deques
        for e in (*self.old, *self.entries):
            if lo <= e[0] < minute:
                for k in range(self.width):
                    res[k] += e[k + 1]
        return res


_HEALTH_NAMES = tuple(
    (p, w, tuple(health_column(p, w, m) for m in HEALTH_METRICS)) for p in catalog.PROCESSORS for w in HEALTH_WINDOWS
)
_BIN_NAMES = tuple((p, bin_columns(p)) for p in catalog.PROCESSORS)


class OnlineFeatureState:
    """Processor health and BIN x processor history maintained from outcomes, for serving.

    Same windows, outcome kinds and smoothing as the training table (a test replays a world and
    compares). Memory is bounded by 28 days of per-minute counts per (BIN, processor) in use.
    """

    def __init__(self, processors: Iterable[str] = catalog.PROCESSORS, clock: EventClock | None = None) -> None:
        self.processors = tuple(processors)
        self._health: dict[str, dict[str, WindowedCounts]] = {}
        self._prior: dict[str, WindowedCounts] = {}
        self._bins: dict[tuple[str, str], WindowedCounts] = {}
        self.observed = 0
        # Event times are checked against this clock: an outcome further ahead than it admits is
        # not stored (it would slide every window past the real outcomes), and a query is never
        # answered for a time past it. Default: the wall clock (history and live outcomes are in the past).
        self.clock = clock or EventClock()
        self.rejected_future = 0
        # the newest minute an outcome or a query has reached: a query earlier than this by more than
        # ONLINE_SLACK_MINUTES is answered as of that bound (the counters dropped older minutes)
        self._head: int | None = None
        # feature failures on the request path: counted, logged once per FEATURE_ERROR_LOG_SECONDS,
        # read by /readyz (never silent, never a traceback per payment)
        self.errors = 0
        self.last_error: str | None = None
        self._error_logged = -float("inf")
        # Per-minute memo of the features every payment in that minute shares (health columns, the
        # processors' BIN priors). Exact, not approximate: a query counts outcomes strictly before its
        # minute, so only a late outcome (an earlier minute than the memo's) can change them; observe()
        # drops the memo then.
        self._memo_minute: int | None = None
        self._memo_health: Mapping[str, float] = {}
        self._memo_priors: dict[str, float] = {}
        for p in self.processors:
            self._ensure(p)

    def _ensure(self, processor: str) -> None:
        if processor not in self._health:
            self._health[processor] = {w: WindowedCounts(m, 3) for w, m in HEALTH_WINDOWS.items()}
            self._prior[processor] = WindowedCounts(BIN_HISTORY_MINUTES, 2)

    def observe(self, processor: str, created_at: datetime, status: str, error_category: str | None = None,
                bin: str | None = None) -> bool:
        """Record one attempt's outcome (created at ``created_at``); PROCESSING is ignored.

        Returns False when the outcome is not stored: not an outcome, or further ahead of the
        clock than it admits (counted in ``rejected_future``).
        """
        kind = outcome_kind(status, error_category)
        if kind is None:
            return False
        minute = minute_number(created_at)
        if not self.clock.admits(minute * 60.0):
            self.rejected_future += 1
            return False
        if self._head is None or minute > self._head:
            self._head = minute
        if self._memo_minute is not None and minute < self._memo_minute:
            self._memo_minute = None
        now = int(self.clock.now() // 60)
        self._ensure(processor)
        for wc in self._health[processor].values():
            wc.add(minute, kind, now=now)
        self.observed += 1
        if not counts_toward_bin_history(kind):
            return True
        # prior and BIN counters hold [issuer decisions, approved]
        extra = (1,) if kind == APPROVED else ()
        self._prior[processor].add(minute, 0, *extra, now=now)
        if bin is not None:
            key = (str(bin), processor)
            wc = self._bins.get(key)
            if wc is None:
                wc = self._bins[key] = WindowedCounts(BIN_HISTORY_MINUTES, 2)
            wc.add(minute, 0, *extra, now=now)
        return True

    def observe_bin(self, processor: str, created_at: datetime, approved: bool, bin: str) -> bool:
        """Count an issuer's decision in the BIN x processor history only.

        For an outcome already counted by `observe` without its BIN (the worker that took it could not
        resolve the payment; the worker that decided it supplies the BIN later): health and the
        processor's prior already hold it.
        """
        minute = minute_number(created_at)
        if not self.clock.admits(minute * 60.0):
            self.rejected_future += 1
            return False
        if self._memo_minute is not None and minute < self._memo_minute:
            self._memo_minute = None
        key = (str(bin), processor)
        wc = self._bins.get(key)
        if wc is None:
            wc = self._bins[key] = WindowedCounts(BIN_HISTORY_MINUTES, 2)
        wc.add(minute, 0, *((1,) if approved else ()), now=int(self.clock.now() // 60))
        return True

    def _query_minute(self, at: datetime) -> int:
        """The minute a query is answered for: ``at``, kept within what the counters hold exactly.

        Never past the clock's limit (a request stamped in the future must not slide the windows
        past every real outcome), never more than ONLINE_SLACK_MINUTES before the newest minute seen
        (the counters dropped older minutes).
        """
        minute = minute_number(at)
        limit = self.clock.limit()
        if limit != float("inf"):
            minute = min(minute, int(limit // 60))
        head = self._head
        if head is None or minute > head:
            self._head = minute
        elif minute < head - ONLINE_SLACK_MINUTES:
            minute = head - ONLINE_SLACK_MINUTES
        return minute

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now - self._error_logged >= FEATURE_ERROR_LOG_SECONDS:
            self._error_logged = now
            _log.error("online features failed (%d so far; logged once per %.0f s): %s", self.errors,
                       FEATURE_ERROR_LOG_SECONDS, self.last_error, exc_info=exc)

    def _shared(self, minute: int) -> tuple[Mapping[str, float], dict[str, float]]:
        """(health columns, BIN prior per processor) for ``minute``, computed once per minute."""
        if self._memo_minute != minute:
            health: dict[str, float] = {}
            for p, w, names in _HEALTH_NAMES:
                windows = self._health.get(p)
                counts = windows[w].counts(minute) if windows else [0, 0, 0]
                health.update(zip(names, health_values(*counts)))
            prior_counts = {p: wc.counts(minute) for p, wc in self._prior.items()}
            all_a = sum(c[1] for c in prior_counts.values())
            all_n = sum(c[0] for c in prior_counts.values())
            priors = {}
            for p in catalog.PROCESSORS:
                c = prior_counts.get(p, [0, 0])
                priors[p] = prior_rate(c[1], c[0], all_a, all_n)
            # read-only: callers share it for the whole minute
            self._memo_health, self._memo_priors, self._memo_minute = MappingProxyType(health), priors, minute
        return self._memo_health, self._memo_priors

    def health_features(self, at: datetime) -> Mapping[str, float]:
        """Health columns (names as in the training table) as of ``at``: outcomes strictly before its minute.

        Read-only mapping, shared by every query in the same minute. A failure is counted and
        logged (see ``errors``), and the columns are then missing (the model reads them as NaN).
        """
        try:
            return self._shared(self._query_minute(at))[0]
        except Exception as exc:  # noqa: BLE001 - counted and logged; the payment is still decided
            self._failed(exc)
            return {}

    def bin_features(self, bin: str, at: datetime) -> dict[str, float]:
        """BIN x processor columns (names as in the training table) as of ``at`` (failures as in `health_features`)."""
        try:
            return self._bin_features(bin, self._query_minute(at))
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
            return {}

    def _bin_features(self, bin: str, minute: int) -> dict[str, float]:
        priors = self._shared(minute)[1]
        bins = self._bins
        key = str(bin)
        out: dict[str, float] = {}
        for p, (smoothed, outcomes) in _BIN_NAMES:
            wc = bins.get((key, p))
            b = wc.counts(minute) if wc is not None else (0, 0)
            out[smoothed] = smoothed_rate(b[1], b[0], priors[p])
            out[outcomes] = float(b[0])
        return out

    def features(self, bin: str, at: datetime) -> dict[str, float]:
        """All time-windowed columns for one payment."""
        out = dict(self.health_features(at))
        out.update(self.bin_features(bin, at))
        return out

    @classmethod
    def from_history(cls, frame: pd.DataFrame, clock: EventClock | None = None) -> "OnlineFeatureState":
        """Seed from past attempts (PROCESSOR, CREATED_AT, STATUS, ERROR_CATEGORY, CARD_BIN), e.g. the last 28 days."""
        missing = {"PROCESSOR", "CREATED_AT", "STATUS", "ERROR_CATEGORY", "CARD_BIN"} - set(frame.columns)
        if missing:
            raise ConfigError(f"history frame lacks columns {sorted(missing)}; select them from the attempts view")
        state = cls(clock=clock)
        ordered = frame.sort_values("CREATED_AT", kind="stable")
        created = [t.to_pydatetime() for t in pd.to_datetime(ordered["CREATED_AT"])]
        cats = ordered["ERROR_CATEGORY"].astype(object).where(ordered["ERROR_CATEGORY"].notna(), None)
        for p, t, s, c, b in zip(ordered["PROCESSOR"], created, ordered["STATUS"], cats, ordered["CARD_BIN"]):
            state.observe(p, t, s, c, b)
        return state
