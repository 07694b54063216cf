"""Dry-run helpers: a JSON-ready summary of the splits and a full decode check of every image.

`main.py --dry_run` prints `describe(...)`; `--check_images` additionally reports `check_images(...)`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from datasets.base import ImageDataset


def describe(splits: dict[str, ImageDataset], dataset: str) -> dict:
    """`{"dataset": name, "splits": {split: {"classes": C, "images": N}}}` in the order of `splits`.

    >>> describe({"train": ImageDataset(["a.jpg", "b.jpg"], [0, 1], None)}, "cub200")
    {'dataset': 'cub200', 'splits': {'train': {'classes': 2, 'images': 2}}}
    """
    return {
        "dataset": dataset,
        "splits": {name: {"classes": int(ds.num_classes), "images": len(ds)} for name, ds in splits.items()},
    }


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
