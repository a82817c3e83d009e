"""The public API: `screener.screen` on rows in memory (a list of dicts, a polars DataFrame,
a datasets.Dataset) gives what the same rows give from a file; `to_dataset()` adds the
screen's columns to the input rows; the README's Python example runs as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import screener
from screener.errors import ConfigError
from screener.model import LoadedModel
from screener.reader.memory import MEMORY_SOURCE
from screener.screening import FlagRule
from tests.test_reader import prepare_hub_cache
from tests.test_screen import (  # noqa: F401
    STEPS,
    loaded,
    rows,
    screen_options,
    tiny_vectors,
    write_jsonl,
)

README = Path(__file__).resolve().parent.parent / "README.md"
SCORE_COLUMNS = ["delta_evil", "delta_sycophancy", "flagged", "flag_traits", "risk"]


def flat(records: list[dict]) -> list[dict]:
    return [
        {
            "id": r["id"],
            "prompt": r["messages"][0]["content"],
            "response": r["messages"][1]["content"],
        }
        for r in records
    ]


def options(tmp: Path) -> dict:
    return screen_options(
        vectors=tmp / "vectors.safetensors",
        calibration="none",
        max_new_tokens=STEPS,
        store=tmp / "store.duckdb",
        rule=FlagRule(top_k=3),
    )


@pytest.mark.parametrize("kind", ["list", "polars", "datasets"])
def test_rows_in_memory_score_as_the_same_rows_in_a_file(
    loaded: LoadedModel,  # noqa: F811
    tmp_path: Path,
    kind: str,
) -> None:
    tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    records = flat(rows())
    from_file = screener.screen(
        write_jsonl(tmp_path / "data.jsonl", records), model=loaded, **options(tmp_path)
    )
    data = {
        "list": records,
        "polars": pl.DataFrame(records),
        "datasets": datasets.Dataset.from_list(records),
    }[kind]
    in_memory = screener.screen(data, model=loaded, out=tmp_path / "out", **options(tmp_path))
    assert_frame_equal(
        in_memory.scores.select("id", *SCORE_COLUMNS),
        from_file.scores.select("id", *SCORE_COLUMNS),
    )
    # a row's line is its index, from 0
    assert in_memory.scores["source"].unique().to_list() == [MEMORY_SOURCE]
    assert in_memory.scores["source_line"].to_list() == list(range(len(records)))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["data"].startswith(f"{MEMORY_SOURCE} ") and "of 8 rows" in summary["data"]
    # the kept rows, in the input's own shape: parquet with the input's schema, or JSON lines
    kept = [r for r, f in zip(records, from_file.scores["flagged"], strict=True) if not f]
    if kind == "list":
        lines = (tmp_path / "out" / "filtered.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines] == kept
    else:
        written = pl.read_parquet(tmp_path / "out" / "filtered.parquet")
        assert written.to_dicts() == kept


def test_bad_rows_in_memory_are_rejected_with_their_index(
    loaded: LoadedModel,  # noqa: F811
    tmp_path: Path,
) -> None:
    tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    records: list = [*flat(rows())[:4], "not a row", {"id": "x", "prompt": "only a prompt"}]
    result = screener.screen(records, model=loaded, **options(tmp_path))
    assert [(r.line, r.reason) for r in result.rejected] == [
        (4, "row is a string, expected an object"),
        (5, "missing field(s) response for format prompt_response (fields present: id, prompt)"),
    ]
    assert len(result.samples) == 4


def test_other_objects_are_refused_with_what_is_accepted(tmp_path: Path) -> None:
    split = datasets.DatasetDict({"train": datasets.Dataset.from_list(flat(rows()))})
    with pytest.raises(ConfigError, match=r"pick a split: data\['train'\]"):
        screener.screen(split, model="embedded")
    with pytest.raises(ConfigError, match="a list of dicts, a polars DataFrame"):
        screener.screen(42, model="embedded")


def test_to_dataset_is_the_input_rows_with_the_screens_columns(
    loaded: LoadedModel,  # noqa: F811
    tmp_path: Path,
) -> None:
    tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    records = flat(rows())
    data = write_jsonl(tmp_path / "data.jsonl", [*records[:3], {"id": "bad"}, *records[3:]])
    result = screener.screen(data, model=loaded, **options(tmp_path))
    table = result.to_dataset()
    assert table.column_names == [
        "id",
        "prompt",
        "response",
        *SCORE_COLUMNS[2:],
        *SCORE_COLUMNS[:2],
    ]
    assert table.num_rows == len(records)  # the rejected row is not there
    expected = result.scores.select("id", *SCORE_COLUMNS).to_dicts()
    got = table.select_columns(["id", *SCORE_COLUMNS]).to_list()
    assert got == expected
    assert [row["prompt"] for row in table] == [r["prompt"] for r in records]
    kept = table.filter(lambda row: not row["flagged"])
    assert kept["id"] == [
        r["id"] for r, f in zip(records, result.scores["flagged"], strict=True) if not f
    ]
    assert kept.num_rows == result.kept > 0
    flagged = [r["id"] for r, f in zip(records, result.scores["flagged"], strict=True) if f]
    assert result.flagged["id"].to_list() == flagged != []
    assert result.flagged["source_line"].to_list() == [  # lines in the file, past the bad row
        records.index(r) + (1 if records.index(r) < 3 else 2) for r in records if r["id"] in flagged
    ]


def test_to_dataset_refuses_to_overwrite_an_input_column(
    loaded: LoadedModel,  # noqa: F811
    tmp_path: Path,
) -> None:
    tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    records = [{**r, "risk": "low"} for r in flat(rows())]
    result = screener.screen(records, model=loaded, **options(tmp_path))
    with pytest.raises(screener.ScreenerError, match=r"has column\(s\) risk"):
        result.to_dataset()


def python_example() -> str:
    """The README's first Python example (under "From Python")."""
    section = README.read_text(encoding="utf-8").split("## From Python", 1)[1]
    return re.findall(r"```python\n(.*?)```", section, re.S)[0]


