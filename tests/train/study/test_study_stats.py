"""Study statistics on fixed numbers, against values computed by hand (and printed t tables)."""

import math

import pytest

from wherevit.train.study.stats import paired_difference, t_interval, t_quantile


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
