"""Score rendered samples against persona vectors: projections, base responses and ΔP.

For a sample (x, y) and trait T with unit vector v at layer l (docs/method.md, "Scoring a sample"):

- `projection`   p(x, y)  = mean of h_l over y's tokens, dotted with v;
- `base`         p(x, y') for y' the model's own greedy answer to x (delta method only);
- `delta`        ΔP = p(x, y) - p(x, y');
- `prompt_last`  h_l at the last prompt token, dotted with v (no generation needed).

`Scorer.score` takes one chunk of samples, looks up what the run store already holds (base
responses by prompt and generation settings, activations by sample content and layer),
computes only the rest, and commits it to the store before returning.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from screener.activations import DEFAULT_BATCH_TOKENS, ActivationCollector, TokenizedInput
from screener.answers import served_key, write_answers
from screener.batch_plan import default_budget
from screener.errors import ConfigError
from screener.generate import GenerationSettings
from screener.model import LoadedModel, check_generation_dtype, dtype_name
from screener.options import (
    DEFAULT_BASE_TOKENS,
    METHODS,
    GenerationOptions,
    Method,
    ScoringOptions,
)
from screener.progress import Rate
from screener.records import Message, Sample
from screener.render import RenderedSample, Renderer
from screener.served import AnswerServer
from screener.store import LayerActivations, RunStore, token_hash
from screener.vectors.store import VectorFile


@dataclass(frozen=True)
class ScoringSettings:
    """What is computed and how; recorded in every run's summary."""

    traits: tuple[str, ...]
    method: Method = "delta"
    generation: GenerationSettings = field(
        default_factory=lambda: GenerationSettings(max_new_tokens=DEFAULT_BASE_TOKENS)
    )
    generation_batch_rows: int | None = None  # None: the device default
    generation_server: AnswerServer | None = None  # base answers from a server instead
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS
    # the precision base responses are written in: `same` as the scores', or fp32 / bf16
    generation_dtype: str = "same"

    @classmethod
    def of(
        cls, traits: tuple[str, ...], scoring: ScoringOptions, generation: GenerationOptions
    ) -> ScoringSettings:
        """The settings a run with these options records and scores with."""
        return cls(
            traits,
            scoring.method,
            GenerationSettings(max_new_tokens=generation.max_new_tokens),
            generation_batch_rows=generation.max_batch_rows,
            generation_server=generation.server,
            max_batch_tokens=scoring.max_batch_tokens,
            generation_dtype=generation.dtype,
        )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}: use {' or '.join(METHODS)}")
        check_generation_dtype(self.generation_dtype)
        if not self.traits:
            raise ConfigError("no traits to screen for")
        if self.generation.temperature != 0:
            raise ConfigError("base responses are greedy: generation temperature must be 0")


@dataclass
class ScoredSample:
    """One sample's scores; the per-trait dicts are keyed by trait name."""

    id: str
    source: str
    line: int
    format: str
    content_hash: str
    prompt_tokens: int
    response_tokens: int
    warnings: tuple[str, ...]
    projection: dict[str, float]
    prompt_last: dict[str, float]
    base_response: str | None = None
    base_response_tokens: int | None = None
    base_projection: dict[str, float] | None = None

    def delta(self, trait: str) -> float | None:
        """ΔP for `trait`, or None without a base response (prompt-last method)."""
        if self.base_projection is None:
            return None
        return self.projection[trait] - self.base_projection[trait]


def store_key(
    loaded: LoadedModel, device_type: str | None = None, dtype: torch.dtype | None = None
) -> str:
    """The run store's model key: the weights' fingerprint, the dtype and the device type the
    model runs in (`device_type` and `dtype` override the loaded model's, for ray workers on
    GPUs and for base responses written at another precision).

    Precision and device are part of the key because they change results: greedy base
    responses in bf16 and fp32 part ways at near-ties (see the README, "Determinism"), so a
    store shared by runs at two precisions must not hand one the other's answers."""
    precision = dtype_name(dtype or loaded.dtype)
    return f"{loaded.fingerprint}:{precision}:{device_type or loaded.device.type}"


def content_hash(item: TokenizedInput) -> str:
    """The cache key of a tokenized conversation: its token ids and response boundary."""
    return token_hash(item.response_start, item.input_ids)


