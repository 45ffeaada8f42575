"""A/B assignment: SHA-256 of a stable key (order or customer id) into control or treatment.

Control is routed by the merchant's static rules, treatment by the model. The same key always
lands in the same arm (no state, no randomness), on every process and after every restart, so
an order's retries stay in one arm. Shadow mode routes everyone by control while the model's
choice is still computed and logged.

Within the treatment arm, a canary rollout assigns each order to the canary or the champion by
the same bucketing with the rollout's own salt (`in_canary`): independent of the arm, and as the
stage shares only grow, an order on the canary stays there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from smartrouter.routing.config import ExperimentConfig

CONTROL = "control"
TREATMENT = "treatment"
ARMS: tuple[str, ...] = (CONTROL, TREATMENT)
_SCALE = float(1 << 64)


def bucket(key: str, salt: str) -> float:
    """Uniform number in [0, 1) from SHA-256(salt:key): the key's fixed place in the split."""
    digest = hashlib.sha256(f"{salt}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


@dataclass(frozen=True)
class Experiment:
    """Deterministic arm assignment under one configuration."""

    config: ExperimentConfig

    def key_of(self, payment: dict) -> str:
        """The stable key of a payment (its order or customer id, as configured)."""
        field = "ORDER_ID" if self.config.key == "order_id" else "USER_ID"
        return str(payment.get(field) or payment.get("ORDER_ID") or "")

    def assign(self, key: str) -> str:
        """The arm of ``key``; the same key always gets the same arm."""
        return TREATMENT if bucket(key, self.config.salt) < self.config.treatment_share else CONTROL

    @property
    def shadow(self) -> bool:
        return self.config.shadow


def in_canary(key: str, salt: str, share: float) -> bool:
    """Whether ``key``'s order is routed by the rollout's canary at this stage's ``share``."""
    return bucket(key, salt) < share
