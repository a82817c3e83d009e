"""The `screener` command: parses arguments, calls the library, reports.

Errors screener raises on purpose become one line on stderr and exit code 2; an interrupt
exits 130. Everything here is also available from Python (see the README).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from screener import __version__
from screener.activations import DEFAULT_BATCH_TOKENS
from screener.errors import ConfigError, ScreenerError
from screener.reader import FORMATS, FieldNames, read_dataset
from screener.records import RejectedRow

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130


def _layers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer numbers, got {text!r}"
        ) from exc


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data",
        help="a .jsonl/.json/.csv/.parquet file, a save_to_disk "
        "directory, or a directory of data files",
    )
    parser.add_argument(
        "--format",
        default="auto",
        choices=["auto", *FORMATS],
        help="dataset format (default: detected from the first row of each file)",
    )
    parser.add_argument(
        "--prompt-field", default="prompt", help="prompt column (prompt_response format)"
    )
    parser.add_argument(
        "--response-field", default="response", help="response column (prompt_response format)"
    )
    parser.add_argument(
        "--id-field",
        default="id",
        help="column holding each row's id (default: id; rows without one get a content hash)",
    )
    parser.add_argument(
        "--on-bad-row",
        default="reject",
        choices=["reject", "fail"],
        help="reject: record bad rows with their reason and go on (default); "
        "fail: stop with an error at the first one",
    )


def _fields(args: argparse.Namespace) -> FieldNames:
    return FieldNames(prompt=args.prompt_field, response=args.response_field, id=args.id_field)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="screener",
        description="Screen finetuning data for persona risk (evil, sycophancy, "
        "hallucination, ...) with persona vectors, before training on it.",
    )
    parser.add_argument("--version", action="version", version=f"screener {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check",
        help="read a dataset and report rows that cannot be used",
        description="Read a dataset without any model: count the usable "
        "rows and list each rejected row with file, line, field and reason.",
    )
    _add_data_options(check)
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
    _add_data_options(collect)
    collect.add_argument(
        "--model",
        default="embedded",
        help="embedded (SmolLM2-135M-Instruct, default), a .gguf file, a local "
        "model directory, or a Hugging Face model id",
    )
    collect.add_argument(
        "--layers",
        type=_layers,
        default=[20],
        help="hidden-state rows to collect, comma-separated; 0 = embeddings, "
        "-1 = last (default: 20)",
    )
    collect.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 on GPUs and CPUs with AMX/AVX512-BF16, else fp32",
    )
    collect.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    collect.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow the model to run code shipped with it (off by default)",
    )
    collect.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="longest sequence to process (default: the model's context window); "
        "longer responses are truncated with a warning",
    )
    collect.add_argument(
        "--batch-tokens",
        type=int,
        default=DEFAULT_BATCH_TOKENS,
        help=f"padded tokens per forward pass (default {DEFAULT_BATCH_TOKENS})",
    )
    collect.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: reports/collect-<data name>)",
    )
    collect.add_argument("--quiet", action="store_true", help="print only the final summary line")
    return parser


def _run_check(args: argparse.Namespace) -> int:
    reader = read_dataset(
        args.data, fmt=args.format, fields=_fields(args), on_bad_row=args.on_bad_row
    )
    shown = 0
    for record in reader:
        if isinstance(record, RejectedRow) and shown < args.show:
            print(f"rejected {record.describe()}")
            shown += 1
    counts = reader.counts
    if counts.rejected > shown:
        print(f"... and {counts.rejected - shown} more rejected rows")
    formats = ", ".join(f"{Path(src).name}: {fmt}" for src, fmt in counts.formats.items())
    print(
        f"{args.data}: {counts.rows} rows = {counts.samples} usable + {counts.rejected} rejected"
        + (f" ({formats})" if formats else "")
    )
    return EXIT_OK


def _run_collect(args: argparse.Namespace) -> int:
    from screener.collect import collect_dataset, prepare_out_dir, write_collect_outputs
    from screener.model import load_model

    if args.batch_tokens < 1 or (args.max_tokens is not None and args.max_tokens < 2):
        raise ConfigError("--batch-tokens must be positive and --max-tokens at least 2")
    out = args.out or Path("reports") / f"collect-{Path(args.data).stem}"
    prepare_out_dir(out)  # fail before the model loads, not after the work is done
    say = (
        (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr))
    )
    if args.quiet or not sys.stderr.isatty():
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # keep CI logs and --quiet clean
    say(f"loading model {args.model} ...")
    loaded = load_model(
        args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code
    )
    say(f"loaded {loaded.name} ({loaded.dtype}, {loaded.device}, fingerprint {loaded.fingerprint})")
    result = collect_dataset(
        args.data,
        loaded,
        args.layers,
        fmt=args.format,
        fields=_fields(args),
        on_bad_row=args.on_bad_row,
        max_tokens=args.max_tokens,
        max_batch_tokens=args.batch_tokens,
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `screener` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="screener: %(levelname)s: %(message)s")
    runners = {"check": _run_check, "collect": _run_collect}
    try:
        return runners[args.command](args)
    except ScreenerError as exc:
        print(f"screener: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("screener: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