class Scorer:
    """Scores chunks of rendered samples for one model, vector file and settings.

    extra_layers: layers to collect and cache besides the traits' (the category probe's).
    model_key: the key of this model's results in the store (default `store_key(loaded)`).
    generator: the model that writes base responses, when not `loaded` itself (the same
        weights at the precision `settings.generation_dtype` asks for: `generation_model`).
        A server in `settings.generation_server` writes them instead of either.
    base_key: the store key of the base responses (default: the generator's `store_key`, or
        `served_key` for a server).
    directions: per trait, the unit vector to project on at the trait's layer, where it is not
        the vector file's own (the style-controlled directions of a calibration).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        vectors: VectorFile,
        settings: ScoringSettings,
        store: RunStore,
        renderer: Renderer,
        *,
        extra_layers: Sequence[int] = (),
        progress: Callable[[str], None] | None = None,
        model_key: str | None = None,
        generator: LoadedModel | None = None,
        base_key: str | None = None,
        directions: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.loaded = loaded
        self.model_key = model_key or store_key(loaded)
        self.generator = generator or loaded
        server = settings.generation_server
        own_key = self.model_key if generator is None else store_key(generator)
        self.base_key = base_key or (own_key if server is None else served_key(loaded, server))
        self.settings = settings
        self.store = store
        self.renderer = renderer
        self.say = progress or (lambda message: None)
        self.trait_layers = {t: vectors.trait(t).chosen_layer for t in settings.traits}
        given = directions or {}
        self.units = {
            t: torch.as_tensor(given[t]).double() if t in given else vectors.unit(t).double()
            for t in settings.traits
        }
        self.layers = sorted({*self.trait_layers.values(), *extra_layers})
        self.collector = ActivationCollector(
            loaded.model, self.layers, max_batch_tokens=settings.max_batch_tokens
        )
        store.make_room_for_vectors(self.collector.hidden_size)
        self.generation_key = json.dumps(settings.generation.as_dict(), sort_keys=True)
        self.generation_budget = default_budget(self.generator, settings.generation_batch_rows)
        self.counters = {"generated": 0, "generation_cached": 0, "collected": 0, "cached": 0}

    def activations(
        self, items: Sequence[tuple[str, TokenizedInput]]
    ) -> dict[tuple[str, int], LayerActivations]:
        """Activations of (content hash, input) items at every scorer layer: cached ones from
        the store, the rest computed (batched) and stored."""
        hashes = list(dict.fromkeys(h for h, _ in items))
        found = self.store.get_activations(self.model_key, hashes, self.layers)
        missing: dict[str, TokenizedInput] = {}
        for key, item in items:
            if any((key, layer) not in found for layer in self.layers):
                missing.setdefault(key, item)
        self.counters["cached"] += len(hashes) - len(missing)
        self.counters["collected"] += len(missing)
        if missing:
            computed = self.collector.collect(list(missing.values()))
            fresh = {
                (key, layer): LayerActivations(
                    computed.response_mean[i, j], computed.last_prompt[i, j]
                )
                for i, key in enumerate(missing)
                for j, layer in enumerate(self.layers)
            }
            self.store.put_activations(self.model_key, fresh)
            found.update(fresh)
        return found

    def base_responses(self, prompts: Sequence[tuple[Message, ...]]) -> list[str]:
        """The model's greedy answers to `prompts`, from the store where it has them."""
        keys = [token_hash(self.renderer.prompt_ids(p)) for p in prompts]
        cached = self.store.get_base_responses(self.base_key, keys, self.generation_key)
        todo: dict[str, tuple[Message, ...]] = {}
        for key, prompt in zip(keys, prompts, strict=True):
            if key not in cached:
                todo.setdefault(key, prompt)
        self.counters["generation_cached"] += len(keys) - len(todo)
        self.counters["generated"] += len(todo)
        if todo:
            rate, todo_keys = Rate(), list(todo)
            fresh: dict[str, str] = {}
            first_of_run = self.counters["generated"] == len(todo)
            try:
                write_answers(
                    self.generator,
                    list(todo.values()),
                    self.settings.generation,
                    server=self.settings.generation_server,
                    budget=self.generation_budget,
                    progress=lambda done: self.say(
                        f"  base responses {done}/{len(todo)} ({rate.of(done, len(todo))})"
                    ),
                    on_answer=lambda index, text: fresh.__setitem__(todo_keys[index], text),
                    describe=self.say if first_of_run else None,
                )
            finally:  # answers already written stay written, even if a later one failed
                if fresh:
                    self.store.put_base_responses(self.base_key, self.generation_key, fresh)
            cached.update(fresh)
        return [cached[key] for key in keys]

    def _project(
        self,
        values: dict[tuple[str, int], LayerActivations],
        key: str,
        *,
        last_prompt: bool = False,
    ) -> dict[str, float]:
        """Projection of one content's response mean (or last prompt token) on every trait."""
        projections = {}
        for trait, layer in self.trait_layers.items():
            found = values[(key, layer)]
            vector = found.last_prompt if last_prompt else found.response_mean
            projections[trait] = float(vector.double() @ self.units[trait])
        return projections

    def _render_base(self, rendered: RenderedSample, text: str) -> RenderedSample | str:
        """The sample's prompt with the base response `text` as its answer, rendered; or why
        it cannot be."""
        base_sample = Sample(
            rendered.sample.id,
            rendered.sample.source,
            rendered.sample.line,
            (*rendered.sample.prompt, Message("assistant", text)),
            {},
            rendered.sample.format,
        )
        result = self.renderer.render(base_sample)
        if isinstance(result, RenderedSample):
            return result
        return f"no ΔP: the base response cannot be rendered ({result.reason})"

    def pending(self, chunk: Sequence[RenderedSample]) -> list[int]:
        """Indexes of the samples in `chunk` whose scores need computing: a base response or an
        activation the store does not hold. Computes nothing."""
        keys = [content_hash(TokenizedInput(r.input_ids, r.response_start)) for r in chunk]
        needed = set()
        to_check = dict(enumerate(keys))
        if self.settings.method == "delta":
            prompt_keys = [token_hash(self.renderer.prompt_ids(r.sample.prompt)) for r in chunk]
            cached = self.store.get_base_responses(self.base_key, prompt_keys, self.generation_key)
            for i, (rendered, prompt_key) in enumerate(zip(chunk, prompt_keys, strict=True)):
                if prompt_key not in cached:
                    needed.add(i)
                    continue
                base = self._render_base(rendered, cached[prompt_key])
                if isinstance(base, RenderedSample):
                    base_key = content_hash(TokenizedInput(base.input_ids, base.response_start))
                    to_check[len(chunk) + i] = base_key
        found = self.store.get_activations(
            self.model_key, list(dict.fromkeys(to_check.values())), self.layers
        )
        for position, key in to_check.items():
            if any((key, layer) not in found for layer in self.layers):
                needed.add(position % len(chunk))
        return sorted(needed)

    def _compute(self, chunk: Sequence[RenderedSample]) -> _Computed:
        """Base responses and activations of every sample in `chunk` (and of its base
        response), from the store where it has them."""
        inputs = [TokenizedInput(r.input_ids, r.response_start) for r in chunk]
        keys = [content_hash(item) for item in inputs]
        items = list(zip(keys, inputs, strict=True))
        computed = _Computed(keys, [None] * len(chunk), [None] * len(chunk), [None] * len(chunk))
        if self.settings.method == "delta":
            texts = self.base_responses([r.sample.prompt for r in chunk])
            for i, (rendered, text) in enumerate(zip(chunk, texts, strict=True)):
                computed.base_texts[i] = text
                result = self._render_base(rendered, text)
                if isinstance(result, RenderedSample):
                    base_inputs = TokenizedInput(result.input_ids, result.response_start)
                    base_key = content_hash(base_inputs)
                    computed.bases[i] = (base_key, result)
                    items.append((base_key, base_inputs))
                else:
                    computed.problems[i] = result
        computed.values = self.activations(items)
        return computed

    def score(self, chunk: Sequence[RenderedSample]) -> list[ScoredSample]:
        """Scores of every sample in `chunk`, in order."""
        computed = self._compute(chunk)
        values = computed.values
        scored = []
        for i, (key, rendered) in enumerate(zip(computed.keys, chunk, strict=True)):
            problem = computed.problems[i]
            warnings = rendered.warnings + ((problem,) if problem else ())
            sample = ScoredSample(
                rendered.sample.id,
                rendered.sample.source,
                rendered.sample.line,
                rendered.sample.format,
                key,
                rendered.num_prompt_tokens,
                rendered.num_response_tokens,
                warnings,
                self._project(values, key),
                self._project(values, key, last_prompt=True),
                computed.base_texts[i],
            )
            if (found := computed.bases[i]) is not None:
                base_key, base = found
                sample.base_response_tokens = base.num_response_tokens
                sample.base_projection = self._project(values, base_key)
            scored.append(sample)
        return scored

    def differences(self, chunk: Sequence[RenderedSample]) -> dict[str, np.ndarray]:
        """Per trait, the (n, d) differences `a(x, y) - a(x, y')` of mean response activations
        at the trait's layer (float32; a row of NaN where the base response cannot be
        rendered). What style control is fitted on (screener.screening.style)."""
        if self.settings.method != "delta":
            raise ConfigError("response differences need base responses (the delta method)")
        computed = self._compute(chunk)
        result = {}
        for trait, layer in self.trait_layers.items():
            rows = np.full((len(chunk), self.collector.hidden_size), np.nan, dtype=np.float32)
            for i, key in enumerate(computed.keys):
                if (found := computed.bases[i]) is not None:
                    own = computed.values[(found[0], layer)].response_mean
                    rows[i] = (computed.values[(key, layer)].response_mean - own).numpy()
            result[trait] = rows
        return result


@dataclass
class _Computed:
    """What `Scorer._compute` gathers for a chunk; index i belongs to sample i."""

    keys: list[str]
    bases: list[tuple[str, RenderedSample] | None]  # (content key, rendered base response)
    base_texts: list[str | None]
    problems: list[str | None]  # why a sample has no ΔP
    values: dict[tuple[str, int], LayerActivations] = field(default_factory=dict)
