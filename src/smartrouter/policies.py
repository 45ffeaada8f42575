"""Routing policies as functions of a frame of attempts, for evaluation and as the service's baseline.

A *policy* is represented by a probability matrix ``(n, P)`` over ``catalog.PROCESSORS`` (rows
sum to 1 over the row's candidates): a deterministic policy is a one-hot matrix, the
success-rate router puts its exploration mass on every candidate. Off-policy estimators in
``smartrouter.evaluation`` take exactly this matrix, so a stochastic policy is evaluated by its
expected value rather than by one random draw of it.

Policies here:
- static rules (the merchant's ``VW_ROUTING_MERCHANT_RULE`` through ``smartrouter.rules.RulesEngine``);
- :class:`SuccessRateRouter`: per-segment success rate over the last N outcomes with a few percent
  exploration -- the non-ML baseline of open-source routing engines and the service's fallback;
- a model's greedy policy (argmax of its probability matrix over the eligible processors);
- the oracle (world only): argmax of the true probability matrix.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from smartrouter import catalog
from smartrouter.errors import ConfigError

P = len(catalog.PROCESSORS)

# The segment a success-rate router keeps separate statistics for: the same keys the static
# rules are written on, so the router is compared with the rules on equal footing.
SEGMENT_COLUMNS: tuple[str, ...] = ("CURRENCY", "CARD_BRAND", "CARD_TYPE")


# ---------------------------------------------------------------- candidates / encodings
def _parse_candidates(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = [t.strip() for t in text.split(",") if t.strip()]
        return [str(p) for p in parsed] if isinstance(parsed, list) else None
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(p) for p in value]
    return None


def candidate_mask(frame: pd.DataFrame) -> np.ndarray:
    """(n, P) bool: the processors each attempt could have been sent to.

    Uses the logged ``CANDIDATES`` (which knows which processors were active at the time); rows
    without it fall back to the hard rules, ``catalog.eligible_processors(brand, currency)``.
    """
    n = len(frame)
    mask = np.zeros((n, P), dtype=bool)
    cands = frame["CANDIDATES"].tolist() if "CANDIDATES" in frame.columns else [None] * n
    brands = frame["CARD_BRAND"].astype(str).tolist() if "CARD_BRAND" in frame.columns else None
    currencies = frame["CURRENCY"].astype(str).tolist() if "CURRENCY" in frame.columns else None
    cache: dict[tuple[str, str], list[int]] = {}
    for i, raw in enumerate(cands):
        parsed = _parse_candidates(raw)
        if parsed:
            for p in parsed:
                j = catalog.PROCESSOR_INDEX.get(p)
                if j is not None:
                    mask[i, j] = True
            continue
        if brands is None or currencies is None:
            raise ConfigError("frame has neither CANDIDATES nor CARD_BRAND/CURRENCY; pass the feature table's columns")
        key = (brands[i], currencies[i])
        if key not in cache:
            cache[key] = [catalog.PROCESSOR_INDEX[p] for p in catalog.eligible_processors(*key)]
        mask[i, cache[key]] = True
    return mask


def processor_index(names: Iterable[Any]) -> np.ndarray:
    """Processor names -> indices into catalog.PROCESSORS (-1 for None / unknown)."""
    return np.array([catalog.PROCESSOR_INDEX.get(str(p), -1) if p is not None else -1 for p in names], dtype=np.int64)


def one_hot(choice: np.ndarray, n_processors: int = P) -> np.ndarray:
    """(n,) processor indices -> (n, P) deterministic policy matrix (rows with -1 stay all zero)."""
    choice = np.asarray(choice, dtype=np.int64)
    out = np.zeros((len(choice), n_processors), dtype=np.float64)
    ok = choice >= 0
    out[np.flatnonzero(ok), choice[ok]] = 1.0
    return out


def greedy_choice(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Index of the highest-scoring eligible processor per row (-1 where nothing is eligible).

    Ties go to the lower index (catalog order), so the choice is deterministic.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != mask.shape:
        raise ConfigError(f"scores have shape {scores.shape} but the candidate mask has {mask.shape}; score every processor")
    masked = np.where(mask, np.nan_to_num(scores, nan=-1.0), -np.inf)
    choice = masked.argmax(axis=1)
    choice[~mask.any(axis=1)] = -1
    return choice


# ---------------------------------------------------------------- policies
def greedy_policy(prob_matrix: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A model's greedy policy: one-hot on the eligible processor with the highest approval probability."""
    return one_hot(greedy_choice(prob_matrix, mask))


