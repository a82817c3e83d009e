"""The run directory's typed summary: summary.json parses into a RunSummary and writes back
byte for byte; a missing or mistyped field is an error naming the file and the field; fields
added since the first release may be absent."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from screener.errors import ConfigError
from screener.reader import FieldNames
from screener.run_directory import (
    SUMMARY_JSON,
    load_run,
    read_scores,
    summary_text,
    write_manifest,
)
from screener.run_summary import summary_from_json
from screener.screening.flags import DatasetShift, MeanInterval

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("run", ["screen-jsonl", "screen-csv", "screen-parquet", "gate"])
def test_a_recorded_summary_reads_back_and_writes_the_same_bytes(run: str) -> None:
    path = GOLDEN / run / SUMMARY_JSON
    text = path.read_text(encoding="utf-8")
    assert summary_text(summary_from_json(json.loads(text), path)) == text


def test_the_typed_fields_hold_the_recorded_values() -> None:
    summary = summary_from_json(_golden(), GOLDEN / "screen-parquet" / SUMMARY_JSON)
    assert summary.counts.rows_read == 8 and summary.counts.flagged == 4
    assert summary.counts.invariant == "4 kept + 4 flagged + 0 rejected = 8 rows read"
    evil = summary.traits["evil"]
    assert evil.layer == 3 and evil.flagged == 2
    assert evil.cut == 0.14882358848474975
    assert evil.dataset_score == MeanInterval(
        0.09801774319413668, 0.014418305406927928, 0.1906380598352093, 8
    )
    assert evil.dataset_shift == DatasetShift(
        -0.016435731052980598, -0.5584956993594616, 0.5841157467068119
    )
    assert not evil.dataset_shift.alarm
    assert summary.categories == {"other": 1, "underspecified_query": 3}
    assert [c.words for c in summary.clusters] == [("small", "capital", "brilliant", "briefly")]
    assert summary.model.spec == "tiny-llama" and summary.generation is not None
    assert summary.generation.max_new_tokens == 5 and not summary.approximate
    assert summary.calibration is not None
    assert summary.calibration.reference.scored == 6
    assert summary.fields == FieldNames() and summary.reader_format == "auto"


def _golden() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / "screen-parquet" / SUMMARY_JSON).read_text())
    return data


def test_runs_from_before_newer_fields_read_with_their_defaults() -> None:
    data = _golden()
    del data["reader"]  # recorded since validate re-reads with the run's fields
    del data["traits"]["evil"]["dataset_shift"]  # since the shift alarm
    del data["calibration"]["style_control"]  # since style control
    summary = summary_from_json(data, Path("old/summary.json"))
    assert (summary.reader_format, summary.fields) == ("auto", FieldNames())
    assert summary.traits["evil"].dataset_shift is None
    assert summary.calibration is not None and summary.calibration.style_control == {}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("counts"), "field counts is missing"),
        (lambda d: d["traits"]["evil"].pop("cut_rule"), "field traits.evil.cut_rule is missing"),
        (
            lambda d: d["traits"]["evil"].update(cut="hi"),
            "field traits.evil.cut should be a number",
        ),
        (lambda d: d["counts"].update(kept=True), "field counts.kept should be a whole number"),
        (lambda d: d.update(method="guess"), "field method should be delta or prompt-last"),
        (lambda d: d.update(notes=[1]), "field notes should be a list of strings"),
        (lambda d: d["clusters"].append(3), r"field clusters\[1\] should be an object"),
        (lambda d: d.update(traits=[]), "field traits should be an object"),
    ],
)
def test_a_damaged_summary_names_the_file_and_the_field(edit: Any, message: str) -> None:
    data = copy.deepcopy(_golden())
    edit(data)
    with pytest.raises(ConfigError, match=rf"^run/summary\.json: {message}"):
        summary_from_json(data, Path("run/summary.json"))


def test_a_directory_that_is_not_a_run_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        load_run(tmp_path / "absent")
    with pytest.raises(ConfigError, match=r"no manifest\.json, so not a complete screener run"):
        load_run(tmp_path)
    write_manifest(tmp_path, [SUMMARY_JSON])
    (tmp_path / SUMMARY_JSON).write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_run(tmp_path)
    (tmp_path / "scores.parquet").write_text("a file of another run")
    with pytest.raises(ConfigError, match=r"scores\.parquet: not part of the run .* does not list"):
        read_scores(tmp_path)
