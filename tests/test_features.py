"""Features: the one definition, the point-in-time SQL table, split, quality, online state parity."""

from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pandas as pd
import pytest

from smartrouter import catalog, features, warehouse
from smartrouter.config import load_settings
from smartrouter.errors import ConfigError
from smartrouter.world import World, WorldParams

DAYS, PER_DAY = 4, 800


@pytest.fixture(scope="module")
def world_env(tmp_path_factory):
    """A small world in a temp warehouse; yields (settings, world, start, end) of the feature window."""
    mp = pytest.MonkeyPatch()
    local = tmp_path_factory.mktemp("warehouse")
    mp.setenv("SMARTROUTER_LOCAL_DIR", str(local))
    mp.setenv("SMARTROUTER_WAREHOUSE", "local")
    settings = load_settings()
    world = World(WorldParams.small(days=DAYS, per_day=PER_DAY))
    warehouse.write_world(world, settings, progress=False)
    # the window starts a day in, so day 1 is warm-up history only
    yield settings, world, world.start + dt.timedelta(days=1), world.end
    mp.undo()


@pytest.fixture(scope="module")
def table(world_env):
    settings, _, start, end = world_env
    return features.build_training_table(settings, start, end)


def _raw(settings, start, end) -> pd.DataFrame:
    sql = (
        "SELECT ATTEMPT_ID, STATUS, CREATED_AT FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT "
        "WHERE CREATED_AT >= %(s)s::TIMESTAMP_NTZ AND CREATED_AT < %(e)s::TIMESTAMP_NTZ"
    )
    return warehouse.query_frame(sql, {"s": str(start), "e": str(end)}, settings=settings)


# ------------------------------------------------------------------ the definition
def test_feature_list_is_one_consistent_definition():
    names = [f.name for f in features.FEATURES]
    assert len(names) == len(set(names))
    assert all(f.kind in ("categorical", "numeric") for f in features.FEATURES)
    for p in catalog.PROCESSORS:  # wide: every processor has every health window and BIN history
        for w in features.HEALTH_WINDOWS:
            for m in features.HEALTH_METRICS:
                assert features.FEATURES_BY_NAME[features.health_column(p, w, m)].processor == p
        for col in features.bin_columns(p):
            assert features.FEATURES_BY_NAME[col].per_processor
    assert "PROCESSOR" not in names  # the logged processor is not a model input
    assert "MCI_MSI_TYPE" in names  # the message configuration is
    # the SQL aliases match the Python window labels
    sql = warehouse.sql_text("features_health")
    for w in features.HEALTH_WINDOWS:
        assert f"AS A_{w}" in sql and f"%(w_{w.lower()})s" in sql


def test_outcome_kinds():
    assert features.outcome_kind("APPROVED", None) == features.APPROVED
    assert features.outcome_kind("DECLINED", catalog.PROCESSOR_ERROR_CATEGORY) == features.TIMEOUT
    assert features.outcome_kind("DECLINED", "ISSUER_DECLINE") == features.DECLINED
    assert features.outcome_kind("PROCESSING", None) is None


# ------------------------------------------------------------------ the table
def test_table_has_one_row_per_labelled_attempt(world_env, table):
    settings, _, start, end = world_env
    raw = _raw(settings, start, end)
    labelled = raw[raw["STATUS"] != "PROCESSING"]
    info = table.attrs["info"]
    assert list(table.columns) == list(features.TABLE_COLUMNS)
    assert len(table) == len(labelled) == info.rows
    assert info.processing_excluded == int((raw["STATUS"] == "PROCESSING").sum()) > 0
    assert set(table["ATTEMPT_ID"]) == set(labelled["ATTEMPT_ID"])
    assert table["APPROVED"].isin([0, 1]).all()
    assert (table["CREATED_AT"] >= pd.Timestamp(start)).all() and (table["CREATED_AT"] < pd.Timestamp(end)).all()
    assert table["CREATED_AT"].is_monotonic_increasing
    # logging policy for off-policy evaluation
    assert table["PROPENSITY"].between(0, 1, inclusive="right").all()
    assert table["EXPERIMENT_ARM"].isin(["CONTROL", "EXPERIMENT"]).all()
    assert table["CANDIDATES"].str.startswith("[").all()
    assert table["ALGORITHM_TYPE"].notna().all()


