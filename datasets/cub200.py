"""CUB-200-2011 (`dataset: cub200`).

Accepted layouts, `DIR` being `source_path` (the first one found wins):

1. pre-arranged (the reference implementation's):
   `DIR/cub200/images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg`
   ... `DIR/cub200/images/200.Common_Yellowthroat/*.jpg`
2. the official archive `CUB_200_2011.tgz` unpacked inside `DIR/cub200/`:
   `DIR/cub200/CUB_200_2011/images/001.Black_footed_Albatross/*.jpg` (its other files are ignored).

Split (as the reference): class folders sorted by the integer before the first '.', the first half
(classes 1-100, 5,864 images) is `train`, the second half (101-200, 5,924 images) is `test`. Images are
sorted by file name within a class; names containing `._` (macOS forks) and non-image files are skipped.
Labels are 0..99 in each split. The synthetic benchmark uses the same layout and loader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datasets.base import SplitFiles
from datasets.layout import first_existing, list_class_folders, list_images
from utilities.errors import UserError


def class_number(folder_name: str, images_dir: Path, dataset: str) -> int:
    """The integer before the first '.' of a class folder name (`017.Cardinal` -> 17)."""
    prefix = folder_name.split(".", 1)[0]
    if not prefix.isdigit():
        raise UserError(
            f"{dataset}: class folder {images_dir / folder_name} must be named NNN.<name> "
            "(a number, a dot, the class name)"
        )
    return int(prefix)


def load_numbered_class_folders(images_dir: Path, dataset: str) -> dict[str, SplitFiles]:
    """Split `images_dir/NNN.name/*` by class number: first half of the classes train, the rest test."""
    folders = list_class_folders(images_dir)
    folders.sort(key=lambda name: class_number(name, images_dir, dataset))
    if len(folders) < 2:
        raise UserError(f"{dataset}: expected at least 2 class folders NNN.<name> under {images_dir}")
    half = len(folders) // 2
    return {
        "train": _collect(images_dir, folders[:half], dataset),
        "test": _collect(images_dir, folders[half:], dataset),
    }


def _collect(images_dir: Path, folders: list[str], dataset: str) -> SplitFiles:
    paths: list[str] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        names = list_images(images_dir / folder)
        if not names:
            raise UserError(f"{dataset}: class folder {images_dir / folder} holds no image files")
        paths.extend(str(images_dir / folder / name) for name in names)
        labels.extend([label] * len(names))
    return SplitFiles(paths, np.asarray(labels, dtype=np.int64))


def load_cub200(folder: Path) -> dict[str, SplitFiles]:
    """Train/test files of CUB-200-2011 found under `folder` (= `source_path/cub200`)."""
    candidates = [folder / "images", folder / "CUB_200_2011" / "images"]
    images_dir = first_existing(candidates)
    if images_dir is None:
        raise UserError(
            f"cub200: expected class folders under {candidates[0]} or {candidates[1]} "
            "(e.g. 001.Black_footed_Albatross/*.jpg)"
        )
    return load_numbered_class_folders(images_dir, "cub200")
