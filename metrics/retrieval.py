"""Retrieval metrics as pure functions of a hit matrix.

Every function takes ``hits``: a boolean (Q, k) tensor, ``hits[i, j]`` true when the j-th nearest neighbour
of query i (self excluded, ranked by exact distance, ties by lower index) has the query's class, and
returns one float64 value per query; the caller averages over the queries it keeps (queries without any
relevant item are excluded). ``num_relevant`` (Q,) is R: the number of OTHER items of the query's class
(class size - 1 in a single set; number of gallery items of the class for query -> gallery).

Worked example (one query, R = 2, neighbours ranked [hit, miss, hit, miss]):
    recall@1 = 1, recall@2 = 1
    r_precision = hits in the first R / R = 1/2
    map@r = (1/R) * sum over hits at rank k <= R of precision@k = (1/2) * (1/1) = 0.5
    map@r_legacy (window and denominator f = R + 1 = 3) = (1/3) * (1/1 + 2/3) = 0.5556
    map@4 = (1/min(R, 4)) * (1/1 + 2/3) = 0.8333
    map@4_legacy (denominator f = R + 1 = 3) = (1/3) * (1/1 + 2/3) = 0.5556
    map@4_inshop (denominator = hits in the first 4 = 2) = (1/2) * (1/1 + 2/3) = 0.8333
    map@1_inshop (one hit in the first 1) = 1, map@2_inshop = 1
"""

from __future__ import annotations

import torch


def _precision_at_hits(hits: torch.Tensor) -> torch.Tensor:
    """precision@k at every rank k that is a hit, 0 elsewhere (float64, same shape as hits)."""
    hits_f = hits.to(torch.float64)
    ranks = torch.arange(1, hits.shape[1] + 1, dtype=torch.float64, device=hits.device)
    return torch.cumsum(hits_f, dim=1) / ranks * hits_f


def _window(num_relevant: torch.Tensor, width: int) -> torch.Tensor:
    """Boolean (Q, width) mask of the first ``num_relevant[i]`` ranks of every row."""
    cols = torch.arange(width, device=num_relevant.device)
    return cols[None, :] < num_relevant[:, None]


def recall_at_k(hits: torch.Tensor, k: int) -> torch.Tensor:
    """1 where a same-class item is among the first k neighbours: [hit, miss] -> recall@1 = 1."""
    return hits[:, :k].any(dim=1).to(torch.float64)


def r_precision(hits: torch.Tensor, num_relevant: torch.Tensor) -> torch.Tensor:
    """Hits among the first R neighbours divided by R: R = 2, [hit, miss, hit] -> 0.5."""
    window = _window(num_relevant, hits.shape[1])
    return (hits & window).sum(dim=1).to(torch.float64) / num_relevant.to(torch.float64)


def map_at_r(hits: torch.Tensor, num_relevant: torch.Tensor) -> torch.Tensor:
    """MAP@R: (1/R) sum_{k<=R} hit_k * precision@k (pytorch-metric-learning's definition).

    R = 2, [hit, miss, hit] -> (1/2) * 1 = 0.5; a perfect ranking scores 1.
    """
    window = _window(num_relevant, hits.shape[1])
    precision = _precision_at_hits(hits & window)
    return precision.sum(dim=1) / num_relevant.to(torch.float64)


def map_at_r_legacy(hits: torch.Tensor, num_relevant: torch.Tensor) -> torch.Tensor:
    """The reference's ``mAP_R``: window and denominator f = R + 1 (the class size including the query).

    R = 2, [hit, miss, hit] -> (1/3) * (1 + 2/3) = 0.5556; a perfect ranking scores R / (R + 1).
    """
    size = num_relevant + 1
    window = _window(size, hits.shape[1])
    precision = _precision_at_hits(hits & window)
    return precision.sum(dim=1) / size.to(torch.float64)


def map_at_k(hits: torch.Tensor, num_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """Average precision over the first k neighbours, divided by min(R, k) (so a perfect ranking is 1).

    R = 2, k = 4, [hit, miss, hit, miss] -> (1/2) * (1 + 2/3) = 0.8333.
    """
    precision = _precision_at_hits(hits[:, :k])
    return precision.sum(dim=1) / num_relevant.clamp(max=k).to(torch.float64)


def map_at_k_legacy(hits: torch.Tensor, num_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """The reference's ``mAP_1000`` for K = 1000: the first k neighbours, divided by the class size f = R + 1.

    R = 2, k = 4, [hit, miss, hit, miss] -> (1/3) * (1 + 2/3) = 0.5556; a perfect ranking scores R / (R + 1).
    """
    precision = _precision_at_hits(hits[:, :k])
    return precision.sum(dim=1) / (num_relevant + 1).to(torch.float64)


def map_at_k_inshop(hits: torch.Tensor, k: int) -> torch.Tensor:
    """The reference's In-Shop ``MAP`` for K = 50: average precision over the first k gallery items, divided by
    the number of hits among them (0 when there is none).

    [miss, hit, miss, hit] with k = 4 -> (1/2) * (1/2 + 2/4) = 0.5; with k = 1 -> 0 (no hit).
    """
    precision = _precision_at_hits(hits[:, :k])
    found = hits[:, :k].sum(dim=1).to(torch.float64)
    return torch.where(found > 0, precision.sum(dim=1) / found.clamp(min=1), torch.zeros_like(found))
