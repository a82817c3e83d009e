"""Stage 2 of a screen: cuts per trait, flags with reasons, risk, dataset means and shifts,
from the spilled score columns alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from screener.model import (
    LoadedModel,
)
from screener.options import ReadOptions
from screener.reader.memory import InMemoryData, data_name
from screener.records import RejectedRow
from screener.screening.calibration import (
    DEFAULT_PERCENTILE,
    Calibration,
)
from screener.screening.flags import (
    FAMILY_RATE,
    Cut,
    DatasetShift,
    FlagRule,
    Flags,
    MeanInterval,
    bootstrap_mean,
    dataset_shift,
    decide_cut,
    family_percentile,
    risk_scores,
    z_scores,
)
from screener.screening.result import (
    ScoreColumns,
    ScreenResult,
    score_kind,
)
from screener.screening.scoring import (
    ScoringSettings,
)
from screener.screening.spill import ScoredSamples
from screener.vectors.store import VectorFile


def decide(
    data: str | Path | InMemoryData,
    read: ReadOptions,
    loaded: LoadedModel,
    vectors: VectorFile,
    settings: ScoringSettings,
    rows_read: int,
    samples: ScoredSamples,
    rejected: list[RejectedRow],
    rule: FlagRule,
    calibration: Calibration | None,
) -> ScreenResult:
    """Cuts, flags with reasons, risk and dataset-level means. The score columns are read
    from the spill file one trait at a time (at a million rows each costs 8 MB)."""
    columns = ScoreColumns(samples, settings.traits, score_kind(settings.method))
    references = [
        None if calibration is None else calibration.distribution(trait, columns.kind)
        for trait in settings.traits
    ]
    cuts: dict[str, Cut] = {}
    dataset_scores: dict[str, MeanInterval] = {}
    dataset_shifts: dict[str, DatasetShift] = {}
    present = [r for r in references if r is not None]
    default_percentile = family_percentile(present) if present else DEFAULT_PERCENTILE
    default_rule = (
        f"default: {FAMILY_RATE:.0%} of reference rows flagged for any of "
        f"{', '.join(t for t, r in zip(settings.traits, references, strict=True) if r)}"
    )
    for trait, scores, reference in zip(settings.traits, columns, references, strict=True):
        cuts[trait] = decide_cut(trait, scores, rule, reference, default_percentile, default_rule)
        dataset_scores[trait] = bootstrap_mean(scores)
        if reference is not None and (shift := dataset_shift(dataset_scores[trait], reference)):
            dataset_shifts[trait] = shift
    flags = Flags.decide(settings.traits, list(cuts.values()), columns)
    risk = (
        risk_scores(z_scores(s, r) for s, r in zip(columns, references, strict=True))
        if len(samples)
        else np.zeros(0)
    )
    return ScreenResult(
        data_name(data),
        loaded,
        vectors,
        settings,
        rows_read,
        samples,
        rejected,
        cuts,
        flags,
        risk,
        dataset_scores,
        dataset_shifts,
        calibration=calibration,
        input=data,
        read=read,
    )
