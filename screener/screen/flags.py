"""Turn per-trait scores into cuts, flags with reasons, a combined risk score and dataset means.

A trait's cut comes from, in order of precedence: `--threshold trait=value`; `--top-k K` (the
K highest samples); `--percentile P` of the calibration reference; the reference's 95th
percentile. Without a calibration for the trait, percentiles are taken over the dataset itself
and the cut says so. A sample is flagged for a trait when its score is above the cut (top-k:
among the K highest); a sample with no score for a trait is never flagged for it.

The risk score ranks all samples: the largest, over traits, of the score's z-value against the
reference (or, without one, the dataset's own mean and standard deviation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from screener.errors import ConfigError
from screener.screen.calibration import DEFAULT_PERCENTILE, Distribution

BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class FlagRule:
    """How cuts are chosen; empty means calibrated 95th percentiles."""

    thresholds: dict[str, float] = field(default_factory=dict)
    percentile: float | None = None
    top_k: int | None = None

    def __post_init__(self) -> None:
        if self.percentile is not None and not 0 <= self.percentile <= 100:
            raise ConfigError(f"--percentile must be within 0..100, not {self.percentile}")
        if self.top_k is not None and self.top_k < 0:
            raise ConfigError(f"--top-k must be at least 0, not {self.top_k}")


@dataclass(frozen=True)
class Cut:
    """A trait's flag cut and where it came from."""

    trait: str
    value: float | None  # None when nothing can be flagged (no scores)
    rule: str
    top_k: int | None = None


@dataclass(frozen=True)
class Reason:
    """Why a sample was flagged for one trait."""

    trait: str
    score: float
    cut: float
    percentile: float  # of the score within this dataset, 0..100

    def as_dict(self) -> dict[str, float | str]:
        return {
            "trait": self.trait,
            "score": self.score,
            "cut": self.cut,
            "percentile": round(self.percentile, 2),
        }


def _finite(scores: np.ndarray) -> np.ndarray:
    return scores[np.isfinite(scores)]


def decide_cut(
    trait: str, scores: np.ndarray, rule: FlagRule, reference: Distribution | None
) -> Cut:
    """The cut for one trait's scores (NaN = no score) under `rule`."""
    if trait in rule.thresholds:
        return Cut(trait, rule.thresholds[trait], f"--threshold {trait}={rule.thresholds[trait]}")
    present = _finite(scores)
    if rule.top_k is not None:
        k = min(rule.top_k, present.size)
        value = float(np.sort(present)[::-1][k - 1]) if k > 0 else None
        return Cut(trait, value, f"the {rule.top_k} highest scores (--top-k)", rule.top_k)
    percentile = DEFAULT_PERCENTILE if rule.percentile is None else rule.percentile
    given = "--percentile" if rule.percentile is not None else "default"
    if reference is not None:
        return Cut(
            trait,
            reference.percentile(percentile),
            f"{percentile:g}th percentile of the calibration reference ({reference.n} rows, "
            f"{given})",
        )
    if present.size == 0:
        return Cut(trait, None, "no scores")
    return Cut(
        trait,
        float(np.percentile(present, percentile)),
        f"{percentile:g}th percentile of this dataset (no calibration for these vectors: "
        "run screener calibrate)",
    )


def flag_mask(scores: np.ndarray, cut: Cut) -> np.ndarray:
    """Which samples the cut flags (NaN scores never)."""
    flagged = np.zeros(scores.shape, dtype=bool)
    if cut.value is None:
        return flagged
    if cut.top_k is not None:
        indices = np.flatnonzero(np.isfinite(scores))
        # highest first; equal scores in input order
        order = indices[np.lexsort((indices, -scores[indices]))]
        flagged[order[: cut.top_k]] = True
        return flagged
    with np.errstate(invalid="ignore"):
        return np.isfinite(scores) & (scores > cut.value)


def dataset_percentiles(scores: np.ndarray) -> np.ndarray:
    """Each score's percentile within the dataset: the share of scores at or below it."""
    present = np.sort(_finite(scores))
    if present.size == 0:
        return np.full(scores.shape, np.nan)
    ranks = np.searchsorted(present, scores, side="right")
    return np.where(np.isfinite(scores), 100.0 * ranks / present.size, np.nan)


def z_scores(scores: np.ndarray, reference: Distribution | None) -> np.ndarray:
    """(score - mean) / std against the reference, or against the dataset without one."""
    if reference is not None:
        mean, std = reference.mean, reference.std
    else:
        present = _finite(scores)
        mean = float(present.mean()) if present.size else 0.0
        std = float(present.std()) if present.size else 1.0
    return (scores - mean) / (std if std > 0 else 1.0)


def risk_scores(z_by_trait: list[np.ndarray]) -> np.ndarray:
    """The largest z-value over traits per sample (NaN only where every trait is NaN)."""
    stacked = np.vstack(z_by_trait)
    with np.errstate(invalid="ignore"):
        filled = np.where(np.isfinite(stacked), stacked, -np.inf)
        risk = filled.max(axis=0)
    return np.where(np.isfinite(risk), risk, np.nan)


@dataclass(frozen=True)
class MeanInterval:
    """A dataset-level mean with its bootstrap 95% interval."""

    mean: float | None
    low: float | None
    high: float | None
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {"mean": self.mean, "ci95_low": self.low, "ci95_high": self.high, "n": self.n}


def bootstrap_mean(
    scores: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> MeanInterval:
    """Mean of the finite scores and its percentile-bootstrap 95% interval (fixed seed)."""
    present = _finite(scores)
    if present.size == 0:
        return MeanInterval(None, None, None, 0)
    rng = np.random.default_rng(seed)
    # One resample at a time: memory stays at one draw of n indices (a single draw of all
    # resamples at once would need resamples x n x 16 bytes, 32 GB at a million rows).
    means = np.empty(resamples)
    for index in range(resamples):
        means[index] = present[rng.integers(0, present.size, size=present.size)].mean()
    low, high = np.percentile(means, [2.5, 97.5])
    return MeanInterval(float(present.mean()), float(low), float(high), int(present.size))
