"""Data checks: each violation is caught and named (table, check, offending count)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from smartrouter import catalog, checks
from smartrouter.errors import DataCheckError

NOW = pd.Timestamp("2024-04-01 06:00")
N = 40


@pytest.fixture()
def frame() -> pd.DataFrame:
    """A clean attempts extract: every check passes."""
    rng = np.random.default_rng(0)
    ids = [f"A{i:04d}" for i in range(N)]
    status = np.array(["APPROVED"] * 30 + ["DECLINED"] * 7 + ["PROCESSING"] * 3)
    return pd.DataFrame(
        {
            "ATTEMPT_ID": ids, "PAYMENT_ID": ids, "ORDER_ID": ids, "MERCHANT": catalog.MERCHANT,
            "CREATED_AT": pd.Timestamp("2024-03-31") + pd.to_timedelta(np.arange(N) * 1800, unit="s"),
            "PROCESSOR": "WORLDPAY", "PROCESSOR_ID": 76, "AMOUNT": rng.uniform(100, 9000, N), "CURRENCY": "MXN",
            "CARD_BIN": "411111", "CARD_BRAND": "VISA", "STATUS": status, "NUM_ATTEMPTS_ORDER": 1 + np.arange(N) % 3,
            "MCI_MSI_TYPE": "CIT", "AVS_CHECKED": True,
            "DYNAMIC_ROUTING_DETAIL": [json.dumps({"candidates": ["WORLDPAY", "MIT"], "propensity": 0.5})] * N,
        }
    )  # fmt: skip


def _failure(report: checks.CheckReport, check: str, column: str | None) -> checks.CheckResult:
    hits = [r for r in report.failures if r.check == check and r.column == column]
    assert hits, f"{check}({column}) not reported: {report.message()}"
    return hits[0]


def test_clean_frame_passes(frame):
    report = checks.check_attempts(frame, now=NOW)
    assert report.ok, report.message()
    assert checks.require(frame, now=NOW) is not None
    table = report.to_frame()
    assert list(table.columns) == ["check", "column", "offending", "passed", "detail"]
    assert {"schema", "nulls", "range", "values", "duplicates", "freshness", "processing_excluded"} <= set(table["check"])
    assert "3 PROCESSING rows excluded" in table.loc[table["check"] == "processing_excluded", "detail"].iloc[0]


@pytest.mark.parametrize(
    ("column", "bad", "rows", "check"),
    [
        ("AMOUNT", 0.0, [1, 2], "range"),
        ("AMOUNT", -5.0, [3], "range"),
        ("AMOUNT", 5e7, [4], "range"),
        ("STATUS", "PENDING", [5, 6, 7], "values"),
        ("PROCESSOR", "STRIPE", [8], "values"),
        ("CURRENCY", "EUR", [9, 10], "values"),
        ("CARD_BRAND", "DISCOVER", [11], "values"),
        ("MCI_MSI_TYPE", "RECURRING", [12], "values"),
        ("NUM_ATTEMPTS_ORDER", 0, [13], "range"),
        ("NUM_ATTEMPTS_ORDER", 11, [14, 15], "range"),
        ("ORDER_ID", None, [16, 17, 18], "nulls"),
        ("CREATED_AT", pd.NaT, [19], "nulls"),
        ("AMOUNT", "abc", [20], "type"),
        ("CREATED_AT", "not a time", [21, 22], "type"),
    ],
)
def test_each_violation_is_counted_and_named(frame, column, bad, rows, check):
    if isinstance(bad, str) and frame[column].dtype != object:
        frame[column] = frame[column].astype(object)
    frame.loc[rows, column] = bad
    report = checks.check_attempts(frame, now=NOW, table="PAYMENT_ML.SOURCES.T")
    assert not report.ok
    assert _failure(report, check, column).offending == len(rows)
    with pytest.raises(DataCheckError) as err:
        report.require()
    msg = str(err.value)
    assert msg.startswith("PAYMENT_ML.SOURCES.T:") and f"{check}({column}): {len(rows)} offending" in msg


def test_propensity_out_of_range_from_column_or_json(frame):
    frame.loc[[0, 1], "DYNAMIC_ROUTING_DETAIL"] = json.dumps({"propensity": 0.0})
    frame.loc[2, "DYNAMIC_ROUTING_DETAIL"] = json.dumps({"candidates": [], "propensity": 1.5})
    assert _failure(checks.check_attempts(frame, now=NOW), "range", "DYNAMIC_ROUTING_DETAIL").offending == 3
    frame["ROUTING_PROPENSITY"] = 0.5
    frame.loc[[5], "ROUTING_PROPENSITY"] = -0.1  # an explicit column wins over the JSON
    assert _failure(checks.check_attempts(frame, now=NOW), "range", "ROUTING_PROPENSITY").offending == 1


def test_duplicates_and_missing_columns(frame):
    frame.loc[[1, 2], "ATTEMPT_ID"] = frame.loc[0, "ATTEMPT_ID"]
    report = checks.check_attempts(frame.drop(columns=["STATUS", "CURRENCY"]), now=NOW)
    assert _failure(report, "duplicates", "ATTEMPT_ID").offending == 2
    schema = _failure(report, "schema", None)
    assert schema.offending == 2 and "STATUS" in schema.detail and "CURRENCY" in schema.detail
    # a narrower extract passes when it says what it needs
    assert checks.check_attempts(frame[["AMOUNT", "CREATED_AT"]], now=NOW, required=["AMOUNT"]).ok


def test_freshness(frame):
    late = NOW + pd.Timedelta(days=5)
    res = _failure(checks.check_attempts(frame, now=late, max_age_hours=72), "freshness", "CREATED_AT")
    assert res.offending == 1 and "make world" in res.detail
    assert checks.check_attempts(frame, now=late, max_age_hours=None).ok
    # tz-aware timestamps (as Snowflake may return them) compare in UTC
    frame["CREATED_AT"] = frame["CREATED_AT"].dt.tz_localize("UTC").dt.tz_convert("America/Mexico_City")
    assert checks.check_attempts(frame, now=NOW.tz_localize("UTC")).ok
    empty = checks.check_attempts(frame.iloc[:0], now=NOW)
    assert _failure(empty, "freshness", "CREATED_AT").offending == 1


def test_labelled_excludes_processing(frame):
    out, excluded = checks.labelled(frame)
    assert excluded == 3 and len(out) == N - 3
    assert "PROCESSING" not in set(out["STATUS"])
    assert out["APPROVED"].tolist() == (out["STATUS"] == "APPROVED").astype(int).tolist()
    assert out["APPROVED"].sum() == 30
    frame.loc[0, "STATUS"] = "WEIRD"
    with pytest.raises(DataCheckError, match="1 rows have a STATUS outside"):
        checks.labelled(frame)
    with pytest.raises(DataCheckError, match="column STATUS is missing"):
        checks.labelled(frame.drop(columns="STATUS"))


def test_message_columns_are_checked(frame):
    from smartrouter import messages

    msg = frame.assign(AVS_DATA=0, MCC="4511", STORED_CREDENTIAL=1, BILLING_ADDRESS=0, TRAVEL_PACKAGE=0,
                       MESSAGE_RANDOMIZED=0, MESSAGE_PROPENSITY=1.0)
    msg.loc[[0, 1], "MCI_MSI_TYPE"] = "MIT"  # allowed: the card is stored
    report = checks.check_attempts(msg, now=NOW)
    assert report.ok, report.message()
    assert "eligibility" in set(report.to_frame()["check"])
    bad = msg.copy()
    bad.loc[[2, 3, 4], "AVS_DATA"] = 1  # AVS data without a billing address
    bad.loc[[5], "STORED_CREDENTIAL"] = 0
    bad.loc[[5], "MCI_MSI_TYPE"] = "MIT"  # MIT without a stored credential
    bad.loc[[6, 7], "MESSAGE_PROPENSITY"] = 0.0
    bad.loc[[8], "TRAVEL_PACKAGE"] = 2
    bad["MCC"] = bad["MCC"].astype(object)
    bad.loc[[9], "MCC"] = "5999"
    report = checks.check_attempts(bad, now=NOW)
    assert _failure(report, "eligibility", "MCI_MSI_TYPE/AVS_DATA/MCC").offending == len(bad)  # unreadable MCC: all named
    assert _failure(report, "range", messages.PROPENSITY_COLUMN).offending == 2
    assert _failure(report, "values", "TRAVEL_PACKAGE").offending == 1
    assert _failure(report, "values", "MCC").offending == 1
    bad.loc[[9], "MCC"] = "4511"
    bad.loc[[8], "TRAVEL_PACKAGE"] = 0
    assert _failure(checks.check_attempts(bad, now=NOW), "eligibility", "MCI_MSI_TYPE/AVS_DATA/MCC").offending == 4
