"""What a screen checks before the model loads, so that a mistake shows in a second rather than
after minutes of loading: the data (its path, format, fields and first rows), the traits
against the vector file, the calibration, the output directory and the run store (waited for
while another run holds it).

    checked = check_before_loading(data, traits, scoring, read, out, say)
    checked.vectors, checked.traits, checked.calibration, checked.notes
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from screener.errors import ConfigError
from screener.options import ReadOptions, ScoringOptions
from screener.reader import read_dataset
from screener.reader.memory import InMemoryData, check_in_memory
from screener.records import Sample
from screener.run_directory import check_out_dir
from screener.screening.calibration import (
    Calibration,
    default_calibration_path,
    load_calibration,
    usable_calibration,
)
from screener.screening.ray_engine import require_ray
from screener.served import AnswerServer, check_server
from screener.store import RunStore
from screener.vectors.store import VectorFile, load_vectors

DEFAULT_TRAITS = ("evil", "sycophancy", "hallucination")
PEEK_ROWS = 1000  # rows read at most to find the first usable one


@dataclass(frozen=True)
class Checked:
    """What the checks found and the run goes on with."""

    vectors: VectorFile  # not yet checked against the model, which is not loaded
    traits: tuple[str, ...]
    calibration: Calibration | None
    notes: list[str]


def check_before_loading(
    data: str | Path | InMemoryData,
    traits: Sequence[str] | None,
    scoring: ScoringOptions,
    read: ReadOptions,
    out: Path | None,
    progress: Callable[[str], None] | None = None,
    *,
    replace_out: bool = False,
    server: AnswerServer | None = None,
) -> Checked:
    """Every check of a screen that needs no model; raises the first problem found. `server`:
    the server that will write the base answers (it must answer and serve the model)."""
    check_in_memory(data)
    if scoring.engine == "ray":
        require_ray()
    peek(data, read)
    vectors = load_vectors(scoring.vectors)
    chosen = choose_traits(vectors, traits)
    calibration, notes = resolve_calibration(scoring.calibration, scoring.vectors, vectors, chosen)
    if out is not None:
        check_out_dir(out, replace=replace_out)
    wait_for_store(scoring.store, progress)
    if server is not None and scoring.method == "delta":
        check_server(server)
    return Checked(vectors, chosen, calibration, notes)


def wait_for_store(store: str | Path | None, progress: Callable[[str], None] | None) -> None:
    """Open the run store and close it: one that another run holds is waited for now, before
    the model takes memory (its open raises when it cannot be used)."""
    with RunStore.open(store, progress=progress):
        pass


def peek(data: str | Path | InMemoryData, read: ReadOptions) -> None:
    """Read up to the first usable row, so that a missing path, an empty file, an unknown
    format or a missing field stops the run now (the reader raises)."""
    reader = read_dataset(data, fmt=read.fmt, fields=read.fields, on_bad_row=read.on_bad_row)
    for count, record in enumerate(reader, 1):
        if isinstance(record, Sample) or count >= PEEK_ROWS:
            return


def choose_traits(vectors: VectorFile, traits: Sequence[str] | None) -> tuple[str, ...]:
    """The traits to screen: those asked for (each must be in the file), else the default
    three when the file has them, else every trait in the file."""
    if traits:
        for trait in traits:
            vectors.trait(trait)  # raises naming the traits the file has
        return tuple(dict.fromkeys(traits))
    if all(t in vectors.traits for t in DEFAULT_TRAITS):
        return DEFAULT_TRAITS
    return tuple(vectors.traits)


def resolve_calibration(
    spec: str | Path | None, vectors_spec: str | Path, vectors: VectorFile, traits: tuple[str, ...]
) -> tuple[Calibration | None, list[str]]:
    """`auto`: the file beside the vectors if there is one; `none`/None: no calibration."""
    if spec is None or str(spec) == "none":
        return None, []
    if str(spec) == "auto":
        path = default_calibration_path(vectors_spec)
        if not path.exists():
            return None, [f"no calibration beside the vectors ({path}): run screener calibrate"]
    else:
        path = Path(spec)
        if not path.exists():
            raise ConfigError(f"--calibration {path}: no such file")
    calibration, warnings = usable_calibration(load_calibration(path), vectors, traits)
    return (calibration if calibration.traits else None), warnings
