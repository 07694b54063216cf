"""Datasets: the four DML benchmarks, a synthetic benchmark, your own images (`folder`, `csv`), transforms and
batch samplers.

Entry point: `build_datasets(cfg, normalization)` -> {"train", "test" | "query", "gallery", ["val"]}.
Each dataset module's docstring describes the folder layouts (or the manifest) it accepts.
"""

from datasets.base import ImageDataset, SplitFiles
from datasets.build import DATASETS, build_datasets, split_validation
from datasets.dryrun import check_images, describe
from datasets.samplers import (
    SAMPLERS,
    ClassRandomBatchSampler,
    MPerClassBatchSampler,
    build_batch_sampler,
)
from datasets.synthetic import ensure_synthetic
from datasets.transforms import (
    AUGMENTATIONS,
    BNINCEPTION,
    IMAGENET,
    Normalization,
    build_transform,
)

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
