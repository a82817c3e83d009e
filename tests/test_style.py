"""Style control against naive recomputations: least squares, eigendecomposition, a per-row
leave-fold-out loop, and a planted style direction."""

from __future__ import annotations

import numpy as np
import pytest

from screener.errors import ConfigError
from screener.screening.style import (
    FOLDS,
    StyleControl,
    fit_style_control,
    out_of_fold_scores,
    style_basis,
)


def random_case(rows: int = 120, width: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # neutral differences with a few strong directions and a mean shift, like author styles
    mixing = rng.normal(size=(width, width)) * np.linspace(3.0, 0.1, width)[:, None]
    differences = rng.normal(size=(rows, width)) @ mixing + rng.normal(size=width)
    unit = rng.normal(size=width)
    return differences, unit / np.linalg.norm(unit)


def naive_basis(differences: np.ndarray, k: int) -> np.ndarray:
    """Top-k eigenvectors of the uncentred second moment DᵀD."""
    values, vectors = np.linalg.eigh(differences.T @ differences)
    return vectors[:, np.argsort(values)[::-1][:k]]


def test_the_basis_spans_the_top_eigenvectors_of_the_second_moment() -> None:
    differences, _ = random_case()
    for k in (1, 3, 6):
        ours, naive = style_basis(differences, k), naive_basis(differences, k)
        np.testing.assert_allclose(ours @ ours.T, naive @ naive.T, atol=1e-9)
        np.testing.assert_allclose(ours.T @ ours, np.eye(k), atol=1e-12)


def test_controlled_scores_equal_regressing_the_style_scores_out_of_delta_p() -> None:
    differences, unit = random_case()
    k = 4
    control = fit_style_control(differences, unit, k)
    raw = differences @ unit
    style_scores = differences @ naive_basis(differences, k)
    beta, *_ = np.linalg.lstsq(style_scores, raw, rcond=None)
    residual = raw - style_scores @ beta
    removed = unit - naive_basis(differences, k) @ (naive_basis(differences, k).T @ unit)
    np.testing.assert_allclose(differences @ control.direction, residual / np.linalg.norm(removed))
    assert np.linalg.norm(control.direction) == pytest.approx(1.0)
    assert control.cosine == pytest.approx(float(np.linalg.norm(removed)))
    assert control.explained == pytest.approx(1 - residual @ residual / (raw @ raw))
    assert 0 < control.explained < 1 and control.components == k


def test_out_of_fold_scores_equal_a_loop_that_refits_without_each_fold() -> None:
    differences, unit = random_case(rows=53)
    k = 3
    expected = np.empty(len(differences))
    for row in range(len(differences)):
        others = [i for i in range(len(differences)) if i % FOLDS != row % FOLDS]
        basis = naive_basis(differences[others], k)
        direction = unit - basis @ (basis.T @ unit)
        expected[row] = differences[row] @ direction / np.linalg.norm(direction)
    np.testing.assert_allclose(out_of_fold_scores(differences, unit, k), expected, atol=1e-9)


def test_a_planted_style_direction_is_removed_and_the_trait_kept() -> None:
    """The trait vector leans on a style direction that neutral pairs vary along: the
    controlled direction is the trait's own part, and neutral rows stop moving along it."""
    rng = np.random.default_rng(3)
    width = 32
    style, trait = np.eye(width)[0], np.eye(width)[1]
    contaminated = (trait + style) / np.sqrt(2)
    neutral = rng.normal(0, 5, size=(200, 1)) * style + rng.normal(0, 0.1, size=(200, width))
    control = fit_style_control(neutral, contaminated, 1)
    assert control.direction @ trait > 0.999
    assert np.std(neutral @ control.direction) < 0.2 < np.std(neutral @ contaminated)
    assert control.explained > 0.99


def test_json_round_trip_and_too_small_references() -> None:
    differences, unit = random_case()
    control = fit_style_control(differences, unit, 2)
    again = StyleControl.from_json(control.as_json())
    np.testing.assert_array_equal(again.direction, control.direction)
    assert (again.components, again.cosine, again.explained) == (
        control.components,
        control.cosine,
        control.explained,
    )
    with pytest.raises(ConfigError, match="at least 80 usable reference rows"):
        fit_style_control(differences[:79], unit, 8)
    no_control = fit_style_control(differences, unit, 0)
    np.testing.assert_allclose(no_control.direction, unit)
    assert no_control.explained == 0.0
