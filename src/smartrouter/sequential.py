"""Always-valid inference for a difference of two proportions (A/B readouts that may be read every day).

A fixed-horizon test (``fixed_horizon``) is valid only when it is looked at once, at a sample size
chosen in advance. Reading it every day and stopping at the first p < 0.05 inflates the false
positive rate far above 5 % (with 28 daily looks, to ~25 %; ``bench/bench_abtest.py`` measures it).

``always_valid`` is the mixture sequential probability ratio test (mSPRT) of Johari, Koomen,
Pekelis & Walsh, "Peeking at A/B tests: why it matters, and what to do about it" (KDD 2017) and
"Always valid inference: continuous monitoring of A/B tests" (Operations Research 70(3), 2022),
in the two-sample normal approximation they use for conversion rates. With θ̂ = p̂_B − p̂_A and
V = p̂_A(1−p̂_A)/n_A + p̂_B(1−p̂_B)/n_B, mixing the alternative over θ ~ N(θ₀, τ²) gives the
likelihood ratio

    Λ(θ₀) = sqrt(V / (V + τ²)) · exp( τ² (θ̂ − θ₀)² / (2 V (V + τ²)) ).

Under θ = θ₀, Λ is a nonnegative martingale with mean 1 (exactly for Gaussian increments,
asymptotically here), so by Ville's inequality P(sup_t Λ_t ≥ 1/α) ≤ α: at *every* look at once,
not just at one. Hence

* the always-valid p-value p_t = min(1, min_{s ≤ t} 1/Λ_s(0)) may be read whenever one likes;
* the set {θ₀ : Λ_t(θ₀) < 1/α}, i.e. θ̂ ± r with
  r = sqrt( V (V + τ²)/τ² · (2 log(1/α) + log((V + τ²)/V)) ),
  is a (1−α) confidence *sequence*: it holds the true lift at all looks simultaneously. This is
  the normal-mixture boundary of Howard, Ramdas, McAuliffe & Sekhon, "Time-uniform, nonparametric,
  nonasymptotic confidence sequences" (Annals of Statistics 49(2), 2021, eq. 14), used with a
  plug-in variance as in Waudby-Smith et al., "Time-uniform central limit theory and asymptotic
  confidence sequences" (2021).

τ (``mixture_sd``) is where the test has most power: about the size of lift worth detecting (1 pp
on an ~80 % approval rate). Any τ > 0 keeps the guarantee; it only moves the power.
The variance uses p̃ = (x + 1)/(n + 2) so that an arm with all (or no) successes early on does not
claim V = 0 (an infinitely narrow interval).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Iterable

from smartrouter.errors import ConfigError

_NORMAL = NormalDist()


def _check_counts(n_a: int, x_a: int, n_b: int, x_b: int) -> None:
    for name, n, x in (("a", n_a, x_a), ("b", n_b, x_b)):
        if n < 0 or x < 0 or x > n:
            raise ConfigError(f"arm {name}: {x} successes out of {n} trials is impossible; counts must satisfy 0 <= x <= n")


def _check_level(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha={alpha!r} must lie strictly between 0 and 1 (e.g. 0.05)")


def _variance(n_a: int, x_a: int, n_b: int, x_b: int) -> float:
    """Variance of p̂_b − p̂_a with the smoothed p̃ = (x+1)/(n+2) (see the module docstring)."""
    pa, pb = (x_a + 1) / (n_a + 2), (x_b + 1) / (n_b + 2)
    return pa * (1 - pa) / n_a + pb * (1 - pb) / n_b


@dataclass(frozen=True)
class Interval:
    """One look at a difference of proportions: lift = p_b − p_a, its interval and p-value (H0: lift = 0)."""

    n_a: int
    x_a: int
    n_b: int
    x_b: int
    lift: float
    se: float
    ci_low: float
    ci_high: float
    p_value: float

    @property
    def rate_a(self) -> float:
        return self.x_a / self.n_a if self.n_a else math.nan

    @property
    def rate_b(self) -> float:
        return self.x_b / self.n_b if self.n_b else math.nan

    def covers(self, value: float) -> bool:
        return self.ci_low <= value <= self.ci_high

    def as_dict(self) -> dict[str, float | int]:
        return {"n_a": self.n_a, "x_a": self.x_a, "n_b": self.n_b, "x_b": self.x_b, "rate_a": self.rate_a,
                "rate_b": self.rate_b, "lift": self.lift, "se": self.se, "ci_low": self.ci_low,
                "ci_high": self.ci_high, "p_value": self.p_value}


def _empty(n_a: int, x_a: int, n_b: int, x_b: int) -> Interval:
    nan = math.nan
    return Interval(n_a, x_a, n_b, x_b, nan, nan, -math.inf, math.inf, 1.0)


def fixed_horizon(n_a: int, x_a: int, n_b: int, x_b: int, alpha: float = 0.05) -> Interval:
    """The classical two-sample z-interval and two-sided p-value: valid for ONE look only."""
    _check_counts(n_a, x_a, n_b, x_b)
    _check_level(alpha)
    if not n_a or not n_b:
        return _empty(n_a, x_a, n_b, x_b)
    lift = x_b / n_b - x_a / n_a
    se = math.sqrt(_variance(n_a, x_a, n_b, x_b))
    z = _NORMAL.inv_cdf(1 - alpha / 2)
    p = 2 * (1 - _NORMAL.cdf(abs(lift) / se))
    return Interval(n_a, x_a, n_b, x_b, lift, se, lift - z * se, lift + z * se, min(1.0, p))


def mixture_radius(variance: float, mixture_sd: float, alpha: float) -> float:
    """Half-width r of the (1−α) normal-mixture confidence sequence at estimator variance ``variance``."""
    _check_level(alpha)
    if mixture_sd <= 0:
        raise ConfigError(f"mixture_sd={mixture_sd!r} must be > 0 (about the size of lift worth detecting, e.g. 0.01)")
    if not variance > 0:
        return math.inf
    t2 = mixture_sd * mixture_sd
    return math.sqrt(variance * (variance + t2) / t2 * (2 * math.log(1 / alpha) + math.log((variance + t2) / variance)))


def log_mixture_ratio(lift: float, variance: float, mixture_sd: float, null: float = 0.0) -> float:
    """log Λ(θ₀ = ``null``): the mSPRT statistic (see the module docstring)."""
    t2 = mixture_sd * mixture_sd
    return 0.5 * math.log(variance / (variance + t2)) + t2 * (lift - null) ** 2 / (2 * variance * (variance + t2))


def always_valid(n_a: int, x_a: int, n_b: int, x_b: int, *, mixture_sd: float = 0.01, alpha: float = 0.05) -> Interval:
    """One look of the mSPRT: the confidence-sequence interval and 1/Λ(0) (not yet the running minimum)."""
    _check_counts(n_a, x_a, n_b, x_b)
    if not n_a or not n_b:
        _check_level(alpha)
        return _empty(n_a, x_a, n_b, x_b)
    lift = x_b / n_b - x_a / n_a
    v = _variance(n_a, x_a, n_b, x_b)
    r = mixture_radius(v, mixture_sd, alpha)
    p = min(1.0, math.exp(-log_mixture_ratio(lift, v, mixture_sd)))
    return Interval(n_a, x_a, n_b, x_b, lift, math.sqrt(v), lift - r, lift + r, p)


@dataclass
class SequentialTest:
    """Feed cumulative counts look by look; the p-value is the running minimum (valid at any stopping time).

    ``interval`` is the current look's confidence-sequence interval (valid at every look at once),
    ``p_value`` min over looks so far of 1/Λ(0), ``crossed_at`` the first look (0-based) at which
    it fell to α or below (the test's decision; it never un-crosses).
    """

    mixture_sd: float = 0.01
    alpha: float = 0.05
    looks: int = 0
    p_value: float = 1.0
    crossed_at: int | None = None
    interval: Interval | None = None

    def __post_init__(self) -> None:
        _check_level(self.alpha)
        if not self.mixture_sd > 0:
            raise ConfigError(f"mixture_sd={self.mixture_sd!r} must be > 0 (e.g. 0.01)")

    def look(self, n_a: int, x_a: int, n_b: int, x_b: int) -> Interval:
        iv = always_valid(n_a, x_a, n_b, x_b, mixture_sd=self.mixture_sd, alpha=self.alpha)
        self.p_value = min(self.p_value, iv.p_value)
        if self.crossed_at is None and self.p_value <= self.alpha:
            self.crossed_at = self.looks
        self.looks += 1
        self.interval = iv
        return iv


def sequential_looks(looks: Iterable[tuple[int, int, int, int]], *, mixture_sd: float = 0.01,
                     alpha: float = 0.05) -> tuple[SequentialTest, list[dict[str, float | int]]]:
    """Run the test over cumulative (n_a, x_a, n_b, x_b) looks; (final state, one row per look)."""
    test = SequentialTest(mixture_sd, alpha)
    rows = []
    for counts in looks:
        iv = test.look(*counts)
        fh = fixed_horizon(*counts, alpha=alpha)
        rows.append({**iv.as_dict(), "p_value_running": test.p_value, "fixed_ci_low": fh.ci_low,
                     "fixed_ci_high": fh.ci_high, "fixed_p_value": fh.p_value})
    return test, rows


def chi_square_split(counts: Iterable[int], shares: Iterable[float]) -> tuple[float, float]:
    """Pearson chi-square of observed counts against expected shares: (statistic, p-value, k−1 df)."""
    from scipy.special import chdtrc  # the chi-square survival function (scipy.stats takes seconds to import)

    counts, shares = [int(c) for c in counts], [float(s) for s in shares]
    if len(counts) != len(shares) or len(counts) < 2:
        raise ConfigError("a sample-ratio check needs one expected share per group and at least two groups")
    if any(s <= 0 for s in shares) or abs(sum(shares) - 1.0) > 1e-9:
        raise ConfigError(f"expected shares {shares} must be positive and sum to 1")
    total = sum(counts)
    if total <= 0:
        return math.nan, math.nan
    stat = sum((c - total * s) ** 2 / (total * s) for c, s in zip(counts, shares))
    return stat, float(chdtrc(len(counts) - 1, stat))


def holm(p_values: Iterable[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (family-wise error control, any dependence); NaN stays NaN."""
    ps = list(p_values)
    idx = sorted((i for i, p in enumerate(ps) if not math.isnan(p)), key=lambda i: ps[i])
    m = len(idx)
    out = [math.nan] * len(ps)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out
