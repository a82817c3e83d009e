"""Check a screen's prediction by finetuning, and the mitigation: preventative steering.

- `datasets`: the training sets: top/random/bottom ΔP subsets of a screen run, or user data;
- `finetune`: the training loop (response tokens only, seeded, bf16 autocast on CPU), with
  optional preventative steering;
- `shift`: the trait shift of a model, from its greedy answers to a pack's held-out questions;
- `run`: `validate_run`, behind `screener validate` (validate.json, validate.png, report);
- `preventative`: preventative steering for your own loop: a context manager and a
  transformers TrainerCallback.
"""

from typing import Any

# Imported on first use: the Trainer callback pulls in transformers' training stack (and peft,
# when installed), which every `screener` command would otherwise pay for at start-up.
_EXPORTS = {
    "PreventativeSteeringCallback": "screener.validation.preventative",
    "preventative_steering": "screener.validation.preventative",
    "ValidateSettings": "screener.validation.training",
    "ValidationResult": "screener.validation.result",
    "validate": "screener.validation.run",
    "validate_run": "screener.validation.run",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'screener.validation' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
