"""The configuration keys of the data, declared once with their default, help and bounds
(`utilities.settings`); the dataset registry's entries check the keys that only they read."""

from __future__ import annotations

from dataclasses import dataclass

from utilities.errors import UserError
from utilities.settings import setting

DEFAULT_SOURCE_PATH = "data"


# The registries are read when a value is checked or --help is shown: importing the keys does not import the
# pipelines (torchvision).
def _datasets() -> tuple[str, ...]:
    from datasets.build import DATASETS

    return tuple(DATASETS)


def _augmentations() -> tuple[str, ...]:
    from datasets.transforms import AUGMENTATIONS

    return tuple(AUGMENTATIONS)


def _decoders() -> tuple[str, ...]:
    from datasets.transforms import DECODERS

    return tuple(DECODERS)


def _samplers() -> tuple[str, ...]:
    from datasets.samplers import SAMPLERS

    return tuple(SAMPLERS)


@dataclass
class DataSettings:
    """Which images, how they are read, augmented and batched."""

    dataset: str = setting(
        "synthetic",
        "data to train on: a benchmark, the synthetic set, or your own images (folder: class folders; csv: a manifest)",
        _datasets,
    )
    source_path: str = setting(
        DEFAULT_SOURCE_PATH,
        "root folder of the benchmarks (the dataset name is appended); folder: the image folder; csv: the file",
    )
    augmentation: str = setting("base", "training augmentation", _augmentations)
    image_decoder: str = setting("torchvision", "image decoding: uint8 tensors (faster) or PIL", _decoders)
    resolution: int = setting(224, "crop size of training and evaluation images", at_least=1)
    batch_size: int = setting(90, "images per (global) training batch", at_least=1)
    samples_per_class: int = setting(2, "images per class draw in a batch", at_least=1)
    data_sampler: str = setting("class_random", "batch sampler", _samplers)
    iterations_per_epoch: int = setting(0, "batches per epoch; 0: floor(train images / batch_size)", at_least=0)
    val_classes: float = setting(
        0.0,
        "fraction of training classes held out as a validation split (0: none)",
        at_least=0.0,
        less_than=1.0,
        what="a fraction",
    )
    test_classes: float = setting(
        0.5,
        "folder data without train/: fraction of the classes (sorted last) that test",
        more_than=0.0,
        less_than=1.0,
        what="a fraction",
    )
    eval_batch_size: int = setting(128, "images per batch when embedding evaluation images", at_least=1)
    synthetic_classes: int = setting(32, "synthetic benchmark: number of classes (half train, half test)", at_least=1)
    synthetic_images_per_class: int = setting(40, "synthetic benchmark: images per class", at_least=1)
    synthetic_image_size: int = setting(64, "synthetic benchmark: side of the generated images in pixels", at_least=1)


def check_data(cfg: DataSettings) -> None:
    """Batches of whole class draws, and the chosen dataset's own check of the keys it reads."""
    from datasets.build import DATASETS

    if cfg.batch_size % cfg.samples_per_class:
        raise UserError(
            f"key 'batch_size' ({cfg.batch_size}) must be divisible by samples_per_class ({cfg.samples_per_class})"
        )
    spec = DATASETS[cfg.dataset]
    if spec.check is not None:
        spec.check(cfg)