def test_rates_and_volumes_are_consistent(table):
    for p in catalog.PROCESSORS:
        for w in features.HEALTH_WINDOWS:
            rates = sum(table[features.health_column(p, w, m)] for m in ("APPROVAL_RATE", "TIMEOUT_RATE", "DECLINE_RATE"))
            vol = table[features.health_column(p, w, "VOLUME")]
            assert np.allclose(rates[vol > 0], 1.0)
            assert rates[vol == 0].isna().all()
    # longer windows hold at least as many outcomes
    v15, v1h, v24 = (table[features.health_column("WORLDPAY", w, "VOLUME")] for w in ("15M", "1H", "24H"))
    assert (v15 <= v1h).all() and (v1h <= v24).all()
    smoothed, _ = features.bin_columns("WORLDPAY")
    assert table[smoothed].between(0, 1).all()


def test_histories_warm_up_before_the_window(table):
    first = table[table["CREATED_AT"] < table["CREATED_AT"].min() + pd.Timedelta(minutes=30)]
    assert len(first) > 0
    assert (first[features.health_column("WORLDPAY", "24H", "VOLUME")] > 100).all()
    assert first[[features.bin_columns(p)[1] for p in catalog.PROCESSORS]].sum(axis=1).gt(0).any()


def test_sql_matches_brute_force_recomputation(world_env, table):
    settings = world_env[0]
    report = features.leakage_check(settings, table, n_rows=25, seed=3)
    assert report["passed"], report
    assert report["max_abs_diff"] <= 1e-9


