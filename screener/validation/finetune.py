"""Finetune a model on conversations: the loss covers the response tokens only, as in
supervised finetuning on chat data, and a fixed seed gives the same weights.

    settings = FinetuneSettings(learning_rate=1e-5, epochs=1)
    log = finetune(model, tokenizer, samples, settings)       # trains `model` in place
    log.losses                                                # one mean loss per step

Preventative steering (docs/method.md's mitigation): pass `steer=Steer(layer, vector, coef)` and
`coef` times the unit vector is added to hidden state `layer` during training only; the hook is
removed when training ends, also after an error, so the trained model runs unsteered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from screener.errors import ConfigError, ScreenerError
from screener.model import cpu_supports_bf16
from screener.records import Sample
from screener.render import RenderedSample, Renderer
from screener.vectors.steer import steering

IGNORE_INDEX = -100  # label of tokens the loss skips (the prompt, the padding)


@dataclass(frozen=True)
class FinetuneSettings:
    """How a model is trained; recorded with every result that depends on it."""

    learning_rate: float = 1e-5
    epochs: int = 1
    batch_size: int = 8
    max_tokens: int = 256  # longer conversations keep their first max_tokens tokens
    seed: int = 0
    weight_decay: float = 0.0
    # bf16 autocast over fp32 weights, applied only where the device computes bf16 natively
    # (CUDA with bf16, CPUs with AMX or AVX512-BF16): elsewhere bf16 is emulated and a training
    # step took many times longer than in fp32, so training runs in fp32 there
    autocast_bf16: bool = True

    def __post_init__(self) -> None:
        if self.learning_rate <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("learning_rate must be > 0, epochs and batch_size at least 1")
        if self.max_tokens < 2:
            raise ConfigError("max_tokens must be at least 2")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Steer:
    """Preventative steering: add `coef` times the unit `vector` at hidden state `layer`."""

    layer: int
    vector: torch.Tensor  # (d,)
    coef: float


@dataclass
class FinetuneLog:
    """What training did: the mean loss of every step, and how many samples it used."""

    losses: list[float] = field(default_factory=list)
    samples: int = 0
    skipped: int = 0  # samples with no response token left after truncation


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 in hardware."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and cpu_supports_bf16()


def training_examples(
    tokenizer: PreTrainedTokenizerBase, samples: Sequence[Sample], max_tokens: int
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """(input ids, labels) per sample: labels copy the response tokens, IGNORE_INDEX elsewhere."""
    renderer = Renderer(tokenizer)
    examples, skipped = [], 0
    for sample in samples:
        rendered = renderer.render(sample)
        if not isinstance(rendered, RenderedSample):
            raise ScreenerError(f"cannot train on {sample.source}:{sample.line}: {rendered.reason}")
        ids = list(rendered.input_ids[:max_tokens])
        start = rendered.response_start
        if start >= len(ids):
            skipped += 1
            continue
        labels = [IGNORE_INDEX] * start + ids[start:]
        examples.append((ids, labels))
    return examples, skipped


def padded_batch(
    examples: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input ids, attention mask, labels), each (batch, tokens)."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, (tokens, targets) in enumerate(examples):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
        labels[row, : len(targets)] = torch.tensor(targets)
    return ids, mask, labels


def finetune(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[Sample],
    settings: FinetuneSettings,
    *,
    steer: Steer | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> FinetuneLog:
    """Train `model` in place on `samples` with AdamW; progress(step, steps, loss) per step.

    The shuffling order comes from `settings.seed`, so the same model, samples and settings
    give the same weights.
    """
    examples, skipped = training_examples(tokenizer, samples, settings.max_tokens)
    if not examples:
        raise ScreenerError(
            f"nothing to train on: none of the {len(samples)} samples has a response token "
            f"within the first {settings.max_tokens} tokens; raise max_tokens (--max-tokens)"
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        model.requires_grad_(True)
        parameters = list(model.parameters())
    optimizer = torch.optim.AdamW(
        parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    order_generator = torch.Generator().manual_seed(settings.seed)
    device = next(model.parameters()).device
    steps_per_epoch = -(-len(examples) // settings.batch_size)
    total = steps_per_epoch * settings.epochs
    log = FinetuneLog(samples=len(examples), skipped=skipped)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if settings.autocast_bf16 and native_bf16(device)
        else contextlib.nullcontext()
    )
    hook = (
        steering(model, steer.layer, steer.vector, steer.coef)
        if steer is not None
        else contextlib.nullcontext()
    )
    was_training = model.training
    model.train()
    try:
        with hook:
            for _ in range(settings.epochs):
                order = torch.randperm(len(examples), generator=order_generator).tolist()
                for start in range(0, len(order), settings.batch_size):
                    chosen = [examples[i] for i in order[start : start + settings.batch_size]]
                    ids, mask, labels = (t.to(device) for t in padded_batch(chosen, pad_id))
                    with autocast:
                        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    log.losses.append(float(loss.detach()))
                    if progress is not None:
                        progress(len(log.losses), total, log.losses[-1])
    finally:
        model.train(was_training)
        optimizer.zero_grad(set_to_none=True)
    return log
