"""The dataset registry and `build_datasets(cfg)`: folder -> splits -> `ImageDataset`s with transforms."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets.base import ImageDataset, SplitFiles
from datasets.cars196 import load_cars196
from datasets.cub200 import load_cub200
from datasets.folder import folder_has_query_gallery, load_folder
from datasets.inshop import load_inshop
from datasets.manifest import load_csv, manifest_has_query_gallery
from datasets.online_products import load_online_products
from datasets.synthetic import ensure_synthetic, load_synthetic
from datasets.transforms import IMAGENET, Normalization, build_transform
from utilities.errors import UserError

DATASETS: dict[str, Callable[..., dict[str, SplitFiles]]] = {
    "cub200": load_cub200,
    "cars196": load_cars196,
    "online_products": load_online_products,
    "inshop": load_inshop,
    "synthetic": load_synthetic,
    "folder": load_folder,
    "csv": load_csv,
}
"""Loaders by `dataset` name; each reads `<source_path>/<name>/` (the user datasets: `source_path` itself) and
returns its splits' files."""

USER_DATASETS = ("folder", "csv")
"""Datasets whose `source_path` is the data itself (a folder of class folders, a CSV manifest)."""

LOADER_KEYS: dict[str, tuple[str, ...]] = {"folder": ("test_classes",)}
"""Configuration keys handed to a loader as keyword arguments, by `dataset` name."""

QUERY_GALLERY_PROBES: dict[str, Callable[[Path], bool]] = {
    "inshop": lambda _: True,
    "folder": folder_has_query_gallery,
    "csv": manifest_has_query_gallery,
}
"""Whether a dataset's evaluation splits are query and gallery, from its `source_path` (absent: never)."""


def has_query_gallery(dataset: str, source_path: str | Path) -> bool:
    """Whether `dataset` at `source_path` is evaluated query -> gallery (In-Shop; folder and csv data that
    define query and gallery splits). Unreadable data answers False: its loader reports the problem."""
    probe = QUERY_GALLERY_PROBES.get(dataset)
    return probe is not None and probe(Path(source_path))


def split_validation(train: SplitFiles, fraction: float) -> tuple[SplitFiles, SplitFiles]:
    """Move the last `fraction` of the training classes (sorted order) to a validation split.

    At least one class moves and at least one stays; validation labels are re-indexed from 0.
    """
    n_classes = train.num_classes
    n_val = max(1, round(fraction * n_classes))
    if n_val >= n_classes:
        raise UserError(f"val_classes: {fraction} of {n_classes} training classes leaves no class for training")
    first_val = n_classes - n_val  # labels are 0..K-1 in sorted class order
    in_val = train.labels >= first_val
    keep = SplitFiles([p for p, v in zip(train.paths, in_val) if not v], train.labels[~in_val])
    val = SplitFiles([p for p, v in zip(train.paths, in_val) if v], train.labels[in_val] - first_val)
    return keep, val


def _check_val_fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise UserError(f"val_classes: expected a fraction in [0, 1), got {value!r}")
    return float(value)


def build_datasets(cfg: Any, normalization: Normalization = IMAGENET) -> dict[str, ImageDataset]:
    """Splits of `cfg.dataset` under `cfg.source_path`: train (training transform) and the others (eval).

    Reads `dataset`, `source_path`, `augmentation`, `image_decoder`, `resolution`, `val_classes`, for the
    synthetic benchmark `seed`, `synthetic_classes`, `synthetic_images_per_class`, `synthetic_image_size`, and
    for `folder` `test_classes`. Returns {"train", "test"} ({"train", "query", "gallery"} for In-Shop and user
    data with query and gallery), plus "val" when `val_classes > 0`.
    """
    name = cfg.dataset
    if name not in DATASETS:
        raise UserError(f"dataset: unknown name {name!r}; valid: {', '.join(DATASETS)}")
    val_fraction = _check_val_fraction(cfg.val_classes)
    decoder = getattr(cfg, "image_decoder", "torchvision")
    train_transform = build_transform(cfg.augmentation, True, cfg.resolution, normalization, decoder)
    eval_transform = build_transform(cfg.augmentation, False, cfg.resolution, normalization, decoder)
    root = Path(cfg.source_path)
    if name == "synthetic":
        folder = ensure_synthetic(
            root, cfg.synthetic_classes, cfg.synthetic_images_per_class, cfg.synthetic_image_size, cfg.seed
        )
    elif name in USER_DATASETS:
        folder = root  # its loader names a missing folder or file
    else:
        folder = root / name
        if not folder.is_dir():
            raise UserError(f"{name}: data folder {folder} not found (source_path is {root})")
    files = DATASETS[name](folder, **{key: getattr(cfg, key) for key in LOADER_KEYS.get(name, ())})
    if val_fraction > 0:
        files["train"], files["val"] = split_validation(files["train"], val_fraction)
    return {
        split: ImageDataset.from_split(split_files, train_transform if split == "train" else eval_transform)
        for split, split_files in files.items()
    }
