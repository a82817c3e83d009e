"""Read the data a second time, in step with the scored samples.

A screen keeps no rows in memory: its outputs that need the rows (the filtered file,
flagged.jsonl, `ScreenResult.to_dataset()`) read the data again and pair each row with its
scored sample by (source, line).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from screener.errors import ScreenerError
from screener.options import ReadOptions
from screener.reader import read_dataset
from screener.reader.memory import InMemoryData
from screener.records import Sample
from screener.screening.scoring import ScoredSample
from screener.screening.spill import ScoredSamples


def screened_rows(
    samples: ScoredSamples, data: str | Path | InMemoryData, read: ReadOptions
) -> Iterator[tuple[int, ScoredSample, Sample]]:
    """(index, scored sample, row read again) for every scored sample, in input order.
    Raises when a scored sample's row is no longer there (the data changed); reading stops at
    the last scored sample."""
    scored = enumerate(samples)
    current = next(scored, None)
    # Rows rejected on the first read (duplicate ids among them) are skipped below: they are
    # not the next scored sample. So the second read need not track ids.
    for record in read_dataset(data, fmt=read.fmt, fields=read.fields, check_duplicates=False):
        if current is None:
            break
        if not isinstance(record, Sample):
            continue
        index, sample = current
        if (record.source, record.line) != (sample.source, sample.line):
            continue  # rejected on the first read, or when rendered
        current = next(scored, None)
        yield index, sample, record
    if current is not None:
        raise ScreenerError(
            f"the data changed while it was screened (row {current[1].line} of "
            f"{current[1].source} is gone): rerun screener on data that is not being changed"
        )
