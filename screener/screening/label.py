"""Stage 3 of a screen: a category for each flagged sample (a probe on prompt activations)
and a cluster (k-means on response activations), from activations the run store holds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from screener.activations import TokenizedInput
from screener.model import (
    LoadedModel,
)
from screener.records import Message
from screener.screening.categories import (
    MAX_CLUSTER_FIT,
    CategoryProbe,
    CategorySet,
    ClusterModel,
    fit_clusters,
    training_labels,
)
from screener.screening.result import (
    ScreenResult,
)
from screener.screening.scoring import (
    Scorer,
    content_hash,
)

# The category probe reads the last prompt token two thirds of the way up the network, where
# the model has read the request but not yet committed to an answer.
CATEGORY_LAYER_FRACTION = 2 / 3
FEATURE_BATCH = 4096  # flagged samples whose activations are read from the store at once


def category_layer(loaded: LoadedModel) -> int:
    num_layers = int(loaded.model.config.get_text_config().num_hidden_layers)
    return max(1, round(num_layers * CATEGORY_LAYER_FRACTION))


def probe_features(scorer: Scorer, prompts: list[str], layer: int) -> np.ndarray:
    """Last-prompt activations at `layer` of single-turn prompts (cached in the store).

    A prompt's last token does not see what follows it, so any one token stands in for the
    response the collector needs.
    """
    filler = scorer.loaded.tokenizer.eos_token_id or 0
    items = []
    for prompt in prompts:
        ids = scorer.renderer.prompt_ids((Message("user", prompt),))
        inputs = TokenizedInput([*ids, filler], len(ids))
        items.append((content_hash(inputs), inputs))
    values = scorer.activations(items)
    return np.stack([values[(key, layer)].last_prompt.numpy() for key, _ in items])


def _batches(indices: Sequence[int], size: int = FEATURE_BATCH) -> Iterator[Sequence[int]]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def _stored_features(
    result: ScreenResult, scorer: Scorer, indices: Sequence[int], layer: int, kind: str
) -> np.ndarray:
    """The `response_mean` or `last_prompt` activations at `layer` of the samples at sorted
    `indices`, from the run store (screening put them there)."""
    hashes = result.samples.take("content_hash", indices)
    values = scorer.store.get_activations(scorer.model_key, list(dict.fromkeys(hashes)), [layer])
    return np.stack([getattr(values[(h, layer)], kind).numpy() for h in hashes])


def categorize(result: ScreenResult, scorer: Scorer, categories: CategorySet, layer: int) -> None:
    """Give each flagged sample its category (probe on prompt activations)."""
    flagged = result.flags.indices.tolist()
    if not flagged:
        return
    prompts, labels = training_labels(categories)
    probe = CategoryProbe(probe_features(scorer, prompts, layer), labels)
    codes: dict[str, int] = {}
    result.category_codes = np.zeros(len(flagged), dtype=np.int32)
    result.category_probability = np.zeros(len(flagged))
    position = 0
    for batch in _batches(flagged):
        features = _stored_features(result, scorer, batch, layer, "last_prompt")
        for name, probability in probe.predict(features):
            result.category_codes[position] = codes.setdefault(name, len(codes))
            result.category_probability[position] = probability
            position += 1
    result.category_names = list(codes)


def cluster_fit_indices(flagged: list[int]) -> list[int]:
    """The flagged samples k-means is fitted on: all, or MAX_CLUSTER_FIT spread evenly in input
    order (k-means and the silhouette grow quadratically; the rest join the nearest centre)."""
    if len(flagged) <= MAX_CLUSTER_FIT:
        return flagged
    positions = np.linspace(0, len(flagged) - 1, MAX_CLUSTER_FIT).round().astype(int)
    return [flagged[p] for p in sorted(set(positions.tolist()))]


def kept_text_sample(samples: int, flagged: np.ndarray) -> list[int]:
    """Up to MAX_CLUSTER_FIT kept samples, spread evenly in input order: what the clusters'
    words are contrasted with, so that words common to the whole dataset do not name them."""
    kept = np.setdiff1d(np.arange(samples), flagged)
    if kept.size <= MAX_CLUSTER_FIT:
        return [int(i) for i in kept]
    positions = np.linspace(0, kept.size - 1, MAX_CLUSTER_FIT).round().astype(int)
    return [int(kept[p]) for p in np.unique(positions)]


def cluster(
    result: ScreenResult, scorer: Scorer, layer: int, fit_indices: list[int]
) -> tuple[ClusterModel, np.ndarray] | None:
    """k-means on the response activations of the samples at `fit_indices`, and the raw
    cluster label of every flagged sample (None when nothing is flagged). The clusters are
    described once the second read has found the fitted samples' texts."""
    if not fit_indices:
        return None
    model = fit_clusters(_stored_features(result, scorer, fit_indices, layer, "response_mean"))
    raw = [
        model.assign(_stored_features(result, scorer, batch, layer, "response_mean"))
        for batch in _batches(result.flags.indices.tolist())
    ]
    return model, np.concatenate(raw)
