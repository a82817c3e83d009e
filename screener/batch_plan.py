"""How prompts are batched for generation: a token budget for the KV cache and a row limit.

Prompts are taken longest first. Consecutive prompts form a batch while its padded KV cache,
rows x (longest prompt + `max_new_tokens`) tokens, fits the budget and it has at most
`max_rows` rows: short prompts decode many at a time, long ones few, and each batch pads
little.

    batches = plan_batches([12, 40, 7], 128, default_budget(loaded))   # [[1, 0, 2]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from screener.errors import ConfigError
from screener.model import LoadedModel, cpu_supports_bf16

# Rows decoded together at most (benchmarks/bench_generate.py, embedded model, 2-core CPU).
# In bf16 on matrix units a row costs little, and 128 rows beat 64 by 14% on the 200 demo
# prompts. In fp32 a step's cost grows nearly with its rows, so bigger batches mostly add
# padding: with AVX2 kernels 64 rows beat 128 by 28% (and 32 by 19%). GPUs keep gaining up to a
# few hundred rows (a decode step costs about the same at 32 and 256 there).
CPU_ROWS_BF16, CPU_ROWS, GPU_ROWS = 128, 64, 256
# The KV cache a batch may fill: a fraction of the GPU memory free after loading, a fixed
# amount on the CPU.
CPU_CACHE_BYTES = 2 << 30
GPU_FREE_MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class BatchBudget:
    """How many prompts decode together: at most `max_rows`, and at most `max_tokens` cached
    tokens (rows x (longest prompt + new tokens))."""

    max_rows: int
    max_tokens: int

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.max_tokens < 1:
            raise ConfigError("a generation batch needs at least one row and one token")


def kv_bytes_per_token(model: nn.Module) -> int:
    """Bytes of KV cache one token takes in `model`: layers x (key + value) x heads x dim."""
    config: Any = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(getattr(text, "num_key_value_heads", None) or text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
    element = next(model.parameters()).element_size()
    return int(text.num_hidden_layers) * 2 * heads * head_dim * element


def default_budget(loaded: LoadedModel, max_rows: int | None = None) -> BatchBudget:
    """The budget for `loaded` on its device: at most `max_rows` rows (None: the measured
    default for the device and precision, above), and the KV cache that fits half the free GPU
    memory or `CPU_CACHE_BYTES`."""
    device = loaded.device
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cache_bytes, rows = int(free * GPU_FREE_MEMORY_SHARE), GPU_ROWS
    else:
        cache_bytes = CPU_CACHE_BYTES
        fast_bf16 = loaded.dtype == torch.bfloat16 and cpu_supports_bf16()
        rows = CPU_ROWS_BF16 if fast_bf16 else CPU_ROWS
    rows = max_rows or rows
    return BatchBudget(rows, max(1, cache_bytes // kv_bytes_per_token(loaded.model)))


def plan_batches(
    lengths: Sequence[int], max_new_tokens: int, budget: BatchBudget
) -> list[list[int]]:
    """Prompt indices in batches: longest prompts first (ties in index order), each batch as
    many consecutive prompts as fit `budget`. A prompt too long for the budget on its own
    still gets a batch of its own."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for index in order:
        if batches:
            batch = batches[-1]
            width = lengths[batch[0]] + max_new_tokens  # the first prompt is the longest
            if len(batch) < budget.max_rows and (len(batch) + 1) * width <= budget.max_tokens:
                batch.append(index)
                continue
        batches.append([index])
    return batches
