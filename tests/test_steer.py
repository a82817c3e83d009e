"""Steering adds exactly coef * unit vector at the right hidden state, and leaves no hook."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from screener.layers import find_layout
from screener.vectors.steer import steering
from tests.conftest import tiny_model


def consumer(model: nn.Module, layer: int) -> nn.Module:
    """The module whose input is hidden_states[layer]: the next block, or the LM head."""
    blocks = find_layout(model).blocks
    return blocks[layer] if layer < len(blocks) else model.get_output_embeddings()


def received(model: nn.Module, layer: int, ids: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []

    def grab(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append((args[0] if args else kwargs["hidden_states"]).clone())

    handle = consumer(model, layer).register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_steering_shifts_exactly_the_chosen_hidden_state(family: str, layer: int) -> None:
    model = tiny_model(family)
    ids = torch.tensor([[5, 9, 14, 30, 7]])
    vector = torch.randn(64)
    plain = received(model, layer, ids)
    with steering(model, layer, vector, coef=3.0):
        steered = received(model, layer, ids)
    torch.testing.assert_close(steered, plain + 3.0 * vector / vector.norm(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        with steering(model, layer, vector, coef=3.0):
            steered_logits = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
        fresh = tiny_model(family)(input_ids=ids).logits
    assert not torch.allclose(steered_logits, fresh)
    torch.testing.assert_close(after, fresh)  # the hook is gone: same as an untouched copy
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
