"""Message toggle x card type crosses: derived the same way by row and by frame, re-derived whenever a
configuration is swapped in, and the joint scorer's per-card-type configuration tables give exactly the
rows (and, for logistic and xgb, the probabilities) of encoding every configuration in full."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from smartrouter import catalog, features, messages
from smartrouter.encoder import FeatureEncoder
from smartrouter.routing.messages import EncodedConfigs, config_fields, with_message

ALL_CODES = np.arange(messages.N_CONFIGS)
ALL_FACTS = {"STORED_CREDENTIAL": 1, "BILLING_ADDRESS": 1, "TRAVEL_PACKAGE": 1}
# what the probe and the payments below exercise besides the catalog's card types
ODD_CARD_TYPES = (None, float("nan"), "CORPORATE")


def _frame(n: int, seed: int) -> pd.DataFrame:
    """Payments with every message column, card type (some missing) and a few other features, derived."""
    rng = np.random.default_rng(seed)
    card = rng.choice(np.array([*catalog.CARD_TYPES, None], dtype=object), n, p=[0.5, 0.3, 0.15, 0.05])
    frame = pd.DataFrame({
        "CARD_TYPE": card, "AMOUNT": rng.gamma(2, 800, n), "CURRENCY": rng.choice(["MXN", "USD"], n),
        "CARD_BRAND": rng.choice(["VISA", "MASTERCARD"], n), "CARD_COUNTRY": rng.choice(["MX", "US"], n),
        "CREATED_AT": pd.Timestamp("2026-11-02") + pd.to_timedelta(rng.integers(0, 86_400, n), unit="s"),
        "PREVIOUS_ORDER_ERROR_CODE": None,
        "MCI_MSI_TYPE": rng.choice(list(messages.INITIATORS), n), "AVS_DATA": rng.integers(0, 2, n),
        "MCC": rng.choice(list(messages.MCC_VALUES), n, p=[0.8, 0.2]),
        "STORED_CREDENTIAL": 1, "BILLING_ADDRESS": 1, "TRAVEL_PACKAGE": 1,
    })
    return features.add_derived(frame)


# ------------------------------------------------------------------ the crosses
def test_crosses_have_one_definition_by_row_and_by_frame():
    rows = pd.DataFrame({
        "CARD_TYPE": ["CREDIT", "DEBIT", "PREPAID", None, "CREDIT", np.nan, "DEBIT"],
        "MCI_MSI_TYPE": ["MIT", "CIT", None, "CIT", "MIT", "MIT", " CIT"],
        "AVS_DATA": [1, 0.0, True, 1, np.nan, 0, 1.0],
        "MCC": ["4722", 4511, "4511", "4722", 4722.0, None, "4511"],
        "CARD_COUNTRY": "MX", "CREATED_AT": pd.Timestamp("2026-11-02 12:00"), "PREVIOUS_ORDER_ERROR_CODE": None,
    }, dtype=object)
    frame = features.add_derived(rows.copy())
    for i, rec in enumerate(rows.to_dict("records")):
        d = features.derive_row(rec)
        for col in features.DERIVED_COLUMNS:
            v, e = d[col], frame[col].iloc[i]
            assert (pd.isna(v) and pd.isna(e)) or v == e, (i, col, v, e)
    # the value spells card type and toggle; whole numbers lose their decimal part; a missing side is missing
    assert frame.loc[0, ["CARD_TYPE_X_MCI_MSI_TYPE", "CARD_TYPE_X_AVS_DATA", "CARD_TYPE_X_MCC"]].tolist() == \
        ["CREDIT|MIT", "CREDIT|1", "CREDIT|4722"]
    assert frame.loc[1, "CARD_TYPE_X_MCC"] == "DEBIT|4511" and frame.loc[2, "CARD_TYPE_X_AVS_DATA"] == "PREPAID|1"
    assert frame.loc[4, "CARD_TYPE_X_MCC"] == "CREDIT|4722" and frame.loc[6, "CARD_TYPE_X_MCI_MSI_TYPE"] == "DEBIT|CIT"
    assert pd.isna(frame.loc[2, "CARD_TYPE_X_MCI_MSI_TYPE"]) and pd.isna(frame.loc[4, "CARD_TYPE_X_AVS_DATA"])
    assert frame.loc[[3, 5], list(features.MESSAGE_CROSSES)].isna().all().all()


def test_crosses_are_model_inputs_of_every_family():
    names = {f.name for f in features.MODEL_FEATURES}
    assert set(features.MESSAGE_CROSSES) <= names and set(features.MESSAGE_CROSSES) <= set(features.DERIVED_COLUMNS)
    assert set(features.MESSAGE_CROSS_TOGGLES.values()) == set(messages.MESSAGE_COLUMNS)
    assert all(features.FEATURES_BY_NAME[c].kind == "categorical" for c in features.MESSAGE_CROSSES)


def test_a_configuration_swapped_in_carries_its_own_crosses():
    frame = _frame(200, seed=4)
    for code in (0, messages.N_CONFIGS - 1):
        key = messages.CONFIG_KEYS[code]
        swapped = messages.with_config(frame, key)
        want = features.add_message_crosses(swapped.drop(columns=list(features.MESSAGE_CROSSES)))
        pd.testing.assert_frame_equal(swapped[list(features.MESSAGE_CROSSES)], want[list(features.MESSAGE_CROSSES)])
        assert (swapped["CARD_TYPE_X_MCI_MSI_TYPE"].dropna().str.endswith(messages.CONFIGS[code].initiator)).all()
    pay = {**frame.iloc[0].to_dict(), **features.derive_row(frame.iloc[0].to_dict())}
    for code in ALL_CODES:
        sent = with_message(pay, int(code))
        assert sent == {**pay, **config_fields(int(code)), **features.message_crosses_row(sent)}
        assert sent["CARD_TYPE_X_MCC"] == f"{pay['CARD_TYPE']}|{messages.CONFIGS[code].mcc}"


# ------------------------------------------------------------------ the per-card-type tables
@pytest.fixture(scope="module")
def encoder():
    frame = _frame(4000, seed=3)
    # min_count keeps the rare PREPAID|4722 pairs out of the vocabulary: some configurations land in __UNKNOWN__
    return FeatureEncoder.fit(frame, [f for f in features.MODEL_FEATURES if f.name in frame.columns], min_count=60)


def _payments(seed: int, n: int = 12) -> list[dict]:
    """Payments as the router holds them: derived columns present, from each payment's own message."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        card = [*catalog.CARD_TYPES, *ODD_CARD_TYPES][i % (len(catalog.CARD_TYPES) + len(ODD_CARD_TYPES))]
        p = {"CARD_TYPE": card, "AMOUNT": float(rng.gamma(2, 800)), "CURRENCY": str(rng.choice(["MXN", "USD"])),
             "CARD_BRAND": str(rng.choice(["VISA", "MASTERCARD"])), "CARD_COUNTRY": "MX",
             "CREATED_AT": datetime(2026, 11, 3, int(rng.integers(0, 24))), **ALL_FACTS,
             **config_fields(int(rng.integers(0, messages.N_CONFIGS)))}
        out.append({**p, **features.derive_row(p)})
    out.append({"CARD_TYPE": "DEBIT", **ALL_FACTS})  # an older client: no message fields, nothing derived
    return out


