"""The one feature encoder: fit, vectorized transform == per-payment encode, JSON spec, bad specs."""

from __future__ import annotations

import datetime as dt
import json
import math
import zlib

import numpy as np
import pandas as pd
import pytest

from smartrouter import features, warehouse
from smartrouter.config import load_settings
from smartrouter.encoder import MISSING, UNKNOWN, FeatureEncoder
from smartrouter.errors import ArtifactError
from smartrouter.world import World, WorldParams


@pytest.fixture(scope="module")
def split_table(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SMARTROUTER_LOCAL_DIR", str(tmp_path_factory.mktemp("warehouse")))
    mp.setenv("SMARTROUTER_WAREHOUSE", "local")
    settings = load_settings()
    world = World(WorldParams.small(days=3, per_day=800))
    warehouse.write_world(world, settings, progress=False)
    table = features.build_training_table(settings, world.start + dt.timedelta(days=1), world.end)
    mp.undo()
    return features.time_split(table, valid_days=0, test_days=1)


@pytest.fixture(scope="module")
def encoder(split_table):
    return FeatureEncoder.fit(split_table[split_table["SPLIT"] == "train"], features.FEATURES, min_count=5)


def _stress_rows(table: pd.DataFrame, n: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """n rows resampled from the table with missing values and unseen categories planted."""
    rng = np.random.default_rng(seed)
    rows = table.iloc[rng.integers(0, len(table), n)].reset_index(drop=True).copy()
    for name in features.FEATURE_NAMES:
        hole = rng.random(n) < 0.05
        if features.FEATURES_BY_NAME[name].kind == "categorical":
            rows[name] = rows[name].astype(object)
            rows.loc[hole, name] = None
            rows.loc[rng.random(n) < 0.02, name] = "NEVER_SEEN"
        else:
            rows[name] = rows[name].astype(float)
            rows.loc[hole, name] = np.nan
    return rows


def test_shapes_names_and_inputs(encoder, split_table):
    X = encoder.transform(split_table)
    assert X.dtype == np.float32 and X.shape == (len(split_table), encoder.dim)
    assert np.isfinite(X).all()
    assert len(encoder.feature_names) == encoder.dim == len(set(encoder.feature_names))
    assert encoder.input_columns == list(features.FEATURE_NAMES)
    # the processor is not an input; the message configuration is; BIN is hashed
    assert not any(n.startswith("PROCESSOR") for n in encoder.feature_names)
    assert any(n.startswith("MCI_MSI_TYPE=") for n in encoder.feature_names)
    assert sum(n.startswith("CARD_BIN#") for n in encoder.feature_names) == 64
    # standardized on the training split
    train = X[(split_table["SPLIT"] == "train").to_numpy()]
    amount = encoder.feature_names.index("AMOUNT")
    assert abs(train[:, amount].mean()) < 1e-3 and abs(train[:, amount].std() - 1) < 1e-3


def test_encode_payment_matches_transform_on_10000_rows(encoder, split_table):
    rows = _stress_rows(split_table)
    X = encoder.transform(rows)
    records = rows[list(features.FEATURE_NAMES)].to_dict("records")
    worst = 0.0
    for i, rec in enumerate(records):
        worst = max(worst, float(np.max(np.abs(encoder.encode_payment(rec) - X[i]))))
    assert worst <= 1e-6


def test_missing_keys_unknown_values_and_derived_features(encoder, split_table):
    row = split_table.iloc[7]
    full = row[list(features.FEATURE_NAMES)].to_dict()
    # derived features are computed from CREATED_AT / CARD_COUNTRY / previous code when absent
    raw = {k: v for k, v in full.items() if k not in features.DERIVED_COLUMNS}
    raw["CREATED_AT"] = row["CREATED_AT"].to_pydatetime()
    assert np.array_equal(encoder.encode_payment(raw), encoder.encode_payment(full))
    # a missing key is the same as a missing value
    no_amount = {k: v for k, v in full.items() if k != "AMOUNT"}
    assert np.array_equal(encoder.encode_payment(no_amount), encoder.encode_payment({**full, "AMOUNT": None}))
    # unknown category -> the unknown bucket
    v = encoder.encode_payment({**full, "BANK": "NO SUCH BANK"})
    assert v[encoder.feature_names.index(f"BANK={UNKNOWN}")] == 1.0
    assert v[[i for i, n in enumerate(encoder.feature_names) if n.startswith("BANK=")]].sum() == 1.0
    # hashing is stable across processes (crc32, not Python's salted hash)
    bucket = zlib.crc32(str(full["CARD_BIN"]).encode()) % 64
    assert encoder.encode_payment(full)[encoder.feature_names.index(f"CARD_BIN#{bucket}")] == 1.0


def test_first_attempts_use_missing_indicator(encoder, split_table):
    names = encoder.feature_names
    assert "SEC_SINCE_PREVIOUS_ATTEMPT__MISSING" in names
    first = split_table[split_table["NUM_ATTEMPTS_ORDER"] == 1].head(50)
    X = encoder.transform(first)
    assert (X[:, names.index("SEC_SINCE_PREVIOUS_ATTEMPT__MISSING")] == 1).all()
    assert f"PREVIOUS_PROCESSOR={MISSING}" in names


def test_spec_round_trip_through_json(encoder, split_table, tmp_path):
    spec = json.loads(json.dumps(encoder.to_spec()))
    again = FeatureEncoder.from_spec(spec)
    assert again.feature_names == encoder.feature_names
    assert np.array_equal(again.transform(split_table), encoder.transform(split_table))
    path = tmp_path / "encoder.json"
    encoder.save(path)
    assert np.array_equal(FeatureEncoder.load(path).transform(split_table.head(100)),
                          encoder.transform(split_table.head(100)))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.update(format="something else"), "format"),
        (lambda s: s.update(version=99), "version"),
        (lambda s: s.pop("checksum"), "checksum is missing"),
        (lambda s: s["columns"][0].update(name="TAMPERED"), "checksum does not match"),
    ],
)
def test_malformed_spec_is_an_artifact_error(encoder, mutate, message):
    spec = json.loads(json.dumps(encoder.to_spec()))
    mutate(spec)
    with pytest.raises(ArtifactError, match=message):
        FeatureEncoder.from_spec(spec)


