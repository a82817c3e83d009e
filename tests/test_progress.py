"""Progress lines: the rate, the time left and the expected row count, against hand values."""

from __future__ import annotations

from pathlib import Path

import datasets
import polars as pl
import pytest

from screener import progress
from screener.progress import Rate, duration
from screener.reader.files import expected_rows


def test_rate_and_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 100.0, 104.0, 110.0, 111.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    rate = Rate()  # started at 100 s
    assert rate.of(5) == "starting"  # no time has passed
    assert rate.of(10, 30) == "2.5/s, 8 s left"  # 10 in 4 s; 20 more at 2.5/s
    assert rate.of(3000) == "300/s"  # 3000 in 10 s
    assert rate.of(0) == "starting"


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0 s"), (59.4, "59 s"), (65, "1 min 05 s"), (7380, "2 h 03 min")]
)
def test_durations_read_as_people_write_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_expected_rows_of_each_file_type(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"x": 1}\n\n  \n{"x": 2}\n{"x": 3}')  # no final newline
    (tmp_path / "b.csv").write_text("prompt,response\nQ1,A1\nQ2,A2\n")
    pl.DataFrame({"x": list(range(7))}).write_parquet(tmp_path / "c.parquet")
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"x": 1}] * 4),
            "test": datasets.Dataset.from_list([{"x": 2}]),
        }
    ).save_to_disk(str(tmp_path / "d"))
    assert expected_rows(tmp_path / "a.jsonl") == 3
    assert expected_rows(tmp_path / "b.csv") == 2
    assert expected_rows(tmp_path / "c.parquet") == 7
    assert expected_rows(tmp_path / "d") == 5
    assert expected_rows(tmp_path) == 3 + 2 + 7 + 5  # a directory: its data files together
    (tmp_path / "e.json").write_text("[]")
    assert expected_rows(tmp_path) is None  # a JSON array is only known by reading it
