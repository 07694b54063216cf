"""The evaluation entry points: every requested metric from one kNN search and one k-means.

``compute_metrics`` (one set, every item is a query against all others) and
``compute_query_gallery_metrics`` (In-Shop style) return ``{canonical name: value}``; with
``return_info=True`` they return ``(values, info)`` where ``info`` holds ``queries`` (number of queries),
``excluded_queries`` (queries left out of the retrieval metrics because no other item has their class),
``k`` (neighbours searched), ``backend`` (the kNN backend used) and the search statistics
(``float64_order_rows``, ``fp32_retry_rows``, ``full_rows``, see ``metrics.knn``). With ``keep_top=N`` the same
search also gives, per query, what a picture of the worst queries needs: ``info["ranking"]``, a `QueryRanking`
(absent when no query can be scored).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from metrics import retrieval
from metrics.clustering import f1_from_assignment, kmeans_assignment, nmi_from_assignment
from metrics.knn import KnnStats, drop_same_item, iter_knn, torch_threads
from metrics.names import CLUSTERING_METRICS, MetricSpec, canonical_metric_name, resolve_metric
from utilities.errors import UserError

BACKENDS = ("auto", "faiss", "torch")


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX).

    Measured on the 2-core development CPU (AMX): a 4096x512 @ 512x8192 product takes 0.04 s in bf16 against
    0.20 s in float32, and a float32 faiss flat search of 60k x 512 takes ~22 s, so the torch backend with a
    bf16 candidate stage is the fastest there; without native bf16, faiss (float32, BLAS) is.
    """
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> tuple[str, torch.dtype]:
    """(kNN backend, candidate dtype of the torch backend) for a requested backend and device.

    auto: torch on CUDA (bf16 tensor cores) and on CPUs with native bf16; otherwise faiss when installed
    (float32 BLAS beats float32 torch products plus top-k), else torch in float32.
    """
    if backend not in BACKENDS:
        raise UserError(f"eval backend {backend!r} is not one of {', '.join(BACKENDS)}")
    fast_bf16 = device.type == "cuda" or cpu_has_fast_bf16()
    dtype = torch.bfloat16 if fast_bf16 else torch.float32
    if backend == "faiss":
        if not faiss_available():
            raise UserError("eval backend 'faiss' requested but faiss is not installed; use 'torch' or 'auto'")
        return "faiss", dtype
    if backend == "torch" or fast_bf16 or not faiss_available():
        return "torch", dtype
    return "faiss", dtype


