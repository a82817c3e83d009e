"""Risk categories and clusters for flagged samples.

Categories: each is a name, a title, a description and example prompts (ours, in
`categories.json`; users add or replace categories with a file of the same shape). A logistic
regression probe is trained on the target model's last-prompt-token activations of the example
prompts, together with ordinary prompts as the `other` class, and assigns each flagged sample
the category its prompt activation is most like, with the probe's probability. A category
whose probability is below CATEGORY_MIN_PROBABILITY is shown as `uncertain` (its probability
kept), not as a category: benchmarks/bench_categories.py measures the precision this buys.

Clusters: the flagged samples' response activations are grouped with k-means (k chosen by
silhouette), and each cluster is labelled with the words that are most distinctive of its
texts (TF-IDF), so that groups no category describes still show up.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import config_context
from sklearn.cluster import KMeans
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import silhouette_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from screener.errors import ConfigError

OTHER = "other"
UNCERTAIN = "uncertain"
# Below this probability the probe's best category is shown as `uncertain`
# (benchmarks/results/categories.json: precision of the shown categories with and without it).
CATEGORY_MIN_PROBABILITY = 0.5
MIN_EXAMPLES = 5
MAX_CLUSTERS = 6
# k-means and the silhouette (quadratic in samples) are fitted on at most this many flagged
# samples; the others join the nearest centre.
MAX_CLUSTER_FIT = 2000
# The silhouette's pairwise distances are taken this many MiB at a time (sklearn's default of
# 1 GiB would hold all of them: 32 MB at MAX_CLUSTER_FIT samples).
SILHOUETTE_MEMORY_MIB = 4


@dataclass(frozen=True)
class Category:
    """A kind of risky sample, defined by a description and example prompts."""

    name: str
    title: str
    description: str
    examples: tuple[str, ...]


@dataclass(frozen=True)
class CategorySet:
    categories: tuple[Category, ...]
    ordinary_examples: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.categories]


def _parse_categories(data: Any, where: str) -> list[Category]:
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
        raise ConfigError(f"{where}: expected an object with a `categories` list")
    categories = []
    for index, entry in enumerate(data["categories"]):
        at = f"{where}: categories[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at}: expected an object")
        name = entry.get("name")
        if not isinstance(name, str) or not name.isidentifier() or name == OTHER:
            raise ConfigError(
                f"{at} [name]: a category needs a name made of letters, digits and _ "
                f"(not {OTHER!r})"
            )
        examples = entry.get("examples")
        if (
            not isinstance(examples, list)
            or len(examples) < MIN_EXAMPLES
            or not all(isinstance(e, str) and e.strip() for e in examples)
        ):
            raise ConfigError(
                f"{at} [examples]: category {name} needs at least {MIN_EXAMPLES} non-empty "
                "example prompts"
            )
        categories.append(
            Category(
                name,
                str(entry.get("title") or name),
                str(entry.get("description") or ""),
                tuple(examples),
            )
        )
    return categories


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read categories file {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}") from exc


def load_categories(extra: Path | None = None) -> CategorySet:
    """The built-in categories, plus (or replaced by name by) those in `extra`."""
    builtin = json.loads(
        resources.files("screener.screening").joinpath("categories.json").read_text("utf-8")
    )
    categories = {c.name: c for c in _parse_categories(builtin, "built-in categories")}
    ordinary = tuple(builtin["ordinary_examples"])
    if extra is not None:
        for category in _parse_categories(_read_json(extra), str(extra)):
            categories[category.name] = category
    return CategorySet(tuple(categories.values()), ordinary)


class CategoryProbe:
    """A logistic regression from prompt activations to category names (or `other`).

    The fit is driven to its unique optimum (tight tolerance) and probabilities are rounded to
    two decimals: with the default tolerance the solver stopped at slightly different points in
    different processes, and a killed-and-resumed run must write the same outputs as an
    uninterrupted one.
    """

    def __init__(self, features: np.ndarray, labels: list[str]) -> None:
        self.model: Pipeline = make_pipeline(
            StandardScaler(), LogisticRegression(C=0.05, tol=1e-10, max_iter=20000)
        )
        self.model.fit(features, labels)

    def predict(
        self, features: np.ndarray, min_probability: float = CATEGORY_MIN_PROBABILITY
    ) -> list[tuple[str, float]]:
        """(category, probability) per row; `other` when ordinary prompts fit it best, and
        `uncertain` when the best category's probability is below `min_probability`."""
        if len(features) == 0:
            return []
        probabilities = self.model.predict_proba(features)
        classes = list(self.model.classes_)
        results = []
        for row in probabilities:
            best = int(np.argmax(row))
            name, probability = str(classes[best]), round(float(row[best]), 2)
            if name != OTHER and probability < min_probability:
                name = UNCERTAIN
            results.append((name, probability))
        return results


