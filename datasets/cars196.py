"""Stanford Cars / CARS196 (`dataset: cars196`).

Accepted layouts, `DIR` being `source_path` (checked in this order, the first one found wins):

1. pre-arranged, one folder per class (the reference implementation's):
   `DIR/cars196/images/<class name>/*.jpg`, e.g. `DIR/cars196/images/Acura Integra Type R 2001/00128.jpg`.
   Split as the reference: class folders sorted lexicographically by Python string order
   (case-sensitive), the first half (98 classes, about 8,054 images) is `train`, the rest (98 classes,
   about 8,131 images) `test`. This equals the official split (class ids 1-98 / 99-196) only if the folder
   names sort in class-id order around the boundary; check your copy, or use layout 2.
2. the Stanford devkit form: `DIR/cars196/car_ims/000001.jpg ...` and `DIR/cars196/cars_annos.mat`
   (MATLAB struct array `annotations` with fields `relative_im_path` such as `car_ims/000001.jpg`,
   `class` = official class id 1..196, the bounding box and `test`, which is ignored). Split by official
   class id: 1-98 `train` (8,054 images), 99-196 `test` (8,131 images). Images are ordered by class id,
   then by path.

Images are sorted by file name within a class; names containing `._` (macOS forks) and non-image files
are skipped. Labels are 0..97 in each split, in sorted class order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from datasets.base import SplitFiles, relabel
from datasets.layout import check_files_exist, is_hidden_fork, list_class_folders, list_images
from utilities.errors import UserError

LAST_TRAIN_CLASS_ID = 98
"""Official class ids 1..98 are the training classes, 99..196 the test classes."""


def load_cars196(folder: Path) -> dict[str, SplitFiles]:
    """Train/test files of CARS196 found under `folder` (= `source_path/cars196`)."""
    if (folder / "images").is_dir():
        return _load_class_folders(folder / "images")
    if (folder / "car_ims").is_dir() and (folder / "cars_annos.mat").is_file():
        return _load_devkit(folder / "cars_annos.mat", folder)
    raise UserError(
        f"cars196: expected class folders under {folder / 'images'} or the devkit form "
        f"{folder / 'car_ims'}/*.jpg with {folder / 'cars_annos.mat'}"
    )


def _load_class_folders(images_dir: Path) -> dict[str, SplitFiles]:
    folders = sorted(list_class_folders(images_dir))  # plain str order, as the reference
    if len(folders) < 2:
        raise UserError(f"cars196: expected at least 2 class folders under {images_dir}")
    half = len(folders) // 2
    return {
        "train": _collect(images_dir, folders[:half]),
        "test": _collect(images_dir, folders[half:]),
    }


def _collect(images_dir: Path, folders: list[str]) -> SplitFiles:
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(folders):
        files = list_images(images_dir / name)
        if not files:
            raise UserError(f"cars196: class folder {images_dir / name} holds no image files")
        paths.extend(str(images_dir / name / file) for file in files)
        labels.extend([label] * len(files))
    return SplitFiles(paths, np.asarray(labels, dtype=np.int64))


def read_cars_annotations(mat_path: Path) -> list[tuple[str, int]]:
    """`(relative_im_path, official class id)` of every annotation in a devkit `cars_annos.mat`."""
    try:
        annotations = scipy.io.loadmat(str(mat_path), squeeze_me=True)["annotations"]
        records = np.atleast_1d(annotations)
        return [(str(record["relative_im_path"]), int(record["class"])) for record in records]
    except (KeyError, ValueError, TypeError, IndexError, OSError) as error:
        raise UserError(
            f"cars196: cannot read {mat_path}: expected a struct array 'annotations' with fields "
            f"'relative_im_path' and 'class' ({type(error).__name__}: {error})"
        ) from None


def _load_devkit(mat_path: Path, folder: Path) -> dict[str, SplitFiles]:
    entries = [(cid, rel) for rel, cid in read_cars_annotations(mat_path) if not is_hidden_fork(rel)]
    if not entries:
        raise UserError(f"cars196: {mat_path} lists no images")
    entries.sort()
    splits: dict[str, SplitFiles] = {}
    for split, is_train in (("train", True), ("test", False)):
        chosen = [(cid, rel) for cid, rel in entries if (cid <= LAST_TRAIN_CLASS_ID) == is_train]
        if not chosen:
            raise UserError(f"cars196: {mat_path} has no images of the {split} classes")
        paths = [str(folder / rel) for _, rel in chosen]
        splits[split] = SplitFiles(paths, relabel([cid for cid, _ in chosen]))
    check_files_exist(splits["train"].paths + splits["test"].paths, "cars196", mat_path)
    return splits
