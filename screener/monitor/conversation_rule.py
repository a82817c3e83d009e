"""When a conversation with a deployed model is flagged: the rule over its assistant turns.

Each assistant turn has a projection per trait: the mean activation of the turn's tokens at the
trait's layer, on the trait's unit vector. A conversation is flagged for a trait when
- **above the cut:** one of its turns projects above the trait's cut; or
- **rising:** it has at least MIN_RISE_TURNS scored turns, and the least-squares line through
  their projections climbs, from its first turn to its last, by more than the trait's rise bound
  (in reference standard deviations).

Where the cuts and bounds come from:
- **A baseline of ordinary conversations** (`baseline=`, `--baseline LOGS`: last week's logs,
  say), the better reference. The rule is set at the conversation level: each baseline
  conversation's highest turn and its rise are computed per trait, and the cuts and rise bounds
  are one common percentile of those, chosen so that FAMILY_RATE (5%) of the baseline
  conversations are flagged for at least one trait by either rule. A conversation of many turns
  has many chances to pass a turn-level cut; a cut on the highest turn of conversations like it
  already counts them.
- **The calibration** (no baseline): the model's own answers to the calibration's ordinary
  prompts (its `answer` distribution), what the model says when nothing pulls it toward a
  trait. Those are single answers, not conversations, so the cut is a turn-level one: the
  common percentile at which 5% of those answers pass the cut of at least one trait, and the
  rise bound is RISE_SD. A conversation of n turns has n chances, and turns of a conversation
  unlike the calibration prompts can sit above most of those answers (the run reports how far
  its turns sit from the reference), so this flags more than 5% of ordinary conversations.

The turn named for a flag is the first turn above the cut; for a rise, the turn that ends the
largest step up between consecutive turns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from screener.errors import ConfigError
from screener.screening.calibration import ANSWER_KIND, Calibration, Distribution
from screener.screening.flags import (
    FAMILY_RATE,
    DatasetShift,
    family_percentile,
    shared_percentile,
)

RISE_SD = 1.0
MIN_RISE_TURNS = 3
MIN_RISE_CONVERSATIONS = 20  # baseline conversations of MIN_RISE_TURNS turns a rise bound needs
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
    bound: float  # the cut, or the rise bound

    def reason(self) -> str:
        if self.kind == "above_cut":
            return (
                f"{self.trait}: turn {self.turn} projects {self.value:.2f}, above the cut "
                f"{self.bound:.2f}"
            )
        return (
            f"{self.trait}: rises {self.value:.2f} reference sd across the conversation, above "
            f"the bound {self.bound:.2f}, from turn {self.turn}"
        )


def least_squares_climb(turns: Sequence[TurnScore], trait: str) -> float:
    """How far the least-squares line through the turns' projections climbs from the first
    turn to the last (in projection units; at least two turns)."""
    x = np.array([t.turn for t in turns], dtype=np.float64)
    y = np.array([t.projection[trait] for t in turns], dtype=np.float64)
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    return slope * float(x[-1] - x[0])


@dataclass
class Moments:
    """Count, mean and spread of values seen one at a time (Welford's update, so constant values
    give a spread of exactly 0)."""

    count: int = 0
    mean: float = 0.0
    squares: float = 0.0  # sum of squared deviations from the mean

    def add(self, value: float) -> None:
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.squares += delta * (value - self.mean)

    @property
    def sd(self) -> float:
        """The population standard deviation."""
        return math.sqrt(self.squares / self.count) if self.count else math.nan

    @property
    def standard_error(self) -> float:
        """The mean's standard error, from the sample variance (NaN under two values)."""
        return (
            math.sqrt(self.squares / (self.count - 1) / self.count) if self.count > 1 else math.nan
        )


