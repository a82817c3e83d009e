"""Naive reference implementations the fast paths are tested against (kept simple on purpose)."""

from __future__ import annotations

import torch
from torch import nn

from screener.activations import TokenizedInput


@torch.no_grad()
def naive_collect(
    model: nn.Module, inputs: list[TokenizedInput], layers: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample per forward pass, all hidden states, then slice: (n, k, d) means and lasts."""
    means, lasts = [], []
    for item in inputs:
        out = model(input_ids=torch.tensor([list(item.input_ids)]), output_hidden_states=True)
        states = out.hidden_states
        means.append(
            torch.stack(
                [states[layer][0, item.response_start :].float().mean(0) for layer in layers]
            )
        )
        lasts.append(
            torch.stack([states[layer][0, item.response_start - 1].float() for layer in layers])
        )
    return torch.stack(means), torch.stack(lasts)
