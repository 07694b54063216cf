"""What each rank trains on: the trainer's loader (`engine.data.build_training_data`) at the demo's settings.

tests/engine/test_distributed.py runs this file under `torchrun` (`python rank_batches.py SOURCE OUTPUT`, the
repository on PYTHONPATH): every rank iterates its loader for the run's epochs, the batches are gathered in rank
order (`utilities.distributed.gather_batch`, as the criterion gathers the embeddings) and rank 0 saves them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from architectures import input_spec_for
from config.command_line import parse_command_line
from config.schema import Config
from datasets import build_datasets
from engine.data import build_training_data
from utilities.distributed import DistInfo, gather_batch, init_distributed, shutdown_distributed

REPO = Path(__file__).resolve().parents[1]

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""Augmented images, labels, dataset indices."""


def demo_config(source: Path) -> Config:
    """configs/demo.yaml as shipped (sampler, global batch, augmentation, resolution, loader workers) with
    fewer images per class and iterations per epoch."""
    cfg, _ = parse_command_line(
        ["--config", str(REPO / "configs" / "demo.yaml"), "--source_path", str(source), "--frozen_bn", "true",
         "--synthetic_images_per_class", "8", "--iterations_per_epoch", "3", "--epochs", "2"],
        "rank_batches",
    )  # fmt: skip
    return cfg


def trained_batches(cfg: Config, dist: DistInfo) -> list[Batch]:
    """Every batch of every epoch from the loader the trainer builds for `dist`'s rank."""
    train = build_datasets(cfg, input_spec_for(cfg.arch))["train"]
    loader, batches = build_training_data(cfg, train, torch.device("cpu"), dist)
    seen: list[Batch] = []
    for epoch in range(cfg.epochs):
        batches.set_epoch(epoch)
        seen.extend(tuple(batch) for batch in loader)
    return seen


def main(source: Path, output: Path) -> None:
    cfg = demo_config(source)
    dist = init_distributed("cpu")
    gathered = [tuple(gather_batch(part, dist) for part in batch) for batch in trained_batches(cfg, dist)]
    if dist.is_main:
        torch.save(gathered, output)
    shutdown_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
