"""The `ray` engine: compute a screen's base responses and activations on a pool of Ray actors.

The driver reads and renders the data once, chunk by chunk, as with the local engine, and asks
the run store which samples of a chunk still need work; only those go to Ray, in batches, to a
pool of actors that each load the model and the vectors once and score with an in-memory store.
A batch comes back as the store rows the actor computed (base responses and activations, as
Arrow tables), and the driver, the run store's only writer, adds them. A chunk whose batches are
all back is scored by the driver as usual and finds everything cached, so both engines give the
same scores and write their outputs with the same code, and a rerun after adding rows sends only
the new rows to Ray. A few chunks are in flight at a time (enough to keep every actor busy), so
the driver's memory does not grow with the dataset.

Ray is an optional extra: `pip install 'screener[ray]'`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from screener.answers import served_key
from screener.errors import ConfigError, MissingDependencyError, ModelLoadError, ScreenerError
from screener.model import DTYPES, LoadedModel, generation_model, generation_torch_dtype, load_model
from screener.options import RayOptions
from screener.records import Message, RejectedRow, Sample
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
        )
        if settings.generation_server is None
        else served_key(loaded, settings.generation_server),
        trust_remote_code=trust_remote_code,
    )


def _sample_row(sample: Sample) -> dict[str, Any]:
    return {
        "id": sample.id,
        "source": sample.source,
        "line": sample.line,
        "format": sample.format,
        "messages": [m.as_dict() for m in sample.messages],
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

    def score(self, rows: list[dict[str, Any]]) -> tuple[int, list[tuple[str, pa.Table]]]:
        """Score a batch of samples; how many were scored, and the store rows computed for
        them, table by table."""
        rendered = []
        for row in rows:
            messages = tuple(Message(m["role"], m["content"]) for m in row["messages"])
            sample = Sample(row["id"], row["source"], row["line"], messages, {}, row["format"])
            result = self.renderer.render(sample)
            if isinstance(result, RenderedSample):
                rendered.append(result)
        if rendered:
            self.scorer.score(rendered)
        tables = [(name, self.store.export_table(name)) for name in TABLES]
        self.store.clear()
        return len(rendered), tables


def _assigned_cpus() -> float | None:
    try:
        import ray

        return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0)) or None
    except Exception:  # outside a Ray worker
        return None


Chunk = list[RenderedSample | RejectedRow]


class RayScoring:
    """Sends the samples the run store lacks to a pool of Ray actors, a few chunks at a time,
    and adds what they computed to the store:

        with RayScoring(config, options, store) as ray_scoring:
            for chunk in ray_scoring.computed(chunks, scorer.pending):
                scorer.score(...)   # everything in `chunk` is in the store now
    """

    def __init__(
        self,
        config: WorkerConfig,
        options: RayOptions,
        store: RunStore,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.config, self.options, self.store = config, options, store
        self.say = progress or (lambda message: None)
        self.sent = 0  # samples sent to the actors
        self.done = 0  # of them, scored and added to the store
        self._actors: list[Any] = []

    def __enter__(self) -> RayScoring:
        ray = require_ray()
        if not ray.is_initialized():
            address = self.options.address
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        options = self.options
        wanted_gpus = options.gpus_per_worker * options.workers
        available_gpus = float(ray.cluster_resources().get("GPU", 0))
        if wanted_gpus > available_gpus:  # Ray would wait for them forever
            raise ConfigError(
                f"{options.workers} workers x {options.gpus_per_worker} GPUs need "
                f"{wanted_gpus:g} GPUs, the Ray cluster has {available_gpus:g}: lower --workers "
                "or --gpus-per-worker"
            )
        actor = ray.remote(num_cpus=1, num_gpus=options.gpus_per_worker)(ScoreWorker)
        self._actors = [actor.remote(self.config) for _ in range(options.workers)]
        return self

    def __exit__(self, *exc: object) -> None:
        ray = require_ray()
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []

    def computed(
        self, chunks: Iterable[Chunk], pending: Callable[[list[RenderedSample]], list[int]]
    ) -> Iterator[Chunk]:
        """`chunks`, in order, each once the samples of it that `pending` names (positions
        among its rendered samples) are scored and in the store."""
        from ray.util import ActorPool

        pool = ActorPool(self._actors)
        waiting: deque[tuple[Chunk, int]] = deque()  # chunks in order, with batches out
        in_flight = 0
        most_in_flight = 2 * self.options.workers  # one batch running, one queued, per actor
        for chunk in chunks:
            ready = [r for r in chunk if isinstance(r, RenderedSample)]
            todo = [ready[position].sample for position in pending(ready)]
            size = self.options.batch_rows
            batches = [todo[i : i + size] for i in range(0, len(todo), size)]
            for batch in batches:
                pool.submit(
                    lambda worker, rows: worker.score.remote(rows),
                    [_sample_row(sample) for sample in batch],
                )
            self.sent += len(todo)
            in_flight += len(batches)
            waiting.append((chunk, len(batches)))
            while waiting and (in_flight > most_in_flight or waiting[0][1] == 0):
                first, count = waiting.popleft()
                self._collect(pool, count)
                in_flight -= count
                yield first
        while waiting:
            first, count = waiting.popleft()
            self._collect(pool, count)
            yield first

    def _collect(self, pool: Any, batches: int) -> None:
        """Add the results of the next `batches` batches (in the order sent) to the store."""
        ray = require_ray()
        try:
            for _ in range(batches):
                scored, tables = pool.get_next()
                for name, table in tables:
                    self.store.import_table(name, table)
                self.done += scored
                self.say(f"ray: {self.done}/{self.sent} samples scored")
        except ray.exceptions.RayError as exc:
            text = str(exc).strip()
            cause = text.splitlines()[-1] if text else type(exc).__name__
            raise ScreenerError(
                f"the ray engine failed after {self.done} of {self.sent} samples (they are "
                f"kept in the run store): {cause}"
            ) from exc
