"""Read finetuning datasets (JSONL, JSON, CSV, parquet, save_to_disk) into `Sample` records."""

from screener.reader.dataset import (
    BadRowPolicy,
    DatasetReader,
    ReadCounts,
    content_id,
    read_dataset,
)
from screener.reader.formats import FORMATS, FieldNames

__all__ = [
    "FORMATS",
    "BadRowPolicy",
    "DatasetReader",
    "FieldNames",
    "ReadCounts",
    "content_id",
    "read_dataset",
]