def test_point_in_time_mutating_later_outcomes_changes_nothing_before(world_env, table, tmp_path, monkeypatch):
    """Flip the outcome of one attempt and every later one: features at or before it are unchanged."""
    settings, _, start, end = world_env
    pivot = table.iloc[len(table) // 2]
    copy_dir = tmp_path / "mutated"
    copy_dir.mkdir()
    shutil.copy(warehouse.db_path(settings), copy_dir / warehouse.db_path(settings).name)
    monkeypatch.setenv("SMARTROUTER_LOCAL_DIR", str(copy_dir))
    mutated_settings = load_settings()
    with warehouse.connect(mutated_settings, read_only=False) as conn:
        conn.cursor().execute(
            "UPDATE PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT SET "
            "STATUS = IFF(STATUS = 'APPROVED', 'DECLINED', 'APPROVED'), "
            "ERROR_CATEGORY = IFF(STATUS = 'APPROVED', 'PROCESSOR_ERROR', NULL) "
            "WHERE CREATED_AT >= %(t)s::TIMESTAMP_NTZ AND STATUS <> 'PROCESSING'",
            {"t": str(pivot["CREATED_AT"])},
        )
    mutated = features.build_training_table(mutated_settings, start, end)
    cols = list(features.HEALTH_COLUMNS + features.BIN_COLUMNS)
    a, b = table.set_index("ATTEMPT_ID"), mutated.set_index("ATTEMPT_ID")
    before = table.loc[table["CREATED_AT"] <= pivot["CREATED_AT"], "ATTEMPT_ID"]
    after = table.loc[table["CREATED_AT"] >= pivot["CREATED_AT"] + pd.Timedelta(minutes=2), "ATTEMPT_ID"]
    pd.testing.assert_frame_equal(a.loc[before, cols], b.loc[before, cols])
    # the mutation is real: later rows do see it (their labels flipped and their histories moved)
    assert (a.loc[after, "APPROVED"] != b.loc[after, "APPROVED"]).all()
    assert not np.allclose(a.loc[after, cols].fillna(-1).to_numpy(), b.loc[after, cols].fillna(-1).to_numpy())


def test_online_state_equals_sql_on_the_same_history(world_env, table):
    """Replay the world's outcomes in time order; online features == the table's, exactly."""
    settings, world, start, end = world_env
    history = features.outcome_history(settings, world.start, end)
    times = [t.to_pydatetime() for t in pd.to_datetime(history["CREATED_AT"])]
    state = features.OnlineFeatureState()
    sample = table.iloc[:: max(1, len(table) // 400)]
    cols = list(features.HEALTH_COLUMNS + features.BIN_COLUMNS)
    expected = sample[cols].to_numpy(float)
    got = np.empty_like(expected)
    h = 0
    rows = list(zip(history["PROCESSOR"], times, history["STATUS"], history["ERROR_CATEGORY"], history["CARD_BIN"]))
    for i, (at, card_bin) in enumerate(zip(sample["CREATED_AT"], sample["CARD_BIN"])):
        at = at.to_pydatetime()
        while h < len(rows) and rows[h][1] < at:  # everything created before the attempt is known
            state.observe(*rows[h])
            h += 1
        values = state.features(card_bin, at)
        got[i] = [values[c] for c in cols]
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    assert np.nanmax(np.abs(got - expected)) <= 1e-9


def test_online_state_seeded_from_history_and_bounded(world_env, table):
    settings, world, _, end = world_env
    history = features.outcome_history(settings, world.start, end)
    state = features.OnlineFeatureState.from_history(history)
    assert state.observed == len(history)
    last = pd.Timestamp(history["CREATED_AT"].max()).to_pydatetime() + dt.timedelta(minutes=1)
    h = state.health_features(last)
    assert set(h) == set(features.HEALTH_COLUMNS)
    b = state.bin_features(table["CARD_BIN"].iloc[-1], last)
    assert set(b) == set(features.BIN_COLUMNS)
    # per-minute counters never hold more than window + slack minutes
    for windows in state._health.values():
        for w, wc in windows.items():
            assert len(wc.entries) + len(wc.old) <= features.HEALTH_WINDOWS[w] + features.ONLINE_SLACK_MINUTES + 1
    # a query far before what was kept is answered as of the oldest minute still held exactly (never
    # a failure on the request path), and counts no error
    oldest = last - dt.timedelta(minutes=features.ONLINE_SLACK_MINUTES)
    assert dict(state.health_features(last - dt.timedelta(days=3))) == dict(state.health_features(oldest))
    assert state.errors == 0


def test_online_state_minute_memo_is_exact_with_same_minute_and_late_outcomes():
    """The per-minute memo of shared features never serves a stale value."""
    state = features.OnlineFeatureState()
    now = dt.datetime(2026, 11, 1, 12, 0, 30)
    for k in range(10):
        state.observe("WORLDPAY", now - dt.timedelta(minutes=k + 1), "APPROVED", None, "415231")
    before = dict(state.features("415231", now))

    def recomputed() -> dict:
        state._memo_minute = None  # the reference: the same query without the memo
        return dict(state.features("415231", now))

    # an outcome in the query's own minute is not history for that minute: nothing changes
    state.observe("WORLDPAY", now, "DECLINED", catalog.PROCESSOR_ERROR_CATEGORY, "415231")
    assert dict(state.features("415231", now)) == before == recomputed()
    # a late outcome for an earlier minute changes the answer, and the memo sees it
    state.observe("WORLDPAY", now - dt.timedelta(minutes=2), "DECLINED", catalog.PROCESSOR_ERROR_CATEGORY, "415231")
    after = dict(state.features("415231", now))
    assert after == recomputed()
    timeout_rate = features.health_column("WORLDPAY", next(iter(features.HEALTH_WINDOWS)), "TIMEOUT_RATE")
    assert after[timeout_rate] > before[timeout_rate]
    # shared columns are read-only: a caller cannot corrupt the next payment's features
    with pytest.raises(TypeError):
        state.health_features(now)[timeout_rate] = 0.0


def test_bin_history_counts_issuer_decisions_only():
    """A processor's timeouts move its health, never a BIN's history on it (an outage is not the issuer)."""
    state = features.OnlineFeatureState()
    now = dt.datetime(2026, 11, 1, 12, 0, 30)
    for k in range(10):
        state.observe("WORLDPAY", now - dt.timedelta(minutes=k + 5), "APPROVED", None, "415231")
    smoothed, outcomes = features.bin_columns("WORLDPAY")
    before = dict(state.features("415231", now))
    for k in range(20):  # an outage: timeouts and processor errors on this BIN
        state.observe("WORLDPAY", now - dt.timedelta(minutes=k % 4 + 1), "DECLINED", catalog.PROCESSOR_ERROR_CATEGORY, "415231")
    during = dict(state.features("415231", now))
    assert during[smoothed] == before[smoothed] and during[outcomes] == before[outcomes] == 10.0
    assert during[features.health_column("WORLDPAY", "15M", "TIMEOUT_RATE")] > 0.5
    state.observe("WORLDPAY", now - dt.timedelta(minutes=1), "DECLINED", "INSUFFICIENT_FUNDS", "415231")  # the issuer said no
    after = dict(state.features("415231", now))
    assert after[outcomes] == 11.0 and after[smoothed] < before[smoothed]


def test_windowed_counts_boundaries():
    wc = features.WindowedCounts(window=15, width=3)
    for minute, kind in [(100, 0), (104, 1), (114, 2), (115, 0), (116, 0)]:
        wc.add(minute, kind)
    assert wc.counts(115) == [1, 1, 1]  # [100, 115): 115 itself excluded
    assert wc.counts(116) == [1, 1, 1]  # [101, 116): 100 out, 115 in
    assert wc.counts(120) == [2, 0, 1]  # [105, 120): 104 out, 115/116 in
    assert wc.counts(116) == [1, 1, 1]  # a late query (within the slack) is still exact
    wc.add(103, 2)  # a late outcome for a minute that already slid out
    assert wc.counts(117) == [2, 1, 2] and wc.counts(121) == [2, 0, 1]
    wc.add(100 + 24 * 60, 0)  # a day later: the old minutes are gone, and asking for them is refused
    with pytest.raises(ValueError, match="dropped"):
        wc.counts(120)


def test_derived_features_match_vectorized(table):
    sample = table.head(200)
    for _, row in sample.iterrows():
        d = features.derive_row(row.to_dict())
        for col in features.DERIVED_COLUMNS:
            v, e = d[col], row[col]
            assert (pd.isna(v) and pd.isna(e)) or v == e, (col, v, e)
    # the hour's two forms are one fact: the numeric one reads as the one-hot one
    assert (table["HOUR_LOCAL_NUMBER"] == table["HOUR_LOCAL"].astype(int)).all()
    assert table["HOUR_LOCAL_NUMBER"].between(0, 23).all()


def test_max_rows_keeps_a_time_ordered_sample(world_env):
    settings, _, start, end = world_env
    small = features.build_training_table(settings, start, end, max_rows=300, seed=1)
    assert len(small) == 300 and small["CREATED_AT"].is_monotonic_increasing
    assert small.attrs["info"].sampled_from > 300


def test_bad_windows_are_clear_errors(world_env):
    settings, _, start, _ = world_env
    with pytest.raises(ConfigError, match="start"):
        features.build_training_table(settings, start, start)
    with pytest.raises(ConfigError, match="not a date"):
        features.build_training_table(settings, "yesterday", "today")


# ------------------------------------------------------------------ split and quality
def test_time_split_is_time_based(table):
    out = features.time_split(table, valid_days=1, test_days=1)
    b = out.attrs["split"]
    assert set(out["SPLIT"]) == {"train", "valid", "test"}
    assert out.loc[out["SPLIT"] == "test", "CREATED_AT"].min() >= pd.Timestamp(b["test_start"])
    assert out.loc[out["SPLIT"] == "train", "CREATED_AT"].max() < pd.Timestamp(b["valid_start"])
    assert b["rows_train"] + b["rows_valid"] + b["rows_test"] == len(table)
    with pytest.raises(ConfigError, match="no training rows"):
        features.time_split(table, valid_days=2, test_days=2)


def test_feature_quality_reports_every_feature(table):
    q = features.feature_quality(table)
    assert list(q.index) == list(features.FEATURE_NAMES)
    assert q["null_share"].between(0, 1).all()
    assert q.loc["SEC_SINCE_PREVIOUS_ATTEMPT", "null_share"] > 0.3  # first attempts have none
    planted = table.assign(PLANTED=table["APPROVED"].astype(float))
    f = features.Feature("PLANTED", "numeric", "attempt", "the label itself", "test")
    assert features.feature_quality(planted, [f]).loc["PLANTED", "corr_approved"] == pytest.approx(1.0)
