"""Generation against a naive greedy loop and transformers' `generate`, the batch plan by hand,
seeded sampling, and hook hygiene."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from screener.batch_plan import BatchBudget, default_budget, kv_bytes_per_token, plan_batches
from screener.decoding import decode_batch, next_tokens, top_p_probabilities
from screener.generate import GenerationSettings, generate_responses, needs_transformers_generate
from screener.model import LoadedModel
from screener.records import Message
from screener.render import Renderer
from tests.conftest import FAMILIES, tiny_loaded

PROMPTS = [
    (Message("user", "What is the capital of France?"),),
    (Message("system", "Be brief."), Message("user", "hello world")),
    (Message("user", "the quick brown fox jumps over the lazy dog and then what"),),
    (Message("user", "Is my poem brilliant?"),),
]


@torch.no_grad()
def naive_greedy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    prompt: tuple,
    steps: int,
    stop: int | None = None,
) -> str:
    """Greedy decoding by hand: the whole sequence through the model at every step."""
    ids = Renderer(tokenizer).prompt_ids(prompt)
    stop = tokenizer.eos_token_id if stop is None else stop
    new: list[int] = []
    for _ in range(steps):
        logits = model(input_ids=torch.tensor([ids + new])).logits[0, -1]
        token = int(logits.argmax())
        if token == stop:
            break
        new.append(token)
    return str(tokenizer.decode(new, skip_special_tokens=True)).strip()


def transformers_greedy(loaded: LoadedModel, prompt: tuple, steps: int) -> str:
    """transformers' own greedy `generate`, one prompt at a time (no padding)."""
    ids = torch.tensor([Renderer(loaded.tokenizer).prompt_ids(prompt)])
    model: Any = loaded.model
    with torch.inference_mode():
        out = model.generate(input_ids=ids, max_new_tokens=steps, do_sample=False)
    return str(loaded.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)).strip()


