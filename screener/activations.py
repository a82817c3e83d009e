"""Collect per-sample residual-stream summaries at chosen layers, batched and hook-based.

For each input (token ids + index of the first response token) and each requested layer `l`
(docs/method.md numbering: row `l` is `hidden_states[l]`), the collector returns

- `response_mean[i, j]`: the mean of layer `layers[j]` over sample i's response tokens, and
- `last_prompt[i, j]`: the activation at sample i's last prompt token,

both float32 on the CPU. Inputs are sorted by length and packed into batches under a token
budget; padding (left or right) never changes a result: positions come from the attention mask
and reductions ignore pad rows. Hooks sit only on the modules that produce the requested layers,
live inside a context manager that always removes them, and the deepest one stops the forward
pass, so no later block and no LM head is computed.

    collector = ActivationCollector(model, layers=[10, 20])
    acts = collector.collect([TokenizedInput(ids, start), ...])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from screener.errors import ConfigError
from screener.layers import Tap, find_layout, resolve_layers, tap

PaddingSide = Literal["left", "right"]
# Padded tokens per forward pass. Measured on a 2-core AMX CPU with the embedded model, 4096
# beat 8192 by ~25% (the elementwise ops stay in cache); see benchmarks/bench_activations.py.
DEFAULT_BATCH_TOKENS = 4096


@dataclass(frozen=True)
class TokenizedInput:
    """What the collector needs of a sample: its token ids and where the response starts."""

    input_ids: Sequence[int]
    response_start: int


@dataclass
class Activations:
    """Collected summaries; row i belongs to input i, column j to `layers[j]`."""

    layers: list[int]
    response_mean: torch.Tensor  # (n, len(layers), d) float32
    last_prompt: torch.Tensor  # (n, len(layers), d) float32


class _StopForward(Exception):
    """Raised by the deepest hook: everything needed has been captured."""


def _hidden(value: Any) -> torch.Tensor:
    """Block outputs are a tensor or a tuple whose first element is the hidden state."""
    return value[0] if isinstance(value, (tuple, list)) else value


@contextmanager
def capture_hidden_states(
    taps: list[Tap], on_capture: Callable[[int, torch.Tensor], None]
) -> Iterator[None]:
    """Call `on_capture(layer, hidden)` for each tap during forward passes in this context.

    The tap of the deepest layer then raises `_StopForward`: nothing later is needed.
    Every hook is removed on exit, also when the forward pass raises.
    """
    deepest = max(where.layer for where in taps)
    handles = []

    def make_hook(layer: int, pre: bool) -> Callable[..., None]:
        stop = layer == deepest

        def hook(module: nn.Module, args: tuple[Any, ...], *rest: Any) -> None:
            if pre:
                kwargs = rest[0]
                hidden = args[0] if args else kwargs["hidden_states"]
            else:
                hidden = _hidden(rest[0])
            on_capture(layer, hidden)
            if stop:
                raise _StopForward

        return hook

    try:
        for where in taps:
            hook = make_hook(where.layer, where.pre)
            if where.pre:
                handles.append(where.module.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                handles.append(where.module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def plan_batches(
    lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int
) -> list[list[int]]:
    """Group input indices into length-sorted batches whose padded size fits the budget.

    Longest first, so an out-of-memory error shows up on the first batch. A single input longer
    than the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for index in order:
        current = batches[-1] if batches else None
        if (
            current is not None
            and len(current) < max_batch_size
            and (len(current) + 1) * lengths[current[0]] <= max_batch_tokens
        ):
            current.append(index)
        else:
            batches.append([index])
    return batches


class ActivationCollector:
    """Batched collector of response means and last-prompt activations at given layers.

    layers: hidden-state numbers 0..L (negative counts from the end).
    max_batch_tokens: budget for (batch size x longest sequence) per forward pass.
    padding_side: where pad tokens go; results do not depend on it.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[int],
        *,
        max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
        max_batch_size: int = 64,
        padding_side: PaddingSide = "right",
    ) -> None:
        if padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side must be left or right, not {padding_side!r}")
        if max_batch_tokens < 1 or max_batch_size < 1:
            raise ConfigError("max_batch_tokens and max_batch_size must be positive")
        self.model = model
        self.layout = find_layout(model)
        self.layers = resolve_layers(list(layers), self.layout.num_layers)
        self.taps = [tap(self.layout, layer) for layer in self.layers]
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.padding_side = padding_side

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def collect(self, inputs: Sequence[TokenizedInput]) -> Activations:
        """Summaries for every input, in input order."""
        for i, item in enumerate(inputs):
            if not 0 < item.response_start < len(item.input_ids):
                raise ConfigError(
                    f"input {i}: response_start {item.response_start} must leave at least one "
                    f"prompt and one response token in {len(item.input_ids)} tokens"
                )
        d = self.hidden_size
        shape = (len(inputs), len(self.layers), d)
        response_mean = torch.zeros(shape, dtype=torch.float32)
        last_prompt = torch.zeros(shape, dtype=torch.float32)
        lengths = [len(item.input_ids) for item in inputs]
        for batch in plan_batches(lengths, self.max_batch_tokens, self.max_batch_size):
            means, lasts = self._run_batch([inputs[i] for i in batch])
            response_mean[batch] = means
            last_prompt[batch] = lasts
        return Activations(list(self.layers), response_mean, last_prompt)

    @property
    def hidden_size(self) -> int:
        """d, the width of the residual stream (the text model's, for multimodal configs)."""
        config: Any = getattr(self.model, "config", None)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        size = getattr(text_config, "hidden_size", None) or getattr(text_config, "n_embd", None)
        if not isinstance(size, int):
            raise ConfigError("cannot read the hidden size from the model config")
        return size

    @torch.inference_mode()
    def _run_batch(self, batch: list[TokenizedInput]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(item.input_ids) for item in batch)
        # Pads are masked out of attention and every reduction, so their token id is irrelevant.
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        response = torch.zeros((len(batch), width), dtype=torch.bool)
        last_index = torch.zeros(len(batch), dtype=torch.long)
        for row, item in enumerate(batch):
            n = len(item.input_ids)
            offset = width - n if self.padding_side == "left" else 0
            ids[row, offset : offset + n] = torch.as_tensor(item.input_ids, dtype=torch.long)
            attention[row, offset : offset + n] = 1
            response[row, offset + item.response_start : offset + n] = True
            last_index[row] = offset + item.response_start - 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        counts = response.sum(-1, keepdim=True).float()  # (batch, 1)

        device = self.device
        response_dev, last_dev, counts_dev = (
            response.to(device),
            last_index.to(device),
            counts.to(device),
        )
        captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        rows = torch.arange(len(batch), device=device)

        def reduce(layer: int, hidden: torch.Tensor) -> None:  # hidden: (batch, width, d)
            hidden = hidden.float()
            summed = torch.where(response_dev[..., None], hidden, 0.0).sum(1)
            captured[layer] = ((summed / counts_dev).cpu(), hidden[rows, last_dev].cpu())

        with (
            capture_hidden_states(self.taps, reduce),
            suppress(_StopForward),
        ):
            self.model(
                input_ids=ids.to(device),
                attention_mask=attention.to(device),
                position_ids=positions.to(device),
                use_cache=False,
            )
        missing = [layer for layer in self.layers if layer not in captured]
        if missing:
            raise ConfigError(f"the forward pass never reached layer(s) {missing}")
        means = torch.stack([captured[layer][0] for layer in self.layers], dim=1)
        lasts = torch.stack([captured[layer][1] for layer in self.layers], dim=1)
        return means, lasts
