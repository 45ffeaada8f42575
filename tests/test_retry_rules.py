"""Retry rules and advice: strict config, network verdicts, darktime, expected values, and no violation
over random sequences of declines (the property the service relies on)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from smartrouter import catalog
from smartrouter.errors import ConfigError
from smartrouter.retry.advice import RetryAdvisor, is_processor_error, retry_frame, retry_payment
from smartrouter.retry.rules import BUCKETS, DEFAULT_PATH, CardRetryCounter, load_rules

RULES = load_rules()
NON_AMEX = [p for p in catalog.PROCESSORS if p != catalog.AMEX_PROCESSOR]


@pytest.mark.parametrize("edit, message", [
    (lambda t: t + "\n[surprise]\nx = 1\n", r"unknown table or key \[surprise\]"),
    (lambda t: t.replace("attempt_cost = 0.25", "attempt_cost = 0.25\nattempt_fee = 1.0"), r"unknown key 'attempt_fee' in \[value\]"),
    (lambda t: t.replace("max_retries_24h = 10\nmax_retries_30d = 35", "max_retries_30d = 35"), r"lacks \[networks.MASTERCARD\] max_retries_24h"),
    (lambda t: t.replace('never_retry_codes = ["14", "43"]', 'never_retry_codes = ["14", "R0"]'), r"\['R0'\] are not in the catalog"),
    (lambda t: t.replace("max_retries_30d = 15\nmin_spacing_seconds = 0.0\n\n[networks.MASTERCARD]",
                         'max_retries_30d = "15"\nmin_spacing_seconds = 0.0\n\n[networks.MASTERCARD]'), r"max_retries_30d = '15' must be an integer"),
    (lambda t: t.replace("[networks.AMEX]", "[networks.DINERS]"), r"unknown table or key \[networks.DINERS\]"),
    (lambda t: t.replace("minutes = 600.0", "minutes = 5.0"), r"immediate < minutes < hours"),
    (lambda t: t.replace('merchant_advice_never = ["03", "21"]', 'merchant_advice_never = ["3"]'), r"two-digit codes"),
])
def test_rules_file_is_read_strictly(tmp_path, edit, message):
    path = tmp_path / "retry_rules.toml"
    path.write_text(edit(DEFAULT_PATH.read_text()))
    with pytest.raises(ConfigError, match=message) as info:
        load_rules(path)
    assert str(path) in str(info.value)


def test_file_names_its_sources_and_says_it_is_a_summary():
    text = DEFAULT_PATH.read_text()
    for needle in ("Visa", "Mastercard", "Merchant Advice\n#   Codes", "American Express", "acquirer agreements"):
        assert needle in text


def test_verdicts_follow_the_networks():
    assert not RULES.verdict("VISA", "43", 1, 0, 0).allowed  # Category 1: stolen card
    assert RULES.verdict("VISA", "05", 1, 0, 0).allowed
    mac = RULES.verdict("MASTERCARD", "05", 1, 0, 0, merchant_advice_code="03")
    assert not mac.allowed and "merchant advice code 03" in mac.rule
    assert RULES.verdict("VISA", "05", 1, 0, 0, merchant_advice_code="03").allowed  # a MAC binds Mastercard only
    mc = RULES.networks["MASTERCARD"]
    assert not RULES.verdict("MASTERCARD", "51", 1, mc.max_retries_24h, mc.max_retries_24h).allowed
    assert RULES.verdict("MASTERCARD", "51", 1, mc.max_retries_24h - 1, mc.max_retries_24h - 1).allowed
    visa = RULES.networks["VISA"]
    assert not RULES.verdict("VISA", "51", 1, 0, visa.max_retries_30d).allowed
    last = RULES.verdict("VISA", "05", RULES.max_attempts, 0, 0)
    assert not last.allowed and "max" in last.rule


def test_card_counter_counts_windows_and_forgets_only_what_no_window_needs():
    c = CardRetryCounter()
    day = 86_400.0
    for at in (0.0, 10.0, day + 5.0, 20 * day):
        c.record("card", at)
    assert c.counts("card", 11.0) == (4, 4)  # retries already scheduled for later count too
    assert c.counts("card", day + 6.0) == (3, 4)  # the first is older than 24 h
    assert c.counts("card", 20 * day + 1) == (1, 4)
    assert c.counts("card", 31 * day + 7) == (0, 1)  # only day 20 is inside 30 days
    assert c.counts("other", 5.0) == (0, 0)


def _probs(p_now: float, p_later: float):
    return lambda b: {p: (p_now if b == "immediate" else p_later) for p in catalog.PROCESSORS}


def test_darktime_retries_immediately_elsewhere():
    adv = RetryAdvisor(RULES)
    v = RULES.verdict("VISA", "TIMEOUT", 1, 0, 0)
    a = adv.advise(v, "TIMEOUT", "WORLDPAY", NON_AMEX, _probs(0.8, 0.9))
    assert a.retry and a.delay == "immediate" and a.processor != "WORLDPAY"
    assert any("darktime" in r for r in a.reasons)
    # a DOWN previous processor after an issuer decline: elsewhere too, at once
    v = RULES.verdict("VISA", "05", 1, 0, 0)
    a = adv.advise(v, "05", "MIT", NON_AMEX, _probs(0.7, 0.7), down={"MIT"})
    assert a.retry and a.delay == "immediate" and a.processor != "MIT"
    # no model: darktime still retries, an issuer decline gets no advice
    assert adv.advise(RULES.verdict("VISA", "PSP_5XX", 1, 0, 0), "PSP_5XX", "ELAVON", NON_AMEX, None).retry
    none = adv.advise(v, "05", "MIT", NON_AMEX, None)
    assert not none.retry and none.source == "no_model"


def test_expected_values_pick_now_later_or_stop():
    adv = RetryAdvisor(RULES)
    v = RULES.verdict("VISA", "51", 1, 0, 0)
    cost, wait = RULES.attempt_cost, RULES.wait_cost
    later = adv.advise(v, "51", "MIT", NON_AMEX, _probs(0.40, 0.60))
    assert later.retry and later.delay in ("minutes", "hours")
    assert later.ev["now"] == pytest.approx(0.40 - cost - wait["immediate"], abs=1e-12)
    assert later.ev["later"] == pytest.approx(0.60 - cost - wait["minutes"], abs=1e-12)  # the cheaper wait wins a tie
    stop = adv.advise(v, "51", "MIT", NON_AMEX, _probs(cost / 2, cost / 2))
    assert not stop.retry and stop.ev["stop"] == 0.0 and "stop" in stop.reasons[-1]
    priced_up = RetryAdvisor(RULES, extra_cost=0.5).advise(v, "51", "MIT", NON_AMEX, _probs(0.60, 0.60))
    assert not priced_up.retry  # the budget's operating point stops a retry the bare cost allows
    dark = RetryAdvisor(RULES, extra_cost=0.5).advise(RULES.verdict("VISA", "TIMEOUT", 1, 0, 0), "TIMEOUT", "MIT",
                                                      NON_AMEX, _probs(0.60, 0.60))
    assert dark.retry and dark.delay == "immediate"  # failover is not priced like a reattempt


def test_random_sequences_never_break_a_rule():
    """Random declines of random cards (codes, MACs, attempt numbers, probabilities, health) through the
    advice, each retry counted as the merchant's router would: no advised retry breaks a rule, and no
    card ever exceeds its brand's limits in any 24 h / 30 day window."""
    rng = np.random.default_rng(7)
    adv = RetryAdvisor(RULES)
    codes = list(catalog.ERROR_CODES)
    counter = CardRetryCounter()
    made: dict[tuple[str, int], list[float]] = {}
    at, advised = 0.0, 0
    for _ in range(6000):
        at += float(rng.exponential(900.0))
        brand = catalog.CARD_BRANDS[int(rng.integers(len(catalog.CARD_BRANDS)))]
        card = (brand, int(rng.integers(12)))  # few cards: the limits are reached often
        code = codes[int(rng.integers(len(codes)))]
        mac = ["03", "21", "01", None][int(rng.integers(4))]
        attempt = int(rng.integers(1, RULES.max_attempts + 1))
        c24, c30 = counter.counts(card, at)
        eligible = catalog.eligible_processors(brand, "MXN")
        p = {b: dict(zip(catalog.PROCESSORS, rng.random(len(catalog.PROCESSORS)))) for b in BUCKETS}
        down = {x for x in catalog.PROCESSORS if rng.random() < 0.2}
        a = adv.advise(adv.verdict(brand, code, attempt, c24, c30, mac), code, eligible[0], eligible,
                       (lambda b, p_=p: p_[b]) if rng.random() < 0.8 else None, down)
        if not a.retry:
            continue
        advised += 1
        assert RULES.violation(brand, code, attempt, c24, c30, a.delay_seconds, mac) is None
        assert code not in RULES.networks[brand].never_retry_codes
        assert a.processor in eligible and a.delay in BUCKETS
        when = at + a.delay_seconds
        counter.record(card, when)
        made.setdefault(card, []).append(when)
    assert advised > 500  # the property was exercised, not vacuous
    for (brand, _), times in made.items():
        t = np.sort(times)
        net = RULES.networks[brand]
        for window, limit in ((86_400.0, net.max_retries_24h), (30 * 86_400.0, net.max_retries_30d)):
            in_window = np.searchsorted(t, t, side="right") - np.searchsorted(t, t - window, side="right")
            assert in_window.max() <= limit


