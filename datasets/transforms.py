"""Training and evaluation image pipelines (docs/reference.md §3.4): PIL images, or uint8 tensors decoded by
torchvision.

Sizes follow the reference at `resolution = 224`: training crops `resolution` pixels (`big`: the eval
resize size, 256 at 224); evaluation resizes the shorter side to round(resolution * 256 / 224) and
centre-crops `resolution` (`big`: centre-crops the resize size). Then ToTensor and the backbone's
`Normalization` (BN-Inception also flips RGB to BGR after normalising, docs/reference.md §2.2).

| name | training pipeline (before ToTensor/Normalize) |
|------|------------------------------------------------|
| base | RandomResizedCrop(crop) -> RandomHorizontalFlip |
| auto | AutoAugment(ImageNet policy) -> RandomResizedCrop(crop) -> RandomHorizontalFlip |
| big  | as base, crop = round(resolution * 256 / 224) |
| adv  | RandomResizedCrop -> RandomGrayscale(0.2) -> ColorJitter(0.2, 0.2, 0.2, 0.2) -> RandomHorizontalFlip |
| v2   | RandomResizedCrop -> RandomPerspective(0.5, 0.5) -> RandomGrayscale(0.2) -> ColorJitter(0.2 x4) -> Flip |

Two implementations of the same pipelines, chosen by `decoder` (config key `image_decoder`):

* `pil`: the plain torchvision-PIL pipeline (PIL resampling, `ToTensor`, `Normalize`).
* `torchvision` (default, ~1.5x more training images per core on 500x375 JPEGs, `benchmarks/data_speed.py`): the
  dataset decodes JPEGs with `torchvision.io.decode_jpeg` (same libjpeg-turbo, bit-identical pixels to PIL) to
  a uint8 tensor; the crop/resize runs on uint8 with torch's antialiased bilinear kernel (a port of PIL's),
  and the only float work is the final normalisation. Random crops and flips draw the same numbers from the
  same global torch generator as the PIL pipeline (`RandomResizedCropUint8` inherits `get_params`), so one
  seed gives the same crop box and flip in both; the pixels differ only by resampling rounding (<= a few
  levels of 255). The other random steps (AutoAugment, ColorJitter, ...) are torchvision's own classes,
  which accept tensors.

The returned `ImagePipeline` carries its `decoder`, which tells `ImageDataset` how to decode the file; it also
accepts a PIL image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as F
from torchvision.transforms.v2 import functional as F2

from architectures.normalization import BNINCEPTION, IMAGENET, Normalization  # noqa: F401 - the pipelines apply them
from utilities.errors import UserError


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


AUGMENTATIONS: Mapping[str, Callable[[int], list[Callable]]] = MappingProxyType(
    {
        "base": _base,
        "auto": _auto,
        "big": _big,
        "adv": _adv,
        "v2": _v2,
    }
)
"""Training-pipeline builders by `augmentation` name; each takes the resolution (crop size)."""


def eval_crop(augmentation: str, resolution: int) -> int:
    """Centre-crop size of the evaluation pipeline (`big` keeps the whole resized square)."""
    return eval_resize(resolution) if augmentation == "big" else resolution


def _to_normalized_tensor(normalization: Normalization) -> list[Callable]:
    steps: list[Callable] = [T.ToTensor(), T.Normalize(normalization.mean, normalization.std)]
    if normalization.bgr:
        steps.append(RGBToBGR())
    return steps


# --- the uint8 tensor pipeline (decoder "torchvision") ---------------------------------------------------


class ToUint8Tensor:
    """PIL image -> 3 x H x W uint8 tensor; a uint8 tensor (as `ImageDataset` decodes it) passes through."""

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            return image
        return F.pil_to_tensor(image if image.mode == "RGB" else image.convert("RGB"))

    def __repr__(self) -> str:
        return "ToUint8Tensor()"


class RandomResizedCropUint8(T.RandomResizedCrop):
    """`T.RandomResizedCrop` on uint8 tensors through the fast antialiased uint8 resize of the v2 kernels.

    `get_params` is inherited, so the crop box is drawn with exactly the same calls to the global torch
    generator (same distribution of scale and ratio, same box for the same seed) as the PIL pipeline.
    """

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        top, left, height, width = self.get_params(image, self.scale, self.ratio)
        return F2.resized_crop(image, top, left, height, width, self.size, self.interpolation, antialias=True)


class ResizeUint8(T.Resize):
    """`T.Resize` (shorter side) on uint8 tensors through the fast antialiased uint8 resize."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F2.resize(image, self.size, self.interpolation, self.max_size, antialias=True)


class NormalizeUint8:
    """uint8 tensor -> (x / 255 - mean) / std as a contiguous float32 tensor (then BGR if asked), in two ops."""

    def __init__(self, normalization: Normalization) -> None:
        self.normalization = normalization
        self.shift = torch.tensor(normalization.mean).view(3, 1, 1) * 255.0
        self.scale = torch.tensor(normalization.std).view(3, 1, 1) * 255.0

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        out = image.to(torch.float32, memory_format=torch.contiguous_format).sub_(self.shift).div_(self.scale)
        return out.flip(0) if self.normalization.bgr else out

    def __repr__(self) -> str:
        return f"NormalizeUint8({self.normalization})"


def _uint8_step(step: Callable) -> Callable:
    """The uint8-tensor version of a PIL pipeline step (same parameters); other steps accept tensors as is."""
    if type(step) is T.RandomResizedCrop:
        return RandomResizedCropUint8(step.size, step.scale, step.ratio, step.interpolation)
    if type(step) is T.Resize:
        return ResizeUint8(step.size, step.interpolation, step.max_size)
    return step


DECODERS = ("torchvision", "pil")
"""Values of `image_decoder`; the first is the default (the faster one)."""


class ImagePipeline:
    """A transform plus the decoder it expects: `ImageDataset` decodes files as `decoder` says."""

    def __init__(self, steps: list[Callable], decoder: str) -> None:
        self.decoder = decoder
        self.steps = T.Compose(steps)

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        return self.steps(image)

    def __repr__(self) -> str:
        return f"ImagePipeline(decoder={self.decoder!r}, {self.steps!r})"


def build_transform(
    augmentation: str,
    train: bool,
    resolution: int,
    normalization: Normalization = IMAGENET,
    decoder: str = DECODERS[0],
) -> ImagePipeline:
    """Image -> normalised float tensor (3 x crop x crop) for training (`train=True`) or evaluation.

    `decoder` `pil` takes PIL images; `torchvision` takes uint8 tensors (or PIL images) and is faster.
    """
    if augmentation not in AUGMENTATIONS:
        raise UserError(f"augmentation: unknown name {augmentation!r}; valid: {', '.join(AUGMENTATIONS)}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8:
        raise UserError(f"resolution: expected an integer crop size >= 8, got {resolution!r}")
    if decoder not in DECODERS:
        raise UserError(f"image_decoder: unknown name {decoder!r}; valid: {', '.join(DECODERS)}")
    if train:
        geometry = AUGMENTATIONS[augmentation](resolution)
    else:
        geometry = [T.Resize(eval_resize(resolution)), T.CenterCrop(eval_crop(augmentation, resolution))]
    if decoder == "pil":
        return ImagePipeline([*geometry, *_to_normalized_tensor(normalization)], decoder)
    return ImagePipeline([ToUint8Tensor(), *map(_uint8_step, geometry), NormalizeUint8(normalization)], decoder)
