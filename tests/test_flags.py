"""Cuts, flags, percentiles, risk and bootstrap means against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from screener.errors import ConfigError
from screener.screening.calibration import Distribution
from screener.screening.flags import (
    DATASET_SHIFT_ALARM,
    Cut,
    FlagRule,
    Flags,
    MeanInterval,
    Reason,
    bootstrap_mean,
    dataset_percentiles,
    dataset_shift,
    decide_cut,
    family_percentile,
    flag_mask,
    risk_scores,
    z_scores,
)

SCORES = np.array([1.0, 5.0, math.nan, 3.0, 5.0, -2.0])
# 0..100 in steps of 1: the p-th percentile is p
REFERENCE = Distribution.of([float(v) for v in range(101)])


def test_reference_percentiles_are_interpolated() -> None:
    assert REFERENCE.percentile(95) == pytest.approx(95.0)
    assert REFERENCE.percentile(97.5) == pytest.approx(97.5)
    assert REFERENCE.mean == pytest.approx(50.0)
    assert REFERENCE.std == pytest.approx(np.std(np.arange(101)))


def test_default_cut_is_the_references_95th_percentile() -> None:
    cut = decide_cut("evil", np.array([94.0, 95.0, 96.0]), FlagRule(), REFERENCE)
    assert cut.value == pytest.approx(95.0)
    assert "95th percentile of the calibration reference (101 rows" in cut.rule
    # strictly above the cut
    assert flag_mask(np.array([94.0, 95.0, 96.0, math.nan]), cut).tolist() == [
        False,
        False,
        True,
        False,
    ]


def test_percentile_option_moves_the_reference_cut() -> None:
    cut = decide_cut("evil", SCORES, FlagRule(percentile=80), REFERENCE)
    assert cut.value == pytest.approx(80.0)


def test_without_calibration_the_dataset_percentile_is_used_and_said() -> None:
    scores = np.arange(1.0, 21.0)  # 1..20
    cut = decide_cut("evil", scores, FlagRule(), None)
    assert cut.value == pytest.approx(np.percentile(scores, 95))  # 19.05
    assert "of this dataset" in cut.rule and "screener calibrate" in cut.rule
    assert flag_mask(scores, cut).tolist() == [False] * 19 + [True]


def test_threshold_overrides_everything_for_its_trait_only() -> None:
    rule = FlagRule(thresholds={"evil": 2.0}, top_k=1)
    evil = decide_cut("evil", SCORES, rule, REFERENCE)
    assert evil.value == 2.0 and evil.top_k is None
    assert flag_mask(SCORES, evil).tolist() == [False, True, False, True, True, False]
    other = decide_cut("sycophancy", SCORES, rule, REFERENCE)
    assert other.top_k == 1


def test_top_k_takes_the_k_highest_with_ties_in_input_order() -> None:
    cut = decide_cut("evil", SCORES, FlagRule(top_k=1), None)
    assert cut.value == 5.0
    assert flag_mask(SCORES, cut).tolist() == [False, True, False, False, False, False]
    three = decide_cut("evil", SCORES, FlagRule(top_k=3), None)
    assert flag_mask(SCORES, three).tolist() == [False, True, False, True, True, False]
    everything = decide_cut("evil", SCORES, FlagRule(top_k=100), None)
    assert flag_mask(SCORES, everything).sum() == 5  # NaN is never flagged
    none = decide_cut("evil", SCORES, FlagRule(top_k=0), None)
    assert none.value is None and not flag_mask(SCORES, none).any()


def test_rule_values_are_checked() -> None:
    with pytest.raises(ConfigError, match="percentile"):
        FlagRule(percentile=101)
    with pytest.raises(ConfigError, match="top-k"):
        FlagRule(top_k=-1)


def test_dataset_percentile_is_the_share_at_or_below() -> None:
    got = dataset_percentiles(SCORES)
    # finite scores sorted: -2, 1, 3, 5, 5
    expected = [40.0, 100.0, math.nan, 60.0, 100.0, 20.0]
    np.testing.assert_allclose(got, expected)


def test_dataset_percentiles_of_given_values() -> None:
    got = dataset_percentiles(SCORES, np.array([5.0, -2.0, 4.0, math.nan]))
    np.testing.assert_allclose(got, [100.0, 20.0, 60.0, math.nan])


def test_flags_hold_each_flagged_samples_reasons() -> None:
    evil = np.array([1.0, 5.0, math.nan, 3.0, 5.0, -2.0])
    sycophancy = np.array([9.0, 0.0, 7.0, 1.0, math.nan, 8.0])
    cuts = [Cut("evil", 4.0, "hand"), Cut("sycophancy", 7.5, "hand")]
    flags = Flags.decide(("evil", "sycophancy"), cuts, [evil, sycophancy])
    # evil > 4: samples 1 and 4; sycophancy > 7.5: samples 0 and 5
    assert flags.indices.tolist() == [0, 1, 4, 5] and len(flags) == 4
    assert flags.count("evil") == 2 and flags.count("sycophancy") == 2
    assert [flags.position(i) for i in range(6)] == [0, 1, None, None, 2, 3]
    assert flags.positions(1, 5) == (1, 3)
    # sycophancy's finite scores sorted: 0, 1, 7, 8, 9
    assert flags.reasons_at(0) == [Reason("sycophancy", 9.0, 7.5, 100.0)]
    assert flags.reasons_at(1) == [Reason("evil", 5.0, 4.0, 100.0)]
    assert flags.reasons_at(3) == [Reason("sycophancy", 8.0, 7.5, 80.0)]
    both = Flags.decide(
        ("evil", "sycophancy"), [cuts[0], Cut("sycophancy", -1.0, "hand")], [evil, sycophancy]
    )
    assert both.reasons_at(both.position(1) or 0) == [
        Reason("evil", 5.0, 4.0, 100.0),
        Reason("sycophancy", 0.0, -1.0, 20.0),
    ]
    nothing = Flags.decide(("evil",), [Cut("evil", None, "no scores")], [evil])
    assert len(nothing) == 0 and nothing.position(1) is None


def test_risk_is_the_largest_z_over_traits() -> None:
    evil = z_scores(np.array([60.0, 50.0, math.nan]), REFERENCE)
    std = REFERENCE.std
    np.testing.assert_allclose(evil[:2], [10.0 / std, 0.0])
    # without a reference: the dataset's own mean and std
    other = z_scores(np.array([1.0, 3.0, 5.0]), None)
    np.testing.assert_allclose(other, [-1.224744871, 0.0, 1.224744871])
    risk = risk_scores([evil, other])
    np.testing.assert_allclose(risk, [10.0 / std, 0.0, 1.224744871])
    assert math.isnan(risk_scores([np.array([math.nan]), np.array([math.nan])])[0])


def test_risk_folded_from_a_generator_equals_a_per_sample_loop() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(size=(3, 200))
    z[rng.random(z.shape) < 0.3] = math.nan
    z[:, :5] = math.nan  # samples no trait scores
    expected = []
    for sample in range(z.shape[1]):
        finite = [float(v) for v in z[:, sample] if math.isfinite(v)]
        expected.append(max(finite) if finite else math.nan)
    got = risk_scores(row for row in z)
    np.testing.assert_array_equal(got, expected)


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible() -> None:
    scores = np.array([1.0, 2.0, 3.0, 4.0, math.nan])
    first = bootstrap_mean(scores)
    assert first.mean == pytest.approx(2.5) and first.n == 4
    assert first.low is not None and first.high is not None
    assert 1.0 <= first.low < 2.5 < first.high <= 4.0
    assert bootstrap_mean(scores) == first
    constant = bootstrap_mean(np.array([2.0, 2.0, 2.0]))
    assert constant.low == constant.high == 2.0
    assert bootstrap_mean(np.array([math.nan])).mean is None


def test_bootstrap_interval_matches_the_normal_approximation_for_many_rows() -> None:
    """For n = 20,000 the bootstrap interval of the mean is mean +- 1.96 s / sqrt(n)."""
    scores = np.random.default_rng(1).exponential(2.0, size=20_000)
    result = bootstrap_mean(scores)
    half_width = 1.96 * scores.std() / math.sqrt(scores.size)
    assert result.mean == pytest.approx(scores.mean())
    assert result.low == pytest.approx(scores.mean() - half_width, abs=0.1 * half_width)
    assert result.high == pytest.approx(scores.mean() + half_width, abs=0.1 * half_width)


def share_flagged(matrix: np.ndarray, q: float) -> float:
    """The share of reference rows above the q-th percentile of at least one trait, by hand
    (percentiles interpolated between whole ones, as a stored Distribution gives them)."""
    cuts = [np.interp(q, np.arange(101), np.percentile(row, np.arange(101))) for row in matrix]
    return float(np.mean([any(v > c for v, c in zip(col, cuts, strict=True)) for col in matrix.T]))


@pytest.mark.parametrize("correlation", [0.0, 0.6, 1.0])
def test_family_percentile_flags_five_percent_of_reference_rows_in_all(correlation: float) -> None:
    rng = np.random.default_rng(1)
    shared = rng.normal(size=400)
    matrix = np.array(
        [correlation * shared + np.sqrt(1 - correlation**2) * rng.normal(size=400) for _ in "abc"]
    )
    q = family_percentile([Distribution.of(list(row)) for row in matrix])
    grid = np.arange(95.0, 100.0, 0.001)  # the naive search: first grid point within the rate
    naive = next(g for g in grid if share_flagged(matrix, g) <= 0.05)
    assert q == pytest.approx(naive, abs=0.002)
    assert share_flagged(matrix, q) <= 0.05
    if correlation == 1.0:  # one trait in three copies: the plain 95th percentile
        assert q == pytest.approx(95.0, abs=0.3)
    else:
        assert 96.0 < q < 99.0 and share_flagged(matrix, q - 0.01) > 0.05


def test_family_percentile_without_stored_values_is_the_union_bound() -> None:
    without = Distribution(3, 0.0, 1.0, [float(p) for p in range(101)], None)
    assert family_percentile([without, REFERENCE]) == pytest.approx(97.5)
    assert family_percentile([REFERENCE]) == pytest.approx(95.0)  # one trait: its own 95th


def test_the_default_cut_is_the_family_percentile_given() -> None:
    cut = decide_cut("evil", SCORES, FlagRule(), REFERENCE, 98.25, "default: 5% for any")
    assert cut.value == pytest.approx(98.25)
    assert cut.rule == (
        "98.25th percentile of the calibration reference (101 rows, default: 5% for any)"
    )
    explicit = decide_cut("evil", SCORES, FlagRule(percentile=90), REFERENCE, 98.25)
    assert explicit.value == pytest.approx(90.0) and "--percentile" in explicit.rule


def test_dataset_shift_is_the_mean_in_reference_standard_deviations() -> None:
    # REFERENCE is 0..100: mean 50, population standard deviation sqrt((101^2 - 1) / 12)
    sd = math.sqrt((101**2 - 1) / 12)
    assert REFERENCE.std == pytest.approx(sd)
    shift = dataset_shift(MeanInterval(70.0, 65.0, 75.0, 40), REFERENCE)
    assert shift is not None
    assert (shift.shift, shift.low, shift.high) == pytest.approx((20 / sd, 15 / sd, 25 / sd))
    assert 15 / sd > DATASET_SHIFT_ALARM and shift.alarm
    assert shift.as_dict()["alarm"] is True and "+0.69 reference standard deviations" in shift.note(
        "evil"
    )
    # the interval's low end decides: a mean above the line whose interval reaches below it
    # raises no alarm
    wide = dataset_shift(MeanInterval(50 + 0.6 * sd, 50 + 0.4 * sd, 50 + 0.8 * sd, 5), REFERENCE)
    assert wide is not None and wide.shift > DATASET_SHIFT_ALARM and not wide.alarm
    assert dataset_shift(MeanInterval(None, None, None, 0), REFERENCE) is None
    assert dataset_shift(MeanInterval(1.0, 1.0, 1.0, 3), Distribution.of([2.0, 2.0])) is None
