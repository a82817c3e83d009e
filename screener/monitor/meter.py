"""Measure a model's trait drift while it trains, without changing the training.

The model answers a small fixed set of each trait pack's held-out questions greedily; each answer
is projected onto the trait's unit vector at its layer (as `screener validate` measures a
finetuned model). The drift is the mean projection now minus the mean at the start, with a
standard error paired by question.

    meter = DriftMeter(tokenizer, load_vectors("builtin"), traits=["evil"])
    meter.start(model)                    # before the first step: the baseline
    for step, batch in enumerate(batches, 1):
        ...                               # forward, backward, optimizer step
        if step % 50 == 0:
            meter.measure(model)["evil"].shift    # > 0: moving toward the trait

A measurement leaves the training as it was: the model goes back to its train/eval mode, no
gradient is recorded, and the random number generators (torch's, CUDA's, Python's and
NumPy's) are restored, so a run with the meter trains the same weights as one without it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from screener.errors import ConfigError
from screener.generate import GenerationSettings
from screener.model import LoadedModel
from screener.traits import load_pack
from screener.validation.result import Shift
from screener.validation.shift import AnswerProjections
from screener.validation.training import DEFAULT_EVAL_TOKENS
from screener.vectors.store import VectorFile

DEFAULT_QUESTIONS = 10  # per trait: the first questions of the pack's held-out set


def trait_questions(traits: Sequence[str], count: int | None = None) -> dict[str, tuple[str, ...]]:
    """Per trait, the first `count` (all when None) of its pack's held-out questions."""
    if count is not None and count < 2:
        raise ConfigError("ask at least 2 questions per trait: the standard error needs two")
    return {trait: load_pack(trait).eval_questions[:count] for trait in traits}


def require_answers(measured: dict[str, AnswerProjections], who: str, advice: str) -> None:
    """Raise when `who` gave no usable answer to some trait's questions: no drift can be
    counted from a baseline without one."""
    silent = [trait for trait, found in measured.items() if not len(found.projections)]
    if silent:
        raise ConfigError(
            f"{who} gave no usable answer to the questions of {', '.join(silent)}: {advice}"
        )


def measured_model(model: nn.Module) -> nn.Module:
    """The causal language model inside a training wrapper (a peft model, DDP's `module`)."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    get_base = getattr(inner, "get_base_model", None)
    return get_base() if callable(get_base) else inner


@contextmanager
def untouched_training(model: nn.Module) -> Iterator[None]:
    """Measure inside this block: eval mode, no autograd, and every RNG state restored after."""
    was_training = model.training
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


class DriftMeter:
    """The drift of a model in training along the traits' vectors, since `start`."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        vectors: VectorFile,
        traits: Sequence[str] | None = None,
        *,
        questions: int | None = DEFAULT_QUESTIONS,
        eval_tokens: int = DEFAULT_EVAL_TOKENS,
    ) -> None:
        self.tokenizer = tokenizer
        self.vectors = vectors
        self.traits = tuple(traits or vectors.traits)
        for trait in self.traits:
            vectors.trait(trait)  # raises naming the traits the file has
        self.questions = trait_questions(self.traits, questions)
        self.generation = GenerationSettings(max_new_tokens=eval_tokens)
        self.baseline: dict[str, AnswerProjections] | None = None

    def answers(self, model: nn.Module) -> dict[str, AnswerProjections]:
        """Per trait, the model's answers to the questions and their projections, measured
        without touching the training."""
        from screener.validation.run import measure

        inner = measured_model(model)
        parameter = next(inner.parameters())
        loaded = LoadedModel(
            inner,  # type: ignore[arg-type]
            self.tokenizer,
            "training",
            "model in training",
            parameter.dtype,
            parameter.device,
            "training",
        )
        with untouched_training(model):
            return measure(loaded, self.vectors, self.traits, self.questions, self.generation)

    def start(self, model: nn.Module) -> dict[str, AnswerProjections]:
        """Measure the baseline the drift is counted from (before the first training step)."""
        baseline = self.answers(model)
        require_answers(
            baseline, "the model", "raise eval_tokens, or check the tokenizer's chat template"
        )
        self.baseline = baseline
        return baseline

    def measure(self, model: nn.Module) -> dict[str, Shift]:
        """Per trait, the drift since `start` (NaN where the model no longer answers)."""
        if self.baseline is None:
            raise ConfigError("call DriftMeter.start(model) before training, then measure")
        now = self.answers(model)
        return {trait: Shift.between(self.baseline[trait], now[trait]) for trait in self.traits}
