"""Batch samplers: class-balanced batches of dataset indices, deterministic from (seed, epoch).

Both samplers draw one *global* batch of `batch_size` indices per step with a generator seeded from
(seed, epoch) only, so every rank of a distributed run draws the same global batch and yields its own
contiguous slice `[rank * b / W, (rank + 1) * b / W)`. Concatenating the slices of ranks 0..W-1 gives
exactly the batch a single process would use. Call `set_epoch(epoch)` before iterating each epoch.

* `class_random` (`ClassRandomBatchSampler`): the reference sampler (docs/reference.md §3.5).
* `m_per_class` (`MPerClassBatchSampler`): distinct classes and distinct images per batch, covering the
  data once per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType

import numpy as np

from utilities.errors import UserError


def _check_sizes(batch_size: int, samples_per_class: int, rank: int, world_size: int) -> None:
    if batch_size < 1 or samples_per_class < 1:
        raise UserError(f"batch_size ({batch_size}) and samples_per_class ({samples_per_class}) must be positive")
    if batch_size % samples_per_class:
        raise UserError(f"batch_size ({batch_size}) must be divisible by samples_per_class ({samples_per_class})")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"rank ({rank}) must lie in [0, world_size={world_size})")
    if batch_size % world_size:
        raise UserError(f"batch_size ({batch_size}) must be divisible by the number of processes ({world_size})")


class _GlobalBatchSampler:
    """Shared machinery: per-epoch generator, rank slicing, length."""

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        batch_size: int,
        samples_per_class: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_batches: int | None = None,
    ) -> None:
        _check_sizes(batch_size, samples_per_class, rank, world_size)
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.ndim != 1 or self.labels.size == 0:
            raise UserError("the sampler needs a non-empty 1-D list of labels")
        self.batch_size = batch_size
        self.samples_per_class = samples_per_class
        self.classes_per_batch = batch_size // samples_per_class
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        if num_batches is not None and num_batches < 1:
            raise UserError(f"num_batches must be positive, got {num_batches}")
        self.num_batches = num_batches
        # Indices grouped by class: members of class `classes[k]` are order[starts[k]:starts[k]+counts[k]].
        self.order = np.argsort(self.labels, kind="stable")
        self.classes, self.starts, self.counts = np.unique(
            self.labels[self.order], return_index=True, return_counts=True
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        self.epoch = int(epoch)

    def _generator(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def global_batches(self) -> np.ndarray:
        """All global batches of the current epoch, shape (len(self), batch_size)."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        share = self.batch_size // self.world_size
        lo, hi = self.rank * share, (self.rank + 1) * share
        for batch in self.global_batches():
            yield batch[lo:hi].tolist()


class ClassRandomBatchSampler(_GlobalBatchSampler):
    """The reference class-random sampler (docs/reference.md §3.5).

    An epoch has ⌊N / batch_size⌋ batches (or `num_batches`). Each batch is built from
    batch_size / samples_per_class draws: a class chosen uniformly WITH replacement among all classes,
    then `samples_per_class` of its images chosen uniformly WITH replacement, appended consecutively. A
    class may therefore appear several times in a batch and an image twice in a group.
    """

    def __len__(self) -> int:
        if self.num_batches is not None:
            return self.num_batches
        return len(self.labels) // self.batch_size

    def global_batches(self) -> np.ndarray:
        if len(self) == 0:
            raise UserError(
                f"batch_size ({self.batch_size}) exceeds the {len(self.labels)} training images: "
                "lower batch_size or set num_batches"
            )
        rng = self._generator()
        draws = rng.integers(0, len(self.classes), size=(len(self), self.classes_per_batch))
        offsets = np.floor(
            rng.random((len(self), self.classes_per_batch, self.samples_per_class)) * self.counts[draws][..., None]
        ).astype(np.int64)
        indices = self.order[self.starts[draws][..., None] + offsets]
        return indices.reshape(len(self), self.batch_size)


