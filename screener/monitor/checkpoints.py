"""Trait drift between a base model and its checkpoints: `screener monitor checkpoints`.

    result = monitor_checkpoints("embedded", ["runs/adapters/top-evil", "my-org/finetuned"])
    result.checkpoints[0].shifts["evil"].shift    # > 0: the checkpoint moved toward evil

The base model and each checkpoint answer the traits' held-out questions greedily (the fast
generator), and the answers are projected at each trait's layer onto the base model's vectors
(as `screener validate` measures a finetuned model). A checkpoint's drift per trait is its mean
projection minus the base model's, with a standard error paired by question, and with the
judge's score change where a judge is named.

A checkpoint is a model directory or a model id (loaded like `--model`, in the base model's
precision and device), or a PEFT adapter directory (`adapter_config.json`): the adapter is put
on the base model for its measurement and taken off after, so a checkpoint of the base costs no
second copy of the weights. Every checkpoint is checked before anything loads.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from screener.errors import ConfigError, InputError
from screener.generate import GenerationSettings
from screener.judge import make_judge
from screener.model import DTYPES, LoadedModel, load_model
from screener.monitor.meter import require_answers, trait_questions
from screener.monitor.result import CheckpointDrift, DriftBound, MonitorResult, check_bounds
from screener.options import ModelOptions, resolve_model
from screener.screening.preflight import choose_traits
from screener.traits import load_pack
from screener.validation.result import Shift
from screener.validation.run import judge_mean, judge_shift, measure
from screener.validation.training import DEFAULT_EVAL_TOKENS, require_peft
from screener.vectors.store import load_vectors

ADAPTER_CONFIG = "adapter_config.json"


def checkpoint_kind(spec: str) -> str:
    """`adapter` (a PEFT adapter directory) or `model` (a model directory or id); raises for a
    path that is neither."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / ADAPTER_CONFIG).exists():
            return "adapter"
        if (path / "config.json").exists():
            return "model"
        raise InputError(
            f"neither a model directory (config.json) nor a PEFT adapter ({ADAPTER_CONFIG}): "
            "pass what save_pretrained wrote",
            source=spec,
        )
    if path.suffix.lower() == ".gguf" and path.is_file():
        return "model"
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise InputError(
            "no such checkpoint: expected a model directory, a PEFT adapter directory, a .gguf "
            "file or a Hugging Face model id (owner/name)",
            source=spec,
        )
    return "model"  # a model id: the loader says whether it is available here


@contextmanager
def checkpoint_model(spec: str, kind: str, base: LoadedModel) -> Iterator[LoadedModel]:
    """The checkpoint, loaded for the duration of the block."""
    if kind == "adapter":
        peft = require_peft(f"the adapter {spec}", "")
        with warnings.catch_warnings():  # peft asks transformers a deprecated question: noise
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
            wrapped = peft.PeftModel.from_pretrained(base.model, spec)
        try:
            wrapped.eval()
            name = f"{base.name}+{spec}"
            yield replace(base, model=wrapped.get_base_model(), spec=spec, name=name)
        finally:
            wrapped.unload()  # the base model's own modules are back in place
            base.model.eval()
        return
    dtype = next(name for name, value in DTYPES.items() if value == base.dtype)
    loaded = load_model(
        spec,
        dtype=dtype,
        device=str(base.device),
        trust_remote_code=base.trust_remote_code,
    )
    width, expected = loaded.model.config.hidden_size, base.model.config.hidden_size
    if width != expected:
        raise ConfigError(
            f"{spec}: hidden size {width}, the base model's is {expected}: a checkpoint must be "
            "a finetune of the base model (its vectors are measured in its activation space)"
        )
    yield loaded


def monitor_checkpoints(
    base: str | ModelOptions | LoadedModel,
    checkpoints: Sequence[str],
    *,
    traits: Sequence[str] | None = None,
    vectors: str | Path = "builtin",
    questions: int | None = None,
    eval_tokens: int = DEFAULT_EVAL_TOKENS,
    judge: str = "none",
    bounds: Sequence[DriftBound] = (),
    progress: Callable[[str], None] | None = None,
    command: str = "",
) -> MonitorResult:
    """Measure `base` and every checkpoint on the traits' held-out questions (all of them, or
    the first `questions`), and each checkpoint's drift from `base`. `bounds` are checked
    against the traits before anything loads (`MonitorResult.failures` applies them)."""
    say = progress or (lambda message: None)
    if not checkpoints:
        raise ConfigError("name at least one checkpoint to compare with the base model")
    kinds = [checkpoint_kind(spec) for spec in checkpoints]  # every path checked before loading
    for spec, kind in zip(checkpoints, kinds, strict=True):
        if kind == "adapter":
            require_peft(f"the adapter {spec}", "")
    vector_file = load_vectors(vectors)
    chosen = choose_traits(vector_file, traits)
    asked = trait_questions(chosen, questions)
    generation = GenerationSettings(max_new_tokens=eval_tokens)
    check_bounds(bounds, chosen)
    options = base if isinstance(base, ModelOptions) else None
    scorer = make_judge(
        judge,
        dtype=options.dtype if options else "auto",
        device=options.device if options else "auto",
    )
    loaded = resolve_model(base, say)
    vector_file.check_model(loaded)
    packs = {trait: load_pack(trait) for trait in chosen}
    count = sum(map(len, asked.values()))
    say(f"measuring the base model on {count} held-out questions")
    baseline = measure(loaded, vector_file, chosen, asked, generation)
    require_answers(
        baseline, "the base model", "raise --eval-tokens, or check the model's chat template"
    )
    result = MonitorResult(
        base=loaded.identity(),
        traits=chosen,
        questions={trait: len(found) for trait, found in asked.items()},
        generation=generation,
        baseline=baseline,
        judge=None if scorer is None else scorer.name,
        command=command,
    )
    if scorer is not None:
        result.baseline_judge = {t: judge_mean(scorer, packs[t], baseline[t]) for t in chosen}
    for number, (spec, kind) in enumerate(zip(checkpoints, kinds, strict=True), 1):
        say(f"[{number}/{len(checkpoints)}] {spec} ({kind}): answering the questions")
        with checkpoint_model(spec, kind, loaded) as checkpoint:
            after = measure(checkpoint, vector_file, chosen, asked, generation)
        del checkpoint  # a full checkpoint's weights go before the next one loads
        shifts = {
            trait: Shift.between(
                baseline[trait],
                after[trait],
                judge_shift(scorer, packs[trait], after[trait], result.baseline_judge, trait),
            )
            for trait in chosen
        }
        result.checkpoints.append(CheckpointDrift(spec, kind, shifts, after[chosen[0]].answers[0]))
        say(
            f"[{number}/{len(checkpoints)}] {spec}: "
            + ", ".join(f"{t} {s.shift:+.2f} ± {s.standard_error:.2f}" for t, s in shifts.items())
        )
    return result
