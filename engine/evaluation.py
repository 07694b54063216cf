"""Embedding extraction and evaluation of a model on the evaluation splits (and of a saved checkpoint).

Under torchrun every rank embeds a contiguous shard of each split; rank 0 gathers the shards and computes the
metrics, which it then shares with the other ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from engine.data import loader_generator
from utilities.distributed import DistInfo, broadcast_object, gather_uneven

QUERY_GALLERY = ("query", "gallery")


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
    normalize: bool = True,
    dist: DistInfo | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Embeddings (float32, on `device`, L2-normalised if `normalize`) and labels of a whole dataset."""
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
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
        if precision != "fp32"
        else torch.autocast(device.type, enabled=False)
    )
    for images, labels, _ in loader:
        images = images.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast:
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
) -> dict[str, float]:
    """Metrics of embedded splits: query→gallery when both exist (a query's own image, `same_item`, excluded),
    else within the one split."""
    from metrics import compute_metrics, compute_query_gallery_metrics

    if "query" in embedded:
        (q, ql), (g, gl) = embedded["query"], embedded["gallery"]
        return compute_query_gallery_metrics(
            q, ql, g, gl, list(metrics), backend=backend, device=q.device, same_item=same_item
        )
    ((embeddings, labels),) = embedded.values()
    return compute_metrics(embeddings, labels, list(metrics), backend=backend, device=embeddings.device)


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
    normalize: bool = True,
    dist: DistInfo | None = None,
) -> tuple[dict[str, float], dict[str, tuple[torch.Tensor, np.ndarray]]]:
    """Embed the named splits and compute the metrics (on rank 0, shared with every rank)."""
    dist = dist or DistInfo()
    embedded = embed_splits(
        model,
        splits,
        names,
        device=device,
        batch_size=batch_size,
        workers=workers,
        precision=precision,
        normalize=normalize,
        dist=dist,
    )
    values = evaluate_embeddings(embedded, metrics, backend, same_item_indices(splits)) if dist.is_main else None
    return broadcast_object(values, dist), embedded


def write_embeddings(path: str | Path, embedded: dict[str, tuple[torch.Tensor, np.ndarray]]) -> None:
    """Write embeddings in the format `eval.py --embeddings` reads."""
    arrays: dict[str, Any] = {}
    for name, (embeddings, labels) in embedded.items():
        prefix = "" if name not in QUERY_GALLERY else f"{name}_"
        arrays[f"{prefix}embeddings"] = embeddings.cpu().numpy()
        arrays[f"{prefix}labels"] = labels
    np.savez(path, **arrays)


@dataclass
class CheckpointEvaluation:
    """What eval.py asks of a checkpoint; None keeps the checkpoint's own setting."""

    checkpoint: str
    source_path: str | None = None
    dataset: str | None = None
    metrics: list[str] | None = None
    backend: str = "auto"
    device: str = "auto"
    gpu: list[int] | None = None
    batch_size: int | None = None
    workers: int | None = None
    normalize: bool | None = None
    search_on_cpu: bool = False
    save_embeddings: str | None = None
    show: int = 0  # draw this many worst queries (engine.grids) to `show_path`
    show_path: str | None = None
    report: Callable[[str], None] = print


def _checkpoint_setup(request: CheckpointEvaluation, path: Path) -> tuple[dict[str, Any], Callable[[nn.Module], None]]:
    """Configuration values and a weight loader for a checkpoint of either kind; reports which kind it is."""
    from compat.checkpoint import read_checkpoint, reference_eval_config
    from compat.weights import load_reference_weights

    own, reference = read_checkpoint(path)
    if own is not None:
        request.report(f"{path}: a checkpoint of this project (read with weights_only=True)")
        values = dict(own["config"], pretrained=False)
        trained_on = values["dataset"]
        values.update({k: v for k, v in (("dataset", request.dataset), ("source_path", request.source_path)) if v})
        if request.normalize is not None:
            values["eval_normalize"] = request.normalize

        def load(model: nn.Module) -> None:
            model.load_state_dict(own["model"])

    else:
        request.report(reference.describe(path))
        values = reference_eval_config(reference, request.dataset, request.source_path)
        trained_on = reference.options.get("dataset")
        values["eval_normalize"] = bool(request.normalize)
        if request.normalize is None:
            request.report("embeddings are not L2-normalised, as in the reference's eval.py (--normal does)")

        def load(model: nn.Module) -> None:
            load_reference_weights(model, reference.state_dict, values["arch"])

    if trained_on and values["dataset"] != trained_on:
        request.report(f"evaluating on {values['dataset']} (the checkpoint was trained on {trained_on})")
    return values, load


def evaluate_checkpoint(request: CheckpointEvaluation) -> dict[str, float]:
    """Rebuild a checkpoint's model and test data and evaluate them (eval.py).

    A checkpoint of this project brings its resolved configuration; one of the reference implementation
    brings its architecture name and embedding size (`compat.checkpoint`). `request.report` gets
    one line saying which kind was read (and any setting the request changed).
    """
    from architectures import build_model, input_spec_for
    from datasets import build_datasets
    from engine.checkpoint import resolve_checkpoint_path
    from engine.runtime import resolve_device
    from metrics import canonical_metric_name
    from utilities.config import config_from_dict

    path = resolve_checkpoint_path(request.checkpoint)
    values, load_weights = _checkpoint_setup(request, path)
    if request.metrics:
        values["evaluation_metrics"] = [canonical_metric_name(m) for m in request.metrics]
        values["best_metric"] = values["evaluation_metrics"][0]
    if request.gpu is not None:
        values["gpu"] = request.gpu
    if request.batch_size is not None:
        values["eval_batch_size"] = request.batch_size
    cfg = config_from_dict(values, f"checkpoint {path}")
    torch_device = resolve_device(request.device, cfg.gpu)
    model = build_model(cfg)
    load_weights(model)
    model.to(torch_device)
    if torch_device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    splits = build_datasets(cfg, input_spec_for(cfg.arch))
    embedded = embed_splits(
        model,
        splits,
        evaluation_splits(splits, use_val=False),
        device=torch_device,
        batch_size=cfg.eval_batch_size,
        workers=request.workers if request.workers is not None else min(cfg.kernels, 4),
        normalize=cfg.eval_normalize,
    )
    if request.save_embeddings:
        write_embeddings(request.save_embeddings, embedded)
    if request.show > 0 and request.show_path:
        from engine.grids import write_worst_queries

        written = write_worst_queries(embedded, splits, request.show_path, n=request.show)
        request.report(f"worst queries drawn to {written}" if written else "no query could be scored; no picture")
    if request.search_on_cpu:
        embedded = {name: (embeddings.cpu(), labels) for name, (embeddings, labels) in embedded.items()}
    return evaluate_embeddings(embedded, cfg.evaluation_metrics, request.backend, same_item_indices(splits))
