"""The comparator: passes only when every reference output was compared and agreed."""

import numpy as np
import pytest

from wherevit.runtime.compare import compare


def test_identical_outputs_pass_and_perturbed_fail():
    ref = {"cls": np.arange(12, dtype=np.float32).reshape(3, 4) + 1}
    assert compare(ref, {"cls": ref["cls"].copy()}, 1e-6)
    worse = compare(ref, {"cls": ref["cls"] * 1.01}, 1e-4)
    assert not worse and worse.outputs[0].rel_l2 == pytest.approx(0.01, rel=1e-3)


def test_a_comparison_with_no_common_outputs_fails():
    """A depth-head artifact compared with a backbone reference shares no output: that is a failure."""
    cmp = compare({"cls": np.ones((2, 4), np.float32)}, {"depth": np.ones((2, 8, 8), np.float32)}, 1e-4)
    assert not cmp and cmp.missing == ["cls"] and cmp.outputs == []
    assert "no common outputs" in cmp.summary()
    with pytest.raises(ValueError, match="at least one reference output"):
        compare({}, {"depth": np.ones(3)}, 1e-4)


def test_shape_mismatch_and_non_finite_fail():
    ref = {"cls": np.ones((2, 4), np.float32)}
    assert not compare(ref, {"cls": np.ones((4, 2), np.float32)}, 1.0)
    assert not compare(ref, {"cls": np.full((2, 4), np.nan, np.float32)}, 1.0)


def test_cosine_criterion_reports_mean_and_minimum_over_samples():
    import numpy as np

    from wherevit.runtime.compare import compare, cosine_per_sample

    rng = np.random.default_rng(1)
    ref = {"patch_tokens": rng.standard_normal((3, 16, 8))}
    got = {"patch_tokens": ref["patch_tokens"] * 2.0}  # same direction, another scale: cosine 1, rel_l2 1
    cmp = compare(ref, got, min_cosine=0.99)
    (o,) = cmp.outputs
    assert cmp and o.cos_min == pytest.approx(1.0) and o.rel_l2 == pytest.approx(1.0)
    assert "cos_min" in cmp.summary() and cmp.worst_cosine == pytest.approx(1.0)
    got["patch_tokens"][1] = rng.standard_normal((16, 8))  # one unrelated sample
    cmp = compare(ref, got, min_cosine=0.99)
    assert not cmp and cmp.outputs[0].cos_min < 0.5 < cmp.outputs[0].cos_mean
    assert "FAIL (min cosine < 0.99)" in cmp.summary()
    assert cosine_per_sample(np.zeros((2, 3)), np.zeros((2, 3))).tolist() == [1.0, 1.0]
    short = compare(ref, {"patch_tokens": np.ones((2, 16, 8))}, min_cosine=0.99)
    assert not short and "patch_tokens" in short.summary()
