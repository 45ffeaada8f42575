"""Synthetic logged-routing data with a known truth, shared by the evaluation, gate and registry tests.

The log mimics the world's logging policy: a CONTROL arm routed by static rules (propensity 1) and
an EXPERIMENT arm (share eps) routed uniformly at random among the candidates (propensity 1/|C|).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from smartrouter import catalog
from smartrouter import policies as POL

P = len(catalog.PROCESSORS)
FEATURES = ["X", "IS_USD", "IS_CREDIT", "IS_DEBIT"]


class FakeRules:
    """Stands in for smartrouter.rules.RulesEngine: one processor per (currency, brand, card type)."""

    TABLE = {("MXN", "VISA"): "WORLDPAY", ("MXN", "MASTERCARD"): "WORLDPAY", ("USD", "VISA"): "ELAVON",
             ("USD", "MASTERCARD"): "ELAVON"}

    def choose_frame(self, frame: pd.DataFrame) -> np.ndarray:
        return np.array([self.TABLE.get((c, b), "AMEX") for c, b in zip(frame["CURRENCY"], frame["CARD_BRAND"])], dtype=object)


def synthetic_log(n: int = 40_000, eps: float = 0.1, seed: int = 1, start: str = "2026-01-01"):
    """A logged mixture policy (rules with prob 1-ε, uniform with ε) over contexts with a known truth matrix."""
    rng = np.random.default_rng(seed)
    cur = rng.choice(["MXN", "USD"], n, p=[0.75, 0.25])
    brand = rng.choice(["VISA", "MASTERCARD"], n, p=[0.6, 0.4])
    ctype = rng.choice(list(catalog.CARD_TYPES), n, p=[0.5, 0.4, 0.1])
    x = rng.normal(size=n)
    mask = np.zeros((n, P), dtype=bool)
    for c in ("MXN", "USD"):  # no Amex cards here, so eligibility depends on the currency only
        mask[cur == c] = [p in catalog.eligible_processors("VISA", c) for p in catalog.PROCESSORS]
    base = np.array([1.2, 1.0, 1.1, 0.0, 1.3])
    slope = np.array([1.0, -0.9, 0.7, 0.0, -0.8])
    typ = {"CREDIT": np.array([0.3, -0.2, 0, 0, 0.1]), "DEBIT": np.array([-0.4, 0.5, 0, 0, 0]),
           "PREPAID": np.array([0, 0, 0.3, 0, -0.5])}
    logit = base[None, :] + x[:, None] * slope[None, :] + np.stack([typ[t] for t in ctype])
    truth = np.where(mask, 1 / (1 + np.exp(-logit)), 0.0)
    rules = POL.processor_index(FakeRules().choose_frame(pd.DataFrame({"CURRENCY": cur, "CARD_BRAND": brand})))
    is_exp = rng.random(n) < eps
    k = mask.sum(1)
    # uniform among candidates: the k-th eligible column, k ~ U{0..|C|-1}
    kth = (rng.random(n) * k).astype(int)
    rand_choice = (np.cumsum(mask, axis=1) <= kth[:, None]).sum(axis=1)
    action = np.where(is_exp, rand_choice, rules)
    reward = (rng.random(n) < truth[np.arange(n), action]).astype(int)
    frame = pd.DataFrame({
        "CREATED_AT": pd.Timestamp(start) + pd.to_timedelta(np.sort(rng.uniform(0, 14 * 86400, n)), unit="s"),
        "CURRENCY": cur, "CARD_BRAND": brand, "CARD_TYPE": ctype,
        "CARD_COUNTRY": rng.choice(["MX", "US", "CO", "ES"], n, p=[0.7, 0.2, 0.05, 0.05]),
        "AMOUNT": np.exp(rng.normal(7, 1, n)), "IS_RETURNING_CUSTOMER": rng.random(n) < 0.4,
        "PROCESSOR": [catalog.PROCESSORS[a] for a in action], "APPROVED": reward,
        "EXPERIMENT_ARM": np.where(is_exp, "EXPERIMENT", "CONTROL"), "PROPENSITY": np.where(is_exp, 1.0 / k, 1.0),
        "CANDIDATES": [json.dumps([catalog.PROCESSORS[j] for j in np.flatnonzero(m)]) for m in mask],
        "NUM_ATTEMPTS_ORDER": 1, "X": x, "IS_USD": (cur == "USD").astype(float),
        "IS_CREDIT": (ctype == "CREDIT").astype(float), "IS_DEBIT": (ctype == "DEBIT").astype(float),
    })
    return frame, truth, mask


class FakeOracle:
    def __init__(self, frame: pd.DataFrame, truth: np.ndarray) -> None:
        self.lookup = dict(zip(frame["CREATED_AT"], truth))

    def probability_matrix(self, frame: pd.DataFrame, resolved_only: bool = False) -> np.ndarray:
        # the synthetic log has no PROCESSING outcomes: resolved or not, the truth is the same
        return np.stack([self.lookup[t] for t in frame["CREATED_AT"]])


def model_probs(truth: np.ndarray, noise: float, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logit = np.log(np.clip(truth, 1e-4, 1 - 1e-4) / (1 - np.clip(truth, 1e-4, 1 - 1e-4)))
    return 1 / (1 + np.exp(-(logit + rng.normal(0, noise, truth.shape))))




def split_frame(frame: pd.DataFrame, valid: float = 0.15, test: float = 0.3) -> pd.DataFrame:
    """SPLIT by time: train, then valid, then test (latest)."""
    n = len(frame)
    a, b = int(n * (1 - valid - test)), int(n * (1 - test))
    split = np.array(["train"] * a + ["valid"] * (b - a) + ["test"] * (n - b), dtype=object)
    return frame.assign(SPLIT=split)


def export_logistic(frame: pd.DataFrame, folder: Path, shuffle_labels: bool = False, seed: int = 0) -> Path:
    """Train smartrouter's logistic family on the train/valid split of ``frame`` and export its serving form."""
    from smartrouter.models.data import ModelData, PassthroughEncoder
    from smartrouter.models.logistic import LogisticModel

    y = frame["APPROVED"].to_numpy(dtype=np.float32)
    if shuffle_labels:
        y = np.random.default_rng(seed).permutation(y)
    data = ModelData(X=frame[FEATURES].to_numpy(dtype=np.float32), processor_idx=POL.processor_index(frame["PROCESSOR"]),
                     y=y, weight=np.ones(len(frame), dtype=np.float32), split=frame["SPLIT"].to_numpy(),
                     feature_names=list(FEATURES))
    split = frame["SPLIT"].to_numpy()
    model = LogisticModel(min_rows=300, min_class=30, seed=seed).fit(data.subset(split == "train"), data.subset(split == "valid"))
    return model.export(folder, PassthroughEncoder(FEATURES).to_spec())


def indifferent_log(n: int = 40_000, eps: float = 0.1, seed: int = 1):
    """``synthetic_log`` in a world where the processor does not matter: every eligible processor of a row
    approves with the same probability, so every routing policy has exactly the same true value."""
    frame, _, mask = synthetic_log(n=n, eps=eps, seed=seed)
    p_row = 1 / (1 + np.exp(-(1.0 + 0.8 * frame["X"].to_numpy())))
    truth = np.where(mask, p_row[:, None], 0.0)
    rng = np.random.default_rng(seed + 1)
    action = POL.processor_index(frame["PROCESSOR"])
    frame = frame.assign(APPROVED=(rng.random(n) < truth[np.arange(n), action]).astype(int))
    return frame, truth, mask
