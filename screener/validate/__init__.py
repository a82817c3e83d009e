"""Check a screen's prediction by finetuning, and the mitigation: preventative steering.

- `datasets`: the training sets: top/random/bottom ΔP subsets of a screen run, or user data;
- `finetune`: the training loop (response tokens only, seeded, bf16 autocast on CPU), with
  optional preventative steering;
- `shift`: the trait shift of a model, from its greedy answers to a pack's held-out questions;
- `run`: `validate_run`, behind `screener validate` (validate.json, validate.png, report);
- `preventative`: preventative steering for your own loop: a context manager and a
  transformers TrainerCallback.
"""

from screener.validate.preventative import PreventativeSteeringCallback, preventative_steering
from screener.validate.run import ValidateSettings, ValidationResult, validate, validate_run

__all__ = [
    "PreventativeSteeringCallback",
    "ValidateSettings",
    "ValidationResult",
    "preventative_steering",
    "validate",
    "validate_run",
]
