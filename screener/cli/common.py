"""Options and helpers shared by the CLI's subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from screener.activations import DEFAULT_BATCH_TOKENS
from screener.errors import ConfigError
from screener.model import LoadedModel
from screener.options import ModelOptions, ReadOptions, resolve_model
from screener.reader import FORMATS, FieldNames
from screener.served import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT_S, AnswerServer

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def comma_separated(text: str) -> list[str]:
    """An option value such as `evil,sycophancy` as a list of names."""
    return [name.strip() for name in text.split(",") if name.strip()]


def add_model_options(
    parser: argparse.ArgumentParser,
    *,
    model_default_help: str | None = None,
    with_model: bool = True,
) -> None:
    """--model, --dtype, --device, --trust-remote-code. With `model_default_help`, --model
    defaults to None and its help names what the command uses instead (e.g. the run's model).
    Without `with_model`, no --model (the command names its models otherwise)."""
    kinds = "a .gguf file, a local model directory, or a Hugging Face model id"
    if with_model:
        parser.add_argument(
            "--model",
            default="embedded" if model_default_help is None else None,
            help=f"embedded (SmolLM2-135M-Instruct, default), {kinds}"
            if model_default_help is None
            else f"embedded (SmolLM2-135M-Instruct), {kinds} (default: {model_default_help})",
        )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 on GPUs and CPUs with AMX/AVX512-BF16, else fp32",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow the model to run code shipped with it (off by default)",
    )


def add_quiet_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="print only the final summary line")


def progress_printer(args: argparse.Namespace) -> Callable[[str], None]:
    """A function that prints progress to stderr, or nothing with --quiet.

    Also turns transformers' progress bars off when quiet or not on a terminal (CI logs).
    """
    if args.quiet or not sys.stderr.isatty():
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if args.quiet:
        return lambda message: None
    return lambda message: print(message, file=sys.stderr)


def model_options(args: argparse.Namespace) -> ModelOptions:
    """The model named by --model, --dtype, --device and --trust-remote-code."""
    return ModelOptions(args.model, args.dtype, args.device, args.trust_remote_code)


def load_model_from_args(args: argparse.Namespace, say: Callable[[str], None]) -> LoadedModel:
    return resolve_model(model_options(args), say)


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """The positional DATA and the options that say how to read it."""
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


def add_sequence_options(parser: argparse.ArgumentParser) -> None:
    """--max-tokens and --batch-tokens: how long sequences may be and how they are batched."""
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="longest sequence to process (default: the model's context window); "
        "longer responses are truncated with a warning",
    )
    parser.add_argument(
        "--batch-tokens",
        type=int,
        default=DEFAULT_BATCH_TOKENS,
        help=f"padded tokens per forward pass (default {DEFAULT_BATCH_TOKENS})",
    )


def data_fields(args: argparse.Namespace) -> FieldNames:
    """The field names given by --prompt-field, --response-field and --id-field."""
    return FieldNames(prompt=args.prompt_field, response=args.response_field, id=args.id_field)


def read_options(args: argparse.Namespace) -> ReadOptions:
    """How to read the data, from the data options the subcommand has (--format, the field
    names, --on-bad-row); those it lacks keep ReadOptions' defaults."""
    given: dict[str, Any] = {}
    if hasattr(args, "format"):
        given["fmt"] = args.format
    if hasattr(args, "prompt_field"):
        given["fields"] = data_fields(args)
    if hasattr(args, "on_bad_row"):
        given["on_bad_row"] = args.on_bad_row
    return ReadOptions(**given)


def add_generator_options(parser: argparse.ArgumentParser) -> None:
    """--generator and the server flags: who writes the model's own answers."""
    parser.add_argument(
        "--generator",
        choices=("hf", "openai"),
        default="hf",
        help="who writes the model's own answers: hf (the model here, default) or openai (a "
        "server with an OpenAI-compatible completions API serving the same weights as --model)",
    )
    parser.add_argument("--generator-url", help="the server's API root, e.g. http://host:8000/v1")
    parser.add_argument("--generator-model", help="the model name the server serves")
    parser.add_argument(
        "--generator-concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"requests in flight at once (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--generator-timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for one answer (default {DEFAULT_TIMEOUT_S:g})",
    )


def answer_server(args: argparse.Namespace) -> AnswerServer | None:
    """The server --generator openai names, or None for answers written here."""
    if args.generator != "openai":
        if args.generator_url or args.generator_model:
            raise ConfigError("--generator-url and --generator-model need --generator openai")
        return None
    if not args.generator_url or not args.generator_model:
        raise ConfigError(
            "--generator openai needs --generator-url (e.g. http://localhost:8000/v1) and "
            "--generator-model (the name the server serves)"
        )
    return AnswerServer(
        args.generator_url,
        args.generator_model,
        args.generator_concurrency,
        args.generator_timeout,
    )
