"""World parameters, frame schemas and determinism (same params + seed -> identical tables)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pandas as pd
import pytest

from smartrouter import catalog
from smartrouter.errors import ConfigError
from smartrouter.world import PROFILES, World, WorldParams

END = dt.date(2025, 6, 30)
TINY = dict(days=3, per_day=400, end=END)


def _digest(frames: list[pd.DataFrame]) -> str:
    h = hashlib.sha256()
    for f in frames:
        h.update(f.to_csv(index=False).encode())
    return h.hexdigest()


def _all(world: World) -> list[pd.DataFrame]:
    out = []
    for chunk in world.iter_days():
        out += [chunk.attempts, chunk.routing_log]
    return out + [world.rules_frame()]


def test_same_params_give_byte_identical_tables():
    a, b = World(WorldParams(**TINY)), World(WorldParams(**TINY))
    fa, fb = _all(a), _all(b)
    for x, y in zip(fa, fb):
        pd.testing.assert_frame_equal(x, y)
    assert _digest(fa) == _digest(fb)


def test_different_seed_gives_different_tables():
    a, b = World(WorldParams(**TINY, seed=1)), World(WorldParams(**TINY, seed=2))
    assert _digest(_all(a)) != _digest(_all(b))


def test_a_day_alone_equals_the_same_day_in_sequence():
    world = World(WorldParams(**TINY))
    chunks = list(world.iter_days())
    again = World(WorldParams(**TINY)).day(2)
    assert [c.day for c in chunks] == [END - dt.timedelta(days=2 - i) for i in range(3)]
    pd.testing.assert_frame_equal(chunks[2].attempts, again.attempts)
    pd.testing.assert_frame_equal(chunks[2].routing_log, again.routing_log)


def test_frames_have_exactly_the_catalog_columns_and_types():
    world = World(WorldParams(**TINY))
    chunk = world.day(0)
    assert list(chunk.attempts.columns) == list(catalog.ATTEMPT_COLUMNS)
    assert list(chunk.routing_log.columns) == list(catalog.ROUTING_LOG_COLUMNS)
    assert list(world.rules_frame().columns) == list(catalog.RULE_COLUMNS)
    f = chunk.attempts
    assert f["ATTEMPT_ID"].is_unique and f["PAYMENT_ID"].is_unique
    assert (chunk.routing_log["ATTEMPT_ID"] == f["ATTEMPT_ID"]).all()
    assert str(f["CREATED_AT"].dtype) == "datetime64[ns]"
    assert f["CREATED_AT"].is_monotonic_increasing
    day0 = pd.Timestamp(world.start)
    assert (f["CREATED_AT"] >= day0).all() and (f["CREATED_AT"] < day0 + pd.Timedelta(days=1)).all()
    for col, typ in catalog.ATTEMPT_COLUMNS.items():
        if typ.startswith("NUMBER"):
            assert pd.api.types.is_integer_dtype(f[col]), col
        elif typ == "BOOLEAN":
            assert pd.api.types.is_bool_dtype(f[col]), col
        elif typ == "FLOAT":
            assert pd.api.types.is_float_dtype(f[col]), col
    detail = json.loads(f["DYNAMIC_ROUTING_DETAIL"].iloc[0])
    assert {"algorithm", "arm", "candidates", "chosen", "propensity", "scores", "latency_ms", "skip_reasons"} <= set(detail)
    json.loads(chunk.routing_log["CANDIDATES"].iloc[0]), json.loads(chunk.routing_log["SKIP_REASONS"].iloc[0])
    assert f["CARD_BIN"].str.fullmatch(r"\d{6}").all()


def test_world_span_and_profiles():
    world = World(WorldParams(**TINY))
    assert world.start == dt.datetime(2025, 6, 28) and world.end == dt.datetime(2025, 7, 1)
    assert WorldParams.default().late_join_day == 56  # start of week 9 of 12
    small = PROFILES["small"]()
    assert (small.days, small.per_day) == (14, 2_000)
    assert small.days / 2 <= small.late_join_day < small.days  # the newcomer shows in the second half
    assert WorldParams().end_date == dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)


def test_params_round_trip_through_json():
    params = WorldParams.small(seed=7, end=END, experiment_share=0.2)
    data = json.loads(json.dumps(params.to_dict()))
    assert WorldParams.from_dict(data) == params
    unresolved = WorldParams.small(seed=7)
    assert WorldParams.from_dict(unresolved.to_dict()).end == unresolved.end_date  # end is stored resolved


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"days": 0}, "days=0 must be a positive"),
        ({"days": -3}, "days=-3 must be a positive"),
        ({"per_day": 0}, "per_day=0 must be a positive"),
        ({"processors": ("WORLDPAY", "STRIPE")}, "unknown processor.*STRIPE.*choose from"),
        ({"processors": ()}, "processors is empty"),
        ({"processors": ("AMEX", "ADYEN")}, "can take MXN"),
        ({"experiment_share": 1.5}, "experiment_share=1.5 must be a share between 0 and 1"),
        ({"processing_share": -0.1}, "processing_share=-0.1 must be a share"),
        ({"late_processor": "AMEX"}, "late_processor=AMEX would leave Amex cards"),
        ({"late_processor_week": 13}, "late_processor_week=13 is beyond the 12-week"),
        ({"late_processor": "ADYEN", "processors": ("WORLDPAY", "MIT", "ELAVON", "AMEX")}, "late_processor='ADYEN' is not among"),
    ],
)
def test_invalid_params_raise_clear_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        World(WorldParams(**overrides))
    with pytest.raises(ConfigError):
        WorldParams.small(**overrides)


def test_from_dict_rejects_unknown_keys_and_bad_dates():
    with pytest.raises(ConfigError, match="unknown world parameter"):
        WorldParams.from_dict({"dayz": 3})
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        WorldParams.from_dict({"end": "June"})


def test_world_without_late_processor_or_amex_still_generates():
    world = World(WorldParams(days=2, per_day=300, end=END, late_processor=None, processors=("WORLDPAY", "MIT", "ELAVON")))
    f = pd.concat([c.attempts for c in world.iter_days()])
    assert set(f["PROCESSOR"]) <= {"WORLDPAY", "MIT", "ELAVON"}
    assert "AMEX" not in set(f["CARD_BRAND"])
    assert set(world.rules_frame()["PROCESSOR"]) <= {"WORLDPAY", "MIT", "ELAVON"}
