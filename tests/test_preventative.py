"""Preventative steering helpers for users' own training: the context manager and the
transformers TrainerCallback steer while training runs, change what is learned, and leave no
hook behind (the trained model then equals a fresh copy with its weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast, Trainer, TrainerCallback, TrainingArguments

from screener.layers import find_layout, tap
from screener.validation.preventative import PreventativeSteeringCallback, preventative_steering
from screener.vectors import load_vectors
from tests.conftest import tiny_loaded, tiny_model
from tests.test_finetune import assert_steering_changed_training_and_left_no_trace
from tests.test_screen import tiny_vectors
from tests.test_steer import received

IDS = torch.tensor([[5, 17, 42, 99, 7]])


def no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


class HookSpy(TrainerCallback):
    """Records, at every step, whether the steered layer's module carries a hook."""

    def __init__(self, layer: int) -> None:
        self.layer = layer
        self.seen: list[bool] = []

    def on_step_begin(self, args, state, control, model=None, **kwargs):  # type: ignore[no-untyped-def]
        module = tap(find_layout(model), self.layer).module
        self.seen.append(bool(module._forward_hooks or module._forward_pre_hooks))


def train(tmp_path: Path, callbacks: list[TrainerCallback]) -> torch.nn.Module:
    model = tiny_model("llama")
    data = [
        {"input_ids": ids, "attention_mask": torch.ones(6, dtype=torch.long), "labels": ids}
        for ids in torch.randint(3, 200, (8, 6), generator=torch.Generator().manual_seed(1))
    ]
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks).train()  # type: ignore[arg-type]
    return model.eval()


def test_trainer_callback_steers_during_training_only(
    tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    loaded = tiny_loaded("llama", tiny_tokenizer)
    vectors = load_vectors(tiny_vectors(loaded, tmp_path / "v.safetensors"))
    layer = vectors.trait("evil").chosen_layer
    plain = train(tmp_path, [])
    spy = HookSpy(layer)
    with PreventativeSteeringCallback(vectors, "evil", 8.0) as steer:
        steered = train(tmp_path, [steer, spy])
    assert spy.seen == [True, True, True]
    assert_steering_changed_training_and_left_no_trace(plain, steered)


def test_context_manager_adds_the_unit_vector_and_removes_it_on_error(
    tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    loaded = tiny_loaded("llama", tiny_tokenizer)
    vectors = load_vectors(tiny_vectors(loaded, tmp_path / "v.safetensors"))
    trait = vectors.trait("sycophancy")
    model = loaded.model
    before = received(model, trait.chosen_layer, IDS)
    with preventative_steering(model, vectors, "sycophancy", 3.0):
        during = received(model, trait.chosen_layer, IDS)
    torch.testing.assert_close(during, before + 3.0 * trait.unit(), rtol=1e-5, atol=1e-5)
    with (
        pytest.raises(RuntimeError, match="boom"),
        preventative_steering(model, vectors, "evil", 1),
    ):
        raise RuntimeError("boom")
    assert no_hooks(model)
