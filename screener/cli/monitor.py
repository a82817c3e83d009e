"""`screener monitor checkpoints`: the trait drift of checkpoints from their base model, with
bounds a CI job can fail a release on."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from screener.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    add_data_options,
    add_model_options,
    add_quiet_option,
    comma_separated,
    model_options,
    progress_printer,
    read_options,
)


def _add_shared_options(parser: argparse.ArgumentParser, named: str, vectors_help: str) -> None:
    """--traits, --vectors, --out and --force, which both kinds take."""
    parser.add_argument(
        "--traits",
        type=comma_separated,
        default=None,
        help="default: evil,sycophancy,hallucination",
    )
    parser.add_argument("--vectors", default="builtin", help=vectors_help)
    parser.add_argument(
        "--out", type=Path, default=None, help=f"default: reports/monitor-<{named} name>"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace an --out directory that is not a run"
    )


def register(commands: Any) -> None:
    from screener.validation.training import DEFAULT_EVAL_TOKENS

    monitor = commands.add_parser(
        "monitor",
        help="measure persona drift of checkpoints against their base model",
        description="Measure how far models have drifted along the persona vectors.",
    )
    kinds = monitor.add_subparsers(dest="monitor_kind", required=True, metavar="KIND")
    checkpoints = kinds.add_parser(
        "checkpoints",
        help="drift of each checkpoint from the base model",
        description="The base model and every checkpoint answer each trait's held-out "
        "questions greedily; the answers are projected onto the base model's vectors. Prints "
        "per checkpoint and trait the drift (mean projection minus the base model's, ± its "
        "standard error) and writes monitor.json, monitor.png and monitor.html. Exits 1 when a "
        "--fail-above bound is exceeded.",
    )
    checkpoints.add_argument(
        "base",
        metavar="BASE",
        help="embedded, a .gguf file, a model directory or a Hugging Face model id",
    )
    checkpoints.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CKPT",
        help="model directories, model ids or PEFT adapter directories (adapters go on BASE)",
    )
    _add_shared_options(checkpoints, "base", "BASE's vector file (default: builtin)")
    checkpoints.add_argument(
        "--questions",
        type=int,
        default=None,
        help="ask the first N held-out questions per trait (default: all 20)",
    )
    checkpoints.add_argument(
        "--eval-tokens",
        type=int,
        default=DEFAULT_EVAL_TOKENS,
        help=f"new tokens per answer (default {DEFAULT_EVAL_TOKENS})",
    )
    checkpoints.add_argument(
        "--judge",
        default="none",
        help="also score the answers 0-100 with the trait pack's rubric: none (default), "
        "openai:MODEL@BASE_URL (key from $SCREENER_API_KEY) or local:MODEL",
    )
    checkpoints.add_argument(
        "--fail-above",
        action="append",
        default=[],
        metavar="TRAIT=VALUE",
        help="exit 1 when a checkpoint's drift for TRAIT is above VALUE with 95%% confidence "
        "(repeatable)",
    )
    add_model_options(checkpoints, with_model=False)
    add_quiet_option(checkpoints)
    checkpoints.set_defaults(run=_run_checkpoints)

    conversations = kinds.add_parser(
        "conversations",
        help="flag conversations whose assistant turns show a trait, or drift toward it",
        description="Score every assistant turn of chat logs with the model that wrote them "
        "(its projection per trait, and the last prompt token's) and flag conversations with a "
        "turn above the calibrated cut or turns that rise across the conversation. Writes "
        "turns.parquet, conversations.parquet, monitor.duckdb, flagged.jsonl, rejected.jsonl, "
        "summary.json and report.html.",
    )
    add_data_options(conversations)
    _add_shared_options(conversations, "logs", "vector file (default: builtin)")
    conversations.add_argument(
        "--calibration",
        default="auto",
        help="auto: the file beside the vectors (it must hold the model's own answers)",
    )
    conversations.add_argument(
        "--baseline",
        default=None,
        metavar="LOGS",
        help="conversations known to be ordinary (e.g. last week's logs, at least 20, better "
        "hundreds): the cuts and rise bounds are set so that 5%% of them would be flagged, "
        "instead of from the calibration's answers to ordinary prompts",
    )
    add_model_options(conversations)
    add_quiet_option(conversations)
    conversations.set_defaults(run=_run_conversations)


def _run_checkpoints(args: argparse.Namespace) -> int:
    from screener.monitor import DriftBound, monitor_checkpoints, write_monitor
    from screener.options import ModelOptions
    from screener.run_directory import check_out_dir

    bounds = [DriftBound.parse(text) for text in args.fail_above]
    out = args.out or Path("reports") / f"monitor-{Path(args.base).stem}"
    check_out_dir(out, replace=args.force)
    result = monitor_checkpoints(
        ModelOptions(args.base, args.dtype, args.device, args.trust_remote_code),
        args.checkpoints,
        traits=args.traits,
        vectors=args.vectors,
        questions=args.questions,
        eval_tokens=args.eval_tokens,
        judge=args.judge,
        bounds=bounds,
        progress=progress_printer(args),
        command=args.command_line,
    )
    print(result.table())
    written = write_monitor(result, out, bounds)
    print(f"wrote {', '.join(str(path) for path in written)}")
    failures = result.failures(bounds)
    for failure in failures:
        print(f"FAIL {failure}")
    return EXIT_FAILED if failures else EXIT_OK


def _run_conversations(args: argparse.Namespace) -> int:
    from screener.monitor import monitor_conversations

    out = args.out or Path("reports") / f"monitor-{Path(args.data).stem}"
    result = monitor_conversations(
        args.data,
        out=out,
        model=model_options(args),
        traits=args.traits,
        vectors=args.vectors,
        calibration=args.calibration,
        baseline=args.baseline,
        read=read_options(args),
        replace_out=args.force,
        progress=progress_printer(args),
        command=args.command_line,
    )
    counts = result.counts
    print(
        f"{counts.read} conversations: {counts.kept} kept, {counts.flagged} flagged, "
        f"{counts.rejected} rejected; {counts.turns_scored} turns scored, "
        f"{counts.turns_skipped} skipped"
    )
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote {out}/report.html, turns.parquet, monitor.duckdb, flagged.jsonl")
    return EXIT_OK
