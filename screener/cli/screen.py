"""`screener screen` and `screener calibrate`: score a dataset, flag it, write the outputs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from screener.cli.common import (
    EXIT_OK,
    add_data_options,
    add_generator_options,
    add_model_options,
    add_quiet_option,
    add_sequence_options,
    answer_server,
    comma_separated,
    model_options,
    progress_printer,
    read_options,
)
from screener.model import GENERATION_DTYPES
from screener.options import (
    DEFAULT_BASE_TOKENS,
    ENGINES,
    METHODS,
    GenerationOptions,
    RayOptions,
    ScoringOptions,
)
from screener.reader import FORMATS
from screener.screening.style import MIN_ROWS_PER_COMPONENT, STYLE_COMPONENTS


def _threshold(text: str) -> tuple[str, float]:
    trait, equals, value = text.partition("=")
    try:
        if not equals or not trait.strip():
            raise ValueError
        return trait.strip(), float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected TRAIT=VALUE such as evil=2.5, got {text!r}"
        ) from exc


def add_scoring_options(parser: argparse.ArgumentParser) -> None:
    """--vectors, --traits, --max-new-tokens, --store and the sequence options."""
    parser.add_argument(
        "--vectors",
        default="builtin",
        help="persona vector file (default: builtin, the shipped vectors of the embedded model)",
    )
    parser.add_argument(
        "--traits",
        type=comma_separated,
        default=None,
        help="comma-separated traits (default: evil,sycophancy,hallucination when the vector "
        "file has them, else all of its traits)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_BASE_TOKENS,
        help=f"length of the model's own base responses (default {DEFAULT_BASE_TOKENS})",
    )
    parser.add_argument(
        "--generation-dtype",
        default="same",
        choices=GENERATION_DTYPES,
        help="precision the base responses are written in (default: same as --dtype); fp32 "
        "keeps ΔP rankings of bf16 and fp32 runs alike, at a second copy of the weights",
    )
    parser.add_argument(
        "--store",
        default=None,
        help="run store (DuckDB cache of base responses and activations; default "
        "$SCREENER_HOME/store.duckdb; ':memory:' keeps nothing)",
    )
    add_generator_options(parser)
    add_sequence_options(parser)


def register(commands: Any) -> None:
    """Add the screen and calibrate subcommands."""
    screen = commands.add_parser(
        "screen",
        help="screen a dataset for persona risk",
        description="Score every row against persona vectors (ΔP: the training response's "
        "projection minus that of the model's own greedy answer), flag rows above the "
        "calibrated cut, give flagged rows a category and a cluster, and write filtered data, "
        "flagged.jsonl, rejected.jsonl, scores.parquet, screen.duckdb, summary.json and "
        "report.html to --out.",
    )
    add_data_options(screen)
    add_model_options(screen)
    add_scoring_options(screen)
    screen.add_argument(
        "--method",
        default="delta",
        choices=METHODS,
        help="delta: ΔP, needs base responses (default); prompt-last: last prompt token's "
        "projection, no generation, approximate",
    )
    screen.add_argument(
        "--threshold",
        type=_threshold,
        action="append",
        default=[],
        metavar="TRAIT=VALUE",
        help="flag TRAIT above VALUE (repeatable; overrides the calibrated cut)",
    )
    screen.add_argument(
        "--percentile",
        type=float,
        default=None,
        help="cut at this percentile of the calibration reference (default: the percentile "
        "at which 5%% of reference rows are flagged for any trait, about 98 for three traits)",
    )
    screen.add_argument(
        "--no-style-control",
        dest="style_control",
        action="store_false",
        help="take ΔP along the persona vectors themselves, not along the calibration's "
        "style-controlled directions (the paper's method; cuts from raw ΔP on the reference)",
    )
    screen.add_argument(
        "--top-k", type=int, default=None, help="flag the K highest-scoring rows per trait"
    )
    screen.add_argument(
        "--calibration",
        default="auto",
        help="calibration file, 'auto' (the one beside the vectors, default) or 'none'",
    )
    screen.add_argument(
        "--categories", type=Path, default=None, help="JSON file of extra risk categories"
    )
    screen.add_argument(
        "--chunk-rows",
        type=int,
        default=256,
        help="rows scored per step; each step is saved in the store, so a killed run resumes "
        "from the last finished step (default 256)",
    )
    screen.add_argument(
        "--out", type=Path, default=None, help="output directory (default: reports/screen-<data>)"
    )
    screen.add_argument(
        "--force",
        action="store_true",
        help="replace an --out directory that holds files but no screener run (a previous run "
        "there is always replaced whole)",
    )
    engine = screen.add_argument_group("engine")
    engine.add_argument(
        "--engine",
        default="local",
        choices=ENGINES,
        help="local: compute in this process (default); ray: compute what the run store lacks "
        "on a pool of Ray actors (pip install 'screener[ray]')",
    )
    engine.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join (e.g. ray://head:10001 or auto; default: a local Ray)",
    )
    engine.add_argument(
        "--workers", type=int, default=1, help="ray actors, each loading the model once (default 1)"
    )
    engine.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0,
        help="GPUs per ray actor; above 0 the actors run the model on cuda (default 0)",
    )
    add_quiet_option(screen)
    screen.set_defaults(run=_run_screen)

    calibrate = commands.add_parser(
        "calibrate",
        help="measure what ordinary chat scores, to set the default flag cuts",
        description="Screen reference sets of ordinary chat in the styles your data comes in, "
        "fit each trait's style control on them, and store, per trait, the distributions of "
        "ΔP (raw and style-controlled), prompt-last scores and the projections of the model's "
        "own answers. Later screen runs cut at the percentile that flags 5% of reference rows "
        "for any trait; monitor conversations cuts the model's own answers alike. The file "
        "goes beside the vector file unless --out is given.",
    )
    calibrate.add_argument(
        "--reference",
        required=True,
        nargs="+",
        help="reference data files (ordinary chat; several styles, e.g. short chats and long "
        "answers)",
    )
    calibrate.add_argument(
        "--style-components",
        type=int,
        default=STYLE_COMPONENTS,
        help="author-style directions removed from each trait direction (default "
        f"{STYLE_COMPONENTS}; 0: none; at most one per {MIN_ROWS_PER_COMPONENT} reference rows)",
    )
    calibrate.add_argument(
        "--format", default="auto", choices=["auto", *FORMATS], help="dataset format"
    )
    add_model_options(calibrate)
    add_scoring_options(calibrate)
    calibrate.add_argument("--out", type=Path, default=None, help="calibration file to write")
    add_quiet_option(calibrate)
    calibrate.set_defaults(run=_run_calibrate)


# ScoringOptions field -> the argparse destination of its flag; a subcommand without the flag
# leaves the field at ScoringOptions' default
SCORING_FLAGS = {
    "vectors": "vectors",
    "method": "method",
    "calibration": "calibration",
    "style_control": "style_control",
    "max_tokens": "max_tokens",
    "max_batch_tokens": "batch_tokens",
    "chunk_size": "chunk_rows",
    "store": "store",
    "engine": "engine",
}


def scoring_options(args: argparse.Namespace) -> ScoringOptions:
    """The scoring options given on the command line (checked: the error names the flag)."""
    given: dict[str, Any] = {
        f: getattr(args, d) for f, d in SCORING_FLAGS.items() if hasattr(args, d)
    }
    if hasattr(args, "workers"):
        given["ray"] = RayOptions(args.ray_address, args.workers, args.gpus_per_worker)
    return ScoringOptions(**given)


def generation_options(args: argparse.Namespace) -> GenerationOptions:
    """--max-new-tokens, --generation-dtype and the --generator flags."""
    return GenerationOptions(
        max_new_tokens=args.max_new_tokens,
        dtype=args.generation_dtype,
        server=answer_server(args),
    )


def _run_screen(args: argparse.Namespace) -> int:
    from screener.screening import FlagRule, screen

    scoring, generation, read = scoring_options(args), generation_options(args), read_options(args)
    rule = FlagRule(dict(args.threshold), args.percentile, args.top_k)
    out = args.out or Path("reports") / f"screen-{Path(args.data).stem}"
    say = progress_printer(args)
    result = screen(  # checks the data, traits, output and store before loading the model
        args.data,
        model=model_options(args),
        traits=args.traits,
        scoring=scoring,
        generation=generation,
        read=read,
        rule=rule,
        categories=args.categories,
        out=out,
        progress=say,
        command=args.command_line,
        force=args.force,
    )
    summary = result.summary
    for note in result.notes:
        say(f"note: {note}")
    label = "ΔP" if args.method == "delta" else "prompt-last (approximate)"
    for trait, info in summary.traits.items():
        mean = info.dataset_score
        interval = (
            f"{mean.mean:+.3f} [{mean.low:+.3f}, {mean.high:+.3f}]"
            if mean.mean is not None and mean.low is not None and mean.high is not None
            else "n/a"
        )
        cut = "n/a" if info.cut is None else f"{info.cut:.3f}"
        shift = info.dataset_shift
        against = (
            f"; {shift.shift:+.2f} sd from the reference{' (ALARM)' if shift.alarm else ''}"
            if shift
            else ""
        )
        print(f"  {trait}: dataset {label} {interval}{against}; cut {cut}; flagged {info.flagged}")
    print(f"{args.data}: {summary.counts.invariant}; wrote {out}/ (open {out}/report.html)")
    return EXIT_OK


def _run_calibrate(args: argparse.Namespace) -> int:
    from screener.screening import calibrate, save_calibration
    from screener.screening.calibration import STYLE_KIND, default_calibration_path

    scoring, generation, read = scoring_options(args), generation_options(args), read_options(args)
    out = args.out or default_calibration_path(args.vectors)
    say = progress_printer(args)
    calibration = calibrate(
        args.reference,
        model=model_options(args),
        traits=args.traits,
        scoring=scoring,
        generation=generation,
        read=read,
        style_components=args.style_components,
        progress=say,
        command=args.command_line,
    )
    save_calibration(calibration, out)
    for trait, kinds in calibration.traits.items():
        delta, last = kinds["delta"], kinds["prompt_last"]
        line = (
            f"  {trait}: ΔP p50 {delta.percentile(50):+.3f} p95 {delta.percentile(95):+.3f}; "
            f"prompt-last p95 {last.percentile(95):+.3f} (n={delta.n})"
        )
        if (control := calibration.style.get(trait)) is not None:
            styled = kinds[STYLE_KIND]
            line += (
                f"; style-controlled ΔP p95 {styled.percentile(95):+.3f} ({control.components} "
                f"components explain {control.explained:.0%} of ΔP; cosine {control.cosine:.2f})"
            )
        print(line)
    print(f"calibrated on {' + '.join(args.reference)}; wrote {out}")
    return EXIT_OK
