"""The static-rules engine: specificity, priority, shadow mode, ACTIVE_FROM, the Amex hard rule."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from smartrouter import catalog
from smartrouter.errors import ConfigError
from smartrouter.rules import RulesEngine

JOIN = dt.datetime(2025, 3, 1)


def _rule(rid, cur, brand, ctype, proc, prio, shadow=False, active_from=None):
    return {"RULE_ID": rid, "MERCHANT": "VOLARIS", "CURRENCY": cur, "CARD_BRAND": brand, "CARD_TYPE": ctype,
            "PROCESSOR": proc, "PRIORITY": prio, "SHADOW_MODE": shadow, "ACTIVE_FROM": active_from}


RULES = [
    _rule(1, "MXN", "VISA", "CREDIT", "MIT", 2),
    _rule(2, "MXN", "VISA", "CREDIT", "WORLDPAY", 1),
    _rule(3, "MXN", "*", "*", "ELAVON", 1),
    _rule(4, "MXN", "*", "*", "WORLDPAY", 2),
    _rule(5, "USD", "*", "*", "ELAVON", 1),
    _rule(6, "USD", "*", "*", "WORLDPAY", 2),
    _rule(7, "*", "*", "*", "WORLDPAY", 1),
    _rule(8, "*", "*", "*", "ADYEN", 1, shadow=True, active_from=JOIN),
    _rule(9, "USD", "*", "PREPAID", "ADYEN", 1, active_from=JOIN),
    _rule(10, "*", "AMEX", "*", "AMEX", 1),
    _rule(11, "*", "VISA", "*", "MIT", 1),  # brand-only: less specific than a currency rule
]
BEFORE, AFTER = JOIN - dt.timedelta(days=1), JOIN + dt.timedelta(days=1)


@pytest.fixture(scope="module")
def engine() -> RulesEngine:
    return RulesEngine(pd.DataFrame(RULES, columns=list(catalog.RULE_COLUMNS)))


def test_exact_rule_beats_wildcards_and_priority_orders_within(engine):
    assert engine.ranked("MXN", "VISA", "CREDIT", at=AFTER) == ["WORLDPAY", "MIT", "ELAVON"]
    assert engine.choose("MXN", "VISA", "CREDIT", at=AFTER) == "WORLDPAY"


def test_less_specific_rules_are_fallbacks(engine):
    # MXN * * (currency exact) outranks * VISA * (brand exact) on equal counts.
    assert engine.ranked("MXN", "VISA", "DEBIT", at=AFTER) == ["ELAVON", "WORLDPAY", "MIT"]
    assert engine.ranked("MXN", "MASTERCARD", "DEBIT", at=AFTER) == ["ELAVON", "WORLDPAY"]


def test_currency_hard_rule_filters_processors(engine):
    # MIT settles pesos only: never ranked for USD even though * VISA * names it.
    ranked = engine.ranked("USD", "VISA", "CREDIT", at=AFTER)
    assert "MIT" not in ranked and ranked[0] == "ELAVON"


def test_amex_only_ever_on_amex(engine):
    for cur in catalog.CURRENCIES:
        for ctype in catalog.CARD_TYPES:
            assert engine.ranked(cur, "AMEX", ctype, at=AFTER) == ["AMEX"]
    # and AMEX never takes other brands, even if a rule said so
    odd = RulesEngine([_rule(1, "*", "*", "*", "AMEX", 1), _rule(2, "*", "*", "*", "WORLDPAY", 2)])
    assert odd.ranked("MXN", "VISA", "CREDIT", at=AFTER) == ["WORLDPAY"]
    assert odd.ranked("MXN", "AMEX", "CREDIT", at=AFTER) == ["AMEX"]


def test_active_from(engine):
    assert engine.choose("USD", "VISA", "PREPAID", at=BEFORE) == "ELAVON"
    assert engine.choose("USD", "VISA", "PREPAID", at=AFTER) == "ADYEN"


def test_shadow_rules_are_logged_not_acted_on(engine):
    assert "ADYEN" not in engine.ranked("MXN", "VISA", "CREDIT", at=AFTER)
    assert engine.shadow("MXN", "VISA", "CREDIT", at=AFTER) == ["ADYEN"]
    assert engine.shadow("MXN", "VISA", "CREDIT", at=BEFORE) == []
    assert engine.shadow("MXN", "AMEX", "CREDIT", at=AFTER) == []  # hard rule applies to shadow too


def test_candidates_filter(engine):
    assert engine.ranked("MXN", "VISA", "CREDIT", at=AFTER, candidates=["MIT", "ELAVON"]) == ["MIT", "ELAVON"]
    assert engine.choose("MXN", "AMEX", "CREDIT", at=AFTER, candidates=["WORLDPAY"]) is None


def test_retry_goes_to_next_priority_or_stays(engine):
    kw = dict(at=AFTER)
    assert engine.retry_processor("MXN", "VISA", "CREDIT", previous_processor="WORLDPAY", attempt_number=2, **kw) == "MIT"
    assert engine.retry_processor("MXN", "VISA", "CREDIT", previous_processor="MIT", attempt_number=3, **kw) == "ELAVON"
    assert engine.retry_processor("MXN", "VISA", "CREDIT", previous_processor="ELAVON", attempt_number=3, **kw) == "ELAVON"
    assert engine.retry_processor("MXN", "AMEX", "CREDIT", previous_processor="AMEX", attempt_number=2, **kw) == "AMEX"
    assert engine.retry_processor("MXN", "VISA", "CREDIT", previous_processor="ADYEN", attempt_number=2, **kw) == "WORLDPAY"


def test_choose_frame_matches_scalar_choose(engine):
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame({
        "CURRENCY": rng.choice(catalog.CURRENCIES, n),
        "CARD_BRAND": rng.choice(catalog.CARD_BRANDS, n),
        "CARD_TYPE": rng.choice(catalog.CARD_TYPES, n),
        "CREATED_AT": pd.to_datetime(JOIN) + pd.to_timedelta(rng.integers(-5 * 86400, 5 * 86400, n), unit="s"),
    })
    vec = engine.choose_frame(frame)
    scalar = [engine.choose(r.CURRENCY, r.CARD_BRAND, r.CARD_TYPE, at=r.CREATED_AT) for r in frame.itertuples()]
    assert list(vec) == scalar
    aware = frame.assign(CREATED_AT=frame["CREATED_AT"].dt.tz_localize("UTC"))
    assert list(engine.choose_frame(aware)) == scalar
    assert set(vec[frame["CARD_BRAND"].to_numpy() == "AMEX"]) == {"AMEX"}
    usd_prepaid = (frame["CURRENCY"] == "USD") & (frame["CARD_TYPE"] == "PREPAID") & (frame["CARD_BRAND"] != "AMEX")
    after = frame["CREATED_AT"] >= JOIN
    assert set(vec[(usd_prepaid & after).to_numpy()]) == {"ADYEN"}
    assert "ADYEN" not in set(vec[(usd_prepaid & ~after).to_numpy()])


def test_from_warehouse_rows_reads_strings_and_lowercase_columns():
    frame = pd.DataFrame(RULES).rename(columns=str.lower)
    frame["shadow_mode"] = frame["shadow_mode"].map({True: "true", False: "false"})
    frame["active_from"] = frame["active_from"].map(lambda v: v.isoformat() if v else None)
    engine = RulesEngine.from_warehouse_rows(frame)
    assert engine.choose("USD", "VISA", "PREPAID", at=AFTER) == "ADYEN"
    assert engine.shadow("MXN", "VISA", "CREDIT", at=AFTER) == ["ADYEN"]


def test_bad_rules_raise_clear_errors():
    with pytest.raises(ConfigError, match="unknown processor 'STRIPE'"):
        RulesEngine([_rule(1, "*", "*", "*", "STRIPE", 1)])
    with pytest.raises(ConfigError, match="lack column"):
        RulesEngine([{"CURRENCY": "MXN"}])