@dataclass
class ConversationMeans:
    """The moments, per trait, of each conversation's mean turn projection, accumulated as
    conversations stream past: a baseline's reference mean, and the logs' shift from the
    reference (`shifts`)."""

    traits: tuple[str, ...]
    means: dict[str, Moments] = field(default_factory=dict)  # of conversation means

    def add(self, turns: Sequence[TurnScore]) -> None:
        for trait in self.traits:
            mean = sum(t.projection[trait] for t in turns) / len(turns)
            self.means.setdefault(trait, Moments()).add(mean)

    def shifts(self, rule: ConversationRule) -> dict[str, DatasetShift]:
        """How far these conversations sit from the rule's reference, per trait with a
        non-constant reference (none before two conversations): their mean minus the
        reference's mean (of its answers, or of a baseline's conversation means), in reference
        sd. The 95% interval is normal, over conversations (turns of one conversation are not
        independent; conversations are), and counts the reference mean's own error."""
        found = {}
        for trait, moments in self.means.items():
            if moments.count < 2 or not rule.sd[trait] > 0:
                continue
            margin = 1.96 * math.hypot(moments.standard_error, rule.mean_error.get(trait, 0.0))
            found[trait] = DatasetShift(
                *(
                    (value - rule.mean[trait]) / rule.sd[trait]
                    for value in (moments.mean, moments.mean - margin, moments.mean + margin)
                )
            )
        return found


@dataclass
class BaselineConversations:
    """What the rule needs of a baseline, accumulated as its conversations stream past: per
    conversation and trait its highest turn and its least-squares climb (NaN under
    MIN_RISE_TURNS turns), the moments of all its turns and of its conversation means. A few
    floats per conversation stay in memory, not its turns."""

    traits: tuple[str, ...]
    count: int = 0
    turns: int = 0
    peaks: dict[str, list[float]] = field(default_factory=dict)
    climbs: dict[str, list[float]] = field(default_factory=dict)
    turn_moments: dict[str, Moments] = field(default_factory=dict)
    conversation_means: ConversationMeans = field(init=False)

    def __post_init__(self) -> None:
        self.conversation_means = ConversationMeans(self.traits)

    def add(self, turns: Sequence[TurnScore]) -> None:
        self.count += 1
        self.turns += len(turns)
        for trait in self.traits:
            values = [t.projection[trait] for t in turns]
            self.peaks.setdefault(trait, []).append(max(values))
            long_enough = len(turns) >= MIN_RISE_TURNS
            climb = least_squares_climb(turns, trait) if long_enough else math.nan
            self.climbs.setdefault(trait, []).append(climb)
            moments = self.turn_moments.setdefault(trait, Moments())
            for value in values:
                moments.add(value)
        self.conversation_means.add(turns)


def _at_least_flat(bound: float | None) -> float | None:
    """A rise bound is a climb: a conversation that falls never counts as rising (a higher bound
    flags fewer conversations, so the family rate still holds)."""
    return None if bound is None else max(bound, 0.0)


