"""Hugging Face Hub datasets that `datasets` has already prepared on this machine, read from its
local cache (`HF_DATASETS_CACHE`, by default ~/.cache/huggingface/datasets). Nothing is
downloaded: screener reads local data only.

`datasets.load_dataset("owner/name")` leaves the prepared dataset at
`CACHE/owner___name/CONFIG/VERSION/HASH/`: a `dataset_info.json` that lists the splits, and one
or more Arrow files per split (`name-train.arrow`, or `name-train-00000-of-00003.arrow` ...).
Rows of split S come with the source `owner/name[S]`, as a `save_to_disk` DatasetDict's do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from screener.errors import InputError
from screener.reader.sources import RawRow, rows_of_dataset, split_source


def looks_like_hub_id(path: Path) -> bool:
    """`owner/name` with no suffix and nothing that makes it read as a local path."""
    parts = str(path).split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not path.suffix
        and not str(path).startswith((".", "~"))
        and not path.exists()
    )


def datasets_cache() -> Path:
    """Where `datasets` keeps prepared datasets (its own setting, env variables included)."""
    import datasets

    return Path(os.path.expanduser(str(datasets.config.HF_DATASETS_CACHE)))


@dataclass(frozen=True)
class CachedHubDataset:
    """One prepared configuration of a hub dataset in the local cache."""

    name: str  # owner/name
    directory: Path  # CACHE/owner___name/CONFIG/VERSION/HASH
    splits: tuple[str, ...]
    num_rows: int  # all splits together, as dataset_info.json counts them

    def split_files(self, split: str) -> list[Path]:
        """The split's Arrow files, in shard order."""
        single = sorted(self.directory.glob(f"*-{split}.arrow"))
        shards = sorted(self.directory.glob(f"*-{split}-[0-9]*-of-[0-9]*.arrow"))
        return single + shards


def find_cached(path: Path) -> CachedHubDataset | None:
    """The prepared copy of hub dataset `path` (`owner/name`) in the local cache, or None when
    there is none. Several cached configurations are an error: which one is meant is unclear."""
    if not looks_like_hub_id(path):
        return None
    owner, name = str(path).split("/")
    root = datasets_cache() / f"{owner}___{name}"
    prepared = [info.parent for info in root.glob("*/*/*/dataset_info.json")]
    if not prepared:
        return None
    configs = sorted({directory.parts[-3] for directory in prepared})
    if len(configs) > 1:
        raise InputError(
            f"the local datasets cache ({root}) holds several configurations of this dataset "
            f"({', '.join(configs)}): save the one to screen with datasets.load_dataset("
            f"{str(path)!r}, CONFIG).save_to_disk(DIR) and screen DIR",
            source=str(path),
        )
    newest = max(prepared, key=lambda d: (d / "dataset_info.json").stat().st_mtime)
    try:
        info = json.loads((newest / "dataset_info.json").read_text(encoding="utf-8"))
        splits = tuple(str(split) for split in info["splits"])
        num_rows = sum(int(entry["num_examples"]) for entry in info["splits"].values())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"the cached dataset_info.json cannot be read ({exc}): load the dataset again with "
            "datasets.load_dataset on a machine that can download it",
            source=str(newest / "dataset_info.json"),
        ) from None
    return CachedHubDataset(str(path), newest, splits, num_rows)


def iter_cached(dataset: CachedHubDataset) -> Iterator[RawRow]:
    """Rows of every split in turn, memory-mapped from the cache's Arrow files."""
    from datasets import Dataset, concatenate_datasets

    for split in dataset.splits:
        files = dataset.split_files(split)
        if not files:
            raise InputError(
                f"the local datasets cache lists split {split!r} but holds no Arrow file for it "
                f"in {dataset.directory}: load the dataset again with datasets.load_dataset",
                source=dataset.name,
            )
        shards = [Dataset.from_file(str(file)) for file in files]
        rows = shards[0] if len(shards) == 1 else concatenate_datasets(shards)
        yield from rows_of_dataset(split_source(Path(dataset.name), split), rows)


def not_found_hint(path: Path) -> str:
    """For a missing path that reads like a hub dataset id and is not in the local cache, how to
    make it available (empty for anything else)."""
    if not looks_like_hub_id(path):
        return ""
    return (
        f" (a Hugging Face dataset id? it is not in the local datasets cache ({datasets_cache()}) "
        f"and screener downloads nothing: run datasets.load_dataset({str(path)!r}) here while "
        "online, or save it elsewhere with .save_to_disk(DIR) or .to_json(FILE.jsonl) and "
        "screen that)"
    )
