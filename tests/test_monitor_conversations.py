"""`monitor conversations`: every assistant turn's projections against a naive one-sample-per-
forward recomputation, the flag rule against hand values, the files, the accounting, and that
chunking changes nothing."""

from __future__ import annotations

import json
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
from screener.monitor.turn_flags import TurnRule, TurnScore
from screener.records import Message, Sample
from screener.render import RenderedSample, Renderer
from screener.screening import calibrate, save_calibration
from screener.screening.calibration import Calibration, Distribution, default_calibration_path
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


def naive_turns(loaded: LoadedModel, vectors: Path) -> dict[tuple[str, int], dict[str, float]]:
    """(conversation, turn) -> projection_<trait> and prompt_last_<trait>, one turn per
    forward pass with every hidden state."""
    file = load_vectors(vectors)
    renderer = Renderer(loaded.tokenizer)
    found = {}
    for record in LOGS:
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
    rule = TurnRule(
        summary["rule"]["percentile"],
        summary["rule"]["cuts"],
        summary["rule"]["reference_sd"],
    )
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


def rule() -> TurnRule:
    return TurnRule(98.0, {"evil": 2.0}, {"evil": 1.0})


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
    # gradual: slope 0.4, rise 1.2 sd; no turn is 1 sd above the first until turn 4 (1.2)
    assert [(f.kind, f.turn) for f in rule().flags(turns(0.0, 0.4, 0.8, 1.2))] == [("rising", 4)]
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
    found = TurnRule.from_calibration(calibration, TRAITS)
    # naive: the smallest grid percentile at which at most 5% of rows pass either cut
    values = {t: np.arange(100) * s for t, s in (("evil", 1.0), ("sycophancy", -1.0))}

    def share(q: float) -> float:
        above = [values[t] > answers[t].percentile(q) for t in TRAITS]
        return float(np.logical_or(*above).mean())

    q = next(g for g in np.arange(95.0, 100.0, 0.001) if share(g) <= 0.05)
    assert found.percentile == pytest.approx(q, abs=2e-3)
    assert found.sd == {t: pytest.approx(float(values[t].std())) for t in TRAITS}
    old = Calibration("f", {}, {}, {t: {"delta": d} for t, d in answers.items()}, {}, path="c.json")
    with pytest.raises(ConfigError, match=r"c\.json has no distribution of the model.s own"):
        TurnRule.from_calibration(old, TRAITS)


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


def test_a_baseline_of_ordinary_logs_sets_the_cuts_from_its_turns(
    loaded: LoadedModel, vectors: Path, tmp_path: Path
) -> None:
    valid = [r for r in LOGS if isinstance(r["messages"], list)]
    copies = [{**r, "id": f"{r['id']}-{k}"} for k in range(3) for r in valid]  # 24 turns
    baseline = write_jsonl(tmp_path / "baseline.jsonl", copies)
    out = run(loaded, vectors, tmp_path, "based", baseline=baseline, calibration="none")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reference"] == str(baseline)
    assert summary["rule"]["reference"] == f"assistant turns of {baseline} (24 turns)"
    turns = naive_turns(loaded, vectors)
    values = {t: np.array([v[f"projection_{t}"] for v in turns.values()] * 3) for t in TRAITS}

    def share(q: float) -> float:
        above = [values[t] > np.percentile(values[t], q) for t in TRAITS]
        return float(np.logical_or(*above).mean())

    q = next(g for g in [*np.arange(95.0, 100.0, 0.001), 100.0] if share(g) <= 0.05)
    for trait in TRAITS:
        expected = float(np.percentile(values[trait], q))
        assert summary["rule"]["cuts"][trait] == pytest.approx(expected, abs=1e-3)
        assert summary["rule"]["reference_sd"][trait] == pytest.approx(
            values[trait].std(), abs=1e-4
        )
    small = write_jsonl(tmp_path / "small.jsonl", valid)
    with pytest.raises(ConfigError, match="8 assistant turns could be scored, at least 20"):
        run(loaded, vectors, tmp_path, "small", baseline=small)
