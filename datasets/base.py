"""The image dataset every split is served by, plus the plain (paths, labels) record the loaders return.

Loaders of the benchmarks only read folder layouts and annotation files and return `SplitFiles`; the
transform and the tensor conversion live in `ImageDataset`, so the same loader code serves training,
evaluation and the dry run (which never decodes an image unless asked to).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from PIL import Image

from utilities.errors import UserError


@dataclass
class SplitFiles:
    """Image paths and their labels (0..K-1, in sorted class order) of one split."""

    paths: list[str]
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    @property
    def num_classes(self) -> int:
        return int(np.unique(self.labels).size)


def relabel(keys: Sequence[Any]) -> np.ndarray:
    """Map class keys to 0..K-1 following the sorted order of the distinct keys."""
    order = {key: index for index, key in enumerate(sorted(set(keys)))}
    return np.fromiter((order[key] for key in keys), dtype=np.int64, count=len(keys))


def load_rgb(path: str) -> Image.Image:
    """Open and fully decode an image as RGB; a missing or corrupt file is a `UserError` naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UserError(f"cannot read image {path}: {error}") from None


JPEG_MAGIC = b"\xff\xd8\xff"


def load_rgb_uint8(path: str) -> torch.Tensor:
    """Decode an image to a 3 x H x W uint8 RGB tensor: JPEGs with torchvision (libjpeg-turbo, the same
    pixels as PIL's decoder, ~1.3x faster), anything else through `load_rgb`.

    A JPEG that torchvision refuses (truncated, corrupt, an unusual colour space) is handed to PIL, which
    either decodes it like the `pil` path or raises the `UserError` naming the file.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise UserError(f"cannot read image {path}: {error}") from None
    if data[:3] == JPEG_MAGIC:
        try:
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:
            pass
    image = load_rgb(path)
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


IMAGE_LOADERS: Mapping[str, Callable[[str], Any]] = MappingProxyType({"pil": load_rgb, "torchvision": load_rgb_uint8})
"""How `ImageDataset` decodes a file, by the `decoder` its transform declares (PIL image or uint8 tensor)."""


class ImageDataset:
    """Map-style dataset over image files: item i is `(transform(image_i), label_i, i)`.

    The index is returned so that the training loop and the evaluation can refer back to `paths[i]`.
    `transform` may be replaced after construction (e.g. an evaluation pass over the training images). Its
    `decoder` attribute (see `datasets.transforms.ImagePipeline`) selects the image loader: `pil` (a PIL
    image, also for transforms without the attribute) or `torchvision` (a uint8 tensor).
    """

    def __init__(
        self,
        paths: list[str],
        labels: list[int] | np.ndarray,
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        self.paths = [str(path) for path in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.ndim != 1 or len(self.labels) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but labels of shape {self.labels.shape}")
        self.num_classes = int(np.unique(self.labels).size)
        self.transform = transform

    @classmethod
    def from_split(cls, files: SplitFiles, transform: Callable[[Image.Image], Any] | None = None) -> ImageDataset:
        return cls(files.paths, files.labels, transform)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        loader = IMAGE_LOADERS.get(getattr(self.transform, "decoder", "pil"), load_rgb)
        image = loader(self.paths[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index]), int(index)

    def __repr__(self) -> str:
        return f"ImageDataset(images={len(self)}, classes={self.num_classes})"