@dataclass(frozen=True)
class ConversationRule:
    """The cuts and rise bounds per trait; recorded in the summary."""

    percentile: float  # the common reference percentile of the cuts and rise bounds
    cuts: dict[str, float]
    mean: dict[str, float]  # the reference's mean turn (of conversation means for a baseline)
    sd: dict[str, float]  # the reference turns' standard deviation
    rise_bounds: dict[str, float | None]  # in reference sd; None: no rise is judged
    reference: str = CALIBRATION_REFERENCE  # what the cuts were taken from
    level: Literal["turn", "conversation"] = "turn"  # what FAMILY_RATE of the reference is
    mean_error: dict[str, float] = field(default_factory=dict)  # the mean's standard error

    @classmethod
    def from_answers(cls, references: dict[str, Distribution], reference: str) -> ConversationRule:
        """Turn-level cuts at the common percentile that leaves FAMILY_RATE of the reference
        answers above the cut of at least one trait (the distributions' values are aligned row
        by row); the rise bound is RISE_SD."""
        percentile = family_percentile(list(references.values()), FAMILY_RATE)
        return cls(
            percentile,
            {t: r.percentile(percentile) for t, r in references.items()},
            {t: r.mean for t, r in references.items()},
            {t: r.std for t, r in references.items()},
            dict.fromkeys(references, RISE_SD),
            reference,
            mean_error={t: r.std / math.sqrt(r.n) for t, r in references.items()},
        )

    @classmethod
    def from_calibration(cls, calibration: Calibration, traits: Sequence[str]) -> ConversationRule:
        missing = [t for t in traits if calibration.distribution(t, ANSWER_KIND) is None]
        if missing:
            raise ConfigError(
                f"calibration {calibration.path} has no distribution of the model's own answers "
                f"for {', '.join(missing)} (it was made by an older screener): run screener "
                "calibrate again"
            )
        references = {t: calibration.traits[t][ANSWER_KIND] for t in traits}
        return cls.from_answers(references, CALIBRATION_REFERENCE)

    @classmethod
    def from_baseline(cls, baseline: BaselineConversations, reference: str) -> ConversationRule:
        """Conversation-level cuts and rise bounds: one common percentile of the baseline
        conversations' highest turns and rises, at which FAMILY_RATE of the conversations are
        flagged for at least one trait by either rule."""
        sd = {t: baseline.turn_moments[t].sd for t in baseline.traits}
        statistics: dict[tuple[str, str], np.ndarray] = {}  # (trait, "peak" | "rise") -> values
        for trait in baseline.traits:
            statistics[trait, "peak"] = np.array(baseline.peaks[trait])
            climbs = np.array(baseline.climbs[trait])
            # a rise bound from a handful of long conversations would be noise: none is judged
            if sd[trait] > 0 and np.isfinite(climbs).sum() >= MIN_RISE_CONVERSATIONS:
                statistics[trait, "rise"] = climbs / sd[trait]
        references = {
            key: Distribution.of([float(v) for v in values[np.isfinite(values)]])
            for key, values in statistics.items()
        }
        matrix = np.array(list(statistics.values()))
        percentile = shared_percentile(list(references.values()), matrix, FAMILY_RATE)
        at = {key: found.percentile(percentile) for key, found in references.items()}
        return cls(
            percentile,
            {t: at[t, "peak"] for t in baseline.traits},
            {t: baseline.conversation_means.means[t].mean for t in baseline.traits},
            sd,
            {t: _at_least_flat(at.get((t, "rise"))) for t in baseline.traits},
            reference,
            level="conversation",
            mean_error={
                t: baseline.conversation_means.means[t].standard_error for t in baseline.traits
            },
        )

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
            rise, bound = self.rise(turns, trait), self.rise_bounds[trait]
            if rise is not None and bound is not None and rise > bound:
                step = int(np.argmax(np.diff(values)))  # the first of the largest steps up
                found.append(ConversationFlag(trait, "rising", turns[step + 1].turn, rise, bound))
        return found

    def rise(self, turns: Sequence[TurnScore], trait: str) -> float | None:
        """The least-squares climb in reference sd (None for fewer than MIN_RISE_TURNS turns or
        a constant reference)."""
        if len(turns) < MIN_RISE_TURNS or not self.sd[trait] > 0:
            return None
        return least_squares_climb(turns, trait) / self.sd[trait]

    def as_json(self) -> dict[str, object]:
        return {
            "reference": self.reference,
            "level": self.level,
            "percentile": self.percentile,
            "cuts": self.cuts,
            "reference_mean": self.mean,
            "reference_mean_error": self.mean_error,
            "reference_sd": self.sd,
            "rise_bounds_sd": self.rise_bounds,
            "min_rise_turns": MIN_RISE_TURNS,
        }


def shift_note(trait: str, shift: DatasetShift, rule: ConversationRule) -> str:
    """What an alarmed shift means, for the summary's notes and the CLI."""
    against = "the baseline's" if rule.level == "conversation" else "the model's own answers"
    sits = (
        f"{trait}: the logs' turns sit {shift.shift:+.2f} reference sd above {against} on "
        f"average (95% interval {shift.low:+.2f} to {shift.high:+.2f})"
    )
    if rule.level == "conversation":
        return (
            f"{sits}: the conversations as a whole lean toward {trait}, as if the model "
            "drifted since the baseline"
        )
    return (
        f"{sits}: the model drifted toward {trait}, or these conversations are unlike the "
        "calibration prompts and its flags mostly say so; a --baseline of ordinary "
        "conversations like these tells the two apart"
    )