def _resign(spec):
    from smartrouter.encoder import _checksum

    spec["checksum"] = _checksum(spec)
    return spec


def test_malformed_but_signed_spec_names_the_column(encoder):
    spec = json.loads(json.dumps(encoder.to_spec()))
    amount = next(c for c in spec["columns"] if c["name"] == "AMOUNT")
    amount["std"] = -1
    with pytest.raises(ArtifactError, match="AMOUNT.*std"):
        FeatureEncoder.from_spec(_resign(spec))
    spec = json.loads(json.dumps(encoder.to_spec()))
    spec["dim"] += 1
    with pytest.raises(ArtifactError, match="dim"):
        FeatureEncoder.from_spec(_resign(spec))
    with pytest.raises(ArtifactError, match="JSON object"):
        FeatureEncoder.from_spec([1, 2])


def test_load_names_the_missing_or_corrupt_file(tmp_path):
    with pytest.raises(ArtifactError, match="encoder.json"):
        FeatureEncoder.load(tmp_path / "encoder.json")
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(ArtifactError, match="broken.json"):
        FeatureEncoder.load(bad)


def test_fit_refuses_a_frame_without_features():
    with pytest.raises(ArtifactError, match="lacks feature columns"):
        FeatureEncoder.fit(pd.DataFrame({"AMOUNT": [1.0]}))


def test_log_transform_and_scaling_by_hand(encoder):
    spec = next(c for c in encoder.columns if c["name"] == "AMOUNT")
    v = encoder.encode_payment({"AMOUNT": 1234.5})
    expected = (math.log1p(1234.5) - spec["mean"]) / spec["std"]
    assert v[encoder.feature_names.index("AMOUNT")] == pytest.approx(expected, rel=1e-6)