def _as_embeddings(values: Any, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    tensor = tensor.detach().to(device="cpu", dtype=torch.float32)
    if tensor.ndim != 2 or tensor.shape[0] == 0:
        raise UserError(f"{name}: expected a non-empty 2-D array (items x dimensions), got shape {tuple(tensor.shape)}")
    # checked in parts: isfinite of a whole SOP-sized set makes temporaries of ~200 MB
    if not all(bool(torch.isfinite(part).all()) for part in tensor.split(4096)):
        bad = int((~torch.isfinite(tensor)).any(dim=1).sum())
        raise UserError(f"{name}: {bad} row(s) contain NaN or infinite values")
    return tensor


def _as_labels(values: Any, name: str, length: int) -> torch.Tensor:
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.ndim != 1:
        raise UserError(f"{name}: expected a 1-D array of class labels, got shape {array.shape}")
    if len(array) != length:
        raise UserError(f"{name}: {len(array)} labels for {length} embeddings (lengths must match)")
    _, codes = np.unique(array, return_inverse=True)  # any label type -> 0..C-1
    return torch.from_numpy(codes.astype(np.int64).reshape(-1))


def _validate(names: Sequence[str]) -> list[str]:
    if isinstance(names, str):
        names = [names]
    canonical: list[str] = []
    for name in names:
        name = canonical_metric_name(name)
        if name not in canonical:
            canonical.append(name)
    return canonical


def _needed_k(names: list[str], max_relevant: int) -> int:
    """Neighbours the search must return for every metric of `names` (see `MetricSpec.neighbours`)."""
    return max((spec.neighbours(k, max_relevant) for spec, k in map(resolve_metric, names)), default=0)


def _row_depth(names: list[str], num_relevant: torch.Tensor) -> torch.Tensor:
    """Per query, the neighbours its metrics of `names` read: `MetricSpec.neighbours` with the query's own R."""
    depth = torch.zeros_like(num_relevant)
    for spec, k in map(resolve_metric, names):
        depth = torch.maximum(depth, torch.as_tensor(spec.neighbours(k, num_relevant)).to(depth))
    return depth


@dataclass(frozen=True)
class QueryRanking:
    """Per query, what the evaluation's one search found (`keep_top` of `compute_metrics` and
    `compute_query_gallery_metrics`): enough to pick and draw the worst queries (`engine.grids`).

    ``neighbours`` (queries x top, int64): the gallery indices of the query's nearest neighbours, nearest first,
    in the exact order of `metrics.knn` (a query's own item never among them). ``map_at_r`` (queries,): the
    query's MAP@R, NaN where it cannot be scored (no relevant item). ``first_correct`` (queries,): the 0-based
    rank of its first neighbour of its class among the first ``depth`` neighbours, ``depth`` when none is;
    ``depth`` = min(max(largest R, top), eligible items).
    """

    neighbours: torch.Tensor
    map_at_r: torch.Tensor
    first_correct: torch.Tensor
    depth: int


class _Ranking:
    """Collects a `QueryRanking` chunk by chunk from a search at least `depth` deep."""

    def __init__(self, top: int, depth: int) -> None:
        self.top, self.depth = top, depth
        self.parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def add(self, indices: torch.Tensor, hits: torch.Tensor, relevant: torch.Tensor) -> None:
        hits = hits[:, : self.depth].contiguous()
        precision = retrieval.map_at_r(hits, relevant.clamp(min=1))
        precision = torch.where(relevant >= 1, precision, torch.full_like(precision, math.nan))
        first = torch.where(hits.any(dim=1), hits.float().argmax(dim=1), torch.full((len(hits),), self.depth))
        self.parts.append((indices[:, : self.top], precision, first))

    def result(self) -> QueryRanking:
        neighbours, precision, first = (torch.cat(part) for part in zip(*self.parts))
        return QueryRanking(neighbours, precision, first, self.depth)


@contextmanager
def _threads(num_threads: int | None, uses_faiss: bool) -> Iterator[None]:
    """Temporarily set torch's CPU thread count (and faiss's, which is not set back) to `num_threads` (None: as is)."""
    if num_threads and uses_faiss:
        import faiss

        faiss.omp_set_num_threads(num_threads)
    with torch_threads(num_threads):
        yield


def _retrieval(
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    num_relevant: torch.Tensor,
    names: list[str],
    *,
    exclude_self: bool,
    backend: str,
    device: torch.device,
    same_item: torch.Tensor | None = None,
    keep_top: int = 0,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Retrieval metrics averaged over the queries with at least one relevant item.

    `same_item` (query -> gallery only): the gallery index of each query's own item, -1 when it is not in the
    gallery; that item is removed from the query's neighbours (by index, as `exclude_self` does).
    `keep_top` > 0: ``info["ranking"]`` holds the `QueryRanking` of the same search, which is then at least
    max(largest R, keep_top) deep and exact in every order (the metrics only read their first k columns, so
    their values do not change).
    """
    keep = num_relevant >= 1
    kept = int(keep.sum())
    info: dict[str, Any] = {"queries": len(queries), "excluded_queries": len(queries) - kept}
    has_self = same_item is not None and bool((same_item >= 0).any())
    eligible = len(gallery) - (1 if exclude_self or has_self else 0)
    if kept == 0 or eligible < 1:
        info["excluded_queries"] = len(queries)
        return {name: math.nan for name in names}, info
    largest = int(num_relevant.max())
    k = min(_needed_k(names, largest), eligible)
    ranking = _Ranking(keep_top, min(max(largest, keep_top), eligible)) if keep_top > 0 else None
    searched = max(k, ranking.depth) if ranking is not None else k
    knn_backend, dtype = resolve_backend(backend, device)
    stats = KnnStats()
    # the labels let the search leave near-ties of equal relevance in float32 order, which no metric sees
    # but a picture of the neighbours would
    # and each query's own depth (the neighbours its metrics read) lets the search settle only those
    exactness: dict[str, torch.Tensor] = {}
    if ranking is None:
        depth = _row_depth(names, num_relevant) + (1 if has_self else 0)
        exactness = {"query_labels": query_labels, "gallery_labels": gallery_labels, "depth": depth}
    per_query: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for start, indices in iter_knn(
        queries,
        gallery,
        searched + 1 if has_self else searched,
        exclude_self=exclude_self,
        backend=knn_backend,
        device=device,
        candidate_dtype=dtype,
        stats=stats,
        **exactness,
    ):
        rows = slice(start, start + indices.shape[0])
        indices = indices.cpu()
        if has_self:
            indices = drop_same_item(indices, same_item[rows], searched)
        all_hits = gallery_labels[indices] == query_labels[rows, None]
        if ranking is not None:
            ranking.add(indices, all_hits, num_relevant[rows])
        row_keep = keep[rows]
        hits = all_hits if searched == k else all_hits[:, :k].contiguous()
        hits, relevant = hits[row_keep], num_relevant[rows][row_keep]
        for name in names:
            per_query[name].append(_per_query(name, hits, relevant))
    info.update(k=searched, backend=knn_backend, **vars(stats))
    if ranking is not None:
        info["ranking"] = ranking.result()
    # an exactly rounded sum: the value does not depend on how the search split the queries into chunks
    return {name: math.fsum(torch.cat(per_query[name]).tolist()) / kept for name in names}, info


def _per_query(name: str, hits: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """One value per query of metric `name`, from its per-query function in `metrics.retrieval`."""
    spec, k = resolve_metric(name)
    return _scorer(spec)(**_arguments(spec, hits=hits, num_relevant=relevant, k=k))


@functools.cache
def _scorer(spec: MetricSpec) -> Any:
    return getattr(retrieval, spec.function)


@functools.cache
def _parameters(spec: MetricSpec) -> frozenset[str]:
    return frozenset(inspect.signature(_scorer(spec)).parameters)


def _arguments(spec: MetricSpec, **available: Any) -> dict[str, Any]:
    """The subset of `available` that the metric's per-query function takes (``hits``, ``num_relevant``, ``k``)."""
    parameters = _parameters(spec)
    return {name: value for name, value in available.items() if name in parameters}


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise UserError(f"device {device!r} is not a valid torch device: {error}") from None


def _check_keep_top(keep_top: int, return_info: bool) -> None:
    if keep_top < 0 or (keep_top and not return_info):
        raise ValueError(f"keep_top={keep_top}: expected >= 0, and return_info=True to receive the ranking")


def compute_metrics(
    embeddings: Any,
    labels: Any,
    metrics: Sequence[str],
    *,
    backend: str = "auto",
    device: str | torch.device | None = None,
    num_threads: int | None = None,
    return_info: bool = False,
    keep_top: int = 0,
) -> dict[str, float] | tuple[dict[str, float], dict[str, Any]]:
    """Metrics of one set in which every item queries all the others (self excluded by index).

    ``embeddings`` (N, D) and ``labels`` (N,) as numpy arrays or tensors, used as given with L2 distance
    (L2-normalise them first for cosine retrieval). Items whose class has no other item are excluded from the
    retrieval metrics (``info["excluded_queries"]``); k-means for ``nmi``/``f1`` uses K = number of classes.
    ``keep_top`` > 0 (with ``return_info``): ``info["ranking"]``, the `QueryRanking` of the same search with
    each query's ``keep_top`` nearest neighbours.

    >>> compute_metrics([[0.0], [0.1], [1.0], [1.2]], [0, 0, 1, 1], ["recall@1", "map@r"])
    {'recall@1': 1.0, 'map@r': 1.0}
    """
    names = _validate(metrics)
    _check_keep_top(keep_top, return_info)
    x = _as_embeddings(embeddings, "embeddings")
    y = _as_labels(labels, "labels", len(x))
    dev = _device(device)
    retrieval_names = [n for n in names if n not in CLUSTERING_METRICS]
    clustering_names = [n for n in names if n in CLUSTERING_METRICS]
    values: dict[str, float] = {}
    info: dict[str, Any] = {"queries": len(x), "excluded_queries": 0}
    uses_faiss = backend != "torch" and faiss_available() if clustering_names or backend == "faiss" else False
    with _threads(num_threads, uses_faiss):
        if retrieval_names or keep_top:
            counts = torch.bincount(y)
            relevant = counts[y] - 1
            found, info = _retrieval(
                x, y, x, y, relevant, retrieval_names, exclude_self=True, backend=backend, device=dev, keep_top=keep_top
            )
            values.update(found)
        if clustering_names:
            cluster_backend = "faiss" if uses_faiss else "torch"
            num_classes = int(y.max()) + 1
            assignment = kmeans_assignment(x.numpy(), num_classes, backend=cluster_backend, device=str(dev))
            if "nmi" in clustering_names:
                values["nmi"] = nmi_from_assignment(y.numpy(), assignment)
            if "f1" in clustering_names:
                values["f1"] = f1_from_assignment(y.numpy(), assignment)
    values = {name: values[name] for name in names}
    return (values, info) if return_info else values


def compute_query_gallery_metrics(
    query_embeddings: Any,
    query_labels: Any,
    gallery_embeddings: Any,
    gallery_labels: Any,
    metrics: Sequence[str],
    *,
    backend: str = "auto",
    device: str | torch.device | None = None,
    num_threads: int | None = None,
    return_info: bool = False,
    same_item: Any = None,
    keep_top: int = 0,
) -> dict[str, float] | tuple[dict[str, float], dict[str, Any]]:
    """Query -> gallery retrieval metrics (In-Shop): R = number of gallery items of the query's class.

    Queries whose class has no gallery item are excluded (``info["excluded_queries"]``). Clustering
    metrics are not defined here (UserError). ``same_item`` (optional, one integer per query): the gallery
    index of the query's own image when the gallery holds it too, else -1; that image is never retrieved
    for its own query and does not count in R. ``keep_top``: as in `compute_metrics`.
    """
    names = _validate(metrics)
    _check_keep_top(keep_top, return_info)
    unavailable = [n for n in names if not resolve_metric(n)[0].query_gallery]
    if unavailable:
        raise UserError(f"metric(s) {', '.join(unavailable)} are not available for query/gallery evaluation")
    q = _as_embeddings(query_embeddings, "query_embeddings")
    g = _as_embeddings(gallery_embeddings, "gallery_embeddings")
    if q.shape[1] != g.shape[1]:
        raise UserError(f"query_embeddings have {q.shape[1]} dimensions but gallery_embeddings {g.shape[1]}")
    raw_q = query_labels.cpu().numpy() if isinstance(query_labels, torch.Tensor) else np.asarray(query_labels)
    raw_g = gallery_labels.cpu().numpy() if isinstance(gallery_labels, torch.Tensor) else np.asarray(gallery_labels)
    for array, name, length in ((raw_q, "query_labels", len(q)), (raw_g, "gallery_labels", len(g))):
        _as_labels(array, name, length)
    codes = np.unique(np.concatenate([raw_q, raw_g]), return_inverse=True)[1].reshape(-1)
    ql = torch.from_numpy(codes[: len(q)].astype(np.int64))
    gl = torch.from_numpy(codes[len(q) :].astype(np.int64))
    counts = torch.bincount(gl, minlength=int(codes.max()) + 1)
    relevant = counts[ql]
    own = None
    if same_item is not None:
        own = torch.as_tensor(np.asarray(same_item), dtype=torch.int64).reshape(-1)
        if len(own) != len(q) or bool(((own < -1) | (own >= len(g))).any()):
            raise UserError(f"same_item: expected {len(q)} gallery indices (or -1), got {tuple(own.shape)}")
        in_gallery = own >= 0
        if bool((gl[own[in_gallery]] != ql[in_gallery]).any()):
            raise UserError("same_item: a query and its own gallery item have different labels")
        relevant = relevant - in_gallery.to(torch.int64)
    with _threads(num_threads, backend == "faiss"):
        values, info = _retrieval(
            q,
            ql,
            g,
            gl,
            relevant,
            names,
            exclude_self=False,
            backend=backend,
            device=_device(device),
            same_item=own,
            keep_top=keep_top,
        )
    return (values, info) if return_info else values
