"""The arithmetic of persona vectors: difference of means, projections, layer choice.

All functions take per-layer activation summaries shaped (samples, layers, d) and vectors
shaped (layers, d), with row l meaning hidden-state layer l (docs/method.md).
"""

from __future__ import annotations

import torch
from sklearn.metrics import roc_auc_score


def difference_of_means(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """v_l = mean a_l(pos) - mean a_l(neg): (layers, d) float32 from (n, layers, d) inputs."""
    return positive.float().mean(0) - negative.float().mean(0)


def project(activations: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """p_l = a_l . v_l / ||v_l|| for every sample and layer: (n, layers).

    The vector is normalised, the activation is not. A zero vector projects to 0.
    """
    norms = vectors.float().norm(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.einsum("nld,ld->nl", activations.float(), vectors.float()) / norms


def auroc_per_layer(
    positive: torch.Tensor, negative: torch.Tensor, vectors: torch.Tensor
) -> list[float]:
    """For each layer, the AUROC of the projection separating positive from negative samples
    (1.0: every positive projects higher than every negative; 0.5: no separation)."""
    pos, neg = project(positive, vectors), project(negative, vectors)
    labels = [1] * len(pos) + [0] * len(neg)
    scores = torch.cat([pos, neg]).numpy()
    return [float(roc_auc_score(labels, scores[:, layer])) for layer in range(scores.shape[1])]


def separation_per_layer(
    positive: torch.Tensor, negative: torch.Tensor, vectors: torch.Tensor
) -> list[float]:
    """For each layer, the effect size of the projection: (mean pos - mean neg) divided by the
    pooled standard deviation (Cohen's d; 0 when both sides are constant). Unlike AUROC it keeps
    growing once every positive projects above every negative, so it ranks layers that AUROC
    ties at 1.0."""
    pos, neg = project(positive, vectors).double(), project(negative, vectors).double()
    gap = pos.mean(0) - neg.mean(0)
    pooled = ((pos.var(0, unbiased=False) + neg.var(0, unbiased=False)) / 2).sqrt()
    ratio = torch.where(pooled > 0, gap / pooled.clamp_min(1e-300), torch.zeros_like(gap))
    return [float(value) for value in ratio]


def choose_layer(
    aurocs: list[float],
    separations: list[float] | None = None,
    *,
    tolerance: float = 1e-9,
) -> int:
    """The layer with the best AUROC among 1..L (row 0, the embeddings, is not a candidate).
    Ties go to the larger separation (when given), then to the layer nearest the middle of the
    network."""
    num_layers = len(aurocs) - 1
    if num_layers < 1:
        raise ValueError("need at least one decoder layer")
    best = max(aurocs[1:])
    tied = [layer for layer in range(1, num_layers + 1) if aurocs[layer] >= best - tolerance]
    spread = separations or [0.0] * len(aurocs)
    return min(tied, key=lambda layer: (-spread[layer], abs(layer - num_layers / 2), layer))
