"""Embedding extraction and evaluation of a model on the evaluation splits (and of a saved checkpoint).

Under torchrun every rank embeds a contiguous shard of each split; rank 0 gathers the shards and computes the
metrics, which it then shares with the other ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from engine.data import loader_generator
from engine.forward import ForwardPolicy
from utilities.distributed import DistInfo, broadcast_object, gather_uneven

if TYPE_CHECKING:
    from metrics import QueryRanking

QUERY_GALLERY = ("query", "gallery")


@dataclass
class Evaluation:
    """One evaluation of a model: its metric values (on every rank), its embedded splits (each rank's own copy)
    and, when asked for (`keep_top`), the per-query ranking of its one search (rank 0 only; None otherwise or
    when no query could be scored)."""

    values: dict[str, float]
    embedded: dict[str, tuple[torch.Tensor, np.ndarray]]
    ranking: QueryRanking | None = None


def _shard(dataset: Dataset, info: DistInfo) -> Dataset:
    if not info.enabled:
        return dataset
    n = len(dataset)
    start, stop = n * info.rank // info.world_size, n * (info.rank + 1) // info.world_size
    return Subset(dataset, range(start, stop))


@torch.no_grad()
def embed_dataset(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: torch.device,
    batch_size: int = 128,
    workers: int = 0,
    precision: str = "fp32",
    channels_last: bool = True,
    normalize: bool = True,
    dist: DistInfo | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Embeddings (float32, on `device`, L2-normalised if `normalize`) and labels of a whole dataset, the
    network run by the forward policy (`engine.forward`) of `precision` and `channels_last`."""
    dist = dist or DistInfo()
    loader = DataLoader(
        _shard(dataset, dist),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=loader_generator(0),  # evaluation leaves the global RNG as it found it
    )
    was_training = model.training
    model.eval()
    chunks, label_chunks = [], []
    policy = ForwardPolicy(device, precision, channels_last)
    for images, labels, _ in loader:
        images = policy.place_inputs(images)
        with policy.autocast():
            embeddings = model(images).float()
        chunks.append(F.normalize(embeddings, dim=-1) if normalize else embeddings)
        label_chunks.append(torch.as_tensor(labels, device=device))
    model.train(was_training)
    embeddings = torch.cat(chunks) if chunks else torch.empty(0, device=device)
    labels = torch.cat(label_chunks) if label_chunks else torch.empty(0, dtype=torch.long, device=device)
    embeddings, labels = gather_uneven(embeddings, dist), gather_uneven(labels, dist)
    return embeddings, labels.cpu().numpy()


def evaluation_splits(splits: dict[str, Dataset], use_val: bool) -> tuple[str, ...]:
    """Which splits an evaluation embeds: the validation split, query + gallery (In-Shop), or test."""
    if use_val:
        return ("val",)
    if all(name in splits for name in QUERY_GALLERY):
        return QUERY_GALLERY
    return ("test",)


def own_gallery_rows(query_paths: Sequence[str], gallery_paths: Sequence[str]) -> np.ndarray | None:
    """The gallery index of each query's own image (-1 where the gallery does not hold it); None when the
    query and gallery share no image."""
    position = {path: index for index, path in enumerate(gallery_paths)}
    own = np.array([position.get(path, -1) for path in query_paths], dtype=np.int64)
    return own if (own >= 0).any() else None


def same_item_indices(splits: dict[str, Dataset]) -> np.ndarray | None:
    """For query -> gallery splits that share images (a CSV row that is both query and gallery): the gallery
    index of each query's own image, -1 where it has none; None when they share none."""
    query_paths = getattr(splits.get("query"), "paths", None)
    gallery_paths = getattr(splits.get("gallery"), "paths", None)
    if query_paths is None or gallery_paths is None:
        return None
    return own_gallery_rows(query_paths, gallery_paths)


def evaluate_embeddings(
    embedded: dict[str, tuple[torch.Tensor, np.ndarray]],
    metrics: Sequence[str],
    backend: str,
    same_item: np.ndarray | None = None,
    keep_top: int = 0,
) -> tuple[dict[str, float], QueryRanking | None]:
    """Metrics of embedded splits: query→gallery when both exist (a query's own image, `same_item`, excluded),
    else within the one split; with `keep_top` > 0 also the per-query ranking of the same search (None when no
    query can be scored, and when `keep_top` is 0)."""
    from metrics import compute_metrics, compute_query_gallery_metrics

    options: dict[str, Any] = {"backend": backend, "return_info": True, "keep_top": keep_top}
    if "query" in embedded:
        (q, ql), (g, gl) = embedded["query"], embedded["gallery"]
        values, info = compute_query_gallery_metrics(
            q, ql, g, gl, list(metrics), device=q.device, same_item=same_item, **options
        )
    else:
        ((embeddings, labels),) = embedded.values()
        values, info = compute_metrics(embeddings, labels, list(metrics), device=embeddings.device, **options)
    return values, info.get("ranking")


def embed_splits(
    model: nn.Module, splits: dict[str, Dataset], names: Sequence[str], **options: Any
) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """`embed_dataset` (with `options`) of each named split."""
    return {name: embed_dataset(model, splits[name], **options) for name in names}


def evaluate_model(
    model: nn.Module,
    splits: dict[str, Dataset],
    names: Sequence[str],
    *,
    metrics: Sequence[str],
    device: torch.device,
    backend: str = "auto",
    batch_size: int = 128,
    workers: int = 0,
    precision: str = "fp32",
    channels_last: bool = True,
    normalize: bool = True,
    dist: DistInfo | None = None,
    keep_top: int = 0,
) -> Evaluation:
    """Embed the named splits and compute the metrics (on rank 0, shared with every rank), with the per-query
    ranking of the search when `keep_top` > 0 (`evaluate_embeddings`; on rank 0)."""
    dist = dist or DistInfo()
    embedded = embed_splits(
        model,
        splits,
        names,
        device=device,
        batch_size=batch_size,
        workers=workers,
        precision=precision,
        channels_last=channels_last,
        normalize=normalize,
        dist=dist,
    )
    values, ranking = None, None
    if dist.is_main:
        values, ranking = evaluate_embeddings(embedded, metrics, backend, same_item_indices(splits), keep_top)
    return Evaluation(broadcast_object(values, dist), embedded, ranking)


def write_embeddings(path: str | Path, embedded: dict[str, tuple[torch.Tensor, np.ndarray]]) -> None:
    """Write embeddings in the format `eval.py --embeddings` reads."""
    arrays: dict[str, Any] = {}
    for name, (embeddings, labels) in embedded.items():
        prefix = "" if name not in QUERY_GALLERY else f"{name}_"
        arrays[f"{prefix}embeddings"] = embeddings.cpu().numpy()
        arrays[f"{prefix}labels"] = labels
    np.savez(path, **arrays)
