"""Datasets: the four DML benchmarks, a synthetic benchmark, your own images (`folder`, `csv`), transforms and
batch samplers.

Entry point: `build_datasets(cfg, normalization)` -> {"train", "test" | "query", "gallery", ["val"]}.
Each dataset module's docstring describes the folder layouts (or the manifest) it accepts.
"""

import importlib
from typing import Any

# name -> module; imported on first use, so reading the configuration keys (datasets.settings) does not
# import torchvision and the dataset loaders (eval.py on saved embeddings never needs them)
_EXPORTS = {
    "ImageDataset": "datasets.base",
    "SplitFiles": "datasets.base",
    "DATASETS": "datasets.build",
    "build_datasets": "datasets.build",
    "split_validation": "datasets.build",
    "check_images": "datasets.dryrun",
    "describe": "datasets.dryrun",
    "SAMPLERS": "datasets.samplers",
    "ClassRandomBatchSampler": "datasets.samplers",
    "MPerClassBatchSampler": "datasets.samplers",
    "build_batch_sampler": "datasets.samplers",
    "ensure_synthetic": "datasets.synthetic",
    "AUGMENTATIONS": "datasets.transforms",
    "BNINCEPTION": "datasets.transforms",
    "IMAGENET": "datasets.transforms",
    "Normalization": "datasets.transforms",
    "build_transform": "datasets.transforms",
}

__all__ = [
    "AUGMENTATIONS",
    "BNINCEPTION",
    "DATASETS",
    "IMAGENET",
    "SAMPLERS",
    "ClassRandomBatchSampler",
    "ImageDataset",
    "MPerClassBatchSampler",
    "Normalization",
    "SplitFiles",
    "build_batch_sampler",
    "build_datasets",
    "build_transform",
    "check_images",
    "describe",
    "ensure_synthetic",
    "split_validation",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'datasets' has no attribute {name!r}")
