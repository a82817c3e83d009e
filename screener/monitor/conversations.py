"""Persona drift in a deployed model's conversations: `screener monitor conversations LOGS`.

    result = monitor_conversations("logs.jsonl", out=Path("reports/monitor-logs"))
    result.counts            # conversations read = kept + flagged + rejected
    result.flagged_ids       # in input order

The logs are read like screen's data (JSONL, CSV, parquet, ... in the `messages` or ShareGPT
format). Every assistant turn of a conversation is scored with the model that wrote it (the
turn's prompt is every message before it): its projection per trait, and the projection of the
last prompt token, which the persona-vectors paper found to predict the turn's trait before it
is written. `conversation_rule` says when a conversation is flagged. Conversations stream
through in chunks; only the counts, running moments for the logs' shift and the ids of the
flagged conversations stay in memory (and a few floats per baseline conversation while its rule
is set).

Files in the output directory (one run, replaced whole): turns.parquet (a row per turn),
conversations.parquet (a row per conversation), monitor.duckdb (both tables), flagged.jsonl
(each flagged conversation with its flags, turn scores and messages), rejected.jsonl,
summary.json and report.html.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

from screener.activations import ActivationCollector, TokenizedInput
from screener.errors import ConfigError
from screener.model import LoadedModel
from screener.monitor.conversation_files import ConversationWriter
from screener.monitor.conversation_rule import (
    BaselineConversations,
    ConversationMeans,
    ConversationRule,
    TurnScore,
    shift_note,
)
from screener.options import ModelOptions, ReadOptions, resolve_model
from screener.reader import read_dataset
from screener.records import RejectedRow, Sample
from screener.render import RenderedSample, Renderer, token_limit
from screener.run_directory import check_out_dir, staged_run
from screener.screening.flags import DatasetShift
from screener.screening.preflight import choose_traits, peek, resolve_calibration
from screener.vectors.store import VectorFile, load_vectors

CHUNK_CONVERSATIONS = 64
MIN_BASELINE_CONVERSATIONS = 20  # 5% of them is one conversation: fewer cannot set the rule


@dataclass
class ConversationCounts:
    """Conversations read = kept + flagged + rejected; turns scored or skipped (with a reason)."""

    read: int = 0
    kept: int = 0
    flagged: int = 0
    rejected: int = 0
    turns_scored: int = 0
    turns_skipped: int = 0

    @property
    def invariant(self) -> bool:
        return self.read == self.kept + self.flagged + self.rejected


@dataclass
class ConversationsResult:
    """What a conversations monitor found; the files are in `out`."""

    out: Path
    traits: tuple[str, ...]
    rule: ConversationRule
    counts: ConversationCounts = field(default_factory=ConversationCounts)
    flagged_ids: list[str] = field(default_factory=list)
    shifts: dict[str, DatasetShift] = field(default_factory=dict)  # the logs' turns vs reference
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ScoredConversation:
    """One conversation's turn scores and the turns that could not be scored."""

    sample: Sample
    turns: list[TurnScore]
    skipped: list[tuple[int, str]]  # (turn, reason)


def assistant_turns(sample: Sample) -> list[tuple[int, Sample]]:
    """(message index, the conversation up to and including that assistant turn) per turn."""
    return [
        (index, replace(sample, messages=sample.messages[: index + 1], original={}))
        for index, message in enumerate(sample.messages)
        if message.role == "assistant"
    ]


class TurnScorer:
    """Projections of assistant turns (and of their last prompt tokens) on the traits' unit
    vectors at their layers."""

    def __init__(self, loaded: LoadedModel, vectors: VectorFile, traits: Sequence[str]) -> None:
        self.traits = tuple(traits)
        self.layers = sorted({vectors.trait(t).chosen_layer for t in traits})
        self.units = {t: vectors.unit(t).double() for t in traits}
        self.layer_of = {t: self.layers.index(vectors.trait(t).chosen_layer) for t in traits}
        limit = token_limit(loaded.model.config, None)
        self.renderer = Renderer(loaded.tokenizer, max_tokens=limit)
        self.collector = ActivationCollector(loaded.model, self.layers)

    def score(self, samples: Sequence[Sample]) -> list[ScoredConversation]:
        rendered: list[tuple[int, int, int, RenderedSample]] = []  # (conversation, turn, message)
        found = [ScoredConversation(s, [], []) for s in samples]
        for position, sample in enumerate(samples):
            for number, (message, turn) in enumerate(assistant_turns(sample), 1):
                result = self.renderer.render(turn)
                if isinstance(result, RejectedRow):
                    found[position].skipped.append((number, result.reason))
                else:
                    rendered.append((position, number, message, result))
        if not rendered:
            return found
        activations = self.collector.collect(
            [TokenizedInput(r.input_ids, r.response_start) for *_, r in rendered]
        )
        for row, (position, number, message, done) in enumerate(rendered):
            projection, prompt_last = {}, {}
            for trait in self.traits:
                column, unit = self.layer_of[trait], self.units[trait]
                projection[trait] = float(activations.response_mean[row, column].double() @ unit)
                prompt_last[trait] = float(activations.last_prompt[row, column].double() @ unit)
            found[position].turns.append(
                TurnScore(
                    number,
                    message,
                    done.num_prompt_tokens,
                    done.num_response_tokens,
                    projection,
                    prompt_last,
                )
            )
        return found


Record = Sample | RejectedRow


