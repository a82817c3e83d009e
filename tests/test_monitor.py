"""Drift monitoring: checkpoints (full models and PEFT adapters) against the base model, the
Trainer callback and the plain meter. Known answers: each model measured on its own with
`answer_projections` (itself checked against a naive loop in test_shift), hand values for the
bounds, and a training run without the callback for "measuring changes no weight"."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    PreTrainedTokenizerFast,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from screener.cli import main
from screener.errors import ConfigError, InputError
from screener.generate import GenerationSettings
from screener.model import LoadedModel, fingerprint
from screener.monitor import DriftBound, DriftCallback, DriftMeter, monitor_checkpoints
from screener.monitor.meter import untouched_training
from screener.traits import load_pack
from screener.validation.datasets import TrainingSet
from screener.validation.finetune import FinetuneSettings
from screener.validation.result import Shift
from screener.validation.run import validate
from screener.validation.shift import answer_projections, shift_standard_error
from screener.validation.training import ValidateSettings
from screener.vectors import load_vectors
from screener.vectors.store import VectorFile
from tests.conftest import save_tiny_model, tiny_model
from tests.test_finetune import samples
from tests.test_screen import tiny_vectors

TOKENS = 4
QUESTIONS = 3
TRAITS = ("evil", "sycophancy")


def loaded_from(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast) -> LoadedModel:
    return LoadedModel(
        model,  # type: ignore[arg-type]
        tokenizer,
        "tiny",
        "tiny",
        torch.float32,
        torch.device("cpu"),
        fingerprint(model),  # type: ignore[arg-type]
    )


def tiny_vector_file(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, folder: Path
) -> VectorFile:
    return load_vectors(tiny_vectors(loaded_from(model, tokenizer), folder / "v.safetensors"))


def expected_drift(
    base: LoadedModel, model: torch.nn.Module, vectors_path: Path, questions: int | None
) -> dict[str, tuple[float, float]]:
    """Per trait (drift, paired standard error), each model measured on its own."""
    vectors = load_vectors(vectors_path)
    found = {}
    for trait in TRAITS:
        asked = load_pack(trait).eval_questions[:questions]
        vector = vectors.trait(trait)
        settings = GenerationSettings(max_new_tokens=TOKENS)
        other = copy.copy(base)
        other.model = model  # type: ignore[assignment]
        before = answer_projections(base, asked, vector.unit(), vector.chosen_layer, settings)
        after = answer_projections(other, asked, vector.unit(), vector.chosen_layer, settings)
        found[trait] = (after.mean - before.mean, shift_standard_error(before, after))
    return found


def perturbed(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    changed = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in changed.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return changed.eval()


def base_and_full_checkpoint(
    base_dir: Path, tmp_path: Path, tokenizer: PreTrainedTokenizerFast, seed: int
) -> tuple[torch.nn.Module, LoadedModel, Path, torch.nn.Module]:
    """The base model (and loaded), tiny vectors for it, and a perturbed copy saved as a full
    checkpoint in tmp_path/full with the tokenizer."""
    base_model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    base = loaded_from(base_model, tokenizer)
    vectors = tiny_vectors(base, tmp_path / "v.safetensors")
    full = perturbed(base_model, seed=seed)
    full.save_pretrained(tmp_path / "full")
    tokenizer.save_pretrained(tmp_path / "full")
    return base_model, base, vectors, full


@pytest.fixture
def base_dir(tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast) -> Path:
    return save_tiny_model(tmp_path / "base", "llama", tiny_tokenizer)


def test_checkpoints_and_adapters_drift_as_each_model_measured_alone(
    base_dir: Path, tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    import peft

    base_model, base, vectors, full = base_and_full_checkpoint(
        base_dir, tmp_path, tiny_tokenizer, seed=1
    )
    torch.manual_seed(3)  # LoRA weights that are not zero at the start, so the adapter acts
    config = peft.LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    adapter = peft.get_peft_model(copy.deepcopy(base_model), config)
    adapter.save_pretrained(tmp_path / "adapter")
    merged = adapter.merge_and_unload().eval()
    before = base_model.state_dict()

    result = monitor_checkpoints(
        base,
        [str(tmp_path / "full"), str(tmp_path / "adapter")],
        vectors=vectors,
        questions=QUESTIONS,
        eval_tokens=TOKENS,
    )
    assert result.traits == TRAITS
    assert [(c.name, c.kind) for c in result.checkpoints] == [
        (str(tmp_path / "full"), "model"),
        (str(tmp_path / "adapter"), "adapter"),
    ]
    for checkpoint, model in zip(result.checkpoints, (full, merged), strict=True):
        for trait, (drift, error) in expected_drift(base, model, vectors, QUESTIONS).items():
            assert checkpoint.shifts[trait].shift == pytest.approx(drift, abs=1e-4)
            assert checkpoint.shifts[trait].standard_error == pytest.approx(error, abs=1e-4)
            assert abs(drift) > 1e-3, "the checkpoint did not move: the test would prove nothing"
    # the adapter came off again: the base model is as it was, with no LoRA module left
    assert not any("lora" in name for name, _ in base_model.named_modules())
    for name, value in base_model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


class ChecksumJudge:
    """Scores a judge prompt by its characters' code points summed, modulo 101: another answer
    gets another score."""

    name = "checksum-judge"

    def score(self, prompts: list[str]) -> list[float | None]:
        return [float(sum(map(ord, p)) % 101) for p in prompts]


def test_a_judge_scores_each_checkpoint_against_the_base(
    base_dir: Path,
    tmp_path: Path,
    tiny_tokenizer: PreTrainedTokenizerFast,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base_model, base, vectors, full = base_and_full_checkpoint(
        base_dir, tmp_path, tiny_tokenizer, seed=2
    )
    monkeypatch.setattr("screener.monitor.checkpoints.make_judge", lambda *a, **k: ChecksumJudge())
    result = monitor_checkpoints(
        base, [str(tmp_path / "full")], vectors=vectors, questions=QUESTIONS, eval_tokens=TOKENS,
        judge="length",
    )  # fmt: skip

    def judged(model: torch.nn.Module, trait: str) -> float:
        """The judge's mean over the model's answers to the trait's questions, by hand."""
        pack, vector = load_pack(trait), load_vectors(vectors).trait(trait)
        other = copy.copy(base)
        other.model = model  # type: ignore[assignment]
        questions = pack.eval_questions[:QUESTIONS]
        settings = GenerationSettings(max_new_tokens=TOKENS)
        answers = answer_projections(other, questions, vector.unit(), vector.chosen_layer, settings)
        prompts = [
            pack.judge_prompt(q, a) for q, a in zip(questions, answers.answers, strict=True) if a
        ]
        return sum(ChecksumJudge().score(prompts)) / len(prompts)

    for trait in TRAITS:
        before, after = judged(base_model, trait), judged(full, trait)
        assert result.baseline_judge[trait] == pytest.approx(before)
        assert result.checkpoints[0].shifts[trait].judge_shift == pytest.approx(after - before)
    assert any(result.checkpoints[0].shifts[t].judge_shift for t in TRAITS), "nothing to compare"
    document = result.to_json()
    assert document["judge"] == "checksum-judge"
    assert document["baseline"]["evil"]["judge_mean"] == result.baseline_judge["evil"]


