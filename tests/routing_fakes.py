"""Test doubles for the routing tests: a tiny serving model with H5's interface, rule rows, payments."""

from __future__ import annotations

import json
import os
from pathlib import Path

from smartrouter import catalog
from smartrouter.errors import ArtifactError

RULE_ROWS = [
    # MXN VISA CREDIT -> WORLDPAY then MIT; other MXN -> WORLDPAY then ELAVON; USD -> ELAVON then WORLDPAY; Amex -> AMEX
    {"RULE_ID": 1, "MERCHANT": "VOLARIS", "CURRENCY": "MXN", "CARD_BRAND": "VISA", "CARD_TYPE": "CREDIT", "PROCESSOR": "WORLDPAY", "PRIORITY": 1, "SHADOW_MODE": False, "ACTIVE_FROM": None},
    {"RULE_ID": 2, "MERCHANT": "VOLARIS", "CURRENCY": "MXN", "CARD_BRAND": "VISA", "CARD_TYPE": "CREDIT", "PROCESSOR": "MIT", "PRIORITY": 2, "SHADOW_MODE": False, "ACTIVE_FROM": None},
    {"RULE_ID": 3, "MERCHANT": "VOLARIS", "CURRENCY": "MXN", "CARD_BRAND": "*", "CARD_TYPE": "*", "PROCESSOR": "WORLDPAY", "PRIORITY": 1, "SHADOW_MODE": False, "ACTIVE_FROM": None},
    {"RULE_ID": 4, "MERCHANT": "VOLARIS", "CURRENCY": "MXN", "CARD_BRAND": "*", "CARD_TYPE": "*", "PROCESSOR": "ELAVON", "PRIORITY": 2, "SHADOW_MODE": False, "ACTIVE_FROM": None},
    {"RULE_ID": 5, "MERCHANT": "VOLARIS", "CURRENCY": "USD", "CARD_BRAND": "*", "CARD_TYPE": "*", "PROCESSOR": "ELAVON", "PRIORITY": 1, "SHADOW_MODE": False, "ACTIVE_FROM": None},
    {"RULE_ID": 6, "MERCHANT": "VOLARIS", "CURRENCY": "USD", "CARD_BRAND": "*", "CARD_TYPE": "*", "PROCESSOR": "WORLDPAY", "PRIORITY": 2, "SHADOW_MODE": False, "ACTIVE_FROM": None},
    {"RULE_ID": 7, "MERCHANT": "VOLARIS", "CURRENCY": "*", "CARD_BRAND": "AMEX", "CARD_TYPE": "*", "PROCESSOR": "AMEX", "PRIORITY": 1, "SHADOW_MODE": False, "ACTIVE_FROM": None},
]

BASE_PROBS = {"WORLDPAY": 0.70, "MIT": 0.80, "ELAVON": 0.75, "AMEX": 0.85, "ADYEN": 0.60}


def payment(**over) -> dict:
    """A payment dict as the router sees it (upper-case attempt columns)."""
    p = {"ORDER_ID": "O-1", "USER_ID": "U-1", "AMOUNT": 1500.0, "CURRENCY": "MXN", "CARD_BIN": "411111",
         "CARD_BRAND": "VISA", "CARD_TYPE": "CREDIT", "CARD_COUNTRY": "MX", "MCI_MSI_TYPE": "CIT", "NUM_ATTEMPTS_ORDER": 1}
    p.update(over)
    return p


def body(**over) -> dict:
    """A /v1/route request body."""
    b = {"order_id": "O-1", "user_id": "U-1", "amount": 1500.0, "currency": "MXN", "card_bin": "411111",
         "card_brand": "VISA", "card_type": "CREDIT", "card_country": "MX"}
    b.update(over)
    return b


class FakeModel:
    """H5's ServingModel interface: score(payment) -> {processor: prob}, contributions, uncertain, family."""

    family = "fake"

    def __init__(self, probs: dict[str, float] | None = None, uncertain: tuple[str, ...] = (), amount_slope: float = 0.0,
                 message_bonus: dict[str, dict[str, float]] | None = None):
        self.probs = dict(BASE_PROBS if probs is None else probs)
        self.uncertain = tuple(uncertain)
        self.amount_slope = amount_slope
        # message column -> {value as text: probability added}: a model that has learned a message effect
        self.message_bonus = {col: dict(values) for col, values in (message_bonus or {}).items()}
        self.processors = catalog.PROCESSORS

    def score(self, payment: dict) -> dict[str, float]:
        shift = self.amount_slope * float(payment.get("AMOUNT") or 0.0) / 10000.0
        shift -= sum(values.get(str(payment.get(col)), 0.0) for col, values in self.message_bonus.items())
        return {p: min(max(v - shift, 0.0), 1.0) for p, v in self.probs.items()}

    def contributions(self, payment: dict, processor: str, top_k: int = 5):
        return [("AMOUNT", -0.1), ("CARD_BRAND=VISA", 0.05)][:top_k]


def write_version(registry: Path, version: str, probs: dict | None = None, broken: bool = False, promote: bool = True,
                  message_bonus: dict | None = None) -> Path:
    """A registry version folder holding a fake serving form (model.json), optionally promoted."""
    serving = registry / version / "serving"
    serving.mkdir(parents=True, exist_ok=True)
    (serving / "model.json").write_text(json.dumps({"probs": probs or BASE_PROBS, "broken": broken,
                                                    "message_bonus": message_bonus or {}}))
    if promote:
        promote_pointer(registry, version)
    return serving


def promote_pointer(registry: Path, version: str) -> None:
    tmp = registry / "PROMOTED.tmp"
    tmp.write_text(json.dumps({"version": version, "reason": "test"}))
    os.replace(tmp, registry / "PROMOTED")


def fake_loader(path: Path) -> FakeModel:
    spec = json.loads((Path(path) / "model.json").read_text())
    if spec.get("broken"):
        raise ArtifactError(f"{path}/model.json: checksum mismatch")
    return FakeModel(spec["probs"], message_bonus=spec.get("message_bonus"))
