"""Joint (processor, message configuration) routing: eligibility before scoring, the choice, the top
pairs, exploration with propensities, the switch, the service's response and its 400s, the batched
scoring's parity with one score per configuration."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
from litestar.testing import TestClient

from routing_fakes import RULE_ROWS, FakeModel, body, payment
from smartrouter import catalog, messages
from smartrouter.errors import ConfigError
from smartrouter.routing import Router, load_routing_config
from smartrouter.routing.messages import EncodedConfigs, config_fields
from smartrouter.rules import RulesEngine

# per processor, the probability gain of each "on" toggle: MIT helps WORLDPAY most, AVS helps ELAVON,
# the travel-package MCC helps MIT; every effect is big enough to change the best configuration
EFFECTS = {"WORLDPAY": (0.15, 0.00, 0.00), "MIT": (0.00, 0.00, 0.12), "ELAVON": (0.02, 0.10, 0.00),
           "AMEX": (0.05, 0.05, 0.05), "ADYEN": (0.00, 0.00, 0.00)}


class MessageModel(FakeModel):
    """A FakeModel whose scores depend on the message the payment carries."""

    def score(self, payment: dict) -> dict[str, float]:
        on = (payment.get("MCI_MSI_TYPE") == "MIT", bool(payment.get("AVS_DATA")), str(payment.get("MCC")) == messages.PACKAGE_MCC)
        base = super().score(payment)
        return {p: min(v + sum(e for e, o in zip(EFFECTS[p], on) if o), 1.0) for p, v in base.items()}


class _Holder:
    def __init__(self, model, version="v1"):
        from smartrouter.routing.model_holder import LoadedModel

        self.current = LoadedModel(version, model, None, 0.0, 0.0)


def make_router(model=None, treatment=1.0, **over) -> Router:
    over.setdefault("exploration", {}).setdefault("enabled", False)
    over.setdefault("health", {}).setdefault("probe_share", 0.0)
    over.setdefault("messages", {}).setdefault("explore_share", 0.0)
    over.setdefault("experiment", {})["treatment_share"] = treatment
    return Router(load_routing_config(overrides=over), RulesEngine(RULE_ROWS), _Holder(model or MessageModel()), seed=1)


ALL_FACTS = {"STORED_CREDENTIAL": 1, "BILLING_ADDRESS": 1, "TRAVEL_PACKAGE": 1}


def test_best_eligible_pair_routes_and_is_sent():
    d = make_router().decide(payment(**ALL_FACTS))
    # pairs: MIT 0.80 + 0.12 (MCC 4722) = 0.92 > ELAVON 0.75 + 0.02 + 0.10 = 0.87 > WORLDPAY 0.70 + 0.15 (MIT) = 0.85
    assert d.chosen == "MIT" and d.message_config["key"] == "CIT/NOAVS/4722" and d.message_source == "model"
    assert d.message_config["fields"] == {"MCI_MSI_TYPE": "CIT", "AVS_DATA": 0, "MCC": "4722"}
    assert d.ranked[0] == ("MIT", pytest.approx(0.92)) and dict(d.ranked)["WORLDPAY"] == pytest.approx(0.85)
    recs = d.message_recommendations
    assert [(r["processor"], r["message_config"]["key"]) for r in recs] == [
        ("MIT", "CIT/NOAVS/4722"), ("MIT", "CIT/AVS/4722"), ("MIT", "MIT/NOAVS/4722")]  # ties: default-nearest first
    assert [r["probability"] for r in recs] == pytest.approx([0.92, 0.92, 0.92])
    assert any("message CIT/NOAVS/4722 for MIT" in r for r in d.reasons)


def test_ineligible_configurations_are_never_scored_nor_sent():
    d = make_router().decide(payment())  # no facts: only CIT/NOAVS/4511 is allowed
    assert d.message_config["key"] == "CIT/NOAVS/4511" and d.chosen == "MIT"
    assert dict(d.ranked)["WORLDPAY"] == pytest.approx(0.70)  # its MIT gain is not allowed here
    assert {r["message_config"]["key"] for r in d.message_recommendations} == {"CIT/NOAVS/4511"}
    seen = []

    class Spy(MessageModel):
        def score(self, payment):
            seen.append(payment["MCI_MSI_TYPE"])
            return super().score(payment)

    make_router(Spy()).decide(payment(STORED_CREDENTIAL=0, BILLING_ADDRESS=1))
    assert "MIT" not in seen and len(seen) == 2  # CIT x {no AVS, AVS}, MCC 4511 only


def test_amex_stays_amex_with_its_best_message():
    d = make_router().decide(payment(CARD_BRAND="AMEX", CARD_BIN="371234", **ALL_FACTS))
    assert d.chosen == "AMEX" and d.eligible == ["AMEX"]
    assert d.message_config["key"] == "MIT/AVS/4722"
    assert {r["processor"] for r in d.message_recommendations} == {"AMEX"}


def test_switch_off_and_control_arm_send_the_merchant_default():
    off = make_router(messages={"recommend": False}).decide(payment(CHANNEL="APP", **ALL_FACTS))
    assert off.message_source == "off" and off.message_config["key"] == "MIT/NOAVS/4511"  # the merchant's app default
    assert off.message_recommendations == [] and off.chosen == "MIT" and dict(off.ranked)["MIT"] == pytest.approx(0.80)
    ctl = make_router(treatment=0.0).decide(payment(**ALL_FACTS))
    assert ctl.arm == "control" and ctl.message_source == "default" and ctl.message_config["key"] == "CIT/NOAVS/4511"


def test_message_exploration_is_logged_with_its_propensity():
    r = make_router(messages={"explore_share": 0.5})
    decisions = [r.decide(payment(ORDER_ID=f"o{i}", **ALL_FACTS)) for i in range(400)]
    explored = [d for d in decisions if d.message_source == "exploration"]
    assert 120 < len(explored) < 280  # Binomial(400, 0.5): outside is > 8 sd away
    for d in explored:
        best = d.message_config["key"] == "CIT/NOAVS/4722"
        assert d.message_propensity == pytest.approx(0.5 / 8 + (0.5 if best else 0.0))
        assert d.record(payment())["message_propensity"] == d.message_propensity
    kept = [d for d in decisions if d.message_source == "model"]
    assert kept and all(d.message_propensity == pytest.approx(0.5 + 0.5 / 8) for d in kept)


def test_property_no_ineligible_configuration_over_random_payments():
    """Seeded random payments through the real Router: what it sends and recommends is always allowed."""
    rng = random.Random(15)
    routers = [make_router(messages={"explore_share": 0.3}), make_router(treatment=0.5)]
    for i in range(1500):
        p = payment(ORDER_ID=f"r{i}", CURRENCY=rng.choice(catalog.CURRENCIES), CARD_BRAND=rng.choice(catalog.CARD_BRANDS),
                    CARD_COUNTRY=rng.choice(["MX", "US", "ES"]), CHANNEL=rng.choice(["WEB", "APP"]),
                    NUM_ATTEMPTS_ORDER=rng.randint(1, 3),
                    **{c: rng.choice([0, 1, True, False, None, "1", "0"]) for c in messages.ELIGIBILITY_COLUMNS})
        allowed = {messages.CONFIG_KEYS[k] for k in np.flatnonzero(messages.eligible_mask(p))}
        d = rng.choice(routers).decide(p)
        assert d.message_config["key"] in allowed
        assert {r["message_config"]["key"] for r in d.message_recommendations} <= allowed
        assert {r["processor"] for r in d.message_recommendations} <= set(d.eligible)


def test_messages_config_is_checked():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) recomend in \[messages\]"):
        load_routing_config(overrides={"messages": {"recomend": True}})
    with pytest.raises(ConfigError, match=r"\[messages\].explore_share"):
        load_routing_config(overrides={"messages": {"explore_share": 0.9}})
    with pytest.raises(ConfigError, match=r"\[messages\].top_k"):
        load_routing_config(overrides={"messages": {"top_k": 0}})


def test_encoded_configurations_match_encoding_each_one():
    from smartrouter.encoder import FeatureEncoder
    from smartrouter.features import MODEL_FEATURES

    rng = np.random.default_rng(3)
    n = 400
    frame = pd.DataFrame({"AMOUNT": rng.gamma(2, 800, n), "CURRENCY": rng.choice(["MXN", "USD"], n),
                          "MCI_MSI_TYPE": rng.choice(["CIT", "MIT"], n), "AVS_DATA": rng.integers(0, 2, n),
                          "MCC": rng.choice(["4511", "4722"], n), "STORED_CREDENTIAL": rng.integers(0, 2, n)})
    enc = FeatureEncoder.fit(frame, [f for f in MODEL_FEATURES if f.name in frame.columns], min_count=1)
    table = EncodedConfigs(enc)
    assert table.separable and table.table_for(None)[1].sum() >= 3
    codes = np.arange(messages.N_CONFIGS)
    for i in range(20):
        p = {"AMOUNT": float(rng.gamma(2, 800)), "CURRENCY": str(rng.choice(["MXN", "USD"])), "MCI_MSI_TYPE": "MIT",
             "AVS_DATA": 1, "MCC": "4722", "STORED_CREDENTIAL": int(rng.integers(0, 2))}
        want = np.stack([enc.encode_payment({**p, **config_fields(k)}) for k in codes])
        np.testing.assert_array_equal(table.rows(p, codes), want)


def test_service_answers_with_the_message_and_refuses_contradictions(tmp_path):
    from test_service import make_app
    from routing_fakes import write_version

    write_version(tmp_path / "models", "v1")
    with TestClient(make_app(tmp_path)) as c:
        r = c.post("/v1/route", json=body(stored_credential=True, billing_address=True, travel_package=True))
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["message_config"]["key"] in messages.CONFIG_KEYS and d["message_source"] == "model"
        assert set(d["message_config"]["fields"]) == {"mci_msi_type", "avs_data", "mcc"}
        assert len(d["message_recommendations"]) == 3 and d["message_randomized"] == 0
        old = c.post("/v1/route", json=body(mci_msi_type="MIT", avs_checked=True))  # the older schema still works
        assert old.status_code == 200 and old.json()["message_config"]["key"] == "CIT/NOAVS/4511"
        for bad, key in ((body(stored_credentials=True), "stored_credentials"), (body(stored_credential=1), "stored_credential"),
                         (body(mcc="5411"), "mcc"), (body(mci_msi_type="MIT", stored_credential=False), "mci_msi_type"),
                         (body(avs_data=True, billing_address=False), "avs_data"),
                         (body(mcc="4722", travel_package=False), "mcc")):
            r = c.post("/v1/route", json=bad)
            assert r.status_code == 400, (bad, r.text)
            assert key in [e["key"] for e in r.json()["extra"]]


@pytest.mark.parametrize("family", ["logistic", "xgb"])
def test_score_rows_matches_the_batch_scorer(tmp_path, family):
    """The one-payment batched path (xgb: compiled trees for k x P rows, global trees on k rows) gives
    the boosters' / weights' probabilities."""
    from smartrouter.models import data, make_model
    from smartrouter.models.serving import load_serving_model

    d = data.synthetic(4000, d=10, seed=2)
    params = {"n_estimators": 30, "nthread": 1} if family == "xgb" else {}
    m = make_model(family, min_rows=300, **params).fit(d.part("train"), d.part("valid"))
    served = load_serving_model(m.export(tmp_path / family, data.PassthroughEncoder(d.feature_names).to_spec()))
    X = d.part("valid").X[:8].astype(np.float32)
    X[3, ::2] = np.nan  # missing values take the trees' default branch in both paths
    for k in (1, 3, 8):
        np.testing.assert_allclose(served.score_rows(X[:k]), served.score_matrix(X[:k]), rtol=0, atol=1e-6)
