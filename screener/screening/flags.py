"""Turn per-trait scores into cuts, flags with reasons, a combined risk score and dataset means.

A trait's cut comes from, in order of precedence: `--threshold trait=value`; `--top-k K` (the
K highest samples); `--percentile P` of the calibration reference; by default, the reference
percentile at which FAMILY_RATE (5%) of the reference rows are flagged for at least one of the
traits screened (`family_percentile`; one common percentile, about the 98th for three traits).
Without a calibration for the trait, percentiles are taken over the dataset itself (the 95th by
default) and the cut says so. A sample is flagged for a trait when its score is above the cut
(top-k: among the K highest); a sample with no score for a trait is never flagged for it.

The risk score ranks all samples: the largest, over traits, of the score's z-value against the
reference (or, without one, the dataset's own mean and standard deviation).

Row flags find rows that stand out; a dataset whose rows all lean the same way can have few
that do. The dataset shift catches it: the dataset's mean score above the reference mean, in
reference standard deviations, with its bootstrap interval. It raises an alarm when even the
interval's lower end is above DATASET_SHIFT_ALARM.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from screener.errors import ConfigError
from screener.screening.calibration import DEFAULT_PERCENTILE, Distribution

BOOTSTRAP_RESAMPLES = 2000
# By default, cuts flag this share of the calibration reference's rows for any trait: ordinary
# data is flagged at this rate in total, below the gate's default max_flag_rate of 10%.
FAMILY_RATE = 0.05
# A dataset is "shifted" for a trait when its mean score is, with 95% confidence, at least half
# a reference standard deviation above the reference mean (a medium effect in Cohen's terms).
DATASET_SHIFT_ALARM = 0.5


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


def family_percentile(references: Sequence[Distribution], rate: float = FAMILY_RATE) -> float:
    """The smallest common percentile q (0..100) at which at most `rate` of the reference rows
    lie above the q-th percentile of at least one trait.

    Needs each distribution's values in reference row order (kept for references of up to
    MAX_STORED_VALUES rows); without them, or when their lengths differ, it falls back to the
    union bound 100 * (1 - rate / traits).
    """
    if not references:
        raise ValueError("family_percentile needs at least one reference distribution")
    values = [r.values for r in references]
    if any(v is None for v in values) or len({len(v or ()) for v in values}) != 1:
        return 100.0 * (1.0 - rate / len(references))
    return shared_percentile(references, np.asarray(values, dtype=np.float64), rate)


def shared_percentile(references: Sequence[Distribution], matrix: np.ndarray, rate: float) -> float:
    """The smallest common percentile q, from 100 * (1 - rate) up, at which at most `rate` of
    the matrix's columns have a value above the q-th percentile of its row's reference in at
    least one row. `matrix` holds
    one row per reference, one column per reference row; NaN (a statistic that does not apply
    to that row) is never above."""

    def flagged_share(q: float) -> float:
        cuts = np.array([r.percentile(q) for r in references])
        return float((matrix > cuts[:, None]).any(axis=0).mean())

    low, high = 100.0 * (1.0 - rate), 100.0  # flagged_share(high) is 0
    if flagged_share(low) <= rate:
        return low
    for _ in range(50):  # the share falls as q rises; keep low above and high within the rate
        middle = (low + high) / 2
        if flagged_share(middle) > rate:
            low = middle
        else:
            high = middle
    return high


def decide_cut(
    trait: str,
    scores: np.ndarray,
    rule: FlagRule,
    reference: Distribution | None,
    default_percentile: float = DEFAULT_PERCENTILE,
    default_rule: str = "default",
) -> Cut:
    """The cut for one trait's scores (NaN = no score) under `rule`; without a percentile in
    the rule, the reference's `default_percentile` (described by `default_rule`)."""
    if trait in rule.thresholds:
        return Cut(trait, rule.thresholds[trait], f"--threshold {trait}={rule.thresholds[trait]}")
    present = _finite(scores)
    if rule.top_k is not None:
        k = min(rule.top_k, present.size)
        value = float(np.sort(present)[::-1][k - 1]) if k > 0 else None
        return Cut(trait, value, f"the {rule.top_k} highest scores (--top-k)", rule.top_k)
    if reference is not None:
        percentile = default_percentile if rule.percentile is None else rule.percentile
        given = "--percentile" if rule.percentile is not None else default_rule
        return Cut(
            trait,
            reference.percentile(percentile),
            f"{percentile:.4g}th percentile of the calibration reference ({reference.n} rows, "
            f"{given})",
        )
    if present.size == 0:
        return Cut(trait, None, "no scores")
    percentile = DEFAULT_PERCENTILE if rule.percentile is None else rule.percentile
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


