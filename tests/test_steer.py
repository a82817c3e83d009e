"""Steering adds exactly coef * unit vector at the right hidden state, and leaves no hook."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import PreTrainedTokenizerFast

from screener.generate import GenerationSettings, generate_responses
from screener.layers import find_layout
from screener.records import Message
from screener.vectors import load_vectors
from screener.vectors.steer import steer_answer, steering
from tests.conftest import tiny_loaded, tiny_model
from tests.test_screen import tiny_vectors


def consumer(model: nn.Module, layer: int) -> nn.Module:
    """The module whose input is hidden_states[layer]: the next block, or the LM head."""
    blocks = find_layout(model).blocks
    return blocks[layer] if layer < len(blocks) else model.get_output_embeddings()


def received(model: nn.Module, layer: int, ids: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []

    def grab(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append((args[0] if args else kwargs["hidden_states"]).clone())

    handle = consumer(model, layer).register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_steering_shifts_exactly_the_chosen_hidden_state(family: str, layer: int) -> None:
    model = tiny_model(family)
    ids = torch.tensor([[5, 9, 14, 30, 7]])
    vector = torch.randn(64)
    plain = received(model, layer, ids)
    with steering(model, layer, vector, coef=3.0):
        steered = received(model, layer, ids)
    torch.testing.assert_close(steered, plain + 3.0 * vector / vector.norm(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        with steering(model, layer, vector, coef=3.0):
            steered_logits = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
        fresh = tiny_model(family)(input_ids=ids).logits
    assert not torch.allclose(steered_logits, fresh)
    torch.testing.assert_close(after, fresh)  # the hook is gone: same as an untouched copy
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_steer_answer_is_greedy_generation_with_and_without_the_hook(
    tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    loaded = tiny_loaded("llama", tiny_tokenizer)
    vectors = tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    question, settings = "Is my poem brilliant?", GenerationSettings(max_new_tokens=6)
    prompt = [(Message("user", question),)]
    trait = load_vectors(vectors).trait("evil")
    [plain] = generate_responses(loaded, prompt, settings)
    with steering(loaded.model, trait.chosen_layer, trait.vectors[trait.chosen_layer], 8.0):
        [steered] = generate_responses(loaded, prompt, settings)
    answers = steer_answer(question, "evil", 8.0, model=loaded, vectors=vectors, max_new_tokens=6)
    assert (answers.plain, answers.steered, answers.layer) == (plain, steered, trait.chosen_layer)
    # the hook is gone afterwards, and a zero coefficient changes nothing
    assert steer_answer(question, "evil", 0.0, model=loaded, vectors=vectors, max_new_tokens=6) == (
        replace(answers, coef=0.0, steered=plain)
    )
