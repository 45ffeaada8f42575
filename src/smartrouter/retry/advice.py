"""The retry advice: retry or not, after which delay bucket, where, and why.

`RetryAdvisor.advise` decides for one declined attempt from (1) the network rules' verdict
(`rules.RetryRules.verdict`: never-retry codes, merchant advice codes, the order's attempt cap, the
card's reattempt counts), (2) processor health (darktime: after a processor error, or when the
previous processor is DOWN, the retry goes immediately to another processor) and (3) the retry
model's P(approved) for every (delay bucket, eligible processor), priced as

    EV(retry at bucket b on q) = P(approved | context, q, b) - attempt_cost - wait_cost[b],  EV(stop) = 0.

The rules are asked first and only buckets they allow are priced, so an advice to retry that breaks
a rule cannot be produced (tests/test_retry_rules.py checks it over random sequences).
The same `advise` serves the service (one payment) and the simulation (every declined attempt
of a test window), so what is evaluated is what is served.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from smartrouter import catalog
from smartrouter.features import add_derived, derive_row
from smartrouter.retry.rules import BUCKETS, RetryRules, Verdict

# the next attempt's retry columns (features.py names them); everything else is the declined attempt's
RETRY_COLUMNS = ("NUM_ATTEMPTS_ORDER", "PREVIOUS_ORDER_ERROR_CODE", "PREVIOUS_PROCESSOR", "PREVIOUS_HARD_SOFT",
                 "SEC_SINCE_PREVIOUS_ATTEMPT", "AVG_SEC_BETWEEN_PAYMENT_ATTEMPS", "CREATED_AT", "HOUR_LOCAL",
                 "HOUR_LOCAL_NUMBER")


def is_processor_error(code: str) -> bool:
    info = catalog.ERROR_CODES.get(code)
    return info is not None and info.category == catalog.PROCESSOR_ERROR_CATEGORY


def _avg_gap(prev_avg: Any, attempt_number: int, delay: float) -> float:
    """Mean gap between the order's attempts once the retry is made (the warehouse's running mean)."""
    gaps_before = attempt_number - 1
    if gaps_before <= 0 or prev_avg is None or (isinstance(prev_avg, float) and math.isnan(prev_avg)):
        return delay
    return (float(prev_avg) * gaps_before + delay) / (gaps_before + 1)


def retry_payment(payment: Mapping[str, Any], code: str, processor: str, attempt_number: int,
                  delay: float) -> dict[str, Any]:
    """The next attempt's feature row: the declined attempt ``payment`` retried after ``delay`` seconds."""
    out = dict(payment)
    created = payment.get("CREATED_AT")
    if isinstance(created, str):
        created = datetime.fromisoformat(created)
    out.update(
        NUM_ATTEMPTS_ORDER=attempt_number + 1, PREVIOUS_ORDER_ERROR_CODE=code, PREVIOUS_PROCESSOR=processor,
        SEC_SINCE_PREVIOUS_ATTEMPT=float(delay),
        AVG_SEC_BETWEEN_PAYMENT_ATTEMPS=_avg_gap(payment.get("AVG_SEC_BETWEEN_PAYMENT_ATTEMPS"), attempt_number, delay),
        CREATED_AT=created + timedelta(seconds=float(delay)) if isinstance(created, datetime) else created,
    )
    d = derive_row(out)
    out["PREVIOUS_HARD_SOFT"] = d["PREVIOUS_HARD_SOFT"]
    out["HOUR_LOCAL"] = d["HOUR_LOCAL"]
    out["HOUR_LOCAL_NUMBER"] = d["HOUR_LOCAL_NUMBER"]
    return out


def retry_frame(frame: pd.DataFrame, delay: float) -> pd.DataFrame:
    """`retry_payment` for every row of a frame of declined attempts (their ERROR_CODE, PROCESSOR and
    NUM_ATTEMPTS_ORDER), all retried after ``delay`` seconds (same definitions; a test proves parity)."""
    out = frame.copy()
    n_prev = pd.to_numeric(frame["NUM_ATTEMPTS_ORDER"], errors="coerce").fillna(1).astype(int)
    prev_avg = pd.to_numeric(frame.get("AVG_SEC_BETWEEN_PAYMENT_ATTEMPS"), errors="coerce") \
        if "AVG_SEC_BETWEEN_PAYMENT_ATTEMPS" in frame else pd.Series(np.nan, index=frame.index)
    gaps = (n_prev - 1).to_numpy()
    avg = np.where((gaps > 0) & prev_avg.notna().to_numpy(),
                   (prev_avg.fillna(0).to_numpy() * gaps + delay) / np.maximum(gaps + 1, 1), delay)
    out["NUM_ATTEMPTS_ORDER"] = n_prev.to_numpy() + 1
    out["PREVIOUS_ORDER_ERROR_CODE"] = frame["ERROR_CODE"].to_numpy()
    out["PREVIOUS_PROCESSOR"] = frame["PROCESSOR"].to_numpy()
    out["SEC_SINCE_PREVIOUS_ATTEMPT"] = float(delay)
    out["AVG_SEC_BETWEEN_PAYMENT_ATTEMPS"] = avg
    out["CREATED_AT"] = pd.to_datetime(frame["CREATED_AT"]) + pd.Timedelta(seconds=float(delay))
    return add_derived(out)


