"""Always-valid inference (smartrouter.sequential): the boundary, the p-value, the SRM chi-square, Holm."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from smartrouter import sequential as S
from smartrouter.errors import ConfigError


def test_fixed_horizon_is_the_two_sample_z_interval():
    iv = S.fixed_horizon(4000, 3200, 4000, 3280)
    pa, pb = 3201 / 4002, 3281 / 4002  # the smoothed p used for the variance
    se = math.sqrt(pa * (1 - pa) / 4000 + pb * (1 - pb) / 4000)
    assert iv.lift == pytest.approx(0.02, abs=1e-12)
    assert iv.se == pytest.approx(se, rel=1e-12)
    z = NormalDist().inv_cdf(0.975)
    assert (iv.ci_low, iv.ci_high) == pytest.approx((0.02 - z * se, 0.02 + z * se), rel=1e-12)
    assert iv.p_value == pytest.approx(2 * (1 - NormalDist().cdf(0.02 / se)), rel=1e-9)


def test_the_interval_edge_is_where_the_mixture_ratio_reaches_one_over_alpha():
    iv = S.always_valid(5000, 4000, 5000, 4100, mixture_sd=0.01, alpha=0.05)
    v = iv.se ** 2
    for edge in (iv.ci_low, iv.ci_high):
        assert S.log_mixture_ratio(iv.lift, v, 0.01, null=edge) == pytest.approx(math.log(20), rel=1e-9)
    # 0 outside the interval <=> 1/Lambda(0) <= alpha
    assert (iv.ci_low > 0) == (iv.p_value <= 0.05)


def test_always_valid_is_wider_than_fixed_and_narrows_with_data():
    small = S.always_valid(1000, 800, 1000, 820)
    big = S.always_valid(100_000, 80_000, 100_000, 82_000)
    fixed = S.fixed_horizon(1000, 800, 1000, 820)
    assert small.ci_high - small.ci_low > fixed.ci_high - fixed.ci_low
    assert big.ci_high - big.ci_low < (small.ci_high - small.ci_low) / 5


def test_running_p_value_never_rises_and_records_the_first_crossing():
    test = S.SequentialTest(0.01, 0.05)
    test.look(20_000, 16_000, 20_000, 16_600)  # +3 pp: crosses
    first = test.p_value
    assert test.crossed_at == 0 and first <= 0.05
    test.look(40_000, 32_000, 40_000, 32_000)  # then no difference at all
    assert test.p_value == first and test.crossed_at == 0
    assert test.interval.lift == 0.0


def test_peeking_daily_keeps_the_false_positive_rate_and_the_fixed_test_does_not():
    """Under H0, 400 experiments x 20 daily looks: the always-valid test rejects <= alpha (+3 se),
    the fixed-horizon test read daily rejects far more (theory: ~20-25 % for 20 looks)."""
    rng = np.random.default_rng(7)
    n_exp, looks, per_look, p = 400, 20, 400, 0.8
    av = fx = 0
    for _ in range(n_exp):
        a = rng.binomial(per_look, p, looks).cumsum()
        b = rng.binomial(per_look, p, looks).cumsum()
        test = S.SequentialTest(0.01, 0.05)
        hit = False
        for k in range(looks):
            n = per_look * (k + 1)
            test.look(n, int(a[k]), n, int(b[k]))
            hit |= S.fixed_horizon(n, int(a[k]), n, int(b[k])).p_value < 0.05
        av += test.p_value < 0.05
        fx += hit
    bound = 0.05 + 3 * math.sqrt(0.05 * 0.95 / n_exp)
    assert av / n_exp <= bound
    assert fx / n_exp > 0.10  # 3 se above 5 %: the inflation peeking causes


def test_empty_arm_gives_an_unbounded_interval_and_p_one():
    iv = S.always_valid(0, 0, 10, 5)
    assert iv.ci_low == -math.inf and iv.ci_high == math.inf and iv.p_value == 1.0


@pytest.mark.parametrize("args", [(10, 11, 10, 5), (-1, 0, 10, 5), (10, 5, 10, -1)])
def test_impossible_counts_are_refused(args):
    with pytest.raises(ConfigError, match="impossible"):
        S.always_valid(*args)


def test_bad_alpha_and_tau_are_refused():
    with pytest.raises(ConfigError, match="alpha"):
        S.fixed_horizon(10, 5, 10, 5, alpha=1.5)
    with pytest.raises(ConfigError, match="mixture_sd"):
        S.SequentialTest(0.0, 0.05)


def test_chi_square_split():
    stat, p = S.chi_square_split([5000, 5000], [0.5, 0.5])
    assert stat == 0.0 and p == 1.0
    stat, p = S.chi_square_split([5200, 4800], [0.5, 0.5])
    assert stat == pytest.approx(16.0, rel=1e-12)
    # P(chi2_1 >= 16) = P(|Z| >= 4) = 2 (1 - Phi(4))
    assert p == pytest.approx(2 * (1 - NormalDist().cdf(4.0)), rel=1e-6)
    with pytest.raises(ConfigError, match="sum to 1"):
        S.chi_square_split([1, 2], [0.5, 0.6])


def test_holm_matches_the_step_down_definition():
    adj = S.holm([0.01, 0.04, 0.03, float("nan"), 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 with m = 4: 0.02, 0.03, 0.06, max(0.06, 0.04) = 0.06
    assert adj[4] == pytest.approx(0.02) and adj[0] == pytest.approx(0.03)
    assert adj[2] == pytest.approx(0.06) and adj[1] == pytest.approx(0.06)
    assert math.isnan(adj[3])
