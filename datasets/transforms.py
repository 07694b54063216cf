"""Training and evaluation image pipelines (spec §3.4), PIL + torchvision.

Sizes follow the reference at `resolution = 224`: training crops `resolution` pixels (`big`: the eval
resize size, 256 at 224); evaluation resizes the shorter side to round(resolution * 256 / 224) and
centre-crops `resolution` (`big`: centre-crops the resize size). Then ToTensor and the backbone's
`Normalization` (BN-Inception also flips RGB to BGR after normalising, spec §2.2).

| name | training pipeline (before ToTensor/Normalize) |
|------|------------------------------------------------|
| base | RandomResizedCrop(crop) -> RandomHorizontalFlip |
| auto | AutoAugment(ImageNet policy) -> RandomResizedCrop(crop) -> RandomHorizontalFlip |
| big  | as base, crop = round(resolution * 256 / 224) |
| adv  | RandomResizedCrop -> RandomGrayscale(0.2) -> ColorJitter(0.2, 0.2, 0.2, 0.2) -> RandomHorizontalFlip |
| v2   | RandomResizedCrop -> RandomPerspective(0.5, 0.5) -> RandomGrayscale(0.2) -> ColorJitter(0.2 x4) -> Flip |

Each step is built by a small function so that a faster decode/augment path can replace it later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision import transforms as T

from utilities.errors import UserError


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean/std applied to RGB tensors in [0, 1]; `bgr` flips the channels afterwards."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr: bool = False


IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
BNINCEPTION = Normalization((0.502, 0.4588, 0.4078), (0.0039, 0.0039, 0.0039), bgr=True)


class RGBToBGR:
    """Reverse the channel order of a C x H x W tensor (a class, not a lambda: workers pickle it)."""

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.flip(0)

    def __repr__(self) -> str:
        return "RGBToBGR()"


def eval_resize(resolution: int) -> int:
    """Shorter-side resize before the evaluation centre crop: 224 -> 256 as in the reference."""
    return round(resolution * 256 / 224)


def _random_crop_flip(crop: int) -> list[Callable]:
    return [T.RandomResizedCrop(crop), T.RandomHorizontalFlip(0.5)]


def _base(resolution: int) -> list[Callable]:
    return _random_crop_flip(resolution)


def _auto(resolution: int) -> list[Callable]:
    return [T.AutoAugment(T.AutoAugmentPolicy.IMAGENET), *_random_crop_flip(resolution)]


def _big(resolution: int) -> list[Callable]:
    return _random_crop_flip(eval_resize(resolution))


def _adv(resolution: int) -> list[Callable]:
    return [
        T.RandomResizedCrop(resolution),
        T.RandomGrayscale(0.2),
        T.ColorJitter(0.2, 0.2, 0.2, 0.2),
        T.RandomHorizontalFlip(0.5),
    ]


def _v2(resolution: int) -> list[Callable]:
    return [
        T.RandomResizedCrop(resolution),
        T.RandomPerspective(0.5, 0.5),
        T.RandomGrayscale(0.2),
        T.ColorJitter(0.2, 0.2, 0.2, 0.2),
        T.RandomHorizontalFlip(0.5),
    ]


AUGMENTATIONS: dict[str, Callable[[int], list[Callable]]] = {
    "base": _base,
    "auto": _auto,
    "big": _big,
    "adv": _adv,
    "v2": _v2,
}
"""Training-pipeline builders by `augmentation` name; each takes the resolution (crop size)."""


def eval_crop(augmentation: str, resolution: int) -> int:
    """Centre-crop size of the evaluation pipeline (`big` keeps the whole resized square)."""
    return eval_resize(resolution) if augmentation == "big" else resolution


def _to_normalized_tensor(normalization: Normalization) -> list[Callable]:
    steps: list[Callable] = [T.ToTensor(), T.Normalize(normalization.mean, normalization.std)]
    if normalization.bgr:
        steps.append(RGBToBGR())
    return steps


def build_transform(
    augmentation: str, train: bool, resolution: int, normalization: Normalization = IMAGENET
) -> Callable:
    """PIL image -> normalised float tensor (3 x crop x crop) for training (`train=True`) or evaluation."""
    if augmentation not in AUGMENTATIONS:
        raise UserError(f"augmentation: unknown name {augmentation!r}; valid: {', '.join(AUGMENTATIONS)}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8:
        raise UserError(f"resolution: expected an integer crop size >= 8, got {resolution!r}")
    if train:
        geometry = AUGMENTATIONS[augmentation](resolution)
    else:
        geometry = [T.Resize(eval_resize(resolution)), T.CenterCrop(eval_crop(augmentation, resolution))]
    return T.Compose([*geometry, *_to_normalized_tensor(normalization)])