@dataclass(frozen=True)
class Advice:
    """The answer for one declined attempt."""

    retry: bool
    delay: str | None  # immediate | minutes | hours (None: do not retry)
    delay_seconds: float | None
    processor: str | None
    ranked: list[tuple[str, float | None]]  # the retry's processors, best first, at the advised (or best) bucket
    ev: dict[str, float | None]  # now / later / stop
    rule: str  # the network rule that applies
    reasons: list[str] = field(default_factory=list)
    # retry_model (priced) | rules (decided by the rules or darktime alone) | no_model (no advice: an issuer
    # decline the rules allow retrying and no model to price it; the caller keeps its own policy)
    source: str = "retry_model"


@dataclass
class RetryAdvisor:
    """Decides retries under ``rules`` (see the module docstring)."""

    rules: RetryRules
    # the retry model's operating point: the price of an issuer-decline retry above the rules' attempt_cost
    # that keeps the retries within the merchant's retry budget (calibrated in training, policy.json);
    # darktime retries pay the rules' attempt_cost only
    extra_cost: float = 0.0

    @property
    def attempt_cost(self) -> float:
        return self.rules.attempt_cost + self.extra_cost

    def verdict(self, brand: str, code: str, attempt_number: int, retries_24h: int, retries_30d: int,
                merchant_advice_code: str | None = None) -> Verdict:
        return self.rules.verdict(brand, code, attempt_number, retries_24h, retries_30d, merchant_advice_code)

    def plan(self, verdict: Verdict, code: str, processor: str, eligible: Sequence[str],
             down: frozenset[str] | set[str] = frozenset(), darktime: bool = True) -> tuple[list[str], list[str], list[str]]:
        """(buckets to price, processors to price, reasons) for a retry the rules allow (``darktime``
        False: every allowed bucket and processor, as the oracle-best policy prices them)."""
        reasons: list[str] = []
        buckets = self.rules.buckets_allowed(verdict)
        procs = [p for p in eligible if p not in down] or list(eligible)
        if len(procs) < len(eligible):
            reasons.append(f"{', '.join(p for p in eligible if p in down)} DOWN: not a retry target")
        dark = darktime and (is_processor_error(code) or processor in down)
        if dark and buckets:
            others = [p for p in procs if p != processor]
            why = f"{code} is a processor error" if is_processor_error(code) else f"{processor} is DOWN"
            if others:
                procs = others
                reasons.append(f"darktime: {why}, the issuer never saw the payment: retry immediately on another processor")
            else:
                reasons.append(f"darktime: {why}, but no other processor may take this card: retry immediately on {processor}")
            buckets = buckets[:1]  # the earliest the rules allow
        return buckets, procs, reasons

    def advise(self, verdict: Verdict, code: str, processor: str, eligible: Sequence[str],
               probs: Callable[[str], Mapping[str, float]] | None, down: frozenset[str] | set[str] = frozenset(),
               source: str = "retry_model", darktime: bool = True) -> Advice:
        """The advice given the rules' ``verdict`` and ``probs(bucket) -> {processor: P(approved)}``
        (None: no model can price a retry; only darktime retries are advised then)."""
        stop_ev = 0.0
        if not verdict.allowed:
            return Advice(False, None, None, None, [], {"now": None, "later": None, "stop": stop_ev}, verdict.rule,
                          list(verdict.reasons) + ["stop: the network rules forbid a retry"], source)
        buckets, procs, reasons = self.plan(verdict, code, processor, eligible, down, darktime)
        reasons = list(verdict.reasons) + reasons
        if not buckets or not procs:
            return Advice(False, None, None, None, [], {"now": None, "later": None, "stop": stop_ev}, verdict.rule,
                          reasons + ["stop: no delay bucket or processor is allowed"], source)
        dark = darktime and (is_processor_error(code) or processor in down)
        if probs is None:
            ranked = [(p, None) for p in procs]
            if dark:
                b = buckets[0]
                return Advice(True, b, self.rules.delays[b], procs[0], ranked, {"now": None, "later": None, "stop": stop_ev},
                              verdict.rule, reasons + ["no retry model: darktime retry on the next processor"], "rules")
            # no advice either way: the caller keeps its own retry policy for issuer declines (within the rules)
            return Advice(False, None, None, None, ranked, {"now": None, "later": None, "stop": stop_ev}, verdict.rule,
                          reasons + ["no retry model to price a retry of an issuer decline: no advice (source no_model)"],
                          "no_model")
        # darktime is failover, not a reattempt the issuer sees: the budget's price does not apply to it
        cost, wait = (self.rules.attempt_cost if dark else self.attempt_cost), self.rules.wait_cost
        best: dict[str, tuple[float, str, list[tuple[str, float]]]] = {}
        for b in buckets:
            scores = probs(b)
            ranked = sorted(((p, float(scores[p])) for p in procs), key=lambda t: (-t[1], procs.index(t[0])))
            best[b] = (ranked[0][1] - cost - wait[b], b, ranked)
        now = best[BUCKETS[0]][0] if BUCKETS[0] in best else None
        later = [best[b][0] for b in BUCKETS[1:] if b in best]
        ev = {"now": now, "later": max(later) if later else None, "stop": stop_ev}
        value, bucket, ranked = max(best.values(), key=lambda t: (t[0], -BUCKETS.index(t[1])))
        if value <= stop_ev:
            return Advice(False, None, None, None, ranked, ev, verdict.rule,
                          reasons + [f"stop: best retry {ranked[0][0]} {bucket} p={ranked[0][1]:.2f} is worth "
                                     f"{value:+.3f} after costs (attempt {cost:g}, wait {wait[bucket]:g})"], source)
        return Advice(True, bucket, self.rules.delays[bucket], ranked[0][0], ranked, ev, verdict.rule,
                      reasons + [f"retry {bucket} on {ranked[0][0]}: p={ranked[0][1]:.2f}, EV {value:+.3f} vs stop 0"], source)
