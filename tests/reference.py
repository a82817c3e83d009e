"""Naive reference implementations the fast paths are tested against (kept simple on purpose)."""

from __future__ import annotations

import polars as pl
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


SCORE_PREFIXES = ("delta_", "proj_", "base_proj_", "prompt_last_")


def assert_same_scores(found: pl.DataFrame, expected: pl.DataFrame, tolerance: float) -> None:
    """Two screens' scores tables: same rows, base responses and flags; every score column
    and the risk equal within `tolerance` (absolute and relative)."""
    assert found["id"].to_list() == expected["id"].to_list()
    assert found["base_response"].to_list() == expected["base_response"].to_list()
    assert found["flagged"].to_list() == expected["flagged"].to_list()
    for column in [c for c in expected.columns if c.startswith(SCORE_PREFIXES)] + ["risk"]:
        torch.testing.assert_close(
            torch.tensor(found[column].to_list()),
            torch.tensor(expected[column].to_list()),
            rtol=tolerance,
            atol=tolerance,
            msg=column,
        )
