"""When a conversation with a deployed model is flagged: the rule over its assistant turns.

Each assistant turn has a projection per trait: the mean activation of the turn's tokens at the
trait's layer, on the trait's unit vector. The reference is the model's own answers to the
calibration's ordinary prompts (the calibration's `answer` distribution): what the model says
when nothing pulls it toward a trait.

A baseline of conversations known to be ordinary (`baseline=`, `--baseline LOGS`: last week's
logs, say) replaces that reference: its assistant turns are the reference answers then, so the
cut is taken in the same kind of conversation as the logs.

A conversation is flagged for a trait when
- **above the cut:** one of its turns projects above the trait's cut. The cuts are one common
  percentile of the reference, chosen so that FAMILY_RATE (5%) of the reference answers are
  above the cut of at least one screened trait (as `screen` sets its default cuts); or
- **rising:** it has at least MIN_RISE_TURNS scored turns, and the least-squares line through
  their projections climbs by at least RISE_SD reference standard deviations from its first
  turn to its last.

The turn named for a flag is the first turn above the cut; for a rise, the first turn that
stands RISE_SD standard deviations above the conversation's first turn (the last turn when the
climb is gradual).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from screener.errors import ConfigError
from screener.screening.calibration import ANSWER_KIND, Calibration, Distribution
from screener.screening.flags import FAMILY_RATE, family_percentile

RISE_SD = 1.0
MIN_RISE_TURNS = 3
CALIBRATION_REFERENCE = "projections of the model's own answers to the calibration prompts"


@dataclass(frozen=True)
class TurnScore:
    """One assistant turn's scores."""

    turn: int  # 1-based, among the conversation's assistant turns
    message: int  # the turn's index in the conversation's messages
    prompt_tokens: int
    response_tokens: int
    projection: dict[str, float]  # the turn's mean activation on each trait's vector
    prompt_last: dict[str, float]  # the last prompt token's, before the turn was written


@dataclass(frozen=True)
class ConversationFlag:
    """Why a conversation is flagged for one trait, and the turn that tripped it."""

    trait: str
    kind: Literal["above_cut", "rising"]
    turn: int
    value: float  # the turn's projection (above_cut) or the rise in reference sd (rising)
    bound: float  # the cut, or RISE_SD

    def reason(self) -> str:
        if self.kind == "above_cut":
            return (
                f"{self.trait}: turn {self.turn} projects {self.value:.2f}, above the cut "
                f"{self.bound:.2f}"
            )
        return (
            f"{self.trait}: rises {self.value:.2f} reference sd across the conversation (at "
            f"least {self.bound:g}), from turn {self.turn}"
        )


@dataclass(frozen=True)
class TurnRule:
    """The cuts and the rise threshold, per trait; recorded in the summary."""

    percentile: float  # the common reference percentile of the cuts
    cuts: dict[str, float]
    sd: dict[str, float]  # the reference answers' standard deviation
    reference: str = CALIBRATION_REFERENCE  # what the cuts were taken from
    rise_sd: float = RISE_SD
    min_rise_turns: int = MIN_RISE_TURNS

    @classmethod
    def from_references(cls, references: dict[str, Distribution], reference: str) -> TurnRule:
        """Cuts at the common percentile that leaves FAMILY_RATE of the reference above the cut
        of at least one trait (the distributions' values are aligned row by row)."""
        percentile = family_percentile(list(references.values()), FAMILY_RATE)
        return cls(
            percentile,
            {t: r.percentile(percentile) for t, r in references.items()},
            {t: r.std for t, r in references.items()},
            reference,
        )

    @classmethod
    def from_calibration(cls, calibration: Calibration, traits: Sequence[str]) -> TurnRule:
        missing = [t for t in traits if calibration.distribution(t, ANSWER_KIND) is None]
        if missing:
            raise ConfigError(
                f"calibration {calibration.path} has no distribution of the model's own answers "
                f"for {', '.join(missing)} (it was made by an older screener): run screener "
                "calibrate again"
            )
        references = {t: calibration.traits[t][ANSWER_KIND] for t in traits}
        return cls.from_references(references, CALIBRATION_REFERENCE)

    def flags(self, turns: Sequence[TurnScore]) -> list[ConversationFlag]:
        """The conversation's flags, in trait order (above the cut before rising)."""
        found = []
        for trait, cut in self.cuts.items():
            values = np.array([t.projection[trait] for t in turns], dtype=np.float64)
            above = np.flatnonzero(values > cut)
            if above.size:
                first = int(above[0])
                found.append(
                    ConversationFlag(trait, "above_cut", turns[first].turn, values[first], cut)
                )
            rise = self.rise(turns, trait)
            if rise is not None and rise >= self.rise_sd:
                climbed = np.flatnonzero(values - values[0] >= self.rise_sd * self.sd[trait])
                turn = turns[int(climbed[0])].turn if climbed.size else turns[-1].turn
                found.append(ConversationFlag(trait, "rising", turn, rise, self.rise_sd))
        return found

    def rise(self, turns: Sequence[TurnScore], trait: str) -> float | None:
        """How far the least-squares line through the turns' projections climbs from the
        first turn to the last, in reference sd (None for fewer than min_rise_turns turns)."""
        if len(turns) < self.min_rise_turns or not self.sd[trait] > 0:
            return None
        x = np.array([t.turn for t in turns], dtype=np.float64)
        y = np.array([t.projection[trait] for t in turns], dtype=np.float64)
        slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
        return slope * float(x[-1] - x[0]) / self.sd[trait]

    def as_json(self) -> dict[str, object]:
        return {
            "reference": self.reference,
            "percentile": self.percentile,
            "cuts": self.cuts,
            "reference_sd": self.sd,
            "rise_sd": self.rise_sd,
            "min_rise_turns": self.min_rise_turns,
        }