def _full(encoder, payment, codes) -> np.ndarray:
    return np.stack([encoder.encode_payment(with_message(payment, int(k))) for k in codes])


def test_per_card_type_tables_equal_encoding_every_configuration_in_full(encoder):
    table = EncodedConfigs(encoder)
    assert table.separable
    # the crosses make the slots' values depend on the card type: one table for all would be wrong
    credit, debit = table.table_for("CREDIT"), table.table_for("DEBIT")
    both = credit[1] | debit[1]
    assert not np.array_equal(credit[0][:, both], debit[0][:, both])
    assert table.table_for(float("nan")) is table.table_for(None)  # one missing card type
    rng = np.random.default_rng(0)
    for p in _payments(seed=1):
        for codes in (ALL_CODES, rng.permutation(messages.N_CONFIGS)[:3]):
            np.testing.assert_array_equal(table.rows(p, codes), _full(encoder, p, codes))
    # the test can fail: swapping only the message fields keeps the payment's own (stale) crosses
    p = _payments(seed=1)[0]
    stale = np.stack([encoder.encode_payment({**p, **config_fields(int(k))}) for k in ALL_CODES])
    assert not np.array_equal(stale, _full(encoder, p, ALL_CODES))


def test_the_cache_of_card_types_stays_small(encoder):
    table = EncodedConfigs(encoder)
    for i in range(3 * EncodedConfigs.MAX_CARD_TYPES):
        p = {"CARD_TYPE": f"ODD{i}", **ALL_FACTS, **config_fields(0)}
        np.testing.assert_array_equal(table.rows(p, ALL_CODES), _full(encoder, p, ALL_CODES))
        assert len(table._by_card_type) <= EncodedConfigs.MAX_CARD_TYPES


