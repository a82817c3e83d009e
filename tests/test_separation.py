"""Difference of means, projections, AUROC and layer choice against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from screener.vectors.separation import (
    auroc_per_layer,
    choose_layer,
    difference_of_means,
    project,
    separation_per_layer,
)


def test_difference_of_means_by_hand() -> None:
    # 2 samples per side, 2 layers, d = 2
    pos = torch.tensor([[[1.0, 2.0], [0.0, 0.0]], [[3.0, 4.0], [2.0, 2.0]]])
    neg = torch.tensor([[[0.0, 1.0], [1.0, 1.0]], [[0.0, 1.0], [1.0, 3.0]]])
    expected = torch.tensor([[2.0, 2.0], [0.0, -1.0]])  # means (2,3)-(0,1) and (1,1)-(1,2)
    torch.testing.assert_close(difference_of_means(pos, neg), expected)


def test_projection_normalises_the_vector_not_the_activation() -> None:
    activations = torch.tensor([[[3.0, 4.0]], [[-1.0, 0.5]]])  # (2 samples, 1 layer, d=2)
    vectors = torch.tensor([[0.0, 2.0]])  # unit vector (0, 1)
    torch.testing.assert_close(project(activations, vectors), torch.tensor([[4.0], [0.5]]))


def test_auroc_per_layer_by_hand() -> None:
    vectors = torch.tensor([[1.0], [1.0]])  # 2 layers, d = 1: projection = activation
    pos = torch.tensor([[[3.0], [1.0]], [[4.0], [5.0]]])
    neg = torch.tensor([[[1.0], [2.0]], [[2.0], [6.0]]])
    # layer 0: positives 3,4 vs negatives 1,2 -> all 4 pairs ordered: 1.0
    # layer 1: positives 1,5 vs negatives 2,6 -> pairs won: (5>2) only -> 1/4
    assert auroc_per_layer(pos, neg, vectors) == [1.0, 0.25]


def test_choose_layer_skips_embeddings_and_breaks_ties_toward_the_middle() -> None:
    assert choose_layer([1.0, 0.6, 0.9, 0.9, 0.7]) == 2  # L = 4: layers 2 and 3 tie, middle is 2
    assert (
        choose_layer([0.5, 0.9, 0.6, 0.6, 0.9, 0.9, 0.6]) == 4
    )  # L = 6: 1, 4, 5 tie; 4 is nearest 3
    assert choose_layer([0.5, 0.9, 0.6, 0.6, 0.6, 0.9, 0.9]) == 1  # equally near: the lower layer
    assert choose_layer([0.5, 0.7]) == 1
    with pytest.raises(ValueError):
        choose_layer([0.9])


def test_separation_per_layer_by_hand() -> None:
    vectors = torch.tensor([[1.0], [2.0], [1.0]])  # 3 layers, d = 1: projection = activation
    pos = torch.tensor([[[3.0], [1.0], [5.0]], [[5.0], [5.0], [5.0]]])
    neg = torch.tensor([[[1.0], [2.0], [5.0]], [[1.0], [6.0], [5.0]]])
    # layer 0: pos 3,5 (mean 4, var 1), neg 1,1 (mean 1, var 0): (4 - 1) / sqrt(1/2) = 3 sqrt 2
    # layer 1: pos 1,5 (mean 3, var 4), neg 2,6 (mean 4, var 4): -1 / 2
    # layer 2: both sides constant: 0
    assert separation_per_layer(pos, neg, vectors) == pytest.approx([3 * 2**0.5, -0.5, 0.0])


def test_choose_layer_breaks_auroc_ties_by_separation_first() -> None:
    aurocs = [1.0, 1.0, 1.0, 1.0, 0.9]  # L = 4: layers 1-3 tie at 1.0
    assert choose_layer(aurocs, [9.0, 3.0, 2.0, 4.0, 8.0]) == 3  # larger effect size wins
    assert choose_layer(aurocs, [9.0, 3.0, 3.0, 3.0, 8.0]) == 2  # equal: nearest the middle
    assert choose_layer([0.5, 0.8, 0.9], [0.0, 9.0, 1.0]) == 2  # AUROC decides before separation
