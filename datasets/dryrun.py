"""Dry-run helpers: a JSON-ready summary of the splits and a full decode check of every image.

`main.py --dry_run` prints `describe(...)`; `--check_images` additionally reports `check_images(...)`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from datasets.base import ImageDataset


def describe(splits: dict[str, ImageDataset], dataset: str, samples_per_class: int | None = None) -> dict:
    """`{"dataset": name, "splits": {split: {"classes": C, "images": N}}}` in the order of `splits`.

    With `samples_per_class`, the train split also gets `"small_classes"`: the number of its classes with fewer
    images than that (the samplers draw their images with replacement), only where it is not zero.

    >>> describe({"train": ImageDataset(["a.jpg", "b.jpg"], [0, 1], None)}, "cub200", samples_per_class=2)
    {'dataset': 'cub200', 'splits': {'train': {'classes': 2, 'images': 2, 'small_classes': 2}}}
    """
    summary = {name: {"classes": int(ds.num_classes), "images": len(ds)} for name, ds in splits.items()}
    if samples_per_class is not None and "train" in splits:
        small = count_small_classes(splits["train"].labels, samples_per_class)
        if small:
            summary["train"]["small_classes"] = small
    return {"dataset": dataset, "splits": summary}


def count_small_classes(labels: np.ndarray, samples_per_class: int) -> int:
    """How many classes have fewer than `samples_per_class` images."""
    counts = np.unique(labels, return_counts=True)[1]
    return int(np.sum(counts < samples_per_class))


def _decode_error(path: str) -> str | None:
    try:
        with Image.open(path) as image:
            image.convert("RGB")
    except Exception as error:  # any decoder failure is a finding to report, not a crash
        return f"{path}: {type(error).__name__}: {error}"
    return None


def check_images(splits: dict[str, ImageDataset], workers: int = 0) -> list[str]:
    """Open and fully decode every image of every split; `"path: error"` for each one that fails.

    Paths shared by several splits are checked once. `workers > 0` decodes in that many threads (PIL
    releases the GIL while decoding).
    """
    paths = list(dict.fromkeys(path for ds in splits.values() for path in ds.paths))
    if workers > 0:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_decode_error, paths, chunksize=64))
    else:
        results = [_decode_error(path) for path in paths]
    return [message for message in results if message is not None]
