"""A `screener screen` process killed with SIGKILL at several points and restarted finishes
with the same outputs as a run that was never interrupted, scores to fp32 rounding (real
subprocesses, tiny model)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from screener.atomic import remove_stale_temporaries
from screener.model import load_model
from screener.vectors import TraitVector, VectorFile, save_vectors
from tests.conftest import save_tiny_model
from tests.test_golden import PNG, differences
from tests.test_screen import write_jsonl

ROWS = 40
CHUNK = 5
COMPARED = [
    "scores.parquet",
    "summary.json",
    "reference.json",
    "filtered.jsonl",
    "flagged.jsonl",
    "rejected.jsonl",
    "report.html",
]


def dataset(path: Path) -> Path:
    records: list[dict] = []
    for i in range(ROWS):
        records.append(
            {
                "id": f"row-{i}",
                "messages": [
                    {"role": "user", "content": f"Question {i}: what is {i} plus {i * 7}?"},
                    {"role": "assistant", "content": f"It is {i + i * 7}, answer {i}."},
                ],
            }
        )
    write_jsonl(path, records)
    with path.open("a", encoding="utf-8") as handle:
        handle.write("{not json\n")
    return path


@pytest.fixture
def setup(tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerFast) -> tuple[list[str], Path]:
    model_dir = save_tiny_model(tmp_path / "tiny", "llama", tiny_tokenizer)
    loaded = load_model(str(model_dir), dtype="fp32", device="cpu")
    generator = torch.Generator().manual_seed(3)
    d = loaded.model.config.hidden_size
    traits = {
        name: TraitVector(name, torch.randn(4, d, generator=generator), layer, [0.5] * 4)
        for name, layer in (("evil", 3), ("sycophancy", 1))
    }
    vectors = tmp_path / "vectors.safetensors"
    save_vectors(VectorFile.for_model(loaded, traits), vectors)
    data = dataset(tmp_path / "data.jsonl")
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "screener.cli",
        "screen",
        str(data),
        "--model",
        str(model_dir),
        "--dtype",
        "fp32",
        "--vectors",
        str(vectors),
        "--calibration",
        "none",
        "--max-new-tokens",
        "6",
        "--chunk-rows",
        str(CHUNK),
        "--store",
        str(tmp_path / "store.duckdb"),
        "--out",
        str(out),
    ]
    return command, tmp_path


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def kill_when(command: list[str], marker: str, occurrence: int) -> None:
    """Start the command and SIGKILL it right after its `occurrence`-th stderr line that
    contains `marker`."""
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=environment()
    )
    assert process.stderr is not None
    seen = 0
    for line in process.stderr:
        if marker in line:
            seen += 1
            if seen == occurrence:
                process.send_signal(signal.SIGKILL)
                break
    process.stderr.close()
    assert process.wait() == -signal.SIGKILL, f"the run ended before {marker!r} #{occurrence}"


def finish(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, env=environment(), check=False)
    assert done.returncode == 0, done.stderr


def snapshot(out: Path) -> dict[str, str]:
    """The compared outputs as text: scores.parquet as JSON lines, the report without its PNG
    bytes, and the rows of screen.duckdb's tables."""
    files = {
        name: pl.read_parquet(out / name).write_ndjson()
        if name.endswith(".parquet")
        else PNG.sub("<png>", (out / name).read_text(encoding="utf-8"))
        for name in COMPARED
    }
    with duckdb.connect(str(out / "screen.duckdb"), read_only=True) as db:
        files["screen.duckdb:scores"] = repr(db.sql("SELECT * FROM scores ORDER BY id").fetchall())
        files["screen.duckdb:reasons"] = repr(
            db.sql("SELECT * FROM reasons ORDER BY ALL").fetchall()
        )
    return files


def same_outputs(expected: dict[str, str], got: dict[str, str]) -> list[str]:
    """Every difference: text, ids, counts and flags exactly; scores to fp32 rounding. A resumed
    run computes the rows it still lacks in other batches than an uninterrupted one, and CPU
    kernels sum in another order for another batch shape (differences near 1e-9 seen)."""
    assert expected.keys() == got.keys()
    return [
        f"{name}: {d}" for name in expected for d in differences(expected[name], got[name], 1e-6)
    ]


def test_killed_runs_resume_to_identical_outputs(setup: tuple[list[str], Path]) -> None:
    command, tmp = setup
    finish(command)
    uninterrupted = snapshot(tmp / "out")
    shutil.rmtree(tmp / "out")
    (tmp / "store.duckdb").unlink()
    for extra in tmp.glob("store.duckdb.*"):  # write-ahead log, if any
        extra.unlink()

    # between chunks, in the middle of base generation, and while outputs are being written
    kill_when(command, "scored", 1)
    kill_when(command, "base responses", 2)
    kill_when(command, f"scored {ROWS} samples", 1)
    # the store holds whole results only: every cached sample has all its layers, full vectors
    with duckdb.connect(str(tmp / "store.duckdb"), read_only=True) as db:
        layer_counts = db.sql(
            "SELECT count(*) FROM activations_v2 GROUP BY content_hash"
        ).fetchall()
        sizes = db.sql(
            "SELECT DISTINCT octet_length(response_mean), octet_length(last_prompt) "
            "FROM activations_v2"
        ).fetchall()
    assert layer_counts and {count for (count,) in layer_counts} == {3}  # trait layers + probe
    assert sizes == [(64 * 4, 64 * 4)]
    # files under their final names are complete (written beside, then renamed)
    finals = {*COMPARED, "filtered.jsonl", "screen.duckdb", "run_stats.json"}
    visible = {p.name for p in (tmp / "out").glob("*") if not p.name.startswith(".")}
    assert visible <= finals, visible - finals
    finish(command)
    assert same_outputs(uninterrupted, snapshot(tmp / "out")) == []
    # the killed writers' temporary files were cleared away by the run that finished
    assert not list((tmp / "out").glob(".*.tmp"))
    # the last run computed nothing: everything was saved before the final kill
    stats = json.loads((tmp / "out" / "run_stats.json").read_text())
    assert stats["generated"] == 0 and stats["collected"] == 0, stats


def test_only_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead = tmp_path / f".scores.parquet.{finished.pid}.0123abcd.tmp"
    alive = tmp_path / f".summary.json.{os.getpid()}.89abcdef.tmp"
    unrelated = tmp_path / ".notes.tmp"
    for path in (dead, alive, unrelated):
        path.write_text("partial")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert alive.exists() and unrelated.exists() and not dead.exists()
