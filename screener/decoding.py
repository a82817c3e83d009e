"""Our own decode loop: one batch of prompts, greedy or sampled, finished rows leave the batch.

transformers' `generate` keeps every row of a batch in every decode step until the last row
ends, and checks a general list of logits processors at each step. This loop does only what
base responses need:

- a left-padded prefill whose positions come from the attention mask (padding changes nothing),
  keeping only the last position's logits;
- one token per row per step: the argmax (greedy), or a draw at temperature/top-p from the
  row's own seeded generator, so a sampled answer does not depend on which prompts share its
  batch;
- rows that ended (an end-of-sequence token, or `max_new_tokens`) are dropped from the batch
  and its KV cache once a quarter of the rows have ended, so later steps cost less.

Greedy answers equal transformers' greedy `generate` token for token in fp32 (tested against
it and against a naive loop), as long as the model's generation config asks for no logits
processor; `generate.py` checks that and uses `generate` otherwise.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

# Drop ended rows from the batch once this fraction of the batch has ended: each drop copies
# the KV cache, so dropping every ended row at once would copy it up to once per row.
COMPACT_FRACTION = 0.25


def _cache_of(output: Any) -> Any:
    return output["cache"] if "cache" in output else output["past_key_values"]


def left_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Token ids, attention mask and position ids of `prompts` padded on the left."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, tokens in enumerate(prompts):
        ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
        mask[row, width - len(tokens) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def top_p_probabilities(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Softmax at `temperature`, keeping the smallest set of most likely tokens whose mass
    reaches `top_p` (at least one); the others are zeroed, the kept ones not rescaled (a draw
    needs only their proportions)."""
    probabilities = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1:
        return probabilities
    ordered, order = probabilities.sort(dim=-1, descending=True)
    mass_before = ordered.cumsum(dim=-1) - ordered
    ordered = ordered.masked_fill(mass_before >= top_p, 0.0)
    return torch.zeros_like(probabilities).scatter(-1, order, ordered)


def next_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    generators: Sequence[torch.Generator] | None,
) -> torch.Tensor:
    """Each row's next token: the argmax when `generators` is None, else a draw at
    temperature/top-p from the row's own generator."""
    if generators is None:
        return logits.argmax(dim=-1).cpu()
    probabilities = top_p_probabilities(logits, temperature, top_p).cpu()
    # One exponential race per row from the row's own generator: argmax(p / E) with E ~ Exp(1)
    # draws a token with probability p.
    tokens = [
        int((row / torch.empty_like(row).exponential_(generator=generator)).argmax())
        for row, generator in zip(probabilities, generators, strict=True)
    ]
    return torch.tensor(tokens, dtype=torch.long)


@torch.inference_mode()
def decode_batch(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: frozenset[int],
    pad_id: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seeds: Sequence[int] | None = None,
) -> list[list[int]]:
    """The new tokens of each prompt (token ids), without the stop token that ended it.

    temperature 0 is greedy; otherwise `seeds` gives each row's generator seed."""
    device = next(model.parameters()).device
    ids, mask, positions = left_padded(prompts, pad_id)
    generators = None
    if temperature > 0:
        if seeds is None or len(seeds) != len(prompts):
            raise ValueError("sampling needs one seed per prompt")
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    parameters = inspect.signature(model.forward).parameters
    cache_key = "cache" if "cache" in parameters else "past_key_values"
    # models with positions of their own (ALiBi) take none; the others need them from the mask
    takes_positions = "position_ids" in parameters
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    output = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        use_cache=True,
        **({"position_ids": positions.to(device)} if takes_positions else {}),
        **keep_last,
    )
    cache = _cache_of(output)
    rows = list(range(len(prompts)))  # the prompt each batch row belongs to
    ended = [False] * len(prompts)
    answers: list[list[int]] = [[] for _ in prompts]
    next_position = positions[:, -1:] + 1
    mask = mask.to(device)
    for step in range(max_new_tokens):
        tokens = next_tokens(output.logits[:, -1, :], temperature, top_p, generators)
        for row, token in zip(rows, tokens.tolist(), strict=True):
            if ended[row]:
                continue
            if token in stop_ids:
                ended[row] = True
            else:
                answers[row].append(token)
        done = sum(ended[row] for row in rows)
        if step == max_new_tokens - 1 or done == len(rows):
            break
        if done >= max(1, COMPACT_FRACTION * len(rows)):
            keep = [i for i, row in enumerate(rows) if not ended[row]]
            index = torch.tensor(keep, dtype=torch.long)
            cache.batch_select_indices(index.to(device))
            rows = [rows[i] for i in keep]
            tokens, mask, next_position = (
                tokens[index],
                mask[index.to(device)],
                next_position[index],
            )
            if generators is not None:
                generators = [generators[i] for i in keep]
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)
        output = model(
            input_ids=tokens[:, None].to(device),
            attention_mask=mask,
            use_cache=True,
            **({"position_ids": next_position.to(device)} if takes_positions else {}),
            **{cache_key: cache},
        )
        next_position = next_position + 1
    return answers
