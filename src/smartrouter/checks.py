"""Data checks on what is read back from the warehouse, before anything learns from it.

``check_attempts(frame)`` runs every check and returns a CheckReport (a table for notebooks);
``require(...)`` raises DataCheckError naming the table, the failed check and the offending
count. ``labelled(frame)`` turns STATUS into the 0/1 label, leaving PROCESSING rows out.

Checks apply to the columns the frame has: a narrow extract is checked on what it selected,
with ``required`` naming the columns it must have.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from smartrouter import catalog, messages
from smartrouter.errors import ConfigError, DataCheckError

# Columns every attempt has; the rest may be NULL (ERROR_CODE on an approval, the previous
# attempt's fields on a first attempt, ...).
NON_NULLABLE: tuple[str, ...] = (
    "ATTEMPT_ID", "PAYMENT_ID", "ORDER_ID", "MERCHANT", "CREATED_AT", "PROCESSOR", "PROCESSOR_ID",
    "AMOUNT", "CURRENCY", "CARD_BIN", "CARD_BRAND", "STATUS", "NUM_ATTEMPTS_ORDER", "MCI_MSI_TYPE",
)  # fmt: skip
# What a training extract cannot do without.
REQUIRED_COLUMNS: tuple[str, ...] = (
    "ATTEMPT_ID", "ORDER_ID", "CREATED_AT", "PROCESSOR", "AMOUNT", "CURRENCY", "CARD_BRAND", "STATUS",
)  # fmt: skip
# An airline ticket basket above this (in any of the merchant's currencies) is a unit error.
AMOUNT_CAP = 1_000_000.0
MAX_ATTEMPTS_ORDER = 10
# The local world ends yesterday; a day and a half of slack for a job running late at night.
DEFAULT_MAX_AGE_HOURS = 72.0
# Where a propensity may be found: the routing log, the flat view, or the attempt's JSON detail.
PROPENSITY_COLUMNS: tuple[str, ...] = ("PROPENSITY", "ROUTING_PROPENSITY")
_PROPENSITY_JSON = re.compile(r'"propensity"\s*:\s*(-?[0-9.eE+-]+|null)')

_SQL_KIND = {
    "VARCHAR": "string", "TIMESTAMP_NTZ": "datetime", "FLOAT": "number", "BOOLEAN": "bool", "VARIANT": "json",
}  # fmt: skip


def _kind(sql_type: str) -> str:
    return "integer" if sql_type.startswith("NUMBER") and sql_type.endswith(",0)") else _SQL_KIND.get(sql_type, "any")


@dataclass(frozen=True)
class CheckResult:
    """One check on one column (or the whole table)."""

    check: str
    column: str | None
    offending: int
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.offending == 0


@dataclass
class CheckReport:
    """Every check run on one frame; ``ok`` when all passed."""

    table: str
    rows: int
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def to_frame(self) -> pd.DataFrame:
        """One row per check: check, column, offending count, passed, detail."""
        return pd.DataFrame(
            [
                {"check": r.check, "column": r.column or "", "offending": r.offending, "passed": r.passed, "detail": r.detail}
                for r in self.results
            ],
            columns=["check", "column", "offending", "passed", "detail"],
        )

    def message(self) -> str:
        """One line naming the table, each failed check and its offending count."""
        if self.ok:
            return f"{self.table}: all {len(self.results)} checks passed on {self.rows:,} rows"
        parts = [
            f"{r.check}{f'({r.column})' if r.column else ''}: {r.offending:,} offending{f' ({r.detail})' if r.detail else ''}"
            for r in self.failures
        ]
        return f"{self.table}: {len(parts)} data check(s) failed on {self.rows:,} rows: " + "; ".join(parts)

    def require(self) -> CheckReport:
        """Raise DataCheckError unless every check passed; returns self for chaining."""
        if not self.ok:
            raise DataCheckError(self.message())
        return self

    def __str__(self) -> str:
        return self.message()

    def _repr_html_(self) -> str:  # notebooks show the table
        return f"<p>{self.message()}</p>" + self.to_frame().to_html(index=False)


def _utc_naive(values: pd.Series) -> pd.Series:
    ts = pd.to_datetime(values, errors="coerce", utc=True)
    return ts.dt.tz_localize(None)


def _non_coercible(values: pd.Series, kind: str) -> int:
    present = values.notna()
    if not present.any():
        return 0
    v = values[present]
    if kind == "number" or kind == "integer":
        num = pd.to_numeric(v, errors="coerce")
        bad = num.isna()
        if kind == "integer":
            bad |= (num.notna() & (num.astype("float64") % 1 != 0))
        return int(bad.sum())
    if kind == "datetime":
        return int(pd.to_datetime(v, errors="coerce", utc=True).isna().sum())
    if kind == "bool":
        if pd.api.types.is_bool_dtype(v):
            return 0
        ok = v.isin([True, False, 0, 1, "true", "false", "TRUE", "FALSE", "True", "False"])
        return int((~ok).sum())
    if kind == "json":
        text = v.astype(str).str.lstrip()
        return int((~text.str.startswith(("{", "["))).sum())
    return 0


def _propensities(frame: pd.DataFrame) -> tuple[pd.Series | None, str | None]:
    for col in PROPENSITY_COLUMNS:
        if col in frame.columns:
            return pd.to_numeric(frame[col], errors="coerce"), col
    if "DYNAMIC_ROUTING_DETAIL" in frame.columns:
        raw = frame["DYNAMIC_ROUTING_DETAIL"].astype("string").str.extract(_PROPENSITY_JSON, expand=False)
        return pd.to_numeric(raw, errors="coerce"), "DYNAMIC_ROUTING_DETAIL"
    return None, None


def check_attempts(
    frame: pd.DataFrame,
    *,
    table: str = catalog.ATTEMPTS_VIEW,
    now: datetime | pd.Timestamp | None = None,
    max_age_hours: float | None = DEFAULT_MAX_AGE_HOURS,
    required: Iterable[str] = REQUIRED_COLUMNS,
    amount_cap: float = AMOUNT_CAP,
) -> CheckReport:
    """Run every check on an attempts frame (the attempts view, the flat view or an extract of them).

    ``now`` defaults to the current UTC time; ``max_age_hours=None`` skips freshness (e.g. for a
    world built with an ``end`` in the past).
    """
    report = CheckReport(table=table, rows=len(frame))
    add = report.results.append
    cols = set(frame.columns)

    # schema: required columns present, and every known column coercible to its Snowflake type
    missing = [c for c in required if c not in cols]
    add(CheckResult("schema", None, len(missing), f"missing columns {missing}" if missing else "required columns present"))
    column_types = dict(catalog.ATTEMPT_COLUMNS)
    for c in catalog.ROUTING_LOG_COLUMNS:
        column_types.setdefault(f"ROUTING_{c}", catalog.ROUTING_LOG_COLUMNS[c])
    for col, sql_type in column_types.items():
        kind = _kind(sql_type)
        if col in cols and kind not in ("string", "any"):
            bad = _non_coercible(frame[col], kind)
            if bad:
                add(CheckResult("type", col, bad, f"values not coercible to {sql_type}"))

    # nulls in columns every attempt must have
    for col in NON_NULLABLE:
        if col in cols:
            add(CheckResult("nulls", col, int(frame[col].isna().sum())))

    # value ranges and vocabularies
    if "AMOUNT" in cols:
        amount = pd.to_numeric(frame["AMOUNT"], errors="coerce")
        add(CheckResult("range", "AMOUNT", int(((amount <= 0) | (amount >= amount_cap)).sum()), f"0 < AMOUNT < {amount_cap:,.0f}"))
    for col, allowed in (
        ("STATUS", catalog.STATUSES),
        ("PROCESSOR", catalog.PROCESSORS),
        ("CURRENCY", catalog.CURRENCIES),
        ("CARD_BRAND", catalog.CARD_BRANDS),
        ("MCI_MSI_TYPE", catalog.MESSAGE_TYPES),
        ("MCC", messages.MCC_VALUES),
    ):
        if col in cols:
            values = frame[col]
            bad = values.notna() & ~values.isin(allowed)
            sample = sorted(map(str, values[bad].unique()[:3]))
            add(CheckResult("values", col, int(bad.sum()), f"not in {'/'.join(allowed)}" + (f", e.g. {sample}" if sample else "")))
    if "NUM_ATTEMPTS_ORDER" in cols:
        n = pd.to_numeric(frame["NUM_ATTEMPTS_ORDER"], errors="coerce")
        add(CheckResult("range", "NUM_ATTEMPTS_ORDER", int(((n < 1) | (n > MAX_ATTEMPTS_ORDER)).sum()), f"1..{MAX_ATTEMPTS_ORDER}"))
    prop, where = _propensities(frame)
    if prop is not None:
        add(CheckResult("range", where, int(((prop <= 0) | (prop > 1)).sum()), "propensity in (0, 1]"))
    _message_checks(frame, add)

    # duplicates
    if "ATTEMPT_ID" in cols:
        ids = frame["ATTEMPT_ID"]
        add(CheckResult("duplicates", "ATTEMPT_ID", int(ids.notna().sum() - ids.nunique(dropna=True))))

    # freshness of the newest row
    if max_age_hours is not None and "CREATED_AT" in cols:
        now_ts = pd.Timestamp(now if now is not None else datetime.now(timezone.utc))
        now_ts = now_ts.tz_convert("UTC").tz_localize(None) if now_ts.tzinfo is not None else now_ts
        newest = _utc_naive(frame["CREATED_AT"]).max()
        if pd.isna(newest):
            add(CheckResult("freshness", "CREATED_AT", 1, "no rows: the table is empty; rebuild/refresh the data"))
        else:
            age_h = (now_ts - newest).total_seconds() / 3600.0
            stale = age_h > max_age_hours
            detail = f"newest row {newest:%Y-%m-%d %H:%M} is {age_h:,.1f} h old (max {max_age_hours:g} h)"
            if stale:
                detail += "; rebuild the local world (`make world`) or refresh the warehouse"
            add(CheckResult("freshness", "CREATED_AT", int(stale), detail))

    # PROCESSING rows are not labels: report how many (informational, never a failure)
    if "STATUS" in cols:
        n_proc = int((frame["STATUS"] == "PROCESSING").sum())
        add(CheckResult("processing_excluded", "STATUS", 0, f"{n_proc:,} PROCESSING rows excluded from labels"))
    return report


def _message_checks(frame: pd.DataFrame, add: Callable[[CheckResult], None]) -> None:
    """Message configuration columns (smartrouter.messages): 0/1 flags, the propensity's range, and
    the hard rule that no attempt sent a configuration its payment was not eligible for."""
    cols = set(frame.columns)
    flags = [c for c in ("AVS_DATA", "MESSAGE_RANDOMIZED") + messages.ELIGIBILITY_COLUMNS if c in cols]
    for col in flags:
        x = pd.to_numeric(frame[col], errors="coerce")
        add(CheckResult("values", col, int((x.notna() & ~x.isin((0, 1))).sum()), "0 or 1"))
    if messages.PROPENSITY_COLUMN in cols:
        x = pd.to_numeric(frame[messages.PROPENSITY_COLUMN], errors="coerce")
        add(CheckResult("range", messages.PROPENSITY_COLUMN, int(((x <= 0) | (x > 1)).sum()), "propensity in (0, 1]"))
    if set(messages.MESSAGE_COLUMNS + messages.ELIGIBILITY_COLUMNS) <= cols:
        try:
            codes = messages.config_codes(frame)
            ok = messages.eligible_matrix(frame)[np.arange(len(frame)), codes]
            bad, detail = int((~ok).sum()), "configuration sent without its eligibility (MIT / AVS / MCC 4722)"
        except ConfigError as exc:  # unreadable values: the vocabulary checks above count them
            bad, detail = len(frame), f"unreadable message columns: {exc}"
        add(CheckResult("eligibility", "MCI_MSI_TYPE/AVS_DATA/MCC", bad, detail))


def require(
    frame_or_report: pd.DataFrame | CheckReport,
    **kwargs: object,
) -> CheckReport:
    """Check a frame (or take a finished report) and raise DataCheckError on any failure."""
    report = frame_or_report if isinstance(frame_or_report, CheckReport) else check_attempts(frame_or_report, **kwargs)  # type: ignore[arg-type]
    return report.require()


def labelled(frame: pd.DataFrame, status_column: str = "STATUS") -> tuple[pd.DataFrame, int]:
    """Rows with a definite outcome plus APPROVED (1/0), and how many PROCESSING rows were left out."""
    if status_column not in frame.columns:
        raise DataCheckError(f"cannot label: column {status_column} is missing; select it in the query")
    status = frame[status_column]
    processing = (status == "PROCESSING").to_numpy()
    unknown = ~status.isin(("APPROVED", "DECLINED", "PROCESSING"))
    if unknown.any():
        raise DataCheckError(
            f"labels: {int(unknown.sum()):,} rows have a STATUS outside APPROVED/DECLINED/PROCESSING; "
            "run checks.check_attempts to see which"
        )
    out = frame.loc[~processing].copy()
    out["APPROVED"] = (out[status_column] == "APPROVED").astype(np.int8)
    return out, int(processing.sum())


def columns_present(frame: pd.DataFrame, columns: Sequence[str], *, table: str = catalog.ATTEMPTS_VIEW) -> None:
    """Raise DataCheckError when ``frame`` lacks any of ``columns`` (a narrow schema check)."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataCheckError(f"{table}: schema check failed: {len(missing)} missing column(s) {missing}; select them in the query")
