"""The collection job: read a dataset, render it, and collect activations at chosen layers.

    loaded = load_model("embedded")
    result = collect_dataset("data.jsonl", loaded, layers=[20])
    write_collect_outputs(result, Path("reports/collect-data"))

Stages chain lazily (read -> render -> batched collector) so rows stream through in chunks;
every input row ends as either a collected sample or a rejected row, and the result's counts
check that they add up. Screening builds on this job once persona vectors exist.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import polars as pl
import torch
from safetensors.torch import save_file

from screener.activations import (
    DEFAULT_BATCH_TOKENS,
    ActivationCollector,
    Activations,
    TokenizedInput,
)
from screener.atomic import atomic_path, remove_stale_temporaries, write_text_atomic
from screener.errors import ConfigError, ScreenerError
from screener.layers import LAYER_CONVENTION
from screener.model import LoadedModel
from screener.reader import BadRowPolicy, FieldNames, read_dataset
from screener.records import RejectedRow
from screener.render import RenderedSample, Renderer, token_limit

SAMPLES_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "id": pl.String,
    "source": pl.String,
    "line": pl.Int64,
    "format": pl.String,
    "prompt_tokens": pl.Int32,
    "response_tokens": pl.Int32,
    "boundary": pl.String,
    "warnings": pl.List(pl.String),
}


@dataclass
class CollectResult:
    """Everything a collection run produced, in input order."""

    data: str
    model: LoadedModel
    layers: list[int]
    samples: list[RenderedSample]
    rejected: list[RejectedRow]
    activations: Activations
    rows_read: int
    seconds: float
    formats: dict[str, str] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return sum(len(s.input_ids) for s in self.samples)

    def summary(self) -> dict[str, Any]:
        """Counts, model identity and timing, as written to summary.json."""
        return {
            "data": self.data,
            "model": {
                "spec": self.model.spec,
                "name": self.model.name,
                "fingerprint": self.model.fingerprint,
                "dtype": str(self.model.dtype),
                "device": str(self.model.device),
            },
            "layers": self.layers,
            "layer_convention": LAYER_CONVENTION,
            "rows_read": self.rows_read,
            "collected": len(self.samples),
            "rejected": len(self.rejected),
            "formats": self.formats,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "tokens_per_second": round(self.tokens / self.seconds, 1) if self.seconds else None,
        }


def collect_dataset(
    data: str | Path,
    loaded: LoadedModel,
    layers: Sequence[int],
    *,
    fmt: str = "auto",
    fields: FieldNames | None = None,
    on_bad_row: BadRowPolicy = "reject",
    max_tokens: int | None = None,
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    chunk_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> CollectResult:
    """Collect response-mean and last-prompt activations for every usable row of `data`.

    max_tokens: cap on sequence length (default: the model's context window); longer
        responses are truncated with a warning. progress(collected, rejected) is called after
        each chunk.
    """
    started = time.perf_counter()
    reader = read_dataset(data, fmt=fmt, fields=fields, on_bad_row=on_bad_row)
    renderer = Renderer(loaded.tokenizer, max_tokens=token_limit(loaded.model.config, max_tokens))
    collector = ActivationCollector(loaded.model, layers, max_batch_tokens=max_batch_tokens)
    samples: list[RenderedSample] = []
    rejected: list[RejectedRow] = []
    means, lasts = [], []
    stream = renderer.render_stream(reader, on_bad_row)
    while chunk := list(islice(stream, chunk_size)):
        ready = [r for r in chunk if isinstance(r, RenderedSample)]
        rejected.extend(r for r in chunk if isinstance(r, RejectedRow))
        if ready:
            acts = collector.collect([TokenizedInput(r.input_ids, r.response_start) for r in ready])
            means.append(acts.response_mean)
            lasts.append(acts.last_prompt)
            samples.extend(ready)
        if progress is not None:
            progress(len(samples), len(rejected))
    if reader.counts.rows != len(samples) + len(rejected):
        raise ScreenerError(
            f"internal error: {reader.counts.rows} rows read but {len(samples)} collected and "
            f"{len(rejected)} rejected; please report this"
        )
    d = collector.hidden_size
    empty = torch.zeros((0, len(collector.layers), d))
    activations = Activations(
        list(collector.layers),
        torch.cat(means) if means else empty,
        torch.cat(lasts) if lasts else empty,
    )
    return CollectResult(
        str(data),
        loaded,
        list(collector.layers),
        samples,
        rejected,
        activations,
        reader.counts.rows,
        time.perf_counter() - started,
        dict(reader.counts.formats),
    )


def _rejected_json(row: RejectedRow) -> str:
    record = {
        "source": row.source,
        "line": row.line,
        "field": row.field,
        "id": row.id,
        "reason": row.reason,
        "raw": row.raw,
    }
    return json.dumps(record, ensure_ascii=False)


def prepare_out_dir(out_dir: Path) -> None:
    """Create the output directory (removing temporary files a killed run left there), or say
    clearly why it cannot be used."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is an existing file: pass a directory path")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output directory {out_dir}: {exc.strerror}") from exc
    try:
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write in output directory {out_dir}: {exc.strerror}") from exc
    remove_stale_temporaries(out_dir)