class MPerClassBatchSampler(_GlobalBatchSampler):
    """Batches of P = batch_size / m distinct classes with m distinct images each, covering the data.

    Exact rule, per epoch (m = samples_per_class):
    1. Every class's images are shuffled and cut into groups of m. A last incomplete group is filled up
       with other images of the same class drawn without replacement; a class with fewer than m images
       gets all of them plus draws WITH replacement from itself (the only case where an image can repeat
       within a batch). Class c thus yields g_c = ⌈n_c / m⌉ groups.
    2. Batches per epoch: `num_batches` if given, else ⌈Σ_c g_c / P⌉ (≈ ⌈N / batch_size⌉ when classes
       are large compared with m).
    3. A class cannot appear twice in a batch, so it keeps at most one group per batch: if g_c exceeds
       the number of batches, a random subset of its groups is used (those images are not seen this
       epoch). If the groups exceed the batch slots (only with a small `num_batches`), a random subset
       of them is kept; if they fall short, the free slots get extra groups of m random distinct images
       from random classes that still have room.
    4. Groups are ordered class by class (classes in random order) and dealt round-robin over the
       batches, so the groups of one class land in different batches; then batch order and the group
       order inside every batch are shuffled.
    Hence every image appears at least once per epoch unless step 3 had to drop groups.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        batch_size: int,
        samples_per_class: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_batches: int | None = None,
    ) -> None:
        super().__init__(labels, batch_size, samples_per_class, seed, rank, world_size, num_batches)
        if len(self.classes) < self.classes_per_batch:
            raise UserError(
                f"m_per_class sampler: a batch needs {self.classes_per_batch} distinct classes "
                f"(batch_size / samples_per_class) but the data has only {len(self.classes)}"
            )
        groups = int(np.sum(-(-self.counts // self.samples_per_class)))
        self._default_batches = math.ceil(groups / self.classes_per_batch)

    def __len__(self) -> int:
        return self.num_batches if self.num_batches is not None else self._default_batches

    def _class_members(self, k: int) -> np.ndarray:
        return self.order[self.starts[k] : self.starts[k] + self.counts[k]]

    def _groups_of_class(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """Step 1: the class's images shuffled and cut into groups of m, shape (g_c, m)."""
        members = rng.permutation(self._class_members(k))
        m = self.samples_per_class
        missing = (-len(members)) % m
        if missing:
            if len(members) >= m:
                last = members[len(members) - (m - missing) :]
                others = np.setdiff1d(members, last, assume_unique=True)
                fill = rng.choice(others, size=missing, replace=False)
            else:
                fill = rng.choice(members, size=missing, replace=True)
            members = np.concatenate([members, fill])
        return members.reshape(-1, m)

    def _random_group(self, k: int, rng: np.random.Generator) -> np.ndarray:
        members = self._class_members(k)
        m = self.samples_per_class
        return rng.choice(members, size=m, replace=len(members) < m)

    def global_batches(self) -> np.ndarray:
        rng = self._generator()
        n_batches, slots = len(self), len(self) * self.classes_per_batch
        groups = [self._groups_of_class(k, rng) for k in range(len(self.classes))]
        # Step 3: at most one group per class and batch.
        groups = [g if len(g) <= n_batches else g[rng.permutation(len(g))[:n_batches]] for g in groups]
        total = sum(len(g) for g in groups)
        if total > slots:
            keep_per_class = self._subsample_counts([len(g) for g in groups], slots, rng)
            groups = [g[:keep] for g, keep in zip(groups, keep_per_class)]
        elif total < slots:
            extra = self._extra_groups([len(g) for g in groups], slots - total, n_batches, rng)
            groups = [
                np.concatenate([g, *(self._random_group(k, rng)[None] for _ in range(extra[k]))]) if extra[k] else g
                for k, g in enumerate(groups)
            ]
        # Step 4: class-major order, classes shuffled, dealt round-robin.
        ordered = np.concatenate([groups[k] for k in rng.permutation(len(groups))])
        batches = np.empty((n_batches, self.classes_per_batch, self.samples_per_class), dtype=np.int64)
        positions = np.arange(slots)
        batches[positions % n_batches, positions // n_batches] = ordered
        batches = batches[rng.permutation(n_batches)]
        within = np.argsort(rng.random((n_batches, self.classes_per_batch)), axis=1)
        batches = np.take_along_axis(batches, within[..., None], axis=1)
        return batches.reshape(n_batches, self.batch_size)

    @staticmethod
    def _subsample_counts(counts: list[int], keep: int, rng: np.random.Generator) -> np.ndarray:
        """How many groups each class keeps when only `keep` of all groups fit (uniform over groups)."""
        owner = np.repeat(np.arange(len(counts)), counts)
        chosen = rng.choice(len(owner), size=keep, replace=False)
        return np.bincount(owner[chosen], minlength=len(counts))

    @staticmethod
    def _extra_groups(counts: list[int], needed: int, n_batches: int, rng: np.random.Generator) -> np.ndarray:
        """Extra groups per class to fill `needed` slots, never exceeding `n_batches` groups per class."""
        extra = np.zeros(len(counts), dtype=np.int64)
        room = n_batches - np.asarray(counts, dtype=np.int64)
        while needed > 0:
            open_classes = np.flatnonzero(room - extra > 0)
            take = rng.permutation(open_classes)[:needed]
            extra[take] += 1
            needed -= len(take)
        return extra


SAMPLERS: Mapping[str, type[_GlobalBatchSampler]] = MappingProxyType(
    {
        "class_random": ClassRandomBatchSampler,
        "m_per_class": MPerClassBatchSampler,
    }
)
"""Batch samplers by the `data_sampler` name of the configuration."""


def build_batch_sampler(
    name: str,
    labels: Sequence[int] | np.ndarray,
    batch_size: int,
    samples_per_class: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_batches: int | None = None,
) -> _GlobalBatchSampler:
    """The batch sampler registered under `name`; unknown names and impossible sizes are `UserError`s."""
    if name not in SAMPLERS:
        raise UserError(f"data_sampler: unknown name {name!r}; valid: {', '.join(SAMPLERS)}")
    return SAMPLERS[name](labels, batch_size, samples_per_class, seed, rank, world_size, num_batches)