def _chunks(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    while chunk := list(islice(records, size)):
        yield chunk


def baseline_rule(
    scorer: TurnScorer, baseline: str | Path, read: ReadOptions, say: Callable[[str], None]
) -> ConversationRule:
    """The rule set at the conversation level from the conversations of `baseline`."""
    found = BaselineConversations(scorer.traits)
    reader = read_dataset(baseline, fmt=read.fmt, fields=read.fields, on_bad_row=read.on_bad_row)
    for chunk in _chunks(iter(reader), CHUNK_CONVERSATIONS):
        for scored in scorer.score([r for r in chunk if isinstance(r, Sample)]):
            if scored.turns:
                found.add(scored.turns)
    if found.count < MIN_BASELINE_CONVERSATIONS:
        raise ConfigError(
            f"--baseline {baseline}: {found.count} conversations could be scored, at "
            f"least {MIN_BASELINE_CONVERSATIONS} are needed to set the rule (a few hundred set "
            "it well)"
        )
    say(f"baseline: {found.count} conversations ({found.turns} assistant turns) of {baseline}")
    return ConversationRule.from_baseline(
        found, f"conversations of {baseline} ({found.count} conversations, {found.turns} turns)"
    )


def monitor_conversations(
    logs: str | Path,
    *,
    out: Path,
    model: str | ModelOptions | LoadedModel = "embedded",
    traits: Sequence[str] | None = None,
    vectors: str | Path = "builtin",
    calibration: str | Path = "auto",
    baseline: str | Path | None = None,
    read: ReadOptions | None = None,
    replace_out: bool = False,
    progress: Callable[[str], None] | None = None,
    command: str = "",
) -> ConversationsResult:
    """Score every assistant turn of the conversations in `logs`, flag conversations by
    `conversation_rule`'s rule, and write the outputs into `out`. The cuts come from the
    calibration's own answers, or from `baseline` (conversations known to be ordinary, read
    like the logs). Every check that needs no model (the logs, baseline, traits, calibration
    and output directory) runs before the model loads."""
    say = progress or (lambda message: None)
    read = read or ReadOptions()
    peek(logs, read)
    if baseline is not None:
        peek(baseline, read)
    vector_file = load_vectors(vectors)
    chosen = choose_traits(vector_file, traits)
    calibrated, notes = resolve_calibration(calibration, vectors, vector_file, chosen)
    rule = None  # from the calibration now, or from the baseline once the model has loaded
    if baseline is None:
        if calibrated is None:
            raise ConfigError(
                "monitoring conversations needs a reference of the model's own answers: a "
                "calibration (" + ("; ".join(notes) or "pass --calibration FILE") + ") or "
                "--baseline LOGS"
            )
        rule = ConversationRule.from_calibration(calibrated, chosen)
    check_out_dir(out, replace=replace_out)
    loaded = resolve_model(model, say)
    vector_file.check_model(loaded)
    scorer = TurnScorer(loaded, vector_file, chosen)
    if rule is None:
        assert baseline is not None
        rule = baseline_rule(scorer, baseline, read, say)
    result = ConversationsResult(out, chosen, rule)
    counts, logs_means = result.counts, ConversationMeans(chosen)
    reader = read_dataset(logs, fmt=read.fmt, fields=read.fields, on_bad_row=read.on_bad_row)
    with staged_run(out) as staging:
        with ConversationWriter(staging, chosen) as writer:
            for chunk in _chunks(iter(reader), CHUNK_CONVERSATIONS):
                samples = [r for r in chunk if isinstance(r, Sample)]
                for rejected in (r for r in chunk if isinstance(r, RejectedRow)):
                    writer.rejected(rejected.source, rejected.line, rejected.reason)
                    counts.rejected += 1
                for scored in scorer.score(samples):
                    counts.turns_skipped += len(scored.skipped)
                    counts.turns_scored += len(scored.turns)
                    if not scored.turns:
                        reasons = "; ".join(f"turn {n}: {why}" for n, why in scored.skipped)
                        writer.rejected(
                            scored.sample.source,
                            scored.sample.line,
                            f"no assistant turn could be scored ({reasons})",
                        )
                        counts.rejected += 1
                        continue
                    logs_means.add(scored.turns)
                    flags = rule.flags(scored.turns)
                    writer.conversation(scored, flags)
                    if flags:
                        counts.flagged += 1
                        result.flagged_ids.append(scored.sample.id)
                    else:
                        counts.kept += 1
                say(f"{reader.counts.rows} conversations, {counts.turns_scored} turns scored")
        counts.read = reader.counts.rows
        result.shifts = logs_means.shifts(rule)
        alarms = [shift_note(t, s, rule) for t, s in result.shifts.items() if s.alarm]
        result.notes = [*notes, *alarms]
        reference = str(baseline) if baseline is not None else getattr(calibrated, "path", None)
        summary = summary_document(result, loaded, vector_file, reference, command)
        writer.finish(summary)
    say(f"wrote {out}")
    return result


def summary_document(
    result: ConversationsResult,
    loaded: LoadedModel,
    vectors: VectorFile,
    reference_path: str | None,
    command: str,
) -> dict[str, Any]:
    from screener import __version__

    return {
        "kind": "monitor conversations",
        "model": asdict(loaded.identity()),
        "vectors": str(vectors.path or "builtin"),
        "reference": reference_path,
        "traits": {
            t: {"layer": vectors.trait(t).chosen_layer, "cut": result.rule.cuts[t]}
            for t in result.traits
        },
        "rule": result.rule.as_json(),
        "counts": {**asdict(result.counts), "invariant": result.counts.invariant},
        "shift_from_reference": {t: s.as_dict() for t, s in result.shifts.items()},
        "notes": result.notes,
        "screener_version": __version__,
        "command": command,
    }