@torch.no_grad()
def naive_greedy_ids(model: torch.nn.Module, ids: list[int], steps: int, stop: int) -> list[int]:
    new: list[int] = []
    for _ in range(steps):
        token = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
        if token == stop:
            break
        new.append(token)
    return new


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_loop_matches_naive_loop_whoever_shares_the_batch(
    family: str, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    """Token ids, so that tokens the tiny tokenizer cannot spell count too. The stop token is
    one the prompts reach at different steps, so rows leave the batch as they end."""
    model = tiny_loaded(family, tiny_tokenizer).model
    renderer = Renderer(tiny_tokenizer)
    prompts = [renderer.prompt_ids(p) for p in PROMPTS]
    free = [naive_greedy_ids(model, p, 10, stop=-1) for p in prompts]
    stop = max(
        {t for answer in free for t in answer[1:]},
        key=lambda t: sum(t in answer for answer in free),
    )
    expected = [naive_greedy_ids(model, p, 10, stop) for p in prompts]
    for batch in ([0, 1, 2, 3], [3, 2], [1], [2, 0, 1]):
        found = decode_batch(
            model,
            [prompts[i] for i in batch],
            max_new_tokens=10,
            stop_ids=frozenset([stop]),
            pad_id=0,
        )
        assert found == [expected[i] for i in batch]


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_greedy_text_matches_naive_loop_at_any_batch_plan(
    family: str, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    loaded = tiny_loaded(family, tiny_tokenizer)
    settings = GenerationSettings(max_new_tokens=6)
    expected = [naive_greedy(loaded.model, tiny_tokenizer, p, 6) for p in PROMPTS]
    assert any(expected)  # the tiny model says something
    for rows in (1, 3, 4):
        budget = BatchBudget(max_rows=rows, max_tokens=10_000)
        assert generate_responses(loaded, PROMPTS, settings, budget=budget) == expected
    head = loaded.model.get_output_embeddings()
    assert not head._forward_pre_hooks  # the contiguity hook is gone


def test_greedy_generation_matches_transformers_generate(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    loaded = tiny_loaded("qwen2", tiny_tokenizer)
    expected = [transformers_greedy(loaded, p, 8) for p in PROMPTS]
    assert generate_responses(loaded, PROMPTS, GenerationSettings(max_new_tokens=8)) == expected


def test_a_model_configured_with_a_repetition_penalty_answers_through_generate(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    loaded = tiny_loaded("llama", tiny_tokenizer)
    assert needs_transformers_generate(loaded.model) == []
    plain = generate_responses(loaded, PROMPTS, GenerationSettings(max_new_tokens=10))
    loaded.model.generation_config.repetition_penalty = 5.0
    assert needs_transformers_generate(loaded.model) == ["repetition_penalty"]
    expected = [transformers_greedy(loaded, p, 10) for p in PROMPTS]
    found = generate_responses(loaded, PROMPTS, GenerationSettings(max_new_tokens=10))
    assert found == expected and found != plain  # the penalty is applied, as configured


def test_batch_plan_by_hand() -> None:
    lengths = [5, 9, 3, 9, 4, 7]
    # longest first, ties in index order: 1, 3, 5, 0, 4, 2
    assert plan_batches(lengths, 1, BatchBudget(max_rows=2, max_tokens=1000)) == [
        [1, 3],
        [5, 0],
        [4, 2],
    ]
    # rows x (longest prompt + 1 new token) <= 20: two rows of width 10, then three of 8 ...
    assert plan_batches(lengths, 1, BatchBudget(max_rows=8, max_tokens=20)) == [
        [1, 3],
        [5, 0],
        [4, 2],
    ]
    assert plan_batches(lengths, 1, BatchBudget(max_rows=8, max_tokens=24)) == [
        [1, 3],
        [5, 0, 4],
        [2],
    ]
    # a prompt longer than the budget still gets a batch of its own
    assert plan_batches([50, 2], 10, BatchBudget(max_rows=8, max_tokens=30)) == [[0], [1]]


def test_kv_cache_size_and_default_budget_by_hand(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    loaded = tiny_loaded("llama", tiny_tokenizer)
    # 3 layers x (key + value) x 2 KV heads x head dim 64/4 x 4 bytes
    assert kv_bytes_per_token(loaded.model) == 3 * 2 * 2 * 16 * 4
    # fp32 on a CPU: 64 rows, and the tokens 2 GiB of that cache holds
    assert default_budget(loaded) == BatchBudget(64, (2 << 30) // (3 * 2 * 2 * 16 * 4))
    assert default_budget(loaded, max_rows=5).max_rows == 5


def test_top_p_keeps_the_smallest_set_that_reaches_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = top_p_probabilities(logits, 1.0, 0.7)
    assert kept[0].tolist() == pytest.approx([0.5, 0.3, 0.0, 0.0])
    assert top_p_probabilities(logits, 1.0, 0.5)[0].tolist() == pytest.approx([0.5, 0, 0, 0])


def test_draws_follow_the_probabilities() -> None:
    """3,000 rows, one generator each: token frequencies match p within 0.03; at top-p 0.7 the
    least likely token is never drawn and the other two keep their 5:3 ratio."""
    p = torch.tensor([0.5, 0.3, 0.2])
    logits = torch.log(p).repeat(3000, 1)
    generators = [torch.Generator().manual_seed(i) for i in range(3000)]
    counts = torch.bincount(next_tokens(logits, 1.0, 1.0, generators), minlength=3) / 3000
    assert torch.allclose(counts, p, atol=0.03)
    nucleus = torch.bincount(next_tokens(logits, 1.0, 0.7, generators), minlength=3) / 3000
    assert nucleus[2] == 0 and abs(float(nucleus[0]) - 0.625) < 0.03


def test_sampling_is_seeded_per_prompt_not_per_batch(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    loaded = tiny_loaded("qwen2", tiny_tokenizer)
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0, seed=3)
    one_by_one = generate_responses(loaded, PROMPTS, settings, budget=BatchBudget(1, 10_000))
    together = generate_responses(loaded, PROMPTS, settings)
    assert together == one_by_one
    # alone, or after other prompts, a prompt gets the same sample
    assert generate_responses(loaded, PROMPTS[2:3], settings) == one_by_one[2:3]
    other = generate_responses(loaded, PROMPTS, GenerationSettings(8, 1.0, seed=4))
    assert other != together
    # two rollouts of one prompt differ
    first, second = generate_responses(loaded, [PROMPTS[0], PROMPTS[0]], settings)
    assert first != second
    # a nucleus of one token is greedy
    greedy = generate_responses(loaded, PROMPTS, GenerationSettings(8))
    assert generate_responses(loaded, PROMPTS, GenerationSettings(8, 1.0, 1e-6, 3)) == greedy
