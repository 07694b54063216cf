"""The training data loader: batch sampler + per-sample augmentation seeds.

Every training image gets its augmentation seed from (seed, epoch, batch, position in the global batch), so
the augmented pixels depend neither on the number of loader workers, nor on whether workers persist across
epochs, nor on how many ranks share the global batch: a resumed run and a multi-GPU run see exactly the
images a single uninterrupted process sees.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datasets.base import ImageDataset
from datasets.samplers import build_batch_sampler
from utilities.distributed import DistInfo
from utilities.seeding import derive_seed


class SeededBatches:
    """Wraps a batch sampler: yields `(index, sample_seed)` pairs instead of indices.

    `set_epoch(epoch, start)` skips the epoch's first `start` batches (a run resumed inside an epoch): they are
    skipped here, as lists of indices, so none of their images is read or decoded.
    """

    def __init__(self, sampler: Any, seed: int, rank: int = 0) -> None:
        self.sampler, self.seed, self.rank, self.epoch, self.start = sampler, seed, rank, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.start, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for number, batch in enumerate(self.sampler):
            if number < self.start:
                continue
            offset = self.rank * len(batch)
            yield [
                (int(index), derive_seed(self.seed, self.epoch, number, offset + position))
                for position, index in enumerate(batch)
            ]


class SeededAugmentation(Dataset):
    """Applies the dataset's (random) transform under a per-sample seed, leaving global RNGs untouched."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            sample = self.dataset[index]
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        return sample


class TrainingDataInputs(Protocol):
    """What `build_training_data` reads: the batch keys (`datasets.settings.DataSettings`) and the run's seed
    and loader workers (`engine.settings.RunSettings`). The configuration is one."""

    data_sampler: str
    batch_size: int
    samples_per_class: int
    iterations_per_epoch: int
    seed: int
    workers: int


def loader_generator(seed: int) -> torch.Generator:
    """A generator for a DataLoader's own draws (worker base seeds), so they leave the global RNG alone."""
    return torch.Generator().manual_seed(derive_seed(seed, -1))  # -1: a stream no epoch uses


def build_train_loader(
    dataset: Dataset, sampler: Any, *, seed: int, workers: int, device: torch.device, dist: DistInfo
) -> tuple[DataLoader, SeededBatches]:
    """Loader over the seeded batches; call `batches.set_epoch(epoch)` before each epoch.

    The loader draws its workers' base seed from a generator of its own: creating an iterator would otherwise
    take a number from the global torch RNG, and with persistent workers that happens once per process, so a
    resumed run would draw it at its first epoch where an uninterrupted run does not, shifting every later
    global draw (dropout, initialisations) of that epoch.
    """
    batches = SeededBatches(sampler, seed, dist.rank)
    loader = DataLoader(
        SeededAugmentation(dataset),
        batch_sampler=batches,
        num_workers=workers,
        generator=loader_generator(seed),
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
    return loader, batches


def build_training_data(
    cfg: TrainingDataInputs, dataset: ImageDataset, device: torch.device, dist: DistInfo
) -> tuple[DataLoader, SeededBatches]:
    """The training loader of a run (its sampler, global batch, seeds and loader workers as `cfg` sets them):
    what rank `dist.rank` of `dist.world_size` trains on. The trainer builds its loader here, and so does the
    test that compares every rank's batches with one process's."""
    sampler = build_batch_sampler(
        cfg.data_sampler,
        dataset.labels,
        cfg.batch_size,
        cfg.samples_per_class,
        cfg.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        num_batches=cfg.iterations_per_epoch or None,
    )
    return build_train_loader(dataset, sampler, seed=cfg.seed, workers=cfg.workers, device=device, dist=dist)
