"""ScoredSamples: scored samples written chunk by chunk to disk read back exactly, by index,
by iteration and by column; the spill directory never outlives its run."""

from __future__ import annotations

import gc
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from screener.screening.scoring import ScoredSample
from screener.screening.spill import ScoredSamples, remove_orphans

TRAITS = ("evil", "sycophancy")


def sample(i: int, *, base: bool) -> ScoredSample:
    projection = {"evil": 0.1 * i + 1 / 3, "sycophancy": -(2.0**-i)}
    prompt_last = {"evil": math.pi * i, "sycophancy": float(i)}
    return ScoredSample(
        id=f"row-{i} ünï",
        source="data.jsonl",
        line=i + 1,
        format="messages",
        content_hash=f"{i:064x}",
        prompt_tokens=10 + i,
        response_tokens=3 + i,
        warnings=("truncated",) if i % 3 == 0 else (),
        projection=projection,
        prompt_last=prompt_last,
        base_response=f"base {i}" if base else None,
        base_response_tokens=i if base else None,
        base_projection={"evil": i / 7, "sycophancy": 1e-300 * i} if base else None,
    )


def written(
    tmp_path: Path, chunks: list[list[ScoredSample]], row_group_rows: int = 1
) -> ScoredSamples:
    samples = ScoredSamples(TRAITS, tmp_path, row_group_rows)
    for chunk in chunks:
        samples.append(chunk)
    samples.finish()
    return samples


def test_samples_read_back_equal_what_was_written_across_chunks(tmp_path: Path) -> None:
    originals = [sample(i, base=i % 4 != 1) for i in range(11)]
    samples = written(tmp_path, [originals[:4], [], originals[4:5], originals[5:]])
    assert len(samples) == 11 and samples.groups == 3
    assert list(samples) == originals
    assert [samples[i] for i in (10, 0, 4, 5, -1)] == [originals[i] for i in (10, 0, 4, 5, 10)]
    assert samples[2:9:3] == originals[2:9:3]
    with pytest.raises(IndexError):
        samples[11]
    assert samples.take("id", [1, 4, 5, 10]) == [originals[i].id for i in (1, 4, 5, 10)]
    deltas = samples.column("proj_evil") - samples.column("base_proj_evil")
    for i, original in enumerate(originals):
        expected = original.delta("evil")
        assert np.isnan(deltas[i]) if expected is None else deltas[i] == expected
    np.testing.assert_array_equal(
        samples.column("prompt_last_sycophancy"), [float(i) for i in range(11)]
    )


def test_chunks_are_gathered_into_row_groups(tmp_path: Path) -> None:
    """Chunks are written once `row_group_rows` samples are gathered (the rest at finish); the
    row groups in the file are the ones indexing and `take` walk."""
    originals = [sample(i, base=True) for i in range(11)]
    chunks = [originals[:2], originals[2:3], originals[3:7], originals[7:8], originals[8:]]
    samples = ScoredSamples(TRAITS, tmp_path, row_group_rows=4)
    for chunk in chunks:
        samples.append(chunk)
    assert len(samples) == 11  # counted while rows wait for their row group
    samples.finish()
    groups = [samples.group_table(g).num_rows for g in range(samples.groups)]
    assert groups == [7, 4] and samples.path.stat().st_size > 0
    assert list(samples) == originals and samples[8] == originals[8]
    assert samples.take("line", [0, 6, 7, 10]) == [1, 7, 8, 11]
    assert samples.group_start(1) == 7


def test_an_empty_run_reads_as_empty(tmp_path: Path) -> None:
    samples = written(tmp_path, [])
    assert len(samples) == 0 and list(samples) == [] and samples.column("proj_evil").size == 0


def test_the_spill_directory_goes_on_close_and_when_collected(tmp_path: Path) -> None:
    samples = written(tmp_path, [[sample(0, base=True)]])
    directory = samples.directory
    assert directory.parent == tmp_path and (directory / "scored.parquet").exists()
    samples.close()
    assert not directory.exists()
    samples = written(tmp_path, [[sample(0, base=True)]])
    directory = samples.directory
    del samples
    gc.collect()
    assert not directory.exists()


def test_directories_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    orphan = tmp_path / f"run-{dead.stdout.strip()}-abc"
    orphan.mkdir()
    (orphan / "scored.parquet").write_bytes(b"left by a killed run")
    mine = tmp_path / f"run-{os.getpid()}-xyz"
    mine.mkdir()
    other = tmp_path / "not-ours"
    other.mkdir()
    remove_orphans(tmp_path)
    assert not orphan.exists() and mine.exists() and other.exists()
