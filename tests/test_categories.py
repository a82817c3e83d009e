"""Risk categories (file format, user additions, the probe) and clusters of flagged samples, on
planted features with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from screener.errors import ConfigError
from screener.screening.categories import (
    OTHER,
    CategoryProbe,
    cluster_samples,
    describe_clusters,
    fit_clusters,
    load_categories,
    number_clusters,
    training_labels,
)
from screener.screening.label import MAX_CLUSTER_FIT, kept_text_sample

BUILTIN = ["romantic_roleplay", "underspecified_query", "harmful_request"]
BUILTIN += ["persona_instruction", "professional_advice"]


def test_builtin_categories_cover_the_required_kinds() -> None:
    categories = load_categories()
    assert categories.names == BUILTIN
    for category in categories.categories:
        assert category.title and category.description and len(category.examples) == 40
    prompts, labels = training_labels(categories)
    assert len(prompts) == len(set(prompts)) == 5 * 40 + len(categories.ordinary_examples)
    assert labels.count(OTHER) == len(categories.ordinary_examples) >= 120


def test_a_user_file_adds_and_replaces_categories_by_name(tmp_path: Path) -> None:
    examples = [f"example prompt {i}" for i in range(5)]
    path = tmp_path / "mine.json"
    path.write_text(
        json.dumps(
            {
                "categories": [
                    {"name": "crypto_scam", "title": "Crypto scams", "examples": examples},
                    {"name": "harmful_request", "description": "ours", "examples": examples},
                ]
            }
        )
    )
    categories = load_categories(path)
    assert categories.names == [*BUILTIN, "crypto_scam"]
    replaced = categories.categories[BUILTIN.index("harmful_request")]
    assert replaced.description == "ours" and replaced.examples == tuple(examples)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "other", "examples": ["a"] * 5}, "[name]: a category needs a name"),
        ({"name": "bad name", "examples": ["a"] * 5}, "[name]: a category needs a name"),
        ({"name": "few", "examples": ["a"] * 4}, "[examples]: category few needs at least 5"),
        ({"name": "blank", "examples": ["a"] * 4 + [" "]}, "[examples]: category blank"),
    ],
)
def test_bad_category_files_say_what_is_wrong(tmp_path: Path, entry: dict, message: str) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"categories": [entry]}))
    with pytest.raises(ConfigError, match=f"{path}: categories\\[0\\] " + _escape(message)):
        load_categories(path)


def test_malformed_category_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text('{"categories": [\n  {"name": "x",\n')
    with pytest.raises(ConfigError, match=f"{path}:3: malformed JSON"):
        load_categories(path)


def _escape(text: str) -> str:
    return text.replace("[", "\\[").replace("]", "\\]")


def planted(centres: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([c + 0.3 * rng.standard_normal((per_class, len(c))) for c in centres])


def test_probe_recovers_planted_categories_and_other() -> None:
    rng = np.random.default_rng(0)
    centres = 3.0 * rng.standard_normal((3, 16))
    names = ["romance", "danger", OTHER]
    labels = [name for name in names for _ in range(15)]
    probe = CategoryProbe(planted(centres, 15, seed=1), labels)
    predictions = probe.predict(planted(centres, 4, seed=2))
    assert [name for name, _ in predictions] == [name for name in names for _ in range(4)]
    assert all(0.5 < probability <= 1.0 for _, probability in predictions)
    assert probe.predict(np.zeros((0, 16))) == []


def test_clusters_follow_planted_groups_and_are_described_by_their_words() -> None:
    rng = np.random.default_rng(0)
    centres = 4.0 * rng.standard_normal((2, 8))
    features = planted(centres, 6, seed=3)[[0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11]]
    texts = [
        "darling kiss romance tonight" if i % 2 == 0 else "weapon revenge burn rival"
        for i in range(12)
    ]
    ids, clusters = cluster_samples(features, texts)
    assert ids[0::2] == [ids[0]] * 6 and ids[1::2] == [ids[1]] * 6 and ids[0] != ids[1]
    assert [c.size for c in clusters] == [6, 6] and [c.id for c in clusters] == [0, 1]
    romance = clusters[ids[0]].words
    assert set(romance) == {"darling", "kiss", "romance", "tonight"}
    assert set(clusters[ids[1]].words) == {"weapon", "revenge", "burn", "rival"}
    # deterministic
    assert cluster_samples(features, texts) == (ids, clusters)


def test_few_flagged_samples_make_one_cluster() -> None:
    ids, clusters = cluster_samples(np.ones((2, 4)), ["alpha beta", "alpha gamma"])
    assert ids == [0, 0] and len(clusters) == 1 and clusters[0].size == 2
    assert cluster_samples(np.zeros((0, 4)), []) == ([], [])


def test_clusters_fitted_on_a_sample_place_every_sample_by_its_planted_group() -> None:
    """Fitted on 4 + 2 of 30 samples (a large run's spread sample), the other 24 join the
    nearest centre; ids are numbered by the size over all 30, not over the fitted few."""
    rng = np.random.default_rng(0)
    centres = 4.0 * rng.standard_normal((2, 8))
    features = planted(centres, 15, seed=5)  # rows 0-14 group A, 15-29 group B
    texts = ["darling kiss romance"] * 15 + ["weapon revenge rival"] * 15
    fit = [0, 3, 6, 9, 15, 20]
    model = fit_clusters(features[fit], max_clusters=2)
    raw = model.assign(features)
    assert len(set(raw[:15])) == len(set(raw[15:])) == 1 and raw[0] != raw[15]
    words = describe_clusters(model, [texts[i] for i in fit])
    ids, clusters = number_clusters(model, raw, words)
    assert [c.size for c in clusters] == [15, 15]
    assert set(clusters[ids[0]].words) == {"darling", "kiss", "romance"}
    assert set(clusters[ids[15]].words) == {"weapon", "revenge", "rival"}
    uneven, _ = number_clusters(model, np.concatenate([raw[:10], raw[15:]]), words)  # 10 A, 15 B
    assert uneven[0] == 1 and uneven[-1] == 0  # the larger group is cluster 0


def test_a_single_cluster_is_named_by_what_sets_it_apart_from_the_kept_rows() -> None:
    """One cluster has no other cluster to be contrasted with: the kept rows are the
    background, so words the whole dataset shares do not name it."""
    features = planted(np.zeros((1, 8)), 6, seed=1)
    model = fit_clusters(features, max_clusters=1)
    flagged = [f"please help me with my refund claim {i}" for i in range(6)]
    kept = [f"please help me with my garden plan {i}" for i in range(20)]
    assert model.size == 1
    plain = describe_clusters(model, flagged)[0]
    contrasted = describe_clusters(model, flagged, kept)[0]
    assert set(plain) & {"help", "please"}  # without a background: the most common words
    assert set(contrasted) == {"refund", "claim"}  # against the kept rows: what sets it apart


def test_kept_text_sample_spreads_over_the_kept_rows() -> None:
    assert kept_text_sample(6, np.array([1, 4])) == [0, 2, 3, 5]
    spread = kept_text_sample(10 * MAX_CLUSTER_FIT, np.array([0]))
    assert len(spread) == MAX_CLUSTER_FIT
    assert spread[0] == 1 and spread[-1] == 10 * MAX_CLUSTER_FIT - 1
    assert spread == sorted(set(spread))
