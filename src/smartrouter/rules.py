"""The merchant's static routing rules: THE one engine that reads rule rows and ranks processors.

The world routes its logged CONTROL traffic with it, evaluation replays it as the baseline
policy, and the service falls back to it. Rules are data (``VW_ROUTING_MERCHANT_RULE`` rows with
``catalog.RULE_COLUMNS``); nothing here knows a particular merchant's rules.

Semantics:
- a rule matches a payment when each of CURRENCY, CARD_BRAND, CARD_TYPE equals the payment's or is
  ``'*'``, it is not in SHADOW_MODE, and ACTIVE_FROM is NULL or not after the decision time;
- matching rules are ordered most specific first (more exact fields first; on a tie an exact
  currency beats an exact brand beats an exact card type), then by PRIORITY, then RULE_ID; the
  processors in that order, each once, are the ranking (so less specific rules act as fallbacks);
- the ranking is filtered by the hard rules (``catalog.eligible_processors``: Amex cards only on
  AMEX, currencies a processor settles) and by ``candidates`` when given.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from smartrouter import catalog
from smartrouter.errors import ConfigError

WILDCARD = "*"
_MATCH_FIELDS = ("CURRENCY", "CARD_BRAND", "CARD_TYPE")
_SPECIFICITY_WEIGHTS = (4, 2, 1)  # currency > brand > card type on equal counts


def _to_naive_utc(value: Any) -> dt.datetime | None:
    """Convert a timestamp-like value to a naive UTC datetime (None for null)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    ts = pd.Timestamp(value)
    if ts is pd.NaT or pd.isna(ts):
        return None
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.to_pydatetime()


def _resolve_at(value: Any) -> dt.datetime:
    at = _to_naive_utc(value)
    return at if at is not None else dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _to_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "y", "t")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return bool(value)


def _allowed(brand: str, currency: str, candidates: Sequence[str] | None) -> list[str]:
    """Processors a rule may name for this payment: the hard rules, then the caller's candidates."""
    allowed = catalog.eligible_processors(brand, currency)
    if candidates is not None:
        wanted = set(candidates)
        allowed = [p for p in allowed if p in wanted]
    return allowed


class _Rule:
    __slots__ = ("rule_id", "currency", "brand", "card_type", "processor", "priority", "shadow", "active_from", "order")

    def __init__(self, row: dict[str, Any]) -> None:
        self.rule_id = int(row["RULE_ID"])
        self.currency = str(row["CURRENCY"]).upper()
        self.brand = str(row["CARD_BRAND"]).upper()
        self.card_type = str(row["CARD_TYPE"]).upper()
        self.processor = str(row["PROCESSOR"]).upper()
        self.priority = int(row["PRIORITY"])
        self.shadow = _to_bool(row.get("SHADOW_MODE", False))
        self.active_from = _to_naive_utc(row.get("ACTIVE_FROM"))
        exact = [f != WILDCARD for f in (self.currency, self.brand, self.card_type)]
        specificity = sum(exact) * 10 + sum(w for w, e in zip(_SPECIFICITY_WEIGHTS, exact) if e)
        self.order = (-specificity, self.priority, self.rule_id)

    def matches(self, currency: str, brand: str, card_type: str, at: dt.datetime) -> bool:
        return (
            self.currency in (WILDCARD, currency)
            and self.brand in (WILDCARD, brand)
            and self.card_type in (WILDCARD, card_type)
            and (self.active_from is None or self.active_from <= at)
        )


