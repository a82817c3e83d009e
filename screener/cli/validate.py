"""`screener validate`: finetune copies of the model on subsets of a screen run and measure
the trait shift, to check the screen's prediction (and try preventative steering)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from screener.cli.common import (
    EXIT_OK,
    add_model_options,
    add_quiet_option,
    comma_separated,
    model_options,
    progress_printer,
)


def _coefficients(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0,10,20, got {text!r}"
        ) from exc


def register(commands: Any) -> None:
    from screener.validation.datasets import SUBSET_KINDS
    from screener.validation.finetune import FinetuneSettings
    from screener.validation.run import DEFAULT_SUBSET_SIZE
    from screener.validation.training import (
        DEFAULT_EVAL_TOKENS,
        DEFAULT_LEARNING_RATES,
        FINETUNE_METHODS,
        LoraSettings,
    )

    defaults = FinetuneSettings()
    lora = LoraSettings()
    validate = commands.add_parser(
        "validate",
        help="check a screen by finetuning on high, random and low ΔP subsets",
        description="Finetune copies of the run's model on equal-sized subsets of a screen run "
        "(the rows with the highest ΔP for a trait, a random draw, the lowest) or on datasets "
        "you name, and measure how far each finetuned model moves toward the trait: the mean "
        "projection of its greedy answers to the trait's held-out questions minus the "
        "untouched model's. Writes validate.json and validate.png into RUN_DIR and adds a "
        "section to its report. --preventative-steer adds the trait's vector during training "
        "to show the mitigation.",
    )
    validate.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a screen run's --out")
    validate.add_argument(
        "--traits",
        type=comma_separated,
        default=None,
        help="traits to rank subsets by and to measure (default: the run's first trait); "
        "each adds its top and bottom subsets (the random one is shared)",
    )
    validate.add_argument(
        "--subsets",
        type=comma_separated,
        default=list(SUBSET_KINDS),
        help=f"which subsets (default {','.join(SUBSET_KINDS)})",
    )
    validate.add_argument(
        "--size",
        type=int,
        default=DEFAULT_SUBSET_SIZE,
        help=f"rows per subset (default {DEFAULT_SUBSET_SIZE})",
    )
    validate.add_argument(
        "--datasets",
        nargs="+",
        default=None,
        metavar="DATA",
        help="finetune on these datasets instead of subsets (each is screened for its ΔP)",
    )
    validate.add_argument(
        "--data",
        default=None,
        help="where the screened data is now, if it moved (default: the path the run recorded)",
    )
    validate.add_argument(
        "--finetune",
        default="lora",
        choices=FINETUNE_METHODS,
        help="lora (default; needs peft: pip install 'screener[validate]') or full "
        "(small models: trains an fp32 copy)",
    )
    validate.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="default "
        + ", ".join(f"{method} {rate:g}" for method, rate in DEFAULT_LEARNING_RATES.items()),
    )
    validate.add_argument("--epochs", type=int, default=defaults.epochs, help="default 1")
    validate.add_argument("--batch-size", type=int, default=defaults.batch_size, help="default 8")
    validate.add_argument(
        "--max-tokens",
        type=int,
        default=defaults.max_tokens,
        help=f"tokens per training conversation (default {defaults.max_tokens})",
    )
    validate.add_argument("--lora-rank", type=int, default=lora.rank, help="default 16")
    validate.add_argument(
        "--seed", type=int, default=0, help="subset draw and training (default 0)"
    )
    validate.add_argument(
        "--eval-tokens",
        type=int,
        default=DEFAULT_EVAL_TOKENS,
        help=f"new tokens per evaluation answer (default {DEFAULT_EVAL_TOKENS})",
    )
    validate.add_argument(
        "--preventative-steer",
        type=_coefficients,
        default=[0.0],
        metavar="COEF[,COEF...]",
        help="add COEF times the trait's unit vector at its layer during finetuning only; "
        "a list sweeps (0 = unsteered), e.g. 0,10,20,40",
    )
    validate.add_argument(
        "--vectors", default=None, help="vector file (default: the one the run used)"
    )
    validate.add_argument(
        "--judge",
        default="none",
        help="also score every answer 0-100 with the trait pack's rubric: none (default), "
        "openai:MODEL@BASE_URL (key from $SCREENER_API_KEY) or local:MODEL",
    )
    validate.add_argument(
        "--save-models",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep every trained model in DIR/<training set> (the LoRA adapter, or the full "
        "model), e.g. for screener monitor checkpoints",
    )
    add_model_options(validate, model_default_help="the model the run used")
    add_quiet_option(validate)
    validate.set_defaults(run=_run_validate)


class StepBar:
    """One progress bar per finetune on a terminal; a line every tenth of the steps elsewhere."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.terminal = sys.stderr.isatty()

    def __call__(self, label: str, step: int, steps: int, loss: float) -> None:
        if self.quiet:
            return
        filled = round(20 * step / steps)
        line = f"{label} [{'#' * filled}{'.' * (20 - filled)}] step {step}/{steps} loss {loss:.3f}"
        if self.terminal:
            print("\r" + line, end="\n" if step == steps else "", file=sys.stderr, flush=True)
        elif step == steps or step % max(1, steps // 10) == 0:
            print(line, file=sys.stderr)


def _run_validate(args: argparse.Namespace) -> int:
    from screener.generate import GenerationSettings
    from screener.validation.finetune import FinetuneSettings
    from screener.validation.run import validate_run
    from screener.validation.training import (
        DEFAULT_LEARNING_RATES,
        LoraSettings,
        ValidateSettings,
    )

    coefs = list(dict.fromkeys(args.preventative_steer))
    settings = ValidateSettings(
        finetune=FinetuneSettings(
            learning_rate=DEFAULT_LEARNING_RATES[args.finetune]
            if args.learning_rate is None
            else args.learning_rate,
            epochs=args.epochs,
            batch_size=args.batch_size,
            max_tokens=args.max_tokens,
            seed=args.seed,
        ),
        method=args.finetune,
        lora=LoraSettings(rank=args.lora_rank),
        steer_coefs=tuple(coefs),
        generation=GenerationSettings(max_new_tokens=args.eval_tokens),
    )
    say = progress_printer(args)
    result = validate_run(
        args.run_dir,
        traits=args.traits,
        subsets=args.subsets,
        size=args.size,
        datasets=args.datasets or (),
        data=args.data,
        model=model_options(args),
        vectors=args.vectors,
        settings=settings,
        seed=args.seed,
        judge=args.judge,
        progress=say,
        step_progress=StepBar(args.quiet),
        command=args.command_line,
        save_models=args.save_models,
    )
    document = result.to_json()
    for trait, r in document["pearson_r"].items():
        shown = (
            "n/a (fewer than 3 measured training sets, or no spread)" if r is None else f"{r:.2f}"
        )
        print(f"{trait}: Pearson r of dataset ΔP against the measured shift = {shown}")
    for trait, ordering in document["ordering"].items():
        values = ", ".join(
            f"{name} {'n/a' if value is None else format(value, '+.2f')}"
            for name, value in ordering["shifts"].items()
        )
        verdict = {True: "holds", False: "does NOT hold", None: "cannot be told"}[ordering["holds"]]
        print(f"{trait} shifts: {values}: top > random > bottom {verdict}")
    print(f"wrote {args.run_dir / 'validate.json'}, validate.png and the report's section")
    return EXIT_OK
