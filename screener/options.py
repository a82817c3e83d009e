"""The options of every job, as four frozen objects built once and handed down whole.

    from screener import GenerationOptions, ModelOptions, ScoringOptions, screen
    screen("data.jsonl", model=ModelOptions("path/to/model", dtype="bf16"),
           scoring=ScoringOptions(store=":memory:"), generation=GenerationOptions(64))

`screen`, `calibrate`, `run_gate` and the CLI take the same objects, so an option added here
is available to each of them. Each object checks its own values when it is made, and the error
names the CLI flag that sets the value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from screener.activations import DEFAULT_BATCH_TOKENS
from screener.errors import ConfigError
from screener.model import LoadedModel, check_generation_dtype, load_model
from screener.reader import BadRowPolicy, FieldNames
from screener.served import AnswerServer

Method = Literal["delta", "prompt-last"]
METHODS: tuple[Method, ...] = ("delta", "prompt-last")
Engine = Literal["local", "ray"]  # where scores are computed
ENGINES: tuple[Engine, ...] = ("local", "ray")
# Base responses: long enough for the opening of a chat answer, where a persona shows; see the
# README ("Why 128 new tokens") for the measurement behind this default.
DEFAULT_BASE_TOKENS = 128


@dataclass(frozen=True)
class ModelOptions:
    """Which model, in which precision, on which device.

    model: `embedded`, a .gguf file, a local model directory or a Hugging Face model id; None:
        the job's own default (`embedded`; for validate, the model the run was screened with).
    dtype: `auto` (bf16 on GPUs and CPUs with bf16 matrix units, else fp32), `fp32`, `bf16`,
        `fp16`. device: `auto`, `cpu`, `cuda`, `cuda:N`.
    trust_remote_code: let the model run code shipped with it.
    """

    model: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False

    def load(self) -> LoadedModel:
        return load_model(
            self.model or "embedded",
            dtype=self.dtype,
            device=self.device,
            trust_remote_code=self.trust_remote_code,
        )


@dataclass(frozen=True)
class ReadOptions:
    """How the data is read: its format (`auto`: detected per file), field names, and whether a
    bad row is rejected with its reason (`reject`) or stops the run (`fail`)."""

    fmt: str = "auto"
    fields: FieldNames = field(default_factory=FieldNames)
    on_bad_row: BadRowPolicy = "reject"


@dataclass(frozen=True)
class GenerationOptions:
    """How the model's own (greedy) answers are written: at most `max_new_tokens` new tokens,
    in precision `dtype` (`same` as the model's, `fp32` or `bf16`), at most `max_batch_rows`
    prompts at a time (None: the device's default; the KV cache bounds it too); or by a
    `server` that serves the same weights (then `dtype` and `max_batch_rows` do not apply)."""

    max_new_tokens: int = DEFAULT_BASE_TOKENS
    dtype: str = "same"
    max_batch_rows: int | None = None
    server: AnswerServer | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError("--max-new-tokens must be positive")
        if self.max_batch_rows is not None and self.max_batch_rows < 1:
            raise ConfigError("the generation batch size must be at least 1")
        check_generation_dtype(self.dtype)
        if self.server is not None and self.dtype != "same":
            raise ConfigError(
                "--generation-dtype applies to answers written here, not by --generator openai: "
                "the server decides its own precision"
            )


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the ray engine runs.

    address: an existing cluster (`ray://host:10001` or `auto`); None starts a local Ray, or
        uses the one this process already started.
    workers: actors in the pool; each loads the model once.
    gpus_per_worker: GPUs each actor takes (its model then runs on `cuda`); 0 for CPU.
    batch_rows: samples per batch sent to an actor (64: the Python API only).
    """

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0
    batch_rows: int = 64

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError("--workers must be at least 1")
        if self.gpus_per_worker < 0:
            raise ConfigError("--gpus-per-worker cannot be negative")
        if self.batch_rows < 1:
            raise ConfigError("the ray batch size must be at least 1")


@dataclass(frozen=True)
class ScoringOptions:
    """What the scores are taken against and how the work is done.

    vectors: `builtin` (the vectors shipped for the model) or a vector file.
    method: `delta` (ΔP, needs the model's own answers) or `prompt-last` (approximate).
    calibration: `auto` (the file beside the vectors), a calibration file, or `none`/None.
    style_control: take ΔP along the calibration's style-controlled directions.
    max_tokens: longest sequence processed (None: the model's context window).
    max_batch_tokens: padded tokens per forward pass.
    chunk_size: rows scored per step; each step is committed to the run store.
    store: the run store's path (None: under $SCREENER_HOME; `:memory:` keeps nothing).
    engine: `local`, or `ray` (computes what the store lacks with Ray Data first).
    """

    vectors: str | Path = "builtin"
    method: Method = "delta"
    calibration: str | Path | None = "auto"
    style_control: bool = True
    max_tokens: int | None = None
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS
    chunk_size: int = 256
    store: str | Path | None = None
    engine: Engine = "local"
    ray: RayOptions = field(default_factory=RayOptions)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}: use {' or '.join(METHODS)}")
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown engine {self.engine!r}: use {' or '.join(ENGINES)}")
        if self.chunk_size < 1:
            raise ConfigError("--chunk-rows must be at least 1")
        if self.max_batch_tokens < 1:
            raise ConfigError("--batch-tokens must be positive")
        if self.max_tokens is not None and self.max_tokens < 2:
            raise ConfigError("--max-tokens must be at least 2")


def resolve_model(
    model: str | ModelOptions | LoadedModel, progress: Callable[[str], None] | None = None
) -> LoadedModel:
    """The model to work with: loaded already, or loaded now from its name or options (saying
    so to `progress`)."""
    if isinstance(model, LoadedModel):
        return model
    options = model if isinstance(model, ModelOptions) else ModelOptions(model)
    say = progress or (lambda message: None)
    say(f"loading model {options.model or 'embedded'} ...")
    loaded = options.load()
    say(f"loaded {loaded.name} ({loaded.dtype}, {loaded.device}, fingerprint {loaded.fingerprint})")
    return loaded
