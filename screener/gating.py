"""The CI gate for data pull requests: screen what a change adds and judge it against rules.

    verdict = run_gate(baseline=Path("old"), candidate=Path("new"), out=Path("reports/gate"))
    verdict.passed, verdict.failures   # and out/gate.md, a summary for the PR comment

Both sides are screened with the same run store, so rows the baseline already had come from the
cache: after the first run, a gate computes only the rows a change adds. A row is *added* when
its rendered conversation (the screening cache key) is not in the baseline; a changed row is an
added one. Rules live in the `[gate]` table of `screener.toml` (screener.gate_rules).
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scipy.stats import beta

from screener.atomic import write_text_atomic
from screener.errors import ConfigError, ScreenerError
from screener.gate_rules import GateRules
from screener.model import LoadedModel
from screener.options import (
    GenerationOptions,
    ModelOptions,
    ReadOptions,
    ScoringOptions,
    resolve_model,
)
from screener.records import RejectedRow
from screener.run_directory import GATE_MD, add_to_manifest
from screener.screening import FlagRule, ScreenResult, screen
from screener.screening.preflight import check_before_loading

WORST_ROWS = 10  # added flagged rows listed in gate.md


@dataclass
class AddedRow:
    """A flagged row the change adds, for gate.md and the annotations."""

    path: str
    line: int
    id: str
    risk: float
    category: str
    reasons: list[str]


@dataclass
class GateVerdict:
    """The gate's decision and the numbers behind it."""

    rules: GateRules
    added: int
    flagged_added: list[AddedRow]
    rejected_added: list[tuple[str, int, str]]  # path, line, reason
    means: dict[str, tuple[float | None, float | None]]  # trait -> (baseline, candidate)
    failures: list[str]
    candidate: ScreenResult

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def flag_rate(self) -> float:
        return len(self.flagged_added) / self.added if self.added else 0.0


def flag_rate_lower_bound(flagged: int, rows: int, confidence: float) -> float:
    """The one-sided Clopper-Pearson lower bound of a flag rate seen as `flagged` of `rows`
    (the observed rate when `confidence` is 0)."""
    if rows == 0 or flagged == 0:
        return 0.0
    if confidence == 0:
        return flagged / rows
    return float(beta.ppf(1 - confidence, flagged, rows - flagged + 1))


def _mean(result: ScreenResult | None, trait: str) -> float | None:
    return None if result is None else result.dataset_scores[trait].mean


def judge(
    rules: GateRules,
    baseline: ScreenResult | None,
    candidate: ScreenResult,
    display: Callable[[str], str],
) -> GateVerdict:
    """Compare the candidate run with the baseline run under `rules`.

    display maps a screened file's path to the one to show (the repository path in --git-range).
    """
    known = set() if baseline is None else {s.content_hash for s in baseline.samples}
    added = [i for i, s in enumerate(candidate.samples) if s.content_hash not in known]
    flagged_rows = []
    for index in added:
        position = candidate.flags.position(index)
        if position is None:
            continue
        reasons = candidate.flags.reasons_at(position)
        sample = candidate.samples[index]
        category = candidate.category_at(position)[0]
        flagged_rows.append(
            AddedRow(
                display(sample.source),
                sample.line,
                sample.id,
                float(candidate.risk[index]),
                category,
                [f"{r.trait} {r.score:.2f} > cut {r.cut:.2f}" for r in reasons],
            )
        )
    flagged_rows.sort(key=lambda row: (-row.risk, row.path, row.line))
    rejected = added_rejections(baseline, candidate, display)
    failures = []
    rate = len(flagged_rows) / len(added) if added else 0.0
    bound = flag_rate_lower_bound(len(flagged_rows), len(added), rules.flag_rate_confidence)
    if bound > rules.max_flag_rate:
        at_least = (
            f"; at least {bound:.1%} at {rules.flag_rate_confidence:.0%} confidence"
            if rules.flag_rate_confidence
            else ""
        )
        failures.append(
            f"{len(flagged_rows)} of {len(added)} added rows flagged ({rate:.1%}{at_least}), "
            f"more than max_flag_rate {rules.max_flag_rate:.1%}"
        )
    means = {}
    for trait in candidate.settings.traits:
        before, after = _mean(baseline, trait), _mean(candidate, trait)
        means[trait] = (before, after)
        limit = rules.rise_limit(trait)
        rise = None if before is None or after is None else after - before
        if limit is not None and rise is not None and rise > limit:
            failures.append(
                f"dataset-level {trait} rose by {rise:+.3f} "
                f"({before:.3f} -> {after:.3f}), more than max_mean_rise {limit}"
            )
    for name in rules.fail_categories:
        hits = [row for row in flagged_rows if row.category == name]
        if hits:
            failures.append(f"{len(hits)} flagged added rows in failing category {name}")
    if len(rejected) > rules.max_rejected:
        failures.append(
            f"{len(rejected)} added rows cannot be screened, more than max_rejected "
            f"{rules.max_rejected}"
        )
    return GateVerdict(rules, len(added), flagged_rows, rejected, means, failures, candidate)