def training_labels(categories: CategorySet) -> tuple[list[str], list[str]]:
    """(prompts, labels) the probe learns from; ordinary prompts are labelled `other`."""
    prompts: list[str] = []
    labels: list[str] = []
    for category in categories.categories:
        prompts.extend(category.examples)
        labels.extend([category.name] * len(category.examples))
    prompts.extend(categories.ordinary_examples)
    labels.extend([OTHER] * len(categories.ordinary_examples))
    return prompts, labels


@dataclass(frozen=True)
class Cluster:
    id: int
    size: int
    words: tuple[str, ...]


@dataclass(frozen=True)
class ClusterModel:
    """k-means fitted on (a sample of) the flagged samples' response activations; `assign`
    places any sample in a cluster. Needs no text: a large run fits and assigns it while the
    run store is open, and reads the fitted samples' texts for `describe_clusters` later."""

    scaler: StandardScaler | None
    kmeans: KMeans | None  # None: everything is one cluster
    fit_labels: np.ndarray  # raw cluster label of each sample it was fitted on

    @property
    def size(self) -> int:
        return 1 if self.kmeans is None else int(self.kmeans.n_clusters)

    def assign(self, features: np.ndarray) -> np.ndarray:
        """Raw cluster labels of `features` (the nearest centre)."""
        if self.kmeans is None or len(features) == 0:
            return np.zeros(len(features), dtype=int)
        scaled = self.scaler.transform(features) if self.scaler is not None else features
        return np.asarray(self.kmeans.predict(scaled), dtype=int)


def fit_clusters(features: np.ndarray, *, max_clusters: int = MAX_CLUSTERS) -> ClusterModel:
    """k-means with k chosen by silhouette (deterministic); one cluster for fewer than six."""
    n = len(features)
    labels = np.zeros(n, dtype=int)
    scaler = StandardScaler().fit(features) if n > 1 else None
    scaled = scaler.transform(features) if scaler is not None else features
    best: KMeans | None = None
    best_score = -1.0
    for k in range(2, min(max_clusters, n // 3) + 1):
        model = KMeans(n_clusters=k, n_init=10, random_state=0).fit(scaled)
        candidate = model.labels_
        if len(set(candidate.tolist())) < 2:
            continue
        with config_context(working_memory=SILHOUETTE_MEMORY_MIB):
            score = float(silhouette_score(scaled, candidate))
        if score > best_score:
            best, best_score, labels = model, score, candidate
    return ClusterModel(scaler, best, labels)


def describe_clusters(
    model: ClusterModel, texts: list[str], background: Sequence[str] = ()
) -> list[tuple[str, ...]]:
    """The distinctive words of each raw cluster, from the texts of the samples `model` was
    fitted on (in the order it was fitted on them), against the other clusters and the
    `background` texts (kept rows: words common to the whole dataset do not name a cluster)."""
    return _distinctive_words(texts, model.fit_labels.tolist(), model.size, background)


def number_clusters(
    model: ClusterModel, raw_labels: np.ndarray, words: list[tuple[str, ...]]
) -> tuple[list[int], list[Cluster]]:
    """Cluster ids numbered by size over `raw_labels` (largest first), and the clusters with
    their `words` (per raw cluster, from `describe_clusters`)."""
    sizes = np.bincount(raw_labels, minlength=model.size)
    order = sorted(range(model.size), key=lambda c: (-sizes[c], c))
    renumber = {old: new for new, old in enumerate(order)}
    ids = [renumber[int(c)] for c in raw_labels]
    clusters = [Cluster(new, int(sizes[old]), words[old]) for new, old in enumerate(order)]
    return ids, clusters


def cluster_samples(
    features: np.ndarray, texts: list[str], *, max_clusters: int = MAX_CLUSTERS
) -> tuple[list[int], list[Cluster]]:
    """Cluster ids per sample and a description per cluster (deterministic)."""
    if not texts:
        return [], []
    model = fit_clusters(features, max_clusters=max_clusters)
    return number_clusters(model, model.assign(features), describe_clusters(model, texts))


def _distinctive_words(
    texts: list[str], ids: list[int], k: int, background: Sequence[str] = (), top: int = 4
) -> list[tuple[str, ...]]:
    """Per cluster, the words whose mean TF-IDF weight is most above that of every other text:
    the other clusters' and the background's."""
    try:
        vectorizer = TfidfVectorizer(stop_words="english", token_pattern=r"(?u)\b[a-zA-Z]{3,}\b")
        matrix = vectorizer.fit_transform([*texts, *background]).toarray()
    except ValueError:  # no usable words at all
        return [()] * k
    vocabulary = vectorizer.get_feature_names_out()
    assignment = np.asarray([*ids, *([-1] * len(background))])  # -1: background
    described = []
    for cluster in range(k):
        inside = matrix[assignment == cluster].mean(axis=0)
        others = assignment != cluster
        outside = matrix[others].mean(axis=0) if others.any() else 0.0
        contrast = inside - outside
        best = [i for i in np.argsort(-contrast, kind="stable")[:top] if contrast[i] > 0]
        described.append(tuple(str(vocabulary[i]) for i in best))
    return described
