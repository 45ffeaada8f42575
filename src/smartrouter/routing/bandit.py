"""Exploration by Thompson sampling on per-(processor, segment) Beta posteriors.

Each (processor, segment) pair keeps a Beta(alpha, beta) posterior of its approval rate,
updated from outcomes. On a decision the policy hands over its greedy choice; with probability
``max_share`` (and never above that share of all decisions so far: a hard cap) the bandit
draws one sample per candidate and picks the best sample instead. Every choice carries its
propensity, the probability that this policy would have picked it,

    P(choice) = (1 - eps) * [choice == greedy] + eps * P_TS(choice),

with P_TS estimated by Monte Carlo from the same posteriors, so that off-policy evaluation of
the logged decisions is unbiased.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from smartrouter.routing.config import ExplorationConfig

# Outcomes in a segment after which its cached Thompson-sampling propensities are recomputed.
_REFRESH_OUTCOMES = 20


@dataclass(frozen=True)
class BanditChoice:
    chosen: str
    propensity: float
    explored: bool


class ThompsonBandit:
    """Beta posteriors per (processor, segment) with a capped exploration share."""

    def __init__(self, config: ExplorationConfig, seed: int | None = None) -> None:
        self.config = config
        self._rng = np.random.default_rng(config.seed if seed is None else seed)
        self._post: dict[tuple[str, tuple], list[float]] = {}
        self._lock = threading.Lock()
        self._seg_version: dict[tuple, int] = {}
        self._ts_cache: dict[tuple, tuple[int, np.ndarray]] = {}
        self.decisions = 0
        self.explored = 0

    def segment_of(self, payment: dict) -> tuple:
        """The segment key of a payment (the configured columns' values)."""
        return tuple(payment.get(c) for c in self.config.segment)

    def posterior(self, processor: str, segment: tuple) -> tuple[float, float]:
        a_b = self._post.get((processor, segment))
        if a_b is None:
            return self.config.prior_alpha, self.config.prior_beta
        return a_b[0], a_b[1]

    def observe(self, processor: str, segment: tuple, approved: bool) -> None:
        """Update the (processor, segment) posterior with one outcome."""
        with self._lock:
            ab = self._post.setdefault((processor, segment), [self.config.prior_alpha, self.config.prior_beta])
            ab[0 if approved else 1] += 1.0
            self._seg_version[segment] = self._seg_version.get(segment, 0) + 1

    def export_state(self) -> list[list]:
        """The posteriors, JSON-able: [[processor, segment, alpha, beta], ...] (for a worker that starts later)."""
        with self._lock:
            return [[p, list(seg), ab[0], ab[1]] for (p, seg), ab in self._post.items()]

    def import_state(self, rows: list[list]) -> int:
        """Take over `export_state()`'s posteriors (replacing this worker's); returns how many."""
        with self._lock:
            self._post = {(str(p), tuple(seg)): [float(a), float(b)] for p, seg, a, b in rows}
            self._seg_version = {seg: v + _REFRESH_OUTCOMES for seg, v in self._seg_version.items()}  # recompute cached TS
            self._ts_cache.clear()
        return len(rows)

    @property
    def share(self) -> float:
        """Share of decisions so far that explored."""
        return self.explored / self.decisions if self.decisions else 0.0

    def ts_probabilities(self, segment: tuple, candidates: list[str]) -> np.ndarray:
        """P(Thompson sampling picks each candidate), by Monte Carlo over the posteriors.

        Cached per (segment, candidates) until that segment has seen ``_REFRESH_OUTCOMES`` more
        outcomes: a few outcomes move a posterior far less than the Monte Carlo error, and the
        draw (~0.3 ms) would otherwise dominate the decision's latency.
        """
        key = (segment, tuple(candidates))
        version = self._seg_version.get(segment, 0)
        hit = self._ts_cache.get(key)
        if hit is not None and version - hit[0] < _REFRESH_OUTCOMES:
            return hit[1]
        probs = self._ts_probabilities(segment, candidates)
        if len(self._ts_cache) > 50_000:
            self._ts_cache.clear()
        self._ts_cache[key] = (version, probs)
        return probs

    def _ts_probabilities(self, segment: tuple, candidates: list[str]) -> np.ndarray:
        a = np.array([self.posterior(p, segment)[0] for p in candidates])
        b = np.array([self.posterior(p, segment)[1] for p in candidates])
        n = self.config.propensity_samples
        with self._lock:
            draws = self._rng.beta(a[:, None], b[:, None], size=(len(candidates), n))
        wins = np.bincount(draws.argmax(axis=0), minlength=len(candidates))
        return wins / n

    def decide(self, segment: tuple, candidates: list[str], greedy: str, allow: bool = True) -> BanditChoice:
        """Keep ``greedy`` or explore; returns the choice, its propensity and whether it explored."""
        cfg = self.config
        with self._lock:
            self.decisions += 1
            may_explore = (
                allow
                and cfg.enabled
                and cfg.max_share > 0
                and len(candidates) > 1
                # hard cap: exploring now must not lift the share above max_share
                and (self.explored + 1) <= cfg.max_share * self.decisions
            )
            explore = may_explore and self._rng.random() < cfg.max_share
            if explore:
                self.explored += 1
        if not may_explore:
            return BanditChoice(greedy, 1.0, False)
        # the explored choice is drawn from exactly the distribution the propensity states: Thompson
        # sampling's win shares (Monte Carlo) mixed with a uniform floor. Drawing from a fresh posterior
        # sample instead could pick an arm whose estimated share was 0 (logged as 1e-6: a weight of a
        # million in every off-policy estimate); the floor keeps every weight below |C| / (eps · floor)
        floor = cfg.uniform_floor
        probs = (1.0 - floor) * self.ts_probabilities(segment, candidates) + floor / len(candidates)
        eps = cfg.max_share
        if explore:
            with self._lock:
                i = int(self._rng.choice(len(candidates), p=probs / probs.sum()))
            chosen = candidates[i]
        else:
            chosen = greedy
            i = candidates.index(chosen)
        propensity = (1.0 - eps) * (chosen == greedy) + eps * float(probs[i])
        return BanditChoice(chosen, propensity, explore)
