"""Datasets: the four DML benchmarks, a synthetic benchmark, your own images (`folder`, `csv`), transforms and
batch samplers.

Entry point: `build_datasets(cfg, normalization)` -> {"train", "test" | "query", "gallery", ["val"]}.
Each dataset module's docstring describes the folder layouts (or the manifest) it accepts.
"""

from typing import Any

# imported on first use, so that reading the configuration keys (datasets.settings) does not import torchvision
# and the dataset loaders (eval.py on saved embeddings never needs them)
_BASE = ("ImageDataset", "SplitFiles")
_BUILD = ("DATASETS", "build_datasets", "split_validation")
_DRYRUN = ("check_images", "describe")
_SAMPLERS = ("SAMPLERS", "ClassRandomBatchSampler", "MPerClassBatchSampler", "build_batch_sampler")
_TRANSFORMS = ("AUGMENTATIONS", "BNINCEPTION", "IMAGENET", "Normalization", "build_transform")

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
    if name in _BASE:
        from datasets import base as module
    elif name in _BUILD:
        from datasets import build as module
    elif name in _DRYRUN:
        from datasets import dryrun as module
    elif name in _SAMPLERS:
        from datasets import samplers as module
    elif name in _TRANSFORMS:
        from datasets import transforms as module
    elif name == "ensure_synthetic":
        from datasets import synthetic as module
    else:
        raise AttributeError(f"module 'datasets' has no attribute {name!r}")
    return getattr(module, name)
