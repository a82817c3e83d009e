"""Style control: take out of each trait direction what tells another author's neutral answer
from the model's own.

ΔP compares a training response with the model's own answer to the same prompt. When the
training response was written by someone else (a person, a stronger model), the two differ in
length, structure and register even when neither shows any trait, and some of that difference
falls along a trait direction: careful long answers read as "sycophantic", hedged ones as the
opposite of "hallucinating". Such shifts are not the trait, and they move whole datasets past
cuts calibrated on another style.

Neutral pairs measure them. For each row of a neutral reference (ordinary, correct answers in
several styles) the difference `d = a(x, y) - a(x, y')` of mean response activations at the
trait's layer holds no trait by construction. The top `k` right singular vectors of the stacked
differences (not centred, so the mean author shift is among them) span the **style subspace**
S. The style-controlled direction is the trait's unit vector with its component in S removed,
renormalised:

    w = (v - S Sᵀ v) / ||v - S Sᵀ v||,    ΔP_controlled = d · w

Because S holds eigenvectors of the differences' second moment, this equals regressing the k
style scores `d · S` out of ΔP by least squares on the reference. `explained` reports the share
of the reference's ΔP second moment that the style scores account for.

The reference distribution that sets the cut is taken **out of fold**: each reference row is
scored with a subspace fitted without it, so the cut does not flatter the reference it was fitted
on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from screener.errors import ConfigError

# Chosen on development data (benchmarks/bench_paper_dev.py; README, "What a flag means").
STYLE_COMPONENTS = 8
FOLDS = 5
MIN_ROWS_PER_COMPONENT = 10


@dataclass(frozen=True)
class StyleControl:
    """One trait's style-controlled scoring direction and what the control did."""

    components: int
    direction: np.ndarray  # (d,) float64, unit length, at the trait's layer
    cosine: float  # between the controlled direction and the trait's own unit vector
    explained: float  # share of the reference's ΔP second moment explained by the style scores

    def as_json(self) -> dict[str, object]:
        return {
            "components": self.components,
            "cosine": self.cosine,
            "explained": self.explained,
            "direction": [float(x) for x in self.direction],
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> StyleControl:
        direction = np.asarray(data["direction"], dtype=np.float64)
        return cls(
            int(data["components"]),  # type: ignore[call-overload]
            direction,
            float(data["cosine"]),  # type: ignore[arg-type]
            float(data["explained"]),  # type: ignore[arg-type]
        )


def style_basis(differences: np.ndarray, components: int) -> np.ndarray:
    """(d, k) orthonormal basis of the top `components` right singular vectors of the
    (n, d) neutral differences, not centred."""
    if components == 0:
        return np.zeros((differences.shape[1], 0))
    _, _, right = np.linalg.svd(np.asarray(differences, dtype=np.float64), full_matrices=False)
    return np.ascontiguousarray(right[:components].T)


def controlled_direction(unit: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """`unit` with its component in the span of `basis` removed, renormalised."""
    rest = unit - basis @ (basis.T @ unit)
    norm = float(np.linalg.norm(rest))
    if norm < 1e-6:
        raise ConfigError(
            "the trait direction lies inside the style subspace of the reference: use fewer "
            "style components or a reference with more rows"
        )
    return rest / norm


def fit_style_control(
    differences: np.ndarray, unit: np.ndarray, components: int = STYLE_COMPONENTS
) -> StyleControl:
    """The style-controlled direction of one trait from its (n, d) neutral differences."""
    check_rows(len(differences), components)
    unit = np.asarray(unit, dtype=np.float64)
    unit = unit / np.linalg.norm(unit)
    basis = style_basis(differences, components)
    direction = controlled_direction(unit, basis)
    raw = np.asarray(differences, dtype=np.float64) @ unit
    removed = (np.asarray(differences, dtype=np.float64) @ basis) @ (basis.T @ unit)
    total = float(raw @ raw)
    explained = 1.0 - float((raw - removed) @ (raw - removed)) / total if total > 0 else 0.0
    return StyleControl(components, direction, float(direction @ unit), explained)


def out_of_fold_scores(
    differences: np.ndarray, unit: np.ndarray, components: int = STYLE_COMPONENTS
) -> np.ndarray:
    """Each reference row's controlled ΔP along a direction fitted without its fold.

    Rows go to FOLDS folds by position (row i to fold i mod FOLDS), so the result does not
    depend on a random seed; a reference in a meaningful order is still spread across folds.
    """
    differences = np.asarray(differences, dtype=np.float64)
    check_rows(len(differences), components)
    unit = np.asarray(unit, dtype=np.float64)
    unit = unit / np.linalg.norm(unit)
    folds = np.arange(len(differences)) % FOLDS
    scores = np.empty(len(differences))
    for fold in range(FOLDS):
        held = folds == fold
        basis = style_basis(differences[~held], components)
        scores[held] = differences[held] @ controlled_direction(unit, basis)
    return scores


def check_rows(rows: int, components: int) -> None:
    """A style subspace of k components needs at least MIN_ROWS_PER_COMPONENT * k rows."""
    if components < 0:
        raise ConfigError(f"style components must be at least 0, not {components}")
    if components and rows < max(FOLDS, MIN_ROWS_PER_COMPONENT * components):
        raise ConfigError(
            f"style control with {components} components needs at least "
            f"{max(FOLDS, MIN_ROWS_PER_COMPONENT * components)} usable reference rows, got "
            f"{rows}: use a larger reference or --style-components 0"
        )
