"""Preventative steering for your own training loop: add a trait's persona vector to the
residual stream while finetuning, so the gradient has no reason to move the model toward the
trait; remove it afterwards and the trained model runs unsteered (docs/method.md's mitigation).

A plain loop:

    vectors = load_vectors("builtin")
    with preventative_steering(model, vectors, "evil", coef=10):
        for batch in batches:
            model(**batch).loss.backward(); optimizer.step(); optimizer.zero_grad()

A transformers Trainer (the callback adds the hook when training begins and removes it when
training ends; `with` also removes it if training fails):

    with PreventativeSteeringCallback(vectors, "evil", coef=10) as steer:
        Trainer(model=model, args=args, train_dataset=data, callbacks=[steer]).train()

Evaluation that Trainer runs during training is steered too; measure the trait after training.
`screener validate --preventative-steer 0,10,20` measures what a coefficient does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from torch import nn
from transformers import TrainerCallback

from screener.errors import ConfigError
from screener.vectors.steer import steering
from screener.vectors.store import VectorFile


def _trait_vector(vectors: VectorFile, trait: str, layer: int | None) -> tuple[int, Any]:
    chosen = vectors.trait(trait)
    where = chosen.chosen_layer if layer is None else layer
    return where, chosen.unit(where)


@contextlib.contextmanager
def preventative_steering(
    model: nn.Module, vectors: VectorFile, trait: str, coef: float, *, layer: int | None = None
) -> Iterator[None]:
    """Add `coef` times the unit vector of `trait` at its chosen layer (or `layer`) to every
    forward pass of `model` (a peft-wrapped model too) inside the block."""
    where, vector = _trait_vector(vectors, trait, layer)
    with steering(model, where, vector, coef):
        yield


class PreventativeSteeringCallback(TrainerCallback):
    """Preventative steering as a transformers `TrainerCallback` (see the module doc)."""

    def __init__(
        self, vectors: VectorFile, trait: str, coef: float, *, layer: int | None = None
    ) -> None:
        self.layer, self.vector = _trait_vector(vectors, trait, layer)
        self.coef = coef
        self._hook: contextlib.ExitStack | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs.get("model")
        if model is None:
            raise ConfigError("the Trainer passed no model to PreventativeSteeringCallback")
        self.remove()
        hook = contextlib.ExitStack()
        hook.enter_context(steering(model, self.layer, self.vector, self.coef))
        self._hook = hook

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.remove()

    def remove(self) -> None:
        """Take the steering hook out (nothing happens when none is in place)."""
        if self._hook is not None:
            self._hook.close()
            self._hook = None

    def __enter__(self) -> PreventativeSteeringCallback:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()
