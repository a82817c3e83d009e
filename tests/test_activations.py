"""The batched collector against the naive reference loop, on tiny models of several families."""

from __future__ import annotations

import random

import pytest
import torch

from screener.activations import ActivationCollector, TokenizedInput, plan_batches
from screener.errors import ConfigError
from tests.conftest import FAMILIES, VOCAB, tiny_model
from tests.reference import naive_collect


def random_inputs(n: int, seed: int = 0) -> list[TokenizedInput]:
    rng = random.Random(seed)
    inputs = []
    for _ in range(n):
        length = rng.randint(4, 40)
        start = rng.randint(1, length - 1)
        inputs.append(TokenizedInput([rng.randrange(3, VOCAB) for _ in range(length)], start))
    return inputs


@pytest.mark.parametrize("family", FAMILIES)
def test_collector_matches_naive_loop_at_every_layer(family: str) -> None:
    model = tiny_model(family)
    inputs = random_inputs(11)
    layers = list(range(model.config.num_hidden_layers + 1))
    acts = ActivationCollector(model, layers, max_batch_tokens=120).collect(inputs)
    ref_mean, ref_last = naive_collect(model, inputs, layers)
    assert acts.layers == layers
    torch.testing.assert_close(acts.response_mean, ref_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(acts.last_prompt, ref_last, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batch_size_and_padding_side_do_not_change_results(family: str) -> None:
    model = tiny_model(family)
    inputs = random_inputs(16, seed=1)
    results = [
        ActivationCollector(model, [1, 2], max_batch_size=size, padding_side=side).collect(inputs)
        for size in (1, 8)
        for side in ("left", "right")
    ]
    for other in results[1:]:
        torch.testing.assert_close(
            other.response_mean, results[0].response_mean, rtol=1e-4, atol=1e-5
        )
        torch.testing.assert_close(other.last_prompt, results[0].last_prompt, rtol=1e-4, atol=1e-5)


def test_negative_layers_count_from_the_end() -> None:
    model = tiny_model("llama", layers=3)
    assert ActivationCollector(model, [-1, -4]).layers == [0, 3]
    with pytest.raises(ConfigError, match="does not exist"):
        ActivationCollector(model, [4])


def test_forward_stops_after_deepest_layer_and_hooks_are_removed() -> None:
    model = tiny_model("llama", layers=3)
    ran: list[str] = []
    spies = [
        model.model.layers[i].register_forward_hook(lambda *a, i=i: ran.append(f"block{i}"))
        for i in range(3)
    ]
    spies.append(model.lm_head.register_forward_hook(lambda *a: ran.append("lm_head")))
    spies.append(model.model.norm.register_forward_hook(lambda *a: ran.append("norm")))
    before = {
        name: len(m._forward_hooks) + len(m._forward_pre_hooks) for name, m in model.named_modules()
    }
    ActivationCollector(model, [1], max_batch_size=1).collect(random_inputs(3))
    assert ran == ["block0"] * 3
    after = {
        name: len(m._forward_hooks) + len(m._forward_pre_hooks) for name, m in model.named_modules()
    }
    assert after == before
    for spy in spies:
        spy.remove()


def test_hooks_are_removed_when_the_forward_pass_fails() -> None:
    model = tiny_model("llama")
    failing = model.model.layers[0].register_forward_hook(lambda *a: 1 / 0)
    collector = ActivationCollector(model, [2])
    with pytest.raises(ZeroDivisionError):
        collector.collect(random_inputs(2))
    failing.remove()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_invalid_boundary_is_rejected() -> None:
    collector = ActivationCollector(tiny_model("llama"), [1])
    with pytest.raises(ConfigError, match="response_start"):
        collector.collect([TokenizedInput([5, 6, 7], 3)])


def test_plan_batches_respects_budget_and_covers_every_index() -> None:
    lengths = [5, 50, 7, 30, 30, 2, 100]
    batches = plan_batches(lengths, max_batch_tokens=64, max_batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 64
    assert batches[0] == [6]  # longest first, alone because it exceeds the budget
