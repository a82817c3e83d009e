"""Which data files a path names: a file, a `save_to_disk` directory, a directory of data
files (each read by its own type; other files are listed as skipped), or a hub dataset id in
the local datasets cache; and their rows in turn.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from screener.errors import InputError
from screener.reader.hub_cache import find_cached, iter_cached, not_found_hint
from screener.reader.sources import (
    FILE_TYPES,
    RawRow,
    is_saved_dataset,
    iter_file,
    iter_saved_dataset,
    saved_splits,
)


def list_data_files(path: Path) -> list[Path]:
    """The data files under `path`: itself, or the supported files in a directory (sorted). A
    hub dataset id (`owner/name`) that the local datasets cache holds is its own data file."""
    if not path.exists():
        if find_cached(path) is not None:
            return [path]
        raise InputError(f"no such file or directory{not_found_hint(path)}", source=str(path))
    if path.is_file() or is_saved_dataset(path):
        return [path]
    files = sorted(
        p
        for p in path.iterdir()
        if (p.is_file() and p.suffix.lower() in FILE_TYPES) or is_saved_dataset(p)
    )
    if not files:
        raise InputError(
            f"no data files here (looked for {', '.join(FILE_TYPES)} files and "
            "save_to_disk directories)",
            source=str(path),
        )
    return files


def splits_of(file: Path) -> list[str]:
    """The splits of a data file from `list_data_files` that holds several (a `save_to_disk`
    DatasetDict or a cached hub dataset); none for anything else. The rows of split S come with
    the source `split_source(file, S)`."""
    cached = find_cached(file)
    return list(cached.splits) if cached is not None else saved_splits(file)


def _is_documentation(path: Path) -> bool:
    name = path.name.lower()
    return name.startswith(("readme", "license", "licence")) or path.suffix.lower() in (
        ".md",
        ".rst",
    )


def skipped_files(path: Path) -> list[Path]:
    """Files in a data directory that are not read because of their type (say `notes.txt` or
    `part-0.jsonl.gz`), so a caller can say so. Hidden files and documentation (README,
    LICENSE, .md, .rst) are not listed."""
    if not path.is_dir() or is_saved_dataset(path):
        return []
    return sorted(
        p
        for p in path.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and not _is_documentation(p)
        and p.suffix.lower() not in FILE_TYPES
    )


def iter_path(path: Path) -> Iterator[RawRow]:
    """Rows of every data file at `path`, file after file."""
    for file in list_data_files(path):
        cached = find_cached(file)  # None for any path that exists
        if cached is not None:
            yield from iter_cached(cached)
        elif is_saved_dataset(file):
            yield from iter_saved_dataset(file)
        else:
            yield from iter_file(file)


def expected_rows(path: Path) -> int | None:
    """About how many rows `path` holds, cheaply, for progress (None when only reading would
    tell: a .json array). Lines of JSONL (blank ones excepted) and CSV (less the header; a
    quoted field across lines makes it an over-estimate), parquet, save_to_disk and cached hub
    dataset metadata."""
    total = 0
    for file in list_data_files(path):
        cached = find_cached(file)  # None for any path that exists
        if cached is not None:
            total += cached.num_rows
            continue
        if is_saved_dataset(file):
            from datasets import Dataset, load_from_disk

            loaded = load_from_disk(str(file))
            splits = [loaded] if isinstance(loaded, Dataset) else list(loaded.values())
            total += sum(split.num_rows for split in splits)
            continue
        kind = FILE_TYPES[file.suffix.lower()]
        if kind == "parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(file).metadata.num_rows
        elif kind in ("jsonl", "csv"):
            lines = _non_blank_lines(file)
            total += max(0, lines - 1) if kind == "csv" else lines
        else:
            return None
    return total


def _non_blank_lines(file: Path) -> int:
    """Lines holding anything but whitespace, read 1 MiB at a time."""
    count, line_has_text = 0, False
    with file.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            parts = chunk.split(b"\n")
            for position, part in enumerate(parts):
                line_has_text = line_has_text or bool(part.strip())
                if position < len(parts) - 1:  # the line ends here
                    count += line_has_text
                    line_has_text = False
    return count + line_has_text
