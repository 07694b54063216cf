"""Clustering metrics: k-means (faiss, or a torch fallback), NMI and pair-counting F1.

Worked example: classes [0, 0, 1, 1], clusters [0, 0, 0, 1].
    contingency n_{class,cluster} = [[2, 0], [1, 1]]; TP = C(2,2) = 1 same-class pair in one cluster;
    class pairs = C(2,2) + C(2,2) = 2 -> P = 1/2; cluster pairs = C(3,2) + C(1,2) = 3 -> R = 1/3;
    f1 = 2PR/(P+R) = 0.4.  nmi = sklearn normalized_mutual_info_score (arithmetic) = 0.3437.
"""

from __future__ import annotations

import numpy as np
import torch

KMEANS_ITERATIONS = 20
KMEANS_SEED = 1234


def _contingency(labels: np.ndarray, assignment: np.ndarray) -> np.ndarray:
    """Dense class x cluster count table (int64)."""
    _, class_ids = np.unique(labels, return_inverse=True)
    _, cluster_ids = np.unique(assignment, return_inverse=True)
    table = np.zeros((class_ids.max() + 1, cluster_ids.max() + 1), dtype=np.int64)
    np.add.at(table, (class_ids, cluster_ids), 1)
    return table


def _pairs(counts: np.ndarray) -> float:
    counts = counts.astype(np.float64)
    return float((counts * (counts - 1) / 2).sum())


def f1_from_assignment(labels: np.ndarray, assignment: np.ndarray) -> float:
    """Pair-counting F1 (docs/reference.md §4.2): TP = sum C(n_{class,cluster}, 2), P = TP / sum_class C(n_class, 2),
    R = TP / sum_cluster C(n_cluster, 2), F1 = 2PR / (P + R); 0 when there is no positive pair."""
    table = _contingency(np.asarray(labels), np.asarray(assignment))
    true_positives = _pairs(table)
    class_pairs = _pairs(table.sum(axis=1))
    cluster_pairs = _pairs(table.sum(axis=0))
    if true_positives == 0.0:
        return 0.0
    precision = true_positives / class_pairs
    recall = true_positives / cluster_pairs
    return 2 * precision * recall / (precision + recall)


def nmi_from_assignment(labels: np.ndarray, assignment: np.ndarray) -> float:
    """Normalised mutual information, arithmetic normalisation (scikit-learn's default)."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(np.asarray(labels), np.asarray(assignment)))


def kmeans_assignment(
    embeddings: np.ndarray, num_clusters: int, *, backend: str = "faiss", device: str | None = None
) -> np.ndarray:
    """Cluster index of every row after k-means with the reference settings (docs/reference.md §4.1).

    faiss: ``faiss.Clustering`` with niter 20, min/max points per centroid 1 / 1e9, seed 1234, trained with
    a flat L2 index (GPU when faiss sees one), then nearest centroid. torch: Lloyd iterations with the same
    count and the same init rule (K distinct random points drawn with the seed), on ``device``.
    """
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if backend == "faiss":
        return _kmeans_faiss(x, num_clusters)
    return _kmeans_torch(torch.from_numpy(x), num_clusters, torch.device(device or "cpu"))


def _kmeans_faiss(x: np.ndarray, num_clusters: int) -> np.ndarray:
    import faiss

    dim = x.shape[1]
    clustering = faiss.Clustering(dim, num_clusters)
    clustering.niter = KMEANS_ITERATIONS
    clustering.min_points_per_centroid = 1
    clustering.max_points_per_centroid = 1_000_000_000
    clustering.seed = KMEANS_SEED
    index = faiss.IndexFlatL2(dim)
    if faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    clustering.train(x, index)
    centroids = faiss.vector_float_to_array(clustering.centroids).reshape(num_clusters, dim)
    assign_index = faiss.IndexFlatL2(dim)
    assign_index.add(centroids)
    _, nearest = assign_index.search(x, 1)
    return nearest[:, 0].astype(np.int64)


def _nearest_centroid(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    half_norms = 0.5 * (centroids * centroids).sum(dim=1)
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], chunk):
        scores = x[start : start + chunk] @ centroids.T - half_norms
        out[start : start + chunk] = scores.argmax(dim=1)
    return out


def _kmeans_torch(x: torch.Tensor, num_clusters: int, device: torch.device) -> np.ndarray:
    x = x.to(device)
    generator = torch.Generator().manual_seed(KMEANS_SEED)
    init = torch.randperm(x.shape[0], generator=generator)[:num_clusters].to(device)
    centroids = x[init].clone()
    for _ in range(KMEANS_ITERATIONS):
        assignment = _nearest_centroid(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, x)
        counts = torch.bincount(assignment, minlength=num_clusters).to(x.dtype)
        filled = counts > 0
        # empty clusters keep their previous centroid
        centroids[filled] = sums[filled] / counts[filled, None]
    return _nearest_centroid(x, centroids).cpu().numpy().astype(np.int64)