def dataset_percentiles(scores: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
    """The percentile of each of `values` (default: the scores themselves) within the
    dataset's `scores`: the share of scores at or below it."""
    values = scores if values is None else values
    present = np.sort(_finite(scores))
    if present.size == 0:
        return np.full(values.shape, np.nan)
    ranks = np.searchsorted(present, values, side="right")
    return np.where(np.isfinite(values), 100.0 * ranks / present.size, np.nan)


class Flags:
    """The flagged samples of a run and why, in arrays rather than objects per sample (a
    million-row run may flag 10^5 samples, and a list of `Reason`s costs about 0.4 KB each).

    Row `p` of every array belongs to the flagged sample `indices[p]`, in input order.
    """

    def __init__(self, traits: Sequence[str], cuts: Sequence[float | None]) -> None:
        self.traits = tuple(traits)
        self.cuts = np.array([np.nan if c is None else c for c in cuts], dtype=np.float64)
        self.indices = np.zeros(0, dtype=np.int64)
        self.flagged_for = np.zeros((0, len(self.traits)), dtype=bool)
        self.scores = np.zeros((0, len(self.traits)))
        self.percentiles = np.zeros((0, len(self.traits)))

    @classmethod
    def decide(
        cls, traits: Sequence[str], cuts: Sequence[Cut], scores_by_trait: Sequence[np.ndarray]
    ) -> Flags:
        """Flag every sample that some trait's cut flags (`flag_mask`).

        Each trait's scores are taken from `scores_by_trait` twice and one trait at a time,
        so a sequence that reads its columns on demand keeps one column in memory.
        """
        flags = cls(traits, [cut.value for cut in cuts])
        if not flags.traits:
            return flags
        union: np.ndarray | None = None
        for trait, cut in enumerate(cuts):
            mask = flag_mask(scores_by_trait[trait], cut)
            union = mask if union is None else np.logical_or(union, mask, out=union)
        assert union is not None
        flags.indices = np.flatnonzero(union).astype(np.int64)
        del union
        size, width = len(flags.indices), len(flags.traits)
        flags.flagged_for = np.zeros((size, width), dtype=bool)
        flags.scores = np.zeros((size, width))
        flags.percentiles = np.zeros((size, width))
        for trait, cut in enumerate(cuts):
            scores = scores_by_trait[trait]
            flags.flagged_for[:, trait] = flag_mask(scores, cut)[flags.indices]
            flags.scores[:, trait] = scores[flags.indices]
            flags.percentiles[:, trait] = dataset_percentiles(scores, flags.scores[:, trait])
        return flags

    def __len__(self) -> int:
        return len(self.indices)

    def position(self, index: int) -> int | None:
        """The row of sample `index` in the arrays, or None when it is not flagged."""
        p = int(np.searchsorted(self.indices, index))
        return p if p < len(self.indices) and self.indices[p] == index else None

    def positions(self, start: int, stop: int) -> tuple[int, int]:
        """The rows of the flagged samples with index in [start, stop)."""
        first, last = np.searchsorted(self.indices, [start, stop])
        return int(first), int(last)

    def reasons_at(self, position: int) -> list[Reason]:
        """Why the flagged sample at row `position` is flagged, one reason per trait."""
        return [
            Reason(
                trait,
                float(self.scores[position, t]),
                float(self.cuts[t]),
                float(self.percentiles[position, t]),
            )
            for t, trait in enumerate(self.traits)
            if self.flagged_for[position, t]
        ]

    def count(self, trait: str) -> int:
        """How many samples are flagged for `trait`."""
        return int(self.flagged_for[:, self.traits.index(trait)].sum())


def z_scores(scores: np.ndarray, reference: Distribution | None) -> np.ndarray:
    """(score - mean) / std against the reference, or against the dataset without one."""
    if reference is not None:
        mean, std = reference.mean, reference.std
    else:
        present = _finite(scores)
        mean = float(present.mean()) if present.size else 0.0
        std = float(present.std()) if present.size else 1.0
    return (scores - mean) / (std if std > 0 else 1.0)


def risk_scores(z_by_trait: Iterable[np.ndarray]) -> np.ndarray:
    """The largest z-value over traits per sample (NaN only where every trait is NaN).

    Folded one trait at a time, so a generator of z-values holds one trait's in memory.
    """
    risk: np.ndarray | None = None
    for z in z_by_trait:
        if risk is None:
            risk = np.full(z.shape, -np.inf)
        np.fmax(risk, z, out=risk)  # fmax takes the number where one side is NaN
    if risk is None:
        raise ValueError("risk_scores needs the z-values of at least one trait")
    risk[~np.isfinite(risk)] = np.nan
    return risk


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


@dataclass(frozen=True)
class DatasetShift:
    """The dataset's mean score against the reference's, in reference standard deviations."""

    shift: float  # (dataset mean - reference mean) / reference standard deviation
    low: float  # the same for the low end of the mean's 95% interval
    high: float

    @property
    def alarm(self) -> bool:
        return self.low > DATASET_SHIFT_ALARM

    def note(self, trait: str) -> str:
        return (
            f"{trait}: the dataset as a whole scores {self.shift:+.2f} reference standard "
            f"deviations above ordinary data (95% interval {self.low:+.2f} to {self.high:+.2f}, "
            f"alarm above {DATASET_SHIFT_ALARM:+.2f}): the rows lean toward {trait} as a whole, "
            "so training on all of them would move the model, however many are flagged"
        )

    def as_dict(self) -> dict[str, float | bool]:
        return {
            "shift": self.shift,
            "ci95_low": self.low,
            "ci95_high": self.high,
            "alarm_above": DATASET_SHIFT_ALARM,
            "alarm": self.alarm,
        }


def dataset_shift(interval: MeanInterval, reference: Distribution) -> DatasetShift | None:
    """How far the dataset's mean sits above the reference's, in reference standard deviations
    (None without scores or with a constant reference)."""
    if interval.mean is None or interval.low is None or interval.high is None:
        return None
    if not reference.std > 0:
        return None
    return DatasetShift(
        (interval.mean - reference.mean) / reference.std,
        (interval.low - reference.mean) / reference.std,
        (interval.high - reference.mean) / reference.std,
    )
