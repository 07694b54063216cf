"""Retrieval and clustering metrics (docs/reference.md §4): one exact kNN search and one k-means per evaluation.

Public API::

    compute_metrics(embeddings, labels, metrics, *, backend="auto", device=None, num_threads=None,
                    return_info=False, keep_top=0) -> dict[str, float]   (or (dict, info) with return_info=True;
                    keep_top=N: info["ranking"], a QueryRanking of each query's N nearest neighbours)
    compute_query_gallery_metrics(query_embeddings, query_labels, gallery_embeddings, gallery_labels,
                                  metrics, *, backend="auto", device=None, ...) -> dict[str, float]
    canonical_metric_name(name) -> str        parse_metric_list(tokens) -> list[str]
    f1_from_assignment(labels, assignment) -> float   nmi_from_assignment(labels, assignment) -> float

The name helpers are imported eagerly (no torch); the rest on first use, so ``eval.py`` can report a bad
argument without importing torch.
"""

from __future__ import annotations

from typing import Any

from metrics.names import CLUSTERING_METRICS, QUERY_GALLERY_METRICS, canonical_metric_name, parse_metric_list

_COMPUTE = ("QueryRanking", "compute_metrics", "compute_query_gallery_metrics", "resolve_backend")
_CLUSTERING = ("f1_from_assignment", "nmi_from_assignment", "kmeans_assignment")

__all__ = [
    "CLUSTERING_METRICS",
    "QUERY_GALLERY_METRICS",
    "canonical_metric_name",
    "parse_metric_list",
    *_COMPUTE,
    *_CLUSTERING,
]


def __getattr__(name: str) -> Any:
    if name in _COMPUTE:
        from metrics import compute

        return getattr(compute, name)
    if name in _CLUSTERING:
        from metrics import clustering

        return getattr(clustering, name)
    raise AttributeError(f"module 'metrics' has no attribute {name!r}")
