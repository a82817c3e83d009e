"""The `ray` engine: compute a screen's base responses and activations with Ray Data.

The driver reads and renders the data as usual and asks the run store which samples still need
work; only those go to Ray. `map_batches` runs them through a pool of actors, each of which
loads the model and the vectors once and scores its batches with an in-memory store. A batch
comes back as the store rows the actor computed (base responses and activations, as Arrow IPC
bytes), and the driver, the run store's only writer, adds them. The screen then goes on exactly
as with the local engine and finds everything cached, so both engines write their outputs with
the same code, and a rerun after adding rows sends only the new rows to Ray.

Ray is an optional extra: `pip install 'screener[ray]'`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa

from screener.errors import ConfigError, MissingDependencyError, ModelLoadError, ScreenerError
from screener.model import DTYPES, LoadedModel, generation_model, generation_torch_dtype, load_model
from screener.options import RayOptions
from screener.records import Message, Sample
from screener.render import RenderedSample, Renderer
from screener.screening.scoring import Scorer, ScoringSettings, store_key
from screener.store import TABLES, RunStore
from screener.vectors import load_vectors

INSTALL = "pip install 'screener[ray]'"


@dataclass(frozen=True)
class WorkerConfig:
    """What an actor needs to build the same scorer as the driver's."""

    model: str
    dtype: str
    device: str
    fingerprint: str
    vectors: str
    settings: ScoringSettings
    extra_layers: tuple[int, ...]
    max_tokens: int | None
    model_key: str
    base_key: str  # the store key of base responses (their precision may differ)
    trust_remote_code: bool = False


def require_ray() -> Any:
    """The `ray` module, or a MissingDependencyError with the install command."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MissingDependencyError(
            f"--engine ray needs Ray, which is not installed: {INSTALL}"
        ) from exc
    return ray


def worker_config(
    loaded: LoadedModel,
    vectors_path: str | None,
    settings: ScoringSettings,
    extra_layers: Iterable[int],
    max_tokens: int | None,
    options: RayOptions,
    trust_remote_code: bool = False,
) -> WorkerConfig:
    """The driver's model, vectors and settings, as the actors will rebuild them."""
    if vectors_path is None:
        raise ConfigError("the ray engine needs the vectors as a file the workers can read")
    dtype = next((name for name, value in DTYPES.items() if value == loaded.dtype), "auto")
    device = "cuda" if options.gpus_per_worker > 0 else "cpu"
    local = Path(loaded.spec)
    return WorkerConfig(
        # paths made absolute: workers do not share the driver's working directory
        model=str(local.resolve()) if local.exists() else loaded.spec,
        dtype=dtype,
        device=device,
        fingerprint=loaded.fingerprint,
        vectors=str(Path(vectors_path).resolve()),
        settings=settings,
        extra_layers=tuple(extra_layers),
        max_tokens=max_tokens,
        model_key=store_key(loaded, device),
        base_key=store_key(
            loaded, device, generation_torch_dtype(loaded, settings.generation_dtype)
        ),
        trust_remote_code=trust_remote_code,
    )


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(payload: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(payload)).read_all()


def _sample_row(sample: Sample) -> dict[str, Any]:
    return {
        "id": sample.id,
        "source": sample.source,
        "line": sample.line,
        "format": sample.format,
        "messages": json.dumps([m.as_dict() for m in sample.messages], ensure_ascii=False),
    }


class ScoreWorker:
    """A Ray actor: loads the model and vectors once, then scores batches of samples."""

    def __init__(self, config: WorkerConfig) -> None:
        import torch

        self.config = config
        cpus = _assigned_cpus()
        if config.device == "cpu" and cpus:
            torch.set_num_threads(max(1, int(cpus)))
        self.loaded = load_model(
            config.model,
            dtype=config.dtype,
            device=config.device,
            trust_remote_code=config.trust_remote_code,
        )
        if self.loaded.fingerprint != config.fingerprint:
            raise ModelLoadError(
                f"a ray worker loaded {config.model} with fingerprint {self.loaded.fingerprint}, "
                f"the driver has {config.fingerprint}: the workers must see the same weights"
            )
        vectors = load_vectors(config.vectors, model=self.loaded)
        self._store_context = RunStore.open(":memory:")
        self.store = self._store_context.__enter__()
        self.renderer = Renderer(self.loaded.tokenizer, max_tokens=config.max_tokens)
        self.scorer = Scorer(
            self.loaded,
            vectors,
            config.settings,
            self.store,
            self.renderer,
            extra_layers=config.extra_layers,
            model_key=config.model_key,
            generator=generation_model(
                self.loaded,
                config.settings.generation_dtype,
                trust_remote_code=config.trust_remote_code,
            )
            if config.settings.method == "delta"
            else None,
            base_key=config.base_key,
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        rendered = []
        for row in batch.to_pylist():
            messages = tuple(Message(m["role"], m["content"]) for m in json.loads(row["messages"]))
            sample = Sample(row["id"], row["source"], row["line"], messages, {}, row["format"])
            result = self.renderer.render(sample)
            if isinstance(result, RenderedSample):
                rendered.append(result)
        if rendered:
            self.scorer.score(rendered)
        tables = [self.store.export_table(name) for name in TABLES]
        self.store.clear()
        return pa.table(
            {
                "table": list(TABLES),
                "rows": pa.array([_to_ipc(t) for t in tables], type=pa.binary()),
                "samples": [len(rendered)] * len(TABLES),
            }
        )


def _assigned_cpus() -> float | None:
    try:
        import ray

        return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0)) or None
    except Exception:  # outside a Ray worker
        return None


def compute_with_ray(
    samples: Iterator[Sample],
    config: WorkerConfig,
    options: RayOptions,
    store: RunStore,
    progress: Callable[[str], None] | None = None,
) -> int:
    """Score `samples` on Ray and add what the actors computed to `store`; return how many
    samples were sent."""
    say = progress or (lambda message: None)
    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False)
    wanted_gpus = options.gpus_per_worker * options.workers
    available_gpus = float(ray.cluster_resources().get("GPU", 0))
    if wanted_gpus > available_gpus:  # Ray would wait for them forever
        raise ConfigError(
            f"{options.workers} workers x {options.gpus_per_worker} GPUs need {wanted_gpus:g} "
            f"GPUs, the Ray cluster has {available_gpus:g}: lower --workers or "
            "--gpus-per-worker"
        )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    refs = []
    sent = 0
    while chunk := list(islice(samples, options.batch_rows * 4)):  # blocks spread over actors
        refs.append(ray.put(pa.Table.from_pylist([_sample_row(s) for s in chunk])))
        sent += len(chunk)
    if not refs:
        return 0
    say(f"ray: scoring {sent} samples on {options.workers} worker(s)")
    dataset = ray.data.from_arrow_refs(refs).map_batches(
        ScoreWorker,
        fn_constructor_kwargs={"config": config},
        batch_size=options.batch_rows,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=options.workers),
        num_cpus=1,
        num_gpus=options.gpus_per_worker or None,
    )
    done = 0
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            for name, payload, count in zip(
                batch["table"].to_pylist(),
                batch["rows"].to_pylist(),
                batch["samples"].to_pylist(),
                strict=True,
            ):
                store.import_table(name, _from_ipc(payload))
                if name == TABLES[0]:
                    done += count
            say(f"ray: {done}/{sent} samples scored")
    except ray.exceptions.RayError as exc:
        cause = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ScreenerError(
            f"the ray engine failed after {done} of {sent} samples (they are kept in the run "
            f"store): {cause}"
        ) from exc
    return sent
