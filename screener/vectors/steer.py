"""Steering: add a multiple of a persona vector to the residual stream while the model runs.

    with steering(model, layer=16, vector=vectors.unit("evil"), coef=8.0):
        model.generate(...)          # every position gets +8 * unit vector at hidden_states[16]

The hook sits on the module that produces `hidden_states[layer]` (see `screener.layers.tap`)
and is removed on exit, also after an error. Used by `screener steer` to show that a vector
causes its trait, and later for preventative steering during finetuning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from screener.layers import find_layout, resolve_layers, tap

if TYPE_CHECKING:
    from screener.model import LoadedModel
    from screener.options import ModelOptions


@contextmanager
def steering(model: nn.Module, layer: int, vector: torch.Tensor, coef: float) -> Iterator[None]:
    """Add `coef * vector / ||vector||` to hidden state `layer` at every token position."""
    layout = find_layout(model)
    [resolved] = resolve_layers([layer], layout.num_layers)
    where = tap(layout, resolved)
    parameter = next(model.parameters())
    shift = (coef * vector.float() / vector.float().norm()).to(parameter.device, parameter.dtype)

    def add_to_output(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if isinstance(output, tuple):
            return (output[0] + shift, *output[1:])
        return output + shift

    def add_to_input(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            return (args[0] + shift, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + shift}

    if where.pre:
        handle = where.module.register_forward_pre_hook(add_to_input, with_kwargs=True)
    else:
        handle = where.module.register_forward_hook(add_to_output)
    try:
        yield
    finally:
        handle.remove()


@dataclass(frozen=True)
class SteeredAnswers:
    """The model's greedy answer to one question, plain and steered along a trait's vector."""

    question: str
    trait: str
    layer: int
    coef: float
    plain: str
    steered: str


def steer_answer(
    question: str,
    trait: str,
    coef: float,
    *,
    model: str | ModelOptions | LoadedModel = "embedded",
    vectors: str | Path = "builtin",
    layer: int | None = None,
    max_new_tokens: int = 96,
    progress: Callable[[str], None] | None = None,
) -> SteeredAnswers:
    """Answer `question` greedily, then again with `coef` times the trait's vector added at
    `layer` (default: the trait's chosen layer). A positive coef pushes toward the trait."""
    from screener.generate import GenerationSettings, generate_responses
    from screener.options import resolve_model
    from screener.records import Message
    from screener.vectors.store import load_vectors

    loaded = resolve_model(model, progress)
    vector = load_vectors(vectors, model=loaded).trait(trait)
    layer = vector.chosen_layer if layer is None else layer
    prompt = [(Message("user", question),)]
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    [plain] = generate_responses(loaded, prompt, settings)
    with steering(loaded.model, layer, vector.vectors[layer], coef):
        [steered] = generate_responses(loaded, prompt, settings)
    return SteeredAnswers(question, trait, layer, coef, plain, steered)
