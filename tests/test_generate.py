"""Batched generation against a naive greedy loop, and hook hygiene."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerFast

from screener.generate import GenerationSettings, generate_responses
from screener.records import Message
from screener.render import Renderer
from tests.conftest import tiny_loaded

PROMPTS = [
    (Message("user", "What is the capital of France?"),),
    (Message("system", "Be brief."), Message("user", "hello world")),
    (Message("user", "the quick brown fox jumps over the lazy dog and then what"),),
    (Message("user", "Is my poem brilliant?"),),
]


@torch.no_grad()
def naive_greedy(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, prompt: tuple, steps: int
) -> str:
    ids = Renderer(tokenizer).prompt_ids(prompt)
    new: list[int] = []
    for _ in range(steps):
        logits = model(input_ids=torch.tensor([ids + new])).logits[0, -1]
        token = int(logits.argmax())
        if token == tokenizer.eos_token_id:
            break
        new.append(token)
    return str(tokenizer.decode(new, skip_special_tokens=True)).strip()


def test_greedy_generation_matches_naive_loop_at_any_batch_size(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    loaded = tiny_loaded("llama", tiny_tokenizer)
    settings = GenerationSettings(max_new_tokens=6)
    expected = [naive_greedy(loaded.model, tiny_tokenizer, p, 6) for p in PROMPTS]
    assert any(expected)  # the tiny model says something
    for batch_size in (1, 3, 4):
        assert generate_responses(loaded, PROMPTS, settings, batch_size=batch_size) == expected
    head = loaded.model.get_output_embeddings()
    assert not head._forward_pre_hooks  # the contiguity hook is gone


def test_sampling_is_reproducible_with_a_seed(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    loaded = tiny_loaded("qwen2", tiny_tokenizer)
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0, seed=3)
    first = generate_responses(loaded, PROMPTS, settings, batch_size=2)
    assert generate_responses(loaded, PROMPTS, settings, batch_size=2) == first
    other = generate_responses(loaded, PROMPTS, GenerationSettings(8, 1.0, seed=4), batch_size=2)
    assert other != first
