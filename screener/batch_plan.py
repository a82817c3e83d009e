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
from screener.model import LoadedModel

# Rows decoded together at most. Measured with the embedded model on a 2-core CPU (see
# benchmarks/bench_generate.py): 128 rows beat 64 by 7% (fp32) and 14% (bf16) on the 200 demo
# prompts. GPUs keep gaining up to a few hundred rows (the per-step cost barely grows there).
DEFAULT_MAX_ROWS = {"cpu": 128, "cuda": 256}
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
    """The budget for `loaded` on its device: `DEFAULT_MAX_ROWS` (unless `max_rows` is given),
    and the KV cache that fits half the free GPU memory or `CPU_CACHE_BYTES`."""
    device = loaded.device
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cache_bytes = int(free * GPU_FREE_MEMORY_SHARE)
    else:
        cache_bytes = CPU_CACHE_BYTES
    rows = max_rows or DEFAULT_MAX_ROWS.get(device.type, DEFAULT_MAX_ROWS["cpu"])
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