class _Mixing:
    """An encoder that adds one column: MIT x ``column`` == ``value`` (a message slot mixed with another input)."""

    def __init__(self, inner, column: str, value: str) -> None:
        self.inner, self.column, self.value = inner, column, value

    def encode_payment(self, payment) -> np.ndarray:
        x = self.inner.encode_payment(payment)
        mixed = float(payment.get("MCI_MSI_TYPE") == "MIT" and payment.get(self.column) == self.value)
        return np.append(x, np.float32(mixed))


def test_the_probe_sends_an_encoder_that_mixes_other_columns_into_message_slots_to_full_encoding(encoder):
    by_brand = EncodedConfigs(_Mixing(encoder, "CARD_BRAND", "MASTERCARD"))
    assert not by_brand.separable
    # card type is what the per-card-type tables are for: mixing it in stays separable
    by_card = EncodedConfigs(_Mixing(encoder, "CARD_TYPE", "DEBIT"))
    assert by_card.separable
    for table in (by_brand, by_card):
        for p in _payments(seed=2):
            p = {**p, "CARD_BRAND": "MASTERCARD"}
            np.testing.assert_array_equal(table.rows(p, ALL_CODES), _full(table.encoder, p, ALL_CODES))


@pytest.mark.parametrize("family", ["logistic", "xgb"])
def test_batched_joint_scores_equal_scoring_every_configuration_in_full(tmp_path, encoder, family):
    """A model trained on the crosses, served: score_rows over the per-card-type table gives the probabilities
    of every configuration encoded in full, for every card type (catalog, missing, unseen)."""
    from smartrouter.models import data, make_model
    from smartrouter.models.serving import load_serving_model

    frame = _frame(6000, seed=5)
    rng = np.random.default_rng(6)
    n, P = len(frame), len(catalog.PROCESSORS)
    proc = rng.integers(0, P, n)
    # MIT helps WORLDPAY on credit cards and hurts it on prepaid ones: an effect only the crosses carry
    mit, worldpay = (frame["MCI_MSI_TYPE"] == "MIT").to_numpy(), proc == catalog.PROCESSOR_INDEX["WORLDPAY"]
    logit = 1.2 + 1.5 * mit * worldpay * np.where(frame["CARD_TYPE"] == "CREDIT", 1, np.where(frame["CARD_TYPE"] == "PREPAID", -1, 0))
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    split = np.where(np.arange(n) < 0.8 * n, "train", "valid").astype(object)
    X = encoder.transform(frame)
    d = data.ModelData(X, proc.astype(np.int64), y, np.ones(n, np.float32), split, list(encoder.feature_names),
                       np.full(n, 1 / P), np.ones(n, bool), np.ones((n, P), bool))
    params = {"n_estimators": 40, "nthread": 1} if family == "xgb" else {}
    m = make_model(family, min_rows=300, **params).fit(d.part("train"), d.part("valid"))
    served = load_serving_model(m.export(tmp_path / family, encoder.to_spec()))
    table = EncodedConfigs(served.encoder)
    assert table.separable
    for p in _payments(seed=7):
        got = served.score_rows(table.rows(p, ALL_CODES))
        np.testing.assert_allclose(got, served.score_matrix(_full(served.encoder, p, ALL_CODES)), rtol=0, atol=1e-6)
        one = [served.score(with_message(p, int(k))) for k in ALL_CODES]
        np.testing.assert_allclose(got, [[s[q] for q in catalog.PROCESSORS] for s in one], rtol=0, atol=1e-6)
