"""Retrieval and clustering metrics (docs/reference.md §4): one exact kNN search and one k-means per evaluation.

Public API::

    compute_metrics(embeddings, labels, metrics, *, backend="auto", device=None, num_threads=None,
                    return_info=False) -> dict[str, float]   (or (dict, info) with return_info=True)
    compute_query_gallery_metrics(query_embeddings, query_labels, gallery_embeddings, gallery_labels,
                                  metrics, *, backend="auto", device=None, ...) -> dict[str, float]
    canonical_metric_name(name) -> str        parse_metric_list(tokens) -> list[str]
    f1_from_assignment(labels, assignment) -> float   nmi_from_assignment(labels, assignment) -> float

The name helpers are imported eagerly (no torch); the rest on first use, so ``eval.py`` can report a bad
argument without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from metrics.names import CLUSTERING_METRICS, QUERY_GALLERY_METRICS, canonical_metric_name, parse_metric_list

_LAZY = {
    "compute_metrics": "metrics.compute",
    "compute_query_gallery_metrics": "metrics.compute",
    "resolve_backend": "metrics.compute",
    "f1_from_assignment": "metrics.clustering",
    "nmi_from_assignment": "metrics.clustering",
    "kmeans_assignment": "metrics.clustering",
}

__all__ = ["CLUSTERING_METRICS", "QUERY_GALLERY_METRICS", "canonical_metric_name", "parse_metric_list", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'metrics' has no attribute {name!r}")