def rules_choice(frame: pd.DataFrame, engine: Any, mask: np.ndarray | None = None) -> np.ndarray:
    """The static rules' processor index per row (``RulesEngine.choose_frame``), kept inside the candidates.

    Where the rules name no candidate (no rule matches, or the ruled processor is not active), the
    first candidate in catalog order is used -- the same fallback a router without a rule applies.
    """
    mask = candidate_mask(frame) if mask is None else mask
    names = engine.choose_frame(frame)
    idx = processor_index(names)
    rows = np.arange(len(idx))
    bad = (idx < 0) | ~mask[rows, np.clip(idx, 0, P - 1)]
    if bad.any():
        idx[bad] = greedy_choice(np.zeros((int(bad.sum()), P)), mask[bad])
    return idx


def rules_policy(frame: pd.DataFrame, engine: Any, mask: np.ndarray | None = None) -> np.ndarray:
    """The merchant's static rules as a (deterministic) policy matrix."""
    return one_hot(rules_choice(frame, engine, mask))


def oracle_policy(truth_matrix: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The oracle (world only): the truly best eligible processor per row."""
    return greedy_policy(truth_matrix, mask)


# ---------------------------------------------------------------- success-rate router
@dataclass
class ReplayResult:
    """What a router chose over a frame (in the frame's row order)."""

    chosen: np.ndarray  # (n,) processor index actually drawn (with exploration)
    propensity: np.ndarray  # (n,) probability with which ``chosen`` was drawn
    probabilities: np.ndarray  # (n, P) the router's full choice distribution (for off-policy estimates)
    greedy: np.ndarray  # (n,) the exploit choice (no exploration)


class SuccessRateRouter:
    """Sliding-window success-rate router with epsilon exploration (a non-ML baseline).

    For each segment (currency, brand, card type) and processor it keeps the last ``window``
    outcomes. The exploit choice is the candidate with the highest smoothed success rate
    ``(s + m * p0) / (n + m)`` (``p0`` = the segment's rate over all processors, ``m`` = ``prior_strength``)
    so a processor with few recent outcomes is neither trusted nor ignored; with probability
    ``exploration`` a uniformly random candidate is sent instead, so every processor keeps
    receiving the outcomes that would reveal a recovery.

    Online use (the service's fallback)::

        router = SuccessRateRouter()
        processor, propensity = router.choose(segment, candidates, rng)
        router.observe(segment, processor, approved)
    """

    def __init__(self, window: int = 200, exploration: float = 0.05, prior_strength: float = 10.0,
                 default_rate: float = 0.8) -> None:
        if window <= 0:
            raise ConfigError(f"window={window} must be a positive number of outcomes")
        if not 0.0 <= exploration <= 1.0:
            raise ConfigError(f"exploration={exploration} must be a share in [0, 1], e.g. 0.05")
        if prior_strength < 0:
            raise ConfigError(f"prior_strength={prior_strength} must be >= 0")
        self.window = int(window)
        self.exploration = float(exploration)
        self.prior_strength = float(prior_strength)
        self.default_rate = float(default_rate)
        # (segment, processor) -> (deque of 0/1, running sum)
        self._outcomes: dict[tuple[Any, str], deque[int]] = {}
        self._sums: dict[tuple[Any, str], int] = {}

    @staticmethod
    def segment_of(row: dict[str, Any] | pd.Series) -> tuple[str, ...]:
        """The segment key of a payment (currency, brand, card type)."""
        return tuple(str(row[c]) for c in SEGMENT_COLUMNS)

    def observe(self, segment: Any, processor: str, approved: bool | int) -> None:
        """Record one outcome of ``processor`` in ``segment`` (the oldest falls out of the window)."""
        key = (segment, processor)
        q = self._outcomes.get(key)
        if q is None:
            q = self._outcomes[key] = deque()
            self._sums[key] = 0
        v = 1 if approved else 0
        q.append(v)
        self._sums[key] += v
        if len(q) > self.window:
            self._sums[key] -= q.popleft()

    def counts(self, segment: Any, processor: str) -> tuple[int, int]:
        """(successes, outcomes) in the window."""
        key = (segment, processor)
        q = self._outcomes.get(key)
        return (self._sums[key], len(q)) if q is not None else (0, 0)

    def success_rates(self, segment: Any, candidates: Sequence[str]) -> dict[str, float]:
        """Smoothed success rate of each candidate in ``segment``."""
        stats = [self.counts(segment, p) for p in candidates]
        s_all = sum(s for s, _ in stats)
        n_all = sum(n for _, n in stats)
        p0 = (s_all + self.default_rate) / (n_all + 1.0)
        m = self.prior_strength
        return {p: (s + m * p0) / (n + m) if (n + m) > 0 else p0 for p, (s, n) in zip(candidates, stats)}

    def probabilities(self, segment: Any, candidates: Sequence[str]) -> dict[str, float]:
        """The router's choice distribution over ``candidates`` (exploit mass + uniform exploration).

        Ties between equal success rates go to the earlier candidate (catalog order).
        """
        if not candidates:
            return {}
        rates = self.success_rates(segment, candidates)
        best, best_rate = None, -1.0
        for p in candidates:
            if rates[p] > best_rate:
                best, best_rate = p, rates[p]
        share = self.exploration / len(candidates)
        out = dict.fromkeys(candidates, share)
        out[best] += 1.0 - self.exploration
        return out

    def choose(self, segment: Any, candidates: Sequence[str], rng: np.random.Generator) -> tuple[str | None, float]:
        """Pick a processor for one payment; returns (processor, propensity). None when no candidate."""
        probs = self.probabilities(segment, candidates)
        if not probs:
            return None, 0.0
        names = list(probs)
        weights = np.fromiter(probs.values(), dtype=np.float64)
        j = int(rng.choice(len(names), p=weights / weights.sum()))
        return names[j], float(probs[names[j]])

    def replay(self, frame: pd.DataFrame, seed: int = 0, warmup: pd.DataFrame | None = None,
               mask: np.ndarray | None = None) -> ReplayResult:
        """Run the router over ``frame`` in time order and return its choices in the frame's row order.

        Before each decision the router has seen the logged outcomes of every labelled attempt
        strictly earlier in time (``warmup`` first, e.g. the tail of the training window), which is
        what the service would have seen from the same traffic. Learning from the logged outcomes
        (not from outcomes of its own counterfactual choices, which logs cannot reveal) keeps the
        replay honest; its choice distribution is then scored with off-policy estimators.
        """
        if warmup is not None and len(warmup):
            w = warmup.sort_values("CREATED_AT", kind="mergesort")
            for seg, proc, y in zip(zip(*(w[c].astype(str) for c in SEGMENT_COLUMNS)),
                                    w["PROCESSOR"].astype(str), w["APPROVED"].astype(int)):
                self.observe(seg, proc, y)
        n = len(frame)
        mask = candidate_mask(frame) if mask is None else mask
        order = np.argsort(frame["CREATED_AT"].to_numpy(), kind="mergesort")
        segs = list(zip(*(frame[c].astype(str).tolist() for c in SEGMENT_COLUMNS)))
        procs = frame["PROCESSOR"].astype(str).tolist()
        ys = frame["APPROVED"].astype(int).tolist()
        rng = np.random.default_rng(seed)
        draws = rng.random(n)
        probs = np.zeros((n, P), dtype=np.float64)
        chosen = np.full(n, -1, dtype=np.int64)
        greedy = np.full(n, -1, dtype=np.int64)
        propensity = np.zeros(n, dtype=np.float64)
        names = catalog.PROCESSORS
        # candidate lists per distinct mask row (a handful), so the loop stays pure Python
        keys = mask @ (1 << np.arange(P))
        cand_of = {int(k): [names[j] for j in range(P) if (int(k) >> j) & 1] for k in np.unique(keys)}
        keys = keys.tolist()
        index = catalog.PROCESSOR_INDEX
        for i in order.tolist():
            cands = cand_of[keys[i]]
            dist = self.probabilities(segs[i], cands)
            if dist:
                row = probs[i]
                acc, target, pick = 0.0, draws[i], None
                best, best_p = None, -1.0
                for p in cands:  # inverse-CDF draw in catalog order (deterministic given the seed)
                    v = dist[p]
                    row[index[p]] = v
                    if v > best_p:
                        best, best_p = p, v
                    acc += v
                    if pick is None and target < acc:
                        pick = p
                pick = pick or cands[-1]
                greedy[i] = index[best]
                chosen[i] = index[pick]
                propensity[i] = dist[pick]
            self.observe(segs[i], procs[i], ys[i])
        return ReplayResult(chosen=chosen, propensity=propensity, probabilities=probs, greedy=greedy)
