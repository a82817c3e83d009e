"""Validate a screen by finetuning: train the target model on each training set (with and
without preventative steering), measure how far each trained model moved toward every trait,
and compare that with the screen's dataset-level ΔP.

    result = validate_run(Path("reports/screen-data"))   # top/random/bottom 64 rows by ΔP
    result.runs[0].shifts["evil"].shift                   # > 0: the model became more evil
    result.correlation()["evil"]                          # Pearson r of ΔP against the shift

Stages: choose and read the training sets (`datasets`); measure the untouched model once per
trait (`shift`); for every training set and steering coefficient, train (`finetune`; LoRA
adapters that are removed afterwards, or a full copy of the model) and measure again; write
validate.json and validate.png into the run directory and re-render its report.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from screener.atomic import atomic_path, write_text_atomic
from screener.errors import ConfigError, ScreenerError
from screener.generate import GenerationSettings
from screener.judge import Judge, make_judge
from screener.model import LoadedModel, load_model
from screener.reader import read_dataset
from screener.records import Sample
from screener.report import VALIDATE_JSON, VALIDATE_PLOT, load_run, write_report
from screener.screening.scoring import DEFAULT_BASE_TOKENS
from screener.traits import TraitPack, load_pack
from screener.validation.datasets import (
    SUBSET_KINDS,
    TrainingSet,
    choose_subsets,
    load_subsets,
    reader_options,
)
from screener.validation.finetune import FinetuneLog, FinetuneSettings, Steer, finetune
from screener.validation.shift import (
    AnswerProjections,
    answer_projections,
    shift_standard_error,
    trait_shift,
)
from screener.vectors.store import VectorFile, load_vectors

FinetuneMethod = Literal["lora", "full"]
FINETUNE_METHODS: tuple[FinetuneMethod, ...] = ("lora", "full")
# Measured on the embedded model (README, "Check the prediction"): with these, one epoch over
# 64 rows moves the evil projection by about +25 on the top rows and stays within ±5 on the rest.
DEFAULT_LEARNING_RATES: dict[str, float] = {"lora": 1e-3, "full": 1e-4}
DEFAULT_EVAL_TOKENS = 64
DEFAULT_SUBSET_SIZE = 64
PEFT_INSTALL = "pip install 'screener[validate]' (or pip install peft)"


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


@dataclass(frozen=True)
class Shift:
    """How far a trained model moved toward one trait, with the standard error of that."""

    shift: float
    standard_error: float
    after_mean: float
    answers: int
    judge_shift: float | None = None  # the judge's mean trait score (0-100) after minus before


@dataclass
class TrainingRun:
    """One finetune: a training set, a steering coefficient, and what it did to the model."""

    training_set: str
    steer_coef: float
    steer_trait: str | None  # None when not steered
    shifts: dict[str, Shift]
    samples: int  # trained on; the rest had no response token within max_tokens
    skipped: int
    steps: int
    first_loss: float
    last_loss: float
    seconds: float
    example_answer: str  # the trained model's answer to the first question of the first trait


@dataclass
class ValidationResult:
    """A finished validation; `to_json` is what validate.json holds."""

    traits: tuple[str, ...]
    settings: ValidateSettings
    training_sets: list[TrainingSet]
    baseline: dict[str, AnswerProjections]
    runs: list[TrainingRun]
    score: str = "delta"
    judge: str | None = None  # the judge's name, when one scored the answers
    baseline_judge: dict[str, float | None] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    command: str = ""

    def unsteered(self) -> list[TrainingRun]:
        return [run for run in self.runs if run.steer_coef == 0]

    def correlation(self) -> dict[str, float | None]:
        """Per trait, Pearson r between the training sets' dataset-level score and the
        measured shift of the unsteered runs (None with fewer than 3 sets or no spread)."""
        scores = {ts.name: ts.scores for ts in self.training_sets}
        found: dict[str, float | None] = {}
        for trait in self.traits:
            pairs = [
                (scores[run.training_set].get(trait, math.nan), run.shifts[trait].shift)
                for run in self.unsteered()
            ]
            pairs = [(x, y) for x, y in pairs if math.isfinite(x) and math.isfinite(y)]
            found[trait] = pearson_r(pairs)
        return found

    def ordering(self) -> dict[str, dict[str, Any]]:
        """Per trait that ranked a top and a bottom subset (with the random one): the unsteered
        shifts of top, random and bottom, and whether top > random > bottom (None when a shift
        could not be measured)."""
        shifts = {run.training_set: run.shifts for run in self.unsteered()}
        found: dict[str, dict[str, Any]] = {}
        for trait in self.traits:
            names = [f"top-{trait}", "random", f"bottom-{trait}"]
            if all(name in shifts for name in names):
                values = [shifts[name][trait].shift for name in names]
                found[trait] = {
                    "shifts": dict(zip(names, values, strict=True)),
                    "holds": values[0] > values[1] > values[2]
                    if all(math.isfinite(v) for v in values)
                    else None,
                }
        return found

    def to_json(self) -> dict[str, Any]:
        import transformers

        from screener import __version__

        correlation = self.correlation()
        document = {
            "traits": list(self.traits),
            "score": self.score,
            "settings": self.settings.as_dict(),
            "judge": self.judge,
            "model": self.model,
            "baseline": {
                trait: {
                    "mean": answers.mean,
                    "standard_error": answers.standard_error,
                    "answers": len(answers.projections),
                    "judge_mean": self.baseline_judge.get(trait),
                }
                for trait, answers in self.baseline.items()
            },
            "training_sets": [
                {
                    "name": ts.name,
                    "origin": ts.origin,
                    "samples": len(ts.samples),
                    "rejected_rows": ts.rejected,
                    "dataset_" + self.score: ts.scores,
                    "ids": ts.ids,
                }
                for ts in self.training_sets
            ],
            "runs": [
                {
                    "training_set": run.training_set,
                    "steer_coef": run.steer_coef,
                    "steer_trait": run.steer_trait,
                    "samples_trained": run.samples,
                    "samples_skipped": run.skipped,
                    "shift": {trait: asdict(shift) for trait, shift in run.shifts.items()},
                    "steps": run.steps,
                    "first_loss": run.first_loss,
                    "last_loss": run.last_loss,
                    "seconds": run.seconds,
                    "example_answer": run.example_answer,
                }
                for run in self.runs
            ],
            "pearson_r": correlation,
            "ordering": self.ordering(),
            "notes": self.notes,
            "versions": {
                "screener": __version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
            "command": self.command,
        }
        return _without_nan(document)


def _without_nan(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nan(item) for item in value]
    return value


def pearson_r(pairs: Sequence[tuple[float, float]]) -> float | None:
    """Pearson correlation of (x, y) pairs; None with fewer than 3 or when x or y is constant."""
    if len(pairs) < 3:
        return None
    x, y = (np.asarray(values, dtype=np.float64) for values in zip(*pairs, strict=True))
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _require_peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ConfigError(
            f"LoRA finetuning needs peft: {PEFT_INSTALL}; or pass --finetune full for a small model"
        ) from None
    return peft


def _check_trainable(loaded: LoadedModel, settings: ValidateSettings) -> None:
    if settings.method == "full" and loaded.dtype != torch.float32:
        raise ConfigError(
            f"full finetuning needs fp32 weights (the model is loaded in {loaded.dtype}): "
            "load it with --dtype fp32, or use --finetune lora"
        )
    if settings.method == "lora":
        _require_peft()


@contextlib.contextmanager
def trained_model(
    loaded: LoadedModel,
    samples: Sequence[Sample],
    settings: ValidateSettings,
    *,
    steer: Steer | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> Iterator[tuple[LoadedModel, FinetuneLog]]:
    """A copy of `loaded` finetuned on `samples`, for the duration of the block.

    LoRA trains adapters on `loaded.model` itself and removes them on exit, so the model is
    left exactly as it was; `full` trains a deep copy (fp32 weights needed) that is dropped.
    """
    torch.manual_seed(settings.finetune.seed)  # the adapters' initial weights
    if settings.method == "lora":
        peft = _require_peft()
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
            yield replace(loaded, model=wrapped.get_base_model()), log
        finally:
            wrapped.unload()  # takes the adapters out: the original modules are back in place
            loaded.model.eval()
        return
    _check_trainable(loaded, settings)
    model = copy.deepcopy(loaded.model)
    try:
        log = finetune(
            model, loaded.tokenizer, samples, settings.finetune, steer=steer, progress=progress
        )
        model.eval()
        yield replace(loaded, model=model), log
    finally:
        del model


def measure(
    loaded: LoadedModel,
    vectors: VectorFile,
    traits: Sequence[str],
    questions: dict[str, tuple[str, ...]],
    generation: GenerationSettings,
) -> dict[str, AnswerProjections]:
    """Per trait, the projections of the model's greedy answers to the trait's questions."""
    return {
        trait: answer_projections(
            loaded,
            questions[trait],
            vectors.trait(trait).unit(),
            vectors.trait(trait).chosen_layer,
            generation,
        )
        for trait in traits
    }


def judge_mean(judge: Judge, pack: TraitPack, answers: AnswerProjections) -> float | None:
    """The judge's mean trait score (0-100) of the non-empty answers to the pack's held-out
    questions (None when it scored none of them)."""
    pairs = [(q, a) for q, a in zip(pack.eval_questions, answers.answers, strict=True) if a]
    scores = [s for s in judge.score([pack.judge_prompt(q, a) for q, a in pairs]) if s is not None]
    return sum(scores) / len(scores) if scores else None


def validate(
    loaded: LoadedModel,
    vectors: VectorFile,
    training_sets: Sequence[TrainingSet],
    traits: Sequence[str],
    settings: ValidateSettings,
    *,
    score: str = "delta",
    progress: Callable[[str], None] | None = None,
    step_progress: Callable[[str, int, int, float], None] | None = None,
    judge: Judge | None = None,
) -> ValidationResult:
    """Finetune on every training set with every steering coefficient and measure each trained
    model's shift for every trait, against the untouched model measured once.

    Steering adds the unit vector of the trait a set was chosen by (else the first trait) at
    that trait's layer.
    step_progress(label, step, steps, loss) reports every training step. A `judge` also scores
    every answer for its trait (the pack's rubric), before and after.
    """
    say = progress or (lambda message: None)
    if not training_sets:
        raise ConfigError("nothing to validate: no training set")
    if not traits:
        raise ConfigError("name at least one trait to measure")
    for trait in traits:
        vectors.trait(trait)  # raises naming the traits the file has
    _check_trainable(loaded, settings)  # before the first measurement, not after it
    for training_set in training_sets:
        if not training_set.samples:
            raise ConfigError(f"training set {training_set.name} has no usable sample")
    packs = {trait: load_pack(trait) for trait in traits}
    questions = {trait: pack.eval_questions for trait, pack in packs.items()}
    say(f"measuring the untouched model on {sum(map(len, questions.values()))} held-out questions")
    baseline = measure(loaded, vectors, traits, questions, settings.generation)
    for trait, answers in baseline.items():
        if not len(answers.projections):
            raise ScreenerError(
                f"the untouched model gave no usable answer to {trait}'s questions: it cannot "
                "be measured (raise --eval-tokens, or check the model's chat template)"
            )
    result = ValidationResult(tuple(traits), settings, list(training_sets), baseline, [], score)
    if judge is not None:
        result.judge = judge.name
        result.baseline_judge = {t: judge_mean(judge, packs[t], baseline[t]) for t in traits}
    total = len(training_sets) * len(settings.steer_coefs)
    for training_set in training_sets:
        steered = training_set.trait or traits[0]
        for coef in settings.steer_coefs:
            label = f"[{len(result.runs) + 1}/{total}] {training_set.name}"
            if coef:
                label += f" steer {steered} {coef:g}"
            steer = (
                Steer(vectors.trait(steered).chosen_layer, vectors.trait(steered).unit(), coef)
                if coef
                else None
            )
            started = time.perf_counter()
            say(f"{label}: finetuning on {len(training_set.samples)} samples")
            report = None if step_progress is None else partial(step_progress, label)
            with trained_model(
                loaded, training_set.samples, settings, steer=steer, progress=report
            ) as (trained, log):
                after = measure(trained, vectors, traits, questions, settings.generation)
            shifts = {
                trait: Shift(
                    trait_shift(baseline[trait], after[trait]),
                    shift_standard_error(baseline[trait], after[trait]),
                    after[trait].mean,
                    len(after[trait].projections),
                    _judge_shift(judge, packs[trait], after[trait], result.baseline_judge, trait),
                )
                for trait in traits
            }
            silent = [trait for trait in traits if not len(after[trait].projections)]
            if silent:
                result.notes.append(
                    f"after training on {training_set.name} (steering {coef:g}) the model gave "
                    f"no usable answer to the questions of {', '.join(silent)}: no shift "
                    "measured; lower the learning rate or the epochs"
                )
            result.runs.append(
                TrainingRun(
                    training_set.name,
                    float(coef),
                    steered if coef else None,
                    shifts,
                    log.samples,
                    log.skipped,
                    len(log.losses),
                    log.losses[0],
                    log.losses[-1],
                    round(time.perf_counter() - started, 1),
                    after[traits[0]].answers[0] if after[traits[0]].answers else "",
                )
            )
            say(
                f"{label}: "
                + ", ".join(
                    f"{t} shift {s.shift:+.2f} ± {s.standard_error:.2f}" for t, s in shifts.items()
                )
            )
    return result


def _judge_shift(
    judge: Judge | None,
    pack: TraitPack,
    after: AnswerProjections,
    baseline: dict[str, float | None],
    trait: str,
) -> float | None:
    if judge is None:
        return None
    before, now = baseline.get(trait), judge_mean(judge, pack, after)
    return None if before is None or now is None else now - before


def _vectors_for_run(
    summary: dict[str, Any], spec: str | Path | None, loaded: LoadedModel
) -> VectorFile:
    path = spec or (summary.get("vectors") or {}).get("path") or "builtin"
    if spec is None and path != "builtin" and not Path(path).exists():
        raise ConfigError(f"the vector file the run used, {path}, is gone: pass --vectors")
    return load_vectors(path, model=loaded)


def _user_training_sets(
    datasets: Sequence[str | Path],
    loaded: LoadedModel,
    vectors: VectorFile,
    traits: Sequence[str],
    max_new_tokens: int,
    say: Callable[[str], None],
) -> list[TrainingSet]:
    """Screen each user dataset (for its dataset-level ΔP, with base responses as long as the
    run's) and read its usable rows."""
    from screener.options import GenerationOptions, ScoringOptions
    from screener.screening.run import screen

    scoring = ScoringOptions(vectors=vectors.path or "builtin", calibration=None)
    sets: list[TrainingSet] = []
    for path in datasets:
        say(f"screening {path} for its dataset-level ΔP")
        screened = screen(
            path,
            model=loaded,
            traits=traits,
            scoring=scoring,
            generation=GenerationOptions(max_new_tokens),
        )
        scored = {(sample.source, sample.line) for sample in screened.samples}
        samples = [
            record
            for record in read_dataset(path)
            if isinstance(record, Sample) and (record.source, record.line) in scored
        ]
        name = Path(path).stem
        while any(existing.name == name for existing in sets):
            name += "'"
        sets.append(
            TrainingSet(
                name,
                str(path),
                samples,
                {t: _or_nan(screened.dataset_scores[t].mean) for t in traits},
                rejected=len(screened.rejected),
                ids=[s.id for s in samples],
            )
        )
    return sets


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def validate_run(
    run_dir: Path,
    *,
    traits: Sequence[str] | None = None,
    subsets: Sequence[str] = SUBSET_KINDS,
    size: int = DEFAULT_SUBSET_SIZE,
    datasets: Sequence[str | Path] = (),
    data: str | Path | None = None,
    model: str | LoadedModel | None = None,
    vectors: str | Path | None = None,
    dtype: str = "auto",
    device: str = "auto",
    settings: ValidateSettings | None = None,
    seed: int = 0,
    trust_remote_code: bool = False,
    judge: str = "none",
    progress: Callable[[str], None] | None = None,
    step_progress: Callable[[str, int, int, float], None] | None = None,
    command: str = "",
) -> ValidationResult:
    """Validate the screen run in `run_dir`: finetune on `subsets` of its rows (`size` each,
    ranked by each of `traits`, default the run's first trait) or on the user's `datasets`,
    and write validate.json, validate.png and the report's validation section there.

    data: where the screened data is now (default: the path the run recorded).
    judge: `none`, `openai:MODEL@BASE_URL` or `local:MODEL`: also score the answers 0-100.
    model: default the model the run used; full finetuning loads it in fp32 when dtype is auto.
    """
    say = progress or (lambda message: None)
    settings = settings or ValidateSettings()
    run = load_run(run_dir)
    summary = run.summary
    run_traits = list(summary.get("traits", {}))
    chosen = list(dict.fromkeys(traits or run_traits[:1]))
    if not chosen:
        raise ConfigError(f"{run_dir}/summary.json lists no trait; pass --traits")
    score = str(summary.get("score", "delta"))
    if not datasets:  # chosen and read before the model loads: mistakes show at once
        for trait in chosen:
            if trait not in run_traits:
                raise ConfigError(
                    f"trait {trait!r} was not screened in {run_dir} (it has "
                    f"{', '.join(run_traits)}): screen with it, or validate another trait"
                )
        fmt, fields = reader_options(summary)
        choices = [
            choice
            for position, trait in enumerate(chosen)
            for choice in choose_subsets(
                run.scores,
                trait,
                [k for k in subsets if k != "random" or position == 0],  # one random draw
                size,
                seed=seed,
                score=score,
                traits=chosen,
            )
        ]
        recorded = summary.get("data")
        source = data or recorded
        if not source:
            raise ConfigError(f"{run_dir}/summary.json does not say which data was screened")
        training_sets = load_subsets(
            choices,
            source,
            fmt=fmt,
            fields=fields,
            run_name=str(run_dir),
            recorded=recorded if data else None,
        )
    scorer = make_judge(judge, dtype=dtype, device=device)
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        spec = model or (summary.get("model") or {}).get("spec") or "embedded"
        wanted = "fp32" if dtype == "auto" and settings.method == "full" else dtype
        say(f"loading model {spec} ...")
        loaded = load_model(spec, dtype=wanted, device=device, trust_remote_code=trust_remote_code)
    _check_trainable(loaded, settings)  # before any dataset is screened
    vector_file = _vectors_for_run(summary, vectors, loaded)
    if datasets:
        generation = summary.get("generation") or {}
        base_tokens = int(generation.get("max_new_tokens", DEFAULT_BASE_TOKENS))
        training_sets = _user_training_sets(datasets, loaded, vector_file, chosen, base_tokens, say)
        score = "delta"
    result = validate(
        loaded,
        vector_file,
        training_sets,
        chosen,
        settings,
        score=score,
        progress=say,
        step_progress=step_progress,
        judge=scorer,
    )
    result.model = loaded.identity()
    result.command = command
    write_validation(result, run_dir)
    write_report(run_dir)
    return result


def write_validation(result: ValidationResult, run_dir: Path) -> list[Path]:
    """validate.json and validate.png (ΔP against the measured shift, one panel per trait)."""
    from screener.report.plots import validation_plot

    document = result.to_json()
    json_path = run_dir / VALIDATE_JSON
    write_text_atomic(
        json_path, json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    )
    plot_path = run_dir / VALIDATE_PLOT
    with atomic_path(plot_path) as temporary:
        temporary.write_bytes(validation_plot(document))
    return [json_path, plot_path]
