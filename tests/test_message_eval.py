"""Message evaluation: processor-only vs joint vs oracle-best joint (true and OPE values) on a
synthetic log with known truth, the eligibility counts, and the gate that refuses a model whose
served recommendations break eligibility."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from smartrouter import catalog, evaluation as E, message_eval as ME, messages
from smartrouter.gates import load_config
from smartrouter.money import objective
from smartrouter.policies import candidate_mask

P, C = len(catalog.PROCESSORS), messages.N_CONFIGS
BASE = np.array([0.70, 0.74, 0.72, 0.80, 0.66])  # catalog order: WORLDPAY, MIT, ELAVON, AMEX, ADYEN
# gain of each "on" toggle (MIT initiator, AVS data, MCC 4722) per processor: big enough to move choices
GAIN = np.array([[0.10, 0.00, 0.00], [0.00, 0.00, 0.08], [0.00, 0.09, 0.00], [0.03, 0.03, 0.03], [0.00, 0.00, 0.00]])
ON = np.stack([messages.CONFIG_MIT, messages.CONFIG_AVS, messages.CONFIG_MCC], axis=1).astype(float)  # (C, 3)
TRUE = BASE[:, None] + GAIN @ ON.T  # (P, C): the same for every payment


def world(n: int = 6000, seed: int = 7) -> pd.DataFrame:
    """First attempts logged by rules (WORLDPAY, default message) and a 30 % uniform experiment arm."""
    rng = np.random.default_rng(seed)
    f = pd.DataFrame({"ORDER_ID": [f"o{i}" for i in range(n)], "AMOUNT": rng.gamma(2, 800, n), "CURRENCY": "MXN",
                      "CARD_BRAND": rng.choice(["VISA", "MASTERCARD"], n), "CARD_TYPE": "CREDIT", "CARD_BIN": "411111",
                      "CARD_COUNTRY": rng.choice(["MX", "US"], n), "CHANNEL": rng.choice(["WEB", "APP"], n),
                      "NUM_ATTEMPTS_ORDER": 1, "STORED_CREDENTIAL": rng.integers(0, 2, n),
                      "BILLING_ADDRESS": rng.integers(0, 2, n), "TRAVEL_PACKAGE": rng.integers(0, 2, n)})
    mask = candidate_mask(f)
    elig = messages.eligible_matrix(f)
    exp = rng.random(n) < 0.3
    proc = np.where(exp, [rng.choice(np.flatnonzero(m)) for m in mask], catalog.PROCESSOR_INDEX["WORLDPAY"])
    cfg = np.where(exp, [rng.choice(np.flatnonzero(e)) for e in elig], messages.default_config(f))
    f["EXPERIMENT_ARM"] = np.where(exp, "EXPERIMENT", "CONTROL")
    f["PROCESSOR"] = np.array(catalog.PROCESSORS)[proc]
    f["PROPENSITY"] = np.where(exp, 1.0 / mask.sum(axis=1), 1.0)
    f[messages.PROPENSITY_COLUMN] = np.where(exp, 1.0 / elig.sum(axis=1), 1.0)
    for col, values in messages.config_columns(cfg).items():
        f[col] = values
    f["APPROVED"] = (rng.random(n) < TRUE[proc, cfg]).astype(int)
    return f


class Oracle:
    def joint_probability_matrix(self, frame, resolved_only=True, eligible_only=True):
        t = np.broadcast_to(TRUE, (len(frame), P, C)).copy()
        mask = candidate_mask(frame)[:, :, None] & messages.eligible_matrix(frame)[:, None, :]
        return np.where(mask, t, 0.0)


class FrameModel:
    """A serving-form stand-in scored on frames: ``aware`` models know the message effects, others do not."""

    def __init__(self, aware: bool):
        self.aware = aware
        self.encoder = SimpleNamespace(transform=lambda frame: frame)

    def score_matrix(self, frame):
        codes = messages.config_codes(frame)
        return TRUE[:, codes].T if self.aware else np.broadcast_to(BASE, (len(frame), P)).copy()


def run_eval(model_aware: bool):
    first = world()
    mask = candidate_mask(first)
    rules = np.full(len(first), catalog.PROCESSOR_INDEX["WORLDPAY"])
    ev = SimpleNamespace(first=first, first_mask=mask, logged=E.logged_data(first, rules, mode="pooled", mask=mask))
    return ME.evaluate_messages(ev, FrameModel(model_aware), "fake", oracle=Oracle(), objective=objective(), n_boot=200)


def test_a_model_that_knows_the_message_effects_reaches_the_oracle_best_joint_choice():
    me = run_eval(True)
    assert me.ineligible == {"processor_only": 0, "joint": 0, "oracle_joint": 0, "oracle_config": 0}
    assert me.truth["joint"] == pytest.approx(me.truth["oracle_joint"]) and me.gain_share == pytest.approx(1.0)
    # the message headroom alone: processor_only's processor with its best eligible message
    assert me.truth["processor_only"] < me.truth["oracle_config"] <= me.truth["oracle_joint"]
    assert me.message_share == pytest.approx((me.truth["joint"] - me.truth["processor_only"])
                                             / (me.truth["oracle_config"] - me.truth["processor_only"]))
    assert me.truth["joint"] > me.truth["processor_only"] + 0.02 and me.changed_share > 0.3
    lifts = me.lifts.set_index(["policy", "estimator"])
    # a perfect outcome model: DM is exact; every estimator's interval covers the true lift (pairs are
    # explored thinly, ~1 in 4 x 8 experiment rows, so IPS/DR intervals are wide but honest)
    assert lifts.loc[("joint", "DM"), "lift"] == pytest.approx(lifts.loc[("joint", "DM"), "true_lift"])
    assert ((lifts["ci_low"] <= lifts["true_lift"]) & (lifts["true_lift"] <= lifts["ci_high"])).all()
    assert me.table["covered"].all()


def test_a_message_blind_model_gains_nothing_and_sends_the_default():
    me = run_eval(False)
    assert me.truth["joint"] == pytest.approx(me.truth["processor_only"]) and me.gain_share == pytest.approx(0.0)
    assert me.message_share == pytest.approx(0.0)
    assert me.changed_share == 0.0
    assert me.to_json()["ineligible"]["joint"] == 0


def test_ineligible_choices_are_counted():
    f = world(50)
    ch = ME.choose(f, np.broadcast_to(TRUE, (len(f), P, C)).copy(), objective())
    assert ME.ineligible_count(ch) == {"processor_only": 0, "joint": 0}
    no_mit = np.flatnonzero(f["STORED_CREDENTIAL"].to_numpy() == 0)
    ch.config["joint"][no_mit[0]] = messages.CONFIG_INDEX[messages.parse_config_key("MIT/NOAVS/4511")]
    assert ME.ineligible_count(ch)["joint"] == 1


def test_gate_refuses_a_model_whose_served_messages_break_eligibility(monkeypatch):
    from test_message_routing import MessageModel

    frame = world(400)
    monkeypatch.setattr("smartrouter.models.serving.load_serving_model", lambda folder: MessageModel())
    cfg = load_config()
    ok = ME.eligibility_gate("serving-dir", frame, cfg)
    assert ok.passed and ok.details["decisions"] == 400 and ok.details["non_default_sent"] > 0
    # a router that forgot the rule: every configuration allowed when scoring (the bug the gate is for)
    monkeypatch.setattr("smartrouter.routing.messages.messages.eligible_mask",
                        lambda payment: np.ones(C, dtype=bool))
    bad = ME.eligibility_gate("serving-dir", frame, cfg)
    assert not bad.passed and bad.value > 0 and "ineligible" in bad.reason
    none = ME.eligibility_gate(None, frame, cfg)
    assert not none.passed and "no serving form" in none.reason
