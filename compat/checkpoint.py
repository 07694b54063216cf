"""Checkpoints written by the reference implementation (``Noahsark/DADA``), for evaluation.

Such a file (e.g. the authors' released ``checkpoint_cub_embeds_e_recall@1.pth.tar``) is a pickled dict:
``state_dict`` (the network), ``opt`` (the options namespace: ``arch``, ``embed_dim``, ``dataset``, ...),
``progress`` and ``aux`` (objects of the reference's own classes, data loaders included), ``proxy`` and
``saved_batch_mix``. It is read with `load_restricted` (nothing in it is executed), and its options become
this project's evaluation configuration: the architecture flags of ``opt.arch`` (docs/reference.md §2), ``embed_dim``,
the dataset, and the reference's evaluation transforms (PIL, Resize(256), CenterCrop(224), ImageNet
normalisation).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compat.options import translate_arch
from compat.unpickler import RestrictedLoad
from datasets.build import has_query_gallery
from datasets.settings import DEFAULT_SOURCE_PATH
from metrics.names import REFERENCE_INSHOP_METRICS
from utilities.errors import UserError

# The reference eval.py's default metrics. In-Shop: the reference's training-time In-Shop report
# (REFERENCE_INSHOP_METRICS: recall@1/10/20/30/40/50 and its top-50 MAP), computed by this project's exact search.
REFERENCE_EVAL_METRICS = ["recall@1", "recall@2", "recall@4", "recall@10", "f1", "map@r_legacy"]


@dataclass
class ReferenceCheckpoint:
    """The network weights and the options of a reference checkpoint."""

    state_dict: dict[str, torch.Tensor]
    options: dict[str, Any]
    placeholders: list[str]

    def describe(self, path: str | Path) -> str:
        objects = f"; not rebuilt: {', '.join(self.placeholders)}" if self.placeholders else ""
        return (
            f"{path}: a checkpoint of the reference implementation (arch {self.options.get('arch')}, embed_dim "
            f"{self.options.get('embed_dim')}, dataset {self.options.get('dataset')}), read without executing "
            f"its pickled objects{objects}"
        )


def reference_checkpoint(path: str | Path, loaded: RestrictedLoad) -> ReferenceCheckpoint:
    """Check the pieces of a restricted load that evaluation needs: tensors and an options namespace."""
    obj = loaded.obj
    if not isinstance(obj["opt"], argparse.Namespace):
        raise UserError(f"{path}: 'opt' is not an options namespace; not a checkpoint of the reference?")
    state = obj["state_dict"]
    if not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{path}: 'state_dict' does not hold named tensors")
    options = vars(obj["opt"])
    for key in ("arch", "embed_dim"):
        if key not in options:
            raise UserError(f"{path}: the options namespace has no '{key}'")
    return ReferenceCheckpoint(dict(state), options, loaded.placeholders)


def reference_eval_config(
    checkpoint: ReferenceCheckpoint, dataset: str | None, source_path: str | None
) -> dict[str, Any]:
    """Configuration keys that rebuild the reference network and its evaluation data.

    The metrics are the reference eval.py's defaults: its In-Shop list where the data is evaluated query ->
    gallery (In-Shop; folder and csv data with query and gallery splits), else its general list.

    `dataset` (``--dataset``) is used when the checkpoint does not name one; `source_path` defaults to the
    checkpoint's own data root (the reference appends ``/<dataset>`` to it; that suffix is removed).
    """
    options = checkpoint.options
    dataset = dataset or options.get("dataset")
    if not dataset:
        raise UserError("the checkpoint does not say which dataset it was trained on: pass --dataset")
    values = {
        **translate_arch(str(options["arch"])),
        "embed_dim": int(options["embed_dim"]),
        "dataset": dataset,
        "pretrained": False,
        "augmentation": "base",
        "resolution": 224,
        "image_decoder": "pil",
    }
    if source_path is None and isinstance(options.get("source_path"), str):
        stored = options["source_path"]
        source_path = stored.removesuffix(f"/{options.get('dataset')}") if options.get("dataset") else stored
    if source_path is not None:
        values["source_path"] = source_path
    query_gallery = has_query_gallery(dataset, source_path if source_path is not None else DEFAULT_SOURCE_PATH)
    values["evaluation_metrics"] = list(REFERENCE_INSHOP_METRICS if query_gallery else REFERENCE_EVAL_METRICS)
    values["best_metric"] = values["evaluation_metrics"][0]
    return values
