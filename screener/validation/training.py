"""What a validation trains and how: the settings, and the context manager that gives a
trained copy of the model (LoRA adapters removed afterwards, or a full copy).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from screener.errors import ConfigError
from screener.generate import GenerationSettings
from screener.model import LoadedModel
from screener.records import Sample
from screener.validation.finetune import FinetuneLog, FinetuneSettings, Steer, finetune

FinetuneMethod = Literal["lora", "full"]
FINETUNE_METHODS: tuple[FinetuneMethod, ...] = ("lora", "full")
# Measured on the embedded model (README, "Check the prediction"): with these, one epoch over
# 64 rows moves the evil projection by about +25 on the top rows and stays within ±5 on the rest.
DEFAULT_LEARNING_RATES: dict[str, float] = {"lora": 1e-3, "full": 1e-4}
PEFT_INSTALL = "pip install 'screener[validate]' (or pip install peft)"

DEFAULT_EVAL_TOKENS = 64


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters on every linear layer of the decoder (peft's `all-linear`)."""

    rank: int = 16
    alpha: float = 32.0

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha <= 0:
            raise ConfigError("the LoRA rank must be at least 1 and alpha positive")


@dataclass(frozen=True)
class ValidateSettings:
    """Everything a validation's numbers depend on besides the model and the data."""

    finetune: FinetuneSettings = field(
        default_factory=lambda: FinetuneSettings(learning_rate=DEFAULT_LEARNING_RATES["lora"])
    )
    method: FinetuneMethod = "lora"
    lora: LoraSettings = field(default_factory=LoraSettings)
    steer_coefs: tuple[float, ...] = (0.0,)  # 0 (no steering) is always run
    generation: GenerationSettings = field(
        default_factory=lambda: GenerationSettings(max_new_tokens=DEFAULT_EVAL_TOKENS)
    )

    def __post_init__(self) -> None:
        if self.method not in FINETUNE_METHODS:
            raise ConfigError(f"unknown finetune method {self.method!r}: use lora or full")
        if len(set(self.steer_coefs)) != len(self.steer_coefs):
            raise ConfigError("give each preventative-steering coefficient once")
        if 0 not in self.steer_coefs:  # the unsteered run is what steering is compared with
            object.__setattr__(self, "steer_coefs", (0.0, *self.steer_coefs))

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "finetune": self.finetune.as_dict(),
            "lora": asdict(self.lora) if self.method == "lora" else None,
            "steer_coefs": list(self.steer_coefs),
            "evaluation_generation": self.generation.as_dict(),
        }


def require_peft(
    need: str = "LoRA finetuning", otherwise: str = "; or pass --finetune full for a small model"
) -> Any:
    """The peft module; `need` says what needs it, `otherwise` what to do instead."""
    try:
        import peft
    except ImportError:
        raise ConfigError(f"{need} needs peft: {PEFT_INSTALL}{otherwise}") from None
    return peft


def check_trainable(loaded: LoadedModel, settings: ValidateSettings) -> None:
    if settings.method == "full" and loaded.dtype != torch.float32:
        raise ConfigError(
            f"full finetuning needs fp32 weights (the model is loaded in {loaded.dtype}): "
            "load it with --dtype fp32, or use --finetune lora"
        )
    if settings.method == "lora":
        require_peft()


@contextlib.contextmanager
def trained_model(
    loaded: LoadedModel,
    samples: Sequence[Sample],
    settings: ValidateSettings,
    *,
    steer: Steer | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    save_to: Path | None = None,
) -> Iterator[tuple[LoadedModel, FinetuneLog]]:
    """A copy of `loaded` finetuned on `samples`, for the duration of the block.

    LoRA trains adapters on `loaded.model` itself and removes them on exit, so the model is
    left exactly as it was; `full` trains a deep copy (fp32 weights needed) that is dropped.
    save_to: also write the trained result there with `save_pretrained` before measuring it (the
    LoRA adapter alone, or the full model with its tokenizer), for `screener monitor`.
    """
    torch.manual_seed(settings.finetune.seed)  # the adapters' initial weights
    if settings.method == "lora":
        peft = require_peft()
        config = peft.LoraConfig(
            r=settings.lora.rank,
            lora_alpha=settings.lora.alpha,
            target_modules="all-linear",
            lora_dropout=0.0,
        )
        with warnings.catch_warnings():  # peft asks transformers a deprecated question: noise
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
            wrapped = peft.get_peft_model(loaded.model, config)
        try:
            log = finetune(
                wrapped,
                loaded.tokenizer,
                samples,
                settings.finetune,
                steer=steer,
                progress=progress,
            )
            wrapped.eval()
            if save_to is not None:
                wrapped.save_pretrained(str(save_to))
            yield replace(loaded, model=wrapped.get_base_model()), log
        finally:
            wrapped.unload()  # takes the adapters out: the original modules are back in place
            loaded.model.eval()
        return
    check_trainable(loaded, settings)
    model = copy.deepcopy(loaded.model)
    try:
        log = finetune(
            model, loaded.tokenizer, samples, settings.finetune, steer=steer, progress=progress
        )
        model.eval()
        if save_to is not None:
            model.save_pretrained(str(save_to))
            loaded.tokenizer.save_pretrained(str(save_to))
        yield replace(loaded, model=model), log
    finally:
        del model
