"""The card networks' retry rules, read strictly from src/smartrouter/retry_rules.toml.

`load_rules()` returns `RetryRules`; `RetryRules.verdict(...)` says whether ANY retry of a declined
attempt is allowed, which rule decides, and the earliest delay allowed. The advice
(smartrouter.retry.advice) asks for a verdict before anything else and can only answer "retry"
when it allows, at a delay bucket no shorter than its spacing: a violation cannot be advised.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smartrouter import catalog
from smartrouter.config import PACKAGE_DIR

DEFAULT_PATH = PACKAGE_DIR / "retry_rules.toml"
ENV_VAR = "SMARTROUTER_RETRY_RULES"
BUCKETS: tuple[str, ...] = ("immediate", "minutes", "hours")
_NETWORK_KEYS: dict[str, type] = {
    "never_retry_codes": list, "merchant_advice_never": list, "max_retries_24h": int, "max_retries_30d": int,
    "min_spacing_seconds": float,
}
_SCHEMA: dict[str, dict[str, type]] = {
    "order": {"max_attempts": int},
    "delays": {b: float for b in BUCKETS},
    "value": {"attempt_cost": float, **{f"wait_cost_{b}": float for b in BUCKETS}, "retry_budget": float},
}


@dataclass(frozen=True)
class NetworkRule:
    brand: str
    never_retry_codes: frozenset[str]
    merchant_advice_never: frozenset[str]
    max_retries_24h: int
    max_retries_30d: int
    min_spacing_seconds: float


@dataclass(frozen=True)
class Verdict:
    """Whether a retry is allowed at all, the rule that decides, and the earliest allowed delay."""

    allowed: bool
    rule: str  # e.g. "VISA never-retry code 14", "MASTERCARD 10 retries / 24 h", "order max 3 attempts"
    min_delay_seconds: float = 0.0
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetryRules:
    path: str
    max_attempts: int
    networks: dict[str, NetworkRule]
    delays: dict[str, float]
    attempt_cost: float
    wait_cost: dict[str, float] = field(default_factory=dict)
    retry_budget: float = 1.0

    def verdict(self, brand: str, code: str, attempt_number: int, retries_24h: int, retries_30d: int,
                merchant_advice_code: str | None = None) -> Verdict:
        """May the declined attempt ``attempt_number`` (1 = first) of a ``brand`` card be retried?

        ``retries_24h`` / ``retries_30d``: retries of this card already made in those windows."""
        net = self.networks[brand]
        if code in net.never_retry_codes:
            info = catalog.ERROR_CODES[code]
            return Verdict(False, f"{brand} never-retry code {code}",
                           reasons=(f"{brand} rules: code {code} ({info.description}) must never be retried",))
        if merchant_advice_code is not None and merchant_advice_code in net.merchant_advice_never:
            return Verdict(False, f"{brand} merchant advice code {merchant_advice_code}",
                           reasons=(f"{brand} merchant advice code {merchant_advice_code}: do not try again",))
        if attempt_number >= self.max_attempts:
            return Verdict(False, f"order max {self.max_attempts} attempts",
                           reasons=(f"attempt {attempt_number} was the order's last (max {self.max_attempts} attempts)",))
        if retries_24h + 1 > net.max_retries_24h:
            return Verdict(False, f"{brand} {net.max_retries_24h} retries / 24 h",
                           reasons=(f"{brand} limit: the card already had {retries_24h} retries in 24 h "
                                    f"(max {net.max_retries_24h})",))
        if retries_30d + 1 > net.max_retries_30d:
            return Verdict(False, f"{brand} {net.max_retries_30d} retries / 30 days",
                           reasons=(f"{brand} limit: the card already had {retries_30d} retries in 30 days "
                                    f"(max {net.max_retries_30d})",))
        left = min(net.max_retries_24h - retries_24h, net.max_retries_30d - retries_30d)
        return Verdict(True, f"{brand} retry allowed ({left} left in the card's windows)", net.min_spacing_seconds,
                       (f"{brand} rules allow a retry of code {code}: {left} retries left for the card",))

    def buckets_allowed(self, verdict: Verdict) -> list[str]:
        """The delay buckets a retry may use under ``verdict`` (none when it forbids retrying)."""
        if not verdict.allowed:
            return []
        return [b for b in BUCKETS if self.delays[b] >= verdict.min_delay_seconds]

    def violation(self, brand: str, code: str, attempt_number: int, retries_24h: int, retries_30d: int,
                  delay_seconds: float, merchant_advice_code: str | None = None) -> str | None:
        """The rule a retry made after ``delay_seconds`` breaks, or None (for evaluation and tests)."""
        v = self.verdict(brand, code, attempt_number, retries_24h, retries_30d, merchant_advice_code)
        if not v.allowed:
            return v.rule
        if delay_seconds < v.min_delay_seconds:
            return f"{brand} min spacing {v.min_delay_seconds:g} s"
        return None


def load_rules(path: str | Path | None = None) -> RetryRules:
    """The retry rules from ``path`` ($SMARTROUTER_RETRY_RULES, else the package's retry_rules.toml),
    read strictly (`smartrouter.strict_toml`); every card brand the service accepts needs its table."""
    from smartrouter import strict_toml

    path = Path(path or os.environ.get(ENV_VAR) or DEFAULT_PATH)
    schema = {**_SCHEMA, "networks": {}, **{f"networks.{b}": _NETWORK_KEYS for b in catalog.CARD_BRANDS}}
    t = strict_toml.load(path, schema, what="retry rules", home="src/smartrouter/retry_rules.toml")

    def require(cond: bool, where: str, message: str) -> None:
        strict_toml.require(cond, path, where, message)

    networks = {}
    for brand in catalog.CARD_BRANDS:
        where = f"[networks.{brand}]"
        v = t[f"networks.{brand}"]
        bad = [c for c in v["never_retry_codes"] if c not in catalog.ERROR_CODES]
        require(not bad, where, f"never_retry_codes {bad} are not in the catalog ({', '.join(catalog.ERROR_CODES)}); "
                                "add the code to smartrouter.catalog first")
        macs = [c for c in v["merchant_advice_never"] if not (len(c) == 2 and c.isdigit())]
        require(not macs, where, f"merchant_advice_never {macs} must be two-digit codes, e.g. \"03\"")
        for k in ("max_retries_24h", "max_retries_30d", "min_spacing_seconds"):
            require(v[k] >= 0, where, f"{k} = {v[k]} must be >= 0")
        networks[brand] = NetworkRule(brand, frozenset(v["never_retry_codes"]), frozenset(v["merchant_advice_never"]),
                                      v["max_retries_24h"], v["max_retries_30d"], v["min_spacing_seconds"])
    order, delays, value = t["order"], t["delays"], t["value"]
    require(1 <= order["max_attempts"] <= 20, "[order]", f"max_attempts = {order['max_attempts']} must be 1..20 (the API's attempt range)")
    seq = [delays[b] for b in BUCKETS]
    require(seq[0] >= 0 and all(a < b for a, b in zip(seq, seq[1:])), "[delays]",
            f"must be immediate < minutes < hours, all >= 0 (got {seq})")
    require(all(value[k] >= 0 for k in value), "[value]", "costs and the retry budget must be >= 0")
    return RetryRules(str(path), order["max_attempts"], networks, dict(delays),
                      value["attempt_cost"], {b: value[f"wait_cost_{b}"] for b in BUCKETS}, value["retry_budget"])


DAY_SECONDS = 86_400.0
WINDOWS_SECONDS = {"24h": DAY_SECONDS, "30d": 30 * DAY_SECONDS}


class CardRetryCounter:
    """Retries made per card (the caller's view: card key -> retry times), counted in the rules' windows.

    The merchant's router keeps this for its cards and sends the counts with every /v1/retry; the
    simulation and the live loop keep one the same way. Times are epoch seconds; out-of-order
    records are fine (kept sorted)."""

    def __init__(self) -> None:
        self._times: dict[Any, list[float]] = {}

    def record(self, card: Any, at: float) -> None:
        times = self._times.setdefault(card, [])
        bisect.insort(times, float(at))
        # older than every window of the newest retry (+1 day for late records): never counted again
        cut = bisect.bisect_left(times, times[-1] - WINDOWS_SECONDS["30d"] - DAY_SECONDS)
        if cut > 0:
            del times[:cut]

    def counts(self, card: Any, at: float) -> tuple[int, int]:
        """(retries in the last 24 h, in the last 30 days) as of ``at``, retries already scheduled for
        later included: a retry decided at ``at`` happens at ``at`` + its delay, and every window that
        can then hold it starts after ``at`` - its length, so counting from there to any future time
        keeps every window within the limits (tests/test_retry_rules.py, random sequences)."""
        times = self._times.get(card)
        if not times:
            return 0, 0
        n = len(times)
        return (n - bisect.bisect_left(times, float(at) - WINDOWS_SECONDS["24h"]),
                n - bisect.bisect_left(times, float(at) - WINDOWS_SECONDS["30d"]))
