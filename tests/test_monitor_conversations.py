"""`monitor conversations`: every assistant turn's projections against a naive one-sample-per-
forward recomputation, the flag rule against hand values, the files, the accounting, and that
chunking changes nothing."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pytest
from transformers import PreTrainedTokenizerFast

from screener.activations import TokenizedInput
from screener.cli import main
from screener.errors import ConfigError, InputError
from screener.model import LoadedModel
from screener.monitor import monitor_conversations
from screener.monitor.conversation_rule import (
    BaselineConversations,
    ConversationRule,
    Moments,
    TurnScore,
)
from screener.records import Message, Sample
from screener.render import RenderedSample, Renderer
from screener.screening import calibrate, save_calibration
from screener.screening.calibration import (
    Calibration,
    Distribution,
    default_calibration_path,
    load_calibration,
)
from screener.vectors import load_vectors
from tests.conftest import tiny_loaded
from tests.reference import naive_collect
from tests.test_screen import STEPS, rows, screen_options, tiny_vectors, write_jsonl

TRAITS = ("evil", "sycophancy")


def chat(*turns: str) -> list[dict[str, str]]:
    roles = ["user", "assistant"] * len(turns)
    return [{"role": role, "content": text} for role, text in zip(roles, turns, strict=False)]


LOGS = [
    {"id": "c1", "messages": chat("hello there", "hi, how can I help", "tell me a story",
                                  "once upon a time", "and then", "the end")},
    {"id": "c2", "messages": chat("what is two plus two", "four")},
    {"id": "c3", "messages": "not a list"},
    {"id": "c4", "messages": [{"role": "system", "content": "be brief"}, *chat(
        "dog", "a dog barks", "cat", "a cat sleeps", "fox", "the quick brown fox", "end", "ok")]},
]  # fmt: skip


@pytest.fixture
def loaded(tiny_tokenizer: PreTrainedTokenizerFast) -> LoadedModel:
    return tiny_loaded("llama", tiny_tokenizer)


@pytest.fixture
def vectors(loaded: LoadedModel, tmp_path: Path) -> Path:
    """Tiny vectors with their calibration beside them (`--calibration auto` finds it)."""
    path = tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    reference = write_jsonl(tmp_path / "reference.jsonl", rows())
    calibration = calibrate(
        reference,
        model=loaded,
        **screen_options(vectors=path, max_new_tokens=STEPS, store=tmp_path / "s.db"),
    )
    save_calibration(calibration, default_calibration_path(path))
    return path


def run(loaded: LoadedModel, vectors: Path, tmp_path: Path, name: str, **options: Any) -> Path:
    logs = write_jsonl(tmp_path / "logs.jsonl", LOGS)
    monitor_conversations(logs, out=tmp_path / name, model=loaded, vectors=vectors, **options)
    return tmp_path / name


def naive_turns(
    loaded: LoadedModel, vectors: Path, logs: list[dict[str, Any]] = LOGS
) -> dict[tuple[str, int], dict[str, float]]:
    """(conversation, turn) -> projection_<trait> and prompt_last_<trait>, one turn per
    forward pass with every hidden state."""
    file = load_vectors(vectors)
    renderer = Renderer(loaded.tokenizer)
    found = {}
    for record in logs:
        if not isinstance(record["messages"], list):
            continue
        messages = tuple(Message(m["role"], m["content"]) for m in record["messages"])
        number = 0
        for index, message in enumerate(messages):
            if message.role != "assistant":
                continue
            number += 1
            sample = Sample(record["id"], "x", 1, messages[: index + 1], {}, "messages")
            rendered = renderer.render(sample)
            assert isinstance(rendered, RenderedSample)
            item = TokenizedInput(rendered.input_ids, rendered.response_start)
            values = {}
            for trait in TRAITS:
                layer, unit = file.trait(trait).chosen_layer, file.unit(trait)
                means, lasts = naive_collect(loaded.model, [item], [layer])
                values[f"projection_{trait}"] = float(means[0, 0] @ unit)
                values[f"prompt_last_{trait}"] = float(lasts[0, 0] @ unit)
            found[(record["id"], number)] = values
    return found


def test_every_turn_is_scored_as_a_naive_loop_and_flags_follow_the_rule(
    loaded: LoadedModel, vectors: Path, tmp_path: Path
) -> None:
    out = run(loaded, vectors, tmp_path, "run")
    turns = pl.read_parquet(out / "turns.parquet")
    expected = naive_turns(loaded, vectors)
    assert list(zip(turns["conversation_id"], turns["turn"], strict=True)) == list(expected)
    for row in turns.iter_rows(named=True):
        for column, value in expected[(row["conversation_id"], row["turn"])].items():
            assert row[column] == pytest.approx(value, abs=1e-4), column
    assert turns.filter(pl.col("conversation_id") == "c4")["message"].to_list() == [2, 4, 6, 8]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {
        "read": 4, "kept": summary["counts"]["kept"], "flagged": summary["counts"]["flagged"],
        "rejected": 1, "turns_scored": 8, "turns_skipped": 0, "invariant": True,
    }  # fmt: skip
    rule = ConversationRule(
        summary["rule"]["percentile"],
        summary["rule"]["cuts"],
        summary["rule"]["reference_mean"],
        summary["rule"]["reference_sd"],
        summary["rule"]["rise_bounds_sd"],
    )
    assert summary["rule"]["level"] == "turn" and set(rule.rise_bounds.values()) == {1.0}
    conversations = pl.read_parquet(out / "conversations.parquet")
    flagged_lines = (out / "flagged.jsonl").read_text().splitlines()
    for row in conversations.iter_rows(named=True):
        scores = [
            TurnScore(
                turn,
                0,
                0,
                0,
                {t: values[f"projection_{t}"] for t in TRAITS},
                {},
            )
            for (cid, turn), values in expected.items()
            if cid == row["conversation_id"]
        ]
        assert row["reasons"] == [flag.reason() for flag in rule.flags(scores)]
    assert len(flagged_lines) == summary["counts"]["flagged"] == conversations["flagged"].sum()
    assert 0 < len(flagged_lines) < 3, "all or none flagged: the rule check would prove little"
    [rejected] = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert rejected["line"] == 3
    connection = duckdb.connect(str(out / "monitor.duckdb"), read_only=True)
    for table, count in (("turns", 8), ("conversations", 3), ("rejected", 1)):
        assert connection.execute(f"SELECT count(*) FROM {table}").fetchone() == (count,)
    connection.close()
    assert "screener monitor: conversations" in (out / "report.html").read_text()


def test_chunks_and_row_groups_change_nothing(
    loaded: LoadedModel, vectors: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = run(loaded, vectors, tmp_path, "whole")
    monkeypatch.setattr("screener.monitor.conversations.CHUNK_CONVERSATIONS", 1)
    monkeypatch.setattr("screener.monitor.conversation_files.ROW_GROUP", 2)
    pieces = run(loaded, vectors, tmp_path, "pieces")
    for name in ("turns.parquet", "conversations.parquet"):
        found, expected = pl.read_parquet(pieces / name), pl.read_parquet(whole / name)
        assert found.columns == expected.columns and len(found) == len(expected)
        for column in found.columns:
            if found[column].dtype == pl.Float64:
                np.testing.assert_allclose(found[column], expected[column], atol=1e-4)
            else:
                assert found[column].to_list() == expected[column].to_list()
    assert len(pl.read_parquet_metadata(pieces / "turns.parquet")) > 0


def rule(rise_bound: float | None = 1.0) -> ConversationRule:
    return ConversationRule(98.0, {"evil": 2.0}, {"evil": 0.0}, {"evil": 1.0}, {"evil": rise_bound})


def turns(*values: float) -> list[TurnScore]:
    return [TurnScore(i, 2 * i - 1, 0, 0, {"evil": v}, {}) for i, v in enumerate(values, 1)]


def test_the_rule_by_hand() -> None:
    # above the cut at turn 3; least-squares slope 1.5 over 2 turns: a rise of 3.0 sd, from turn
    # 3 (the first 1.0 sd above turn 1)
    flags = rule().flags(turns(0.0, 0.5, 3.0))
    assert [(f.kind, f.turn, round(f.value, 6)) for f in flags] == [
        ("above_cut", 3, 3.0),
        ("rising", 3, 3.0),
    ]
    assert flags[0].reason() == "evil: turn 3 projects 3.00, above the cut 2.00"
    # gradual: slope 0.5, rise 1.5 sd; equal steps up, so the first of them (to turn 2) is named
    assert [(f.kind, f.turn) for f in rule().flags(turns(0.0, 0.5, 1.0, 1.5))] == [("rising", 2)]
    # a step at turn 3: slope 4.25 / 5 = 0.85 (sums of products about the means 2.5 and 1.125),
    # a rise of 2.55 sd; the largest step up ends at turn 3
    flags = rule().flags(turns(0.0, 0.25, 2.0, 2.25))
    assert [(f.kind, f.turn, round(f.value, 6)) for f in flags] == [
        ("above_cut", 4, 2.25),
        ("rising", 3, 2.55),
    ]
    assert rule(rise_bound=2.6).flags(turns(0.0, 0.25, 2.0, 2.25))[1:] == []
    assert rule(rise_bound=None).flags(turns(0.0, 0.5, 1.0, 1.5)) == []  # no rise is judged
    # noisy, not rising: slope 0.2 / 5 = 0.04 (sums of products about the means 0.2 and 5),
    # a rise of 0.12 sd over 3 turns
    assert rule().flags(turns(0.0, 0.9, -0.5, 0.6)) == []
    assert rule().rise(turns(0.0, 0.9, -0.5, 0.6), "evil") == pytest.approx(0.12)
    assert rule().flags(turns(0.0, 1.9)) == []  # two turns: no rise is judged
    # a turn above the cut in a falling conversation
    assert [(f.kind, f.turn) for f in rule().flags(turns(2.5, 0.0, -1.0))] == [("above_cut", 1)]


def test_the_cuts_come_from_the_model_s_own_answers() -> None:
    answers = {t: Distribution.of([float(v) for v in np.arange(100) * s]) for t, s in
               (("evil", 1.0), ("sycophancy", -1.0))}  # fmt: skip
    calibration = Calibration("f", {}, {}, {t: {"answer": d} for t, d in answers.items()}, {})
    found = ConversationRule.from_calibration(calibration, TRAITS)
    # naive: the smallest grid percentile at which at most 5% of rows pass either cut
    values = {t: np.arange(100) * s for t, s in (("evil", 1.0), ("sycophancy", -1.0))}

    def share(q: float) -> float:
        above = [values[t] > answers[t].percentile(q) for t in TRAITS]
        return float(np.logical_or(*above).mean())

    q = next(g for g in np.arange(95.0, 100.0, 0.001) if share(g) <= 0.05)
    assert found.percentile == pytest.approx(q, abs=2e-3)
    assert found.sd == {t: pytest.approx(float(values[t].std())) for t in TRAITS}
    assert found.mean == {t: pytest.approx(float(values[t].mean())) for t in TRAITS}
    assert found.rise_bounds == dict.fromkeys(TRAITS, 1.0) and found.level == "turn"
    old = Calibration("f", {}, {}, {t: {"delta": d} for t, d in answers.items()}, {}, path="c.json")
    with pytest.raises(ConfigError, match=r"c\.json has no distribution of the model.s own"):
        ConversationRule.from_calibration(old, TRAITS)


def test_mistakes_are_one_line_errors_before_the_model_loads(
    loaded: LoadedModel, vectors: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse_to_load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model loaded before the checks")

    monkeypatch.setattr("screener.monitor.conversations.resolve_model", refuse_to_load)
    with pytest.raises(InputError, match="no such file or directory"):
        monitor_conversations(tmp_path / "none.jsonl", out=tmp_path / "o", vectors=vectors)
    logs = write_jsonl(tmp_path / "logs.jsonl", LOGS)
    with pytest.raises(ConfigError, match="needs a reference of the model's own answers"):
        monitor_conversations(logs, out=tmp_path / "o", vectors=vectors, calibration="none")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a screener run"):
        monitor_conversations(logs, out=tmp_path / "busy", vectors=vectors)


def test_cli_runs_and_counts(
    loaded: LoadedModel,
    vectors: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("screener.monitor.conversations.resolve_model", lambda *a: loaded)
    logs = write_jsonl(tmp_path / "logs.jsonl", LOGS)
    out = tmp_path / "cli"
    args = ["monitor", "conversations", str(logs), "--vectors", str(vectors), "--out", str(out)]
    assert main([*args, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("4 conversations: ") and "1 rejected; 8 turns scored" in printed
    assert main([*args, "--quiet"]) == 0  # a rerun replaces the run whole
    assert sorted(p.name for p in out.iterdir()) == sorted(
        json.loads((out / "manifest.json").read_text())["files"] + ["manifest.json"]
    )


WORDS = ["apple", "river", "stone", "cloud", "green", "quick", "tall", "small", "bright"]
WORDS += ["dark", "song", "road"]


def ordinary_logs(count: int, seed: int) -> list[dict[str, Any]]:
    """`count` conversations of 1 to 4 turns, each message a few random words."""
    rng = random.Random(seed)
    logs = []
    for number in range(count):
        texts = [
            " ".join(rng.choices(WORDS, k=rng.randint(2, 6))) for _ in range(rng.randint(2, 8))
        ]
        logs.append({"id": f"b{number}", "messages": chat(*texts)})
    return logs


def naive_conversation_rule(
    turns: dict[tuple[str, int], dict[str, float]],
) -> tuple[float, dict[str, float], dict[str, float], dict[str, float]]:
    """(percentile, cuts, rise bounds in sd, sd) by hand: each conversation's highest turn and
    least-squares climb over turns 1..n (n >= 3) in sd of all turns; the smallest grid
    percentile (interpolated between whole percentiles, as references store them) at which at
    most 5% of conversations pass a cut or a rise bound."""
    ids = list(dict.fromkeys(cid for cid, _ in turns))
    sd = {t: float(np.std([v[f"projection_{t}"] for v in turns.values()])) for t in TRAITS}
    peaks, rises = {}, {}
    for trait in TRAITS:
        series = [
            np.array([v[f"projection_{trait}"] for (c, _), v in turns.items() if c == cid])
            for cid in ids
        ]
        peaks[trait] = np.array([y.max() for y in series])
        rises[trait] = np.array(
            [np.polyfit(np.arange(1, y.size + 1), y, 1)[0] * (y.size - 1) / sd[trait]
             if y.size >= 3 else np.nan for y in series]
        )  # fmt: skip

    def percentile(values: np.ndarray, q: float) -> float:  # between whole percentiles
        return float(np.interp(q, np.arange(101), np.percentile(values, np.arange(101))))

    def bounds(q: float) -> tuple[dict[str, float], dict[str, float]]:
        cuts = {t: percentile(peaks[t], q) for t in TRAITS}
        rise = {t: percentile(rises[t][np.isfinite(rises[t])], q) for t in TRAITS}
        return cuts, rise

    def share(q: float) -> float:
        cuts, rise = bounds(q)
        above = [peaks[t] > cuts[t] for t in TRAITS] + [rises[t] > rise[t] for t in TRAITS]
        return float(np.logical_or.reduce(above).mean())

    q = next(g for g in [*np.arange(95.0, 100.0, 0.0005), 100.0] if share(g) <= 0.05)
    return (q, *bounds(q), sd)


def naive_conversation_means(
    turns: dict[tuple[str, int], dict[str, float]], trait: str
) -> np.ndarray:
    ids = list(dict.fromkeys(cid for cid, _ in turns))
    return np.array(
        [
            np.mean([v[f"projection_{trait}"] for (c, _), v in turns.items() if c == cid])
            for cid in ids
        ]
    )


def test_a_baseline_of_ordinary_conversations_sets_the_rule_at_the_conversation_level(
    loaded: LoadedModel, vectors: Path, tmp_path: Path
) -> None:
    known = ordinary_logs(200, seed=1)
    baseline = write_jsonl(tmp_path / "baseline.jsonl", known)
    # the baseline read as logs against itself: 5% of its conversations at most are flagged
    logs = write_jsonl(tmp_path / "logs.jsonl", known)
    out = tmp_path / "based"
    result = monitor_conversations(
        logs, out=out, model=loaded, vectors=vectors, baseline=baseline, calibration="none"
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reference"] == str(baseline)
    turns = naive_turns(loaded, vectors, known)
    assert summary["rule"]["reference"] == (
        f"conversations of {baseline} (200 conversations, {len(turns)} turns)"
    )
    assert summary["rule"]["level"] == "conversation"
    q, cuts, rises, sd = naive_conversation_rule(turns)
    assert summary["rule"]["percentile"] == pytest.approx(q, abs=1e-3)
    assert q < 100.0, "every conversation tied at the top: the check would prove little"
    for trait in TRAITS:
        assert summary["rule"]["cuts"][trait] == pytest.approx(cuts[trait], abs=1e-3)
        assert summary["rule"]["rise_bounds_sd"][trait] == pytest.approx(rises[trait], abs=1e-3)
        assert summary["rule"]["reference_sd"][trait] == pytest.approx(sd[trait], abs=1e-4)
        means = naive_conversation_means(turns, trait)
        assert summary["rule"]["reference_mean"][trait] == pytest.approx(means.mean(), abs=1e-6)
        error = means.std(ddof=1) / np.sqrt(means.size)
        assert summary["rule"]["reference_mean_error"][trait] == pytest.approx(error, abs=1e-6)
        shift = summary["shift_from_reference"][trait]
        assert shift["shift"] == pytest.approx(0.0, abs=1e-9)  # the logs are the baseline
    # the flags on the baseline itself: exactly the conversations the naive rule flags
    rule = ConversationRule(q, cuts, dict.fromkeys(TRAITS, 0.0), sd, rises)
    ids = list(dict.fromkeys(cid for cid, _ in turns))
    flagged = 0
    for cid in ids:
        scores = [TurnScore(n, 0, 0, 0, {t: v[f"projection_{t}"] for t in TRAITS}, {})
                  for (c, n), v in turns.items() if c == cid]  # fmt: skip
        values = {t: np.array([s.projection[t] for s in scores]) for t in TRAITS}
        x = np.arange(1, len(scores) + 1)
        rising = len(scores) >= 3 and any(
            np.polyfit(x, values[t], 1)[0] * (len(scores) - 1) / sd[t] > rises[t] for t in TRAITS
        )
        expected = rising or any(values[t].max() > cuts[t] for t in TRAITS)
        assert bool(rule.flags(scores)) == expected
        flagged += expected
    assert result.counts.flagged == flagged and 1 <= flagged <= 10  # at most 5% of 200
    assert not summary["notes"]


def test_the_logs_shift_from_the_reference_is_the_mean_of_conversation_means(
    loaded: LoadedModel, vectors: Path, tmp_path: Path
) -> None:
    out = run(loaded, vectors, tmp_path, "run")
    summary = json.loads((out / "summary.json").read_text())
    turns = naive_turns(loaded, vectors)
    calibration = load_calibration(default_calibration_path(vectors))
    for trait in TRAITS:
        means = np.array([
            np.mean([v[f"projection_{trait}"] for (c, _), v in turns.items() if c == cid])
            for cid in ("c1", "c2", "c4")
        ])  # fmt: skip
        answers = calibration.traits[trait]["answer"]  # the reference's mean has its error too
        reference_error = answers.std / np.sqrt(answers.n)
        margin = 1.96 * np.hypot(means.std(ddof=1) / np.sqrt(means.size), reference_error)
        reference_mean, reference_sd = answers.mean, answers.std
        shift = summary["shift_from_reference"][trait]
        for key, value in (("shift", 0.0), ("ci95_low", -margin), ("ci95_high", margin)):
            expected = (means.mean() + value - reference_mean) / reference_sd
            assert shift[key] == pytest.approx(expected, abs=1e-4), (trait, key)
        alarmed = any(note.startswith(f"{trait}: the logs' turns") for note in summary["notes"])
        assert alarmed == (shift["ci95_low"] > 0.5)


def test_a_baseline_needs_twenty_conversations(
    loaded: LoadedModel, vectors: Path, tmp_path: Path
) -> None:
    small = write_jsonl(tmp_path / "small.jsonl", ordinary_logs(19, seed=2))
    with pytest.raises(ConfigError, match="19 conversations could be scored, at least 20"):
        run(loaded, vectors, tmp_path, "small", baseline=small)


def test_a_rise_bound_needs_twenty_long_baseline_conversations_and_is_never_negative() -> None:
    def conversation(*values: float) -> list[TurnScore]:
        return [TurnScore(i, 0, 0, 0, {"evil": v}, {}) for i, v in enumerate(values, 1)]

    few = BaselineConversations(("evil",))
    for k in range(30):  # 25 short conversations, 5 of three turns (falling)
        few.add(conversation(float(k), 1.0) if k < 25 else conversation(3.0, 2.0, float(k % 2)))
    rule = ConversationRule.from_baseline(few, "few")
    assert rule.rise_bounds == {"evil": None} and rule.level == "conversation"
    falling = BaselineConversations(("evil",))
    for k in range(40):  # every conversation falls: the bound would be negative, it is 0
        falling.add(conversation(2.0 + k % 3, 1.0 + k % 2, 0.0))
    assert ConversationRule.from_baseline(falling, "falling").rise_bounds == {"evil": 0.0}


def test_moments_of_constant_values_have_no_spread() -> None:
    moments = Moments()
    for _ in range(1000):
        moments.add(0.1)
    assert moments.sd == 0.0 and moments.standard_error == 0.0
    for value in (1.0, 2.0, 4.0):
        moments.add(value)
    values = np.array([0.1] * 1000 + [1.0, 2.0, 4.0])
    assert moments.mean == pytest.approx(values.mean()) and moments.sd == pytest.approx(
        values.std()
    )
    assert moments.standard_error == pytest.approx(values.std(ddof=1) / np.sqrt(values.size))
