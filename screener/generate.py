"""The target model's own answers to chat prompts, batched by a token budget.

Prompts are rendered with the model's chat template (`add_generation_prompt=True`) and
batched longest first under a KV-cache token budget and a row limit (`batch_plan.py`). Each
batch goes through our own decode loop (`decoding.decode_batch`), where finished rows leave
the batch.

Greedy when temperature is 0. Sampled answers draw from a generator seeded by `seed` and the
prompt's tokens, so a prompt gets the same answer whatever else is in the run.

If the model's generation config asks for a logits processor (a repetition penalty, say),
transformers' own `generate` writes the answers instead, over the same batches, so the model
answers as its authors configured it.

    texts = generate_responses(loaded, [(Message("user", "Hi"),)], GenerationSettings())
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from screener.batch_plan import BatchBudget, default_budget, plan_batches
from screener.decoding import decode_batch, left_padded
from screener.errors import ConfigError
from screener.model import LoadedModel, dtype_name
from screener.records import Message
from screener.render import Renderer

Decoder = Literal["auto", "screener", "transformers"]
# Generation-config values under which greedy decoding is plain argmax; any other value means
# transformers' `generate` must write the answers.
_PLAIN_DECODING = {
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,),
}


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


def needs_transformers_generate(model: nn.Module) -> list[str]:
    """The generation-config settings of `model` that our decode loop does not apply."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return []
    return [
        name for name, plain in _PLAIN_DECODING.items() if getattr(config, name, None) not in plain
    ]


def stop_token_ids(loaded: LoadedModel) -> frozenset[int]:
    """The tokens that end an answer: the generation config's end-of-sequence ids and the
    tokenizer's (chat models end a turn with the tokenizer's, which some generation configs
    leave out)."""
    config = getattr(loaded.model, "generation_config", None)
    stops: set[int] = set()
    for found in (getattr(config, "eos_token_id", None), loaded.tokenizer.eos_token_id):
        if isinstance(found, int):
            stops.add(found)
        elif found is not None:
            stops.update(int(t) for t in found)
    return frozenset(stops)


def sampling_seeds(seed: int, prompts: Sequence[Sequence[int]]) -> list[int]:
    """The generator seed of each sampled answer: from the run's seed, the prompt's tokens and
    how many times the same prompt came before (rollouts of one prompt differ)."""
    seen: dict[tuple[int, ...], int] = {}
    seeds = []
    for prompt in prompts:
        occurrence = seen[tuple(prompt)] = seen.get(tuple(prompt), -1) + 1
        text = f"{seed}:{occurrence}:{list(prompt)}"
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        seeds.append(int.from_bytes(digest, "little") & (2**63 - 1))
    return seeds


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


def describe_plan(
    loaded: LoadedModel, budget: BatchBudget, prompts: int, batches: int, decoder: str
) -> str:
    """One line saying how the answers are written: decoder, dtype, device and batch plan."""
    return (
        f"base responses: {prompts} prompts in {batches} batches (at most {budget.max_rows} rows, "
        f"{budget.max_tokens} cached tokens each), {decoder} decoder, "
        f"{dtype_name(loaded.dtype)}, {loaded.device}"
    )


