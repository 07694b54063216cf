"""A trained checkpoint put to use: load it once, embed images with the preprocessing its configuration implies.

    from config.checkpoints import load_model
    model = load_model("runs/cub200/test_cub200/checkpoints/best.pt")
    embeddings = model.embed(["a.jpg", "b.jpg"])  # N x D float32 tensor on the CPU, rows of unit L2 norm

The preprocessing is the evaluation pipeline of training (`datasets.transforms.build_transform(...,
train=False)`): shorter side resized to round(resolution * 256 / 224), centre crop of `resolution` (of the
resize size with `augmentation: big`), the backbone's mean/std (`architectures.input_spec_for`), BGR for
BN-Inception, decoded as the checkpoint's `image_decoder` says. The network runs in eval mode without
gradients, in batches, on the GPU when one is present.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from engine.forward import ForwardPolicy
from utilities.errors import UserError

ImageInput = str | Path | Image.Image


@dataclass(frozen=True)
class Preprocessing:
    """What an image goes through before the network (recorded in exported models too)."""

    resolution: int  # the `resolution` key of the configuration
    resize: int  # shorter side after the resize
    crop: int  # side of the centre crop (the network's input is crop x crop)
    mean: tuple[float, float, float]  # per channel, RGB order, of pixel values in [0, 1]
    std: tuple[float, float, float]
    channel_order: str  # "RGB", or "BGR" (channels flipped after normalising)
    interpolation: str = "bilinear (antialiased)"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class PreprocessingInputs(Protocol):
    """What `preprocessing_of` reads: the backbone (`architectures.settings.ModelSettings`) and the image keys
    (`datasets.settings.DataSettings`). A checkpoint's configuration is one."""

    arch: str
    resolution: int
    augmentation: str


class InferenceInputs(PreprocessingInputs, Protocol):
    """What `InferenceModel` reads, besides the preprocessing: the embedding width, the image decoder and the
    memory format."""

    embed_dim: int
    image_decoder: str
    channels_last: bool


def preprocessing_of(cfg: PreprocessingInputs) -> Preprocessing:
    """The evaluation preprocessing of a configuration."""
    from architectures import input_spec_for
    from datasets.transforms import eval_crop, eval_resize

    spec = input_spec_for(cfg.arch)
    return Preprocessing(
        resolution=cfg.resolution,
        resize=eval_resize(cfg.resolution),
        crop=eval_crop(cfg.augmentation, cfg.resolution),
        mean=tuple(float(v) for v in spec.mean),
        std=tuple(float(v) for v in spec.std),
        channel_order="BGR" if spec.bgr else "RGB",
    )


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _Files:
    """Map-style dataset over image files (or PIL images): item i is (preprocessed image, i)."""

    def __init__(self, images: Sequence[ImageInput], transform: Any) -> None:
        self.images = list(images)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from datasets.base import IMAGE_LOADERS, load_rgb

        image = self.images[index]
        if not isinstance(image, Image.Image):
            image = IMAGE_LOADERS.get(self.transform.decoder, load_rgb)(str(image))
        return self.transform(image), index


class InferenceModel:
    """A checkpoint's embedding network with its preprocessing; `embed` turns images into unit vectors."""

    def __init__(self, network: nn.Module, cfg: InferenceInputs, checkpoint: Path, device: torch.device) -> None:
        from architectures import input_spec_for
        from datasets.transforms import build_transform

        self.policy = ForwardPolicy(device, "fp32", cfg.channels_last)  # inference embeds in float32
        self.network = self.policy.place_model(network.eval())
        self.cfg = cfg
        self.checkpoint = checkpoint
        self.device = device
        self.preprocessing = preprocessing_of(cfg)
        normalization = input_spec_for(cfg.arch)  # as `datasets.build_datasets` is given it
        self.transform = build_transform(cfg.augmentation, False, cfg.resolution, normalization, cfg.image_decoder)

    @property
    def embed_dim(self) -> int:
        return int(self.cfg.embed_dim)

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """One image (file path or PIL image) -> the 3 x crop x crop float tensor the network takes."""
        return _Files([image], self.transform)[0][0]

    @torch.no_grad()
    def embed_tensor(self, batch: torch.Tensor) -> torch.Tensor:
        """Embeddings (float32, L2-normalised, CPU) of an already preprocessed N x 3 x crop x crop batch."""
        images = self.policy.place_inputs(batch, torch.float32)
        with self.policy.autocast():
            embeddings = self.network(images).float()
        return F.normalize(embeddings, dim=-1).cpu()

    def iter_embed(
        self, images: Sequence[ImageInput], *, batch_size: int = 64, workers: int = 0, progress: str | None = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield `(first index, embeddings)` batch by batch; `progress` names the progress display (None: none):
        a bar on a terminal, a line every 10 % or 60 s in a log file (`utilities.logs.progress`).

        An unreadable image is a `UserError` naming the file.
        """
        from utilities.logs import progress as show_progress

        if batch_size < 1:
            raise UserError(f"batch_size: expected a positive integer, got {batch_size}")
        loader = DataLoader(
            _Files(images, self.transform),
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
        )
        bar = show_progress(desc=progress or "", total=len(images), unit="img", enabled=bool(progress))
        try:
            for batch, indices in loader:
                yield int(indices[0]), self.embed_tensor(batch)
                bar.update(len(indices))
        finally:
            bar.close()

    def embed(
        self, images: Sequence[ImageInput] | torch.Tensor, *, batch_size: int = 64, workers: int = 0
    ) -> torch.Tensor:
        """N x D float32 embeddings (CPU, unit L2 norm) of file paths, PIL images, or a preprocessed batch."""
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] != 3:
                raise UserError(f"expected a preprocessed N x 3 x H x W batch, got shape {tuple(images.shape)}")
            parts = [self.embed_tensor(part) for part in torch.split(images, batch_size)]
        else:
            if isinstance(images, str | Path | Image.Image):
                images = [images]
            parts = [embeddings for _, embeddings in self.iter_embed(images, batch_size=batch_size, workers=workers)]
        return torch.cat(parts) if parts else torch.empty(0, self.embed_dim)


def as_numpy(embeddings: torch.Tensor) -> np.ndarray:
    """Contiguous float32 numpy copy (what faiss takes)."""
    return np.ascontiguousarray(embeddings.detach().cpu().numpy(), dtype=np.float32)
