"""The options objects: each checks its values and names the flag that sets them; the CLI
builds them from its flags once, and flags a subcommand lacks keep the objects' defaults."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from screener.cli import build_parser
from screener.cli.common import model_options, read_options
from screener.cli.screen import generation_options, scoring_options
from screener.errors import ConfigError
from screener.model import LoadedModel
from screener.options import (
    GenerationOptions,
    ModelOptions,
    RayOptions,
    ReadOptions,
    ScoringOptions,
    resolve_model,
)
from screener.reader import FieldNames
from tests.test_screen import loaded  # noqa: F401


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ScoringOptions(chunk_size=0), "--chunk-rows must be at least 1"),
        (lambda: ScoringOptions(max_batch_tokens=0), "--batch-tokens must be positive"),
        (lambda: ScoringOptions(max_tokens=1), "--max-tokens must be at least 2"),
        (lambda: ScoringOptions(method="mean"), "unknown method 'mean'"),  # type: ignore[arg-type]
        (lambda: ScoringOptions(engine="spark"), "unknown engine 'spark'"),  # type: ignore[arg-type]
        (lambda: GenerationOptions(max_new_tokens=0), "--max-new-tokens must be positive"),
        (lambda: GenerationOptions(dtype="fp16"), "unknown generation dtype 'fp16'"),
        (lambda: RayOptions(workers=0), "--workers must be at least 1"),
    ],
)
def test_each_object_refuses_bad_values_naming_the_flag(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        make()


def test_options_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ScoringOptions().store = ":memory:"  # type: ignore[misc]


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_the_cli_builds_every_screen_option_from_its_flag(tmp_path: Path) -> None:
    args = parse(
        "screen", "data.jsonl", "--model", "m", "--dtype", "bf16", "--device", "cpu",
        "--trust-remote-code", "--vectors", "v.safetensors", "--method", "prompt-last",
        "--calibration", "none", "--no-style-control", "--max-tokens", "64",
        "--batch-tokens", "512", "--chunk-rows", "8", "--store", ":memory:", "--engine", "ray",
        "--workers", "3", "--gpus-per-worker", "1", "--max-new-tokens", "16",
        "--generation-dtype", "fp32", "--format", "prompt_response", "--prompt-field", "q",
        "--response-field", "a", "--id-field", "uid", "--on-bad-row", "fail",
    )  # fmt: skip
    assert model_options(args) == ModelOptions("m", "bf16", "cpu", trust_remote_code=True)
    assert scoring_options(args) == ScoringOptions(
        vectors="v.safetensors",
        method="prompt-last",
        calibration="none",
        style_control=False,
        max_tokens=64,
        max_batch_tokens=512,
        chunk_size=8,
        store=":memory:",
        engine="ray",
        ray=RayOptions(None, 3, 1.0),
    )
    assert generation_options(args) == GenerationOptions(16, "fp32")
    assert read_options(args) == ReadOptions("prompt_response", FieldNames("q", "a", "uid"), "fail")


def test_without_flags_the_cli_gives_the_objects_defaults() -> None:
    args = parse("screen", "data.jsonl")
    assert model_options(args) == ModelOptions("embedded")
    assert scoring_options(args) == ScoringOptions()
    assert generation_options(args) == GenerationOptions()
    assert read_options(args) == ReadOptions()
    # calibrate has no --method, --chunk-rows or field flags: those keep the defaults
    calibrate = parse("calibrate", "--reference", "r.jsonl", "--store", ":memory:")
    assert scoring_options(calibrate) == ScoringOptions(store=":memory:")
    assert read_options(calibrate) == ReadOptions()


def test_a_loaded_model_is_used_as_it_is(loaded: LoadedModel) -> None:  # noqa: F811
    assert resolve_model(loaded) is loaded


def test_validate_without_model_means_the_runs_model() -> None:
    args = parse("validate", "reports/run", "--dtype", "fp32", "--device", "cpu")
    assert model_options(args) == ModelOptions(None, "fp32", "cpu")
