"""`screener export`: the selected rows of a run's scores table, in each format, with the
same values as scores.parquet."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import polars as pl
import pytest

from screener.cli import main
from screener.export import export_run
from screener.model import LoadedModel
from screener.screening import FlagRule
from tests.test_screen import loaded, rows, run, tiny_vectors, write_jsonl  # noqa: F401


@pytest.fixture
def run_dir(loaded: LoadedModel, tmp_path: Path) -> Path:  # noqa: F811
    tiny_vectors(loaded, tmp_path / "vectors.safetensors")
    data = write_jsonl(tmp_path / "data.jsonl", rows())
    run(loaded, data, tmp_path, "run", rule=FlagRule(top_k=3))
    return tmp_path / "run"


def test_each_selection_and_format_holds_the_right_rows(run_dir: Path) -> None:
    scores = pl.read_parquet(run_dir / "scores.parquet")
    flagged_ids = scores.filter(pl.col("flagged"))["id"].to_list()
    kept_ids = scores.filter(~pl.col("flagged"))["id"].to_list()
    assert flagged_ids and kept_ids and len(flagged_ids) + len(kept_ids) == len(scores)
    expected = {"flagged": flagged_ids, "kept": kept_ids, "all": scores["id"].to_list()}
    for only, ids in expected.items():
        path, count = export_run(run_dir, only=only, fmt="parquet")  # type: ignore[arg-type]
        assert path == run_dir / f"export-{only}.parquet" and count == len(ids)
        table = pl.read_parquet(path)
        assert table["id"].to_list() == ids
        assert table.equals(scores.filter(pl.col("id").is_in(ids)))

        path, _ = export_run(run_dir, only=only, fmt="jsonl")  # type: ignore[arg-type]
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["id"] for r in records] == ids
        for record in records:
            source = scores.row(by_predicate=pl.col("id") == record["id"], named=True)
            assert record["delta_evil"] == pytest.approx(source["delta_evil"], rel=1e-12)
            assert record["flag_traits"] == source["flag_traits"]

        path, _ = export_run(run_dir, only=only, fmt="csv")  # type: ignore[arg-type]
        with path.open(newline="") as handle:
            table_rows = list(csv.DictReader(handle))
        assert [r["id"] for r in table_rows] == ids
        for row in table_rows:
            source = scores.row(by_predicate=pl.col("id") == row["id"], named=True)
            assert row["flag_traits"] == "; ".join(source["flag_traits"])
            assert float(row["risk"]) == pytest.approx(source["risk"], rel=1e-12)


def test_the_command_reports_rows_and_refuses_bad_arguments(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "mine.csv"
    code = main(
        ["export", str(run_dir), "--only", "flagged", "--format", "csv", "--out", str(target)]
    )
    assert code == 0
    flagged = int(pl.read_parquet(run_dir / "scores.parquet")["flagged"].sum())
    assert flagged >= 3  # the top 3 per trait, overlapping or not
    assert capsys.readouterr().out.strip() == f"wrote {flagged} flagged rows to {target}"
    assert main(["export", str(tmp_path / "empty")]) == 2
    assert f"{tmp_path / 'empty'}: no manifest.json, so not a complete" in capsys.readouterr().err
