"""A transformers `TrainerCallback` that measures trait drift every N training steps.

    drift = DriftCallback(tokenizer, load_vectors("builtin"), traits=["evil"], every=50,
                          stop_above={"evil": 15.0})
    trainer = Trainer(model=model, args=args, train_dataset=data)
    drift.attach(trainer)       # first among the callbacks, so reporters see its figures
    trainer.train()
    drift.history               # [DriftPoint(step=0, ...), DriftPoint(step=50, ...), ...]

The baseline is measured when training begins; then every `every` steps (and at the last step)
the meter measures again (`screener.monitor.meter`). The figures go into the Trainer's own logs
as `drift/<trait>` and `drift/<trait>_se`, so every reporter the run has configured (TensorBoard,
W&B, the console) shows them, and into `state.log_history`. Reporters read a log entry in
callback order, so the callback must come before them: `attach` puts it first. Passed in
`Trainer(callbacks=[...])` it runs after the reporters, and the figures reach only
`state.log_history` and `history`.

With `stop_above`, training stops at the first measurement where a trait's drift is above its
bound. Measuring does not change the training (see `DriftMeter`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase, TrainerCallback

from screener.errors import ConfigError
from screener.monitor.meter import DEFAULT_QUESTIONS, DriftMeter
from screener.validation.result import Shift
from screener.validation.training import DEFAULT_EVAL_TOKENS
from screener.vectors.store import VectorFile

LOG_PREFIX = "drift/"


@dataclass(frozen=True)
class DriftPoint:
    """The drift measured at one training step."""

    step: int
    shifts: dict[str, Shift]

    def logs(self) -> dict[str, float]:
        """The figures as the Trainer logs them."""
        found: dict[str, float] = {}
        for trait, shift in self.shifts.items():
            found[f"{LOG_PREFIX}{trait}"] = shift.shift
            found[f"{LOG_PREFIX}{trait}_se"] = shift.standard_error
        return found


class DriftCallback(TrainerCallback):
    """Measure trait drift every `every` steps during `Trainer.train()`; see the module doc."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        vectors: VectorFile,
        traits: Sequence[str] | None = None,
        *,
        every: int = 50,
        questions: int | None = DEFAULT_QUESTIONS,
        eval_tokens: int = DEFAULT_EVAL_TOKENS,
        stop_above: Mapping[str, float] | None = None,
    ) -> None:
        if every < 1:
            raise ConfigError("every must be at least 1 step")
        self.meter = DriftMeter(
            tokenizer, vectors, traits, questions=questions, eval_tokens=eval_tokens
        )
        self.every = every
        self.stop_above = dict(stop_above or {})
        for trait in self.stop_above:
            if trait not in self.meter.traits:
                raise ConfigError(
                    f"stop_above names {trait!r}, which is not measured "
                    f"({', '.join(self.meter.traits)})"
                )
        self.history: list[DriftPoint] = []
        self.stopped_by: str | None = None  # why training was stopped, if it was
        self._unlogged: DriftPoint | None = None

    def attach(self, trainer: Any) -> DriftCallback:
        """Put this callback first in `trainer`'s callbacks (before its reporters)."""
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        callbacks.insert(0, self)
        return self

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        baseline = self.meter.start(kwargs["model"])
        zero = {t: Shift(0.0, 0.0, b.mean, len(b.projections)) for t, b in baseline.items()}
        self.history = [DriftPoint(state.global_step, zero)]
        self.stopped_by = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step = state.global_step
        if step % self.every and step != state.max_steps:
            return
        point = DriftPoint(step, self.meter.measure(kwargs["model"]))
        self.history.append(point)
        self._unlogged = point
        control.should_log = True
        for trait, bound in self.stop_above.items():
            drift = point.shifts[trait].shift
            if drift > bound:
                self.stopped_by = f"step {step}: {trait} drift {drift:+.2f} above {bound:g}"
                control.should_training_stop = True
                break

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if self._unlogged is None or logs is None:
            return
        figures = self._unlogged.logs()
        logs.update(figures)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(figures)
        self._unlogged = None
