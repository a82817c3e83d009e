"""A validation's result: the shift each finetune caused per trait, Pearson r against the
screen's dataset ΔP, and validate.json / validate.png.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from screener.atomic import atomic_path, write_text_atomic
from screener.model import ModelIdentity
from screener.run_directory import VALIDATE_JSON, VALIDATE_PLOT, add_to_manifest
from screener.validation.datasets import (
    TrainingSet,
)
from screener.validation.shift import (
    AnswerProjections,
    shift_standard_error,
    trait_shift,
)
from screener.validation.training import ValidateSettings


@dataclass(frozen=True)
class Shift:
    """How far a trained model moved toward one trait, with the standard error of that."""

    shift: float
    standard_error: float
    after_mean: float
    answers: int
    judge_shift: float | None = None  # the judge's mean trait score (0-100) after minus before

    @classmethod
    def between(
        cls, before: AnswerProjections, after: AnswerProjections, judge_shift: float | None = None
    ) -> Shift:
        """The shift from `before` to `after` (the same questions, answered by two models)."""
        return cls(
            trait_shift(before, after),
            shift_standard_error(before, after),
            after.mean,
            len(after.projections),
            judge_shift,
        )


@dataclass
class TrainingRun:
    """One finetune: a training set, a steering coefficient, and what it did to the model."""

    training_set: str
    steer_coef: float
    steer_trait: str | None  # None when not steered
    shifts: dict[str, Shift]
    samples: int  # trained on; the rest had no response token within max_tokens
    skipped: int
    steps: int
    first_loss: float
    last_loss: float
    seconds: float
    example_answer: str  # the trained model's answer to the first question of the first trait
    saved_to: str | None = None  # where the trained model (or LoRA adapter) was saved


@dataclass
class ValidationResult:
    """A finished validation; `to_json` is what validate.json holds."""

    traits: tuple[str, ...]
    settings: ValidateSettings
    training_sets: list[TrainingSet]
    baseline: dict[str, AnswerProjections]
    runs: list[TrainingRun]
    score: str = "delta"
    judge: str | None = None  # the judge's name, when one scored the answers
    baseline_judge: dict[str, float | None] = field(default_factory=dict)
    model: ModelIdentity | None = None
    notes: list[str] = field(default_factory=list)
    command: str = ""

    def unsteered(self) -> list[TrainingRun]:
        return [run for run in self.runs if run.steer_coef == 0]

    def correlation(self) -> dict[str, float | None]:
        """Per trait, Pearson r between the training sets' dataset-level score and the
        measured shift of the unsteered runs (None with fewer than 3 sets or no spread)."""
        scores = {ts.name: ts.scores for ts in self.training_sets}
        found: dict[str, float | None] = {}
        for trait in self.traits:
            pairs = [
                (scores[run.training_set].get(trait, math.nan), run.shifts[trait].shift)
                for run in self.unsteered()
            ]
            pairs = [(x, y) for x, y in pairs if math.isfinite(x) and math.isfinite(y)]
            found[trait] = pearson_r(pairs)
        return found

    def ordering(self) -> dict[str, dict[str, Any]]:
        """Per trait that ranked a top and a bottom subset (with the random one): the unsteered
        shifts of top, random and bottom, and whether top > random > bottom (None when a shift
        could not be measured)."""
        shifts = {run.training_set: run.shifts for run in self.unsteered()}
        found: dict[str, dict[str, Any]] = {}
        for trait in self.traits:
            names = [f"top-{trait}", "random", f"bottom-{trait}"]
            if all(name in shifts for name in names):
                values = [shifts[name][trait].shift for name in names]
                found[trait] = {
                    "shifts": dict(zip(names, values, strict=True)),
                    "holds": values[0] > values[1] > values[2]
                    if all(math.isfinite(v) for v in values)
                    else None,
                }
        return found

    def to_json(self) -> dict[str, Any]:
        import transformers

        from screener import __version__

        correlation = self.correlation()
        document = {
            "traits": list(self.traits),
            "score": self.score,
            "settings": self.settings.as_dict(),
            "judge": self.judge,
            "model": {} if self.model is None else asdict(self.model),
            "baseline": baseline_json(self.baseline, self.baseline_judge),
            "training_sets": [
                {
                    "name": ts.name,
                    "origin": ts.origin,
                    "samples": len(ts.samples),
                    "rejected_rows": ts.rejected,
                    "dataset_" + self.score: ts.scores,
                    "ids": ts.ids,
                }
                for ts in self.training_sets
            ],
            "runs": [
                {
                    "training_set": run.training_set,
                    "steer_coef": run.steer_coef,
                    "steer_trait": run.steer_trait,
                    "samples_trained": run.samples,
                    "samples_skipped": run.skipped,
                    "shift": {trait: asdict(shift) for trait, shift in run.shifts.items()},
                    "steps": run.steps,
                    "first_loss": run.first_loss,
                    "last_loss": run.last_loss,
                    "seconds": run.seconds,
                    "example_answer": run.example_answer,
                    **({"saved_to": run.saved_to} if run.saved_to else {}),
                }
                for run in self.runs
            ],
            "pearson_r": correlation,
            "ordering": self.ordering(),
            "notes": self.notes,
            "versions": {
                "screener": __version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
            "command": self.command,
        }
        return without_nan(document)


def baseline_json(
    baseline: dict[str, AnswerProjections], judged: dict[str, float | None]
) -> dict[str, dict[str, Any]]:
    """The untouched (or base) model's measurement per trait, as the JSON files record it."""
    return {
        trait: {
            "mean": answers.mean,
            "standard_error": answers.standard_error,
            "answers": len(answers.projections),
            "judge_mean": judged.get(trait),
        }
        for trait, answers in baseline.items()
    }


def without_nan(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [without_nan(item) for item in value]
    return value


def pearson_r(pairs: Sequence[tuple[float, float]]) -> float | None:
    """Pearson correlation of (x, y) pairs; None with fewer than 3 or when x or y is constant."""
    if len(pairs) < 3:
        return None
    x, y = (np.asarray(values, dtype=np.float64) for values in zip(*pairs, strict=True))
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def write_validation(result: ValidationResult, run_dir: Path) -> list[Path]:
    """validate.json and validate.png (ΔP against the measured shift, one panel per trait)."""
    from screener.report.plots import validation_plot

    document = result.to_json()
    json_path = run_dir / VALIDATE_JSON
    write_text_atomic(
        json_path, json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    )
    plot_path = run_dir / VALIDATE_PLOT
    with atomic_path(plot_path) as temporary:
        temporary.write_bytes(validation_plot(document))
    add_to_manifest(run_dir, json_path, plot_path)
    return [json_path, plot_path]
