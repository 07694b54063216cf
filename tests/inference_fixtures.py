"""A tiny checkpoint of this project and its synthetic images, shared by the retrieval and export tests.

The network is an untrained `test_resnet` (weights from a fixed seed) saved the way `engine.trainer` saves
`best.pt`; its configuration points at a 6-class synthetic benchmark of 32 px images generated in a temporary
folder (classes 0-2 train, 3-5 test).
"""

from __future__ import annotations

from pathlib import Path

import torch

from architectures import build_model
from config import Config, config_from_dict
from engine.checkpoint import save_checkpoint


def tiny_config(source: Path, embed_dim: int = 16) -> Config:
    return config_from_dict(
        {
            "dataset": "synthetic",
            "source_path": str(source),
            "synthetic_classes": 6,
            "synthetic_images_per_class": 4,
            "synthetic_image_size": 32,
            "resolution": 32,
            "arch": "test_resnet",
            "pretrained": False,
            "frozen_bn": False,
            "embed_dim": embed_dim,
            "kernels": 0,
            "eval_batch_size": 16,
            "evaluation_metrics": ["recall@1", "map@r"],
        }
    )


def write_checkpoint(path: Path, cfg: Config, seed: int = 0) -> Path:
    """A `best.pt`-like checkpoint of a freshly initialised network (seeded)."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    save_checkpoint({"config": cfg.to_dict(), "epoch": 0, "model": model.state_dict(), "metrics": {}}, path)
    return path


def class_folders(source: Path) -> list[Path]:
    """The synthetic benchmark's class folders (generated on first use of `build_datasets`)."""
    return sorted(p for p in (source / "synthetic").glob("*/images/*") if p.is_dir())