def test_bounds_fail_only_when_the_drift_is_above_with_confidence() -> None:
    bound = DriftBound.parse("evil=5")
    assert (bound.trait, bound.value) == ("evil", 5.0)
    # lower bound: 8 - 1.645 * 1 = 6.355 > 5; 6 - 1.645 * 1 = 4.355 < 5
    assert bound.exceeded_by(Shift(8.0, 1.0, 0.0, 20))
    assert not bound.exceeded_by(Shift(6.0, 1.0, 0.0, 20))
    assert bound.lower_bound(Shift(6.0, 1.0, 0.0, 20)) == pytest.approx(4.35515, abs=1e-4)
    assert bound.exceeded_by(Shift(5.5, math.nan, 0.0, 1))  # no error: the drift itself
    assert not bound.exceeded_by(Shift(math.nan, math.nan, math.nan, 0))
    for text in ("evil", "evil=", "=3", "evil=high", "evil=inf"):
        with pytest.raises(ConfigError, match="expected TRAIT=NUMBER"):
            DriftBound.parse(text)


def test_bad_checkpoints_are_one_line_errors_before_any_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    cases = {
        "./missing": "./missing: no such checkpoint: expected a model directory, a PEFT adapter "
        "directory, a .gguf file or a Hugging Face model id (owner/name)",
        "a/b/c": "a/b/c: no such checkpoint: expected a model directory, a PEFT adapter "
        "directory, a .gguf file or a Hugging Face model id (owner/name)",
        "empty": "empty: neither a model directory (config.json) nor a PEFT adapter "
        "(adapter_config.json): pass what save_pretrained wrote",
    }

    def refuse_to_load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded before the checkpoints were checked")

    monkeypatch.setattr("screener.monitor.checkpoints.resolve_model", refuse_to_load)
    for spec, message in cases.items():
        with pytest.raises(InputError) as info:
            monitor_checkpoints("embedded", ["owner/model", spec])
        assert str(info.value) == message
    with pytest.raises(ConfigError, match="--fail-above toxic: not measured"):
        monitor_checkpoints("embedded", ["owner/model"], bounds=[DriftBound("toxic", 1.0)])
    with pytest.raises(ConfigError, match="at least 2 questions"):
        monitor_checkpoints("embedded", ["owner/model"], questions=1)


