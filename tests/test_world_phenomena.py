"""Every phenomenon of WORLD.md, checked on the small profile so the test fails if it is missing."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from smartrouter import catalog
from smartrouter.world import World, WorldParams
from smartrouter.world.entities import BAD_BIN_PROCESSOR, STEP_BANK

END = dt.date(2025, 6, 30)


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldParams.small(end=END))


@pytest.fixture(scope="module")
def frames(world):
    chunks = list(world.iter_days())
    attempts = pd.concat([c.attempts for c in chunks], ignore_index=True)
    log = pd.concat([c.routing_log for c in chunks], ignore_index=True)
    return attempts, log


@pytest.fixture(scope="module")
def attempts(frames):
    return frames[0]


@pytest.fixture(scope="module")
def first(attempts):
    return attempts[attempts["NUM_ATTEMPTS_ORDER"] == 1].reset_index(drop=True)


@pytest.fixture(scope="module")
def truth_first(world, first):
    """True probability matrix of the first attempts, without outages (computed once)."""
    return world.oracle().probability_matrix(first, include_outages=False)


def _approval(f: pd.DataFrame) -> float:
    return float((f["STATUS"] == "APPROVED").mean())


def test_volume_mix_and_overall_approval(world, attempts):
    per_day = len(attempts) / world.params.days
    assert 0.93 * world.params.per_day < per_day < 1.07 * world.params.per_day
    assert 0.77 < _approval(attempts) < 0.84  # WORLD.md band 79-82 % on the default world; looser here
    usd = (attempts["CURRENCY"] == "USD").mean()
    amex = (attempts["CARD_BRAND"] == "AMEX").mean()
    assert 0.18 < usd < 0.33 and 0.06 < amex < 0.15
    assert attempts["CARD_BIN"].nunique() > 500
    # Zipf-like: the top 10 BINs carry far more than 10/2000 of the traffic
    assert attempts["CARD_BIN"].value_counts().head(10).sum() / len(attempts) > 0.2


def test_diurnal_pattern_in_mexico_city_time(attempts):
    local_hour = (attempts["CREATED_AT"] - pd.Timedelta(hours=6)).dt.hour
    counts = local_hour.value_counts()
    assert counts.loc[[2, 3, 4]].sum() * 4 < counts.loc[[11, 12, 13]].sum()


def test_oracle_is_exact_for_the_logged_traffic(world, attempts):
    """Mean true probability of what was logged matches the observed approval, overall and per processor."""
    p = world.oracle().approval_probability(attempts, attempts["PROCESSOR"].to_numpy())
    assert abs(p.mean() - _approval(attempts)) < 0.01
    for proc, rows in attempts.groupby("PROCESSOR").groups.items():
        if len(rows) > 1500:
            assert abs(p[rows].mean() - _approval(attempts.loc[rows])) < 0.025, proc


def test_oracle_resolved_only_matches_labelled_approval(world, attempts):
    """Labels drop PROCESSING rows; resolved_only is the truth those labels estimate (tighter than 1 pp)."""
    labelled = attempts[attempts["STATUS"] != "PROCESSING"].reset_index(drop=True)
    procs = labelled["PROCESSOR"].to_numpy()
    oracle = world.oracle()
    resolved = oracle.approval_probability(labelled, procs, resolved_only=True)
    observed = float((labelled["STATUS"] == "APPROVED").mean())
    se = float(np.sqrt(observed * (1 - observed) / len(labelled)))
    assert abs(resolved.mean() - observed) < 3.5 * se
    # on processors that can leave attempts PROCESSING, the plain probability is lower by that share
    wp = procs == "WORLDPAY"
    plain = oracle.approval_probability(labelled[wp], "WORLDPAY")
    np.testing.assert_allclose(plain, resolved[wp] * (1 - 0.01), rtol=0.02)
    assert (plain < resolved[wp]).all()


def test_oracle_reads_rows_as_returned_by_the_warehouse(world, attempts):
    sample = attempts.sample(500, random_state=0).reset_index(drop=True)
    as_text = sample.copy()
    as_text.columns = [c.lower() for c in as_text.columns]
    as_text["created_at"] = sample["CREATED_AT"].astype(str)
    for col in ("avs_checked", "is_returning_customer"):
        as_text[col] = as_text[col].map({True: "true", False: "false"})
    for col in ("amount", "num_attempts_order", "days_to_departure", "passengers"):
        as_text[col] = as_text[col].astype(str)
    oracle = world.oracle()
    np.testing.assert_allclose(
        oracle.probability_matrix(as_text), oracle.probability_matrix(sample), rtol=1e-9, atol=1e-12
    )


def test_oracle_reads_flags_stored_as_floats(world, attempts):
    # feature tables carry boolean flags as 0.0/1.0; the truth must not change with the storage type
    sample = attempts.sample(500, random_state=1).reset_index(drop=True)
    as_float = sample.copy()
    for col in ("AVS_CHECKED", "IS_RETURNING_CUSTOMER"):
        as_float[col] = as_float[col].astype(float)
    oracle = world.oracle()
    np.testing.assert_allclose(oracle.probability_matrix(as_float), oracle.probability_matrix(sample), rtol=1e-12)


def test_processor_by_segment_differences(world, first, truth_first):
    oracle = world.oracle()
    assert oracle.segment_dependence(first) >= 0.20
    m = truth_first
    best = np.array(catalog.PROCESSORS, dtype=object)[m.argmax(axis=1)]
    non_amex = (first["CARD_BRAND"] != "AMEX").to_numpy()
    for cur in catalog.CURRENCIES:
        rows = non_amex & (first["CURRENCY"] == cur).to_numpy()
        shares = pd.Series(best[rows]).value_counts(normalize=True)
        assert shares.iloc[0] < 0.85, cur  # no processor is best everywhere
    # the headline segment effects exist: best processor differs across card types and card countries
    mxn_visa = ((first["CURRENCY"] == "MXN") & (first["CARD_BRAND"] == "VISA")).to_numpy()
    debit, credit = mxn_visa & (first["CARD_TYPE"] == "DEBIT").to_numpy(), mxn_visa & (first["CARD_TYPE"] == "CREDIT").to_numpy()
    wp, mit = catalog.PROCESSOR_INDEX["WORLDPAY"], catalog.PROCESSOR_INDEX["MIT"]
    assert (m[debit, mit] - m[debit, wp]).mean() > 0.02 and (m[credit, mit] - m[credit, wp]).mean() < (m[debit, mit] - m[debit, wp]).mean() - 0.03
    foreign = (first["CARD_COUNTRY"] != "MX").to_numpy() & (first["CURRENCY"] == "MXN").to_numpy() & non_amex
    domestic = (first["CARD_COUNTRY"] == "MX").to_numpy() & (first["CURRENCY"] == "MXN").to_numpy() & non_amex
    assert (m[foreign, mit] - m[foreign, wp]).mean() < (m[domestic, mit] - m[domestic, wp]).mean() - 0.04


def test_bad_bins_declined_on_one_processor_fine_elsewhere(world, attempts):
    bad = world.bins.bin[world.bins.bad]
    rows = attempts[attempts["CARD_BIN"].isin(bad)]
    assert set(rows["CARD_BRAND"]) == {"MASTERCARD"}
    on_bad = rows[rows["PROCESSOR"] == BAD_BIN_PROCESSOR]
    top = on_bad["CARD_BIN"].value_counts()
    assert top.iloc[0] >= 200
    for b in top.index[top >= 50]:
        assert _approval(on_bad[on_bad["CARD_BIN"] == b]) < 0.05, b
    elsewhere = rows[(rows["PROCESSOR"] != BAD_BIN_PROCESSOR) & (rows["STATUS"] != "PROCESSING")]
    assert len(elsewhere) >= 100 and _approval(elsewhere) > 0.60
    # the truth agrees, for every processor that may take them
    sample = rows[rows["CURRENCY"] == "MXN"].head(200)
    m = world.oracle().probability_matrix(sample, include_outages=False)
    assert m[:, catalog.PROCESSOR_INDEX[BAD_BIN_PROCESSOR]].max() < 0.05
    assert m[:, catalog.PROCESSOR_INDEX["ELAVON"]].mean() > 0.6


def test_great_bins_much_better_on_their_processor(world, first):
    oracle = world.oracle()
    for idx, proc in world.bins.great.items():
        rows = first[(first["CARD_BIN"] == world.bins.bin[idx]) & (first["CURRENCY"] == "MXN")]
        if len(rows) < 20:
            continue
        m = oracle.probability_matrix(rows, include_outages=False)
        j = catalog.PROCESSOR_INDEX[proc]
        others = np.delete(m, [j, catalog.PROCESSOR_INDEX["AMEX"]], axis=1).max(axis=1)
        # approvals are high anyway, so "much better" shows in the declines: well under half of elsewhere
        assert (1 - m[:, j]).mean() < 0.5 * (1 - others).mean()


def test_amex_cards_only_on_amex(attempts):
    amex = attempts["CARD_BRAND"] == "AMEX"
    assert amex.sum() > 500
    assert set(attempts.loc[amex, "PROCESSOR"]) == {"AMEX"}
    assert set(attempts.loc[~amex, "PROCESSOR"]).isdisjoint({"AMEX"})
    assert set(attempts.loc[amex, "BANK"]) == {"AMERICAN EXPRESS"}


def test_outages_show_as_timeout_bursts(world, attempts):
    incidents = world.oracle().outages
    major = incidents[incidents["KIND"] == "TIMEOUT"].iloc[0]
    on = attempts[attempts["PROCESSOR"] == major["PROCESSOR"]].copy()
    on["bucket"] = on["CREATED_AT"].dt.floor("15min")
    on["timeout"] = on["ERROR_CODE"] == catalog.TIMEOUT_CODE
    rate = on.groupby("bucket")["timeout"].agg(["mean", "size"])
    inside = (rate.index >= major["START"] - pd.Timedelta(minutes=15)) & (rate.index < major["END"])
    assert rate.loc[inside & (rate["size"] >= 5), "mean"].max() > 0.3
    assert rate.loc[~inside, "mean"].median() < 0.02
    timeouts = attempts[attempts["ERROR_CODE"] == catalog.TIMEOUT_CODE]
    assert set(timeouts["ERROR_CATEGORY"]) == {catalog.PROCESSOR_ERROR_CATEGORY}
    # latency rises with the incident (an observable health signal, not a truth flag)
    assert on.loc[on["bucket"].isin(rate.index[inside]) & ~on["timeout"], "PROCESSOR_LATENCY_MS"].median() > \
        on.loc[~on["timeout"], "PROCESSOR_LATENCY_MS"].median()
    assert 15 <= (incidents["END"] - incidents["START"]).dt.total_seconds().min() / 60
    assert (incidents["END"] - incidents["START"]).dt.total_seconds().max() / 60 <= 180


def test_outage_effect_in_the_oracle(world, attempts):
    oracle = world.oracle()
    major = oracle.outages[oracle.outages["KIND"] == "TIMEOUT"].iloc[0]
    rows = attempts[(attempts["CARD_BRAND"] == "VISA") & (attempts["CURRENCY"] == "MXN")].head(200)
    mid = major["START"] + (major["END"] - major["START"]) / 2
    during = oracle.approval_probability(rows, major["PROCESSOR"], at=pd.Series([mid] * len(rows)))
    calm = oracle.approval_probability(rows, major["PROCESSOR"], at=pd.Series([mid] * len(rows)), include_outages=False)
    assert during.mean() < calm.mean() - 0.2


def test_retries(attempts):
    counts = attempts["NUM_ATTEMPTS_ORDER"].value_counts()
    assert counts.get(2, 0) > 500 and counts.get(3, 0) > 50
    retry = attempts[attempts["NUM_ATTEMPTS_ORDER"] > 1]
    assert retry["PREVIOUS_ORDER_ERROR_CODE"].notna().all() and retry["PREVIOUS_PROCESSOR"].notna().all()
    assert (retry["SEC_SINCE_PREVIOUS_ATTEMPT"] > 0).all() and retry["AVG_SEC_BETWEEN_PAYMENT_ATTEMPS"].notna().all()
    firsts = attempts[attempts["NUM_ATTEMPTS_ORDER"] == 1]
    assert firsts["PREVIOUS_ORDER_ERROR_CODE"].isna().all() and firsts["SEC_SINCE_PREVIOUS_ATTEMPT"].isna().all()
    # delays range from seconds to hours; retries go to the same or another processor
    assert retry["SEC_SINCE_PREVIOUS_ATTEMPT"].min() < 60 and retry["SEC_SINCE_PREVIOUS_ATTEMPT"].max() > 3600
    switched = (retry["PREVIOUS_PROCESSOR"] != retry["PROCESSOR"]).mean()
    assert 0.2 < switched < 0.95
    # each order's attempts are numbered 1..k in time order
    by_order = attempts.groupby("ORDER_ID")["NUM_ATTEMPTS_ORDER"].agg(["min", "max", "size"])
    assert (by_order["min"] == 1).all() and (by_order["max"] == by_order["size"]).all()
    hard_codes = [c for c, e in catalog.ERROR_CODES.items() if e.hard_soft == "HARD"]
    after_hard = retry[retry["PREVIOUS_ORDER_ERROR_CODE"].isin(hard_codes)]
    after_soft = retry[~retry["PREVIOUS_ORDER_ERROR_CODE"].isin(hard_codes)]
    assert len(after_hard) >= 50
    assert _approval(after_hard) < 0.10 and _approval(after_soft) > 0.35


def test_decline_codes_are_segment_dependent(attempts):
    declined = attempts[(attempts["STATUS"] == "DECLINED") & (attempts["ERROR_CATEGORY"] != catalog.PROCESSOR_ERROR_CATEGORY)]
    assert set(declined["ERROR_CODE"]) <= set(catalog.ERROR_CODES)
    assert declined["HARD_SOFT"].isin(["HARD", "SOFT"]).all()
    hard = declined["HARD_SOFT"] == "HARD"
    assert hard[declined["FRAUD_RATE_COHORT"] == "HIGH"].mean() > hard[declined["FRAUD_RATE_COHORT"] == "LOW"].mean() + 0.1
    approved = attempts[attempts["STATUS"] == "APPROVED"]
    assert approved["ERROR_CODE"].isna().all()


def test_cit_mit_effect_differs_by_processor_and_card_type(world, first):
    oracle = world.oracle()
    rows = first[(first["CARD_BRAND"] != "AMEX") & (first["CURRENCY"] == "MXN")].head(3000)
    effect = {}
    for proc in ("WORLDPAY", "MIT"):
        mit = oracle.approval_probability(rows, proc, "MIT", include_outages=False)
        cit = oracle.approval_probability(rows, proc, "CIT", include_outages=False)
        for ctype in ("CREDIT", "DEBIT"):
            sel = (rows["CARD_TYPE"] == ctype).to_numpy()
            effect[proc, ctype] = (mit[sel] - cit[sel]).mean()
    assert effect["WORLDPAY", "CREDIT"] > 0.005 and effect["WORLDPAY", "DEBIT"] < -0.02
    assert effect["MIT", "DEBIT"] > 0.02 and effect["MIT", "CREDIT"] < -0.02
    assert set(first["MCI_MSI_TYPE"]) == set(catalog.MESSAGE_TYPES) and first["AVS_CHECKED"].nunique() == 2


def test_airline_and_user_columns_present(attempts):
    assert set(attempts["FLIGHT_TYPE"]) == set(catalog.FLIGHT_TYPES)
    assert set(attempts["FARE_CLASS"]) == set(catalog.FARE_CLASSES)
    assert set(attempts["CHANNEL"]) == set(catalog.CHANNELS)
    assert set(attempts["DEVICE"]) == set(catalog.DEVICES) and set(attempts["BROWSER"]) == set(catalog.BROWSERS)
    assert attempts["DAYS_TO_DEPARTURE"].between(0, 365).all() and attempts["PASSENGERS"].between(1, 9).all()
    assert (attempts["BROWSING_MINUTES"] > 0).all() and attempts["IS_RETURNING_CUSTOMER"].nunique() == 2
    new = ~attempts["IS_RETURNING_CUSTOMER"]
    assert attempts.loc[new, "USER_FREQUENCY"].eq(0).all() and attempts.loc[~new, "USER_FREQUENCY"].gt(0).all()
    intl = attempts["FLIGHT_TYPE"] == "INTERNATIONAL"
    assert (attempts.loc[intl, "CURRENCY"] == "USD").mean() > (attempts.loc[~intl, "CURRENCY"] == "USD").mean() + 0.2


def test_fraud_cohort_lowers_approval_everywhere(first, truth_first):
    by = first.groupby("FRAUD_RATE_COHORT").apply(_approval, include_groups=False)
    assert by["HIGH"] < by["LOW"] - 0.15 and by["MEDIUM"] < by["LOW"]
    m = truth_first
    high = (first["FRAUD_RATE_COHORT"] == "HIGH").to_numpy()
    low = (first["FRAUD_RATE_COHORT"] == "LOW").to_numpy()
    for proc in ("WORLDPAY", "MIT", "ELAVON", "AMEX"):
        j = catalog.PROCESSOR_INDEX[proc]
        hi, lo = m[high, j], m[low, j]
        assert hi[hi > 0].mean() < lo[lo > 0].mean() - 0.1, proc


def test_drift_and_issuer_step_change(world, first):
    oracle = world.oracle()
    step_at = pd.Timestamp(world.start) + pd.Timedelta(seconds=world.effects.step_sec)
    before = pd.Series([step_at - pd.Timedelta(hours=1)])
    after = pd.Series([step_at + pd.Timedelta(hours=1)])
    mxn = first[(first["CURRENCY"] == "MXN") & (first["CARD_BRAND"] == "VISA")]
    step_rows = mxn[mxn["BANK"] == STEP_BANK].head(300)
    other_rows = mxn[mxn["BANK"] != STEP_BANK].head(300)
    assert len(step_rows) >= 50

    def mean_p(rows, proc, at):
        return oracle.approval_probability(rows, proc, at=at.repeat(len(rows)).reset_index(drop=True), include_outages=False).mean()

    assert mean_p(step_rows, "WORLDPAY", after) < mean_p(step_rows, "WORLDPAY", before) - 0.10
    assert abs(mean_p(other_rows, "WORLDPAY", after) - mean_p(other_rows, "WORLDPAY", before)) < 0.01
    # slow drift: the same payments fare differently at the start and the end of the span
    start, end = pd.Series([pd.Timestamp(world.start)]), pd.Series([pd.Timestamp(world.end) - pd.Timedelta(seconds=1)])
    drift = [abs(mean_p(other_rows, p, end) - mean_p(other_rows, p, start)) for p in ("WORLDPAY", "MIT", "ELAVON")]
    assert max(drift) > 0.02


def test_processing_is_ambiguous_and_only_on_worldpay_and_elavon(attempts):
    processing = attempts[attempts["STATUS"] == "PROCESSING"]
    assert len(processing) > 50
    assert set(processing["PROCESSOR"]) == {"WORLDPAY", "ELAVON"}
    share = len(processing) / attempts["PROCESSOR"].isin(["WORLDPAY", "ELAVON"]).sum()
    assert 0.005 < share < 0.02
    assert processing["ERROR_CODE"].isna().all() and processing["HARD_SOFT"].isna().all()
    labels = attempts[attempts["STATUS"] != "PROCESSING"]["STATUS"]
    assert set(labels) == {"APPROVED", "DECLINED"}


def test_logging_policy_propensities(world, frames):
    attempts, log = frames
    cands = log["CANDIDATES"].map(json.loads)
    assert (log["CHOSEN_PROCESSOR"] == attempts["PROCESSOR"]).all()
    assert all(c in cs for c, cs in zip(log["CHOSEN_PROCESSOR"], cands))
    sample = attempts.sample(3000, random_state=1).index  # the detail JSON repeats the log's columns
    detail = attempts.loc[sample, "DYNAMIC_ROUTING_DETAIL"].map(json.loads)
    assert (detail.map(lambda d: d["chosen"]) == attempts.loc[sample, "PROCESSOR"]).all()
    assert (detail.map(lambda d: d["candidates"]) == cands[sample]).all()
    assert (detail.map(lambda d: d["arm"]) == log.loc[sample, "EXPERIMENT_ARM"]).all()
    assert np.allclose(detail.map(lambda d: d["propensity"]), log.loc[sample, "PROPENSITY"])
    assert np.allclose(detail.map(lambda d: d["latency_ms"]), log.loc[sample, "LATENCY_MS"])
    exp = log["EXPERIMENT_ARM"] == "EXPERIMENT"
    assert np.allclose(log.loc[exp, "PROPENSITY"], 1.0 / cands[exp].map(len))
    assert (log.loc[exp, "ALGORITHM_TYPE"] == "RANDOMIZED_EXPERIMENT").all()
    assert (log.loc[~exp, "PROPENSITY"] == 1.0).all()
    assert set(log.loc[~exp, "ALGORITHM_TYPE"]) == {"STATIC_RULES", "RETRY_RULES"}
    assert (log.loc[~exp & (attempts["NUM_ATTEMPTS_ORDER"] > 1), "ALGORITHM_TYPE"] == "RETRY_RULES").all()
    # the arm is a property of the order; about experiment_share of orders
    arms = log.groupby("ORDER_ID")["EXPERIMENT_ARM"].nunique()
    assert (arms == 1).all()
    share = (log.groupby("ORDER_ID")["EXPERIMENT_ARM"].first() == "EXPERIMENT").mean()
    assert abs(share - world.params.experiment_share) < 0.02
    # control first attempts followed the one rules engine exactly
    ctrl_first = (~exp & (attempts["NUM_ATTEMPTS_ORDER"] == 1)).to_numpy()
    assert (world.rules_engine.choose_frame(attempts[ctrl_first]) == attempts.loc[ctrl_first, "PROCESSOR"].to_numpy()).all()
    # the randomized arm explores every eligible processor
    exp_first = attempts[exp & (attempts["CURRENCY"] == "MXN") & (attempts["CARD_BRAND"] == "VISA")]
    assert {"WORLDPAY", "MIT", "ELAVON"} <= set(exp_first["PROCESSOR"])
    # skip reasons explain the ineligible ones
    usd = log.loc[(attempts["CURRENCY"] == "USD") & (attempts["CARD_BRAND"] != "AMEX"), "SKIP_REASONS"]
    assert usd.str.contains('"MIT":"does not settle USD"', regex=False).all()
    amex = log.loc[attempts["CARD_BRAND"] == "AMEX", "SKIP_REASONS"]
    assert amex.str.contains('"WORLDPAY":"Amex cards go to AMEX only"', regex=False).all()


def test_late_processor_joins_in_the_second_half(world, attempts):
    join = pd.Timestamp(world.start) + pd.Timedelta(days=world.params.late_join_day)
    adyen = attempts[attempts["PROCESSOR"] == "ADYEN"]
    assert len(adyen) > 50
    assert adyen["CREATED_AT"].min() >= join
    assert join >= pd.Timestamp(world.start) + pd.Timedelta(days=world.params.days / 2)
    rules = world.rules_frame()
    late = rules[rules["PROCESSOR"] == "ADYEN"]
    assert late["SHADOW_MODE"].any() and (late["ACTIVE_FROM"] == join).all()
    oracle = world.oracle()
    rows = attempts[(attempts["CARD_BRAND"] == "VISA")].head(50)
    assert (oracle.approval_probability(rows, "ADYEN", at=pd.Series([join - pd.Timedelta(seconds=1)] * 50)) == 0).all()
    assert (oracle.approval_probability(rows, "ADYEN", at=pd.Series([join] * 50)) > 0).all()


def test_oracle_ineligible_is_zero(world, attempts):
    oracle = world.oracle()
    visa = attempts[attempts["CARD_BRAND"] == "VISA"].head(100)
    assert (oracle.approval_probability(visa, "AMEX") == 0).all()
    usd = attempts[(attempts["CURRENCY"] == "USD") & (attempts["CARD_BRAND"] != "AMEX")].head(100)
    assert (oracle.approval_probability(usd, "MIT") == 0).all()
    amex = attempts[attempts["CARD_BRAND"] == "AMEX"].head(100)
    m = oracle.probability_matrix(amex)
    assert (np.delete(m, catalog.PROCESSOR_INDEX["AMEX"], axis=1) == 0).all() and (m[:, catalog.PROCESSOR_INDEX["AMEX"]] > 0).all()
    assert set(oracle.best_processor(amex)) == {"AMEX"}


def test_headroom_over_static_rules(world, first):
    oracle = world.oracle()
    with_out = oracle.headroom(first, world.rules_engine)
    without = oracle.headroom(first, world.rules_engine, include_outages=False)
    assert 0.02 < with_out["gap"] < 0.10
    assert (with_out["gap"] - without["gap"]) < with_out["gap"] / 3