_LOCATION = re.compile(r" \((?:first seen at|same text as) [^)]*\)")


def _rejection_key(row: RejectedRow) -> tuple[str | None, str | None, str, str | None]:
    """What identifies a rejected row across the two sides: not its file or line (rows move,
    and --git-range reads each side from its own folder)."""
    return (row.id, row.field, _LOCATION.sub("", row.reason), row.raw)


def added_rejections(
    baseline: ScreenResult | None, candidate: ScreenResult, display: Callable[[str], str]
) -> list[tuple[str, int, str]]:
    """Rejected rows the change adds: per kind of rejection, those beyond the baseline's count
    (the last ones in file order)."""
    left = Counter(_rejection_key(r) for r in baseline.rejected) if baseline else Counter()
    surplus = Counter(_rejection_key(r) for r in candidate.rejected) - left
    added = []
    for row in reversed(candidate.rejected):
        key = _rejection_key(row)
        if surplus[key] > 0:
            surplus[key] -= 1
            added.append((display(row.source), row.line, row.reason))
    return added[::-1]


def gate_markdown(verdict: GateVerdict) -> str:
    """A short summary for a pull-request comment."""
    rules = verdict.rules
    head = "PASS" if verdict.passed else "FAIL"
    lines = [f"## screener gate: {head}", ""]
    if verdict.failures:
        lines += [f"- {failure}" for failure in verdict.failures] + [""]
    lines += [
        "| check | value | rule |",
        "|---|---|---|",
        f"| added or changed rows | {verdict.added} | |",
        f"| flagged among them | {len(verdict.flagged_added)} ({verdict.flag_rate:.1%}) "
        f"| <= {rules.max_flag_rate:.1%}"
        + (
            f" (its lower bound at {rules.flag_rate_confidence:.0%} confidence)"
            if rules.flag_rate_confidence
            else ""
        )
        + " |",
        f"| added rows that cannot be screened | {len(verdict.rejected_added)} "
        f"| <= {rules.max_rejected} |",
    ]
    for trait, (before, after) in verdict.means.items():
        limit = rules.rise_limit(trait)
        change = "n/a" if before is None or after is None else f"{after - before:+.3f}"
        shown = "n/a" if after is None else f"{after:.3f}"
        lines.append(
            f"| dataset-level {trait} (change) | {shown} ({change}) "
            f"| {'' if limit is None else f'rise <= {limit}'} |"
        )
    if rules.fail_categories:
        lines.append(f"| failing categories | | {', '.join(rules.fail_categories)} |")
    if verdict.flagged_added:
        lines += ["", "Worst added rows:", "", "| file:line | id | risk | category | reasons |"]
        lines.append("|---|---|---|---|---|")
        for row in verdict.flagged_added[:WORST_ROWS]:
            reasons = "; ".join(row.reasons)
            lines.append(
                f"| `{row.path}:{row.line}` | {_cell(row.id)} | {row.risk:.2f} | {row.category} "
                f"| {reasons} |"
            )
        more = len(verdict.flagged_added) - WORST_ROWS
        if more > 0:
            lines.append(f"\n{more} more flagged added rows: see flagged.jsonl.")
    for path, line, reason in verdict.rejected_added[:WORST_ROWS]:
        lines.append(f"\n- rejected `{path}:{line}`: {_cell(reason)}")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def github_annotations(verdict: GateVerdict) -> list[str]:
    """GitHub workflow commands pointing at each flagged or rejected added row."""
    level = "warning" if verdict.passed else "error"
    out = []
    for row in verdict.flagged_added:
        message = f"screener: row {row.id} flagged ({'; '.join(row.reasons)}), {row.category}"
        out.append(f"::{level} file={row.path},line={row.line}::{_escape(message)}")
    for path, line, reason in verdict.rejected_added:
        out.append(f"::{level} file={path},line={line}::{_escape('screener: ' + reason)}")
    return out


