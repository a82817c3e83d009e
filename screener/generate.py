"""Batched text generation from chat prompts with the target model.

Prompts are rendered with the model's chat template (`add_generation_prompt=True`), sorted by
length and generated in left-padded batches with the KV cache. Greedy when temperature is 0;
otherwise sampled with a seeded generator, so a run is reproducible for the same batch size.

    texts = generate_responses(loaded, [(Message("user", "Hi"),)], GenerationSettings())
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from screener.errors import ConfigError
from screener.model import LoadedModel
from screener.records import Message
from screener.render import Renderer


@dataclass(frozen=True)
class GenerationSettings:
    """How responses are generated; recorded with every result that depends on them."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("temperature must be >= 0 and top_p in (0, 1]")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def contiguous_head_input(model: nn.Module) -> Iterator[None]:
    """Make the LM head's input contiguous while generating.

    During decoding transformers feeds the head a strided (batch, 1, d) slice; on CPU torch then
    multiplies it through a batched copy of the whole output embedding, which made each step
    ~3x slower with the embedded model (measured). The copy changes no value.
    """
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, nn.Module):
        yield
        return
    handle = head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))
    try:
        yield
    finally:
        handle.remove()


def generate_responses(
    loaded: LoadedModel,
    prompts: Sequence[tuple[Message, ...]],
    settings: GenerationSettings,
    *,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """The model's response text to each prompt, in prompt order.

    progress(n) is called with the number of prompts finished after each batch.
    """
    renderer = Renderer(loaded.tokenizer)
    tokenizer = loaded.tokenizer
    encoded = [renderer.prompt_ids(prompt) for prompt in prompts]
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    outputs: list[str] = [""] * len(prompts)
    generator_seed = settings.seed
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id if pad_id is not None else 0, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            tokens = encoded[index]
            ids[row, width - len(tokens) :] = torch.tensor(tokens)
            mask[row, width - len(tokens) :] = 1
        sampling: dict[str, Any] = {"do_sample": False}
        if settings.temperature > 0:
            torch.manual_seed(generator_seed + start)
            sampling = {
                "do_sample": True,
                "temperature": settings.temperature,
                "top_p": settings.top_p,
                "top_k": 0,
            }
        model: Any = loaded.model  # transformers' stubs type `generate` loosely
        with torch.inference_mode(), contiguous_head_input(model):
            generated = model.generate(
                input_ids=ids.to(loaded.device),
                attention_mask=mask.to(loaded.device),
                max_new_tokens=settings.max_new_tokens,
                pad_token_id=pad_id,
                **sampling,
            )
        for row, index in enumerate(batch):
            new_tokens = generated[row, width:]
            outputs[index] = str(tokenizer.decode(new_tokens, skip_special_tokens=True)).strip()
        if progress is not None:
            progress(min(start + batch_size, len(order)))
    return outputs