def generate_token_ids(
    loaded: LoadedModel,
    prompts: Sequence[tuple[Message, ...]],
    settings: GenerationSettings,
    *,
    budget: BatchBudget | None = None,
    on_batch: Callable[[list[int], list[list[int]]], None] | None = None,
    describe: Callable[[str], None] | None = None,
    decoder: Decoder = "auto",
) -> list[list[int]]:
    """The new token ids of the model's answer to each prompt, in prompt order, without the
    token that ended it.

    budget: how prompts are batched (None: `default_budget` for the model's device).
    decoder: `screener` (our decode loop), `transformers` (its `generate`), or `auto`: ours
        unless the model's generation config asks for a logits processor.
    on_batch(indices, token_ids) is called as each batch finishes; describe(line) once, with
    the plan, before the first batch.
    """
    renderer = Renderer(loaded.tokenizer)
    tokenizer = loaded.tokenizer
    encoded = [renderer.prompt_ids(prompt) for prompt in prompts]
    budget = budget or default_budget(loaded)
    batches = plan_batches([len(e) for e in encoded], settings.max_new_tokens, budget)
    if decoder == "auto":
        decoder = "transformers" if needs_transformers_generate(loaded.model) else "screener"
    if describe is not None:
        describe(describe_plan(loaded, budget, len(prompts), len(batches), decoder))
    pad_id = next(
        (int(t) for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0
    )
    write = _transformers_batch if decoder == "transformers" else _screener_batch
    seeds = sampling_seeds(settings.seed, encoded)
    answers: list[list[int]] = [[] for _ in prompts]
    with contiguous_head_input(loaded.model):
        for batch in batches:
            new_tokens = write(
                loaded, [encoded[i] for i in batch], [seeds[i] for i in batch], settings, pad_id
            )
            for index, tokens in zip(batch, new_tokens, strict=True):
                answers[index] = tokens
            if on_batch is not None:
                on_batch(batch, new_tokens)
    return answers


def generate_responses(
    loaded: LoadedModel,
    prompts: Sequence[tuple[Message, ...]],
    settings: GenerationSettings,
    *,
    budget: BatchBudget | None = None,
    progress: Callable[[int], None] | None = None,
    on_answer: Callable[[int, str], None] | None = None,
    describe: Callable[[str], None] | None = None,
    decoder: Decoder = "auto",
) -> list[str]:
    """The model's response text to each prompt, in prompt order (`generate_token_ids`,
    decoded without special tokens and stripped).

    progress(n) is called with the number of prompts finished after each batch, and
    on_answer(i, text) for each of its answers.
    """
    outputs: list[str] = [""] * len(prompts)
    done = 0

    def finished(batch: list[int], new_tokens: list[list[int]]) -> None:
        nonlocal done
        for index, tokens in zip(batch, new_tokens, strict=True):
            outputs[index] = answer_text(loaded, tokens)
            if on_answer is not None:
                on_answer(index, outputs[index])
        done += len(batch)
        if progress is not None:
            progress(done)

    generate_token_ids(
        loaded,
        prompts,
        settings,
        budget=budget,
        on_batch=finished,
        describe=describe,
        decoder=decoder,
    )
    return outputs


def answer_text(loaded: LoadedModel, tokens: Sequence[int]) -> str:
    """An answer's text as stored and scored: decoded without special tokens, stripped."""
    return str(loaded.tokenizer.decode(list(tokens), skip_special_tokens=True)).strip()


def _screener_batch(
    loaded: LoadedModel,
    prompts: list[list[int]],
    seeds: list[int],
    settings: GenerationSettings,
    pad_id: int,
) -> list[list[int]]:
    return decode_batch(
        loaded.model,
        prompts,
        max_new_tokens=settings.max_new_tokens,
        stop_ids=stop_token_ids(loaded),
        pad_id=pad_id,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seeds=seeds,
    )


def _transformers_batch(
    loaded: LoadedModel,
    prompts: list[list[int]],
    seeds: list[int],
    settings: GenerationSettings,
    pad_id: int,
) -> list[list[int]]:
    ids, mask, _ = left_padded(prompts, pad_id)
    width, stops = ids.shape[1], stop_token_ids(loaded)
    sampling: dict[str, Any] = {"do_sample": False}
    if settings.temperature > 0:
        torch.manual_seed(seeds[0])  # the batch's sample depends on the batch here
        sampling = {
            "do_sample": True,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "top_k": 0,
        }
    model: Any = loaded.model  # transformers' stubs type `generate` loosely
    with torch.inference_mode():
        generated = model.generate(
            input_ids=ids.to(loaded.device),
            attention_mask=mask.to(loaded.device),
            max_new_tokens=settings.max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=sorted(stops),
            **sampling,
        )
    answers = []
    for row in range(len(prompts)):
        tokens = generated[row, width:].tolist()
        end = next((i for i, token in enumerate(tokens) if token in stops), len(tokens))
        answers.append(tokens[:end])  # what follows the stop token is padding
    return answers