def _escape(message: str) -> str:
    return message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def git_versions(
    repo: Path, revision_range: str, paths: list[str], into: Path
) -> tuple[Path, Path, dict[str, str]]:
    """Write the files under PATHS at both ends of `A..B` into into/base and into/head, flat
    (the reader takes one directory level), and return the map from each written head file to
    its path in the repository."""
    if revision_range.count("..") != 1 or "..." in revision_range:
        raise ConfigError(f"--git-range must look like main..HEAD, not {revision_range!r}")
    base, head = revision_range.split("..")
    names: dict[str, str] = {}
    roots = []
    for name, revision in (("base", base or "HEAD"), ("head", head or "HEAD")):
        root = into / name
        root.mkdir(parents=True, exist_ok=True)
        listed = _git(repo, "ls-tree", "-r", "--name-only", revision, "--", *paths)
        for number, file in enumerate(sorted(listed.decode().splitlines())):
            target = root / f"{number:05d}-{Path(file).name}"
            target.write_bytes(_git(repo, "show", f"{revision}:{file}"))
            if name == "head":
                names[str(target)] = file
        roots.append(root)
    return roots[0], roots[1], names


def _git(repo: Path, *args: str) -> bytes:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False)
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise ConfigError(f"git {' '.join(args[:2])}: {message[-1] if message else 'failed'}")
    return done.stdout


def _has_data(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(p.is_file() for p in path.rglob("*")))


def run_gate(
    baseline: Path,
    candidate: Path,
    *,
    rules: GateRules,
    out: Path,
    model: str | ModelOptions | LoadedModel = "embedded",
    scoring: ScoringOptions | None = None,
    generation: GenerationOptions | None = None,
    read: ReadOptions | None = None,
    display: Callable[[str], str] = str,
    progress: Callable[[str], None] | None = None,
    command: str = "",
    force: bool = False,
) -> GateVerdict:
    """Screen both sides (same store: the baseline's rows come from the cache after the first
    time), judge, and write out/gate.md beside the candidate's screening outputs (`force`:
    replace an `out` that holds files but no screener run). Both sides are checked (paths,
    formats, fields, traits, the output directory) before the model loads."""
    if not _has_data(candidate):
        raise ConfigError(f"{candidate}: no data files to screen")
    scoring, read = scoring or ScoringOptions(), read or ReadOptions()
    for data, where in ((baseline, None), (candidate, out)):
        if _has_data(data):
            check_before_loading(
                data,
                rules.traits,
                scoring,
                read,
                where,
                progress,
                replace_out=force,
                server=None if generation is None else generation.server,
            )
    loaded = resolve_model(model, progress)

    def screened(data: Path, out: Path | None) -> ScreenResult:
        # the baseline's verdict needs only its hashes, rejected rows and means: no labels
        return screen(
            data,
            model=loaded,
            traits=rules.traits,
            scoring=scoring,
            generation=generation,
            read=read,
            rule=FlagRule(dict(rules.thresholds), rules.percentile),
            out=out,
            progress=progress,
            command=command,
            label=out is not None,
            force=force,
        )

    before = screened(baseline, None) if _has_data(baseline) else None
    after = screened(candidate, out)
    verdict = judge(rules, before, after, display)
    try:
        write_text_atomic(out / GATE_MD, gate_markdown(verdict))
        add_to_manifest(out, out / GATE_MD)
    except OSError as exc:
        raise ScreenerError(f"cannot write {out / 'gate.md'}: {exc.strerror}") from None
    return verdict