@pytest.mark.slow
def test_the_readme_example_runs_on_the_embedded_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCREENER_HOME", str(tmp_path))
    monkeypatch.chdir(README.parent)
    namespace: dict = {}
    exec(python_example(), namespace)
    kept, result = namespace["kept"], namespace["result"]
    assert result.summary.counts.rows_read == 8
    assert kept.num_rows == result.kept and "flagged" in kept.column_names
    assert result.flagged.height == result.summary.counts.flagged


def test_writing_a_result_later_gives_the_files_of_a_run_with_out(
    loaded: LoadedModel,  # noqa: F811
    tmp_path: Path,
) -> None:
    tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    data = write_jsonl(tmp_path / "data.jsonl", [*rows(), {"id": "bad"}])
    direct = screener.screen(data, model=loaded, out=tmp_path / "direct", **options(tmp_path))
    later = screener.screen(data, model=loaded, **options(tmp_path))
    assert later.outputs == [] and not (tmp_path / "later").exists()
    written = later.write(tmp_path / "later")
    assert sorted(p.name for p in written) == sorted(p.name for p in direct.outputs)
    for name in (
        "summary.json",
        "scores.parquet",
        "filtered.jsonl",
        "flagged.jsonl",
        "rejected.jsonl",
        "reference.json",
        "report.html",
    ):
        assert (tmp_path / "later" / name).read_bytes() == (tmp_path / "direct" / name).read_bytes()


def test_the_splits_of_a_saved_dataset_dict_stay_splits(
    loaded: LoadedModel,  # noqa: F811
    tmp_path: Path,
) -> None:
    tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    records = flat(rows())
    saved = tmp_path / "dd"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(records[:6]),
            "test": datasets.Dataset.from_list(records[6:]),
        }
    ).save_to_disk(str(saved))
    out = tmp_path / "run"
    result = screener.screen(saved, model=loaded, out=out, **options(tmp_path))
    assert not (out / "filtered.parquet").exists()
    assert sorted(p.name for p in (out / "filtered").iterdir()) == ["test.parquet", "train.parquet"]
    kept = set(result.scores.filter(~pl.col("flagged"))["id"])
    for split, part in (("train", records[:6]), ("test", records[6:])):
        written = pl.read_parquet(out / "filtered" / f"{split}.parquet")
        assert written.columns == list(part[0])
        assert written["id"].to_list() == [r["id"] for r in part if r["id"] in kept]
    assert 0 < len(kept) < len(records)


def test_a_hub_dataset_in_the_local_cache_is_screened_split_by_split(
    loaded: LoadedModel,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    records = flat(rows())
    cache = tmp_path / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    prepare_hub_cache(cache, "acme/chats", {"train": records[:6], "test": records[6:]})
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    result = screener.screen("acme/chats", model=loaded, out=out, **options(tmp_path))
    assert result.summary.counts.rows_read == len(records)
    assert sorted(p.name for p in (out / "filtered").iterdir()) == ["test.parquet", "train.parquet"]
    kept = set(result.scores.filter(~pl.col("flagged"))["id"])
    for split, part in (("train", records[:6]), ("test", records[6:])):
        written = pl.read_parquet(out / "filtered" / f"{split}.parquet")
        assert written["id"].to_list() == [r["id"] for r in part if r["id"] in kept]
    assert set(result.scores["source"]) == {"acme/chats[train]", "acme/chats[test]"}
