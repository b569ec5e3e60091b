"""Study statistics on fixed numbers, against values computed by hand (and printed t tables)."""

import math

import numpy as np
import pytest

from wherevit.train.study.stats import adjust_pvalues, paired_difference, paired_t_test, t_interval, t_quantile, t_sf


@pytest.mark.parametrize("df, expected", [(1, 12.706204736), (2, 4.302652730), (4, 2.776445105), (9, 2.262157163),
                                          (30, 2.042272456)])
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-8)


def test_t_quantile_is_symmetric_and_checks_its_arguments():
    assert t_quantile(0.025, 3) == pytest.approx(-t_quantile(0.975, 3))
    assert t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match="p must be in"):
        t_quantile(1.0, 3)


def test_t_interval_by_hand():
    # 1, 2, 3: mean 2, sd 1, n 3 -> half-width = t(0.975, 2) * 1 / sqrt(3) = 4.302653 / 1.732051 = 2.484138
    iv = t_interval([1.0, 2.0, 3.0])
    assert iv.mean == pytest.approx(2.0) and iv.sd == pytest.approx(1.0) and iv.n == 3
    assert iv.half_width == pytest.approx(2.484138, abs=1e-6)
    assert iv.low == pytest.approx(2.0 - 2.484138, abs=1e-6) and iv.contains(0.0) and not iv.contains(4.5)
    # 0.50, 0.52, 0.54, 0.56: mean 0.53, sd sqrt(0.002/3) = 0.0258199, t(0.975, 3) = 3.182446
    iv4 = t_interval([0.50, 0.52, 0.54, 0.56])
    assert iv4.half_width == pytest.approx(3.182446 * math.sqrt(0.002 / 3) / 2, abs=1e-6)


def test_one_value_has_no_interval_and_proves_nothing():
    iv = t_interval([0.7])
    assert iv.mean == 0.7 and iv.half_width is None and iv.contains(123.0)


def test_paired_differences_use_the_shared_seeds_only():
    base = {0: 0.50, 1: 0.60, 2: 0.55}
    variant = {0: 0.53, 1: 0.62, 2: 0.59, 7: 0.99}  # seed 7 has no baseline run: left out
    d = paired_difference(variant, base)
    # differences 0.03, 0.02, 0.04: mean 0.03, sd 0.01 -> half-width 4.302653 * 0.01 / sqrt(3) = 0.0248414
    assert d.n == 3 and d.mean == pytest.approx(0.03) and d.half_width == pytest.approx(0.0248414, abs=1e-6)
    assert not d.contains(0.0)  # outside the noise, although the unpaired intervals overlap:
    assert t_interval(list(base.values())).contains(t_interval([0.53, 0.62, 0.59]).mean)


def test_a_difference_that_flips_sign_is_noise():
    d = paired_difference({0: 0.51, 1: 0.48, 2: 0.52}, {0: 0.50, 1: 0.50, 2: 0.50})
    assert d.contains(0.0)
    assert paired_difference({0: 1.0}, {1: 1.0}) is None


# ---------------------------------------------------------------- p-values and the correction
def _two_sided_p_df2(t):
    # Student's t with 2 degrees of freedom has a closed-form tail: P(T > t) = (1 - t / sqrt(2 + t^2)) / 2
    return 1 - abs(t) / math.sqrt(2 + t * t)


def _two_sided_p_df1(t):
    return 1 - 2 / math.pi * math.atan(abs(t))  # Cauchy


def _two_sided_p_df4(t):
    # df 4: P(|T| < t) = x (3 - x^2) / 2 with x = t / sqrt(t^2 + 4)
    x = abs(t) / math.sqrt(t * t + 4)
    return 1 - x * (3 - x * x) / 2


