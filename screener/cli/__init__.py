"""The `screener` command: parses arguments, calls the library, reports.

Each module registers its subcommands (`register(commands)`), each with a `run` function.
Errors screener raises on purpose become one line on stderr and exit code 2; an interrupt
exits 130. Everything here is also available from Python (see the README).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shlex
import sys
from collections.abc import Sequence

from screener import __version__
from screener.cli import data, gate, monitor, report, screen, validate, vectors
from screener.cli.common import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from screener.errors import ScreenerError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="screener",
        description="Screen finetuning data for persona risk (evil, sycophancy, "
        "hallucination, ...) with persona vectors, before training on it.",
    )
    parser.add_argument("--version", action="version", version=f"screener {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data.register(commands)
    vectors.register(commands)
    screen.register(commands)
    report.register(commands)
    gate.register(commands)
    validate.register(commands)
    monitor.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `screener` console script; returns the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(arguments)
    args.command_line = shlex.join(["screener", *arguments])  # recorded in vector files
    logging.basicConfig(level=logging.WARNING, format="screener: %(levelname)s: %(message)s")
    try:
        code: int = args.run(args)
        return code
    except ScreenerError as exc:
        print(f"screener: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head` and friends: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:  # a full disk, a file too large, a vanished directory
        print(f"screener: error: {_describe_os_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("screener: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _describe_os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    reason = exc.strerror or str(exc)
    advice = ""
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        advice = " (free space and run again: finished work is kept in the run store)"
    return f"{where}{reason}{advice}"
