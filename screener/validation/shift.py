"""Trait expression of a model, measured the way docs/method.md measures data: the model answers a
trait pack's held-out questions greedily, and each (question, answer) is projected onto the
trait's unit vector at its layer. The trait shift of a finetuned model is the mean projection of
its answers minus that of the untouched model's answers.

    before = answer_projections(base, pack.eval_questions, vector, layer, settings)
    after = answer_projections(trained, pack.eval_questions, vector, layer, settings)
    trait_shift(before, after)      # > 0: training moved the model toward the trait
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from screener.activations import ActivationCollector, TokenizedInput
from screener.batch_plan import default_budget
from screener.generate import GenerationSettings, generate_responses
from screener.model import LoadedModel
from screener.records import Message, Sample
from screener.render import RenderedSample, Renderer
from screener.vectors.separation import project


@dataclass(frozen=True)
class AnswerProjections:
    """A model's greedy answers to some questions and their projections (empty answers have
    none: they have no response token to average). With no projection at all the mean and its
    standard error are NaN: a model trained into silence cannot be measured."""

    answers: list[str]  # one per question, "" where the model said nothing
    projections: torch.Tensor  # (answered,) float32
    answered: tuple[int, ...]  # the question each projection belongs to

    @property
    def mean(self) -> float:
        return float(self.projections.mean()) if len(self.projections) else math.nan

    @property
    def standard_error(self) -> float:
        """Standard error of the mean (0 for a single answer, NaN for none)."""
        count = len(self.projections)
        if count < 2:
            return 0.0 if count else math.nan
        return float(self.projections.std(unbiased=True)) / math.sqrt(count)


def answer_projections(
    loaded: LoadedModel,
    questions: Sequence[str],
    vector: torch.Tensor,
    layer: int,
    generation: GenerationSettings,
    *,
    max_batch_rows: int | None = None,
) -> AnswerProjections:
    """Answer every question greedily, then project each answer's mean response activation at
    `layer` onto `vector` (normalised here)."""
    prompts = [(Message("user", question),) for question in questions]
    answers = generate_responses(
        loaded, prompts, generation, budget=default_budget(loaded, max_batch_rows)
    )
    renderer = Renderer(loaded.tokenizer)
    inputs, answered = [], []
    for index, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        if not answer:
            continue
        rendered = renderer.render(
            Sample(
                f"q{index}",
                "questions",
                index + 1,
                (*prompt, Message("assistant", answer)),
                {},
                "messages",
            )
        )
        if isinstance(rendered, RenderedSample):
            inputs.append(TokenizedInput(rendered.input_ids, rendered.response_start))
            answered.append(index)
    if not inputs:
        return AnswerProjections(answers, torch.zeros(0), ())
    activations = ActivationCollector(loaded.model, [layer]).collect(inputs).response_mean
    projections = project(activations, vector[None, :])[:, 0]
    return AnswerProjections(answers, projections, tuple(answered))


def trait_shift(before: AnswerProjections, after: AnswerProjections) -> float:
    """Mean projection after training minus before: how far the model moved toward the trait."""
    return after.mean - before.mean


def shift_standard_error(before: AnswerProjections, after: AnswerProjections) -> float:
    """Standard error of `trait_shift`, paired by question: the standard error of the mean of
    (after - before) over the questions answered both times (NaN for fewer than two).

    The same questions are asked before and after, so pairing removes the spread between
    questions, which would otherwise dominate the error."""
    position = {question: i for i, question in enumerate(before.answered)}
    pairs = [(position[q], i) for i, q in enumerate(after.answered) if q in position]
    if len(pairs) < 2:
        return math.nan
    differences = torch.stack([after.projections[a] - before.projections[b] for b, a in pairs])
    return float(differences.std(unbiased=True)) / math.sqrt(len(pairs))