@pytest.mark.parametrize("t", [0.3, 1.0, 2.5, 7.0, 30.0])
def test_t_tail_matches_closed_forms(t):
    assert 2 * t_sf(t, 1) == pytest.approx(_two_sided_p_df1(t), rel=1e-9, abs=1e-14)
    assert 2 * t_sf(t, 2) == pytest.approx(_two_sided_p_df2(t), rel=1e-9, abs=1e-14)
    assert 2 * t_sf(t, 4) == pytest.approx(_two_sided_p_df4(t), rel=1e-9, abs=1e-14)
    assert t_sf(-t, 4) == pytest.approx(1 - t_sf(t, 4), abs=1e-12)


def test_paired_t_test_by_hand():
    # differences 0.03, 0.02, 0.04: mean 0.03, sd 0.01 -> t = 0.03 / (0.01 / sqrt 3) = 5.196152, df 2
    res = paired_t_test({0: 0.53, 1: 0.62, 2: 0.59, 7: 0.99}, {0: 0.50, 1: 0.60, 2: 0.55})
    assert res.df == 2 and res.mean == pytest.approx(0.03) and res.t == pytest.approx(3 * math.sqrt(3), rel=1e-9)
    assert res.p == pytest.approx(_two_sided_p_df2(3 * math.sqrt(3)), rel=1e-9)  # 0.03508
    # a negative difference gives the same p and a negative t; swapping the arguments flips the sign only
    neg = paired_t_test({0: 0.50, 1: 0.60, 2: 0.55}, {0: 0.53, 1: 0.62, 2: 0.59})
    assert neg.t == pytest.approx(-res.t) and neg.p == pytest.approx(res.p)
    # the interval excludes 0 exactly when p < 0.05 (the same t distribution)
    assert (res.p < 0.05) == (not paired_difference({0: 0.53, 1: 0.62, 2: 0.59}, {0: 0.50, 1: 0.60, 2: 0.55}).contains(0))
    assert paired_t_test({0: 1.0}, {0: 0.0}) is None  # one pair: no test
    same = paired_t_test({0: 1.0, 1: 2.0}, {0: 0.5, 1: 1.5})  # all differences 0.5, sd 0
    assert same.p == 0.0 and paired_t_test({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}).p == 1.0


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 4 x 0.005 = 0.02, 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 1 x 0.04)
    p = [0.01, 0.04, 0.03, 0.005]
    np.testing.assert_allclose(adjust_pvalues(p, "holm"), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    # capped at 1, and monotone in the sorted order
    np.testing.assert_allclose(adjust_pvalues([0.4, 0.3], "holm"), [0.6, 0.6], rtol=1e-12)
    np.testing.assert_allclose(adjust_pvalues([0.9, 0.6], "holm"), [1.0, 1.0], rtol=1e-12)


def test_benjamini_hochberg_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04: m p / rank = 0.02, 0.02, 0.04, 0.04, then the running minimum from the top
    np.testing.assert_allclose(adjust_pvalues([0.01, 0.04, 0.03, 0.005], "bh"), [0.02, 0.04, 0.04, 0.02], rtol=1e-12)
    # 0.01, 0.02, 0.9 (m = 3): 0.03, 0.03, 0.9
    np.testing.assert_allclose(adjust_pvalues([0.02, 0.9, 0.01], "bh"), [0.03, 0.9, 0.03], rtol=1e-12)
    # with a large one first in rank order: 0.04 x 2 / 1 = 0.08 -> min(0.08, 0.05 x 2 / 2 = 0.05) = 0.05
    np.testing.assert_allclose(adjust_pvalues([0.04, 0.05], "bh"), [0.05, 0.05], rtol=1e-12)


def test_untested_cells_are_not_in_the_family_and_bad_input_is_refused():
    out = adjust_pvalues([0.01, float("nan"), 0.02], "holm")
    assert math.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.02], rtol=1e-12)  # m = 2, not 3
    assert adjust_pvalues([], "bh").shape == (0,)
    with pytest.raises(ValueError, match="unknown multiple-comparison correction 'bonferoni'"):
        adjust_pvalues([0.1], "bonferoni")
    with pytest.raises(ValueError, match=r"p-values must lie in \[0, 1\]"):
        adjust_pvalues([1.5], "holm")
