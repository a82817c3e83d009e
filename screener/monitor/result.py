"""What `screener monitor checkpoints` found: per checkpoint and trait the drift from the base
model, its bounds, and the files written (monitor.json, monitor.png, monitor.html).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from screener.errors import ConfigError
from screener.generate import GenerationSettings
from screener.model import ModelIdentity
from screener.run_directory import staged_run, write_manifest
from screener.validation.result import Shift, baseline_json, without_nan
from screener.validation.shift import AnswerProjections

MONITOR_JSON = "monitor.json"
MONITOR_PLOT = "monitor.png"
MONITOR_HTML = "monitor.html"
# A bound is exceeded when the drift is above it with this one-sided confidence, so that noise
# in a checkpoint that did not move rarely stops a release (the gate judges flag rates alike).
BOUND_CONFIDENCE = 0.95
_Z_ONE_SIDED = 1.6448536269514722  # the standard normal's 95th percentile


@dataclass(frozen=True)
class DriftBound:
    """`--fail-above TRAIT=VALUE`: a checkpoint whose drift for TRAIT is above VALUE fails."""

    trait: str
    value: float

    @classmethod
    def parse(cls, text: str) -> DriftBound:
        trait, sep, value = text.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not trait.strip() or not math.isfinite(number):
            raise ConfigError(f"--fail-above {text!r}: expected TRAIT=NUMBER, such as evil=5")
        return cls(trait.strip(), number)

    def lower_bound(self, shift: Shift) -> float:
        """The drift's one-sided lower confidence bound (the drift itself without an error)."""
        error = shift.standard_error
        return shift.shift - _Z_ONE_SIDED * error if math.isfinite(error) else shift.shift

    def exceeded_by(self, shift: Shift) -> bool:
        return math.isfinite(shift.shift) and self.lower_bound(shift) > self.value


def check_bounds(bounds: Sequence[DriftBound], traits: Sequence[str]) -> None:
    """Refuse a bound on a trait that is not measured."""
    for bound in bounds:
        if bound.trait not in traits:
            raise ConfigError(
                f"--fail-above {bound.trait}: not measured (traits: {', '.join(traits)})"
            )


@dataclass(frozen=True)
class CheckpointDrift:
    """One checkpoint's drift from the base model, per trait."""

    name: str
    kind: str  # `adapter` or `model`
    shifts: dict[str, Shift]
    example_answer: str  # its answer to the first question of the first trait


@dataclass
class MonitorResult:
    """A finished `monitor checkpoints`; `to_json` is what monitor.json holds."""

    base: ModelIdentity
    traits: tuple[str, ...]
    questions: dict[str, int]  # per trait, how many held-out questions were asked
    generation: GenerationSettings
    baseline: dict[str, AnswerProjections]
    checkpoints: list[CheckpointDrift] = field(default_factory=list)
    judge: str | None = None
    baseline_judge: dict[str, float | None] = field(default_factory=dict)
    command: str = ""

    def failures(self, bounds: list[DriftBound]) -> list[str]:
        """One line per (checkpoint, bound) whose drift is above the bound."""
        check_bounds(bounds, self.traits)
        return [
            f"{checkpoint.name}: {bound.trait} drift {shift.shift:+.2f} ± "
            f"{shift.standard_error:.2f} is above {bound.value:g} "
            f"(lower {BOUND_CONFIDENCE:.0%} bound {bound.lower_bound(shift):+.2f})"
            for checkpoint in self.checkpoints
            for bound in bounds
            if bound.exceeded_by(shift := checkpoint.shifts[bound.trait])
        ]

    def table(self) -> str:
        """The drift table printed on stdout: a row per checkpoint, a column per trait."""
        width = max([len("checkpoint"), *(len(c.name) for c in self.checkpoints)])
        head = f"{'checkpoint':<{width}}  " + "  ".join(f"{t:>18}" for t in self.traits)
        lines = [head, f"{'(base mean)':<{width}}  " + "  ".join(
            f"{self.baseline[t].mean:>18.2f}" for t in self.traits
        )]  # fmt: skip
        for checkpoint in self.checkpoints:
            cells = [
                f"{s.shift:+.2f} ± {s.standard_error:.2f}"
                for s in (checkpoint.shifts[t] for t in self.traits)
            ]
            lines.append(f"{checkpoint.name:<{width}}  " + "  ".join(f"{c:>18}" for c in cells))
        return "\n".join(lines)

    def to_json(self, bounds: list[DriftBound] | None = None) -> dict[str, Any]:
        from screener import __version__

        document = {
            "base": asdict(self.base),
            "traits": list(self.traits),
            "questions": self.questions,
            "generation": self.generation.as_dict(),
            "judge": self.judge,
            "baseline": baseline_json(self.baseline, self.baseline_judge),
            "checkpoints": [
                {
                    "name": checkpoint.name,
                    "kind": checkpoint.kind,
                    "drift": {trait: asdict(shift) for trait, shift in checkpoint.shifts.items()},
                    "example_answer": checkpoint.example_answer,
                }
                for checkpoint in self.checkpoints
            ],
            "bounds": {
                "confidence": BOUND_CONFIDENCE,
                "fail_above": {bound.trait: bound.value for bound in bounds or []},
                "failures": self.failures(bounds or []),
            },
            "screener_version": __version__,
            "command": self.command,
        }
        return without_nan(document)


def write_monitor(result: MonitorResult, out: Path, bounds: list[DriftBound]) -> list[Path]:
    """monitor.json, monitor.png (drift against checkpoint) and monitor.html, replacing `out`
    whole (check it first with `run_directory.check_out_dir`)."""
    from screener.report.monitor import drift_plot, render_monitor

    document = result.to_json(bounds)
    plot = drift_plot(document)
    names = [MONITOR_JSON, MONITOR_PLOT, MONITOR_HTML]
    with staged_run(out) as staging:
        text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        (staging / MONITOR_JSON).write_text(text, encoding="utf-8")
        (staging / MONITOR_PLOT).write_bytes(plot)
        (staging / MONITOR_HTML).write_text(render_monitor(document, plot), encoding="utf-8")
        write_manifest(staging, names)
    return [out / name for name in names]
