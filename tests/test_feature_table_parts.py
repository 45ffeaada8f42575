"""The feature table at scale (issue 18): built chunk by chunk into a folder of parts, read in batches,
samples and filters while reading, the encoder and ModelData from disk, compaction part by part.

Every streamed result is compared with the in-memory path on the same small world: the chunked table
must be the table (same rows, same values), and what the stages derive from it must be what they
derived from the table held whole.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from smartrouter import features, warehouse
from smartrouter.config import load_settings
from smartrouter.encoder import FeatureEncoder
from smartrouter.errors import ConfigError
from smartrouter.models.data import from_frame, from_table
from smartrouter.world import World, WorldParams

DAYS, PER_DAY = 6, 700
VALID_DAYS, TEST_DAYS = 1, 1


@pytest.fixture(scope="module")
def world_env(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    local = tmp_path_factory.mktemp("warehouse")
    mp.setenv("SMARTROUTER_LOCAL_DIR", str(local))
    mp.setenv("SMARTROUTER_WAREHOUSE", "local")
    settings = load_settings()
    world = World(WorldParams.small(days=DAYS, per_day=PER_DAY))
    warehouse.write_world(world, settings, progress=False)
    yield settings, world.start + dt.timedelta(days=1), world.end
    mp.undo()


@pytest.fixture(scope="module")
def whole(world_env):
    """The table built in one piece and split in memory: what the parts must equal."""
    settings, start, end = world_env
    return features.time_split(features.build_training_table(settings, start, end), VALID_DAYS, TEST_DAYS, end)


@pytest.fixture(scope="module")
def parts(world_env, tmp_path_factory):
    """The same window written in chunks of about one day (max_chunk_rows below a day's attempts)."""
    settings, start, end = world_env
    path = tmp_path_factory.mktemp("run") / "features.parquet"
    info, split, sample = features.write_training_table(settings, start, end, path, valid_days=VALID_DAYS,
                                                        test_days=TEST_DAYS, max_chunk_rows=PER_DAY // 2,
                                                        sample_rows=500, seed=3)
    return path, info, split, sample


def test_the_chunked_table_is_the_table(whole, parts):
    path, info, split, _ = parts
    assert path.is_dir() and len(features.table_parts(path)) == DAYS - 1  # one part per day of the window
    back = features.read_table(path)
    assert list(back.columns) == list(whole.columns)
    assert back["ATTEMPT_ID"].tolist() == whole["ATTEMPT_ID"].tolist()
    for col in whole.columns:  # values equal, NaN == NaN; None and NaN are both missing
        a, b = whole[col], back[col]
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            np.testing.assert_array_equal(a.to_numpy(float), b.to_numpy(float), err_msg=col)
        else:
            assert (a.isna() == b.isna()).all() and (a[a.notna()].astype(str) == b[b.notna()].astype(str)).all(), col
    assert info.rows == len(whole)
    assert {k: split[k] for k in ("rows_train", "rows_valid", "rows_test", "test_start", "valid_start")} == {
        k: whole.attrs["split"][k] for k in ("rows_train", "rows_valid", "rows_test", "test_start", "valid_start")}


def test_the_sample_is_a_seeded_time_ordered_subset(whole, parts):
    path, _, _, sample = parts
    assert len(sample) == 500 and sample["CREATED_AT"].is_monotonic_increasing
    assert set(sample["ATTEMPT_ID"]) <= set(whole["ATTEMPT_ID"]) and sample["ATTEMPT_ID"].is_unique
    assert set(sample["SPLIT"]) == {"train", "valid", "test"}  # drawn from every chunk, not the first ones


def test_filters_and_samples_read_only_the_rows_asked_for(whole, parts):
    path = parts[0]
    test = features.read_table(path, filter=features.split_is("test"))
    assert test["ATTEMPT_ID"].tolist() == whole.loc[whole["SPLIT"] == "test", "ATTEMPT_ID"].tolist()
    since = pd.Timestamp(whole["CREATED_AT"].iloc[len(whole) // 2])
    recent = features.read_table(path, columns=["ATTEMPT_ID"], filter=features.created_since(since))
    assert recent["ATTEMPT_ID"].tolist() == whole.loc[whole["CREATED_AT"] >= since, "ATTEMPT_ID"].tolist()
    assert list(recent.columns) == ["ATTEMPT_ID"]
    train = whole[whole["SPLIT"] == "train"].reset_index(drop=True)
    keep = np.sort(np.random.default_rng(5).choice(len(train), size=300, replace=False))
    got = features.read_sample(path, max_rows=300, seed=5, filter=features.split_is("train"))
    assert got["ATTEMPT_ID"].tolist() == train["ATTEMPT_ID"].iloc[keep].tolist()  # the in-memory sample's rows
    assert len(features.read_sample(path, max_rows=10**9, filter=features.split_is("train"))) == len(train)
    assert features.value_counts(path, "PROCESSOR", features.split_is("train")) == train["PROCESSOR"].value_counts().to_dict()
    firsts = features.read_table(path, filter=features.first_attempt_rows())
    assert (firsts["NUM_ATTEMPTS_ORDER"] == 1).all() and len(firsts) + len(
        features.read_table(path, columns=["ATTEMPT_ID"], filter=features.retry_attempt_rows())) == len(whole)


def test_encoder_and_model_data_from_disk_equal_the_in_memory_ones(whole, parts):
    path = parts[0]
    train = whole[whole["SPLIT"] == "train"]
    from_disk = FeatureEncoder.fit(features.TableColumns(path, features.split_is("train")), features.MODEL_FEATURES)
    assert from_disk.to_spec() == FeatureEncoder.fit(train, features.MODEL_FEATURES).to_spec()
    a, b = from_frame(whole, from_disk), from_table(path, from_disk, batch_rows=333)
    for name in ("X", "y", "processor_idx", "eligible", "experiment"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.propensity, b.propensity)
    assert list(a.split) == list(b.split)
    capped = from_table(path, from_disk, max_rows={"train": 400}, seed=7)
    keep = np.sort(np.random.default_rng(7).choice(len(train), size=400, replace=False))
    np.testing.assert_array_equal(capped.part("train").X, a.part("train").X[keep])
    np.testing.assert_array_equal(capped.part("test").X, a.part("test").X)


def test_compaction_rewrites_part_by_part(whole, parts, tmp_path):
    import shutil

    path = tmp_path / "features.parquet"
    shutil.copytree(parts[0], path)
    since = pd.Timestamp(whole["CREATED_AT"].iloc[len(whole) // 3])
    before, kept = features.keep_rows_since(path, since)
    expect = whole[whole["CREATED_AT"] >= since]
    assert (before, kept) == (len(whole), len(expect))
    assert features.read_table(path)["ATTEMPT_ID"].tolist() == expect["ATTEMPT_ID"].tolist()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    features.keep_rows_since(path, whole["CREATED_AT"].max() + pd.Timedelta(days=1))  # nothing left: still a table
    empty = features.read_table(path)
    assert len(empty) == 0 and list(empty.columns) == list(whole.columns)


def test_plan_chunks_cuts_whole_days_under_the_row_bound(world_env):
    settings, start, end = world_env
    with warehouse.connect(settings) as conn:
        assert features.plan_chunks(conn, start, end, 10**9) == [(start, end)]
        days = features.plan_chunks(conn, start, end, 1)  # a day above the bound is its own chunk
        assert len(days) == DAYS - 1 and days[0][0] == start and days[-1][1] == end
        assert all(b - a == dt.timedelta(days=1) for a, b in days)
        with pytest.raises(ConfigError, match="max_chunk_rows"):
            features.plan_chunks(conn, start, end, 0)


def test_a_window_without_rows_or_train_split_is_a_clear_error_and_leaves_nothing(world_env, tmp_path):
    settings, start, end = world_env
    path = tmp_path / "features.parquet"
    with pytest.raises(ConfigError, match="no training rows"):
        features.write_training_table(settings, end - dt.timedelta(days=1), end, path, valid_days=VALID_DAYS,
                                      test_days=TEST_DAYS)
    later = end + dt.timedelta(days=30)
    with pytest.raises(ConfigError, match="no labelled attempts"):
        features.write_training_table(settings, later, later + dt.timedelta(days=3), path, valid_days=1, test_days=1)
    assert list(tmp_path.iterdir()) == []  # no table, no temp folder


def test_missing_or_empty_tables_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="02_features"):
        features.read_table(tmp_path / "features.parquet")
    (tmp_path / "features.parquet").mkdir()
    with pytest.raises(ConfigError, match="no parquet parts"):
        features.read_table(tmp_path / "features.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(ConfigError, match="cannot read the feature table"):
        features.read_table(tmp_path / "bad.parquet")


def test_sample_orders_keeps_whole_orders(whole):
    test = whole[whole["SPLIT"] == "test"].reset_index(drop=True)
    n_orders = test["ORDER_ID"].nunique()
    assert features.sample_orders(test, None) is test and features.sample_orders(test, n_orders) is test
    got = features.sample_orders(test, n_orders // 3, seed=4)
    assert got["ORDER_ID"].nunique() == n_orders // 3
    assert got["CREATED_AT"].is_monotonic_increasing
    sizes = test.groupby("ORDER_ID").size()
    assert (got.groupby("ORDER_ID").size() == sizes.loc[got["ORDER_ID"].unique()]).all()  # every attempt of a kept order
    assert got.equals(features.sample_orders(test, n_orders // 3, seed=4))  # seeded
