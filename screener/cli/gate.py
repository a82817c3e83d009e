"""`screener gate`: the CI check for data pull requests (exit 0 pass, 1 fail, 2 usage/input)."""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from screener.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    add_model_options,
    add_quiet_option,
    model_options,
    progress_printer,
)
from screener.cli.screen import add_scoring_options, generation_options, scoring_options
from screener.errors import ConfigError


def register(commands: Any) -> None:
    """Add the gate subcommand."""
    gate = commands.add_parser(
        "gate",
        help="CI check: screen the rows a change adds and judge them against screener.toml",
        description="Screen the baseline and the candidate with one run store (so after the "
        "first run only added rows are computed), find the added or changed rows, and judge "
        "them against the [gate] rules of screener.toml. Writes gate.md beside the candidate's "
        "screening outputs. Exit codes: 0 pass, 1 fail, 2 usage or input error.",
    )
    gate.add_argument("paths", nargs="*", metavar="PATHS", help="data files/dirs (--git-range)")
    gate.add_argument("--baseline", type=Path, default=None, help="old data file or directory")
    gate.add_argument("--candidate", type=Path, default=None, help="new data file or directory")
    gate.add_argument(
        "--git-range", default=None, metavar="A..B", help="compare PATHS at A and at B (git)"
    )
    gate.add_argument("--repo", type=Path, default=Path("."), help="git repository (default .)")
    gate.add_argument(
        "--config", type=Path, default=None, help="rules file (default ./screener.toml if any)"
    )
    gate.add_argument(
        "--out", type=Path, default=Path("reports/gate"), help="output dir (default reports/gate)"
    )
    gate.add_argument(
        "--force",
        action="store_true",
        help="replace an --out directory that holds files but no screener run",
    )
    gate.add_argument(
        "--annotations",
        choices=["github"],
        default=None,
        help="print a workflow annotation for each flagged or rejected added row",
    )
    add_model_options(gate)
    add_scoring_options(gate)
    add_quiet_option(gate)
    gate.set_defaults(run=_run_gate)


def _run_gate(args: argparse.Namespace) -> int:
    from screener.gate_rules import load_rules
    from screener.gating import git_versions, github_annotations, run_gate

    pair = args.baseline is not None or args.candidate is not None
    if args.git_range is not None and pair:
        raise ConfigError("use either --git-range A..B PATHS or --baseline and --candidate")
    if args.git_range is None and (args.baseline is None or args.candidate is None or args.paths):
        raise ConfigError("give --baseline OLD --candidate NEW, or --git-range A..B PATHS")
    if args.git_range is not None and not args.paths:
        raise ConfigError("--git-range needs the data PATHS to compare")
    scoring, generation = scoring_options(args), generation_options(args)
    rules = load_rules(args.config)
    if args.traits:  # the command line wins over the config file
        rules = replace(rules, traits=tuple(args.traits))
    say = progress_printer(args)
    options: dict[str, Any] = {
        "model": model_options(args),  # loaded once both sides are checked
        "scoring": scoring,
        "generation": generation,
        "out": args.out,
        "force": args.force,
        "progress": say,
        "command": args.command_line,
    }
    with tempfile.TemporaryDirectory(prefix="screener-gate-") as scratch:
        if args.git_range is not None:
            baseline, candidate, names = git_versions(
                args.repo, args.git_range, args.paths, Path(scratch)
            )

            def display(source: str) -> str:
                return names.get(source, source)

            verdict = run_gate(baseline, candidate, rules=rules, display=display, **options)
        else:
            verdict = run_gate(args.baseline, args.candidate, rules=rules, **options)
    if args.annotations == "github":
        for line in github_annotations(verdict):
            print(line)
    head = "PASS" if verdict.passed else "FAIL"
    print(
        f"screener gate: {head}: {len(verdict.flagged_added)} of {verdict.added} added rows "
        f"flagged; wrote {args.out / 'gate.md'}"
    )
    for failure in verdict.failures:
        print(f"  {failure}")
    return EXIT_OK if verdict.passed else EXIT_FAILED
