"""The dataset registry and `build_datasets(cfg)`: folder -> splits -> `ImageDataset`s with transforms."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

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

if TYPE_CHECKING:  # annotations only: the keys import this registry for their choices
    from datasets.settings import DataSettings


class DatasetInputs(Protocol):
    """What `build_datasets` and the registry's `prepare` read: data keys (`DataSettings`) and the run's
    `seed`, which the synthetic set is generated from. The configuration is one."""

    dataset: str
    source_path: str
    augmentation: str
    image_decoder: str
    resolution: int
    val_classes: float
    test_classes: float
    synthetic_classes: int
    synthetic_images_per_class: int
    synthetic_image_size: int
    seed: int


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: how its splits are read and how it is evaluated.

    `load(folder, **keys)` returns the splits' files; `keys` are the configuration keys handed to it.
    `source_is_data`: `source_path` is the data itself (a folder of class folders, a CSV manifest) instead of
    the root under which `<source_path>/<name>/` lives. `query_gallery(folder)` says whether its evaluation
    splits are query and gallery (In-Shop, user data that defines them); such data is evaluated query ->
    gallery and refuses clustering metrics; `query_gallery_name` is what messages call such data (empty:
    "<name> data with query and gallery splits"). `prepare(root, cfg)` makes the data first (the synthetic set).
    `check(cfg)` raises `UserError` for values of the keys only this dataset reads.
    """

    load: Callable[..., dict[str, SplitFiles]]
    description: str
    source_is_data: bool = False
    keys: tuple[str, ...] = ()
    query_gallery: Callable[[Path], bool] = lambda folder: False
    query_gallery_name: str = ""
    prepare: Callable[[Path, DatasetInputs], Path] | None = None
    check: Callable[[DataSettings], None] | None = None


def _check_synthetic(cfg: DataSettings) -> None:
    if cfg.synthetic_classes < 4:
        raise UserError("key 'synthetic_classes' must be at least 4 (half train, half test)")


def _make_synthetic(root: Path, cfg: DatasetInputs) -> Path:
    return ensure_synthetic(
        root, cfg.synthetic_classes, cfg.synthetic_images_per_class, cfg.synthetic_image_size, cfg.seed
    )


DATASETS: Mapping[str, DatasetSpec] = MappingProxyType(
    {
        "cub200": DatasetSpec(load_cub200, "CUB-200-2011: classes 1-100 train, 101-200 test"),
        "cars196": DatasetSpec(load_cars196, "CARS196: 98 classes train, 98 test"),
        "online_products": DatasetSpec(
            load_online_products, "Stanford Online Products: Ebay_train.txt / Ebay_test.txt"
        ),
        "inshop": DatasetSpec(
            load_inshop,
            "In-Shop: train items; query -> gallery test",
            query_gallery=lambda _: True,
            query_gallery_name="In-Shop",
        ),
        "synthetic": DatasetSpec(
            load_synthetic,
            "the generated 'synthetic birds' benchmark: half the classes train",
            prepare=_make_synthetic,
            check=_check_synthetic,
        ),
        "folder": DatasetSpec(
            load_folder,
            "your images: train/ + test/, train/ + query/ + gallery/, or class folders split by test_classes",
            source_is_data=True,
            keys=("test_classes",),
            query_gallery=folder_has_query_gallery,
        ),
        "csv": DatasetSpec(
            load_csv,
            "your images listed in an open-metric-learning manifest (label, path, split, is_query, is_gallery)",
            source_is_data=True,
            query_gallery=manifest_has_query_gallery,
        ),
    }
)
"""The dataset registry: `dataset` names and everything the rest of the code needs to know about each."""


def has_query_gallery(dataset: str, source_path: str | Path) -> bool:
    """Whether `dataset` at `source_path` is evaluated query -> gallery (In-Shop; folder and csv data that
    define query and gallery splits). Unreadable data answers False: its loader reports the problem."""
    spec = DATASETS.get(dataset)
    if spec is None:
        return False
    return spec.query_gallery(Path(source_path) if spec.source_is_data else Path(source_path) / dataset)


def query_gallery_name(dataset: str) -> str:
    """What messages call the query -> gallery data of `dataset` (In-Shop: "In-Shop")."""
    spec = DATASETS.get(dataset)
    return (spec.query_gallery_name if spec else "") or f"{dataset} data with query and gallery splits"


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


def build_datasets(cfg: DatasetInputs, normalization: Normalization = IMAGENET) -> dict[str, ImageDataset]:
    """Splits of `cfg.dataset` under `cfg.source_path`: train (training transform) and the others (eval).

    Returns {"train", "test"} ({"train", "query", "gallery"} for In-Shop and user data with query and gallery),
    plus "val" when `val_classes > 0`.
    """
    name = cfg.dataset
    if name not in DATASETS:
        raise UserError(f"dataset: unknown name {name!r}; valid: {', '.join(DATASETS)}")
    val_fraction = _check_val_fraction(cfg.val_classes)
    decoder = getattr(cfg, "image_decoder", "torchvision")
    train_transform = build_transform(cfg.augmentation, True, cfg.resolution, normalization, decoder)
    eval_transform = build_transform(cfg.augmentation, False, cfg.resolution, normalization, decoder)
    root = Path(cfg.source_path)
    spec = DATASETS[name]
    if spec.prepare is not None:
        folder = spec.prepare(root, cfg)
    elif spec.source_is_data:
        folder = root  # its loader names a missing folder or file
    else:
        folder = root / name
        if not folder.is_dir():
            raise UserError(f"{name}: data folder {folder} not found (source_path is {root})")
    files = spec.load(folder, **{key: getattr(cfg, key) for key in spec.keys})
    if val_fraction > 0:
        files["train"], files["val"] = split_validation(files["train"], val_fraction)
    return {
        split: ImageDataset.from_split(split_files, train_transform if split == "train" else eval_transform)
        for split, split_files in files.items()
    }