class RulesEngine:
    """Ranks processors for a payment from the merchant's static rule rows."""

    def __init__(self, rules: pd.DataFrame | Iterable[dict[str, Any]], merchant: str | None = None) -> None:
        rows = rules.to_dict("records") if isinstance(rules, pd.DataFrame) else list(rules)
        missing_cols = [c for c in ("CURRENCY", "CARD_BRAND", "CARD_TYPE", "PROCESSOR", "PRIORITY") if rows and c not in rows[0]]
        if missing_cols:
            raise ConfigError(
                f"rule rows lack column(s) {', '.join(missing_cols)}; pass rows with {', '.join(catalog.RULE_COLUMNS)}"
            )
        parsed: list[_Rule] = []
        for i, row in enumerate(rows):
            row = {str(k).upper(): v for k, v in row.items()}
            row.setdefault("RULE_ID", i + 1)
            if merchant is not None and str(row.get("MERCHANT", merchant)) != merchant:
                continue
            rule = _Rule(row)
            if rule.processor not in catalog.PROCESSORS:
                raise ConfigError(
                    f"rule {rule.rule_id} names unknown processor {rule.processor!r}; use one of {', '.join(catalog.PROCESSORS)}"
                )
            parsed.append(rule)
        self._rules = sorted(parsed, key=lambda r: r.order)
        # ACTIVE_FROM instants split time into epochs inside which the active rule set is constant.
        self._breaks = sorted({r.active_from for r in self._rules if r.active_from is not None})

    @classmethod
    def from_warehouse_rows(cls, frame: pd.DataFrame, merchant: str | None = None) -> "RulesEngine":
        """Build from a frame read back from ``VW_ROUTING_MERCHANT_RULE`` (any column case)."""
        return cls(frame.rename(columns=str.upper), merchant=merchant)

    def __len__(self) -> int:
        return len(self._rules)

    # ------------------------------------------------------------------ per payment
    def _ordered(
        self, shadow: bool, currency: str, brand: str, card_type: str, at: dt.datetime, candidates: Sequence[str] | None
    ) -> list[str]:
        currency, brand, card_type = str(currency).upper(), str(brand).upper(), str(card_type).upper()
        return [p for p, _ in self._ordered_rules(shadow, currency, brand, card_type, at, _allowed(brand, currency, candidates))]

    def _ordered_rules(
        self, shadow: bool, currency: str, brand: str, card_type: str, at: dt.datetime, allowed: Sequence[str]
    ) -> list[tuple[str, int]]:
        """(processor, RULE_ID of the rule that placed it) in ranking order: the one matching loop."""
        out: list[tuple[str, int]] = []
        seen: set[str] = set()
        for rule in self._rules:
            if rule.shadow == shadow and rule.processor in allowed and rule.processor not in seen:
                if rule.matches(currency, brand, card_type, at):
                    out.append((rule.processor, rule.rule_id))
                    seen.add(rule.processor)
        return out

    def ranked(
        self,
        currency: str,
        brand: str,
        card_type: str,
        at: dt.datetime | None = None,
        candidates: Sequence[str] | None = None,
    ) -> list[str]:
        """Processors the active rules pick for this payment, first choice first (may be empty).

        ``at`` is the decision time (naive UTC; None means now) that ACTIVE_FROM is compared with.
        """
        return self._ordered(False, currency, brand, card_type, _resolve_at(at), candidates)

    def choose(
        self,
        currency: str,
        brand: str,
        card_type: str,
        at: dt.datetime | None = None,
        candidates: Sequence[str] | None = None,
    ) -> str | None:
        """The rules' first choice, or None when no rule gives an eligible processor."""
        ranked = self.ranked(currency, brand, card_type, at, candidates)
        return ranked[0] if ranked else None

    def retry_processor(
        self,
        currency: str,
        brand: str,
        card_type: str,
        at: dt.datetime | None = None,
        candidates: Sequence[str] | None = None,
        *,
        previous_processor: str | None,
        attempt_number: int = 2,
    ) -> str | None:
        """Where the rules send a retry: the next processor after ``previous_processor`` in the
        ranking, or the same one when it is the last (or the only) one.

        ``attempt_number`` is accepted for the interface (the rules do not count attempts beyond
        that); a previous processor outside the ranking restarts at the first choice.
        """
        if attempt_number < 2:
            return self.choose(currency, brand, card_type, at, candidates)
        ranked = self.ranked(currency, brand, card_type, at, candidates)
        if not ranked:
            return None
        if previous_processor not in ranked:
            return ranked[0]
        i = ranked.index(previous_processor)
        return ranked[i + 1] if i + 1 < len(ranked) else ranked[i]

    def shadow(
        self,
        currency: str,
        brand: str,
        card_type: str,
        at: dt.datetime | None = None,
        candidates: Sequence[str] | None = None,
    ) -> list[str]:
        """Choices of the shadow-mode rules (logged for comparison, never acted on)."""
        return self._ordered(True, currency, brand, card_type, _resolve_at(at), candidates)

    def deciding_rule(
        self,
        currency: str,
        brand: str,
        card_type: str,
        at: dt.datetime | None = None,
        candidates: Sequence[str] | None = None,
    ) -> int | None:
        """RULE_ID of the active rule that gives this payment its first choice (None when none does).

        Which row of a table "owns" a payment: a rule-table diff attributes each changed payment to it.
        """
        currency, brand, card_type = str(currency).upper(), str(brand).upper(), str(card_type).upper()
        ranked = self._ordered_rules(False, currency, brand, card_type, _resolve_at(at), _allowed(brand, currency, candidates))
        return ranked[0][1] if ranked else None

    def priorities(
        self, currency: str, brand: str, card_type: str, at: dt.datetime | None = None, candidates: Sequence[str] | None = None
    ) -> dict[str, int]:
        """Ranking as {processor: rank} with rank 1 first (what the routing log stores as scores)."""
        return {p: i + 1 for i, p in enumerate(self.ranked(currency, brand, card_type, at, candidates))}

    # ------------------------------------------------------------------ vectorized
    def epoch_of(self, at: pd.Series | np.ndarray) -> np.ndarray:
        """Index of the rule epoch (count of ACTIVE_FROM instants not after ``at``) for each time."""
        series = pd.to_datetime(pd.Series(at))
        if getattr(series.dt, "tz", None) is not None:
            series = series.dt.tz_convert("UTC").dt.tz_localize(None)
        times = series.to_numpy(dtype="datetime64[ns]")
        if not self._breaks:
            return np.zeros(len(times), dtype=np.int64)
        breaks = np.array(self._breaks, dtype="datetime64[ns]")
        return np.searchsorted(breaks, times, side="right").astype(np.int64)

    def epoch_time(self, epoch: int) -> dt.datetime | None:
        """A representative time inside ``epoch`` (None for the first, before any ACTIVE_FROM)."""
        return None if epoch == 0 else self._breaks[epoch - 1]

    def _ranked_at_epoch(self, currency: str, brand: str, card_type: str, epoch: int, candidates: Sequence[str] | None) -> list[str]:
        at = self.epoch_time(epoch)
        if at is None:  # before every ACTIVE_FROM: rules with a start date are not active yet
            at = dt.datetime.min
        return self._ordered(False, currency, brand, card_type, at, candidates)

    def ranked_frame(self, frame: pd.DataFrame, candidates: Sequence[str] | None = None) -> list[list[str]]:
        """Ranking for each row of a frame with CURRENCY, CARD_BRAND, CARD_TYPE, CREATED_AT."""
        if len(frame) == 0:
            return []
        codes, keys = self._group_keys(frame)
        cache = [self._ranked_at_epoch(c, b, t, e, candidates) for c, b, t, e in keys]
        return [cache[k] for k in codes]

    def choose_frame(self, frame: pd.DataFrame, candidates: Sequence[str] | None = None) -> np.ndarray:
        """The rules' first choice for each row (object array; None where no rule applies)."""
        out = np.full(len(frame), None, dtype=object)
        if len(frame) == 0:
            return out
        codes, keys = self._group_keys(frame)
        firsts = []
        for c, b, t, e in keys:
            ranked = self._ranked_at_epoch(c, b, t, e, candidates)
            firsts.append(ranked[0] if ranked else None)
        lookup = np.array(firsts, dtype=object)
        return lookup[codes]

    def _group_keys(self, frame: pd.DataFrame) -> tuple[np.ndarray, list[tuple[str, str, str, int]]]:
        missing = [c for c in (*_MATCH_FIELDS, "CREATED_AT") if c not in frame.columns]
        if missing:
            raise ConfigError(f"frame lacks column(s) {', '.join(missing)} needed to apply the routing rules")
        epoch = self.epoch_of(frame["CREATED_AT"])
        key_frame = pd.DataFrame(
            {
                "c": frame["CURRENCY"].astype(str).str.upper().to_numpy(),
                "b": frame["CARD_BRAND"].astype(str).str.upper().to_numpy(),
                "t": frame["CARD_TYPE"].astype(str).str.upper().to_numpy(),
                "e": epoch,
            }
        )
        codes, uniques = pd.MultiIndex.from_frame(key_frame).factorize()
        return np.asarray(codes), [tuple(u) for u in uniques]  # type: ignore[misc]
