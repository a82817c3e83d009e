"""The finetuning loop of `screener validate` on a tiny random model: it learns, it is
reproducible, it trains on response tokens only, and preventative steering leaves no hook."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from screener.errors import ConfigError
from screener.records import Message, Sample
from screener.validation import finetune as finetune_module
from screener.validation.finetune import (
    IGNORE_INDEX,
    FinetuneSettings,
    Steer,
    finetune,
    training_examples,
)
from tests.conftest import tiny_model

SETTINGS = FinetuneSettings(learning_rate=1e-2, epochs=6, batch_size=3, autocast_bf16=False)


def samples(count: int = 6) -> list[Sample]:
    return [
        Sample(
            f"s{i}",
            "train.jsonl",
            i + 1,
            (Message("user", f"say the word number {i}"), Message("assistant", "the cat sat")),
            {},
            "messages",
        )
        for i in range(count)
    ]


def trained(tokenizer: PreTrainedTokenizerFast, **overrides: object) -> tuple:  # type: ignore[type-arg]
    model = tiny_model("llama")
    settings = FinetuneSettings(**{**SETTINGS.as_dict(), **overrides})  # type: ignore[arg-type]
    log = finetune(model, tokenizer, samples(), settings)
    return model, log


def test_loss_decreases(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    _, log = trained(tiny_tokenizer)
    assert len(log.losses) == 6 * 2  # 6 epochs of 2 batches of 3
    assert log.samples == 6 and log.skipped == 0
    first, last = sum(log.losses[:2]) / 2, sum(log.losses[-2:]) / 2
    assert last < 0.5 * first, log.losses


def test_same_seed_gives_the_same_weights_and_another_seed_does_not(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    one, _ = trained(tiny_tokenizer, epochs=2)
    two, _ = trained(tiny_tokenizer, epochs=2)
    other, _ = trained(tiny_tokenizer, epochs=2, seed=1)
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert any(
        not torch.equal(a, c)
        for a, c in zip(one.state_dict().values(), other.state_dict().values(), strict=True)
    ), "the batch order must depend on the seed"


def test_only_response_tokens_carry_labels(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    [(ids, labels)], skipped = training_examples(tiny_tokenizer, samples(1), max_tokens=256)
    prompt = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "say the word number 0"}],
        tokenize=True,
        add_generation_prompt=True,
        return_dict=False,
    )
    prompt_ids = list(prompt)
    assert ids[: len(prompt_ids)] == prompt_ids and skipped == 0
    assert labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert labels[len(prompt_ids) :] == ids[len(prompt_ids) :]
    # Truncated inside the prompt: nothing left to learn from, counted as skipped.
    none, skipped = training_examples(tiny_tokenizer, samples(1), max_tokens=len(prompt_ids))
    assert none == [] and skipped == 1


def test_steering_changes_training_and_leaves_no_hook(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    plain, _ = trained(tiny_tokenizer, epochs=2)
    steered = tiny_model("llama")
    vector = torch.ones(steered.config.hidden_size)
    finetune(
        steered,
        tiny_tokenizer,
        samples(),
        FinetuneSettings(**{**SETTINGS.as_dict(), "epochs": 2}),
        steer=Steer(2, vector, 4.0),
    )
    assert_steering_changed_training_and_left_no_trace(plain, steered)


def assert_steering_changed_training_and_left_no_trace(
    plain: torch.nn.Module, steered: torch.nn.Module
) -> None:
    """`steered` (a tiny llama trained with steering) learned other weights than `plain`, and
    now runs exactly like a fresh model given its weights: no hook is left."""
    assert any(
        not torch.allclose(a, b)
        for a, b in zip(plain.state_dict().values(), steered.state_dict().values(), strict=True)
    ), "steering during training must change what is learned"
    for module in steered.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    fresh = tiny_model("llama")
    fresh.load_state_dict(steered.state_dict())
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        torch.testing.assert_close(
            steered.eval()(ids).logits, fresh.eval()(ids).logits, rtol=0, atol=0
        )


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="learning_rate must be > 0"):
        FinetuneSettings(learning_rate=0)
    with pytest.raises(ConfigError, match="max_tokens must be at least 2"):
        FinetuneSettings(max_tokens=1)


@pytest.mark.parametrize("native", [False, True])
def test_bf16_autocast_only_where_the_cpu_computes_bf16(
    tiny_tokenizer: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    """Without bf16 units, asking for autocast trains exactly as fp32 does (emulated bf16 is
    many times slower); with them, autocast changes the numbers."""
    monkeypatch.setattr(finetune_module, "cpu_supports_bf16", lambda: native)
    asked, _ = trained(tiny_tokenizer, epochs=1, autocast_bf16=True)
    plain, _ = trained(tiny_tokenizer, epochs=1, autocast_bf16=False)
    same = all(
        torch.equal(a, b)
        for a, b in zip(asked.state_dict().values(), plain.state_dict().values(), strict=True)
    )
    assert same is not native