def test_retry_row_is_the_same_for_one_payment_and_a_frame():
    base = {"ORDER_ID": "O1", "CARD_BRAND": "VISA", "CARD_COUNTRY": "MX", "NUM_ATTEMPTS_ORDER": 2,
            "PREVIOUS_ORDER_ERROR_CODE": "TIMEOUT", "PREVIOUS_PROCESSOR": "MIT", "SEC_SINCE_PREVIOUS_ATTEMPT": 20.0,
            "AVG_SEC_BETWEEN_PAYMENT_ATTEMPS": 20.0, "CREATED_AT": dt.datetime(2026, 5, 1, 23, 30)}
    one = retry_payment(base, "51", "WORLDPAY", 2, 3600.0)
    frame = retry_frame(pd.DataFrame([{**base, "ERROR_CODE": "51", "PROCESSOR": "WORLDPAY"}]), 3600.0).iloc[0]
    for col in ("NUM_ATTEMPTS_ORDER", "PREVIOUS_ORDER_ERROR_CODE", "PREVIOUS_PROCESSOR", "PREVIOUS_HARD_SOFT",
                "SEC_SINCE_PREVIOUS_ATTEMPT", "AVG_SEC_BETWEEN_PAYMENT_ATTEMPS", "HOUR_LOCAL", "HOUR_LOCAL_NUMBER"):
        assert one[col] == frame[col], col
    # retried an hour later: 00:30 UTC is 18:30 in Mexico City, in both forms of the hour
    assert one["HOUR_LOCAL"] == "18" and one["HOUR_LOCAL_NUMBER"] == 18.0
    assert one["NUM_ATTEMPTS_ORDER"] == 3 and one["PREVIOUS_HARD_SOFT"] == "SOFT"
    assert one["AVG_SEC_BETWEEN_PAYMENT_ATTEMPS"] == pytest.approx((20.0 + 3600.0) / 2)
    assert pd.Timestamp(one["CREATED_AT"]) == pd.Timestamp(frame["CREATED_AT"])
    assert is_processor_error("TIMEOUT") and not is_processor_error("51")
