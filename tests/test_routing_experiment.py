"""A/B assignment (SHA-256, deterministic) and Thompson-sampling exploration (cap, propensities)."""

from __future__ import annotations

import numpy as np

from smartrouter.routing import CONTROL, TREATMENT, Experiment
from smartrouter.routing.bandit import ThompsonBandit
from smartrouter.routing.config import ExperimentConfig, ExplorationConfig
from smartrouter.routing.experiment import bucket


def test_same_key_same_arm_and_split_matches_config():
    e = Experiment(ExperimentConfig(treatment_share=0.3, salt="s1"))
    arms = [e.assign(f"order-{i}") for i in range(20000)]
    assert arms == [e.assign(f"order-{i}") for i in range(20000)]  # deterministic
    assert Experiment(ExperimentConfig(treatment_share=0.3, salt="s1")).assign("order-7") == arms[7]
    share = arms.count(TREATMENT) / len(arms)
    assert abs(share - 0.3) < 0.015
    # a different salt reshuffles keys (a new experiment), the share stays
    other = [Experiment(ExperimentConfig(treatment_share=0.3, salt="s2")).assign(f"order-{i}") for i in range(2000)]
    assert other != arms[:2000]


def test_bucket_is_sha256_of_salt_and_key():
    import hashlib

    expected = int.from_bytes(hashlib.sha256(b"salt:key").digest()[:8], "big") / 2**64
    assert bucket("key", "salt") == expected


def test_extreme_splits():
    assert Experiment(ExperimentConfig(treatment_share=0.0)).assign("x") == CONTROL
    assert Experiment(ExperimentConfig(treatment_share=1.0)).assign("x") == TREATMENT


def test_exploration_share_never_exceeds_the_cap():
    b = ThompsonBandit(ExplorationConfig(max_share=0.05, seed=3))
    seg = ("MXN", "VISA", "CREDIT")
    cands = ["WORLDPAY", "MIT", "ELAVON"]
    explored = 0
    for i in range(10000):
        c = b.decide(seg, cands, "WORLDPAY")
        explored += c.explored
        assert explored <= 0.05 * (i + 1) + 1e-9  # at every point in time
    assert 0.03 < explored / 10000 <= 0.05
    assert b.share == explored / 10000


def test_propensities_are_probabilities_of_the_choice():
    """An explored choice is drawn from Thompson's win shares mixed with a uniform floor, and the
    logged propensity is exactly that mixture's probability (never a Monte-Carlo zero)."""
    eps, floor = 0.2, 0.5
    b = ThompsonBandit(ExplorationConfig(max_share=eps, uniform_floor=floor, propensity_samples=4000, seed=1))
    seg = ("USD", "VISA", "DEBIT")
    for _ in range(300):  # ELAVON clearly better in this segment
        b.observe("ELAVON", seg, True)
        b.observe("WORLDPAY", seg, False)
    p = b.ts_probabilities(seg, ["WORLDPAY", "ELAVON"])
    assert p[1] > 0.99 and abs(p.sum() - 1) < 1e-9
    n = 3000
    choices = [b.decide(seg, ["WORLDPAY", "ELAVON"], "WORLDPAY") for _ in range(n)]
    elavon = eps * ((1 - floor) * p[1] + floor / 2)  # only an explored draw picks it
    for c in choices:
        if c.chosen == "WORLDPAY":
            assert c.propensity == 1.0 or abs(c.propensity - (1 - elavon)) < 1e-9
        else:
            assert c.explored and abs(c.propensity - elavon) < 1e-9
    # the propensities are the choice's frequencies: ELAVON's share within 4 binomial standard errors
    may = [c for c in choices if c.propensity < 1.0]  # decisions where exploring was allowed
    share = np.mean([c.chosen == "ELAVON" for c in may])
    assert abs(share - elavon) < 4 * np.sqrt(elavon * (1 - elavon) / len(may))
    # no propensity below the floor's bound: eps x floor / |candidates|
    assert min(c.propensity for c in choices) >= eps * floor / 2 - 1e-12


def test_single_candidate_never_explores():
    b = ThompsonBandit(ExplorationConfig(max_share=0.5))
    assert all(not b.decide(("MXN", "AMEX", "CREDIT"), ["AMEX"], "AMEX").explored for _ in range(100))
