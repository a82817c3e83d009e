"""Validate a screen by finetuning: train the target model on each training set (with and
without preventative steering), measure how far each trained model moved toward every trait,
and compare that with the screen's dataset-level ΔP.

    result = validate_run(Path("reports/screen-data"))   # top/random/bottom 64 rows by ΔP
    result.runs[0].shifts["evil"].shift                   # > 0: the model became more evil
    result.correlation()["evil"]                          # Pearson r of ΔP against the shift

Stages: choose and read the training sets (`datasets`); measure the untouched model once per
trait (`shift`); for every training set and steering coefficient, train (`training`, over
`finetune`; LoRA adapters that are removed afterwards, or a full copy of the model) and measure
again; write validate.json and validate.png into the run directory (`result`) and re-render
its report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

from screener.errors import ConfigError, ScreenerError
from screener.generate import GenerationSettings
from screener.judge import Judge, make_judge
from screener.model import LoadedModel
from screener.options import ModelOptions, resolve_model
from screener.paths import safe_file_name
from screener.reader import read_dataset
from screener.records import Sample
from screener.report import write_report
from screener.run_directory import load_run
from screener.run_summary import RunSummary
from screener.screening.scoring import DEFAULT_BASE_TOKENS
from screener.traits import TraitPack, load_pack
from screener.validation.datasets import (
    SUBSET_KINDS,
    TrainingSet,
    choose_subsets,
    load_subsets,
)
from screener.validation.finetune import Steer
from screener.validation.result import Shift, TrainingRun, ValidationResult, write_validation
from screener.validation.shift import AnswerProjections, answer_projections
from screener.validation.training import (
    ValidateSettings,
    check_trainable,
    trained_model,
)
from screener.vectors.store import VectorFile, load_vectors

DEFAULT_SUBSET_SIZE = 64


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
    """The judge's mean trait score (0-100) of the non-empty answers to the pack's first
    held-out questions, one answer per question in order (None when it scored none of them)."""
    asked = pack.eval_questions[: len(answers.answers)]  # all, or `--questions N` of them
    pairs = [(q, a) for q, a in zip(asked, answers.answers, strict=True) if a]
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
    save_models: Path | None = None,
) -> ValidationResult:
    """Finetune on every training set with every steering coefficient and measure each trained
    model's shift for every trait, against the untouched model measured once.

    save_models: a directory that gets each trained model (the LoRA adapter, or the full model)
    in a subdirectory named after its training set (and steering), for `screener monitor`.

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
    check_trainable(loaded, settings)  # before the first measurement, not after it
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
            saved = None
            if save_models is not None:
                suffix = f"-steer-{steered}-{coef:g}" if coef else ""
                saved = save_models / safe_file_name(f"{training_set.name}{suffix}")
            with trained_model(
                loaded, training_set.samples, settings, steer=steer, progress=report, save_to=saved
            ) as (trained, log):
                after = measure(trained, vectors, traits, questions, settings.generation)
            shifts = {
                trait: Shift.between(
                    baseline[trait],
                    after[trait],
                    judge_shift(judge, packs[trait], after[trait], result.baseline_judge, trait),
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
                    None if saved is None else str(saved),
                )
            )
            say(
                f"{label}: "
                + ", ".join(
                    f"{t} shift {s.shift:+.2f} ± {s.standard_error:.2f}" for t, s in shifts.items()
                )
            )
    return result


def judge_shift(
    judge: Judge | None,
    pack: TraitPack,
    after: AnswerProjections,
    baseline: dict[str, float | None],
    trait: str,
) -> float | None:
    """The judge's mean score of `after` minus the baseline's (None without a judge or a score)."""
    if judge is None:
        return None
    before, now = baseline.get(trait), judge_mean(judge, pack, after)
    return None if before is None or now is None else now - before


def _vectors_for_run(
    summary: RunSummary, spec: str | Path | None, loaded: LoadedModel
) -> VectorFile:
    path = spec or summary.vectors.path or "builtin"
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
            label=False,  # its means and scored rows are all that is used: no second read
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
    model: str | ModelOptions | LoadedModel | None = None,
    vectors: str | Path | None = None,
    settings: ValidateSettings | None = None,
    seed: int = 0,
    judge: str = "none",
    progress: Callable[[str], None] | None = None,
    step_progress: Callable[[str, int, int, float], None] | None = None,
    command: str = "",
    save_models: Path | None = None,
) -> ValidationResult:
    """Validate the screen run in `run_dir`: finetune on `subsets` of its rows (`size` each,
    ranked by each of `traits`, default the run's first trait) or on the user's `datasets`,
    and write validate.json, validate.png and the report's validation section there.

    data: where the screened data is now (default: the path the run recorded).
    judge: `none`, `openai:MODEL@BASE_URL` or `local:MODEL`: also score the answers 0-100.
    save_models: keep each trained model (LoRA adapter or full model) in a subdirectory here.
    model: a model, its name or its options; the model the run used where none is named. Full
        finetuning loads it in fp32 when its dtype is auto. A local judge uses its dtype and
        device.
    """
    say = progress or (lambda message: None)
    settings = settings or ValidateSettings()
    run = load_run(run_dir)
    summary = run.summary
    run_traits = list(summary.traits)
    chosen = list(dict.fromkeys(traits or run_traits[:1]))
    if not chosen:
        raise ConfigError(f"{run_dir}/summary.json lists no trait; pass --traits")
    score = summary.score
    if not datasets:  # chosen and read before the model loads: mistakes show at once
        for trait in chosen:
            if trait not in run_traits:
                raise ConfigError(
                    f"trait {trait!r} was not screened in {run_dir} (it has "
                    f"{', '.join(run_traits)}): screen with it, or validate another trait"
                )
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
        recorded = summary.data
        training_sets = load_subsets(
            choices,
            data or recorded,
            fmt=summary.reader_format,
            fields=summary.fields,
            run_name=str(run_dir),
            recorded=recorded if data else None,
        )
    options = (
        model
        if isinstance(model, ModelOptions)
        else ModelOptions(None if isinstance(model, LoadedModel) else model)
    )
    scorer = make_judge(judge, dtype=options.dtype, device=options.device)
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        spec = options.model or summary.model.spec
        full_in_fp32 = options.dtype == "auto" and settings.method == "full"
        loaded = resolve_model(
            replace(options, model=spec, dtype="fp32" if full_in_fp32 else options.dtype), say
        )
    check_trainable(loaded, settings)  # before any dataset is screened
    vector_file = _vectors_for_run(summary, vectors, loaded)
    if datasets:
        generation = summary.generation
        base_tokens = DEFAULT_BASE_TOKENS if generation is None else generation.max_new_tokens
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
        save_models=save_models,
    )
    result.model = loaded.identity()
    result.command = command
    write_validation(result, run_dir)
    write_report(run_dir)
    return result
