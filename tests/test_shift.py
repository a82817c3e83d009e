"""Trait shift: projections of a model's greedy answers, against a naive recomputation."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from screener.activations import TokenizedInput
from screener.generate import GenerationSettings
from screener.records import Message, Sample
from screener.render import RenderedSample, Renderer
from screener.validation.shift import (
    AnswerProjections,
    answer_projections,
    shift_standard_error,
    trait_shift,
)
from tests.conftest import tiny_loaded
from tests.reference import naive_collect
from tests.test_generate import naive_greedy

QUESTIONS = ["hello world", "the quick brown fox", "tell me a story", "dog"]  # the 1st: no answer


def test_answer_projections_equal_a_naive_recomputation(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    loaded = tiny_loaded("llama", tiny_tokenizer)
    vector = torch.linspace(-1.0, 2.0, loaded.model.config.hidden_size)
    found = answer_projections(loaded, QUESTIONS, vector, 2, GenerationSettings(max_new_tokens=5))

    answers = [
        naive_greedy(loaded.model, tiny_tokenizer, (Message("user", q),), 5) for q in QUESTIONS
    ]
    assert found.answers == answers
    assert found.answered == (1, 2, 3)
    assert answers[0] == "" and all(answers[1:]), "the tiny model's answers changed"
    renderer = Renderer(tiny_tokenizer)
    inputs = []
    for q, a in zip(QUESTIONS[1:], answers[1:], strict=True):  # an empty answer is skipped
        rendered = renderer.render(
            Sample("x", "t", 1, (Message("user", q), Message("assistant", a)), {}, "messages")
        )
        assert isinstance(rendered, RenderedSample)
        inputs.append(TokenizedInput(rendered.input_ids, rendered.response_start))
    with torch.no_grad():
        means, _ = naive_collect(loaded.model, inputs, [2])
    unit = vector / vector.norm()
    expected = torch.stack([means[i, 0] @ unit for i in range(len(inputs))])
    torch.testing.assert_close(found.projections, expected, rtol=1e-4, atol=1e-5)


def test_trait_shift_and_its_paired_standard_error_by_hand() -> None:
    # questions 0..3; before answered 0, 1, 3; after answered 1, 2, 3
    before = AnswerProjections(["a", "b", "", "d"], torch.tensor([1.0, 3.0, 5.0]), (0, 1, 3))
    after = AnswerProjections(["", "f", "g", "h"], torch.tensor([4.0, 6.0, 9.0]), (1, 2, 3))
    assert trait_shift(before, after) == pytest.approx(19 / 3 - 3)  # 6.333 - 3.0
    assert trait_shift(after, before) == pytest.approx(3 - 19 / 3)
    # paired on questions 1 and 3: differences 4 - 3 = 1 and 9 - 5 = 4; std 2.1213, / sqrt 2
    assert shift_standard_error(before, after) == pytest.approx(1.5)
    assert before.standard_error == pytest.approx(2.0 / 3**0.5)  # std 2 over 3 answers
    only_one = AnswerProjections(["", "x", "", ""], torch.tensor([2.0]), (1,))
    assert math.isnan(shift_standard_error(before, only_one))
    silent = AnswerProjections(["", "", "", ""], torch.zeros(0), ())
    assert math.isnan(silent.mean) and math.isnan(silent.standard_error)
