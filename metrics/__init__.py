"""Retrieval and clustering metrics (spec §4): one exact kNN search and one k-means per evaluation.

Public API::

    compute_metrics(embeddings, labels, metrics, *, backend="auto", device=None, num_threads=None,
                    return_info=False) -> dict[str, float]   (or (dict, info) with return_info=True)
    compute_query_gallery_metrics(query_embeddings, query_labels, gallery_embeddings, gallery_labels,
                                  metrics, *, backend="auto", device=None, ...) -> dict[str, float]
    canonical_metric_name(name) -> str        parse_metric_list(tokens) -> list[str]
    f1_from_assignment(labels, assignment) -> float   nmi_from_assignment(labels, assignment) -> float
"""

from metrics.clustering import f1_from_assignment, kmeans_assignment, nmi_from_assignment
from metrics.compute import compute_metrics, compute_query_gallery_metrics, resolve_backend
from metrics.names import canonical_metric_name, parse_metric_list

__all__ = [
    "canonical_metric_name",
    "compute_metrics",
    "compute_query_gallery_metrics",
    "f1_from_assignment",
    "kmeans_assignment",
    "nmi_from_assignment",
    "parse_metric_list",
    "resolve_backend",
]
