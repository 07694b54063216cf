"""Transforms: output sizes per augmentation, the eval resize rule, normalisation and BGR order, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.transforms import (
    AUGMENTATIONS,
    BNINCEPTION,
    IMAGENET,
    Normalization,
    build_transform,
    eval_resize,
)
from utilities.errors import UserError


def test_eval_resize_matches_reference_ratio() -> None:
    assert eval_resize(224) == 256
    assert eval_resize(64) == 73
    assert eval_resize(96) == 110


@pytest.mark.parametrize("augmentation", sorted(AUGMENTATIONS))
def test_output_sizes(augmentation: str) -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    crop = 73 if augmentation == "big" else 64
    torch.manual_seed(0)
    for train in (True, False):
        out = build_transform(augmentation, train, 64, IMAGENET)(image)
        assert out.dtype == torch.float32 and tuple(out.shape) == (3, crop, crop)


def test_eval_pipeline_is_resize_then_centre_crop_and_deterministic() -> None:
    # left half black, right half white, 100 x 200: resize shorter side to 73 -> 146 x 73, crop the middle
    pixels = np.zeros((100, 200, 3), dtype=np.uint8)
    pixels[:, 100:] = 255
    transform = build_transform("base", False, 64, Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    out = transform(Image.fromarray(pixels))
    assert torch.equal(out, transform(Image.fromarray(pixels)))
    assert out[:, :, :30].max() < 0.05 and out[:, :, -30:].min() > 0.95


def test_imagenet_normalisation_values() -> None:
    grey = Image.new("RGB", (64, 64), (128, 128, 128))
    out = build_transform("base", False, 56, IMAGENET)(grey)
    expected = (128 / 255 - torch.tensor(IMAGENET.mean)) / torch.tensor(IMAGENET.std)
    assert torch.allclose(out[:, 10, 10], expected, atol=1e-5)


def test_bninception_normalises_then_flips_to_bgr() -> None:
    red = Image.new("RGB", (64, 64), (255, 0, 0))
    out = build_transform("base", False, 56, BNINCEPTION)(red)
    # channel 0 is now blue: (0 - 0.4078) / 0.0039; channel 2 is red: (1 - 0.502) / 0.0039
    assert torch.allclose(out[0, 5, 5], torch.tensor((0 - 0.4078) / 0.0039), rtol=1e-5)
    assert torch.allclose(out[2, 5, 5], torch.tensor((1 - 0.502) / 0.0039), rtol=1e-5)


def test_train_pipeline_is_random() -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (80, 80, 3), dtype=np.uint8))
    transform = build_transform("base", True, 32, IMAGENET)
    torch.manual_seed(0)
    assert not torch.equal(transform(image), transform(image))


def test_unknown_augmentation_lists_valid_names() -> None:
    with pytest.raises(UserError, match=r"augmentation: unknown name 'fancy'; valid: base, auto, big, adv, v2"):
        build_transform("fancy", True, 224, IMAGENET)


def test_bad_resolution() -> None:
    with pytest.raises(UserError, match="resolution"):
        build_transform("base", True, 0, IMAGENET)
