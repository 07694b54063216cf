"""The input normalisation a backbone expects: per-channel mean/std of RGB values in [0, 1] (and BN-Inception's
BGR order). It belongs to the model; the data pipelines (`datasets.transforms`) apply it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean/std applied to RGB tensors in [0, 1]; `bgr` flips the channels afterwards."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr: bool = False


IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
BNINCEPTION = Normalization((0.502, 0.4588, 0.4078), (0.0039, 0.0039, 0.0039), bgr=True)