def write_collect_outputs(result: CollectResult, out_dir: Path) -> list[Path]:
    """Write samples.parquet, activations.safetensors, rejected.jsonl, summary.json and
    summary.md into `out_dir` (each atomically); return their paths."""
    prepare_out_dir(out_dir)
    table = pl.DataFrame(
        {
            "id": [s.sample.id for s in result.samples],
            "source": [s.sample.source for s in result.samples],
            "line": [s.sample.line for s in result.samples],
            "format": [s.sample.format for s in result.samples],
            "prompt_tokens": [s.num_prompt_tokens for s in result.samples],
            "response_tokens": [s.num_response_tokens for s in result.samples],
            "boundary": [s.boundary for s in result.samples],
            "warnings": [list(s.warnings) for s in result.samples],
        },
        schema=SAMPLES_SCHEMA,
    )
    names = ("samples.parquet", "activations.safetensors", "rejected.jsonl", "summary.json")
    paths = {name: out_dir / name for name in (*names, "summary.md")}
    with atomic_path(paths["samples.parquet"]) as tmp:
        table.write_parquet(tmp)
    with atomic_path(paths["activations.safetensors"]) as tmp:
        tensors = {
            "response_mean": result.activations.response_mean.contiguous(),
            "last_prompt": result.activations.last_prompt.contiguous(),
        }
        metadata = {
            "layers": json.dumps(result.layers),
            "layer_convention": LAYER_CONVENTION,
            "fingerprint": result.model.fingerprint,
            "rows": "same order as samples.parquet",
        }
        save_file(tensors, str(tmp), metadata=metadata)
    write_text_atomic(
        paths["rejected.jsonl"], "".join(_rejected_json(r) + "\n" for r in result.rejected)
    )
    summary = result.summary()
    write_text_atomic(paths["summary.json"], json.dumps(summary, indent=2) + "\n")
    write_text_atomic(paths["summary.md"], _summary_markdown(result, summary))
    return list(paths.values())


def _summary_markdown(result: CollectResult, summary: dict[str, Any]) -> str:
    model = result.model
    lines = [
        f"# Activation collection: {result.data}",
        "",
        f"- model: {model.name} (fingerprint `{model.fingerprint}`, {model.dtype})",
        f"- layers: {', '.join(map(str, result.layers))} (row l = hidden_states[l])",
        f"- rows read: {result.rows_read} = collected {len(result.samples)} "
        f"+ rejected {len(result.rejected)}",
        f"- tokens: {summary['tokens']} in {summary['seconds']} s "
        f"({summary['tokens_per_second']} tokens/s)",
        "",
    ]
    if result.samples:
        norms = result.activations.response_mean.norm(dim=-1)  # (n, k)
        lines += ["| layer | mean response-activation norm | min | max |", "|---|---|---|---|"]
        for j, layer in enumerate(result.layers):
            column = norms[:, j]
            lines.append(
                f"| {layer} | {column.mean():.2f} | {column.min():.2f} | {column.max():.2f} |"
            )
        lines.append("")
    warned = [s for s in result.samples if s.warnings]
    if warned:
        lines += [f"## Warnings ({len(warned)} samples)", ""]
        lines += [
            f"- {s.sample.source}:{s.sample.line} `{s.sample.id}`: {'; '.join(s.warnings)}"
            for s in warned[:50]
        ]
        lines.append("")
    if result.rejected:
        lines += [f"## Rejected rows ({len(result.rejected)})", ""]
        lines += [f"- {r.describe()}" for r in result.rejected[:50]]
        if len(result.rejected) > 50:
            lines.append(f"- ... and {len(result.rejected) - 50} more in rejected.jsonl")
        lines.append("")
    return "\n".join(lines)
