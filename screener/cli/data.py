"""`screener check` and `screener collect`: reading datasets and collecting activations."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from screener.cli.common import (
    EXIT_OK,
    add_data_options,
    add_model_options,
    add_quiet_option,
    add_sequence_options,
    load_model_from_args,
    progress_printer,
    read_options,
)
from screener.options import ScoringOptions
from screener.reader import read_dataset
from screener.records import RejectedRow


def _layers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer numbers, got {text!r}"
        ) from exc


def register(commands: Any) -> None:
    """Add the check and collect subcommands."""
    check = commands.add_parser(
        "check",
        help="read a dataset and report rows that cannot be used",
        description="Read a dataset without any model: count the usable "
        "rows and list each rejected row with file, line, field and reason.",
    )
    add_data_options(check)
    check.set_defaults(run=_run_check)
    check.add_argument(
        "--show", type=int, default=20, help="how many rejected rows to print (default 20)"
    )

    collect = commands.add_parser(
        "collect",
        help="collect response activations of a dataset at chosen layers",
        description="Render every usable row with the model's chat template and collect, per "
        "layer, the mean residual-stream activation over its response tokens and the last prompt "
        "token's activation. Writes samples.parquet, activations.safetensors, rejected.jsonl, "
        "summary.json and summary.md to --out.",
    )
    add_data_options(collect)
    add_model_options(collect)
    collect.add_argument(
        "--layers",
        type=_layers,
        default=[20],
        help="hidden-state rows to collect, comma-separated; 0 = embeddings, "
        "-1 = last (default: 20)",
    )
    add_sequence_options(collect)
    collect.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: reports/collect-<data name>)",
    )
    add_quiet_option(collect)
    collect.set_defaults(run=_run_collect)


def _run_check(args: argparse.Namespace) -> int:
    read = read_options(args)
    reader = read_dataset(args.data, fmt=read.fmt, fields=read.fields, on_bad_row=read.on_bad_row)
    shown = 0
    for record in reader:
        if isinstance(record, RejectedRow) and shown < args.show:
            print(f"rejected {record.describe()}")
            shown += 1
    counts = reader.counts
    if counts.rejected > shown:
        print(f"... and {counts.rejected - shown} more rejected rows")
    if note := counts.skipped_note():
        print(note)
    formats = ", ".join(f"{Path(src).name}: {fmt}" for src, fmt in counts.formats.items())
    print(
        f"{args.data}: {counts.rows} rows = {counts.samples} usable + {counts.rejected} rejected"
        + (f" ({formats})" if formats else "")
    )
    return EXIT_OK


def _run_collect(args: argparse.Namespace) -> int:
    from screener.collect import collect_dataset, prepare_out_dir, write_collect_outputs

    # the sequence limits are scoring options: checked, with the flags named, where they live
    sequences = ScoringOptions(max_tokens=args.max_tokens, max_batch_tokens=args.batch_tokens)
    read = read_options(args)
    out = args.out or Path("reports") / f"collect-{Path(args.data).stem}"
    prepare_out_dir(out)  # fail before the model loads, not after the work is done
    say = progress_printer(args)
    loaded = load_model_from_args(args, say)
    result = collect_dataset(
        args.data,
        loaded,
        args.layers,
        fmt=read.fmt,
        fields=read.fields,
        on_bad_row=read.on_bad_row,
        max_tokens=sequences.max_tokens,
        max_batch_tokens=sequences.max_batch_tokens,
        progress=lambda done, bad: say(f"  collected {done} samples, rejected {bad} rows"),
    )
    write_collect_outputs(result, out)
    summary = result.summary()
    print(
        f"{args.data}: {summary['rows_read']} rows = {summary['collected']} collected + "
        f"{summary['rejected']} rejected; {summary['tokens']} tokens at "
        f"{summary['tokens_per_second']} tokens/s; wrote {out}/summary.md"
    )
    return EXIT_OK