def test_cli_prints_the_table_writes_the_files_and_fails_above_a_bound(
    base_dir: Path,
    tmp_path: Path,
    tiny_tokenizer: PreTrainedTokenizerFast,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = loaded_from(AutoModelForCausalLM.from_pretrained(base_dir).eval(), tiny_tokenizer)
    vectors = tiny_vectors(base, tmp_path / "v.safetensors")
    checkpoint = perturbed(base.model, seed=2)
    checkpoint.save_pretrained(tmp_path / "ckpt")
    tiny_tokenizer.save_pretrained(tmp_path / "ckpt")
    drift = expected_drift(base, checkpoint, vectors, QUESTIONS)["evil"][0]
    common = [
        "monitor", "checkpoints", str(base_dir), str(tmp_path / "ckpt"), "--vectors",
        str(vectors), "--questions", str(QUESTIONS), "--eval-tokens", str(TOKENS), "--quiet",
        "--dtype", "fp32",
    ]  # fmt: skip
    below = f"evil={drift - 1000:g}"  # far below the drift: exceeded whatever the error
    assert main([*common, "--out", str(tmp_path / "fails"), "--fail-above", below]) == 1
    out = capsys.readouterr().out
    assert f"{drift:+.2f}" in out and "FAIL " in out and "evil drift" in out
    document = json.loads((tmp_path / "fails" / "monitor.json").read_text())
    assert document["checkpoints"][0]["drift"]["evil"]["shift"] == pytest.approx(drift, abs=1e-4)
    assert document["bounds"]["fail_above"] == {"evil": float(below.split("=")[1])}
    assert len(document["bounds"]["failures"]) == 1
    html = (tmp_path / "fails" / "monitor.html").read_text()
    assert "Bounds exceeded" in html and str(tmp_path / "ckpt") in html
    assert (tmp_path / "fails" / "monitor.png").read_bytes()[:4] == b"\x89PNG"

    above = f"evil={drift + 1000:g}"
    assert main([*common, "--out", str(tmp_path / "passes"), "--fail-above", above]) == 0
    assert "FAIL" not in capsys.readouterr().out
    assert "within its bounds" in (tmp_path / "passes" / "monitor.html").read_text()


class LogSpy(TrainerCallback):
    """A reporter: what every on_log call was given."""

    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        self.logs.append(dict(logs or {}))


def trainer_for(model: torch.nn.Module, tmp_path: Path, spy: LogSpy, steps: int = 4) -> Trainer:
    data = [
        {"input_ids": ids, "attention_mask": torch.ones(6, dtype=torch.long), "labels": ids}
        for ids in torch.randint(3, 200, (16, 6), generator=torch.Generator().manual_seed(1))
    ]
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        lr_scheduler_type="constant",  # step k's weights do not depend on max_steps
        report_to=[],
        save_strategy="no",
        logging_steps=1000,  # the Trainer's own loss logging: never within these steps
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    return Trainer(model=model, args=args, train_dataset=data, callbacks=[spy])  # type: ignore[arg-type]


def dropout_model() -> torch.nn.Module:
    """The tiny model with attention dropout, so that training draws random numbers and a
    measurement that moved the RNG would change the weights."""
    model = tiny_model("llama")
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.3
    return model


def test_the_callback_logs_drift_through_the_trainer_and_changes_no_weight(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    vectors = tiny_vector_file(tiny_model("llama"), tiny_tokenizer, tmp_path)
    plain_model = dropout_model()
    trainer_for(plain_model, tmp_path, LogSpy()).train()

    watched_model, spy = dropout_model(), LogSpy()
    trainer = trainer_for(watched_model, tmp_path, spy)
    drift = DriftCallback(
        tiny_tokenizer, vectors, every=2, questions=QUESTIONS, eval_tokens=TOKENS
    ).attach(trainer)
    assert trainer.callback_handler.callbacks[0] is drift
    trainer.train()

    for name, value in plain_model.state_dict().items():
        torch.testing.assert_close(watched_model.state_dict()[name], value, rtol=0, atol=0)
    assert [point.step for point in drift.history] == [0, 2, 4]
    assert all(s.shift == 0 for s in drift.history[0].shifts.values())
    # each point equals the meter's reading of a model trained that far without the callback
    for point in drift.history[1:]:
        model = dropout_model()
        trainer_for(model, tmp_path, LogSpy(), steps=point.step).train()
        for trait, (expected, error) in expected_drift(
            loaded_from(dropout_model().eval(), tiny_tokenizer),
            model.eval(),
            Path(vectors.path or ""),
            QUESTIONS,
        ).items():
            assert point.shifts[trait].shift == pytest.approx(expected, abs=1e-4)
            assert point.shifts[trait].standard_error == pytest.approx(error, abs=1e-4)
    reported = [entry for entry in spy.logs if "drift/evil" in entry]
    assert [entry["drift/evil"] for entry in reported] == [
        point.shifts["evil"].shift for point in drift.history[1:]
    ]
    assert all("drift/sycophancy_se" in entry for entry in reported)
    history = [entry for entry in trainer.state.log_history if "drift/evil" in entry]
    assert [entry["step"] for entry in history] == [2, 4]


def test_the_callback_stops_training_when_a_trait_passes_its_bound(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    model = tiny_model("llama")
    vectors = tiny_vector_file(model, tiny_tokenizer, tmp_path)
    trainer = trainer_for(model, tmp_path, LogSpy(), steps=8)
    drift = DriftCallback(
        tiny_tokenizer,
        vectors,
        every=2,
        questions=QUESTIONS,
        eval_tokens=TOKENS,
        stop_above={"evil": -1e9},  # passed at the first measurement
    ).attach(trainer)
    trainer.train()
    assert trainer.state.global_step == 2
    assert drift.stopped_by is not None and drift.stopped_by.startswith("step 2: evil drift")
    with pytest.raises(ConfigError, match="stop_above names 'toxic'"):
        DriftCallback(tiny_tokenizer, vectors, stop_above={"toxic": 1.0})


def test_a_measurement_restores_mode_and_every_random_generator(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    model = tiny_model("llama").train()
    vectors = tiny_vector_file(model, tiny_tokenizer, tmp_path)
    meter = DriftMeter(tiny_tokenizer, vectors, questions=QUESTIONS, eval_tokens=TOKENS)
    with pytest.raises(ConfigError, match=r"call DriftMeter\.start"):
        meter.measure(model)
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    with untouched_training(model):
        assert not model.training and not torch.is_grad_enabled()
        torch.rand(10), random.random(), np.random.rand(4)  # a measurement that draws
    assert model.training and torch.is_grad_enabled()
    found = (torch.rand(3), random.random(), np.random.rand())
    torch.testing.assert_close(found[0], expected[0])
    assert found[1:] == expected[1:]
    meter.start(model)
    assert model.training
    assert all(s.shift == 0 for s in meter.measure(model).values())  # nothing trained yet


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_model_validate_saved_drifts_as_validate_measured_it(
    method: str, base_dir: Path, tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    base = loaded_from(AutoModelForCausalLM.from_pretrained(base_dir).eval(), tiny_tokenizer)
    vectors = load_vectors(tiny_vectors(base, tmp_path / "v.safetensors"))
    settings = ValidateSettings(
        finetune=FinetuneSettings(learning_rate=1e-2, epochs=2, batch_size=3, autocast_bf16=False),
        method=method,  # type: ignore[arg-type]
        steer_coefs=(0.0, 4.0),
        generation=GenerationSettings(max_new_tokens=TOKENS),
    )
    training = TrainingSet("top-evil", "test", samples(), {"evil": 1.0})
    saved = tmp_path / "models"
    validated = validate(base, vectors, [training], list(TRAITS), settings, save_models=saved)
    names = ["top-evil", "top-evil-steer-evil-4"]
    assert sorted(p.name for p in saved.iterdir()) == names
    assert [run.saved_to for run in validated.runs] == [str(saved / name) for name in names]
    monitored = monitor_checkpoints(
        base,
        [str(saved / name) for name in names],
        vectors=Path(vectors.path or ""),
        eval_tokens=TOKENS,
    )
    kind = "adapter" if method == "lora" else "model"
    assert [c.kind for c in monitored.checkpoints] == [kind, kind]
    for run, checkpoint in zip(validated.runs, monitored.checkpoints, strict=True):
        for trait in TRAITS:
            measured = run.shifts[trait].shift
            assert checkpoint.shifts[trait].shift == pytest.approx(measured, abs=1e-4)
            assert run.shifts[trait].shift != 0
